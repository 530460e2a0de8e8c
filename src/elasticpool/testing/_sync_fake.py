"""The fake sync connector: :class:`SyncFakeConnector` and its :class:`SyncFakeConnection`.

Re-exported from :mod:`elasticpool.testing`, which documents them.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from .._connector import ResetMode
from ._fake import FakeDisconnect, FakeReadOnlyError

__all__ = ["SyncFakeConnection", "SyncFakeConnector"]


class SyncFakeConnection:
    """A pretend connection for threads. Its flags are public so tests can set and read them."""

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

    def __init__(self, connector: SyncFakeConnector, conn_id: int) -> None:
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

    def execute(self, work: float = 0.0) -> None:
        """Pretend to run a query taking ``work`` seconds; raise if the connection is dead."""
        if self.closed or self.dead:
            raise FakeDisconnect(f"fake connection {self.id} is dead")
        self.uses += 1
        if work > 0:
            time.sleep(work)
        if self.dead:
            raise FakeDisconnect(f"fake connection {self.id} died mid-query")

    def begin(self, *, readonly: bool = False) -> None:
        """Pretend ``BEGIN`` (``READ ONLY``): the connection is now in a transaction."""
        self.in_transaction = True
        self.read_only = readonly

    def write(self) -> None:
        """Pretend an ``INSERT``: raise :class:`FakeReadOnlyError` in a read-only transaction."""
        self.execute()
        if self.read_only:
            raise FakeReadOnlyError(f"fake connection {self.id}: write in a read-only transaction")

    def set_session_state(self) -> None:
        """Pretend ``SET ...``: the session now differs from a fresh one."""
        self.session_dirty = True

    def kill(self) -> None:
        """The server side goes away unnoticed: pings, queries and resets now fail."""
        self.dead = True

    def drop(self) -> None:
        """The connection dies and the driver knows: ``is_closed()`` now says yes."""
        self.dead = True
        self.dropped = True

    def __repr__(self) -> str:
        state = "closed" if self.closed else "dead" if self.dead else "open"
        return f"<SyncFakeConnection {self.id} {state}>"


class SyncFakeConnector:
    """A scriptable :class:`~elasticpool.SyncConnector` of :class:`SyncFakeConnection` objects.

    The sync twin of :class:`FakeConnector`, safe to use from many threads:
    ``connect_delay`` (seconds, or a callable returning seconds),
    ``close_delay``, ``reset_delay`` and ``ping_delay`` are real sleeps;
    :meth:`fail_next`, :meth:`hang_next` (until :meth:`release_hangs`, or the
    connect's own timeout), :meth:`fail_next_resets`, :meth:`kill_all` script
    what comes next. A ping slower than its timeout raises
    :class:`TimeoutError`, as the protocol asks. :meth:`fetch` answers from
    :attr:`rows` (by statement; ``[]`` when absent) and records each call in
    :attr:`statements`.

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
    ) -> None:
        self.connect_delay = connect_delay
        self.close_delay = close_delay
        self.reset_delay = reset_delay
        self.ping_delay = ping_delay
        self.connections: list[SyncFakeConnection] = []
        self.open: set[SyncFakeConnection] = set()
        self.connects_started = 0
        self.connects_ok = 0
        self.connects_failed = 0
        self.closes = 0
        self.terminates = 0
        self.pings = 0
        self.resets = 0
        self.rows: dict[str, Sequence[tuple[Any, ...]]] = {}
        self.statements: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._fail: list[BaseException] = []
        self._hang = 0
        self._hang_release = threading.Event()
        self._fail_resets = 0

    # scripts -----------------------------------------------------------------

    def fail_next(self, n: int = 1, error: BaseException | None = None) -> None:
        """Make the next ``n`` connects raise ``error`` (default: ``ConnectionRefusedError``)."""
        with self._lock:
            for _ in range(n):
                self._fail.append(error or ConnectionRefusedError("fake: connection refused"))

    def hang_next(self, n: int = 1) -> None:
        """Make the next ``n`` connects hang until :meth:`release_hangs` (or their timeout)."""
        with self._lock:
            self._hang += n

    def release_hangs(self) -> None:
        """Let every hanging connect go on (each then succeeds)."""
        with self._lock:
            self._hang_release.set()
            self._hang_release = threading.Event()

    def fail_next_resets(self, n: int = 1) -> None:
        """The next ``n`` resets raise."""
        with self._lock:
            self._fail_resets += n

    def kill_all(self) -> None:
        """Every open connection dies unnoticed (as after a server restart)."""
        with self._lock:
            for conn in self.open:
                conn.kill()

    # SyncConnector -----------------------------------------------------------

    def connect(self, timeout: float) -> SyncFakeConnection:
        with self._lock:
            self.connects_started += 1
            hang = self._hang > 0
            if hang:
                self._hang -= 1
                release = self._hang_release
        delay = self.connect_delay() if callable(self.connect_delay) else self.connect_delay
        if hang and not release.wait(timeout):
            with self._lock:
                self.connects_failed += 1
            raise TimeoutError(f"fake: connect hung past its {timeout:g}s")
        if delay > 0:
            time.sleep(delay)
        with self._lock:
            if self._fail:
                self.connects_failed += 1
                raise self._fail.pop(0)
            conn = SyncFakeConnection(self, next(self._ids))
            self.connections.append(conn)
            self.open.add(conn)
            self.connects_ok += 1
        return conn

    def close(self, conn: SyncFakeConnection) -> None:
        if self.close_delay > 0:
            time.sleep(self.close_delay)
        with self._lock:
            self.closes += 1
            conn.closed = True
            self.open.discard(conn)

    def terminate(self, conn: SyncFakeConnection) -> None:
        with self._lock:
            self.terminates += 1
            conn.closed = True
            self.open.discard(conn)

    def is_closed(self, conn: SyncFakeConnection) -> bool:
        return conn.closed or conn.dropped

    def ping(self, conn: SyncFakeConnection, timeout: float) -> None:
        with self._lock:
            self.pings += 1
        if self.ping_delay > 0:
            time.sleep(min(self.ping_delay, timeout))
            if self.ping_delay > timeout:
                raise TimeoutError(f"fake: no answer to the ping within {timeout:g}s")
        if conn.closed or conn.dead:
            raise FakeDisconnect(f"fake connection {conn.id} is dead")

    def needs_reset(self, conn: SyncFakeConnection, mode: ResetMode) -> bool:
        if mode == "none":
            return False
        if mode == "rollback":
            return conn.in_transaction
        return conn.in_transaction or conn.session_dirty

    def reset(self, conn: SyncFakeConnection, mode: ResetMode) -> None:
        with self._lock:
            self.resets += 1
            fail = self._fail_resets > 0
            if fail:
                self._fail_resets -= 1
        if self.reset_delay > 0:
            time.sleep(self.reset_delay)
        if fail:
            raise FakeDisconnect(f"fake: reset of connection {conn.id} failed")
        if conn.closed or conn.dead:
            raise FakeDisconnect(f"fake connection {conn.id} is dead")
        conn.in_transaction = conn.read_only = False
        if mode == "session":
            conn.session_dirty = False

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, FakeDisconnect)

    def transaction(
        self, conn: SyncFakeConnection, *, readonly: bool = False
    ) -> AbstractContextManager[None]:
        return _fake_transaction(conn, readonly)

    def fetch(self, conn: SyncFakeConnection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn.execute()
        with self._lock:
            self.statements.append((sql, args))
        return list(self.rows.get(sql, ()))


@contextlib.contextmanager
def _fake_transaction(conn: SyncFakeConnection, readonly: bool) -> Iterator[None]:
    """BEGIN; COMMIT on a clean exit (counted in ``conn.commits``), ROLLBACK otherwise."""
    conn.execute()
    conn.begin(readonly=readonly)
    try:
        yield
    except BaseException:
        conn.in_transaction = conn.read_only = False
        conn.rollbacks += 1
        raise
    conn.execute()
    conn.in_transaction = conn.read_only = False
    conn.commits += 1
