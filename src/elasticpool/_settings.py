"""Pool settings: one frozen, validated record."""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any, Literal

from ._connector import ResetMode
from ._errors import ElasticPoolWarning
from ._validate import (
    check_bool,
    check_choice,
    check_connections,
    check_int,
    check_number,
    check_seconds,
    parse_percent,
)

__all__ = [
    "DEFAULT_TOTAL_MAX_CONNECTIONS",
    "HASURA_NAMES",
    "LimitMode",
    "PoolSettings",
    "check_connections",
    "parse_percent",
]

HASURA_NAMES = (
    "max_connections",
    "total_max_connections",
    "idle_timeout",
    "connection_lifetime",
    "pool_timeout",
    "retries",
)
"""Hasura's ``pool_settings`` keys that :meth:`PoolSettings.from_hasura` accepts."""

_ENV_PREFIX = "ELASTICPOOL_"

DEFAULT_TOTAL_MAX_CONNECTIONS = 50
"""The fleet total when neither ``max_connections`` nor ``total_max_connections`` is set.

It is Hasura's default pool size, so a fleet of one behaves like a Hasura
instance out of the box.
"""

LimitMode = Literal["strict", "soft"]

_SOURCE_NAMES = {
    "total": "total_max_connections",
    "max_connections": "max_connections",
    "default total": "the default total",
}
"""How a min_connections error names the limit :meth:`PoolSettings.precedence` picked."""

_RESET_MODES = ("none", "rollback", "session")
_LIMIT_MODES = ("strict", "soft")
_FLAGS = ("allow_small_total", "fail_fast")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True, slots=True)
class PoolSettings:
    """How big a pool may grow, and when it shrinks, retires and gives up.

    Every field is checked when the record is made: a value of the wrong type
    raises :class:`TypeError`, one out of range raises :class:`ValueError`; both
    name the field and the allowed range. A legal but contradictory combination
    is corrected with an :class:`~elasticpool.ElasticPoolWarning`, as HikariCP
    does:

    * ``idle_timeout >= connection_lifetime``: the idle timeout could never fire
      before the lifetime does, so it is disabled (set to ``None``).
    * ``min_connections`` above the resolved limit is an error, not a correction.

    Limits (see :func:`elasticpool.resolve_limit` for the precedence rules):

    ``max_connections``
        Per-instance limit. Used alone, it is a fixed limit and the fleet total
        is unbounded.
    ``total_max_connections``
        Limit for all instances of the pool together; wins when both are set.
        When neither is set the total is :data:`DEFAULT_TOTAL_MAX_CONNECTIONS`.
        A percentage such as ``"80%"`` is that share of the server's usable
        ``max_connections`` (less the reserved ones), resolved when the pool
        opens (see :meth:`with_server_limits`).
    ``min_connections``
        Warm floor refilled in the background (default 0: the pool starts
        empty and may shrink to nothing).

    Timing (seconds; ``None`` disables where allowed):

    ``idle_timeout``
        An idle connection above the floor is closed after this long unused.
    ``connection_lifetime``
        A connection is retired after this long, shortened for each connection
        by a random fraction of up to ``lifetime_jitter`` so a cohort opened
        together does not retire together. Checked at checkout and at return;
        an idle connection is retired in the background.
    ``pool_timeout``
        How long :meth:`Pool.acquire` waits before raising
        :class:`~elasticpool.PoolTimeout` (``None``: forever).
    ``connect_timeout``
        Bound on one connect attempt; a slower connect counts as failed.
    ``ping_after``
        A connection idle longer than this is pinged on borrow (``None``:
        never ping; 0: always). The ping is bounded by ``connect_timeout`` and
        by what is left of the caller's ``pool_timeout``; one not answered in
        time fails, and the connection is closed.
    ``close_timeout``
        Bound on closing one connection gracefully before it is terminated.
    ``backoff_initial`` / ``backoff_max``
        Reconnect backoff after failed connects: doubles from the initial delay
        up to the maximum, each delay drawn at random from its upper half. The
        pool never gives up; waiters still time out at ``pool_timeout``.

    Other:

    ``max_waiting``
        At most this many callers queue; one more raises
        :class:`~elasticpool.TooManyWaiters` at once (``None``: unbounded).
    ``max_connecting``
        At most this many connects run at once. Growth is for waiters that no
        pending connect already covers, so this is what keeps a burst from
        opening a connection per waiter.
    ``reset``
        What happens to a returned connection before reuse (see
        :data:`~elasticpool.ResetMode`). The default, ``"rollback"``, ends an
        open transaction and costs no I/O otherwise, as psycopg_pool, HikariCP
        and PgBouncer's transaction mode do; ``"session"`` also clears what a
        borrower set in the session (see ``docs/reset.md`` for the choice).
    ``limit_mode``
        ``"strict"``: connections being closed count against the limit until
        they are gone. ``"soft"``: up to ``soft_overflow`` closing connections
        stop counting, so replacements need not wait for slow closes; and a
        fleet member that loses coordination keeps a bounded share instead of
        dropping to zero.
    ``fail_fast``
        When a connect fails and no connection is borrowed, idle or being
        reset (none can come back to serve the queue), the waiters that no
        pending connect covers fail at once with that connect's error,
        instead of waiting for a retry up to ``pool_timeout``. asyncpg's pool
        behaves so; the drop-in face turns it on.
    ``saturation_warning``
        When the pool stays saturated this long (at its limit, callers
        queued, and no connection free: each went from one borrower straight
        to the next), a WARNING is logged on the ``elasticpool`` logger with
        the pool's name and counts, then at most once per this many seconds
        while it lasts (``None``: never). Checked by the pool's timer, not on
        each acquire.
    ``allow_small_total``
        A total below 5 (Hyperdrive's minimum) is raised to 5 with a warning
        unless this is true.

    It is not a connection string: driver options belong to the connector.
    """

    max_connections: int | None = None
    total_max_connections: int | str | None = None
    min_connections: int = 0
    idle_timeout: float | None = 180.0
    connection_lifetime: float | None = 600.0
    lifetime_jitter: float = 0.025
    pool_timeout: float | None = 30.0
    max_waiting: int | None = None
    connect_timeout: float = 10.0
    max_connecting: int = 2
    ping_after: float | None = 1.0
    close_timeout: float = 5.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    reset: ResetMode = "rollback"
    limit_mode: LimitMode = "strict"
    soft_overflow: int = 2
    allow_small_total: bool = False
    fail_fast: bool = False
    saturation_warning: float | None = 10.0

    def __post_init__(self) -> None:
        check_int("max_connections", self.max_connections, low=1, optional=True)
        check_connections("total_max_connections", self.total_max_connections)
        check_int("min_connections", self.min_connections, low=0)
        check_seconds("idle_timeout", self.idle_timeout, optional=True)
        check_seconds("connection_lifetime", self.connection_lifetime, optional=True)
        check_number("lifetime_jitter", self.lifetime_jitter, low=0, high=0.5)
        check_seconds("pool_timeout", self.pool_timeout, optional=True)
        check_int("max_waiting", self.max_waiting, low=1, optional=True)
        check_seconds("connect_timeout", self.connect_timeout)
        check_int("max_connecting", self.max_connecting, low=1)
        check_seconds("ping_after", self.ping_after, strict=False, optional=True)
        check_seconds("close_timeout", self.close_timeout, strict=False)
        check_seconds("backoff_initial", self.backoff_initial)
        check_seconds("backoff_max", self.backoff_max)
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max must be >= backoff_initial "
                f"(got backoff_max={self.backoff_max!r}, backoff_initial={self.backoff_initial!r})"
            )
        check_choice("reset", self.reset, _RESET_MODES)
        check_choice("limit_mode", self.limit_mode, _LIMIT_MODES)
        check_int("soft_overflow", self.soft_overflow, low=0)
        check_seconds("saturation_warning", self.saturation_warning, optional=True)
        for flag in _FLAGS:
            check_bool(flag, getattr(self, flag))
        source, limit = self.precedence()
        if self.total_percent is None and self.min_connections > limit:
            which = _SOURCE_NAMES[source]
            raise ValueError(
                f"min_connections must be <= {which} ({limit}) (got {self.min_connections})"
            )
        if (
            self.idle_timeout is not None
            and self.connection_lifetime is not None
            and self.idle_timeout >= self.connection_lifetime
        ):
            warnings.warn(
                f"idle_timeout ({self.idle_timeout:g}s) >= connection_lifetime "
                f"({self.connection_lifetime:g}s) can never fire first; idle_timeout disabled",
                ElasticPoolWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "idle_timeout", None)

    @property
    def total_percent(self) -> float | None:
        """The percentage when ``total_max_connections`` is one (``"80%"``: 80.0), else None."""
        return parse_percent(self.total_max_connections)

    def precedence(self, fleet_total: int | None = None) -> tuple[str, int]:
        """Which limit setting applies, and its number: Hasura's precedence rule, in one place.

        Returns ``(source, number)``:

        * ``("total", n)`` when ``total_max_connections`` is set, or
          ``fleet_total`` (a total set fleet-wide at run time, which
          overrides it): the total wins over ``max_connections``. ``n`` is
          the total to divide among the fleet; 0 while it is a percentage not
          yet resolved (see :meth:`with_server_limits`);
        * ``("max_connections", n)`` when only ``max_connections`` is set: a
          fixed per-instance limit, and the fleet total is unbounded;
        * ``("default total", DEFAULT_TOTAL_MAX_CONNECTIONS)`` when neither is.

        It neither raises a small total to the minimum nor divides it among
        a fleet: :func:`~elasticpool.resolve_limit` does both, on this answer.
        """
        total = self.total_max_connections if fleet_total is None else fleet_total
        if total is not None:
            return "total", 0 if isinstance(total, str) else total
        if self.max_connections is not None:
            return "max_connections", self.max_connections
        return "default total", DEFAULT_TOTAL_MAX_CONNECTIONS

    def instance_limit(self) -> int:
        """This instance's limit when it is a fleet of one (no membership), before any minimum.

        The number :meth:`precedence` picks: 0 while ``total_max_connections``
        is a percentage (the pool resolves it against the server when it
        opens, see :meth:`with_server_limits`).
        """
        return self.precedence()[1]

    @classmethod
    def from_hasura(cls, pool_settings: Mapping[str, Any], **overrides: Any) -> PoolSettings:
        """Settings from a Hasura ``pool_settings`` mapping, with Hasura's meanings.

        Accepted keys: ``max_connections``, ``total_max_connections``,
        ``idle_timeout``, ``connection_lifetime``, ``pool_timeout`` and
        ``retries``. As in Hasura, ``connection_lifetime: 0`` means connections
        are never retired and ``idle_timeout: 0`` that they never time out
        (both become ``None`` here); Hasura's ``pool_timeout`` waits forever
        when absent, ours keeps its finite default unless given. ``retries``
        is accepted and ignored: this pool never stops reconnecting (callers
        get :class:`~elasticpool.PoolTimeout` instead). An unknown key is a
        :class:`ValueError` naming the accepted ones. ``overrides`` are other
        :class:`PoolSettings` fields.
        """
        unknown = sorted(set(pool_settings) - set(HASURA_NAMES))
        if unknown:
            raise ValueError(
                f"unknown hasura pool_settings key(s) {unknown}; accepted: {list(HASURA_NAMES)}"
            )
        fields: dict[str, Any] = {k: v for k, v in pool_settings.items() if k != "retries"}
        for key in ("connection_lifetime", "idle_timeout"):
            if fields.get(key) == 0 and not isinstance(fields.get(key), bool):
                fields[key] = None
        return cls(**{**fields, **overrides})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PoolSettings:
        """Settings from ``ELASTICPOOL_<NAME>`` environment variables, Hasura names included.

        ``ELASTICPOOL_TOTAL_MAX_CONNECTIONS=100``, ``ELASTICPOOL_IDLE_TIMEOUT=60``
        and so on, for every :class:`PoolSettings` field (Hasura's meanings for
        Hasura's names, as in :meth:`from_hasura`). The empty string and
        ``none`` mean ``None``. A value that does not parse is a
        :class:`ValueError` naming the variable.
        """
        env = os.environ if environ is None else environ
        hasura: dict[str, Any] = {}
        other: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = _ENV_PREFIX + f.name.upper()
            if var not in env:
                continue
            raw = env[var].strip()
            if raw.lower() in ("", "none"):
                value: Any = None
            elif f.name in ("reset", "limit_mode") or (
                f.name == "total_max_connections" and raw.endswith("%")
            ):
                value = raw
            elif f.name in _FLAGS:
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError(f"{var} must be one of {_TRUE + _FALSE} (got {raw!r})")
                value = raw.lower() in _TRUE
            else:
                try:
                    value = int(raw)
                except ValueError:
                    try:
                        value = float(raw)
                    except ValueError:
                        raise ValueError(f"{var} must be a number (got {raw!r})") from None
            (hasura if f.name in HASURA_NAMES else other)[f.name] = value
        if _ENV_PREFIX + "RETRIES" in env:
            hasura["retries"] = env[_ENV_PREFIX + "RETRIES"]
        return cls.from_hasura(hasura, **{**other, **overrides})

    def with_server_limits(self, max_connections: int, reserved: int) -> PoolSettings:
        """These settings with a percentage total resolved against a server (else unchanged).

        ``total_max_connections="80%"`` becomes 80 % of the server's usable
        connections, ``max_connections - reserved`` (``reserved``: the
        superuser-reserved ones, plus ``reserved_connections`` on PostgreSQL
        16+), rounded down and at least 1, as RDS Proxy's
        ``MaxConnectionsPercent`` is.
        """
        percent = self.total_percent
        if percent is None:
            return self
        usable = max(0, max_connections - reserved)
        return self.replace(total_max_connections=max(1, math.floor(usable * percent / 100)))

    def replace(self, **changes: Any) -> PoolSettings:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)
