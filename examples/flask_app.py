"""A Flask app on elasticpool's drop-in for ``psycopg_pool.ConnectionPool``.

The move from psycopg_pool is the import line; the elastic settings are
extra keyword arguments. The pool is made and opened in the app factory,
so each worker process (gunicorn without ``--preload``) opens its own after
the fork, and every worker shares ``total_max_connections``::

    DATABASE_URL=postgresql://app:secret@db/app \\
        gunicorn -w 4 --threads 8 'examples.flask_app:create_app()'

Or run this file: it starts an embedded PostgreSQL (or uses ``--dsn``),
serves the app with werkzeug (a thread per request) on a free port, sends a
burst of concurrent requests, prints what the pool did and stops by itself::

    pip install -e ".[dev]" && python examples/flask_app.py
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import threading
import urllib.request
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

from elasticpool import PostgresMembership
from elasticpool.embedded import dsn_or_embedded
from elasticpool.psycopg import ConnectionPool  # was: from psycopg_pool import ConnectionPool


def create_app(dsn: str | None = None) -> Flask:
    """The app, with its pool: call it in each worker process (after the fork)."""
    app = Flask(__name__)
    pool = ConnectionPool(
        dsn or os.environ["DATABASE_URL"],
        min_size=1,  # a warm floor per worker, asked of the fleet like the rest
        timeout=10,
        open=False,
        # Every worker of this name shares the total (no max_size: the total sets
        # the limit, and each worker's share of it follows its demand).
        name="flask-example",
        total_max_connections=int(os.environ.get("TOTAL_MAX_CONNECTIONS", "20")),
        membership=PostgresMembership(),
    )
    pool.open()
    atexit.register(pool.close)
    app.extensions["pool"] = pool

    @app.get("/")
    def index() -> dict[str, Any]:
        with pool.connection() as conn:  # borrowed for the block, COMMIT, given back
            (backend,) = conn.execute("SELECT pg_backend_pid()").fetchone()
        return {"backend": backend, "pid": os.getpid()}

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return pool.get_stats()

    return app


def burst(port: int, requests: int, concurrency: int) -> list[dict[str, Any]]:
    """``requests`` GETs of ``/`` from ``concurrency`` threads; the JSON answers."""
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client(first: int) -> None:
        for _ in range(first, requests, concurrency):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
                answer = json.loads(response.read())
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="use this server instead of an embedded one")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=12)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    with dsn_or_embedded(args.dsn) as dsn:
        app = create_app(dsn)
        pool: ConnectionPool[Any] = app.extensions["pool"]
        server = make_server("127.0.0.1", 0, app, threaded=True)
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        serving.start()
        try:
            answers = burst(server.server_port, args.requests, args.concurrency)
        finally:
            server.shutdown()
            serving.join(timeout=30)
        stats = pool.get_stats()
        backends = len({a["backend"] for a in answers})
        print(f"{len(answers)} requests served by {backends} backends")
        total = pool.elastic.fleet().fleet_total
        print(
            f"pool {pool.name!r}: size {stats['pool_size']}, available {stats['pool_available']},"
            f" borrows {stats.get('requests_num', 0)}, fleet total {total}"
        )
        ok = (
            len(answers) == args.requests
            and stats.get("requests_num", 0) == args.requests  # one borrow per request
            and stats["requests_waiting"] == 0
        )
        pool.close()
    print("ok" if ok else "unexpected pool state")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
