"""asyncpg's side of :func:`elasticpool.wrap`: leases from an :class:`asyncpg.Pool`."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import asyncpg
import asyncpg.pool
from asyncpg.exceptions import InterfaceError

from .._connector import ResetMode
from .._wrap import Leases
from ._connector import fetch
from ._errors import is_disconnect_error

__all__ = ["AsyncpgLeases", "leases_for"]


def leases_for(existing: object) -> AsyncpgLeases | None:
    """Leases from ``existing`` if it is an :class:`asyncpg.Pool`, else ``None``.

    Raises :class:`ValueError` for a pool that was never awaited, or is closed.
    """
    if not isinstance(existing, asyncpg.Pool):
        return None
    if not getattr(existing, "_initialized", True):
        raise ValueError(
            "the asyncpg pool is not initialized: wrap 'await asyncpg.create_pool(...)'"
        )
    if existing.is_closing():
        raise ValueError("the asyncpg pool is closed")
    return AsyncpgLeases(existing)


class AsyncpgLeases(Leases["asyncpg.pool.PoolConnectionProxy[Any]"]):
    """Leases from an :class:`asyncpg.Pool` (each one an asyncpg ``PoolConnectionProxy``)."""

    kind = "asyncpg"
    default_reset: ResetMode = "session"  # asyncpg resets on every release: so do we

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        super().__init__()
        self._pool = pool
        # Leases whose server connection is being closed for good.
        self._closing: set[asyncpg.pool.PoolConnectionProxy[Any]] = set()

    def ceiling(self) -> int:
        return self._pool.get_max_size()

    def max_size(self) -> int:
        return self._pool.get_max_size()

    async def _borrow(self) -> asyncpg.pool.PoolConnectionProxy[Any]:
        return await self._pool.acquire()

    def _surplus(self) -> bool:
        """Whether the asyncpg pool holds more open connections than the wrapper can use.

        It may keep ``max(min_size, limit + connections other code borrowed)``;
        a lease given back while it holds more is closed for good instead.
        """
        pool = self._pool
        if pool.is_closing():
            return False
        # A connection being closed for good may still count in get_size() for a
        # while, or not at all any more (asyncpg decides): count it only if it does.
        closing = sum(1 for c in self._closing if not self.is_closed(c))
        ours = len(self._out) + len(self._returning) - (len(self._closing) - closing)
        size = pool.get_size()
        others = max(0, size - pool.get_idle_size() - ours)
        keep = max(pool.get_min_size(), self.limit + others)
        return size - closing > keep

    async def _give_back(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        if not self._surplus():
            await self._pool.release(conn)
            return
        self._closing.add(conn)
        try:
            await conn.close()  # asyncpg returns the emptied holder to its queue itself
        except InterfaceError:
            pass  # asyncpg took it back already (it found the connection dead)
        finally:
            self._closing.discard(conn)

    def _kill(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        try:
            conn.terminate()  # asyncpg returns the emptied holder to its queue itself
        except InterfaceError:
            pass  # asyncpg took it back already

    def is_closed(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> bool:
        try:
            return conn.is_closed()
        except InterfaceError:
            return True  # asyncpg took it back: it found the connection dead

    async def ping(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        await conn.execute("SELECT 1")

    def needs_reset(self, conn: asyncpg.pool.PoolConnectionProxy[Any], mode: ResetMode) -> bool:
        if mode == "none":
            return False
        if mode == "rollback":
            return conn.is_in_transaction()
        return True

    async def reset(self, conn: asyncpg.pool.PoolConnectionProxy[Any], mode: ResetMode) -> None:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
        if mode == "session":
            await conn.reset()  # what asyncpg's own release runs (its reset query)

    def is_disconnect(self, exc: BaseException) -> bool:
        return is_disconnect_error(exc)

    def transaction(
        self, conn: asyncpg.pool.PoolConnectionProxy[Any], *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        tx: AbstractAsyncContextManager[Any] = conn.transaction(readonly=readonly)
        return tx

    async def fetch(
        self, conn: asyncpg.pool.PoolConnectionProxy[Any], sql: str, *args: Any
    ) -> list[tuple[Any, ...]]:
        return await fetch(conn, sql, *args)

    async def finish(self, *, close: bool, timeout: float | None) -> None:
        await self.wait_returned(timeout)
        if not close or self._pool.is_closing():
            return
        with anyio.move_on_after(5.0 if timeout is None else timeout) as scope:
            await self._pool.close()  # on cancellation it terminates itself
        if scope.cancelled_caught:
            self._pool.terminate()

    def finish_now(self, *, close: bool) -> None:
        if close:
            self._pool.terminate()

    def describe(self) -> str:
        p = self._pool
        return f"asyncpg.Pool (size {p.get_size()}, max {p.get_max_size()})"
