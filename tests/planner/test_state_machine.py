"""Property test of the planner: random event sequences, every invariant after every step."""

from __future__ import annotations

import math
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from elasticpool import PoolClosed, PoolSettings, TooManyWaiters
from elasticpool._state import Outcome, Planner, Slot, SlotState, Waiter

unit = st.floats(min_value=0.0, max_value=0.999)


class PlannerMachine(RuleBasedStateMachine):
    """Drives a Planner the way the shell does, and keeps its own ledger of every slot."""

    @initialize(
        limit=st.integers(1, 5),
        min_connections=st.integers(0, 2),
        max_connecting=st.integers(1, 3),
        idle_timeout=st.sampled_from([None, 1.0, 5.0]),
        lifetime=st.sampled_from([None, 3.0, 20.0]),
        max_waiting=st.sampled_from([None, 2, 6]),
        ping_after=st.sampled_from([None, 0.0, 1.0]),
        limit_mode=st.sampled_from(["strict", "soft"]),
        soft_overflow=st.integers(0, 2),
        fail_fast=st.booleans(),
    )
    def setup(self, **kw: Any) -> None:
        """Build a planner with random, valid settings."""
        limit = kw.pop("limit")
        kw["min_connections"] = min(kw["min_connections"], limit)
        kw["connection_lifetime"] = kw.pop("lifetime")
        if kw["idle_timeout"] is not None and kw["connection_lifetime"] is not None:
            kw["idle_timeout"] = min(kw["idle_timeout"], kw["connection_lifetime"] / 2)
        self.settings = PoolSettings(max_connections=limit, **kw)
        self.p = Planner(self.settings)
        self.now = 0.0
        self.borrowed: list[Slot] = []
        self.connecting: list[Slot] = []
        self.closing: list[Slot] = []
        self.resetting: list[Slot] = []
        self.queued: list[Waiter] = []  # in arrival order
        self.woken: list[Waiter] = []  # handed a slot, not yet claimed or cancelled
        self.p.tick(self.now)
        self._collect()

    # -------------------------------------------------------------- bookkeeping

    def _collect(self) -> None:
        plan = self.p.take_plan()
        if plan is None:
            return
        self.connecting += plan.connect
        self.closing += plan.close
        self.resetting += plan.reset
        handed = [w for w in plan.wake if w.outcome is Outcome.HANDED]
        # FIFO: the waiters handed slots are the oldest queued ones, in order.
        assert handed == self.queued[: len(handed)], (handed, self.queued)
        for w in plan.wake:
            assert w.outcome is not None
            if w in self.queued:
                self.queued.remove(w)
            if w.outcome is Outcome.HANDED:
                self.woken.append(w)
            elif w.outcome is Outcome.TIMEOUT:
                assert w.deadline <= self.now, "timed out before its deadline"
            elif w.outcome is Outcome.CONNECT_FAILED:
                assert self.settings.fail_fast
                assert not self.borrowed, "failed fast while a borrowed slot could come back"

    # -------------------------------------------------------------- rules

    @rule(
        timeout=st.sampled_from([None, 0.5, 2.0, 10.0]),
        priority=st.sampled_from([False] * 5 + [True]),
    )
    def acquire(self, timeout: float | None, priority: bool) -> None:
        """A caller asks for a slot: takes an idle one or queues."""
        if self.p.closed:
            with pytest.raises(PoolClosed):
                self.p.acquire(self.now)
            return
        had_idle = self.p.n_idle > 0 and not self.queued
        slot = self.p.acquire(self.now)
        if slot is not None:
            assert slot.state is SlotState.IN_USE
            self.borrowed.append(slot)
        else:
            assert not had_idle or self.p.n_idle == 0 or self.queued
            if self.settings.max_waiting is not None and (
                len(self.queued) >= self.settings.max_waiting
            ):
                with pytest.raises(TooManyWaiters):
                    self.p.enqueue(self.now, timeout)
            else:
                w = self.p.enqueue(self.now, timeout, priority)
                if priority:  # after earlier priority waiters, before every ordinary one
                    at = sum(1 for q in self.queued if q.priority)
                    self.queued.insert(at, w)
                else:
                    self.queued.append(w)
        self._collect()

    @precondition(lambda self: self.borrowed)
    @rule(data=st.data(), broken=st.booleans(), reset=st.booleans())
    def release(self, data: st.DataObject, broken: bool, reset: bool) -> None:
        """A borrower gives its slot back, maybe broken, maybe needing a reset."""
        slot = self.borrowed.pop(data.draw(st.integers(0, len(self.borrowed) - 1)))
        self.p.release(slot, self.now, broken=broken, reset=reset)
        self._collect()

    @precondition(lambda self: self.borrowed)
    @rule(data=st.data(), ok=st.booleans())
    def ping(self, data: st.DataObject, ok: bool) -> None:
        """A freshly borrowed slot is pinged; a failed ping evicts it."""
        i = data.draw(st.integers(0, len(self.borrowed) - 1))
        slot = self.borrowed[i]
        gen = self.p.generation
        self.p.pinged(slot, ok, self.now)
        if not ok:
            self.borrowed.pop(i)
            assert slot.state is SlotState.CLOSING
            assert self.p.generation == gen + 1
        else:
            assert slot.checked_gen == self.p.generation, "a good ping clears the suspicion"
        self._collect()

    @precondition(lambda self: self.connecting)
    @rule(data=st.data(), jitter=unit)
    def connect_ok(self, data: st.DataObject, jitter: float) -> None:
        """A planned connect succeeds."""
        slot = self.connecting.pop(data.draw(st.integers(0, len(self.connecting) - 1)))
        expired_early = slot.expires_at <= self.now  # expire_all() ran while it connected
        self.p.connected(slot, object(), self.now, jitter)
        if expired_early:
            assert slot.state is SlotState.CLOSING
        elif slot.expires_at < math.inf:
            lifetime = self.settings.connection_lifetime
            assert lifetime is not None
            assert self.now + lifetime * (1 - self.settings.lifetime_jitter) <= slot.expires_at
            assert slot.expires_at <= self.now + lifetime
        self._collect()

    @precondition(lambda self: self.connecting)
    @rule(data=st.data(), jitter=unit, abandoned=st.booleans())
    def connect_fail(self, data: st.DataObject, jitter: float, abandoned: bool) -> None:
        """A planned connect fails (backoff follows) or is abandoned."""
        slot = self.connecting.pop(data.draw(st.integers(0, len(self.connecting) - 1)))
        err = None if abandoned else ConnectionError("boom")
        self.p.connect_failed(slot, err, self.now, jitter)
        if err is not None:
            assert self.p.backoff_until > self.now
            assert not any(s.state is SlotState.CONNECTING for s in self._planned_now())
        self._collect()

    def _planned_now(self) -> list[Slot]:
        plan = self.p.pending
        return [] if plan is None else plan.connect

    @precondition(lambda self: self.closing)
    @rule(data=st.data())
    def close_done(self, data: st.DataObject) -> None:
        """A connection finished closing."""
        slot = self.closing.pop(data.draw(st.integers(0, len(self.closing) - 1)))
        self.p.closed_conn(slot, self.now)
        assert slot.state is SlotState.CLOSED
        self._collect()

    @precondition(lambda self: self.resetting)
    @rule(data=st.data(), ok=st.booleans())
    def reset_done(self, data: st.DataObject, ok: bool) -> None:
        """A reset finished (or failed, discarding the connection)."""
        slot = self.resetting.pop(data.draw(st.integers(0, len(self.resetting) - 1)))
        self.p.reset_done(slot, ok, self.now)
        self._collect()

    @precondition(lambda self: self.woken)
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        """A woken waiter takes the slot reserved for it."""
        w = self.woken.pop(data.draw(st.integers(0, len(self.woken) - 1)))
        slot = self.p.claim(w, self.now)
        assert slot.state is SlotState.IN_USE
        self.borrowed.append(slot)
        self._collect()

    @precondition(lambda self: self.woken or self.queued)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """A waiter is cancelled, queued or already handed a slot (which passes on)."""
        pool = self.woken + self.queued
        w = pool[data.draw(st.integers(0, len(pool) - 1))]
        slot = w.slot
        if w in self.woken:
            self.woken.remove(w)
        else:
            self.queued.remove(w)
        self.p.cancel(w, self.now)
        if slot is not None:
            assert slot.state is not SlotState.RESERVED or slot.waiter is not w
        self._collect()

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, 7.0]))
    def tick(self, dt: float) -> None:
        """Time passes and the ticker runs."""
        self.now += dt
        self.p.tick(self.now)
        self._collect()
        for w in self.queued:
            assert w.deadline > self.now, "a waiter outlived its deadline"
        timeout = self.settings.idle_timeout
        for slot in self.p._idle:
            assert self.now < slot.expires_at, "an idle slot outlived its lifetime"
            if timeout is not None and self.p.size > self.p.floor:
                assert self.now - slot.idle_since < timeout, "idle slot above floor too old"
        assert self.p.next_wake > self.now

    @precondition(lambda self: self.p.n_idle)
    @rule(data=st.data(), ok=st.booleans())
    def check_idle(self, data: st.DataObject, ok: bool) -> None:
        """Pool.check(): one idle slot is taken out, pinged, and given back or evicted."""
        idle = self.p.idle_slots()
        slot = idle[data.draw(st.integers(0, len(idle) - 1))]
        acquires = self.p.acquires
        if not self.p.take_for_check(slot, self.now):
            assert self.queued, "an idle slot could not be taken with nobody waiting"
            return
        assert self.p.acquires == acquires, "a check is not a borrow"
        self.p.pinged(slot, ok, self.now)
        if ok:
            self.p.release(slot, self.now)
        self._collect()

    @rule(limit=st.integers(0, 6), floor=st.sampled_from([None, 0, 1, 3]))
    def resize(self, limit: int, floor: int | None) -> None:
        """The limit changes (as the fleet layer would change it)."""
        before = list(self.borrowed)
        if floor is not None and floor > limit:
            with pytest.raises(ValueError, match="min_connections must be an integer in"):
                self.p.resize(limit, self.now, floor)
            return
        self.p.resize(limit, self.now, floor)
        self._collect()
        assert all(s.state is SlotState.IN_USE for s in before), "resize revoked a borrowed slot"
        if self.p.n_idle:
            assert self.p.size <= limit

    @rule()
    def expire_all(self) -> None:
        """Every connection is marked for retirement."""
        self.p.expire_all(self.now)
        self._collect()
        assert self.p.n_idle == 0 or self.p.closed is False

    @rule()
    def close(self) -> None:
        """The pool closes: waiters are closed out, idle slots closed."""
        self.p.close(self.now)
        self._collect()
        assert not self.queued
        assert self.p.n_idle == 0

    # -------------------------------------------------------------- invariants

    @invariant()
    def structure(self) -> None:
        """The planner's own invariants hold."""
        if hasattr(self, "p"):
            self.p.check()

    @invariant()
    def no_slot_lost(self) -> None:
        """Every slot the planner tracks is somewhere in our ledger, exactly once."""
        if not hasattr(self, "p"):
            return
        reserved = [w.slot for w in self.woken if w.slot is not None]
        ledger = (
            self.borrowed
            + self.connecting
            + self.closing
            + self.resetting
            + reserved
            + list(self.p._idle)
        )
        assert len(ledger) == len({id(s) for s in ledger}), "a slot is in two places"
        assert set(map(id, ledger)) == set(map(id, self.p._slots)), "slot lost or invented"


PlannerMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_planner_state_machine = PlannerMachine.TestCase
