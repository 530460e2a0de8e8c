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
from elasticpool._redact import redact_dsn, scrub
from elasticpool.cli import main
from elasticpool.embedded import make_dsn

pytest.importorskip("asyncpg")
pytest.importorskip("psycopg")

from elasticpool.asyncpg import AsyncpgConnector, create_pool
from elasticpool.psycopg import AsyncConnectionPool, PsycopgConnector

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SECRET = "s3cr3t-" + uuid.uuid4().hex[:10]


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


# ----------------------------------------------------------------------------- unencoded passwords

# Pieces of a password pasted into a URI without percent-encoding: drivers misread
# such a URI and quote a piece (a "port", "host" or "database") rather than the
# whole, so every test below looks for each piece.
PIECE_A = "pa" + uuid.uuid4().hex[:10]
PIECE_B = "pb" + uuid.uuid4().hex[:10]
MISREAD = [
    pytest.param(f"{PIECE_A}{chars}{PIECE_B}", id=name)
    for name, chars in [
        ("hash", "#"),
        ("slash", "/"),
        ("qmark", "?"),
        ("at", "@"),
        ("all", "#/?@%"),
    ]
]
"""Passwords with ``# / ? @`` unencoded: both drivers would misread the URI."""
PERCENT = f"{PIECE_A}%{PIECE_B}"
"""A ``%`` not followed by two hex digits: asyncpg takes it as written, libpq refuses it."""


def assert_no_piece(*texts_: str) -> None:
    """None of the texts holds either piece of the password."""
    for text in texts_:
        for piece in (PIECE_A, PIECE_B):
            assert piece not in text, f"a piece of the password leaked in: {text[:300]}"


@pytest.mark.parametrize(
    ("dsn", "password", "shown"),
    [
        pytest.param(
            "postgresql://app:{}@db:5432/x?sslmode=disable",
            f"{PIECE_A}#/?@%{PIECE_B}",
            "postgresql://app:***@db:5432/x?sslmode=disable",
            id="uri-userinfo",
        ),
        pytest.param(
            "postgres://app@db/x?password={}&user=a@b",
            f"{PIECE_A}#&{PIECE_B}@%",
            "postgres://app@db/x?password=***&user=a@b",
            id="uri-query",
        ),
        pytest.param(
            "host=db password='{}", f"{PIECE_A} {PIECE_B}", "host=db password=***", id="key-value"
        ),
        pytest.param(
            "PGPASSWORD={} psql -h db",
            f"{PIECE_A}#{PIECE_B}",
            "PGPASSWORD=*** psql -h db",
            id="environment",
        ),
    ],
)
def test_redact_dsn_masks_unencoded_passwords_in_every_form(
    dsn: str, password: str, shown: str
) -> None:
    """The one redaction helper masks the whole password, whatever it holds unencoded."""
    dsn = dsn.format(password)
    assert redact_dsn(dsn) == shown
    assert_no_piece(scrub(f"failed: {dsn} ({password})", dsn))


@pytest.mark.parametrize("password", MISREAD)
@pytest.mark.parametrize("connector", [AsyncpgConnector, PsycopgConnector])
def test_connectors_refuse_a_misread_password_without_showing_it(
    connector: type[Any], password: str
) -> None:
    """A URI whose password drivers would misread is refused at construction, masked."""
    dsn = f"postgresql://app:{password}@127.0.0.1:5432/db?sslmode=disable"
    with pytest.raises(ValueError, match=f"cannot parse the dsn given to {connector.__name__}"):
        connector(dsn)
    with pytest.raises(ValueError, match="percent-encode the password") as info:
        connector(dsn)
    assert "postgresql://app:***@127.0.0.1:5432/db?sslmode=disable" in str(info.value)
    assert_no_piece(*texts(info.value))


def test_set_connect_args_refuses_a_misread_password() -> None:
    """``set_connect_args`` checks its DSN as the constructor does."""
    connector = AsyncpgConnector("postgresql://app@127.0.0.1:5432/db")
    with pytest.raises(ValueError, match="cannot parse the dsn given to AsyncpgConnector") as info:
        connector.set_connect_args(f"postgresql://app:{PIECE_A}#{PIECE_B}@127.0.0.1:5432/db")
    assert_no_piece(*texts(info.value), repr(connector))


@pytest.mark.parametrize(
    "userinfo_query",
    [
        pytest.param(("app", f"password={PIECE_A}&{PIECE_B}"), id="query-ampersand"),
        pytest.param(("app", f"password={PERCENT}"), id="query-percent"),
        pytest.param((f"app:{PERCENT}", "sslmode=disable"), id="userinfo-percent"),
    ],
)
@pytest.mark.parametrize("reachable", [True, False], ids=["wrong-password", "refused"])
@pytest.mark.parametrize("connector", [AsyncpgConnector, PsycopgConnector])
async def test_connect_failures_never_quote_a_piece_of_the_password(
    connector: type[Any],
    reachable: bool,
    userinfo_query: tuple[str, str],
    pg_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PoolTimeout, its cause chain and the connect-failure logs hold no piece of the password."""
    userinfo, query = userinfo_query
    port = pg_server.port if reachable else 1
    dsn = f"postgresql://{userinfo}@127.0.0.1:{port}/postgres?{query}"
    with caplog.at_level(logging.DEBUG):
        async with Pool(
            connector(dsn), max_connections=1, pool_timeout=0.3, backoff_initial=0.05
        ) as pool:
            with pytest.raises(PoolTimeout, match="connects are failing") as info:
                await pool.acquire()
    assert_no_piece(*texts(info.value))
    records = [r for r in caplog.records if "connect failed" in r.getMessage()]
    assert records, "the failing connects logged nothing"
    assert_no_piece(*(r.getMessage() for r in records))


@pytest.mark.parametrize("password", [*MISREAD, pytest.param(PERCENT, id="percent")])
@pytest.mark.parametrize("reachable", [True, False], ids=["wrong-password", "refused"])
@pytest.mark.parametrize("command", ["status", "set-total"])
def test_cli_never_prints_an_unencoded_password(
    command: str,
    reachable: bool,
    password: str,
    pg_server: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``status`` and ``set-total`` say "cannot connect to" the masked DSN, and no piece of it."""
    port = pg_server.port if reachable else 1
    dsn = f"postgresql://app:{password}@127.0.0.1:{port}/postgres"
    extra = ["--pool", "api", "5"] if command == "set-total" else []
    assert main([command, "--dsn", dsn, *extra]) == 1
    out, err = capsys.readouterr()
    assert f"cannot connect to postgresql://app:***@127.0.0.1:{port}/postgres" in err
    assert_no_piece(out, err)
