"""TCP segment coalescing for TUN writes with a virtio-net header (IFF_VNET_HDR).

Decapsulated IPv4 TCP segments that continue one another (same addresses and ports, next
sequence number, same header length, only ACK/PSH set, payloads of one size with possibly a
shorter last one) are joined into one GSO super-packet: one ``write`` to the TUN device
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
#: IPv4 header fields we read: total length, flags/fragment offset, protocol
_IP: Final = struct.Struct("!xxHxxHxB")
#: TCP: ports (as one 32-bit value), sequence number, acknowledgment, data offset, flags,
#: window
_TCP: Final = struct.Struct("!IIIBBH")
_U16: Final = struct.Struct("!H")
_ACK_PSH: Final = 0x18
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
    """Collects decapsulated packets and writes them to a TUN fd opened with IFF_VNET_HDR."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray(_MAX + VNET_HDR_LEN)
        self._view = memoryview(self._buf)
        self._len = 0  # octets of the pending super-packet (IP header onwards), 0 if none
        self._key = 0  # (source address, destination address, ports) of the pending flow
        self._addrs = b""
        self._next_seq = 0
        self._hlen = 0  # IP + TCP header octets
        self._mss = 0
        self._count = 0
        self._open = False  # may take more segments
        self._ack_win = 0  # acknowledgment number and window of the run
        self._options = b""  # TCP options of the run
        self.writes = 0
        self.coalesced = 0  # segments that went out inside a super-packet
        self.write_drops = 0

    def write(self, pkt: memoryview) -> None:
        """Queue one decapsulated packet (copied now: the caller reuses its buffer)."""
        n = len(pkt)
        if n >= 40 and pkt[0] == 0x45:
            total, frag, proto = _IP.unpack_from(pkt)
            if proto == 6 and not frag & 0x3FFF and total == n:
                ports, seq, ack, doff, flags, window = _TCP.unpack_from(pkt, 20)
                hlen = 20 + (doff >> 4) * 4
                plen = n - hlen
                if plen > 0 and not flags & ~_ACK_PSH:
                    # what the kernel's own TCP GRO asks (tcp_gro_receive): the same flow,
                    # the next sequence number, the same acknowledgment, window and options
                    ack_win = (ack << 16) | window
                    if (self._open and ports == self._key and seq == self._next_seq
                            and hlen == self._hlen and plen <= self._mss
                            and ack_win == self._ack_win
                            and self._len + plen <= _MAX
                            and pkt[12:20] == self._addrs
                            and (hlen == 40 or pkt[40:hlen] == self._options)):
                        start = VNET_HDR_LEN + self._len
                        self._buf[start : start + plen] = pkt[hlen:]
                        self._len += plen
                        self._next_seq = (seq + plen) & 0xFFFFFFFF
                        self._count += 1
                        if plen < self._mss or flags & _PSH:
                            self._open = False  # a short or pushed segment ends the run
                        return
                    self.flush()
                    self._buf[VNET_HDR_LEN : VNET_HDR_LEN + n] = pkt
                    self._len = n
                    self._key = ports
                    self._addrs = bytes(pkt[12:20])
                    self._next_seq = (seq + plen) & 0xFFFFFFFF
                    self._hlen = hlen
                    self._mss = plen
                    self._count = 1
                    self._open = not flags & _PSH
                    self._ack_win = ack_win
                    self._options = bytes(pkt[40:hlen]) if hlen > 40 else b""
                    return
        self.flush()
        self._write([ZERO_HDR, pkt])

    def flush(self) -> None:
        """Write the pending packet or super-packet, if any."""
        if not self._len:
            return
        length, count = self._len, self._count
        self._len = 0
        self._open = False
        view = self._view
        if count == 1:
            self._write([ZERO_HDR, view[VNET_HDR_LEN : VNET_HDR_LEN + length]])
            return
        ip = VNET_HDR_LEN
        buf = self._buf
        _U16.pack_into(buf, ip + 2, length)  # total length
        _U16.pack_into(buf, ip + 10, 0)
        _U16.pack_into(buf, ip + 10, _ip_checksum(view[ip : ip + 20]))
        # TCP checksum field: the pseudo-header sum, for the kernel to complete (NEEDS_CSUM)
        src_dst = struct.unpack_from("!4H", buf, ip + 12)
        pseudo = _fold(sum(src_dst) + 6 + (length - 20))
        _U16.pack_into(buf, ip + 20 + 16, pseudo)
        _VNET.pack_into(buf, 0, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                        self._hlen, self._mss, 20, 16)
        self.coalesced += count
        self._write([view[: VNET_HDR_LEN + length]])

    def _write(self, parts: list[bytes | memoryview]) -> None:
        try:
            os.writev(self.fd, parts)
            self.writes += 1
        except OSError:
            self.write_drops += 1
