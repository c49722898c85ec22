"""A bounded, reproducible fuzz run of the HTTP front with mutated requests.

Hypothesis builds requests from parts (method, target, version, known and
random header fields, a body framed by Content-Length, by chunks or not at
all), then mutates their bytes. Each example goes to one dispatcher on a
new connection. The properties checked for each example:

- the server sends a response or closes the connection within its own
  timeouts, so a hang fails the run;
- a response is well formed: a status line, headers, and a body whose
  length matches its framing;
- a request the front rejects (400, 408, 413, 414, 417, 431, 505) gets a
  JSON error body, ``Connection: close`` and a prompt close, and no request
  from that connection reaches a worker pool;
- the dispatcher process is still running.

After the run a normal request must still work and the dispatcher must
not have logged a traceback. The run is derandomized, skips shrinking (a
shrink could outlast the test timeout) and keeps no example database, so
CI runs the same examples every time.
"""

from __future__ import annotations

import itertools
import socket

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from tests.harness import Server
from tests.test_http_front import (
    REJECTION_STATUSES,
    RawConnection,
    accepted_paths,
    assert_json_error,
    get,
)

APP = 'tests.apps.front_app:make'

HEADER_TIMEOUT = 0.3
BODY_TIMEOUT = 0.3
KEEPALIVE_TIMEOUT = 0.5
MAX_CONTENT_LENGTH = 4096
FUZZ_ENV = {
    'WG_HEADER_TIMEOUT': str(HEADER_TIMEOUT),
    'WG_BODY_TIMEOUT': str(BODY_TIMEOUT),
    'WG_KEEPALIVE_TIMEOUT': str(KEEPALIVE_TIMEOUT),
    'WG_MAX_CONTENT_LENGTH': str(MAX_CONTENT_LENGTH),
    'WG_MAX_HEADERS': '16',
    'WG_MAX_HEADER_SIZE': '2048',
    'WG_MAX_URL_LENGTH': '512',
}

# The maximum time the server may take to respond or close: its largest
# timeout, plus the 0.5 s period of its deadline checks, plus margin for a
# busy machine.
RESPONSE_TIMEOUT = max(HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE_TIMEOUT) + 0.5 + 2.0
# After a rejection the server closes at once. This bound is shorter than
# the keep-alive timeout, so an idle close cannot pass for it.
PROMPT_CLOSE = 0.5

MAX_EXAMPLES = 300
# The generator must produce a fair share of both outcomes, or the run
# proves little. These floors are far below the counts a run produces.
MIN_SERVED = MAX_EXAMPLES // 10
MIN_REJECTED = MAX_EXAMPLES // 10

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

METHODS = ['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH']
ODD_METHODS = ['get', 'CONNECT', 'PRI', 'M-SEARCH', 'BREW', 'G\x00T', 'GET0']
TARGETS = [
    '/api/echo', '/api/user/1', '/api/user/%31', '/api/name/a%2Fb', '/api/name/%2e%2e',
    '/sync/client?a=1&a=2', '/missing', '/api/../sync/client', '*', 'http://test/api/echo',
    '/api/echo?x=<script>', '/api/user/x/%2e%2e/2', '/%00', '/api/echo#fragment',
]
VERSIONS = ['HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.2', 'HTTP/11', 'HTTX/1.1']
KNOWN_FIELDS = [
    ('Host', 'test'),
    ('Connection', 'close'),
    ('Connection', 'keep-alive'),
    ('Connection', 'upgrade'),
    ('Upgrade', 'websocket'),
    ('Transfer-Encoding', 'chunked'),
    ('Transfer-Encoding', 'gzip, chunked'),
    ('Transfer-Encoding', 'chunked, gzip'),
    ('Transfer-Encoding', 'identity'),
    ('Content-Length', '0'),
    ('Content-Length', '5'),
    ('Content-Length', '-1'),
    ('Content-Length', '+5'),
    ('Content-Length', '99999999999999999999'),
    ('Content-Length', str(MAX_CONTENT_LENGTH + 1)),
    ('Expect', '100-continue'),
    ('Expect', 'something-else'),
    ('X-Forwarded-For', '203.0.113.7'),
    ('Content-Type', 'application/json'),
    ('Content-Type', 'application/x-www-form-urlencoded'),
    ('Cookie', 'a=1; b=2'),
]
FOLLOW_UP = b'GET /api/user/2 HTTP/1.1\r\nHost: test\r\n\r\n'


def encode(text: str) -> bytes:
    return text.encode('utf-8', 'surrogateescape')


token = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12).map(encode)
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                    max_size=30).map(encode)
known_field = st.sampled_from(KNOWN_FIELDS).map(lambda pair: (encode(pair[0]), encode(pair[1])))


def mostly(draw, usual, unusual, weight: int = 4):
    """Draw from ``usual`` ``weight`` times out of ``weight + 1``, else from ``unusual``.

    Repeating a strategy inside ``st.one_of`` did not raise its share in a
    trial with Hypothesis 6.170, so the weights are drawn here explicitly.
    """
    if draw(st.sampled_from([True] * weight + [False])):
        return draw(usual)
    return draw(unusual)


@st.composite
def header_field(draw) -> tuple[bytes, bytes]:
    if draw(st.sampled_from([True, True, False])):
        return draw(known_field)
    name = mostly(draw, token, st.binary(max_size=12), weight=2)
    value = mostly(draw, printable, st.binary(max_size=30), weight=2)
    return name, value


@st.composite
def chunked_body(draw) -> bytes:
    parts = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4)):
        size = b'%x' % len(data)
        size = draw(st.sampled_from([size, size.upper(), b'0' + size, size + b' ', b'-' + size,
                                     b'zz', b'f' * 17]))
        extension = draw(st.sampled_from([b'', b';a=b', b';a="x y"', b';a b', b';\x01']))
        parts.append(size + extension + b'\r\n' + data + b'\r\n')
    trailer = draw(st.sampled_from([b'', b'X-Trailer: 1\r\n', b'Content-Length: 3\r\n']))
    return b''.join(parts) + b'0\r\n' + trailer + b'\r\n'


@st.composite
def framed_body(draw) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Return the framing header fields and the body for one of the framings."""
    framing = mostly(draw, st.sampled_from(['none', 'length', 'chunked']), st.just('raw'))
    if framing == 'none':
        return [], b''
    if framing == 'length':
        body = draw(st.binary(max_size=80))
        declared = len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 3]))
        return [(b'Content-Length', b'%d' % max(declared, 0))], body
    if framing == 'chunked':
        return [(b'Transfer-Encoding', b'chunked')], draw(chunked_body())
    return [], draw(st.binary(max_size=60))


@st.composite
def structured_request(draw) -> bytes:
    # Each part is valid most of the time, so that many examples get past
    # the parser and the mutations below decide where they break.
    method = mostly(draw, st.sampled_from(METHODS).map(encode),
                    st.one_of(st.sampled_from(ODD_METHODS).map(encode), token), 10)
    target = mostly(draw, st.sampled_from(TARGETS).map(encode),
                    st.binary(min_size=1, max_size=20), 8)
    version = mostly(draw, st.just(b'HTTP/1.1'), st.sampled_from(VERSIONS).map(encode), 8)
    # HTTP/1.1 without Host is rejected (RFC 9112), so most examples carry one.
    fields = [(b'Host', b'test')] if draw(st.integers(0, 9)) else []
    fields += draw(st.lists(header_field(), max_size=5))
    framing, body = draw(framed_body())
    fields += framing
    fields = draw(st.permutations(fields))
    separator = mostly(draw, st.just(b': '), st.sampled_from([b':', b' : ', b':\t']))
    newline = mostly(draw, st.just(b'\r\n'), st.sampled_from([b'\n', b'\r']), 12)
    lines = [method + b' ' + target + b' ' + version]
    lines += [name + separator + value for name, value in fields]
    return newline.join(lines) + newline + newline + body


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """Apply up to three byte-level mutations to ``data``, often none."""
    buffer = bytearray(data)
    for _ in range(mostly(draw, st.just(0), st.integers(1, 3), 1)):
        operation = draw(st.sampled_from(['insert', 'delete', 'replace', 'duplicate-line',
                                          'truncate']))
        position = draw(st.integers(0, len(buffer)))
        if operation == 'insert':
            buffer[position:position] = draw(st.one_of(
                st.binary(min_size=1, max_size=8),
                st.sampled_from([b'\r\n', b'\n', b'\x00', b' ', b':', b'\xa0', b'\r\n\r\n']),
            ))
        elif operation == 'delete':
            del buffer[position:position + draw(st.integers(1, 8))]
        elif operation == 'replace' and position < len(buffer):
            buffer[position] = draw(st.integers(0, 255))
        elif operation == 'duplicate-line':
            lines = bytes(buffer).split(b'\r\n')
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index])
            buffer = bytearray(b'\r\n'.join(lines))
        elif operation == 'truncate':
            del buffer[position:]
    return bytes(buffer)


@st.composite
def fuzz_case(draw) -> tuple[bytes, bool]:
    """Return (request bytes, whether the client half-closes after sending them)."""
    data = draw(mutated(draw(structured_request())))
    if draw(st.booleans()):
        data += FOLLOW_UP
    return data, draw(st.booleans())


def first_method(data: bytes) -> str:
    """Return the method of the first request, skipping the empty lines llhttp skips."""
    return data.lstrip(b'\r\n').split(b' ', 1)[0].decode('latin-1')


@pytest.fixture(scope='module')
def fuzz_server():
    with Server(APP, '--no-access-log', env=dict(FUZZ_ENV, WG_WORKERS='2')) as running:
        running.wait_ready(2)
        yield running


def source_address(number: int) -> str:
    """Return a loopback address of its own for example ``number`` (0 to 63999).

    Linux may give a new connection the port of a loopback connection still
    in TIME_WAIT, so a client port alone does not tell two examples apart.
    """
    return f'127.1.{number // 250}.{number % 250 + 1}'


def exchange(server: Server, data: bytes, half_close: bool, source: str, tally: dict) -> None:
    """Send one fuzz case on a new connection from ``source`` and check how the server reacts."""
    method = first_method(data)
    with RawConnection(server.port, timeout=RESPONSE_TIMEOUT, source=source) as conn:
        peer = f'{source}:{conn.local_port()}'
        conn.send(data)
        if half_close:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server already closed the connection

        try:
            _, response = conn.read_final(method)
        except TimeoutError:
            pytest.fail(f'no response and no close within {RESPONSE_TIMEOUT} s')
        except EOFError as err:
            pytest.fail(f'connection closed inside a response: {err}')

        if response is None:
            tally['closed'] += 1
        elif response.status not in REJECTION_STATUSES:
            tally['served'] += 1
            assert 100 <= response.status <= 599
        else:
            tally['rejected'] += 1
            note(f'rejected with {response.status}: {response.body!r}')
            assert response.header('connection') == 'close', response.raw_head
            if method == 'HEAD':
                # A request rejected before its method was known gets a body,
                # which a HEAD reader leaves unread.
                conn.sock.settimeout(RESPONSE_TIMEOUT)
                conn.read_to_eof()
            else:
                assert_json_error(response)
                assert conn.closed_within(PROMPT_CLOSE), f'bytes after the body: {conn.buffer}'

    if response is not None and response.status in REJECTION_STATUSES:
        assert accepted_paths(server.port, peer) == []
    assert server.process.poll() is None, 'the dispatcher exited:\n' + server.output()[-3000:]


def test_mutated_requests_never_hang_or_leak(fuzz_server):
    tally = {'served': 0, 'rejected': 0, 'closed': 0}
    numbers = itertools.count()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=fuzz_case())
    def run(case):
        data, half_close = case
        note(f'request bytes: {data!r}, half close: {half_close}')
        exchange(fuzz_server, data, half_close, source_address(next(numbers)), tally)

    run()

    assert tally['served'] >= MIN_SERVED, tally
    assert tally['rejected'] >= MIN_REJECTED, tally
    assert get(fuzz_server.port, '/api/user/3').json() == {'id': 3}
    assert fuzz_server.process.poll() is None
    assert 'Traceback' not in fuzz_server.output()
