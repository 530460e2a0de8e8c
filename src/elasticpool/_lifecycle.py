"""Where a pool is in its life: one enum for every pool-like class.

:class:`~elasticpool.Pool`, :class:`~elasticpool.replicas.RoutingPool` and
the asyncpg face each keep one :class:`Lifecycle` value. The usual path is
``NEW → OPENING → OPEN → CLOSING → CLOSED``; an open that is cancelled or
fails goes back to ``NEW``; a pool opened before ``os.fork()`` is
``FORKED`` in the child (see ``_fork.py``) and only ever becomes ``CLOSED``
there. Not every class uses every value (a routing pool opens in one step).

Each member is also its value as a string (``Lifecycle.OPEN == "open"``), as
the state was a plain string before; messages and reprs show ``.value``.
"""

from __future__ import annotations

import enum

__all__ = ["CLOSED", "CLOSING", "FORKED", "NEW", "OPEN", "OPENING", "Lifecycle"]


class Lifecycle(str, enum.Enum):
    """A pool's lifecycle state (see the module docstring for the transitions)."""

    NEW = "new"
    """Made, never opened (or its open was undone): nothing runs, nothing is open."""
    OPENING = "opening"
    """``open()`` is under way: background work starts, the fleet has its first say."""
    OPEN = "open"
    """Serving borrows."""
    CLOSING = "closing"
    """``close()`` is under way: no new borrows, borrowed connections still coming back."""
    CLOSED = "closed"
    """Closed for good: it cannot be opened again."""
    FORKED = "forked"
    """Opened in the parent of this forked process: refuses every use, closes without I/O."""


# The members as module constants: ``state is OPEN`` costs a global lookup, where
# ``Lifecycle.OPEN`` goes through the enum's class attribute machinery (~10x slower on
# 3.11), and the acquire path asks once per borrow.
NEW = Lifecycle.NEW
OPENING = Lifecycle.OPENING
OPEN = Lifecycle.OPEN
CLOSING = Lifecycle.CLOSING
CLOSED = Lifecycle.CLOSED
FORKED = Lifecycle.FORKED
