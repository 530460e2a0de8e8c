"""The threaded pool (:class:`~elasticpool.SyncPool`) with the fake sync connector, real threads.

Waits for the pool's background threads poll its statistics with a bound
(:func:`until`): there is no event for "the ticker closed an idle connection".
Threads in a test are joined with a bound, so a hang fails the test instead
of blocking the run.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from elasticpool import (
    PoolClosed,
    PoolSettings,
    PoolStats,
    PoolTimeout,
    StaticMembership,
    SyncPool,
    TooManyWaiters,
)
from elasticpool._state import SlotState
from elasticpool.testing import (
    FakeConnector,
    FakeDisconnect,
    SyncFakeConnection,
    SyncFakeConnector,
)

BOUND = 10.0
"""Seconds any one wait in these tests may take before it counts as a hang."""


def until(predicate: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    """Poll ``predicate`` until it holds (for the pool's background work), within ``bound``."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {bound:g}s)")
        time.sleep(0.001)


def assert_consistent(pool: SyncPool[Any], connector: SyncFakeConnector) -> None:
    """The planner's invariants hold and the fake's open connections are exactly the pool's."""
    with pool._lock:
        planner = pool._planner
        planner.check()
        held = {
            slot.conn
            for slot in planner.remaining()
            if slot.conn is not None and slot.state is not SlotState.CONNECTING
        }
    assert connector.open == held, f"leaked {connector.open - held}, lost {held - connector.open}"
    stats = pool.stats()
    assert stats.size == stats.idle + stats.in_use + stats.connecting + stats.resetting


def start(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(BOUND)
        assert not thread.is_alive(), "a thread hung"


@pytest.fixture
def connector() -> SyncFakeConnector:
    return SyncFakeConnector()


# ----------------------------------------------------------------------------- basics


def test_starts_empty_and_grows_on_demand(connector: SyncFakeConnector) -> None:
    """A new pool opens no connection until someone asks, then reuses the one it opened."""
    with SyncPool(connector, max_connections=5) as pool:
        assert pool.stats().size == 0
        for _ in range(5):
            with pool.connection() as conn:
                assert isinstance(conn, SyncFakeConnection)
                conn.execute()
        assert connector.connects_ok == 1
        assert pool.stats().size == 1
        assert_consistent(pool, connector)
    assert connector.open == set()


def test_floor_is_filled_in_background_and_wait_returns_once_it_is(
    connector: SyncFakeConnector,
) -> None:
    """min_connections open without anyone asking; wait() returns once they have."""
    connector.connect_delay = 0.01
    with SyncPool(connector, max_connections=5, min_connections=3) as pool:
        pool.wait(timeout=BOUND)
        stats = pool.stats()
        assert (stats.idle, stats.size, stats.min) == (3, 3, 3)
        assert_consistent(pool, connector)


def test_wait_times_out_naming_the_floor_and_the_connect_error(
    connector: SyncFakeConnector,
) -> None:
    """wait() that cannot fill the floor raises PoolTimeout with the last connect error."""
    connector.fail_next(1000)
    with SyncPool(
        connector, max_connections=2, min_connections=2, backoff_initial=0.01, backoff_max=0.05
    ) as pool:
        with pytest.raises(PoolTimeout, match=r"floor of 2 not reached within 0\.2s") as info:
            pool.wait(timeout=0.2)
        assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_most_recently_used_is_reused(connector: SyncFakeConnector) -> None:
    """Idle connections are handed out most recently used first, so the surplus ages out."""
    with SyncPool(connector, max_connections=3) as pool:
        a = pool.acquire()
        b = pool.acquire()
        pool.release(a)
        pool.release(b)
        for _ in range(3):
            with pool.connection() as conn:
                assert conn is b


def test_waiting_threads_are_served_first_in_first_out(connector: SyncFakeConnector) -> None:
    """With one connection, threads that queued get it in the order they queued."""
    order: list[int] = []
    with SyncPool(connector, max_connections=1) as pool:
        held = pool.acquire()

        def waiter(n: int) -> None:
            with pool.connection():
                order.append(n)

        threads = []
        for n in range(5):
            threads.append(start(lambda n=n: waiter(n)))  # type: ignore[misc]
            until(lambda n=n: pool.stats().waiting == n + 1, "waiter never queued")  # type: ignore[misc]
        pool.release(held)
        join(*threads)
    assert order == [0, 1, 2, 3, 4]


def test_returned_connection_goes_to_the_waiter_not_a_newcomer(
    connector: SyncFakeConnector,
) -> None:
    """A connection given back while a thread waits is handed to it at once (no barging)."""
    with SyncPool(connector, max_connections=1) as pool:
        held = pool.acquire()
        got: list[Any] = []
        proceed = threading.Event()

        def waiter() -> None:
            with pool.connection() as conn:
                got.append(conn)
                proceed.wait(BOUND)

        thread = start(waiter)
        until(lambda: pool.stats().waiting == 1, "waiter never queued")
        pool.release(held)
        # Handed over at release time: a newcomer finds nothing idle, whether or not
        # the waiting thread has run yet.
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.05)
        proceed.set()
        join(thread)
        assert got == [held]


def test_pool_timeout_is_a_timeout_error_naming_the_pool(connector: SyncFakeConnector) -> None:
    """A caller that waits past pool_timeout gets PoolTimeout with the pool's name and counts."""
    with SyncPool(connector, max_connections=1, pool_timeout=0.05, name="tiny") as pool:
        with pool.connection():
            with pytest.raises(TimeoutError) as info:
                pool.acquire()
            assert isinstance(info.value, PoolTimeout)
            message = str(info.value)
            assert message.startswith("pool 'tiny': no connection within 0.05s (size 1 (in use 1")
            assert "this thread already holds 1 connection from this pool" in message
        stats = pool.stats()
        assert (stats.timeouts, stats.waiting) == (1, 0)


def test_per_call_timeout_overrides_pool_timeout(connector: SyncFakeConnector) -> None:
    """acquire(timeout=) and connection(timeout=) bound this call only."""
    with SyncPool(connector, max_connections=1, pool_timeout=BOUND) as pool:
        held = pool.acquire()
        with pytest.raises(PoolTimeout, match=r"within 0\.02s"), pool.connection(timeout=0.02):
            pass
        with pytest.raises(PoolTimeout, match=r"within 0\.02s"):
            pool.acquire(timeout=0.02)
        pool.release(held)


def test_max_waiting_turns_callers_away_with_a_clear_error(connector: SyncFakeConnector) -> None:
    """Past max_waiting queued callers, one more gets TooManyWaiters at once."""
    with SyncPool(connector, max_connections=1, max_waiting=1) as pool:
        held = pool.acquire()
        waiter = start(lambda: pool.release(pool.acquire()))
        until(lambda: pool.stats().waiting == 1, "waiter never queued")
        with pytest.raises(TooManyWaiters, match=r"1 already queued, max_waiting is 1"):
            pool.acquire()
        pool.release(held)
        join(waiter)


def test_timeout_carries_the_last_connect_error(connector: SyncFakeConnector) -> None:
    """When connects fail, the caller's PoolTimeout says so and chains the connect error."""
    connector.fail_next(1000)
    with SyncPool(connector, max_connections=1, backoff_initial=0.01, backoff_max=0.02) as pool:
        with pytest.raises(PoolTimeout, match="connects are failing: ConnectionRefusedError") as e:
            pool.acquire(timeout=0.2)
        assert isinstance(e.value.__cause__, ConnectionRefusedError)


def test_fail_fast_raises_the_connect_error_at_once(connector: SyncFakeConnector) -> None:
    """With fail_fast, a waiter no connection can serve gets the connect error itself."""
    connector.fail_next(1, ConnectionRefusedError("nobody home"))
    with SyncPool(connector, max_connections=1, fail_fast=True) as pool:
        with pytest.raises(ConnectionRefusedError, match="nobody home"):
            pool.acquire(timeout=BOUND)
        with pool.connection() as conn:  # the next one connects
            conn.execute()


# ----------------------------------------------------------------------------- lifetime


def test_idle_connections_above_the_floor_are_closed_after_idle_timeout(
    connector: SyncFakeConnector,
) -> None:
    """The ticker closes connections idle longer than idle_timeout, down to the floor."""
    with SyncPool(connector, max_connections=3, min_connections=1, idle_timeout=0.1) as pool:
        conns = [pool.acquire() for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        assert pool.stats().idle == 3
        until(lambda: pool.stats().size == 1, "idle connections never closed")
        assert pool.stats().closed_idle == 2
        assert_consistent(pool, connector)


def test_connection_past_its_lifetime_is_closed_not_reused(connector: SyncFakeConnector) -> None:
    """A connection reaching connection_lifetime is closed at return and replaced on demand."""
    with SyncPool(
        connector, max_connections=2, connection_lifetime=0.05, idle_timeout=None
    ) as pool:
        with pool.connection() as first:
            time.sleep(0.06)  # let it outlive its lifetime while borrowed
        with pool.connection() as second:
            assert second is not first
        until(lambda: first.closed, "expired connection never closed")
        assert pool.stats().closed_lifetime >= 1


def test_retire_closes_a_borrowed_connection_on_return(connector: SyncFakeConnector) -> None:
    """retire() (on the pool or the borrow) closes the connection when it comes back."""
    with SyncPool(connector, max_connections=2) as pool:
        conn = pool.acquire()
        pool.retire(conn)
        pool.release(conn)
        borrow = pool.connection()
        with borrow as other:
            assert other is not conn
            borrow.retire()
        until(lambda: conn.closed and other.closed, "retired connections never closed")


# ----------------------------------------------------------------------------- health


def test_connection_broken_on_return_is_evicted(connector: SyncFakeConnector) -> None:
    """A connection the driver knows is dead when it comes back is closed, not reused."""
    with SyncPool(connector, max_connections=2) as pool:
        with pool.connection() as conn:
            conn.drop()
        with pool.connection() as fresh:
            assert fresh is not conn
        stats = pool.stats()
        assert (stats.closed_broken, stats.returned_broken) == (1, 1)


def test_disconnect_error_in_use_evicts_the_connection(connector: SyncFakeConnector) -> None:
    """A connection-class error raised in the block evicts the connection it came from."""
    with SyncPool(connector, max_connections=2) as pool:
        used: list[SyncFakeConnection] = []

        def use_a_dying_connection() -> None:
            with pool.connection() as conn:
                used.append(conn)
                conn.kill()  # unnoticed by the driver: only the error tells
                conn.execute()

        with pytest.raises(FakeDisconnect):
            use_a_dying_connection()
        with pool.connection() as fresh:
            assert fresh is not used[0]
        assert pool.stats().closed_broken == 1


def test_dead_idle_connection_is_pinged_and_replaced(connector: SyncFakeConnector) -> None:
    """With ping_after=0 a connection that died while idle is pinged, evicted and replaced."""
    with SyncPool(connector, max_connections=2, ping_after=0) as pool:
        with pool.connection() as conn:
            pass
        conn.kill()
        with pool.connection() as fresh:
            assert fresh is not conn
            fresh.execute()
        assert connector.pings >= 2


def test_slow_ping_is_bounded_by_the_callers_deadline(connector: SyncFakeConnector) -> None:
    """A ping that gets no answer within the caller's time left fails, and the caller times out."""
    with SyncPool(connector, max_connections=1, ping_after=0) as pool:
        with pool.connection():
            pass
        connector.ping_delay = BOUND
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.2)
        assert time.monotonic() - started < BOUND / 2
        connector.ping_delay = 0.0


def test_check_evicts_dead_idle_connections(connector: SyncFakeConnector) -> None:
    """check() pings every idle connection and closes those that fail."""
    with SyncPool(connector, max_connections=3) as pool:
        conns = [pool.acquire() for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        conns[0].kill()
        pool.check()
        assert pool.stats().idle == 2
        until(lambda: conns[0].closed, "dead connection never closed")


def test_dirty_session_is_reset_in_the_background_before_reuse(
    connector: SyncFakeConnector,
) -> None:
    """reset="session": a dirtied session is cleaned before the next borrower sees it."""
    with SyncPool(connector, max_connections=1, reset="session") as pool:
        with pool.connection() as conn:
            conn.set_session_state()
        with pool.connection() as again:
            assert again is conn
            assert not again.session_dirty
        assert connector.resets == 1


def test_rollback_mode_leaves_session_state_alone(connector: SyncFakeConnector) -> None:
    """reset="rollback" rolls back an open transaction and nothing else."""
    with SyncPool(connector, max_connections=1, reset="rollback") as pool:
        with pool.connection() as conn:
            conn.set_session_state()
        assert connector.resets == 0
        with pool.connection() as conn:
            conn.begin()
        with pool.connection() as again:
            assert not again.in_transaction
            assert again.session_dirty
        assert connector.resets == 1


def test_failed_reset_discards_the_connection(connector: SyncFakeConnector) -> None:
    """A connection whose reset fails is closed, and the next borrower gets a fresh one."""
    connector.fail_next_resets(1)
    with SyncPool(connector, max_connections=1) as pool:
        with pool.connection() as conn:
            conn.begin()
        with pool.connection() as fresh:
            assert fresh is not conn
        until(lambda: conn.closed, "connection never closed")


def test_transaction_commits_or_rolls_back_then_releases(connector: SyncFakeConnector) -> None:
    """pool.transaction() commits a clean block, rolls back a failed one, gives the conn back."""
    with SyncPool(connector, max_connections=1) as pool:
        with pool.transaction() as conn:
            assert conn.in_transaction
        assert conn.commits == 1

        def fail() -> None:
            with pool.transaction(readonly=True) as borrowed:
                assert borrowed.read_only
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            fail()
        assert conn.rollbacks == 1
        assert pool.stats().in_use == 0


# ----------------------------------------------------------------------------- limits


def test_resize_up_serves_waiters_at_once(connector: SyncFakeConnector) -> None:
    """Raising the limit opens connections for waiting threads right away."""
    with SyncPool(connector, max_connections=1) as pool:
        held = pool.acquire()
        got: list[Any] = []
        waiter = start(lambda: got.append(pool.acquire()))
        until(lambda: pool.stats().waiting == 1, "waiter never queued")
        pool.resize(2)
        join(waiter)
        assert len(got) == 1
        assert got[0] is not held
        pool.release(got[0])
        pool.release(held)
        assert pool.stats().max == 2


def test_resize_down_never_revokes_and_closes_surplus_as_it_returns(
    connector: SyncFakeConnector,
) -> None:
    """Lowering the limit closes idle surplus now, borrowed surplus as it comes back."""
    with SyncPool(connector, max_connections=3) as pool:
        a, b, c = (pool.acquire() for _ in range(3))
        pool.release(c)
        pool.resize(1)
        until(lambda: c.closed, "idle surplus never closed")
        assert not a.closed  # borrowed: not revoked
        assert not b.closed
        pool.release(a)
        until(lambda: a.closed, "returned surplus never closed")
        pool.release(b)
        assert pool.stats().size == 1
        assert_consistent(pool, connector)


def test_resize_to_zero_pauses_and_raising_resumes(connector: SyncFakeConnector) -> None:
    """max_connections=0 makes callers wait; raising it again serves them."""
    with SyncPool(connector, max_connections=2) as pool:
        pool.resize(0)
        got: list[Any] = []
        waiter = start(lambda: got.append(pool.acquire(timeout=BOUND)))
        until(lambda: pool.stats().waiting == 1, "waiter never queued")
        assert connector.connects_started == 0
        pool.resize(1)
        join(waiter)
        pool.release(got[0])


def test_percentage_total_is_resolved_on_the_pools_first_connection(
    connector: SyncFakeConnector,
) -> None:
    """total_max_connections="50%" asks the server once, then the connection is the pool's."""
    from elasticpool.fleet._sql import SERVER_LIMITS_SQL

    connector.rows[SERVER_LIMITS_SQL] = [(103, 3)]
    with SyncPool(connector, total_max_connections="50%") as pool:
        assert pool.settings.total_max_connections == 50
        assert pool.stats().max == 50
        assert pool.stats().idle == 1
        with pool.connection() as conn:
            assert conn is connector.connections[0]


def test_static_membership_sets_the_share(connector: SyncFakeConnector) -> None:
    """A StaticMembership runs on the pool's fleet loop: the limit is its share of the total."""
    with SyncPool(
        connector, membership=StaticMembership(4, index=1), total_max_connections=10
    ) as pool:
        assert pool.stats().max == 3
        status = pool.fleet()
        assert (status.membership, status.share, status.fleet_total) == ("static", 3, 10)
        with pool.connection() as conn:
            conn.execute()


# ----------------------------------------------------------------------------- lifecycle


def test_close_is_bounded_terminates_the_rest_and_fails_waiters(
    connector: SyncFakeConnector,
) -> None:
    """close(timeout) fails waiting callers at once and terminates what is not back in time."""
    pool = SyncPool(connector, max_connections=1)
    pool.open()
    held = pool.acquire()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire(timeout=BOUND)
        except BaseException as exc:
            errors.append(exc)

    thread = start(waiter)
    until(lambda: pool.stats().waiting == 1, "waiter never queued")
    started = time.monotonic()
    pool.close(timeout=0.1)
    assert time.monotonic() - started < BOUND / 2
    join(thread)
    assert len(errors) == 1
    assert isinstance(errors[0], PoolClosed)
    assert held.closed
    assert connector.terminates == 1
    assert connector.open == set()
    assert repr(pool).startswith("<SyncPool 'default' closed")
    pool.release(held)  # a late return of a terminated connection is harmless
    threads = [t.name for t in threading.enumerate() if t.name.startswith("elasticpool-default")]
    assert all("ticker" not in name for name in threads), threads


def test_close_waits_for_borrowed_connections(connector: SyncFakeConnector) -> None:
    """close() returns as soon as the last borrowed connection comes back, and closes it."""
    pool = SyncPool(connector, max_connections=1)
    pool.open()
    held = pool.acquire()
    closer = start(lambda: pool.close(timeout=BOUND))
    until(lambda: pool._state == "closing", "close never started")
    assert not held.closed
    pool.release(held)
    join(closer)
    assert held.closed
    assert connector.terminates == 0


def test_lifecycle_misuse_says_what_to_do(connector: SyncFakeConnector) -> None:
    """Borrowing before open or after close, and reopening, raise clear errors."""
    pool = SyncPool(connector, max_connections=1, name="life")
    with pytest.raises(RuntimeError, match=r"pool 'life' is not open: use 'with pool'"):
        pool.acquire()
    with pool:
        pool.open()  # idempotent
    with pytest.raises(PoolClosed, match="pool 'life' is closed"):
        pool.acquire()
    with pytest.raises(PoolClosed, match="cannot be opened again"):
        pool.open()
    pool.close()  # again: harmless


def test_terminate_is_immediate(connector: SyncFakeConnector) -> None:
    """terminate() closes every connection at once, borrowed ones included."""
    pool = SyncPool(connector, max_connections=2)
    pool.open()
    held = pool.acquire()
    with pool.connection():
        pass
    pool.terminate()
    assert held.closed
    assert connector.open == set()
    with pytest.raises(PoolClosed):
        pool.acquire()
    pool.release(held)


def test_concurrent_opens_start_one_pool(connector: SyncFakeConnector) -> None:
    """open() from many threads at once opens the pool once."""
    pool = SyncPool(connector, max_connections=1)
    threads = [start(pool.open) for _ in range(8)]
    join(*threads)
    tickers = [t for t in threading.enumerate() if t.name == "elasticpool-default-ticker"]
    assert len(tickers) == 1
    pool.close()


def test_release_misuse_is_a_clear_error(connector: SyncFakeConnector) -> None:
    """Releasing twice, or a connection from elsewhere, raises RuntimeError."""
    with SyncPool(connector, max_connections=2, name="p") as pool:
        conn = pool.acquire()
        pool.release(conn)
        with pytest.raises(RuntimeError, match=r"is not borrowed from pool 'p'"):
            pool.release(conn)
        with pytest.raises(RuntimeError, match="not borrowed"):
            pool.release(SyncFakeConnection(connector, 99))


def test_stale_release_does_not_end_the_next_borrow(connector: SyncFakeConnector) -> None:
    """A thread releasing again after another thread borrowed the connection is refused."""
    with SyncPool(connector, max_connections=1) as pool:
        conn = pool.acquire()
        pool.release(conn)
        other: list[Any] = []
        done = threading.Event()
        proceed = threading.Event()

        def borrower() -> None:
            other.append(pool.acquire())
            done.set()
            proceed.wait(BOUND)
            pool.release(other[0])

        thread = start(borrower)
        assert done.wait(BOUND)
        assert other[0] is conn
        with pytest.raises(RuntimeError, match="after this thread gave it back"):
            pool.release(conn)
        assert pool.stats().in_use == 1  # the other thread's borrow stands
        proceed.set()
        join(thread)


def test_release_from_another_thread_is_a_hand_off(connector: SyncFakeConnector) -> None:
    """A connection borrowed in one thread may be given back by another."""
    with SyncPool(connector, max_connections=1) as pool:
        conn = pool.acquire()
        join(start(lambda: pool.release(conn)))
        assert pool.stats().in_use == 0


def test_bad_arguments_are_clear_errors(connector: SyncFakeConnector) -> None:
    """Wrong types are TypeErrors, wrong values ValueErrors, each naming what is allowed."""
    with pytest.raises(TypeError, match="coroutine function: an async connector goes with"):
        SyncPool(FakeConnector())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="missing connect, close"):
        SyncPool(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="settings must be a PoolSettings"):
        SyncPool(connector, {"max_connections": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        SyncPool(connector, name="")
    with pytest.raises(ValueError, match="max_connections must be an integer >= 1"):
        SyncPool(connector, max_connections=0)
    with SyncPool(connector, PoolSettings(max_connections=1), pool_timeout=1.0) as pool:
        assert pool.settings.pool_timeout == 1.0
        with pytest.raises(TypeError, match="timeout must be a number of seconds"):
            pool.acquire(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout must be > 0 seconds"):
            pool.connection(timeout=0)
        with pytest.raises(TypeError, match="max_connections must be an integer"):
            pool.resize("3")  # type: ignore[arg-type]


def test_stats_and_repr(connector: SyncFakeConnector) -> None:
    """stats() is a frozen PoolStats; repr counts like the async pool's."""
    with SyncPool(connector, max_connections=4, name="api") as pool:
        conn = pool.acquire()
        stats = pool.stats()
        assert isinstance(stats, PoolStats)
        assert (stats.name, stats.size, stats.in_use, stats.acquires) == ("api", 1, 1, 1)
        assert repr(pool) == "<SyncPool 'api' [in use 1, idle 0, connecting 0 | waiting 0]>"
        pool.release(conn)


def test_saturation_is_logged(
    connector: SyncFakeConnector, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool at its limit with callers queued and nothing free logs a saturation warning."""
    caplog.set_level(logging.WARNING, "elasticpool")
    with SyncPool(connector, max_connections=1, saturation_warning=0.05, name="sat") as pool:
        held = pool.acquire()
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.3)
        pool.release(held)
    assert any("pool 'sat' saturated" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- interruption


def test_interrupted_waiter_leaves_the_queue_and_loses_nothing(
    connector: SyncFakeConnector,
) -> None:
    """SIGINT (KeyboardInterrupt) in a waiting main thread takes it out of the queue cleanly."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    with SyncPool(connector, max_connections=1) as pool:
        held = pool.acquire()

        def interrupt() -> None:
            until(lambda: pool.stats().waiting == 1, "main thread never queued")
            os.kill(os.getpid(), signal.SIGINT)

        thread = start(interrupt)
        with pytest.raises(KeyboardInterrupt):
            pool.acquire(timeout=BOUND)
        join(thread)
        assert pool.stats().waiting == 0
        pool.release(held)
        with pool.connection() as conn:
            assert conn is held
        assert_consistent(pool, connector)


def test_waiter_interrupted_after_the_hand_off_passes_the_connection_on(
    connector: SyncFakeConnector,
) -> None:
    """A waiter that was handed a connection but leaves before taking it passes it on."""
    with SyncPool(connector, max_connections=1) as pool:
        held = pool.acquire()
        planner = pool._planner
        with pool._lock:
            w = planner.enqueue(time.monotonic(), None)
            w.token = threading.Event()
        got: list[Any] = []

        def second_waiter() -> None:
            with pool.connection(timeout=BOUND) as conn:
                got.append(conn)

        second = start(second_waiter)
        until(lambda: pool.stats().waiting == 2, "second waiter never queued")
        pool.release(held)  # handed to the first waiter, which never claims it
        assert w.token.is_set()
        with pool._lock:
            planner.cancel(w, time.monotonic())
            plan = planner.take_plan()
        pool._execute(plan)
        join(second)
        assert got == [held]


# ----------------------------------------------------------------------------- threads


def test_many_threads_random_timeouts_and_deaths_never_share_a_connection() -> None:
    """32 threads, random timeouts, connections dying in use and idle: never lent twice."""
    connector = SyncFakeConnector(connect_delay=lambda: random.uniform(0, 0.002))
    lent: dict[int, int] = {}
    lock = threading.Lock()
    failures: list[str] = []
    outcomes = {"ok": 0, "timeout": 0, "dead": 0}
    attempts = 300

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(attempts):
            try:
                with pool.connection(timeout=rng.choice((0.001, 0.005, 0.05, 1.0))) as conn:
                    me = threading.get_ident()
                    with lock:
                        if conn.id in lent:
                            failures.append(f"connection {conn.id} lent twice")
                        lent[conn.id] = me
                    roll = rng.random()
                    if roll < 0.02:
                        conn.drop()  # dies in use, the driver knows
                    elif roll < 0.04:
                        conn.kill()  # dies unnoticed: the next ping finds it
                    conn_work = rng.choice((0.0, 0.0, 0.0005))
                    try:
                        conn.execute(conn_work)
                    finally:
                        with lock:
                            if lent.pop(conn.id, None) != me:
                                failures.append(f"connection {conn.id} taken from under us")
                with lock:
                    outcomes["ok"] += 1
            except PoolTimeout:
                with lock:
                    outcomes["timeout"] += 1
            except FakeDisconnect:
                with lock:
                    outcomes["dead"] += 1

    with SyncPool(connector, max_connections=6, ping_after=0.001, max_connecting=3) as pool:
        threads = [start(lambda n=n: worker(n)) for n in range(32)]  # type: ignore[misc]
        join(*threads)
        assert not failures, failures[:5]
        assert sum(outcomes.values()) == 32 * attempts
        assert outcomes["ok"] > 0
        stats = pool.stats()
        assert stats.in_use == 0
        assert stats.waiting == 0
        assert stats.acquires == outcomes["ok"] + outcomes["dead"]
        until(lambda: not pool.stats().connecting and not pool.stats().closing, "never settled")
        assert_consistent(pool, connector)
        assert stats.size <= 6
    assert connector.open == set()


# ----------------------------------------------------------------------------- fork


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_is_refused_and_closes_without_io(connector: SyncFakeConnector) -> None:
    """Every call on an inherited pool raises the fork error in a child; close does no I/O."""
    with SyncPool(connector, max_connections=2, name="inherited") as pool:
        held = pool.acquire()  # borrowed across the fork
        with pool.connection():  # a second connection, idle at the fork
            pass
        # Threads keep the planner busy while we fork: the child must not inherit a
        # lock held by a thread it does not have.
        stop = threading.Event()

        def churn() -> None:
            while not stop.is_set():
                with pool.connection(timeout=BOUND):
                    pass

        churners = [start(churn) for _ in range(3)]
        before = (connector.closes, connector.terminates, connector.resets)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running pytest's teardown
            code = 1
            try:
                refused = []
                for call in (
                    pool.acquire,
                    pool.connection().__enter__,
                    lambda: pool.resize(3),
                    pool.check,
                    pool.open,
                ):
                    try:
                        call()
                        refused.append("no error")
                    except RuntimeError as exc:
                        refused.append(str(exc))
                pool.release(held)
                pool.close(timeout=1.0)
                io = (connector.closes, connector.terminates, connector.resets)
                ok = all(
                    re.match(
                        rf"pool 'inherited' was opened in process {os.getppid()} and cannot be "
                        r"used in forked process \d+: open the pool after the fork",
                        msg,
                    )
                    for msg in refused
                )
                verdict = "ok" if ok and io == before and " closed " in repr(pool) else "bad"
                os.write(w, f"{verdict} {refused} {io} {before} {pool!r}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        try:
            with os.fdopen(r, "rb") as reader:
                report = reader.read().decode()
        finally:
            _, status = os.waitpid(pid, 0)
        stop.set()
        join(*churners)
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert report.startswith("ok "), report
        pool.release(held)
        with pool.connection() as conn:  # the parent's pool is as it was
            assert conn in (held, *connector.connections)
        assert_consistent(pool, connector)


@pytest.fixture(autouse=True)
def _no_thread_left_behind() -> Iterator[None]:
    """Each test's pools stop their tickers by the end (a closed pool leaves no ticker)."""
    yield
    until(
        lambda: not [t for t in threading.enumerate() if t.name.endswith("-ticker")],
        "a pool ticker outlived its test",
    )


def test_the_fleets_statements_reach_the_sync_connection_either_way() -> None:
    """Today's fleet statement runner and the port's connector.fetch both run on the sync conn."""
    import anyio

    from elasticpool._sync_fleet import AsyncConnectorFacade, LoopConnection
    from elasticpool.fleet._sql import fetch

    connector = SyncFakeConnector()
    connector.rows["SELECT $1"] = [(1,)]
    facade = AsyncConnectorFacade(connector, PoolSettings())
    raw = connector.connect(1.0)
    wrapped = LoopConnection(raw, connector)

    async def main() -> list[Any]:
        return [
            await fetch(wrapped, "SELECT $1", 1, own=True),  # the membership's runner today
            await facade.fetch(wrapped, "SELECT $1", 1),  # port.connector.fetch, next
            await facade.fetch(raw, "SELECT $1", 1),
        ]

    assert anyio.run(main) == [[(1,)], [(1,)], [(1,)]]
    assert connector.statements == [("SELECT $1", (1,))] * 3
