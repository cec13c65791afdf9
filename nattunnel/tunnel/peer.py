"""A tunnel peer: where it is, what it may send, its SAs and its keepalive timer.

Sans-I/O: a ``Peer`` holds state and is driven by ``Tunnel`` with an explicit ``now``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import TYPE_CHECKING

from ..addr import Addr, Network
from ..constants import (
    ESP_PLAINTEXT_OFFSET,
    IPV4_DST_OFFSET,
    IPV4_SRC_OFFSET,
    IPV6_ADDR_LEN,
    IPV6_DST_OFFSET,
    IPV6_SRC_OFFSET,
)
from ..esp.drop import DropCounters, DropReason
from ..esp.sa import InboundSA, OutboundSA, SequenceNumberExhausted

if TYPE_CHECKING:
    import socket

_NO_ENDPOINT = -DropReason.NO_ENDPOINT
_NO_ROUTE = -DropReason.NO_ROUTE
_EXHAUSTED = -DropReason.SEQUENCE_EXHAUSTED
#: where an ESP packet's plaintext starts: after the header and the IV
_PLAIN_OFF = ESP_PLAINTEXT_OFFSET
#: an IPv4 source address
_U32 = struct.Struct("!I")
#: (network, netmask) integers of one family's prefixes
_Masks = tuple[tuple[int, int], ...]


def _covers(selectors: Iterable[Network], allowed: Iterable[Network]) -> bool:
    """Whether every allowed prefix lies inside one of the selectors."""
    sel = list(selectors)
    return all(any(_inside(a, t) for t in sel) for a in allowed)


def _inside(n: Network, o: Network) -> bool:
    if isinstance(n, ipaddress.IPv4Network) and isinstance(o, ipaddress.IPv4Network):
        return n.subnet_of(o)
    if isinstance(n, ipaddress.IPv6Network) and isinstance(o, ipaddress.IPv6Network):
        return n.subnet_of(o)
    return False


def _masks(nets: Iterable[Network], version: int) -> _Masks:
    return tuple((int(n.network_address), int(n.netmask)) for n in nets if n.version == version)

def _shown(addr: Addr) -> list[object]:
    """[host, port] for the stats: an IPv4 address behind a dual-stack socket
    (::ffff:a.b.c.d) as the IPv4 address it is."""
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return [host, addr[1]]

class KeepaliveMode(StrEnum):
    """When to send RFC 3948 NAT-keepalives (one 0xFF octet) to a peer while idle: the one
    definition of the policy, for manual peers (config) and IKE peers alike."""

    #: only if this host is behind NAT towards the peer (configured, or found by IKE)
    NAT = "nat"
    ALWAYS = "always"
    NEVER = "never"

    def wanted(self, behind_nat: bool) -> bool:
        """Whether this side sends keepalives, given whether it is behind NAT."""
        return self is KeepaliveMode.ALWAYS or (self is KeepaliveMode.NAT and behind_nat)


class Peer:
    """One remote tunnel endpoint."""

    __slots__ = (
        "_allowed4",
        "_allowed6",
        "_apart",
        "_lanes4",
        "_lanes6",
        "_sources",
        "addr",
        "allowed",
        "children",
        "drops",
        "inbound",
        "keepalive",
        "keepalive_interval",
        "keepalives_received",
        "keepalives_sent",
        "lane_rekeys",
        "last_rx",
        "last_tx",
        "name",
        "on_lane_rekey",
        "on_rekey",
        "out_base",
        "outbound",
        "rebinds",
        "rekey_signalled",
        "removed",
        "retired",
        "sock",
        "source_drops",
        "tx_bytes",
    )

    def __init__(
        self,
        name: str,
        allowed: Iterable[Network],
        *,
        addr: Addr | None = None,
        keepalive: bool = False,
        keepalive_interval: float = 20.0,
        now: float = 0.0,
        drops: DropCounters | None = None,
    ) -> None:
        """``drops``: where packets this peer refuses to send are counted (the tunnel's)."""
        if keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive")
        self.name = name
        self.allowed: tuple[Network, ...] = tuple(allowed)
        self._allowed4 = _masks(self.allowed, 4)
        self._allowed6 = _masks(self.allowed, 6)
        #: the negotiated child SAs, oldest first: inbound SPI -> (outbound SA, the child's
        #: remote traffic selectors) (``add_child``)
        self.children: dict[int, tuple[OutboundSA, tuple[Network, ...]]] = {}
        #: only while children carry different remote selectors: the outbound SA per
        #: destination prefix (most specific first) and each inbound SA's allowed sources;
        #: empty with one child (or several alike), where ``outbound`` carries everything
        self._apart = False
        self._lanes4: tuple[tuple[int, int, OutboundSA], ...] = ()
        self._lanes6: tuple[tuple[int, int, OutboundSA], ...] = ()
        self._sources: dict[int, tuple[_Masks, _Masks]] = {}
        #: where packets go: configured, or learned from authenticated packets (NAT rebinding)
        self.addr: Addr | None = addr
        #: the endpoint's socket for ``addr`` (set and used by the endpoint; the core never
        #: touches it)
        self.sock: socket.socket | None = None
        self.outbound: OutboundSA | None = None
        self.inbound: list[InboundSA] = []
        #: whether this side sends NAT keepalives to the peer (RFC 3948 section 4)
        self.keepalive = keepalive
        self.keepalive_interval = keepalive_interval
        self.last_tx = now
        self.last_rx = now
        self.keepalives_sent = 0
        #: inner octets sent, across every outbound SA the peer had (byte lifetimes of
        #: negotiated SAs, and the status)
        self.tx_bytes = 0
        #: what SAs that are gone carried: [tx packets, rx packets, rx octets] (the live ones
        #: add theirs: ``totals``), so that the counters survive rekeys at no cost per packet
        self.retired = [0, 0, 0]
        #: the outbound SA's packets and our tx_bytes when it became the one in use
        self.out_base = (0, 0)
        self.keepalives_received = 0
        self.rebinds = 0
        self.source_drops = 0
        self.rekey_signalled = False
        #: called once when the outbound SA passes its soft limit (the Tunnel raises an event)
        self.on_rekey: Callable[[Peer], None] | None = None
        #: the same for an outbound SA of a child routed apart that is not ``outbound``
        #: (once per SA: ``lane_rekeys``)
        self.on_lane_rekey: Callable[[Peer, OutboundSA], None] | None = None
        self.lane_rekeys: set[int] = set()
        self.removed = False
        self.drops = drops if drops is not None else DropCounters()

    def source_allowed_at(self, buf: bytes | bytearray | memoryview, at: int,
                          spi: int | None = None) -> bool:
        """RFC 4301 section 5.2: whether the inner packet at ``buf[at:]`` (IPv4, or else IPv6)
        comes from a source in the peer's allowed prefixes, and, if it came in on inbound SA
        ``spi`` of a child with its own selectors, in that child's (``source_allowed_on``)."""
        if self._sources and spi is not None and not self.source_allowed_on(spi, buf, at):
            return False
        # Plain loops: any() with a generator costs a frame per call on the per-packet path.
        if buf[at] >> 4 == 4:
            src = _U32.unpack_from(buf, at + IPV4_SRC_OFFSET)[0]
            for net, mask in self._allowed4:  # noqa: SIM110
                if src & mask == net:
                    return True
            return False
        at += IPV6_SRC_OFFSET
        src = int.from_bytes(buf[at : at + IPV6_ADDR_LEN], "big")
        for net, mask in self._allowed6:  # noqa: SIM110
            if src & mask == net:
                return True
        return False

    def source_allowed_on(self, spi: int, buf: bytes | bytearray | memoryview, at: int) -> bool:
        """RFC 4301 section 5.2 per child SA: whether the inner packet at ``buf[at:]``, which
        came in on inbound SA ``spi``, comes from inside that child's remote traffic
        selectors (True for an SA without its own, e.g. with one child)."""
        sel = self._sources.get(spi)
        if sel is None:
            return True
        if buf[at] >> 4 == 4:
            src = _U32.unpack_from(buf, at + IPV4_SRC_OFFSET)[0]
            for net, mask in sel[0]:  # noqa: SIM110
                if src & mask == net:
                    return True
            return False
        at += IPV6_SRC_OFFSET
        src = int.from_bytes(buf[at : at + IPV6_ADDR_LEN], "big")
        for net, mask in sel[1]:  # noqa: SIM110
            if src & mask == net:
                return True
        return False

    def _lane(self, out: memoryview, at: int) -> OutboundSA | None:
        """The outbound SA of the child whose remote selectors hold the destination of the
        inner packet at ``out[at:]`` (children routed apart), or None: none holds it."""
        if out[at] >> 4 == 4:
            dst = _U32.unpack_from(out, at + IPV4_DST_OFFSET)[0]
            for net, mask, sa in self._lanes4:
                if dst & mask == net:
                    return sa
            return None
        at += IPV6_DST_OFFSET
        dst = int.from_bytes(out[at : at + IPV6_ADDR_LEN], "big")
        for net, mask, sa in self._lanes6:
            if dst & mask == net:
                return sa
        return None

    def encapsulate_into(
        self, inner: bytes | bytearray | memoryview, out: memoryview, now: float, off: int = 0
    ) -> int:
        """ESP packet for ``inner`` at ``out[off:]``: its length, or ``-DropReason``."""
        n = len(inner)
        out[off + _PLAIN_OFF : off + _PLAIN_OFF + n] = inner
        return self.encapsulate_in_place(out, off, n, now)

    def encapsulate_in_place(self, out: memoryview, off: int, n: int, now: float) -> int:
        """As ``encapsulate_into`` for an n-octet inner packet already at ``out[off + 16:]``
        (``OutboundSA.encapsulate_in_place``). A refusal (no SA or address, sequence numbers
        exhausted) is counted in ``drops``."""
        if self._apart:  # children with their own selectors: the one for dst, or none
            return self._encapsulate_lane(out, off, n, now)
        sa = self.outbound
        if sa is None or self.addr is None:
            self.drops.counts[DropReason.NO_ENDPOINT] += 1
            return _NO_ENDPOINT
        try:
            m = sa.encapsulate_in_place(out, off, n)
        except SequenceNumberExhausted:
            self.drops.counts[DropReason.SEQUENCE_EXHAUSTED] += 1
            return _EXHAUSTED
        self.last_tx = now
        self.tx_bytes += n
        if sa.rekey_needed and not self.rekey_signalled and self.on_rekey is not None:
            self.on_rekey(self)
        return m

    def _encapsulate_lane(self, out: memoryview, off: int, n: int, now: float) -> int:
        """``encapsulate_in_place`` on the child SA for the destination (``_lane``)."""
        sa = self._lane(out, off + _PLAIN_OFF)
        if sa is None:
            self.drops.counts[DropReason.NO_ROUTE] += 1
            return _NO_ROUTE
        if self.addr is None:
            self.drops.counts[DropReason.NO_ENDPOINT] += 1
            return _NO_ENDPOINT
        try:
            m = sa.encapsulate_in_place(out, off, n)
        except SequenceNumberExhausted:
            self.drops.counts[DropReason.SEQUENCE_EXHAUSTED] += 1
            return _EXHAUSTED
        self.last_tx = now
        self.tx_bytes += n
        if sa is self.outbound:
            if sa.rekey_needed and not self.rekey_signalled and self.on_rekey is not None:
                self.on_rekey(self)
        else:
            self.retired[0] += 1  # ``totals`` counts only ``outbound``'s own packets
            if sa.rekey_needed and sa.spi not in self.lane_rekeys and self.on_lane_rekey:
                self.lane_rekeys.add(sa.spi)
                self.on_lane_rekey(self, sa)
        return m

    # --- child SAs and their traffic selectors ---------------------------------------------
    def add_child(self, spi_in: int, outbound: OutboundSA, remote_ts: Iterable[Network]) -> None:
        """A child SA is up (IKE's ChildUp): packets to ``remote_ts`` go out on
        ``outbound`` (the newest child for a prefix wins: a rekey takes over at once), and
        what comes in on ``spi_in`` must come from ``remote_ts``. Children with different
        selectors are routed apart (and so is one child narrower than the peer's allowed
        prefixes: what lies outside every child's selectors is dropped, NO_ROUTE); one child
        whose selectors cover the allowed prefixes (or several alike) costs nothing per
        packet: ``outbound`` carries everything, as without children."""
        self.children[spi_in] = (outbound, tuple(remote_ts))
        self._rebuild()

    def drop_child(self, spi_in: int) -> None:
        """The child SA of inbound SPI ``spi_in`` is gone: only its prefixes stop going out
        on it (the others' stay). Its inbound SA keeps its source check until removed."""
        gone = self.children.pop(spi_in, None)
        if gone is not None:
            self.lane_rekeys.discard(gone[0].spi)
            self._rebuild()

    def _rebuild(self) -> None:
        kinds = {frozenset(ts) for _, ts in self.children.values()}
        if not kinds or (len(kinds) == 1 and _covers(next(iter(kinds)), self.allowed)):
            self._apart = False
            self._lanes4 = self._lanes6 = ()
            for spi in self.children:
                self._sources.pop(spi, None)
            return
        self._apart = True
        best: dict[Network, OutboundSA] = {}
        for spi, (sa, ts) in self.children.items():  # oldest first: the newest wins
            self._sources[spi] = (_masks(ts, 4), _masks(ts, 6))
            for net in ts:
                best[net] = sa
        ordered = sorted(best.items(), key=lambda item: -item[0].prefixlen)
        self._lanes4 = tuple((int(n.network_address), int(n.netmask), sa)
                             for n, sa in ordered if n.version == 4)
        self._lanes6 = tuple((int(n.network_address), int(n.netmask), sa)
                             for n, sa in ordered if n.version == 6)

    def child_routes(self) -> dict[str, int]:
        """Each remote prefix and the outbound SPI it goes out on (several children routed
        apart; empty otherwise), for the status and tests."""
        out: dict[str, int] = {}
        for lanes, version in ((self._lanes4, 4), (self._lanes6, 6)):
            for net, mask, sa in lanes:
                length = bin(mask).count("1")
                n = (ipaddress.IPv4Network((net, length)) if version == 4
                     else ipaddress.IPv6Network((net, length)))
                out[str(n)] = sa.spi
        return out

    def sending_sa(self, spi_out: int) -> OutboundSA | None:
        """The outbound SA with ``spi_out`` if packets go out on it (the one in use, or a
        child SA routed apart), else None: for the status."""
        if self.outbound is not None and self.outbound.spi == spi_out:
            return self.outbound
        return next((sa for lanes in (self._lanes4, self._lanes6) for _, _, sa in lanes
                     if sa.spi == spi_out), None)

    # --- the counters, across SAs ---------------------------------------------------------
    def use_outbound(self, sa: OutboundSA | None) -> None:
        """``sa`` is the outbound SA from now on (``Tunnel.set_outbound``): what the one
        before sent while in use is kept in ``retired``."""
        old = self.outbound
        if old is not None:
            self.retired[0] += old.packets - self.out_base[0]
        self.outbound = sa
        self.out_base = (sa.packets if sa is not None else 0, self.tx_bytes)

    def retire_inbound(self, sa: InboundSA) -> None:
        """``sa`` is gone (``Tunnel.remove_inbound``): what it received is kept."""
        self._sources.pop(sa.spi, None)
        self.retired[1] += sa.packets
        self.retired[2] += sa.bytes

    def totals(self) -> tuple[int, int, int, int]:
        """(tx packets, tx octets, rx packets, rx octets) of inner packets, across every SA
        the peer had: these survive rekeys."""
        out = self.outbound
        tx = self.retired[0] + (out.packets - self.out_base[0] if out is not None else 0)
        rx_packets = self.retired[1] + sum(sa.packets for sa in self.inbound)
        rx_bytes = self.retired[2] + sum(sa.bytes for sa in self.inbound)
        return tx, self.tx_bytes, rx_packets, rx_bytes

    def outbound_bytes(self) -> int:
        """Inner octets sent on the outbound SA in use since it became the one in use."""
        return self.tx_bytes - self.out_base[1]

    def stats(self) -> dict[str, object]:
        """The counters (cumulative across rekeys: ``totals``) for ``--stats``."""
        out = self.outbound
        tx_packets, tx_bytes, rx_packets, rx_bytes = self.totals()
        return {
            "addr": _shown(self.addr) if self.addr else None,
            "allowed_ips": [str(n) for n in self.allowed],
            "tx_packets": tx_packets,
            "tx_bytes": tx_bytes,
            "rx_packets": rx_packets,
            "rx_bytes": rx_bytes,
            "keepalives_sent": self.keepalives_sent,
            "keepalives_received": self.keepalives_received,
            "rebinds": self.rebinds,
            "source_drops": self.source_drops,
            "rekey_needed": bool(out and out.rekey_needed),
            "sa_drops": {
                f"{sa.spi:#010x}": sa.drops.as_dict() for sa in self.inbound if sa.drops.total()
            },
        }
