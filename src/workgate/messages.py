"""Frames exchanged between the dispatcher and a worker over their socketpair.

Each worker has its own ``AF_UNIX``/``SOCK_STREAM`` socketpair, so frames
from different workers never mix and the order within one connection is the
order of sending.

Frame layout (little-endian)::

    u32  pickle_len      length of the pickle payload
    u16  buffer_count    number of out-of-band buffers
    u64  buffer_len * buffer_count
    pickle_len bytes     pickle protocol 5 of one message tuple
    buffer bytes         the out-of-band buffers, back to back

Large byte strings (request and response bodies of at least
``OUT_OF_BAND_MIN`` bytes) are wrapped in ``pickle.PickleBuffer`` so that the
sender hands them to ``sendmsg``/``writelines`` without copying them into the
pickle. The dispatcher's FrameDecoder returns them as memoryviews into the
frame buffer it read them into, and the worker's FrameReader as bytes.

Every message is a tuple whose first item is one of the codes below.

Dispatcher to worker:

=================  ===================================================
REQUEST            (REQUEST, request_id, method, path, query, headers,
                   content_type, remote_address, context, body, data)
CONFIG             (CONFIG, config)
DISCONNECT         (DISCONNECT, request_id): its client left
CANCEL             (CANCEL, request_id): the dispatcher answered it
                   (timeout) and no longer wants it run
STOP               (STOP,)
=================  ===================================================

Worker to dispatcher:

=================  ===================================================
HELLO              (HELLO, pid): setup() finished, ready for requests
RESPONSE           (RESPONSE, request_id, status, headers, cookies, body,
                   content_type, ends_handler): ends_handler is set on
                   the answer a handler returned, which ends its turn
READY              (READY, request_id): its handler returned DEFERRED
RETURN             (RETURN, request_id): the worker hands back a
                   request it had not started, because it is paused or
                   because a DISCONNECT or CANCEL for it came with it
HEARTBEAT          (HEARTBEAT,): idle for heartbeat_interval
KEEPALIVE          (KEEPALIVE, request_id or None)
LOG                (LOG, name, level, message)
STREAM_OPEN        (STREAM_OPEN, request_id, content_type, headers, cookies)
STREAM_DATA        (STREAM_DATA, request_id, body)
STREAM_END         (STREAM_END, request_id)
FORWARD            (FORWARD, route, data)
PAUSE / RESUME     (PAUSE,) / (RESUME,)
=================  ===================================================
"""

from __future__ import annotations

import pickle
import socket
import struct

REQUEST = 1
CONFIG = 2
DISCONNECT = 3
STOP = 4
CANCEL = 5

HELLO = 10
RESPONSE = 11
READY = 12
HEARTBEAT = 13
KEEPALIVE = 14
LOG = 15
STREAM_OPEN = 16
STREAM_DATA = 17
STREAM_END = 18
FORWARD = 19
PAUSE = 20
RESUME = 21
RETURN = 22

# Bodies at least this large travel out of band, without a copy into the pickle.
OUT_OF_BAND_MIN = 32 * 1024

# A frame larger than this is treated as a protocol error (both sides are ours,
# so this only trips on corruption or a runaway body).
MAX_FRAME = 2 * 1024 * 1024 * 1024 - 1

# FrameReader receives an out-of-band buffer at least this large straight
# into its own bytes object. A smaller one comes through the shared read
# buffer with the frames around it and is copied out once. A direct read
# costs two more recv calls per frame, a peek and the read of the body
# itself. The value comes from a synthetic benchmark of one worker on a
# 2-core x86-64 VM, which is not in this repository. There, pipelined
# 32-48 KiB bodies cost about 40% more CPU per request when read directly.
# 64 KiB bodies cost about the same both ways, and 128 KiB bodies cost less
# when read directly.
DIRECT_READ_MIN = 64 * 1024

_HEAD = struct.Struct('<IH')
_PROTOCOL = 5
_READ_CHUNK = 256 * 1024
# Reads that peek first after FrameReader saw a large buffer, and how much
# one peek copies. The count bounds the extra recv calls a worker pays after
# its last large body. 16 KiB fits dozens of small request frames.
_PEEK_READS = 32
_PEEK_SIZE = 16 * 1024


class FrameError(Exception):
    """A frame could not be decoded; the connection must be dropped."""


def wrap_body(body):
    """Mark a large body for out-of-band transfer; small ones pass as is."""
    if body is not None and len(body) >= OUT_OF_BAND_MIN:
        return pickle.PickleBuffer(body)
    return body


def encode(message: tuple) -> list:
    """Encode one message as a list of buffers ready for ``writelines``."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(message, _PROTOCOL, buffer_callback=buffers.append)
    if not buffers:
        return [_HEAD.pack(len(payload), 0) + payload]
    raws = [b.raw() for b in buffers]
    lengths = struct.pack(f'<{len(raws)}Q', *(r.nbytes for r in raws))
    return [_HEAD.pack(len(payload), len(raws)) + lengths + payload, *raws]


def encode_in_band(message: tuple) -> bytes:
    """Encode a message without out-of-band buffers as one frame.

    Cheaper than :func:`encode` for the small frames a worker sends most.
    A ``PickleBuffer`` in ``message`` would be copied into the pickle.
    """
    payload = pickle.dumps(message, _PROTOCOL)
    return _HEAD.pack(len(payload), 0) + payload


class FrameDecoder:
    """Incremental frame decoder fed by ``recv_into``-style reads.

    Call :meth:`get_buffer` for a writable memoryview, read into it, then
    :meth:`buffer_updated` with the byte count; it returns the messages that
    became complete. A frame larger than the shared read buffer is read into
    a buffer of its own, so the out-of-band bodies it carries are never
    copied again after the socket read.
    """

    def __init__(self, chunk: int = _READ_CHUNK) -> None:
        self._chunk = chunk
        self._buf = bytearray(chunk)
        self._start = 0
        self._end = 0
        self._big: bytearray | None = None
        self._big_filled = 0

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled:]
        if self._end == len(self._buf):
            self._compact()
        return memoryview(self._buf)[self._end:]

    def _compact(self) -> None:
        pending = self._end - self._start
        if self._start:
            self._buf[:pending] = self._buf[self._start:self._end]
        self._start = 0
        self._end = pending
        if pending == len(self._buf):
            self._buf.extend(bytes(len(self._buf)))

    def buffer_updated(self, nbytes: int) -> list:
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled < len(self._big):
                return []
            big, self._big = self._big, None
            return [_decode_frame(memoryview(big))]
        self._end += nbytes
        return self._drain()

    def _drain(self) -> list:
        messages = []
        buf = self._buf
        while True:
            available = self._end - self._start
            if available < _HEAD.size:
                break
            payload_len, count = _HEAD.unpack_from(buf, self._start)
            head_len = _HEAD.size + 8 * count
            if available < head_len:
                break
            total = head_len + payload_len
            if count:
                total += sum(struct.unpack_from(f'<{count}Q', buf, self._start + _HEAD.size))
            if total > MAX_FRAME:
                raise FrameError(f'frame of {total} bytes exceeds the limit')
            if available < total:
                if total > len(buf):
                    self._start_big(total, available)
                break
            view = memoryview(buf)[self._start:self._start + total]
            if count:
                # The shared buffer is reused, so out-of-band bodies of a
                # frame that fit in it are copied out once here.
                view = memoryview(bytes(view))
            messages.append(_decode_frame(view))
            self._start += total
        if self._start == self._end:
            self._start = self._end = 0
        return messages

    def _start_big(self, total: int, available: int) -> None:
        big = bytearray(total)
        big[:available] = self._buf[self._start:self._end]
        self._big = big
        self._big_filled = available
        self._start = self._end = 0
        if len(self._buf) > self._chunk:
            self._buf = bytearray(self._chunk)


def _decode_frame(view: memoryview) -> tuple:
    payload_len, count = _HEAD.unpack_from(view, 0)
    offset = _HEAD.size
    lengths = struct.unpack_from(f'<{count}Q', view, offset) if count else ()
    offset += 8 * count
    payload = view[offset:offset + payload_len]
    offset += payload_len
    buffers = []
    for length in lengths:
        buffers.append(view[offset:offset + length])
        offset += length
    return _loads(payload, buffers)


def _loads(payload, buffers) -> tuple:
    try:
        return pickle.loads(payload, buffers=buffers)
    except Exception as exc:
        raise FrameError(f'undecodable frame: {exc!r}') from exc


class _Truncated(Exception):
    """The peer closed the socket in the middle of a frame."""


class FrameReader:
    """The worker's frame reader: reads its blocking socket, returns messages.

    Call :meth:`read` when the socket is readable. It receives once into a
    shared buffer and returns the messages that became complete, or None at
    EOF. It never blocks while a frame's head is incomplete, so the caller's
    select loop keeps its heartbeat. Once a head is complete, the reader
    blocks until the rest of that frame arrives, which is safe because the
    dispatcher writes whole frames.

    Out-of-band buffers come out as ``bytes``, so a request body reaches the
    handler as ``bytes`` and ``Request.body`` needs no copy. The part of a
    buffer that is not in the shared buffer is received straight into its
    own ``bytes`` object with ``MSG_WAITALL``: one copy by the kernel, no
    zero-filled allocation, no copy in Python. The part already in the
    shared buffer costs one copy.

    A plain read takes all that is queued, which usually includes the start
    of a large body that follows its frame head. So after a buffer of at
    least ``direct_min`` bytes, the next ``_PEEK_READS`` reads that start
    with an empty shared buffer first look at the queue with ``MSG_PEEK``
    and receive only the bytes in front of the next large buffer. That costs
    one more ``recv`` per read, which only workers that receive large bodies
    pay.
    """

    def __init__(self, sock: socket.socket, chunk: int = _READ_CHUNK,
                 direct_min: int = DIRECT_READ_MIN) -> None:
        self._sock = sock
        self._buf = bytearray(chunk)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._direct_min = direct_min
        self._peek_reads = 0

    def read(self) -> list | None:
        """Receive once and return the messages that are complete, or None at EOF.

        Raises FrameError for a corrupt frame and OSError when the socket
        fails.
        """
        if self._peek_reads and self._start == self._end:
            self._peek_reads -= 1
            received = self._recv_before_large_buffer()
        else:
            if self._end == len(self._buf):
                self._make_room()
            received = self._sock.recv_into(self._view[self._end:])
        if not received:
            return None
        self._end += received
        return self._drain()

    def _recv_before_large_buffer(self) -> int:
        """Receive the queued bytes up to the next large out-of-band buffer.

        Called with an empty shared buffer. Returns the number of bytes
        received, 0 at EOF.
        """
        peeked = self._sock.recv_into(self._view, min(_PEEK_SIZE, len(self._buf)),
                                      socket.MSG_PEEK)
        if not peeked:
            return 0
        # These bytes are queued already, so this recv does not block.
        return self._sock.recv_into(self._view, self._bytes_to_receive(peeked))

    def _bytes_to_receive(self, peeked: int) -> int:
        """Return how many of the ``peeked`` bytes a read should take.

        It takes all of them, but stops where the first out-of-band buffer of
        at least ``direct_min`` bytes starts, or before a frame head that the
        peek cut when whole frames come before it.
        """
        buf = self._buf
        offset = 0
        while offset < peeked:
            head_end = offset + _HEAD.size
            if head_end <= peeked:
                payload_len, count = _HEAD.unpack_from(buf, offset)
                head_end += 8 * count
            if head_end > peeked:
                return offset or peeked
            position = head_end + payload_len
            lengths = struct.unpack_from(f'<{count}Q', buf, offset + _HEAD.size) if count else ()
            for length in lengths:
                if length >= self._direct_min:
                    return min(position, peeked)
                position += length
            offset = position
        return peeked

    def _make_room(self) -> None:
        # Called when the buffer is full, so the bytes at its front are an
        # incomplete head. Move them to the start, or grow the buffer when
        # they fill all of it (a head with very many out-of-band buffers).
        pending = self._end - self._start
        if pending == len(self._buf):
            buf = bytearray(2 * len(self._buf))
            buf[:pending] = self._buf
            self._buf = buf
            self._view = memoryview(buf)
        else:
            self._buf[:pending] = self._buf[self._start:self._end]
        self._start = 0
        self._end = pending

    def _drain(self) -> list:
        messages = []
        buf = self._buf
        view = self._view
        head_size = _HEAD.size
        while True:
            start = self._start
            available = self._end - start
            if available < head_size:
                break
            payload_len, count = _HEAD.unpack_from(buf, start)
            if not count and available >= head_size + payload_len:
                # The common case: a small frame that is whole in the buffer.
                end = start + head_size + payload_len
                self._start = end
                try:
                    messages.append(pickle.loads(view[start + head_size:end]))
                except Exception as exc:
                    raise FrameError(f'undecodable frame: {exc!r}') from exc
                continue
            head_len = head_size + 8 * count
            if available < head_len:
                break
            lengths = struct.unpack_from(f'<{count}Q', buf, start + head_size) if count else ()
            total = head_len + payload_len + sum(lengths)
            if total > MAX_FRAME:
                raise FrameError(f'frame of {total} bytes exceeds the limit')
            self._start = start + head_len
            try:
                messages.append(self._read_rest(payload_len, lengths))
            except _Truncated:
                # The peer closed the socket inside a frame. Return the
                # frames before it. The next read() gets EOF again and
                # returns None.
                break
        if self._start == self._end:
            self._start = self._end = 0
        return messages

    def _read_rest(self, payload_len: int, lengths: tuple) -> tuple:
        """Decode the frame whose head was just consumed, receiving what is missing."""
        if lengths and max(lengths) >= self._direct_min:
            self._peek_reads = _PEEK_READS
        payload = self._take(payload_len, copy=False)
        buffers = [self._take(length, copy=True) for length in lengths]
        return _loads(payload, buffers)

    def _take(self, size: int, copy: bool) -> bytes | memoryview:
        """Return the next ``size`` bytes of the stream, from the buffer first.

        Bytes that are all in the shared buffer come as a memoryview into it,
        or as a bytes copy when ``copy`` is set. The next read() reuses the
        shared buffer, so the caller must be done with the view by then.
        Otherwise the missing part is received into a new bytes object and
        the shared buffer is left empty.
        """
        start = self._start
        available = self._end - start
        if size <= available:
            self._start = start + size
            piece = self._view[start:start + size]
            return bytes(piece) if copy else piece
        prefix = bytes(self._view[start:self._end])
        self._start = self._end = 0
        rest = self._recv_exactly(size - available)
        return prefix + rest if prefix else rest

    def _recv_exactly(self, size: int) -> bytes:
        """Block until ``size`` bytes arrive. Raises _Truncated at EOF."""
        data = self._sock.recv(size, socket.MSG_WAITALL)
        if len(data) == size:
            return data
        # MSG_WAITALL returns fewer bytes at EOF, and also when a signal
        # handler ran after part of the data was copied (recv(2)). Keep
        # reading until EOF.
        pieces = [data]
        received = len(data)
        while received < size:
            if not data:
                raise _Truncated
            data = self._sock.recv(size - received, socket.MSG_WAITALL)
            pieces.append(data)
            received += len(data)
        return b''.join(pieces)
