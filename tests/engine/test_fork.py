"""Fork safety: a pool opened in a parent, used or closed in an ``os.fork()`` child.

Each test forks for real. The child never runs the parent's event loop: it
runs what it must on a fresh ``asyncio.run``, reports a JSON dict through a
pipe and always leaves with ``os._exit``. The parent waits for that report at
most :data:`BOUND` seconds (then kills the child, by its PID, and fails: the
child hung), and then checks that its own pool and its server backends were
left alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from elasticpool import Pool, wrap
from elasticpool.fleet import PostgresMembership
from elasticpool.replicas import RoutingPool
from elasticpool.testing import FakeConnector

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

from elasticpool.asyncpg import AsyncpgConnector, create_pool  # noqa: E402
from elasticpool.psycopg import AsyncConnectionPool  # noqa: E402

from ..helpers import eventually, unique_name  # noqa: E402

pytestmark = [pytest.mark.anyio]

BOUND = 10.0
"""Seconds the parent waits for the child's report before calling it a hang."""

Report = dict[str, Any]


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the child starts an event loop of its own with ``asyncio.run``."""
    return "asyncio"


def forked_message(name: str) -> str:
    """The start of the error every use of a pool opened here raises in a forked child."""
    return (
        rf"pool '{re.escape(name)}' was opened in process {os.getpid()} and cannot be used "
        r"in forked process \d+: open (the pool|it) after the fork"
    )


def in_child(body: Callable[[], Awaitable[Report]]) -> Report:
    """Run ``body()`` in a forked child on a fresh event loop; return the dict it reported."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(r)
            report = asyncio.run(body())  # type: ignore[arg-type]
            code = 0
        except BaseException as exc:
            report = {"child error": f"{type(exc).__name__}: {exc}"}
        try:
            os.write(w, json.dumps(report).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([r], [], [], BOUND)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child did not report within {BOUND:g}s: it hung")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)  # it closed the pipe: it is exiting
    report: Report = json.loads(b"".join(chunks))
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


async def refused(call: Callable[[], Awaitable[Any] | Any]) -> str:
    """What ``call()`` raised as a RuntimeError (awaiting it if needed), or ``"no error"``."""
    try:
        result = call()
        if isinstance(result, Awaitable):
            await result
    except RuntimeError as exc:
        return str(exc)
    return "no error"


# ----------------------------------------------------------------------------- the faces


async def open_face(driver: str, pg_server: Any, app: str) -> Any:
    """A drop-in face of one connection, open, on ``driver``."""
    if driver == "asyncpg":
        return await create_pool(
            pg_server.dsn(), min_size=1, max_size=1, server_settings={"application_name": app}
        )
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        pg_server.dsn(), min_size=1, max_size=1, open=False, kwargs={"application_name": app}
    )
    await pool.open(wait=True)
    return pool


async def face_pid(face: Any) -> int:
    """Borrow a connection from the face, ask its backend PID, give it back."""
    if hasattr(face, "fetchval"):
        pid: int = await face.fetchval("SELECT pg_backend_pid()")
        return pid
    async with face.connection() as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        row = await cur.fetchone()
        return int(row[0])


def face_closed(face: Any) -> bool:
    """Whether the face says it is closed."""
    return bool(face.is_closing() if hasattr(face, "is_closing") else face.closed)


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_forked_child_is_refused_and_closes_without_touching_the_parent(
    driver: str, pg_server: Any
) -> None:
    """A child is refused the parent's pool and closes it; the parent's session lives on."""
    app = unique_name(driver)
    observer = await asyncpg.connect(pg_server.dsn())
    face = await open_face(driver, pg_server, app)
    try:
        backend = await face_pid(face)  # borrowed and given back: it is idle at the fork

        async def child() -> Report:
            out: Report = {"acquire": await refused(lambda: face_pid(face))}
            with anyio.move_on_after(BOUND):
                await face.close()
            out["closed"] = face_closed(face)
            return out

        report = in_child(child)
        name = face.name
        assert re.match(forked_message(name), report["acquire"]), report
        assert report["closed"] is True, report
        alive = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND application_name = $2",
            backend,
            app,
        )
        assert alive == 1
        assert await face_pid(face) == backend  # the same session, still in step
    finally:
        await face.close()
        await observer.close()


# ----------------------------------------------------------------------------- the core


async def test_forked_child_gets_the_error_from_every_call_and_closes_without_io() -> None:
    """Every call on an inherited pool raises the fork error; close and release do no I/O."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2, name="inherited") as pool:
        held = await pool.acquire()  # borrowed across the fork
        async with pool.acquire():  # a second connection, idle at the fork
            pass

        async def child() -> Report:
            async def transaction() -> None:
                async with pool.transaction():
                    pass

            async def enter() -> None:
                async with pool.acquire():
                    pass

            out: Report = {
                "acquire": await refused(enter),
                "await acquire": await refused(pool.acquire),
                "acquire_nowait": await refused(pool.acquire_nowait),
                "transaction": await refused(transaction),
                "resize": await refused(lambda: pool.resize(3)),
                "expire_connections": await refused(pool.expire_connections),
                "wait": await refused(pool.wait),
                "check": await refused(pool.check),
                "open": await refused(pool.open),
            }
            pool.release(held)  # the parent's borrow: nothing to give back here
            with anyio.move_on_after(BOUND):
                await pool.close()
            out["repr"] = repr(pool)
            out["io"] = [connector.closes, connector.terminates, connector.resets]
            return out

        before = [connector.closes, connector.terminates, connector.resets]
        report = in_child(child)
        for call in ("acquire", "await acquire", "acquire_nowait", "transaction", "resize"):
            assert re.match(forked_message("inherited"), report[call]), (call, report)
        for call in ("expire_connections", "wait", "check", "open"):
            assert re.match(forked_message("inherited"), report[call]), (call, report)
        assert report["io"] == before
        assert report["repr"].startswith("<Pool 'inherited' closed [in use 0, idle 0")
        pool.release(held)
        async with pool.acquire() as conn:  # the parent's pool is as it was
            assert conn is held
    assert connector.closes == 2


@pytest.mark.postgres
async def test_forked_child_cannot_use_an_asyncpg_connection_borrowed_before_the_fork(
    pg_server: Any,
) -> None:
    """In a child, asyncpg refuses a connection the parent borrowed; the parent's stays in step."""
    pool: Pool[Any] = Pool(AsyncpgConnector(pg_server.dsn()), max_connections=1, name="held")
    async with pool, pool.acquire() as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")

        async def child() -> Report:
            try:
                return {"query": repr(await conn.fetchval("SELECT 42"))}
            except asyncpg.InterfaceError as exc:
                return {"query": str(exc)}

        report = in_child(child)
        assert report["query"] == "connection is closed", report
        assert await conn.fetchval("SELECT pg_backend_pid()") == backend


@pytest.mark.postgres
async def test_pool_built_before_fork_opens_in_the_child(pg_server: Any) -> None:
    """A pool built but not opened before the fork opens and serves in the child and the parent."""
    app = unique_name("late")
    pool: Pool[Any] = Pool(
        AsyncpgConnector(pg_server.dsn(), server_settings={"application_name": app}),
        max_connections=1,
        name="late",
    )

    async def child() -> Report:
        async with pool, pool.acquire() as conn:
            return {"pid": await conn.fetchval("SELECT pg_backend_pid()"), "state": repr(pool)}

    report = in_child(child)
    assert isinstance(report["pid"], int), report
    async with pool, pool.acquire() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") != report["pid"]


@pytest.mark.postgres
async def test_forked_child_close_keeps_the_parents_fleet_lease(pg_server: Any) -> None:
    """A child closing an inherited fleet member neither hangs nor deletes the parent's lease."""
    uid = uuid.uuid4().hex[:8]
    table = f"ep_fork_fleet_{uid}"
    admin = await asyncpg.connect(pg_server.dsn())
    membership = PostgresMembership(table=table, heartbeat_interval=1.0, lease_ttl=30.0)
    pool: Pool[Any] = Pool(
        AsyncpgConnector(pg_server.dsn()),
        membership=membership,
        name=f"ep-fork-{uid}",
        total_max_connections=5,
    )
    leases = f"SELECT count(*) FROM {table} WHERE pool_name = $1"
    try:
        async with pool, pool.acquire() as conn:  # in use across the fork: demand, so a lease
            await eventually(lambda: admin.fetchval(leases, pool.name), lambda n: n == 1, "lease")

            async def child() -> Report:
                with anyio.move_on_after(BOUND):
                    await pool.close()
                return {"state": repr(pool)}

            report = in_child(child)
            assert " closed " in report["state"], report
            assert await admin.fetchval(leases, pool.name) == 1
            assert await conn.fetchval("SELECT 1") == 1
        assert await admin.fetchval(leases, pool.name) == 0  # the parent leaves as usual
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {table}, {table}_config")
        await admin.close()


async def test_forked_child_is_refused_by_a_routing_pool_and_closes_it_at_once() -> None:
    """An inherited routing pool refuses borrows in a child and its close does no I/O."""
    connector = FakeConnector()
    primary = Pool(connector, max_connections=1, name="primary")
    replica = Pool(connector, max_connections=1, name="replica")
    async with RoutingPool(primary, [replica], name="routed") as db:
        async with db.acquire(readonly=True), db.acquire():
            pass

        async def child() -> Report:
            async def read() -> None:
                async with db.acquire(readonly=True):
                    pass

            out: Report = {"read": await refused(read)}
            with anyio.move_on_after(BOUND):
                await db.close()
            out["io"] = [connector.closes, connector.terminates]
            out["members"] = [repr(primary), repr(replica)]
            return out

        report = in_child(child)
        assert re.match(
            rf"routing pool 'routed' was opened in process {os.getpid()} and cannot be used "
            r"in forked process \d+: open it after the fork",
            report["read"],
        ), report
        assert report["io"] == [0, 0]
        assert all(" closed " in r for r in report["members"]), report
        async with db.acquire(readonly=True):
            pass
    assert connector.closes == 2


@pytest.mark.postgres
async def test_forked_child_close_of_a_wrapper_leaves_the_underlying_pool_open(
    pg_server: Any,
) -> None:
    """A child closing an inherited wrap(close_underlying=True) does not close the asyncpg pool."""
    app = unique_name("wrap")
    observer = await asyncpg.connect(pg_server.dsn())
    underlying = await asyncpg.create_pool(
        pg_server.dsn(), min_size=1, max_size=1, server_settings={"application_name": app}
    )
    try:
        async with wrap(underlying, name="wrapped", close_underlying=True) as pool:
            async with pool.acquire() as conn:
                backend = await conn.fetchval("SELECT pg_backend_pid()")

            async def child() -> Report:
                with anyio.move_on_after(BOUND):
                    await pool.close()
                return {"state": repr(pool)}

            report = in_child(child)
            assert " closed " in report["state"], report
            alive = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", backend
            )
            assert alive == 1
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == backend
        assert underlying.is_closing()
    finally:
        await underlying.close()
        await observer.close()
