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
no I/O (:class:`_RecordJobs`). What they do with the driver's own connection
under a record (terminate it, check it without a round trip, give it up after
a fork, run the fleet's statements) is the driver adapter's code, asked for
through :mod:`elasticpool._adapters` (see :mod:`elasticpool._driver`): this
module knows no driver.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine.interfaces import AdaptedConnection
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.util.concurrency import greenlet_spawn, in_greenlet

from .. import _adapters
from .._connector import ResetMode
from .._driver import AsyncDriverOps, DriverOps, ServerSettingsHook, SyncDriverOps

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


def _server_settings_listener(
    hook: ServerSettingsHook,
) -> Callable[[Dialect, Any, list[Any], dict[str, Any]], None]:
    """A ``do_connect`` listener putting this connect's server settings into the driver's kwargs.

    ``hook`` is the driver adapter's way (asyncpg takes them as
    ``server_settings``; libpq drivers take ``application_name`` as a
    parameter of its own and any other setting as ``-c name=value`` in
    ``options``).
    """

    def add_server_settings(
        dialect: Dialect, conn_rec: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        settings = _SERVER_SETTINGS.get()
        if settings:
            hook(cparams, settings)

    return add_server_settings


def _listen_for_tags(dialect: Any) -> str | None:
    """Make ``dialect``'s connects take server settings (once per dialect); else why it cannot."""
    if not hasattr(dialect, "dispatch") or not hasattr(dialect.dispatch, "do_connect"):
        return "no engine dialect to tag connections with"  # a bare creator: nothing to hook
    if dialect not in _TAGGING:
        driver = dialect.driver
        hook: ServerSettingsHook | None = _adapters.ask("_ops", "server_settings_hook", driver)
        if hook is None:
            return f"its driver {driver!r} takes no server settings elasticpool knows of"
        event.listen(dialect, "do_connect", _server_settings_listener(hook))
        _TAGGING.add(dialect)
    return None


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

    def __repr__(self) -> str:
        return f"<ElasticRecord {self.dbapi_connection!r}>"


def _driver_of(dbapi: Any) -> Any:
    """The driver's own connection under ``dbapi`` (an async dialect adapts it; a sync one not)."""
    return dbapi.driver_connection if isinstance(dbapi, AdaptedConnection) else dbapi


def _plain_dead_check(driver: Any) -> Callable[[bool], bool]:
    """For a driver no adapter knows (psycopg2, pg8000): a DB-API ``closed`` flag, if it has one."""
    return lambda deep: bool(getattr(driver, "closed", False))


class _RecordJobs:
    """What both record connectors do without I/O: checks, termination, tagging, errors."""

    def __init__(self, sqla: SAPool) -> None:
        self.sqla = sqla
        self.shell: _Shell | None = None  # set by the shell that owns this connector
        self._server_settings: dict[str, str] = {}
        self._taggable = False

    def _ops_for(self, driver: Any) -> DriverOps | None:
        """The driver adapter's operations on ``driver``, or ``None`` if no adapter knows it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ making records

    def _new_record(self) -> ElasticRecord:
        """Connect one record through the SQLAlchemy pool's creator (in a greenlet if async)."""
        assert self.shell is not None
        settings = self._server_settings
        token = _SERVER_SETTINGS.set(settings or None)
        try:
            return ElasticRecord(self.sqla, self.shell)
        finally:
            _SERVER_SETTINGS.reset(token)

    def set_server_settings(self, settings: Mapping[str, str]) -> None:
        """Send ``settings`` when later connections open (through the dialect's ``do_connect``).

        A pool without an engine (a bare ``creator``) cannot add them: its
        connections stay untagged, which the fleet logs and copes with.
        """
        self._server_settings = dict(settings)
        if not self._taggable:
            problem = _listen_for_tags(getattr(self.sqla, "_dialect", None))
            self._taggable = problem is None
            if problem is not None:
                logger.info(
                    "pool %r: %s: its connections are not tagged with %s",
                    getattr(self.shell, "name", "?"),
                    problem,
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
        if self.sqla._invalidate_time > start or rec._soft_invalidate_time > start:
            return True
        if rec.checked_for is not dbapi:  # a new DBAPI connection: its driver's check, once
            driver = rec.driver_connection
            ops = self._ops_for(driver)
            rec.dead = ops.dead_check(driver) if ops is not None else _plain_dead_check(driver)
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
        # The driver's own error (from the fleet's statements): its adapter's verdict.
        return bool(_adapters.ask("_ops", "is_disconnect_for", exc))

    # ------------------------------------------------------------------ closing

    def terminate(self, rec: _ConnectionRecord) -> None:
        """Close ``rec``'s connection at once, with no I/O wait (fires the ``close`` event)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            return
        rec.finalize_callback.clear()
        try:
            if self.sqla.dispatch.close:
                self.sqla.dispatch.close(dbapi, rec)
        finally:
            rec.dbapi_connection = None
            try:
                self._terminate_dbapi(dbapi)
            except Exception as exc:  # pragma: no cover - a driver's close failing
                logger.debug("terminating %r failed: %r", dbapi, exc)

    def _terminate_dbapi(self, dbapi: Any) -> None:
        """Close ``dbapi`` now, without waiting on the network, from any thread, without a greenlet.

        The driver adapter's ``terminate`` on the driver's connection; for a
        driver no adapter knows, the DB-API ``close()``.
        """
        driver = _driver_of(dbapi)
        ops = self._ops_for(driver)
        if ops is None:
            dbapi.close()
        else:
            ops.terminate(driver)

    @staticmethod
    def _unsupported(driver: Any) -> TypeError:
        kind = type(driver)
        return TypeError(
            f"ElasticPool cannot run statements (a fleet membership's, a percentage "
            f"total_max_connections) on a {kind.__module__}.{kind.__qualname__} connection: "
            "they need an asyncpg or psycopg (3) engine"
        )


class AsyncRecordConnector(_RecordJobs):
    """An :class:`~elasticpool.Connector` of SQLAlchemy records, for an async engine's dialect.

    Every method that talks to the server runs SQLAlchemy's synchronous code
    in a greenlet (``greenlet_spawn``), so the async dialect can await the
    driver there, from whichever task of the pool calls it; :meth:`fetch`
    and :meth:`transaction` (the fleet's) await the driver's connection
    directly.
    """

    def _ops_for(self, driver: Any) -> AsyncDriverOps | None:
        ops: AsyncDriverOps | None = _adapters.ask("_ops", "async_ops_for", driver)
        return ops

    def _statement_ops(self, rec: ElasticRecord) -> tuple[AsyncDriverOps, Any]:
        driver = rec.driver_connection
        ops = self._ops_for(driver)
        if ops is None:
            raise self._unsupported(driver)
        return ops, driver

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
            self._terminate_dbapi(dbapi)  # a close cut short: do not leave the socket open
            raise

    async def ping(self, rec: ElasticRecord) -> None:
        """Raise if ``rec`` cannot serve a query (the dialect's own ping)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            raise RuntimeError("the connection record has no connection")
        await greenlet_spawn(self.sqla._dialect.do_ping, dbapi)  # type: ignore[union-attr]

    async def reset(self, rec: ElasticRecord, mode: ResetMode) -> None:
        """Nothing: SQLAlchemy resets on return itself (see ``needs_reset``)."""

    def transaction(
        self, rec: ElasticRecord, *, readonly: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """A transaction on the driver's connection (for the fleet's statements)."""
        ops, driver = self._statement_ops(rec)
        return ops.transaction(driver, readonly=readonly)

    async def fetch(self, rec: ElasticRecord, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement on the driver's connection; its rows as tuples.

        ``Connector.fetch``'s contract (``$n`` placeholders; outside a
        transaction, a transaction of its own): the driver adapter's ``fetch``.
        """
        ops, driver = self._statement_ops(rec)
        return await ops.fetch(driver, sql, *args)


class SyncRecordConnector(_RecordJobs):
    """An ``elasticpool.SyncConnector`` of SQLAlchemy records, for a sync engine's dialect.

    Its calls block the calling thread (the threaded pool runs connects,
    closes and pings on its own threads). ``connect``'s timeout is the
    driver's to keep: pass ``connect_timeout`` in the URL or ``connect_args``
    for libpq.
    """

    def _ops_for(self, driver: Any) -> SyncDriverOps | None:
        ops: SyncDriverOps | None = _adapters.ask("_ops", "sync_ops_for", driver)
        return ops

    def _statement_ops(self, rec: ElasticRecord) -> tuple[SyncDriverOps, Any]:
        driver = rec.driver_connection
        ops = self._ops_for(driver)
        if ops is None:
            raise self._unsupported(driver)
        return ops, driver

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
            self._terminate_dbapi(dbapi)
            raise

    def ping(self, rec: ElasticRecord, timeout: float) -> None:
        """Raise if ``rec`` cannot serve a query (the dialect's own ping)."""
        dbapi = rec.dbapi_connection
        if dbapi is None:
            raise RuntimeError("the connection record has no connection")
        self.sqla._dialect.do_ping(dbapi)  # type: ignore[union-attr]
        with contextlib.suppress(Exception):
            dbapi.rollback()  # the ping may have begun a transaction

    def reset(self, rec: ElasticRecord, mode: ResetMode) -> None:
        """Nothing: SQLAlchemy resets on return itself (see ``needs_reset``)."""

    def abandon(self, rec: ElasticRecord) -> None:
        """In a forked child: make ``rec`` unusable here without touching the parent's session."""
        driver = rec.driver_connection
        if driver is None:
            return
        ops = self._ops_for(driver)
        if ops is not None:
            ops.abandon(driver)

    def transaction(
        self, rec: ElasticRecord, *, readonly: bool = False
    ) -> contextlib.AbstractContextManager[Any]:
        """A transaction on the driver's connection (for the fleet's statements)."""
        ops, driver = self._statement_ops(rec)
        return ops.transaction(driver, readonly=readonly)

    def fetch(self, rec: ElasticRecord, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement on the driver's connection; its rows as tuples.

        ``SyncConnector.fetch``'s contract (``$n`` placeholders; outside a
        transaction, a transaction of its own): the driver adapter's ``fetch``.
        """
        ops, driver = self._statement_ops(rec)
        return ops.fetch(driver, sql, *args)


await_ = _await
"""SQLAlchemy's ``await_`` (``await_only`` before 2.1), for a greenlet of ``greenlet_spawn``."""

__all__ += ["await_", "in_greenlet"]
