"""A ``Tunnel`` core as a node of the shared in-memory harness (``tests.support.wire``).

``TunnelNode.send`` routes and encapsulates an inner packet (``Tunnel.encapsulate_into``) and
puts the ESP packet on the wire, from the node's address to the peer's; datagrams the wire
brings go through ``Tunnel.receive``, and what that returned is kept in order (``results``,
the inner packets in ``received``). NAT keepalives and the other datagrams the core makes
(``Tunnel.datagrams_to_send``) go out the same way, and the wire fires the core's timer.
"""

from __future__ import annotations

from nattunnel.addr import Addr
from nattunnel.constants import ESP_PLAINTEXT_OFFSET
from nattunnel.tunnel.core import Tunnel

_ROOM = 65535 + 256


class TunnelNode:
    def __init__(self, tunnel: Tunnel, addr: Addr) -> None:
        self.tunnel = tunnel
        self.addr = addr
        #: what ``Tunnel.receive`` returned for each datagram, and the inner packets delivered
        self.results: list[int] = []
        self.received: list[bytes] = []
        self._out: list[tuple[bytes, Addr, Addr]] = []
        self._buf = memoryview(bytearray(_ROOM))

    def send(self, inner: bytes, now: float = 0.0) -> int:
        """Encapsulate ``inner`` for the wire: the ESP length, or ``-DropReason``."""
        peer, n = self.tunnel.encapsulate_into(inner, self._buf, now)
        if n > 0:
            assert peer is not None and peer.addr is not None
            self._out.append((bytes(self._buf[:n]), self.addr, peer.addr))
        return n

    def take(self) -> list[bytes]:
        """The inner packets received so far (and forget them)."""
        out, self.received = self.received, []
        return out

    # --- the wire's side (tests.support.wire.Node) --------------------------------------------
    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        buf = memoryview(bytearray(data))
        m = self.tunnel.receive(buf, 0, len(data), src, now)
        self.results.append(m)
        if m > 0:
            self.received.append(bytes(buf[ESP_PLAINTEXT_OFFSET : ESP_PLAINTEXT_OFFSET + m]))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        out, self._out = self._out, []
        for peer, data in self.tunnel.datagrams_to_send():
            if peer.addr is not None:
                out.append((data, self.addr, peer.addr))
        return out

    def get_timer(self) -> float | None:
        return self.tunnel.get_timer()

    def handle_timer(self, now: float) -> None:
        self.tunnel.handle_timer(now)
