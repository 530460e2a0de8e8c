"""Fleet budgets without a database: StaticMembership, a fleet of one, argument checks.

Pools here use :class:`elasticpool.testing.FakeConnector` and run on asyncio
and on trio in virtual time (the ``anyio_backend`` fixture of conftest.py).
:class:`~elasticpool.fleet.PostgresMembership` against a real server is in
test_fleet_postgres.py.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
from typing import Any

import anyio
import hypothesis.strategies as st
import pytest
from hypothesis import given

from elasticpool import ElasticPoolWarning, Pool, PoolTimeout
from elasticpool.fleet import FleetStatus, PostgresMembership, StaticMembership
from elasticpool.fleet._tags import application_name, fleet_backends
from elasticpool.testing import FakeConnector

pytestmark = pytest.mark.anyio


def static_pool(instances: int, index: int | None = None, **settings: Any) -> Pool[Any]:
    return Pool(
        FakeConnector(), membership=StaticMembership(instances, index=index), name="api", **settings
    )


# ----------------------------------------------------------------------------- StaticMembership


async def test_static_split_with_index_hands_out_the_remainder() -> None:
    """Three copies with an index split a total of 10 as 4/3/3: the whole total is used."""
    pools = [static_pool(3, i, total_max_connections=10) for i in range(3)]
    for p in pools:
        await p.open()
    try:
        assert [p.stats().max for p in pools] == [4, 3, 3]
        assert pools[0].fleet() == FleetStatus(
            pool="api",
            instance="0",
            membership="static",
            limit=4,
            share=4,
            fleet_total=10,
            source="total",
        )
        assert [p.fleet().instance for p in pools] == ["0", "1", "2"]
    finally:
        for p in pools:
            await p.close()


async def test_static_split_without_index_is_hasuras_floor() -> None:
    """Without an index each of three copies takes 10 // 3 = 3; the remainder stays unused."""
    pools = [static_pool(3, total_max_connections=10) for _ in range(3)]
    for p in pools:
        await p.open()
    try:
        assert [p.stats().max for p in pools] == [3, 3, 3]
        status = pools[2].fleet()
        assert (status.instance, status.limit, status.share, status.fleet_total) == ("", 3, 3, 10)
    finally:
        for p in pools:
            await p.close()


async def test_static_limit_caps_borrowers() -> None:
    """A copy's limit is a real cap: its fourth concurrent borrower waits for a return."""
    async with static_pool(3, total_max_connections=10, pool_timeout=1.0) as pool:
        async with pool.acquire(), pool.acquire(), pool.acquire():
            with pytest.raises(PoolTimeout):
                async with pool.acquire(timeout=0.1):
                    pass
        stats = pool.stats()
        assert (stats.size, stats.max, stats.timeouts) == (3, 3, 1)


async def test_more_instances_than_total_without_index_gives_nothing() -> None:
    """8 copies of a total of 5 without an index each get 5 // 8 = 0: callers time out."""
    pool = static_pool(8, total_max_connections=5, pool_timeout=0.5)
    with pytest.warns(ElasticPoolWarning, match=r"share of total_max_connections 5 .* is 0"):
        await pool.open()
    async with pool:
        assert (pool.stats().max, pool.fleet().share) == (0, 0)
        started = anyio.current_time()
        with pytest.raises(PoolTimeout, match=r"no connection within 0\.5s"):
            await pool.acquire()
        assert anyio.current_time() - started >= 0.5
        assert pool.stats().size == 0


async def test_more_instances_than_total_with_index_gives_one_each_to_the_first() -> None:
    """8 indexed copies of a total of 5: copies 0-4 get one connection each, 5-7 none."""
    pools = [static_pool(8, i, total_max_connections=5) for i in range(8)]
    for i, p in enumerate(pools):
        if i < 5:
            await p.open()
        else:
            with pytest.warns(ElasticPoolWarning, match=rf"for copy {i} of 8 is 0"):
                await p.open()
    try:
        assert [p.stats().max for p in pools] == [1, 1, 1, 1, 1, 0, 0, 0]
        async with pools[4].acquire() as conn:
            await conn.execute()
    finally:
        for p in pools:
            await p.close()


async def test_static_copy_with_nothing_warns_when_it_opens() -> None:
    """A copy whose share of the total is 0 says so with a warning when it opens."""
    with pytest.warns(ElasticPoolWarning, match="0"):
        async with static_pool(8, total_max_connections=5):
            pass


async def test_static_with_only_max_connections_is_per_instance() -> None:
    """Only max_connections set: each copy gets it in full and the fleet total is unbounded."""
    async with static_pool(4, 1, max_connections=7) as pool:
        assert pool.fleet() == FleetStatus(
            pool="api",
            instance="1",
            membership="static",
            limit=7,
            share=7,
            fleet_total=None,
            source="max_connections",
        )


async def test_static_with_no_limit_divides_the_default_total() -> None:
    """Neither limit set: the default total of 50 is divided (50 // 4 = 12)."""
    async with static_pool(4) as pool:
        status = pool.fleet()
        assert (status.limit, status.fleet_total, status.source) == (12, 50, "default total")


_fresh_totals = itertools.count(37, 2)


async def test_static_with_both_limits_divides_the_total() -> None:
    """Both limits set: the total wins (with a warning that max_connections is ignored)."""
    total = next(_fresh_totals)  # the warning is given once per process for a pair of values
    with pytest.warns(ElasticPoolWarning, match="max_connections .* is ignored"):
        pool = static_pool(2, 0, total_max_connections=total, max_connections=11)
    async with pool:
        status = pool.fleet()
        assert (status.limit, status.fleet_total, status.source) == (
            total // 2 + 1,
            total,
            "total",
        )


async def test_static_small_total_is_raised_unless_allowed() -> None:
    """A total below 5 is raised to 5 with a warning; allow_small_total keeps 3 (1/1/1)."""
    with pytest.warns(ElasticPoolWarning, match="below the minimum of 5"):
        pool = static_pool(5, total_max_connections=3)
    with pytest.warns(ElasticPoolWarning, match="below the minimum of 5"):  # again at open
        await pool.open()
    try:
        assert pool.stats().max == 1  # 5 // 5
    finally:
        await pool.close()
    pools = [static_pool(3, i, total_max_connections=3, allow_small_total=True) for i in range(3)]
    for p in pools:
        await p.open()
    try:
        assert [p.stats().max for p in pools] == [1, 1, 1]
        assert pools[0].fleet().fleet_total == 3
    finally:
        for p in pools:
            await p.close()


@pytest.mark.parametrize(
    ("instances", "kind"),
    [
        (0, ValueError),
        (-1, ValueError),
        (True, TypeError),
        (2.0, TypeError),
        ("3", TypeError),
        (None, TypeError),
    ],
)
def test_static_instances_must_be_a_positive_integer(instances: Any, kind: type) -> None:
    """instances must be an integer >= 1: a bool, float or string is a TypeError, 0 a ValueError."""
    with pytest.raises(kind, match=r"instances must be an integer >= 1 \(got "):
        StaticMembership(instances)


@pytest.mark.parametrize(
    ("index", "kind"),
    [(-1, ValueError), (3, ValueError), (True, TypeError), (1.0, TypeError), ("0", TypeError)],
)
def test_static_index_must_be_in_range(index: Any, kind: type) -> None:
    """index must be an integer in [0, instances - 1]: a wrong type is a TypeError."""
    with pytest.raises(kind, match=r"index must be an integer in \[0, 2\] or None \(got "):
        StaticMembership(3, index=index)


def test_static_repr() -> None:
    """The repr shows the instance count and the index."""
    assert repr(StaticMembership(3, index=1)) == "StaticMembership(instances=3, index=1)"


# ----------------------------------------------------------------------------- a fleet of one


async def test_fleet_of_one_without_membership() -> None:
    """Without a membership the pool is a fleet of one: its share is the whole total."""
    async with Pool(FakeConnector(), total_max_connections=10, name="solo") as pool:
        assert pool.fleet() == FleetStatus(
            pool="solo",
            instance="",
            membership="none",
            limit=10,
            share=10,
            fleet_total=10,
            source="total",
        )
        await pool.resize(4)
        status = pool.fleet()
        assert (status.limit, status.share) == (4, 10)  # the limit now, the share by settings


async def test_fleet_of_one_with_only_max_connections() -> None:
    """Only max_connections: a per-instance limit, fleet total None."""
    async with Pool(FakeConnector(), max_connections=6, name="solo") as pool:
        status = pool.fleet()
        assert (status.limit, status.share, status.fleet_total, status.source) == (
            6,
            6,
            None,
            "max_connections",
        )
        assert (status.members, status.healthy, status.last_heartbeat_age) == ((), True, None)


@pytest.mark.parametrize("membership", [None, StaticMembership(2)])
async def test_set_fleet_total_needs_a_coordinating_membership(membership: Any) -> None:
    """set_fleet_total without PostgresMembership is a RuntimeError naming the pool."""
    async with Pool(FakeConnector(), total_max_connections=10, membership=membership) as pool:
        with pytest.raises(RuntimeError, match="pool 'default' has no coordinating membership"):
            await pool.set_fleet_total(20)
        assert pool.fleet().fleet_total == 10


# ----------------------------------------------------------------------------- PostgresMembership


def test_postgres_membership_defaults() -> None:
    """Defaults: a heartbeat a second, timeout one interval, a lease of five intervals.

    The instance id a person can read: host:pid:random, within a tag's 24 characters.
    """
    m = PostgresMembership(heartbeat_interval=0.5)
    assert (m.heartbeat_interval, m.heartbeat_timeout, m.lease_ttl) == (0.5, 0.5, 2.5)
    assert m.create_tables is True
    host, pid, rand = m.instance_id.split(":")
    assert host == socket.gethostname()[:10]
    assert (pid, len(rand)) == (str(os.getpid()), 4)
    assert len(m.instance_id) <= 24, "a tag keeps it whole"
    assert m.instance_id != PostgresMembership().instance_id
    assert (m.reserve, m.lock_timeout) == (None, 0.05)
    assert repr(PostgresMembership(instance_id="x")) == (
        "PostgresMembership(table='elasticpool_fleet', instance_id='x', "
        "heartbeat_interval=1, lease_ttl=5)"
    )


def test_postgres_membership_quotes_identifiers() -> None:
    """Table and schema names are quoted identifiers in the DDL (a quote is doubled)."""
    ddl = PostgresMembership(table='lease "t"', schema="my schema").create_tables_sql()
    assert 'CREATE TABLE IF NOT EXISTS "my schema"."lease ""t"""' in ddl
    assert '"my schema"."lease ""t""_config"' in ddl


@pytest.mark.parametrize("name", ["table", "schema", "instance_id"])
@pytest.mark.parametrize(
    ("value", "kind"), [("", ValueError), ("a\x00b", ValueError), (5, TypeError)]
)
def test_postgres_membership_names_must_be_non_empty_strings(
    name: str, value: Any, kind: type
) -> None:
    """table, schema and instance_id must be non-empty strings without NUL (else a TypeError)."""
    with pytest.raises(kind, match=rf"{name} must be a non-empty string \(got "):
        PostgresMembership(**{name: value})


@pytest.mark.parametrize("interval", [0, -1.0, 3600.5, math.nan, math.inf])
def test_postgres_membership_heartbeat_interval_range(interval: float) -> None:
    """heartbeat_interval must be in (0, 3600] seconds."""
    with pytest.raises(ValueError, match=r"heartbeat_interval must be in \(0, 3600\] seconds"):
        PostgresMembership(heartbeat_interval=interval)


@pytest.mark.parametrize("name", ["heartbeat_interval", "heartbeat_timeout", "lease_ttl"])
@pytest.mark.parametrize("value", ["1", True, [1]])
def test_postgres_membership_seconds_of_the_wrong_type(name: str, value: Any) -> None:
    """A time that is not a number (a string, a bool) is a TypeError naming it, as PoolSettings."""
    with pytest.raises(TypeError, match=rf"^{name} must be "):
        PostgresMembership(**{name: value})


@pytest.mark.parametrize("ttl", [1.9, 0, -5])
def test_postgres_membership_lease_ttl_at_least_two_intervals(ttl: float) -> None:
    """lease_ttl must be at least two heartbeat intervals."""
    with pytest.raises(ValueError, match=r"lease_ttl must be >= 2 \* heartbeat_interval \(2s\)"):
        PostgresMembership(heartbeat_interval=1.0, lease_ttl=ttl)


@pytest.mark.parametrize("timeout", [0, -1, 5.0, 6.0])
def test_postgres_membership_heartbeat_timeout_below_the_ttl(timeout: float) -> None:
    """heartbeat_timeout must be in (0, lease_ttl) seconds."""
    with pytest.raises(ValueError, match=r"heartbeat_timeout must be in \(0, lease_ttl=5\)"):
        PostgresMembership(heartbeat_interval=1.0, heartbeat_timeout=timeout)


@pytest.mark.parametrize(
    "kwargs", [{"lease_ttl": math.inf}, {"lease_ttl": math.nan}, {"heartbeat_interval": True}]
)
def test_postgres_membership_rejects_non_finite_ttl_and_bools(kwargs: dict[str, Any]) -> None:
    """A non-finite lease_ttl or a bool interval is an error naming that argument."""
    name = next(iter(kwargs))
    try:
        PostgresMembership(**kwargs)
    except (ValueError, TypeError) as exc:
        if not str(exc).startswith(name):
            pytest.fail(f"the error names another argument: {exc}")
    else:
        pytest.fail(f"{kwargs} accepted")


@pytest.mark.parametrize("value", [-1, 3601, math.nan, math.inf])
def test_postgres_membership_check_interval_range(value: float) -> None:
    """client_connection_check_interval must be None or in [0, 3600] seconds."""
    with pytest.raises(
        ValueError, match=r"client_connection_check_interval must be None or in \[0, 3600\]"
    ):
        PostgresMembership(client_connection_check_interval=value)


# ----------------------------------------------------------------------------- the fleet's tag

names = st.text(min_size=1, max_size=80)


@given(pool=names, instance=names, prefix=st.none() | st.text(max_size=80))
def test_tag_fits_the_server_and_reads_back(pool: str, instance: str, prefix: str | None) -> None:
    """Any pool, instance and prefix give a name the server keeps whole, read back as theirs."""
    name = application_name(pool, instance, prefix)
    assert len(name.encode()) <= 63
    assert all(" " <= c <= "~" for c in name)
    assert name.count("|") == 2
    assert fleet_backends([name], pool, [instance]) == (1, 0)
    assert fleet_backends([name], pool, ["someone else"]) == (1, 1)
    assert fleet_backends([name], pool + "x", [instance]) == (0, 0)


def test_tag_keeps_short_names_readable_and_hashes_long_ones() -> None:
    """Short ASCII names are kept as they are; long or non-ASCII ones are cut with a hash."""
    assert application_name("api", "a1b2c3d4e5f6") == "elasticpool|api|a1b2c3d4e5f6"
    assert application_name("api", "i", "web|1") == "web?1|api|i"
    long = application_name("p" * 40, "i" * 30, "x" * 40)
    prefix, pool, instance = long.split("|")
    assert (len(long), prefix, len(pool), len(instance)) == (63, "x" * 5, 32, 24)
    assert pool.startswith("p" * 23 + "~")
    assert instance.startswith("i" * 15 + "~")
    assert application_name("café", "i").split("|")[1].startswith("caf?~")
    assert application_name("café", "i") != application_name("cafè", "i")


def test_fleet_backends_counts_only_the_pools_tagged_backends() -> None:
    """Tagged backends of the pool count; those without a live lease are departed; others not."""
    seen = [
        "elasticpool|api|a",  # live
        "web|api|b",  # another prefix, departed
        "elasticpool|api|b",  # departed
        "elasticpool|api2|a",  # another pool
        "api",  # untagged
        "elasticpool|api|",  # no instance
        "psql",
    ]
    assert fleet_backends(seen, "api", ["a", "c"]) == (3, 2)


def test_the_fleet_package_never_imports_the_shell() -> None:
    """Memberships see the pool only through MemberPort: no module of fleet/ imports _pool."""
    import ast
    from pathlib import Path

    import elasticpool.fleet

    package = Path(elasticpool.fleet.__file__).parent
    found = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and "_pool" in node.module:
                found.append(f"{path.name}: from {'.' * node.level}{node.module}")
            if isinstance(node, ast.Import):
                found += [f"{path.name}: {a.name}" for a in node.names if "_pool" in a.name]
    assert found == []


async def test_a_membership_sees_the_pool_through_its_port() -> None:
    """join/run/leave/status get a MemberPort: name, settings, resize, stats; not the Pool."""
    from elasticpool.fleet import MemberPort

    seen: list[object] = []

    class Recording:
        async def join(self, pool: MemberPort) -> None:
            seen.append(pool)
            await pool.resize(3)

        async def run(self, pool: MemberPort) -> None:
            return None

        async def leave(self, pool: MemberPort) -> None:
            seen.append(pool)

        def status(self, pool: MemberPort) -> FleetStatus:
            return FleetStatus(pool.name, "", "recording", pool.stats().max, 3, None, "total")

    async with Pool(FakeConnector(), membership=Recording(), name="ported") as pool:
        assert pool.stats().max == 3
        assert pool.fleet().limit == 3
    port = seen[0]
    assert port is seen[1]
    assert not isinstance(port, Pool)
    assert (port.name, port.settings) == ("ported", pool.settings)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (0, ValueError),
        ("0%", ValueError),
        ("x%", ValueError),
        ("101%", ValueError),
        (2.5, TypeError),
    ],
)
def test_postgres_membership_database_budget_must_be_a_count_or_a_percentage(
    value: object, kind: type[Exception]
) -> None:
    """database_max_connections takes an integer >= 1 or '80%'; anything else names it."""
    with pytest.raises(kind, match=r"^database_max_connections must be an integer >= 1, a perc"):
        PostgresMembership(database_max_connections=value)  # type: ignore[arg-type]
    assert PostgresMembership(database_max_connections="80%").database_max_connections == "80%"
