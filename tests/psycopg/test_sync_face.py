"""``elasticpool.psycopg.ConnectionPool``: psycopg_pool's sync API and semantics, checked.

Where psycopg_pool's behaviour is the specification, the same scenario runs
against the real :class:`psycopg_pool.ConnectionPool` and against ours, and
the transcripts are compared. Everything that needs a server runs against a
real PostgreSQL; server-side effects are polled for, each poll bounded.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

from psycopg import Connection  # noqa: E402
from psycopg.pq import TransactionStatus  # noqa: E402

import elasticpool  # noqa: E402
import elasticpool.psycopg as ep_psycopg  # noqa: E402
from elasticpool import StaticMembership, SyncPool  # noqa: E402
from elasticpool.psycopg import (  # noqa: E402
    ConnectionPool,
    PoolTimeout,
    TooManyRequests,
)

postgres = pytest.mark.postgres

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


def unique(label: str) -> str:
    """A name (application_name, table) no other test uses."""
    return f"ep_sface_{label}_{uuid.uuid4().hex[:10]}"


def until(predicate: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    """Poll ``predicate`` until it holds, within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {bound:g}s)")
        time.sleep(0.005)


def start(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(BOUND)
        assert not thread.is_alive(), "a thread hung"


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


@pytest.fixture
def observer(pg_server: Any) -> Iterator[Any]:
    """A plain autocommit connection, not from any pool, to look at the server."""
    conn = Connection.connect(pg_server.dsn(application_name=unique("observer")), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def app_pids(observer: Any, app: str) -> set[int]:
    rows = observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]
    ).fetchall()
    return {row[0] for row in rows}


def refused_conninfo() -> str:
    """A conninfo whose port nobody listens on: every connect is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=postgres user=nobody connect_timeout=2"


# --------------------------------------------------------------------------- no server needed


def test_the_sync_face_is_exported_with_psycopg_pools_module_path() -> None:
    """``elasticpool.psycopg.ConnectionPool`` exists, and so does its connector."""
    assert ConnectionPool.__module__ == "elasticpool.psycopg"
    assert ep_psycopg.SyncPsycopgConnector.__module__ == "elasticpool.psycopg"
    assert issubclass(PoolTimeout, psycopg_pool.PoolTimeout)
    assert issubclass(PoolTimeout, elasticpool.PoolTimeout)


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
            pool = mod.ConnectionPool("dbname=x", open=False, **kwargs)
        except Exception as exc:
            return (type(exc).__name__, str(exc))
        values = {name: getattr(pool, name) for name in attributes}
        values["name"] = pool.name if "name" in kwargs else pool.name.startswith("pool-")
        return values

    assert build(ep_psycopg) == build(psycopg_pool)


def test_parameters_map_to_elastic_settings() -> None:
    """psycopg_pool's parameters become the documented settings; elastic ones pass through."""
    membership = StaticMembership(2)
    with pytest.warns(elasticpool.ElasticPoolWarning, match="the total wins"):
        pool = ConnectionPool(
            "dbname=x",
            open=False,
            min_size=2,
            max_size=6,
            timeout=4.0,
            max_lifetime=float("inf"),
            max_idle=30.0,
            num_workers=5,
            total_max_connections=11,
            membership=membership,
            name="mapped",
        )
    assert isinstance(pool.elastic, SyncPool)
    s = pool.elastic.settings
    assert (s.min_connections, s.max_connections, s.pool_timeout, s.max_waiting) == (
        2,
        6,
        4.0,
        None,
    )
    assert (s.connection_lifetime, s.idle_timeout, s.max_connecting) == (None, 30.0, 5)
    assert (s.reset, s.ping_after, s.lifetime_jitter, s.total_max_connections) == (
        "rollback",
        None,  # no check on borrow without check=, as psycopg_pool (and the async face)
        0.05,
        11,
    )
    assert pool.elastic.membership is membership
    assert pool.elastic.name == "mapped"
    assert pool.elastic.stats().max == 0  # nothing opens before the fleet has a say
    fleet = ConnectionPool("dbname=x", open=False, total_max_connections=10)
    assert fleet.elastic.settings.max_connections is None  # the total alone sets the limit
    assert (fleet.min_size, fleet.max_size) == (4, 4)  # psycopg_pool's attributes, as given

    def check(conn: Any) -> None:
        pass

    checked = ConnectionPool("dbname=x", open=False, check=check, reset_mode="session")
    assert (checked.elastic.settings.ping_after, checked.elastic.settings.reset) == (0.0, "session")
    with pytest.raises(TypeError, match="'idle_timeout' is set from psycopg_pool's 'max_idle'"):
        ConnectionPool("dbname=x", open=False, idle_timeout=3)
    with pytest.raises(ValueError, match=r"^max_idle \(idle_timeout\) must be a"):
        ConnectionPool("dbname=x", open=False, max_idle=0)
    with pytest.raises(TypeError, match="membership must be an elasticpool Membership"):
        ConnectionPool("dbname=x", open=False, membership=cast(Any, "postgres"))


# --------------------------------------------------------------------------- lifecycle


def open_transcript(mod: types.ModuleType, dsn: str) -> list[Any]:
    """How a pool's ``open`` modes behave: warnings, ``closed``, and errors, step by step."""
    out: list[Any] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def step(label: str, *extra: Any) -> None:
            out.append((label, [(w.category.__name__, str(w.message)) for w in caught], *extra))
            caught.clear()

        pool = mod.ConnectionPool(dsn, min_size=1, name="t")  # open=None: opens now
        step("constructed, open=None", pool.closed)
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        step("first use")
        with pool.connection():
            pass
        step("second use")
        pool.close()
        step("closed", pool.closed)
        with pytest.raises(mod.PoolClosed) as info:
            pool.getconn()
        step("getconn after close", str(info.value))
        with pytest.raises(mod.PoolClosed) as info:
            pool.open()
        step("reopen", str(info.value))

        with mod.ConnectionPool(dsn, min_size=1, name="t") as pool, pool.connection():
            pass
        step("with, open=None")

        pool = mod.ConnectionPool(dsn, min_size=1, open=True, name="t")
        step("constructed, open=True", pool.closed)
        with pool.connection():
            pass
        step("used, open=True")
        pool.close()

        pool = mod.ConnectionPool(dsn, min_size=1, open=False, name="t")
        step("constructed, open=False", pool.closed)
        with pytest.raises(mod.PoolClosed) as info:
            pool.getconn()
        step("getconn before open", str(info.value))
        pool.open(wait=True, timeout=BOUND)
        pool.open()  # again: harmless
        step("opened", pool.closed, pool.get_stats()["pool_available"])
        pool.close()
        pool.close()  # again: harmless
        step("closed twice", pool.closed)
    return out


@postgres
def test_open_modes_and_warnings_match_psycopg_pool(pg_server: Any) -> None:
    """``open=None/True/False``, ``with``, reopen and closing twice: as in psycopg_pool."""
    dsn = pg_server.dsn(application_name=unique("open"))
    ours = open_transcript(ep_psycopg, dsn)
    theirs = open_transcript(psycopg_pool, dsn)
    assert ours == theirs
    assert ours[1][1][0][0] == "DeprecationWarning"  # first use after an implicit open warns


@postgres
def test_wait_timeout_closes_the_pool() -> None:
    """``open(wait=True)`` that times out closes the pool and raises PoolTimeout with the cause."""
    pool = ConnectionPool(
        refused_conninfo(), min_size=1, open=False, backoff_initial=0.02, backoff_max=0.05
    )
    with pytest.raises(psycopg_pool.PoolTimeout, match="pool initialization incomplete") as info:
        pool.open(wait=True, timeout=0.3)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert pool.closed
    stats = pool.get_stats()
    assert stats["connections_errors"] >= 1
    assert stats["connections_num"] == stats["connections_errors"]


def close_transcript(mod: types.ModuleType, dsn: str) -> list[Any]:
    """``close()`` with a waiter queued and a connection borrowed: who sees what."""
    out: list[Any] = []
    pool = mod.ConnectionPool(dsn, min_size=1, max_size=1, open=False, name="c")
    pool.open(wait=True, timeout=BOUND)
    conn = pool.getconn()
    waiter_error: list[str] = []

    def wait_for_one() -> None:
        try:
            pool.getconn(timeout=BOUND)
        except mod.PoolClosed as exc:
            waiter_error.append(type(exc).__name__)

    thread = start(wait_for_one)
    until(lambda: pool.get_stats()["requests_waiting"] == 1, "the waiter never queued")
    pool.close()
    join(thread)
    out.append(("waiter", waiter_error))
    out.append(("borrowed still works", scalar(conn, "SELECT 7")))
    pool.putconn(conn)
    until(lambda: conn.closed, "never closed")
    out.append(("closed on return", conn.closed))
    return out


@postgres
def test_close_fails_waiters_and_leaves_borrowed_connections_usable(pg_server: Any) -> None:
    """As in psycopg_pool: waiters get PoolClosed; a borrowed connection works until returned."""
    dsn = pg_server.dsn(application_name=unique("close"))
    ours = close_transcript(ep_psycopg, dsn)
    assert ours == close_transcript(psycopg_pool, dsn)
    assert ours == [
        ("waiter", ["PoolClosed"]),
        ("borrowed still works", 7),
        ("closed on return", True),
    ]


# --------------------------------------------------------------------------- borrowing


@postgres
def test_connection_commits_or_rolls_back_and_hands_out_psycopgs_own_connection(
    pg_server: Any, observer: Any
) -> None:
    """``connection()`` commits a clean block, rolls back a failing one, lends a Connection."""
    table = unique("tbl")
    observer.execute(f"CREATE TABLE {table} (x int)")

    def insert_then_fail(pool: ConnectionPool[Any]) -> None:
        with pool.connection() as conn:
            conn.execute(f"INSERT INTO {table} VALUES (2)")
            raise ZeroDivisionError

    try:
        with ConnectionPool(pg_server.dsn(), min_size=1, open=False) as pool:
            with pool.connection() as conn:
                assert type(conn) is Connection
                conn.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                insert_then_fail(pool)
            with pool.connection() as conn:
                assert conn.info.transaction_status == TransactionStatus.IDLE
                assert not conn.closed
        assert scalar(observer, f"SELECT array_agg(x) FROM {table}") == [1]
    finally:
        observer.execute(f"DROP TABLE {table}")


@postgres
def test_connection_class_kwargs_and_configure_are_honoured(pg_server: Any) -> None:
    """A ``connection_class`` subclass, callable ``kwargs`` and ``configure`` are all used."""

    class MyConnection(Connection[Any]):
        pass

    configured: list[int] = []

    def configure(conn: Any) -> None:
        conn.execute("SET application_name = 'configured'")
        conn.commit()
        configured.append(conn.info.backend_pid)

    with (
        ConnectionPool(
            pg_server.dsn(),
            connection_class=MyConnection,
            kwargs=lambda: {"autocommit": True},
            configure=configure,
            min_size=1,
            open=False,
        ) as pool,
        pool.connection() as conn,
    ):
        assert type(conn) is MyConnection
        assert conn.autocommit
        assert scalar(conn, "SHOW application_name") == "configured"
        assert configured == [conn.info.backend_pid]


def putconn_transcript(mod: types.ModuleType, dsn: str) -> list[str]:
    """What ``putconn`` says about a connection from another pool, or from none."""
    out: list[str] = []
    with (
        mod.ConnectionPool(dsn, min_size=1, open=False, name="a") as a,
        mod.ConnectionPool(dsn, min_size=1, open=False, name="b") as b,
    ):
        conn = a.getconn()
        with pytest.raises(ValueError, match="can't return connection to pool 'b'") as info:
            b.putconn(conn)
        out.append(str(info.value).split(": <")[0])
        a.putconn(conn)
        stray = Connection.connect(dsn)
        try:
            with pytest.raises(ValueError, match="can't return connection") as info:
                a.putconn(stray)
            out.append(str(info.value).split(": <")[0])
        finally:
            stray.close()
    return out


@postgres
def test_getconn_putconn_and_foreign_connections(pg_server: Any) -> None:
    """``putconn`` of a connection from another pool, or from none: psycopg_pool's ValueError."""
    dsn = pg_server.dsn(application_name=unique("put"))
    assert putconn_transcript(ep_psycopg, dsn) == putconn_transcript(psycopg_pool, dsn)


@postgres
def test_close_returns_hands_the_connection_back(pg_server: Any) -> None:
    """With ``close_returns=True``, ``conn.close()`` returns it to the pool instead of closing."""
    with ConnectionPool(
        pg_server.dsn(), min_size=1, max_size=1, close_returns=True, open=False
    ) as pool:
        conn = pool.getconn()
        conn.close()
        assert not conn.closed
        with pool.connection(timeout=1) as again:
            assert again is conn


@postgres
def test_timeout_and_max_waiting_raise_psycopg_pool_errors(pg_server: Any) -> None:
    """Waiting past ``timeout`` is PoolTimeout; one past ``max_waiting`` is TooManyRequests."""
    with ConnectionPool(
        pg_server.dsn(), min_size=1, max_size=1, max_waiting=1, open=False, name="w"
    ) as pool:
        held = pool.getconn()
        with pytest.raises(psycopg_pool.PoolTimeout, match=r"^couldn't get a connection after"):
            pool.getconn(timeout=0.05)
        waiter = start(lambda: pool.putconn(pool.getconn(timeout=BOUND)))
        until(lambda: pool.get_stats()["requests_waiting"] == 1, "the waiter never queued")
        with pytest.raises(psycopg_pool.TooManyRequests, match="has already 1 requests waiting"):
            pool.getconn()
        pool.putconn(held)
        join(waiter)
        stats = pool.get_stats()
        assert stats["requests_errors"] == 2
        assert isinstance(TooManyRequests("x"), elasticpool.TooManyWaiters)


@postgres
def test_resize_check_and_drain(pg_server: Any, observer: Any) -> None:
    """resize() moves floor and limit; check() replaces a dead idle connection; drain() all."""
    app = unique("maint")
    with ConnectionPool(pg_server.dsn(application_name=app), min_size=1, open=False) as pool:
        pool.wait(timeout=BOUND)
        pool.resize(2, 3)
        assert (pool.min_size, pool.max_size) == (2, 3)
        until(lambda: pool.get_stats()["pool_available"] == 2, "the floor never grew")
        victim = sorted(app_pids(observer, app))[0]
        observer.execute("SELECT pg_terminate_backend(%s)", [victim])
        until(lambda: victim not in app_pids(observer, app), "backend never ended")
        pool.check()
        until(lambda: len(app_pids(observer, app)) == 2, "the dead one was not replaced")
        before = app_pids(observer, app)
        pool.drain()
        until(lambda: not (app_pids(observer, app) & before), "drain kept old connections")
        until(lambda: len(app_pids(observer, app)) == 2, "drain did not refill the floor")


@postgres
def test_check_callback_runs_on_every_borrow(pg_server: Any) -> None:
    """A ``check`` callback is called on each borrow, as in psycopg_pool."""
    seen: list[int] = []

    def check(conn: Any) -> None:
        ConnectionPool.check_connection(conn)
        seen.append(conn.info.backend_pid)

    with ConnectionPool(pg_server.dsn(), min_size=1, check=check, open=False) as pool:
        for _ in range(3):
            with pool.connection():
                pass
    assert len(seen) == 3


@postgres
def test_stats_have_psycopg_pool_keys_and_pop_stats_resets_them(pg_server: Any) -> None:
    """get_stats()/pop_stats() report psycopg_pool's keys; pop_stats starts counters anew."""
    with ConnectionPool(pg_server.dsn(), min_size=1, max_size=2, open=False) as pool:
        pool.wait(timeout=BOUND)
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
        stats = pool.pop_stats()
        assert set(stats) <= STAT_KEYS
        assert stats["requests_num"] == 3
        assert stats["connections_num"] == 1
        assert (stats["pool_min"], stats["pool_max"]) == (1, 2)
        after = pool.get_stats()
        assert "requests_num" not in after
        assert after["pool_size"] == 1


@postgres
def test_reconnect_failed_is_called_once_per_failure_streak() -> None:
    """``reconnect_failed(pool)`` runs once when connects fail longer than reconnect_timeout."""
    called: list[Any] = []
    with ConnectionPool(
        refused_conninfo(),
        min_size=1,
        open=False,
        reconnect_timeout=0.1,
        reconnect_failed=called.append,
        backoff_initial=0.02,
        backoff_max=0.05,
    ) as pool:
        until(lambda: called, "reconnect_failed never called")
        time.sleep(0.3)  # let more connects fail: the streak is reported once
        assert called == [pool]


@postgres
def test_reset_mode_rollback_keeps_gucs_and_session_clears_them(pg_server: Any) -> None:
    """Default reset_mode "rollback" keeps a SET, as psycopg_pool; "session" clears it."""
    for mode, expected in (("rollback", "nowhere"), ("session", '"$user", public')):
        with ConnectionPool(
            pg_server.dsn(), min_size=1, max_size=1, reset_mode=mode, open=False
        ) as pool:
            with pool.connection() as conn:
                conn.execute("SET search_path = nowhere")
            with pool.connection() as conn:
                assert scalar(conn, "SHOW search_path") == expected


@postgres
def test_terminated_busy_connection_is_evicted(pg_server: Any, observer: Any) -> None:
    """A backend killed while borrowed: the error surfaces, the connection is not reused."""
    app = unique("kill")
    with ConnectionPool(
        pg_server.dsn(application_name=app), min_size=1, max_size=1, open=False
    ) as pool:

        def use_it() -> None:
            with pool.connection() as conn:
                observer.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
                until(lambda: not app_pids(observer, app), "backend never ended")
                conn.execute("SELECT 1")

        with pytest.raises(psycopg.OperationalError):
            use_it()
        with pool.connection(timeout=BOUND) as conn:
            assert scalar(conn, "SELECT 1") == 1
        assert pool.get_stats()["returns_bad"] == 1


def threaded_transcript(mod: types.ModuleType, dsn: str) -> list[Any]:
    """Code written for psycopg_pool: 8 threads, 20 borrows each, on max_size=3."""
    results: list[int] = []
    lock = threading.Lock()
    with mod.ConnectionPool(dsn, min_size=1, max_size=3, open=False) as pool:

        def worker(n: int) -> None:
            for i in range(20):
                with pool.connection() as conn:
                    value = scalar(conn, "SELECT %s::int", [n * 100 + i])
                with lock:
                    results.append(value)

        join(*[start(lambda n=n: worker(n)) for n in range(8)])  # type: ignore[misc]
        stats = pool.get_stats()
    return [sorted(results), stats["requests_num"], stats["pool_max"]]


@postgres
def test_code_written_for_psycopg_pool_runs_unchanged(pg_server: Any) -> None:
    """Threads borrowing through ``connection()`` get the same results as with psycopg_pool."""
    dsn = pg_server.dsn(application_name=unique("same"))
    assert threaded_transcript(ep_psycopg, dsn) == threaded_transcript(psycopg_pool, dsn)


def bad_returns_transcript(mod: types.ModuleType, dsn: str, caplog: Any) -> list[str]:
    """The warnings logged for connections given back in a transaction or closed."""
    caplog.clear()
    with mod.ConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
        conn = pool.getconn()
        conn.execute("SELECT 1")  # a transaction left open
        pool.putconn(conn)
        conn = pool.getconn()
        conn.close()
        pool.putconn(conn)
    return [
        r.getMessage().split(":")[0]
        for r in caplog.records
        if r.levelno >= logging.WARNING and "connection" in r.getMessage()
    ]


@postgres
def test_bad_returns_are_logged_as_psycopg_pool_does(
    pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection returned in a transaction or closed is logged with psycopg_pool's words."""
    caplog.set_level(logging.WARNING)
    dsn = pg_server.dsn(application_name=unique("bad"))
    ours = bad_returns_transcript(ep_psycopg, dsn, caplog)
    theirs = bad_returns_transcript(psycopg_pool, dsn, caplog)
    assert ours[: len(theirs)] == theirs


def test_min_size_0_with_a_total_and_no_max_size_is_an_idle_worker(pg_server: Any) -> None:
    """``min_size=0`` beside a total (no ``max_size``) is allowed: the total sets the limit."""
    with pytest.raises(ValueError, match="if min_size is 0 max_size must be greater than 0"):
        ep_psycopg.ConnectionPool(pg_server.dsn(), min_size=0, open=False)
    with ep_psycopg.ConnectionPool(
        pg_server.dsn(), min_size=0, total_max_connections=5, open=True
    ) as pool:
        assert pool.get_stats()["pool_size"] == 0, "an idle worker holds nothing"
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pool.elastic.stats().max == 5


@postgres
def test_many_threads_random_timeouts_and_server_side_kills_never_share_a_connection(
    pg_server: Any, observer: Any
) -> None:
    """32 threads on the face's fast paths, random timeouts, backends killed: never lent twice."""
    import random

    app = unique("storm")
    lent: dict[int, int] = {}
    lock = threading.Lock()
    clashes: list[str] = []
    tally = {"ok": 0, "timeout": 0, "killed": 0, "raised": 0}
    stop = threading.Event()
    rounds = 300

    def killer() -> None:
        rng = random.Random(1)
        while not stop.wait(0.02):
            pids = sorted(app_pids(observer, app))
            if pids:
                observer.execute("SELECT pg_terminate_backend(%s)", [rng.choice(pids)])

    def take(conn: Any) -> None:
        me = threading.get_ident()
        with lock:
            if id(conn) in lent:
                clashes.append(f"{conn} lent twice")
            lent[id(conn)] = me

    def give(conn: Any) -> None:
        with lock:
            if lent.pop(id(conn), None) != threading.get_ident():
                clashes.append(f"{conn} taken from under its borrower")

    with ConnectionPool(
        pg_server.dsn(application_name=app),
        min_size=2,
        max_size=4,
        kwargs={"autocommit": True},  # the clean return: psycopg's __exit__ skipped
        open=False,
    ) as pool:

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(rounds):
                timeout = rng.choice((0.005, 0.05, 2.0))
                how = rng.random()
                try:
                    if how < 0.2:  # getconn / putconn
                        conn = pool.getconn(timeout=timeout)
                        take(conn)
                        try:
                            conn.execute("SELECT 1")
                        finally:
                            give(conn)
                            pool.putconn(conn)
                    else:
                        with pool.connection(timeout=timeout) as conn:
                            take(conn)
                            try:
                                if how < 0.35:
                                    conn.execute("BEGIN")  # left open: committed on exit
                                conn.execute("SELECT pg_sleep(%s)", [rng.choice((0, 0.001))])
                                if how > 0.95:
                                    raise LookupError("the borrower's own error")
                            finally:
                                give(conn)
                    result = "ok"
                except PoolTimeout:
                    result = "timeout"
                except psycopg.OperationalError:
                    result = "killed"
                except LookupError:
                    result = "raised"
                except BaseException as exc:  # a bug in the pool: reported, not lost in a thread
                    with lock:
                        clashes.append(f"{type(exc).__name__}: {exc}")
                    raise
                with lock:
                    tally[result] += 1

        kill = start(killer)
        # Threads switch every few microseconds instead of every 5 ms, so that the
        # pool's critical sections are interrupted as often as they can be.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            threads = [start(lambda n=n: worker(n)) for n in range(32)]  # type: ignore[misc]
            for thread in threads:
                thread.join(60)
                assert not thread.is_alive(), "a thread hung"
        finally:
            sys.setswitchinterval(switch)
        stop.set()
        join(kill)
        assert not clashes, clashes[:5]
        assert sum(tally.values()) == 32 * rounds
        assert tally["ok"] > 0
        elastic = pool.elastic
        settled = "background work never settled"
        until(lambda: not (elastic.stats().connecting or elastic.stats().resetting), settled)
        elastic.check()  # connections killed while idle since their last borrow go now
        until(lambda: not elastic.stats().closing, settled)
        with elastic._lock:
            elastic._planner.check()
            held = {s.conn.info.backend_pid for s in elastic._planner.remaining()}
        stats = elastic.stats()
        assert (stats.in_use, stats.waiting) == (0, 0)
        assert pool.get_stats()["requests_num"] == 32 * rounds
        print(f"\nface storm: {tally}, {stats.closed_broken} evicted, {stats.waits} waited")
        until(lambda: app_pids(observer, app) == held, "the server and the pool disagree")
    until(lambda: not app_pids(observer, app), "backends left after close")


@postgres
def test_connections_are_used_in_turn_when_the_pool_cannot_shrink(pg_server: Any) -> None:
    """min_size == max_size (psycopg_pool's default): each connection in turn, as psycopg_pool."""
    from collections import Counter

    with ConnectionPool(pg_server.dsn(), min_size=4, open=False) as pool:
        pool.wait(timeout=BOUND)
        used: Counter[int] = Counter()
        for _ in range(8):
            with pool.connection() as conn:
                used[id(conn)] += 1
    assert sorted(used.values()) == [2, 2, 2, 2]


@postgres
def test_the_most_recent_is_reused_when_the_pool_can_shrink(pg_server: Any) -> None:
    """With room to shrink (and after a resize to it), the most recently used one is lent."""
    from collections import Counter

    with ConnectionPool(pg_server.dsn(), min_size=2, max_size=2, open=False) as pool:
        pool.wait(timeout=BOUND)
        pool.resize(2, 4)
        used: Counter[int] = Counter()
        for _ in range(6):
            with pool.connection() as conn:
                used[id(conn)] += 1
    assert sorted(used.values()) == [6]


@postgres
def test_the_reset_callback_is_done_when_the_block_returns(pg_server: Any) -> None:
    """``reset=`` has run (once per return) by the time ``connection()``'s block is left."""
    calls: list[int] = []

    def reset(conn: Any) -> None:
        calls.append(conn.info.backend_pid)
        with conn.transaction():  # a reset must leave the connection idle
            conn.execute("SET timezone TO 'UTC'")

    with ConnectionPool(pg_server.dsn(), min_size=1, reset=reset, open=False) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
            conn.execute("SET timezone TO '+02:00'")
        assert calls == [pid]
        with pool.connection() as conn:
            assert scalar(conn, "SHOW timezone") == "UTC"
        assert calls == [pid, pid]


@postgres
def test_a_connection_given_back_mid_query_is_closed_with_psycopg_pools_warnings(
    pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Given back ACTIVE: "closing returned connection", then "discarding closed connection"."""
    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    with ConnectionPool(pg_server.dsn(), min_size=1, open=False) as pool:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        conn.pgconn.exec_(b"copy (select * from generate_series(1, 10)) to stdout")
        assert conn.info.transaction_status == TransactionStatus.ACTIVE
        pool.putconn(conn)
        assert conn.closed
        with pool.connection() as fresh:
            assert fresh.info.backend_pid != pid
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in records] == ["psycopg.pool", "psycopg.pool"]
    assert records[0].message.startswith("closing returned connection")
    assert "ACTIVE" in records[0].message
    assert records[1].message.startswith("discarding closed connection")
    assert "BAD" in records[1].message


@postgres
def test_a_failed_rollback_is_warned_and_the_connection_discarded(
    pg_server: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INERROR given back, its rollback fails: three psycopg_pool warnings, a new connection."""
    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    with ConnectionPool(pg_server.dsn(), min_size=1, open=False) as pool:
        conn = pool.getconn()
        rollback = conn.rollback

        def failing_rollback() -> None:
            conn.pgconn.finish()
            rollback()

        monkeypatch.setattr(conn, "rollback", failing_rollback)
        pid = conn.info.backend_pid
        with pytest.raises(psycopg.ProgrammingError):
            conn.execute("wat")
        pool.putconn(conn)
        with pool.connection() as fresh:
            assert fresh.info.backend_pid != pid
    messages = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 3, messages
    assert messages[0].startswith("rolling back returned connection")
    assert "INERROR" in messages[0]
    assert messages[1].startswith("rollback failed: OperationalError")
    assert messages[2].startswith("discarding closed connection")
    assert "BAD" in messages[2]


@postgres
def test_a_connection_given_back_to_a_closed_pool_is_closed_at_once(pg_server: Any) -> None:
    """As psycopg_pool: the block's connection is closed when it comes back to a closed pool."""
    pool = ConnectionPool(pg_server.dsn(), min_size=1, open=False)
    pool.open()
    with pool.connection() as conn:
        pool.close()
        assert not conn.closed  # still the borrower's until it gives it back
    assert conn.closed


def test_failed_connects_are_warned_as_psycopg_pool_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failed connect: "error connecting in"; past reconnect_timeout, once, its give-up."""
    caplog.set_level(logging.WARNING, logger="psycopg.pool")

    def no_conninfo() -> str:
        raise RuntimeError("cannot build conninfo")

    failed = threading.Event()
    pool = ConnectionPool(
        no_conninfo,
        min_size=1,
        open=False,
        reconnect_timeout=0.2,
        reconnect_failed=lambda pool: failed.set(),
        backoff_initial=0.05,
        backoff_max=0.1,
    )
    pool.open()
    try:
        assert failed.wait(BOUND), "reconnect_failed never called"
    finally:
        pool.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert messages[0].startswith(f"error connecting in {pool.name!r}: cannot build conninfo")
    give_up = [m for m in messages if m.startswith("reconnection attempt in pool")]
    assert give_up == [f"reconnection attempt in pool {pool.name!r} failed after 0.2 sec"]
