"""The receive path: ESP-in-UDP datagrams in, inner packets out. Top to bottom:

    recvmsg with GRO         Receiver.on_udp_gro (here): one read, many datagrams of one size
                             from one sender (Receiver.on_udp without GRO: recvfrom_into)
    -> SPI runs              Tunnel.receive_batch (tunnel/core.py): consecutive datagrams of
                             one SA; keepalives, IKE and junk leave in Tunnel._receive_other
    -> decrypt               InboundSA.decapsulate_run (esp/sa.py): replay check, ICV, replay
                             commit (esp/replay.py), trailer, in place in the receive buffer
    -> source check          Tunnel._source_ok -> Peer.source_allowed_at (RFC 4301 5.2)
    -> rebinding             Tunnel._heard (tunnel/core.py): an authentic packet moves the peer
    -> coalesce              interface.write: Coalescer.write (io/coalesce.py: TCP segments,
                             and UDP datagrams where the device takes USO) behind
                             TunInterface (io/tun.py), or InProcessInterface.write
    -> writev                interface.flush: Coalescer.flush (io/coalesce.py), before the
                             buffer is reused
    -> events                the endpoint's ``after`` (Endpoint._after_receive, io/endpoint.py):
                             peer moved, rekey, IKE that came behind the non-ESP marker

A datagram alone in its read takes the one-datagram forms of the same steps: Tunnel.receive
-> InboundSA.decapsulate_into -> the same source check and rebinding; it stays in the buffer
and the next read goes behind it, so that such datagrams (a sender without GSO: a TURN
server) reach the interface together at the next flush. One reader callback
drains its socket until EAGAIN or its budget; packets are decrypted where they were read and
handed on as views into the one receive buffer. No logging per packet, and no allocation
beyond the small objects Python cannot avoid (views).

Part of ``nattunnel.io``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from ..constants import ESP_PLAINTEXT_OFFSET
from ..esp.drop import DropCounters, DropReason
from ..tunnel.core import Tunnel
from .interface import InnerInterface
from .udp import GRO_SEG, MAX_DATAGRAM, SO_RXQ_OVFL, SOL_UDP, U32, UDP_GRO

#: receive buffer: without GRO, datagrams are read one after another into it (the inner
#: interface may hold views of them until it flushes), so room for several
RX_SIZE = 4 * MAX_DATAGRAM
#: room for the UDP_GRO and SO_RXQ_OVFL control messages (CMSG_SPACE(4) = 24 each)
ANC_SIZE = 64
_PLAIN = ESP_PLAINTEXT_OFFSET


class Receiver:
    """The receive path of one endpoint: its reader callbacks and its buffer.

    ``after(sock)`` runs once after each callback's batch (the endpoint handles the core's
    events there); ``core_error(where)`` is called from an ``except`` block when a core
    raised. ``rxq_ovfl`` (socket fd -> count) gets the kernel drop counts that come in
    control messages.
    """

    def __init__(
        self,
        tunnel: Tunnel,
        interface: InnerInterface,
        drops: DropCounters,
        *,
        budget: int,
        rxq_ovfl: dict[int, int],
        after: Callable[[socket.socket], None],
        core_error: Callable[[str], None],
    ) -> None:
        self.tunnel = tunnel
        self.interface = interface
        self.drops = drops
        self.budget = budget
        self.rxq_ovfl = rxq_ovfl
        self.after = after
        self.core_error = core_error
        #: the event loop's clock (``Endpoint.start`` sets it)
        self.clock: Callable[[], float] = time.monotonic
        self._rx = bytearray(RX_SIZE)
        self._rxv = memoryview(self._rx)
        #: GRO reads that held more than one datagram
        self.gro_batches = 0
        #: per offset in the receive buffer, the buffer list a read there goes into
        self._rooms: dict[int, list[memoryview]] = {}

    def on_udp_gro(self, sock: socket.socket) -> None:
        """A socket with UDP_GRO is readable: one read may hold many datagrams of one size
        from one sender (the last may be shorter), each handled at its offset. The control
        messages also carry the socket's kernel drop count (SO_RXQ_OVFL) once it is not
        zero. A read of one datagram (a sender without GSO, e.g. a TURN server relaying
        datagram by datagram) is kept, and the next read goes behind it, as in ``on_udp``:
        so their inner packets reach the interface together (TCP segments coalesced, one
        flush) instead of one write each."""
        now = self.clock()
        recvmsg = sock.recvmsg_into
        rooms = self._rooms
        rxv = self._rxv
        receive = self.tunnel.receive
        receive_batch = self.tunnel.receive_batch
        write = self.interface.write
        flush = self.interface.flush  # before the next read reuses the buffer
        budget = self.budget
        limit = len(rxv) - MAX_DATAGRAM
        off = 0  # where the next read goes: behind the single datagrams kept
        try:
            while budget > 0:
                if off > limit:
                    flush()
                    off = 0
                try:
                    n, anc, _, addr = recvmsg(rooms.get(off) or self._room(off), ANC_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    self.drops.counts[DropReason.RECEIVE_ERROR] += 1
                    budget -= 1
                    continue
                seg = n
                for level, kind, data in anc:
                    if kind == UDP_GRO and level == SOL_UDP:
                        seg = GRO_SEG.unpack(data)[0]
                    elif kind == SO_RXQ_OVFL and level == socket.SOL_SOCKET:
                        self.rxq_ovfl[sock.fileno()] = U32.unpack(data)[0]
                if seg >= n:
                    budget -= 1
                    m = receive(rxv, off, n, addr, now)
                    if m > 0:
                        write(rxv[off + _PLAIN : off + _PLAIN + m])
                        off += n
                    continue
                self.gro_batches += 1
                receive_batch(rxv[off:] if off else rxv, n, seg, addr, now, write)
                flush()
                off = 0
                budget -= (n + seg - 1) // seg
        except Exception:  # a bug in a core: count it, keep the reader alive
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self.core_error("receive")
        flush()
        self.after(sock)

    def _room(self, off: int) -> list[memoryview]:
        """The buffer list a read at ``off`` goes into (kept per offset: the offsets repeat
        with the datagrams' sizes)."""
        if len(self._rooms) > 1024:
            self._rooms.clear()
        room = self._rooms[off] = [self._rxv[off:]]
        return room

    def on_udp(self, sock: socket.socket) -> None:
        """A socket without GRO is readable: one datagram per read, read one after another
        into the buffer, so that the interface may hold views of the packets it was given
        until it flushes, before the space is reused."""
        now = self.clock()
        recv = sock.recvfrom_into
        rxv = self._rxv
        receive = self.tunnel.receive
        write = self.interface.write
        flush = self.interface.flush
        limit = len(rxv) - MAX_DATAGRAM
        off = 0
        try:
            for _ in range(self.budget):
                if off > limit:
                    flush()
                    off = 0
                try:
                    n, addr = recv(rxv[off:])
                except BlockingIOError:
                    break
                except OSError:
                    # e.g. ECONNREFUSED from an earlier ICMP error; the socket stays usable
                    self.drops.counts[DropReason.RECEIVE_ERROR] += 1
                    continue
                m = receive(rxv, off, n, addr, now)
                if m > 0:
                    write(rxv[off + _PLAIN : off + _PLAIN + m])
                    off += n
        except Exception:  # a bug in a core: count it, keep the reader alive
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self.core_error("receive")
        flush()
        self.after(sock)
