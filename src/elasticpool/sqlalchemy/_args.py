"""SQLAlchemy's pool arguments, honoured or mapped onto elasticpool's settings, one by one.

=====================  ====================================================================
SQLAlchemy argument    on ElasticPool
=====================  ====================================================================
``pool_size``          with ``max_overflow``: ``max_connections = pool_size + max_overflow``
``max_overflow``       (SQLAlchemy's defaults, 5 and 10, fill in the one not given)
``pool_timeout``       ``pool_timeout`` (``None``: wait forever)
``pool_recycle``       ``connection_lifetime`` (-1: never retire)
``pool_pre_ping``      honoured by SQLAlchemy itself: a ping at every checkout
``pool_reset_on_return``  honoured by SQLAlchemy itself (rollback, commit or nothing)
``pool_use_lifo``      ``True`` honoured (elasticpool always reuses the most recent idle one)
``echo_pool``, ``pool_logging_name``, ``pool_events``  honoured (SQLAlchemy's pool logging, events)
=====================  ====================================================================

An argument that cannot be honoured raises :class:`sqlalchemy.exc.ArgumentError`
naming it and what is allowed; none is ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exc

from .._settings import PoolSettings

__all__ = ["ELASTIC_NAMES", "UNSET", "elastic_settings"]

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(PoolSettings)}

UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()
"""An argument not given (so a default or a mapping may fill it)."""

SQLALCHEMY_POOL_SIZE = 5
SQLALCHEMY_MAX_OVERFLOW = 10

ELASTIC_NAMES = tuple(f.name for f in dataclasses.fields(PoolSettings) if f.name != "pool_timeout")
"""The elastic settings ElasticPool takes by keyword (``pool_timeout`` comes as SQLAlchemy's)."""


def _int(name: str, value: object, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer >= {low} (got {value!r})")
    return value


def elastic_settings(
    *,
    settings: PoolSettings | None,
    elastic: Mapping[str, Any],
    pool_size: Any,
    max_overflow: Any,
    timeout: Any,
    recycle: Any,
    use_lifo: Any,
) -> PoolSettings:
    """The :class:`~elasticpool.PoolSettings` for an ElasticPool, from both kinds of argument.

    ``elastic`` holds the elastic keyword arguments given (never
    :data:`UNSET`); the others are SQLAlchemy's, :data:`UNSET` when not given.
    Raises :class:`sqlalchemy.exc.ArgumentError` for an argument that cannot be
    honoured or two that contradict each other, and ``TypeError`` /
    ``ValueError`` for a value of the wrong type or out of range.
    """
    if settings is not None and not isinstance(settings, PoolSettings):
        raise TypeError(f"settings must be an elasticpool.PoolSettings (got {settings!r})")
    fields: dict[str, Any] = dict(elastic)
    if "reset" in fields:
        raise exc.ArgumentError(
            f"reset={fields['reset']!r} cannot be honoured by ElasticPool: SQLAlchemy resets a "
            "returned connection itself; use pool_reset_on_return ('rollback', 'commit' or "
            "None) and the pool 'reset' event instead"
        )
    if use_lifo is not UNSET and use_lifo is not True:
        raise exc.ArgumentError(
            f"pool_use_lifo={use_lifo!r} cannot be honoured by ElasticPool: it always reuses the "
            "most recently returned idle connection (LIFO), so surplus connections age out "
            "at idle_timeout; pass pool_use_lifo=True or leave it out"
        )
    if pool_size is not UNSET or max_overflow is not UNSET:
        size = SQLALCHEMY_POOL_SIZE if pool_size is UNSET else _int("pool_size", pool_size, 0)
        over = (
            SQLALCHEMY_MAX_OVERFLOW
            if max_overflow is UNSET
            else _int("max_overflow", max_overflow, -1)
        )
        if size == 0 or over == -1:
            which = "pool_size=0" if size == 0 else "max_overflow=-1"
            raise exc.ArgumentError(
                f"{which} (no limit) cannot be honoured by ElasticPool: it always has a limit; "
                "pass pool_size >= 1 and max_overflow >= 0, or max_connections, or "
                "total_max_connections"
            )
        if size < 0 or over < 0:
            raise ValueError(
                "pool_size must be an integer >= 1 and max_overflow an integer >= 0 "
                f"(got pool_size={size!r}, max_overflow={over!r})"
            )
        for other in ("max_connections", "total_max_connections"):
            if other in fields:
                raise exc.ArgumentError(
                    f"pool_size/max_overflow and {other} both given to ElasticPool: pass "
                    "either SQLAlchemy's pool_size and max_overflow (max_connections = "
                    f"pool_size + max_overflow) or {other}"
                )
        fields["max_connections"] = size + over
    if timeout is not UNSET:
        fields["pool_timeout"] = timeout
    if recycle is not UNSET:
        if "connection_lifetime" in fields:
            raise exc.ArgumentError(
                "pool_recycle and connection_lifetime both given to ElasticPool: pass one "
                "(pool_recycle is mapped to connection_lifetime)"
            )
        if isinstance(recycle, (int, float)) and not isinstance(recycle, bool) and recycle < 0:
            fields["connection_lifetime"] = None  # SQLAlchemy's -1: never recycle
        else:
            if recycle == 0:
                raise ValueError(
                    "pool_recycle must be a number of seconds > 0, or -1 for never "
                    f"(got {recycle!r})"
                )
            fields["connection_lifetime"] = recycle
            default_idle = _DEFAULTS["idle_timeout"]
            if (
                settings is None
                and "idle_timeout" not in fields
                and isinstance(recycle, (int, float))
                and default_idle is not None
                and recycle <= default_idle
            ):
                # The default idle timeout could never fire first; it was not the user's
                # choice, so it goes quietly (an idle_timeout given still warns).
                fields["idle_timeout"] = None
    if settings is not None:
        return settings.replace(reset="none", **fields)
    fields.setdefault("ping_after", None)  # SQLAlchemy's ping is pool_pre_ping
    fields.setdefault("fail_fast", True)  # a failing connect raises to the caller, as in QueuePool
    if "max_connections" not in fields and "total_max_connections" not in fields:
        fields["max_connections"] = SQLALCHEMY_POOL_SIZE + SQLALCHEMY_MAX_OVERFLOW
    return PoolSettings(reset="none", **fields)
