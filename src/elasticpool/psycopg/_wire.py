"""libpq at the socket: connection status, a probe for a dead idle socket, closing, and
background cancel requests on threads of their own.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, cast

import psycopg
from psycopg import pq

from .._connector import ends_session

logger = logging.getLogger("elasticpool")


_IDLE: Final = pq.TransactionStatus.IDLE
_ACTIVE: Final = pq.TransactionStatus.ACTIVE
_UNKNOWN: Final = pq.TransactionStatus.UNKNOWN
_INTRANS: Final = pq.TransactionStatus.INTRANS
_INERROR: Final = pq.TransactionStatus.INERROR
_OK: Final = pq.ConnStatus.OK
_BAD: Final = pq.ConnStatus.BAD


_ENDING: Final[weakref.WeakSet[psycopg.BaseConnection[Any]]] = weakref.WeakSet()
"""Connections whose server announced the end of the session, found by :func:`_socket_alive`.

Once read, that message is gone from the socket, and until the end-of-file
arrives libpq still says the connection is fine: the verdict has to be kept.
"""


_ENDING_REFS: Final[set[Any]] = cast(Any, _ENDING).data
"""The weak set's own set of references: its truth is a C call, the weak set's a Python one."""


_MAX_CANCEL_THREADS: Final = 8
_cancel_slots = threading.BoundedSemaphore(_MAX_CANCEL_THREADS)
_CANCEL_TIMEOUT: Final = 5.0
"""Seconds a background cancel request may take before it is abandoned (libpq >= 17)."""


def _status_name(conn: psycopg.BaseConnection[Any]) -> str:
    return pq.TransactionStatus(conn.pgconn.transaction_status).name


_POLLERS: Final[dict[int, Any]] = {}
"""One ``select.poll`` object per file descriptor number, registered once.

A poller watches a number, not a socket: once a socket is closed and its
number reused, the same poller watches the new one, which is what is wanted.
Making and registering a poller costs more than the poll itself, and this
runs twice per borrow (lent and given back).
"""

_POLL_MASK: Final = (
    select.POLLIN | select.POLLERR | select.POLLHUP if hasattr(select, "poll") else 0
)


def _socket_readable(fd: int) -> bool:
    """Whether ``fd`` has something to read now (no waiting)."""
    if _POLL_MASK:
        poller = _POLLERS.get(fd)
        if poller is None:
            poller = _POLLERS[fd] = select.poll()
            poller.register(fd, _POLL_MASK)
        try:
            return bool(poller.poll(0))
        except RuntimeError:  # polled by another thread at this instant: use one of our own
            pass
        mine = select.poll()
        mine.register(fd, _POLL_MASK)
        return bool(mine.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


def _socket_alive(conn: psycopg.BaseConnection[Any]) -> bool:
    """Whether an idle connection's socket still looks alive, without a round trip.

    An idle connection has nothing to read unless the server said something
    on its own: a notification, a notice, a parameter change, or, when it
    ends the session (``pg_terminate_backend``, shutdown, crash), an error
    message followed by end-of-file. Whatever is there is read (non-blocking,
    from the kernel's buffer) and parsed the way psycopg itself does it, and
    notifications and notices reach psycopg as they would. The connection is
    dead if libpq saw end-of-file, or if the server's message says the session
    is ending (severity FATAL or PANIC, or SQLSTATE 57P01/57P02/57P03, class
    08): the end-of-file may not have arrived yet. That verdict is kept: the
    message is consumed, so the next look would see nothing to read and a
    status that still says OK until the end-of-file comes.
    """
    if _ENDING_REFS and conn in _ENDING:  # (empty but for the odd dying connection)
        return False
    pgconn = conn.pgconn
    try:
        fd = pgconn.socket
        poller = _POLLERS.get(fd)  # _socket_readable(fd), inlined: this runs per borrow
        try:
            readable = poller.poll(0) if poller is not None else _socket_readable(fd)
        except RuntimeError:  # polled by another thread at this instant
            readable = _socket_readable(fd)
        if not readable:
            return True
        ending = False
        forward = pgconn.notice_handler

        def spy(result: pq.abc.PGresult) -> None:
            nonlocal ending
            ending = ending or _ends_session(result)
            if forward is not None:
                forward(result)

        pgconn.notice_handler = spy
        try:
            for _ in range(4):  # an error message, then end-of-file: two reads
                pgconn.consume_input()
                if not _socket_readable(fd):
                    break
            while (notify := pgconn.notifies()) is not None:  # parses what was read
                if pgconn.notify_handler:
                    pgconn.notify_handler(notify)
        finally:
            pgconn.notice_handler = forward
    except (psycopg.Error, OSError, ValueError):
        return False
    if ending:
        _ENDING.add(conn)
        return False
    return pgconn.status == _OK


def _ends_session(result: pq.abc.PGresult) -> bool:
    """Whether an unsolicited server message announces the end of the session."""
    severity = result.error_field(pq.DiagnosticField.SEVERITY_NONLOCALIZED) or b""
    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode("ascii", "replace")
    return severity in (b"FATAL", b"PANIC") or ends_session(sqlstate)


def _finish(conn: psycopg.BaseConnection[Any]) -> None:
    """Close the socket now (no I/O wait); libpq sends a Terminate message if it can."""
    conn.pgconn.finish()


def dead_check(conn: psycopg.BaseConnection[Any]) -> Callable[[bool], bool]:
    """A cheap local check of ``conn``: ``check(deep)`` says whether it is dead.

    Dead when psycopg says closed or broken, or when the connection is left
    mid-query (transaction status ``ACTIVE`` or ``UNKNOWN``); with ``deep``
    also when a non-blocking look at the idle socket finds it dead
    (:func:`_socket_alive`). No round trip.
    """
    pgconn = conn.pgconn
    busy = (_ACTIVE, _UNKNOWN)

    def dead(deep: bool) -> bool:
        if conn.closed or conn.broken or pgconn.transaction_status in busy:
            return True
        return deep and not _socket_alive(conn)

    return dead


def abandon_socket(conn: psycopg.BaseConnection[Any]) -> None:
    """In a forked child: point ``conn``'s socket descriptor at ``/dev/null``, here only.

    The parent's session goes on, and nothing psycopg or libpq does here
    later (a ``Terminate`` message when the connection is collected) reaches
    it. No I/O.
    """
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)  # the parent's socket stays open in the parent only
    finally:
        os.close(null)


def _cancel_handle(pgconn: pq.abc.PGconn) -> pq.abc.PGcancelConn | pq.abc.PGcancel:
    """What :func:`_cancel_in_background` needs to cancel ``pgconn``'s query later.

    With libpq 17 or later, a non-blocking cancel connection (``PQcancelCreate``),
    else the legacy cancel key (``PQgetCancel``). Taken while the connection is
    up: neither can be made once psycopg has closed it.
    """
    if psycopg.capabilities.has_cancel_safe():
        return pgconn.cancel_conn()
    return pgconn.get_cancel()


def _send_cancel(cancel: pq.abc.PGcancelConn | pq.abc.PGcancel) -> None:
    """Send one cancel request; bounded by :data:`_CANCEL_TIMEOUT` with libpq 17 or later.

    libpq's legacy ``PQcancel`` blocks until the server answers, and
    psycopg's C implementation calls it without releasing the GIL: against a
    server that never answers (a network partition) it would freeze every
    thread of the process. The non-blocking API is driven here with a
    selector wait instead, which releases the GIL and gives up in time.
    """
    if not psycopg.capabilities.has_cancel_safe():  # libpq < 17: a legacy key
        cast("pq.abc.PGcancel", cancel).cancel()
        return
    cancel = cast("pq.abc.PGcancelConn", cancel)
    deadline = time.monotonic() + _CANCEL_TIMEOUT
    try:
        cancel.start()
        while (status := cancel.poll()) != pq.PollingStatus.OK:
            if status == pq.PollingStatus.FAILED:
                raise psycopg.OperationalError(cancel.get_error_message())
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer to the cancel request within {_CANCEL_TIMEOUT:g}s")
            event = selectors.EVENT_READ
            if status == pq.PollingStatus.WRITING:
                event = selectors.EVENT_WRITE
            with selectors.DefaultSelector() as selector:
                selector.register(cancel.socket, event)
                selector.select(left)
    finally:
        cancel.finish()


def _cancel_in_background(cancel: pq.abc.PGcancelConn | pq.abc.PGcancel) -> None:
    """Send a cancel request for a query that may still run on the server, without waiting.

    A connection psycopg gave up on mid-query (its task was cancelled again
    while psycopg was cancelling the query) is closed on the client side, but
    its backend keeps running the query until it next writes to the socket.
    The cancel handle was taken when the connection was made
    (:func:`_cancel_handle`); the request runs in a daemon thread (at most a
    few at once; past that, the request is skipped) and gives up after
    :data:`_CANCEL_TIMEOUT` (see :func:`_send_cancel`). Sent for a backend
    that is already gone, it is ignored by the server.
    """
    if not _cancel_slots.acquire(blocking=False):
        logger.debug("too many cancel requests in flight: skipping one")
        return

    def run() -> None:
        try:
            _send_cancel(cancel)
        except Exception as exc:
            logger.debug("cancel request failed: %r", exc)
        finally:
            _cancel_slots.release()

    try:
        threading.Thread(target=run, name="elasticpool-psycopg-cancel", daemon=True).start()
    except RuntimeError as exc:  # no thread to be had (interpreter shutting down)
        _cancel_slots.release()
        logger.debug("cancel request not sent: %r", exc)
