"""The application most integration tests run: one route per behaviour.

Hooks append JSON lines to the file named by WG_EVENTS, so tests can count
how often each one fired, even after the dispatcher exited.
"""

import json
import os
import time

import workgate as _workers

EVENTS = os.environ.get('WG_EVENTS')


def record(kind, **fields):
    if EVENTS:
        with open(EVENTS, 'a') as events:
            events.write(json.dumps({'event': kind, 'pid': os.getpid(), **fields}) + '\n')


class UserHandler(_workers.ApiHandler):
    PATTERN = '/api/user'

    @_workers.api('', 'GET')
    def list_users(self, request):
        return {'users': [], 'prefix': self.PATTERN, 'worker': self.worker.worker_id}

    @_workers.api('/{id:int}', 'GET')
    def get_user(self, request):
        return {'id': request.path_params['id']}

    @_workers.api('/{id:int}', 'DELETE')
    def delete_user(self, request):
        return {'deleted': request.path_params['id']}


class AdminHandler(UserHandler):
    PATTERN = '/api/admin'


class CoreWorker(_workers.Worker):
    HANDLERS = [UserHandler, AdminHandler]
    LOG_NAME = 'core-{pool_name}-{worker_id}'

    def setup(self):
        self.greeting = self.kwargs.get('greeting', 'none')
        record('setup', worker=self.worker_id)

    def teardown(self):
        record('teardown', worker=self.worker_id)

    def do_check(self, request):
        if request.headers.get('x-worker-reject') == 'tuple':
            return {'error': 'tuple rejected'}, 418
        if request.headers.get('x-worker-reject') == 'raise':
            raise _workers.RejectRequest()
        return None

    @_workers.api('/api/hello', 'GET')
    def hello(self, request):
        return {'hello': 'world'}

    @_workers.api('/api/kwargs', 'GET')
    def kwargs_route(self, request):
        return {'greeting': self.greeting, 'kwargs': sorted(self.kwargs)}

    @_workers.api('/api/echo')
    def echo(self, request):
        data = request.data
        if isinstance(data, bytes):
            data = {'bytes': len(data)}
        return {
            'method': request.method,
            'path': request.path,
            'query': request.query,
            'data': data,
            'content_type': request.content_type,
            'headers': request.headers,
            'cookies': request.cookies,
            'remote_address': request.remote_address,
            'context': request.context,
            'request_id_positive': request.request_id > 0,
        }

    @_workers.api('/api/price/{amount:float}/{name}', 'GET')
    def price(self, request):
        return request.path_params

    @_workers.api('/api/form/tuple2', 'GET')
    def tuple2(self, request):
        return {'created': True}, 201

    @_workers.api('/api/form/tuple3', 'GET')
    def tuple3(self, request):
        return 'made', 202, {'X-Custom': 'yes'}

    @_workers.api('/api/form/response', 'GET')
    def response_object(self, request):
        return _workers.Response(None, data={'ok': True}, status=203,
                                 headers={'X-Resp': '1'}, cookies={'session': 'abc'})

    @_workers.api('/api/form/text', 'GET')
    def text(self, request):
        return 'plain text ü'

    @_workers.api('/api/form/bytes', 'GET')
    def raw_bytes(self, request):
        return b'\x00\x01\x02'

    @_workers.api('/api/form/none', 'GET')
    def none(self, request):
        return None

    @_workers.api('/api/form/list', 'GET')
    def a_list(self, request):
        return [1, 2, 3]

    @_workers.api('/api/form/deferred', 'GET')
    def deferred(self, request):
        request.respond({'deferred': True}, status=200, headers={'X-Deferred': '1'})
        return _workers.DEFERRED

    @_workers.api('/api/form/big', 'GET')
    def big(self, request):
        size = int(request.query['size'])
        return b'x' * size

    @_workers.api('/api/sha', 'POST')
    def sha(self, request):
        import hashlib
        return {'sha256': hashlib.sha256(request.body).hexdigest(), 'size': len(request.body)}

    @_workers.api('/api/body-info', 'POST')
    def body_info(self, request):
        import hashlib
        data = request.data
        body = request.body
        return {'sha256': hashlib.sha256(body).hexdigest(), 'size': len(body),
                'type': type(body).__name__,
                # True when neither property made a copy of the received body.
                'data_is_body': data is body}

    @_workers.api('/api/reject', 'GET')
    def reject(self, request):
        raise _workers.RejectRequest({'error': 'admin only'}, 403)

    @_workers.api('/api/fail', 'GET')
    def fail(self, request):
        raise RuntimeError('secret detail that must not leak')

    @_workers.api('/api/bad-header', 'GET')
    def bad_header(self, request):
        return {'x': 1}, 200, {'X-Evil': 'a\r\nSet-Cookie: injected=1'}

    @_workers.api('/api/log', 'GET')
    def log_both(self, request):
        self.log.warning('percent style %s=%d', 'answer', 42)
        self.log.warning('brace style {name}', name='ok')
        self.log.debug('debug hidden at warning level')
        return {'logged': True}

    @_workers.api('/api/sleep/{seconds:float}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['seconds'])
        return {'slept': request.path_params['seconds'], 'worker': self.worker_id}

    @_workers.api('/api/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid(), 'worker': self.worker_id}

    @_workers.api('/api/stored', 'GET')
    def stored(self, request):
        return {'stored': getattr(self, 'saved', [])}

    @_workers.api('/api/store', 'POST')
    def store(self, request):
        self.saved = getattr(self, 'saved', []) + [request.data]
        record('stored', data=request.data, request_id=request.request_id)
        return {'stored': True}


class CoreDispatcher(_workers.Dispatcher):
    def do_check(self, client):
        if client.headers.get('x-api-key') == 'bad':
            client.respond({'error': 'unauthorized'}, status=401)
            raise _workers.RejectRequest()
        if client.headers.get('x-hook-fail') == 'do_check':
            raise RuntimeError('do_check blew up')

    def do_check_sync(self, client):
        if client.path == '/sync/guarded' and client.headers.get('x-api-key') != 'good':
            client.respond({'error': 'unauthorized'}, status=401)
            raise _workers.RejectRequest()

    def on_request_accepted(self, request_id, client, pool):
        if client.headers.get('x-hook-fail') == 'accepted':
            raise RuntimeError('on_request_accepted blew up')
        return {'role': client.headers.get('x-role'), 'pool': pool.name}

    def on_response(self, response, pending):
        record('response', status=response.status, path=pending.client.path)
        if pending.client.headers.get('x-hook-fail') == 'on_response':
            raise RuntimeError('on_response blew up')
        if pending.client.path == '/api/hello' and pending.client.query:
            target = self._find_pool('/store/x')
            target.request_queue.put(_workers.Request(
                request_id=-1, method='POST', path='/api/store',
                data={'forwarded': response.data}))

    def on_pending_removed(self, request_id, pending, reason):
        record('removed', request_id=request_id, reason=reason, path=pending.client.path,
               worker_id=pending.worker_id, streaming=pending.streaming)
        if pending.client.headers.get('x-hook-fail') == 'removed':
            raise RuntimeError('on_pending_removed blew up')

    def on_static_served(self, client, file_path, status):
        record('static', path=os.path.basename(file_path), status=status)

    @_workers.sync('/sync/health', 'GET')
    def health(self, client, path_params):
        client.respond({'status': 'ok', 'pools': [p.status() for p in self._pools]})

    @_workers.sync('/sync/item/{id:int}', 'GET')
    def sync_item(self, client, path_params):
        client.respond({'item': path_params['id']})

    @_workers.sync('/sync/guarded')
    def guarded(self, client, path_params):
        client.respond({'guarded': 'passed'})

    @_workers.sync('/sync/fail')
    def sync_fail(self, client, path_params):
        raise RuntimeError('sync handler blew up')

    @_workers.sync('/sync/forget')
    def forget(self, client, path_params):
        pass

    @_workers.sync('/sync/redirect')
    def redirect(self, client, path_params):
        client.respond_redirect('/sync/health')


def make():
    static = os.environ.get('WG_STATIC')
    static_routes = None
    if static:
        static_routes = {
            '/static/': static,
            '/assets/': {'path': static, 'headers': {'Cache-Control': 'max-age=60'},
                         'authoritative': True},
        }
    timeout = float(os.environ.get('WG_TIMEOUT', '5'))
    return CoreDispatcher(
        pools=[
            _workers.WorkerPool(CoreWorker, num_workers=int(os.environ.get('WG_WORKERS', '2')),
                                routes=['/api/**'], timeout=timeout, greeting='hi',
                                log_level=_workers.LOG_WARNING),
            _workers.WorkerPool(StoreWorker, num_workers=1, routes=['/store/**']),
        ],
        static_routes=static_routes,
        max_pending=int(os.environ.get('WG_MAX_PENDING', '1000')),
        shutdown_timeout=float(os.environ.get('WG_SHUTDOWN_TIMEOUT', '5')),
        status_path=os.environ.get('WG_STATUS_PATH'),
        metrics_path=os.environ.get('WG_METRICS_PATH'),
    )


def not_a_dispatcher():
    return 42


NOT_CALLABLE = 'just a string'


class StoreWorker(CoreWorker):
    """Receives forwarded and queued fire-and-forget requests."""
