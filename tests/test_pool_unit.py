"""How far ahead a pool sends requests, from the handler times it observed.

No process is started: the tests feed a pool's slot with handler end times
the way the dispatcher does when responses arrive.
"""

from __future__ import annotations

import itertools

import pytest

import workgate
from workgate.pool import MAX_PREFETCH, _Slot


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
