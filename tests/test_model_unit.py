"""Unit tests of the body conventions in workgate.model."""

import json
import subprocess
import sys
import threading

import pytest

from workgate import messages
from workgate.model import Request, encode_body, parse_body


def sets_as_lists(value):
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f'{type(value).__name__} is not JSON serializable')


# The encoder the body conventions promise: compact JSON, sets as lists.
REFERENCE = json.JSONEncoder(separators=(',', ':'), default=sets_as_lists)


@pytest.mark.parametrize('data', [
    {'hello': 'world'},
    [1, 2.5, None, True, 'é\n\u2028'],
    {'nested': {'list': [{'a': []}, {}]}, 'set': {3}},
    {1: 'int key', 2.5: 'float key', None: 'null key', False: 'bool key'},
    (1, 2),
    7,
    -0.0,
    1e300,
    float('inf'),
    float('nan'),
    False,
])
def test_encode_body_json_matches_json_module(data):
    body, content_type = encode_body(data)
    assert content_type == 'application/json'
    assert body == REFERENCE.encode(data).encode()


def test_encode_body_circular_value_raises_value_error():
    looped = {'a': []}
    looped['a'].append(looped)
    with pytest.raises(ValueError, match='Circular reference detected'):
        encode_body(looped)


def test_encode_body_circular_value_with_high_recursion_limit():
    # Without the circular check the C encoder would recurse until the C
    # stack overflows (SIGSEGV) before reaching a recursion limit this high.
    script = (
        'import sys\n'
        'sys.setrecursionlimit(100_000)\n'
        'from workgate.model import encode_body\n'
        'looped = []\n'
        'looped.append(looped)\n'
        'try:\n'
        '    encode_body(looped)\n'
        'except ValueError as err:\n'
        '    print(err)\n'
    )
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'Circular reference detected' in result.stdout


def test_encode_body_failure_leaves_no_markers():
    value = {'inner': [1, 2], 'bad': object()}
    with pytest.raises(TypeError):
        encode_body(value)
    del value['bad']
    # The failed call was inside `value` when it raised; a marker left
    # behind would make this look circular.
    assert encode_body(value) == (b'{"inner":[1,2]}', 'application/json')


def test_encode_body_too_deep_value_raises_recursion_error():
    deep = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        encode_body(deep)


def test_encode_body_unencodable_value_raises_type_error():
    with pytest.raises(TypeError, match='object is not JSON serializable'):
        encode_body({'x': object()})
    # The failure leaves no state behind that a later call would see.
    assert encode_body({'x': [1]}) == (b'{"x":[1]}', 'application/json')


def test_encode_body_from_many_threads():
    shared = {'items': list(range(50)), 'tags': {'a'}}
    expected = REFERENCE.encode(shared).encode()
    results = []

    def encode_many():
        results.extend(encode_body(shared)[0] for _ in range(2000))

    threads = [threading.Thread(target=encode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8000
    assert all(result == expected for result in results)


def test_octet_stream_body_is_not_copied():
    body = bytes(range(256)) * 200
    assert parse_body(body, 'application/octet-stream') is body
    message = (messages.REQUEST, 1, 'POST', '/x', None, {}, 'application/octet-stream',
               None, None, body, None)
    request = Request._from_message(message, None)
    assert request.data is body
    assert request.body is body


def test_memoryview_body_becomes_bytes_once():
    raw = bytes(range(256)) * 200
    message = (messages.REQUEST, 1, 'POST', '/x', None, {}, 'application/octet-stream',
               None, None, memoryview(raw), None)
    request = Request._from_message(message, None)
    assert type(request.body) is bytes
    assert request.body == raw
    assert request.body is request.body
