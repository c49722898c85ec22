"""The application the streaming tests run: deferred responses and streams.

One pool of ``StreamWorker`` serves every path outside the static mount.
Requests wait on named topics: ``GET /api/wait/{topic}`` is a deferred
request and ``GET /api/sse/{topic}`` an event stream, and the ``POST``
routes on the same topic respond to them, feed them or end them. Worker and dispatcher
hooks append JSON lines to the file named by ``WG_EVENTS``, so a test can
see which request ids a worker saw and how each one left the in-flight table.

Settings, all optional, from the environment:

- ``WG_EVENTS``: path of the JSON-lines event file.
- ``WG_WORKERS``: number of workers (default 1).
- ``WG_TIMEOUT``: pool request timeout in seconds (default 2).
- ``WG_HEARTBEAT``: worker heartbeat interval in seconds (default 0.2), which
  is also how often an idle worker runs ``on_idle()``.
- ``WG_STREAM_BUFFER_LIMIT``: the dispatcher's ``stream_buffer_limit`` in bytes.
- ``WG_PING_INTERVAL``: passed as ``stream_ping_interval`` (seconds).
- ``WG_KEEPALIVE_TIMEOUT``: the dispatcher's ``keepalive_timeout`` (seconds).
- ``WG_SHUTDOWN_TIMEOUT``: the dispatcher's ``shutdown_timeout`` (default 1 s).
- ``WG_STATIC``: a folder served under ``/static/``.
"""

import json
import os
import queue
import socket
import threading

import workgate as _workers

EVENTS = os.environ.get('WG_EVENTS')


def record(kind, **fields):
    """Append one event line in one O_APPEND write, so lines from several processes stay whole."""
    if not EVENTS:
        return
    line = json.dumps({'event': kind, 'pid': os.getpid(), **fields}) + '\n'
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# Events of the fixed sample stream, as keyword arguments of send_event().
SAMPLE_EVENTS = [
    {'data': 'line one\nline two'},
    {'data': {'a': 1, 'b': [1, 2], 'text': 'é'}},
    {'data': [1, 'two', None]},
    {'data': 'tick', 'event': 'update', 'event_id': 7, 'retry': 1500},
    {'data': ' leading space\r\nafter crlf\n\nafter blank'},
    {'data': 'id only', 'event_id': 'abc-1'},
]

# Pieces of the raw chunk stream. The empty piece must not end the stream.
SAMPLE_CHUNKS = [b'\x00\x01\xfe\xff', 'text \u00e9\n', b'', b'tail']

SAMPLE_NDJSON = [{'n': 1}, [1, 2, 3], 'text', None, {'nested': {'ok': True}}]


class StreamWorker(_workers.Worker):
    """A worker that keeps deferred requests and streams by topic until other requests use them."""

    def setup(self):
        self.waiters = {}          # topic -> {request_id: (request, keep)}
        self.subscribers = {}      # topic -> {request_id: request}
        self.idle_waiters = []
        self.pipe_waiters = []
        self.tickers = {}          # request_id -> [request, remaining, interval]

        # A pipe the worker writes to itself: the handler writes one byte
        # and the reader callback responds after the handler has returned.
        self.pipe_read, self.pipe_write = os.pipe()
        os.set_blocking(self.pipe_read, False)
        self.register_reader(self.pipe_read, self.on_pipe_readable)

        # A timer that wakes the worker loop through a socketpair: threads
        # only queue the callback and write a byte, and the loop runs it.
        self.timer_read, self.timer_write = socket.socketpair()
        self.timer_read.setblocking(False)
        self.due = queue.SimpleQueue()
        self.register_reader(self.timer_read, self.on_timer_readable)
        record('setup', worker=self.worker_id)

    def call_later(self, delay, callback, *args):
        def fire():
            self.due.put((callback, args))
            self.timer_write.send(b'x')

        timer = threading.Timer(delay, fire)
        timer.daemon = True
        timer.start()

    def on_timer_readable(self, sock):
        try:
            sock.recv(4096)
        except BlockingIOError:
            pass
        while True:
            try:
                callback, args = self.due.get_nowait()
            except queue.Empty:
                return
            callback(*args)

    def on_pipe_readable(self, fd):
        try:
            os.read(fd, 4096)
        except BlockingIOError:
            return
        waiters, self.pipe_waiters = self.pipe_waiters, []
        for request in waiters:
            request.respond({'from': 'pipe', 'request_id': request.request_id})

    def on_idle(self):
        waiters, self.idle_waiters = self.idle_waiters, []
        for request in waiters:
            request.respond({'from': 'on_idle', 'request_id': request.request_id})

    def on_disconnect(self, request_id):
        known = False
        for waiting in self.waiters.values():
            entry = waiting.get(request_id)
            if entry is not None:
                known = True
                if not entry[1]:
                    del waiting[request_id]
        for subscribed in self.subscribers.values():
            if subscribed.pop(request_id, None) is not None:
                known = True
        if self.tickers.pop(request_id, None) is not None:
            known = True
        record('disconnect', request_id=request_id, known=known)

    # -- plain routes -------------------------------------------------------

    @_workers.api('/api/hello', 'GET')
    def hello(self, request):
        return {'hello': 'world', 'pid': os.getpid()}

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid(), 'worker': self.worker_id}

    @_workers.api('/api/crash', 'GET')
    def crash(self, request):
        record('crashing', request_id=request.request_id)
        os._exit(7)

    # -- deferred responses -------------------------------------------------

    @_workers.api('/api/wait/{topic}', 'GET')
    def wait(self, request):
        topic = request.path_params['topic']
        keep = bool(request.query and request.query.get('keep'))
        self.waiters.setdefault(topic, {})[request.request_id] = (request, keep)
        record('deferred', topic=topic, request_id=request.request_id)
        return _workers.DEFERRED

    @_workers.api('/api/publish/{topic}', 'POST')
    def publish(self, request):
        waiting = self.waiters.pop(request.path_params['topic'], {})
        for request_id, (waiter, _) in waiting.items():
            waiter.respond({'published': request.data, 'request_id': request_id},
                           headers={'X-Published-By': str(request.request_id)})
        return {'answered': len(waiting)}

    @_workers.api('/api/deferred/idle', 'GET')
    def deferred_idle(self, request):
        self.idle_waiters.append(request)
        return _workers.DEFERRED

    @_workers.api('/api/deferred/pipe', 'GET')
    def deferred_pipe(self, request):
        self.pipe_waiters.append(request)
        os.write(self.pipe_write, b'x')
        return _workers.DEFERRED

    @_workers.api('/api/deferred/timer/{delay:float}', 'GET')
    def deferred_timer(self, request):
        def respond():
            request.respond({'from': 'timer', 'request_id': request.request_id})

        self.call_later(request.path_params['delay'], respond)
        return _workers.DEFERRED

    # -- streams fed by other requests ----------------------------------------

    @_workers.api('/api/sse/{topic}', 'GET')
    def sse(self, request):
        topic = request.path_params['topic']
        request.response_stream(headers={'X-Topic': topic})
        request.send_event({'request_id': request.request_id, 'pid': os.getpid()},
                           event='hello')
        self.subscribers.setdefault(topic, {})[request.request_id] = request
        record('subscribed', topic=topic, request_id=request.request_id)
        return _workers.DEFERRED

    @_workers.api('/api/ndjson/{topic}', 'GET')
    def ndjson_topic(self, request):
        topic = request.path_params['topic']
        request.response_ndjson()
        request.send_ndjson({'request_id': request.request_id})
        self.subscribers.setdefault(topic, {})[request.request_id] = request
        record('subscribed', topic=topic, request_id=request.request_id)
        return _workers.DEFERRED

    @_workers.api('/api/emit/{topic}', 'POST')
    def emit(self, request):
        body = request.data or {}
        subscribed = self.subscribers.get(request.path_params['topic'], {})
        for subscriber in subscribed.values():
            subscriber.send_event(body.get('data'), body.get('event'), body.get('id'),
                                  body.get('retry'))
        return {'sent': len(subscribed)}

    @_workers.api('/api/end/{topic}', 'POST')
    def end(self, request):
        subscribed = self.subscribers.pop(request.path_params['topic'], {})
        for subscriber in subscribed.values():
            subscriber.response_stream_end()
        return {'ended': len(subscribed)}

    @_workers.api('/api/flood/{topic}/{total:int}/{size:int}', 'POST')
    def flood(self, request):
        """Send ``total`` bytes in ``size``-byte chunks to each subscriber.

        The subscribers stay in place while this handler runs, so chunks go
        on being sent after the dispatcher has closed a slow stream.
        """
        params = request.path_params
        subscribed = list(self.subscribers.get(params['topic'], {}).values())
        chunk = b'f' * params['size']
        sent = 0
        while sent < params['total']:
            for subscriber in subscribed:
                subscriber.send_chunk(chunk)
            sent += len(chunk)
        return {'sent': sent, 'subscribers': len(subscribed)}

    # -- streams that run by themselves -----------------------------------------

    @_workers.api('/api/sse-sample', 'GET')
    def sse_sample(self, request):
        request.response_stream(headers={'X-Request-Id': str(request.request_id)},
                                cookies={'stream': 'sample'})
        for event in SAMPLE_EVENTS:
            request.send_event(**event)
        request.response_stream_end()
        return _workers.DEFERRED

    @_workers.api('/api/chunks', 'GET')
    def chunks(self, request):
        request.response_stream('application/octet-stream',
                                {'X-Request-Id': str(request.request_id)})
        for chunk in SAMPLE_CHUNKS:
            request.send_chunk(chunk)
        request.response_stream_end()
        return _workers.DEFERRED

    @_workers.api('/api/ndjson', 'GET')
    def ndjson(self, request):
        request.response_ndjson(headers={'X-Request-Id': str(request.request_id)})
        for value in SAMPLE_NDJSON:
            request.send_ndjson(value)
        request.response_stream_end()
        return _workers.DEFERRED

    @_workers.api('/api/sse-broken', 'GET')
    def sse_broken(self, request):
        """Open a stream, send one event, then fail on an event name with a line break."""
        request.response_stream(headers={'X-Request-Id': str(request.request_id)})
        request.send_event('before the error')
        request.send_event('never sent', event='two\nlines')
        return _workers.DEFERRED

    @_workers.api('/api/ticker/{count:int}/{interval:float}', 'GET')
    def ticker(self, request):
        """Send ``count`` events ``interval`` seconds apart from timer callbacks."""
        params = request.path_params
        request.response_stream(headers={'X-Request-Id': str(request.request_id)})
        self.tickers[request.request_id] = [request, params['count'], params['interval']]
        self.call_later(params['interval'], self.tick, request.request_id)
        return _workers.DEFERRED

    def tick(self, request_id):
        state = self.tickers.get(request_id)
        if state is None:
            return
        request, remaining, interval = state
        request.send_event({'remaining': remaining - 1}, event='tick')
        state[1] = remaining - 1
        if state[1] <= 0:
            del self.tickers[request_id]
            request.response_stream_end()
            return
        self.call_later(interval, self.tick, request_id)


class StreamDispatcher(_workers.Dispatcher):
    def on_pending_removed(self, request_id, pending, reason):
        record('removed', request_id=request_id, reason=reason, path=pending.client.path,
               streaming=pending.streaming, worker_id=pending.worker_id)

    def on_worker_died(self, pool, worker_id, reason, exitcode, victims):
        record('worker_died', worker_id=worker_id, exitcode=exitcode,
               victims=sorted(request_id for request_id, _ in victims))
        super().on_worker_died(pool, worker_id, reason, exitcode, victims)


def make():
    settings = {}
    if os.environ.get('WG_STREAM_BUFFER_LIMIT'):
        settings['stream_buffer_limit'] = int(os.environ['WG_STREAM_BUFFER_LIMIT'])
    if os.environ.get('WG_PING_INTERVAL'):
        settings['stream_ping_interval'] = float(os.environ['WG_PING_INTERVAL'])
    if os.environ.get('WG_KEEPALIVE_TIMEOUT'):
        settings['keepalive_timeout'] = float(os.environ['WG_KEEPALIVE_TIMEOUT'])
    static = os.environ.get('WG_STATIC')
    return StreamDispatcher(
        pools=[
            _workers.WorkerPool(
                StreamWorker, num_workers=int(os.environ.get('WG_WORKERS', '1')),
                routes=['/api/**'], timeout=float(os.environ.get('WG_TIMEOUT', '2')),
                heartbeat_interval=float(os.environ.get('WG_HEARTBEAT', '0.2')),
                max_restarts=100),
        ],
        static_routes={'/static/': static} if static else None,
        shutdown_timeout=float(os.environ.get('WG_SHUTDOWN_TIMEOUT', '1')),
        **settings,
    )
