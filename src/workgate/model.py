"""Request and Response objects, and the body conventions both sides share.

Body conventions:

- Request ``data``: parsed JSON for ``application/json`` (and ``+json``)
  bodies, a dict of fields for ``application/x-www-form-urlencoded`` (a field
  given twice maps to the list of its values), the raw bytes otherwise, and
  None when there is no body. A JSON body that does not parse stays raw bytes.
- Response ``data``: dict, list, tuple, int, float and bool become JSON;
  str becomes UTF-8 text; bytes-like values are sent as
  ``application/octet-stream``; None is an empty body. A ``Content-Type``
  the handler sets wins over these defaults.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from json import encoder as json_encoder
from typing import Any

from . import messages
from .constants import DEFERRED  # noqa: F401  (re-exported for convenience)
from .routing import parse_query

__all__ = ['Request', 'Response', 'RejectRequest', 'ApiException',
           'encode_body', 'parse_body', 'parse_cookies', 'format_cookie']

JSON_TYPE = 'application/json'
TEXT_TYPE = 'text/plain; charset=utf-8'
OCTET_TYPE = 'application/octet-stream'
EVENT_STREAM_TYPE = 'text/event-stream'
NDJSON_TYPE = 'application/x-ndjson'


class ApiException(Exception):
    """Base class of workgate's exceptions."""


class RejectRequest(ApiException):
    """Stop a request in a check or handler and answer ``data`` with ``status``.

    In a dispatcher check (``do_check``, ``do_check_sync``) respond first,
    then raise it with no arguments. In a worker it becomes the answer.
    """

    def __init__(self, data: Any = None, status: int = 403):
        super().__init__(data, status)
        self.data = data if data is not None else {'error': 'Rejected'}
        self.status = status


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f'{type(value).__name__} is not JSON serializable')


# One reusable encoder: json.dumps() builds a new one per call when given
# separators, which costs more than encoding a small answer.
_json_encoder = json.JSONEncoder(separators=(',', ':'), default=_json_default)


# The markers dict of the shared C encoder below. The C encoder adds the id
# of each list and dict it enters and removes it on the way out, which is how
# it detects a circular value. Only one thread may use them (_ENCODER_THREAD),
# one call at a time.
_markers: dict = {}
_ENCODER_THREAD = threading.get_ident()
_encoder_busy = False


def _make_shared_encoder() -> Callable[[Any, int], list] | None:
    """Build once the C encoder that JSONEncoder.encode() builds per call.

    Returns None when the ``_json`` accelerator is missing or its signature
    differs.
    """
    make = json_encoder.c_make_encoder
    if make is None:
        return None
    encoder = _json_encoder
    try:
        return make(_markers, encoder.default, json_encoder.encode_basestring_ascii,
                    encoder.indent, encoder.key_separator, encoder.item_separator,
                    encoder.sort_keys, encoder.skipkeys, encoder.allow_nan)
    except TypeError:
        return None


_shared_encoder = _make_shared_encoder()


def _encode_json(value: Any) -> str:
    """Encode ``value`` as compact JSON, exactly as ``_json_encoder.encode`` does.

    The thread that imported this module uses the shared C encoder. Other
    threads, and a call made while that encoder runs (from a ``default``
    conversion, say), use ``_json_encoder.encode``, which builds its own.
    """
    global _encoder_busy
    if (_shared_encoder is None or _encoder_busy
            or threading.get_ident() != _ENCODER_THREAD):
        return _json_encoder.encode(value)
    _encoder_busy = True
    try:
        return ''.join(_shared_encoder(value, 0))
    except BaseException:
        # An error leaves the ids of the containers it was inside.
        _markers.clear()
        raise
    finally:
        _encoder_busy = False


def encode_body(data: Any) -> tuple[bytes | memoryview, str | None]:
    """Return (body, default content type) for a response ``data`` value."""
    if data is None:
        return b'', None
    cls = data.__class__
    if cls is dict or cls is list:
        return _encode_json(data).encode(), JSON_TYPE
    if cls is str:
        return data.encode(), TEXT_TYPE
    if cls is bytes or cls is bytearray or cls is memoryview:
        return data, OCTET_TYPE
    if isinstance(data, str):
        return str(data).encode(), TEXT_TYPE
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), OCTET_TYPE
    return _encode_json(data).encode(), JSON_TYPE


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ''
    return content_type.partition(';')[0].strip().lower()


def parse_body(body: bytes | memoryview | None, content_type: str | None) -> Any:
    """Decode a request body the way ``Request.data`` promises."""
    if body is None or len(body) == 0:
        return None
    media = _media_type(content_type)
    if media == JSON_TYPE or media.endswith('+json'):
        try:
            return json.loads(body if body.__class__ is bytes else bytes(body))
        except ValueError:
            return bytes(body)
    if media == 'application/x-www-form-urlencoded':
        try:
            text = bytes(body).decode('utf-8')
        except UnicodeDecodeError:
            return bytes(body)
        return parse_query(text) or {}
    return body if body.__class__ is bytes else bytes(body)


def parse_cookies(raw: str | None) -> dict[str, str]:
    """Parse a Cookie header into a dict; later duplicates do not override."""
    cookies: dict[str, str] = {}
    if not raw:
        return cookies
    for part in raw.split(';'):
        name, sep, value = part.partition('=')
        name = name.strip()
        if not sep or not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies.setdefault(name, value)
    return cookies


def format_cookie(name: str, value: Any) -> str:
    """Build a Set-Cookie value from ``name`` and a str or an options dict.

    An options dict has ``value`` plus any of ``path``, ``domain``,
    ``max_age``, ``expires``, ``secure``, ``httponly`` and ``samesite``.
    None deletes the cookie (``Max-Age=0``).
    """
    if value is None:
        return f'{name}=; Max-Age=0'  # None deletes the cookie
    if isinstance(value, dict):
        options = dict(value)
        text = f'{name}={options.pop("value", "")}'
        for key, option in options.items():
            attr = key.replace('_', '-').lower()
            if option is True:
                text += f'; {attr}'
            elif option not in (None, False):
                text += f'; {attr}={option}'
        return text
    return f'{name}={value}'


class Request:
    """One HTTP request as a worker sees it.

    ``query`` is a dict (None without a query string), ``headers`` has
    lower-case keys, ``data`` is parsed lazily from the body on first use,
    ``context`` is what ``Dispatcher.on_request_accepted`` returned.
    """

    __slots__ = (
        'request_id', 'method', 'path', 'query', 'headers', 'content_type',
        'path_params', 'remote_address', 'context',
        '_data', '_body', '_parsed', '_cookies', '_channel')

    def __init__(
            self, request_id: int, method: str, path: str, query: dict | None = None,
            data: Any = None, headers: dict | None = None,
            content_type: str | None = None, remote_address: str | None = None,
            context: Any = None):
        self.request_id = request_id
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else {}
        self.content_type = content_type
        self.path_params: dict = {}
        self.remote_address = remote_address
        self.context = context
        self._data = data
        self._body = None
        self._parsed = True
        self._cookies = None
        self._channel = None

    @classmethod
    def _from_message(cls, message: tuple, channel) -> Request:
        (_, request_id, method, path, query, headers, content_type,
         remote_address, context, body, data) = message
        request = cls.__new__(cls)
        request.request_id = request_id
        request.method = method
        request.path = path
        request.query = query
        request.headers = headers
        request.content_type = content_type
        request.path_params = {}
        request.remote_address = remote_address
        request.context = context
        request._cookies = None
        request._channel = channel
        if body is None:
            request._data = data
            request._body = None
            request._parsed = True
        else:
            request._data = None
            request._body = body
            request._parsed = False
        return request

    def _to_message(self) -> tuple:
        body = self._body if not self._parsed else None
        return (messages.REQUEST, self.request_id, self.method, self.path,
                self.query, self.headers, self.content_type, self.remote_address,
                self.context, messages.wrap_body(body), self._data)

    @property
    def data(self) -> Any:
        if not self._parsed:
            self._data = parse_body(self._body, self.content_type)
            self._parsed = True
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value
        self._parsed = True

    @property
    def body(self) -> bytes:
        """Raw request body bytes (empty when the request had none)."""
        if self._body is None:
            return b''
        if self._body.__class__ is not bytes:
            self._body = bytes(self._body)
        return self._body

    @property
    def cookies(self) -> dict[str, str]:
        if self._cookies is None:
            self._cookies = parse_cookies(self.headers.get('cookie'))
        return self._cookies

    def _require_channel(self):
        if self._channel is None:
            raise RuntimeError(
                'this Request is not attached to a worker; respond() and the '
                'streaming calls work only inside a worker process')
        return self._channel

    def respond(self, data: Any = None, status: int = 200,
                headers: dict | None = None, cookies: dict | None = None) -> None:
        """Send the response of a request whose handler returned DEFERRED."""
        self._require_channel().send_response(
            self.request_id, Response(self.request_id, data, status, headers, cookies))

    def response_stream(self, content_type: str | None = None,
                        headers: dict | None = None,
                        cookies: dict | None = None) -> None:
        """Start a streamed response, ``text/event-stream`` by default."""
        self._require_channel().stream_open(
            self.request_id, content_type or EVENT_STREAM_TYPE, headers, cookies)

    def response_ndjson(self, headers: dict | None = None,
                        cookies: dict | None = None) -> None:
        """Start a streamed answer of newline-delimited JSON values."""
        self.response_stream(NDJSON_TYPE, headers, cookies)

    def send_chunk(self, data: str | bytes) -> None:
        """Send raw bytes (or UTF-8 text) on an open stream."""
        if isinstance(data, str):
            data = data.encode()
        self._require_channel().stream_data(self.request_id, data)

    def send_event(self, data: Any = None, event: str | None = None,
                   event_id: Any = None, retry: int | None = None) -> None:
        """Send one Server-Sent Event; dict, list and numbers are sent as JSON."""
        self._require_channel().stream_data(
            self.request_id, format_event(data, event, event_id, retry))

    def send_ndjson(self, obj: Any) -> None:
        """Send one JSON value as a line of an NDJSON stream."""
        line = _encode_json(obj) + '\n'
        self._require_channel().stream_data(self.request_id, line.encode())

    def response_stream_end(self) -> None:
        """End the stream; the dispatcher finishes the HTTP response."""
        self._require_channel().stream_end(self.request_id)

    def __repr__(self) -> str:
        return f'<Request {self.request_id} {self.method} {self.path}>'


def _single_line(value: Any, field: str) -> str:
    text = str(value)
    if '\n' in text or '\r' in text:
        raise ValueError(f'SSE {field} must not contain a line break: {text!r}')
    return text


def format_event(data: Any = None, event: str | None = None,
                 event_id: Any = None, retry: int | None = None) -> bytes:
    """Build one ``text/event-stream`` event, ending with a blank line.

    Text with line breaks becomes one ``data:`` line per line; values that
    are not text (dict, list, numbers, bool) are sent as one line of JSON.
    """
    lines = []
    if event_id is not None:
        lines.append('id: ' + _single_line(event_id, 'id'))
    if event is not None:
        lines.append('event: ' + _single_line(event, 'event'))
    if retry is not None:
        lines.append(f'retry: {int(retry)}')
    if data is not None:
        if isinstance(data, bytes):
            data = data.decode('utf-8', errors='replace')
        if not isinstance(data, str):
            data = _encode_json(data)
        for line in data.replace('\r\n', '\n').replace('\r', '\n').split('\n'):
            lines.append('data: ' + line)
    if not lines:
        lines.append(':')
    return ('\n'.join(lines) + '\n\n').encode()


class Response:
    """A handler's answer: ``data`` with ``status``, extra headers and cookies.

    ``request_id`` is filled in by the worker, so handlers may pass None.
    On the dispatcher side (``on_response``), ``data`` is decoded back from
    the body that was sent (JSON, text or bytes), on first use.
    """

    __slots__ = ('request_id', 'status', '_data', 'headers', 'cookies',
                 '_body', '_content_type', '_decoded')

    def __init__(self, request_id: int | None = None, data: Any = None,
                 status: int = 200, headers: dict | None = None,
                 cookies: dict | None = None):
        self.request_id = request_id
        self.status = status
        self._data = data
        self.headers = headers
        self.cookies = cookies
        self._body = None
        self._content_type = None
        self._decoded = True

    @classmethod
    def _received(cls, request_id, status, headers, cookies, body, content_type):
        response = cls.__new__(cls)
        response.request_id = request_id
        response.status = status
        response.headers = headers
        response.cookies = cookies
        response._body = body
        response._content_type = content_type
        response._data = None
        response._decoded = False
        return response

    @property
    def data(self) -> Any:
        if not self._decoded:
            self._decoded = True
            body = self._body
            media = _media_type(self._content_type)
            if body is None or len(body) == 0:
                self._data = None
            elif media == JSON_TYPE:
                try:
                    self._data = json.loads(bytes(body))
                except ValueError:
                    self._data = bytes(body)
            elif media.startswith('text/'):
                self._data = bytes(body).decode('utf-8', errors='replace')
            else:
                self._data = bytes(body)
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value
        self._decoded = True

    @property
    def body(self) -> bytes | memoryview:
        """The encoded body as sent to the client."""
        if self._body is None:
            self._body, self._content_type = encode_body(self._data)
        return self._body

    def __repr__(self) -> str:
        return f'<Response {self.request_id} {self.status}>'
