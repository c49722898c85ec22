"""Operating workgate: the command line, log formats, status and metrics."""

import os
import re
import subprocess
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import REPO, Server, pid_alive, wait_until

APP = 'tests.apps.core_app:make'


def run_cli(*args, timeout=30):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / 'src'), str(REPO)]))
    return subprocess.run([sys.executable, '-m', 'workgate', *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('args,message', [
    (['run', 'no_colon_here'], 'MODULE:ATTRIBUTE'),
    (['run', 'tests.apps.does_not_exist:make'], 'tests.apps.does_not_exist'),
    (['run', 'tests.apps.core_app:missing'], 'missing'),
    (['run', 'tests.apps.core_app:not_a_dispatcher'], 'Dispatcher'),
    (['run', 'tests.apps.core_app:NOT_CALLABLE'], 'Dispatcher'),
    (['run', APP, '--port', '70000'], 'port'),
    (['run', APP, '--workers', '0'], 'workers'),
    (['run', APP, '--certfile', 'cert.pem'], 'keyfile'),
    (['run', APP, '--log-level', 'loud'], 'log-level'),
])
def test_cli_errors_are_one_line_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr
    assert message in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(('workgate: error:', 'usage:')) \
        or 'error' in result.stderr


def test_cli_help_names_units():
    result = run_cli('run', '--help')
    assert result.returncode == 0
    for option in ('--host', '--port', '--workers', '--log-level', '--certfile', '--keyfile'):
        assert option in result.stdout
    top = run_cli('--help')
    assert top.returncode == 0
    assert 'run' in top.stdout


def test_cli_serves_and_exits_zero_on_sigterm(tmp_path):
    with Server(APP, '--workers', '1', '--no-access-log',
                env={'WG_EVENTS': str(tmp_path / 'e')}) as server:
        server.wait_ready(2)
        assert httpx.get(server.url('/api/hello'), timeout=5).json() == {'hello': 'world'}
        status = httpx.get(server.url('/sync/health'), timeout=5).json()
        assert [len(p['workers']) for p in status['pools']] == [1, 1]
        workers = list(server.worker_pids)
        assert server.terminate() == 0
        assert server.count_log(r'access ') == 0
        assert wait_until(lambda: not any(pid_alive(p) for p in workers), 5)


def test_plain_log_format_and_access_line(tmp_path):
    with Server(APP, env={'WG_EVENTS': str(tmp_path / 'e')}) as server:
        server.wait_ready(3)
        httpx.get(server.url('/api/user/5?token=secret'), timeout=5)
        line = server.wait_log(r'access .*GET /api/user/5')
        assert line is not None
        text = line.string
        assert re.match(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO +access 127\.0\.0\.1:\d+ '
                        r'"GET /api/user/5" 200 [\d.]+ms pool=CoreWorker worker=\d$', text), text
        assert 'secret' not in server.output()
        assert '\x1b[' not in server.output()


def test_journal_format_when_forced(tmp_path):
    # Detection from JOURNAL_STREAM is unit-tested in test_logs.py; here the
    # whole process prints syslog priority prefixes and no timestamps.
    env = {'WG_EVENTS': str(tmp_path / 'e'), 'WORKGATE_LOG_FORMAT': 'journal'}
    with Server(APP, env=env) as server:
        server.wait_ready(3)
        assert server.wait_log(r'^<6>INFO +CoreDispatcher listening on')
        httpx.get(server.url('/api/fail'), timeout=5)
        assert server.wait_log(r'^<3>ERROR +core-CoreWorker-\d GET /api/fail failed')


def test_status_and_metrics_paths(tmp_path):
    env = {'WG_EVENTS': str(tmp_path / 'e'), 'WG_STATUS_PATH': '/_status',
           'WG_METRICS_PATH': '/_metrics'}
    with Server(APP, env=env) as server:
        server.wait_ready(3)
        client = httpx.Client(base_url=server.url(), timeout=10)
        for _ in range(3):
            assert client.get('/api/hello').status_code == 200
        assert client.get('/api/fail').status_code == 500
        status = client.get('/_status').json()
        assert status['in_flight'] == 0
        assert [p['name'] for p in status['pools']] == ['CoreWorker', 'StoreWorker']
        assert status['pools'][0]['alive_count'] == 2

        response = client.get('/_metrics')
        assert response.headers['content-type'].startswith('text/plain')
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        requests = {(s.labels['pool'], s.labels['status']): s.value
                    for s in families['workgate_requests'].samples
                    if s.name == 'workgate_requests_total'}
        assert requests[('CoreWorker', '200')] == 3
        assert requests[('CoreWorker', '500')] == 1
        histogram = [s for s in families['workgate_request_duration_seconds'].samples
                     if s.name.endswith('_count')]
        assert histogram[0].value == 4
        alive = {s.labels['pool']: s.value for s in families['workgate_workers_alive'].samples}
        assert alive == {'CoreWorker': 2, 'StoreWorker': 1}

        client.get('/api/hello')
        again = {f.name: f for f in text_string_to_metric_families(client.get('/_metrics').text)}
        moved = {(s.labels['pool'], s.labels['status']): s.value
                 for s in again['workgate_requests'].samples
                 if s.name == 'workgate_requests_total'}
        assert moved[('CoreWorker', '200')] == 4
        client.close()
