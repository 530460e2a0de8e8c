"""Run the example Django site on elasticpool against a real PostgreSQL, and check what it did.

The site is an ordinary Django project (``mysite/``, ``manage.py``) whose
``DATABASES["default"]["ENGINE"]`` is ``"elasticpool.django"``; serve it as
usual::

    DATABASE_URL=postgresql://app:secret@db/app python manage.py migrate
    DATABASE_URL=postgresql://app:secret@db/app gunicorn -w 4 --threads 8 mysite.wsgi

Or run this file: it starts an embedded PostgreSQL (or uses ``--dsn``),
migrates, serves the site with wsgiref (a thread per request) on a free
port, sends a burst of concurrent requests, prints what the pool did and
stops by itself::

    pip install -e ".[dev]" && python examples/django_app/demo.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.request
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
from django.core.management import call_command
from django.db import connection

from elasticpool.embedded import dsn_or_embedded

HERE = Path(__file__).resolve().parent


class Server(ThreadingMixIn, WSGIServer):
    """wsgiref with a thread per request; ``server_close()`` waits for them."""

    daemon_threads = False
    block_on_close = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def burst(port: int, requests: int, concurrency: int) -> list[dict[str, Any]]:
    """``requests`` GETs of the site from ``concurrency`` threads; the JSON answers."""
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
    sys.path.insert(0, str(HERE))  # mysite, as manage.py sees it
    with dsn_or_embedded(args.dsn) as dsn:
        os.environ["DATABASE_URL"] = dsn
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
        django.setup()
        call_command("migrate", verbosity=0)
        connection.close()  # this thread's connection goes back to the pool

        from mysite.wsgi import application  # noqa: PLC0415 - needs the settings above

        server = make_server(
            "127.0.0.1", 0, application, server_class=Server, handler_class=QuietHandler
        )
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        serving.start()
        try:
            answers = burst(server.server_address[1], args.requests, args.concurrency)
        finally:
            server.shutdown()
            server.server_close()  # every request has ended, and given its connection back
            serving.join(timeout=30)

        pool = connection.pool
        stats = pool.get_stats()
        fleet = pool.elastic.fleet()
        backends = len({a["backend"] for a in answers})
        print(f"{len(answers)} requests served by {backends} backends")
        print(
            f"pool {pool.name!r}: size {stats['pool_size']}, available {stats['pool_available']},"
            f" borrows {stats.get('requests_num', 0)}, fleet total {fleet.fleet_total}"
        )
        ok = (
            len(answers) == args.requests
            and stats.get("requests_num", 0) == args.requests + 1  # one borrow each, and migrate's
            and stats["requests_waiting"] == 0
        )
        connection.close_pool()
    print("ok" if ok else "unexpected pool state")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
