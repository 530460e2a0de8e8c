"""The ``"session"`` reset of an asyncpg connection: its SQL and the private attributes it reads."""

from __future__ import annotations

import functools
import re
from typing import Any

import asyncpg
from asyncpg.exceptions import InterfaceError

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


async def _send_session_reset(conn: asyncpg.Connection) -> None:
    """Send :func:`session_reset_sql` on ``conn``, and the ``DO`` block only if its check fails."""
    names = _cached_names(conn)
    status = await conn.execute(_reset_sql(conn, names))
    if names is not None and status != _CHECK_PASSED:
        # Rare: the borrower prepared statements, or deallocated asyncpg's.
        await conn.execute(_DEALLOCATE_SQL.format(kept=_kept_literal(names)))
