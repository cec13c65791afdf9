"""The GRO batch receive path (``Tunnel.receive_batch``, ``InboundSA.decapsulate_run``)
against the one-datagram path: the same packets delivered, the same drops counted, the same
state left behind, for any mix of fresh, replayed, reordered, forged, foreign and short
datagrams."""

from __future__ import annotations

import ipaddress
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nattunnel.bench.crypto import ipv4_packet
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import SUITES
from nattunnel.tunnel.core import PeerMoved, Tunnel

A1 = "198.18.100.1"
A2 = "198.18.100.5"  # allowed for peer "c", not for "a"
B = "198.18.100.2"
FROM = ("198.18.0.9", 4500)
SIZE = 200  # inner packet octets: every datagram of the batch has the same length


def ip4(src: str, size: int = SIZE) -> bytes:
    p = bytearray(ipv4_packet(size))
    p[12:16] = ipaddress.IPv4Address(src).packed
    p[16:20] = ipaddress.IPv4Address(B).packed
    return bytes(p)


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
    v4 = bytearray(ip4(A1, SIZE - 4))
    v6 = bytearray(os.urandom(SIZE))
    v6[0] = 0x60
    v6[4:6] = (SIZE - 40).to_bytes(2, "big")
    v6[8:24] = ipaddress.IPv6Address("2001:db8::1").packed
    tfc = bytearray(ip4(A1, 150)) + bytes(SIZE - 150)
    def trailer(pad, nh):
        return bytes(range(1, pad + 1)) + bytes((pad, nh))
    texts = [
        bytes(v4) + trailer(6, 4),                      # 6 octets of padding
        bytes(v6) + trailer(2, 41),                     # IPv6
        bytes(SIZE) + trailer(2, 59),                   # dummy packet
        bytes(tfc) + trailer(2, 4),                     # TFC padding after the inner packet
        bytes(ip4(A1)) + b"\x01\x03" + bytes((2, 4)),    # wrong padding octet
        bytes(ip4(A1)) + b"\x05\x02" + bytes((2, 4)),    # wrong first padding octet
        bytes(ip4(A1)) + trailer(2, 17),                # next header not IP
        bytes(v6) + trailer(2, 4),                      # next header 4, inner IPv6
        bytes(ip4(A1, SIZE)[:2]) + b"\x01\x00" + bytes(ip4(A1))[4:] + trailer(2, 4),  # too long
        bytes(ip4(A1)[:2]) + b"\x00\x10" + bytes(ip4(A1))[4:] + trailer(2, 4),  # under 20
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
        0: [outs[0].encapsulate(ip4(A1)) for _ in range(80)],
        1: [outs[1].encapsulate(ip4(A1)) for _ in range(10)],
        2: [outs[2].encapsulate(ip4(A2)) for _ in range(10)],
        3: [outs[0].encapsulate(ip4(A2)) for _ in range(5)],  # source not allowed on "a"
        4: [outs[0].encapsulate(bytes(ip4(A1))[:SIZE - 4] + bytes(4)) for _ in range(3)],
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
        datagrams.append(outs[0].encapsulate(ip4(A1, 60)))
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
    good = out.encapsulate(ip4(A1))
    forged = bytearray(out.encapsulate(ip4(A1)))
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
    inner = bytearray(ip4(A1, 20))[:inner_len]
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
