"""Background work that outlives the call that starts it: one spawner, one runner.

A pool outlives the call that opens it (``await pool.open()``), so its
background work cannot live in a task group of the caller's. :func:`spawn`
runs one coroutine outside the caller's task tree: on asyncio a plain task,
kept referenced until it ends; on trio a system task. A failure is logged,
never raised (nobody awaits the task).

:class:`Runner` is what :class:`~elasticpool.Pool` and
:class:`~elasticpool.replicas.RoutingPool` keep their background tasks in: a
task group hosted by one spawned task, started by :meth:`Runner.start` and
cancelled as a whole by :meth:`Runner.stop`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

__all__ = ["Runner", "spawn"]

logger = logging.getLogger("elasticpool")

# asyncio keeps only weak references to tasks: these are the strong ones, until each ends.
_background: set[asyncio.Task[None]] = set()


async def _logged(coro: Coroutine[Any, Any, Any], what: str) -> None:
    try:
        await coro
    except Exception as exc:
        logger.warning("%s: background task failed: %r", what, exc)


def spawn(coro: Coroutine[Any, Any, Any], what: str) -> None:
    """Run ``coro`` in the background, outside the caller's task tree; log its failure.

    ``what`` names the owner in the log line (``"pool 'api'"``). On asyncio
    the task is kept referenced until it ends; on trio it is a system task,
    cancelled when the run ends. It must be called from inside a run.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio  # noqa: PLC0415 - only ever needed on trio

        async def system_task() -> None:
            await _logged(coro, what)

        trio.lowlevel.spawn_system_task(system_task)
        return
    task = loop.create_task(_logged(coro, what))
    _background.add(task)
    task.add_done_callback(_background.discard)


class Runner:
    """A task group that outlives the call that starts it: one owner's background work.

    :meth:`start` spawns (see :func:`spawn`) a task that hosts a task group
    and returns once it runs; :meth:`start_soon` adds work to it while it
    runs; :meth:`stop` cancels all of it and waits until it is gone. It
    runs once: it cannot be started again after it stopped.

    Invariants: :attr:`tg` is the task group while it runs, else ``None``;
    :attr:`stopped` is true once the hosting task has ended (or never
    started).
    """

    __slots__ = ("_done", "_stop", "_what", "tg")

    def __init__(self, what: str) -> None:
        self._what = what
        self.tg: anyio.abc.TaskGroup | None = None
        """The running task group (``None`` before :meth:`start` and after :meth:`stop`)."""
        self._stop: anyio.Event | None = None
        self._done: anyio.Event | None = None

    @property
    def stopped(self) -> bool:
        """Whether nothing runs: not started yet, or its hosting task has ended."""
        return self._done is None or self._done.is_set()

    async def start(self, *first: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start hosting background work; ``first`` are started before this returns.

        It returns once the task group runs; the wait for that is shielded,
        so an owner cancelled meanwhile still has a running runner to stop.
        """
        started = anyio.Event()
        self._stop = anyio.Event()
        self._done = anyio.Event()
        spawn(self._host(started, first), self._what)
        with anyio.CancelScope(shield=True):  # the host is spawned: see it started
            await started.wait()

    async def _host(
        self, started: anyio.Event, first: tuple[Callable[[], Coroutine[Any, Any, Any]], ...]
    ) -> None:
        assert self._stop is not None
        assert self._done is not None
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                for fn in first:
                    tg.start_soon(fn)
                started.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        except Exception:  # pragma: no cover - a bug in our own background code
            logger.exception("%s: background runner failed", self._what)
        finally:
            self.tg = None
            self._done.set()

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the task group (it must be running)."""
        assert self.tg is not None, "the runner is not running"
        self.tg.start_soon(fn, *args)

    def stop_nowait(self) -> None:
        """Ask the task group to cancel everything in it, without waiting for that."""
        if self._stop is not None:
            self._stop.set()

    async def stop(self) -> None:
        """Cancel everything in the task group and wait until it has ended (not shielded)."""
        self.stop_nowait()
        await self.wait_stopped()

    async def wait_stopped(self) -> None:
        """Wait until the task group has ended (at once if it never started)."""
        if self._done is not None:
            await self._done.wait()
