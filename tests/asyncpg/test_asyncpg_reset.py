"""asyncpg's ``"session"`` reset: the round trips it sends.

A connection's first reset is the whole of ``session_reset_sql``, which ends
with a check of ``pg_prepared_statements`` against asyncpg's statement cache;
the connector reads the round trip's status (that of its last statement) and
sends the ``DO`` block that deallocates only when the check found something.
From then on the connector tracks what borrowers run, and a borrower that only
ran queries costs no round trip at all. These tests record the SQL each reset
sends (a query logger added in ``init`` survives the reset, as ``init``'s state
does) and look at the server afterwards. Isolation of every kind of session
state is tested in ``test_session_isolation.py``; this file is about the round
trips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from elasticpool import Pool

asyncpg = pytest.importorskip("asyncpg")

from elasticpool.asyncpg import AsyncpgConnector, session_reset_sql  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

CHECK = "FROM pg_catalog.pg_prepared_statements\nHAVING"
"""Text of the check that ends the first round trip."""

DEALLOCATE = "DO $elasticpool$"
"""Text of the second round trip, which deallocates."""

RESET_MARKS = ("RESET ALL", CHECK, DEALLOCATE, "UNLISTEN *", "CLOSE ALL", "DISCARD ")
"""Text only the reset's queries hold (in these tests): each reset query holds one."""


class Recorder:
    """A connector factory whose connections log the reset queries they run.

    asyncpg calls query loggers soon after each query (``call_soon``), which is
    before a borrower woken by the end of the reset runs.
    """

    def __init__(self) -> None:
        self.queries: list[str] = []

    def connector(self, dsn: str) -> AsyncpgConnector:
        def log(record: Any) -> None:
            if any(mark in record.query for mark in RESET_MARKS):
                self.queries.append(record.query)

        async def init(conn: Any) -> None:
            conn.add_query_logger(log)

        return AsyncpgConnector(dsn, init=init)

    def take(self) -> list[str]:
        """The reset queries logged since the last call."""
        taken, self.queries = self.queries, []
        return taken


@asynccontextmanager
async def recorded_pool(pg_server: Any) -> AsyncIterator[tuple[Recorder, Pool[Any]]]:
    """A pool of one connection, ``reset="session"``, whose resets a :class:`Recorder` logs."""
    rec = Recorder()
    async with Pool(rec.connector(pg_server.dsn()), max_connections=1, reset="session") as pool:
        yield rec, pool


async def statements_on_server(conn: Any) -> set[str]:
    """Names of the prepared statements of ``conn``'s session (this query's own included)."""
    return {r["name"] for r in await conn.fetch("SELECT name FROM pg_prepared_statements")}


def statements_cached(conn: Any) -> set[str]:
    """Names of the statements in ``conn``'s asyncpg cache."""
    return {s.name for s in conn._stmt_cache.iter_statements()}


async def test_first_reset_is_whole_then_plain_borrows_cost_no_round_trip(
    pg_server: Any,
) -> None:
    """The first return gets the whole reset (one round trip); later plain queries get none."""
    async with recorded_pool(pg_server) as (rec, pool):
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT $1::int", 1) == 1
            first = conn
        async with pool.acquire() as conn:  # one connection: this waited for the reset
            (reset,) = rec.take()
            assert conn is first
            assert CHECK in reset
            assert DEALLOCATE not in reset
        for _ in range(3):
            async with pool.acquire() as conn:
                assert rec.take() == []
                assert conn is first
                assert await conn.fetchval("SELECT $1::int", 2) == 2  # a cache hit
                await conn.execute("SELECT 3")
        assert pool.stats().closed_broken == 0


async def test_borrowers_prepared_statements_take_a_second_round_trip(pg_server: Any) -> None:
    """SQL PREPARE and conn.prepare() make the check fire; the DO block then drops both."""
    async with recorded_pool(pg_server) as (rec, pool):
        async with pool.acquire():  # the first return gets the whole reset
            pass
        async with pool.acquire():  # one connection: this waited for it
            rec.take()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT $1::int", 1) == 1
            await conn.execute("PREPARE mine AS SELECT 42")
            held = await conn.prepare("SELECT 43")
            assert await held.fetchval() == 43
            first = conn
        async with pool.acquire() as conn:
            reset = rec.take()
            assert conn is first
            assert await statements_on_server(conn) == statements_cached(conn)
            assert await conn.fetchval("SELECT $1::int", 2) == 2
        assert [CHECK in q for q in reset] == [True, False]
        assert "RESET ALL" in reset[0]  # a prepared statement ran: its text is unseen
        assert reset[1].startswith(DEALLOCATE)
        async with pool.acquire():  # asyncpg cached new statements: one more check
            assert [CHECK in q for q in rec.take()] == [True]
        async with pool.acquire():  # nothing new since: no round trip
            assert rec.take() == []
        assert pool.stats().closed_broken == 0


async def test_driver_prepare_alone_makes_the_check_fire(pg_server: Any) -> None:
    """conn.prepare() never executed (nothing logged, nothing counted) still gets deallocated."""
    async with recorded_pool(pg_server) as (rec, pool):
        async with pool.acquire():  # the first return gets the whole reset
            pass
        async with pool.acquire():  # one connection: this waited for it
            rec.take()
        async with pool.acquire() as conn:
            held = await conn.prepare("SELECT 44")
            name = held.get_name()
            first = conn
        async with pool.acquire() as conn:
            reset = rec.take()
            assert conn is first
            assert [CHECK in q for q in reset] == [True, False]
            assert "RESET ALL" not in reset[0]  # only the prepared statements' part
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_prepared_statements WHERE name = $1", name
                )
                == 0
            )
        del held


async def test_swapping_a_cached_statement_for_ones_own_discards_the_connection(
    pg_server: Any,
) -> None:
    """One cached statement deallocated and one prepared: same count, still caught and discarded."""
    async with recorded_pool(pg_server) as (_, pool):
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT $1::int", 1) == 1
            (cached,) = statements_cached(conn)
            await conn.execute(f'DEALLOCATE "{cached}"')
            await conn.execute("PREPARE mine AS SELECT 42")
            assert statements_cached(conn) == {cached}  # simple queries cache nothing
            first = conn
        async with pool.acquire() as conn:
            assert conn is not first
            assert "mine" not in await statements_on_server(conn)
            assert await conn.fetchval("SELECT $1::int", 2) == 2
        stats = pool.stats()
        assert (stats.connects, stats.closed_broken) == (2, 1)


async def test_reset_sql_follows_the_statement_cache(pg_server: Any) -> None:
    """The reset keeps exactly the statements cached now, also after the cache changed."""
    conn: Any = await asyncpg.connect(pg_server.dsn(), statement_cache_size=2)
    try:

        def cached() -> list[str]:
            return sorted(s.name for s in conn._stmt_cache.iter_statements())

        assert await conn.fetchval("SELECT $1::int", 1) == 1
        before = session_reset_sql(conn)
        assert session_reset_sql(conn) == before
        (one,) = cached()
        assert one in before
        assert await conn.fetchval("SELECT $1::int + 1", 1) == 2
        assert await conn.fetchval("SELECT $1::int + 2", 1) == 3  # evicts the first
        names = cached()
        assert len(names) == 2
        assert one not in names
        after = session_reset_sql(conn)
        assert one not in after
        assert all(name in after for name in names)
        assert "<> 2" in after  # the count follows too
        assert await conn.execute(after) == "SELECT 0"
        await conn.execute("PREPARE mine AS SELECT 1")
        assert await conn.execute(after) == "SELECT 1"
    finally:
        await conn.close()
