"""``create_engine`` and ``create_async_engine``: SQLAlchemy's, with ElasticPool as the pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import exc

from ._pool import ElasticPool

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["create_async_engine", "create_engine"]


def _check(kwargs: dict[str, Any], what: str) -> None:
    for arg in ("poolclass", "pool"):
        if arg in kwargs:
            raise exc.ArgumentError(
                f"{arg}= cannot be given to elasticpool.sqlalchemy.{what}(): its pool is always "
                f"ElasticPool; use sqlalchemy.{what}() for another pool"
            )


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """A :class:`sqlalchemy.engine.Engine` whose pool is :class:`ElasticPool`.

    ``create_engine("postgresql+psycopg://...", **kwargs)`` takes every
    argument :func:`sqlalchemy.create_engine` does, SQLAlchemy's pool
    arguments honoured or mapped as :class:`ElasticPool` says, plus the
    elastic settings as keyword arguments (``total_max_connections``,
    ``membership``, ``idle_timeout``, ``name``, ...). ``poolclass`` and
    ``pool`` are refused with :class:`sqlalchemy.exc.ArgumentError`.
    """
    _check(kwargs, "create_engine")
    return sqlalchemy.create_engine(url, poolclass=ElasticPool, **kwargs)


def create_async_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """A :class:`sqlalchemy.ext.asyncio.AsyncEngine` whose pool is :class:`ElasticPool`.

    For ``postgresql+asyncpg://`` and ``postgresql+psycopg://`` URLs; the
    arguments are those of :func:`create_engine` (``async_creator`` too).
    The elasticpool pool opens on the event loop of the first checkout;
    ``await engine.dispose()`` closes it (do so before using the engine on
    another event loop).
    """
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine  # noqa: PLC0415

    _check(kwargs, "create_async_engine")
    return sa_create_async_engine(url, poolclass=ElasticPool, **kwargs)
