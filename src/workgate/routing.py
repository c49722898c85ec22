"""URL routing: handler patterns, pool prefixes and path normalisation.

Rules kept here, and only here:

- A handler pattern such as ``/user/{id:int}`` matches a path with the same
  number of non-empty segments. A literal segment must be equal; a
  ``{name}``, ``{name:str}``, ``{name:int}`` or ``{name:float}`` segment
  captures the segment and converts it. A value that does not convert means
  the route does not match, so ``/user/abc`` falls through to 404, not 500.
- Routes are tried in the order they were added; the first match wins.
- A path that some route matches under another method answers 405 with the
  union of those routes' methods in ``Allow``.
- A pool route ending in ``/**`` matches that prefix and everything below it
  (``/api/**`` matches ``/api`` and ``/api/x/y``); any other pool route
  matches the path exactly.
- Paths reach the routers already normalised by :func:`normalize_path`:
  percent-decoded except for ``%2F`` (an encoded slash never splits a
  segment), with ``.`` and ``..`` segments resolved so that no path climbs
  above the root.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

__all__ = [
    'api',
    'sync',
    'Router',
    'RouteMatch',
    'compile_pattern',
    'match_prefix',
    'normalize_path',
    'parse_query',
]

_ENCODED_SLASH = re.compile('%2F', re.IGNORECASE)
_INT_RE = re.compile(r'[+-]?[0-9]+\Z')
_FLOAT_RE = re.compile(r'[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z')


def _to_int(text: str) -> int:
    if not _INT_RE.match(text):
        raise ValueError(text)
    return int(text)


def _to_float(text: str) -> float:
    if not _FLOAT_RE.match(text):
        raise ValueError(text)
    return float(text)


CONVERTERS: dict[str, Callable[[str], Any]] = {
    'str': str,
    'int': _to_int,
    'float': _to_float,
}


def api(pattern: str, *methods: str) -> Callable:
    """Mark a Worker or ApiHandler method as the handler of ``pattern``.

    With no methods the handler accepts every method.
    """
    def decorator(func):
        func._api_pattern = pattern
        func._api_methods = [m.upper() for m in methods] if methods else None
        return func
    return decorator


def sync(pattern: str, *methods: str) -> Callable:
    """Mark a Dispatcher method as a handler run inside the dispatcher."""
    def decorator(func):
        func._sync_pattern = pattern
        func._sync_methods = [m.upper() for m in methods] if methods else None
        return func
    return decorator


class _Param:
    __slots__ = ('name', 'convert')

    def __init__(self, name: str, convert: Callable[[str], Any]):
        self.name = name
        self.convert = convert


def compile_pattern(pattern: str) -> tuple:
    """Split a handler pattern into literal strings and parameter slots.

    Raises ValueError for an unknown converter or an empty parameter name.
    """
    compiled = []
    for part in pattern.split('/'):
        if not part:
            continue
        if part.startswith('{') and part.endswith('}'):
            name, _, type_name = part[1:-1].partition(':')
            if not name:
                raise ValueError(f'empty parameter name in pattern {pattern!r}')
            convert = CONVERTERS.get(type_name or 'str')
            if convert is None:
                raise ValueError(
                    f'unknown converter {type_name!r} in pattern {pattern!r}; '
                    f'expected one of {sorted(CONVERTERS)}')
            compiled.append(_Param(name, convert))
        else:
            compiled.append(part)
    return tuple(compiled)


def _match_segments(compiled: tuple, segments: list[str]) -> dict | None:
    params = {}
    for want, got in zip(compiled, segments, strict=True):
        if want.__class__ is str:
            if want != got:
                return None
            continue
        value = got.replace('%2F', '/').replace('%2f', '/') if '%' in got else got
        try:
            params[want.name] = want.convert(value)
        except (ValueError, TypeError, OverflowError):
            return None
    return params


class RouteMatch:
    """Outcome of :meth:`Router.match`.

    ``handler`` is set when a route matched. Otherwise ``allowed`` lists the
    methods of routes that match the path under another method (405), and is
    empty when no route matches the path at all (404).
    """

    __slots__ = ('handler', 'params', 'allowed', 'pattern')

    def __init__(self, handler=None, params=None, allowed=(), pattern=None):
        self.handler = handler
        self.params = params
        self.allowed = allowed
        self.pattern = pattern


_NO_MATCH = RouteMatch()


class Router:
    """Ordered table of (pattern, methods, handler) with typed parameters.

    Paths that equal a route without parameters are looked up in a dict
    first. A path is put in that dict only when no route with parameters of
    its segment count could match it, so the lookup returns what the ordered
    scan would return.
    """

    def __init__(self) -> None:
        self._by_length: dict[int, list[tuple]] = {}
        self._order = 0
        # Maps a static path to its routes. The first match() after an
        # add() builds it.
        self._static: dict[str, tuple] | None = None

    def add(self, pattern: str, methods: Iterable[str] | None, handler: Any) -> None:
        compiled = compile_pattern(pattern)
        method_set = frozenset(m.upper() for m in methods) if methods else None
        entry = (self._order, compiled, method_set, handler, pattern)
        self._order += 1
        self._by_length.setdefault(len(compiled), []).append(entry)
        self._static = None

    def __len__(self) -> int:
        return self._order

    def match(self, method: str, path: str) -> RouteMatch:
        static = self._static
        if static is None:
            static = self._static = self._build_static()
        entries = static.get(path)
        if entries is not None:
            return self._match_static(method, entries)

        segments = [s for s in path.split('/') if s]
        candidates = self._by_length.get(len(segments))
        if not candidates:
            return _NO_MATCH
        allowed: set[str] = set()
        for _, compiled, methods, handler, pattern in candidates:
            params = _match_segments(compiled, segments)
            if params is None:
                continue
            if methods is None or method in methods:
                return RouteMatch(handler, params, (), pattern)
            if method == 'HEAD' and 'GET' in methods:
                return RouteMatch(handler, params, (), pattern)
            allowed.update(methods)
        if allowed:
            return RouteMatch(allowed=tuple(sorted(allowed)))
        return _NO_MATCH

    @staticmethod
    def _match_static(method: str, entries: tuple) -> RouteMatch:
        """Apply the method rules of match() to the routes that equal a path."""
        for methods, handler, pattern in entries:
            if methods is None or method in methods or (method == 'HEAD' and 'GET' in methods):
                # A new params dict each time, because handlers may change
                # path_params.
                return RouteMatch(handler, {}, (), pattern)
        allowed: set[str] = set()
        for methods, _, _ in entries:
            allowed.update(methods)
        return RouteMatch(allowed=tuple(sorted(allowed)))

    def _build_static(self) -> dict[str, tuple]:
        """Map each route path without parameters to the routes equal to it.

        A path is left out when a route with parameters has the same segment
        count and the same literals, because only its converters can tell
        whether it matches.
        """
        static: dict[str, tuple] = {}
        for routes in self._by_length.values():
            for _, compiled, _, _, _ in routes:
                if not all(part.__class__ is str for part in compiled):
                    continue
                path = '/' + '/'.join(compiled)
                if path in static:
                    continue
                entries = _routes_equal_to(routes, compiled)
                if entries is not None:
                    static[path] = entries
        return static


def _routes_equal_to(routes: list[tuple], segments: tuple) -> tuple | None:
    """Return (methods, handler, pattern) of each route equal to ``segments``.

    None means that some route with parameters may match them too.
    """
    entries = []
    for _, compiled, methods, handler, pattern in routes:
        literals_agree = all(part.__class__ is not str or part == segment
                             for part, segment in zip(compiled, segments, strict=True))
        if not literals_agree:
            continue
        if compiled != segments:
            return None
        entries.append((methods, handler, pattern))
    return tuple(entries)


def match_prefix(route: str, path: str) -> bool:
    """Match a pool route: ``/x/**`` is a subtree, anything else is exact."""
    if route.endswith('/**'):
        prefix = [s for s in route[:-3].split('/') if s]
        segments = [s for s in path.split('/') if s]
        return segments[:len(prefix)] == prefix
    return path == route


def normalize_path(raw: str) -> str:
    """Percent-decode a request path and resolve its dot segments.

    ``%2F`` stays encoded so that it never adds a segment boundary; every
    other escape is decoded (invalid UTF-8 becomes U+FFFD). ``.`` and ``..``
    segments, including encoded ones, are resolved and never climb above
    ``/``. A trailing slash is kept because static mounts use it to find a
    directory's index.
    """
    if '%' in raw:
        parts = _ENCODED_SLASH.split(raw)
        decoded = '%2F'.join(unquote(part, errors='replace') for part in parts)
    else:
        decoded = raw
    if '.' not in decoded and '//' not in decoded:
        return decoded if decoded.startswith('/') else '/' + decoded
    out: list[str] = []
    parts = decoded.split('/')
    for part in parts:
        if part in ('', '.'):
            continue
        if part == '..':
            if out:
                out.pop()
            continue
        out.append(part)
    trailing = '/' if parts[-1] in ('', '.', '..') and out else ''
    return '/' + '/'.join(out) + trailing


def parse_query(raw: str | None) -> dict | None:
    """Parse a query string into a dict, or None when there is none.

    A key given once maps to its string value; a key given more than once
    maps to the list of its values in order. ``+`` decodes to a space.
    """
    if not raw:
        return None
    query: dict[str, Any] = {}
    for pair in raw.split('&'):
        if not pair:
            continue
        key, _, value = pair.partition('=')
        key = unquote(key.replace('+', ' '), errors='replace')
        value = unquote(value.replace('+', ' '), errors='replace')
        if key in query:
            existing = query[key]
            if isinstance(existing, list):
                existing.append(value)
            else:
                query[key] = [existing, value]
        else:
            query[key] = value
    return query or None
