"""The ``elasticpool`` command's rough edges: ``--version``, ids, plurals, phantoms, ``forget``.

Against the session server: each test has a lease table and a pool name of
its own (its members' ``application_name`` too). ``status``, ``set-total`` and
``forget`` run through ``main([...])`` in a worker thread (each command runs
its own event loop) while the test's members live on the test's loop.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from elasticpool import Pool, PostgresMembership
from elasticpool.cli import main
from elasticpool.fleet._schema import beat_function, fill_function

from ..helpers import eventually

asyncpg = pytest.importorskip("asyncpg")

from elasticpool.asyncpg import AsyncpgConnector  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


@dataclass
class Fleet:
    """A test's fleet: its server, lease table and pool name."""

    server: Any
    table: str
    name: str

    def membership(self) -> PostgresMembership:
        """A membership of this fleet: heartbeat every 0.1 s, lease TTL 1 s."""
        return PostgresMembership(
            table=self.table,
            heartbeat_interval=0.1,
            heartbeat_timeout=0.5,
            lease_ttl=1.0,
            application_name=self.name,
        )

    def pool(self, total: int = 10) -> Pool[Any]:
        """A member of this fleet."""
        connector = AsyncpgConnector(
            self.server.dsn(), server_settings={"application_name": self.name}
        )
        return Pool(
            connector, total_max_connections=total, membership=self.membership(), name=self.name
        )

    def args(self, *extra: str) -> list[str]:
        """The options naming this fleet's server and table."""
        return ["--dsn", self.server.dsn(), "--table", self.table, *extra]

    def sql(self, query: str) -> str:
        """One value from the server, through psql."""
        return str(self.server.psql(query)).strip()


@pytest.fixture
async def fleet(pg_server: Any) -> AsyncIterator[Fleet]:
    """A fresh fleet; its tables are dropped afterwards."""
    uid = uuid.uuid4().hex[:8]
    fl = Fleet(pg_server, table=f"cli_admin_{uid}", name=f"ep-admin-{uid}")
    try:
        yield fl
    finally:
        pg_server.psql(
            f"DROP TABLE IF EXISTS {fl.table}, {fl.table}_config;"
            f" DROP FUNCTION IF EXISTS {beat_function(fl.table)};"
            f" DROP FUNCTION IF EXISTS {fill_function(fl.table)}"
        )


async def run_main(*argv: str) -> int:
    """``main(argv)`` in a worker thread: the command runs its own event loop."""
    return await anyio.to_thread.run_sync(main, list(argv))


async def fleets(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """``status --json``'s fleets, by pool name."""
    assert await run_main("status", "--json", *fleet.args()) == 0
    return {f["pool"]: f for f in json.loads(capsys.readouterr().out)["fleets"]}


async def joined(pool: Pool[Any], total: int) -> None:
    """Wait until ``pool`` has coordinated with the fleet (its limit is the total)."""
    await eventually(lambda: pool.stats().max, lambda limit: limit == total, "never joined")


# ----------------------------------------------------------------------------- --version


def test_version_prints_the_version_pyproject_declares() -> None:
    """``elasticpool --version`` prints ``elasticpool <version>``, the version in pyproject.toml."""
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared is not None
    done = subprocess.run(
        [sys.executable, "-m", "elasticpool", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"elasticpool {declared[1]}")


# ----------------------------------------------------------------------------- status


@pytest.mark.postgres
@pytest.mark.anyio
async def test_status_shows_a_readable_instance_id_and_one_member_in_the_singular(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A member's id reads ``host:pid:xxxx`` in ``status``, and one member is "1 member"."""
    async with fleet.pool(total=10) as pool, pool.acquire():
        await joined(pool, 10)
        assert await run_main("status", *fleet.args("--pool", fleet.name)) == 0
        out = capsys.readouterr().out
    instance = f"{socket.gethostname()[:10]}:{os.getpid()}:"
    assert re.search(rf"{re.escape(instance)}[0-9a-f]{{4}}\b", out), out
    assert "1 member," in out
    assert "1 members" not in out


# ----------------------------------------------------------------------------- set-total


@pytest.mark.postgres
@pytest.mark.anyio
async def test_set_total_refuses_a_pool_that_never_had_a_member_unless_forced(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool name nobody ever ran is refused (a typo), and stored with ``--force``."""
    typo = fleet.name + "-typo"
    assert await run_main("set-total", *fleet.args("--pool", typo, "40")) == 1
    err = capsys.readouterr().err
    assert f"pool {typo!r} has never had a member" in err
    assert "--force" in err
    assert typo not in await fleets(fleet, capsys)  # nothing stored: no phantom

    assert await run_main("set-total", *fleet.args("--pool", typo, "--force", "40")) == 0
    assert "no live members: each adopts it when it joins" in capsys.readouterr().out
    assert (await fleets(fleet, capsys))[typo]["fleet_total"] == 40


@pytest.mark.postgres
@pytest.mark.anyio
async def test_set_total_accepts_a_pool_whose_members_have_all_left(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool that had members (none live now) takes a new total without ``--force``."""
    async with fleet.pool(total=10) as pool, pool.acquire():
        await joined(pool, 10)
    assert (await fleets(fleet, capsys))[fleet.name]["members"] == []  # its lease went with it
    assert await run_main("set-total", *fleet.args("--pool", fleet.name, "12")) == 0
    out = capsys.readouterr().out
    assert f"pool {fleet.name!r}: fleet total now 12" in out


# ----------------------------------------------------------------------------- forget


@pytest.mark.postgres
@pytest.mark.anyio
async def test_forget_removes_a_phantom_pool_from_status(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A total set for a pool nobody runs shows in ``status`` until ``forget`` removes it."""
    phantom = fleet.name + "-phantom"
    assert await run_main("set-total", *fleet.args("--pool", phantom, "--force", "30")) == 0
    capsys.readouterr()
    assert phantom in await fleets(fleet, capsys)

    assert await run_main("forget", *fleet.args("--pool", phantom)) == 0
    out = capsys.readouterr().out
    assert f"pool {phantom!r} forgotten: removed 0 leases and its config row" in out
    assert phantom not in await fleets(fleet, capsys)

    assert await run_main("forget", *fleet.args("--pool", phantom)) == 1
    assert f"pool {phantom!r} is not in lease table" in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.anyio
async def test_forget_refuses_a_pool_with_a_live_member_and_force_lets_it_rejoin(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """``forget`` keeps a live fleet; ``--force`` drops its rows and the member rejoins."""
    async with fleet.pool(total=10) as pool, pool.acquire():
        await joined(pool, 10)
        assert await run_main("set-total", *fleet.args("--pool", fleet.name, "14")) == 0
        await eventually(lambda: pool.stats().max, lambda limit: limit == 14, "never adopted")
        capsys.readouterr()

        assert await run_main("forget", *fleet.args("--pool", fleet.name)) == 1
        err = capsys.readouterr().err
        assert f"pool {fleet.name!r} has 1 live member: stop them first, or pass --force" in err
        seen = (await fleets(fleet, capsys))[fleet.name]
        assert (seen["fleet_total"], len(seen["members"])) == (14, 1)  # nothing removed

        assert await run_main("forget", "--json", *fleet.args("--pool", fleet.name, "--force")) == 0
        result = json.loads(capsys.readouterr().out)
        assert result == {
            "pool": fleet.name,
            "leases_removed": 1,
            "live_members_removed": 1,
            "config_removed": True,
        }
        # The member rejoins at its next heartbeat, on its own settings again.
        await eventually(lambda: pool.stats().max, lambda limit: limit == 10, "never rejoined")
        seen = (await fleets(fleet, capsys))[fleet.name]
        assert (seen["fleet_total"], len(seen["members"])) == (None, 1)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1


MEMBER = """
import os, anyio
from elasticpool import Pool, PostgresMembership
from elasticpool.asyncpg import AsyncpgConnector

async def main():
    name, table = os.environ["FLEET_NAME"], os.environ["FLEET_TABLE"]
    membership = PostgresMembership(table=table, heartbeat_interval=0.1, heartbeat_timeout=0.25,
                                    lease_ttl=0.5, application_name=name)
    connector = AsyncpgConnector(os.environ["FLEET_DSN"])
    async with Pool(connector, total_max_connections=5, membership=membership, name=name) as pool:
        async with pool.acquire() as conn:
            print("borrowed", flush=True)
            await conn.execute("SELECT pg_sleep(60)")

anyio.run(main)
"""
"""A member in a process of its own: it borrows a connection and runs a 60 s query on it."""


@pytest.mark.postgres
@pytest.mark.anyio
async def test_forget_refuses_while_a_killed_members_backend_is_still_running(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 mid-query: the dead member's backend still counts; ``forget`` needs ``--force``."""
    env = {
        **os.environ,
        "FLEET_NAME": fleet.name,
        "FLEET_TABLE": fleet.table,
        "FLEET_DSN": fleet.server.dsn(),  # the password in the environment, not the argv
    }
    running = (
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
        f" AND query LIKE 'SELECT pg_sleep(60)%' AND application_name LIKE '%{fleet.name}%'"
    )
    member = await anyio.open_process([sys.executable, "-c", MEMBER], env=env, stderr=None)
    try:
        assert member.stdout is not None
        with anyio.fail_after(60):
            said = b""
            while b"borrowed\n" not in said:
                said += await member.stdout.receive()
        await eventually(lambda: fleet.sql(running), lambda n: n == "1", "the query never ran")
        member.send_signal(signal.SIGKILL)
        await member.wait()
        expired = f"SELECT count(*) FROM {fleet.table} WHERE expires_at < now()"
        await eventually(lambda: fleet.sql(expired), lambda n: n == "1", "lease never expired")

        assert await run_main("forget", *fleet.args("--pool", fleet.name)) == 1
        err = capsys.readouterr().err
        assert "departed members still have 1 connection open" in err
        assert fleet.sql(f"SELECT count(*) FROM {fleet.table}") == "1"  # kept

        assert await run_main("forget", *fleet.args("--pool", fleet.name, "--force")) == 0
        assert "removed 1 lease and its config row" in capsys.readouterr().out
        assert fleet.sql(f"SELECT count(*) FROM {fleet.table}") == "0"
    finally:
        with anyio.CancelScope(shield=True):
            if member.returncode is None:
                member.kill()
                await member.wait()
            await member.aclose()
        fleet.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE application_name LIKE '%{fleet.name}%'"
        )


# ----------------------------------------------------------------------------- plurals


def test_counts_take_the_singular_for_one() -> None:
    """``count`` says "1 member", "0 members", "2 queries"."""
    from elasticpool.cli._common import count

    assert count(1, "member") == "1 member"
    assert count(0, "member") == "0 members"
    assert count(2, "query", "queries") == "2 queries"
    assert count(1, "live member") == "1 live member"
