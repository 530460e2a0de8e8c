"""A TCP proxy that injects network faults between a client and a server.

Re-exported as :class:`elasticpool.testing.FaultProxy`.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

__all__ = ["FaultProxy"]

_Mode = Literal["forward", "blackhole", "refuse"]

_CHUNK = 65536
"""Most bytes read from one side before forwarding them to the other."""

_CLOSE_BOUND = 1.0
"""Seconds a shielded close may take before it is abandoned (closes never block in practice)."""

_ROUTING_PARAMS = frozenset({"host", "hostaddr", "port"})
"""URI query parameters that would route a libpq or asyncpg client around the proxy."""


def _loopback_only(listen_host: str) -> str:
    """``listen_host`` if it is a loopback address literal, else ``ValueError``."""
    try:
        address = ipaddress.ip_address(listen_host)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network(
        "127.0.0.0/8"
    ):
        return str(address)
    if isinstance(address, ipaddress.IPv6Address) and address == ipaddress.IPv6Address("::1"):
        return str(address)
    raise ValueError(
        f"listen_host must be a loopback address (127.0.0.0/8 or ::1), got {listen_host!r}"
    )


def _set_abortive(stream: anyio.abc.SocketStream) -> None:
    """Make the next close of ``stream`` send an RST (``SO_LINGER`` on, timeout 0)."""
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already gone: nothing left to reset


class _Connection:
    """One proxied client connection and its upstream, as the proxy's handler sees them."""

    __slots__ = ("abort", "budget", "client", "scope", "upstream")

    def __init__(
        self, client: anyio.abc.SocketStream, scope: anyio.CancelScope, budget: int | None
    ) -> None:
        self.client = client
        self.upstream: anyio.abc.SocketStream | None = None
        self.scope = scope
        self.budget = budget  # bytes still to forward upstream→client; None: no limit
        self.abort = False  # close with an RST rather than a FIN


class FaultProxy:
    """A loopback TCP proxy to ``(upstream_host, upstream_port)`` with switchable faults.

    Use it as an async context manager::

        async with FaultProxy(server.host, server.port) as proxy:
            conn = await asyncpg.connect(proxy.dsn_for(server.dsn()))
            proxy.blackhole()       # the next query hangs
            proxy.heal()            # and now completes

    Entering starts listening on a random port of ``listen_host`` (see
    :attr:`host`, :attr:`port`, :meth:`dsn_for`); each accepted connection opens
    its own upstream connection and bytes are copied both ways, end-of-stream
    included (a half-close is passed on). Leaving stops accepting, closes every
    proxied connection on both sides and returns only once every task the proxy
    started has finished: nothing runs past the ``async with`` block. A proxy is
    entered at most once.

    Faults can be switched at any time, also before entering:

    * :meth:`latency` delays every chunk, in each direction, on new and open
      connections.
    * :meth:`connect_delay` holds each *new* connection for a while before
      connecting it upstream: a slow connection set-up (TLS, external
      authentication, a loaded server) that leaves open connections as fast
      as ever.
    * :meth:`blackhole` stalls everything: new connections are accepted but not
      connected upstream, open ones stop forwarding. Nothing is dropped: bytes
      already read are held and the kernel buffers fill, as in a network
      partition, so :meth:`heal` lets stalled connections carry on.
    * :meth:`refuse` closes each new connection with an RST as soon as it is
      accepted, without connecting upstream; open connections are untouched.
    * :meth:`close_after` gives each *new* connection a budget of bytes to
      forward upstream→client, after which both sides are closed.
    * :meth:`reset` is an action, not a mode: it aborts every open connection
      with an RST on both sides (``SO_LINGER`` 0, then close). New connections
      are forwarded as usual.
    * :meth:`heal` undoes all of the above for new connections and clears the
      latency and the blackhole for open ones. (An open connection keeps the
      :meth:`close_after` budget it was born with.)

    "New" means taken on by the proxy after the call: a client whose connect
    has completed but which the proxy has not yet accepted (it is still in the
    kernel's backlog) counts as new.

    :meth:`blackhole` and :meth:`refuse` replace each other (the last call
    wins); :meth:`latency` and :meth:`close_after` combine with either.
    Switching takes effect at the proxy's next checkpoint; counters
    :attr:`accepted`, :attr:`active` and :attr:`forwarded_bytes` show what
    happened.

    If the upstream cannot be reached, the client's connection is reset.

    It is a test tool, not a production proxy: it listens only on loopback
    (``127.0.0.0/8`` or ``::1``; anything else raises ``ValueError``), copies
    each chunk in turn (a latency fault caps throughput at one chunk per
    delay), and does no TLS or protocol parsing.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1"
    ) -> None:
        self._listen_host = _loopback_only(listen_host)
        self._upstream_host = upstream_host
        self._upstream_port = upstream_port
        self._port: int | None = None
        self._stack: AsyncExitStack | None = None
        self._entered = False
        self._mode: _Mode = "forward"
        self._unblocked: anyio.Event | None = None  # set when a blackhole ends
        self._latency = 0.0
        self._connect_delay = 0.0
        self._close_after: int | None = None
        # Invariants: ``_connections`` holds exactly the handlers that have not yet
        # closed their client stream, so ``active == len(_connections)``.
        self._connections: set[_Connection] = set()
        self._accepted = 0
        self._forwarded_bytes = 0

    # addresses ------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on (the ``listen_host`` given)."""
        return self._listen_host

    @property
    def port(self) -> int:
        """The port the proxy listens on; ``RuntimeError`` unless it is running."""
        if self._port is None:
            raise RuntimeError("fault proxy is not running")
        return self._port

    def dsn_for(self, dsn: str) -> str:
        """``dsn`` (a ``postgresql://`` or ``postgres://`` URI) with its host and port the proxy's.

        User, password, database and query are kept as they are. A ``key=value``
        DSN, several hosts, or a query naming ``host``, ``hostaddr`` or ``port``
        (which would route around the proxy) raise ``ValueError``.
        """
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("dsn must be a postgresql:// uri")
        userinfo, _, hostport = parts.netloc.rpartition("@")
        if "," in hostport:
            raise ValueError("dsn must name a single host")
        routing = {key for key, _ in parse_qsl(parts.query)} & _ROUTING_PARAMS
        if routing:
            raise ValueError(f"dsn query sets {', '.join(sorted(routing))}, bypassing the proxy")
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = f"{userinfo}@{host}:{self.port}" if userinfo else f"{host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # counters -------------------------------------------------------------------

    @property
    def accepted(self) -> int:
        """Client connections accepted so far, refused ones included."""
        return self._accepted

    @property
    def active(self) -> int:
        """Client connections accepted and not yet closed (stalled ones included)."""
        return len(self._connections)

    @property
    def forwarded_bytes(self) -> int:
        """Bytes forwarded so far, both directions added up."""
        return self._forwarded_bytes

    # faults ---------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        """Delay each chunk by ``seconds`` in each direction, on new and open connections.

        ``0`` removes the delay; a negative value raises ``ValueError``.
        """
        if not seconds >= 0:
            raise ValueError(f"latency must be >= 0 seconds, got {seconds!r}")
        self._latency = float(seconds)

    def connect_delay(self, seconds: float) -> None:
        """Hold each new connection ``seconds`` before connecting it upstream.

        Open connections are not slowed; ``0`` removes the delay; a negative
        value raises ``ValueError``.
        """
        if not seconds >= 0:
            raise ValueError(f"connect_delay must be >= 0 seconds, got {seconds!r}")
        self._connect_delay = float(seconds)

    def blackhole(self) -> None:
        """Accept new connections but never connect or answer them; stall open ones too."""
        self._set_mode("blackhole")

    def refuse(self) -> None:
        """Close each new connection with an RST at once, without connecting upstream."""
        self._set_mode("refuse")

    def close_after(self, n_bytes: int) -> None:
        """Close each new connection once it has forwarded ``n_bytes`` upstream→client.

        The connection gets exactly ``n_bytes`` (a chunk that crosses the budget
        is cut), then both sides are closed. A negative count raises ``ValueError``.
        """
        if n_bytes < 0:
            raise ValueError(f"close_after needs n_bytes >= 0, got {n_bytes}")
        self._close_after = n_bytes

    def reset(self) -> None:
        """Abort every open connection with an RST on both sides (``SO_LINGER`` 0, then close).

        Nothing is forwarded on them after this call; the sockets are closed at
        the proxy's next checkpoint.
        """
        for conn in self._connections:
            conn.abort = True
            conn.scope.cancel()

    def heal(self) -> None:
        """Back to plain forwarding: no latency, connect delay, blackhole, refusal or budget."""
        self._latency = 0.0
        self._connect_delay = 0.0
        self._close_after = None
        self._set_mode("forward")

    def _set_mode(self, mode: _Mode) -> None:
        self._mode = mode
        if mode != "blackhole" and self._unblocked is not None:
            self._unblocked.set()
            self._unblocked = None

    async def _pass_blackhole(self) -> None:
        """Return once no blackhole is on (at once if none is)."""
        while self._mode == "blackhole":
            if self._unblocked is None:
                self._unblocked = anyio.Event()
            await self._unblocked.wait()

    # running --------------------------------------------------------------------

    async def __aenter__(self) -> FaultProxy:
        if self._entered:
            raise RuntimeError("a fault proxy can be entered only once")
        self._entered = True
        async with AsyncExitStack() as stack:
            listener = await anyio.create_tcp_listener(local_host=self._listen_host, local_port=0)
            stack.push_async_callback(self._close_quietly, listener)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)  # runs first on exit
            self._port = listener.extra(SocketAttribute.local_port)
            task_group.start_soon(listener.serve, self._handle, task_group)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            raise RuntimeError("fault proxy is not running")
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._port = None

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self._accepted += 1
        scope = anyio.CancelScope()
        conn = _Connection(client, scope, self._close_after)
        self._connections.add(conn)
        try:
            with scope:
                if self._mode == "refuse":
                    conn.abort = True
                    return
                await self._pass_blackhole()
                if self._connect_delay > 0:
                    await anyio.sleep(self._connect_delay)
                try:
                    conn.upstream = await anyio.connect_tcp(
                        self._upstream_host, self._upstream_port
                    )
                except OSError:
                    conn.abort = True
                    return
                if conn.budget == 0:
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump, conn, client, conn.upstream, False)
                    tg.start_soon(self._pump, conn, conn.upstream, client, True)
        finally:
            with anyio.move_on_after(_CLOSE_BOUND, shield=True):
                for stream in (client, conn.upstream):
                    if stream is not None:
                        if conn.abort:
                            _set_abortive(stream)
                        await self._close_quietly(stream)
            self._connections.discard(conn)

    async def _pump(
        self,
        conn: _Connection,
        src: anyio.abc.SocketStream,
        dst: anyio.abc.SocketStream,
        to_client: bool,
    ) -> None:
        """Copy ``src`` to ``dst`` until end-of-stream (passed on) or an error (aborts both)."""
        try:
            while True:
                try:
                    data = await src.receive(_CHUNK)
                except anyio.EndOfStream:
                    await dst.send_eof()
                    return
                await self._pass_blackhole()
                if self._latency > 0:
                    await anyio.sleep(self._latency)
                if to_client and conn.budget is not None:
                    data = data[: conn.budget]
                    conn.budget -= len(data)
                await dst.send(data)
                self._forwarded_bytes += len(data)
                if to_client and conn.budget == 0:
                    conn.scope.cancel()
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            conn.abort = True
            conn.scope.cancel()

    @staticmethod
    async def _close_quietly(resource: anyio.abc.AsyncResource) -> None:
        with anyio.move_on_after(_CLOSE_BOUND, shield=True):
            try:
                await resource.aclose()
            except OSError:
                pass

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port is not None else "not running"
        return (
            f"<FaultProxy {where} -> {self._upstream_host}:{self._upstream_port} "
            f"[{self._mode}, accepted {self._accepted}, active {self.active}]>"
        )
