"""The limit resolver: settings and a fleet view in, this instance's limit out. Pure.

Precedence (Hasura's rules; :meth:`PoolSettings.precedence
<elasticpool.PoolSettings.precedence>` implements them, :func:`resolve_limit`
applies them):

* ``total_max_connections`` and ``max_connections`` both set: the total wins
  (a warning says once that ``max_connections`` is ignored);
* neither set: the total is :data:`~elasticpool.DEFAULT_TOTAL_MAX_CONNECTIONS`;
* only ``max_connections``: a fixed per-instance limit, and the fleet total is
  unbounded (``Resolution.fleet_total`` is ``None``);
* no membership: a fleet of one, whose share is the whole total.

Division of a total among live members (:func:`divide`) is max-min fair over
each member's demand (connections in use plus callers waiting):

1. every member asking for connections gets up to an equal level, raised
   until the total is used up or every demand is met (water-filling), so a
   member that asks always gets at least ``min(demand, total // askers)``;
2. what is left after every demand is met is spread evenly over all members
   as headroom, so an idle member can take its first connections before the
   next heartbeat;
3. integer remainders go one each to members in a fixed order (by id), so
   nothing is wasted and the same view always gives the same shares.

More members than the total is fine: idle members hold nothing, busy ones
share what there is. It never divides by zero and never hands out more than
the total.

A *share* is what a member may grow to; its *grant* (:func:`grants`) is what
it may hold now: a grower only gets what others have actually released,
so the connections open across the fleet stay within the total (see
docs/fleet.md for the bound while views are in flight).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

from ._errors import ElasticPoolWarning
from ._settings import PoolSettings

__all__ = [
    "HYPERDRIVE_MINIMUM_TOTAL",
    "RESERVE_FROM",
    "Member",
    "Resolution",
    "divide",
    "fleet_grant",
    "fleet_shares",
    "grants",
    "resolve_limit",
]

HYPERDRIVE_MINIMUM_TOTAL = 5
"""Totals below this are raised to it (with a warning) unless explicitly allowed."""

RESERVE_FROM = 3
"""Members from which a fleet keeps its reserve out of the shares (see :func:`fleet_shares`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One live instance of a pool as the fleet sees it."""

    id: str
    demand: int = 0
    """Connections it wants: in use plus callers waiting."""
    holding: int = 0
    """Connections it has open (its pool size, closing ones included)."""
    granted: int = 0
    """The limit it last gave itself: it may grow to this before its next heartbeat."""
    waited: float = 0.0
    """Seconds it has asked without a grant (first served when units are short)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    """What :func:`resolve_limit` decided for one instance."""

    limit: int
    """This instance's limit now (what its pool is resized to)."""
    share: int
    """What it may grow to once others release (its fair share of the total)."""
    fleet_total: int | None
    """The total divided among the fleet; ``None`` when only a per-instance limit is set."""
    members: int
    """Live members counted in the division (1 without membership)."""
    source: str
    """Which rule applied: ``"total"``, ``"default total"`` or ``"max_connections"``."""


def _water_fill(
    total: int,
    wants: Mapping[str, int],
    holding: Mapping[str, int] | None = None,
    waited: Mapping[str, float] | None = None,
) -> tuple[dict[str, int], int]:
    """Max-min fair integer split of ``total`` over ``wants``; returns (allocation, left over).

    Ties and remainders go in a fixed order (least served, then least
    ``holding``, then longest ``waited``, when given, then id), so the same
    input always gives the same output.
    """
    alloc = dict.fromkeys(sorted(wants), 0)
    remaining = total
    unmet = [k for k in alloc if wants[k] > 0]
    while remaining > 0 and unmet:
        level = remaining // len(unmet)
        if level == 0:  # fewer units than askers: one each, least served first
            held, age = holding or {}, waited or {}
            order = sorted(unmet, key=lambda k: (alloc[k], held.get(k, 0), -age.get(k, 0.0), k))
            for k in order[:remaining]:
                alloc[k] += 1
            return alloc, 0
        still: list[str] = []
        for k in unmet:
            give = min(level, wants[k] - alloc[k])
            alloc[k] += give
            remaining -= give
            if alloc[k] < wants[k]:
                still.append(k)
        unmet = still
    return alloc, remaining


def divide(total: int, members: Sequence[Member]) -> dict[str, int]:
    """Split ``total`` among ``members`` (see the module docstring); shares by member id.

    Deterministic: the result depends only on ``total`` and the members' ids
    and demands, not on their order in ``members``.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0 (got {total})")
    shares, remaining = _water_fill(total, {m.id: max(0, m.demand) for m in members})
    if remaining > 0 and shares:  # headroom: evenly over everyone, remainder by id
        each, extra = divmod(remaining, len(shares))
        for i, k in enumerate(shares):
            shares[k] += each + (1 if i < extra else 0)
    return shares


def grants(total: int, members: Sequence[Member], shares: Mapping[str, int]) -> dict[str, int]:
    """What each member may hold now, given what everyone holds: growers share what is free.

    A member above its share is granted its share (it shrinks as its
    borrowers return connections; nothing is revoked). A member below its
    share keeps what it holds and may grow into the free part of the total,
    ``total - sum(holdings)``, which is split max-min fairly among the
    growers by how far each is below its share. So, for one view,
    ``sum(max(holding, grant)) <= max(total, sum(holdings))``: growth never
    takes the fleet above the total.
    """
    free = max(0, total - sum(m.holding for m in members))
    wants = {m.id: shares[m.id] - m.holding for m in members if shares[m.id] > m.holding}
    alloc, _ = _water_fill(free, wants)
    return {
        m.id: shares[m.id] if m.holding >= shares[m.id] else m.holding + alloc[m.id]
        for m in members
    }


def fleet_shares(total: int, members: Sequence[Member], reserve: int = 0) -> dict[str, int]:
    """Shares of ``total`` as a :class:`~elasticpool.PostgresMembership` heartbeat computes them.

    The rule the fleet's server-side function applies (``fleet/_schema.py``;
    the tests hold the two to each other):

    1. with :data:`RESERVE_FROM` members or more, ``reserve`` units are kept
       out of the division, free for a member that starts asking (its first
       connection comes at once, before the others have shrunk); one or two
       members have the whole total (a third waits for them to shrink, about
       a heartbeat, rather than the total sitting partly idle for them);
    2. the rest is water-filled over demand, as in :func:`divide`; when there
       are fewer units than askers, those holding least get one first (a
       member asking for its first connection before one asking for a
       second), and among them those that have asked longest without a
       grant (so no member is passed over heartbeat after heartbeat);
    3. what is left lets members keep connections they already hold (by id),
       so an idle member is not told to close what nobody else asks for;
    4. the rest is headroom for the members asking (evenly, remainder by id),
       so a busy member grows without waiting for a heartbeat; with no asker
       it stays unassigned, free for whoever asks first.

    Unlike :func:`divide`, members that ask for nothing get no headroom:
    they have left the fleet, or will at their next heartbeat.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0 (got {total})")
    left = max(0, total - (reserve if len(members) >= RESERVE_FROM else 0))
    shares, left = _water_fill(
        left,
        {m.id: max(0, m.demand) for m in members},
        {m.id: m.holding for m in members},
        {m.id: m.waited for m in members},
    )
    for m in sorted(members, key=lambda m: m.id):
        if left <= 0:
            break
        keep = min(left, max(0, m.holding - shares[m.id]))
        shares[m.id] += keep
        left -= keep
    askers = sorted(m.id for m in members if m.demand > 0)
    if left > 0 and askers:  # headroom: evenly over the askers, remainder by id
        each, extra = divmod(left, len(askers))
        for i, k in enumerate(askers):
            shares[k] += each + (1 if i < extra else 0)
    return shares


def fleet_grant(
    share: int, total: int, others_claimed: int, *, first: bool = False, closing: int = 0
) -> int:
    """What a member may hold until its next heartbeat: its share, within what others leave.

    ``others_claimed`` is the sum of the other members' claims, each
    ``max(holding, grant)``; ``closing`` the backends of members that left
    on their last connection, which the server still shows (their claims
    went when they left; each counts until it is gone). A member's claim
    becomes ``max(holding, grant)``, so the claims and the closing backends
    never rise above ``total`` (and never rise at all once above it, after a
    live decrease).

    ``first``: the member holds nothing and asks (it connected to ask). It
    gets one connection whenever one is free, even when the division set
    that unit aside for a member asking longer: that member is not here to
    take it (it asks on a connection of its own, at its next retry), and a
    unit left free for it while the asker at hand is turned away is a
    connection nobody uses, a connect spent for nothing and a retry more.
    The longest-asking member still comes first in the shares, so busy
    members give back to it; it just does not hold a free unit hostage.
    """
    return min(max(share, 1 if first else 0), max(0, total - others_claimed - closing))


def fleet_first_claim(
    total: int, claimed: int, own_claim: int, demand: int, closing: int = 0
) -> int:
    """The join's fast claim: one unit for a member that claims nothing and asks, if one is free.

    ``claimed`` is the claims' sum (this member's included, which is 0),
    ``closing`` as for :func:`fleet_grant`. It is :func:`fleet_grant`'s
    ``first`` case for a member whose share would not be more than one, and
    needs no division, so it runs in a function small enough to be cheap on
    the new backend a join runs on (``fleet/_schema.py``, ``_claim_function``;
    the tests hold the two to each other). A member that claims something
    already, or asks for nothing, runs the whole heartbeat instead.
    """
    if own_claim != 0 or demand <= 0:
        return 0
    return 1 if claimed + 1 + closing <= total else 0


_warned_max_ignored: set[tuple[int, int]] = set()


def resolve_limit(
    settings: PoolSettings,
    members: Sequence[Member] | None = None,
    me: str | None = None,
    *,
    fleet_total: int | None = None,
    allow_small_total: bool = False,
) -> Resolution:
    """This instance's limit, from its settings and (optionally) a view of the fleet.

    ``members`` is the live fleet including this instance (``me`` is its
    id); without it the instance is a fleet of one. ``fleet_total``, when
    given, is a total set fleet-wide at run time (it overrides the settings'
    total, as a live change does). Totals below
    :data:`HYPERDRIVE_MINIMUM_TOTAL` are raised to it with an
    :class:`~elasticpool.ElasticPoolWarning` unless ``allow_small_total``.
    """
    if fleet_total is None and isinstance(settings.total_max_connections, str):
        raise ValueError(
            f"total_max_connections {settings.total_max_connections!r} is a percentage of the "
            "server's max_connections: resolve it first (PoolSettings.with_server_limits; a "
            "pool does when it opens)"
        )
    source, total = settings.precedence(fleet_total)
    if source == "max_connections":
        return Resolution(
            limit=total,
            share=total,
            fleet_total=None,
            members=1 if not members else len(members),
            source=source,
        )
    if source == "total" and settings.max_connections is not None:
        key = (total, settings.max_connections)
        if key not in _warned_max_ignored:
            _warned_max_ignored.add(key)
            warnings.warn(
                f"both total_max_connections ({total}) and max_connections "
                f"({settings.max_connections}) are set: the total wins, max_connections "
                "is ignored",
                ElasticPoolWarning,
                stacklevel=2,
            )
    if total < HYPERDRIVE_MINIMUM_TOTAL and not allow_small_total:
        warnings.warn(
            f"total_max_connections {total} is below the minimum of "
            f"{HYPERDRIVE_MINIMUM_TOTAL}; using {HYPERDRIVE_MINIMUM_TOTAL} "
            "(pass allow_small_total=True to keep it)",
            ElasticPoolWarning,
            stacklevel=2,
        )
        total = HYPERDRIVE_MINIMUM_TOTAL
    if not members:
        return Resolution(limit=total, share=total, fleet_total=total, members=1, source=source)
    if me is None or all(m.id != me for m in members):
        raise ValueError(f"member {me!r} is not in the fleet view")
    shares = divide(total, members)
    return Resolution(
        limit=grants(total, members, shares)[me],
        share=shares[me],
        fleet_total=total,
        members=len(members),
        source=source,
    )
