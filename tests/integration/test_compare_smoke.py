"""benchmarks/compare.py runs end to end: every scenario, every candidate and pair, JSON, plot.

Tiny counts and quick mode: this checks the script works, never how fast
anything is (speed belongs in the benchmark's own output).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..helpers import load_benchmark

pytest.importorskip("asyncpg")
pytest.importorskip("psycopg_pool")


def load_compare() -> ModuleType:
    """benchmarks/compare.py as a module."""
    module: ModuleType = load_benchmark("compare")
    return module


@pytest.mark.postgres
def test_quick_run_reports_every_row(pg_server: Any, tmp_path: Path) -> None:
    """A quick run writes JSON with every candidate of every scenario, the targets and a plot."""
    pytest.importorskip("matplotlib")
    compare = load_compare()
    dsn = pg_server.dsn()
    if "://" not in dsn:
        pytest.skip("compare.py needs a postgresql:// uri")
    out, png = tmp_path / "compare.json", tmp_path / "compare.png"
    returned = compare.main(
        [
            "--quick",
            "--dsn",
            dsn,
            "--connections",
            "2",
            "--tasks",
            "2,5",
            "--duration",
            "0.05",
            "--burst-tasks",
            "6",
            "--burst-max",
            "3",
            "--burst-idle",
            "0.05",
            "--spike-tasks",
            "4",
            "--spike-connect-delay",
            "0.01",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    written = json.loads(out.read_text())
    assert written.keys() == returned.keys()
    keys = compare.key
    throughput = {keys(c) for c in [*compare.THROUGHPUT, *compare.SYNC]}
    assert set(written["throughput"]) == {"2 tasks", "5 tasks"}
    for rows in written["throughput"].values():
        assert set(rows) == throughput
        for row in rows.values():
            assert row["ops"] > 0
            assert {"ops_per_s", "cpu_us_per_op", "x_floor", "x_peer", "rounds"} <= row.keys()
    assert set(written["burst"]) == {keys(c) for c in compare.burst_candidates(0.3)}
    assert set(written["spike"]) == {keys(c) for c in compare.SPIKE}
    pairs = {(p["scenario"], p["driver"], p["candidate"], p["reference"]) for p in written["pairs"]}
    assert ("2 tasks", "asyncpg", compare.FACE, compare.PEER) in pairs
    assert ("5 tasks", "psycopg", compare.FACE, compare.PEER) in pairs
    assert ("2 tasks", "asyncpg", compare.CORE, compare.FLOOR) in pairs  # uncontended only
    assert ("5 tasks", "asyncpg", compare.CORE, compare.FLOOR) not in pairs
    for row in written["spike"].values():
        assert row["opened"] >= 0
    assert len(written["targets"]) > 0
    assert all(isinstance(t["met"], bool) for t in written["targets"])
    assert png.stat().st_size > 0
    password = getattr(pg_server, "password", "")
    assert not password or password not in out.read_text()
