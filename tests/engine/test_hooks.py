"""The pool's hooks for adapters and integrations: live readings, timing sinks, borrow control.

The drop-in faces, wrap(), RoutingPool and the metrics exporters use only
these (never the pool's or the planner's private state); each test pins one
hook's contract with the fake connector.
"""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
import trio.testing

from elasticpool import Pool
from elasticpool.testing import FakeConnector

from ..helpers import assert_consistent, wait_until

pytestmark = pytest.mark.anyio


class Sink:
    """A timing sink that records what it is told."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.uses: list[float] = []
        self.creates: list[float] = []

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def use(self, seconds: float) -> None:
        self.uses.append(seconds)

    def create(self, seconds: float) -> None:
        self.creates.append(seconds)


async def test_live_readings_match_the_snapshot() -> None:
    """connector, limit, in_use and waiting read what stats() would, without a snapshot."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool, anyio.create_task_group() as tg:
        assert pool.connector is connector
        assert (pool.limit, pool.in_use, pool.waiting) == (1, 0, 0)

        async def borrow_and_return() -> None:
            async with pool.acquire():
                pass

        async with pool.acquire():
            tg.start_soon(borrow_and_return)  # queues: the one connection is borrowed
            await wait_until(lambda: pool.waiting == 1)
            stats = pool.stats()
            assert (pool.limit, pool.in_use, pool.waiting) == (stats.max, stats.in_use, 1)
            assert pool.in_use == 1
        await pool.resize(3)
        assert pool.limit == 3 == pool.stats().max
    assert_consistent(pool, connector)


async def test_connect_errors_are_read_live() -> None:
    """connect_errors counts failed connects; last_connect_error is the latest one's error."""
    connector = FakeConnector()
    error = ConnectionRefusedError("refused for the test")
    async with Pool(connector, max_connections=1, backoff_initial=0.01, backoff_max=0.01) as pool:
        assert (pool.connect_errors, pool.last_connect_error) == (0, None)
        connector.fail_next(1, error)
        async with pool.acquire():  # the retry after the backoff serves it
            pass
        assert pool.connect_errors == 1 == pool.stats().connect_errors
        assert pool.last_connect_error is error


async def test_clock_is_the_event_loop_clock(anyio_backend: object) -> None:
    """Once open, clock is the running loop's own clock (what the pool reads its time from)."""
    async with Pool(FakeConnector()) as pool:
        if anyio_backend == "asyncio":
            loop = asyncio.get_running_loop()
            # asyncio's own loop reads time.monotonic(): the pool calls that directly
            assert pool.clock in (loop.time, time.monotonic)
            before = loop.time()
            assert before <= pool.clock() <= loop.time()
        else:
            assert pool.clock is trio.current_time


async def test_observe_reports_each_borrow_and_unobserve_stops() -> None:
    """An observed pool reports each borrow's wait and use and each connect; detached, nothing."""
    async with Pool(FakeConnector(), max_connections=1) as pool:
        sink = Sink()
        pool.observe(sink)
        pool.observe(sink)  # twice: still one report per event
        async with pool.acquire():
            pass
        assert (len(sink.creates), len(sink.waits), len(sink.uses)) == (1, 1, 1)
        pool.unobserve(sink)
        async with pool.acquire():
            pass
        assert (len(sink.creates), len(sink.waits), len(sink.uses)) == (1, 1, 1)


async def test_check_release_refuses_exactly_what_release_refuses() -> None:
    """check_release raises release's RuntimeError, in the caller's words, and changes nothing."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        conn = await pool.acquire()
        pool.check_release(conn)  # borrowed with await: it may go back
        pool.check_release(conn, what="returned")
        assert pool.in_use == 1
        pool.release(conn)
        with pytest.raises(RuntimeError, match=r"released twice, or from another pool"):
            pool.check_release(conn, what="returned")
        async with pool.acquire() as held:
            with pytest.raises(RuntimeError, match=r"is not borrowed from pool 'default'"):
                pool.check_release(held)  # borrowed with async with: it goes back itself
    assert_consistent(pool, connector)


async def test_borrow_end_gives_back_at_once_and_only_once() -> None:
    """Borrow.end() returns the connection without awaiting; ending it again does nothing."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, reset="none") as pool:
        borrow = pool.acquire()
        end_before_entry = pool.acquire()
        end_before_entry.end()  # never entered: nothing to give back
        await borrow.__aenter__()
        assert pool.in_use == 1
        borrow.end()
        assert (pool.in_use, pool.stats().idle) == (0, 1)
        borrow.end()
        await borrow.__aexit__(None, None, None)  # after end(): a no-op too
        assert (pool.in_use, pool.stats().idle) == (0, 1)
    assert_consistent(pool, connector)


async def test_borrow_is_stale_for_the_task_that_gave_the_previous_borrow_back() -> None:
    """After note_return and another task's borrow of the same connection, is_stale() says so."""
    async with Pool(FakeConnector(), max_connections=1, reset="none") as pool:
        first = pool.acquire()
        conn = await first.__aenter__()
        assert not first.is_stale()  # its own borrow, still held
        first.note_return()
        first.end()
        second = pool.acquire()
        taken = anyio.Event()
        done = anyio.Event()

        async def other_task() -> None:
            assert await second.__aenter__() is conn  # the same connection, borrowed again
            taken.set()
            await done.wait()
            second.end()

        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
            await taken.wait()
            assert second.is_stale(), "this task gave that connection back before"
            done.set()
        assert not second.is_stale()  # ended: it holds nothing
