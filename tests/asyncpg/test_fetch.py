"""``AsyncpgConnector.fetch`` against a real server: placeholders, rows, transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")

from elasticpool.asyncpg import AsyncpgConnector  # noqa: E402
from elasticpool.asyncpg._connector import fetch, fetch_for  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


class MyRecord(asyncpg.Record):
    """A ``record_class`` of the user's."""


@pytest.fixture
async def connector(pg_dsn: str) -> AsyncpgConnector:
    """A connector whose connections make :class:`MyRecord` rows."""
    return AsyncpgConnector(pg_dsn, record_class=MyRecord)


@pytest.fixture
async def conn(connector: AsyncpgConnector) -> AsyncIterator[Any]:
    """One connection of ``connector``, closed afterwards."""
    c = await connector.connect()
    try:
        yield c
    finally:
        await connector.close(c)


@pytest.fixture
async def table(pg_dsn: str) -> AsyncIterator[str]:
    """A table of one int column ``n`` no other test uses, dropped afterwards."""
    name = f"ep_fetch_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f"CREATE TABLE {name} (n int)")
        yield name
        await admin.execute(f"DROP TABLE {name}")
    finally:
        await admin.close()


async def rows_seen_elsewhere(pg_dsn: str, table: str) -> list[int]:
    """The rows of ``table`` as another connection sees them (committed ones only)."""
    other = await asyncpg.connect(pg_dsn)
    try:
        return [r[0] for r in await other.fetch(f"SELECT n FROM {table} ORDER BY n")]
    finally:
        await other.close()


async def test_each_placeholder_is_sent_as_a_parameter(connector: Any, conn: Any) -> None:
    """``$1..$n`` carry the values as parameters; rows are plain tuples, not records."""
    rows = await connector.fetch(conn, "SELECT $1::int + $2::int, $3::text", 1, 2, "it's; --")
    assert rows == [(3, "it's; --")]
    assert type(rows[0]) is tuple


async def test_no_rows_and_no_result_are_both_empty(connector: Any, conn: Any) -> None:
    """A query without rows, and a statement without a result, both give ``[]``."""
    assert await connector.fetch(conn, "SELECT 1 WHERE false") == []
    assert await connector.fetch(conn, "SET application_name = 'ep_fetch'") == []


async def test_outside_a_transaction_the_statement_commits_on_its_own(
    connector: Any, conn: Any, table: str, pg_dsn: str
) -> None:
    """In no transaction, the statement is committed when fetch returns."""
    await connector.fetch(conn, f"INSERT INTO {table} VALUES ($1)", 1)
    assert await rows_seen_elsewhere(pg_dsn, table) == [1]
    assert not conn.is_in_transaction()


async def test_inside_a_transaction_the_statement_runs_in_it(
    connector: Any, conn: Any, table: str, pg_dsn: str
) -> None:
    """In ``connector.transaction(conn)`` fetch joins the transaction: a rollback undoes it."""

    async def insert_then_fail() -> None:
        async with connector.transaction(conn):
            await connector.fetch(conn, f"INSERT INTO {table} VALUES ($1)", 2)
            assert conn.is_in_transaction()
            raise RuntimeError("undo")

    with pytest.raises(RuntimeError, match="undo"):
        await insert_then_fail()
    async with connector.transaction(conn):
        await connector.fetch(conn, f"INSERT INTO {table} VALUES ($1)", 3)
    assert await rows_seen_elsewhere(pg_dsn, table) == [3]


async def test_placeholders_follow_the_rule_of_every_driver(connector: Any, conn: Any) -> None:
    """asyncpg would take ``$1`` twice; fetch refuses it, as psycopg's must, sending nothing."""
    with pytest.raises(ValueError, match="placeholders must be"):
        await connector.fetch(conn, "SELECT $1::int, $1::int", 1)
    assert await connector.fetch(conn, "SELECT 1") == [(1,)]


async def test_fetch_for_answers_for_asyncpg_connections_and_proxies(
    conn: Any, pg_dsn: str
) -> None:
    """The adapter claims its connections and asyncpg pool proxies, nothing else."""
    assert fetch_for(conn) is fetch
    assert fetch_for(object()) is None
    async with (
        asyncpg.create_pool(pg_dsn, min_size=0, max_size=1) as pool,
        pool.acquire() as proxy,
    ):
        assert fetch_for(proxy) is fetch
        assert await fetch(proxy, "SELECT $1::int", 7) == [(7,)]
