"""Helpers shared by the engine tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from elasticpool import Pool
from elasticpool._state import SlotState
from elasticpool.testing import FakeConnector


def assert_consistent(pool: Pool[Any], connector: FakeConnector) -> None:
    """The planner's invariants hold and the fake's open connections are exactly the pool's."""
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


async def wait_until(predicate: Callable[[], bool], *, limit: int = 10_000) -> None:
    """Let other tasks run until ``predicate()`` holds (a checkpoint loop, no wall-clock sleep)."""
    for _ in range(limit):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never became true")


async def settle(pool: Pool[Any], *, step: float = 0.01, limit: int = 100_000) -> None:
    """In virtual time: let background connects, resets and closes finish.

    Polls the pool's own counts (there is no event for "nothing in flight");
    each poll lets the mock clock jump, so this costs no real time.
    """
    for _ in range(limit):
        stats = pool.stats()
        if not (stats.connecting or stats.resetting or stats.closing):
            return
        await anyio.sleep(step)
    raise AssertionError(f"background work never settled: {pool.stats()}")


async def eventually(
    probe: Callable[[], Any],
    predicate: Callable[[Any], bool],
    what: str,
    *,
    bound: float = 10.0,
    poll: float = 0.02,
) -> Any:
    """Poll ``probe()`` (sync or async) until ``predicate(value)`` holds; return that value.

    Only for effects that have no event to wait on (the server's, or a pool's
    background work). Fails with ``what`` and the last value after ``bound``
    seconds.
    """
    value: Any = None
    try:
        with anyio.fail_after(bound):
            while True:
                value = probe()
                if hasattr(value, "__await__"):
                    value = await value
                if predicate(value):
                    return value
                await anyio.sleep(poll)
    except TimeoutError:
        raise AssertionError(f"{what} (after {bound:g}s, last seen: {value!r})") from None
