"""The pool's behaviour with the fake connector, on asyncio and on trio (virtual time)."""

from __future__ import annotations

import math

import anyio
import pytest

from elasticpool import (
    ElasticPoolError,
    Pool,
    PoolClosed,
    PoolSettings,
    PoolStats,
    PoolTimeout,
    TooManyWaiters,
)
from elasticpool.testing import FakeConnection, FakeConnector, FakeDisconnect, FakeReadOnlyError

from ..helpers import assert_consistent, wait_until

pytestmark = pytest.mark.anyio


async def test_starts_empty_and_grows_on_demand() -> None:
    """A new pool opens no connection until someone asks, then reuses the one it opened."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=5) as pool:
        assert pool.stats().size == 0
        assert connector.connects_started == 0
        for _ in range(5):
            async with pool.acquire() as conn:
                assert isinstance(conn, FakeConnection)
        assert connector.connects_ok == 1
        assert pool.stats().size == 1
        assert_consistent(pool, connector)


async def test_floor_is_filled_in_background() -> None:
    """min_connections are opened without anyone asking; wait() returns once they are."""
    connector = FakeConnector(connect_delay=0.01)
    async with Pool(connector, max_connections=5, min_connections=3) as pool:
        await pool.wait(timeout=5)
        stats = pool.stats()
        assert stats.idle == 3
        assert stats.size == 3
        assert stats.min == 3
        assert_consistent(pool, connector)


async def test_most_recently_used_is_reused() -> None:
    """Idle connections are handed out most recently used first, so the surplus ages out."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=3) as pool:
        a = await pool.acquire()
        b = await pool.acquire()
        pool.release(a)
        pool.release(b)
        for _ in range(3):
            async with pool.acquire() as conn:
                assert conn is b


async def test_never_more_in_use_than_the_limit() -> None:
    """Many tasks share at most max_connections connections, and all finish."""
    connector = FakeConnector(connect_delay=0.001)
    limit = 4
    in_use = 0
    peak = 0
    done = 0

    async def worker() -> None:
        nonlocal in_use, peak, done
        for _ in range(5):
            async with pool.acquire() as conn:
                in_use += 1
                peak = max(peak, in_use)
                await conn.execute(0.001)
                in_use -= 1
        done += 1

    async with Pool(connector, max_connections=limit) as pool:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(worker)
        assert done == 20
        assert peak <= limit
        assert pool.stats().size <= limit
        assert pool.stats().acquires == 100
        assert_consistent(pool, connector)


async def test_waiters_are_served_first_in_first_out() -> None:
    """With one connection, queued callers get it strictly in arrival order."""
    connector = FakeConnector()
    order: list[int] = []
    async with Pool(connector, max_connections=1) as pool:
        holder = await pool.acquire()

        async def waiter(i: int, queued: anyio.Event) -> None:
            queued.set()
            async with pool.acquire():
                order.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                queued = anyio.Event()
                tg.start_soon(waiter, i, queued)
                await queued.wait()
                await wait_until(lambda i=i: pool.stats().waiting == i + 1)
            pool.release(holder)
        assert order == list(range(6))


async def test_no_barging_past_queued_waiters() -> None:
    """A returned connection goes to the oldest waiter, not to a caller arriving later."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        holder = await pool.acquire()
        got: list[str] = []

        async def queued_first() -> None:
            async with pool.acquire():
                got.append("first")

        async with anyio.create_task_group() as tg:
            tg.start_soon(queued_first)
            await wait_until(lambda: pool.stats().waiting == 1)
            pool.release(holder)
            with pytest.raises(anyio.WouldBlock):
                pool.acquire_nowait()  # reserved for the waiter: nothing idle to take
            async with pool.acquire():
                got.append("late")
        assert got == ["first", "late"]


async def test_max_waiting_turns_callers_away_with_a_clear_error() -> None:
    """One caller past max_waiting gets TooManyWaiters at once, naming the pool and counts."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, max_waiting=2, name="api") as pool:
        holder = await pool.acquire()
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(_acquire_release, pool)
            await wait_until(lambda: pool.stats().waiting == 2)
            with pytest.raises(TooManyWaiters, match=r"2 already queued, max_waiting is 2.*"):
                await pool.acquire()
            pool.release(holder)
        assert_consistent(pool, connector)


async def _acquire_release(pool: Pool[FakeConnection]) -> None:
    async with pool.acquire():
        pass


async def test_pool_timeout_is_a_timeout_error_naming_the_pool() -> None:
    """A caller that cannot be served in time gets PoolTimeout (a TimeoutError) with counts."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, pool_timeout=0.05, name="api") as pool:
        holder = await pool.acquire()
        with pytest.raises(TimeoutError) as info:
            await pool.acquire()
        assert isinstance(info.value, PoolTimeout)
        assert isinstance(info.value, ElasticPoolError)
        msg = str(info.value)
        assert msg.startswith("pool 'api': no connection within 0.05s")
        assert "in use 1" in msg
        assert "limit 1" in msg
        assert info.value.__cause__ is None
        pool.release(holder)
        assert pool.stats().timeouts == 1
        assert_consistent(pool, connector)


async def test_timeout_carries_the_last_connect_error() -> None:
    """While connects fail, a timed-out caller's error has the connect error as its cause."""
    connector = FakeConnector()
    connector.fail_next(1000, OSError("fake: no route to host"))
    async with Pool(connector, max_connections=2, pool_timeout=0.3, backoff_initial=0.01) as pool:
        with pytest.raises(PoolTimeout, match="connects are failing: OSError") as info:
            await pool.acquire()
        assert isinstance(info.value.__cause__, OSError)
        assert pool.stats().connect_errors >= 2
        connector._fail.clear()  # the database comes back: the pool recovers by itself
        async with pool.acquire() as conn:
            await conn.execute()
        assert_consistent(pool, connector)


async def test_per_call_timeout_overrides_pool_timeout() -> None:
    """acquire(timeout=...) bounds that one call; a bad value is a ValueError naming it."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, pool_timeout=60) as pool:
        holder = await pool.acquire()
        with pytest.raises(PoolTimeout, match=r"within 0\.02s"):
            await pool.acquire(timeout=0.02)
        with pytest.raises(
            ValueError, match=r"timeout must be a number of seconds > 0 or None \(got -1\)"
        ):
            pool.acquire(timeout=-1)
        pool.release(holder)


async def test_connection_broken_on_return_is_evicted() -> None:
    """A connection reported closed when it comes back is closed, not reused."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2) as pool:
        async with pool.acquire() as first:
            first.drop()
        async with pool.acquire() as second:
            assert second is not first
        assert pool.stats().closed_broken == 1
        await wait_until(lambda: first not in connector.open)
        assert_consistent(pool, connector)


async def test_disconnect_error_in_use_evicts_and_checks_the_others() -> None:
    """A connection-class error inside 'async with' evicts it and makes idle ones suspect."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=3, ping_after=60) as pool:
        a = await pool.acquire()
        b = await pool.acquire()
        pool.release(b)  # b idle, recently used: normally not pinged
        pings = connector.pings

        async def use_dying_connection() -> None:
            async with pool.acquire() as conn:  # the error passes through __aexit__
                assert conn is b
                conn.kill()
                await conn.execute()

        with pytest.raises(FakeDisconnect):
            await use_dying_connection()
        await wait_until(lambda: b not in connector.open)  # closed in the background
        pool.release(a)
        async with pool.acquire() as conn:
            assert conn is a
        assert connector.pings == pings + 1, "the idle survivor was pinged before reuse"
        assert pool.stats().closed_broken == 1


async def test_dead_idle_connection_is_replaced_not_handed_out() -> None:
    """A connection that died while idle fails its ping on borrow; the caller gets a fresh one."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2, ping_after=0) as pool:
        async with pool.acquire() as first:
            pass
        first.kill()
        async with pool.acquire() as conn:
            assert conn is not first
            await conn.execute()
        assert pool.stats().closed_broken == 1
        assert_consistent(pool, connector)


async def test_dirty_connection_is_reset_before_reuse() -> None:
    """With reset="session", a connection returned dirty is reset before the next borrower."""
    connector = FakeConnector(reset_delay=0.001)
    async with Pool(connector, max_connections=1, reset="session") as pool:
        async with pool.acquire() as conn:
            conn.begin()
            conn.set_session_state()
        async with pool.acquire() as again:
            assert again is conn
            assert not again.in_transaction
            assert not again.session_dirty
        assert connector.resets == 1


async def test_rollback_mode_leaves_session_state_alone() -> None:
    """reset='rollback' only ends the transaction; a clean connection skips the reset."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, reset="rollback") as pool:
        async with pool.acquire() as conn:
            conn.set_session_state()
        assert connector.resets == 0
        async with pool.acquire() as conn:
            conn.begin()
        async with pool.acquire() as conn:
            assert not conn.in_transaction
            assert conn.session_dirty
        assert connector.resets == 1


async def test_failed_reset_discards_the_connection() -> None:
    """When a reset fails, that connection is closed and the next borrower gets another."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        async with pool.acquire() as conn:
            conn.begin()
            connector.fail_next_resets(1)
        async with pool.acquire() as other:
            assert other is not conn
        await wait_until(lambda: conn not in connector.open)
        assert pool.stats().closed_broken == 1
        assert_consistent(pool, connector)


async def test_resize_up_serves_waiters_at_once() -> None:
    """Raising the limit lets queued callers get new connections without waiting for returns."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        holder = await pool.acquire()
        served = anyio.Event()

        async def waiter() -> None:
            async with pool.acquire():
                served.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_until(lambda: pool.stats().waiting == 1)
            await pool.resize(2)
            await served.wait()
        assert pool.stats().max == 2
        pool.release(holder)


async def test_resize_down_never_revokes_and_closes_surplus() -> None:
    """Lowering the limit closes idle surplus now and busy surplus as it comes back."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=4) as pool:
        conns = [await pool.acquire() for _ in range(4)]
        pool.release(conns[0])
        pool.release(conns[1])
        await pool.resize(1)
        stats = pool.stats()
        assert stats.idle == 0
        assert stats.in_use == 2, "borrowed connections are not revoked"
        pool.release(conns[2])
        assert pool.stats().size == 1
        pool.release(conns[3])
        stats = pool.stats()
        assert stats.size == 1
        assert stats.idle == 1
        assert stats.closed_resize == 3
        with pytest.raises(ValueError, match=r"max_connections must be an integer >= 0 \(got -1\)"):
            await pool.resize(-1)
        assert_consistent(pool, connector)


async def test_acquire_nowait() -> None:
    """acquire_nowait takes an idle connection or raises WouldBlock without queueing."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        with pytest.raises(anyio.WouldBlock):
            pool.acquire_nowait()
        async with pool.acquire():
            pass
        conn = pool.acquire_nowait()
        with pytest.raises(anyio.WouldBlock):
            pool.acquire_nowait()
        pool.release(conn)
        assert pool.stats().waiting == 0


async def test_release_misuse_is_a_clear_error() -> None:
    """Releasing twice, or a connection of another pool, raises RuntimeError and harms nothing."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2, name="a") as a, Pool(connector, name="b") as b:
        conn = await a.acquire()
        with pytest.raises(RuntimeError, match="not borrowed from pool 'b'"):
            b.release(conn)
        a.release(conn)
        with pytest.raises(RuntimeError, match="released twice, or from another pool"):
            a.release(conn)
        assert a.stats().idle == 1
        assert_consistent(a, connector)


async def test_acquire_is_a_cancel_point() -> None:
    """acquire() in a cancelled scope raises even with an idle connection ready."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        async with pool.acquire():
            pass
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with pool.acquire():
                pytest.fail("acquire did not check for cancellation")
        assert scope.cancelled_caught
        with anyio.CancelScope() as outer:  # an enclosing scope counts too, and await acquire()
            outer.cancel()
            with anyio.CancelScope():
                await pool.acquire()
                pytest.fail("await acquire() did not check for cancellation")
        assert outer.cancelled_caught
        assert (pool.stats().idle, pool.stats().acquires) == (1, 1)


async def test_acquire_in_a_scope_past_its_deadline_raises() -> None:
    """A scope whose deadline has passed counts as cancelled, before the loop has noticed."""
    async with Pool(FakeConnector(), max_connections=1) as pool:
        async with pool.acquire():
            pass
        with anyio.CancelScope(deadline=anyio.current_time()) as scope:
            async with pool.acquire():
                pytest.fail("acquire lent a connection past its caller's deadline")
        assert scope.cancelled_caught
        assert pool.stats().idle == 1


async def test_acquire_shielded_from_a_cancelled_scope_lends() -> None:
    """A shield hides an enclosing cancelled scope: the acquire inside it lends as usual."""
    async with Pool(FakeConnector(), max_connections=1) as pool:
        async with pool.acquire():
            pass
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                async with pool.acquire() as conn:
                    assert conn is not None
        assert outer.cancel_called
        assert pool.stats().idle == 1


async def test_close_is_bounded_and_leaves_nothing_open() -> None:
    """close() fails waiters, closes idle ones, waits for returns, then terminates the rest."""
    connector = FakeConnector()
    pool = Pool(connector, max_connections=2, pool_timeout=None)
    await pool.open()
    held = await pool.acquire()
    returned = await pool.acquire()
    outcome: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pool.acquire()
        except PoolClosed as exc:
            outcome.append(exc)

    async def give_back_while_closing() -> None:
        await wait_until(lambda: pool._planner.closed)
        pool.release(returned)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_until(lambda: pool.stats().waiting == 1)
        tg.start_soon(give_back_while_closing)
        await pool.close(timeout=0.05)
    assert len(outcome) == 1
    assert "closed while waiting" in str(outcome[0])
    assert connector.open == set(), "every connection closed or terminated"
    assert held.closed
    assert returned.closed
    assert connector.terminates == 1, "only the connection never returned is terminated"
    assert connector.closes == 1
    pool.release(held)  # coming back after a forced close is harmless
    with pytest.raises(PoolClosed, match="pool 'default' is closed"):
        await pool.acquire()
    await pool.close()  # idempotent
    assert "closed" in repr(pool)


async def test_close_waits_for_borrowed_connections() -> None:
    """A connection returned during the graceful phase is closed normally, not terminated."""
    connector = FakeConnector()
    pool = Pool(connector, max_connections=2)
    await pool.open()
    held = await pool.acquire()

    async def give_back() -> None:
        await wait_until(lambda: pool._planner.closed)
        pool.release(held)

    async with anyio.create_task_group() as tg:
        tg.start_soon(give_back)
        await pool.close(timeout=30)
    assert connector.terminates == 0
    assert connector.closes == 1
    assert connector.open == set()


async def test_hanging_close_is_terminated() -> None:
    """A graceful close that hangs is cut off at close_timeout and the connection terminated."""
    connector = FakeConnector(hang_closes=True)
    async with Pool(connector, max_connections=1, close_timeout=0.01) as pool, pool.acquire():
        pass
    assert connector.open == set()
    assert connector.terminates == 1


async def test_unopened_pool_says_how_to_open_it() -> None:
    """Using a pool before opening it is a RuntimeError saying what to do."""
    pool = Pool(FakeConnector())
    with pytest.raises(RuntimeError, match=r"not open: use 'async with pool'"):
        await pool.acquire()


async def test_stats_and_repr() -> None:
    """stats() is a frozen snapshot; repr shows the counts."""
    connector = FakeConnector()
    async with Pool(connector, PoolSettings(max_connections=3), name="api") as pool:
        conn = await pool.acquire()
        stats = pool.stats()
        assert isinstance(stats, PoolStats)
        assert (stats.name, stats.size, stats.in_use, stats.idle, stats.max) == ("api", 1, 1, 0, 3)
        with pytest.raises(AttributeError):
            stats.size = 5  # type: ignore[misc]
        assert repr(pool) == "<Pool 'api' [in use 1, idle 0, connecting 0 | waiting 0]>"
        pool.release(conn)
        stats = pool.stats()
        assert stats.acquires == 1
        assert stats.connects == 1
        assert stats.total_usage_time >= 0
        assert math.isfinite(stats.total_wait_time)


async def test_settings_overrides_and_bad_values() -> None:
    """Keyword settings build PoolSettings; invalid ones raise before anything opens."""
    connector = FakeConnector()
    pool = Pool(connector, PoolSettings(max_connections=3), idle_timeout=5)
    assert pool.settings.max_connections == 3
    assert pool.settings.idle_timeout == 5
    with pytest.raises(ValueError, match=r"min_connections must be <= max_connections \(2\)"):
        Pool(connector, max_connections=2, min_connections=3)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Pool(connector, name="")
    assert connector.connects_started == 0


async def test_concurrent_opens_start_one_pool() -> None:
    """Two tasks opening the same pool at once share one opening; close() validates its bound."""
    connector = FakeConnector()
    pool = Pool(connector, max_connections=2, min_connections=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.open)
        tg.start_soon(pool.open)
    await pool.wait()
    assert pool.stats().size == 1
    with pytest.raises(
        ValueError, match=r"timeout must be a number of seconds >= 0 or None \(got -1\)"
    ):
        await pool.close(timeout=-1)
    await pool.close()
    assert connector.open == set()


async def test_connection_known_closed_is_never_handed_out() -> None:
    """An idle connection the driver already reports closed is evicted at checkout, unpinged."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2, ping_after=None) as pool:
        async with pool.acquire() as first:
            pass
        first.drop()  # e.g. the server terminated it and the driver saw the socket close
        async with pool.acquire() as conn:
            assert conn is not first
            assert not connector.is_closed(conn)
        assert connector.pings == 0
        assert pool.stats().closed_broken == 1
        assert_consistent(pool, connector)


async def test_transaction_commits_or_rolls_back_then_releases() -> None:
    """pool.transaction() commits a clean block, rolls back a failing one, and always releases."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        async with pool.transaction() as conn:
            assert conn.in_transaction
        assert (conn.commits, conn.rollbacks) == (1, 0)
        with pytest.raises(ZeroDivisionError):
            async with pool.transaction() as conn:
                1 / 0  # noqa: B018
        assert (conn.commits, conn.rollbacks) == (1, 1)
        assert not conn.in_transaction
        assert pool.stats().idle == 1
        assert connector.resets == 0, "nothing left to reset after COMMIT/ROLLBACK"


async def test_terminate_is_immediate_and_synchronous() -> None:
    """terminate() closes every connection at once, borrowed ones included, and fails waiters."""
    connector = FakeConnector()
    pool = Pool(connector, max_connections=1, pool_timeout=None)
    await pool.open()
    held = await pool.acquire()
    failed: list[BaseException] = []

    async def waiter() -> None:
        try:
            await pool.acquire()
        except PoolClosed as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_until(lambda: pool.stats().waiting == 1)
        pool.terminate()
    assert held.closed
    assert connector.open == set()
    assert len(failed) == 1
    pool.release(held)  # harmless after terminate
    await pool.close()  # and so is a close after it


async def test_check_evicts_dead_idle_connections() -> None:
    """check() pings every idle connection and closes the dead ones."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=3, ping_after=None) as pool:
        conns = [await pool.acquire() for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        conns[0].kill()
        conns[2].drop()
        acquires = pool.stats().acquires
        await pool.check()
        await wait_until(lambda: len(connector.open) == 1)
        assert connector.open == {conns[1]}
        stats = pool.stats()
        assert (stats.idle, stats.closed_broken, stats.acquires) == (1, 2, acquires)


async def test_resize_can_raise_the_floor() -> None:
    """resize(max, min_connections=n) opens the new floor in the background."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2) as pool:
        await pool.resize(4, min_connections=3)
        await pool.wait()
        stats = pool.stats()
        assert (stats.size, stats.min, stats.max) == (3, 3, 4)
        with pytest.raises(ValueError, match=r"min_connections must be an integer in \[0, 4\]"):
            await pool.resize(4, min_connections=5)


async def test_stats_count_waits_broken_returns_and_connect_time() -> None:
    """waits, returned_broken and total_connect_time are counted."""
    connector = FakeConnector(connect_delay=0.01)
    async with Pool(connector, max_connections=1) as pool:
        async with pool.acquire() as conn:
            conn.drop()
        async with pool.acquire():
            pass
        stats = pool.stats()
        assert stats.waits == 2  # both found nothing idle and queued for a connect
        assert stats.returned_broken == 1
        assert stats.total_connect_time >= 0.02 - 1e-9


async def test_resize_to_zero_pauses_and_raising_resumes() -> None:
    """At limit 0 callers queue and time out; raising the limit serves the queue."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2, pool_timeout=0.05) as pool:
        async with pool.acquire():
            pass
        await pool.resize(0)
        assert pool.stats().idle == 0, "idle surplus closed"
        with pytest.raises(PoolTimeout):
            await pool.acquire()
        served = anyio.Event()

        async def waiter() -> None:
            async with pool.acquire(timeout=None):
                served.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_until(lambda: pool.stats().waiting == 1)
            await pool.resize(1)
            await served.wait()


async def test_fail_fast_raises_the_connect_error_at_once() -> None:
    """With fail_fast, a caller nothing can serve gets the connect error, not a timeout."""
    connector = FakeConnector()
    connector.fail_next(1, ConnectionRefusedError("fake: refused"))
    async with Pool(connector, max_connections=2, fail_fast=True, pool_timeout=60) as pool:
        t0 = anyio.current_time()
        with pytest.raises(ConnectionRefusedError, match="fake: refused"):
            await pool.acquire()
        assert anyio.current_time() - t0 < 30, "did not wait for pool_timeout"
        async with pool.acquire() as conn:  # the next connect works
            await conn.execute()


async def test_fail_fast_keeps_waiters_a_pending_connect_covers() -> None:
    """Only waiters beyond the connects still under way fail; the oldest keeps its place."""
    connector = FakeConnector(connect_delay=0.01)
    connector.fail_next(1)
    outcome: dict[int, str] = {}
    async with Pool(connector, max_connections=2, max_connecting=2, fail_fast=True) as pool:

        async def borrower(i: int) -> None:
            try:
                async with pool.acquire():
                    outcome[i] = "ok"
            except ConnectionRefusedError:
                outcome[i] = "failed"

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrower, 1)
            await wait_until(lambda: pool.stats().waiting == 1)
            tg.start_soon(borrower, 2)
        assert outcome == {1: "ok", 2: "failed"}


async def test_without_fail_fast_waiters_ride_out_failed_connects() -> None:
    """By default a failed connect is retried and the waiter is served when one succeeds."""
    connector = FakeConnector()
    connector.fail_next(2)
    async with Pool(connector, max_connections=1, backoff_initial=0.01) as pool:
        async with pool.acquire() as conn:
            await conn.execute()
        assert pool.stats().connect_errors == 2


async def test_retire_closes_a_borrowed_connection_on_return() -> None:
    """retire() on a borrow (context manager or awaited) closes it when it comes back."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2) as pool:
        borrow = pool.acquire()
        async with borrow as first:
            borrow.retire()
        conn = await pool.acquire()
        assert conn is not first
        pool.retire(conn)
        pool.release(conn)
        await wait_until(lambda: connector.open == set())
        assert pool.stats().closed_lifetime == 2
        with pytest.raises(RuntimeError, match="is not borrowed from pool"):
            pool.retire(conn)


async def test_none_mode_still_asks_the_connector_about_reset() -> None:
    """reset='none' skips resets the connector does not ask for, but honours one it needs."""

    class Picky(FakeConnector):
        def needs_reset(self, conn: FakeConnection, mode: str) -> bool:  # type: ignore[override]
            return conn.in_transaction  # e.g. a query cancelled inside a transaction

    connector = Picky()
    async with Pool(connector, max_connections=1, reset="none") as pool:
        async with pool.acquire() as conn:
            conn.set_session_state()
        assert connector.resets == 0
        async with pool.acquire() as conn:
            conn.begin()
        async with pool.acquire() as conn:
            assert not conn.in_transaction
        assert connector.resets == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])  # trio in real time here
async def test_stats_can_be_read_from_another_thread() -> None:
    """An exporter's thread reads stats() while callers wait: counts and waiter age are sane."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, pool_timeout=5) as pool:
        async with anyio.create_task_group() as tg, pool.acquire():
            tg.start_soon(_borrow_once, pool)
            await wait_until(lambda: pool.stats().waiting == 1)
            await anyio.sleep(0.05)
            stats = await anyio.to_thread.run_sync(pool.stats)
        assert (stats.in_use, stats.waiting) == (1, 1)
        assert 0.04 <= stats.oldest_waiter_age < 5


async def _borrow_once(pool: Pool[FakeConnection]) -> None:
    async with pool.acquire():
        pass


async def test_readonly_transaction_refuses_writes_and_plain_one_allows_them() -> None:
    """pool.transaction(readonly=True) begins read-only; the default transaction does not."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        with pytest.raises(FakeReadOnlyError, match="write in a read-only transaction"):
            async with pool.transaction(readonly=True) as conn:
                await conn.write()
        async with pool.transaction() as conn:
            await conn.write()
        assert pool.stats().in_use == 0
        assert_consistent(pool, connector)


@pytest.mark.parametrize("again", ["acquire", "acquire_nowait"])
async def test_stale_release_does_not_end_the_next_borrow(again: str) -> None:
    """A task releasing again what it gave back, now lent to another task, gets RuntimeError."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, name="api") as pool:
        conn = await pool.acquire()
        pool.release(conn)
        lent, done = anyio.Event(), anyio.Event()
        got: list[FakeConnection] = []

        async def other() -> None:
            got.append(await pool.acquire() if again == "acquire" else pool.acquire_nowait())
            lent.set()
            await done.wait()
            pool.release(got[0])

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await lent.wait()
            assert got == [conn]  # most recently used: the same connection, lent again
            stale = r"^pool 'api': connection .* {} after this task gave it back, and another task"
            with pytest.raises(RuntimeError, match=stale.format("released")):
                pool.release(conn)
            with pytest.raises(RuntimeError, match=stale.format("retired")):
                pool.retire(conn)
            assert pool.stats().in_use == 1
            with pytest.raises(anyio.WouldBlock):
                pool.acquire_nowait()  # a third borrower does not get the other task's connection
            done.set()
        assert (pool.stats().in_use, pool.stats().idle, pool.stats().closed_broken) == (0, 1, 0)
        assert connector.connects_ok == 1  # not retired by the refused retire()
        assert_consistent(pool, connector)


async def test_release_from_another_task_is_a_hand_off() -> None:
    """A borrow may be given back by another task, each time the connection is lent again."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1) as pool:
        send, receive = anyio.create_memory_object_stream[FakeConnection](1)

        async def releaser() -> None:
            async with receive:
                async for conn in receive:
                    pool.release(conn)

        async with anyio.create_task_group() as tg, send:
            tg.start_soon(releaser)
            for _ in range(3):
                conn = await pool.acquire()  # waits until the releaser gave the last one back
                await send.send(conn)
        assert (pool.stats().in_use, pool.stats().acquires) == (0, 3)
        assert_consistent(pool, connector)
