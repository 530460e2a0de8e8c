"""Fleet-wide connection budgets: how a pool learns its share of ``total_max_connections``.

* :class:`StaticMembership`: a known number of instances, no coordination.
* :class:`PostgresMembership`: demand-following shares coordinated through a
  lease table in the database itself.
"""

from __future__ import annotations

from ._base import FleetStatus, MemberPort, Membership, MemberStatus
from ._postgres import PostgresMembership
from ._static import StaticMembership

__all__ = [
    "FleetStatus",
    "MemberPort",
    "MemberStatus",
    "Membership",
    "PostgresMembership",
    "StaticMembership",
]
