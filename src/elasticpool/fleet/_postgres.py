"""Fleet membership coordinated through the PostgreSQL database itself.

Every instance of a pool (same pool name, same database) keeps a lease row
in a small table. Each heartbeat is one short transaction that, under a
transaction-scoped advisory lock, reaps expired leases, reads every live
member's demand, holdings and last grant, computes this member's share and
grant (:func:`elasticpool._limits.heartbeat_grant`) and writes its row back.
Lease times come from the database clock (``now()``), so instance clocks do
not matter. The pool's limit changes only through ``Pool.resize``.

See docs/fleet.md for the bound on how far the fleet can exceed its total,
and what happens when coordination fails.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from .._limits import (
    HYPERDRIVE_MINIMUM_TOTAL,
    Member,
    divide,
    heartbeat_grant,
    remaining_total,
    resolve_limit,
)
from ._base import FleetStatus, MemberStatus
from ._sql import fetch, quote_ident
from ._tags import application_name as tagged_name
from ._tags import fleet_backends, pool_tag

if TYPE_CHECKING:
    from .._pool import Freeze, Pool

__all__ = ["PostgresMembership"]

logger = logging.getLogger("elasticpool.fleet")


def _seconds(name: str, value: object, allowed: str) -> float:
    """A finite number of seconds, or a TypeError / ValueError naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {allowed} seconds (got {value!r})")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be {allowed} seconds (got {value!r})")
    return float(value)


def _check_total(total: object) -> None:
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 1):
        raise ValueError(f"total_max_connections must be an integer >= 1 (got {total!r})")


class PostgresMembership:
    """Share ``total_max_connections`` with every other instance of the pool, through PostgreSQL.

    ``table`` (and ``schema``) name the lease table; it and ``<table>_config``
    are created if missing (``create_tables=False`` to require them, e.g. for
    a role without CREATE rights: then an administrator runs
    :meth:`create_tables_sql`). Identifiers are quoted; every value is a
    parameter. ``instance_id`` defaults to a random id per process.

    Timing: a heartbeat every ``heartbeat_interval`` seconds (with ±10 %
    jitter), each bounded by ``heartbeat_timeout`` (default: the interval); a
    lease lives ``lease_ttl`` seconds (default 5 intervals) after its last
    heartbeat, by the database clock.

    Tagged connections: when the pool's connector has
    ``set_server_settings`` (the asyncpg and psycopg adapters and the fake
    do), every connection the member opens carries the ``application_name``
    ``<application_name>|<pool>|<instance_id>`` (prefix default
    ``"elasticpool"``, cut to fit PostgreSQL's 63 bytes; this replaces the
    connector's own ``application_name``), and, where the server accepts it
    (PostgreSQL 14+ on Linux, macOS, BSD), ``client_connection_check_interval``
    (default 2 s; ``None`` or 0: not set), so the server ends a killed
    member's queries soon instead of when they finish. Each heartbeat reads
    ``pg_stat_activity``: backends tagged with this pool and an instance that
    holds no live lease (a member killed mid-query, or expired) are held
    against the total until the server no longer shows them, and
    :meth:`Pool.fleet() <elasticpool.Pool.fleet>` reports the fleet's tagged
    backends as ``observed_backends``. With a connector that cannot be told
    (no ``set_server_settings``), ``application_name`` is only the name to
    count backends by (set it in the connector too).

    Failure: while heartbeats fail, the instance keeps its last limit for one
    ``lease_ttl`` (measured locally from the start of its last good
    heartbeat, which is never later than the database's expiry of its lease),
    then falls back: in ``limit_mode="strict"`` to 0 (nothing new is opened;
    borrowed connections drain), in ``"soft"`` to ``total // members`` of its
    last view, at most its last limit (a bounded overflow, for
    availability, as Hyperdrive does).

    It is not a lock service: the bound it keeps is documented, not absolute.
    """

    def __init__(
        self,
        *,
        table: str = "elasticpool_fleet",
        schema: str | None = None,
        instance_id: str | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float | None = None,
        lease_ttl: float | None = None,
        create_tables: bool = True,
        application_name: str | None = None,
        client_connection_check_interval: float | None = 2.0,
    ) -> None:
        for name, value in (
            ("table", table),
            ("schema", schema),
            ("instance_id", instance_id),
            ("application_name", application_name),
        ):
            if value is not None and (not isinstance(value, str) or not value or "\x00" in value):
                raise ValueError(f"{name} must be a non-empty string (got {value!r})")
        interval = _seconds("heartbeat_interval", heartbeat_interval, "in (0, 3600]")
        if not 0 < interval <= 3600:
            raise ValueError(f"heartbeat_interval must be in (0, 3600] seconds (got {interval!r})")
        ttl_range = f">= 2 * heartbeat_interval ({2 * interval:g}s)"
        ttl = 5 * interval if lease_ttl is None else _seconds("lease_ttl", lease_ttl, ttl_range)
        if ttl < 2 * interval:
            raise ValueError(f"lease_ttl must be {ttl_range} (got {lease_ttl!r})")
        timeout_range = f"in (0, lease_ttl={ttl:g})"
        timeout = (
            interval
            if heartbeat_timeout is None
            else _seconds("heartbeat_timeout", heartbeat_timeout, timeout_range)
        )
        if not 0 < timeout < ttl:
            raise ValueError(f"heartbeat_timeout must be {timeout_range} seconds (got {timeout!r})")
        heartbeat_interval = interval
        check = client_connection_check_interval
        if check is not None:
            check = _seconds("client_connection_check_interval", check, "None or in [0, 3600]")
            if not 0 <= check <= 3600:
                raise ValueError(
                    "client_connection_check_interval must be None or in [0, 3600] seconds "
                    f"(got {check!r})"
                )
        prefix = "" if schema is None else quote_ident(schema) + "."
        self._table = prefix + quote_ident(table)
        self._config = prefix + quote_ident(table + "_config")
        self._table_name = table if schema is None else f"{schema}.{table}"
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(timeout)
        self.lease_ttl = float(ttl)
        self.create_tables = create_tables
        self.application_name = application_name
        self.client_connection_check_interval = check or None
        # None: not asked yet; False: the server refused it (older than 14, or Windows).
        self._check_ok: bool | None = None if check else False
        self._tagged = False  # the connector puts the fleet's tag on its connections
        self._departed = 0
        # last good view
        self._members: tuple[MemberStatus, ...] = ()
        self._share = 0
        self._limit = 0
        self._total: int | None = None
        self._source = "total"
        self._last_ok: float | None = None
        self._healthy = False
        self._observed: int | None = None
        self._tables_ready = False
        self._failing = False
        self._beating = anyio.Lock()

    # ------------------------------------------------------------------ sql

    def create_tables_sql(self) -> str:
        """The DDL for the lease and config tables (for an administrator to run once)."""
        return (
            f"CREATE TABLE IF NOT EXISTS {self._table} ("
            " pool_name text NOT NULL,"
            " instance_id text NOT NULL,"
            " heartbeat_at timestamptz NOT NULL,"
            " expires_at timestamptz NOT NULL,"
            " demand integer NOT NULL DEFAULT 0,"
            " holding integer NOT NULL DEFAULT 0,"
            " share integer NOT NULL DEFAULT 0,"
            " granted integer NOT NULL DEFAULT 0,"
            " PRIMARY KEY (pool_name, instance_id));\n"
            f"CREATE TABLE IF NOT EXISTS {self._config} ("
            " pool_name text PRIMARY KEY,"
            " total_max_connections integer,"
            " updated_at timestamptz NOT NULL DEFAULT now());"
        )

    async def _ensure_tables(self, conn: Any) -> None:
        if self._tables_ready:
            return
        # CREATE TABLE IF NOT EXISTS is not safe against itself (concurrent
        # creators collide on pg_type's unique index): members joining together
        # take turns. Runs inside the caller's transaction.
        await fetch(
            conn,
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"elasticpool:create:{self._table_name}",
        )
        if not await self._tables_exist(conn):
            if not self.create_tables:
                raise RuntimeError(
                    f"lease table {self._table_name!r} is missing and create_tables is False"
                )
            for statement in self.create_tables_sql().split(";\n"):
                await fetch(conn, statement.rstrip(";"))
        self._tables_ready = True

    def _lock_key(self, pool: Pool[Any]) -> str:
        return f"elasticpool:{self._table_name}:{pool.name}"

    async def _heartbeat_tx(
        self, pool: Pool[Any], conn: Any, freeze: Freeze
    ) -> tuple[int, int, int | None, str, tuple[MemberStatus, ...], int | None]:
        """One heartbeat transaction; returns (share, grant, total, source, members, observed)."""
        if not self._tables_ready:
            async with pool._connector.transaction(conn):
                await self._ensure_tables(conn)
        if self._check_ok is None and self._tagged:
            await self._probe_check_interval(pool, conn)
        async with pool._connector.transaction(conn):
            await fetch(
                conn, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", self._lock_key(pool)
            )
            await fetch(
                conn,
                f"DELETE FROM {self._table} WHERE pool_name = $1 AND expires_at < now()",
                pool.name,
            )
            rows = await fetch(
                conn,
                "SELECT instance_id, demand, holding, granted,"
                " extract(epoch FROM now() - heartbeat_at)::float8"
                f" FROM {self._table} WHERE pool_name = $1",
                pool.name,
            )
            config = await fetch(
                conn,
                f"SELECT total_max_connections FROM {self._config} WHERE pool_name = $1",
                pool.name,
            )
            live_total = config[0][0] if config else None
            resolution = resolve_limit(
                pool.settings,
                fleet_total=live_total,
                allow_small_total=pool.settings.allow_small_total,
            )
            members = [
                Member(str(r[0]), int(r[1]), int(r[2]), int(r[3]))
                for r in rows
                if r[0] != self.instance_id
            ]
            demand, holding = freeze.demand, freeze.holding
            members.append(Member(self.instance_id, demand, holding, 0))
            ours, departed = await self._fleet_backends(pool, conn, members)
            total = resolution.fleet_total
            if total is None:  # only max_connections: fixed per instance, fleet unbounded
                share = grant = resolution.limit
                shares = dict.fromkeys((m.id for m in members), resolution.limit)
            else:
                share, grant = heartbeat_grant(total, members, self.instance_id, departed)
                shares = divide(remaining_total(total, departed), members)
            freeze.grant = grant  # from here a failure may or may not have committed it
            await fetch(
                conn,
                f"INSERT INTO {self._table} AS t (pool_name, instance_id, heartbeat_at,"
                " expires_at, demand, holding, share, granted)"
                " VALUES ($1, $2, now(), now() + make_interval(secs => $3), $4, $5, $6, $7)"
                " ON CONFLICT (pool_name, instance_id) DO UPDATE SET"
                " heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at,"
                " demand = EXCLUDED.demand, holding = EXCLUDED.holding,"
                " share = EXCLUDED.share, granted = EXCLUDED.granted",
                pool.name,
                self.instance_id,
                self.lease_ttl,
                demand,
                holding,
                share,
                grant,
            )
            ages = {str(r[0]): float(r[4]) for r in rows}
            view = tuple(
                MemberStatus(
                    id=m.id,
                    demand=m.demand,
                    holding=m.holding,
                    share=shares[m.id],
                    granted=grant if m.id == self.instance_id else m.granted,
                    heartbeat_age=0.0 if m.id == self.instance_id else ages.get(m.id, 0.0),
                )
                for m in sorted(members, key=lambda m: m.id)
            )
            observed = ours if self._tagged else await self._observed_backends(pool, conn)
            if departed and not self._departed:
                logger.info(
                    "pool %r: %d backends of departed fleet members still open, "
                    "held against the total %s until the server ends them",
                    pool.name,
                    departed,
                    total,
                )
            self._departed = departed
        return share, grant, total, resolution.source, view, observed

    async def _fleet_backends(
        self, pool: Pool[Any], conn: Any, members: list[Member]
    ) -> tuple[int, int]:
        """``(tagged backends of the fleet, of them departed)`` as ``pg_stat_activity`` has them.

        Departed: tagged with an instance that holds no live lease (see
        :func:`elasticpool.fleet._tags.fleet_backends`).
        """
        rows = await fetch(
            conn,
            "SELECT application_name FROM pg_stat_activity"
            " WHERE datname = current_database() AND strpos(application_name, $1) > 0",
            pool_tag(pool.name),
        )
        return fleet_backends((str(r[0]) for r in rows), pool.name, (m.id for m in members))

    async def _observed_backends(self, pool: Pool[Any], conn: Any) -> int | None:
        """Backends ``pg_stat_activity`` shows with the fleet's ``application_name`` (if given)."""
        name = self.application_name
        if name is None:
            return None
        rows = await fetch(
            conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
        )
        return int(rows[0][0])

    def _tag_connections(self, pool: Pool[Any]) -> None:
        """Tell the connector the settings every connection of this member opens with."""
        set_settings = getattr(pool._connector, "set_server_settings", None)
        if set_settings is None:
            return
        settings = {
            "application_name": tagged_name(pool.name, self.instance_id, self.application_name)
        }
        if self._check_ok and self.client_connection_check_interval is not None:
            ms = max(1, round(self.client_connection_check_interval * 1000))
            settings["client_connection_check_interval"] = f"{ms}ms"
        set_settings(settings)
        self._tagged = True

    async def _probe_check_interval(self, pool: Pool[Any], conn: Any) -> None:
        """Whether the server takes ``client_connection_check_interval`` (once; then tag with it).

        PostgreSQL before 14 does not know it, and a server that cannot poll
        for closed sockets (Windows) refuses any value but 0; either refuses a
        startup parameter it would not take, so it is only sent once accepted.
        """
        assert self.client_connection_check_interval is not None
        ms = max(1, round(self.client_connection_check_interval * 1000))
        try:
            async with pool._connector.transaction(conn):
                await fetch(
                    conn,
                    "SELECT set_config('client_connection_check_interval', $1, true)",
                    f"{ms}ms",
                )
        except Exception as exc:
            if pool._connector.is_disconnect(exc):
                raise
            logger.info(
                "pool %r: the server does not take client_connection_check_interval (%s); "
                "a killed member's queries run until they end",
                pool.name,
                exc,
            )
            self._check_ok = False
            return
        self._check_ok = True
        self._tag_connections(pool)

    # ------------------------------------------------------------------ membership

    async def join(self, pool: Pool[Any]) -> None:
        """First heartbeat, before anyone borrows: the pool starts at its grant."""
        await pool.resize(0)  # nothing opens before the fleet has a say
        self._tag_connections(pool)  # before the first connection: it is the fleet's too
        await self._beat(pool)

    async def run(self, pool: Pool[Any]) -> None:
        """Heartbeat until cancelled; early when callers queue at the limit.

        Demand is only seen at a heartbeat, so a caller queuing while its
        pool is at its limit (0 included) wakes the next one early, at most
        one early heartbeat per quarter interval.
        """
        while True:
            jitter = 1.0 + random.uniform(-0.1, 0.1)
            pool._fleet_demand = demand = anyio.Event()
            with anyio.move_on_after(self.heartbeat_interval * jitter):
                await demand.wait()
                await anyio.sleep(self.heartbeat_interval / 4)  # let demand gather
            await self._beat(pool)

    async def leave(self, pool: Pool[Any]) -> None:
        """Drop this instance's lease so its share returns to the others at once."""
        with contextlib.suppress(Exception), anyio.fail_after(self.heartbeat_timeout):
            async with pool._coordination() as conn, pool._connector.transaction(conn):
                await fetch(
                    conn,
                    f"DELETE FROM {self._table} WHERE pool_name = $1 AND instance_id = $2",
                    pool.name,
                    self.instance_id,
                )

    async def _beat(self, pool: Pool[Any]) -> None:
        async with self._beating:  # one heartbeat at a time per member (set_total runs one too)
            await self._beat_once(pool)

    async def _beat_once(self, pool: Pool[Any]) -> None:
        started = pool._now()
        try:
            with anyio.fail_after(self.heartbeat_timeout):
                async with (
                    pool._coordination(wait_own=self.heartbeat_timeout / 2) as conn,
                    pool._frozen() as freeze,
                ):
                    result = await self._heartbeat_tx(pool, conn, freeze)
                    share, grant, total, source, view, observed = result
                    freeze.apply(grant)
        except Exception as exc:
            await self._failed(pool, exc, started)
            return
        self._share, self._limit, self._total, self._source = share, grant, total, source
        self._members, self._observed = view, observed
        self._last_ok = started
        if self._failing:
            logger.info("pool %r: fleet coordination ok again (limit %d)", pool.name, grant)
        self._failing = False
        self._healthy = True

    async def _failed(self, pool: Pool[Any], exc: BaseException, started: float) -> None:
        if not self._failing:  # the first failure of a streak, even before any success
            logger.warning("pool %r: fleet heartbeat failed: %r", pool.name, exc)
        else:
            logger.debug("pool %r: fleet heartbeat failed again: %r", pool.name, exc)
        self._failing = True
        self._healthy = False
        last = self._last_ok
        if last is not None and started - last < self.lease_ttl:
            return  # keep the last limit for one ttl
        if pool.settings.limit_mode == "soft" and self._total is not None:
            members = max(1, len(self._members))
            fallback = max(0, min(self._limit, self._total // members))
        elif pool.settings.limit_mode == "soft" and last is None:
            fallback = 1  # never coordinated: one connection, for availability
        else:
            fallback = 0
        if pool.stats().max != fallback:
            logger.warning(
                "pool %r: no fleet coordination for %.1fs, falling back to limit %d (%s mode)",
                pool.name,
                started - (last if last is not None else started),
                fallback,
                pool.settings.limit_mode,
            )
            await pool.resize(fallback)

    # ------------------------------------------------------------------ live total

    async def set_total(self, pool: Pool[Any], total: int | None) -> None:
        """Set the fleet total for every instance of ``pool`` (``None``: back to the settings).

        Each instance adopts it at its next heartbeat, this one at once.
        """
        _check_total(total)
        if total is not None and total < HYPERDRIVE_MINIMUM_TOTAL:
            resolve_limit(  # warns, or not, exactly as the heartbeat will
                pool.settings.replace(total_max_connections=total),
                allow_small_total=pool.settings.allow_small_total,
            )
        async with pool._coordination() as conn, pool._connector.transaction(conn):
            await self.store_total(conn, pool.name, total)
        await self._beat(pool)

    async def store_total(self, conn: Any, pool_name: str, total: int | None) -> None:
        """Write the live fleet total of pool ``pool_name`` on ``conn``, without joining the fleet.

        What :meth:`set_total` writes, for tools that are not members
        (``elasticpool set-total``): every member adopts it at its next
        heartbeat. Run it inside a transaction on ``conn`` (an asyncpg or
        psycopg connection); the tables are created if missing and allowed.
        """
        _check_total(total)
        await self._ensure_tables(conn)
        await fetch(
            conn,
            f"INSERT INTO {self._config} (pool_name, total_max_connections, updated_at)"
            " VALUES ($1, $2, now()) ON CONFLICT (pool_name) DO UPDATE SET"
            " total_max_connections = EXCLUDED.total_max_connections, updated_at = now()",
            pool_name,
            total,
        )

    async def _tables_exist(self, conn: Any) -> bool:
        """Whether the lease table and its config table both exist (one query)."""
        rows = await fetch(
            conn,
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
            self._table,
            self._config,
        )
        return bool(rows[0][0])

    async def read_fleets(
        self, conn: Any, pool_name: str | None = None
    ) -> dict[str, tuple[int | None, tuple[MemberStatus, ...]]]:
        """The fleets in the lease table as the database has them now, without joining any.

        By pool name (only ``pool_name`` when given): the live total set with
        :meth:`set_total` (``None``: each member's settings) and the members
        whose lease has not expired, each with what it last reported (its
        ``share`` is the one it computed at its own last heartbeat). Read-only;
        empty when the tables do not exist. For tools that are not members
        (``elasticpool status``).
        """
        if not await self._tables_exist(conn):
            return {}
        where, args = ("", ()) if pool_name is None else (" AND pool_name = $1", (pool_name,))
        leases = await fetch(
            conn,
            "SELECT pool_name, instance_id, demand, holding, share, granted,"
            " extract(epoch FROM now() - heartbeat_at)::float8"
            f" FROM {self._table} WHERE expires_at >= now(){where}"
            " ORDER BY pool_name, instance_id",
            *args,
        )
        where = "" if pool_name is None else " WHERE pool_name = $1"
        configs = await fetch(
            conn, f"SELECT pool_name, total_max_connections FROM {self._config}{where}", *args
        )
        totals: dict[str, int | None] = {str(r[0]): r[1] for r in configs}
        members: dict[str, list[MemberStatus]] = {}
        for r in leases:
            members.setdefault(str(r[0]), []).append(
                MemberStatus(str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]))
            )
        return {
            name: (totals.get(name), tuple(members.get(name, ())))
            for name in sorted(totals.keys() | members.keys())
        }

    # ------------------------------------------------------------------ status

    def status(self, pool: Pool[Any]) -> FleetStatus:
        now = pool._now()
        return FleetStatus(
            pool=pool.name,
            instance=self.instance_id,
            membership="postgres",
            limit=pool.stats().max,
            share=self._share,
            fleet_total=self._total,
            source=self._source,
            members=self._members,
            observed_backends=self._observed,
            departed_backends=self._departed,
            healthy=self._healthy,
            last_heartbeat_age=None if self._last_ok is None else now - self._last_ok,
        )

    def __repr__(self) -> str:
        return (
            f"PostgresMembership(table={self._table_name!r}, instance_id={self.instance_id!r}, "
            f"heartbeat_interval={self.heartbeat_interval:g}, lease_ttl={self.lease_ttl:g})"
        )
