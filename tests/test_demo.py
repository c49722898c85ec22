"""End-to-end test of examples/demo/app.py, run as its own process.

Each demo instance listens on a free loopback port with its database in a
temporary folder. The requests follow the curl walkthrough in README.md.
"""

import contextlib
import hashlib
import json
import lzma
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest
from examples.demo.app import MAX_SUBSCRIBERS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / 'examples' / 'demo'
API_KEY = 'test-key-0123'
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
EVENT_TIMEOUT = 5.0
EVENTS_PATH = '/api/results/events'
# Maximum number of events a test reads while looking for one. Other events
# can come first, because earlier tests' uploads may still be on their way
# to the storage worker.
MAX_EVENTS_READ = 50

# Compressible text followed by random bytes, so the zlib and lzma sizes
# differ from each other and from the input size.
SAMPLE = b''.join(b'line %d of the sample file\n' % i for i in range(2000))
SAMPLE += os.urandom(4096)


def find_free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def read_proc_stat(pid):
    """Return (parent pid, state, start time) from /proc/PID/stat, or None."""
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in brackets may contain spaces, so split after it.
    fields = text[text.rindex(')') + 2:].split()
    return int(fields[1]), fields[0], fields[19]


def list_descendants(root_pid):
    """Return {pid: start time} for all live descendants of root_pid.

    Workers may be grandchildren (started by a fork server), so the whole
    tree is walked. The start time distinguishes a reused pid from the original.
    """
    parents = {}
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_proc_stat(int(entry.name))
        if stat is not None and stat[1] != 'Z':
            parents[int(entry.name)] = stat
    descendants = {}
    frontier = [root_pid]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, start_time) in parents.items():
            if ppid == parent and pid not in descendants:
                descendants[pid] = start_time
                frontier.append(pid)
    return descendants


def is_still_running(pid, start_time):
    stat = read_proc_stat(pid)
    return stat is not None and stat[1] != 'Z' and stat[2] == start_time


class Demo:
    """A running demo process and an httpx client bound to it."""

    def __init__(self, tmp_path):
        self.port = find_free_port()
        self.base_url = f'http://127.0.0.1:{self.port}'
        self.data_dir = tmp_path / 'data'
        self.log_path = tmp_path / 'demo.log'
        env = dict(os.environ)
        env['WORKGATE_DEMO_KEY'] = API_KEY
        env['PYTHONPATH'] = os.pathsep.join(
            filter(None, [str(REPO_ROOT / 'src'), env.get('PYTHONPATH')]))
        self._log_file = open(self.log_path, 'wb')
        self.process = subprocess.Popen(
            [sys.executable, 'app.py',
             '--host', '127.0.0.1', '--port', str(self.port),
             '--data-dir', str(self.data_dir)],
            cwd=DEMO_DIR, env=env,
            stdout=self._log_file, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.base_url, timeout=10.0)
        self.workers = {}

    def log_text(self):
        return self.log_path.read_text(errors='replace')

    def wait_until_healthy(self):
        """Poll /health until every pool reports live workers."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f'demo exited with {self.process.returncode} during '
                    f'startup. Its output:\n{self.log_text()}')
            try:
                response = httpx.get(f'{self.base_url}/health', timeout=0.5)
                if response.status_code == 200 and response.json()['status'] == 'ok':
                    return response.json()
                last_error = f'{response.status_code} {response.text}'
            except httpx.TransportError as err:
                last_error = repr(err)
            time.sleep(POLL_INTERVAL)
        pytest.fail(
            f'/health not ok after {STARTUP_TIMEOUT} s (last: {last_error}). '
            f'Demo output:\n{self.log_text()}')

    def terminate(self):
        """Send SIGTERM and return the exit code, or None on a timeout."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None

    def kill_leftovers(self):
        """Kill the demo and any worker it left running. Cleanup only."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=SHUTDOWN_TIMEOUT)
        for pid, start_time in self.workers.items():
            if is_still_running(pid, start_time):
                os.kill(pid, signal.SIGKILL)
        self._log_file.close()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    instance = Demo(tmp_path_factory.mktemp('demo'))
    try:
        instance.wait_until_healthy()
        yield instance
    finally:
        instance.terminate()
        instance.kill_leftovers()


def upload(client, body, name='sample.txt', level=6, api_key=API_KEY):
    """POST body to /api/files as raw bytes, sending api_key unless None."""
    headers = {'Content-Type': 'application/octet-stream'}
    if api_key is not None:
        headers['X-API-Key'] = api_key
    return client.post(
        '/api/files', params={'name': name, 'level': level},
        content=body, headers=headers)


def wait_for_stored(client, result_id):
    """Return the stored result, polling while the forward is in transit."""
    deadline = time.monotonic() + 5.0
    while True:
        response = client.get(
            f'/api/results/{result_id}', headers={'X-API-Key': API_KEY})
        if response.status_code != 404 or time.monotonic() > deadline:
            return response
        time.sleep(POLL_INTERVAL)


def wait_for_log_line(demo, text, timeout=EVENT_TIMEOUT):
    """Poll the demo's output until a line contains text; fail after timeout."""
    deadline = time.monotonic() + timeout
    while text not in demo.log_text():
        if time.monotonic() > deadline:
            pytest.fail(f'no log line with {text!r} after {timeout} s. '
                        f'Demo output:\n{demo.log_text()}')
        time.sleep(POLL_INTERVAL)


def subscriber_log_lines(demo):
    return [line for line in demo.log_text().splitlines()
            if 'StorageWorker[0] subscriber ' in line]


def wait_for_no_subscribers(demo):
    """Poll until the storage worker's last subscriber log line reports 0 open."""
    deadline = time.monotonic() + EVENT_TIMEOUT
    while not subscriber_log_lines(demo)[-1].endswith('left (0 open)'):
        if time.monotonic() > deadline:
            pytest.fail(f'the storage worker still has subscribers after '
                        f'{EVENT_TIMEOUT} s: {subscriber_log_lines(demo)[-3:]}')
        time.sleep(POLL_INTERVAL)


def iter_events(response):
    """Yield (event name, JSON data) for each event of a text/event-stream."""
    name, data = None, []
    for line in response.iter_lines():
        if line == '':
            if data:
                yield name or 'message', json.loads('\n'.join(data))
            name, data = None, []
            continue
        if line.startswith(':'):
            continue
        field, _, value = line.partition(':')
        value = value.removeprefix(' ')
        if field == 'event':
            name = value
        elif field == 'data':
            data.append(value)


def next_event(events, name, match=lambda data: True):
    """Return the data of the next event called name for which match() is true.

    Skips other events, reads at most MAX_EVENTS_READ of them, and fails
    when the stream stays silent for the client's read timeout.
    """
    try:
        for _, (event_name, data) in zip(range(MAX_EVENTS_READ), events, strict=False):
            if event_name == name and match(data):
                return data
    except httpx.ReadTimeout:
        pytest.fail(f'no {name!r} event within {EVENT_TIMEOUT} s')
    pytest.fail(f'no matching {name!r} event in {MAX_EVENTS_READ} events')


def test_health_lists_both_pools(demo):
    response = demo.client.get('/health')

    assert response.status_code == 200
    body = response.json()
    assert body['status'] == 'ok'
    assert [pool['name'] for pool in body['pools']] == [
        'ComputeWorker', 'StorageWorker']


def test_static_page_served_at_root(demo):
    response = demo.client.get('/')

    assert response.status_code == 200
    assert response.headers['content-type'].startswith('text/html')
    assert '<form id="upload-form">' in response.text


def test_upload_returns_hash_and_sizes(demo):
    response = upload(demo.client, SAMPLE, name='sample.txt', level=6)

    assert response.status_code == 201, response.text
    result = response.json()
    assert result['name'] == 'sample.txt'
    assert result['size'] == len(SAMPLE)
    assert result['sha256'] == hashlib.sha256(SAMPLE).hexdigest()
    assert result['level'] == 6
    assert result['zlib']['size'] == len(zlib.compress(SAMPLE, 6))
    assert result['lzma']['size'] == len(lzma.compress(SAMPLE, preset=6))
    assert 0 < result['zlib']['ratio'] < 1
    assert result['seconds'] >= 0
    assert response.headers['location'] == f"/api/results/{result['id']}"


def test_upload_stored_listed_and_deleted(demo):
    uploaded = upload(demo.client, SAMPLE, name='stored.txt', level=1).json()
    result_id = uploaded['id']
    key = {'X-API-Key': API_KEY}

    fetched = wait_for_stored(demo.client, result_id)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == uploaded

    listing = demo.client.get('/api/results', headers=key)
    assert listing.status_code == 200
    assert result_id in [item['id'] for item in listing.json()['results']]
    assert listing.json()['total'] >= 1

    deleted = demo.client.delete(f'/api/results/{result_id}', headers=key)
    assert deleted.status_code == 200
    assert deleted.json() == {'deleted': result_id}

    gone = demo.client.get(f'/api/results/{result_id}', headers=key)
    assert gone.status_code == 404
    assert gone.json() == {'error': f'result not found: {result_id}'}

    assert (demo.data_dir / 'results.sqlite3').is_file()


@pytest.mark.parametrize('headers', [
    {},
    {'X-API-Key': 'wrong-key'},
    {'X-API-Key': 'demo-key'},
], ids=['missing', 'wrong', 'default-when-overridden'])
def test_request_without_valid_key_rejected(demo, headers):
    response = demo.client.get('/api/results', headers=headers)

    assert response.status_code == 401
    assert response.json() == {'error': 'missing or invalid X-API-Key header'}


def test_upload_without_key_rejected(demo):
    response = upload(demo.client, SAMPLE, api_key=None)

    assert response.status_code == 401
    assert response.json() == {'error': 'missing or invalid X-API-Key header'}


@pytest.mark.parametrize(('params', 'body', 'content_type', 'status'), [
    ({'level': '12'}, SAMPLE, 'application/octet-stream', 400),
    ({'level': 'fast'}, SAMPLE, 'application/octet-stream', 400),
    ({'name': 'x' * 201}, SAMPLE, 'application/octet-stream', 400),
    ({}, b'', 'application/octet-stream', 400),
    ({}, b'{"a": 1}', 'application/json', 415),
], ids=['level-too-high', 'level-not-int', 'name-too-long', 'empty', 'json'])
def test_upload_invalid_input(demo, params, body, content_type, status):
    response = demo.client.post(
        '/api/files', params=params, content=body,
        headers={'X-API-Key': API_KEY, 'Content-Type': content_type})

    assert response.status_code == status, response.text
    assert 'error' in response.json()


def test_event_stream_sends_results(demo):
    with httpx.Client(base_url=demo.base_url, timeout=EVENT_TIMEOUT) as stream_client:
        with stream_client.stream(
                'GET', EVENTS_PATH, params={'key': API_KEY}) as response:
            assert response.status_code == 200
            assert response.headers['content-type'].startswith('text/event-stream')
            events = iter_events(response)
            hello = next_event(events, 'hello')
            assert hello['subscribers'] == 1

            uploaded = upload(demo.client, SAMPLE, name='streamed.txt').json()
            stored = next_event(events, 'result', lambda r: r['id'] == uploaded['id'])
            assert stored['sha256'] == hashlib.sha256(SAMPLE).hexdigest()
            assert stored == uploaded

            deleted = demo.client.delete(
                f"/api/results/{uploaded['id']}", headers={'X-API-Key': API_KEY})
            assert deleted.status_code == 200
            deleted_event = next_event(events, 'deleted')
            assert deleted_event == {'id': uploaded['id']}

    # Closing the client closed the connection. The dispatcher then calls the
    # storage worker's on_disconnect(), which drops the subscriber and logs it.
    wait_for_log_line(demo, f"subscriber {hello['subscriber']} left (0 open)")
    with httpx.Client(base_url=demo.base_url, timeout=EVENT_TIMEOUT) as stream_client:
        with stream_client.stream(
                'GET', EVENTS_PATH, headers={'X-API-Key': API_KEY}) as response:
            assert response.status_code == 200
            again = next_event(iter_events(response), 'hello')
    assert again['subscribers'] == 1
    assert again['subscriber'] != hello['subscriber']


def test_event_stream_subscriber_limit(demo):
    limits = httpx.Limits(max_connections=MAX_SUBSCRIBERS + 1)
    with contextlib.ExitStack() as streams, httpx.Client(
            base_url=demo.base_url, timeout=EVENT_TIMEOUT, limits=limits) as client:
        # Dropping an event iterator closes its connection, so keep them all.
        event_iterators = []
        for count in range(1, MAX_SUBSCRIBERS + 1):
            response = streams.enter_context(client.stream(
                'GET', EVENTS_PATH, headers={'X-API-Key': API_KEY}))
            assert response.status_code == 200
            event_iterators.append(iter_events(response))
            assert next_event(event_iterators[-1], 'hello')['subscribers'] == count

        rejected = client.get(EVENTS_PATH, headers={'X-API-Key': API_KEY})

        assert rejected.status_code == 503
        assert rejected.headers['retry-after'] == '5'
        assert 'too many event stream subscribers' in rejected.json()['error']

    wait_for_no_subscribers(demo)
    assert len([line for line in subscriber_log_lines(demo)
                if ' left (' in line]) >= MAX_SUBSCRIBERS


@pytest.mark.parametrize(('path', 'params', 'error'), [
    (EVENTS_PATH, {'key': 'wrong-key'},
     'missing or invalid API key: send the X-API-Key header or ?key='),
    (EVENTS_PATH, {'key': [API_KEY, API_KEY]},
     'missing or invalid API key: send the X-API-Key header or ?key='),
    (EVENTS_PATH, {},
     'missing or invalid API key: send the X-API-Key header or ?key='),
    ('/api/results', {'key': API_KEY}, 'missing or invalid X-API-Key header'),
], ids=['stream-wrong-key', 'stream-key-twice', 'stream-no-key', 'query-key-elsewhere'])
def test_query_key_only_for_event_stream(demo, path, params, error):
    response = demo.client.get(path, params=params)

    assert response.status_code == 401
    assert response.json() == {'error': error}


def test_internal_route_not_reachable(demo):
    response = demo.client.post(
        '/internal/results', json={'id': 'forged', 'created_at': 'x'},
        headers={'X-API-Key': API_KEY})

    assert response.status_code == 404
    forged = demo.client.get(
        '/api/results/forged', headers={'X-API-Key': API_KEY})
    assert forged.status_code == 404


def test_sigterm_stops_demo_and_workers(tmp_path):
    demo = Demo(tmp_path)
    try:
        health = demo.wait_until_healthy()
        assert upload(demo.client, SAMPLE).status_code == 201
        worker_pids = {
            worker['pid']
            for pool in health['pools'] for worker in pool['workers']}
        # The descendants also include any helper process of the start
        # method, such as a fork server, and all of them must exit.
        demo.workers = list_descendants(demo.process.pid)
        assert len(worker_pids) == 3, health
        assert worker_pids <= set(demo.workers), demo.workers

        exit_code = demo.terminate()

        assert exit_code == 0, demo.log_text()
        database = (demo.data_dir / 'results.sqlite3').resolve()
        assert f'closed {database}' in demo.log_text(), 'teardown() did not run'
        deadline = time.monotonic() + 5.0
        left = demo.workers
        while left and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
            left = {
                pid: start for pid, start in demo.workers.items()
                if is_still_running(pid, start)}
        assert left == {}, f'processes left running: {sorted(left)}'
    finally:
        demo.terminate()
        demo.kill_leftovers()
