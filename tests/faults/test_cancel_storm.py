"""The cancellation storm: thousands of borrowers cancelled at random points, on every layer.

Each case runs waves of borrowers against one pool. Every borrower draws, from
a seeded ``random.Random`` (the seed is in the test id), how it borrows, how
long its work takes and where it is cancelled:

* ``none``: never (the control group: it must complete);
* ``before``: its scope is cancelled before it asks for a connection;
* ``got``: right after it got one;
* ``release``: after its work, so the connection goes back (COMMIT, reset)
  with the cancellation pending;
* ``timer``: by another task after a random tiny delay, wherever it is then
  (queued, waiting for a connect, mid-ping, mid-query, in a COMMIT);
* ``deadline``: by a ``move_on_after`` with a random tiny deadline.

Inside connect and inside reset the pool cancels on its own: connects and
resets that outlast ``connect_timeout`` / ``close_timeout`` (made to happen:
the fake's slow or hanging connects and slow resets, and on a real server
connect callbacks that hang, some mid-query) are cancelled by the pool's
``fail_after``. A chaos task meanwhile expires connections, so connects keep
happening during the storm; on a real server it also varies a
:class:`~elasticpool.testing.FaultProxy`'s latency, which widens every window.

What is asserted, per case: every cancellation issued while a borrower was
inside its scope reached that borrower (none swallowed, none turned into an
error), no borrower met any exception, and afterwards the counts reconcile
exactly: nothing in use or waiting, the planner's invariants, every
connection the driver has open is one the pool holds (the fake's open set;
the server's backends with the case's ``application_name``), ``check()``
passes, the pool still serves, and closing leaves nothing open.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest

from elasticpool import Pool, PoolStats
from elasticpool.testing import FakeConnection, FakeConnector, FaultProxy

from ..helpers import assert_consistent, eventually, unique_name

pytestmark = pytest.mark.anyio
postgres = pytest.mark.postgres

POINTS = ("none", "before", "got", "release", "timer", "deadline")
"""Where a borrower is cancelled (see the module docstring)."""

BOUND = 15.0
"""Overall bound, in seconds, on one wave and on any wait for the pool or the server to settle."""


# =============================================================================
# the storm, driver-agnostic
# =============================================================================


@dataclasses.dataclass
class Tally:
    """What the borrowers of one case did: the report, and what the assertions read."""

    tasks: int = 0
    completed: int = 0
    issued: int = 0
    observed: int = 0
    tasks_at: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    completed_at: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    issued_at: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    observed_at: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    landed_in: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    swallowed: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)

    def check(self) -> None:
        """Every cancellation reached its borrower; every other borrower completed cleanly."""
        assert not self.unexpected, f"{len(self.unexpected)} unexpected: {self.unexpected[:5]}"
        assert not self.swallowed, f"{len(self.swallowed)} swallowed: {self.swallowed[:5]}"
        assert self.issued_at == self.observed_at, (self.issued_at, self.observed_at)
        assert self.observed == self.issued
        assert self.completed + self.observed == self.tasks
        # Cancelled by the borrower itself: always inside its scope, so always issued.
        for point in ("before", "got", "release"):
            assert self.issued_at[point] == self.tasks_at[point], point
        assert self.completed_at["none"] == self.tasks_at["none"]

    def summary(self) -> str:
        per_point = ", ".join(f"{p} {self.observed_at[p]}" for p in POINTS if self.observed_at[p])
        return (
            f"tasks {self.tasks}, completed {self.completed}, cancellations issued "
            f"{self.issued} / observed {self.observed} (by point: {per_point}; landed in: "
            f"{dict(self.landed_in)})"
        )


@dataclasses.dataclass(frozen=True)
class Spec:
    """One borrower's draw."""

    index: int
    point: str
    kind: str
    work: float
    dirty: bool
    delay: float  # for "timer" and "deadline"


Work = Callable[[Any, float, bool], Awaitable[None]]
"""A borrower's work on its connection: ``work(conn, seconds, dirty)``."""


class Driver:
    """How one case borrows (``kinds``: the ways, in draw order) and what work a borrower does."""

    works: tuple[float, ...] = (0.0,)
    delays: tuple[float, ...] = (0.0,)

    def __init__(
        self, ways: dict[str, Callable[[], AbstractAsyncContextManager[Any]]], work: Work
    ) -> None:
        self.kinds = tuple(ways)
        self._ways = ways
        self.work = work

    def borrow(self, kind: str) -> AbstractAsyncContextManager[Any]:
        return self._ways[kind]()


@asynccontextmanager
async def held(
    get: Callable[[], Awaitable[Any]], give_back: Callable[[Any], Awaitable[None] | None]
) -> AsyncIterator[Any]:
    """Borrow with ``await get()``; give back with ``give_back(conn)``, awaited if it is async."""
    conn = await get()
    try:
        yield conn
    finally:
        done = give_back(conn)
        if done is not None:
            await done


def three_ways(pool: Any, work: Work) -> Driver:
    """A core :class:`~elasticpool.Pool` or asyncpg's face, borrowed three ways (``kinds``)."""
    return Driver(
        {
            "acquire": pool.acquire,
            "await": lambda: held(pool.acquire, pool.release),
            "transaction": pool.transaction,
        },
        work,
    )


class _Running:
    """One borrower's scope, whether it is inside it, and the phase it is in."""

    __slots__ = ("inside", "phase", "scope")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.inside = False
        self.phase = "acquire"


def draw(rng: random.Random, driver: Driver, index: int) -> Spec:
    """One borrower's plan, from the case's seeded generator."""
    return Spec(
        index=index,
        point=rng.choice(POINTS),
        kind=rng.choice(driver.kinds),
        work=rng.choice(driver.works),
        dirty=rng.random() < 0.5,
        delay=rng.choice(driver.delays),
    )


async def borrower(spec: Spec, run: _Running, driver: Driver, tally: Tally) -> None:
    """Borrow, work, give back, inside ``run.scope``; record how it ended."""
    scope = run.scope
    point = spec.point

    def issue() -> None:
        scope.cancel()
        tally.issued += 1
        tally.issued_at[point] += 1

    try:
        with scope:
            run.inside = True
            try:
                if point == "before":
                    issue()
                async with driver.borrow(spec.kind) as conn:
                    if point == "before":  # the acquire is a checkpoint: it must have raised
                        tally.swallowed.append(f"{spec}: got a connection")
                    run.phase = "work"
                    if point == "got":
                        issue()
                    await driver.work(conn, spec.work, spec.dirty)
                    if point == "got":  # the query is a checkpoint: it must have raised
                        tally.swallowed.append(f"{spec}: its query returned")
                    run.phase = "release"
                    if point == "release":
                        issue()
                run.phase = "after"
                # Cancellation is level-triggered: one still pending after the
                # release lands here at the latest.
                await anyio.lowlevel.checkpoint()
                if scope.cancel_called:
                    tally.swallowed.append(f"{spec}: went on past its cancellation")
                else:
                    tally.completed += 1
                    tally.completed_at[point] += 1
            finally:
                run.inside = False
    except Exception as exc:
        tally.unexpected.append(f"{spec}: {exc!r}")
        return
    if point == "deadline" and scope.cancel_called:
        tally.issued += 1
        tally.issued_at[point] += 1
    if scope.cancelled_caught:
        tally.observed += 1
        tally.observed_at[point] += 1
        tally.landed_in[run.phase] += 1


async def canceller(spec: Spec, run: _Running, tally: Tally) -> None:
    """For ``timer``: cancel the borrower after ``spec.delay``, if it is still in its scope."""
    await anyio.sleep(spec.delay)
    if run.inside:
        run.scope.cancel()
        tally.issued += 1
        tally.issued_at[spec.point] += 1


async def storm(driver: Driver, rng: random.Random, *, tasks: int, wave: int, tally: Tally) -> None:
    """``tasks`` borrowers, ``wave`` at a time, each one drawn from ``rng``."""
    for start in range(0, tasks, wave):
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for index in range(start, min(start + wave, tasks)):
                    spec = draw(rng, driver, index)
                    if spec.point == "deadline":
                        scope = anyio.move_on_after(spec.delay)
                    else:
                        scope = anyio.CancelScope()
                    run = _Running(scope)
                    tally.tasks += 1
                    tally.tasks_at[spec.point] += 1
                    tg.start_soon(borrower, spec, run, driver, tally)
                    if spec.point == "timer":
                        tg.start_soon(canceller, spec, run, tally)
                    if index % 8 == 0:
                        await anyio.lowlevel.checkpoint()  # let the wave ramp up, not all at once


@asynccontextmanager
async def chaos(
    step: Callable[[], Awaitable[None]], pause: Callable[[], float]
) -> AsyncIterator[None]:
    """Run ``step()`` every ``pause()`` seconds in the background while the block runs."""

    async def loop() -> None:
        while True:
            await anyio.sleep(pause())
            await step()

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        yield
        tg.cancel_scope.cancel()


async def quiet(pool: Pool[Any]) -> PoolStats:
    """Wait until nothing is borrowed, queued, connecting, resetting or closing."""

    def idle(s: PoolStats) -> bool:
        busy = s.in_use or s.waiting or s.connecting or s.resetting or s.closing
        return not busy

    stats: PoolStats = await eventually(pool.stats, idle, "the pool never settled", bound=BOUND)
    return stats


# =============================================================================
# engine: FakeConnector, on asyncio (real time) and trio (virtual time)
# =============================================================================

FAKE_CONNECT_DELAYS = (0.0, 0.001, 0.003, 0.05)
"""Seconds a fake connect takes; the last outlasts ``connect_timeout`` and is cancelled."""

FAKE_RESET_DELAYS = (0.0, 0.0005, 0.002, 0.05)
"""Seconds a fake reset takes; the last outlasts ``close_timeout`` and is cancelled."""

FAKE_SETTINGS: dict[str, Any] = {
    "max_connecting": 3,
    "reset": "session",
    "ping_after": 0.002,
    "connect_timeout": 0.02,
    "close_timeout": 0.01,
    "backoff_initial": 0.001,
    "backoff_max": 0.01,
    "pool_timeout": BOUND,
}
"""Elastic settings of the fake cases: resets on every return, pings, and timeouts that the
slowest fake connects and resets outlast."""


class StormConnector(FakeConnector):
    """The fake with random connect and reset times, counting cancellations that reach it."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(connect_delay=lambda: rng.choice(FAKE_CONNECT_DELAYS), ping_delay=0.001)
        self._rng = rng
        self.cancelled_in: collections.Counter[str] = collections.Counter()

    def hang_one(self) -> None:
        """Make the next connect hang (until ``connect_timeout``), unless one is already armed."""
        if not self._hang:
            self.hang_next(1)

    async def connect(self) -> FakeConnection:
        try:
            return await super().connect()
        except anyio.get_cancelled_exc_class():
            self.cancelled_in["connect"] += 1
            raise

    async def ping(self, conn: FakeConnection) -> None:
        try:
            await super().ping(conn)
        except anyio.get_cancelled_exc_class():
            self.cancelled_in["ping"] += 1
            raise

    async def reset(self, conn: FakeConnection, mode: Any) -> None:
        self.reset_delay = self._rng.choice(FAKE_RESET_DELAYS)
        try:
            await super().reset(conn, mode)
        except anyio.get_cancelled_exc_class():
            self.cancelled_in["reset"] += 1
            raise


async def fake_work(conn: FakeConnection, seconds: float, dirty: bool) -> None:
    if dirty:
        conn.set_session_state()
    await conn.execute(seconds)


@pytest.mark.parametrize("seed", [101, 202, 303], ids=lambda seed: f"seed{seed}")
async def test_fake_storm(seed: int) -> None:
    """1500 fake borrowers cancelled at random points, with connects and resets cancelled too.

    Every cancellation reaches its borrower, and afterwards the fake's open
    connections are exactly the pool's, the pool's error counts match the
    cancellations the fake saw, and closing leaves nothing open.
    """
    rng = random.Random(seed)
    connector = StormConnector(random.Random(seed + 1))
    tally = Tally()
    pool = Pool(connector, name=f"storm-{seed}", max_connections=5, **FAKE_SETTINGS)
    driver = three_ways(pool, fake_work)
    driver.works = (0.0, 0.0005, 0.002, 0.005)
    driver.delays = (0.0, 0.0002, 0.001, 0.003, 0.01, 0.03)

    async def disturb() -> None:
        if rng.random() < 0.3:
            connector.hang_one()  # released only by connect_timeout
        else:
            await pool.expire_connections()

    async with pool:
        async with chaos(disturb, lambda: rng.choice((0.002, 0.005, 0.01))):
            await storm(driver, rng, tasks=1500, wave=100, tally=tally)
        tally.check()

        stats = await quiet(pool)
        assert_consistent(pool, connector)
        assert len(connector.open) == stats.size == stats.idle
        cancelled = connector.cancelled_in
        assert cancelled["connect"] > 0
        assert cancelled["reset"] > 0
        assert stats.connect_errors == cancelled["connect"] == connector.connects_failed
        assert stats.closed_broken == cancelled["reset"] + cancelled["ping"]

        await pool.check()
        assert_consistent(pool, connector)
        async with pool.acquire() as conn:
            await conn.execute()
        print(f"\n{seed}: {tally.summary()}; inside the fake: {dict(cancelled)}")
    assert connector.open == set()
    assert connector.connects_started == connector.connects_ok + connector.connects_failed


# =============================================================================
# real drivers, against the session server through a FaultProxy (asyncio only)
# =============================================================================

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])
"""asyncpg and psycopg's async connections run on asyncio only."""

REAL_TASKS = 2000
REAL_WAVE = 200
REAL_MAX = 6
REAL_WORKS = (0.0, 0.0, 0.001, 0.003)
"""``pg_sleep`` seconds of one borrower's query."""
REAL_DELAYS = (0.0, 0.0005, 0.002, 0.005, 0.01, 0.03)
REAL_SETTINGS: dict[str, Any] = {
    "reset": "session",
    "ping_after": 0.005,
    "connect_timeout": 0.3,
    "close_timeout": 0.05,
    "max_connecting": 3,
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "pool_timeout": BOUND,
}
"""Elastic settings of every real-driver case: resets on every return, pings, short connects.

``close_timeout`` also bounds each reset: under the chaos task's worst latency
(0.03 s a chunk, so 0.06 s a round trip) resets under way are cancelled.
"""


class Hangs:
    """Connect callbacks (``init`` / ``configure``) that hang until ``connect_timeout``.

    Armed one at a time by the chaos task; every other hang sleeps mid-query
    (``pg_sleep``), the rest in Python, so the pool's cancellation lands
    inside connect both ways, after the backend exists.
    """

    def __init__(self) -> None:
        self.armed = False
        self.started = 0
        self.cancelled = 0

    async def maybe_hang(self, query: Callable[[], Awaitable[Any]]) -> None:
        if not self.armed:
            return
        self.armed = False
        self.started += 1
        try:
            if self.started % 2:
                await query()
            else:
                await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


async def server_backends(observer: Any, app: str) -> int:
    """Backends on the server whose ``application_name`` is ``app``."""
    n: int = await observer.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
    )
    return n


async def real_storm(
    seed: int,
    *,
    driver: Driver,
    pool: Pool[Any],
    proxy: FaultProxy,
    hangs: Hangs,
    expire: Callable[[], Awaitable[None]],
) -> Tally:
    """The storm on a real server: chaos expires connections, arms hangs, varies latency."""
    rng = random.Random(seed)
    tally = Tally()
    driver.works = REAL_WORKS
    driver.delays = REAL_DELAYS

    async def disturb() -> None:
        r = rng.random()
        if r < 0.04:
            hangs.armed = True
        elif r < 0.2:
            await expire()
        else:
            proxy.latency(rng.choice((0.0, 0.0, 0.001, 0.003, 0.03)))

    hangs.armed = True  # the pool starts empty: its first connect hangs, at least
    async with chaos(disturb, lambda: rng.choice((0.01, 0.03, 0.05))):
        await storm(driver, rng, tasks=REAL_TASKS, wave=REAL_WAVE, tally=tally)
    proxy.latency(0)
    hangs.armed = False
    tally.check()
    return tally


async def reconcile(pool: Pool[Any], observer: Any, app: str, hangs: Hangs) -> PoolStats:
    """After the storm: nothing held, the invariants hold, the server's backends are the pool's."""
    stats = await quiet(pool)
    assert stats.size == stats.idle
    pool._planner.check()
    assert hangs.cancelled == hangs.started > 0
    assert stats.connect_errors >= hangs.cancelled

    async def both() -> tuple[int, int]:
        return await server_backends(observer, app), pool.stats().size

    await eventually(both, lambda n: n[0] == n[1], "server backends != pool size", bound=BOUND)
    await pool.check()
    stats = await quiet(pool)
    await eventually(both, lambda n: n[0] == n[1], "server backends != pool size", bound=BOUND)
    return stats


def churn(stats: PoolStats, hangs: Hangs, caplog: pytest.LogCaptureFixture) -> str:
    """The pool's side of a real-driver case, for the report."""
    resets = sum(
        "error resetting connection" in r.getMessage() and "TimeoutError" in r.getMessage()
        for r in caplog.records
    )
    return (
        f"connects {stats.connects}, cancelled inside connect {hangs.cancelled} "
        f"and inside reset {resets} "
        f"(connect errors {stats.connect_errors}), returned broken {stats.returned_broken}, "
        f"closed broken {stats.closed_broken}"
    )


async def closed_on_server(observer: Any, app: str) -> None:
    """Every backend of the case is gone after close."""
    await eventually(
        lambda: server_backends(observer, app), lambda n: n == 0, "backends left", bound=BOUND
    )


@dataclasses.dataclass
class RealCase:
    """One real-driver case: its proxied DSN, its hangs, and what its storm leaves to report."""

    seed: int
    app: str
    dsn: str
    proxy: FaultProxy
    observer: Any
    hangs: Hangs = dataclasses.field(default_factory=Hangs)
    tally: Tally | None = None
    stats: PoolStats | None = None

    async def hang(self, conn: Any) -> None:
        """The pool's ``init`` / ``configure`` callback: hangs whenever the chaos task armed one."""
        await self.hangs.maybe_hang(lambda: conn.execute("SELECT pg_sleep(2)"))

    async def storm(
        self, driver: Driver, pool: Pool[Any], expire: Callable[[], Awaitable[None]]
    ) -> None:
        """:func:`real_storm` on ``pool``, then :func:`reconcile`; kept for the report."""
        self.tally = await real_storm(
            self.seed, driver=driver, pool=pool, proxy=self.proxy, hangs=self.hangs, expire=expire
        )
        self.stats = await reconcile(pool, self.observer, self.app, self.hangs)


@asynccontextmanager
async def real_case(
    pg_server: Any, label: str, seed: int, caplog: pytest.LogCaptureFixture, title: str
) -> AsyncIterator[RealCase]:
    """A unique application name, a proxied DSN for it, the proxy and an observer connection.

    The block opens a pool on ``case.dsn`` with ``case.hang`` as its connect
    callback, runs ``case.storm`` and closes the pool; afterwards every backend
    of the case must be gone, and the report is printed.
    """
    asyncpg = pytest.importorskip("asyncpg")
    app = unique_name(label)
    observer = await asyncpg.connect(pg_server.dsn(application_name=unique_name("observer")))
    try:
        async with FaultProxy(pg_server.host, pg_server.port) as proxy:
            dsn = proxy.dsn_for(pg_server.dsn(application_name=app))
            case = RealCase(seed, app, dsn, proxy, observer)
            yield case
            await closed_on_server(observer, app)
            assert case.tally is not None, "the case ran no storm"
            assert case.stats is not None, "the case ran no storm"
            report = f"{case.tally.summary()}; {churn(case.stats, case.hangs, caplog)}"
            print(f"\n{title} {seed}: {report}")
    finally:
        await observer.close()


def real_driver(seed: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The marks of a real-driver case: it needs the server, runs on asyncio only, with ``seed``."""
    seeded = pytest.mark.parametrize("seed", [seed], ids=lambda s: f"seed{s}")
    return lambda test: postgres(asyncio_only(seeded(test)))


async def asyncpg_work(conn: Any, seconds: float, dirty: bool) -> None:
    if dirty:
        await conn.execute("SET work_mem = '8MB'")
    await conn.fetchval("SELECT pg_sleep($1)", seconds)


async def psycopg_work(conn: Any, seconds: float, dirty: bool) -> None:
    if dirty:
        await conn.execute("SET work_mem = '8MB'")
    await conn.execute("SELECT pg_sleep(%s)", [seconds])


@real_driver(seed=7)
async def test_asyncpg_core_storm(
    pg_server: Any, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A core Pool over AsyncpgConnector survives the storm; server backends match the pool."""
    from elasticpool.asyncpg import AsyncpgConnector

    async with real_case(pg_server, "apg", seed, caplog, "asyncpg core") as case:
        connector = AsyncpgConnector(case.dsn, init=case.hang)
        async with Pool(connector, max_connections=REAL_MAX, **REAL_SETTINGS) as pool:
            await case.storm(three_ways(pool, asyncpg_work), pool, pool.expire_connections)
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 6 * 7") == 42


@real_driver(seed=8)
async def test_psycopg_core_storm(
    pg_server: Any, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A core Pool over PsycopgConnector survives the storm; server backends match the pool."""
    pytest.importorskip("psycopg")
    from elasticpool.psycopg import PsycopgConnector

    async with real_case(pg_server, "pg3", seed, caplog, "psycopg core") as case:
        connector: PsycopgConnector[Any] = PsycopgConnector(case.dsn, configure=case.hang)
        async with Pool(connector, max_connections=REAL_MAX, **REAL_SETTINGS) as pool:
            await case.storm(three_ways(pool, psycopg_work), pool, pool.expire_connections)
            async with pool.acquire() as conn:
                cur = await conn.execute("SELECT 6 * 7")
                assert await cur.fetchone() == (42,)


@real_driver(seed=9)
async def test_asyncpg_face_storm(
    pg_server: Any, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg's drop-in face survives the storm; server backends match the pool."""
    from elasticpool.asyncpg import create_pool

    async with real_case(pg_server, "apgface", seed, caplog, "asyncpg face") as case:
        # fail_fast off, as in the core cases: waiters keep waiting through a hung connect
        # instead of getting its error (the face's default, asyncpg's behaviour).
        settings = {k: v for k, v in REAL_SETTINGS.items() if k != "reset"}
        async with create_pool(
            case.dsn, min_size=0, max_size=REAL_MAX, init=case.hang, fail_fast=False, **settings
        ) as face:
            # asyncpg's face borrows the core pool's three ways, its release awaited.
            await case.storm(three_ways(face, asyncpg_work), face.elastic, face.expire_connections)
            assert await face.fetchval("SELECT 6 * 7") == 42


@real_driver(seed=10)
async def test_psycopg_face_storm(
    pg_server: Any, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """psycopg_pool's drop-in face survives the storm; server backends match the pool."""
    pytest.importorskip("psycopg")
    from elasticpool.psycopg import AsyncConnectionPool

    async with real_case(pg_server, "pg3face", seed, caplog, "psycopg face") as case:
        skip = ("reset", "max_connecting", "pool_timeout")  # psycopg_pool's names below
        settings = {k: v for k, v in REAL_SETTINGS.items() if k not in skip}
        async with AsyncConnectionPool(
            case.dsn,
            min_size=0,
            max_size=REAL_MAX,
            open=False,
            configure=case.hang,
            reset_mode="session",
            num_workers=REAL_SETTINGS["max_connecting"],
            timeout=REAL_SETTINGS["pool_timeout"],
            **settings,
        ) as face:
            # psycopg_pool's two ways: connection(), and getconn() / putconn().
            driver = Driver(
                {
                    "connection": face.connection,
                    "getconn": lambda: held(face.getconn, face.putconn),
                },
                psycopg_work,
            )
            await case.storm(driver, face.elastic, face.drain)
            async with face.connection() as conn:
                cur = await conn.execute("SELECT 6 * 7")
                assert await cur.fetchone() == (42,)
