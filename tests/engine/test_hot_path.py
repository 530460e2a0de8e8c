"""The hot path's shape: how often a borrow and a return wait on the loop, and what they spawn.

An acquire served by an idle connection lends it without waiting on the loop
(as ``asyncio.Queue.get()`` does) and allocates no task, yet raises at once if
the task's cancellation is due; a return with nobody waiting does not wait
either, nor any I/O when the connection needs no reset (issues 6 and 16).
These tests step the coroutines by hand and count the yields: a statement
about the code path, not about speed (speed is in benchmarks/compare.py).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import anyio
import pytest

from elasticpool import Pool
from elasticpool.testing import FakeConnector

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """Stepping a coroutine by hand is asyncio-specific (sleep(0) is a bare yield there)."""
    return "asyncio"


def step(coro: Coroutine[Any, Any, Any]) -> tuple[int, Any]:
    """Run ``coro`` by hand to the end; return how many bare yields it made, and its result.

    A bare yield is a schedule point (asyncio's ``sleep(0)``); anything else
    (a future: waiting for I/O, a task or a timer) fails the test.
    """
    for yields in range(100):
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            return yields, stop.value
        assert awaited is None, f"waited on {awaited!r}"
    coro.close()
    raise AssertionError("coroutine did not finish within 100 steps")


async def borrow_and_return(pool: Pool[Any], work: Any = None) -> tuple[int, int, int]:
    """Borrow from a warm pool and give back; the yields of each half and the tasks created."""
    tasks_before = len(asyncio.all_tasks())
    borrow = pool.acquire()
    enter_yields, conn = step(borrow.__aenter__())
    if work is not None:
        await work(conn)
    exit_yields, _ = step(borrow.__aexit__(None, None, None))
    return enter_yields, exit_yields, len(asyncio.all_tasks()) - tasks_before


async def test_fast_path_never_waits_and_spawns_nothing() -> None:
    """With an idle connection neither the acquire nor the return yields, and no task is spawned."""
    async with Pool(FakeConnector(), max_connections=2, reset="rollback") as pool:
        async with pool.acquire():
            pass  # now one connection is idle
        for _ in range(3):
            assert await borrow_and_return(pool) == (0, 0, 0)
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.resetting) == (1, 0, 0)


async def test_fast_path_inside_anyio_scopes_never_waits() -> None:
    """Inside live anyio cancel scopes (one with a deadline ahead) the fast path lends at once."""
    async with Pool(FakeConnector(), max_connections=1) as pool:
        async with pool.acquire():
            pass
        with anyio.CancelScope(), anyio.move_on_after(60):
            assert await borrow_and_return(pool) == (0, 0, 0)


async def test_fast_path_raises_a_pending_task_cancel() -> None:
    """A Task.cancel() not yet delivered is raised by the acquire, the idle connection untouched."""
    async with Pool(FakeConnector(), max_connections=1) as pool:
        async with pool.acquire():
            pass
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with pool.acquire():
                pytest.fail("acquire lent a connection to a task being cancelled")
        if sys.version_info >= (3, 11):
            task.uncancel()
        stats = pool.stats()
        assert (stats.idle, stats.in_use, stats.acquires) == (1, 0, 1)


@pytest.mark.postgres
async def test_asyncpg_rollback_return_after_a_query_does_no_io(pg_server: Any) -> None:
    """asyncpg, reset="rollback": a connection back from a plain query is idle at once, no task."""
    from elasticpool.asyncpg import AsyncpgConnector

    async def query(conn: Any) -> None:
        assert await conn.fetchval("SELECT 1") == 1

    connector = AsyncpgConnector(pg_server.dsn())
    async with Pool(connector, max_connections=1, min_connections=1, reset="rollback") as pool:
        await pool.wait(timeout=30)
        await borrow_and_return(pool, query)  # first borrow may ping: warm it
        assert await borrow_and_return(pool, query) == (0, 0, 0)
        stats = pool.stats()
        assert (stats.idle, stats.resetting) == (1, 0)


@pytest.mark.postgres
async def test_psycopg_rollback_return_after_a_query_does_no_io(pg_server: Any) -> None:
    """psycopg (autocommit), reset="rollback": a connection back from a query is idle at once."""
    from elasticpool.psycopg import PsycopgConnector

    async def query(conn: Any) -> None:
        cur = await conn.execute("SELECT 1")
        assert await cur.fetchone() == (1,)

    connector: PsycopgConnector[Any] = PsycopgConnector(
        pg_server.dsn(), kwargs={"autocommit": True}
    )
    async with Pool(connector, max_connections=1, min_connections=1, reset="rollback") as pool:
        await pool.wait(timeout=30)
        await borrow_and_return(pool, query)
        assert await borrow_and_return(pool, query) == (0, 0, 0)
        stats = pool.stats()
        assert (stats.idle, stats.resetting) == (1, 0)
