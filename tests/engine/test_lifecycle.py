"""Pool lifecycle races: an open that is cancelled or fails, acquires during an open, close drain.

Engine tests on the fake connector, on asyncio and on trio in virtual time;
the tests asserting exact times run on trio only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import pytest
import trio.testing

import elasticpool._runner
from elasticpool import Pool, PoolClosed, PoolTimeout
from elasticpool.fleet import FleetStatus
from elasticpool.testing import FakeConnector

from ..helpers import assert_consistent, wait_until

pytestmark = pytest.mark.anyio


class GatedMembership:
    """A membership whose join sets the limit, opens the floor, then blocks until let through.

    ``join_error`` makes the join raise instead of blocking. Counts joins,
    leaves and runs so tests can check what the pool did with it.
    """

    def __init__(self, limit: int = 3, join_error: Exception | None = None) -> None:
        self.limit = limit
        self.join_error = join_error
        self.gate = anyio.Event()
        self.joining = anyio.Event()
        self.joins = self.leaves = self.runs = 0

    async def join(self, pool: Pool[Any]) -> None:
        self.joins += 1
        await pool.resize(self.limit)
        self.joining.set()
        if self.join_error is not None:
            raise self.join_error
        await self.gate.wait()

    async def run(self, pool: Pool[Any]) -> None:
        self.runs += 1

    async def leave(self, pool: Pool[Any]) -> None:
        self.leaves += 1

    def status(self, pool: Pool[Any]) -> FleetStatus:
        limit = pool.stats().max
        return FleetStatus(pool.name, "", "gated", limit, limit, None, "test")


def waiting_for_open(pool: Pool[Any]) -> int:
    """How many tasks wait for the pool's open in progress to finish."""
    return 0 if pool._opened is None else pool._opened.statistics().tasks_waiting


def start(tg: anyio.abc.TaskGroup, fn: Callable[[], Awaitable[object]]) -> anyio.Event:
    """Start ``fn()`` in ``tg``; the event returned is set when it has ended, however it ends."""
    done = anyio.Event()

    async def run() -> None:
        try:
            await fn()
        finally:
            done.set()

    tg.start_soon(run)
    return done


async def waits_for_open_or_ends(pool: Pool[Any], done: anyio.Event) -> None:
    """Let tasks run until the watched task waits for the pool's open in progress, or has ended."""
    await wait_until(lambda: waiting_for_open(pool) == 1 or done.is_set())


def trio_virtual_time() -> pytest.MarkDecorator:
    """Run the test on trio only, in virtual time (exact times can be asserted)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return pytest.mark.parametrize(
        "anyio_backend", [pytest.param(("trio", {"clock": clock}), id="trio")]
    )


async def test_cancelled_open_is_undone_and_can_be_retried() -> None:
    """An open cancelled during its join leaves a new pool, nothing open, and a retry works."""
    connector = FakeConnector()
    membership = GatedMembership()
    pool = Pool(connector, membership=membership, name="fleet", min_connections=2)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.open)
            await membership.joining.wait()
            await wait_until(lambda: pool.stats().idle == 2)  # the floor opened meanwhile
            scope.cancel()
    assert repr(pool).startswith("<Pool 'fleet' new ")
    assert pool._runner.tg is None
    assert pool._runner.stopped
    assert (membership.leaves, membership.runs) == (1, 0)
    assert connector.open == set()
    assert pool.stats().max == 0
    with pytest.raises(RuntimeError, match=r"pool 'fleet' is not open"):
        await pool.acquire()

    membership.gate.set()
    await pool.open()
    async with pool.acquire() as conn:
        assert not conn.closed
    assert membership.joins == 2
    await pool.close()
    assert connector.open == set()
    assert membership.leaves == 2


async def test_open_whose_join_fails_is_undone_and_can_be_retried() -> None:
    """A join that raises makes open() raise it and leaves a new pool that can be opened again."""
    connector = FakeConnector()
    membership = GatedMembership(join_error=ConnectionError("coordination down"))
    pool = Pool(connector, membership=membership, name="fleet", min_connections=1)
    with pytest.raises(ConnectionError, match="coordination down"):
        await pool.open()
    assert repr(pool).startswith("<Pool 'fleet' new ")
    assert membership.leaves == 1
    membership.join_error = None
    membership.gate.set()
    async with pool, pool.acquire():
        assert_consistent(pool, connector)
    assert connector.open == set()


async def test_opener_waiting_on_an_undone_open_opens_the_pool_itself() -> None:
    """A second open() waiting for a first one that is cancelled goes on to open the pool."""
    membership = GatedMembership()
    pool = Pool(FakeConnector(), membership=membership)
    first = anyio.CancelScope()

    async def open_first() -> None:
        with first:
            await pool.open()

    async with anyio.create_task_group() as tg:
        tg.start_soon(open_first)
        await membership.joining.wait()
        await waits_for_open_or_ends(pool, start(tg, pool.open))
        first.cancel()
        membership.gate.set()
    assert membership.joins == 2
    assert membership.leaves == 1
    async with pool, pool.acquire():
        assert "opening" not in repr(pool)
    assert membership.leaves == 2


async def test_acquire_while_the_runner_starts_waits_for_the_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An acquire racing open() before its background runner has started waits, then borrows."""
    let_run = anyio.Event()
    spawn = elasticpool._runner.spawn

    def gated_spawn(coro: Coroutine[Any, Any, Any], what: str) -> None:
        async def gated() -> None:
            await let_run.wait()
            await coro

        spawn(gated(), what)

    monkeypatch.setattr(elasticpool._runner, "spawn", gated_spawn)
    connector = FakeConnector()
    pool = Pool(connector, max_connections=1)
    got: list[object] = []

    async def borrow() -> None:
        async with pool.acquire() as conn:
            got.append(conn)

    async with anyio.create_task_group() as tg:
        try:
            tg.start_soon(pool.open)
            await wait_until(lambda: "opening" in repr(pool))
            await waits_for_open_or_ends(pool, start(tg, borrow))
        finally:
            let_run.set()
    assert got == connector.connections
    await pool.close()


async def test_acquire_during_join_waits_for_the_open() -> None:
    """An acquire while the membership's first heartbeat runs waits for it, then borrows."""
    connector = FakeConnector()
    membership = GatedMembership()
    pool = Pool(connector, membership=membership)
    got: list[object] = []

    async def borrow() -> None:
        async with pool.acquire() as conn:
            got.append(conn)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.open)
        await membership.joining.wait()
        await waits_for_open_or_ends(pool, start(tg, borrow))
        assert got == []  # no borrowing before the fleet has had its say
        membership.gate.set()
    assert got == connector.connections
    await pool.close()


@trio_virtual_time()
async def test_acquire_times_out_when_the_open_outlasts_its_timeout() -> None:
    """An acquire waiting for an open that outlasts its timeout gets PoolTimeout, on time."""
    membership = GatedMembership()
    pool = Pool(FakeConnector(), membership=membership, name="fleet")
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.open)
        await membership.joining.wait()
        start = anyio.current_time()
        with pytest.raises(
            PoolTimeout, match=r"pool 'fleet': no connection within 5s \(the pool is still opening"
        ):
            await pool.acquire(timeout=5)
        assert anyio.current_time() == start + 5
        membership.gate.set()
    await pool.close()


@trio_virtual_time()
async def test_acquire_after_a_slow_open_has_what_is_left_of_its_timeout() -> None:
    """An acquire that waited 3 s for the open then queues for the rest of its 5 s, not 5 s more."""
    membership = GatedMembership(limit=0)
    pool = Pool(FakeConnector(), membership=membership)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.open)
        await membership.joining.wait()
        start = anyio.current_time()

        async def open_later() -> None:
            await anyio.sleep(3)
            membership.gate.set()

        tg.start_soon(open_later)
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=5)  # the limit stays 0: nothing can serve it
        assert anyio.current_time() == start + 5
    await pool.close()


async def test_acquire_waiting_for_a_cancelled_open_gets_a_clear_error() -> None:
    """An acquire waiting for an open that is cancelled gets a RuntimeError saying so, at once."""
    membership = GatedMembership()
    pool = Pool(FakeConnector(), membership=membership, name="fleet")
    opening = anyio.CancelScope()
    errors: list[BaseException] = []

    async def open_pool() -> None:
        with opening:
            await pool.open()

    async def borrow() -> None:
        try:
            await pool.acquire(timeout=None)
        except RuntimeError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(open_pool)
        await membership.joining.wait()
        await waits_for_open_or_ends(pool, start(tg, borrow))
        opening.cancel()
    assert len(errors) == 1
    assert str(errors[0]) == (
        "pool 'fleet' did not open: its open() was cancelled or failed "
        "while this acquire waited for it"
    )


async def test_close_during_open_waits_for_it_then_closes() -> None:
    """close() while the open's join runs lets the open finish, then closes the opened pool."""
    connector = FakeConnector()
    membership = GatedMembership()
    pool = Pool(connector, membership=membership, min_connections=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.open)
        await membership.joining.wait()
        await waits_for_open_or_ends(pool, start(tg, pool.close))
        membership.gate.set()
    assert "closed" in repr(pool)
    assert membership.leaves == 1
    assert connector.open == set()


async def test_terminate_during_open_makes_open_raise_pool_closed() -> None:
    """terminate() while the open's join runs ends the open with PoolClosed, nothing left open."""
    connector = FakeConnector()
    membership = GatedMembership()
    pool = Pool(connector, membership=membership, name="fleet", min_connections=1)
    errors: list[str] = []

    async def open_pool() -> None:
        try:
            await pool.open()
        except PoolClosed as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(open_pool)
        await membership.joining.wait()
        pool.terminate()
        membership.gate.set()
    assert errors == ["pool 'fleet' was terminated while opening"]
    assert "closed" in repr(pool)
    assert connector.open == set()


@trio_virtual_time()
@pytest.mark.parametrize("timeout", [None, 60.0])
async def test_close_returns_when_a_connect_in_flight_fails(timeout: float | None) -> None:
    """close() returns the moment a connect that was in flight when it started fails."""
    connector = FakeConnector(connect_delay=5)
    connector.fail_next(1)
    pool = Pool(connector, max_connections=2, min_connections=1)
    await pool.open()
    assert pool.stats().connecting == 1
    start = anyio.current_time()
    with anyio.fail_after(3600):  # virtual time: only there to end a hang
        await pool.close(timeout=timeout)
    assert anyio.current_time() == start + 5
    assert connector.connects_failed == 1
    assert connector.open == set()


@trio_virtual_time()
async def test_close_returns_when_a_hanging_connect_times_out() -> None:
    """close() returns at connect_timeout when a connect in flight hangs (a blackholed server)."""
    connector = FakeConnector()
    connector.hang_next(1)
    pool = Pool(connector, max_connections=2, min_connections=1, connect_timeout=7)
    await pool.open()
    start = anyio.current_time()
    await pool.close(timeout=60)
    assert anyio.current_time() == start + 7
    assert connector.open == set()
