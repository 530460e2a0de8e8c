"""Background resets run in reused worker tasks: same concurrency, timeouts and close as before.

A release that needs a reset queues the connection and wakes a parked worker
(or starts one when none is parked) instead of spawning a task per reset. What
must not change: resets run concurrently, each is cut at ``close_timeout``, the
pool's ``resetting`` count is exact, and close() neither hangs on parked
workers nor leaks connections whose reset was in flight.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import pytest
import sniffio
import trio
import trio.testing

from elasticpool import Pool
from elasticpool.testing import FakeConnection, FakeConnector

from ..helpers import assert_consistent, wait_until

pytestmark = pytest.mark.anyio


def current_task() -> object:
    """The running task object itself (kept alive by the caller, so never confused with another)."""
    if sniffio.current_async_library() == "trio":
        return trio.lowlevel.current_task()
    return asyncio.current_task()


class ResetRecorder(FakeConnector):
    """A fake whose resets write down the task they ran in and when they ended."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.reset_tasks: list[object] = []
        self.reset_ends: list[float] = []

    async def reset(self, conn: FakeConnection, mode: Any) -> None:
        self.reset_tasks.append(current_task())
        await super().reset(conn, mode)
        self.reset_ends.append(anyio.current_time())


async def dirty_borrow(pool: Pool[Any]) -> FakeConnection:
    """Borrow a connection and leave session state on it (so its release resets it)."""
    conn: FakeConnection = await pool.acquire()
    conn.set_session_state()
    return conn


async def test_resets_of_one_connection_reuse_one_worker_task() -> None:
    """Five resets in a row run in one task, not one new task each."""
    rec = ResetRecorder()
    async with Pool(rec, max_connections=1, reset="session") as pool:
        for _ in range(5):
            async with pool.acquire() as conn:  # waits for the previous reset
                conn.set_session_state()
        await wait_until(lambda: len(rec.reset_ends) == 5)
        assert len(rec.reset_tasks) == 5
        assert len({id(t) for t in rec.reset_tasks}) == 1
        assert_consistent(pool, rec)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_release_needing_a_reset_spawns_no_task_once_a_worker_is_parked() -> None:
    """After the first reset, a release that needs one wakes the parked worker: no new task."""
    rec = ResetRecorder()
    async with Pool(rec, max_connections=1, reset="session") as pool:
        async with pool.acquire() as conn:
            conn.set_session_state()
        await wait_until(lambda: pool.stats().idle == 1)  # the worker is parked again
        for _ in range(3):
            conn = await dirty_borrow(pool)
            tasks = len(asyncio.all_tasks())
            pool.release(conn)
            assert pool.stats().resetting == 1
            assert len(asyncio.all_tasks()) == tasks
            await wait_until(lambda: pool.stats().idle == 1)


async def test_close_with_resets_in_flight_and_parked_workers() -> None:
    """close() finishes resets in flight, stops parked workers and leaks no connection."""
    rec = ResetRecorder()
    pool = Pool(rec, max_connections=3, reset="session")
    async with pool:
        conns = [await dirty_borrow(pool) for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        await wait_until(lambda: pool.stats().idle == 3)  # three workers parked
        rec.reset_delay = 0.05
        conns = [await dirty_borrow(pool) for _ in range(2)]
        for conn in conns:
            pool.release(conn)
        assert pool.stats().resetting == 2
    stats = pool.stats()
    assert (stats.size, stats.resetting, stats.closed_broken) == (0, 0, 0)
    assert rec.open == set()
    assert rec.resets == 5
    if sniffio.current_async_library() == "asyncio":
        assert all(t.done() for t in rec.reset_tasks if isinstance(t, asyncio.Task))


class TestVirtualTime:
    """Exact times, on trio's MockClock."""

    @pytest.fixture
    def anyio_backend(self) -> object:
        """Trio only, in virtual time."""
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})

    async def test_resets_run_concurrently(self) -> None:
        """Four connections released together are all reset one reset_delay later, twice."""
        rec = ResetRecorder(reset_delay=1.0)
        async with Pool(rec, max_connections=4, reset="session") as pool:
            for ended in (4, 8):

                def done(n: int = ended) -> bool:
                    return len(rec.reset_ends) == n

                conns = [await dirty_borrow(pool) for _ in range(4)]
                released = anyio.current_time()
                for conn in conns:
                    pool.release(conn)
                assert pool.stats().resetting == 4
                await anyio.sleep(1.0)
                await wait_until(done)  # at this same instant
                assert rec.reset_ends[-4:] == [released + 1.0] * 4
                assert anyio.current_time() == released + 1.0
                assert pool.stats().idle == 4
            assert len({id(t) for t in rec.reset_tasks}) == 4  # the second round reused them
            assert_consistent(pool, rec)

    async def test_reset_is_cut_at_close_timeout_and_later_resets_still_run(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A reset past close_timeout fails exactly then; the connection goes, later resets run."""
        rec = ResetRecorder(reset_delay=10.0)
        async with Pool(rec, max_connections=1, reset="session", close_timeout=2.0) as pool:
            conn = await dirty_borrow(pool)
            released = anyio.current_time()
            with caplog.at_level(logging.WARNING, logger="elasticpool"):
                pool.release(conn)
                async with pool.acquire() as fresh:  # waits for the cut reset, then connects
                    assert anyio.current_time() == released + 2.0
                    assert fresh is not conn
                    fresh.set_session_state()
                    rec.reset_delay = 0.5
            assert conn.closed
            assert "reset timed out after 2s (close_timeout)" in caplog.text
            async with pool.acquire() as again:
                assert again is fresh
                assert anyio.current_time() == released + 2.5
            stats = pool.stats()
            assert (stats.closed_broken, stats.resetting) == (1, 0)
            assert rec.reset_ends == [released + 2.5]


class LateDecider(FakeConnector):
    """A fake with ``reset_nowait``: it can tell a reset needs no I/O only after one loop pass."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.asked: list[bool | None] = []
        self.ready = False  # true from the second question on

    def reset_nowait(self, conn: FakeConnection, mode: Any) -> bool | None:
        answer: bool | None = True if self.ready else None
        self.asked.append(answer)
        self.ready = True  # by the second question, the loop has run once more
        if answer:
            conn.session_dirty = False
        return answer


async def test_a_reset_that_needs_no_io_skips_the_connectors_reset() -> None:
    """reset_nowait: None, a loop pass, then True; the async reset and its deadline never run."""
    connector = LateDecider()
    async with Pool(connector, max_connections=1, reset="session") as pool:
        conn = await dirty_borrow(pool)
        pool.release(conn)
        async with pool.acquire() as again:
            assert again is conn
            assert not again.session_dirty
        assert connector.asked[:2] == [None, True]
        assert connector.resets == 0
        assert_consistent(pool, connector)
