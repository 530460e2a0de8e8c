"""The :class:`asyncpg.Pool` face: :func:`create_pool` and :class:`AsyncpgPool`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import warnings
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import asyncpg
import asyncpg.exceptions
from asyncpg.exceptions import InterfaceError

from .._connector import ResetMode
from .._errors import PoolClosed, PoolTimeout
from .._lifecycle import CLOSED, CLOSING, NEW, OPEN, OPENING, Lifecycle
from .._pool import Borrow, Pool
from .._settings import PoolSettings
from .._stats import PoolStats
from .._validate import check_int_type, check_seconds_type
from ..fleet import Membership
from ._connector import AsyncpgConnector, ConnectionCallback, SessionScope
from ._errors import AsyncpgPoolClosed, _AcquireTimeout

_RESET_MODES = ("none", "rollback", "session")


_SETTINGS_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PoolSettings)}
_SETTINGS_FIELDS = frozenset(_SETTINGS_DEFAULTS)
_RENAMED = {"min_connections": "min_size", "max_connections": "max_size"}


class _Lease:
    """A connection lent by an :class:`AsyncpgPool`, the core borrow that holds it, its timeout."""

    __slots__ = ("acquire", "conn", "timeout")

    def __init__(
        self,
        conn: asyncpg.Connection,
        acquire: Borrow[asyncpg.Connection],
        timeout: float | None,
    ) -> None:
        self.conn = conn
        self.acquire = acquire
        self.timeout = timeout


class AsyncpgPool:
    """An :class:`asyncpg.Pool` look-alike on an elastic :class:`~elasticpool.Pool`.

    Make one with :func:`create_pool` (the arguments are documented there).
    Code written against :class:`asyncpg.Pool`'s public API runs unchanged:
    ``async with pool.acquire() as conn``, ``conn = await pool.acquire()`` /
    ``await pool.release(conn)``, the ``fetch``/``execute``/``copy_*``
    shortcuts, ``close()``, ``terminate()``, ``expire_connections()``,
    ``set_connect_args()``, the ``get_*_size()`` getters and ``is_closing()``.

    Semantics kept from asyncpg: ``await create_pool(...)`` (or ``async with``)
    returns once ``init_size`` (default ``min_size``) connections are open and
    raises the connect error if one fails; ``acquire()`` waits forever unless
    given ``timeout`` (then :class:`asyncio.TimeoutError`); ``setup`` runs
    on every acquire; a released connection is reset before ``release()``
    returns, in the releasing task, with asyncpg's default (transaction rolled
    back, session state cleared) or the ``reset`` callback;
    a connection retires after ``max_queries`` queries; ``close()`` waits for
    every borrowed connection to come back; an acquire on a closed pool raises
    :class:`~asyncpg.exceptions.InterfaceError`; releasing a connection twice
    is harmless and releasing a foreign one raises
    :class:`~asyncpg.exceptions.InterfaceError`; a borrowed connection its
    borrower closes (or that is lost) frees its place at once, released or not.

    What is different, on purpose (see ``docs/migrate-asyncpg.md``):

    * the connection lent is asyncpg's own :class:`asyncpg.Connection`, not a
      proxy: using it after release is not detected (it is a bug all the same);
    * the default reset sends only what the borrower's statements may have
      dirtied (nothing after plain queries; see ``docs/reset.md``), and it
      also resets the role;
    * connections also retire at ``connection_lifetime`` (600 s, jittered), an
      idle one is pinged before reuse after ``ping_after`` (1 s), and a dead
      one is never lent once asyncpg knows it is closed;
    * it grows only for callers it cannot serve and shrinks to ``min_size``
      after ``max_inactive_connection_lifetime``; its limit can change
      (:meth:`resize`, ``total_max_connections`` with a fleet membership);
    * connects are retried in the background with backoff, not once per
      acquire; while they fail and nothing borrowed can come back to serve the
      queue, waiting acquires get the connect error (as in asyncpg).

    It is not thread-safe, and runs on asyncio only.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        init_size: int | None = None,
        min_size: int = 10,
        max_size: int = 10,
        max_queries: int = 50000,
        max_inactive_connection_lifetime: float = 300.0,
        connect: Callable[..., Awaitable[asyncpg.Connection]] | None = None,
        setup: ConnectionCallback | None = None,
        init: ConnectionCallback | None = None,
        reset: ConnectionCallback | ResetMode | None = None,
        loop: Any = None,
        connection_class: type[asyncpg.Connection] = asyncpg.Connection,
        record_class: type[asyncpg.Record] = asyncpg.Record,
        name: str = "asyncpg",
        membership: Membership | None = None,
        **kwargs: Any,
    ) -> None:
        # Wrong types: elasticpool's rule (TypeError naming the argument and its range).
        check_int_type("max_size", max_size, low=1)
        check_int_type("min_size", min_size, low=0)
        check_int_type("init_size", init_size, low=0, optional=True)
        check_int_type("max_queries", max_queries, low=1)
        check_seconds_type(
            "max_inactive_connection_lifetime",
            max_inactive_connection_lifetime,
            strict=False,
            finite=False,
        )
        # Wrong values: asyncpg's own checks, with asyncpg's messages.
        if max_size <= 0:
            raise ValueError("max_size is expected to be greater than zero")
        if min_size < 0:
            raise ValueError("min_size is expected to be greater or equal to zero")
        if min_size > max_size:
            raise ValueError("min_size is greater than max_size")
        if init_size is None:
            init_size = min_size
        if init_size < 0:
            raise ValueError("init_size is expected to be greater or equal to zero")
        if init_size > max_size:
            raise ValueError("init_size is greater than max_size")
        if init_size < min_size:
            raise ValueError("init_size is smaller than min_size")
        if max_queries <= 0:
            raise ValueError("max_queries is expected to be greater than zero")
        if max_inactive_connection_lifetime < 0:
            raise ValueError(
                "max_inactive_connection_lifetime is expected to be greater or equal to zero"
            )
        if not (
            isinstance(connection_class, type) and issubclass(connection_class, asyncpg.Connection)
        ):
            raise TypeError(
                "connection_class is expected to be a subclass of asyncpg.Connection, "
                f"got {connection_class!r}"
            )
        if not (isinstance(record_class, type) and issubclass(record_class, asyncpg.Record)):
            raise TypeError(
                f"record_class is expected to be a subclass of asyncpg.Record, got {record_class!r}"
            )
        for elastic, ours in _RENAMED.items():
            if elastic in kwargs:
                raise TypeError(f"{elastic} is not accepted here: pass {ours}= (asyncpg's name)")
        for what, fn in (("setup", setup), ("init", init)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{what} must be a coroutine function or None (got {fn!r})")

        settings_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in _SETTINGS_FIELDS}
        scope: SessionScope = "full"
        if isinstance(reset, str):
            if reset not in _RESET_MODES:
                raise ValueError(f"reset must be a coroutine function or one of {_RESET_MODES}")
            mode, reset_fn = reset, None
        elif reset is None:  # asyncpg's own reset: what Connection.reset() clears
            mode, reset_fn, scope = "session", None, "asyncpg"
        else:
            mode, reset_fn = "session", reset
        settings_kw["reset"] = mode
        settings_kw["min_connections"] = min_size
        if settings_kw.get("total_max_connections") is None or max_size != 10:
            settings_kw["max_connections"] = max_size  # else asyncpg's default: the total rules
        settings_kw.setdefault(
            "idle_timeout", max_inactive_connection_lifetime or None
        )  # 0 disables, as in asyncpg
        settings_kw.setdefault("pool_timeout", None)  # asyncpg waits forever
        settings_kw.setdefault("fail_fast", True)  # asyncpg's acquire raises its connect's error
        # asyncpg's connect timeout. None (no bound) reaches asyncpg.connect as it is; the
        # pool's own bound must be finite (it also bounds health checks): asyncpg's default.
        connect_timeout = kwargs.get("timeout", 60.0)
        settings_kw.setdefault(
            "connect_timeout", 60.0 if connect_timeout is None else float(connect_timeout)
        )
        if "connection_lifetime" not in settings_kw:
            lifetime = _SETTINGS_DEFAULTS["connection_lifetime"]
            idle = settings_kw["idle_timeout"]
            if idle is not None and lifetime is not None and idle >= lifetime:
                settings_kw["idle_timeout"] = None  # the default lifetime comes first anyway

        self._mode: ResetMode = mode
        connector = AsyncpgConnector(
            dsn,
            connect=connect,
            init=self._watching(init),
            reset=reset_fn,
            session_scope=scope,
            **kwargs,
        )
        fixed: dict[str, Any] = {"connection_class": connection_class, "record_class": record_class}
        if loop is not None:
            fixed["loop"] = loop
        connector._fixed_kwargs = fixed
        self._connector = connector
        self._pool: Pool[asyncpg.Connection] = Pool(
            connector, PoolSettings(**settings_kw), membership=membership, name=name
        )
        self._init_size = init_size
        self._min_size = min_size
        self._max_size = max_size
        self._max_queries = max_queries
        self._setup = setup
        self._leases: dict[int, _Lease] = {}
        self._lost: set[asyncio.Task[None]] = set()  # see _closed
        self._state: Lifecycle = NEW  # new → opening → open → closing → closed

    # ------------------------------------------------------------------ lifecycle

    def __await__(self) -> Generator[Any, None, AsyncpgPool]:
        return self._async_init().__await__()

    async def __aenter__(self) -> AsyncpgPool:
        return await self._async_init()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _async_init(self) -> AsyncpgPool:
        """Open the pool and wait for ``init_size`` connections; a failed connect fails it."""
        if self._state is OPEN:
            return self
        if self._state is OPENING:
            raise InterfaceError("pool is being initialized in another task")  # asyncpg's text
        if self._state is not NEW:
            raise self._closed_error()
        self._state = OPENING
        pool = self._pool
        try:
            await pool.open()
            limit = pool.stats().max  # max_size, or this instance's share of a fleet total
            extra = min(self._init_size, limit) > self._min_size
            if self._init_size:
                if extra:  # open init_size now; the floor stays min_size
                    await pool.resize(limit, min_connections=min(self._init_size, limit))
                await pool.wait(timeout=None)
                if extra:
                    await pool.resize(pool.stats().max, min_connections=self._min_size)
        except BaseException:
            self._state = CLOSED
            pool.terminate()
            raise
        self._state = OPEN
        return self

    async def close(self) -> None:
        """Close gracefully: wait until every borrowed connection is back, then close them all.

        As in asyncpg it waits without a bound (use :func:`asyncio.wait_for` or
        ``anyio.fail_after``); if it fails or is cancelled, the pool is
        terminated. Waiting acquires get :class:`AsyncpgPoolClosed`.
        """
        if self._state is CLOSED:
            return
        if self._state is not CLOSING:  # a second close() waits for the first one
            self._check_init()
        self._state = CLOSING
        try:
            await self._pool.close(timeout=None)
        except BaseException:
            self._pool.terminate()
            raise
        finally:
            self._state = CLOSED

    def terminate(self) -> None:
        """Close every connection at once, borrowed or not."""
        if self._state is CLOSED:
            return
        if self._state is not CLOSING:
            self._check_init()
        self._state = CLOSED
        self._pool.terminate()

    async def expire_connections(self) -> None:
        """Retire every open connection: idle ones now, borrowed ones when they come back."""
        await self._pool.expire_connections()

    def set_connect_args(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Connect with ``dsn`` and ``connect_kwargs`` from now on (see asyncpg's docs).

        Open connections stay until they retire; :meth:`expire_connections`
        hurries that along.
        """
        self._connector.set_connect_args(dsn, **connect_kwargs)

    def is_closing(self) -> bool:
        """Whether the pool is closing or closed."""
        return self._state in (CLOSING, CLOSED)

    def _check_init(self) -> None:
        if self._state is OPEN:
            return
        if self._state is NEW:
            raise InterfaceError(
                f"pool {self.name!r} is not initialized: 'await' it or use 'async with'"
            )
        if self._state is OPENING:
            raise InterfaceError(
                f"pool {self.name!r} is being initialized, but not yet ready: likely there is "
                "a race between creating a pool and using it"
            )
        raise self._closed_error()

    def _closed_error(self) -> AsyncpgPoolClosed:
        s = self._pool.stats()
        state = "closing" if self._state is CLOSING else "closed"
        return AsyncpgPoolClosed(
            f"pool {self.name!r} is {state} (in use {s.in_use}, idle {s.idle}, waiting {s.waiting})"
        )

    # ------------------------------------------------------------------ acquire / release

    def acquire(self, *, timeout: float | None = None) -> _PoolAcquireContext:
        """Borrow a connection: ``async with pool.acquire() as conn`` or ``await pool.acquire()``.

        ``timeout`` bounds the wait and ``setup`` together and raises
        :class:`asyncio.TimeoutError` (a :class:`~elasticpool.PoolTimeout`);
        ``None`` waits ``pool_timeout``, which is forever unless you set it.
        Raises :class:`AsyncpgPoolClosed` if the pool is closing or closed, and
        a connect's error if connects fail while it waits.
        """
        return _PoolAcquireContext(self, timeout)

    async def _acquire_conn(self, timeout: float | None) -> asyncpg.Connection:
        """``await pool.acquire()``: the connection alone."""
        lease = await self._acquire(timeout)
        return lease.conn

    async def _acquire(self, timeout: float | None) -> _Lease:
        if self._state is not OPEN:
            self._check_init()
        started = 0.0
        if timeout is None:
            borrow = self._pool.acquire()  # pool_timeout: forever unless set
        else:
            # asyncpg's timeout=0 (or less) means "do not wait": the core needs > 0.
            timeout = max(timeout, 1e-9)
            started = anyio.current_time()
            borrow = self._pool.acquire(timeout=timeout)
        try:
            conn = await borrow.__aenter__()
        except PoolClosed:
            raise self._closed_error() from None
        except PoolTimeout as exc:
            if _AcquireTimeout is PoolTimeout:
                raise
            raise _AcquireTimeout(str(exc)) from exc.__cause__  # pragma: no cover - 3.10
        self._leases[id(conn)] = lease = _Lease(conn, borrow, timeout)
        if self._setup is not None:
            try:
                if timeout is None:
                    await self._setup(conn)
                else:
                    with anyio.fail_after(max(timeout - (anyio.current_time() - started), 0)):
                        await self._setup(conn)
            except BaseException as exc:
                with contextlib.suppress(Exception):  # the setup error is the one to raise
                    await self._release(lease, exc)
                raise
        return lease

    async def release(
        self, connection: asyncpg.Connection, *, timeout: float | None = None
    ) -> None:
        """Give back a connection from :meth:`acquire`.

        As in asyncpg, the connection is reset before this returns, when it
        needs it: a transaction left open is rolled back, and what the
        borrower's statements may have changed of the session is cleared (see
        :func:`create_pool`'s ``reset``; a borrower that only ran queries
        leaves nothing to clear, and the release does no I/O). ``timeout``
        (default: the ``timeout`` given to :meth:`acquire`; neither: no bound,
        as in asyncpg) bounds the reset; a reset that fails or times out
        terminates the connection and raises, as in asyncpg. Releasing a
        connection that is already back is harmless; releasing one this pool
        never lent raises :class:`~asyncpg.exceptions.InterfaceError`. A stale
        release is ignored as in asyncpg: by a task that borrowed the
        connection and gave it back itself, while another task holds the next
        borrow of it (the pool sees the connection, not a proxy: see
        :meth:`elasticpool.Pool.release`); that borrow stands.
        """
        lease = self._leases.get(id(connection))
        if lease is None or lease.conn is not connection:
            if connection in self._connector._made:
                return  # already released, as asyncpg allows
            raise InterfaceError(
                f"release() received invalid connection: {connection!r} "
                f"is not a member of pool {self.name!r}"
            )
        if lease.acquire.is_stale():
            return  # this task's own borrow ended already: asyncpg ignores it too
        await self._release(lease, None, timeout)

    async def _release(
        self, lease: _Lease, exc: BaseException | None, timeout: float | None = None
    ) -> None:
        """End ``lease``: reset the connection here if it needs it, then give it to the pool.

        asyncpg's warnings about listeners left on the connection are emitted
        last, once the connection is back: under ``-W error`` they raise, and
        must not cost the pool the connection.
        """
        if self._leases.get(id(lease.conn)) is not lease:
            return  # already released (then maybe lent again: that borrow is not ours)
        warned = self._listener_warnings(lease.conn)
        try:
            await self._give_back(lease, exc, timeout)
        finally:
            for warning in warned:
                warnings.warn(warning, stacklevel=3)

    async def _give_back(
        self, lease: _Lease, exc: BaseException | None, timeout: float | None
    ) -> None:
        """Reset ``lease``'s connection if it needs it (as asyncpg does, here), and end the borrow.

        Invariants: the lease leaves ``_leases`` first, so a second release (or
        the termination listener) finds nothing to do; the core borrow is
        ended exactly once, whatever is raised or cancelled on the way.
        """
        del self._leases[id(lease.conn)]
        conn = lease.conn
        borrow = lease.acquire
        borrow.note_return()
        if conn.is_closed():
            borrow.end(exc)
            return
        impl: Any = conn  # (asyncpg's private attributes; not _impl(): a call per release)
        impl._pool_release_ctr += 1  # asyncpg's PreparedStatement / Cursor objects now raise
        protocol = impl._protocol
        if protocol is not None and protocol.queries_count >= self._max_queries:
            borrow.retire()  # closed instead of reset, as in asyncpg
            borrow.end(exc, clean=True)
            return
        connector = self._connector
        tracker = connector._trackers.get(conn) if connector._tracking else None
        if tracker is not None and tracker.unseen(conn) > 0:
            # asyncpg hands query loggers the record of a query on the loop's
            # next pass: let the tracker read the last ones before it is asked.
            try:
                await asyncio.sleep(0)
            except BaseException:
                borrow.end(exc)  # the pool decides, and resets in the background
                raise
            if conn.is_closed():  # lost meanwhile: nothing to reset, nothing to raise
                borrow.end(exc)
                return
        if (exc is not None and connector.is_disconnect(exc)) or not connector.needs_reset(
            conn, self._mode
        ):
            borrow.end(exc, clean=True)
            return
        if timeout is None:
            timeout = lease.timeout
        try:
            if timeout is None:  # as asyncpg: no bound unless acquire() or release() has one
                await connector.reset(conn, self._mode)
            else:
                with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
                    await connector.reset(conn, self._mode)
                if scope.cancelled_caught:
                    raise asyncio.TimeoutError(
                        f"reset of a released connection timed out ({timeout:g}s)"
                    )
        except BaseException:
            conn.terminate()  # as asyncpg: a connection whose reset failed is not reused
            borrow.end(exc)
            raise
        borrow.end(exc, clean=True)

    def _watching(self, init: ConnectionCallback | None) -> ConnectionCallback:
        """``init``, then :meth:`_closed` as a termination listener (kept by every reset)."""

        async def init_and_watch(conn: asyncpg.Connection) -> None:
            if init is not None:
                await init(conn)
            conn.add_termination_listener(self._closed)
            if self._mode == "session":
                self._connector._track(conn)  # from its first borrow on

        return init_and_watch

    def _closed(self, conn: object) -> None:
        """A connection closed (or lost): if it is borrowed, its slot is free now, as in asyncpg.

        asyncpg calls this soon after ``conn.close()``, ``conn.terminate()`` or
        a lost connection. Its borrower need not release it (a release of it
        later is harmless), and :meth:`close` does not wait for it.
        """
        lease = self._leases.get(id(conn))
        if lease is None or lease.conn is not conn:
            return  # idle, already given back, or closed by the pool
        del self._leases[id(conn)]
        # asyncpg calls listeners from a loop callback, outside any task, and the
        # pool's bookkeeping starts tasks (the close, a replacement connect): it
        # would fail there and leave the slot closing for good. Hop into a task.
        task = asyncio.get_running_loop().create_task(self._end_lost(lease))
        self._lost.add(task)
        task.add_done_callback(self._lost.discard)

    @staticmethod
    async def _end_lost(lease: _Lease) -> None:
        lease.acquire.end(None)  # closed: the pool discards it and replaces it as needed

    def _listener_warnings(self, conn: asyncpg.Connection) -> list[Warning]:
        """asyncpg's warnings for a connection released with listeners still on it."""
        impl: Any = conn
        if conn.is_closed() or (not impl._listeners and not impl._log_listeners):
            return []  # the usual case, on every release: nothing to look at
        baseline = self._connector._baselines.get(conn)
        kept = baseline.log_listeners if baseline is not None else set()
        out: list[Warning] = []
        for kind, listeners in (
            ("notification", [cb for cbs in impl._listeners.values() for cb in cbs]),
            ("log", [cb for cb in impl._log_listeners if cb not in kept]),
        ):
            if listeners:
                n = len(listeners)
                out.append(
                    asyncpg.exceptions.InterfaceWarning(
                        f"{conn!r} is being released to pool {self.name!r} but has {n} active "
                        f"{kind} listener{'s' if n > 1 else ''}"
                    )
                )
        return out

    @asynccontextmanager
    async def transaction(
        self,
        *,
        timeout: float | None = None,
        isolation: str | None = None,
        readonly: bool = False,
        deferrable: bool = False,
    ) -> AsyncIterator[asyncpg.Connection]:
        """Borrow a connection inside a transaction (not in asyncpg.Pool; an elasticpool extra).

        ``async with pool.transaction() as conn``: acquire (``timeout`` as in
        :meth:`acquire`), ``BEGIN`` with the given ``isolation`` / ``readonly``
        / ``deferrable``, ``COMMIT`` when the block ends normally and
        ``ROLLBACK`` when it raises, then release.
        """
        async with (
            self.acquire(timeout=timeout) as conn,
            conn.transaction(isolation=isolation, readonly=readonly, deferrable=deferrable),  # type: ignore[arg-type]
        ):
            yield conn

    # ------------------------------------------------------------------ shortcuts

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run ``query`` on a pooled connection: :meth:`asyncpg.Connection.execute`."""
        async with self.acquire() as con:
            return await con.execute(query, *args, timeout=timeout)

    async def executemany(
        self, command: str, args: Iterable[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run ``command`` for each argument tuple: :meth:`asyncpg.Connection.executemany`."""
        async with self.acquire() as con:
            await con.executemany(command, args, timeout=timeout)

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> list[Any]:
        """Rows of ``query`` from a pooled connection: :meth:`asyncpg.Connection.fetch`."""
        async with self.acquire() as con:
            return await con.fetch(query, *args, timeout=timeout, record_class=record_class)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of ``query``: :meth:`asyncpg.Connection.fetchval`."""
        async with self.acquire() as con:
            return await con.fetchval(query, *args, column=column, timeout=timeout)

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> Any:
        """The first row of ``query``: :meth:`asyncpg.Connection.fetchrow`."""
        async with self.acquire() as con:
            return await con.fetchrow(query, *args, timeout=timeout, record_class=record_class)

    async def fetchmany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        record_class: type[asyncpg.Record] | None = None,
    ) -> list[Any]:
        """Rows of ``query`` run for each argument tuple: :meth:`asyncpg.Connection.fetchmany`."""
        async with self.acquire() as con:
            return await con.fetchmany(query, args, timeout=timeout, record_class=record_class)

    async def copy_from_table(self, table_name: str, **kwargs: Any) -> str:
        """COPY a table out: :meth:`asyncpg.Connection.copy_from_table` (same keywords)."""
        async with self.acquire() as con:
            return await con.copy_from_table(table_name, **kwargs)

    async def copy_from_query(self, query: str, *args: Any, **kwargs: Any) -> str:
        """COPY a query's rows out: :meth:`asyncpg.Connection.copy_from_query` (same keywords)."""
        async with self.acquire() as con:
            return await con.copy_from_query(query, *args, **kwargs)

    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str:
        """COPY data into a table: :meth:`asyncpg.Connection.copy_to_table` (same keywords)."""
        async with self.acquire() as con:
            return await con.copy_to_table(table_name, **kwargs)

    async def copy_records_to_table(self, table_name: str, **kwargs: Any) -> str:
        """Binary COPY of records: :meth:`asyncpg.Connection.copy_records_to_table`."""
        async with self.acquire() as con:
            return await con.copy_records_to_table(table_name, **kwargs)

    # ------------------------------------------------------------------ inspection

    @property
    def name(self) -> str:
        """The pool's name, in its messages, ``repr`` and stats."""
        return self._pool.name

    @property
    def elastic(self) -> Pool[asyncpg.Connection]:
        """The :class:`elasticpool.Pool` underneath (stats, resize, settings)."""
        return self._pool

    def get_size(self) -> int:
        """Open connections, borrowed or idle (connects under way are not counted)."""
        s = self._pool.stats()
        return s.size - s.connecting

    def get_idle_size(self) -> int:
        """Idle connections."""
        return self._pool.stats().idle

    def get_init_size(self) -> int:
        """Connections opened before :func:`create_pool` returns."""
        return self._init_size

    def get_min_size(self) -> int:
        """The floor: connections kept open while idle."""
        return self._min_size

    def get_max_size(self) -> int:
        """The current limit: ``max_size``, unless :meth:`resize` or a fleet budget changed it."""
        return self._pool.stats().max

    def stats(self) -> PoolStats:
        """A frozen snapshot of the elastic pool's gauges and counters."""
        return self._pool.stats()

    async def resize(self, max_size: int, min_size: int | None = None) -> None:
        """Change the limit (and floor) now: see :meth:`elasticpool.Pool.resize`."""
        await self._pool.resize(max_size, min_size)
        if min_size is not None:
            self._min_size = min_size

    def __repr__(self) -> str:
        return f"<AsyncpgPool{repr(self._pool).removeprefix('<Pool')}"


class _PoolAcquireContext:
    """What :meth:`AsyncpgPool.acquire` returns: an async context manager, and awaitable."""

    __slots__ = ("_done", "_face", "_lease", "_timeout")

    def __init__(self, pool: AsyncpgPool, timeout: float | None) -> None:
        self._face = pool
        self._timeout = timeout
        self._lease: _Lease | None = None
        self._done = False

    async def __aenter__(self) -> asyncpg.Connection:
        if self._lease is not None or self._done:
            raise InterfaceError("a connection is already acquired")
        self._lease = await self._face._acquire(self._timeout)
        return self._lease.conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        lease, self._lease = self._lease, None
        if lease is not None:
            await self._face._release(lease, exc)

    def __await__(self) -> Generator[Any, None, asyncpg.Connection]:
        self._done = True
        return self._face._acquire_conn(self._timeout).__await__()


def create_pool(
    dsn: str | None = None,
    *,
    init_size: int | None = None,
    min_size: int = 10,
    max_size: int = 10,
    max_queries: int = 50000,
    max_inactive_connection_lifetime: float = 300.0,
    connect: Callable[..., Awaitable[asyncpg.Connection]] | None = None,
    setup: ConnectionCallback | None = None,
    init: ConnectionCallback | None = None,
    reset: ConnectionCallback | ResetMode | None = None,
    loop: Any = None,
    connection_class: type[asyncpg.Connection] = asyncpg.Connection,
    record_class: type[asyncpg.Record] = asyncpg.Record,
    **connect_kwargs_and_elastic_settings: Any,
) -> AsyncpgPool:
    """Make an :class:`AsyncpgPool`: :func:`asyncpg.create_pool`'s signature and semantics.

    Use it as asyncpg's: ``pool = await create_pool(dsn)`` or
    ``async with create_pool(dsn) as pool``. Either returns once ``init_size``
    connections (default ``min_size``, default 10) are open, and raises the
    error of a failed connect (closing what was opened).

    asyncpg's arguments and what they become:

    ``dsn``, ``connect``, ``init``, ``connection_class``, ``record_class``, ``loop``, ``**kw``
        passed to :func:`asyncpg.connect` (or ``connect``) exactly as asyncpg does.
    ``min_size`` → ``min_connections``
        the floor kept open while idle (asyncpg >= 0.32's meaning).
    ``init_size``
        opened at start (default ``min_size``); the surplus above the floor then ages out.
    ``max_size`` → ``max_connections``
        the limit. With a ``total_max_connections`` keyword the total wins
        (divided among a fleet by ``membership``) and the default ``max_size``
        is not passed on; any other ``max_size`` is, and the core warns that it
        is ignored.
    ``max_inactive_connection_lifetime`` → ``idle_timeout``
        ``0`` disables it. An ``idle_timeout`` keyword wins over it.
    ``max_queries``
        a connection is retired when it comes back having run this many
        queries, counted as asyncpg counts them (the protocol's query counter).
    ``setup``
        ``await setup(conn)`` on every acquire before the caller gets it; if it
        raises, the connection is released and the error propagates.
    ``reset``
        ``None`` (the default): what asyncpg's ``Connection.reset()`` clears
        (transaction, settings, cursors, ``LISTEN``, advisory locks) and the
        role, each only when the borrower's statements may have changed it
        (``tracking=False``: all of it on every release). A coroutine
        function: replaces the clean-up after the rollback, and runs on every
        release, as in asyncpg. A string chooses an elastic reset mode instead:
        ``"session"`` (everything, temporary tables and prepared statements
        too), ``"rollback"`` or ``"none"``.

    Every :class:`~elasticpool.PoolSettings` field but ``min_connections`` and
    ``max_connections`` may be passed by keyword too (``total_max_connections``,
    ``idle_timeout``, ``connection_lifetime``, ``pool_timeout``,
    ``max_connecting``, ``ping_after``, ...), and ``name=`` and
    ``membership=`` for the elastic :class:`~elasticpool.Pool`. Defaults
    differing from :class:`~elasticpool.PoolSettings`: ``pool_timeout`` is
    ``None`` (asyncpg waits forever), ``connect_timeout`` is asyncpg's connect
    ``timeout`` (60 s; ``timeout=None`` reaches :func:`asyncpg.connect` as
    it is, and the pool's own bound stays 60 s), and ``idle_timeout`` is
    dropped when it could never fire before the default ``connection_lifetime``.
    """
    return AsyncpgPool(
        dsn,
        init_size=init_size,
        min_size=min_size,
        max_size=max_size,
        max_queries=max_queries,
        max_inactive_connection_lifetime=max_inactive_connection_lifetime,
        connect=connect,
        setup=setup,
        init=init,
        reset=reset,
        loop=loop,
        connection_class=connection_class,
        record_class=record_class,
        **connect_kwargs_and_elastic_settings,
    )
