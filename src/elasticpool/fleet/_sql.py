"""Running a statement on a driver's own connection, whichever driver it is.

Statements are written with PostgreSQL's ``$1, $2, ...`` placeholders, each
used once and in order; values are always passed as parameters, never
formatted into the text. Identifiers (the lease table's name) are quoted with
:func:`quote_ident`; the few literals that must be part of a statement's text
(a ``DO`` block takes no parameters) with :func:`quote_literal`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["SERVER_LIMITS_SQL", "fetch", "quote_ident", "quote_literal"]

SERVER_LIMITS_SQL = (
    "SELECT current_setting('max_connections')::int,"
    " current_setting('superuser_reserved_connections')::int"
    " + coalesce(current_setting('reserved_connections', true), '0')::int"
)
"""The server's ``max_connections`` and how many of them it reserves (16+: two settings)."""

_PLACEHOLDER = re.compile(r"\$(\d+)")
_IDLE = 0  # libpq's PQTRANS_IDLE: no transaction open


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"a""b"`` for ``a"b``)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"an sql identifier must be a non-empty string without NUL (got {name!r})")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as an SQL string literal in escape syntax (``E'a''b\\\\c'`` for ``a'b\\c``).

    The ``E'...'`` form reads the same whatever ``standard_conforming_strings``
    is. It is not safe inside a dollar-quoted body whose tag ``value`` might
    contain: callers building a ``DO`` block check for ``$`` themselves.
    """
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError(f"an sql literal must be a string without NUL (got {value!r})")
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


async def fetch(conn: Any, sql: str, *args: Any, own: bool = False) -> list[tuple[Any, ...]]:
    """Run ``sql`` with ``args`` on ``conn`` (asyncpg or psycopg); the rows as tuples.

    ``own``: the statement is a transaction of its own (committed when it
    returns), also on a psycopg connection that is not in autocommit mode
    and in no transaction: it is switched to autocommit for the statement
    (no round trip), so no BEGIN/COMMIT pair is added.
    """
    # by the driver's class, also for a subclass of it (asyncpg's connection_class)
    module = next(
        (
            m
            for m in (c.__module__ for c in type(conn).__mro__)
            if m.startswith(("asyncpg", "psycopg"))
        ),
        type(conn).__module__,
    )
    if module.startswith("asyncpg"):
        rows = await conn.fetch(sql, *args)
        return [tuple(r) for r in rows]
    if module.startswith("psycopg"):
        order = [int(n) for n in _PLACEHOLDER.findall(sql)]
        if order != list(range(1, len(order) + 1)) or len(order) != len(args):
            raise ValueError(f"placeholders must be $1..$n in order, once each: {sql!r}")
        switch = own and not conn.autocommit and conn.info.transaction_status == _IDLE
        if switch:
            await conn.set_autocommit(True)
        try:
            async with conn.cursor() as cur:
                await cur.execute(_PLACEHOLDER.sub("%s", sql), list(args))
                if cur.description is None:
                    return []
                return [tuple(r) for r in await cur.fetchall()]
        finally:
            if switch and not conn.closed:
                await conn.set_autocommit(False)
    custom = getattr(conn, "fleet_fetch", None)
    if custom is not None:
        result: Sequence[tuple[Any, ...]] = await custom(sql, *args)
        return list(result)
    raise TypeError(
        f"cannot run sql on a {type(conn).__module__}.{type(conn).__qualname__} connection: "
        "PostgresMembership supports asyncpg and psycopg connections"
    )
