"""``elasticpool.wrap``: elasticpool's limits, timeouts and stats on top of a pool you already have.

:func:`wrap` takes a live :class:`asyncpg.Pool` or
:class:`psycopg_pool.AsyncConnectionPool` and returns an ordinary
:class:`~elasticpool.Pool` whose "connections" are *leases* from it: a connect
borrows one (``acquire()`` / ``getconn()``), a close gives it back
(``release()`` / ``putconn()``). The planner then decides, as for any pool, how
many leases are out at once, who waits (FIFO, ``pool_timeout``), and what the
stats say; the underlying pool keeps doing what it alone can do (open server
connections, its own reset on give-back, its own idle and lifetime policy).

What is common to every kind lives here (:class:`Leases`, the wrapped pool,
:func:`wrap`); each driver's leases live in its adapter
(``elasticpool.asyncpg._leases``, ``elasticpool.psycopg._leases``), and
:func:`wrap` asks the adapters which one the pool it is given belongs to
(``ask`` in ``_adapters.py``). No driver is imported here.

``docs/wrap.md`` lists exactly what is and is not governed for each kind.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Coroutine
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

import anyio

from ._adapters import ask
from ._connector import ResetMode
from ._errors import ElasticPoolWarning
from ._pool import Pool
from ._settings import PoolSettings
from ._validate import check_bool, check_int

if TYPE_CHECKING:
    import asyncpg
    import asyncpg.pool
    from psycopg import AsyncConnection, Connection
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from ._sync_pool import SyncPool
    from .fleet._base import Membership

__all__ = ["Leases", "ThreadedLeases", "spawn", "wrap"]

logger = logging.getLogger("elasticpool")

ConnT = TypeVar("ConnT")
RecordT = TypeVar("RecordT", bound="asyncpg.Record")
ACT = TypeVar("ACT", bound="AsyncConnection[Any]")
CT = TypeVar("CT", bound="Connection[Any]")

ACCEPTS = "an asyncpg.Pool, a psycopg_pool.AsyncConnectionPool or a psycopg_pool.ConnectionPool"
"""What :func:`wrap` takes, for its errors."""

# Give-backs and terminations that outlive the call that started them (kept referenced).
_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], what: str) -> asyncio.Task[Any] | None:
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


class ThreadedLeases(Protocol):
    """What an adapter answers for a threaded pool (``psycopg_pool.ConnectionPool``).

    Its wrapper is a :class:`~elasticpool.SyncPool`, not a :class:`Pool`:
    the adapter builds it, with :func:`wrap`'s arguments.
    """

    def wrap(
        self,
        settings: PoolSettings | None,
        *,
        name: str | None,
        membership: Membership | None,
        close_underlying: bool,
        elastic_settings: dict[str, Any],
    ) -> SyncPool[Any]: ...


class Leases(Generic[ConnT]):
    """A :class:`~elasticpool.Connector` whose connections are leases from an existing pool.

    It remembers which leases are out, so a lease is given back at most once:
    :meth:`close` after :meth:`terminate` (or the other way round) is a no-op.
    The give-back runs in a task of its own and :meth:`close` waits for it
    shielded: if the pool's ``close_timeout`` cuts the wait short, the lease
    still reaches the underlying pool instead of being lost half-way.

    An adapter subclasses it for each kind of pool it can wrap (the methods
    marked "per kind"), and returns one from its ``_leases.leases_for``.
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

    async def fetch(self, conn: ConnT, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def default_name(self) -> str:
        """The wrapped pool's name when :func:`wrap` is given none."""
        return self.kind

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
        task = spawn(self._give_back(conn), "give a connection back to the underlying pool")
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


class _WrappedPool(Pool[ConnT]):
    """A :class:`~elasticpool.Pool` of leases from an existing pool (see :func:`wrap`)."""

    def __init__(
        self,
        leases: Leases[ConnT],
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
        self.requested_limit = self.limit
        limit = self._cap(self.requested_limit)
        self._set_limit_before_open(limit)  # no slot exists yet: nothing else to adjust
        leases.limit = limit

    def _cap(self, limit: int) -> int:
        ceiling = self._leases.ceiling()
        return limit if ceiling is None else min(limit, ceiling)

    async def open(self) -> None:
        if self._state == "new":
            await self._leases.apply_limit(self.limit)
        await super().open()

    async def resize(self, max_connections: int, min_connections: int | None = None) -> None:
        """Change the limit, and make the underlying pool follow it.

        As :meth:`Pool.resize <elasticpool.Pool.resize>`, plus: a psycopg pool's
        ``max_size`` is set to ``max(limit, its min_size)`` (raised before the
        wrapper's limit, lowered after it); an asyncpg pool cannot grow, so the
        limit is capped at its ``max_size``, and leases given back while it
        holds more connections than the wrapper can use are closed for good.
        """
        check_int("max_connections", max_connections, low=0)
        limit = self._cap(max_connections)
        floor = min_connections
        if limit < max_connections and isinstance(floor, int) and floor > limit:
            floor = limit  # the limit was capped: cap the floor with it
        if self._resize_lock is None:
            self._resize_lock = anyio.Lock()
        async with self._resize_lock:
            old = self.limit
            if limit > old:
                await self._leases.apply_limit(limit)  # room below first, or new leases wait there
            try:
                self._leases.limit = limit
                await super().resize(limit, floor)
            except BaseException:
                self._leases.limit = self.limit
                with anyio.CancelScope(shield=True):
                    await self._leases.apply_limit(self.limit)
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


def _leases_for(existing: object) -> Leases[Any] | ThreadedLeases:
    """The leases of the adapter whose driver ``existing`` is a pool of; else a TypeError."""
    leases: Leases[Any] | ThreadedLeases | None = ask("_leases", "leases_for", existing)
    if leases is not None:
        return leases
    # Never repr() the argument: it may be a connection string with a password in it.
    kind = type(existing)
    raise TypeError(f"wrap() takes {ACCEPTS} (got {kind.__module__}.{kind.__qualname__})")


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
    leases = _leases_for(existing)
    if not isinstance(leases, Leases):  # a threaded pool's: it builds its own wrapper
        return leases.wrap(
            settings,
            name=name,
            membership=membership,
            close_underlying=close_underlying,
            elastic_settings=elastic_settings,
        )
    check_bool("close_underlying", close_underlying)
    if name is None:
        name = leases.default_name()
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
    limit = pool.limit
    if membership is None and pool.requested_limit > limit:
        warnings.warn(
            f"pool {name!r}: limit {pool.requested_limit} is above the {leases.kind} pool's "
            f"max_size ({limit}), which cannot grow: capped at {limit}",
            ElasticPoolWarning,
            stacklevel=2,
        )
    return pool
