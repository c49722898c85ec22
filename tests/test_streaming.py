"""Deferred responses and streams, end to end, against tests/apps/stream_app.py.

The dispatcher runs as its own process. httpx reads whole streams, and a
small raw-socket client reads chunk by chunk where a test needs to control
how fast the client reads, to see the chunked framing, or to drop the
connection at a chosen moment. Hooks in the app write JSON lines to an
event file, and tests poll that file with a bound instead of sleeping.
"""

import json
import os
import re
import signal
import socket
import time
import uuid

import httpx
import pytest

from tests.apps.stream_app import SAMPLE_CHUNKS, SAMPLE_EVENTS, SAMPLE_NDJSON
from tests.harness import Server, read_events, wait_until

APP = 'tests.apps.stream_app:make'
POOL_TIMEOUT = 2.0
STREAM_BUFFER_LIMIT = 64 * 1024
EVENT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 5.0
PING_INTERVAL = 0.3
KEEPALIVE_TIMEOUT = 0.5


# -- helpers ---------------------------------------------------------------


def unique_topic(prefix):
    return f'{prefix}-{uuid.uuid4().hex[:8]}'


def wait_events(path, predicate, count=1, timeout=EVENT_TIMEOUT):
    """Poll the event file until ``count`` events match, and return the matches."""
    found = []

    def enough():
        found[:] = [event for event in read_events(path) if predicate(event)]
        return len(found) >= count

    wait_until(enough, timeout)
    return list(found)


def removed_events(path, request_id):
    return [event for event in read_events(path)
            if event['event'] == 'removed' and event['request_id'] == request_id]


def disconnect_events(path, request_id):
    return [event for event in read_events(path)
            if event['event'] == 'disconnect' and event['request_id'] == request_id]


def wait_removed(path, request_id, timeout=EVENT_TIMEOUT):
    """Wait for the on_pending_removed event of ``request_id`` and return it."""
    found = wait_events(path, lambda e: e['event'] == 'removed'
                        and e['request_id'] == request_id, timeout=timeout)
    assert found, f'on_pending_removed never fired for request {request_id}'
    return found[0]


def settle(http):
    """Make one request through the worker so frames already sent are handled.

    With one worker, its response comes after it handled every message the
    dispatcher sent it before, such as DISCONNECT.
    """
    response = http.get('/api/hello')
    assert response.status_code == 200


def tracebacks(server, start=0):
    return [line for line in server.lines[start:] if 'Traceback' in line]


class SseParser:
    """A text/event-stream parser for checking what a browser would see.

    Lines end with CRLF, LF or CR. One space after the field's colon is
    dropped, ``data`` lines are joined with newlines, and a blank line ends
    a block. ``feed`` returns one dict of fields per finished block and
    keeps comment lines in ``comments``.
    """

    def __init__(self):
        self.pending = ''
        self.fields = {}
        self.comments = []

    def feed(self, text):
        self.pending += text
        events = []
        while True:
            match = re.search(r'\r\n|\r|\n', self.pending)
            if match is None:
                return events
            # A CR at the very end may be the first half of a CRLF.
            if match.group() == '\r' and match.end() == len(self.pending):
                return events
            line = self.pending[:match.start()]
            self.pending = self.pending[match.end():]
            event = self.line(line)
            if event is not None:
                events.append(event)

    def line(self, line):
        if line == '':
            event, self.fields = self.fields, {}
            return event or None
        if line.startswith(':'):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(':')
        if colon and value.startswith(' '):
            value = value[1:]
        if name == 'data':
            self.fields['data'] = self.fields['data'] + '\n' + value \
                if 'data' in self.fields else value
        else:
            self.fields[name] = value
        return None

    @property
    def incomplete(self):
        return bool(self.pending or self.fields)


def expected_sse(event):
    """The fields a client must see for one SAMPLE_EVENTS entry."""
    fields = {}
    data = event.get('data')
    if isinstance(data, str):
        fields['data'] = data.replace('\r\n', '\n')
    elif data is not None:
        fields['data'] = data  # compared after json.loads
    if event.get('event') is not None:
        fields['event'] = event['event']
    if event.get('event_id') is not None:
        fields['id'] = str(event['event_id'])
    if event.get('retry') is not None:
        fields['retry'] = str(event['retry'])
    return fields


class RawConnection:
    """A blocking HTTP/1.x client over one socket, read piece by piece."""

    def __init__(self, port, receive_buffer=None, timeout=SOCKET_TIMEOUT):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(timeout)
        self.sock.connect(('127.0.0.1', port))
        self.buffer = b''

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_request(self, method, path, body=b'', headers=None, version='1.1'):
        lines = [f'{method} {path} HTTP/{version}', 'Host: 127.0.0.1']
        for name, value in (headers or {}).items():
            lines.append(f'{name}: {value}')
        if body or method in ('POST', 'PUT'):
            lines.append(f'Content-Length: {len(body)}')
        self.sock.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode() + body)

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError('connection closed by the server')
        self.buffer += data

    def read_line(self):
        while b'\r\n' not in self.buffer:
            self.fill()
        line, self.buffer = self.buffer.split(b'\r\n', 1)
        return line

    def read_exact(self, size):
        while len(self.buffer) < size:
            self.fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_head(self):
        """Return (status, version, headers with lower-case names)."""
        status_line = self.read_line().decode('latin-1')
        version, status, _ = status_line.split(' ', 2)
        headers = {}
        while True:
            line = self.read_line().decode('latin-1')
            if not line:
                return int(status), version, headers
            name, _, value = line.partition(':')
            headers[name.strip().lower()] = value.strip()

    def read_chunk(self):
        """Return one chunk's payload, or b'' for the last chunk after reading its trailers."""
        size_line = self.read_line()
        size = int(size_line.split(b';')[0], 16)
        if size == 0:
            while self.read_line():
                pass
            return b''
        data = self.read_exact(size)
        assert self.read_exact(2) == b'\r\n', 'chunk data not followed by CRLF'
        return data

    def read_chunked_body(self, max_chunks=10000):
        chunks = []
        for _ in range(max_chunks):
            chunk = self.read_chunk()
            if not chunk:
                return chunks
            chunks.append(chunk)
        raise AssertionError(f'no last chunk after {max_chunks} chunks')

    def read_body(self, headers):
        if headers.get('transfer-encoding', '').lower() == 'chunked':
            return b''.join(self.read_chunked_body())
        return self.read_exact(int(headers.get('content-length', '0')))

    def read_response(self):
        status, _, headers = self.read_head()
        return status, headers, self.read_body(headers)

    def read_until_close(self, limit=1 << 20):
        data = self.buffer
        self.buffer = b''
        while len(data) <= limit:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        raise AssertionError(f'more than {limit} bytes before the connection closed')

    def read_sse(self, parser, count=1, max_chunks=1000):
        """Read chunks until ``parser`` produced ``count`` events, and return them."""
        events = []
        for _ in range(max_chunks):
            chunk = self.read_chunk()
            assert chunk, 'stream ended before the expected events arrived'
            events.extend(parser.feed(chunk.decode()))
            if len(events) >= count:
                return events
        raise AssertionError(f'{count} events not received in {max_chunks} chunks')

    def wait_stream_closed(self, max_chunks=100000):
        """Read until the last chunk or EOF; return how the stream ended."""
        try:
            for _ in range(max_chunks):
                if not self.read_chunk():
                    return 'last-chunk'
        except (EOFError, ConnectionResetError):
            return 'closed'
        raise AssertionError(f'stream still open after {max_chunks} chunks')


def subscribe(server, topic, **options):
    """Open an event stream on ``topic`` and return (connection, parser, request id)."""
    connection = RawConnection(server.port, **options)
    connection.send_request('GET', f'/api/sse/{topic}')
    status, _, headers = connection.read_head()
    assert status == 200
    assert headers['content-type'].startswith('text/event-stream')
    assert headers['transfer-encoding'] == 'chunked'
    assert headers['x-topic'] == topic
    parser = SseParser()
    [hello] = connection.read_sse(parser)
    assert hello['event'] == 'hello'
    return connection, parser, json.loads(hello['data'])['request_id']


def start_wait(server, events_path, topic, query=''):
    """Send a deferred GET /api/wait/{topic} and return (connection, request id)."""
    connection = RawConnection(server.port)
    connection.send_request('GET', f'/api/wait/{topic}{query}')
    found = wait_events(events_path, lambda e: e['event'] == 'deferred'
                        and e['topic'] == topic)
    assert found, f'the worker never received the wait on {topic}'
    return connection, found[0]['request_id']


def read_status(pid, field):
    """Return a size field of /proc/PID/status in KiB."""
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise AssertionError(f'{field} missing from /proc/{pid}/status')


# -- fixtures --------------------------------------------------------------


def start_server(events_path, **env):
    settings = {
        'WG_EVENTS': str(events_path),
        'WG_TIMEOUT': str(POOL_TIMEOUT),
        'WG_STREAM_BUFFER_LIMIT': str(STREAM_BUFFER_LIMIT),
    }
    settings.update(env)
    server = Server(APP, env=settings).start()
    try:
        server.wait_ready(int(settings.get('WG_WORKERS', '1')))
    except AssertionError:
        server.kill()
        raise
    return server


@pytest.fixture(scope='module')
def events_path(tmp_path_factory):
    return tmp_path_factory.mktemp('streaming') / 'events.jsonl'


@pytest.fixture(scope='module')
def server(events_path):
    server = start_server(events_path)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope='module')
def http(server):
    with httpx.Client(base_url=server.url(''), timeout=30) as client:
        yield client


@pytest.fixture(scope='module')
def crash_events_path(tmp_path_factory):
    return tmp_path_factory.mktemp('crash') / 'events.jsonl'


@pytest.fixture(scope='module')
def crash_server(crash_events_path):
    server = start_server(crash_events_path)
    try:
        yield server
    finally:
        server.kill()


# -- deferred responses ----------------------------------------------------


def test_deferred_from_on_idle(http, events_path):
    response = http.get('/api/deferred/idle')

    assert response.status_code == 200
    body = response.json()
    assert body['from'] == 'on_idle'
    assert wait_removed(events_path, body['request_id'])['reason'] == 'COMPLETED'


def test_deferred_from_pipe_reader(http):
    response = http.get('/api/deferred/pipe')

    assert response.status_code == 200
    assert response.json()['from'] == 'pipe'


def test_deferred_from_timer_socketpair(http):
    started = time.monotonic()
    response = http.get('/api/deferred/timer/0.3')
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()['from'] == 'timer'
    assert elapsed >= 0.3


def test_deferred_from_other_request(server, http, events_path):
    topic = unique_topic('wait')
    connection, request_id = start_wait(server, events_path, topic)
    with connection:
        published = http.post(f'/api/publish/{topic}', json={'value': 42})
        assert published.status_code == 200
        assert published.json() == {'answered': 1}

        status, headers, body = connection.read_response()

    assert status == 200
    assert json.loads(body) == {'published': {'value': 42}, 'request_id': request_id}
    assert headers['x-published-by'].isdigit()
    assert wait_removed(events_path, request_id)['reason'] == 'COMPLETED'
    settle(http)
    assert len(removed_events(events_path, request_id)) == 1


def test_deferred_requests_do_not_block_worker(server, http, events_path):
    topic = unique_topic('many')
    connections = []
    try:
        for _ in range(3):
            connection = RawConnection(server.port)
            connections.append(connection)
            connection.send_request('GET', f'/api/wait/{topic}')
        waiting = wait_events(events_path, lambda e: e['event'] == 'deferred'
                              and e['topic'] == topic, count=3)
        assert len(waiting) == 3, 'one worker did not take three deferred requests'

        started = time.monotonic()
        hello = http.get('/api/hello')
        assert hello.status_code == 200
        assert time.monotonic() - started < 1.0

        published = http.post(f'/api/publish/{topic}', json='done')
        assert published.json() == {'answered': 3}
        answered = {json.loads(connection.read_response()[2])['request_id']
                    for connection in connections}
    finally:
        for connection in connections:
            connection.close()

    assert answered == {event['request_id'] for event in waiting}


# -- stream formats --------------------------------------------------------


def test_sse_framing(http, events_path):
    response = http.get('/api/sse-sample')

    assert response.status_code == 200
    assert response.headers['content-type'].startswith('text/event-stream')
    assert response.headers['cache-control'] == 'no-cache'
    assert response.cookies['stream'] == 'sample'
    text = response.text
    assert text.endswith('\n\n')
    assert '\r' not in text

    blocks = text[:-2].split('\n\n')
    assert len(blocks) == len(SAMPLE_EVENTS)
    assert blocks[0].split('\n') == ['data: line one', 'data: line two']
    assert sorted(blocks[3].split('\n')) == sorted(
        ['id: 7', 'event: update', 'retry: 1500', 'data: tick'])
    assert blocks[4].split('\n') == [
        'data:  leading space', 'data: after crlf', 'data: ', 'data: after blank']

    parser = SseParser()
    events = parser.feed(text)
    assert not parser.incomplete
    assert len(events) == len(SAMPLE_EVENTS)
    for sent, received in zip(SAMPLE_EVENTS, events, strict=True):
        expected = expected_sse(sent)
        if not isinstance(sent['data'], str):
            received = dict(received, data=json.loads(received['data']))
        assert received == expected

    request_id = int(response.headers['x-request-id'])
    assert wait_removed(events_path, request_id)['reason'] == 'STREAM_CLOSED'


def test_sse_line_break_in_field_rejected(server, events_path):
    """An event name with a line break would inject fields, so send_event() raises."""
    lines_before = len(server.lines)
    with RawConnection(server.port) as connection:
        connection.send_request('GET', '/api/sse-broken')
        status, _, headers = connection.read_head()
        first = connection.read_chunk()
        error = server.wait_log('must not contain a line break', start=lines_before)

    assert status == 200
    assert first == b'data: before the error\n\n'
    assert error is not None, 'the worker logged no error for the invalid event name'
    request_id = int(headers['x-request-id'])
    # The handler failed after starting the stream, so the dispatcher cuts it.
    assert wait_removed(events_path, request_id)['reason'] == 'STREAM_CLOSED'


def test_stream_ended_after_handler_error(server, events_path):
    with RawConnection(server.port, timeout=2.0) as connection:
        connection.send_request('GET', '/api/sse-broken')
        _, _, headers = connection.read_head()
        first = connection.read_chunk()
        try:
            ending = connection.wait_stream_closed()
        except TimeoutError:
            ending = 'still open'

    assert first == b'data: before the error\n\n'
    assert ending in ('last-chunk', 'closed')
    request_id = int(headers['x-request-id'])
    assert len(removed_events(events_path, request_id)) == 1


def test_send_chunk_raw_bytes(server):
    expected = b''.join(c.encode() if isinstance(c, str) else c for c in SAMPLE_CHUNKS)
    with RawConnection(server.port) as connection:
        connection.send_request('GET', '/api/chunks')
        status, _, headers = connection.read_head()
        chunks = connection.read_chunked_body()

    assert status == 200
    assert headers['content-type'] == 'application/octet-stream'
    assert b''.join(chunks) == expected
    assert all(chunks), 'an empty send_chunk() produced a chunk'


def test_ndjson_lines(http):
    response = http.get('/api/ndjson')

    assert response.status_code == 200
    assert response.headers['content-type'].startswith('application/x-ndjson')
    assert response.text.endswith('\n')
    lines = response.text.split('\n')[:-1]
    assert [json.loads(line) for line in lines] == SAMPLE_NDJSON


def test_stream_end_allows_connection_reuse(server, events_path):
    with RawConnection(server.port) as connection:
        connection.send_request('GET', '/api/sse-sample')
        status, version, headers = connection.read_head()
        chunks = connection.read_chunked_body()

        connection.send_request('GET', '/api/hello')
        second_status, _, second_body = connection.read_response()

    assert status == 200
    assert version == 'HTTP/1.1'
    assert headers['transfer-encoding'] == 'chunked'
    assert headers.get('connection', 'keep-alive').lower() != 'close'
    assert len(SseParser().feed(b''.join(chunks).decode())) == len(SAMPLE_EVENTS)
    assert second_status == 200
    assert json.loads(second_body)['hello'] == 'world'
    request_id = int(headers['x-request-id'])
    assert wait_removed(events_path, request_id)['reason'] == 'STREAM_CLOSED'


def test_stream_on_http10_ends_by_close(server):
    with RawConnection(server.port) as connection:
        connection.send_request('GET', '/api/ndjson', version='1.0')
        status, _, headers = connection.read_head()
        body = connection.read_until_close()

    assert status == 200
    assert 'transfer-encoding' not in headers
    lines = body.decode().split('\n')[:-1]
    assert [json.loads(line) for line in lines] == SAMPLE_NDJSON


def test_request_pipelined_behind_stream(server):
    with RawConnection(server.port) as connection:
        connection.send_request('GET', '/api/sse-sample')
        connection.send_request('GET', '/api/hello')
        status, _, headers = connection.read_head()
        chunks = connection.read_chunked_body()
        second_status, _, second_body = connection.read_response()

    assert status == 200
    assert headers['content-type'].startswith('text/event-stream')
    assert len(SseParser().feed(b''.join(chunks).decode())) == len(SAMPLE_EVENTS)
    assert second_status == 200
    assert json.loads(second_body)['hello'] == 'world'


def test_head_on_stream_sends_no_body(server):
    with RawConnection(server.port) as connection:
        connection.send_request('HEAD', '/api/ndjson')
        connection.send_request('GET', '/api/hello')
        status, _, headers = connection.read_head()
        next_line = connection.read_line()

    assert status == 200
    assert headers['content-type'].startswith('application/x-ndjson')
    assert next_line.startswith(b'HTTP/1.1 200'), \
        f'bytes after the HEAD response head: {next_line[:40]!r}'


# -- stream lifecycle ------------------------------------------------------


def test_stream_outlives_pool_timeout(server, events_path):
    count, interval = 12, 0.25
    ticks = []
    started = time.monotonic()
    with httpx.stream('GET', server.url(f'/api/ticker/{count}/{interval}'),
                      timeout=SOCKET_TIMEOUT) as response:
        assert response.status_code == 200
        parser = SseParser()
        for text in response.iter_text():
            ticks.extend(parser.feed(text))
        request_id = int(response.headers['x-request-id'])
    elapsed = time.monotonic() - started

    assert elapsed > POOL_TIMEOUT
    assert [json.loads(tick['data'])['remaining'] for tick in ticks] == list(
        range(count - 1, -1, -1))
    assert wait_removed(events_path, request_id)['reason'] == 'STREAM_CLOSED'
    assert len(removed_events(events_path, request_id)) == 1


def test_worker_ends_stream(server, http, events_path):
    topic = unique_topic('end')
    connection, parser, request_id = subscribe(server, topic)
    with connection:
        emitted = http.post(f'/api/emit/{topic}', json={
            'data': {'n': 1}, 'event': 'note', 'id': 'e-1', 'retry': 250})
        assert emitted.json() == {'sent': 1}
        [note] = connection.read_sse(parser)

        ended = http.post(f'/api/end/{topic}')
        assert ended.json() == {'ended': 1}
        ending = connection.wait_stream_closed()

        # The connection stays open for the next request after a clean end.
        connection.send_request('GET', '/api/hello')
        status, _, _ = connection.read_response()

    assert note == {'data': '{"n":1}', 'event': 'note', 'id': 'e-1', 'retry': '250'}
    assert ending == 'last-chunk'
    assert status == 200
    assert wait_removed(events_path, request_id)['reason'] == 'STREAM_CLOSED'
    settle(http)
    assert len(removed_events(events_path, request_id)) == 1
    assert disconnect_events(events_path, request_id) == []


def test_client_leaves_mid_stream(server, http, events_path):
    topic = unique_topic('leave')
    connection, _, request_id = subscribe(server, topic)
    connection.close()

    removed = wait_removed(events_path, request_id, timeout=2.0)
    assert removed['reason'] == 'DISCONNECTED'
    assert removed['streaming'] is True
    notified = wait_events(events_path, lambda e: e['event'] == 'disconnect'
                           and e['request_id'] == request_id, timeout=2.0)
    assert notified and notified[0]['known'] is True

    settle(http)
    assert len(removed_events(events_path, request_id)) == 1
    assert len(disconnect_events(events_path, request_id)) == 1
    assert http.post(f'/api/emit/{topic}', json={'data': 'x'}).json() == {'sent': 0}


def test_client_leaves_before_deferred_response(server, http, events_path):
    topic = unique_topic('gone')
    connection, request_id = start_wait(server, events_path, topic)
    connection.close()

    removed = wait_removed(events_path, request_id, timeout=2.0)
    assert removed['reason'] == 'DISCONNECTED'
    assert removed['streaming'] is False
    notified = wait_events(events_path, lambda e: e['event'] == 'disconnect'
                           and e['request_id'] == request_id, timeout=2.0)
    assert notified and notified[0]['known'] is True

    settle(http)
    assert len(removed_events(events_path, request_id)) == 1
    assert len(disconnect_events(events_path, request_id)) == 1
    assert http.post(f'/api/publish/{topic}', json=1).json() == {'answered': 0}


def test_late_response_after_disconnect_dropped(server, http, events_path):
    topic = unique_topic('late')
    lines_before = len(server.lines)
    connection, request_id = start_wait(server, events_path, topic, '?keep=1')
    connection.close()
    assert wait_removed(events_path, request_id)['reason'] == 'DISCONNECTED'
    assert wait_events(events_path, lambda e: e['event'] == 'disconnect'
                       and e['request_id'] == request_id)

    # The worker kept the request and responds to it anyway.
    assert http.post(f'/api/publish/{topic}', json=1).json() == {'answered': 1}
    settle(http)

    assert len(removed_events(events_path, request_id)) == 1
    assert tracebacks(server, lines_before) == []


def test_slow_reader_stream_closed(server, http, events_path):
    """A client that stops reading loses its stream, and dispatcher memory stays bounded."""
    topic = unique_topic('slow')
    total, size = 20 * 1024 * 1024, 64 * 1024
    dispatcher_pid = server.process.pid
    lines_before = len(server.lines)
    connection, _, request_id = subscribe(server, topic, receive_buffer=4096)

    # VmHWM is the peak resident size, so a short spike between two reads of
    # /proc still shows up.
    peak_before = read_status(dispatcher_pid, 'VmHWM')
    flood = http.post(f'/api/flood/{topic}/{total}/{size}')
    peak_growth = read_status(dispatcher_pid, 'VmHWM') - peak_before
    try:
        assert flood.status_code == 200
        assert flood.json() == {'sent': total, 'subscribers': 1}
        assert peak_growth < 8 * 1024, f'dispatcher peak RSS grew by {peak_growth} KiB'
        removed = wait_removed(events_path, request_id)
        try:
            received = len(connection.read_until_close(limit=total))
        except ConnectionResetError:
            received = None
    finally:
        connection.close()

    assert removed['reason'] == 'DISCONNECTED'
    assert received is None or received < total

    notified = wait_events(events_path, lambda e: e['event'] == 'disconnect'
                           and e['request_id'] == request_id)
    assert notified and notified[0]['known'] is True
    settle(http)
    assert len(removed_events(events_path, request_id)) == 1
    new_lines = server.lines[lines_before:]
    assert any('too slowly' in line for line in new_lines)
    assert tracebacks(server, lines_before) == []


@pytest.fixture(scope='module')
def ping_server(tmp_path_factory):
    events = tmp_path_factory.mktemp('ping') / 'events.jsonl'
    server = start_server(events, WG_PING_INTERVAL=str(PING_INTERVAL),
                          WG_KEEPALIVE_TIMEOUT=str(KEEPALIVE_TIMEOUT))
    try:
        yield server
    finally:
        server.kill()


def read_comments(connection, parser, count, timeout):
    """Read an idle event stream until ``count`` comment lines arrived."""
    deadline = time.monotonic() + timeout
    while len(parser.comments) < count and time.monotonic() < deadline:
        events = parser.feed(connection.read_chunk().decode())
        assert events == [], f'an idle stream received events: {events}'
    return len(parser.comments)


def test_idle_event_stream_gets_pings(ping_server):
    connection, parser, _ = subscribe(ping_server, unique_topic('ping'))
    with connection:
        started = time.monotonic()
        comments = read_comments(connection, parser, 2, timeout=20 * PING_INTERVAL)
        elapsed = time.monotonic() - started

    assert comments >= 2, f'{comments} comment lines in {elapsed:.1f} s'
    assert elapsed >= PING_INTERVAL
    assert not parser.incomplete


def test_stream_outlives_keepalive_timeout(ping_server):
    """The idle keep-alive timeout applies between requests, not to an open stream."""
    topic = unique_topic('long')
    connection, parser, _ = subscribe(ping_server, topic)
    with connection:
        started = time.monotonic()
        read_comments(connection, parser, 3, timeout=20 * PING_INTERVAL)
        elapsed = time.monotonic() - started
        emitted = httpx.post(ping_server.url(f'/api/emit/{topic}'), json={'data': 'late'},
                             timeout=SOCKET_TIMEOUT)
        [late] = connection.read_sse(parser)

    assert elapsed > KEEPALIVE_TIMEOUT
    assert emitted.json() == {'sent': 1}
    assert late == {'data': 'late'}


def test_idle_ndjson_stream_gets_no_pings(ping_server):
    """Only text/event-stream has comments, so a ping would corrupt an NDJSON stream."""
    topic = unique_topic('quiet')
    with RawConnection(ping_server.port) as quiet:
        quiet.send_request('GET', f'/api/ndjson/{topic}')
        status, _, headers = quiet.read_head()
        first = quiet.read_chunk()

        # Two pings on an event stream opened later prove that the NDJSON
        # stream was idle for more than the ping interval.
        connection, parser, _ = subscribe(ping_server, unique_topic('ping'))
        with connection:
            assert read_comments(connection, parser, 2, timeout=20 * PING_INTERVAL) >= 2

        ended = httpx.post(ping_server.url(f'/api/end/{topic}'), timeout=SOCKET_TIMEOUT)
        rest = b''.join(quiet.read_chunked_body())

    assert status == 200
    assert headers['content-type'].startswith('application/x-ndjson')
    assert json.loads(first)['request_id'] > 0
    assert ended.json() == {'ended': 1}
    assert rest == b''


def test_deferred_past_timeout_gets_504(server, http, events_path):
    topic = unique_topic('timeout')
    connection, request_id = start_wait(server, events_path, topic)
    with connection:
        status, _, body = connection.read_response()

    assert status == 504
    assert json.loads(body) == {'error': 'Request timeout'}
    assert wait_removed(events_path, request_id)['reason'] == 'TIMEOUT'
    lines_before = len(server.lines)
    assert http.post(f'/api/publish/{topic}', json=1).json() == {'answered': 1}
    settle(http)
    assert len(removed_events(events_path, request_id)) == 1
    assert tracebacks(server, lines_before) == []


def test_shutdown_closes_streams(tmp_path):
    events = tmp_path / 'events.jsonl'
    server = start_server(events)
    try:
        stream, _, stream_id = subscribe(server, unique_topic('shutdown'))
        waiter, waiter_id = start_wait(server, events, unique_topic('shutdown'))
        with stream, waiter:
            server.process.send_signal(signal.SIGTERM)
            ending = stream.wait_stream_closed()
            status, _, _ = waiter.read_response()
        exit_code = server.process.wait(SOCKET_TIMEOUT + 5)
    finally:
        server.kill()

    assert ending in ('last-chunk', 'closed')
    assert status == 503
    assert exit_code == 0
    for request_id in (stream_id, waiter_id):
        removed = removed_events(events, request_id)
        assert [event['reason'] for event in removed] == ['SHUTDOWN']


# -- worker deaths ---------------------------------------------------------


def test_worker_crash_closes_streams(crash_server, crash_events_path):
    path = crash_events_path
    ready_before = len(crash_server.ready_lines())
    first, _, first_id = subscribe(crash_server, unique_topic('crash'))
    second, _, second_id = subscribe(crash_server, unique_topic('crash'))
    waiter, waiter_id = start_wait(crash_server, path, unique_topic('crash'))
    with first, second, waiter:
        crash = httpx.get(crash_server.url('/api/crash'), timeout=SOCKET_TIMEOUT)
        first_end = first.wait_stream_closed()
        second_end = second.wait_stream_closed()
        waiter_status, _, _ = waiter.read_response()

    assert crash.status_code == 500
    assert first_end in ('last-chunk', 'closed')
    assert second_end in ('last-chunk', 'closed')
    assert waiter_status == 500
    [crashing] = wait_events(path, lambda e: e['event'] == 'crashing')
    victims = {first_id, second_id, waiter_id, crashing['request_id']}
    for request_id in victims:
        assert wait_removed(path, request_id)['reason'] == 'WORKER_DIED'
    [died] = wait_events(path, lambda e: e['event'] == 'worker_died')
    assert died['exitcode'] == 7
    assert set(died['victims']) == victims

    crash_server.wait_ready(ready_before + 1)
    assert httpx.get(crash_server.url('/api/hello')).status_code == 200
    for request_id in victims:
        assert len(removed_events(path, request_id)) == 1


def test_worker_sigkill_closes_stream(crash_server, crash_events_path):
    path = crash_events_path
    ready_before = len(crash_server.ready_lines())
    worker_pid = httpx.get(crash_server.url('/api/pid')).json()['pid']
    assert worker_pid in crash_server.worker_pids
    connection, _, request_id = subscribe(crash_server, unique_topic('kill'))
    with connection:
        os.kill(worker_pid, signal.SIGKILL)
        ending = connection.wait_stream_closed()

    assert ending in ('last-chunk', 'closed')
    assert wait_removed(path, request_id)['reason'] == 'WORKER_DIED'
    died = wait_events(path, lambda e: e['event'] == 'worker_died'
                       and request_id in e['victims'])
    assert died and died[0]['exitcode'] == -signal.SIGKILL

    crash_server.wait_ready(ready_before + 1)
    assert httpx.get(crash_server.url('/api/hello')).status_code == 200
    assert len(removed_events(path, request_id)) == 1


def test_worker_death_marks_stream_incomplete(crash_server):
    """A stream its worker never ended must not end like a complete response.

    HTTP/1.1 clients take the zero-size last chunk as the end of a complete
    body, so an NDJSON download cut short by a crash would look whole.
    Closing the connection without the last chunk lets them see the loss.
    """
    ready_before = len(crash_server.ready_lines())
    try:
        with RawConnection(crash_server.port) as connection:
            connection.send_request('GET', f'/api/ndjson/{unique_topic("cut")}')
            status, _, _ = connection.read_head()
            first = connection.read_chunk()
            crash = httpx.get(crash_server.url('/api/crash'), timeout=SOCKET_TIMEOUT)
            ending = connection.wait_stream_closed()
    finally:
        crash_server.wait_ready(ready_before + 1)

    assert status == 200
    assert json.loads(first)['request_id'] > 0
    assert crash.status_code == 500
    assert ending == 'closed'
