"""A trio program using the elastic pool, with a connector of its own.

    pip install -e ".[dev]" && python examples/trio_program.py

asyncpg and psycopg's async connections need asyncio, but the pool itself is
anyio and runs on trio. This example writes the few methods of the
``elasticpool.Connector`` protocol for psycopg's *blocking* connection, run in
worker threads with ``anyio.to_thread``, and drives it from trio: nurseries
borrow and query concurrently, cancellation works as trio users expect, and the
pool grows and shrinks as usual. It starts an embedded PostgreSQL (or uses
``--dsn``) and ends by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import psycopg
import trio

from elasticpool import Pool, ResetMode
from elasticpool.embedded import dsn_or_embedded

APP_NAME = "elasticpool-trio"


class ThreadedPsycopgConnector:
    """``elasticpool.Connector`` for blocking ``psycopg.Connection``: I/O in worker threads."""

    def __init__(self, conninfo: str, *, connect_timeout: int = 5) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout  # libpq bounds the blocking connect itself

    async def connect(self) -> psycopg.Connection[Any]:
        return await anyio.to_thread.run_sync(
            lambda: psycopg.Connection.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name=APP_NAME,
                prepare_threshold=None,  # the session reset's DISCARD ALL drops prepared ones
            )
        )

    async def close(self, conn: psycopg.Connection[Any]) -> None:
        await anyio.to_thread.run_sync(conn.close)

    def terminate(self, conn: psycopg.Connection[Any]) -> None:
        conn.close()  # local: libpq sends Terminate and closes the socket

    def is_closed(self, conn: psycopg.Connection[Any]) -> bool:
        return conn.closed or conn.broken

    async def ping(self, conn: psycopg.Connection[Any]) -> None:
        await anyio.to_thread.run_sync(conn.execute, "SELECT 1")

    def needs_reset(self, conn: psycopg.Connection[Any], mode: ResetMode) -> bool:
        if mode == "none":
            return False
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        return mode == "session" or not idle

    async def reset(self, conn: psycopg.Connection[Any], mode: ResetMode) -> None:
        def work() -> None:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            if mode == "session":
                conn.execute("DISCARD ALL")

        await anyio.to_thread.run_sync(work)

    def is_disconnect(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError)

    def transaction(
        self, conn: psycopg.Connection[Any], readonly: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        return _transaction(conn, readonly)


@contextlib.asynccontextmanager
async def _transaction(conn: psycopg.Connection[Any], readonly: bool) -> AsyncIterator[None]:
    await anyio.to_thread.run_sync(conn.execute, "BEGIN READ ONLY" if readonly else "BEGIN")
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(conn.execute, "ROLLBACK")
        raise
    await anyio.to_thread.run_sync(conn.execute, "COMMIT")


async def query(conn: psycopg.Connection[Any], sql: str, *args: Any) -> Any:
    def work() -> Any:
        row = conn.execute(sql, args or None).fetchone()
        return None if row is None else row[0]

    value = await anyio.to_thread.run_sync(work)
    # A thread cannot be interrupted: a cancellation that came meanwhile is
    # delivered as soon as the call returns, before the caller carries on.
    await anyio.lowlevel.checkpoint_if_cancelled()
    return value


async def run(dsn: str, tasks: int) -> dict[str, int]:
    connector = ThreadedPsycopgConnector(dsn)
    async with Pool(connector, max_connections=4, idle_timeout=0.5, name="trio") as pool:
        seen: set[int] = set()

        async def worker() -> None:
            async with pool.transaction() as conn:
                seen.add(await query(conn, "SELECT pg_backend_pid()"))
                await query(conn, "SELECT pg_sleep(0.02)")

        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(worker)
        grown = pool.stats().size
        print(f"{tasks} tasks served by {len(seen)} backends; pool after the burst: {pool}")

        # Cancellation is trio's: a deadline cancels a borrower (here when its
        # blocking query returns) and the pool still gets its connection back.
        with trio.move_on_after(0.05) as scope:
            async with pool.acquire() as conn:
                await query(conn, "SELECT pg_sleep(0.2)")
        cancelled = int(scope.cancelled_caught)

        with trio.fail_after(10):  # idle_timeout is 0.5 s: the pool shrinks by itself
            while pool.stats().size > 0:  # noqa: ASYNC110 - no event for "shrunk"; poll
                await trio.sleep(0.1)
        print(f"after idling: {pool}")
        return {"backends": len(seen), "grown_to": grown, "cancelled": cancelled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="use this server instead of an embedded one")
    parser.add_argument("--tasks", type=int, default=40)
    args = parser.parse_args(argv)
    with dsn_or_embedded(args.dsn) as dsn:  # --dsn, or a throwaway server
        result = trio.run(run, dsn, args.tasks)
    ok = 0 < result["grown_to"] <= 4 and result["cancelled"] == 1
    print("ok" if ok else f"NOT OK: {result}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
