"""workgate: HTTP APIs whose handlers run in supervised pools of worker processes.

The public names match uhttp-workers 1.8.1, so an application written for it
ports by changing its import to ``import workgate as _workers``.
"""

from .constants import (
    DEFERRED,
    LOG_CRITICAL,
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_LEVEL_NAMES,
    LOG_WARNING,
    PENDING_COMPLETED,
    PENDING_DISCONNECTED,
    PENDING_SHUTDOWN,
    PENDING_STREAM_CLOSED,
    PENDING_TIMEOUT,
    PENDING_WORKER_DIED,
)
from .dispatcher import Dispatcher, Settings
from .logs import Logger
from .model import ApiException, RejectRequest, Request, Response
from .pool import WorkerPool
from .protocol import ClientConnection
from .routing import api, sync
from .worker import ApiHandler, Worker

__version__ = '0.1.0'

__all__ = [
    'ApiException', 'ApiHandler', 'ClientConnection', 'DEFERRED', 'Dispatcher',
    'LOG_CRITICAL', 'LOG_DEBUG', 'LOG_ERROR', 'LOG_INFO', 'LOG_LEVEL_NAMES',
    'LOG_WARNING', 'Logger', 'PENDING_COMPLETED', 'PENDING_DISCONNECTED',
    'PENDING_SHUTDOWN', 'PENDING_STREAM_CLOSED', 'PENDING_TIMEOUT',
    'PENDING_WORKER_DIED', 'RejectRequest', 'Request', 'Response', 'Settings',
    'Worker', 'WorkerPool', 'api', 'sync', '__version__',
]
