"""The fault table: what callers get from the pool under each fault, per driver, from one run.

Run:  python benchmarks/fault_table.py [--runs 1] [--json faults.json]

It runs ``tests/faults/test_faults.py`` (which starts its own throwaway PostgreSQL on
127.0.0.1) with ``ELASTICPOOL_FAULT_REPORT`` set, so every fault test appends
one row: the fault, the driver, what its waiters got, the slowest answer next
to ``pool_timeout``, and how long the first acquire after the fault cleared
took (the recovery). With ``--runs N`` the suite runs N times and the table
shows, per row, the worst answer and the worst recovery seen.

The figures are wall-clock times on whatever machine runs it; the suite
itself asserts only correctness bounds (answered within ``pool_timeout`` plus
slack), never these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "faults" / "test_faults.py"


def run_suite(report: Path) -> int:
    """Run the fault suite once, appending its rows to ``report``; pytest's exit code."""
    env = {**os.environ, "ELASTICPOOL_FAULT_REPORT": str(report)}
    cmd = [sys.executable, "-m", "pytest", str(SUITE), "-q", "-p", "no:randomly"]
    # pytest's own output goes to stderr: stdout is the table.
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=sys.stderr, check=False).returncode


def merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (fault, driver): the worst answer and recovery over the runs."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["fault"], row["driver"])
        seen = merged.get(key)
        if seen is None:
            merged[key] = dict(row, runs=1)
            continue
        seen["runs"] += 1
        for field in ("max_answer", "recovery"):
            if row[field] is not None:
                seen[field] = max(seen[field] or 0.0, row[field])
    return list(merged.values())


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of ``rows``."""
    lines = [
        "| fault | driver | what the waiters got | slowest answer / pool_timeout | recovery |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        answer = (
            "n/a"
            if r["max_answer"] is None
            else f"{r['max_answer']:.2f} s / {r['pool_timeout']:g} s"
        )
        lines.append(
            f"| {r['fault']} | {r['driver']} | {r['got']} | {answer} | {seconds(r['recovery'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="times to run the suite (default 1)")
    parser.add_argument("--json", type=Path, help="also write the merged rows here")
    args = parser.parse_args()
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    with tempfile.TemporaryDirectory(prefix="elasticpool-faults-") as tmp:
        report = Path(tmp) / "rows.jsonl"
        failed = 0
        for n in range(1, args.runs + 1):
            start = time.monotonic()
            code = run_suite(report)
            print(f"run {n}: exit {code}, {time.monotonic() - start:.1f} s", file=sys.stderr)
            failed += code != 0
        text = report.read_text(encoding="utf-8") if report.exists() else ""
    rows = merge([json.loads(line) for line in text.splitlines() if line.strip()])
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    if failed:
        print(f"\n{failed} of {args.runs} run(s) had failures", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
