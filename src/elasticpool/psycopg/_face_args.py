"""What the two psycopg_pool look-alikes share that is not I/O.

psycopg_pool's parameters mapped onto :class:`~elasticpool.PoolSettings`
(with psycopg_pool's own validation and messages), the statistics psycopg_pool
reports (``get_stats`` / ``pop_stats``), and its pool numbering. Used by
:class:`~elasticpool.psycopg.AsyncConnectionPool` and
:class:`~elasticpool.psycopg.ConnectionPool` alike.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Final

import psycopg

from .._settings import PoolSettings
from .._stats import PoolStats
from .._validate import check_int_type

pool_numbers = itertools.count(1)
"""``pool-1``, ``pool-2``…: the names psycopg_pool gives pools without one (shared numbering)."""

PSYCOPG_VERSION: Final = tuple(int(part) for part in psycopg.__version__.split(".")[:2])

PSYCOPG_NAMES: Final = {
    "min_connections": "min_size",
    "max_connections": "max_size",
    "pool_timeout": "timeout",
    "max_waiting": "max_waiting",
    "connection_lifetime": "max_lifetime",
    "idle_timeout": "max_idle",
    "max_connecting": "num_workers",
    "reset": "reset_mode",
}
"""elasticpool settings the faces set from psycopg_pool's parameters: not accepted as extras."""

COUNTERS: Final = (
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
)

MS_EVENTS: Final = {
    "requests_wait_ms": "requests_queued",
    "usage_ms": "_usages",
    "connections_ms": "_connects_ok",
}
"""psycopg_pool reports a time counter once its event happened, even at 0 ms."""


def check_size(min_size: int, max_size: int | None, *, total: bool = False) -> tuple[int, int]:
    """psycopg_pool's own size validation, with its messages (wrong types: elasticpool's).

    ``total``: a ``total_max_connections`` is given, which sets the limit when
    ``max_size`` is not: then ``min_size=0`` alone is fine (an idle worker
    holds nothing).
    """
    check_int_type("min_size", min_size, low=0)
    check_int_type("max_size", max_size, low=0, optional=True)
    if max_size is None:
        max_size = min_size
    if min_size < 0:
        raise ValueError("min_size cannot be negative")
    if max_size < min_size:
        raise ValueError("max_size must be greater or equal than min_size")
    if min_size == max_size == 0 and not total:
        raise ValueError("if min_size is 0 max_size must be greater than 0")
    return min_size, max_size


def psycopg_wording(message: str) -> str:
    """A settings error about a mapped field, named the psycopg_pool way first."""
    for field, psycopg_name in PSYCOPG_NAMES.items():
        if message.startswith(f"{field} ") and psycopg_name != field:
            return f"{psycopg_name} ({field}){message[len(field) :]}"
    return message


def idle_within(max_idle: float, max_lifetime: float) -> float | None:
    """``max_idle`` as elasticpool's ``idle_timeout``; ``None`` if the lifetime comes first.

    psycopg_pool accepts ``max_idle >= max_lifetime`` silently (a connection
    retires before it could idle out); elasticpool's settings would warn about
    it (an error under ``-W error``), so the face drops the idle timeout itself,
    as psycopg_pool in effect does. Values out of range are left for the
    settings to refuse.
    """
    idle, lifetime = seconds(max_idle), seconds(max_lifetime)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (idle, lifetime))
    if numbers and 0 < lifetime <= idle:  # type: ignore[operator]
        return None
    return idle


def seconds(value: float) -> float | None:
    """psycopg_pool takes ``inf`` for "no limit"; elasticpool spells it ``None``."""
    return None if value == math.inf else value


def face_settings(
    *,
    min_size: int,
    max_size: int,
    max_size_given: bool,
    timeout: float,
    max_waiting: int,
    max_lifetime: float,
    max_idle: float,
    num_workers: int,
    reset_mode: str,
    check_given: bool,
    close_returns: bool,
    elastic_settings: dict[str, Any],
) -> PoolSettings:
    """The elastic pool's settings for psycopg_pool's parameters (checked as psycopg_pool does).

    ``min_size`` → ``min_connections``; ``max_size`` → ``max_connections``
    (when it is not given and a ``total_max_connections`` is, the total
    alone sets the limit, as for :class:`~elasticpool.Pool`: psycopg_pool's
    default ``max_size = min_size`` would otherwise be overridden by the
    total with a warning);
    ``timeout`` → ``pool_timeout``; ``max_waiting`` (0: unbounded) →
    ``max_waiting``; ``max_lifetime`` → ``connection_lifetime`` (jitter 5 %,
    as psycopg_pool); ``max_idle`` → ``idle_timeout``; ``num_workers`` →
    ``max_connecting``; a ``check`` callback → ``ping_after=0`` (checked on
    every borrow, as psycopg_pool does); ``elastic_settings``: any other
    :class:`~elasticpool.PoolSettings` field. A mapped field passed as an
    elastic setting is a :class:`TypeError` naming psycopg_pool's parameter.
    """
    check_int_type("num_workers", num_workers, low=1)
    if num_workers < 1:
        raise ValueError("num_workers must be at least 1")
    if close_returns and PSYCOPG_VERSION < (3, 3):
        raise TypeError(
            "close_returns=True needs psycopg 3.3 or newer, whose connection close() "
            f"hands a pooled connection back (psycopg {psycopg.__version__} is installed)"
        )
    clash = sorted(elastic_settings.keys() & PSYCOPG_NAMES.keys())
    if clash:
        key = clash[0]
        raise TypeError(
            f"{key!r} is set from psycopg_pool's {PSYCOPG_NAMES[key]!r}: "
            f"pass {PSYCOPG_NAMES[key]}= instead"
        )
    settings: dict[str, Any] = {
        "min_connections": min_size,
        "max_connections": max_size,
        "pool_timeout": seconds(timeout),
        "max_waiting": max_waiting or None,
        "connection_lifetime": seconds(max_lifetime),
        "idle_timeout": idle_within(max_idle, max_lifetime),
        "lifetime_jitter": 0.05,
        "max_connecting": num_workers,
        "reset": reset_mode,
    }
    # psycopg_pool checks a connection on borrow only when given ``check`` (then
    # on every borrow); the connector still finds closed ones for free.
    settings["ping_after"] = 0.0 if check_given else None
    if not max_size_given and elastic_settings.get("total_max_connections") is not None:
        del settings["max_connections"]
    settings.update(elastic_settings)
    try:
        return PoolSettings(**settings)
    except (TypeError, ValueError) as exc:
        raise type(exc)(psycopg_wording(str(exc))) from None


class FaceStats:
    """psycopg_pool's ``get_stats`` / ``pop_stats`` over an elastic pool's :class:`PoolStats`.

    The face counts what the elastic pool does not (requests, their errors
    and waits, usage time) in the attributes :meth:`_init_stats` sets, and
    provides :meth:`_elastic_stats` and the sizes.
    """

    _min_size: int
    _max_size: int
    _found_closed: int

    def _init_stats(self) -> None:
        self._requests_num = 0
        self._requests_errors = 0
        self._wait_ms = 0
        self._usage_ms = 0
        self._usages = 0
        self._found_closed = 0  # idle connections found closed when about to be lent
        self._baseline: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self._baseline_events: dict[str, int] = dict.fromkeys(MS_EVENTS.values(), 0)

    def _elastic_stats(self) -> PoolStats:
        raise NotImplementedError

    def _counters(self) -> tuple[dict[str, float], dict[str, int]]:
        s = self._elastic_stats()
        counters: dict[str, float] = {
            "requests_num": self._requests_num,
            "requests_queued": s.waits,
            "requests_wait_ms": self._wait_ms / 1000.0,
            "requests_errors": self._requests_errors,
            "usage_ms": self._usage_ms / 1000.0,
            "returns_bad": s.returned_broken - self._found_closed,
            "connections_num": s.connects + s.connect_errors,
            "connections_ms": s.total_connect_time,
            "connections_errors": s.connect_errors,
            "connections_lost": s.closed_broken - s.returned_broken + self._found_closed,
        }
        events = {"requests_queued": s.waits, "_usages": self._usages, "_connects_ok": s.connects}
        return counters, events

    def _measures(self) -> dict[str, int]:
        s = self._elastic_stats()
        return {
            "pool_min": self._min_size,
            "pool_max": self._max_size,
            "pool_size": s.size,
            "pool_available": s.idle,
            "requests_waiting": s.waiting,
        }

    def _stats_since_baseline(self) -> dict[str, int]:
        counters, events = self._counters()
        out: dict[str, int] = {}
        for key in COUNTERS:
            delta = counters[key] - self._baseline[key]
            value = round(1000.0 * delta) if key.endswith("_ms") else int(delta)
            event = MS_EVENTS.get(key)
            happened = event is not None and events[event] > self._baseline_events[event]
            if value or happened:
                out[key] = value
        out.update(self._measures())
        return out

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's statistics: counters since the last :meth:`pop_stats`, and gauges.

        Keys are exactly psycopg_pool's; as there, a counter appears once
        something counted (times in whole milliseconds).
        """
        return self._stats_since_baseline()

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, then start the counters again from zero."""
        stats = self._stats_since_baseline()
        self._baseline, self._baseline_events = self._counters()
        return stats


def is_sync_connection_class(value: object) -> bool:
    """Whether ``value`` may be a sync face's ``connection_class`` (a psycopg ``Connection``)."""
    return isinstance(value, type) and issubclass(value, psycopg.Connection)
