"""psycopg's errors: which ones mean a dead connection, and psycopg_pool's pool errors."""

from __future__ import annotations

import psycopg
import psycopg_pool

from .. import _errors
from .._connector import ends_session

# =============================================================================
# error classification
# =============================================================================


def is_disconnect_error(exc: BaseException) -> bool:
    """Whether ``exc`` from psycopg means the connection it came from is dead.

    Yes for :class:`psycopg.OperationalError` with no SQLSTATE (psycopg's own
    "connection lost", "the connection is closed", "consuming input failed"),
    with a class 08 SQLSTATE (connection exception), and for 57P01, 57P02 and
    57P03 (admin shutdown, crash shutdown, cannot connect now).

    No for :class:`TimeoutError` (a query or scope timeout says nothing about
    the connection), and for pool errors: psycopg_pool's ``PoolTimeout``,
    ``PoolClosed`` and ``TooManyRequests`` are ``OperationalError`` without a
    SQLSTATE, but they come from a pool, not from a connection; nor for
    ``PipelineAborted``, which says an earlier statement of the pipeline failed.
    """
    if isinstance(
        exc,
        (
            TimeoutError,
            _errors.ElasticPoolError,
            psycopg_pool.PoolTimeout,
            psycopg_pool.PoolClosed,
            psycopg_pool.TooManyRequests,
            psycopg.errors.PipelineAborted,
        ),
    ):
        return False
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return ends_session(state)


POOLER_HINT = (
    "psycopg's prepared statements do not work through a connection pooler in transaction "
    "mode (PgBouncer, for one): each statement may reach another server "
    "connection; pass prepare_threshold=None in the connection kwargs "
    '(see "Behind PgBouncer" in the docs)'
)
"""What the connector logs, once, when a prepared statement went missing or was duplicated."""


def pooler_hint(exc: BaseException) -> str | None:
    """:data:`POOLER_HINT` when ``exc`` looks like a transaction-mode pooler's doing, else ``None``.

    That is "prepared statement ... does not exist" (26000) and "prepared
    statement ... already exists" (42P05): psycopg prepares a query on the
    server after ``prepare_threshold`` runs of it, and behind such a pooler
    the next run may reach a server connection that lacks it, or the next
    prepare one that has it. A program's own ``PREPARE`` mistakes raise the
    same errors, which is why the hint says "pooler" as a likely cause.
    """
    lost = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)
    return POOLER_HINT if isinstance(exc, lost) else None


# =============================================================================
# psycopg_pool's errors
# =============================================================================


class PoolTimeout(psycopg_pool.PoolTimeout, _errors.PoolTimeout):
    """psycopg_pool's ``PoolTimeout`` and elasticpool's at once (and so a :class:`TimeoutError`).

    ``except psycopg_pool.PoolTimeout``, ``except elasticpool.PoolTimeout`` and
    ``except TimeoutError`` all catch it.
    """


class PoolClosed(psycopg_pool.PoolClosed, _errors.PoolClosed):
    """psycopg_pool's ``PoolClosed`` and elasticpool's at once."""


class TooManyRequests(psycopg_pool.TooManyRequests, _errors.TooManyWaiters):
    """psycopg_pool's ``TooManyRequests`` and elasticpool's ``TooManyWaiters`` at once."""
