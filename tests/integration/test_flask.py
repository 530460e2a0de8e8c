"""Flask on ``elasticpool.psycopg.ConnectionPool`` in a fleet: worker processes share one total.

The app is examples/flask_app.py's ``create_app()``, run in child processes by
``tests/integration/flask_worker.py`` as gunicorn runs it without
``--preload``: each worker calls the factory, so each opens its own pool and
joins the fleet of the example's pool name through its ``PostgresMembership``.
The workers use a database of the test's own, so its backends in
``pg_stat_activity`` are exactly the fleet's (pools, heartbeats, lease table).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")
pytest.importorskip("psycopg")

import elasticpool

from ..helpers import BackendSampler, ChildProcess, scratch_database

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(elasticpool.__file__).resolve().parents[1]  # the elasticpool this process tests
RUNNER = "tests.integration.flask_worker"


def get(port: int, path: str) -> dict[str, Any]:
    """``GET path`` of the worker on ``port``: its JSON answer (an HTTP error raises)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def drive(
    ports: list[int], path: str, clients: int, each: int, bound: float
) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """``clients`` threads per port, ``each`` GETs of ``path`` apiece: (port, answer)s and errors.

    Every thread stops at its ``each``-th request or after ``bound`` seconds.
    """
    answers: list[tuple[int, dict[str, Any]]] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + bound

    def client(port: int) -> None:
        for _ in range(each):
            if time.monotonic() > deadline:
                with lock:
                    errors.append(f"port {port}: out of time")
                return
            try:
                answer = get(port, path)
            except Exception as exc:
                with lock:
                    errors.append(f"port {port}: {exc!r}")
            else:
                with lock:
                    answers.append((port, answer))

    threads = [threading.Thread(target=client, args=(p,)) for p in ports for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=bound + 30)
    return answers, errors


@pytest.mark.postgres
def test_three_processes_share_one_total(pg_server: Any) -> None:
    """Three Flask workers wanting 18 connections hold at most total + 3 (docs/fleet.md)."""
    total, members, clients, each, hold_ms = 6, 3, 6, 10, 30
    with scratch_database(pg_server.dsn(), "flask") as db:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": pg_server.dsn(database=db),
            "TOTAL_MAX_CONNECTIONS": str(total),
        }
        argv = [sys.executable, "-m", RUNNER, "--max-seconds", "60"]
        with BackendSampler(pg_server.dsn(), db) as sampler:  # from before the first joins
            workers: list[ChildProcess] = []
            try:
                for _ in range(members):
                    workers.append(ChildProcess(argv, cwd=ROOT, env=env))
                ready = [w.next_event("ready", timeout=60) for w in workers]
                ports = [r["port"] for r in ready]
                first = [get(port, "/") for port in ports]  # the example's own route
                answers, errors = drive(ports, f"/hold/{hold_ms}", clients, each, bound=30)
                stats = [get(port, "/stats") for port in ports]
            finally:
                codes = [w.stop() for w in workers]  # SIGTERM by PID, SIGKILL if it lingers
        stopped = [w.next_event("stopped", timeout=5) for w in workers]
    assert codes == [0] * members, [w.stderr[-20:] for w in workers]
    assert [a["pid"] for a in first] == [r["pid"] for r in ready]
    assert errors == []
    assert len(answers) == members * clients * each
    for port, worker in zip(ports, ready, strict=True):  # each process served its own
        served = [a for p, a in answers if p == port]
        assert len(served) == clients * each
        assert {a["pid"] for a in served} == {worker["pid"]}
    for s in stats:
        assert s["requests_num"] == 1 + clients * each  # one borrow per request
        assert s["requests_waiting"] == 0
    for s in stopped:
        assert s["signalled"] is True
        assert s["fleet_total"] == total
    peak = sampler.peak
    assert peak <= total + members, f"backends peaked at {peak} > {total} + {members}"
    assert peak >= total - 1, f"the load never reached the total (peak {peak})"
    queued = sum(s["requests_queued"] for s in stats)
    assert queued > 0  # demand (18) exceeded the total: some borrows queued
    print(f"peak {peak} backends / total {total} ({len(sampler.samples)} samples);", end=" ")
    print(f"{queued} of {sum(s['requests_num'] for s in stats)} borrows queued")
