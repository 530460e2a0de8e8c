"""Cancellation at every await point: nothing is lost and the cancellation propagates."""

from __future__ import annotations

import anyio
import pytest

from elasticpool import Pool
from elasticpool.testing import FakeConnection, FakeConnector

from ..helpers import assert_consistent, settle, wait_until

pytestmark = pytest.mark.anyio


async def test_cancel_while_queued_leaves_the_queue() -> None:
    """A waiter cancelled in the queue is gone from it; the cancellation reaches the caller."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        holder = await pool.acquire()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_acquire_forever, pool)
                await wait_until(lambda: pool.stats().waiting == 1)
                scope.cancel()
        assert scope.cancelled_caught
        assert pool.stats().waiting == 0
        pool.release(holder)
        assert pool.stats().idle == 1
        assert_consistent(pool, connector)


async def _acquire_forever(pool: Pool[FakeConnection]) -> None:
    async with pool.acquire():
        await anyio.sleep_forever()


async def test_cancel_delivered_after_hand_off_passes_the_slot_on() -> None:
    """The race window: a waiter is cancelled, then handed a slot before the cancellation lands.

    The slot must go to the next waiter, and the cancelled one must see its
    cancellation, not a connection.
    """
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        holder = await pool.acquire()
        got_it: list[str] = []
        b_scope = anyio.CancelScope()

        async def b() -> None:
            with b_scope:
                async with pool.acquire():
                    got_it.append("b")

        async def c() -> None:
            async with pool.acquire():
                got_it.append("c")

        async with anyio.create_task_group() as tg:
            tg.start_soon(b)
            await wait_until(lambda: pool.stats().waiting == 1)
            tg.start_soon(c)
            await wait_until(lambda: pool.stats().waiting == 2)
            # One synchronous step: cancel b, then hand it the slot before b runs.
            b_scope.cancel()
            pool.release(holder)
        assert b_scope.cancelled_caught
        assert got_it == ["c"]
        assert pool.stats().idle == 1
        assert_consistent(pool, connector)


async def test_cancel_after_the_waiter_woke_is_delivered_at_its_next_checkpoint() -> None:
    """Handed a slot first and cancelled after, the waiter keeps the slot (trio semantics).

    The cancellation then lands at its next checkpoint and the slot comes
    back on exit: nothing lost either way.
    """
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        holder = await pool.acquire()
        got_it: list[str] = []
        scope = anyio.CancelScope()

        async def waiter() -> None:
            with scope:
                async with pool.acquire():
                    got_it.append("b")
                    await anyio.lowlevel.checkpoint()
                    got_it.append("not reached")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_until(lambda: pool.stats().waiting == 1)
            pool.release(holder)
            scope.cancel()
        assert scope.cancelled_caught
        assert got_it in (["b"], []), got_it  # asyncio may deliver it before the claim
        assert pool.stats().idle == 1
        assert_consistent(pool, connector)


async def test_cancelled_handed_waiter_with_nobody_behind_returns_slot_to_idle() -> None:
    """With no other waiter, a cancelled waiter's reserved slot goes back to the idle set."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        holder = await pool.acquire()
        scope = anyio.CancelScope()
        got_it: list[str] = []

        async def waiter() -> None:
            with scope:
                async with pool.acquire():
                    got_it.append("b")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_until(lambda: pool.stats().waiting == 1)
            scope.cancel()
            pool.release(holder)
        assert scope.cancelled_caught
        assert got_it == []
        assert pool.stats().idle == 1
        assert_consistent(pool, connector)


async def test_cancel_during_ping_evicts_the_connection() -> None:
    """Cancelled mid-ping, the connection's state is unknown: it is evicted, not reused."""
    connector = FakeConnector(ping_delay=1.0)
    async with Pool(connector, max_connections=1, ping_after=0) as pool:
        async with pool.acquire() as first:
            pass
        with anyio.move_on_after(0.01) as scope:
            async with pool.acquire():
                pytest.fail("ping should not have finished")
        assert scope.cancelled_caught
        await wait_until(lambda: first not in connector.open)
        assert pool.stats().closed_broken == 1
        assert_consistent(pool, connector)


async def test_cancel_while_the_connect_is_in_flight_keeps_the_new_connection() -> None:
    """A caller that gives up while its connect is under way does not waste the connection."""
    connector = FakeConnector(connect_delay=0.05)
    async with Pool(connector, max_connections=1) as pool:
        with anyio.move_on_after(0.01) as scope:
            await pool.acquire()
        assert scope.cancelled_caught
        await settle(pool)
        assert pool.stats().idle == 1
        assert connector.connects_ok == 1
        assert_consistent(pool, connector)


async def test_close_cancels_hanging_connects_without_leaks() -> None:
    """Closing a pool whose connects hang cancels them and leaves no connection behind."""
    connector = FakeConnector()
    connector.hang_next(2)
    pool = Pool(connector, max_connections=2, min_connections=2)
    await pool.open()
    await wait_until(lambda: connector.connects_started == 2)
    await pool.close(timeout=1)
    assert connector.connects_failed == 2
    assert connector.open == set()


async def test_close_while_resetting_leaves_no_leak() -> None:
    """A connection being reset when the pool closes is closed too."""
    connector = FakeConnector(reset_delay=0.05)
    pool = Pool(connector, max_connections=1)
    await pool.open()
    async with pool.acquire() as conn:
        conn.begin()
    assert pool.stats().resetting == 1
    await pool.close(timeout=1)
    assert connector.open == set()


async def test_cancelling_close_still_terminates_everything() -> None:
    """close() cancelled during its graceful wait still terminates what is left, then re-raises."""
    connector = FakeConnector()
    pool = Pool(connector, max_connections=2)
    await pool.open()
    held = await pool.acquire()
    with anyio.move_on_after(0.01) as scope:
        await pool.close(timeout=None)
    assert scope.cancelled_caught
    assert held.closed
    assert connector.open == set()
    assert "closed" in repr(pool)


async def test_release_is_synchronous_and_needs_no_checkpoint() -> None:
    """Leaving 'async with pool.acquire()' in a cancelled scope still returns the connection."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        with anyio.CancelScope() as scope:
            async with pool.acquire():
                scope.cancel()
                await anyio.lowlevel.checkpoint()
        assert scope.cancelled_caught
        assert pool.stats().idle == 1
        assert_consistent(pool, connector)
