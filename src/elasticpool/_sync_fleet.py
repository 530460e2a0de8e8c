"""A fleet membership for the threaded pool: the async membership, on an event loop of its own.

The membership logic exists once (``fleet/``), async, behind the
:class:`~elasticpool.fleet.MemberPort` protocol. A :class:`~elasticpool.SyncPool`
runs it unchanged on a private asyncio event loop in a daemon thread
(:class:`FleetLoop`, an anyio blocking portal), and hands it a
:class:`SyncPort`: the port's async methods act on the thread-safe pool, and
whatever would block (borrowing the coordination connection, a statement on
it, opening or closing one) runs on a worker thread of that loop
(``anyio.to_thread``). The membership sees an async connector
(:class:`AsyncConnectorFacade`) over the driver's sync connections; every
statement it runs goes through that connector's ``fetch``.

Sync and async members of one pool name are members of one fleet: they write
the same lease rows through the same heartbeat function.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
from anyio.from_thread import BlockingPortal

from ._connector import ResetMode
from ._errors import PoolClosed, PoolTimeout
from ._member import Coordination, Freeze
from ._state import SlotState

if TYPE_CHECKING:
    from ._settings import PoolSettings
    from ._stats import PoolStats
    from ._sync_connector import SyncConnector
    from ._sync_pool import SyncPool
    from .fleet._base import Membership

__all__ = ["AsyncConnectorFacade", "FleetLoop", "SyncPort"]

logger = logging.getLogger("elasticpool")

T = TypeVar("T")


class FleetLoop:
    """An asyncio event loop on a daemon thread of its own, driven through an anyio portal.

    One per open :class:`~elasticpool.SyncPool` with a membership; it runs
    the membership's ``join``, ``run`` (as a background task), ``leave`` and
    ``set_total``. It is a daemon thread, so a pool left open does not keep
    the interpreter alive.
    """

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._portal: BlockingPortal | None = None
        self._error: BaseException | None = None
        self._scope: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._portal is None:  # pragma: no cover - no event loop to be had
            raise RuntimeError("cannot start the fleet's event loop") from self._error

    def _main(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as exc:  # pragma: no cover - reported by __init__
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with BlockingPortal() as portal:
            self._portal = portal
            self._ready.set()
            await portal.sleep_until_stopped()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the loop and return its result (blocks this thread)."""
        assert self._portal is not None
        return self._portal.call(fn, *args)

    def start_membership(self, membership: Membership, port: SyncPort) -> None:
        """Run ``membership.run(port)`` in the background until :meth:`stop_membership`."""
        assert self._portal is not None
        self._portal.start_task(self._run_membership, membership, port)

    async def _run_membership(
        self,
        membership: Membership,
        port: SyncPort,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        done = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._scope, self._done = scope, done
                task_status.started()
                await membership.run(port)
        except Exception:  # pragma: no cover - a bug in a membership
            logger.exception("pool %r: fleet membership stopped", port.name)
        finally:
            done.set()

    def stop_membership(self, membership: Membership, port: SyncPort) -> None:
        """Stop the heartbeats, then leave the fleet (bounded by the membership)."""
        self.call(self._stop_membership, membership, port)

    async def _stop_membership(self, membership: Membership, port: SyncPort) -> None:
        with anyio.CancelScope(shield=True):
            if self._scope is not None:
                self._scope.cancel()
            if self._done is not None:
                await self._done.wait()
            await membership.leave(port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (cancelling what still runs on it) and its thread."""
        portal = self._portal
        if portal is not None:
            with contextlib.suppress(RuntimeError):  # stopped already
                portal.call(portal.stop, True)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


# ----------------------------------------------------------------------------- the connector


class AsyncConnectorFacade:
    """A :class:`~elasticpool.SyncConnector` as an async :class:`~elasticpool.Connector`.

    What the membership of a sync pool sees as ``port.connector``: blocking
    calls run on worker threads of the fleet's loop (a statement abandoned
    by a timeout keeps running on its thread until the pool closes the
    connection, which makes it return), local checks run as they are, and
    connections are the driver's own. ``set_server_settings`` is there when
    the sync connector has it.
    """

    def __init__(self, connector: SyncConnector[Any], settings: PoolSettings) -> None:
        self.sync = connector
        self._settings = settings
        set_settings = getattr(connector, "set_server_settings", None)
        if set_settings is not None:
            self.set_server_settings = set_settings

    async def connect(self) -> Any:
        call = functools.partial(self.sync.connect, self._settings.connect_timeout)
        return await anyio.to_thread.run_sync(call)

    async def close(self, conn: Any) -> None:
        await anyio.to_thread.run_sync(self.sync.close, conn)

    def terminate(self, conn: Any) -> None:
        self.sync.terminate(conn)

    def is_closed(self, conn: Any) -> bool:
        return self.sync.is_closed(conn)

    async def ping(self, conn: Any) -> None:
        call = functools.partial(self.sync.ping, conn, self._settings.connect_timeout)
        await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    def needs_reset(self, conn: Any, mode: ResetMode) -> bool:
        return self.sync.needs_reset(conn, mode)

    async def reset(self, conn: Any, mode: ResetMode) -> None:
        call = functools.partial(self.sync.reset, conn, mode)
        await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    def is_disconnect(self, exc: BaseException) -> bool:
        return self.sync.is_disconnect(exc)

    def transaction(self, conn: Any, *, readonly: bool = False) -> AbstractAsyncContextManager[Any]:
        return _transaction(self.sync, conn, readonly)

    async def fetch(self, conn: Any, sql: str, /, *args: Any) -> list[tuple[Any, ...]]:
        """The sync connector's ``fetch`` on a worker thread (``Connector.fetch``'s contract)."""
        call = functools.partial(self.sync.fetch, conn, sql, *args)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    def __repr__(self) -> str:
        return f"<async facade of {self.sync!r}>"


@contextlib.asynccontextmanager
async def _transaction(
    connector: SyncConnector[Any], conn: Any, readonly: bool
) -> AsyncIterator[Any]:
    tx = connector.transaction(conn, readonly=True) if readonly else connector.transaction(conn)
    inner = await anyio.to_thread.run_sync(tx.__enter__, abandon_on_cancel=True)
    try:
        yield inner
    except BaseException:
        info = sys.exc_info()
        await anyio.to_thread.run_sync(tx.__exit__, *info, abandon_on_cancel=True)
        raise
    await anyio.to_thread.run_sync(tx.__exit__, None, None, None, abandon_on_cancel=True)


# ----------------------------------------------------------------------------- the port


class SyncPort:
    """A :class:`~elasticpool.SyncPool` as its membership sees it (a ``MemberPort``).

    Called on the fleet's event loop only. The limit changes only through
    :meth:`resize` and :meth:`Freeze.apply`.
    """

    def __init__(self, pool: SyncPool[Any]) -> None:
        self._pool = pool
        self._connector = AsyncConnectorFacade(pool._connector, pool.settings)
        # When the fleet last asked for demand, and the busy seconds counted by then.
        self._since = time.monotonic()
        self._busy = 0.0

    def opened(self) -> None:
        """The pool opens: demand is averaged from now."""
        self._since = time.monotonic()
        self._connector = AsyncConnectorFacade(self._pool._connector, self._pool.settings)

    @property
    def name(self) -> str:
        return self._pool.name

    @property
    def settings(self) -> PoolSettings:
        return self._pool.settings

    @property
    def connector(self) -> AsyncConnectorFacade:
        return self._connector

    def now(self) -> float:
        return time.monotonic()

    def stats(self) -> PoolStats:
        return self._pool.stats()

    async def resize(self, max_connections: int) -> None:
        self._pool.resize(max_connections)
        await anyio.lowlevel.checkpoint()

    def coordination(
        self, wait_own: float = 0.5, *, own: bool = True
    ) -> AbstractAsyncContextManager[Coordination]:
        return self._coordination(wait_own, own)

    @contextlib.asynccontextmanager
    async def _coordination(self, wait_own: float, own: bool) -> AsyncIterator[Coordination]:
        """One of the pool's own connections when it can (ahead of every caller), else an extra."""
        pool = self._pool
        sync = pool._connector
        slot = None
        if own and pool._state == "open" and pool._planner.limit > 0:
            try:
                slot = await anyio.to_thread.run_sync(pool._acquire_slot, wait_own, True)
            except (PoolTimeout, PoolClosed):  # all stay borrowed, or closing
                slot = None
        if slot is None:
            conn = await anyio.to_thread.run_sync(sync.connect, pool.settings.connect_timeout)
            pool._extras[conn] = None
            co = Coordination(conn, extra=True)
            try:
                yield co
            finally:
                if not co.kept:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(pool._close_conn, conn)
                pool._extras.pop(conn, None)
            return
        slot.owner = None  # the pool's own borrow: no caller holds it
        lease = slot.lease
        idle_since = max(slot.idle_since, slot.handed_at)  # unused since (when it was idle)
        pool._coordinating = slot
        ok = False
        try:
            yield Coordination(slot.conn, extra=False)
            ok = True
        finally:
            pool._coordinating = None
            if ok:  # committed: reset only if a transaction was somehow left open
                conn = slot.conn
                broken = sync.is_closed(conn)
                dirty = not broken and sync.needs_reset(conn, "rollback")
                with pool._lock:
                    if slot.state is SlotState.IN_USE and slot.lease == lease:
                        pool._planner.release(slot, time.monotonic(), broken, dirty, idle_since)
                    plan = pool._take()
                pool._execute(plan)
            else:
                pool._release_slot(slot, sys.exc_info()[1], lease)

    def frozen(self) -> AbstractAsyncContextManager[Freeze]:
        return self._frozen()

    @contextlib.asynccontextmanager
    async def _frozen(self) -> AsyncIterator[Freeze]:
        """Hold the pool at its current size for a heartbeat; yield what it reports.

        As ``Pool._frozen`` (see there): demand is what is asked now, or the
        average since the last heartbeat when that is more; if the heartbeat
        fails before its grant is applied, the limit goes back to what it was,
        or lower when the outcome may be committed but is not known.
        """
        pool = self._pool
        p = pool._planner
        with pool._lock:
            coordinating = 1 if pool._coordinating is not None else 0
            now = time.monotonic()
            demand, self._busy = p.fleet_demand(self._busy, now - self._since, now)
            self._since = now
            freeze = Freeze(
                self._apply_limit,
                demand=max(0, demand - coordinating),
                holding=len(p.remaining()),
                before=p.limit,
            )
            if p.size < p.limit:
                p.resize(p.size, now)
            plan = pool._take()
        pool._execute(plan)
        try:
            yield freeze
        except BaseException:
            back = freeze.fallback()
            if back is not None:
                with pool._lock:
                    if not p.closed and p.limit != back:
                        p.resize(back, time.monotonic())
                    plan = pool._take()
                pool._execute(plan)
            raise

    def _apply_limit(self, limit: int, adopt: Any) -> bool:
        """Set the pool's limit now (no await); take ``adopt`` in if it has room: whether it did."""
        pool = self._pool
        planner = pool._planner
        with pool._lock:
            slot = None
            if not planner.closed:
                slot = planner.resize(limit, time.monotonic(), adopt=adopt, jitter=random.random())
            plan = pool._take()
        pool._execute(plan)
        return slot is not None

    def demand_signal(self) -> anyio.Event:
        event = anyio.Event()
        self._pool._fleet_demand = (asyncio.get_running_loop(), event)
        return event

    async def close_connection(self, conn: Any) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._pool._close_conn, conn)

    def __repr__(self) -> str:
        return f"<member port of {self._pool!r}>"
