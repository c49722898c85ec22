"""Logging: the per-process Logger, output formats, rate limiting, access lines.

How a record travels:

- Application code calls ``self.log.info(...)`` on a :class:`Logger`. The
  Logger drops records below its own ``level`` before formatting anything,
  then hands ``(name, level, message)`` to its sink (in the dispatcher, the
  ``on_log`` hook) or puts ``('LOG', name, level, message)`` on its queue (in
  a worker, the channel to the dispatcher).
- The dispatcher's default ``on_log`` calls :func:`emit`, which passes the
  record to the standard ``logging`` logger ``workgate.<name>``. Only the
  dispatcher process writes log output, so lines from different workers
  never interleave.
- :func:`configure_logging` installs the one handler that prints those
  records: coloured on a terminal, with syslog priority prefixes under
  systemd, plain otherwise.

Levels are filtered once, at the source Logger (a pool's ``log_level`` for
its workers, the dispatcher's ``log_level`` for the dispatcher). The
``workgate`` logger therefore passes every level, and :func:`emit` skips the
standard logger's level check.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from workgate.constants import (
    LOG_CRITICAL,
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_WARNING,
)

__all__ = [
    'ACCESS_LOGGER_NAME',
    'LOGGER_NAME',
    'Logger',
    'RateLimiter',
    'configure_logging',
    'dispatcher_level',
    'emit',
    'format_access',
]

# Root of every standard logger that workgate writes to.
LOGGER_NAME = 'workgate'
ACCESS_LOGGER_NAME = 'workgate.access'

# First element of the tuple a worker's Logger puts on its queue.
MSG_LOG = 'LOG'

LogSink = Callable[[str, int, str], Any]


class _Queue(Protocol):
    def put(self, item: Any) -> Any: ...


# ---------------------------------------------------------------------------
# Logger


class Logger:
    """Logger reached as ``self.log`` in workers and dispatchers.

    ``msg`` is formatted with ``%`` when positional arguments are given and
    then with ``str.format`` when keyword arguments are given, so both
    ``log.info('took %d ms', ms)`` and ``log.info('user {id}', id=uid)`` work.
    A template that does not fit its arguments never raises: the record
    then shows the template followed by the arguments.

    The record goes to ``sink(name, level, message)`` when a sink is given,
    else to ``queue.put(('LOG', name, level, message))``. A Logger with
    neither writes through :func:`emit`. Exceptions raised by the sink or the
    queue propagate to the caller.

    ``name`` and ``level`` are plain attributes and may be changed at any
    time.
    """

    def __init__(
        self,
        name: str,
        queue: _Queue | None = None,
        level: int = LOG_WARNING,
        sink: LogSink | None = None,
    ) -> None:
        self.name = name
        self.level = level
        self._queue = queue
        self._sink = sink

    def __repr__(self) -> str:
        return f'<Logger {self.name!r} level={self.level}>'

    @property
    def is_debug(self) -> bool:
        return self.level <= LOG_DEBUG

    @property
    def is_info(self) -> bool:
        return self.level <= LOG_INFO

    @property
    def is_warning(self) -> bool:
        return self.level <= LOG_WARNING

    @property
    def is_error(self) -> bool:
        return self.level <= LOG_ERROR

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Format and send one record at ``level`` unless the level is too low."""
        if level < self.level:
            return
        self._send(level, format_message(msg, args, kwargs))

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(LOG_DEBUG, msg, *args, **kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(LOG_INFO, msg, *args, **kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(LOG_WARNING, msg, *args, **kwargs)

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(LOG_ERROR, msg, *args, **kwargs)

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.log(LOG_CRITICAL, msg, *args, **kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log at ERROR with the traceback of the exception being handled.

        Call it from an ``except`` block. Outside one there is no traceback
        to add and the record carries the message alone.
        """
        if LOG_ERROR < self.level:
            return
        message = format_message(msg, args, kwargs)
        if sys.exc_info()[0] is not None:
            message = f'{message}\n{traceback.format_exc().rstrip()}'
        self._send(LOG_ERROR, message)

    def _send(self, level: int, message: str) -> None:
        if self._sink is not None:
            self._sink(self.name, level, message)
        elif self._queue is not None:
            self._queue.put((MSG_LOG, self.name, level, message))
        else:
            emit(self.name, level, message)


def format_message(msg: Any, args: tuple, kwargs: Mapping[str, Any]) -> str:
    """Apply ``%`` formatting with ``args``, then ``str.format`` with ``kwargs``.

    Never raises. When the template and the arguments do not fit, or an
    argument's ``__str__`` fails, the result names the error and shows the
    template and the arguments.
    """
    template = msg if isinstance(msg, str) else _safe_str(msg)
    # As in the standard logging module, a single mapping argument feeds
    # '%(key)s' placeholders.
    percent_args: Any = args
    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        percent_args = args[0]
    try:
        message = template % percent_args if args else template
        if kwargs:
            message = message.format(**kwargs)
        return message
    except Exception as exc:
        return (
            f'{template} [log formatting failed, {type(exc).__name__}: '
            f'{_safe_str(exc)}; args={_safe_repr(args)} '
            f'kwargs={_safe_repr(dict(kwargs))}]'
        )


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except Exception:
        return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f'<{type(value).__name__} object, repr() failed>'


# ---------------------------------------------------------------------------
# Output formats


_ANSI_RESET = '\033[0m'
_ANSI_COLORS = {
    LOG_CRITICAL: '\033[1;31m',  # bold red
    LOG_ERROR: '\033[31m',  # red
    LOG_WARNING: '\033[33m',  # yellow
    LOG_DEBUG: '\033[2m',  # dim
}

# Syslog priorities: 2 crit, 3 err, 4 warning, 6 info, 7 debug. A level
# between two of these gets the priority of the next level below it.
_SYSLOG_PRIORITIES = (
    (LOG_CRITICAL, 2),
    (LOG_ERROR, 3),
    (LOG_WARNING, 4),
    (LOG_INFO, 6),
)
_SYSLOG_DEBUG = 7

FORMATS = ('color', 'journal', 'plain')


def _display_name(logger_name: str) -> str:
    """Strip the ``workgate.`` prefix so worker names print as ``MyWorker[0]``."""
    prefix = LOGGER_NAME + '.'
    if logger_name.startswith(prefix):
        return logger_name[len(prefix):]
    return logger_name


def syslog_priority(level: int) -> int:
    for threshold, priority in _SYSLOG_PRIORITIES:
        if level >= threshold:
            return priority
    return _SYSLOG_DEBUG


class _Formatter(logging.Formatter):
    """Base of the three formats: builds ``LEVEL name message`` and its parts.

    The message includes the traceback when the record carries exc_info, so
    a multi-line record is formatted and written as one string.
    """

    def message_text(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f'{text}\n{record.exc_text}'
        if record.stack_info:
            text = f'{text}\n{self.formatStack(record.stack_info)}'
        return text

    def body(self, record: logging.LogRecord) -> str:
        name = _display_name(record.name)
        return f'{record.levelname:<8} {name} {self.message_text(record)}'


class PlainFormatter(_Formatter):
    """``2024-05-01 12:00:00,123 INFO     MyWorker[0] message``."""

    def format(self, record: logging.LogRecord) -> str:
        return f'{self.formatTime(record)} {self.body(record)}'


class ColorFormatter(_Formatter):
    """The plain format wrapped in an ANSI colour chosen by level.

    INFO and levels that are not in the table are printed without colour.
    """

    def format(self, record: logging.LogRecord) -> str:
        line = f'{self.formatTime(record)} {self.body(record)}'
        color = _ANSI_COLORS.get(record.levelno)
        if color is None:
            return line
        return f'{color}{line}{_ANSI_RESET}'


class JournalFormatter(_Formatter):
    """``<6>INFO     MyWorker[0] message``, with no timestamp.

    journald stores each line it reads from a stream as its own entry and
    takes the priority from a leading ``<N>``, so every line of a multi-line
    record (a traceback) carries the prefix.
    """

    def format(self, record: logging.LogRecord) -> str:
        prefix = f'<{syslog_priority(record.levelno)}>'
        lines = self.body(record).split('\n')
        return '\n'.join(prefix + line for line in lines)


_FORMATTERS: dict[str, type[_Formatter]] = {
    'color': ColorFormatter,
    'journal': JournalFormatter,
    'plain': PlainFormatter,
}


def detect_format(stream: TextIO) -> str:
    """Pick 'journal', 'color' or 'plain' for ``stream`` from the environment.

    'journal' needs ``JOURNAL_STREAM`` to name this very stream. systemd sets
    it to the decimal ``DEVICE:INODE`` of the stream it connected to the
    journal (systemd.exec(5)), and a child whose output was redirected
    elsewhere still inherits the variable.
    'color' needs a terminal and no ``NO_COLOR`` variable (no-color.org).
    ``WORKGATE_LOG_FORMAT`` set to one of the three names overrides all that.
    """
    forced = os.environ.get('WORKGATE_LOG_FORMAT', '').strip().lower()
    if forced in FORMATS:
        return forced
    if _is_journal_stream(stream):
        return 'journal'
    if not os.environ.get('NO_COLOR') and _is_tty(stream):
        return 'color'
    return 'plain'


def _is_journal_stream(stream: TextIO) -> bool:
    value = os.environ.get('JOURNAL_STREAM')
    if not value:
        return False
    device, sep, inode = value.partition(':')
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(device) and st.st_ino == int(inode)
    except (AttributeError, OSError, ValueError):
        # A stream without a file descriptor (io.StringIO raises
        # io.UnsupportedOperation, an OSError) cannot be the journal.
        return False


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        # ValueError: the stream is closed.
        return False


# ---------------------------------------------------------------------------
# Handler installation


# The handler that configure_logging() installed last, so a second call
# replaces it instead of adding another one.
_installed_handler: logging.Handler | None = None
_dispatcher_level = LOG_INFO


def configure_logging(
    level: int = LOG_INFO,
    stream: TextIO | None = None,
    fmt: str | None = None,
) -> None:
    """Install the handler that prints workgate's records to ``stream``.

    The ``workgate`` logger gets exactly one handler from this function
    (a second call replaces the first one's), does not propagate to the root
    logger, and passes every level. Records are filtered by level where they
    are made, in the Logger objects, so a pool that asked for DEBUG gets its
    DEBUG lines.

    ``level`` is therefore not applied to the logging tree. It is stored as
    the default level of the dispatcher's own Logger, returned by
    :func:`dispatcher_level`.

    ``stream`` defaults to ``sys.stderr`` as it is at call time. ``fmt``
    forces one of 'color', 'journal' or 'plain'; otherwise the format comes
    from :func:`detect_format`. The handler writes each record, tracebacks
    included, with a single ``write()`` call under the handler's lock.
    """
    global _installed_handler, _dispatcher_level

    if fmt is not None and fmt not in _FORMATTERS:
        raise ValueError(
            f'invalid log format {fmt!r}: expected one of {", ".join(FORMATS)}'
        )
    if not isinstance(level, int):
        raise TypeError(f'log level must be an int such as LOG_INFO, got {level!r}')
    if stream is None:
        stream = sys.stderr
    if fmt is None:
        fmt = detect_format(stream)

    # logging.StreamHandler.emit() writes the formatted record plus its
    # terminator with one stream.write() call.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_FORMATTERS[fmt]())

    logger = logging.getLogger(LOGGER_NAME)
    if _installed_handler is not None:
        logger.removeHandler(_installed_handler)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False

    _installed_handler = handler
    _dispatcher_level = level


def dispatcher_level() -> int:
    """Return the level last given to :func:`configure_logging` (LOG_INFO before)."""
    return _dispatcher_level


def emit(name: str, level: int, message: str) -> None:
    """Print one record from the Logger called ``name`` through ``logging``.

    The record goes to the standard logger ``workgate.<name>``, which the
    output formats print as ``name``. The standard logger's level is not
    checked, because the Logger that made the record already filtered it;
    handler levels and logger filters still apply. ``message`` is printed as
    it is, ``%`` signs included.
    """
    logger_name = f'{LOGGER_NAME}.{name}' if name else LOGGER_NAME
    # NOTE: logging keeps every Logger object it ever created, so a LOG_NAME
    # template with {pid} adds one small object per worker restart.
    logger = logging.getLogger(logger_name)
    record = logger.makeRecord(
        logger_name, level, '(workgate)', 0, message, None, None
    )
    logger.handle(record)


# ---------------------------------------------------------------------------
# Rate limiting


class RateLimiter:
    """Allow one event per key per ``interval`` seconds and count the rest.

    ``check(key)`` returns ``(True, n)`` when the caller may log now, where
    ``n`` is how many calls for that key were rejected since the last allowed
    one, and ``(False, 0)`` otherwise. Typical use::

        allowed, suppressed = limiter.check(('queue', pool.name))
        if allowed:
            log.warning('queue of %s is long (%d similar suppressed)', ...)

    Memory is bounded. A key not seen for ``10 * interval`` seconds is
    forgotten, and so is the least recently seen key when more than
    ``max_keys`` are stored. A forgotten key's suppressed count is lost.
    Not thread-safe. The dispatcher calls it from its event loop only.
    """

    FORGET_AFTER_INTERVALS = 10

    def __init__(
        self,
        interval: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval < 0:
            raise ValueError(f'interval must be >= 0 seconds, got {interval!r}')
        if max_keys < 1:
            raise ValueError(f'max_keys must be >= 1, got {max_keys!r}')
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        # key -> [allowed_at, suppressed, last_seen], least recently seen first.
        self._entries: OrderedDict[Any, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, key: Any) -> tuple[bool, int]:
        now = self._clock()
        entry = self._entries.get(key)

        if entry is None or now - entry[0] >= self.interval:
            suppressed = entry[1] if entry is not None else 0
            self._entries[key] = [now, 0, now]
            self._entries.move_to_end(key)
            self._forget_old(now)
            return True, suppressed

        entry[1] += 1
        entry[2] = now
        self._entries.move_to_end(key)
        return False, 0

    def _forget_old(self, now: float) -> None:
        forget_after = self.interval * self.FORGET_AFTER_INTERVALS
        entries = self._entries
        while entries:
            key, (_, _, last_seen) = next(iter(entries.items()))
            if len(entries) <= self.max_keys and now - last_seen < forget_after:
                break
            del entries[key]


# ---------------------------------------------------------------------------
# Access log


# Characters replaced by an escape in access lines: controls (a decoded
# %0A would otherwise start a fake log line), the quote that delimits the
# request, and the backslash that starts an escape.
_ACCESS_ESCAPES = {c: f'\\x{c:02x}' for c in (*range(0x20), 0x7F)}
_ACCESS_ESCAPES[ord('"')] = '\\"'
_ACCESS_ESCAPES[ord('\\')] = '\\\\'


def _access_field(value: object | None) -> str:
    if value is None or value == '':
        return '-'
    return str(value).translate(_ACCESS_ESCAPES)


def format_access(
    remote: str | None,
    method: str,
    path: str,
    status: int,
    duration: float | None,
    pool: str | None,
    worker_id: int | None,
) -> str:
    """Build one access log line, e.g.
    ``127.0.0.1:5555 "GET /api/x" 200 1.234ms pool=ComputeWorker worker=1``.

    ``duration`` is in seconds and printed in milliseconds. Missing values
    print as ``-``. Control characters, quotes and backslashes are escaped,
    so a request can never add a line or break the quoting.
    """
    # The query string is cut off: it can carry tokens and other secrets.
    path = path.partition('?')[0]
    took = '-' if duration is None else f'{duration * 1000:.3f}ms'
    return (
        f'{_access_field(remote)} '
        f'"{_access_field(method)} {_access_field(path)}" '
        f'{_access_field(status)} {took} '
        f'pool={_access_field(pool)} worker={_access_field(worker_id)}'
    )
