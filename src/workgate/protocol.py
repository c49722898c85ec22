"""The dispatcher's HTTP/1.x connection protocol, on httptools.

Rules this module keeps:

- Requests on one connection are answered in the order they arrived.
  Pipelined requests are parsed as they come and wait in a small queue;
  only the head of the queue is *active*, and only the active request can
  write to the transport. At most ``MAX_PIPELINED`` complete requests wait;
  past that, reading pauses.
- Every parser error becomes 400 (505 for an unsupported HTTP version),
  sent in order after the responses already owed, and the connection then
  closes. A request the parser rejected never reaches a handler.
- Limits: request target length (414), header count and header block size
  (431), body size (413, checked from Content-Length before reading the
  body, and while reading a chunked body), time to receive the headers and
  the body (408, then close), idle keep-alive time (silent close).
- A stream (Server-Sent Events, NDJSON, raw chunks) uses chunked transfer
  coding on HTTP/1.1 and ends by closing the connection on HTTP/1.0. When a
  stream's unsent bytes pass ``stream_buffer_limit`` the client is too
  slow: the connection is closed and the stream counts as disconnected.
- Deadlines are checked by the dispatcher's periodic sweep (``check_deadline``),
  so a request costs one float store instead of a timer.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

from .model import encode_body, format_cookie, format_event, parse_body, parse_cookies
from .routing import normalize_path, parse_query
from .static import prepare_file

if TYPE_CHECKING:
    from .dispatcher import Dispatcher, Settings

MAX_PIPELINED = 16
_FILE_CHUNK = 256 * 1024
_SMALL_BODY = 64 * 1024
# A plain-TCP body with a Content-Length at least this large is read by
# _BodyReader straight into its buffer, skipping the parser's copies.
_DIRECT_BODY_MIN = 64 * 1024

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}

_CONTINUE = b'HTTP/1.1 100 Continue\r\n\r\n'
_VERSIONS = {'1.1': b'1.1', '1.0': b'1.0'}
# Statuses whose responses never have a body (RFC 9110 sections 15.2, 15.3.5, 15.4.5).
_NO_BODY_STATUSES = frozenset((100, 101, 102, 103, 204, 304))
_ILLEGAL_VALUE = str.maketrans('', '', '\r\n\x00')
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                         'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ')


def _make_unfilled_buffer():
    """Return a function that allocates a bytearray without zeroing it.

    ``bytearray(n)`` writes n zero bytes that the socket read overwrites at
    once. In a perf profile of 1 MiB uploads, that pass took 9% of the
    dispatcher's CPU time. CPython's PyByteArray_FromStringAndSize
    with a NULL source leaves the contents as they are. Callers must fill
    every byte before anything reads the buffer.
    """
    try:
        allocate = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except AttributeError:  # not CPython
        return bytearray
    allocate.restype = ctypes.py_object
    allocate.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    return lambda size: allocate(None, size)


_unfilled_buffer = _make_unfilled_buffer()


def _status_line(status: int, version: bytes) -> bytes:
    key = (status, version)
    line = _STATUS_LINES.get(key)
    if line is None:
        reason = _REASONS.get(status, 'Unknown')
        line = b'HTTP/%s %d %s\r\n' % (version, status, reason.encode())
        if len(_STATUS_LINES) < 512:
            _STATUS_LINES[key] = line
    return line


class _DateCache:
    """The Date header value, formatted once per second."""

    second = -1
    value = b''

    @classmethod
    def get(cls) -> bytes:
        now = time.time()
        second = int(now)
        if second != cls.second:
            cls.second = second
            cls.value = b'date: ' + formatdate(now, usegmt=True).encode() + b'\r\n'
        return cls.value


_TYPE_LINES: dict[str | None, bytes] = {None: b''}
# (status, content type) -> the HTTP/1.1 status line and Content-Type line.
_HEAD_PREFIXES: dict[tuple[int, str | None], bytes] = {}


def _build_head_prefix(status: int, content_type: str | None) -> bytes:
    """Build (and cache) the prefix that ``_HEAD_PREFIXES`` does not have yet."""
    prefix = _status_line(status, b'1.1') + _content_type_line(content_type)
    if len(_HEAD_PREFIXES) < 256:
        _HEAD_PREFIXES[(status, content_type)] = prefix
    return prefix


def _content_type_line(content_type: str | None) -> bytes:
    line = _TYPE_LINES.get(content_type)
    if line is None:
        line = b'content-type: ' + content_type.encode('latin-1') + b'\r\n'
        if len(_TYPE_LINES) < 256:
            _TYPE_LINES[content_type] = line
    return line


def check_header(name: str, value: Any) -> tuple[str, str]:
    """Validate one response header; raise ValueError for an unsafe one."""
    name = str(name)
    if not name or any(c not in _TOKEN_CHARS for c in name):
        raise ValueError(f'invalid response header name {name!r}')
    text = str(value)
    if text.translate(_ILLEGAL_VALUE) != text:
        raise ValueError(f'response header {name!r} contains CR, LF or NUL')
    return name, text


def build_head(status: int, version: bytes, headers: Any, cookies: Any,
               content_type: str | None, length: int | None, keep_alive: bool,
               chunked: bool = False, own_length: bool = False) -> bytes:
    """Build the status line and header block of a response.

    ``headers`` is a dict or a list of pairs set by the application; a
    Content-Type there wins over ``content_type``. Transfer-Encoding,
    Connection and Date are always set here, and Content-Length too unless
    ``own_length`` says the headers carry a trusted one (static files).
    """
    parts = [_status_line(status, version)]
    has_type = False
    if headers:
        items = headers.items() if hasattr(headers, 'items') else headers
        for name, value in items:
            name, value = check_header(name, value)
            lower = name.lower()
            if lower in ('transfer-encoding', 'connection', 'date'):
                continue
            if lower == 'content-length' and not own_length:
                continue
            if lower == 'content-type':
                has_type = True
            parts.append(f'{name}: {value}\r\n'.encode('latin-1', 'replace'))
    if cookies:
        for cookie_name, cookie_value in cookies.items():
            _, text = check_header('set-cookie', format_cookie(cookie_name, cookie_value))
            parts.append(f'set-cookie: {text}\r\n'.encode('latin-1', 'replace'))
    if content_type and not has_type:
        parts.append(b'content-type: ' + content_type.encode('latin-1') + b'\r\n')
    if chunked:
        parts.append(b'transfer-encoding: chunked\r\n')
    elif length is not None and status not in _NO_BODY_STATUSES:
        parts.append(b'content-length: %d\r\n' % length)
    parts.append(_DateCache.get())
    if not keep_alive:
        parts.append(b'connection: close\r\n')
    elif version == b'1.0':
        parts.append(b'connection: keep-alive\r\n')
    parts.append(b'\r\n')
    return b''.join(parts)


def _asks_close(headers: Any) -> bool:
    """True when the application set ``Connection: close`` on its response."""
    items = headers.items() if hasattr(headers, 'items') else headers
    return any(str(name).lower() == 'connection' and str(value).strip().lower() == 'close'
               for name, value in items)


def error_body(message: str) -> bytes:
    return b'{"error":"' + message.encode() + b'"}'


class ClientConnection:
    """One request on a client connection, as the dispatcher's code sees it.

    Exposes the request (``method``, ``path``, ``query``, ``headers`` with
    lower-case keys, ``cookies``, ``body``, ``data``, ``content_type``,
    ``remote_address``, ``is_secure``) and the ways to answer it. Each
    ``respond*`` call answers once; later calls are ignored and return False.
    """

    __slots__ = ('_protocol', 'method', 'path', 'raw_path', 'query_string',
                 '_query', 'headers', 'body', '_data', '_parsed', '_cookies',
                 'http_version', 'keep_alive', 'expect_continue', 'request_id',
                 'started', 'responded', 'streaming', 'status',
                 'response_bytes', 'head_only', 'error', 'pending', 'last_write',
                 'is_event_stream', '__weakref__')

    def __init__(self, protocol: HttpProtocol):
        self._protocol = protocol
        self.method = ''
        self.path = '/'
        self.raw_path = '/'
        self.query_string = ''
        self._query = None
        self.headers: dict[str, str] = {}
        self.body = b''
        self._data = None
        self._parsed = False
        self._cookies = None
        self.http_version = b'1.1'
        self.keep_alive = True
        self.expect_continue = False
        self.request_id: int | None = None
        self.started = 0.0
        self.responded = False
        self.streaming = False
        self.status = 0
        self.response_bytes = 0
        self.head_only = False
        self.error: tuple[int, str] | None = None
        self.pending = None
        self.last_write = 0.0
        self.is_event_stream = False

    # -- request ----------------------------------------------------------

    @property
    def query(self) -> dict | None:
        if self._query is None and self.query_string:
            self._query = parse_query(self.query_string)
        return self._query

    @property
    def data(self) -> Any:
        if not self._parsed:
            self._data = parse_body(self.body, self.headers.get('content-type'))
            self._parsed = True
        return self._data

    @property
    def content_type(self) -> str:
        return self.headers.get('content-type', '')

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get('cookie'))
        return self._cookies

    @property
    def socket_address(self) -> str | None:
        return self._protocol.peer

    @property
    def remote_address(self) -> str | None:
        protocol = self._protocol
        if protocol.trusted_peer:
            forwarded = self.headers.get('x-forwarded-for')
            if forwarded:
                return forwarded.split(',')[0].strip()
        return protocol.peer

    address = remote_address

    @property
    def is_secure(self) -> bool:
        return self._protocol.is_secure

    @property
    def connection_closed(self) -> bool:
        return self._protocol.closed

    # -- answers ----------------------------------------------------------

    def respond(self, data: Any = None, status: int = 200, headers: Any = None,
                cookies: dict | None = None) -> bool:
        """Answer with ``data`` (encoded like a worker's return value)."""
        body, content_type = encode_body(data)
        return self._protocol.send_response(self, status, headers, cookies, body, content_type)

    def respond_redirect(self, url: str, status: int = 302,
                         cookies: dict | None = None) -> bool:
        return self.respond(None, status, {'Location': url}, cookies)

    def respond_file(self, path: str, headers: dict | None = None) -> bool:
        """Answer with a file, honouring conditional and range headers."""
        return self._protocol.send_static(self, prepare_file(
            path, self.method, self.headers, headers))

    def response_stream(self, content_type: str | None = None, headers: Any = None,
                        cookies: dict | None = None) -> bool:
        return self._protocol.start_stream(
            self, content_type or 'text/event-stream', headers, cookies)

    def response_ndjson(self, headers: Any = None, cookies: dict | None = None) -> bool:
        return self.response_stream('application/x-ndjson', headers, cookies)

    def send_chunk(self, data: str | bytes) -> bool:
        if isinstance(data, str):
            data = data.encode()
        return self._protocol.stream_write(self, data)

    def send_event(self, data: Any = None, event: str | None = None,
                   event_id: Any = None, retry: int | None = None) -> bool:
        return self._protocol.stream_write(self, format_event(data, event, event_id, retry))

    def send_ndjson(self, obj: Any) -> bool:
        return self._protocol.stream_write(
            self, (json.dumps(obj, separators=(',', ':')) + '\n').encode())

    def response_stream_end(self) -> bool:
        return self._protocol.end_stream(self)

    def __repr__(self) -> str:
        return f'<ClientConnection {self.method} {self.path} from {self._protocol.peer}>'


class _BodyReader(asyncio.BufferedProtocol):
    """The transport's protocol while a large body is read into its buffer.

    Through httptools each body byte is copied twice (into the event loop's
    ``bytes`` and into the ``on_body`` slice) before it reaches the request's
    buffer. For a large body with a Content-Length, the connection's protocol
    is switched to this reader, the kernel writes straight into the buffer,
    and the connection switches back when the last byte arrives.
    """

    __slots__ = ('owner',)

    def __init__(self, owner: HttpProtocol):
        self.owner = owner

    def get_buffer(self, sizehint: int) -> memoryview:
        owner = self.owner
        return memoryview(owner.body)[owner.body_size:]

    def buffer_updated(self, nbytes: int) -> None:
        self.owner.direct_body_received(nbytes)

    def connection_lost(self, exc) -> None:
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        self.owner.resume_writing()


class HttpProtocol(asyncio.Protocol):
    """One client connection: parsing, ordering, limits and writing."""

    # Slots keep an idle connection small: the dispatcher keeps thousands
    # of them open for event streams.
    __slots__ = ('dispatcher', 'settings', 'is_secure', 'loop', 'transport', 'parser',
                 'peer', 'trusted_peer', 'closed', 'queue', 'active', 'parsing', 'url',
                 'header_bytes', 'header_count', 'body', 'body_size', 'headers_done',
                 'direct_body', 'open_line', 'deadline', 'deadline_status',
                 'reading_paused', 'writing_paused', 'drain_waiter', 'close_after',
                 'requests_served', 'header_timeout', 'keepalive_timeout', 'access_log',
                 'max_headers', 'max_header_size', '__weakref__')

    def __init__(self, dispatcher: Dispatcher, settings: Settings, is_secure: bool):
        self.dispatcher = dispatcher
        self.settings = settings
        self.is_secure = is_secure
        self.loop = dispatcher._loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: str | None = None
        self.trusted_peer = False
        self.closed = False
        self.queue: list[ClientConnection] = []
        self.active: ClientConnection | None = None
        self.parsing: ClientConnection | None = None
        self.url = b''
        self.header_bytes = 0
        self.header_count = 0
        self.body: bytes | bytearray = b''
        self.body_size = 0
        self.headers_done = False
        self.direct_body = False
        self.open_line = 0
        self.deadline = 0.0
        self.deadline_status = 0
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.close_after = False
        self.requests_served = 0
        # Limits read on every request, copied out of settings once.
        self.header_timeout = settings.header_timeout
        self.keepalive_timeout = settings.keepalive_timeout
        self.access_log = settings.access_log
        self.max_headers = settings.max_headers
        self.max_header_size = settings.max_header_size

    # -- connection events ------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info('peername')
        if isinstance(peer, tuple) and peer:
            host = peer[0]
            if host.startswith('::ffff:'):
                host = host[7:]
            self.peer = f'[{host}]:{peer[1]}' if ':' in host else f'{host}:{peer[1]}'
            self.trusted_peer = host in self.settings.trusted_proxies
        else:
            self.peer = str(peer) if peer else None
        dispatcher = self.dispatcher
        if len(dispatcher._connections) >= self.settings.max_connections:
            dispatcher._count_rejected_connection()
            body = error_body('Too many open connections')
            transport.write(build_head(503, b'1.1', None, None, 'application/json',
                                       len(body), False) + body)
            transport.close()
            self.closed = True
            return
        dispatcher._connections.add(self)
        self.set_deadline(self.settings.keepalive_timeout, 0)

    def connection_lost(self, exc) -> None:
        if self.closed and self not in self.dispatcher._connections:
            return
        self.closed = True
        self.transport = None
        self.dispatcher._connections.discard(self)
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        active = self.active
        self.active = None
        self.queue.clear()
        if active is not None:
            if not active.responded or active.streaming:
                self.dispatcher._client_gone(active)
            active.pending = None

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.close_after and self.parsing is None and not self.queue:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            failure = self.parsing.error if self.parsing and self.parsing.error else None
            self.fail(*(failure or (400, 'Invalid request')), cause=err)
        except httptools.HttpParserUpgrade:
            # The request was parsed; no protocol switch is offered, so the
            # bytes after it belong to a protocol we do not speak.
            self.close_after = True
        except httptools.HttpParserInvalidMethodError as err:
            self.fail(400, 'Invalid request method', cause=err)
        except httptools.HttpParserError as err:
            if 'invalid http version' in str(err).lower():
                self.fail(505, 'HTTP version not supported', cause=err)
            else:
                self.fail(400, 'Invalid request', cause=err)
            return
        if self.parsing is not None:
            if not self.headers_done:
                self.bound_open_line(data)
            elif self.direct_body and self.body_size < len(self.body):
                self.transport.set_protocol(_BodyReader(self))

    def direct_body_received(self, nbytes: int) -> None:
        """Count bytes _BodyReader read; finish the request on the last one."""
        self.body_size += nbytes
        if self.body_size < len(self.body):
            return
        self.end_direct_body()
        # The parser still waits for the body it never saw; the next
        # request on this connection starts with a fresh one.
        self.parser = httptools.HttpRequestParser(self)
        self.on_message_complete()

    def end_direct_body(self) -> None:
        self.direct_body = False
        if self.transport is not None and self.transport.get_protocol() is not self:
            self.transport.set_protocol(self)

    def bound_open_line(self, data: bytes) -> None:
        """Limit a header line that has not ended yet.

        httptools reports a header only once its line ends and buffers it
        until then, so the length of the unfinished line is counted here.
        """
        newline = data.rfind(b'\n')
        if newline < 0:
            self.open_line += len(data)
        else:
            self.open_line = len(data) - newline - 1
        if self.open_line > self.settings.max_header_size:
            self.fail(431, 'Request header fields too large')

    # -- parser callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        client = ClientConnection(self)
        self.parsing = client
        self.url = b''
        self.header_bytes = 0
        self.header_count = 0
        self.body = b''
        self.body_size = 0
        self.headers_done = False
        self.direct_body = False
        client.started = now = time.monotonic()
        self.deadline = now + self.header_timeout
        self.deadline_status = 408

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.settings.max_url_length:
            self.parsing.error = (414, 'Request target too long')
            raise ValueError('url too long')

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field: never merged into the request headers
        self.header_count = count = self.header_count + 1
        self.header_bytes = size = self.header_bytes + len(name) + len(value) + 4
        if count > self.max_headers or size > self.max_header_size:
            self.parsing.error = (431, 'Request header fields too large')
            raise ValueError('headers too large')
        key = name.lower().decode('latin-1')
        text = value.decode('latin-1').strip()
        headers = self.parsing.headers
        if key in headers:
            if key == 'host':
                self.parsing.error = (400, 'Duplicate Host header')
                raise ValueError('duplicate host')
            headers[key] += ('; ' if key == 'cookie' else ', ') + text
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        client = self.parsing
        parser = self.parser
        version = parser.get_http_version()
        if version not in _VERSIONS:
            client.error = (505, 'HTTP version not supported')
            raise ValueError('version')
        client.http_version = http_version = _VERSIONS[version]
        client.method = method = parser.get_method().decode('ascii', 'replace')
        client.keep_alive = parser.should_keep_alive()
        self.split_target(client)
        if client.error:
            raise ValueError('target')
        headers = client.headers
        settings = self.settings
        if http_version == b'1.1' and 'host' not in headers:
            client.error = (400, 'Missing Host header')
            raise ValueError('no host')
        length = headers.get('content-length')
        if length is not None and length.isdigit() and int(length) > settings.max_content_length:
            client.error = (413, 'Request body too large')
            raise ValueError('body too large')
        expect = headers.get('expect')
        if expect is not None:
            if expect.lower() != '100-continue':
                client.error = (417, 'Unsupported Expect header')
                raise ValueError('expect')
            client.expect_continue = client.http_version == b'1.1'
            if client.expect_continue and self.active is None and not self.queue:
                # Nothing is answered ahead of it, so the interim answer can go now.
                self.transport.write(_CONTINUE)
                client.expect_continue = False
        if method == 'HEAD':
            client.head_only = True
        self.headers_done = True
        self.open_line = 0
        chunked = 'transfer-encoding' in headers
        if chunked and http_version == b'1.0':
            client.keep_alive = False  # RFC 9112 section 6.1: framing is unreliable
        if length is not None or chunked:
            self.set_deadline(settings.body_timeout, 408)
            if length is not None and length.isdigit() and int(length) > 0:
                # One buffer of the announced size: the body is copied once.
                size = int(length)
                # Nothing reads this buffer before all `size` bytes have arrived.
                self.body = _unfilled_buffer(size)
                self.direct_body = (size >= _DIRECT_BODY_MIN and not chunked
                                    and not self.is_secure)

    def split_target(self, client: ClientConnection) -> None:
        url = self.url
        if not url.startswith(b'/'):
            if url == b'*' and client.method == 'OPTIONS':
                client.raw_path = client.path = '*'
                return
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                client.error = (400, 'Invalid request target')
                return
            path = parsed.path or b'/'
            query = parsed.query or b''
        else:
            path, _, query = url.partition(b'?')
            if b'#' in query:
                query = query.partition(b'#')[0]
            elif b'#' in path:
                path = path.partition(b'#')[0]
        raw = path.decode('latin-1')
        client.raw_path = raw
        if '%' in raw or '.' in raw or '//' in raw or raw[:1] != '/':
            raw = normalize_path(raw)
        # A %00 escape decodes to NUL, which no path may contain.
        if '\x00' in raw:
            client.error = (400, 'Invalid request target')
            return
        client.path = raw
        if query:
            client.query_string = query.decode('latin-1')

    def on_body(self, body: bytes) -> None:
        start = self.body_size
        self.body_size = end = start + len(body)
        if end > self.settings.max_content_length:
            self.parsing.error = (413, 'Request body too large')
            raise ValueError('body too large')
        buffer = self.body
        if buffer.__class__ is bytearray and end <= len(buffer):
            buffer[start:end] = body
        elif not start:
            self.body = body
        else:
            if buffer.__class__ is not bytearray:
                self.body = buffer = bytearray(buffer)
            buffer += body

    def on_message_complete(self) -> None:
        client = self.parsing
        self.parsing = None
        if self.body_size:
            body = self.body
            if body.__class__ is bytearray and len(body) != self.body_size:
                del body[self.body_size:]
            client.body = body
        self.body = b''
        if self.active is None and not self.queue and not self.closed:
            # Nothing is owed ahead of this request: start it without queueing.
            self.active = client
            self.dispatcher._on_request(client)
            return
        self.queue.append(client)
        if self.active is None:
            self.next_request()
        elif len(self.queue) >= MAX_PIPELINED and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    # -- request sequencing -----------------------------------------------

    def next_request(self) -> None:
        while self.active is None and self.queue and not self.closed:
            client = self.queue.pop(0)
            self.active = client
            if self.reading_paused and len(self.queue) < MAX_PIPELINED // 2:
                self.reading_paused = False
                self.transport.resume_reading()
            self.dispatcher._on_request(client)
        if self.active is None and not self.closed:
            if self.parsing is None:
                self.set_deadline(self.settings.keepalive_timeout, 0)
            elif self.parsing.expect_continue and not self.body_size:
                self.transport.write(_CONTINUE)
                self.parsing.expect_continue = False

    def finish(self, client: ClientConnection) -> None:
        """Mark the active request answered and move to the next one."""
        if self.access_log:
            self.dispatcher._on_response_done(client)
        # client.pending and pending.client refer to each other; break the
        # cycle so the request (and its body) is freed at once, not by the GC.
        client.pending = None
        if self.active is not client:
            return
        self.active = None
        self.requests_served += 1
        if not client.keep_alive or self.close_after and not self.queue:
            self.close()
        elif self.queue or self.parsing is not None:
            self.next_request()
        else:
            # Idle now, so the keep-alive deadline runs (next_request's tail).
            self.set_deadline(self.keepalive_timeout, 0)

    def fail(self, status: int, message: str, cause: Exception | None = None) -> None:
        """Answer a request the parser rejected, in order, then close."""
        self.dispatcher._log_bad_request(self, status, message, cause)
        if self.direct_body:
            self.end_direct_body()
        client = self.parsing or ClientConnection(self)
        self.parsing = None
        client.error = (status, message)
        client.keep_alive = False
        self.close_after = True
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self.queue.append(client)
        if self.active is None:
            self.next_request()

    def set_deadline(self, seconds: float, status: int) -> None:
        if seconds:
            self.deadline = time.monotonic() + seconds
            self.deadline_status = status
        else:
            self.deadline = 0.0

    def check_deadline(self, now: float) -> None:
        """Apply the header, body or keep-alive deadline, whichever is running.

        While a request is being read its read deadline applies (408). With
        nothing to read and nothing to answer, the keep-alive deadline
        applies (silent close). A connection busy answering has none.
        """
        if not self.deadline or now < self.deadline or self.closed:
            return
        if self.parsing is not None:
            self.deadline = 0.0
            self.fail(self.deadline_status or 408, 'Request timed out')
        elif self.active is None and not self.queue:
            self.deadline = 0.0
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    # -- writing ----------------------------------------------------------

    def send_response(self, client: ClientConnection, status: int, headers: Any,
                      cookies: Any, body: bytes, content_type: str | None) -> bool:
        if client.responded or client.streaming or self.closed:
            return False
        keep_alive = client.keep_alive and not (self.close_after and not self.queue)
        if headers and keep_alive and _asks_close(headers):
            keep_alive = False
        length = len(body) if body.__class__ is bytes else memoryview(body).nbytes
        if status in _NO_BODY_STATUSES:
            length = 0
            head = build_head(status, client.http_version, headers, cookies, content_type,
                              None, keep_alive)
        elif headers or cookies or not keep_alive or client.http_version != b'1.1':
            head = build_head(status, client.http_version, headers, cookies, content_type,
                              length, keep_alive)
        else:
            # The common case, without the general builder's loop and list.
            head = b'%scontent-length: %d\r\n%s\r\n' % (
                _HEAD_PREFIXES.get((status, content_type))
                or _build_head_prefix(status, content_type), length, _DateCache.get())
        client.responded = True
        client.status = status
        transport = self.transport
        if client.head_only or not length:
            transport.write(head)
        elif length <= _SMALL_BODY:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        client.response_bytes = length
        if not keep_alive:
            client.keep_alive = False
        self.finish(client)
        return True

    def send_error(self, client: ClientConnection, status: int, message: str,
                   headers: Any = None) -> bool:
        return self.send_response(client, status, headers, None, error_body(message),
                                  'application/json')

    def send_static(self, client: ClientConnection, result) -> bool:
        if client.responded or client.streaming or self.closed:
            if result.file is not None:
                result.file.close()
            return False
        keep_alive = client.keep_alive and not (self.close_after and not self.queue)
        head = build_head(result.status, client.http_version, result.headers, None,
                          None, None, keep_alive, own_length=True)
        client.responded = True
        client.status = result.status
        client.keep_alive = keep_alive
        if result.file is None:
            body = result.body
            client.response_bytes = len(body)
            self.transport.write(head if client.head_only or not body else head + body)
            self.finish(client)
            return True
        client.response_bytes = result.length
        self.transport.write(head)
        if client.head_only:
            result.file.close()
            self.finish(client)
            return True
        self.loop.create_task(self._send_file(client, result))
        return True

    async def _send_file(self, client: ClientConnection, result) -> None:
        file = result.file
        try:
            file.seek(result.offset)
            remaining = result.length
            while remaining > 0 and not self.closed:
                chunk = file.read(min(_FILE_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                self.transport.write(chunk)
                if self.writing_paused:
                    self.drain_waiter = self.loop.create_future()
                    await self.drain_waiter
                    self.drain_waiter = None
            if remaining > 0:
                client.keep_alive = False  # the file shrank: framing is broken
        except OSError as err:
            self.dispatcher.log.error('sending a file failed: %s', err)
            client.keep_alive = False
        finally:
            file.close()
        if not self.closed:
            self.finish(client)

    def start_stream(self, client: ClientConnection, content_type: str, headers: Any,
                     cookies: Any) -> bool:
        if client.responded or client.streaming or self.closed:
            return False
        chunked = client.http_version == b'1.1'
        keep_alive = chunked and client.keep_alive and not (self.close_after and not self.queue)
        extra = dict(headers) if headers else {}
        if not any(k.lower() == 'cache-control' for k in extra):
            extra['Cache-Control'] = 'no-cache'
        head = build_head(200, client.http_version, extra, cookies, content_type, None,
                          keep_alive, chunked=chunked)
        client.keep_alive = keep_alive
        client.streaming = True
        client.status = 200
        client.is_event_stream = content_type.startswith('text/event-stream')
        client.last_write = time.monotonic()
        self.transport.write(head)
        if client.head_only:
            # HEAD gets the stream's headers only. The response is complete
            # now, so the stream's first data finds its client gone.
            client.responded = True
            self.finish(client)
        return True

    def stream_write(self, client: ClientConnection, data: bytes) -> bool:
        if not client.streaming or self.closed or self.active is not client:
            return False
        size = len(data)
        if not size:
            return True
        client.response_bytes += size
        client.last_write = time.monotonic()
        transport = self.transport
        if client.http_version == b'1.1':
            transport.writelines((b'%x\r\n' % size, data, b'\r\n'))
        else:
            transport.write(data)
        if transport.get_write_buffer_size() > self.settings.stream_buffer_limit:
            self.dispatcher.log.warning(
                'client %s reads its stream too slowly (%d bytes unsent); closing it',
                self.peer, transport.get_write_buffer_size())
            self.dispatcher._count_slow_reader()
            transport.abort()
            return False
        return True

    def abort_stream(self, client: ClientConnection) -> None:
        """Cut a stream short so the client can tell it is incomplete.

        The connection closes without the chunked terminator (HTTP/1.1) and
        before any further data (HTTP/1.0).
        """
        client.responded = True
        if self.active is client and self.transport is not None:
            self.transport.abort()
            self.closed = True

    def end_stream(self, client: ClientConnection) -> bool:
        if not client.streaming or client.responded:
            return False
        client.responded = True
        if self.closed or self.active is not client:
            return False
        if client.http_version == b'1.1':
            self.transport.write(b'0\r\n\r\n')
        else:
            client.keep_alive = False
        self.finish(client)
        return True

