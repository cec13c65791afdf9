"""The asyncio endpoint: moves bytes between UDP sockets, the inner interface and a Tunnel.

- One non-blocking UDP socket per local address. The data plane reads with ``add_reader`` and
  drains until EAGAIN with a budget per callback: never one packet per callback.
- The inner interface is a TUN device (``nattunnel.tun``) or the in-process interface below.
- One timer per endpoint, armed for the core's next deadline.
- Nothing here decides anything about packets: that is ``nattunnel.tunnel.Tunnel``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

from .drop import DropCounters, DropReason
from .peer import Addr, Peer
from .tunnel import PeerMoved, RekeyNeeded, Tunnel

log = logging.getLogger("nattunnel")

#: datagrams or inner packets handled per reader callback before yielding to the loop
DRAIN_BUDGET = 256
#: receive buffer: the largest UDP payload
_RX_SIZE = 65535
_SOCKBUF = 4 << 20


class InnerInterface(Protocol):
    """Where decapsulated packets go, and where packets to encapsulate come from."""

    def attach(self, endpoint: Endpoint) -> None: ...

    def write(self, packet: memoryview) -> None: ...

    def close(self) -> None: ...


def _family(addr: Addr) -> int:
    return socket.AF_INET6 if len(addr) == 4 else socket.AF_INET


def sockaddr(host: str, port: int) -> Addr:
    """The address tuple the socket module gives for (host, port), IPv4 or IPv6."""
    if ":" in host:
        return (host, port, 0, 0)
    return (host, port)


class Endpoint:
    """An asyncio tunnel endpoint around one ``Tunnel`` core."""

    def __init__(
        self,
        tunnel: Tunnel,
        interface: InnerInterface,
        listen: Sequence[tuple[str, int]],
        *,
        budget: int = DRAIN_BUDGET,
    ) -> None:
        self.tunnel = tunnel
        self.interface = interface
        self.listen = list(listen)
        self.budget = budget
        #: endpoint-level drops (socket errors, full buffers); the core counts the rest
        self.drops = DropCounters()
        self.socks: list[socket.socket] = []
        self._by_family: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._rx = bytearray(_RX_SIZE)
        self._rxv = memoryview(self._rx)
        self._tx = bytearray(_RX_SIZE + 128)
        self._txv = memoryview(self._tx)
        self._closed = asyncio.Event()

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        for host, port in self.listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                if fam == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKBUF)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKBUF)
                sock.setblocking(False)
                sock.bind((host, port))
            except OSError as e:
                sock.close()
                self._close_sockets()
                raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from e
            self.socks.append(sock)
            self._by_family.setdefault(fam, sock)
            loop.add_reader(sock.fileno(), self._on_udp, sock)
        for peer in self.tunnel.peers.values():
            if peer.addr is not None:
                peer.sock = self._by_family.get(_family(peer.addr))
        self.interface.attach(self)
        self._arm_timer()

    def local_addresses(self) -> list[Addr]:
        return [s.getsockname() for s in self.socks]

    def _close_sockets(self) -> None:
        for sock in self.socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.socks.clear()
        self._by_family.clear()

    def close(self) -> None:
        """Stop reading, close sockets and the inner interface. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_sockets()
        self.interface.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- UDP side -----------------------------------------------------------------------------
    def _on_udp(self, sock: socket.socket) -> None:
        assert self._loop is not None
        now = self._loop.time()
        recv = sock.recvfrom_into
        rx = self._rx
        rxv = self._rxv
        receive = self.tunnel.receive
        write = self.interface.write
        for _ in range(self.budget):
            try:
                n, addr = recv(rx)
            except BlockingIOError:
                break
            except OSError:
                # e.g. ECONNREFUSED from an earlier ICMP error; the socket stays usable
                self.drops.counts[DropReason.SEND_FAILED] += 1
                continue
            m = receive(rxv, 0, n, addr, now)
            if m > 0:
                write(rxv[16 : 16 + m])
        if self.tunnel.events:
            self._handle_events(sock)

    def send_datagram(self, peer: Peer, data: bytes | memoryview) -> None:
        sock = peer.sock
        if not isinstance(sock, socket.socket) or peer.addr is None:
            self.drops.counts[DropReason.NO_ENDPOINT] += 1
            return
        try:
            sock.sendto(data, peer.addr)
        except OSError:
            self.drops.counts[DropReason.SEND_FAILED] += 1

    # --- inner side ---------------------------------------------------------------------------
    def send_inner(self, packet: bytes | bytearray | memoryview, now: float | None = None) -> int:
        """Encapsulate one inner packet and send it; the ESP length, or ``-DropReason``."""
        if now is None:
            assert self._loop is not None
            now = self._loop.time()
        tunnel = self.tunnel
        peer = tunnel.route(packet)
        if peer is None:
            tunnel.drops.counts[DropReason.NO_ROUTE] += 1
            return -DropReason.NO_ROUTE
        m = peer.encapsulate_into(packet, self._txv, now)
        if m < 0:
            tunnel.drops.counts[-m] += 1
            return m
        sock = peer.sock
        try:
            sock.sendto(self._txv[:m], peer.addr)  # type: ignore[attr-defined]
        except OSError:
            self.drops.counts[DropReason.SEND_FAILED] += 1
            return -DropReason.SEND_FAILED
        if tunnel.events:
            self._handle_events(None)
        return m

    def drain_inner(self, read_into: object) -> None:
        """Read inner packets with ``read_into(buf) -> n | -1`` until EAGAIN or the budget."""
        assert self._loop is not None
        now = self._loop.time()
        tunnel = self.tunnel
        route = tunnel.route
        counts = tunnel.drops.counts
        txv = self._txv
        inv = self._rxv  # the UDP side never runs at the same time
        reader = read_into
        for _ in range(self.budget):
            n = reader(inv)  # type: ignore[operator]
            if n < 0:
                break
            inner = inv[:n]
            peer = route(inner)
            if peer is None:
                counts[DropReason.NO_ROUTE] += 1
                continue
            m = peer.encapsulate_into(inner, txv, now)
            if m < 0:
                counts[-m] += 1
                continue
            try:
                peer.sock.sendto(txv[:m], peer.addr)  # type: ignore[attr-defined]
            except OSError:
                self.drops.counts[DropReason.SEND_FAILED] += 1
        if tunnel.events:
            self._handle_events(None)

    # --- events and the timer -----------------------------------------------------------------
    def _handle_events(self, sock: socket.socket | None) -> None:
        for ev in self.tunnel.pop_events():
            if isinstance(ev, PeerMoved):
                peer = self.tunnel.peers.get(ev.peer)
                if peer is not None:
                    peer.sock = sock if sock is not None else self._by_family.get(
                        _family(ev.new)
                    )
                if ev.old is None:
                    log.info("peer %s: first authenticated packet from %s", ev.peer,
                             _fmt(ev.new))
                else:
                    log.info("peer %s moved from %s to %s (NAT rebinding)", ev.peer,
                             _fmt(ev.old), _fmt(ev.new))
            elif isinstance(ev, RekeyNeeded):
                log.warning("peer %s: SA %#010x passed its sequence-number soft limit; "
                            "manual SAs cannot be rekeyed: install new keys", ev.peer, ev.spi)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._loop is None:
            return
        when = self.tunnel.next_deadline()
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = None
        for peer, data in self.tunnel.on_timer(self._loop.time()):
            self.send_datagram(peer, data)
        self._arm_timer()

    def stats(self) -> dict[str, object]:
        s = self.tunnel.stats()
        s["endpoint_drops"] = self.drops.as_dict()
        s["listen"] = [_fmt(a) for a in self.local_addresses()]
        return s


def _fmt(addr: Addr) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class InProcessInterface:
    """The inner side without root: inner packets in and out through an asyncio API.

    ``send(packet)`` encapsulates and sends at once; ``await recv()`` returns the next
    decapsulated inner packet. Packets arriving while the queue is full are dropped and counted.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self._endpoint: Endpoint | None = None
        self.drops = 0
        self.received = 0

    def attach(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def write(self, packet: memoryview) -> None:
        try:
            self._queue.put_nowait(bytes(packet))
            self.received += 1
        except asyncio.QueueFull:
            self.drops += 1

    def send(self, packet: bytes | bytearray | memoryview) -> int:
        """Send one inner IP packet into the tunnel: the ESP length, or ``-DropReason``."""
        if self._endpoint is None:
            raise RuntimeError("the interface is not attached to a started endpoint")
        return self._endpoint.send_inner(packet)

    async def recv(self) -> bytes:
        return await self._queue.get()

    def recv_nowait(self) -> bytes | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._endpoint = None


__all__ = ["DRAIN_BUDGET", "Endpoint", "InProcessInterface", "InnerInterface", "errno", "sockaddr"]
