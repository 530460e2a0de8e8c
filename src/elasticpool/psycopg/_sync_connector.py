""":class:`SyncPsycopgConnector`: psycopg's sync connections for :class:`~elasticpool.SyncPool`.

What a connection needs between two borrowers is decided once, with the
async connector: the reset statements and psycopg's prepared-statement cache
(``_reset``), which errors mean a dead connection (``_errors``), the idle
socket probe and background cancel requests (``_wire``), the conninfo
checks and redaction (``_connector``). Here they are driven with blocking
calls.
"""

from __future__ import annotations

import math
import os
import selectors
import socket
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any, Generic, TypeAlias, cast

import psycopg
from psycopg import errors, pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg_pool.abc import CT

from .._connector import ResetMode
from .._redact import dsn_problem
from .._sql import PLACEHOLDER, check_placeholders
from ._connector import (
    _add_settings,
    _check_conninfo,
    _describe_target,
    _hint_pooler,
    _unparsable,
    _without_refused,
)
from ._errors import is_disconnect_error
from ._reset import _DISCARD_ALL, _ROLLBACK_AND_DISCARD, _forget_prepared, _Snapshot
from ._wire import (
    _ACTIVE,
    _BAD,
    _IDLE,
    _UNKNOWN,
    _cancel_in_background,
    _finish,
    _socket_alive,
    _status_name,
    abandon_socket,
)

__all__ = ["SyncConnectionCB", "SyncPsycopgConnector", "check_connection_sync"]

SyncConninfoParam: TypeAlias = str | Callable[[], str]
"""A conninfo string, or a callable returning one (called at every connect)."""

SyncKwargsParam: TypeAlias = Mapping[str, Any] | Callable[[], Mapping[str, Any]]
"""Connection keyword arguments, or a callable returning them (called at every connect)."""

SyncConnectionCB: TypeAlias = Callable[[CT], None]
"""A callback taking a connection: ``configure``, ``check`` and ``reset``."""

_CONNECTION: Any = psycopg.Connection
"""The default ``connection_class`` (typed ``Any`` so it fits any ``CT``)."""


_LIBPQ_MIN_CONNECT_TIMEOUT = 2
"""libpq's ``connect_timeout`` is whole seconds, and at least 2."""


def check_connection_sync(conn: psycopg.Connection[Any]) -> None:
    """Return quietly if ``conn`` can serve a query, else raise (one round trip).

    Exactly psycopg_pool's ``ConnectionPool.check_connection``: an empty
    query, in autocommit so that no transaction is started.
    """
    if conn.autocommit:
        conn.execute("")
        return
    conn.autocommit = True
    try:
        conn.execute("")
    finally:
        with suppress(Exception):  # a closed connection must not clobber the real error
            conn.autocommit = False


def _restore(snapshot: _Snapshot, conn: psycopg.Connection[Any]) -> None:
    """Put the Python-side connection state back as ``snapshot`` has it (``conn`` idle)."""
    if conn.autocommit != snapshot.autocommit:
        conn.autocommit = snapshot.autocommit
    if conn.isolation_level != snapshot.isolation_level:
        conn.isolation_level = snapshot.isolation_level
    if conn.read_only != snapshot.read_only:
        conn.read_only = snapshot.read_only
    if conn.deferrable != snapshot.deferrable:
        conn.deferrable = snapshot.deferrable
    anyconn = cast(Any, conn)
    anyconn.row_factory = snapshot.row_factory
    anyconn.cursor_factory = snapshot.cursor_factory
    anyconn.server_cursor_factory = snapshot.server_cursor_factory
    conn.prepare_threshold = snapshot.prepare_threshold
    conn.prepared_max = snapshot.prepared_max
    conn._notify_handlers[:] = snapshot.notify_handlers
    conn._notice_handlers[:] = snapshot.notice_handlers
    backlog = conn._notifies_backlog
    if backlog is not None:  # notifications the last borrower received and never read
        backlog.clear()


def _wait_socket(fd: int, event: int, deadline: float, what: str) -> None:
    """Block until ``fd`` is ready for ``event``, or raise :class:`TimeoutError` at ``deadline``."""
    left = deadline - time.monotonic()
    if left > 0:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, event)
            if selector.select(left):
                return
    raise TimeoutError(f"no answer to the {what} in time")


def _shutdown_socket(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down without freeing anything a blocked thread uses.

    A thread blocked reading or writing it wakes up with end-of-file or an
    error, and psycopg then reports the connection lost; libpq's structures
    are freed later, by the thread holding the connection (or when it is
    collected).
    """
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return  # already closed
    with suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def terminate_now(conn: psycopg.Connection[Any]) -> None:
    """Close ``conn`` at once, from any thread, without freeing what a blocked call uses.

    When no other thread holds the connection, libpq closes it (sending its
    ``Terminate`` without waiting); when one is blocked on it, its socket is
    shut down instead (:func:`_shutdown_socket`), so that call returns with
    an error and its thread frees the rest.
    """
    lock = conn.lock
    if lock.acquire(blocking=False):
        try:
            _finish(conn)
        finally:
            lock.release()
    else:  # another thread is blocked on it: wake it, free nothing under it
        _shutdown_socket(conn)


class SyncPsycopgConnector(Generic[CT]):
    """Opens :class:`psycopg.Connection` objects for a :class:`~elasticpool.SyncPool`.

    The sync twin of :class:`~elasticpool.psycopg.PsycopgConnector`, with
    the same parameters (sync callables instead of async ones) and the same
    release hygiene (see there): ``conninfo`` / ``kwargs`` (either may be a
    callable, called at every connect), ``connection_class``,
    ``configure(conn)``, ``check(conn)`` (what :meth:`ping` runs instead of
    its own probe) and ``reset(conn)``; :meth:`set_server_settings` for a
    fleet membership's tags.

    Bounds: :meth:`connect` passes the pool's ``connect_timeout`` to libpq
    as ``connect_timeout`` (whole seconds, at least 2) unless the conninfo
    or ``kwargs`` set one. :meth:`ping` sends an empty query at the libpq
    level and gives up when no answer comes in time, leaving the connection
    mid-query, which :meth:`is_closed` then reports. :meth:`terminate` may be
    called while another thread is blocked on the connection: it shuts the
    socket down, so that thread returns with an error, instead of freeing
    what it is using.

    :meth:`fetch` runs a statement written with ``$1, $2, ...``
    placeholders; on a connection in no transaction it runs in autocommit
    (a transaction of its own), as the fleet's statements must.

    :meth:`abandon` (used by a pool in a forked child) points the inherited
    socket's descriptor at ``/dev/null`` in this process only: the parent's
    session goes on, and nothing psycopg or libpq does here later (a
    ``Terminate`` message when the connection is collected) reaches it.

    Its :func:`repr` shows host, port, database, user and application name
    only: never a password. It is not a pool and keeps no connections; it
    keeps a small weak record per connection (the cancel key and the
    attributes to restore).
    """

    def __init__(
        self,
        conninfo: SyncConninfoParam = "",
        *,
        kwargs: SyncKwargsParam | None = None,
        connection_class: type[CT] = _CONNECTION,
        configure: SyncConnectionCB[CT] | None = None,
        check: SyncConnectionCB[CT] | None = None,
        reset: SyncConnectionCB[CT] | None = None,
    ) -> None:
        if isinstance(conninfo, str) and (problem := dsn_problem(conninfo)) is not None:
            raise ValueError(_unparsable(type(self).__name__, conninfo, problem))
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self.configure = configure
        self.check = check
        self.reset_callback = reset
        self._snapshots: weakref.WeakKeyDictionary[CT, _Snapshot] = weakref.WeakKeyDictionary()
        self._server_settings: dict[str, str] = {}
        self._pooler_hinted = False

    def set_server_settings(self, settings: Mapping[str, str]) -> None:
        """Send ``settings`` at every later connect, over the conninfo's values of those names."""
        self._server_settings = dict(settings)

    # ------------------------------------------------------------------ connect / close

    def connect(self, timeout: float) -> CT:
        """Resolve ``conninfo`` and ``kwargs``, connect, run ``configure``; raise on any failure."""
        conninfo = (self.conninfo() if callable(self.conninfo) else self.conninfo) or ""
        kwargs = dict((self.kwargs() if callable(self.kwargs) else self.kwargs) or {})
        unparsable = _check_conninfo(type(self).__name__, conninfo)
        if unparsable is not None:
            raise unparsable
        if "connect_timeout" not in kwargs:
            try:
                given = "connect_timeout" in conninfo_to_dict(conninfo)
            except Exception:  # psycopg's connect reports it (its message may quote the dsn)
                given = True
            if not given:
                kwargs["connect_timeout"] = max(_LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(timeout))
        plain = dict(kwargs)
        if self._server_settings:
            _add_settings(conninfo, kwargs, self._server_settings)
        try:
            conn = self.connection_class.connect(conninfo, **kwargs)
        except Exception as exc:
            retry = _without_refused(self, exc, conninfo, plain)
            if retry is None:
                raise
            conn = self.connection_class.connect(conninfo, **retry)
        try:
            conn._pool = None  # pooled: psycopg does not warn "deleted while still open"
            configure = self.configure
            if configure is not None:
                configure(conn)
                if conn.pgconn.transaction_status != _IDLE:
                    raise psycopg.ProgrammingError(
                        f"connection left in status {_status_name(conn)} "
                        f"by configure function {configure!r}: discarded"
                    )
            self._snapshots[conn] = _Snapshot(cast(Any, conn))
        except BaseException:
            self._cancel_left_query(conn)
            _finish(conn)
            raise
        return conn

    def _cancel_left_query(self, conn: CT) -> None:
        """Cancel, in the background, a query ``conn`` may have left running on the server."""
        if conn.broken or (not conn.closed and conn.pgconn.transaction_status == _ACTIVE):
            snapshot = self._snapshots.get(conn)
            if snapshot is not None and snapshot.cancel is not None:
                _cancel_in_background(snapshot.cancel)

    def close(self, conn: CT) -> None:
        """Close ``conn`` (libpq sends its ``Terminate`` without waiting for an answer)."""
        self.terminate(conn)

    def terminate(self, conn: CT) -> None:
        """Close ``conn`` at once; from any thread (see the class docstring)."""
        self._cancel_left_query(conn)
        terminate_now(conn)

    def abandon(self, conn: CT) -> None:
        """In a forked child: make ``conn`` unusable here without touching the parent's session."""
        abandon_socket(conn)

    # ------------------------------------------------------------------ health

    def is_closed(self, conn: CT) -> bool:
        """Whether ``conn`` cannot be reused as it is: closed, broken, mid-query, or found dead."""
        if conn.closed:
            return True
        status = conn.pgconn.transaction_status
        if status in (_ACTIVE, _UNKNOWN):
            return True
        return not _socket_alive(conn)

    def is_broken(self, conn: CT) -> bool:
        """:meth:`is_closed` without the look at the socket: psycopg's flags and status only.

        What the pool asks when a connection comes back, or goes straight to
        the next borrower: it was in use a moment ago, so psycopg would know.
        """
        pgconn = conn.pgconn  # conn.closed, without its property call: this runs per borrow
        return pgconn.status == _BAD or pgconn.transaction_status in (_ACTIVE, _UNKNOWN)

    def ping(self, conn: CT, timeout: float) -> None:
        """Run ``check(conn)`` if given, else an empty query bounded by ``timeout``.

        Raises if the connection cannot serve a query, or gives no answer in
        time (it is then left mid-query: :meth:`is_closed` says so).
        """
        check = self.check
        if check is not None:
            check(conn)
            if conn.pgconn.transaction_status != _IDLE:
                raise psycopg.ProgrammingError(
                    f"connection left in status {_status_name(conn)} by check function {check!r}"
                )
            return
        deadline = time.monotonic() + timeout
        pgconn = conn.pgconn
        with conn.lock:
            pgconn.send_query(b"")
            fd = pgconn.socket
            while pgconn.flush():
                _wait_socket(fd, selectors.EVENT_WRITE, deadline, "health check")
            error: psycopg.Error | None = None
            while True:
                pgconn.consume_input()
                while not pgconn.is_busy():
                    result = pgconn.get_result()
                    if result is None:
                        self._dispatch_notifies(pgconn)
                        if error is not None:
                            raise error
                        return
                    if result.status == pq.ExecStatus.FATAL_ERROR and error is None:
                        error = errors.error_from_result(result, encoding=conn.info.encoding)
                _wait_socket(fd, selectors.EVENT_READ, deadline, "health check")

    @staticmethod
    def _dispatch_notifies(pgconn: pq.abc.PGconn) -> None:
        while (notify := pgconn.notifies()) is not None:
            if pgconn.notify_handler:
                pgconn.notify_handler(notify)

    def is_disconnect(self, exc: BaseException) -> bool:
        """See :func:`~elasticpool.psycopg.is_disconnect_error` (and the pooler hint, once)."""
        _hint_pooler(self, exc)
        return is_disconnect_error(exc)

    # ------------------------------------------------------------------ reset

    def needs_reset(self, conn: CT, mode: ResetMode) -> bool:
        """``"session"`` or a ``reset`` callback: always; ``"rollback"``: if not idle."""
        if mode == "none":
            return False
        if mode == "session" or self.reset_callback is not None:
            return True
        return conn.pgconn.transaction_status != _IDLE

    def reset(self, conn: CT, mode: ResetMode) -> None:
        """Make ``conn`` clean for the next borrower under ``mode``; raise if it cannot be."""
        status = conn.pgconn.transaction_status
        if conn.closed or status in (_ACTIVE, _UNKNOWN):
            raise psycopg.OperationalError(
                f"connection in status {_status_name(conn)} cannot be reset"
            )
        if mode == "session":
            self._reset_session(conn, status)
        elif status != _IDLE:
            conn.rollback()
        callback = self.reset_callback
        if callback is not None:
            callback(conn)
            if conn.pgconn.transaction_status != _IDLE:
                raise psycopg.ProgrammingError(
                    f"connection left in status {_status_name(conn)} "
                    f"by reset function {callback!r}: discarded"
                )

    def _reset_session(self, conn: CT, status: int) -> None:
        anyconn = cast(Any, conn)
        _forget_prepared(anyconn)  # before the server drops them (see _reset)
        if status == _IDLE:
            if not conn.autocommit:  # else psycopg would send BEGIN first
                conn.autocommit = True
            conn.execute(_DISCARD_ALL, prepare=False)
        elif conn._num_transactions or conn._tpc is not None or conn._pipeline is not None:
            raise psycopg.ProgrammingError(
                "connection returned inside a transaction() block, a two-phase "
                "transaction or a pipeline: discarded"
            )
        else:
            conn.execute(_ROLLBACK_AND_DISCARD, prepare=False)
        _forget_prepared(anyconn)  # the reset statement itself was counted
        snapshot = self._snapshots.get(conn)
        if snapshot is not None:
            _restore(snapshot, conn)
        if conn.pgconn.transaction_status != _IDLE:  # pragma: no cover - defensive
            raise psycopg.ProgrammingError(
                f"connection left in status {_status_name(conn)} by the session reset"
            )

    # ------------------------------------------------------------------ statements

    def transaction(self, conn: CT, *, readonly: bool = False) -> AbstractContextManager[Any]:
        """See :func:`transaction`."""
        return transaction(conn, readonly=readonly)

    def fetch(self, conn: CT, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """See :func:`fetch_rows`."""
        return fetch_rows(conn, sql, *args)

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_describe_target(self.conninfo, self.kwargs)}>"


def fetch_rows(conn: psycopg.Connection[Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` with ``args`` on ``conn``: the sync twin of the async adapter's ``fetch``.

    ``$n`` placeholders (``$1..$n`` in order, once each) become psycopg's
    ``%s`` (after a literal ``%`` is doubled); rows come as tuples whatever
    the connection's ``row_factory``. On a connection that is not in
    autocommit mode and in no transaction the statement is a transaction of
    its own: the connection is switched to autocommit for it (no round
    trip), so no transaction is left open; inside a transaction it runs
    there.
    """
    check_placeholders(sql, len(args))
    query = PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
    switch = not conn.autocommit and conn.pgconn.transaction_status == _IDLE
    if switch:
        conn.autocommit = True
    try:
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(query, args)
            if cur.description is None:
                return []
            return cur.fetchall()
    finally:
        # Only from idle: a statement cut off mid-query leaves the connection ACTIVE.
        if switch and not conn.closed and conn.pgconn.transaction_status == _IDLE:
            conn.autocommit = False


def transaction(
    conn: psycopg.Connection[Any], *, readonly: bool = False
) -> AbstractContextManager[Any]:
    """psycopg's own ``conn.transaction()``; ``readonly=True`` makes it read-only at once."""
    tx: AbstractContextManager[Any] = conn.transaction()
    return _readonly_transaction(conn, tx) if readonly else tx


@contextmanager
def _readonly_transaction(conn: Any, tx: AbstractContextManager[Any]) -> Iterator[Any]:
    with tx as inner:
        conn.execute("SET TRANSACTION READ ONLY", prepare=False)
        yield inner
