"""Session isolation: what one borrower leaves on a backend, the next one must not see.

A matrix: every kind of session state a borrower can set (the :data:`STATES`
table) by the four ways to use a driver (core :class:`~elasticpool.Pool` with
:class:`~elasticpool.asyncpg.AsyncpgConnector` or
:class:`~elasticpool.psycopg.PsycopgConnector`, and the two drop-in faces) by
how the connection came back (idle, or with a transaction left open). With
``max_connections=1`` the next borrower gets the same backend, and each test
checks that it did (same backend PID), so the isolation it asserts is real.

Each test runs in both directions: under ``reset="session"`` the next borrower
sees exactly what a fresh connection shows; under a weaker reset
(``"rollback"`` for session-level state, ``"none"`` for state that lives in a
transaction) it sees the state, which shows the probe can fail (but for the
psycopg_pool face, which rolls back a transaction given back in every mode, as
psycopg_pool does).

The per-state tests of ``test_asyncpg_face.py`` and ``test_psycopg_adapter.py``
set everything at once; these take one state at a time, so a leak names itself.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

from elasticpool import Pool  # noqa: E402
from elasticpool.asyncpg import AsyncpgConnector, create_pool  # noqa: E402
from elasticpool.psycopg import AsyncConnectionPool, PsycopgConnector  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

DRIVER_STATEMENT = "iso-driver-stmt"
"""Text inside the statement a borrower prepares through the driver's own API.

Probes find it with ``'iso-driver' || '-stmt'`` so that their own text never
contains it.
"""


# =============================================================================
# The states
# =============================================================================


@dataclasses.dataclass(frozen=True)
class State:
    """One kind of state a borrower can leave behind, and how to see it.

    ``apply`` is SQL (``{role}``, ``{key}`` and ``{seq}`` filled in) run by
    the borrower; ``probe`` is one query whose single value differs between a
    fresh session and one carrying the state. ``scope`` is ``"session"`` for
    state that outlives a transaction (a ``"rollback"`` reset keeps it) and
    ``"transaction"`` for state that lives in the transaction left open (only
    a ``"none"`` reset keeps it). ``prepare_via_driver`` makes the borrower
    prepare :data:`DRIVER_STATEMENT` with the driver's own API instead.
    ``dropped_by_rollback`` names the drivers whose own ``rollback()`` removes
    the state (psycopg deallocates its prepared statements when it rolls
    back), so a ``"rollback"`` reset of an open transaction hides it too.
    """

    name: str
    apply: str
    probe: str
    scope: str = "session"
    fails: bool = False
    prepare_via_driver: bool = False
    dropped_by_rollback: tuple[str, ...] = ()


STATES = [
    State(
        "set role",
        "SET ROLE {role}",
        "SELECT current_user || '/' || current_setting('role')",
    ),
    State(
        "set session authorization",
        "SET SESSION AUTHORIZATION {role}",
        "SELECT session_user || '/' || current_user",
    ),
    State(
        "search_path",
        "SET search_path = iso_path, public",
        "SELECT current_setting('search_path')",
    ),
    State(
        "statement_timeout",
        "SET statement_timeout = 4321",
        "SELECT current_setting('statement_timeout')",
    ),
    State(
        "custom guc via set_config",
        "SELECT set_config('myapp.tenant', 'acme', false)",
        "SELECT coalesce(current_setting('myapp.tenant', true), '')",
    ),
    State(
        "session characteristics",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        "SELECT current_setting('default_transaction_isolation')"
        " || '/' || current_setting('default_transaction_read_only')",
    ),
    State(
        "temp table",
        "CREATE TEMP TABLE iso_tmp (x int)",
        "SELECT to_regclass('pg_temp.iso_tmp') IS NOT NULL",
    ),
    State(
        "listen",
        "LISTEN iso_chan",
        "SELECT count(*) FROM pg_listening_channels() AS c WHERE c = 'iso_chan'",
    ),
    State(
        "session advisory lock",
        "SELECT pg_advisory_lock({key})",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    ),
    State(
        "sql prepare",
        "PREPARE iso_plan AS SELECT 1",
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'iso_plan'",
    ),
    State(
        "driver prepared statement",
        "",
        "SELECT count(*) FROM pg_prepared_statements"
        " WHERE statement LIKE '%' || 'iso-driver' || '-stmt' || '%'",
        prepare_via_driver=True,
        dropped_by_rollback=("psycopg",),
    ),
    State(
        "cursor with hold",
        "DECLARE iso_held CURSOR WITH HOLD FOR SELECT generate_series(1, 3)",
        "SELECT count(*) FROM pg_cursors WHERE name = 'iso_held'",
    ),
    State(
        "sequence lastval",
        "SELECT nextval('{seq}')",
        "SELECT lastval()",
    ),
    State(
        "open transaction",
        "SELECT pg_current_xact_id()",
        "SELECT pg_current_xact_id_if_assigned()::text",
        scope="transaction",
    ),
    State(
        "failed transaction",
        "SELECT 1 / 0",
        "SELECT 'usable'",
        scope="transaction",
        fails=True,
    ),
    State(
        "set local",
        "SET LOCAL statement_timeout = 4321",
        "SELECT current_setting('statement_timeout')",
        scope="transaction",
    ),
    State(
        "set transaction",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        "SELECT current_setting('transaction_isolation')"
        " || '/' || current_setting('transaction_read_only')",
        scope="transaction",
    ),
    State(
        "transaction advisory lock",
        "SELECT pg_advisory_xact_lock({key})",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        scope="transaction",
    ),
]

EXPECTED_ERRORS = {
    "22012": "<division by zero>",
    "25P02": "<in failed transaction>",
    "55000": "<lastval not defined>",
}
"""SQLSTATEs a probe or an ``apply`` may raise, and the value a probe then reads as."""


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


# =============================================================================
# The drivers
# =============================================================================


class Driver:
    """How a test opens a pool, borrows, and runs SQL with one driver and one API.

    By default the pool is a core :class:`~elasticpool.Pool` over the driver's
    ``connector``, borrowed with ``acquire()``; the drop-in faces override that.
    """

    name = ""
    kind = ""  # "asyncpg" or "psycopg"
    connector: Callable[[str], Any]

    def open(self, dsn: str, mode: Any) -> AbstractAsyncContextManager[Any]:
        """A pool of one connection (so one backend) with reset ``mode``."""
        return Pool(self.connector(dsn), max_connections=1, reset=mode)

    def borrow(self, pool: Any) -> AbstractAsyncContextManager[Any]:
        return pool.acquire()  # type: ignore[no-any-return]

    async def warm(self, pool: Any) -> None:
        """Borrow and return once, so the borrower under test is not the connection's first.

        asyncpg's connector tracks what borrowers run from a connection's first
        reset on (the first return gets the whole reset): the state under test
        must be cleared by the tracked reset, not by that first one.
        """
        async with self.borrow(pool) as conn:
            await self.probe(conn, "SELECT 1")

    def pid(self, conn: Any) -> int:
        """The backend PID from the driver (no query: a failed transaction cannot run one)."""
        raise NotImplementedError

    async def run(self, conn: Any, sql: str) -> None:
        raise NotImplementedError

    async def value(self, conn: Any, sql: str) -> Any:
        """The single value of ``sql``, or the :data:`EXPECTED_ERRORS` text of its error."""
        raise NotImplementedError

    async def begin(self, conn: Any) -> None:
        """Open a transaction and run a statement in it."""
        raise NotImplementedError

    async def start(self, conn: Any) -> None:
        """Open a transaction whose first statement is still to come (psycopg: its own BEGIN)."""

    async def commit(self, conn: Any) -> None:
        """End the transaction ``value`` or ``run`` may have opened (psycopg), keeping state."""

    async def after_probe(self, conn: Any) -> None:
        """Leave ``conn`` idle after a probe of a fresh session (psycopg opened a transaction)."""

    async def probe(self, conn: Any, sql: str) -> Any:
        """``value(conn, sql)`` of an idle connection, which ``after_probe`` leaves idle again."""
        seen = await self.value(conn, sql)
        await self.after_probe(conn)
        return seen

    async def hand_back(self, conn: Any, returned: str) -> None:
        """Leave ``conn`` as the borrower returns it: ``"idle"`` or ``"in transaction"``."""
        if returned == "in transaction":
            await self.begin(conn)
        else:
            await self.commit(conn)

    @asynccontextmanager
    async def borrow_again(self, pool: Any, pid: int) -> AsyncIterator[Any]:
        """The next borrower, checked to be on backend ``pid``, the one the last borrower left."""
        async with self.borrow(pool) as conn:
            assert self.pid(conn) == pid, "not the same backend: the test would prove nothing"
            yield conn

    async def prepare(self, conn: Any, keep: list[Any]) -> None:
        """Prepare :data:`DRIVER_STATEMENT` with the driver's own API (kept alive in ``keep``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class AsyncpgDriver(Driver):
    kind = "asyncpg"
    connector = AsyncpgConnector

    def pid(self, conn: Any) -> int:
        return int(conn.get_server_pid())

    async def run(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    async def value(self, conn: Any, sql: str) -> Any:
        try:
            return await conn.fetchval(sql)
        except asyncpg.PostgresError as exc:
            return EXPECTED_ERRORS[_sqlstate(exc) or ""]

    async def begin(self, conn: Any) -> None:
        await conn.execute("BEGIN; SELECT 1")

    async def start(self, conn: Any) -> None:
        await conn.execute("BEGIN")

    async def prepare(self, conn: Any, keep: list[Any]) -> None:
        statement = await conn.prepare(f"SELECT '{DRIVER_STATEMENT}'::text")
        assert await statement.fetchval() == DRIVER_STATEMENT
        keep.append(statement)


class CoreAsyncpg(AsyncpgDriver):
    name = "core-asyncpg"


class FaceAsyncpg(AsyncpgDriver):
    name = "create_pool"

    def open(self, dsn: str, mode: Any) -> AbstractAsyncContextManager[Any]:
        return create_pool(dsn, min_size=1, max_size=1, reset=mode)


class PsycopgDriver(Driver):
    kind = "psycopg"
    connector = PsycopgConnector

    def pid(self, conn: Any) -> int:
        return int(conn.info.backend_pid)

    async def run(self, conn: Any, sql: str) -> None:
        await conn.execute(sql, prepare=False)

    async def value(self, conn: Any, sql: str) -> Any:
        cur = conn.cursor()
        try:
            await cur.execute(sql, prepare=False)
        except psycopg.Error as exc:
            return EXPECTED_ERRORS[_sqlstate(exc) or ""]
        row = await cur.fetchone()
        return row[0]

    async def begin(self, conn: Any) -> None:
        await conn.execute("SELECT 1", prepare=False)  # psycopg sends BEGIN first

    async def commit(self, conn: Any) -> None:
        await conn.commit()

    async def after_probe(self, conn: Any) -> None:
        await conn.rollback()

    async def prepare(self, conn: Any, keep: list[Any]) -> None:
        cur = await conn.execute(f"SELECT '{DRIVER_STATEMENT}'::text", prepare=True)
        assert (await cur.fetchone())[0] == DRIVER_STATEMENT
        assert conn._prepared._names, "psycopg should have prepared it server-side"


class CorePsycopg(PsycopgDriver):
    name = "core-psycopg"


class FacePsycopg(PsycopgDriver):
    name = "AsyncConnectionPool"

    def open(self, dsn: str, mode: Any) -> AbstractAsyncContextManager[Any]:
        return AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False, reset_mode=mode)

    @asynccontextmanager
    async def borrow(self, pool: Any) -> AsyncIterator[Any]:
        # getconn/putconn, not connection(): that block commits, and these
        # tests need to hand back a transaction left open.
        conn = await pool.getconn()
        try:
            yield conn
        finally:
            await pool.putconn(conn)


DRIVERS = [CoreAsyncpg(), CorePsycopg(), FaceAsyncpg(), FacePsycopg()]


# =============================================================================
# Fixtures
# =============================================================================


@dataclasses.dataclass(frozen=True)
class Names:
    """Server objects the states refer to: a role, an advisory lock key, a sequence."""

    role: str
    key: int
    seq: str


@pytest.fixture(scope="module")
def names(pg_server: Any) -> Iterator[Names]:
    """A throwaway role and sequence for the whole module, dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    made = Names(
        role=f"ep_iso_role_{suffix}", key=uuid.uuid4().int % 2**31, seq=f"ep_iso_seq_{suffix}"
    )
    pg_server.psql(
        f"CREATE ROLE {made.role}; CREATE SEQUENCE public.{made.seq};"
        f" GRANT USAGE ON SEQUENCE public.{made.seq} TO {made.role}"
    )
    try:
        yield made
    finally:
        pg_server.psql(f"DROP SEQUENCE public.{made.seq}; DROP ROLE {made.role}")


# =============================================================================
# The matrix
# =============================================================================


def _cases() -> Iterator[Any]:
    for state in STATES:
        returns = ["idle", "in transaction"] if state.scope == "session" else ["in transaction"]
        for returned in returns:
            for mode in ("session", "rollback" if state.scope == "session" else "none"):
                yield pytest.param(state, returned, mode, id=f"{state.name}-{returned}-{mode}")


@pytest.mark.parametrize("driver", DRIVERS, ids=str)
@pytest.mark.parametrize(("state", "returned", "mode"), list(_cases()))
async def test_next_borrower_sees_the_state_only_without_a_session_reset(
    pg_server: Any, names: Names, *, driver: Driver, state: State, returned: str, mode: str
) -> None:
    """Under ``reset="session"`` the state is gone for the next borrower; weaker resets keep it."""
    keep: list[Any] = []
    async with driver.open(pg_server.dsn(), mode) as pool:
        await driver.warm(pool)
        async with driver.borrow(pool) as conn:
            pid = driver.pid(conn)
            fresh = await driver.probe(conn, state.probe)
            if state.scope == "transaction":
                await driver.start(conn)
            if state.prepare_via_driver:
                await driver.prepare(conn, keep)
            else:
                apply = state.apply.format(role=names.role, key=names.key, seq=names.seq)
                if state.fails:
                    with pytest.raises((asyncpg.PostgresError, psycopg.Error)) as failed:
                        await driver.run(conn, apply)
                    assert _sqlstate(failed.value) == "22012"
                else:
                    await driver.run(conn, apply)
            if state.scope == "session":
                await driver.commit(conn)
            dirty = await driver.value(conn, state.probe)
            assert dirty != fresh, "the state was not set: the probe cannot tell"
            if state.scope == "session":
                await driver.hand_back(conn, returned)

        async with driver.borrow_again(pool, pid) as conn:
            seen = await driver.probe(conn, state.probe)

    hidden = (
        mode == "session"
        or (
            mode == "rollback"
            and returned == "in transaction"
            and driver.kind in state.dropped_by_rollback
        )
        # psycopg_pool rolls back a transaction given back whatever the reset, and so
        # does its drop-in face (its reset_mode only adds to that).
        or (isinstance(driver, FacePsycopg) and state.scope == "transaction")
    )
    assert seen == (fresh if hidden else dirty)


SESSION_STATES = sorted(
    (s for s in STATES if s.scope == "session"),
    key=lambda s: s.name == "session characteristics",  # READ ONLY last: nextval needs writes
)


@pytest.mark.parametrize("driver", DRIVERS, ids=str)
@pytest.mark.parametrize("returned", ["idle", "in transaction"])
async def test_all_session_state_at_once_is_gone_after_a_session_reset(
    pg_server: Any, names: Names, driver: Driver, returned: str
) -> None:
    """Every session-level state together (as the role, read-only last) is gone after one reset."""
    keep: list[Any] = []
    async with driver.open(pg_server.dsn(), "session") as pool:
        await driver.warm(pool)
        async with driver.borrow(pool) as conn:
            pid = driver.pid(conn)
            fresh = {s.name: await driver.probe(conn, s.probe) for s in SESSION_STATES}
            for state in SESSION_STATES:
                if state.prepare_via_driver:
                    await driver.prepare(conn, keep)
                else:
                    sql = state.apply.format(role=names.role, key=names.key, seq=names.seq)
                    await driver.run(conn, sql)
                await driver.commit(conn)
            dirty = {s.name: await driver.value(conn, s.probe) for s in SESSION_STATES}
            assert all(dirty[name] != fresh[name] for name in fresh), (fresh, dirty)
            await driver.hand_back(conn, returned)

        async with driver.borrow_again(pool, pid) as conn:
            seen = {s.name: await driver.probe(conn, s.probe) for s in SESSION_STATES}
        assert seen == fresh


async def test_asyncpg_statement_deallocated_by_the_reset_can_still_be_garbage_collected(
    pg_server: Any,
) -> None:
    """A borrower's prepared statement, dropped by the reset and then collected, breaks nothing."""
    async with Pool(AsyncpgConnector(pg_server.dsn()), max_connections=1, reset="session") as pool:
        async with pool.acquire() as conn:
            statement = await conn.prepare(f"SELECT '{DRIVER_STATEMENT}'::text")
            name = statement.get_name()
            first = conn
        del statement  # asyncpg queues a protocol-level Close of a name the server no longer has
        async with pool.acquire() as conn:
            assert conn is first
            raw: Any = conn  # asyncpg's private attributes
            assert raw._stmts_to_close, "asyncpg should have queued the close"
            assert await conn.fetchval("SELECT $1::int + 1", 41) == 42  # sends the queued close
            assert not raw._stmts_to_close
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_prepared_statements WHERE name = $1", name
                )
                == 0
            )
        assert pool.stats().closed_broken == 0


async def test_asyncpg_reset_with_no_statement_cache_keeps_the_connection(pg_server: Any) -> None:
    """With ``statement_cache_size=0`` the reset drops every statement and keeps the connection."""
    connector = AsyncpgConnector(pg_server.dsn(), statement_cache_size=0)
    async with Pool(connector, max_connections=1, reset="session") as pool:
        async with pool.acquire() as conn:
            raw: Any = conn  # asyncpg's private attributes
            assert not list(raw._stmt_cache.iter_statements())
            await conn.execute("PREPARE iso_plan AS SELECT 1")
            statement = await conn.prepare("SELECT 2")
            assert await statement.fetchval() == 2
            first = conn
        async with pool.acquire() as conn:
            assert conn is first
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
        assert pool.stats().closed_broken == 0
