"""What core code may do with a driver's connection that no connector of its own opened.

The SQLAlchemy integration holds the connections a SQLAlchemy dialect opened
(``asyncpg.Connection``, ``psycopg.AsyncConnection``, ``psycopg.Connection``):
it never made them through a :class:`~elasticpool.Connector`, yet it must
close them from any thread, check them without a round trip, give them up in
a forked child and run the fleet's statements on them. It asks the adapters
for the operations that fit a connection (see :mod:`elasticpool._adapters`:
``<adapter>._ops.async_ops_for(conn)`` and ``sync_ops_for(conn)``), and the
adapters answer with their own connectors' code, so that no driver is known
outside them.

These are operations on one kind of connection, not connectors: they open
nothing and keep nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol

__all__ = ["AsyncDriverOps", "DriverOps", "ServerSettingsHook", "SyncDriverOps"]


class DriverOps(Protocol):
    """The operations on one kind of driver connection that need no event loop.

    * :meth:`terminate` closes at once, without waiting on the network, and
      may be called from any thread, also while another thread is blocked on
      the connection: that call then returns with an error (the socket is shut
      down) instead of having its structures freed under it.
    * :meth:`dead_check` returns a cheap local check of ``conn`` (no round
      trip), made once per connection: called with ``deep=False`` it reads the
      driver's own flags only; with ``deep=True`` it may also take a
      non-blocking look at an idle socket (a backend terminated while the
      connection sat idle is then noticed).
    * :meth:`abandon`, in a process forked from the one that opened ``conn``,
      makes ``conn`` unusable here without any I/O on the parent's session.
    """

    def terminate(self, conn: Any) -> None:
        """Close ``conn`` at once, without waiting on the network (from any thread)."""
        ...

    def dead_check(self, conn: Any) -> Callable[[bool], bool]:
        """A cheap local check of ``conn``: ``check(deep)`` says whether it is dead."""
        ...

    def abandon(self, conn: Any) -> None:
        """In a forked child: make ``conn`` unusable here, leaving the parent's session alone."""
        ...


class AsyncDriverOps(DriverOps, Protocol):
    """:class:`DriverOps` of an async driver's connection, with its statements.

    :meth:`transaction` and :meth:`fetch` have the meaning of
    :class:`~elasticpool.Connector`'s methods of those names.
    """

    def transaction(self, conn: Any, *, readonly: bool = False) -> AbstractAsyncContextManager[Any]:
        """A transaction on ``conn``: BEGIN (READ ONLY), then COMMIT or ROLLBACK on exit."""
        ...

    async def fetch(self, conn: Any, sql: str, /, *args: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``$n`` placeholders) with ``args`` on ``conn``; the rows as tuples."""
        ...


class SyncDriverOps(DriverOps, Protocol):
    """:class:`DriverOps` of a blocking driver's connection, with its statements.

    :meth:`transaction` and :meth:`fetch` have the meaning of
    ``SyncConnector``'s methods of those names.
    """

    def transaction(self, conn: Any, *, readonly: bool = False) -> AbstractContextManager[Any]:
        """A transaction on ``conn``: BEGIN (READ ONLY), then COMMIT or ROLLBACK on exit."""
        ...

    def fetch(self, conn: Any, sql: str, /, *args: Any) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``$n`` placeholders) with ``args`` on ``conn``; the rows as tuples."""
        ...


ServerSettingsHook = Callable[[dict[str, Any], Mapping[str, str]], None]
"""``hook(connect_kwargs, settings)``: put server ``settings`` into a driver's connect keywords.

What an adapter answers to ``server_settings_hook(driver_name)`` (a SQLAlchemy
dialect's ``driver``): asyncpg takes them as ``server_settings``, libpq drivers
as ``application_name`` and ``-c name=value`` in ``options``.
"""
