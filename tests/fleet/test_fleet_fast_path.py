"""The small members' fast path: the claim function, held to the spec and to the bound.

A member joining with one connection, or leaving on its last one, runs the
claim function (``fleet/_schema.py``, ``_claim_function``) instead of the
heartbeat function: no division, cheap on a new backend. These tests run
the real function on the real server, with real backends standing for
closing ones (a backend counts until the server no longer shows it), and
hold the claim to :func:`elasticpool._limits.fleet_first_claim`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from elasticpool._limits import fleet_first_claim
from elasticpool.fleet._schema import Schema

from ..helpers import lease_schema

pytestmark = pytest.mark.postgres

psycopg = pytest.importorskip("psycopg")

TTL = 60.0
LOCK_MS = 1000


@pytest.fixture(scope="module")
def fast_db(pg_server: Any) -> Iterator[tuple[Any, Schema]]:
    """An autocommit psycopg connection and a lease table of this module's own."""
    with lease_schema(pg_server.dsn(), "fast") as db:
        yield db


@pytest.fixture(scope="module")
def closing_backends(pg_server: Any) -> Iterator[list[tuple[int, str]]]:
    """Three live backends, each ``(pid, application_name)``: closing connections to count."""
    conns = []
    try:
        for i in range(3):
            tag = f"ep-closing-{uuid.uuid4().hex[:6]}-{i}"
            c = psycopg.connect(pg_server.dsn(), autocommit=True, application_name=tag)
            # what a member's backend does when it releases its last connection
            c.execute("SELECT pg_advisory_lock(hashtext('elasticpool closing'), pg_backend_pid())")
            conns.append(c)
        yield [(c.info.backend_pid, c.info.parameter_status("application_name")) for c in conns]
    finally:
        for c in conns:
            c.close()


def claim(
    conn: Any,
    schema: Schema,
    pool: str,
    me: str,
    *,
    demand: int,
    holding: int = 0,
    last: bool = False,
    total: int = 10,
) -> tuple[Any, ...]:
    """One call of the claim function; its row."""
    row = conn.execute(
        f"SELECT * FROM {schema.claim}(%s, %s, %s, %s, %s, %s, %s, 1, %s, %s)",
        (pool, me, f"tag-{me}", demand, holding, last, total, TTL, LOCK_MS),
    ).fetchone()
    assert row is not None
    return tuple(row)


def new_pool(conn: Any, schema: Schema, claimed: int = 0) -> str:
    pool = f"p-{uuid.uuid4().hex[:8]}"
    conn.execute(
        f"INSERT INTO {schema.config} (pool_name, claimed) VALUES (%s, %s)", (pool, claimed)
    )
    return pool


def sums(conn: Any, schema: Schema, pool: str) -> tuple[int, int]:
    """The config row's claims' sum, and the rows' claims added up."""
    row = conn.execute(
        f"SELECT (SELECT claimed FROM {schema.config} WHERE pool_name = %s),"
        f" (SELECT coalesce(sum(claim), 0)::integer FROM {schema.table} WHERE pool_name = %s)",
        (pool, pool),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    total=st.integers(1, 12),
    others=st.lists(st.integers(0, 4), max_size=5),
    me=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)),
)
def test_the_claim_function_decides_as_the_spec(
    fast_db: tuple[Any, Schema],
    closing_backends: list[tuple[int, str]],
    total: int,
    others: list[int],
    me: tuple[int, int, int],
) -> None:
    """Random claims and live closing backends: granted exactly when fleet_first_claim says so."""
    conn, schema = fast_db
    closing, demand, own = me
    pool = new_pool(conn, schema, sum(others) + own)
    with conn.transaction():
        for i, c in enumerate(others):
            conn.execute(
                f"INSERT INTO {schema.table} (pool_name, instance_id, heartbeat_at, expires_at,"
                " claim, holding, tag) VALUES (%s, %s, now(), now() + interval '1 hour', %s, %s,"
                " %s)",
                (pool, f"o{i}", c, c, f"tag-o{i}"),
            )
        for i, (pid, tag) in enumerate(closing_backends[:closing]):
            conn.execute(
                f"INSERT INTO {schema.table} (pool_name, instance_id, heartbeat_at, expires_at,"
                " claim, tag, closing_pid) VALUES (%s, %s, now(), now() - interval '1 s', 0, %s,"
                " %s)",
                (pool, f"c{i}", tag, pid),
            )
        if own:
            conn.execute(
                f"INSERT INTO {schema.table} (pool_name, instance_id, heartbeat_at, expires_at,"
                " claim, holding) VALUES (%s, 'me', now(), now() + interval '1 hour', %s, %s)",
                (pool, own, own),
            )
    status, claimed, got_total, *_ = claim(conn, schema, pool, "me", demand=demand, total=total)
    want = fleet_first_claim(total, sum(others) + own, own, demand, closing)
    if demand <= 0 or own:
        assert status == "skip"
    else:
        assert status == ("granted" if want else "asking")
        assert (claimed, got_total) == (sum(others) + want, total)
    assert sums(conn, schema, pool)[0] == sums(conn, schema, pool)[1]


def test_a_release_on_the_last_connection_counts_its_backend_until_it_is_gone(
    fast_db: tuple[Any, Schema], pg_server: Any
) -> None:
    """The claim goes at once; the backend it ran on keeps the unit taken until it is gone."""
    conn, schema = fast_db
    pool = new_pool(conn, schema)
    a = psycopg.connect(pg_server.dsn(), autocommit=True, application_name="tag-a")
    with a:
        assert claim(a, schema, pool, "a", demand=1, total=1)[0] == "granted"
        assert claim(conn, schema, pool, "b", demand=1, total=1)[0] == "asking"
        status, claimed, *_ = claim(a, schema, pool, "a", demand=0, holding=1, last=True, total=1)
        assert (status, claimed) == ("left", 0)
        # the claims' sum is 0, but a's backend is still open: b is still refused
        assert claim(conn, schema, pool, "b", demand=1, total=1)[0] == "asking"
        pid = a.info.backend_pid
    # a is closed: once the server no longer shows its backend, b gets the unit
    for _ in range(200):
        gone = conn.execute("SELECT pg_stat_get_activity(%s) IS NULL", (pid,)).fetchone()
        if gone is not None and gone[0]:
            break
        conn.execute("SELECT pg_sleep(0.01)")  # the server's own view: polled, no event for it
    assert claim(conn, schema, pool, "b", demand=1, total=1)[0] == "granted"
    assert sums(conn, schema, pool) == (1, 1)


def test_a_release_needs_a_claim_the_last_connection_and_someone_asking(
    fast_db: tuple[Any, Schema],
) -> None:
    """Without a claim or with more connections it is the heartbeat's case; nobody asking: kept."""
    conn, schema = fast_db
    pool = new_pool(conn, schema)
    assert claim(conn, schema, pool, "a", demand=0, holding=1, last=True)[0] == "skip"
    assert claim(conn, schema, pool, "a", demand=1, total=1)[0] == "granted"
    assert claim(conn, schema, pool, "a", demand=0, holding=2, last=True)[0] == "skip"
    assert claim(conn, schema, pool, "a", demand=0, holding=1, last=False)[0] == "skip"
    assert claim(conn, schema, pool, "a", demand=0, holding=1, last=True)[0] == "kept"
    assert sums(conn, schema, pool) == (1, 1)
    assert claim(conn, schema, pool, "b", demand=1, total=1)[0] == "asking"
    assert claim(conn, schema, pool, "a", demand=0, holding=1, last=True)[0] == "left"
    assert sums(conn, schema, pool) == (0, 0)


def test_a_release_also_gives_back_to_a_member_wanting_more_than_it_claims(
    fast_db: tuple[Any, Schema],
) -> None:
    """A busy member asking for more than its claim is someone asking: the idle one gives back."""
    conn, schema = fast_db
    pool = new_pool(conn, schema, claimed=3)
    conn.execute(
        f"INSERT INTO {schema.table} (pool_name, instance_id, heartbeat_at, expires_at, demand,"
        " holding, claim) VALUES (%s, 'busy', now(), now() + interval '1 hour', 3, 3, 3)",
        (pool,),
    )
    assert claim(conn, schema, pool, "idle", demand=1, total=5)[0] == "granted"
    assert claim(conn, schema, pool, "idle", demand=0, holding=1, last=True, total=5)[0] == "kept"
    conn.execute(
        f"UPDATE {schema.table} SET demand = 8 WHERE pool_name = %s AND instance_id = 'busy'",
        (pool,),
    )
    assert claim(conn, schema, pool, "idle", demand=0, holding=1, last=True, total=5)[0] == "left"
    assert sums(conn, schema, pool) == (3, 3)
