"""``elasticpool status`` and ``elasticpool set-total``: a fleet seen and steered from outside.

Neither joins the fleet: they read and write the lease and config tables
through :meth:`PostgresMembership.read_fleets
<elasticpool.PostgresMembership.read_fleets>` and :meth:`PostgresMembership.store_total
<elasticpool.PostgresMembership.store_total>` on a connection of their own,
and count backends in ``pg_stat_activity``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import anyio

from .._settings import PoolSettings, parse_percent
from .._sql import SERVER_LIMITS_SQL
from ..fleet import MemberStatus, PostgresMembership
from ..fleet._tags import fleet_backends
from ._common import Admin, CliError, admin_connection, redact, require

__all__ = ["FleetView", "ServerView", "read_status", "set_total", "status"]

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
        f"{server.client_backends} client backends now: [bold]headroom {server.headroom}[/]"
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
                f"pool {f.pool!r}: total {total}, {len(f.members)} members, "
                f"holding {f.holding}, granted {f.granted}, claimed {f.claimed}, "
                f"{f.observed_backends} backends "
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
        print(f"adopted by {len(adopted)} of {len(members)} live members")
    if total is not None and total < 5:
        print(
            "note: members raise a total below 5 to 5 unless they set allow_small_total=True",
            file=sys.stderr,
        )
    return 0
