"""Several uvicorn worker processes sharing one fleet-wide connection budget.

    pip install -e ".[dev]" && python examples/workers.py

It starts an embedded PostgreSQL (or uses ``--dsn``), then runs the Starlette
app of examples/starlette_app.py under ``uvicorn --workers 3`` on 127.0.0.1
with ``ELASTICPOOL_TOTAL_MAX_CONNECTIONS=6``: each worker process opens its own
pool, and the pools divide the 6 connections among themselves through a lease
table in the same database (PostgresMembership). It bursts requests at the
workers while sampling ``pg_stat_activity``, then prints how many backends the
workers held at most against the total, and stops everything by itself.

In production the same is one line per worker::

    ELASTICPOOL_DSN=... ELASTICPOOL_TOTAL_MAX_CONNECTIONS=100 \\
        uvicorn --app-dir examples starlette_app:app --workers 8

(or gunicorn with ``-k uvicorn.workers.UvicornWorker``): whatever the number of
workers and hosts, they share 100 connections, plus at most one short-lived
heartbeat connection per worker (docs/fleet.md, "The overshoot bound").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from elasticpool.embedded import dsn_or_embedded

HERE = Path(__file__).resolve().parent
APP_NAME = "elasticpool-starlette"  # what starlette_app.py tags its connections with


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_ready(client: httpx.AsyncClient, workers: int, deadline: float) -> None:
    """Until the server answers (bounded by ``deadline``)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/")).status_code == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"uvicorn with {workers} workers did not answer in time")


async def load(dsn: str, port: int, workers: int, waves: int, per_wave: int) -> dict[str, Any]:
    admin = await asyncpg.connect(dsn)
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            n = await admin.fetchval(  # fleet members name them "<APP_NAME>|<pool>|<instance>"
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = $1 OR starts_with(application_name, $1 || '|')",
                APP_NAME,
            )
            peak = max(peak, n)
            await asyncio.sleep(0.05)

    pids: set[int] = set()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await wait_ready(client, workers, time.monotonic() + 60)
            sampler = asyncio.create_task(sample())
            failed = 0
            for _ in range(waves):
                replies = await asyncio.gather(
                    *(client.get("/slow", params={"ms": 100}) for _ in range(per_wave))
                )
                failed += sum(r.status_code != 200 for r in replies)
                pids.update(r.json()["pid"] for r in replies if r.status_code == 200)
            done.set()
            await sampler
        return {"peak_backends": peak, "failed": failed, "workers_seen": len(pids)}
    finally:
        await admin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="use this server instead of an embedded one")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--total", type=int, default=6, help="fleet total (default 6)")
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--per-wave", type=int, default=60)
    args = parser.parse_args(argv)
    with dsn_or_embedded(args.dsn) as dsn:  # --dsn, or a throwaway server
        port = free_port()
        env = dict(
            os.environ,
            ELASTICPOOL_DSN=dsn,
            ELASTICPOOL_TOTAL_MAX_CONNECTIONS=str(args.total),
            ELASTICPOOL_MAX_CONNECTIONS="",  # the total decides (Hasura's precedence)
            ELASTICPOOL_ALLOW_SMALL_TOTAL="1",  # a demo-sized total below the default minimum
        )
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(HERE),
            "starlette_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
        ]
        server = subprocess.Popen(cmd, env=env)
        try:
            result = asyncio.run(load(dsn, port, args.workers, args.waves, args.per_wave))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
    bound = args.total + args.workers  # total + one heartbeat connection per member
    print(
        f"{args.workers} workers (answered from {result['workers_seen']}), fleet total "
        f"{args.total}: at most {result['peak_backends']} backends "
        f"(bound: total + one heartbeat connection per worker = {bound}); "
        f"{result['failed']} failed requests"
    )
    ok = result["failed"] == 0 and 0 < result["peak_backends"] <= bound
    print("ok" if ok else "NOT OK")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
