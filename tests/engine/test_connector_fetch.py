"""``Connector.fetch`` without a server: the fake's, and what a connector without one gets.

Against a real server, each adapter's ``fetch`` is tested in
``tests/asyncpg/test_fetch.py`` and ``tests/psycopg/test_fetch.py``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from elasticpool import Pool, PoolSettings, PostgresMembership
from elasticpool._connector import fetch_of
from elasticpool._sql import SERVER_LIMITS_SQL, check_placeholders
from elasticpool.replicas import REPLAY_LAG_SQL, RoutingPool
from elasticpool.testing import FakeConnection, FakeConnector, FakeDisconnect

from ..helpers import eventually

pytestmark = pytest.mark.anyio


class OldConnector:
    """A connector written before ``fetch`` existed: every other method, by a fake."""

    def __init__(self) -> None:
        self.inner = FakeConnector()

    async def connect(self) -> FakeConnection:
        return await self.inner.connect()

    async def close(self, conn: FakeConnection) -> None:
        await self.inner.close(conn)

    def terminate(self, conn: FakeConnection) -> None:
        self.inner.terminate(conn)

    def is_closed(self, conn: FakeConnection) -> bool:
        return self.inner.is_closed(conn)

    async def ping(self, conn: FakeConnection) -> None:
        await self.inner.ping(conn)

    def needs_reset(self, conn: FakeConnection, mode: Any) -> bool:
        return self.inner.needs_reset(conn, mode)

    async def reset(self, conn: FakeConnection, mode: Any) -> None:
        await self.inner.reset(conn, mode)

    def is_disconnect(self, exc: BaseException) -> bool:
        return self.inner.is_disconnect(exc)

    def transaction(
        self, conn: FakeConnection, *, readonly: bool = False
    ) -> AbstractAsyncContextManager[None]:
        return self.inner.transaction(conn, readonly=readonly)


# =============================================================================
# the placeholder rule
# =============================================================================


@pytest.mark.parametrize(
    ("sql", "count"),
    [("SELECT 1", 0), ("SELECT $1", 1), ("SELECT $1, $2, $3", 3), ("SELECT $1 || '$'", 1)],
)
def test_placeholders_in_order_once_each_pass(sql: str, count: int) -> None:
    """``$1..$n`` in order, once each, one per argument: accepted."""
    check_placeholders(sql, count)


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("SELECT $1", 0),  # an argument missing
        ("SELECT 1", 1),  # an argument too many
        ("SELECT $2, $1", 2),  # out of order
        ("SELECT $1, $1", 1),  # twice
        ("SELECT $2", 1),  # a gap
    ],
)
def test_placeholders_otherwise_are_a_value_error(sql: str, count: int) -> None:
    """Any other use of placeholders is refused with the rule and the statement."""
    with pytest.raises(ValueError, match=r"placeholders must be \$1\.\.\$n in order, once each"):
        check_placeholders(sql, count)


# =============================================================================
# FakeConnector.fetch
# =============================================================================


async def test_fake_fetch_returns_the_scripted_rows_and_records_the_statement() -> None:
    """The fake answers with ``rows(sql, args)`` as tuples, counts a use, records the statement."""
    connector = FakeConnector(rows=lambda sql, args: [[args[0] * 2, sql]])
    conn = await connector.connect()
    assert await connector.fetch(conn, "SELECT $1", 21) == [(42, "SELECT $1")]
    assert connector.statements == [("SELECT $1", (21,))]
    assert conn.uses == 1
    assert await FakeConnector().fetch(conn, "SELECT 1") == []  # no script: no rows


async def test_fake_fetch_checks_placeholders_and_fails_on_a_dead_connection() -> None:
    """Bad placeholders are a ValueError before anything runs; a dead connection raises."""
    connector = FakeConnector()
    conn = await connector.connect()
    with pytest.raises(ValueError, match="placeholders"):
        await connector.fetch(conn, "SELECT $1")
    assert (connector.statements, conn.uses) == ([], 0)
    conn.kill()
    with pytest.raises(FakeDisconnect):
        await connector.fetch(conn, "SELECT 1")


async def test_a_percentage_total_is_resolved_through_the_connectors_fetch() -> None:
    """``total_max_connections="80%"`` asks the server's limits through ``fetch`` at open."""
    connector = FakeConnector(rows=lambda sql, args: [(100, 3)] if sql == SERVER_LIMITS_SQL else [])
    async with Pool(connector, total_max_connections="80%") as pool:
        assert pool.settings.total_max_connections == 77  # floor(0.8 * (100 - 3))
        assert pool.settings == PoolSettings(total_max_connections="80%").with_server_limits(100, 3)
    assert connector.statements == [(SERVER_LIMITS_SQL, ())]
    assert connector.open == set()


# =============================================================================
# a connector without fetch
# =============================================================================


async def test_a_connector_without_fetch_still_serves_a_pool() -> None:
    """The pool alone never needs ``fetch``: borrow, release and close work as before."""
    connector = OldConnector()
    async with Pool(connector, max_connections=2) as pool, pool.acquire() as conn:
        await conn.execute()
    assert connector.inner.connects_ok == 1
    assert connector.inner.open == set()


def test_fetch_of_names_the_missing_method_and_who_needs_it() -> None:
    """``fetch_of`` returns a connector's fetch, or a TypeError naming both sides."""
    fake = FakeConnector()
    assert fetch_of(fake, "x") == fake.fetch
    with pytest.raises(
        TypeError,
        match=r"^the caller needs the connector's fetch\(conn, sql, \*args\) method, "
        r"which OldConnector does not have",
    ):
        fetch_of(OldConnector(), "the caller")


async def test_a_percentage_total_without_fetch_is_a_type_error_at_open() -> None:
    """A percentage total on a connector without ``fetch`` fails at open, opening nothing."""
    connector = OldConnector()
    pool = Pool(connector, total_max_connections="80%")
    with pytest.raises(TypeError, match="total_max_connections as a percentage needs"):
        await pool.open()
    assert connector.inner.connects_started == 0


async def test_postgres_membership_without_fetch_is_a_type_error_at_open() -> None:
    """PostgresMembership needs ``fetch`` for its heartbeats: the pool's open says so at once."""
    connector = OldConnector()
    pool = Pool(connector, total_max_connections=10, membership=PostgresMembership())
    with pytest.raises(TypeError, match=r"PostgresMembership needs the connector's fetch"):
        await pool.open()
    assert connector.inner.connects_started == 0


def test_routing_pool_max_lag_without_fetch_is_a_type_error_unless_lag_is_given() -> None:
    """The default lag check runs through each replica's connector: without fetch, pass lag=."""
    primary, replica = Pool(FakeConnector()), Pool(OldConnector())
    with pytest.raises(TypeError, match=r"RoutingPool\(max_lag=\.\.\.\) without lag= needs"):
        RoutingPool(primary, [replica], max_lag=1.0)

    async def lag(conn: Any) -> float:
        return 0.0

    RoutingPool(primary, [replica], max_lag=1.0, lag=lag)
    RoutingPool(primary, [replica])  # no max_lag: no lag check


async def test_routing_pool_checks_lag_through_the_replicas_connector() -> None:
    """With ``max_lag`` and no ``lag``, replay_lag asks each replica through its connector."""
    lags = {"behind": 9.5, "current": 0.0}

    def answer(name: str) -> Any:
        return lambda sql, args: [(lags[name],)] if sql == REPLAY_LAG_SQL else []

    behind, current = FakeConnector(rows=answer("behind")), FakeConnector(rows=answer("current"))
    router = RoutingPool(
        Pool(FakeConnector(), name="primary"),
        [Pool(behind, name="behind"), Pool(current, name="current")],
        max_lag=1.0,
        lag_check_interval=0.05,
    )
    async with router:
        stats = await eventually(router.stats, lambda s: not s.replicas[0].healthy, "quarantine")
    assert stats.replicas[0].last_error == "replication lag"
    assert stats.replicas[1].healthy
    assert (REPLAY_LAG_SQL, ()) in behind.statements
    assert (REPLAY_LAG_SQL, ()) in current.statements
