"""ECN through the TUN coalescer (io/coalesce.py): a segment or datagram whose TOS or traffic
class differs from its run's (an ECN CE mark, RFC 3168) is never merged into it, as the
kernel's GRO does (inet_gro_flush: TOS, TTL and DF must match; ipv6_gro_flush: the traffic
class and hop limit), so that every CE mark reaches the receiver. Segments are built with
scapy, written through a ``Coalescer`` on a SEQPACKET socket (no root), and what was written
is cut again as the kernel cuts a super-packet (each segment gets the super-packet's IP
header) and parsed with scapy; once more through A's send path and B's receive path."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from nattunnel.io.coalesce import (
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    Coalescer,
)
from tests.io.test_coalesce_status import _through_the_tunnel, fake_tun, written
from tests.io.test_coalesce_udp import split
from tests.support.datapath import endpoints

A, B = "198.18.100.1", "198.18.100.2"
A6, B6 = "fd00:100::1", "fd00:100::2"
ECT0, CE = 0x02, 0x03
MSS = 1000


def seg(i: int, tos: int = ECT0, ttl: int = 64, payload: int = MSS) -> bytes:
    """The i-th segment of one TCP flow from A to B."""
    return bytes(IP(src=A, dst=B, tos=tos, ttl=ttl, flags="DF", id=i)
                 / TCP(sport=5001, dport=5201, seq=1000 + i * MSS, ack=7, flags="A",
                       window=512)
                 / Raw(bytes([i]) * payload))


def seg6(i: int, tc: int = ECT0) -> bytes:
    return bytes(IPv6(src=A6, dst=B6, tc=tc, hlim=64)
                 / TCP(sport=5001, dport=5201, seq=1000 + i * MSS, ack=7, flags="A",
                       window=512)
                 / Raw(bytes([i]) * MSS))


def dgram(i: int, tos: int = ECT0) -> bytes:
    return bytes(IP(src=A, dst=B, tos=tos, ttl=64, flags="DF", id=i)
                 / UDP(sport=4000, dport=5000) / Raw(bytes([i]) * 900))


def dgram6(i: int, tc: int = ECT0) -> bytes:
    return bytes(IPv6(src=A6, dst=B6, tc=tc, hlim=64)
                 / UDP(sport=4000, dport=5000) / Raw(bytes([i]) * 900))


def cut_tcp(pkt: bytes) -> list[bytes]:
    """A TCPV4 super-packet cut as the kernel's GSO cuts it: each segment behind a copy of
    the super-packet's IP and TCP headers (so the TOS of the first), its own lengths."""
    _, _, hdr_len, gso_size = struct.unpack_from("=BBHH", pkt)
    ip = pkt[VNET_HDR_LEN:]
    head, data = ip[:hdr_len], ip[hdr_len:]
    out = []
    for off in range(0, len(data), gso_size):
        chunk = data[off : off + gso_size]
        h = bytearray(head)
        struct.pack_into("!H", h, 2, hdr_len + len(chunk))
        struct.pack_into("!I", h, 24, (struct.unpack_from("!I", head, 24)[0] + off) & 0xFFFFFFFF)
        out.append(bytes(h) + chunk)
    return out


def delivered(writes: list[bytes]) -> list[bytes]:
    """The packets the kernel hands on from these writes to the TUN device."""
    out = []
    for w in writes:
        gso_type = w[1]
        if gso_type == VIRTIO_NET_HDR_GSO_TCPV4:
            out += cut_tcp(w)
        elif gso_type == VIRTIO_NET_HDR_GSO_UDP_L4:
            out += split(w)
        else:
            out.append(w[VNET_HDR_LEN:])
    return out


def ecn(pkt: bytes) -> int:
    p = IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)
    return (p.tos if IP in p else p.tc) & 0x03


def payload_of(pkt: bytes) -> bytes:
    p = IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)
    return bytes(p[TCP].payload if TCP in p else p[UDP].payload)


@pytest.fixture
def pair():
    import socket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setblocking(False)
    yield Coalescer(a.fileno(), udp=True), b
    a.close()
    b.close()


def through(co: Coalescer, rx, pkts: list[bytes]) -> list[bytes]:
    for p in pkts:
        co.write(memoryview(p))
    co.flush()
    return written(rx)


def assert_marks_kept(sent: list[bytes], got: list[bytes]) -> None:
    """Every packet that went in came out once, in order, with its own ECN field."""
    assert [payload_of(p) for p in got] == [payload_of(p) for p in sent]
    assert [ecn(p) for p in got] == [ecn(p) for p in sent]


def test_a_ce_segment_in_a_tcp_run_is_not_merged_away(pair):
    co, rx = pair
    segs = [seg(i, CE if i == 3 else ECT0) for i in range(7)]
    writes = through(co, rx, segs)
    # segments 0-2 in one super-packet, 3 alone with its mark, 4-6 in another
    assert [w[1] for w in writes] == [VIRTIO_NET_HDR_GSO_TCPV4, 0, VIRTIO_NET_HDR_GSO_TCPV4]
    assert writes[1][VNET_HDR_LEN:] == segs[3]
    got = delivered(writes)
    assert_marks_kept(segs, got)
    assert [TCP in IP(p) and IP(p)[TCP].seq for p in got] == [1000 + i * MSS for i in range(7)]
    assert co.coalesced == 6


def test_a_ce_mark_on_the_first_segment_does_not_spread(pair):
    co, rx = pair
    segs = [seg(0, CE)] + [seg(i) for i in range(1, 5)] + [seg(5, CE), seg(6, CE)]
    got = delivered(through(co, rx, segs))
    assert_marks_kept(segs, got)
    assert [ecn(p) for p in got] == [CE, ECT0, ECT0, ECT0, ECT0, CE, CE]
    assert co.tcp_super_packets == 2  # 1-4, and 5-6 (both CE: they may go together)


def test_segments_of_another_ttl_or_without_df_start_a_run_of_their_own(pair):
    co, rx = pair
    segs = [seg(0), seg(1), seg(2, ttl=63), seg(3, ttl=63)]
    nodf = IP(seg(4))
    nodf.flags = 0
    del nodf.chksum
    segs.append(bytes(nodf))
    writes = through(co, rx, segs)
    assert [w[1] for w in writes] == [VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV4, 0]
    got = delivered(writes)
    assert [IP(p).ttl for p in got] == [64, 64, 63, 63, 64]
    assert [payload_of(p) for p in got] == [payload_of(p) for p in segs]


def test_ipv6_tcp_with_a_ce_mark_arrives_as_it_came(pair):
    co, rx = pair
    segs = [seg6(i, CE if i == 2 else ECT0) for i in range(5)]
    writes = through(co, rx, segs)
    assert [w[VNET_HDR_LEN:] for w in writes] == segs  # no TCP coalescing over IPv6
    assert [ecn(p) for p in delivered(writes)] == [ECT0, ECT0, CE, ECT0, ECT0]


@pytest.mark.parametrize("make", [dgram, dgram6], ids=["ipv4", "ipv6"])
def test_a_ce_datagram_in_a_udp_run_keeps_its_mark(pair, make):
    co, rx = pair
    dgrams = [make(i, CE if i in (2, 5) else ECT0) for i in range(8)]
    writes = through(co, rx, dgrams)
    assert [w[1] for w in writes] == [VIRTIO_NET_HDR_GSO_UDP_L4, 0, VIRTIO_NET_HDR_GSO_UDP_L4,
                                      0, VIRTIO_NET_HDR_GSO_UDP_L4]
    assert_marks_kept(dgrams, delivered(writes))


async def test_ce_marks_reach_the_receiver_through_the_tunnel() -> None:
    iface, rx = fake_tun()
    a, b, _ = await endpoints(iface)
    try:
        segs = [seg(i, CE if i % 4 == 3 else ECT0) for i in range(12)]
        dgrams = [dgram(i, CE if i == 1 else ECT0) for i in range(4)]
        writes = await _through_the_tunnel(segs + dgrams, rx, a)
        got = delivered(writes)
        assert_marks_kept(segs + dgrams, got)
        assert b.stats()["coalescer"]["super_packets"]["tcp"] >= 1  # runs were still joined
    finally:
        a.close()
        b.close()
        rx.close()
