"""Helpers shared by every folder of tests (import them as ``from ..helpers import ...``).

* names: :func:`unique_name`;
* waiting: :func:`eventually` (poll anything, sync or async, within a bound),
  :func:`settle` (a pool's background work is done), :func:`wait_until`
  (a checkpoint loop, no clock at all);
* the engine's invariants: :func:`assert_consistent`;
* fleets of processes against the real server: :func:`scratch_database` (a
  database of the test's own), :class:`BackendSampler` (its backends in
  ``pg_stat_activity``, sampled in a thread), :class:`ChildProcess` (a child
  that prints JSON lines, stopped by its PID).

A server of a module's own (to restart, stop or configure) is the
``private_server`` / ``private_server_factory`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import anyio

from elasticpool import Pool, PoolStats
from elasticpool._state import SlotState
from elasticpool.testing import FakeConnector

BOUND = 10.0
"""Default bound, in seconds, on one wait for an effect that has no event."""

POLL = 0.01
"""Default seconds between two looks while waiting for such an effect."""


def unique_name(label: str) -> str:
    """A name no other test (or earlier run) uses: ``ep_<label>_<10 hex digits>``.

    Dashes in ``label`` become underscores, so with a lowercase ``label`` the
    name is a valid unquoted identifier (a table, a role) as well as an
    ``application_name``; keep ``label`` short (PostgreSQL cuts names at 63 bytes).
    """
    return f"ep_{label.replace('-', '_')}_{uuid.uuid4().hex[:10]}"


def assert_consistent(pool: Pool[Any], connector: FakeConnector) -> None:
    """The planner's invariants hold and the fake's open connections are exactly the pool's."""
    planner = pool._planner
    planner.check()
    held = {
        slot.conn
        for slot in planner.remaining()
        if slot.conn is not None and slot.state is not SlotState.CONNECTING
    }
    assert connector.open == held, f"leaked {connector.open - held}, lost {held - connector.open}"
    stats = pool.stats()
    assert stats.size == stats.idle + stats.in_use + stats.connecting + stats.resetting


async def wait_until(predicate: Callable[[], bool], *, limit: int = 10_000) -> None:
    """Let other tasks run until ``predicate()`` holds (a checkpoint loop, no wall-clock sleep)."""
    for _ in range(limit):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never became true")


async def eventually(
    probe: Callable[[], Any],
    predicate: Callable[[Any], bool],
    what: str,
    *,
    bound: float = BOUND,
    poll: float = POLL,
) -> Any:
    """Poll ``probe()`` (sync or async) until ``predicate(value)`` holds; return that value.

    Only for effects that have no event to wait on (the server's, or a pool's
    background work). Fails with ``what`` and the last value after ``bound``
    seconds.
    """
    value: Any = None
    try:
        with anyio.fail_after(bound):
            while True:
                value = probe()
                if hasattr(value, "__await__"):
                    value = await value
                if predicate(value):
                    return value
                await anyio.sleep(poll)
    except TimeoutError:
        raise AssertionError(f"{what} (after {bound:g}s, last seen: {value!r})") from None


async def settle(pool: Pool[Any], *, bound: float = BOUND) -> PoolStats:
    """Wait until ``pool`` has no connect, reset or close in flight; return its stats then.

    Polls the pool's own counts (there is no event for "nothing in flight").
    In trio's virtual time each poll lets the mock clock jump, so it costs no
    real time there.
    """
    stats: PoolStats = await eventually(
        pool.stats,
        lambda s: not (s.connecting or s.resetting or s.closing),
        "background work never settled",
        bound=bound,
    )
    return stats


# ---------------------------------------------------------------------------- fleets of processes


def load_benchmark(name: str) -> Any:
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"elasticpool_bench_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@contextlib.contextmanager
def lease_schema(dsn: str, label: str) -> Iterator[tuple[Any, Any]]:
    """An autocommit psycopg connection and a fleet lease schema of its own, dropped after.

    Yields ``(conn, schema)`` (:class:`elasticpool.fleet._schema.Schema`): the
    tables and every server-side function created, for tests that call the
    functions directly.
    """
    import psycopg  # the tests that use it skip without psycopg

    from elasticpool.fleet._schema import Schema

    schema = Schema.of(f"{label} {uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in schema.statements():
            conn.execute(statement)
        try:
            yield conn, schema
        finally:
            conn.execute(f"DROP TABLE {schema.table}, {schema.config}")
            for fn in (schema.beat, schema.claim, schema.fill):
                conn.execute(f"DROP FUNCTION {fn}")  # each name is unique: no signature


@contextlib.contextmanager
def scratch_database(admin_dsn: str, label: str) -> Iterator[str]:
    """A new, empty database for the block (its name); dropped ``WITH (FORCE)`` after.

    ``admin_dsn`` is a superuser's DSN (``pg_server.dsn()``). A fleet test
    puts its members in such a database, so that counting the database's
    backends counts every connection of theirs (pool, heartbeat, lease
    table) and nothing else.
    """
    import psycopg

    name = unique_name(label)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class BackendSampler:
    """The backends of one database in ``pg_stat_activity``, counted every ``interval`` seconds.

    A context manager: a thread counts from entry to exit, on a connection of
    its own to ``admin_dsn``'s database (so it is not one of those it counts;
    ``admin_dsn`` must name another database than ``database``). Bounded: it
    stops after ``limit`` samples if the block has not ended by then.
    """

    def __init__(
        self, admin_dsn: str, database: str, *, interval: float = 0.02, limit: int = 10_000
    ) -> None:
        self.admin_dsn = admin_dsn
        self.database = database
        self.interval = interval
        self.limit = limit
        self.samples: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backend-sampler", daemon=True)

    def _run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                for _ in range(self.limit):
                    row = admin.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                        [self.database],
                    ).fetchone()
                    assert row is not None
                    self.samples.append(int(row[0]))
                    if self._stop.wait(self.interval):
                        return
        except Exception as exc:  # reported by peak, in the test's thread
            self.error = exc

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=BOUND)

    @property
    def peak(self) -> int:
        """The most backends seen (fails if the sampler broke or saw nothing)."""
        if self.error is not None:
            raise AssertionError(f"the sampler failed: {self.error!r}") from self.error
        assert self.samples, "the sampler took no sample"
        return max(self.samples)


class ChildProcess:
    """A child process that prints JSON lines ``{"event": ..., ...}``, stopped by its PID.

    Its stdout is read in a thread (every JSON line into :attr:`events`, in
    order) and its stderr kept for failure messages. :meth:`stop` sends it a
    signal by its PID and kills it (``SIGKILL``) if it has not exited within
    the bound; use it in a ``finally`` so that a failing test leaves no child.
    """

    def __init__(
        self, argv: Sequence[str], *, cwd: str | os.PathLike[str], env: dict[str, str]
    ) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                self.events.append(event)
                self._lines.put(event)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def next_event(self, event: str, timeout: float = 60) -> dict[str, Any]:
        """The child's next ``event`` line (fails if it exits or takes ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {event!r} from {self.pid} in {timeout:g}s") from None
            assert line is not None, (
                f"child {self.pid} exited before {event!r}:\n{''.join(self.stderr)[-3000:]}"
            )
            if line["event"] == event:
                return line

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` to the child's PID, wait (``SIGKILL`` after ``timeout``); its exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=timeout)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode
