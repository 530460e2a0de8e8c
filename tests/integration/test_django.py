"""``"ENGINE": "elasticpool.django"`` against the real server, Django in child processes.

Django's settings are global to a process, so every test that runs Django
runs it in a child (``tests/integration/djangoproj/run.py``, a minimal
project: one app, one model, its migration, two views) and reads the JSON it
prints. This process only checks ``OPTIONS["pool"]`` with the pure
:func:`elasticpool.django._options.pool_arguments`, which reads no settings.

The module makes a database of its own on the test server (dropped at the
end) and migrates it once; the fleet test counts that database's backends in
``pg_stat_activity`` from a connection to another database.
"""

from __future__ import annotations

import inspect
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")
psycopg = pytest.importorskip("psycopg")

from django.core.exceptions import ImproperlyConfigured  # noqa: E402

import elasticpool  # noqa: E402
from elasticpool.django._options import (  # noqa: E402
    DJANGO_SETS,
    ELASTIC_OPTIONS,
    PSYCOPG_OPTIONS,
    pool_arguments,
)
from elasticpool.fleet import PostgresMembership, StaticMembership  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(elasticpool.__file__).resolve().parents[1]  # the elasticpool this process tests
RUNNER = "tests.integration.djangoproj.run"


def child_env(db: dict[str, Any], pool: object = True, **extra: str) -> dict[str, str]:
    """The environment of a Django child: this elasticpool, the project, the database."""
    path = os.pathsep.join([str(SRC), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "EP_DJANGO_DB": json.dumps(db),
        "EP_DJANGO_POOL": json.dumps(pool),
        **extra,
    }


def run_django(
    scenario: str,
    db: dict[str, Any],
    pool: object = True,
    *args: str,
    timeout: float = 120,
    **extra: str,
) -> dict[str, Any]:
    """Run one scenario of the project in a child; its ``result`` line (failing on a bad exit)."""
    proc = subprocess.run(
        [sys.executable, "-m", RUNNER, scenario, *args],
        cwd=ROOT,
        env=child_env(db, pool, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{scenario} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e["event"] == "result"]
    assert results, f"{scenario} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return results[-1]


def admin_conninfo(pg_server: Any, dbname: str | None = None) -> dict[str, Any]:
    return {
        "host": pg_server.host,
        "port": pg_server.port,
        "user": pg_server.user,
        "password": pg_server.password,
        "dbname": dbname or pg_server.database,
    }


@pytest.fixture(scope="module")
def django_db(pg_server: Any) -> Iterator[dict[str, Any]]:
    """A fresh, migrated database: the ``DATABASES`` keys a child needs to reach it."""
    name = f"ep_django_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**admin_conninfo(pg_server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    db = {
        "NAME": name,
        "HOST": pg_server.host,
        "PORT": pg_server.port,
        "USER": pg_server.user,
        "PASSWORD": pg_server.password,
    }
    try:
        result = run_django("migrate", db, {"min_size": 0, "max_size": 2})
        assert "notes_note" in result["tables"]
        yield db
    finally:
        with psycopg.connect(**admin_conninfo(pg_server), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------- OPTIONS["pool"]


def test_pool_true_means_every_default() -> None:
    """``OPTIONS["pool"] = True`` gives the pool no arguments beyond the backend's own."""
    assert pool_arguments("default", True) == {}


def test_psycopg_and_elastic_options_pass_through() -> None:
    """psycopg_pool's keys and elasticpool's settings reach the pool as given."""
    options = {"min_size": 0, "max_size": 8, "timeout": 5, "total_max_connections": "80%"}
    assert pool_arguments("default", options) == options


def test_unknown_option_names_the_key_and_what_is_allowed() -> None:
    """A key no pool takes is refused, with the keys it could have been."""
    with pytest.raises(ImproperlyConfigured, match=r"\['pool'\] has no option 'max_conns'") as e:
        pool_arguments("default", {"max_conns": 10})
    assert "max_size" in str(e.value)
    assert "total_max_connections" in str(e.value)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("min_size", "4", "an integer"),
        ("max_size", 2.5, "an integer or None"),
        ("timeout", "30", "a number of seconds"),
        ("name", "", "a non-empty string"),
        ("close_returns", 1, "True or False"),
        ("reconnect_failed", "log", "a callable"),
        ("num_workers", True, "an integer"),
    ],
)
def test_ill_typed_psycopg_option_is_named(key: str, value: object, allowed: str) -> None:
    """A psycopg_pool key of the wrong type names the key and the type it takes."""
    pattern = rf"DATABASES\['replica'\]\['OPTIONS'\]\['pool'\]\['{key}'\] must be {allowed}"
    with pytest.raises(ImproperlyConfigured, match=pattern):
        pool_arguments("replica", {key: value})


def test_conninfo_of_the_wrong_type_is_not_echoed() -> None:
    """An ill-typed ``conninfo`` is refused without showing its value (it may hold a password)."""
    with pytest.raises(ImproperlyConfigured, match="conninfo") as e:
        pool_arguments("default", {"conninfo": b"password=hunter2"})
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize("key", sorted(DJANGO_SETS))
def test_arguments_the_backend_sets_are_refused(key: str) -> None:
    """``kwargs``, ``open``, ``configure``, ``check`` are the backend's to set, as in Django's."""
    with pytest.raises(ImproperlyConfigured, match=rf"\['{key}'\] cannot be set: "):
        pool_arguments("default", {key: None})


def test_pool_of_the_wrong_type_is_refused() -> None:
    """``OPTIONS["pool"]`` is ``True`` or a dict; a string is refused, naming both."""
    with pytest.raises(
        ImproperlyConfigured, match="must be True or a dict of pool options, not str"
    ):
        pool_arguments("default", "yes")


def test_membership_postgres_string() -> None:
    """``"membership": "postgres"`` makes a PostgresMembership with its defaults."""
    arguments = pool_arguments("default", {"name": "web", "membership": "postgres"})
    assert isinstance(arguments["membership"], PostgresMembership)


def test_membership_dict_holds_the_constructor_arguments() -> None:
    """A membership dict is the class's keyword arguments; ``kind`` picks the class."""
    arguments = pool_arguments(
        "default",
        {"name": "web", "membership": {"table": "fleet_t", "heartbeat_interval": 0.5}},
    )
    membership = arguments["membership"]
    assert isinstance(membership, PostgresMembership)
    assert membership.heartbeat_interval == 0.5
    static = pool_arguments(
        "default", {"name": "web", "membership": {"kind": "static", "instances": 4}}
    )["membership"]
    assert isinstance(static, StaticMembership)
    assert static.instances == 4


@pytest.mark.parametrize(
    ("membership", "match"),
    [
        ({"tabel": "x"}, r"\['membership'\] has no key 'tabel'; a 'postgres' membership takes"),
        ({"kind": "redis"}, r"\['membership'\]\['kind'\] must be one of 'postgres', 'static'"),
        ({"heartbeat_interval": -1}, r"\['membership'\]: heartbeat_interval must be in"),
        ("static", r"\['membership'\] must be 'postgres' or a dict of membership arguments"),
        (PostgresMembership(), r"must be 'postgres' or a dict .*not PostgresMembership"),
    ],
)
def test_bad_membership_is_named(membership: object, match: str) -> None:
    """A membership spec that is not one of the JSON forms, or whose arguments are bad, is named."""
    with pytest.raises(ImproperlyConfigured, match=match):
        pool_arguments("default", {"name": "web", "membership": membership})


def test_membership_needs_a_name() -> None:
    """A fleet is the pools of one name: a membership without ``name`` is refused."""
    with pytest.raises(ImproperlyConfigured, match=r"\['name'\] is required with a membership"):
        pool_arguments("default", {"membership": "postgres", "total_max_connections": 10})


def test_options_are_what_the_pool_takes() -> None:
    """The keys checked here are exactly the sync face's parameters and its PoolSettings extras."""
    from elasticpool.psycopg import ConnectionPool

    parameters = inspect.signature(ConnectionPool).parameters
    named = {n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    assert set(PSYCOPG_OPTIONS) | set(DJANGO_SETS) | {"reset_mode", "membership"} == named
    extras = set(ELASTIC_OPTIONS) - {"membership", "reset_mode"}
    assert "total_max_connections" in extras
    assert "connect_timeout" in extras
    assert extras <= set(elasticpool.PoolSettings.__dataclass_fields__)
    assert not set(PSYCOPG_OPTIONS) & set(ELASTIC_OPTIONS)


# ---------------------------------------------------------------------------- Django, in children


@pytest.mark.postgres
def test_migrate_made_the_tables_on_elasticpools_pool(django_db: dict[str, Any]) -> None:
    """``migrate`` runs through the backend, whose pool is elasticpool's ConnectionPool."""
    result = run_django("migrate", django_db, {"min_size": 0, "max_size": 2})
    assert "notes_note" in result["tables"]
    assert "django_migrations" in result["tables"]
    assert result["pool_class"] == "elasticpool.psycopg.ConnectionPool"


@pytest.mark.postgres
def test_orm_from_many_threads_shares_the_pool(django_db: dict[str, Any]) -> None:
    """Sixteen threads run ORM queries through a pool of at most four connections."""
    result = run_django(
        "threads", django_db, {"min_size": 0, "max_size": 4}, "--threads", "16", "--ops", "10"
    )
    assert result["errors"] == []
    assert result["notes"] == 160
    assert result["stats"]["requests_num"] == 160  # one borrow per operation, none leaked
    assert result["in_use"] == 0
    assert result["size"] <= 4
    assert 1 <= result["backends"] <= 4


@pytest.mark.postgres
def test_connections_return_when_requests_end(django_db: dict[str, Any]) -> None:
    """Each request borrows once and gives back at its end, failing requests included."""
    result = run_django(
        "requests",
        django_db,
        {"min_size": 0, "max_size": 3},
        "--requests",
        "40",
        "--concurrency",
        "8",
        "--fail-every",
        "5",
    )
    assert result["errors"] == []
    assert result["statuses"] == [200] * 32 + [500] * 8
    assert result["notes"] == 32
    assert result["stats"]["requests_num"] == 40  # request_finished gave each one back
    assert result["in_use"] == 0
    assert result["size"] <= 3
    assert result["backends"] <= 3


@pytest.mark.postgres
def test_close_pool_closes_its_connections(django_db: dict[str, Any]) -> None:
    """``close_pool()`` closes the pool and its backends; the next query makes a new pool."""
    app = f"ep-django-close-{uuid.uuid4().hex[:6]}"
    db = {**django_db, "OPTIONS": {"application_name": app}}
    result = run_django("close_pool", db, {"min_size": 0, "max_size": 4}, "--threads", "3")
    assert result["errors"] == []
    assert result["before"]["size"] == 3
    assert result["first_closed"] is True
    assert result["registered_after_close"] is False
    assert result["backends_after_close"] == 0
    assert result["again"] == 1
    assert result["new_pool"] is True
    assert result["second_closed"] is False


@pytest.mark.postgres
def test_bad_options_fail_the_connection_with_improperly_configured(
    django_db: dict[str, Any],
) -> None:
    """A bad option, or ``CONN_MAX_AGE`` with a pool, is an ImproperlyConfigured naming it."""
    databases = {
        "unknown": {"pool": {"max_connectionz": 4}},
        "typed": {"pool": {"max_size": "4"}},
        "range": {"pool": {"min_size": -1}},
        "total": {"pool": {"total_max_connections": "lots"}},
        "persistent": {"pool": True, "CONN_MAX_AGE": 60},
        "fine": {"pool": {"min_size": 0, "max_size": 2, "total_max_connections": 10}},
    }
    result = run_django(
        "bad", django_db, True, EP_DJANGO_DATABASES=json.dumps(databases), timeout=60
    )
    outcomes = result["outcomes"]
    assert {alias: o["error"] for alias, o in outcomes.items()} == {
        "unknown": "ImproperlyConfigured",
        "typed": "ImproperlyConfigured",
        "range": "ImproperlyConfigured",
        "total": "ImproperlyConfigured",
        "persistent": "ImproperlyConfigured",
        "fine": None,
    }
    assert "has no option 'max_connectionz'" in outcomes["unknown"]["message"]
    assert "['max_size'] must be an integer or None" in outcomes["typed"]["message"]
    assert "DATABASES['range']" in outcomes["range"]["message"]
    assert "min_size" in outcomes["range"]["message"]
    assert "total_max_connections" in outcomes["total"]["message"]
    assert outcomes["persistent"]["message"] == "Pooling doesn't support persistent connections."


@pytest.mark.postgres
def test_test_runner_makes_and_drops_a_test_database(django_db: dict[str, Any]) -> None:
    """Django's test runner makes, uses and drops ``test_<NAME>`` on ``OPTIONS["pool"] = True``."""
    result = run_django("testdb", django_db, True)  # psycopg_pool's defaults: 4 warm connections
    assert result["inside"] == f"test_{django_db['NAME']}"
    assert result["pool_class"] == "elasticpool.psycopg.ConnectionPool"
    assert result["left"] == []  # dropped: close_pool() had let go of its backends


@pytest.mark.postgres
def test_forked_child_makes_its_own_pool(django_db: dict[str, Any]) -> None:
    """After a real ``os.fork()`` the child queries on its own pool; the parent's still works."""
    result = run_django("fork", django_db, {"min_size": 0, "max_size": 2})
    child = result["child"]
    assert child["error"] is None
    assert child["new_pool"] is True
    assert child["backend"] != result["parent_backend"]  # not the parent's idle connection
    assert result["parent_same_pool"] is True
    assert result["parent_after"] == result["parent_backend"]  # its idle one, reused


@pytest.mark.postgres
def test_example_site(pg_server: Any) -> None:
    """examples/django_app migrates, serves a burst of requests and gives every connection back."""
    name = f"ep_django_example_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(**admin_conninfo(pg_server), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "django_app" / "demo.py"),
                "--dsn",
                pg_server.dsn(database=name),
                "--requests",
                "40",
            ],
            env={**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        with psycopg.connect(**admin_conninfo(pg_server), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "40 requests served" in proc.stdout
    assert proc.stdout.rstrip().endswith("ok")


# ---------------------------------------------------------------------------- fleet


class Member:
    """A fleet member: a Django child running the ``fleet`` scenario, its lines in a queue."""

    def __init__(self, db: dict[str, Any], pool: dict[str, Any], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", RUNNER, "fleet", *args],
            cwd=ROOT,
            env=child_env(db, pool),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def next_event(self, event: str, timeout: float = 90) -> dict[str, Any]:
        """The member's next ``event`` line (fails if it exits or takes ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"member exited early:\n{''.join(self.stderr)[-3000:]}"
            if line["event"] == event:
                return line

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        """Stop the member (closing its stdin ends it; kill if it lingers) and its pipes."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for reader in self.readers:
            reader.join(timeout=30)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.postgres
def test_three_processes_share_one_total(pg_server: Any, django_db: dict[str, Any]) -> None:
    """Three Django processes wanting 12 connections hold at most total + 3 (docs/fleet.md)."""
    total, members, threads = 6, 3, 4
    pool = {
        "min_size": 1,  # no max_size: the total sets the limit
        "timeout": 60,
        "name": f"django-fleet-{uuid.uuid4().hex[:6]}",
        "total_max_connections": total,
        "membership": {
            "table": f"ep_fleet_{uuid.uuid4().hex[:6]}",
            "heartbeat_interval": 0.2,
            "lease_ttl": 2.0,
        },
    }
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        # From another database, so this connection is not one of the fleet's.
        with psycopg.connect(**admin_conninfo(pg_server), autocommit=True) as admin:
            for _ in range(100_000):  # bounded; ends when the members have
                (n,) = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                    [django_db["NAME"]],
                ).fetchone()
                samples.append(n)
                if stop.wait(0.005):
                    return

    fleet = [
        Member(django_db, pool, "--threads", str(threads), "--seconds", "4", "--sleep-ms", "30")
        for _ in range(members)
    ]
    sampler = threading.Thread(target=sample)
    try:
        for member in fleet:
            member.next_event("ready")
        sampler.start()
        for member in fleet:
            member.send("go")
        results = [member.next_event("result", timeout=120) for member in fleet]
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join(timeout=30)
        for member in fleet:
            member.finish()
    for result in results:
        assert result["errors"] == []
        assert result["ops"] > 0
        assert result["fleet_total"] == total
    assert samples
    peak = max(samples)
    assert peak <= total + members, f"backends peaked at {peak} > {total} + {members}"
    assert peak >= total - 1, f"the load never reached the total (peak {peak})"
    waits = sum(r["stats"].get("requests_queued", 0) for r in results)
    assert waits > 0  # demand (12) exceeded the total: some borrows queued
