"""Unit tests of the worker side: how handler results become frames.

A Worker runs in this process with its channel on one end of a real
socketpair. The tests decode what arrives at the other end with the
dispatcher's FrameDecoder.
"""

import json
import socket

import pytest

from workgate import messages
from workgate.constants import DEFERRED
from workgate.model import RejectRequest, Response
from workgate.routing import api
from workgate.worker import Worker, _Channel, _response_fields

BIG_BODY_SIZE = 64 * 1024


class UnitWorker(Worker):
    # The value on_request_error returns. A test sets it on the instance.
    error_result = None
    error_hook_fails = False

    def do_check(self, request):
        mode = request.headers.get('x-check')
        if mode == 'tuple':
            return {'error': 'checked'}, 418
        if mode == 'reject':
            raise RejectRequest({'error': 'rejected by check'}, 401)
        if mode == 'crash':
            raise RuntimeError('check bug')
        return None

    def on_request_error(self, request, err):
        if self.error_hook_fails:
            raise RuntimeError('hook bug')
        if self.error_result is None:
            return super().on_request_error(request, err)
        return self.error_result

    @api('/json', 'GET')
    def json_route(self, request):
        return {'a': 1}

    @api('/response', 'GET')
    def response_route(self, request):
        return Response(None, {'ok': True}, 203, {'X-A': '1'}, {'sid': 'x'})

    @api('/pair', 'GET')
    def pair(self, request):
        return 'made', 201

    @api('/triple', 'GET')
    def triple(self, request):
        return 'made', 202, {'X-B': '2'}

    @api('/quad', 'GET')
    def quad(self, request):
        return 1, 2, 3, 4

    @api('/text', 'GET')
    def text(self, request):
        return 'héllo'

    @api('/bytes', 'GET')
    def raw_bytes(self, request):
        return b'\x00\x01'

    @api('/none', 'GET')
    def none(self, request):
        return None

    @api('/big', 'GET')
    def big(self, request):
        return b'x' * BIG_BODY_SIZE

    @api('/deferred', 'GET')
    def deferred(self, request):
        request.respond({'later': True}, 200, {'X-D': '1'})
        return DEFERRED

    @api('/bad-status', 'GET')
    def bad_status(self, request):
        return {'x': 1}, 'oops'

    @api('/bool-status', 'GET')
    def bool_status(self, request):
        return {'x': 1}, True

    @api('/unencodable', 'GET')
    def unencodable(self, request):
        return {'x': object()}

    @api('/too-deep', 'GET')
    def too_deep(self, request):
        value = []
        for _ in range(100_000):
            value = [value]
        return value

    @api('/reject', 'GET')
    def reject(self, request):
        raise RejectRequest({'error': 'denied'}, 403)

    @api('/crash', 'GET')
    def crash(self, request):
        raise RuntimeError('handler bug')

    @api('/item/{id:int}', 'GET', 'DELETE')
    def item(self, request):
        request.path_params['seen'] = True  # must not leak into the next request
        return {'id': request.path_params['id'], 'params': sorted(request.path_params)}


def worker_on_socketpair(worker_class):
    """Yield a worker whose channel ends at its ``dispatcher_side`` socket."""
    worker_side, dispatcher_side = socket.socketpair()
    dispatcher_side.setblocking(False)
    unit = worker_class(worker_id=0)
    unit._channel = _Channel(worker_side)
    unit._build_routes()
    unit.dispatcher_side = dispatcher_side
    yield unit
    worker_side.close()
    dispatcher_side.close()


@pytest.fixture
def worker():
    yield from worker_on_socketpair(UnitWorker)


def frames_sent(worker):
    """Decode every frame the worker sent so far."""
    decoder = messages.FrameDecoder()
    received = []
    while True:
        try:
            count = worker.dispatcher_side.recv_into(decoder.get_buffer())
        except BlockingIOError:
            return received
        received.extend(decoder.buffer_updated(count))


def request_message(request_id, path='/json', method='GET', headers=None):
    return (messages.REQUEST, request_id, method, path, None, headers or {}, None,
            '127.0.0.1:1', None, None, None)


def run(worker, path, method='GET', headers=None, request_id=7):
    worker._run_request(request_message(request_id, path, method, headers))
    return frames_sent(worker)


def only_response(frames):
    responses = [frame for frame in frames if frame[0] == messages.RESPONSE]
    assert len(responses) == 1, frames
    _, request_id, status, headers, cookies, body, content_type, ends_handler = responses[0]
    return {'request_id': request_id, 'status': status, 'headers': headers,
            'cookies': cookies, 'body': bytes(body), 'content_type': content_type,
            'ends_handler': ends_handler}


def logged(frames):
    return [frame[3] for frame in frames if frame[0] == messages.LOG]


@pytest.mark.parametrize('path,status,content_type,body,headers', [
    ('/json', 200, 'application/json', b'{"a":1}', None),
    ('/response', 203, 'application/json', b'{"ok":true}', {'X-A': '1'}),
    ('/pair', 201, 'text/plain; charset=utf-8', b'made', None),
    ('/triple', 202, 'text/plain; charset=utf-8', b'made', {'X-B': '2'}),
    ('/quad', 200, 'application/json', b'[1,2,3,4]', None),
    ('/text', 200, 'text/plain; charset=utf-8', 'héllo'.encode(), None),
    ('/bytes', 200, 'application/octet-stream', b'\x00\x01', None),
    ('/none', 200, None, b'', None),
    ('/item/5', 200, 'application/json', b'{"id":5,"params":["id","seen"]}', None),
])
def test_result_forms(worker, path, status, content_type, body, headers):
    response = only_response(run(worker, path))
    assert response['request_id'] == 7
    assert response['status'] == status
    assert response['content_type'] == content_type
    assert response['body'] == body
    assert response['headers'] == headers
    assert response['ends_handler'] is True


def test_response_object_gets_request_id_and_cookies(worker):
    result = Response(None, {'ok': True}, 203, None, {'sid': 'x'})
    assert _response_fields(11, result) == (203, None, {'sid': 'x'}, {'ok': True})
    assert result.request_id == 11
    assert only_response(run(worker, '/response'))['cookies'] == {'sid': 'x'}


def test_path_params_are_fresh_per_request(worker):
    run(worker, '/item/1')
    response = only_response(run(worker, '/item/2'))
    assert json.loads(response['body']) == {'id': 2, 'params': ['id', 'seen']}


def test_large_response_body_travels_out_of_band(worker):
    frames = run(worker, '/big')
    response = only_response(frames)
    assert response['body'] == b'x' * BIG_BODY_SIZE
    assert isinstance(frames[0][5], memoryview), 'the decoder returns out-of-band bodies as views'


@pytest.mark.parametrize('path,method,status,body,allow', [
    ('/nowhere', 'GET', 404, {'error': 'Not found'}, None),
    ('/item/x', 'GET', 404, {'error': 'Not found'}, None),
    ('/item/1', 'POST', 405, {'error': 'Method not allowed'}, 'DELETE, GET'),
    ('/json', 'POST', 405, {'error': 'Method not allowed'}, 'GET'),
    ('/json', 'HEAD', 200, {'a': 1}, None),
])
def test_routing_outcomes(worker, path, method, status, body, allow):
    response = only_response(run(worker, path, method))
    assert response['status'] == status
    assert json.loads(response['body']) == body
    if allow is None:
        assert response['headers'] is None
    else:
        assert response['headers'] == {'Allow': allow}


@pytest.mark.parametrize('mode,status,body', [
    ('tuple', 418, {'error': 'checked'}),
    ('reject', 401, {'error': 'rejected by check'}),
    ('crash', 500, {'error': 'Internal server error'}),
])
def test_do_check_outcomes(worker, mode, status, body):
    frames = run(worker, '/json', headers={'x-check': mode})
    response = only_response(frames)
    assert response['status'] == status
    assert json.loads(response['body']) == body
    if mode == 'crash':
        assert any('do_check failed' in line for line in logged(frames))


def test_handler_reject_request(worker):
    response = only_response(run(worker, '/reject'))
    assert response['status'] == 403
    assert json.loads(response['body']) == {'error': 'denied'}


@pytest.mark.parametrize('error_result,status,body', [
    (None, 500, {'error': 'Internal server error'}),
    (({'error': 'custom'}, 502), 502, {'error': 'custom'}),
    (Response(None, {'error': 'as object'}, 503), 503, {'error': 'as object'}),
    ({'error': 'dict'}, 200, {'error': 'dict'}),
    (DEFERRED, 500, {'error': 'Internal server error'}),
    ({}, 500, {'error': 'Internal server error'}),
])
def test_on_request_error_results(worker, error_result, status, body):
    worker.error_result = error_result
    frames = run(worker, '/crash')
    response = only_response(frames)
    assert response['status'] == status
    assert json.loads(response['body']) == body
    assert not any(frame[0] == messages.READY for frame in frames)


def test_on_request_error_that_raises_gives_500(worker):
    worker.error_hook_fails = True
    frames = run(worker, '/crash')
    assert only_response(frames)['status'] == 500
    assert any('on_request_error failed' in line for line in logged(frames))


@pytest.mark.parametrize('path', ['/bad-status', '/bool-status', '/unencodable',
                                  '/too-deep'])
def test_unsendable_result_gives_500_and_a_log(worker, path):
    frames = run(worker, path)
    response = only_response(frames)
    assert response['status'] == 500
    assert json.loads(response['body']) == {'error': 'Internal server error'}
    assert any('cannot send the response' in line for line in logged(frames))


def test_deferred_sends_response_then_ready(worker):
    frames = run(worker, '/deferred')
    kinds = [frame[0] for frame in frames]
    assert kinds == [messages.RESPONSE, messages.READY]
    response = only_response(frames)
    assert response['ends_handler'] is False
    assert response['headers'] == {'X-D': '1'}
    assert frames[1] == (messages.READY, 7)


def test_paused_worker_returns_the_request(worker):
    worker.pause()
    frames = run(worker, '/json')
    assert frames == [(messages.PAUSE,), (messages.RETURN, 7)]


def test_batch_sends_every_response_in_order(worker):
    message_list = [request_message(request_id) for request_id in range(1, 51)]
    worker._run_batch(message_list)
    frames = frames_sent(worker)
    assert [frame[1] for frame in frames] == list(range(1, 51))


# -- _Channel.flush ------------------------------------------------------------

class PartialSocket:
    """Accepts at most ``limit`` bytes per sendmsg, like a full socket buffer."""

    def __init__(self, limit):
        self.limit = limit
        self.data = bytearray()
        self.calls = 0

    def sendmsg(self, buffers):
        self.calls += 1
        room = self.limit
        for buffer in buffers:
            piece = bytes(buffer)[:room]
            self.data += piece
            room -= len(piece)
            if not room:
                break
        return self.limit - room


def test_flush_finishes_partial_sends():
    sock = PartialSocket(limit=7)
    channel = _Channel(sock)
    buffers = [b'abc', memoryview(b'defghij'), b'', b'klmnopqrstu', b'v']
    channel.out = list(buffers)
    channel.flush()
    assert bytes(sock.data) == b''.join(bytes(b) for b in buffers)
    assert channel.out == []


def test_flush_of_more_buffers_than_one_sendmsg_takes():
    worker_side, dispatcher_side = socket.socketpair()
    with worker_side, dispatcher_side:
        channel = _Channel(worker_side)
        sent = [(messages.READY, i) for i in range(3000)]
        channel.batching = True
        channel.batch_started = float('inf')  # keep every frame in the batch
        for message in sent:
            channel.send(message)
        assert len(channel.out) == 3000
        channel.flush()
        dispatcher_side.setblocking(False)
        decoder = messages.FrameDecoder()
        received = []
        while len(received) < len(sent):
            received.extend(decoder.buffer_updated(dispatcher_side.recv_into(decoder.get_buffer())))
        assert received == sent


class DisconnectRecorder(UnitWorker):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.disconnected = []
        self.seen_while_running = None

    def on_disconnect(self, request_id):
        self.disconnected.append(request_id)

    @api('/peek', 'GET')
    def peek(self, request):
        # What the dispatcher could read while this handler runs.
        self.seen_while_running = frames_sent(self)
        return {'peeked': True}


@pytest.fixture
def recorder():
    yield from worker_on_socketpair(DisconnectRecorder)


@pytest.mark.parametrize('kind', [messages.DISCONNECT, messages.CANCEL])
def test_batch_hands_back_abandoned_request(recorder, kind):
    recorder._run_batch([request_message(1), request_message(2), (kind, 2)])
    frames = frames_sent(recorder)
    assert [frame[:2] for frame in frames] == [(messages.RESPONSE, 1), (messages.RETURN, 2)]
    expected = [2] if kind == messages.DISCONNECT else []
    assert recorder.disconnected == expected
    assert recorder._abandoned is None


def test_batch_disconnect_after_run(recorder):
    # The DISCONNECT came after the handler ran: the worker only calls the hook.
    recorder._run_batch([request_message(3)])
    recorder._run_batch([(messages.DISCONNECT, 3), request_message(4)])
    frames = frames_sent(recorder)
    assert [frame[:2] for frame in frames] == [(messages.RESPONSE, 3), (messages.RESPONSE, 4)]
    assert recorder.disconnected == [3]


def test_batch_return_sent_before_next_handler(recorder):
    recorder._run_batch([request_message(2), request_message(3, '/peek'),
                         (messages.DISCONNECT, 2)])
    seen = [frame[:2] for frame in recorder.seen_while_running]
    assert seen == [(messages.RETURN, 2)]
    assert [frame[:2] for frame in frames_sent(recorder)] == [(messages.RESPONSE, 3)]


class ReadCount:
    """Stands in for the shared counter the pool gives each worker."""

    value = 0


def test_batch_counts_requests_read(recorder):
    recorder._read_count = ReadCount()
    recorder._run_batch([request_message(5), request_message(6, '/peek'),
                         (messages.DISCONNECT, 99)])
    # Counted before any handler ran, while the responses still wait.
    assert recorder.seen_while_running == []
    assert recorder._read_count.value == 2
    recorder._run_batch([request_message(7)])
    recorder._run_batch([(messages.DISCONNECT, 7)])
    assert recorder._read_count.value == 3


def test_batch_disconnect_for_other_request(recorder):
    recorder._run_batch([request_message(5), (messages.DISCONNECT, 99)])
    frames = frames_sent(recorder)
    assert [frame[:2] for frame in frames] == [(messages.RESPONSE, 5)]
    assert recorder.disconnected == [99]
