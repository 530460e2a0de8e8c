"""OpenTelemetry metrics for elasticpool pools (the ``otel`` extra).

::

    from elasticpool.otel import instrument

    instrument(pool)                             # the global meter provider
    instrument(other_pool, meter_provider=mp)    # or a given one

Names follow OpenTelemetry's semantic conventions for database client
connection pools where they exist (``db.client.connection.count``,
``.max``, ``.idle.min``, ``.pending_requests``, ``.timeouts``, and the
``.wait_time``, ``.use_time`` and ``.create_time`` histograms), with the
attribute ``db.client.connection.pool.name`` set to the pool's name;
elasticpool's own additions are under ``elasticpool.``. See
``docs/observe.md`` for the table.

Gauges and counters are observable instruments whose callbacks read
:meth:`Pool.stats() <elasticpool.Pool.stats>` and :meth:`Pool.fleet()
<elasticpool.Pool.fleet>` at collection time. The three histograms need a
record per acquire, release and connect; they are attached to a pool while it
is instrumented (and only then), and count from that moment.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation

from . import __version__
from ._metrics import DEFAULT_BUCKETS, Reported, check_buckets, close_reasons, states
from ._pool import Pool

__all__ = ["PoolInstruments", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
_DETAIL_STATE = "elasticpool.connection.state"
_CLOSE_REASON = "elasticpool.close.reason"

_by_meter: weakref.WeakKeyDictionary[Any, PoolInstruments] = weakref.WeakKeyDictionary()


class _Timings:
    """One pool's histogram records; a ``TimingSink`` (see :meth:`elasticpool.Pool.observe`)."""

    __slots__ = ("_attrs", "_create", "_use", "_wait")

    def __init__(self, owner: PoolInstruments, name: str) -> None:
        self._attrs = {POOL_NAME: name}
        self._wait = owner._wait_time
        self._use = owner._use_time
        self._create = owner._create_time

    def wait(self, seconds: float) -> None:
        self._wait.record(seconds, self._attrs)

    def use(self, seconds: float) -> None:
        self._use.record(seconds, self._attrs)

    def create(self, seconds: float) -> None:
        self._create.record(seconds, self._attrs)


class PoolInstruments:
    """The instruments of one meter, and the pools they report.

    Made by :func:`instrument`, once per meter provider: a later call with
    the same provider adds its pools here. :meth:`remove` stops reporting a
    pool and detaches its histograms. Pools are held weakly; a pool that is
    garbage-collected drops out, and a closed pool reports its last counts
    until it is removed.
    """

    def __init__(self, meter: Meter, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = list(check_buckets(buckets))
        self._pools: Reported[_Timings] = Reported("instrumented")
        conn = "{connection}"
        self._wait_time: Histogram = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self._use_time: Histogram = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        self._create_time: Histogram = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=bounds,
        )
        updown = meter.create_observable_up_down_counter
        counter = meter.create_observable_counter
        updown(
            "db.client.connection.count",
            [self._count],
            unit=conn,
            description="Connections by state: idle, or used (borrowed or being reset).",
        )
        updown(
            "elasticpool.connection.count",
            [self._detail],
            unit=conn,
            description="Connections by elasticpool state: idle, in_use, connecting, "
            "resetting, closing.",
        )
        updown(
            "db.client.connection.max",
            [self._gauge(lambda s: s.max)],
            unit=conn,
            description="The pool's connection limit now (its fleet share with a membership).",
        )
        updown(
            "db.client.connection.idle.min",
            [self._gauge(lambda s: s.min)],
            unit=conn,
            description="The warm floor (min_connections, at most the limit).",
        )
        updown(
            "db.client.connection.pending_requests",
            [self._gauge(lambda s: s.waiting)],
            unit="{request}",
            description="Callers queued for a connection.",
        )
        meter.create_observable_gauge(
            "elasticpool.connection.pending_requests.oldest_age",
            [self._gauge(lambda s: s.oldest_waiter_age)],
            unit="s",
            description="How long the oldest queued caller has waited (0 when none waits).",
        )
        counter(
            "db.client.connection.timeouts",
            [self._gauge(lambda s: s.timeouts)],
            unit="{timeout}",
            description="Acquires that gave up at their timeout (PoolTimeout).",
        )
        for name, read, unit, text in (
            ("elasticpool.acquires", lambda s: s.acquires, "{acquire}", "Connections handed out."),
            ("elasticpool.waits", lambda s: s.waits, "{acquire}", "Acquires that had to queue."),
            ("elasticpool.connects", lambda s: s.connects, conn, "Connections opened."),
            (
                "elasticpool.connect_errors",
                lambda s: s.connect_errors,
                "{error}",
                "Connect attempts that failed.",
            ),
            (
                "elasticpool.returned_broken",
                lambda s: s.returned_broken,
                conn,
                "Borrowed connections that came back dead.",
            ),
        ):
            counter(name, [self._gauge(read)], unit=unit, description=text)
        counter(
            "elasticpool.connection.closed",
            [self._closed],
            unit=conn,
            description="Connections closed, by reason: idle, lifetime, broken, resize.",
        )
        updown(
            "elasticpool.fleet.share",
            [self._fleet("share")],
            unit=conn,
            description="This instance's fair share of the fleet total.",
        )
        updown(
            "elasticpool.fleet.total",
            [self._fleet("total")],
            unit=conn,
            description="The connection total divided among the fleet (absent when unbounded).",
        )
        meter.create_observable_gauge(
            "elasticpool.fleet.healthy",
            [self._fleet("healthy")],
            unit="1",
            description="1 while fleet coordination works, 0 while it fails.",
        )

    # ------------------------------------------------------------------ pools

    def add(self, obj: Any) -> None:
        """Report ``obj`` (a Pool or a drop-in face) too; a second of one name is a ValueError."""
        self._pools.add(obj, lambda pool: _Timings(self, pool.name))

    def remove(self, obj: Any) -> None:
        """Stop reporting ``obj`` and detach its histograms (no-op if it is not here)."""
        self._pools.remove(obj)

    def pools(self) -> list[Pool[Any]]:
        """The pools reported now."""
        return [p for p, _ in self._pools.live()]

    # ------------------------------------------------------------------ callbacks

    def _gauge(self, read: Any) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(read(p.stats()), {POOL_NAME: p.name}) for p in self.pools()]

        return callback

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for p in self.pools():
            s = p.stats()
            out.append(Observation(s.idle, {POOL_NAME: p.name, STATE: "idle"}))
            out.append(Observation(s.in_use + s.resetting, {POOL_NAME: p.name, STATE: "used"}))
        return out

    def _detail(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for p in self.pools():
            for state, value in states(p.stats()):
                out.append(Observation(value, {POOL_NAME: p.name, _DETAIL_STATE: state}))
        return out

    def _closed(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for p in self.pools():
            for reason, value in close_reasons(p.stats()):
                out.append(Observation(value, {POOL_NAME: p.name, _CLOSE_REASON: reason}))
        return out

    def _fleet(self, what: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for p in self.pools():
                f = p.fleet()
                attrs = {POOL_NAME: p.name}
                if what == "share":
                    out.append(Observation(f.share, attrs))
                elif what == "total":
                    if f.fleet_total is not None:
                        out.append(Observation(f.fleet_total, attrs))
                else:
                    out.append(Observation(1 if f.healthy else 0, attrs))
            return out

        return callback

    def __repr__(self) -> str:
        return f"PoolInstruments(pools={self._pools.names()})"


def instrument(
    *pools: Any,
    meter_provider: MeterProvider | None = None,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> PoolInstruments:
    """Report ``pools`` through OpenTelemetry metrics; returns the :class:`PoolInstruments`.

    Each may be a :class:`~elasticpool.Pool` or a drop-in face (asyncpg's
    ``create_pool()``, psycopg's ``AsyncConnectionPool``), which stands for its pool.

    ``meter_provider`` defaults to the global one
    (``opentelemetry.metrics.get_meter_provider()``). The instruments are made
    once per provider (OpenTelemetry keeps the first callbacks of an
    instrument name), so calling it again with the same provider adds the
    pools to the same :class:`PoolInstruments`; ``buckets`` (the histograms'
    upper bounds in seconds, an advisory to the SDK) apply from the first call.
    """
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    instruments = _by_meter.get(provider)
    if instruments is None:
        meter = provider.get_meter("elasticpool", __version__)
        instruments = _by_meter[provider] = PoolInstruments(meter, buckets)
    for pool in pools:
        instruments.add(pool)
    return instruments
