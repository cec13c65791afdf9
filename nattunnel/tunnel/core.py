"""The tunnel core, sans-I/O: RFC 3948 demultiplexing, SAs by SPI, routes by inner prefix,
NAT rebinding and NAT keepalives.

``Tunnel`` is fed received datagrams and inner packets with an explicit ``now``; it returns
inner packets to deliver and ESP packets to send. The rest follows the contract every core
follows (docs/architecture.md): ``get_timer()`` is its next deadline, ``handle_timer(now)``
runs what is due, ``datagrams_to_send()`` gives what that made to send (NAT keepalives), and
``next_event()`` what happened (a peer moved, an SA wants a rekey). It owns no socket,
no device and no clock: the asyncio endpoint (``nattunnel.io.endpoint``) moves the bytes, and tests
pair two cores in memory.

Received datagrams:
- ESP with a known SPI: decapsulated in place; the inner source must lie in the peer's allowed
  prefixes; an authenticated packet from a new address moves the peer there (NAT rebinding,
  never on an unauthenticated packet, since the SA checks ICV and replay first).
- a NAT-keepalive (one 0xFF octet): counted and dropped (RFC 3948 section 2.3).
- IKE behind the non-ESP marker: handed to the IKE handler, if one is installed.
- STUN (RFC 8489; ``esp.udpencap.is_stun``): handed to the STUN handler, if one is installed
  and every inbound SPI is at least SPI_STUN_SAFE_MIN (docs/wire-format.md, "STUN on port
  4500"); it is looked for only in what is not ESP for one of our SAs, so ESP pays nothing.
- anything else: dropped with a counted ``DropReason``.

A datagram from a TURN server (``relay_servers``, docs/wire-format.md, "TURN relay on port
4500") is never ESP: it goes to the relay handler (the endpoint's ``TurnClient``), and the
peer data it carried (ChannelData, a Data indication) is moved to where the datagram began
and handled as if it had come from the peer's address as the server reports it, so that ESP,
IKE, rebinding and the SA lookup are the same as for a direct peer. The cost for direct ESP:
one test of an empty set per datagram (``receive``) or per GRO read (``receive_batch``).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ..addr import Addr, Network
from ..constants import (
    ESP_HEADER_LEN,
    ESP_PLAINTEXT_OFFSET,
    IPV4_DST_OFFSET,
    IPV4_HEADER_LEN,
    IPV4_SRC_OFFSET,
    IPV6_ADDR_LEN,
    IPV6_DST_OFFSET,
    IPV6_HEADER_LEN,
    NAT_KEEPALIVE,
    SPI_RESERVED_MAX,
    SPI_STUN_SAFE_MIN,
    STUN_FIRST_OCTET_LIMIT,
)
from ..esp.drop import DropCounters, DropReason
from ..esp.sa import InboundSA, OutboundSA
from ..esp.udpencap import Kind, classify, ike_payload, is_stun
from .deadlines import DeadlineHeap
from .peer import Peer
from .prefixes import PrefixTable

_U32: Final = struct.Struct("!I")
#: return value of ``receive`` for a datagram the control plane consumed (keepalive, IKE)
CONSUMED: Final = -1000
_SOURCE_NOT_ALLOWED: Final = -DropReason.SOURCE_NOT_ALLOWED
_UNKNOWN_SPI: Final = -DropReason.UNKNOWN_SPI
_NO_ROUTE: Final = -DropReason.NO_ROUTE
_ROUTE_CACHE_MAX: Final = 4096
#: where an ESP packet's plaintext, the inner packet, starts
_PLAIN: Final = ESP_PLAINTEXT_OFFSET

IkeHandler = Callable[[memoryview, Addr, float], None]
#: gets a STUN message (a view into the receive buffer, valid during the call), its source
#: and the time; True if it was an answer it waited for (StunClient.receive)
StunHandler = Callable[[memoryview, Addr, float], bool]
#: gets a datagram from a TURN server (a view, valid during the call), its source and the
#: time; (peer address, start, end) of the peer data in it, or None (consumed or dropped)
RelayHandler = Callable[[memoryview, Addr, float], "tuple[Addr, int, int] | None"]


@dataclass(frozen=True, slots=True)
class PeerMoved:
    """An authenticated packet came from a new address: the peer now lives there."""

    peer: str
    old: Addr | None
    new: Addr


@dataclass(frozen=True, slots=True)
class RekeyNeeded:
    """An outbound SA passed its soft sequence-number limit (RFC 4303 section 3.3.3)."""

    peer: str
    spi: int


Event = PeerMoved | RekeyNeeded


class Tunnel:
    """Peers, SAs and routes of one endpoint."""

    def __init__(self, ike_handler: IkeHandler | None = None) -> None:
        self.peers: dict[str, Peer] = {}
        self.ike_handler = ike_handler
        #: datagram drops that belong to no SA (unknown SPI, malformed, source not allowed...)
        self.drops = DropCounters()
        self.keepalives_received = 0
        #: STUN messages: the handler (``Endpoint`` installs its STUN client's), how many it
        #: was given, how many of those it did not wait for (late, duplicate, foreign: junk,
        #: also counted as UNKNOWN_SPI, so that a flood of them engages the socket filter
        #: like any other), and how many were not demultiplexed because an inbound SPI below
        #: SPI_STUN_SAFE_MIN (a manual SA's) could make them ambiguous (``stun_unsafe_spis``;
        #: they are counted as UNKNOWN_SPI too, as without STUN)
        self.stun_handler: StunHandler | None = None
        self.stun_received = 0
        self.stun_unmatched = 0
        self.stun_ignored = 0
        self._stun_unsafe: set[int] = set()
        #: the TURN servers' addresses (as the sockets write them) and the handler of what
        #: comes from them (``Endpoint.start_relay``); relayed datagrams counted
        self.relay_servers: set[Addr] = set()
        self.relay_handler: RelayHandler | None = None
        self.relay_received = 0
        #: what happened, oldest first (``next_event``)
        self.events: deque[Event] = deque()
        self._by_spi: dict[int, tuple[InboundSA, Peer]] = {}
        self._by_addr: dict[Addr, Peer] = {}
        #: every peer's allowed prefixes (disjoint across peers): routes and the source check
        self._prefixes: PrefixTable[Peer] = PrefixTable()
        self._cache4: dict[int, Peer | None] = {}
        self._cache6: dict[int, Peer | None] = {}
        #: each peer with NAT keepalives: when its next one may be due
        self._timers: DeadlineHeap[Peer] = DeadlineHeap()
        self._outgoing: list[tuple[Peer, bytes]] = []
        self._results: list[int] = []  # per-run results of InboundSA.decapsulate_run
        #: called after the set of inbound SPIs changed (the endpoint's socket filter)
        self.on_spis_changed: Callable[[], None] | None = None
        #: how the endpoint's sockets write an address (an IPv4 address as ::ffff:a.b.c.d
        #: behind a dual-stack ``[::]`` socket, ``Endpoint``): applied to every address a
        #: peer is given (``add_peer``, ``set_peer_address``), so that it compares equal to
        #: what the kernel reports for the peer's packets. None: as given.
        self.map_address: Callable[[Addr], Addr] | None = None

    # --- configuration ------------------------------------------------------------------------
    def add_peer(
        self,
        name: str,
        allowed: Iterable[Network],
        *,
        addr: Addr | None = None,
        keepalive: bool = False,
        keepalive_interval: float = 20.0,
        now: float = 0.0,
    ) -> Peer:
        if name in self.peers:
            raise ValueError(f"peer {name!r} exists")
        if addr is not None and self.map_address is not None:
            addr = self.map_address(addr)
        peer = Peer(name, allowed, addr=addr, keepalive=keepalive,
                    keepalive_interval=keepalive_interval, now=now, drops=self.drops)
        for net in peer.allowed:
            if (c := self._prefixes.conflict(net)) is not None:
                theirs, other = c
                raise ValueError(
                    f"peer {name!r}: allowed prefix {net} overlaps {theirs} of peer "
                    f"{other.name!r}"
                )
        self._prefixes.add_all(peer.allowed, peer)
        peer.on_rekey = self.check_rekey
        peer.on_lane_rekey = self._lane_rekey
        self.peers[name] = peer
        if addr is not None:
            self._by_addr[addr] = peer
        self._clear_route_cache()
        if keepalive:
            self._schedule(peer, now + keepalive_interval)
        return peer

    def remove_peer(self, name: str) -> None:
        peer = self.peers.pop(name)
        peer.removed = True
        for sa in peer.inbound:
            self._by_spi.pop(sa.spi, None)
            self._stun_unsafe.discard(sa.spi)
        if peer.addr is not None and self._by_addr.get(peer.addr) is peer:
            del self._by_addr[peer.addr]
        self._prefixes.remove(peer)
        self._timers.cancel(peer)
        self._clear_route_cache()
        if peer.inbound and self.on_spis_changed is not None:
            self.on_spis_changed()

    def install_inbound(self, peer: Peer, sa: InboundSA) -> None:
        """Accept packets with ``sa.spi`` from ``peer`` (old SAs stay until removed)."""
        if sa.spi in self._by_spi:
            raise ValueError(f"inbound SPI {sa.spi:#010x} is in use")
        self._by_spi[sa.spi] = (sa, peer)
        if sa.spi < SPI_STUN_SAFE_MIN:
            self._stun_unsafe.add(sa.spi)
        peer.inbound.append(sa)
        if self.on_spis_changed is not None:
            self.on_spis_changed()

    def inbound_spis(self) -> list[int]:
        """Every inbound SPI in use."""
        return list(self._by_spi)

    def stun_unsafe_spis(self) -> list[int]:
        """Inbound SPIs below SPI_STUN_SAFE_MIN (manual SAs'): while there is one, a STUN
        message could be ESP for it, and STUN is not demultiplexed."""
        return sorted(self._stun_unsafe)

    @property
    def stun_demux(self) -> bool:
        """STUN messages go to the STUN handler: one is installed and no inbound SPI is
        below SPI_STUN_SAFE_MIN."""
        return self.stun_handler is not None and not self._stun_unsafe

    def inbound_sa(self, spi: int) -> InboundSA | None:
        entry = self._by_spi.get(spi)
        return entry[0] if entry else None

    def remove_inbound(self, spi: int) -> None:
        sa, peer = self._by_spi.pop(spi)
        self._stun_unsafe.discard(spi)
        peer.inbound.remove(sa)
        peer.retire_inbound(sa)
        if self.on_spis_changed is not None:
            self.on_spis_changed()

    def set_outbound(self, peer: Peer, sa: OutboundSA | None) -> None:
        """``sa`` is the peer's outbound SA from now on (None: nothing is sent to it)."""
        peer.use_outbound(sa)
        peer.rekey_signalled = False

    def set_peer_address(self, peer: Peer, addr: Addr) -> None:
        """Point the peer at ``addr`` (the control plane learned it, e.g. from IKE)."""
        if self.map_address is not None:
            addr = self.map_address(addr)
        if addr != peer.addr:
            self._moved(peer, addr)

    def remap_addresses(self) -> None:
        """Apply ``map_address`` (just set) to the peers' addresses: the same address
        written the sockets' way, not a move (no event, no rebind counted)."""
        if self.map_address is None:
            return
        for peer in self.peers.values():
            if peer.addr is None:
                continue
            new = self.map_address(peer.addr)
            if new != peer.addr:
                if self._by_addr.get(peer.addr) is peer:
                    del self._by_addr[peer.addr]
                peer.addr = new
                self._by_addr[new] = peer

    def set_keepalive(self, peer: Peer, on: bool, now: float = 0.0) -> None:
        """Send NAT keepalives to ``peer`` (IKE found this side behind NAT) or stop."""
        if on and not peer.keepalive:
            peer.keepalive = True
            self._schedule(peer, max(now, peer.last_tx) + peer.keepalive_interval)
        elif not on:
            peer.keepalive = False
            self._timers.cancel(peer)

    def _clear_route_cache(self) -> None:
        self._cache4 = {}
        self._cache6 = {}

    # --- inner packets out --------------------------------------------------------------------
    # One send path: ``route_at`` finds the peer of the inner packet where it lies, then
    # ``Peer.encapsulate_in_place`` encrypts it there (the endpoint's drain reads packets
    # straight into its send buffer) and counts a refusal in the tunnel's drops.
    # ``encapsulate_into`` is the same two steps for a packet given as bytes.
    def route(self, inner: bytes | bytearray | memoryview) -> Peer | None:
        """The peer whose allowed prefixes hold the inner packet's destination (prefixes of
        different peers never overlap, so there is at most one)."""
        return self.route_at(inner, 0, len(inner))

    def route_at(self, buf: bytes | bytearray | memoryview, at: int, n: int) -> Peer | None:
        """``route`` for the n-octet inner packet at ``buf[at:]``."""
        if n >= IPV4_HEADER_LEN and buf[at] >> 4 == 4:
            dst = _U32.unpack_from(buf, at + IPV4_DST_OFFSET)[0]
            try:
                return self._cache4[dst]
            except KeyError:
                return self._lookup(dst, self._prefixes.lookup4, self._cache4)
        if n >= IPV6_HEADER_LEN and buf[at] >> 4 == 6:
            dst6 = int.from_bytes(buf[at + IPV6_DST_OFFSET : at + IPV6_DST_OFFSET + IPV6_ADDR_LEN],
                                  "big")
            try:
                return self._cache6[dst6]
            except KeyError:
                return self._lookup(dst6, self._prefixes.lookup6, self._cache6)
        return None

    @staticmethod
    def _lookup(
        dst: int, lookup: Callable[[int], Peer | None], cache: dict[int, Peer | None]
    ) -> Peer | None:
        found = lookup(dst)
        if len(cache) >= _ROUTE_CACHE_MAX:
            cache.clear()
        cache[dst] = found
        return found

    def encapsulate_into(
        self, inner: bytes | bytearray | memoryview, out: memoryview, now: float, off: int = 0
    ) -> tuple[Peer | None, int]:
        """Route and encapsulate one inner packet: (peer, the ESP packet's length at
        ``out[off:]``), or (peer or None, ``-DropReason``), counted."""
        peer = self.route(inner)
        if peer is None:
            self.drops.counts[DropReason.NO_ROUTE] += 1
            return None, _NO_ROUTE
        return peer, peer.encapsulate_into(inner, out, now, off)

    def check_rekey(self, peer: Peer) -> None:
        sa = peer.outbound
        if sa is not None and sa.rekey_needed and not peer.rekey_signalled:
            peer.rekey_signalled = True
            self.events.append(RekeyNeeded(peer.name, sa.spi))

    def _lane_rekey(self, peer: Peer, sa: OutboundSA) -> None:
        """A child SA routed apart (``Peer.add_child``), not the peer's ``outbound``, passed
        its soft limit."""
        self.events.append(RekeyNeeded(peer.name, sa.spi))

    # --- datagrams in -------------------------------------------------------------------------
    # One receive path: ``receive`` is a run of one datagram, ``receive_batch`` runs of one
    # SPI within a GRO read. Both decrypt with the SA (``InboundSA.decapsulate_into`` is the
    # one-packet form of ``decapsulate_run``), then check the inner source (``_source_ok``)
    # and let an authentic packet move the peer (``_heard``).
    def receive(self, buf: memoryview, off: int, n: int, addr: Addr, now: float) -> int:
        """Handle the n-octet UDP payload at ``buf[off:]`` from ``addr``.

        Returns the inner packet's length ``m`` (the packet is ``buf[off+16 : off+16+m]``,
        16 being ESP_PLAINTEXT_OFFSET), ``CONSUMED`` for keepalives and IKE, or
        ``-DropReason``.
        """
        if self.relay_servers and addr in self.relay_servers:
            return self._receive_relayed(buf, off, n, addr, now)
        if n >= ESP_HEADER_LEN:
            entry = self._by_spi.get(_U32.unpack_from(buf, off)[0])
            if entry is not None:
                sa, peer = entry
                m = sa.decapsulate_into(buf, off, n)
                if m > 0:
                    if not self._source_ok(sa, peer, buf, off + _PLAIN, m):
                        return _SOURCE_NOT_ALLOWED
                    self._heard(peer, addr, now)
                return m
        return self._receive_other(buf, off, n, addr, now)

    def receive_batch(self, buf: memoryview, n: int, seg: int, addr: Addr, now: float,
                      deliver: Callable[[memoryview], object]) -> None:
        """Handle one UDP GRO read: datagrams of ``seg`` octets side by side in ``buf[:n]``
        (the last may be shorter), all from ``addr``. Each inner packet is passed to
        ``deliver`` (a view into ``buf``, valid during the call) in order.

        The same checks and counters as ``receive`` on each datagram; runs of one SPI are
        decapsulated by ``InboundSA.decapsulate_run`` and their inner sources checked against
        the last allowed one first.
        """
        by_spi = self._by_spi
        unpack = _U32.unpack_from
        results = self._results
        off = 0
        if self.relay_servers and addr in self.relay_servers:
            while off < n:
                size = seg if off + seg <= n else n - off
                m = self._receive_relayed(buf, off, size, addr, now)
                if m > 0:
                    deliver(buf[off + _PLAIN : off + _PLAIN + m])
                off += seg
            return
        while off < n:
            size = seg if off + seg <= n else n - off
            entry = by_spi.get(unpack(buf, off)[0]) if size >= ESP_HEADER_LEN else None
            if entry is None:
                m = self._receive_other(buf, off, size, addr, now)
                if m > 0:
                    deliver(buf[off + _PLAIN : off + _PLAIN + m])
                off += seg
                continue
            sa, peer = entry
            results.clear()
            start = off
            off = sa.decapsulate_run(buf, off, n, seg, results)
            ok4 = -1  # the last inner IPv4 source found allowed in this run
            delivered = False
            ct = start + _PLAIN
            for m in results:
                if m > 0:
                    if buf[ct] >> 4 != 4 or unpack(buf, ct + IPV4_SRC_OFFSET)[0] != ok4:
                        if not self._source_ok(sa, peer, buf, ct, m):
                            ct += seg
                            continue
                        if buf[ct] >> 4 == 4:
                            ok4 = unpack(buf, ct + IPV4_SRC_OFFSET)[0]
                    delivered = True
                    deliver(buf[ct : ct + m])
                ct += seg
            if delivered:
                self._heard(peer, addr, now)

    def _source_ok(self, sa: InboundSA, peer: Peer, buf: memoryview, at: int, m: int) -> bool:
        """RFC 4301 section 5.2: the inner source must be one the SA may carry. A packet that
        fails is counted (and no longer counted as the SA's)."""
        if peer.source_allowed_at(buf, at, sa.spi):
            return True
        # the SA counted it as delivered; it is not
        sa.packets -= 1
        sa.bytes -= m
        peer.source_drops += 1
        self.drops.counts[DropReason.SOURCE_NOT_ALLOWED] += 1
        return False

    def _heard(self, peer: Peer, addr: Addr, now: float) -> None:
        """An authentic packet from ``peer`` came from ``addr``: it lives there now (NAT
        rebinding; never on an unauthenticated packet, since the SA checks ICV and replay
        first)."""
        peer.last_rx = now
        if addr != peer.addr:
            self._moved(peer, addr)

    def _receive_relayed(self, buf: memoryview, off: int, n: int, addr: Addr,
                         now: float) -> int:
        """A datagram from a TURN server: the relay handler's, and the peer data in it
        handled in place as if it came from the peer."""
        handler = self.relay_handler
        if handler is None:
            self.drops.counts[DropReason.UNKNOWN_SPI] += 1
            return _UNKNOWN_SPI
        found = handler(buf[off : off + n], addr, now)
        if found is None:
            return CONSUMED
        peer_addr, start, end = found
        if self.map_address is not None:
            peer_addr = self.map_address(peer_addr)
        if peer_addr in self.relay_servers:  # a server as its own peer: never
            self.drops.counts[DropReason.UNKNOWN_SPI] += 1
            return _UNKNOWN_SPI
        self.relay_received += 1
        size = end - start
        buf[off : off + size] = buf[off + start : off + end]
        return self.receive(buf, off, size, peer_addr, now)

    def _receive_other(self, buf: memoryview, off: int, n: int, addr: Addr, now: float) -> int:
        if n >= ESP_HEADER_LEN and _U32.unpack_from(buf, off)[0] > SPI_RESERVED_MAX:
            # STUN, or ESP for no SA of ours (what classify would say, without building its
            # answer): a flood of junk costs a lookup, a comparison or two and a count
            if (self.stun_handler is not None and buf[off] < STUN_FIRST_OCTET_LIMIT
                    and is_stun(buf, off, n)):
                if not self._stun_unsafe:
                    self.stun_received += 1
                    if self.stun_handler(buf[off : off + n], addr, now):
                        return CONSUMED
                    self.stun_unmatched += 1
                else:
                    self.stun_ignored += 1
            self.drops.counts[DropReason.UNKNOWN_SPI] += 1
            return _UNKNOWN_SPI
        data = buf[off : off + n]
        c = classify(data)
        if c.kind is Kind.KEEPALIVE:
            self.keepalives_received += 1
            peer = self._by_addr.get(addr)
            if peer is not None:
                peer.keepalives_received += 1
            return CONSUMED
        if c.kind is Kind.IKE:
            if self.ike_handler is None:
                self.drops.counts[DropReason.NO_IKE_HANDLER] += 1
                return -DropReason.NO_IKE_HANDLER
            self.ike_handler(ike_payload(data), addr, now)
            return CONSUMED
        # ESP for no SA of ours (or, never here, STUN: an SPI above 255 went first)
        reason = c.reason if c.reason is not None else DropReason.UNKNOWN_SPI
        self.drops.counts[reason] += 1
        return -reason

    def _moved(self, peer: Peer, addr: Addr) -> None:
        old = peer.addr
        if old is not None:
            peer.rebinds += 1
            if self._by_addr.get(old) is peer:
                del self._by_addr[old]
        peer.addr = addr
        self._by_addr[addr] = peer
        self.events.append(PeerMoved(peer.name, old, addr))

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self.events.popleft() if self.events else None

    # --- timers -------------------------------------------------------------------------------
    def _schedule(self, peer: Peer, when: float) -> None:
        self._timers.schedule(peer, when)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` next has work: the earliest keepalive that may be due."""
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        """NAT keepalives to peers idle for their interval (``datagrams_to_send``).

        One deadline per peer with keepalives; one that finds traffic was sent since it was
        armed re-arms for last_tx + interval (no per-packet timer work).
        """
        for peer in self._timers.pop_due(now):
            if peer.removed or not peer.keepalive:
                continue
            due = peer.last_tx + peer.keepalive_interval
            if due <= now:
                if peer.addr is not None:
                    self._outgoing.append((peer, NAT_KEEPALIVE))
                    peer.keepalives_sent += 1
                    peer.last_tx = now
                due = now + peer.keepalive_interval
            self._schedule(peer, due)

    def datagrams_to_send(self) -> list[tuple[Peer, bytes]]:
        """Control datagrams to send (NAT keepalives), each with its peer; taken once."""
        out, self._outgoing = self._outgoing, []
        return out

    def stats(self) -> dict[str, object]:
        return {
            "peers": {name: p.stats() for name, p in self.peers.items()},
            "drops": self.drops.as_dict(),
            "keepalives_received": self.keepalives_received,
            "stun": {"received": self.stun_received, "unmatched": self.stun_unmatched,
                     "ignored": self.stun_ignored, "demux": self.stun_demux},
            "relay_received": self.relay_received,
        }
