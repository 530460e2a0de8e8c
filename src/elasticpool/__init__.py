"""elasticpool: an elastic, driver-agnostic PostgreSQL connection pool.

The pool starts empty, grows only for callers it cannot serve, shrinks when
connections sit idle, retires them at a lifetime, and holds a per-instance or
fleet-wide connection budget. See :class:`Pool` and :class:`PoolSettings`;
for threads, :class:`SyncPool`.
"""

from __future__ import annotations

from ._connector import Connector, ResetMode
from ._errors import (
    ElasticPoolError,
    ElasticPoolWarning,
    PoolClosed,
    PoolTimeout,
    TooManyWaiters,
)
from ._limits import Member, Resolution, resolve_limit
from ._pool import Pool, PoolStats
from ._settings import DEFAULT_TOTAL_MAX_CONNECTIONS, LimitMode, PoolSettings
from ._sync_connector import SyncConnector
from ._sync_pool import SyncPool
from ._wrap import wrap
from .fleet import FleetStatus, Membership, MemberStatus, PostgresMembership, StaticMembership
from .replicas import NoReplicaAvailable, RoutingMemberStats, RoutingPool, RoutingStats

__all__ = [
    "DEFAULT_TOTAL_MAX_CONNECTIONS",
    "Connector",
    "ElasticPoolError",
    "ElasticPoolWarning",
    "FleetStatus",
    "LimitMode",
    "Member",
    "MemberStatus",
    "Membership",
    "NoReplicaAvailable",
    "Pool",
    "PoolClosed",
    "PoolSettings",
    "PoolStats",
    "PoolTimeout",
    "PostgresMembership",
    "ResetMode",
    "Resolution",
    "RoutingMemberStats",
    "RoutingPool",
    "RoutingStats",
    "StaticMembership",
    "SyncConnector",
    "SyncPool",
    "TooManyWaiters",
    "resolve_limit",
    "wrap",
]

__version__ = "0.1.0.dev0"
