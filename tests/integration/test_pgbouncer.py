"""Behind a pooler in transaction mode: the errors it causes are named once, with the fix.

With a real PgBouncer (``pool_mode = transaction``) on 127.0.0.1 when the
``pgbouncer`` program is installed (Debian: ``apt-get install pgbouncer``;
these tests are skipped otherwise), in front of the session server: asyncpg's
statement cache and psycopg's prepared statements fail borrow after borrow,
the pool logs ONE line naming the cause and the setting to change, and with
that setting (``statement_cache_size=0``, ``prepare_threshold=None``) there is
no error and no discarded connection. Without PgBouncer the same server errors
are reproduced on the session server directly, by deallocating the driver's
prepared statements behind its back.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from elasticpool import Pool, PostgresMembership, SyncPool

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

from elasticpool.asyncpg import AsyncpgConnector  # noqa: E402
from elasticpool.embedded import SYSTEM_USER, make_dsn  # noqa: E402
from elasticpool.fleet._schema import beat_function, fill_function  # noqa: E402
from elasticpool.psycopg import PsycopgConnector, SyncPsycopgConnector  # noqa: E402

from ..helpers import eventually  # noqa: E402

pytestmark = pytest.mark.postgres

BORROWS = 300
"""Borrows per load run: each a statement asyncpg caches (or psycopg prepares)."""


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg and psycopg's async connections run on asyncio only."""
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pgbouncer(pg_server: Any) -> Iterator[dict[str, Any]]:
    """A PgBouncer in transaction mode on 127.0.0.1 in front of the session server.

    Two server connections per database/user, so consecutive statements of one
    client connection often reach different server connections. Its config
    holds the server's password: its folder is readable by its owner only (as
    root, the unprivileged user PgBouncer then runs as). Stopped by its PID.
    """
    exe = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if exe is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    folder = Path(tempfile.mkdtemp(prefix="elasticpool-pgbouncer-"))  # mode 0700
    port = _free_port()
    server = (
        f"host={pg_server.host} port={pg_server.port} user={pg_server.user} "
        f"password={pg_server.password} dbname={pg_server.database}"
    )
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n{pg_server.database} = {server}\n\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\ndefault_pool_size = 2\n"
        "max_client_conn = 200\nignore_startup_parameters = extra_float_digits\n"
    )
    ini.chmod(0o600)
    argv = [exe, "-q", str(ini)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip(f"running as root needs the system user {SYSTEM_USER!r}")
        for path in (folder, ini):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        argv[1:1] = ["-u", SYSTEM_USER]
    log = folder / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        for _ in range(200):  # bounded: 200 x 50 ms
            if process.poll() is not None:
                pytest.fail(f"pgbouncer exited with {process.returncode}: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)  # no event to wait on: it is another process
        dsn = make_dsn(
            host="127.0.0.1",
            port=port,
            user=pg_server.user,
            password=pg_server.password,
            database=pg_server.database,
        )
        yield {"dsn": dsn, "port": port}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def hints(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The pooler hints the library logged."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "elasticpool" and "(logged once)" in r.getMessage()
    ]


def discards(caplog: pytest.LogCaptureFixture) -> int:
    """How many connections the pool discarded because their reset failed."""
    return sum("error resetting connection" in r.getMessage() for r in caplog.records)


async def load(pool: Pool[Any], run: Any, *, tasks: int = 8) -> tuple[int, list[BaseException]]:
    """``BORROWS`` borrows over ``tasks`` tasks, each running ``run(conn, i)``; (ok, errors)."""
    ok = 0
    errors: list[BaseException] = []

    async def worker(first: int) -> None:
        nonlocal ok
        for i in range(first, BORROWS, tasks):
            try:
                async with pool.acquire() as conn:
                    await run(conn, i)
                ok += 1
            except Exception as exc:
                errors.append(exc)

    async with anyio.create_task_group() as tg:
        for first in range(tasks):
            tg.start_soon(worker, first)
    return ok, errors


async def asyncpg_query(conn: Any, i: int) -> None:
    """A statement asyncpg prepares and caches (a parameter makes it an extended query)."""
    assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1


async def psycopg_query(conn: Any, i: int) -> None:
    """The same query six times: past psycopg's default prepare_threshold of 5."""
    for _ in range(6):
        cur = await conn.execute("SELECT %s::int + 1", (i,))
        assert (await cur.fetchone())[0] == i + 1


# ----------------------------------------------------------------------------- through PgBouncer


@pytest.mark.anyio
async def test_asyncpg_behind_pgbouncer_fails_and_says_once_to_set_statement_cache_size(
    pgbouncer: dict[str, Any], pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Default asyncpg behind PgBouncer: prepared-statement errors, and one line naming the fix."""
    caplog.set_level(logging.WARNING, logger="elasticpool")
    async with Pool(AsyncpgConnector(pgbouncer["dsn"]), max_connections=6, name="bouncer") as pool:
        ok, errors = await load(pool, asyncpg_query)
    lost = [e for e in errors if isinstance(e, asyncpg.exceptions.InvalidSQLStatementNameError)]
    assert lost, f"no prepared-statement error in {BORROWS} borrows ({ok} ok, {errors[:3]})"
    assert len(hints(caplog)) == 1, hints(caplog)
    (line,) = hints(caplog)
    assert "statement_cache_size=0" in line
    assert "transaction mode" in line
    assert "PgBouncer" in line
    assert f"127.0.0.1:{pgbouncer['port']}" in line
    assert pg_server.password not in line


@pytest.mark.anyio
async def test_asyncpg_behind_pgbouncer_with_the_documented_settings_has_no_error(
    pgbouncer: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """statement_cache_size=0 and reset="rollback": every borrow succeeds, nothing is discarded."""
    caplog.set_level(logging.WARNING, logger="elasticpool")
    connector = AsyncpgConnector(pgbouncer["dsn"], statement_cache_size=0)
    async with Pool(connector, max_connections=6, reset="rollback", name="bouncer") as pool:
        ok, errors = await load(pool, asyncpg_query)
    assert (ok, errors) == (BORROWS, [])
    assert hints(caplog) == []
    assert discards(caplog) == 0


@pytest.mark.anyio
async def test_psycopg_behind_pgbouncer_fails_and_says_once_to_set_prepare_threshold(
    pgbouncer: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Default psycopg behind PgBouncer: prepared-statement errors, and one line naming the fix."""
    caplog.set_level(logging.WARNING, logger="elasticpool")
    connector = PsycopgConnector(pgbouncer["dsn"], kwargs={"autocommit": True})
    async with Pool(connector, max_connections=6, name="bouncer") as pool:
        ok, errors = await load(pool, psycopg_query)
    lost = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)
    assert any(isinstance(e, lost) for e in errors), f"{ok} ok, {errors[:3]}"
    assert len(hints(caplog)) == 1, hints(caplog)
    assert "prepare_threshold=None" in hints(caplog)[0]


@pytest.mark.anyio
async def test_psycopg_behind_pgbouncer_with_the_documented_settings_has_no_error(
    pgbouncer: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """prepare_threshold=None and reset="rollback": every borrow succeeds, nothing is discarded."""
    caplog.set_level(logging.WARNING, logger="elasticpool")
    kwargs = {"autocommit": True, "prepare_threshold": None}
    connector = PsycopgConnector(pgbouncer["dsn"], kwargs=kwargs)
    async with Pool(connector, max_connections=6, reset="rollback", name="bouncer") as pool:
        ok, errors = await load(pool, psycopg_query)
    assert (ok, errors) == (BORROWS, [])
    assert hints(caplog) == []
    assert discards(caplog) == 0


@pytest.mark.anyio
async def test_a_fleet_divides_its_total_through_pgbouncer(
    pgbouncer: dict[str, Any], pg_server: Any
) -> None:
    """Two busy members behind PgBouncer split a total of 2 (its server pool) one each.

    With the settings the docs give: ``statement_cache_size=0``, and
    ``client_connection_check_interval=None`` (PgBouncer refuses that startup
    parameter, so every connect would fail), and a total no larger than
    PgBouncer's server pool, or the heartbeats queue in PgBouncer behind the
    queries.
    """
    table = f"bouncer_fleet_{os.getpid()}"

    def member() -> Pool[Any]:
        membership = PostgresMembership(
            table=table,
            heartbeat_interval=0.1,
            heartbeat_timeout=0.5,
            lease_ttl=1.0,
            client_connection_check_interval=None,
        )
        connector = AsyncpgConnector(pgbouncer["dsn"], statement_cache_size=0)
        return Pool(
            connector,
            total_max_connections=2,
            allow_small_total=True,
            membership=membership,
            reset="rollback",
            name="bouncer-fleet",
        )

    async def busy(pool: Pool[Any], stop: anyio.Event) -> None:
        while not stop.is_set():
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_sleep(0.02)")

    try:
        async with member() as a, member() as b, anyio.create_task_group() as tg:
            stop = anyio.Event()
            for pool in (a, b, a, b, a, b):
                tg.start_soon(busy, pool, stop)
            limits = await eventually(
                lambda: (a.stats().max, b.stats().max, len(a.fleet().members)),
                lambda seen: seen == (1, 1, 2),
                "the two members never split the total",
            )
            stop.set()
        assert limits == (1, 1, 2)
    finally:
        pg_server.psql(
            f"DROP TABLE IF EXISTS {table}, {table}_config;"
            f" DROP FUNCTION IF EXISTS {beat_function(table)};"
            f" DROP FUNCTION IF EXISTS {fill_function(table)}"
        )


@pytest.mark.anyio
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_fleet_member_behind_pgbouncer_connects_without_the_settings_it_refuses(
    pgbouncer: dict[str, Any], pg_server: Any, driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With the membership's defaults, PgBouncer refuses client_connection_check_interval.

    The connector drops it (keeping the application_name tag), says so in
    one line, and the member is served and counted: its backend on the
    server carries the tag.
    """
    table = f"bouncer_defaults_{driver}_{os.getpid()}"
    membership = PostgresMembership(table=table, heartbeat_interval=0.2, lease_ttl=2.0)
    connector: Any = (
        AsyncpgConnector(pgbouncer["dsn"], statement_cache_size=0)
        if driver == "asyncpg"
        else PsycopgConnector(pgbouncer["dsn"], kwargs={"prepare_threshold": None})
    )
    pool = Pool(
        connector,
        total_max_connections=2,
        allow_small_total=True,
        membership=membership,
        reset="rollback",
        name=f"bouncer-defaults-{driver}",
    )
    try:
        with caplog.at_level(logging.WARNING, logger="elasticpool"):
            async with pool:
                for _ in range(3):
                    async with pool.acquire() as conn:
                        rows = await connector.fetch(
                            conn,
                            "SELECT count(*)::int FROM pg_stat_activity"
                            " WHERE strpos(application_name, $1) > 0",
                            f"bouncer-defaults-{driver}",
                        )
                        assert rows[0][0] >= 1, "the tag reached the server"
                assert pool.fleet().active
        refused = [r for r in caplog.records if "refused the startup parameters" in r.message]
        assert len(refused) == 1, [r.message for r in caplog.records]
        assert "client_connection_check_interval" in refused[0].message
    finally:
        pg_server.psql(
            f"DROP TABLE IF EXISTS {table}, {table}_config;"
            f" DROP FUNCTION IF EXISTS {beat_function(table)};"
            f" DROP FUNCTION IF EXISTS {fill_function(table)}"
        )


def test_a_sync_fleet_member_behind_pgbouncer_connects_without_the_settings_it_refuses(
    pgbouncer: dict[str, Any], pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The threaded pool's psycopg connector drops a refused startup parameter the same way."""
    table = f"bouncer_defaults_sync_{os.getpid()}"
    membership = PostgresMembership(table=table, heartbeat_interval=0.2, lease_ttl=2.0)
    connector: Any = SyncPsycopgConnector(pgbouncer["dsn"], kwargs={"prepare_threshold": None})
    pool = SyncPool(
        connector,
        total_max_connections=2,
        allow_small_total=True,
        membership=membership,
        reset="rollback",
        name="bouncer-defaults-sync",
    )
    try:
        with caplog.at_level(logging.WARNING, logger="elasticpool"), pool:
            for _ in range(3):
                with pool.connection() as conn:
                    rows = connector.fetch(
                        conn,
                        "SELECT count(*)::int FROM pg_stat_activity"
                        " WHERE strpos(application_name, $1) > 0",
                        "bouncer-defaults-sync",
                    )
                    assert rows[0][0] >= 1, "the tag reached the server"
            assert pool.fleet().active
        refused = [r for r in caplog.records if "refused the startup parameters" in r.message]
        assert len(refused) == 1, [r.message for r in caplog.records]
        assert "client_connection_check_interval" in refused[0].message
    finally:
        pg_server.psql(
            f"DROP TABLE IF EXISTS {table}, {table}_config;"
            f" DROP FUNCTION IF EXISTS {beat_function(table)};"
            f" DROP FUNCTION IF EXISTS {fill_function(table)}"
        )


# ----------------------------------------------------------------------------- no PgBouncer needed


@pytest.mark.anyio
async def test_asyncpg_statement_deallocated_behind_its_back_is_named_once(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server error PgBouncer causes, made directly: many failing borrows, one hint line."""
    caplog.set_level(logging.WARNING, logger="elasticpool")

    async def borrow(pool: Pool[Any], i: int) -> None:
        async with pool.acquire() as conn:
            await asyncpg_query(conn, i)  # cached by asyncpg
            await conn.execute("DEALLOCATE ALL")  # as another server connection would be
            await asyncpg_query(conn, i)

    failures = 0
    async with Pool(AsyncpgConnector(pg_dsn), max_connections=2, name="dealloc") as pool:
        for i in range(20):
            with pytest.raises(asyncpg.exceptions.InvalidSQLStatementNameError):
                await borrow(pool, i)
            failures += 1
    assert failures == 20
    assert len(hints(caplog)) == 1, hints(caplog)
    assert "statement_cache_size=0" in hints(caplog)[0]
    assert "does not exist" in hints(caplog)[0]


@pytest.mark.anyio
async def test_psycopg_statement_deallocated_behind_its_back_is_named_once(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """psycopg's prepared statement dropped by name behind its back: one hint line for many."""
    caplog.set_level(logging.WARNING, logger="elasticpool")

    async def borrow(pool: Pool[Any], i: int) -> None:
        async with pool.acquire() as conn:
            await psycopg_query(conn, i)  # now prepared on the server
            cur = await conn.execute("SELECT name FROM pg_prepared_statements")
            for (name,) in await cur.fetchall():  # a named DEALLOCATE: psycopg is unaware
                await conn.execute(f'DEALLOCATE "{name}"', prepare=False)
            await psycopg_query(conn, i)

    connector = PsycopgConnector(pg_dsn, kwargs={"autocommit": True})
    async with Pool(connector, max_connections=1, reset="rollback", name="dealloc") as pool:
        for i in range(10):
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                await borrow(pool, i)
    assert len(hints(caplog)) == 1, hints(caplog)
    assert "prepare_threshold=None" in hints(caplog)[0]


def test_sync_psycopg_statement_deallocated_behind_its_back_is_named_once(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The threaded pool's psycopg connector gives the same one hint line for many errors."""
    caplog.set_level(logging.WARNING, logger="elasticpool")

    def borrow(pool: SyncPool[Any], i: int) -> None:
        with pool.connection() as conn:
            for _ in range(6):  # past psycopg's default prepare_threshold of 5
                assert conn.execute("SELECT %s::int + 1", (i,)).fetchone()[0] == i + 1
            names = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
            for (name,) in names:  # a named DEALLOCATE: psycopg is unaware
                conn.execute(f'DEALLOCATE "{name}"', prepare=False)
            for _ in range(6):
                conn.execute("SELECT %s::int + 1", (i,))

    connector = SyncPsycopgConnector(pg_dsn, kwargs={"autocommit": True})
    with SyncPool(connector, max_connections=1, reset="rollback", name="dealloc-sync") as pool:
        for i in range(10):
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                borrow(pool, i)
    assert len(hints(caplog)) == 1, hints(caplog)
    assert "prepare_threshold=None" in hints(caplog)[0]
