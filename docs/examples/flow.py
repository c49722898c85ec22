# docs/examples/flow.py
import queue
import socket
import threading
import time

import workgate as _workers


class LeaseWorker(_workers.Worker):
    def setup(self):
        self.calls = queue.SimpleQueue()
        self.wakeup_read, self.wakeup_write = socket.socketpair()
        self.wakeup_read.setblocking(False)
        self.register_reader(self.wakeup_read, self.run_calls)
        self.token = None

    def call_from_thread(self, function, *args):
        """Run function(*args) in the worker's loop; safe to call from any thread."""
        self.calls.put((function, args))
        self.wakeup_write.send(b'.')

    def run_calls(self, sock):
        sock.recv(4096)
        while not self.calls.empty():
            function, args = self.calls.get()
            function(*args)

    def on_config(self, config):
        self.token = config['token']

    @_workers.api('/api/lease/{seconds:float}', 'GET')
    def lease(self, request):
        self.pause()

        def expire():
            time.sleep(request.path_params['seconds'])
            self.call_from_thread(self.release, request)

        threading.Thread(target=expire, daemon=True).start()
        return _workers.DEFERRED

    def release(self, request):
        request.respond({'released_by': self.worker_id})
        self.resume()

    @_workers.api('/api/whoami', 'GET')
    def whoami(self, request):
        return {'worker': self.worker_id}

    @_workers.api('/api/export/{steps:int}', 'GET')
    def export(self, request):
        for _ in range(request.path_params['steps']):
            time.sleep(0.1)
            if request.query and request.query.get('keep_alive') == 'yes':
                self.keep_alive()
        return {'exported_steps': request.path_params['steps']}

    @_workers.api('/api/token', 'GET')
    def current_token(self, request):
        return {'token': self.token}

    @_workers.api('/api/orders', 'POST')
    def order(self, request):
        self.forward('/audit/orders', {'item': request.data['item'], 'by': self.pool_name})
        return {'order': 'accepted'}, 201


class AuditWorker(_workers.Worker):
    def setup(self):
        self.entries = []

    @_workers.api('/audit/orders', 'POST')
    def record(self, request):
        self.entries.append(request.data)

    @_workers.api('/audit/orders', 'GET')
    def entries_list(self, request):
        return {'entries': self.entries}


class FlowApp(_workers.Dispatcher):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.refreshes = 0
        self.token_read, self.token_write = socket.socketpair()
        self.token_read.setblocking(False)
        self.register_reader(self.token_read, self.on_token)

    def do_check(self, client):
        if client.path.startswith('/audit/') and client.method != 'GET':
            raise _workers.RejectRequest({'error': 'only workers write audit entries'}, 403)

    @_workers.sync('/admin/refresh-token', 'POST')
    def refresh_token(self, client, path_params):
        self.refreshes += 1
        threading.Thread(target=self.fetch_token, args=(self.refreshes,), daemon=True).start()
        client.respond({'refresh': 'started'}, status=202)

    def fetch_token(self, number):
        time.sleep(0.2)  # a real service would call its identity provider here
        self.token_write.send(f'token-{number}'.encode())

    def on_token(self, sock):
        token = sock.recv(4096).decode()
        for pool in self._pools:
            pool.send_config({'token': token})


def make():
    return FlowApp(pools=[
        _workers.WorkerPool(LeaseWorker, num_workers=2, routes=['/api/**'], timeout=1),
        _workers.WorkerPool(AuditWorker, routes=['/audit/**']),
    ])
