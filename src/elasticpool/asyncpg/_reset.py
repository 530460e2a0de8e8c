"""The ``"session"`` reset of an asyncpg connection: its SQL and the private attributes it reads."""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import asyncpg
import asyncpg.connection
from asyncpg.exceptions import InterfaceError

from .. import _dirty
from .._sql import quote_literal


def _impl(conn: asyncpg.Connection) -> Any:
    """``conn``, untyped: for the private attributes of asyncpg this package relies on.

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


_SETTINGS_SQL: Final = "SET SESSION AUTHORIZATION DEFAULT;\nRESET ROLE;\nRESET ALL;\n"
_CURSORS_SQL: Final = "CLOSE ALL;\n"
_LISTEN_SQL: Final = "UNLISTEN *;\n"
_LOCKS_SQL: Final = "SELECT pg_catalog.pg_advisory_unlock_all();\n"
_TEMP_SQL: Final = "DISCARD TEMP;\n"
_SEQUENCES_SQL: Final = "DISCARD SEQUENCES;\n"

FULL: Final = _dirty.ALL
"""Every part: the ``"session"`` reset."""

ASYNCPG: Final = _dirty.SETTINGS | _dirty.CURSORS | _dirty.LISTEN | _dirty.LOCKS
"""What :meth:`asyncpg.Connection.reset` clears (``RESET ALL``, ``CLOSE ALL``, ``UNLISTEN *``,
the advisory locks); here the settings part also resets the role and session authorization."""


@functools.lru_cache(maxsize=128)
def _parts_sql(parts: int) -> str:
    """The statements clearing ``parts``, in order (no ``ROLLBACK``, no prepared-statement check).

    Spelled out part by part, from constants only: tests/test_sql_safety.py
    proves every statement the package sends is built from safe parts.
    """
    sql = ""
    if parts & _dirty.SETTINGS:
        sql += _SETTINGS_SQL
    if parts & _dirty.CURSORS:
        sql += _CURSORS_SQL
    if parts & _dirty.LISTEN:
        sql += _LISTEN_SQL
    if parts & _dirty.LOCKS:
        sql += _LOCKS_SQL
    if parts & _dirty.TEMP:
        sql += _TEMP_SQL
    if parts & _dirty.SEQUENCES:
        sql += _SEQUENCES_SQL
    return sql


_SESSION_RESET_SQL = _parts_sql(FULL)

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


def _own_reset(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` gets our session reset, in parts (else asyncpg's own reset query).

    Not for a server without one of the features it uses (asyncpg's capability
    detection: CockroachDB, Redshift, CrateDB...), nor for a
    ``connection_class`` overriding ``get_reset_query``.
    """
    caps = getattr(_impl(conn), "_server_caps", None)
    overridden = type(conn).get_reset_query is not asyncpg.Connection.get_reset_query
    return not overridden and caps is not None and all(getattr(caps, c, False) for c in _FULL_CAPS)


def _cached_names(conn: asyncpg.Connection) -> frozenset[str] | None:
    """The names of asyncpg's cached statements on ``conn``, if it gets our full session reset.

    ``None``: it gets asyncpg's own reset query instead (see :func:`_own_reset`).
    """
    if not _own_reset(conn):
        return None
    statements = _impl(conn)._stmt_cache.iter_statements()
    return frozenset([stmt.name for stmt in statements if not stmt.closed])


@functools.lru_cache(maxsize=1024)
def _kept_literal(names: frozenset[str]) -> str:
    """``names`` as one quoted ``text[]`` literal (PostgreSQL parses it faster than ``ARRAY[]``)."""
    for name in names:
        if not _CACHED_NAME.fullmatch(name):  # never from asyncpg: no SQL is built from it
            raise InterfaceError(f"unexpected name in asyncpg's statement cache: {name!r}")
    return quote_literal("{" + ",".join(f'"{name}"' for name in sorted(names)) + "}")


@functools.lru_cache(maxsize=1024)
def _full_reset_sql(names: frozenset[str], parts: int = FULL) -> str:
    """The reset of ``parts`` keeping the cached statements ``names``, without ``ROLLBACK``.

    With :data:`~elasticpool._dirty.PREPARED` in ``parts`` it ends with the
    check of the server's prepared statements. Memoized: built once per state
    of a connection's statement cache (each connection's names are its own,
    so up to 1024 connections hit).
    """
    sql = _parts_sql(parts)
    if parts & _dirty.PREPARED:
        sql += _CHECK_SQL.format(n=len(names), kept=_kept_literal(names))
    return sql


def _reset_sql(conn: asyncpg.Connection, names: frozenset[str] | None, parts: int = FULL) -> str:
    """:func:`session_reset_sql` for ``names`` (from :func:`_cached_names`), only ``parts``."""
    head = "ROLLBACK;\n" if conn.is_in_transaction() else ""
    if names is None:
        return head + conn.get_reset_query()
    return head + _full_reset_sql(names, parts)


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


async def _send_session_reset(
    conn: asyncpg.Connection, names: frozenset[str] | None, parts: int = FULL
) -> None:
    """Send the reset of ``parts`` on ``conn``, and the ``DO`` block only if its check fails.

    ``names``: :func:`_cached_names` of ``conn`` (``None``: asyncpg's own reset
    query, whatever ``parts`` says).
    """
    sql = _reset_sql(conn, names, parts)
    if not sql:
        return
    status = await conn.execute(sql)
    if names is not None and parts & _dirty.PREPARED and status != _CHECK_PASSED:
        # Rare: the borrower prepared statements, or deallocated asyncpg's.
        await conn.execute(_DEALLOCATE_SQL.format(kept=_kept_literal(names)))


# ----------------------------------------------------------------------------- tracking

_scan = functools.lru_cache(maxsize=4096)(_dirty.scan)


def _statement_ids() -> int:
    """asyncpg's process-wide counter of named statements and portals (``_uid``).

    It moves when any connection prepares a statement that is not in its cache
    yet, or opens a cursor: a borrower's ``prepare()`` moves it, and nothing a
    query logger sees does. ``-1`` if asyncpg no longer has it (then every
    borrow counts as having prepared something).
    """
    uid = getattr(asyncpg.connection, "_uid", None)
    return uid if isinstance(uid, int) else -1


class Tracker:
    """What the statements run on one connection since its last reset may have dirtied.

    A query logger (:meth:`asyncpg.Connection.add_query_logger`): asyncpg
    calls it, soon after each query through ``execute``, ``executemany`` and
    the ``fetch*`` methods ends (on the next pass of the event loop), with the
    query's text, which :func:`elasticpool._dirty.scan` reads. asyncpg's
    protocol counts the queries it runs, logged or not (a
    :class:`~asyncpg.prepared_stmt.PreparedStatement`'s or a cursor's are
    not logged): :meth:`unseen` compares the two counts, so a query whose text
    the tracker has not seen, or not seen *yet*, is never taken for a clean
    one.

    Invariants: ``base`` is the protocol's query count and ``uid`` asyncpg's
    statement counter at the last reset (or when tracking started);
    ``logged`` counts the log records since, and ``dirty`` is what their text
    may have dirtied. The connector's own reset queries are run with the
    tracker removed, and :meth:`restart` follows them.
    """

    __slots__ = ("base", "dirty", "logged", "uid")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.base = 0
        self.dirty = 0
        self.logged = 0
        self.uid = 0
        self.restart(conn)

    def __call__(self, record: Any) -> None:
        self.logged += 1
        query = record.query
        self.dirty |= _scan(query) if isinstance(query, str) else _dirty.ALL

    def restart(self, conn: asyncpg.Connection) -> None:
        """Start counting afresh: ``conn`` was just made clean."""
        protocol = _impl(conn)._protocol
        self.base = protocol.queries_count if protocol is not None else 0
        self.dirty = 0
        self.logged = 0
        self.uid = _statement_ids()

    def unseen(self, conn: Any) -> int:
        """How many queries ran since the last reset whose log record has not come (yet).

        Not 0 while the records of queries that just ended are still on their
        way (one pass of the event loop), and for queries asyncpg runs without
        logging them; negative if it logged something it did not count.
        """
        return int(conn._protocol.queries_count) - self.base - self.logged

    def parts(self, conn: asyncpg.Connection, scope: int) -> int:
        """The parts of ``scope`` the borrowers since the last reset may have dirtied.

        Everything in ``scope`` if a query ran that the tracker has not seen;
        :data:`~elasticpool._dirty.PREPARED` also if asyncpg named a new
        statement anywhere in the process (a ``prepare()``).
        """
        if self.unseen(conn):
            return scope
        dirty = self.dirty
        if scope & _dirty.PREPARED and _statement_ids() != self.uid:
            dirty |= _dirty.PREPARED
        return dirty & scope
