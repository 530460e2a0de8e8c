"""benchmarks/fleet_scale.py runs end to end: a tiny fleet in two processes, every field in JSON.

This checks the script works, never how fast anything is (the numbers belong
in the benchmark's own output).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ..helpers import load_benchmark as load_script

pytest.importorskip("asyncpg")


def load_benchmark() -> ModuleType:
    """benchmarks/fleet_scale.py as a module."""
    module: ModuleType = load_script("fleet_scale")
    return module


@pytest.mark.postgres
def test_four_members_in_two_processes_report_every_field(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 3 s steady run of 4 members in 2 processes writes every measured field, no password."""
    bench = load_benchmark()
    dsn = pg_server.dsn()
    if bench.dsn_host(dsn) not in ("127.0.0.1", "::1", "localhost"):
        pytest.skip("the benchmark only runs against a loopback server")
    out = tmp_path / "scale.json"
    argv = ["--members", "4", "--processes", "2", "--duration", "3", "--warmup", "0.5"]
    returned = bench.main([*argv, "--busy-tasks", "4", "--dsn", dsn, "--json", str(out)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    assert written["args"]["members"] == [4]
    assert "dsn" not in written["args"]
    (run,) = written["runs"]
    assert {
        "members",
        "processes",
        "join_s",
        "samples",
        "max_backends",
        "mean_backends",
        "max_backends_whole_run",
        "max_backends_by_name",
        "new_sessions_per_s",
        "server_cpu_cores",
        "client_cpu_cores",
        "heartbeat",
        "heartbeats_per_s",
        "unhealthy_max",
        "unhealthy_ever",
        "unhealthy_fraction",
        "busy_qps",
        "busy_qps_each",
        "timeouts",
        "errors",
        "log_records",
    } <= run.keys()
    assert (run["members"], run["processes"], run["workers_reported"]) == (4, 2, "2/2")
    assert run["samples"] > 0
    assert run["max_backends"] >= 1  # the two busy members held connections
    assert len(run["busy_qps_each"]) == 2
    assert run["busy_qps"] > 0
    assert run["heartbeat"]["n"] > 0
    assert {"p50_ms", "p99_ms", "max_ms"} <= run["heartbeat"].keys()
    assert 0 <= run["unhealthy_max"] <= 4
    printed = capsys.readouterr()
    assert "hb p50/p99 ms" in printed.out
    password = getattr(pg_server, "password", "")
    assert not password or password not in out.read_text() + printed.out + printed.err
