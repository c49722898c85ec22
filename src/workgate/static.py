"""Static files: mounts, safe path resolution and file responses.

This module does no network I/O. The dispatcher's HTTP protocol calls
:func:`serve_static` with a normalised request path and sends the
:class:`StaticFile` it returns. ``client.respond_file()`` calls
:func:`prepare_file`.

A request path becomes a file in these steps, and only these:

1. Mounts are tried longest prefix first. A prefix matches at a segment
   boundary: ``/static/`` matches ``/static``, ``/static/`` and
   ``/static/a.css`` but not ``/staticx``. When a non-authoritative mount
   has no such file, the next matching mount is tried.
2. The rest of the path is rejected when it contains a NUL byte, a
   backslash, an encoded slash (``%2F``), an empty, ``.`` or ``..``
   segment, or is absolute.
3. ``os.path.realpath`` resolves symlinks. The result must be the mount's
   root or lie below it, so a symlink may point anywhere inside the root
   but never out of it.
4. The resolved path is opened one component at a time from the root with
   ``O_NOFOLLOW``. A directory replaced by a symlink after step 3 then
   fails to open instead of leading outside the root. ``O_NONBLOCK`` keeps
   the open of a FIFO from blocking.
5. ``fstat`` of the open descriptor decides the type. A directory is
   replaced by its ``index.html``, which goes through steps 3 to 5 again.
   Anything else that is not a regular file is not found.

Preconditions are evaluated in the order of RFC 7232 section 6:
If-Match, If-Unmodified-Since (412), If-None-Match, If-Modified-Since
(304), then Range with If-Range (206 or 416). Preconditions apply to GET
and HEAD only, and Range to GET only, so a HEAD response always describes
the whole file.
"""

from __future__ import annotations

import calendar
import email.utils
import errno
import json
import logging
import mimetypes
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = [
    'SMALL_FILE_MAX',
    'StaticFile',
    'StaticMount',
    'build_mounts',
    'prepare_file',
    'serve_static',
]

logger = logging.getLogger('workgate.static')

# Files up to this size, in bytes, are read into StaticFile.body. Larger
# files are handed over as an open file, so they are never read whole.
SMALL_FILE_MAX = 64 * 1024

INDEX_FILE = 'index.html'

_SERVED_METHODS = ('GET', 'HEAD')
_MOUNT_KEYS = frozenset({'path', 'headers', 'authoritative'})

# The server sets these framing headers for each response, so neither a
# mount nor respond_file() may supply them.
_FRAMING_HEADERS = frozenset(
    {'content-length', 'content-range', 'transfer-encoding', 'connection'})

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL_RE = re.compile(r'[\x00-\x08\x0a-\x1f\x7f]')

# open() errors that mean "no servable file here" rather than a server fault.
_NOT_FOUND_ERRNOS = frozenset(
    code for code in (
        errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG,
        errno.EACCES, errno.EPERM, errno.ENXIO, errno.ENODEV,
        # FreeBSD and DragonFly return EMLINK for O_NOFOLLOW on a symlink.
        getattr(errno, 'EMLINK', None),
    ) if code is not None)
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

_DIR_FLAGS = (os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0)
              | getattr(os, 'O_CLOEXEC', 0))
_FILE_FLAGS = (os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0)
               | getattr(os, 'O_NOCTTY', 0) | getattr(os, 'O_CLOEXEC', 0))
_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_CAN_OPEN_BENEATH = os.open in os.supports_dir_fd and _NOFOLLOW != 0

# Python's built-in table, not /etc/mime.types, so the result is the same
# on every machine. The fixes correct and extend it for browsers.
_MIME_TYPES = mimetypes.MimeTypes()
_CONTENT_TYPE_FIXES = {
    '.js': 'text/javascript',
    '.mjs': 'text/javascript',
    '.cjs': 'text/javascript',
    '.json': 'application/json',
    '.map': 'application/json',
    '.webmanifest': 'application/manifest+json',
    '.wasm': 'application/wasm',
    '.svg': 'image/svg+xml',
    '.webp': 'image/webp',
    '.avif': 'image/avif',
    '.woff': 'font/woff',
    '.woff2': 'font/woff2',
    '.ttf': 'font/ttf',
    '.otf': 'font/otf',
    '.md': 'text/markdown',
    '.gz': 'application/gzip',
}
_DEFAULT_CONTENT_TYPE = 'application/octet-stream'
_UTF8_TYPES = frozenset({'text/javascript', 'application/javascript',
                         'application/json'})

_ETAG_RE = re.compile(r'(W/)?"([^"]*)"')
_RANGE_SPEC_RE = re.compile(r'([0-9]*)-([0-9]*)\Z')


@dataclass(frozen=True, slots=True)
class StaticMount:
    """One entry of ``Dispatcher(static_routes=...)``."""

    prefix: str
    root: str
    headers: dict[str, str] = field(default_factory=dict)
    authoritative: bool = False


@dataclass(slots=True)
class StaticFile:
    """A response for the protocol to send.

    The protocol adds Date, Server and Connection. It sends ``body`` when
    ``file`` is None, and otherwise ``length`` bytes of ``file`` from
    ``offset`` and then closes ``file``. The file may shrink while it is
    sent, so a short read must end the connection. A HEAD response carries
    neither body nor file, but its Content-Length is that of the GET
    response.
    """

    status: int
    headers: list[tuple[str, str]]
    file_path: str | None = None
    body: bytes = b''
    file: BinaryIO | None = None
    offset: int = 0
    length: int = 0


# --- configuration ---------------------------------------------------------

def build_mounts(static_routes: dict | None) -> list[StaticMount]:
    """Validate ``static_routes`` and return mounts, longest prefix first.

    A value is a directory path, or a dict with ``path`` and optional
    ``headers`` and ``authoritative``. ``~`` is expanded and the path is
    resolved once, now; the directory need not exist yet. Raises ValueError
    for any invalid entry.
    """
    if not static_routes:
        return []
    if not isinstance(static_routes, dict):
        raise ValueError(
            f'static_routes must be a dict of URL prefix to directory, '
            f'got {type(static_routes).__name__}')

    mounts: list[StaticMount] = []
    seen: dict[str, str] = {}
    for prefix, value in static_routes.items():
        _check_prefix(prefix)
        key = prefix.rstrip('/')
        if key in seen:
            raise ValueError(
                f'static_routes prefixes {seen[key]!r} and {prefix!r} name '
                f'the same mount; keep one of them')
        seen[key] = prefix
        mounts.append(_build_mount(prefix, value))

    mounts.sort(key=lambda mount: len(mount.prefix.rstrip('/')), reverse=True)
    return mounts


def _check_prefix(prefix: object) -> None:
    if not isinstance(prefix, str):
        raise ValueError(
            f'static_routes prefix {prefix!r} must be a str such as '
            f"'/static/'")
    if not prefix.startswith('/'):
        raise ValueError(
            f"static_routes prefix {prefix!r} must start with '/'")
    segments = prefix.strip('/').split('/')
    if prefix != '/' and any(s in ('', '.', '..') for s in segments):
        raise ValueError(
            f'static_routes prefix {prefix!r} contains an empty, . or .. '
            f'segment, so no normalised request path can match it')
    if '\x00' in prefix or '\\' in prefix:
        raise ValueError(
            f'static_routes prefix {prefix!r} contains a NUL byte or a '
            f'backslash')


def _build_mount(prefix: str, value: object) -> StaticMount:
    where = f'static_routes[{prefix!r}]'
    headers: dict[str, str] = {}
    authoritative = False

    if isinstance(value, dict):
        unknown = sorted(str(key) for key in value if key not in _MOUNT_KEYS)
        if unknown:
            raise ValueError(
                f'{where} has unknown keys {unknown}; expected '
                f"'path', 'headers' and 'authoritative'")
        if 'path' not in value:
            raise ValueError(f"{where} is a dict without the required 'path'")
        path = value['path']
        if value.get('headers') is not None:
            headers = _checked_headers(value['headers'], f"{where}['headers']")
        authoritative = value.get('authoritative', False)
        if not isinstance(authoritative, bool):
            raise ValueError(
                f"{where}['authoritative'] must be True or False, "
                f'got {authoritative!r}')
    else:
        path = value

    if not isinstance(path, str | os.PathLike):
        raise ValueError(
            f'{where} path must be a str or os.PathLike, '
            f'got {type(path).__name__}')
    path = os.fspath(path)
    if not isinstance(path, str) or not path or '\x00' in path:
        raise ValueError(f'{where} path {path!r} is not a valid directory path')

    root = os.path.realpath(os.path.expanduser(path))
    return StaticMount(prefix, root, headers, authoritative)


def _checked_headers(headers: object, where: str) -> dict[str, str]:
    """Return a copy of ``headers`` after checking names and values."""
    if not isinstance(headers, dict):
        raise ValueError(
            f'{where} must be a dict of header name to value, '
            f'got {type(headers).__name__}')
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(
                f'{where} entry {name!r}: {value!r} must map a str to a str')
        if not _TOKEN_RE.match(name):
            raise ValueError(
                f'{where} header name {name!r} is not a valid HTTP field '
                f'name (no spaces, CR, LF or separators)')
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(
                f'{where} header {name!r} is set by the server for each '
                f'response and cannot be configured')
        if _CONTROL_RE.search(value):
            raise ValueError(
                f'{where} header {name!r} has a value with CR, LF or '
                f'another control character')
        checked[name] = value
    return checked


# --- entry points -----------------------------------------------------------

def serve_static(mounts: list[StaticMount], method: str, path: str,
                 headers: dict[str, str]) -> StaticFile | None:
    """Serve ``path`` from the first mount that has it.

    ``path`` comes from ``routing.normalize_path`` and ``headers`` has
    lower-case names. Returns None to let sync handlers and pools handle
    the request: no mount matches, or every matching mount is
    non-authoritative and has no such file. An authoritative mount ends the
    search with a 404 for a missing file or a rejected path.
    """
    for mount in mounts:
        relative = _relative_path(mount.prefix, path)
        if relative is None:
            continue

        opened = _open_under_root(mount.root, relative)
        if opened.fd is None:
            if mount.authoritative:
                return _error(404, 'Not found', opened.path)
            continue

        return _respond(opened, method, headers, mount.headers,
                        other_methods_allowed=False)
    return None


def prepare_file(file_path: str, method: str, headers: dict[str, str],
                 extra_headers: dict[str, str] | None = None) -> StaticFile:
    """Build the response for ``client.respond_file(file_path, headers)``.

    The path is the application's choice, so no root applies and symlinks
    are followed. A handler may send a file for any method, but
    preconditions apply to GET and HEAD only and Range to GET only. A
    missing, unreadable or non-regular file gives a 404. Raises ValueError
    for invalid ``extra_headers``.
    """
    extra = _checked_headers(extra_headers or {}, 'respond_file headers')
    path = os.fsdecode(file_path)

    opened = _Opened(None, path, None)
    if '\x00' not in path:
        opened = _open_path(path)
    if opened.fd is None:
        return _error(404, 'Not found', path)
    return _respond(opened, method, headers, extra, other_methods_allowed=True)


# --- path resolution -------------------------------------------------------

@dataclass(slots=True)
class _Opened:
    """A regular file opened for reading, or ``fd`` None when none was."""

    fd: int | None
    path: str | None
    stat: os.stat_result | None


def _relative_path(prefix: str, path: str) -> str | None:
    """Return the part of ``path`` below ``prefix``, or None if outside it."""
    base = prefix.rstrip('/')
    if path == base:
        return ''
    if not path.startswith(base + '/'):
        return None
    return path[len(base) + 1:]


def _is_safe_relative(relative: str) -> bool:
    if '\x00' in relative or '\\' in relative:
        return False
    if relative.startswith('/') or os.path.isabs(relative):
        return False
    segments = relative.split('/')
    if segments[-1] == '':
        segments.pop()  # a trailing slash requests a directory
    for segment in segments:
        if segment in ('', '.', '..'):
            return False
        if '%2f' in segment.lower():
            return False
    return True


def _open_under_root(root: str, relative: str) -> _Opened:
    if not _is_safe_relative(relative):
        attempted = None if '\x00' in relative else os.path.join(root, relative)
        return _Opened(None, attempted, None)

    lexical = os.path.join(root, relative)
    target = os.path.realpath(lexical)
    opened = _open_beneath(root, target, lexical)
    if opened.fd is None:
        return opened

    if stat.S_ISDIR(opened.stat.st_mode):
        os.close(opened.fd)
        lexical = os.path.join(target, INDEX_FILE)
        target = os.path.realpath(lexical)
        opened = _open_beneath(root, target, lexical)
        if opened.fd is None:
            return opened
    elif relative.endswith('/'):
        # A trailing slash names a directory, and a file is not one.
        os.close(opened.fd)
        return _Opened(None, target, None)

    return _keep_regular_file(opened)


def _open_beneath(root: str, target: str, lexical: str) -> _Opened:
    """Open ``target``, a realpath, without following any symlink below root.

    A target outside the root is reported by its ``lexical`` path, the one
    the request named, so that the outside path reaches no hook or log.
    """
    inside = target == root or target.startswith(root.rstrip(os.sep) + os.sep)
    if not inside:
        return _Opened(None, lexical, None)

    try:
        if _CAN_OPEN_BENEATH:
            fd = _open_components(root, target)
        else:
            # NOTE: without openat() and O_NOFOLLOW (Windows), a directory
            # swapped for a symlink between realpath() and open() is followed.
            fd = os.open(target, _FILE_FLAGS)
    except OSError as error:
        return _not_opened(target, error)

    try:
        return _Opened(fd, target, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise


def _open_components(root: str, target: str) -> int:
    """Open ``target`` below ``root`` with openat(), refusing every symlink."""
    relative = target[len(root):].strip(os.sep)
    components = relative.split(os.sep) if relative else []

    fd = os.open(root, _DIR_FLAGS)
    try:
        for component in components[:-1]:
            next_fd = os.open(component, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        if not components:
            return fd
        file_fd = os.open(components[-1], _FILE_FLAGS | _NOFOLLOW, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return file_fd


def _open_path(path: str) -> _Opened:
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError as error:
        return _not_opened(path, error)
    try:
        opened = _Opened(fd, path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return _keep_regular_file(opened)


def _keep_regular_file(opened: _Opened) -> _Opened:
    """Close anything but a regular file and make the descriptor blocking."""
    if not stat.S_ISREG(opened.stat.st_mode):
        os.close(opened.fd)
        return _Opened(None, opened.path, None)
    if _FILE_FLAGS & getattr(os, 'O_NONBLOCK', 0):
        os.set_blocking(opened.fd, True)
    return opened


def _not_opened(path: str, error: OSError) -> _Opened:
    """Turn an open() error into "not found", or re-raise a server fault."""
    if error.errno not in _NOT_FOUND_ERRNOS:
        raise error
    if error.errno in _PERMISSION_ERRNOS:
        _permission_warnings.warn(path, error)
    return _Opened(None, path, None)


class _RateLimitedWarning:
    """Log at most one permission warning per interval, counting the rest."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last = -interval
        self.suppressed = 0

    def warn(self, path: str, error: OSError) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        self.last = now
        suppressed, self.suppressed = self.suppressed, 0
        logger.warning(
            'static file %r cannot be opened (%s), so the response is 404 '
            '(%d similar warnings suppressed)',
            path, error.strerror, suppressed)


_permission_warnings = _RateLimitedWarning(interval=60.0)


# --- responses --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Validators:
    """ETag and Last-Modified of one file version."""

    etag: str
    mtime_ns: int

    @property
    def mtime(self) -> int:
        """Modification time in whole seconds, as Last-Modified states it."""
        return self.mtime_ns // 1_000_000_000

    def headers(self) -> list[tuple[str, str]]:
        last_modified = email.utils.formatdate(self.mtime, usegmt=True)
        return [('ETag', self.etag), ('Last-Modified', last_modified)]


def _respond(opened: _Opened, method: str, request_headers: dict[str, str],
             extra_headers: dict[str, str], *,
             other_methods_allowed: bool) -> StaticFile:
    """Build the response for an open regular file and take over its fd.

    The fd is closed here unless the response hands it on as ``file``.
    """
    response = None
    try:
        if method not in _SERVED_METHODS and not other_methods_allowed:
            response = _error(405, 'Method not allowed', opened.path)
            response.headers.append(('Allow', ', '.join(_SERVED_METHODS)))
            return response

        st = opened.stat
        validators = _Validators(f'"{st.st_size:x}-{st.st_mtime_ns:x}"',
                                 st.st_mtime_ns)
        if method in _SERVED_METHODS:
            response = _precondition_response(
                opened.path, request_headers, validators, extra_headers)
            if response is not None:
                return response

        response = _content_response(opened, method, request_headers,
                                     validators, extra_headers)
        return response
    finally:
        if response is None or response.file is None:
            os.close(opened.fd)


def _precondition_response(file_path: str | None,
                           request_headers: dict[str, str],
                           validators: _Validators,
                           extra_headers: dict[str, str]) -> StaticFile | None:
    """Return the 412 or 304 response a precondition decides, else None."""
    status = _evaluate_preconditions(request_headers, validators)
    if status == 412:
        return _error(412, 'Precondition failed', file_path)
    if status == 304:
        headers = _merge_headers(validators.headers(), extra_headers)
        return StaticFile(304, headers, file_path)
    return None


def _content_response(opened: _Opened, method: str,
                      request_headers: dict[str, str], validators: _Validators,
                      extra_headers: dict[str, str]) -> StaticFile:
    """Build the 200, 206 or 416 response carrying the file's bytes."""
    size = opened.stat.st_size
    data = None
    if size <= SMALL_FILE_MAX and method != 'HEAD':
        data = _read_up_to(opened.fd, size)
        size = len(data)  # the file may have shrunk since fstat

    byte_range = None
    if method == 'GET' and 'range' in request_headers:
        if _if_range_allows(request_headers.get('if-range'), validators):
            byte_range = _parse_range(request_headers['range'], size)
    if byte_range is _UNSATISFIABLE:
        response = _error(416, 'Range not satisfiable', opened.path)
        response.headers.append(('Content-Range', f'bytes */{size}'))
        return response

    status = 200
    start, end = 0, size - 1
    range_headers = []
    if byte_range is not None:
        status = 206
        start, end = byte_range
        range_headers = [('Content-Range', f'bytes {start}-{end}/{size}')]
    length = end - start + 1

    headers = [
        ('Content-Type', _content_type(opened.path)),
        ('Content-Length', str(length)),
        *validators.headers(),
        ('Accept-Ranges', 'bytes'),
        *range_headers,
    ]
    response = StaticFile(status, _merge_headers(headers, extra_headers),
                          opened.path)
    if method == 'HEAD':
        return response
    if data is not None:
        response.body = data[start:end + 1]
        response.length = len(response.body)
        return response

    response.file = os.fdopen(opened.fd, 'rb')
    response.offset = start
    response.length = length
    return response


def _error(status: int, message: str, file_path: str | None) -> StaticFile:
    """Build a JSON error response. Its message never contains the path."""
    body = json.dumps({'error': message}, separators=(',', ':')).encode()
    headers = [('Content-Type', 'application/json'),
               ('Content-Length', str(len(body)))]
    return StaticFile(status, headers, file_path, body, length=len(body))


def _merge_headers(headers: list[tuple[str, str]],
                   extra: dict[str, str]) -> list[tuple[str, str]]:
    """Let ``extra`` replace headers of the same name, except framing ones."""
    if not extra:
        return headers
    replaced = {name.lower() for name in extra} - _FRAMING_HEADERS
    merged = [(name, value) for name, value in headers
              if name.lower() not in replaced]
    merged.extend((name, value) for name, value in extra.items()
                  if name.lower() in replaced)
    return merged


def _read_up_to(fd: int, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b''.join(chunks)


def _content_type(path: str | None) -> str:
    """Return the Content-Type for a file name, with charset for text."""
    extension = os.path.splitext(path or '')[1].lower()
    content_type = (_CONTENT_TYPE_FIXES.get(extension)
                    or _MIME_TYPES.types_map[True].get(extension)
                    or _MIME_TYPES.types_map[False].get(extension)
                    or _DEFAULT_CONTENT_TYPE)
    if (content_type.startswith('text/') or content_type in _UTF8_TYPES
            or content_type.endswith('+json')):
        return content_type + '; charset=utf-8'
    return content_type


# --- preconditions and ranges -----------------------------------------------

def _evaluate_preconditions(headers: dict[str, str],
                            validators: _Validators) -> int | None:
    """Return 412 or 304 when a precondition decides, else None."""
    etag, mtime = validators.etag, validators.mtime
    if_match = headers.get('if-match')
    if if_match is not None:
        if not _etag_listed(if_match, etag, weak=False):
            return 412
    else:
        since = _parse_http_date(headers.get('if-unmodified-since'))
        if since is not None and mtime > since:
            return 412

    if_none_match = headers.get('if-none-match')
    if if_none_match is not None:
        return 304 if _etag_listed(if_none_match, etag, weak=True) else None
    since = _parse_http_date(headers.get('if-modified-since'))
    if since is not None and mtime <= since:
        return 304
    return None


def _etag_listed(value: str, etag: str, *, weak: bool) -> bool:
    """Check ``etag`` against an If-Match or If-None-Match list.

    Weak comparison ignores the ``W/`` prefix; strong comparison never
    matches a weak tag. ``*`` matches any existing file.
    """
    if value.strip() == '*':
        return True
    opaque = etag.strip('"')
    for match in _ETAG_RE.finditer(value):
        is_weak, candidate = match.group(1), match.group(2)
        if candidate == opaque and (weak or not is_weak):
            return True
    return False


def _if_range_allows(value: str | None, validators: _Validators) -> bool:
    """Decide whether If-Range lets the Range header apply.

    An entity-tag must match strongly. A date must equal Last-Modified, and
    Last-Modified counts as a strong validator only when the file is at
    least one second older than now (a change within the same second would
    keep the same date).
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', 'W/')):
        return value == validators.etag
    date = _parse_http_date(value)
    if date is None or date != validators.mtime:
        return False
    return time.time_ns() - validators.mtime_ns >= 1_000_000_000


def _parse_http_date(value: str | None) -> int | None:
    """Parse an HTTP-date to a Unix timestamp, or None when invalid."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        # HTTP dates are in GMT, and an asctime() date carries no zone.
        return calendar.timegm(parsed[:6]) - (parsed[9] or 0)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


class _Unsatisfiable:
    pass


_UNSATISFIABLE = _Unsatisfiable()


def _parse_range(value: str, size: int) -> tuple[int, int] | _Unsatisfiable | None:
    """Parse a single byte range into an inclusive (start, end).

    Returns None, so that the whole file is sent, for a malformed header,
    another range unit or more than one range.
    """
    unit, equals, range_set = value.partition('=')
    if not equals or unit.strip().lower() != 'bytes':
        return None
    specs = [spec.strip() for spec in range_set.split(',') if spec.strip()]
    if len(specs) != 1:
        return None
    match = _RANGE_SPEC_RE.match(specs[0])
    if match is None:
        return None
    first, last = match.groups()

    try:
        if not first:
            if not last:
                return None
            suffix = int(last)
            if suffix == 0 or size == 0:
                return _UNSATISFIABLE
            return max(0, size - suffix), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:  # more digits than int() accepts
        return None

    if last and end < start:
        return None
    if start >= size:
        return _UNSATISFIABLE
    return start, min(end, size - 1)
