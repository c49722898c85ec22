"""Public constants shared by the dispatcher and the workers.

The values match uhttp-workers 1.8.1 so that code comparing against the
literal strings or numbers keeps working after a port.
"""

# Reasons passed to Dispatcher.on_pending_removed().
PENDING_COMPLETED = 'COMPLETED'
PENDING_TIMEOUT = 'TIMEOUT'
PENDING_DISCONNECTED = 'DISCONNECTED'
PENDING_STREAM_CLOSED = 'STREAM_CLOSED'
PENDING_SHUTDOWN = 'SHUTDOWN'
PENDING_WORKER_DIED = 'WORKER_DIED'

# Log levels, numerically equal to the standard logging module's levels.
LOG_CRITICAL = 50
LOG_ERROR = 40
LOG_WARNING = 30
LOG_INFO = 20
LOG_DEBUG = 10

LOG_LEVEL_NAMES = {
    LOG_CRITICAL: 'CRITICAL',
    LOG_ERROR: 'ERROR',
    LOG_WARNING: 'WARNING',
    LOG_INFO: 'INFO',
    LOG_DEBUG: 'DEBUG',
}


class _Deferred:
    """Marker type of DEFERRED; a singleton that survives pickling."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __reduce__(self):
        return (_Deferred, ())

    def __repr__(self):
        return 'DEFERRED'


# A handler returns DEFERRED to answer later through request.respond().
DEFERRED = _Deferred()
