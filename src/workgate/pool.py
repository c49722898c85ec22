"""Worker pools: starting, feeding, watching and restarting worker processes.

Theory of operation (dispatcher side):

- Each worker slot owns one process and the dispatcher's end of its
  socketpair. A slot is *starting* until the worker sends HELLO (its
  ``setup()`` finished), then *ready*.
- The pool keeps its waiting requests in a deque and hands them to ready,
  unpaused slots, emptiest inbox first. A slot's *inbox* is the ordered list
  of requests sent to it whose handler has not finished; the worker runs
  them strictly in that order, one at a time. Its head is the request
  running (or about to run); the rest were sent ahead (prefetched) so that
  a worker with fast handlers gets several requests per system call.
- How far ahead the pool sends adapts to the pool's handler time (an
  exponential moving average): ``PREFETCH_BUDGET`` seconds of expected work
  per worker, at most ``MAX_PREFETCH`` requests. When handlers are slow,
  nothing is sent ahead, so no request waits behind a slow one in a busy
  worker, unless the handler times are *steady* (their average deviation
  at most ``STEADY_SPREAD`` of their average). Then one request
  waits ahead in each worker, which runs it as soon as its handler returns
  instead of idling for a round trip through the dispatcher. Nothing is
  sent ahead to a worker whose running handler is overdue (see
  ``OVERDUE_FACTOR``). A request sent ahead together with an unusually long
  one still waits for it: that is the price of sending ahead. When its
  client leaves or it times out meanwhile, the worker usually reads the
  DISCONNECT or CANCEL together with it and hands it back unstarted
  (RETURN), and the pool drops it.
- A handler that returned DEFERRED leaves its request *held* by the slot
  (deferred answers and streams) until it is answered.
- A worker is dead when its process exits (the multiprocessing sentinel
  becomes readable). Its victims (held requests plus the inbox head and
  the requests the worker had read with it, any of which may have
  started) are failed only after its socket reached EOF or a short
  grace period passed, so an answer it sent just before dying is still
  delivered. The rest of its inbox never started: it goes back to the front
  of the waiting queue, so no request is lost. A paused worker returns the
  requests it had not started the same way.
- A slot whose worker runs a handler with no frame for ``stuck_timeout`` is
  killed with SIGKILL, together with its process group.
- Restarts are counted in a sliding ``restart_window``; more than
  ``max_restarts`` marks the pool degraded. A degraded pool answers 503,
  restarts nothing, and recovers after ``recovery_interval`` when set.
  A worker exiting with ``permanent_failure_exitcode`` is parked instead.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import queue as _queue
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from . import messages
from .constants import LOG_WARNING
from .routing import match_prefix
from .worker import EXIT_SETUP_FAILED, Worker, worker_main

if TYPE_CHECKING:
    from .dispatcher import Dispatcher

__all__ = ['WorkerPool']

# Prefetch: expected seconds of queued work per worker, and a hard cap.
PREFETCH_BUDGET = 0.001
MAX_PREFETCH = 16
# Weight of the newest handler time in the pool's moving average.
_EWMA_WEIGHT = 0.05
# Handler times count as steady when their average absolute deviation is at
# most this fraction of their average. The dispatcher times each handler by
# when it reads the response, so a uniform 5 ms CPU handler on a saturated
# 2-core VM measured 0.05 to 0.3. Short and long handlers mixed in one pool
# measure near 1.
STEADY_SPREAD = 0.5
# A busy worker whose running handler started more than OVERDUE_FACTOR pool
# averages ago (and at least OVERDUE_MIN seconds ago) is sent nothing ahead:
# its request may be an unusually long one. The floor keeps scheduling
# delays of a loaded machine, which reach tens of milliseconds, from
# counting as overdue in pools of fast handlers.
OVERDUE_FACTOR = 4
OVERDUE_MIN = 0.25

# After a worker process exits, wait this long for EOF on its socket (which
# delivers frames it sent just before dying) before failing its requests.
_EOF_GRACE = 0.5
# Delay before restarting a worker that died before finishing setup(),
# doubled after each consecutive failure up to _MAX_BACKOFF seconds.
_STARTUP_BACKOFF = 0.5
_MAX_BACKOFF = 10.0
_SOCKET_BUFFER = 4 * 1024 * 1024

STARTING = 'starting'
READY = 'ready'
STOPPING = 'stopping'
DEAD = 'dead'
PARKED = 'parked'


def describe_exit(exitcode: int | None) -> str:
    """Return 'exit code N' or 'signal SIGNAME' for a process exit code."""
    if exitcode is None:
        return 'unknown exit status'
    if exitcode < 0:
        try:
            return f'signal {signal.Signals(-exitcode).name}'
        except ValueError:
            return f'signal {-exitcode}'
    return f'exit code {exitcode}'


class _WorkerConnection(asyncio.BufferedProtocol):
    """The dispatcher's end of one worker's socketpair."""

    def __init__(self, pool: WorkerPool, slot: _Slot):
        self.pool = pool
        self.slot = slot
        self.decoder = messages.FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes):
        slot = self.slot
        slot.last_seen = time.monotonic()
        try:
            received = self.decoder.buffer_updated(nbytes)
        except messages.FrameError as err:
            self.pool._log_error(f'worker {slot.label} sent a bad frame ({err}); killing it')
            slot.kill()
            return
        on_message = self.pool._dispatcher._on_worker_message
        for message in received:
            on_message(self.pool, slot, message)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.transport = None
        self.slot.on_eof()


class _Slot:
    """One worker position in a pool; its process changes on every restart."""

    __slots__ = ('pool', 'index', 'process', 'pid', 'connection', 'state',
                 'inbox', 'head_since', 'held', 'paused', 'last_seen', 'started_at',
                 'restarts', 'exitcode', 'exited', 'eof', 'kill_reason',
                 'grace_handle', 'startup_failures', 'out', 'flush_scheduled', 'sent',
                 'read_count')

    def __init__(self, pool: WorkerPool, index: int):
        self.pool = pool
        self.index = index
        self.process = None
        self.pid: int | None = None
        self.connection: _WorkerConnection | None = None
        self.state = DEAD
        self.inbox: collections.deque = collections.deque()
        self.head_since = 0.0
        self.held: dict[int, Any] = {}
        self.paused = False
        self.last_seen = time.monotonic()
        self.started_at = 0.0
        self.restarts = 0
        self.exitcode: int | None = None
        self.exited = False
        self.eof = False
        self.kill_reason: str | None = None
        self.grace_handle = None
        self.startup_failures = 0
        self.out: list = []
        self.flush_scheduled = False
        # REQUEST frames sent to the current process, and the count of
        # those it has read, which the worker keeps in shared memory.
        self.sent = 0
        self.read_count = None

    @property
    def label(self) -> str:
        return f'{self.pool.name}[{self.index}] pid {self.pid}'

    @property
    def alive(self) -> bool:
        return self.state in (STARTING, READY, STOPPING)

    @property
    def current(self) -> int | None:
        """Id of the request whose handler runs (or runs next), else None."""
        return self.inbox[0][0] if self.inbox else None

    def send(self, message: tuple) -> bool:
        """Queue a frame; frames queued in one loop turn go out in one write."""
        connection = self.connection
        if connection is None or connection.transport is None:
            return False
        out = self.out
        out.extend(messages.encode(message))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.pool._loop.call_soon(self.flush)
        return True

    def flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out:
            return
        connection = self.connection
        if connection is not None and connection.transport is not None:
            connection.transport.writelines(out)
        self.out = []

    def handler_done(self, now: float) -> tuple | None:
        """Pop the inbox head after its handler ended; feed the pool's average."""
        inbox = self.inbox
        if not inbox:
            return None
        head = inbox.popleft()
        pool = self.pool
        elapsed = now - self.head_since
        deviation = elapsed - pool._handler_time
        pool._handler_time += deviation * _EWMA_WEIGHT
        pool._handler_spread += (abs(deviation) - pool._handler_spread) * _EWMA_WEIGHT
        self.head_since = now
        return head

    def kill(self, reason: str | None = None) -> None:
        """SIGKILL the worker and its process group."""
        if reason and self.kill_reason is None:
            self.kill_reason = reason
        pid = self.pid
        if pid is None or self.exited:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def on_eof(self) -> None:
        self.eof = True
        if self.exited:
            self.pool._on_worker_gone(self)
        elif self.state != DEAD and self.pool._loop is not None:
            # Usually the process is exiting and its sentinel follows at once.
            # One that keeps running without its socket is of no use.
            self.pool._loop.call_later(_EOF_GRACE, self._check_closed, self.process)

    def _check_closed(self, process) -> None:
        if self.process is process and not self.exited and self.state != DEAD:
            self.kill('closed its connection')


class _RequestQueue:
    """``pool.request_queue``: a dispatcher-side view of the waiting queue.

    Kept so code written for uhttp-workers can enqueue fire-and-forget
    requests with ``pool.request_queue.put(Request(request_id=-1, ...))``.
    """

    def __init__(self, pool: WorkerPool):
        self._pool = pool

    def put(self, request, block: bool = True, timeout: float | None = None) -> None:
        self._pool._enqueue_forward(request._to_message(), drop_when_full=False)

    def put_nowait(self, request) -> None:
        if not self._pool._enqueue_forward(request._to_message(), drop_when_full=True):
            raise _queue.Full

    def qsize(self) -> int:
        return len(self._pool._waiting)

    def empty(self) -> bool:
        return not self._pool._waiting

    def full(self) -> bool:
        return len(self._pool._waiting) >= self._pool.max_queue


class WorkerPool:
    """A group of worker processes of one Worker class serving some routes.

    ``routes`` lists pool route patterns (``'/api/**'`` or exact paths); None
    makes this the fallback pool. Extra keyword arguments reach each worker
    as ``self.kwargs``. ``max_queue`` bounds the fire-and-forget requests
    (``forward()``) waiting in this pool; client requests are bounded by the
    dispatcher's ``max_pending``.
    """

    def __init__(self, worker_class: type[Worker], num_workers: int = 1,
                 routes: list[str] | None = None, timeout: float = 30,
                 stuck_timeout: float = 60, heartbeat_interval: float = 1,
                 log_level: int = LOG_WARNING, max_restarts: int = 10,
                 restart_window: float = 300, queue_warning: int = 100,
                 recovery_interval: float | None = None,
                 permanent_failure_exitcode: int | None = None,
                 worker_memory_limit_mb: int | None = None,
                 max_queue: int = 10000, **kwargs: Any):
        if not (isinstance(worker_class, type) and issubclass(worker_class, Worker)):
            raise TypeError(f'worker_class must be a Worker subclass, got {worker_class!r}')
        if int(num_workers) < 1:
            raise ValueError(f'num_workers must be at least 1, got {num_workers!r}')
        for name, value in (('timeout', timeout), ('stuck_timeout', stuck_timeout),
                            ('heartbeat_interval', heartbeat_interval)):
            if not value or value <= 0:
                raise ValueError(f'{name} must be a positive number of seconds, got {value!r}')
        if routes is not None:
            if isinstance(routes, str):
                raise TypeError("routes must be a list of patterns, e.g. ['/api/**']")
            for route in routes:
                if not isinstance(route, str) or not route.startswith('/'):
                    raise ValueError(f'pool route {route!r} must be a string starting with /')
        self._worker_class = worker_class
        self._num_workers = int(num_workers)
        self._routes = list(routes) if routes is not None else None
        self._timeout = timeout
        self._stuck_timeout = stuck_timeout
        self._heartbeat_interval = heartbeat_interval
        self._log_level = log_level
        self._max_restarts = max_restarts
        self._restart_window = restart_window
        self._queue_warning = queue_warning
        self._recovery_interval = recovery_interval
        self._permanent_failure_exitcode = permanent_failure_exitcode
        self._memory_limit_mb = worker_memory_limit_mb
        self.max_queue = max_queue
        self._kwargs = kwargs
        self._name = worker_class.__name__
        self._waiting: collections.deque = collections.deque()
        self._slots = [_Slot(self, i) for i in range(self._num_workers)]
        self._restart_times: collections.deque = collections.deque()
        self._degraded = False
        self._degraded_since: float | None = None
        self._dispatcher: Dispatcher | None = None
        self._context = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._request_queue = _RequestQueue(self)
        self._last_queue_warning = 0.0
        self.deaths: collections.Counter = collections.Counter()
        self._handler_time = PREFETCH_BUDGET
        # Average absolute deviation of the handler time; starts unsteady.
        self._handler_spread = PREFETCH_BUDGET
        self._alive = 0  # slots whose process runs: starting, ready or stopping
        self._stop_check = None  # set by _stop(): ends its future once all are gone

    # -- public properties (names kept from uhttp-workers) -------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def num_workers(self) -> int:
        return self._num_workers

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def kwargs(self) -> dict:
        return self._kwargs

    @property
    def routes(self) -> list[str] | None:
        return self._routes

    @property
    def request_queue(self) -> _RequestQueue:
        return self._request_queue

    @property
    def is_degraded(self) -> bool:
        return self._degraded

    @property
    def recovery_interval(self) -> float | None:
        return self._recovery_interval

    @property
    def alive_count(self) -> int:
        return self._alive

    @property
    def ready_count(self) -> int:
        return sum(1 for slot in self._slots if slot.state == READY)

    @property
    def parked_count(self) -> int:
        return sum(1 for slot in self._slots if slot.state == PARKED)

    @property
    def queue_size(self) -> int:
        return len(self._waiting)

    @property
    def pending_count(self) -> int:
        """Requests of this pool in flight: waiting plus held by workers."""
        return len(self._waiting) + sum(len(slot.held) for slot in self._slots)

    def matches(self, path: str) -> bool:
        if self._routes is None:
            return True
        return any(match_prefix(route, path) for route in self._routes)

    def send_config(self, config: Any) -> None:
        """Send ``config`` to every live worker's ``on_config()``."""
        self.broadcast((messages.CONFIG, config))

    def broadcast(self, message: tuple) -> None:
        for slot in self._slots:
            if slot.alive:
                slot.send(message)

    def status(self) -> dict:
        now = time.monotonic()
        return {
            'name': self._name,
            'degraded': self._degraded,
            'alive_count': self.alive_count,
            'ready_count': self.ready_count,
            'parked_count': self.parked_count,
            'queue_size': len(self._waiting),
            'pending_count': self.pending_count,
            'workers': [
                {
                    'id': slot.index,
                    'pid': slot.pid,
                    'alive': slot.alive,
                    'state': slot.state,
                    'parked': slot.state == PARKED,
                    'paused': slot.paused,
                    'last_seen': round(now - slot.last_seen, 3),
                    'current_request': slot.current,
                    'held_requests': len(slot.held),
                    'inbox': len(slot.inbox),
                    'restarts': slot.restarts,
                }
                for slot in self._slots
            ],
        }

    # -- lifecycle, called by the dispatcher ------------------------------

    def _configure_workers(self, num_workers: int) -> None:
        if self._slots and self._slots[0].pid is not None:
            raise RuntimeError('cannot change num_workers of a running pool')
        self._num_workers = int(num_workers)
        self._slots = [_Slot(self, i) for i in range(self._num_workers)]

    def _start(self, dispatcher: Dispatcher, context) -> None:
        self._dispatcher = dispatcher
        self._context = context
        self._loop = asyncio.get_running_loop()
        for slot in self._slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (parent_sock, child_sock):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            except OSError:
                pass
        read_count = self._context.RawValue('Q', 0)
        process = self._context.Process(
            target=worker_main,
            name=f'workgate:{self._name}[{slot.index}]',
            args=(self._worker_class, slot.index, self._name, child_sock,
                  self._heartbeat_interval, self._log_level, self._memory_limit_mb,
                  self._kwargs, read_count))
        try:
            process.start()
        except Exception as err:
            parent_sock.close()
            child_sock.close()
            self._log_error(f'could not start worker {self._name}[{slot.index}]: {err}')
            self._schedule_restart(slot, 1.0)
            return
        finally:
            if process.pid is not None:
                child_sock.close()
        slot.process = process
        slot.pid = process.pid
        if not slot.alive:
            self._alive += 1
        slot.state = STARTING
        slot.inbox.clear()
        slot.sent = 0
        slot.read_count = read_count
        slot.out = []
        slot.paused = False
        slot.exited = False
        slot.eof = False
        slot.exitcode = None
        slot.kill_reason = None
        slot.started_at = slot.last_seen = time.monotonic()
        connection = _WorkerConnection(self, slot)
        slot.connection = connection
        parent_sock.setblocking(False)
        loop = self._loop
        loop.create_task(self._attach(slot, parent_sock, connection))
        loop.add_reader(process.sentinel, self._on_sentinel, slot, process)
        self._dispatcher.log.debug('worker %s started', slot.label)

    async def _attach(self, slot: _Slot, sock: socket.socket, connection) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: connection, sock)
        except OSError as err:
            self._log_error(f'worker {slot.label}: cannot attach its socket: {err}')
            sock.close()
            slot.kill('socket attach failed')

    def _on_sentinel(self, slot: _Slot, process) -> None:
        loop = self._loop
        loop.remove_reader(process.sentinel)
        if slot.process is not process:
            return
        process.join(0)
        slot.exitcode = process.exitcode
        slot.exited = True
        try:
            os.killpg(slot.pid, signal.SIGKILL)  # orphans it left in its group
        except (ProcessLookupError, PermissionError, OSError):
            pass
        try:
            process.close()
        except ValueError:
            pass
        if slot.eof or slot.connection is None or slot.connection.transport is None:
            self._on_worker_gone(slot)
        else:
            slot.grace_handle = loop.call_later(_EOF_GRACE, self._force_gone, slot, process)

    def _force_gone(self, slot: _Slot, process) -> None:
        slot.grace_handle = None
        connection = slot.connection
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
        else:
            self._on_worker_gone(slot)

    def _on_worker_gone(self, slot: _Slot) -> None:
        """Handle a worker whose process exited and whose socket is closed."""
        if slot.state == DEAD or slot.state == PARKED:
            return
        if slot.grace_handle is not None:
            slot.grace_handle.cancel()
            slot.grace_handle = None
        was_stopping = slot.state == STOPPING or self._stopping
        was_starting = slot.state == STARTING
        exitcode = slot.exitcode
        if slot.alive:
            self._alive -= 1
        slot.state = DEAD
        slot.connection = None
        self._requeue_unstarted(slot)
        victims = list(slot.held.items())
        slot.held.clear()
        dispatcher = self._dispatcher

        if was_stopping:
            dispatcher._fail_victims_on_stop(self, slot, victims)
            if self._stop_check is not None:
                self._stop_check()
            return

        parked = (self._permanent_failure_exitcode is not None
                  and exitcode == self._permanent_failure_exitcode)
        if slot.kill_reason:
            reason = slot.kill_reason
        elif was_starting and exitcode == EXIT_SETUP_FAILED:
            reason = 'setup failed'
        elif was_starting:
            reason = 'died during start-up'
        else:
            reason = 'died'
        if parked:
            reason = f'parked exit={exitcode}'
            slot.state = PARKED
        self.deaths[reason.split(' ')[0]] += 1
        action = 'parked' if parked else 'restarting'
        dispatcher.log.error('worker %s %s (%s, %d victims); %s',
                             slot.label, reason, describe_exit(exitcode),
                             len(victims), action)
        dispatcher._worker_died(self, slot.index, reason, exitcode, victims)

        if parked:
            if self.parked_count >= self._num_workers:
                self._set_degraded(True, 'every worker is parked')
            return
        self._count_restart()
        if self._degraded:
            return
        if was_starting:
            # A worker that cannot start would otherwise restart in a hot loop.
            slot.startup_failures += 1
            delay = min(_STARTUP_BACKOFF * 2 ** (slot.startup_failures - 1), _MAX_BACKOFF)
            slot.restarts += 1
            dispatcher.log.warning('worker %s[%d] will restart in %.1fs after %d failed starts',
                                   self._name, slot.index, delay, slot.startup_failures)
            self._schedule_restart(slot, delay)
            if self.alive_count == 0:
                dispatcher._fail_waiting(self, 503, 'No workers available', retry_after=True)
            return
        self._restart(slot)

    def _requeue_unstarted(self, slot: _Slot) -> None:
        """Put a dead worker's never-started requests back at the queue's front.

        The head, and every request the worker had read with it, may have
        started: a worker sends the responses of the requests it read
        together only after the last of them. Those stay held and become victims.
        """
        inbox = slot.inbox
        started = 1
        if slot.read_count is not None:
            # The inbox contains the last len(inbox) requests sent, in order.
            started = max(1, slot.read_count.value - (slot.sent - len(inbox)))
        unstarted = list(inbox)[started:]
        inbox.clear()
        for request_id, message in reversed(unstarted):
            self._unassign(slot, request_id)
            self._waiting.appendleft((request_id, message))

    def _unassign(self, slot: _Slot, request_id: int) -> None:
        entry = slot.held.pop(request_id, None)
        if entry is not None:
            entry.slot = None
            entry.worker_id = None

    def _take_back(self, slot: _Slot, request_id: int) -> None:
        """Take back the unstarted request a worker returned from its inbox head.

        It goes back to the front of the queue, unless it has left the
        in-flight table (its client left or it timed out) and needs no run.
        """
        inbox = slot.inbox
        if not inbox or inbox[0][0] != request_id:
            self._dispatcher.log.error('worker %s returned request %s, which is not next in '
                                       'its inbox; ignoring it', slot.label, request_id)
            return
        _, message = inbox.popleft()
        slot.head_since = time.monotonic()
        self._unassign(slot, request_id)
        if request_id == -1 or request_id in self._dispatcher._pending:
            self._waiting.appendleft((request_id, message))

    def _prefetch_depth(self) -> int:
        handler_time = self._handler_time
        if handler_time <= 0:
            return MAX_PREFETCH
        depth = min(MAX_PREFETCH, int(PREFETCH_BUDGET / handler_time))
        if depth > 1:
            return depth
        # Slow handlers: send one ahead only when their times are steady.
        return 2 if self._handler_spread <= STEADY_SPREAD * handler_time else 1

    def _restart(self, slot: _Slot) -> None:
        slot.restarts += 1
        if self._stopping:
            return
        self._spawn(slot)

    def _schedule_restart(self, slot: _Slot, delay: float) -> None:
        if self._loop is not None and not self._stopping:
            self._loop.call_later(delay, self._retry_spawn, slot)

    def _retry_spawn(self, slot: _Slot) -> None:
        if slot.state == DEAD and not self._degraded and not self._stopping:
            self._spawn(slot)

    def _count_restart(self) -> None:
        now = time.monotonic()
        times = self._restart_times
        times.append(now)
        while times and now - times[0] > self._restart_window:
            times.popleft()
        if len(times) > self._max_restarts and not self._degraded:
            self._set_degraded(
                True, f'{len(times)} restarts within {self._restart_window}s')

    def _set_degraded(self, degraded: bool, why: str) -> None:
        if degraded == self._degraded:
            return
        self._degraded = degraded
        dispatcher = self._dispatcher
        if degraded:
            self._degraded_since = time.monotonic()
            dispatcher.log.warning('pool %s is degraded (%s); answering 503',
                                   self._name, why)
            dispatcher._fail_waiting(self, 503, 'Service unavailable')
        else:
            self._degraded_since = None
            self._restart_times.clear()
            dispatcher.log.info('pool %s recovered (%s); restarting its workers',
                                self._name, why)
            for slot in self._slots:
                if slot.state == DEAD:
                    self._restart(slot)

    # -- periodic checks --------------------------------------------------

    def _tick(self, now: float) -> None:
        if self._degraded and self._recovery_interval is not None:
            all_parked = self.parked_count >= self._num_workers
            if (not all_parked and self._degraded_since is not None
                    and now - self._degraded_since >= self._recovery_interval):
                self._set_degraded(False, f'after {self._recovery_interval}s')
        stuck_timeout = self._stuck_timeout
        for slot in self._slots:
            if slot.state == READY and slot.inbox and not slot.kill_reason:
                silent = now - max(slot.last_seen, slot.head_since)
                if silent > stuck_timeout:
                    self._dispatcher.log.error(
                        'worker %s is stuck: no sign of life for %.1fs in request %s; '
                        'killing it', slot.label, silent, slot.current)
                    slot.kill('stuck')
        if self._queue_warning and len(self._waiting) > self._queue_warning:
            if now - self._last_queue_warning >= 10:
                self._last_queue_warning = now
                self._dispatcher.log.warning(
                    'pool %s has %d requests waiting (warning threshold %d)',
                    self._name, len(self._waiting), self._queue_warning)

    # -- scheduling -------------------------------------------------------

    def _enqueue(self, request_id: int, message: tuple) -> None:
        self._waiting.append((request_id, message))
        self._schedule()

    def _enqueue_forward(self, message: tuple, drop_when_full: bool) -> bool:
        if drop_when_full and len(self._waiting) >= self.max_queue:
            return False
        self._waiting.append((-1, message))
        if self._dispatcher is not None and self._loop is not None:
            self._schedule()
        return True

    def _schedule(self) -> None:
        waiting = self._waiting
        if not waiting:
            return
        pending = self._dispatcher._pending
        slots = self._slots
        # A busy worker gets requests ahead only while its queue is short
        # (see _prefetch_depth), and never behind a head that has run far
        # longer than the pool's handlers usually do.
        depth = self._prefetch_depth()
        overdue_since = time.monotonic() - max(OVERDUE_FACTOR * self._handler_time,
                                               OVERDUE_MIN)
        while waiting:
            best = None
            fewest = depth
            for slot in slots:
                if slot.state is READY and not slot.paused:
                    queued = len(slot.inbox)
                    if not queued:
                        best = slot
                        fewest = 0
                        break
                    if queued < fewest and slot.head_since > overdue_since:
                        best = slot
                        fewest = queued
            if best is None:
                return
            request_id, message = waiting.popleft()
            if request_id != -1:
                entry = pending.get(request_id)
                if entry is None:
                    continue  # the client left or timed out while waiting
                entry.worker_id = best.index
                entry.slot = best
                best.held[request_id] = entry
            if not fewest:
                best.head_since = time.monotonic()
            best.inbox.append((request_id, message))
            best.send(message)
            best.sent += 1

    def _stop(self, timeout: float) -> asyncio.Future:
        """Ask every worker to stop; the future ends when all are gone."""
        self._stopping = True
        loop = self._loop
        done = loop.create_future()
        alive = [slot for slot in self._slots if slot.alive]
        if not alive:
            done.set_result(None)
            return done
        for slot in alive:
            slot.state = STOPPING
            if not slot.send((messages.STOP,)):
                slot.kill('stop')

        def check() -> None:
            if not done.done() and not any(s.state == STOPPING for s in self._slots):
                done.set_result(None)

        def kill_rest() -> None:
            for slot in self._slots:
                if slot.state == STOPPING:
                    self._dispatcher.log.warning(
                        'worker %s did not stop within %.1fs; killing it', slot.label, timeout)
                    slot.kill('shutdown timeout')

        self._stop_check = check
        loop.call_later(timeout, kill_rest)
        return done

    def _log_error(self, message: str) -> None:
        if self._dispatcher is not None:
            self._dispatcher.log.error('%s', message)
        else:
            print(message, file=sys.stderr)


def make_context(start_method: str | None, preload: list[str]):
    """Return the multiprocessing context that starts workers.

    "forkserver" (the default on Linux) forks workers from a small server
    process that has already imported the application's modules, so a
    restart costs milliseconds and no worker inherits the dispatcher's event
    loop, sockets or threads. "spawn" and "fork" stay selectable.
    """
    method = start_method
    if method is None:
        available = multiprocessing.get_all_start_methods()
        method = 'forkserver' if 'forkserver' in available else 'spawn'
    context = multiprocessing.get_context(method)
    if method == 'forkserver':
        os.environ['WORKGATE_FORKSERVER_PARENT'] = str(os.getpid())
        context.set_forkserver_preload(['workgate._forkserver', *preload])
    return context
