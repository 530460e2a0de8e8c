"""What the commands share: errors, optional imports, DSNs without their passwords, connections."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import ModuleType
from typing import Any

import anyio

from .._adapters import ASYNCPG, PSYCOPG, Adapter, load
from .._redact import dsn_problem, scrub
from .._redact import redact_dsn as redact

__all__ = [
    "Admin",
    "CliError",
    "admin_connection",
    "count",
    "redact",
    "require",
    "require_adapter",
    "scrub",
]

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


def require_adapter(adapter: Adapter, what: str) -> ModuleType:
    """Import ``adapter``'s package, or fail naming the extra that installs its driver."""
    module = load(adapter)
    if module is None:
        raise CliError(f"{what} needs {adapter.extra}: pip install 'elasticpool[{adapter.extra}]'")
    return module


@dataclasses.dataclass(frozen=True, slots=True)
class Admin:
    """A command's own connection and the connector that opened it."""

    connector: Any
    conn: Any

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``$n`` placeholders, ``args`` as parameters); the rows as tuples."""
        return list(await self.connector.fetch(self.conn, sql, *args))

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """A transaction on the connection: COMMIT on a clean exit, ROLLBACK on an error."""
        tx: AbstractAsyncContextManager[Any] = self.connector.transaction(self.conn)
        return tx


def _connector(dsn: str, application_name: str) -> Any:
    """A connector for ``dsn``: asyncpg's for a URI when it is installed, else psycopg's."""
    if dsn.startswith(("postgresql://", "postgres://")):
        apg = load(ASYNCPG)
        if apg is not None:
            return apg.AsyncpgConnector(dsn, server_settings={"application_name": application_name})
    pg = load(PSYCOPG)
    if pg is not None:
        return pg.PsycopgConnector(
            dsn, kwargs={"autocommit": True, "application_name": application_name}
        )
    raise CliError(
        "connecting needs a driver: pip install 'elasticpool[asyncpg]' (postgresql:// "
        "URIs) or 'elasticpool[psycopg]' (URIs and key=value strings)"
    )


@contextlib.asynccontextmanager
async def admin_connection(dsn: str, application_name: str) -> AsyncIterator[Admin]:
    """A plain connection of the command's own, closed on exit.

    Opened by asyncpg's connector for a ``postgresql://`` URI when asyncpg is
    installed, else by psycopg's (which also takes libpq's ``key=value``
    form); either keeps the password out of its errors.
    """
    problem = dsn_problem(dsn)
    if problem is not None:
        raise CliError(f"cannot connect to {redact(dsn)}: {problem}")
    connector = _connector(dsn, application_name)
    try:
        with anyio.fail_after(CONNECT_TIMEOUT):
            conn = await connector.connect()
    except Exception as exc:
        why = scrub(f"{type(exc).__name__}: {exc}", dsn)
        raise CliError(f"cannot connect to {redact(dsn)}: {why}") from None
    try:
        yield Admin(connector, conn)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CONNECT_TIMEOUT):
            await connector.close(conn)
