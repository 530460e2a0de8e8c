"""What the commands share: errors, optional imports, DSNs without their passwords, connections."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import anyio

from .._redact import dsn_passwords, dsn_problem, scrub, unshown
from .._redact import redact_dsn as redact

__all__ = ["CliError", "admin_connection", "count", "redact", "require", "scrub"]

CONNECT_TIMEOUT = 10.0
"""Seconds a command waits for its own connection to the server."""


class CliError(Exception):
    """A failure the command reports in one line (its message never holds a password)."""


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, in the plural unless ``n`` is 1: ``1 member``, ``0 members``.

    ``plural`` for a noun that does not just take an ``s`` (``count(2, "query",
    "queries")``).
    """
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CliError(
            f"{what} needs {module.partition('.')[0]}: pip install 'elasticpool[{extra}]'"
        ) from None


@contextlib.asynccontextmanager
async def admin_connection(dsn: str, application_name: str) -> AsyncIterator[Any]:
    """A plain connection of the command's own, closed on exit.

    asyncpg for a ``postgresql://`` URI when it is installed, else psycopg
    (which also takes libpq's ``key=value`` form).
    """
    problem = dsn_problem(dsn)
    if problem is not None:
        raise CliError(f"cannot connect to {redact(dsn)}: {problem}")
    drivers = ["psycopg"]
    if dsn.startswith(("postgresql://", "postgres://")):
        drivers.insert(0, "asyncpg")
    module: Any = None
    for name in drivers:
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            break
    if module is None:
        raise CliError(
            "connecting needs a driver: pip install 'elasticpool[asyncpg]' (postgresql:// "
            "URIs) or 'elasticpool[psycopg]' (URIs and key=value strings)"
        )
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            if module.__name__ == "asyncpg":
                conn: Any = await module.connect(
                    dsn, server_settings={"application_name": application_name}
                )
            else:
                conn = await module.AsyncConnection.connect(
                    dsn, autocommit=True, application_name=application_name
                )
    except Exception as exc:
        # A parse error may quote a piece of the password, which scrub cannot find.
        parse_error = (ValueError, getattr(module, "ProgrammingError", ValueError))
        if isinstance(exc, parse_error) and dsn_passwords(dsn):
            why = f"the dsn cannot be parsed: {unshown(exc)}"
        else:
            why = scrub(f"{type(exc).__name__}: {exc}", dsn)
        raise CliError(f"cannot connect to {redact(dsn)}: {why}") from None
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CONNECT_TIMEOUT):
            await conn.close()
