"""The fleet budget (:class:`~elasticpool.fleet.PostgresMembership`) against a real server.

Members of one fleet are pools of one pool name on one database: several
pools in this process, or ``tests/fleet/fleet_member.py`` processes. Each test has
a lease table of its own, with a quoted name (``fleet "label" 1a2b3c4d``) so
identifier quoting is exercised everywhere, and an ``application_name`` of its
own that all its members share, so a :class:`Sampler` on a separate admin
connection can count the fleet's backends in ``pg_stat_activity`` every
:data:`SAMPLE` seconds.

The bound checked (docs/fleet.md): in ``limit_mode="strict"`` with working
coordination, the fleet's backends never exceed ``total + Z``, where ``Z`` is
the number of extra connections the members' heartbeats have open at that
instant (a member at limit 0, joining or closing opens one for one short
transaction; each member has at most one heartbeat in flight). Members use
:class:`~tests.fleet.fleet_member.TrackingConnector`, which records the backend PID
of every connection that was never one of its pool's slots, so each sample is
checked exactly: ``|backends - extra| <= total`` and ``|backends & extra| <=
members``.

Heartbeats run every :data:`INTERVAL` with a lease TTL of :data:`TTL` (ten
intervals: generous, as the machine may be busy). Waits poll with a bound; no
sleep is used to synchronise, only to let load run for a while.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from elasticpool import Pool, PoolTimeout
from elasticpool.embedded import EmbeddedPostgres
from elasticpool.fleet import PostgresMembership
from elasticpool.fleet._schema import beat_function, claim_function, fill_function
from elasticpool.testing import FaultProxy

from ..helpers import eventually

asyncpg = pytest.importorskip("asyncpg")

from .fleet_member import DSN_ENV, TrackingConnector  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

INTERVAL = 0.1
"""Heartbeat interval of every member, in seconds."""

TTL = 1.0
"""Lease TTL of every member, in seconds."""

HB_TIMEOUT = 0.5
"""Bound on one heartbeat, in seconds."""

SAMPLE = 0.02
"""Seconds between two counts of the fleet's backends."""

POLL = 0.01
"""Seconds between two looks at a pool while waiting for something to happen."""

BOUND = 15.0
"""Overall bound, in seconds, on any one wait in these tests."""

RUNNER = Path(__file__).with_name("fleet_member.py")


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ----------------------------------------------------------------------------- fleet fixture


@dataclass
class Fleet:
    """One test's fleet: a pool name, a lease table and an application_name of its own."""

    server: Any
    admin: Any
    """A plain asyncpg connection of the superuser's, outside every pool (never counted)."""
    name: str
    table: str
    connectors: list[TrackingConnector] = field(default_factory=list)

    @property
    def app(self) -> str:
        return self.name

    @property
    def qtable(self) -> str:
        return quote_ident(self.table)

    @property
    def qconfig(self) -> str:
        return quote_ident(self.table + "_config")

    def pool(
        self,
        *,
        total: int | None = 10,
        interval: float = INTERVAL,
        ttl: float | None = TTL,
        heartbeat_timeout: float | None = HB_TIMEOUT,
        connector: type[TrackingConnector] = TrackingConnector,
        dsn: str | None = None,
        membership: dict[str, Any] | None = None,
        connect_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        **settings: Any,
    ) -> Pool[Any]:
        """A member: a pool of this fleet with a PostgresMembership on this fleet's table."""
        c = connector(
            dsn or self.server.dsn(),
            server_settings={"application_name": self.app},
            **(connect_kwargs or {}),
        )
        m = PostgresMembership(
            table=self.table,
            heartbeat_interval=interval,
            lease_ttl=ttl,
            heartbeat_timeout=heartbeat_timeout,
            **(membership or {}),
        )
        if total is not None:
            settings["total_max_connections"] = total
        pool: Pool[Any] = Pool(c, membership=m, name=name or self.name, **settings)
        c.attach(pool)
        self.connectors.append(c)
        return pool

    def extra_pids(self) -> set[int]:
        """PIDs of the extra (out-of-slot) connections the in-process members opened so far."""
        return set().union(*(c.extra_pids for c in self.connectors))

    def extra_windows(self) -> list[tuple[int, float, float]]:
        """``(pid, opened, done)`` of every extra connection the in-process members opened."""
        return [w for c in self.connectors for w in c.extra_windows]

    @property
    def where(self) -> str:
        """SQL for the fleet's backends: named ``app``, or tagged ``<prefix>|<pool>|<instance>``."""
        return "(application_name = $1 OR strpos(application_name, '|' || $1 || '|') > 0)"

    async def backends(self) -> set[int]:
        rows = await self.admin.fetch(
            f"SELECT pid FROM pg_stat_activity WHERE {self.where}", self.app
        )
        return {r[0] for r in rows}

    async def leases(self) -> dict[str, Any]:
        rows = await self.admin.fetch(
            f"SELECT instance_id, demand, holding, share, granted FROM {self.qtable}"
            " WHERE pool_name = $1",
            self.name,
        )
        return {r["instance_id"]: r for r in rows}


@pytest.fixture
async def fleet(request: pytest.FixtureRequest, pg_server: Any) -> AsyncIterator[Fleet]:
    """A fresh fleet; afterwards its tables are dropped and none of its backends may be left."""
    uid = uuid.uuid4().hex[:8]
    label = request.node.name.removeprefix("test_")[:12]
    admin = await asyncpg.connect(pg_server.dsn(application_name=f"ep-fleet-admin-{uid}"))
    fl = Fleet(pg_server, admin, name=f"ep-fleet-{label}-{uid}", table=f'fleet "{label}" {uid}')
    try:
        yield fl
        await wait_for(fl.backends, lambda pids: not pids, "backends left behind")
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {fl.qtable}, {fl.qconfig}")
        await admin.execute(f"DROP FUNCTION IF EXISTS {quote_ident(beat_function(fl.table))}")
        await admin.execute(f"DROP FUNCTION IF EXISTS {quote_ident(fill_function(fl.table))}")
        await admin.execute(f"DROP FUNCTION IF EXISTS {quote_ident(claim_function(fl.table))}")
        await admin.close()


# ----------------------------------------------------------------------------- waiting


async def wait_for(
    probe: Callable[[], Any], predicate: Callable[[Any], bool], what: str, bound: float = BOUND
) -> Any:
    """Poll ``probe()`` (sync or async) until ``predicate`` holds, within ``bound`` seconds."""
    return await eventually(probe, predicate, what, bound=bound, poll=POLL)


async def pause_heartbeats(pool: Pool[Any]) -> None:
    """Space the member's heartbeats a minute apart, and wait until it is in that long sleep.

    ``heartbeat_interval`` is a public attribute, read before each sleep; a
    member that has not heartbeated for three intervals is in the long sleep.
    """
    assert isinstance(pool.membership, PostgresMembership)
    pool.membership.heartbeat_interval = 60.0
    await wait_for(
        lambda: pool.fleet().last_heartbeat_age,
        lambda age: age is not None and age > 3 * INTERVAL,
        "still heartbeating every interval",
    )


def limits(pools: Sequence[Pool[Any]]) -> list[int]:
    return [p.stats().max for p in pools]


# ----------------------------------------------------------------------------- load


@contextlib.asynccontextmanager
async def load(
    pool: Pool[Any],
    workers: int,
    query: float = 0.03,
    think: float = 0.0,
    *,
    timeout: float = BOUND,
    tolerate_timeouts: bool = False,
) -> AsyncIterator[None]:
    """``workers`` tasks borrow, run ``pg_sleep(query)``, give back, pause ``think``; stop after.

    With ``think=0`` a worker always holds or waits for a connection, but each
    connection comes back every ``query`` seconds, so a heartbeat (which waits
    for a connection ahead of callers) never waits long.
    """
    stop = anyio.Event()

    async def worker() -> None:
        while not stop.is_set():
            try:
                async with pool.acquire(timeout=timeout) as conn:
                    await conn.execute(f"SELECT pg_sleep({query})")
            except PoolTimeout:
                if not tolerate_timeouts:
                    raise
            if think:
                await anyio.sleep(think)

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
        try:
            yield
        finally:
            stop.set()


@contextlib.asynccontextmanager
async def holding(pool: Pool[Any], n: int) -> AsyncIterator[anyio.Event]:
    """``n`` tasks borrow a connection each and keep it until the block ends (or the event)."""
    held = 0
    all_in = anyio.Event()
    let_go = anyio.Event()

    async def hold() -> None:
        nonlocal held
        async with pool.acquire(timeout=BOUND) as conn:
            await conn.execute("SELECT 1")
            held += 1
            if held == n:
                all_in.set()
            await let_go.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(hold)
        with anyio.fail_after(BOUND):
            await all_in.wait()
        try:
            yield let_go
        finally:
            let_go.set()


# ----------------------------------------------------------------------------- sampling


@dataclass
class Sampler:
    """Counts the fleet's backends in ``pg_stat_activity`` every :data:`SAMPLE` seconds."""

    fleet: Fleet
    samples: list[tuple[float, frozenset[int]]] = field(default_factory=list)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        # A connection of its own: the admin connection is used by the test meanwhile.
        conn = await asyncpg.connect(self.fleet.server.dsn(application_name="ep-fleet-sampler"))
        try:
            task_status.started()
            while True:
                rows = await conn.fetch(
                    f"SELECT pid FROM pg_stat_activity WHERE {self.fleet.where}", self.fleet.app
                )
                self.samples.append((anyio.current_time(), frozenset(r[0] for r in rows)))
                await anyio.sleep(SAMPLE)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    def check(
        self,
        total: int,
        extra: set[int],
        members: Callable[[float], int],
        since: float = 0.0,
        until: float = float("inf"),
        *,
        windows: Sequence[tuple[int, float, float]] = (),
    ) -> tuple[int, int]:
        """Assert the bound on every sample in ``[since, until)``; return (max backends, max Z).

        ``extra``: PIDs of connections the members opened outside their slots
        and closed; ``windows``: ``(pid, opened, done)`` of each such connection,
        also those a joining member adopted afterwards (outside the budget only
        until ``done``). ``members(t)`` is the number of members alive at ``t``
        (each has at most one heartbeat, so at most one extra connection, in
        flight).
        """
        window = [(t, pids) for t, pids in self.samples if since <= t < until]
        assert window, "no samples taken"
        worst_z = 0
        for t, pids in window:
            # a sample is taken a few ms before ``t``: a connection done by then may show
            outside = extra | {pid for pid, t0, t1 in windows if t0 <= t <= t1 + 0.05}
            budgeted, z = pids - outside, len(pids & outside)
            assert len(budgeted) <= total, (
                f"{len(pids)} backends at t={t - window[0][0]:.3f}s: {len(budgeted)} within "
                f"the budget > total {total} (+ Z={z} extra heartbeat connections)"
            )
            assert z <= members(t), f"Z={z} extra connections > {members(t)} members"
            worst_z = max(worst_z, z)
        return max(len(p) for _, p in window), worst_z


@contextlib.asynccontextmanager
async def sampling(fleet: Fleet) -> AsyncIterator[Sampler]:
    sampler = Sampler(fleet)
    async with anyio.create_task_group() as tg:
        await tg.start(sampler.run)
        try:
            yield sampler
        finally:
            tg.cancel_scope.cancel()


# ----------------------------------------------------------------------------- processes


@dataclass
class MemberProcess:
    """A running ``tests/fleet/fleet_member.py`` and every JSON line it has printed."""

    process: anyio.abc.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    ended: float | None = None

    @property
    def status(self) -> dict[str, Any]:
        """Its latest status (or joined) line."""
        for e in reversed(self.events):
            if e["event"] in ("status", "joined"):
                return e
        return {}

    @property
    def exit(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == "exit"), None)

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(command.encode() + b"\n")

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Poll its latest status until ``predicate`` holds; return that status."""
        return await wait_for(lambda: self.status, predicate, what)

    def describe(self) -> str:
        return f"stderr: {self.stderr.decode(errors='replace')[-2000:]}"


class MemberProcesses:
    """Starts member processes and reads what they print; stops and reaps them all at the end."""

    def __init__(self, fleet: Fleet, tg: anyio.abc.TaskGroup) -> None:
        self.fleet = fleet
        self.tg = tg
        self.members: list[MemberProcess] = []

    async def start(self, **options: Any) -> MemberProcess:
        """Start a member (``options``: fleet_member.py's, e.g. ``workers=4``); wait its join."""
        args = [sys.executable, str(RUNNER), "--table", self.fleet.table, "--name", self.fleet.name]
        defaults = {"interval": INTERVAL, "ttl": TTL, "heartbeat_timeout": HB_TIMEOUT}
        for key, value in {**defaults, **options}.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, DSN_ENV: self.fleet.server.dsn()}
        process = await anyio.open_process(args, env=env)
        member = MemberProcess(process, started=anyio.current_time())
        self.members.append(member)
        self.tg.start_soon(self._read, member)
        self.tg.start_soon(self._drain, member)
        await wait_for(
            lambda: member.events or member.ended is not None,
            bool,
            f"member never joined ({member.describe()})",
        )
        assert member.events, member.describe()
        assert member.events[0]["event"] == "joined", member.describe()
        return member

    async def _read(self, member: MemberProcess) -> None:
        assert member.process.stdout is not None
        lines = BufferedByteReceiveStream(member.process.stdout)
        with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
            while True:
                member.events.append(json.loads(await lines.receive_until(b"\n", 1 << 20)))
        await member.process.wait()
        member.ended = anyio.current_time()

    async def _drain(self, member: MemberProcess) -> None:
        assert member.process.stderr is not None
        with contextlib.suppress(anyio.EndOfStream):
            async for chunk in member.process.stderr:
                member.stderr += chunk

    async def stop(self, member: MemberProcess) -> dict[str, Any]:
        """Ask it to stop (load ends, pool closes, lease deleted); wait for its exit line."""
        await member.send("stop")
        await wait_for(lambda: member.ended, lambda e: e is not None, "member never exited")
        assert member.process.returncode == 0, member.describe()
        assert member.exit is not None, member.describe()
        return member.exit

    def alive(self, t: float) -> int:
        """How many members were running at ``t``."""
        return sum(1 for m in self.members if m.started <= t and (m.ended is None or t < m.ended))

    def extra_pids(self) -> set[int]:
        return {pid for m in self.members if m.exit for pid in m.exit["extra_pids"]}

    def extra_windows(self) -> list[tuple[int, float, float]]:
        return [tuple(w) for m in self.members if m.exit for w in m.exit["extra_windows"]]

    async def reap(self) -> None:
        for member in self.members:
            process = member.process
            if process.returncode is None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    assert process.stdin is not None
                    await process.stdin.aclose()  # EOF on stdin: the member stops by itself
        with anyio.move_on_after(10):
            for member in self.members:
                await member.process.wait()
        for member in self.members:
            if member.process.returncode is None:
                member.process.kill()
            await member.process.aclose()


@contextlib.asynccontextmanager
async def member_processes(fleet: Fleet) -> AsyncIterator[MemberProcesses]:
    async with anyio.create_task_group() as tg:
        procs = MemberProcesses(fleet, tg)
        try:
            yield procs
        finally:
            with anyio.CancelScope(shield=True):
                await procs.reap()


# ============================================================================= tests


async def test_closing_member_deletes_its_lease_and_the_others_take_its_share(
    fleet: Fleet,
) -> None:
    """A member that closes deletes its lease; the other, asking for more, takes the whole total."""
    stays = fleet.pool(membership={"instance_id": "stays"})
    goes = fleet.pool(membership={"instance_id": "goes"})
    async with stays, load(stays, 12):
        async with goes, load(goes, 12):
            await wait_for(lambda: limits([stays, goes]), lambda got: got == [5, 5], "no 5/5")
            assert sorted(await fleet.leases()) == ["goes", "stays"]
        assert "goes" not in await fleet.leases()
        await wait_for(lambda: stays.stats().max, lambda n: n == 10, "share never taken over")
        await wait_for(lambda: len(stays.fleet().members), lambda n: n == 1, "goes still seen")


async def shift_to(pools: Sequence[Pool[Any]], busy: int) -> float:
    """Load ``pools[busy]`` beyond the total until it has it all; return how long that took."""
    shifted = anyio.current_time()
    async with load(pools[busy], 12):
        expected = [10 if i == busy else 0 for i in range(len(pools))]
        await wait_for(lambda: limits(pools), lambda got: got == expected, f"m{busy} never got all")
        took = anyio.current_time() - shifted
        await wait_for(lambda: pools[busy].stats().size, lambda n: n == 10, "never grew to 10")
        assert pools[busy].fleet().share == 10
        await anyio.sleep(0.2)  # the load runs a while at full size
    return took


async def test_demand_shift_moves_the_budget_to_the_busy_member(fleet: Fleet) -> None:
    """One busy member gets the whole total while the others go to 0; then it follows the load."""
    pools = [fleet.pool(membership={"instance_id": f"m{i}"}) for i in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for p in pools:
            await stack.enter_async_context(p)
        sampler = await stack.enter_async_context(sampling(fleet))
        start = anyio.current_time()
        times = []
        for busy in (0, 1, 2):
            times.append(await shift_to(pools, busy))
        end = anyio.current_time()
    max_seen, max_z = sampler.check(
        10, fleet.extra_pids(), lambda t: 3, start, end, windows=fleet.extra_windows()
    )
    print(
        f"demand shift: converged in {', '.join(f'{t:.2f}s' for t in times)}; "
        f"max {max_seen} backends (Z <= {max_z}) for a total of 10"
    )


async def heartbeats_until_total(pool: Pool[Any], total: int, since: float) -> int:
    """Wait until ``pool`` uses ``total``; return how many heartbeats it began after ``since``."""
    beats: set[float] = set()

    def adopted() -> bool:
        f = pool.fleet()
        assert f.last_heartbeat_age is not None
        began = round(anyio.current_time() - f.last_heartbeat_age, 6)
        if began >= since:
            beats.add(began)
        return f.fleet_total == total

    await wait_for(adopted, bool, f"total {total} never adopted")
    return len(beats)


async def test_live_total_change_is_adopted_within_two_heartbeats(fleet: Fleet) -> None:
    """set_fleet_total(n) on one member: every member uses n by its second heartbeat after."""
    pools = [fleet.pool(membership={"instance_id": f"m{i}"}) for i in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for p in pools:
            await stack.enter_async_context(p)
        for p in pools:
            await stack.enter_async_context(load(p, 12))
        await wait_for(lambda: sum(limits(pools)), lambda n: n == 10, "never all 10 in use")
        for total, expected in ((7, [2, 2, 3]), (15, [5, 5, 5]), (None, [3, 3, 4])):
            await pools[0].set_fleet_total(total)
            assert pools[0].fleet().fleet_total == (total or 10)  # this one at once
            changed = anyio.current_time()
            for p in pools[1:]:
                beats = await heartbeats_until_total(p, total or 10, changed)
                assert beats <= 2, f"total {total} adopted only after {beats} heartbeats"
            await wait_for(lambda: sorted(limits(pools)), expected.__eq__, "no new split")
            row = await fleet.admin.fetchval(
                f"SELECT total_max_connections FROM {fleet.qconfig} WHERE pool_name = $1",
                fleet.name,
            )
            assert row == total


async def test_scale_out_to_ten_processes_and_back_under_load_stays_within_the_bound(
    fleet: Fleet,
) -> None:
    """1 -> 10 -> 1 member processes under bursty load: backends <= total + Z at every sample."""
    total = 12
    load_options = {"total": total, "workers": 4, "query_ms": 20, "think_ms": 20}
    async with member_processes(fleet) as procs, sampling(fleet) as sampler:
        first = await procs.start(**load_options)
        for _ in range(9):
            await procs.start(**load_options)
        await wait_for(
            lambda: [m.status.get("members") for m in procs.members],
            lambda seen: seen == [10] * 10,
            "members never all saw each other",
        )
        await anyio.sleep(1.5)  # ten members under load for a while
        statuses = [m.status for m in procs.members]
        assert all(s["healthy"] for s in statuses), statuses
        claims, claimed = await fleet.admin.fetchrow(
            f"SELECT (SELECT sum(claim) FROM {fleet.qtable} WHERE pool_name = $1),"
            f" (SELECT claimed FROM {fleet.qconfig} WHERE pool_name = $1)",
            fleet.name,
        )
        assert claims == claimed, "the claims' sum and the rows disagree"
        assert claimed <= total + len(procs.members), "more claimed than total + Z"
        exits = [await procs.stop(m) for m in procs.members[:0:-1]]
        await first.wait(lambda s: s["members"] == 1 and s["limit"] == total, "first never alone")
        exits.append(await procs.stop(first))
    assert all(e["acquires"] > 0 and e["timeouts"] == 0 for e in exits), exits
    max_seen, max_z = sampler.check(
        total, procs.extra_pids(), procs.alive, windows=procs.extra_windows()
    )
    over = sum(1 for _, pids in sampler.samples if len(pids) > total)
    print(
        f"scale-out 1->10->1: {len(sampler.samples)} samples, max {max_seen} backends for a "
        f"total of {total}, max Z {max_z}, {over} samples above the total"
    )


async def test_killed_member_process_share_is_reclaimed_within_the_ttl(fleet: Fleet) -> None:
    """kill -9 of a busy member: the other busy member takes its share within the TTL + a beat."""
    async with member_processes(fleet) as procs:
        doomed = await procs.start(workers=8, query_ms=50)
        busy = await procs.start(workers=8, query_ms=50)
        idle = await procs.start()
        for m in (doomed, busy):
            await m.wait(lambda s: s["members"] == 2 and s["limit"] == 5, "busy never at 5")
        assert (idle.status["active"], idle.status["limit"]) == (False, 0)
        async with sampling(fleet) as sampler:
            await anyio.sleep(0.3)  # the load runs a while
            doomed.process.kill()
            killed = anyio.current_time()
            status = await busy.wait(
                lambda s: s["members"] == 1 and s["limit"] >= 8, "share never reclaimed"
            )
            reclaimed = status["t"] - killed
            await wait_for(lambda: doomed.ended, lambda e: e is not None, "not reaped")
            await anyio.sleep(0.3)  # the survivor runs a while at its new limit
        assert doomed.process.returncode == -9
        await procs.stop(busy)
        await procs.stop(idle)
    # The lease outlives its member by at most the TTL; then one heartbeat of the survivor.
    assert reclaimed <= TTL + 1.1 * INTERVAL + HB_TIMEOUT + 0.5, reclaimed
    max_seen, max_z = sampler.check(
        10, procs.extra_pids(), procs.alive, windows=procs.extra_windows()
    )
    print(
        f"kill -9: share reclaimed {reclaimed:.2f}s after the kill (ttl {TTL:g}s); "
        f"max {max_seen} backends (Z <= {max_z}) for a total of 10"
    )


async def sleeping_backends(fleet: Fleet, n: int) -> set[int]:
    """Wait until ``n`` of the fleet's backends have run one query for over half a second."""
    rows = await wait_for(
        lambda: fleet.admin.fetch(
            f"SELECT pid FROM pg_stat_activity WHERE {fleet.where}"
            " AND state = 'active' AND now() - query_start > interval '0.5 s'",
            fleet.app,
        ),
        lambda rows: len(rows) == n,
        f"never {n} long queries running",
    )
    return {r[0] for r in rows}


async def test_killed_member_backends_running_queries_count_until_the_server_ends_them(
    fleet: Fleet,
) -> None:
    """kill -9 mid-query: the survivor grows only as the orphaned backends end; never past total+Z.

    The killed member runs multi-second ``pg_sleep`` on all three of its
    connections; the server keeps those backends until the queries end, long
    after its lease has expired (``client_connection_check_interval`` off here).
    """
    total = 6
    async with member_processes(fleet) as procs:
        doomed = await procs.start(total=total, workers=3, query_ms=8000, check_interval=0)
        busy = await procs.start(total=total, workers=6, query_ms=30, check_interval=0)
        for m in (doomed, busy):
            await m.wait(lambda s: s["members"] == 2 and s["limit"] == 3, "never split 3/3")
        orphans = await sleeping_backends(fleet, 3)
        async with sampling(fleet) as sampler:
            os.kill(doomed.process.pid, signal.SIGKILL)
            await wait_for(lambda: doomed.ended, lambda e: e is not None, "not reaped")
            await wait_for(
                fleet.backends, lambda pids: not pids & orphans, "orphans never ended", bound=20
            )
            await busy.wait(
                lambda s: s["members"] == 1 and s["limit"] == total, "share never taken over"
            )
        assert doomed.process.returncode == -signal.SIGKILL
        extra = set((await procs.stop(busy))["extra_pids"])
    # Z: the survivor's extra heartbeat connections (known), plus at most one of the
    # killed member's (it borrowed all of its own, so its heartbeats ran on extra ones).
    worst = max(len(pids - extra) for _, pids in sampler.samples)
    assert worst <= total + 1, f"{worst} backends for a total of {total} (+1 killed member's)"
    print(f"kill -9 mid-query: max {worst} backends beside the survivor's extra, total {total}")


async def test_killed_member_queries_end_soon_with_client_connection_check_interval(
    fleet: Fleet,
) -> None:
    """Members set client_connection_check_interval: a killed member's queries end long before."""
    async with member_processes(fleet) as procs:
        doomed = await procs.start(total=6, workers=2, query_ms=120_000)
        orphans = await sleeping_backends(fleet, 2)
        os.kill(doomed.process.pid, signal.SIGKILL)
        # Its queries would run for a minute or more; the server checks every 2 s.
        await wait_for(fleet.backends, lambda pids: not pids & orphans, "orphans still running")


async def test_member_connections_carry_the_fleet_tag_and_the_check_interval(
    fleet: Fleet,
) -> None:
    """A member's connections are named <prefix>|<pool>|<instance> and set the check interval."""
    pool = fleet.pool(membership={"instance_id": "m0"})
    async with pool, pool.acquire() as conn:
        name = await conn.fetchval("SHOW application_name")
        interval = await conn.fetchval("SHOW client_connection_check_interval")
    assert name == f"elasticpool|{fleet.name}|m0"
    assert interval == "2s"


async def test_psycopg_member_connections_carry_the_tag_and_keep_their_options(
    fleet: Fleet,
) -> None:
    """With psycopg the tag replaces application_name; the check interval joins the options."""
    psycopg_adapter = pytest.importorskip("elasticpool.psycopg")
    connector = psycopg_adapter.PsycopgConnector(
        fleet.server.dsn(), kwargs={"options": "-c lock_timeout=4321"}
    )
    membership = PostgresMembership(
        table=fleet.table, heartbeat_interval=INTERVAL, lease_ttl=TTL, instance_id="p0"
    )
    pool: Pool[Any] = Pool(connector, membership=membership, name=fleet.name, max_connections=2)
    async with pool, pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT current_setting('application_name'), current_setting('lock_timeout'),"
            " current_setting('client_connection_check_interval')"
        )
        row = await cur.fetchone()
    assert row == (f"elasticpool|{fleet.name}|p0", "4321ms", "2s")


class FallbackLog(logging.Handler):
    """Records (time, limit) of every 'falling back to limit N' warning of elasticpool.fleet."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.fallbacks: list[tuple[float, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "falling back to limit" in record.msg:
            self.fallbacks.append((anyio.current_time(), int(record.args[2])))  # type: ignore[index]


@contextlib.contextmanager
def fallback_log() -> Any:
    handler = FallbackLog()
    logger = logging.getLogger("elasticpool.fleet")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("mode", ["strict", "soft"])
async def test_coordination_outage_keeps_the_last_limit_for_a_ttl_then_falls_back(
    fleet: Fleet, mode: str
) -> None:
    """Lease table gone: the limit holds for one TTL, then strict -> 0, soft -> total // members."""
    busy = fleet.pool(limit_mode=mode, membership={"instance_id": "a"})
    # A long TTL: only "a" falls back during the test (the log does not tell members apart).
    other = fleet.pool(limit_mode=mode, ttl=30.0, membership={"instance_id": "b"})
    away = quote_ident(fleet.table + " away")
    async with busy, other, holding(other, 1), holding(busy, 6) as let_go:
        # demands 6 and 1 of 10: headroom 3 over the two askers, the odd one to "a" -> 8/2
        await wait_for(lambda: limits([busy, other]), lambda got: got == [8, 2], "never 8/2")
        with fallback_log() as log:
            await fleet.admin.execute(f"ALTER TABLE {fleet.qtable} RENAME TO {away}")
            await wait_for(lambda: busy.fleet().healthy, lambda h: not h, "never noticed")
            age = busy.fleet().last_heartbeat_age
            assert age is not None
            last_ok = anyio.current_time() - age
            assert busy.stats().max == 8  # kept
            expected = 0 if mode == "strict" else min(8, 10 // 2)
            await wait_for(lambda: log.fallbacks, bool, "never fell back", bound=TTL + 5)
            at, limit = log.fallbacks[0]
            assert limit == expected
            assert busy.stats().max == expected
            kept = at - last_ok
            assert kept >= TTL, f"fell back after {kept:.2f}s, before the ttl"
            assert kept <= TTL + 1.1 * INTERVAL + 2 * HB_TIMEOUT + 0.5, kept
            let_go.set()  # the borrowers are done
            if mode == "strict":
                # nothing new opens at limit 0: the pool drains as connections come back
                await wait_for(lambda: busy.stats().size, lambda n: n == 0, "never drained")
            await fleet.admin.execute(f"ALTER TABLE {away} RENAME TO {fleet.qtable}")
            await wait_for(lambda: busy.fleet().healthy, bool, "never recovered")
            assert [n for _, n in log.fallbacks] == [expected]
        print(f"outage ({mode}): kept the last limit {kept:.2f}s (ttl {TTL:g}s), then {limit}")


@pytest.fixture
async def app_role(fleet: Fleet) -> AsyncIterator[tuple[str, str, str]]:
    """A LOGIN role with no rights but USAGE on a schema of its own: (role, password, schema)."""
    uid = uuid.uuid4().hex[:8]
    role, password, schema = f"fleet app {uid}", uuid.uuid4().hex, f'fleet "s" {uid}'
    admin = fleet.admin
    await admin.execute(f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '{password}'")
    await admin.execute(f"CREATE SCHEMA {quote_ident(schema)}")
    await admin.execute(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quote_ident(role)}")
    try:
        yield role, password, schema
    finally:
        await admin.execute(f"DROP SCHEMA {quote_ident(schema)} CASCADE")
        await admin.execute(f"DROP ROLE {quote_ident(role)}")


async def test_least_privilege_role_needs_the_tables_created_by_an_administrator(
    fleet: Fleet, app_role: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Without CREATE rights and tables callers wait at 0; once an admin creates them it runs."""
    role, password, schema = app_role
    dsn = fleet.server.dsn(user=role, password=password)
    pool = fleet.pool(dsn=dsn, membership={"schema": schema, "create_tables": False})
    membership = pool.membership
    assert isinstance(membership, PostgresMembership)
    caplog.set_level(logging.DEBUG, logger="elasticpool.fleet")
    async with pool:
        with pytest.raises(PoolTimeout):  # the caller's join fails: no tables
            await pool.acquire(timeout=4 * INTERVAL)
        status = pool.fleet()
        assert (status.healthy, status.limit) == (False, 0)
        missing = "is missing and create_tables is False"
        assert any(missing in r.getMessage() for r in caplog.records), caplog.records
        ddl = membership.create_tables_sql()
        assert ddl.count("CREATE TABLE IF NOT EXISTS") == 2
        assert ddl.count("CREATE OR REPLACE FUNCTION") == 3  # the heartbeat, its helper, the claim
        assert quote_ident(schema) in ddl
        await fleet.admin.execute(ddl)
        lease_table = f"{quote_ident(schema)}.{fleet.qtable}"
        config_table = f"{quote_ident(schema)}.{fleet.qconfig}"
        await fleet.admin.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {lease_table}, {config_table}"
            f" TO {quote_ident(role)}"
        )
        async with pool.acquire(timeout=BOUND) as conn:
            assert (pool.fleet().healthy, pool.stats().max) == (True, 10)
            assert await conn.fetchval("SELECT current_user") == role
            assert not await conn.fetchval("SELECT has_schema_privilege($1, 'CREATE')", schema)
        await pool.set_fleet_total(6)  # the config table, with the same rights
        assert pool.fleet().fleet_total == 6
    live = await fleet.admin.fetchval(
        f"SELECT count(*) FROM {lease_table} WHERE expires_at >= now()"
    )
    assert live == 0  # it left


async def test_members_recover_after_a_server_restart(private_server: EmbeddedPostgres) -> None:
    """After the server restarts (every connection lost) the members coordinate and serve again."""
    uid = uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(private_server.dsn())
    fl = Fleet(
        private_server, admin, name=f"ep-fleet-restart-{uid}", table=f'fleet "restart" {uid}'
    )
    pools = [fl.pool(membership={"instance_id": f"m{i}"}) for i in range(2)]
    await admin.close()
    async with pools[0], pools[1]:
        async with load(pools[0], 12), load(pools[1], 12):
            await wait_for(lambda: limits(pools), lambda got: got == [5, 5], "never 5/5")
        # idle again, each keeping what nobody else asks for: both stay members
        await anyio.to_thread.run_sync(private_server.restart)
        restarted = anyio.current_time()

        def beat_since_restart() -> list[bool]:
            out = []
            for p in pools:
                f = p.fleet()
                age = f.last_heartbeat_age
                out.append(f.healthy and age is not None and anyio.current_time() - age > restarted)
            return out

        for p in pools:
            async with p.acquire(timeout=BOUND) as conn:
                assert await conn.fetchval("SELECT 1") == 1
        await wait_for(beat_since_restart, all, "members never coordinated again")
        assert sum(limits(pools)) <= 10
    fl.admin = await asyncpg.connect(private_server.dsn())
    try:
        await wait_for(fl.backends, lambda pids: not pids, "backends left behind")
    finally:
        await fl.admin.close()


async def test_closing_member_keeps_its_share_until_its_borrowers_are_back(fleet: Fleet) -> None:
    """A member that closes with borrowed connections out: the others may not grow into them yet."""
    closing = fleet.pool(ttl=30.0, membership={"instance_id": "a"})
    other = fleet.pool(ttl=30.0, membership={"instance_id": "b"})
    async with sampling(fleet) as sampler:
        await closing.open()  # alone first: it borrows 5 with room to spare for its heartbeat
        try:
            async with holding(closing, 5) as let_go, other, load(other, 3):
                # demands 5 and 3 of 10, "a" holding 6 (its heartbeat connection idle): "b"
                # gets 3 or 4 (the spare unit goes to one asker or the other, by when each
                # asked; with reset="rollback" a borrower's connection is back at once, so
                # "b" asks for just 3)
                await wait_for(
                    lambda: (closing.stats().size, closing.stats().in_use, other.stats().max),
                    lambda s: s[:2] == (6, 5) and s[2] >= 3,
                    "never 6/5 in a with b at 3 or more",
                )
                await pause_heartbeats(closing)  # so no heartbeat of its own writes its lease back
                async with anyio.create_task_group() as tg:
                    tg.start_soon(closing.close)
                    async with load(other, 7):  # "b" wants 10 now
                        await anyio.sleep(0.5)  # "a" drains, "b" runs a while
                    let_go.set()  # a's borrowers are done: it finishes closing
        finally:
            await closing.close()
    sampler.check(10, fleet.extra_pids(), lambda t: 2, windows=fleet.extra_windows())


async def test_member_with_every_connection_borrowed_keeps_its_lease(fleet: Fleet) -> None:
    """A member whose connections are all borrowed for longer than the TTL keeps its share."""
    a = fleet.pool(membership={"instance_id": "a"})
    b = fleet.pool(membership={"instance_id": "b"})
    async with a, b, sampling(fleet) as sampler, load(b, 10, query=0.02), holding(a, 5):
        await wait_for(
            lambda: (a.stats().max, a.stats().size, b.stats().max),
            lambda s: s == (5, 5, 5),
            "never 5/5",
        )
        await anyio.sleep(TTL + 1.0)  # a's borrowers keep their connections a while
    sampler.check(10, fleet.extra_pids(), lambda t: 2, windows=fleet.extra_windows())


async def test_joining_member_opens_its_floor_only_within_its_grant(fleet: Fleet) -> None:
    """A member joining with min_connections while the budget is taken opens nothing yet."""
    a = fleet.pool(ttl=30.0, membership={"instance_id": "a"})
    async with a, holding(a, 10):
        b = fleet.pool(min_connections=3, membership={"instance_id": "b"})
        async with b:
            assert b.stats().size == 0, "its floor opened outside its grant"
            assert b.stats().max == 0
            assert a.stats().size + b.stats().size <= 10
            leases = await fleet.leases()
    assert leases["a"]["granted"] == 10
    assert "b" not in leases or leases["b"]["granted"] == 0


class SlowBeatReply(asyncpg.Connection):  # type: ignore[misc]
    """While ``slow`` is set, a heartbeat's answer reaches the member after its timeout.

    The heartbeat is committed on the server; the client only hears of it late.
    """

    slow = False

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        rows = await super().fetch(query, *args, **kwargs)
        if type(self).slow and "_beat_v" in query:
            await anyio.sleep(2 * HB_TIMEOUT)
        return rows


async def test_heartbeat_timing_out_after_its_commit_keeps_the_committed_grant(
    fleet: Fleet,
) -> None:
    """A heartbeat whose answer comes too late leaves the pool no higher than its lease claims."""
    slow: type[SlowBeatReply] = type("Slow", (SlowBeatReply,), {})
    a = fleet.pool(
        ttl=30.0, membership={"instance_id": "a"}, connect_kwargs={"connection_class": slow}
    )
    b = fleet.pool(ttl=30.0, membership={"instance_id": "b"})
    async with a, load(a, 10):
        await wait_for(lambda: a.stats().max, lambda n: n == 10, "a never alone at 10")
        async with b, load(b, 10), sampling(fleet) as sampler:
            slow.slow = True
            await wait_for(
                fleet.leases,
                lambda rows: "a" in rows and rows["a"]["granted"] < 10,
                "a never committed a lower grant",
            )
            await anyio.sleep(1.0)  # both under load a while, every answer to "a" late
            claim = await fleet.admin.fetchval(
                f"SELECT claim FROM {fleet.qtable} WHERE pool_name = $1 AND instance_id = 'a'",
                fleet.name,
            )
            limit = a.stats().max
            slow.slow = False
    # What others count for "a" is its row's claim, max(holding, granted): between the
    # heartbeat's commit and the grant's application the pool is frozen at the size it
    # reported, and a heartbeat whose outcome is unknown leaves it no higher than that.
    assert limit <= claim, f"pool limit {limit} above the {claim} its lease claims"
    sampler.check(10, fleet.extra_pids(), lambda t: 2, windows=fleet.extra_windows())


async def test_closed_member_leaves_no_lease_behind(fleet: Fleet) -> None:
    """A member that closes while a borrower finishes its query leaves no lease row behind."""
    a = fleet.pool(ttl=30.0, membership={"instance_id": "a"})
    await a.open()
    try:
        borrowed = anyio.Event()

        async def borrower() -> None:
            async with a.acquire() as conn:
                borrowed.set()
                await conn.execute("SELECT pg_sleep(0.5)")

        async with anyio.create_task_group() as tg:
            tg.start_soon(borrower)
            await borrowed.wait()
            await a.close()
    finally:
        await a.close()
    assert "a" not in await fleet.leases()
    assert (
        await fleet.admin.fetchval(
            f"SELECT claimed FROM {fleet.qconfig} WHERE pool_name = $1", fleet.name
        )
        == 0
    )


async def test_member_that_cannot_coordinate_says_so(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """A member whose first heartbeat fails (no lease table) logs a warning saying why."""
    async with fleet.pool(membership={"create_tables": False}) as pool:
        with pytest.raises(PoolTimeout):
            await pool.acquire(timeout=4 * INTERVAL)
        assert (pool.fleet().healthy, pool.stats().max) == (False, 0)
    assert any(
        r.levelno >= logging.WARNING and "is missing" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


async def test_members_joining_at_once_create_the_tables_without_errors(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten members asking at once on a fresh table: no heartbeat fails creating the tables."""
    caplog.set_level(logging.DEBUG, logger="elasticpool.fleet")  # first failures are debug
    pools = [fleet.pool(membership={"instance_id": f"m{i}"}) for i in range(10)]

    async def first_query(pool: Pool[Any]) -> None:
        async with pool.acquire(timeout=BOUND) as conn:
            await conn.execute("SELECT 1")

    async with contextlib.AsyncExitStack() as stack:
        for p in pools:
            await stack.enter_async_context(p)
        async with anyio.create_task_group() as tg:
            for p in pools:
                tg.start_soon(first_query, p)
    failures = [r.getMessage() for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert not failures, failures


async def test_heartbeat_waiting_for_a_connection_is_not_counted_as_a_caller(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """A heartbeat that waits for one of its own connections adds no waits or timeouts to stats."""
    a = fleet.pool(total=5, membership={"instance_id": "a"})
    async with a, holding(a, 5):
        await wait_for(lambda: a.stats().in_use, lambda n: n == 5, "five never held")
        before = a.stats()
        await anyio.sleep(10 * INTERVAL)  # heartbeats come and wait for a connection meanwhile
        after = a.stats()
        assert (after.waits, after.timeouts) == (before.waits, before.timeouts)
    assert not [r for r in caplog.records if "heartbeat failed" in r.getMessage()]


async def test_callers_queuing_at_the_limit_bring_the_heartbeat_forward(fleet: Fleet) -> None:
    """New demand at a member at its limit reaches its lease well before a regular heartbeat."""
    interval = 2.0
    a = fleet.pool(total=5, interval=interval, ttl=5 * interval, membership={"instance_id": "a"})
    b = fleet.pool(total=5, interval=interval, ttl=5 * interval, membership={"instance_id": "b"})
    async with a, b, holding(a, 4), holding(b, 1):
        await wait_for(
            fleet.leases,
            lambda rows: "b" in rows and (rows["b"]["demand"], rows["b"]["granted"]) == (1, 1),
            "b never held its one",
        )
        await wait_for(lambda: a.stats().max, lambda n: n == 4, "a never at 4")
        assert b.stats().max == 1, "a holds the rest of the total"
        asked = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(b.acquire(timeout=4 * interval).__aenter__))
            await wait_for(
                fleet.leases,
                lambda rows: rows["b"]["demand"] == 2,
                "b's demand never reached its lease",
                bound=interval,
            )
            reported = anyio.current_time() - asked
            tg.cancel_scope.cancel()
    assert reported < 0.75 * interval, f"demand reported after {reported:.2f}s"


async def test_fleet_view_reports_the_backends_the_server_sees(fleet: Fleet) -> None:
    """With application_name, fleet() reports the fleet's backends as the server counts them."""
    a = fleet.pool(membership={"instance_id": "a", "application_name": fleet.app})
    b = fleet.pool(membership={"instance_id": "b", "application_name": fleet.app})
    async with a, b, holding(a, 3), holding(b, 2):
        server = await wait_for(fleet.backends, lambda pids: len(pids) >= 5, "five never open")
        status = await wait_for(  # the view is as of a's last heartbeat: wait for one
            a.fleet,
            lambda st: (st.observed_backends or 0) >= 5 and sum(m.holding for m in st.members) >= 5,
            "a never saw the fleet's backends and holdings",
        )
        assert status.observed_backends is not None
        assert status.observed_backends <= len(server) + 2  # + heartbeat connections
        assert {m.id for m in status.members} == {"a", "b"}


async def test_an_expired_lease_stays_claimed_while_its_backends_are_open(fleet: Fleet) -> None:
    """A departed member's lease keeps its claim while the server shows its tagged backends."""
    pool = fleet.pool(total=5, membership={"instance_id": "m0"})
    ghost = f"elasticpool|{fleet.name}|gone"
    async with pool, load(pool, workers=5):
        await wait_for(lambda: pool.stats().max, lambda n: n == 5, "never at 5")
        ghosts = [await asyncpg.connect(fleet.server.dsn(application_name=ghost)) for _ in range(2)]
        try:
            # "gone" held 3 when it stopped heartbeating; 2 of its backends are still open.
            async with fleet.admin.transaction():
                await fleet.admin.execute(
                    f"INSERT INTO {fleet.qtable} (pool_name, instance_id, heartbeat_at,"
                    " expires_at, holding, granted, claim, tag)"
                    " VALUES ($1, 'gone', now(), now(), 3, 3, 3, $2)",
                    fleet.name,
                    ghost,
                )
                await fleet.admin.execute(
                    f"UPDATE {fleet.qconfig} SET claimed = claimed + 3 WHERE pool_name = $1",
                    fleet.name,
                )
            status = await wait_for(
                pool.fleet, lambda f: f.limit == 3, "departed backends never counted"
            )
            assert status.departed_backends == 2
            claim = await fleet.admin.fetchval(
                f"SELECT claim FROM {fleet.qtable} WHERE instance_id = 'gone'"
            )
            assert claim == 2, "the claim follows the backends the server still shows"
        finally:
            for g in ghosts:
                await g.close()
        await wait_for(lambda: pool.stats().max, lambda n: n == 5, "share never back")
        assert "gone" not in await fleet.leases()


async def test_idle_members_hold_no_lease_and_open_no_connection(fleet: Fleet) -> None:
    """Open members with no demand cost nothing; the first caller's connection is the join's."""
    pools = [fleet.pool(membership={"instance_id": f"m{i}"}) for i in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for p in pools:
            await stack.enter_async_context(p)
        await anyio.sleep(5 * INTERVAL)  # five heartbeat intervals in which nothing may happen
        assert await fleet.backends() == set()
        for p in pools:
            status = p.fleet()
            assert (status.active, status.limit, status.last_heartbeat_age) == (False, 0, None)
            assert isinstance(p.membership, PostgresMembership)
            assert p.membership.beats == 0
        async with pools[0].acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            assert pools[0].stats().connects == 1, "the join's connection is the one lent"
            leases = await fleet.leases()
            assert sorted(leases) == ["m0"]
            # it held nothing when it asked; the grant covers the connection it asked on
            assert (leases["m0"]["demand"], leases["m0"]["holding"]) == (1, 0)
            assert leases["m0"]["granted"] >= 1
        status = pools[0].fleet()
        assert (status.membership, status.instance, status.fleet_total, status.source) == (
            "postgres",
            "m0",
            10,
            "total",
        )
        assert status.active
        assert status.healthy
        assert [m.id for m in status.members] == ["m0"]
        created = await fleet.admin.fetchval(
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
            fleet.qtable,
            fleet.qconfig,
        )
        assert created, "the lease tables were not created"


async def test_a_member_gone_idle_closes_its_last_connection_and_leaves(fleet: Fleet) -> None:
    """Heartbeats run on the member's idle connection without resetting its idle clock.

    So ``idle_timeout`` still closes it in a fleet with room to spare (no
    pressure to let go), and the member then leaves: no lease, no backend.
    """
    pool = fleet.pool(idle_timeout=4 * INTERVAL)
    async with pool:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        assert pool.fleet().active
        await wait_for(
            lambda: (pool.stats().size, pool.fleet().active),
            lambda seen: seen == (0, False),
            "the idle member kept its connection (each heartbeat made it look used)",
        )
        assert isinstance(pool.membership, PostgresMembership)
        assert pool.membership.beats >= 3, "it heartbeat on that connection meanwhile"
        await wait_for(fleet.backends, lambda pids: not pids, "its backend stayed")
        live = await fleet.admin.fetchval(
            f"SELECT count(*) FROM {fleet.qtable} WHERE pool_name = $1 AND expires_at >= now()"
            " AND claim > 0",
            fleet.name,
        )
        assert live == 0, "its lease still claims a connection"


async def test_members_with_demand_split_the_total(fleet: Fleet) -> None:
    """Three members each asking for more than the total split 10 as 4/3/3 and see it all."""
    pools = [fleet.pool(membership={"instance_id": f"m{i}"}) for i in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for p in pools:
            await stack.enter_async_context(p)
        for p in pools:
            await stack.enter_async_context(load(p, 12))
        await wait_for(
            lambda: sorted(limits(pools)), lambda got: got == [3, 3, 4], "never split 4/3/3"
        )
        status = pools[1].fleet()
        assert [m.id for m in status.members] == ["m0", "m1", "m2"]
        assert sum(m.share for m in status.members) == 10
        assert status.claimed is not None
        assert status.claimed <= 10
        assert status.last_heartbeat_age is not None
        assert status.last_heartbeat_age < TTL
        rows = await fleet.admin.fetch(
            f"SELECT sum(claim) FROM {fleet.qtable} WHERE pool_name = $1"
            f" UNION ALL SELECT claimed FROM {fleet.qconfig} WHERE pool_name = $1",
            fleet.name,
        )
        assert rows[0][0] <= 10


async def test_a_percentage_total_is_resolved_against_the_server(fleet: Fleet) -> None:
    """total_max_connections="50%": half the server's usable connections, pool and fleet alike."""
    most, reserved = await fleet.admin.fetchrow(
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int"
        " + coalesce(current_setting('reserved_connections', true), '0')::int"
    )
    expected = (most - reserved) // 2
    alone: Pool[Any] = Pool(TrackingConnector(fleet.server.dsn()), total_max_connections="50%")
    async with alone:
        assert alone.settings.total_max_connections == expected
        assert (alone.stats().max, alone.stats().idle, alone.stats().connects) == (expected, 1, 1)
        async with alone.acquire() as conn:  # the connection that asked serves the first caller
            assert await conn.fetchval("SELECT 1") == 1
        assert alone.stats().connects == 1
    member = fleet.pool(total="50%")
    async with member, member.acquire():
        assert member.fleet().fleet_total == expected


async def test_two_pool_names_share_a_database_budget(fleet: Fleet) -> None:
    """Totals of 15 each under a database budget of 20: 10/10 when both ask; 15 when one idles."""
    other = fleet.name + "-b"
    db = {"database_max_connections": 20}
    a = fleet.pool(total=15, membership={"instance_id": "a", **db})
    b = fleet.pool(total=15, name=other, membership={"instance_id": "b", **db})
    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.append(
                await fleet.admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE strpos(application_name, $1) > 0"
                    " OR strpos(application_name, $2) > 0",
                    f"|{fleet.name}|",
                    f"|{other}|",
                )
            )
            await anyio.sleep(SAMPLE)

    async with a, b, anyio.create_task_group() as tg:
        tg.start_soon(sample)
        async with load(a, 20):
            async with load(b, 20):
                await wait_for(lambda: limits([a, b]), lambda got: got == [10, 10], "never 10/10")
                status = a.fleet()
                assert (status.database_total, status.fleet_total) == (20, 15)
                assert status.database_claimed is not None
                assert status.database_claimed <= 20
                await anyio.sleep(0.5)  # both busy a while at their split
            # "b" idles (and leaves): "a" takes its own total, no more
            await wait_for(lambda: a.stats().max, lambda n: n == 15, "a never reached 15")
            await wait_for(lambda: a.stats().size, lambda n: n == 15, "a never grew to 15")
        tg.cancel_scope.cancel()
    assert max(seen) <= 20 + 2, f"{max(seen)} backends for a database budget of 20"
    rows = await fleet.admin.fetch(f"SELECT pool_name, total FROM {fleet.qconfig} ORDER BY 1")
    assert [(r[0], r[1]) for r in rows] == [("", 20), (fleet.name, 15), (other, 15)]


async def test_open_cancelled_during_a_hanging_first_heartbeat_is_undone(fleet: Fleet) -> None:
    """An open cancelled while its first heartbeat hangs leaves a new pool; the retry joins."""
    async with FaultProxy(fleet.server.host, fleet.server.port) as proxy:
        pool = fleet.pool(
            dsn=proxy.dsn_for(fleet.server.dsn()),
            interval=1.0,
            ttl=10.0,
            heartbeat_timeout=2.0,  # longer than the caller will wait for open()
            membership={"instance_id": "a"},
            min_connections=1,  # a member with a floor joins when it opens
        )
        proxy.blackhole()
        with anyio.move_on_after(0.2) as scope:  # e.g. asyncio.wait_for(pool.open(), 0.2)
            await pool.open()
        assert scope.cancelled_caught
        assert repr(pool).startswith(f"<Pool {fleet.name!r} new ")
        proxy.heal()
        async with pool:
            assert pool.stats().max > 0
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT 1") == 1
            assert "a" in await fleet.leases()
