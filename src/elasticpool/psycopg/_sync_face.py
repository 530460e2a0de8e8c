""":class:`ConnectionPool`, the sync psycopg_pool look-alike, on a ``SyncPool``."""

from __future__ import annotations

import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Generic, TypeAlias

import psycopg
from psycopg_pool.abc import CT

from .. import _errors
from .._connector import ResetMode
from .._stats import PoolStats
from .._sync_pool import SyncPool
from .._validate import check_seconds_type
from ..fleet._base import Membership
from ._errors import PoolClosed, PoolTimeout, TooManyRequests
from ._face_args import (
    FaceStats,
    check_size,
    face_settings,
    pool_numbers,
    seconds,
)
from ._sync_connector import (
    _CONNECTION,
    SyncConnectionCB,
    SyncConninfoParam,
    SyncKwargsParam,
    SyncPsycopgConnector,
    check_connection_sync,
)
from ._wire import _ACTIVE, _IDLE, _INERROR, _INTRANS, _OK, _UNKNOWN, _status_name

logger = logging.getLogger("elasticpool")
peer_logger = logging.getLogger("psycopg.pool")
"""psycopg_pool's logger: the face logs psycopg_pool's own messages there, with its texts."""

_EXIT: Final = psycopg.Connection.__exit__

_monotonic = time.monotonic
_INF = float("inf")

SyncReconnectFailedCB: TypeAlias = Callable[["ConnectionPool[Any]"], None]
"""``reconnect_failed(pool)``."""


class _FaceConnector(SyncPsycopgConnector[CT]):
    """The face's connector: reports connect outcomes, for ``reconnect_failed``."""

    def __init__(self, face: ConnectionPool[CT], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._face = weakref.ref(face)

    def connect(self, timeout: float) -> CT:
        try:
            conn = super().connect(timeout)
        except Exception as exc:
            face = self._face()
            if face is not None:
                face._connect_failed(exc)
            raise
        face = self._face()
        if face is not None:
            face._failing_since = None
        return conn


class _Borrow(Generic[CT]):
    """What :meth:`ConnectionPool.connection` returns: ``with face.connection() as conn``.

    As psycopg_pool's: the block runs in psycopg's connection context (COMMIT
    at a clean exit, ROLLBACK on an error), then the connection goes back.
    """

    __slots__ = ("_conn", "_pool", "_started", "_timeout")

    def __init__(self, face: ConnectionPool[CT], timeout: float | None) -> None:
        self._pool = face
        self._timeout = timeout
        self._conn: CT | None = None
        self._started = 0.0

    def __enter__(self) -> CT:
        conn = self._conn = self._pool.getconn(self._timeout)
        self._started = _monotonic()
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        face = self._pool
        error = exc
        clean = False
        try:
            c: Any = conn  # (psycopg's private attributes)
            pgconn = c.pgconn
            if (
                pgconn.transaction_status == _IDLE
                and pgconn.status == _OK
                and type(c).__exit__ is _EXIT
                and not c._num_transactions
                and not c._tpc
                and not c._pipeline
                and c._pool is face
            ):
                # psycopg's __exit__ would do nothing (COMMIT and ROLLBACK of an idle
                # connection outside any transaction() block, two-phase transaction
                # or pipeline return at once): skipped. And the connection comes
                # back open and idle, as the pool needs it, unless an error says
                # otherwise or a reset is due whatever its state.
                clean = exc is None and face._idle_is_clean and not face._closed
            else:
                conn.__exit__(exc_type, exc, tb)  # COMMIT, or ROLLBACK on an error
        except BaseException as commit_error:
            error = commit_error  # a connection-class error evicts it on release
            raise
        finally:
            face._putconn(conn, error, clean)
            face._usage_ms += int(1000.0 * (_monotonic() - self._started))
            face._usages += 1


class ConnectionPool(FaceStats, Generic[CT]):
    """A drop-in for :class:`psycopg_pool.ConnectionPool` (3.3) on an elastic, threaded pool.

    Same constructor, attributes, methods, errors and statistics as
    psycopg_pool's sync pool, with psycopg_pool's semantics, and psycopg's own
    :class:`~psycopg.Connection` handed out. Underneath is an
    :class:`elasticpool.SyncPool` (:attr:`elastic`), so the pool grows only
    for callers it cannot serve, shrinks per connection after ``max_idle``,
    never stops reconnecting, and serves waiting threads strictly first come,
    first served.

    Parameters map as for :class:`AsyncConnectionPool` (see
    ``docs/migrate-psycopg.md``): ``min_size`` → ``min_connections``;
    ``max_size`` (``None``: ``min_size``) → ``max_connections``; ``timeout``
    → ``pool_timeout``; ``max_waiting`` (0: unbounded) → ``max_waiting``;
    ``max_lifetime`` → ``connection_lifetime``; ``max_idle`` →
    ``idle_timeout``; ``num_workers`` → ``max_connecting``; ``check`` given
    → checked on every borrow. ``reset_mode`` (default ``"rollback"``, as
    psycopg_pool) may be ``"session"``. ``membership`` (a
    :class:`~elasticpool.PostgresMembership`, say) makes it a member of a
    fleet sharing ``total_max_connections``, with async pools of the same
    name too; any other :class:`~elasticpool.PoolSettings` field may be
    passed by keyword.

    ``open``: as psycopg_pool 3.2+, ``None`` (the default) opens the pool
    in the constructor and warns (``DeprecationWarning``) at the first
    ``getconn`` that the default will change; ``True`` opens it quietly;
    ``False`` leaves it to :meth:`open` or ``with``. Callbacks
    (``configure``, ``check``, ``reset``, ``reconnect_failed``) are plain
    functions: ``check`` runs on the borrowing thread, ``reset`` on the
    returning one (done when :meth:`putconn` or the ``connection()`` block
    returns), the others on the pool's threads.

    A connection given back is rolled back, closed or reset as psycopg_pool
    does it, with psycopg_pool's warnings on the ``psycopg.pool`` logger;
    ``reset_mode="session"`` adds a full session reset afterwards, on a pool
    thread.

    ``reconnect_failed(pool)`` is called once per streak of failing connects
    longer than ``reconnect_timeout``; the pool does not give up then and
    keeps reconnecting with backoff.

    Errors are :class:`PoolTimeout`, :class:`PoolClosed` and
    :class:`TooManyRequests` of this package: each is both psycopg_pool's and
    elasticpool's class of that name. It is not a null pool, and it has no
    maintenance workers: ``run_task``, ``schedule_task`` and ``worker`` do not
    exist.
    """

    def __init__(
        self,
        conninfo: SyncConninfoParam = "",
        *,
        connection_class: type[CT] = _CONNECTION,
        kwargs: SyncKwargsParam | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        open: bool | None = None,
        configure: SyncConnectionCB[CT] | None = None,
        check: SyncConnectionCB[CT] | None = None,
        reset: SyncConnectionCB[CT] | None = None,
        name: str | None = None,
        close_returns: bool = False,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_lifetime: float = 60 * 60.0,
        max_idle: float = 10 * 60.0,
        reconnect_timeout: float = 5 * 60.0,
        reconnect_failed: SyncReconnectFailedCB | None = None,
        num_workers: int = 3,
        reset_mode: ResetMode = "rollback",
        membership: Membership | None = None,
        **elastic_settings: Any,
    ) -> None:
        max_size_given = max_size is not None
        total = elastic_settings.get("total_max_connections") is not None
        min_size, max_size = check_size(min_size, max_size, total=total and not max_size_given)
        if not name:
            name = f"pool-{next(pool_numbers)}"
        check_seconds_type("reconnect_timeout", reconnect_timeout, strict=False, finite=False)
        pool_settings = face_settings(
            min_size=min_size,
            max_size=max_size,
            max_size_given=max_size_given,
            timeout=timeout,
            max_waiting=max_waiting,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            num_workers=num_workers,
            reset_mode=reset_mode,
            check_given=check is not None,
            close_returns=close_returns,
            elastic_settings=elastic_settings,
        )
        self.conninfo = conninfo
        self.kwargs = kwargs
        self.connection_class = connection_class
        self.name = name
        self.close_returns = close_returns
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.max_lifetime = max_lifetime
        self.max_idle = max_idle
        self.reconnect_timeout = reconnect_timeout
        self.num_workers = num_workers
        self._min_size = min_size
        self._max_size = max_size
        self._reconnect_failed = reconnect_failed
        self._connector: _FaceConnector[CT] = _FaceConnector(
            self,
            conninfo=conninfo,
            kwargs=kwargs,
            connection_class=connection_class,
            configure=configure,
            check=check,
        )
        self._reset = reset  # run by the face, in putconn(), as psycopg_pool's return does
        self.elastic: SyncPool[CT] = SyncPool(
            self._connector, pool_settings, membership=membership, name=name
        )
        """The :class:`elasticpool.SyncPool` underneath (its ``stats()``, ``fleet()``…)."""
        # Whether a connection given back open and idle needs nothing more: no reset
        # under reset_mode (the connector's needs_reset, decided once here).
        self._idle_is_clean = pool_settings.reset != "session" and reset is None
        # (and the pool open: see _Borrow.__exit__)
        self._reuse_in_turn()

        # psycopg_pool's lifecycle flags: closed until opened; opened at most once.
        self._lock = threading.Lock()
        self._closed = True
        self._opened = False
        self._open_implicit = False
        self._init_stats()
        # reconnect_failed: the current streak of failing connects
        self._failing_since: float | None = None
        self._streak_reported = False

        if open is None:
            open = self._open_implicit = True
        if open:
            self._open()

    # ------------------------------------------------------------------ read-only attributes

    @property
    def min_size(self) -> int:
        """The warm floor (psycopg_pool's ``min_size``)."""
        return self._min_size

    @property
    def max_size(self) -> int:
        """The limit (psycopg_pool's ``max_size``)."""
        return self._max_size

    @property
    def closed(self) -> bool:
        """``True`` before :meth:`open` and after :meth:`close`, as in psycopg_pool."""
        return self._closed

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} at 0x{id(self):x}>"

    # ------------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        with self._lock:
            if not self._closed:
                return
            if self._opened:
                raise PoolClosed("pool has already been opened/closed and cannot be reused")
            self._closed = False
            self._opened = True
        self.elastic.open()

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open the pool; with ``wait``, also wait (``timeout`` seconds at most) for ``min_size``.

        Opening an open pool does nothing; a closed pool cannot be reopened
        (:class:`PoolClosed`).
        """
        self._open()
        if wait:
            self.wait(timeout=timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until ``min_size`` connections are open.

        After ``timeout`` seconds the pool is closed and :class:`PoolTimeout`
        raised, as in psycopg_pool (``__cause__``: the last connect error).
        """
        self._check_open_getconn()
        try:
            self.elastic.wait(timeout=seconds(timeout))
        except _errors.PoolTimeout as exc:
            self.close()
            raise PoolTimeout(
                f"pool initialization incomplete after {timeout} sec; {exc}"
            ) from exc.__cause__

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool: waiting and future callers get :class:`PoolClosed`.

        Idle connections are closed now. As in psycopg_pool, connections in
        use stay usable until they are returned, and are closed then. With
        none in use it returns once everything is closed, within ``timeout``
        seconds.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.elastic.lent == 0:  # a heartbeat's statement ends with the pool
            self.elastic.close(timeout=seconds(timeout))
            return
        # Borrowed connections must not be cut off under their holders: the
        # elastic pool's close waits for them, on a thread of its own; waiting
        # callers fail as soon as it starts.
        closer = threading.Thread(
            target=self.elastic.close,
            kwargs={"timeout": None},
            name=f"elasticpool-{self.name}-close",
            daemon=True,
        )
        closer.start()
        with self.elastic._life:
            self.elastic._life.wait_for(lambda: self.elastic._state != "open", 1.0)

    def __enter__(self) -> ConnectionPool[CT]:
        self._open_implicit = False
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open_getconn(self) -> None:
        if self._closed:
            if self._opened:
                raise PoolClosed(f"the pool {self.name!r} is already closed")
            raise PoolClosed(f"the pool {self.name!r} is not open yet")
        if self._open_implicit:
            self._open_implicit = False
            warnings.warn(
                f"the default for the {type(self).__name__} 'open' parameter will become "
                "'False' in a future release. Please use open={True|False} explicitly, or "
                f"use the pool as context manager using: `with {type(self).__name__}(...) "
                "as pool: ...`",
                DeprecationWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ borrowing

    def connection(self, timeout: float | None = None) -> _Borrow[CT]:
        """Borrow a connection for the block: ``with pool.connection() as conn``.

        As in psycopg_pool: the block runs in psycopg's connection context
        (COMMIT at a clean exit, ROLLBACK on an error) and the connection goes
        back afterwards. A connection-class error (see
        :func:`is_disconnect_error`) also closes it, so it is not reused.
        """
        return _Borrow(self, timeout)

    def getconn(self, timeout: float | None = None) -> CT:
        """Borrow a connection; give it back with :meth:`putconn`.

        Waits up to ``timeout`` (``None``: :attr:`timeout`) seconds, then
        raises :class:`PoolTimeout`; :class:`TooManyRequests` at once if
        ``max_waiting`` callers already wait; :class:`PoolClosed` if closed.
        """
        if timeout is None:
            timeout = self.timeout
        self._requests_num += 1
        if self._closed or self._open_implicit:
            self._check_open_getconn()
        if timeout <= 0:
            raise PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")
        started = _monotonic()
        try:
            conn = self.elastic._lend(None if timeout == _INF else timeout)
        except _errors.PoolTimeout as exc:
            self._requests_errors += 1
            raise PoolTimeout(
                f"couldn't get a connection after {timeout:.2f} sec; {exc}"
            ) from exc.__cause__
        except _errors.TooManyWaiters as exc:
            self._requests_errors += 1
            raise TooManyRequests(
                f"the pool {self.name!r} has already {self.elastic.stats().waiting}"
                f" requests waiting; {exc}"
            ) from None
        except _errors.PoolClosed as exc:
            self._requests_errors += 1
            raise PoolClosed(f"the pool {self.name!r} is already closed; {exc}") from None
        except BaseException:
            self._requests_errors += 1
            raise
        finally:
            # psycopg_pool adds each request's wait, failed or not, in whole ms.
            self._wait_ms += int(1000.0 * (_monotonic() - started))
        # As psycopg_pool: ``with conn`` then does not close it, and ``conn.close()``
        # returns it when ``close_returns`` is set.
        conn._pool = self  # type: ignore[assignment]  # psycopg types it as its own pools
        return conn

    def putconn(self, conn: CT) -> None:
        """Give back a connection borrowed with :meth:`getconn`.

        A connection not borrowed from this pool raises :class:`ValueError`
        (psycopg_pool's message), and so does a stale one: returned by this
        thread already and borrowed by another since (see
        :meth:`elasticpool.SyncPool.release`); that borrow stands. As in
        psycopg_pool, a connection given back in a transaction is rolled back
        here, one given back mid-query is closed, the ``reset`` callback runs,
        and a pool already closed closes the connection, each with
        psycopg_pool's warnings on the ``psycopg.pool`` logger; a connection
        given back idle (the usual case) is only handed back. Whatever is
        raised on the way, the connection is given back to the pool.
        """
        self._putconn(conn, None)

    def _putconn(self, conn: CT, error: BaseException | None, clean: bool = False) -> None:
        # clean: the caller found the connection open and idle, the pool open, and no
        # reset due (see _Borrow.__exit__): it goes back with no further look at it.
        pool = getattr(conn, "_pool", None)
        if pool is not self:
            msg = f"it comes from pool {pool.name!r}" if pool else "it doesn't come from any pool"
            raise ValueError(f"can't return connection to pool {self.name!r}, {msg}: {conn}")
        elastic = self.elastic
        try:
            slot = elastic._borrow_of(conn, "returned")
        except RuntimeError as exc:  # a stale putconn: that borrow stands
            raise ValueError(f"can't return connection to pool {self.name!r}; {exc}") from None
        if not clean:
            pgconn = conn.pgconn
            if (
                self._closed
                or self._reset is not None
                or pgconn.status != _OK
                or pgconn.transaction_status != _IDLE
            ):
                # Whatever is raised on the way, the connection goes back to the pool.
                try:
                    self._tidy(conn)
                finally:
                    conn._pool = None
                    elastic._end_borrow(slot, conn, error)
                return
            clean = error is None and self._idle_is_clean  # open, idle: as above
        conn._pool = None
        elastic._end_borrow(slot, conn, error, clean)

    def _tidy(self, conn: CT) -> None:
        """psycopg_pool's return of a connection that is not simply idle, with its warnings.

        A closed pool closes it. Else a transaction is rolled back (closed if
        that fails), a query under way gets it closed (the connector also
        cancels the query on the server), then the ``reset`` callback runs
        (closed if it fails or leaves a transaction). A connection closed by
        then is reported as psycopg_pool does: discarded. The async face's
        ``_tidy``, with blocking calls.
        """
        if self._closed:
            self._connector.close(conn)
            return
        status = conn.pgconn.transaction_status
        if status in (_INTRANS, _INERROR):
            peer_logger.warning("rolling back returned connection: %s", conn)
            try:
                conn.rollback()
            except Exception as ex:
                peer_logger.warning(
                    "rollback failed: %s: %s. Discarding connection %s",
                    ex.__class__.__name__,
                    ex,
                    conn,
                )
                self._connector.close(conn)
        elif status == _ACTIVE:
            peer_logger.warning("closing returned connection: %s", conn)
            self._connector.close(conn)
        reset = self._reset
        if reset is not None and not conn.closed:
            try:
                reset(conn)
                if conn.pgconn.transaction_status != _IDLE:
                    raise psycopg.ProgrammingError(
                        f"connection left in status {_status_name(conn)} by reset function"
                        f" {reset}: discarded"
                    )
            except Exception as ex:
                peer_logger.warning("error resetting connection: %s", ex)
                self._connector.close(conn)
        if conn.closed or conn.pgconn.transaction_status == _UNKNOWN:
            peer_logger.warning("discarding closed connection: %s", conn)

    # ------------------------------------------------------------------ maintenance

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``min_size`` and ``max_size`` now (``max_size`` ``None``: ``min_size``).

        A raised limit serves waiters at once; a lowered one closes idle
        surplus now and borrowed surplus as it comes back.
        """
        min_size, max_size = check_size(min_size, max_size)
        logger.info("resizing %r to min_size=%s max_size=%s", self.name, min_size, max_size)
        self.elastic.resize(max_size, min_connections=min_size)
        self._min_size = min_size
        self._max_size = max_size
        self._reuse_in_turn()

    def _reuse_in_turn(self) -> None:
        """Lend idle connections least recently used first when the pool cannot shrink.

        As the async face (see there): psycopg_pool uses its connections in
        turn; with ``min_size == max_size`` (its default) nothing ages out, so
        the face does the same; with room to shrink it lends the most recently
        used one, so that the surplus sits idle and closes after ``max_idle``.
        """
        self.elastic.set_reuse_order(lru=self._min_size == self._max_size)

    def check(self) -> None:
        """Check every idle connection now; broken ones are closed and replaced as needed.

        On a closed pool it does nothing.
        """
        if self._closed:
            return
        self.elastic.check()

    def drain(self) -> None:
        """Close every idle connection now, and every borrowed one when it comes back.

        Connections are made afresh as callers need them (and up to
        ``min_size`` in the background). On a closed pool it does nothing.
        """
        if self._closed:
            return
        self.elastic.expire_connections()

    @staticmethod
    def check_connection(conn: CT) -> None:
        """psycopg_pool's check: an empty query in autocommit; raises if ``conn`` is unusable.

        Use it as ``check=ConnectionPool.check_connection``.
        """
        check_connection_sync(conn)

    def reconnect_failed(self) -> None:
        """Called when connects have been failing for longer than ``reconnect_timeout``."""
        if self._reconnect_failed is not None:
            self._reconnect_failed(self)

    def _connect_failed(self, exc: Exception) -> None:
        """psycopg_pool's warnings for a failed connect, and ``reconnect_failed`` once per streak.

        As the async face: each failed attempt is logged as psycopg_pool logs
        it; a streak that outlasts ``reconnect_timeout`` is reported once
        with psycopg_pool's "reconnection attempt ... failed" text and
        ``reconnect_failed`` is called, but the pool keeps reconnecting (with
        backoff) instead of giving up.
        """
        peer_logger.warning("error connecting in %r: %s", self.name, exc)
        now = _monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._streak_reported = False
        elif not self._streak_reported and now - self._failing_since >= self.reconnect_timeout:
            self._streak_reported = True
            peer_logger.warning(
                "reconnection attempt in pool %r failed after %s sec",
                self.name,
                self.reconnect_timeout,
            )
            try:
                self.reconnect_failed()  # on the connecting worker thread, as psycopg_pool
            except Exception as error:
                logger.warning("pool %r: reconnect_failed callback failed: %r", self.name, error)

    # ------------------------------------------------------------------ statistics

    def _elastic_stats(self) -> PoolStats:
        return self.elastic.stats()
