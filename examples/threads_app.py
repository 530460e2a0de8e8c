"""A threaded WSGI app on the sync psycopg face, driven by a burst of concurrent requests.

    python examples/threads_app.py --dsn postgresql://user:pw@127.0.0.1:5432/db [--requests 60]

The app is plain WSGI (``wsgiref`` with a thread per request, as gunicorn's
``gthread`` workers or any threaded server run it): each request borrows a
connection with ``with pool.connection() as conn`` and runs one query. The
pool is :class:`elasticpool.psycopg.ConnectionPool`, a drop-in for
``psycopg_pool.ConnectionPool``: moving an app onto elasticpool is the import
line. A :class:`concurrent.futures.ThreadPoolExecutor` then sends a burst of
requests; the pool grows only as far as the burst needs (at most
``max_size``), serves waiting requests first come first served, and shrinks
back once connections sit idle for ``max_idle`` seconds.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from elasticpool.psycopg import ConnectionPool  # was: from psycopg_pool import ConnectionPool


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app(pool: ConnectionPool[Any]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with pool.connection() as conn:  # a psycopg.Connection, committed at the end
            row = conn.execute("SELECT pg_backend_pid(), pg_sleep(0.02)").fetchone()
        assert row is not None
        body = json.dumps({"backend": row[0]}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dsn", required=True)
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()

    # psycopg_pool's arguments, plus elastic ones: connections idle 1 s are closed.
    with ConnectionPool(
        args.dsn, min_size=1, max_size=6, max_idle=1.0, open=False, name="web"
    ) as pool:
        pool.wait(timeout=30)
        server = make_server(
            "127.0.0.1", 0, make_app(pool), ThreadingWSGIServer, handler_class=QuietHandler
        )
        port = server.server_address[1]
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        try:

            def request(_: int) -> int:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
                    return int(json.load(resp)["backend"])

            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as executor:
                backends = set(executor.map(request, range(args.requests)))
            took = time.monotonic() - started
            stats = pool.get_stats()
            print(
                f"{args.requests} requests served in {took:.2f}s by {len(backends)} "
                f"connections (max_size {pool.max_size}); pool: {pool.elastic!r}"
            )
            print(
                f"stats: requests {stats['requests_num']}, queued {stats.get('requests_queued', 0)}"
                f", connections opened {stats['connections_num']}"
            )
            assert len(backends) <= pool.max_size, "more connections than max_size"
            deadline = time.monotonic() + 10
            while pool.elastic.stats().size > pool.min_size and time.monotonic() < deadline:
                time.sleep(0.1)
            print(f"after idling: {pool.elastic!r}")
            assert pool.elastic.stats().size == pool.min_size, "the surplus never aged out"
        finally:
            server.shutdown()
            server.server_close()
    print("ok")


if __name__ == "__main__":
    main()
