"""elasticpool.sqlalchemy against the real server and the real SQLAlchemy (issue 15 item 4)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy
from sqlalchemy import event, exc, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import elasticpool
from elasticpool import PoolSettings
from elasticpool._sql import SERVER_LIMITS_SQL
from elasticpool.sqlalchemy import ElasticPool, PoolTimeout, create_async_engine, create_engine

ASYNC_DRIVERS = ["asyncpg", "psycopg"]

pytestmark = pytest.mark.postgres


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


def url(server: Any, driver: str) -> URL:
    """A SQLAlchemy URL of ``server`` for ``postgresql+<driver>``."""
    return URL.create(
        f"postgresql+{driver}",
        username=server.user,
        password=server.password,
        host=server.host,
        port=server.port,
        database=server.database,
    )


def tagged(driver: str, app: str) -> dict[str, Any]:
    """``connect_args`` giving the connections of ``driver`` the application_name ``app``."""
    if driver == "asyncpg":
        return {"server_settings": {"application_name": app}}
    return {"application_name": app}


class Counted:
    """Pool events of one engine, counted by name."""

    NAMES = ("connect", "first_connect", "checkout", "checkin", "reset", "close", "invalidate")

    def __init__(self, engine: sqlalchemy.Engine | AsyncEngine) -> None:
        self.counts: Counter[str] = Counter()
        pool = engine.pool if isinstance(engine, sqlalchemy.Engine) else engine.sync_engine.pool
        for name in self.NAMES:
            event.listen(pool, name, self._counter(name))

    def _counter(self, name: str) -> Callable[..., None]:
        def count(*args: Any) -> None:
            self.counts[name] += 1

        return count


@pytest.fixture
async def admin(pg_server: Any) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection outside every pool."""
    conn = await asyncpg.connect(pg_server.dsn(application_name="ep-sqla-admin"))
    try:
        yield conn
    finally:
        await conn.close()


async def backends(admin: asyncpg.Connection, app: str) -> int:
    """How many backends the server shows named ``app``."""
    n: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
    )
    return n


async def until(check: Callable[[], Any], what: str, seconds: float = 10.0) -> None:
    """Poll the server-side ``check`` (an awaitable predicate) until true, bounded."""
    with anyio_fail_after(seconds, what):
        while not await check():  # noqa: ASYNC110 - the server has no event to wait on
            await asyncio.sleep(0.02)


class anyio_fail_after:
    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what

    def __enter__(self) -> None:
        import anyio

        self.scope = anyio.fail_after(self.seconds)
        self.scope.__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.scope.__exit__(*exc_info)
        except TimeoutError:
            raise AssertionError(f"not within {self.seconds}s: {self.what}") from None


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "ep_sqla_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


# ============================================================================ arguments


def test_pool_arguments_are_mapped() -> None:
    """pool_size + max_overflow, pool_timeout and pool_recycle become the elastic settings."""
    engine = create_engine(
        "postgresql+psycopg://u@127.0.0.1/db",
        pool_size=3,
        max_overflow=2,
        pool_timeout=7,
        pool_recycle=120,
        pool_pre_ping=True,
        pool_use_lifo=True,
    )
    pool = engine.pool
    assert isinstance(pool, ElasticPool)
    s = pool.settings
    assert (s.max_connections, s.pool_timeout, s.connection_lifetime) == (5, 7, 120)
    assert s.reset == "none"
    assert pool._pre_ping is True
    assert pool._recycle == -1  # elasticpool retires at connection_lifetime, not SQLAlchemy
    assert pool.timeout() == 7


def test_defaults_are_sqlalchemys_limit() -> None:
    """With no limit given the engine keeps QueuePool's 5 + 10 connections; recycle -1 is never."""
    s = create_engine("postgresql+psycopg://u@h/db", pool_recycle=-1).pool.settings  # type: ignore[attr-defined]
    assert (s.max_connections, s.total_max_connections, s.connection_lifetime) == (15, None, None)
    assert s.ping_after is None
    assert s.fail_fast is True


def test_elastic_settings_as_keywords() -> None:
    """Elastic settings pass through sqlalchemy.create_engine(poolclass=ElasticPool)."""
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://u@h/db",
        poolclass=ElasticPool,
        total_max_connections=40,
        idle_timeout=30,
        name="web",
        max_waiting=8,
    )
    pool = engine.pool
    assert isinstance(pool, ElasticPool)
    assert (pool.name, pool.settings.total_max_connections, pool.settings.max_connections) == (
        "web",
        40,
        None,
    )
    assert (pool.settings.idle_timeout, pool.settings.max_waiting) == (30, 8)


def test_every_elastic_setting_is_a_pool_argument() -> None:
    """Each PoolSettings field but pool_timeout and reset reaches ElasticPool by keyword."""
    import dataclasses

    from sqlalchemy.util import get_cls_kwargs

    names = {f.name for f in dataclasses.fields(PoolSettings)} - {"pool_timeout"}
    assert names <= get_cls_kwargs(ElasticPool)
    pool = create_engine(
        "postgresql+psycopg://u@h/db", min_connections=1, saturation_warning=None
    ).pool
    assert isinstance(pool, ElasticPool)
    assert (pool.settings.min_connections, pool.settings.saturation_warning) == (1, None)


def test_whole_settings_record() -> None:
    """A PoolSettings record is taken as it is, SQLAlchemy's mapped arguments over it."""
    pool = create_engine(
        "postgresql+psycopg://u@h/db",
        settings=PoolSettings(max_connections=4, idle_timeout=9),
        pool_timeout=3,
    ).pool
    assert isinstance(pool, ElasticPool)
    assert (pool.settings.max_connections, pool.settings.idle_timeout) == (4, 9)
    assert (pool.settings.pool_timeout, pool.settings.reset) == (3, "none")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool_use_lifo": False}, r"pool_use_lifo=False cannot be honoured.*pool_use_lifo=True"),
        ({"pool_size": 0}, r"pool_size=0 \(no limit\) cannot be honoured.*pool_size >= 1"),
        ({"max_overflow": -1}, r"max_overflow=-1 \(no limit\) cannot be honoured"),
        ({"reset": "session"}, r"reset='session' cannot be honoured.*pool_reset_on_return"),
        (
            {"pool_size": 5, "total_max_connections": 50},
            r"pool_size/max_overflow and total_max_connections both given",
        ),
        ({"max_overflow": 2, "max_connections": 9}, r"and max_connections both given"),
        (
            {"pool_recycle": 60, "connection_lifetime": 60},
            r"pool_recycle and connection_lifetime both given",
        ),
        ({"poolclass": sqlalchemy.pool.QueuePool}, r"poolclass= cannot be given"),
    ],
)
def test_arguments_that_cannot_be_honoured(kwargs: dict[str, Any], match: str) -> None:
    """Each argument ElasticPool cannot honour is an ArgumentError naming it and what is allowed."""
    with pytest.raises(exc.ArgumentError, match=match):
        create_engine("postgresql+psycopg://u@h/db", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pool_size": "5"}, TypeError, r"pool_size must be an integer"),
        ({"pool_size": -2}, ValueError, r"pool_size must be an integer >= 1"),
        ({"pool_recycle": 0}, ValueError, r"pool_recycle must be a number of seconds > 0"),
        ({"idle_timeout": -1}, ValueError, r"idle_timeout must be"),
        ({"total_max_connections": "lots"}, ValueError, r"total_max_connections must be"),
        ({"membership": "postgres"}, TypeError, r"membership must be an elasticpool Membership"),
        ({"name": ""}, ValueError, r"name must be a non-empty string"),
        ({"pool_sizes": 5}, TypeError, r"Invalid argument\(s\) 'pool_sizes'"),
    ],
)
def test_bad_values(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    """A wrong type is a TypeError, a wrong value a ValueError, each naming the argument."""
    with pytest.raises(error, match=match):
        create_engine("postgresql+psycopg://u@h/db", **kwargs)


def test_async_engine_takes_the_same_arguments() -> None:
    """create_async_engine maps the same arguments onto an ElasticPool."""
    engine = create_async_engine("postgresql+asyncpg://u@h/db", pool_size=2, max_overflow=0)
    pool = engine.sync_engine.pool
    assert isinstance(pool, ElasticPool)
    assert pool.settings.max_connections == 2
    assert pool._is_asyncio is True
    with pytest.raises(exc.ArgumentError, match=r"pool= cannot be given"):
        create_async_engine("postgresql+asyncpg://u@h/db", pool=pool)


# ============================================================================ async engines


@pytest.mark.anyio
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_core_connects_once_per_server_connection(pg_server: Any, driver: str) -> None:
    """Connect-time setup (connect, first_connect) runs once per server connection, not checkout."""
    engine = create_async_engine(url(pg_server, driver), pool_size=2, max_overflow=1)
    seen = Counted(engine)
    pids: set[int] = set()

    async def one() -> None:
        async with engine.connect() as conn:
            pids.add((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await asyncio.sleep(0.001)

    try:
        for _ in range(5):
            await asyncio.gather(*(one() for _ in range(8)))
        c = seen.counts
        assert c["checkout"] == c["checkin"] == c["reset"] == 40
        assert c["connect"] == len(pids) <= 3
        assert c["first_connect"] <= 1
        assert c["close"] == 0
        assert engine.sync_engine.pool.status().startswith("ElasticPool 'default': limit 3")
    finally:
        await engine.dispose()
    assert seen.counts["close"] == seen.counts["connect"]


@pytest.mark.anyio
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_orm_session(pg_server: Any, driver: str) -> None:
    """An AsyncSession creates, writes and reads mapped objects through the pool."""
    engine = create_async_engine(url(pg_server, driver), pool_size=3, max_overflow=0)
    table = f"ep_sqla_async_{driver}"
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await conn.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)"))

        async def write(i: int) -> None:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(
                    text(f"INSERT INTO {table} VALUES (:i, :n)"), {"i": i, "n": f"n{i}"}
                )

        await asyncio.gather(*(write(i) for i in range(12)))
        async with AsyncSession(engine) as session:
            names = (await session.execute(text(f"SELECT name FROM {table} ORDER BY id"))).all()
        assert [n for (n,) in names] == [f"n{i}" for i in range(12)]
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session, session.begin():
            session.add_all([Item(id=1, name="one"), Item(id=2, name="two")])
        async with AsyncSession(engine) as session:
            item = await session.get(Item, 2)
            assert item is not None
            assert item.name == "two"
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
            await conn.run_sync(Base.metadata.drop_all)
        assert engine.sync_engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_dispose_closes_server_side(
    pg_server: Any, admin: asyncpg.Connection, driver: str
) -> None:
    """After dispose() the server shows none of the engine's backends; the engine works again."""
    app = f"ep-sqla-dispose-{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(
        url(pg_server, driver), pool_size=4, max_overflow=0, connect_args=tagged(driver, app)
    )
    seen = Counted(engine)

    async def hold(ready: asyncio.Event, n: list[int]) -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            n.append(1)
            if len(n) == 4:
                ready.set()
            await ready.wait()

    try:
        ready, n = asyncio.Event(), []
        await asyncio.gather(*(hold(ready, n) for _ in range(4)))
        assert await backends(admin, app) == 4
        old_pool = engine.sync_engine.pool
        await engine.dispose()
        assert seen.counts["close"] == 4  # closed by the time dispose() returns
        # (the server lists a backend until its process has exited)
        await until(lambda: _equals(backends(admin, app), 0), "the backends gone")
        assert old_pool.elastic_pool is None  # type: ignore[attr-defined]
        async with engine.connect() as conn:  # a new pool, on demand
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        assert engine.sync_engine.pool is not old_pool
        assert seen.counts["connect"] == 5  # events carried over to the recreated pool
    finally:
        await engine.dispose()
    await until(lambda: _equals(backends(admin, app), 0), "the backends gone")


@pytest.mark.anyio
async def test_async_dispose_with_borrowed_connections(
    pg_server: Any, admin: asyncpg.Connection
) -> None:
    """dispose() closes idle connections now; a borrowed one keeps working and closes on return."""
    app = f"ep-sqla-borrowed-{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(
        url(pg_server, "asyncpg"), pool_size=2, max_overflow=0, connect_args=tagged("asyncpg", app)
    )
    try:
        async with engine.connect() as idle:
            await idle.execute(text("SELECT 1"))
            async with engine.connect() as held:
                await held.execute(text("SELECT 1"))
        assert await backends(admin, app) == 2
        conn = await engine.connect()
        await engine.dispose()
        await until(lambda: _equals(backends(admin, app), 1), "the idle one closed")
        assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
        await conn.close()
        await until(lambda: _equals(backends(admin, app), 0), "the borrowed one closed on return")
    finally:
        await engine.dispose()


async def _equals(awaitable: Any, value: Any) -> bool:
    return bool(await awaitable == value)


@pytest.mark.anyio
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_killed_backend_is_invalidated_and_evicted(
    pg_server: Any, admin: asyncpg.Connection, driver: str
) -> None:
    """A backend killed under a borrowed connection: the error invalidates it, its slot is freed."""
    engine = create_async_engine(url(pg_server, driver), pool_size=1, max_overflow=0)
    seen = Counted(engine)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises(exc.DBAPIError) as caught:
                await conn.execute(text("SELECT pg_sleep(0.01)"))
            assert caught.value.connection_invalidated
        assert seen.counts["invalidate"] == 1
        pool = engine.sync_engine.pool
        assert isinstance(pool, ElasticPool)
        # The one slot is free again: the next checkout (limit 1) gets a new connection.
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
        stats = pool.stats()
        assert stats is not None
        assert stats.returned_broken == 1
        assert stats.size == 1
    finally:
        await engine.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_killed_idle_backend_is_not_lent(
    pg_server: Any, admin: asyncpg.Connection, driver: str
) -> None:
    """An idle connection whose backend was killed is closed at checkout, not lent (no error)."""
    engine = create_async_engine(url(pg_server, driver), pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await until(
            lambda: _equals(
                admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid), 0
            ),
            "the backend gone",
        )
        await asyncio.sleep(0.05)  # the client's socket sees the end of the session
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_async_pool_timeout(pg_server: Any) -> None:
    """A checkout waiting past pool_timeout raises SQLAlchemy's TimeoutError (elasticpool's too)."""
    engine = create_async_engine(
        url(pg_server, "asyncpg"), pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    try:
        async with engine.connect():
            with pytest.raises(exc.TimeoutError, match=r"no connection within 0.2s") as caught:
                await engine.connect()
            assert isinstance(caught.value, elasticpool.PoolTimeout)
            assert isinstance(caught.value, PoolTimeout)
        async with engine.connect() as conn:  # the slot was not lost
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        assert engine.sync_engine.pool.checkedout() == 0
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_async_waiters_are_served_in_order(pg_server: Any) -> None:
    """Checkouts queued at the limit are served first come, first served."""
    engine = create_async_engine(url(pg_server, "asyncpg"), pool_size=1, max_overflow=0)
    order: list[int] = []
    try:
        first = await engine.connect()
        await first.execute(text("SELECT 1"))

        async def wait(i: int) -> None:
            async with engine.connect() as conn:
                order.append(i)
                await conn.execute(text("SELECT 1"))

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(wait(i)))
            await asyncio.sleep(0.01)  # each queues before the next (ordering, not syncing)
        await first.close()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_async_idle_timeout_closes_with_the_close_event(pg_server: Any) -> None:
    """An idle connection past idle_timeout is closed by elasticpool, firing the close event."""
    engine = create_async_engine(url(pg_server, "asyncpg"), pool_size=2, idle_timeout=0.2)
    closed = asyncio.Event()
    event.listen(engine.sync_engine.pool, "close", lambda *a: closed.set())
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await asyncio.wait_for(closed.wait(), 10)
        stats = engine.sync_engine.pool.stats()  # type: ignore[attr-defined]
        assert stats.closed_idle == 1
        assert stats.size == 0
    finally:
        await engine.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("pre_ping", [True, False])
async def test_async_pre_ping_is_sqlalchemys(pg_server: Any, pre_ping: bool) -> None:
    """pool_pre_ping is honoured: SQLAlchemy pings every checkout but a fresh connection's."""
    engine = create_async_engine(
        url(pg_server, "psycopg"), pool_size=1, max_overflow=0, pool_pre_ping=pre_ping
    )
    pings = []
    real = engine.dialect.do_ping

    def do_ping(dbapi_connection: Any) -> bool:
        pings.append(dbapi_connection)
        return real(dbapi_connection)

    engine.dialect.do_ping = do_ping  # type: ignore[method-assign]
    try:
        for _ in range(3):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert len(pings) == (2 if pre_ping else 0)
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_async_engine_on_a_new_event_loop_needs_dispose(pg_server: Any) -> None:
    """Using the engine from another event loop is refused by name; after dispose() it works."""
    engine = create_async_engine(url(pg_server, "asyncpg"), pool_size=1, max_overflow=0)

    async def query() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT 7"))).scalar_one())

    try:
        assert await query() == 7
        with pytest.raises(RuntimeError, match=r"opened on another event loop.*dispose"):
            await asyncio.to_thread(asyncio.run, query())
        await engine.dispose()

        async def query_then_dispose() -> int:
            try:
                return await query()
            finally:
                await engine.dispose()

        assert await asyncio.to_thread(asyncio.run, query_then_dispose()) == 7
    finally:
        await engine.dispose()


# ============================================================================ sync engines


def sync_backends(server: Any, app: str) -> int:
    """How many backends the server shows named ``app`` (a short psycopg connection)."""
    import psycopg

    with psycopg.connect(server.dsn(application_name="ep-sqla-admin"), autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def sync_until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Poll a server-side ``check`` until true, bounded."""
    import time

    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        time.sleep(0.02)


@pytest.mark.anyio
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_records_run_the_fleets_statements(
    pg_server: Any, admin: asyncpg.Connection, driver: str
) -> None:
    """The async record connector's fetch and transaction run on the driver's own connection."""
    engine = create_async_engine(url(pg_server, driver), total_max_connections="50%")
    try:
        async with engine.connect() as conn:  # the pool opens: the percentage needs fetch
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        pool = engine.sync_engine.pool
        assert isinstance(pool, ElasticPool)
        most, reserved = await admin.fetchrow(SERVER_LIMITS_SQL)
        expected = PoolSettings(total_max_connections="50%").with_server_limits(most, reserved)
        shell = pool.elastic_pool
        assert shell.settings.total_max_connections == expected.total_max_connections
        connector = shell.connector
        async with shell.acquire() as rec:
            assert await connector.fetch(rec, "SELECT $1::int + 1, '5%'", 41) == [(42, "5%")]
            async with connector.transaction(rec, readonly=True):
                with pytest.raises(Exception, match="read-only transaction"):
                    await connector.fetch(rec, "CREATE TEMP TABLE ep_sqla_ro (i int)")
            assert await connector.fetch(rec, "SELECT 1") == [(1,)]  # no transaction left open
    finally:
        await engine.dispose()


def run_threads(n: int, fn: Callable[[int], None]) -> None:
    """Run ``fn(i)`` in ``n`` threads at once; re-raise the first failure."""
    import threading

    errors: list[BaseException] = []
    go = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            go.wait()
            fn(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]


def test_sync_core_connects_once_per_server_connection(pg_server: Any) -> None:
    """Sync engine, threads: connect-time setup once per server connection, events per checkout."""
    engine = create_engine(url(pg_server, "psycopg"), pool_size=2, max_overflow=2)
    seen = Counted(engine)
    pids: set[int] = set()

    def work(i: int) -> None:
        for _ in range(25):
            with engine.connect() as conn:
                pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())

    try:
        run_threads(8, work)
        c = seen.counts
        assert c["checkout"] == c["checkin"] == c["reset"] == 200
        assert c["connect"] == len(pids) <= 4
        assert c["first_connect"] <= 1
        assert c["close"] == 0
        assert engine.pool.checkedout() == 0
        assert engine.pool.checkedin() == len(pids)
    finally:
        engine.dispose()
    assert seen.counts["close"] == seen.counts["connect"]


def test_sync_records_run_the_fleets_statements(pg_server: Any) -> None:
    """The sync record connector's fetch and transaction run on psycopg's own connection."""
    import psycopg

    engine = create_engine(url(pg_server, "psycopg"), total_max_connections="50%")
    try:
        with engine.connect() as conn:  # the pool opens: the percentage needs fetch
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            row = admin.execute(SERVER_LIMITS_SQL).fetchone()
        assert row is not None
        expected = PoolSettings(total_max_connections="50%").with_server_limits(*row)
        sync_pool = engine.pool.elastic_pool
        assert sync_pool.settings.total_max_connections == expected.total_max_connections
        connector = engine.pool._shell.connector  # SyncPool does not show its connector
        with sync_pool.connection() as rec:
            assert connector.fetch(rec, "SELECT $1::int + 1, '5%'", 41) == [(42, "5%")]
            with (
                connector.transaction(rec, readonly=True),
                pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
            ):
                connector.fetch(rec, "CREATE TEMP TABLE ep_sqla_ro (i int)")
            assert connector.fetch(rec, "SELECT 1") == [(1,)]  # no transaction left open
    finally:
        engine.dispose()


def test_sync_orm_sessions_in_threads(pg_server: Any) -> None:
    """ORM Sessions in threads write and read mapped objects through the pool."""
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(
        url(pg_server, "psycopg"), poolclass=ElasticPool, max_connections=3
    )
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)

        def write(i: int) -> None:
            for j in range(5):
                with Session(engine) as session, session.begin():
                    session.add(Item(id=i * 10 + j, name=f"item {i}.{j}"))

        run_threads(6, write)
        with Session(engine) as session:
            assert session.query(Item).count() == 30
            item = session.get(Item, 42)
            assert item is not None
            assert item.name == "item 4.2"
        Base.metadata.drop_all(engine)
        stats = engine.pool.stats()  # type: ignore[attr-defined]
        assert stats.max == 3
        assert stats.size <= 3
    finally:
        engine.dispose()


def test_sync_dispose_closes_server_side(pg_server: Any) -> None:
    """After dispose() the server shows none of the engine's backends; the engine works again."""
    app = f"ep-sqla-sync-dispose-{uuid.uuid4().hex[:8]}"
    engine = create_engine(
        url(pg_server, "psycopg"),
        pool_size=3,
        max_overflow=0,
        connect_args={"application_name": app},
    )
    seen = Counted(engine)
    try:
        with engine.connect() as a, engine.connect() as b, engine.connect() as c:
            for conn in (a, b, c):
                conn.execute(text("SELECT 1"))
        assert sync_backends(pg_server, app) == 3
        engine.dispose()
        assert seen.counts["close"] == 3
        sync_until(lambda: sync_backends(pg_server, app) == 0, "the backends gone")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert seen.counts["connect"] == 4
    finally:
        engine.dispose()
    sync_until(lambda: sync_backends(pg_server, app) == 0, "the backends gone")


def test_sync_killed_backend_is_invalidated_and_evicted(pg_server: Any) -> None:
    """A backend killed under a borrowed sync connection: invalidated, its slot freed."""
    import psycopg

    engine = create_engine(url(pg_server, "psycopg"), pool_size=1, max_overflow=0)
    seen = Counted(engine)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(exc.OperationalError) as caught:
                conn.execute(text("SELECT 1"))
            assert caught.value.connection_invalidated
        assert seen.counts["invalidate"] == 1
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        stats = engine.pool.stats()  # type: ignore[attr-defined]
        assert stats.returned_broken == 1
        assert stats.size == 1
    finally:
        engine.dispose()


def test_sync_killed_idle_backend_is_not_lent(pg_server: Any) -> None:
    """An idle sync connection whose backend was killed is closed at checkout, not lent."""
    import psycopg

    engine = create_engine(url(pg_server, "psycopg"), pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

            def gone() -> bool:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                return row is not None and row[0] == 0

            sync_until(gone, "the backend gone")  # it has said goodbye on the socket by then
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        assert engine.pool.stats().closed_broken == 1  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_sync_pool_timeout(pg_server: Any) -> None:
    """A sync checkout waiting past pool_timeout raises SQLAlchemy's TimeoutError, nothing lost."""
    engine = create_engine(url(pg_server, "psycopg"), pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        with engine.connect():
            with pytest.raises(exc.TimeoutError, match=r"no connection within 0.2s") as caught:
                engine.connect()
            assert isinstance(caught.value, elasticpool.PoolTimeout)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_sync_connect_error_reaches_the_caller(pg_server: Any) -> None:
    """A failing connect raises the driver's error at once, as in QueuePool."""
    bad = url(pg_server, "psycopg").set(password="not-the-password")
    engine = create_engine(bad, pool_timeout=20)
    try:
        with pytest.raises(exc.OperationalError, match="password authentication failed"):
            engine.connect()
        assert "not-the-password" not in engine.pool.status()
    finally:
        engine.dispose()


def test_recreate_keeps_arguments_and_events(pg_server: Any) -> None:
    """recreate() gives a new ElasticPool with the same settings, name and listeners."""
    engine = create_engine(
        url(pg_server, "psycopg"), pool_size=2, max_overflow=1, idle_timeout=30, name="api"
    )
    seen = Counted(engine)
    pool = engine.pool
    assert isinstance(pool, ElasticPool)
    new = pool.recreate()
    assert isinstance(new, ElasticPool)
    assert new is not pool
    assert (new.settings, new.name) == (pool.settings, "api")
    try:
        conn = new.connect()
        conn.close()
        assert seen.counts["connect"] == 1
        assert seen.counts["checkout"] == 1
        assert new.status().startswith("ElasticPool 'api': limit 3, size 1")
    finally:
        new.dispose()
        pool.dispose()


def test_membership_instance_serves_one_pool_at_a_time(pg_server: Any) -> None:
    """A membership instance still used by a closing pool is refused by name; a factory is not."""
    from elasticpool import StaticMembership

    membership = StaticMembership(1)
    engine = create_engine(
        url(pg_server, "psycopg"), total_max_connections=5, membership=membership
    )
    try:
        held = engine.connect()  # borrowed across dispose(): the old pool closes in the background
        engine.dispose()
        with pytest.raises(
            RuntimeError, match=r"membership is still in use by a pool still closing"
        ):
            engine.connect()
        held.close()
    finally:
        engine.dispose()
    made: list[StaticMembership] = []

    def factory() -> StaticMembership:
        made.append(StaticMembership(1))
        return made[-1]

    engine = create_engine(url(pg_server, "psycopg"), total_max_connections=5, membership=factory)
    try:
        held = engine.connect()
        engine.dispose()
        with engine.connect() as conn:  # a new pool, a new membership
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        held.close()
        assert len(made) == 2
    finally:
        engine.dispose()


def test_forked_child_opens_a_pool_of_its_own(pg_server: Any) -> None:
    """After os.fork() the child opens a pool of its own; the parent's connection is untouched."""
    import os
    import warnings

    engine = create_engine(url(pg_server, "psycopg"), pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            parent_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with warnings.catch_warnings():  # 3.12+: fork() with the pool's threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                with engine.connect() as conn:
                    mine = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                engine.dispose()
                code = 0 if mine != parent_pid else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with engine.connect() as conn:  # the parent's connection still serves it
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == parent_pid
    finally:
        engine.dispose()


# ============================================================================ a fleet of processes

MEMBER = Path(__file__).resolve().parent / "sqlalchemy_member.py"


@pytest.mark.parametrize(
    "modes",
    [("sync", "sync", "sync"), ("async", "async", "async"), ("sync", "async", "sync")],
    ids=["sync", "async", "mixed"],
)
def test_three_processes_share_one_total(pg_server: Any, modes: tuple[str, ...]) -> None:
    """Three engine processes share total_max_connections: backends stay within total + members."""
    import json
    import subprocess
    import sys
    import threading
    import time

    import psycopg

    total, uid = 6, uuid.uuid4().hex[:8]
    name, table = f"ep-sqla-{uid}", f"ep_sqla_fleet_{uid}"
    tag = f"%|{name}|%"  # <membership prefix>|<pool>|<instance>: every member's connections
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            while not stop.is_set():
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                    (tag,),
                ).fetchone()
                assert row is not None
                samples.append(int(row[0]))
                time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, str(MEMBER), "--url", pg_server.dsn(), "--mode", mode),
                *("--table", table, "--name", name, "--total", str(total), "--workers", "4"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    ]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        stop.set()
        sampler.join(30)
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
            admin.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_config"')
            for fn in admin.execute(
                "SELECT oid::regprocedure::text FROM pg_proc WHERE proname LIKE %s",
                (f"{table}%",),
            ).fetchall():
                admin.execute(f"DROP FUNCTION IF EXISTS {fn[0]}")
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["errors"] == [], result
        assert result["queries"] > 0, result
        assert 1 <= result["peak_limit"] <= total, result
    peak = max(samples)
    assert 0 < peak <= total + len(modes), (peak, samples[-20:])


def test_example_app(pg_server: Any) -> None:
    """examples/sqlalchemy_app.py runs its sync and async engines to a good end."""
    import os
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_app.py"
    proc = subprocess.run(
        [sys.executable, str(example), "--dsn", pg_server.dsn()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = proc.stdout
    assert "sync: 120 visits" in out
    assert "async: 50 requests over" in out
    assert "after idling, ElasticPool 'default': limit 10, size 0" in out
    assert out.rstrip().endswith("ok")
