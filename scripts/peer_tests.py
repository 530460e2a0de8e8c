"""Run psycopg_pool's and asyncpg.Pool's own pool tests against elasticpool's drop-in faces.

Run:  python scripts/peer_tests.py [--psycopg-git DIR] [--asyncpg-git DIR]
                                   [--psycopg-ref REF] [--asyncpg-ref REF]
                                   [--dsn DSN] [--only psycopg|asyncpg] [--keep]

What it does, for each peer:

1. Extracts the peer's ``tests/`` tree at ``REF`` (default ``HEAD``) from a git
   repository (``--psycopg-git``/``--asyncpg-git``: a clone or a bare mirror;
   without one, ``git clone --depth 1`` from GitHub) into a temporary
   directory. Nothing of it is copied into this repository.
2. Selects the pool tests that use only the public pool API: a test whose
   body (or a helper class or function of its module that it names) reads or
   sets an attribute starting with ``_``, or monkeypatches one by name, is
   left out, and so are psycopg_pool's null-pool tests (the face has no null
   pool). The selection is done on the source (:mod:`ast`), before running.
3. Runs the selected tests twice with pytest, in a subprocess each: once
   against the peer itself (the baseline: a test that fails there fails for
   reasons of its own, such as a test written for a newer release than the
   one installed, or a cluster the test wants to control), and once with the
   peer's pool class replaced by elasticpool's face (a ``conftest.py`` in the
   temporary directory swaps ``psycopg_pool.AsyncConnectionPool`` for
   :class:`elasticpool.psycopg.AsyncConnectionPool`, and
   ``psycopg_pool.ConnectionPool`` for the sync face when it exists; or
   asyncpg's test base's pool class for :class:`elasticpool.asyncpg.AsyncpgPool`).
4. Prints, per peer: tests selected and left out, pass/fail/skip on the peer
   and on the face, and every test that passes on the peer but not on the
   face, with the first line of its failure. ``--json`` writes it all.

The server is ``--dsn`` (a superuser's, on a throwaway database: the tests
create and drop objects) or a throwaway embedded PostgreSQL started for the
run. Exit status: 0 whatever the results (it reports; docs/migrate-*.md give
each difference a reason).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import elasticpool.psycopg as ep
from elasticpool.embedded import EmbeddedPostgres

PEERS: dict[str, dict[str, Any]] = {
    "psycopg": {
        "url": "https://github.com/psycopg/psycopg",
        "paths": ["tests", "tools"],  # tools/pproxy_fix.py: the proxy some tests use
        "module": "psycopg_pool",
        "filterwarnings": "error",  # psycopg's own pytest configuration
        "public": [
            "AsyncConnectionPool",
            "AsyncNullConnectionPool",
            "ConnectionPool",
            "NullConnectionPool",
            "PoolClosed",
            "PoolTimeout",
            "TooManyRequests",
        ],
        "files": ["tests/pool/test_pool_async.py", "tests/pool/test_pool_common_async.py"],
        "sync_files": ["tests/pool/test_pool.py", "tests/pool/test_pool_common.py"],
    },
    "asyncpg": {
        "url": "https://github.com/MagicStack/asyncpg",
        "paths": ["tests"],
        "module": "asyncpg.pool",
        "filterwarnings": "default",  # asyncpg's own pytest configuration
        "public": ["Pool", "create_pool"],
        "files": ["tests/test_pool.py"],
        "sync_files": [],
    },
}

SHIM = '''\
"""Swap the peer's pool class for elasticpool's face (PEER_TESTS_TARGET=elasticpool).

Written by elasticpool's scripts/peer_tests.py; also deselects the tests it
left out, and records each test's outcome in PEER_TESTS_RESULTS.
"""

import json
import os

import pytest

TARGET = os.environ["PEER_TESTS_TARGET"]
PEER = os.environ["PEER_TESTS_PEER"]
LEFT_OUT = set(json.loads(os.environ["PEER_TESTS_LEFT_OUT"]))
RESULTS: dict = {}

if TARGET == "elasticpool" and PEER == "psycopg":
    import psycopg_pool

    import elasticpool.psycopg as ep

    psycopg_pool.AsyncConnectionPool = ep.AsyncConnectionPool
    if hasattr(ep, "ConnectionPool"):
        psycopg_pool.ConnectionPool = ep.ConnectionPool

if TARGET == "elasticpool" and PEER == "asyncpg":
    import asyncpg
    import asyncpg._testbase as tb
    import asyncpg.pool as pg_pool

    from elasticpool.asyncpg import AsyncpgPool

    class FacePool(AsyncpgPool):
        _maintenance_task = None  # asyncpg's test base's tearDown reads it

    defaults = tb.ClusterTestCase.create_pool.__defaults__
    tb.ClusterTestCase.create_pool.__defaults__ = (FacePool, *defaults[1:])
    tb.create_pool.__kwdefaults__["pool_class"] = FacePool

    def create_pool(*args, **kwargs):
        return FacePool(*args, **kwargs)

    asyncpg.create_pool = pg_pool.create_pool = create_pool


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        name = getattr(item, "originalname", None) or item.name.split("[")[0]
        if name in LEFT_OUT or (PEER == "psycopg" and "Null" in item.nodeid):
            dropped.append(item)
        else:
            kept.append(item)
    items[:] = kept
    config.hook.pytest_deselected(items=dropped)


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        first = ""
        if report.outcome == "failed":
            text = str(report.longrepr)
            lines = [ln for ln in text.splitlines() if ln.startswith("E ")]
            first = (lines[0] if lines else text.splitlines()[-1] if text else "")[:300]
        elif report.outcome == "skipped":
            first = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        old = RESULTS.get(report.nodeid)
        if old is None or old["outcome"] == "passed":
            RESULTS[report.nodeid] = {"outcome": report.outcome, "why": first, "when": report.when}


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["PEER_TESTS_RESULTS"], "w") as f:
        json.dump(RESULTS, f, indent=1)
'''


# =============================================================================== sources


def extract(peer: str, git_dir: str | None, ref: str, into: Path) -> Path:
    """The peer's ``tests/`` at ``ref``, extracted under ``into/peer``; returns that root."""
    root = into / peer
    root.mkdir(parents=True)
    if git_dir is None:
        clone = into / f"{peer}-clone"
        subprocess.run(
            ["git", "clone", "--quiet", "--depth", "1", PEERS[peer]["url"], str(clone)],
            check=True,
        )
        git_dir = str(clone)
    archive = subprocess.run(
        ["git", f"--git-dir={_git_dir(git_dir)}", "archive", ref, *PEERS[peer]["paths"]],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    commit = subprocess.run(
        ["git", f"--git-dir={_git_dir(git_dir)}", "rev-parse", ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (root / "COMMIT").write_text(commit)
    return root


def _git_dir(path: str) -> str:
    """A repository's git directory: ``path/.git`` for a clone, ``path`` for a bare mirror."""
    dot_git = Path(path) / ".git"
    return str(dot_git) if dot_git.exists() else path


# =============================================================================== selection


def _module_aliases(tree: ast.Module, module: str) -> set[str]:
    """Names the test module binds to the peer's pool module (``import psycopg_pool as pool``)."""
    package, _, leaf = module.rpartition(".")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.asname or a.name for a in node.names if a.name == module}
        elif isinstance(node, ast.ImportFrom) and package and node.module == package:
            found |= {a.asname or a.name for a in node.names if a.name == leaf}
    return found


def _private_names(node: ast.AST, aliases: set[str], public: set[str]) -> set[str]:
    """What ``node`` uses that is not the public pool API.

    Private attributes it reads or sets (``p._pool``), names it hands to
    ``setattr``-like calls (``monkeypatch.setattr(cls, "_check", ...)``), and
    names of the peer's pool module outside its public API (``pool.base``).
    """
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            attr = sub.attr
            if attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__")):
                found.add(attr)
            elif isinstance(sub.value, ast.Name) and sub.value.id in aliases and attr not in public:
                found.add(f"{sub.value.id}.{attr}")
        elif isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("setattr", "getattr", "delattr", "hasattr"):
                for arg in sub.args[1:2]:
                    if (
                        isinstance(arg, ast.Constant)
                        and isinstance(arg.value, str)
                        and arg.value.startswith("_")
                    ):
                        found.add(arg.value)
    return found


def _names_used(node: ast.AST) -> set[str]:
    return {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)}


def select(path: Path, peer: str) -> tuple[list[str], dict[str, list[str]]]:
    """Test function names of ``path``: those kept, and those left out with what they use.

    A module-level helper (class or function) that uses something private
    taints every test naming it, directly or through another helper.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _module_aliases(tree, str(PEERS[peer]["module"]))
    public = set(PEERS[peer]["public"])
    helpers: dict[str, ast.AST] = {}
    tests: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            tests += [
                n
                for n in node.body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                and n.name.startswith("test")
            ]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith(
            "test"
        ):
            tests.append(node)
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            helpers[node.name] = node
    tainted: dict[str, set[str]] = {}
    changed = True
    while changed:  # a helper using a tainted helper is tainted too
        changed = False
        for name, node in helpers.items():
            privates = _private_names(node, aliases, public)
            for used in _names_used(node) & tainted.keys():
                privates |= tainted[used]
            if privates and tainted.get(name) != privates:
                tainted[name] = privates
                changed = True
    kept: list[str] = []
    left_out: dict[str, list[str]] = {}
    for test in tests:
        privates = _private_names(test, aliases, public)
        for used in _names_used(test) & tainted.keys():
            privates |= tainted[used]
        if privates:
            left_out[test.name] = sorted(privates)
        else:
            kept.append(test.name)
    return kept, left_out


# =============================================================================== running


def run(
    peer: str,
    root: Path,
    files: list[str],
    *,
    left_out: set[str],
    target: str,
    dsn: str,
    timeout: float,
) -> dict[str, Any]:
    """pytest on ``files`` (paths under ``root``) against ``target``; outcome per node id."""
    (root / "conftest.py").write_text(SHIM)
    results = root / f"results-{target}.json"
    env = {
        **os.environ,
        "PEER_TESTS_TARGET": target,
        "PEER_TESTS_PEER": peer,
        "PEER_TESTS_LEFT_OUT": json.dumps(sorted(left_out)),
        "PEER_TESTS_RESULTS": str(results),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:randomly",
        f"--timeout={timeout:g}",
        "-o",
        "addopts=",
        "-o",
        f"filterwarnings={PEERS[peer]['filterwarnings']}",
        "--rootdir",
        str(root),
        *files,
    ]
    if peer == "psycopg":
        args += ["--test-dsn", dsn]
        env["PSYCOPG_TEST_DSN"] = dsn
    else:
        env.update(_libpq_env(dsn))
    proc = subprocess.run(args, check=False, cwd=root, env=env, capture_output=True, text=True)
    if not results.exists():
        raise SystemExit(
            f"{peer} tests against {target} did not run:\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )
    outcome: dict[str, Any] = json.loads(results.read_text())
    return outcome


def _libpq_env(dsn: str) -> dict[str, str]:
    """PGHOST, PGPORT... from a ``postgresql://`` DSN (asyncpg's test base reads them)."""
    parts = urlsplit(dsn)
    env = {
        "PGHOST": parts.hostname or "127.0.0.1",
        "PGPORT": str(parts.port or 5432),
        "PGUSER": unquote(parts.username or "postgres"),
        "PGDATABASE": unquote(parts.path.lstrip("/")) or "postgres",
        "PGSSLMODE": "disable",
    }
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    return env


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    """``dsn``, or a throwaway embedded PostgreSQL's for the run."""
    if dsn is not None:
        yield dsn
        return
    pg = EmbeddedPostgres()
    pg.start()
    try:
        yield pg.dsn()
    finally:
        pg.cleanup()


# =============================================================================== report


def compare(peer: dict[str, Any], face: dict[str, Any]) -> dict[str, Any]:
    """Counts for both targets, and the tests that pass on the peer but not on the face."""

    def counts(results: dict[str, Any]) -> dict[str, int]:
        out = {"passed": 0, "failed": 0, "skipped": 0}
        for r in results.values():
            out[r["outcome"]] = out.get(r["outcome"], 0) + 1
        return out

    missing = {"outcome": "missing", "why": "not run on elasticpool"}
    differences = {
        node: face.get(node, missing)
        for node, r in peer.items()
        if r["outcome"] == "passed" and face.get(node, missing)["outcome"] != "passed"
    }
    only_face = sorted(
        node
        for node, r in face.items()
        if r["outcome"] == "passed" and peer.get(node, {}).get("outcome") != "passed"
    )
    return {
        "peer": counts(peer),
        "face": counts(face),
        "differences": differences,
        "pass_on_face_only": only_face,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--psycopg-git", help="a clone or mirror of github.com/psycopg/psycopg")
    p.add_argument("--asyncpg-git", help="a clone or mirror of github.com/MagicStack/asyncpg")
    p.add_argument("--psycopg-ref", default="HEAD")
    p.add_argument("--asyncpg-ref", default="HEAD")
    p.add_argument("--only", choices=sorted(PEERS), action="append")
    p.add_argument("--dsn", default=None, help="a superuser DSN (default: embedded PostgreSQL)")
    p.add_argument("--timeout", type=float, default=60.0, help="per test, seconds")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

    report: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="elasticpool-peer-tests-"))
    try:
        with server(args.dsn) as dsn:
            for peer in args.only or sorted(PEERS):
                git_dir = getattr(args, f"{peer}_git")
                ref = getattr(args, f"{peer}_ref")
                root = extract(peer, git_dir, ref, tmp)
                files = list(PEERS[peer]["files"])
                if hasattr(ep, "ConnectionPool"):  # the sync face, once it exists
                    files += PEERS[peer]["sync_files"]
                kept: list[str] = []
                left_out: dict[str, list[str]] = {}
                for f in files:
                    k, lo = select(root / f, peer)
                    kept += k
                    left_out.update(lo)
                common = {"left_out": set(left_out), "dsn": dsn, "timeout": args.timeout}
                baseline = run(peer, root, files, target="peer", **common)
                face = run(peer, root, files, target="elasticpool", **common)
                report[peer] = {
                    "commit": (root / "COMMIT").read_text(),
                    "files": files,
                    "selected": len(kept),
                    "left_out": left_out,
                    **compare(baseline, face),
                }
                print(render(peer, report[peer]), flush=True)
    finally:
        if args.keep:
            print(f"kept: {tmp}", file=sys.stderr)
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


def render(peer: str, r: dict[str, Any]) -> str:
    lines = [
        f"{peer} @ {r['commit'][:12]}: {', '.join(r['files'])}",
        f"  test functions: {r['selected']} use only the public pool API, "
        f"{len(r['left_out'])} left out (private attributes or internals)",
        f"  on the peer:        {r['peer']['passed']} passed, {r['peer']['failed']} failed, "
        f"{r['peer']['skipped']} skipped",
        f"  on elasticpool:     {r['face']['passed']} passed, {r['face']['failed']} failed, "
        f"{r['face']['skipped']} skipped",
        f"  pass on the peer, not on elasticpool: {len(r['differences'])}",
    ]
    for node, d in sorted(r["differences"].items()):
        why = textwrap.shorten(d.get("why", ""), 150)
        lines.append(f"    {node}  [{d['outcome']}] {why}")
    if r["pass_on_face_only"]:
        lines.append(f"  pass on elasticpool only: {len(r['pass_on_face_only'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
