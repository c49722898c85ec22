"""How far ahead a pool sends requests, from the handler times it observed.

No process is started: the tests feed a pool's slot with handler end times
the way the dispatcher does when responses arrive.
"""

from __future__ import annotations

import itertools
import time

import pytest

import workgate
from workgate.pool import MAX_PREFETCH, READY, _Slot


class IdleWorker(workgate.Worker):
    pass


def observed_pool(durations: list[float]) -> workgate.WorkerPool:
    """Return a pool whose one slot ran handlers of the given durations, in seconds."""
    pool = workgate.WorkerPool(IdleWorker, num_workers=1)
    slot = _Slot(pool, 0)
    now = 100.0
    slot.head_since = now
    for request_id, duration in enumerate(durations):
        slot.inbox.append((request_id, None))
        now += duration
        slot.handler_done(now)
    return pool


def test_fast_handlers_fill_the_budget():
    pool = observed_pool([0.0001] * 200)

    # 1 ms of budget over 0.1 ms handlers; the float average may land just below.
    assert pool._prefetch_depth() in (9, 10)


def test_very_fast_handlers_stop_at_cap():
    pool = observed_pool([0.000001] * 200)

    assert pool._prefetch_depth() == MAX_PREFETCH


def test_steady_slow_handlers_get_one_ahead():
    durations = [0.005 * (1 + 0.1 * ((i % 5) - 2) / 2) for i in range(200)]
    pool = observed_pool(durations)

    assert pool._prefetch_depth() == 2


@pytest.mark.parametrize('durations', [
    [0.001] * 9 + [0.05],           # mostly short, sometimes long
    [0.002, 0.2],                   # alternating short and long
])
def test_mixed_slow_handlers_get_none_ahead(durations):
    pool = observed_pool(list(itertools.islice(itertools.cycle(durations), 400)))

    assert pool._prefetch_depth() == 1


def test_first_slow_handlers_get_none_ahead():
    pool = observed_pool([0.005] * 3)

    assert pool._prefetch_depth() == 1


class FakeDispatcher:
    def __init__(self):
        self._pending = {}


class FakeEntry:
    """A held request as the pool tracks it: the slot and worker it was given to."""

    slot = None
    worker_id = None


def busy_pool(head_ages: list[float]) -> workgate.WorkerPool:
    """Return a steady 5 ms pool whose workers run one request each, started this long ago."""
    pool = workgate.WorkerPool(IdleWorker, num_workers=len(head_ages))
    recorder = observed_pool([0.005] * 200)
    pool._handler_time = recorder._handler_time
    pool._handler_spread = recorder._handler_spread
    pool._dispatcher = FakeDispatcher()
    now = time.monotonic()
    for slot, age in zip(pool._slots, head_ages, strict=True):
        slot.state = READY
        slot.inbox.append((0, None))
        slot.head_since = now - age
    return pool


def test_overdue_worker_gets_nothing_ahead():
    pool = busy_pool([1.0, 0.001])
    pool._waiting.extend([(-1, ('first',)), (-1, ('second',))])

    pool._schedule()

    overdue, fresh = pool._slots
    assert len(overdue.inbox) == 1
    assert [message for _, message in fresh.inbox] == [None, ('first',)]
    assert list(pool._waiting) == [(-1, ('second',))]


def test_all_workers_overdue_keeps_requests_waiting():
    pool = busy_pool([1.0, 2.0])
    pool._waiting.append((-1, ('first',)))

    pool._schedule()

    assert [len(slot.inbox) for slot in pool._slots] == [1, 1]
    assert len(pool._waiting) == 1


def test_take_back_requeues_pending_request():
    pool = busy_pool([0.001])
    slot = pool._slots[0]
    slot.inbox.clear()
    slot.inbox.append((7, ('seven',)))
    pool._dispatcher._pending[7] = object()

    pool._take_back(slot, 7)

    assert not slot.inbox
    assert list(pool._waiting) == [(7, ('seven',))]


def test_take_back_drops_request_that_left():
    # Its client left or it timed out: the in-flight table no longer has it.
    pool = busy_pool([0.001])
    slot = pool._slots[0]
    slot.inbox.clear()
    slot.inbox.append((8, ('eight',)))

    pool._take_back(slot, 8)

    assert not slot.inbox
    assert not pool._waiting


class ReadCount:
    """Stands in for the counter a worker keeps in shared memory."""

    def __init__(self, value):
        self.value = value


def slot_holding(entries):
    """Return a busy one-worker pool and its slot, holding ``entries`` in its inbox."""
    pool = busy_pool([0.001])
    slot = pool._slots[0]
    slot.inbox.clear()
    for request_id, message in entries:
        slot.inbox.append((request_id, message))
        slot.held[request_id] = FakeEntry()
    return pool, slot


def test_requeue_unstarted_keeps_read_requests():
    pool, slot = slot_holding([(1, ('one',)), (2, ('two',)), (3, ('three',)),
                               (4, ('four',))])
    # Ten requests were sent; the six before these four ended. The worker
    # read nine, so requests 1 to 3 may have started.
    slot.sent = 10
    slot.read_count = ReadCount(9)

    pool._requeue_unstarted(slot)

    assert sorted(slot.held) == [1, 2, 3]
    assert list(pool._waiting) == [(4, ('four',))]


def test_requeue_unstarted_head_not_read_yet():
    pool, slot = slot_holding([(1, ('one',)), (2, ('two',))])
    slot.sent = 2
    slot.read_count = ReadCount(0)

    pool._requeue_unstarted(slot)

    # The head counts as started in any case.
    assert sorted(slot.held) == [1]
    assert list(pool._waiting) == [(2, ('two',))]


def test_requeue_unstarted_without_count():
    pool, slot = slot_holding([(1, ('one',)), (2, ('two',))])

    pool._requeue_unstarted(slot)

    assert sorted(slot.held) == [1]
    assert list(pool._waiting) == [(2, ('two',))]
