"""benchmarks/sync_face.py runs end to end, floors included (tiny counts).

This checks the script works, never how fast anything is (speed belongs in
the benchmark's own output).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..helpers import load_benchmark

pytest.importorskip("psycopg_pool")


def load_sync_face() -> ModuleType:
    """benchmarks/sync_face.py as a module."""
    module: ModuleType = load_benchmark("sync_face")
    return module


@pytest.mark.postgres
def test_quick_run_reports_the_pools_and_the_floors(pg_server: Any, tmp_path: Path) -> None:
    """A tiny run writes JSON with both pools, both floors and the paired ratios."""
    out = tmp_path / "sync_face.json"
    result = load_sync_face().main(
        [
            "--dsn",
            pg_server.dsn(),
            "--threads",
            "4",
            "--connections",
            "2",
            "--duration",
            "0.05",
            "--repeat",
            "1",
            "--floors",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == result
    assert set(result["candidates"]) == {
        "psycopg_pool.ConnectionPool",
        "elasticpool.psycopg.ConnectionPool",
        "floor: queue.Queue (barging)",
        "floor: strict FIFO hand-off",
    }
    for row in result["candidates"].values():
        assert row["median"] > 0
    assert len(result["paired_ratios"]) == 1
