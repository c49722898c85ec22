"""A real browser reads a workgate event stream through EventSource.

Headless Chromium loads a page from the app's static mount. The page opens
an EventSource on ``/api/sse/{topic}`` and appends every event it receives
to a list in the DOM. The test publishes through the worker and reads the
DOM back over the Chrome DevTools Protocol.

The protocol runs over ``--remote-debugging-pipe``: Chromium reads commands
from file descriptor 3 and writes replies to descriptor 4, one JSON message
per NUL-terminated record. So the test needs the ``chromium`` binary (on
Debian, ``apt-get install chromium``) and no Python package beyond the
test dependencies. It is skipped when Chromium is not installed.
"""

import fcntl
import json
import os
import select
import shutil
import signal
import time
import uuid

import httpx
import pytest

from tests.harness import Server, read_events, wait_until

APP = 'tests.apps.stream_app:make'
COMMAND_TIMEOUT = 20.0
DOM_TIMEOUT = 10.0

CHROMIUM = next((path for path in (shutil.which('chromium'),
                                   shutil.which('chromium-browser'))
                 if path), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason='Chromium is not installed (on Debian: apt-get install chromium)')

CHROMIUM_FLAGS = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--remote-debugging-pipe',
]

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>workgate events</title></head>
<body>
<p id="state">connecting</p>
<ol id="log"></ol>
<script>
const topic = new URLSearchParams(location.search).get('topic');
const source = new EventSource('/api/sse/' + encodeURIComponent(topic));
const log = document.getElementById('log');
function add(kind, text) {
  const item = document.createElement('li');
  item.dataset.kind = kind;
  item.textContent = text;
  log.appendChild(item);
}
source.onopen = () => { document.getElementById('state').textContent = 'open'; };
source.onerror = () => { document.getElementById('state').textContent = 'error'; };
source.onmessage = (event) => add('message', event.data);
source.addEventListener('hello', (event) => add('hello', event.data));
source.addEventListener('note', (event) => add('note', event.data + ' #' + event.lastEventId));
</script>
</body>
</html>
"""

READ_LOG = ("JSON.stringify(Array.from(document.querySelectorAll('#log li'))"
            ".map(item => [item.dataset.kind, item.textContent]))")


def high_descriptor(fd):
    """Move ``fd`` to a number of 10 or more, so it cannot clash with 3 and 4."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium driven over its DevTools pipe."""

    def __init__(self, profile_dir, log_path):
        to_browser_read, to_browser_write = map(high_descriptor, os.pipe())
        from_browser_read, from_browser_write = map(high_descriptor, os.pipe())
        actions = [
            (os.POSIX_SPAWN_DUP2, to_browser_read, 3),
            (os.POSIX_SPAWN_DUP2, from_browser_write, 4),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        argv = [CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={profile_dir}', 'about:blank']
        # A process group of its own lets close() reach Chromium's helpers.
        self.pid = os.posix_spawn(CHROMIUM, argv, dict(os.environ), file_actions=actions,
                                  setpgroup=0)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self.commands = to_browser_write
        self.replies = from_browser_read
        self.received = b''
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session_id=None, timeout=COMMAND_TIMEOUT):
        """Run one DevTools command and return its result."""
        self.next_id += 1
        message = {'id': self.next_id, 'method': method, 'params': params or {}}
        if session_id is not None:
            message['sessionId'] = session_id
        os.write(self.commands, json.dumps(message).encode() + b'\0')

        deadline = time.monotonic() + timeout
        while True:
            reply = self.read_message(deadline)
            if reply.get('id') == self.next_id:
                if 'error' in reply:
                    raise AssertionError(f'{method} failed: {reply["error"]}')
                return reply['result']
            self.events.append(reply)

    def read_message(self, deadline):
        while b'\0' not in self.received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError('Chromium did not answer a DevTools command in time')
            readable, _, _ = select.select([self.replies], [], [], remaining)
            if readable:
                data = os.read(self.replies, 65536)
                if not data:
                    raise AssertionError('Chromium closed its DevTools pipe')
                self.received += data
        message, self.received = self.received.split(b'\0', 1)
        return json.loads(message)

    def open_page(self, url):
        """Open ``url`` in a new tab and return (target id, session id)."""
        target_id = self.send('Target.createTarget', {'url': 'about:blank'})['targetId']
        session_id = self.send('Target.attachToTarget',
                               {'targetId': target_id, 'flatten': True})['sessionId']
        self.send('Page.enable', session_id=session_id)
        navigation = self.send('Page.navigate', {'url': url}, session_id=session_id)
        assert 'errorText' not in navigation, navigation
        return target_id, session_id

    def evaluate(self, session_id, expression):
        result = self.send('Runtime.evaluate',
                           {'expression': expression, 'returnByValue': True},
                           session_id=session_id)
        assert 'exceptionDetails' not in result, result['exceptionDetails']
        return result['result'].get('value')

    def close(self):
        """Ask Chromium to exit, then kill what is left of its process group."""
        try:
            self.send('Browser.close', timeout=5)
        except (AssertionError, OSError):
            pass

        # WNOWAIT leaves the exited process unreaped, so its pid, which is
        # also the group id, cannot be reused before killpg() below.
        def exited():
            return os.waitid(os.P_PID, self.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

        wait_until(exited, 10)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.commands)
        os.close(self.replies)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('browser')
    static = root / 'static'
    static.mkdir()
    (static / 'events.html').write_text(PAGE)
    return root


@pytest.fixture(scope='module')
def server(folders):
    env = {'WG_EVENTS': str(folders / 'events.jsonl'), 'WG_STATIC': str(folders / 'static')}
    server = Server(APP, env=env).start()
    try:
        server.wait_ready(1)
        yield server
    finally:
        server.kill()


@pytest.fixture
def browser(folders):
    browser = Browser(folders / f'profile-{uuid.uuid4().hex[:8]}', folders / 'chromium.log')
    try:
        yield browser
    finally:
        browser.close()


def wait_dom(browser, session_id, predicate, timeout=DOM_TIMEOUT):
    """Poll the page's event list until ``predicate`` accepts it, and return the list."""
    found = []

    def check():
        found[:] = json.loads(browser.evaluate(session_id, READ_LOG))
        return predicate(found)

    wait_until(check, timeout, interval=0.05)
    return list(found)


def test_event_source_shows_published_events(server, browser, folders):
    events_path = folders / 'events.jsonl'
    topic = f'browser-{uuid.uuid4().hex[:8]}'
    target_id, session_id = browser.open_page(
        server.url(f'/static/events.html?topic={topic}'))

    page_log = wait_dom(browser, session_id, lambda items: len(items) >= 1)
    assert [kind for kind, _ in page_log] == ['hello'], page_log
    request_id = json.loads(page_log[0][1])['request_id']
    assert browser.evaluate(session_id, "document.getElementById('state').textContent") \
        == 'open'

    emit = server.url(f'/api/emit/{topic}')
    note = httpx.post(emit, json={'data': 'first line\nsecond line', 'event': 'note',
                                  'id': 'n-1'})
    message = httpx.post(emit, json={'data': {'greeting': 'hello from the test'}})
    assert note.json() == {'sent': 1}
    assert message.json() == {'sent': 1}

    page_log = wait_dom(browser, session_id, lambda items: len(items) >= 3)
    assert page_log[1] == ['note', 'first line\nsecond line #n-1']
    assert page_log[2][0] == 'message'
    assert json.loads(page_log[2][1]) == {'greeting': 'hello from the test'}

    # Closing the tab drops the connection, and the worker gets on_disconnect once.
    browser.send('Target.closeTarget', {'targetId': target_id})
    assert wait_until(lambda: any(
        event['event'] == 'removed' and event['request_id'] == request_id
        for event in read_events(events_path)), 10)
    removed = [event for event in read_events(events_path)
               if event['event'] == 'removed' and event['request_id'] == request_id]
    assert [event['reason'] for event in removed] == ['DISCONNECTED']
    assert wait_until(lambda: any(
        event['event'] == 'disconnect' and event['request_id'] == request_id
        for event in read_events(events_path)), 10)
