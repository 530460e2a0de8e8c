"""``ElasticPool``: a SQLAlchemy pool whose connections elasticpool holds.

SQLAlchemy's pool API is two calls: ``_do_get()`` lends a connection record,
``_do_return_conn(record)`` takes it back. ElasticPool answers both from an
elasticpool *shell* that holds the records as its connections:

* a sync engine (psycopg, psycopg2): the threaded pool (``SyncPool``), whose
  blocking ``acquire`` is what a thread of a sync application wants;
* an async engine (asyncpg, psycopg async): the anyio :class:`~elasticpool.Pool`
  on the engine's event loop. SQLAlchemy calls the pool API inside a
  greenlet of that loop (``greenlet_spawn``); a checkout there takes an idle
  record at once without awaiting (``acquire_nowait``), and otherwise
  awaits ``Pool.acquire()`` through SQLAlchemy's ``await_``, so a waiting
  caller yields the loop to the ones that will return connections.
  Connects run in the Pool's background tasks, each in a greenlet of its
  own, where the async dialect awaits its driver. A thread-based pool would
  block the loop while a caller waits, and a caller returning a connection
  could then never run: that is why the async engine has the async pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from sqlalchemy import exc
from sqlalchemy.pool import Pool as SAPool

from .. import _errors
from .._pool import Pool
from .._settings import LimitMode, PoolSettings
from .._stats import PoolStats
from ..fleet._base import Membership
from ._args import UNSET, elastic_settings
from ._records import AsyncRecordConnector, ElasticRecord, SyncRecordConnector, await_, in_greenlet

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.engine.interfaces import Dialect
    from sqlalchemy.pool.base import ConnectionPoolEntry, _ConnDialect, _ResetStyleArgType

__all__ = ["ElasticPool", "PoolTimeout"]

logger = logging.getLogger("elasticpool")


class PoolTimeout(exc.TimeoutError, _errors.PoolTimeout):
    """No connection within ``pool_timeout``: SQLAlchemy's ``TimeoutError`` and elasticpool's.

    ``except sqlalchemy.exc.TimeoutError`` (what SQLAlchemy code catches from
    a :class:`~sqlalchemy.pool.QueuePool`), ``except elasticpool.PoolTimeout``
    and ``except TimeoutError`` all catch it. Its message names the pool and
    its counts; when connects were failing, ``__cause__`` is the last connect
    error.
    """


# Memberships (instances) in use by a shell: one shell at a time may use one.
_MEMBERSHIP_USERS: weakref.WeakKeyDictionary[Any, _Shell] = weakref.WeakKeyDictionary()
# Background closes of disposed async shells (kept referenced until done).
_CLOSING: set[asyncio.Task[None]] = set()


_pid = os.getpid()
"""This process's id (kept current by the at-fork hook: cheaper than asking on each checkout)."""


def _after_fork_in_child() -> None:
    global _pid  # noqa: PLW0603 - the one module state a fork changes
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Shell(Protocol):
    """What ElasticPool needs of the elasticpool pool behind it (one per event loop or process)."""

    name: str
    pid: int
    done: bool
    """Closed for good (its membership, if any, has left)."""

    @property
    def pool(self) -> Any: ...

    def get(self) -> ElasticRecord: ...

    def put(self, rec: ElasticRecord) -> None: ...

    def dispose(self) -> None: ...

    def stats(self) -> PoolStats: ...


class _AsyncShell:
    """The anyio :class:`~elasticpool.Pool` behind an async engine (opened at first checkout)."""

    def __init__(self, owner: ElasticPool, membership: Membership | None) -> None:
        self.name = owner.name
        self.pid = os.getpid()
        self.done = False
        self.connector = AsyncRecordConnector(owner)
        self.connector.shell = self
        self.pool: Pool[ElasticRecord] = Pool(
            self.connector, owner.settings, membership=membership, name=owner.name
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # Without pings an idle record is lent with no await (see the module's docstring).
        self._nowait = owner.settings.ping_after is None

    def get(self) -> ElasticRecord:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            await_(self.pool.open())  # another greenlet's open in progress: waits for it
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                f"ElasticPool {self.name!r} was opened on another event loop: "
                "await engine.dispose() before using the engine on a new event loop"
            )
        pool = self.pool
        if self._nowait:
            is_closed = self.connector.is_closed
            while True:
                try:
                    rec = pool.acquire_nowait()
                except anyio.WouldBlock:
                    break
                if not is_closed(rec):
                    return rec
                pool.release(rec)  # dead or invalidated: evicted (is_closed says so again)
        try:
            return await_(pool.acquire())
        except _errors.PoolTimeout as e:
            raise PoolTimeout(str(e)) from e.__cause__

    def put(self, rec: ElasticRecord) -> None:
        rec.returning = True
        try:
            self.pool.release(rec)
        finally:
            rec.returning = False

    def dispose(self) -> None:
        pool = self.pool
        if self._loop is None or self.pid != os.getpid():
            pool.terminate()  # never opened (no connection), or the parent's: marked closed
            self.done = True
            return
        if in_greenlet() and not pool.stats().in_use:
            try:
                await_(pool.close())
            finally:
                self.done = True
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:  # no way to wait on its loop from here
            pool.terminate()
            self.done = True
            return
        # Borrowed connections: they close as they come back (idle ones close now).
        task = running.create_task(pool.close(timeout=None))
        _CLOSING.add(task)

        def closed(t: asyncio.Task[None]) -> None:
            _CLOSING.discard(t)
            self.done = True
            if not t.cancelled() and t.exception() is not None:
                logger.warning(
                    "pool %r: closing after dispose() failed: %r", self.name, t.exception()
                )

        task.add_done_callback(closed)

    def stats(self) -> PoolStats:
        return self.pool.stats()


class _SyncShell:
    """The threaded pool behind a sync engine (opened at first checkout)."""

    def __init__(self, owner: ElasticPool, membership: Membership | None) -> None:
        from .._sync_pool import SyncPool  # noqa: PLC0415 - only for sync engines

        self.name = owner.name
        self.pid = os.getpid()
        self.done = False
        self.connector = SyncRecordConnector(owner)
        self.connector.shell = self
        self.pool: SyncPool[ElasticRecord] = SyncPool(
            self.connector, owner.settings, membership=membership, name=owner.name
        )
        self._opened = False

    def get(self) -> ElasticRecord:
        if not self._opened:
            self.pool.open()
            self._opened = True
        try:
            return self.pool.acquire()
        except _errors.PoolTimeout as e:
            raise PoolTimeout(str(e)) from e.__cause__

    def put(self, rec: ElasticRecord) -> None:
        rec.returning = True
        try:
            self.pool.release(rec)
        finally:
            rec.returning = False

    def dispose(self) -> None:
        pool = self.pool
        if not self._opened or self.pid != os.getpid() or not pool.stats().in_use:
            try:
                pool.close()
            finally:
                self.done = True
            return
        import threading  # noqa: PLC0415

        def close() -> None:
            try:
                pool.close(timeout=None)
            except Exception as e:  # pragma: no cover - logged, never raised
                logger.warning("pool %r: closing after dispose() failed: %r", self.name, e)
            finally:
                self.done = True

        threading.Thread(target=close, name=f"elasticpool-{self.name}-dispose", daemon=True).start()

    def stats(self) -> PoolStats:
        return self.pool.stats()


class ElasticPool(SAPool):
    """A SQLAlchemy pool whose connections are held by elasticpool.

    Use it as ``sqlalchemy.create_engine(url, poolclass=ElasticPool, **settings)``
    (or with :func:`sqlalchemy.ext.asyncio.create_async_engine`), or through
    :func:`elasticpool.sqlalchemy.create_engine`. elasticpool's planner
    decides: callers are served first come, first served; the pool grows only
    for callers it cannot serve, shrinks as connections sit idle past
    ``idle_timeout``, retires them at ``connection_lifetime`` and, with a
    ``membership``, holds its share of ``total_max_connections`` across a
    fleet of processes.

    What it holds are SQLAlchemy's own connection records, one per server
    connection: SQLAlchemy's connect-time setup (the dialect's
    ``initialize``, the ``first_connect`` and ``connect`` events) runs once
    per server connection, not per checkout. Pool events fire as with
    :class:`~sqlalchemy.pool.QueuePool`: ``checkout`` / ``checkin`` /
    ``reset`` per checkout, ``connect`` when elasticpool opens a connection,
    ``close`` when it closes one (idle timeout, lifetime, fleet share,
    :meth:`dispose`), ``invalidate`` when SQLAlchemy invalidates one; an
    invalidated connection leaves elasticpool (its slot is freed at checkin),
    and one older than an invalidation of the pool (a disconnect seen on
    another connection) is closed instead of lent.

    Arguments: SQLAlchemy's pool arguments are honoured or mapped (see
    ``docs/integrations/sqlalchemy.md``): ``pool_size + max_overflow`` is
    ``max_connections`` (SQLAlchemy's 5 + 10 when no limit is given),
    ``pool_timeout`` is ``pool_timeout``, ``pool_recycle`` is
    ``connection_lifetime``; ``pool_pre_ping`` and ``pool_reset_on_return``
    are SQLAlchemy's own; one that cannot be honoured
    (``pool_use_lifo=False``, ``pool_size=0``, ``max_overflow=-1``, elastic
    ``reset``) raises :class:`sqlalchemy.exc.ArgumentError`. Every
    :class:`~elasticpool.PoolSettings` field but ``pool_timeout`` and
    ``reset`` is a keyword argument as well (``total_max_connections``,
    ``idle_timeout``, ...), and so are ``settings`` (a whole
    :class:`~elasticpool.PoolSettings`), ``membership`` and ``name`` (the
    pool's name in its fleet). ``membership`` is a
    :class:`~elasticpool.Membership`, or a callable returning a new one: the
    pool opens a new elasticpool pool after :meth:`dispose` and in a forked
    child, and each needs a membership of its own (an instance serves one at
    a time, in the process that made it).

    Lazy: the elasticpool pool opens at the first checkout (on the event loop
    of that checkout, for an async engine), and again at the first checkout
    after :meth:`dispose`. :meth:`dispose` closes it: idle connections now,
    borrowed ones as they come back, then it leaves its fleet. In a forked
    child the parent's pool is left alone and a new one opens.

    It is not a connection limit for connections taken out of it with
    ``detach()``: those leave its count, as with any SQLAlchemy pool.
    """

    def __init__(  # noqa: PLR0917 - SQLAlchemy finds pool arguments only among positional ones
        self,
        creator: Callable[..., Any],
        pool_size: int = UNSET,
        max_overflow: int = UNSET,
        timeout: float | None = UNSET,
        use_lifo: bool = UNSET,
        recycle: float = UNSET,
        echo: Any = None,
        logging_name: str | None = None,
        reset_on_return: _ResetStyleArgType = True,
        events: Any = None,
        dialect: _ConnDialect | Dialect | None = None,
        pre_ping: bool = False,
        _dispatch: Any = None,
        settings: PoolSettings | None = None,
        membership: Membership | Callable[[], Membership] | None = None,
        name: str = "default",
        max_connections: int | None = UNSET,
        total_max_connections: int | str | None = UNSET,
        min_connections: int = UNSET,
        idle_timeout: float | None = UNSET,
        connection_lifetime: float | None = UNSET,
        lifetime_jitter: float = UNSET,
        max_waiting: int | None = UNSET,
        connect_timeout: float = UNSET,
        max_connecting: int = UNSET,
        ping_after: float | None = UNSET,
        close_timeout: float = UNSET,
        backoff_initial: float = UNSET,
        backoff_max: float = UNSET,
        reset: str = UNSET,
        limit_mode: LimitMode = UNSET,
        soft_overflow: int = UNSET,
        allow_small_total: bool = UNSET,
        fail_fast: bool = UNSET,
        saturation_warning: float | None = UNSET,
    ) -> None:
        elastic = {
            k: v
            for k, v in (
                ("max_connections", max_connections),
                ("total_max_connections", total_max_connections),
                ("min_connections", min_connections),
                ("idle_timeout", idle_timeout),
                ("connection_lifetime", connection_lifetime),
                ("lifetime_jitter", lifetime_jitter),
                ("max_waiting", max_waiting),
                ("connect_timeout", connect_timeout),
                ("max_connecting", max_connecting),
                ("ping_after", ping_after),
                ("close_timeout", close_timeout),
                ("backoff_initial", backoff_initial),
                ("backoff_max", backoff_max),
                ("reset", reset),
                ("limit_mode", limit_mode),
                ("soft_overflow", soft_overflow),
                ("allow_small_total", allow_small_total),
                ("fail_fast", fail_fast),
                ("saturation_warning", saturation_warning),
            )
            if v is not UNSET
        }
        self.settings = elastic_settings(
            settings=settings,
            elastic=elastic,
            pool_size=pool_size,
            max_overflow=max_overflow,
            timeout=timeout,
            recycle=recycle,
            use_lifo=use_lifo,
        )
        """The elasticpool settings this pool runs with (SQLAlchemy's arguments mapped in)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string (got {name!r})")
        if (
            membership is not None
            and not callable(membership)
            and not isinstance(membership, Membership)
        ):
            raise TypeError(
                "membership must be an elasticpool Membership (PostgresMembership, "
                "StaticMembership), a callable returning one, or None "
                f"(got {type(membership).__name__})"
            )
        self.name = name
        self._membership = membership
        self._shell: _Shell | None = None
        # What recreate() passes on (the elastic part as given, SQLAlchemy's as given).
        self._elastic_args: dict[str, Any] = {
            **elastic,
            "settings": settings,
            "membership": membership,
            "name": name,
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "timeout": timeout,
            "use_lifo": use_lifo,
            "recycle": recycle,
        }
        # SQLAlchemy never recycles by age here: elasticpool retires at connection_lifetime.
        super().__init__(
            creator,
            recycle=-1,
            echo=echo,
            logging_name=logging_name,
            reset_on_return=reset_on_return,
            events=events,
            dialect=dialect,
            pre_ping=pre_ping,
            _dispatch=_dispatch,
        )

    # ------------------------------------------------------------------ the shell

    def _membership_for_new_shell(self) -> Membership | None:
        m = self._membership
        if m is None:
            return None
        if isinstance(m, type) or not isinstance(m, Membership):  # a factory (or a class)
            made = m()
            if not isinstance(made, Membership):
                raise TypeError(
                    f"membership factory {m!r} must return an elasticpool Membership "
                    f"(got {type(made).__name__})"
                )
            return made
        user = _MEMBERSHIP_USERS.get(m)
        if user is not None and (user.pid != os.getpid() or not user.done):
            where = (
                "in the parent process" if user.pid != os.getpid() else "by a pool still closing"
            )
            raise RuntimeError(
                f"ElasticPool {self.name!r}: its membership is still in use {where}; pass "
                "membership as a callable returning a new one (e.g. lambda: "
                "PostgresMembership(...)) so that each elasticpool pool the engine opens, after "
                "dispose() or a fork, has its own"
            )
        return m

    def _new_shell(self) -> _Shell:
        membership = self._membership_for_new_shell()
        shell: _Shell
        if self._dialect.is_async:
            shell = _AsyncShell(self, membership)
        else:
            shell = _SyncShell(self, membership)
        if membership is not None and membership is self._membership:
            _MEMBERSHIP_USERS[membership] = shell
        self._shell = shell
        return shell

    @property
    def elastic_pool(self) -> Any:
        """The elasticpool pool behind it now (:class:`~elasticpool.Pool` or ``SyncPool``), or None.

        For what SQLAlchemy's API does not show: :meth:`~elasticpool.Pool.fleet`,
        ``resize``, ``set_fleet_total``. ``None`` before the first checkout and
        after :meth:`dispose`.
        """
        shell = self._shell
        return None if shell is None else shell.pool

    # ------------------------------------------------------------------ SQLAlchemy's API

    def _do_get(self) -> ConnectionPoolEntry:
        shell = self._shell
        if shell is None or shell.pid != _pid:
            shell = self._new_shell()  # first checkout, or a forked child: a pool of its own
        while True:
            try:
                return shell.get()
            except _errors.PoolClosed:
                current = self._shell
                if current is shell or current is None:
                    raise
                shell = current  # disposed while this caller waited: the new pool serves it

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        if isinstance(record, ElasticRecord):
            record.shell.put(record)
        else:  # pragma: no cover - only ElasticPool makes the records it lends
            record.close()

    def dispose(self) -> None:
        """Close the elasticpool pool: idle connections now, borrowed ones as they come back.

        It does not wait for borrowed connections (SQLAlchemy's
        :meth:`~sqlalchemy.pool.Pool.dispose` does not either): when none is
        borrowed it returns once every connection is closed and the pool has
        left its fleet; otherwise the rest happens in the background as they
        come back. The next checkout opens a new elasticpool pool.
        """
        shell, self._shell = self._shell, None
        if shell is not None:
            shell.dispose()
            self.logger.info("Pool disposed. %s", self._describe(shell))

    def recreate(self) -> ElasticPool:
        """A new ElasticPool with the same arguments (SQLAlchemy calls it after :meth:`dispose`)."""
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
            **self._elastic_args,
        )

    def status(self) -> str:
        """A one-line description: the limit and what the connections are doing."""
        shell = self._shell
        if shell is None:
            return f"ElasticPool {self.name!r}: not open (limit {self._configured_limit()})"
        return self._describe(shell)

    def _describe(self, shell: _Shell) -> str:
        s = shell.stats()
        return (
            f"ElasticPool {self.name!r}: limit {s.max}, size {s.size} (in use {s.in_use}, "
            f"idle {s.idle}, connecting {s.connecting}), waiting {s.waiting}"
        )

    def _configured_limit(self) -> str:
        s = self.settings
        if s.total_max_connections is not None:
            return f"of total {s.total_max_connections}"
        return str(s.max_connections)

    def stats(self) -> PoolStats | None:
        """The elasticpool pool's :class:`~elasticpool.PoolStats` now (``None`` when not open)."""
        shell = self._shell
        return None if shell is None else shell.stats()

    def size(self) -> int:
        """The pool's limit now (connections it may hold), as QueuePool's ``size()`` is."""
        stats = self.stats()
        return 0 if stats is None else stats.max

    def checkedin(self) -> int:
        """Idle connections, as QueuePool's ``checkedin()``."""
        stats = self.stats()
        return 0 if stats is None else stats.idle

    def checkedout(self) -> int:
        """Connections lent out, as QueuePool's ``checkedout()``."""
        stats = self.stats()
        return 0 if stats is None else stats.in_use

    def timeout(self) -> float | None:
        """``pool_timeout`` in seconds (``None``: forever), as QueuePool's ``timeout()``."""
        return self.settings.pool_timeout
