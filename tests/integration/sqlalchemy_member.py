"""One fleet member as an OS process: an engine on ElasticPool with a PostgresMembership.

    python tests/integration/sqlalchemy_member.py --url postgresql://... --mode sync \\
        --table T --name P --total 6 --workers 4 --seconds 4

Runs a bounded load (``--workers`` threads or tasks, each checking out a
connection for a ``pg_sleep`` of ``--query-ms`` then pausing ``--think-ms``)
for ``--seconds``, disposes of the engine and prints one JSON line: queries
done, errors, the pool's limit seen at most. ``--mode sync`` is a
``postgresql+psycopg`` engine in threads, ``async`` a ``postgresql+asyncpg``
one in asyncio tasks: both are members of the same fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from elasticpool.fleet import PostgresMembership
from elasticpool.sqlalchemy import create_async_engine, create_engine


def options(args: argparse.Namespace) -> dict[str, Any]:
    def membership() -> PostgresMembership:
        return PostgresMembership(
            table=args.table, heartbeat_interval=0.2, application_name="ep-sqla-fleet"
        )

    return {
        "total_max_connections": args.total,
        "membership": membership,
        "name": args.name,
        "pool_timeout": 30,
    }


def run_sync(args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(make_url(args.url).set(drivername="postgresql+psycopg"), **options(args))
    stmt = text("SELECT pg_sleep(:s)")
    done, errors, peak = [0], [], [0]
    deadline = time.monotonic() + args.seconds

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                with engine.connect() as conn:
                    conn.execute(stmt, {"s": args.query_ms / 1000})
                done[0] += 1
                peak[0] = max(peak[0], engine.pool.size())  # type: ignore[attr-defined]
            except Exception as e:
                errors.append(repr(e))
            time.sleep(args.think_ms / 1000)

    threads = [threading.Thread(target=work) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    return {"queries": done[0], "errors": errors[:3], "peak_limit": peak[0]}


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    url = make_url(args.url).set(drivername="postgresql+asyncpg", query={})
    engine = create_async_engine(url, **options(args))
    stmt = text("SELECT pg_sleep(:s)")
    done, errors, peak = [0], [], [0]
    deadline = time.monotonic() + args.seconds

    async def work() -> None:
        while time.monotonic() < deadline:
            try:
                async with engine.connect() as conn:
                    await conn.execute(stmt, {"s": args.query_ms / 1000})
                done[0] += 1
                peak[0] = max(peak[0], engine.sync_engine.pool.size())  # type: ignore[attr-defined]
            except Exception as e:
                errors.append(repr(e))
            await asyncio.sleep(args.think_ms / 1000)

    await asyncio.gather(*(work() for _ in range(args.workers)))
    await engine.dispose()
    return {"queries": done[0], "errors": errors[:3], "peak_limit": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=("sync", "async"), required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--total", type=int, default=6)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--query-ms", type=float, default=20.0)
    parser.add_argument("--think-ms", type=float, default=5.0)
    args = parser.parse_args()
    if not (0 < args.seconds <= 60 and 1 <= args.workers <= 64):
        parser.error("--seconds in (0, 60], --workers in [1, 64]")
    result = run_sync(args) if args.mode == "sync" else asyncio.run(run_async(args))
    print(json.dumps({"mode": args.mode, **result}), flush=True)


if __name__ == "__main__":
    main()
