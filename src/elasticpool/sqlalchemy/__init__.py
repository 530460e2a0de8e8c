"""SQLAlchemy on elasticpool: engines whose pool is elasticpool's.

One line moves an application over::

    from elasticpool.sqlalchemy import create_engine          # was: from sqlalchemy import ...
    engine = create_engine("postgresql+psycopg://...", pool_size=5, max_overflow=10)

    from elasticpool.sqlalchemy import create_async_engine
    engine = create_async_engine("postgresql+asyncpg://...", total_max_connections=100,
                                 membership=lambda: PostgresMembership())

or, with SQLAlchemy's own function, ``poolclass=ElasticPool``. See
:class:`ElasticPool` for what is honoured, mapped or refused, and
``docs/integrations/sqlalchemy.md``. Needs the ``sqlalchemy`` extra
(``pip install 'elasticpool[sqlalchemy]'``).
"""

from __future__ import annotations

from ._engine import create_async_engine, create_engine
from ._pool import ElasticPool, PoolTimeout

__all__ = ["ElasticPool", "PoolTimeout", "create_async_engine", "create_engine"]
