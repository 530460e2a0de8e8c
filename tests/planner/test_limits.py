"""The limit resolver: precedence rules, division of a total, grants. Pure, no event loop."""

from __future__ import annotations

import random

import hypothesis.strategies as st
import pytest
from hypothesis import given

from elasticpool import ElasticPoolWarning, PoolSettings
from elasticpool._limits import Member, divide, grants, resolve_limit

member_lists = st.lists(
    st.builds(
        Member,
        id=st.text("abcdefgh", min_size=1, max_size=3),
        demand=st.integers(0, 40),
        holding=st.integers(0, 40),
    ),
    max_size=12,
    unique_by=lambda m: m.id,
)


@given(total=st.integers(0, 200), members=member_lists)
def test_shares_use_exactly_the_total(total: int, members: list[Member]) -> None:
    """Σ shares is the total (nothing wasted, nothing invented) whenever anyone is there."""
    shares = divide(total, members)
    assert set(shares) == {m.id for m in members}
    assert all(v >= 0 for v in shares.values())
    assert sum(shares.values()) == (total if members else 0)


@given(total=st.integers(0, 200), members=member_lists)
def test_every_asker_gets_its_fair_minimum(total: int, members: list[Member]) -> None:
    """A member with demand gets at least min(demand, total // askers)."""
    shares = divide(total, members)
    askers = [m for m in members if m.demand > 0]
    for m in askers:
        assert shares[m.id] >= min(m.demand, total // len(askers))


@given(total=st.integers(0, 200), members=member_lists, seed=st.integers(0, 1000))
def test_shares_are_deterministic_whatever_the_order(
    total: int, members: list[Member], seed: int
) -> None:
    """The same view in any order gives the same shares."""
    shuffled = list(members)
    random.Random(seed).shuffle(shuffled)
    assert divide(total, members) == divide(total, shuffled)


@given(total=st.integers(0, 200), members=member_lists)
def test_max_min_fair(total: int, members: list[Member]) -> None:
    """No asker is below its demand while another has more than it beyond headroom."""
    shares = divide(total, members)
    askers = [m for m in members if m.demand > 0]
    if sum(m.demand for m in askers) >= total:
        short = [m for m in askers if shares[m.id] < m.demand]
        for m in short:
            for other in askers:
                assert shares[other.id] <= shares[m.id] + 1, (m, other, shares)


@given(total=st.integers(0, 200), members=member_lists)
def test_grants_never_take_the_fleet_above_the_total(total: int, members: list[Member]) -> None:
    """For one view, what everyone may hold after growing stays within the total."""
    shares = divide(total, members)
    g = grants(total, members, shares)
    after = sum(max(m.holding, g[m.id]) for m in members)
    assert after <= max(total, sum(m.holding for m in members))
    for m in members:
        assert g[m.id] <= shares[m.id]
        assert g[m.id] >= min(m.holding, shares[m.id]), "nobody is cut below what it may keep"


def test_more_members_than_the_total() -> None:
    """Twelve members, a total of 5: idle ones hold nothing, busy ones share, no error."""
    members = [Member(f"m{i:02}", demand=3 if i < 4 else 0) for i in range(12)]
    shares = divide(5, members)
    assert sum(shares.values()) == 5
    assert all(shares[f"m{i:02}"] == 0 for i in range(4, 12))
    assert sorted(shares[f"m{i:02}"] for i in range(4)) == [1, 1, 1, 2]


def test_remainder_is_distributed_not_wasted() -> None:
    """Hasura's floor(total / n) wastes the remainder; here 10 over 3 idle members is 4+3+3."""
    shares = divide(10, [Member("a"), Member("b"), Member("c")])
    assert sorted(shares.values()) == [3, 3, 4]


def test_demand_shift_gives_the_busy_member_most() -> None:
    """One busy member and idle others: the busy one gets its demand, the rest is headroom."""
    members = [Member("busy", demand=30), Member("idle1"), Member("idle2")]
    shares = divide(40, members)
    assert shares == {"busy": 34, "idle1": 3, "idle2": 3}


def test_precedence_total_wins_with_one_warning() -> None:
    """Both set: the total wins, and a warning says max_connections is ignored (once)."""
    s = PoolSettings(max_connections=10, total_max_connections=30)
    with pytest.warns(ElasticPoolWarning, match=r"the total wins, max_connections is ignored"):
        r = resolve_limit(s)
    assert (r.limit, r.fleet_total, r.source) == (30, 30, "total")
    resolve_limit(s)  # no second warning: filterwarnings=error would fail here


def test_precedence_neither_set_uses_the_default_total() -> None:
    """Neither limit set: the documented default total."""
    r = resolve_limit(PoolSettings())
    assert (r.limit, r.fleet_total, r.source) == (50, 50, "default total")


def test_precedence_only_max_is_per_instance_and_fleet_unbounded() -> None:
    """Only max_connections: a fixed per-instance limit; the fleet total is unbounded."""
    r = resolve_limit(PoolSettings(max_connections=7), [Member("a"), Member("b")], "a")
    assert (r.limit, r.fleet_total, r.source) == (7, None, "max_connections")


def test_settings_precedence_is_the_rule_resolve_limit_applies() -> None:
    """PoolSettings.precedence picks the source resolve_limit reports, and the same number."""
    cases = [
        (PoolSettings(max_connections=7), ("max_connections", 7)),
        (PoolSettings(total_max_connections=30), ("total", 30)),
        (PoolSettings(), ("default total", 50)),
    ]
    for settings, expected in cases:
        assert settings.precedence() == expected
        r = resolve_limit(settings)
        assert (r.source, r.limit) == expected
        assert settings.instance_limit() == expected[1]
    live = PoolSettings(max_connections=7)
    assert live.precedence(fleet_total=12) == ("total", 12)  # a live total wins over max
    assert PoolSettings(total_max_connections="50%").precedence() == ("total", 0)


def test_small_total_is_clamped_unless_allowed() -> None:
    """A total below 5 is raised to 5 with a warning, unless explicitly allowed."""
    s = PoolSettings(total_max_connections=2)
    with pytest.warns(ElasticPoolWarning, match=r"below the minimum of 5; using 5"):
        assert resolve_limit(s).limit == 5
    assert resolve_limit(s, allow_small_total=True).limit == 2


def test_fleet_view_divides_and_grants() -> None:
    """With a view, the limit is the grant: a grower waits for what others release."""
    s = PoolSettings(total_max_connections=10)
    members = [Member("a", demand=10, holding=0), Member("b", demand=0, holding=8)]
    r = resolve_limit(s, members, "a")
    assert r.share == 10
    assert r.limit == 2, "only what b has not got open"
    assert r.members == 2
    with pytest.raises(ValueError, match="member 'z' is not in the fleet view"):
        resolve_limit(s, members, "z")


def test_live_total_overrides_settings() -> None:
    """A total set fleet-wide at run time overrides the configured one."""
    r = resolve_limit(PoolSettings(total_max_connections=10), fleet_total=20)
    assert r.limit == 20
