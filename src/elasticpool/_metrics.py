"""What the metrics exporters share: bucket bounds and a plain histogram.

The exporters (:mod:`elasticpool.otel`, :mod:`elasticpool.prometheus`) read
gauges and counters from :meth:`Pool.stats() <elasticpool.Pool.stats>` and
:meth:`Pool.fleet() <elasticpool.Pool.fleet>` when they are collected, so an
attached exporter costs nothing between collections. Only the three timing
histograms need a report per event; they attach a ``TimingSink`` (see
``_state.py``) with :meth:`Pool.observe() <elasticpool.Pool.observe>`, and the
pool does no timing work at all while none is attached.
"""

from __future__ import annotations

import bisect
import itertools
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from ._pool import Pool
from ._state import TimingSink
from ._stats import PoolStats

__all__ = [
    "DEFAULT_BUCKETS",
    "Histogram",
    "Reported",
    "check_buckets",
    "close_reasons",
    "engine",
    "states",
]

SinkT = TypeVar("SinkT", bound=TimingSink)

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of the wait, use and connect time histograms, +Inf implied."""


def check_buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    """``buckets`` as a tuple, or :class:`ValueError` unless finite, positive and increasing."""
    out = tuple(float(b) for b in buckets)
    if not out or any(not math.isfinite(b) or b <= 0 for b in out):
        raise ValueError(f"buckets must be finite numbers of seconds > 0 (got {buckets!r})")
    if any(a >= b for a, b in itertools.pairwise(out)):
        raise ValueError(f"buckets must be strictly increasing (got {buckets!r})")
    return out


def engine(pool: Any) -> Pool[Any]:
    """The elastic :class:`~elasticpool.Pool` behind ``pool``: itself, or a drop-in face's.

    Accepts a :class:`~elasticpool.Pool` (what :func:`elasticpool.wrap`
    returns too), :class:`elasticpool.psycopg.AsyncConnectionPool` and the
    pool :func:`elasticpool.asyncpg.create_pool` makes; anything else is a
    :class:`TypeError`.
    """
    if isinstance(pool, Pool):
        return pool
    inner = getattr(pool, "elastic", None)  # both faces name their engine so
    if isinstance(inner, Pool):
        return inner
    raise TypeError(f"expected an elasticpool Pool or a drop-in face (got {type(pool).__name__})")


class Reported(Generic[SinkT]):
    """The pools an exporter reports, by name, held weakly, each with its attached timing sink.

    A second pool of a name already here is a :class:`ValueError` (unless the
    first was garbage-collected); adding the same pool again is a no-op.
    """

    __slots__ = ("_entries", "_where")

    def __init__(self, where: str) -> None:
        self._where = where  # ends the duplicate-name message: "already <where>"
        self._entries: dict[str, tuple[weakref.ref[Pool[Any]], SinkT]] = {}

    def add(self, obj: Any, sink: Callable[[Pool[Any]], SinkT]) -> None:
        """Report ``obj`` (a Pool or a drop-in face), attaching ``sink(pool)`` to it."""
        pool = engine(obj)
        entry = self._entries.get(pool.name)
        if entry is not None:
            if entry[0]() is pool:
                return
            if entry[0]() is not None:
                raise ValueError(f"a pool named {pool.name!r} is already {self._where}")
        timings = sink(pool)
        self._entries[pool.name] = (weakref.ref(pool), timings)
        pool.observe(timings)

    def remove(self, obj: Any) -> None:
        """Stop reporting ``obj`` and detach its sink (no-op if it is not here)."""
        pool = engine(obj)
        entry = self._entries.get(pool.name)
        if entry is not None and entry[0]() is pool:
            del self._entries[pool.name]
            pool.unobserve(entry[1])

    def clear(self) -> None:
        """Forget every pool, detaching each live one's sink."""
        for ref, timings in list(self._entries.values()):
            pool = ref()
            if pool is not None:
                pool.unobserve(timings)
        self._entries.clear()

    def live(self) -> list[tuple[Pool[Any], SinkT]]:
        """The pools not garbage-collected, each with its sink."""
        return [(p, t) for ref, t in list(self._entries.values()) if (p := ref()) is not None]

    def names(self) -> list[str]:
        """The names held, sorted (for a repr)."""
        return sorted(self._entries)


def states(s: PoolStats) -> tuple[tuple[str, int], ...]:
    """Connections by state, as ``(state, count)``: idle, in_use, connecting, resetting, closing."""
    return (
        ("idle", s.idle),
        ("in_use", s.in_use),
        ("connecting", s.connecting),
        ("resetting", s.resetting),
        ("closing", s.closing),
    )


def close_reasons(s: PoolStats) -> tuple[tuple[str, int], ...]:
    """Connections closed, as ``(reason, count)``: idle, lifetime, broken, resize."""
    return (
        ("idle", s.closed_idle),
        ("lifetime", s.closed_lifetime),
        ("broken", s.closed_broken),
        ("resize", s.closed_resize),
    )


class Histogram:
    """Counts of observations per bucket, with their sum; not cumulative, +Inf last.

    Not thread-safe for writers (the pool's event loop is the only one); a
    reader in another thread (an exporter's HTTP thread) may see one
    observation counted in ``count`` but not yet in a bucket, never worse.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs, Prometheus style, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), list(self.counts), strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(bound), float(total)))
        return out
