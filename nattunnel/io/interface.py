"""The inner interface: where decapsulated packets go and where packets to encapsulate come
from. ``InnerInterface`` is what the endpoint needs of one; ``InProcessInterface`` is the one
without root (tests, the demo): inner packets in and out through an asyncio API. The TUN
device is ``nattunnel.io.tun.TunInterface``.

Part of ``nattunnel.io``; imports only the standard library (and, for types, the endpoint
and ``nattunnel.addr``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..addr import Network
    from .endpoint import Endpoint


class InnerInterface(Protocol):
    """Where decapsulated packets go, and where packets to encapsulate come from."""

    def attach(self, endpoint: Endpoint) -> None: ...

    def write(self, packet: memoryview) -> None:
        """Deliver one inner packet. The view stays valid until the next ``flush``."""

    def flush(self) -> None:
        """Write out what ``write`` held back (TCP coalescing); called before the endpoint
        reuses the buffer the packets lie in, and after each drain."""

    def route(self, net: Network) -> None:
        """Send the inner packets for ``net`` to the tunnel (a TUN device: a route to it; a
        peer added while running)."""

    def unroute(self, net: Network) -> None:
        """Undo ``route`` (a peer removed while running)."""

    def close(self) -> None: ...


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

    def flush(self) -> None:
        return None

    def write(self, packet: memoryview) -> None:
        try:
            self._queue.put_nowait(bytes(packet))
            self.received += 1
        except asyncio.QueueFull:
            self.drops += 1

    def route(self, net: Network) -> None:
        return None  # every packet given to ``send`` goes to the tunnel

    def unroute(self, net: Network) -> None:
        return None

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
