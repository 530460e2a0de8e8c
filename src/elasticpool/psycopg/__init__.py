"""psycopg 3 support (needs the ``psycopg`` extra, which includes ``psycopg_pool``).

What lives here:

* :class:`PsycopgConnector`, the :class:`~elasticpool.Connector` that opens
  psycopg's own :class:`psycopg.AsyncConnection` objects for a
  :class:`~elasticpool.Pool`, and :class:`SyncPsycopgConnector`, its twin
  for :class:`psycopg.Connection` and a :class:`~elasticpool.SyncPool`;
* :class:`AsyncConnectionPool` and :class:`ConnectionPool`, drop-in
  look-alikes of :class:`psycopg_pool.AsyncConnectionPool` and
  :class:`psycopg_pool.ConnectionPool` (3.3) running on an elastic pool:
  change one import line and keep the rest of the code.
  ``docs/migrate-psycopg.md`` lists every difference.

psycopg's async connections run on asyncio only, so pools using them do too.

It is not a second psycopg_pool: there is no null pool, and psycopg_pool's
maintenance machinery (workers, scheduler, ``run_task``) does not exist here;
the elastic pool's planner does that job.
"""

from __future__ import annotations

# Split by job: _errors (which errors mean a dead connection; psycopg_pool's
# pool errors), _wire (libpq at the socket: the idle-socket probe, background
# cancel requests), _reset (the check, the session reset, the state restored
# after it), _connector (PsycopgConnector) and _face (AsyncConnectionPool);
# for threads _sync_connector (SyncPsycopgConnector) and _sync_face
# (ConnectionPool); _face_args: what the two faces share that is not I/O.
# Import from here, not from them: the private names below are re-exported for
# the code and tests that used them when this was one module.
from ._connector import ConnectionCB as ConnectionCB
from ._connector import ConninfoParam as ConninfoParam
from ._connector import KwargsParam as KwargsParam
from ._connector import PsycopgConnector
from ._connector import _transaction as _transaction
from ._errors import PoolClosed, PoolTimeout, TooManyRequests, is_disconnect_error
from ._face import AsyncConnectionPool
from ._face import ReconnectFailedCB as ReconnectFailedCB
from ._reset import check_connection
from ._sync_connector import SyncPsycopgConnector
from ._sync_face import ConnectionPool
from ._wire import _cancel_handle as _cancel_handle
from ._wire import _cancel_in_background as _cancel_in_background

__all__ = [
    "AsyncConnectionPool",
    "ConnectionPool",
    "PoolClosed",
    "PoolTimeout",
    "PsycopgConnector",
    "SyncPsycopgConnector",
    "TooManyRequests",
    "check_connection",
    "is_disconnect_error",
]

# The public names keep the module path they had when this was one module
# (``repr(pool)`` shows ``elasticpool.psycopg.AsyncConnectionPool``, and so do
# tracebacks and pickles).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
