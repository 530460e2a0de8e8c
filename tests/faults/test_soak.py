"""A short soak (``benchmarks/soak.py``) as a test: faults injected, nothing leaked, bound kept.

The soak's own ``run()`` is imported from its file and run in-process for a few
seconds with a fixed seed against the session server (``--dsn``): three pools
(asyncpg and psycopg core pools, the asyncpg face) share one fleet total
through ``PostgresMembership`` under bursty mixed load, while a seeded
injector sends faults through each pool's ``FaultProxy``. Everything the soak
creates on the server carries a random suffix and is dropped at its end.

The full-length run (minutes) is a benchmark: ``python benchmarks/soak.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("asyncpg")
pytest.importorskip("psycopg")

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"

DURATION = 12.0
"""Seconds of load: long enough for several faults with the seed below."""

SEED = 7


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """asyncpg runs on asyncio only (module-scoped: the soak runs once for the module)."""
    return "asyncio"


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    """``benchmarks/soak.py`` imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("elasticpool_soak", SOAK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
async def result(soak: ModuleType, pg_server: Any) -> dict[str, Any]:
    """One short soak against the session server, shared by the tests of this module."""
    if not pg_server.dsn().startswith("postgresql://"):
        pytest.skip("the soak needs a postgresql:// uri")
    args = soak.parse(["--duration", str(DURATION), "--seed", str(SEED), "--dsn", pg_server.dsn()])
    outcome: dict[str, Any] = await soak.run(args)
    return outcome


async def test_soak_injected_faults_and_did_work(result: dict[str, Any]) -> None:
    """The soak cannot pass vacuously: faults were injected and operations ran in every pool."""
    assert result["faults_injected"] > 0, result["faults"]
    assert result["ops"] > 0
    assert all(p["ops"] > 0 for p in result["pools"].values()), result["pools"]
    assert result["fleet"]["samples"] > 0


async def test_soak_leaks_nothing(result: dict[str, Any]) -> None:
    """After heal and settle, pools, connectors and pg_stat_activity agree, and nothing is left."""
    assert result["leaks"] == 0, result["leak_details"]


async def test_soak_fleet_stays_within_total_plus_bound(result: dict[str, Any]) -> None:
    """The fleet's backends (orphans aside) never exceed the total plus the documented bound."""
    fleet = result["fleet"]
    assert fleet["max_counted"] <= result["total"] + result["bound"], fleet
    assert fleet["max_in_budget"] <= result["total"], fleet


async def test_soak_rollbacks_leave_no_rows(result: dict[str, Any]) -> None:
    """Transactions that raised were rolled back: none of their rows is visible."""
    assert result["rolled_back"] > 0
    assert not [d for d in result["leak_details"] if "rolled-back" in d]


async def test_leak_check_flags_a_backend_its_pool_does_not_hold(
    soak: ModuleType, pg_server: Any
) -> None:
    """The settle check can fail: a stray backend with a pool's application_name is a leak."""
    import asyncpg

    from elasticpool import Pool
    from elasticpool.asyncpg import AsyncpgConnector

    app = f"ep-soak-leak-{uuid.uuid4().hex[:8]}"
    dsn = pg_server.dsn()
    tracked = soak.Tracked(
        AsyncpgConnector(dsn, server_settings={"application_name": app}),
        lambda conn: conn.get_server_pid(),
    )
    admin = await asyncpg.connect(dsn)
    stray = await asyncpg.connect(dsn, server_settings={"application_name": app})
    try:
        async with Pool(tracked, max_connections=2) as pool:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            member = soak.Member("x", "test", app, None, tracked, pool)
            leaks, _ = await soak.check_settled(admin, [member], 1.0)
    finally:
        await stray.close()
        await admin.close()
    assert leaks == ["pool x: 2 backend(s) listed, pool holds 1"]
