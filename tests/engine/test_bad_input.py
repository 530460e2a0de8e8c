"""Bad input and misuse: each gives a clear error naming the problem, and none corrupts the pool.

tests/planner/test_settings.py pins the wording for hand-picked values; here every
PoolSettings field is driven from its type annotation, so a new field without
validation fails this file. Then the pool's own misuse: wrong constructor
arguments, per-call values, releases that are not ours, use after close and
the nested-acquire deadlock hint. After each misuse the pool's invariants are
checked and it still serves.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal, get_args, get_origin

import anyio
import pytest

from elasticpool import Pool, PoolClosed, PoolSettings, PoolTimeout
from elasticpool.testing import FakeConnector

from ..helpers import assert_consistent

# ---------------------------------------------------------------- every setting


def _bad_values(annotation: object) -> tuple[list[object], list[object]]:
    """(wrong types, out-of-range values) for a settings field of this annotation."""
    args = set(get_args(annotation)) if get_origin(annotation) is not None else {annotation}
    args.discard(type(None))
    if get_origin(annotation) is Literal or any(get_origin(a) is Literal for a in args):
        return [1], ["no-such-choice"]
    if args == {bool}:
        return ["yes", 1], []
    if args == {int}:
        return ["3", 2.5, True], [-1]
    if args == {int, str}:  # a count, or a percentage string ("80%")
        return [2.5, True, b"80%"], [-1, "80", "0%", "101%", "eighty%"]
    if args == {float}:
        return ["3", True, [1.0]], [-1.0, math.nan]
    raise AssertionError(f"no bad values known for {annotation!r}: extend this table")


_HINTS = typing.get_type_hints(PoolSettings)
_CASES = [
    pytest.param(field.name, value, kind, id=f"{field.name}={value!r}")
    for field in dataclasses.fields(PoolSettings)
    for kind, values in zip((TypeError, ValueError), _bad_values(_HINTS[field.name]), strict=True)
    for value in values
]


@pytest.mark.parametrize(("field", "value", "kind"), _CASES)
def test_every_setting_rejects_bad_values_by_name(field: str, value: object, kind: type) -> None:
    """Each field of PoolSettings rejects a wrong type or an out-of-range value, naming itself."""
    with pytest.raises((TypeError, ValueError), match=rf"^{field} must be ") as info:
        PoolSettings(**{field: value})
    assert isinstance(info.value, kind)
    assert repr(value) in str(info.value) or isinstance(value, list)


def test_every_field_has_a_case() -> None:
    """The generated table covers every PoolSettings field (guards the generator itself)."""
    covered = {case.values[0] for case in _CASES}
    assert covered == {f.name for f in dataclasses.fields(PoolSettings)}


def test_unknown_setting_names_itself() -> None:
    """A misspelt setting is a TypeError naming it, through PoolSettings and through Pool."""
    with pytest.raises(TypeError, match="'max_conections'"):
        PoolSettings(max_conections=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'idle_timeut'"):
        Pool(FakeConnector(), idle_timeut=5)


def test_environment_and_hasura_inputs_name_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_env names the variable; from_hasura names unknown keys and bad values."""
    monkeypatch.setenv("ELASTICPOOL_FAIL_FAST", "maybe")
    with pytest.raises(ValueError, match=r"^ELASTICPOOL_FAIL_FAST must be one of \('1', 'true'"):
        PoolSettings.from_env()
    monkeypatch.setenv("ELASTICPOOL_FAIL_FAST", "Off")
    assert PoolSettings.from_env().fail_fast is False
    monkeypatch.setenv("ELASTICPOOL_POOL_TIMEOUT", "soon")
    with pytest.raises(
        ValueError, match=r"^ELASTICPOOL_POOL_TIMEOUT must be a number \(got 'soon'"
    ):
        PoolSettings.from_env()
    with pytest.raises(ValueError, match=r"unknown hasura pool_settings key\(s\) \['max_conns'\]"):
        PoolSettings.from_hasura({"max_conns": 3})
    with pytest.raises(TypeError, match=r"^max_connections must be an integer >= 1"):
        PoolSettings.from_hasura({"max_connections": "x"})


def test_pool_constructor_rejects_what_is_not_a_connector_or_settings() -> None:
    """Pool() names a missing Connector method, a settings object of the wrong type, a bad name."""
    with pytest.raises(
        TypeError, match=r"connector must implement elasticpool.Connector .*NoneType"
    ):
        Pool(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"missing .*ping"):
        Pool(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"settings must be a PoolSettings \(got dict\)"):
        Pool(FakeConnector(), {"max_connections": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Pool(FakeConnector(), name="")


# ---------------------------------------------------------------- the pool at run time


@pytest.mark.anyio
async def test_per_call_values_are_checked_and_harm_nothing() -> None:
    """Bad timeouts and resize values raise errors naming the argument; the pool is unchanged."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=2) as pool:
        async with pool.acquire():
            pass
        for bad, kind in (("1", TypeError), (True, TypeError), (-1, ValueError), (0, ValueError)):
            with pytest.raises(kind, match=r"^timeout must be "):
                await pool.acquire(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(
            ValueError, match=r"^timeout must be a number of seconds > 0 or None \(got nan\)"
        ):
            async with pool.acquire(timeout=math.nan):
                pass
        with pytest.raises(TypeError, match=r"^timeout must be a number of seconds >= 0"):
            await pool.wait("x")  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=r"^max_connections must be an integer >= 0 \(got '3'\)"
        ):
            await pool.resize("3")  # type: ignore[arg-type]
        with pytest.raises(
            ValueError, match=r"^max_connections must be an integer >= 0 \(got -1\)"
        ):
            await pool.resize(-1)
        with pytest.raises(ValueError, match=r"^min_connections must be an integer in \[0, 2\]"):
            await pool.resize(2, min_connections=5)
        with pytest.raises(TypeError, match=r"^min_connections must be an integer in \[0, 2\]"):
            await pool.resize(2, min_connections=1.5)  # type: ignore[arg-type]
        stats = pool.stats()
        assert (stats.max, stats.min, stats.in_use, stats.waiting) == (2, 0, 0, 0)
        assert_consistent(pool, connector)
        async with pool.acquire() as conn:
            await conn.execute()


@pytest.mark.anyio
async def test_releases_that_are_not_ours_are_refused_and_harm_nothing() -> None:
    """release()/retire() of None, of an `async with` borrow, or of a foreign one: RuntimeError."""
    connector = FakeConnector()
    other = FakeConnector()
    async with Pool(connector, max_connections=2) as pool, Pool(other, name="other") as foreign:
        stranger = await foreign.acquire()
        with pytest.raises(RuntimeError, match=r"connection None is not borrowed from pool"):
            pool.release(None)
        with pytest.raises(RuntimeError, match="is not borrowed from pool 'default'"):
            pool.retire(stranger)
        async with pool.acquire() as conn:
            with pytest.raises(RuntimeError, match="released twice, or from another pool"):
                pool.release(conn)  # the context manager gives it back itself
            assert pool.stats().in_use == 1  # still ours until the block ends
        assert pool.stats().in_use == 0
        borrowed = await pool.acquire()
        pool.release(borrowed)
        with pytest.raises(RuntimeError, match="released twice"):
            pool.release(borrowed)
        foreign.release(stranger)
        assert_consistent(pool, connector)
        assert_consistent(foreign, other)
        async with pool.acquire() as conn:
            await conn.execute()


@pytest.mark.anyio
async def test_use_after_close_is_a_clear_error_and_opens_nothing() -> None:
    """After close: borrowing says the pool is closed; resize/expire/close do nothing harmful."""
    connector = FakeConnector()
    pool = Pool(connector, max_connections=2, name="shut")
    async with pool:
        late = await pool.acquire()
        await pool.close(timeout=0.01)
    # close() terminated the one still borrowed; giving it back later is harmless.
    pool.release(late)
    closed = r"^pool 'shut' is closed"
    with pytest.raises(PoolClosed, match=closed):
        await pool.acquire()
    with pytest.raises(PoolClosed, match=closed):
        async with pool.acquire():
            pass
    with pytest.raises(PoolClosed, match=closed):
        pool.acquire_nowait()
    with pytest.raises(PoolClosed, match=closed):
        async with pool.transaction():
            pass
    with pytest.raises(PoolClosed, match=closed):
        await pool.wait()
    with pytest.raises(PoolClosed, match="cannot be opened again"):
        await pool.open()
    started = connector.connects_started
    await pool.resize(2, min_connections=2)  # documented: no connection opens again
    await pool.expire_connections()
    await pool.close()
    await anyio.lowlevel.checkpoint()
    assert connector.connects_started == started
    assert connector.open == set()
    assert pool.stats().size == 0
    assert_consistent(pool, connector)


@pytest.mark.anyio
async def test_nested_acquire_timeout_names_the_deadlock() -> None:
    """A task that times out while holding a connection of the same full pool is told why."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, pool_timeout=0.05) as pool:
        async with pool.acquire():
            with pytest.raises(
                PoolTimeout,
                match=r"this task already holds 1 connection from this pool: "
                r"a nested acquire waits for itself",
            ):
                async with pool.acquire():
                    pass
        held = await pool.acquire()
        with pytest.raises(PoolTimeout, match="already holds 1 connection"):
            await pool.acquire()
        pool.release(held)
        assert_consistent(pool, connector)


@pytest.mark.anyio
async def test_timeout_in_another_task_gets_no_deadlock_hint() -> None:
    """The hint is only for the task that holds a connection: others get the plain timeout."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=1, pool_timeout=0.05) as pool:
        got: list[PoolTimeout] = []

        async def other() -> None:
            try:
                async with pool.acquire():
                    pass
            except PoolTimeout as exc:
                got.append(exc)

        async with pool.acquire(), anyio.create_task_group() as tg:
            tg.start_soon(other)
        assert len(got) == 1
        assert "no connection within 0.05s" in str(got[0])
        assert "already holds" not in str(got[0])
        assert_consistent(pool, connector)


@pytest.mark.anyio
async def test_a_barrage_of_misuse_leaves_a_working_pool() -> None:
    """Interleaved misuse and normal borrows: counts and the fake's open set stay exact."""
    connector = FakeConnector()
    async with Pool(connector, max_connections=3) as pool:
        for round_ in range(20):
            conn = await pool.acquire()
            for misuse in (
                lambda: pool.release(object()),  # type: ignore[arg-type]
                lambda: pool.retire(object()),  # type: ignore[arg-type]
            ):
                with pytest.raises(RuntimeError):
                    misuse()
            with pytest.raises((TypeError, ValueError)):
                await pool.acquire(timeout=-round_ - 1)
            pool.release(conn)
            with pytest.raises(RuntimeError):
                pool.release(conn)
            assert_consistent(pool, connector)
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(_borrow, pool)
        assert pool.stats().in_use == 0
        assert_consistent(pool, connector)


async def _borrow(pool: Pool[Any]) -> None:
    async with pool.acquire() as conn:
        await conn.execute(0.001)
