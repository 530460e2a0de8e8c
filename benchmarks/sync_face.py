"""Throughput of the sync face against psycopg_pool.ConnectionPool, side by side, with threads.

Run:  python benchmarks/sync_face.py [--dsn DSN] [--threads 32] [--connections 10]
                                     [--duration 2.0] [--repeat 5] [--json out.json]

Both pools at their defaults but for the size (``min_size=max_size=10``):
:class:`psycopg_pool.ConnectionPool` and :class:`elasticpool.psycopg.ConnectionPool`
(so ``reset_mode="rollback"``, as psycopg_pool), each warmed first. Each of
``--threads`` threads loops ``with pool.connection() as conn:
conn.execute("SELECT 1")`` for ``--duration`` seconds; the figure is
borrows per second (the ratio of medians, and the median of the ratios
within each pair of rounds run back to back), and the process's CPU time
per borrow (every
thread's: with the GIL it is what bounds the rate, and it is steadier than
the rate on a shared machine). The two candidates run alternately, ``--repeat`` rounds
each, so a noisy neighbour hurts both alike; reported are the median and the
best round of each, and the ratio of medians (target: the face at least
1.1x psycopg_pool). Without ``--dsn`` a throwaway PostgreSQL is started on
127.0.0.1.

With ``--elastic-core`` a third candidate runs: an :class:`elasticpool.SyncPool`
of :class:`~elasticpool.psycopg.SyncPsycopgConnector` connections, its
defaults but the size (``reset="session"``: every borrow is followed by a
session reset), borrowed with ``pool.connection()`` and committing nothing.

With ``--floors``, two floors run too, to show what any pool could reach
here: the same connections in a :class:`queue.Queue` (a returned connection
goes back on the queue, and the returning thread may take it again before
the thread woken for it runs: barging), and in the least a strictly
first-come-first-served pool can do (one lock, a deque of idle connections,
a lock per waiting thread, handed the connection directly: what the face
promises, with nothing else). Each commits at the end of the block, as the
pools' ``connection()`` does.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

Borrow = Callable[[], AbstractContextManager[Any]]


def run_round(borrow: Borrow, threads: int, duration: float) -> tuple[float, float]:
    """Borrows per second by ``threads`` threads looping on ``borrow`` for ``duration`` s.

    Also the process's CPU time per borrow, in microseconds (every thread's,
    the pool's own included): on a machine shared with other work it is
    steadier than the rate, and with the GIL it is what bounds the rate.
    """
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        n = 0
        start.wait()
        while not stop.is_set():
            with borrow() as conn:
                conn.execute("SELECT 1")
            n += 1
        counts[i] = n

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    cpu = time.process_time()
    time.sleep(duration)
    stop.set()
    for w in workers:
        w.join()
    cpu = time.process_time() - cpu
    total = sum(counts)
    return total / (time.perf_counter() - began), 1e6 * cpu / max(total, 1)


@contextmanager
def psycopg_pool_candidate(dsn: str, size: int) -> Iterator[Borrow]:
    import psycopg_pool

    with psycopg_pool.ConnectionPool(dsn, min_size=size, max_size=size, open=False) as pool:
        pool.wait(timeout=30)
        yield pool.connection


@contextmanager
def face_candidate(dsn: str, size: int) -> Iterator[Borrow]:
    from elasticpool.psycopg import ConnectionPool

    with ConnectionPool(dsn, min_size=size, max_size=size, open=False) as pool:
        pool.wait(timeout=30)
        yield pool.connection


@contextmanager
def core_candidate(dsn: str, size: int) -> Iterator[Borrow]:
    from elasticpool import SyncPool
    from elasticpool.psycopg import SyncPsycopgConnector

    connector: SyncPsycopgConnector[Any] = SyncPsycopgConnector(dsn)
    with SyncPool(connector, max_connections=size, min_connections=size) as pool:
        pool.wait(timeout=30)
        yield pool.connection


def _floor_connections(dsn: str, size: int) -> list[Any]:
    import psycopg

    return [psycopg.Connection.connect(dsn) for _ in range(size)]


@contextmanager
def queue_floor(dsn: str, size: int) -> Iterator[Borrow]:
    """The connections in a :class:`queue.Queue`: no limits, timeouts or fairness (barging)."""
    import queue

    conns = _floor_connections(dsn, size)
    idle: queue.Queue[Any] = queue.Queue()
    for conn in conns:
        idle.put(conn)

    @contextmanager
    def borrow() -> Iterator[Any]:
        conn = idle.get()
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            idle.put(conn)

    try:
        yield borrow
    finally:
        for conn in conns:
            conn.close()


@contextmanager
def fifo_floor(dsn: str, size: int) -> Iterator[Borrow]:
    """The least a strictly first-come-first-served pool does: direct hand-off, one lock."""
    conns = _floor_connections(dsn, size)
    lock = threading.Lock()
    idle = collections.deque(conns)
    waiting: collections.deque[list[Any]] = collections.deque()

    def get() -> Any:
        with lock:
            if idle and not waiting:
                return idle.pop()
            box = [threading.Lock(), None]
            box[0].acquire()
            waiting.append(box)
        box[0].acquire()
        return box[1]

    def put(conn: Any) -> None:
        with lock:
            if waiting:
                box = waiting.popleft()
                box[1] = conn
                box[0].release()
            else:
                idle.append(conn)

    @contextmanager
    def borrow() -> Iterator[Any]:
        conn = get()
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            put(conn)

    try:
        yield borrow
    finally:
        for conn in conns:
            conn.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--dsn", default=None, help="a PostgreSQL to use (default: embedded)")
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--elastic-core", action="store_true", help="also run a bare SyncPool")
    p.add_argument(
        "--floors", action="store_true", help="also run a queue.Queue and a strict-FIFO floor"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    server = None
    dsn = args.dsn
    if dsn is None:
        from elasticpool.embedded import EmbeddedPostgres

        server = EmbeddedPostgres()
        server.start()
        dsn = server.dsn()
    candidates: dict[str, Callable[[str, int], AbstractContextManager[Borrow]]] = {
        "psycopg_pool.ConnectionPool": psycopg_pool_candidate,
        "elasticpool.psycopg.ConnectionPool": face_candidate,
    }
    if args.elastic_core:
        candidates["elasticpool.SyncPool (session reset)"] = core_candidate
    if args.floors:
        candidates["floor: queue.Queue (barging)"] = queue_floor
        candidates["floor: strict FIFO hand-off"] = fifo_floor
    rounds: dict[str, list[float]] = {name: [] for name in candidates}
    cpus: dict[str, list[float]] = {name: [] for name in candidates}
    try:
        for r in range(args.repeat):
            for name, candidate in candidates.items():
                with candidate(dsn, args.connections) as borrow:
                    run_round(borrow, args.threads, min(0.3, args.duration))  # warm up
                    rate, cpu = run_round(borrow, args.threads, args.duration)
                rounds[name].append(rate)
                cpus[name].append(cpu)
                print(
                    f"round {r + 1}: {name:40} {rate:8.0f} borrows/s {cpu:6.1f} us CPU/borrow",
                    flush=True,
                )
    finally:
        if server is not None:
            server.cleanup()
    peer = statistics.median(rounds["psycopg_pool.ConnectionPool"])
    peer_cpu = statistics.median(cpus["psycopg_pool.ConnectionPool"])
    result: dict[str, Any] = {
        "threads": args.threads,
        "connections": args.connections,
        "duration": args.duration,
        "repeat": args.repeat,
        "candidates": {},
    }
    print(f"\n{args.threads} threads, {args.connections} connections, SELECT 1:")
    for name, rates in rounds.items():
        median = statistics.median(rates)
        cpu = statistics.median(cpus[name])
        result["candidates"][name] = {
            "median": median,
            "best": max(rates),
            "rounds": rates,
            "ratio": median / peer,
            "cpu_us_per_borrow": cpu,
            "cpu_ratio": peer_cpu / cpu,
        }
        print(
            f"  {name:40} median {median:8.0f}/s  best {max(rates):8.0f}/s  "
            f"{median / peer:5.2f}x psycopg_pool;  {cpu:6.1f} us CPU/borrow "
            f"({peer_cpu / cpu:4.2f}x less)"
        )
    # Rounds run in pairs, one right after the other: the ratio within each pair is
    # what the load of the machine disturbs least.
    pairs = [
        ours / theirs
        for ours, theirs in zip(
            rounds["elasticpool.psycopg.ConnectionPool"],
            rounds["psycopg_pool.ConnectionPool"],
            strict=True,
        )
    ]
    paired = statistics.median(pairs)
    result["paired_ratios"] = pairs
    result["paired_ratio_median"] = paired
    face = result["candidates"]["elasticpool.psycopg.ConnectionPool"]["ratio"]
    print(f"  paired rounds (face / psycopg_pool): {', '.join(f'{r:.2f}' for r in pairs)}")
    verdict = "meets" if face >= 1.1 else "misses"
    print(
        f"target: the face >= 1.1x psycopg_pool: {face:.2f}x (medians), "
        f"{paired:.2f}x (median of paired rounds); {verdict} it by the medians"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
