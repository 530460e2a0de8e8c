"""What a membership is, and what the fleet looks like from one instance."""

from __future__ import annotations

import dataclasses
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import anyio

    from .._connector import Connector
    from .._settings import PoolSettings

__all__ = ["Coordination", "FleetStatus", "Freeze", "MemberPort", "MemberStatus", "Membership"]


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


class Coordination(Protocol):
    """The connection one coordination statement runs on (see :meth:`MemberPort.coordination`)."""

    conn: Any
    extra: bool
    """Opened outside the pool's slots (it is closed afterwards unless kept)."""
    kept: bool

    def keep(self) -> Any:
        """Take the extra connection: it is not closed afterwards."""
        ...


class Freeze(Protocol):
    """The pool held at its size during one heartbeat (see :meth:`MemberPort.frozen`)."""

    demand: int
    holding: int
    before: int
    grant: int | None
    applied: bool
    sent: bool

    def apply(self, limit: int, adopt: Any = None) -> bool:
        """Set the limit now (no await); take ``adopt`` in if it has room; whether it did."""
        ...


class MemberPort(Protocol):
    """What a membership sees of the pool it serves: the pool implements it.

    A membership calls only this: the fleet package never imports the shell,
    so the sync pool (a thread shell over the same planner) can be a member
    too. The limit changes only through :meth:`resize` and
    :meth:`Freeze.apply`.
    """

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> PoolSettings: ...

    @property
    def connector(self) -> Connector[Any]: ...

    def now(self) -> float:
        """The pool's clock (anyio's, or the thread shell's)."""
        ...

    def stats(self) -> Any:
        """The pool's :class:`~elasticpool.PoolStats` now."""
        ...

    async def resize(self, max_connections: int) -> None: ...

    def coordination(
        self, wait_own: float = 0.5, *, own: bool = True
    ) -> AbstractAsyncContextManager[Coordination]:
        """A connection for one statement: one of the pool's own when it can, else an extra."""
        ...

    def frozen(self) -> AbstractAsyncContextManager[Freeze]:
        """Hold the pool at its size for one heartbeat; what it reports."""
        ...

    def demand_signal(self) -> anyio.Event:
        """A new event, set when a caller queues at the pool's limit."""
        ...

    async def close_connection(self, conn: Any) -> None:
        """Close a connection the membership holds outside the slots (bounded, shielded)."""
        ...


@runtime_checkable
class Membership(Protocol):
    """How a pool learns its share of a fleet-wide total.

    The pool calls :meth:`join` when it opens (to set its first limit before
    anyone borrows), runs :meth:`run` in the background for its whole life,
    and calls :meth:`leave` when it closes, each with its
    :class:`MemberPort`. A membership changes the pool's limit only through
    the port.
    """

    async def join(self, pool: MemberPort) -> None: ...

    async def run(self, pool: MemberPort) -> None: ...

    async def leave(self, pool: MemberPort) -> None: ...

    def status(self, pool: MemberPort) -> FleetStatus: ...
