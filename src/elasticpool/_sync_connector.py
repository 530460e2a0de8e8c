"""The driver contract for the threaded pool.

A :class:`SyncConnector` is what :class:`~elasticpool.SyncPool` knows about a
blocking database driver: the same jobs as :class:`~elasticpool.Connector`,
as plain (blocking) methods. Adapters implement it
(:class:`elasticpool.psycopg.SyncPsycopgConnector`, the fake in
:mod:`elasticpool.testing`), and so can you.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar, runtime_checkable

from ._connector import ResetMode

__all__ = ["SyncConnector"]

ConnT = TypeVar("ConnT")


@runtime_checkable
class SyncConnector(Protocol[ConnT]):
    """How the threaded pool opens, checks, resets and closes one kind of connection.

    The semantics are those of :class:`~elasticpool.Connector`, with one
    difference that threads impose: a blocked call cannot be cancelled from
    outside, so the calls that wait on the network for an answer take their
    bound as an argument and must keep it.

    * :meth:`connect` returns a ready connection or raises, within about
      ``timeout`` seconds (the pool's ``connect_timeout``; a driver whose own
      bound has a coarser grain, such as libpq's whole seconds, rounds up).
    * :meth:`ping` raises if the connection cannot serve a query, and raises
      (leaving the connection unusable: :meth:`is_closed` then says yes) when
      no answer comes within ``timeout`` seconds.
    * :meth:`close` closes gracefully without waiting long (the pool runs it
      on a background thread); :meth:`terminate` closes at once and may be
      called from another thread while a call on the same connection is
      blocked: it must then make that call return (for a socket, shut it down)
      rather than free what the blocked call is using.
    * :meth:`is_closed`, :meth:`needs_reset` and :meth:`is_disconnect` are
      cheap local checks (no I/O), as for the async connector.
    * :meth:`reset` makes the connection clean for the next borrower under
      ``mode``, or raises (the connection is then discarded). It runs on a
      background thread, off the returning caller's path.
    * :meth:`transaction` returns the driver's own transaction context
      manager (``BEGIN`` … ``COMMIT`` / ``ROLLBACK``), read-only when asked.
    * :meth:`fetch` runs one statement, written with ``$1, $2, ...``
      placeholders (each once, in order; values always as parameters), and
      returns the rows as tuples. On a connection in no transaction it is a
      transaction of its own (committed when it returns). The pool itself
      never calls it: a fleet membership, and a percentage
      ``total_max_connections``, do.
    * ``abandon(conn)`` and ``set_server_settings(settings)`` are optional,
      with the meaning they have for :class:`~elasticpool.Connector`.

    It may be called from several threads at once, never twice at once for
    one connection (except :meth:`terminate`, above). It is not a pool: it
    keeps no connections of its own.
    """

    def connect(self, timeout: float) -> ConnT:
        """Open one new connection within about ``timeout`` seconds."""
        ...

    def close(self, conn: ConnT) -> None:
        """Close ``conn`` gracefully."""
        ...

    def terminate(self, conn: ConnT) -> None:
        """Close ``conn`` at once, without waiting on the network (from any thread)."""
        ...

    def is_closed(self, conn: ConnT) -> bool:
        """Whether ``conn`` is already known to be closed or dead."""
        ...

    def ping(self, conn: ConnT, timeout: float) -> None:
        """Raise if ``conn`` cannot serve a query, or gives no answer within ``timeout``."""
        ...

    def needs_reset(self, conn: ConnT, mode: ResetMode) -> bool:
        """Whether :meth:`reset` must run before ``conn`` is reused under ``mode``."""
        ...

    def reset(self, conn: ConnT, mode: ResetMode) -> None:
        """Make ``conn`` clean for the next borrower under ``mode``."""
        ...

    def is_disconnect(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection it came from is dead."""
        ...

    def transaction(self, conn: ConnT, *, readonly: bool = False) -> AbstractContextManager[Any]:
        """A transaction on ``conn``: BEGIN (READ ONLY), then COMMIT or ROLLBACK on exit."""
        ...

    def fetch(self, conn: ConnT, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``$n`` placeholders) with ``args`` on ``conn``; the rows as tuples."""
        ...
