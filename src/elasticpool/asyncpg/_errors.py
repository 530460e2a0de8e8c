"""asyncpg's errors: which ones end a connection, and the face's closed and timeout errors."""

from __future__ import annotations

import asyncio
import builtins
import sys
from typing import Any

import asyncpg
import asyncpg.exceptions
from asyncpg.exceptions import InterfaceError

from .._connector import ends_session
from .._errors import PoolClosed, PoolTimeout

_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())  # () on Python 3.10: no groups


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


POOLER_HINT = (
    "asyncpg's statement cache does not work through a connection pooler in transaction "
    "mode (PgBouncer, for one): each statement may reach another server "
    "connection; pass statement_cache_size=0 to AsyncpgConnector or create_pool "
    '(see "Behind PgBouncer" in the docs)'
)
"""What the connector logs, once, when a prepared statement went missing or was duplicated."""


def pooler_hint(exc: BaseException) -> str | None:
    """:data:`POOLER_HINT` when ``exc`` looks like a transaction-mode pooler's doing, else ``None``.

    That is "prepared statement ... does not exist" (26000), "prepared
    statement ... already exists" (42P05), and the session reset's own
    "asyncpg's own prepared statements were deallocated" (its cached
    statements are not on the server connection the reset reached). A
    program's own ``PREPARE`` / ``DEALLOCATE`` mistakes raise the same
    errors, which is why the hint says "pooler" as a likely cause, not a
    certain one.
    """
    if isinstance(exc, _EXCEPTION_GROUP):
        return next((h for h in map(pooler_hint, exc.exceptions) if h), None)
    lost = (
        asyncpg.exceptions.InvalidSQLStatementNameError,
        asyncpg.exceptions.DuplicatePreparedStatementError,
    )
    if isinstance(exc, lost) or (
        isinstance(exc, asyncpg.PostgresError)
        and "own prepared statements were deallocated" in str(exc)
    ):
        return POOLER_HINT
    return None


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
