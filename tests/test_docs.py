"""The pages under docs/ stay true: their examples run and print what the pages show.

Every check is driven by the Markdown pages themselves:

- A fenced ``python`` block whose first line is ``# docs/examples/NAME.py``
  is a copy of that file and must stay byte-identical to it. Every file in
  docs/examples/ must be shown on some page, and every other ``python``
  block must at least compile.
- A fenced ``console`` block on the line right after
  ``<!-- check: MODULE:ATTRIBUTE -->`` is a shell session against that
  example app. One test per app starts it with ``workgate run`` on a free
  loopback port, replays every session of that app in page order, and
  compares what each command prints with the lines the page shows.
- Some pages show things a session cannot replay (log lines, the status
  document, metrics, TLS). The checks registered with ``extra_check`` and
  the tests at the end compare those with the pages.

A session may use ``curl`` with the options ``parse_curl`` accepts, a
trailing ``&`` to run a curl in the background, ``wait`` (which prints the
output of the background commands, in the order they started) and
``sleep SECONDS``. curl itself is not run: the request is made with
http.client and printed the way curl prints it, so the tests need no curl
binary. The date, etag and last-modified header lines of ``curl -i`` output
are compared by name only, because their values change from run to run.
"""

from __future__ import annotations

import ast
import http.client
import json
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import REPO, Server

DOCS = REPO / 'docs'
EXAMPLES = DOCS / 'examples'
PAGES = sorted(DOCS.glob('*.md'))

# The address every page uses. Sessions send its requests to the test server instead.
DOCS_ORIGIN = 'localhost:8080'
REQUEST_TIMEOUT = 15.0
# A background request gets this long to reach the server before the next
# command runs, as it would while a person types the next command.
BACKGROUND_HEAD_START = 0.3
# Header lines of `curl -i` output whose values change on every run.
VOLATILE_HEADERS = frozenset({'date', 'etag', 'last-modified'})

_FENCE_RE = re.compile(r'^(`{3,})(\S*)\s*$')
_CHECK_RE = re.compile(r'^<!-- check: (\S+:\S+) -->$')
_EXAMPLE_MARKER_RE = re.compile(r'^# (docs/examples/\S+\.py)$')
_POOL_LINE_RE = re.compile(r'pool \S+: (\d+) workers')


# -- reading the pages --------------------------------------------------------

@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    text: str
    check_target: str | None

    @property
    def where(self) -> str:
        return f'{self.page.relative_to(REPO)}:{self.line}'


def read_blocks(page: Path) -> list[Block]:
    """Return the fenced blocks of ``page`` with their ``check`` markers."""
    blocks = []
    lines = page.read_text().split('\n')
    index = 0
    while index < len(lines):
        opening = _FENCE_RE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, language = opening.groups()
        previous = lines[index - 1] if index else ''
        marker = _CHECK_RE.match(previous)
        end = index + 1
        while end < len(lines) and lines[end] != fence:
            end += 1
        if end == len(lines):
            raise AssertionError(f'{page.relative_to(REPO)}:{index + 1}: unclosed code fence')
        text = '\n'.join(lines[index + 1:end]) + '\n'
        blocks.append(Block(page, index + 1, language, text,
                            marker.group(1) if marker else None))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in read_blocks(page)]


def sessions_by_target() -> dict[str, list[Block]]:
    sessions: dict[str, list[Block]] = {}
    for block in ALL_BLOCKS:
        if block.check_target is not None:
            sessions.setdefault(block.check_target, []).append(block)
    return sessions


SESSIONS = sessions_by_target()


def page_text(name: str) -> str:
    return (DOCS / name).read_text()


# -- the curl subset ------------------------------------------------------------

@dataclass
class CurlCommand:
    """The parts of a curl command line that a session may use."""

    url: str = ''
    method: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    include: bool = False
    head: bool = False
    write_out: str | None = None
    discard_body: bool = False
    max_time: float | None = None


_CURL_FLAGS = {'-s': 'silent', '--silent': 'silent', '-S': 'silent', '--show-error': 'silent',
               '-N': 'silent', '--no-buffer': 'silent', '-i': 'include', '--include': 'include',
               '-I': 'head', '--head': 'head'}
_CURL_VALUES = {'-X': 'method', '--request': 'method', '-H': 'header', '--header': 'header',
                '-d': 'data', '--data': 'data', '--data-binary': 'data',
                '--data-raw': 'data', '-b': 'cookie', '--cookie': 'cookie',
                '-w': 'write_out', '--write-out': 'write_out', '-o': 'output',
                '--output': 'output', '-m': 'max_time', '--max-time': 'max_time'}


def parse_curl(args: list[str]) -> CurlCommand:
    """Parse curl's arguments; raise ValueError for anything outside the subset."""
    command = CurlCommand()
    options: list[tuple[str, str | None]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg.startswith('--'):
            if arg in _CURL_FLAGS:
                options.append((_CURL_FLAGS[arg], None))
            elif arg in _CURL_VALUES:
                options.append((_CURL_VALUES[arg], args[index]))
                index += 1
            else:
                raise ValueError(f'curl option {arg} is not supported by the session runner')
        elif arg.startswith('-') and len(arg) > 1:
            letters = arg[1:]
            for position, letter in enumerate(letters):
                option = '-' + letter
                if option in _CURL_FLAGS:
                    options.append((_CURL_FLAGS[option], None))
                elif option in _CURL_VALUES:
                    rest = letters[position + 1:]
                    if rest:
                        options.append((_CURL_VALUES[option], rest))
                    else:
                        options.append((_CURL_VALUES[option], args[index]))
                        index += 1
                    break
                else:
                    raise ValueError(f'curl option {option} is not supported by the '
                                     'session runner')
        elif command.url:
            raise ValueError(f'curl got a second URL {arg!r}')
        else:
            command.url = arg

    for name, value in options:
        if name == 'include':
            command.include = True
        elif name == 'head':
            command.head = True
        elif name == 'method':
            command.method = value
        elif name == 'header':
            header, _, header_value = value.partition(':')
            command.headers.append((header.strip(), header_value.strip()))
        elif name == 'data':
            if value.startswith('@'):
                raise ValueError('curl -d @FILE is not supported by the session runner')
            command.data.append(value)
        elif name == 'cookie':
            command.headers.append(('Cookie', value))
        elif name == 'write_out':
            command.write_out = value
        elif name == 'output':
            if value != '/dev/null':
                raise ValueError('curl -o supports only /dev/null in sessions')
            command.discard_body = True
        elif name == 'max_time':
            command.max_time = float(value)
    if not command.url:
        raise ValueError('curl command without a URL')
    return command


def run_curl(command: CurlCommand, port: int) -> str:
    """Send the request and return what curl would print."""
    url = urllib.parse.urlsplit(command.url)
    if url.scheme != 'http' or url.netloc != DOCS_ORIGIN:
        raise ValueError(f'session URLs must start with http://{DOCS_ORIGIN}/, got {command.url}')
    target = url.path + (f'?{url.query}' if url.query else '')

    headers = {'Accept': '*/*'}
    body = None
    if command.data:
        body = '&'.join(command.data).encode()
        headers['Content-Type'] = 'application/x-www-form-urlencoded'
    for name, value in command.headers:
        for existing in [key for key in headers if key.lower() == name.lower()]:
            del headers[existing]
        headers[name] = value
    method = command.method or ('HEAD' if command.head else 'POST' if body is not None
                                else 'GET')

    deadline = time.monotonic() + (command.max_time or REQUEST_TIMEOUT)
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=REQUEST_TIMEOUT)
    status_line, header_lines, received = None, [], []
    try:
        connection.connect()
        connection.sock.settimeout(max(0.01, deadline - time.monotonic()))
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        version = 'HTTP/1.0' if response.version == 10 else 'HTTP/1.1'
        status_line = f'{version} {response.status} {response.reason}'
        header_lines = [f'{name}: {value}' for name, value in response.getheaders()]
        while method != 'HEAD':
            connection.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = response.read1(65536)
            if not chunk:
                break
            received.append(chunk)
    except TimeoutError:
        if command.max_time is None:
            raise
    finally:
        connection.close()

    output = ''
    if (command.include or command.head) and status_line is not None:
        output += '\n'.join([status_line, *header_lines]) + '\n\n'
    if not command.discard_body and not command.head:
        output += b''.join(received).decode('utf-8', errors='replace')
    if command.write_out is not None and status_line is not None:
        code = status_line.split()[1]
        output += command.write_out.replace('%{http_code}', code).replace('\\n', '\n')
    return output


# -- sessions ------------------------------------------------------------------

@dataclass
class Step:
    """One command of a session and the lines the page shows below it."""

    command: str
    expected: list[str]
    line: int


def parse_session(block: Block) -> list[Step]:
    steps: list[Step] = []
    lines = block.text.rstrip('\n').split('\n')
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith('$ '):
            raise AssertionError(f'{block.where}: output line {line!r} before any command')
        start = index
        command = line[2:]
        while command.endswith('\\'):
            index += 1
            command = command[:-1] + ' ' + lines[index].strip()
        index += 1
        expected = []
        while index < len(lines) and not lines[index].startswith('$ '):
            expected.append(lines[index])
            index += 1
        steps.append(Step(command, expected, block.line + 1 + start))
    return steps


def lines_match(expected: list[str], actual: list[str]) -> bool:
    """Compare output lines exactly, except the values of volatile header lines."""
    if len(expected) != len(actual):
        return False
    for want, got in zip(expected, actual, strict=True):
        name, sep, _ = want.partition(':')
        if sep and name.lower() in VOLATILE_HEADERS:
            if got.partition(':')[0] != name:
                return False
        elif want != got:
            return False
    return True


def normalise(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace('\r\n', '\n').split('\n')]
    while lines and not lines[-1]:
        lines.pop()
    return lines


class SessionRunner:
    """Replay the steps of sessions against one running example app."""

    def __init__(self, port: int):
        self.port = port
        self.background: list[tuple[threading.Thread, list]] = []

    def run(self, step: Step) -> str:
        words = shlex.split(step.command)
        if words == ['wait']:
            outputs = []
            for thread, result in self.background:
                thread.join(REQUEST_TIMEOUT + 5)
                assert not thread.is_alive(), 'a background request did not finish'
                if isinstance(result[0], Exception):
                    raise result[0]
                outputs.append(result[0].rstrip('\n'))
            self.background.clear()
            return '\n'.join(outputs)
        if words[0] == 'sleep' and len(words) == 2:
            time.sleep(float(words[1]))
            return ''
        if words[0] != 'curl':
            raise AssertionError(f'sessions run only curl, wait and sleep, not {words[0]!r}')
        if words[-1] == '&':
            command = parse_curl(words[1:-1])
            result: list = [None]

            def request() -> None:
                try:
                    result[0] = run_curl(command, self.port)
                except Exception as err:  # raised in the main thread at `wait`
                    result[0] = err

            thread = threading.Thread(target=request, daemon=True)
            thread.start()
            self.background.append((thread, result))
            time.sleep(BACKGROUND_HEAD_START)
            return ''
        return run_curl(parse_curl(words[1:]), self.port)


def expected_workers(server: Server) -> int:
    """Sum the pool sizes the dispatcher logged before it started listening."""
    total = 0
    for line in server.lines:
        match = _POOL_LINE_RE.search(line)
        if match:
            total += int(match.group(1))
    return total


# Apps with pools whose workers never become ready, by design of the page.
READY_WORKERS = {'docs.examples.supervision:make': 1}
EXTRA_CHECKS: dict[str, list] = {}


def extra_check(target: str):
    """Register a check that runs on ``target``'s server after its sessions."""
    def register(function):
        EXTRA_CHECKS.setdefault(target, []).append(function)
        return function
    return register


# -- the tests ------------------------------------------------------------------

def test_example_blocks_match_files():
    shown_files = set()
    for block in ALL_BLOCKS:
        if block.language != 'python':
            continue
        first_line = block.text.split('\n', 1)[0]
        marker = _EXAMPLE_MARKER_RE.match(first_line)
        if marker is None:
            ast.parse(block.text, filename=block.where)
            continue
        path = REPO / marker.group(1)
        assert path.is_file(), f'{block.where}: {marker.group(1)} does not exist'
        assert block.text == path.read_text(), (
            f'{block.where}: the block differs from {marker.group(1)}; copy the file again')
        shown_files.add(path)
    not_shown = sorted(str(path.relative_to(REPO)) for path in EXAMPLES.glob('*.py')
                       if path.name != '__init__.py' and path not in shown_files)
    assert not not_shown, f'example files that no page shows: {not_shown}'


def test_relative_links_resolve():
    link_re = re.compile(r'\]\(([^)#\s]+)(#[^)]*)?\)')
    for page in [*PAGES, REPO / 'README.md']:
        for match in link_re.finditer(page.read_text()):
            target = match.group(1)
            if '://' in target or target.startswith('mailto:'):
                continue
            assert (page.parent / target).exists(), (
                f'{page.relative_to(REPO)} links to {target}, which does not exist')


def test_check_markers_are_well_formed():
    for page in PAGES:
        lines = page.read_text().split('\n')
        for number, line in enumerate(lines, 1):
            if '<!-- check' not in line:
                continue
            where = f'{page.relative_to(REPO)}:{number}'
            assert _CHECK_RE.match(line), \
                f'{where}: invalid marker; write it as <!-- check: MODULE:ATTRIBUTE -->'
            following = lines[number] if number < len(lines) else ''
            assert following == '```console', f'{where}: a ```console fence must follow the marker'


def test_every_session_names_an_example():
    for target, blocks in SESSIONS.items():
        module = target.split(':')[0]
        path = REPO / (module.replace('.', '/') + '.py')
        assert path.is_file(), f'{blocks[0].where}: {module} is not a file'
        for block in blocks:
            assert block.language == 'console', f'{block.where}: check marker on a ' \
                                                 f'{block.language!r} block'


@pytest.mark.parametrize('target', sorted(SESSIONS))
def test_sessions(target):
    with Server(target) as server:
        server.wait_ready(READY_WORKERS.get(target) or expected_workers(server))
        runner = SessionRunner(server.port)
        for block in SESSIONS[target]:
            for step in parse_session(block):
                actual = normalise(runner.run(step))
                expected = normalise('\n'.join(step.expected))
                assert lines_match(expected, actual), (
                    f'{block.page.relative_to(REPO)}:{step.line}: $ {step.command}\n'
                    f'--- the page shows\n' + '\n'.join(expected) +
                    '\n--- the command printed\n' + '\n'.join(actual) +
                    '\n--- server output\n' + server.output()[-3000:])
        for check in EXTRA_CHECKS.get(target, []):
            check(server)


# -- output that sessions cannot replay --------------------------------------------

def shown_and_logged(server: Server, page: str, line: str) -> None:
    """Check that ``page`` shows the log ``line`` and the server printed one like it.

    Pids and durations differ from run to run, so in the server's output a
    number after ``pid `` and a decimal number of seconds may differ.
    """
    assert line in page_text(page), f'{page} does not show the log line {line!r}'
    pattern = re.escape(line)
    pattern = re.sub(r'pid\\ \d+', r'pid\\ \\d+', pattern)
    pattern = re.sub(r'\d+\\\.\d+s', r'[\\d.]+s', pattern)
    assert server.wait_log(pattern, timeout=5), (
        f'the server printed no line like {line!r}:\n' + server.output()[-3000:])


@extra_check('docs.examples.hello:make')
def check_hello_startup_lines(server):
    for line in ("HelloApp pool GreetWorker: 2 workers, routes ['/api/**']",
                 'HelloApp worker GreetWorker[0] pid 28998 ready (setup took 0.021s)'):
        shown_and_logged(server, 'first-app.md', line)


@extra_check('docs.examples.requests:make')
def check_request_error_is_logged(server):
    shown_and_logged(server, 'handlers.md',
                     'ERROR    FormsWorker[0] GET /api/forms/error failed: '
                     'database connection refused')
    shown_and_logged(server, 'handlers.md', 'RuntimeError: database connection refused')


@extra_check('docs.examples.pools:make')
def check_teardown_runs_at_shutdown(server):
    assert server.terminate() == 0
    shown_and_logged(server, 'pools.md', 'INFO     ReportWorker[0] served 2 reports')


@extra_check('docs.examples.streaming:make')
def check_disconnect_is_logged(server):
    shown_and_logged(server, 'streaming.md',
                     'INFO     StreamWorker[0] request 9: the client went away')


@extra_check('docs.examples.supervision:make')
def check_supervision_log_lines(server):
    for line in (
            'ERROR    SupervisionApp worker FragileWorker[0] pid 8166 died '
            '(exit code 1, 1 victims); restarting',
            'ERROR    SupervisionApp request 4 (GET /api/crash/0.5) lost its worker '
            'FragileWorker[0]: died',
            'ERROR    SupervisionApp worker FragileWorker[0] pid 8169 is stuck: '
            'no sign of life for 2.1s in request 6; killing it',
            'ERROR    SupervisionApp worker FragileWorker[0] pid 8169 stuck '
            '(signal SIGKILL, 0 victims); restarting',
            'WARNING  SupervisionApp pool FragileWorker is degraded '
            '(4 restarts within 60s); answering 503',
            'INFO     SupervisionApp pool FragileWorker recovered (after 2s); '
            'restarting its workers'):
        shown_and_logged(server, 'supervision.md', line)


@extra_check('docs.examples.logging_app:make')
def check_logging_output(server):
    for line in ('INFO     orders-0 loading order 7',
                 'WARNING  orders-0 order 1234 is 3 days late',
                 "INFO     gateway pool OrderWorker: 1 workers, routes ['/api/**']"):
        shown_and_logged(server, 'logging.md', line)
    access = (r'INFO     access 127\.0\.0\.1:\d+ "GET /api/orders/7" 200 [\d.]+ms '
              r'pool=OrderWorker worker=0')
    assert re.search(access, page_text('logging.md'))
    assert server.wait_log(access, timeout=5), server.output()
    assert 'DEBUG' not in server.output()


def shown_status_document() -> dict:
    """The sample status document that operations.md prints."""
    text = page_text('operations.md')
    start = text.index('$ curl -s http://localhost:8080/_status | python3 -m json.tool\n')
    body = text[text.index('\n', start) + 1:text.index('```', start)]
    return json.loads(body)


def key_tree(value):
    if isinstance(value, dict):
        return {key: key_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [key_tree(value[0])] if value else []
    return None


def fetch(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request('GET', path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@extra_check('docs.examples.operations:make')
def check_status_and_metrics(server):
    status, body = fetch(server.port, '/_status')
    assert status == 200
    assert key_tree(json.loads(body)) == key_tree(shown_status_document())

    status, metrics = fetch(server.port, '/_metrics')
    assert status == 200
    text = page_text('operations.md')
    listed = set(re.findall(r'^\| `(workgate_[a-z_]+)` \|', text, re.MULTILINE))
    exposed = set(re.findall(r'^# TYPE (workgate_[a-z_]+) ', metrics, re.MULTILINE))
    assert listed == exposed, f'listed only: {listed - exposed}, exposed only: {exposed - listed}'
    sample = text[text.index('$ curl -s http://localhost:8080/_metrics\n'):]
    sample = sample[sample.index('\n') + 1:sample.index('...\n')]
    for line in sample.splitlines():
        assert line in metrics.splitlines(), f'metrics output lacks {line!r}:\n{metrics}'


# -- examples that need a particular environment -----------------------------------

def test_tls_example(tmp_path):
    openssl = shutil.which('openssl')
    if openssl is None:
        pytest.skip('the openssl command is not installed; it makes the test certificate')
    text = page_text('operations.md')
    for excerpt in ('-keyout key.pem -out cert.pem -days 30 -subj /CN=localhost',
                  '--certfile cert.pem --keyfile key.pem',
                  "$ curl -s --cacert cert.pem -H 'X-Forwarded-For: 203.0.113.7' "
                  'https://localhost:8443/api/client\n{"remote_address":"203.0.113.7"}'):
        assert excerpt in text, f'operations.md no longer shows {excerpt!r}'
    subprocess.run(
        [openssl, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
         '-nodes', '-keyout', 'key.pem', '-out', 'cert.pem', '-days', '30',
         '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
        cwd=tmp_path, check=True, capture_output=True, timeout=30)

    with Server('docs.examples.operations:make', '--certfile', str(tmp_path / 'cert.pem'),
                '--keyfile', str(tmp_path / 'key.pem')) as server:
        context = ssl.create_default_context(cafile=str(tmp_path / 'cert.pem'))
        connection = http.client.HTTPSConnection('127.0.0.1', server.port, context=context,
                                                 timeout=REQUEST_TIMEOUT)
        try:
            connection.request('GET', '/api/client',
                               headers={'X-Forwarded-For': '203.0.113.7'})
            body = connection.getresponse().read().decode()
        finally:
            connection.close()

    assert body == '{"remote_address":"203.0.113.7"}'


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(('::1', 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(),
                    reason='this machine has no IPv6 loopback address')
def test_ipv6_example():
    excerpt = "$ curl -s 'http://[::1]:8080/api/client'\n{\"remote_address\":\"[::1]:52918\"}"
    assert excerpt in page_text('operations.md')
    with Server('docs.examples.operations:make', host='::') as server:
        connection = http.client.HTTPConnection('::1', server.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request('GET', '/api/client')
            body = json.loads(connection.getresponse().read())
        finally:
            connection.close()

    assert re.fullmatch(r'\[::1\]:\d+', body['remote_address']), body


# -- the reference against the code ----------------------------------------------

_DEFAULTS_SCRIPT = '''
import inspect, json
import workgate
from workgate import cli

def params(function):
    return {name: repr(p.default) for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}

print(json.dumps({
    'settings': {name: repr(value) for name, value in workgate.Settings.DEFAULTS.items()},
    'aliases': workgate.Settings.ALIASES,
    'ignored': sorted(workgate.Settings.IGNORED),
    'dispatcher': params(workgate.Dispatcher.__init__),
    'pool': params(workgate.WorkerPool.__init__),
    'levels': {str(level): name for level, name in workgate.LOG_LEVEL_NAMES.items()},
    'options': sorted(option for action in cli.build_parser()._subparsers._group_actions[0]
                      .choices['run']._actions for option in action.option_strings),
}))
'''


@pytest.fixture(scope='module')
def code_defaults() -> dict:
    env = {'PYTHONPATH': str(REPO / 'src'), 'PATH': '/usr/bin:/bin'}
    result = subprocess.run([sys.executable, '-c', _DEFAULTS_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def table_defaults(text: str, section: str) -> dict[str, str]:
    """Map each row name of the first table under ``section`` to its second cell."""
    start = text.index(section)
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith('#'):
            break
        match = re.match(r'^\| `([a-z_]+)` \| ([^|]*) \|', line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
        elif rows and not line.startswith('|'):
            break
    return rows


def rendered(value: str) -> str:
    """Write the repr of a default the way the reference writes it."""
    if value.startswith("'") or value == '()':
        return f'`{value}`'
    return value


@pytest.mark.parametrize('section,key', [
    ('### Dispatcher settings', 'settings'),
    ('## Dispatcher\n', 'dispatcher'),
    ('## WorkerPool', 'pool'),
])
def test_reference_defaults_match_code(code_defaults, section, key):
    rows = table_defaults(page_text('reference.md'), section)
    for name, value in code_defaults[key].items():
        assert name in rows, f'reference.md, {section.strip()}: no row for {name}'
        expected_cell = rendered(value)
        if name == 'log_level':
            expected_cell = f"`LOG_{code_defaults['levels'][value]}`"
        cell = rows[name]
        assert cell == expected_cell or cell.startswith(expected_cell + ' '), (
            f'reference.md, {section.strip()}: {name} shows {cell!r}, the code has {value}')


def test_reference_lists_aliases_and_options(code_defaults):
    text = ' '.join(page_text('reference.md').split())
    for alias, setting in code_defaults['aliases'].items():
        assert f'`{alias}` to `{setting}`' in text, f'reference.md lacks the alias {alias}'
    for name in code_defaults['ignored']:
        assert f'`{name}`' in text, f'reference.md lacks the ignored keyword {name}'
    for option in code_defaults['options']:
        assert f'`{option}' in text, f'reference.md lacks the option {option}'
        if option.startswith('--') and option not in ('--help',):
            assert f'`{option}' in page_text('operations.md'), \
                f'operations.md lacks the option {option}'


def test_reference_lists_environment_variables():
    names = set()
    for path in (REPO / 'src' / 'workgate').glob('*.py'):
        source = path.read_text()
        names.update(re.findall(r"environ(?:\.get\(|\[)'([A-Z_]+)'", source))
        names.update(re.findall(r"_ENV = '([A-Z_]+)'", source))
    assert names, 'found no environment variables in the source'
    text = page_text('reference.md')
    for name in sorted(names):
        assert f'`{name}`' in text, f'reference.md does not describe {name}'
