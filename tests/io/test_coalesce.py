"""TCP segment coalescing into virtio-net GSO super-packets (no root: a SEQPACKET socket
stands in for the TUN fd; the lab tests send real TCP through it)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from nattunnel.io.coalesce import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VNET_HDR_LEN,
    Coalescer,
)

SRC, DST = ipaddress.IPv4Address("198.18.100.1"), ipaddress.IPv4Address("198.18.100.2")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp(seq: int, payload: bytes, flags: int = 0x10, sport: int = 5001, src=SRC) -> bytes:
    th = struct.pack("!HHIIBBHHH", sport, 5201, seq, 7, 5 << 4, flags, 512, 0, 0)
    pseudo = src.packed + DST.packed + struct.pack("!BBH", 0, 6, len(th) + len(payload))
    th = th[:16] + struct.pack("!H", csum(pseudo + th + payload)) + th[18:]
    total = 20 + len(th) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, src.packed,
                     DST.packed)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + th + payload


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.setblocking(False)
    yield Coalescer(a.fileno()), b
    a.close()
    b.close()


def written(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def test_a_run_of_segments_becomes_one_gso_packet(pair):
    co, rx = pair
    segs = [tcp(1000 + i * 1000, bytes([i]) * 1000) for i in range(5)]
    segs.append(tcp(6000, b"z" * 300, flags=0x18))  # shorter and pushed: ends the run
    for s in segs:
        co.write(memoryview(s))
    assert written(rx) == []  # held until the flush
    co.flush()
    (pkt,) = written(rx)
    flags, gso_type, hdr_len, gso_size, cs_start, cs_off = struct.unpack_from("=BBHHHH", pkt)
    assert (flags, gso_type) == (VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4)
    assert (hdr_len, gso_size, cs_start, cs_off) == (40, 1000, 20, 16)
    ip = pkt[VNET_HDR_LEN:]
    assert len(ip) == 40 + 5300 and struct.unpack_from("!H", ip, 2)[0] == 5340
    assert csum(ip[:20]) == 0  # valid IPv4 header checksum
    assert ip[40:] == b"".join(s[40:] for s in segs)
    # the TCP checksum field holds the pseudo-header sum for the kernel to complete
    tcp_seg = bytearray(ip[20:])
    partial = struct.unpack_from("!H", tcp_seg, 16)[0]
    pseudo = SRC.packed + DST.packed + struct.pack("!BBH", 0, 6, len(tcp_seg))
    s = sum(struct.unpack("!6H", pseudo))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    assert partial == s
    assert co.coalesced == 6 and co.writes == 1


def test_what_cannot_join_is_written_as_it_came(pair):
    co, rx = pair
    first = tcp(1, b"a" * 500)
    gap = tcp(9999, b"b" * 500)  # not the next sequence number
    other_flow = tcp(501, b"c" * 500, sport=4000)
    syn = tcp(1, b"", flags=0x02)
    udp = bytearray(first)
    udp[9] = 17
    ipv6 = bytes([0x60]) + bytes(59)
    for p in (first, gap, other_flow, syn, bytes(udp), ipv6):
        co.write(memoryview(p))
    co.flush()
    got = written(rx)
    assert [g[:VNET_HDR_LEN] for g in got] == [bytes(VNET_HDR_LEN)] * 6
    assert [g[VNET_HDR_LEN:] for g in got] == [first, gap, other_flow, syn, bytes(udp), ipv6]
    assert co.coalesced == 0


def test_push_and_size_limits(pair):
    co, rx = pair
    pushed = tcp(1, b"p" * 100, flags=0x18)
    after = tcp(101, b"q" * 100)
    co.write(memoryview(pushed))
    co.write(memoryview(after))  # PSH ended the run: a new one starts
    big = [tcp(201 + i * 1400, b"r" * 1400) for i in range(60)]  # more than 64 KiB
    for s in big:
        co.write(memoryview(s))
    co.flush()
    got = written(rx)
    assert got[0][VNET_HDR_LEN:] == pushed
    assert all(len(g) <= VNET_HDR_LEN + 65535 for g in got)
    total_payload = sum(len(g) - VNET_HDR_LEN - 40 for g in got)
    assert total_payload == 100 + 100 + 60 * 1400


def test_only_segments_the_kernel_would_merge_are_merged(pair):
    """Like tcp_gro_receive: a new acknowledgment, window or option value starts a new run."""
    co, rx = pair
    a = tcp(1, b"a" * 1000)
    b = bytearray(tcp(1001, b"b" * 1000))
    b[28:32] = (8).to_bytes(4, "big")  # a newer acknowledgment number
    for p in (a, bytes(b)):
        co.write(memoryview(p))
    co.flush()
    got = written(rx)
    assert len(got) == 2 and co.coalesced == 0
