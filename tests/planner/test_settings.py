"""PoolSettings: validation with clear errors, and HikariCP-style corrections."""

from __future__ import annotations

import dataclasses
import math

import pytest

from elasticpool import DEFAULT_TOTAL_MAX_CONNECTIONS, ElasticPoolWarning, PoolSettings


def test_defaults_match_the_design() -> None:
    """The defaults are the documented ones: empty start, 180 s idle, 600 s life, 30 s wait.

    ``reset`` defaults to ``"rollback"`` (as psycopg_pool, HikariCP and
    PgBouncer's transaction mode): see docs/reset.md.
    """
    s = PoolSettings()
    assert (s.min_connections, s.idle_timeout, s.connection_lifetime) == (0, 180.0, 600.0)
    assert (s.lifetime_jitter, s.pool_timeout, s.ping_after) == (0.025, 30.0, 1.0)
    assert s.reset == "rollback"
    assert s.instance_limit() == DEFAULT_TOTAL_MAX_CONNECTIONS == 50


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_connections", 0, r"max_connections must be an integer >= 1 or None \(got 0\)"),
        ("total_max_connections", -3, r"total_max_connections must be an integer >= 1"),
        ("min_connections", -1, r"min_connections must be an integer >= 0 \(got -1\)"),
        ("idle_timeout", 0, r"idle_timeout must be a finite number of seconds > 0 or None"),
        ("connection_lifetime", -5.0, r"connection_lifetime must be .* > 0 or None \(got -5.0\)"),
        ("lifetime_jitter", 0.6, r"lifetime_jitter must be a number in \[0, 0.5\] \(got 0.6\)"),
        ("lifetime_jitter", -0.1, r"lifetime_jitter must be a number in \[0, 0.5\]"),
        ("pool_timeout", -1, r"pool_timeout must be a finite number of seconds > 0 or None"),
        ("pool_timeout", math.inf, r"pool_timeout must be .* \(got inf\)"),
        ("pool_timeout", math.nan, r"pool_timeout must be .* \(got nan\)"),
        ("max_waiting", 0, r"max_waiting must be an integer >= 1 or None \(got 0\)"),
        ("connect_timeout", 0, r"connect_timeout must be a finite number of seconds > 0"),
        ("max_connecting", 0, r"max_connecting must be an integer >= 1 \(got 0\)"),
        ("ping_after", -1, r"ping_after must be a finite number of seconds >= 0 or None"),
        ("close_timeout", -1, r"close_timeout must be a finite number of seconds >= 0"),
        ("backoff_initial", 0, r"backoff_initial must be a finite number of seconds > 0"),
        ("reset", "everything", r"reset must be one of \('none', 'rollback', 'session'\)"),
        ("limit_mode", "loose", r"limit_mode must be one of \('strict', 'soft'\)"),
        ("soft_overflow", -1, r"soft_overflow must be an integer >= 0 \(got -1\)"),
    ],
)
def test_out_of_range_is_a_value_error_naming_field_and_range(
    field: str, value: object, message: str
) -> None:
    """Each setting out of range raises ValueError naming the setting and the allowed range."""
    with pytest.raises(ValueError, match=message):
        PoolSettings(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_connections", "10"),
        ("max_connections", 2.5),
        ("max_connections", True),
        ("min_connections", None),
        ("idle_timeout", "180"),
        ("pool_timeout", True),
        ("lifetime_jitter", "0.1"),
        ("connect_timeout", None),
    ],
)
def test_wrong_type_is_a_type_error_naming_the_field(field: str, value: object) -> None:
    """A value of the wrong type raises TypeError naming the setting and what it takes."""
    with pytest.raises(TypeError, match=rf"^{field} must be .* \(got {value!r}\)$"):
        PoolSettings(**{field: value})


def test_min_above_the_limit_is_an_error() -> None:
    """min_connections above the limit is an error naming the limit that applies."""
    with pytest.raises(ValueError, match=r"min_connections must be <= max_connections \(4\)"):
        PoolSettings(max_connections=4, min_connections=5)
    with pytest.raises(ValueError, match=r"<= total_max_connections \(6\) \(got 7\)"):
        PoolSettings(total_max_connections=6, min_connections=7)
    with pytest.raises(ValueError, match=r"<= the default total \(50\)"):
        PoolSettings(min_connections=51)


def test_backoff_max_below_initial_is_an_error() -> None:
    """backoff_max below backoff_initial names both values."""
    with pytest.raises(ValueError, match=r"backoff_max must be >= backoff_initial"):
        PoolSettings(backoff_initial=5, backoff_max=1)


def test_idle_timeout_not_below_lifetime_is_disabled_with_a_warning() -> None:
    """As HikariCP does: an idle timeout that can never fire first is switched off, loudly."""
    with pytest.warns(ElasticPoolWarning, match=r"idle_timeout \(700s\) >= connection_lifetime"):
        s = PoolSettings(idle_timeout=700, connection_lifetime=600)
    assert s.idle_timeout is None
    assert s.connection_lifetime == 600


def test_none_disables_optional_timers() -> None:
    """None turns off idle timeout, lifetime, pool timeout and pings."""
    s = PoolSettings(
        idle_timeout=None, connection_lifetime=None, pool_timeout=None, ping_after=None
    )
    assert (s.idle_timeout, s.connection_lifetime, s.pool_timeout, s.ping_after) == (None,) * 4


def test_total_wins_over_max_for_a_fleet_of_one() -> None:
    """With both limits set, the fleet total is the limit (precedence as in Hasura)."""
    assert PoolSettings(max_connections=10, total_max_connections=30).instance_limit() == 30
    assert PoolSettings(max_connections=10).instance_limit() == 10


def test_settings_are_frozen_and_replace_revalidates() -> None:
    """Settings cannot be changed in place; replace() validates the copy."""
    s = PoolSettings(max_connections=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_connections = 6  # type: ignore[misc]
    assert s.replace(max_connections=6).max_connections == 6
    with pytest.raises(ValueError, match="max_connections"):
        s.replace(max_connections=0)


def test_from_hasura_accepts_hasura_names_and_meanings() -> None:
    """Hasura's pool_settings map over, with 0 meaning "never" for lifetime and idle timeout."""
    s = PoolSettings.from_hasura(
        {
            "max_connections": 50,
            "total_max_connections": 100,
            "idle_timeout": 0,
            "connection_lifetime": 0,
            "pool_timeout": 30,
            "retries": 1,
        }
    )
    assert (s.max_connections, s.total_max_connections) == (50, 100)
    assert (s.idle_timeout, s.connection_lifetime, s.pool_timeout) == (None, None, 30)
    with pytest.raises(ValueError, match=r"unknown hasura pool_settings key\(s\) \['isolation'\]"):
        PoolSettings.from_hasura({"isolation": "serializable"})
    with pytest.raises(ValueError, match="idle_timeout must be"):
        PoolSettings.from_hasura({"idle_timeout": -1})


def test_from_env_reads_prefixed_variables() -> None:
    """ELASTICPOOL_* variables fill the settings; bad values name the variable."""
    env = {
        "ELASTICPOOL_TOTAL_MAX_CONNECTIONS": "80",
        "ELASTICPOOL_IDLE_TIMEOUT": "60",
        "ELASTICPOOL_POOL_TIMEOUT": "none",
        "ELASTICPOOL_RESET": "rollback",
        "ELASTICPOOL_LIFETIME_JITTER": "0.1",
        "UNRELATED": "x",
    }
    s = PoolSettings.from_env(env)
    assert (s.total_max_connections, s.idle_timeout, s.pool_timeout) == (80, 60, None)
    assert (s.reset, s.lifetime_jitter) == ("rollback", 0.1)
    with pytest.raises(
        ValueError, match=r"ELASTICPOOL_MAX_CONNECTIONS must be a number \(got 'ten'\)"
    ):
        PoolSettings.from_env({"ELASTICPOOL_MAX_CONNECTIONS": "ten"})
    assert PoolSettings.from_env({}) == PoolSettings()


@pytest.mark.parametrize(("text", "percent"), [("80%", 80.0), (" 12.5 % ", 12.5), ("100%", 100.0)])
def test_total_may_be_a_percentage_of_the_servers_connections(text: str, percent: float) -> None:
    """A percentage total is kept as given, unresolved (limit 0) until the server is known."""
    s = PoolSettings(total_max_connections=text, min_connections=3)
    assert (s.total_percent, s.instance_limit()) == (percent, 0)
    assert PoolSettings(total_max_connections=40).total_percent is None


def test_a_percentage_resolves_against_the_usable_connections() -> None:
    """80% of max_connections 100 less 3 reserved is 77; at least 1; a number stays as it is."""
    s = PoolSettings(total_max_connections="80%")
    assert s.with_server_limits(100, 3).total_max_connections == 77
    assert s.with_server_limits(4, 3).total_max_connections == 1
    assert (
        PoolSettings(total_max_connections=9).with_server_limits(100, 3).total_max_connections == 9
    )
    with pytest.raises(ValueError, match=r"min_connections must be <= total_max_connections \(1\)"):
        PoolSettings(total_max_connections="1%", min_connections=2).with_server_limits(100, 3)


def test_a_percentage_comes_from_the_environment_too() -> None:
    """ELASTICPOOL_TOTAL_MAX_CONNECTIONS=80% is a percentage, not a parse error."""
    s = PoolSettings.from_env({"ELASTICPOOL_TOTAL_MAX_CONNECTIONS": "80%"})
    assert s.total_percent == 80.0
