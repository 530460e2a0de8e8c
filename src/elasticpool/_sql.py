"""SQL the core writes itself: quoting, placeholders, and the statements it shares.

Statements are written with PostgreSQL's ``$1, $2, ...`` placeholders, each
used once and in order (:func:`check_placeholders`); values are always passed
as parameters, never formatted into the text, and a connector's ``fetch``
(see :class:`~elasticpool.Connector`) runs them on its driver. Identifiers
(the lease table's name) are quoted with :func:`quote_ident`; the few
literals that must be part of a statement's text (a ``DO`` block takes no
parameters) with :func:`quote_literal`.

No driver is imported here: the adapters and the fleet both use it.
"""

from __future__ import annotations

import re

__all__ = ["SERVER_LIMITS_SQL", "check_placeholders", "quote_ident", "quote_literal"]

SERVER_LIMITS_SQL = (
    "SELECT current_setting('max_connections')::int,"
    " current_setting('superuser_reserved_connections')::int"
    " + coalesce(current_setting('reserved_connections', true), '0')::int"
)
"""The server's ``max_connections`` and how many of them it reserves (16+: two settings)."""

PLACEHOLDER = re.compile(r"\$(\d+)")
"""A ``$n`` placeholder (its number in group 1)."""


def check_placeholders(sql: str, count: int) -> None:
    """Raise :class:`ValueError` unless ``sql``'s placeholders are ``$1..$count``, once each.

    The rule every connector's ``fetch`` applies, whatever its driver accepts,
    so that a statement that runs on one driver runs on all of them.
    """
    order = [int(n) for n in PLACEHOLDER.findall(sql)]
    if order != list(range(1, count + 1)):
        raise ValueError(
            f"placeholders must be $1..$n in order, once each, one per argument "
            f"({count} given): {sql!r}"
        )


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
