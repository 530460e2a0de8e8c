"""Public fakes for testing code that uses elasticpool, no database needed.

:class:`FakeConnector` implements :class:`~elasticpool.Connector` with
scriptable behaviour: connect latency, connect failures, connects that hang,
connections that die while idle or in use (unnoticed, or noticed by the driver
so they come back broken), slow or failing resets and closes. Everything it
does goes through anyio, so it runs on asyncio and trio, and in trio's virtual
time.

Example::

    connector = FakeConnector(connect_delay=0.150)
    async with Pool(connector, max_connections=10) as pool:
        connector.fail_next(2)                  # the next two connects raise
        async with pool.acquire() as conn:      # a FakeConnection
            await conn.execute(0.002)           # 2 ms of "work"

It is not a database: a :class:`FakeConnection` has no queries, only the state
a pool cares about (open, dead, in a transaction, session state changed).

:class:`FaultProxy` is the other half, for tests against a real server: a
loopback TCP proxy whose faults (latency, blackhole, reset, close after N
bytes, refused connects) are switched at run time.

:class:`SyncFakeConnector` is the fake for :class:`~elasticpool.SyncPool`
(threads): the same scripts, with real sleeps, safe from many threads.
"""

from ._fake import FakeConnection, FakeConnector, FakeDisconnect, FakeReadOnlyError
from ._faultproxy import FaultProxy
from ._sync_fake import SyncFakeConnection, SyncFakeConnector

__all__ = [
    "FakeConnection",
    "FakeConnector",
    "FakeDisconnect",
    "FakeReadOnlyError",
    "FaultProxy",
    "SyncFakeConnection",
    "SyncFakeConnector",
]
