"""``elasticpool.wrap()`` of a sync ``psycopg_pool.ConnectionPool``: a SyncPool of leases.

Against a real server: the wrapper lends psycopg_pool's own connections, its
limit (FIFO, pool_timeout) governs how many are out, psycopg_pool's
``max_size`` follows the limit, and closing the wrapper gives everything back.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
psycopg_pool = pytest.importorskip("psycopg_pool")

from elasticpool import PoolTimeout, SyncPool, wrap  # noqa: E402

pytestmark = pytest.mark.postgres

BOUND = 10.0


def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.005)


def underlying(pg_server: Any, **kwargs: Any) -> Any:
    pool = psycopg_pool.ConnectionPool(
        pg_server.dsn(application_name=f"ep-swrap-{uuid.uuid4().hex[:8]}"),
        open=False,
        name="under",
        **kwargs,
    )
    pool.open(wait=True, timeout=BOUND)
    return pool


def test_wrapper_lends_psycopg_pools_connections_within_its_own_limit(pg_server: Any) -> None:
    """wrap() gives a SyncPool whose limit, not psycopg_pool's max_size, bounds the borrowers."""
    under = underlying(pg_server, min_size=1, max_size=4)
    try:
        with wrap(under, max_connections=2, pool_timeout=0.1) as pool:
            assert isinstance(pool, SyncPool)
            assert pool.name == "under"
            assert "over psycopg_pool.ConnectionPool 'under'" in repr(pool)
            a, b = pool.acquire(), pool.acquire()
            assert isinstance(a, psycopg.Connection)
            assert a.execute("SELECT 1").fetchone() == (1,)
            with pytest.raises(PoolTimeout):
                pool.acquire()
            assert under.max_size == 2  # psycopg_pool's max_size follows the limit
            pool.release(a)
            pool.release(b)
            pool.resize(3)
            assert under.max_size == 3
        assert not under.closed  # left open, with its own max_size back
        assert under.max_size == 4
        stats = under.get_stats()
        assert stats["pool_size"] - stats["pool_available"] == 0  # every lease given back
    finally:
        under.close()


def test_threads_queue_first_in_first_out_on_the_wrapper(pg_server: Any) -> None:
    """Threads waiting on a wrapper of limit 1 are served in the order they queued."""
    under = underlying(pg_server, min_size=1, max_size=3)
    order: list[int] = []
    try:
        with wrap(under, max_connections=1) as pool:
            held = pool.acquire()

            def waiter(n: int) -> None:
                with pool.connection(timeout=BOUND):
                    order.append(n)

            threads = []
            for n in range(4):
                thread = threading.Thread(target=waiter, args=(n,))
                thread.start()
                threads.append(thread)
                until(lambda n=n: pool.stats().waiting == n + 1, "waiter never queued")  # type: ignore[misc]
            pool.release(held)
            for thread in threads:
                thread.join(BOUND)
        assert order == [0, 1, 2, 3]
    finally:
        under.close()


def test_close_underlying_closes_psycopg_pool_too(pg_server: Any) -> None:
    """close_underlying=True closes the wrapped pool with the wrapper."""
    under = underlying(pg_server, min_size=1)
    with wrap(under, close_underlying=True) as pool, pool.connection() as conn:
        conn.execute("SELECT 1")
    assert under.closed
