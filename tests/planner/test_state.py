"""The planner on its own: no event loop, time as an argument, plans as values."""

from __future__ import annotations

import pytest

from elasticpool import PoolClosed, PoolSettings, TooManyWaiters
from elasticpool._state import CloseReason, Outcome, Planner, SlotState


def planner(**kw: object) -> Planner:
    return Planner(PoolSettings(**kw))  # type: ignore[arg-type]


def test_empty_planner_plans_nothing() -> None:
    """A fresh pool with no floor opens nothing on a tick."""
    p = planner(max_connections=5)
    p.tick(0.0)
    assert p.take_plan() is None
    assert p.size == 0


def test_floor_is_planned_within_connect_concurrency() -> None:
    """min_connections is opened in the background, at most max_connecting at a time."""
    p = planner(max_connections=10, min_connections=5, max_connecting=2)
    p.tick(0.0)
    plan = p.take_plan()
    assert plan is not None
    assert len(plan.connect) == 2
    p.connected(plan.connect[0], "c1", 0.1, 0.0)
    plan = p.take_plan()
    assert plan is not None
    assert len(plan.connect) == 1
    p.check()


def test_grows_only_for_uncovered_waiters() -> None:
    """Three waiters with two connects pending plan no third connect beyond concurrency."""
    p = planner(max_connections=10, max_connecting=3)
    assert p.acquire(0.0) is None
    w1 = p.enqueue(0.0, 30.0)
    plan = p.take_plan()
    assert plan is not None
    assert len(plan.connect) == 1
    p.enqueue(0.0, 30.0)
    assert len(p.take_plan().connect) == 1  # type: ignore[union-attr]
    # a returned connection covers the oldest waiter: no new connect for it
    slot = plan.connect[0]
    p.connected(slot, "c", 0.1, 0.0)
    plan = p.take_plan()
    assert plan is not None
    assert plan.wake == [w1]
    assert w1.outcome is Outcome.HANDED
    assert slot.state is SlotState.RESERVED
    assert plan.connect == []
    p.check()


def test_first_ready_connection_goes_to_the_oldest_waiter() -> None:
    """Whichever connect finishes first, the oldest waiter gets it."""
    p = planner(max_connections=10, max_connecting=2)
    w1 = p.enqueue(0.0, None)
    w2 = p.enqueue(0.0, None)
    a, b = p.take_plan().connect  # type: ignore[union-attr]
    p.connected(b, "b", 0.2, 0.0)
    assert p.take_plan().wake == [w1]  # type: ignore[union-attr]
    assert w1.slot is b
    p.connected(a, "a", 0.3, 0.0)
    assert p.take_plan().wake == [w2]  # type: ignore[union-attr]


def test_idle_shrink_happens_at_the_tick_after_idle_timeout() -> None:
    """An idle slot closes at the first tick at or after idle_timeout; next_wake says when."""
    p = planner(max_connections=3, idle_timeout=10.0, connection_lifetime=None)
    w = p.enqueue(0.0, None)
    slot = p.take_plan().connect[0]  # type: ignore[union-attr]
    p.connected(slot, "c", 1.0, 0.0)
    p.take_plan()
    p.claim(w, 1.0)
    p.release(slot, 2.0)
    p.take_plan()
    p.tick(2.0)
    assert p.next_wake == 12.0
    p.tick(11.999)
    assert p.take_plan() is None
    p.tick(12.0)
    plan = p.take_plan()
    assert plan is not None
    assert plan.close == [slot]
    assert slot.close_reason is CloseReason.IDLE
    assert p.closed_for[CloseReason.IDLE] == 1


def test_a_bookkeeping_borrow_keeps_the_idle_clock() -> None:
    """Released with ``idle_since``, a slot stays idle since then and in recency order."""
    p = planner(max_connections=3, idle_timeout=10.0, connection_lifetime=None)
    waiters = [p.enqueue(0.0, None) for _ in range(2)]
    slots = list(p.take_plan().connect)  # type: ignore[union-attr]
    for slot, w in zip(slots, waiters, strict=True):
        p.connected(slot, "c", 1.0, 0.0)
        p.claim(w, 1.0)
    p.take_plan()
    old, new = slots
    p.release(old, 2.0)
    p.release(new, 5.0)
    p.take_plan()
    taken = p.acquire(6.0)  # the most recently used: ``new``, idle since 5
    assert taken is new
    p.release(new, 7.0, idle_since=5.0)  # a heartbeat's statement: still idle since 5
    p.take_plan()
    assert [s.idle_since for s in p.idle_slots()] == [2.0, 5.0]
    p.tick(12.0)  # ``old`` times out at 12, ``new`` at 15 (not at 17)
    assert p.take_plan().close == [old]  # type: ignore[union-attr]
    p.tick(15.0)
    assert p.take_plan().close == [new]  # type: ignore[union-attr]
    p.check()


def test_lifetime_jitter_only_shortens() -> None:
    """The jitter draw shortens the lifetime by up to lifetime_jitter, never lengthens it."""
    p = planner(
        max_connections=3, connection_lifetime=100.0, lifetime_jitter=0.1, idle_timeout=None
    )
    for draw, expected in ((0.0, 100.0), (0.5, 95.0), (0.999, 90.01)):
        w = p.enqueue(0.0, None)
        slot = p.take_plan().connect[0]  # type: ignore[union-attr]
        p.connected(slot, "c", 0.0, draw)
        assert slot.expires_at == pytest.approx(expected)
        p.take_plan()
        p.claim(w, 0.0)


def test_expired_connection_is_closed_at_checkout_and_replaced() -> None:
    """An idle slot past its lifetime is not handed out; acquire closes it and queues."""
    p = planner(max_connections=2, connection_lifetime=5.0, lifetime_jitter=0.0, idle_timeout=1.0)
    w = p.enqueue(0.0, None)
    slot = p.take_plan().connect[0]  # type: ignore[union-attr]
    p.connected(slot, "c", 0.0, 0.0)
    p.take_plan()
    p.claim(w, 0.0)
    p.release(slot, 0.5)
    p.take_plan()
    assert p.acquire(6.0) is None  # no tick ran; checkout notices the expiry itself
    plan = p.take_plan()
    assert plan is not None
    assert plan.close == [slot]
    assert slot.close_reason is CloseReason.LIFETIME


def test_waiter_times_out_at_its_deadline_on_tick() -> None:
    """A queued waiter is timed out by the tick at its deadline, and counted."""
    p = planner(max_connections=1)
    p.enqueue(0.0, None)  # holds the only connect
    w = p.enqueue(1.0, 5.0)
    p.take_plan()
    assert p.next_wake == 6.0
    p.tick(5.999)
    assert w.outcome is None
    p.tick(6.0)
    assert w.outcome is Outcome.TIMEOUT
    assert p.timeouts == 1
    assert p.take_plan().wake == [w]  # type: ignore[union-attr]


def test_backoff_blocks_connects_until_it_ends() -> None:
    """After a failure no connect is planned before the backoff ends; the tick then retries."""
    p = planner(max_connections=2, backoff_initial=1.0, backoff_max=4.0)
    p.enqueue(0.0, None)
    slot = p.take_plan().connect[0]  # type: ignore[union-attr]
    err = ConnectionRefusedError("no")
    p.connect_failed(slot, err, 0.5, 1.0)  # draw 1.0: the full ceiling, 1 s
    assert p.backoff_until == 1.5
    assert p.last_connect_error is err
    plan = p.take_plan()
    assert plan is not None
    assert plan.connect == []
    assert p.next_wake == 1.5
    p.tick(1.5)
    assert len(p.take_plan().connect) == 1  # type: ignore[union-attr]


def test_max_waiting_and_closed_raise_from_the_planner() -> None:
    """The planner refuses callers past max_waiting, and everything after close."""
    p = planner(max_connections=1, max_waiting=1)
    p.enqueue(0.0, None)
    with pytest.raises(TooManyWaiters, match="1 already queued, max_waiting is 1"):
        p.enqueue(0.0, None)
    p.close(0.0)
    with pytest.raises(PoolClosed, match="pool is closed"):
        p.acquire(0.0)


def test_double_release_is_refused() -> None:
    """Releasing a slot that is not in use is a RuntimeError, and changes nothing."""
    p = planner(max_connections=1)
    w = p.enqueue(0.0, None)
    slot = p.take_plan().connect[0]  # type: ignore[union-attr]
    p.connected(slot, "c", 0.0, 0.0)
    p.claim(w, 0.0)
    p.release(slot, 1.0)
    with pytest.raises(RuntimeError, match="released while idle"):
        p.release(slot, 1.0)
    p.check()


def test_soft_mode_forgives_closing_slots_up_to_the_overflow() -> None:
    """In soft mode a replacement may open while up to soft_overflow old ones still close."""
    for mode, expect_connect in (("strict", 0), ("soft", 1)):
        p = planner(max_connections=1, limit_mode=mode, soft_overflow=1)
        w = p.enqueue(0.0, None)
        slot = p.take_plan().connect[0]  # type: ignore[union-attr]
        p.connected(slot, "c", 0.0, 0.0)
        p.claim(w, 0.0)
        p.take_plan()
        p.release(slot, 1.0, broken=True)  # closing, not yet closed
        p.take_plan()
        p.enqueue(1.0, None)
        plan = p.take_plan()
        assert len(plan.connect if plan else []) == expect_connect, mode
        p.check()


def test_release_at_the_floor_does_not_wake_the_ticker() -> None:
    """An idle deadline below the floor cannot fire, so returning a connection there is quiet."""
    p = planner(max_connections=1, min_connections=1, connection_lifetime=None)
    p.tick(0.0)
    slot = p.take_plan().connect[0]  # type: ignore[union-attr]
    p.connected(slot, "c", 0.0, 0.0)
    p.take_plan()
    p.tick(0.0)
    for t in range(1, 50):
        got = p.acquire(float(t))
        assert got is slot
        p.release(slot, float(t))
        assert p.take_plan() is None, "the ticker was poked for a deadline that cannot fire"


def test_connection_passed_from_borrower_to_waiter_is_not_pinged() -> None:
    """A connection handed straight from one borrower to the next is fresh, not idle: no ping."""
    p = planner(max_connections=1, ping_after=1.0, connection_lifetime=None, idle_timeout=None)
    first = p.enqueue(0.0, None)
    (slot,) = p.take_plan().connect  # type: ignore[union-attr]
    p.connected(slot, "c", 0.0, 0.0)
    p.take_plan()
    s = p.claim(first, 0.0)
    for t in (1.0, 2.0, 3.0, 4.0):  # busy for 4 s: never idle, always someone waiting
        w = p.enqueue(t - 0.5, None)
        p.release(s, t)
        assert p.take_plan().wake == [w]  # type: ignore[union-attr]
        s = p.claim(w, t + 0.01)
        assert not p.should_ping(s, t + 0.01)
    p.release(s, 5.0)  # now it sits idle past ping_after: pinged before reuse
    again = p.acquire(6.5)
    assert again is s
    assert p.should_ping(s, 6.5)
    p.check()


def test_fleet_demand_counts_a_long_wait_only_for_the_span_it_covers() -> None:
    """A 3 s wait that ends within a 20 ms report span adds at most one connection of demand.

    Waits and borrows still running count up to ``now`` at each report: a
    wait counted whole when it ends made a member with one caller report a
    demand of 150 (3 s / 0.02 s) and crowd out every other asker.
    """
    p = planner(max_connections=1)
    busy = 0.0
    w = p.enqueue(0.0, None)
    slot = p.take_plan().connect[0]  # type: ignore[union-attr]
    demand, busy = p.fleet_demand(busy, 2.98, 2.98)  # waiting all along: one caller
    assert demand == 1
    p.connected(slot, "c", 3.0, 0.0)  # served at 3.0 after a 3 s wait
    p.take_plan()
    p.claim(w, 3.0)
    p.release(slot, 3.0)
    p.take_plan()
    demand, busy = p.fleet_demand(busy, 0.02, 3.0)
    assert demand <= 1
    demand, busy = p.fleet_demand(busy, 1.0, 4.0)  # idle for the whole second since
    assert demand == 0
    p.check()
