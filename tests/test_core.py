"""End-to-end behaviour of the core: routing, the worker API and the hooks.

One dispatcher (tests/apps/core_app.py) serves the whole module; tests that
need a fresh process (shutdown, limits) start their own.
"""

import json
import os
import signal
import socket
import threading

import httpx
import pytest

from tests.harness import Server, read_events, wait_until


@pytest.fixture(scope='module')
def static_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('static')
    (root / 'hello.txt').write_text('hello static\n')
    (root / 'sub').mkdir()
    (root / 'sub' / 'index.html').write_text('<p>index</p>')
    return root


@pytest.fixture(scope='module')
def events_file(tmp_path_factory):
    return tmp_path_factory.mktemp('events') / 'events.jsonl'


@pytest.fixture(scope='module')
def server(static_dir, events_file):
    srv = Server('tests.apps.core_app:make',
                 env={'WG_STATIC': str(static_dir), 'WG_EVENTS': str(events_file),
                      'WG_TIMEOUT': '1.5'})
    with srv:
        srv.wait_ready(3)
        yield srv


@pytest.fixture(scope='module')
def http(server):
    with httpx.Client(base_url=server.url(), timeout=10) as client:
        yield client


def removed_events(events_file, path):
    return [e for e in read_events(events_file) if e['event'] == 'removed' and e['path'] == path]


# -- routing -----------------------------------------------------------------

def test_worker_route_json(http):
    response = http.get('/api/hello')
    assert response.status_code == 200
    assert response.headers['content-type'] == 'application/json'
    assert response.json() == {'hello': 'world'}


def test_typed_path_parameters(http):
    assert http.get('/api/price/9.5/apple').json() == {'amount': 9.5, 'name': 'apple'}
    assert http.get('/api/user/42').json() == {'id': 42}


def test_unconvertible_parameter_is_404(http):
    response = http.get('/api/user/abc')
    assert response.status_code == 404
    assert response.json() == {'error': 'Not found'}


def test_wrong_method_is_405_with_allow(http):
    response = http.post('/api/user/1')
    assert response.status_code == 405
    assert set(response.headers['allow'].split(', ')) == {'GET', 'DELETE'}


def test_api_handler_prefix_and_inheritance(http):
    assert http.get('/api/user').json()['prefix'] == '/api/user'
    assert http.get('/api/admin').json()['prefix'] == '/api/admin'
    assert http.delete('/api/admin/7').json() == {'deleted': 7}


def test_unrouted_path_is_404(http):
    response = http.get('/nowhere')
    assert response.status_code == 404
    assert response.json() == {'error': 'Not found'}


def test_sync_handler_and_params(http):
    assert http.get('/sync/item/5').json() == {'item': 5}
    health = http.get('/sync/health').json()
    assert health['status'] == 'ok'
    assert [p['name'] for p in health['pools']] == ['CoreWorker', 'StoreWorker']


def test_sync_wrong_method_is_405(http):
    response = http.post('/sync/item/5')
    assert response.status_code == 405
    assert response.headers['allow'] == 'GET'


def test_do_check_sync_rejects_and_passes(http):
    assert http.get('/sync/guarded').status_code == 401
    passed = http.get('/sync/guarded', headers={'x-api-key': 'good'})
    assert passed.json() == {'guarded': 'passed'}


def test_sync_redirect(http):
    response = http.get('/sync/redirect')
    assert response.status_code == 302
    assert response.headers['location'] == '/sync/health'


def test_sync_handler_that_forgets_to_answer_gets_500(http, server):
    response = http.get('/sync/forget')
    assert response.status_code == 500
    assert server.wait_log('returned without a response')


def test_sync_handler_exception_is_500_and_logged(http, server):
    response = http.get('/sync/fail')
    assert response.status_code == 500
    assert response.json() == {'error': 'Internal server error'}
    assert server.wait_log('sync handler blew up')


# -- return forms and request data --------------------------------------------

@pytest.mark.parametrize('path,status,content_type,body', [
    ('/api/form/tuple2', 201, 'application/json', b'{"created":true}'),
    ('/api/form/tuple3', 202, 'text/plain; charset=utf-8', b'made'),
    ('/api/form/response', 203, 'application/json', b'{"ok":true}'),
    ('/api/form/text', 200, 'text/plain; charset=utf-8', 'plain text ü'.encode()),
    ('/api/form/bytes', 200, 'application/octet-stream', b'\x00\x01\x02'),
    ('/api/form/none', 200, None, b''),
    ('/api/form/list', 200, 'application/json', b'[1,2,3]'),
    ('/api/form/deferred', 200, 'application/json', b'{"deferred":true}'),
])
def test_return_forms(http, path, status, content_type, body):
    response = http.get(path)
    assert response.status_code == status
    assert response.headers.get('content-type') == content_type
    assert response.content == body


def test_return_headers_and_cookies(http):
    assert http.get('/api/form/tuple3').headers['x-custom'] == 'yes'
    response = http.get('/api/form/response')
    assert response.headers['x-resp'] == '1'
    assert response.headers['set-cookie'] == 'session=abc'
    assert http.get('/api/form/deferred').headers['x-deferred'] == '1'


def test_large_response_body(http):
    response = http.get('/api/form/big', params={'size': 3 * 1024 * 1024})
    assert response.status_code == 200
    assert len(response.content) == 3 * 1024 * 1024


def test_json_body_and_request_fields(http):
    response = http.post('/api/echo?a=1&a=2&b=x', json={'n': 1},
                         headers={'X-Role': 'admin', 'Cookie': 'sid=123; theme=dark'})
    body = response.json()
    assert body['method'] == 'POST'
    assert body['path'] == '/api/echo'
    assert body['query'] == {'a': ['1', '2'], 'b': 'x'}
    assert body['data'] == {'n': 1}
    assert body['content_type'] == 'application/json'
    assert body['headers']['x-role'] == 'admin'
    assert body['cookies'] == {'sid': '123', 'theme': 'dark'}
    assert body['remote_address'].startswith('127.0.0.1:')
    assert body['context'] == {'role': 'admin', 'pool': 'CoreWorker'}
    assert body['request_id_positive'] is True


def test_form_raw_and_empty_bodies(http):
    form = http.post('/api/echo', data={'x': '1', 'y': 'two words'}).json()
    assert form['data'] == {'x': '1', 'y': 'two words'}
    raw = http.post('/api/echo', content=b'\xff' * 10,
                    headers={'content-type': 'application/octet-stream'}).json()
    assert raw['data'] == {'bytes': 10}
    empty = http.get('/api/echo').json()
    assert empty['data'] is None
    assert empty['query'] is None


def test_chunked_request_body(http):
    def chunks():
        yield b'a' * 1000
        yield b'b' * 2000

    response = http.post('/api/sha', content=chunks())
    assert response.json()['size'] == 3000


def test_large_request_body_round_trip(http):
    import hashlib
    body = os.urandom(2 * 1024 * 1024)
    response = http.post('/api/sha', content=body)
    assert response.json() == {'sha256': hashlib.sha256(body).hexdigest(), 'size': len(body)}


@pytest.mark.parametrize('size', [40_000, 64 * 1024 - 1, 64 * 1024, 1024 * 1024 + 3])
def test_large_request_body_reaches_handler_as_bytes(http, size):
    import hashlib
    # Twice in a row: the worker reads the second body differently.
    for _ in range(2):
        body = os.urandom(size)
        response = http.post('/api/body-info', content=body,
                             headers={'content-type': 'application/octet-stream'})
        assert response.json() == {'sha256': hashlib.sha256(body).hexdigest(), 'size': size,
                                   'type': 'bytes', 'data_is_body': True}


def test_http10_request(server):
    with socket.create_connection(('127.0.0.1', server.port), timeout=5) as sock:
        sock.sendall(b'GET /api/hello HTTP/1.0\r\n\r\n')
        data = b''
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b'HTTP/1.0 200 OK\r\n')
    assert data.endswith(b'{"hello":"world"}')


def test_keep_alive_reuses_connection(server):
    with socket.create_connection(('127.0.0.1', server.port), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(b'GET /api/hello HTTP/1.1\r\nHost: x\r\n\r\n')
            data = b''
            while not data.endswith(b'{"hello":"world"}'):
                chunk = sock.recv(65536)
                assert chunk, 'connection closed between keep-alive requests'
                data += chunk
            assert data.startswith(b'HTTP/1.1 200 OK')


# -- checks and errors ---------------------------------------------------------

def test_dispatcher_do_check_rejects(http):
    response = http.get('/api/hello', headers={'x-api-key': 'bad'})
    assert response.status_code == 401
    assert response.json() == {'error': 'unauthorized'}


def test_worker_do_check_tuple_and_raise(http):
    tuple_reject = http.get('/api/hello', headers={'x-worker-reject': 'tuple'})
    assert tuple_reject.status_code == 418
    assert tuple_reject.json() == {'error': 'tuple rejected'}
    raised = http.get('/api/hello', headers={'x-worker-reject': 'raise'})
    assert raised.status_code == 403
    assert raised.json() == {'error': 'Rejected'}


def test_handler_reject_request(http):
    response = http.get('/api/reject')
    assert response.status_code == 403
    assert response.json() == {'error': 'admin only'}


def test_handler_exception_is_500_without_traceback(http, server):
    response = http.get('/api/fail')
    assert response.status_code == 500
    assert response.json() == {'error': 'Internal server error'}
    assert b'secret detail' not in response.content
    assert server.wait_log('secret detail that must not leak')


def test_header_injection_from_worker_is_blocked(http, server):
    response = http.get('/api/bad-header')
    assert response.status_code == 500
    assert 'injected' not in response.headers.get('set-cookie', '')
    assert server.wait_log('is invalid')


def test_worker_log_both_styles_and_name_template(http, server):
    assert http.get('/api/log').json() == {'logged': True}
    assert server.wait_log(r'core-CoreWorker-\d .*percent style answer=42')
    assert server.wait_log(r'core-CoreWorker-\d .*brace style ok')
    assert server.count_log('debug hidden') == 0


def test_setup_and_kwargs(http, events_file):
    assert http.get('/api/kwargs').json() == {'greeting': 'hi', 'kwargs': ['greeting']}
    setups = [e for e in read_events(events_file) if e['event'] == 'setup']
    assert len(setups) >= 3


# -- hooks ---------------------------------------------------------------------

def test_completed_fires_once_after_on_response(http, events_file):
    http.get('/api/user/9001')
    assert wait_until(lambda: removed_events(events_file, '/api/user/9001'))
    events = [e for e in read_events(events_file) if e.get('path') == '/api/user/9001']
    assert [e['event'] for e in events] == ['response', 'removed']
    assert events[1]['reason'] == 'COMPLETED'


def test_timeout_gives_504_and_fires_once(http, events_file, server):
    response = http.get('/api/sleep/3')
    assert response.status_code == 504
    assert response.json() == {'error': 'Request timeout'}
    assert wait_until(lambda: removed_events(events_file, '/api/sleep/3'))
    removed = removed_events(events_file, '/api/sleep/3')
    assert [e['reason'] for e in removed] == ['TIMEOUT']
    assert server.wait_log(r'request \d+ \(GET /api/sleep/3\) timed out')
    # The late answer is dropped: no second event, and the worker serves again.
    assert http.get('/api/hello').status_code == 200
    assert wait_until(lambda: server.count_log('timed out') >= 1)
    assert len(removed_events(events_file, '/api/sleep/3')) == 1


@pytest.mark.parametrize('hook', ['do_check', 'accepted', 'on_response', 'removed'])
def test_hook_exception_is_logged_and_swallowed(http, server, hook):
    response = http.get('/api/hello', headers={'x-hook-fail': hook})
    if hook == 'do_check':
        assert response.status_code == 500
    else:
        assert response.status_code == 200
        assert response.json() == {'hello': 'world'}
    assert server.wait_log(f'{"do_check" if hook == "do_check" else ""}.*blew up')
    assert http.get('/api/hello').status_code == 200


def test_on_response_can_queue_fire_and_forget(http, events_file):
    http.get('/api/hello?forward=1')
    assert wait_until(lambda: any(e['event'] == 'stored' for e in read_events(events_file)))
    stored = [e for e in read_events(events_file) if e['event'] == 'stored'][0]
    assert stored['data'] == {'forwarded': {'hello': 'world'}}
    assert stored['request_id'] == -1


# -- static mounts -------------------------------------------------------------

def test_static_file_and_index(http, events_file):
    response = http.get('/static/hello.txt')
    assert response.status_code == 200
    assert response.text == 'hello static\n'
    assert response.headers['content-type'].startswith('text/plain')
    assert http.get('/static/sub/').text == '<p>index</p>'
    assert wait_until(lambda: any(e['event'] == 'static' and e['path'] == 'hello.txt'
                                  for e in read_events(events_file)))


def test_static_traversal_never_escapes(http):
    for path in ('/static/../tests/harness.py', '/static/%2e%2e/%2e%2e/etc/passwd',
                 '/static/..%2Fetc%2Fpasswd', '/assets/../../etc/passwd'):
        response = http.get(path)
        assert b'root:' not in response.content
        assert response.status_code == 404


def test_authoritative_mount_404_and_headers(http, events_file):
    missing = http.get('/assets/missing.png')
    assert missing.status_code == 404
    assert missing.json() == {'error': 'Not found'}
    served = http.get('/assets/hello.txt')
    assert served.headers['cache-control'] == 'max-age=60'
    assert wait_until(lambda: any(e['event'] == 'static' and e['status'] == 404
                                  for e in read_events(events_file)))


def test_non_authoritative_mount_falls_through(http):
    # No file: the request falls through to routing, and no pool serves /static/.
    assert http.get('/static/missing.txt').status_code == 404


# -- limits and shutdown (own servers) ------------------------------------------

def test_max_pending_answers_503(tmp_path):
    env = {'WG_MAX_PENDING': '1', 'WG_WORKERS': '1', 'WG_EVENTS': str(tmp_path / 'e')}
    with Server('tests.apps.core_app:make', env=env) as srv:
        srv.wait_ready(2)
        results = {}

        def slow():
            results['slow'] = httpx.get(srv.url('/api/sleep/1'), timeout=10).status_code

        thread = threading.Thread(target=slow)
        thread.start()
        assert wait_until(lambda: _in_flight(srv) >= 1)
        response = httpx.get(srv.url('/api/hello'), timeout=10)
        thread.join(10)
        assert response.status_code == 503
        assert response.json() == {'error': 'Too many requests in flight'}
        assert results['slow'] == 200


def _in_flight(srv):
    status = httpx.get(srv.url('/sync/health'), timeout=5).json()
    return sum(pool['pending_count'] for pool in status['pools'])


def test_sigterm_drains_then_503_and_exits_zero(tmp_path):
    events = tmp_path / 'events.jsonl'
    env = {'WG_EVENTS': str(events), 'WG_WORKERS': '1', 'WG_SHUTDOWN_TIMEOUT': '1',
           'WG_TIMEOUT': '30'}
    srv = Server('tests.apps.core_app:make', env=env).start()
    try:
        srv.wait_ready(2)
        results = {}

        def call(name, path):
            try:
                results[name] = httpx.get(srv.url(path), timeout=15).status_code
            except httpx.HTTPError as err:
                results[name] = repr(err)

        quick = threading.Thread(target=call, args=('quick', '/api/sleep/0.3'))
        stuck = threading.Thread(target=call, args=('stuck', '/api/sleep/5'))
        quick.start()
        assert wait_until(lambda: _in_flight(srv) >= 1)
        stuck.start()
        assert wait_until(lambda: _in_flight(srv) >= 2)
        workers = set(srv.worker_pids)
        srv.process.send_signal(signal.SIGTERM)
        quick.join(15)
        stuck.join(15)
        assert srv.process.wait(20) == 0
        assert results == {'quick': 200, 'stuck': 503}
        reasons = {e['path']: e['reason'] for e in read_events(events) if e['event'] == 'removed'}
        assert reasons == {'/api/sleep/0.3': 'COMPLETED', '/api/sleep/5': 'SHUTDOWN'}
        assert wait_until(lambda: not [p for p in workers if _alive(p)], 10)
        teardowns = [e for e in read_events(events) if e['event'] == 'teardown']
        assert len(teardowns) >= 1
    finally:
        srv.kill()


def _alive(pid):
    from tests.harness import pid_alive
    return pid_alive(pid)


def test_sigint_also_shuts_down(tmp_path):
    srv = Server('tests.apps.core_app:make', env={'WG_EVENTS': str(tmp_path / 'e')}).start()
    try:
        srv.wait_ready(3)
        srv.process.send_signal(signal.SIGINT)
        assert srv.process.wait(20) == 0
        assert wait_until(lambda: not srv.live_workers(), 10)
    finally:
        srv.kill()


def test_status_document_shape(http):
    status = http.get('/sync/health').json()['pools'][0]
    for key in ('name', 'degraded', 'alive_count', 'queue_size', 'pending_count', 'workers'):
        assert key in status
    worker = status['workers'][0]
    for key in ('alive', 'pid', 'last_seen', 'current_request', 'restarts', 'parked'):
        assert key in worker
    json.dumps(status)


def _rss_mib(pid):
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise AssertionError(f'no VmRSS for pid {pid}')


def test_request_bodies_are_freed_promptly(server):
    body = os.urandom(1024 * 1024)
    with httpx.Client(base_url=server.url(), timeout=10) as client:
        client.post('/api/sha', content=body)
        before = _rss_mib(server.process.pid)
        for _ in range(150):
            assert client.post('/api/sha', content=body).status_code == 200
        grown = _rss_mib(server.process.pid) - before
    # 150 MiB of bodies went through; a reference cycle that left them to the
    # garbage collector would show here as well over 60 MiB of growth.
    assert grown < 60, f'dispatcher grew by {grown:.0f} MiB'
