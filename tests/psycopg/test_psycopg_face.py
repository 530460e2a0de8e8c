"""``elasticpool.psycopg.AsyncConnectionPool``: psycopg_pool's API and semantics, checked.

Where psycopg_pool's behaviour is the specification, the same scenario runs
against the real :class:`psycopg_pool.AsyncConnectionPool` and against ours,
and the transcripts are compared. Everything runs against a real PostgreSQL;
server-side effects are polled for, each poll bounded.
"""

from __future__ import annotations

import contextlib
import socket
import types
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

from psycopg import AsyncConnection  # noqa: E402
from psycopg.pq import TransactionStatus  # noqa: E402

import elasticpool  # noqa: E402
import elasticpool.psycopg as ep_psycopg  # noqa: E402
from elasticpool.fleet._schema import beat_function, fill_function  # noqa: E402
from elasticpool.psycopg import (  # noqa: E402
    AsyncConnectionPool,
    PoolClosed,
    PoolTimeout,
    TooManyRequests,
)
from elasticpool.testing import FaultProxy  # noqa: E402

from ..helpers import eventually, unique_name, wait_until  # noqa: E402

pytestmark = pytest.mark.anyio
postgres = pytest.mark.postgres

Conn = AsyncConnection[Any]

BOUND = 10.0
"""Overall bound, in seconds, on any one wait in these tests."""

STAT_KEYS = {
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "requests_waiting",
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "usage_ms",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
}
"""Every statistics key psycopg_pool 3.3 reports (``psycopg_pool.base.BasePool``)."""


async def fetchval(conn: Conn, sql: Any, params: Any = None) -> Any:
    """The first column of the first row of ``sql``."""
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    return None if row is None else row[0]


@pytest.fixture
async def observer(pg_server: Any) -> AsyncIterator[Conn]:
    """A plain autocommit connection, not from any pool, to look at the server."""
    conn = await AsyncConnection.connect(
        pg_server.dsn(application_name=unique_name("observer")), autocommit=True
    )
    try:
        yield conn
    finally:
        await conn.close()


async def app_pids(observer: Conn, app: str) -> set[int]:
    """PIDs of the backends whose ``application_name`` is ``app``."""
    cur = await observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]
    )
    return {row[0] for row in await cur.fetchall()}


async def terminate(observer: Conn, pid: int) -> None:
    """``pg_terminate_backend(pid)``, then wait until the backend is gone."""
    await observer.execute("SELECT pg_terminate_backend(%s)", [pid])

    async def alive() -> int:
        return int(
            await fetchval(observer, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        )

    await eventually(alive, lambda n: n == 0, f"backend {pid} never exited")


def refused_conninfo() -> str:
    """A conninfo whose port nobody listens on: every connect is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=postgres user=nobody connect_timeout=2"


# --------------------------------------------------------------------------- no server needed


def test_errors_are_psycopg_pools_and_elasticpools_at_once() -> None:
    """Each error class is caught by psycopg_pool's class, elasticpool's class, and its bases."""
    assert issubclass(PoolTimeout, psycopg_pool.PoolTimeout)
    assert issubclass(PoolTimeout, elasticpool.PoolTimeout)
    assert issubclass(PoolTimeout, TimeoutError)
    assert issubclass(PoolTimeout, psycopg.OperationalError)
    assert issubclass(PoolClosed, psycopg_pool.PoolClosed)
    assert issubclass(PoolClosed, elasticpool.PoolClosed)
    assert issubclass(TooManyRequests, psycopg_pool.TooManyRequests)
    assert issubclass(TooManyRequests, elasticpool.TooManyWaiters)
    exc = PoolTimeout("couldn't get a connection after 1.00 sec")
    assert str(exc) == "couldn't get a connection after 1.00 sec"
    assert exc.sqlstate is None


CONSTRUCTOR_CASES: list[dict[str, Any]] = [
    {},
    {"min_size": 2, "max_size": 5, "name": "named", "timeout": 3.0, "max_waiting": 7},
    {"min_size": 0, "max_size": 1, "max_lifetime": 100.0, "max_idle": 50.0},
    {"reconnect_timeout": 12.0, "num_workers": 1, "close_returns": True},
    {"kwargs": {"autocommit": True}},
    {"min_size": -1},
    {"min_size": 3, "max_size": 2},
    {"min_size": 0},
    {"num_workers": 0},
]


@pytest.mark.parametrize("kwargs", CONSTRUCTOR_CASES)
def test_constructor_validates_and_exposes_attributes_as_psycopg_pool(
    kwargs: dict[str, Any],
) -> None:
    """Same validation errors, and the same public attributes, for the same arguments."""
    attributes = (
        "conninfo",
        "kwargs",
        "min_size",
        "max_size",
        "timeout",
        "max_waiting",
        "max_lifetime",
        "max_idle",
        "reconnect_timeout",
        "num_workers",
        "close_returns",
        "connection_class",
        "closed",
    )

    def build(mod: types.ModuleType) -> Any:
        try:
            pool = mod.AsyncConnectionPool("dbname=x", open=False, **kwargs)
        except Exception as exc:
            return (type(exc).__name__, str(exc))
        values = {name: getattr(pool, name) for name in attributes}
        values["name"] = pool.name if "name" in kwargs else pool.name.startswith("pool-")
        return values

    assert build(ep_psycopg) == build(psycopg_pool)


def test_parameters_map_to_elastic_settings() -> None:
    """psycopg_pool's parameters become the documented elasticpool settings.

    As psycopg_pool, the face checks a connection on borrow only when given
    ``check`` (``ping_after=None`` otherwise; closed ones are still found).
    """
    pool = AsyncConnectionPool(
        "dbname=x",
        open=False,
        min_size=2,
        max_size=6,
        timeout=4.0,
        max_waiting=0,
        max_lifetime=float("inf"),
        max_idle=30.0,
        num_workers=5,
        backoff_max=2.0,
    )
    s = pool.elastic.settings
    assert (s.min_connections, s.max_connections, s.pool_timeout, s.max_waiting) == (
        2,
        6,
        4.0,
        None,
    )
    assert (s.connection_lifetime, s.idle_timeout, s.max_connecting) == (None, 30.0, 5)
    assert (s.reset, s.ping_after) == ("rollback", None)
    assert (s.lifetime_jitter, s.backoff_max) == (0.05, 2.0)

    async def check(conn: Conn) -> None:
        pass

    checked = AsyncConnectionPool("dbname=x", open=False, check=check, reset_mode="session")
    assert (checked.elastic.settings.ping_after, checked.elastic.settings.reset) == (0.0, "session")
    with pytest.raises(TypeError, match="'max_connections' is set from psycopg_pool's 'max_size'"):
        AsyncConnectionPool("dbname=x", open=False, max_connections=3)
    with pytest.raises(ValueError, match=r"^max_lifetime \(connection_lifetime\) must be a"):
        AsyncConnectionPool("dbname=x", open=False, max_lifetime=0)
    with pytest.raises(ValueError, match=r"^reset_mode \(reset\) must be one of"):
        AsyncConnectionPool("dbname=x", open=False, reset_mode=cast(Any, "everything"))


def test_wrong_argument_types_are_type_errors_naming_the_argument() -> None:
    """A size, worker count or timeout of the wrong type is a TypeError naming the argument."""
    for kwargs, message in [
        ({"min_size": "2"}, r"^min_size must be an integer >= 0 \(got '2'\)"),
        ({"max_size": 2.5}, r"^max_size must be an integer >= 0 or None \(got 2\.5\)"),
        ({"num_workers": "3"}, r"^num_workers must be an integer >= 1 \(got '3'\)"),
        ({"reconnect_timeout": "60"}, r"^reconnect_timeout must be a number of seconds >= 0"),
    ]:
        with pytest.raises(TypeError, match=message):
            AsyncConnectionPool("dbname=x", open=False, **kwargs)
    with pytest.raises(ValueError, match="min_size cannot be negative"):
        AsyncConnectionPool("dbname=x", open=False, min_size=-1)


def test_opening_without_a_running_loop_fails_as_psycopg_pool() -> None:
    """``open=None`` or ``open=True`` outside an event loop: the same warning and error."""
    transcript: dict[str, Any] = {}
    for mod in (psycopg_pool, ep_psycopg):
        seen = []
        for open_ in (None, True):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with pytest.raises(RuntimeError) as info:
                    mod.AsyncConnectionPool("dbname=x", open=open_)
            seen.append((str(info.value), [(w.category, str(w.message)) for w in caught]))
        transcript[mod.__name__] = seen
    assert transcript["elasticpool.psycopg"] == transcript["psycopg_pool"]
    assert transcript["psycopg_pool"][1][1][0][0] is RuntimeWarning


# --------------------------------------------------------------------------- lifecycle


async def open_transcript(mod: types.ModuleType, dsn: str) -> list[Any]:
    """How a pool's ``open`` modes behave: warnings, ``closed``, and errors, step by step."""
    out: list[Any] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def step(label: str, *extra: Any) -> None:
            out.append((label, [(w.category.__name__, str(w.message)) for w in caught], *extra))
            caught.clear()

        pool = mod.AsyncConnectionPool(dsn, min_size=1, name="t")  # open=None: opens now
        step("constructed, open=None", pool.closed)
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        step("first use")
        async with pool.connection():
            pass
        step("second use")
        await pool.close()
        step("closed", pool.closed)
        with pytest.raises(mod.PoolClosed) as info:
            await pool.getconn()
        step("getconn after close", str(info.value))
        with pytest.raises(mod.PoolClosed) as info:
            await pool.open()
        step("reopen", str(info.value))

        async with (
            mod.AsyncConnectionPool(dsn, min_size=1, name="t") as pool,
            pool.connection(),
        ):
            pass
        step("async with, open=None")

        pool = mod.AsyncConnectionPool(dsn, min_size=1, open=True, name="t")
        step("constructed, open=True", pool.closed)
        await pool.close()

        pool = mod.AsyncConnectionPool(dsn, min_size=1, open=False, name="t")
        step("constructed, open=False", pool.closed)
        with pytest.raises(mod.PoolClosed) as info:
            await pool.getconn()
        step("getconn before open", str(info.value))
        await pool.open(wait=True, timeout=BOUND)
        await pool.open()  # again: harmless
        step("opened", pool.closed, pool.get_stats()["pool_available"])
        await pool.close()
        await pool.close()  # again: harmless
        step("closed twice", pool.closed)
    return out


@postgres
async def test_open_modes_and_warnings_match_psycopg_pool(pg_server: Any) -> None:
    """``open=None/True/False``, ``async with``, reopen and closing twice: as in psycopg_pool."""
    dsn = pg_server.dsn(application_name=unique_name("open"))
    ours = await open_transcript(ep_psycopg, dsn)
    theirs = await open_transcript(psycopg_pool, dsn)
    assert ours == theirs
    assert ours[1][1][0][0] == "RuntimeWarning"  # first use after an implicit open warns


@postgres
async def test_wait_timeout_closes_the_pool(pg_server: Any) -> None:
    """``open(wait=True)`` that times out closes the pool and raises PoolTimeout with the cause."""
    pool = AsyncConnectionPool(
        refused_conninfo(), min_size=1, open=False, backoff_initial=0.02, backoff_max=0.05
    )
    with pytest.raises(psycopg_pool.PoolTimeout, match="pool initialization incomplete") as info:
        await pool.open(wait=True, timeout=0.3)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert pool.closed
    stats = pool.get_stats()
    assert stats["connections_errors"] >= 1
    assert stats["connections_num"] == stats["connections_errors"]


async def close_transcript(mod: types.ModuleType, dsn: str) -> list[Any]:
    """``close()`` with a waiter queued and a connection borrowed: who sees what."""
    out: list[Any] = []
    pool = mod.AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False, name="c")
    await pool.open(wait=True, timeout=BOUND)
    conn = await pool.getconn()
    waiter_error: list[str] = []

    async def wait_for_one() -> None:
        try:
            await pool.getconn(timeout=BOUND)
        except mod.PoolClosed as exc:
            waiter_error.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_for_one)
        await eventually(
            anyio.lowlevel.checkpoint,
            lambda _: pool.get_stats()["requests_waiting"] == 1,
            "the waiter never queued",
        )
        with anyio.fail_after(BOUND):
            await pool.close()
    out.append(("waiter", waiter_error))
    out.append(("borrowed still works", await fetchval(conn, "SELECT 7")))
    await pool.putconn(conn)

    async def is_closed() -> bool:
        await anyio.lowlevel.checkpoint()
        return bool(conn.closed)

    out.append(("closed on return", await eventually(is_closed, bool, "never closed")))
    return out


@postgres
async def test_close_fails_waiters_and_leaves_borrowed_connections_usable(pg_server: Any) -> None:
    """As in psycopg_pool: waiters get PoolClosed; a borrowed connection works until returned."""
    dsn = pg_server.dsn(application_name=unique_name("close"))
    ours = await close_transcript(ep_psycopg, dsn)
    assert ours == await close_transcript(psycopg_pool, dsn)
    assert ours == [
        ("waiter", ["PoolClosed"]),
        ("borrowed still works", 7),
        ("closed on return", True),
    ]


# --------------------------------------------------------------------------- borrowing


async def insert_then_fail(pool: AsyncConnectionPool[Any], table: str) -> None:
    """Insert a row inside ``pool.connection()``, then raise."""
    async with pool.connection() as conn:
        await conn.execute(f"INSERT INTO {table} VALUES (2)")
        raise ZeroDivisionError


@postgres
async def test_connection_commits_or_rolls_back_and_hands_out_psycopgs_own_connection(
    pg_server: Any, observer: Conn
) -> None:
    """``connection()`` commits a clean block, rolls back a failing one, lends AsyncConnection."""
    table = unique_name("tbl")
    await observer.execute(f"CREATE TABLE {table} (x int)")
    try:
        async with AsyncConnectionPool(pg_server.dsn(), min_size=1, open=False) as pool:
            async with pool.connection() as conn:
                assert type(conn) is AsyncConnection
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                await insert_then_fail(pool, table)
            async with pool.connection() as conn:
                assert conn.info.transaction_status == TransactionStatus.IDLE
                assert not conn.closed
        assert await fetchval(observer, f"SELECT array_agg(x) FROM {table}") == [1]
    finally:
        await observer.execute(f"DROP TABLE {table}")


@postgres
async def test_connection_class_kwargs_and_configure_are_honoured(pg_server: Any) -> None:
    """A ``connection_class`` subclass, callable ``kwargs`` and ``configure`` are all used."""

    class MyConnection(AsyncConnection[Any]):
        pass

    configured: list[int] = []

    async def configure(conn: Conn) -> None:
        configured.append(conn.info.backend_pid)

    async def kwargs() -> dict[str, Any]:
        return {"autocommit": True}

    pool = AsyncConnectionPool(
        pg_server.dsn(),
        connection_class=MyConnection,
        kwargs=kwargs,
        configure=configure,
        min_size=1,
        open=False,
    )
    async with pool, pool.connection() as conn:
        assert type(conn) is MyConnection
        assert conn.autocommit
        assert configured == [conn.info.backend_pid]


@postgres
async def test_getconn_putconn_and_foreign_connections(pg_server: Any) -> None:
    """``putconn`` takes back only this pool's borrowed connections, with psycopg_pool's message."""
    async with (
        AsyncConnectionPool(pg_server.dsn(), min_size=1, open=False, name="mine") as pool,
        AsyncConnectionPool(pg_server.dsn(), min_size=1, open=False, name="other") as other,
    ):
        conn = await pool.getconn()
        with pytest.raises(ValueError, match="can't return connection to pool 'other', it comes"):
            await other.putconn(conn)
        await pool.putconn(conn)
        with pytest.raises(ValueError, match="it doesn't come from any pool"):
            await pool.putconn(conn)
        async with await AsyncConnection.connect(pg_server.dsn()) as stranger:
            with pytest.raises(ValueError, match="can't return connection to pool 'mine'"):
                await pool.putconn(stranger)
        assert pool.get_stats()["pool_available"] == 1


@postgres
async def test_stale_putconn_does_not_return_the_next_borrow(pg_server: Any) -> None:
    """A second ``putconn`` after the connection was lent to another task raises ValueError."""
    async with AsyncConnectionPool(
        pg_server.dsn(), min_size=1, max_size=1, open=False, name="mine"
    ) as pool:
        conn = await pool.getconn()
        await pool.putconn(conn)
        lent, done = anyio.Event(), anyio.Event()
        got: list[Conn] = []

        async def other() -> None:
            got.append(await pool.getconn())
            lent.set()
            await done.wait()
            await pool.putconn(got[0])

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await lent.wait()
            assert got == [conn]
            stale = r"^can't return connection to pool 'mine'; pool 'mine': connection .* released"
            with pytest.raises(ValueError, match=stale):
                await pool.putconn(conn)
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.05)  # a third borrower waits
            done.set()
        assert pool.elastic.stats().in_use == 0


@postgres
async def test_close_returns_hands_the_connection_back(pg_server: Any) -> None:
    """With ``close_returns=True``, ``conn.close()`` returns a borrowed connection to the pool."""
    async with AsyncConnectionPool(
        pg_server.dsn(), min_size=1, close_returns=True, open=False
    ) as pool:
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        await conn.close()
        assert not conn.closed
        async with pool.connection() as again:
            assert again.info.backend_pid == pid
        assert pool.get_stats().get("returns_bad", 0) == 0


@postgres
async def test_timeout_and_max_waiting_raise_psycopg_pool_errors(pg_server: Any) -> None:
    """A full pool times out with PoolTimeout; past ``max_waiting``, TooManyRequests at once."""
    async with AsyncConnectionPool(
        pg_server.dsn(), min_size=1, max_waiting=1, timeout=0.2, open=False, name="full"
    ) as pool:
        conn = await pool.getconn()
        with pytest.raises(
            psycopg_pool.PoolTimeout, match=r"^couldn't get a connection after 0\.20"
        ):
            await pool.getconn()
        with pytest.raises(elasticpool.PoolTimeout, match="pool 'full': no connection within"):
            await pool.getconn(timeout=0.05)
        with pytest.raises(TimeoutError):
            async with pool.connection(timeout=0.05):
                pass

        async def borrow_and_return() -> None:
            await pool.putconn(await pool.getconn(timeout=BOUND))

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrow_and_return)
            await eventually(
                anyio.lowlevel.checkpoint,
                lambda _: pool.get_stats()["requests_waiting"] == 1,
                "the waiter never queued",
            )
            with pytest.raises(TooManyRequests, match="the pool 'full' has already 1 requests"):
                await pool.getconn()
            await pool.putconn(conn)  # goes to the waiter
        stats = pool.get_stats()
        assert (stats["requests_num"], stats["requests_errors"]) == (6, 4)


# --------------------------------------------------------------------------- maintenance


@postgres
async def test_resize_moves_floor_and_limit(pg_server: Any) -> None:
    """``resize`` raises the floor (opened in the background) and the limit; lowering shrinks."""
    async with AsyncConnectionPool(pg_server.dsn(), min_size=1, open=False) as pool:
        await pool.wait(timeout=BOUND)
        await pool.resize(3, 4)
        assert (pool.min_size, pool.max_size) == (3, 4)
        await pool.wait(timeout=BOUND)
        assert pool.get_stats()["pool_available"] == 3
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                await stack.enter_async_context(pool.connection())
            assert pool.get_stats()["pool_size"] == 4
        await pool.resize(1)
        stats = pool.get_stats()
        assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (1, 1, 1)
        with pytest.raises(ValueError, match="max_size must be greater or equal than min_size"):
            await pool.resize(2, 1)


@postgres
async def test_check_and_drain_replace_connections(pg_server: Any, observer: Conn) -> None:
    """``check`` drops a dead idle connection; ``drain`` replaces idle ones now, borrowed later."""
    app = unique_name("check")
    async with AsyncConnectionPool(
        pg_server.dsn(application_name=app), min_size=2, open=False
    ) as pool:
        await pool.wait(timeout=BOUND)
        first = await app_pids(observer, app)
        victim = min(first)
        await terminate(observer, victim)
        await pool.check()
        assert pool.get_stats()["connections_lost"] == 1
        await pool.wait(timeout=BOUND)
        second = await app_pids(observer, app)
        assert victim not in second
        assert len(second) == 2

        borrowed = await pool.getconn()
        await pool.drain()
        await pool.putconn(borrowed)
        await eventually(
            lambda: app_pids(observer, app),
            lambda pids: len(pids) == 2 and not pids & second,
            "drain never replaced every connection",
        )


@postgres
async def test_check_callback_runs_on_every_borrow(pg_server: Any) -> None:
    """A ``check`` callback runs at every getconn, as in psycopg_pool (``ping_after=0``)."""
    checked: list[int] = []

    async def check(conn: Conn) -> None:
        checked.append(conn.info.backend_pid)
        await AsyncConnectionPool.check_connection(conn)

    async with AsyncConnectionPool(pg_server.dsn(), min_size=1, check=check, open=False) as pool:
        await pool.wait(timeout=BOUND)
        for _ in range(3):
            async with pool.connection() as conn:
                pid = conn.info.backend_pid
    assert checked == [pid] * 3


@postgres
async def test_stats_have_psycopg_pool_keys_and_pop_stats_resets_them(pg_server: Any) -> None:
    """``get_stats`` reports psycopg_pool's keys only; ``pop_stats`` returns and zeroes counters."""
    async with AsyncConnectionPool(
        pg_server.dsn(), min_size=1, timeout=0.1, open=False, name="stats"
    ) as pool:
        await pool.wait(timeout=BOUND)
        stats = pool.get_stats()
        assert set(stats) <= STAT_KEYS
        assert stats["connections_num"] == 1
        assert "connections_ms" in stats
        assert "requests_num" not in stats
        async with pool.connection() as conn:
            with pytest.raises(PoolTimeout):
                await pool.getconn()
            await conn.close()  # returned broken
        stats = pool.get_stats()
        assert set(stats) <= STAT_KEYS
        expected = {
            "pool_min": 1,
            "pool_max": 1,
            "requests_num": 2,
            "requests_queued": 1,
            "requests_errors": 1,
            "returns_bad": 1,
            "connections_num": 1,
            "requests_waiting": 0,
        }
        assert {key: stats[key] for key in expected} == expected
        assert stats["requests_wait_ms"] >= 90
        assert "usage_ms" in stats
        popped = pool.pop_stats()
        assert {key: popped[key] for key in expected} == expected
        assert set(pool.get_stats()) == {
            "pool_min",
            "pool_max",
            "pool_size",
            "pool_available",
            "requests_waiting",
        }
        async with pool.connection():
            pass
        after = pool.get_stats()
        assert (after["requests_num"], after["connections_num"]) == (1, 1)


@postgres
async def test_reconnect_failed_is_called_once_per_failure_streak(pg_server: Any) -> None:
    """Connects failing past ``reconnect_timeout`` call ``reconnect_failed`` once per streak."""
    target = {"conninfo": refused_conninfo()}
    calls: list[Any] = []
    called = anyio.Event()

    async def reconnect_failed(pool: Any) -> None:
        calls.append(pool)
        called.set()

    pool = AsyncConnectionPool(
        lambda: target["conninfo"],
        min_size=1,
        reconnect_timeout=0.2,
        reconnect_failed=reconnect_failed,
        open=False,
        backoff_initial=0.01,
        backoff_max=0.02,
    )
    async with pool:
        with anyio.fail_after(BOUND):
            await called.wait()
        errors = pool.get_stats()["connections_errors"]
        await eventually(
            lambda: pool.get_stats()["connections_errors"],
            lambda n: n >= errors + 3,
            "connects stopped failing",
        )
        assert calls == [pool]  # the same streak: not again

        target["conninfo"] = pg_server.dsn()  # the streak ends with a success
        await pool.wait(timeout=BOUND)
        target["conninfo"] = refused_conninfo()
        called = anyio.Event()
        await pool.drain()
        with anyio.fail_after(BOUND):
            await called.wait()
        assert calls == [pool, pool]


# --------------------------------------------------------------------------- hygiene and failures


@postgres
@pytest.mark.parametrize("reset_mode", ["rollback", "session"])
async def test_reset_mode_rollback_keeps_gucs_and_session_clears_them(
    pg_server: Any, reset_mode: str
) -> None:
    """Default ``"rollback"`` keeps a borrower's SET (psycopg_pool); ``"session"`` clears it."""
    async with AsyncConnectionPool(
        pg_server.dsn(), min_size=1, open=False, reset_mode=reset_mode
    ) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            await conn.execute("SET search_path TO face_path")
        async with pool.connection() as conn:
            assert conn.info.backend_pid == pid
            path = await fetchval(conn, "SHOW search_path")
    assert path == ("face_path" if reset_mode == "rollback" else '"$user", public')


@postgres
async def test_terminated_busy_connection_is_evicted(pg_server: Any, observer: Conn) -> None:
    """A connection killed under its holder raises there, is not reused, and counts as bad."""
    app = unique_name("busy")
    async with AsyncConnectionPool(
        pg_server.dsn(application_name=app), min_size=1, open=False
    ) as pool:
        pids: list[int] = []

        async def use_after_termination() -> None:
            async with pool.connection() as conn:
                pids.append(conn.info.backend_pid)
                await terminate(observer, pids[0])
                await conn.execute("SELECT 1")

        with pytest.raises(psycopg.OperationalError):
            await use_after_termination()
        async with pool.connection() as conn:
            assert await fetchval(conn, "SELECT pg_backend_pid()") != pids[0]
        assert pool.get_stats()["returns_bad"] == 1


@postgres
async def test_cancelled_borrower_leaves_no_broken_connection_or_stuck_query(
    pg_server: Any, observer: Conn
) -> None:
    """A task cancelled in ``pg_sleep(10)`` inside ``connection()`` leaves nothing behind."""
    app = unique_name("cancel")

    async def sleeping() -> list[int]:
        cur = await observer.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
            [app],
        )
        return [row[0] for row in await cur.fetchall()]

    async with AsyncConnectionPool(
        pg_server.dsn(application_name=app), min_size=1, open=False
    ) as pool:

        async def cancel_when_sleeping(scope: anyio.CancelScope) -> None:
            await eventually(sleeping, bool, "the query never started")
            scope.cancel()

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_sleeping, scope)
                async with pool.connection() as conn:
                    await conn.execute("SELECT pg_sleep(10)")
        assert scope.cancelled_caught
        await eventually(sleeping, lambda pids: not pids, "the query is still running")
        with anyio.fail_after(BOUND):
            async with pool.connection() as conn:
                assert await fetchval(conn, "SELECT 6 * 7") == 42
        assert pool.get_stats()["returns_bad"] == 1


# --------------------------------------------------------------------------- drop-in


async def written_for_psycopg_pool(mod: types.ModuleType, dsn: str, table: str) -> dict[str, Any]:
    """Application code using only psycopg_pool's public API; ``mod`` provides the pool."""
    out: dict[str, Any] = {}
    pool = mod.AsyncConnectionPool(
        dsn, min_size=1, max_size=2, timeout=0.2, open=False, name="compat"
    )
    async with pool:
        await pool.wait(timeout=BOUND)
        async with pool.connection() as conn:
            await conn.execute(f"INSERT INTO {table} VALUES (%s)", [1])
        try:
            async with pool.connection() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (%s)", [2])
                raise LookupError("roll it back")
        except LookupError:
            out["rolled back"] = True
        a = await pool.getconn()
        b = await pool.getconn()
        try:
            await pool.getconn()
        except mod.PoolTimeout as exc:
            out["full"] = str(exc).split(";")[0]
        await pool.putconn(a)
        await pool.putconn(b)
        try:
            await pool.putconn(a)
        except ValueError as exc:
            out["double putconn"] = str(exc).split(":")[0]
        await pool.resize(1, 3)
        await pool.check()
        out["sizes"] = (pool.min_size, pool.max_size, pool.name, pool.closed)
        stats = pool.get_stats()
        out["stats"] = {
            key: stats.get(key)
            for key in ("pool_min", "pool_max", "requests_num", "requests_errors", "returns_bad")
        }
        out["popped"] = pool.pop_stats().get("requests_num")
        out["after pop"] = pool.get_stats().get("requests_num", 0)
        async with pool.connection() as conn:
            cur = await conn.execute(f"SELECT x FROM {table} ORDER BY x")
            out["rows"] = await cur.fetchall()
    out["closed"] = pool.closed
    try:
        await pool.getconn()
    except mod.PoolClosed as exc:
        out["after close"] = str(exc)
    return out


@postgres
async def test_code_written_for_psycopg_pool_runs_unchanged(pg_server: Any, observer: Conn) -> None:
    """The same psycopg_pool-only code gives identical results on psycopg_pool and on ours."""
    results = {}
    for mod in (psycopg_pool, ep_psycopg):
        table = unique_name("compat")
        await observer.execute(f"CREATE TABLE {table} (x int)")
        try:
            results[mod.__name__] = await written_for_psycopg_pool(mod, pg_server.dsn(), table)
        finally:
            await observer.execute(f"DROP TABLE {table}")
    assert results["elasticpool.psycopg"] == results["psycopg_pool"]
    assert results["psycopg_pool"]["rows"] == [(1,)]


@postgres
async def test_bad_returns_are_logged_as_psycopg_pool_does(
    pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection given back mid-transaction is logged at WARNING with psycopg_pool's text.

    On psycopg_pool's own logger, ``psycopg.pool``, as existing logging set-ups expect.
    """
    dsn = pg_server.dsn(application_name=unique_name("log"))
    async with AsyncConnectionPool(dsn, min_size=1, open=False) as pool:
        conn = await pool.getconn()
        await conn.execute("SELECT 1")  # psycopg opened a transaction: INTRANS
        with caplog.at_level("WARNING", logger="psycopg.pool"):
            await pool.putconn(conn)
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(m.startswith("rolling back returned connection") for m in warned), warned


@postgres
async def test_close_returns_once_a_connect_in_flight_fails(pg_server: Any) -> None:
    """close() returns as soon as a connect in flight when it started fails, not at its timeout."""
    async with FaultProxy(pg_server.host, pg_server.port) as proxy:
        proxy.blackhole()  # the floor's connect hangs until connect_timeout
        dsn = proxy.dsn_for(pg_server.dsn(application_name=unique_name("drain")))
        pool = AsyncConnectionPool(dsn, min_size=1, open=False, connect_timeout=0.5)
        await pool.open()
        await eventually(
            lambda: pool.elastic.stats().connecting, lambda n: n == 1, "no connect started"
        )
        with anyio.fail_after(BOUND):  # close's own timeout is ten times longer
            await pool.close(timeout=10 * BOUND)
        assert pool.elastic.stats().connect_errors == 1
        assert repr(pool.elastic).startswith(f"<Pool {pool.name!r} closed ")


@pytest.mark.anyio
async def test_min_size_0_with_a_total_and_no_max_size_is_an_idle_worker(pg_server: Any) -> None:
    """``min_size=0`` beside a total (no ``max_size``) is allowed: the total sets the limit."""
    with pytest.raises(ValueError, match="if min_size is 0 max_size must be greater than 0"):
        AsyncConnectionPool(pg_server.dsn(), min_size=0, open=False)
    async with AsyncConnectionPool(
        pg_server.dsn(), min_size=0, total_max_connections=5, open=False
    ) as pool:
        assert pool.get_stats()["pool_size"] == 0, "an idle worker holds nothing"
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        assert pool.elastic.stats().max == 5


@pytest.mark.anyio
async def test_close_during_a_heartbeat_closes_everything_before_returning(pg_server: Any) -> None:
    """A heartbeat's borrow is not a caller's: close() does not leave the work to the background."""
    table = f"face_close_{uuid.uuid4().hex[:8]}"
    membership = elasticpool.PostgresMembership(table=table, heartbeat_interval=60.0)
    pool = AsyncConnectionPool(
        pg_server.dsn(), min_size=0, total_max_connections=5, membership=membership, open=False
    )
    try:
        await pool.open()
        async with pool.connection() as conn:  # joins the fleet; the connection stays idle
            await conn.execute("SELECT 1")
        returned: list[int] = []

        async def close() -> None:
            await pool.close()
            returned.append(pool.elastic.stats().size)

        async with (
            anyio.create_task_group() as tg,
            pool.elastic._port.coordination() as co,  # a heartbeat in flight
        ):
            assert not co.extra, "the heartbeat runs on the pool's own connection"
            tg.start_soon(close)
            # until close() has returned, or waits in the elastic pool's close
            await wait_until(lambda: bool(returned) or pool.elastic._state.value == "closing")
            assert returned == [], "close() returned while the heartbeat held a connection"
        assert returned == [0], "close() returned before the pool had closed its connections"
    finally:
        await pool.close()
        pg_server.psql(
            f"DROP TABLE IF EXISTS {table}, {table}_config;"
            f" DROP FUNCTION IF EXISTS {beat_function(table)};"
            f" DROP FUNCTION IF EXISTS {fill_function(table)}"
        )


@postgres
async def test_connection_back_a_moment_ago_is_lent_without_a_look_at_its_socket(
    pg_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Borrowed again within the window after its return, a connection's socket is not polled."""
    from elasticpool.psycopg import _face

    monkeypatch.setattr(_face, "_RECENT", 60.0)  # "a moment ago", however slow the machine
    looks: list[object] = []
    socket_look = ep_psycopg.PsycopgConnector.is_closed

    def counted(self: Any, conn: Any) -> bool:
        looks.append(conn)
        return socket_look(self, conn)

    monkeypatch.setattr(ep_psycopg.PsycopgConnector, "is_closed", counted)
    async with AsyncConnectionPool(pg_server.dsn(), min_size=1, open=False) as pool:
        await pool.wait(timeout=BOUND)
        async with pool.connection() as conn:
            first = conn
        looks.clear()
        async with pool.connection() as conn:
            assert conn is first
            assert await fetchval(conn, "SELECT 1") == 1
    assert looks == []


@postgres
async def test_connection_terminated_while_idle_past_the_window_is_never_lent(
    pg_server: Any, observer: Conn
) -> None:
    """A backend terminated while its connection sat idle longer than the window: not lent."""
    from time import monotonic

    from elasticpool.psycopg import _face

    app = unique_name("idle-dead")
    async with AsyncConnectionPool(
        pg_server.dsn(application_name=app), min_size=1, open=False
    ) as pool:
        await pool.wait(timeout=BOUND)
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
        returned = monotonic()
        await terminate(observer, pid)
        # Idle longer than the window: the precondition, not a synchronisation.
        await anyio.sleep(max(0.0, _face._RECENT - (monotonic() - returned)) + 0.001)
        async with pool.connection() as conn:
            assert conn.info.backend_pid != pid
            assert await fetchval(conn, "SELECT 1") == 1
