"""Helpers shared by every folder of tests (import them as ``from ..helpers import ...``).

* names: :func:`unique_name`;
* waiting: :func:`eventually` (poll anything, sync or async, within a bound),
  :func:`settle` (a pool's background work is done), :func:`wait_until`
  (a checkpoint loop, no clock at all);
* the engine's invariants: :func:`assert_consistent`.

A server of a module's own (to restart, stop or configure) is the
``private_server`` / ``private_server_factory`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio

from elasticpool import Pool, PoolStats
from elasticpool._state import SlotState
from elasticpool.testing import FakeConnector

BOUND = 10.0
"""Default bound, in seconds, on one wait for an effect that has no event."""

POLL = 0.01
"""Default seconds between two looks while waiting for such an effect."""


def unique_name(label: str) -> str:
    """A name no other test (or earlier run) uses: ``ep_<label>_<10 hex digits>``.

    Dashes in ``label`` become underscores, so with a lowercase ``label`` the
    name is a valid unquoted identifier (a table, a role) as well as an
    ``application_name``; keep ``label`` short (PostgreSQL cuts names at 63 bytes).
    """
    return f"ep_{label.replace('-', '_')}_{uuid.uuid4().hex[:10]}"


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


async def eventually(
    probe: Callable[[], Any],
    predicate: Callable[[Any], bool],
    what: str,
    *,
    bound: float = BOUND,
    poll: float = POLL,
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


async def settle(pool: Pool[Any], *, bound: float = BOUND) -> PoolStats:
    """Wait until ``pool`` has no connect, reset or close in flight; return its stats then.

    Polls the pool's own counts (there is no event for "nothing in flight").
    In trio's virtual time each poll lets the mock clock jump, so it costs no
    real time there.
    """
    stats: PoolStats = await eventually(
        pool.stats,
        lambda s: not (s.connecting or s.resetting or s.closing),
        "background work never settled",
        bound=bound,
    )
    return stats
