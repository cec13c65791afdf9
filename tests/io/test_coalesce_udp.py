"""UDP datagram coalescing into virtio-net GSO_UDP_L4 super-packets (no root: a SEQPACKET
socket stands in for the TUN fd). Each super-packet is checked field by field, then cut
again the way the kernel cuts it (``__udp_gso_segment``, then the checksum completed from
``csum_start``/``csum_offset`` as ``skb_checksum_help`` does), and scapy parses and verifies
every datagram. ``test_coalesce_udp_tun.py`` sends them through a real TUN device."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from nattunnel.io import coalesce
from nattunnel.io.coalesce import (
    UDP_MAX_SEGMENTS,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    Coalescer,
)

SRC4, DST4 = ipaddress.IPv4Address("198.18.100.1"), ipaddress.IPv4Address("198.18.100.2")
SRC6, DST6 = ipaddress.IPv6Address("fd00:100::1"), ipaddress.IPv6Address("fd00:100::2")
ZERO = bytes(VNET_HDR_LEN)


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def csum(data: bytes) -> int:
    return ~_sum16(data) & 0xFFFF


def udp4(payload: bytes, ident: int = 1, *, sport: int = 4000, tos: int = 0, ttl: int = 64,
         frag: int = 0x4000, check: bool = True) -> bytes:
    ulen = 8 + len(payload)
    uh = struct.pack("!HHHH", sport, 5000, ulen, 0)
    if check:
        pseudo = SRC4.packed + DST4.packed + struct.pack("!BBH", 0, 17, ulen)
        c = csum(pseudo + uh + payload) or 0xFFFF
        uh = uh[:6] + struct.pack("!H", c)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + ulen, ident, frag, ttl, 17, 0,
                     SRC4.packed, DST4.packed)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + uh + payload


def udp6(payload: bytes, *, sport: int = 4000, hlim: int = 64, flow: int = 0) -> bytes:
    ulen = 8 + len(payload)
    uh = struct.pack("!HHHH", sport, 5000, ulen, 0)
    pseudo = SRC6.packed + DST6.packed + struct.pack("!IxxxB", ulen, 17)
    uh = uh[:6] + struct.pack("!H", csum(pseudo + uh + payload) or 0xFFFF)
    ip = struct.pack("!IHBB16s16s", 0x60000000 | flow, ulen, 17, hlim, SRC6.packed,
                     DST6.packed)
    return ip + uh + payload


def split(pkt: bytes) -> list[bytes]:
    """Cut a GSO_UDP_L4 super-packet (virtio-net header first) as the kernel does: each
    datagram gets the headers with its own lengths (IPv4: identification + 1 each, header
    checksum), the checksum field the super-packet's partial sum adjusted for the length
    (csum16_sub/csum16_add in __udp_gso_segment), then completed over csum_start..end."""
    flags, gso_type, hdr_len, gso_size, cs_start, cs_off = struct.unpack_from("=BBHHHH", pkt)
    assert (flags, gso_type, cs_off) == (VIRTIO_NET_HDR_F_NEEDS_CSUM,
                                         VIRTIO_NET_HDR_GSO_UDP_L4, 6)
    ip = pkt[VNET_HDR_LEN:]
    head, data = ip[:hdr_len], ip[hdr_len:]
    assert cs_start == hdr_len - 8
    super_len, partial = struct.unpack_from("!HH", head, hdr_len - 4)
    out = []
    for k, off in enumerate(range(0, len(data), gso_size)):
        chunk = data[off : off + gso_size]
        ulen = 8 + len(chunk)
        h = bytearray(head)
        if head[0] >> 4 == 4:
            struct.pack_into("!H", h, 2, 20 + ulen)
            struct.pack_into("!H", h, 4, (struct.unpack_from("!H", head, 4)[0] + k) & 0xFFFF)
            struct.pack_into("!H", h, 10, 0)
            struct.pack_into("!H", h, 10, csum(bytes(h[:20])))
        else:
            struct.pack_into("!H", h, 4, ulen)
        # check = csum16_add(csum16_sub(uh->check, uh->len), newlen)
        adjusted = _sum16(struct.pack("!HH", partial, ~super_len & 0xFFFF)
                          + struct.pack("!H", ulen))
        struct.pack_into("!HH", h, hdr_len - 4, ulen, adjusted)
        final = csum(bytes(h[cs_start:]) + chunk) or 0xFFFF  # CSUM_MANGLED_0
        struct.pack_into("!H", h, cs_start + cs_off, final)
        out.append(bytes(h) + chunk)
    return out


def verified(seg: bytes, *, zero_ok: bool = False) -> IP | IPv6:
    """scapy's parse of one datagram, with its checksums recomputed and compared (with
    ``zero_ok``, a UDP checksum of 0 over IPv4, none, passes too)."""
    p = IP(seg) if seg[0] >> 4 == 4 else IPv6(seg)
    assert UDP in p and len(p[UDP].payload) == len(seg) - (28 if seg[0] >> 4 == 4 else 48)
    fresh = p.copy()
    del fresh[UDP].chksum
    if IP in fresh:
        del fresh[IP].chksum
        assert IP(bytes(fresh)).chksum == p[IP].chksum
    if not (zero_ok and IP in p and p[UDP].chksum == 0):
        assert type(p)(bytes(fresh))[UDP].chksum == p[UDP].chksum
    return p


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setblocking(False)
    yield Coalescer(a.fileno(), udp=True), b
    a.close()
    b.close()


def written(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def feed(co: Coalescer, pkts: list[bytes]) -> None:
    for p in pkts:
        co.write(memoryview(p))
    co.flush()


def test_an_ipv4_run_becomes_one_super_packet_that_splits_back(pair):
    co, rx = pair
    dgrams = [udp4(bytes([i]) * 1000, ident=100 + i) for i in range(5)]
    dgrams.append(udp4(b"z" * 300, ident=105))  # shorter: ends the run
    for d in dgrams:
        co.write(memoryview(d))
    assert written(rx) == []  # held until the flush
    co.flush()
    (pkt,) = written(rx)
    assert pkt[:VNET_HDR_LEN] == struct.pack("=BBHHHH", 1, 5, 28, 1000, 20, 6)
    ip = pkt[VNET_HDR_LEN:]
    total = 28 + 5 * 1000 + 300
    assert len(ip) == total
    assert ip[:2] == dgrams[0][:2] and ip[4:10] == dgrams[0][4:10]  # id, DF, TTL, proto
    assert struct.unpack_from("!H", ip, 2)[0] == total and csum(ip[:20]) == 0
    assert ip[12:24] == dgrams[0][12:24]  # addresses, ports
    assert struct.unpack_from("!H", ip, 24)[0] == total - 20  # UDP length
    pseudo = _sum16(SRC4.packed + DST4.packed + struct.pack("!BBH", 0, 17, total - 20))
    assert struct.unpack_from("!H", ip, 26)[0] == pseudo  # partial: for the kernel to finish
    assert ip[28:] == b"".join(d[28:] for d in dgrams)
    segs = split(pkt)
    assert segs == dgrams  # every datagram exactly as it came
    for seg, d in zip(segs, dgrams, strict=True):
        p = verified(seg)
        assert (p[IP].src, p[IP].dst, p[UDP].sport, p[UDP].dport) == (
            str(SRC4), str(DST4), 4000, 5000)
        assert bytes(p[UDP].payload) == d[28:]
    assert (co.coalesced, co.udp_coalesced, co.writes, co.write_drops) == (6, 6, 1, 0)


def test_an_ipv6_run(pair):
    co, rx = pair
    dgrams = [udp6(bytes([i]) * 1200, flow=0x12345) for i in range(4)]
    feed(co, dgrams)
    (pkt,) = written(rx)
    assert pkt[:VNET_HDR_LEN] == struct.pack("=BBHHHH", 1, 5, 48, 1200, 40, 6)
    ip = pkt[VNET_HDR_LEN:]
    ulen = 8 + 4 * 1200
    assert ip[:4] == dgrams[0][:4] and ip[6:44] == dgrams[0][6:44]
    assert struct.unpack_from("!H", ip, 4)[0] == ulen == struct.unpack_from("!H", ip, 44)[0]
    pseudo = _sum16(SRC6.packed + DST6.packed + struct.pack("!IxxxB", ulen, 17))
    assert struct.unpack_from("!H", ip, 46)[0] == pseudo
    segs = split(pkt)
    assert segs == dgrams
    for seg in segs:
        p = verified(seg)
        assert p[IPv6].fl == 0x12345 and p[IPv6].nh == 17
    assert co.udp_coalesced == 4


def test_a_datagram_without_checksum_gets_one(pair):
    """0 over IPv4 means no checksum (RFC 768); GSO needs NEEDS_CSUM, so the kernel fills in
    a real one for every datagram: still right for any receiver."""
    co, rx = pair
    dgrams = [udp4(bytes([i]) * 800, ident=i, check=i % 2 == 0) for i in range(4)]
    feed(co, dgrams)
    (pkt,) = written(rx)
    for seg, d in zip(split(pkt), dgrams, strict=True):
        assert seg[:26] == d[:26] and seg[28:] == d[28:]
        assert verified(seg)[UDP].chksum != 0


def test_what_cannot_join_is_written_as_it_came(pair):
    co, rx = pair
    base = udp4(b"a" * 500, ident=1)
    cases = [
        udp4(b"b" * 500, ident=2, sport=4001),  # another flow
        udp4(b"c" * 500, ident=3, tos=0x01),  # another TOS (ECN)
        udp4(b"d" * 500, ident=4, ttl=63),  # another TTL
        udp4(b"e" * 600, ident=5),  # larger than the first
        udp4(b"f" * 500, ident=9, frag=0),  # no DF: identifications must follow
        udp4(b"g" * 500, ident=10, frag=0x2000),  # a fragment (MF)
        udp6(b"h" * 500),  # another family
    ]
    for other in cases:
        feed(co, [base, other])
    got = written(rx)
    assert [g[:VNET_HDR_LEN] for g in got] == [ZERO] * 2 * len(cases)
    assert [g[VNET_HDR_LEN:] for g in got] == [p for c in cases for p in (base, c)]
    assert co.coalesced == 0


def test_what_is_not_plain_udp_is_never_coalesced(pair):
    co, rx = pair
    options = bytearray(udp4(b"o" * 500))
    options[0] = 0x46  # an IPv4 header with options
    short_len = bytearray(udp4(b"s" * 500))
    short_len[25] -= 1  # UDP length does not match the packet
    ext = bytearray(udp6(b"x" * 500))
    ext[6] = 0  # a hop-by-hop header first
    pkts = [bytes(p) for p in (options, options, short_len, short_len, ext, ext)]
    feed(co, pkts)
    got = written(rx)
    assert [g[VNET_HDR_LEN:] for g in got] == pkts and co.coalesced == 0


def test_without_identifications_in_order_and_without_df(pair):
    co, rx = pair
    feed(co, [udp4(b"n" * 400, ident=7 + i, frag=0) for i in range(3)])
    (pkt,) = written(rx)
    assert [s[4:6] for s in split(pkt)] == [b"\0\7", b"\0\x08", b"\0\x09"]


def test_limits_64_datagrams_and_64_kib(pair):
    co, rx = pair
    small = [udp4(bytes([i % 256]) * 100, ident=i) for i in range(100)]
    feed(co, small)
    got = written(rx)
    assert [len(split(g)) for g in got] == [UDP_MAX_SEGMENTS, 100 - UDP_MAX_SEGMENTS]
    assert [s for g in got for s in split(g)] == small
    big = [udp6(bytes([i]) * 1400) for i in range(60)]  # more than 64 KiB
    feed(co, big)
    got = written(rx)
    assert len(got) == 2 and all(len(g) - VNET_HDR_LEN <= 65535 for g in got)
    assert [s for g in got for s in split(g)] == big


def test_tcp_and_udp_runs_keep_their_order(pair):
    from tests.io.test_coalesce import tcp

    co, rx = pair
    t = [tcp(1 + i * 1000, bytes([i]) * 1000) for i in range(3)]
    u = [udp4(bytes([i]) * 900, ident=i) for i in range(3)]
    feed(co, [*t[:2], *u[:2], t[2], u[2]])
    got = written(rx)
    assert [g[1] for g in got] == [1, 5, 0, 0]  # TCP run, UDP run, one of each
    assert got[2][VNET_HDR_LEN:] == t[2] and got[3][VNET_HDR_LEN:] == u[2]
    assert split(got[1]) == u[:2]


def test_without_uso_every_datagram_goes_alone(pair):
    co, rx = pair
    co.udp = False
    dgrams = [udp4(b"q" * 700, ident=i) for i in range(5)]
    feed(co, dgrams)
    assert [g[VNET_HDR_LEN:] for g in written(rx)] == dgrams and co.coalesced == 0


def test_a_kernel_that_refuses_falls_back_for_good(pair, monkeypatch):
    co, rx = pair
    real = os.writev

    def writev(fd: int, parts: list) -> int:
        if bytes(parts[0][:2]) == bytes([1, VIRTIO_NET_HDR_GSO_UDP_L4]):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, parts)

    monkeypatch.setattr(coalesce.os, "writev", writev)
    dgrams = [udp4(b"r" * 700, ident=i) for i in range(5)]
    feed(co, dgrams)
    assert co.udp is False
    assert [g[VNET_HDR_LEN:] for g in written(rx)] == dgrams
    feed(co, dgrams)  # from now on one by one
    assert len(written(rx)) == 5 and (co.udp_coalesced, co.write_drops) == (0, 0)


def test_a_failed_write_counts_every_datagram(pair):
    co, rx = pair
    rx.close()  # the peer is gone: EPIPE/ECONNREFUSED on every write
    feed(co, [udp4(b"w" * 700, ident=i) for i in range(5)])
    assert co.write_drops == 5 and co.writes == 0
