"""The driver contract.

A :class:`Connector` is everything the pool knows about a database driver. The
pool never imports a driver: adapters (``elasticpool.asyncpg``,
``elasticpool.psycopg``) and the fake in :mod:`elasticpool.testing` implement
this protocol, and so can you.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

__all__ = ["Connector", "Fetch", "ResetMode", "fetch_of"]

ConnT = TypeVar("ConnT")

_SESSION_ENDING = frozenset({"57P01", "57P02", "57P03"})


def ends_session(sqlstate: str) -> bool:
    """Whether a server error with this SQLSTATE means the connection is gone.

    Class 08 (connection exception), 57P01 admin shutdown, 57P02 crash
    shutdown and 57P03 cannot connect now. Shared by the adapters' error
    classification; not a judgement on errors without a SQLSTATE.
    """
    return sqlstate.startswith("08") or sqlstate in _SESSION_ENDING


def refused_settings(exc: BaseException, settings: Mapping[str, str]) -> dict[str, str] | None:
    """``settings`` less those a pooler refused at startup; ``None`` when ``exc`` is not that.

    A connection pooler in front of the server (PgBouncer) refuses a startup
    parameter it does not know ("unsupported startup parameter: NAME", or
    "... in options" for ``-c`` settings) and so every connect that sends
    one. The settings a fleet membership adds (see ``set_server_settings``
    below) are then sent without all but ``application_name``, which every
    pooler passes on: the fleet still counts its backends, and only the
    server's polling for killed members' sockets
    (``client_connection_check_interval``) is lost. Shared by the adapters.
    """
    if "unsupported startup parameter" not in str(exc):
        return None
    kept = {name: value for name, value in settings.items() if name == "application_name"}
    return kept if len(kept) < len(settings) else None


def log_refused(connector: object, before: Mapping[str, str], exc: BaseException) -> None:
    """Say once per connector which settings a pooler refused, and that they are dropped."""
    dropped = sorted(set(before) - {"application_name"})
    logging.getLogger("elasticpool").warning(
        "%s: the server refused the startup parameters %s (%s): likely a pooler such as "
        "PgBouncer in front of it; connecting without them (a fleet member killed "
        "mid-query is counted until its queries end; PostgresMembership("
        "client_connection_check_interval=None) says so up front)",
        type(connector).__name__,
        ", ".join(dropped),
        exc,
    )


ResetMode = Literal["none", "rollback", "session"]
"""What the pool does to a connection when it comes back.

* ``"none"``: nothing. Only for connections nobody can leave dirty.
* ``"rollback"``: roll back an open or failed transaction.
* ``"session"``: roll back, then clear session state (settings, role, LISTEN,
  cursors, prepared statements, advisory locks) so the next borrower sees a
  fresh session.
"""


@runtime_checkable
class Connector(Protocol[ConnT]):
    """How the pool opens, checks, resets and closes one kind of connection.

    Exact semantics the pool relies on:

    * :meth:`connect` returns a ready connection or raises. It may be cancelled
      (the pool bounds it with ``connect_timeout``); a cancelled connect must
      not leak a half-open connection.
    * :meth:`close` closes gracefully and may wait on the network; the pool
      runs it shielded with a time bound and calls :meth:`terminate` if the
      bound passes. :meth:`terminate` is synchronous and must not block.
    * :meth:`is_closed` is a cheap local check (no I/O).
    * :meth:`ping` raises if the connection is unusable; the pool calls it only
      on borrow after the connection sat idle longer than ``ping_after``, or
      after another connection of the pool was found dead.
    * :meth:`needs_reset` is a cheap local check deciding whether
      :meth:`reset` must run before the connection is reused; when it returns
      ``False`` the connection goes straight back to the idle set.
    * :meth:`reset` raises if the connection cannot be made clean; the pool
      then discards it.
    * :meth:`is_disconnect` says whether an exception raised while the
      connection was in use means the connection is dead (connection-class
      errors); the pool then evicts it and checks the other idle connections
      before handing them out.
    * :meth:`is_closed` is asked when a connection is lent and when it comes
      back: it must say yes for any connection that cannot be reused as it is
      (closed, or left mid-query by a cancelled task when the driver cannot
      recover it).
    * :meth:`transaction` returns the driver's own transaction context manager
      (``BEGIN`` on entry, ``COMMIT`` on a clean exit, ``ROLLBACK`` on an error);
      with ``readonly=True`` the transaction is read-only (``BEGIN READ ONLY``
      or ``SET TRANSACTION READ ONLY`` first), so the server refuses writes in
      it. The pool passes ``readonly`` only when it is true, so a connector
      written before it existed still serves ordinary transactions.
    * ``closed_on_return(conn) -> bool``, optional (not part of the
      protocol): asked instead of :meth:`is_closed` when a connection comes
      back. It may skip what :meth:`is_closed` does beyond the driver's own
      state (such as looking at the socket): the pool asks :meth:`is_closed`
      again before it lends the connection to anyone.
    * ``reset_nowait(conn, mode) -> bool | None``, optional (not part of the
      protocol): finish the reset :meth:`needs_reset` asked for at once, if it
      needs no I/O, and return ``True``; ``False`` (having changed nothing)
      when it does, and the pool then runs :meth:`reset` under its deadline;
      ``None`` when it cannot tell yet, and the pool asks again after one pass
      of the event loop. It lets a connector that decides late what a reset
      needs (asyncpg's learns what the borrower ran one pass of the loop
      after the release) skip the deadline's cost when the answer is
      "nothing".
    * ``abandon(conn)``, optional (not part of the protocol): in a process
      forked from the one that opened the pool, the pool gives each inherited
      connection up with it; it must do no I/O (the socket is the parent's),
      and should make ``conn`` unusable where the driver allows it.

    Optional: ``set_server_settings(settings: Mapping[str, str]) -> None``. A
    connector that has it sends ``settings`` (server parameters by name, such
    as ``application_name``) when it opens every later connection, in place of
    its own values for the same names; each call replaces the mapping of the
    last. :class:`~elasticpool.fleet.PostgresMembership` uses it to tag a
    member's connections with its pool and instance (see docs/fleet.md); it
    is never called without a membership. A connector without it still works,
    untagged.

    ``fetch(conn, sql, *args) -> list[tuple]``, async: run one statement on
    ``conn`` and return its rows as tuples (``[]`` for a statement without a
    result). ``sql`` uses PostgreSQL's ``$1..$n`` placeholders, in order, once
    each (anything else is a :class:`ValueError`); ``args`` are always sent as
    parameters, never formatted into the text. On a connection in no
    transaction the statement is a transaction of its own, committed when
    ``fetch`` returns, whatever the driver's autocommit setting; inside a
    transaction (:meth:`transaction`) it runs in it. It is how everything
    outside the adapter talks to the database, so that nothing else needs to
    know the driver: :class:`~elasticpool.fleet.PostgresMembership` (every
    heartbeat), :class:`~elasticpool.replicas.RoutingPool`'s default lag check
    (``max_lag``), ``total_max_connections="N%"`` (the server's limits, once at
    open) and the command line. The pool alone never calls it: a connector
    written before it existed still serves a pool, and those callers raise a
    :class:`TypeError` naming the missing method.

    It is not a pool: it keeps no connections of its own.
    """

    async def connect(self) -> ConnT:
        """Open one new connection."""
        ...

    async def close(self, conn: ConnT) -> None:
        """Close ``conn`` gracefully."""
        ...

    def terminate(self, conn: ConnT) -> None:
        """Close ``conn`` at once, without waiting on the network."""
        ...

    def is_closed(self, conn: ConnT) -> bool:
        """Whether ``conn`` is already known to be closed or dead."""
        ...

    async def ping(self, conn: ConnT) -> None:
        """Raise if ``conn`` cannot serve a query."""
        ...

    def needs_reset(self, conn: ConnT, mode: ResetMode) -> bool:
        """Whether :meth:`reset` must run before ``conn`` is reused under ``mode``."""
        ...

    async def reset(self, conn: ConnT, mode: ResetMode) -> None:
        """Make ``conn`` clean for the next borrower under ``mode``."""
        ...

    def is_disconnect(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection it came from is dead."""
        ...

    def transaction(
        self, conn: ConnT, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]:
        """A transaction on ``conn``: BEGIN (READ ONLY), then COMMIT or ROLLBACK on exit."""
        ...


class Fetch(Protocol):
    """A connector's ``fetch``: ``await fetch(conn, sql, *args)``, the rows as tuples."""

    async def __call__(self, conn: Any, sql: str, /, *args: Any) -> list[tuple[Any, ...]]: ...


def fetch_of(connector: object, needed_by: str) -> Fetch:
    """``connector.fetch``, or a :class:`TypeError` naming the missing method and who needs it.

    ``needed_by`` completes "... needs the connector's fetch(conn, sql, *args)":
    the caller that cannot work without it.
    """
    fetch: Fetch | None = getattr(connector, "fetch", None)
    if not callable(fetch):
        raise TypeError(
            f"{needed_by} needs the connector's fetch(conn, sql, *args) method, which "
            f"{type(connector).__qualname__} does not have (see elasticpool.Connector)"
        )
    return fetch
