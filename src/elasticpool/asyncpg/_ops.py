"""What the core may do with asyncpg connections it did not open (see ``elasticpool._driver``).

The answers of this adapter to :func:`elasticpool._adapters.ask` about a
connection, an exception or a SQLAlchemy driver name: the connector's own
code (terminating, the closed check, giving a connection up after a fork,
transactions, ``fetch``), for connections a SQLAlchemy dialect opened.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import asyncpg.exceptions

from .._driver import AsyncDriverOps, ServerSettingsHook
from ._connector import abandon, add_server_settings, fetch
from ._errors import is_disconnect_error

__all__ = ["async_ops_for", "is_disconnect_for", "server_settings_hook", "sync_ops_for"]


class _Ops:
    """:class:`~elasticpool._driver.AsyncDriverOps` of :class:`asyncpg.Connection`."""

    def terminate(self, conn: asyncpg.Connection) -> None:
        conn.terminate()

    def dead_check(self, conn: asyncpg.Connection) -> Callable[[bool], bool]:
        """asyncpg's ``is_closed()`` (it has no socket to look at without a round trip)."""
        is_closed = conn.is_closed
        return lambda deep: is_closed()

    def abandon(self, conn: asyncpg.Connection) -> None:
        abandon(conn)

    def transaction(
        self, conn: asyncpg.Connection, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        tx: AbstractAsyncContextManager[Any] = conn.transaction(readonly=readonly)
        return tx

    async def fetch(
        self, conn: asyncpg.Connection, sql: str, /, *args: Any
    ) -> list[tuple[Any, ...]]:
        return await fetch(conn, sql, *args)


_OPS: AsyncDriverOps = _Ops()


def async_ops_for(conn: object) -> AsyncDriverOps | None:
    """The operations on ``conn`` if it is an :class:`asyncpg.Connection`, else ``None``."""
    return _OPS if isinstance(conn, asyncpg.Connection) else None


def sync_ops_for(conn: object) -> None:
    """``None``: asyncpg has no blocking connections."""
    return None


_OWN_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
"""The bases of every exception asyncpg raises."""


def is_disconnect_for(exc: BaseException) -> bool | None:
    """:func:`is_disconnect_error` for one of asyncpg's exceptions; ``None`` for any other."""
    return is_disconnect_error(exc) if isinstance(exc, _OWN_ERRORS) else None


def server_settings_hook(driver_name: object) -> ServerSettingsHook | None:
    """asyncpg's way (``server_settings``) for SQLAlchemy's ``asyncpg`` driver, else ``None``."""
    return add_server_settings if driver_name == "asyncpg" else None
