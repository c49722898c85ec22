"""Unit tests of routing: handler patterns, pool prefixes, paths and queries."""

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
