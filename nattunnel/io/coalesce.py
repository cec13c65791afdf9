"""TCP segment coalescing for TUN writes with a virtio-net header (IFF_VNET_HDR).

Decapsulated IPv4 TCP segments that continue one another (same addresses and ports, next
sequence number, same header length, only ACK/PSH set, payloads of one size with possibly a
shorter last one) are joined into one GSO super-packet: one ``writev`` to the TUN device
instead of dozens, and the kernel's TCP receive path handles them as one (fewer ACKs back
through the tunnel). The virtio-net header says how to cut it again (``gso_size``) and that the
TCP checksum is still to be completed (``NEEDS_CSUM``: the field holds the pseudo-header sum).
Everything else is written as it came, behind an all-zero header.

Layout of ``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h): flags (u8),
gso_type (u8), hdr_len, gso_size, csum_start, csum_offset (u16, host order for a TUN device
on a little-endian host: the legacy header is in native order).
"""

from __future__ import annotations

import os
import struct
from typing import Final

VNET_HDR_LEN: Final = 10
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1
ZERO_HDR: Final = bytes(VNET_HDR_LEN)

_VNET: Final = struct.Struct("=BBHHHH")
#: IPv4 and TCP headers at once: version/IHL, total length, flags/fragment offset, protocol,
#: addresses, ports (one 32-bit value), sequence number, acknowledgment, data offset, flags,
#: window
_HDR: Final = struct.Struct("!BxHxxHxBxx8sIIIBBH")
#: the same, then the 12 octets of options a segment with timestamps carries
_HDR52: Final = struct.Struct("!BxHxxHxBxx8sIIIBBH4x12s")
_U16: Final = struct.Struct("!H")
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


class TcpCoalescer:
    """Collects decapsulated packets and writes them to a TUN fd opened with IFF_VNET_HDR.

    Nothing is copied but the first segment's headers: a run is written with one ``writev``
    of that header and views of the segments' payloads. So a packet handed to ``write`` must
    stay unchanged until the next ``flush`` (the endpoint flushes before it reuses its receive
    buffer).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        #: virtio-net header and the run's IP + TCP headers (at most 60 + 60 octets)
        self._head = bytearray(VNET_HDR_LEN + 120)
        self._headv = memoryview(self._head)
        self._parts: list[bytes | memoryview] = []  # what the pending write consists of
        self._len = 0  # octets of the pending super-packet (IP header onwards), 0 if none
        #: what every segment of the run shares: addresses, ports, acknowledgment, window,
        #: header length and options (tcp_gro_receive merges nothing else)
        self._flow: tuple[bytes, int, int, int, int, bytes] | None = None
        self._next_seq = 0
        self._mss = 0
        self._open = False  # may take more segments
        self.writes = 0
        self.coalesced = 0  # segments that went out inside a super-packet
        self.write_drops = 0

    def write(self, pkt: memoryview) -> None:
        """Queue one decapsulated packet (held by reference until ``flush``)."""
        n = len(pkt)
        if n > 52:
            (vihl, total, frag, proto, addrs, ports, seq, ack, doff, flags, window,
             options) = _HDR52.unpack_from(pkt)
        elif n > 40:
            (vihl, total, frag, proto, addrs, ports, seq, ack, doff, flags,
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
                # what the kernel's own TCP GRO asks (tcp_gro_receive): the same flow,
                # the next sequence number, the same acknowledgment, window and options
                flow = (addrs, ports, ack, window, hlen, options)
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

    def flush(self) -> None:
        """Write the pending packet or super-packet, if any."""
        if not self._len:
            return
        length, parts = self._len, self._parts
        self._len = 0
        self._open = False
        self._parts = []
        if len(parts) == 1:
            self._write([ZERO_HDR, parts[0]])
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
        self.coalesced += len(parts)
        parts[0] = first[hlen:]
        parts.insert(0, self._headv[:end])
        self._write(parts)

    def _write(self, parts: list[bytes | memoryview]) -> None:
        try:
            os.writev(self.fd, parts)
            self.writes += 1
        except OSError:
            self.write_drops += 1
