"""The fake connector: :class:`FakeConnector` and its :class:`FakeConnection`.

Re-exported from :mod:`elasticpool.testing`, which documents them.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio

from .._connector import ResetMode
from .._sql import check_placeholders

__all__ = ["FakeConnection", "FakeConnector", "FakeDisconnect", "FakeReadOnlyError"]


class FakeDisconnect(ConnectionError):
    """Raised by a dead :class:`FakeConnection`; ``FakeConnector.is_disconnect`` says yes to it."""


class FakeReadOnlyError(Exception):
    """Raised by :meth:`FakeConnection.write` inside a read-only transaction (SQLSTATE 25006)."""


class FakeConnection:
    """A pretend connection. Its flags are public so tests can set and read them."""

    __slots__ = (
        "closed",
        "commits",
        "connector",
        "dead",
        "dropped",
        "id",
        "in_transaction",
        "read_only",
        "rollbacks",
        "session_dirty",
        "uses",
    )

    def __init__(self, connector: FakeConnector, conn_id: int) -> None:
        self.connector = connector
        self.id = conn_id
        self.closed = False
        self.dead = False
        self.dropped = False
        self.in_transaction = False
        self.read_only = False
        self.session_dirty = False
        self.uses = 0
        self.commits = 0
        self.rollbacks = 0

    async def execute(self, work: float = 0.0) -> None:
        """Pretend to run a query taking ``work`` seconds; raise if the connection is dead."""
        if self.closed or self.dead:
            raise FakeDisconnect(f"fake connection {self.id} is dead")
        self.uses += 1
        if work > 0:
            await anyio.sleep(work)
        else:
            await anyio.lowlevel.checkpoint()
        if self.dead:
            raise FakeDisconnect(f"fake connection {self.id} died mid-query")

    def begin(self, *, readonly: bool = False) -> None:
        """Pretend ``BEGIN`` (``READ ONLY``): the connection is now in a transaction."""
        self.in_transaction = True
        self.read_only = readonly

    async def write(self) -> None:
        """Pretend an ``INSERT``: raise :class:`FakeReadOnlyError` in a read-only transaction."""
        await self.execute()
        if self.read_only:
            raise FakeReadOnlyError(f"fake connection {self.id}: write in a read-only transaction")

    def set_session_state(self) -> None:
        """Pretend ``SET ...``: the session now differs from a fresh one."""
        self.session_dirty = True

    def kill(self) -> None:
        """The server side goes away unnoticed: pings, queries and resets now fail.

        ``is_closed()`` still says no, as a driver does until it next touches
        the socket.
        """
        self.dead = True

    def drop(self) -> None:
        """The connection dies and the driver knows: ``is_closed()`` now says yes.

        Call it while the connection is borrowed to have it come back broken.
        """
        self.dead = True
        self.dropped = True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "dead" if self.dead else "open"
        return f"<FakeConnection {self.id} {state}>"


class FakeConnector:
    """A scriptable :class:`~elasticpool.Connector` of :class:`FakeConnection` objects.

    ``connect_delay`` (seconds, or a callable returning seconds) is how long each
    connect takes; ``close_delay`` and ``reset_delay`` likewise. Scripts for the
    next operations: :meth:`fail_next`, :meth:`hang_next` (until
    :meth:`release_hangs`), :meth:`fail_next_resets`; per connection,
    :meth:`FakeConnection.kill` and :meth:`FakeConnection.drop`.
    ``hang_closes`` makes every graceful close hang (the pool must terminate).

    ``rows(sql, args)`` is what :meth:`fetch` returns for a statement: an
    iterable of tuples (default: no rows). :meth:`fetch` checks the
    placeholders as every connector does, runs as one use of the connection
    (raising :class:`FakeDisconnect` if it is dead) and records each statement
    in :attr:`statements`, so code built on ``Connector.fetch`` can be tested
    without a server.

    Counters (``connects_started``, ``connects_ok``, ``connects_failed``,
    ``closes``, ``terminates``, ``pings``, ``resets``) and :attr:`open` (the
    connections neither closed nor terminated) let tests check that nothing
    leaked.
    """

    def __init__(
        self,
        connect_delay: float | Callable[[], float] = 0.0,
        *,
        close_delay: float = 0.0,
        reset_delay: float = 0.0,
        ping_delay: float = 0.0,
        hang_closes: bool = False,
        rows: Callable[[str, tuple[Any, ...]], Iterable[tuple[Any, ...]]] | None = None,
    ) -> None:
        self.connect_delay = connect_delay
        self.close_delay = close_delay
        self.reset_delay = reset_delay
        self.ping_delay = ping_delay
        self.hang_closes = hang_closes
        self.rows = rows
        self.statements: list[tuple[str, tuple[Any, ...]]] = []
        """Every statement :meth:`fetch` ran, with its arguments, oldest first."""
        self.connections: list[FakeConnection] = []
        self.open: set[FakeConnection] = set()
        self.connects_started = 0
        self.connects_ok = 0
        self.connects_failed = 0
        self.closes = 0
        self.terminates = 0
        self.pings = 0
        self.resets = 0
        self._ids = itertools.count(1)
        self._fail: list[BaseException] = []
        self._hang = 0
        self._hang_release = anyio.Event()
        self._fail_resets = 0

    # scripts -----------------------------------------------------------------

    def fail_next(self, n: int = 1, error: BaseException | None = None) -> None:
        """Make the next ``n`` connects raise ``error`` (default: ``ConnectionRefusedError``)."""
        for _ in range(n):
            self._fail.append(error or ConnectionRefusedError("fake: connection refused"))

    def hang_next(self, n: int = 1) -> None:
        """Make the next ``n`` connects hang until :meth:`release_hangs` (or cancellation)."""
        self._hang += n

    def release_hangs(self) -> None:
        """Let every hanging connect go on (each then succeeds)."""
        self._hang_release.set()
        self._hang_release = anyio.Event()

    def fail_next_resets(self, n: int = 1) -> None:
        """The next ``n`` resets raise."""
        self._fail_resets += n

    def kill_all(self) -> None:
        """Every open connection dies unnoticed (as after a server restart)."""
        for conn in self.open:
            conn.kill()

    # Connector ---------------------------------------------------------------

    async def connect(self) -> FakeConnection:
        self.connects_started += 1
        delay = self.connect_delay() if callable(self.connect_delay) else self.connect_delay
        try:
            if self._hang > 0:
                self._hang -= 1
                await self._hang_release.wait()
            if delay > 0:
                await anyio.sleep(delay)
            else:
                await anyio.lowlevel.checkpoint()
        except BaseException:
            self.connects_failed += 1
            raise
        if self._fail:
            self.connects_failed += 1
            raise self._fail.pop(0)
        conn = FakeConnection(self, next(self._ids))
        self.connections.append(conn)
        self.open.add(conn)
        self.connects_ok += 1
        return conn

    async def close(self, conn: FakeConnection) -> None:
        if self.hang_closes:
            await anyio.sleep_forever()
        if self.close_delay > 0:
            await anyio.sleep(self.close_delay)
        self.closes += 1
        conn.closed = True
        self.open.discard(conn)

    def terminate(self, conn: FakeConnection) -> None:
        self.terminates += 1
        conn.closed = True
        self.open.discard(conn)

    def is_closed(self, conn: FakeConnection) -> bool:
        return conn.closed or conn.dropped

    async def ping(self, conn: FakeConnection) -> None:
        self.pings += 1
        if self.ping_delay > 0:
            await anyio.sleep(self.ping_delay)
        else:
            await anyio.lowlevel.checkpoint()
        if conn.closed or conn.dead:
            raise FakeDisconnect(f"fake connection {conn.id} is dead")

    def needs_reset(self, conn: FakeConnection, mode: ResetMode) -> bool:
        if mode == "none":
            return False
        if mode == "rollback":
            return conn.in_transaction
        return conn.in_transaction or conn.session_dirty

    async def reset(self, conn: FakeConnection, mode: ResetMode) -> None:
        self.resets += 1
        if self.reset_delay > 0:
            await anyio.sleep(self.reset_delay)
        else:
            await anyio.lowlevel.checkpoint()
        if self._fail_resets > 0:
            self._fail_resets -= 1
            raise FakeDisconnect(f"fake: reset of connection {conn.id} failed")
        if conn.closed or conn.dead:
            raise FakeDisconnect(f"fake connection {conn.id} is dead")
        conn.in_transaction = conn.read_only = False
        if mode == "session":
            conn.session_dirty = False

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, FakeDisconnect)

    def transaction(
        self, conn: FakeConnection, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[None]:
        return _fake_transaction(conn, readonly)

    async def fetch(self, conn: FakeConnection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Pretend to run ``sql``: one use of ``conn``; the rows ``rows(sql, args)`` gives."""
        check_placeholders(sql, len(args))
        await conn.execute()
        self.statements.append((sql, args))
        return [] if self.rows is None else [tuple(r) for r in self.rows(sql, args)]


@asynccontextmanager
async def _fake_transaction(conn: FakeConnection, readonly: bool) -> AsyncIterator[None]:
    """BEGIN; COMMIT on a clean exit (counted in ``conn.commits``), ROLLBACK otherwise."""
    await conn.execute()
    conn.begin(readonly=readonly)
    try:
        yield
    except BaseException:
        conn.in_transaction = conn.read_only = False
        conn.rollbacks += 1
        raise
    await conn.execute()
    conn.in_transaction = conn.read_only = False
    conn.commits += 1
