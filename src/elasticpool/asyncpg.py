"""asyncpg support: :class:`AsyncpgConnector` (needs the ``asyncpg`` extra).

The pool hands out asyncpg's own :class:`asyncpg.Connection` objects. asyncpg
runs on asyncio only, so pools using this connector do too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import asyncpg.exceptions

from ._connector import ResetMode

__all__ = ["AsyncpgConnector"]

_DEAD_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect now


def is_disconnect_error(exc: BaseException) -> bool:
    """Whether ``exc`` from asyncpg means the connection is gone (a connection-class error).

    A :class:`TimeoutError` is an :class:`OSError` on Python >= 3.10 but says
    nothing about the connection (a query ``timeout=``, an enclosing
    ``fail_after``, a :class:`~elasticpool.PoolTimeout` from a nested acquire),
    so it is not one.
    """
    if isinstance(exc, TimeoutError):
        return False
    if isinstance(
        exc,
        (
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.PostgresConnectionError,
            ConnectionError,
            OSError,
        ),
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith("08") or state in _DEAD_SQLSTATES
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        return "closed" in str(exc) or "terminated" in str(exc)
    return False


class AsyncpgConnector:
    """Opens :class:`asyncpg.Connection` objects for a :class:`~elasticpool.Pool`.

    ``AsyncpgConnector(dsn, **connect_kwargs)`` passes everything through to
    :func:`asyncpg.connect` unchanged (``ssl``, ``server_settings``,
    ``statement_cache_size``, ``timeout``…). ``connect=`` replaces
    :func:`asyncpg.connect` itself, for credential rotation or instrumentation:
    it is called as ``connect(dsn, **connect_kwargs)`` for every new connection.

    Reset (see :data:`~elasticpool.ResetMode`): ``"rollback"`` rolls back an
    open or failed transaction; ``"session"`` also runs asyncpg's own
    ``Connection.reset()`` (advisory locks released, cursors closed,
    ``UNLISTEN *``, ``RESET ALL``, listeners dropped).

    Its :func:`repr` never shows a password.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        connect: Callable[..., Awaitable[asyncpg.Connection]] | None = None,
        **connect_kwargs: Any,
    ) -> None:
        self._dsn = dsn
        self._connect_fn = connect
        self._kwargs = connect_kwargs

    async def connect(self) -> asyncpg.Connection:
        fn = self._connect_fn or asyncpg.connect
        conn: asyncpg.Connection = await fn(self._dsn, **self._kwargs)
        return conn

    async def close(self, conn: asyncpg.Connection) -> None:
        await conn.close()

    def terminate(self, conn: asyncpg.Connection) -> None:
        conn.terminate()

    def is_closed(self, conn: asyncpg.Connection) -> bool:
        return conn.is_closed()

    async def ping(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT 1")

    def needs_reset(self, conn: asyncpg.Connection, mode: ResetMode) -> bool:
        if mode == "none":
            return False
        if mode == "rollback":
            return conn.is_in_transaction()
        return True

    async def reset(self, conn: asyncpg.Connection, mode: ResetMode) -> None:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        if mode == "session":
            await conn.reset()

    def is_disconnect(self, exc: BaseException) -> bool:
        return is_disconnect_error(exc)

    def transaction(self, conn: asyncpg.Connection) -> AbstractAsyncContextManager[Any]:
        tx: AbstractAsyncContextManager[Any] = conn.transaction()
        return tx

    def __repr__(self) -> str:
        where = ""
        if self._dsn:
            parts = urlsplit(self._dsn)
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
            where = f"{host}{port}{parts.path}"
        kw = self._kwargs
        if kw.get("host") is not None:
            where = f"{kw['host']}:{kw.get('port', '')}/{kw.get('database', '')}"
        return f"<AsyncpgConnector {where or 'default'}>"
