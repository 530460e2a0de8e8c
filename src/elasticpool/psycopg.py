"""psycopg 3 support (needs the ``psycopg`` extra, which includes ``psycopg_pool``).

Two things live here:

* :class:`PsycopgConnector`, the :class:`~elasticpool.Connector` that opens
  psycopg's own :class:`psycopg.AsyncConnection` objects for a
  :class:`~elasticpool.Pool`;
* :class:`AsyncConnectionPool`, a drop-in look-alike of
  :class:`psycopg_pool.AsyncConnectionPool` (3.3) running on an elastic
  :class:`~elasticpool.Pool`: change one import line and keep the rest of the
  code. ``docs/migrate-psycopg.md`` lists every difference.

psycopg's async connections run on asyncio only, so pools using them do too.

It is not a second psycopg_pool: there is no sync pool and no null pool, and
psycopg_pool's maintenance machinery (workers, scheduler, ``run_task``) does
not exist here; the elastic pool's planner does that job.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import select
import selectors
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from types import TracebackType
from typing import Any, Final, Generic, TypeAlias, cast

import anyio
import anyio.lowlevel
import psycopg
import psycopg_pool
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool.abc import ACT

from . import _errors
from ._connector import ResetMode, ends_session
from ._pool import Pool
from ._redact import dsn_passwords, dsn_problem, redact_dsn, unshown
from ._settings import PoolSettings

__all__ = [
    "AsyncConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "PsycopgConnector",
    "TooManyRequests",
    "check_connection",
    "is_disconnect_error",
]

logger = logging.getLogger("elasticpool")

ConninfoParam: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]]
"""A conninfo string, or a sync or async callable returning one (called at every connect)."""

KwargsParam: TypeAlias = (
    Mapping[str, Any] | Callable[[], Mapping[str, Any]] | Callable[[], Awaitable[Mapping[str, Any]]]
)
"""Connection keyword arguments, or a sync or async callable returning them (at every connect)."""

ConnectionCB: TypeAlias = Callable[[ACT], Awaitable[None]]
"""An async callback taking a connection: ``configure``, ``check`` and ``reset``."""

ReconnectFailedCB: TypeAlias = Callable[["AsyncConnectionPool[Any]"], Awaitable[None] | None]
"""``reconnect_failed(pool)``, sync or async."""

_IDLE: Final = pq.TransactionStatus.IDLE
_ACTIVE: Final = pq.TransactionStatus.ACTIVE
_UNKNOWN: Final = pq.TransactionStatus.UNKNOWN
_OK: Final = pq.ConnStatus.OK


_ENDING: Final[weakref.WeakSet[psycopg.AsyncConnection[Any]]] = weakref.WeakSet()
"""Connections whose server announced the end of the session, found by :func:`_socket_alive`.

Once read, that message is gone from the socket, and until the end-of-file
arrives libpq still says the connection is fine: the verdict has to be kept.
"""

_DISCARD_ALL: Final = "DISCARD ALL"
"""The session reset when the connection is idle: one statement, outside any transaction."""

_ROLLBACK_AND_DISCARD: Final = (
    "ROLLBACK; CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; "
    "UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"
)
"""The session reset when a transaction is open, in one round trip.

``DISCARD ALL`` cannot run inside a transaction block, and a multi-statement
query string is one (implicit) block, so ``ROLLBACK; DISCARD ALL`` fails.
The statements after ``ROLLBACK`` are what the PostgreSQL documentation gives
as the equivalent of ``DISCARD ALL``; each of them may run in a transaction.
"""

_ASYNC_CONNECTION: Any = psycopg.AsyncConnection
"""The default ``connection_class`` (typed ``Any`` so it fits any ``ACT``)."""

_SAFE_CONNINFO_KEYS: Final = ("host", "hostaddr", "port", "dbname", "user", "application_name")
"""The only connection parameters a repr shows (never a password, never an unknown key)."""

_MAX_CANCEL_THREADS: Final = 8
_cancel_slots = threading.BoundedSemaphore(_MAX_CANCEL_THREADS)
_CANCEL_TIMEOUT: Final = 5.0
"""Seconds a background cancel request may take before it is abandoned (libpq >= 17)."""


# =============================================================================
# error classification
# =============================================================================


def is_disconnect_error(exc: BaseException) -> bool:
    """Whether ``exc`` from psycopg means the connection it came from is dead.

    Yes for :class:`psycopg.OperationalError` with no SQLSTATE (psycopg's own
    "connection lost", "the connection is closed", "consuming input failed"),
    with a class 08 SQLSTATE (connection exception), and for 57P01, 57P02 and
    57P03 (admin shutdown, crash shutdown, cannot connect now).

    No for :class:`TimeoutError` (a query or scope timeout says nothing about
    the connection), and for pool errors: psycopg_pool's ``PoolTimeout``,
    ``PoolClosed`` and ``TooManyRequests`` are ``OperationalError`` without a
    SQLSTATE, but they come from a pool, not from a connection; nor for
    ``PipelineAborted``, which says an earlier statement of the pipeline failed.
    """
    if isinstance(
        exc,
        (
            TimeoutError,
            _errors.ElasticPoolError,
            psycopg_pool.PoolTimeout,
            psycopg_pool.PoolClosed,
            psycopg_pool.TooManyRequests,
            psycopg.errors.PipelineAborted,
        ),
    ):
        return False
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return ends_session(state)


# =============================================================================
# helpers
# =============================================================================


async def _resolve(value: Any) -> Any:
    """``value``, or what calling it returns (awaited if it is awaitable)."""
    if callable(value):
        value = value()
        if inspect.isawaitable(value):
            value = await value
    return value


def _add_settings(conninfo: str, kwargs: dict[str, Any], settings: Mapping[str, str]) -> None:
    """Put server ``settings`` into connect ``kwargs``, over what ``conninfo`` and they say.

    ``application_name`` is a connection parameter of its own; any other
    setting is appended to ``options`` (the kwargs' or the conninfo's) as
    ``-c name=value``, with spaces and backslashes escaped as libpq wants.
    """
    extra = []
    for name, value in settings.items():
        if name == "application_name":
            kwargs["application_name"] = value
        else:
            escaped = value.replace("\\", "\\\\").replace(" ", "\\ ")
            extra.append(f"-c {name}={escaped}")
    if extra:
        options = kwargs.get("options")
        if options is None:
            options = conninfo_to_dict(conninfo).get("options")
        kwargs["options"] = " ".join([str(options), *extra] if options else extra)


def _status_name(conn: psycopg.AsyncConnection[Any]) -> str:
    return pq.TransactionStatus(conn.pgconn.transaction_status).name


def _socket_readable(fd: int) -> bool:
    """Whether ``fd`` has something to read now (no waiting)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


def _socket_alive(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection's socket still looks alive, without a round trip.

    An idle connection has nothing to read unless the server said something
    on its own: a notification, a notice, a parameter change, or, when it
    ends the session (``pg_terminate_backend``, shutdown, crash), an error
    message followed by end-of-file. Whatever is there is read (non-blocking,
    from the kernel's buffer) and parsed the way psycopg itself does it, and
    notifications and notices reach psycopg as they would. The connection is
    dead if libpq saw end-of-file, or if the server's message says the session
    is ending (severity FATAL or PANIC, or SQLSTATE 57P01/57P02/57P03, class
    08): the end-of-file may not have arrived yet. That verdict is kept: the
    message is consumed, so the next look would see nothing to read and a
    status that still says OK until the end-of-file comes.
    """
    if conn in _ENDING:
        return False
    pgconn = conn.pgconn
    try:
        fd = pgconn.socket
        if not _socket_readable(fd):
            return True
        ending = False
        forward = pgconn.notice_handler

        def spy(result: pq.abc.PGresult) -> None:
            nonlocal ending
            ending = ending or _ends_session(result)
            if forward is not None:
                forward(result)

        pgconn.notice_handler = spy
        try:
            for _ in range(4):  # an error message, then end-of-file: two reads
                pgconn.consume_input()
                if not _socket_readable(fd):
                    break
            while (notify := pgconn.notifies()) is not None:  # parses what was read
                if pgconn.notify_handler:
                    pgconn.notify_handler(notify)
        finally:
            pgconn.notice_handler = forward
    except (psycopg.Error, OSError, ValueError):
        return False
    if ending:
        _ENDING.add(conn)
        return False
    return pgconn.status == _OK


def _ends_session(result: pq.abc.PGresult) -> bool:
    """Whether an unsolicited server message announces the end of the session."""
    severity = result.error_field(pq.DiagnosticField.SEVERITY_NONLOCALIZED) or b""
    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode("ascii", "replace")
    return severity in (b"FATAL", b"PANIC") or ends_session(sqlstate)


def _finish(conn: psycopg.AsyncConnection[Any]) -> None:
    """Close the socket now (no I/O wait); libpq sends a Terminate message if it can."""
    conn.pgconn.finish()


def _cancel_handle(pgconn: pq.abc.PGconn) -> pq.abc.PGcancelConn | pq.abc.PGcancel:
    """What :func:`_cancel_in_background` needs to cancel ``pgconn``'s query later.

    With libpq 17 or later, a non-blocking cancel connection (``PQcancelCreate``),
    else the legacy cancel key (``PQgetCancel``). Taken while the connection is
    up: neither can be made once psycopg has closed it.
    """
    if psycopg.capabilities.has_cancel_safe():
        return pgconn.cancel_conn()
    return pgconn.get_cancel()


def _send_cancel(cancel: pq.abc.PGcancelConn | pq.abc.PGcancel) -> None:
    """Send one cancel request; bounded by :data:`_CANCEL_TIMEOUT` with libpq 17 or later.

    libpq's legacy ``PQcancel`` blocks until the server answers, and
    psycopg's C implementation calls it without releasing the GIL: against a
    server that never answers (a network partition) it would freeze every
    thread of the process. The non-blocking API is driven here with a
    selector wait instead, which releases the GIL and gives up in time.
    """
    if not psycopg.capabilities.has_cancel_safe():  # libpq < 17: a legacy key
        cast("pq.abc.PGcancel", cancel).cancel()
        return
    cancel = cast("pq.abc.PGcancelConn", cancel)
    deadline = time.monotonic() + _CANCEL_TIMEOUT
    try:
        cancel.start()
        while (status := cancel.poll()) != pq.PollingStatus.OK:
            if status == pq.PollingStatus.FAILED:
                raise psycopg.OperationalError(cancel.get_error_message())
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to the cancel request within {_CANCEL_TIMEOUT:g}s")
            event = selectors.EVENT_READ
            if status == pq.PollingStatus.WRITING:
                event = selectors.EVENT_WRITE
            with selectors.DefaultSelector() as selector:
                selector.register(cancel.socket, event)
                selector.select(left)
    finally:
        cancel.finish()


def _cancel_in_background(cancel: pq.abc.PGcancelConn | pq.abc.PGcancel) -> None:
    """Send a cancel request for a query that may still run on the server, without waiting.

    A connection psycopg gave up on mid-query (its task was cancelled again
    while psycopg was cancelling the query) is closed on the client side, but
    its backend keeps running the query until it next writes to the socket.
    The cancel handle was taken when the connection was made
    (:func:`_cancel_handle`); the request runs in a daemon thread (at most a
    few at once; past that, the request is skipped) and gives up after
    :data:`_CANCEL_TIMEOUT` (see :func:`_send_cancel`). Sent for a backend
    that is already gone, it is ignored by the server.
    """
    if not _cancel_slots.acquire(blocking=False):
        logger.debug("too many cancel requests in flight: skipping one")
        return

    def run() -> None:
        try:
            _send_cancel(cancel)
        except Exception as exc:
            logger.debug("cancel request failed: %r", exc)
        finally:
            _cancel_slots.release()

    try:
        threading.Thread(target=run, name="elasticpool-psycopg-cancel", daemon=True).start()
    except RuntimeError as exc:  # no thread to be had (interpreter shutting down)
        _cancel_slots.release()
        logger.debug("cancel request not sent: %r", exc)


def _forget_prepared(conn: psycopg.AsyncConnection[Any]) -> None:
    """Empty psycopg's prepared-statement cache of ``conn`` after the server dropped them all.

    psycopg counts executions per query and prepares a query server-side
    after ``prepare_threshold`` of them, remembering its name. Once
    ``DEALLOCATE ALL`` (or ``DISCARD ALL``) ran, those names are gone on the
    server: psycopg must forget them, or the next borrower's execution of a
    cached query fails with "prepared statement _pg3_0 does not exist".
    psycopg forgets them by itself only on some code paths, so it is done here
    on its internal ``PrepareManager`` (counts, names, and the pending
    ``DEALLOCATE`` queue, which would only cost a needless round trip). If
    psycopg's internals ever change shape, this raises and the pool discards
    the connection rather than hand out an inconsistent one.
    """
    manager = conn._prepared
    manager._counts.clear()
    manager._names.clear()
    manager._to_flush.clear()


def _log_returned_state(conn: Any) -> None:
    """psycopg_pool's warnings for a connection given back in a bad state (same texts)."""
    if conn.closed or conn.pgconn.transaction_status == _UNKNOWN:
        logger.warning("discarding closed connection: %s", conn)
    elif conn.pgconn.transaction_status == _ACTIVE:
        logger.warning("closing returned connection: %s", conn)
    elif conn.pgconn.transaction_status != _IDLE:
        logger.warning("rolling back returned connection: %s", conn)


async def check_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """Return quietly if ``conn`` can serve a query, else raise (one round trip).

    Exactly psycopg_pool's ``AsyncConnectionPool.check_connection``: an
    empty query, in autocommit so that no transaction is started.
    """
    if conn.autocommit:
        await conn.execute("")
        return
    await conn.set_autocommit(True)
    try:
        await conn.execute("")
    finally:
        with suppress(Exception):  # a closed connection must not clobber the real error
            await conn.set_autocommit(False)


class _Snapshot:
    """What a connection looked like right after ``configure``: restored by the session reset."""

    __slots__ = (
        "autocommit",
        "cancel",
        "cursor_factory",
        "deferrable",
        "isolation_level",
        "notice_handlers",
        "notify_handlers",
        "prepare_threshold",
        "prepared_max",
        "read_only",
        "row_factory",
        "server_cursor_factory",
    )

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.cancel: pq.abc.PGcancelConn | pq.abc.PGcancel | None
        try:
            self.cancel = _cancel_handle(conn.pgconn)
        except psycopg.Error:  # pragma: no cover - only on a connection already broken
            self.cancel = None
        self.autocommit = conn.autocommit
        self.isolation_level = conn.isolation_level
        self.read_only = conn.read_only
        self.deferrable = conn.deferrable
        self.row_factory = conn.row_factory
        self.cursor_factory = conn.cursor_factory
        self.server_cursor_factory = conn.server_cursor_factory
        self.prepare_threshold = conn.prepare_threshold
        self.prepared_max = conn.prepared_max
        self.notify_handlers = list(conn._notify_handlers)
        self.notice_handlers = list(conn._notice_handlers)

    async def restore(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Put the Python-side connection state back (no round trip; ``conn`` must be idle)."""
        if conn.autocommit != self.autocommit:
            await conn.set_autocommit(self.autocommit)
        if conn.isolation_level != self.isolation_level:
            await conn.set_isolation_level(self.isolation_level)
        if conn.read_only != self.read_only:
            await conn.set_read_only(self.read_only)
        if conn.deferrable != self.deferrable:
            await conn.set_deferrable(self.deferrable)
        anyconn = cast(Any, conn)
        anyconn.row_factory = self.row_factory
        anyconn.cursor_factory = self.cursor_factory
        anyconn.server_cursor_factory = self.server_cursor_factory
        conn.prepare_threshold = self.prepare_threshold
        conn.prepared_max = self.prepared_max
        conn._notify_handlers[:] = self.notify_handlers
        conn._notice_handlers[:] = self.notice_handlers
        backlog = conn._notifies_backlog
        if backlog is not None:  # notifications the last borrower received and never read
            backlog.clear()


# =============================================================================
# the connector
# =============================================================================


class PsycopgConnector(Generic[ACT]):
    """Opens :class:`psycopg.AsyncConnection` objects for a :class:`~elasticpool.Pool`.

    ``PsycopgConnector(conninfo, kwargs=..., connection_class=...,
    configure=..., check=..., reset=...)`` takes psycopg_pool's connection
    parameters with psycopg_pool's meaning:

    ``conninfo`` / ``kwargs``
        Passed to ``connection_class.connect(conninfo, **kwargs)``. Either may
        be a callable, sync or async, returning the value: it is called at
        every connect, so rotated credentials are picked up by the next new
        connection.
    ``configure(conn)``
        Awaited on each new connection. If it raises, or leaves the connection
        in a transaction, the connection is closed and the connect counts as
        failed.
    ``check(conn)``
        What :meth:`ping` runs instead of :func:`check_connection`.
    ``reset(conn)``
        Awaited on every returned connection after the built-in reset (below);
        it must leave the connection idle, or the connection is discarded.

    :meth:`set_server_settings` (called by a fleet membership) adds server
    settings for later connects: ``application_name`` as that parameter, any
    other as ``-c name=value`` after the ``options`` already given.

    Release hygiene (the pool's ``reset`` setting; the pool runs it in the
    background, and a reset that fails discards the connection):

    * a connection returned mid-query (``ACTIVE``: a task cancelled during a
      query, a half-read stream) or ``UNKNOWN`` (closed) is never reused:
      :meth:`is_closed` says yes, and closing it sends the server a cancel
      request for the query left running;
    * ``"rollback"`` (psycopg_pool's behaviour): ``conn.rollback()`` if a
      transaction is open or failed; nothing else;
    * ``"session"``: one round trip, ``DISCARD ALL`` (idle connection) or
      ``ROLLBACK; CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL;
      DEALLOCATE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD
      PLANS; DISCARD TEMP; DISCARD SEQUENCES`` (open transaction); then,
      without I/O, psycopg's prepared-statement cache is emptied and the
      connection's ``autocommit``, ``isolation_level``, ``read_only``,
      ``deferrable``, ``row_factory``, ``cursor_factory``,
      ``server_cursor_factory``, ``prepare_threshold``, ``prepared_max``,
      notice and notify handlers are put back as they were after
      ``configure``, and unread notifications are dropped. Session settings
      made by ``configure`` with ``SET`` are reset too: pass them as startup
      parameters (``options="-c search_path=app"``) to keep them.

    :meth:`is_closed` costs no round trip: besides psycopg's own flags it
    reads, without blocking, whatever an idle connection's socket holds, so a
    backend that was terminated or a server that went away is noticed before
    the connection is lent.

    Its :func:`repr` shows host, port, database, user and application name
    only: never a password. Nor do its errors: a URI whose password holds an
    unencoded ``#``, ``/``, ``?`` or ``@`` (which libpq would misread, quoting
    a piece of it) is refused with :class:`ValueError` (here for a string, at
    connect for a callable's result), and a ``conninfo`` with a password that
    libpq cannot parse fails to connect with a :class:`psycopg.ProgrammingError`
    of ours, without libpq's message.

    It is not a pool and keeps no connections; it keeps a small weak record
    per connection (the cancel key and the attributes to restore).
    """

    def __init__(
        self,
        conninfo: ConninfoParam = "",
        *,
        kwargs: KwargsParam | None = None,
        connection_class: type[ACT] = _ASYNC_CONNECTION,
        configure: ConnectionCB[ACT] | None = None,
        check: ConnectionCB[ACT] | None = None,
        reset: ConnectionCB[ACT] | None = None,
    ) -> None:
        if isinstance(conninfo, str) and (problem := dsn_problem(conninfo)) is not None:
            raise ValueError(_unparsable(type(self).__name__, conninfo, problem))
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self.configure = configure
        self.check = check
        self.reset_callback = reset
        self._snapshots: weakref.WeakKeyDictionary[ACT, _Snapshot] = weakref.WeakKeyDictionary()
        self._server_settings: dict[str, str] = {}

    def set_server_settings(self, settings: Mapping[str, str]) -> None:
        """Send ``settings`` at every later connect, over the conninfo's values of those names."""
        self._server_settings = dict(settings)

    # ------------------------------------------------------------------ connect / close

    async def connect(self) -> ACT:
        """Resolve ``conninfo`` and ``kwargs``, connect, run ``configure``; raise on any failure."""
        conninfo = await _resolve(self.conninfo) or ""
        kwargs = dict(await _resolve(self.kwargs) or {})
        unparsable = _check_conninfo(type(self).__name__, conninfo)
        if unparsable is not None:
            raise unparsable
        if self._server_settings:
            _add_settings(conninfo, kwargs, self._server_settings)
        conn = await self.connection_class.connect(conninfo, **kwargs)
        try:
            # Pooled: psycopg does not warn "deleted while still open" about it,
            # and ``async with conn`` does not close it (as with psycopg_pool).
            conn._pool = None
            configure = self.configure
            if configure is not None:
                await configure(conn)
                if conn.pgconn.transaction_status != _IDLE:
                    raise psycopg.ProgrammingError(
                        f"connection left in status {_status_name(conn)} "
                        f"by configure function {configure!r}: discarded"
                    )
            self._snapshots[conn] = _Snapshot(conn)
        except BaseException:
            # configure failed, or was cancelled (maybe mid-query: cancel that too)
            if not conn.closed and conn.pgconn.transaction_status == _ACTIVE:
                _cancel_in_background(_cancel_handle(conn.pgconn))
            _finish(conn)
            raise
        return conn

    def _cancel_left_query(self, conn: ACT) -> None:
        """Cancel, in the background, a query ``conn`` may have left running on the server.

        That is when it is mid-query (``ACTIVE``) or was broken off by the
        client (psycopg closes the socket when its own cancellation of a query
        is interrupted). A broken connection whose backend is already gone
        costs one refused or ignored cancel request.
        """
        if conn.broken or (not conn.closed and conn.pgconn.transaction_status == _ACTIVE):
            snapshot = self._snapshots.get(conn)
            if snapshot is not None and snapshot.cancel is not None:
                _cancel_in_background(snapshot.cancel)

    async def close(self, conn: ACT) -> None:
        """Close ``conn``; a query it left running is cancelled on the server, in the background."""
        self._cancel_left_query(conn)
        await conn.close()

    def terminate(self, conn: ACT) -> None:
        """Close ``conn`` at once, without waiting on the network."""
        self._cancel_left_query(conn)
        _finish(conn)

    # ------------------------------------------------------------------ health

    def is_closed(self, conn: ACT) -> bool:
        """Whether ``conn`` cannot be reused as it is: closed, broken, mid-query, or found dead.

        No round trip: psycopg's flags, the transaction status (``ACTIVE``
        and ``UNKNOWN`` say yes), and a non-blocking look at the socket.
        """
        if conn.closed:
            return True
        status = conn.pgconn.transaction_status
        if status in (_ACTIVE, _UNKNOWN):
            return True
        return not _socket_alive(conn)

    async def ping(self, conn: ACT) -> None:
        """Run ``check(conn)`` if given, else :func:`check_connection`; raise if unusable."""
        check = self.check
        if check is None:
            await check_connection(conn)
            return
        await check(conn)
        if conn.pgconn.transaction_status != _IDLE:
            raise psycopg.ProgrammingError(
                f"connection left in status {_status_name(conn)} by check function {check!r}"
            )

    def is_disconnect(self, exc: BaseException) -> bool:
        """See :func:`is_disconnect_error`."""
        return is_disconnect_error(exc)

    # ------------------------------------------------------------------ reset

    def needs_reset(self, conn: ACT, mode: ResetMode) -> bool:
        """``"session"`` or a ``reset`` callback: always; ``"rollback"``: if not idle."""
        if mode == "none":
            return False
        if mode == "session" or self.reset_callback is not None:
            return True
        return conn.pgconn.transaction_status != _IDLE

    async def reset(self, conn: ACT, mode: ResetMode) -> None:
        """Make ``conn`` clean for the next borrower under ``mode``; raise if it cannot be.

        See the class docstring for exactly what each mode does.
        """
        status = conn.pgconn.transaction_status
        if conn.closed or status in (_ACTIVE, _UNKNOWN):
            raise psycopg.OperationalError(
                f"connection in status {_status_name(conn)} cannot be reset"
            )
        if mode == "session":
            await self._reset_session(conn, status)
        elif status != _IDLE:
            await conn.rollback()
        callback = self.reset_callback
        if callback is not None:
            await callback(conn)
            if conn.pgconn.transaction_status != _IDLE:
                raise psycopg.ProgrammingError(
                    f"connection left in status {_status_name(conn)} "
                    f"by reset function {callback!r}: discarded"
                )

    async def _reset_session(self, conn: ACT, status: int) -> None:
        # The server is about to drop every prepared statement: psycopg must
        # forget them first, or it would queue a DEALLOCATE ALL of its own.
        _forget_prepared(conn)
        if status == _IDLE:
            if not conn.autocommit:  # else psycopg would send BEGIN first
                await conn.set_autocommit(True)
            await conn.execute(_DISCARD_ALL, prepare=False)
        elif conn._num_transactions or conn._tpc is not None or conn._pipeline is not None:
            # psycopg's rollback() refuses the first two (psycopg_pool then
            # discards the connection too); DISCARD ALL cannot run in a pipeline.
            raise psycopg.ProgrammingError(
                "connection returned inside a transaction() block, a two-phase "
                "transaction or a pipeline: discarded"
            )
        else:
            await conn.execute(_ROLLBACK_AND_DISCARD, prepare=False)
        _forget_prepared(conn)  # the reset statement itself was counted
        snapshot = self._snapshots.get(conn)
        if snapshot is not None:
            await snapshot.restore(conn)
        if conn.pgconn.transaction_status != _IDLE:  # pragma: no cover - defensive
            raise psycopg.ProgrammingError(
                f"connection left in status {_status_name(conn)} by the session reset"
            )

    # ------------------------------------------------------------------ transactions

    def transaction(self, conn: ACT, *, readonly: bool = False) -> AbstractAsyncContextManager[Any]:
        """psycopg's own ``conn.transaction()``: BEGIN, then COMMIT, or ROLLBACK on an error.

        ``readonly=True`` runs ``SET TRANSACTION READ ONLY`` first thing inside it.
        """
        return _transaction(conn, readonly)

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_describe_target(self.conninfo, self.kwargs)}>"


def _transaction(conn: ACT, readonly: bool) -> AbstractAsyncContextManager[Any]:
    """``conn.transaction()``, read-only when asked (psycopg's own has no such flag)."""
    tx: AbstractAsyncContextManager[Any] = conn.transaction()
    return _readonly_transaction(conn, tx) if readonly else tx


@asynccontextmanager
async def _readonly_transaction(
    conn: ACT, tx: AbstractAsyncContextManager[Any]
) -> AsyncIterator[Any]:
    async with tx as inner:
        await conn.execute("SET TRANSACTION READ ONLY", prepare=False)
        yield inner


def _unparsable(who: str, conninfo: str, why: str) -> str:
    return f"cannot parse the dsn given to {who} ({redact_dsn(conninfo)}): {why}"


def _check_conninfo(who: str, conninfo: object) -> Exception | None:
    """The error to raise for a ``conninfo`` with a password libpq would misread or refuse.

    libpq's own parse errors quote the string (a password, or a piece of it);
    the error returned does not, and chains nothing.
    """
    if not isinstance(conninfo, str) or not dsn_passwords(conninfo):
        return None
    problem = dsn_problem(conninfo)
    if problem is not None:
        return ValueError(_unparsable(who, conninfo, problem))
    try:
        conninfo_to_dict(conninfo)
    except Exception as exc:
        return psycopg.ProgrammingError(_unparsable(who, conninfo, unshown(exc)))
    return None


def _describe_target(conninfo: object, kwargs: object) -> str:
    """``host=... port=... dbname=... user=...`` from safe keys only; callables are not called."""
    params: dict[str, object] = {}
    notes: list[str] = []
    if callable(conninfo):
        notes.append("conninfo=<callable>")
    elif isinstance(conninfo, str) and conninfo:
        try:
            params.update(conninfo_to_dict(conninfo))
        except Exception:  # its message may quote the string: never show it
            notes.append("conninfo=<unparsable>")
    if callable(kwargs):
        notes.append("kwargs=<callable>")
    elif isinstance(kwargs, Mapping):
        params.update(kwargs)
    shown = [f"{key}={params[key]}" for key in _SAFE_CONNINFO_KEYS if params.get(key) is not None]
    return " ".join(shown + notes) or "default"


# =============================================================================
# psycopg_pool's errors
# =============================================================================


class PoolTimeout(psycopg_pool.PoolTimeout, _errors.PoolTimeout):
    """psycopg_pool's ``PoolTimeout`` and elasticpool's at once (and so a :class:`TimeoutError`).

    ``except psycopg_pool.PoolTimeout``, ``except elasticpool.PoolTimeout`` and
    ``except TimeoutError`` all catch it.
    """


class PoolClosed(psycopg_pool.PoolClosed, _errors.PoolClosed):
    """psycopg_pool's ``PoolClosed`` and elasticpool's at once."""


class TooManyRequests(psycopg_pool.TooManyRequests, _errors.TooManyWaiters):
    """psycopg_pool's ``TooManyRequests`` and elasticpool's ``TooManyWaiters`` at once."""


# =============================================================================
# the psycopg_pool look-alike
# =============================================================================

_pool_numbers = itertools.count(1)

_PSYCOPG_VERSION: Final = tuple(int(part) for part in psycopg.__version__.split(".")[:2])

_PSYCOPG_NAMES: Final = {
    "min_connections": "min_size",
    "max_connections": "max_size",
    "pool_timeout": "timeout",
    "max_waiting": "max_waiting",
    "connection_lifetime": "max_lifetime",
    "idle_timeout": "max_idle",
    "max_connecting": "num_workers",
    "reset": "reset_mode",
}
"""elasticpool settings the face sets from psycopg_pool's parameters: not accepted as extras."""

_COUNTERS: Final = (
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
)

_MS_EVENTS: Final = {
    "requests_wait_ms": "requests_queued",
    "usage_ms": "_usages",
    "connections_ms": "_connects_ok",
}
"""psycopg_pool reports a time counter once its event happened, even at 0 ms."""


def _check_size(min_size: int, max_size: int | None) -> tuple[int, int]:
    """psycopg_pool's own size validation, with its messages."""
    if max_size is None:
        max_size = min_size
    if min_size < 0:
        raise ValueError("min_size cannot be negative")
    if max_size < min_size:
        raise ValueError("max_size must be greater or equal than min_size")
    if min_size == max_size == 0:
        raise ValueError("if min_size is 0 max_size must be greater than 0")
    return min_size, max_size


def _psycopg_wording(message: str) -> str:
    """A settings error about a mapped field, named the psycopg_pool way first."""
    for field, psycopg_name in _PSYCOPG_NAMES.items():
        if message.startswith(f"{field} ") and psycopg_name != field:
            return f"{psycopg_name} ({field}){message[len(field) :]}"
    return message


def _seconds(value: float) -> float | None:
    """psycopg_pool takes ``inf`` for "no limit"; elasticpool spells it ``None``."""
    return None if value == float("inf") else value


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


class AsyncConnectionPool(Generic[ACT]):
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
    does) may be ``"session"`` for a full session reset; any other
    :class:`~elasticpool.PoolSettings` field may be passed by keyword.

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
        **elastic_settings: Any,
    ) -> None:
        min_size, max_size = _check_size(min_size, max_size)
        if not name:
            name = f"pool-{next(_pool_numbers)}"
        if num_workers < 1:
            raise ValueError("num_workers must be at least 1")
        if close_returns and _PSYCOPG_VERSION < (3, 3):
            raise TypeError(
                "close_returns=True needs psycopg 3.3 or newer, whose connection close() "
                f"hands a pooled connection back (psycopg {psycopg.__version__} is installed)"
            )
        clash = sorted(elastic_settings.keys() & _PSYCOPG_NAMES.keys())
        if clash:
            key = clash[0]
            raise TypeError(
                f"{key!r} is set from psycopg_pool's {_PSYCOPG_NAMES[key]!r}: "
                f"pass {_PSYCOPG_NAMES[key]}= instead"
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

        settings: dict[str, Any] = {
            "min_connections": min_size,
            "max_connections": max_size,
            "pool_timeout": _seconds(timeout),
            "max_waiting": max_waiting or None,
            "connection_lifetime": _seconds(max_lifetime),
            "idle_timeout": _seconds(max_idle),
            "lifetime_jitter": 0.05,
            "max_connecting": num_workers,
            "reset": reset_mode,
        }
        if check is not None:
            settings["ping_after"] = 0.0
        settings.update(elastic_settings)
        try:
            pool_settings = PoolSettings(**settings)
        except (TypeError, ValueError) as exc:
            raise type(exc)(_psycopg_wording(str(exc))) from None
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
        self.elastic: Pool[ACT] = Pool(connector, pool_settings, name=name)
        """The :class:`elasticpool.Pool` underneath (its ``stats()``, ``transaction()``…)."""

        # psycopg_pool's lifecycle flags: closed until opened; opened at most once.
        self._closed = True
        self._opened = False
        self._open_implicit = False
        self._core_started = False
        self._tasks: set[asyncio.Task[Any]] = set()

        # statistics
        self._requests_num = 0
        self._requests_errors = 0
        self._wait_ms = 0
        self._usage_ms = 0
        self._usages = 0
        self._baseline: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self._baseline_events: dict[str, int] = dict.fromkeys(_MS_EVENTS.values(), 0)

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

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("pool %r: background task failed: %r", self.name, exc)

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
            await self.elastic.wait(timeout=_seconds(timeout))
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
        if self.elastic.stats().in_use == 0:
            await self.elastic.close(timeout=_seconds(timeout))
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
        now = self.elastic._now  # the loop's clock, bound at open: anyio's costs ~1 us a call
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
        now = self.elastic._now  # the loop's clock, bound at open: anyio's costs ~1 us a call
        started = now()
        try:
            conn = await self.elastic.acquire(timeout=_seconds(timeout))
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
            self.elastic._borrow_of(conn, "returned")
        except RuntimeError as exc:  # a stale putconn (see Pool.release): that borrow stands
            raise ValueError(f"can't return connection to pool {self.name!r}; {exc}") from None
        cast(Any, conn)._pool = None
        _log_returned_state(conn)
        self.elastic.release(conn, exc=error)

    # ------------------------------------------------------------------ maintenance

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size`` and ``max_size`` now (``max_size`` ``None``: ``min_size``).

        A raised limit serves waiters at once; a lowered one closes idle
        surplus now and borrowed surplus as it comes back.
        """
        min_size, max_size = _check_size(min_size, max_size)
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

    def _counters(self) -> tuple[dict[str, float], dict[str, int]]:
        s = self.elastic.stats()
        counters: dict[str, float] = {
            "requests_num": self._requests_num,
            "requests_queued": s.waits,
            "requests_wait_ms": self._wait_ms / 1000.0,
            "requests_errors": self._requests_errors,
            "usage_ms": self._usage_ms / 1000.0,
            "returns_bad": s.returned_broken,
            "connections_num": s.connects + s.connect_errors,
            "connections_ms": s.total_connect_time,
            "connections_errors": s.connect_errors,
            "connections_lost": s.closed_broken - s.returned_broken,
        }
        events = {"requests_queued": s.waits, "_usages": self._usages, "_connects_ok": s.connects}
        return counters, events

    def _measures(self) -> dict[str, int]:
        s = self.elastic.stats()
        return {
            "pool_min": self._min_size,
            "pool_max": self._max_size,
            "pool_size": s.size,
            "pool_available": s.idle,
            "requests_waiting": s.waiting,
        }

    def _stats_since_baseline(self) -> dict[str, int]:
        counters, events = self._counters()
        out: dict[str, int] = {}
        for key in _COUNTERS:
            delta = counters[key] - self._baseline[key]
            value = round(1000.0 * delta) if key.endswith("_ms") else int(delta)
            event = _MS_EVENTS.get(key)
            happened = event is not None and events[event] > self._baseline_events[event]
            if value or happened:
                out[key] = value
        out.update(self._measures())
        return out

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's statistics: counters since the last :meth:`pop_stats`, and gauges.

        Keys are exactly psycopg_pool's; as there, a counter appears once
        something counted (times in whole milliseconds).
        """
        return self._stats_since_baseline()

    def pop_stats(self) -> dict[str, int]:
        """Like :meth:`get_stats`, then start the counters again from zero."""
        stats = self._stats_since_baseline()
        self._baseline, self._baseline_events = self._counters()
        return stats
