"""Passwords out of text: the one place that masks connection strings and scrubs secrets.

Every repr, log line, error message and CLI line that shows a connection
string shows :func:`redact_dsn` of it; text from elsewhere that may quote one
(a driver's or a tool's message) goes through :func:`scrub` first, or is not
shown at all (:func:`unshown`).

Passwords are often pasted into URIs without percent-encoding. A ``#``,
``/``, ``?`` or ``@`` in one makes drivers read a piece of the password as a
port, a database or a host, and quote it in their errors; so the URI's
userinfo here ends at the ``@`` a person meant (the last one before the host),
not where a URI parser stops, and :func:`dsn_problem` names such a password
so connectors can refuse it before any driver sees it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

__all__ = ["MASK", "dsn_passwords", "dsn_problem", "redact_dsn", "scrub", "split_uri", "unshown"]

MASK = "***"
"""What a password is shown as."""

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_KEY = r"(?:pg|ssl)?password"  # libpq's password and sslpassword; PGPASSWORD=... in env-style text
_KV_PASSWORD = re.compile(rf"(\b{_KEY}\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(rf"([?&]{_KEY}=)((?:[^&]|&(?![^&=]*=))*)", re.IGNORECASE)
"""A ``password=`` query parameter; its value runs on over an ``&`` not starting a ``key=``."""
_HOST = r"(?:\[[^\]]*\]|[^:,@\[\]]*)(?::\d*)?"
_HOSTSPEC = re.compile(rf"{_HOST}(?:,{_HOST})*")
"""Hosts with optional numeric ports, comma-separated: an authority without userinfo."""
_MISREAD = "#/?@"
"""Characters that make drivers misread an unencoded password in a URI's userinfo."""


def split_uri(dsn: str) -> tuple[str, str | None, str] | None:
    """``(scheme "://", userinfo or None, the rest)`` of a URI; ``None`` for other forms.

    The userinfo ends at the last ``@`` of the string, even when the password
    holds an unencoded ``# / ? @``. Only an ``@`` in a query value (``key=``
    before it) after a plain ``host[:port]`` does not end it, as in
    ``postgresql://db/x?user=a@b`` or ``postgresql://u@db/x?password=a@b``.
    """
    match = _SCHEME.match(dsn)
    if match is None:
        return None
    rest = dsn[match.end() :]
    head_end = next((i for i, ch in enumerate(rest) if ch in "/?#"), len(rest))
    plain_host = _HOSTSPEC.fullmatch(rest[:head_end].rpartition("@")[2]) is not None
    at = rest.rfind("@")
    while at > head_end and plain_host and "=" in rest[head_end:at]:
        at = rest.rfind("@", 0, at)
    if at < 0:
        return match.group(), None, rest
    return match.group(), rest[:at], rest[at + 1 :]


def redact_dsn(dsn: str) -> str:
    """``dsn`` fit to show: every password in it as ``***``.

    A URI keeps its user, hosts, database and parameters, with the password
    of its userinfo and of ``password=`` parameters masked; a ``key=value``
    string keeps everything but the values of ``password`` (and
    ``sslpassword``, ``PGPASSWORD``).
    """
    parts = split_uri(dsn)
    if parts is None:
        return scrub(_KV_PASSWORD.sub(rf"\g<1>{MASK}", dsn), dsn)
    prefix, userinfo, rest = parts
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        prefix += f"{user}:{MASK}@" if colon else f"{user}@"
    return prefix + _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", rest)


def dsn_passwords(dsn: str | None) -> list[str]:
    """Every spelling of each password in ``dsn`` (as written, percent-decoded), longest first."""
    if not isinstance(dsn, str):
        return []
    found: list[str] = []
    parts = split_uri(dsn)
    if parts is not None:
        _, userinfo, rest = parts
        if userinfo is not None and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
        for m in _QUERY_PASSWORD.finditer(rest):  # and what drivers take: up to the first &
            found += [m.group(2), m.group(2).partition("&")[0]]
    else:
        for m in _KV_PASSWORD.finditer(dsn):
            quoted = m.group(2)
            bare = quoted[1:].removesuffix("'") if quoted.startswith("'") else quoted
            found += [quoted, bare, re.sub(r"\\(.)", r"\1", bare)]
    spellings = {s for p in found for s in (p, unquote(p)) if s}
    return sorted(spellings, key=len, reverse=True)


def scrub(text: str, dsn: str | None = None, *, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the passwords of ``dsn`` and each of ``secrets`` replaced by ``***``.

    A secret is replaced as written and percent-encoded. It is plain text
    replacement: a driver's message that quotes a *piece* of a password (as
    a misread URI makes them do) is not caught; do not show such messages.
    """
    found = set(dsn_passwords(dsn))
    found.update(s for secret in secrets if secret for s in (secret, quote(secret, safe="")))
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def dsn_problem(dsn: str | None) -> str | None:
    """Why drivers would misread the password in ``dsn``, or ``None``.

    That is a URI password holding an unencoded ``#``, ``/``, ``?`` or ``@``
    (drivers then take a piece of it for a port, database, query or host), or
    a ``password=`` parameter holding a ``#`` (the rest is dropped as a
    fragment). The answer never quotes the password.
    """
    parts = split_uri(dsn) if isinstance(dsn, str) else None
    if parts is None:
        return None
    _, userinfo, rest = parts
    bad: set[str] = set()
    if userinfo is not None and ":" in userinfo:
        bad.update(set(userinfo.partition(":")[2]) & set(_MISREAD))
    for m in _QUERY_PASSWORD.finditer(rest):
        bad.update(set(m.group(2)) & {"#"})
    if not bad:
        return None
    chars = " ".join(ch for ch in _MISREAD if ch in bad)
    return (
        f"its password holds {chars} unencoded; percent-encode the password "
        "(urllib.parse.quote(password, safe=''))"
    )


def unshown(exc: BaseException) -> str:
    """``exc`` named without its message, for a driver error that may quote a password."""
    return f"{type(exc).__name__} (its message is not shown: it may quote the password)"
