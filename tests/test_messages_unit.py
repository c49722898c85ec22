"""Unit tests of the dispatcher-worker frame format."""

import os
import pickle
import select
import socket
import struct
import threading
import time

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


# -- FrameReader: the worker's reader over a real socketpair -----------------

READ_TIMEOUT = 5.0


def request_message(request_id, body=None):
    return (messages.REQUEST, request_id, 'POST', '/upload', None, {'host': 'x'},
            'application/octet-stream', '127.0.0.1:1', None,
            messages.wrap_body(body), None)


class RecordingSocket:
    """A socket proxy that records every receive call the reader makes."""

    def __init__(self, sock, max_chunk=None):
        self.sock = sock
        self.max_chunk = max_chunk
        self.calls = []

    def recv_into(self, buffer, nbytes=0, flags=0):
        received = self.sock.recv_into(buffer, nbytes, flags)
        self.calls.append(('recv_into', nbytes or len(buffer), flags, received))
        return received

    def recv(self, size, flags=0):
        if self.max_chunk:
            # What MSG_WAITALL returns when a signal arrives midway.
            size = min(size, self.max_chunk)
        data = self.sock.recv(size, flags)
        self.calls.append(('recv', size, flags, len(data)))
        return data


@pytest.fixture
def socket_pair():
    reader_side, writer_side = socket.socketpair()
    reader_side.settimeout(READ_TIMEOUT)
    yield reader_side, writer_side
    reader_side.close()
    writer_side.close()


def read_messages(reader, sock, count):
    """Call read() whenever ``sock`` is readable until ``count`` messages came."""
    received = []
    deadline = time.monotonic() + READ_TIMEOUT
    while len(received) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f'only {len(received)} of {count} messages arrived'
        readable, _, _ = select.select([sock], [], [], remaining)
        if readable:
            messages_read = reader.read()
            assert messages_read is not None, 'unexpected EOF'
            received.extend(messages_read)
    return received


def send_in_thread(sock, data):
    thread = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    thread.start()
    return thread


def test_reader_many_small_frames_in_one_read(socket_pair):
    reader_side, writer_side = socket_pair
    sent = [(messages.READY, i) for i in range(500)]
    writer_side.sendall(frames_of(*sent))
    assert read_messages(messages.FrameReader(reader_side), reader_side, 500) == sent


@pytest.mark.parametrize('split', [1, 5, 6, 10])
def test_reader_split_head_returns_nothing_without_blocking(socket_pair, split):
    reader_side, writer_side = socket_pair
    message = request_message(1, os.urandom(40_000))
    data = frames_of(message)
    reader = messages.FrameReader(reader_side)
    writer_side.sendall(data[:split])
    started = time.monotonic()
    assert reader.read() == []
    assert time.monotonic() - started < 1.0, 'read() blocked on an incomplete head'
    writer_side.sendall(data[split:])
    [received] = read_messages(reader, reader_side, 1)
    assert received[9] == message[9].raw().tobytes()


def test_reader_pipelined_frames_around_a_large_body(socket_pair):
    reader_side, writer_side = socket_pair
    body = os.urandom(3 * 1024 * 1024 + 7)
    sent = [(messages.READY, 1), request_message(2, body), (messages.READY, 3)]
    thread = send_in_thread(writer_side, frames_of(*sent))
    received = read_messages(messages.FrameReader(reader_side), reader_side, 3)
    thread.join(READ_TIMEOUT)
    assert received[0] == (messages.READY, 1)
    assert received[2] == (messages.READY, 3)
    assert type(received[1][9]) is bytes
    assert received[1][9] == body


def test_reader_body_partly_in_the_buffer(socket_pair):
    reader_side, writer_side = socket_pair
    body = os.urandom(100_000)
    writer_side.sendall(frames_of(request_message(1, body)))
    proxy = RecordingSocket(reader_side)
    [received] = read_messages(messages.FrameReader(proxy, chunk=8192), reader_side, 1)
    assert type(received[9]) is bytes
    assert received[9] == body
    direct_reads = [call for call in proxy.calls if call[0] == 'recv']
    assert direct_reads, 'the rest of the body should be received directly'


def test_reader_several_out_of_band_buffers(socket_pair):
    reader_side, writer_side = socket_pair
    bodies = [os.urandom(40_000), os.urandom(300_000), os.urandom(33_000)]
    message = (messages.FORWARD, '/route', [messages.wrap_body(b) for b in bodies])
    assert len(messages.encode(message)) == 4, 'each body should travel out of band'
    thread = send_in_thread(writer_side, frames_of(message, (messages.READY, 9)))
    received = read_messages(messages.FrameReader(reader_side, chunk=4096), reader_side, 2)
    thread.join(READ_TIMEOUT)
    assert [type(b) for b in received[0][2]] == [bytes, bytes, bytes]
    assert received[0][2] == bodies
    assert received[1] == (messages.READY, 9)


def test_reader_second_large_body_read_directly(socket_pair):
    reader_side, writer_side = socket_pair
    body = os.urandom(40_000)
    proxy = RecordingSocket(reader_side)
    reader = messages.FrameReader(proxy, direct_min=4096)
    for request_id in (1, 2):
        # The frame fits in the socket buffer, so it is queued whole before
        # the reader looks at it.
        writer_side.sendall(frames_of((messages.READY, 0), request_message(request_id, body)))
        proxy.calls.clear()
        received = read_messages(reader, reader_side, 2)
        assert received[1][9] == body
    # The second time the reader has seen a large buffer, so it peeks and
    # receives the body with one direct read, without copying any of it.
    assert ('recv', len(body), socket.MSG_WAITALL, len(body)) in proxy.calls
    assert proxy.calls[0][2] == socket.MSG_PEEK


def test_reader_peek_stop_positions():
    small = frames_of((messages.READY, 1))
    large = frames_of(request_message(2, os.urandom(40_000)))
    large_head_end = len(large) - 40_000
    cases = [
        (small * 3, len(small) * 3),
        (small + large[:1000], len(small) + large_head_end),
        (small + large[:3], len(small)),
        (small + large[:10], len(small)),
        (large[:10], 10),
        (large[:large_head_end - 1], large_head_end - 1),
    ]
    reader = messages.FrameReader(None, direct_min=4096)
    for data, expected in cases:
        reader._buf[:len(data)] = data
        assert reader._bytes_to_receive(len(data)) == expected


def test_reader_completes_a_short_direct_read(socket_pair):
    reader_side, writer_side = socket_pair
    body = os.urandom(200_000)
    thread = send_in_thread(writer_side, frames_of(request_message(1, body)))
    proxy = RecordingSocket(reader_side, max_chunk=10_000)
    [received] = read_messages(messages.FrameReader(proxy, chunk=1024), reader_side, 1)
    thread.join(READ_TIMEOUT)
    assert received[9] == body
    assert sum(1 for call in proxy.calls if call[0] == 'recv') >= 20


def test_reader_eof_inside_a_frame(socket_pair):
    reader_side, writer_side = socket_pair
    data = frames_of((messages.READY, 1), request_message(2, os.urandom(500_000)))

    def send_part_and_close():
        writer_side.sendall(data[:300_000])
        writer_side.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send_part_and_close, daemon=True)
    thread.start()
    reader = messages.FrameReader(reader_side, chunk=4096)
    received = []
    while True:
        more = reader.read()
        if more is None:
            break
        received.extend(more)
    thread.join(READ_TIMEOUT)
    assert received == [(messages.READY, 1)]
    assert reader.read() is None


def test_reader_eof_between_frames(socket_pair):
    reader_side, writer_side = socket_pair
    writer_side.sendall(frames_of((messages.READY, 1)))
    writer_side.shutdown(socket.SHUT_WR)
    reader = messages.FrameReader(reader_side)
    assert reader.read() == [(messages.READY, 1)]
    assert reader.read() is None


@pytest.mark.parametrize('chunk', [16, 64, 1024])
def test_reader_head_larger_than_its_buffer(socket_pair, chunk):
    reader_side, writer_side = socket_pair
    bodies = [os.urandom(32 * 1024 + i) for i in range(12)]
    message = (messages.FORWARD, '/route', [messages.wrap_body(b) for b in bodies])
    sent = [(messages.HEARTBEAT,), (messages.READY, 1), message, (messages.READY, 2)]
    thread = send_in_thread(writer_side, frames_of(*sent))
    received = read_messages(messages.FrameReader(reader_side, chunk=chunk), reader_side, 4)
    thread.join(READ_TIMEOUT)
    assert received[:2] == sent[:2]
    assert received[2][2] == bodies
    assert received[3] == sent[3]


def test_reader_garbage_raises_frame_error(socket_pair):
    reader_side, writer_side = socket_pair
    payload = b'not a pickle'
    writer_side.sendall(messages._HEAD.pack(len(payload), 0) + payload)
    with pytest.raises(messages.FrameError):
        messages.FrameReader(reader_side).read()


def test_reader_oversized_frame_raises_before_reading_it(socket_pair):
    reader_side, writer_side = socket_pair
    head = messages._HEAD.pack(10, 1) + struct.pack('<Q', messages.MAX_FRAME)
    writer_side.sendall(head)
    started = time.monotonic()
    with pytest.raises(messages.FrameError, match='exceeds the limit'):
        messages.FrameReader(reader_side).read()
    assert time.monotonic() - started < 1.0


def test_encode_in_band_matches_encode():
    message = (messages.RESPONSE, 5, 200, {'X': '1'}, None, b'{"a":1}', 'application/json', True)
    assert messages.encode_in_band(message) == b''.join(messages.encode(message))
