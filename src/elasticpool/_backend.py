"""The few event-loop primitives the pool's hot path needs, bound once per pool.

anyio's generic entry points (``anyio.current_time()``,
``anyio.lowlevel.checkpoint()``) look the running backend up on every call;
on the acquire/release path that lookup costs more than the pool's own work.
A pool lives on one event loop, so it binds these once, when it opens.
Semantics are exactly anyio's: asyncio's ``sleep(0)`` is what anyio's
checkpoint does on asyncio, and anyio's cancel scopes act on it as usual.
"""

from __future__ import annotations

import asyncio
import functools
import types
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


def current_backend() -> Backend:
    """The primitives of the event loop running now (asyncio or trio)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return Backend(loop.time, asyncio.sleep, lambda: _FutureWaker(loop), _task_getter(loop))
    try:
        import trio  # noqa: PLC0415 - only on trio

        trio.lowlevel.current_task()
    except (ImportError, RuntimeError):
        return Backend(
            anyio.current_time, anyio.sleep, anyio.Event, lambda: anyio.get_current_task().id
        )
    return Backend(trio.current_time, trio.sleep, trio.Event, trio.lowlevel.current_task)
