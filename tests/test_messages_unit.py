"""Unit tests of the dispatcher-worker frame format."""

import os
import pickle

import pytest

from workgate import messages


def frames_of(*message_list):
    data = b''
    for message in message_list:
        data += b''.join(bytes(b) for b in messages.encode(message))
    return data


def feed(decoder, data, step):
    out = []
    view = memoryview(data)
    while view:
        buffer = decoder.get_buffer()
        size = min(step, len(buffer), len(view))
        buffer[:size] = view[:size]
        view = view[size:]
        out.extend(decoder.buffer_updated(size))
    return out


@pytest.mark.parametrize('step', [1, 7, 4096, 10 ** 7])
def test_round_trip_at_any_split(step):
    sent = [(messages.HEARTBEAT,), (messages.LOG, 'w[0]', 30, 'hello'),
            (messages.RESPONSE, 5, 200, {'X': '1'}, None, b'{"a":1}', 'application/json', True)]
    received = feed(messages.FrameDecoder(chunk=1024), frames_of(*sent), step)
    assert received == sent


@pytest.mark.parametrize('size', [messages.OUT_OF_BAND_MIN, 3 * 1024 * 1024])
def test_large_body_out_of_band(size):
    body = os.urandom(size)
    message = (messages.STREAM_DATA, 1, messages.wrap_body(body))
    buffers = messages.encode(message)
    assert len(buffers) == 2, 'the body should travel as its own buffer'
    assert len(buffers[0]) < 200
    received = feed(messages.FrameDecoder(chunk=64 * 1024), frames_of(message), 100_000)
    assert len(received) == 1
    assert bytes(received[0][2]) == body


def test_small_body_stays_in_band():
    assert messages.wrap_body(b'x' * 10) == b'x' * 10
    assert len(messages.encode((messages.STREAM_DATA, 1, messages.wrap_body(b'abc')))) == 1


def test_many_frames_in_one_read():
    sent = [(messages.READY, i) for i in range(1000)]
    assert feed(messages.FrameDecoder(), frames_of(*sent), 10 ** 7) == sent


def test_big_frame_then_small_frames():
    big = (messages.RESPONSE, 1, 200, None, None, messages.wrap_body(b'z' * 600_000), None, True)
    data = frames_of(big, (messages.READY, 2), (messages.READY, 3))
    received = feed(messages.FrameDecoder(chunk=4096), data, 5000)
    assert bytes(received[0][5]) == b'z' * 600_000
    assert received[1:] == [(messages.READY, 2), (messages.READY, 3)]


def test_garbage_raises_frame_error():
    payload = b'not a pickle'
    data = messages._HEAD.pack(len(payload), 0) + payload
    decoder = messages.FrameDecoder()
    with pytest.raises(messages.FrameError):
        feed(decoder, data, len(data))


def test_pickle_protocol_is_5():
    payload = messages.encode((messages.HEARTBEAT,))[0][6:]
    assert payload[:2] == pickle.PROTO + bytes([5])
