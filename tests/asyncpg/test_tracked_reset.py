"""asyncpg's tracked session reset: no round trip after plain queries, all of it when needed.

The connector reads what each borrower ran (asyncpg's query logger and the
protocol's query count) and sends only the parts of the session reset the
borrower may have dirtied. These tests count the queries a connection runs
between two borrowers (asyncpg's protocol counter: the reset's own round trip
is one of them) and look at the next borrower's session on the same backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest

asyncpg = pytest.importorskip("asyncpg")

from elasticpool import Pool  # noqa: E402
from elasticpool.asyncpg import AsyncpgConnector, create_pool  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


Opener = Callable[[str], AbstractAsyncContextManager[Any]]


@asynccontextmanager
async def face_default(dsn: str) -> AsyncIterator[Any]:
    async with create_pool(dsn, min_size=1, max_size=1) as pool:
        yield pool


@asynccontextmanager
async def face_session(dsn: str) -> AsyncIterator[Any]:
    async with create_pool(dsn, min_size=1, max_size=1, reset="session") as pool:
        yield pool


@asynccontextmanager
async def core_session(dsn: str) -> AsyncIterator[Any]:
    async with Pool(AsyncpgConnector(dsn), max_connections=1, reset="session") as pool:
        async with pool.acquire():  # the first return gets the whole reset; then tracked
            pass
        yield pool


POOLS = [
    pytest.param(face_default, id="create_pool"),
    pytest.param(face_session, id="create_pool-session"),
    pytest.param(core_session, id="core-session"),
]


def queries(conn: Any) -> int:
    """asyncpg's count of queries run on ``conn`` (the protocol's, as max_queries uses)."""
    return int(conn._protocol.queries_count)


@pytest.mark.parametrize("open_pool", POOLS)
async def test_plain_queries_cost_no_reset_round_trip(pg_server: Any, open_pool: Opener) -> None:
    """A borrower that only ran queries and DML gets the connection back with no reset query."""
    first = True
    async with open_pool(pg_server.dsn()) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                before = queries(conn)
                assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
                await conn.execute("SELECT now(), lower('X')")
                ran = queries(conn)
            if first:  # "session": asyncpg just cached a statement, so the check runs once
                first = False
                continue
            async with pool.acquire() as again:
                assert again is conn
                assert queries(again) == ran == before + 2


@pytest.mark.parametrize("open_pool", POOLS)
@pytest.mark.parametrize(
    ("dirty", "probe", "fresh"),
    [
        (
            "SET search_path = pg_catalog",
            "SELECT current_setting('search_path')",
            '"$user", public',
        ),
        (
            "SELECT set_config('ep.t', 'x', false)",
            "SELECT coalesce(current_setting('ep.t', true), '')",
            "",
        ),
        ("LISTEN ep_chan", "SELECT count(*) FROM pg_listening_channels()", 0),
        (
            "SELECT pg_advisory_lock(4242)",
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'",
            0,
        ),
        (
            "DECLARE ep_held CURSOR WITH HOLD FOR SELECT 1",
            "SELECT count(*) FROM pg_cursors WHERE name = 'ep_held'",
            0,
        ),
    ],
)
async def test_a_last_statement_that_dirties_is_cleared(
    pg_server: Any, open_pool: Opener, dirty: str, probe: str, fresh: Any
) -> None:
    """The borrower's last statement dirties, and it gives back at once: the next one is clean.

    asyncpg hands a query's record to the tracker one pass of the event loop
    after the query, that is after the release has begun: the face waits for
    it, and the core takes a query not yet seen for a dirtying one.
    """
    async with open_pool(pg_server.dsn()) as pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.execute(dirty)
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid
            assert await conn.fetchval(probe) == fresh


@pytest.mark.parametrize("open_pool", POOLS)
async def test_a_user_function_may_do_anything_so_it_gets_the_reset(
    pg_server: Any, open_pool: Opener
) -> None:
    """A function the borrower calls changes a setting behind a SELECT: the reset clears it."""
    name = f"ep_sets_{uuid.uuid4().hex[:8]}"
    pg_server.psql(
        f"CREATE FUNCTION public.{name}() RETURNS text LANGUAGE sql "
        f"AS $$ SELECT set_config('search_path', 'pg_catalog', false) $$"
    )
    try:
        async with open_pool(pg_server.dsn()) as pool:
            async with pool.acquire() as conn:
                await conn.fetchval(f"SELECT public.{name}()")
                assert await conn.fetchval("SHOW search_path") == "pg_catalog"
            async with pool.acquire() as conn:
                assert await conn.fetchval("SHOW search_path") == '"$user", public'
    finally:
        pg_server.psql(f"DROP FUNCTION public.{name}()")


@pytest.mark.parametrize("open_pool", POOLS)
async def test_a_prepared_statement_run_is_unseen_so_it_gets_the_reset(
    pg_server: Any, open_pool: Opener
) -> None:
    """A PreparedStatement's runs are counted but not logged: the reset runs, and clears."""
    async with open_pool(pg_server.dsn()) as pool:
        async with pool.acquire() as conn:
            statement = await conn.prepare("SELECT set_config('search_path', 'pg_catalog', false)")
            await statement.fetchval()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW search_path") == '"$user", public'


@pytest.mark.parametrize("open_pool", POOLS)
async def test_a_listener_added_without_a_query_is_dropped(
    pg_server: Any, open_pool: Opener
) -> None:
    """A log listener added by a borrower (Python-side only, no query) is gone for the next."""
    warned = (  # the face warns as asyncpg.Pool does; the core does not
        contextlib.nullcontext()
        if open_pool is core_session
        else pytest.warns(asyncpg.InterfaceWarning, match="1 active log listener")
    )
    async with open_pool(pg_server.dsn()) as pool:
        with warned:
            async with pool.acquire() as conn:
                conn.add_log_listener(lambda *args: None)
        async with pool.acquire() as again:
            assert again is conn
            assert not again._log_listeners


async def test_tracking_off_resets_on_every_return(pg_server: Any) -> None:
    """``tracking=False``: the whole reset (one round trip) after every borrow, plain or not."""
    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, tracking=False) as pool:
        for _ in range(3):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                ran = queries(conn)
            async with pool.acquire() as again:
                assert queries(again) == ran + 1


async def test_reset_callable_runs_before_the_release_returns(pg_server: Any) -> None:
    """As asyncpg.Pool: a ``reset=`` callable has run when the ``async with`` block is left."""
    calls: list[int] = []

    async def reset(conn: Any) -> None:
        calls.append(conn.get_server_pid())

    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, reset=reset) as pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
        assert calls == [pid]
        conn = await pool.acquire()
        await pool.release(conn)
        assert calls == [pid, pid]


async def test_release_timeout_bounds_a_reset_that_hangs(pg_server: Any) -> None:
    """``release(timeout=)`` bounds the reset: TimeoutError, the connection terminated, not lent."""
    gate = anyio.Event()

    async def reset(conn: Any) -> None:
        await gate.wait()

    async with create_pool(pg_server.dsn(), min_size=1, max_size=1, reset=reset) as pool:
        conn = await pool.acquire()
        with pytest.raises(TimeoutError):
            await pool.release(conn, timeout=0.1)
        assert conn.is_closed()
        gate.set()
        async with pool.acquire() as fresh:
            assert fresh is not conn
            assert await fresh.fetchval("SELECT 1") == 1


async def test_default_keeps_what_asyncpg_keeps(pg_server: Any) -> None:
    """The default reset is asyncpg's: a temp table and an SQL PREPARE stay; settings go."""
    async with create_pool(pg_server.dsn(), min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TEMP TABLE ep_kept (x int); PREPARE ep_kept_plan AS SELECT 1; "
                "SET statement_timeout = 4321"
            )
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT to_regclass('pg_temp.ep_kept') IS NOT NULL")
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_prepared_statements WHERE name = 'ep_kept_plan'"
            )
            assert await conn.fetchval("SHOW statement_timeout") == "0"


@pytest.mark.postgres
def test_a_connection_lost_while_borrowed_frees_its_place_for_a_timed_acquire(
    pg_server: Any,
) -> None:
    """Regression: a borrowed connection whose backend dies frees its place for acquire(timeout=).

    asyncpg reports the loss to termination listeners from a loop callback,
    outside any task: ending the borrow there failed to start the close, so
    the dead connection's slot stayed closing, held the limit, and the next
    ``acquire(timeout=)`` timed out (asyncpg.Pool's own test_pool_remote_close).
    Run under plain ``asyncio.run``, as an application runs it: anyio's test
    runner would let the close start from the callback all the same.
    """

    async def scenario() -> None:
        async with create_pool(pg_server.dsn(), min_size=1, max_size=1) as pool:
            lost = asyncio.Event()
            async with pool.acquire() as conn:
                conn.add_termination_listener(lambda _conn: lost.set())
                killer = await asyncpg.connect(pg_server.dsn())
                try:
                    await killer.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                finally:
                    await killer.close()
                await asyncio.wait_for(lost.wait(), 10)
                await asyncio.sleep(0)  # the face's own listener, queued with the test's
            fresh = await pool.acquire(timeout=5)
            try:
                assert fresh is not conn
                assert await fresh.fetchval("SELECT 1") == 1
            finally:
                await pool.release(fresh, timeout=5)

    asyncio.run(scenario())
