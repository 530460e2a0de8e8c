"""``elasticpool.wrap``: elasticpool's limits, timeouts and stats on top of a pool you already have.

:func:`wrap` takes a live :class:`asyncpg.Pool` or
:class:`psycopg_pool.AsyncConnectionPool` and returns an ordinary
:class:`~elasticpool.Pool` whose "connections" are *leases* from it: a connect
borrows one (``acquire()`` / ``getconn()``), a close gives it back
(``release()`` / ``putconn()``). The planner then decides, as for any pool, how
many leases are out at once, who waits (FIFO, ``pool_timeout``), and what the
stats say; the underlying pool keeps doing what it alone can do (open server
connections, its own reset on give-back, its own idle and lifetime policy).

Neither driver is imported here unless the object handed to :func:`wrap` is
one of its pools (its module is then already imported).

``docs/wrap.md`` lists exactly what is and is not governed for each kind.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio

from ._connector import ResetMode
from ._errors import ElasticPoolWarning
from ._pool import Pool
from ._settings import PoolSettings

if TYPE_CHECKING:
    import asyncpg
    import asyncpg.pool
    from psycopg import AsyncConnection, Connection
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from ._sync_pool import SyncPool
    from .fleet._base import Membership

__all__ = ["wrap"]

logger = logging.getLogger("elasticpool")

ConnT = TypeVar("ConnT")
RecordT = TypeVar("RecordT", bound="asyncpg.Record")
ACT = TypeVar("ACT", bound="AsyncConnection[Any]")
CT = TypeVar("CT", bound="Connection[Any]")

_ACCEPTS = "an asyncpg.Pool, a psycopg_pool.AsyncConnectionPool or a psycopg_pool.ConnectionPool"

# Give-backs and terminations that outlive the call that started them (kept referenced).
_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any] | None:
    """Run ``coro`` as a task of its own on the running loop; log (never raise) its failure."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        coro.close()
        logger.warning("elasticpool.wrap: no running event loop to %s", what)
        return None
    task = loop.create_task(coro)
    _background.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.warning("elasticpool.wrap: failed to %s: %r", what, t.exception())

    task.add_done_callback(done)
    return task


class _Leases(Generic[ConnT]):
    """A :class:`~elasticpool.Connector` whose connections are leases from an existing pool.

    It remembers which leases are out, so a lease is given back at most once:
    :meth:`close` after :meth:`terminate` (or the other way round) is a no-op.
    The give-back runs in a task of its own and :meth:`close` waits for it
    shielded: if the pool's ``close_timeout`` cuts the wait short, the lease
    still reaches the underlying pool instead of being lost half-way.
    """

    kind = ""
    default_reset: ResetMode = "session"

    def __init__(self) -> None:
        self._out: dict[int, ConnT] = {}
        self._returning: set[asyncio.Task[Any]] = set()
        self.limit = 0
        """The wrapper's current limit (kept up to date by the wrapper)."""

    # -- per kind
    async def _borrow(self) -> ConnT:
        raise NotImplementedError

    async def _give_back(self, conn: ConnT) -> None:
        raise NotImplementedError

    def _kill(self, conn: ConnT) -> None:
        raise NotImplementedError

    def is_closed(self, conn: ConnT) -> bool:
        raise NotImplementedError

    async def ping(self, conn: ConnT) -> None:
        raise NotImplementedError

    def needs_reset(self, conn: ConnT, mode: ResetMode) -> bool:
        raise NotImplementedError

    async def reset(self, conn: ConnT, mode: ResetMode) -> None:
        raise NotImplementedError

    def is_disconnect(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def transaction(
        self, conn: ConnT, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def ceiling(self) -> int | None:
        """The most leases the underlying pool can ever lend at once, if it cannot grow."""
        return None

    def max_size(self) -> int:
        raise NotImplementedError

    async def apply_limit(self, limit: int) -> None:
        """Make the underlying pool follow the wrapper's new limit."""

    async def finish(self, *, close: bool, timeout: float | None) -> None:
        """The wrapper is closed: close the underlying pool, or leave it as it was."""

    def finish_now(self, *, close: bool) -> None:
        """:meth:`finish` without waiting (for :meth:`Pool.terminate`)."""

    def describe(self) -> str:
        raise NotImplementedError

    # -- the Connector protocol, shared part
    async def connect(self) -> ConnT:
        conn = await self._borrow()
        self._out[id(conn)] = conn
        return conn

    async def close(self, conn: ConnT) -> None:
        if self._out.pop(id(conn), None) is None:
            return  # already given back or terminated
        task = _spawn(self._give_back(conn), "give a connection back to the underlying pool")
        if task is not None:
            self._returning.add(task)
            task.add_done_callback(self._returning.discard)
            await asyncio.shield(task)

    def terminate(self, conn: ConnT) -> None:
        if self._out.pop(id(conn), None) is not None:
            self._kill(conn)

    async def wait_returned(self, timeout: float | None) -> None:
        """Wait (bounded) for give-backs still running in the background."""
        if self._returning:
            await asyncio.wait(set(self._returning), timeout=5.0 if timeout is None else timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class _AsyncpgLeases(_Leases["asyncpg.pool.PoolConnectionProxy[Any]"]):
    """Leases from an :class:`asyncpg.Pool` (each one an asyncpg ``PoolConnectionProxy``)."""

    kind = "asyncpg"
    default_reset: ResetMode = "session"  # asyncpg resets on every release: so do we

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        super().__init__()
        import asyncpg.exceptions  # noqa: PLC0415 - only with an asyncpg pool in hand

        from .asyncpg import is_disconnect_error  # noqa: PLC0415

        self._pool = pool
        self._interface_error = asyncpg.exceptions.InterfaceError
        self._is_disconnect = is_disconnect_error
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
        except self._interface_error:
            pass  # asyncpg took it back already (it found the connection dead)
        finally:
            self._closing.discard(conn)

    def _kill(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        try:
            conn.terminate()  # asyncpg returns the emptied holder to its queue itself
        except self._interface_error:
            pass  # asyncpg took it back already

    def is_closed(self, conn: asyncpg.pool.PoolConnectionProxy[Any]) -> bool:
        try:
            return conn.is_closed()
        except self._interface_error:
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
        return self._is_disconnect(exc)

    def transaction(
        self, conn: asyncpg.pool.PoolConnectionProxy[Any], *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        tx: AbstractAsyncContextManager[Any] = conn.transaction(readonly=readonly)
        return tx

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


class _PsycopgLeases(_Leases[ACT]):
    """Leases from a :class:`psycopg_pool.AsyncConnectionPool` (each one its own connection)."""

    kind = "psycopg"
    default_reset: ResetMode = "rollback"  # psycopg_pool rolls back on every putconn: so do we

    def __init__(self, pool: AsyncConnectionPool[ACT]) -> None:
        super().__init__()
        from psycopg.pq import TransactionStatus  # noqa: PLC0415 - only with a psycopg pool

        self._pool = pool
        self._idle_status = TransactionStatus.IDLE
        self._open_statuses = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
        self._active_status = TransactionStatus.ACTIVE
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
        _spawn(self._pool.putconn(conn), "give a terminated connection back to psycopg_pool")

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
        return conn.closed or conn.broken or conn.info.transaction_status == self._active_status

    async def ping(self, conn: ACT) -> None:
        if conn.info.transaction_status == self._idle_status:
            await type(self._pool).check_connection(conn)  # no transaction left behind
        else:
            await conn.execute("")

    def needs_reset(self, conn: ACT, mode: ResetMode) -> bool:
        if mode == "none":
            return False
        if mode == "rollback":
            return conn.info.transaction_status != self._idle_status
        return True

    async def reset(self, conn: ACT, mode: ResetMode) -> None:
        status = conn.info.transaction_status
        if status in self._open_statuses:
            await conn.rollback()
        elif status != self._idle_status:
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
        from .psycopg import is_disconnect_error  # noqa: PLC0415 - only with a psycopg pool

        return is_disconnect_error(exc)

    def transaction(self, conn: ACT, *, readonly: bool = False) -> AbstractAsyncContextManager[Any]:
        from .psycopg import _transaction  # noqa: PLC0415 - only with a psycopg pool in hand

        return _transaction(conn, readonly)

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
            _spawn(self._pool.close(), "close the psycopg pool")

    def describe(self) -> str:
        p = self._pool
        return f"psycopg_pool.AsyncConnectionPool {p.name!r} (max {p.max_size})"


class _WrappedPool(Pool[ConnT]):
    """A :class:`~elasticpool.Pool` of leases from an existing pool (see :func:`wrap`)."""

    def __init__(
        self,
        leases: _Leases[ConnT],
        settings: PoolSettings,
        *,
        name: str,
        membership: Membership | None,
        close_underlying: bool,
    ) -> None:
        super().__init__(leases, settings, name=name, membership=membership)
        self._leases = leases
        self._close_underlying = close_underlying
        self._finished = False
        self._resize_lock: anyio.Lock | None = None
        self.requested_limit = self._planner.limit
        limit = self._cap(self.requested_limit)
        self._planner.limit = limit  # no slot exists yet: nothing else to adjust
        leases.limit = limit

    def _cap(self, limit: int) -> int:
        ceiling = self._leases.ceiling()
        return limit if ceiling is None else min(limit, ceiling)

    async def open(self) -> None:
        if self._state == "new":
            await self._leases.apply_limit(self._planner.limit)
        await super().open()

    async def resize(self, max_connections: int, min_connections: int | None = None) -> None:
        """Change the limit, and make the underlying pool follow it.

        As :meth:`Pool.resize <elasticpool.Pool.resize>`, plus: a psycopg pool's
        ``max_size`` is set to ``max(limit, its min_size)`` (raised before the
        wrapper's limit, lowered after it); an asyncpg pool cannot grow, so the
        limit is capped at its ``max_size``, and leases given back while it
        holds more connections than the wrapper can use are closed for good.
        """
        if (
            not isinstance(max_connections, int)
            or isinstance(max_connections, bool)
            or max_connections < 0
        ):
            raise ValueError(f"max_connections must be an integer >= 0 (got {max_connections!r})")
        limit = self._cap(max_connections)
        floor = min_connections
        if limit < max_connections and isinstance(floor, int) and floor > limit:
            floor = limit  # the limit was capped: cap the floor with it
        if self._resize_lock is None:
            self._resize_lock = anyio.Lock()
        async with self._resize_lock:
            old = self._planner.limit
            if limit > old:
                await self._leases.apply_limit(limit)  # room below first, or new leases wait there
            try:
                self._leases.limit = limit
                await super().resize(limit, floor)
            except BaseException:
                self._leases.limit = self._planner.limit
                with anyio.CancelScope(shield=True):
                    await self._leases.apply_limit(self._planner.limit)
                raise
            if limit < old:
                await self._leases.apply_limit(limit)

    async def close(self, timeout: float | None = 10.0) -> None:
        """Close the wrapper; the underlying pool stays open unless ``close_underlying=True``.

        As :meth:`Pool.close <elasticpool.Pool.close>`: every lease goes back
        to the underlying pool. Then, with ``close_underlying=True``, the
        underlying pool is closed (bounded by ``timeout``); otherwise a psycopg
        pool gets back the ``max_size`` it had before :func:`wrap`.
        """
        try:
            await super().close(timeout)
        finally:
            if self._state == "closed" and not self._finished:
                self._finished = True
                with anyio.CancelScope(shield=True):
                    await self._leases.finish(close=self._close_underlying, timeout=timeout)

    def _forked(self) -> None:
        super()._forked()
        if self._state == "forked":  # the underlying pool is the parent's: never finish it here
            self._finished = True

    def terminate(self) -> None:
        super().terminate()
        if not self._finished:
            self._finished = True
            self._leases.finish_now(close=self._close_underlying)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} over {self._leases.describe()}>"


def _leases_for(existing: object) -> _Leases[Any]:
    apg = sys.modules.get("asyncpg.pool")
    if apg is not None and isinstance(existing, apg.Pool):
        if not getattr(existing, "_initialized", True):
            raise ValueError(
                "the asyncpg pool is not initialized: wrap 'await asyncpg.create_pool(...)'"
            )
        if existing.is_closing():
            raise ValueError("the asyncpg pool is closed")
        return _AsyncpgLeases(existing)
    ppool = sys.modules.get("psycopg_pool")
    if ppool is not None and isinstance(existing, ppool.AsyncConnectionPool):
        if existing.closed:
            raise ValueError(
                f"psycopg_pool.AsyncConnectionPool {existing.name!r} is not open "
                "(create it with open=False, then 'await pool.open()' before wrap())"
            )
        return _PsycopgLeases(existing)
    # Never repr() the argument: it may be a connection string with a password in it.
    kind = type(existing)
    raise TypeError(f"wrap() takes {_ACCEPTS} (got {kind.__module__}.{kind.__qualname__})")


@overload
def wrap(
    existing: asyncpg.Pool[RecordT],
    settings: PoolSettings | None = None,
    *,
    name: str | None = None,
    membership: Membership | None = None,
    close_underlying: bool = False,
    **elastic_settings: Any,
) -> Pool[asyncpg.pool.PoolConnectionProxy[RecordT]]: ...


@overload
def wrap(
    existing: AsyncConnectionPool[ACT],
    settings: PoolSettings | None = None,
    *,
    name: str | None = None,
    membership: Membership | None = None,
    close_underlying: bool = False,
    **elastic_settings: Any,
) -> Pool[ACT]: ...


@overload
def wrap(
    existing: ConnectionPool[CT],
    settings: PoolSettings | None = None,
    *,
    name: str | None = None,
    membership: Membership | None = None,
    close_underlying: bool = False,
    **elastic_settings: Any,
) -> SyncPool[CT]: ...


def wrap(
    existing: object,
    settings: PoolSettings | None = None,
    *,
    name: str | None = None,
    membership: Membership | None = None,
    close_underlying: bool = False,
    **elastic_settings: Any,
) -> Pool[Any] | SyncPool[Any]:
    """Put elasticpool's limits, timeouts and stats on top of an existing pool.

    ``existing`` is a live :class:`asyncpg.Pool` (``await
    asyncpg.create_pool(...)``) or an open
    :class:`psycopg_pool.AsyncConnectionPool`; anything else raises
    :class:`TypeError`, a closed one :class:`ValueError`. The result is a new,
    unopened :class:`~elasticpool.Pool` (``async with wrap(existing) as pool``)
    whose connections are leases from ``existing``: ``acquire()`` lends the
    driver's own object (an asyncpg ``PoolConnectionProxy``, a psycopg
    ``AsyncConnection``), :meth:`~elasticpool.Pool.transaction`,
    :meth:`~elasticpool.Pool.stats` and :meth:`~elasticpool.Pool.resize` work as
    for any pool, and ``membership=`` is passed through for a fleet share.

    Settings are :class:`~elasticpool.PoolSettings` fields (``settings=`` and/or
    keywords), with these defaults for a wrapped pool:

    * the limit is the underlying pool's ``max_size`` unless
      ``max_connections`` or ``total_max_connections`` is given. An asyncpg
      pool cannot grow, so a larger limit is capped at its ``max_size`` (with
      an :class:`~elasticpool.ElasticPoolWarning` when it is given so); a
      psycopg pool's ``max_size`` is made to follow the limit.
    * ``reset`` is what the underlying pool does on every give-back, because
      a lease kept idle by the wrapper does not pass through it between two
      borrowers: ``"session"`` (``Connection.reset()``) for asyncpg,
      ``"rollback"`` for psycopg.

    Closing the wrapper gives every lease back and leaves ``existing`` open and
    usable (a psycopg pool gets back its own ``max_size``); pass
    ``close_underlying=True`` to close it as well. ``name`` defaults to the
    psycopg pool's name, or ``"asyncpg"``.

    A sync :class:`psycopg_pool.ConnectionPool` (open) gives a
    :class:`~elasticpool.SyncPool` of leases instead, with the same defaults
    (``with wrap(existing) as pool``, ``pool.connection()``).

    It does not change how the underlying pool opens, checks, resets or
    retires server connections; ``docs/wrap.md`` says exactly what each side
    governs.
    """
    ppool = sys.modules.get("psycopg_pool")
    if ppool is not None and isinstance(existing, ppool.ConnectionPool):
        from .psycopg._sync_wrap import wrap_sync  # noqa: PLC0415 - only with one in hand

        return wrap_sync(
            existing,
            settings,
            name=name,
            membership=membership,
            close_underlying=close_underlying,
            elastic_settings=elastic_settings,
        )
    leases = _leases_for(existing)
    if not isinstance(close_underlying, bool):
        raise TypeError(f"close_underlying must be a bool (got {close_underlying!r})")
    if name is None:
        name = getattr(existing, "name", None) if leases.kind == "psycopg" else None
        name = name if isinstance(name, str) and name else leases.kind
    if settings is None:
        fields: dict[str, Any] = {"reset": leases.default_reset, **elastic_settings}
        if fields.get("max_connections") is None and fields.get("total_max_connections") is None:
            fields["max_connections"] = leases.max_size()
        settings = PoolSettings(**fields)
    else:
        if elastic_settings:
            settings = settings.replace(**elastic_settings)
        if settings.max_connections is None and settings.total_max_connections is None:
            settings = settings.replace(max_connections=leases.max_size())
    pool = _WrappedPool(
        leases, settings, name=name, membership=membership, close_underlying=close_underlying
    )
    limit = pool._planner.limit
    if membership is None and pool.requested_limit > limit:
        warnings.warn(
            f"pool {name!r}: limit {pool.requested_limit} is above the {leases.kind} pool's "
            f"max_size ({limit}), which cannot grow: capped at {limit}",
            ElasticPoolWarning,
            stacklevel=2,
        )
    return pool
