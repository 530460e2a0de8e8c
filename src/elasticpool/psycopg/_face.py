""":class:`AsyncConnectionPool`, the psycopg_pool look-alike, and what only it needs."""

from __future__ import annotations

import asyncio
import inspect
import logging
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Generic, TypeAlias, cast

import anyio
import anyio.lowlevel
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
    log_returned_state,
    pool_numbers,
    seconds,
)
from ._reset import check_connection

logger = logging.getLogger("elasticpool")


ReconnectFailedCB: TypeAlias = Callable[["AsyncConnectionPool[Any]"], Awaitable[None] | None]
"""``reconnect_failed(pool)``, sync or async."""


# =============================================================================
# the psycopg_pool look-alike
# =============================================================================


class _FaceConnector(PsycopgConnector[ACT]):
    """The face's connector: reports connect outcomes, for ``reconnect_failed``."""

    def __init__(self, face: AsyncConnectionPool[ACT], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._face = weakref.ref(face)

    async def connect(self) -> ACT:
        try:
            conn = await super().connect()
        except Exception:
            face = self._face()
            if face is not None:
                face._connect_failed()
            raise
        face = self._face()
        if face is not None:
            face._connect_ok()
        return conn


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
    ``ping_after=0`` (checked on every borrow, as psycopg_pool does).
    ``reset_mode`` (elasticpool's, default ``"rollback"`` as psycopg_pool
    does) may be ``"session"`` for a full session reset. ``membership`` (a
    :class:`~elasticpool.PostgresMembership`, say) makes it a member of a
    fleet sharing ``total_max_connections``, with sync pools of the same
    name too; any other :class:`~elasticpool.PoolSettings` field may be
    passed by keyword.

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

        connector: _FaceConnector[ACT] = _FaceConnector(
            self,
            conninfo=conninfo,
            kwargs=kwargs,
            connection_class=connection_class,
            configure=configure,
            check=check,
            reset=reset,
        )
        self._connector = connector
        self.elastic: Pool[ACT] = Pool(connector, pool_settings, membership=membership, name=name)
        """The :class:`elasticpool.Pool` underneath (its ``stats()``, ``transaction()``…)."""

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

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[ACT]:
        """Borrow a connection for the block: ``async with pool.connection() as conn``.

        As in psycopg_pool: the block runs in psycopg's connection context
        (COMMIT at a clean exit, ROLLBACK on an error) and the connection goes
        back afterwards. A connection-class error (see
        :func:`is_disconnect_error`) also closes it, so it is not reused.
        """
        conn = await self.getconn(timeout=timeout)
        now = self.elastic.clock  # the loop's clock, bound at open: anyio's costs ~1 us a call
        started = now()
        error: BaseException | None = None
        try:
            async with conn:
                yield conn
        except BaseException as exc:
            error = exc  # a connection-class error evicts it on release
            raise
        finally:
            self._putconn(conn, error)
            self._usage_ms += int(1000.0 * (now() - started))
            self._usages += 1

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Borrow a connection; give it back with :meth:`putconn`.

        Waits up to ``timeout`` (``None``: :attr:`timeout`) seconds, then
        raises :class:`PoolTimeout`; :class:`TooManyRequests` at once if
        ``max_waiting`` callers already wait; :class:`PoolClosed` if closed.
        """
        if timeout is None:
            timeout = self.timeout
        self._requests_num += 1
        self._check_open_getconn()
        await self._start()
        if timeout <= 0:
            raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")
        now = self.elastic.clock  # the loop's clock, bound at open: anyio's costs ~1 us a call
        started = now()
        try:
            conn = await self.elastic.acquire(timeout=seconds(timeout))
        except _errors.PoolTimeout as exc:
            self._requests_errors += 1
            raise PoolTimeout(
                f"couldn't get a connection after {timeout:.2f} sec; {exc}"
            ) from exc.__cause__
        except _errors.TooManyWaiters as exc:
            self._requests_errors += 1
            raise TooManyRequests(
                f"the pool {self.name!r} has already {self.elastic.stats().waiting}"
                f" requests waiting; {exc}"
            ) from None
        except _errors.PoolClosed as exc:
            self._requests_errors += 1
            raise PoolClosed(f"the pool {self.name!r} is already closed; {exc}") from None
        except BaseException:
            self._requests_errors += 1
            raise
        finally:
            # psycopg_pool adds each queued request's wait, failed or not, in whole ms;
            # a request served at once adds ~0.
            self._wait_ms += int(1000.0 * (now() - started))
        # As psycopg_pool: ``async with conn`` then does not close it, and
        # ``conn.close()`` returns it when ``close_returns`` is set.
        cast(Any, conn)._pool = self
        return conn

    async def putconn(self, conn: ACT) -> None:
        """Give back a connection borrowed with :meth:`getconn`.

        A connection not borrowed from this pool raises :class:`ValueError`
        (psycopg_pool's message), and so does a stale one: returned by this
        task already and borrowed by another since (see
        :meth:`elasticpool.Pool.release`); that borrow stands. The hand-back
        itself is synchronous (no await), so a cancelled caller cannot lose
        the connection; the reset runs in the background.
        """
        self._putconn(conn, None)

    def _putconn(self, conn: ACT, error: BaseException | None) -> None:
        pool = getattr(conn, "_pool", None)
        if pool is not self:
            msg = f"it comes from pool {pool.name!r}" if pool else "it doesn't come from any pool"
            raise ValueError(f"can't return connection to pool {self.name!r}, {msg}: {conn}")
        try:
            self.elastic.check_release(conn, what="returned")
        except RuntimeError as exc:  # a stale putconn (see Pool.release): that borrow stands
            raise ValueError(f"can't return connection to pool {self.name!r}; {exc}") from None
        cast(Any, conn)._pool = None
        log_returned_state(conn)
        self.elastic.release(conn, exc=error)

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

    def _connect_failed(self) -> None:
        now = anyio.current_time()
        if self._failing_since is None:
            self._failing_since = now
            self._streak_reported = False
        elif not self._streak_reported and now - self._failing_since >= self.reconnect_timeout:
            self._streak_reported = True
            logger.warning(
                "pool %r: connects have been failing for %.1fs (reconnect_timeout %gs); "
                "still retrying",
                self.name,
                now - self._failing_since,
                self.reconnect_timeout,
            )
            self._spawn(self.reconnect_failed())

    def _connect_ok(self) -> None:
        self._failing_since = None

    # ------------------------------------------------------------------ statistics

    def _elastic_stats(self) -> PoolStats:
        return self.elastic.stats()
