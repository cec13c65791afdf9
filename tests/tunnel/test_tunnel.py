"""The sans-I/O tunnel core: two cores paired on the in-memory wire (tests/support/wire.py),
no sockets, no sleeps; and the GRO batch receive path against the one-datagram path."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_256, SUITES
from nattunnel.tunnel.core import CONSUMED, PeerMoved, RekeyNeeded, Tunnel
from tests.support.packets import A_INNER, B_INNER, ip4
from tests.support.tunnel_node import TunnelNode
from tests.support.wire import FakeWire

__all__ = ["A_INNER", "B_INNER", "ip4"]  # other tests take them from here

#: A lives behind a NAT; B is public
A_INSIDE = ("198.18.1.1", 4500)
NAT_PUBLIC = "203.0.113.9"
#: the NAT's first mapping for A, and the next one (after a rebinding)
A_PUBLIC = (NAT_PUBLIC, 61000)
A_REBOUND = (NAT_PUBLIC, 61001)
A_ADDR = ("198.18.0.1", 4500)
B_ADDR = ("198.18.0.2", 4500)


def events(t: Tunnel) -> list[object]:
    """Every event the tunnel has, taken one by one (``next_event``)."""
    out = []
    while (e := t.next_event()) is not None:
        out.append(e)
    return out


def net(s: str):
    return ipaddress.ip_network(s)


class Pair:
    """Core A behind a NAT (knows B's address) and core B (learns A's address) on the wire."""

    def __init__(self, keepalive_a=False, interval=20.0, soft_limit=None) -> None:
        k_ab, k_ba = os.urandom(36), os.urandom(36)
        self.a, self.b = a, b = Tunnel(), Tunnel()
        pa = a.add_peer("b", [net(B_INNER + "/32")], addr=B_ADDR, keepalive=keepalive_a,
                        keepalive_interval=interval)
        pb = b.add_peer("a", [net(A_INNER + "/32")])
        a.set_outbound(pa, OutboundSA(0x2001, AES_GCM_256, k_ab, soft_limit=soft_limit))
        b.install_inbound(pb, InboundSA(0x2001, AES_GCM_256, k_ab))
        b.set_outbound(pb, OutboundSA(0x1001, AES_GCM_256, k_ba))
        a.install_inbound(pa, InboundSA(0x1001, AES_GCM_256, k_ba))
        self.wire = FakeWire()
        self.nat = self.wire.add_nat(NAT_PUBLIC, [A_INSIDE[0]])
        self.nat.next_port = A_PUBLIC[1]
        self.na = TunnelNode(a, A_INSIDE)
        self.nb = TunnelNode(b, B_ADDR)
        self.wire.attach(self.na, [A_INSIDE])
        self.wire.attach(self.nb, [B_ADDR])

    def a_to_b(self, inner: bytes, now: float = 0.0) -> tuple[int, bytes | None]:
        """A sends ``inner`` at ``now``: what B's receive returned, and the packet B got."""
        return self._carry(self.na, self.nb, inner, now)

    def b_to_a(self, inner: bytes, now: float = 0.0) -> tuple[int, bytes | None]:
        return self._carry(self.nb, self.na, inner, now)

    def _carry(self, src: TunnelNode, dst: TunnelNode, inner: bytes, now: float):
        self.wire.now = max(self.wire.now, now)
        n = src.send(inner, now)
        assert n > 0, DropReason(-n)
        seen = len(dst.results)
        self.wire.run()
        assert len(dst.results) == seen + 1
        m = dst.results[-1]
        return m, (dst.take()[-1] if m > 0 else None)

    def last_datagram(self) -> bytes:
        """The last datagram the wire delivered."""
        return self.wire.delivered[-1][2]


def pair(keepalive_a=False, interval=20.0, soft_limit=None) -> Pair:
    return Pair(keepalive_a, interval, soft_limit)


def test_exchange_both_ways_and_learn_address():
    p = pair()
    a, b = p.a, p.b
    pkt = ip4(A_INNER, B_INNER)
    _, got = p.a_to_b(pkt)
    assert got == pkt
    assert b.peers["a"].addr == A_PUBLIC
    assert events(b) == [PeerMoved("a", None, A_PUBLIC)]
    back = ip4(B_INNER, A_INNER)
    _, got = p.b_to_a(back)  # to the NAT's mapping, and through it
    assert got == back
    assert p.wire.delivered[-1][:2] == (B_ADDR, A_INSIDE)
    assert events(a) == []  # configured address unchanged


def test_rebinding_only_on_authenticated_packets():
    p = pair()
    b = p.b
    p.a_to_b(ip4(A_INNER, B_INNER))
    events(b)
    # a forged packet from another port does not move the peer
    forged = bytearray(200)
    forged[0:4] = (0x2001).to_bytes(4, "big")
    forged[4:8] = (99).to_bytes(4, "big")
    p.nb.datagram_received(bytes(forged), (NAT_PUBLIC, 7), B_ADDR, 1.0)
    assert p.nb.results[-1] == -DropReason.AUTH_FAILED
    assert b.peers["a"].addr == A_PUBLIC
    # a replayed genuine packet from a new port does not move it either
    m, _ = p.a_to_b(ip4(A_INNER, B_INNER), 1.0)
    assert m > 0
    p.nb.datagram_received(p.last_datagram(), (NAT_PUBLIC, 7), B_ADDR, 1.0)
    assert p.nb.results[-1] == -DropReason.REPLAYED
    assert b.peers["a"].addr == A_PUBLIC
    # the NAT gives A a new mapping: the next authenticated packet from it moves the peer
    assert p.nat.rebind(A_INSIDE) == A_REBOUND
    m, _ = p.a_to_b(ip4(A_INNER, B_INNER), 2.0)
    assert m > 0
    assert b.peers["a"].addr == A_REBOUND
    assert b.peers["a"].rebinds == 1
    assert events(b) == [PeerMoved("a", A_PUBLIC, A_REBOUND)]


def test_inner_source_must_be_allowed():
    p = pair()
    b = p.b
    m, _ = p.a_to_b(ip4("198.18.100.77", B_INNER))
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
    wire = FakeWire()
    na, nb = TunnelNode(a, A_ADDR), TunnelNode(b, B_ADDR)
    wire.attach(na, [A_ADDR])
    wire.attach(nb, [B_ADDR])
    hdr = bytearray(40)
    hdr[0] = 0x60
    hdr[4:6] = (20).to_bytes(2, "big")
    hdr[8:24] = ipaddress.IPv6Address("2001:db8:a::1").packed
    hdr[24:40] = ipaddress.IPv6Address("2001:db8:b::1").packed
    pkt = bytes(hdr) + bytes(20)
    assert na.send(pkt) > 0
    wire.run()
    assert nb.received == [pkt]
    assert b.peers["a"].addr == A_ADDR


def test_keepalive_sent_only_after_idle_interval():
    p = pair(keepalive_a=True, interval=2.0)
    a, b, wire = p.a, p.b, p.wire

    def keepalives() -> list[tuple[object, object, bytes]]:
        return [d for d in wire.delivered if d[2] == b"\xff"]

    assert a.get_timer() == 2.0
    wire.advance(1.9)
    assert keepalives() == []
    wire.advance(0.1)  # t=2.0: one keepalive, through the NAT to B
    assert keepalives() == [(A_PUBLIC, B_ADDR, b"\xff")]
    assert p.nb.results == [CONSUMED] and b.keepalives_received == 1
    assert a.get_timer() == 4.0
    # traffic at t=3.5 postpones the next keepalive to 5.5
    wire.advance(1.5)
    p.a_to_b(ip4(A_INNER, B_INNER), now=3.5)
    wire.advance(0.5)  # t=4.0
    assert len(keepalives()) == 1
    assert a.get_timer() == 5.5
    wire.advance(1.5)  # t=5.5
    assert len(keepalives()) == 2
    assert a.peers["b"].keepalives_sent == 2
    assert b.get_timer() is None  # B sends none


def test_received_keepalives_ike_and_garbage_are_counted():
    p = pair()
    b = p.b
    p.a_to_b(ip4(A_INNER, B_INNER))
    ka = memoryview(bytearray(b"\xff"))
    assert b.receive(ka, 0, 1, A_PUBLIC, 0) == CONSUMED
    assert b.keepalives_received == 1 and b.peers["a"].keepalives_received == 1
    ike = memoryview(bytearray(bytes(4) + bytes(17) + b"\x20" + bytes(10)))
    assert b.receive(ike, 0, len(ike), A_PUBLIC, 0) == -DropReason.NO_IKE_HANDLER
    seen = []
    b.ike_handler = lambda msg, addr, now: seen.append((bytes(msg), addr))
    assert b.receive(ike, 0, len(ike), A_PUBLIC, 0) == CONSUMED
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
    p = pair(soft_limit=2)
    for _ in range(4):
        m, _ = p.a_to_b(ip4(A_INNER, B_INNER))
        assert m > 0
    assert events(p.a) == [RekeyNeeded("b", 0x2001)]


def test_remove_peer_forgets_spis_routes_and_timers():
    a = pair(keepalive_a=True, interval=1.0).a
    a.remove_peer("b")
    assert a.route(ip4(A_INNER, B_INNER)) is None
    a.handle_timer(10.0)
    assert a.datagrams_to_send() == []
    assert a.get_timer() is None
    buf = memoryview(bytearray((0x1001).to_bytes(4, "big") + bytes(60)))
    assert a.receive(buf, 0, 64, B_ADDR, 0) == -DropReason.UNKNOWN_SPI


# --- the GRO batch receive path (receive_batch, InboundSA.decapsulate_run) against the
# one-datagram path: the same packets delivered, the same drops counted, the same state left
# behind, for any mix of fresh, replayed, reordered, forged, foreign and short datagrams ---
A1 = A_INNER
A2 = "198.18.100.5"  # allowed for peer "c", not for "a"
FROM = ("198.18.0.9", 4500)
SIZE = 200  # inner packet octets: every datagram of the batch has the same length


def to_b(src: str, size: int = SIZE) -> bytes:
    return ip4(src, B_INNER, size)


def receiver(suite, keys, esn):
    t = Tunnel()
    pa = t.add_peer("a", [ipaddress.ip_network(A1 + "/32")], addr=("198.18.0.1", 4500))
    pc = t.add_peer("c", [ipaddress.ip_network(A2 + "/32")])
    t.install_inbound(pa, InboundSA(0x100, suite, keys[0], esn=esn, replay_window=64))
    t.install_inbound(pa, InboundSA(0x101, suite, keys[1], esn=esn, replay_window=64))
    t.install_inbound(pc, InboundSA(0x200, suite, keys[2], esn=esn, replay_window=64))
    return t


def state(t: Tunnel):
    return (
        t.drops.as_dict(),
        t.keepalives_received,
        [(p.name, p.addr, p.last_rx, p.source_drops, p.rebinds) for p in t.peers.values()],
        [(sa.spi, sa.packets, sa.bytes, sa.drops.as_dict(), sa.replay.top)
         for p in t.peers.values() for sa in p.inbound],
        [(type(e).__name__, getattr(e, "peer", None)) for e in t.events],
    )


def craft(suite, keymat, spi, seq, plaintext):
    """An ESP packet around an arbitrary plaintext (payload, padding, pad length, next
    header already in it), as a peer might send one: 32-bit sequence numbers."""
    key, salt = suite.split_keymat(keymat)
    header = struct.pack("!IIQ", spi, seq, seq)
    return header + suite.aead(key).encrypt(salt + header[8:], plaintext, header[:8])


def odd_plaintexts():
    """Plaintexts of the same length as an ESP packet's for a SIZE-octet IPv4 packet (SIZE+2
    plus 2 octets of padding), each taking the general checks: long padding, IPv6, a dummy,
    TFC padding, and the ways a trailer or inner header can be wrong."""
    room = SIZE + 4
    v4 = bytearray(to_b(A1, SIZE - 4))
    v6 = bytearray(os.urandom(SIZE))
    v6[0] = 0x60
    v6[4:6] = (SIZE - 40).to_bytes(2, "big")
    v6[8:24] = ipaddress.IPv6Address("2001:db8::1").packed
    tfc = bytearray(to_b(A1, 150)) + bytes(SIZE - 150)
    def trailer(pad, nh):
        return bytes(range(1, pad + 1)) + bytes((pad, nh))
    texts = [
        bytes(v4) + trailer(6, 4),                      # 6 octets of padding
        bytes(v6) + trailer(2, 41),                     # IPv6
        bytes(SIZE) + trailer(2, 59),                   # dummy packet
        bytes(tfc) + trailer(2, 4),                     # TFC padding after the inner packet
        bytes(to_b(A1)) + b"\x01\x03" + bytes((2, 4)),    # wrong padding octet
        bytes(to_b(A1)) + b"\x05\x02" + bytes((2, 4)),    # wrong first padding octet
        bytes(to_b(A1)) + trailer(2, 17),                # next header not IP
        bytes(v6) + trailer(2, 4),                      # next header 4, inner IPv6
        bytes(to_b(A1, SIZE)[:2]) + b"\x01\x00" + bytes(to_b(A1))[4:] + trailer(2, 4),  # too long
        bytes(to_b(A1)[:2]) + b"\x00\x10" + bytes(to_b(A1))[4:] + trailer(2, 4),  # under 20
        bytes(v4) + bytes(range(1, 7)) + bytes((5, 4)),  # pad length disagrees with the padding
    ]
    assert all(len(t) == room for t in texts)
    return texts


@st.composite
def batches(draw):
    suite = draw(st.sampled_from(sorted(SUITES.values(), key=lambda s: s.name)))
    esn = draw(st.booleans())
    keys = [os.urandom(suite.keymat_len) for _ in range(3)]
    start = draw(st.sampled_from([0, 2**32 - 20])) if esn else 0
    outs = [OutboundSA(spi, suite, k, esn=esn, initial_seq=start)
            for spi, k in zip((0x100, 0x101, 0x200), keys, strict=True)]
    pool = {
        0: [outs[0].encapsulate(to_b(A1)) for _ in range(80)],
        1: [outs[1].encapsulate(to_b(A1)) for _ in range(10)],
        2: [outs[2].encapsulate(to_b(A2)) for _ in range(10)],
        3: [outs[0].encapsulate(to_b(A2)) for _ in range(5)],  # source not allowed on "a"
        4: [outs[0].encapsulate(bytes(to_b(A1))[:SIZE - 4] + bytes(4)) for _ in range(3)],
    }
    if not esn:
        pool[5] = [craft(suite, keys[0], 0x100, 1000 + i, t)
                   for i, t in enumerate(odd_plaintexts())]
    seg = len(pool[0][0])
    assert all(len(d) == seg for v in pool.values() for d in v)
    kinds = st.one_of(
        st.tuples(st.just("pkt"), st.sampled_from([0, 0, 0, 0, *sorted(pool)[1:]]),
                  st.integers(0, 79), st.one_of(st.just(-1), st.integers(0, seg - 1))),
        st.tuples(st.just("junk"), st.binary(min_size=seg, max_size=seg)),
    )
    items = draw(st.lists(kinds, min_size=1, max_size=40))
    datagrams = []
    for it in items:
        if it[0] == "junk":
            datagrams.append(it[1])
            continue
        _, src, idx, flip = it
        d = bytearray(pool[src][idx % len(pool[src])])
        if flip >= 0:
            d[flip] ^= 0x40
        datagrams.append(bytes(d))
    last = draw(st.sampled_from(["none", "keepalive", "short", "truncated", "ike"]))
    if last == "keepalive":
        datagrams.append(b"\xff")
    elif last == "short":
        datagrams.append(outs[0].encapsulate(to_b(A1, 60)))
    elif last == "truncated":
        datagrams.append(pool[0][0][:20])
    elif last == "ike":
        datagrams.append(bytes(4) + os.urandom(40))
    return suite, keys, esn, seg, datagrams


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=batches())
def test_batch_receive_equals_one_by_one(case):
    suite, keys, esn, seg, datagrams = case
    one, many = receiver(suite, keys, esn), receiver(suite, keys, esn)
    one.ike_handler = many.ike_handler = lambda data, addr, now: None
    blob = b"".join(datagrams)

    got_one = []
    buf = memoryview(bytearray(blob))
    off = 0
    for d in datagrams:
        m = one.receive(buf, off, len(d), FROM, 5.0)
        if m > 0:
            got_one.append(bytes(buf[off + 16 : off + 16 + m]))
        off += len(d)

    got_many = []
    buf2 = memoryview(bytearray(blob))
    many.receive_batch(buf2, len(blob), seg, FROM, 5.0, lambda v: got_many.append(bytes(v)))

    assert got_many == got_one
    assert state(many) == state(one)
    # and no plaintext left where a datagram failed: the buffers agree octet for octet
    assert bytes(buf2) == bytes(buf)


def test_batch_moves_peer_only_after_an_authentic_packet():
    suite = SUITES["aes128gcm16"]
    keys = [os.urandom(suite.keymat_len) for _ in range(3)]
    t = receiver(suite, keys, False)
    out = OutboundSA(0x100, suite, keys[0])
    good = out.encapsulate(to_b(A1))
    forged = bytearray(out.encapsulate(to_b(A1)))
    forged[-1] ^= 1
    blob = bytes(forged) * 3
    t.receive_batch(memoryview(bytearray(blob)), len(blob), len(good), FROM, 1.0, print)
    assert t.peers["a"].addr == ("198.18.0.1", 4500) and not t.events
    blob = bytes(forged) + good
    got = []
    t.receive_batch(memoryview(bytearray(blob)), len(blob), len(good), FROM, 2.0, got.append)
    assert len(got) == 1 and t.peers["a"].addr == FROM
    assert [type(t.next_event()), t.next_event()] == [PeerMoved, None]


@pytest.mark.parametrize("inner_len", [12, 16, 19, 20])
def test_batch_of_tiny_inner_packets_equals_one_by_one(inner_len):
    """IPv4 headers that claim fewer than 20 octets, with a trailer that is otherwise right:
    refused (BAD_INNER_PACKET) by both paths; 20 octets are accepted by both."""
    suite = SUITES["aes256gcm16"]
    keys = [os.urandom(suite.keymat_len) for _ in range(3)]
    pad = (-(inner_len + 2)) & 3
    inner = bytearray(to_b(A1, 20))[:inner_len]
    inner[2:4] = inner_len.to_bytes(2, "big")
    text = bytes(inner) + bytes(range(1, pad + 1)) + bytes((pad, 4))
    datagrams = [craft(suite, keys[0], 0x100, seq, text) for seq in (1, 2, 3)]
    one, many = receiver(suite, keys, False), receiver(suite, keys, False)
    got_one: list[bytes] = []
    for d in datagrams:
        buf = memoryview(bytearray(d))
        m = one.receive(buf, 0, len(d), FROM, 1.0)
        if m > 0:
            got_one.append(bytes(buf[16 : 16 + m]))
    got_many: list[bytes] = []
    blob = b"".join(datagrams)
    many.receive_batch(memoryview(bytearray(blob)), len(blob), len(datagrams[0]), FROM, 1.0,
                       lambda v: got_many.append(bytes(v)))
    assert got_many == got_one
    assert state(many) == state(one)
    assert len(got_one) == (3 if inner_len == 20 else 0)
