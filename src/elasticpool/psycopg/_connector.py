""":class:`PsycopgConnector` and its conninfo helpers."""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, Generic, TypeAlias

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import tuple_row
from psycopg_pool.abc import ACT

from .._connector import Fetch, ResetMode, log_refused, refused_settings
from .._redact import dsn_passwords, dsn_problem, redact_dsn, unshown
from .._sql import PLACEHOLDER, check_placeholders
from ._errors import is_disconnect_error, pooler_hint
from ._reset import (
    _DISCARD_ALL,
    _ROLLBACK_AND_DISCARD,
    _forget_prepared,
    _Snapshot,
    check_connection,
)
from ._wire import (
    _ACTIVE,
    _BAD,
    _IDLE,
    _UNKNOWN,
    _cancel_handle,
    _cancel_in_background,
    _finish,
    _socket_alive,
    _status_name,
)

ConninfoParam: TypeAlias = str | Callable[[], str] | Callable[[], Awaitable[str]]
"""A conninfo string, or a sync or async callable returning one (called at every connect)."""

KwargsParam: TypeAlias = (
    Mapping[str, Any] | Callable[[], Mapping[str, Any]] | Callable[[], Awaitable[Mapping[str, Any]]]
)
"""Connection keyword arguments, or a sync or async callable returning them (at every connect)."""

ConnectionCB: TypeAlias = Callable[[ACT], Awaitable[None]]
"""An async callback taking a connection: ``configure``, ``check`` and ``reset``."""


_ASYNC_CONNECTION: Any = psycopg.AsyncConnection
"""The default ``connection_class`` (typed ``Any`` so it fits any ``ACT``)."""

_SAFE_CONNINFO_KEYS: Final = ("host", "hostaddr", "port", "dbname", "user", "application_name")
"""The only connection parameters a repr shows (never a password, never an unknown key)."""


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


def _hint_pooler(connector: Any, exc: BaseException) -> None:
    """Log, once per connector, what to change when ``exc`` looks like a pooler's doing.

    See :func:`pooler_hint`: behind PgBouncer in transaction mode, psycopg's
    server-side prepared statements fail borrow after borrow. Shared by the
    async and the sync connector.
    """
    if connector._pooler_hinted:
        return
    hint = pooler_hint(exc)
    if hint is not None:
        connector._pooler_hinted = True
        logging.getLogger("elasticpool").warning(
            "psycopg connections to %s: %s: %s; %s (logged once)",
            _describe_target(connector.conninfo, connector.kwargs),
            type(exc).__name__,
            exc,
            hint,
        )


def _without_refused(
    connector: Any, exc: BaseException, conninfo: str, plain: dict[str, Any]
) -> dict[str, Any] | None:
    """``plain`` connect kwargs with the server settings a pooler did not refuse, or ``None``.

    ``None`` when ``exc`` is not a pooler refusing a startup parameter (see
    :func:`elasticpool._connector.refused_settings`); else ``connector``
    forgets the refused settings, for good, with one warning. Shared by the
    async and the sync connector.
    """
    kept = refused_settings(exc, connector._server_settings)
    if kept is None:
        return None
    log_refused(connector, connector._server_settings, exc)
    connector._server_settings = kept
    kwargs = dict(plain)
    _add_settings(conninfo, kwargs, kept)
    return kwargs


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
        self._pooler_hinted = False
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
        plain = dict(kwargs)
        if self._server_settings:
            _add_settings(conninfo, kwargs, self._server_settings)
        try:
            conn = await self.connection_class.connect(conninfo, **kwargs)
        except Exception as exc:
            retry = _without_refused(self, exc, conninfo, plain)
            if retry is None:
                raise
            conn = await self.connection_class.connect(conninfo, **retry)
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
        pgconn = conn.pgconn
        if pgconn.status == _BAD:  # conn.closed, without its property call
            return True
        if pgconn.transaction_status in (_ACTIVE, _UNKNOWN):
            return True
        return not _socket_alive(conn)

    def closed_on_return(self, conn: ACT) -> bool:
        """:meth:`is_closed` without the look at the socket, for a connection coming back.

        The borrower has just used it; a server that closed it since is seen
        by :meth:`is_closed` before the connection is lent again (a system
        call per borrow saved).
        """
        pgconn = conn.pgconn
        return pgconn.status == _BAD or pgconn.transaction_status in (_ACTIVE, _UNKNOWN)

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
        self._hint_pooler(exc)
        return is_disconnect_error(exc)

    def _hint_pooler(self, exc: BaseException) -> None:
        _hint_pooler(self, exc)

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

    async def fetch(self, conn: ACT, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` with ``args`` on ``conn``; its rows as tuples (see :func:`fetch`)."""
        return await fetch(conn, sql, *args)

    # ------------------------------------------------------------------ repr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {_describe_target(self.conninfo, self.kwargs)}>"


async def fetch(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` with ``args`` on ``conn`` (``fetch`` of :class:`~elasticpool.Connector`).

    ``$n`` placeholders become psycopg's ``%s`` (after a literal ``%`` is
    doubled); rows come as tuples whatever the connection's ``row_factory``.
    On a connection that is not in autocommit mode and in no transaction the
    statement is still a transaction of its own, as it is with asyncpg: the
    connection is switched to autocommit for it (no round trip), so no
    BEGIN/COMMIT pair is added and no transaction is left open.
    """
    check_placeholders(sql, len(args))
    query = PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
    switch = not conn.autocommit and conn.pgconn.transaction_status == _IDLE
    if switch:
        await conn.set_autocommit(True)
    try:
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(query, args)
            if cur.description is None:
                return []
            return await cur.fetchall()
    finally:
        # Only from idle: a statement cut off mid-query leaves the connection
        # ACTIVE, where psycopg refuses the change (and the pool discards it).
        if switch and not conn.closed and conn.pgconn.transaction_status == _IDLE:
            with anyio.CancelScope(shield=True):  # no I/O: psycopg's lock, then a flag
                await conn.set_autocommit(False)


def fetch_for(conn: object) -> Fetch | None:
    """:func:`fetch` if ``conn`` is a :class:`psycopg.AsyncConnection`, else ``None``."""
    return fetch if isinstance(conn, psycopg.AsyncConnection) else None


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
