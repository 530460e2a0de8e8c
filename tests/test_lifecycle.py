"""Pool lifecycle: close() drains as soon as nothing is left.

Engine tests on the fake connector, on trio in virtual time (exact times).
"""

from __future__ import annotations

import anyio
import pytest
import trio.testing

from elasticpool import Pool
from elasticpool.testing import FakeConnector

pytestmark = pytest.mark.anyio


def trio_virtual_time() -> pytest.MarkDecorator:
    """Run the test on trio only, in virtual time (exact times can be asserted)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    return pytest.mark.parametrize(
        "anyio_backend", [pytest.param(("trio", {"clock": clock}), id="trio")]
    )


@trio_virtual_time()
@pytest.mark.parametrize("timeout", [None, 60.0])
async def test_close_returns_when_a_connect_in_flight_fails(timeout: float | None) -> None:
    """close() returns the moment a connect that was in flight when it started fails."""
    connector = FakeConnector(connect_delay=5)
    connector.fail_next(1)
    pool = Pool(connector, max_connections=2, min_connections=1)
    await pool.open()
    assert pool.stats().connecting == 1
    start = anyio.current_time()
    with anyio.fail_after(3600):  # virtual time: only there to end a hang
        await pool.close(timeout=timeout)
    assert anyio.current_time() == start + 5
    assert connector.connects_failed == 1
    assert connector.open == set()


@trio_virtual_time()
async def test_close_returns_when_a_hanging_connect_times_out() -> None:
    """close() returns at connect_timeout when a connect in flight hangs (a blackholed server)."""
    connector = FakeConnector()
    connector.hang_next(1)
    pool = Pool(connector, max_connections=2, min_connections=1, connect_timeout=7)
    await pool.open()
    start = anyio.current_time()
    await pool.close(timeout=60)
    assert anyio.current_time() == start + 7
    assert connector.open == set()
