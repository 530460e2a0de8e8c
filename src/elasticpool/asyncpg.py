"""asyncpg support (needs the ``asyncpg`` extra).

Two things live here:

* :class:`AsyncpgConnector`, the :class:`~elasticpool.Connector` for asyncpg:
  ``Pool(AsyncpgConnector(dsn), max_connections=20)``.
* :func:`create_pool` and :class:`AsyncpgPool`, a drop-in face with
  :class:`asyncpg.Pool`'s API and semantics on top of the elastic
  :class:`~elasticpool.Pool`: change ``from asyncpg import create_pool`` to
  ``from elasticpool.asyncpg import create_pool`` (see ``docs/migrate-asyncpg.md``).

Both hand out asyncpg's own :class:`asyncpg.Connection` objects, never a
proxy. asyncpg runs on asyncio only, so pools using it do too.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import re
import sys
import warnings
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio
import asyncpg
import asyncpg.exceptions
from asyncpg.exceptions import InterfaceError

from ._connector import ResetMode, ends_session
from ._errors import PoolClosed, PoolTimeout
from ._pool import Pool, PoolStats, _Acquire
from ._redact import dsn_passwords, dsn_problem, redact_dsn, split_uri, unshown
from ._settings import PoolSettings
from .fleet import Membership
from .fleet._sql import quote_literal

__all__ = [
    "AsyncpgConnector",
    "AsyncpgPool",
    "AsyncpgPoolClosed",
    "create_pool",
    "is_disconnect_error",
    "session_reset_sql",
]

_T = TypeVar("_T")

ConnectionCallback = Callable[[asyncpg.Connection], Awaitable[object]]
"""``init``, ``setup`` and ``reset`` callbacks: a coroutine function taking the connection."""

_RESET_MODES = ("none", "rollback", "session")

_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())  # () on Python 3.10: no groups


# =============================================================================
# Errors
# =============================================================================


def is_disconnect_error(exc: BaseException) -> bool:
    """Whether ``exc`` from asyncpg means the connection it came from is dead.

    Yes for: SQLSTATE class 08 (connection exception, including asyncpg's
    client-side :class:`~asyncpg.exceptions.ConnectionDoesNotExistError`),
    57P01/57P02/57P03 (admin shutdown, crash shutdown, cannot connect now),
    any other server error of severity ``FATAL`` or ``PANIC`` (the server ends
    the session after sending one, e.g. an idle-in-transaction timeout),
    asyncpg's :class:`~asyncpg.exceptions.InterfaceError` "connection is closed",
    its ``InternalClientError`` "cannot switch to state" (a query racing a
    server-side termination), :class:`OSError` (which includes
    :class:`ConnectionError`), and an exception group holding any of these.

    Not one: :class:`TimeoutError`. It is an :class:`OSError` on Python >= 3.10
    but says nothing about the connection (a query ``timeout=``, an enclosing
    ``fail_after``, a :class:`~elasticpool.PoolTimeout` from a nested acquire).
    Nor is a cancelled query (57014) or any other error of the statement.
    """
    if isinstance(exc, TimeoutError):
        return False
    if isinstance(exc, OSError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if ends_session(state):
            return True
        severity = getattr(exc, "severity_en", None) or getattr(exc, "severity", None)
        return severity in ("FATAL", "PANIC")
    if isinstance(exc, InterfaceError):
        message = str(exc.args[0]) if exc.args else ""
        return "connection is closed" in message or "connection was closed" in message
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # A FATAL error the server sends on its own (pg_terminate_backend, shutdown)
        # leaves asyncpg's protocol waiting for a ReadyForQuery that never comes,
        # until end-of-file is read: a query in that window fails with this.
        return str(exc).startswith(("cannot switch to state", "not connected"))
    if isinstance(exc, _EXCEPTION_GROUP):
        return any(is_disconnect_error(inner) for inner in exc.exceptions)
    return False


class AsyncpgPoolClosed(PoolClosed, InterfaceError):
    """The :class:`AsyncpgPool` is closed (or closing, or failed to open).

    It is both an :class:`elasticpool.PoolClosed` and asyncpg's
    :class:`~asyncpg.exceptions.InterfaceError`, which is what
    :class:`asyncpg.Pool` raises in the same place, so either ``except`` works.
    """


if sys.version_info >= (3, 11):
    _AcquireTimeout = PoolTimeout  # asyncio.TimeoutError is TimeoutError
else:  # pragma: no cover - Python 3.10

    class _AcquireTimeout(PoolTimeout, asyncio.TimeoutError):
        """A :class:`~elasticpool.PoolTimeout` that ``except asyncio.TimeoutError`` catches too."""


# =============================================================================
# The connector
# =============================================================================


@dataclasses.dataclass(slots=True)
class _Baseline:
    """What a connection's Python-side callbacks were right after ``init``; a reset restores it."""

    log_listeners: set[Any]
    query_loggers: set[Any]
    termination_listeners: set[Any]


def _impl(conn: asyncpg.Connection) -> Any:
    """``conn``, untyped: for the private attributes of asyncpg this module relies on.

    Used: ``_protocol`` (``_is_cancelling()``, ``_wait_for_cancellation()``,
    ``queries_count``), ``_top_xact``, ``_listeners``, ``_log_listeners``,
    ``_query_loggers``, ``_termination_listeners``, ``_pool_release_ctr``,
    ``_stmt_cache``, ``_server_caps``. :class:`asyncpg.Pool` uses the same ones.
    """
    return conn


def _is_cancelling(conn: asyncpg.Connection) -> bool:
    """Whether a cancelled query on ``conn`` is still waiting for the server to acknowledge it."""
    protocol = _impl(conn)._protocol
    return protocol is not None and bool(protocol._is_cancelling())


_SESSION_RESET_SQL = """\
SET SESSION AUTHORIZATION DEFAULT;
RESET ROLE;
RESET ALL;
CLOSE ALL;
UNLISTEN *;
SELECT pg_catalog.pg_advisory_unlock_all();
DISCARD TEMP;
DISCARD SEQUENCES;
"""

_CHECK_SQL = """\
SELECT 1 FROM pg_catalog.pg_prepared_statements
HAVING pg_catalog.count(*) <> {n}
    OR pg_catalog.count(*) FILTER (WHERE name = ANY ({kept}::text[])) <> {n};
"""
"""The reset's last statement: a row (status ``SELECT 1``) iff the server's prepared
statements are not exactly asyncpg's cached ones (``{n}`` distinct names, ``{kept}``)."""

_CHECK_PASSED = "SELECT 0"

_DEALLOCATE_SQL = """\
DO $elasticpool$
DECLARE
  stmt record;
  kept CONSTANT text[] := {kept}::text[];
BEGIN
  IF (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements WHERE name = ANY (kept))
     < pg_catalog.cardinality(kept) THEN
    RAISE EXCEPTION 'asyncpg''s own prepared statements were deallocated by a borrower';
  END IF;
  FOR stmt IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE NOT name = ANY (kept) LOOP
    EXECUTE pg_catalog.format('DEALLOCATE %I', stmt.name);
  END LOOP;
END
$elasticpool$;
"""

_CACHED_NAME = re.compile(r"[A-Za-z0-9_]+")
"""What asyncpg's cached statement names look like (``__asyncpg_stmt_1a__``): safe in a DO."""

_FULL_CAPS = ("advisory_locks", "notifications", "plpgsql", "sql_reset", "sql_close_all")


def _cached_names(conn: asyncpg.Connection) -> frozenset[str] | None:
    """The names of asyncpg's cached statements on ``conn``, if it gets our full session reset.

    ``None``: it gets asyncpg's own reset query instead (a server without one of
    the features, or a ``connection_class`` overriding ``get_reset_query``).
    """
    impl = _impl(conn)
    caps = getattr(impl, "_server_caps", None)
    overridden = type(conn).get_reset_query is not asyncpg.Connection.get_reset_query
    if overridden or caps is None or not all(getattr(caps, cap, False) for cap in _FULL_CAPS):
        return None
    statements = impl._stmt_cache.iter_statements()
    return frozenset([stmt.name for stmt in statements if not stmt.closed])


@functools.lru_cache(maxsize=1024)
def _kept_literal(names: frozenset[str]) -> str:
    """``names`` as one quoted ``text[]`` literal (PostgreSQL parses it faster than ``ARRAY[]``)."""
    for name in names:
        if not _CACHED_NAME.fullmatch(name):  # never from asyncpg: no SQL is built from it
            raise InterfaceError(f"unexpected name in asyncpg's statement cache: {name!r}")
    return quote_literal("{" + ",".join(f'"{name}"' for name in sorted(names)) + "}")


@functools.lru_cache(maxsize=1024)
def _full_reset_sql(names: frozenset[str]) -> str:
    """The reset keeping the cached statements ``names``, without ``ROLLBACK``.

    Memoized: built once per state of a connection's statement cache (each
    connection's names are its own, so up to 1024 connections hit).
    """
    return _SESSION_RESET_SQL + _CHECK_SQL.format(n=len(names), kept=_kept_literal(names))


def _reset_sql(conn: asyncpg.Connection, names: frozenset[str] | None) -> str:
    """:func:`session_reset_sql` for ``names`` (from :func:`_cached_names`)."""
    head = "ROLLBACK;\n" if conn.is_in_transaction() else ""
    if names is None:
        return head + conn.get_reset_query()
    return head + _full_reset_sql(names)


def session_reset_sql(conn: asyncpg.Connection) -> str:
    """The SQL of a ``"session"`` reset of ``conn``: one string, sent in one round trip.

    On PostgreSQL it is, in order (``ROLLBACK`` first only if a transaction is
    open or failed)::

        ROLLBACK;
        SET SESSION AUTHORIZATION DEFAULT;  -- also undoes SET ROLE
        RESET ROLE;
        RESET ALL;                          -- every GUC back to its session default
        CLOSE ALL;                          -- cursors, WITH HOLD ones too
        UNLISTEN *;
        SELECT pg_catalog.pg_advisory_unlock_all();
        DISCARD TEMP;                       -- temporary tables, functions, ...
        DISCARD SEQUENCES;                  -- currval() / lastval()
        SELECT 1 FROM pg_catalog.pg_prepared_statements HAVING ...;  -- the check

    The check returns a row, so the round trip's status (that of its last
    statement) is ``SELECT 1`` instead of ``SELECT 0``, exactly when the
    server's prepared statements are not the ones in asyncpg's statement
    cache (their names are listed in it, as one quoted literal): statements
    made by SQL ``PREPARE``, those the borrower made with
    :meth:`asyncpg.Connection.prepare` (which the release already made
    unusable on the Python side, and which would otherwise stay on the
    server, their text visible to the next borrower in
    ``pg_prepared_statements``), or cached ones a borrower deallocated. Only
    then does :class:`AsyncpgConnector` send a second round trip: a ``DO``
    block that deallocates every statement not in the cache, and raises if
    any cached one is gone (``DEALLOCATE ALL``, ``DISCARD ALL``): asyncpg's
    cache no longer matches the server, so the reset fails and the pool
    discards the connection instead of lending one whose next cached query
    would fail. The cached statements are kept, so the cache stays valid and
    warm; their text stays visible, as with :class:`asyncpg.Pool`. (The
    check costs a scan of ``pg_prepared_statements``; the ``DO`` block, which
    PostgreSQL compiles on every call, costs several times more, so it is
    left off the common path.) The string is built once per state of the
    connection's statement cache.

    It is not ``DISCARD ALL``: that would also deallocate asyncpg's cached
    statements behind its back, and cannot run in the implicit transaction
    of a multi-statement query.

    On servers that lack one of these features (asyncpg's capability detection
    for CockroachDB, Redshift, CrateDB...), and for a ``connection_class``
    that overrides :meth:`asyncpg.Connection.get_reset_query`, it is asyncpg's
    own :meth:`~asyncpg.Connection.get_reset_query` instead, as in
    :class:`asyncpg.Pool`, with no check and no second round trip.
    """
    return _reset_sql(conn, _cached_names(conn))


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
      runs instead of :func:`session_reset_sql`. It is not called in
      ``"rollback"`` mode. If it raises, the pool discards the connection.
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
        **connect_kwargs: Any,
    ) -> None:
        for what, fn in (("connect", connect), ("init", init), ("reset", reset)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{what} must be a coroutine function or None (got {fn!r})")
        _check_dsn(dsn)
        self._dsn = dsn
        self._kwargs = connect_kwargs
        self._connect_fn = connect
        self._init = init
        self._reset_fn = reset
        self._baselines: weakref.WeakKeyDictionary[asyncpg.Connection, _Baseline] = (
            weakref.WeakKeyDictionary()
        )
        # Set by AsyncpgPool: arguments that survive set_connect_args (connection_class,
        # record_class, loop), and every connection made.
        self._fixed_kwargs: dict[str, Any] = {}
        self._made: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()
        self._server_settings: dict[str, str] = {}

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
            kwargs["server_settings"] = {
                **(kwargs.get("server_settings") or {}),
                **self._server_settings,
            }
        unparsed: ValueError | None = None
        try:
            conn: asyncpg.Connection = await fn(self._dsn, **kwargs)
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
        _impl(conn)._aborted = True

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

        ``"session"``: always. ``"rollback"``: a transaction is open or failed,
        a transaction object is left behind, or a cancelled query is still
        being cancelled. ``"none"``: only the last (the pool does not ask in
        that mode today).
        """
        if mode == "none":
            return _is_cancelling(conn)
        if mode == "session":
            return True
        return conn.is_in_transaction() or _impl(conn)._top_xact is not None or _is_cancelling(conn)

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
        names = _cached_names(conn)
        status = await conn.execute(_reset_sql(conn, names))
        if names is not None and status != _CHECK_PASSED:
            # Rare: the borrower prepared statements, or deallocated asyncpg's.
            await conn.execute(_DEALLOCATE_SQL.format(kept=_kept_literal(names)))

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
        return is_disconnect_error(exc)

    def transaction(
        self, conn: asyncpg.Connection, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        tx: AbstractAsyncContextManager[Any] = conn.transaction(readonly=readonly)
        return tx

    def __repr__(self) -> str:
        return f"<AsyncpgConnector {_describe_target(self._dsn, self._kwargs)}>"


def _describe_target(dsn: str | None, kwargs: dict[str, Any]) -> str:
    """Where connections go, as ``host:port/database``; never a user name or password.

    Only the host, port and database are ever shown: from a URI, its userinfo
    (as :func:`elasticpool._redact.split_uri` finds it) and everything after
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


# =============================================================================
# The asyncpg.Pool face
# =============================================================================


_SETTINGS_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PoolSettings)}
_SETTINGS_FIELDS = frozenset(_SETTINGS_DEFAULTS)
_RENAMED = {"min_connections": "min_size", "max_connections": "max_size"}


class _Lease:
    """A connection lent by an :class:`AsyncpgPool`, and the core borrow that holds it."""

    __slots__ = ("acquire", "conn")

    def __init__(self, conn: asyncpg.Connection, acquire: _Acquire[asyncpg.Connection]) -> None:
        self.conn = conn
        self.acquire = acquire


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
    on every acquire; released connections are reset with asyncpg's default
    (transaction rolled back, session state cleared) or the ``reset`` callback;
    a connection retires after ``max_queries`` queries; ``close()`` waits for
    every borrowed connection to come back; an acquire on a closed pool raises
    :class:`~asyncpg.exceptions.InterfaceError`; releasing a connection twice
    is harmless and releasing a foreign one raises
    :class:`~asyncpg.exceptions.InterfaceError`; a borrowed connection its
    borrower closes (or that is lost) frees its place at once, released or not.

    What is different, on purpose (see ``docs/migrate-asyncpg.md``):

    * the connection lent is asyncpg's own :class:`asyncpg.Connection`, not a
      proxy: using it after release is not detected (it is a bug all the same);
    * the reset runs in the background after ``release()`` returns, and a
      connection whose reset fails is closed instead of lent;
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
        # asyncpg's own checks, with asyncpg's messages.
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
        if isinstance(reset, str):
            if reset not in _RESET_MODES:
                raise ValueError(f"reset must be a coroutine function or one of {_RESET_MODES}")
            mode, reset_fn = reset, None
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

        connector = AsyncpgConnector(
            dsn, connect=connect, init=self._watching(init), reset=reset_fn, **kwargs
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
        self._state = "new"  # new → opening → open → closing → closed

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
        if self._state == "open":
            return self
        if self._state == "opening":
            raise InterfaceError("pool is being initialized in another task")  # asyncpg's text
        if self._state != "new":
            raise self._closed_error()
        self._state = "opening"
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
            self._state = "closed"
            pool.terminate()
            raise
        self._state = "open"
        return self

    async def close(self) -> None:
        """Close gracefully: wait until every borrowed connection is back, then close them all.

        As in asyncpg it waits without a bound (use :func:`asyncio.wait_for` or
        ``anyio.fail_after``); if it fails or is cancelled, the pool is
        terminated. Waiting acquires get :class:`AsyncpgPoolClosed`.
        """
        if self._state == "closed":
            return
        if self._state != "closing":  # a second close() waits for the first one
            self._check_init()
        self._state = "closing"
        try:
            await self._pool.close(timeout=None)
        except BaseException:
            self._pool.terminate()
            raise
        finally:
            self._state = "closed"

    def terminate(self) -> None:
        """Close every connection at once, borrowed or not."""
        if self._state == "closed":
            return
        if self._state != "closing":
            self._check_init()
        self._state = "closed"
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
        return self._state in ("closing", "closed")

    def _check_init(self) -> None:
        if self._state == "open":
            return
        if self._state == "new":
            raise InterfaceError(
                f"pool {self.name!r} is not initialized: 'await' it or use 'async with'"
            )
        if self._state == "opening":
            raise InterfaceError(
                f"pool {self.name!r} is being initialized, but not yet ready: likely there is "
                "a race between creating a pool and using it"
            )
        raise self._closed_error()

    def _closed_error(self) -> AsyncpgPoolClosed:
        s = self._pool.stats()
        state = "closing" if self._state == "closing" else "closed"
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
        if self._state != "open":
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
        self._leases[id(conn)] = lease = _Lease(conn, borrow)
        if self._setup is not None:
            try:
                if timeout is None:
                    await self._setup(conn)
                else:
                    with anyio.fail_after(max(timeout - (anyio.current_time() - started), 0)):
                        await self._setup(conn)
            except BaseException as exc:
                await self._release(lease, exc)
                raise
        return lease

    async def release(
        self, connection: asyncpg.Connection, *, timeout: float | None = None
    ) -> None:
        """Give back a connection from :meth:`acquire`.

        It returns at once: the reset runs in the background, bounded by
        ``close_timeout`` (so ``timeout``, accepted for compatibility, is not
        used). Releasing a connection that is already back is harmless;
        releasing one this pool never lent raises
        :class:`~asyncpg.exceptions.InterfaceError`. A stale release is
        ignored as in asyncpg: by a task that borrowed the connection and gave
        it back itself, while another task holds the next borrow of it (the
        pool sees the connection, not a proxy: see
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
        slot = lease.acquire._slot
        if slot is not None and self._pool._stale(slot):
            return  # this task's own borrow ended already: asyncpg ignores it too
        await self._release(lease, None)

    async def _release(self, lease: _Lease, exc: BaseException | None) -> None:
        if self._leases.get(id(lease.conn)) is not lease:
            return  # already released (then maybe lent again: that borrow is not ours)
        del self._leases[id(lease.conn)]
        conn = lease.conn
        slot = lease.acquire._slot
        if slot is not None:
            self._pool._note_return(slot)
        impl = _impl(conn)
        if not conn.is_closed():
            self._warn_listeners(conn)
            impl._pool_release_ctr += 1  # asyncpg's PreparedStatement / Cursor objects now raise
            protocol = impl._protocol
            if protocol is not None and protocol.queries_count >= self._max_queries:
                lease.acquire.retire()
        await lease.acquire.__aexit__(type(exc) if exc else None, exc, None)

    def _watching(self, init: ConnectionCallback | None) -> ConnectionCallback:
        """``init``, then :meth:`_closed` as a termination listener (kept by every reset)."""

        async def init_and_watch(conn: asyncpg.Connection) -> None:
            if init is not None:
                await init(conn)
            conn.add_termination_listener(self._closed)

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
        lease.acquire._end(None)  # closed: the pool discards it

    def _warn_listeners(self, conn: asyncpg.Connection) -> None:
        """asyncpg's warning for a connection released with listeners still on it."""
        impl = _impl(conn)
        if not impl._listeners and not impl._log_listeners:
            return  # the usual case, on every release: nothing to look at
        baseline = self._connector._baselines.get(conn)
        kept = baseline.log_listeners if baseline is not None else set()
        for kind, listeners in (
            ("notification", [cb for cbs in impl._listeners.values() for cb in cbs]),
            ("log", [cb for cb in impl._log_listeners if cb not in kept]),
        ):
            if listeners:
                n = len(listeners)
                warnings.warn(
                    asyncpg.exceptions.InterfaceWarning(
                        f"{conn!r} is being released to pool {self.name!r} but has {n} active "
                        f"{kind} listener{'s' if n > 1 else ''}"
                    ),
                    stacklevel=4,
                )

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

    __slots__ = ("_done", "_lease", "_pool", "_timeout")

    def __init__(self, pool: AsyncpgPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._lease: _Lease | None = None
        self._done = False

    async def __aenter__(self) -> asyncpg.Connection:
        if self._lease is not None or self._done:
            raise InterfaceError("a connection is already acquired")
        self._lease = await self._pool._acquire(self._timeout)
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
            await self._pool._release(lease, exc)

    def __await__(self) -> Generator[Any, None, asyncpg.Connection]:
        self._done = True
        return self._pool._acquire_conn(self._timeout).__await__()


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
        a coroutine function: replaces the default session clean-up, as in
        asyncpg. A string (``"none"``, ``"rollback"``, ``"session"``, the
        default) chooses the elastic reset mode instead.

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
