"""The pool: the anyio shell that carries out the planner's plans.

Everything that decides lives in ``_state.Planner``; this module only reads the
clock, awaits, spawns background work and wakes waiters. Pool state is never
held across an await: each event is one synchronous call into the planner,
then the plan it left is carried out (``Pool._flush``, the one place plans run).

Around it: ``_runner.py`` hosts the background tasks, ``_lifecycle.py`` names
the states, ``_fork.py`` handles ``os.fork()``, ``_member.py`` holds what a
heartbeat sees, ``_stats.py`` the snapshot. Other modules use the pool only
through its public methods and the hooks documented as for adapters
(``connector``, ``limit``, ``in_use``, ``observe()``, ``Borrow``, ...), never
its private state or its planner's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint

from ._backend import Waker, current_backend
from ._connector import Connector, ResetMode, fetch_of
from ._errors import PoolClosed, PoolTimeout
from ._fork import forked_error, inherit, watch
from ._lifecycle import CLOSED, CLOSING, FORKED, NEW, OPEN, OPENING, Lifecycle
from ._limits import resolve_limit
from ._member import Coordination, Freeze
from ._runner import Runner
from ._settings import PoolSettings
from ._sql import SERVER_LIMITS_SQL
from ._state import (
    _HANDED,
    _IN_USE,
    _RESETTING,
    CloseReason,
    Outcome,
    Planner,
    Slot,
    SlotState,
    TimingSink,
)
from ._stats import PoolStats
from ._validate import check_name, check_seconds
from .fleet._base import FleetStatus, Membership

__all__ = ["Borrow", "Pool"]

logger = logging.getLogger("elasticpool")

ConnT = TypeVar("ConnT")

_DEFAULT: Any = object()


_CONNECTOR_METHODS = (
    "connect",
    "close",
    "terminate",
    "is_closed",
    "ping",
    "needs_reset",
    "reset",
    "is_disconnect",
    "transaction",
)


class Borrow(Generic[ConnT]):
    """What :meth:`Pool.acquire` returns: one borrow, as an async context manager or awaitable.

    ``async with pool.acquire() as conn`` borrows on entry and gives back on
    exit; ``conn = await pool.acquire()`` borrows a connection to give back
    with :meth:`Pool.release`. Besides that, adapters that keep a borrow
    open across calls (the drop-in faces, :class:`~elasticpool.replicas.RoutingPool`)
    use it directly: they enter it with ``await borrow.__aenter__()`` and end
    it with :meth:`end` (or ``__aexit__``), and may :meth:`retire` the
    connection; :meth:`is_stale` and :meth:`note_return` let one that looks
    borrows up by connection recognise a stale give-back (see
    :meth:`Pool.release`). Enter it at most once.

    As a context manager it holds the slot itself (no lookup on release); the
    lease number tells this borrow from a later one of the same slot.
    """

    __slots__ = ("_lease", "_pool", "_slot", "_timeout")

    def __init__(self, pool: Pool[ConnT], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._slot: Slot | None = None
        self._lease = 0

    async def __aenter__(self) -> ConnT:
        # The hot path, inlined from Pool._acquire_slot: one clock read, one cancel
        # check, one planner call, no yield when an idle connection can be lent.
        pool = self._pool
        planner = pool._planner
        task = pool._current_task()
        now = pool._now()
        if pool._state is OPEN and not planner.waiters and not pool._cancel_due(task, now):
            found = planner.acquire(now)
            if planner.pending is not None:  # no call when there is nothing (the hot path)
                pool._flush()
            if found is None or found.ping or pool._is_closed(found.conn):
                slot = await pool._acquire_slow(found, now, self._timeout)
            else:
                slot = found
        elif planner.waiters and pool._queues_anyway():
            # Callers already queue, so this one will too (no barging): its wait
            # is its checkpoint (one coroutine layer less than _acquire_checkpoint).
            slot = await pool._acquire_slow(None, now, self._timeout)
        else:
            slot = await pool._acquire_checkpoint(self._timeout)
        slot.owner = task
        self._slot = slot
        self._lease = slot.lease
        conn: ConnT = slot.conn
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The hot path: Pool._release_slot, inlined.
        slot, self._slot = self._slot, None
        if slot is None or slot.lease != self._lease or slot.state is not _IN_USE:
            return
        pool = self._pool
        conn = slot.conn
        connector = pool._connector
        broken = pool._closed_on_return(conn) or (exc is not None and connector.is_disconnect(exc))
        reset = not broken and connector.needs_reset(conn, pool._reset_mode)
        planner = pool._planner
        planner.release(slot, pool._now(), broken, reset)
        if planner.pending is not None:  # no call when there is nothing (the hot path)
            pool._flush()

    def __await__(self) -> Generator[Any, None, ConnT]:
        return self._pool._acquire_registered(self._timeout).__await__()

    def end(self, exc: BaseException | None = None, *, clean: bool = False) -> None:
        """End this borrow now, as ``__aexit__`` does, without awaiting.

        ``exc`` is the error the borrower met, if any (a connection-class
        error evicts the connection). ``clean``: the caller (a face) has just
        reset the connection itself, in the releasing task as the driver's own
        pool does, so the connector is not asked whether it needs a reset.
        Ending a borrow that has ended, or was never entered, does nothing.
        """
        slot, self._slot = self._slot, None
        if slot is not None and slot.lease == self._lease and slot.state is _IN_USE:
            self._pool._release_slot(slot, exc, clean)

    def retire(self) -> None:
        """Close the borrowed connection when it comes back instead of reusing it."""
        slot = self._slot
        if slot is not None and slot.lease == self._lease:
            self._pool._planner.retire(slot)

    def is_stale(self) -> bool:
        """Whether the running task, giving a borrow of this connection back now, is stale.

        That is: the running task borrowed this connection before this
        borrow, gave that borrow back itself (see :meth:`note_return`), and
        another task holds this one (see :meth:`Pool.release`). An adapter
        that finds the borrow by its connection then ignores or refuses the
        give-back; this borrow stands. ``False`` when it holds nothing.
        """
        slot = self._slot
        return slot is not None and self._pool._stale(slot)

    def note_return(self) -> None:
        """Note that the running task gives this borrow back now (as :meth:`Pool.release` does).

        Call it just before ending the borrow, so that :meth:`is_stale` can
        tell a later give-back of it from a hand-off.
        """
        slot = self._slot
        if slot is not None:
            self._pool._note_return(slot)


class Pool(Generic[ConnT]):
    """An elastic pool of connections made by one :class:`~elasticpool.Connector`.

    It starts empty (or at ``min_connections``), opens connections only for
    callers that no pending connect already covers, hands each ready
    connection to the oldest waiter, and shrinks again as connections sit idle
    past ``idle_timeout`` or reach ``connection_lifetime``. See
    :class:`~elasticpool.PoolSettings` for every knob.

    Use it as ``async with Pool(connector, max_connections=10) as pool:``; on
    asyncio ``await pool.open()`` / ``await pool.close()`` work as well. Inside,
    ``async with pool.acquire() as conn`` lends the driver's own connection
    object and takes it back on exit, whatever happens.

    Semantics callers can rely on:

    * every :meth:`acquire` is a cancel point: in a cancelled scope (or one
      past its deadline) it raises, even with an idle connection ready, and
      holds nothing; it is a schedule point (it lets other tasks run) only
      when it waits or checks a connection, and lends an idle connection at
      once otherwise, as :meth:`asyncio.Queue.get` does (see
      docs/performance.md);
    * callers are served strictly first come, first served: with anyone
      queued, an acquire queues too;
    * a caller that waits longer than ``pool_timeout`` gets
      :class:`~elasticpool.PoolTimeout` (a :class:`TimeoutError`) whose message
      names the pool and its counts, and whose ``__cause__`` is the last
      connect error if connects were failing;
    * a cancelled caller never loses a connection: one already handed to it
      passes to the next waiter;
    * closing is bounded: :meth:`close` waits up to ``timeout`` for borrowed
      connections to come back, then terminates what is left.

    It is not thread-safe: use it from the event loop that opened it. Nor is
    it shared across ``os.fork()``: in a child, every call raises
    :class:`RuntimeError` and :meth:`close` only marks it closed, leaving the
    parent's connections alone; open pools after the fork.

    Adapters and integrations (drop-in faces, routers, metrics exporters)
    have hooks of their own, listed last: cheap live readings
    (:attr:`connector`, :attr:`limit`, :attr:`in_use`, :attr:`waiting`,
    :attr:`connect_errors`, :attr:`last_connect_error`, :attr:`clock`),
    timing sinks (:meth:`observe`), :meth:`check_release`, and the borrow
    object :meth:`acquire` returns.
    """

    def __init__(
        self,
        connector: Connector[ConnT],
        settings: PoolSettings | None = None,
        *,
        membership: Membership | None = None,
        name: str = "default",
        **overrides: Any,
    ) -> None:
        missing = [m for m in _CONNECTOR_METHODS if not callable(getattr(connector, m, None))]
        if missing:
            raise TypeError(
                f"connector must implement elasticpool.Connector (missing {', '.join(missing)}; "
                f"got {type(connector).__name__})"
            )
        if settings is None:
            settings = PoolSettings(**overrides)
        elif not isinstance(settings, PoolSettings):
            raise TypeError(
                "settings must be a PoolSettings (got "
                f"{type(settings).__name__}); pass settings as keyword arguments instead"
            )
        elif overrides:
            settings = settings.replace(**overrides)
        check_name("name", name)
        self.name = name
        self.settings = settings
        self.membership = membership
        self._connector = connector
        self._is_closed = connector.is_closed
        # Optional (see Connector): the cheaper check for a connection coming back.
        self._closed_on_return: Callable[[Any], bool] = getattr(
            connector, "closed_on_return", connector.is_closed
        )
        limit = 0  # with a percentage total the server has a say first (see open())
        if settings.total_percent is None:  # (and warns here about the limits it is given)
            limit = resolve_limit(settings, allow_small_total=settings.allow_small_total).limit
        # With a membership nothing opens before the fleet has a say (join sets the limit).
        self._planner = Planner(settings, 0 if membership is not None else limit)
        self._membership_scope: anyio.CancelScope | None = None
        # Set when a caller queues at the limit; a membership may heartbeat early on it.
        self._fleet_demand: anyio.Event | None = None
        self._membership_done: anyio.Event | None = None
        self._coordinating: Slot | None = None
        self._port = _Port(self)  # what a membership sees of this pool
        # Connections the fleet opened outside the slots (a heartbeat's), while open.
        self._extras: dict[Any, None] = {}
        # When the fleet last asked for demand, and the busy seconds counted by then.
        self._fleet_since = 0.0
        self._fleet_busy = 0.0
        self._in_use: dict[int, Slot] = {}
        self._connect_time = 0.0
        self._runner = Runner(f"pool {name!r}")  # the background tasks, while open
        # Resets run in worker tasks, not one new task each (see _reset_worker).
        self._reset_queue: collections.deque[Slot] = collections.deque()
        self._reset_parked: list[Waker] = []
        self._tick_event: anyio.Event | None = None
        self._drained: anyio.Event | None = None
        self._ready: anyio.Event | None = None
        self._opened: anyio.Event | None = None
        self._state: Lifecycle = NEW  # see _lifecycle.py; forked: see _forked
        self._pid = 0  # the process that opened it
        self._reset_mode = settings.reset
        # Optional (see Connector): a reset that needs no I/O, done without a deadline.
        self._reset_nowait: Callable[[Any, ResetMode], bool | None] | None = getattr(
            connector, "reset_nowait", None
        )
        self._now: Callable[[], float] = anyio.current_time
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        self._waker: Callable[[], Waker] = anyio.Event
        self._current_task: Callable[[], object] = lambda: anyio.get_current_task().id
        self._cancel_due: Callable[[object, float], bool] = lambda task, now: True  # until open
        self._clock_offset = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Pool[ConnT]:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Start the pool's background work (idempotent). The floor fills in the background.

        With a membership, the first limit comes from ``membership.join``
        before it returns; meanwhile the pool is opening, and acquires wait
        for it (within their timeout). An open that is cancelled, or whose
        join raises, is undone: the background work stops, connections opened
        meanwhile are closed, the membership leaves, and the pool is new
        again, so ``open()`` can be retried. Another task's ``open()`` waiting
        for it then opens the pool itself. A percentage total
        (``total_max_connections="80%"``) is resolved first, on one
        connection: an open that cannot reach the server raises, and is undone.
        """
        if self._state is FORKED:
            raise self._forked_error()
        while self._state is OPENING:  # another task is opening it: wait for that
            assert self._opened is not None
            await self._opened.wait()
        if self._state is OPEN:
            return
        if self._state is not NEW:
            raise PoolClosed(f"pool {self.name!r} is closed and cannot be opened again")
        self._state = OPENING
        self._opened = opened = anyio.Event()
        first = None
        if self.settings.total_percent is not None:
            try:
                first = await self._resolve_percentage()
            except BaseException:
                self._state = NEW
                opened.set()
                raise
        self._pid = os.getpid()
        watch(self, type(self)._forked)
        backend = current_backend()
        self._now = backend.now
        self._sleep = backend.sleep
        self._waker = backend.waker
        self._current_task = backend.current_task
        self._cancel_due = backend.cancel_due
        self._clock_offset = backend.now() - time.monotonic()
        self._fleet_since = backend.now()
        self._drained = anyio.Event()
        self._runner = Runner(f"pool {self.name!r}")
        await self._runner.start(self._ticker)  # shielded: once started, the open goes on
        if first is not None:  # the connection that asked the server: the pool's first
            if self.membership is None:
                limit = resolve_limit(self.settings, allow_small_total=True).limit
                if self._planner.resize(limit, self._now(), adopt=first) is None:
                    self._terminate(first)
                self._flush()
            else:  # the fleet has a say first: its join opens what it needs
                with anyio.CancelScope(shield=True):
                    await self._close_conn(first)
        try:
            if self.membership is not None:
                # The first limit comes from the fleet, before anyone borrows.
                await self.membership.join(self._port)
        except BaseException:
            if self._state is OPENING:
                await self._undo_open()
            raise
        finally:
            opened.set()  # openers and acquires waiting for this open look again
        if self._state is not OPENING:  # terminated while joining
            raise PoolClosed(f"pool {self.name!r} was terminated while opening")
        self._state = OPEN
        if self.membership is not None:
            self._runner.start_soon(self._run_membership, self.membership)
        self._planner.tick(self._now())
        self._flush()

    async def _undo_open(self) -> None:
        """Take back an open whose join was cancelled or failed: the pool is new again.

        Nobody can have borrowed yet (acquires wait while the pool is
        opening), so closing the idle connections, stopping the runner (which
        abandons connects in flight) and leaving the fleet (a lease may have
        been committed) leaves nothing behind. Shielded; ``leave`` is bounded.
        """
        planner = self._planner
        with anyio.CancelScope(shield=True):
            planner.resize(0, self._now())  # the join's limit, if any: nothing opens any more
            self._flush()
            assert self.membership is not None
            try:
                await self.membership.leave(self._port)
            except Exception:  # pragma: no cover - a bug in a membership
                logger.exception("pool %r: fleet membership failed to leave", self.name)
            await self._runner.stop()
            for slot in planner.remaining():  # normally none: closes finish in the runner
                if slot.conn is not None:
                    self._terminate(slot.conn)
                planner.forget(slot)
        self._state = NEW

    async def _resolve_percentage(self) -> Any:
        """Resolve ``total_max_connections="N%"`` against the server; return the connection used.

        One connection asks the server for ``max_connections`` and what it
        reserves (``superuser_reserved_connections``, and
        ``reserved_connections`` on PostgreSQL 16+); the settings then carry
        the number. The caller keeps that connection as the pool's first.
        """
        percent = self.settings.total_percent
        fetch = fetch_of(self._connector, "total_max_connections as a percentage")
        with anyio.fail_after(self.settings.connect_timeout):
            conn = await self._connector.connect()
        try:
            with anyio.fail_after(self.settings.connect_timeout):
                rows = await fetch(conn, SERVER_LIMITS_SQL)
            most, reserved = int(rows[0][0]), int(rows[0][1])
            self.settings = self.settings.with_server_limits(most, reserved)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_conn(conn)
            raise
        logger.info(
            "pool %r: total_max_connections %g%% of the server's %d usable connections is %s",
            self.name,
            percent,
            most - reserved,
            self.settings.total_max_connections,
        )
        return conn

    async def _run_membership(self, membership: Membership) -> None:
        self._membership_done = done = anyio.Event()
        try:
            with anyio.CancelScope() as self._membership_scope:
                await membership.run(self._port)
        except Exception:  # pragma: no cover - a bug in a membership
            logger.exception("pool %r: fleet membership stopped", self.name)
        finally:
            done.set()

    async def _stop_membership(self) -> None:
        """Stop the heartbeats, then leave the fleet (bounded, shielded)."""
        membership = self.membership
        if membership is None:
            return
        with anyio.CancelScope(shield=True):
            if self._membership_scope is not None:
                self._membership_scope.cancel()
            if self._membership_done is not None:
                await self._membership_done.wait()
            await membership.leave(self._port)

    async def close(self, timeout: float | None = 10.0) -> None:
        """Close the pool; bounded.

        Queued callers get :class:`~elasticpool.PoolClosed` at once and idle
        connections are closed. Borrowed connections close as they come back;
        after ``timeout`` seconds (``None``: no bound) whatever is left is
        terminated. Calling it again is harmless; it cannot be reopened.
        """
        check_seconds("timeout", timeout, strict=False, optional=True, finite=False)
        if self._state is FORKED:  # the parent's: nothing to wait for, nothing to close here
            self._state = CLOSED
            return
        while self._state is OPENING:  # let the open finish, or be undone, first
            assert self._opened is not None
            await self._opened.wait()
        if self._state in (CLOSING, CLOSED):
            with anyio.CancelScope(shield=True):
                await self._runner.wait_stopped()
            return
        if self._state is NEW:
            self._state = CLOSED
            self._planner.close(self._now())
            return
        self._state = CLOSING
        planner = self._planner
        planner.close(self._now())
        self._flush()
        assert self._drained is not None
        try:
            if planner.remaining():
                with anyio.move_on_after(math.inf if timeout is None else timeout):
                    await self._drained.wait()
        finally:
            with anyio.CancelScope(shield=True):
                left = planner.remaining()
                if left:
                    logger.warning(
                        "pool %r: terminating %d connection(s) not returned in time",
                        self.name,
                        len(left),
                    )
                for slot in left:
                    if slot.conn is not None:
                        self._terminate(slot.conn)
                    planner.forget(slot)
                # Only now that nothing is held: heartbeats kept the lease while
                # borrowed connections were still out.
                await self._stop_membership()
                await self._runner.stop()
                self._state = CLOSED

    async def wait(self, timeout: float | None = 30.0) -> None:
        """Wait until ``min_connections`` connections are open (the warm floor is full).

        Raises :class:`~elasticpool.PoolTimeout` after ``timeout`` seconds
        (``None``: no bound), with the last connect error as its cause.
        """
        check_seconds("timeout", timeout, strict=False, optional=True, finite=False)
        self._check_open()
        planner = self._planner
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            errors = planner.connect_errors
            while planner.size - planner.n_connecting < planner.floor:
                self._check_open()
                if self.settings.fail_fast and planner.connect_errors > errors:
                    assert planner.last_connect_error is not None
                    raise planner.last_connect_error
                self._ready = event = anyio.Event()
                await event.wait()
            return
        msg = (
            f"pool {self.name!r}: floor of {planner.floor} not reached within {timeout:g}s "
            f"({planner.describe()})"
        )
        raise PoolTimeout(msg) from planner.last_connect_error

    def _check_drained(self) -> None:
        if self._planner.closed and self._drained is not None and not self._planner.remaining():
            self._drained.set()

    # ------------------------------------------------------------------ acquire

    def acquire(self, *, timeout: float | None = _DEFAULT) -> Borrow[ConnT]:
        """Borrow a connection: ``async with pool.acquire() as conn``.

        ``conn = await pool.acquire()`` works too; give it back with :meth:`release`.

        ``timeout`` overrides ``pool_timeout`` for this call (``None``: wait
        forever). Raises :class:`~elasticpool.PoolTimeout`,
        :class:`~elasticpool.TooManyWaiters` or :class:`~elasticpool.PoolClosed`,
        and the caller's cancellation if it is due (a cancelled scope, one past
        its deadline, or an undelivered ``Task.cancel()``), before anything is
        borrowed. An idle connection, with nobody queued, is lent without
        yielding to the event loop (like ``checkpoint_if_cancelled()`` in trio);
        waiting for one, or checking one (``ping_after``), yields.
        """
        if timeout is _DEFAULT:
            timeout = self.settings.pool_timeout
        elif timeout is not None:
            check_seconds("timeout", timeout, optional=True, finite=False)
        return Borrow(self, timeout)

    def acquire_nowait(self) -> ConnT:
        """Borrow an idle connection without waiting, or raise :class:`anyio.WouldBlock`.

        It is not a checkpoint, does not queue, and does not ping: the
        connection is the most recently used idle one. Give it back with
        :meth:`release`.
        """
        self._check_open()
        planner = self._planner
        slot = planner.acquire(self._now())
        if planner.pending is not None:  # no call when there is nothing (a hot path)
            self._flush()
        if slot is None:
            raise anyio.WouldBlock
        slot.owner = self._current_task()
        conn: ConnT = slot.conn
        self._in_use[id(conn)] = slot
        return conn

    def _check_open(self) -> None:
        if self._state is not OPEN:
            if self._state is FORKED:
                raise self._forked_error()
            if self._state is NEW:
                raise RuntimeError(
                    f"pool {self.name!r} is not open: use 'async with pool' or 'await pool.open()'"
                )
            if self._state is OPENING:
                raise RuntimeError(f"pool {self.name!r} is still opening: await pool.open() first")
            raise PoolClosed(f"pool {self.name!r} is closed ({self._planner.describe()})")

    async def _wait_open(self, timeout: float | None) -> float | None:
        """An acquire that finds the pool opening waits for the open; returns the time left.

        Raises :class:`~elasticpool.PoolTimeout` if the open outlasts
        ``timeout``, :class:`RuntimeError` if the open is undone (cancelled,
        or its join failed), and what :meth:`_check_open` raises otherwise.
        """
        if self._state is OPENING:
            started = self._now()
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                while self._state is OPENING:
                    assert self._opened is not None
                    await self._opened.wait()
            if self._state is OPENING:
                raise PoolTimeout(
                    f"pool {self.name!r}: no connection within {timeout:g}s "
                    f"(the pool is still opening; {self._planner.describe()})"
                )
            if self._state is NEW:
                raise RuntimeError(
                    f"pool {self.name!r} did not open: its open() was cancelled or failed "
                    "while this acquire waited for it"
                )
            if timeout is not None:
                timeout -= self._now() - started
        self._check_open()
        return timeout

    def _forked_error(self) -> RuntimeError:
        return forked_error(
            f"pool {self.name!r}",
            self._pid,
            "open the pool after the fork (e.g. in a gunicorn post_fork hook or at worker "
            "startup); in this process only close() or terminate() it, which leaves the "
            "parent's connections alone",
        )

    def _forked(self) -> None:
        """In a forked child (see ``_fork.py``): give up everything, with no I/O.

        The connections, the fleet lease and the background tasks are the
        parent's: the sockets are shared with it, and so is the epoll set of
        its event loop. The planner forgets every slot (a connection borrowed
        before the fork is not given back from here), each connection is
        handed to the connector's optional ``abandon`` (which makes it unusable
        without I/O) and kept referenced for the life of the process, so that
        no driver cleanup-on-collect runs on it; the pool then refuses every
        use, and :meth:`close` / :meth:`terminate` only mark it closed.
        """
        if self._state in (NEW, CLOSED, FORKED):
            return
        self._state = FORKED
        planner = self._planner
        abandon = getattr(self._connector, "abandon", None)
        if not planner.closed:
            planner.close(self._stats_now())
        planner.take_plan()  # wakes and closes for the parent's tasks: nothing runs them here
        for slot in planner.remaining():
            if slot.conn is not None:
                inherit(slot.conn)
                if abandon is not None:
                    abandon(slot.conn)
            planner.forget(slot)

    async def _acquire_registered(self, timeout: float | None) -> ConnT:
        """``await pool.acquire()``: borrow and remember it for :meth:`release`."""
        slot = await self._acquire_slot(timeout)
        slot.owner = self._current_task()
        conn: ConnT = slot.conn
        self._in_use[id(conn)] = slot
        return conn

    async def _acquire_slot(self, timeout: float | None, priority: bool = False) -> Slot:
        """Borrow a slot: lent at once when one is idle and no one waits, else through a wait.

        The hot path: one clock read, one cancel check, one planner call, and
        no yield. (Borrow.__aenter__ inlines this same step, to save a
        coroutine layer.) Invariants: the cancel check comes before any state
        changes, so a caller whose scope is cancelled raises holding nothing;
        a caller that goes on to wait (or ping) yields there.
        """
        planner = self._planner
        now = self._now()
        if (
            self._state is OPEN
            and not planner.waiters
            and not self._cancel_due(self._current_task(), now)
        ):
            slot = planner.acquire(now)
            if planner.pending is not None:  # no call when there is nothing (the hot path)
                self._flush()
            if slot is not None and not slot.ping and not self._is_closed(slot.conn):
                return slot
            return await self._acquire_slow(slot, now, timeout, priority)
        return await self._acquire_checkpoint(timeout, priority)

    async def _acquire_checkpoint(self, timeout: float | None, priority: bool = False) -> Slot:
        """An acquire that cannot lend at once without looking further: checkpoint, then borrow.

        Callers queue already (it queues behind them: the wait is its
        checkpoint), the pool is not open (it waits for an open in progress,
        or raises), or the running task's cancellation is due (the checkpoint
        raises it, before any state changes).
        """
        if self._planner.waiters and not priority and self._queues_anyway():
            return await self._acquire_slow(None, self._now(), timeout)  # the wait: a checkpoint
        await self._sleep(0)  # cancel point and schedule point, before any state change
        if self._state is not OPEN:
            timeout = await self._wait_open(timeout)
        planner = self._planner
        now = self._now()
        slot = planner.acquire(now)
        if planner.pending is not None:
            self._flush()
        if slot is not None and not slot.ping and not self._is_closed(slot.conn):
            return slot
        return await self._acquire_slow(slot, now, timeout, priority)

    def _queues_anyway(self) -> bool:
        """Whether an acquire now must queue: callers wait already, and there is room to wait.

        Then the wait itself is the acquire's checkpoint. Not when the pool is
        not open, or ``max_waiting`` would refuse the caller: those raise after
        the usual checkpoint.
        """
        waiting = len(self._planner.waiters)
        if not waiting or self._state is not OPEN:
            return False
        max_waiting = self.settings.max_waiting
        return max_waiting is None or waiting < max_waiting

    async def _acquire_slow(
        self, slot: Slot | None, now: float, timeout: float | None, priority: bool = False
    ) -> Slot:
        """Wait for a slot and/or check it; loop until a healthy one or the deadline.

        A connection the driver already knows is closed is evicted without a
        ping (no caller ever gets one); one due for a ping is pinged.
        """
        planner = self._planner
        deadline = math.inf if timeout is None else now + timeout
        while True:
            if slot is None:
                left = None if timeout is None else deadline - now
                slot = await self._wait(now, left, priority, timeout)
                now = self._now()  # the ping decision is about now, not when we queued
            if self._is_closed(slot.conn):
                planner.pinged(slot, False, self._now())
                self._flush()
            elif not planner.should_ping(slot, now) or await self._ping(slot, deadline):
                return slot
            now = self._now()
            if now >= deadline:
                self._raise_timeout(timeout)
            slot = planner.acquire(now)
            if planner.pending is not None:  # no call when there is nothing (a hot path)
                self._flush()

    async def _wait(
        self, now: float, timeout: float | None, priority: bool = False, whole: float | None = None
    ) -> Slot:
        # ``whole``: the caller's own timeout, for the message (``timeout`` may be what is left).
        planner = self._planner
        w = planner.enqueue(now, timeout, priority)
        if (
            not priority
            and self._fleet_demand is not None
            and planner.budget_used + planner.n_connecting >= planner.limit
        ):
            self._fleet_demand.set()  # a caller queues at the limit: the fleet should know
        event = w.token = self._waker()
        if planner.pending is not None:  # no call when there is nothing (a hot path)
            self._flush()
        try:
            await event.wait()
        except BaseException:
            # Cancelled (or worse) while queued: leave the queue, and pass on a
            # slot that was already reserved for us. No await here.
            planner.cancel(w, self._now())
            if planner.pending is not None:  # no call when there is nothing (a hot path)
                self._flush()
            raise
        outcome = w.outcome
        if outcome is _HANDED:
            return planner.claim(w, self._now())
        if outcome is Outcome.TIMEOUT:
            self._raise_timeout(timeout if whole is None else whole)
        if outcome is Outcome.CONNECT_FAILED and planner.last_connect_error is not None:
            raise planner.last_connect_error
        raise PoolClosed(f"pool {self.name!r} closed while waiting ({planner.describe()})")

    def _raise_timeout(self, timeout: float | None) -> None:
        planner = self._planner
        msg = f"pool {self.name!r}: no connection within {timeout:g}s ({planner.describe()})"
        held = self._held_by_current_task()
        if held:
            msg += (
                f"; this task already holds {held} connection{'s' if held > 1 else ''} "
                "from this pool: a nested acquire waits for itself when the pool is full "
                "(pass the connection down instead, or raise max_connections)"
            )
        if planner.failures and planner.last_connect_error is not None:
            err = planner.last_connect_error
            raise PoolTimeout(f"{msg}; connects are failing: {type(err).__name__}: {err}") from err
        raise PoolTimeout(msg)

    def _held_by_current_task(self) -> int:
        """How many connections of this pool the running task has borrowed (slow path only)."""
        me = self._current_task()
        return self._planner.borrowed_by(me)

    async def _ping(self, slot: Slot, deadline: float = math.inf) -> bool:
        """Ping a freshly borrowed slot; on failure it is evicted and ``False`` returned.

        The ping is bounded by ``connect_timeout`` and by the caller's
        ``deadline``: one that gets no answer in time fails like any other, so
        a connection gone silent (a network partition) cannot hang a caller.
        """
        planner = self._planner
        bound = min(self.settings.connect_timeout, deadline - self._now())
        try:
            with anyio.move_on_after(bound) as scope:
                await self._connector.ping(slot.conn)
            if scope.cancelled_caught:
                raise TimeoutError(f"no answer to the health check within {bound:g}s")
        except Exception as exc:
            logger.info("pool %r: connection failed its health check: %r", self.name, exc)
            planner.pinged(slot, False, self._now())
            self._flush()
            return False
        except BaseException:
            # Cancelled mid-ping: the connection's state is unknown, so evict it.
            planner.release(slot, self._now(), broken=True)
            self._flush()
            raise
        planner.pinged(slot, True, self._now())
        return True

    # ------------------------------------------------------------------ release

    def release(self, conn: ConnT, *, exc: BaseException | None = None) -> None:
        """Give back a connection borrowed with ``await pool.acquire()`` or :meth:`acquire_nowait`.

        ``exc`` is the error the borrower met, if any: a connection-class error
        evicts the connection, as when it leaves ``async with pool.acquire()``.
        Releasing one that is not borrowed that way from this pool (released
        twice, from another pool, or borrowed with ``async with``, which gives
        it back itself) raises :class:`RuntimeError`.

        Any task may give back a borrow (a hand-off: borrow in one task, release
        in another). The pool only sees the connection, so one case is read as
        a stale release: a task that borrowed this connection and gave it back
        itself, releasing it again while another task holds the very next
        borrow of it. That raises :class:`RuntimeError` and the other task's
        borrow stands; hand such a connection back from the task that borrowed
        it. A stale release the pool cannot tell from a hand-off (another borrow
        came between) still ends the current borrow: release each borrow once.
        """
        slot = self._borrow_of(conn, "released")
        del self._in_use[id(conn)]
        self._note_return(slot)
        if slot.state is _IN_USE:  # else terminated by a forced close
            self._release_slot(slot, exc)

    def retire(self, conn: ConnT) -> None:
        """Close ``conn`` (borrowed with ``await pool.acquire()``) when it comes back.

        For connections that must not be reused, e.g. after a number of
        queries; ``async with pool.acquire() as conn`` borrows use the context
        manager's own ``retire()``. A stale call (see :meth:`release`) raises
        :class:`RuntimeError` and leaves the current borrow alone.
        """
        self._planner.retire(self._borrow_of(conn, "retired"))

    def _borrow_of(self, conn: ConnT, what: str) -> Slot:
        """The slot ``conn`` is borrowed in, if the running task may end that borrow.

        Raises :class:`RuntimeError` if it is not borrowed from this pool with
        ``await pool.acquire()`` or :meth:`acquire_nowait`, or for a stale
        release (see :meth:`release`).
        """
        slot = self._in_use.get(id(conn))
        if slot is None or slot.conn is not conn:
            raise RuntimeError(
                f"connection {conn!r} is not borrowed from pool {self.name!r} "
                "(released twice, or from another pool)"
            )
        if self._stale(slot):
            raise RuntimeError(
                f"pool {self.name!r}: connection {conn!r} {what} after this task gave it back, "
                "and another task has borrowed it since (that borrow stands)"
            )
        return slot

    def _stale(self, slot: Slot) -> bool:
        """Whether the running task gave back the borrow before this one of ``slot`` itself.

        Invariants: ``slot.owner`` is the task that made the current borrow;
        ``slot.returned`` is ``(lease, task)`` when ``task`` made borrow
        ``lease`` and gave it back itself. The running task is then not the
        owner, and borrowed the slot just before the owner did: it is taken to
        be releasing its own, finished borrow (see :meth:`release`).
        """
        me = self._current_task()
        return slot.owner != me and slot.returned == (slot.lease - 1, me)

    def _note_return(self, slot: Slot) -> None:
        """Note, for :meth:`_stale`, that the running task gives back ``slot``'s borrow now."""
        me = self._current_task()
        slot.returned = (slot.lease, me) if slot.owner == me else None

    def _release_slot(self, slot: Slot, exc: BaseException | None, clean: bool = False) -> None:
        conn = slot.conn
        connector = self._connector
        broken = self._closed_on_return(conn) or (exc is not None and connector.is_disconnect(exc))
        # Asked in "none" mode too: a connector may know this connection must be
        # cleaned anyway (a query cancelled mid-flight inside a transaction).
        reset = not broken and not clean and connector.needs_reset(conn, self._reset_mode)
        planner = self._planner
        planner.release(slot, self._now(), broken, reset)
        if planner.pending is not None:  # no call when there is nothing (the hot path)
            self._flush()

    # ------------------------------------------------------------------ plans

    def _flush(self) -> None:
        """Carry out what the planner decided since the last flush: the one place plans run.

        Connects, closes and resets are spawned (resets go to the reset
        workers), waiters and the ticker are woken; with the pool closed, the
        drained event is set once nothing is left. Every event into the
        planner is followed by a flush, with no await in between (the hot
        paths skip the call when ``planner.pending`` is ``None``).
        """
        planner = self._planner
        if planner.pending is None:
            if planner.closed:
                self._check_drained()
            return
        plan = planner.take_plan()
        assert plan is not None
        tg = self._runner.tg
        if tg is None:
            # No runner (never opened, or already stopped): nothing can run in the
            # background, so close what must be closed right away.
            for slot in plan.close:
                if slot.conn is not None:
                    self._terminate(slot.conn)
                self._planner.closed_conn(slot, self._now())
            for slot in plan.connect:
                self._planner.connect_failed(slot, None, self._now(), 0.0)
            for slot in plan.reset:
                self._planner.reset_done(slot, False, self._now())
        else:
            for slot in plan.connect:
                tg.start_soon(self._connect, slot)
            for slot in plan.close:
                tg.start_soon(self._close_slot, slot)
            for slot in plan.reset:
                self._reset_queue.append(slot)
                if self._reset_parked:
                    self._reset_parked.pop().set()
                else:
                    tg.start_soon(self._reset_worker)
        for w in plan.wake:
            w.token.set()
        if plan.wake_ticker and self._tick_event is not None:
            self._tick_event.set()
        if self._planner.closed:
            self._check_drained()
            if self._ready is not None:
                self._ready.set()

    async def _ticker(self) -> None:
        planner = self._planner
        while True:
            self._tick_event = event = anyio.Event()
            now = self._now()
            planner.tick(now)
            plan = planner.pending
            if plan is not None:
                plan.wake_ticker = False  # tick() has just set next_wake itself
                if plan.saturated_for:
                    self._warn_saturated(plan.saturated_for, now)
            self._flush()
            with anyio.CancelScope(deadline=planner.next_wake):
                await event.wait()

    def _warn_saturated(self, seconds: float, now: float) -> None:
        p = self._planner
        logger.warning(
            "pool %r saturated: no connection free for %.1fs while callers queue "
            "(in use %d of limit %d, waiting %d, oldest waiting %.1fs); raise "
            "max_connections or total_max_connections, or look for slow transactions "
            "holding connections",
            self.name,
            seconds,
            p.n_in_use + p.n_reserved,
            p.limit,
            p.n_waiting,
            p.oldest_waiter_age(now),
        )

    async def _connect(self, slot: Slot) -> None:
        planner = self._planner
        started = self._now()
        try:
            with anyio.move_on_after(self.settings.connect_timeout) as scope:
                conn = await self._connector.connect()
            if scope.cancelled_caught:  # the cause waiters see: say what timed out
                raise TimeoutError(
                    f"connect timed out after {self.settings.connect_timeout:g}s (connect_timeout)"
                )
        except Exception as exc:
            if slot.state is SlotState.CONNECTING:
                planner.connect_failed(slot, exc, self._now(), random.random())
            if self._ready is not None:
                self._ready.set()
            if planner.failures <= 1:
                logger.warning("pool %r: connect failed: %r", self.name, exc)
            else:
                logger.debug("pool %r: connect failed again: %r", self.name, exc)
        except BaseException:
            if slot.state is SlotState.CONNECTING:
                planner.connect_failed(slot, None, self._now(), 0.0)
            raise
        else:
            if slot.state is not SlotState.CONNECTING:  # forgotten by a forced close
                self._terminate(conn)
                return
            now = self._now()
            self._connect_time += now - started
            for sink in planner.sinks:  # metrics attached (see Planner.observe)
                sink.create(now - started)
            planner.connected(slot, conn, now, random.random())
            if self._ready is not None:
                self._ready.set()
        # Even with nothing to do: a connect ending after close() may be the last
        # thing close() waits for (_flush then sets the drained event).
        self._flush()

    async def _close_slot(self, slot: Slot) -> None:
        conn = slot.conn
        with anyio.CancelScope(shield=True):
            if conn is not None:
                await self._close_conn(conn)
            if slot.state is SlotState.CLOSING:
                self._planner.closed_conn(slot, self._now())
                self._flush()

    async def _close_conn(self, conn: ConnT) -> None:
        """Close gracefully within ``close_timeout``, else terminate. Never raises."""
        with anyio.move_on_after(self.settings.close_timeout) as scope:
            try:
                await self._connector.close(conn)
            except Exception as exc:
                logger.debug("pool %r: close failed, terminating: %r", self.name, exc)
                self._terminate(conn)
        if scope.cancelled_caught:
            self._terminate(conn)

    def _terminate(self, conn: ConnT) -> None:
        try:
            self._connector.terminate(conn)
        except Exception as exc:  # pragma: no cover - a connector bug
            logger.debug("pool %r: terminate failed: %r", self.name, exc)

    async def _reset_worker(self) -> None:
        """Run queued resets; between them, wait parked to be woken for the next one.

        Invariants: each slot queued either woke a parked worker or started a
        new one, so there are at least as many workers running as slots queued,
        and resets run as concurrently as with one task per reset (what this
        replaces: a task spawn costs more than waking a parked one). A worker
        exits instead of parking when as many are parked as the pool has
        connections. A parked worker cancelled (the pool's runner stopping)
        takes itself off the parked list.
        """
        queue = self._reset_queue
        parked = self._reset_parked
        while True:
            while queue:
                await self._reset(queue.popleft())
            if len(parked) >= self._planner.size:
                return
            waker = self._waker()
            parked.append(waker)
            try:
                await waker.wait()
            except BaseException:
                with contextlib.suppress(ValueError):  # not there if it was woken
                    parked.remove(waker)
                raise

    async def _reset(self, slot: Slot) -> None:
        planner = self._planner
        ok = False
        timeout = self.settings.close_timeout
        try:
            done: bool | None = False
            nowait = self._reset_nowait
            if nowait is not None:
                done = nowait(slot.conn, self._reset_mode)
                if done is None:  # not known yet: one pass of the loop, then ask again
                    await self._sleep(0)
                    done = nowait(slot.conn, self._reset_mode)
            if done:
                ok = True  # no I/O was needed: no deadline to set up
            else:
                # A bare scope, not fail_after(): a third cheaper, and this runs per release.
                with anyio.CancelScope(deadline=self._now() + timeout) as scope:
                    await self._connector.reset(slot.conn, self._reset_mode)
                if scope.cancelled_caught:  # only the deadline cancels this scope
                    raise TimeoutError(f"reset timed out after {timeout:g}s (close_timeout)")
                ok = True
        except Exception as exc:
            logger.warning("pool %r: error resetting connection, discarded: %r", self.name, exc)
        finally:
            if slot.state is _RESETTING:
                planner.reset_done(slot, ok, self._now())
                self._flush()

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, timeout: float | None = _DEFAULT, readonly: bool = False
    ) -> AsyncIterator[ConnT]:
        """Borrow a connection inside a transaction: ``async with pool.transaction() as conn``.

        BEGIN on entry; COMMIT when the block ends normally, ROLLBACK when it
        raises; then the connection goes back. This is the transaction-scoped
        use that Hyperdrive's "transaction pooling mode" describes: hold a
        connection only as long as one transaction. ``readonly=True`` makes it
        a read-only transaction: the server refuses writes in it.
        """
        async with self.acquire(timeout=timeout) as conn:
            tx = (
                self._connector.transaction(conn, readonly=True)
                if readonly
                else self._connector.transaction(conn)
            )
            async with tx:
                yield conn

    def terminate(self) -> None:
        """Close the pool at once: terminate every connection, borrowed or not, without waiting.

        Queued callers get :class:`~elasticpool.PoolClosed`. Use :meth:`close`
        for a graceful shutdown.
        """
        if self._state is FORKED:  # the parent's: nothing to terminate here
            self._state = CLOSED
            return
        if self._state in (NEW, CLOSED):
            self._state = CLOSED
            self._planner.close(self._now())
            return
        planner = self._planner
        planner.close(self._now())
        plan = planner.take_plan()
        if plan is not None:
            for w in plan.wake:
                w.token.set()
        for slot in planner.remaining():
            if slot.conn is not None:
                self._terminate(slot.conn)
            planner.forget(slot)
        self._state = CLOSED
        if self._membership_scope is not None:  # its lease expires after its ttl
            self._membership_scope.cancel()
        self._runner.stop_nowait()

    async def check(self) -> None:
        """Ping every idle connection now and close those that fail.

        Connections are taken out of the idle set one at a time, so callers
        are served meanwhile.
        """
        self._check_open()
        planner = self._planner
        for slot in planner.idle_slots():
            if not planner.take_for_check(slot, self._now()):
                continue  # borrowed meanwhile, or callers are waiting: they come first
            if self._is_closed(slot.conn):
                planner.pinged(slot, False, self._now())
                self._flush()
            elif await self._ping(slot):
                self._release_slot(slot, None)

    # ------------------------------------------------------------------ fleet

    def fleet(self) -> FleetStatus:
        """This pool's view of its fleet: members, shares, holdings, demand, its limit.

        Without a membership it is a fleet of one whose share is the whole
        limit (``fleet_total`` is ``None`` when only ``max_connections`` is set).
        """
        if self.membership is not None:
            return self.membership.status(self._port)
        r = resolve_limit(self.settings, allow_small_total=self.settings.allow_small_total)
        return FleetStatus(
            pool=self.name,
            instance="",
            membership="none",
            limit=self._planner.limit,
            share=r.share,
            fleet_total=r.fleet_total,
            source=r.source,
        )

    async def set_fleet_total(self, total: int | None) -> None:
        """Change ``total_max_connections`` for the whole fleet, live (``None``: back to settings).

        Needs a membership that coordinates (:class:`~elasticpool.PostgresMembership`):
        every instance adopts the new total at its next heartbeat.
        """
        set_total = getattr(self.membership, "set_total", None)
        if set_total is None:
            raise RuntimeError(
                f"pool {self.name!r} has no coordinating membership: "
                "use PostgresMembership to change the fleet total live"
            )
        self._check_open()
        await set_total(self._port, total)

    @contextlib.asynccontextmanager
    async def _coordination(
        self, wait_own: float = 0.5, *, own: bool = True
    ) -> AsyncIterator[Coordination]:
        """A connection for one coordination statement, counted inside the budget if it can be.

        One of the pool's own: an idle one, else the next to come back (ahead of
        every caller), else a new one within the limit. Only when the pool's
        limit is 0, or none of its own comes back within ``wait_own`` seconds,
        or it is closing (or ``own`` is false), is a new, *extra* connection
        opened. It is closed on exit unless :meth:`Coordination.keep` took it
        (the pool adopted it). ``_extras`` holds it meanwhile.
        """
        planner = self._planner
        slot: Slot | None = None
        if own and self._state is OPEN and planner.limit > 0:
            try:
                slot = await self._acquire_slot(wait_own, priority=True)
            except (PoolTimeout, PoolClosed):  # all stay borrowed, or closing
                slot = None
        if slot is None:
            with anyio.fail_after(self.settings.connect_timeout):
                conn = await self._connector.connect()
            co = Coordination(conn, extra=True)
            self._extras[conn] = None
            try:
                yield co
            finally:
                if co.kept:
                    del self._extras[conn]
                else:
                    with anyio.CancelScope(shield=True):
                        await self._close_conn(conn)
                    del self._extras[conn]
            return
        slot.owner = None  # the pool's own borrow: no caller holds it
        lease = slot.lease
        idle_since = max(slot.idle_since, slot.handed_at)  # unused since (when it was idle)
        self._coordinating = slot
        ok = False
        try:
            yield Coordination(slot.conn, extra=False)
            ok = True
        finally:
            self._coordinating = None
            if slot.lease == lease and slot.state is SlotState.IN_USE:
                if ok:  # committed: reset only if a transaction was somehow left open
                    conn = slot.conn
                    broken = self._is_closed(conn)
                    dirty = not broken and self._connector.needs_reset(conn, "rollback")
                    planner.release(slot, self._now(), broken, dirty, idle_since)
                    self._flush()
                else:
                    self._release_slot(slot, sys.exc_info()[1])

    def _apply_grant(self, limit: int, adopt: Any) -> bool:
        """:meth:`Freeze.apply`'s work: the heartbeat's grant as the limit now, no await."""
        p = self._planner
        if p.closed:
            return False
        slot = p.resize(limit, self._now(), adopt=adopt, jitter=random.random())
        self._flush()
        return slot is not None

    @contextlib.asynccontextmanager
    async def _frozen(self) -> AsyncIterator[Freeze]:
        """Hold the pool at its current size for a heartbeat; yield what it reports.

        While the heartbeat's transaction runs the pool must not grow beyond
        what it reports. The membership applies its new grant with
        :meth:`Freeze.apply`, synchronously, as soon as the transaction has
        committed. If the heartbeat fails before that, the limit goes back to
        what it was, or lower when the outcome may be committed but is not
        known (the reply lost or late): to the new grant if it was computed,
        else to the size it reported. An extra connection the heartbeat runs
        on is not reported: it is taken in only if the grant has room for it
        (see :meth:`Freeze.apply`), and closed otherwise.
        """
        p = self._planner
        coordinating = 1 if self._coordinating is not None else 0
        now = self._now()
        demand, self._fleet_busy = p.fleet_demand(self._fleet_busy, now - self._fleet_since, now)
        self._fleet_since = now
        freeze = Freeze(
            self._apply_grant,
            demand=max(0, demand - coordinating),
            holding=len(p.remaining()),
            before=p.limit,
        )
        if p.size < p.limit:
            p.resize(p.size, self._now())
            self._flush()
        try:
            yield freeze
        except BaseException:
            back = freeze.fallback()
            if back is not None and not p.closed and p.limit != back:
                p.resize(back, self._now())
                self._flush()
            raise

    # ------------------------------------------------------------------ limits

    async def resize(self, max_connections: int, min_connections: int | None = None) -> None:
        """Change this pool's limit now, with trio ``CapacityLimiter.total_tokens`` semantics.

        Raising it starts connects for queued callers at once. Lowering it
        closes idle surplus now and busy surplus as it comes back; a borrowed
        connection is never revoked, so the pool can stay above the new limit
        until then. ``min_connections`` changes the warm floor as well.

        ``max_connections=0`` pauses the pool: callers queue (and time out at
        ``pool_timeout``) until the limit is raised again. The fleet layer uses
        it for a member that is granted nothing while the budget is taken.
        On a closed pool it checks its arguments and changes nothing that
        matters: no connection opens again.
        """
        if self._state is FORKED:
            raise self._forked_error()
        planner = self._planner
        planner.resize(max_connections, self._now(), min_connections)
        self._flush()
        await checkpoint()

    async def expire_connections(self) -> None:
        """Retire every current connection: idle ones now, borrowed ones as they come back."""
        if self._state is FORKED:
            raise self._forked_error()
        planner = self._planner
        planner.expire_all(self._now())
        self._flush()
        await checkpoint()

    # ------------------------------------------------------------------ inspection

    def _stats_now(self) -> float:
        try:
            return self._now()
        except RuntimeError:
            # Called from another thread (a metrics exporter's HTTP server) on
            # trio, whose clock only answers inside the run: use the same
            # monotonic clock, shifted by the offset measured at open().
            return time.monotonic() + self._clock_offset

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's gauges and counters.

        It may be called from another thread (metrics exporters do): every
        field is read without awaiting, and a concurrent change can at worst
        make the snapshot mix two adjacent moments.
        """
        p = self._planner
        closed_for = p.closed_for
        return PoolStats(
            name=self.name,
            size=p.size,
            idle=p.n_idle,
            in_use=p.n_in_use + p.n_reserved,
            connecting=p.n_connecting,
            resetting=p.n_resetting,
            closing=p.n_closing,
            waiting=p.n_waiting,
            min=p.floor,
            max=p.limit,
            oldest_waiter_age=p.oldest_waiter_age(self._stats_now()),
            acquires=p.acquires,
            timeouts=p.timeouts,
            connects=p.connects,
            connect_errors=p.connect_errors,
            closed_idle=closed_for[CloseReason.IDLE],
            closed_lifetime=closed_for[CloseReason.LIFETIME],
            closed_broken=closed_for[CloseReason.BROKEN],
            closed_resize=closed_for[CloseReason.RESIZE],
            total_wait_time=p.wait_time,
            total_usage_time=p.usage_time,
            waits=p.queued,
            returned_broken=p.returned_broken,
            total_connect_time=self._connect_time,
        )

    # ------------------------------------------------------------------ hooks
    #
    # For adapters and integrations (the drop-in faces, wrap(), RoutingPool, the
    # metrics exporters): cheap live readings and the few levers they need, so
    # that nothing outside this module reaches into the pool or its planner.

    @property
    def connector(self) -> Connector[ConnT]:
        """The :class:`~elasticpool.Connector` this pool opens its connections with."""
        return self._connector

    @property
    def limit(self) -> int:
        """The limit now: what :meth:`resize` (or the fleet) set last; ``stats().max``."""
        return self._planner.limit

    @property
    def in_use(self) -> int:
        """Connections borrowed now (handed to a waiter included): ``stats().in_use``, cheaply.

        Like ``CapacityLimiter.borrowed_tokens``: read it on a hot path where
        building a :meth:`stats` snapshot would cost more than the decision.
        """
        p = self._planner
        return p.n_in_use + p.n_reserved

    def set_reuse_order(self, *, lru: bool) -> None:
        """Which idle connection a borrow takes: least (``lru=True``) or most recently used.

        Most recently used (the default) lets the surplus sit idle and close
        after ``idle_timeout``; least recently used uses every connection in
        turn, as psycopg_pool does (its drop-in face sets it for a pool that
        cannot shrink, ``min_size == max_size``).
        """
        self._planner.lru = lru

    @property
    def lent(self) -> int:
        """Connections lent to callers now: :attr:`in_use` less a fleet heartbeat's own borrow.

        What a face's ``close()`` waits for: the heartbeat's statement is the
        pool's own business and ends with the pool.
        """
        return self.in_use - (1 if self._coordinating is not None else 0)

    @property
    def waiting(self) -> int:
        """Callers queued now: ``stats().waiting``, cheaply."""
        return self._planner.n_waiting

    @property
    def connect_errors(self) -> int:
        """Connects that failed so far: ``stats().connect_errors``, cheaply."""
        return self._planner.connect_errors

    @property
    def last_connect_error(self) -> BaseException | None:
        """The error of the last connect that failed, or ``None`` if none has."""
        return self._planner.last_connect_error

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the pool reads, in seconds: the event loop's, bound when it opened.

        Cheaper to call than ``anyio.current_time()``, with the same answer
        on the pool's event loop; before :meth:`open` it is
        ``anyio.current_time`` itself.
        """
        return self._now

    def observe(self, sink: TimingSink) -> None:
        """Report every borrow's wait and use time, and every connect's, to ``sink`` from now on.

        ``sink`` has ``wait(seconds)``, ``use(seconds)`` and
        ``create(seconds)`` methods (a ``TimingSink``), called synchronously
        on the pool's event loop: they must be quick and must not raise.
        Until one is attached the pool does no timing work at all. Observing
        with the same sink twice is a no-op. The metrics exporters use it.
        """
        self._planner.observe(sink)

    def unobserve(self, sink: TimingSink) -> None:
        """Stop reporting to ``sink`` (no-op if it is not attached)."""
        self._planner.unobserve(sink)

    def check_release(self, conn: ConnT, *, what: str = "released") -> None:
        """Raise :class:`RuntimeError` unless :meth:`release` would take ``conn`` back now.

        For adapters that must refuse a give-back before they touch the
        connection; ``what`` is the word the message uses for the give-back.
        The checks and messages are :meth:`release`'s (not borrowed with
        ``await pool.acquire()`` from this pool, or a stale release).
        """
        self._borrow_of(conn, what)

    def _set_limit_before_open(self, limit: int) -> None:
        """Set the limit of a pool that was never opened, planning nothing (for subclasses).

        Used by a subclass's constructor that must cap the limit computed
        from the settings (the wrapped pool: an asyncpg pool cannot grow).
        """
        assert self._state is NEW, "only before open()"
        assert not self._planner.remaining(), "only while no slot exists"
        self._planner.limit = limit

    def __repr__(self) -> str:
        p = self._planner
        state = "" if self._state is OPEN else f" {self._state.value}"
        resetting = f", resetting {p.n_resetting}" if p.n_resetting else ""
        return (
            f"<Pool {self.name!r}{state} [in use {p.n_in_use + p.n_reserved}, idle {p.n_idle}, "
            f"connecting {p.n_connecting}{resetting} | waiting {p.n_waiting}]>"
        )


class _Port:
    """The pool as its membership sees it: :class:`~elasticpool.fleet.MemberPort`.

    The fleet package calls only this (never the shell's internals), so
    another shell can be a member by implementing the same port.
    """

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool[Any]) -> None:
        self._pool = pool

    @property
    def name(self) -> str:
        return self._pool.name

    @property
    def settings(self) -> PoolSettings:
        return self._pool.settings

    @property
    def connector(self) -> Connector[Any]:
        return self._pool._connector

    def now(self) -> float:
        return self._pool._now()

    def stats(self) -> PoolStats:
        return self._pool.stats()

    async def resize(self, max_connections: int) -> None:
        await self._pool.resize(max_connections)

    def coordination(
        self, wait_own: float = 0.5, *, own: bool = True
    ) -> contextlib.AbstractAsyncContextManager[Coordination]:
        return self._pool._coordination(wait_own, own=own)

    def frozen(self) -> contextlib.AbstractAsyncContextManager[Freeze]:
        return self._pool._frozen()

    def demand_signal(self) -> anyio.Event:
        self._pool._fleet_demand = event = anyio.Event()
        return event

    async def close_connection(self, conn: Any) -> None:
        with anyio.CancelScope(shield=True):
            await self._pool._close_conn(conn)

    def __repr__(self) -> str:
        return f"<member port of {self._pool!r}>"
