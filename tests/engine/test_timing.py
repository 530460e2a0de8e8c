"""Exact times, in trio's virtual time (MockClock, autojump_threshold=0)."""

from __future__ import annotations

import types

import anyio
import pytest
import trio.testing

import elasticpool._pool
from elasticpool import Pool, PoolTimeout
from elasticpool.testing import FakeConnection, FakeConnector

from ..helpers import assert_consistent, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> object:
    """Trio only, in virtual time: sleeps cost nothing and times are exact."""
    return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})


class Recorder(FakeConnector):
    """A fake that writes down when connects start and when connections close."""

    def __init__(self, **kw: float) -> None:
        super().__init__(**kw)
        self.connect_times: list[float] = []
        self.close_times: dict[int, float] = {}

    async def connect(self) -> FakeConnection:
        self.connect_times.append(anyio.current_time())
        return await super().connect()

    async def close(self, conn: FakeConnection) -> None:
        await super().close(conn)
        self.close_times[conn.id] = anyio.current_time()


@pytest.fixture
def fixed_random(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every random draw of the pool is 0: no lifetime jitter, backoff at half its ceiling."""
    monkeypatch.setattr(elasticpool._pool, "random", types.SimpleNamespace(random=lambda: 0.0))


async def test_idle_connection_closes_exactly_at_idle_timeout() -> None:
    """An idle connection above the floor is closed idle_timeout seconds after its last use."""
    rec = Recorder()
    async with Pool(rec, max_connections=3, idle_timeout=30) as pool:
        async with pool.acquire() as conn:
            await anyio.sleep(5)
        released = anyio.current_time()
        await anyio.sleep(100)
        assert rec.close_times == {conn.id: released + 30}
        assert pool.stats().closed_idle == 1
        assert pool.stats().size == 0


async def test_surplus_ages_out_while_the_busy_one_stays() -> None:
    """With most-recently-used reuse, unused extras hit idle_timeout; the one in use never does."""
    rec = Recorder()
    async with Pool(rec, max_connections=3, idle_timeout=30, connection_lifetime=None) as pool:
        conns = [await pool.acquire() for _ in range(3)]
        start = anyio.current_time()
        for conn in conns:
            pool.release(conn)
        for _ in range(10):  # one caller every 10 s for 100 s
            await anyio.sleep(10)
            async with pool.acquire() as c:
                assert c is conns[-1]
        assert rec.close_times == {conns[0].id: start + 30, conns[1].id: start + 30}
        assert pool.stats().size == 1


async def test_floor_is_kept_when_idle() -> None:
    """Idle connections at or below min_connections are never closed for idleness."""
    rec = Recorder()
    settings = {"min_connections": 2, "idle_timeout": 10, "connection_lifetime": None}
    async with Pool(rec, max_connections=3, **settings) as pool:
        await pool.wait()
        conns = [await pool.acquire() for _ in range(3)]
        for conn in conns:
            pool.release(conn)
        await anyio.sleep(1000)
        assert pool.stats().size == 2
        assert len(rec.close_times) == 1


@pytest.mark.usefixtures("fixed_random")
async def test_lifetime_retires_idle_connection_exactly() -> None:
    """An idle connection is retired at its lifetime (here with no jitter drawn)."""
    rec = Recorder()
    async with Pool(rec, max_connections=2, idle_timeout=None, connection_lifetime=100) as pool:
        t0 = anyio.current_time()
        async with pool.acquire() as conn:
            pass
        await anyio.sleep(150)
        assert rec.close_times == {conn.id: t0 + 100}
        assert pool.stats().closed_lifetime == 1


@pytest.mark.usefixtures("fixed_random")
async def test_lifetime_is_checked_at_return_not_by_revoking() -> None:
    """A connection in use past its lifetime is kept until it comes back, then closed."""
    rec = Recorder()
    async with Pool(rec, max_connections=2, idle_timeout=None, connection_lifetime=100) as pool:
        async with pool.acquire() as conn:
            await anyio.sleep(130)
            assert not conn.closed
        await wait_until(lambda: conn.id in rec.close_times)  # closed in the background
        assert rec.close_times == {conn.id: rec.connect_times[0] + 130}
        async with pool.acquire() as fresh:
            assert fresh is not conn


async def test_lifetime_jitter_spreads_retirement() -> None:
    """Lifetimes are shortened by up to lifetime_jitter, so a cohort does not retire at once."""
    rec = Recorder()
    settings = {"idle_timeout": None, "connection_lifetime": 1000, "lifetime_jitter": 0.1}
    async with Pool(rec, max_connections=20, **settings) as pool:
        conns = [await pool.acquire() for _ in range(20)]
        t0 = anyio.current_time()
        for conn in conns:
            pool.release(conn)
        await anyio.sleep(1001)
    lifetimes = [rec.close_times[c.id] - t0 for c in conns]
    assert all(900 <= life <= 1000 for life in lifetimes), lifetimes
    assert len(set(lifetimes)) > 10, "retirements are spread out"


async def test_pool_timeout_fires_exactly() -> None:
    """A waiter gets PoolTimeout exactly pool_timeout seconds after it asked."""
    async with Pool(FakeConnector(), max_connections=1) as pool:
        holder = await pool.acquire()
        t0 = anyio.current_time()
        with pytest.raises(PoolTimeout):
            await pool.acquire()
        assert anyio.current_time() == t0 + 30  # the default pool_timeout
        pool.release(holder)


async def test_shorter_timeout_behind_a_longer_one_fires_on_time() -> None:
    """A later waiter with a shorter timeout is not held up by an earlier, longer one."""
    async with Pool(FakeConnector(), max_connections=1) as pool:
        holder = await pool.acquire()
        times: dict[str, float] = {}
        t0 = anyio.current_time()

        async def wait(name: str, timeout: float) -> None:
            with pytest.raises(PoolTimeout):
                await pool.acquire(timeout=timeout)
            times[name] = anyio.current_time() - t0

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "long", 50)
            await anyio.sleep(1)
            tg.start_soon(wait, "short", 5)
        assert times == {"long": 50, "short": 6}
        pool.release(holder)


@pytest.mark.usefixtures("fixed_random")
async def test_reconnect_backoff_doubles_and_never_gives_up() -> None:
    """Failed connects are retried after a jittered, doubling, capped delay, forever."""
    rec = Recorder()
    rec.fail_next(8)
    async with Pool(
        rec, max_connections=1, backoff_initial=1, backoff_max=8, pool_timeout=None
    ) as pool:
        t0 = anyio.current_time()
        async with pool.acquire():
            pass
        # draws of 0 give half of each ceiling: 1, 2, 4, 8, 8, ... halved
        gaps = [b - a for a, b in zip(rec.connect_times, rec.connect_times[1:], strict=False)]
        assert gaps == [0.5, 1, 2, 4, 4, 4, 4, 4]
        assert rec.connect_times[0] == t0
        assert pool.stats().connect_errors == 8
        assert pool.stats().connects == 1


async def test_hanging_connect_times_out_at_connect_timeout() -> None:
    """A connect that never answers counts as failed after connect_timeout, and is retried."""
    rec = Recorder()
    rec.hang_next(1)
    async with Pool(rec, max_connections=1, connect_timeout=7, backoff_initial=0.5) as pool:
        t0 = anyio.current_time()
        async with pool.acquire():
            pass
        assert rec.connect_times[0] == t0
        assert 7.25 <= rec.connect_times[1] - t0 <= 7.5
        assert isinstance(pool._planner.last_connect_error, TimeoutError)
        assert_consistent(pool, rec)


async def test_ping_only_after_idle_threshold() -> None:
    """A connection idle for less than ping_after is handed out unpinged; longer, it is pinged."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, ping_after=1.0) as pool:
        async with pool.acquire():
            pass
        await anyio.sleep(0.5)
        async with pool.acquire():
            pass
        assert connector.pings == 0
        await anyio.sleep(1.5)
        async with pool.acquire():
            pass
        assert connector.pings == 1


async def test_hikaricp_spike_opens_few_connections() -> None:
    """HikariCP's spike demo: 50 callers at once, 150 ms connects, 2 ms work, max 50, min 5.

    A pool that opens a connection per waiter ends near 45 connections; ours grows
    only for waiters no pending connect covers, with bounded concurrency, and
    the busy connections serve the burst before new ones are even ready.
    """
    connector = FakeConnector(connect_delay=0.150)
    async with Pool(connector, max_connections=50, min_connections=5) as pool:
        await pool.wait()

        async def task() -> None:
            async with pool.acquire() as conn:
                await conn.execute(0.002)

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(task)
        await anyio.sleep(1)  # let connects in flight finish
        stats = pool.stats()
        assert stats.size <= 10, stats
        assert stats.acquires == 50
        assert stats.timeouts == 0


async def test_lowering_the_floor_lets_idle_connections_age_out_on_time() -> None:
    """Connections kept by a floor that is then lowered close at exactly idle_timeout."""
    rec = Recorder()
    settings = {"min_connections": 3, "idle_timeout": 10, "connection_lifetime": None}
    async with Pool(rec, max_connections=4, **settings) as pool:
        await pool.wait()
        ready = anyio.current_time()
        await anyio.sleep(50)  # at the floor: nothing closes
        assert rec.close_times == {}
        await pool.resize(4, min_connections=1)
        await anyio.sleep(1)
        assert sorted(rec.close_times.values()) == [ready + 50, ready + 50]
        assert pool.stats().size == 1


async def test_idle_connection_ages_out_while_another_is_busy() -> None:
    """Above the floor only because a new connection is busy, the idle one still closes on time."""
    rec = Recorder()
    settings = {"min_connections": 1, "idle_timeout": 10, "connection_lifetime": None}
    async with Pool(rec, max_connections=2, **settings) as pool:
        await pool.wait()
        first = await pool.acquire()
        async with pool.acquire():  # a second connection: size 2 > floor 1
            pool.release(first)  # idle, least recently used, above the floor
            returned = anyio.current_time()
            await anyio.sleep(15)
            assert rec.close_times == {first.id: returned + 10}
