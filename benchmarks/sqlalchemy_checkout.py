"""Per-checkout cost of a SQLAlchemy engine on ElasticPool against SQLAlchemy's own pool.

Run:  python benchmarks/sqlalchemy_checkout.py [--dsn postgresql://...] [--checkouts 5000]
      [--rounds 7] [--threads 1] [--json out.json]

Side by side in one run, on one server (an embedded one unless ``--dsn``):

* ``sync``: ``postgresql+psycopg`` engines, :class:`~sqlalchemy.pool.QueuePool`
  against :class:`~elasticpool.sqlalchemy.ElasticPool`, each with the same limit
  (``pool_size=5, max_overflow=10``); ``--threads`` threads each loop
  ``with engine.connect() as c: c.execute(text("SELECT 1"))``;
* ``sync, checkout only``: the same, without the query (``engine.connect()``
  and close), the pool's share of a checkout made as large as it can be;
* ``async``: ``postgresql+asyncpg`` engines, ``AsyncAdaptedQueuePool`` against
  ElasticPool, one task looping ``async with engine.connect() as c: await
  c.execute(text("SELECT 1"))``.

Each engine is warmed first (its connections open, SQLAlchemy's connect-time
setup done). Rounds alternate between the two pools so that both see the same
machine; the figure is the median round, in microseconds per checkout, and the
ratio ElasticPool / SQLAlchemy's pool (target: at most 1.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from elasticpool.embedded import dsn_or_embedded
from elasticpool.sqlalchemy import create_async_engine, create_engine

LIMIT = {"pool_size": 5, "max_overflow": 10}


def sync_round(engine: sqlalchemy.Engine, threads: int, checkouts: int, query: bool) -> float:
    """Seconds for ``threads`` threads to do ``checkouts`` checkouts between them."""
    per = checkouts // threads
    stmt = text("SELECT 1")
    go = threading.Barrier(threads + 1)

    def work() -> None:
        go.wait()
        connect = engine.connect
        for _ in range(per):
            with connect() as conn:
                if query:
                    conn.execute(stmt)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    go.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - start


async def async_round(engine: AsyncEngine, checkouts: int) -> float:
    stmt = text("SELECT 1")
    start = time.perf_counter()
    for _ in range(checkouts):
        async with engine.connect() as conn:
            await conn.execute(stmt)
    return time.perf_counter() - start


def compare(
    label: str, rounds: int, checkouts: int, run: Callable[[str], float]
) -> dict[str, float]:
    times: dict[str, list[float]] = {"sqlalchemy": [], "elasticpool": []}
    for _ in range(rounds):
        for which, series in times.items():  # alternate: both see the same machine
            series.append(run(which) / checkouts * 1e6)
    result = {which: statistics.median(t) for which, t in times.items()}
    result["ratio"] = result["elasticpool"] / result["sqlalchemy"]
    print(
        f"  {label:28} {result['sqlalchemy']:9.1f} {result['elasticpool']:11.1f} "
        f"{result['ratio']:7.3f}"
    )
    return result


async def async_compare(url: str, rounds: int, checkouts: int) -> dict[str, float]:
    engines: dict[str, AsyncEngine] = {
        "sqlalchemy": sa_create_async_engine(url, **LIMIT),
        "elasticpool": create_async_engine(url, **LIMIT),
    }
    try:
        for engine in engines.values():
            await async_round(engine, 200)  # warm
        times: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(rounds):
            for which, engine in engines.items():
                times[which].append(await async_round(engine, checkouts) / checkouts * 1e6)
        result = {which: statistics.median(t) for which, t in times.items()}
        result["ratio"] = result["elasticpool"] / result["sqlalchemy"]
        print(
            f"  {'async (asyncpg), SELECT 1':28} {result['sqlalchemy']:9.1f} "
            f"{result['elasticpool']:11.1f} {result['ratio']:7.3f}"
        )
        return result
    finally:
        for engine in engines.values():
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="a postgresql:// URL (default: embedded)")
    parser.add_argument("--checkouts", type=int, default=5000, help="per round and pool")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 50 and 1 <= args.threads <= 64 and args.checkouts <= 10**6):
        parser.error("--rounds in [1, 50], --threads in [1, 64], --checkouts <= 10**6")
    with dsn_or_embedded(args.dsn) as dsn:
        base = make_url(dsn)
        sync_url = base.set(drivername="postgresql+psycopg")
        async_url = base.set(drivername="postgresql+asyncpg", query={})
        engines = {
            "sqlalchemy": sqlalchemy.create_engine(sync_url, **LIMIT),
            "elasticpool": create_engine(sync_url, **LIMIT),
        }
        print(
            f"{args.rounds} rounds of {args.checkouts} checkouts, {args.threads} thread(s); "
            "median microseconds per checkout"
        )
        print(f"  {'':28} {'sqlalchemy':>9} {'elasticpool':>11} {'ratio':>7}")
        results: dict[str, Any] = {}
        try:
            for engine in engines.values():
                sync_round(engine, args.threads, 200, query=True)  # warm
            for label, query in (
                ("sync (psycopg), SELECT 1", True),
                ("sync, checkout only", False),
            ):
                results[label] = compare(
                    label,
                    args.rounds,
                    args.checkouts,
                    lambda which, q=query: sync_round(  # type: ignore[misc]
                        engines[which], args.threads, args.checkouts, q
                    ),
                )
        finally:
            for engine in engines.values():
                engine.dispose()
        results["async (asyncpg), SELECT 1"] = asyncio.run(
            async_compare(
                async_url.render_as_string(hide_password=False), args.rounds, args.checkouts
            )
        )
    ratio = results["sync (psycopg), SELECT 1"]["ratio"]
    print(
        f"\ntarget: an engine on ElasticPool within 1.1x SQLAlchemy's per checkout -> {ratio:.3f}x"
    )
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], **results}, indent=2))


if __name__ == "__main__":
    main()
