"""The fleet's division rule: the Python spec, and the server-side heartbeat function held to it.

:func:`elasticpool._limits.fleet_shares` and :func:`~elasticpool._limits.fleet_grant`
say what a heartbeat decides; ``fleet/_schema.py`` decides it inside
PostgreSQL, in one statement. The first tests check the spec's properties
(pure, no server); the last ones run random fleets through the real function
and require the same shares and grant, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from elasticpool._limits import RESERVE_FROM, Member, fleet_first_claim, fleet_grant, fleet_shares
from elasticpool.fleet._schema import Schema

from ..helpers import lease_schema

member_lists = st.lists(
    st.builds(
        Member,
        id=st.text("abcAB-_:9", min_size=1, max_size=4),
        demand=st.integers(0, 30),
        holding=st.integers(0, 30),
        waited=st.sampled_from([0.0, 1.0, 2.0, 3.0]),
    ),
    min_size=1,
    max_size=10,
    unique_by=lambda m: m.id,
)


@given(total=st.integers(0, 120), reserve=st.integers(0, 5), members=member_lists)
def test_shares_never_exceed_the_total_less_the_reserve(
    total: int, reserve: int, members: list[Member]
) -> None:
    """Σ shares <= total, and <= total - reserve with RESERVE_FROM members or more."""
    shares = fleet_shares(total, members, reserve)
    assert set(shares) == {m.id for m in members}
    assert all(v >= 0 for v in shares.values())
    cap = total - reserve if len(members) >= RESERVE_FROM else total
    assert sum(shares.values()) <= max(0, cap)


@given(total=st.integers(0, 120), reserve=st.integers(0, 5), members=member_lists)
def test_every_asker_gets_its_fair_minimum(total: int, reserve: int, members: list[Member]) -> None:
    """An asker gets at least min(demand, units // askers) of the divided units."""
    shares = fleet_shares(total, members, reserve)
    units = max(0, total - reserve if len(members) >= RESERVE_FROM else total)
    askers = [m for m in members if m.demand > 0]
    for m in askers:
        assert shares[m.id] >= min(m.demand, units // len(askers))


@given(total=st.integers(0, 120), reserve=st.integers(0, 5), members=member_lists)
def test_first_connections_before_second_ones(
    total: int, reserve: int, members: list[Member]
) -> None:
    """With fewer units than askers, no asker holding nothing is left out for one holding some."""
    shares = fleet_shares(total, members, reserve)
    askers = [m for m in members if m.demand > 0]
    if any(shares[m.id] == 0 and m.holding == 0 for m in askers):
        served = [m for m in askers if shares[m.id] > 0]
        assert all(m.holding == 0 for m in served), (shares, members)


def test_idle_members_keep_what_nobody_else_asks_for() -> None:
    """An idle member keeps its idle connections while the total has room; not when others ask."""
    idle = Member("idle", demand=0, holding=4)
    assert fleet_shares(20, [idle, Member("busy", demand=10, holding=10)])["idle"] == 4
    assert fleet_shares(20, [idle, Member("busy", demand=10, holding=10)])["busy"] == 16
    assert fleet_shares(20, [idle, Member("busy", demand=30, holding=10)])["idle"] == 0


def test_reserve_is_left_free_for_a_newcomer() -> None:
    """Three busy members wanting everything leave the reserve; a newcomer's first comes from it."""
    busy = [Member(k, demand=30, holding=6) for k in "abc"]
    shares = fleet_shares(20, busy, reserve=2)
    assert sorted(shares.values()) == [6, 6, 6]
    new = Member("new", demand=5, holding=0)
    share = fleet_shares(20, [*busy, new], reserve=2)["new"]
    assert share >= 1
    assert fleet_grant(share, 20, others_claimed=18) >= 1, "served at once from the reserve"


def test_one_or_two_members_have_the_whole_total() -> None:
    """The reserve applies only among three members or more: one or two have the whole total."""
    assert fleet_shares(20, [Member("a", demand=30)], reserve=2) == {"a": 20}
    two = [Member("a", demand=30), Member("b", demand=30)]
    assert fleet_shares(20, two, reserve=2) == {"a": 10, "b": 10}


@given(
    total=st.integers(1, 60),
    reserve=st.integers(0, 3),
    n=st.integers(1, 8),
    steps=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 30), st.integers(0, 60)), max_size=60
    ),
)
def test_serialised_heartbeats_keep_the_fleet_within_the_total(
    total: int, reserve: int, n: int, steps: list[tuple[int, int, int]]
) -> None:
    """Members heartbeat one at a time with changing demand and grow up to their grants.

    Between heartbeats each member's open connections move anywhere within
    [0, its grant] (it only shrinks below what it holds when over its grant).
    Whatever the order, Σ claims (each max(holding, grant)) and so the open
    connections never exceed the total.
    """
    ids = [f"m{i}" for i in range(n)]
    holding = dict.fromkeys(ids, 0)
    claim = dict.fromkeys(ids, 0)
    demand = dict.fromkeys(ids, 0)
    for who, want, grow_to in steps:
        me = ids[who % n]
        demand[me] = want
        view = [Member(i, demand[i], holding[i]) for i in ids]
        share = fleet_shares(total, view, reserve)[me]
        first = holding[me] == 0 and want > 0
        g = fleet_grant(share, total, sum(claim[i] for i in ids if i != me), first=first)
        claim[me] = max(holding[me], g)
        # between heartbeats: the member's pool moves toward a size within its limit
        holding[me] = min(grow_to, g) if holding[me] <= g else max(g, holding[me] - grow_to)
        assert holding[me] <= claim[me]
        assert sum(holding.values()) <= total, (holding, claim)
        assert sum(claim.values()) <= total, claim


@given(
    total=st.integers(1, 20),
    ops=st.lists(st.tuples(st.sampled_from("jrg"), st.integers(0, 9)), max_size=80),
)
def test_fast_joins_and_releases_keep_claims_and_closing_backends_within_the_total(
    total: int, ops: list[tuple[str, int]]
) -> None:
    """Joins (fleet_first_claim), releases on a last connection and closing backends going away.

    A release gives its claim back at once and leaves its backend closing;
    a closing backend counts against joins until it is gone. Whatever the
    order, the claims plus the closing backends (the server's view of the
    fleet) never exceed the total.
    """
    claim: dict[int, int] = {}
    closing: set[int] = set()
    for op, who in ops:
        if op == "j" and who not in closing:
            got = fleet_first_claim(total, sum(claim.values()), claim.get(who, 0), 1, len(closing))
            claim[who] = claim.get(who, 0) or got
        elif op == "r" and claim.get(who):
            claim[who] = 0
            closing.add(who)
        elif op == "g":
            closing.discard(who)
        assert sum(claim.values()) + len(closing) <= total, (claim, closing)


# ----------------------------------------------------------------------------- the server's copy


@pytest.fixture(scope="module")
def fleet_db(pg_server: Any) -> Iterator[tuple[Any, Schema]]:
    """A psycopg connection (autocommit) and a lease table of this module's own."""
    pytest.importorskip("psycopg")
    with lease_schema(pg_server.dsn(), "rule") as db:
        yield db


@pytest.mark.postgres
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limits=st.tuples(st.integers(1, 80), st.integers(0, 4)),
    others=member_lists,
    me=st.builds(Member, id=st.just("me~"), demand=st.integers(0, 30), holding=st.integers(0, 30)),
    seed=st.integers(0, 10_000),
)
def test_the_server_function_decides_as_the_spec(
    fleet_db: tuple[Any, Schema],
    limits: tuple[int, int],
    others: list[Member],
    me: Member,
    seed: int,
) -> None:
    """Random fleets through the real heartbeat function: the spec's shares and grant, exactly."""
    conn, schema = fleet_db
    total, reserve = limits
    rng = random.Random(seed)
    pool = f"p{seed}-{uuid.uuid4().hex[:6]}"
    claims = {m.id: m.holding + rng.randint(0, 3) for m in others}
    with conn.transaction():
        for m in others:
            conn.execute(
                f"INSERT INTO {schema.table} (pool_name, instance_id, heartbeat_at, expires_at,"
                " demand, holding, claim, asking_since) VALUES (%s, %s, now(),"
                " now() + interval '1 hour', %s, %s, %s,"
                " CASE WHEN %s > 0 THEN now() - make_interval(secs => %s) END)",
                (pool, m.id, m.demand, m.holding, claims[m.id], m.waited, m.waited),
            )
        conn.execute(
            f"INSERT INTO {schema.config} (pool_name, claimed) VALUES (%s, %s)",
            (pool, sum(claims.values())),
        )
    row = conn.execute(
        f"SELECT * FROM {schema.beat}(%s, %s, NULL, %s, %s, %s, 0, 1, %s, 60, 1000, false, NULL,"
        " NULL, NULL, false)",
        (pool, me.id, me.demand, me.holding, total, reserve),
    ).fetchone()
    assert row is not None
    status, share, grant, got_total, _live, claimed, view = row[:7]
    members = [*others, me]
    expected = fleet_shares(total, members, reserve)
    assert {m[0]: m[3] for m in json.loads(view)} == expected
    assert got_total == total
    assert share == expected[me.id]
    others_claimed = sum(claims.values())
    first = me.holding == 0 and me.demand > 0
    assert grant == fleet_grant(expected[me.id], total, others_claimed, first=first)
    left = me.demand == 0 and grant == 0
    assert status == ("left" if left else "ok")
    assert claimed == others_claimed + (me.holding if left else max(me.holding, grant))


@given(units=st.integers(1, 10), askers=st.integers(1, 40))
def test_no_asker_is_passed_over_round_after_round(units: int, askers: int) -> None:
    """Fewer units than askers holding nothing: the longest-waiting go first, so all are served.

    Each round the askers served leave (they have what they asked for) and
    the others wait one more second; everyone is served within
    ceil(askers / units) rounds, whatever their ids.
    """
    waiting = {f"m{i:02}": 0.0 for i in range(askers)}
    rounds = 0
    while waiting:
        rounds += 1
        view = [Member(k, demand=1, waited=w) for k, w in waiting.items()]
        served = [k for k, v in fleet_shares(units, view).items() if v > 0]
        assert served, "a round served no one"
        waiting = {k: w + 1 for k, w in waiting.items() if k not in served}
    assert rounds <= -(-askers // units)
