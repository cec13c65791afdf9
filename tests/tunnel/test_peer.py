"""A tunnel peer (tunnel/peer.py): the inner source check, encapsulation with its counters
and refusals, stats, and the keepalive policy."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest

from nattunnel.constants import ESP_PLAINTEXT_OFFSET
from nattunnel.esp.drop import DropCounters, DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.tunnel.peer import KeepaliveMode, Peer
from tests.support.packets import ip4

B_ADDR = ("198.18.0.2", 4500)


def net(s: str):
    return ipaddress.ip_network(s)


def ip6(src: str, dst: str = "fd00:b::1", payload: int = 20) -> bytes:
    hdr = bytearray(40)
    hdr[0] = 0x60
    hdr[4:6] = payload.to_bytes(2, "big")
    hdr[8:24] = ipaddress.IPv6Address(src).packed
    hdr[24:40] = ipaddress.IPv6Address(dst).packed
    return bytes(hdr) + bytes(payload)


def test_source_allowed_by_prefix_and_family():
    p = Peer("a", [net("198.18.100.0/24"), net("198.19.0.1/32"), net("fd00:a::/48")])
    ok4 = [ip4("198.18.100.1", "198.18.200.1"), ip4("198.18.100.255", "1.2.3.4"),
           ip4("198.19.0.1", "198.18.200.1")]
    bad4 = [ip4("198.18.101.1", "198.18.200.1"), ip4("198.19.0.2", "198.18.200.1"),
            ip4("10.0.0.1", "198.18.200.1")]
    for pkt in ok4:
        assert p.source_allowed_at(pkt, 0)
    for pkt in bad4:
        assert not p.source_allowed_at(pkt, 0)
    assert p.source_allowed_at(ip6("fd00:a:0:1::9"), 0)
    assert not p.source_allowed_at(ip6("fd00:b::9"), 0)
    # at an offset in a buffer, as the tunnel core looks (behind the ESP header and IV)
    buf = bytes(ESP_PLAINTEXT_OFFSET) + ok4[0]
    assert p.source_allowed_at(buf, ESP_PLAINTEXT_OFFSET)
    # no IPv6 prefixes: no IPv6 source passes, and the other way round
    assert not Peer("v4", [net("0.0.0.0/0")]).source_allowed_at(ip6("fd00:a::1"), 0)
    assert not Peer("v6", [net("::/0")]).source_allowed_at(ip4("198.18.100.1", "1.2.3.4"), 0)


def peer_with_sa(**sa_kw) -> tuple[Peer, OutboundSA, InboundSA, DropCounters]:
    key = os.urandom(AES_GCM_128.keymat_len)
    drops = DropCounters()
    p = Peer("b", [net("198.18.100.2/32")], addr=B_ADDR, drops=drops)
    p.outbound = OutboundSA(0x3001, AES_GCM_128, key, **sa_kw)
    return p, p.outbound, InboundSA(0x3001, AES_GCM_128, key), drops


def test_encapsulate_into_and_in_place_make_the_same_packet_and_count():
    p, out, inb, drops = peer_with_sa()
    pkt = ip4("198.18.100.1", "198.18.100.2", 300)
    buf = memoryview(bytearray(2048))
    n = p.encapsulate_into(pkt, buf, now=5.0)
    assert n > 0 and inb.decapsulate(bytes(buf[:n])) == pkt
    assert (p.last_tx, p.tx_bytes, out.packets) == (5.0, len(pkt), 1)  # inner octets
    # in place: the packet already lies where the plaintext goes
    buf[ESP_PLAINTEXT_OFFSET : ESP_PLAINTEXT_OFFSET + len(pkt)] = pkt
    m = p.encapsulate_in_place(buf, 0, len(pkt), now=6.0)
    assert m == n and inb.decapsulate(bytes(buf[:m])) == pkt
    assert (p.last_tx, p.tx_bytes, out.packets) == (6.0, 2 * len(pkt), 2)
    assert drops.total() == 0


def test_refusals_are_counted_in_the_given_drops():
    drops = DropCounters()
    p = Peer("b", [net("198.18.100.2/32")], drops=drops)
    buf = memoryview(bytearray(2048))
    pkt = ip4("198.18.100.1", "198.18.100.2")
    assert p.encapsulate_into(pkt, buf, 0.0) == -DropReason.NO_ENDPOINT  # no SA, no address
    p.outbound = OutboundSA(0x3001, AES_GCM_128, os.urandom(20))
    assert p.encapsulate_into(pkt, buf, 0.0) == -DropReason.NO_ENDPOINT  # no address yet
    p.addr = B_ADDR
    assert p.encapsulate_into(pkt, buf, 0.0) > 0
    p.outbound = OutboundSA(0x3001, AES_GCM_128, os.urandom(20), initial_seq=0xFFFFFFFF)
    assert p.encapsulate_into(pkt, buf, 1.0) == -DropReason.SEQUENCE_EXHAUSTED
    assert drops[DropReason.NO_ENDPOINT] == 2 and drops[DropReason.SEQUENCE_EXHAUSTED] == 1
    assert p.last_tx == 0.0  # a refused packet is not traffic
    # a peer on its own counts in its own
    alone = Peer("c", [net("198.18.100.3/32")])
    assert alone.encapsulate_into(pkt, buf, 0.0) == -DropReason.NO_ENDPOINT
    assert alone.drops[DropReason.NO_ENDPOINT] == 1


def test_soft_limit_calls_on_rekey_once_per_signal():
    p, out, _, _ = peer_with_sa(soft_limit=2)
    calls: list[Peer] = []
    p.on_rekey = calls.append
    buf = memoryview(bytearray(2048))
    pkt = ip4("198.18.100.1", "198.18.100.2")
    p.encapsulate_into(pkt, buf, 0.0)
    p.encapsulate_into(pkt, buf, 0.0)  # sequence number 2: the soft limit, not past it
    assert calls == [] and not out.rekey_needed
    p.encapsulate_into(pkt, buf, 0.0)
    assert out.rekey_needed and calls == [p]
    p.encapsulate_into(pkt, buf, 0.0)
    assert calls == [p, p]  # until the tunnel says it signalled
    p.rekey_signalled = True
    p.encapsulate_into(pkt, buf, 0.0)
    assert calls == [p, p]


def test_stats():
    p, _, inb, _ = peer_with_sa()
    p.inbound.append(inb)
    buf = memoryview(bytearray(2048))
    pkt = ip4("198.18.100.1", "198.18.100.2", 100)
    n = p.encapsulate_into(pkt, buf, 0.0)
    assert inb.decapsulate(struct.pack("!II", 0x3001, 7) + bytes(40)) == DropReason.AUTH_FAILED
    assert inb.decapsulate(bytes(buf[:n])) == pkt
    p.keepalives_sent, p.rebinds, p.source_drops = 3, 1, 2
    s = p.stats()
    assert s["addr"] == list(B_ADDR)
    assert s["allowed_ips"] == ["198.18.100.2/32"]
    assert (s["tx_packets"], s["rx_packets"], s["rx_bytes"]) == (1, 1, 100)
    assert (s["keepalives_sent"], s["rebinds"], s["source_drops"]) == (3, 1, 2)
    assert s["rekey_needed"] is False
    assert s["sa_drops"] == {"0x00003001": {"auth_failed": 1}}
    assert Peer("x", [])._allowed4 == () and Peer("x", []).stats()["addr"] is None


def test_keepalive_interval_must_be_positive():
    with pytest.raises(ValueError, match="keepalive_interval"):
        Peer("a", [], keepalive_interval=0)


@pytest.mark.parametrize(("mode", "behind_nat", "wanted"), [
    (KeepaliveMode.NAT, True, True),
    (KeepaliveMode.NAT, False, False),
    (KeepaliveMode.ALWAYS, True, True),
    (KeepaliveMode.ALWAYS, False, True),
    (KeepaliveMode.NEVER, True, False),
    (KeepaliveMode.NEVER, False, False),
])
def test_keepalive_mode_wanted(mode, behind_nat, wanted):
    assert mode.wanted(behind_nat) is wanted
    assert KeepaliveMode(mode.value) is mode  # spelled as in the config file


def test_counters_survive_rekeys_and_count_each_sa_once():
    """A rekey replaces the outbound SA and later removes the old inbound one: the peer's
    totals keep what the gone SAs carried, and switching back to an older outbound SA (a
    rekey collision's survivor) counts nothing twice."""
    from nattunnel.tunnel.core import Tunnel

    t = Tunnel()
    p = t.add_peer("b", [net("198.18.100.2/32")], addr=B_ADDR)
    key1, key2 = os.urandom(AES_GCM_128.keymat_len), os.urandom(AES_GCM_128.keymat_len)
    out1, out2 = OutboundSA(0x3001, AES_GCM_128, key1), OutboundSA(0x3002, AES_GCM_128, key2)
    in1, in2 = InboundSA(0x4001, AES_GCM_128, key1), InboundSA(0x4002, AES_GCM_128, key2)
    buf = memoryview(bytearray(2048))
    pkt = ip4("198.18.100.1", "198.18.100.2", 100)

    def send(k: int) -> None:
        for _ in range(k):
            assert p.encapsulate_into(pkt, buf, 0.0) > 0

    t.set_outbound(p, out1)
    t.install_inbound(p, in1)
    send(3)
    in1.packets, in1.bytes = 5, 500  # as if received
    t.set_outbound(p, out2)  # the rekey
    t.install_inbound(p, in2)
    assert p.outbound_bytes() == 0
    send(2)
    assert p.outbound_bytes() == 2 * len(pkt)
    t.remove_inbound(0x4001)  # its grace period is over
    in2.packets, in2.bytes = 1, 100
    assert p.totals() == (5, 5 * len(pkt), 6, 600)
    t.set_outbound(p, out1)  # back to the older one, then on it once more
    send(1)
    t.set_outbound(p, None)
    assert p.totals() == (6, 6 * len(pkt), 6, 600)
    s = p.stats()
    assert (s["tx_packets"], s["tx_bytes"], s["rx_packets"], s["rx_bytes"]) == (
        6, 6 * len(pkt), 6, 600)
