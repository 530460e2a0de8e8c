"""asyncpg support (needs the ``asyncpg`` extra).

Two things live here:

* :class:`AsyncpgConnector`, the :class:`~elasticpool.Connector` for asyncpg:
  ``Pool(AsyncpgConnector(dsn), max_connections=20)``.
* :func:`create_pool` and :class:`AsyncpgPool`, a drop-in face with
  :class:`asyncpg.Pool`'s API and semantics on top of the elastic
  :class:`~elasticpool.Pool`: change ``from asyncpg import create_pool`` to
  ``from elasticpool.asyncpg import create_pool`` (see ``docs/migrate-asyncpg.md``).

Both hand out asyncpg's own :class:`asyncpg.Connection` objects, never a
proxy. asyncpg runs on asyncio only, so pools using it do too.
"""

from ._connector import AsyncpgConnector
from ._errors import AsyncpgPoolClosed, is_disconnect_error
from ._face import AsyncpgPool, create_pool
from ._reset import session_reset_sql

__all__ = [
    "AsyncpgConnector",
    "AsyncpgPool",
    "AsyncpgPoolClosed",
    "create_pool",
    "is_disconnect_error",
    "session_reset_sql",
]

# The public names keep the module path they had when this was one module (tracebacks,
# reprs and pickles show ``elasticpool.asyncpg.AsyncpgPool``), as elasticpool.psycopg does.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
