"""``wrap()`` for a sync ``psycopg_pool.ConnectionPool``: a ``SyncPool`` of leases.

The sync twin of the async psycopg case in ``_wrap.py``: a connect borrows a
connection (``getconn()``), a close gives it back (``putconn()``); the
planner decides how many leases are out at once, who waits (FIFO,
``pool_timeout``), and what the stats say, while psycopg_pool keeps opening,
checking and retiring the server connections. Its ``max_size`` follows the
wrapper's limit (``max(limit, its min_size)``) and is given back on close.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any, Generic

import psycopg_pool
from psycopg.pq import TransactionStatus
from psycopg_pool.abc import CT

from .._connector import ResetMode
from .._settings import PoolSettings
from .._sync_pool import SyncPool
from .._validate import check_bool
from ..fleet._base import Membership
from ._errors import is_disconnect_error
from ._sync_connector import _readonly_transaction, fetch_rows

__all__ = ["SyncPsycopgLeases", "sync_leases_for"]

_IDLE = TransactionStatus.IDLE
_ACTIVE = TransactionStatus.ACTIVE
_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


class SyncPsycopgLeases(Generic[CT]):
    """A :class:`~elasticpool.SyncConnector` whose connections are leases from a ConnectionPool.

    It remembers which leases are out, so one is given back at most once
    (:meth:`close` after :meth:`terminate`, or the other way round, is a no-op).
    """

    kind = "psycopg"
    default_reset: ResetMode = "rollback"  # psycopg_pool rolls back on every putconn: so do we

    def __init__(self, pool: psycopg_pool.ConnectionPool[CT]) -> None:
        self._pool = pool
        self._out: dict[int, CT] = {}
        self._lock = threading.Lock()
        self._original_max = pool.max_size
        self._applied_max: int | None = None

    def max_size(self) -> int:
        return self._pool.max_size

    def apply_limit(self, limit: int) -> None:
        """Make psycopg_pool's ``max_size`` follow the wrapper's limit (never below its floor)."""
        pool = self._pool
        if pool.closed:
            return
        new_max = max(limit, pool.min_size, 1)
        if new_max != pool.max_size:
            pool.resize(pool.min_size, new_max)
        self._applied_max = new_max

    def finish(self, *, close: bool, timeout: float | None) -> None:
        pool = self._pool
        if pool.closed:
            return
        if close:
            pool.close(timeout=5.0 if timeout is None else timeout)
        elif self._applied_max is not None and pool.max_size == self._applied_max:
            # Still our doing (nobody resized it since): give it its own size back.
            pool.resize(pool.min_size, max(self._original_max, pool.min_size))

    def describe(self) -> str:
        p = self._pool
        return f"psycopg_pool.ConnectionPool {p.name!r} (max {p.max_size})"

    def wrap(
        self,
        settings: PoolSettings | None,
        *,
        name: str | None,
        membership: Membership | None,
        close_underlying: bool,
        elastic_settings: dict[str, Any],
    ) -> SyncPool[CT]:
        """:func:`elasticpool.wrap` for this pool: a :class:`~elasticpool.SyncPool` of leases."""
        check_bool("close_underlying", close_underlying)
        pool = self._pool
        if name is None:
            name = pool.name if isinstance(pool.name, str) and pool.name else "psycopg"
        if settings is None:
            fields: dict[str, Any] = {"reset": self.default_reset, **elastic_settings}
            if (
                fields.get("max_connections") is None
                and fields.get("total_max_connections") is None
            ):
                fields["max_connections"] = self.max_size()
            settings = PoolSettings(**fields)
        else:
            if elastic_settings:
                settings = settings.replace(**elastic_settings)
            if settings.max_connections is None and settings.total_max_connections is None:
                settings = settings.replace(max_connections=self.max_size())
        return _WrappedSyncPool(
            self, settings, name=name, membership=membership, close_underlying=close_underlying
        )

    # -- SyncConnector

    def connect(self, timeout: float) -> CT:
        conn = self._pool.getconn(timeout=timeout)
        with self._lock:
            self._out[id(conn)] = conn
        return conn

    def _take(self, conn: CT) -> bool:
        with self._lock:
            return self._out.pop(id(conn), None) is not None

    def close(self, conn: CT) -> None:
        if self._take(conn):
            self._pool.putconn(conn)

    def terminate(self, conn: CT) -> None:
        if self._take(conn):
            conn.pgconn.finish()  # the socket closes now; psycopg_pool discards and replaces it
            self._pool.putconn(conn)

    def is_closed(self, conn: CT) -> bool:
        # ACTIVE: given back mid-query; psycopg_pool would close it too.
        return conn.closed or conn.broken or conn.info.transaction_status == _ACTIVE

    def ping(self, conn: CT, timeout: float) -> None:
        if conn.info.transaction_status == _IDLE:
            type(self._pool).check_connection(conn)  # no transaction left behind
        else:
            conn.execute("")

    def needs_reset(self, conn: CT, mode: ResetMode) -> bool:
        if mode == "none":
            return False
        if mode == "rollback":
            return conn.info.transaction_status != _IDLE
        return True

    def reset(self, conn: CT, mode: ResetMode) -> None:
        status = conn.info.transaction_status
        if status in _OPEN:
            conn.rollback()
        elif status != _IDLE:
            raise RuntimeError(f"connection is {status.name}, cannot be reset")
        if mode == "session":
            if conn.autocommit:
                conn.execute("DISCARD ALL")
            else:
                conn.autocommit = True
                try:
                    conn.execute("DISCARD ALL")
                finally:
                    conn.autocommit = False

    def is_disconnect(self, exc: BaseException) -> bool:
        return is_disconnect_error(exc)

    def transaction(self, conn: CT, *, readonly: bool = False) -> AbstractContextManager[Any]:
        tx: AbstractContextManager[Any] = conn.transaction()
        return _readonly_transaction(conn, tx) if readonly else tx

    def fetch(self, conn: CT, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return fetch_rows(conn, sql, *args)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class _WrappedSyncPool(SyncPool[CT]):
    """A :class:`~elasticpool.SyncPool` of leases from a ``psycopg_pool.ConnectionPool``."""

    def __init__(
        self,
        leases: SyncPsycopgLeases[CT],
        settings: PoolSettings,
        *,
        name: str,
        membership: Membership | None,
        close_underlying: bool,
    ) -> None:
        super().__init__(leases, settings, name=name, membership=membership)
        self._leases = leases
        self._close_underlying = close_underlying
        self._finished = False
        self._resize_lock = threading.Lock()

    def open(self) -> None:
        if self._state == "new":
            self._leases.apply_limit(self.limit)
        super().open()

    def resize(self, max_connections: int, min_connections: int | None = None) -> None:
        """Change the limit, and make psycopg_pool's ``max_size`` follow it.

        As :meth:`SyncPool.resize <elasticpool.SyncPool.resize>`, plus: the
        underlying ``max_size`` is set to ``max(limit, its min_size)``, raised
        before the wrapper's limit and lowered after it.
        """
        with self._resize_lock:
            old = self.limit
            if isinstance(max_connections, int) and max_connections > old:
                self._leases.apply_limit(max_connections)  # room below first
            try:
                super().resize(max_connections, min_connections)
            except BaseException:
                self._leases.apply_limit(self.limit)
                raise
            if max_connections < old:
                self._leases.apply_limit(max_connections)

    def close(self, timeout: float | None = 10.0) -> None:
        """Close the wrapper; psycopg_pool stays open unless ``close_underlying=True``.

        Every lease goes back to psycopg_pool; then it is closed (with
        ``close_underlying=True``) or gets back the ``max_size`` it had.
        """
        try:
            super().close(timeout)
        finally:
            if self._state == "closed" and not self._finished:
                self._finished = True
                self._leases.finish(close=self._close_underlying, timeout=timeout)

    def _forked(self) -> None:
        super()._forked()
        if self._state == "forked":  # the underlying pool is the parent's: never finish it here
            self._finished = True

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]} over {self._leases.describe()}>"


def sync_leases_for(existing: psycopg_pool.ConnectionPool[CT]) -> SyncPsycopgLeases[CT]:
    """Leases from an open sync ``psycopg_pool.ConnectionPool`` (a :class:`ValueError` if not)."""
    if existing.closed:
        raise ValueError(
            f"psycopg_pool.ConnectionPool {existing.name!r} is not open "
            "(create it with open=False, then 'pool.open()' before wrap())"
        )
    return SyncPsycopgLeases(existing)
