"""No password in any repr, log record, exception message or stats output.

Every object and failure the project produces around a connection string is
turned into text (``repr``, ``str``, log messages at DEBUG, exception
messages and their causes) and scanned for a known password.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from elasticpool import Pool, PoolTimeout, PostgresMembership
from elasticpool.embedded import make_dsn

pytest.importorskip("asyncpg")
pytest.importorskip("psycopg")

from elasticpool.asyncpg import AsyncpgConnector, create_pool
from elasticpool.psycopg import AsyncConnectionPool, PsycopgConnector

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SECRET = "s3cr3t-" + uuid.uuid4().hex[:10]


@pytest.fixture
def anyio_backend() -> str:
    """Both drivers run on asyncio only."""
    return "asyncio"


def texts(exc: BaseException | None) -> list[str]:
    """``str`` and ``repr`` of an exception and of everything in its cause/context chain."""
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc)]
        for inner in getattr(exc, "exceptions", ()):  # an exception group's members
            out += texts(inner)
        exc = exc.__cause__ or exc.__context__
    return out


def assert_clean(*things: object) -> None:
    """None of the texts mentions the secret."""
    for thing in things:
        text = thing if isinstance(thing, str) else repr(thing)
        assert SECRET not in text, f"the password leaked in: {text[:300]}"


@pytest.fixture
def secret_role(pg_server: Any) -> str:
    """A login role whose password is :data:`SECRET`; its DSN."""
    role = "secret_" + uuid.uuid4().hex[:8]
    pg_server.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
    return make_dsn(
        host=pg_server.host,
        port=pg_server.port,
        user=role,
        password=SECRET,
        database="postgres",
        params={"sslmode": "disable"},
    )


async def test_reprs_of_everything_built_from_a_dsn(secret_role: str, pg_server: Any) -> None:
    """Connectors, pools, faces and memberships built with the password never show it."""
    asyncpg_kw = AsyncpgConnector(host="127.0.0.1", port=pg_server.port, password=SECRET)
    psycopg_kw = PsycopgConnector("host=127.0.0.1", kwargs={"password": SECRET})
    things: list[object] = [
        AsyncpgConnector(secret_role),
        asyncpg_kw,
        PsycopgConnector(secret_role),
        psycopg_kw,
        Pool(AsyncpgConnector(secret_role), max_connections=2, name="secret"),
        PostgresMembership(),
    ]
    async with create_pool(secret_role, min_size=1, max_size=2) as face:
        things += [face, face.stats()]
        async with face.acquire() as conn:
            things.append(conn)
    async with AsyncConnectionPool(secret_role, min_size=1, open=False) as pface:
        things += [pface, pface.get_stats()]
        async with pface.connection() as conn:
            things.append(conn)
    pool = Pool(AsyncpgConnector(secret_role), max_connections=2)
    async with pool, pool.acquire() as conn:
        things += [conn, pool, pool.stats(), pool.fleet()]
    assert_clean(*things)
    assert_clean(*(str(t) for t in things))


async def test_failing_connects_log_and_raise_without_the_password(
    secret_role: str, pg_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Wrong password, refused port: every log record and error says nothing of the secret."""
    wrong = secret_role.replace(SECRET, SECRET + "x")  # the server says no; both are secret
    refused = secret_role.replace(f":{pg_server.port}/", ":1/")
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        for dsn in (wrong, refused):
            for connector in (AsyncpgConnector(dsn), PsycopgConnector(dsn)):
                async with Pool(
                    connector, max_connections=1, pool_timeout=0.3, backoff_initial=0.05
                ) as pool:
                    with pytest.raises(PoolTimeout) as info:
                        await pool.acquire()
                    errors.append(info.value)
            with pytest.raises(Exception) as face_info:  # noqa: PT011 - the driver's own error
                async with create_pool(dsn, min_size=1, max_size=1):
                    pass
            errors.append(face_info.value)
            pface = AsyncConnectionPool(dsn, min_size=1, open=False, timeout=0.3)
            with pytest.raises(Exception) as pface_info:  # noqa: PT011 - psycopg_pool's error
                await pface.open(wait=True, timeout=0.5)
            errors.append(pface_info.value)
            await pface.close()
    assert len(errors) == 8
    for exc in errors:
        assert_clean(*texts(exc))
    messages = [r.getMessage() for r in caplog.records]
    messages += [repr(r.args) for r in caplog.records]
    assert messages, "the failing connects logged nothing at all"
    assert_clean(*messages)
