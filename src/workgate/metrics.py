"""In-process counters behind the status document and the Prometheus metrics.

The hot path only increments dict entries and one histogram bucket per
request; everything else is computed when the status or metrics path is
read.
"""

from __future__ import annotations

import bisect
import collections

# Upper bounds of the latency histogram buckets, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters kept by one dispatcher."""

    def __init__(self) -> None:
        # (pool, status) -> count of requests that left the in-flight table
        self.requests: collections.Counter = collections.Counter()
        # (pool, reason) -> count, reasons as in on_pending_removed
        self.removed: collections.Counter = collections.Counter()
        # pool -> [bucket counts..., +Inf count], and the sum of durations
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: collections.Counter = collections.Counter()
        # pool -> requests answered by the dispatcher before reaching a worker
        self.rejected: collections.Counter = collections.Counter()
        self.streams_opened = 0
        self.static_served = 0
        self.bad_requests = 0
        self.rejected_connections = 0
        self.slow_readers = 0

    def count(self, pool: str, status: int) -> None:
        """Count a request the dispatcher answered for ``pool`` without a worker."""
        self.rejected[(pool, status)] += 1

    def finish(self, pool: str, status: int, reason: str, seconds: float) -> None:
        self.requests[(pool, status)] += 1
        self.removed[(pool, reason)] += 1
        buckets = self.latency.get(pool)
        if buckets is None:
            buckets = self.latency[pool] = [0] * (len(LATENCY_BUCKETS) + 1)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[pool] += seconds
