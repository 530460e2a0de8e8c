"""The ``asyncpg.Pool`` face (``elasticpool.asyncpg.create_pool``) against a real PostgreSQL.

Every public member of the face is exercised, then what a pool must survive:
session state left by a borrower, backends terminated while idle or busy, a
server restart, and a task cancelled mid-query. Server-side effects are checked
through an observer connection of its own; each pool gets an
``application_name`` of its own.
"""

from __future__ import annotations

import asyncio
import functools
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from elasticpool import PoolClosed, PoolTimeout, StaticMembership
from elasticpool.embedded import EmbeddedPostgres

asyncpg = pytest.importorskip("asyncpg")

from asyncpg import exceptions as pg_exc  # noqa: E402

from elasticpool.asyncpg import (  # noqa: E402
    AsyncpgPool,
    AsyncpgPoolClosed,
    create_pool,
    is_disconnect_error,
)

from ..helpers import eventually, settle, unique_name  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

BOUND = 10.0
"""Overall bound, in seconds, on any one wait for a server-side effect."""


class Observer:
    """Looks at the server through a plain asyncpg connection of its own."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def pids(self, app: str) -> set[int]:
        """Backends whose ``application_name`` is ``app``."""
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app
        )
        return {r["pid"] for r in rows}

    async def wait_pids(self, app: str, n: int) -> set[int]:
        """Poll until exactly ``n`` backends have ``app``; return them."""
        found: set[int] = set()

        async def check() -> bool:
            nonlocal found
            found = await self.pids(app)
            return len(found) == n

        await eventually(check, bool, f"{app!r} never had {n} backend(s)")
        return found

    async def wait_active(self, pid: int, needle: str) -> None:
        """Poll until backend ``pid`` runs a query containing ``needle``."""

        async def check() -> bool:
            row = await self.conn.fetchrow(
                "SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid
            )
            return row is not None and row["state"] == "active" and needle in row["query"]

        await eventually(check, bool, f"backend {pid} never ran {needle!r}")

    async def wait_idle(self, pid: int) -> None:
        """Poll until backend ``pid`` is idle: no query stuck on it."""

        async def check() -> bool:
            state = await self.conn.fetchval(
                "SELECT state FROM pg_stat_activity WHERE pid = $1", pid
            )
            return bool(state == "idle")

        await eventually(check, bool, f"backend {pid} never became idle")


@pytest.fixture
async def observer(pg_server: Any) -> AsyncIterator[Observer]:
    """An :class:`Observer` on the session server."""
    conn = await asyncpg.connect(pg_server.dsn(application_name=unique_name("observer")))
    try:
        yield Observer(conn)
    finally:
        await conn.close()


# =============================================================================
# Opening and closing
# =============================================================================


async def test_await_create_pool_opens_min_size_first(pg_server: Any, observer: Observer) -> None:
    """await create_pool() returns with min_size connections open; close() closes them all."""
    app = unique_name("open")
    pool = await create_pool(pg_server.dsn(application_name=app), min_size=3, max_size=5)
    assert isinstance(pool, AsyncpgPool)
    assert (pool.get_size(), pool.get_idle_size()) == (3, 3)
    assert (pool.get_min_size(), pool.get_max_size(), pool.get_init_size()) == (3, 5, 3)
    assert len(await observer.pids(app)) == 3
    assert not pool.is_closing()
    assert await pool is pool  # awaiting again is harmless
    await pool.close()
    assert pool.is_closing()
    await observer.wait_pids(app, 0)
    await pool.close()  # twice is harmless
    pool.terminate()


async def test_async_with_create_pool_and_init_size(pg_server: Any, observer: Observer) -> None:
    """async with create_pool() opens init_size connections; the surplus ages out to min_size."""
    app = unique_name("init-size")
    async with create_pool(
        pg_server.dsn(application_name=app),
        min_size=1,
        init_size=3,
        max_size=4,
        max_inactive_connection_lifetime=0.2,
    ) as pool:
        assert pool.get_size() == 3
        assert pool.get_init_size() == 3
        await observer.wait_pids(app, 1)
        assert pool.get_size() == 1
        assert pool.stats().closed_idle == 2
    assert pool.is_closing()
    await observer.wait_pids(app, 0)


async def test_create_pool_raises_the_connect_error(pg_server: Any, observer: Observer) -> None:
    """A failed connect while opening raises its error, as asyncpg does, and closes the pool."""
    app = unique_name("bad-password")
    pool = create_pool(pg_server.dsn(application_name=app, password="wrong"), min_size=2)
    with pytest.raises(pg_exc.InvalidPasswordError):
        await pool
    assert pool.is_closing()
    with pytest.raises(AsyncpgPoolClosed):
        await pool.fetchval("SELECT 1")
    assert await observer.pids(app) == set()
    with pytest.raises(pg_exc.InvalidPasswordError):  # asyncpg's own pool: the same error
        await asyncpg.create_pool(pg_server.dsn(password="wrong"), min_size=2)


async def test_min_size_zero_opens_nothing(pg_server: Any, observer: Observer) -> None:
    """With min_size=0 nothing is opened until someone borrows, and the pool can drain."""
    app = unique_name("empty")
    async with create_pool(
        pg_server.dsn(application_name=app), min_size=0, max_inactive_connection_lifetime=0.1
    ) as pool:
        assert pool.get_size() == 0
        assert await pool.fetchval("SELECT 1") == 1
        assert pool.get_size() == 1
        await observer.wait_pids(app, 0)
        assert pool.get_size() == 0


async def test_unopened_pool_and_concurrent_open_raise_interface_error(pg_server: Any) -> None:
    """Using a pool before it is opened, or opening it twice at once: asyncpg's InterfaceError."""
    pool = create_pool(pg_server.dsn(), min_size=1)
    with pytest.raises(pg_exc.InterfaceError, match="not initialized"):
        await pool.fetchval("SELECT 1")
    with pytest.raises(pg_exc.InterfaceError, match="not initialized"):
        await pool.close()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool._async_init)
        await anyio.lowlevel.checkpoint()
        with pytest.raises(pg_exc.InterfaceError, match="being initialized in another task"):
            await pool
        with pytest.raises(pg_exc.InterfaceError, match="not yet ready"):
            await pool.fetchval("SELECT 1")
    assert await pool.fetchval("SELECT 1") == 1
    await pool.close()


async def test_closed_pool_raises_interface_error_and_pool_closed(pg_server: Any) -> None:
    """After close(), acquire raises one error that is both InterfaceError and PoolClosed."""
    pool = await create_pool(pg_server.dsn(), min_size=1, max_size=1, name="shut")
    await pool.close()
    with pytest.raises(AsyncpgPoolClosed, match=r"^pool 'shut' is closed \(in use 0, idle 0") as e:
        await pool.acquire()
    assert isinstance(e.value, pg_exc.InterfaceError)
    assert isinstance(e.value, PoolClosed)
    with pytest.raises(pg_exc.InterfaceError):
        await pool.execute("SELECT 1")
    with pytest.raises(PoolClosed):
        async with pool.acquire():
            pass
    with pytest.raises(AsyncpgPoolClosed):
        await pool  # cannot be reopened


async def test_close_waits_for_borrowed_connections(pg_server: Any, observer: Observer) -> None:
    """close() waits until borrowed connections are back; meanwhile acquire says it is closing."""
    app = unique_name("close-wait")
    pool = await create_pool(pg_server.dsn(application_name=app), min_size=1, max_size=2)
    conn = await pool.acquire()
    closed = anyio.Event()

    async def close() -> None:
        await pool.close()
        closed.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(close)
        await eventually(_true(pool.is_closing), bool, "close() never started")
        with pytest.raises(AsyncpgPoolClosed, match="is closing"):
            await pool.acquire()
        tg.start_soon(pool.close)  # a second close() waits for the first
        assert not closed.is_set()
        assert await conn.fetchval("SELECT 1") == 1  # still usable until released
        await pool.release(conn)
        with anyio.fail_after(BOUND):
            await closed.wait()
    await observer.wait_pids(app, 0)


def _true(fn: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A synchronous predicate as the awaitable check :func:`poll` takes."""

    async def check() -> bool:
        return fn()

    return check


async def test_terminate_closes_everything_at_once(pg_server: Any, observer: Observer) -> None:
    """terminate() closes borrowed and idle connections without waiting."""
    app = unique_name("terminate")
    pool = await create_pool(pg_server.dsn(application_name=app), min_size=2, max_size=2)
    conn = await pool.acquire()
    pool.terminate()
    assert pool.is_closing()
    assert conn.is_closed()
    await observer.wait_pids(app, 0)
    await pool.release(conn)  # harmless after terminate
    pool.terminate()


# =============================================================================
# Borrowing
# =============================================================================


async def test_acquire_forms_and_release_rules(pg_server: Any) -> None:
    """Both acquire forms lend asyncpg's own Connection; release is lenient only for our own."""
    async with create_pool(pg_server.dsn(), min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            assert type(conn) is asyncpg.Connection  # not a proxy
            assert await conn.fetchval("SELECT 1") == 1
            await pool.release(conn)  # releasing inside the block is allowed, as in asyncpg
        conn = await pool.acquire()
        assert pool.get_size() - pool.get_idle_size() == 1
        await pool.release(conn, timeout=5)
        await pool.release(conn)  # already released: nothing happens
        foreign = await asyncpg.connect(pg_server.dsn())
        try:
            with pytest.raises(pg_exc.InterfaceError, match="is not a member of pool"):
                await pool.release(foreign)
        finally:
            await foreign.close()
        async with pool.acquire() as conn:
            await pool.release(conn)
            again = await pool.acquire()  # the same connection, lent again
            assert again is conn
        assert pool.stats().in_use == 1  # the block's exit did not release the new borrow
        await pool.release(again)
        ctx = pool.acquire()
        async with ctx:
            pass
        with pytest.raises(pg_exc.InterfaceError, match="already acquired"):
            async with ctx:
                pass
        await settle(pool)
        s = pool.stats()
        assert (s.in_use, s.closed_broken) == (0, 0)


@pytest.mark.parametrize("make", [asyncpg.create_pool, create_pool], ids=["asyncpg", "ours"])
async def test_stale_release_is_ignored_and_the_next_borrow_stands(
    pg_server: Any, make: Callable[..., Any]
) -> None:
    """A second release after the connection was lent to another task is ignored, as in asyncpg."""
    pool = await make(pg_server.dsn(), min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        pid = conn.get_server_pid()
        await pool.release(conn)
        lent, done = anyio.Event(), anyio.Event()
        got: list[Any] = []

        async def other() -> None:
            got.append(await pool.acquire())
            lent.set()
            await done.wait()
            got.append(await got[0].fetchval("SELECT pg_backend_pid()"))
            await pool.release(got[0])

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await lent.wait()
            await pool.release(conn)  # stale: nothing happens
            with pytest.raises(asyncio.TimeoutError):
                await pool.acquire(timeout=0.05)  # a third borrower waits for the other task
            done.set()
        assert got[1] == pid  # the other task kept its connection throughout
        third = await pool.acquire(timeout=BOUND)
        assert await third.fetchval("SELECT pg_backend_pid()") == pid
        await pool.release(third)
    finally:
        pool.terminate()  # close() is not under test: a failure here must not hang on it


@pytest.mark.parametrize("make", [asyncpg.create_pool, create_pool], ids=["asyncpg", "ours"])
async def test_closing_a_borrowed_connection_frees_its_place(
    pg_server: Any, make: Callable[..., Any], observer: Observer
) -> None:
    """conn.close() on a borrowed connection frees its place at once, released or not."""
    app = unique_name("user-close")
    pool = await make(pg_server.dsn(application_name=app), min_size=1, max_size=1)
    try:
        conn = await pool.acquire()
        await conn.close()  # never released
        again = await pool.acquire(timeout=BOUND)  # a new connection in its place
        assert await again.fetchval("SELECT 1") == 1
        await pool.release(again)
        async with pool.acquire(timeout=BOUND) as conn:
            await conn.close()
        await pool.release(conn)  # released after all: harmless
        with anyio.fail_after(BOUND):
            await pool.close()  # does not wait for the closed ones to come back
    except BaseException:
        pool.terminate()
        raise
    await observer.wait_pids(app, 0)


async def test_connect_timeout_none_means_no_bound_as_in_asyncpg(pg_server: Any) -> None:
    """create_pool(timeout=None) is accepted: asyncpg.connect gets timeout=None unchanged."""
    seen: list[Any] = []

    async def connect(dsn: str, **kwargs: Any) -> Any:
        seen.append(kwargs["timeout"])
        return await asyncpg.connect(dsn, **kwargs)

    async with create_pool(
        pg_server.dsn(), min_size=1, max_size=1, timeout=None, connect=connect
    ) as pool:
        assert await pool.fetchval("SELECT 1") == 1
        assert pool.elastic.settings.connect_timeout == 60.0  # the pool's own bound stays finite
    assert seen == [None]


async def test_acquire_timeout_raises_asyncio_timeout_error(pg_server: Any) -> None:
    """acquire(timeout=) on an exhausted pool raises asyncio.TimeoutError (a PoolTimeout)."""
    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, name="tiny") as pool:
        held = await pool.acquire()
        with pytest.raises(asyncio.TimeoutError) as e:
            await pool.acquire(timeout=0.05)
        assert isinstance(e.value, PoolTimeout)
        assert "pool 'tiny'" in str(e.value)
        with pytest.raises(asyncio.TimeoutError):
            async with pool.acquire(timeout=0.05):
                pass
        with pytest.raises(asyncio.TimeoutError):
            await pool.acquire(timeout=0)  # asyncpg's "do not wait"
        await pool.release(held)
        await settle(pool)  # the reset runs after release() returns
        conn = await pool.acquire(timeout=0)
        await pool.release(conn)


async def test_acquire_without_timeout_waits_for_a_release(pg_server: Any) -> None:
    """acquire() with no timeout waits (asyncpg's default) and gets the connection released."""
    async with create_pool(pg_server.dsn(), min_size=1, max_size=1) as pool:
        held = await pool.acquire()
        got = anyio.Event()
        lent: list[Any] = []

        async def wait() -> None:
            async with pool.acquire() as conn:
                lent.append(conn)
                got.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await eventually(
                _true(lambda: pool.stats().waiting == 1), bool, "the second acquire never queued"
            )
            assert not got.is_set()
            await pool.release(held)
            with anyio.fail_after(BOUND):
                await got.wait()
        assert lent == [held]


async def test_shortcuts_run_on_pooled_connections(pg_server: Any) -> None:
    """fetch, fetchrow, fetchval, fetchmany, execute, executemany and the COPY shortcuts work."""
    table = f"ep_face_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
    try:
        async with create_pool(pg_server.dsn(), min_size=1, max_size=2) as pool:
            assert (
                await pool.execute(f"INSERT INTO {table} VALUES ($1, $2)", 1, "a") == "INSERT 0 1"
            )
            await pool.executemany(f"INSERT INTO {table} VALUES ($1, $2)", [(2, "b"), (3, "c")])
            rows = await pool.fetch(f"SELECT id, name FROM {table} ORDER BY id")
            assert [tuple(r) for r in rows] == [(1, "a"), (2, "b"), (3, "c")]
            row = await pool.fetchrow(f"SELECT name FROM {table} WHERE id = $1", 2)
            assert row is not None
            assert row["name"] == "b"
            assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 3
            assert await pool.fetchval("SELECT 1, 2", column=1) == 2
            many = await pool.fetchmany("SELECT $1::int * 2", [(1,), (5,)])
            assert [r[0] for r in many] == [2, 10]
            out = io.BytesIO()
            assert await pool.copy_from_table(table, output=out, format="csv") == "COPY 3"
            assert out.getvalue().splitlines()[0] == b"1,a"
            out = io.BytesIO()
            status = await pool.copy_from_query(
                f"SELECT name FROM {table} WHERE id > $1", 1, output=out
            )
            assert status == "COPY 2"
            assert out.getvalue() == b"b\nc\n"
            source = io.BytesIO(b"4\td\n5\te\n")
            assert await pool.copy_to_table(table, source=source) == "COPY 2"
            records = [(6, "f"), (7, "g")]
            status = await pool.copy_records_to_table(
                table, records=records, columns=["id", "name"]
            )
            assert status == "COPY 2"
            assert await pool.fetchval(f"SELECT string_agg(name, '' ORDER BY id) FROM {table}") == (
                "abcdefg"
            )
            with pytest.raises(pg_exc.UniqueViolationError):
                await pool.execute(f"INSERT INTO {table} VALUES (1, 'again')")
            await settle(pool)
            assert pool.stats().in_use == 0
    finally:
        pg_server.psql(f"DROP TABLE {table}")


async def test_transaction_commits_and_rolls_back(pg_server: Any) -> None:
    """pool.transaction() commits a clean block and rolls back one that raises."""
    table = f"ep_face_tx_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE TABLE {table} (x int)")
    try:
        async with create_pool(pg_server.dsn(), min_size=1, max_size=1) as pool:
            async with pool.transaction() as conn:
                assert conn.is_in_transaction()
                await conn.execute(f"INSERT INTO {table} VALUES (1)")

            async def insert_then_fail() -> None:
                async with pool.transaction() as conn:
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                    raise RuntimeError("boom")

            with pytest.raises(RuntimeError, match="boom"):
                await insert_then_fail()
            async with pool.transaction(isolation="serializable", readonly=True) as conn:
                assert await conn.fetchval("SHOW transaction_isolation") == "serializable"
                assert await conn.fetchval("SHOW transaction_read_only") == "on"
            assert await pool.fetchval(f"SELECT array_agg(x) FROM {table}") == [1]
            await settle(pool)
            s = pool.stats()
            assert (s.in_use, s.closed_broken) == (0, 0)
    finally:
        pg_server.psql(f"DROP TABLE {table}")


async def test_setup_init_and_a_failing_setup(pg_server: Any) -> None:
    """init runs once per connection, setup on every acquire; a failing setup releases it."""
    inits: list[int] = []
    setups: list[int] = []
    fail = False

    async def init(conn: Any) -> None:
        inits.append(conn.get_server_pid())

    async def setup(conn: Any) -> None:
        assert type(conn) is asyncpg.Connection
        setups.append(conn.get_server_pid())
        if fail:
            raise ValueError("setup failed")

    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, init=init, setup=setup) as pool:
        for _ in range(3):
            assert await pool.fetchval("SELECT 1") == 1
        assert len(inits) == 1
        assert setups == inits * 3
        fail = True
        with pytest.raises(ValueError, match="setup failed"):
            async with pool.acquire():
                raise AssertionError("setup failed: the block must not run")
        await settle(pool)
        assert (pool.stats().in_use, pool.get_size()) == (0, 1)
        fail = False
        assert await pool.fetchval("SELECT 1") == 1


async def test_custom_reset_and_rollback_mode(pg_server: Any) -> None:
    """reset=coroutine replaces asyncpg's default clean-up; reset="rollback" only rolls back."""
    calls: list[Any] = []

    async def reset(conn: Any) -> None:
        calls.append(conn)

    for option in (reset, "rollback"):
        async with create_pool(pg_server.dsn(), min_size=1, max_size=1, reset=option) as pool:
            async with pool.acquire() as conn:
                await conn.execute("SET search_path = pg_catalog")
                await conn.execute("BEGIN")
                pid = conn.get_server_pid()
            async with pool.acquire() as conn:
                assert conn.get_server_pid() == pid
                assert not conn.is_in_transaction()
                assert await conn.fetchval("SHOW search_path") == "pg_catalog"
                if option is reset:
                    first = conn
    assert calls == [first, first]  # once per release, with asyncpg's own Connection


async def test_expire_connections_and_set_connect_args(pg_server: Any, observer: Observer) -> None:
    """set_connect_args() applies to new connections; expire_connections() replaces old ones."""
    first, second = unique_name("first"), unique_name("second")
    async with create_pool(pg_server.dsn(application_name=first), min_size=2, max_size=2) as pool:
        old = await observer.wait_pids(first, 2)
        pool.set_connect_args(pg_server.dsn(application_name=second))
        assert await pool.fetchval("SHOW application_name") == first  # kept until they expire
        await pool.expire_connections()
        assert await pool.fetchval("SHOW application_name") == second
        await observer.wait_pids(first, 0)
        assert not old & await observer.pids(second)
        assert pool.stats().closed_lifetime == 2


async def test_max_queries_retires_a_connection(pg_server: Any) -> None:
    """A connection that has run max_queries queries is retired when it comes back."""
    async with create_pool(
        pg_server.dsn(), min_size=1, max_size=1, max_queries=3, ping_after=None
    ) as pool:
        async with pool.acquire() as conn:
            first = conn.get_server_pid()
            await conn.fetchval("SELECT 1")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == first  # one query so far (plus the reset)
            await conn.fetchval("SELECT 1")
            await conn.fetchval("SELECT 1")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() != first
        s = pool.stats()
        assert (s.closed_lifetime, s.closed_broken) == (1, 0)


class MyConnection(asyncpg.Connection):  # type: ignore[misc]
    """A custom connection class, to check connection_class is honoured."""


async def test_parameter_mapping_and_elastic_keywords(pg_server: Any) -> None:
    """asyncpg's parameters map onto PoolSettings; elastic settings pass through as keywords."""
    pool = create_pool(
        pg_server.dsn(),
        min_size=1,
        max_inactive_connection_lifetime=0,
        total_max_connections=6,
        pool_timeout=2.5,
        max_connecting=3,
        ping_after=None,
        connection_lifetime=30.0,
        membership=StaticMembership(2, index=0),
        name="mapped",
        command_timeout=9,
        connection_class=MyConnection,
        loop=asyncio.get_running_loop(),
    )
    settings = pool.elastic.settings
    assert (settings.min_connections, settings.max_connections) == (1, None)
    assert settings.idle_timeout is None  # 0 disables, as in asyncpg
    assert (settings.total_max_connections, settings.pool_timeout) == (6, 2.5)
    assert (settings.max_connecting, settings.ping_after, settings.reset) == (3, None, "session")
    assert settings.connect_timeout == 60.0  # asyncpg's connect timeout
    async with pool:
        assert pool.get_max_size() == 3  # this instance's share of the total
        assert pool.name == "mapped"
        assert await pool.fetchval("SHOW application_name") == ""
        async with pool.acquire() as conn:
            assert conn._config.command_timeout == 9
            assert type(conn) is MyConnection
    defaults = create_pool(pg_server.dsn(), max_inactive_connection_lifetime=900).elastic.settings
    assert (defaults.pool_timeout, defaults.idle_timeout, defaults.min_connections) == (
        None,
        None,  # could never fire before the default connection_lifetime: dropped quietly
        10,
    )
    assert create_pool(pg_server.dsn()).elastic.settings.idle_timeout == 300.0


def test_invalid_arguments_are_rejected_like_asyncpg() -> None:
    """asyncpg's value checks and messages, elasticpool's type errors; elastic names refused."""
    for kwargs, error, message in [
        ({"max_size": 0}, ValueError, "max_size is expected to be greater than zero"),
        ({"min_size": -1}, ValueError, "min_size is expected to be greater or equal to zero"),
        ({"min_size": 3, "max_size": 2}, ValueError, "min_size is greater than max_size"),
        ({"init_size": 11}, ValueError, "init_size is greater than max_size"),
        ({"min_size": 2, "init_size": 1}, ValueError, "init_size is smaller than min_size"),
        ({"max_queries": 0}, ValueError, "max_queries is expected to be greater than zero"),
        ({"max_inactive_connection_lifetime": -1}, ValueError, "max_inactive_connection"),
        ({"connection_class": int}, TypeError, "connection_class is expected"),
        ({"record_class": dict}, TypeError, "record_class is expected"),
        ({"max_connections": 3}, TypeError, r"pass max_size="),
        ({"min_connections": 3}, TypeError, r"pass min_size="),
        ({"reset": "sometimes"}, ValueError, "reset must be"),
        ({"setup": 1}, TypeError, "setup must be"),
        ({"pool_timeout": -1}, ValueError, "pool_timeout"),
        ({"max_size": "3"}, TypeError, r"^max_size must be an integer >= 1 \(got '3'\)"),
        ({"max_size": 2.5}, TypeError, r"^max_size must be an integer >= 1 \(got 2\.5\)"),
        ({"min_size": None}, TypeError, r"^min_size must be an integer >= 0 \(got None\)"),
        ({"max_queries": "9"}, TypeError, r"^max_queries must be an integer >= 1"),
        ({"max_inactive_connection_lifetime": "5"}, TypeError, r"^max_inactive_connection_life"),
    ]:
        with pytest.raises(error, match=message):
            create_pool("postgresql://127.0.0.1/x", **kwargs)


async def test_connect_errors_reach_waiting_acquires(pg_server: Any) -> None:
    """While connects fail and nothing is borrowed, acquire raises the connect error (no hang)."""
    async with create_pool(pg_server.dsn(), min_size=0, max_size=2, backoff_max=0.2) as pool:
        pool.set_connect_args(pg_server.dsn(password="rotated-away"))
        with pytest.raises(pg_exc.InvalidPasswordError):
            await pool.acquire()
        with pytest.raises(pg_exc.InvalidPasswordError):
            await pool.fetchval("SELECT 1")
        pool.set_connect_args(pg_server.dsn())
        assert await pool.fetchval("SELECT 1") == 1


async def test_repr_names_the_pool_without_secrets(pg_server: Any) -> None:
    """The repr counts connections and names the pool; the password is nowhere in it."""
    pool = create_pool(pg_server.dsn(), min_size=1, name="shop")
    async with pool:
        text = repr(pool)
        assert text.startswith("<AsyncpgPool 'shop' [in use 0, idle 1")
        assert pg_server.password not in text
        assert pg_server.password not in repr(pool.elastic)


# =============================================================================
# Session hygiene
# =============================================================================


@pytest.mark.parametrize("reset", [None, "session"], ids=["default", "session"])
@pytest.mark.parametrize("become", ["SET ROLE", "SET SESSION AUTHORIZATION"])
async def test_session_reset_hides_everything_a_borrower_set(
    pg_server: Any, observer: Observer, become: str, reset: str | None
) -> None:
    """Role, settings, LISTEN, advisory lock, cursor never reach the next; temp, PREPARE: "session".

    The default is asyncpg's own reset (what ``Connection.reset()`` clears,
    and the role): a temporary table and an SQL-level prepared statement stay,
    as with asyncpg.Pool. ``reset="session"`` clears them too.
    """
    role = f"ep_face_role_{uuid.uuid4().hex[:8]}"
    pg_server.psql(f"CREATE ROLE {role}")
    notified: list[str] = []
    kept = reset is None
    try:
        async with create_pool(pg_server.dsn(), min_size=1, max_size=1, reset=reset) as pool:

            async def borrower() -> tuple[int, Any]:
                async with pool.acquire() as conn:
                    await conn.add_listener("ep_chan", lambda *args: notified.append(args[-1]))
                    await conn.execute(
                        f"""
                        SET search_path = pg_catalog;
                        SET statement_timeout = 4321;
                        SET application_name = 'borrower';
                        CREATE TEMP TABLE scratch (x int);
                        SELECT pg_advisory_lock(424242);
                        PREPARE borrowed AS SELECT 1;
                        BEGIN;
                        DECLARE held CURSOR WITH HOLD FOR SELECT 1;
                        COMMIT;
                        {become} {role};
                        """
                    )
                    assert await conn.fetchval("SELECT current_user") == role
                    return conn.get_server_pid(), await conn.prepare("SELECT 2")

            with pytest.warns(pg_exc.InterfaceWarning, match="1 active notification listener"):
                pid, statement = await borrower()
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # same backend
                row = await conn.fetchrow(
                    """
                    SELECT current_user, session_user,
                           current_setting('search_path') AS search_path,
                           current_setting('statement_timeout') AS statement_timeout,
                           current_setting('application_name') AS application_name,
                           to_regclass('pg_temp.scratch') AS scratch,
                           (SELECT count(*) FROM pg_listening_channels()) AS listening,
                           (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) AS prepared,
                           (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors
                    """
                )
                assert dict(row) == {
                    "current_user": pg_server.user,
                    "session_user": pg_server.user,
                    "search_path": '"$user", public',
                    "statement_timeout": "0",
                    "application_name": "",
                    "scratch": "scratch" if kept else None,
                    "listening": 0,
                    "prepared": 1 if kept else 0,
                    "cursors": 0,
                }
                assert not conn._listeners  # asyncpg's Python-side listeners are gone too
            locks = await observer.conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", pid
            )
            assert locks == 0
            await observer.conn.execute("NOTIFY ep_chan, 'after release'")
            with pytest.raises(pg_exc.InterfaceError, match="released back to the pool"):
                await statement.fetchval()
            assert await pool.fetchval("SELECT 1") == 1  # a round trip: a notification would be in
            assert notified == []
    finally:
        pg_server.psql(f"DROP OWNED BY {role}; DROP ROLE {role}")


async def test_rollback_mode_keeps_settings_but_ends_the_transaction(pg_server: Any) -> None:
    """With reset="rollback" the next borrower sees the settings but not the transaction."""
    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, reset="rollback") as pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.execute("SET statement_timeout = 4321")
            await conn.execute("BEGIN")
            with pytest.raises(pg_exc.DivisionByZeroError):
                await conn.execute("SELECT 1/0")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW statement_timeout") == "4321ms"


async def test_python_side_callbacks_go_back_to_what_init_left(pg_server: Any) -> None:
    """Log listeners from init stay; a borrower's log and termination listeners are dropped."""

    def from_init(conn: Any, message: Any) -> None:
        pass

    def from_borrower(conn: Any, message: Any) -> None:
        pass

    async def init(conn: Any) -> None:
        conn.add_log_listener(from_init)

    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, init=init) as pool:
        async with pool.acquire() as conn:  # no warning: init's listener belongs to the pool
            conn.add_termination_listener(lambda conn: None)
            first = conn

        async def borrow_and_listen() -> None:
            async with pool.acquire() as conn:
                conn.add_log_listener(from_borrower)

        with pytest.warns(pg_exc.InterfaceWarning, match="1 active log listener"):
            await borrow_and_listen()
        async with pool.acquire() as conn:
            assert conn is first
            assert [cb.cb for cb in conn._log_listeners] == [from_init]
            # The borrower's is gone; the pool's own stays (it frees a place closed while lent).
            assert [cb.cb for cb in conn._termination_listeners] == [pool._closed]


# =============================================================================
# Failures
# =============================================================================


@pytest.mark.parametrize("ping_after", [None, 0.0])
async def test_idle_backend_terminated_is_never_lent(
    pg_server: Any, observer: Observer, ping_after: float | None
) -> None:
    """A backend killed while idle: the next borrower gets a working connection, not that one."""
    app = unique_name("kill-idle")
    async with create_pool(
        pg_server.dsn(application_name=app), min_size=1, max_size=1, ping_after=ping_after
    ) as pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            dead = conn
        await settle(pool)
        assert await observer.conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        if ping_after is None:  # no ping: the pool relies on asyncpg seeing the socket close
            await eventually(_true(dead.is_closed), bool, "asyncpg never noticed the closed socket")
        async with pool.acquire() as conn:
            assert conn is not dead
            assert conn.get_server_pid() != pid
            assert await conn.fetchval("SELECT 1") == 1
        s = pool.stats()
        assert (s.closed_broken, s.size) == (1, 1)


async def test_busy_backend_terminated_fails_its_holder_only(
    pg_server: Any, observer: Observer
) -> None:
    """A backend killed mid-query: the holder gets the error, the connection is evicted."""
    app = unique_name("kill-busy")
    async with create_pool(pg_server.dsn(application_name=app), min_size=1, max_size=1) as pool:
        started = anyio.Event()
        caught: list[BaseException] = []
        pids: list[int] = []

        async def busy() -> None:
            try:
                async with pool.acquire() as conn:
                    pids.append(conn.get_server_pid())
                    started.set()
                    await conn.fetchval("SELECT pg_sleep(10)")
            except Exception as exc:
                caught.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(busy)
            await started.wait()
            await observer.wait_active(pids[0], "pg_sleep")
            assert await observer.conn.fetchval("SELECT pg_terminate_backend($1)", pids[0])
        assert len(caught) == 1
        assert is_disconnect_error(caught[0]), caught[0]
        assert await pool.fetchval("SELECT pg_backend_pid()") != pids[0]
        s = pool.stats()
        assert (s.returned_broken, s.closed_broken, s.size) == (1, 1, 1)


async def test_task_cancelled_mid_query_leaves_no_broken_connection(
    pg_server: Any, observer: Observer
) -> None:
    """A query cancelled mid-flight: same backend reused, working, idle on the server."""
    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, ping_after=None) as pool:
        pid = await pool.fetchval("SELECT pg_backend_pid()")
        for in_transaction in (False, True):
            started = anyio.Event()

            async def victim(
                in_transaction: bool = in_transaction, started: anyio.Event = started
            ) -> None:
                async with pool.acquire() as conn:
                    if in_transaction:
                        await conn.execute("BEGIN")
                    started.set()
                    await conn.fetchval("SELECT pg_sleep(10)")

            async with anyio.create_task_group() as tg:
                tg.start_soon(victim)
                await started.wait()
                await observer.wait_active(pid, "pg_sleep")
                tg.cancel_scope.cancel()
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == pid
                assert not conn.is_in_transaction()
            await settle(pool)
            s = pool.stats()
            assert (s.size, s.idle, s.in_use, s.resetting) == (1, 1, 0, 0)
            assert (s.connects, s.closed_broken, s.returned_broken) == (1, 0, 0)
            await observer.wait_idle(pid)


async def test_server_restart_recovers_without_lending_a_dead_connection_twice(
    private_server: EmbeddedPostgres,
) -> None:
    """Callers running through an immediate restart each meet a dead connection at most once."""
    async with create_pool(
        private_server.dsn(), min_size=2, max_size=4, backoff_max=0.2, name="restart"
    ) as pool:
        warm = [await pool.acquire() for _ in range(4)]
        before = {conn.get_server_pid() for conn in warm}
        for conn in warm:
            await pool.release(conn)
        restarted = anyio.Event()
        dead_lent: dict[int, int] = {}
        connect_errors: dict[int, int] = {}
        after: dict[int, set[int]] = {}
        errors: list[Exception] = []

        async def caller(i: int) -> None:
            dead_lent[i] = connect_errors[i] = 0
            after[i] = set()
            with anyio.fail_after(BOUND):
                while len(after[i]) < 1 or not restarted.is_set():
                    lent = False
                    try:
                        async with pool.acquire() as conn:
                            lent = True
                            pid = await conn.fetchval("SELECT pg_backend_pid()")
                        if restarted.is_set():
                            after[i].add(pid)
                    except Exception as exc:
                        errors.append(exc)
                        if lent:
                            dead_lent[i] += 1
                        else:
                            connect_errors[i] += 1
                    await anyio.sleep(0.005)  # pacing, not synchronisation: no hot loop

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(caller, i)
            await anyio.to_thread.run_sync(
                functools.partial(private_server.restart, mode="immediate")
            )
            restarted.set()
        assert all(n <= 1 for n in dead_lent.values()), dead_lent
        for exc in errors:  # dead connections, and connects refused while the server was down
            assert is_disconnect_error(exc) or isinstance(exc, pg_exc.PostgresError), exc
        assert not (before & set().union(*after.values()))
        await settle(pool)
        s = pool.stats()
        assert s.size <= 4
        assert s.in_use == 0
        assert await pool.fetchval("SELECT 1") == 1


# =============================================================================
# Code written for asyncpg.Pool runs unchanged
# =============================================================================


class Row(asyncpg.Record):  # type: ignore[misc]
    """A custom record class, to check record_class is honoured."""


async def written_for_asyncpg(pool: Any, table: str) -> list[Any]:
    """Uses only asyncpg.Pool's public API; returns what it observed, comparable across pools."""
    seen: list[Any] = [pool.get_min_size(), pool.get_max_size(), pool.is_closing()]
    async with pool.acquire() as con:
        await con.execute("SET search_path = pg_catalog")
        seen.append(await con.fetchval("SHOW search_path"))
    seen.append(await pool.fetchval("SHOW search_path"))  # reset on release
    con = await pool.acquire()
    try:
        async with con.transaction():
            await con.execute(f"INSERT INTO {table} VALUES ($1)", 1)
        try:
            async with con.transaction():
                await con.execute(f"INSERT INTO {table} VALUES ($1)", 2)
                raise KeyError("rollback")
        except KeyError:
            seen.append("rolled back")
    finally:
        await pool.release(con)
    await pool.executemany(f"INSERT INTO {table} VALUES ($1)", [(3,), (4,)])
    rows = await pool.fetch(f"SELECT x FROM {table} ORDER BY x")
    seen.append([type(r).__name__ for r in rows[:1]])
    seen.append([r["x"] for r in rows])
    row = await pool.fetchrow(f"SELECT count(*) AS n FROM {table}")
    seen.append(dict(row))
    try:
        await pool.fetchval("SELECT 1/0")
    except asyncpg.DivisionByZeroError as exc:
        seen.append(type(exc).__name__)
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        await pool.acquire(timeout=0.05)
    except asyncio.TimeoutError:
        seen.append("timeout")
    for con in held:
        await pool.release(con)
    await pool.release(held[0])  # twice: harmless in both
    await pool.expire_connections()
    seen.append(await pool.fetchval("SELECT $1::int + 1", 41))
    pool.set_connect_args(*POOL_DSN)
    await pool.expire_connections()
    seen.append(await pool.fetchval("SHOW application_name"))
    await pool.close()
    seen.append(pool.is_closing())
    try:
        await pool.fetchval("SELECT 1")
    except asyncpg.InterfaceError:
        seen.append("closed")
    return seen


POOL_DSN: list[str] = []


async def test_code_written_for_asyncpg_pool_runs_unchanged(pg_server: Any) -> None:
    """The same asyncpg.Pool code gives the same results on asyncpg's pool and on ours."""
    table = f"ep_face_same_{uuid.uuid4().hex[:8]}"
    POOL_DSN[:] = [pg_server.dsn(application_name="set-later")]
    results = []
    try:
        for make in (asyncpg.create_pool, create_pool):
            pg_server.psql(f"CREATE TABLE {table} (x int)")
            try:
                pool = await make(pg_server.dsn(), min_size=2, max_size=2, record_class=Row)
                results.append(await written_for_asyncpg(pool, table))
            finally:
                pg_server.psql(f"DROP TABLE {table}")
    finally:
        POOL_DSN.clear()
    theirs, ours = results
    assert theirs == [
        2,
        2,
        False,
        "pg_catalog",
        '"$user", public',
        "rolled back",
        ["Row"],
        [1, 3, 4],
        {"n": 3},
        "DivisionByZeroError",
        "timeout",
        42,
        "set-later",
        True,
        "closed",
    ]
    assert ours == theirs


async def test_awaiting_twice_at_once_fails_with_asyncpgs_message(pg_server: Any) -> None:
    """A pool awaited by two tasks at once: the second gets asyncpg's own InterfaceError text."""
    pool = create_pool(pg_server.dsn(), min_size=1, max_size=1)
    first = asyncio.ensure_future(pool._async_init())
    second = asyncio.ensure_future(pool._async_init())
    await first
    with pytest.raises(pg_exc.InterfaceError, match=r"^pool is being initialized in another task$"):
        await second
    await pool.close()
