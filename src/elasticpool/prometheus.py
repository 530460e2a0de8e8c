"""Prometheus metrics for elasticpool pools (the ``prometheus`` extra).

::

    from elasticpool.prometheus import PoolCollector

    collector = PoolCollector(pool).register()    # the default registry
    collector.add(other_pool)                      # label pool="<its name>"

:class:`PoolCollector` implements ``prometheus_client``'s collector protocol:
gauges and counters are read from :meth:`Pool.stats()
<elasticpool.Pool.stats>` and :meth:`Pool.fleet() <elasticpool.Pool.fleet>`
when Prometheus scrapes, so between scrapes they cost nothing. The wait, use
and connect time histograms need one report per acquire, release and connect;
they are attached to each pool while it is in a collector (and only then).
Histograms count from the moment the pool was added; counters count from the
pool's start.

Every metric carries the label ``pool`` (the pool's name). See
``docs/observe.md`` for the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, CollectorRegistry

from ._metrics import DEFAULT_BUCKETS, Histogram, Reported, check_buckets, close_reasons, states

__all__ = ["PoolCollector", "register"]


class _Timings:
    """The histograms of one pool; a ``TimingSink`` (see :meth:`elasticpool.Pool.observe`)."""

    __slots__ = ("connects", "uses", "waits")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.waits = Histogram(bounds)
        self.uses = Histogram(bounds)
        self.connects = Histogram(bounds)

    def wait(self, seconds: float) -> None:
        self.waits.observe(seconds)

    def use(self, seconds: float) -> None:
        self.uses.observe(seconds)

    def create(self, seconds: float) -> None:
        self.connects.observe(seconds)


class PoolCollector:
    """A ``prometheus_client`` collector for one or more pools.

    ``PoolCollector(pool_a, pool_b)`` reports both, told apart by the
    ``pool`` label (their names must differ). A drop-in face (asyncpg's
    ``create_pool()``, psycopg's ``AsyncConnectionPool``) stands for its
    pool. :meth:`add` and :meth:`remove` change the set later;
    :meth:`register` adds the collector to a registry (the default one unless
    given) and :meth:`close` takes it out again and detaches the histograms
    from every pool.

    ``buckets`` are the histograms' upper bounds in seconds (``+Inf`` is
    implied). Pools are held weakly: a pool that is garbage-collected drops
    out. A closed pool keeps reporting its last counts until it is removed.
    """

    def __init__(self, *pools: Any, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self._bounds = check_buckets(buckets)
        self._pools: Reported[_Timings] = Reported("in this collector")
        self._registry: CollectorRegistry | None = None
        for pool in pools:
            self.add(pool)

    def add(self, obj: Any) -> None:
        """Report ``obj`` (a Pool or a drop-in face) too; a second of one name is a ValueError."""
        self._pools.add(obj, lambda _: _Timings(self._bounds))

    def remove(self, obj: Any) -> None:
        """Stop reporting ``obj`` and detach its histograms (no-op if it is not here)."""
        self._pools.remove(obj)

    def register(self, registry: CollectorRegistry | None = None) -> PoolCollector:
        """Register with ``registry`` (default: ``prometheus_client.REGISTRY``); returns self."""
        registry = REGISTRY if registry is None else registry
        registry.register(self)
        self._registry = registry
        return self

    def close(self) -> None:
        """Unregister (if registered) and detach from every pool."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None
        self._pools.clear()

    def collect(self) -> Iterator[Metric]:
        """The metric families, read now (the collector protocol)."""
        live = self._pools.live()
        pool_label = ["pool"]
        conns = GaugeMetricFamily(
            "elasticpool_connections",
            "Connections by state (idle, in_use, connecting, resetting, closing).",
            labels=["pool", "state"],
        )
        gauges = {
            "max": GaugeMetricFamily(
                "elasticpool_connections_max",
                "The pool's connection limit now (its fleet share with a membership).",
                labels=pool_label,
            ),
            "min": GaugeMetricFamily(
                "elasticpool_connections_min",
                "The warm floor (min_connections, at most the limit).",
                labels=pool_label,
            ),
            "waiting": GaugeMetricFamily(
                "elasticpool_pending_requests",
                "Callers queued for a connection.",
                labels=pool_label,
            ),
            "oldest": GaugeMetricFamily(
                "elasticpool_pending_requests_oldest_age_seconds",
                "How long the oldest queued caller has waited (0 when none waits).",
                labels=pool_label,
            ),
            "share": GaugeMetricFamily(
                "elasticpool_fleet_share",
                "This instance's fair share of the fleet total.",
                labels=pool_label,
            ),
            "total": GaugeMetricFamily(
                "elasticpool_fleet_total",
                "The connection total divided among the fleet (absent when unbounded).",
                labels=pool_label,
            ),
            "healthy": GaugeMetricFamily(
                "elasticpool_fleet_healthy",
                "1 while fleet coordination works, 0 while it fails.",
                labels=pool_label,
            ),
        }
        counters = {
            "acquires": CounterMetricFamily(
                "elasticpool_acquires", "Connections handed to callers.", labels=pool_label
            ),
            "waits": CounterMetricFamily(
                "elasticpool_waits", "Acquires that had to queue.", labels=pool_label
            ),
            "timeouts": CounterMetricFamily(
                "elasticpool_timeouts",
                "Acquires that gave up at their timeout (PoolTimeout).",
                labels=pool_label,
            ),
            "connects": CounterMetricFamily(
                "elasticpool_connects", "Connections opened.", labels=pool_label
            ),
            "connect_errors": CounterMetricFamily(
                "elasticpool_connect_errors", "Connect attempts that failed.", labels=pool_label
            ),
            "returned_broken": CounterMetricFamily(
                "elasticpool_returned_broken",
                "Borrowed connections that came back dead.",
                labels=pool_label,
            ),
        }
        closed = CounterMetricFamily(
            "elasticpool_connections_closed",
            "Connections closed, by reason (idle, lifetime, broken, resize).",
            labels=["pool", "reason"],
        )
        hists = {
            "wait": HistogramMetricFamily(
                "elasticpool_wait_seconds",
                "Time from acquire() to getting a connection.",
                labels=pool_label,
            ),
            "use": HistogramMetricFamily(
                "elasticpool_use_seconds",
                "Time from borrowing a connection to giving it back.",
                labels=pool_label,
            ),
            "connect": HistogramMetricFamily(
                "elasticpool_connect_seconds",
                "Time a successful connect took.",
                labels=pool_label,
            ),
        }
        for pool, t in live:
            s = pool.stats()
            fleet = pool.fleet()
            name = [pool.name]
            for state, value in states(s):
                conns.add_metric([pool.name, state], value)
            gauges["max"].add_metric(name, s.max)
            gauges["min"].add_metric(name, s.min)
            gauges["waiting"].add_metric(name, s.waiting)
            gauges["oldest"].add_metric(name, s.oldest_waiter_age)
            gauges["share"].add_metric(name, fleet.share)
            if fleet.fleet_total is not None:
                gauges["total"].add_metric(name, fleet.fleet_total)
            gauges["healthy"].add_metric(name, 1.0 if fleet.healthy else 0.0)
            for key, family in counters.items():
                family.add_metric(name, getattr(s, key))
            for reason, value in close_reasons(s):
                closed.add_metric([pool.name, reason], value)
            for key, hist in (("wait", t.waits), ("use", t.uses), ("connect", t.connects)):
                hists[key].add_metric(name, hist.cumulative(), hist.sum)
        yield conns
        yield from gauges.values()
        yield from counters.values()
        yield closed
        yield from hists.values()

    def __repr__(self) -> str:
        return f"PoolCollector(pools={self._pools.names()})"


def register(*pools: Any, registry: CollectorRegistry | None = None) -> PoolCollector:
    """``PoolCollector(*pools).register(registry)``: report these pools to Prometheus."""
    return PoolCollector(*pools).register(registry)
