"""Metrics read back (OpenTelemetry, Prometheus), logging, and the saturation warning."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import trio.testing
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from elasticpool import Pool, PoolSettings, PoolTimeout, StaticMembership
from elasticpool._state import Planner, SlotState
from elasticpool.otel import instrument
from elasticpool.prometheus import PoolCollector, register
from elasticpool.testing import FakeConnector

from ..helpers import assert_consistent, wait_until

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------- helpers


class Held:
    """A pool with ``held`` connections borrowed and ``waiting`` callers queued behind them."""

    def __init__(self, pool: Pool[Any], tg: anyio.abc.TaskGroup) -> None:
        self.pool = pool
        self.tg = tg
        self.conns: list[Any] = []
        self.served = 0

    async def borrow(self, n: int) -> None:
        for _ in range(n):
            self.conns.append(await self.pool.acquire())

    async def queue(self, n: int) -> None:
        async def waiter() -> None:
            async with self.pool.acquire():
                self.served += 1

        before = self.pool.stats().waiting
        for _ in range(n):
            self.tg.start_soon(waiter)
        await wait_until(lambda: self.pool.stats().waiting == before + n)

    def give_back(self) -> None:
        for conn in self.conns:
            self.pool.release(conn)
        self.conns.clear()


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Every data point the reader collects now, by metric name."""
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def otel_value(points: dict[str, list[Any]], name: str, **attrs: str) -> Any:
    """The one data point of ``name`` whose attributes include ``attrs`` (value, or the point)."""
    want = {k.replace("__", "."): v for k, v in attrs.items()}
    found = [p for p in points.get(name, []) if want.items() <= dict(p.attributes).items()]
    assert len(found) == 1, (name, want, points.get(name))
    point = found[0]
    return point.value if hasattr(point, "value") else point


@pytest.fixture
def otel() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    """A fresh SDK meter provider with an in-memory reader."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


POOL = "db.client.connection.pool.name"


# ---------------------------------------------------------------- Prometheus


async def test_prometheus_reads_back_gauges_of_a_busy_pool() -> None:
    """Two borrowed, one queued: the collector reports in_use 2, idle 0, pending 1, max 2."""
    registry = CollectorRegistry()
    connector = FakeConnector()
    async with Pool(connector, max_connections=2, name="api") as pool:
        collector = PoolCollector(pool).register(registry)
        async with anyio.create_task_group() as tg:
            held = Held(pool, tg)
            await held.borrow(2)
            await held.queue(1)

            def get(name: str, **labels: str) -> float | None:
                return registry.get_sample_value(name, {"pool": "api", **labels})

            assert get("elasticpool_connections", state="in_use") == 2
            assert get("elasticpool_connections", state="idle") == 0
            assert get("elasticpool_connections", state="connecting") == 0
            assert get("elasticpool_pending_requests") == 1
            assert get("elasticpool_connections_max") == 2
            assert get("elasticpool_connections_min") == 0
            assert get("elasticpool_fleet_share") == 2
            assert get("elasticpool_fleet_healthy") == 1
            assert get("elasticpool_fleet_total") is None  # max_connections only: unbounded
            held.give_back()
        assert held.served == 1
        await wait_until(lambda: pool.stats().idle == 2)
        assert get("elasticpool_connections", state="idle") == 2
        assert get("elasticpool_connections", state="in_use") == 0
        assert get("elasticpool_pending_requests") == 0
        text = generate_latest(registry).decode()
        assert 'elasticpool_connections{pool="api",state="idle"} 2.0' in text
        collector.close()
        assert_consistent(pool, connector)


async def test_prometheus_counters_and_histograms_match_the_stats() -> None:
    """Counters equal the PoolStats; histogram counts equal acquires, returns and connects."""
    registry = CollectorRegistry()
    async with Pool(FakeConnector(), max_connections=2, name="api") as pool:
        PoolCollector(pool).register(registry)
        async with anyio.create_task_group() as tg:
            held = Held(pool, tg)
            await held.borrow(2)
            await held.queue(1)
            held.give_back()
        conns = [await pool.acquire() for _ in range(2)]
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=0.05)
        for conn in conns:
            pool.release(conn)
        s = pool.stats()

        def get(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, {"pool": "api", **labels})

        assert (s.acquires, s.timeouts, s.connects) == (5, 1, 2)
        assert get("elasticpool_acquires_total") == s.acquires
        assert get("elasticpool_waits_total") == s.waits
        assert get("elasticpool_timeouts_total") == s.timeouts
        assert get("elasticpool_connects_total") == s.connects
        assert get("elasticpool_connect_errors_total") == 0
        assert get("elasticpool_connections_closed_total", reason="idle") == 0
        assert get("elasticpool_wait_seconds_count") == s.acquires
        assert get("elasticpool_wait_seconds_sum") == pytest.approx(s.total_wait_time)
        assert get("elasticpool_wait_seconds_bucket", le="+Inf") == s.acquires
        assert get("elasticpool_use_seconds_count") == s.acquires  # all came back
        assert get("elasticpool_use_seconds_sum") == pytest.approx(s.total_usage_time)
        assert get("elasticpool_connect_seconds_count") == s.connects


async def test_prometheus_labels_several_pools_and_refuses_a_duplicate_name() -> None:
    """Two pools in one collector are told apart by the pool label; a second 'a' is refused."""
    registry = CollectorRegistry()
    async with (
        Pool(FakeConnector(), max_connections=3, name="a") as a,
        Pool(FakeConnector(), total_max_connections=10, name="b") as b,
        Pool(FakeConnector(), max_connections=1, name="a") as a2,
    ):
        collector = register(a, b, registry=registry)
        conn = await a.acquire()
        assert registry.get_sample_value("elasticpool_connections_max", {"pool": "a"}) == 3
        assert registry.get_sample_value("elasticpool_connections_max", {"pool": "b"}) == 10
        assert registry.get_sample_value("elasticpool_fleet_total", {"pool": "b"}) == 10
        labels = {"pool": "a", "state": "in_use"}
        assert registry.get_sample_value("elasticpool_connections", labels) == 1
        labels = {"pool": "b", "state": "in_use"}
        assert registry.get_sample_value("elasticpool_connections", labels) == 0
        with pytest.raises(ValueError, match="a pool named 'a' is already"):
            collector.add(a2)
        a.release(conn)
        collector.remove(a)
        assert registry.get_sample_value("elasticpool_connections_max", {"pool": "a"}) is None
        assert registry.get_sample_value("elasticpool_connections_max", {"pool": "b"}) == 10


async def test_prometheus_fleet_share_of_a_static_membership() -> None:
    """A copy of two sharing a total of 10 reports share 5, total 10 and limit 5."""
    registry = CollectorRegistry()
    pool = Pool(FakeConnector(), total_max_connections=10, membership=StaticMembership(2))
    async with pool:
        register(pool, registry=registry)
        labels = {"pool": "default"}
        assert registry.get_sample_value("elasticpool_fleet_share", labels) == 5
        assert registry.get_sample_value("elasticpool_fleet_total", labels) == 10
        assert registry.get_sample_value("elasticpool_connections_max", labels) == 5


async def test_closing_a_collector_detaches_the_timing_hooks() -> None:
    """The planner does timing work only while a collector holds the pool, and stops after."""
    registry = CollectorRegistry()
    async with Pool(FakeConnector(), max_connections=2) as pool:
        assert type(pool._planner) is Planner
        collector = PoolCollector(pool).register(registry)
        assert type(pool._planner) is not Planner
        assert len(pool._planner.sinks) == 1
        collector.close()
        assert type(pool._planner) is Planner
        assert pool._planner.sinks == ()
        assert registry.get_sample_value("elasticpool_acquires_total", {"pool": "default"}) is None
        async with pool.acquire():  # still works, untimed
            pass
        assert pool.stats().acquires == 1


def test_buckets_must_increase() -> None:
    """Empty, unordered or non-positive bucket bounds are refused with a ValueError."""
    for bad in ([], [1.0, 0.5], [0.0, 1.0], [1.0, float("inf")]):
        with pytest.raises(ValueError, match="buckets must be"):
            PoolCollector(buckets=bad)


# ---------------------------------------------------------------- OpenTelemetry


async def test_otel_reads_back_semconv_metrics_of_a_busy_pool(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    """Two borrowed, one queued: db.client.connection.count used 2, idle 0, pending 1, max 2."""
    provider, reader = otel
    async with Pool(FakeConnector(), max_connections=2, min_connections=1, name="api") as pool:
        instrument(pool, meter_provider=provider)
        async with anyio.create_task_group() as tg:
            held = Held(pool, tg)
            await held.borrow(2)
            await held.queue(1)
            pts = otel_points(reader)
            count = "db.client.connection.count"
            state = "db.client.connection.state"
            assert otel_value(pts, count, **{POOL: "api", state: "used"}) == 2
            assert otel_value(pts, count, **{POOL: "api", state: "idle"}) == 0
            assert otel_value(pts, "db.client.connection.pending_requests", **{POOL: "api"}) == 1
            assert otel_value(pts, "db.client.connection.max", **{POOL: "api"}) == 2
            assert otel_value(pts, "db.client.connection.idle.min", **{POOL: "api"}) == 1
            detail = "elasticpool.connection.state"
            assert otel_value(pts, "elasticpool.connection.count", **{detail: "in_use"}) == 2
            assert otel_value(pts, "elasticpool.fleet.share", **{POOL: "api"}) == 2
            assert "elasticpool.fleet.total" not in pts
            held.give_back()
        await wait_until(lambda: pool.stats().idle == 2)
        pts = otel_points(reader)
        assert otel_value(pts, "db.client.connection.count", **{POOL: "api", state: "idle"}) == 2


async def test_otel_counters_and_histograms_match_the_stats(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    """timeouts equals the stats; the wait/use/create histograms count every acquire and connect."""
    provider, reader = otel
    async with Pool(FakeConnector(), max_connections=1, name="api") as pool:
        instrument(pool, meter_provider=provider)
        conn = await pool.acquire()
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=0.05)
        async with anyio.create_task_group() as tg:
            held = Held(pool, tg)
            await held.queue(2)
            pool.release(conn)
        s = pool.stats()
        assert (s.acquires, s.timeouts, s.connects) == (3, 1, 1)
        pts = otel_points(reader)
        attrs = {POOL: "api"}
        assert otel_value(pts, "db.client.connection.timeouts", **attrs) == 1
        assert otel_value(pts, "elasticpool.acquires", **attrs) == 3
        assert otel_value(pts, "elasticpool.waits", **attrs) == s.waits
        assert otel_value(pts, "elasticpool.connects", **attrs) == 1
        wait = otel_value(pts, "db.client.connection.wait_time", **attrs)
        assert wait.count == s.acquires
        assert wait.sum == pytest.approx(s.total_wait_time)
        use = otel_value(pts, "db.client.connection.use_time", **attrs)
        assert use.count == s.acquires
        assert use.sum == pytest.approx(s.total_usage_time)
        assert otel_value(pts, "db.client.connection.create_time", **attrs).count == 1
        closed = "elasticpool.connection.closed"
        assert otel_value(pts, closed, **{POOL: "api", "elasticpool.close.reason": "broken"}) == 0


async def test_otel_one_instrument_set_per_provider_for_several_pools(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    """instrument() again on one provider adds its pool; remove() drops a pool and its hooks."""
    provider, reader = otel
    async with (
        Pool(FakeConnector(), max_connections=3, name="a") as a,
        Pool(FakeConnector(), max_connections=4, name="b") as b,
    ):
        first = instrument(a, meter_provider=provider)
        assert instrument(b, meter_provider=provider) is first
        assert {p.name for p in first.pools()} == {"a", "b"}
        pts = otel_points(reader)
        assert otel_value(pts, "db.client.connection.max", **{POOL: "a"}) == 3
        assert otel_value(pts, "db.client.connection.max", **{POOL: "b"}) == 4
        first.remove(a)
        assert type(a._planner) is Planner
        assert type(b._planner) is not Planner
        assert [p.name for p in first.pools()] == ["b"]
        first.remove(b)
        assert type(b._planner) is Planner


async def test_otel_and_prometheus_together_both_count(
    otel: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    """Both exporters on one pool each see every acquire."""
    provider, reader = otel
    registry = CollectorRegistry()
    async with Pool(FakeConnector(), max_connections=2, name="both") as pool:
        instrument(pool, meter_provider=provider)
        register(pool, registry=registry)
        for _ in range(3):
            async with pool.acquire():
                pass
        wait = otel_value(otel_points(reader), "db.client.connection.wait_time", **{POOL: "both"})
        assert wait.count == 3
        labels = {"pool": "both"}
        assert registry.get_sample_value("elasticpool_wait_seconds_count", labels) == 3


# ---------------------------------------------------------------- the saturation check (pure)


def _planner(limit: int, window: float | None = 10.0) -> Planner:
    return Planner(PoolSettings(max_connections=max(limit, 1), saturation_warning=window), limit)


def _borrow_one(p: Planner, now: float) -> Any:
    """Queue a caller at ``now``, connect for it at once and let it claim the slot."""
    w = p.enqueue(now, None)
    plan = p.take_plan()
    assert plan is not None
    (slot,) = plan.connect
    p.connected(slot, object(), now, 0.0)
    p.take_plan()
    return p.claim(w, now)


def _tick(p: Planner, now: float) -> float:
    p.tick(now)
    plan = p.take_plan()
    return 0.0 if plan is None else plan.saturated_for


def test_planner_reports_saturation_once_per_window() -> None:
    """One connection busy since 0 s and a caller queued: tick() reports at 10 s, then 20 s."""
    p = _planner(1)
    _borrow_one(p, 0.0)  # the first caller queued at 0: a check is due at 10
    assert p.acquire(1.0) is None
    p.enqueue(1.0, None)
    assert p.next_wake == 10.0
    assert _tick(p, 9.9) == 0.0
    assert _tick(p, 10.0) == 10.0  # no connection free since the connect at 0
    assert p.next_wake == 20.0
    assert _tick(p, 19.9) == 0.0
    assert _tick(p, 20.0) == 20.0
    assert p.saturation_warnings == 2
    p.check()


def test_a_free_connection_restarts_the_window() -> None:
    """A connection that went idle at 6 s puts the report off until 16 s."""
    p = _planner(1)
    slot = _borrow_one(p, 0.0)
    w = p.enqueue(1.0, None)
    p.cancel(w, 5.0)  # the queue empties
    p.release(slot, 6.0)  # and the connection goes idle: free at 6
    assert slot.state is SlotState.IDLE
    assert p.acquire(7.0) is slot
    p.enqueue(8.0, None)
    assert _tick(p, 10.0) == 0.0  # due from the first caller, but one was free 4 s ago
    assert p.next_wake == 16.0
    assert _tick(p, 16.0) == 10.0
    p.check()


def test_a_pool_paused_at_limit_zero_is_saturated() -> None:
    """With no connection at all (a fleet grant of 0), callers queued a window are reported."""
    p = _planner(0)
    p.enqueue(0.0, None)
    assert _tick(p, 10.0) == 10.0


def test_saturation_warning_none_never_reports() -> None:
    """saturation_warning=None: no check is ever scheduled."""
    p = _planner(1, window=None)
    _borrow_one(p, 0.0)
    p.enqueue(1.0, None)
    assert p.next_wake == float("inf")
    assert _tick(p, 1000.0) == 0.0
    assert p.saturation_warnings == 0


def test_saturation_warning_is_validated() -> None:
    """saturation_warning takes seconds > 0 or None, like the other timing fields."""
    assert PoolSettings(saturation_warning=None).saturation_warning is None
    assert PoolSettings(saturation_warning=2.5).saturation_warning == 2.5
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="saturation_warning must be a finite number"):
            PoolSettings(saturation_warning=bad)
    with pytest.raises(TypeError, match="saturation_warning"):
        PoolSettings(saturation_warning="10")  # type: ignore[arg-type]
    env = {"ELASTICPOOL_SATURATION_WARNING": "none"}
    assert PoolSettings.from_env(env).saturation_warning is None


# ---------------------------------------------------------------- in virtual time


class TestVirtualTime:
    """Logging and time-valued gauges, on trio's MockClock (exact times)."""

    @pytest.fixture
    def anyio_backend(self) -> object:
        """Trio only, in virtual time."""
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})

    async def test_saturation_warning_is_logged_once_per_window(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Two callers taking turns on one connection: a WARNING at 10 s and at 20 s, no more."""
        caplog.set_level(logging.WARNING, logger="elasticpool")
        settings = PoolSettings(max_connections=1, saturation_warning=10, pool_timeout=None)
        async with Pool(FakeConnector(), settings, name="sat") as pool:
            start = anyio.current_time()

            async def caller() -> None:
                while anyio.current_time() - start < 25:
                    async with pool.acquire():
                        await anyio.sleep(3)

            def warnings() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.levelno >= logging.WARNING]

            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                tg.start_soon(caller)
                await anyio.sleep(9.5)
                assert warnings() == []
                await anyio.sleep(1)
                assert len(warnings()) == 1
                await anyio.sleep(9)
                assert len(warnings()) == 1
                await anyio.sleep(1)
                assert len(warnings()) == 2
            record = warnings()[0]
            assert record.name == "elasticpool"
            msg = record.getMessage()
            assert msg.startswith("pool 'sat' saturated: no connection free for 10.0s")
            assert "in use 1 of limit 1, waiting 1" in msg
            assert "max_connections or total_max_connections" in msg
            assert "slow transactions" in msg

    async def test_the_happy_path_logs_nothing_above_debug(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Growing, borrowing, resetting, idling out and closing log at DEBUG at most."""
        caplog.set_level(logging.DEBUG, logger="elasticpool")
        connector = FakeConnector(connect_delay=0.01)
        async with Pool(connector, max_connections=4, idle_timeout=30) as pool:

            async def work() -> None:
                async with pool.acquire() as conn:
                    conn.set_session_state()
                    await conn.execute(0.5)

            for _ in range(3):
                async with anyio.create_task_group() as tg:
                    for _ in range(6):
                        tg.start_soon(work)
            await anyio.sleep(60)
            assert pool.stats().closed_idle == 4
        ours = [r for r in caplog.records if r.name.startswith("elasticpool")]
        loud = [r for r in ours if r.levelno > logging.DEBUG]
        assert loud == []

    async def test_oldest_waiter_age_is_exact(self) -> None:
        """A caller queued 5 s ago shows as 5.0 in both exporters."""
        registry = CollectorRegistry()
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        async with Pool(FakeConnector(), max_connections=1, pool_timeout=None) as pool:
            register(pool, registry=registry)
            instrument(pool, meter_provider=provider)
            async with anyio.create_task_group() as tg:
                held = Held(pool, tg)
                await held.borrow(1)
                await held.queue(1)
                await anyio.sleep(5)
                name = "elasticpool_pending_requests_oldest_age_seconds"
                assert registry.get_sample_value(name, {"pool": "default"}) == 5.0
                pts = otel_points(reader)
                name = "elasticpool.connection.pending_requests.oldest_age"
                assert otel_value(pts, name, **{POOL: "default"}) == 5.0
                held.give_back()
            assert (
                registry.get_sample_value(
                    "elasticpool_pending_requests_oldest_age_seconds", {"pool": "default"}
                )
                == 0.0
            )
        provider.shutdown()


async def test_drop_in_faces_stand_for_their_pools() -> None:
    """psycopg and asyncpg faces are reported by name; something that is no pool is a TypeError."""
    from elasticpool.asyncpg import create_pool
    from elasticpool.psycopg import AsyncConnectionPool

    registry = CollectorRegistry()
    face: AsyncConnectionPool[Any] = AsyncConnectionPool(
        "host=127.0.0.1", open=False, name="face", min_size=0, max_size=3
    )
    apg = create_pool("postgresql://127.0.0.1/x", min_size=0, max_size=4)  # not opened
    collector = register(face, apg, registry=registry)
    assert registry.get_sample_value("elasticpool_connections_max", {"pool": "face"}) == 3
    name = apg._pool.name
    assert registry.get_sample_value("elasticpool_connections_max", {"pool": name}) == 4
    assert type(face.elastic._planner) is not Planner
    collector.remove(face)
    assert type(face.elastic._planner) is Planner
    with pytest.raises(TypeError, match="expected an elasticpool Pool or a drop-in face"):
        collector.add(object())
