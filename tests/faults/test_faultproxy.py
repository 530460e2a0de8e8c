"""The fault-injecting TCP proxy, against an echo server and against PostgreSQL.

Transport-level behaviour is checked against a tiny anyio echo server on
127.0.0.1, on asyncio and on trio. Both run in *real* time here: the proxy moves
bytes through real sockets, and trio's autojumping ``MockClock`` would jump past
timeouts while the kernel is still delivering them. What a driver sees is
checked with asyncpg against the real server (asyncio only).

Every wait is bounded by ``fail_after``; the only timed assertions are lower
bounds (a round trip takes at least the injected latency) and timeouts that
are expected to fire (a blackhole never answers).
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import anyio
import anyio.abc
import pytest

from elasticpool._faultproxy import FaultProxy

from ..helpers import wait_until

pytestmark = pytest.mark.anyio

BOUND = 5.0
"""Overall bound, in seconds, on any wait that is expected to finish."""

SILENCE = 0.3
"""Seconds of silence taken as "no answer" under a blackhole."""

TIMER_SLACK = 0.001
"""Seconds a timer may fire early on asyncio (it runs handles due within the clock resolution)."""

ENDED = (anyio.EndOfStream, anyio.BrokenResourceError)
"""How a client stream reports that the proxy closed it (FIN or RST)."""


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """asyncio and trio, both in real time (sockets and virtual time do not mix)."""
    return str(request.param)


asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])
"""asyncpg runs on asyncio only."""


# echo server -------------------------------------------------------------------


class EchoServer:
    """Echoes every byte back; reports how each connection ended ("eof" or "reset")."""

    def __init__(self, port: int) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.connections = 0
        self._send, self.endings = anyio.create_memory_object_stream[str](math.inf)

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        self.connections += 1
        how = "eof"
        async with stream:
            try:
                async for chunk in stream:
                    await stream.send(chunk)
            except anyio.BrokenResourceError:
                how = "reset"
        self._send.send_nowait(how)

    def close(self) -> None:
        self._send.close()
        self.endings.close()


@asynccontextmanager
async def echo_server() -> AsyncIterator[EchoServer]:
    """An :class:`EchoServer` listening on 127.0.0.1 for the duration of the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        server = EchoServer(listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
            server.close()


@asynccontextmanager
async def proxied_echo() -> AsyncIterator[tuple[EchoServer, FaultProxy]]:
    """An echo server and a :class:`FaultProxy` in front of it, under an overall bound."""
    with anyio.fail_after(BOUND):
        async with echo_server() as server, FaultProxy(server.host, server.port) as proxy:
            yield server, proxy


async def connect(proxy: FaultProxy) -> anyio.abc.SocketStream:
    """A client connection to ``proxy``."""
    return await anyio.connect_tcp(proxy.host, proxy.port)


async def receive_exactly(stream: anyio.abc.ByteReceiveStream, n: int) -> bytes:
    """Exactly ``n`` bytes from ``stream`` (at most ``n`` reads)."""
    data = b""
    for _ in range(n):
        if len(data) >= n:
            break
        data += await stream.receive(n - len(data))
    assert len(data) == n
    return data


async def receive_all(stream: anyio.abc.ByteReceiveStream, limit: int = 1 << 20) -> bytes:
    """Everything ``stream`` delivers until the peer closes it (FIN or RST), up to ``limit``."""
    data = b""
    for _ in range(limit):
        try:
            data += await stream.receive()
        except ENDED:
            return data
        assert len(data) <= limit
    raise AssertionError("stream never ended")


async def round_trip(stream: anyio.abc.ByteStream, payload: bytes = b"ping") -> float:
    """Send ``payload``, read its echo, and return the seconds it took."""
    start = anyio.current_time()
    await stream.send(payload)
    assert await receive_exactly(stream, len(payload)) == payload
    return anyio.current_time() - start


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# construction and addresses ----------------------------------------------------


@pytest.mark.parametrize(
    "listen_host", ["0.0.0.0", "::", "10.0.0.1", "192.168.1.10", "::ffff:127.0.0.1", "localhost"]
)
def test_non_loopback_listen_host_is_rejected(listen_host: str) -> None:
    """Any listen_host outside 127.0.0.0/8 and ::1, or not an address at all, is a ValueError."""
    with pytest.raises(ValueError, match=r"listen_host must be a loopback address"):
        FaultProxy("127.0.0.1", 5432, listen_host=listen_host)


@pytest.mark.parametrize("listen_host", ["127.0.0.1", "127.1.2.3", "::1"])
def test_loopback_listen_host_is_accepted(listen_host: str) -> None:
    """Every address of 127.0.0.0/8, and ::1, is accepted as the listen host."""
    assert FaultProxy("127.0.0.1", 5432, listen_host=listen_host).host == listen_host


def test_invalid_fault_arguments_are_rejected() -> None:
    """A negative latency or byte budget is a ValueError, and a stopped proxy has no port."""
    proxy = FaultProxy("127.0.0.1", 5432)
    with pytest.raises(ValueError, match="latency"):
        proxy.latency(-1)
    with pytest.raises(ValueError, match="close_after"):
        proxy.close_after(-1)
    with pytest.raises(RuntimeError, match="not running"):
        _ = proxy.port


async def test_dsn_for_rewrites_host_and_port_only() -> None:
    """dsn_for swaps in the proxy's host and port and keeps credentials, database and query."""
    async with FaultProxy("127.0.0.1", 5432) as proxy:
        dsn = "postgresql://u%40x:p%3Aw@db.example:5433/my%20db?sslmode=disable"
        assert proxy.dsn_for(dsn) == (
            f"postgresql://u%40x:p%3Aw@127.0.0.1:{proxy.port}/my%20db?sslmode=disable"
        )
        assert proxy.dsn_for("postgres://h/d") == f"postgres://127.0.0.1:{proxy.port}/d"
        with pytest.raises(ValueError, match="uri"):
            proxy.dsn_for("host=h port=5432")
        with pytest.raises(ValueError, match="bypassing the proxy"):
            proxy.dsn_for("postgresql:///d?host=/tmp")
        with pytest.raises(ValueError, match="single host"):
            proxy.dsn_for("postgresql://a:1,b:2/d")


# transport level, both backends ------------------------------------------------


async def test_forwards_both_ways() -> None:
    """Bytes reach the upstream and its answer comes back; the counters add both directions."""
    async with proxied_echo() as (server, proxy):
        async with await connect(proxy) as client:
            await round_trip(client, b"hello")
            assert proxy.accepted == 1
            assert proxy.active == 1
            assert server.connections == 1
        assert await server.endings.receive() == "eof"
    assert proxy.forwarded_bytes == 10
    assert proxy.active == 0


async def test_half_close_is_passed_on() -> None:
    """A client's end-of-stream reaches the upstream, whose close then reaches the client."""
    async with proxied_echo() as (server, proxy), await connect(proxy) as client:
        await client.send(b"last words")
        await client.send_eof()
        assert await receive_all(client) == b"last words"
        assert await server.endings.receive() == "eof"


async def test_latency_delays_each_direction_of_an_open_connection() -> None:
    """With latency on, an already open connection's round trip takes at least twice the delay."""
    delay = 0.05
    async with proxied_echo() as (_, proxy), await connect(proxy) as client:
        await round_trip(client)
        proxy.latency(delay)
        assert await round_trip(client) >= 2 * delay - TIMER_SLACK
        proxy.latency(0)
        await round_trip(client)


async def test_latency_applies_to_new_connections() -> None:
    """A connection opened while latency is on is delayed the same way."""
    delay = 0.05
    async with proxied_echo() as (_, proxy):
        proxy.latency(delay)
        async with await connect(proxy) as client:
            assert await round_trip(client) >= 2 * delay - TIMER_SLACK


async def test_connect_delay_holds_a_new_connection_before_upstream() -> None:
    """A connection opened under connect_delay reaches the upstream only after the delay."""
    delay = 0.05
    async with proxied_echo() as (server, proxy):
        proxy.connect_delay(delay)
        async with await connect(proxy) as client:
            assert await round_trip(client) >= delay - TIMER_SLACK
            assert server.connections == 1


async def test_connect_delay_spares_open_connections() -> None:
    """An open connection keeps forwarding while a new one is held by connect_delay."""
    async with proxied_echo() as (server, proxy), await connect(proxy) as old:
        await round_trip(old)
        proxy.connect_delay(60.0)  # far past BOUND: the new one is held for the whole test
        async with await connect(proxy) as new:
            await new.send(b"held")
            await round_trip(old)
            await wait_until(lambda: proxy.accepted == 2)
            assert server.connections == 1
        with pytest.raises(ValueError, match="connect_delay"):
            proxy.connect_delay(-1)
        proxy.heal()
        async with await connect(proxy) as healed:
            await round_trip(healed)
        assert server.connections == 2


async def test_blackhole_new_connection_is_accepted_but_never_answered() -> None:
    """Under a blackhole a new connection gets no answer and never reaches upstream."""
    async with proxied_echo() as (server, proxy):
        proxy.blackhole()
        async with await connect(proxy) as client:
            await client.send(b"anyone?")
            with pytest.raises(TimeoutError), anyio.fail_after(SILENCE):
                await client.receive()
            assert proxy.accepted == 1
            assert server.connections == 0


async def test_blackhole_stalls_open_connection_until_heal() -> None:
    """A blackhole stalls an open connection without dropping bytes; heal lets them through."""
    async with proxied_echo() as (server, proxy), await connect(proxy) as client:
        await round_trip(client)
        proxy.blackhole()
        await client.send(b"held")
        with pytest.raises(TimeoutError), anyio.fail_after(SILENCE):
            await client.receive()
        proxy.heal()
        assert await receive_exactly(client, 4) == b"held"
        assert server.connections == 1


async def test_heal_connects_a_connection_accepted_under_blackhole() -> None:
    """A connection accepted during a blackhole is connected upstream once healed."""
    async with proxied_echo() as (server, proxy):
        proxy.blackhole()
        async with await connect(proxy) as client:
            await client.send(b"early")
            with pytest.raises(TimeoutError), anyio.fail_after(SILENCE):
                await client.receive()
            proxy.heal()
            assert await receive_exactly(client, 5) == b"early"
            assert server.connections == 1


async def test_reset_aborts_open_connections_on_both_sides() -> None:
    """reset() sends an RST to the client and to the upstream of every open connection."""
    async with proxied_echo() as (server, proxy), await connect(proxy) as client:
        await round_trip(client)
        proxy.reset()
        with pytest.raises(anyio.BrokenResourceError):
            await client.receive()
        assert await server.endings.receive() == "reset"
        await wait_until(lambda: proxy.active == 0)


async def test_reset_leaves_new_connections_alone() -> None:
    """reset() is an action, not a mode: a connection opened afterwards is forwarded."""
    async with proxied_echo() as (_, proxy):
        proxy.reset()
        async with await connect(proxy) as client:
            await round_trip(client)


async def test_close_after_ends_a_connection_after_n_bytes() -> None:
    """With close_after(n) a new connection gets exactly n bytes back, then is closed."""
    async with proxied_echo() as (server, proxy):
        proxy.close_after(10)
        async with await connect(proxy) as client:
            await client.send(bytes(range(100)))
            assert await receive_all(client) == bytes(range(10))
        assert await server.endings.receive() in ("eof", "reset")
        proxy.heal()
        async with await connect(proxy) as client:
            await round_trip(client, bytes(100))


async def test_close_after_spans_several_chunks() -> None:
    """The byte budget counts across chunks: three 4-byte echoes and 2 bytes of a fourth."""
    async with proxied_echo() as (_, proxy):
        proxy.close_after(14)
        async with await connect(proxy) as client:
            for _ in range(3):
                await round_trip(client, b"abcd")
            await client.send(b"abcd")
            assert await receive_all(client) == b"ab"


async def test_close_after_spares_open_connections() -> None:
    """close_after only budgets connections opened after the call."""
    async with proxied_echo() as (_, proxy), await connect(proxy) as client:
        await round_trip(client)
        proxy.close_after(1)
        await round_trip(client, bytes(1000))


async def test_refuse_closes_new_connections_without_reaching_upstream() -> None:
    """Under refuse() a new connection is reset at once and the upstream never sees it."""
    async with proxied_echo() as (server, proxy), await connect(proxy) as survivor:
        await round_trip(survivor)  # the proxy has taken it on: it is not "new"
        proxy.refuse()
        async with await connect(proxy) as client:
            with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(1):
                await client.receive()
        await round_trip(survivor)
        assert server.connections == 1
        assert proxy.accepted == 2
        proxy.heal()
        async with await connect(proxy) as client:
            await round_trip(client)
        assert server.connections == 2


async def test_heal_clears_every_fault() -> None:
    """After latency, close_after and refuse, heal() gives plain forwarding to new connections."""
    async with proxied_echo() as (_, proxy):
        proxy.latency(1.0)
        proxy.close_after(1)
        proxy.refuse()
        proxy.heal()
        async with await connect(proxy) as client:
            assert await round_trip(client, bytes(100)) < BOUND


async def test_unreachable_upstream_resets_the_client() -> None:
    """If the upstream refuses, the client's connection is reset rather than left hanging."""
    with anyio.fail_after(BOUND):
        async with FaultProxy("127.0.0.1", closed_port()) as proxy, await connect(proxy) as c:
            with pytest.raises(anyio.BrokenResourceError):
                await c.receive()


async def test_nothing_is_left_running_after_exit() -> None:
    """Leaving the proxy closes every connection, stalled ones too, and stops every task."""

    def task_ids() -> set[int]:
        return {task.id for task in anyio.get_running_tasks()}

    with anyio.fail_after(BOUND):
        async with echo_server() as server:
            await anyio.wait_all_tasks_blocked()
            before = task_ids()
            async with FaultProxy(server.host, server.port) as proxy:
                port = proxy.port
                flowing = await connect(proxy)
                await round_trip(flowing)
                proxy.blackhole()
                stalled = await connect(proxy)
                await wait_until(lambda: proxy.active == 2)
            async with flowing, stalled:
                assert proxy.active == 0
                assert await receive_all(flowing) == b""
                assert await receive_all(stalled) == b""
            assert await server.endings.receive() == "eof"
            await wait_until(lambda: task_ids() <= before, limit=100)
            with pytest.raises(OSError, match=r"(?i)refused|connection attempts failed"):
                await anyio.connect_tcp("127.0.0.1", port)
            with pytest.raises(RuntimeError, match="entered only once"):
                await proxy.__aenter__()


# PostgreSQL through asyncpg (asyncio only) -------------------------------------


@pytest.fixture
def asyncpg() -> ModuleType:
    """The asyncpg module, or a skip."""
    module: ModuleType = pytest.importorskip("asyncpg")
    return module


@asynccontextmanager
async def proxied_pg(pg_server: Any) -> AsyncIterator[tuple[FaultProxy, str]]:
    """A :class:`FaultProxy` in front of ``pg_server`` and the DSN through it, under a bound."""
    with anyio.fail_after(2 * BOUND):
        async with FaultProxy(pg_server.host, pg_server.port) as proxy:
            yield proxy, proxy.dsn_for(pg_server.dsn())


@asynccontextmanager
async def pg_connection(asyncpg: ModuleType, dsn: str) -> AsyncIterator[Any]:
    """An asyncpg connection to ``dsn``, terminated on the way out whatever happened to it."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        conn.terminate()


@asyncio_only
@pytest.mark.postgres
async def test_pg_query_through_proxy(asyncpg: ModuleType, pg_server: Any) -> None:
    """A query through the proxy reaches PostgreSQL and its answer comes back."""
    async with proxied_pg(pg_server) as (proxy, dsn), pg_connection(asyncpg, dsn) as conn:
        assert await conn.fetchval("SELECT 40 + 2") == 42
        assert proxy.accepted == 1
        assert proxy.forwarded_bytes > 0


@asyncio_only
@pytest.mark.postgres
async def test_pg_latency_slows_a_query(asyncpg: ModuleType, pg_server: Any) -> None:
    """With latency on, a query takes at least the delay there and the delay back."""
    delay = 0.05
    async with proxied_pg(pg_server) as (proxy, dsn), pg_connection(asyncpg, dsn) as conn:
        proxy.latency(delay)
        start = anyio.current_time()
        assert await conn.fetchval("SELECT 1") == 1
        assert anyio.current_time() - start >= 2 * delay - TIMER_SLACK


@asyncio_only
@pytest.mark.postgres
async def test_pg_blackhole_hangs_queries_and_connects(asyncpg: ModuleType, pg_server: Any) -> None:
    """Under a blackhole an open connection's query and a new connect both time out."""
    async with proxied_pg(pg_server) as (proxy, dsn):
        async with pg_connection(asyncpg, dsn) as conn:
            proxy.blackhole()
            with pytest.raises(TimeoutError), anyio.fail_after(SILENCE):
                await conn.fetchval("SELECT 1")
        with pytest.raises(TimeoutError), anyio.fail_after(SILENCE):
            await asyncpg.connect(dsn)
        proxy.heal()
        async with pg_connection(asyncpg, dsn) as conn:
            assert await conn.fetchval("SELECT 1") == 1


@asyncio_only
@pytest.mark.postgres
async def test_pg_reset_breaks_an_open_connection(asyncpg: ModuleType, pg_server: Any) -> None:
    """After reset() the next query on an open connection fails with a connection error."""
    async with proxied_pg(pg_server) as (proxy, dsn), pg_connection(asyncpg, dsn) as conn:
        assert await conn.fetchval("SELECT 1") == 1
        proxy.reset()
        with pytest.raises((OSError, asyncpg.ConnectionDoesNotExistError)):
            await conn.fetchval("SELECT 1")


@asyncio_only
@pytest.mark.postgres
async def test_pg_close_after_kills_the_handshake(asyncpg: ModuleType, pg_server: Any) -> None:
    """A byte budget smaller than the server's handshake makes the connect fail."""
    async with proxied_pg(pg_server) as (proxy, dsn):
        proxy.close_after(1)
        with pytest.raises((OSError, asyncpg.ConnectionDoesNotExistError)):
            await asyncpg.connect(dsn)


@asyncio_only
@pytest.mark.postgres
async def test_pg_refuse_fails_connect_fast_and_heal_restores(
    asyncpg: ModuleType, pg_server: Any
) -> None:
    """Under refuse() a connect fails well within a second; after heal() it succeeds."""
    async with proxied_pg(pg_server) as (proxy, dsn):
        proxy.refuse()
        with pytest.raises((OSError, asyncpg.ConnectionDoesNotExistError)), anyio.fail_after(1):
            await asyncpg.connect(dsn)
        proxy.heal()
        async with pg_connection(asyncpg, dsn) as conn:
            assert await conn.fetchval("SELECT 1") == 1
