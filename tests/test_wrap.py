"""``elasticpool.wrap`` over a real asyncpg pool and a real psycopg_pool, against real PostgreSQL.

Every underlying pool gets an ``application_name`` of its own, so its server
backends can be counted in ``pg_stat_activity`` through a separate observer
connection. Timed effects (backends exiting, connections given back) are polled
under an overall bound, never slept on blindly.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest

from elasticpool import ElasticPoolWarning, Pool, PoolTimeout, StaticMembership, wrap

asyncpg = pytest.importorskip("asyncpg")
psycopg_pool = pytest.importorskip("psycopg_pool")

from .helpers import eventually  # noqa: E402

POLL = 0.01
"""Seconds between two looks at a pool or the server while waiting for an effect."""

BOUND = 10.0
"""Overall bound, in seconds, on any one wait in these tests."""


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg and psycopg_pool's async pool run on asyncio only."""
    return "asyncio"


def unique_app_name(label: str) -> str:
    """An ``application_name`` no other pool or test uses (well under the 63-byte limit)."""
    return f"ep-wrap-{label}-{uuid.uuid4().hex[:12]}"


async def poll(predicate: Callable[[], Any], what: str) -> None:
    """Poll ``predicate()`` (sync or async) until it is true, within :data:`BOUND` seconds."""
    await eventually(predicate, bool, what, bound=BOUND, poll=POLL)  # no event for these effects


class Driver:
    """One kind of underlying pool: how to make one, borrow from it directly, and inspect it."""

    kind = ""
    resets_session = False
    """Whether the wrapper's default reset also clears session settings (``SET``)."""

    def __init__(self, pg_server: Any) -> None:
        self.pg_server = pg_server
        self.app = unique_app_name(self.kind)
        self.pools: list[Any] = []

    async def make(self, *, max_size: int, min_size: int = 0) -> Any:
        raise NotImplementedError

    async def close_all(self) -> None:
        raise NotImplementedError

    def borrow(self, existing: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    def is_closed(self, existing: Any) -> bool:
        raise NotImplementedError

    def lent(self, existing: Any) -> int:
        """Connections of ``existing`` checked out right now (by anyone)."""
        raise NotImplementedError

    async def fetch(self, conn: Any, sql: str) -> Any:
        raise NotImplementedError

    async def execute(self, conn: Any, sql: str) -> None:
        raise NotImplementedError

    def in_transaction(self, conn: Any) -> bool:
        raise NotImplementedError

    async def commit(self, conn: Any) -> None:
        """Commit the implicit transaction a driver may have opened (psycopg does)."""

    async def pid(self, conn: Any) -> int:
        pid: int = await self.fetch(conn, "SELECT pg_backend_pid()")
        return pid


class AsyncpgDriver(Driver):
    """``await asyncpg.create_pool(...)``."""

    kind = "asyncpg"
    resets_session = True

    async def make(self, *, max_size: int, min_size: int = 0) -> Any:
        pool = await asyncpg.create_pool(
            self.pg_server.dsn(application_name=self.app), min_size=min_size, max_size=max_size
        )
        self.pools.append(pool)
        return pool

    async def close_all(self) -> None:
        for pool in self.pools:
            with anyio.fail_after(BOUND):
                await pool.close()

    def borrow(self, existing: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        cm: contextlib.AbstractAsyncContextManager[Any] = existing.acquire()
        return cm

    def is_closed(self, existing: Any) -> bool:
        closing: bool = existing.is_closing()
        return closing

    def lent(self, existing: Any) -> int:
        lent: int = existing.get_size() - existing.get_idle_size()
        return lent

    async def fetch(self, conn: Any, sql: str) -> Any:
        return await conn.fetchval(sql)

    async def execute(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    def in_transaction(self, conn: Any) -> bool:
        state: bool = conn.is_in_transaction()
        return state


class PsycopgDriver(Driver):
    """``psycopg_pool.AsyncConnectionPool(..., open=False)``, then ``await pool.open()``."""

    kind = "psycopg"

    async def make(self, *, max_size: int, min_size: int = 0) -> Any:
        pool = psycopg_pool.AsyncConnectionPool(
            self.pg_server.dsn(application_name=self.app),
            min_size=min_size,
            max_size=max_size,
            open=False,
            name=self.app,
        )
        self.pools.append(pool)
        await pool.open()
        return pool

    async def close_all(self) -> None:
        for pool in self.pools:
            await pool.close()

    def borrow(self, existing: Any) -> contextlib.AbstractAsyncContextManager[Any]:
        cm: contextlib.AbstractAsyncContextManager[Any] = existing.connection()
        return cm

    def is_closed(self, existing: Any) -> bool:
        closed: bool = existing.closed
        return closed

    def lent(self, existing: Any) -> int:
        stats = existing.get_stats()
        lent: int = stats["pool_size"] - stats["pool_available"]
        return lent

    async def fetch(self, conn: Any, sql: str) -> Any:
        row = await (await conn.execute(sql)).fetchone()
        return row[0]

    async def execute(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    def in_transaction(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(conn.info.transaction_status != TransactionStatus.IDLE)

    async def commit(self, conn: Any) -> None:
        await conn.commit()


@pytest.fixture(params=[AsyncpgDriver, PsycopgDriver], ids=["asyncpg", "psycopg"])
async def driver(request: pytest.FixtureRequest, pg_server: Any) -> AsyncIterator[Driver]:
    """A factory of underlying pools of one kind; every pool it made is closed at the end."""
    d: Driver = request.param(pg_server)
    try:
        yield d
    finally:
        await d.close_all()


class Backends:
    """Looks at ``pg_stat_activity`` through a plain asyncpg connection of its own."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def pids(self, app_name: str) -> set[int]:
        """The PIDs of the backends whose ``application_name`` is ``app_name``, right now."""
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app_name
        )
        return {row["pid"] for row in rows}

    async def wait_count(self, app_name: str, n: int) -> None:
        """Poll until exactly ``n`` backends have ``app_name``."""
        await poll(lambda: self._has(app_name, n), f"{app_name!r} never had {n} backends")

    async def _has(self, app_name: str, n: int) -> bool:
        return len(await self.pids(app_name)) == n

    async def terminate(self, pids: set[int]) -> None:
        """``pg_terminate_backend`` each of ``pids`` and wait until they are gone."""
        await self.conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)

        async def gone() -> bool:
            rows = await self.conn.fetch(
                "SELECT 1 FROM pg_stat_activity WHERE pid = ANY($1::int[])", list(pids)
            )
            return not rows

        await poll(gone, f"backends {sorted(pids)} never exited")


@pytest.fixture
async def backends(pg_server: Any) -> AsyncIterator[Backends]:
    """An observer on its own plain asyncpg connection, not from any pool."""
    conn = await asyncpg.connect(pg_server.dsn(application_name=unique_app_name("observer")))
    try:
        yield Backends(conn)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def holding(pool: Pool[Any], driver: Driver, n: int) -> AsyncIterator[set[int]]:
    """``n`` tasks each borrow a connection at once and keep it while the block runs.

    Yields the backend PIDs once every task holds one; they give them back when
    the block ends.
    """
    pids: set[int] = set()
    all_in = anyio.Event()
    let_go = anyio.Event()

    async def hold() -> None:
        async with pool.acquire() as conn:
            pids.add(await driver.pid(conn))
            if len(pids) == n:
                all_in.set()
            await let_go.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(hold)
        with anyio.fail_after(BOUND):
            await all_in.wait()
        try:
            yield set(pids)
        finally:
            let_go.set()


@pytest.mark.parametrize(
    "bad", [object(), "postgresql://someone:s3cret-pw@db.invalid/app", 42, None]
)
def test_wrong_argument_type_raises_type_error(bad: object) -> None:
    """Anything but an asyncpg or psycopg async pool is a TypeError that never echoes the value."""
    with pytest.raises(
        TypeError,
        match=r"wrap\(\) takes an asyncpg\.Pool, a psycopg_pool\.AsyncConnectionPool or a "
        r"psycopg_pool\.ConnectionPool",
    ) as info:
        wrap(bad)  # type: ignore[call-overload]
    assert "s3cret" not in str(info.value)


def test_unopened_synchronous_psycopg_pool_is_a_value_error() -> None:
    """A sync psycopg_pool.ConnectionPool is taken (tests/psycopg/test_sync_wrap.py), once open."""
    sync_pool = psycopg_pool.ConnectionPool("", open=False, name="sync-never-opened")
    with pytest.raises(ValueError, match=r"'sync-never-opened' is not open .*'pool\.open\(\)'"):
        wrap(sync_pool)


def test_unopened_psycopg_pool_is_a_value_error() -> None:
    """A psycopg async pool that is not open is refused with how to open it."""
    unopened = psycopg_pool.AsyncConnectionPool("", open=False, name="never-opened")
    with pytest.raises(ValueError, match=r"'never-opened' is not open .*await pool\.open\(\)"):
        wrap(unopened)


def test_psycopg_disconnect_classification() -> None:
    """Connection errors evict a psycopg lease; pool errors, timeouts and query errors do not."""
    from psycopg import InterfaceError, OperationalError, errors

    from elasticpool._wrap import _PsycopgLeases

    leases = _PsycopgLeases(psycopg_pool.AsyncConnectionPool("", open=False))
    assert leases.is_disconnect(OperationalError("consuming input failed: EOF"))
    assert leases.is_disconnect(errors.AdminShutdown("terminating connection"))
    assert leases.is_disconnect(errors.ConnectionFailure("connection failure"))
    assert not leases.is_disconnect(psycopg_pool.PoolTimeout("couldn't get a connection"))
    assert not leases.is_disconnect(errors.QueryCanceled("statement timeout"))
    assert not leases.is_disconnect(errors.UniqueViolation("duplicate key"))
    assert not leases.is_disconnect(errors.PipelineAborted("an earlier statement failed"))
    assert not leases.is_disconnect(InterfaceError("the cursor is closed"))
    assert not leases.is_disconnect(PoolTimeout("no connection within 1s"))


@pytest.mark.anyio
async def test_asyncpg_disconnect_classification() -> None:
    """asyncpg's stuck protocol after an unsolicited FATAL evicts a lease; query errors do not."""
    from elasticpool._wrap import _AsyncpgLeases

    exc = asyncpg.exceptions
    leases = _AsyncpgLeases(asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none"))
    stuck = "cannot switch to state 12; another operation (2) is in progress"
    assert leases.is_disconnect(exc.InternalClientError(stuck))
    assert leases.is_disconnect(exc.AdminShutdownError("terminating connection"))
    assert leases.is_disconnect(exc.ConnectionDoesNotExistError("connection was closed"))
    assert not leases.is_disconnect(exc.UniqueViolationError("duplicate key"))
    assert not leases.is_disconnect(exc.QueryCanceledError("statement timeout"))
    assert not leases.is_disconnect(PoolTimeout("no connection within 1s"))


@pytest.mark.anyio
async def test_uninitialized_asyncpg_pool_is_a_value_error() -> None:
    """An asyncpg pool that was created but never awaited is refused."""
    uninitialized = asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ValueError, match="not initialized"):
        wrap(uninitialized)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_limit_gates_concurrent_borrowers(driver: Driver, backends: Backends) -> None:
    """With N leases held the N+1th borrower waits in the wrapper and times out at pool_timeout."""
    existing = await driver.make(max_size=6)
    async with wrap(existing, max_connections=3, pool_timeout=0.3) as pool:
        async with holding(pool, driver, 3):  # warm up: three leases, then idle
            pass
        await poll(lambda: pool.stats().idle == 3, "the three leases never came back idle")
        before = pool.stats()
        async with holding(pool, driver, 3) as pids:
            started = anyio.current_time()
            with pytest.raises(PoolTimeout, match=r"no connection within 0\.3s"):
                async with pool.acquire():
                    pass
            waited = anyio.current_time() - started
            assert 0.29 <= waited < BOUND
            stats = pool.stats()
            assert (stats.size, stats.in_use, stats.connecting, stats.waiting) == (3, 3, 0, 0)
            assert await backends.pids(driver.app) == pids  # no fourth server connection
            assert driver.lent(existing) == 3
        after = pool.stats()
        assert after.acquires - before.acquires == 3
        assert after.waits - before.waits == 1
        assert after.timeouts - before.timeouts == 1
        assert after.connects == 3  # leases were borrowed once, then reused


@pytest.mark.anyio
@pytest.mark.postgres
async def test_asyncpg_gate_is_the_wrappers_not_the_underlying_pools(pg_server: Any) -> None:
    """Other code can still borrow from the asyncpg pool while the wrapper is at its limit."""
    driver = AsyncpgDriver(pg_server)
    try:
        existing = await driver.make(max_size=4)
        pool = wrap(existing, max_connections=1, pool_timeout=0.1)
        async with pool, holding(pool, driver, 1) as (pid,):
            with pytest.raises(PoolTimeout):
                await pool.acquire()
            async with driver.borrow(existing) as direct:
                assert await driver.pid(direct) != pid
    finally:
        await driver.close_all()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_transaction_commits_and_rolls_back(driver: Driver) -> None:
    """pool.transaction() commits a clean block and rolls back one that raises."""
    table = f"ep_wrap_{uuid.uuid4().hex[:12]}"
    existing = await driver.make(max_size=2)
    async with wrap(existing) as pool:
        async with pool.transaction() as conn:
            await driver.execute(conn, f"CREATE TABLE {table} (n int)")
        try:
            async with pool.transaction() as conn:
                await driver.execute(conn, f"INSERT INTO {table} VALUES (1)")

            async def insert_then_fail() -> None:
                async with pool.transaction() as conn:
                    await driver.execute(conn, f"INSERT INTO {table} VALUES (2)")
                    raise RuntimeError("boom")

            with pytest.raises(RuntimeError, match="boom"):
                await insert_then_fail()
            async with pool.acquire() as conn:
                assert await driver.fetch(conn, f"SELECT array_agg(n) FROM {table}") == [1]
        finally:
            async with pool.transaction() as conn:
                await driver.execute(conn, f"DROP TABLE {table}")


@pytest.mark.anyio
@pytest.mark.postgres
async def test_next_borrower_gets_a_reset_connection(driver: Driver) -> None:
    """A lease the wrapper keeps idle is reset between borrowers, as the underlying pool does."""
    existing = await driver.make(max_size=2)
    async with wrap(existing, max_connections=1) as pool:
        assert pool.settings.reset == ("session" if driver.resets_session else "rollback")
        async with pool.acquire() as conn:
            first = await driver.pid(conn)
            await driver.execute(conn, "SET statement_timeout = '4321ms'")
            await driver.commit(conn)  # a session setting that outlives the transaction
            await driver.execute(conn, "BEGIN" if driver.kind == "asyncpg" else "SELECT 1")
            assert driver.in_transaction(conn)
        async with pool.acquire() as conn:
            assert not driver.in_transaction(conn)  # before a query opens one (psycopg)
            assert await driver.pid(conn) == first  # the same lease, not a fresh one
            setting = await driver.fetch(conn, "SHOW statement_timeout")
            assert (setting != "4321ms") is driver.resets_session
        assert pool.stats().connects == 1


@pytest.mark.anyio
@pytest.mark.postgres
async def test_dead_connection_is_not_handed_out_twice(driver: Driver, backends: Backends) -> None:
    """After its backends are killed, at most one borrower sees a dead lease; then all are live."""
    existing = await driver.make(max_size=4)
    async with wrap(existing, max_connections=2) as pool:
        async with holding(pool, driver, 2) as dead:
            pass
        await backends.terminate(dead)
        failures: list[BaseException] = []
        with anyio.fail_after(BOUND):
            while True:
                try:
                    async with pool.acquire() as conn:
                        pid = await driver.pid(conn)
                except Exception as exc:  # the one borrower allowed to see it
                    failures.append(exc)
                    assert len(failures) == 1, failures
                    continue
                break
        assert pid not in dead
        for failure in failures:
            assert pool._connector.is_disconnect(failure), failure
        await poll(lambda: pool.stats().closed_broken == 2, "a dead lease was not evicted")
        assert pool.stats().returned_broken == len(failures)
        async with holding(pool, driver, 2) as live:
            assert not live & dead
    async with driver.borrow(existing) as direct:  # nor does the underlying pool lend one
        assert await driver.pid(direct) not in dead


@pytest.mark.anyio
@pytest.mark.postgres
async def test_psycopg_resize_drives_the_underlying_max_size(pg_server: Any) -> None:
    """The psycopg pool's max_size follows the wrapper's limit, never below its min_size."""
    driver = PsycopgDriver(pg_server)
    try:
        existing = await driver.make(min_size=2, max_size=6)
        pool = wrap(existing, max_connections=3)
        assert existing.max_size == 6  # nothing changes before open()
        async with pool:
            assert (existing.max_size, existing.get_stats()["pool_max"]) == (3, 3)
            await pool.resize(8)
            assert (existing.max_size, pool.stats().max) == (8, 8)
            async with holding(pool, driver, 8):
                assert existing.get_stats()["pool_size"] == 8
            await pool.resize(1)
            assert (existing.max_size, existing.min_size, pool.stats().max) == (2, 2, 1)
            # Surplus leases go back now if idle, or once their reset is done.
            await poll(lambda: pool.stats().size == 1, "surplus leases never went back")
            await poll(lambda: driver.lent(existing) == 1, "psycopg_pool never got them back")
        assert existing.max_size == 6  # its own size back once the wrapper is closed
        assert driver.lent(existing) == 0
    finally:
        await driver.close_all()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_asyncpg_resize_closes_surplus_server_connections(
    pg_server: Any, backends: Backends
) -> None:
    """Lowering the limit closes the asyncpg pool's surplus connections for good, busy or idle."""
    driver = AsyncpgDriver(pg_server)
    try:
        existing = await driver.make(max_size=6)
        async with wrap(existing, max_connections=4, idle_timeout=None) as pool:
            async with holding(pool, driver, 4) as pids:
                await pool.resize(2)  # busy surplus: closed as it comes back
                assert await backends.pids(driver.app) == pids
            await backends.wait_count(driver.app, 2)
            await poll(lambda: existing.get_size() == 2, "asyncpg kept its surplus")
            await pool.resize(1)  # idle surplus: closed now
            await backends.wait_count(driver.app, 1)
            await poll(lambda: existing.get_size() == 1, "asyncpg kept its surplus")
            stats = pool.stats()
            assert (stats.size, stats.closed_resize, stats.max) == (1, 3, 1)
            async with holding(pool, driver, 1):
                pass
            assert pool.stats().connects == 4  # no lease was borrowed again
    finally:
        await driver.close_all()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_asyncpg_limit_is_capped_at_its_max_size(pg_server: Any) -> None:
    """An asyncpg pool cannot grow: a larger limit is capped at its max_size, with a warning."""
    driver = AsyncpgDriver(pg_server)
    try:
        existing = await driver.make(max_size=3)
        with pytest.warns(ElasticPoolWarning, match="capped at 3"):
            pool = wrap(existing, max_connections=5)
        async with pool:
            assert pool.stats().max == 3
            await pool.resize(10)
            assert pool.stats().max == 3
            await pool.resize(2)
            assert pool.stats().max == 2
        assert wrap(existing).stats().max == 3  # by default the limit is its max_size
    finally:
        await driver.close_all()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_close_leaves_the_underlying_pool_open(driver: Driver) -> None:
    """Closing the wrapper gives every lease back and leaves the underlying pool usable."""
    existing = await driver.make(max_size=4)
    async with wrap(existing, max_connections=2) as pool, holding(pool, driver, 2):
        assert driver.lent(existing) == 2
    assert not driver.is_closed(existing)
    assert driver.lent(existing) == 0
    async with driver.borrow(existing) as conn:
        assert await driver.fetch(conn, "SELECT 41 + 1") == 42


@pytest.mark.anyio
@pytest.mark.postgres
async def test_stale_release_does_not_end_the_next_borrow(driver: Driver) -> None:
    """A task releasing again a lease it gave back, now lent to another task, gets RuntimeError."""
    existing = await driver.make(max_size=2)
    async with wrap(existing, max_connections=1, name="w") as pool:
        conn = await pool.acquire()
        pool.release(conn)
        lent, done = anyio.Event(), anyio.Event()
        got: list[Any] = []

        async def other() -> None:
            got.append(await pool.acquire())
            lent.set()
            await done.wait()
            pool.release(got[0])

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await lent.wait()
            assert got == [conn]
            with pytest.raises(RuntimeError, match=r"^pool 'w': connection .* released after"):
                pool.release(conn)
            assert (pool.stats().in_use, driver.lent(existing)) == (1, 1)
            done.set()


@pytest.mark.anyio
@pytest.mark.postgres
async def test_close_underlying_closes_it(driver: Driver) -> None:
    """With close_underlying=True, closing the wrapper closes the underlying pool too."""
    existing = await driver.make(max_size=2)
    with pytest.raises(TypeError, match="close_underlying must be a bool"):
        wrap(existing, close_underlying="yes")  # type: ignore[call-overload]
    async with wrap(existing, close_underlying=True) as pool, pool.acquire() as conn:
        assert await driver.fetch(conn, "SELECT 1") == 1
    assert driver.is_closed(existing)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_repr_never_shows_the_password(driver: Driver, pg_server: Any) -> None:
    """The wrapper's and its connector's reprs name the pool kind, never the password."""
    assert pg_server.password
    existing = await driver.make(max_size=2)
    pool = wrap(existing, name="reporting")
    texts = [repr(pool), repr(pool._connector)]
    async with pool, pool.acquire():
        texts += [repr(pool), repr(pool._connector)]
    texts.append(repr(pool))
    for text in texts:
        assert pg_server.password not in text
    assert texts[2].startswith("<Pool 'reporting' [in use 1")
    assert ("asyncpg.Pool" if driver.kind == "asyncpg" else "AsyncConnectionPool") in texts[2]


@pytest.mark.anyio
@pytest.mark.postgres
async def test_forced_close_gives_borrowed_leases_back(driver: Driver) -> None:
    """A lease still borrowed when close() times out is terminated; the underlying pool is whole."""
    existing = await driver.make(max_size=2)
    pool = wrap(existing)
    await pool.open()
    conn = await pool.acquire()
    assert await driver.fetch(conn, "SELECT 1") == 1
    await pool.close(timeout=0)
    assert pool.stats().size == 0
    await poll(lambda: driver.lent(existing) == 0, "the terminated lease never went back")
    assert not driver.is_closed(existing)
    async with driver.borrow(existing) as direct:
        assert await driver.fetch(direct, "SELECT 2") == 2


@pytest.mark.anyio
@pytest.mark.postgres
async def test_terminate_gives_leases_back_and_may_close_the_underlying_pool(
    driver: Driver,
) -> None:
    """terminate() gives every lease back at once; with close_underlying=True it closes that too."""
    kept, closed = await driver.make(max_size=2), await driver.make(max_size=2)
    for existing, close_underlying in ((kept, False), (closed, True)):
        pool = wrap(existing, close_underlying=close_underlying)
        await pool.open()
        async with holding(pool, driver, 2):
            pool.terminate()
            assert pool.stats().size == 0
    await poll(lambda: driver.lent(kept) == 0, "a terminated lease never went back")
    await poll(lambda: driver.is_closed(closed), "close_underlying=True left it open")
    assert not driver.is_closed(kept)
    async with driver.borrow(kept) as direct:
        assert await driver.fetch(direct, "SELECT 3") == 3


@pytest.mark.anyio
@pytest.mark.postgres
async def test_membership_share_reaches_the_underlying_pool(driver: Driver) -> None:
    """membership= is passed through; the share it sets goes through the wrapper's resize."""
    existing = await driver.make(max_size=6)
    pool = wrap(existing, total_max_connections=8, membership=StaticMembership(4))
    assert pool.membership is not None
    async with pool:
        assert pool.stats().max == 2
        if driver.kind == "psycopg":
            assert existing.max_size == 2
        async with holding(pool, driver, 2):
            assert pool.stats().in_use == 2
