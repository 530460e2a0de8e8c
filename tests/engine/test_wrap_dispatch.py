"""``wrap()`` asks the adapters which driver a pool belongs to (issue 14 item 1).

Each adapter answers for its own pools only; an adapter whose driver is not
installed is skipped, and an import error of elasticpool's own code is not
mistaken for a missing driver. The leases each adapter builds are connectors
with ``fetch``, so a wrapped pool can be a fleet member.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import elasticpool
from elasticpool import PostgresMembership, wrap
from elasticpool._adapters import ADAPTERS, ASYNCPG, PSYCOPG, Adapter, ask, load
from elasticpool._sql import quote_ident
from elasticpool.fleet._schema import beat_function, fill_function

asyncpg = pytest.importorskip("asyncpg")
psycopg_pool = pytest.importorskip("psycopg_pool")

from elasticpool.asyncpg._leases import AsyncpgLeases  # noqa: E402
from elasticpool.psycopg._leases import PsycopgLeases  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.fixture
def anyio_backend() -> str:
    """Both drivers' async pools run on asyncio only."""
    return "asyncio"


Maker = Callable[[str], Awaitable[Any]]


async def _asyncpg_pool(dsn: str) -> Any:
    return await asyncpg.create_pool(dsn, min_size=0, max_size=3)


async def _psycopg_pool(dsn: str) -> Any:
    pool = psycopg_pool.AsyncConnectionPool(dsn, min_size=0, max_size=3, open=False)
    await pool.open()
    return pool


MAKERS: dict[str, tuple[Maker, type]] = {
    "asyncpg": (_asyncpg_pool, AsyncpgLeases),
    "psycopg": (_psycopg_pool, PsycopgLeases),
}


@pytest.fixture(params=sorted(MAKERS))
async def existing(request: pytest.FixtureRequest, pg_dsn: str) -> AsyncIterator[Any]:
    """An open pool of each driver, closed afterwards."""
    make, _ = MAKERS[request.param]
    pool = await make(pg_dsn)
    try:
        yield pool
    finally:
        await pool.close()


def test_the_adapters_are_asked_in_order() -> None:
    """asyncpg's adapter is asked first, then psycopg's; both load here."""
    assert ADAPTERS == (ASYNCPG, PSYCOPG)
    loaded = [load(a) for a in ADAPTERS]
    assert [getattr(m, "__name__", None) for m in loaded] == [a.package for a in ADAPTERS]
    assert [a.package for a in ADAPTERS] == ["elasticpool.asyncpg", "elasticpool.psycopg"]


def test_a_missing_driver_skips_its_adapter_and_an_own_import_error_is_raised() -> None:
    """``load`` is ``None`` when the driver is missing; an import error of ours is raised."""
    absent = f"ep_absent_driver_{uuid.uuid4().hex[:8]}"
    assert load(Adapter(absent, "x", (absent,))) is None
    broken = Adapter(f"elasticpool._absent_{uuid.uuid4().hex[:8]}", "x", (absent,))
    with pytest.raises(ModuleNotFoundError, match=r"elasticpool\._absent_"):
        load(broken)


@pytest.mark.anyio
async def test_each_adapter_answers_for_its_own_pools_only(existing: Any) -> None:
    """``leases_for`` of the other adapter says ``None``; ``ask`` finds the right one."""
    kind = "asyncpg" if isinstance(existing, asyncpg.Pool) else "psycopg"
    other: Any = load(PSYCOPG if kind == "asyncpg" else ASYNCPG, "_leases")
    assert other.leases_for(existing) is None
    leases = ask("_leases", "leases_for", existing)
    assert type(leases) is MAKERS[kind][1]
    assert ask("_leases", "leases_for", "postgresql://app:secret@db/app") is None


def test_a_synchronous_psycopg_pool_is_answered_by_its_adapter() -> None:
    """psycopg's adapter knows psycopg_pool's sync pool: it must be open, then wraps as a SyncPool.

    (tests/psycopg/test_sync_wrap.py wraps an open one against the server.)
    """
    sync = psycopg_pool.ConnectionPool("", open=False, name="sync-shut")
    with pytest.raises(ValueError, match=r"ConnectionPool 'sync-shut' is not open"):
        wrap(sync)


def test_wrap_without_one_driver_still_wraps_the_others_pools(pg_dsn: str) -> None:
    """With asyncpg uninstallable, wrap() takes a psycopg pool and refuses anything else."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["asyncpg"] = None  # import asyncpg now raises ModuleNotFoundError
        import psycopg_pool
        from elasticpool import wrap
        from elasticpool._adapters import ASYNCPG, load

        async def main():
            assert load(ASYNCPG) is None
            pool = psycopg_pool.AsyncConnectionPool(
                {pg_dsn!r}, min_size=0, max_size=2, open=False
            )
            await pool.open()
            async with wrap(pool, close_underlying=True) as wrapped:
                async with wrapped.acquire() as conn:
                    await conn.execute("SELECT 1")
            try:
                wrap(object())
            except TypeError as exc:
                print("refused:", exc)
            print("asyncpg" in sys.modules and sys.modules["asyncpg"] is not None)

        asyncio.run(main())
        """
    )
    src = str(Path(elasticpool.__file__).parents[1])  # this elasticpool, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "refused: wrap() takes an asyncpg.Pool, a psycopg_pool.AsyncConnectionPool or a "
        "psycopg_pool.ConnectionPool (got builtins.object)",
        "False",
    ]


@pytest.fixture
async def lease_table(pg_dsn: str) -> AsyncIterator[str]:
    """A lease table name no other test uses; its tables and functions dropped afterwards."""
    table = f"ep_wrapfleet_{uuid.uuid4().hex[:10]}"
    yield table
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(
            f"DROP TABLE IF EXISTS {quote_ident(table)}, {quote_ident(table + '_config')}"
        )
        for function in (beat_function(table), fill_function(table)):
            await admin.execute(f"DROP FUNCTION IF EXISTS {quote_ident(function)}")
    finally:
        await admin.close()


@pytest.mark.anyio
async def test_a_wrapped_pool_coordinates_through_its_leases_fetch(
    existing: Any, lease_table: str
) -> None:
    """A wrapped pool of either driver joins a PostgresMembership fleet: its leases run SQL."""
    membership = PostgresMembership(table=lease_table, heartbeat_interval=0.2)
    pool = wrap(existing, total_max_connections=2, allow_small_total=True, membership=membership)
    async with pool:
        async with pool.acquire():
            status = pool.fleet()
        assert status.membership == "postgres"
        assert [m.id for m in status.members] == [membership.instance_id]
        assert membership.beats >= 1
