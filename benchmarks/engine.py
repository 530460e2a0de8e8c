"""Acquire+release cost of the engine, against an asyncio.Queue floor and anyio.CapacityLimiter.

Run:  python benchmarks/engine.py [--connections 10] [--ops 200000] [--repeat 5] [--json out.json]

Each task loops: take a connection, do one checkpoint of "work" (a
``sleep(0)``, as a query's await would), give it back. Uncontended: tasks =
connections; contended: tasks = 6 x connections. The fake connector opens
connections instantly and the pool is warmed first, so what is measured is
the pool's own bookkeeping. Figures are the best of ``--repeat`` runs (the
least disturbed by the machine), in microseconds of wall time per
acquire+release pair and pairs per second, plus the ratio to the floor.

The floor is the least a pool can do: an ``asyncio.Queue`` of objects
(``await get()`` / ``put_nowait()``), with no timeouts, limits or health.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from elasticpool import Pool
from elasticpool.testing import FakeConnector

Runner = Callable[[int, int, int], Awaitable[float]]


async def _drive(tasks: int, ops: int, body: Callable[[int], Awaitable[None]]) -> float:
    per_task = ops // tasks
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(body, per_task)
    return time.perf_counter() - start


async def queue_floor(conns: int, tasks: int, ops: int) -> float:
    queue: asyncio.Queue[object] = asyncio.Queue()
    for _ in range(conns):
        queue.put_nowait(object())

    async def body(n: int) -> None:
        for _ in range(n):
            c = await queue.get()
            await asyncio.sleep(0)
            queue.put_nowait(c)

    return await _drive(tasks, ops, body)


async def capacity_limiter(conns: int, tasks: int, ops: int) -> float:
    limiter = anyio.CapacityLimiter(conns)
    free = [object() for _ in range(conns)]

    async def body(n: int) -> None:
        for _ in range(n):
            async with limiter:
                c = free.pop()
                await asyncio.sleep(0)
                free.append(c)

    return await _drive(tasks, ops, body)


async def elasticpool_engine(conns: int, tasks: int, ops: int) -> float:
    pool = Pool(FakeConnector(), max_connections=conns, reset="none", ping_after=None)
    async with pool:
        held = [await pool.acquire() for _ in range(conns)]  # warm: all connections open
        for c in held:
            pool.release(c)

        async def body(n: int) -> None:
            acquire = pool.acquire
            for _ in range(n):
                async with acquire():
                    await asyncio.sleep(0)

        elapsed = await _drive(tasks, ops, body)
        stats = pool.stats()
        assert stats.size == conns, stats
        assert stats.timeouts == 0
    return elapsed


CANDIDATES: dict[str, Runner] = {
    "asyncio.Queue (floor)": queue_floor,
    "anyio.CapacityLimiter": capacity_limiter,
    "elasticpool Pool": elasticpool_engine,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    if not (1 <= args.connections <= 1000 and 1 <= args.repeat <= 50 and args.ops <= 10**7):
        parser.error("--connections in [1, 1000], --repeat in [1, 50], --ops <= 10**7")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, factor in (("uncontended", 1), ("contended", 6)):
        tasks = args.connections * factor
        print(f"\n{scenario}: {tasks} tasks over {args.connections} connections, {args.ops} pairs")
        print(f"  {'':24} {'us/pair':>8} {'pairs/s':>10} {'x floor':>8}")
        rows: dict[str, dict[str, float]] = {}
        for name, fn in CANDIDATES.items():
            best = min(
                asyncio.run(fn(args.connections, tasks, args.ops)) for _ in range(args.repeat)
            )
            ops = (args.ops // tasks) * tasks
            rows[name] = {"us_per_pair": best / ops * 1e6, "pairs_per_s": ops / best}
        floor = rows["asyncio.Queue (floor)"]["us_per_pair"]
        for name, row in rows.items():
            row["x_floor"] = row["us_per_pair"] / floor
            print(
                f"  {name:24} {row['us_per_pair']:8.2f} {row['pairs_per_s']:10.0f} "
                f"{row['x_floor']:8.2f}"
            )
        results[scenario] = rows
    target = results["uncontended"]["elasticpool Pool"]["x_floor"]
    print(f"\ntarget: uncontended within 1.5x of the floor -> {target:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
