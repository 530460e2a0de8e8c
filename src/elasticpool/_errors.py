"""The small error tree.

Messages are lowercase and name the pool and its numbers, so a log line alone
says what the pool looked like when it failed.
"""

from __future__ import annotations

__all__ = [
    "ElasticPoolError",
    "ElasticPoolWarning",
    "PoolClosed",
    "PoolTimeout",
    "TooManyWaiters",
]


class ElasticPoolError(Exception):
    """Base class of every error the pool raises on its own account."""


class PoolTimeout(ElasticPoolError, TimeoutError):
    """No connection could be handed out within ``pool_timeout``.

    ``except TimeoutError`` catches it. When connects were failing while the
    caller waited, ``__cause__`` is the last connect error.
    """


class PoolClosed(ElasticPoolError):
    """The pool is closed (or closing) and hands out nothing more."""


class TooManyWaiters(ElasticPoolError):
    """``max_waiting`` callers are already queued; this one was turned away at once."""


class ElasticPoolWarning(UserWarning):
    """A legal but contradictory setting was corrected, or something else worth a look."""
