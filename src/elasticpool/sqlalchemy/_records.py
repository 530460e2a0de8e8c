"""The connections elasticpool holds for SQLAlchemy: SQLAlchemy's own connection records.

A record (:class:`ElasticRecord`, a ``_ConnectionRecord``) is made once per
server connection, through the SQLAlchemy pool's creator, so SQLAlchemy's
connect-time work (the dialect's ``initialize``, ``first_connect`` and
``connect`` events) runs once per server connection and never per checkout.
The elasticpool shell lends the record itself; SQLAlchemy wraps it in its
per-checkout ``_ConnectionFairy`` as it does for its own pools.

The two connectors here (:class:`AsyncRecordConnector` for the anyio
:class:`~elasticpool.Pool`, :class:`SyncRecordConnector` for the threaded
pool) open, check and close such records; they share everything that needs
no I/O (:class:`_RecordJobs`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.util.concurrency import greenlet_spawn, in_greenlet

from .._connector import ResetMode
from ..fleet._sql import fetch

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import Dialect
    from sqlalchemy.pool import Pool as SAPool

    from ._pool import _Shell

__all__ = ["AsyncRecordConnector", "ElasticRecord", "SyncRecordConnector"]

logger = logging.getLogger("elasticpool")

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as _await

# The server settings (``application_name`` of a fleet member) for the connect running in
# this thread or greenlet; read by the dialect's ``do_connect`` listener below.
_SERVER_SETTINGS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "elasticpool_sqlalchemy_server_settings", default=None
)
# Dialects that have the listener (one per dialect, whatever the number of pools over it).
_TAGGING: weakref.WeakSet[Any] = weakref.WeakSet()


def _add_server_settings(
    dialect: Dialect,
    conn_rec: Any,
    cargs: list[Any],
    cparams: dict[str, Any],
) -> None:
    """``do_connect`` listener: put this connect's server settings into the driver's arguments.

    asyncpg takes them as ``server_settings``; libpq drivers (psycopg,
    psycopg2) take ``application_name`` as a parameter of its own and any other
    setting as ``-c name=value`` in ``options``.
    """
    settings = _SERVER_SETTINGS.get()
    if not settings:
        return
    if dialect.driver == "asyncpg":
        cparams["server_settings"] = {**(cparams.get("server_settings") or {}), **settings}
        return
    extra = []
    for name, value in settings.items():
        if name == "application_name":
            cparams["application_name"] = value
        else:
            escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
            extra.append(f"-c {name}={escaped}")
    if extra:
        options = cparams.get("options")
        cparams["options"] = " ".join([str(options), *extra] if options else extra)


def _listen_for_tags(dialect: Any) -> bool:
    """Make ``dialect``'s connects take server settings (once per dialect); whether it can."""
    if not hasattr(dialect, "dispatch") or not hasattr(dialect.dispatch, "do_connect"):
        return False  # no engine: a bare creator, nothing to hook
    if dialect not in _TAGGING:
        event.listen(dialect, "do_connect", _add_server_settings)
        _TAGGING.add(dialect)
    return True


class ElasticRecord(_ConnectionRecord):
    """A SQLAlchemy connection record whose slot is one of elasticpool's.

    Made (connected) by a record connector; closed by it when elasticpool
    retires the connection (idle timeout, lifetime, fleet share, dispose).
    Between checkouts it stays connected: SQLAlchemy's connect-time setup
    ran once, when it was made.
    """

    __slots__ = ()

    shell: _Shell
    """The elasticpool shell holding it: a checkin gives it back there."""
    returning: bool
    """Set while it is being given back (its liveness check is then a shallow one)."""
    checked_for: Any
    """The DBAPI connection :attr:`dead` checks (SQLAlchemy may reconnect a record in place)."""
    dead: Callable[[bool], bool]
    """The driver's local check: whether the connection is dead (``deep``: look at the socket)."""

    def __init__(self, pool: SAPool, shell: _Shell) -> None:
        self.shell = shell
        self.returning = False
        self.checked_for = None
        super().__init__(pool)

    async def fleet_fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one fleet statement on the driver's connection (an async engine's).

        A statement outside a transaction is a transaction of its own, as the
        fleet expects (see :func:`elasticpool.fleet._sql.fetch`).
        """
        return await fetch(self.driver_connection, sql, *args, own=True)

    def __repr__(self) -> str:
        return f"<ElasticRecord {self.dbapi_connection!r}>"


def _driver_kind(driver: Any) -> str:
    """``"asyncpg"``, ``"psycopg"`` (3) or ``""``, by the driver connection's class."""
    for cls in type(driver).__mro__:
        module = cls.__module__
        if module.startswith("asyncpg"):
            return "asyncpg"
        if module.startswith("psycopg") and not module.startswith("psycopg2"):
            return "psycopg"
    return ""


def _terminate_driver(record: _ConnectionRecord, dbapi: Any) -> None:
    """Close ``dbapi`` (``record``'s) now, without waiting on the network and without a greenlet."""
    driver = record.driver_connection if record.dbapi_connection is dbapi else None
    if driver is None:
        try:
            driver = dbapi.driver_connection  # an async adapter's raw connection
        except AttributeError:
            driver = dbapi
    kind = _driver_kind(driver)
    if kind == "asyncpg":
        driver.terminate()
    elif kind == "psycopg":
        import psycopg  # noqa: PLC0415 - only with psycopg

        if isinstance(driver, psycopg.Connection):
            # From any thread: free nothing under a call blocked on it, wake it instead
            # (the threaded pool's contract; as the sync psycopg connector does it).
            from ..psycopg._sync_connector import _shutdown_socket  # noqa: PLC0415

            if driver.lock.acquire(blocking=False):
                try:
                    driver.pgconn.finish()
                finally:
                    driver.lock.release()
            else:
                _shutdown_socket(driver)
        else:
            driver.pgconn.finish()  # closes the socket; psycopg then reports it closed
    else:
        dbapi.close()


def _dead_check(driver: Any) -> Callable[[bool], bool]:
    """A cheap local check of ``driver`` (``deep``: also look at an idle socket), by its kind."""
    kind = _driver_kind(driver)
    if kind == "asyncpg":
        return lambda deep: bool(driver.is_closed())
    if kind == "psycopg":
        from psycopg import pq  # noqa: PLC0415 - only with psycopg

        from ..psycopg._wire import _socket_alive  # noqa: PLC0415 - only with psycopg

        pgconn = driver.pgconn
        busy = (pq.TransactionStatus.ACTIVE, pq.TransactionStatus.UNKNOWN)

        def psycopg_dead(deep: bool) -> bool:
            if driver.closed or driver.broken or pgconn.transaction_status in busy:
                return True
            return deep and not _socket_alive(driver)

        return psycopg_dead
    return lambda deep: bool(getattr(driver, "closed", False))


class _RecordJobs:
    """What both record connectors do without I/O: checks, termination, tagging, errors."""

    def __init__(self, sa_pool: SAPool) -> None:
        self.sa_pool = sa_pool
        self.shell: _Shell | None = None  # set by the shell that owns this connector
        self._server_settings: dict[str, str] = {}
        self._taggable = False
        self._disconnect_checks: dict[str, Callable[[BaseException], bool]] = {}

    # ------------------------------------------------------------------ making records

    def _new_record(self) -> ElasticRecord:
        """Connect one record through the SQLAlchemy pool's creator (in a greenlet if async)."""
        assert self.shell is not None
        settings = self._server_settings
        token = _SERVER_SETTINGS.set(settings or None)
        try:
            return ElasticRecord(self.sa_pool, self.shell)
        finally:
            _SERVER_SETTINGS.reset(token)

    def set_server_settings(self, settings: Mapping[str, str]) -> None:
        """Send ``settings`` when later connections open (through the dialect's ``do_connect``).

        A pool without an engine (a bare ``creator``) cannot add them: its
        connections stay untagged, which the fleet logs and copes with.
        """
        self._server_settings = dict(settings)
        if not self._taggable:
            self._taggable = _listen_for_tags(getattr(self.sa_pool, "_dialect", None))
            if not self._taggable:
                logger.info(
                    "pool %r: no engine dialect to tag connections with %s",
                    getattr(self.shell, "name", "?"),
                    sorted(settings),
                )

    # ------------------------------------------------------------------ checks

    def is_closed(self, rec: ElasticRecord) -> bool:
        """Whether ``rec`` cannot be lent as it is: closed, invalidated, or its driver says dead.

        Invalidated covers SQLAlchemy's own marks: the record was invalidated
        (no DBAPI connection), soft-invalidated, or is older than the pool's
        last invalidation (a disconnect seen on another connection). No
        round trip: asyncpg's ``is_closed()``; for psycopg its flags, its
        transaction status and, when the record is about to be lent, a
        non-blocking look at the socket (a backend that was terminated while
        the record sat idle is noticed before it is lent). On the way back
        from a borrower that look is skipped: SQLAlchemy's reset has just
        talked to the server.
        """
        dbapi = rec.dbapi_connection
        if dbapi is None:
            return True
        start = rec.starttime
        if self.sa_pool._invalidate_time > start or rec._soft_invalidate_time > start:
            return True
        if rec.checked_for is not dbapi:  # a new DBAPI connection: its driver's check, once
            rec.dead = _dead_check(rec.driver_connection)
            rec.checked_for = dbapi
        return rec.dead(not rec.returning)

    def needs_reset(self, rec: _ConnectionRecord, mode: ResetMode) -> bool:
        """Never: SQLAlchemy resets on return itself (``pool_reset_on_return``, ``reset`` event)."""
        return False

    def is_disconnect(self, exc: BaseException) -> bool:
        """Whether ``exc`` means its connection is dead (SQLAlchemy's verdict, or the driver's)."""
        from sqlalchemy import exc as sa_exc  # noqa: PLC0415 - cheap, already imported

        if isinstance(exc, sa_exc.DBAPIError):
            return bool(exc.connection_invalidated)
        module = type(exc).__module__
        if module.startswith("asyncpg"):
            from ..asyncpg._errors import is_disconnect_error  # noqa: PLC0415

            return is_disconnect_error(exc)
        if module.startswith("psycopg") and not module.startswith("psycopg2"):
            from ..psycopg._errors import is_disconnect_error as psycopg_disconnect  # noqa: PLC0415

            return psycopg_disconnect(exc)
        return False

    # ------------------------------------------------------------------ closing

    def terminate(self, rec: _ConnectionRecord) -> None:
        """Close ``rec``'s connection at once, with no I/O wait (fires the ``close`` event)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            return
        rec.finalize_callback.clear()
        try:
            if self.sa_pool.dispatch.close:
                self.sa_pool.dispatch.close(dbapi, rec)
        finally:
            rec.dbapi_connection = None
            try:
                _terminate_driver(rec, dbapi)
            except Exception as exc:  # pragma: no cover - a driver's close failing
                logger.debug("terminating %r failed: %r", dbapi, exc)


class AsyncRecordConnector(_RecordJobs):
    """An :class:`~elasticpool.Connector` of SQLAlchemy records, for an async engine's dialect.

    Every method that talks to the server runs SQLAlchemy's synchronous code
    in a greenlet (``greenlet_spawn``), so the async dialect can await the
    driver there, from whichever task of the pool calls it.
    """

    async def connect(self) -> ElasticRecord:
        """Open one server connection as a record; SQLAlchemy's connect events run now, once."""
        return await greenlet_spawn(self._new_record)

    async def close(self, rec: ElasticRecord) -> None:
        """Close ``rec`` (SQLAlchemy's ``close`` event, then the driver's close)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            return
        try:
            await greenlet_spawn(rec.close)
        except BaseException:
            _terminate_driver(rec, dbapi)  # a close cut short: do not leave the socket open
            raise

    async def ping(self, rec: ElasticRecord) -> None:
        """Raise if ``rec`` cannot serve a query (the dialect's own ping)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            raise RuntimeError("the connection record has no connection")
        await greenlet_spawn(self.sa_pool._dialect.do_ping, dbapi)  # type: ignore[union-attr]

    async def reset(self, rec: ElasticRecord, mode: ResetMode) -> None:
        """Nothing: see :meth:`needs_reset`."""

    def transaction(
        self, rec: ElasticRecord, *, readonly: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """A transaction on the driver's connection (for the fleet's statements)."""
        return _async_transaction(rec.driver_connection, readonly)


@contextlib.asynccontextmanager
async def _async_transaction(driver: Any, readonly: bool) -> AsyncIterator[Any]:
    if _driver_kind(driver) == "asyncpg":
        async with driver.transaction(readonly=readonly):
            yield driver
        return
    async with driver.transaction():
        if readonly:
            await driver.execute("SET TRANSACTION READ ONLY")
        yield driver


class SyncRecordConnector(_RecordJobs):
    """An ``elasticpool.SyncConnector`` of SQLAlchemy records, for a sync engine's dialect.

    Its calls block the calling thread (the threaded pool runs connects,
    closes and pings on its own threads). ``connect``'s timeout is the
    driver's to keep: pass ``connect_timeout`` in the URL or ``connect_args``
    for libpq.
    """

    def connect(self, timeout: float) -> ElasticRecord:
        """Open one server connection as a record; SQLAlchemy's connect events run now, once."""
        return self._new_record()

    def close(self, rec: ElasticRecord) -> None:
        """Close ``rec`` (SQLAlchemy's ``close`` event, then the driver's close)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            return
        try:
            rec.close()
        except BaseException:
            _terminate_driver(rec, dbapi)
            raise

    def ping(self, rec: ElasticRecord, timeout: float) -> None:
        """Raise if ``rec`` cannot serve a query (the dialect's own ping)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            raise RuntimeError("the connection record has no connection")
        self.sa_pool._dialect.do_ping(dbapi)  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            dbapi.rollback()  # the ping may have begun a transaction

    def reset(self, rec: ElasticRecord, mode: ResetMode) -> None:
        """Nothing: see :meth:`needs_reset`."""

    def abandon(self, rec: ElasticRecord) -> None:
        """In a forked child: make ``rec`` unusable here without touching the parent's session."""
        driver: Any = rec.driver_connection
        if driver is None or _driver_kind(driver) != "psycopg":
            return
        import os  # noqa: PLC0415

        try:
            fd = driver.pgconn.socket
        except Exception:
            return
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, fd)  # the parent's socket stays open in the parent only
        finally:
            os.close(null)

    def transaction(
        self, rec: ElasticRecord, *, readonly: bool = False
    ) -> contextlib.AbstractContextManager[Any]:
        """A transaction on the driver's connection (for the fleet's statements)."""
        return _sync_transaction(rec.driver_connection, readonly)

    def fetch(self, rec: ElasticRecord, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one fleet statement on the driver's connection (psycopg); rows as tuples.

        Outside a transaction it is a transaction of its own (the connection
        is switched to autocommit for it, with no round trip).
        """
        return _fetch_sync(rec.driver_connection, sql, args)


_PLACEHOLDER = re.compile(r"\$(\d+)")


def _fetch_sync(driver: Any, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """``sql`` (``$n`` placeholders, in order, once each) on a sync psycopg connection."""
    if _driver_kind(driver) != "psycopg":
        raise TypeError(
            f"cannot run fleet sql on a {type(driver).__module__}.{type(driver).__qualname__} "
            "connection: the fleet supports psycopg (3) for sync engines"
        )
    order = [int(n) for n in _PLACEHOLDER.findall(sql)]
    if order != list(range(1, len(order) + 1)) or len(order) != len(args):
        raise ValueError(f"placeholders must be $1..$n in order, once each: {sql!r}")
    from psycopg import pq  # noqa: PLC0415 - only with psycopg

    switch = not driver.autocommit and driver.info.transaction_status == pq.TransactionStatus.IDLE
    if switch:
        driver.autocommit = True
    try:
        with driver.cursor() as cur:
            cur.execute(_PLACEHOLDER.sub("%s", sql), list(args))
            if cur.description is None:
                return []
            return [tuple(r) for r in cur.fetchall()]
    finally:
        if switch and not driver.closed:
            driver.autocommit = False


@contextlib.contextmanager
def _sync_transaction(driver: Any, readonly: bool) -> Iterator[Any]:
    with driver.transaction():
        if readonly:
            driver.execute("SET TRANSACTION READ ONLY")
        yield driver


await_ = _await
"""SQLAlchemy's ``await_`` (``await_only`` before 2.1), for a greenlet of ``greenlet_spawn``."""

__all__ += ["await_", "in_greenlet"]
