"""STUN beside ESP, IKE and keepalives on the NAT-T socket, without ambiguity (RFC 8489
section 5, RFC 7983's first-octet rule, docs/wire-format.md "STUN on port 4500"):

- every STUN message aioice can encode (any method, class, attributes, transaction ID) is
  STUN, never ESP, IKE or a keepalive, and the tunnel hands it to its STUN handler without
  any SA seeing it;
- every ESP packet with one of our SPIs (``new_child_spi``) is ESP, whatever follows the SPI
  (a magic cookie and a fitting length too), and reaches its SA;
- keepalives and IKE behind the non-ESP marker are what they were;
- an inbound SPI below 0x40000000 (a manual SA's) switches STUN demultiplexing off.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Any

from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nattunnel.constants import SPI_RESERVED_MAX, SPI_STUN_SAFE_MIN, STUN_MAGIC_COOKIE
from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.esp.udpencap import Kind, classify, frame_ike, is_stun
from nattunnel.ike.base import new_child_spi
from nattunnel.traversal.stun import looks_like_stun
from nattunnel.tunnel.core import CONSUMED, Tunnel
from tests.support.packets import A_INNER, B_INNER, ip4

FROM = ("198.18.0.10", 3478)
KEY = bytes(20)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
address = st.tuples(ipv4 | ipv6, ports)
text = st.text(max_size=40)
blob = st.binary(max_size=64)

#: a value for each of aioice's attribute packers
VALUES: dict[Any, st.SearchStrategy[Any]] = {
    stun.pack_address: address,
    stun.pack_xor_address: address,
    stun.pack_unsigned: st.integers(0, 2**32 - 1),
    stun.pack_unsigned_short: st.integers(0, 2**16 - 1),
    stun.pack_unsigned_64: st.integers(0, 2**64 - 1),
    stun.pack_string: text,
    stun.pack_bytes: blob,
    stun.pack_none: st.none(),
    stun.pack_error_code: st.tuples(st.integers(300, 699), text),
}
attributes = st.dictionaries(
    st.sampled_from([a[1] for a in stun.ATTRIBUTES if a[1] != "FINGERPRINT"]),
    st.none(), max_size=8,
).flatmap(lambda names: st.fixed_dictionaries(
    {n: VALUES[stun.ATTRIBUTES_BY_NAME[n][2]] for n in names}))


@st.composite
def stun_messages(draw: st.DrawFn) -> bytes:
    msg = stun.Message(draw(st.sampled_from(list(stun.Method))),
                       draw(st.sampled_from(list(stun.Class))),
                       transaction_id=draw(st.binary(min_size=12, max_size=12)),
                       attributes=draw(attributes))
    if draw(st.booleans()):
        msg.add_fingerprint()
    data = bytearray(bytes(msg))
    if draw(st.booleans()):
        # any method of the 12-bit space (0 is reserved, section 18.2) in RFC 8489 section
        # 5's bit layout (M11..M7, C1, M6..M4, C0, M3..M0), any class
        m, c = draw(st.integers(1, 0xFFF)), draw(st.integers(0, 3))
        mtype = ((m & 0xF80) << 2) | ((c & 2) << 7) | ((m & 0x70) << 1) | ((c & 1) << 4) | (
            m & 0xF)
        data[0:2] = mtype.to_bytes(2, "big")
    return bytes(data)


def stun_tunnel(spis: list[int]) -> tuple[Tunnel, list[bytes], list[bytes], list[InboundSA]]:
    """A tunnel with STUN and IKE handlers and inbound SAs with ``spis``."""
    got_stun: list[bytes] = []
    got_ike: list[bytes] = []
    t = Tunnel(ike_handler=lambda d, a, now: got_ike.append(bytes(d)))
    t.stun_handler = lambda d, a, now: got_stun.append(bytes(d)) or True
    peer = t.add_peer("p", [ipaddress.ip_network(A_INNER + "/32")], addr=("198.18.0.1", 4500))
    sas = [InboundSA(spi, AES_GCM_128, KEY) for spi in spis]
    for sa in sas:
        t.install_inbound(peer, sa)
    return t, got_stun, got_ike, sas


OUR_SPIS = sorted({new_child_spi() for _ in range(64)})


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stun_messages())
def test_every_stun_message_is_stun_and_reaches_the_stun_handler_only(data: bytes) -> None:
    c = classify(data)
    assert c.kind is Kind.STUN, (data.hex(), c)
    assert is_stun(data, 0, len(data)) and looks_like_stun(data)
    assert data[0] < 0x40 and struct.unpack_from("!I", data, 4)[0] == STUN_MAGIC_COOKIE
    t, got_stun, got_ike, sas = stun_tunnel(OUR_SPIS)
    buf = memoryview(bytearray(data))
    assert t.receive(buf, 0, len(data), FROM, 1.0) == CONSUMED
    assert got_stun == [data] and got_ike == []
    assert t.stun_received == 1 and t.drops.total() == 0
    assert all(sa.drops.total() == 0 and sa.packets == 0 for sa in sas)  # no SA saw it


@settings(max_examples=1500, deadline=None)
@given(st.integers(SPI_STUN_SAFE_MIN, 2**32 - 1), st.binary(min_size=4, max_size=200),
       st.booleans())
def test_esp_with_one_of_our_spis_is_esp_whatever_follows(spi: int, rest: bytes,
                                                          stun_tail: bool) -> None:
    data = bytearray(spi.to_bytes(4, "big") + rest)
    if stun_tail and len(data) >= 20:
        # the worst case: a magic cookie as sequence number and a length that fits
        data[4:8] = STUN_MAGIC_COOKIE.to_bytes(4, "big")
        data = data[: len(data) & ~3]
        data[2:4] = (len(data) - 20).to_bytes(2, "big")
        spi = int.from_bytes(data[:4], "big")  # the length octets are part of the SPI
    c = classify(bytes(data))
    assert c.kind is Kind.ESP and c.spi == spi
    assert not is_stun(data, 0, len(data))


def test_new_child_spi_over_many_draws() -> None:
    spis = [new_child_spi() for _ in range(30_000)]
    assert min(spis) >= SPI_STUN_SAFE_MIN > SPI_RESERVED_MAX
    assert max(spis) <= 0xFFFFFFFF
    # uniform over 0x40000000-0xFFFFFFFF: each quarter of the first octet's range gets a third
    quarters = [sum(1 for s in spis if s >> 30 == q) for q in (1, 2, 3)]
    assert all(9_000 < q < 11_000 for q in quarters), quarters
    for spi in spis[:5000]:
        packet = spi.to_bytes(4, "big") + os.urandom(60)
        c = classify(packet)
        assert c.kind is Kind.ESP and c.spi == spi


def test_real_esp_with_our_spis_reaches_its_sa_beside_stun() -> None:
    spi = new_child_spi()
    t, got_stun, _, (sa,) = stun_tunnel([spi])
    out = OutboundSA(spi, AES_GCM_128, KEY)
    buf = memoryview(bytearray(2048))
    stun_req = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                  attributes={"XOR-MAPPED-ADDRESS": ("198.18.0.1", 4500)}))
    for i in range(50):
        n = out.encapsulate_into(ip4(A_INNER, B_INNER, 60 + i), buf)
        assert t.receive(buf, 0, n, ("198.18.0.1", 4500), 1.0) == 60 + i
        buf[: len(stun_req)] = stun_req
        assert t.receive(buf, 0, len(stun_req), FROM, 1.0) == CONSUMED
    assert sa.packets == 50 and sa.drops.total() == 0
    assert len(got_stun) == 50 and t.stun_received == 50


def test_stun_in_a_gro_batch() -> None:
    t, got_stun, _, _ = stun_tunnel(OUR_SPIS)
    msgs = [bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                               attributes={"XOR-MAPPED-ADDRESS": ("198.18.0.1", 4500 + i)}))
            for i in range(5)]
    seg = len(msgs[0])
    buf = memoryview(bytearray(b"".join(msgs)))
    delivered: list[bytes] = []
    t.receive_batch(buf, len(buf), seg, FROM, 1.0, lambda p: delivered.append(bytes(p)))
    assert got_stun == msgs and delivered == [] and t.drops.total() == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=28, max_size=120), st.booleans())
def test_ike_behind_the_marker_is_ike_never_stun(ike: bytes, cookie: bool) -> None:
    msg = bytearray(ike)
    msg[17] = 0x20  # IKEv2
    if cookie:
        msg[0:4] = STUN_MAGIC_COOKIE.to_bytes(4, "big")  # SPIi: the cookie at offset 4 of the
    data = frame_ike(bytes(msg))                         # datagram, after the marker
    assert classify(data).kind is Kind.IKE
    assert not is_stun(data, 0, len(data))
    t, got_stun, got_ike, _ = stun_tunnel(OUR_SPIS)
    assert t.receive(memoryview(bytearray(data)), 0, len(data), FROM, 1.0) == CONSUMED
    assert got_ike == [bytes(msg)] and got_stun == []


def test_keepalive_is_a_keepalive() -> None:
    t, got_stun, got_ike, _ = stun_tunnel(OUR_SPIS)
    assert classify(b"\xff").kind is Kind.KEEPALIVE
    assert t.receive(memoryview(bytearray(b"\xff")), 0, 1, FROM, 1.0) == CONSUMED
    assert t.keepalives_received == 1 and got_stun == got_ike == []


def test_type_zero_is_not_stun() -> None:
    # method 0x000 is reserved: its first four octets are the marker or a reserved SPI
    msg = bytes(20)[:4] + STUN_MAGIC_COOKIE.to_bytes(4, "big") + bytes(12)
    assert classify(msg).reason is DropReason.TRUNCATED
    msg4 = bytes.fromhex("00000004") + msg[4:] + bytes(4)
    assert classify(msg4).reason is DropReason.RESERVED_SPI


def test_without_a_stun_handler_stun_is_dropped_as_before() -> None:
    t = Tunnel()
    data = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE))
    assert t.receive(memoryview(bytearray(data)), 0, len(data), FROM, 1.0) \
        == -DropReason.UNKNOWN_SPI
    assert t.stun_received == 0 and not t.stun_demux


def test_a_manual_spi_below_0x40000000_switches_stun_off() -> None:
    data = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE))
    t, got_stun, _, _ = stun_tunnel([*OUR_SPIS, 0x2001])
    assert t.stun_unsafe_spis() == [0x2001] and not t.stun_demux
    assert t.receive(memoryview(bytearray(data)), 0, len(data), FROM, 1.0) \
        == -DropReason.UNKNOWN_SPI
    assert got_stun == [] and t.stun_ignored == 1
    assert t.stats()["stun"] == {"received": 0, "unmatched": 0, "ignored": 1, "demux": False}
    t.remove_inbound(0x2001)
    assert t.stun_demux
    assert t.receive(memoryview(bytearray(data)), 0, len(data), FROM, 1.0) == CONSUMED
    assert got_stun == [data]
    # and when its peer goes
    t.install_inbound(t.peers["p"], InboundSA(0x3000_0000, AES_GCM_128, KEY))
    assert not t.stun_demux
    t.remove_peer("p")
    assert t.stun_demux and t.stun_unsafe_spis() == []


def test_stun_the_handler_did_not_wait_for_is_junk() -> None:
    """Late, duplicate or foreign STUN: counted as UNKNOWN_SPI too, so that a flood of it
    engages the socket filter like any other junk (io/sockfilter.py counts UNKNOWN_SPI)."""
    t = Tunnel()
    seen: list[bytes] = []
    t.stun_handler = lambda d, a, now: seen.append(bytes(d)) and False
    data = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE))
    for _ in range(3):
        assert t.receive(memoryview(bytearray(data)), 0, len(data), FROM, 1.0) \
            == -DropReason.UNKNOWN_SPI
    assert len(seen) == 3 and t.stun_received == 3 and t.stun_unmatched == 3
    assert t.drops[DropReason.UNKNOWN_SPI] == 3
