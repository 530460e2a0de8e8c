"""A SQLAlchemy application on elasticpool: one changed import per engine.

    pip install -e ".[dev]" && python examples/sqlalchemy_app.py [--dsn postgresql://...]

It starts an embedded PostgreSQL (or uses ``--dsn``), then:

* a sync ORM application (``postgresql+psycopg``) whose engine comes from
  ``elasticpool.sqlalchemy.create_engine`` instead of ``sqlalchemy.create_engine``,
  with SQLAlchemy's own ``pool_size`` / ``max_overflow`` / ``pool_timeout``,
  serving a burst of threads;
* an async one (``postgresql+asyncpg``) from ``create_async_engine``, serving
  a burst of tasks;

and prints, for each, how many server connections served how many checkouts
(SQLAlchemy's ``connect`` event fires once per server connection), then the
pool going back to nothing after ``idle_timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from elasticpool.embedded import dsn_or_embedded
from elasticpool.sqlalchemy import create_async_engine, create_engine


class Base(DeclarativeBase):
    pass


class Visit(Base):
    __tablename__ = "example_visit"
    id: Mapped[int] = mapped_column(primary_key=True)
    who: Mapped[str]


def sync_app(url: str, threads: int) -> None:
    # was: engine = sqlalchemy.create_engine(url, pool_size=5, max_overflow=5, pool_timeout=10)
    engine = create_engine(url, pool_size=5, max_overflow=5, pool_timeout=10, idle_timeout=1)
    connects, checkouts = [], []
    event.listen(engine.pool, "connect", lambda *a: connects.append(1))
    event.listen(engine.pool, "checkout", lambda *a: checkouts.append(1))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)

    def visitor(i: int) -> None:
        for j in range(10):
            with Session(engine) as session, session.begin():
                session.add(Visit(id=i * 100 + j, who=f"thread {i}"))

    workers = [threading.Thread(target=visitor, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    with Session(engine) as session:
        visits = session.scalar(select(Visit.id).order_by(Visit.id.desc()).limit(1))
        count = session.query(Visit).count()
    print(f"sync: {count} visits (last id {visits}) by {threads} threads")
    print(f"sync: {len(connects)} server connections for {len(checkouts)} checkouts")
    print(f"sync: {engine.pool.status()}")
    deadline = time.monotonic() + 10
    while engine.pool.checkedin() and time.monotonic() < deadline:
        time.sleep(0.1)  # idle connections age out after idle_timeout
    print(f"sync: after idling, {engine.pool.status()}")
    Base.metadata.drop_all(engine)
    engine.dispose()


async def async_app(url: str, tasks: int) -> None:
    # was: engine = sqlalchemy.ext.asyncio.create_async_engine(url, pool_size=4, max_overflow=0)
    engine = create_async_engine(url, pool_size=4, max_overflow=0)
    connects = []
    event.listen(engine.sync_engine.pool, "connect", lambda *a: connects.append(1))

    async def request(i: int) -> int:
        async with AsyncSession(engine) as session:
            result = await session.execute(text("SELECT :i * 2"), {"i": i})
            return int(result.scalar_one())

    answers = await asyncio.gather(*(request(i) for i in range(tasks)))
    assert answers == [i * 2 for i in range(tasks)]
    print(f"async: {tasks} requests over {len(connects)} server connections")
    print(f"async: {engine.sync_engine.pool.status()}")
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="a postgresql:// URL (default: embedded)")
    parser.add_argument("--threads", type=int, default=12)
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    with dsn_or_embedded(args.dsn) as dsn:
        base = make_url(dsn)
        sync_app(base.set(drivername="postgresql+psycopg").render_as_string(False), args.threads)
        async_url = base.set(drivername="postgresql+asyncpg", query={})
        asyncio.run(async_app(async_url.render_as_string(False), args.tasks))
    print("ok")


if __name__ == "__main__":
    main()
