"""What the commands share: errors, optional imports, DSNs without their passwords, connections."""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import anyio

__all__ = ["CliError", "admin_connection", "redact", "require", "scrub"]

CONNECT_TIMEOUT = 10.0
"""Seconds a command waits for its own connection to the server."""


class CliError(Exception):
    """A failure the command reports in one line (its message never holds a password)."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CliError(
            f"{what} needs {module.partition('.')[0]}: pip install 'elasticpool[{extra}]'"
        ) from None


_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def _passwords(dsn: str) -> list[str]:
    """Every spelling of the password in ``dsn`` (raw and percent-decoded)."""
    found: list[str] = []
    try:
        parts = urlsplit(dsn)
        if parts.scheme and parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        pass
    for match in _KV_PASSWORD.finditer(dsn):
        value = match.group(2)
        found += [value, value.strip("'")]
    return [p for p in found if p]


def redact(dsn: str) -> str:
    """``dsn`` fit to print: its password as ``***`` (in the authority, query or ``key=value``)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        parts = None
    if parts is not None and parts.scheme in ("postgres", "postgresql"):
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, host = netloc.rpartition("@")
            netloc = userinfo.partition(":")[0] + ":***@" + host
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query)],
            quote_via=quote,
            safe="*",
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return scrub(_KV_PASSWORD.sub(r"\1***", dsn), dsn)


def scrub(text: str, dsn: str | None) -> str:
    """``text`` with every spelling of ``dsn``'s password replaced by ``***``."""
    if dsn is None:
        return text
    for secret in sorted(_passwords(dsn), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


@contextlib.asynccontextmanager
async def admin_connection(dsn: str, application_name: str) -> AsyncIterator[Any]:
    """A plain connection of the command's own, closed on exit.

    asyncpg for a ``postgresql://`` URI when it is installed, else psycopg
    (which also takes libpq's ``key=value`` form).
    """
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
        raise CliError(
            scrub(f"cannot connect to {redact(dsn)}: {type(exc).__name__}: {exc}", dsn)
        ) from None
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CONNECT_TIMEOUT):
            await conn.close()
