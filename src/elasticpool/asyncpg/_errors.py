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
