"""Cancellation swept across every phase of a borrow, in trio's virtual time."""

from __future__ import annotations

import anyio
import pytest
import trio.testing

from elasticpool import Pool
from elasticpool.testing import FakeConnector

from ..helpers import assert_consistent, settle

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> object:
    """Trio only, in virtual time, so every phase boundary is hit exactly."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


@pytest.mark.parametrize("cancel_at", [i * 0.25 for i in range(17)])
async def test_cancel_at_every_phase(cancel_at: float) -> None:
    """Cancel a borrower at each quarter second of ping (1 s), connect (1 s), work (1 s).

    The idle connection is pinged first (it sat idle past ping_after) and its
    ping is made to fail, so the borrower also waits for a fresh connect;
    then it works, and its return needs a reset. Afterwards the pool is
    consistent, the fake holds no stray connection, the cancellation reached
    the borrower, and the next borrower is served.
    """
    connector = FakeConnector(connect_delay=1.0, ping_delay=1.0, reset_delay=1.0)
    async with Pool(connector, max_connections=2, ping_after=0.5) as pool:
        async with pool.acquire() as warm:
            pass
        await anyio.sleep(1.5)  # virtual: make the idle connection due for a ping
        warm.kill()
        with anyio.move_on_after(cancel_at) as scope:
            async with pool.acquire() as conn:
                conn.begin()
                await conn.execute(1.0)
        if cancel_at != 3.0:  # at 3.0 the work and the deadline end together: either may win
            assert scope.cancelled_caught == (cancel_at < 3.0)
        await settle(pool)
        assert_consistent(pool, connector)
        async with pool.acquire() as conn:
            await conn.execute()
    assert connector.open == set()
