"""What a membership is, and what the fleet looks like from one instance."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._pool import Pool

__all__ = ["FleetStatus", "MemberStatus", "Membership"]


@dataclasses.dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member of the fleet, as this instance last saw it."""

    id: str
    demand: int
    """Connections in use plus callers waiting, as it last reported."""
    holding: int
    """Connections it had open, as it last reported."""
    share: int
    """Its fair share of the total in this instance's last view."""
    granted: int
    """The limit it last gave itself."""
    heartbeat_age: float
    """Seconds since its last heartbeat, by the database clock."""


@dataclasses.dataclass(frozen=True, slots=True)
class FleetStatus:
    """What :meth:`Pool.fleet() <elasticpool.Pool.fleet>` returns."""

    pool: str
    instance: str
    membership: str
    """``"none"`` (a fleet of one), ``"static"`` or ``"postgres"``."""
    limit: int
    """This instance's limit now."""
    share: int
    """This instance's fair share (what it may grow to as others release)."""
    fleet_total: int | None
    """The total divided among the fleet; ``None``: per-instance limit, fleet unbounded."""
    source: str
    """Which precedence rule set the total (see :func:`elasticpool.resolve_limit`)."""
    members: tuple[MemberStatus, ...] = ()
    observed_backends: int | None = None
    """Backends of this pool's fleet that ``pg_stat_activity`` shows (when known)."""
    departed_backends: int = 0
    """Of those, the ones of members without a live lease (killed mid-query), held as used."""
    healthy: bool = True
    """False while coordination fails (the last share is kept, then the fallback)."""
    last_heartbeat_age: float | None = None
    """Seconds since this instance's last successful heartbeat (local clock)."""
    active: bool = True
    """Whether it holds a lease now: a member with no demand and no connections leaves."""
    claimed: int | None = None
    """The fleet's claims added up (connections held or granted), at the last heartbeat."""
    database_total: int | None = None
    """The budget over every pool name on this database, when one is set."""
    database_claimed: int | None = None
    """The claims of every pool name on this database added up, when there is a budget."""


@runtime_checkable
class Membership(Protocol):
    """How a pool learns its share of a fleet-wide total.

    The pool calls :meth:`join` when it opens (to set its first limit before
    anyone borrows), runs :meth:`run` in the background for its whole life,
    and calls :meth:`leave` when it closes. A membership changes the pool's
    limit only through :meth:`Pool.resize <elasticpool.Pool.resize>`.
    """

    async def join(self, pool: Pool[Any]) -> None: ...

    async def run(self, pool: Pool[Any]) -> None: ...

    async def leave(self, pool: Pool[Any]) -> None: ...

    def status(self, pool: Pool[Any]) -> FleetStatus: ...
