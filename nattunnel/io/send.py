"""The send path: inner packets in, ESP-in-UDP datagrams out. Top to bottom:

    read from TUN            Sender.drain_inner (here) calls read_into: TunDevice.read_into
                             or .read_into_vnet (io/tun.py), straight into the send buffer
                             where the ESP packet's plaintext goes
    -> route                 Tunnel.route_at (tunnel/core.py; prefixes in tunnel/prefixes.py)
    -> encrypt in place      Peer.encapsulate_in_place (tunnel/peer.py: SA, address, counters)
                             -> OutboundSA.encapsulate_in_place (esp/sa.py: trailer, sequence
                             number, header, AEAD), the ESP packet where it lies
    -> GSO batch             Sender.drain_inner (here): ESP packets of one size to one peer
                             side by side in the buffer, up to 64 or 64 KiB
    -> sendmsg               Sender._send_batch (here): one sendmsg with UDP_SEGMENT (io/udp.py)
                             per batch; without GSO one sendto per packet
    -> events                the endpoint's ``on_events`` (Endpoint._after_send,
                             io/endpoint.py): an SA past its soft limit wants a rekey

The one-packet form is ``Sender.send_inner`` (the in-process interface, tests):
Tunnel.encapsulate_into (route, then Peer.encapsulate_into: copy into place and the same
Peer.encapsulate_in_place) and one sendto. ``send_datagram`` sends what a core made (NAT
keepalives). No logging per packet, and no allocation beyond the small objects Python
cannot avoid (views, the nonce).

Part of ``nattunnel.io``.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from ..constants import ESP_PLAINTEXT_OFFSET
from ..esp.drop import DropCounters, DropReason
from ..tunnel.core import Tunnel
from ..tunnel.peer import Peer
from .udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, GSO_SEG, SOL_UDP, UDP_SEGMENT

log = logging.getLogger("nattunnel")

#: the largest inner packet read from the inner interface (the IPv4 total length limit)
MAX_INNER = 65535
_PLAIN = ESP_PLAINTEXT_OFFSET
#: the send buffer: one GSO batch plus the packet that did not fit into it (with its ESP
#: header, padding, trailer and ICV)
TX_SIZE = GSO_MAX_BYTES + _PLAIN + MAX_INNER + 64
#: ``read_into(room) -> n``: one inner packet read into ``room``, its length; -1 when there
#: is no more (EAGAIN)
ReadInto = Callable[[memoryview], int]
#: the ``send_errors`` key of a send with no socket of the address's family
NO_SOCKET = "NO_SOCKET"


def error_name(e: OSError) -> str:
    """The ``send_errors`` key of a failed send: the errno's name (``ENETUNREACH``), or the
    exception's type for an error without an errno (a ``socket.gaierror`` has its own)."""
    if isinstance(e.errno, int) and e.errno in errno.errorcode:
        return errno.errorcode[e.errno]
    return type(e).__name__


class Sender:
    """The send path of one endpoint: its buffer and its GSO state.

    ``on_events()`` runs after a drain or a send that left events in the tunnel core.
    """

    def __init__(
        self, tunnel: Tunnel, drops: DropCounters, *, budget: int,
        on_events: Callable[[], None], send_errors: dict[str, int] | None = None,
    ) -> None:
        self.tunnel = tunnel
        self.drops = drops
        #: failed sends by errno name (``ENETUNREACH``) or NO_SOCKET; each is also one
        #: SEND_FAILED drop. Nothing is retried here: the cores resend on their own schedule
        #: (IKE retransmissions, keepalives), and a data packet is lost as on a lossy link.
        self.send_errors: dict[str, int] = send_errors if send_errors is not None else {}
        self.budget = budget
        self.on_events = on_events
        #: the event loop's clock (``Endpoint.start`` sets it)
        self.clock: Callable[[], float] = time.monotonic
        self._tx = bytearray(TX_SIZE)
        self._txv = memoryview(self._tx)
        #: per offset in the send buffer, the view an inner packet is read into
        self._rooms: dict[int, memoryview] = {}
        #: UDP GSO in use; switched off at run time if the kernel refuses it (EIO, EINVAL)
        self.gso = False
        self.gso_sends = 0

    def drain_inner(self, read_into: ReadInto) -> None:
        """Read inner packets with ``read_into(buf) -> n | -1`` until EAGAIN or the budget.

        Each packet is read straight into the send buffer, where its ESP packet's plaintext
        goes, and encrypted there. With GSO, consecutive ESP packets of one size to one peer
        lie side by side and go out with one ``sendmsg`` (UDP_SEGMENT); a shorter packet may
        end a batch. Anything else sends the batch first.
        """
        now = self.clock()
        tunnel = self.tunnel
        route_at = tunnel.route_at
        counts = tunnel.drops.counts
        tx = self._tx
        txv = self._txv
        rooms = self._rooms
        gso = self.gso
        batch: Peer | None = None  # the peer of the packets in tx[0:off]
        seg = 0  # their size
        off = 0
        count = 0
        for _ in range(self.budget):
            room = rooms.get(off) or self._room(off)
            n = read_into(room)
            if n < 0:
                break
            peer = route_at(txv, off + _PLAIN, n)
            if peer is None:
                counts[DropReason.NO_ROUTE] += 1
                continue
            m = peer.encapsulate_in_place(txv, off, n, now)
            if m < 0:  # counted
                continue
            if not gso:
                sock, addr = peer.sock, peer.addr
                if sock is None or addr is None:
                    self.failed(NO_SOCKET)
                    continue
                try:
                    sock.sendto(txv[:m], addr)
                except OSError as e:
                    self.failed(error_name(e))
                continue
            if batch is None:
                batch, seg, off, count = peer, m, m, 1
            elif peer is batch and m <= seg and count < GSO_MAX_SEGMENTS:
                off += m
                count += 1
                if m < seg:  # a short packet ends the batch
                    self._send_batch(batch, off, seg, count)
                    batch = None
                    off = 0
                    continue
            else:
                self._send_batch(batch, off, seg, count)
                tx[0:m] = tx[off : off + m]
                batch, seg, off, count = peer, m, m, 1
            if off + seg > GSO_MAX_BYTES:  # the next one would not fit
                self._send_batch(batch, off, seg, count)
                batch = None
                off = 0
        if batch is not None:
            self._send_batch(batch, off, seg, count)
        if tunnel.events:
            self.on_events()

    def send_inner(self, packet: bytes | bytearray | memoryview, now: float | None = None) -> int:
        """Encapsulate one inner packet and send it; the ESP length, or ``-DropReason``."""
        if now is None:
            now = self.clock()
        peer, m = self.tunnel.encapsulate_into(packet, self._txv, now)
        if m < 0 or peer is None:
            return m
        if not self._sendto(peer, self._txv[:m]):
            return -DropReason.SEND_FAILED
        if self.tunnel.events:
            self.on_events()
        return m

    def send_datagram(self, peer: Peer, data: bytes | memoryview) -> None:
        """Send a datagram a core made for ``peer`` (a NAT keepalive)."""
        sock = peer.sock
        if peer.addr is None:
            self.drops.counts[DropReason.NO_ENDPOINT] += 1
            return
        if sock is None:
            self.failed(NO_SOCKET)
            return
        try:
            sock.sendto(data, peer.addr)
        except OSError as e:
            self.failed(error_name(e))

    def failed(self, why: str, n: int = 1) -> None:
        """``n`` datagrams could not be sent, for reason ``why`` (an errno name or
        NO_SOCKET): counted, as SEND_FAILED and by reason. The slow path only."""
        self.drops.counts[DropReason.SEND_FAILED] += n
        self.send_errors[why] = self.send_errors.get(why, 0) + n

    def _room(self, off: int) -> memoryview:
        """Where a packet read for the ESP packet at ``off`` goes: the plaintext's place, as
        long as the largest inner packet (the trailer and ICV still fit behind it)."""
        if len(self._rooms) > 4096:
            self._rooms.clear()
        start = off + _PLAIN
        room = self._rooms[off] = self._txv[start : start + MAX_INNER]
        return room

    def _send_batch(self, peer: Peer, size: int, seg: int, count: int) -> None:
        """Send the ``count`` ESP packets of ``seg`` octets (the last may be shorter) in
        ``tx[:size]`` to ``peer``: one sendmsg with UDP_SEGMENT."""
        txv = self._txv
        if not self.gso:  # switched off during this drain
            for o in range(0, size, seg):
                self._sendto(peer, txv[o : min(o + seg, size)])
            return
        sock, addr = peer.sock, peer.addr
        if sock is None or addr is None:
            self.failed(NO_SOCKET, count)
            return
        try:
            if count == 1:
                sock.sendto(txv[:size], addr)
            else:
                sock.sendmsg([txv[:size]], [(SOL_UDP, UDP_SEGMENT, GSO_SEG.pack(seg))], 0, addr)
                self.gso_sends += 1
        except OSError as e:
            if count > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                # the kernel or the device refuses segmentation: fall back for good
                log.warning("UDP GSO refused (%s); sending one datagram per packet", e)
                self.gso = False
                for o in range(0, size, seg):
                    self._sendto(peer, txv[o : min(o + seg, size)])
            else:
                self.failed(error_name(e), count)

    def _sendto(self, peer: Peer, data: memoryview) -> bool:
        """One datagram to ``peer``; False (counted) if it could not be sent."""
        sock, addr = peer.sock, peer.addr
        if sock is None or addr is None:
            self.failed(NO_SOCKET)
            return False
        try:
            sock.sendto(data, addr)
        except OSError as e:
            self.failed(error_name(e))
            return False
        return True
