"""Unit tests of routing: handler patterns, pool prefixes, paths and queries."""

import random

import pytest

from workgate.routing import Router, compile_pattern, match_prefix, normalize_path, parse_query


def build(*routes):
    router = Router()
    for pattern, methods, name in routes:
        router.add(pattern, methods, name)
    return router


@pytest.mark.parametrize('pattern,path,params', [
    ('/user/{id:int}', '/user/42', {'id': 42}),
    ('/user/{id:int}', '/user/-3', {'id': -3}),
    ('/user/{id:int}', '/user/42/', {'id': 42}),
    ('/price/{amount:float}', '/price/9.75', {'amount': 9.75}),
    ('/price/{amount:float}', '/price/3', {'amount': 3.0}),
    ('/tag/{name}', '/tag/blue', {'name': 'blue'}),
    ('/tag/{name:str}', '/tag/a%2Fb', {'name': 'a/b'}),
    ('/a/{x}/b/{y:int}', '/a/q/b/7', {'x': 'q', 'y': 7}),
    ('', '/', {}),
])
def test_pattern_matches(pattern, path, params):
    match = build((pattern, None, 'h')).match('GET', path)
    assert match.handler == 'h'
    assert match.params == params


@pytest.mark.parametrize('pattern,path', [
    ('/user/{id:int}', '/user/abc'),
    ('/user/{id:int}', '/user/4_2'),
    ('/user/{id:int}', '/user/ 4'),
    ('/price/{amount:float}', '/price/nan'),
    ('/price/{amount:float}', '/price/inf'),
    ('/user/{id:int}', '/user'),
    ('/user/{id:int}', '/user/1/extra'),
    ('/user', '/users'),
])
def test_pattern_rejects(pattern, path):
    assert build((pattern, None, 'h')).match('GET', path).handler is None


def test_first_route_wins():
    router = build(('/x/{a}', None, 'first'), ('/x/{b}', None, 'second'))
    assert router.match('GET', '/x/1').handler == 'first'


def test_other_method_is_405_with_union():
    router = build(('/item/{id:int}', ['GET'], 'get'), ('/item/{id:int}', ['DELETE'], 'del'),
                   ('/item/{name}', ['PUT'], 'put'))
    match = router.match('POST', '/item/3')
    assert match.handler is None
    assert match.allowed == ('DELETE', 'GET', 'PUT')


def test_unknown_path_is_404():
    match = build(('/a', ['GET'], 'a')).match('POST', '/b')
    assert match.handler is None
    assert match.allowed == ()


def test_head_uses_get_route():
    assert build(('/a', ['GET'], 'a')).match('HEAD', '/a').handler == 'a'


def test_methods_are_case_insensitive():
    assert build(('/a', ['post'], 'a')).match('POST', '/a').handler == 'a'


@pytest.mark.parametrize('pattern', ['/x/{id:uuid}', '/x/{}', '/x/{:int}'])
def test_bad_pattern_raises(pattern):
    with pytest.raises(ValueError):
        compile_pattern(pattern)


@pytest.mark.parametrize('route,path,expected', [
    ('/api/**', '/api', True),
    ('/api/**', '/api/', True),
    ('/api/**', '/api/x/y', True),
    ('/api/**', '/apix', False),
    ('/api/**', '/', False),
    ('/api/users/**', '/api/users/7', True),
    ('/api/status', '/api/status', True),
    ('/api/status', '/api/status/x', False),
    ('/**', '/anything', True),
])
def test_pool_prefix(route, path, expected):
    assert match_prefix(route, path) is expected


@pytest.mark.parametrize('raw,expected', [
    ('/a/b', '/a/b'),
    ('/a/./b', '/a/b'),
    ('/a/../b', '/b'),
    ('/../../etc/passwd', '/etc/passwd'),
    ('/a/%2e%2e/b', '/b'),
    ('/a%2Fb/c', '/a%2Fb/c'),
    ('/a%2fb', '/a%2Fb'),
    ('/caf%C3%A9', '/café'),
    ('/bad%ff', '/bad\ufffd'),
    ('/dir/', '/dir/'),
    ('/dir/..', '/'),
    ('//double//slash', '/double/slash'),
    ('/x/%2e/', '/x/'),
])
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize('raw,expected', [
    (None, None),
    ('', None),
    ('a=1', {'a': '1'}),
    ('a=1&a=2&b=', {'a': ['1', '2'], 'b': ''}),
    ('a=1&a=2&a=3', {'a': ['1', '2', '3']}),
    ('q=hello+world&x=%2F', {'q': 'hello world', 'x': '/'}),
    ('flag', {'flag': ''}),
    ('&&a=1&', {'a': '1'}),
])
def test_parse_query(raw, expected):
    assert parse_query(raw) == expected


def test_param_route_added_first_wins_over_static():
    router = build(('/x/{a}', None, 'param'), ('/x/me', None, 'static'))
    match = router.match('GET', '/x/me')
    assert match.handler == 'param'
    assert match.params == {'a': 'me'}


def test_static_and_param_routes_share_a_path():
    router = build(('/u/me', ['GET'], 'me'), ('/u/{id:int}', ['GET'], 'by-id'),
                   ('/u/{name}', ['POST'], 'by-name'))
    assert router.match('GET', '/u/me').handler == 'me'
    assert router.match('GET', '/u/5').params == {'id': 5}
    assert router.match('POST', '/u/me').params == {'name': 'me'}
    assert router.match('PUT', '/u/me').allowed == ('GET', 'POST')


def test_static_routes_method_rules():
    router = build(('/a', ['GET'], 'get'), ('/a', ['POST'], 'post'), ('/b', None, 'any'))
    assert router.match('GET', '/a').handler == 'get'
    assert router.match('POST', '/a').handler == 'post'
    assert router.match('HEAD', '/a').handler == 'get'
    assert router.match('PUT', '/a').allowed == ('GET', 'POST')
    assert router.match('PATCH', '/b').handler == 'any'
    assert router.match('GET', '/a/').handler == 'get'


def test_route_added_after_a_match_is_found():
    router = build(('/a', ['GET'], 'get'))
    assert router.match('POST', '/a').allowed == ('GET',)
    router.add('/a', ['POST'], 'post')
    assert router.match('POST', '/a').handler == 'post'


def test_static_match_params_are_fresh():
    router = build(('/a', None, 'a'))
    first = router.match('GET', '/a')
    first.params['changed'] = True
    assert router.match('GET', '/a').params == {}


def scan_match(routes, method, path):
    """The routing rules as one ordered scan, to compare Router against."""
    segments = [s for s in path.split('/') if s]
    allowed = set()
    for pattern, methods, name in routes:
        compiled = compile_pattern(pattern)
        if len(compiled) != len(segments):
            continue
        params = {}
        for want, got in zip(compiled, segments, strict=True):
            if isinstance(want, str):
                if want != got:
                    break
                continue
            try:
                params[want.name] = want.convert(got)
            except ValueError:
                break
        else:
            if methods is None or method in methods or (method == 'HEAD' and 'GET' in methods):
                return name, params, ()
            allowed.update(methods)
    return None, None, tuple(sorted(allowed))


def test_router_agrees_with_an_ordered_scan():
    rng = random.Random(1234)
    parts = ['a', 'b', '{x}', '{n:int}']
    path_parts = ['a', 'b', '7', 'zz']
    method_choices = [None, ['GET'], ['POST'], ['GET', 'DELETE']]
    for _ in range(300):
        routes = []
        for index in range(rng.randint(1, 6)):
            pattern = '/' + '/'.join(rng.choice(parts) for _ in range(rng.randint(0, 2)))
            routes.append((pattern, rng.choice(method_choices), f'h{index}'))
        router = build(*routes)
        for _ in range(20):
            path = '/' + '/'.join(rng.choice(path_parts) for _ in range(rng.randint(0, 2)))
            method = rng.choice(['GET', 'POST', 'HEAD', 'PUT'])
            match = router.match(method, path)
            expected = scan_match(routes, method, path)
            assert (match.handler, match.params, match.allowed) == expected, (routes, method, path)
