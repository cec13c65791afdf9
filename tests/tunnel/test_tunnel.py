"""The sans-I/O tunnel core: two cores paired in memory, no sockets, no sleeps."""

from __future__ import annotations

import ipaddress
import os

import pytest

from nattunnel.bench.crypto import ipv4_packet
from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_256
from nattunnel.tunnel.core import CONSUMED, PeerMoved, RekeyNeeded, Tunnel

A_INNER = "198.18.100.1"
B_INNER = "198.18.100.2"
A_ADDR = ("198.18.0.1", 4500)
B_ADDR = ("198.18.0.2", 4500)


def events(t: Tunnel) -> list[object]:
    """Every event the tunnel has, taken one by one (``next_event``)."""
    out = []
    while (e := t.next_event()) is not None:
        out.append(e)
    return out


def fire(t: Tunnel, now: float) -> list[tuple[object, bytes]]:
    """The timer at ``now`` and what it made to send."""
    t.handle_timer(now)
    return t.datagrams_to_send()


def ip4(src: str, dst: str, size: int = 60) -> bytes:
    p = bytearray(ipv4_packet(size))
    p[12:16] = ipaddress.IPv4Address(src).packed
    p[16:20] = ipaddress.IPv4Address(dst).packed
    return bytes(p)


def net(s: str):
    return ipaddress.ip_network(s)


def pair(keepalive_a=False, interval=20.0, soft_limit=None):
    """Core A (behind NAT, knows B's address) and core B (learns A's address)."""
    k_ab, k_ba = os.urandom(36), os.urandom(36)
    a, b = Tunnel(), Tunnel()
    pa = a.add_peer("b", [net(B_INNER + "/32")], addr=B_ADDR, keepalive=keepalive_a,
                    keepalive_interval=interval)
    pb = b.add_peer("a", [net(A_INNER + "/32")])
    a.set_outbound(pa, OutboundSA(0x2001, AES_GCM_256, k_ab, soft_limit=soft_limit))
    b.install_inbound(pb, InboundSA(0x2001, AES_GCM_256, k_ab))
    b.set_outbound(pb, OutboundSA(0x1001, AES_GCM_256, k_ba))
    a.install_inbound(pa, InboundSA(0x1001, AES_GCM_256, k_ba))
    return a, b


def deliver(sender: Tunnel, receiver: Tunnel, inner: bytes, src_addr, now=0.0):
    out = memoryview(bytearray(2048))
    _, n = sender.encapsulate_into(inner, out, now)
    assert n > 0, DropReason(-n)
    rx = memoryview(bytearray(out[:n]))
    m = receiver.receive(rx, 0, n, src_addr, now)
    return m, (bytes(rx[16 : 16 + m]) if m > 0 else None)


def test_exchange_both_ways_and_learn_address():
    a, b = pair()
    pkt = ip4(A_INNER, B_INNER)
    _, got = deliver(a, b, pkt, ("203.0.113.9", 61000))
    assert got == pkt
    assert b.peers["a"].addr == ("203.0.113.9", 61000)
    assert events(b) == [PeerMoved("a", None, ("203.0.113.9", 61000))]
    back = ip4(B_INNER, A_INNER)
    _, got = deliver(b, a, back, B_ADDR)
    assert got == back
    assert events(a) == []  # configured address unchanged


def test_rebinding_only_on_authenticated_packets():
    a, b = pair()
    deliver(a, b, ip4(A_INNER, B_INNER), ("203.0.113.9", 61000))
    events(b)
    # a forged packet from another port does not move the peer
    forged = bytearray(200)
    forged[0:4] = (0x2001).to_bytes(4, "big")
    forged[4:8] = (99).to_bytes(4, "big")
    assert b.receive(memoryview(forged), 0, 200, ("203.0.113.9", 7), 1.0) == (
        -DropReason.AUTH_FAILED
    )
    assert b.peers["a"].addr == ("203.0.113.9", 61000)
    # a replayed genuine packet from a new port does not move it either
    out = memoryview(bytearray(2048))
    _, n = a.encapsulate_into(ip4(A_INNER, B_INNER), out, 1.0)
    first = bytes(out[:n])
    assert b.receive(memoryview(bytearray(first)), 0, n, ("203.0.113.9", 61000), 1.0) > 0
    assert b.receive(memoryview(bytearray(first)), 0, n, ("203.0.113.9", 7), 1.0) == (
        -DropReason.REPLAYED
    )
    assert b.peers["a"].addr == ("203.0.113.9", 61000)
    # the next authenticated packet from the new port moves it
    m, _ = deliver(a, b, ip4(A_INNER, B_INNER), ("203.0.113.9", 62000))
    assert m > 0
    assert b.peers["a"].addr == ("203.0.113.9", 62000)
    assert b.peers["a"].rebinds == 1
    assert events(b) == [PeerMoved("a", ("203.0.113.9", 61000), ("203.0.113.9", 62000))]


def test_inner_source_must_be_allowed():
    a, b = pair()
    m, _ = deliver(a, b, ip4("198.18.100.77", B_INNER), A_ADDR)
    assert m == -DropReason.SOURCE_NOT_ALLOWED
    assert b.drops[DropReason.SOURCE_NOT_ALLOWED] == 1
    assert b.peers["a"].addr is None  # a refused packet does not teach an address
    assert b.peers["a"].stats()["rx_packets"] == 0  # nor counts as delivered


def test_routes_longest_prefix_and_no_route():
    t = Tunnel()
    t.add_peer("wide", [net("198.18.0.0/16")], addr=A_ADDR)
    t.add_peer("narrow", [net("198.19.5.0/24")], addr=B_ADDR)
    assert t.route(ip4("198.18.0.1", "198.18.9.9")).name == "wide"
    assert t.route(ip4("198.18.0.1", "198.19.5.1")).name == "narrow"
    assert t.route(ip4("198.18.0.1", "192.0.2.1")) is None
    assert t.route(b"\x45") is None
    out = memoryview(bytearray(2048))
    assert t.encapsulate_into(ip4("198.18.0.1", "192.0.2.1"), out, 0)[1] == -DropReason.NO_ROUTE
    # no outbound SA yet
    assert t.encapsulate_into(ip4("198.18.0.1", "198.18.1.1"), out, 0)[1] == (
        -DropReason.NO_ENDPOINT
    )
    with pytest.raises(ValueError, match="overlaps"):
        t.add_peer("clash", [net("198.18.7.0/24")])


def test_ipv6_inner_packets_route_and_pass_the_source_check():
    k = os.urandom(36)
    a, b = Tunnel(), Tunnel()
    pa = a.add_peer("b", [net("2001:db8:b::/64")], addr=B_ADDR)
    pb = b.add_peer("a", [net("2001:db8:a::/64")])
    a.set_outbound(pa, OutboundSA(0x3000, AES_GCM_256, k))
    b.install_inbound(pb, InboundSA(0x3000, AES_GCM_256, k))
    hdr = bytearray(40)
    hdr[0] = 0x60
    hdr[4:6] = (20).to_bytes(2, "big")
    hdr[8:24] = ipaddress.IPv6Address("2001:db8:a::1").packed
    hdr[24:40] = ipaddress.IPv6Address("2001:db8:b::1").packed
    pkt = bytes(hdr) + bytes(20)
    _, got = deliver(a, b, pkt, A_ADDR)
    assert got == pkt


def test_keepalive_sent_only_after_idle_interval():
    a, b = pair(keepalive_a=True, interval=2.0)
    assert a.get_timer() == 2.0
    assert fire(a, 1.9) == []
    sent = fire(a, 2.0)
    assert [(p.name, d) for p, d in sent] == [("b", b"\xff")]
    assert a.get_timer() == 4.0
    # traffic at t=3.5 postpones the next keepalive to 5.5
    deliver(a, b, ip4(A_INNER, B_INNER), A_ADDR, now=3.5)
    assert fire(a, 4.0) == []
    assert a.get_timer() == 5.5
    assert len(fire(a, 5.5)) == 1
    assert b.get_timer() is None  # B sends none


def test_received_keepalives_ike_and_garbage_are_counted():
    a, b = pair()
    deliver(a, b, ip4(A_INNER, B_INNER), A_ADDR)
    ka = memoryview(bytearray(b"\xff"))
    assert b.receive(ka, 0, 1, A_ADDR, 0) == CONSUMED
    assert b.keepalives_received == 1 and b.peers["a"].keepalives_received == 1
    ike = memoryview(bytearray(bytes(4) + bytes(17) + b"\x20" + bytes(10)))
    assert b.receive(ike, 0, len(ike), A_ADDR, 0) == -DropReason.NO_IKE_HANDLER
    seen = []
    b.ike_handler = lambda msg, addr, now: seen.append((bytes(msg), addr))
    assert b.receive(ike, 0, len(ike), A_ADDR, 0) == CONSUMED
    assert seen[0][0] == bytes(ike[4:])
    for junk, reason in [
        (b"\x00\x00\x01\x00" + bytes(40), DropReason.UNKNOWN_SPI),
        (b"\x00\x00\x00\x05" + bytes(40), DropReason.RESERVED_SPI),
        (b"\x01", DropReason.MALFORMED),
        (b"\x01\x02", DropReason.TRUNCATED),
    ]:
        buf = memoryview(bytearray(junk))
        assert b.receive(buf, 0, len(junk), ("198.18.0.3", 1), 0) == -reason
        assert b.drops[reason] >= 1


def test_soft_limit_raises_one_rekey_event():
    a, b = pair(soft_limit=2)
    for _ in range(4):
        deliver(a, b, ip4(A_INNER, B_INNER), A_ADDR)
    assert events(a) == [RekeyNeeded("b", 0x2001)]


def test_remove_peer_forgets_spis_routes_and_timers():
    a, _ = pair(keepalive_a=True, interval=1.0)
    a.remove_peer("b")
    assert a.route(ip4(A_INNER, B_INNER)) is None
    assert fire(a, 10.0) == []
    assert a.get_timer() is None
    buf = memoryview(bytearray((0x1001).to_bytes(4, "big") + bytes(60)))
    assert a.receive(buf, 0, 64, B_ADDR, 0) == -DropReason.UNKNOWN_SPI
