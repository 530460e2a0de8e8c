"""What :meth:`Pool.stats() <elasticpool.Pool.stats>` returns: a frozen snapshot of one pool."""

from __future__ import annotations

import dataclasses

__all__ = ["PoolStats"]


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one pool, as :meth:`Pool.stats` returns it.

    Gauges are counts at the moment of the call; counters only grow over the
    pool's life. Times are in seconds. ``in_use`` includes connections already
    handed to a waiter that has not resumed yet.
    """

    name: str
    size: int
    idle: int
    in_use: int
    connecting: int
    resetting: int
    closing: int
    waiting: int
    min: int
    max: int
    oldest_waiter_age: float
    acquires: int
    timeouts: int
    connects: int
    connect_errors: int
    closed_idle: int
    closed_lifetime: int
    closed_broken: int
    closed_resize: int
    total_wait_time: float
    total_usage_time: float
    waits: int = 0
    """Acquires that had to queue."""
    returned_broken: int = 0
    """Connections that came back dead (closed, or a connection-class error)."""
    total_connect_time: float = 0.0
    """Seconds spent in successful connects."""
