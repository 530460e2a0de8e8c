"""One member of a mixed fleet, as an OS process: the runner behind tests/sync/test_sync_fleet.py.

    ELASTICPOOL_FLEET_DSN=postgresql://... python tests/sync/fleet_member_mixed.py \\
        --kind sync --table T --name P --total 6 --workers 4 --max-seconds 30

``--kind`` is the kind of member: ``sync`` (an :class:`elasticpool.SyncPool`
of psycopg's sync connections, borrowed by threads), ``face`` (the
:class:`elasticpool.psycopg.ConnectionPool` drop-in, threads too) or
``async`` (an :class:`elasticpool.Pool` of psycopg's async connections,
borrowed by asyncio tasks). Every kind runs the same
:class:`~elasticpool.PostgresMembership` under the same pool name, so they
are members of one fleet. Each worker borrows a connection for about
``--query-ms`` of ``pg_sleep``, then pauses about ``--think-ms``.

It prints one JSON object per line on stdout: ``{"event": "joined"}`` once
open, ``{"event": "status", ...}`` every ``--status-ms``, and
``{"event": "exit", ...}`` once, with its counts and the windows
``(pid, opened, done)`` (on ``time.monotonic()``, the same clock in every
process on Linux) during which a connection of its heartbeats was open
outside its pool's slots. It stops on ``stop`` on stdin, when stdin closes,
or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import select
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from elasticpool import Pool, PostgresMembership, SyncPool
from elasticpool.psycopg import ConnectionPool, PsycopgConnector, SyncPsycopgConnector

DSN_ENV = "ELASTICPOOL_FLEET_DSN"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acquires = 0
        self.timeouts = 0
        self.windows: list[tuple[int, float, float]] = []

    def extra(self, pid: int, opened: float) -> None:
        with self.lock:
            self.windows.append((pid, opened, time.monotonic()))


def status(pool: Any) -> dict[str, Any]:
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
    }


def track_sync_extras(pool: SyncPool[Any], tally: Tally) -> None:
    """Record each heartbeat connection opened outside the pool's slots (its backend PID)."""
    port = pool._port
    assert port is not None
    original = port._coordination

    @contextlib.asynccontextmanager
    async def tracked(wait_own: float, own: bool) -> AsyncIterator[Any]:
        opened = time.monotonic()
        pid = None
        try:
            async with original(wait_own, own) as co:
                if co.extra:
                    pid = co.conn.raw.info.backend_pid
                yield co
        finally:
            if pid is not None:
                tally.extra(pid, opened)

    port._coordination = tracked  # type: ignore[method-assign]


def track_async_extras(pool: Pool[Any], tally: Tally) -> None:
    original = pool._coordination

    @contextlib.asynccontextmanager
    async def tracked(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        opened = time.monotonic()
        pid = None
        try:
            async with original(*args, **kwargs) as co:
                if co.extra:
                    pid = co.conn.info.backend_pid
                yield co
        finally:
            if pid is not None:
                tally.extra(pid, opened)

    pool._coordination = tracked  # type: ignore[method-assign]


def membership(args: argparse.Namespace) -> PostgresMembership:
    return PostgresMembership(
        table=args.table,
        heartbeat_interval=args.interval,
        lease_ttl=args.ttl,
        heartbeat_timeout=args.heartbeat_timeout,
    )


def wait_for_stop(args: argparse.Namespace, stopping: threading.Event) -> None:
    """Until ``stop`` on stdin, end of stdin, or ``--max-seconds``; report status meanwhile."""
    deadline = time.monotonic() + args.max_seconds
    fd = sys.stdin.fileno()
    buffer = b""
    while not stopping.is_set() and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], args.status_ms / 1000)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk or b"stop" in buffer + chunk:
                break
            buffer += chunk
    stopping.set()


@contextlib.contextmanager
def threaded_pool(args: argparse.Namespace, tally: Tally) -> Iterator[Any]:
    dsn = os.environ[DSN_ENV]
    if args.kind == "face":
        face: ConnectionPool[Any] = ConnectionPool(
            dsn,
            kwargs={"application_name": args.name},
            min_size=1,  # no max_size: the fleet's total sets the limit
            open=False,
            name=args.name,
            timeout=args.pool_timeout,
            total_max_connections=args.total,
            membership=membership(args),
            reset_mode="session",
        )
        track_sync_extras(face.elastic, tally)
        with face:
            yield face
        return
    connector: SyncPsycopgConnector[Any] = SyncPsycopgConnector(
        dsn, kwargs={"application_name": args.name}
    )
    pool: SyncPool[Any] = SyncPool(
        connector,
        membership=membership(args),
        name=args.name,
        total_max_connections=args.total,
        pool_timeout=args.pool_timeout,
    )
    track_sync_extras(pool, tally)
    with pool:
        yield pool


def run_threads(args: argparse.Namespace) -> None:
    tally = Tally()
    stopping = threading.Event()
    with threaded_pool(args, tally) as pool:
        elastic = pool.elastic if args.kind == "face" else pool
        emit("joined", **status(elastic))

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            while not stopping.is_set():
                try:
                    with pool.connection(timeout=args.pool_timeout) as conn:
                        with tally.lock:
                            tally.acquires += 1
                        query = args.query_ms * rng.uniform(0.5, 1.5) / 1000
                        conn.execute("SELECT pg_sleep(%s)", [query])
                        conn.commit()
                except TimeoutError:
                    with tally.lock:
                        tally.timeouts += 1
                if args.think_ms:
                    time.sleep(rng.expovariate(1000 / args.think_ms))

        def reporter() -> None:
            while not stopping.wait(args.status_ms / 1000):
                emit("status", **status(elastic))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.workers)]
        threads.append(threading.Thread(target=reporter))
        for thread in threads:
            thread.start()
        wait_for_stop(args, stopping)
        for thread in threads:
            thread.join(10)
    emit("exit", acquires=tally.acquires, timeouts=tally.timeouts, extra_windows=tally.windows)


async def run_async(args: argparse.Namespace) -> None:
    tally = Tally()
    connector: PsycopgConnector[Any] = PsycopgConnector(
        os.environ[DSN_ENV], kwargs={"application_name": args.name}
    )
    pool: Pool[Any] = Pool(
        connector,
        membership=membership(args),
        name=args.name,
        total_max_connections=args.total,
        pool_timeout=args.pool_timeout,
    )
    track_async_extras(pool, tally)
    stopping = threading.Event()
    async with pool:
        emit("joined", **status(pool))

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while not stopping.is_set():
                try:
                    async with pool.acquire() as conn:
                        tally.acquires += 1
                        query = args.query_ms * rng.uniform(0.5, 1.5) / 1000
                        await conn.execute("SELECT pg_sleep(%s)", [query])
                        await conn.commit()
                except TimeoutError:
                    tally.timeouts += 1
                if args.think_ms:
                    await asyncio.sleep(rng.expovariate(1000 / args.think_ms))

        async def reporter() -> None:
            while not stopping.is_set():
                emit("status", **status(pool))
                await asyncio.sleep(args.status_ms / 1000)

        tasks = [asyncio.create_task(worker(n)) for n in range(args.workers)]
        tasks.append(asyncio.create_task(reporter()))
        await asyncio.to_thread(wait_for_stop, args, stopping)
        await asyncio.wait(tasks, timeout=10)
    emit("exit", acquires=tally.acquires, timeouts=tally.timeouts, extra_windows=tally.windows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--kind", choices=("sync", "face", "async"), required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--name", required=True, help="pool name (the fleet), also application_name")
    p.add_argument("--total", type=int, default=6)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--ttl", type=float, default=1.0)
    p.add_argument("--heartbeat-timeout", type=float, default=0.5)
    p.add_argument("--pool-timeout", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--query-ms", type=float, default=20.0)
    p.add_argument("--think-ms", type=float, default=5.0)
    p.add_argument("--status-ms", type=float, default=50.0)
    p.add_argument("--max-seconds", type=float, default=60.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.kind == "async":
        asyncio.run(run_async(arguments))
    else:
        run_threads(arguments)
