""":class:`AsyncConnectionPool`, the psycopg_pool look-alike, and what only it needs."""

from __future__ import annotations

import asyncio
import inspect
import logging
import warnings
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from time import monotonic
from types import TracebackType
from typing import Any, Final, Generic, TypeAlias

import anyio
import anyio.lowlevel
import psycopg
from psycopg_pool.abc import ACT

from .. import _errors
from .._connector import ResetMode
from .._pool import Pool
from .._runner import spawn
from .._stats import PoolStats
from .._validate import check_seconds_type
from ..fleet._base import Membership
from ._connector import (
    _ASYNC_CONNECTION,
    ConnectionCB,
    ConninfoParam,
    KwargsParam,
    PsycopgConnector,
)
from ._errors import PoolClosed, PoolTimeout, TooManyRequests
from ._face_args import (
    FaceStats,
    check_size,
    face_settings,
    pool_numbers,
    seconds,
)
from ._reset import check_connection
from ._wire import _ACTIVE, _BAD, _IDLE, _INERROR, _INTRANS, _OK, _UNKNOWN, _status_name

logger = logging.getLogger("elasticpool")
peer_logger = logging.getLogger("psycopg.pool")
"""psycopg_pool's logger: the face logs psycopg_pool's own messages there, with its texts."""


ReconnectFailedCB: TypeAlias = Callable[["AsyncConnectionPool[Any]"], Awaitable[None] | None]
"""``reconnect_failed(pool)``, sync or async."""


_AENTER: Final = psycopg.AsyncConnection.__aenter__
_AEXIT: Final = psycopg.AsyncConnection.__aexit__


def _exit_is_a_no_op(conn: Any) -> bool:
    """Whether psycopg's ``async with conn`` exit would do nothing now (no I/O, no error).

    So it is when the connection class keeps psycopg's ``__aexit__`` and the
    connection is closed, or belongs to a pool and is idle outside any
    ``transaction()`` block, two-phase transaction or pipeline: then its
    ``commit()`` or ``rollback()`` returns at once (after taking the
    connection's lock, which the fast path skips); the common case in
    autocommit.
    """
    if type(conn).__aexit__ is not _AEXIT:
        return False
    pgconn = conn.pgconn
    if pgconn.status != _OK:
        return True  # closed: psycopg's __aexit__ returns at once
    return (
        pgconn.transaction_status == _IDLE
        and not conn._num_transactions
        and not conn._tpc
        and not conn._pipeline
        and bool(getattr(conn, "_pool", None))
    )


# =============================================================================
# the psycopg_pool look-alike
# =============================================================================


_RECENT: Final = 0.01
"""Seconds after its return within which a connection is lent without a look at its socket.

The sync pool's window too (``_sync_pool._PROBE_AFTER``), for HikariCP's
reason (``aliveBypassWindowMs``): a connection used a moment ago is as good
as psycopg's own flags say, and the look is a system call per borrow.
"""


class _FaceConnector(PsycopgConnector[ACT]):
    """The face's connector: reports connect outcomes, for ``reconnect_failed``.

    And it skips the look at the socket (:meth:`is_closed`) for a connection
    given back less than :data:`_RECENT` seconds ago, as the sync pool does:
    a connection handed straight from one borrower to the next, or reused at
    once, is checked by psycopg's flags only. A session the server ends in
    those few milliseconds fails its borrower's first query with a
    connection error, which evicts it (psycopg_pool, at its defaults, looks
    at no connection before lending it).
    """

    def __init__(self, face: AsyncConnectionPool[ACT], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._face = weakref.ref(face)

    async def connect(self) -> ACT:
        try:
            conn = await super().connect()
        except Exception as exc:
            face = self._face()
            if face is not None:
                face._connect_failed(exc)
            raise
        face = self._face()
        if face is not None:
            face._connect_ok()
        return conn

    def closed_on_return(self, conn: ACT) -> bool:
        """The connector's check of a connection coming back; notes when it came back."""
        c: Any = conn  # (an attribute of the face's own on psycopg's connection)
        c._elasticpool_returned = monotonic()
        pgconn = c.pgconn
        return pgconn.status == _BAD or pgconn.transaction_status in (_ACTIVE, _UNKNOWN)

    def is_closed(self, conn: ACT) -> bool:
        """The connector's check, without the socket's for a connection back a moment ago."""
        c: Any = conn
        pgconn = c.pgconn
        if monotonic() - getattr(c, "_elasticpool_returned", -_RECENT) < _RECENT:
            return pgconn.status == _BAD or pgconn.transaction_status in (_ACTIVE, _UNKNOWN)
        return super().is_closed(conn)


class AsyncConnectionPool(FaceStats, Generic[ACT]):
    """A drop-in for :class:`psycopg_pool.AsyncConnectionPool` (3.3) on an elastic pool.

    Same constructor, attributes, methods, errors and statistics as
    psycopg_pool's async pool, with psycopg_pool's semantics, and psycopg's
    own :class:`~psycopg.AsyncConnection` handed out. Underneath is an
    :class:`elasticpool.Pool` (:attr:`elastic`), so the pool grows only for
    callers it cannot serve, shrinks per connection after ``max_idle``, never
    stops reconnecting, and serves waiters strictly first come, first served.

    Parameters map as follows (``docs/migrate-psycopg.md`` has the details):
    ``min_size`` → ``min_connections``; ``max_size`` (``None``: ``min_size``)
    → ``max_connections``; ``timeout`` → ``pool_timeout``; ``max_waiting``
    (0: unbounded) → ``max_waiting``; ``max_lifetime`` →
    ``connection_lifetime`` (jitter 5 %, as psycopg_pool); ``max_idle`` →
    ``idle_timeout``; ``num_workers`` → ``max_connecting``; ``check`` given →
    ``ping_after=0`` (checked on every borrow, as psycopg_pool does), not
    given → ``ping_after=None`` (no check, as psycopg_pool).
    A connection given back is rolled back, closed or reset (``reset``) as
    psycopg_pool does, before ``putconn()`` returns, with its warnings on the
    ``psycopg.pool`` logger. ``reset_mode`` (elasticpool's, default
    ``"rollback"``: that and nothing more) may be ``"session"`` for a full
    session reset afterwards, in the background. ``membership`` (a
    :class:`~elasticpool.PostgresMembership`, say) makes it a member of a
    fleet sharing ``total_max_connections``, with sync pools of the same
    name too; any other :class:`~elasticpool.PoolSettings` field may be
    passed by keyword.
    Idle connections are lent without yielding to the event loop, in turn
    (least recently used first) when ``min_size == max_size``, else most
    recently used first so the surplus ages out.

    ``reconnect_failed(pool)`` is called once per streak of failing connects
    that lasts longer than ``reconnect_timeout``; unlike psycopg_pool, the
    pool does not give up then and keeps reconnecting with backoff.

    Errors are :class:`PoolTimeout`, :class:`PoolClosed` and
    :class:`TooManyRequests` of this module: each is both psycopg_pool's and
    elasticpool's class of that name.

    It is not the sync ``ConnectionPool`` nor a null pool, and it has no
    maintenance workers: ``run_task``, ``schedule_task`` and ``worker`` do not
    exist.
    """

    def __init__(
        self,
        conninfo: ConninfoParam = "",
        *,
        connection_class: type[ACT] = _ASYNC_CONNECTION,
        kwargs: KwargsParam | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: ConnectionCB[ACT] | None = None,
        check: ConnectionCB[ACT] | None = None,
        reset: ConnectionCB[ACT] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: ReconnectFailedCB | None = None,
        num_workers: int = 3,
        reset_mode: ResetMode = "rollback",
        membership: Membership | None = None,
        **elastic_settings: Any,
    ) -> None:
        max_size_given = max_size is not None
        total = elastic_settings.get("total_max_connections") is not None
        min_size, max_size = check_size(min_size, max_size, total=total and not max_size_given)
        if not name:
            name = f"pool-{next(pool_numbers)}"
        check_seconds_type("reconnect_timeout", reconnect_timeout, strict=False, finite=False)
        pool_settings = face_settings(
            min_size=min_size,
            max_size=max_size,
            max_size_given=max_size_given,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            num_workers=num_workers,
            reset_mode=reset_mode,
            check_given=check is not None,
            close_returns=close_returns,
            elastic_settings=elastic_settings,
        )
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self.name = name
        self.close_returns = close_returns
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.reconnect_timeout = reconnect_timeout
        self.num_workers = num_workers
        self._min_size = min_size
        self._max_size = max_size
        self._reconnect_failed = reconnect_failed
        self._reset = reset

        connector: _FaceConnector[ACT] = _FaceConnector(
            self,
            conninfo=conninfo,
            kwargs=kwargs,
            connection_class=connection_class,
            configure=configure,
            check=check,
        )
        self._connector = connector
        self.elastic: Pool[ACT] = Pool(connector, pool_settings, membership=membership, name=name)
        """The :class:`elasticpool.Pool` underneath (its ``stats()``, ``transaction()``…)."""
        # Lend an idle connection with no checkpoint, as psycopg_pool does, when no
        # health check is due on borrow (see _take_idle).
        self._lend_at_once = pool_settings.ping_after is None
        self._reuse_in_turn()

        # psycopg_pool's lifecycle flags: closed until opened; opened at most once.
        self._closed = True
        self._opened = False
        self._open_implicit = False
        self._core_started = False

        self._init_stats()

        # reconnect_failed: the current streak of failing connects
        self._failing_since: float | None = None
        self._streak_reported = False

        if open:
            self._warn_open_async()
        if open is None:
            open = self._open_implicit = True
        if open:
            self._open_in_background()

    # ------------------------------------------------------------------ read-only attributes

    @property
    def min_size(self) -> int:
        """The warm floor (psycopg_pool's ``min_size``)."""
        return self._min_size

    @property
    def max_size(self) -> int:
        """The limit (psycopg_pool's ``max_size``)."""
        return self._max_size

    @property
    def closed(self) -> bool:
        """``True`` before :meth:`open` and after :meth:`close`, as in psycopg_pool."""
        return self._closed

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} at 0x{id(self):x}>"

    # ------------------------------------------------------------------ lifecycle

    def _warn_open_async(self) -> None:
        warnings.warn(
            f"opening the async pool {type(self).__name__} in the constructor"
            " is deprecated and will not be supported anymore in a future"
            " release. Please use `await pool.open()`, or use the pool as context"
            f" manager using: `async with {type(self).__name__}(...) as pool: `...",
            RuntimeWarning,
            stacklevel=3,
        )

    def _mark_open(self) -> bool:
        """Flip to open (psycopg_pool's ``_open``); ``False`` if it already was."""
        if not self._closed:
            return False
        if self._opened:
            raise PoolClosed("pool has already been opened/closed and cannot be reused")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(f"{type(self).__name__} open with no running loop") from None
        self._closed = False
        self._opened = True
        return True

    def _open_in_background(self) -> None:
        """The constructor's open: start the pool in a task, as psycopg_pool starts its workers."""
        if self._mark_open():
            self._spawn(self._start_in_background())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        spawn(coro, f"pool {self.name!r}")  # kept referenced; a failure is logged

    async def _start(self) -> None:
        """Open the elastic pool once; concurrent callers wait for the same open."""
        if not self._core_started:
            await self.elastic.open()
            self._core_started = True

    async def _start_in_background(self) -> None:
        with suppress(_errors.PoolClosed):  # closed before this task got to run: nothing to do
            await self._start()

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool; with ``wait``, also wait (``timeout`` seconds at most) for ``min_size``.

        Opening an open pool does nothing; a closed pool cannot be reopened
        (:class:`PoolClosed`).
        """
        self._mark_open()
        await self._start()
        if wait:
            await self.wait(timeout=timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open.

        After ``timeout`` seconds the pool is closed and :class:`PoolTimeout`
        raised, as in psycopg_pool (``__cause__``: the last connect error).
        """
        self._check_open_getconn()
        await self._start()
        try:
            await self.elastic.wait(timeout=seconds(timeout))
        except _errors.PoolTimeout as exc:
            await self.close()
            raise PoolTimeout(
                f"pool initialization incomplete after {timeout} sec; {exc}"
            ) from exc.__cause__

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiting and future callers get :class:`PoolClosed`.

        Idle connections are closed now. As in psycopg_pool, connections in
        use stay usable until they are returned, and are closed then. With
        none in use it returns once everything is closed, within ``timeout``
        seconds.
        """
        if self._closed:
            return
        self._closed = True
        await self._start()
        if self.elastic.lent == 0:  # a heartbeat's statement ends with the pool
            await self.elastic.close(timeout=seconds(timeout))
            return
        # Borrowed connections must not be cut off under their holders: the
        # elastic pool's close waits for them, in the background.
        self._spawn(self.elastic.close(timeout=None))
        await anyio.lowlevel.checkpoint()  # it starts: waiters fail, idle connections close

    async def __aenter__(self) -> AsyncConnectionPool[ACT]:
        self._open_implicit = False
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _check_open_getconn(self) -> None:
        if self._closed:
            if self._opened:
                raise PoolClosed(f"the pool {self.name!r} is already closed")
            raise PoolClosed(f"the pool {self.name!r} is not open yet")
        if self._open_implicit:
            self._open_implicit = False
            self._warn_open_async()

    # ------------------------------------------------------------------ borrowing

    def connection(self, timeout: float | None = None) -> _ConnectionContext[ACT]:
        """Borrow a connection for the block: ``async with pool.connection() as conn``.

        As in psycopg_pool: the block runs in psycopg's connection context
        (COMMIT at a clean exit, ROLLBACK on an error) and the connection goes
        back afterwards. A connection-class error (see
        :func:`is_disconnect_error`) also closes it, so it is not reused.
        """
        return _ConnectionContext(self, timeout)

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Borrow a connection; give it back with :meth:`putconn`.

        Waits up to ``timeout`` (``None``: :attr:`timeout`) seconds, then
        raises :class:`PoolTimeout`; :class:`TooManyRequests` at once if
        ``max_waiting`` callers already wait; :class:`PoolClosed` if closed.
        As in psycopg_pool, a connection ready at once is lent without
        yielding to the event loop (unless a ``check`` or ``ping_after``
        asks for a health check first): only a caller that must wait waits.
        """
        if timeout is None:
            timeout = self.timeout
        self._requests_num += 1
        if self._closed or self._open_implicit:
            self._check_open_getconn()
        if not self._core_started:
            await self._start()
        if timeout <= 0:
            raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")
        elastic = self.elastic
        conn: ACT | None = None
        try:
            if self._lend_at_once:
                conn = self._take_idle()
            if conn is None:
                now = elastic.clock  # the loop's clock, bound at open: anyio's costs ~1 us
                started = now()
                wait = seconds(timeout)
                try:
                    # The pool's own timeout (the usual case) passes no argument:
                    # acquire() then checks none.
                    if wait == elastic.settings.pool_timeout:
                        conn = await elastic.acquire()
                    else:
                        conn = await elastic.acquire(timeout=wait)
                finally:
                    # psycopg_pool adds each queued request's wait, failed or not, in
                    # whole ms; a request served at once adds ~0.
                    self._wait_ms += int(1000.0 * (now() - started))
        except _errors.PoolTimeout as exc:
            self._requests_errors += 1
            raise PoolTimeout(
                f"couldn't get a connection after {timeout:.2f} sec; {exc}"
            ) from exc.__cause__
        except _errors.TooManyWaiters as exc:
            self._requests_errors += 1
            raise TooManyRequests(
                f"the pool {self.name!r} has already {elastic.stats().waiting}"
                f" requests waiting; {exc}"
            ) from None
        except _errors.PoolClosed as exc:
            self._requests_errors += 1
            raise PoolClosed(f"the pool {self.name!r} is already closed; {exc}") from None
        except BaseException:
            self._requests_errors += 1
            raise
        # As psycopg_pool: ``async with conn`` then does not close it, and
        # ``conn.close()`` returns it when ``close_returns`` is set.
        conn._pool = self  # type: ignore[assignment]  # (not cast(): a call per borrow)
        return conn

    def _getconn_now(self, timeout: float | None) -> ACT | None:
        """:meth:`getconn` for an open pool with an idle connection to lend at once, or ``None``.

        ``None`` (having counted nothing) whenever :meth:`getconn` has more to
        do: the pool not open yet or closed, a warning due, a check due on
        borrow, no idle connection, or a non-positive ``timeout``.
        """
        if (
            self._closed
            or self._open_implicit
            or not self._core_started
            or not self._lend_at_once
            or (timeout is not None and timeout <= 0)
        ):
            return None
        elastic = self.elastic
        if elastic.waiting:  # callers queue (no barging): so does this one, with no raise
            return None
        try:
            conn = elastic.acquire_nowait()  # _take_idle(), inlined for its usual case
        except anyio.WouldBlock:
            return None
        except (_errors.PoolClosed, RuntimeError):
            return None  # closing under us: getconn() raises psycopg_pool's error
        if self._connector.is_closed(conn):
            elastic.release(conn)  # closed: evicted, never lent; getconn() tries the next
            self._found_closed += 1
            return None
        self._requests_num += 1
        conn._pool = self  # type: ignore[assignment]
        return conn

    def _take_idle(self) -> ACT | None:
        """An idle connection lent at once (no checkpoint), or ``None``: then the caller waits.

        :meth:`elasticpool.Pool.acquire_nowait` never barges past queued
        callers and does not ping, so this runs only without ``ping_after``
        (the face's default, as psycopg_pool checks nothing unless given
        ``check``); a connection the connector finds closed is given back,
        evicted, and the next one tried.
        """
        elastic = self.elastic
        if elastic.waiting:  # callers queue (no barging): so does this one, with no raise
            return None
        is_closed = self._connector.is_closed
        while True:
            try:
                conn = elastic.acquire_nowait()
            except anyio.WouldBlock:
                return None
            if not is_closed(conn):
                return conn
            elastic.release(conn)  # closed: evicted, never lent
            self._found_closed += 1  # a lost connection (the core counts a bad return)

    async def putconn(self, conn: ACT) -> None:
        """Give back a connection borrowed with :meth:`getconn`.

        A connection not borrowed from this pool raises :class:`ValueError`
        (psycopg_pool's message), and so does a stale one: returned by this
        task already and borrowed by another since (see
        :meth:`elasticpool.Pool.release`); that borrow stands. As in
        psycopg_pool, a connection given back in a transaction is rolled back
        here, one given back mid-query is closed, the ``reset`` callback runs,
        and a pool already closed closes the connection, each with
        psycopg_pool's warnings on the ``psycopg.pool`` logger; a connection
        given back idle (the usual case) costs no await. Whatever is raised or
        cancelled on the way, the connection is given back to the pool.
        """
        await self._return(conn, None)

    async def _return(self, conn: ACT, error: BaseException | None) -> None:
        if not self._return_now(conn, error):
            await self._return_tidied(conn, error)

    def _return_now(self, conn: ACT, error: BaseException | None) -> bool:
        """Give back a connection that needs no tidying (idle, open pool, no ``reset``).

        ``False``, having done nothing, if it needs :meth:`_return_tidied`.
        Raises :class:`ValueError` for a foreign or stale connection.
        """
        pool = getattr(conn, "_pool", None)
        if pool is not self:
            msg = f"it comes from pool {pool.name!r}" if pool else "it doesn't come from any pool"
            raise ValueError(f"can't return connection to pool {self.name!r}, {msg}: {conn}")
        pgconn = conn.pgconn
        if (
            self._closed
            or self._reset is not None
            or pgconn.status != _OK
            or pgconn.transaction_status != _IDLE
        ):
            return False
        try:
            self.elastic.release(conn, exc=error)
        except RuntimeError as exc:  # stale (see Pool.release): that borrow stands
            raise ValueError(f"can't return connection to pool {self.name!r}; {exc}") from None
        conn._pool = None
        return True

    async def _return_tidied(self, conn: ACT, error: BaseException | None) -> None:
        elastic = self.elastic
        try:
            elastic.check_release(conn, what="returned")
        except RuntimeError as exc:  # stale (see Pool.release): that borrow stands
            raise ValueError(f"can't return connection to pool {self.name!r}; {exc}") from None
        try:
            await self._tidy(conn)
        finally:
            conn._pool = None
            elastic.release(conn, exc=error)

    async def _tidy(self, conn: ACT) -> None:
        """psycopg_pool's return of a connection that is not simply idle, with its warnings.

        A closed pool closes it. Else a transaction is rolled back (closed if
        that fails), a query under way gets it closed (the connector also
        cancels the query on the server), then the ``reset`` callback runs
        (closed if it fails or leaves a transaction). A connection closed by
        then is reported as psycopg_pool does: discarded. Cancellation is not
        swallowed (psycopg_pool's is): it propagates, and the pool closes a
        connection it left in an unknown state.
        """
        if self._closed:
            await self._connector.close(conn)
            return
        status = conn.pgconn.transaction_status
        if status in (_INTRANS, _INERROR):
            peer_logger.warning("rolling back returned connection: %s", conn)
            try:
                await conn.rollback()
            except Exception as ex:
                peer_logger.warning(
                    "rollback failed: %s: %s. Discarding connection %s",
                    ex.__class__.__name__,
                    ex,
                    conn,
                )
                await self._connector.close(conn)
        elif status == _ACTIVE:
            peer_logger.warning("closing returned connection: %s", conn)
            await self._connector.close(conn)
        reset = self._reset
        if reset is not None and not conn.closed:
            try:
                await reset(conn)
                if conn.pgconn.transaction_status != _IDLE:
                    raise psycopg.ProgrammingError(
                        f"connection left in status {_status_name(conn)} by reset function"
                        f" {reset}: discarded"
                    )
            except Exception as ex:
                peer_logger.warning("error resetting connection: %s", ex)
                await self._connector.close(conn)
        if conn.closed or conn.pgconn.transaction_status == _UNKNOWN:
            peer_logger.warning("discarding closed connection: %s", conn)

    # ------------------------------------------------------------------ maintenance

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size`` and ``max_size`` now (``max_size`` ``None``: ``min_size``).

        A raised limit serves waiters at once; a lowered one closes idle
        surplus now and borrowed surplus as it comes back.
        """
        min_size, max_size = check_size(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        await self.elastic.resize(max_size, min_connections=min_size)
        self._min_size = min_size
        self._max_size = max_size
        self._reuse_in_turn()

    def _reuse_in_turn(self) -> None:
        """Lend idle connections least recently used first when the pool cannot shrink.

        psycopg_pool uses its connections in turn (a queue). With ``min_size ==
        max_size`` (its default) nothing ages out, so the face does the same;
        with room to shrink it lends the most recently used one, so that the
        surplus sits idle and closes after ``max_idle`` (psycopg_pool shrinks
        by counting unused connections instead).
        """
        self.elastic.set_reuse_order(lru=self._min_size == self._max_size)

    async def check(self) -> None:
        """Check every idle connection now; broken ones are closed and replaced as needed.

        On a closed pool it does nothing.
        """
        if self._closed:
            return
        await self._start()
        await self.elastic.check()

    async def drain(self) -> None:
        """Close every idle connection now, and every borrowed one when it comes back.

        Connections are made afresh as callers need them (and up to
        ``min_size`` in the background). On a closed pool it does nothing.
        """
        if self._closed:
            return
        await self._start()
        await self.elastic.expire_connections()

    @staticmethod
    async def check_connection(conn: ACT) -> None:
        """psycopg_pool's check: an empty query in autocommit; raises if ``conn`` is unusable.

        Use it as ``check=AsyncConnectionPool.check_connection``.
        """
        await check_connection(conn)

    async def reconnect_failed(self) -> None:
        """Called when connects have been failing for longer than ``reconnect_timeout``."""
        if self._reconnect_failed is None:
            return
        result = self._reconnect_failed(self)
        if inspect.isawaitable(result):
            await result

    def _connect_failed(self, exc: Exception) -> None:
        """psycopg_pool's warnings for a failed connect, and ``reconnect_failed`` once per streak.

        Each failed attempt is logged as psycopg_pool logs it; a streak that
        outlasts ``reconnect_timeout`` is reported once with psycopg_pool's
        "reconnection attempt ... failed" text and ``reconnect_failed`` is
        called, but the pool keeps reconnecting (with backoff) instead of
        giving up.
        """
        peer_logger.warning("error connecting in %r: %s", self.name, exc)
        now = anyio.current_time()
        if self._failing_since is None:
            self._failing_since = now
            self._streak_reported = False
        elif not self._streak_reported and now - self._failing_since >= self.reconnect_timeout:
            self._streak_reported = True
            peer_logger.warning(
                "reconnection attempt in pool %r failed after %s sec",
                self.name,
                self.reconnect_timeout,
            )
            self._spawn(self.reconnect_failed())

    def _connect_ok(self) -> None:
        self._failing_since = None

    # ------------------------------------------------------------------ statistics

    def _elastic_stats(self) -> PoolStats:
        return self.elastic.stats()


class _ConnectionContext(Generic[ACT]):
    """What :meth:`AsyncConnectionPool.connection` returns: ``async with`` borrows for a block.

    A class rather than ``@asynccontextmanager``: a generator per borrow costs
    more than the borrow itself on the fast path.
    """

    __slots__ = ("_conn", "_pool", "_started", "_timeout")

    def __init__(self, face: AsyncConnectionPool[ACT], timeout: float | None) -> None:
        self._pool = face
        self._timeout = timeout
        self._conn: ACT | None = None
        self._started = 0.0

    async def __aenter__(self) -> ACT:
        face = self._pool
        conn = face._getconn_now(self._timeout)  # (no coroutine on the usual path)
        if conn is None:
            conn = await face.getconn(timeout=self._timeout)
        self._conn = conn
        self._started = monotonic()
        if type(conn).__aenter__ is not _AENTER:  # psycopg's own just returns the connection
            try:
                await conn.__aenter__()
            except BaseException as exc:
                self._conn = None
                await face._return(conn, exc)
                raise
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        face = self._pool
        error = exc  # a connection-class error evicts it on release
        try:
            # _exit_is_a_no_op(conn), inlined for its usual answer: this runs per borrow.
            c: Any = conn  # (psycopg's private attributes)
            pgconn = c.pgconn
            if not (
                pgconn.transaction_status == _IDLE
                and pgconn.status == _OK
                and type(c).__aexit__ is _AEXIT
                and not c._num_transactions
                and not c._tpc
                and not c._pipeline
                and c._pool is face
            ) and not _exit_is_a_no_op(conn):
                await conn.__aexit__(exc_type, exc, tb)  # COMMIT, or ROLLBACK on an error
        except BaseException as raised:
            error = raised
            raise
        finally:
            face._usage_ms += int(1000.0 * (monotonic() - self._started))
            face._usages += 1
            if not face._return_now(conn, error):  # (no coroutine on the usual path)
                await face._return_tidied(conn, error)
