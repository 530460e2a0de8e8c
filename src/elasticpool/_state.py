"""The planner: a pure, synchronous state machine for one pool.

It holds the slots, the FIFO of waiters and the limit, and decides; it never
awaits, never reads a clock (``now`` is an argument) and never touches a
socket. Each event leaves the actions it implies in an outbox, a :class:`Plan`
(connect these slots, close these, reset these, wake these waiters) that the
caller takes with :meth:`Planner.take_plan` and carries out. The anyio shell in
``_pool.py`` is one such caller; the tests are another, with no event loop.

Invariants (checked by :meth:`Planner.check`, after every step in the tests):

* every slot is in exactly one state, and the per-state counters match;
* the idle deque holds exactly the IDLE slots, least recently used first;
* a RESERVED slot and its waiter point at each other, and that waiter is no
  longer queued; a queued waiter holds no slot and has no outcome;
* no connect is planned that would take the budget above the limit, and no
  slot sits IDLE while live connections are above the limit (a lowered limit
  is met as busy surplus comes back; nothing in use is revoked);
* waiters are served strictly first in, first out (no barging: a fresh
  ``acquire`` never takes an idle slot while someone is queued); the only
  exception is a priority waiter (the fleet heartbeat), served first;
* after :meth:`Planner.tick` no queued waiter is past its deadline, and no
  idle slot above the floor is older than ``idle_timeout``.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import math
from collections import OrderedDict, deque
from typing import Any, Protocol

from ._errors import PoolClosed, TooManyWaiters
from ._settings import PoolSettings
from ._validate import check_int

__all__ = [
    "CloseReason",
    "Outcome",
    "Plan",
    "Planner",
    "Slot",
    "SlotState",
    "TimingSink",
    "Waiter",
]

_INF = math.inf


class SlotState(enum.Enum):
    """Where a slot is in its life. The budget counts all but CLOSING (see ``limit_mode``)."""

    CONNECTING = "connecting"
    IDLE = "idle"
    RESERVED = "reserved"  # handed to a waiter that has not woken yet
    IN_USE = "in use"
    RESETTING = "resetting"  # returned, being cleaned before reuse
    CLOSING = "closing"
    CLOSED = "closed"  # gone: in no collection, counted nowhere


# The members the per-borrow events use, by module name: before Python 3.12 an
# enum member looked up on its class (``SlotState.IDLE``) goes through the enum
# metaclass's attribute hook and costs ten times a global (~150 ns, about 5 % of
# a borrow and return each).
_IDLE = SlotState.IDLE
_RESERVED = SlotState.RESERVED
_IN_USE = SlotState.IN_USE
_RESETTING = SlotState.RESETTING
_OUT = frozenset({SlotState.RESERVED, SlotState.IN_USE, SlotState.RESETTING})
"""Slots holding a live connection outside the idle set: each comes back to it or closes."""


class CloseReason(enum.Enum):
    """Why a connection was closed (each has a counter in the stats)."""

    IDLE = "idle"
    LIFETIME = "lifetime"
    BROKEN = "broken"
    RESIZE = "resize"
    POOL_CLOSED = "pool closed"


class Outcome(enum.Enum):
    """How a waiter's wait ended."""

    HANDED = "handed"  # a slot is reserved for it
    TIMEOUT = "timeout"
    CLOSED = "closed"  # the pool closed
    CANCELLED = "cancelled"  # the caller gave up
    CONNECT_FAILED = "connect failed"  # fail_fast: a connect it needed failed


_HANDED = Outcome.HANDED  # (see _IDLE)
_CANCELLED = Outcome.CANCELLED


class Slot:
    """One connection's place in the pool, whatever state it is in."""

    __slots__ = (
        "borrowed_at",
        "checked_gen",
        "close_reason",
        "conn",
        "connected_at",
        "expires_at",
        "handed_at",
        "id",
        "idle_since",
        "lease",
        "owner",
        "ping",
        "returned",
        "state",
        "waiter",
    )

    def __init__(self, slot_id: int) -> None:
        self.id = slot_id
        self.state = SlotState.CONNECTING
        self.conn: Any = None
        self.connected_at = _INF
        self.expires_at = _INF
        self.idle_since = _INF
        self.handed_at = -_INF  # last handed straight from a borrower to a waiter
        self.borrowed_at = _INF
        self.checked_gen = 0
        self.ping = False  # set by Planner.acquire: ping before lending (see should_ping)
        self.lease = 0  # bumped at every borrow: tells one borrow from the next
        self.owner: object = None  # the shell's note of the borrowing task (opaque here)
        # The shell's note of the last borrow its own task gave back: (lease, task), or None.
        self.returned: tuple[int, object] | None = None
        self.waiter: Waiter | None = None
        self.close_reason: CloseReason | None = None

    def __repr__(self) -> str:
        return f"<Slot {self.id} {self.state.value}>"


class Waiter:
    """A caller queued for a slot; ``token`` belongs to the caller (the shell's wake-up)."""

    __slots__ = ("deadline", "enqueued_at", "id", "outcome", "priority", "slot", "token")

    def __init__(
        self, waiter_id: int, enqueued_at: float, deadline: float, priority: bool = False
    ) -> None:
        self.id = waiter_id
        self.priority = priority
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.slot: Slot | None = None
        self.outcome: Outcome | None = None
        self.token: Any = None

    def __lt__(self, other: Waiter) -> bool:  # for the deadline heap
        return self.id < other.id

    def __repr__(self) -> str:
        state = self.outcome.value if self.outcome else "queued"
        return f"<Waiter {self.id} {state}>"


class TimingSink(Protocol):
    """Where a pool's per-event timings go when metrics are attached (see :meth:`Planner.observe`).

    Each method gets seconds. Called synchronously from inside a planner
    event, so it must be quick and must not raise or touch the pool.
    """

    def wait(self, seconds: float) -> None:
        """An acquire got its connection after waiting this long (0 when one was idle)."""

    def use(self, seconds: float) -> None:
        """A borrowed connection came back after this long."""

    def create(self, seconds: float) -> None:
        """A connect succeeded after this long (reported by the shell, which times it)."""


@dataclasses.dataclass(slots=True)
class Plan:
    """What the caller must do after an event. Lists are in the order to do them."""

    connect: list[Slot] = dataclasses.field(default_factory=list)
    """New CONNECTING slots: open a connection for each, then report back."""
    close: list[Slot] = dataclasses.field(default_factory=list)
    """CLOSING slots: close each connection (bounded), then report :meth:`Planner.closed`."""
    reset: list[Slot] = dataclasses.field(default_factory=list)
    """RESETTING slots: reset each, then report :meth:`Planner.reset_done`."""
    wake: list[Waiter] = dataclasses.field(default_factory=list)
    """Waiters whose outcome is set (handed a slot, timed out, or closed out): wake them."""
    wake_ticker: bool = False
    """The earliest deadline moved closer: the ticker must recompute when to wake."""
    saturated_for: float = 0.0
    """If > 0: saturated this many seconds (see :meth:`Planner.tick`); log the warning."""


class Planner:
    """Slots, waiters and limits of one pool, and every decision about them.

    Event methods (``acquire``, ``enqueue``, ``connected``, ``release``, …) take
    ``now`` from the caller, change state, and add to the outbox; the caller
    then takes the :class:`Plan` with :meth:`take_plan`. Random draws (lifetime
    jitter, backoff jitter) are arguments too, in ``[0, 1)``, so the planner is
    deterministic.

    It is not thread-safe and not async: the shell calls it from one event loop
    (or under one lock) and never awaits while in the middle of an event.

    What a shell reads, besides the events' results: the counts (``size``,
    ``n_idle``, ``n_in_use``, …, ``budget_used``, ``floor``, ``limit``) and
    counters, ``closed``, ``failures`` and ``last_connect_error``,
    ``next_wake`` (when to call :meth:`tick`), :attr:`waiters` (whether
    callers queue), :attr:`pending` (whether a flush has anything to do),
    :meth:`borrowed_by`, :meth:`remaining`, :meth:`idle_slots` and ``sinks``.
    Everything else is the planner's own.
    """

    def __init__(self, settings: PoolSettings, limit: int | None = None) -> None:
        self.settings = settings
        self._idle_timeout = settings.idle_timeout
        self._ping_after = settings.ping_after
        self.limit = settings.instance_limit() if limit is None else limit
        self.min_connections = settings.min_connections
        self.closed = False
        self.generation = 0
        self._ids = itertools.count(1)
        self._slots: set[Slot] = set()
        self._idle: deque[Slot] = deque()  # least recently used first
        # Which idle slot acquire() takes: the most recently used (the default, so
        # the surplus ages out by idle_timeout), or the least recently used (every
        # connection in turn, as psycopg_pool does; its drop-in face sets it for a
        # pool that cannot shrink, min = max).
        self.lru = False
        self.waiters: OrderedDict[Waiter, None] = OrderedDict()
        """The queue, oldest first (priority waiters ahead). Read-only for callers."""
        self._deadlines: list[tuple[float, Waiter]] = []
        self.n_connecting = 0
        self.n_reserved = 0
        self.n_in_use = 0
        self.n_resetting = 0
        self.n_closing = 0
        self.failures = 0
        self.backoff_until = -_INF
        self.last_connect_error: BaseException | None = None
        self.next_wake = _INF
        self._lowered_from = 0  # budget when the limit was last lowered, while surplus remains
        self.pending: Plan | None = None
        """The outbox: what events decided since the last :meth:`take_plan` (``None``: nothing).

        Read-only for callers: a shell tests it to skip a flush with nothing in it."""
        # counters
        self.acquires = 0
        self.timeouts = 0
        self.connects = 0
        self.connect_errors = 0
        self.closed_for: dict[CloseReason, int] = dict.fromkeys(CloseReason, 0)
        self.wait_time = 0.0
        self.usage_time = 0.0
        self.queued = 0  # acquires that had to wait
        self.returned_broken = 0  # connections that came back dead
        self._saturation_check = _INF  # when tick() next looks for saturation
        self.saturation_warnings = 0
        self.sinks: tuple[TimingSink, ...] = ()  # see observe()

    # ------------------------------------------------------------------ counts

    @property
    def size(self) -> int:
        """Live connections, open or opening: everything but CLOSING."""
        return len(self._slots) - self.n_closing

    @property
    def n_idle(self) -> int:
        return len(self._idle)

    @property
    def n_waiting(self) -> int:
        return len(self.waiters)

    @property
    def budget_used(self) -> int:
        """What counts against the limit: live slots, and closing ones unless soft mode forgives."""
        closing = self.n_closing
        if self.settings.limit_mode == "soft":
            closing = max(0, closing - self.settings.soft_overflow)
        live: int = len(self._slots) - self.n_closing
        return live + closing

    @property
    def floor(self) -> int:
        return min(self.min_connections, self.limit)

    def borrowed_by(self, owner: object) -> int:
        """How many slots are IN_USE with ``owner`` as their :attr:`Slot.owner` (O(size))."""
        return sum(1 for s in self._slots if s.state is SlotState.IN_USE and s.owner == owner)

    def oldest_waiter_age(self, now: float) -> float:
        try:  # one step of iteration: safe when read from an exporter's thread
            w = next(iter(self.waiters), None)
        except RuntimeError:  # the queue changed under a reader in another thread
            return 0.0
        return 0.0 if w is None else now - w.enqueued_at

    # ------------------------------------------------------------------ outbox

    def _out(self) -> Plan:
        plan = self.pending
        if plan is None:
            plan = self.pending = Plan()
        return plan

    def take_plan(self) -> Plan | None:
        """The actions accumulated since the last call, or ``None`` if there are none."""
        plan, self.pending = self.pending, None
        return plan

    def _poke(self, deadline: float) -> None:
        if deadline < self.next_wake:
            self.next_wake = deadline
            self._out().wake_ticker = True

    # ------------------------------------------------------------------ acquire

    def acquire(self, now: float) -> Slot | None:
        """Take an idle slot at once, or return ``None`` if the caller must queue.

        Never barges: with anyone queued, it returns ``None``. Idle slots past
        their lifetime or idle timeout found on the way are closed (MRU first).
        The slot returned is IN_USE, and its ``ping`` says whether the caller
        must ping it before lending it (:meth:`should_ping`, answered here to
        spare the hot path a call).
        """
        if self.closed:
            raise PoolClosed(f"pool is closed ({self.describe()})")
        if self.waiters:
            return None
        idle = self._idle
        while idle:
            slot = idle.popleft() if self.lru else idle.pop()
            if now >= slot.expires_at:
                self._close(slot, CloseReason.LIFETIME)
                continue
            timeout = self._idle_timeout
            if timeout is not None and now - slot.idle_since >= timeout and self.size > self.floor:
                self._close(slot, CloseReason.IDLE)
                continue
            slot.state = _IN_USE
            slot.borrowed_at = now
            slot.lease += 1
            self.n_in_use += 1
            self.acquires += 1
            after = self._ping_after  # should_ping(), inlined
            if after is None:
                slot.ping = False
            else:
                since = slot.idle_since if slot.idle_since > slot.handed_at else slot.handed_at
                slot.ping = slot.checked_gen < self.generation or now - since >= after
            if self.pending is not None:  # something was closed on the way: refill the floor
                self._grow(now)
            return slot
        if self.pending is not None:
            self._grow(now)
        return None

    def fleet_demand(self, busy_before: float, span: float, now: float) -> tuple[int, float]:
        """What a fleet member reports as its demand, and the busy time to measure the next from.

        The connections asked for now (in use, handed over, waited for, being
        reset; at least the warm floor), or the average since the last report
        when that is more: ``busy_before`` is the busy time (usage plus
        waiting, in connection-seconds, up to ``now``: borrows and waits still
        running count up to now, so a long wait that ends is not counted
        whole in a short span) returned then, ``span`` the seconds since. So a
        member whose callers come and go is neither missed nor counted at its
        peak.
        """
        busy = self.usage_time + self.wait_time
        busy += sum(now - s.borrowed_at for s in self._slots if s.state is SlotState.IN_USE)
        busy += sum(now - w.enqueued_at for w in self.waiters)
        average = (busy - busy_before) / span if span > 0 else 0.0
        asked = self.n_in_use + self.n_reserved + self.n_waiting + self.n_resetting
        asked = max(asked, self.min_connections)  # a warm floor asks for itself
        return max(asked, int(average + 0.5)), busy

    def idle_slots(self) -> list[Slot]:
        """The idle slots, least recently used first (a snapshot)."""
        return list(self._idle)

    def take_for_check(self, slot: Slot, now: float) -> bool:
        """Take a specific idle slot out to check it (IN_USE, not counted as a borrow).

        Returns ``False`` if it is no longer idle. Give it back with
        :meth:`release` (or :meth:`pinged` with ``ok=False`` to evict it).
        """
        if slot.state is not SlotState.IDLE or self.waiters:
            return False
        self._idle.remove(slot)
        slot.state = SlotState.IN_USE
        slot.borrowed_at = now
        slot.lease += 1
        self.n_in_use += 1
        return True

    def enqueue(self, now: float, timeout: float | None, priority: bool = False) -> Waiter:
        """Queue a caller (after :meth:`acquire` returned ``None``) and grow for it if uncovered.

        ``priority`` puts it ahead of every ordinary waiter (after earlier
        priority ones): the fleet heartbeat uses it so that coordination is
        not starved by the pool's own callers. Ordinary waiters stay FIFO.
        """
        if self.closed:
            raise PoolClosed(f"pool is closed ({self.describe()})")
        max_waiting = self.settings.max_waiting
        if max_waiting is not None and len(self.waiters) >= max_waiting:
            raise TooManyWaiters(
                f"too many waiters: {len(self.waiters)} already queued, "
                f"max_waiting is {max_waiting} ({self.describe()})"
            )
        deadline = _INF if timeout is None else now + timeout
        if not self.waiters:  # callers start queuing: look for saturation a window later
            window = self.settings.saturation_warning
            if window is not None:
                check = self._saturation_check  # one still due stands (rate limit, flapping)
                self._saturation_check = now + window if check <= now else min(check, now + window)
                self._poke(self._saturation_check)
        w = Waiter(next(self._ids), now, deadline, priority)
        self.waiters[w] = None
        if priority:
            ahead = [q for q in self.waiters if q.priority and q is not w]
            self.waiters.move_to_end(w, last=False)
            for q in reversed(ahead):  # earlier priority waiters stay in front of it
                self.waiters.move_to_end(q, last=False)
        if not priority:  # the fleet heartbeat's own waits are not the callers'
            self.queued += 1
        if deadline < _INF:
            heapq.heappush(self._deadlines, (deadline, w))
            if len(self._deadlines) > 2 * len(self.waiters) + 64:
                self._compact_deadlines()
            self._poke(deadline)
        self._grow(now)
        return w

    def claim(self, w: Waiter, now: float) -> Slot:
        """A woken waiter takes the slot reserved for it (RESERVED → IN_USE)."""
        slot = w.slot
        if w.outcome is not _HANDED or slot is None:
            raise RuntimeError(f"waiter {w.id} holds no slot ({w.outcome})")
        w.slot = None
        slot.waiter = None
        slot.state = _IN_USE
        slot.borrowed_at = now
        slot.lease += 1
        self.n_reserved -= 1
        self.n_in_use += 1
        if not w.priority:
            self.acquires += 1
            self.wait_time += now - w.enqueued_at
        return slot

    def cancel(self, w: Waiter, now: float) -> None:
        """The waiter gave up (cancelled). A slot already reserved for it is passed on."""
        if w.outcome is None:
            if w in self.waiters:
                del self.waiters[w]
            w.outcome = _CANCELLED
            return
        if w.outcome is _HANDED and w.slot is not None:
            slot = w.slot
            w.slot = None
            slot.waiter = None
            self.n_reserved -= 1
            self._settle(slot, now)

    def should_ping(self, slot: Slot, now: float) -> bool:
        """Whether a freshly acquired slot must be pinged before the caller gets it."""
        after = self.settings.ping_after
        if after is None:
            return False
        # A slot handed from borrower to waiter was in use until then: it is idle
        # since the later of the two (idle_since itself stays as the saturation
        # warning needs it: the last time the slot was really free).
        idle_since = max(slot.idle_since, slot.handed_at)
        return slot.checked_gen < self.generation or now - idle_since >= after

    def pinged(self, slot: Slot, ok: bool, now: float) -> None:
        """Report a ping's result. A failed ping evicts the slot and makes the others suspect."""
        if ok:
            slot.checked_gen = self.generation
            return
        self.release(slot, now, broken=True)
        self.returned_broken -= 1  # found dead on the way out, not returned dead

    # ------------------------------------------------------------------ release

    def release(
        self,
        slot: Slot,
        now: float,
        broken: bool = False,
        reset: bool = False,
        idle_since: float | None = None,
    ) -> None:
        """A borrower gives ``slot`` back.

        ``broken``: the connection is dead (closed, or a connection-class error);
        it is closed and the generation bumped, so idle slots get pinged before
        reuse. ``reset``: the connection must be reset before reuse. Otherwise
        it goes to the oldest waiter or to the idle set — unless it is past its
        lifetime or the pool is over its limit, when it is closed instead.

        ``idle_since``: the borrow was the pool's own bookkeeping (a fleet
        heartbeat's statement), not a caller's: the connection goes back to the
        idle set as idle since then, so ``idle_timeout`` still ends it (a
        heartbeat each second would otherwise keep an unused connection, and
        the member's lease, for ever).
        """
        if slot.state is not _IN_USE:
            raise RuntimeError(f"slot {slot.id} released while {slot.state.value}")
        self.n_in_use -= 1
        self.usage_time += now - slot.borrowed_at
        if broken:
            self.returned_broken += 1
            self.generation += 1
            self._close(slot, CloseReason.BROKEN)
            self._grow(now)
            return
        if reset and not self.closed:
            slot.state = _RESETTING
            self.n_resetting += 1
            self._out().reset.append(slot)
            return
        self._settle(slot, now, idle_since)

    def retire(self, slot: Slot) -> None:
        """Close a borrowed ``slot`` when it comes back, as at the end of its lifetime."""
        slot.expires_at = -_INF

    def reset_done(self, slot: Slot, ok: bool, now: float) -> None:
        """Report a reset's result: a failed reset discards the connection."""
        if slot.state is not _RESETTING:
            raise RuntimeError(f"slot {slot.id} reset while {slot.state.value}")
        self.n_resetting -= 1
        if not ok:
            self.generation += 1
            self._close(slot, CloseReason.BROKEN)
            self._grow(now)
            return
        self._settle(slot, now)

    def _settle(self, slot: Slot, now: float, idle_since: float | None = None) -> None:
        """Put a usable, unowned slot where it belongs: closed, to a waiter, or idle.

        ``idle_since`` (earlier than ``now``): idle since then, in its place by
        recency (see :meth:`release`).
        """
        # Invariants: slot is counted in no state counter yet; it is in self._slots.
        if self.closed:
            self._close(slot, CloseReason.POOL_CLOSED)
            return
        if now >= slot.expires_at:
            self._close(slot, CloseReason.LIFETIME)
            self._grow(now)
            return
        # Surplus is judged on live connections: slots still closing block new
        # connects (strict mode) but are no reason to drop a usable one.
        size = len(self._slots) - self.n_closing  # (self.size; the slot still counts)
        if size > self.limit:
            self._close(slot, CloseReason.RESIZE)
            return
        if self.waiters:
            w, _ = self.waiters.popitem(last=False)
            slot.state = _RESERVED
            slot.waiter = w
            slot.handed_at = now  # in use until now: not idle, whatever idle_since says
            w.slot = slot
            w.outcome = _HANDED
            self.n_reserved += 1
            self._out().wake.append(w)
            return
        slot.state = _IDLE
        if idle_since is not None and idle_since < now:
            slot.idle_since = idle_since
            i = len(self._idle)  # the idle deque stays in recency order
            while i and self._idle[i - 1].idle_since > idle_since:
                i -= 1
            self._idle.insert(i, slot)
        else:
            slot.idle_since = now
            self._idle.append(slot)
        if slot.expires_at < self.next_wake:
            self._poke(slot.expires_at)
        # _poke_idle(), inlined (this runs on every return). size > floor, that is
        # size > min(min_connections, limit), is size > min_connections here, where
        # size <= limit.
        timeout = self._idle_timeout
        if timeout is not None and size > self.min_connections:
            deadline = self._idle[0].idle_since + timeout
            if deadline < self.next_wake:
                self._poke(deadline)

    def _poke_idle(self) -> None:
        """Make sure the ticker wakes for the least recently used idle slot's idle timeout.

        That deadline matters only while the pool is above its floor (the tick
        ignores it at the floor), so the events that raise the size above the
        floor, or lower the floor, call this too.
        """
        timeout = self._idle_timeout
        # size > floor, without the two property calls: this runs on every return.
        if (
            timeout is not None
            and self._idle
            and len(self._slots) - self.n_closing > min(self.min_connections, self.limit)
        ):
            deadline = self._idle[0].idle_since + timeout
            if deadline < self.next_wake:
                self._poke(deadline)

    # ------------------------------------------------------------------ connects

    def connected(self, slot: Slot, conn: Any, now: float, jitter: float) -> None:
        """A planned connect succeeded. ``jitter`` in [0, 1) scales the lifetime's jitter."""
        if slot.state is not SlotState.CONNECTING:
            raise RuntimeError(f"slot {slot.id} connected while {slot.state.value}")
        self.n_connecting -= 1
        self.connects += 1
        self.failures = 0
        self.backoff_until = -_INF
        slot.conn = conn
        slot.connected_at = now
        slot.idle_since = now
        slot.checked_gen = self.generation
        lifetime = self.settings.connection_lifetime
        if lifetime is not None:  # min(): expire_all() may have run while it connected
            slot.expires_at = min(
                slot.expires_at, now + lifetime * (1.0 - self.settings.lifetime_jitter * jitter)
            )
        self._settle(slot, now)
        self._grow(now)  # a connect finished: room for the next one, if still wanted

    def connect_failed(
        self, slot: Slot, error: BaseException | None, now: float, jitter: float
    ) -> None:
        """A planned connect failed (``error``) or was abandoned (``None``: no backoff).

        After a failure, no connect starts before a backoff delay that doubles
        with each consecutive failure, from ``backoff_initial`` to
        ``backoff_max``, drawn from its upper half by ``jitter``.
        """
        if slot.state is not SlotState.CONNECTING:
            raise RuntimeError(f"slot {slot.id} failed while {slot.state.value}")
        self.n_connecting -= 1
        self._slots.discard(slot)
        slot.state = SlotState.CLOSED
        if error is not None:
            self.connect_errors += 1
            self.last_connect_error = error
            self.failures += 1
            s = self.settings
            delay = min(s.backoff_max, s.backoff_initial * 2.0 ** min(self.failures - 1, 60))
            self.backoff_until = now + delay * (0.5 + 0.5 * jitter)
            if s.fail_fast:
                self._fail_uncovered(now)
        self._grow(now)

    def _fail_uncovered(self, now: float) -> None:
        """fail_fast: waiters that nothing can serve now get the connect error.

        Nothing can serve a waiter when no connection is borrowed, reserved,
        being reset or idle (none can come back to it) and no pending connect
        covers it: the newest waiters beyond the pending connects fail, the
        oldest keep their place for the connects still under way.
        """
        if self.n_in_use or self.n_reserved or self.n_resetting or self._idle:
            return
        keep = self.n_connecting
        out = self._out()
        for w in list(self.waiters)[keep:]:
            del self.waiters[w]
            w.outcome = Outcome.CONNECT_FAILED
            out.wake.append(w)

    def _wanted(self) -> int:
        uncovered = len(self.waiters) - self.n_connecting - self.n_resetting
        return max(uncovered, self.floor - self.size)

    def _grow(self, now: float) -> None:
        """Plan connects for uncovered waiters and the floor, within limit, concurrency, backoff."""
        if self.closed:
            return
        room = self.limit - self.budget_used
        if room <= 0:  # at the limit (the common case under load): nothing to plan
            return
        # self._wanted(), without its three calls: this runs on every return.
        want = max(
            len(self.waiters) - self.n_connecting - self.n_resetting,
            min(self.min_connections, self.limit) - (len(self._slots) - self.n_closing),
        )
        if want <= 0:
            return
        if now < self.backoff_until:
            self._poke(self.backoff_until)
            return
        n = min(want, room, self.settings.max_connecting - self.n_connecting)
        if n <= 0:
            return
        out = self._out()
        for _ in range(n):
            slot = Slot(next(self._ids))
            self._slots.add(slot)
            self.n_connecting += 1
            out.connect.append(slot)
        self._poke_idle()

    # ------------------------------------------------------------------ closing

    def _close(self, slot: Slot, reason: CloseReason) -> None:
        # Invariants: slot is counted in no state counter and is in no queue.
        slot.state = SlotState.CLOSING
        slot.close_reason = reason
        self.n_closing += 1
        self.closed_for[reason] += 1
        self._out().close.append(slot)

    def closed_conn(self, slot: Slot, now: float) -> None:
        """A CLOSING slot's connection is closed: the slot is gone and its budget is free."""
        if slot.state is not SlotState.CLOSING:
            raise RuntimeError(f"slot {slot.id} closed while {slot.state.value}")
        self.n_closing -= 1
        self._slots.discard(slot)
        slot.state = SlotState.CLOSED
        self._grow(now)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Time passed: time out waiters, retire idle slots, grow after backoff; set next_wake."""
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, w = heapq.heappop(dl)
            if w.outcome is None:
                del self.waiters[w]
                w.outcome = Outcome.TIMEOUT
                if not w.priority:
                    self.timeouts += 1
                self._out().wake.append(w)
        timeout = self.settings.idle_timeout
        idle = self._idle
        if idle:
            keep: list[Slot] = []
            changed = False
            for slot in idle:  # least recently used first
                if now >= slot.expires_at:
                    self._close(slot, CloseReason.LIFETIME)
                    changed = True
                elif (
                    timeout is not None
                    and now - slot.idle_since >= timeout
                    and self.size - 1 >= self.floor
                ):
                    # size counts this slot until _close marks it CLOSING
                    self._close(slot, CloseReason.IDLE)
                    changed = True
                else:
                    keep.append(slot)
            if changed:
                self._idle = deque(keep)
        self._grow(now)
        if now >= self._saturation_check:
            self._check_saturation(now)
        self.next_wake = self._earliest(now)

    def _check_saturation(self, now: float) -> None:
        """Rate-limited saturation report, due one window after callers started queuing.

        Saturated means: callers are queued now, the pool has no room to grow
        for them (its budget is at the limit), and no connection has been
        free (idle, or newly opened) for at least ``saturation_warning``
        seconds, so every connection went from one borrower straight to the
        next. Reported in the plan at most once per window.
        """
        window = self.settings.saturation_warning
        if window is None or not self.waiters:
            self._saturation_check = _INF
            return
        # With no connection at all (a limit of 0), since the oldest caller queued.
        oldest = next(iter(self.waiters)).enqueued_at
        last_free = max((s.idle_since for s in self._slots if s.idle_since < _INF), default=oldest)
        if now - last_free < window:
            self._saturation_check = last_free + window
            return
        self._saturation_check = now + window
        if self.budget_used >= self.limit:
            self.saturation_warnings += 1
            self._out().saturated_for = now - last_free

    def _earliest(self, now: float) -> float:
        t = _INF
        dl = self._deadlines
        while dl and dl[0][1].outcome is not None:
            heapq.heappop(dl)
        if dl:
            t = dl[0][0]
        idle = self._idle
        if idle:
            t = min(t, *(s.expires_at for s in idle))
        timeout = self.settings.idle_timeout
        if timeout is not None and self.size > self.floor:
            # The least recently used idle slot's idle deadline; with none idle,
            # the earliest any slot given back from now on could reach.
            t = min(t, (idle[0].idle_since if idle else now) + timeout)
        # And the lifetimes still ahead of the slots out of the idle set: without
        # them, a tick while every connection is borrowed leaves next_wake at
        # infinity, and the next return (which goes idle with a lifetime) wakes
        # the ticker again, once per return.
        for slot in self._slots:
            if slot.state in _OUT and now < slot.expires_at < t:
                t = slot.expires_at
        if self.waiters:  # a check is only due while callers queue
            t = min(t, self._saturation_check)
        if self.backoff_until > now and self._wanted() > 0:
            t = min(t, self.backoff_until)
        return t

    def _compact_deadlines(self) -> None:
        self._deadlines = [(d, w) for d, w in self._deadlines if w.outcome is None]
        heapq.heapify(self._deadlines)

    # ------------------------------------------------------------------ limits

    def resize(
        self,
        limit: int,
        now: float,
        floor: int | None = None,
        *,
        adopt: Any = None,
        jitter: float = 0.0,
    ) -> Slot | None:
        """Set the limit, with trio ``CapacityLimiter.total_tokens`` semantics.

        Raising it lets queued waiters grow the pool at once. Lowering it closes
        idle surplus now and busy surplus as it comes back; a connection in use
        is never revoked, so the budget can stay above the new limit until then.
        ``floor`` sets ``min_connections`` too (at most the new limit): raising
        it opens connections in the background, lowering it lets idle ones age out.

        ``adopt``: a connection opened outside the pool (the fleet opens one to
        ask for its first grant) taken in as the first unit of the new limit,
        before any connect is planned, as if the pool had opened it
        (``jitter`` as for :meth:`connected`); it goes to the oldest waiter.
        Returns its slot, or ``None`` when the limit leaves no room (or the
        pool is closed): the caller then closes it.
        """
        check_int("max_connections", limit, low=0)
        if floor is not None:
            check_int("min_connections", floor, low=0, high=limit)
            self.min_connections = floor
        old = self.limit
        self.limit = limit
        if limit < old:
            self._lowered_from = max(self._lowered_from, self.budget_used)
            while self._idle and self.size > limit:
                self._close(self._idle.popleft(), CloseReason.RESIZE)
        adopted: Slot | None = None
        if adopt is not None and not self.closed and self.budget_used < limit:
            adopted = Slot(next(self._ids))
            self._slots.add(adopted)
            self.n_connecting += 1
            self.connected(adopted, adopt, now, jitter)  # settles it, then grows
        else:
            self._grow(now)
        self._poke_idle()  # a lower floor can make idle deadlines count
        return adopted

    def expire_all(self, now: float) -> None:
        """Retire every current connection: idle ones now, busy ones when they come back."""
        for slot in self._slots:
            slot.expires_at = now
        while self._idle:
            self._close(self._idle.popleft(), CloseReason.LIFETIME)
        self._grow(now)

    def close(self, now: float) -> None:
        """Close the pool: queued waiters are closed out and idle slots closed now.

        Busy, connecting and resetting slots close as they come back.
        """
        if self.closed:
            return
        self.closed = True
        out = self._out()
        for w in self.waiters:
            w.outcome = Outcome.CLOSED
            out.wake.append(w)
        self.waiters.clear()
        self._deadlines.clear()
        while self._idle:
            self._close(self._idle.popleft(), CloseReason.POOL_CLOSED)

    def remaining(self) -> list[Slot]:
        """Every slot not yet CLOSED (for a forced shutdown)."""
        return list(self._slots)

    def forget(self, slot: Slot) -> None:
        """Drop a slot whose connection was terminated outside the normal flow (forced close)."""
        if slot not in self._slots:
            return
        state = slot.state
        if state is SlotState.IDLE:
            self._idle.remove(slot)
        elif state is SlotState.RESERVED:
            self.n_reserved -= 1
            if slot.waiter is not None:
                slot.waiter.slot = None
                slot.waiter.outcome = Outcome.CLOSED
                slot.waiter = None
        elif state is SlotState.IN_USE:
            self.n_in_use -= 1
        elif state is SlotState.RESETTING:
            self.n_resetting -= 1
        elif state is SlotState.CONNECTING:
            self.n_connecting -= 1
        elif state is SlotState.CLOSING:
            self.n_closing -= 1
        self._slots.discard(slot)
        slot.state = SlotState.CLOSED

    # ------------------------------------------------------------------ timings

    def observe(self, sink: TimingSink) -> None:
        """Report every acquire's wait and every borrow's use time to ``sink`` from now on.

        Until a sink is attached the planner does no per-event timing work at
        all: attaching the first one switches this planner to a subclass whose
        ``acquire``, ``claim`` and ``release`` also report; detaching the last
        one (:meth:`unobserve`) switches it back. Attaching twice is a no-op.
        """
        if any(s is sink for s in self.sinks):
            return
        self.sinks = (*self.sinks, sink)
        if type(self) is Planner:
            self.__class__ = _TimedPlanner

    def unobserve(self, sink: TimingSink) -> None:
        """Stop reporting to ``sink`` (no-op if it is not attached)."""
        self.sinks = tuple(s for s in self.sinks if s is not sink)
        if not self.sinks and self.__class__ is not Planner:
            self.__class__ = Planner

    # ------------------------------------------------------------------ inspection

    def describe(self) -> str:
        """Counts for messages: ``size 3 (in use 2, idle 1, connecting 0), waiting 4, limit 10``."""
        return (
            f"size {self.size} (in use {self.n_in_use + self.n_reserved}, idle {len(self._idle)}, "
            f"connecting {self.n_connecting}), waiting {len(self.waiters)}, limit {self.limit}"
        )

    def check(self) -> None:
        """Assert the structural invariants in the module docstring (for tests; O(size + waiters)).

        It also forgets a past lowering of the limit once the budget is back
        under it, so it must run after every event for that check to be tight.
        """
        counts = dict.fromkeys(SlotState, 0)
        for slot in self._slots:
            counts[slot.state] += 1
        assert counts[SlotState.CLOSED] == 0, "a CLOSED slot is still tracked"
        assert counts[SlotState.CONNECTING] == self.n_connecting, (counts, self.n_connecting)
        assert counts[SlotState.RESERVED] == self.n_reserved, (counts, self.n_reserved)
        assert counts[SlotState.IN_USE] == self.n_in_use, (counts, self.n_in_use)
        assert counts[SlotState.RESETTING] == self.n_resetting, (counts, self.n_resetting)
        assert counts[SlotState.CLOSING] == self.n_closing, (counts, self.n_closing)
        assert counts[SlotState.IDLE] == len(self._idle), (counts, len(self._idle))
        assert len(set(map(id, self._idle))) == len(self._idle), "a slot is idle twice"
        for slot in self._idle:
            assert slot.state is SlotState.IDLE
            assert slot in self._slots
        assert all(a.idle_since <= b.idle_since for a, b in itertools.pairwise(self._idle)), (
            "idle deque out of recency order"
        )
        for slot in self._slots:
            if slot.state is SlotState.RESERVED:
                w = slot.waiter
                assert w is not None
                assert w.slot is slot
                assert w.outcome is Outcome.HANDED
                assert w not in self.waiters
            else:
                assert slot.waiter is None, slot
        for w in self.waiters:
            assert w.slot is None, w
            assert w.outcome is None, w
        flags = [w.priority for w in self.waiters]
        assert flags == sorted(flags, reverse=True), "a priority waiter behind an ordinary one"
        ids = [w.id for w in self.waiters if not w.priority]
        assert ids == sorted(ids), "waiters out of FIFO order"
        prio = [w.id for w in self.waiters if w.priority]
        assert prio == sorted(prio), "priority waiters out of order"
        if self._idle:
            assert not self.waiters, "a slot sits idle while callers wait"
            assert self.size <= self.limit, "idle surplus above the limit"
        if self.budget_used > self.limit:
            assert self._lowered_from >= self.budget_used, (
                f"budget {self.budget_used} above limit {self.limit} without a lowering"
            )
        else:
            self._lowered_from = 0
        overflow = self.settings.soft_overflow if self.settings.limit_mode == "soft" else 0
        assert len(self._slots) <= max(self.limit, self._lowered_from) + overflow, (
            "open connections above limit + soft overflow"
        )
        assert self.n_connecting <= self.settings.max_connecting
        if self.closed:
            assert not self.waiters
            assert not self._idle


class _TimedPlanner(Planner):
    """A :class:`Planner` with timing sinks attached: the same decisions, plus reports.

    Every acquire that gets a slot reports its wait (0.0 when an idle one was
    taken at once, the time queued when a waiter claims its slot), exactly
    when :attr:`Planner.acquires` counts one, so a fleet heartbeat's own
    waits are left out. Every release reports how long the slot was
    borrowed, as :attr:`Planner.usage_time` adds it up (the pool's own
    borrows for checks and heartbeats included).
    """

    def acquire(self, now: float) -> Slot | None:
        slot = super().acquire(now)
        if slot is not None:
            for sink in self.sinks:
                sink.wait(0.0)
        return slot

    def claim(self, w: Waiter, now: float) -> Slot:
        slot = super().claim(w, now)
        if not w.priority:
            for sink in self.sinks:
                sink.wait(now - w.enqueued_at)
        return slot

    def release(
        self,
        slot: Slot,
        now: float,
        broken: bool = False,
        reset: bool = False,
        idle_since: float | None = None,
    ) -> None:
        borrowed_at = slot.borrowed_at
        super().release(slot, now, broken, reset, idle_since)
        for sink in self.sinks:
            sink.use(now - borrowed_at)
