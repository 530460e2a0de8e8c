"""The fleet budget for threaded pools: sync and async members of one pool name share one total.

The membership is the async :class:`~elasticpool.PostgresMembership`,
unchanged, run by each :class:`~elasticpool.SyncPool` on an event loop of its
own. Members here are pools in this process and ``fleet_member_mixed.py``
processes (``sync``, ``face`` and ``async`` kinds). Each test has its own
lease table and pool name; the pool name is also every member's
``application_name``, so a :class:`Sampler` thread on an observer connection
counts the fleet's backends in ``pg_stat_activity`` every :data:`SAMPLE`
seconds (untagged ones by name, tagged ones by ``|<pool>|``).

The bound checked is docs/fleet.md's: in strict mode, at every sample the
backends outside the heartbeats' extra connections number at most the total,
and the extra ones at most one per live member.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from elasticpool import PostgresMembership, SyncPool  # noqa: E402
from elasticpool.fleet._schema import beat_function, fill_function  # noqa: E402
from elasticpool.psycopg import SyncPsycopgConnector  # noqa: E402

pytestmark = pytest.mark.postgres

RUNNER = Path(__file__).with_name("fleet_member_mixed.py")
INTERVAL = 0.1
TTL = 1.0
HB_TIMEOUT = 0.5
SAMPLE = 0.02
BOUND = 20.0


def until(predicate: Callable[[], Any], what: str, bound: float = BOUND) -> Any:
    """Poll ``predicate`` until it returns something true, within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {bound:g}s)")
        time.sleep(0.01)
    return value


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Fleet:
    server: Any
    admin: Any
    name: str
    table: str

    WHERE = "(application_name = %s OR strpos(application_name, '|' || %s || '|') > 0)"

    def backends(self, conn: Any = None) -> set[int]:
        rows = (conn or self.admin).execute(
            f"SELECT pid FROM pg_stat_activity WHERE {self.WHERE}", [self.name, self.name]
        )
        return {row[0] for row in rows.fetchall()}

    def leases(self) -> int:
        """Live leases of this fleet (a leave that found the coordinator busy leaves its row
        to expire: the row stays, expired, until a member reaps it)."""
        table = quote_ident(self.table)
        exists = self.admin.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
        if not exists[0]:
            return 0
        row = self.admin.execute(
            f"SELECT count(*) FROM {table} WHERE pool_name = %s AND expires_at >= now()",
            [self.name],
        ).fetchone()
        return int(row[0])

    def member(self, **settings: Any) -> SyncPool[Any]:
        connector: SyncPsycopgConnector[Any] = SyncPsycopgConnector(
            self.server.dsn(application_name=self.name)
        )
        membership = PostgresMembership(
            table=self.table,
            heartbeat_interval=INTERVAL,
            lease_ttl=TTL,
            heartbeat_timeout=HB_TIMEOUT,
        )
        return SyncPool(connector, membership=membership, name=self.name, **settings)


@pytest.fixture
def fleet(pg_server: Any) -> Iterator[Fleet]:
    """A fresh fleet; afterwards its tables are dropped and none of its backends may be left."""
    uid = uuid.uuid4().hex[:8]
    admin = psycopg.Connection.connect(
        pg_server.dsn(application_name=f"ep-sfleet-admin-{uid}"), autocommit=True
    )
    fl = Fleet(pg_server, admin, name=f"ep-sfleet-{uid}", table=f'sync fleet "{uid}"')
    try:
        yield fl
        until(lambda: not fl.backends(), "backends left behind")
    finally:
        q = quote_ident
        admin.execute(f"DROP TABLE IF EXISTS {q(fl.table)}, {q(fl.table + '_config')}")
        admin.execute(f"DROP FUNCTION IF EXISTS {q(beat_function(fl.table))}")
        admin.execute(f"DROP FUNCTION IF EXISTS {q(fill_function(fl.table))}")
        admin.close()


@dataclass
class Sampler:
    """Counts the fleet's backends every :data:`SAMPLE` seconds on a connection of its own."""

    fleet: Fleet
    samples: list[tuple[float, frozenset[int]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = psycopg.Connection.connect(
            self.fleet.server.dsn(application_name="ep-sfleet-sampler"), autocommit=True
        )
        try:
            while not self.stop.wait(SAMPLE):
                pids = frozenset(self.fleet.backends(conn))
                self.samples.append((time.monotonic(), pids))
        finally:
            conn.close()

    def check(
        self, total: int, windows: list[tuple[int, float, float]], members: Callable[[float], int]
    ) -> tuple[int, int]:
        """Assert ``backends - extra <= total`` and ``extra <= members`` at every sample."""
        assert self.samples, "no samples taken"
        worst = worst_z = 0
        for t, pids in self.samples:
            # a sample is taken a few ms before ``t``: a connection done by then may show
            outside = {pid for pid, t0, t1 in windows if t0 - 0.05 <= t <= t1 + 0.05}
            budgeted, z = pids - outside, len(pids & outside)
            assert len(budgeted) <= total, (
                f"{len(pids)} backends: {len(budgeted)} within the budget > total {total} "
                f"(+ Z={z} extra heartbeat connections)"
            )
            assert z <= members(t), f"Z={z} extra connections > {members(t)} members"
            worst, worst_z = max(worst, len(budgeted)), max(worst_z, z)
        return worst, worst_z


@dataclass
class Member:
    """A running ``fleet_member_mixed.py`` and every JSON line it printed."""

    kind: str
    process: subprocess.Popen[bytes]
    events: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))
        self.process.wait()
        self.ended = time.monotonic()

    @property
    def status(self) -> dict[str, Any]:
        for e in reversed(self.events):
            if e["event"] in ("status", "joined"):
                return e
        return {}

    @property
    def exit(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == "exit"), None)


def start_member(fleet: Fleet, kind: str, **options: Any) -> Member:
    args = [sys.executable, str(RUNNER), "--kind", kind, "--table", fleet.table]
    args += ["--name", fleet.name, "--interval", str(INTERVAL), "--ttl", str(TTL)]
    args += ["--heartbeat-timeout", str(HB_TIMEOUT)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "ELASTICPOOL_FLEET_DSN": fleet.server.dsn(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    member = Member(kind, process)
    threading.Thread(target=member.read, daemon=True).start()
    return member


def stop_member(member: Member) -> dict[str, Any]:
    assert member.process.stdin is not None
    member.process.stdin.write(b"stop\n")
    member.process.stdin.close()
    until(lambda: member.ended is not None, f"{member.kind} member never exited")
    stderr = member.process.stderr.read().decode() if member.process.stderr else ""
    assert member.process.returncode == 0, stderr[-3000:]
    assert member.exit is not None, stderr[-3000:]
    return member.exit


def test_sync_and_async_member_processes_share_one_total_within_the_bound(fleet: Fleet) -> None:
    """A SyncPool, a ConnectionPool and an async Pool process share 6: backends <= 6 + Z."""
    total = 6
    sampler = Sampler(fleet)
    sampling = threading.Thread(target=sampler.run, daemon=True)
    sampling.start()
    members: list[Member] = []
    try:
        for kind in ("sync", "face", "async"):
            members.append(
                start_member(fleet, kind, total=total, workers=4, query_ms=20, think_ms=5)
            )
        until(
            lambda: [m.status.get("members") for m in members] == [3, 3, 3],
            "members never all saw each other",
        )
        time.sleep(2.0)  # three busy members, each asking for more than its share, for a while
        statuses = [m.status for m in members]
        assert all(s["healthy"] for s in statuses), statuses
        assert all(s["total"] == total for s in statuses), statuses
        exits = [stop_member(m) for m in members]
    finally:
        for m in members:
            if m.process.poll() is None:
                m.process.kill()
                m.process.wait()
            for pipe in (m.process.stdin, m.process.stdout, m.process.stderr):
                if pipe is not None:
                    pipe.close()
        sampler.stop.set()
        sampling.join(BOUND)

    def alive(t: float) -> int:
        return sum(1 for m in members if m.started <= t and (m.ended is None or t < m.ended))

    windows = [tuple(w) for e in exits for w in e["extra_windows"]]
    worst, worst_z = sampler.check(total, windows, alive)  # type: ignore[arg-type]
    assert all(e["acquires"] > 0 and e["timeouts"] == 0 for e in exits), exits
    assert worst == total, f"the fleet never used its whole total (at most {worst})"
    until(lambda: fleet.leases() == 0, "a lease outlived its member", bound=TTL * 5)
    print(
        f"\nmixed fleet (sync, face, async): {len(sampler.samples)} samples, at most {worst} "
        f"budgeted backends for a total of {total}, max Z {worst_z}, "
        f"acquires {[e['acquires'] for e in exits]}"
    )


def test_members_split_the_total_and_a_closing_member_gives_its_part_back(
    fleet: Fleet,
) -> None:
    """Two busy sync members split the total; when one closes, the other takes all of it."""
    total = 6
    a = fleet.member(total_max_connections=total)
    b = fleet.member(total_max_connections=total)
    stop = threading.Event()

    def load(pool: SyncPool[Any]) -> None:
        while not stop.is_set():
            with pool.connection(timeout=BOUND) as conn:
                conn.execute("SELECT pg_sleep(0.01)")
                conn.commit()

    with a, b:
        threads = [threading.Thread(target=load, args=(p,)) for p in (a, b) for _ in range(5)]
        for thread in threads:
            thread.start()
        try:
            until(
                lambda: a.fleet().limit == b.fleet().limit == total // 2,
                "the members never split the total",
            )
            assert len(a.fleet().members) == 2
            stop.set()
            for thread in threads:
                thread.join(BOUND)
            stop.clear()
            thread = threading.Thread(target=load, args=(a,))
            thread.start()
            b.close()
            until(lambda: a.fleet().limit == total, "the survivor never took the whole total")
            assert len(a.fleet().members) == 1
        finally:
            stop.set()
            for thread in threads:
                thread.join(BOUND)
            thread.join(BOUND)
    until(lambda: fleet.leases() == 0, "a lease outlived its member", bound=TTL * 5)


def test_live_total_change_reaches_a_sync_member(fleet: Fleet) -> None:
    """set_fleet_total() from a sync member is adopted by the fleet at its next heartbeat."""
    pool = fleet.member(total_max_connections=6)
    with pool, pool.connection() as conn:  # demand: the member joins the fleet
        conn.execute("SELECT 1")
        until(lambda: pool.fleet().active, "never became an active member")
        pool.set_fleet_total(8)
        until(lambda: pool.fleet().fleet_total == 8, "the live total never arrived")
        conn.rollback()


def test_idle_sync_member_holds_no_lease_and_opens_nothing_until_a_caller_comes(
    fleet: Fleet,
) -> None:
    """An open member with no demand costs nothing; the first caller's connection is the join's."""
    with fleet.member(total_max_connections=6) as pool:
        time.sleep(5 * INTERVAL)  # five heartbeat intervals in which nothing may happen
        assert fleet.leases() == 0
        assert not fleet.backends()
        status = pool.fleet()
        assert (status.active, status.limit, status.last_heartbeat_age) == (False, 0, None)
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            conn.rollback()
            assert pool.stats().connects == 1, "the join's connection is the one lent"
            assert fleet.leases() == 1
        assert pool.fleet().active
