"""Smoke tests of a real :class:`~elasticpool.Pool` against a real PostgreSQL server.

The pool is driven through :class:`elasticpool.asyncpg.AsyncpgConnector`
and what it does is checked on the server side, in ``pg_stat_activity``,
through a separate observer connection. Each pool gets an ``application_name``
of its own so its backends can be told from everything else on the server.

Idle timeouts and lifetimes run in real time here, so those tests poll (a short
sleep in a loop under an overall ``fail_after``) rather than sleep blindly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from elasticpool import Pool

asyncpg = pytest.importorskip("asyncpg")

from elasticpool.asyncpg import AsyncpgConnector  # noqa: E402

from ..helpers import eventually, unique_name  # noqa: E402

AsyncpgConnection = asyncpg.Connection

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

BOUND = 10.0
"""Overall bound, in seconds, on any one wait in these tests."""


class Backends:
    """Looks at ``pg_stat_activity`` through a connection of its own, which it never counts."""

    def __init__(self, conn: AsyncpgConnection) -> None:
        self.conn = conn

    async def pids(self, app_name: str) -> set[int]:
        """The PIDs of the backends whose ``application_name`` is ``app_name``, right now."""
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app_name
        )
        return {row["pid"] for row in rows}

    async def wait_for(
        self, app_name: str, predicate: Callable[[set[int]], bool], what: str
    ) -> set[int]:
        """Poll until ``predicate(pids)`` holds, within :data:`BOUND` seconds; return the PIDs."""
        pids: set[int] = await eventually(lambda: self.pids(app_name), predicate, what, bound=BOUND)
        return pids

    async def wait_gone(self, app_name: str) -> None:
        """Poll until no backend has ``app_name`` (a backend exits after its client closes)."""
        await self.wait_for(app_name, lambda pids: not pids, f"{app_name!r} left backends behind")


@pytest.fixture
async def backends(pg_server: Any) -> AsyncIterator[Backends]:
    """An observer on its own plain asyncpg connection, not from any pool."""
    conn = await asyncpg.connect(pg_server.dsn(application_name=unique_name("observer")))
    try:
        yield Backends(conn)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def holding(pool: Pool[AsyncpgConnection], n: int) -> AsyncIterator[set[int]]:
    """``n`` tasks each borrow a connection, all at once, and keep it while the block runs.

    Yields the backend PIDs of the ``n`` connections once every task holds
    one; the connections are given back when the block ends.
    """
    pids: set[int] = set()
    arrived = 0
    all_in = anyio.Event()
    let_go = anyio.Event()

    async def hold() -> None:
        nonlocal arrived
        async with pool.acquire() as conn:
            pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
            arrived += 1
            if arrived == n:
                all_in.set()
            await let_go.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(hold)
        with anyio.fail_after(BOUND):
            await all_in.wait()
        try:
            yield set(pids)
        finally:
            let_go.set()


async def test_grows_to_one_backend_per_concurrent_borrower(
    pg_server: Any, backends: Backends
) -> None:
    """N borrowers holding connections at once make the pool open exactly N server backends."""
    n = 5
    app = unique_name("grow")
    connector = AsyncpgConnector(pg_server.dsn(application_name=app))
    async with Pool(connector, max_connections=n + 3, name=app) as pool:
        assert pool.stats().size == 0
        async with holding(pool, n) as pids:
            assert len(pids) == n
            stats = pool.stats()
            assert (stats.size, stats.in_use, stats.connecting, stats.waiting) == (n, n, 0, 0)
            assert await backends.pids(app) == pids
        stats = pool.stats()
        assert (stats.size, stats.connects, stats.connect_errors) == (n, n, 0)
        assert await backends.pids(app) == pids
    await backends.wait_gone(app)


async def test_idle_connections_close_after_idle_timeout(
    pg_server: Any, backends: Backends
) -> None:
    """Connections left idle past idle_timeout are closed until neither pool nor server has any."""
    n = 3
    idle_timeout = 0.3
    app = unique_name("idle")
    connector = AsyncpgConnector(pg_server.dsn(application_name=app))
    async with Pool(
        connector,
        max_connections=n,
        idle_timeout=idle_timeout,
        connection_lifetime=None,
        name=app,
    ) as pool:
        async with holding(pool, n) as pids:
            assert await backends.pids(app) == pids
            released_at = anyio.current_time()
        assert pool.stats().size == n  # given back, not closed yet
        await eventually(pool.stats, lambda s: s.size == 0 and s.closing == 0, "never shrank to 0")
        assert anyio.current_time() - released_at >= idle_timeout - 0.01
        stats = pool.stats()
        assert (stats.closed_idle, stats.closed_lifetime, stats.closed_broken) == (n, 0, 0)
        await backends.wait_gone(app)  # while the pool is still open
    await backends.wait_gone(app)


async def test_lifetime_retires_and_replaces_backend(pg_server: Any, backends: Backends) -> None:
    """A connection past its lifetime is closed on the server and a new backend replaces it."""
    app = unique_name("lifetime")
    connector = AsyncpgConnector(pg_server.dsn(application_name=app))
    async with Pool(
        connector,
        max_connections=2,
        min_connections=1,
        connection_lifetime=0.5,
        lifetime_jitter=0,
        idle_timeout=None,
        name=app,
    ) as pool:
        await pool.wait(timeout=BOUND)
        async with pool.acquire() as conn:
            first = await conn.fetchval("SELECT pg_backend_pid()")
        assert first in await backends.pids(app)
        await backends.wait_for(
            app, lambda pids: bool(pids) and first not in pids, f"backend {first} never replaced"
        )
        await eventually(
            pool.stats, lambda s: s.closed_lifetime >= 1, "nothing retired at lifetime"
        )
        async with pool.acquire() as conn:
            second = await conn.fetchval("SELECT pg_backend_pid()")
            assert second != first
            live = await backends.pids(app)
            assert second in live
            assert first not in live
        stats = pool.stats()
        assert stats.connects >= 2
        assert (stats.closed_idle, stats.closed_broken, stats.connect_errors) == (0, 0, 0)
    await backends.wait_gone(app)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_readonly_transaction_on_a_real_server(pg_server: Any, driver: str) -> None:
    """pool.transaction(readonly=True) makes PostgreSQL refuse a write, on both drivers."""
    if driver == "asyncpg":
        connector: Any = AsyncpgConnector(pg_server.dsn())
    else:
        from elasticpool.psycopg import PsycopgConnector

        connector = PsycopgConnector(pg_server.dsn())
    sql = "CREATE TEMP TABLE ro_probe (x int)"
    async with Pool(connector, max_connections=1) as pool:
        with pytest.raises(Exception, match="read-only transaction") as info:
            async with pool.transaction(readonly=True) as conn:
                await conn.execute(sql)
        assert getattr(info.value, "sqlstate", None) == "25006"  # read_only_sql_transaction
        async with pool.transaction() as conn:
            await conn.execute(sql)
        assert pool.stats().in_use == 0
