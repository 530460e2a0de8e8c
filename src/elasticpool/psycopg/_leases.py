"""psycopg's side of :func:`elasticpool.wrap`: leases from psycopg_pool's pools.

The async pool's here; the sync ``ConnectionPool``'s in ``_sync_wrap`` (its
wrapper is a :class:`~elasticpool.SyncPool`).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import psycopg_pool
from psycopg.pq import TransactionStatus
from psycopg_pool.abc import ACT

from .._connector import ResetMode
from .._wrap import Leases, spawn
from ._connector import _transaction, fetch
from ._errors import is_disconnect_error
from ._sync_wrap import SyncPsycopgLeases, sync_leases_for

__all__ = ["PsycopgLeases", "leases_for"]

_IDLE: Final = TransactionStatus.IDLE
_ACTIVE: Final = TransactionStatus.ACTIVE
_OPEN: Final = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


def leases_for(existing: object) -> PsycopgLeases[Any] | SyncPsycopgLeases[Any] | None:
    """Leases from ``existing`` if it is one of psycopg_pool's pools, else ``None``.

    Raises :class:`ValueError` for a pool that is not open.
    """
    if isinstance(existing, psycopg_pool.AsyncConnectionPool):
        if existing.closed:
            raise ValueError(
                f"psycopg_pool.AsyncConnectionPool {existing.name!r} is not open "
                "(create it with open=False, then 'await pool.open()' before wrap())"
            )
        return PsycopgLeases(existing)
    if isinstance(existing, psycopg_pool.ConnectionPool):
        return sync_leases_for(existing)
    return None


class PsycopgLeases(Leases[ACT]):
    """Leases from a :class:`psycopg_pool.AsyncConnectionPool` (each one its own connection)."""

    kind = "psycopg"
    default_reset: ResetMode = "rollback"  # psycopg_pool rolls back on every putconn: so do we

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool[ACT]) -> None:
        super().__init__()
        self._pool = pool
        self._original_max = pool.max_size
        self._applied_max: int | None = None

    def max_size(self) -> int:
        return self._pool.max_size

    async def _borrow(self) -> ACT:
        return await self._pool.getconn()

    async def _give_back(self, conn: ACT) -> None:
        await self._pool.putconn(conn)

    def _kill(self, conn: ACT) -> None:
        conn.pgconn.finish()  # the socket closes now; psycopg_pool discards and replaces it
        spawn(self._pool.putconn(conn), "give a terminated connection back to psycopg_pool")

    async def apply_limit(self, limit: int) -> None:
        pool = self._pool
        if pool.closed:
            return
        # psycopg_pool.resize() only sets numbers: it never revokes or closes a
        # connection that is checked out, and never goes below its min_size.
        new_max = max(limit, pool.min_size, 1)
        if new_max != pool.max_size:
            await pool.resize(pool.min_size, new_max)
        self._applied_max = new_max

    def is_closed(self, conn: ACT) -> bool:
        # ACTIVE: given back mid-query (a cancelled borrower); psycopg_pool would close it too.
        return conn.closed or conn.broken or conn.info.transaction_status == _ACTIVE

    async def ping(self, conn: ACT) -> None:
        if conn.info.transaction_status == _IDLE:
            await type(self._pool).check_connection(conn)  # no transaction left behind
        else:
            await conn.execute("")

    def needs_reset(self, conn: ACT, mode: ResetMode) -> bool:
        if mode == "none":
            return False
        if mode == "rollback":
            return conn.info.transaction_status != _IDLE
        return True

    async def reset(self, conn: ACT, mode: ResetMode) -> None:
        status = conn.info.transaction_status
        if status in _OPEN:
            await conn.rollback()
        elif status != _IDLE:
            raise RuntimeError(f"connection is {status.name}, cannot be reset")
        if mode == "session":
            if conn.autocommit:
                await conn.execute("DISCARD ALL")
            else:
                await conn.set_autocommit(True)
                try:
                    await conn.execute("DISCARD ALL")
                finally:
                    await conn.set_autocommit(False)

    def is_disconnect(self, exc: BaseException) -> bool:
        return is_disconnect_error(exc)

    def transaction(self, conn: ACT, *, readonly: bool = False) -> AbstractAsyncContextManager[Any]:
        return _transaction(conn, readonly)

    async def fetch(self, conn: ACT, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await fetch(conn, sql, *args)

    def default_name(self) -> str:
        name = self._pool.name
        return name if isinstance(name, str) and name else self.kind

    async def finish(self, *, close: bool, timeout: float | None) -> None:
        await self.wait_returned(timeout)
        pool = self._pool
        if pool.closed:
            return
        if close:
            await pool.close(timeout=5.0 if timeout is None else timeout)
        elif self._applied_max is not None and pool.max_size == self._applied_max:
            # Still our doing (nobody resized it since): give it its own size back.
            await pool.resize(pool.min_size, max(self._original_max, pool.min_size))

    def finish_now(self, *, close: bool) -> None:
        if close and not self._pool.closed:
            spawn(self._pool.close(), "close the psycopg pool")

    def describe(self) -> str:
        p = self._pool
        return f"psycopg_pool.AsyncConnectionPool {p.name!r} (max {p.max_size})"
