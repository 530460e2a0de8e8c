"""Fleet membership coordinated through the PostgreSQL database itself.

Every active instance of a pool (same pool name, same database) keeps a
lease row in a small table. A heartbeat is one call of a server-side
function (``fleet/_schema.py``): one statement, one round trip, serialised
per pool name on a row lock held for the function's server time only. It
reaps departed members (whose backends the server no longer shows), divides
the total over demand, and grants this member what the others' claims
leave. Lease times come from the database clock (``now()``), so instance
clocks do not matter. The pool's limit changes only through its resize
entry point.

An instance with no demand and no connections leaves the fleet (its lease
ends, its part returns at once) and costs nothing until a caller arrives;
it then opens the connection that caller needs anyway, claims on it, and
hands it to the caller when the claim grants one.

See docs/fleet.md for the bound on how far the fleet can exceed its total,
and what happens when coordination fails.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import socket
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from .._adapters import fetch_for as adapter_fetch
from .._connector import fetch_of
from .._limits import HYPERDRIVE_MINIMUM_TOTAL, resolve_limit
from .._settings import check_connections
from .._sql import quote_ident
from .._validate import check_int, check_name
from ._base import FleetStatus, MemberStatus
from ._schema import Schema, beat_function, claim_function, fill_function
from ._tags import application_name as tagged_name
from ._tags import pool_tag

if TYPE_CHECKING:
    from .._connector import Connector, Fetch
    from ._base import Freeze, MemberPort

__all__ = ["PostgresMembership"]

logger = logging.getLogger("elasticpool.fleet")


ASKS_PER_INTERVAL = 4
"""How often per heartbeat interval a member refused asks again, on a new connection."""

GIVE_BACK_CHECKS = 50
"""Checks per heartbeat interval of a member that was used in a fleet others wait on."""


def _seconds(name: str, value: object, allowed: str) -> float:
    """A finite number of seconds, or a TypeError / ValueError naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {allowed} seconds (got {value!r})")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be {allowed} seconds (got {value!r})")
    return float(value)


def _check_total(total: object) -> None:
    check_int("total_max_connections", total, low=1, optional=True)


class PostgresMembership:
    """Share ``total_max_connections`` with every other instance of the pool, through PostgreSQL.

    ``table`` (and ``schema``) name the lease table; it, ``<table>_config``
    and the heartbeat function ``<table>_beat_<digest>`` are created if missing
    (``create_tables=False`` to require them, e.g. for a role without CREATE
    rights: then an administrator runs :meth:`create_tables_sql`).
    Identifiers are quoted; every value is a parameter. ``instance_id``
    defaults to ``host:pid`` plus a few random characters.

    Who is a member: an instance with demand (connections in use, callers
    waiting) or connections open. One with neither leaves at its next
    heartbeat and makes no connection and no heartbeat until a caller
    arrives; it then opens the connection that caller needs, claims on it,
    and hands it over when the claim grants one.

    Timing: a heartbeat every ``heartbeat_interval`` seconds (±10 % jitter)
    while active, each bounded by ``heartbeat_timeout`` (default: the
    interval); a lease lives ``lease_ttl`` seconds (default 5 intervals)
    after its last heartbeat, by the database clock. Callers queuing at the
    limit bring the heartbeat forward when it can change something (the
    member is below its share, or budget is free), again every eighth of an
    interval while they wait; a member over its share gives back at once
    when its surplus has closed.

    Division: ``reserve`` connections of the total (default: one per 20,
    at most 2) are kept out of the shares while three or more members are
    active, so a member that starts asking gets its first connection at
    once; the rest follows demand (max-min fair), and members keep idle
    connections nobody else asks for.

    Tags: every connection a member opens carries ``application_name``
    ``<application_name or "ep:<pool>">:<instance_id>`` (via the
    connector's ``set_server_settings``), so the server's view of who holds
    what is exact: a departed member's claim stays counted while
    ``pg_stat_activity`` shows its backends (a process killed mid-query).

    Load: the heartbeat waits at most ``lock_timeout`` (default a tenth of
    the interval) for its pool's row; when it is busy, the lease is only
    extended and the member tries again after a jittered backoff, so a
    busy coordinator sheds load instead of expiring live members.

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
        reserve: int | None = None,
        lock_timeout: float | None = None,
        client_connection_check_interval: float | None = 2.0,
        database_max_connections: int | str | None = None,
    ) -> None:
        for name, value in (
            ("table", table),
            ("schema", schema),
            ("instance_id", instance_id),
            ("application_name", application_name),
        ):
            if value is not None:
                check_name(name, value)
                if "\x00" in value:
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
        check_int("reserve", reserve, low=0, optional=True)
        lock_range = f"in (0, heartbeat_timeout={timeout:g})"
        lock = (
            min(interval / 10, timeout / 2)
            if lock_timeout is None
            else _seconds("lock_timeout", lock_timeout, lock_range)
        )
        if not 0 < lock < timeout:
            raise ValueError(f"lock_timeout must be {lock_range} seconds (got {lock_timeout!r})")
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
        self._beat_fn = prefix + quote_ident(beat_function(table))
        self._db_total, self._db_percent = check_connections(
            "database_max_connections", database_max_connections
        )
        self.database_max_connections = database_max_connections
        self._claim_fn = prefix + quote_ident(claim_function(table))
        self._schema = Schema(
            self._table,
            self._config,
            beat=self._beat_fn,
            fill=prefix + quote_ident(fill_function(table)),
            claim=self._claim_fn,
        )
        self._table_name = table if schema is None else f"{schema}.{table}"
        # host:pid:random, within the 24 characters a tag keeps whole
        self.instance_id = instance_id or (
            f"{socket.gethostname()[:10]}:{os.getpid()}:{uuid.uuid4().hex[:4]}"
        )
        self.heartbeat_interval = float(interval)
        self.heartbeat_timeout = float(timeout)
        self.lease_ttl = float(ttl)
        self.lock_timeout = float(lock)
        self.reserve = reserve
        self.create_tables = create_tables
        self.application_name = application_name
        self.client_connection_check_interval = check or None
        # None: not asked yet; False: the server refused it (older than 14, or Windows).
        self._check_ok: bool | None = None if check else False
        self._departed = 0
        self._database: tuple[int | None, int | None] = (None, None)
        # last good view
        self._members: tuple[MemberStatus, ...] = ()
        self._share = 0
        self._limit = 0
        self._total: int | None = None
        self._claimed = 0
        self._source = "total"
        self._last_ok: float | None = None
        self._healthy = True  # until a heartbeat fails: a member that never needed one is fine
        self._observed: int | None = None
        self._tables_ready = False
        self._failing = False
        self._active = False  # holds a live lease
        self._reported = 0  # the demand it reported at its last heartbeat
        self._reserve = 0  # the reserve it asked the last heartbeat to keep
        self._settings_source = "total"
        self._claim = 0  # what this member's row claims (its holding at the last beat, or more)
        self._acquires_at_beat = 0  # the pool's acquires when its last heartbeat began
        self._asking: int | None = None  # others asking, if the last answer was a fast one
        self._crowd = 0  # live members at the last answer
        self._tag: str | None = None
        self._beating = anyio.Lock()
        self.beats = 0
        """Heartbeats that reached the database (statistics)."""
        self.busy = 0
        """Heartbeats that found the coordinator busy and only kept the lease."""

    # ------------------------------------------------------------------ sql

    def create_tables_sql(self) -> str:
        """The DDL for the lease and config tables and the heartbeat function (run once)."""
        return self._schema.ddl()

    async def _ensure_tables(self, fetch: Fetch, conn: Any, transaction: Any = None) -> None:
        """Create what is missing; in a transaction of its own, or the caller's (``None``)."""
        if self._tables_ready:
            return
        async with transaction(conn) if transaction is not None else contextlib.nullcontext():
            # CREATE ... IF NOT EXISTS is not safe against itself (concurrent
            # creators collide on pg_type's unique index): members take turns.
            await fetch(
                conn,
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"elasticpool:create:{self._table_name}",
            )
            if not await self._ready(fetch, conn):
                if not self.create_tables:
                    raise RuntimeError(
                        f"lease table {self._table_name!r} (or its heartbeat function) is "
                        "missing and create_tables is False: run create_tables_sql() as an "
                        "administrator"
                    )
                for statement in self._schema.statements():
                    await fetch(conn, statement)
        self._tables_ready = True

    async def _ready(self, fetch: Fetch, conn: Any) -> bool:
        """Whether the tables and this version's heartbeat function exist (one query)."""
        rows = await fetch(
            conn,
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL"
            " AND to_regproc($3) IS NOT NULL AND to_regproc($4) IS NOT NULL",
            self._table,
            self._config,
            self._beat_fn,
            self._claim_fn,
        )
        return bool(rows[0][0])

    @staticmethod
    def _fetch(pool: MemberPort) -> Fetch:
        """The member's connector's ``fetch``: every statement of a heartbeat runs through it."""
        return fetch_of(pool.connector, "PostgresMembership")

    def _tag_connections(self, pool: MemberPort) -> None:
        """Tell the connector the settings every connection of this member opens with."""
        set_settings = getattr(pool.connector, "set_server_settings", None)
        if set_settings is None:
            logger.info(
                "pool %r: its connector cannot tag connections (no set_server_settings): "
                "backends of a member killed mid-query are not counted after its lease ends",
                pool.name,
            )
            return
        self._tag = tagged_name(pool.name, self.instance_id, self.application_name)
        settings = {"application_name": self._tag}
        if self._check_ok and self.client_connection_check_interval is not None:
            ms = max(1, round(self.client_connection_check_interval * 1000))
            settings["client_connection_check_interval"] = f"{ms}ms"
        set_settings(settings)

    async def _probe_check_interval(self, pool: MemberPort, conn: Any) -> None:
        """Whether the server takes ``client_connection_check_interval`` (once; then tag with it).

        PostgreSQL before 14 does not know it, and a server that cannot poll
        for closed sockets (Windows) refuses any value but 0; either refuses a
        startup parameter it would not take, so it is only sent once accepted.
        """
        assert self.client_connection_check_interval is not None
        ms = max(1, round(self.client_connection_check_interval * 1000))
        fetch = self._fetch(pool)
        try:
            async with pool.connector.transaction(conn):
                # for the session: this connection, which may join the pool, keeps it too
                await fetch(
                    conn,
                    "SELECT set_config('client_connection_check_interval', $1, false)",
                    f"{ms}ms",
                )
        except Exception as exc:
            if pool.connector.is_disconnect(exc):
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

    async def join(self, pool: MemberPort) -> None:
        """Tag the pool's connections and start at limit 0: the first caller brings the first beat.

        A pool with a warm floor (``min_connections``) joins at once: it
        holds connections, so it is a member from the start.
        """
        self._fetch(pool)  # a connector without fetch fails here, at open
        self._tag_connections(pool)  # before the first connection: it is the fleet's too
        await pool.resize(0)  # nothing opens before the fleet has a say
        if pool.settings.min_connections > 0:
            await self._beat(pool)

    async def run(self, pool: MemberPort) -> None:
        """Heartbeat while active; early when it can help; wait for a caller while not."""
        while True:
            demand = pool.demand_signal()
            if not self._active:
                if pool.stats().size == 0 and not self._wants(pool):
                    await demand.wait()  # left the fleet: nothing until a caller comes
                await self._beat(pool)
                if not self._active and self._wants(pool):  # failed, or left meanwhile
                    await self._pause(self.heartbeat_interval / 4)
                continue
            wait = self.heartbeat_interval * random.uniform(0.9, 1.1)
            with anyio.move_on_after(wait):
                await self._until_worth_a_beat(pool, demand)
            # Nothing open and nothing asked (idle_timeout closed its last connection):
            # report that on a connection outside the pool, which it leaves at once,
            # rather than open one in the pool just to say it needs none.
            await self._beat(pool, own=bool(pool.stats().size) or self._wants(pool))

    async def _until_worth_a_beat(self, pool: MemberPort, demand: anyio.Event) -> None:
        """Return when an early heartbeat can change something (the caller bounds the wait).

        Worth it: callers wait and the member is below its share (it may
        grow), or its demand is now above a share that covered what it last
        reported (the shares may move its way; a member already asking for
        more than its share changes nothing by asking for more still); or
        others ask for more than they have while this member holds less than
        its row claims (give the surplus back now, not at the next
        interval); or it holds only idle connections in a fleet with less
        than its reserve free (let go, or keep what is still free). At most
        one such check every eighth of an interval (a quarter, or half when
        nothing is free, for a member with no connection: it asks on a new
        one).
        """
        while True:
            # A member with no connection of its own asks on a new one: less often, and
            # less still while nothing is free (the others give back at their heartbeats).
            stats = pool.stats()
            if stats.size:
                part = 8
                if (
                    stats.size == 1
                    and not stats.waiting
                    and stats.acquires != self._acquires_at_beat
                    and self._tight()
                ):
                    # one connection, used since its last heartbeat, in a fleet others wait
                    # on: look again soon, to give it back as soon as its borrower is done
                    part = GIVE_BACK_CHECKS
            else:
                part = ASKS_PER_INTERVAL
            step = self.heartbeat_interval / part * random.uniform(0.9, 1.1)
            with anyio.move_on_after(step):
                await demand.wait()
            stats = pool.stats()
            if stats.waiting and not stats.size and not self._limit and not self._failing:
                return  # refused, callers still waiting: ask again
            if stats.waiting and (
                self._share > self._limit  # below its share: the next grant may be more
                # asked for no more than its share last time: more demand may move it
                or self._reported <= self._share < stats.in_use + stats.waiting
            ):
                return
            if stats.size + stats.closing < self._claim and self._others_ask():
                return  # surplus closed while others ask: give it back
            if stats.size and not stats.in_use and not stats.waiting and self._tight():
                return  # idle while the fleet is (nearly) full: let go, or keep if still free
            if demand.is_set():
                demand = pool.demand_signal()

    def _tight(self) -> bool:
        """Whether the last view left less than the reserve free, or others asked for more,
        or the pool had more members than units."""
        if self._total is None:
            return False
        return (
            self._claimed + max(1, self._reserve) >= self._total
            or self._others_ask()
            or self._crowd > self._total
        )

    def _others_want(self) -> bool:
        return any(m.share > m.granted for m in self._members if m.id != self.instance_id)

    def _wants(self, pool: MemberPort) -> bool:
        stats = pool.stats()
        return bool(stats.waiting or stats.in_use or stats.connecting)

    async def _pause(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await anyio.sleep_forever()

    async def leave(self, pool: MemberPort) -> None:
        """End this instance's lease so its part returns to the others at once."""
        if not self._active and self._claim == 0:
            return
        await self._beat(pool, leave=True)

    async def _beat(self, pool: MemberPort, *, leave: bool = False, own: bool = True) -> None:
        async with self._beating:  # one heartbeat at a time per member (set_total runs one too)
            await self._beat_once(pool, leave, own and not leave)
            # after it: the heartbeat's own borrow is not a use (see _until_worth_a_beat)
            self._acquires_at_beat = pool.stats().acquires

    async def _beat_once(self, pool: MemberPort, leave: bool, own: bool = True) -> None:
        started = pool.now()
        try:
            with anyio.fail_after(self.heartbeat_timeout):
                async with (
                    pool.coordination(wait_own=self.heartbeat_timeout / 2, own=own) as co,
                    pool.frozen() as freeze,
                ):
                    if not self._tables_ready:
                        await self._ensure_tables(
                            self._fetch(pool), co.conn, pool.connector.transaction
                        )
                    if self._check_ok is None and self._tag is not None:
                        await self._probe_check_interval(pool, co.conn)
                    freeze.sent = True
                    # its last connection, this one: leaving, it gives back at once
                    last = not co.extra and freeze.holding == 1
                    try:
                        row = None
                        if not leave and (
                            (co.extra and freeze.holding == 0 and freeze.demand > 0)
                            or (last and freeze.demand == 0 and self._tight())
                        ):
                            row = await self._fast(pool, co.conn, freeze, last)
                        if row is None:
                            row = await self._call(
                                pool, co.conn, freeze.demand, freeze.holding, leave=leave, last=last
                            )
                    except Exception as exc:
                        # An error the server answered with: rolled back, nothing committed.
                        # A lost or late answer (disconnect, timeout) leaves it unknown.
                        if not isinstance(exc, TimeoutError) and not pool.connector.is_disconnect(
                            exc
                        ):
                            freeze.sent = False
                        raise
                    if row[0] == "busy":
                        freeze.apply(freeze.before)
                        self.busy += 1
                        self._healthy = True
                        return
                    status, share, grant, total, live_total, claimed = row[:6]
                    freeze.grant = grant
                    adopt = co.conn if co.extra and status == "ok" and grant > 0 else None
                    if freeze.apply(grant, adopt):
                        co.keep()  # the connection it asked on serves a caller now
                    self._reported = freeze.demand
                    if status == "ok":
                        self._claim = max(freeze.holding, grant)
                    else:  # left: what it holds, until the server shows it gone
                        self._claim = 0 if last else freeze.holding
        except Exception as exc:
            await self._failed(pool, exc, started)
            return
        self.beats += 1
        self._active = status == "ok"
        self._share, self._limit, self._total = share, grant, total
        self._claimed = claimed
        self._source = "total" if live_total is not None else self._settings_source
        self._members = self._view(row)
        if row[6] is not None:  # a heartbeat's view: who asks is in it
            self._asking = None
            self._crowd = len(self._members)
        self._observed = row[7]
        self._departed = row[8] or 0
        self._database = (row[9], row[10]) if row[9] is not None else (None, None)
        self._last_ok = started
        if self._failing:
            logger.info("pool %r: fleet coordination ok again (limit %d)", pool.name, grant)
        self._failing = False
        self._healthy = True

    def _totals(self, pool: MemberPort) -> tuple[int | None, int, int, int]:
        """From the settings: the fleet total (``None``: a fixed limit), that limit, the
        minimum total, and the reserve."""
        settings = pool.settings
        base = resolve_limit(settings, allow_small_total=True)
        self._settings_source = base.source  # which rule applies unless a live total is set
        total = base.fleet_total
        fixed = base.limit if total is None else 0
        minimum = 1 if settings.allow_small_total else HYPERDRIVE_MINIMUM_TOTAL
        reserve = self.reserve
        if reserve is None:
            reserve = 0 if total is None else min(2, total // 20)
        self._reserve = reserve
        return total, fixed, minimum, reserve

    async def _fast(
        self, pool: MemberPort, conn: Any, freeze: Freeze, last: bool
    ) -> tuple[Any, ...] | None:
        """The small members' fast path (``Schema._claim_function``); an answer, or ``None``.

        A join with one connection (the one it asks on) or a release of the
        last one, without the division. ``None`` when it does not apply (a
        database budget, a fixed limit, the tables not checked yet, or the
        function says it is the heartbeat function's case): the caller then
        runs the heartbeat function on the same connection.
        """
        if not self._tables_ready or self._db_total is not None or self._db_percent is not None:
            return None
        mine, _, minimum, _ = self._totals(pool)
        if mine is None:
            return None
        rows = await self._fetch(pool)(
            conn,
            f"SELECT * FROM {self._claim_fn}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            pool.name,
            self.instance_id,
            self._tag,
            freeze.demand,
            freeze.holding,
            last,
            mine,
            minimum,
            self.lease_ttl,
            max(1, round(self.lock_timeout * 1000)),
        )
        status, claimed, total, live, asking, members = rows[0]
        if status == "skip":
            return None
        if status == "busy":
            return ("busy",)
        self._asking = asking
        self._crowd = members
        n = 1 if status in ("granted", "kept") else 0
        # shaped as the function's answer; the view is the last one (None: keep it)
        return (
            "left" if status == "left" else "ok",
            n,
            n,
            total,
            live,
            claimed,
            None,
            self._observed,
            self._departed,
            None,
            None,
        )

    def _others_ask(self) -> bool:
        """Whether the last answer showed other members asking for connections."""
        if self._asking is not None:
            return self._asking > 0
        return self._others_want()

    async def _call(
        self,
        pool: MemberPort,
        conn: Any,
        demand: int,
        holding: int,
        *,
        leave: bool,
        last: bool,
    ) -> tuple[Any, ...]:
        total, fixed, minimum, reserve = self._totals(pool)
        fetch = self._fetch(pool)
        rows = await fetch(  # a transaction of its own: committed when it returns
            conn,
            f"SELECT * FROM {self._beat_fn}"
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            pool.name,
            self.instance_id,
            self._tag,
            demand,
            holding,
            total,
            fixed,
            minimum,
            reserve,
            self.lease_ttl,
            max(1, round(self.lock_timeout * 1000)),
            leave,
            pool_tag(pool.name) if self._tag is not None else None,
            self._db_total,
            self._db_percent,
            last,
        )
        return tuple(rows[0])

    def _view(self, row: tuple[Any, ...]) -> tuple[MemberStatus, ...]:
        """The members as the heartbeat saw them: ``[id, demand, holding, share, granted, age]``."""
        if row[6] is None:
            return self._members
        return tuple(
            MemberStatus(
                id=str(i),
                demand=int(d),
                holding=int(h),
                share=int(s),
                granted=int(g),
                heartbeat_age=float(a),
            )
            for i, d, h, s, g, a in json.loads(row[6])
        )

    async def _failed(self, pool: MemberPort, exc: BaseException, started: float) -> None:
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
        if not self._active:
            await self._pause(self.heartbeat_interval)

    # ------------------------------------------------------------------ live total

    async def set_total(self, pool: MemberPort, total: int | None) -> None:
        """Set the fleet total for every instance of ``pool`` (``None``: back to the settings).

        Each instance adopts it at its next heartbeat, this one at once.
        """
        _check_total(total)
        if total is not None and total < HYPERDRIVE_MINIMUM_TOTAL:
            resolve_limit(  # warns, or not, exactly as the heartbeat will
                pool.settings.replace(total_max_connections=total),
                allow_small_total=pool.settings.allow_small_total,
            )
        async with pool.coordination() as co, pool.connector.transaction(co.conn):
            await self.store_total(co.conn, pool.name, total, connector=pool.connector)
        await self._beat(pool)

    async def store_total(
        self,
        conn: Any,
        pool_name: str,
        total: int | None,
        *,
        connector: Connector[Any] | None = None,
    ) -> None:
        """Write the live fleet total of pool ``pool_name`` on ``conn``, without joining the fleet.

        What :meth:`set_total` writes, for tools that are not members
        (``elasticpool set-total``): every member adopts it at its next
        heartbeat. Run it inside a transaction on ``conn``; the tables are
        created if missing and allowed. ``conn`` is an asyncpg or psycopg
        connection, or any connection of ``connector``, whose
        ``fetch(conn, sql, *args)`` then runs the statements.
        """
        _check_total(total)
        fetch = _fetch_for(conn, connector, "store_total")
        await self._ensure_tables(fetch, conn)
        await fetch(
            conn,
            f"INSERT INTO {self._config} (pool_name, total_max_connections, updated_at)"
            " VALUES ($1, $2, now()) ON CONFLICT (pool_name) DO UPDATE SET"
            " total_max_connections = EXCLUDED.total_max_connections, updated_at = now()",
            pool_name,
            total,
        )

    async def read_fleets(
        self, conn: Any, pool_name: str | None = None, *, connector: Connector[Any] | None = None
    ) -> dict[str, tuple[int | None, tuple[MemberStatus, ...]]]:
        """The fleets in the lease table as the database has them now, without joining any.

        By pool name (only ``pool_name`` when given): the live total set with
        :meth:`set_total` (``None``: each member's settings) and the members
        whose lease has not expired, each with what it last reported (its
        ``share`` is the one it computed at its own last heartbeat). Read-only;
        empty when the tables do not exist. For tools that are not members
        (``elasticpool status``). ``conn`` and ``connector`` as for
        :meth:`store_total`.
        """
        fetch = _fetch_for(conn, connector, "read_fleets")
        if not await self._ready(fetch, conn):
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
        where = " WHERE pool_name <> ''" + ("" if pool_name is None else " AND pool_name = $1")
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

    async def read_budgets(
        self, conn: Any, *, connector: Connector[Any] | None = None
    ) -> dict[str, tuple[int | None, int]]:
        """The total each pool name's members last used, and its claims added up, by name.

        The name ``""`` is the database budget over every name (when one was
        ever set), with every name's claims added up. Read-only; empty when
        the tables do not exist. For ``elasticpool status``. ``conn`` and
        ``connector`` as for :meth:`store_total`.
        """
        fetch = _fetch_for(conn, connector, "read_budgets")
        if not await self._ready(fetch, conn):
            return {}
        rows = await fetch(
            conn,
            "SELECT pool_name, coalesce(total_max_connections, total), claimed"
            f" FROM {self._config} ORDER BY pool_name",
        )
        budgets = {str(r[0]): (r[1], int(r[2])) for r in rows}
        if "" in budgets:
            budgets[""] = (budgets[""][0], sum(c for k, (_, c) in budgets.items() if k))
        return budgets

    # ------------------------------------------------------------------ status

    def status(self, pool: MemberPort) -> FleetStatus:
        now = pool.now()
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
            healthy=self._healthy,
            departed_backends=self._departed,
            database_total=self._database[0],
            database_claimed=self._database[1],
            active=self._active,
            claimed=self._claimed if self._total is not None else None,
            last_heartbeat_age=None if self._last_ok is None else now - self._last_ok,
        )

    def __repr__(self) -> str:
        return (
            f"PostgresMembership(table={self._table_name!r}, instance_id={self.instance_id!r}, "
            f"heartbeat_interval={self.heartbeat_interval:g}, lease_ttl={self.lease_ttl:g})"
        )


def _fetch_for(conn: Any, connector: Connector[Any] | None, method: str) -> Fetch:
    """``connector``'s fetch, or without one, the fetch of the adapter ``conn`` belongs to."""
    needed_by = f"PostgresMembership.{method}()"
    if connector is not None:
        return fetch_of(connector, needed_by)
    return adapter_fetch(conn, needed_by)
