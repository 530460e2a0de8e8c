"""The threaded pool with psycopg's sync connections, against a real PostgreSQL server.

Backends are told apart by ``application_name`` (one per test) and counted in
``pg_stat_activity`` on an observer connection outside every pool. Waits for
server-side effects poll with a bound (:func:`until`); threads are joined with
a bound.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from anyio.from_thread import start_blocking_portal  # noqa: E402

from elasticpool import PoolTimeout, SyncPool  # noqa: E402
from elasticpool.psycopg import SyncPsycopgConnector  # noqa: E402
from elasticpool.testing import FaultProxy  # noqa: E402

pytestmark = pytest.mark.postgres

BOUND = 15.0
"""Seconds any one wait may take before it counts as a hang."""


def unique(label: str) -> str:
    """An ``application_name`` no other test uses."""
    return f"ep-sync-{label}-{uuid.uuid4().hex[:10]}"


def until(predicate: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    """Poll ``predicate`` until it holds, within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {bound:g}s)")
        time.sleep(0.005)


def join(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(BOUND * 2)
        assert not thread.is_alive(), "a thread hung"


def start(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def scalar(conn: Any, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params or None).fetchone()
    return None if row is None else row[0]


@pytest.fixture
def observer(pg_server: Any) -> Iterator[Any]:
    """A plain autocommit connection, not from any pool, to look at the server."""
    conn = psycopg.Connection.connect(
        pg_server.dsn(application_name=unique("observer")), autocommit=True
    )
    try:
        yield conn
    finally:
        conn.close()


def backends(observer: Any, app: str) -> set[int]:
    """PIDs of the backends whose ``application_name`` is ``app``."""
    rows = observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]
    ).fetchall()
    return {row[0] for row in rows}


def pool_for(pg_server: Any, app: str, **settings: Any) -> SyncPool[Any]:
    connector: SyncPsycopgConnector[Any] = SyncPsycopgConnector(pg_server.dsn(application_name=app))
    return SyncPool(connector, name=app, **settings)


def test_threads_share_connections_and_the_server_sees_exactly_the_pools(
    pg_server: Any, observer: Any
) -> None:
    """16 threads on a limit of 4: each backend serves one borrower at a time; none left after."""
    app = unique("share")
    lent: dict[int, int] = {}
    lock = threading.Lock()
    clashes: list[int] = []
    with pool_for(pg_server, app, max_connections=4) as pool:

        def worker() -> None:
            for _ in range(25):
                with pool.connection(timeout=BOUND) as conn:
                    pid = conn.info.backend_pid
                    with lock:
                        if pid in lent:
                            clashes.append(pid)
                        lent[pid] = threading.get_ident()
                    assert scalar(conn, "SELECT pg_backend_pid()") == pid
                    with lock:
                        del lent[pid]

        join(*[start(worker) for _ in range(16)])
        assert not clashes
        stats = pool.stats()
        assert stats.size <= 4
        assert backends(observer, app) == {
            s.conn.info.backend_pid for s in pool._planner.remaining()
        }
    until(lambda: not backends(observer, app), "backends left after close")


def test_backend_terminated_while_idle_is_noticed_before_it_is_lent(
    pg_server: Any, observer: Any
) -> None:
    """pg_terminate_backend on an idle connection: the next borrower gets a live one."""
    app = unique("idle-kill")
    with pool_for(pg_server, app, max_connections=2, ping_after=None) as pool:
        with pool.connection() as conn:
            old = conn.info.backend_pid
        observer.execute("SELECT pg_terminate_backend(%s)", [old])
        until(lambda: old not in backends(observer, app), "backend never ended")
        with pool.connection() as conn:
            assert conn.info.backend_pid != old
            assert scalar(conn, "SELECT 1") == 1
        assert pool.stats().closed_broken == 1


def test_backend_terminated_in_use_is_evicted_and_replaced(pg_server: Any, observer: Any) -> None:
    """A connection killed server-side mid-borrow raises, is evicted, and is replaced."""
    app = unique("busy-kill")
    with pool_for(pg_server, app, max_connections=1) as pool:

        def use_it() -> int:
            with pool.connection() as conn:
                pid: int = conn.info.backend_pid
                observer.execute("SELECT pg_terminate_backend(%s)", [pid])
                until(lambda: pid not in backends(observer, app), "backend never ended")
                conn.execute("SELECT 1")
            return pid  # pragma: no cover - the query above raises

        with pytest.raises(psycopg.OperationalError):
            use_it()
        with pool.connection() as conn:
            assert scalar(conn, "SELECT 1") == 1
        stats = pool.stats()
        assert (stats.closed_broken, stats.in_use) == (1, 0)


def test_many_threads_random_timeouts_and_server_side_kills_lose_nothing(
    pg_server: Any, observer: Any
) -> None:
    """32 threads, random timeouts, a killer terminating backends: never lent twice, none lost."""
    app = unique("storm")
    lent: dict[int, int] = {}
    lock = threading.Lock()
    clashes: list[str] = []
    tally = {"ok": 0, "timeout": 0, "killed": 0}
    stop = threading.Event()

    def killer() -> None:
        rng = random.Random(1)
        while not stop.wait(0.02):
            pids = sorted(backends(observer, app))
            if pids:
                observer.execute("SELECT pg_terminate_backend(%s)", [rng.choice(pids)])

    with pool_for(pg_server, app, max_connections=6, ping_after=0.01, reset="session") as pool:

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(30):
                try:
                    with pool.connection(timeout=rng.choice((0.005, 0.05, 2.0))) as conn:
                        me = threading.get_ident()
                        key = id(conn)
                        with lock:
                            if key in lent:
                                clashes.append(f"{conn} lent twice")
                            lent[key] = me
                        try:
                            conn.execute("SET application_name = DEFAULT")  # dirties the session
                            conn.execute("SELECT pg_sleep(%s)", [rng.choice((0, 0.001))])
                            conn.commit()
                        finally:
                            with lock:
                                if lent.pop(key, None) != me:
                                    clashes.append(f"{conn} taken from under its borrower")
                    result = "ok"
                except PoolTimeout:
                    result = "timeout"
                except psycopg.OperationalError:
                    result = "killed"
                with lock:
                    tally[result] += 1

        kill = start(killer)
        join(*[start(lambda n=n: worker(n)) for n in range(32)])  # type: ignore[misc]
        stop.set()
        join(kill)
        assert not clashes, clashes[:5]
        assert sum(tally.values()) == 32 * 30
        assert tally["ok"] > 0
        until(
            lambda: not (pool.stats().connecting or pool.stats().closing or pool.stats().resetting),
            "background work never settled",
        )
        with pool._lock:
            pool._planner.check()
            held = {s.conn.info.backend_pid for s in pool._planner.remaining()}
        stats = pool.stats()
        assert (stats.in_use, stats.waiting) == (0, 0)
        # Every borrow counts; a borrow whose connection failed its ping and whose caller
        # then ran out of time counts too, with a timeout.
        served = tally["ok"] + tally["killed"]
        assert served <= stats.acquires <= served + tally["timeout"]
        # The session reset ran before each reuse: it put application_name back.
        until(lambda: backends(observer, app) == held, "the server and the pool disagree")
        print(f"\nstorm: {tally}, {stats.closed_broken} evicted, {stats.connects} connects")
    until(lambda: not backends(observer, app), "backends left after close")


def test_session_state_is_reset_before_the_next_borrower(pg_server: Any) -> None:
    """reset="session" clears SET and an open transaction; "rollback" keeps the SET."""
    app = unique("reset")
    with pool_for(pg_server, app, max_connections=1, reset="session") as pool:
        with pool.connection() as conn:
            conn.execute("SET search_path = nowhere")
            conn.execute("SELECT 1")  # leaves a transaction open
        with pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert scalar(conn, "SHOW search_path") == '"$user", public'
            conn.rollback()
    with pool_for(pg_server, unique("rollback"), max_connections=1, reset="rollback") as pool:
        with pool.connection() as conn:
            conn.execute("SET search_path = nowhere")
            conn.commit()
            conn.execute("SELECT 1")
        with pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert scalar(conn, "SHOW search_path") == "nowhere"
            conn.rollback()


def test_fetch_uses_dollar_placeholders_and_leaves_no_transaction(pg_server: Any) -> None:
    """fetch() takes $n placeholders, returns tuples, and commits alone outside a transaction."""
    conn = psycopg.Connection.connect(pg_server.dsn())
    connector: SyncPsycopgConnector[Any] = SyncPsycopgConnector(pg_server.dsn())
    try:
        assert connector.fetch(conn, "SELECT $1::int + $2::int, $3::text", 1, 2, "x") == [(3, "x")]
        assert connector.fetch(conn, "SELECT 1 WHERE false") == []
        assert connector.fetch(conn, "SET work_mem = '8MB'") == []
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.autocommit is False
        with connector.transaction(conn):
            connector.fetch(conn, "SELECT 1")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        with pytest.raises(ValueError, match="placeholders must be"):
            connector.fetch(conn, "SELECT $2", 1)
    finally:
        conn.close()


def test_percentage_total_is_resolved_against_the_server(pg_server: Any) -> None:
    """total_max_connections="50%" is half the server's usable max_connections."""
    app = unique("percent")
    with pool_for(pg_server, app, total_max_connections="50%") as pool:
        with pool.connection() as conn:
            most = int(scalar(conn, "SHOW max_connections"))
            reserved = int(scalar(conn, "SHOW superuser_reserved_connections"))
            reserved += int(
                scalar(conn, "SELECT coalesce(current_setting('reserved_connections', true), '0')")
            )
        assert pool.stats().max == max(1, (most - reserved) // 2)


def test_ping_of_a_partitioned_connection_is_bounded(pg_server: Any) -> None:
    """A connection gone silent (blackholed) fails its ping in time: the caller is not hung."""
    app = unique("partition")
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(FaultProxy(pg_server.host, pg_server.port)) as proxy,
    ):
        dsn = proxy.dsn_for(pg_server.dsn(application_name=app))
        connector: SyncPsycopgConnector[Any] = SyncPsycopgConnector(dsn)
        with SyncPool(connector, max_connections=1, ping_after=0, connect_timeout=1) as pool:
            with pool.connection() as conn:
                assert scalar(conn, "SELECT 1") == 1
            until(lambda: pool.stats().idle == 1, "the session reset never finished")
            portal.call(proxy.blackhole)
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                pool.acquire(timeout=1.5)
            assert time.monotonic() - started < BOUND / 2
            assert pool.stats().closed_broken == 1  # the silent connection, after its ping
            portal.call(proxy.heal)
            pool.close(timeout=1)


def test_forced_close_wakes_a_thread_blocked_in_a_query(pg_server: Any, observer: Any) -> None:
    """close(timeout) terminates a connection mid-query from another thread: the query returns."""
    app = unique("forced")
    pool = pool_for(pg_server, app, max_connections=1)
    pool.open()
    errors: list[BaseException] = []
    running = threading.Event()

    def sleeper() -> None:
        try:
            with pool.connection() as conn:
                running.set()
                conn.execute("SELECT pg_sleep(30)")
        except BaseException as exc:
            errors.append(exc)

    thread = start(sleeper)
    assert running.wait(BOUND)
    until(
        lambda: bool(
            observer.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
                [app],
            ).fetchone()
        ),
        "query never started",
    )
    started = time.monotonic()
    pool.close(timeout=0.2)
    join(thread)
    assert time.monotonic() - started < BOUND
    assert len(errors) == 1
    assert isinstance(errors[0], psycopg.OperationalError)
    until(lambda: not backends(observer, app), "the backend outlived its forced close")


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_is_refused_and_leaves_the_parents_session_alone(
    pg_server: Any, observer: Any
) -> None:
    """os.fork(): the child is refused the pool and drops its references; the parent's lives."""
    app = unique("fork")
    with pool_for(pg_server, app, max_connections=1) as pool:
        with pool.connection() as conn:
            backend = conn.info.backend_pid
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running pytest's teardown
            code = 1
            try:
                out: dict[str, Any] = {}
                try:
                    pool.acquire()
                    out["acquire"] = "no error"
                except RuntimeError as exc:
                    out["acquire"] = str(exc)
                pool.close(timeout=1)
                out["state"] = repr(pool)
                # The inherited connection is garbage here: collecting it must not end
                # the parent's session (abandon() pointed its socket at /dev/null).
                del conn
                import gc

                gc.collect()
                os.write(w, json.dumps(out).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as reader:
            report = json.loads(reader.read() or b"{}")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert re.match(
            rf"pool '{re.escape(app)}' was opened in process {os.getpid()} and cannot be used "
            r"in forked process \d+",
            report["acquire"],
        ), report
        assert " closed " in report["state"], report
        assert backend in backends(observer, app)
        with pool.connection() as conn:  # the same session, still in step
            assert conn.info.backend_pid == backend
            assert scalar(conn, "SELECT 42") == 42
