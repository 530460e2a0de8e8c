"""Every example in examples/ runs to a good end against the test server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.postgres


def run_example(name: str, dsn: str, *args: str, timeout: float = 90) -> str:
    """Run examples/<name> with ``--dsn``; return its output, failing on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--dsn", dsn, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{out[-3000:]}"
    return proc.stdout


def test_every_example_is_covered() -> None:
    """Each examples/*.py has a test here, so a new example cannot skip CI."""
    tested = {
        "quickstart.py",
        "starlette_app.py",
        "workers.py",
        "trio_program.py",
        "threads_app.py",
        "flask_app.py",
    }
    tested |= {"sqlalchemy_app.py"}  # run in tests/integration/test_sqlalchemy.py
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_quickstart(pg_server: Any) -> None:
    """The quickstart bursts load at a pool and watches it grow and shrink."""
    out = run_example("quickstart.py", pg_server.dsn())
    assert "after burst 3" in out


def test_starlette_app(pg_server: Any) -> None:
    """The Starlette app opens its pool in the lifespan and serves a burst through it."""
    out = run_example("starlette_app.py", pg_server.dsn(), "--requests", "40")
    assert "40 requests served" in out
    assert out.rstrip().endswith("ok")


def test_workers_share_one_total(pg_server: Any) -> None:
    """Three uvicorn workers stay within the fleet total plus one heartbeat each."""
    out = run_example("workers.py", pg_server.dsn(), "--waves", "3", timeout=150)
    assert "3 workers (answered from 3)" in out
    assert out.rstrip().endswith("ok")


def test_trio_program(pg_server: Any) -> None:
    """The trio program drives the pool with a threaded psycopg connector, cancellation included."""
    out = run_example("trio_program.py", pg_server.dsn())
    assert "after idling" in out
    assert out.rstrip().endswith("ok")


def test_threads_app(pg_server: Any) -> None:
    """A threaded WSGI app on the sync psycopg face serves a burst, then shrinks back."""
    out = run_example("threads_app.py", pg_server.dsn(), "--requests", "60")
    assert "60 requests served" in out
    assert "after idling" in out
    assert out.rstrip().endswith("ok")


def test_flask_app(pg_server: Any) -> None:
    """The Flask app serves a threaded burst from the sync drop-in pool; none is left borrowed."""
    pytest.importorskip("flask")
    out = run_example("flask_app.py", pg_server.dsn(), "--requests", "40")
    assert "40 requests served" in out
    assert out.rstrip().endswith("ok")
