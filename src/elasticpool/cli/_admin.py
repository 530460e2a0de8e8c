"""``elasticpool status``, ``set-total`` and ``forget``: a fleet seen and steered from outside.

None joins the fleet: they read and write the lease and config tables
through :meth:`PostgresMembership.read_fleets
<elasticpool.PostgresMembership.read_fleets>` and :meth:`PostgresMembership.store_total
<elasticpool.PostgresMembership.store_total>` (``forget`` with its own two
``DELETE`` statements) on a connection of their own, and count backends in
``pg_stat_activity``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import anyio

from .._settings import PoolSettings, parse_percent
from .._sql import SERVER_LIMITS_SQL, quote_ident
from ..fleet import MemberStatus, PostgresMembership
from ..fleet._tags import fleet_backends
from ._common import Admin, CliError, admin_connection, count, redact, require

__all__ = [
    "FleetView",
    "PoolHistory",
    "ServerView",
    "forget",
    "read_history",
    "read_status",
    "set_total",
    "status",
]

APPLICATION_NAME = "elasticpool-cli"
"""The ``application_name`` of the commands' own connection (never counted as a member's)."""

POLL = 0.1
"""Seconds between two looks at the lease table while waiting for members to adopt a total."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServerView:
    """The server's connection budget, as ``status`` reports it."""

    server: str
    """Where: the DSN without its password."""
    version: str
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    """PostgreSQL 16's ``reserved_connections`` (0 before 16)."""
    client_backends: int
    """Client backends now, this command's own included."""
    headroom: int
    """``max_connections`` less both reserves and ``client_backends``.

    What ordinary roles can still open."""
    database_total: int | None = None
    """The budget over every pool name in the lease table, when one is set."""
    database_claimed: int | None = None
    """Every pool name's claims added up, when there is a database budget."""


@dataclasses.dataclass(frozen=True, slots=True)
class FleetView:
    """One fleet (pool name) in the lease table."""

    pool: str
    fleet_total: int | None
    """The live total set with ``set-total``; ``None``: each member uses its settings."""
    members: tuple[MemberStatus, ...]
    holding: int
    """Connections the members held at their last heartbeats, together."""
    granted: int
    """The limits the members gave themselves, together."""
    application_name: str
    observed_backends: int
    """Client backends now: tagged as the pool's members', or named ``application_name``."""
    resolved_total: int | None = None
    """The total its members last used (a percentage resolved; None: never coordinated)."""
    claimed: int = 0
    """What the members hold or may grow to, added up (the bound's left side)."""


@dataclasses.dataclass(frozen=True, slots=True)
class PoolHistory:
    """What the lease and config tables hold of one pool name (``set-total`` and ``forget``)."""

    live: int
    """Members whose lease has not expired."""
    departed: int
    """Leases past their expiry: members that left, stopped or were killed."""
    departed_backends: int
    """Backends ``pg_stat_activity`` still shows under departed members' tags."""
    configured: bool
    """The config table has a row for the name (a total set, or a member coordinated)."""
    coordinated: bool
    """A member has run a heartbeat under this name (the config row records its total)."""

    @property
    def ever_had_a_member(self) -> bool:
        """Whether any instance ever ran a pool of this name against the table."""
        return bool(self.live or self.departed or self.coordinated)


def _quoted(table: str, schema: str | None) -> str:
    """``table`` (in ``schema``) as a quoted SQL name, as ``PostgresMembership`` names it."""
    return ("" if schema is None else quote_ident(schema) + ".") + quote_ident(table)


async def _tables_exist(admin: Admin, lease: str, config: str) -> bool:
    rows = await admin.fetch(
        "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL", lease, config
    )
    return bool(rows[0][0])


async def read_history(admin: Admin, table: str, schema: str | None, pool: str) -> PoolHistory:
    """Pool name ``pool``'s rows in lease table ``table`` (all zero when the tables are missing).

    Inside a transaction, the pool's config row stays locked (``FOR UPDATE``)
    until it ends, which holds off the members' heartbeats meanwhile.
    """
    lease = _quoted(table, schema)
    config = _quoted(table + "_config", schema)
    if not await _tables_exist(admin, lease, config):
        return PoolHistory(0, 0, 0, configured=False, coordinated=False)
    row = await admin.fetch(f"SELECT total FROM {config} WHERE pool_name = $1 FOR UPDATE", pool)
    rows = await admin.fetch(
        f"WITH l AS (SELECT expires_at, tag FROM {lease} WHERE pool_name = $1)"
        " SELECT count(*) FILTER (WHERE expires_at >= now())::int,"
        " count(*) FILTER (WHERE expires_at < now())::int,"
        " (SELECT count(*) FROM pg_stat_activity a WHERE a.application_name IN"
        "   (SELECT tag FROM l WHERE expires_at < now()))::int"
        " FROM l",
        pool,
    )
    live, departed, backends = (int(v) for v in rows[0])
    return PoolHistory(
        live,
        departed,
        backends,
        configured=bool(row),
        coordinated=bool(row) and row[0][0] is not None,
    )


def _membership(table: str, schema: str | None, *, create: bool = False) -> PostgresMembership:
    try:
        return PostgresMembership(table=table, schema=schema, create_tables=create)
    except ValueError as exc:
        raise CliError(str(exc)) from None


async def _server_view(admin: Admin, dsn: str) -> ServerView:
    rows = await admin.fetch(
        "SELECT current_setting('server_version'),"
        " current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int,"
        " coalesce(current_setting('reserved_connections', true), '0')::int,"
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int",
    )
    version, max_connections, su_reserved, reserved, backends = rows[0]
    return ServerView(
        server=redact(dsn),
        version=str(version),
        max_connections=int(max_connections),
        superuser_reserved_connections=int(su_reserved),
        reserved_connections=int(reserved),
        client_backends=int(backends),
        headroom=int(max_connections) - int(su_reserved) - int(reserved) - int(backends),
    )


async def read_status(
    dsn: str,
    *,
    table: str = "elasticpool_fleet",
    schema: str | None = None,
    pool: str | None = None,
    app: str | None = None,
) -> tuple[ServerView, list[FleetView]]:
    """The server's budget and every fleet in the lease table (only ``pool`` when given).

    A fleet's backends are the ones its members tagged
    (``<prefix>|<pool>|<instance>``, see docs/fleet.md) plus those whose
    ``application_name`` is ``app``, or by default the pool's name.
    """
    membership = _membership(table, schema)
    async with admin_connection(dsn, APPLICATION_NAME) as admin:
        server = await _server_view(admin, dsn)
        fleets = await membership.read_fleets(admin.conn, pool, connector=admin.connector)
        budgets = await membership.read_budgets(admin.conn, connector=admin.connector)
        rows = await admin.fetch(
            "SELECT application_name, count(*)::int FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' GROUP BY application_name",
        )
    by_app = {str(r[0]): int(r[1]) for r in rows}
    views = [
        FleetView(
            pool=name,
            fleet_total=total,
            members=members,
            holding=sum(m.holding for m in members),
            granted=sum(m.granted for m in members),
            application_name=app or name,
            observed_backends=sum(
                n
                for a, n in by_app.items()
                if a == (app or name) or fleet_backends([a], name, ())[0]
            ),
            resolved_total=budgets.get(name, (None, 0))[0],
            claimed=budgets.get(name, (None, 0))[1],
        )
        for name, (total, members) in fleets.items()
    ]
    if "" in budgets and pool is None:
        server = dataclasses.replace(
            server, database_total=budgets[""][0], database_claimed=budgets[""][1]
        )
    return server, views


def _status_json(server: ServerView, fleets: list[FleetView], table: str) -> str:
    return json.dumps(
        {
            "server": dataclasses.asdict(server),
            "table": table,
            "fleets": [dataclasses.asdict(f) for f in fleets],
        },
        indent=2,
    )


def _print_status(server: ServerView, fleets: list[FleetView], table: str) -> None:
    rich_console = require("rich.console", "cli", "the status table")
    rich_table = require("rich.table", "cli", "the status table")
    console = rich_console.Console(highlight=False)
    console.print(f"[bold]{server.server}[/] PostgreSQL {server.version}")
    reserve = f"{server.superuser_reserved_connections} reserved for superusers"
    if server.reserved_connections:
        reserve += f", {server.reserved_connections} reserved"
    console.print(
        f"max_connections {server.max_connections} ({reserve}), "
        f"{count(server.client_backends, 'client backend')} now: "
        f"[bold]headroom {server.headroom}[/]"
    )
    if server.database_total is not None:
        console.print(
            f"database budget over every pool name: [bold]{server.database_total}[/], "
            f"claimed {server.database_claimed}"
        )
    if not fleets:
        console.print(f"no fleet in lease table {table!r}")
        return
    for f in fleets:
        total = "each member's settings" if f.fleet_total is None else str(f.fleet_total)
        if f.fleet_total is None and f.resolved_total is not None:
            total = f"{f.resolved_total} (members' settings)"
        grid = rich_table.Table(
            title=(
                f"pool {f.pool!r}: total {total}, {count(len(f.members), 'member')}, "
                f"holding {f.holding}, granted {f.granted}, claimed {f.claimed}, "
                f"{count(f.observed_backends, 'backend')} "
                f"(application_name {f.application_name!r})"
            ),
            title_justify="left",
        )
        for column in ("instance", "demand", "holding", "share", "granted", "heartbeat"):
            grid.add_column(column, justify="left" if column == "instance" else "right")
        for m in f.members:
            grid.add_row(
                m.id,
                str(m.demand),
                str(m.holding),
                str(m.share),
                str(m.granted),
                f"{m.heartbeat_age:.1f}s ago",
            )
        console.print(grid)


def status(args: Any) -> int:
    """``elasticpool status``: print the fleets and the server's headroom."""
    server, fleets = anyio.run(
        lambda: read_status(
            args.dsn, table=args.table, schema=args.schema, pool=args.pool, app=args.app
        ),
        backend="asyncio",
    )
    if args.json:
        print(_status_json(server, fleets, args.table))
    else:
        _print_status(server, fleets, args.table)
    return 0


async def _set_total(args: Any, total: int | None, percent: float | None) -> dict[str, Any]:
    membership = _membership(args.table, args.schema, create=True)
    async with admin_connection(args.dsn, APPLICATION_NAME) as admin:
        conn, connector = admin.conn, admin.connector
        usable = None
        if percent is not None:  # resolved against this server now, as a member does
            rows = await admin.fetch(SERVER_LIMITS_SQL)
            usable = int(rows[0][0]) - int(rows[0][1])
            resolved = PoolSettings(total_max_connections=f"{percent:g}%").with_server_limits(
                int(rows[0][0]), int(rows[0][1])
            )
            assert isinstance(resolved.total_max_connections, int)
            total = resolved.total_max_connections
        fleets = await membership.read_fleets(conn, args.pool, connector=connector)
        before = fleets.get(args.pool, (None, ()))[0]
        async with admin.transaction():
            if args.pool and not args.force:  # a pool name, not the database budget
                history = await read_history(admin, args.table, args.schema, args.pool)
                if not history.ever_had_a_member:
                    raise CliError(
                        f"pool {args.pool!r} has never had a member in lease table "
                        f"{args.table!r} (a typo?); pass --force to set its total before "
                        "its first member starts"
                    )
            await membership.store_total(conn, args.pool, total, connector=connector)
        stored = time.monotonic()

        async def look() -> tuple[tuple[MemberStatus, ...], list[str]]:
            fleets = await membership.read_fleets(conn, args.pool, connector=connector)
            members = fleets.get(args.pool, (None, ()))[1]
            since = time.monotonic() - stored
            return members, [m.id for m in members if m.heartbeat_age < since]

        members, adopted = await look()
        with anyio.move_on_after(args.wait):
            while len(adopted) < len(members):  # members read it at their heartbeats: poll
                await anyio.sleep(POLL)
                members, adopted = await look()
    return {
        "pool": args.pool,
        "fleet_total": total,
        "percent": percent,
        "usable_connections": usable,
        "previous_total": before,
        "members": [m.id for m in members],
        "adopted_by": adopted,
    }


def set_total(args: Any) -> int:
    """``elasticpool set-total``: change a fleet's total live."""
    word = args.total.strip().lower()
    percent = parse_percent(word)
    total: int | None = None
    if percent is not None:
        if not 0 < percent <= 100:
            raise CliError(f"a percentage total must be in (0%, 100%] (got {args.total!r})")
    elif word in ("none", "default"):
        total = None
    else:
        try:
            total = int(word)
        except ValueError:
            raise CliError(
                "total must be an integer >= 1, a percentage of the server's usable "
                f"max_connections such as 80%, or 'none' (got {args.total!r})"
            ) from None
        if total < 1:
            raise CliError(f"total must be an integer >= 1 or 'none' (got {total})")
    if args.wait < 0:
        raise CliError(f"--wait must be >= 0 seconds (got {args.wait:g})")
    result = anyio.run(_set_total, args, total, percent, backend="asyncio")
    total = result["fleet_total"]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    shown = "each member's settings" if total is None else str(total)
    was = "settings" if result["previous_total"] is None else str(result["previous_total"])
    members, adopted = result["members"], result["adopted_by"]
    if percent is not None:
        shown += f" ({percent:g}% of the server's {result['usable_connections']} usable)"
    what = "database budget" if args.pool == "" else f"pool {args.pool!r}: fleet total"
    print(f"{what} now {shown} (was {was})")
    if not members:
        print("no live members: each adopts it when it joins")
    else:
        print(f"adopted by {len(adopted)} of {count(len(members), 'live member')}")
    if total is not None and total < 5:
        print(
            "note: members raise a total below 5 to 5 unless they set allow_small_total=True",
            file=sys.stderr,
        )
    return 0


async def _forget(args: Any) -> dict[str, Any]:
    lease = _quoted(args.table, args.schema)
    config = _quoted(args.table + "_config", args.schema)
    async with admin_connection(args.dsn, APPLICATION_NAME) as admin, admin.transaction():
        history = await read_history(admin, args.table, args.schema, args.pool)
        if not (history.configured or history.live or history.departed):
            raise CliError(f"pool {args.pool!r} is not in lease table {args.table!r}")
        if not args.force and history.live:
            raise CliError(
                f"pool {args.pool!r} has {count(history.live, 'live member')}: stop "
                "them first, or pass --force (their leases go too and each rejoins at its "
                "next heartbeat; until all have, the fleet may exceed its total by what "
                "they hold)"
            )
        if not args.force and history.departed_backends:
            raise CliError(
                f"pool {args.pool!r}: departed members still have "
                f"{count(history.departed_backends, 'connection')} open, which count "
                "against its total until they end; wait, or pass --force"
            )
        # Every lease of the name goes with --force; without it there is no live one.
        leases = await admin.fetch(
            f"WITH gone AS (DELETE FROM {lease} WHERE pool_name = $1 RETURNING 1)"
            " SELECT count(*)::int FROM gone",
            args.pool,
        )
        await admin.fetch(f"DELETE FROM {config} WHERE pool_name = $1", args.pool)
    return {
        "pool": args.pool,
        "leases_removed": int(leases[0][0]),
        "live_members_removed": history.live,
        "config_removed": history.configured,
    }


def forget(args: Any) -> int:
    """``elasticpool forget``: remove a pool name from the lease and config tables."""
    if not args.pool:
        raise CliError("--pool must name a pool (the database budget is set with set-total)")
    result = anyio.run(_forget, args, backend="asyncio")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    what = [count(result["leases_removed"], "lease")]
    if result["config_removed"]:
        what.append("its config row")
    print(f"pool {args.pool!r} forgotten: removed {' and '.join(what)}")
    if result["live_members_removed"]:
        print(
            f"{count(result['live_members_removed'], 'live member')} will rejoin at the "
            "next heartbeat",
            file=sys.stderr,
        )
    return 0
