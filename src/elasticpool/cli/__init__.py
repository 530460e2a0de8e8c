"""The ``elasticpool`` command: ``demo``, ``status``, ``set-total`` and ``forget``.

``elasticpool demo`` runs several simulated application instances sharing
one ``total_max_connections`` on an embedded (or given) PostgreSQL, shows
them live and writes a chart. ``elasticpool status`` shows the fleets in a
lease table and the server's connection headroom; ``elasticpool set-total``
changes a fleet's total live; ``elasticpool forget`` removes a pool name
nobody runs any more from the lease table. ``elasticpool --version`` prints
the version. The ``cli`` extra installs what the output needs (rich,
matplotlib); the commands say which extra to install when something is
missing. No command ever prints a password.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import __version__
from ._common import CliError, scrub

__all__ = ["main"]

DSN_ENV = "ELASTICPOOL_DSN"
"""The environment variable ``status`` and ``set-total`` read when ``--dsn`` is not given."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be in ({low:g}, {high:g}] seconds")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elasticpool",
        description="An elastic PostgreSQL connection pool with a fleet-wide connection budget.",
    )
    parser.add_argument("--version", action="version", version=f"elasticpool {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="a fleet of pools sharing one total under bursty load, live, then a chart",
        description=(
            "Start an embedded PostgreSQL on 127.0.0.1 (or use --dsn), run several simulated "
            "application instances sharing one total_max_connections under a bursty load, "
            "show each pool live and write a PNG chart of the run. It ends by itself."
        ),
    )
    demo.add_argument("--dsn", help="use this server instead of an embedded one")
    demo.add_argument("--instances", type=_positive_int, default=4, help="default: 4")
    demo.add_argument("--total", type=_positive_int, default=20, help="default: 20")
    demo.add_argument(
        "--duration", type=_seconds(0, 3600), default=36.0, help="seconds of load (default: 36)"
    )
    demo.add_argument(
        "--chart",
        type=Path,
        default=Path("elasticpool-demo.png"),
        help="where to write the chart (default: ./elasticpool-demo.png)",
    )
    demo.add_argument("--seed", type=int, default=None, help="the burst schedule's random seed")
    demo.add_argument(
        "--interval",
        type=_seconds(0.01, 10),
        default=0.25,
        help="fleet heartbeat interval in seconds (default: 0.25)",
    )
    demo.add_argument(
        "--no-live",
        action="store_true",
        help="print a plain line now and then instead of the live table "
        "(the default when stdout is not a terminal)",
    )
    demo.add_argument("--json", action="store_true", help="the summary as JSON on stdout")

    def fleet_table(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dsn",
            default=os.environ.get(DSN_ENV),
            help=f"the fleet's database (default: ${DSN_ENV})",
        )
        p.add_argument("--table", default="elasticpool_fleet", help="the lease table")
        p.add_argument("--schema", default=None, help="the lease table's schema")
        p.add_argument("--json", action="store_true", help="JSON instead of text")

    status = commands.add_parser(
        "status",
        help="the fleets in a lease table and the server's connection headroom",
        description=(
            "Members, shares, holdings and grants of every fleet in the lease table, the "
            "backends pg_stat_activity shows for each, and the server's max_connections headroom."
        ),
    )
    fleet_table(status)
    status.add_argument("--pool", default=None, help="only this pool name")
    status.add_argument(
        "--app",
        default=None,
        help=(
            "also count backends with this application_name (default: each pool's name; "
            "members' tagged connections are always counted)"
        ),
    )

    set_total = commands.add_parser(
        "set-total",
        help="change a fleet's total_max_connections live",
        description=(
            "Store a new total for every member of the pool; each adopts it at its next "
            "heartbeat. 'none' goes back to each member's settings."
        ),
    )
    fleet_table(set_total)
    which = set_total.add_mutually_exclusive_group(required=True)
    which.add_argument("--pool", help="the pool name of the fleet")
    which.add_argument(
        "--database",
        action="store_const",
        const="",
        dest="pool",
        help="the database budget over every pool name in the lease table instead",
    )
    set_total.add_argument(
        "--wait",
        type=float,
        default=5.0,
        help="seconds to wait for the live members to adopt it (default: 5; 0: do not wait)",
    )
    set_total.add_argument(
        "--force",
        action="store_true",
        help="store it even for a pool name that has never had a member (a typo creates a "
        "phantom fleet: without --force the command refuses)",
    )
    set_total.add_argument(
        "total",
        help=(
            "the new total: an integer >= 1, a percentage of the server's usable "
            "max_connections (80%%), or 'none'"
        ),
    )

    forget = commands.add_parser(
        "forget",
        help="remove a pool name nobody runs any more from the lease table",
        description=(
            "Delete the pool's row in the config table (its live total) and its departed "
            "members' leases, so 'status' no longer shows it. Refuses while the pool has live "
            "members or departed members' connections are still open, unless --force."
        ),
    )
    fleet_table(forget)
    forget.add_argument("--pool", required=True, help="the pool name to forget")
    forget.add_argument(
        "--force",
        action="store_true",
        help="forget it even with live members (their leases go too: each rejoins at its "
        "next heartbeat) or departed members' connections still open",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``elasticpool`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    dsn: str | None = getattr(args, "dsn", None)
    try:
        if args.command == "demo":
            from ._demo import DemoOptions, demo  # noqa: PLC0415 - each command its imports

            return demo(
                DemoOptions(
                    dsn=args.dsn,
                    instances=args.instances,
                    total=args.total,
                    duration=args.duration,
                    chart=args.chart,
                    seed=args.seed,
                    live=not args.no_live and (sys.stderr if args.json else sys.stdout).isatty(),
                    interval=args.interval,
                    json=args.json,
                )
            )
        if args.dsn is None:
            parser.error(f"{args.command} needs --dsn (or ${DSN_ENV})")
        from ._admin import forget, set_total, status  # noqa: PLC0415 - each command its imports

        command = {"status": status, "set-total": set_total, "forget": forget}[args.command]
        return command(args)
    except CliError as exc:
        print(f"elasticpool {args.command}: {scrub(str(exc), dsn)}", file=sys.stderr)
        return 1
    except Exception as exc:  # one line, scrubbed: a driver's message may quote the dsn
        text = scrub(f"{type(exc).__name__}: {exc}", dsn)
        print(f"elasticpool {args.command}: unexpected error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"elasticpool {args.command}: interrupted", file=sys.stderr)
        return 130
