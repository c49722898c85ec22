"""Supervision with real processes and real signals (tests/apps/super_app.py)."""

import os
import signal
import socket
import threading
import time

import httpx
import pytest

from tests.harness import Server, pid_alive, read_events, wait_until

APP = 'tests.apps.super_app:make'


def start(tmp_path, workers_ready=3, **env):
    events = tmp_path / 'events.jsonl'
    settings = {'WG_EVENTS': str(events)}
    settings.update({key: str(value) for key, value in env.items()})
    server = Server(APP, env=settings).start()
    if workers_ready:
        server.wait_ready(workers_ready)
    return server, events


def events_of(path, kind):
    return [e for e in read_events(path) if e['event'] == kind]


def get(server, path, **kwargs):
    return httpx.get(server.url(path), timeout=kwargs.pop('timeout', 15), **kwargs)


@pytest.fixture
def server(tmp_path):
    srv, events = start(tmp_path)
    srv.events = events
    yield srv
    srv.kill()


def worker_pids(server):
    status = get(server, '/d/status').json()
    return [w['pid'] for w in status['pools'][0]['workers']]


@pytest.mark.parametrize('path,exit_text,exitcode', [
    ('/w/kill-self', 'signal SIGKILL', -9),
    ('/w/segv', 'signal SIGSEGV', -11),
    ('/w/exit/7', 'exit code 7', 7),
])
def test_crash_in_handler_gives_500_and_restart(server, path, exit_text, exitcode):
    before = len(server.ready_lines())
    response = get(server, path)
    assert response.status_code == 500
    assert response.json() == {'error': 'Worker crashed'}
    assert server.wait_log(rf'worker ResumableWorker\[\d\] pid \d+ died \({exit_text}, 1 victims\)')
    server.wait_ready(before + 1)
    died = events_of(server.events, 'died')
    assert died[-1]['exitcode'] == exitcode
    assert len(died[-1]['victims']) == 1
    removed = [e for e in events_of(server.events, 'removed') if e['path'] == path]
    assert [e['reason'] for e in removed] == ['WORKER_DIED']
    assert get(server, '/w/pid').status_code == 200


def test_external_sigkill_of_idle_worker_restarts(server):
    pid = worker_pids(server)[0]
    before = len(server.ready_lines())
    os.kill(pid, signal.SIGKILL)
    assert server.wait_log(rf'pid {pid} died \(signal SIGKILL, 0 victims\); restarting')
    server.wait_ready(before + 1)
    assert pid not in worker_pids(server)
    status = get(server, '/d/status').json()['pools'][0]
    assert sum(w['restarts'] for w in status['workers']) == 1


def test_waiting_requests_survive_a_crash(tmp_path):
    srv, events = start(tmp_path, WG_WORKERS=1, workers_ready=2)
    try:
        results = []

        def call(path):
            results.append((path, get(srv, path).status_code))

        crash = threading.Thread(target=call, args=('/w/sleep/0.5',))
        crash.start()
        assert wait_until(lambda: _held(srv) == 1)
        followers = [threading.Thread(target=call, args=('/w/pid',)) for _ in range(3)]
        for thread in followers:
            thread.start()
        assert wait_until(lambda: _queued(srv) == 3)
        os.kill(worker_pids(srv)[0], signal.SIGKILL)
        for thread in [crash, *followers]:
            thread.join(15)
        assert sorted(results) == [('/w/pid', 200)] * 3 + [('/w/sleep/0.5', 500)]
    finally:
        srv.kill()


def _pool_status(server):
    return get(server, '/d/status').json()['pools'][0]


def _held(server):
    return sum(w['held_requests'] for w in _pool_status(server)['workers'])


def _queued(server):
    return _pool_status(server)['queue_size']


def _inbox(server):
    return _pool_status(server)['workers'][0]['inbox']


def _teach_send_ahead(server):
    """Run 200 fast requests, so that the pool sends requests ahead."""
    with httpx.Client(base_url=server.url(), timeout=15) as client:
        for _ in range(200):
            client.get('/w/pid')


def test_requests_sent_ahead_survive_a_crash(tmp_path):
    srv, events = start(tmp_path, WG_WORKERS=1, workers_ready=2)
    try:
        _teach_send_ahead(srv)
        results = []

        def call(path):
            results.append((path, get(srv, path).status_code))

        head = threading.Thread(target=call, args=('/w/sleep/0.5',))
        head.start()
        assert wait_until(lambda: _held(srv) == 1)
        followers = [threading.Thread(target=call, args=('/w/pid',)) for _ in range(4)]
        for thread in followers:
            thread.start()
        assert wait_until(lambda: _pool_status(srv)['workers'][0]['inbox'] >= 2), \
            'no quick request was sent ahead to the busy worker'
        assert wait_until(lambda: _pool_status(srv)['pending_count'] == 5)
        os.kill(worker_pids(srv)[0], signal.SIGKILL)
        for thread in [head, *followers]:
            thread.join(15)
        assert sorted(results) == [('/w/pid', 200)] * 4 + [('/w/sleep/0.5', 500)]
        died = events_of(events, 'died')[-1]
        assert len(died['victims']) == 1
    finally:
        srv.kill()


def _send_ahead_behind_sleep(srv, tag):
    """Start a 2 s handler, then send GET /w/ran/TAG ahead on a raw socket.

    Returns the thread waiting for the sleep's status and the socket.
    """
    _teach_send_ahead(srv)
    statuses = []
    head = threading.Thread(target=lambda: statuses.append(get(srv, '/w/sleep/2').status_code))
    head.start()
    assert wait_until(lambda: _held(srv) == 1)
    sock = socket.create_connection(('127.0.0.1', srv.port))
    sock.sendall(f'GET /w/ran/{tag} HTTP/1.1\r\nHost: test\r\n\r\n'.encode())
    assert wait_until(lambda: _inbox(srv) == 2), 'the request was not sent ahead to the busy worker'
    return head, statuses, sock


def _ran_tags(srv, events):
    # Once the worker is idle, so that no timeout can catch it, a last
    # request runs. Its event follows any event the others wrote.
    assert wait_until(lambda: _inbox(srv) == 0)
    assert get(srv, '/w/ran/last').status_code == 200
    return [event['tag'] for event in events_of(events, 'ran')]


def test_sent_ahead_skipped_after_disconnect(tmp_path):
    srv, events = start(tmp_path, WG_WORKERS=1, workers_ready=2)
    try:
        head, statuses, sock = _send_ahead_behind_sleep(srv, 'gone')
        sock.close()

        def removed():
            return [e for e in events_of(events, 'removed') if e['path'] == '/w/ran/gone']

        assert wait_until(removed)
        # The DISCONNECT must reach the worker's socket while the handler
        # before it still runs, or the worker reads it too late.
        assert head.is_alive(), 'the handler ended before the dispatcher saw the disconnect'
        head.join(15)
        assert statuses == [200]
        assert [e['reason'] for e in removed()] == ['DISCONNECTED']
        assert _ran_tags(srv, events) == ['last']
    finally:
        srv.kill()


def test_sent_ahead_skipped_after_timeout(tmp_path):
    srv, events = start(tmp_path, WG_WORKERS=1, workers_ready=2, WG_TIMEOUT=0.5)
    try:
        head, statuses, sock = _send_ahead_behind_sleep(srv, 'late')
        with sock:
            sock.settimeout(15)
            answer = sock.recv(4096)
        assert answer.startswith(b'HTTP/1.1 504 ')
        head.join(15)
        assert statuses == [504]
        removed = [e for e in events_of(events, 'removed') if e['path'] == '/w/ran/late']
        assert [e['reason'] for e in removed] == ['TIMEOUT']
        assert _ran_tags(srv, events) == ['last']
    finally:
        srv.kill()


def test_crash_in_batch_runs_nothing_twice(tmp_path):
    # Two requests wait ahead behind a 1 s handler. The worker reads them in
    # one batch, runs the first and dies in the second. The first response
    # was still in the worker's buffer, so both fail, and neither may run
    # again on the new worker.
    srv, events = start(tmp_path, WG_WORKERS=1, workers_ready=2)
    try:
        _teach_send_ahead(srv)
        results = []

        def call(path):
            results.append((path, get(srv, path).status_code))

        head = threading.Thread(target=call, args=('/w/sleep/1',))
        head.start()
        assert wait_until(lambda: _held(srv) == 1)
        batch = []
        for inbox, path in ((2, '/w/ran/first'), (3, '/w/exit/7')):
            thread = threading.Thread(target=call, args=(path,))
            thread.start()
            batch.append(thread)
            assert wait_until(lambda inbox=inbox: _inbox(srv) == inbox), \
                f'{path} was not sent ahead to the busy worker'
        for thread in [head, *batch]:
            thread.join(15)
        assert sorted(results) == [('/w/exit/7', 500), ('/w/ran/first', 500),
                                   ('/w/sleep/1', 200)]
        assert srv.wait_log(r'died \(exit code 7, 2 victims\)')
        srv.wait_ready(3)
        assert get(srv, '/w/pid').status_code == 200
        assert len(events_of(events, 'died')) == 1
        assert [event['tag'] for event in events_of(events, 'ran')] == ['first']
    finally:
        srv.kill()


def test_stuck_worker_is_killed_with_its_children(tmp_path):
    srv, events = start(tmp_path, WG_STUCK=1, WG_TIMEOUT=30, WG_HEARTBEAT=0.2)
    try:
        response = get(srv, '/w/spin')
        assert response.status_code == 500
        assert srv.wait_log(r'is stuck: no sign of life')
        assert srv.wait_log(r'pid \d+ stuck \(signal SIGKILL, 1 victims\); restarting')
        died = events_of(events, 'died')
        assert died[-1]['reason'] == 'stuck'
        child = events_of(events, 'child')[0]['child']
        assert wait_until(lambda: not pid_alive(child), 5), 'child of the killed worker survived'
    finally:
        srv.kill()


def test_keep_alive_extends_timeout(tmp_path):
    srv, _ = start(tmp_path, WG_TIMEOUT=1, WG_STUCK=1)
    try:
        assert get(srv, '/w/keepalive/2.5').json() == {'done': True}
        assert srv.count_log('stuck') == 0
    finally:
        srv.kill()


def test_setup_failure_backs_off_then_degrades(tmp_path):
    srv, events = start(tmp_path, workers_ready=0, WG_SETUP='raise', WG_MAX_RESTARTS=3,
                        WG_WORKERS=1)
    try:
        assert srv.wait_log('setup cannot start', 10)
        assert srv.wait_log(r'worker ResumableWorker\[0\] will restart in 0\.5s after 1 failed')
        response = get(srv, '/w/pid')
        assert response.status_code == 503
        assert srv.wait_log('pool ResumableWorker is degraded', 20)
        degraded = get(srv, '/w/pid')
        assert degraded.status_code == 503
        assert degraded.json() == {'error': 'Service unavailable'}
        assert 'retry-after' not in degraded.headers
        assert _pool_status(srv)['degraded'] is True
    finally:
        srv.kill()


def test_no_live_worker_answers_503_retry_after(tmp_path):
    srv, _ = start(tmp_path, workers_ready=0, WG_SETUP='raise', WG_WORKERS=1)
    try:
        assert srv.wait_log('will restart in', 10)
        assert wait_until(lambda: _pool_status(srv)['alive_count'] == 0, 5)
        response = get(srv, '/w/pid')
        assert response.status_code == 503
        assert response.headers['retry-after'] == '1'
    finally:
        srv.kill()


def test_crash_loop_degrades_and_recovers(tmp_path):
    srv, events = start(tmp_path, WG_MAX_RESTARTS=2, WG_RESTART_WINDOW=60, WG_RECOVERY=1,
                        WG_WORKERS=1, workers_ready=2)
    try:
        for _ in range(3):
            assert get(srv, '/w/exit/1').status_code == 500
            srv.wait_for(lambda: True)
            wait_until(lambda: _pool_status(srv)['ready_count'] == 1
                       or _pool_status(srv)['degraded'], 10)
        assert srv.wait_log('pool ResumableWorker is degraded')
        assert get(srv, '/w/pid').status_code == 503
        assert srv.wait_log('pool ResumableWorker recovered', 10)
        assert wait_until(lambda: get(srv, '/w/pid').status_code == 200, 10)
    finally:
        srv.kill()


def test_permanent_failure_parks_slot(tmp_path):
    srv, events = start(tmp_path, workers_ready=2, WG_SETUP='park-one')
    try:
        assert srv.wait_log(r'ResumableWorker\[0\] pid \d+ parked exit=42')
        status = _pool_status(srv)
        assert status['parked_count'] == 1
        assert status['workers'][0]['parked'] is True
        assert status['degraded'] is False
        assert get(srv, '/w/pid').json()['worker'] == 1
    finally:
        srv.kill()


def test_all_parked_is_degraded(tmp_path):
    srv, _ = start(tmp_path, workers_ready=0, WG_SETUP='park', WG_RECOVERY=0.5)
    try:
        assert srv.wait_log('every worker is parked', 10)
        assert get(srv, '/w/pid').status_code == 503
        time.sleep(1)  # longer than recovery_interval: parking must stay degraded
        assert _pool_status(srv)['degraded'] is True
    finally:
        srv.kill()


def test_memory_limit_applied_before_setup(tmp_path):
    srv, _ = start(tmp_path, WG_MEMORY_MB=600)
    try:
        limits = get(srv, '/w/memory').json()
        assert limits == {'soft': 600 * 1024 * 1024, 'hard': 600 * 1024 * 1024}
        over = get(srv, '/w/allocate/1000')
        assert over.status_code == 500
        assert get(srv, '/w/allocate/10').json() == {'allocated': 10 * 1024 * 1024}
    finally:
        srv.kill()


def test_heartbeat_idle_config_and_readers(server):
    # Poll slowly: every request resets the worker's idle timer.
    assert wait_until(lambda: get(server, '/w/state').json()['idle'] >= 2, 5, interval=0.6)
    assert get(server, '/d/status').json()['pools'][0]['workers'][0]['last_seen'] < 1
    httpx.post(server.url('/d/config'), json={'rate': 5}, timeout=5)
    assert wait_until(lambda: get(server, '/w/state').json()['config'] == {'rate': 5}, 5)
    worker = get(server, '/w/poke').json()['poked']
    assert wait_until(lambda: any(
        s['worker'] == worker and s['reader_hits'] >= 1
        for s in [get(server, '/w/state').json() for _ in range(4)]), 5)
    get(server, '/d/poke')
    assert wait_until(lambda: get(server, '/d/status').json()['reader_hits'] == 1, 5)
    assert wait_until(lambda: get(server, '/d/status').json()['idle_ticks'] >= 1, 5)


def test_pause_sends_requests_to_other_worker(server):
    paused = get(server, '/w/pause').json()['paused']
    assert wait_until(lambda: _pool_status(server)['workers'][paused]['paused'], 5)
    seen = {get(server, '/w/pid').json()['worker'] for _ in range(10)}
    assert seen == {1 - paused}
    httpx.post(server.url('/d/config'), json='resume', timeout=5)
    assert wait_until(lambda: not _pool_status(server)['workers'][paused]['paused'], 5)


def test_forward_reaches_sink_pool(server):
    assert get(server, '/w/forward/3').json() == {'forwarded': 3}
    assert wait_until(lambda: len(events_of(server.events, 'sink')) == 3, 5)
    assert sorted(e['data']['n'] for e in events_of(server.events, 'sink')) == [0, 1, 2]


def test_forward_drops_when_sink_full(tmp_path):
    srv, events = start(tmp_path, WG_SINK_QUEUE=2, WG_SINK_DELAY=0.3)
    try:
        assert get(srv, '/w/forward/10').json() == {'forwarded': 10}
        assert srv.wait_log(r'forward to .*/sink/store.* dropped: pool SinkWorker')
        assert wait_until(lambda: len(events_of(events, 'sink')) == 3, 5)
        time.sleep(0.5)
        assert len(events_of(events, 'sink')) == 3
    finally:
        srv.kill()


def test_queue_warning_logged(tmp_path):
    srv, _ = start(tmp_path, WG_WORKERS=1, WG_QUEUE_WARNING=2, workers_ready=2)
    try:
        threads = [threading.Thread(target=get, args=(srv, '/w/sleep/0.5')) for _ in range(5)]
        for thread in threads:
            thread.start()
        assert srv.wait_log(r'pool ResumableWorker has \d+ requests waiting', 5)
        for thread in threads:
            thread.join(15)
    finally:
        srv.kill()


def test_workers_exit_when_dispatcher_is_killed(tmp_path):
    srv, _ = start(tmp_path)
    pids = list(srv.worker_pids)
    assert len(pids) == 3
    srv.process.kill()
    srv.process.wait(5)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 5), \
        f'workers outlived the dispatcher: {[p for p in pids if pid_alive(p)]}'


def test_shutdown_runs_teardown_and_leaves_no_worker(tmp_path):
    srv, events = start(tmp_path)
    pids = list(srv.worker_pids)
    assert srv.terminate() == 0
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 5)
    assert len(events_of(events, 'teardown')) == 2
