# docs/examples/streaming.py
import queue
import socket
import threading
import time

import workgate as _workers


class StreamWorker(_workers.Worker):
    def setup(self):
        self.calls = queue.SimpleQueue()
        self.wakeup_read, self.wakeup_write = socket.socketpair()
        self.wakeup_read.setblocking(False)
        self.register_reader(self.wakeup_read, self.run_calls)
        self.subscribers = {}
        self.cancelled = set()

    def call_from_thread(self, function, *args):
        """Run function(*args) in the worker's loop; safe to call from any thread."""
        self.calls.put((function, args))
        self.wakeup_write.send(b'.')

    def run_calls(self, sock):
        sock.recv(4096)
        while not self.calls.empty():
            function, args = self.calls.get()
            function(*args)

    def on_disconnect(self, request_id):
        self.subscribers.pop(request_id, None)
        self.cancelled.add(request_id)
        self.log.info('request %d: the client went away', request_id)

    @_workers.api('/api/square/{x:int}', 'GET')
    def square(self, request):
        x = request.path_params['x']

        def work():
            time.sleep(0.5)
            self.call_from_thread(request.respond, {'x': x, 'square': x * x})

        threading.Thread(target=work, daemon=True).start()
        return _workers.DEFERRED

    @_workers.api('/api/countdown/{start:int}', 'GET')
    def countdown(self, request):
        request.response_stream()

        def tick():
            for n in range(request.path_params['start'], 0, -1):
                time.sleep(0.2)
                if request.request_id in self.cancelled:
                    return
                self.call_from_thread(request.send_event, {'n': n}, 'tick', n)
            self.call_from_thread(request.send_event, 'liftoff', 'done')
            self.call_from_thread(request.response_stream_end)

        threading.Thread(target=tick, daemon=True).start()
        return _workers.DEFERRED

    @_workers.api('/api/numbers/{count:int}', 'GET')
    def numbers(self, request):
        request.response_ndjson()
        for n in range(1, request.path_params['count'] + 1):
            request.send_ndjson({'n': n, 'square': n * n})
        request.response_stream_end()
        return _workers.DEFERRED

    @_workers.api('/api/poem', 'GET')
    def poem(self, request):
        request.response_stream('text/plain; charset=utf-8')
        request.send_chunk('Roses are red,\n')
        request.send_chunk(b'violets are blue.\n')
        request.response_stream_end()
        return _workers.DEFERRED

    @_workers.api('/api/chat', 'GET')
    def subscribe(self, request):
        request.response_stream()
        self.subscribers[request.request_id] = request
        return _workers.DEFERRED

    @_workers.api('/api/chat', 'POST')
    def publish(self, request):
        for subscriber in self.subscribers.values():
            subscriber.send_event(request.data, event='message')
        return {'delivered': len(self.subscribers)}

    @_workers.api('/api/chat', 'DELETE')
    def close(self, request):
        for subscriber in self.subscribers.values():
            subscriber.response_stream_end()
        closed, self.subscribers = len(self.subscribers), {}
        return {'closed': closed}


def make():
    pool = _workers.WorkerPool(StreamWorker, routes=['/api/**'], log_level=_workers.LOG_INFO)
    return _workers.Dispatcher(pools=[pool])
