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
pickle, and the receiver gets a memoryview into the frame buffer it read
them into.

Every message is a tuple whose first item is one of the codes below.

Dispatcher to worker:

=================  ===================================================
REQUEST            (REQUEST, request_id, method, path, query, headers,
                   content_type, remote_address, context, body, data)
CONFIG             (CONFIG, config)
DISCONNECT         (DISCONNECT, request_id)
STOP               (STOP,)
=================  ===================================================

Worker to dispatcher:

=================  ===================================================
HELLO              (HELLO, pid): setup() finished, ready for requests
RESPONSE           (RESPONSE, request_id, status, headers, cookies, body,
                   content_type, ends_handler): ends_handler is set on
                   the answer a handler returned, which ends its turn
READY              (READY, request_id): its handler returned DEFERRED
RETURN             (RETURN, request_id): a paused worker hands back a
                   request it had not started
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
import struct

REQUEST = 1
CONFIG = 2
DISCONNECT = 3
STOP = 4

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

_HEAD = struct.Struct('<IH')
_PROTOCOL = 5
_READ_CHUNK = 256 * 1024


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
    try:
        return pickle.loads(payload, buffers=buffers)
    except Exception as exc:
        raise FrameError(f'undecodable frame: {exc!r}') from exc
