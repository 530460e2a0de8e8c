"""What the core may do with psycopg connections it did not open (see ``elasticpool._driver``).

The answers of this adapter to :func:`elasticpool._adapters.ask` about a
connection, an exception or a SQLAlchemy driver name: the connectors' own
code (closing, the local dead check, giving a socket up after a fork,
transactions, ``fetch``), for connections a SQLAlchemy dialect opened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any

import psycopg

from .._driver import AsyncDriverOps, ServerSettingsHook, SyncDriverOps
from . import _sync_connector
from ._connector import _add_settings, _transaction, fetch
from ._errors import is_disconnect_error
from ._wire import _finish, abandon_socket, dead_check

__all__ = ["async_ops_for", "is_disconnect_for", "server_settings_hook", "sync_ops_for"]


class _AsyncOps:
    """:class:`~elasticpool._driver.AsyncDriverOps` of :class:`psycopg.AsyncConnection`."""

    def terminate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """libpq closes the socket; psycopg then reports the connection closed."""
        _finish(conn)

    def dead_check(self, conn: psycopg.AsyncConnection[Any]) -> Callable[[bool], bool]:
        return dead_check(conn)

    def abandon(self, conn: psycopg.AsyncConnection[Any]) -> None:
        abandon_socket(conn)

    def transaction(
        self, conn: psycopg.AsyncConnection[Any], *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        return _transaction(conn, readonly)

    async def fetch(
        self, conn: psycopg.AsyncConnection[Any], sql: str, /, *args: Any
    ) -> list[tuple[Any, ...]]:
        return await fetch(conn, sql, *args)


class _SyncOps:
    """:class:`~elasticpool._driver.SyncDriverOps` of :class:`psycopg.Connection`."""

    def terminate(self, conn: psycopg.Connection[Any]) -> None:
        """From any thread: see :func:`~._sync_connector.terminate_now`."""
        _sync_connector.terminate_now(conn)

    def dead_check(self, conn: psycopg.Connection[Any]) -> Callable[[bool], bool]:
        return dead_check(conn)

    def abandon(self, conn: psycopg.Connection[Any]) -> None:
        abandon_socket(conn)

    def transaction(
        self, conn: psycopg.Connection[Any], *, readonly: bool = False
    ) -> AbstractContextManager[Any]:
        return _sync_connector.transaction(conn, readonly=readonly)

    def fetch(
        self, conn: psycopg.Connection[Any], sql: str, /, *args: Any
    ) -> list[tuple[Any, ...]]:
        return _sync_connector.fetch_rows(conn, sql, *args)


_ASYNC_OPS: AsyncDriverOps = _AsyncOps()
_SYNC_OPS: SyncDriverOps = _SyncOps()


def async_ops_for(conn: object) -> AsyncDriverOps | None:
    """The operations on ``conn`` if it is a :class:`psycopg.AsyncConnection`, else ``None``."""
    return _ASYNC_OPS if isinstance(conn, psycopg.AsyncConnection) else None


def sync_ops_for(conn: object) -> SyncDriverOps | None:
    """The operations on ``conn`` if it is a :class:`psycopg.Connection`, else ``None``."""
    return _SYNC_OPS if isinstance(conn, psycopg.Connection) else None


def is_disconnect_for(exc: BaseException) -> bool | None:
    """:func:`is_disconnect_error` for one of psycopg's errors; ``None`` for any other."""
    return is_disconnect_error(exc) if isinstance(exc, psycopg.Error) else None


def _add_server_settings(kwargs: dict[str, Any], settings: Mapping[str, str]) -> None:
    _add_settings("", kwargs, settings)


def server_settings_hook(driver_name: object) -> ServerSettingsHook | None:
    """How a libpq driver (SQLAlchemy's ``psycopg``, ``psycopg_async``, ``psycopg2``) takes them.

    ``application_name`` is a connect parameter of its own; any other
    setting goes into ``options`` as ``-c name=value``. ``None`` for a
    driver name that is not a libpq driver's.
    """
    if isinstance(driver_name, str) and driver_name.startswith("psycopg"):
        return _add_server_settings
    return None
