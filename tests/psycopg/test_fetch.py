"""``PsycopgConnector.fetch`` against a real server: placeholders, rows, transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from psycopg.pq import TransactionStatus  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from elasticpool.psycopg import PsycopgConnector  # noqa: E402
from elasticpool.psycopg._connector import fetch, fetch_for  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio only."""
    return "asyncio"


@pytest.fixture
async def connector(pg_dsn: str) -> PsycopgConnector[Any]:
    """A connector with psycopg's defaults: connections not in autocommit mode."""
    return PsycopgConnector(pg_dsn)


@pytest.fixture
async def conn(connector: PsycopgConnector[Any]) -> AsyncIterator[Any]:
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
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
        await admin.execute(f"CREATE TABLE {name} (n int)")
        try:
            yield name
        finally:
            await admin.execute(f"DROP TABLE {name}")


async def rows_seen_elsewhere(pg_dsn: str, table: str) -> list[int]:
    """The rows of ``table`` as another connection sees them (committed ones only)."""
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as other:
        cur = await other.execute(f"SELECT n FROM {table} ORDER BY n")
        return [r[0] for r in await cur.fetchall()]


async def test_each_placeholder_is_sent_as_a_parameter(connector: Any, conn: Any) -> None:
    """``$1..$n`` carry the values as parameters: a quote in a value comes back unchanged."""
    rows = await connector.fetch(conn, "SELECT $1::int + $2::int, $3::text", 1, 2, "it's; --")
    assert rows == [(3, "it's; --")]


async def test_a_literal_percent_is_kept(connector: Any, conn: Any) -> None:
    """A ``%`` in the statement is text, not a psycopg placeholder, with or without arguments."""
    assert await connector.fetch(conn, "SELECT '100%'") == [("100%",)]
    assert await connector.fetch(conn, "SELECT $1::text || '%'", "5") == [("5%",)]


async def test_no_rows_and_no_result_are_both_empty(connector: Any, conn: Any) -> None:
    """A query without rows, and a statement without a result, both give ``[]``."""
    assert await connector.fetch(conn, "SELECT 1 WHERE false") == []
    assert await connector.fetch(conn, "SET application_name = 'ep_fetch'") == []


async def test_rows_are_tuples_whatever_the_row_factory(pg_dsn: str) -> None:
    """A connection made with ``row_factory=dict_row`` still gives tuples of values."""
    connector: Any = PsycopgConnector(pg_dsn, kwargs={"row_factory": dict_row})
    conn = await connector.connect()
    try:
        assert await connector.fetch(conn, "SELECT 1 AS a, 'x' AS b") == [(1, "x")]
    finally:
        await connector.close(conn)


async def test_outside_a_transaction_the_statement_commits_on_its_own(
    connector: Any, conn: Any, table: str, pg_dsn: str
) -> None:
    """On a non-autocommit connection in no transaction, fetch commits and leaves it as it was."""
    assert not conn.autocommit
    await connector.fetch(conn, f"INSERT INTO {table} VALUES ($1)", 1)
    assert await rows_seen_elsewhere(pg_dsn, table) == [1]
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert not conn.autocommit


async def test_inside_a_transaction_the_statement_runs_in_it(
    connector: Any, conn: Any, table: str, pg_dsn: str
) -> None:
    """In ``connector.transaction(conn)`` fetch joins the transaction: a rollback undoes it."""

    async def insert_then_fail() -> None:
        async with connector.transaction(conn):
            await connector.fetch(conn, f"INSERT INTO {table} VALUES ($1)", 2)
            assert conn.info.transaction_status == TransactionStatus.INTRANS
            raise RuntimeError("undo")

    with pytest.raises(RuntimeError, match="undo"):
        await insert_then_fail()
    async with connector.transaction(conn):
        await connector.fetch(conn, f"INSERT INTO {table} VALUES ($1)", 3)
    assert await rows_seen_elsewhere(pg_dsn, table) == [3]
    assert not conn.autocommit


async def test_bad_placeholders_send_nothing(connector: Any, conn: Any) -> None:
    """Placeholders other than ``$1..$n`` once each are refused before anything is sent."""
    with pytest.raises(ValueError, match="placeholders must be"):
        await connector.fetch(conn, "SELECT $1, $1", 1)
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert not conn.autocommit


async def test_a_cancelled_fetch_raises_the_cancellation(connector: Any, conn: Any) -> None:
    """Cancelled mid-query, fetch lets the cancellation through (no error from restoring)."""
    with anyio.move_on_after(0.3) as scope:
        await connector.fetch(conn, "SELECT pg_sleep(30)")
    assert scope.cancelled_caught


async def test_fetch_for_answers_for_psycopg_connections_only(conn: Any) -> None:
    """The adapter claims its own connections (for callers without a connector), nothing else."""
    assert fetch_for(conn) is fetch
    assert fetch_for(object()) is None
