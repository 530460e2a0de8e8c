"""Pool settings: one frozen, validated record."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any, Literal

from ._connector import ResetMode
from ._errors import ElasticPoolWarning

__all__ = ["DEFAULT_TOTAL_MAX_CONNECTIONS", "HASURA_NAMES", "LimitMode", "PoolSettings"]

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

_RESET_MODES = ("none", "rollback", "session")
_LIMIT_MODES = ("strict", "soft")
_FLAGS = ("allow_small_total", "fail_fast")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_PERCENT = re.compile(r"\s*(\d+(?:\.\d*)?)\s*%\s*")


def parse_percent(value: object) -> float | None:
    """``80.0`` for ``"80%"``; ``None`` for anything that is not a percentage string."""
    if not isinstance(value, str):
        return None
    m = _PERCENT.fullmatch(value)
    return float(m.group(1)) if m else None


def check_connections(name: str, value: object) -> tuple[int | None, float | None]:
    """A count of connections or a percentage of the server's: ``(count, percent)``, checked.

    ``None`` is allowed (both ``None``); a wrong type is a :class:`TypeError`, a
    wrong value a :class:`ValueError`, each naming ``name`` and what is allowed.
    """
    allowed = (
        "an integer >= 1, a percentage of the server's usable max_connections such as "
        "'80%' (in (0%, 100%]), or None"
    )
    if value is None:
        return None, None
    if isinstance(value, str):
        percent = parse_percent(value)
        if percent is None or not 0 < percent <= 100:
            raise ValueError(f"{name} must be {allowed} (got {value!r})")
        return None, percent
    if not _is_int(value):
        raise TypeError(f"{name} must be {allowed} (got {value!r})")
    assert isinstance(value, int)
    if value < 1:
        raise ValueError(f"{name} must be {allowed} (got {value!r})")
    return value, None


def _check_int(name: str, value: object, low: int, *, optional: bool) -> None:
    allowed = f"an integer >= {low}" + (" or None" if optional else "")
    if value is None and optional:
        return
    if not _is_int(value):
        raise TypeError(f"{name} must be {allowed} (got {value!r})")
    assert isinstance(value, int)
    if value < low:
        raise ValueError(f"{name} must be {allowed} (got {value})")


def _check_seconds(name: str, value: object, *, low: float, strict: bool, optional: bool) -> None:
    op = ">" if strict else ">="
    allowed = f"a finite number of seconds {op} {low:g}" + (" or None" if optional else "")
    if value is None and optional:
        return
    if not _is_number(value):
        raise TypeError(f"{name} must be {allowed} (got {value!r})")
    assert isinstance(value, (int, float))
    if math.isnan(value) or math.isinf(value) or value < low or (strict and value == low):
        raise ValueError(f"{name} must be {allowed} (got {value!r})")


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
        _check_int("max_connections", self.max_connections, 1, optional=True)
        check_connections("total_max_connections", self.total_max_connections)
        _check_int("min_connections", self.min_connections, 0, optional=False)
        _check_seconds("idle_timeout", self.idle_timeout, low=0, strict=True, optional=True)
        _check_seconds(
            "connection_lifetime", self.connection_lifetime, low=0, strict=True, optional=True
        )
        if not _is_number(self.lifetime_jitter):
            raise TypeError(
                f"lifetime_jitter must be a number in [0, 0.5] (got {self.lifetime_jitter!r})"
            )
        if not 0 <= self.lifetime_jitter <= 0.5:
            raise ValueError(
                f"lifetime_jitter must be a number in [0, 0.5] (got {self.lifetime_jitter!r})"
            )
        _check_seconds("pool_timeout", self.pool_timeout, low=0, strict=True, optional=True)
        _check_int("max_waiting", self.max_waiting, 1, optional=True)
        _check_seconds("connect_timeout", self.connect_timeout, low=0, strict=True, optional=False)
        _check_int("max_connecting", self.max_connecting, 1, optional=False)
        _check_seconds("ping_after", self.ping_after, low=0, strict=False, optional=True)
        _check_seconds("close_timeout", self.close_timeout, low=0, strict=False, optional=False)
        _check_seconds("backoff_initial", self.backoff_initial, low=0, strict=True, optional=False)
        _check_seconds("backoff_max", self.backoff_max, low=0, strict=True, optional=False)
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max must be >= backoff_initial "
                f"(got backoff_max={self.backoff_max!r}, backoff_initial={self.backoff_initial!r})"
            )
        if self.reset not in _RESET_MODES:
            raise ValueError(f"reset must be one of {_RESET_MODES} (got {self.reset!r})")
        if self.limit_mode not in _LIMIT_MODES:
            raise ValueError(f"limit_mode must be one of {_LIMIT_MODES} (got {self.limit_mode!r})")
        _check_int("soft_overflow", self.soft_overflow, 0, optional=False)
        _check_seconds(
            "saturation_warning", self.saturation_warning, low=0, strict=True, optional=True
        )
        for flag in _FLAGS:
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool (got {getattr(self, flag)!r})")
        limit = self.instance_limit()
        if self.total_percent is None and self.min_connections > limit:
            which = (
                "total_max_connections"
                if self.total_max_connections is not None
                else "max_connections"
                if self.max_connections is not None
                else "the default total"
            )
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

    def instance_limit(self) -> int:
        """This instance's limit when it is a fleet of one (no membership).

        0 while ``total_max_connections`` is a percentage: the pool resolves it
        against the server when it opens (see :meth:`with_server_limits`).
        """
        if isinstance(self.total_max_connections, str):
            return 0
        if self.total_max_connections is not None:
            return self.total_max_connections
        if self.max_connections is not None:
            return self.max_connections
        return DEFAULT_TOTAL_MAX_CONNECTIONS

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
