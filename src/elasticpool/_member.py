"""What a heartbeat holds while it runs: the two objects a shell hands its membership.

A fleet membership (``fleet/``) sees a pool only through its member port
(:class:`~elasticpool.fleet.MemberPort`, implemented by each shell). Two of
the port's answers are objects with behaviour of their own, the same for
every shell:

* :class:`Coordination`: the connection one coordination statement runs on,
  one of the pool's own or an *extra* one opened outside its slots;
* :class:`Freeze`: the pool held at its size for one heartbeat, with what it
  reports (demand, holding) and the one way to apply the heartbeat's grant
  (:meth:`Freeze.apply`, synchronous, right after the commit).

The shell supplies how a grant is applied (``apply_limit``): this module
never touches a pool or a planner itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Coordination", "Freeze"]


class Coordination:
    """The connection one coordination statement runs on (see ``MemberPort.coordination``)."""

    __slots__ = ("conn", "extra", "kept")

    def __init__(self, conn: Any, *, extra: bool) -> None:
        self.conn = conn
        self.extra = extra
        """Opened (or kept) outside the pool, not one of its slots."""
        self.kept = False

    def keep(self) -> Any:
        """Take the extra connection: it is not closed on exit, the caller owns it now."""
        assert self.extra
        self.kept = True
        return self.conn


class Freeze:
    """A pool held at its size during one heartbeat (see ``MemberPort.frozen``).

    ``apply_limit(limit, adopt)`` is the shell's: it sets the pool's limit
    now, with no await, taking in ``adopt`` if the new limit has room, and
    says whether it did (a closed pool changes nothing and takes nothing in).
    """

    __slots__ = ("_apply_limit", "applied", "before", "demand", "grant", "holding", "sent")

    def __init__(
        self,
        apply_limit: Callable[[int, Any], bool],
        *,
        demand: int,
        holding: int,
        before: int,
    ) -> None:
        self._apply_limit = apply_limit
        self.demand = demand
        self.holding = holding
        """Its slots when frozen: never above what its lease claims, committed or not."""
        self.before = before
        self.grant: int | None = None
        self.applied = False
        self.sent = False
        """The heartbeat reached the server: its outcome may be committed."""

    def fallback(self) -> int | None:
        """The limit to go back to when the heartbeat failed: ``None`` once a grant was applied.

        Before it was applied: to the new grant if it was computed (maybe
        committed: never above it), else, if the statement reached the server
        (maybe committed, grant unknown), to the size it reported, else to
        the limit it had.
        """
        if self.applied:
            return None
        if self.grant is not None:
            return min(self.before, self.grant)
        if self.sent:
            return min(self.before, self.holding)
        return self.before

    def apply(self, limit: int, adopt: Any = None) -> bool:
        """Set the pool's limit now, with no await: the heartbeat's outcome is committed.

        ``adopt``: the extra connection the heartbeat ran on, taken in as the
        first unit of the new limit if it has room (see ``Planner.resize``).
        Returns whether it was taken in.
        """
        taken = self._apply_limit(limit, adopt)
        self.applied = True
        return taken
