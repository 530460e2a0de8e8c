"""What runs on a connection between two borrowers: the check, the session reset's SQL,
psycopg's prepared-statement cache, and the Python-side state restored after a reset.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Final, cast

import psycopg
from psycopg import pq

from ._wire import _cancel_handle

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
