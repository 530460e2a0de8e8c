"""Runs the project's Django in this process and reports as JSON lines on stdout.

    EP_DJANGO_DB='{"NAME": "...", "HOST": "...", "PORT": 5432, "USER": "...", "PASSWORD": "..."}' \\
    EP_DJANGO_POOL='{"max_size": 4}' python -m tests.integration.djangoproj.run SCENARIO [options]

``EP_DJANGO_DB`` holds the ``DATABASES`` entry's connection keys (the password
comes through the environment, never the command line); ``EP_DJANGO_POOL``
is ``OPTIONS["pool"]`` as JSON; ``EP_DJANGO_DATABASES`` (for ``bad``) a
JSON object of extra aliases, each ``{"pool": ..., "CONN_MAX_AGE": ...}``.
Every database uses ``"ENGINE": "elasticpool.django"``.

Scenarios (each prints ``{"event": "result", ...}`` last):

* ``migrate``: ``manage.py migrate``; reports the tables.
* ``threads``: ``--threads`` threads each run ``--ops`` ORM operations,
  closing the thread's connection (giving it back) after each.
* ``requests``: serves the project with wsgiref (a thread per request) and
  sends ``--requests`` requests from ``--concurrency`` client threads, one
  in ``--fail-every`` to a view that fails after its query.
* ``close_pool``: opens ``--threads`` connections, then ``close_pool()``;
  counts this pool's backends (by ``application_name``) until they are gone.
* ``bad``: makes a connection on each alias of ``EP_DJANGO_DATABASES`` and
  reports the error each raises.
* ``testdb``: Django's test runner makes a test database, uses it and drops it.
* ``fork``: opens the pool, forks, and queries in the child and then in
  the parent again.
* ``fleet``: a fleet member: prints ``ready`` after its first query, waits
  for ``go`` on stdin, then ``--threads`` threads run ``pg_sleep`` queries
  of ``--sleep-ms`` for ``--seconds``.

Bounded: every scenario ends by itself; ``fleet`` also ends if stdin closes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings

APP = "tests.integration.djangoproj.notes"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def configure(extra_databases: dict[str, Any] | None = None) -> None:
    """Configure Django for this process: ``default`` on elasticpool's backend, from the env."""
    db = json.loads(os.environ["EP_DJANGO_DB"])
    pool = json.loads(os.environ.get("EP_DJANGO_POOL", "true"))
    options = db.pop("OPTIONS", {})
    databases: dict[str, Any] = {
        "default": {
            "ENGINE": "elasticpool.django",
            **db,
            "CONN_MAX_AGE": 0,
            "OPTIONS": {"pool": pool, **options},
        }
    }
    for alias, entry in (extra_databases or {}).items():
        databases[alias] = {
            "ENGINE": "elasticpool.django",
            **db,
            "CONN_MAX_AGE": entry.get("CONN_MAX_AGE", 0),
            "OPTIONS": {"pool": entry["pool"]},
        }
    settings.configure(
        DEBUG=False,
        SECRET_KEY="only-for-tests",
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        INSTALLED_APPS=[APP],
        ROOT_URLCONF="tests.integration.djangoproj.urls",
        MIDDLEWARE=[],
        DATABASES=databases,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
    )
    django.setup()


def pool_report() -> dict[str, Any]:
    """What the default alias's pool is and did."""
    from django.db import connection

    pool = connection.pool
    s = pool.elastic.stats()
    return {
        "pool_class": f"{type(pool).__module__}.{type(pool).__qualname__}",
        "stats": pool.get_stats(),
        "size": s.size,
        "in_use": s.in_use,
        "idle": s.idle,
    }


def run_threads(count: int, body: Callable[[int], None]) -> list[str]:
    """Run ``body(i)`` in ``count`` threads; the errors they raised, as text."""
    errors: list[str] = []

    def target(i: int) -> None:
        try:
            body(i)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


# ---------------------------------------------------------------------------- scenarios


def migrate(args: argparse.Namespace) -> None:
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    tables = connection.introspection.table_names()
    report = pool_report()
    connection.close()
    connection.close_pool()
    emit("result", tables=tables, **report)


def threads(args: argparse.Namespace) -> None:
    from django.db import connection

    from .notes.models import Note

    run = uuid.uuid4().hex
    pids: set[int] = set()

    def body(i: int) -> None:
        try:
            for op in range(args.ops):
                Note.objects.create(run=run, text=f"{i}/{op}")
                assert Note.objects.filter(run=run, text=f"{i}/{op}").exists()
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    pids.add(cursor.fetchone()[0])
                connection.close()  # this thread's connection goes back to the pool
        finally:
            connection.close()

    errors = run_threads(args.threads, body)
    report = pool_report()  # before this thread's own query below borrows one
    emit(
        "result",
        errors=errors,
        notes=Note.objects.filter(run=run).count(),
        backends=len(pids),
        **report,
    )
    connection.close()
    connection.close_pool()


def requests(args: argparse.Namespace) -> None:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from django.core.wsgi import get_wsgi_application
    from django.db import connection

    from .notes.models import Note

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = False  # server_close() joins the request threads
        block_on_close = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server(
        "127.0.0.1", 0, get_wsgi_application(), server_class=Server, handler_class=QuietHandler
    )
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    port = server.server_address[1]
    run = uuid.uuid4().hex
    statuses: list[int] = []
    pids: set[int] = set()
    lock = threading.Lock()

    def client(i: int) -> None:
        for n in range(i, args.requests, args.concurrency):
            view = "fail" if args.fail_every and n % args.fail_every == 0 else "write"
            url = f"http://127.0.0.1:{port}/{view}/{run}/"
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    status, body = response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                status, body = exc.code, {}
                exc.close()
            with lock:
                statuses.append(status)
                if "pid" in body:
                    pids.add(body["pid"])

    try:
        errors = run_threads(args.concurrency, client)
    finally:
        server.shutdown()
        server.server_close()  # joins every request thread: each request has ended
        serving.join(timeout=30)
    report = pool_report()  # before this thread's own query below borrows one
    written = Note.objects.filter(run=run).count()
    connection.close()
    emit(
        "result",
        errors=errors,
        statuses=sorted(statuses),
        notes=written,
        backends=len(pids),
        **report,
    )
    connection.close_pool()


def close_pool(args: argparse.Namespace) -> None:
    import psycopg
    from django.db import connection

    from .notes.models import Note

    app = json.loads(os.environ["EP_DJANGO_DB"])["OPTIONS"]["application_name"]
    barrier = threading.Barrier(args.threads, timeout=60)

    def body(i: int) -> None:
        Note.objects.exists()
        barrier.wait()  # all hold a connection at once: the pool opens `threads` of them
        connection.close()

    errors = run_threads(args.threads, body)
    first = connection.pool
    before = pool_report()
    connection.close()
    connection.close_pool()
    registered = connection.alias in connection._connection_pools

    db = json.loads(os.environ["EP_DJANGO_DB"])
    conninfo = {
        "host": db["HOST"],
        "port": db["PORT"],
        "user": db["USER"],
        "password": db["PASSWORD"],
        "dbname": db["NAME"],
    }
    counts: list[int] = []
    with psycopg.connect(**conninfo, autocommit=True) as admin:
        deadline = time.monotonic() + 30
        while True:
            (n,) = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [app]
            ).fetchone()
            counts.append(n)
            if n == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # polling the server's view, not synchronising with the pool
    with connection.cursor() as cursor:  # a new pool, made and opened on demand
        cursor.execute("SELECT 1")
        (again,) = cursor.fetchone()
    second = connection.pool
    emit(
        "result",
        errors=errors,
        before=before,
        first_closed=first.closed,
        registered_after_close=registered,
        backends_after_close=counts[-1],
        again=again,
        new_pool=second is not first,
        second_closed=second.closed,
    )
    connection.close()
    connection.close_pool()


def bad(args: argparse.Namespace) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections

    outcomes: dict[str, Any] = {}
    for alias in json.loads(os.environ["EP_DJANGO_DATABASES"]):
        try:
            connections[alias].ensure_connection()
        except ImproperlyConfigured as exc:
            outcomes[alias] = {"error": "ImproperlyConfigured", "message": str(exc)}
        except Exception as exc:
            outcomes[alias] = {"error": type(exc).__name__, "message": str(exc)}
        else:
            outcomes[alias] = {"error": None}
            connections[alias].close()
    emit("result", outcomes=outcomes)


def fleet(args: argparse.Namespace) -> None:
    from django.db import connection

    from .notes.models import Note

    Note.objects.exists()  # joins the fleet
    connection.close()
    emit("ready", pid=os.getpid())
    if sys.stdin.readline().strip() != "go":
        connection.close_pool()
        return
    stop = time.monotonic() + args.seconds
    ops = [0] * args.threads

    def body(i: int) -> None:
        try:
            while time.monotonic() < stop:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(%s)", [args.sleep_ms / 1000])
                Note.objects.exists()
                connection.close()
                ops[i] += 1
        finally:
            connection.close()

    errors = run_threads(args.threads, body)
    report = pool_report()
    report["fleet_total"] = connection.pool.elastic.fleet().fleet_total
    connection.close_pool()
    emit("result", errors=errors, ops=sum(ops), **report)


def testdb(args: argparse.Namespace) -> None:
    from django.conf import settings as django_settings
    from django.db import connection
    from django.test.utils import get_runner

    from .notes.models import Note

    runner = get_runner(django_settings)(verbosity=0, interactive=False)
    old = runner.setup_databases()  # CREATE DATABASE test_<name>, migrate it
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        (inside,) = cursor.fetchone()
    Note.objects.create(run="testdb", text="in the test database")
    connection.close()
    pool_class = f"{type(connection.pool).__module__}.{type(connection.pool).__qualname__}"
    runner.teardown_databases(old)  # close_pool(), then DROP DATABASE: no backend may be left
    with connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database WHERE datname = %s", [inside])
        left = cursor.fetchall()
    connection.close()
    connection.close_pool()
    emit("result", inside=inside, pool_class=pool_class, left=left)


def fork(args: argparse.Namespace) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (parent_backend,) = cursor.fetchone()
    connection.close()  # back to the pool: it stays open, one idle connection
    parent_pool = connection.pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, exit without cleanup
        os.close(read)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                (child_backend,) = cursor.fetchone()
            report: dict[str, Any] = {
                "error": None,
                "backend": child_backend,
                "new_pool": connection.pool is not parent_pool,
            }
            connection.close()
            connection.close_pool()
        except BaseException as exc:
            report = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(report).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = json.loads(pipe.read() or b"{}")
    os.waitpid(pid, 0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (parent_after,) = cursor.fetchone()
    emit(
        "result",
        child=child,
        parent_backend=parent_backend,
        parent_after=parent_after,
        parent_same_pool=connection.pool is parent_pool,
    )
    connection.close()
    connection.close_pool()


SCENARIOS: dict[str, Callable[[argparse.Namespace], None]] = {
    "migrate": migrate,
    "threads": threads,
    "requests": requests,
    "close_pool": close_pool,
    "bad": bad,
    "fleet": fleet,
    "fork": fork,
    "testdb": testdb,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--ops", type=int, default=10)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--sleep-ms", type=float, default=20.0)
    args = parser.parse_args()
    extra = json.loads(os.environ.get("EP_DJANGO_DATABASES", "{}"))
    configure(extra)
    SCENARIOS[args.scenario](args)


if __name__ == "__main__":
    main()
