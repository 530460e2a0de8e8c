"""The psycopg_pool face where psycopg_pool's own tests found it different (issue 16).

Each test is a behaviour existing code written for psycopg_pool can notice:
connections used in turn, the ``reset`` callback done when ``connection()``
returns, psycopg_pool's warnings (texts, count, logger) for connections given
back in a bad state, a connection given back to a closed pool closed at once,
psycopg_pool's connect-failure warnings, and an idle connection lent without
yielding to the event loop.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from typing import Any

import anyio
import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from psycopg.pq import TransactionStatus  # noqa: E402

from elasticpool.psycopg import AsyncConnectionPool  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio here (psycopg_pool's face is asyncio's)."""
    return "asyncio"


def open_pool(dsn: str, **kwargs: Any) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(dsn, open=False, **kwargs)


async def test_connections_are_used_in_turn_when_the_pool_cannot_shrink(pg_server: Any) -> None:
    """min_size == max_size (psycopg_pool's default): each connection in turn, as psycopg_pool."""
    async with open_pool(pg_server.dsn(), min_size=4) as pool:
        await pool.wait()
        used: Counter[int] = Counter()
        for _ in range(8):
            async with pool.connection() as conn:
                used[id(conn)] += 1
    assert sorted(used.values()) == [2, 2, 2, 2]


async def test_the_most_recent_is_reused_when_the_pool_can_shrink(pg_server: Any) -> None:
    """With room to shrink, the most recently used one: the others sit idle and age out."""
    async with open_pool(pg_server.dsn(), min_size=2, max_size=4) as pool:
        await pool.wait()
        used: Counter[int] = Counter()
        for _ in range(6):
            async with pool.connection() as conn:
                used[id(conn)] += 1
    assert sorted(used.values()) == [6]


async def test_the_reset_callback_is_done_when_the_block_returns(pg_server: Any) -> None:
    """``reset=`` has run (once per return) by the time ``connection()``'s block is left."""
    calls: list[int] = []

    async def reset(conn: Any) -> None:
        calls.append(conn.info.backend_pid)
        async with conn.transaction():  # a reset must leave the connection idle
            await conn.execute("SET timezone TO 'UTC'")

    async with open_pool(pg_server.dsn(), min_size=1, reset=reset) as pool:
        async with pool.connection() as conn:
            pid = conn.info.backend_pid
            await conn.execute("SET timezone TO '+02:00'")
        assert calls == [pid]
        async with pool.connection() as conn:
            cur = await conn.execute("SHOW timezone")
            assert await cur.fetchone() == ("UTC",)
        assert calls == [pid, pid]


async def test_a_connection_given_back_mid_query_is_closed_with_psycopg_pools_warnings(
    pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Given back ACTIVE: "closing returned connection", then "discarding closed connection"."""
    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    async with open_pool(pg_server.dsn(), min_size=1) as pool:
        conn = await pool.getconn()
        pid = conn.info.backend_pid
        conn.pgconn.exec_(b"copy (select * from generate_series(1, 10)) to stdout")
        assert conn.info.transaction_status == TransactionStatus.ACTIVE
        await pool.putconn(conn)
        assert conn.closed
        async with pool.connection() as fresh:
            assert fresh.info.backend_pid != pid
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in records] == ["psycopg.pool", "psycopg.pool"]
    # .message: the text as it was logged (the connection's repr then), as psycopg_pool's test
    assert records[0].message.startswith("closing returned connection")
    assert "ACTIVE" in records[0].message
    assert records[1].message.startswith("discarding closed connection")
    assert "BAD" in records[1].message


async def test_a_failed_rollback_is_warned_and_the_connection_discarded(
    pg_server: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INERROR given back, its rollback fails: three psycopg_pool warnings, a new connection."""
    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    async with open_pool(pg_server.dsn(), min_size=1) as pool:
        conn = await pool.getconn()
        rollback = conn.rollback

        async def failing_rollback() -> None:
            conn.pgconn.finish()
            await rollback()

        monkeypatch.setattr(conn, "rollback", failing_rollback)
        pid = conn.info.backend_pid
        with pytest.raises(psycopg.ProgrammingError):
            await conn.execute("wat")
        await pool.putconn(conn)
        async with pool.connection() as fresh:
            assert fresh.info.backend_pid != pid
    messages = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 3, messages
    assert messages[0].startswith("rolling back returned connection")
    assert "INERROR" in messages[0]
    assert messages[1].startswith("rollback failed: OperationalError")
    assert messages[2].startswith("discarding closed connection")
    assert "BAD" in messages[2]


async def test_a_connection_given_back_to_a_closed_pool_is_closed_at_once(pg_server: Any) -> None:
    """As psycopg_pool: the block's connection is closed when it comes back to a closed pool."""
    pool = open_pool(pg_server.dsn(), min_size=1)
    await pool.open()
    async with pool.connection() as conn:
        await pool.close()
        assert not conn.closed  # still the borrower's until it gives it back
    assert conn.closed


async def test_failed_connects_are_warned_as_psycopg_pool_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every failed connect: "error connecting in"; past reconnect_timeout, once, its give-up."""
    caplog.set_level(logging.WARNING, logger="psycopg.pool")

    async def no_conninfo() -> str:
        raise RuntimeError("cannot build conninfo")

    failed = anyio.Event()

    def reconnect_failed(pool: Any) -> None:
        failed.set()

    pool = open_pool(
        no_conninfo,  # type: ignore[arg-type]
        min_size=1,
        reconnect_timeout=0.2,
        reconnect_failed=reconnect_failed,
        backoff_initial=0.05,
        backoff_max=0.1,
    )
    await pool.open()
    try:
        with anyio.fail_after(10):
            await failed.wait()
    finally:
        await pool.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert messages[0].startswith(f"error connecting in {pool.name!r}: cannot build conninfo")
    give_up = [m for m in messages if m.startswith("reconnection attempt in pool")]
    assert give_up == [f"reconnection attempt in pool {pool.name!r} failed after 0.2 sec"]


async def test_an_idle_connection_is_lent_without_yielding(pg_server: Any) -> None:
    """As psycopg_pool: getconn() of an idle connection lets no other task run first."""
    async with open_pool(pg_server.dsn(), min_size=1) as pool:
        await pool.wait()
        ran: list[str] = []

        async def other() -> None:
            ran.append("other")

        async with anyio.create_task_group() as tg:
            tg.start_soon(other)  # runs at the first yield to the loop
            conn = await pool.getconn()
            assert ran == []
            await pool.putconn(conn)
            assert ran == []
        assert ran == ["other"]


@pytest.mark.parametrize(("max_lifetime", "max_idle"), [(0.2, 600.0), (60.0, 60.0)])
def test_max_lifetime_not_above_max_idle_is_accepted_quietly(
    max_lifetime: float, max_idle: float
) -> None:
    """psycopg_pool accepts max_lifetime <= max_idle silently: no ElasticPoolWarning either.

    The idle timeout could never fire first; elasticpool's settings warn about
    that (an error under ``-W error``, as psycopg's own tests run), so the
    face drops it itself.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool = open_pool("dbname=x", max_lifetime=max_lifetime, max_idle=max_idle)
    settings = pool.elastic.settings
    assert (settings.connection_lifetime, settings.idle_timeout) == (max_lifetime, None)
