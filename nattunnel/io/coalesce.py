"""TCP and UDP coalescing for TUN writes with a virtio-net header (IFF_VNET_HDR).

Decapsulated IPv4 TCP segments that continue one another (same addresses and ports, next
sequence number, same header length, the same TOS, TTL and DF as the kernel's GRO asks, so
that an ECN CE mark is never merged away; only ACK/PSH set, payloads of one size with
possibly a shorter last one) are joined into one GSO super-packet: one ``writev`` to the TUN
device instead of dozens, and the kernel's TCP receive path handles them as one (fewer ACKs
back through the tunnel). The virtio-net header says how to cut it again (``gso_size``) and
that the TCP checksum is still to be completed (``NEEDS_CSUM``: the field holds the
pseudo-header sum).

Where the device takes UDP segmentation offload (Linux 6.2 and later: ``TunDevice`` probes it
with TUNSETOFFLOAD, ``uso``), consecutive UDP datagrams of one flow (IPv4 or IPv6: the same
addresses, ports and IP header fields, payloads of one size with possibly a shorter last one,
at most 64 of them and 64 KiB) are joined the same way into one ``VIRTIO_NET_HDR_GSO_UDP_L4``
super-packet, which the kernel cuts into the original datagrams again (``__udp_gso_segment``)
before any socket or the next hop sees them. Its UDP checksum field holds the pseudo-header
sum of the whole super-packet with ``NEEDS_CSUM`` (the kernel requires both for this GSO type,
and so fills in every datagram's checksum, also one that came with 0 over IPv4). Without the
offload, or when the kernel refuses such a write (EINVAL), datagrams go one per write.

Everything else is written as it came, behind an all-zero header.

Layout of ``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h): flags (u8),
gso_type (u8), hdr_len, gso_size, csum_start, csum_offset (u16, host order for a TUN device
on a little-endian host: the legacy header is in native order).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Final

log = logging.getLogger("nattunnel")

VNET_HDR_LEN: Final = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1
VIRTIO_NET_HDR_GSO_UDP_L4: Final = 5
#: the most datagrams the kernel cuts one UDP super-packet into (UDP_MAX_SEGMENTS)
UDP_MAX_SEGMENTS: Final = 64
ZERO_HDR: Final = bytes(VNET_HDR_LEN)

_VNET: Final = struct.Struct("=BBHHHH")
#: IPv4 and TCP headers at once: version/IHL, TOS, total length, flags/fragment offset, TTL,
#: protocol, addresses, ports (one 32-bit value), sequence number, acknowledgment, data
#: offset, flags, window
_HDR: Final = struct.Struct("!BBHxxHBBxx8sIIIBBH")
#: the same, then the 12 octets of options a segment with timestamps carries
_HDR52: Final = struct.Struct("!BBHxxHBBxx8sIIIBBH4x12s")
_U16: Final = struct.Struct("!H")
#: IPv4 and UDP headers: TOS, total length, identification, flags/fragment offset, TTL,
#: protocol, addresses, ports (one 32-bit value), UDP length
_UDP4: Final = struct.Struct("!xBHHHBBxx8sIH")
#: IPv6 and UDP headers: version/traffic class/flow label, payload length, next header, hop
#: limit, addresses, ports, UDP length
_UDP6: Final = struct.Struct("!IHBB32sIH")
_ADDR4: Final = struct.Struct("!4H")
_ADDR6: Final = struct.Struct("!16H")
#: IPv4 flags and fragment offset other than DF (MF, an offset, the reserved bit)
_NOT_DF: Final = 0xBFFF
#: flags other than ACK and PSH
_NOT_ACK_PSH: Final = 0xFF & ~0x18
_PSH: Final = 0x08
#: room for one super-packet (IPv4 total length is 16 bits)
_MAX: Final = 65535


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ip_checksum(hdr: bytes | bytearray | memoryview) -> int:
    s = sum(struct.unpack("!10H", bytes(hdr[:20])))
    return ~_fold(s) & 0xFFFF


class Coalescer:
    """Collects decapsulated packets and writes them to a TUN fd opened with IFF_VNET_HDR.

    Nothing is copied but the first segment's headers: a run is written with one ``writev``
    of that header and views of the segments' payloads. So a packet handed to ``write`` must
    stay unchanged until the next ``flush`` (the endpoint flushes before it reuses its receive
    buffer). ``udp``: the device takes UDP super-packets (``TunDevice.uso``); it goes False for
    good if the kernel refuses one.

    One run is pending at a time (TCP or UDP), so packets leave in the order they came.
    """

    def __init__(self, fd: int, *, udp: bool = False) -> None:
        self.fd = fd
        self.udp = udp
        #: virtio-net header and the run's IP + TCP headers (at most 60 + 60 octets)
        self._head = bytearray(VNET_HDR_LEN + 120)
        self._headv = memoryview(self._head)
        self._parts: list[bytes | memoryview] = []  # what the pending write consists of
        self._len = 0  # octets of the pending super-packet (IP header onwards), 0 if none
        #: what every segment of the run shares: addresses, ports, acknowledgment, window,
        #: header length and options (tcp_gro_receive merges nothing else), TOS, TTL and
        #: the DF bit (inet_gro_flush)
        self._flow: tuple[bytes, int, int, int, int, bytes, int, int, int] | None = None
        self._next_seq = 0
        self._mss = 0
        self._open = False  # may take more segments
        #: the pending UDP run: its header length (28 for IPv4, 48 for IPv6; 0 if the run
        #: is TCP or there is none), what its datagrams share, whether it may grow, how many
        #: datagrams it holds and the IPv4 identification the next one needs (without DF)
        self._udp_hlen = 0
        self._uflow: tuple[object, ...] | None = None
        self._uopen = False
        self._count = 0
        self._next_id = 0
        #: counters (``stats``): writes to the device (a packet or a super-packet each),
        #: super-packets written, the TCP segments and UDP datagrams that went out in one,
        #: packets lost to a failed write, and UDP super-packets the kernel refused (EINVAL:
        #: no UDP GSO after all; from then on one datagram per write)
        self.writes = 0
        self.tcp_super_packets = 0
        self.udp_super_packets = 0
        self.coalesced = 0  # TCP segments and UDP datagrams that went out in a super-packet
        self.udp_coalesced = 0  # of those, UDP datagrams
        self.write_drops = 0  # packets lost to a failed write
        self.uso_refused = 0

    def write(self, pkt: memoryview) -> None:
        """Queue one decapsulated packet (held by reference until ``flush``)."""
        n = len(pkt)
        if self.udp and n > 28:
            first = pkt[0]
            if (pkt[9] == 17 and first == 0x45) or (pkt[6] == 17 and first >> 4 == 6):
                if not self._udp(pkt, n):
                    if self._len:
                        self.flush()
                    self._write([ZERO_HDR, pkt])
                return
        if n > 52:
            (vihl, tos, total, frag, ttl, proto, addrs, ports, seq, ack, doff, flags, window,
             options) = _HDR52.unpack_from(pkt)
        elif n > 40:
            (vihl, tos, total, frag, ttl, proto, addrs, ports, seq, ack, doff, flags,
             window) = _HDR.unpack_from(pkt)
            options = b""
        else:
            vihl = 0
        if (vihl == 0x45 and proto == 6 and total == n and not frag & 0x3FFF
                and not flags & _NOT_ACK_PSH and doff >= 0x50):
            hlen = 20 + ((doff >> 4) << 2)
            plen = n - hlen
            if plen > 0:
                if hlen != 52:
                    options = bytes(pkt[40:hlen])
                # what the kernel's own GRO asks (tcp_gro_receive): the same flow, the next
                # sequence number, the same acknowledgment, window and options; and
                # (inet_gro_flush) the same TOS, TTL and DF: a segment whose TOS differs
                # (its ECN field CE, say) starts a run of its own, so that the mark
                # reaches the receiver (the super-packet carries the first one's header)
                flow = (addrs, ports, ack, window, hlen, options, tos, ttl, frag)
                if (seq == self._next_seq and self._open and flow == self._flow
                        and plen <= self._mss and self._len + plen <= _MAX):
                    self._parts.append(pkt[hlen:])
                    self._len += plen
                    self._next_seq = (seq + plen) & 0xFFFFFFFF
                    if plen < self._mss or flags & _PSH:
                        self._open = False  # a short or pushed segment ends the run
                    return
                if self._len:
                    self.flush()
                self._parts = [pkt]
                self._len = n
                self._flow = flow
                self._next_seq = (seq + plen) & 0xFFFFFFFF
                self._mss = plen
                self._open = not flags & _PSH
                return
        if self._len:
            self.flush()
        self._write([ZERO_HDR, pkt])

    def _udp(self, pkt: memoryview, n: int) -> bool:
        """Queue a UDP datagram (IPv4 without options, or IPv6 without extension headers)
        in a UDP run; False if ``pkt`` is not one."""
        first = pkt[0]
        ident = 0
        flow: tuple[object, ...]
        if first == 0x45:
            tos, total, ident, frag, ttl, proto, addrs, ports, ulen = _UDP4.unpack_from(pkt)
            if proto != 17 or total != n or frag & _NOT_DF or ulen != n - 20:
                return False
            hlen = 28
            flow = (tos, frag, ttl, addrs, ports)
            # with DF the identification means nothing (RFC 6864) and GSO numbers the
            # datagrams anew; without it they must be numbered as GSO will number them
            ident_ok = frag != 0 or ident == self._next_id
        elif first >> 4 == 6 and n > 48:
            vtcfl, plen, nh, hlim, addrs, ports, ulen = _UDP6.unpack_from(pkt)
            if nh != 17 or plen != n - 40 or ulen != plen:
                return False
            hlen = 48
            flow = (vtcfl, hlim, addrs, ports)
            ident_ok = True
        else:
            return False
        size = n - hlen
        if (self._uopen and flow == self._uflow and ident_ok and size <= self._mss
                and self._len + size <= _MAX and self._count < UDP_MAX_SEGMENTS):
            self._parts.append(pkt)
            self._len += size
            self._count += 1
            self._next_id = (ident + 1) & 0xFFFF
            if size < self._mss:
                self._uopen = False  # a shorter datagram ends the run
            return True
        if self._len:
            self.flush()
        self._parts = [pkt]
        self._len = n
        self._flow = None  # no TCP segment joins this run
        self._udp_hlen = hlen
        self._uflow = flow
        self._uopen = True
        self._mss = size
        self._count = 1
        self._next_id = (ident + 1) & 0xFFFF
        return True

    def flush(self) -> None:
        """Write the pending packet or super-packet, if any."""
        if not self._len:
            return
        length, parts = self._len, self._parts
        self._len = 0
        self._open = False
        self._parts = []
        if len(parts) == 1:
            self._udp_hlen = 0
            self._uopen = False
            self._write([ZERO_HDR, parts[0]])
            return
        if self._udp_hlen:
            self._flush_udp(length, parts)
            return
        first = parts[0]
        flow = self._flow
        assert flow is not None
        hlen = flow[4]
        head = self._head
        end = VNET_HDR_LEN + hlen
        head[VNET_HDR_LEN:end] = first[:hlen]
        ip = VNET_HDR_LEN
        _U16.pack_into(head, ip + 2, length)  # total length
        _U16.pack_into(head, ip + 10, 0)
        _U16.pack_into(head, ip + 10, _ip_checksum(self._headv[ip : ip + 20]))
        # TCP checksum field: the pseudo-header sum, for the kernel to complete (NEEDS_CSUM)
        src_dst = struct.unpack_from("!4H", head, ip + 12)
        pseudo = _fold(sum(src_dst) + 6 + (length - 20))
        _U16.pack_into(head, ip + 20 + 16, pseudo)
        _VNET.pack_into(head, 0, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                        hlen, self._mss, 20, 16)
        count = len(parts)
        parts[0] = first[hlen:]
        parts.insert(0, self._headv[:end])
        if self._write(parts, count):
            self.tcp_super_packets += 1
            self.coalesced += count

    def _flush_udp(self, length: int, parts: list[bytes | memoryview]) -> None:
        """Write the pending UDP run as one GSO_UDP_L4 super-packet: the first datagram's
        headers with the run's lengths, then every datagram's payload."""
        hlen = self._udp_hlen
        self._udp_hlen = 0
        self._uopen = False
        head = self._head
        ip = VNET_HDR_LEN
        end = ip + hlen
        head[ip:end] = parts[0][:hlen]
        ulen = length - hlen + 8
        if hlen == 28:
            _U16.pack_into(head, ip + 2, length)  # total length
            _U16.pack_into(head, ip + 10, 0)
            _U16.pack_into(head, ip + 10, _ip_checksum(self._headv[ip : ip + 20]))
            addr_sum = sum(_ADDR4.unpack_from(head, ip + 12))
        else:
            _U16.pack_into(head, ip + 4, ulen)  # payload length
            addr_sum = sum(_ADDR6.unpack_from(head, ip + 8))
        _U16.pack_into(head, end - 4, ulen)
        # UDP checksum field: the pseudo-header sum, for the kernel to complete per datagram
        _U16.pack_into(head, end - 2, _fold(addr_sum + 17 + ulen))
        _VNET.pack_into(head, 0, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4,
                        hlen, self._mss, hlen - 8, 6)
        iov: list[bytes | memoryview] = [self._headv[:end]]
        iov += [p[hlen:] for p in parts]
        try:
            os.writev(self.fd, iov)
        except OSError as e:
            if e.errno != errno.EINVAL:
                self.write_drops += len(parts)
                return
            # the kernel takes no UDP GSO after all: one write per datagram from now on
            log.warning("TUN refused a UDP super-packet (%s); writing one datagram each", e)
            self.udp = False
            self.uso_refused += 1
            for p in parts:
                self._write([ZERO_HDR, p])
            return
        self.writes += 1
        self.udp_super_packets += 1
        self.coalesced += len(parts)
        self.udp_coalesced += len(parts)

    def _write(self, parts: list[bytes | memoryview], count: int = 1) -> bool:
        try:
            os.writev(self.fd, parts)
        except OSError:
            self.write_drops += count
            return False
        self.writes += 1
        return True

    def stats(self) -> dict[str, object]:
        """The counters, for the status (``Endpoint.stats``: ``coalescer``) and the metrics.
        ``single``: packets written as they came, one per write; ``uso``: UDP datagrams are
        coalesced (the device takes GSO_UDP_L4, and the kernel has not refused one)."""
        supers = self.tcp_super_packets + self.udp_super_packets
        return {
            "uso": self.udp,
            "writes": self.writes,
            "single": self.writes - supers,
            "super_packets": {"tcp": self.tcp_super_packets, "udp": self.udp_super_packets},
            "coalesced": {"tcp": self.coalesced - self.udp_coalesced,
                          "udp": self.udp_coalesced},
            "write_drops": self.write_drops,
            "uso_refused": self.uso_refused,
        }
