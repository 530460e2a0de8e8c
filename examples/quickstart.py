"""Quickstart: an elastic pool on a throwaway PostgreSQL, grown by a burst and shrunk by idleness.

    pip install -e ".[asyncpg,embedded]" && python examples/quickstart.py

With ``--dsn postgresql://...`` it uses that server instead of starting one.
It prints the pool and the server's own count of its backends as the burst
comes and goes, and ends by itself in a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from elasticpool import Pool
from elasticpool.asyncpg import AsyncpgConnector
from elasticpool.embedded import dsn_or_embedded

APP = "elasticpool-quickstart"


async def backends(admin: asyncpg.Connection) -> int:
    n: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APP
    )
    return n


async def main(dsn: str) -> None:
    connector = AsyncpgConnector(dsn, server_settings={"application_name": APP})
    admin = await asyncpg.connect(dsn)
    try:
        async with Pool(connector, max_connections=10, idle_timeout=1.0, name="quickstart") as pool:
            print(f"opened:        {pool}  server backends: {await backends(admin)}")

            async def request(i: int) -> None:
                async with pool.acquire() as conn:  # asyncpg's own Connection
                    await conn.execute("SELECT pg_sleep(0.05)")

            for wave in range(3):
                await asyncio.gather(*(request(i) for i in range(40)))
                print(f"after burst {wave + 1}: {pool}  server backends: {await backends(admin)}")
            async with pool.acquire() as conn:
                print("one query:    ", await conn.fetchval("SELECT version()"))
            for _ in range(30):  # at most 3 s: idle connections time out after 1 s
                await asyncio.sleep(0.1)
                if pool.stats().size == 0:
                    break
            print(f"after idling:  {pool}  server backends: {await backends(admin)}")
            stats = pool.stats()
            print(
                f"stats: {stats.acquires} acquires, {stats.connects} connects, "
                f"{stats.closed_idle} closed idle, {stats.timeouts} timeouts"
            )
    finally:
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="use this server instead of an embedded one")
    args = parser.parse_args()
    with dsn_or_embedded(args.dsn) as dsn:  # --dsn, or a throwaway server
        asyncio.run(main(dsn))
