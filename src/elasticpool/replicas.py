"""Read replicas: one routing pool over a primary and its replicas.

:class:`RoutingPool` composes ordinary :class:`~elasticpool.Pool` objects, one
per server, each with its own :class:`~elasticpool.PoolSettings` (limits, fleet
totals, membership). It decides only *which* member serves a borrow:

* writes (the default) always go to the primary;
* read-only borrows go to a healthy replica, the least loaded one (in use +
  waiting, relative to its limit), ties broken round robin;
* a replica whose read meets a connect failure or a disconnect is
  quarantined; a background probe tries it again after a backoff that doubles
  from ``quarantine_initial`` to ``quarantine_max``, and puts it back when a
  connection of it answers a ping;
* with no healthy replica, reads go to the primary (``fallback_to_primary``),
  or fail at once with :class:`NoReplicaAvailable`;
* with ``max_lag``, a replica whose replay lag (:func:`replay_lag`) exceeds it
  is quarantined too, until a probe finds it caught up.

It is not a replication manager: it never promotes and never sends a write to
a replica.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import anyio
import anyio.abc

from ._adapters import fetch_for
from ._connector import Connector, fetch_of
from ._errors import ElasticPoolError, PoolClosed, PoolTimeout, TooManyWaiters
from ._fork import forked_error, watch
from ._lifecycle import CLOSED, CLOSING, FORKED, NEW, OPEN, Lifecycle
from ._pool import Borrow, Pool
from ._runner import Runner
from ._stats import PoolStats
from ._validate import check_instance, check_name, check_seconds

__all__ = [
    "REPLAY_LAG_SQL",
    "NoReplicaAvailable",
    "RoutingMemberStats",
    "RoutingPool",
    "RoutingStats",
    "replay_lag",
]

logger = logging.getLogger("elasticpool")

ConnT = TypeVar("ConnT")

_DEFAULT: Any = object()

# How often a read queued at a replica looks for connect failures of that
# replica (the pool has no event for them). Only while a read waits there.
_WATCH_INTERVAL = 0.05


REPLAY_LAG_SQL = (
    "SELECT CASE WHEN pg_catalog.pg_last_wal_receive_lsn()"
    " IS NOT DISTINCT FROM pg_catalog.pg_last_wal_replay_lsn() THEN 0::float8"
    " ELSE coalesce(pg_catalog.date_part('epoch', pg_catalog.now()"
    " - pg_catalog.pg_last_xact_replay_timestamp())::float8, 'Infinity') END"
)
"""Seconds a standby's replay is behind: 0 when it has replayed all it received
(and on a primary), else the age of the last transaction it replayed, or
infinity when it is behind and has replayed none since it started."""

_LAG_REASON = "replication lag"


async def replay_lag(conn: Any, *, connector: Connector[Any] | None = None) -> float | None:
    """Run :data:`REPLAY_LAG_SQL` on ``conn``; ``None`` when unknown.

    It runs through ``connector``'s ``fetch(conn, sql, *args)`` (see
    :class:`~elasticpool.Connector`), or without one on an asyncpg or psycopg
    connection; any other raises :class:`TypeError`. The default ``lag``
    function of :class:`RoutingPool`, which passes each replica pool's own
    connector.
    """
    if connector is not None:
        fetch = fetch_of(connector, "replay_lag()")
    else:
        fetch = fetch_for(conn, "replay_lag()")
    rows = await fetch(conn, REPLAY_LAG_SQL)
    value = rows[0][0] if rows else None
    return None if value is None else float(value)


class NoReplicaAvailable(ElasticPoolError):
    """A read found no healthy replica and ``fallback_to_primary`` is off."""


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingMemberStats:
    """One member of a :class:`RoutingPool`, as :meth:`RoutingPool.stats` returns it."""

    name: str
    """The member pool's name."""
    role: Literal["primary", "replica"]
    healthy: bool
    """Whether reads are routed to it (the primary is always healthy: nothing routes around it)."""
    quarantines: int
    """Times it was taken out of rotation."""
    retry_in: float
    """Seconds until the next probe while quarantined (0 once a probe is under way), else 0."""
    last_error: str | None
    """Why it was last quarantined: the error's type name, or ``"replication lag"``."""
    reads: int
    """Read-only borrows it served."""
    writes: int
    """Write borrows it served (replicas: always 0)."""
    pool: PoolStats
    """The member pool's own snapshot."""


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingStats:
    """A snapshot of a :class:`RoutingPool`: its members and its routing counters."""

    name: str
    primary: RoutingMemberStats
    replicas: tuple[RoutingMemberStats, ...]
    reads: int
    """Read-only borrows served, by replicas or by the primary."""
    writes: int
    """Write borrows served (all by the primary)."""
    fallbacks: int
    """Reads the primary served because no replica was healthy."""
    healthy_replicas: int


class _Member(Generic[ConnT]):
    """Routing state of one member pool. Invariant: a primary is never quarantined."""

    __slots__ = (
        "backoff",
        "healthy",
        "last_error",
        "pool",
        "probing",
        "quarantines",
        "reads",
        "role",
        "until",
        "writes",
    )

    def __init__(self, pool: Pool[ConnT], role: Literal["primary", "replica"]) -> None:
        self.pool = pool
        self.role: Literal["primary", "replica"] = role
        self.healthy = True
        self.quarantines = 0
        self.until = -math.inf  # next probe, while quarantined
        self.backoff = 0.0
        self.last_error: str | None = None
        self.probing = False
        self.reads = 0
        self.writes = 0

    def load(self) -> float:
        """Borrowed + queued, relative to the member's limit (a paused member is full)."""
        pool = self.pool
        limit = pool.limit
        return (pool.in_use + pool.waiting) / limit if limit > 0 else math.inf


class _MemberFailed(Exception):
    """A member's connects failed while a borrow waited on it (internal)."""

    def __init__(self, error: BaseException | None) -> None:
        super().__init__(error)
        self.error = error


class _RoutedAcquire(Generic[ConnT]):
    """What :meth:`RoutingPool.acquire` returns: an async context manager.

    After entry, :attr:`pool` is the member pool that lent the connection.
    """

    __slots__ = ("_inner", "_member", "_readonly", "_router", "_timeout")

    def __init__(self, router: RoutingPool[ConnT], readonly: bool, timeout: float | None) -> None:
        self._router = router
        self._readonly = readonly
        self._timeout = timeout
        self._member: _Member[ConnT] | None = None
        self._inner: Borrow[ConnT] | None = None

    @property
    def pool(self) -> Pool[ConnT]:
        """The member pool serving this borrow (only inside the ``async with`` block)."""
        if self._member is None:
            raise RuntimeError("no connection is borrowed: use it inside 'async with'")
        return self._member.pool

    async def __aenter__(self) -> ConnT:
        router = self._router
        if self._readonly:
            member, inner, conn = await router._borrow_read(self._timeout)
        else:
            member, inner, conn = await router._borrow_write(self._timeout)
        self._member, self._inner = member, inner
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        member, self._member = self._member, None
        inner, self._inner = self._inner, None
        if member is None or inner is None:
            return
        if member.role == "replica" and exc is not None:
            connector = member.pool.connector
            if isinstance(exc, Exception) and connector.is_disconnect(exc):
                self._router._quarantine(member, exc)
        await inner.__aexit__(exc_type, exc, tb)


class RoutingPool(Generic[ConnT]):
    """A pool face over a primary :class:`~elasticpool.Pool` and replica pools.

    ``async with RoutingPool(primary, [replica1, replica2]) as db:`` opens every
    member pool (and closes them all on exit). Then:

    * ``async with db.acquire() as conn`` (and ``db.transaction()``) borrows
      from the primary;
    * ``async with db.acquire(readonly=True) as conn`` borrows from a healthy
      replica, the least loaded relative to its limit, round robin among
      equals; ``db.transaction(readonly=True)`` also makes the transaction
      read-only (``BEGIN READ ONLY`` through the member's connector), so a
      write in it fails even when the primary serves it;
    * ``timeout`` (default: the first chosen member's ``pool_timeout``) bounds
      the whole borrow, including moving on from a failing replica.

    Health, exactly: a replica is quarantined when a read waiting on it sees
    one of its connects fail (or its pool raises a connect error, with
    ``fail_fast``), or when a read's borrow of it ends with a disconnect-class
    error. A read that was waiting on a replica when it was quarantined moves
    on to another replica or the primary within the same ``timeout``; a read
    whose connection died under it gets that error (nothing is retried for
    it). Quarantined replicas are probed in the background: the pool pings its
    idle connections, then one borrowed connection must answer a ping (and,
    with ``max_lag``, report a lag within it). A replica that is merely busy
    is not unhealthy: its callers queue, and time out with
    :class:`~elasticpool.PoolTimeout`, as in any pool.

    ``max_lag`` (seconds, default ``None``: not checked): every
    ``lag_check_interval`` seconds each replica in rotation lends one
    connection to ``lag(conn)`` (default :func:`replay_lag`, which needs the
    replicas' connectors to have ``fetch``: without it, :class:`TypeError`
    here); a lag above ``max_lag`` quarantines it. ``None`` from ``lag``
    means unknown and passes.

    It does not re-implement a pool: limits, waiting, resets, lifetimes and
    fleet budgets are each member's own. It is not thread-safe, and a plain
    ``acquire(readonly=True)`` without a transaction is read-only only because
    the replica is; on the primary fallback, use ``transaction(readonly=True)``
    to have the server enforce it.
    """

    def __init__(
        self,
        primary: Pool[ConnT],
        replicas: Sequence[Pool[ConnT]] = (),
        *,
        fallback_to_primary: bool = True,
        quarantine_initial: float = 1.0,
        quarantine_max: float = 30.0,
        probe_timeout: float | None = None,
        max_lag: float | None = None,
        lag: Callable[[ConnT], Awaitable[float | None]] | None = None,
        lag_check_interval: float = 5.0,
        name: str = "routing",
    ) -> None:
        check_instance("primary", primary, Pool, "an elasticpool.Pool")
        replicas = tuple(replicas)
        for r in replicas:
            check_instance("replicas", r, Pool, "elasticpool.Pool objects")
        members = (primary, *replicas)
        if len({id(p) for p in members}) != len(members):
            raise ValueError("each member pool can be given only once (primary and replicas)")
        check_seconds("quarantine_initial", quarantine_initial)
        check_seconds("quarantine_max", quarantine_max)
        check_seconds("lag_check_interval", lag_check_interval)
        check_seconds("max_lag", max_lag, optional=True)
        if quarantine_max < quarantine_initial:
            raise ValueError(
                f"quarantine_max must be >= quarantine_initial (got quarantine_max="
                f"{quarantine_max!r}, quarantine_initial={quarantine_initial!r})"
            )
        check_seconds("probe_timeout", probe_timeout, optional=True, finite=False)
        check_name("name", name)
        if max_lag is not None and lag is None:
            for r in replicas:  # replay_lag runs through each replica's connector
                fetch_of(r.connector, "RoutingPool(max_lag=...) without lag=")
        self.name = name
        self.fallback_to_primary = fallback_to_primary
        self.quarantine_initial = float(quarantine_initial)
        self.quarantine_max = float(quarantine_max)
        self.probe_timeout = probe_timeout
        self.max_lag = max_lag
        self.lag_check_interval = float(lag_check_interval)
        self._lag: Callable[[ConnT], Awaitable[float | None]] | None = lag
        self._primary = _Member(primary, "primary")
        self._replicas = tuple(_Member(r, "replica") for r in replicas)
        self._rr = 0
        self._reads = 0
        self._writes = 0
        self._fallbacks = 0
        self._state: Lifecycle = NEW  # new → open → closing → closed; or forked (see _forked)
        self._pid = 0  # the process that opened it
        self._runner = Runner(f"routing pool {name!r}")  # the prober and lag checks, while open

    # ------------------------------------------------------------------ members

    @property
    def primary(self) -> Pool[ConnT]:
        """The primary's pool."""
        return self._primary.pool

    @property
    def replicas(self) -> tuple[Pool[ConnT], ...]:
        """The replicas' pools, in the order given."""
        return tuple(m.pool for m in self._replicas)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RoutingPool[ConnT]:
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
        """Open every member pool and start the prober (idempotent)."""
        if self._state is OPEN:
            return
        if self._state is not NEW:
            raise PoolClosed(f"routing pool {self.name!r} is closed and cannot be opened again")
        opened: list[Pool[ConnT]] = []
        try:
            for m in (self._primary, *self._replicas):
                await m.pool.open()
                opened.append(m.pool)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for pool in opened:
                    await pool.close()
            self._state = CLOSED
            raise
        self._pid = os.getpid()
        watch(self, type(self)._forked)
        await self._runner.start()
        self._state = OPEN
        if self.max_lag is not None:
            for m in self._replicas:
                self._runner.start_soon(self._lag_loop, m)

    async def close(self, timeout: float | None = 10.0) -> None:
        """Stop probing and close every member pool, concurrently, each bounded by ``timeout``.

        Calling it again is harmless; it cannot be reopened.
        """
        if self._state is FORKED:  # the parent's prober and members: only mark them closed
            self._state = CLOSED
            for m in (self._primary, *self._replicas):
                m.pool.terminate()
            return
        if self._state in (CLOSING, CLOSED):
            return
        was_open = self._state is OPEN
        self._state = CLOSING
        with anyio.CancelScope(shield=True):
            if was_open:
                await self._runner.stop()
            async with anyio.create_task_group() as tg:
                for m in (self._primary, *self._replicas):
                    tg.start_soon(_close_pool, m.pool, timeout)
            self._state = CLOSED

    def _forked(self) -> None:
        """In a forked child: refuse every use (the member pools give up their own connections)."""
        if self._state in (OPEN, CLOSING):
            self._state = FORKED

    def _check_open(self) -> None:
        if self._state is not OPEN:
            if self._state is FORKED:
                raise forked_error(
                    f"routing pool {self.name!r}",
                    self._pid,
                    "open it after the fork (e.g. in a gunicorn post_fork hook or at worker "
                    "startup); in this process only close() it, which leaves the parent's "
                    "connections alone",
                )
            if self._state is NEW:
                raise RuntimeError(
                    f"routing pool {self.name!r} is not open: use 'async with' or 'await open()'"
                )
            raise PoolClosed(f"routing pool {self.name!r} is closed")

    # ------------------------------------------------------------------ borrowing

    def acquire(
        self, *, readonly: bool = False, timeout: float | None = _DEFAULT
    ) -> _RoutedAcquire[ConnT]:
        """Borrow a connection: ``async with db.acquire(readonly=True) as conn``.

        ``readonly=False`` (the default) borrows from the primary; ``True``
        from a healthy replica, or the primary when none is healthy and
        ``fallback_to_primary`` is on (else :class:`NoReplicaAvailable`).
        ``timeout`` bounds the whole borrow (``None``: no bound; default: the
        first chosen member's ``pool_timeout``). Context manager only: there
        is no ``await db.acquire()``.
        """
        if timeout is not _DEFAULT:
            check_seconds("timeout", timeout, optional=True, finite=False)
        return _RoutedAcquire(self, readonly, timeout)

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, readonly: bool = False, timeout: float | None = _DEFAULT
    ) -> AsyncIterator[ConnT]:
        """Borrow as :meth:`acquire` does, inside a transaction of the serving member's connector.

        ``readonly=True`` makes it a read-only transaction (``BEGIN READ
        ONLY``), wherever it runs: a write in it fails on the primary too.
        COMMIT when the block ends normally, ROLLBACK when it raises.
        """
        lease = self.acquire(readonly=readonly, timeout=timeout)
        async with lease as conn:
            connector = lease.pool.connector
            tx = (
                connector.transaction(conn, readonly=True)
                if readonly
                else connector.transaction(conn)
            )
            async with tx:
                yield conn

    async def _borrow_write(
        self, timeout: float | None
    ) -> tuple[_Member[ConnT], Borrow[ConnT], ConnT]:
        self._check_open()
        member = self._primary
        if timeout is _DEFAULT:
            timeout = member.pool.settings.pool_timeout
        inner = member.pool.acquire(timeout=timeout)
        conn = await inner.__aenter__()
        member.writes += 1
        self._writes += 1
        return member, inner, conn

    async def _borrow_read(
        self, timeout: float | None
    ) -> tuple[_Member[ConnT], Borrow[ConnT], ConnT]:
        self._check_open()
        start = anyio.current_time()
        tried: set[_Member[ConnT]] = set()
        member = self._pick(tried)
        if timeout is _DEFAULT:  # the first chosen member's, the primary's when none is healthy
            timeout = (member or self._primary).pool.settings.pool_timeout
        deadline = math.inf if timeout is None else start + timeout
        while member is not None:
            remaining = self._remaining(deadline, timeout)
            try:
                inner, conn = await self._borrow_watched(member, remaining)
            except _MemberFailed as failed:
                self._quarantine(member, failed.error)
                tried.add(member)
                member = self._pick(tried)
                continue
            member.reads += 1
            self._reads += 1
            return member, inner, conn
        if not self.fallback_to_primary:
            raise NoReplicaAvailable(
                f"routing pool {self.name!r}: no healthy replica "
                f"({self._describe_replicas()}) and fallback_to_primary is off"
            )
        member = self._primary
        inner = member.pool.acquire(timeout=self._remaining(deadline, timeout))
        conn = await inner.__aenter__()
        member.reads += 1
        self._reads += 1
        self._fallbacks += 1
        return member, inner, conn

    def _remaining(self, deadline: float, timeout: float | None) -> float | None:
        if deadline == math.inf:
            return None
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            raise PoolTimeout(
                f"routing pool {self.name!r}: no connection within {timeout:g}s "
                f"(replicas: {self._describe_replicas()})"
            )
        return remaining

    def _pick(self, tried: set[_Member[ConnT]]) -> _Member[ConnT] | None:
        """The least loaded healthy replica not yet tried; round robin among equals."""
        replicas = self._replicas
        n = len(replicas)
        best: _Member[ConnT] | None = None
        best_load = math.inf
        for i in range(n):
            m = replicas[(self._rr + i) % n]
            if not m.healthy or m in tried:
                continue
            load = m.load()
            if best is None or load < best_load:
                best, best_load = m, load
        if n:
            self._rr = (self._rr + 1) % n
        return best

    async def _borrow_watched(
        self, member: _Member[ConnT], timeout: float | None
    ) -> tuple[Borrow[ConnT], ConnT]:
        """Borrow from ``member``; raise :class:`_MemberFailed` if its connects fail meanwhile.

        A waiting read leaves the member's queue at once then (a cancelled
        waiter passes on anything handed to it), rather than waiting out its
        timeout on a replica that is down.
        """
        pool = member.pool
        errors = pool.connect_errors
        inner = pool.acquire(timeout=timeout)
        got: list[ConnT] = []
        failed = False
        error: Exception | None = None

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal failed
            while pool.connect_errors == errors:  # noqa: ASYNC110 - the pool has no event for it
                await anyio.sleep(_WATCH_INTERVAL)
            failed = True
            scope.cancel()

        # Errors are kept and raised after the task group, never wrapped in a group.
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            try:
                got.append(await inner.__aenter__())
            except Exception as exc:
                error = exc
            tg.cancel_scope.cancel()
        if got:
            return inner, got[0]
        if isinstance(error, (PoolTimeout, PoolClosed, TooManyWaiters)):
            raise error  # busy or closed, not down
        if error is not None:  # fail_fast: the connect error itself
            raise _MemberFailed(error) from error
        assert failed
        raise _MemberFailed(pool.last_connect_error)

    # ------------------------------------------------------------------ health

    def _quarantine(
        self, member: _Member[ConnT], error: BaseException | None, reason: str | None = None
    ) -> None:
        """Take a replica out of rotation and have the prober try it after a backoff."""
        if member.role != "replica" or not member.healthy:
            return
        member.healthy = False
        member.quarantines += 1
        if reason is None and error is not None:
            reason = type(error).__name__
        member.last_error = reason
        member.backoff = self.quarantine_initial
        member.until = anyio.current_time() + member.backoff
        logger.warning(
            "routing pool %r: replica %r quarantined for %gs after %s",
            self.name,
            member.pool.name,
            member.backoff,
            repr(error) if error is not None else reason,
        )
        if self._runner.tg is not None and not member.probing:
            member.probing = True
            self._runner.start_soon(self._probe_loop, member)

    async def _probe_loop(self, member: _Member[ConnT]) -> None:
        try:
            while not member.healthy:
                await anyio.sleep(max(0.0, member.until - anyio.current_time()))
                if await self._probe(member):
                    member.healthy = True
                    member.until = -math.inf
                    logger.info(
                        "routing pool %r: replica %r is back in rotation",
                        self.name,
                        member.pool.name,
                    )
                    return
                member.backoff = min(member.backoff * 2, self.quarantine_max)
                member.until = anyio.current_time() + member.backoff
        finally:
            member.probing = False

    def _probe_bound(self, member: _Member[ConnT]) -> float:
        s = member.pool.settings
        return self.probe_timeout or s.pool_timeout or s.connect_timeout

    async def _probe(self, member: _Member[ConnT]) -> bool:
        """Whether ``member`` serves again: idle ones checked, one borrowed, pinged, lag checked."""
        pool = member.pool
        bound = self._probe_bound(member)
        with anyio.move_on_after(bound):
            try:
                await pool.check()
                inner, conn = await self._borrow_watched(member, bound)
                async with _entered(inner):
                    await pool.connector.ping(conn)
                    lag = None if self.max_lag is None else await self._lag_of(member, conn)
            except Exception as exc:
                logger.debug(
                    "routing pool %r: probe of replica %r failed: %r", self.name, pool.name, exc
                )
                return False
            if lag is not None and self.max_lag is not None and lag > self.max_lag:
                logger.debug(
                    "routing pool %r: replica %r still %gs behind", self.name, pool.name, lag
                )
                return False
            return True
        return False

    async def _lag_of(self, member: _Member[ConnT], conn: ConnT) -> float | None:
        """``member``'s replay lag on ``conn``: the ``lag`` function, or :func:`replay_lag`."""
        if self._lag is not None:
            return await self._lag(conn)
        return await replay_lag(conn, connector=member.pool.connector)

    async def _lag_loop(self, member: _Member[ConnT]) -> None:
        """Every ``lag_check_interval``: quarantine ``member`` if it lags more than ``max_lag``."""
        assert self.max_lag is not None
        pool = member.pool
        while True:
            await anyio.sleep(self.lag_check_interval)
            if not member.healthy:
                continue  # the probe checks the lag before it comes back
            bound = self._probe_bound(member)
            lag: float | None = None
            with anyio.move_on_after(bound):
                try:
                    inner, conn = await self._borrow_watched(member, bound)
                    async with _entered(inner):
                        lag = await self._lag_of(member, conn)
                except _MemberFailed as failed:
                    self._quarantine(member, failed.error)
                except Exception as exc:
                    if pool.connector.is_disconnect(exc):
                        self._quarantine(member, exc)
                    else:
                        logger.debug(
                            "routing pool %r: lag check of replica %r failed: %r",
                            self.name,
                            pool.name,
                            exc,
                        )
            if lag is not None and lag > self.max_lag:
                self._quarantine(member, None, _LAG_REASON)

    # ------------------------------------------------------------------ inspection

    def stats(self) -> RoutingStats:
        """A frozen snapshot: each member's routing state and pool stats, and routing counters."""
        now = anyio.current_time() if self._state is OPEN else -math.inf
        replicas = tuple(self._member_stats(m, now) for m in self._replicas)
        return RoutingStats(
            name=self.name,
            primary=self._member_stats(self._primary, now),
            replicas=replicas,
            reads=self._reads,
            writes=self._writes,
            fallbacks=self._fallbacks,
            healthy_replicas=sum(1 for r in replicas if r.healthy),
        )

    @staticmethod
    def _member_stats(m: _Member[ConnT], now: float) -> RoutingMemberStats:
        retry_in = 0.0 if m.healthy or m.until == -math.inf else max(0.0, m.until - now)
        return RoutingMemberStats(
            name=m.pool.name,
            role=m.role,
            healthy=m.healthy,
            quarantines=m.quarantines,
            retry_in=retry_in,
            last_error=m.last_error,
            reads=m.reads,
            writes=m.writes,
            pool=m.pool.stats(),
        )

    def _describe_replicas(self) -> str:
        healthy = sum(1 for m in self._replicas if m.healthy)
        return f"{healthy} of {len(self._replicas)} healthy"

    def __repr__(self) -> str:
        state = "" if self._state is OPEN else f" {self._state.value}"
        return (
            f"<RoutingPool {self.name!r}{state} [primary {self._primary.pool.name!r} | "
            f"replicas {self._describe_replicas()} | reads {self._reads}, "
            f"writes {self._writes}, fallbacks {self._fallbacks}]>"
        )


@contextlib.asynccontextmanager
async def _entered(inner: Borrow[Any]) -> AsyncIterator[None]:
    """Release an already entered borrow on exit, passing on the error it met."""
    try:
        yield
    except BaseException as exc:
        await inner.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await inner.__aexit__(None, None, None)


async def _close_pool(pool: Pool[Any], timeout: float | None) -> None:
    try:
        await pool.close(timeout)
    except Exception as exc:  # pragma: no cover - a bug in a member pool
        logger.warning("closing pool %r failed: %r", pool.name, exc)
