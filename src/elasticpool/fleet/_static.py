"""A fleet whose size is known in advance: no coordination at all."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from .._errors import ElasticPoolWarning
from .._limits import Member, divide, resolve_limit
from .._validate import check_int
from ._base import FleetStatus

if TYPE_CHECKING:
    from ._base import MemberPort

__all__ = ["StaticMembership"]


class StaticMembership:
    """``instances`` copies of the pool share the total evenly; nothing is coordinated.

    Use it when the replica count is known (a Deployment's ``replicas``, the
    number of worker processes). With ``index`` (this copy's number, from 0)
    the remainder of the division is handed out by index, so the whole total
    is used: 10 over 3 is 4 + 3 + 3. Without it each copy takes
    ``total // instances`` (Hasura's split: the remainder is left unused,
    since a copy cannot know whether it is the one to take it).

    More copies than the total is allowed: copies whose share is 0 stay at
    limit 0 (callers wait and time out), and a warning says so when the pool
    opens. It is not demand-aware: for that, use
    :class:`~elasticpool.PostgresMembership`.
    """

    def __init__(self, instances: int, *, index: int | None = None) -> None:
        check_int("instances", instances, low=1)
        check_int("index", index, low=0, high=instances - 1, optional=True)
        self.instances = instances
        self.index = index

    def _limit(self, pool: MemberPort) -> tuple[int, int | None, str]:
        resolution = resolve_limit(pool.settings, allow_small_total=pool.settings.allow_small_total)
        total = resolution.fleet_total
        if total is None:  # only max_connections: per instance, nothing to divide
            return resolution.limit, None, resolution.source
        if self.index is None:
            return total // self.instances, total, resolution.source
        members = [Member(f"{i:06}") for i in range(self.instances)]
        return divide(total, members)[f"{self.index:06}"], total, resolution.source

    async def join(self, pool: MemberPort) -> None:
        limit, total, _source = self._limit(pool)
        if limit == 0:
            warnings.warn(
                f"pool {pool.name!r}: the share of total_max_connections {total} for copy "
                f"{self.index} of {self.instances} is 0: its callers will wait and time out",
                ElasticPoolWarning,
                stacklevel=2,
            )
        await pool.resize(limit)

    async def run(self, pool: MemberPort) -> None:
        return None

    async def leave(self, pool: MemberPort) -> None:
        return None

    def status(self, pool: MemberPort) -> FleetStatus:
        limit, total, source = self._limit(pool)
        return FleetStatus(
            pool=pool.name,
            instance="" if self.index is None else str(self.index),
            membership="static",
            limit=pool.stats().max,
            share=limit,
            fleet_total=total,
            source=source,
        )

    def __repr__(self) -> str:
        return f"StaticMembership(instances={self.instances}, index={self.index})"
