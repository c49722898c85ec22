"""The application the HTTP front tests run, with every front limit taken from the environment.

Environment variables (all optional):

- ``WG_MAX_CONTENT_LENGTH``, ``WG_MAX_HEADER_SIZE``, ``WG_MAX_URL_LENGTH``,
  ``WG_MAX_HEADERS``, ``WG_MAX_CONNECTIONS``: integer limits (bytes or counts).
- ``WG_HEADER_TIMEOUT``, ``WG_BODY_TIMEOUT``, ``WG_KEEPALIVE_TIMEOUT``: seconds.
- ``WG_TRUSTED_PROXIES``: comma-separated peer addresses whose
  X-Forwarded-For header is honoured.
- ``WG_STATIC``: a directory mounted at ``/static/`` and, authoritative and
  with a Cache-Control header, at ``/assets/``.
- ``WG_WORKERS``: worker processes in the ``/api/**`` pool (default 2).

The dispatcher keeps the path and client address of every request it
queued to a pool, in order. ``GET /sync/accepted`` returns the paths, and
``GET /sync/accepted?peer=HOST:PORT`` only those from that client address,
so a test can prove that a rejected request never reached a worker. Every
worker response carries ``X-Handled-By: worker``.
"""

import hashlib
import os
import time

import workgate as _workers

WORKER_HEADERS = {'X-Handled-By': 'worker'}

_INT_SETTINGS = {
    'max_content_length': 'WG_MAX_CONTENT_LENGTH',
    'max_header_size': 'WG_MAX_HEADER_SIZE',
    'max_url_length': 'WG_MAX_URL_LENGTH',
    'max_headers': 'WG_MAX_HEADERS',
    'max_connections': 'WG_MAX_CONNECTIONS',
}
_FLOAT_SETTINGS = {
    'header_timeout': 'WG_HEADER_TIMEOUT',
    'body_timeout': 'WG_BODY_TIMEOUT',
    'keepalive_timeout': 'WG_KEEPALIVE_TIMEOUT',
}


def describe(request):
    """Return what a worker received, with the body as its size and SHA-256."""
    body = request.body or b''
    return {
        'method': request.method,
        'path': request.path,
        'query': request.query,
        'headers': request.headers,
        'body_size': len(body),
        'body_sha256': hashlib.sha256(body).hexdigest(),
        'remote_address': request.remote_address,
    }


class FrontWorker(_workers.Worker):
    @_workers.api('/api/echo')
    def echo(self, request):
        return describe(request), 200, WORKER_HEADERS

    @_workers.api('/api/user/{id:int}', 'GET')
    def user(self, request):
        return {'id': request.path_params['id']}, 200, WORKER_HEADERS

    @_workers.api('/api/name/{name}', 'GET')
    def name(self, request):
        return {'name': request.path_params['name']}, 200, WORKER_HEADERS

    @_workers.api('/api/sleep/{seconds:float}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['seconds'])
        return {'slept': request.path_params['seconds']}, 200, WORKER_HEADERS

    @_workers.api('/api/bad-header', 'GET')
    def bad_header(self, request):
        return {'x': 1}, 200, {'X-Evil': 'a\r\nSet-Cookie: injected=1'}


class FrontDispatcher(_workers.Dispatcher):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.accepted = []

    def on_request_accepted(self, request_id, client, pool):
        self.accepted.append((client.remote_address, client.path))
        return None

    @_workers.sync('/sync/accepted', 'GET')
    def accepted_paths(self, client, path_params):
        peer = (client.query or {}).get('peer')
        paths = [path for address, path in self.accepted if peer is None or address == peer]
        client.respond({'paths': paths})

    @_workers.sync('/sync/client', 'GET')
    def client_info(self, client, path_params):
        client.respond({'is_secure': client.is_secure,
                        'remote_address': client.remote_address,
                        'method': client.method, 'path': client.path,
                        'query': client.query})

    @_workers.sync('/sync/bad-header', 'GET')
    def sync_bad_header(self, client, path_params):
        client.respond({'x': 1}, headers={'X-Evil': 'a\r\nSet-Cookie: injected=1'})


def settings_from_env():
    """Return the Dispatcher keywords set through the environment."""
    settings = {}
    for keyword, variable in _INT_SETTINGS.items():
        if os.environ.get(variable):
            settings[keyword] = int(os.environ[variable])
    for keyword, variable in _FLOAT_SETTINGS.items():
        if os.environ.get(variable):
            settings[keyword] = float(os.environ[variable])
    proxies = os.environ.get('WG_TRUSTED_PROXIES')
    if proxies:
        settings['trusted_proxies'] = [p.strip() for p in proxies.split(',') if p.strip()]
    return settings


def make():
    static = os.environ.get('WG_STATIC')
    static_routes = None
    if static:
        static_routes = {
            '/static/': static,
            '/assets/': {'path': static, 'headers': {'Cache-Control': 'max-age=60'},
                         'authoritative': True},
        }
    pool = _workers.WorkerPool(FrontWorker, num_workers=int(os.environ.get('WG_WORKERS', '2')),
                               routes=['/api/**'], timeout=10)
    return FrontDispatcher(pools=[pool], static_routes=static_routes, **settings_from_env())
