"""One member of a fleet, as an OS process: the runner behind tests/fleet/test_fleet_postgres.py.

    ELASTICPOOL_FLEET_DSN=postgresql://... python tests/fleet/fleet_member.py --table T --name P \\
        --total 10 --workers 4 --query-ms 20 --think-ms 30 --max-seconds 20

It opens a :class:`~elasticpool.Pool` (asyncpg) with a
:class:`~elasticpool.fleet.PostgresMembership`, runs a bounded load (``--workers``
tasks, each borrowing a connection for about ``--query-ms`` of ``pg_sleep`` and
then pausing about ``--think-ms``; ``--think-ms 0`` holds connections nearly
all the time), and prints one JSON object per line on stdout:

* ``{"event": "status", ...}`` every ``--status-ms``: its limit, share, fleet
  total, pool size, members seen, health (``t`` is ``time.monotonic()``, which
  is the same clock in every process on Linux);
* ``{"event": "exit", ...}`` once, when it stops: counts, acquire waits, and the
  backend PIDs of the connections it opened *outside its pool's slots* (the
  membership's extra coordination connections), which a parent needs to check
  the overshoot bound.

Commands on stdin, one per line: ``stop`` (stop the load, close the pool,
exit), ``total N`` (``pool.set_fleet_total(N)``), ``workers N`` (change the
load). It stops by itself after ``--max-seconds``, or when stdin closes (its
parent is gone), so it never outlives the test that started it.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0], and it holds packages
# named after the drivers (tests/asyncpg, tests/psycopg) that would shadow them.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import json
import os
import random
import runpy
import time
from typing import Any

# Run as a script, this file's folder comes first on sys.path, where the test
# packages named after the drivers (tests/asyncpg, tests/psycopg) would shadow them.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import anyio  # noqa: E402
import anyio.abc  # noqa: E402
import asyncpg  # noqa: E402

from elasticpool import Pool  # noqa: E402
from elasticpool.fleet import PostgresMembership  # noqa: E402

DSN_ENV = "ELASTICPOOL_FLEET_DSN"

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet.py"

TrackingConnector = runpy.run_path(str(BENCHMARK), run_name="elasticpool_bench_fleet")[
    "TrackingConnector"
]
"""The connector of ``benchmarks/fleet.py``'s members: it records the PIDs of extra connections."""


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def status(pool: Pool[Any]) -> dict[str, Any]:
    f = pool.fleet()
    s = pool.stats()
    return {
        "instance": f.instance,
        "limit": f.limit,
        "share": f.share,
        "total": f.fleet_total,
        "size": s.size,
        "in_use": s.in_use,
        "waiting": s.waiting,
        "members": len(f.members),
        "healthy": f.healthy,
        "active": f.active,
    }


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args: argparse.Namespace) -> None:
    connector = TrackingConnector(
        os.environ[DSN_ENV], server_settings={"application_name": args.app}
    )
    check = {}  # passed only when given, so the runner also drives older versions
    if args.check_interval is not None:
        check["client_connection_check_interval"] = args.check_interval
    membership = PostgresMembership(
        table=args.table,
        heartbeat_interval=args.interval,
        heartbeat_timeout=args.heartbeat_timeout,
        lease_ttl=args.ttl,
        **check,
    )
    pool: Pool[asyncpg.Connection] = Pool(
        connector,
        total_max_connections=args.total,
        membership=membership,
        name=args.name,
        limit_mode=args.limit_mode,
        pool_timeout=args.pool_timeout,
    )
    connector.attach(pool)
    waits: list[float] = []
    timeouts = 0
    target = args.workers
    stopping = anyio.Event()
    rng = random.Random()

    async def worker(number: int) -> None:
        nonlocal timeouts
        while not stopping.is_set() and number < target:
            started = anyio.current_time()
            try:
                async with pool.acquire() as conn:
                    waits.append(anyio.current_time() - started)
                    query = args.query_ms * rng.uniform(0.5, 1.5) / 1000
                    await conn.execute(f"SELECT pg_sleep({query:.4f})")
            except TimeoutError:
                timeouts += 1
            if args.think_ms:
                await anyio.sleep(rng.expovariate(1000 / args.think_ms))

    async def commands(load: anyio.abc.TaskGroup) -> None:
        nonlocal target
        buffer = b""
        fd = sys.stdin.fileno()
        while True:
            await anyio.wait_readable(fd)
            chunk = os.read(fd, 4096)
            if not chunk:  # the parent is gone
                stopping.set()
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                word, _, arg = line.decode().strip().partition(" ")
                if word == "stop":
                    stopping.set()
                    return
                if word == "total":
                    await pool.set_fleet_total(int(arg) if arg != "none" else None)
                    emit("total-set", total=int(arg) if arg != "none" else None)
                elif word == "workers":
                    old, target = target, int(arg)
                    for n in range(old, target):
                        load.start_soon(worker, n)

    async def reporter() -> None:
        while True:
            emit("status", **status(pool))
            await anyio.sleep(args.status_ms / 1000)

    async with pool:
        emit("joined", **status(pool))
        with anyio.move_on_after(args.max_seconds):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reporter)
                async with anyio.create_task_group() as load:
                    tg.start_soon(commands, load)
                    for n in range(target):
                        load.start_soon(worker, n)
                    await stopping.wait()
                    load.cancel_scope.deadline = anyio.current_time() + 2.0  # queries finish
                tg.cancel_scope.cancel()
        stopping.set()
        stats = pool.stats()
    emit(
        "exit",
        instance=membership.instance_id,
        extra_pids=sorted(connector.extra_pids),
        extra_windows=connector.extra_windows,
        acquires=stats.acquires,
        timeouts=timeouts,
        p50_wait=percentile(waits, 0.50),
        p99_wait=percentile(waits, 0.99),
        max_wait=max(waits, default=None),
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True)
    p.add_argument("--name", required=True, help="pool name (the fleet)")
    p.add_argument("--app", default=None, help="application_name (default: the pool name)")
    p.add_argument("--total", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--ttl", type=float, default=None)
    p.add_argument("--heartbeat-timeout", type=float, default=None)
    p.add_argument(
        "--check-interval", type=float, default=None, help="client_connection_check_interval"
    )
    p.add_argument("--limit-mode", choices=("strict", "soft"), default="strict")
    p.add_argument("--pool-timeout", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--query-ms", type=float, default=20.0)
    p.add_argument("--think-ms", type=float, default=0.0)
    p.add_argument("--status-ms", type=float, default=50.0)
    p.add_argument("--max-seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    if args.app is None:
        args.app = args.name
    return args


if __name__ == "__main__":
    anyio.run(main, parse())
