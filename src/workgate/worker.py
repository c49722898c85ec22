"""The worker process: the user's Worker subclass and the loop that feeds it.

Rules this module keeps:

- One handler runs at a time, in the order the requests arrived. Each
  handler's end is reported (a RESPONSE frame with ``ends_handler`` set, or
  READY after ``DEFERRED``), so the dispatcher tracks which request a worker
  is running and which it sent ahead have not started. Within a batch the
  reports go out together at its end, so the worker also counts the
  requests it has read in memory shared with the dispatcher.
- A paused worker hands back (RETURN) requests that were sent ahead, and
  so does any worker for a request whose DISCONNECT or CANCEL arrived in
  the same read as the request, before its handler started.
- Deferred and streaming requests may stay open in any number; their
  answers and stream frames go out whenever the worker sends them.
- The loop multiplexes the dispatcher socket, the user's registered file
  descriptors and the heartbeat timer, with ``selectors``. When idle for
  ``heartbeat_interval`` it sends a heartbeat and calls ``on_idle()``.
- EOF on the dispatcher socket means the dispatcher is gone: the loop ends,
  ``teardown()`` runs and the process exits.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import messages
from .constants import DEFERRED, LOG_CRITICAL, LOG_WARNING
from .logs import Logger
from .model import RejectRequest, Request, Response, encode_body
from .routing import Router

__all__ = ['Worker', 'ApiHandler']

# Exit code of a worker whose setup() raised, so the pool can log the reason.
EXIT_SETUP_FAILED = 3
# Longest time a frame waits in a batch before it is sent, in seconds.
_BATCH_DELAY = 0.001


def _iov_max() -> int:
    """Return IOV_MAX, the maximum number of buffers one sendmsg() accepts."""
    try:
        limit = os.sysconf('SC_IOV_MAX')
    except (AttributeError, ValueError, OSError):
        limit = -1
    # POSIX requires at least 16 (_XOPEN_IOV_MAX). Linux reports 1024.
    return limit if limit > 0 else 16


_IOV_MAX = _iov_max()


class ApiHandler:
    """A group of ``@api`` routes under the class's ``PATTERN`` prefix.

    List subclasses in ``Worker.HANDLERS``; each is created once per worker
    process and reaches its worker as ``self.worker``. A subclass inherits its
    parent's routes under its own ``PATTERN``.
    """

    PATTERN = ''

    def __init__(self, worker: Worker):
        self.worker = worker


class _Channel:
    """The worker's end of its socketpair: blocking sends of whole frames.

    While the worker runs a batch of requests that arrived together, frames
    are collected and sent with one ``sendmsg``: when the batch ends, or
    with the first frame queued more than ``_BATCH_DELAY`` seconds after
    the batch began or its last send. So a response can wait for the
    handlers after it in its batch. ``flush=True`` (keep_alive, RETURN)
    sends at once.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.last_send = time.monotonic()
        self.out: list = []
        self.batching = False
        self.batch_started = 0.0

    def send(self, message: tuple, flush: bool = False) -> None:
        self.out.extend(messages.encode(message))
        self._queued(flush)

    def _queued(self, flush: bool) -> None:
        """Send the frames now, unless they may still wait in the batch."""
        if not self.batching or flush:
            self.flush()
            return
        now = time.monotonic()
        if now - self.batch_started > _BATCH_DELAY:
            self.batch_started = now
            self.flush()

    def flush(self) -> None:
        buffers = self.out
        if not buffers:
            return
        self.out = []
        if len(buffers) > _IOV_MAX:
            self._send_rest(buffers, 0)
        else:
            sent = self.sock.sendmsg(buffers)
            # Every buffer is bytes or a byte-format memoryview from
            # PickleBuffer.raw(), so len() is its size in bytes.
            if sent != sum(map(len, buffers)):
                self._send_rest(buffers, sent)
        self.last_send = time.monotonic()

    def _send_rest(self, buffers: list, sent: int) -> None:
        """Send what follows the first ``sent`` bytes of ``buffers``.

        Passes at most ``_IOV_MAX`` buffers to each sendmsg call.
        """
        index = 0
        count = len(buffers)
        while True:
            while index < count and sent >= len(buffers[index]):
                sent -= len(buffers[index])
                index += 1
            if index == count:
                return
            if sent:
                buffers[index] = memoryview(buffers[index])[sent:]
            sent = self.sock.sendmsg(buffers[index:index + _IOV_MAX])

    def send_response(self, request_id: int, response: Response,
                      ends_handler: bool = False) -> None:
        self.send_fields(request_id, response.status, response.headers, response.cookies,
                         response._data, ends_handler)

    def send_fields(self, request_id: int, status: Any, headers: Any, cookies: Any,
                    data: Any, ends_handler: bool = False) -> None:
        """Queue or send a RESPONSE frame.

        Raises ValueError or TypeError when the status or data cannot be sent.
        """
        if status.__class__ is not int or not 100 <= status <= 599:
            raise ValueError(f'invalid HTTP status {status!r}; expected an int 100-599')
        body, content_type = encode_body(data)
        wrapped = messages.wrap_body(body)
        message = (messages.RESPONSE, request_id, status, headers, cookies, wrapped,
                   content_type, ends_handler)
        if wrapped is body:
            self.out.append(messages.encode_in_band(message))
        else:
            self.out.extend(messages.encode(message))
        self._queued(False)

    def stream_open(self, request_id, content_type, headers, cookies) -> None:
        self.send((messages.STREAM_OPEN, request_id, content_type, headers, cookies))

    def stream_data(self, request_id, data) -> None:
        self.send((messages.STREAM_DATA, request_id, messages.wrap_body(data)))

    def stream_end(self, request_id) -> None:
        self.send((messages.STREAM_END, request_id))


class Worker:
    """Base class of a pool's worker; subclass it and add ``@api`` methods.

    Instances live in the worker process only. ``self.kwargs`` holds the
    extra keyword arguments given to ``WorkerPool``; ``self.log`` sends log
    records to the dispatcher, which prints them one line each.
    """

    HANDLERS: list[type[ApiHandler]] = []
    LOG_NAME = '{cls}[{worker_id}]'

    def __init__(self, worker_id: int, request_queue: Any = None,
                 control_queue: Any = None, response_queue: Any = None,
                 heartbeat_interval: float = 1, log_level: int = LOG_WARNING,
                 pool_name: str | None = None, **kwargs: Any):
        # The three queue arguments exist so subclasses written for
        # uhttp-workers keep their __init__ signature; frames travel over
        # the worker's socketpair instead.
        self._worker_id = worker_id
        self._pool_name = pool_name or type(self).__name__
        self._heartbeat_interval = heartbeat_interval
        self.kwargs = kwargs
        self._channel: _Channel | None = None
        self.log = Logger(f'{type(self).__name__}[{worker_id}]', level=log_level,
                          sink=self._send_log)
        self._router = Router()
        self._readers: dict[Any, Callable] = {}
        self._writers: dict[Any, Callable] = {}
        self._selector: selectors.BaseSelector | None = None
        self._current_request_id: int | None = None
        self._running = True
        self._accepting = True
        # Request ids that DISCONNECT or CANCEL frames in the running batch name.
        self._abandoned: set | None = None
        # Shared with the dispatcher: REQUEST frames read so far (see _run_batch).
        self._read_count = None

    # -- identity ---------------------------------------------------------

    @property
    def worker_id(self) -> int:
        return self._worker_id

    @property
    def pool_name(self) -> str:
        return self._pool_name

    @property
    def pid(self) -> int:
        return os.getpid()

    # -- hooks for subclasses ---------------------------------------------

    def setup(self) -> None:
        """Prepare per-process resources; runs once, after the memory cap."""

    def teardown(self) -> None:
        """Release resources; runs once when the worker stops."""

    def do_check(self, request: Request) -> Any:
        """Check a request before routing: return (data, status) to reject it."""
        return None

    def on_request_error(self, request: Request, err: Exception) -> Response:
        """Answer a handler exception; the default logs it and answers 500."""
        self.log.error('%s %s failed: %s\n%s', request.method, request.path,
                       err, traceback.format_exc())
        return Response(request.request_id, {'error': 'Internal server error'}, 500)

    def on_config(self, config: Any) -> None:
        """Receive a value sent with ``WorkerPool.send_config()``."""

    def on_idle(self) -> None:
        """Run periodic work; called after each idle ``heartbeat_interval``."""

    def on_disconnect(self, request_id: int) -> None:
        """Forget a deferred or streaming request whose client went away."""

    # -- calls for subclasses ---------------------------------------------

    def pause(self) -> None:
        """Stop taking new requests; the pool sends them to other workers."""
        if self._accepting:
            self._accepting = False
            self._send((messages.PAUSE,))

    def resume(self) -> None:
        """Take new requests again after pause()."""
        if not self._accepting:
            self._accepting = True
            self._send((messages.RESUME,))

    def keep_alive(self) -> None:
        """Reset the request timeout and stuck detection during long work.

        Inside a handler it extends the running request; outside one it
        extends every deferred request of this worker.
        """
        if self._channel is not None:
            self._channel.send((messages.KEEPALIVE, self._current_request_id), flush=True)

    def forward(self, route: str, data: Any) -> None:
        """Hand ``data`` to the pool that serves ``route``, fire-and-forget."""
        self._send((messages.FORWARD, route, data))

    def register_reader(self, fd: Any, callback: Callable) -> None:
        """Call ``callback(fd)`` from the worker loop whenever fd is readable."""
        self._register(self._readers, fd, callback)

    def unregister_reader(self, fd: Any) -> None:
        self._unregister(self._readers, fd)

    def register_writer(self, fd: Any, callback: Callable) -> None:
        """Call ``callback(fd)`` whenever fd is writable; unregister when done."""
        self._register(self._writers, fd, callback)

    def unregister_writer(self, fd: Any) -> None:
        self._unregister(self._writers, fd)

    # -- internals --------------------------------------------------------

    def _send(self, message: tuple) -> None:
        if self._channel is not None:
            self._channel.send(message)

    def _send_log(self, name: str, level: int, message: str) -> None:
        if self._channel is not None:
            self._channel.send((messages.LOG, name, level, message))
        else:
            print(f'{name}: {message}', file=sys.stderr)

    def _register(self, table: dict, fd: Any, callback: Callable) -> None:
        table[fd] = callback
        self._sync_selector(fd)

    def _unregister(self, table: dict, fd: Any) -> None:
        table.pop(fd, None)
        self._sync_selector(fd)

    def _sync_selector(self, fd: Any) -> None:
        selector = self._selector
        if selector is None:
            return
        events = (selectors.EVENT_READ if fd in self._readers else 0) | (
            selectors.EVENT_WRITE if fd in self._writers else 0)
        try:
            selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        if events:
            selector.register(fd, events, fd)

    def _build_routes(self) -> None:
        self._add_routes(self, '')
        for handler_class in self.HANDLERS:
            handler = handler_class(self)
            self._add_routes(handler, handler_class.PATTERN)

    def _add_routes(self, owner: Any, prefix: str) -> None:
        seen = set()
        for klass in type(owner).__mro__:
            for name, value in vars(klass).items():
                if name in seen or not hasattr(value, '_api_pattern'):
                    continue
                seen.add(name)
                self._router.add(prefix + value._api_pattern, value._api_methods,
                                 getattr(owner, name))

    def _format_log_name(self) -> str:
        values = {'cls': type(self).__name__, 'worker_id': self._worker_id,
                  'pool_name': self._pool_name, 'pid': os.getpid()}
        try:
            return self.LOG_NAME.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError) as err:
            self.log.warning('invalid LOG_NAME %r (%s); using the default name',
                             self.LOG_NAME, err)
            return f'{type(self).__name__}[{self._worker_id}]'

    def _handle_request(self, request: Request) -> Any:
        """Run checks, routing and the handler.

        Return the handler's result (DEFERRED included), a Response for a
        request that a check rejected or no route matched, or the result of
        on_request_error when the handler raised.
        """
        try:
            result = self.do_check(request)
            if result is not None:
                data, status = result
                return Response(request.request_id, data, status)
        except RejectRequest as err:
            return Response(request.request_id, err.data, err.status)
        except Exception as err:  # the check is user code; keep the worker alive
            self.log.error('do_check failed: %s\n%s', err, traceback.format_exc())
            return Response(request.request_id, {'error': 'Internal server error'}, 500)

        match = self._router.match(request.method, request.path)
        if match.handler is None:
            if match.allowed:
                return Response(request.request_id, {'error': 'Method not allowed'}, 405,
                                {'Allow': ', '.join(match.allowed)})
            return Response(request.request_id, {'error': 'Not found'}, 404)
        request.path_params = match.params

        try:
            return match.handler(request)
        except RejectRequest as err:
            return Response(request.request_id, err.data, err.status)
        except Exception as err:  # a handler bug becomes a 500, not a dead worker
            return self._request_error(request, err)

    def _request_error(self, request: Request, err: Exception) -> Any:
        """Return what on_request_error returned, or a 500 Response.

        The hook may return anything a handler may return except DEFERRED.
        DEFERRED, an empty value or an exception in the hook gives the 500.
        """
        try:
            result = self.on_request_error(request, err)
        except Exception:  # the error hook itself failed: log both and answer 500
            self.log.error('on_request_error failed:\n%s', traceback.format_exc())
            result = None
        if isinstance(result, Response):
            return result
        if not result or result is DEFERRED:
            return Response(request.request_id, {'error': 'Internal server error'}, 500)
        return result

    def _run_request(self, message: tuple) -> None:
        channel = self._channel
        # A RETURN goes out at once, because until it arrives the dispatcher
        # treats the returned request as the one this worker runs.
        if not self._accepting:
            # Paused: hand back a request that was sent ahead, unstarted.
            channel.send((messages.RETURN, message[1]), flush=True)
            return
        if self._abandoned and message[1] in self._abandoned:
            # Its client left or it timed out before it started, so it goes
            # back unrun.
            channel.send((messages.RETURN, message[1]), flush=True)
            return
        request = Request._from_message(message, channel)
        request_id = request.request_id
        self._current_request_id = request_id
        try:
            result = self._handle_request(request)
        finally:
            self._current_request_id = None
        if result is DEFERRED:
            channel.send((messages.READY, request_id))
            return
        status, headers, cookies, data = _response_fields(request_id, result)
        try:
            channel.send_fields(request_id, status, headers, cookies, data, True)
        except (TypeError, ValueError, RecursionError) as err:
            # The handler returned something that cannot be encoded, or a
            # value nested too deeply for the JSON encoder.
            self.log.error('%s %s: cannot send the response: %s',
                           request.method, request.path, err)
            channel.send_fields(request_id, 500, None, None,
                                {'error': 'Internal server error'}, True)

    def _on_message(self, message: tuple) -> None:
        kind = message[0]
        if kind == messages.REQUEST:
            self._run_request(message)
        elif kind == messages.CONFIG:
            self._call_hook(self.on_config, message[1])
        elif kind == messages.DISCONNECT:
            self._call_hook(self.on_disconnect, message[1])
        elif kind == messages.CANCEL:
            pass  # Only _run_batch reads CANCEL, to skip the request it names.
        elif kind == messages.STOP:
            self._running = False

    def _call_hook(self, hook: Callable, *args: Any) -> None:
        try:
            hook(*args)
        except Exception:  # user hooks never stop the worker loop
            self.log.error('%s failed:\n%s', hook.__name__, traceback.format_exc())

    def _serve(self, sock: socket.socket) -> None:
        reader = messages.FrameReader(sock)
        selector = selectors.DefaultSelector()
        self._selector = selector
        selector.register(sock, selectors.EVENT_READ, sock)
        for fd in set(self._readers) | set(self._writers):
            self._sync_selector(fd)
        channel = self._channel
        interval = self._heartbeat_interval

        while self._running:
            timeout = max(0.0, channel.last_send + interval - time.monotonic())
            events = selector.select(timeout)
            if not events:
                channel.send((messages.HEARTBEAT,))
                self._call_hook(self.on_idle)
                continue
            for key, mask in events:
                target = key.data
                if target is sock:
                    try:
                        received = reader.read()
                    except InterruptedError:
                        continue
                    except OSError:
                        received = None
                    if received is None:
                        self._running = False
                        break
                    if received:
                        self._run_batch(received)
                else:
                    if mask & selectors.EVENT_WRITE and target in self._writers:
                        self._call_hook(self._writers[target], target)
                    if mask & selectors.EVENT_READ and target in self._readers:
                        self._call_hook(self._readers[target], target)
                if not self._running:
                    break

    def _run_batch(self, received: list) -> None:
        """Handle messages that arrived together, sending their frames in batches."""
        channel = self._channel
        channel.batching = True
        channel.batch_started = time.monotonic()
        if len(received) > 1:
            requests, self._abandoned = _scan_batch(received)
        else:
            requests = 1 if received[0][0] == messages.REQUEST else 0
        if requests and self._read_count is not None:
            # The responses of this batch go out together at its end, so any
            # of its requests may start before the dispatcher learns that
            # the earlier ones ended. Should this worker die, the dispatcher
            # reads this count and runs none of them again elsewhere.
            self._read_count.value += requests
        try:
            for message in received:
                self._on_message(message)
                if not self._running:
                    break
        finally:
            self._abandoned = None
            channel.batching = False
            channel.flush()


def _scan_batch(received: list) -> tuple[int, set | None]:
    """Return the count of REQUEST frames in ``received`` and the ids it cancels.

    The ids are those DISCONNECT and CANCEL frames name, or None. A request
    sent ahead waits in the socket while the handler before it runs. When
    its client leaves meanwhile, the DISCONNECT arrives behind it, and the
    worker usually reads both at once when that handler ends.
    A request body of 64 KiB or more is read on its own, so a frame behind
    it comes in the next read and that request still runs.
    """
    requests = 0
    ids = None
    for message in received:
        kind = message[0]
        if kind == messages.REQUEST:
            requests += 1
        elif kind == messages.DISCONNECT or kind == messages.CANCEL:
            if ids is None:
                ids = set()
            ids.add(message[1])
    return requests, ids


def _response_fields(request_id: int, result: Any) -> tuple:
    """Return (status, headers, cookies, data) for a handler's result.

    The result is a Response, a (data, status) or (data, status, headers)
    tuple, or the data itself with status 200.
    """
    if result.__class__ is dict:
        return 200, None, None, result
    if isinstance(result, Response):
        result.request_id = request_id
        return result.status, result.headers, result.cookies, result._data
    if isinstance(result, tuple) and 2 <= len(result) <= 3:
        if len(result) == 3:
            data, status, headers = result
            return status, headers, None, data
        data, status = result
        return status, None, None, data
    return 200, None, None, result


def _set_parent_death_signal() -> None:
    """Ask Linux to SIGKILL this process when its parent exits."""
    if not sys.platform.startswith('linux'):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _apply_memory_limit(worker: Worker, limit_mb: Any) -> None:
    if not limit_mb:
        return
    try:
        import resource
        limit = int(limit_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as err:
        worker.log.warning('could not cap the address space at %s MiB: %s',
                           limit_mb, err)


def worker_main(worker_class: type[Worker], worker_id: int, pool_name: str,
                sock: socket.socket, heartbeat_interval: float, log_level: int,
                memory_limit_mb: Any, kwargs: dict, read_count: Any = None) -> None:
    """Entry point of a worker process (runs in the child)."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    _set_parent_death_signal()
    # The dispatcher stops workers with a STOP frame after draining them. A
    # SIGTERM sent to the whole group (systemd's default KillMode) must not
    # end a worker that still holds requests; SIGKILL still works.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    sock.setblocking(True)
    channel = _Channel(sock)
    if memory_limit_mb is not None:
        kwargs = dict(kwargs, worker_memory_limit_mb=memory_limit_mb)
    try:
        worker = worker_class(
            worker_id=worker_id, request_queue=None, control_queue=None,
            response_queue=None, heartbeat_interval=heartbeat_interval,
            log_level=log_level, pool_name=pool_name, **kwargs)
    except Exception:
        channel.send((messages.LOG, f'{worker_class.__name__}[{worker_id}]',
                      LOG_CRITICAL, f'worker __init__ failed:\n{traceback.format_exc()}'))
        sys.exit(EXIT_SETUP_FAILED)
    worker._channel = channel
    worker._read_count = read_count
    worker.log.name = worker._format_log_name()
    _apply_memory_limit(worker, memory_limit_mb)

    try:
        worker._build_routes()
        worker.setup()
    except Exception:
        worker.log.critical('setup() failed:\n%s', traceback.format_exc())
        sys.exit(EXIT_SETUP_FAILED)

    channel.send((messages.HELLO, os.getpid()))
    try:
        worker._serve(sock)
    finally:
        try:
            worker.teardown()
        except Exception:  # teardown must not keep the process alive
            try:
                worker.log.error('teardown() failed:\n%s', traceback.format_exc())
            except OSError:
                pass
