"""In-process counters behind the status document and the Prometheus metrics.

The hot path only increments dict entries and one histogram bucket per
request; everything else is computed when the status or metrics path is
read.
"""

from __future__ import annotations

import bisect
import collections
import os
import time

# Upper bounds of the latency histogram buckets, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _PoolCounters:
    """Counters of one pool, kept in plain dicts because ``finish`` runs per request."""

    __slots__ = ('statuses', 'reasons', 'buckets', 'seconds')

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.reasons: dict[str, int] = {}
        # One count per LATENCY_BUCKETS bound, then the +Inf count.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.seconds = 0.0


class Metrics:
    """Counters kept by one dispatcher."""

    def __init__(self) -> None:
        # pool -> counters of the requests that left the in-flight table
        self.pools: dict[str, _PoolCounters] = {}
        # (pool, status) -> requests the dispatcher responded to before any worker saw them
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
        """Count a request that left the in-flight table after ``seconds``."""
        counters = self.pools.get(pool)
        if counters is None:
            counters = self.pools[pool] = _PoolCounters()
        statuses = counters.statuses
        statuses[status] = statuses.get(status, 0) + 1
        reasons = counters.reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        counters.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counters.seconds += seconds

    @property
    def requests(self) -> collections.Counter:
        """(pool, status) -> count of requests that left the in-flight table."""
        return collections.Counter({(pool, status): count
                                    for pool, counters in self.pools.items()
                                    for status, count in counters.statuses.items()})

    @property
    def removed(self) -> collections.Counter:
        """(pool, reason) -> count, with the reasons of on_pending_removed."""
        return collections.Counter({(pool, reason): count
                                    for pool, counters in self.pools.items()
                                    for reason, count in counters.reasons.items()})


def status_document(dispatcher) -> dict:
    """Build the JSON status document served on the ``status_path`` setting."""
    pending = dispatcher._pending
    return {
        'pid': os.getpid(),
        'uptime_seconds': round(time.monotonic() - dispatcher._started_at, 3)
        if dispatcher._started_at else 0.0,
        'connections': len(dispatcher._connections),
        'in_flight': len(pending),
        'open_streams': sum(1 for entry in pending.values() if entry.streaming),
        'max_pending': dispatcher._max_pending,
        'shutting_down': dispatcher._shutting_down,
        'pools': [pool.status() for pool in dispatcher._pools],
    }


class _Collector:
    """Turns one dispatcher's counters into Prometheus metric families."""

    def __init__(self, dispatcher) -> None:
        self.dispatcher = dispatcher

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        dispatcher = self.dispatcher
        metrics: Metrics = dispatcher.metrics

        requests = CounterMetricFamily(
            'workgate_requests', 'Requests answered, by pool and HTTP status.',
            labels=['pool', 'status'])
        totals = collections.Counter(metrics.requests)
        totals.update(metrics.rejected)
        for (pool, status), count in sorted(totals.items()):
            requests.add_metric([pool, str(status)], count)
        yield requests

        removals = CounterMetricFamily(
            'workgate_request_removals', 'Requests that left the in-flight table, by reason.',
            labels=['pool', 'reason'])
        for (pool, reason), count in sorted(metrics.removed.items()):
            removals.add_metric([pool, reason], count)
        yield removals

        latency = HistogramMetricFamily(
            'workgate_request_duration_seconds',
            'Time from accepting a request to removing it, by pool.', labels=['pool'])
        for pool, counters in sorted(metrics.pools.items()):
            cumulative = 0
            points = []
            for bound, count in zip((*LATENCY_BUCKETS, float('inf')), counters.buckets,
                                    strict=True):
                cumulative += count
                points.append(('+Inf' if bound == float('inf') else repr(bound), cumulative))
            latency.add_metric([pool], points, counters.seconds)
        yield latency

        in_flight = GaugeMetricFamily('workgate_requests_in_flight',
                                      'Requests held by workers, by pool.', labels=['pool'])
        waiting = GaugeMetricFamily('workgate_requests_waiting',
                                    'Requests waiting for a worker, by pool.', labels=['pool'])
        alive = GaugeMetricFamily('workgate_workers_alive', 'Live worker processes, by pool.',
                                  labels=['pool'])
        degraded = GaugeMetricFamily('workgate_pool_degraded',
                                     '1 when the pool is degraded and answers 503.',
                                     labels=['pool'])
        restarts = CounterMetricFamily('workgate_worker_restarts',
                                       'Worker restarts, by pool.', labels=['pool'])
        deaths = CounterMetricFamily('workgate_worker_deaths',
                                     'Worker deaths, by pool and reason.',
                                     labels=['pool', 'reason'])
        for pool in dispatcher._pools:
            name = pool.name
            in_flight.add_metric([name], sum(len(slot.held) for slot in pool._slots))
            waiting.add_metric([name], pool.queue_size)
            alive.add_metric([name], pool.alive_count)
            degraded.add_metric([name], 1 if pool.is_degraded else 0)
            restarts.add_metric([name], sum(slot.restarts for slot in pool._slots))
            for reason, count in sorted(pool.deaths.items()):
                deaths.add_metric([name, reason], count)
        yield from (in_flight, waiting, alive, degraded, restarts, deaths)

        document = status_document(dispatcher)
        yield GaugeMetricFamily('workgate_open_streams', 'Open streamed responses.',
                                value=document['open_streams'])
        yield GaugeMetricFamily('workgate_open_connections', 'Open client connections.',
                                value=document['connections'])
        for name, help_text, value in (
                ('workgate_bad_requests', 'Requests rejected by the HTTP parser or limits.',
                 metrics.bad_requests),
                ('workgate_slow_readers', 'Streams closed because the client read too slowly.',
                 metrics.slow_readers),
                ('workgate_rejected_connections', 'Connections refused at max_connections.',
                 metrics.rejected_connections),
                ('workgate_static_responses', 'Responses sent by static mounts.',
                 metrics.static_served),
                ('workgate_streams_opened', 'Streamed responses started.',
                 metrics.streams_opened)):
            yield CounterMetricFamily(name, help_text, value=value)


def render_prometheus(dispatcher) -> tuple[bytes, str]:
    """Return (body, content type) of the Prometheus text exposition."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(dispatcher))
    return generate_latest(registry), CONTENT_TYPE_LATEST
