"""The few event-loop primitives the pool's hot path needs, bound once per pool.

anyio's generic entry points (``anyio.current_time()``,
``anyio.lowlevel.checkpoint()``) look the running backend up on every call;
on the acquire/release path that lookup costs more than the pool's own work.
A pool lives on one event loop, so it binds these once, when it opens.
Semantics are exactly anyio's: asyncio's ``sleep(0)`` is what anyio's
checkpoint does on asyncio, and anyio's cancel scopes act on it as usual.

``cancel_due(task, now)`` is the cancel half of a checkpoint without the schedule
half, as trio's ``checkpoint_if_cancelled()``: whether a checkpoint here would
raise, answered without yielding (an acquire that can lend at once asks it,
and checkpoints only when it says yes). On asyncio it reads anyio's cancel
scopes of the running task and asyncio's own pending ``Task.cancel()``: two
private corners (anyio's task states, ``Task._must_cancel``, both of which
anyio itself reads), checked when bound; if they are not as expected,
``cancel_due`` answers yes every time and every acquire checkpoints, as it
did before this existed.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

import anyio

__all__ = ["Backend", "current_backend"]


class Waker(Protocol):
    """A one-shot event: :meth:`set` once, :meth:`wait` by one task."""

    def set(self) -> None: ...

    def wait(self) -> Awaitable[Any]: ...


class _FutureWaker:
    """asyncio: a bare future is the cheapest thing one task can wait on."""

    __slots__ = ("_fut",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._fut: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self._fut.done():  # done: already set, or the waiter was cancelled
            self._fut.set_result(None)

    def wait(self) -> Awaitable[None]:
        return self._fut


class Backend(NamedTuple):
    now: Callable[[], float]
    """The event loop's clock (trio's honours a MockClock)."""
    sleep: Callable[[float], Awaitable[None]]
    """``sleep(0)`` is a checkpoint: a cancel point and a schedule point."""
    waker: Callable[[], Waker]
    """A fresh one-shot event for one waiting task."""
    current_task: Callable[[], object]
    """The running task (an identity for "who borrowed this"; never awaited)."""
    cancel_due: Callable[[object, float], bool]
    """``cancel_due(task, now)``: whether a checkpoint now would raise in ``task``, the running
    task as ``current_task()`` gave it, the clock reading ``now``: its cancel scope is
    cancelled or past its deadline, or a ``Task.cancel()`` waits to be delivered. May
    answer yes when unsure (a checkpoint then settles it); never yields."""


def _always(task: object, now: float) -> bool:
    """``cancel_due`` where the task's cancel state cannot be read: always checkpoint."""
    return True


def _anyio_cancel_due(current: Callable[[], object]) -> Callable[[object, float], bool]:
    """``cancel_due`` on asyncio: anyio's cancel scopes and a pending ``Task.cancel()``.

    anyio keeps each task's innermost cancel scope in a weak-key mapping (its
    ``_task_states``); a scope's parents are its ``_parent_scope`` chain, and
    a shielded one hides the rest, as in anyio's own ``checkpoint_if_cancelled``.
    A scope past its deadline counts as cancelled (its timer may not have run
    yet). ``Task._must_cancel`` is asyncio's "a cancel waits for the next
    suspension". Everything is checked once here, on the running task inside a
    real scope; ``_always`` if anything is not where it should be.
    """
    try:
        from anyio._backends._asyncio import (  # noqa: PLC0415 - only on asyncio
            CancelScope,
            _task_states,
        )

        states: dict[Any, Any] = _task_states.data  # type: ignore[attr-defined]
        task: Any = current()
        if not isinstance(task._must_cancel, bool):
            return _always
        with CancelScope(deadline=math.inf) as probe:
            state: Any = states.get(weakref.ref(task))
            scope = state.cancel_scope  # (None: AttributeError, caught below)
            if scope is not probe or not (
                probe._cancel_called is False
                and probe._shield is False
                and probe._deadline == math.inf
                and hasattr(probe, "_parent_scope")
            ):
                return _always
    except Exception:
        return _always
    ref = weakref.ref

    def cancel_due(task: Any, now: float) -> bool:
        if task is None or task._must_cancel:  # (None: not run by a task; let sleep(0) judge)
            return True
        state = states.get(ref(task))
        if state is not None:
            scope = state.cancel_scope
            while scope is not None:
                if scope._cancel_called or scope._deadline <= now:
                    return True
                if scope._shield:
                    return False
                scope = scope._parent_scope
        return False

    return cancel_due


def _task_getter(loop: asyncio.AbstractEventLoop) -> Callable[[], object]:
    """``asyncio.current_task`` for ``loop``, as cheap as this Python makes it.

    Before 3.12 ``asyncio.current_task`` is a Python function (about 230 ns
    here, a tenth of a borrow); the C module's task registry answers the same
    question in a dict lookup (30 ns). Same answer, checked when bound.
    """
    current = asyncio.current_task
    registry = getattr(asyncio.tasks, "_current_tasks", None)
    if not isinstance(current, types.FunctionType) or not isinstance(registry, dict):
        return functools.partial(current, loop)  # C already (3.12+), or no registry
    getter = functools.partial(registry.get, loop)
    if getter() is not current(loop):  # a loop or Python build where they differ
        return functools.partial(current, loop)
    return getter


def _clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, or ``time.monotonic`` itself when that is all ``loop.time`` does.

    asyncio's own loops read ``time.monotonic()`` in a Python method; calling
    the C function directly gives the same reading without the extra frame
    (the hot path reads the clock at every borrow and every return). Other
    loops (uvloop) keep their own ``time``.
    """
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def current_backend() -> Backend:
    """The primitives of the event loop running now (asyncio or trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        current = _task_getter(loop)
        return Backend(
            _clock(loop),
            asyncio.sleep,
            lambda: _FutureWaker(loop),
            current,
            _anyio_cancel_due(current),
        )
    try:
        import trio  # noqa: PLC0415 - only on trio

        trio.lowlevel.current_task()
    except (ImportError, RuntimeError):
        return Backend(
            anyio.current_time,
            anyio.sleep,
            anyio.Event,
            lambda: anyio.get_current_task().id,
            _always,
        )
    effective = trio.current_effective_deadline

    def trio_cancel_due(task: object, now: float) -> bool:
        # trio's own definition of checkpoint_if_cancelled(), plus a deadline
        # already past that the run loop has not processed yet.
        return effective() <= now

    return Backend(
        trio.current_time, trio.sleep, trio.Event, trio.lowlevel.current_task, trio_cancel_due
    )
