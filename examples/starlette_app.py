"""A Starlette app that borrows from an elastic pool opened in its lifespan.

Serve it (settings come from the environment, as in production)::

    ELASTICPOOL_DSN=postgresql://app:secret@127.0.0.1/app \\
    ELASTICPOOL_MAX_CONNECTIONS=20 uvicorn examples.starlette_app:app

Every ``ELASTICPOOL_<SETTING>`` variable is read by ``PoolSettings.from_env()``
(``ELASTICPOOL_TOTAL_MAX_CONNECTIONS=100`` joins the fleet: every worker and host
serving this app on that database shares 100 connections; see
examples/workers.py).

Or run this file: it starts an embedded PostgreSQL (or uses ``--dsn``), serves
the app with uvicorn on 127.0.0.1 on a free port, sends it a burst of requests
with httpx, prints what the pool did and stops by itself::

    pip install -e ".[dev]" && python examples/starlette_app.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from elasticpool import Pool, PoolSettings, PostgresMembership
from elasticpool.asyncpg import AsyncpgConnector
from elasticpool.embedded import dsn_or_embedded

APP_NAME = "elasticpool-starlette"


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    """Open the pool before the first request and close it (bounded) after the last."""
    dsn = os.environ["ELASTICPOOL_DSN"]
    settings = PoolSettings.from_env()
    # A fleet total means "share it with every other worker": coordinate through the database.
    # Its connections are then named "elasticpool-starlette|web|<instance>" (see docs/fleet.md).
    membership = (
        PostgresMembership(application_name=APP_NAME)
        if settings.total_max_connections is not None
        else None
    )
    connector = AsyncpgConnector(dsn, server_settings={"application_name": APP_NAME})
    async with Pool(connector, settings, membership=membership, name="web") as pool:
        yield {"pool": pool}


async def index(request: Request) -> JSONResponse:
    """One query on a borrowed connection."""
    pool: Pool[Any] = request.state.pool
    async with pool.acquire() as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
    return JSONResponse({"backend_pid": backend, "pid": os.getpid()})


async def slow(request: Request) -> JSONResponse:
    """A slow query (``?ms=``, at most 1000), to make the pool grow."""
    ms = min(int(request.query_params.get("ms", "50")), 1000)
    pool: Pool[Any] = request.state.pool
    async with pool.transaction() as conn:  # BEGIN ... COMMIT, then release
        await conn.execute("SELECT pg_sleep($1)", ms / 1000)
    return JSONResponse({"slept_ms": ms, "pid": os.getpid()})


async def stats(request: Request) -> JSONResponse:
    """The pool's gauges and counters (PoolStats), and which worker process answered."""
    pool: Pool[Any] = request.state.pool
    body = {"pid": os.getpid(), **dataclasses.asdict(pool.stats())}
    return JSONResponse(body)


app = Starlette(
    routes=[Route("/", index), Route("/slow", slow), Route("/stats", stats)],
    lifespan=lifespan,
)


# ---------------------------------------------------------------- the self-running demo


async def demo(requests: int) -> dict[str, Any]:
    """Serve the app on 127.0.0.1 (a free port), burst requests at it, return its stats."""
    import httpx  # noqa: PLC0415 - the demo's own needs
    import uvicorn  # noqa: PLC0415

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # bounded: up to 10 s for startup
            if server.started or serving.done():
                break
            await asyncio.sleep(0.02)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            replies = await asyncio.gather(
                *(client.get("/slow", params={"ms": 50}) for _ in range(requests))
            )
            failed = [r.status_code for r in replies if r.status_code != 200]
            if failed:
                raise RuntimeError(f"{len(failed)} requests failed: {failed[:5]}")
            result: dict[str, Any] = (await client.get("/stats")).json()
            print(f"{requests} requests served; pool: {result}")
            return result
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="use this server instead of an embedded one")
    parser.add_argument("--requests", type=int, default=60, help="burst size (default 60)")
    parser.add_argument("--max-connections", type=int, default=8)
    args = parser.parse_args(argv)
    with dsn_or_embedded(args.dsn) as dsn:  # --dsn, or a throwaway server
        os.environ["ELASTICPOOL_DSN"] = dsn
        os.environ.setdefault("ELASTICPOOL_MAX_CONNECTIONS", str(args.max_connections))
        result = asyncio.run(demo(args.requests))
    ok = result["in_use"] == 0 and 0 < result["size"] <= result["max"]
    print("ok" if ok else "unexpected pool state")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
