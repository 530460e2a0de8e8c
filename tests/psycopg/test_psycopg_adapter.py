"""``PsycopgConnector`` under a real :class:`~elasticpool.Pool`, against a real PostgreSQL.

What the pool does is checked on the server, through a separate observer
connection (plain psycopg, autocommit), and on psycopg's side of the
connection. Every pool gets an ``application_name`` of its own so its backends
can be told from everything else on the server. Server-side effects (a backend
exiting, a query cancelled) are polled for, each poll bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

from psycopg import AsyncConnection, IsolationLevel  # noqa: E402
from psycopg.pq import TransactionStatus  # noqa: E402
from psycopg.rows import dict_row, tuple_row  # noqa: E402

import elasticpool  # noqa: E402
from elasticpool import Pool  # noqa: E402
from elasticpool.embedded import EmbeddedPostgres  # noqa: E402
from elasticpool.psycopg import (  # noqa: E402
    AsyncConnectionPool,
    PsycopgConnector,
    is_disconnect_error,
)

from ..helpers import eventually, unique_name  # noqa: E402

pytestmark = pytest.mark.anyio
postgres = pytest.mark.postgres

Conn = AsyncConnection[Any]

BOUND = 10.0
"""Overall bound, in seconds, on any one wait in these tests."""

PASSWORD = "Tr0ub4dor&3-not-in-any-repr"


async def fetchval(conn: Conn, sql: Any, params: Any = None, *, prepare: bool = False) -> Any:
    """The first column of the first row of ``sql`` (``None`` if there is no row).

    Not prepared unless asked, so that it leaves psycopg's statement cache alone.
    """
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(sql, params, prepare=None if prepare else False)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def pid_of(conn: Conn) -> int:
    """The backend PID serving ``conn``, asked of the server (so it fails on a dead connection)."""
    pid: int = await fetchval(conn, "SELECT pg_backend_pid()")
    await conn.rollback()  # leave the connection as it was: idle
    return pid


class Observer:
    """Looks at the server through a plain autocommit connection of its own."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def pids(self, app: str) -> set[int]:
        """PIDs of the backends whose ``application_name`` is ``app``."""
        cur = await self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app]
        )
        return {row[0] for row in await cur.fetchall()}

    async def running(self, app: str, like: str) -> list[int]:
        """PIDs of ``app``'s backends running a query that matches ``like``."""
        cur = await self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'active' AND query LIKE %s",
            [app, like],
        )
        return [row[0] for row in await cur.fetchall()]

    async def terminate(self, pid: int) -> None:
        """``pg_terminate_backend(pid)``, then wait until the backend is gone."""
        assert await fetchval(self.conn, "SELECT pg_terminate_backend(%s)", [pid])
        await eventually(
            lambda: self.alive(pid), lambda alive: not alive, f"backend {pid} never exited"
        )

    async def alive(self, pid: int) -> bool:
        """Whether backend ``pid`` still exists."""
        n = await fetchval(self.conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(n)


@pytest.fixture
async def observer(pg_server: Any) -> AsyncIterator[Observer]:
    """An observer connection, not from any pool."""
    conn = await AsyncConnection.connect(
        pg_server.dsn(application_name=unique_name("observer")), autocommit=True
    )
    try:
        yield Observer(conn)
    finally:
        await conn.close()


@contextlib.contextmanager
def role(pg_server: Any, *, password: str | None = None) -> Iterator[str]:
    """A throwaway role (with LOGIN and ``password`` if given), dropped afterwards."""
    name = unique_name("role")
    login = f" LOGIN PASSWORD '{password}'" if password else ""
    pg_server.psql(f"CREATE ROLE {name}{login}; GRANT TEMP ON DATABASE postgres TO {name}")
    try:
        yield name
    finally:
        pg_server.psql(f"REVOKE ALL ON DATABASE postgres FROM {name}; DROP ROLE {name}")


# --------------------------------------------------------------------------- no server needed


def test_repr_never_shows_a_password() -> None:
    """The connector's and the face's reprs show where they connect, never the password."""
    uri = f"postgresql://alice:{PASSWORD}@db.example:5433/app?application_name=svc"
    cases = [
        PsycopgConnector(uri),
        PsycopgConnector(f"host=db.example port=5433 dbname=app user=alice password='{PASSWORD}'"),
        PsycopgConnector("host=db.example", kwargs={"user": "alice", "password": PASSWORD}),
        PsycopgConnector(lambda: uri, kwargs=lambda: {"password": PASSWORD}),
        PsycopgConnector(f"this is not a conninfo {PASSWORD}"),
        AsyncConnectionPool(uri, open=False),
    ]
    for obj in cases:
        assert PASSWORD not in repr(obj)
        assert "Tr0ub4dor" not in repr(obj)
    assert repr(cases[0]) == (
        "<PsycopgConnector host=db.example port=5433 dbname=app user=alice application_name=svc>"
    )
    assert repr(cases[2]) == "<PsycopgConnector host=db.example user=alice>"
    assert repr(cases[3]) == "<PsycopgConnector conninfo=<callable> kwargs=<callable>>"
    assert repr(cases[4]) == "<PsycopgConnector conninfo=<unparsable>>"


def test_disconnect_classification() -> None:
    """Connection-class errors count as disconnects; timeouts, pool errors and SQL errors do not."""
    from psycopg import errors as e

    import elasticpool.psycopg as ep_psycopg

    dead = [
        psycopg.OperationalError("consuming input failed: server closed the connection"),
        e.AdminShutdown(),
        e.CrashShutdown(),
        e.CannotConnectNow(),
        e.lookup("08006")(),  # connection failure
        e.lookup("08003")(),  # connection does not exist
    ]
    alive = [
        TimeoutError(),
        e.QueryCanceled(),
        e.UniqueViolation(),
        e.InFailedSqlTransaction(),
        psycopg.InterfaceError("bad use"),
        e.PipelineAborted("an earlier statement of the pipeline failed"),
        psycopg.ProgrammingError("bad sql"),
        ValueError("not a database error"),
        psycopg_pool.PoolTimeout("from a pool"),
        ep_psycopg.PoolTimeout("from our pool"),
        ep_psycopg.PoolClosed("closed"),
        ep_psycopg.TooManyRequests("busy"),
        elasticpool.PoolTimeout("core"),
    ]
    assert [is_disconnect_error(exc) for exc in dead] == [True] * len(dead)
    assert [is_disconnect_error(exc) for exc in alive] == [False] * len(alive)


# --------------------------------------------------------------------------- connecting


@postgres
async def test_conninfo_and_kwargs_callables_run_at_every_connect(pg_server: Any) -> None:
    """Sync and async callables are evaluated per connect, so a rotated password is picked up."""
    old, new = "first-Secret-1", "second-Secret-2"
    app = unique_name("rotate")
    calls = {"conninfo": 0, "kwargs": 0}
    with role(pg_server, password=old) as name:
        current = {"password": old}

        def conninfo() -> str:
            calls["conninfo"] += 1
            return f"host={pg_server.host} port={pg_server.port} dbname=postgres"

        async def kwargs() -> dict[str, Any]:
            calls["kwargs"] += 1
            await anyio.lowlevel.checkpoint()
            return {"user": name, "password": current["password"], "application_name": app}

        connector = PsycopgConnector(conninfo, kwargs=kwargs)
        async with Pool(connector, max_connections=1, name=app) as pool:
            async with pool.acquire() as conn:
                assert await fetchval(conn, "SELECT current_user") == name
            pg_server.psql(f"ALTER ROLE {name} PASSWORD '{new}'")
            current["password"] = new
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                await AsyncConnection.connect(
                    conninfo(), user=name, password=old, application_name=app
                )
            await pool.expire_connections()
            async with pool.acquire() as conn:
                assert await fetchval(conn, "SELECT current_user") == name
            stats = pool.stats()
            assert (stats.connects, stats.connect_errors) == (2, 0)
        assert calls == {"conninfo": 3, "kwargs": 2}  # one extra: the direct connect above


@postgres
async def test_configure_runs_once_per_new_connection(pg_server: Any) -> None:
    """``configure`` runs on every new connection and nowhere else; its settings are seen."""
    app = unique_name("configure")
    seen: list[int] = []

    async def configure(conn: Conn) -> None:
        seen.append(await pid_of(conn))
        await conn.execute("SET statement_timeout = '7s'")
        await conn.commit()

    connector = PsycopgConnector(pg_server.dsn(application_name=app), configure=configure)
    async with Pool(connector, max_connections=2, reset="rollback", name=app) as pool:
        async with pool.acquire() as a, pool.acquire() as b:
            pids = {await pid_of(a), await pid_of(b)}
            assert await fetchval(a, "SHOW statement_timeout") == "7s"
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await fetchval(conn, "SHOW statement_timeout") == "7s"
    assert sorted(seen) == sorted(pids)


@postgres
@pytest.mark.parametrize("failure", ["raises", "leaves a transaction open"])
async def test_configure_failure_discards_the_connection(
    pg_server: Any, observer: Observer, failure: str
) -> None:
    """A ``configure`` that raises or leaves a transaction open fails the connect and closes it."""
    app = unique_name("badconf")

    async def configure(conn: Conn) -> None:
        await conn.execute("SELECT 1")  # opens a transaction
        if failure == "raises":
            raise ValueError("configure exploded")

    connector = PsycopgConnector(pg_server.dsn(application_name=app), configure=configure)
    async with Pool(connector, max_connections=1, pool_timeout=0.5, name=app) as pool:
        with pytest.raises(elasticpool.PoolTimeout, match="connects are failing") as info:
            async with pool.acquire():
                pass
        cause = info.value.__cause__
        if failure == "raises":
            assert isinstance(cause, ValueError)
        else:
            assert isinstance(cause, psycopg.ProgrammingError)
            assert "left in status INTRANS by configure function" in str(cause)
        assert pool.stats().connect_errors >= 1
        await eventually(lambda: observer.pids(app), lambda p: not p, "backends left behind")


# --------------------------------------------------------------------------- transactions


async def insert_then_fail(pool: Pool[Conn], table: str) -> None:
    """Insert a row inside ``pool.transaction()``, then raise."""
    async with pool.transaction() as conn:
        await conn.execute(f"INSERT INTO {table} VALUES (2)")
        raise RuntimeError("undo")


@postgres
async def test_pool_transaction_commits_and_rolls_back(pg_server: Any, observer: Observer) -> None:
    """``pool.transaction()`` commits a clean block and rolls back one that raises."""
    app, table = unique_name("tx"), unique_name("tx_table")
    await observer.conn.execute(f"CREATE TABLE {table} (x int)")
    try:
        connector = PsycopgConnector(pg_server.dsn(application_name=app))
        async with Pool(connector, max_connections=1, name=app) as pool:
            async with pool.transaction() as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
                assert conn.info.transaction_status == TransactionStatus.INTRANS
            with pytest.raises(RuntimeError, match="undo"):
                await insert_then_fail(pool, table)
            async with pool.acquire() as conn:
                assert conn.info.transaction_status == TransactionStatus.IDLE
        assert await fetchval(observer.conn, f"SELECT array_agg(x) FROM {table}") == [1]
    finally:
        await observer.conn.execute(f"DROP TABLE {table}")


# --------------------------------------------------------------------------- release hygiene


@postgres
async def test_rollback_mode_ends_the_transaction_but_keeps_session_state(
    pg_server: Any, observer: Observer
) -> None:
    """``reset="rollback"`` (psycopg_pool's behaviour): the transaction is gone, GUCs stay."""
    app, table = unique_name("rb"), unique_name("rb_table")
    await observer.conn.execute(f"CREATE TABLE {table} (x int)")
    try:
        connector = PsycopgConnector(pg_server.dsn(application_name=app))
        async with Pool(connector, max_connections=1, reset="rollback", name=app) as pool:
            async with pool.acquire() as conn:
                pid = await pid_of(conn)
                await conn.execute("SET search_path TO rb_path, public")
                await conn.commit()
                await conn.execute(f"INSERT INTO public.{table} VALUES (1)")
                assert conn.info.transaction_status == TransactionStatus.INTRANS
            async with pool.acquire() as conn:
                assert await pid_of(conn) == pid
                await conn.rollback()  # pid_of() opened one: look at the state we were given
                assert await fetchval(conn, "SHOW search_path") == "rb_path, public"
                assert await fetchval(conn, f"SELECT count(*) FROM public.{table}") == 0
        assert await fetchval(observer.conn, f"SELECT count(*) FROM {table}") == 0
    finally:
        await observer.conn.execute(f"DROP TABLE {table}")


async def dirty_the_session(conn: Conn, observer: Observer, role_name: str, key: int) -> None:
    """Leave behind everything a session can carry over, on the server and in psycopg."""
    await conn.execute("SET search_path TO sess_path, public")
    await conn.execute("SELECT set_config('myapp.tenant', '42', false)")
    await conn.execute("CREATE TEMP TABLE sess_tmp (x int)")
    await conn.execute("SELECT pg_advisory_lock(%s)", [key])
    await conn.execute("PREPARE sess_plan AS SELECT 1")
    for i in range(8):  # psycopg prepares it server-side after 5 runs
        await conn.execute("SELECT %s::int AS n", [i])
    assert conn._prepared._names, "psycopg should have prepared the repeated query"
    await conn.execute("DECLARE sess_held CURSOR WITH HOLD FOR SELECT generate_series(1, 9)")
    await conn.execute("LISTEN sess_chan")
    await conn.commit()
    await observer.conn.execute("NOTIFY sess_chan, 'for the last borrower only'")
    await eventually(
        lambda: conn.execute("SELECT 1"),
        lambda _: bool(conn._notifies_backlog),
        "the notification never reached psycopg",
    )
    await conn.commit()
    await conn.execute(f"SET ROLE {role_name}")
    assert await fetchval(conn, "SELECT current_user") == role_name
    await conn.commit()
    conn.row_factory = dict_row
    conn.prepare_threshold = 1
    await conn.set_isolation_level(IsolationLevel.SERIALIZABLE)
    await conn.set_read_only(True)


@postgres
@pytest.mark.parametrize("returned", ["idle", "in a transaction"])
async def test_session_reset_hides_everything_from_the_next_borrower(
    pg_server: Any, observer: Observer, returned: str
) -> None:
    """Under ``reset="session"`` nothing a borrower set is visible to the next one on that backend.

    Role, search_path, a custom GUC, a temp table, LISTEN and an unread
    notification, an advisory lock, prepared statements (explicit and
    psycopg's own), a held cursor, and psycopg's connection attributes.
    """
    app = unique_name("session")
    key = uuid.uuid4().int % 2**31
    with role(pg_server) as role_name:
        connector = PsycopgConnector(pg_server.dsn(application_name=app))
        async with Pool(connector, max_connections=1, reset="session", name=app) as pool:
            # PIDs from libpq, not from a query: psycopg's rollback() clears its
            # statement cache, which would hide a stale one.
            async with pool.acquire() as conn:  # a first reset, with psycopg's cache empty
                pid = conn.info.backend_pid
                if returned == "in a transaction":
                    await conn.execute("SELECT 1")
            async with pool.acquire() as conn:
                assert conn.info.backend_pid == pid
                await dirty_the_session(conn, observer, role_name, key)
                if returned == "in a transaction":
                    await conn.execute("DECLARE sess_open CURSOR FOR SELECT 1")
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", [key + 1])
                    assert conn.info.transaction_status == TransactionStatus.INTRANS
                else:
                    assert conn.info.transaction_status == TransactionStatus.IDLE
            await eventually(pool.stats, lambda s: s.idle == 1, "the reset never finished")

            async with pool.acquire() as conn:
                assert conn.info.backend_pid == pid
                assert conn.info.transaction_status == TransactionStatus.IDLE
                assert conn.row_factory is tuple_row
                assert (conn.autocommit, conn.read_only, conn.isolation_level) == (
                    False,
                    None,
                    None,
                )
                assert conn.prepare_threshold == 5
                assert not conn._prepared._names
                assert [n async for n in conn.notifies(timeout=0)] == []
                await conn.set_autocommit(True)
                checks = {
                    "SELECT pg_backend_pid()": pid,
                    "SELECT current_user = session_user": True,
                    "SHOW search_path": '"$user", public',
                    "SELECT coalesce(current_setting('myapp.tenant', true), '')": "",
                    "SELECT to_regclass('pg_temp.sess_tmp') IS NULL": True,
                    "SELECT count(*) FROM pg_listening_channels()": 0,
                    "SELECT count(*) FROM pg_prepared_statements": 0,
                    "SELECT count(*) FROM pg_cursors": 0,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid()": 0,
                }
                for sql, expected in checks.items():
                    assert await fetchval(conn, sql) == expected, sql
                await conn.set_autocommit(False)
                # psycopg's cache agrees with the server: the query prepares again and runs.
                for i in range(8):
                    assert await fetchval(conn, "SELECT %s::int AS n", [i], prepare=True) == i
                assert conn._prepared._names
            got = await fetchval(observer.conn, "SELECT pg_try_advisory_lock(%s)", [key])
            assert got is True
            await observer.conn.execute("SELECT pg_advisory_unlock(%s)", [key])
            assert pool.stats().closed_broken == 0


@postgres
async def test_custom_reset_runs_after_the_rollback_and_must_leave_the_connection_idle(
    pg_server: Any,
) -> None:
    """A ``reset`` callback sees an idle connection; raising or leaving a transaction discards."""
    app = unique_name("resetcb")
    statuses: list[int] = []
    behaviour = {"mode": "ok"}

    async def reset(conn: Conn) -> None:
        statuses.append(conn.info.transaction_status)
        if behaviour["mode"] == "raise":
            raise RuntimeError("reset exploded")
        if behaviour["mode"] == "leave open":
            await conn.execute("SELECT 1")
        else:
            await conn.execute("RESET search_path")
            await conn.commit()

    connector = PsycopgConnector(pg_server.dsn(application_name=app), reset=reset)
    async with Pool(connector, max_connections=1, reset="rollback", name=app) as pool:
        pids = []
        for mode in ("ok", "raise", "leave open", "ok"):
            behaviour["mode"] = mode
            async with pool.acquire() as conn:
                pids.append(await pid_of(conn))
                await conn.execute("SET search_path TO cb_path")  # left in a transaction
            await eventually(pool.stats, lambda s: s.resetting == 0, "the reset never finished")
        async with pool.acquire() as conn:
            pids.append(await pid_of(conn))
            assert await fetchval(conn, "SHOW search_path") == '"$user", public'
        assert statuses == [TransactionStatus.IDLE] * 4
        assert pids[0] == pids[1]  # "ok" kept it
        assert len({pids[1], pids[2], pids[3]}) == 3  # "raise" and "leave open" discarded it
        assert pids[3] == pids[4]
        assert pool.stats().closed_broken == 2


# --------------------------------------------------------------------------- dead connections


async def hold(pool: Pool[Conn], n: int) -> list[int]:
    """Borrow ``n`` connections at once and return their backend PIDs."""
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.acquire()) for _ in range(n)]
        return [await pid_of(conn) for conn in conns]


@postgres
async def test_terminated_idle_connections_are_never_handed_out(
    pg_server: Any, observer: Observer
) -> None:
    """Idle connections with terminated backends are found dead at checkout, without a ping."""
    app = unique_name("killidle")
    connector = PsycopgConnector(pg_server.dsn(application_name=app))
    async with Pool(
        connector, max_connections=3, min_connections=3, ping_after=None, name=app
    ) as pool:
        await pool.wait(timeout=BOUND)
        old = await hold(pool, 3)
        await eventually(pool.stats, lambda s: s.idle == 3, "resets never finished")
        for pid in old:
            await observer.terminate(pid)
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await pid_of(conn) not in old  # would raise on a dead connection
        stats = pool.stats()
        assert stats.closed_broken == 3
        assert stats.returned_broken == 0


@postgres
async def test_termination_is_seen_locally_as_soon_as_the_backend_is_gone(
    pg_server: Any, observer: Observer
) -> None:
    """Regression: the FATAL message may come before end-of-file; ``is_closed`` trusts it.

    A backend leaves ``pg_stat_activity`` after sending its FATAL message but
    before its socket is closed, so in that window only the message is there
    to read. Once read it is gone from the socket, so the verdict must stick:
    the pool asks again (its fast path, then its slow path) before that
    end-of-file arrives.
    """
    app = unique_name("race")
    connector = PsycopgConnector(pg_server.dsn(application_name=app))
    for _ in range(25):
        conn = await connector.connect()
        try:
            assert not connector.is_closed(conn)
            pid = conn.info.backend_pid
            assert await fetchval(observer.conn, "SELECT pg_terminate_backend(%s)", [pid])
            with anyio.fail_after(BOUND):
                while await observer.alive(pid):
                    pass  # look again at once: the window before end-of-file is short
            assert connector.is_closed(conn)
            assert connector.is_closed(conn)  # asked again at once: still dead
        finally:
            await connector.close(conn)


@postgres
async def test_notification_on_an_idle_connection_is_kept_not_mistaken_for_death(
    pg_server: Any, observer: Observer
) -> None:
    """A NOTIFY arriving while a connection is idle leaves it alive, and psycopg gets it."""
    app = unique_name("notify")
    connector = PsycopgConnector(pg_server.dsn(application_name=app))
    async with Pool(connector, max_connections=1, reset="rollback", name=app) as pool:
        async with pool.acquire() as conn:
            pid = conn.info.backend_pid
            await conn.execute("LISTEN idle_chan")
            await conn.commit()
        await observer.conn.execute("NOTIFY idle_chan, 'hello'")
        await eventually(
            anyio.lowlevel.checkpoint,
            lambda _: not connector.is_closed(conn) and bool(conn._notifies_backlog),
            "the notification never arrived",
        )
        async with pool.acquire() as conn:
            assert conn.info.backend_pid == pid
            got = [n.payload async for n in conn.notifies(timeout=0)]
            assert got == ["hello"]
        assert pool.stats().closed_broken == 0


@postgres
async def test_terminated_busy_connection_fails_its_holder_and_is_evicted(
    pg_server: Any, observer: Observer
) -> None:
    """The holder of a connection whose backend was terminated gets an error; the pool recovers."""
    app = unique_name("killbusy")
    connector = PsycopgConnector(pg_server.dsn(application_name=app))
    async with Pool(connector, max_connections=1, name=app) as pool:
        pids: list[int] = []

        async def use_after_termination() -> None:
            async with pool.acquire() as conn:
                pids.append(await pid_of(conn))
                await observer.terminate(pids[0])
                await conn.execute("SELECT 1")

        with pytest.raises(psycopg.OperationalError) as info:
            await use_after_termination()
        assert is_disconnect_error(info.value)
        pid = pids[0]
        stats = pool.stats()
        assert (stats.returned_broken, stats.closed_broken) == (1, 1)
        async with pool.acquire() as conn:
            assert await pid_of(conn) != pid


@postgres
@pytest.mark.parametrize(
    "how", ["scope inside the borrow", "scope around the borrow", "task.cancel"]
)
async def test_task_cancelled_mid_query_leaves_nothing_broken_behind(
    pg_server: Any, observer: Observer, how: str
) -> None:
    """A borrower cancelled during ``pg_sleep(10)``: the next borrower works, the query is gone.

    With an anyio cancel scope psycopg gives up on its own cancel request and
    closes the socket: the pool evicts the connection and sends the cancel
    itself. With a one-shot asyncio cancellation psycopg cancels the query and
    the connection is reused.
    """
    app = unique_name("cancel")
    connector = PsycopgConnector(pg_server.dsn(application_name=app))

    async def query_running() -> None:
        await eventually(lambda: observer.running(app, "SELECT pg_sleep%"), bool, "no query")

    async with Pool(connector, max_connections=1, name=app) as pool:
        if how == "scope around the borrow":

            async def cancel_when_running(scope: anyio.CancelScope) -> None:
                await query_running()
                scope.cancel()

            with anyio.CancelScope() as scope:
                async with pool.acquire() as conn:
                    pid = await pid_of(conn)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(cancel_when_running, scope)
                        await conn.execute("SELECT pg_sleep(10)")
            assert scope.cancelled_caught
        elif how == "scope inside the borrow":
            async with pool.acquire() as conn:
                pid = await pid_of(conn)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(conn.execute, "SELECT pg_sleep(10)")
                    await query_running()
                    tg.cancel_scope.cancel()
        else:
            async with pool.acquire() as conn:
                pid = await pid_of(conn)
                task = asyncio.ensure_future(conn.execute("SELECT pg_sleep(10)"))
                await query_running()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        await eventually(
            lambda: observer.running(app, "SELECT pg_sleep%"), lambda p: not p, "stuck query"
        )
        with anyio.fail_after(BOUND):
            async with pool.acquire() as conn:
                assert await fetchval(conn, "SELECT 41 + 1") == 42
                reused = await pid_of(conn) == pid
        assert reused is (how == "task.cancel")
        assert pool.stats().returned_broken == (0 if how == "task.cancel" else 1)


# --------------------------------------------------------------------------- server restart


async def borrow_after_restart(
    acquire: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
    server: EmbeddedPostgres,
    old: set[int],
) -> list[int]:
    """Restart ``server`` (immediate), then 4 tasks borrow 5 times each; per task, failures."""
    await anyio.to_thread.run_sync(lambda: server.restart(mode="immediate"))
    failures = [0] * 4

    async def worker(i: int) -> None:
        done = 0
        while done < 5:
            try:
                async with acquire() as conn:
                    assert await pid_of(conn) not in old
                    await conn.commit()
                done += 1
            except psycopg.OperationalError:
                failures[i] += 1

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(worker, i)
    return failures


@postgres
async def test_pool_recovers_from_a_server_restart(private_server: EmbeddedPostgres) -> None:
    """After an immediate restart the dead idle connections are replaced; no borrower fails."""
    app = unique_name("restart")
    connector = PsycopgConnector(private_server.dsn(application_name=app))
    async with Pool(connector, max_connections=4, min_connections=4, name=app) as pool:
        await pool.wait(timeout=BOUND)
        old = set(await hold(pool, 4))
        failures = await borrow_after_restart(pool.acquire, private_server, old)
        assert failures == [0, 0, 0, 0]
        assert pool.stats().closed_broken >= 4


@postgres
async def test_psycopg_face_recovers_from_a_server_restart(
    private_server: EmbeddedPostgres,
) -> None:
    """The psycopg_pool look-alike after an immediate restart: no borrower gets a dead one."""
    app = unique_name("restartface")
    async with AsyncConnectionPool(
        private_server.dsn(application_name=app), min_size=4, open=False, name=app
    ) as pool:
        await pool.wait(timeout=BOUND)
        async with contextlib.AsyncExitStack() as stack:
            conns = [await stack.enter_async_context(pool.connection()) for _ in range(4)]
            old = {await pid_of(conn) for conn in conns}
        failures = await borrow_after_restart(pool.connection, private_server, old)
        assert failures == [0, 0, 0, 0]
        assert pool.get_stats()["connections_lost"] >= 4
