"""``AsyncpgConnector`` against a real PostgreSQL: connect arguments, release hygiene, errors.

The connector is driven through a core :class:`~elasticpool.Pool`; what it does is
checked on the server (``pg_stat_activity``, ``pg_prepared_statements``,
``pg_locks``) through an observer connection of its own. Most pools here have
one connection, so the next borrower provably gets the same backend.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from elasticpool import Pool, PoolTimeout

asyncpg = pytest.importorskip("asyncpg")

from asyncpg import exceptions as pg_exc  # noqa: E402

from elasticpool.asyncpg import (  # noqa: E402
    AsyncpgConnector,
    is_disconnect_error,
    session_reset_sql,
)

from ..helpers import eventually, settle, unique_name  # noqa: E402

BOUND = 10.0
"""Overall bound, in seconds, on any one wait for a server-side effect."""


@pytest.fixture
async def observer(pg_server: Any) -> AsyncIterator[Any]:
    """A plain asyncpg connection of its own, for looking at the server."""
    conn = await asyncpg.connect(pg_server.dsn(application_name=unique_name("observer")))
    try:
        yield conn
    finally:
        await conn.close()


# --------------------------------------------------------------------------- no server needed


def test_repr_never_shows_a_password() -> None:
    """The repr shows host, port and database, never the password from a DSN or from keywords."""
    secret = "s3cr3t-Pa55"
    in_dsn = AsyncpgConnector(f"postgresql://app:{secret}@db.example:6432/shop?sslmode=require")
    assert repr(in_dsn) == "<AsyncpgConnector db.example:6432/shop>"
    in_query = AsyncpgConnector(f"postgresql://db.example/shop?password={secret}@x")
    assert repr(in_query) == "<AsyncpgConnector db.example/shop>"
    for c in "?#@/":  # asyncpg would misread these: refused, the password masked
        with pytest.raises(ValueError, match=r"postgres://app:\*\*\*@db\.example/shop") as info:
            AsyncpgConnector(f"postgres://app:{secret}{c}x@db.example/shop")
        assert secret not in str(info.value)
    in_kwargs = AsyncpgConnector(
        host="db.example", port=5432, user="app", password=secret, database="shop"
    )
    assert repr(in_kwargs) == "<AsyncpgConnector db.example:5432/shop>"
    both = AsyncpgConnector(f"postgresql://app:{secret}@h1/shop", password=secret)
    assert repr(both) == "<AsyncpgConnector h1/shop>"
    not_a_uri = AsyncpgConnector(f"host=db.example password={secret}")
    assert repr(not_a_uri) == "<AsyncpgConnector dsn>"
    both.set_connect_args(f"postgresql://app:{secret}@h2:1/other", password=secret)
    assert repr(both) == "<AsyncpgConnector h2:1/other>"
    for connector in (in_dsn, in_query, in_kwargs, both, not_a_uri):
        assert secret not in repr(connector)
        assert secret not in str(connector)
    assert repr(AsyncpgConnector()) == "<AsyncpgConnector default>"


def _pg_error(sqlstate: str, severity: str = "ERROR") -> Exception:
    """A server error as asyncpg builds it from an ErrorResponse."""
    err: Exception = pg_exc.PostgresError.new(
        {"C": sqlstate, "S": severity, "V": severity, "M": "test"}
    )
    return err


def _group(*excs: Exception) -> Exception:
    """An exception group (Python >= 3.11), or the last exception on 3.10."""
    group = getattr(builtins, "ExceptionGroup", None)
    return group("group", list(excs)) if group is not None else excs[-1]


@pytest.mark.parametrize(
    ("exc", "dead"),
    [
        (pg_exc.ConnectionDoesNotExistError("connection was closed in the middle of operation"), 1),
        (_pg_error("08006"), 1),
        (_pg_error("08P01"), 1),
        (_pg_error("57P01", "FATAL"), 1),
        (_pg_error("57P02", "FATAL"), 1),
        (_pg_error("57P03", "FATAL"), 1),
        (_pg_error("25P03", "FATAL"), 1),  # idle-in-transaction timeout ends the session
        (pg_exc.InterfaceError("connection is closed"), 1),
        (pg_exc.InterfaceError("cannot perform operation: connection is closed"), 1),
        (ConnectionResetError(), 1),
        (BrokenPipeError(), 1),
        (OSError("network is unreachable"), 1),
        (_group(ValueError(), ConnectionResetError()), 1),
        (TimeoutError(), 0),
        (asyncio.TimeoutError(), 0),
        (PoolTimeout("pool 'x': no connection within 1s"), 0),
        (_pg_error("57014"), 0),  # query_canceled: the connection is fine
        (_pg_error("23505"), 0),
        (_pg_error("25P02"), 0),  # in failed transaction: a rollback fixes it
        (pg_exc.InterfaceError("cannot perform operation: another operation is in progress"), 0),
        (pg_exc.InterfaceError("pool is closed"), 0),
        (ValueError("bad input"), 0),
        (_group(ValueError()), 0),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_disconnect_classifies_errors(exc: BaseException, dead: int) -> None:
    """Connection-class errors are disconnects; timeouts and statement errors are not."""
    assert is_disconnect_error(exc) is bool(dead)
    assert AsyncpgConnector().is_disconnect(exc) is bool(dead)


def test_callbacks_must_be_callable() -> None:
    """A non-callable connect, init or reset is a TypeError naming the argument."""
    for name in ("connect", "init", "reset"):
        with pytest.raises(TypeError, match=f"^{name} must be a coroutine function"):
            AsyncpgConnector(**{name: "nope"})


# --------------------------------------------------------------------------- connecting


@pytest.mark.anyio
@pytest.mark.postgres
async def test_connect_arguments_pass_through_unchanged(pg_server: Any) -> None:
    """server_settings, statement_cache_size and command_timeout reach asyncpg.connect as given."""
    connector = AsyncpgConnector(
        pg_server.dsn(),
        server_settings={"application_name": "ep-passthrough", "search_path": "pg_catalog"},
        statement_cache_size=7,
        command_timeout=12.5,
    )
    conn = await connector.connect()
    try:
        assert await conn.fetchval("SHOW application_name") == "ep-passthrough"
        assert await conn.fetchval("SHOW search_path") == "pg_catalog"
        assert conn._stmt_cache.get_max_size() == 7
        assert conn._config.command_timeout == 12.5
    finally:
        await connector.close(conn)
    assert connector.is_closed(conn)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_connect_replacement_and_set_connect_args(pg_server: Any) -> None:
    """connect= is called as connect(dsn, **kwargs); set_connect_args changes later connects."""
    calls: list[tuple[str | None, dict[str, Any]]] = []

    async def rotating_connect(dsn: str | None, **kwargs: Any) -> Any:
        calls.append((dsn, kwargs))
        return await asyncpg.connect(dsn, **kwargs)

    first = pg_server.dsn(application_name="ep-first")
    connector = AsyncpgConnector(first, connect=rotating_connect, statement_cache_size=3)
    async with Pool(connector, max_connections=2) as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "ep-first"
            old = conn
        connector.set_connect_args(pg_server.dsn(application_name="ep-second"))
        async with pool.acquire() as conn:
            assert conn is old  # open connections are kept
        await pool.expire_connections()
        async with pool.acquire() as conn:
            assert conn is not old
            assert await conn.fetchval("SHOW application_name") == "ep-second"
    assert calls == [
        (first, {"statement_cache_size": 3}),
        (pg_server.dsn(application_name="ep-second"), {}),
    ]


@pytest.mark.anyio
@pytest.mark.postgres
async def test_init_runs_once_and_a_failing_init_fails_the_connect(
    pg_server: Any, observer: Any
) -> None:
    """init runs once per new connection; if it raises, that connection is closed on the server."""
    seen: list[int] = []
    fail = True

    async def init(conn: Any) -> None:
        seen.append(conn.get_server_pid())
        if fail:
            raise RuntimeError("init failed")

    app = unique_name("init")
    connector = AsyncpgConnector(pg_server.dsn(application_name=app), init=init)
    with pytest.raises(RuntimeError, match="init failed"):
        await connector.connect()
    assert len(seen) == 1

    async def gone() -> bool:
        return not await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
        )

    await eventually(gone, bool, "the backend of a connection whose init failed is still there")
    fail = False
    async with Pool(connector, max_connections=1, ping_after=None) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == seen[-1]
        assert len(seen) == 2
        assert pool.stats().connects == 1


@pytest.mark.anyio
async def test_connect_returning_no_connection_is_refused() -> None:
    """A connect callback returning something that is not a connection is a failed connect."""

    class NotAConnection:
        terminated = False

        def terminate(self) -> None:
            self.terminated = True

    made: list[NotAConnection] = []

    async def bogus_connect(dsn: str | None, **kwargs: Any) -> Any:
        made.append(NotAConnection())
        return made[-1]

    connector = AsyncpgConnector("postgresql://nowhere/db", connect=bogus_connect)
    with pytest.raises(pg_exc.InterfaceError, match=r"got .*NotAConnection"):
        await connector.connect()
    assert made[0].terminated


# --------------------------------------------------------------------------- release hygiene


@pytest.mark.anyio
@pytest.mark.postgres
async def test_session_reset_keeps_asyncpg_statements_and_drops_sql_ones(
    pg_server: Any,
) -> None:
    """A session reset deallocates SQL PREPAREs only: asyncpg's statement cache stays valid."""
    connector = AsyncpgConnector(pg_server.dsn())
    query = "SELECT $1::int + 1"
    async with Pool(connector, max_connections=1, reset="session") as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval(query, 1) == 2
            await conn.execute("PREPARE mine AS SELECT 42")
            cached = {s.name for s in conn._stmt_cache.iter_statements()}
        for _ in range(3):
            async with pool.acquire() as conn:
                assert await conn.fetchval(query, 2) == 3  # a cache hit: no new statement
                rows = await conn.fetch("SELECT name, from_sql FROM pg_prepared_statements")
                assert {s.name for s in conn._stmt_cache.iter_statements()} >= cached
        on_server = {r["name"]: r["from_sql"] for r in rows}
        assert "mine" not in on_server
        assert cached <= set(on_server)
        assert not any(on_server.values())
        stats = pool.stats()
        assert (stats.connects, stats.closed_broken) == (1, 0)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_borrower_deallocating_asyncpg_statements_gets_the_connection_discarded(
    pg_server: Any,
) -> None:
    """After a borrower's DEALLOCATE ALL the reset fails, so nobody gets the stale cache."""
    connector = AsyncpgConnector(pg_server.dsn())
    async with Pool(connector, max_connections=1, reset="session") as pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT $1::int", 5) == 5
            (cached,) = conn._stmt_cache.iter_statements()
            assert cached.name in session_reset_sql(conn)  # asyncpg's cache is checked
            await conn.execute("DEALLOCATE ALL")
            first = conn
        async with pool.acquire() as conn:
            assert conn is not first
            assert await conn.fetchval("SELECT $1::int", 6) == 6
        stats = pool.stats()
        assert (stats.connects, stats.closed_broken) == (2, 1)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_custom_reset_replaces_the_session_cleanup(pg_server: Any) -> None:
    """reset= runs instead of the default clean-up, after the transaction was rolled back."""
    calls: list[tuple[Any, bool]] = []

    async def reset(conn: Any) -> None:
        calls.append((conn, conn.is_in_transaction()))
        await conn.execute("RESET statement_timeout")

    connector = AsyncpgConnector(pg_server.dsn(), reset=reset)
    async with Pool(connector, max_connections=1, reset="session") as pool:
        async with pool.acquire() as conn:
            await conn.execute("SET search_path = pg_catalog; SET statement_timeout = 4321")
            await conn.execute("BEGIN")
            first = conn
        async with pool.acquire() as conn:
            assert conn is first
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW search_path") == "pg_catalog"  # not the default reset
            assert await conn.fetchval("SHOW statement_timeout") == "0"
        assert calls == [(first, False)]


@pytest.mark.anyio
@pytest.mark.postgres
async def test_rollback_mode_ends_the_transaction_and_keeps_settings(pg_server: Any) -> None:
    """In "rollback" mode an open transaction is rolled back and nothing else is touched."""
    connector = AsyncpgConnector(pg_server.dsn())
    async with Pool(connector, max_connections=1, reset="rollback") as pool:
        async with pool.acquire() as conn:
            assert not connector.needs_reset(conn, "rollback")
            await conn.execute("SET search_path = pg_catalog")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SET LOCAL statement_timeout = 999")
            assert connector.needs_reset(conn, "rollback")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW search_path") == "pg_catalog"
            assert await conn.fetchval("SHOW statement_timeout") == "0"
            async with conn.transaction():  # the abandoned transaction object is forgotten
                assert await conn.fetchval("SELECT 1") == 1


async def _wait_active(observer: Any, pid: int, needle: str) -> None:
    """Poll until backend ``pid`` is running a query containing ``needle``."""

    async def active() -> bool:
        row = await observer.fetchrow(
            "SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid
        )
        return row is not None and row["state"] == "active" and needle in row["query"]

    await eventually(active, bool, f"backend {pid} never ran {needle!r}")


async def _wait_idle(observer: Any, pid: int) -> None:
    """Poll until backend ``pid`` is idle (no query stuck on it)."""

    async def idle() -> bool:
        state = await observer.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        return bool(state == "idle")

    await eventually(idle, bool, f"backend {pid} never became idle")


class RecordingConnector(AsyncpgConnector):
    """Records, at each release, whether asyncpg was still cancelling a query."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancelling_at_release: list[bool] = []

    def needs_reset(self, conn: Any, mode: Any) -> bool:
        self.cancelling_at_release.append(bool(conn._protocol._is_cancelling()))
        return super().needs_reset(conn, mode)


@pytest.mark.anyio
@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["rollback", "session"])
@pytest.mark.parametrize("how", ["task cancelled", "query timeout"])
async def test_query_cancelled_mid_flight_is_waited_for_and_reused(
    pg_server: Any, observer: Any, mode: str, how: str
) -> None:
    """A query cancelled mid-flight: the reset waits for the server's answer, then reuses it."""
    connector = RecordingConnector(pg_server.dsn())
    async with Pool(connector, max_connections=1, reset=mode, ping_after=None) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        started = anyio.Event()

        async def victim() -> None:
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                started.set()
                if how == "query timeout":
                    with pytest.raises(TimeoutError):
                        await conn.fetchval("SELECT pg_sleep(10)", timeout=0.2)
                else:
                    await conn.fetchval("SELECT pg_sleep(10)")

        async with anyio.create_task_group() as tg:
            tg.start_soon(victim)
            await started.wait()
            await _wait_active(observer, pid, "pg_sleep")
            if how == "task cancelled":
                tg.cancel_scope.cancel()
        assert connector.cancelling_at_release[-1] is True  # released while still cancelling
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # reused, not evicted
            assert not conn.is_in_transaction()
        await settle(pool)
        stats = pool.stats()
        assert (stats.connects, stats.closed_broken, stats.returned_broken) == (1, 0, 0)
        assert (stats.size, stats.idle, stats.in_use, stats.resetting) == (1, 1, 0, 0)
        await _wait_idle(observer, pid)


@pytest.mark.anyio
@pytest.mark.postgres
@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_failed_reset_discards_the_connection(pg_server: Any, failure: str) -> None:
    """A reset that raises, or outlives close_timeout, gets the connection closed, never lent."""

    async def reset(conn: Any) -> None:
        if failure == "raises":
            raise RuntimeError("reset failed")
        await anyio.sleep(BOUND)

    connector = AsyncpgConnector(pg_server.dsn(), reset=reset)
    async with Pool(
        connector, max_connections=1, close_timeout=0.2, ping_after=None, reset="session"
    ) as pool:
        async with pool.acquire() as conn:
            first = conn
        async with pool.acquire() as conn:
            assert conn is not first
            assert await conn.fetchval("SELECT 1") == 1
        assert first.is_closed()
        assert pool.stats().closed_broken == 1


@pytest.mark.anyio
@pytest.mark.postgres
async def test_none_mode_cancelled_query_in_transaction(pg_server: Any, observer: Any) -> None:
    """In "none" mode a query cancelled inside a transaction should still not reach the next one."""
    connector = AsyncpgConnector(pg_server.dsn())
    async with Pool(connector, max_connections=1, reset="none", ping_after=None) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        with anyio.move_on_after(BOUND) as outer:
            async with anyio.create_task_group() as tg:

                async def victim() -> None:
                    async with pool.acquire() as conn:
                        await conn.execute("BEGIN")
                        await conn.fetchval("SELECT pg_sleep(10)")

                tg.start_soon(victim)
                await _wait_active(observer, pid, "pg_sleep")
                tg.cancel_scope.cancel()
        assert not outer.cancelled_caught
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
