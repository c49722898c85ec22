"""The HTTP front over real sockets, against a real dispatcher and real workers.

Requests are written as raw bytes and responses read by the small HTTP/1.x
reader below, so each test checks exactly what a client receives: the
status line, the headers, the framing of the body, and whether the
connection closes.

The application is ``tests/apps/front_app.py``. It records the path of
every request the dispatcher queues to a worker pool and returns that list
from ``GET /sync/accepted``. Comparing the list before and after a request
shows whether that request reached a worker.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import Server, wait_until

APP = 'tests.apps.front_app:make'

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.5
MAX_CONTENT_LENGTH = 64 * 1024
MAX_HEADERS = 20
MAX_HEADER_SIZE = 4096
MAX_URL_LENGTH = 2048

# The dispatcher checks connection deadlines every 0.5 s, so a timeout
# fires up to 0.5 s after it is due. The rest is margin for a busy CI
# machine.
DEADLINE_SLACK = 2.0
READ_TIMEOUT = 10.0
# A connection the server means to close right after a response must close
# within this many seconds. It is shorter than KEEPALIVE_TIMEOUT, so an
# idle keep-alive close cannot pass for it.
PROMPT_CLOSE = 1.0
assert PROMPT_CLOSE < KEEPALIVE_TIMEOUT

# Statuses with which the front rejects a request before routing it. Each
# must be followed by closing the connection.
REJECTION_STATUSES = frozenset({400, 408, 413, 414, 417, 431, 505})


# -- a raw HTTP/1.x client ------------------------------------------------

@dataclass
class RawResponse:
    """One response as read from the wire, with lower-cased header names."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b''
    raw_head: bytes = b''

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key == name.lower()]
        return ', '.join(values) if values else None

    def header_count(self, name: str) -> int:
        return sum(1 for key, _ in self.headers if key == name.lower())

    def json(self):
        return json.loads(self.body)


class RawConnection:
    """A client socket that sends raw bytes and reads responses one at a time.

    A connection reset by the server counts as end of stream, because the
    server may close with request bytes still unread, and the kernel then
    sends RST instead of FIN.
    """

    def __init__(self, port: int, host: str = '127.0.0.1', timeout: float = READ_TIMEOUT,
                 ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 source: str | None = None):
        source_address = (source, 0) if source else None
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=source_address)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> bool:
        """Send ``data``, or return False when the server already closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(256 * 1024)
        except (ConnectionResetError, ssl.SSLEOFError):
            chunk = b''
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b'\r\n')
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 2]
                return line
            if not self._fill():
                raise EOFError(f'connection closed inside a line: {bytes(self.buffer)!r}')

    def _read_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise EOFError(f'connection closed after {len(self.buffer)} of {size} bytes')
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_to_eof(self) -> bytes:
        while self._fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_line = self._read_line()
            size = int(size_line.split(b';')[0], 16)
            if size == 0:
                break
            parts.append(self._read_exact(size))
            if self._read_line() != b'':
                raise AssertionError('chunk data not followed by CRLF')
        while self._read_line() != b'':
            pass  # trailer fields
        return b''.join(parts)

    def read_response(self, method: str = 'GET') -> RawResponse | None:
        """Read one response, or return None if the connection closed before one began.

        Raises TimeoutError when the server neither responds nor closes in
        time, and EOFError when it closes inside a response.
        """
        if not self.buffer and not self._fill():
            return None
        status_line = self._read_line()
        version, status, reason = (status_line.decode('latin-1').split(' ', 2) + [''])[:3]
        assert version.startswith('HTTP/1.'), f'invalid status line {status_line!r}'
        head = [status_line]
        headers = []
        while True:
            line = self._read_line()
            if not line:
                break
            head.append(line)
            name, colon, value = line.decode('latin-1').partition(':')
            assert colon and name == name.strip(), f'invalid header line {line!r}'
            headers.append((name.lower(), value.strip()))
        response = RawResponse(version, int(status), reason, headers,
                               raw_head=b'\r\n'.join(head) + b'\r\n\r\n')

        code = response.status
        if method == 'HEAD' or code < 200 or code in (204, 304):
            return response
        encoding = response.header('transfer-encoding')
        length = response.header('content-length')
        if encoding is not None:
            assert encoding.lower() == 'chunked', f'unexpected Transfer-Encoding {encoding!r}'
            assert length is None, 'response has both Content-Length and Transfer-Encoding'
            response.body = self._read_chunked()
        elif length is not None:
            response.body = self._read_exact(int(length))
        else:
            response.body = self.read_to_eof()
        return response

    def read_final(self, method: str = 'GET') -> tuple[list[RawResponse], RawResponse | None]:
        """Return the 1xx responses and the final response, which is None after a close."""
        interim = []
        while True:
            response = self.read_response(method)
            if response is None or response.status >= 200:
                return interim, response
            interim.append(response)

    def closed_within(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for end of stream with no further bytes.

        Returns False when bytes arrive first (they stay buffered) or when
        the connection is still open after ``timeout``.
        """
        if self.buffer:
            return False
        if self.eof:
            return True
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(previous)


def request_bytes(method: str, target: str, headers: dict | list | None = None,
                  body: bytes = b'', version: str = '1.1') -> bytes:
    """Build a well-formed request, adding Content-Length for a non-empty body."""
    lines = [f'{method} {target} HTTP/{version}', 'Host: test']
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if body and not any(name.lower() in ('content-length', 'transfer-encoding')
                        for name, _ in items):
        items.append(('Content-Length', str(len(body))))
    lines += [f'{name}: {value}' for name, value in items]
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + body


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [b'%x\r\n%s\r\n' % (len(body[i:i + size]), body[i:i + size])
              for i in range(0, len(body), size)]
    return b''.join(pieces) + b'0\r\n\r\n'


def fetch(port: int, data: bytes, method: str = 'GET', host: str = '127.0.0.1',
          **options) -> RawResponse | None:
    """Send one request on a new connection and return its final response."""
    with RawConnection(port, host, **options) as conn:
        conn.send(data)
        return conn.read_final(method)[1]


def get(port: int, target: str, headers: dict | None = None, **options) -> RawResponse:
    response = fetch(port, request_bytes('GET', target, headers), **options)
    assert response is not None, f'GET {target}: connection closed without a response'
    return response


def accepted_paths(port: int, peer: str | None = None) -> list[str]:
    """Return the paths of the requests the dispatcher has queued to a pool so far.

    With ``peer`` (``host:port``), only those that came from that client address.
    """
    target = '/sync/accepted' if peer is None else f'/sync/accepted?peer={peer}'
    response = get(port, target)
    assert response.status == 200, response
    return response.json()['paths']


def assert_json_error(response: RawResponse) -> None:
    assert response.header('content-type') == 'application/json', response.raw_head
    document = response.json()
    assert set(document) == {'error'}, document
    assert isinstance(document['error'], str)


# -- servers and files ----------------------------------------------------

LIMITS_ENV = {
    'WG_HEADER_TIMEOUT': str(HEADER_TIMEOUT),
    'WG_BODY_TIMEOUT': str(BODY_TIMEOUT),
    'WG_KEEPALIVE_TIMEOUT': str(KEEPALIVE_TIMEOUT),
    'WG_MAX_CONTENT_LENGTH': str(MAX_CONTENT_LENGTH),
    'WG_MAX_HEADERS': str(MAX_HEADERS),
    'WG_MAX_HEADER_SIZE': str(MAX_HEADER_SIZE),
    'WG_MAX_URL_LENGTH': str(MAX_URL_LENGTH),
}

BIG_FILE_SIZE = 5 * 1024 * 1024
SECRET = b'secret outside the static root'


@pytest.fixture(scope='module')
def static_root(tmp_path_factory) -> Path:
    """A static root with a few files, next to a secret file it must never serve."""
    base = tmp_path_factory.mktemp('front')
    (base / 'secret.txt').write_bytes(SECRET)
    root = base / 'public'
    root.mkdir()
    (root / 'index.html').write_bytes(b'<!doctype html><title>home</title>')
    (root / 'style.css').write_bytes(b'body { color: #123456; }\n')
    (root / 'data.json').write_bytes(b'{"static": true}')
    (root / 'digits.txt').write_bytes(b'0123456789' * 10)
    (root / 'big.bin').write_bytes(os.urandom(BIG_FILE_SIZE))
    (root / 'sub').mkdir()
    (root / 'sub' / 'index.html').write_bytes(b'<p>sub</p>')
    (root / 'link-out').symlink_to(base / 'secret.txt')
    (root / 'dir-out').symlink_to(base)
    return root


@pytest.fixture(scope='module')
def server(static_root):
    env = dict(LIMITS_ENV, WG_STATIC=str(static_root))
    with Server(APP, env=env) as running:
        running.wait_ready(2)
        yield running


@pytest.fixture
def port(server) -> int:
    return server.port


# -- valid requests -------------------------------------------------------

def test_get_reaches_worker(port):
    response = get(port, '/api/echo')

    assert response.status == 200
    assert response.header('x-handled-by') == 'worker'
    assert response.header('content-type') == 'application/json'
    echoed = response.json()
    assert echoed['method'] == 'GET'
    assert echoed['path'] == '/api/echo'
    assert echoed['body_size'] == 0


def test_post_content_length_body(port):
    body = b'{"name": "value", "n": 1}'
    response = fetch(port, request_bytes('POST', '/api/echo',
                                         {'Content-Type': 'application/json'}, body))

    assert response.status == 200
    echoed = response.json()
    assert echoed['method'] == 'POST'
    assert echoed['body_size'] == len(body)
    assert echoed['body_sha256'] == hashlib.sha256(body).hexdigest()


def test_post_chunked_body(port):
    body = bytes(range(256)) * 40
    data = request_bytes('POST', '/api/echo', {'Transfer-Encoding': 'chunked'}) + chunked(body, 999)

    response = fetch(port, data)

    assert response.status == 200
    echoed = response.json()
    assert echoed['body_size'] == len(body)
    assert echoed['body_sha256'] == hashlib.sha256(body).hexdigest()
    assert 'transfer-encoding' in echoed['headers']


def test_chunked_extensions_and_trailers_accepted(port):
    data = (request_bytes('POST', '/api/echo', {'Transfer-Encoding': 'chunked'})
            + b'5;name=value\r\nhello\r\n6;quoted="a b"\r\n world\r\n'
            + b'0\r\nX-Checksum: 1234\r\n\r\n')

    response = fetch(port, data)

    assert response.status == 200
    echoed = response.json()
    assert echoed['body_sha256'] == hashlib.sha256(b'hello world').hexdigest()


def test_chunked_trailers_not_merged_into_headers(port):
    data = (request_bytes('POST', '/api/echo', {'Transfer-Encoding': 'chunked'})
            + b'5\r\nhello\r\n0\r\nX-Forwarded-For: 203.0.113.9\r\nX-Api-Key: good\r\n\r\n')

    response = fetch(port, data)

    assert response.status == 200
    headers = response.json()['headers']
    assert 'x-forwarded-for' not in headers
    assert 'x-api-key' not in headers


def test_http10_without_keepalive_closes(port):
    with RawConnection(port) as conn:
        conn.send(b'GET /api/user/5 HTTP/1.0\r\n\r\n')
        response = conn.read_response()

        assert response.status == 200
        assert response.json() == {'id': 5}
        assert conn.closed_within(PROMPT_CLOSE)


def test_http10_keepalive_reuses_connection(port):
    with RawConnection(port) as conn:
        for user_id in (1, 2, 3):
            conn.send(b'GET /api/user/%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n' % user_id)
            response = conn.read_response()

            assert response.status == 200
            assert response.json() == {'id': user_id}
            assert response.header('connection').lower() == 'keep-alive'


def test_http10_transfer_encoding_closes_after(port):
    # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has
    # faulty framing, so the server must close the connection after it.
    data = (b'POST /api/echo HTTP/1.0\r\nConnection: keep-alive\r\n'
            b'Transfer-Encoding: chunked\r\n\r\n' + chunked(b'hello')
            + b'GET /api/user/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
    with RawConnection(port) as conn:
        conn.send(data)
        response = conn.read_response()

        assert response is not None and response.status in (200, 400)
        assert response.header('connection') == 'close'
        assert conn.closed_within(PROMPT_CLOSE)


def test_keepalive_reuses_connection(port):
    with RawConnection(port) as conn:
        addresses = set()
        for user_id in range(1, 6):
            conn.send(request_bytes('GET', f'/api/user/{user_id}'))
            response = conn.read_response()
            assert response.status == 200
            assert response.json() == {'id': user_id}
            assert response.header('connection') is None
            conn.send(request_bytes('GET', '/api/echo'))
            addresses.add(conn.read_response().json()['remote_address'])

        assert addresses == {f'127.0.0.1:{conn.local_port()}'}


def test_pipelined_requests_answered_in_order(port):
    requests = [
        request_bytes('GET', '/api/user/1'),
        request_bytes('GET', '/sync/client?n=2'),
        request_bytes('POST', '/api/echo', body=b'third'),
        request_bytes('GET', '/no/such/route'),
        request_bytes('GET', '/api/name/fifth'),
        request_bytes('GET', '/static/data.json'),
        request_bytes('HEAD', '/api/user/7'),
        request_bytes('GET', '/api/user/8'),
    ]
    with RawConnection(port) as conn:
        conn.send(b''.join(requests))
        responses = [conn.read_response() for _ in range(6)]
        head = conn.read_response('HEAD')
        last = conn.read_response()

    assert [r.status for r in responses] == [200, 200, 200, 404, 200, 200]
    assert responses[0].json() == {'id': 1}
    assert responses[1].json()['query'] == {'n': '2'}
    assert responses[2].json()['body_sha256'] == hashlib.sha256(b'third').hexdigest()
    assert responses[4].json() == {'name': 'fifth'}
    assert responses[5].json() == {'static': True}
    assert head.status == 200
    assert head.body == b''
    assert last.json() == {'id': 8}


def test_many_pipelined_requests_answered_in_order(port):
    count = 50
    data = b''.join(request_bytes('GET', f'/api/user/{i}') for i in range(count))
    with RawConnection(port) as conn:
        conn.send(data)
        ids = [conn.read_response().json()['id'] for _ in range(count)]

    assert ids == list(range(count))


def test_expect_continue_then_final_response(port):
    body = b'sent after 100 Continue'
    headers = {'Expect': '100-continue', 'Content-Length': str(len(body))}
    with RawConnection(port, timeout=BODY_TIMEOUT / 2) as conn:
        conn.send(request_bytes('POST', '/api/echo', headers))
        interim = conn.read_response()

        assert interim.status == 100
        conn.send(body)
        conn.sock.settimeout(READ_TIMEOUT)
        final = conn.read_response()

    assert final.status == 200
    assert final.json()['body_sha256'] == hashlib.sha256(body).hexdigest()


def test_expect_continue_behind_pipelined_request(port):
    body = b'sent after the first response and 100 Continue'
    headers = {'Expect': '100-continue', 'Content-Length': str(len(body))}
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/api/user/1') + request_bytes('POST', '/api/echo', headers))
        first = conn.read_response()
        interim = conn.read_response()

        assert first.json() == {'id': 1}
        assert interim.status == 100
        conn.send(body)
        final = conn.read_response()

    assert final.status == 200
    assert final.json()['body_sha256'] == hashlib.sha256(body).hexdigest()


def test_expect_continue_ignored_on_http10(port):
    data = (b'POST /api/echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n'
            b'hello')
    with RawConnection(port) as conn:
        conn.send(data)
        response = conn.read_response()

    assert response.status == 200
    assert response.json()['body_size'] == 5


def test_expect_continue_with_body_sent_at_once(port):
    body = b'client did not wait'
    headers = {'Expect': '100-continue', 'Content-Length': str(len(body))}
    with RawConnection(port) as conn:
        conn.send(request_bytes('POST', '/api/echo', headers, body))
        interim, final = conn.read_final()

    assert [r.status for r in interim] in ([], [100])
    assert final.status == 200
    assert final.json()['body_sha256'] == hashlib.sha256(body).hexdigest()


def test_expect_continue_over_limit_gets_413(port):
    headers = {'Expect': '100-continue', 'Content-Length': str(MAX_CONTENT_LENGTH + 1)}
    with RawConnection(port) as conn:
        conn.send(request_bytes('POST', '/api/echo', headers))
        response = conn.read_response()

        assert response.status == 413
        assert_json_error(response)
        assert conn.closed_within(PROMPT_CLOSE)


def test_head_has_headers_and_no_body(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('HEAD', '/api/user/3') + request_bytes('HEAD', '/missing')
                  + request_bytes('GET', '/api/user/3'))
        head = conn.read_response('HEAD')
        missing = conn.read_response('HEAD')
        after = conn.read_response()

    assert head.status == 200
    assert head.header('content-type') == 'application/json'
    assert head.header('content-length') == str(len(after.body))
    assert missing.status == 404
    assert after.json() == {'id': 3}


def test_connection_close_honoured(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/api/user/9', {'Connection': 'close'}))
        response = conn.read_response()

        assert response.status == 200
        assert response.header('connection') == 'close'
        assert conn.closed_within(PROMPT_CLOSE)


def test_requests_after_connection_close_ignored(port):
    before = accepted_paths(port)
    data = request_bytes('GET', '/api/user/1', {'Connection': 'close'}) + SMUGGLED
    with RawConnection(port) as conn:
        conn.send(data)
        response = conn.read_response()

        assert response.json() == {'id': 1}
        assert conn.closed_within(PROMPT_CLOSE)

    assert accepted_paths(port) == before + ['/api/user/1']


def test_slow_worker_outlives_connection_timeouts(port):
    seconds = max(HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE_TIMEOUT) + 0.5
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', f'/api/sleep/{seconds}'))
        response = conn.read_response()

    assert response is not None and response.status == 200
    assert response.json() == {'slept': seconds}


def test_pipelined_request_behind_slow_worker(port):
    seconds = max(HEADER_TIMEOUT, BODY_TIMEOUT) + DEADLINE_SLACK / 2
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', f'/api/sleep/{seconds}')
                  + request_bytes('GET', '/api/user/2'))
        first = conn.read_response()
        second = conn.read_response()

    assert first is not None and first.json() == {'slept': seconds}
    assert second is not None and second.json() == {'id': 2}


def test_body_at_limit_accepted(port):
    body = b'x' * MAX_CONTENT_LENGTH

    by_length = fetch(port, request_bytes('POST', '/api/echo', body=body))
    by_chunks = fetch(port, request_bytes('POST', '/api/echo', {'Transfer-Encoding': 'chunked'})
                      + chunked(body, 4096))

    assert by_length.status == 200
    assert by_length.json()['body_size'] == MAX_CONTENT_LENGTH
    assert by_chunks.status == 200
    assert by_chunks.json()['body_size'] == MAX_CONTENT_LENGTH


def test_target_at_limit_accepted(port):
    prefix = '/api/echo?q='
    target = prefix + 'a' * (MAX_URL_LENGTH - len(prefix))

    response = get(port, target)

    assert response.status == 200
    assert response.json()['query'] == {'q': 'a' * (MAX_URL_LENGTH - len(prefix))}


def test_header_count_at_limit_accepted(port):
    # Host is one of the MAX_HEADERS fields.
    headers = {f'X-H{i}': str(i) for i in range(MAX_HEADERS - 1)}

    response = get(port, '/api/echo', headers)

    assert response.status == 200
    assert len(response.json()['headers']) == MAX_HEADERS


def test_second_request_slow_headers_get_408(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/api/user/1') + b'GET /api/user/2 HTTP/1.1\r\n')
        first = conn.read_response()
        second = conn.read_response()

        assert first.json() == {'id': 1}
        assert second.status == 408
        assert conn.closed_within(PROMPT_CLOSE)


def test_date_header_present(port):
    for target in ('/api/user/1', '/sync/client', '/static/style.css', '/missing'):
        response = get(port, target)

        assert response.header_count('date') == 1, target
        sent = email.utils.parsedate_to_datetime(response.header('date'))
        assert abs(sent.timestamp() - time.time()) < 60, target


# -- framing attacks and parser errors ------------------------------------

SMUGGLED = b'GET /api/smuggled HTTP/1.1\r\nHost: test\r\n\r\n'
POST = b'POST /api/echo HTTP/1.1\r\nHost: test\r\n'
GET = b'GET /api/echo HTTP/1.1\r\nHost: test\r\n'
CHUNKED = POST + b'Transfer-Encoding: chunked\r\n\r\n'

REJECTED_REQUESTS = [
    ('content-length-and-transfer-encoding',
     POST + b'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n' + SMUGGLED, 400),
    ('transfer-encoding-and-content-length',
     POST + b'Transfer-Encoding: chunked\r\nContent-Length: 44\r\n\r\n0\r\n\r\n' + SMUGGLED, 400),
    ('two-different-content-lengths',
     POST + b'Content-Length: 0\r\nContent-Length: 42\r\n\r\n' + SMUGGLED, 400),
    ('content-length-list', POST + b'Content-Length: 5, 6\r\n\r\nhello!', 400),
    ('content-length-plus-sign', POST + b'Content-Length: +5\r\n\r\nhello', 400),
    ('content-length-negative', POST + b'Content-Length: -1\r\n\r\n', 400),
    ('content-length-hex', POST + b'Content-Length: 0x5\r\n\r\nhello', 400),
    ('content-length-trailing-letter', POST + b'Content-Length: 5a\r\n\r\nhello', 400),
    ('content-length-empty', POST + b'Content-Length: \r\n\r\n', 400),
    ('content-length-overflow',
     POST + b'Content-Length: 99999999999999999999999\r\n\r\n', 400),
    ('content-length-space-before-colon',
     POST + b'Content-Length : 42\r\n\r\n' + SMUGGLED, 400),
    ('chunk-size-not-hex', CHUNKED + b'zz\r\nhello\r\n0\r\n\r\n', 400),
    ('chunk-size-negative', CHUNKED + b'-5\r\nhello\r\n0\r\n\r\n', 400),
    ('chunk-size-0x-prefix', CHUNKED + b'0x5\r\nhello\r\n0\r\n\r\n', 400),
    ('chunk-size-overflow', CHUNKED + b'f' * 17 + b'\r\nhello\r\n0\r\n\r\n', 400),
    ('chunk-size-trailing-space', CHUNKED + b'5 \r\nhello\r\n0\r\n\r\n', 400),
    ('chunk-size-bare-lf', CHUNKED + b'5\nhello\r\n0\r\n\r\n', 400),
    ('chunk-data-longer-than-size', CHUNKED + b'5\r\nhello world\r\n0\r\n\r\n', 400),
    ('chunk-extension-with-space', CHUNKED + b'5;a b\r\nhello\r\n0\r\n\r\n', 400),
    ('chunk-extension-control-byte', CHUNKED + b'5;\x01\r\nhello\r\n0\r\n\r\n', 400),
    ('chunk-extension-bare-lf', CHUNKED + b'5;a\nhello\r\n0\r\n\r\n', 400),
    ('chunk-extension-open-quote', CHUNKED + b'5;a="x\r\nhello\r\n0\r\n\r\n', 400),
    ('trailer-content-length', CHUNKED + b'5\r\nhello\r\n0\r\nContent-Length: 4\r\n\r\n', 400),
    ('obsolete-line-folding', GET + b'X-Folded: one\r\n  two\r\n\r\n', 400),
    ('bare-lf-between-headers', GET + b'X-A: 1\nX-B: 2\r\n\r\n', 400),
    ('bare-lf-request-line', b'GET /api/echo HTTP/1.1\nHost: test\n\n', 400),
    ('bare-cr-in-value', GET + b'X-A: a\rb\r\n\r\n', 400),
    ('space-before-colon', GET + b'X-A : 1\r\n\r\n', 400),
    ('nul-in-value', GET + b'X-A: a\x00b\r\n\r\n', 400),
    ('del-in-value', GET + b'X-A: a\x7fb\r\n\r\n', 400),
    ('nbsp-in-name', GET + b'X\xa0A: 1\r\n\r\n', 400),
    ('space-in-name', GET + b'X A: 1\r\n\r\n', 400),
    ('empty-name', GET + b': 1\r\n\r\n', 400),
    ('header-without-colon', GET + b'X-A 1\r\n\r\n', 400),
    ('transfer-encoding-chunked-then-gzip',
     POST + b'Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n' + SMUGGLED, 400),
    ('transfer-encoding-gzip-only', POST + b'Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n', 400),
    ('transfer-encoding-xchunked', POST + b'Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n', 400),
    ('transfer-encoding-twice',
     POST + b'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400),
    ('duplicate-host', b'GET /api/echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400),
    ('invalid-method', b'G(T /api/echo HTTP/1.1\r\nHost: test\r\n\r\n', 400),
    ('space-in-target', b'GET /api/echo x HTTP/1.1\r\nHost: test\r\n\r\n', 400),
    ('control-byte-in-target', b'GET /api/\x7f HTTP/1.1\r\nHost: test\r\n\r\n', 400),
    ('encoded-nul-in-target', b'GET /api/echo%00 HTTP/1.1\r\nHost: test\r\n\r\n', 400),
    ('unknown-protocol', b'GET /api/echo HTTX/1.1\r\nHost: test\r\n\r\n', 400),
    ('trailing-space-after-version', b'GET /api/echo HTTP/1.1 \r\nHost: test\r\n\r\n', 400),
    ('http-2.0', b'GET /api/echo HTTP/2.0\r\nHost: test\r\n\r\n', 505),
    ('http-3.0', b'GET /api/echo HTTP/3.0\r\nHost: test\r\n\r\n', 505),
    ('http-0.9', b'GET /api/echo HTTP/0.9\r\n\r\n', 505),
    ('connect-authority-form', b'CONNECT test:443 HTTP/1.1\r\nHost: test\r\n\r\n', 400),
    ('unsupported-expectation', GET + b'Expect: 200-ok\r\n\r\n', 417),
    ('content-length-over-limit',
     POST + b'Content-Length: %d\r\n\r\n' % (MAX_CONTENT_LENGTH + 1), 413),
    ('chunked-body-over-limit', CHUNKED + b'%x\r\n' % (MAX_CONTENT_LENGTH + 1)
     + b'x' * (MAX_CONTENT_LENGTH + 1) + b'\r\n0\r\n\r\n', 413),
    ('target-too-long',
     b'GET /api/echo?q=' + b'a' * MAX_URL_LENGTH + b' HTTP/1.1\r\nHost: test\r\n\r\n', 414),
    ('too-many-headers',
     GET + b''.join(b'X-H%d: %d\r\n' % (i, i) for i in range(MAX_HEADERS + 1)) + b'\r\n', 431),
    ('header-block-too-large', GET + b'X-Big: ' + b'b' * MAX_HEADER_SIZE + b'\r\n\r\n', 431),
]

# Cases the front gets wrong today, with the cause of each.
def rejected_cases():
    for name, data, status in REJECTED_REQUESTS:
        yield pytest.param(data, status, id=name)


@pytest.mark.parametrize(('data', 'status'), list(rejected_cases()))
def test_rejected_request_closes_and_is_not_forwarded(port, data, status):
    before = accepted_paths(port)

    with RawConnection(port) as conn:
        conn.send(data)
        response = conn.read_response()

        assert response is not None, 'connection closed without a response'
        assert response.status == status
        assert_json_error(response)
        assert response.header('connection') == 'close'
        assert conn.closed_within(PROMPT_CLOSE)

    assert accepted_paths(port) == before


def test_rejection_after_earlier_requests(port):
    before = accepted_paths(port)
    data = (request_bytes('GET', '/api/user/1') + request_bytes('GET', '/api/user/2')
            + POST + b'Content-Length: 1\r\nContent-Length: 2\r\n\r\nab' + SMUGGLED)

    with RawConnection(port) as conn:
        conn.send(data)
        first = conn.read_response()
        second = conn.read_response()
        third = conn.read_response()

        assert conn.closed_within(PROMPT_CLOSE)

    assert first.json() == {'id': 1}
    assert second.json() == {'id': 2}
    assert third.status == 400
    assert accepted_paths(port) == before + ['/api/user/1', '/api/user/2']


def test_bytes_after_upgrade_request_not_parsed(port):
    before = accepted_paths(port)
    data = (b'GET /api/user/6 HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\n'
            b'Upgrade: websocket\r\n\r\n' + SMUGGLED)

    with RawConnection(port) as conn:
        conn.send(data)
        response = conn.read_response()

        assert response.status == 200
        assert response.json() == {'id': 6}
        assert conn.closed_within(PROMPT_CLOSE)

    assert accepted_paths(port) == before + ['/api/user/6']


@pytest.mark.parametrize('line_start', [b'X-Big: ', b'X-Big-Name-'])
def test_unterminated_header_line_gets_431(port, line_start):
    with RawConnection(port) as conn:
        conn.send(GET + line_start + b'a' * (4 * MAX_HEADER_SIZE))
        started = time.monotonic()
        response = conn.read_response()
        elapsed = time.monotonic() - started

        assert response is not None and response.status == 431
        assert conn.closed_within(PROMPT_CLOSE)

    assert elapsed < HEADER_TIMEOUT


def test_smuggled_requests_never_accepted(port):
    for _, data, _ in REJECTED_REQUESTS:
        fetch(port, data)

    assert '/api/smuggled' not in accepted_paths(port)


def test_error_body_does_not_echo_input(port):
    script = '<script>alert(1)</script>'
    cases = [
        request_bytes('GET', f'/{script}'),
        request_bytes('GET', f'/api/{script}'),
        request_bytes('GET', f'/sync/client/{script}'),
        GET + b'X-<script>: 1\r\n\r\n',
        b'GET /<script>alert(1)</script> HTTP/1.1\r\nHost: test\r\nX-A: \x00<script>\r\n\r\n',
        b'<script>alert(1)</script> / HTTP/1.1\r\n\r\n',
    ]
    for data in cases:
        response = fetch(port, data)

        assert response.status in (400, 404), data
        assert_json_error(response)
        assert b'script' not in response.body, data
        assert b'script' not in response.raw_head, data


@pytest.mark.parametrize('target', ['/api/bad-header', '/sync/bad-header'])
def test_header_with_crlf_gets_500(port, target):
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', target) + request_bytes('GET', '/api/user/2'))
        response = conn.read_response()
        after = conn.read_response()

    assert response.status == 500
    assert_json_error(response)
    assert response.header('set-cookie') is None
    assert response.header('x-evil') is None
    assert b'injected' not in response.raw_head
    assert after is not None and after.json() == {'id': 2}


# -- timeouts -------------------------------------------------------------

def test_slow_headers_get_408(port):
    with RawConnection(port) as conn:
        conn.send(b'GET /api/echo HTTP/1.1\r\nHost: test\r\n')
        started = time.monotonic()
        response = conn.read_response()
        elapsed = time.monotonic() - started

        assert response.status == 408
        assert_json_error(response)
        assert conn.closed_within(PROMPT_CLOSE)

    assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + DEADLINE_SLACK


def test_trickled_headers_get_408(port):
    # Each header line comes well within the timeout, but the whole block is too slow.
    interval = HEADER_TIMEOUT / 4
    started = time.monotonic()
    with RawConnection(port) as conn:
        conn.send(b'GET /api/echo HTTP/1.1\r\n')
        for i in range(int((HEADER_TIMEOUT + DEADLINE_SLACK) / interval)):
            if not conn.send(b'X-Slow-%d: 1\r\n' % i) or conn.closed_within(interval):
                break
        response = conn.read_response()
        elapsed = time.monotonic() - started

        assert response is not None and response.status == 408
        assert conn.closed_within(PROMPT_CLOSE)

    assert elapsed < HEADER_TIMEOUT + DEADLINE_SLACK


def test_slow_body_gets_408(port):
    before = accepted_paths(port)
    with RawConnection(port) as conn:
        conn.send(request_bytes('POST', '/api/echo', {'Content-Length': '10'}) + b'123')
        started = time.monotonic()
        response = conn.read_response()
        elapsed = time.monotonic() - started

        assert response.status == 408
        assert_json_error(response)
        assert conn.closed_within(PROMPT_CLOSE)

    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + DEADLINE_SLACK
    assert accepted_paths(port) == before


def test_slow_chunked_body_gets_408(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('POST', '/api/echo', {'Transfer-Encoding': 'chunked'})
                  + b'5\r\nhello\r\n')
        response = conn.read_response()

        assert response.status == 408
        assert conn.closed_within(PROMPT_CLOSE)


def test_idle_keepalive_connection_closed(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/api/user/1'))
        assert conn.read_response().status == 200
        started = time.monotonic()

        assert conn.closed_within(KEEPALIVE_TIMEOUT + DEADLINE_SLACK)
        elapsed = time.monotonic() - started

    assert elapsed >= KEEPALIVE_TIMEOUT * 0.9


def test_silent_connection_closed_without_response(port):
    with RawConnection(port) as conn:
        started = time.monotonic()

        assert conn.closed_within(KEEPALIVE_TIMEOUT + DEADLINE_SLACK)
        assert conn.buffer == b''
        assert time.monotonic() - started >= KEEPALIVE_TIMEOUT * 0.9


@pytest.fixture(scope='module')
def limited_server():
    env = dict(LIMITS_ENV, WG_MAX_CONNECTIONS='2', WG_WORKERS='1')
    with Server(APP, env=env) as running:
        running.wait_ready(1)
        yield running


def open_served_connections(port: int, count: int) -> list[RawConnection]:
    """Open ``count`` connections, each proven open by one request and its response."""
    connections = []
    for _ in range(count):
        conn = RawConnection(port)
        connections.append(conn)
        conn.send(request_bytes('GET', '/api/user/1'))
        assert conn.read_response().status == 200
    return connections


def close_all(connections: list[RawConnection]) -> None:
    for conn in connections:
        conn.close()


def test_max_connections_refused(limited_server):
    connections = open_served_connections(limited_server.port, 2)
    try:
        with RawConnection(limited_server.port) as refused:
            response = refused.read_response()

            assert response is not None and response.status == 503
            assert refused.closed_within(PROMPT_CLOSE), f'bytes after the body: {refused.buffer}'
            assert_json_error(response)
    finally:
        close_all(connections)


def test_max_connections_slot_freed_on_close(limited_server):
    connections = open_served_connections(limited_server.port, 2)
    try:
        refused = fetch(limited_server.port, request_bytes('GET', '/api/user/2'))
        assert refused is None or refused.status == 503

        connections.pop().close()

        def new_connection_served() -> bool:
            response = fetch(limited_server.port, request_bytes('GET', '/api/user/2'))
            return response is not None and response.status == 200

        assert wait_until(new_connection_served, timeout=10, interval=0.05)
    finally:
        close_all(connections)


def process_rss_bytes(pid: int) -> int:
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise AssertionError(f'no VmRSS line for process {pid}')


@pytest.fixture(scope='module')
def large_body_server():
    env = dict(LIMITS_ENV, WG_MAX_CONTENT_LENGTH=str(8 * 1024 * 1024), WG_WORKERS='1',
               WG_BODY_TIMEOUT='30')
    with Server(APP, env=env) as running:
        running.wait_ready(1)
        yield running


def test_tiny_chunks_memory_bounded(large_body_server):
    chunk_count = 2 * 1024 * 1024
    body_size = 2 * chunk_count
    # Room for the body, one joined copy of it, and allocator slack.
    allowed_growth = 3 * body_size + 8 * 1024 * 1024
    pid = large_body_server.process.pid
    with RawConnection(large_body_server.port) as conn:
        conn.send(request_bytes('GET', '/api/user/1'))
        assert conn.read_response().status == 200
        before = process_rss_bytes(pid)

        conn.send(request_bytes('POST', '/api/echo', {'Transfer-Encoding': 'chunked'})
                  + b'2\r\nab\r\n' * chunk_count)
        # The server may still be reading when send() returns, so watch the
        # growth for a while. A server within bounds makes this wait time out.
        wait_until(lambda: process_rss_bytes(pid) - before > allowed_growth, timeout=3)
        growth = process_rss_bytes(pid) - before

        conn.send(b'0\r\n\r\n')
        response = conn.read_response()

    assert response.json()['body_size'] == body_size
    assert growth < allowed_growth, f'dispatcher grew by {growth >> 20} MiB'


# A Content-Length body of 64 KiB or more bypasses the parser: the
# dispatcher reads it straight into the request's buffer, then hands the
# connection back to the parser for the next request.

def test_large_body_then_pipelined_request(large_body_server):
    body = os.urandom(1024 * 1024 + 17)
    with RawConnection(large_body_server.port) as conn:
        conn.send(request_bytes('POST', '/api/echo', body=body)
                  + request_bytes('GET', '/api/user/3'))
        first = conn.read_response()
        second = conn.read_response()

    assert first.status == 200
    assert first.json()['body_size'] == len(body)
    assert first.json()['body_sha256'] == hashlib.sha256(body).hexdigest()
    assert second.json() == {'id': 3}


def test_large_bodies_share_connection(large_body_server):
    sizes = [64 * 1024, 64 * 1024 + 1, 3 * 1024 * 1024, 200 * 1024]
    with RawConnection(large_body_server.port) as conn:
        for size in sizes:
            body = os.urandom(size)
            conn.send(request_bytes('POST', '/api/echo', body=body))
            response = conn.read_response()

            assert response.status == 200
            assert response.json()['body_size'] == size
            assert response.json()['body_sha256'] == hashlib.sha256(body).hexdigest()


def test_large_body_sent_in_pieces(large_body_server):
    body = os.urandom(300 * 1024)
    with RawConnection(large_body_server.port) as conn:
        conn.send(request_bytes('POST', '/api/echo', {'Content-Length': str(len(body))}))
        for start in range(0, len(body), 7919):
            conn.send(body[start:start + 7919])
        response = conn.read_response()

    assert response.status == 200
    assert response.json()['body_sha256'] == hashlib.sha256(body).hexdigest()


def test_large_body_after_expect_continue(large_body_server):
    body = os.urandom(512 * 1024)
    headers = {'Expect': '100-continue', 'Content-Length': str(len(body))}
    with RawConnection(large_body_server.port) as conn:
        conn.send(request_bytes('POST', '/api/echo', headers))
        interim = conn.read_response()

        assert interim.status == 100
        conn.send(body)
        final = conn.read_response()

    assert final.status == 200
    assert final.json()['body_sha256'] == hashlib.sha256(body).hexdigest()


def test_large_body_disconnect_midway(large_body_server):
    port = large_body_server.port
    before = accepted_paths(port)
    with RawConnection(port) as conn:
        conn.send(request_bytes('POST', '/api/echo', {'Content-Length': str(1024 * 1024)})
                  + b'x' * (300 * 1024))

    response = get(port, '/api/user/4')

    assert response.json() == {'id': 4}
    assert accepted_paths(port) == before + ['/api/user/4']


def test_slow_large_body_gets_408(port):
    before = accepted_paths(port)
    with RawConnection(port) as conn:
        conn.send(request_bytes('POST', '/api/echo', {'Content-Length': str(MAX_CONTENT_LENGTH)})
                  + b'x' * 1000)
        response = conn.read_response()

        assert response.status == 408
        assert_json_error(response)
        assert conn.closed_within(PROMPT_CLOSE)

    assert accepted_paths(port) == before


# -- paths and query strings ----------------------------------------------

@pytest.mark.parametrize(('target', 'expected'), [
    ('/api/user/%31', {'id': 1}),
    ('/api/user/%31%32', {'id': 12}),
    ('/api/name/a%2Fb', {'name': 'a/b'}),
    ('/api/name/a%2fb', {'name': 'a/b'}),
    ('/api/name/caf%C3%A9', {'name': 'café'}),
    ('/api/name/a%20b', {'name': 'a b'}),
    ('/api/user/x/../7', {'id': 7}),
    ('/api/user/x/%2e%2e/7', {'id': 7}),
    ('/api/user/x/%2E%2E/7', {'id': 7}),
    ('/api/user/./8', {'id': 8}),
    ('/api/user/%2e/8', {'id': 8}),
    ('/../../api/user/9', {'id': 9}),
    ('/api//user//10', {'id': 10}),
])
def test_path_percent_decoding(port, target, expected):
    response = get(port, target)

    assert response.status == 200, response.body
    assert response.json() == expected


@pytest.mark.parametrize('target', ['/api/x/../echo', '/api/%65cho', '/api/./echo',
                                    '/api/x/%2E%2E/echo'])
def test_worker_sees_normalized_path(port, target):
    assert get(port, target).json()['path'] == '/api/echo'


def test_encoded_slash_does_not_split_segment(port):
    assert get(port, '/api/name/a/b').status == 404
    assert get(port, '/api/user/1%2F2').status == 404


def test_repeated_query_keys(port):
    target = '/api/echo?a=1&a=2&b=x%20y&c=plus+sign&a=3&empty='
    expected = {'a': ['1', '2', '3'], 'b': 'x y', 'c': 'plus sign', 'empty': ''}

    assert get(port, target).json()['query'] == expected
    assert get(port, target.replace('/api/echo', '/sync/client')).json()['query'] == expected


def test_no_query_string_is_none(port):
    assert get(port, '/api/echo').json()['query'] is None
    assert get(port, '/sync/client').json()['query'] is None


def test_absolute_form_target(port):
    response = get(port, 'http://test/api/user/4?x=1')

    assert response.status == 200
    assert response.json() == {'id': 4}


# -- static files ---------------------------------------------------------

def test_static_file_headers(port, static_root):
    response = get(port, '/static/style.css')

    assert response.status == 200
    assert response.header('content-type').startswith('text/css')
    assert response.body == (static_root / 'style.css').read_bytes()
    assert int(response.header('content-length')) == len(response.body)
    assert response.header('etag')
    modified = email.utils.parsedate_to_datetime(response.header('last-modified'))
    assert int(modified.timestamp()) == int((static_root / 'style.css').stat().st_mtime)


def test_static_content_types(port):
    assert get(port, '/static/data.json').header('content-type').startswith('application/json')
    assert get(port, '/static/index.html').header('content-type').startswith('text/html')
    assert get(port, '/static/big.bin').header('content-type') == 'application/octet-stream'


def test_static_directory_serves_index(port, static_root):
    assert get(port, '/static/').body == (static_root / 'index.html').read_bytes()
    assert get(port, '/static/sub/').body == (static_root / 'sub' / 'index.html').read_bytes()


def test_static_if_none_match_gets_304(port):
    etag = get(port, '/static/style.css').header('etag')

    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/static/style.css', {'If-None-Match': etag})
                  + request_bytes('GET', '/api/user/1'))
        response = conn.read_response()
        after = conn.read_response()

    assert response.status == 304
    assert response.body == b''
    assert response.header('etag') == etag
    assert after.json() == {'id': 1}


def test_static_if_modified_since_gets_304(port):
    modified = get(port, '/static/style.css').header('last-modified')

    response = get(port, '/static/style.css', {'If-Modified-Since': modified})

    assert response.status == 304


def test_static_stale_etag_gets_200(port):
    response = get(port, '/static/style.css', {'If-None-Match': '"stale"'})

    assert response.status == 200


def test_static_single_range_gets_206(port, static_root):
    response = get(port, '/static/digits.txt', {'Range': 'bytes=5-14'})

    assert response.status == 206
    assert response.body == (static_root / 'digits.txt').read_bytes()[5:15]
    assert response.header('content-range') == 'bytes 5-14/100'
    assert response.header('content-length') == '10'


def test_static_suffix_range_gets_206(port):
    response = get(port, '/static/digits.txt', {'Range': 'bytes=-3'})

    assert response.status == 206
    assert response.body == b'789'


def test_static_unsatisfiable_range_gets_416(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/static/digits.txt', {'Range': 'bytes=100-200'})
                  + request_bytes('GET', '/api/user/1'))
        response = conn.read_response()
        after = conn.read_response()

    assert response.status == 416
    assert response.header('content-range') == 'bytes */100'
    assert after.json() == {'id': 1}


def test_static_large_file_intact(port, static_root):
    expected = hashlib.sha256((static_root / 'big.bin').read_bytes()).hexdigest()
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/static/big.bin') + request_bytes('GET', '/api/user/1'))
        response = conn.read_response()
        after = conn.read_response()

    assert response.status == 200
    assert len(response.body) == BIG_FILE_SIZE
    assert hashlib.sha256(response.body).hexdigest() == expected
    assert after.json() == {'id': 1}


def test_static_large_range_intact(port, static_root):
    start, end = 1024 * 1024, 4 * 1024 * 1024 - 1
    expected = (static_root / 'big.bin').read_bytes()[start:end + 1]

    response = get(port, '/static/big.bin', {'Range': f'bytes={start}-{end}'})

    assert response.status == 206
    assert response.body == expected


def test_static_head_has_length_and_no_body(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('HEAD', '/static/big.bin') + request_bytes('GET', '/api/user/1'))
        head = conn.read_response('HEAD')
        after = conn.read_response()

    assert head.status == 200
    assert head.header('content-length') == str(BIG_FILE_SIZE)
    assert after.json() == {'id': 1}


def test_authoritative_mount_headers_and_404(port):
    served = get(port, '/assets/style.css')
    missing = get(port, '/assets/missing.css')

    assert served.status == 200
    assert served.header('cache-control') == 'max-age=60'
    assert missing.status == 404
    assert_json_error(missing)


@pytest.mark.parametrize('target', [
    '/static/../secret.txt',
    '/static/%2e%2e/secret.txt',
    '/static/%2E%2E/secret.txt',
    '/static/sub/../../secret.txt',
    '/static/..%2Fsecret.txt',
    '/static/..%2fsecret.txt',
    '/static/sub%2F..%2F..%2Fsecret.txt',
    '/static/%2F..%2Fsecret.txt',
    '/static/..%5Csecret.txt',
    '/static//etc/passwd',
    '/static/%2Fetc%2Fpasswd',
    '/static/link-out',
    '/static/dir-out/secret.txt',
    '/assets/link-out',
    '/assets/dir-out/secret.txt',
    '/assets/..%2Fsecret.txt',
    '/static/%00secret.txt',
])
def test_static_traversal_never_leaves_root(port, target):
    response = get(port, target)

    assert response.status in (400, 404), response.status
    assert SECRET not in response.body
    assert b'root:' not in response.body


def test_static_traversal_absolute_form(port):
    response = get(port, 'http://test/static/../secret.txt')

    assert response.status in (400, 404)
    assert SECRET not in response.body


# -- TLS, IPv6 and proxies ------------------------------------------------

@pytest.fixture(scope='module')
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    openssl = shutil.which('openssl')
    if openssl is None:
        pytest.skip('the openssl command, which makes the test certificate, is not installed')
    folder = tmp_path_factory.mktemp('tls')
    cert, key = folder / 'cert.pem', folder / 'key.pem'
    subprocess.run(
        [openssl, 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
         '-nodes', '-keyout', str(key), '-out', str(cert), '-days', '1',
         '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
        check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture(scope='module')
def tls_server(certificate):
    cert, key = certificate
    with Server(APP, '--certfile', str(cert), '--keyfile', str(key),
                env=dict(LIMITS_ENV, WG_WORKERS='1')) as running:
        running.wait_ready(1)
        yield running


def test_tls_request_is_secure(tls_server, certificate):
    context = ssl.create_default_context(cafile=str(certificate[0]))
    options = {'ssl_context': context, 'server_hostname': 'localhost'}

    info = get(tls_server.port, '/sync/client', **options)
    user = get(tls_server.port, '/api/user/5', **options)

    assert info.status == 200
    assert info.json()['is_secure'] is True
    assert user.json() == {'id': 5}


def test_tls_keepalive_and_pipelining(tls_server, certificate):
    context = ssl.create_default_context(cafile=str(certificate[0]))
    with RawConnection(tls_server.port, ssl_context=context,
                       server_hostname='localhost') as conn:
        conn.send(b''.join(request_bytes('GET', f'/api/user/{i}') for i in range(5)))
        ids = [conn.read_response().json()['id'] for _ in range(5)]

    assert ids == list(range(5))


def test_tls_rejects_plain_http(tls_server):
    with RawConnection(tls_server.port) as conn:
        conn.send(request_bytes('GET', '/api/user/1'))
        try:
            data = conn.sock.recv(1024)
        except ConnectionResetError:
            data = b''

    assert not data.startswith(b'HTTP/1.1 200')


def test_plain_server_is_not_secure(port):
    assert get(port, '/sync/client').json()['is_secure'] is False


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(('::1', 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(),
                                reason='this machine has no IPv6 loopback address')


@needs_ipv6
def test_ipv6_loopback():
    with Server(APP, host='::1', env=dict(LIMITS_ENV, WG_WORKERS='1')) as running:
        running.wait_ready(1)
        with RawConnection(running.port, '::1') as conn:
            conn.send(request_bytes('GET', '/api/echo'))
            response = conn.read_response()
            local_port = conn.local_port()

    assert response.status == 200
    assert response.json()['remote_address'] == f'[::1]:{local_port}'


@pytest.fixture(scope='module')
def dual_stack_server():
    if not ipv6_loopback_available():
        pytest.skip('this machine has no IPv6 loopback address')
    env = dict(LIMITS_ENV, WG_WORKERS='1', WG_TRUSTED_PROXIES='127.0.0.1')
    with Server(APP, host='::', env=env) as running:
        running.wait_ready(1)
        yield running


def test_dual_stack_serves_both_families(dual_stack_server):
    port = dual_stack_server.port
    over_ipv4 = get(port, '/api/echo', host='127.0.0.1')
    over_ipv6 = get(port, '/api/echo', host='::1')

    assert over_ipv4.status == 200
    assert over_ipv4.json()['remote_address'].startswith('127.0.0.1:')
    assert over_ipv6.status == 200
    assert over_ipv6.json()['remote_address'].startswith('[::1]:')


def test_forwarded_for_honoured_from_trusted_proxy(dual_stack_server):
    headers = {'X-Forwarded-For': '203.0.113.7, 10.0.0.1'}

    from_worker = get(dual_stack_server.port, '/api/echo', headers, host='127.0.0.1')
    from_sync = get(dual_stack_server.port, '/sync/client', headers, host='127.0.0.1')

    assert from_worker.json()['remote_address'] == '203.0.113.7'
    assert from_sync.json()['remote_address'] == '203.0.113.7'


def test_forwarded_for_ignored_from_untrusted_peer(dual_stack_server):
    headers = {'X-Forwarded-For': '203.0.113.7'}
    with RawConnection(dual_stack_server.port, '::1') as conn:
        conn.send(request_bytes('GET', '/api/echo', headers))
        response = conn.read_response()
        local_port = conn.local_port()

    assert response.json()['remote_address'] == f'[::1]:{local_port}'


def test_forwarded_for_ignored_without_trusted_proxies(port):
    with RawConnection(port) as conn:
        conn.send(request_bytes('GET', '/api/echo', {'X-Forwarded-For': '203.0.113.7'}))
        response = conn.read_response()
        local_port = conn.local_port()

    assert response.json()['remote_address'] == f'127.0.0.1:{local_port}'
