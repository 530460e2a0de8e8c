"""The threaded shell: the same planner as :class:`~elasticpool.Pool`, carried out by threads.

Everything that decides lives in ``_state.Planner``; this module only reads
the clock (``time.monotonic``, passed to the planner as ``now``), blocks,
runs background work on threads and wakes waiting threads. One lock guards
the planner: each event is one call into it under the lock, the plan it left
is taken under the same lock, and carried out after the lock is released,
so no I/O ever happens while pool state is held.

Threads of a pool (all daemon threads, named ``elasticpool-<name>-…``):

* a *ticker*, asleep until the planner's next deadline (a waiter's
  timeout, an idle connection's ``idle_timeout``, a lifetime, the end of a
  connect backoff) or until an event brings that deadline closer;
* *workers* for connects, closes and resets, started as jobs arrive and
  parked between jobs (a parked worker takes the next job; one parked longer
  than a few seconds exits);
* with a fleet membership, one thread running the membership on an event
  loop of its own (see ``_sync_fleet``).

A waiting caller blocks on a lock of its own, released by whichever thread
hands it a connection (or times it out, or closes the pool): the hand-off
happens at wake time, in the planner, before the caller runs again.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._errors import PoolClosed, PoolTimeout, TooManyWaiters
from ._fork import forked_error, inherit, watch
from ._lifecycle import CLOSED as _CLOSED
from ._lifecycle import CLOSING as _CLOSING
from ._lifecycle import FORKED as _FORKED
from ._lifecycle import NEW as _NEW
from ._lifecycle import OPEN as _OPEN
from ._lifecycle import OPENING as _OPENING
from ._lifecycle import Lifecycle
from ._limits import resolve_limit
from ._settings import PoolSettings
from ._sql import SERVER_LIMITS_SQL
from ._state import CloseReason, Outcome, Plan, Planner, Slot, SlotState, Waiter
from ._stats import PoolStats
from ._sync_connector import SyncConnector
from ._sync_fleet import FleetLoop, SyncPort
from ._validate import check_name, check_seconds
from .fleet._base import FleetStatus, Membership

__all__ = ["SyncPool"]

logger = logging.getLogger("elasticpool")

ConnT = TypeVar("ConnT")

_DEFAULT: Any = object()

_monotonic = time.monotonic
_get_ident = threading.get_ident
_INF = math.inf
_TIMEOUT_MAX = threading.TIMEOUT_MAX

# Enum members as module constants: on Python 3.11 each ``SlotState.X`` is an attribute
# lookup through the enum's metaclass (``EnumType.__getattr__``), about five times the
# cost of a global, and the hot paths use them on every borrow.
_IN_USE = SlotState.IN_USE
_S_CLOSING = SlotState.CLOSING
_S_CONNECTING = SlotState.CONNECTING
_S_RESETTING = SlotState.RESETTING
_HANDED = Outcome.HANDED
_CONNECT_FAILED = Outcome.CONNECT_FAILED


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

_WORKER_KEEPALIVE = 5.0
"""Seconds a parked worker thread waits for another job before it exits."""

_PROBE_AFTER = 0.01
"""Seconds idle from which a connection leaving the idle set gets the full ``is_closed`` check."""

_LONGEST_SLEEP = 3600.0
"""The ticker wakes at least this often, whatever the planner says."""


class _Waker:
    """A one-shot event for one waiting thread: a lock taken at birth, released by ``set``.

    The cheapest thing a thread can block on (``threading.Event`` is a
    condition variable on top of such a lock). ``set`` is called at most once
    by the planner's wake list; a second call is ignored.
    """

    __slots__ = ("_lock", "deadline", "slot")

    def __init__(self, deadline: float) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.deadline = deadline
        """When the waiting thread gives up (``inf``: never); it times itself out."""
        self.slot: Slot | None = None
        """The slot claimed for the waiting thread when it was handed one (see ``_take``)."""

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def wait(self, timeout: float | None) -> bool:
        """Block until :meth:`set` (``True``) or ``timeout`` seconds (``None``: no bound)."""
        # (Positional arguments: keywords cost a parse per call, on the hot path.)
        if timeout is None:
            return self._lock.acquire()
        if timeout <= 0:
            return self._lock.acquire(False)
        return self._lock.acquire(True, min(timeout, _TIMEOUT_MAX))


class _Workers:
    """Daemon threads for background jobs: one per job in flight, parked between jobs.

    Invariants: every job submitted either woke a parked worker or started a
    new one, so jobs never wait for each other (a slow connect does not hold
    up a reset); a worker exits after :data:`_WORKER_KEEPALIVE` seconds parked,
    or when stopped with nothing left to run. Nothing submitted is dropped:
    after :meth:`stop`, a job still gets a thread of its own.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._parked: list[_Waker] = []
        self._running = 0
        self._stopping = False
        self._idle = threading.Condition(self._lock)

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._jobs.append(job)
            if self._parked:
                self._parked.pop().set()
                return
            self._running += 1
        try:
            threading.Thread(target=self._run, name=self._name, daemon=True).start()
        except RuntimeError:  # no thread to be had (interpreter shutting down): run it here
            with self._lock:
                self._running -= 1
            self._run_inline()

    def _run_inline(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            _run_job(job)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._jobs:
                    job: Callable[[], None] | None = self._jobs.popleft()
                elif self._stopping:
                    self._exit()
                    return
                else:
                    job = None
                    waker = _Waker(math.inf)
                    self._parked.append(waker)
            if job is not None:
                _run_job(job)
                continue
            if waker.wait(_WORKER_KEEPALIVE):
                continue
            with self._lock:
                if waker in self._parked:  # not woken: nothing came for a while
                    self._parked.remove(waker)
                    self._exit()
                    return
            # woken just as the wait timed out: a job is there

    def _exit(self) -> None:
        # Invariants: called with the lock held, by a worker that leaves now.
        self._running -= 1
        if not self._running:
            self._idle.notify_all()

    def stop(self, timeout: float) -> None:
        """Let every worker finish what is queued and exit; wait up to ``timeout`` seconds."""
        with self._lock:
            self._stopping = True
            for waker in self._parked:
                waker.set()
            self._parked.clear()
            self._idle.wait_for(lambda: not self._running, timeout)


def _run_job(job: Callable[[], None]) -> None:
    try:
        job()
    except Exception:  # pragma: no cover - a bug in our own background code
        logger.exception("elasticpool background job failed")


class _Connection(Generic[ConnT]):
    """What :meth:`SyncPool.connection` returns: ``with pool.connection() as conn``.

    It holds the slot itself (no lookup on release); the lease number tells
    this borrow from a later one of the same slot.
    """

    __slots__ = ("_lease", "_pool", "_slot", "_timeout")

    def __init__(self, pool: SyncPool[ConnT], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._slot: Slot | None = None
        self._lease = 0

    def __enter__(self) -> ConnT:
        slot = self._pool._acquire_slot(self._timeout)
        slot.owner = _get_ident()
        self._slot = slot
        self._lease = slot.lease
        conn: ConnT = slot.conn
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            self._pool._release_slot(slot, exc, self._lease)

    def retire(self) -> None:
        """Close the borrowed connection when it comes back instead of reusing it."""
        slot = self._slot
        if slot is not None and slot.lease == self._lease:
            self._pool._planner.retire(slot)  # a plain store: no lock needed


class SyncPool(Generic[ConnT]):
    """An elastic pool for threads, of connections made by a :class:`~elasticpool.SyncConnector`.

    The same pool as :class:`~elasticpool.Pool`, for threads: the same
    settings (:class:`~elasticpool.PoolSettings`), the same planner, and so
    the same semantics. It starts empty (or at ``min_connections``), opens
    connections only for callers that no pending connect already covers,
    hands each ready connection to the oldest waiting thread, and shrinks
    again as connections sit idle past ``idle_timeout`` or reach
    ``connection_lifetime``.

    Use it as ``with SyncPool(connector, max_connections=10) as pool:`` (or
    :meth:`open` / :meth:`close`). Inside, ``with pool.connection() as conn``
    lends the driver's own connection object and takes it back on exit,
    whatever happens; :meth:`acquire` / :meth:`release` do the same in two
    calls.

    Semantics callers can rely on:

    * callers are served strictly first come, first served, across threads:
      a returned connection goes to the thread that has waited longest, and
      a thread arriving meanwhile does not take it;
    * a caller that waits longer than ``pool_timeout`` gets
      :class:`~elasticpool.PoolTimeout` (a :class:`TimeoutError`) naming the
      pool and its counts, with the last connect error as its cause if
      connects were failing;
    * a waiting thread interrupted (``KeyboardInterrupt`` in the main thread)
      never loses a connection: one already handed to it passes on;
    * one connection is never lent to two borrowers at once;
    * closing is bounded: :meth:`close` waits up to ``timeout`` for borrowed
      connections to come back, then terminates what is left.

    Thread-safe: any thread may borrow, return, resize or read statistics.
    Connects, closes and resets run on background threads of the pool, off
    the callers' path. It is not shared across ``os.fork()``: in a child,
    every call raises :class:`RuntimeError` and :meth:`close` only marks it
    closed, leaving the parent's connections alone; open pools after the fork.
    Nor is it an async pool: for asyncio or trio use
    :class:`~elasticpool.Pool`.
    """

    def __init__(
        self,
        connector: SyncConnector[ConnT],
        settings: PoolSettings | None = None,
        *,
        membership: Membership | None = None,
        name: str = "default",
        **overrides: Any,
    ) -> None:
        missing = [m for m in _CONNECTOR_METHODS if not callable(getattr(connector, m, None))]
        if missing:
            raise TypeError(
                "connector must implement elasticpool.SyncConnector (missing "
                f"{', '.join(missing)}; got {type(connector).__name__})"
            )
        if inspect.iscoroutinefunction(connector.connect):
            raise TypeError(
                f"connector must implement elasticpool.SyncConnector, but "
                f"{type(connector).__name__}.connect is a coroutine function: an async "
                "connector goes with elasticpool.Pool"
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
        if membership is not None and not isinstance(membership, Membership):
            raise TypeError(
                "membership must be an elasticpool Membership (PostgresMembership, "
                f"StaticMembership) or None (got {type(membership).__name__})"
            )
        self.name = name
        self.settings = settings
        self.membership = membership
        self._connector = connector
        self._is_closed = connector.is_closed
        # At a return, and for a connection handed straight to the next borrower: the
        # connector's cheaper check if it has one (no look at an idle socket).
        self._is_broken: Callable[[Any], bool] = getattr(
            connector, "is_broken", connector.is_closed
        )
        self._is_disconnect = connector.is_disconnect
        self._needs_reset = connector.needs_reset
        limit = 0  # with a percentage total the server has a say first (see open())
        if settings.total_percent is None:
            limit = resolve_limit(settings, allow_small_total=settings.allow_small_total).limit
        # With a membership nothing opens before the fleet has a say (join sets the limit).
        self._planner = Planner(settings, 0 if membership is not None else limit)
        # Invariants: the planner is only touched with _lock held; its plan is taken under
        # the same hold and carried out after the lock is released.
        self._lock = threading.Lock()
        # Notified (with _lock held) when a background job finishes: a connect, a close,
        # a reset; wait() and close() wait on it.
        self._changed = threading.Condition(self._lock)
        # The lifecycle: state changes under _life; open() and acquires wait on it.
        self._life = threading.Condition()
        self._state: Lifecycle = _NEW
        self._pid = 0
        self._running = False  # the ticker and the workers are there to carry out plans
        self._workers = _Workers(f"elasticpool-{name}-worker")
        self._tick = threading.Event()
        self._ticker: threading.Thread | None = None
        self._reset_mode = settings.reset
        self._ping_after = settings.ping_after
        self._connect_time = 0.0
        self._in_use: dict[int, Slot] = {}  # acquire()'d borrows, by id(conn)
        # The fleet (see _sync_fleet): its event loop, the port it sees, and the signal a
        # caller queuing at the limit sets (``(event loop, anyio event)``, taken once).
        self._fleet: FleetLoop | None = None
        self._port = SyncPort(self) if membership is not None else None
        self._fleet_demand: tuple[Any, Any] | None = None
        self._coordinating: Slot | None = None
        self._extras: dict[Any, None] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SyncPool[ConnT]:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Start the pool's background threads (idempotent). The floor fills in the background.

        With a membership, the first limit comes from ``membership.join``
        before it returns; meanwhile the pool is opening, and acquires wait
        for it (within their timeout). An open whose join raises is undone:
        the threads stop, connections opened meanwhile are closed, and the
        pool is new again, so ``open()`` can be retried. Another thread's
        ``open()`` meanwhile waits for it. A percentage total
        (``total_max_connections="80%"``) is resolved first, on one
        connection (the connector must have ``fetch``).
        """
        with self._life:
            if self._state is _FORKED:
                raise self._forked_error()
            while self._state is _OPENING:  # another thread is opening it: wait for that
                self._life.wait()
            if self._state is _OPEN:
                return
            if self._state is not _NEW:
                raise PoolClosed(f"pool {self.name!r} is closed and cannot be opened again")
            self._state = _OPENING
        try:
            self._open()
        except BaseException:
            with self._life:
                self._state = _NEW
                self._life.notify_all()
            raise
        with self._life:
            self._state = _OPEN
            self._life.notify_all()
        self._flush(self._planner.tick, _monotonic())

    def _open(self) -> None:
        first = None
        if self.settings.total_percent is not None:
            first = self._resolve_percentage()
        self._pid = os.getpid()
        _opened_here.add(self)
        watch(self, type(self)._forked)
        self._workers = _Workers(f"elasticpool-{self.name}-worker")
        self._running = True
        self._tick.clear()
        self._ticker = threading.Thread(
            target=self._run_ticker, name=f"elasticpool-{self.name}-ticker", daemon=True
        )
        self._ticker.start()
        try:
            if first is not None:  # the connection that asked the server: the pool's first
                if self.membership is None:
                    limit = resolve_limit(self.settings, allow_small_total=True).limit
                    with self._lock:
                        slot = self._planner.resize(limit, _monotonic(), adopt=first)
                        plan = self._take()
                    if slot is None:
                        self._terminate(first)
                    self._execute(plan)
                else:  # the fleet has a say first: its join opens what it needs
                    self._close_conn(first)
            if self.membership is not None and self._port is not None:
                self._port.opened()
                self._fleet = FleetLoop(f"elasticpool-{self.name}-fleet")
                self._fleet.call(self.membership.join, self._port)
                self._fleet.start_membership(self.membership, self._port)
        except BaseException:
            self._undo_open()
            raise

    def _undo_open(self) -> None:
        """Take back an open whose join failed: nothing was lent yet; the pool is new again."""
        self._flush(self._planner.resize, 0, _monotonic())
        fleet, self._fleet = self._fleet, None
        if fleet is not None:
            if self._port is not None and self.membership is not None:
                try:
                    fleet.call(self.membership.leave, self._port)
                except Exception:  # pragma: no cover - a bug in a membership
                    logger.exception("pool %r: fleet membership failed to leave", self.name)
            fleet.stop()
        self._stop_threads(self.settings.connect_timeout)
        with self._lock:
            left = self._planner.remaining()
            for slot in left:
                self._planner.forget(slot)
        for slot in left:  # normally none: closes finish on the workers
            if slot.conn is not None:
                self._terminate(slot.conn)
        _opened_here.discard(self)

    def _resolve_percentage(self) -> Any:
        """Resolve ``total_max_connections="N%"`` against the server; return the connection used."""
        fetch = getattr(self._connector, "fetch", None)
        if fetch is None:
            raise TypeError(
                f"total_max_connections={self.settings.total_max_connections!r} needs a "
                f"connector with fetch() to ask the server ({type(self._connector).__name__} "
                "has none)"
            )
        percent = self.settings.total_percent
        conn = self._connector.connect(self.settings.connect_timeout)
        try:
            rows = fetch(conn, SERVER_LIMITS_SQL)
            most, reserved = int(rows[0][0]), int(rows[0][1])
            self.settings = self.settings.with_server_limits(most, reserved)
        except BaseException:
            self._close_conn(conn)
            raise
        logger.info(
            "pool %r: total_max_connections %g%% of the server's %d usable connections is %s",
            self.name,
            percent,
            most - reserved,
            self.settings.total_max_connections,
        )
        return conn

    def close(self, timeout: float | None = 10.0) -> None:
        """Close the pool; bounded.

        Waiting callers get :class:`~elasticpool.PoolClosed` at once and idle
        connections are closed. Borrowed connections close as they come back;
        after ``timeout`` seconds (``None``: no bound) whatever is left is
        terminated. Then the fleet membership leaves and the pool's threads
        stop. Calling it again (from any thread) waits for the first call to
        finish; a closed pool cannot be reopened.
        """
        check_seconds("timeout", timeout, strict=False, optional=True, finite=False)
        with self._life:
            if self._state is _FORKED:  # the parent's: nothing to wait for, nothing to close
                self._state = _CLOSED
                return
            while self._state is _OPENING:  # let the open finish, or be undone, first
                self._life.wait()
            if self._state is _CLOSING or self._state is _CLOSED:
                self._life.wait_for(lambda: self._state is _CLOSED)
                return
            if self._state is _NEW:
                self._state = _CLOSED
                self._flush(self._planner.close, _monotonic())
                return
            self._state = _CLOSING
        deadline = math.inf if timeout is None else _monotonic() + timeout
        planner = self._planner
        try:
            with self._lock:
                planner.close(_monotonic())
                plan = self._take()
                self._changed.notify_all()  # wait() returns
            self._execute(plan)
            with self._lock:
                while planner.remaining():
                    left = deadline - _monotonic()
                    if left <= 0:
                        break
                    self._changed.wait(min(left, threading.TIMEOUT_MAX))
        finally:
            with self._lock:
                left_over = self._planner.remaining()
                for slot in left_over:
                    self._planner.forget(slot)
                self._changed.notify_all()
            if left_over:
                logger.warning(
                    "pool %r: terminating %d connection(s) not returned in time",
                    self.name,
                    len(left_over),
                )
            for slot in left_over:
                if slot.conn is not None:
                    self._terminate(slot.conn)
            # Only now that nothing is held: heartbeats kept the lease while
            # borrowed connections were still out.
            self._stop_fleet()
            self._stop_threads(1.0)  # they finish at once: nothing is queued any more
            _opened_here.discard(self)
            with self._life:
                self._state = _CLOSED
                self._life.notify_all()

    def _stop_fleet(self) -> None:
        fleet, self._fleet = self._fleet, None
        if fleet is None:
            return
        try:
            assert self.membership is not None
            assert self._port is not None
            fleet.stop_membership(self.membership, self._port)
        except Exception:  # pragma: no cover - a bug in a membership
            logger.exception("pool %r: fleet membership failed to leave", self.name)
        finally:
            fleet.stop()

    def _stop_threads(self, timeout: float) -> None:
        """Stop the ticker and the workers (they finish what is queued); wait up to ``timeout``."""
        self._running = False
        self._tick.set()
        self._workers.stop(timeout)
        ticker, self._ticker = self._ticker, None
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(timeout)

    def terminate(self) -> None:
        """Close the pool at once: terminate every connection, borrowed or not, without waiting.

        Waiting callers get :class:`~elasticpool.PoolClosed`. The fleet lease
        is not given back (it expires after its ttl). Use :meth:`close` for a
        graceful shutdown.
        """
        with self._life:
            if self._state is _FORKED or self._state is _NEW or self._state is _CLOSED:
                self._state = _CLOSED
                self._flush(self._planner.close, _monotonic())
                return
            self._state = _CLOSED
            self._life.notify_all()
        with self._lock:
            planner = self._planner
            planner.close(_monotonic())
            plan = self._take()
            left = planner.remaining()
            for slot in left:
                planner.forget(slot)
            self._changed.notify_all()
        if plan is not None:
            for w in plan.wake:
                w.token.set()
        for slot in left:
            if slot.conn is not None:
                self._terminate(slot.conn)
        fleet, self._fleet = self._fleet, None
        if fleet is not None:
            fleet.stop()
        self._running = False
        self._tick.set()
        _opened_here.discard(self)

    def wait(self, timeout: float | None = 30.0) -> None:
        """Wait until ``min_connections`` connections are open (the warm floor is full).

        Raises :class:`~elasticpool.PoolTimeout` after ``timeout`` seconds
        (``None``: no bound), with the last connect error as its cause.
        """
        check_seconds("timeout", timeout, strict=False, optional=True, finite=False)
        self._check_open()
        planner = self._planner
        deadline = math.inf if timeout is None else _monotonic() + timeout
        with self._lock:
            errors = planner.connect_errors
            while planner.size - planner.n_connecting < planner.floor:
                if self._state is not _OPEN:
                    break
                if self.settings.fail_fast and planner.connect_errors > errors:
                    assert planner.last_connect_error is not None
                    raise planner.last_connect_error
                left = deadline - _monotonic()
                if left <= 0:
                    msg = (
                        f"pool {self.name!r}: floor of {planner.floor} not reached within "
                        f"{timeout:g}s ({planner.describe()})"
                    )
                    raise PoolTimeout(msg) from planner.last_connect_error
                self._changed.wait(min(left, threading.TIMEOUT_MAX))
        self._check_open()

    # ------------------------------------------------------------------ state

    def _check_open(self) -> None:
        state = self._state
        if state is not _OPEN:
            if state is _FORKED:
                raise self._forked_error()
            if state is _NEW:
                raise RuntimeError(
                    f"pool {self.name!r} is not open: use 'with pool' or 'pool.open()'"
                )
            if state is _OPENING:
                raise RuntimeError(f"pool {self.name!r} is still opening: call pool.open() first")
            raise PoolClosed(f"pool {self.name!r} is closed ({self._planner.describe()})")

    def _wait_open(self, timeout: float | None) -> float | None:
        """An acquire that finds the pool opening waits for the open; returns the time left."""
        if self._state is _OPENING:
            started = _monotonic()
            with self._life:
                opened = self._life.wait_for(
                    lambda: self._state is not _OPENING,
                    None if timeout is None else min(timeout, threading.TIMEOUT_MAX),
                )
            if not opened:
                raise PoolTimeout(
                    f"pool {self.name!r}: no connection within {timeout:g}s "
                    f"(the pool is still opening; {self._planner.describe()})"
                )
            if self._state is _NEW:
                raise RuntimeError(
                    f"pool {self.name!r} did not open: its open() failed while this "
                    "acquire waited for it"
                )
            if timeout is not None:
                timeout -= _monotonic() - started
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

        The parent's threads do not exist here; the connections and the fleet
        lease are the parent's (the sockets are shared with it). The planner
        forgets every slot, each connection goes to the connector's optional
        ``abandon`` and is kept referenced for the life of the process (no
        driver cleanup-on-collect runs on it); the pool then refuses every
        use, and :meth:`close` / :meth:`terminate` only mark it closed.
        """
        if self._state is _NEW or self._state is _CLOSED or self._state is _FORKED:
            return
        self._state = _FORKED
        self._running = False
        self._fleet = None
        # Locks and conditions a parent thread may have held at the fork: fresh ones.
        self._life = threading.Condition()
        self._changed = threading.Condition(self._lock)
        self._tick = threading.Event()
        self._workers = _Workers(f"elasticpool-{self.name}-worker")
        planner = self._planner
        abandon = getattr(self._connector, "abandon", None)
        if not planner.closed:
            planner.close(_monotonic())
        planner.take_plan()  # wakes and closes for the parent's threads: none run here
        conns = [slot.conn for slot in planner.remaining() if slot.conn is not None]
        conns += list(self._extras)
        for slot in planner.remaining():
            planner.forget(slot)
        for conn in conns:
            inherit(conn)
            if abandon is not None:
                abandon(conn)

    # ------------------------------------------------------------------ borrowing

    def connection(self, *, timeout: float | None = _DEFAULT) -> _Connection[ConnT]:
        """Borrow a connection for a block: ``with pool.connection() as conn``.

        The connection goes back when the block ends, whatever happens; an
        exception that means the connection is dead (a connection-class
        error) evicts it. ``timeout`` overrides ``pool_timeout`` for this call
        (``None``: wait forever). Raises :class:`~elasticpool.PoolTimeout`,
        :class:`~elasticpool.TooManyWaiters` or :class:`~elasticpool.PoolClosed`.
        """
        if timeout is _DEFAULT:
            timeout = self.settings.pool_timeout
        elif timeout is not None:
            check_seconds("timeout", timeout, optional=True, finite=False)
        return _Connection(self, timeout)

    def acquire(self, *, timeout: float | None = _DEFAULT) -> ConnT:
        """Borrow a connection; give it back with :meth:`release` (any thread may).

        ``timeout`` as for :meth:`connection`. Prefer :meth:`connection`,
        which cannot forget to give it back.
        """
        if timeout is _DEFAULT:
            timeout = self.settings.pool_timeout
        elif timeout is not None:
            check_seconds("timeout", timeout, optional=True, finite=False)
        return self._lend(timeout)

    def release(self, conn: ConnT, *, exc: BaseException | None = None) -> None:
        """Give back a connection borrowed with :meth:`acquire`.

        ``exc`` is the error the borrower met, if any: a connection-class
        error evicts the connection. Releasing one that is not borrowed that
        way from this pool (released twice, from another pool, or borrowed
        with :meth:`connection`, which gives it back itself) raises
        :class:`RuntimeError`. Any thread may give back a borrow; a thread that
        gave a connection back and releases it again while another thread
        holds the very next borrow of it is refused (:class:`RuntimeError`),
        and that borrow stands.
        """
        self._end_borrow(self._borrow_of(conn, "released"), conn, exc)

    def _lend(self, timeout: float | None) -> ConnT:
        """:meth:`acquire` for a face whose own checks of ``timeout`` were done."""
        slot = self._acquire_slot(timeout)
        slot.owner = _get_ident()
        conn: ConnT = slot.conn
        self._in_use[id(conn)] = slot
        return conn

    def _end_borrow(
        self, slot: Slot, conn: ConnT, exc: BaseException | None, clean: bool = False
    ) -> None:
        """:meth:`release` once :meth:`_borrow_of` found ``slot`` (a face checks it first).

        ``clean``: see :meth:`_release_slot`.
        """
        self._in_use.pop(id(conn), None)
        me = _get_ident()
        slot.returned = (slot.lease, me) if slot.owner == me else None
        self._release_slot(slot, exc, slot.lease, clean)

    def retire(self, conn: ConnT) -> None:
        """Close ``conn`` (borrowed with :meth:`acquire`) when it comes back, not reuse it."""
        self._planner.retire(self._borrow_of(conn, "retired"))

    def _borrow_of(self, conn: ConnT, what: str) -> Slot:
        slot = self._in_use.get(id(conn))
        if slot is None or slot.conn is not conn:
            raise RuntimeError(
                f"connection {conn!r} is not borrowed from pool {self.name!r} "
                "(released twice, or from another pool)"
            )
        me = _get_ident()
        if slot.owner != me and slot.returned == (slot.lease - 1, me):
            raise RuntimeError(
                f"pool {self.name!r}: connection {conn!r} {what} after this thread gave it "
                "back, and another thread has borrowed it since (that borrow stands)"
            )
        return slot

    def transaction(
        self, *, timeout: float | None = _DEFAULT, readonly: bool = False
    ) -> contextlib.AbstractContextManager[ConnT]:
        """Borrow a connection inside a transaction: ``with pool.transaction() as conn``.

        BEGIN on entry; COMMIT when the block ends normally, ROLLBACK when it
        raises; then the connection goes back. ``readonly=True`` makes it a
        read-only transaction.
        """
        return self._transaction(self.connection(timeout=timeout), readonly)

    @contextlib.contextmanager
    def _transaction(self, borrow: _Connection[ConnT], readonly: bool) -> Iterator[ConnT]:
        with borrow as conn:
            tx = (
                self._connector.transaction(conn, readonly=True)
                if readonly
                else self._connector.transaction(conn)
            )
            with tx:
                yield conn

    def _acquire_slot(self, timeout: float | None, priority: bool = False) -> Slot:
        # The hot path: one lock hold, in which the caller takes an idle slot or queues;
        # one clock read; then a health check, or the wait. Under load most borrows
        # queue, and the thread that hands them a slot has claimed it for them (see
        # _take): the woken thread only checks it the way a return does.
        if self._state is not _OPEN:
            timeout = self._wait_open(timeout)
        planner = self._planner
        waiter: Waiter | None = None
        refused: BaseException | None = None
        demand = False
        with self._lock:
            now = _monotonic()
            slot = planner.acquire(now)
            if slot is None:
                try:
                    # No deadline in the planner: a thread times itself out (see _wait).
                    waiter = planner.enqueue(now, None, priority)
                except (PoolClosed, TooManyWaiters) as exc:
                    refused = exc  # raised once the plan the acquire left is carried out
                else:
                    waiter.token = _Waker(_INF if timeout is None else now + timeout)
                    demand = (
                        self._fleet_demand is not None
                        and not priority
                        and planner.budget_used + planner.n_connecting >= planner.limit
                    )
            plan = None if planner.pending is None else self._take()
        if plan is not None:
            self._execute(plan)
        deadline = _INF if timeout is None else now + timeout
        if slot is not None:  # taken from the idle set
            # self._dead(slot, now), inlined: this runs per borrow.
            if (
                self._is_closed(slot.conn)
                if now - slot.idle_since >= _PROBE_AFTER
                else self._is_broken(slot.conn)
            ):
                self._evict(slot)
                slot = None
            elif self._ping_after is None or not planner.should_ping(slot, now):
                return slot
            return self._acquire_slow(slot, now, deadline, timeout, priority)
        if refused is not None:
            raise refused
        assert waiter is not None
        if demand:
            self._signal_demand()  # a caller queues at the limit: the fleet should know
        slot = self._wait(waiter, timeout)
        # Handed over by its last borrower: checked only as cheaply as at its return.
        if self._is_broken(slot.conn):
            self._evict(slot)
            slot = None
        elif self._ping_after is None:
            return slot
        # The ping decision is about now, not when the caller queued.
        return self._acquire_slow(slot, _monotonic(), deadline, timeout, priority)

    def _dead(self, slot: Slot, now: float) -> bool:
        """Whether a connection taken from the idle set is known dead (no round trip).

        One idle for :data:`_PROBE_AFTER` or longer gets the connector's full
        check (``is_closed``: for psycopg, a look at the idle socket for a
        session the server ended); one given back a moment ago, only the
        cheap one (``is_broken``). In threads a look at a socket is a system
        call, which hands the GIL over: under load it costs more than the
        pool's own work, and a session the server ends in those few
        milliseconds fails its borrower's first query with a connection
        error, which evicts it, as for any connection dying in use.
        """
        if now - slot.idle_since >= _PROBE_AFTER:
            return self._is_closed(slot.conn)
        return self._is_broken(slot.conn)

    def _acquire_slow(
        self,
        slot: Slot | None,
        now: float,
        deadline: float,
        timeout: float | None,
        priority: bool = False,
    ) -> Slot:
        """Ping a slot and/or wait for one; loop until a healthy one or the ``deadline``.

        ``slot``, if given, passed the closed check and may be due for a
        ping (decided at ``now``); ``None``: the caller queues again. A
        connection the driver knows is dead is evicted without a ping (no
        caller ever gets one): one taken from the idle set is checked in full
        (``is_closed``) if it sat there a while (see :meth:`_dead`), one
        handed straight from its last borrower only as cheaply as at its
        return (``is_broken``, when the connector has it). ``timeout``: the
        caller's own, for the message.
        """
        planner = self._planner
        while True:
            if slot is None:
                waiter = self._queue(now, None if deadline == _INF else deadline - now, priority)
                slot = self._wait(waiter, timeout)
                now = _monotonic()  # the ping decision is about now, not when we queued
                if self._is_broken(slot.conn):
                    self._evict(slot)
                    slot = None
            if slot is not None and (
                not planner.should_ping(slot, now) or self._ping(slot, deadline)
            ):
                return slot
            now = _monotonic()
            if now >= deadline:
                self._raise_timeout(timeout)
            with self._lock:
                slot = planner.acquire(now)
                plan = self._take()
            self._execute(plan)
            if slot is not None and self._dead(slot, now):
                self._evict(slot)
                slot = None

    def _queue(self, now: float, timeout: float | None, priority: bool) -> Waiter:
        """Queue the caller (a second round: its first is in :meth:`_acquire_slot`)."""
        planner = self._planner
        with self._lock:
            w = planner.enqueue(now, None, priority)  # no deadline there: see _wait
            w.token = _Waker(math.inf if timeout is None else now + timeout)
            demand = (
                self._fleet_demand is not None
                and not priority
                and planner.budget_used + planner.n_connecting >= planner.limit
            )
            plan = self._take()
        self._execute(plan)
        if demand:
            self._signal_demand()
        return w

    def _wait(self, w: Waiter, whole: float | None) -> Slot:
        """Block until ``w`` is handed a slot (claimed for it), or raise what ended its wait.

        The thread times itself out: its waiter is queued in the planner with
        no deadline, and the blocking wait is bounded by the waker's. At the
        deadline it leaves the queue (counted as a timeout) unless it was
        handed a slot meanwhile. ``whole``: the caller's own timeout, for the
        message.
        """
        planner = self._planner
        waker: _Waker = w.token
        deadline = waker.deadline
        timed_out = False
        try:
            # The first wait is waker.wait(), inlined: this runs per queued borrow.
            lock = waker._lock
            if deadline == _INF:
                woken = lock.acquire()
            else:
                left = deadline - _monotonic()
                woken = lock.acquire(True, min(left, _TIMEOUT_MAX)) if left > 0 else False
            while not woken:
                left = deadline - _monotonic()
                if left > 0:  # woken a hair early
                    woken = waker.wait(left)
                    continue
                with self._lock:
                    if w.outcome is None:
                        planner.cancel(w, _monotonic())
                        if not w.priority:
                            planner.timeouts += 1
                        timed_out = True
                    plan = self._take()
                self._execute(plan)
                break
        except BaseException:
            self._abandon_wait(w, waker)
            raise
        if timed_out:
            self._raise_timeout(whole)
        outcome = w.outcome
        if outcome is _HANDED:
            slot = waker.slot
            if slot is not None:  # claimed for us by the thread that handed it over
                return slot
            with self._lock:  # pragma: no cover - every hand-off is claimed in _take
                return planner.claim(w, _monotonic())
        if outcome is _CONNECT_FAILED and planner.last_connect_error is not None:
            raise planner.last_connect_error
        raise PoolClosed(f"pool {self.name!r} closed while waiting ({planner.describe()})")

    def _abandon_wait(self, w: Waiter, waker: _Waker) -> None:
        """A waiting thread was interrupted: leave the queue; pass on a slot handed to it."""
        planner = self._planner
        with self._lock:
            slot, waker.slot = waker.slot, None
            if slot is None:
                planner.cancel(w, _monotonic())
            elif slot.state is _IN_USE:  # claimed for it: give it back (to the next)
                planner.release(slot, _monotonic())
            plan = self._take()
        self._execute(plan)

    def _signal_demand(self) -> None:
        signal, self._fleet_demand = self._fleet_demand, None
        if signal is not None:
            loop, event = signal
            with contextlib.suppress(RuntimeError):  # the fleet's loop is closed
                loop.call_soon_threadsafe(event.set)

    def _raise_timeout(self, timeout: float | None) -> None:
        planner = self._planner
        msg = f"pool {self.name!r}: no connection within {timeout:g}s ({planner.describe()})"
        with self._lock:
            held = planner.borrowed_by(_get_ident())
        if held:
            msg += (
                f"; this thread already holds {held} connection{'s' if held > 1 else ''} "
                "from this pool: a nested acquire waits for itself when the pool is full "
                "(pass the connection down instead, or raise max_connections)"
            )
        if planner.failures and planner.last_connect_error is not None:
            err = planner.last_connect_error
            raise PoolTimeout(f"{msg}; connects are failing: {type(err).__name__}: {err}") from err
        raise PoolTimeout(msg)

    def _evict(self, slot: Slot) -> None:
        """A freshly borrowed connection is dead: close it (unless a forced close took it)."""
        with self._lock:
            if slot.state is _IN_USE:
                self._planner.pinged(slot, False, _monotonic())
            plan = self._take()
        self._execute(plan)

    def _ping(self, slot: Slot, deadline: float = math.inf) -> bool:
        """Ping a freshly borrowed slot; on failure it is evicted and ``False`` returned.

        Bounded by ``connect_timeout`` and by the caller's ``deadline`` (the
        connector keeps the bound: see :meth:`SyncConnector.ping`).
        """
        bound = max(0.0, min(self.settings.connect_timeout, deadline - _monotonic()))
        try:
            self._connector.ping(slot.conn, bound)
        except Exception as exc:
            logger.info("pool %r: connection failed its health check: %r", self.name, exc)
            self._evict(slot)
            return False
        except BaseException:
            # Interrupted mid-ping: the connection's state is unknown, so evict it.
            self._evict(slot)
            raise
        with self._lock:
            if slot.state is _IN_USE:
                self._planner.pinged(slot, True, _monotonic())
        return True

    # ------------------------------------------------------------------ release

    def _release_slot(
        self, slot: Slot, exc: BaseException | None, lease: int, clean: bool = False
    ) -> None:
        """End the borrow ``lease`` of ``slot``: back to the idle set, to a waiter, or closed.

        ``clean``: the caller (a face) has just seen the connection open and
        idle, with no error and no reset due under its settings, so the
        connector is not asked again.
        """
        if clean:
            broken = reset = False
        else:
            conn = slot.conn
            broken = self._is_broken(conn) or (exc is not None and self._is_disconnect(exc))
            # Asked in "none" mode too: a connector may know this connection must be
            # cleaned anyway.
            reset = not broken and self._needs_reset(conn, self._reset_mode)
        planner = self._planner
        with self._lock:
            # Not when a forced close took it meanwhile, nor for a stale borrow.
            if slot.state is not _IN_USE or slot.lease != lease:
                return
            now = _monotonic()
            planner.release(slot, now, broken, reset)
            if planner.pending is None:  # back to the idle set: the usual return, unless
                return  # callers queue
            plan = planner.take_plan()
            assert plan is not None
            # self._take(), inlined with the same clock reading: under load, this is
            # the hand-off to the oldest waiter, claimed for it here.
            for w in plan.wake:
                if w.outcome is _HANDED and w.slot is not None:
                    w.token.slot = planner.claim(w, now)
        if not (plan.connect or plan.close or plan.reset or plan.wake_ticker or plan.saturated_for):
            for w in plan.wake:  # self._execute(plan), inlined for a hand-off and nothing else
                try:
                    w.token._lock.release()  # w.token.set(), inlined
                except RuntimeError:  # pragma: no cover - set already
                    pass
            return
        self._execute(plan)

    # ------------------------------------------------------------------ plans

    def _flush(self, event: Callable[..., Any], *args: Any) -> Any:
        """Run one planner event under the lock, then carry out the plan it left."""
        with self._lock:
            result = event(*args)
            plan = self._take()
        self._execute(plan)
        return result

    def _take(self) -> Plan | None:
        """The planner's plan, with its hand-offs claimed (call it with the lock held).

        A waiter handed a slot has it claimed for it here, under the same
        hold, so the woken thread returns its connection without taking the
        lock again: one lock round less per hand-off, which under load is
        most borrows. Invariants: a waker's ``slot`` is IN_USE and lent to
        its waiter, which returns it to its caller or, interrupted, gives it
        back (see :meth:`_abandon_wait`); a handed waiter's outcome stays
        HANDED.
        """
        planner = self._planner
        plan = planner.take_plan()
        if plan is not None and plan.wake:
            now = _monotonic()
            for w in plan.wake:
                if w.outcome is _HANDED and w.slot is not None:
                    w.token.slot = planner.claim(w, now)
        return plan

    def _execute(self, plan: Plan | None) -> None:
        """Carry out a plan: hand connects, closes and resets to the workers; wake waiters."""
        if (
            plan is not None
            and not (plan.connect or plan.close or plan.reset or plan.wake_ticker)
            and not plan.saturated_for
        ):  # the common case under load: a hand-off
            for w in plan.wake:
                w.token.set()
            return
        while plan is not None:
            follow: Plan | None = None
            if self._running:
                submit = self._workers.submit
                for slot in plan.connect:
                    submit(functools.partial(self._connect, slot))
                for slot in plan.close:
                    submit(functools.partial(self._close_slot, slot))
                for slot in plan.reset:
                    submit(functools.partial(self._reset, slot))
            elif plan.connect or plan.close or plan.reset:
                # No background threads (never opened, or stopped): close what must be
                # closed right away, and give up connects and resets.
                for slot in plan.close:
                    if slot.conn is not None:
                        self._terminate(slot.conn)
                with self._lock:
                    planner = self._planner
                    now = _monotonic()
                    for slot in plan.close:
                        if slot.state is _S_CLOSING:
                            planner.closed_conn(slot, now)
                    for slot in plan.connect:
                        if slot.state is _S_CONNECTING:
                            planner.connect_failed(slot, None, now, 0.0)
                    for slot in plan.reset:
                        if slot.state is _S_RESETTING:
                            planner.reset_done(slot, False, now)
                    follow = self._take()
                    self._changed.notify_all()
            for w in plan.wake:
                w.token.set()
            if plan.wake_ticker:
                self._tick.set()
            if plan.saturated_for:
                self._warn_saturated(plan.saturated_for)
            plan = follow

    def _run_ticker(self) -> None:
        planner = self._planner
        tick = self._tick
        while True:
            tick.clear()
            if not self._running:
                return
            with self._lock:
                now = _monotonic()
                planner.tick(now)
                plan = self._take()
                wake = planner.next_wake
            if plan is not None:
                plan.wake_ticker = False  # tick() has just set next_wake itself
                self._execute(plan)
            delay = wake - _monotonic()
            if delay > 0:
                tick.wait(min(delay, _LONGEST_SLEEP))

    def _warn_saturated(self, seconds: float) -> None:
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
            p.oldest_waiter_age(_monotonic()),
        )

    # ------------------------------------------------------------------ background jobs

    def _connect(self, slot: Slot) -> None:
        planner = self._planner
        started = _monotonic()
        try:
            conn = self._connector.connect(self.settings.connect_timeout)
        except Exception as exc:
            with self._lock:
                if slot.state is _S_CONNECTING:
                    planner.connect_failed(slot, exc, _monotonic(), random.random())
                plan = self._take()
                failures = planner.failures
                self._changed.notify_all()
            if failures <= 1:
                logger.warning("pool %r: connect failed: %r", self.name, exc)
            else:
                logger.debug("pool %r: connect failed again: %r", self.name, exc)
            self._execute(plan)
            return
        with self._lock:
            if slot.state is not _S_CONNECTING:  # forgotten by a forced close
                plan = None
                forgotten = True
            else:
                forgotten = False
                now = _monotonic()
                self._connect_time += now - started
                for sink in planner.sinks:  # metrics attached (see Planner.observe)
                    sink.create(now - started)
                planner.connected(slot, conn, now, random.random())
                plan = self._take()
                self._changed.notify_all()
        if forgotten:
            self._terminate(conn)
            return
        self._execute(plan)

    def _close_slot(self, slot: Slot) -> None:
        conn = slot.conn
        if conn is not None:
            self._close_conn(conn)
        with self._lock:
            if slot.state is _S_CLOSING:
                self._planner.closed_conn(slot, _monotonic())
            plan = self._take()
            self._changed.notify_all()
        self._execute(plan)

    def _close_conn(self, conn: Any) -> None:
        """Close gracefully, else terminate. Never raises."""
        try:
            self._connector.close(conn)
        except Exception as exc:
            logger.debug("pool %r: close failed, terminating: %r", self.name, exc)
            self._terminate(conn)

    def _terminate(self, conn: Any) -> None:
        try:
            self._connector.terminate(conn)
        except Exception as exc:  # pragma: no cover - a connector bug
            logger.debug("pool %r: terminate failed: %r", self.name, exc)

    def _reset(self, slot: Slot) -> None:
        ok = False
        try:
            self._connector.reset(slot.conn, self._reset_mode)
            ok = True
        except Exception as exc:
            logger.warning("pool %r: error resetting connection, discarded: %r", self.name, exc)
        finally:
            with self._lock:
                if slot.state is _S_RESETTING:
                    self._planner.reset_done(slot, ok, _monotonic())
                plan = self._take()
                self._changed.notify_all()
            self._execute(plan)

    # ------------------------------------------------------------------ maintenance

    def resize(self, max_connections: int, min_connections: int | None = None) -> None:
        """Change this pool's limit now, with trio ``CapacityLimiter.total_tokens`` semantics.

        Raising it starts connects for waiting callers at once. Lowering it
        closes idle surplus now and busy surplus as it comes back; a borrowed
        connection is never revoked, so the pool can stay above the new limit
        until then. ``min_connections`` changes the warm floor as well.
        ``max_connections=0`` pauses the pool: callers wait (and time out)
        until the limit is raised again.
        """
        if self._state is _FORKED:
            raise self._forked_error()
        self._flush(self._planner.resize, max_connections, _monotonic(), min_connections)

    def expire_connections(self) -> None:
        """Retire every current connection: idle ones now, borrowed ones as they come back."""
        if self._state is _FORKED:
            raise self._forked_error()
        self._flush(self._planner.expire_all, _monotonic())

    def check(self) -> None:
        """Ping every idle connection now and close those that fail.

        Connections are taken out of the idle set one at a time, so callers
        are served meanwhile.
        """
        self._check_open()
        planner = self._planner
        with self._lock:
            idle = planner.idle_slots()
        for slot in idle:
            with self._lock:
                taken = planner.take_for_check(slot, _monotonic())
            if not taken:
                continue  # borrowed meanwhile, or callers are waiting: they come first
            if self._is_closed(slot.conn):
                self._evict(slot)
            elif self._ping(slot):
                self._release_slot(slot, None, slot.lease)

    # ------------------------------------------------------------------ fleet

    def fleet(self) -> FleetStatus:
        """This pool's view of its fleet: members, shares, holdings, demand, its limit.

        Without a membership it is a fleet of one whose share is the whole
        limit (``fleet_total`` is ``None`` when only ``max_connections`` is set).
        """
        if self.membership is not None and self._port is not None:
            return self.membership.status(self._port)
        r = resolve_limit(self.settings, allow_small_total=self.settings.allow_small_total)
        return FleetStatus(
            pool=self.name,
            instance="",
            membership="none" if self.membership is None else type(self.membership).__name__,
            limit=self._planner.limit,
            share=r.share,
            fleet_total=r.fleet_total,
            source=r.source,
        )

    def set_fleet_total(self, total: int | None) -> None:
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
        assert self._fleet is not None
        self._fleet.call(set_total, self._port, total)

    def set_reuse_order(self, *, lru: bool) -> None:
        """Which idle connection a borrow takes: least (``lru=True``) or most recently used.

        As :meth:`elasticpool.Pool.set_reuse_order`: most recently used (the
        default) lets the surplus sit idle and close after ``idle_timeout``;
        least recently used uses every connection in turn, as psycopg_pool
        does (its drop-in face sets it for a pool that cannot shrink,
        ``min_size == max_size``).
        """
        with self._lock:
            self._planner.lru = lru

    # ------------------------------------------------------------------ inspection

    @property
    def limit(self) -> int:
        """The limit now: what :meth:`resize` (or the fleet) set last; ``stats().max``."""
        return self._planner.limit

    @property
    def lent(self) -> int:
        """Connections lent to callers now: in use less a fleet heartbeat's own borrow.

        What a face's ``close()`` waits for: the heartbeat's statement is the
        pool's own business and ends with the pool.
        """
        with self._lock:
            p = self._planner
            return p.n_in_use + p.n_reserved - (1 if self._coordinating is not None else 0)

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's gauges and counters (from any thread)."""
        with self._lock:
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
                oldest_waiter_age=p.oldest_waiter_age(_monotonic()),
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

    def __repr__(self) -> str:
        p = self._planner
        state = "" if self._state is _OPEN else f" {self._state.value}"
        resetting = f", resetting {p.n_resetting}" if p.n_resetting else ""
        return (
            f"<SyncPool {self.name!r}{state} [in use {p.n_in_use + p.n_reserved}, "
            f"idle {p.n_idle}, connecting {p.n_connecting}{resetting} | waiting {p.n_waiting}]>"
        )


# ----------------------------------------------------------------------------- fork

# Every sync pool opened in this process, held weakly, for the at-fork hooks below (what
# a child does with them is _fork.py's: see SyncPool._forked).
_opened_here: weakref.WeakSet[SyncPool[Any]] = weakref.WeakSet()
_held_over_fork: list[SyncPool[Any]] = []


def _before_fork() -> None:
    """Hold every open pool's planner lock across ``os.fork()``.

    A thread of the parent may be inside a planner event when another thread
    forks; the child would inherit that lock held by a thread it does not
    have, and a half-done event. Held here (never long: no I/O happens under
    it), the child gets each planner in a consistent state and each lock
    held by its only thread, which releases it.
    """
    for pool in list(_opened_here):
        pool._lock.acquire()
        _held_over_fork.append(pool)


def _after_fork() -> None:
    while _held_over_fork:
        _held_over_fork.pop()._lock.release()
    # In a child, _fork.py's hook (registered before this one) has run SyncPool._forked.


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork
    )
