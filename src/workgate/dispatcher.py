"""The dispatcher: routing, the in-flight table, hooks, and process lifecycle.

Request lifecycle (the in-flight table is ``Dispatcher._pending``)::

    accepted ──► waiting in its pool ──► held by a worker ──► answered
        │              │                        │
        │              └─ client left ──────────┼─► DISCONNECTED
        ├─ timeout (not streaming) ─────────────┼─► TIMEOUT (504)
        ├─ shutdown ────────────────────────────┼─► SHUTDOWN (503)
        │                                       ├─► WORKER_DIED (500)
        │                                       ├─► STREAM_CLOSED
        └───────────────────────────────────────┴─► COMPLETED

Every exit from the table goes through :meth:`Dispatcher._remove_pending`,
which runs after the client-facing action and fires
``on_pending_removed`` exactly once. Routing order for each request:
static mounts, then ``@sync`` handlers, then the first pool whose routes
match (a pool with ``routes=None`` is the fallback), then 404.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import socket
import ssl as _ssl
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import logs, messages
from .constants import (
    LOG_ERROR,
    LOG_INFO,
    PENDING_COMPLETED,
    PENDING_DISCONNECTED,
    PENDING_SHUTDOWN,
    PENDING_STREAM_CLOSED,
    PENDING_TIMEOUT,
    PENDING_WORKER_DIED,
)
from .logs import Logger, RateLimiter
from .metrics import Metrics, render_prometheus, status_document
from .model import RejectRequest, Request, Response
from .pool import WorkerPool, make_context
from .protocol import ClientConnection, HttpProtocol
from .routing import Router
from .static import build_mounts, serve_static

__all__ = ['Dispatcher', 'Settings']

_SWEEP_INTERVAL = 0.1
# Allocations between two collections of the youngest generation (Python's default is 700).
_GC_THRESHOLD = 5000
_access_logger = logging.getLogger(logs.ACCESS_LOGGER_NAME)
_CONNECTION_SWEEP_EVERY = 5


class Settings:
    """HTTP front limits and behaviour; every value is a Dispatcher keyword.

    Sizes are in bytes and times in seconds.
    """

    __slots__ = ('max_content_length', 'max_header_size', 'max_url_length',
                 'max_headers', 'header_timeout', 'body_timeout',
                 'keepalive_timeout', 'max_connections', 'stream_buffer_limit',
                 'trusted_proxies', 'access_log', 'start_method', 'status_path',
                 'metrics_path', 'backlog', 'configure_logging', 'stream_ping_interval')

    DEFAULTS = {
        'max_content_length': 64 * 1024 * 1024,
        'max_header_size': 32 * 1024,
        'max_url_length': 8 * 1024,
        'max_headers': 100,
        'header_timeout': 10.0,
        'body_timeout': 60.0,
        'keepalive_timeout': 5.0,
        'max_connections': 10000,
        'stream_buffer_limit': 1024 * 1024,
        'trusted_proxies': (),
        'access_log': True,
        'start_method': None,
        'status_path': None,
        'metrics_path': None,
        'backlog': 1024,
        'configure_logging': True,
        'stream_ping_interval': 15.0,
    }

    # Names uhttp-server's HttpServer takes, mapped onto ours.
    ALIASES = {
        'max_headers_length': 'max_header_size',
        'keep_alive_timeout': 'keepalive_timeout',
        'request_timeout': 'header_timeout',
    }
    IGNORED = frozenset({'keep_alive_max_requests', 'max_waiting_clients', 'event_mode',
                         'listen', 'file_chunk_size', 'max_send_buffer_size',
                         'max_ws_message_length'})

    def __init__(self, **values: Any):
        for name, default in self.DEFAULTS.items():
            setattr(self, name, default)
        for name, value in values.items():
            if name in self.IGNORED:
                continue
            name = self.ALIASES.get(name, name)
            if name not in self.DEFAULTS:
                raise TypeError(f'Dispatcher got an unknown keyword argument {name!r}')
            setattr(self, name, value)
        self.trusted_proxies = frozenset(self.trusted_proxies or ())
        for name in ('max_content_length', 'max_header_size', 'max_url_length',
                     'max_headers', 'max_connections', 'stream_buffer_limit'):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        for name in ('header_timeout', 'body_timeout', 'keepalive_timeout'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f'{name} must be a positive number of seconds, got {value!r}')


class _PendingRequest:
    """An entry of the in-flight table (``pending`` in the hooks)."""

    __slots__ = ('request_id', 'client', 'pool', 'worker_id', 'slot', 'streaming',
                 'started', 'method', 'path')

    def __init__(self, request_id: int, client: ClientConnection, pool: WorkerPool):
        self.request_id = request_id
        self.client = client
        self.pool = pool
        self.worker_id: int | None = None
        self.slot = None
        self.streaming = False
        self.started = time.monotonic()
        self.method = client.method
        self.path = client.path

    @property
    def timestamp(self) -> float:
        """Wall-clock time (time.time()) at which the request arrived."""
        return time.time() - (time.monotonic() - self.started)

    def __repr__(self) -> str:
        return (f'<pending {self.request_id} {self.method} {self.path} '
                f'pool={self.pool.name} worker={self.worker_id}>')


class Dispatcher:
    """The process that owns every client connection and every worker pool.

    Subclass it to add ``@sync`` handlers and override hooks, then call
    :meth:`run`. Settings beyond the named arguments are listed in
    :class:`Settings`.
    """

    SELECT_TIMEOUT = 1
    LOG_NAME = '{cls}'

    def __init__(self, port: int = 8080, address: str | list[str] = '0.0.0.0',
                 pools: list[WorkerPool] | None = None,
                 static_routes: dict | None = None, shutdown_timeout: float = 10,
                 max_pending: int = 1000, ssl_context: _ssl.SSLContext | None = None,
                 log_level: int = LOG_INFO, **kwargs: Any):
        self._port = port
        self._address = address
        self._pools: list[WorkerPool] = list(pools or [])
        self._static_routes = static_routes
        self._mounts = build_mounts(static_routes)
        self._shutdown_timeout = shutdown_timeout
        self._max_pending = max_pending
        self._ssl_context = ssl_context
        self._settings = Settings(**kwargs)
        if self._settings.configure_logging and not logging.getLogger('workgate').handlers:
            # So that self.log works from __init__ on, before run().
            logs.configure_logging(log_level)
        self._pending: dict[int, _PendingRequest] = {}
        self._timeouts: dict[WorkerPool, dict[int, float]] = {}
        self._request_ids = itertools.count(1)
        self._connections: set[HttpProtocol] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._readers: dict[Any, Callable] = {}
        self._writers: dict[Any, Callable] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._shutting_down = False
        self._stop_event: asyncio.Event | None = None
        self._drained: asyncio.Future | None = None
        self._log_limiter = RateLimiter(10.0)
        self.metrics = Metrics()
        self._started_at = 0.0
        self._ops_paths = frozenset(
            path for path in (self._settings.status_path, self._settings.metrics_path) if path)
        self.bound_addresses: list[tuple] = []
        self.log = Logger(type(self).__name__, level=log_level, sink=self._log_sink)
        self.log.name = self._format_log_name()
        names = [p.name for p in self._pools]
        if len(set(names)) != len(names):
            self.log.warning('several pools share a worker class; their status and '
                             'metrics are told apart by position only')
        self._sync_router = Router()
        self._build_sync_routes()
        self._has_sync_routes = len(self._sync_router) > 0
        overridden = type(self).on_response is not Dispatcher.on_response
        self._wants_on_response = overridden
        self._wants_pending_removed = (
            type(self).on_pending_removed is not Dispatcher.on_pending_removed)
        self._wants_accepted = (
            type(self).on_request_accepted is not Dispatcher.on_request_accepted)
        self._wants_check = type(self).do_check is not Dispatcher.do_check

    # -- configuration ----------------------------------------------------

    def configure(self, address: str | None = None, port: int | None = None,
                  num_workers: int | None = None,
                  ssl_context: _ssl.SSLContext | None = None,
                  log_level: int | None = None, access_log: bool | None = None) -> None:
        """Override settings before :meth:`run`; None leaves a value as it is."""
        if self._running:
            raise RuntimeError('configure() must be called before run()')
        if address is not None:
            self._address = address
        if port is not None:
            self._port = int(port)
        if num_workers is not None:
            for pool in self._pools:
                pool._configure_workers(num_workers)
        if ssl_context is not None:
            self._ssl_context = ssl_context
        if log_level is not None:
            self.log.level = log_level
        if access_log is not None:
            self._settings.access_log = bool(access_log)

    def _format_log_name(self) -> str:
        try:
            return self.LOG_NAME.format(cls=type(self).__name__, pid=os.getpid())
        except (KeyError, IndexError, ValueError, AttributeError) as err:
            self.log.warning('invalid LOG_NAME %r (%s); using the class name',
                             self.LOG_NAME, err)
            return type(self).__name__

    def _build_sync_routes(self) -> None:
        seen = set()
        for klass in type(self).__mro__:
            for name, value in vars(klass).items():
                if name in seen or not hasattr(value, '_sync_pattern'):
                    continue
                seen.add(name)
                self._sync_router.add(value._sync_pattern, value._sync_methods,
                                      getattr(self, name))

    # -- hooks (override in subclasses) -----------------------------------

    def do_check(self, client: ClientConnection) -> None:
        """Check a request before it goes to a pool; respond and raise RejectRequest to stop it."""

    def do_check_sync(self, client: ClientConnection) -> None:
        """Check a request before its ``@sync`` handler runs."""

    def on_request_accepted(self, request_id: int, client: ClientConnection,
                            pool: WorkerPool) -> Any:
        """Return a picklable value for ``request.context`` in the worker."""
        return None

    def on_response(self, response: Response, pending: _PendingRequest) -> None:
        """Run after a worker's response was sent to the client."""

    def on_forward(self, route: str, data: Any) -> None:
        """Route a worker's ``forward(route, data)`` to the pool serving ``route``.

        The default queues a fire-and-forget request (``request_id=-1``) and
        drops it with a warning when that pool's queue is full.
        """
        pool = self._find_pool(route)
        if pool is None:
            self._warn_limited(('forward-none', route),
                               'forward to %r dropped: no pool serves that route', route)
            return
        try:
            pool.request_queue.put_nowait(Request(-1, 'POST', route, data=data))
        except Exception:  # queue.Full from the pool
            self._warn_limited(('forward-full', pool.name),
                               'forward to %r dropped: pool %s has %d requests waiting',
                               route, pool.name, pool.queue_size)

    def on_static_served(self, client: ClientConnection, file_path: str, status: int) -> None:
        """Run after a static mount sent a file (200) or an authoritative 404."""

    def on_pending_removed(self, request_id: int, pending: _PendingRequest,
                           reason: str) -> None:
        """Run exactly once when a request leaves the in-flight table."""

    def on_worker_died(self, pool: WorkerPool, worker_id: int, reason: str,
                       exitcode: int | None, victims: list) -> None:
        """Answer the requests a dead worker held: 500, or close their streams.

        ``victims`` lists (request_id, pending) pairs. Overrides that capture
        them should call ``super().on_worker_died(...)``; victims left
        unanswered by an override are answered the same way afterwards.
        """
        for request_id, pending in victims:
            if self._pending.get(request_id) is not pending:
                continue
            self.log.error('request %s (%s %s) lost its worker %s[%s]: %s',
                           request_id, pending.method, pending.path, pool.name,
                           worker_id, reason)
            self._answer_and_remove(request_id, pending, 500, 'Worker crashed',
                                    PENDING_WORKER_DIED)

    def on_idle(self) -> None:
        """Run periodic work, once every ``SELECT_TIMEOUT`` seconds."""

    def on_log(self, name: str, level: int, message: str) -> None:
        """Print one log record; the default hands it to the logging module."""
        logs.emit(name, level, message)

    def register_reader(self, fd: Any, callback: Callable) -> None:
        """Call ``callback(fd)`` from the event loop whenever fd is readable."""
        self._readers[fd] = callback
        if self._loop is not None:
            self._loop.add_reader(fd, callback, fd)

    def unregister_reader(self, fd: Any) -> None:
        if self._readers.pop(fd, None) is not None and self._loop is not None:
            self._loop.remove_reader(fd)

    def register_writer(self, fd: Any, callback: Callable) -> None:
        """Call ``callback(fd)`` whenever fd is writable; unregister when done."""
        self._writers[fd] = callback
        if self._loop is not None:
            self._loop.add_writer(fd, callback, fd)

    def unregister_writer(self, fd: Any) -> None:
        if self._writers.pop(fd, None) is not None and self._loop is not None:
            self._loop.remove_writer(fd)

    # -- logging helpers --------------------------------------------------

    def _log_sink(self, name: str, level: int, message: str) -> None:
        try:
            self.on_log(name, level, message)
        except Exception:  # a broken on_log must not break the caller
            logs.emit(name, level, message)
            logs.emit(self.log.name, LOG_ERROR, f'on_log failed:\n{traceback.format_exc()}')

    def _warn_limited(self, key: Any, message: str, *args: Any) -> None:
        allowed, suppressed = self._log_limiter.check(key)
        if allowed:
            if suppressed:
                message += f' ({suppressed} similar messages suppressed)'
            self.log.warning(message, *args)

    def _hook_failed(self, hook: str, request_id: Any = None) -> None:
        where = f' for request {request_id}' if request_id is not None else ''
        self.log.error('%s failed%s:\n%s', hook, where, traceback.format_exc())

    def _log_bad_request(self, protocol: HttpProtocol, status: int, message: str,
                         cause: Exception | None) -> None:
        self.metrics.bad_requests += 1
        detail = cause.__context__ if cause is not None and cause.__context__ else cause
        self._warn_limited(('bad', status), 'rejected a request from %s: %d %s (%s)',
                           protocol.peer, status, message,
                           type(detail).__name__ if detail else 'no detail')

    def _count_rejected_connection(self) -> None:
        self.metrics.rejected_connections += 1
        self._warn_limited('max-connections', 'refused a connection: %d are open (limit %d)',
                           len(self._connections), self._settings.max_connections)

    def _count_slow_reader(self) -> None:
        self.metrics.slow_readers += 1

    # -- request routing --------------------------------------------------

    def _on_request(self, client: ClientConnection) -> None:
        protocol = client._protocol
        if client.error is not None:
            status, message = client.error
            protocol.send_error(client, status, message)
            return
        if self._shutting_down:
            client.keep_alive = False
            protocol.send_error(client, 503, 'Server shutting down')
            return
        try:
            if client.path in self._ops_paths and self._serve_ops(client):
                return
            if self._mounts and self._serve_static(client):
                return
            if self._has_sync_routes and self._handle_sync(client):
                return
            if self._wants_check:
                self.do_check(client)
                if client.responded:
                    return
            self._dispatch_to_pool(client)
        except RejectRequest as err:
            if not client.responded and not client.streaming:
                client.respond(err.data, err.status)
        except Exception:
            self._hook_failed('request handling')
            if not client.responded and not client.streaming:
                protocol.send_error(client, 500, 'Internal server error')

    def _serve_ops(self, client: ClientConnection) -> bool:
        """Serve the opt-in status document or Prometheus metrics."""
        if client.method not in ('GET', 'HEAD'):
            return False
        try:
            self.do_check_sync(client)
        except RejectRequest as err:
            if not client.responded:
                client.respond(err.data, err.status)
            return True
        if client.responded:
            return True
        if client.path == self._settings.status_path:
            client.respond(status_document(self))
        else:
            body, content_type = render_prometheus(self)
            client._protocol.send_response(client, 200, None, None, body, content_type)
        return True

    def _serve_static(self, client: ClientConnection) -> bool:
        result = serve_static(self._mounts, client.method, client.path, client.headers)
        if result is None:
            return False
        client._protocol.send_static(client, result)
        self.metrics.static_served += 1
        if result.status in (200, 206, 404) and result.file_path is not None:
            try:
                self.on_static_served(client, result.file_path, result.status)
            except Exception:
                self._hook_failed('on_static_served')
        return True

    def _handle_sync(self, client: ClientConnection) -> bool:
        match = self._sync_router.match(client.method, client.path)
        if match.handler is None:
            if match.allowed and not self._explicit_pool(client.path):
                client._protocol.send_error(client, 405, 'Method not allowed',
                                            {'Allow': ', '.join(match.allowed)})
                return True
            return False
        try:
            self.do_check_sync(client)
        except RejectRequest as err:
            if not client.responded and not client.streaming:
                client.respond(err.data, err.status)
            return True
        match.handler(client, match.params)
        if not client.responded and not client.streaming:
            self.log.error('sync handler for %s %s returned without a response; sent 500',
                           client.method, client.path)
            client._protocol.send_error(client, 500, 'Internal server error')
        return True

    def _explicit_pool(self, path: str) -> WorkerPool | None:
        for pool in self._pools:
            if pool._routes is not None and pool.matches(path):
                return pool
        return None

    def _find_pool(self, path: str) -> WorkerPool | None:
        """Return the first pool whose routes match ``path``, else the fallback."""
        fallback = None
        for pool in self._pools:
            if pool._routes is None:
                if fallback is None:
                    fallback = pool
            elif pool.matches(path):
                return pool
        return fallback

    def _dispatch_to_pool(self, client: ClientConnection) -> None:
        protocol = client._protocol
        pool = self._find_pool(client.path)
        if pool is None:
            protocol.send_error(client, 404, 'Not found')
            return
        if pool._degraded:
            self.metrics.count(pool.name, 503)
            protocol.send_error(client, 503, 'Service unavailable')
            return
        if not pool._alive:
            self.metrics.count(pool.name, 503)
            protocol.send_error(client, 503, 'No workers available', {'Retry-After': '1'})
            return
        if len(self._pending) >= self._max_pending:
            self.metrics.count(pool.name, 503)
            self._warn_limited('max-pending', 'max_pending (%d) reached; answering 503',
                               self._max_pending)
            protocol.send_error(client, 503, 'Too many requests in flight')
            return

        request_id = next(self._request_ids)
        pending = _PendingRequest(request_id, client, pool)
        self._pending[request_id] = pending
        client.request_id = request_id
        client.pending = pending
        self._timeouts[pool][request_id] = pending.started + pool._timeout
        context = None
        if self._wants_accepted:
            try:
                context = self.on_request_accepted(request_id, client, pool)
            except Exception:
                self._hook_failed('on_request_accepted', request_id)
        body = client.body
        headers = client.headers
        message = (messages.REQUEST, request_id, client.method, client.path, client.query,
                   headers, headers.get('content-type'), client.remote_address, context,
                   messages.wrap_body(body) if body else None, None)
        pool._enqueue(request_id, message)

    # -- the in-flight table ----------------------------------------------

    def _remove_pending(self, request_id: int, reason: str) -> _PendingRequest | None:
        """Take a request out of the in-flight table; the caller then responds to the client."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return None
        slot = pending.slot
        if slot is not None:
            slot.held.pop(request_id, None)
        timeouts = self._timeouts.get(pending.pool)
        if timeouts is not None:
            timeouts.pop(request_id, None)
        if self._drained is not None and not self._pending and not self._drained.done():
            self._drained.set_result(None)
        return pending

    def _notify_removed(self, request_id: int, pending: _PendingRequest, reason: str) -> None:
        pool = pending.pool
        self.metrics.finish(pool.name, pending.client.status, reason,
                            time.monotonic() - pending.started)
        if self._wants_pending_removed:
            try:
                self.on_pending_removed(request_id, pending, reason)
            except Exception:
                self._hook_failed(f'on_pending_removed({reason})', request_id)

    def _answer_and_remove(self, request_id: int, pending: _PendingRequest, status: int,
                           message: str, reason: str, headers: Any = None) -> None:
        """Answer a request the dispatcher gives up on, then fire the hook."""
        if self._remove_pending(request_id, reason) is None:
            return
        client = pending.client
        if pending.streaming:
            if reason == PENDING_WORKER_DIED:
                client._protocol.abort_stream(client)
            else:
                client._protocol.end_stream(client)
        elif not client.responded:
            client._protocol.send_error(client, status, message, headers)
        self._notify_removed(request_id, pending, reason)

    def _client_gone(self, client: ClientConnection) -> None:
        """Handle a client that closed its connection before its response or stream ended."""
        request_id = client.request_id
        if request_id is None:
            return
        pending = self._remove_pending(request_id, PENDING_DISCONNECTED)
        if pending is None:
            return
        slot = pending.slot
        if slot is not None and slot.alive:
            slot.send((messages.DISCONNECT, request_id))
        if pending.streaming:
            self._on_response_done(client)
        self._notify_removed(request_id, pending, PENDING_DISCONNECTED)

    def _on_response_done(self, client: ClientConnection) -> None:
        """Write the access log line of a finished response."""
        if self._settings.access_log:
            pending = client.pending
            _access_logger.info(logs.format_access(
                client.remote_address, client.method, client.path, client.status,
                time.monotonic() - client.started,
                pending.pool.name if pending is not None else None,
                pending.worker_id if pending is not None else None))

    # -- frames from workers ----------------------------------------------

    def _on_worker_message(self, pool: WorkerPool, slot, message: tuple) -> None:
        kind = message[0]
        if kind == messages.RESPONSE:
            self._on_worker_response(pool, slot, message)
        elif kind == messages.READY:
            self._on_handler_done(pool, slot, message[1])
            pool._schedule()
        elif kind == messages.RETURN:
            pool._take_back(slot, message[1])
            pool._schedule()
        elif kind == messages.HEARTBEAT:
            pass
        elif kind == messages.LOG:
            self._log_sink(message[1], message[2], message[3])
        elif kind == messages.STREAM_DATA:
            self._on_stream_data(message[1], message[2])
        elif kind == messages.STREAM_OPEN:
            self._on_stream_open(message)
        elif kind == messages.STREAM_END:
            self._on_stream_end(message[1])
        elif kind == messages.KEEPALIVE:
            self._on_keepalive(pool, slot, message[1])
        elif kind == messages.FORWARD:
            try:
                self.on_forward(message[1], message[2])
            except Exception:
                self._hook_failed('on_forward')
        elif kind == messages.HELLO:
            self._on_worker_ready(pool, slot, message[1])
        elif kind == messages.PAUSE:
            slot.paused = True
        elif kind == messages.RESUME:
            slot.paused = False
            pool._schedule()

    def _on_worker_ready(self, pool: WorkerPool, slot, pid: int) -> None:
        from .pool import READY, STARTING
        if slot.state != STARTING:
            return
        slot.state = READY
        slot.startup_failures = 0
        elapsed = time.monotonic() - slot.started_at
        self.log.info('worker %s ready (setup took %.3fs)', slot.label, elapsed)
        pool._schedule()

    def _on_handler_done(self, pool: WorkerPool, slot, request_id: int) -> None:
        head = slot.handler_done(time.monotonic())
        if head is None or head[0] != request_id:
            self.log.error('worker %s finished request %s but %s was next in its inbox',
                           slot.label, request_id, head[0] if head else None)

    def _on_worker_response(self, pool: WorkerPool, slot, message: tuple) -> None:
        _, request_id, status, headers, cookies, body, content_type, ends_handler = message
        if request_id != -1:
            pending = self._pending.get(request_id)
            if pending is not None:
                if not pending.streaming:
                    self._complete(request_id, pending, status, headers, cookies, body,
                                   content_type)
                elif ends_handler:
                    self._answer_after_stream(request_id, pending, status)
        if ends_handler:
            self._on_handler_done(pool, slot, request_id)
            if pool._waiting:
                pool._schedule()

    def _answer_after_stream(self, request_id: int, pending: _PendingRequest,
                             status: int) -> None:
        """Handle a handler's return value for a request it had started streaming.

        A failed handler (5xx) cuts the stream short, since nothing will end
        it. Any other value is ignored and the stream stays open: the handler
        should have returned DEFERRED.
        """
        if status >= 500:
            self.log.error('handler of request %s (%s %s) failed after starting a stream; '
                           'closing the stream', request_id, pending.method, pending.path)
            if self._remove_pending(request_id, PENDING_STREAM_CLOSED) is not None:
                pending.client._protocol.abort_stream(pending.client)
                self._notify_removed(request_id, pending, PENDING_STREAM_CLOSED)
        else:
            self._warn_limited(('stream-return', pending.path),
                               'handler of %s %s started a stream and returned a value; '
                               'the value is ignored (return DEFERRED)',
                               pending.method, pending.path)

    def _complete(self, request_id: int, pending: _PendingRequest, status: int, headers: Any,
                  cookies: Any, body: Any, content_type: str | None) -> None:
        """Send a worker's answer to its client, then fire the hooks."""
        self._remove_pending(request_id, PENDING_COMPLETED)
        client = pending.client
        try:
            client._protocol.send_response(client, status, headers, cookies, body,
                                           content_type)
        except ValueError as err:
            self.log.error('worker response for request %s is invalid (%s); sent 500',
                           request_id, err)
            client._protocol.send_error(client, 500, 'Internal server error')
        if self._wants_on_response:
            response = Response._received(request_id, status, headers, cookies, body,
                                          content_type)
            try:
                self.on_response(response, pending)
            except Exception:
                self._hook_failed('on_response', request_id)
        self._notify_removed(request_id, pending, PENDING_COMPLETED)

    def _on_keepalive(self, pool: WorkerPool, slot, request_id: int | None) -> None:
        timeouts = self._timeouts[pool]
        deadline = time.monotonic() + pool._timeout
        ids = [request_id] if request_id is not None else list(slot.held)
        for rid in ids:
            if rid in timeouts:
                del timeouts[rid]
                timeouts[rid] = deadline

    def _on_stream_open(self, message: tuple) -> None:
        _, request_id, content_type, headers, cookies = message
        pending = self._pending.get(request_id)
        if pending is None or pending.streaming:
            return
        client = pending.client
        try:
            started = client._protocol.start_stream(client, content_type, headers, cookies)
        except ValueError as err:
            self.log.error('stream headers for request %s are invalid (%s); sent 500',
                           request_id, err)
            started = False
        if not started:
            if not client.responded and not client.connection_closed:
                client._protocol.send_error(client, 500, 'Internal server error')
            self._client_gone(client)
            return
        pending.streaming = True
        self._timeouts[pending.pool].pop(request_id, None)
        self.metrics.streams_opened += 1

    def _on_stream_data(self, request_id: int, data: Any) -> None:
        pending = self._pending.get(request_id)
        if pending is None or not pending.streaming:
            return
        client = pending.client
        if not client._protocol.stream_write(client, data):
            self._client_gone(client)

    def _on_stream_end(self, request_id: int) -> None:
        pending = self._remove_pending(request_id, PENDING_STREAM_CLOSED)
        if pending is None:
            return
        client = pending.client
        if pending.streaming:
            client._protocol.end_stream(client)
        elif not client.responded:
            client._protocol.send_error(client, 500, 'Stream ended before it started')
        self._notify_removed(request_id, pending, PENDING_STREAM_CLOSED)

    # -- worker deaths ----------------------------------------------------

    def _worker_died(self, pool: WorkerPool, worker_id: int, reason: str,
                     exitcode: int | None, victims: list) -> None:
        try:
            self.on_worker_died(pool, worker_id, reason, exitcode, victims)
        except Exception:
            self._hook_failed('on_worker_died')
        for request_id, pending in victims:
            if self._pending.get(request_id) is pending:
                self._answer_and_remove(request_id, pending, 500, 'Worker crashed',
                                        PENDING_WORKER_DIED)
        pool._schedule()

    def _fail_victims_on_stop(self, pool: WorkerPool, slot, victims: list) -> None:
        for request_id, pending in victims:
            self._answer_and_remove(request_id, pending, 503, 'Server shutting down',
                                    PENDING_SHUTDOWN)

    def _fail_waiting(self, pool: WorkerPool, status: int, message: str,
                      retry_after: bool = False) -> None:
        """Answer every request waiting in ``pool``: it has no worker to run them."""
        waiting = list(pool._waiting)
        pool._waiting.clear()
        headers = {'Retry-After': '1'} if retry_after else None
        for request_id, _ in waiting:
            pending = self._pending.get(request_id)
            if pending is not None:
                reason = PENDING_SHUTDOWN if self._shutting_down else PENDING_WORKER_DIED
                self._answer_and_remove(request_id, pending, status, message, reason, headers)

    # -- periodic work ----------------------------------------------------

    def _sweep(self) -> None:
        now = time.monotonic()
        for pool, timeouts in self._timeouts.items():
            while timeouts:
                request_id, deadline = next(iter(timeouts.items()))
                if deadline > now:
                    break
                del timeouts[request_id]
                pending = self._pending.get(request_id)
                if pending is None or pending.streaming:
                    continue
                self.log.warning('request %s (%s %s) timed out after %ss in pool %s',
                                 request_id, pending.method, pending.path, pool._timeout,
                                 pool.name)
                slot = pending.slot
                self._answer_and_remove(request_id, pending, 504, 'Request timeout',
                                        PENDING_TIMEOUT)
                if slot is not None and slot.alive:
                    # If it was sent ahead and has not started, the worker skips it.
                    slot.send((messages.CANCEL, request_id))
            try:
                pool._tick(now)
            except Exception:
                self._hook_failed(f'supervision of pool {pool.name}')

    def _ping_streams(self, now: float) -> None:
        """Send an SSE comment on event streams idle for ``stream_ping_interval``.

        Proxies and browsers drop connections that stay silent too long; a
        comment line keeps them open and lets a dead client surface as a
        failed write.
        """
        interval = self._settings.stream_ping_interval
        if not interval:
            return
        for pending in list(self._pending.values()):
            client = pending.client
            if pending.streaming and client.is_event_stream \
                    and now - client.last_write >= interval:
                if not client._protocol.stream_write(client, b': ping\n\n'):
                    self._client_gone(client)

    async def _periodic(self) -> None:
        sweeps = 0
        next_idle = time.monotonic() + self.SELECT_TIMEOUT
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            self._sweep()
            sweeps += 1
            now = time.monotonic()
            if sweeps % _CONNECTION_SWEEP_EVERY == 0:
                for protocol in list(self._connections):
                    protocol.check_deadline(now)
                self._ping_streams(now)
            if now >= next_idle:
                next_idle = now + self.SELECT_TIMEOUT
                try:
                    self.on_idle()
                except Exception:
                    self._hook_failed('on_idle')

    # -- running ----------------------------------------------------------

    def run(self) -> None:
        """Start the pools and serve until SIGTERM or SIGINT, then shut down."""
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._running = True
        self._started_at = time.monotonic()
        self._stop_event = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        for fd, callback in self._readers.items():
            loop.add_reader(fd, callback, fd)
        for fd, callback in self._writers.items():
            loop.add_writer(fd, callback, fd)

        context = make_context(self._settings.start_method, self._preload_modules())
        for pool in self._pools:
            self._timeouts[pool] = {}
            pool._start(self, context)
        try:
            await self._listen()
        except OSError as err:
            self.log.critical('cannot listen on %s port %s: %s', self._address, self._port, err)
            await self._stop_pools()
            raise SystemExit(1) from err
        periodic = loop.create_task(self._periodic())
        # Everything allocated so far lives as long as the process; keep it
        # out of the collector's scans, and collect the young generation less
        # often, since each request allocates a few dozen short-lived objects.
        gc.freeze()
        gc.set_threshold(_GC_THRESHOLD, *gc.get_threshold()[1:])
        for pool in self._pools:
            self.log.info('pool %s: %d workers, routes %s', pool.name, pool.num_workers,
                          pool._routes if pool._routes is not None else 'fallback')
        addresses = ', '.join(_format_address(a) for a in self.bound_addresses)
        scheme = 'https' if self._ssl_context else 'http'
        self.log.info('listening on %s (%s), pid %d', addresses, scheme, os.getpid())
        try:
            await self._stop_event.wait()
        finally:
            periodic.cancel()
            await self._shutdown()

    def _on_signal(self, signum: int) -> None:
        if self._shutting_down:
            self.log.warning('%s received again; already shutting down',
                             signal.Signals(signum).name)
            return
        self.log.info('%s received; shutting down', signal.Signals(signum).name)
        self._stop_event.set()

    def stop(self) -> None:
        """Begin a graceful shutdown, as SIGTERM does (thread-safe)."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._stop_event.set)

    def _preload_modules(self) -> list[str]:
        modules = ['workgate.worker']
        for pool in self._pools:
            name = pool._worker_class.__module__
            if name == '__main__':
                main = sys.modules.get('__main__')
                if main is None or not getattr(main, '__file__', None):
                    continue
            if name not in modules:
                modules.append(name)
        return modules

    async def _listen(self) -> None:
        loop = self._loop
        ssl_context = self._ssl_context
        settings = self._settings
        secure = ssl_context is not None

        def factory() -> HttpProtocol:
            return HttpProtocol(self, settings, secure)

        addresses = self._address if isinstance(self._address, (list, tuple)) else [self._address]
        for address in addresses:
            if address in ('::', '[::]'):
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                except OSError:
                    pass
                sock.bind(('::', self._port))
                server = await loop.create_server(factory, sock=sock, ssl=ssl_context,
                                                  backlog=settings.backlog)
            else:
                host = address.strip('[]') if address not in ('', '*') else None
                server = await loop.create_server(factory, host, self._port, ssl=ssl_context,
                                                  backlog=settings.backlog,
                                                  reuse_address=True)
            self._servers.append(server)
            for sock in server.sockets:
                self.bound_addresses.append(sock.getsockname())

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``), else the configured one."""
        if self.bound_addresses:
            return self.bound_addresses[0][1]
        return self._port

    async def _shutdown(self) -> None:
        self._shutting_down = True
        timeout = self._shutdown_timeout
        for server in self._servers:
            server.close()
        for protocol in list(self._connections):
            if protocol.active is None and protocol.parsing is None:
                protocol.close()
        for request_id, pending in list(self._pending.items()):
            if pending.streaming:
                self._answer_and_remove(request_id, pending, 503, 'Server shutting down',
                                        PENDING_SHUTDOWN)
        if self._pending:
            self.log.info('waiting up to %ss for %d requests in flight', timeout,
                          len(self._pending))
            self._drained = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), timeout)
            except TimeoutError:
                pass
        for request_id, pending in list(self._pending.items()):
            self._answer_and_remove(request_id, pending, 503, 'Server shutting down',
                                    PENDING_SHUTDOWN)
        await self._stop_pools()
        for protocol in list(self._connections):
            protocol.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1)
            except TimeoutError:
                pass
        self.log.info('shutdown complete')

    async def _stop_pools(self) -> None:
        waits = [pool._stop(self._shutdown_timeout) for pool in self._pools
                 if pool._loop is not None]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), self._shutdown_timeout + 5)
            except TimeoutError:
                self.log.error('some workers did not exit after SIGKILL')


def _format_address(address: tuple) -> str:
    host, port = address[0], address[1]
    return f'[{host}]:{port}' if ':' in host else f'{host}:{port}'

