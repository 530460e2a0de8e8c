"""The ``application_name`` a fleet member's connections carry, and reading it back. Pure.

Every connection a :class:`~elasticpool.fleet.PostgresMembership` member
opens (its pool's and its heartbeats' extra ones) is tagged
``<prefix>|<pool>|<instance>``, so ``pg_stat_activity`` shows which pool and
which member each backend belongs to. That is how the fleet counts the
backends of a *departed* member (killed mid-query: PostgreSQL keeps a backend
running its query after the client is gone) against the total until the
server no longer shows them.

PostgreSQL keeps at most 63 bytes (NAMEDATALEN - 1) of printable ASCII of an
``application_name``. The pool part (at most :data:`POOL_PART_MAX`
characters) and the instance part (at most :data:`INSTANCE_PART_MAX`) are
kept whole: a name that is longer, or has a character the server would not
keep (or ``|``), is shortened and followed by ``~`` and 8 hex digits of its
hash, so the parts depend only on the pool name and the instance id. The
prefix (the membership's ``application_name``, default ``"elasticpool"``)
gets what room is left, at least 5 characters.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["application_name", "fleet_backends", "pool_tag"]

NAME_MAX = 63
"""Bytes of an ``application_name`` PostgreSQL keeps (NAMEDATALEN - 1)."""

POOL_PART_MAX = 32
INSTANCE_PART_MAX = 24
DEFAULT_PREFIX = "elasticpool"


def _printable(text: str) -> str:
    """``text`` with every character the server would not keep as is (and ``|``) as ``?``."""
    return "".join(c if " " <= c <= "~" and c != "|" else "?" for c in text)


def _part(text: str, limit: int) -> str:
    """``text`` if the server keeps it whole within ``limit``, else a shortened, hashed form."""
    safe = _printable(text)
    if safe == text and len(text) <= limit:
        return text
    digest = hashlib.blake2s(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return safe[: limit - 9] + "~" + digest


def pool_tag(pool: str) -> str:
    """``|<pool part>|``: what every tagged ``application_name`` of ``pool``'s fleet contains."""
    return f"|{_part(pool, POOL_PART_MAX)}|"


def application_name(pool: str, instance: str, prefix: str | None = None) -> str:
    """The ``application_name`` of member ``instance`` of ``pool``: ``<prefix>|<pool>|<instance>``.

    At most :data:`NAME_MAX` characters of printable ASCII, so the server keeps
    it exactly; only the prefix is ever cut.
    """
    tail = pool_tag(pool) + _part(instance, INSTANCE_PART_MAX)
    head = _printable(DEFAULT_PREFIX if prefix is None else prefix)
    return head[: NAME_MAX - len(tail)] + tail


def fleet_backends(names: Iterable[str], pool: str, live: Iterable[str]) -> tuple[int, int]:
    """``(backends of pool's fleet, of them departed)`` among the ``application_name`` s ``names``.

    A backend is the fleet's when its name carries :func:`pool_tag` followed
    by an instance part; it is *departed* when that instance is not among
    ``live`` (the instance ids holding a live lease, the caller's own
    included): a member that was killed, or whose lease expired. Names
    without the tag (other applications, untagged connections) count as
    neither.
    """
    tag = pool_tag(pool)
    alive = {_part(i, INSTANCE_PART_MAX) for i in live}
    ours = departed = 0
    for name in names:
        _, found, instance = name.rpartition(tag)
        if not found or not instance or "|" in instance:
            continue
        ours += 1
        if instance not in alive:
            departed += 1
    return ours, departed
