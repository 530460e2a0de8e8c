""":class:`AsyncpgConnector`, the :class:`~elasticpool.Connector` for asyncpg."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    Mapping,
)
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import asyncpg
import asyncpg.pool
from asyncpg.exceptions import InterfaceError

from .._connector import Fetch, ResetMode, log_refused, refused_settings
from .._redact import dsn_passwords, dsn_problem, redact_dsn, split_uri, unshown
from .._sql import check_placeholders
from ._errors import is_disconnect_error, pooler_hint
from ._reset import (
    ASYNCPG,
    FULL,
    Tracker,
    _cached_names,
    _impl,
    _is_cancelling,
    _own_reset,
    _send_session_reset,
)

ConnectionCallback = Callable[[asyncpg.Connection], Awaitable[object]]
"""``init``, ``setup`` and ``reset`` callbacks: a coroutine function taking the connection."""

SessionScope = Literal["full", "asyncpg"]
"""What a ``"session"`` reset clears: everything, or what :meth:`asyncpg.Connection.reset` does."""

_SCOPES: dict[str, int] = {"full": FULL, "asyncpg": ASYNCPG}


@dataclasses.dataclass(slots=True)
class _Baseline:
    """What a connection's Python-side callbacks were right after ``init``; a reset restores it."""

    log_listeners: set[Any]
    query_loggers: set[Any]
    termination_listeners: set[Any]


class AsyncpgConnector:
    """Opens :class:`asyncpg.Connection` objects for a :class:`~elasticpool.Pool`.

    ``AsyncpgConnector(dsn, **connect_kwargs)`` calls
    ``asyncpg.connect(dsn, **connect_kwargs)`` for every new connection, with
    every argument passed through unchanged (``ssl``, ``server_settings``,
    ``statement_cache_size``, ``command_timeout``, ``timeout``...).

    * ``connect``: called instead of :func:`asyncpg.connect`, as
      ``connect(dsn, **connect_kwargs)``; for credential rotation or
      instrumentation. It must return an :class:`asyncpg.Connection` (an
      instance of ``connection_class`` if that is among the arguments).
    * ``init``: as :class:`asyncpg.Pool`'s ``init``, a coroutine function
      called once with each new connection before the pool sees it (type
      codecs, say). If it raises, the connection is closed and the connect
      counts as failed. Session settings made here (``SET ...``) do not
      survive a ``"session"`` reset; pass them as ``server_settings``.
    * ``reset``: as :class:`asyncpg.Pool`'s ``reset``, a coroutine function
      replacing the default ``"session"`` clean-up: the transaction is rolled
      back and asyncpg's Python-side listeners dropped, then ``reset(conn)``
      runs instead of :func:`session_reset_sql`, on every return. It is not
      called in ``"rollback"`` mode. If it raises, the pool discards the
      connection.
    * ``session_scope``: what a ``"session"`` reset clears: ``"full"`` (the
      default: everything below) or ``"asyncpg"`` (what
      :meth:`asyncpg.Connection.reset` clears, and the role; the drop-in
      face's default).
    * ``tracking`` (default ``True``): send only the parts of the ``"session"``
      reset that the borrower's statements may have dirtied, read from
      asyncpg's query log (none after plain queries; see ``docs/reset.md``
      for what counts). ``False``: the whole reset on every return.
    * :meth:`set_connect_args` replaces ``dsn`` and ``connect_kwargs`` for
      later connects; open connections are kept (see
      :meth:`elasticpool.Pool.expire_connections`).
    * :meth:`set_server_settings` (called by a fleet membership) adds server
      settings to ``server_settings`` for later connects, over the same names.

    Release hygiene (the pool runs :meth:`reset` in the background, before
    anyone else can borrow the connection, and discards a connection whose
    reset fails):

    * ``"rollback"``: a cancelled query is waited for (see below), then an
      open or failed transaction is rolled back; nothing else.
    * ``"session"``: the same, then everything a borrower can set is cleared in
      one round trip (:func:`session_reset_sql`; a second one only when the
      borrower left prepared statements of its own), asyncpg's notification and
      log listeners, query loggers and termination listeners go back to what
      they were after ``init``, and prepared statements and cursors obtained
      during the borrow are invalidated (asyncpg raises
      :class:`~asyncpg.exceptions.InterfaceError` if they are used again).
      With ``tracking``, from a connection's first return on, only the
      statements for what the borrower may have dirtied are sent, and no round
      trip at all after plain queries.

    A query cancelled mid-flight (task cancelled, or ``timeout=`` expired)
    leaves asyncpg sending a cancel request to the server in the background.
    Such a connection needs a reset (:meth:`needs_reset` says so in every
    mode), and the reset first waits until the server has acknowledged the
    cancellation (as :class:`asyncpg.Pool` does on release), then rolls back
    and cleans up. The wait is bounded by the pool's ``close_timeout``; if it
    is not acknowledged by then, the reset fails and the connection is
    discarded. (In ``"none"`` mode the pool does not ask today, so such a
    connection goes back as it is: asyncpg's next query on it waits for the
    cancellation, but a transaction it aborted stays aborted.)

    Its :func:`repr` never shows a password, nor do its errors: a URI whose
    password holds an unencoded ``#``, ``/``, ``?`` or ``@`` (which asyncpg
    would misread, quoting a piece of it) is refused with :class:`ValueError`
    here and in :meth:`set_connect_args`, and a :class:`ValueError` asyncpg
    raises while connecting with a DSN that holds a password (its DSN parse
    errors) becomes one of ours without asyncpg's message. It is not a pool:
    it keeps no connections.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        connect: Callable[..., Awaitable[asyncpg.Connection]] | None = None,
        init: ConnectionCallback | None = None,
        reset: ConnectionCallback | None = None,
        session_scope: SessionScope = "full",
        tracking: bool = True,
        **connect_kwargs: Any,
    ) -> None:
        for what, fn in (("connect", connect), ("init", init), ("reset", reset)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{what} must be a coroutine function or None (got {fn!r})")
        if session_scope not in _SCOPES:
            raise ValueError(
                f"session_scope must be one of {tuple(_SCOPES)} (got {session_scope!r})"
            )
        if not isinstance(tracking, bool):
            raise TypeError(f"tracking must be a bool (got {tracking!r})")
        _check_dsn(dsn)
        self._dsn = dsn
        self._kwargs = connect_kwargs
        self._connect_fn = connect
        self._init = init
        self._reset_fn = reset
        self._scope = _SCOPES[session_scope]
        self._tracking = tracking and reset is None
        self._baselines: weakref.WeakKeyDictionary[asyncpg.Connection, _Baseline] = (
            weakref.WeakKeyDictionary()
        )
        self._trackers: weakref.WeakKeyDictionary[asyncpg.Connection, Tracker] = (
            weakref.WeakKeyDictionary()
        )
        # Set by AsyncpgPool: arguments that survive set_connect_args (connection_class,
        # record_class, loop), and every connection made.
        self._fixed_kwargs: dict[str, Any] = {}
        self._made: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
        self._server_settings: dict[str, str] = {}
        self._pooler_hinted = False

    def set_server_settings(self, settings: Mapping[str, str]) -> None:
        """Send ``settings`` at every later connect, over ``server_settings`` of the same names."""
        self._server_settings = dict(settings)

    def set_connect_args(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Use ``dsn`` and ``connect_kwargs`` (replacing the old ones) for every later connect."""
        _check_dsn(dsn)
        self._dsn = dsn
        self._kwargs = connect_kwargs

    # ------------------------------------------------------------------ connect / close

    async def connect(self) -> asyncpg.Connection:
        fn = self._connect_fn or asyncpg.connect
        kwargs = {**self._kwargs, **self._fixed_kwargs}
        if self._server_settings:
            add_server_settings(kwargs, self._server_settings)
        unparsed: ValueError | None = None
        try:
            try:
                conn: asyncpg.Connection = await fn(self._dsn, **kwargs)
            except Exception as exc:
                kept = refused_settings(exc, self._server_settings)
                if kept is None:
                    raise
                log_refused(self, self._server_settings, exc)
                self._server_settings = kept
                given = {**self._kwargs, **self._fixed_kwargs}.get("server_settings") or {}
                kwargs["server_settings"] = {**given, **kept}
                conn = await fn(self._dsn, **kwargs)
        except ValueError as exc:  # a DSN parse error may quote a piece of the password
            if not dsn_passwords(self._dsn):
                raise
            unparsed = ValueError(
                f"cannot parse the dsn given to AsyncpgConnector ({redact_dsn(self._dsn or '')}) "
                f"or its connect arguments: {unshown(exc)}"
            )
        if unparsed is not None:  # raised here, so that it chains nothing that may quote it
            raise unparsed
        try:
            cls: type[asyncpg.Connection] = kwargs.get("connection_class", asyncpg.Connection)
            if not isinstance(conn, cls):
                raise InterfaceError(
                    f"expected the connect callback to return an instance of "
                    f"{cls.__module__}.{cls.__qualname__}, got "
                    f"{type(conn).__module__}.{type(conn).__qualname__}"
                )
            if self._init is not None:
                await self._init(conn)
        except BaseException:
            terminate = getattr(conn, "terminate", None)
            if terminate is not None:
                terminate()  # no await: safe even when this connect is being cancelled
            raise
        impl = _impl(conn)
        self._baselines[conn] = _Baseline(
            set(impl._log_listeners),
            set(getattr(impl, "_query_loggers", ())),
            set(impl._termination_listeners),
        )
        self._made.add(conn)
        return conn

    async def close(self, conn: asyncpg.Connection) -> None:
        await conn.close()

    def terminate(self, conn: asyncpg.Connection) -> None:
        conn.terminate()

    def abandon(self, conn: asyncpg.Connection) -> None:
        """Give ``conn`` up without any I/O: it belongs to the parent of a fork.

        asyncpg has no public call for it, so the connection is marked aborted:
        using it raises :class:`~asyncpg.exceptions.InterfaceError` ("connection
        is closed") instead of writing on the parent's socket, and collecting it
        does not terminate it through the parent's event loop (whose epoll set
        the child shares).
        """
        abandon(conn)

    def is_closed(self, conn: asyncpg.Connection) -> bool:
        """Whether asyncpg knows ``conn`` is closed or lost.

        A connection whose cancelled query is still being cancelled is not
        closed: :meth:`needs_reset` says it needs a reset, which waits for the
        cancellation and fails (so the pool discards the connection) if it does
        not complete.
        """
        return conn.is_closed()

    async def ping(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT 1")

    # ------------------------------------------------------------------ reset

    def needs_reset(self, conn: asyncpg.Connection, mode: ResetMode) -> bool:
        """Whether ``conn`` needs :meth:`reset` before reuse (a cheap local check).

        ``"rollback"``: a transaction is open or failed, a transaction object
        is left behind, or a cancelled query is still being cancelled.
        ``"none"``: only the last (the pool does not ask in that mode today).
        ``"session"``: the same, or (with ``tracking``, from the connection's
        first reset on) the borrower ran a statement that may have dirtied a
        part of the session reset's scope, or changed asyncpg's Python-side
        listeners or loggers; always with a ``reset`` callback, without
        ``tracking``, and before the connection was first reset. When it says
        no, it ends the borrow on asyncpg's side, as a release does: the
        :class:`~asyncpg.prepared_stmt.PreparedStatement` and cursor objects
        obtained during it raise if used again.
        """
        impl: Any = conn  # (asyncpg's private attributes; not _impl(): a call per release)
        protocol = impl._protocol
        if mode == "rollback":  # first: the core's default, asked at every return
            return (
                protocol is None  # closed: the pool does not ask about a closed one anyway
                or protocol.is_in_transaction()
                or impl._top_xact is not None
                or bool(protocol._is_cancelling())
            )
        if mode == "none":
            return protocol is not None and bool(protocol._is_cancelling())
        if protocol is None:
            return True
        tracker = self._trackers.get(conn) if self._tracking else None
        if (
            tracker is None
            or protocol.is_in_transaction()
            or impl._top_xact is not None
            or protocol._is_cancelling()
            or tracker.parts(conn, self._scope)
            or impl._listeners
            or self._callbacks_changed(conn)
        ):
            return True
        impl._pool_release_ctr += 1  # PreparedStatement / Cursor objects now raise
        return False

    def _callbacks_changed(self, conn: asyncpg.Connection) -> bool:
        """Whether ``conn``'s log listeners, query loggers or termination listeners changed."""
        impl: Any = conn
        baseline = self._baselines.get(conn)
        return (
            baseline is None
            or impl._log_listeners != baseline.log_listeners
            or getattr(impl, "_query_loggers", set()) != baseline.query_loggers
            or impl._termination_listeners != baseline.termination_listeners
        )

    def _track(self, conn: asyncpg.Connection) -> None:
        """Start tracking what runs on ``conn``, if this connector tracks and ``conn`` can be.

        Called at a connection's first ``"session"`` reset, or by the drop-in
        face as soon as it is made (it knows the reset it uses). The tracker's
        logger is one of the connection's own from then on: resets keep it.
        """
        if not self._tracking or conn in self._trackers or not _own_reset(conn):
            return
        tracker = Tracker(conn)
        conn.add_query_logger(tracker)
        self._trackers[conn] = tracker
        baseline = self._baselines.get(conn)
        if baseline is not None:
            baseline.query_loggers.update(getattr(_impl(conn), "_query_loggers", ()))

    async def reset(self, conn: asyncpg.Connection, mode: ResetMode) -> None:
        """Clean ``conn`` for the next borrower under ``mode`` (see the class docstring)."""
        impl = _impl(conn)
        if _is_cancelling(conn):
            # The cancel request is on its way or the server has not answered the
            # cancelled query yet. asyncpg terminates the connection itself if the
            # cancellation fails; the pool bounds this wait with close_timeout.
            await impl._protocol._wait_for_cancellation()
        if conn.is_closed():
            raise InterfaceError("connection is closed")
        impl._top_xact = None  # a transaction object left behind no longer applies
        if mode != "session":  # "rollback", or "none" after a cancelled query
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            return
        self._forget_borrow(conn)
        if self._reset_fn is not None:
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
            await self._reset_fn(conn)
            return
        tracker = self._trackers.get(conn) if self._tracking else None
        if tracker is not None and tracker.unseen(conn) > 0:
            # The records of the borrower's last queries may still be queued on
            # the loop (a reset worker can take this connection in the same pass
            # of the loop as the release): let them reach the tracker first.
            await asyncio.sleep(0)
        parts = self._scope if tracker is None else tracker.parts(conn, self._scope)
        if parts or conn.is_in_transaction() or not _own_reset(conn):
            names = _cached_names(conn)
            if tracker is not None:  # its own statements are not the next borrower's
                conn.remove_query_logger(tracker)
            try:
                await _send_session_reset(conn, names, parts)
            except Exception as exc:
                self._hint_pooler(exc)
                raise
            finally:
                if tracker is not None and not conn.is_closed():
                    conn.add_query_logger(tracker)
        if tracker is None:
            self._track(conn)
        else:
            tracker.restart(conn)

    def reset_nowait(self, conn: asyncpg.Connection, mode: ResetMode) -> bool | None:
        """Finish a ``"session"`` reset at once if it needs no I/O; ``True`` if done.

        So it is when the tracker has seen every query run since the last
        reset and none may have dirtied the session (the pool asked for a
        reset because their records had not come in yet at the release, or
        for asyncpg's Python-side listeners and loggers): the Python-side
        clean-up is done here. ``None`` while records of queries that just ran
        may still be on their way (the pool asks again one pass of the loop
        later); ``False``, having changed nothing, when the reset needs I/O.
        """
        if mode != "session" or self._reset_fn is not None:
            return False
        tracker = self._trackers.get(conn) if self._tracking else None
        impl: Any = conn
        protocol = impl._protocol
        if (
            tracker is None
            or protocol is None
            or protocol.is_in_transaction()
            or protocol._is_cancelling()
        ):
            return False
        if tracker.unseen(conn) > 0:
            return None
        if tracker.parts(conn, self._scope):
            return False
        impl._top_xact = None
        self._forget_borrow(conn)
        tracker.restart(conn)
        return True

    def _forget_borrow(self, conn: asyncpg.Connection) -> None:
        """Drop the Python-side traces of a borrow: listeners, loggers, statements and cursors."""
        impl = _impl(conn)
        impl._pool_release_ctr += 1  # PreparedStatement / Cursor objects now raise
        impl._listeners.clear()
        baseline = self._baselines.get(conn)
        for attr, kept in (
            ("_log_listeners", baseline.log_listeners if baseline else set()),
            ("_query_loggers", baseline.query_loggers if baseline else set()),
            ("_termination_listeners", baseline.termination_listeners if baseline else set()),
        ):
            current = getattr(impl, attr, None)
            if current is not None and current != kept:
                current.clear()
                current.update(kept)

    def is_disconnect(self, exc: BaseException) -> bool:
        self._hint_pooler(exc)
        return is_disconnect_error(exc)

    def _hint_pooler(self, exc: BaseException) -> None:
        """Log, once per connector, what to change when ``exc`` looks like a pooler's doing.

        Behind PgBouncer in transaction mode every borrow with a cached
        statement can fail and every session reset discards the connection;
        one line naming the cause and the setting says more than hundreds of
        discards (see :func:`pooler_hint`).
        """
        if self._pooler_hinted:
            return
        hint = pooler_hint(exc)
        if hint is not None:
            self._pooler_hinted = True
            logging.getLogger("elasticpool").warning(
                "asyncpg connections to %s: %s: %s; %s (logged once)",
                _describe_target(self._dsn, self._kwargs),
                type(exc).__name__,
                exc,
                hint,
            )

    def transaction(
        self, conn: asyncpg.Connection, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        tx: AbstractAsyncContextManager[Any] = conn.transaction(readonly=readonly)
        return tx

    async def fetch(self, conn: asyncpg.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` with ``args`` on ``conn``; its rows as tuples (see :func:`fetch`)."""
        return await fetch(conn, sql, *args)

    def __repr__(self) -> str:
        return f"<AsyncpgConnector {_describe_target(self._dsn, self._kwargs)}>"


async def fetch(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """``conn.fetch(sql, *args)``, the rows as tuples (see :class:`~elasticpool.Connector`).

    ``conn`` is an :class:`asyncpg.Connection` or a ``PoolConnectionProxy``.
    asyncpg sends every statement outside a transaction on its own, so it is
    committed when it returns. The placeholders are checked as for every
    driver (``$1..$n`` in order, once each), although asyncpg would take more.
    """
    check_placeholders(sql, len(args))
    return [tuple(row) for row in await conn.fetch(sql, *args)]


def abandon(conn: asyncpg.Connection) -> None:
    """Mark ``conn`` aborted, with no I/O (see :meth:`AsyncpgConnector.abandon`)."""
    _impl(conn)._aborted = True


def add_server_settings(kwargs: dict[str, Any], settings: Mapping[str, str]) -> None:
    """Put server ``settings`` into asyncpg's connect ``kwargs``, over its ``server_settings``."""
    kwargs["server_settings"] = {**(kwargs.get("server_settings") or {}), **settings}


def fetch_for(conn: object) -> Fetch | None:
    """:func:`fetch` if ``conn`` is an asyncpg connection (or a pool proxy of one), or None."""
    if isinstance(conn, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
        return fetch
    return None


def _describe_target(dsn: str | None, kwargs: dict[str, Any]) -> str:
    """Where connections go, as ``host:port/database``; never a user name or password.

    Only the host, port and database are ever shown: from a URI, its userinfo
    (as ``split_uri`` of ``_redact.py`` finds it) and everything after
    ``?`` or ``#`` are dropped. A DSN in any other form is not shown at all.
    """
    hosts = database = ""
    parts = split_uri(dsn) if dsn else None
    if parts is not None:
        hosts, _, database = re.split("[?#]", parts[2], maxsplit=1)[0].partition("/")
    elif dsn:
        hosts = "dsn"
    if "host" in kwargs:
        hosts = _plain(kwargs["host"])
        if "port" in kwargs:
            hosts += f":{_plain(kwargs['port'])}"
    if "database" in kwargs:
        database = _plain(kwargs["database"])
    where = f"{hosts}/{database}" if database else hosts
    return where or "default"


def _check_dsn(dsn: str | None) -> None:
    """Refuse a DSN whose password asyncpg would misread (never quoting the password)."""
    problem = dsn_problem(dsn)
    if problem is not None:
        raise ValueError(
            f"cannot parse the dsn given to AsyncpgConnector ({redact_dsn(dsn or '')}): {problem}"
        )


def _plain(value: object) -> str:
    """A host, port or database argument as text (a list of them joined by commas)."""
    if isinstance(value, (list, tuple)):
        return ",".join(_plain(v) for v in value)
    return str(value) if isinstance(value, (str, int)) else "?"
