"""ESP SA behaviour, RFC 4303 tunnel mode: round trips, wire layout, limits, drops."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nattunnel.constants import NH_IPV4, NH_IPV6, SEQ_MAX_32, SEQ_MAX_64
from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA, SequenceNumberExhausted
from nattunnel.esp.suite import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305, SUITES, suite_by_name
from nattunnel.esp.udpencap import Kind, classify
from nattunnel.lab.packets import ipv4_packet

SUITE_LIST = list(SUITES.values())
SPI = 0xC0FFEE01


def ipv6_packet(payload_len: int) -> bytes:
    hdr = bytearray(40)
    hdr[0] = 0x60
    hdr[4:6] = payload_len.to_bytes(2, "big")
    hdr[6] = 17
    hdr[7] = 64
    return bytes(hdr) + os.urandom(payload_len)


def pair(suite, esn=False, **kw):
    km = os.urandom(suite.keymat_len)
    return OutboundSA(SPI, suite, km, esn=esn, **kw), InboundSA(SPI, suite, km, esn=esn), km


@pytest.mark.parametrize("suite", SUITE_LIST, ids=lambda s: s.name)
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("size", [20, 21, 22, 23, 24, 64, 512, 1400, 9000])
def test_round_trip_ipv4(suite, esn, size):
    out, inb, _ = pair(suite, esn)
    inner = ipv4_packet(size)
    assert inb.decapsulate(out.encapsulate(inner)) == inner
    # the fast path gives the same bytes as the general path
    buf = memoryview(bytearray(size + 64))
    n = out.encapsulate_into(inner, buf)
    rx = memoryview(bytearray(buf[:n]))
    m = inb.decapsulate_into(rx, 0, n)
    assert m == size and bytes(rx[16 : 16 + m]) == inner
    assert inb.packets == 2 and out.packets == 2


@pytest.mark.parametrize("suite", SUITE_LIST, ids=lambda s: s.name)
def test_round_trip_ipv6(suite):
    out, inb, _ = pair(suite)
    inner = ipv6_packet(1000)
    pkt = out.encapsulate(inner)
    assert inb.decapsulate(pkt) == inner


@pytest.mark.parametrize("suite", SUITE_LIST, ids=lambda s: s.name)
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_wire_layout_is_rfc4303(suite, esn):
    """Decrypt our packet by hand with the bare AEAD: SPI, seq, IV, AAD, trailer as specified."""
    out, _, km = pair(suite, esn, initial_seq=(7 << 32) + 41 if esn else 41)
    key, salt = km[: suite.key_len], km[suite.key_len :]
    inner = ipv4_packet(61)
    pkt = out.encapsulate(inner)
    spi, seq_lo, iv = struct.unpack_from("!IIQ", pkt)
    full = (7 << 32) + 42 if esn else 42
    assert spi == SPI and seq_lo == full & 0xFFFFFFFF and iv == full
    aad = struct.pack("!III", SPI, full >> 32, seq_lo) if esn else pkt[:8]
    aead = (ChaCha20Poly1305 if suite is CHACHA20_POLY1305 else AESGCM)(key)
    plain = aead.decrypt(salt + pkt[8:16], pkt[16:], aad)
    # 61 + 2 = 63 -> 1 padding octet to reach 64
    assert plain == inner + b"\x01" + bytes([1, NH_IPV4])
    assert len(pkt) == 8 + 8 + 64 + 16


def test_next_header_ipv6_and_padding_sequence():
    out, _, km = pair(AES_GCM_256)
    inner = ipv6_packet(1)  # 41 octets: 41 + 2 = 43 -> 1 padding octet
    pkt = out.encapsulate(inner)
    plain = AESGCM(km[:32]).decrypt(km[32:] + pkt[8:16], pkt[16:], pkt[:8])
    assert plain[-3:] == bytes([1, 1, NH_IPV6])


def test_iv_never_repeats_and_seq_increments():
    out, _, _ = pair(AES_GCM_128)
    ivs = set()
    for i in range(1, 200):
        pkt = out.encapsulate(ipv4_packet(40))
        seq, iv = struct.unpack_from("!IQ", pkt, 4)
        assert seq == i
        ivs.add(iv)
    assert len(ivs) == 199


def test_soft_then_hard_limit_32bit():
    out, _, _ = pair(AES_GCM_128, initial_seq=SEQ_MAX_32 - 3, soft_limit=SEQ_MAX_32 - 2)
    assert not out.rekey_needed
    out.encapsulate(ipv4_packet(40))  # seq MAX-2: at the soft limit, not past it
    assert not out.rekey_needed
    out.encapsulate(ipv4_packet(40))  # MAX-1
    assert out.rekey_needed
    last = out.encapsulate(ipv4_packet(40))  # MAX: the last legal number
    assert struct.unpack_from("!I", last, 4)[0] == SEQ_MAX_32
    with pytest.raises(SequenceNumberExhausted):
        out.encapsulate(ipv4_packet(40))
    with pytest.raises(SequenceNumberExhausted):
        out.encapsulate_into(ipv4_packet(40), memoryview(bytearray(200)))
    assert out.seq == SEQ_MAX_32  # never wrapped


def test_hard_limit_esn_and_default_soft_limit():
    out, _, _ = pair(AES_GCM_128, esn=True, initial_seq=SEQ_MAX_64 - 1)
    assert out.rekey_needed  # default soft limit is 15/16 of the space
    out.encapsulate(ipv4_packet(40))
    with pytest.raises(SequenceNumberExhausted):
        out.encapsulate(ipv4_packet(40))
    fresh, _, _ = pair(AES_GCM_128)
    assert fresh.soft_limit == SEQ_MAX_32 - (SEQ_MAX_32 >> 4)


def test_esn_window_delivery_is_exact():
    out, inb, _ = pair(AES_GCM_128, esn=True, initial_seq=0xFFFFFFF0)
    inb.replay.top = 0xFFFFFFF0
    inner = ipv4_packet(30)
    pkts = [out.encapsulate(inner) for _ in range(40)]
    for i in list(range(20, 40)) + list(range(20)):
        assert inb.decapsulate(pkts[i]) == inner, i
    for p in pkts:
        assert inb.decapsulate(p) == DropReason.REPLAYED
    assert inb.replay.top == 0xFFFFFFF0 + 40


def test_replay_and_window_edge():
    out, inb, _ = pair(AES_GCM_128)
    inb2 = InboundSA(SPI, AES_GCM_128, b"\x00" * 20, replay_window=64)
    assert inb2.replay.size == 64
    pkts = [out.encapsulate(ipv4_packet(40)) for _ in range(2000)]
    assert inb.decapsulate(pkts[1999]) != DropReason.REPLAYED
    assert inb.decapsulate(pkts[1999]) == DropReason.REPLAYED
    # seq 2000 - 1024 + 1 = 977 is the left edge (index 976); 976 is outside
    assert isinstance(inb.decapsulate(pkts[976]), bytes)
    assert inb.decapsulate(pkts[975]) == DropReason.OUTSIDE_WINDOW
    assert inb.drops[DropReason.REPLAYED] == 1
    assert inb.drops[DropReason.OUTSIDE_WINDOW] == 1


def test_forged_packet_does_not_move_window_or_leak_plaintext():
    out, inb, _ = pair(AES_GCM_128)
    inner = ipv4_packet(100)
    good = bytearray(out.encapsulate(inner))
    forged = bytearray(good)
    forged[4:8] = struct.pack("!I", 1000)  # a higher sequence number, ICV now wrong
    rx = memoryview(bytearray(forged))
    assert inb.decapsulate_into(rx, 0, len(rx)) == -DropReason.AUTH_FAILED
    assert bytes(rx[16:-16]) == bytes(len(rx) - 32)  # no plaintext left behind
    assert inb.replay.top == 0
    assert inb.decapsulate(good) == inner  # seq 1 still acceptable
    flipped = bytearray(out.encapsulate(inner))
    flipped[-1] ^= 1
    assert inb.decapsulate(flipped) == DropReason.AUTH_FAILED
    assert inb.drops[DropReason.AUTH_FAILED] == 2


def test_dummy_packet_is_authenticated_counted_and_dropped():
    out, inb, _ = pair(AES_GCM_128)
    buf = memoryview(bytearray(200))
    n = out.encapsulate_dummy_into(buf, 0, 33)
    assert inb.decapsulate(bytes(buf[:n])) == DropReason.DUMMY
    assert inb.drops[DropReason.DUMMY] == 1 and inb.replay.top == 1


def test_tfc_padding_is_stripped_by_receiver():
    out, inb, _ = pair(AES_GCM_128, tfc_pad=256)
    inner = ipv4_packet(40)
    pkt = out.encapsulate(inner)
    assert len(pkt) == 16 + 256 + 4 + 16  # 256 + 2 -> 2 padding octets
    assert inb.decapsulate(pkt) == inner
    big = ipv4_packet(300)  # longer than tfc_pad: unchanged
    assert inb.decapsulate(out.encapsulate(big)) == big


def seal(km, suite, seq, plaintext, spi=SPI):
    """An ESP packet with arbitrary (possibly invalid) plaintext, sealed correctly."""
    key, salt = km[: suite.key_len], km[suite.key_len :]
    hdr = struct.pack("!IIQ", spi, seq, seq)
    aead = (ChaCha20Poly1305 if suite is CHACHA20_POLY1305 else AESGCM)(key)
    return hdr + aead.encrypt(salt + hdr[8:], plaintext, hdr[:8])


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (ipv4_packet(40) + b"\x01\x03\x02\x04", DropReason.BAD_PADDING),  # 1,3 not 1,2
        (ipv4_packet(39)[:-1] + b"\x07\x02\x03\x03\x04", DropReason.BAD_PADDING),  # 7,2,3?
        (ipv4_packet(40) + b"\x01\x02\x09\x04", DropReason.BAD_PADDING),  # pad len > payload
        (b"\x45\x00" + b"\x00" * 2 + b"\xff\x04", DropReason.BAD_PADDING),
        (ipv4_packet(40) + b"\x01\x02\x02\x11", DropReason.BAD_NEXT_HEADER),  # next header 17
        (ipv4_packet(40) + b"\x01\x02\x02\x29", DropReason.BAD_INNER_PACKET),  # v4 marked v6
        (ipv4_packet(40)[:2] + b"\x00\x50" + ipv4_packet(40)[4:] + b"\x01\x02\x02\x04",
         DropReason.BAD_INNER_PACKET),  # IP length 80 > 40 delivered
        (b"\x45" + b"\x00" * 13 + b"\x00\x04", DropReason.BAD_INNER_PACKET),  # 14 octets
        (ipv4_packet(40) + b"\x01\x02\x02\x3b", DropReason.DUMMY),
    ],
)
def test_authenticated_but_invalid_contents(plaintext, reason):
    km = os.urandom(20)
    inb = InboundSA(SPI, AES_GCM_128, km)
    assert inb.decapsulate(seal(km, AES_GCM_128, 1, plaintext)) == reason
    assert inb.drops[reason] == 1
    assert inb.replay.top == 1  # authenticated: the window moved


def test_padding_longer_than_three_is_accepted_if_correct():
    km = os.urandom(20)
    inb = InboundSA(SPI, AES_GCM_128, km)
    inner = ipv4_packet(40)
    pt = inner + bytes(range(1, 11)) + bytes([10, 4])
    assert inb.decapsulate(seal(km, AES_GCM_128, 1, pt)) == inner


def test_ipv4_tfc_padding_from_a_peer_is_stripped():
    km = os.urandom(20)
    inb = InboundSA(SPI, AES_GCM_128, km)
    inner = ipv4_packet(40)
    pt = inner + bytes(22) + b"\x01\x02\x02\x04"
    assert inb.decapsulate(seal(km, AES_GCM_128, 1, pt)) == inner


def test_seq_zero_and_truncated():
    km = os.urandom(20)
    inb = InboundSA(SPI, AES_GCM_128, km)
    assert inb.decapsulate(seal(km, AES_GCM_128, 0, ipv4_packet(40) + b"\x01\x02\x02\x04")) == (
        DropReason.BAD_SEQUENCE
    )
    for n in (0, 1, 8, 16, 35):
        assert inb.decapsulate(bytes(n)) == DropReason.TRUNCATED


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="reserved"):
        OutboundSA(255, AES_GCM_128, bytes(20))
    with pytest.raises(ValueError, match="20 octets of keying material"):
        InboundSA(SPI, AES_GCM_128, bytes(16))
    with pytest.raises(ValueError, match="replay window"):
        InboundSA(SPI, AES_GCM_128, bytes(20), replay_window=32)
    with pytest.raises(ValueError, match="unknown ESP suite"):
        suite_by_name("des")
    assert suite_by_name("AES256GCM16") is AES_GCM_256
    out = OutboundSA(SPI, AES_GCM_128, bytes(20))
    with pytest.raises(ValueError, match="neither IPv4 nor IPv6"):
        out.encapsulate(b"\x10" * 40)
    with pytest.raises(ValueError, match="neither IPv4 nor IPv6"):
        out.encapsulate_into(b"", memoryview(bytearray(100)))
    assert out.seq == 0  # a refused packet used no sequence number


def test_view_cache_handles_many_shapes_and_buffers():
    out, inb, _ = pair(AES_GCM_128)
    big = memoryview(bytearray(1 << 16))
    rx = memoryview(bytearray(1 << 16))
    for size in range(20, 1200, 7):
        inner = ipv4_packet(size)
        off = size % 97
        n = out.encapsulate_into(inner, big, off)
        rx[off : off + n] = big[off : off + n]
        m = inb.decapsulate_into(rx, off, n)
        assert bytes(rx[off + 16 : off + 16 + m]) == inner
    other = memoryview(bytearray(2000))
    inner = ipv4_packet(100)
    n = out.encapsulate_into(inner, other, 3)
    assert inb.decapsulate(bytes(other[3 : 3 + n])) == inner


def test_refused_sends_use_no_sequence_number():
    out, _, _ = pair(AES_GCM_128)
    small = memoryview(bytearray(100))
    with pytest.raises(ValueError, match="too small"):
        out.encapsulate_into(ipv4_packet(200), small)
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        out.encapsulate_into(b"\x45" + bytes(70000), memoryview(bytearray(70100)))
    esn_out = OutboundSA(SPI, AES_GCM_128, bytes(20), esn=True)
    with pytest.raises(ValueError, match="too small"):
        esn_out.encapsulate_into(ipv4_packet(90), small)
    assert out.seq == 0 and esn_out.seq == 0
    # a legitimate packet afterwards gets sequence number 1
    assert struct.unpack_from("!I", out.encapsulate(ipv4_packet(40)), 4)[0] == 1


def test_drop_counters_report_by_name():
    out, inb, _ = pair(AES_GCM_128)
    pkt = out.encapsulate(ipv4_packet(40))
    inb.decapsulate(pkt)
    inb.decapsulate(pkt)
    inb.decapsulate(b"short")
    assert inb.drops.as_dict() == {"replayed": 1, "truncated": 1}
    assert inb.drops.total() == 2


@pytest.mark.parametrize("suite", SUITE_LIST, ids=lambda s: s.name)
@pytest.mark.parametrize("kw", [{}, {"esn": True}, {"tfc_pad": 300}], ids=["fast", "esn", "tfc"])
def test_encapsulate_in_place_matches_encapsulate_into(suite, kw):
    """The TUN path reads the inner packet where its plaintext goes and encrypts it there:
    octet for octet what ``encapsulate_into`` writes, for packets side by side in one buffer."""
    km = os.urandom(suite.keymat_len)
    copying, in_place = OutboundSA(SPI, suite, km, **kw), OutboundSA(SPI, suite, km, **kw)
    a = memoryview(bytearray(20000))
    b = memoryview(bytearray(20000))
    off = 0
    for inner in (ipv4_packet(1400), ipv6_packet(100), ipv4_packet(21), ipv4_packet(1400)):
        m = copying.encapsulate_into(inner, a, off)
        b[off + 16 : off + 16 + len(inner)] = inner
        assert in_place.encapsulate_in_place(b, off, len(inner)) == m
        assert bytes(b[off : off + m]) == bytes(a[off : off + m])
        off += m
    b[off + 16] = 0x50  # neither IPv4 nor IPv6: refused, using no sequence number
    with pytest.raises(ValueError, match="neither IPv4 nor IPv6"):
        in_place.encapsulate_in_place(b, off, 40)
    assert in_place.seq == copying.seq == 4


# --- properties: hostile input, any packet size ----------------------------------------------
@st.composite
def mutated_packet(draw):
    data = bytearray(draw(st.sampled_from(PACKETS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "set"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "extend":
            data += draw(st.binary(max_size=40))
        elif kind == "set" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


KEYS = {name: os.urandom(s.keymat_len) for name, s in SUITES.items()}
_out = OutboundSA(SPI, SUITES["aes128gcm16"], KEYS["aes128gcm16"])
INNER_LIST = [ipv4_packet(n) for n in (20, 41, 200, 1400)]
PACKETS = [_out.encapsulate(p) for p in INNER_LIST]
INNERS = set(INNER_LIST)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=1600), mutated_packet()))
def test_receiver_never_raises_and_never_returns_unauthenticated_plaintext(data):
    for esn in (False, True):
        sa = InboundSA(SPI, SUITES["aes128gcm16"], KEYS["aes128gcm16"], esn=esn)
        before = sa.replay.top
        r = sa.decapsulate(data)
        if isinstance(r, bytes):
            # Only a packet we really sent can come out, and only unmodified.
            assert data in PACKETS and r in INNERS
        else:
            assert isinstance(r, DropReason)
            assert sa.drops[r] == 1
            if r in (DropReason.AUTH_FAILED, DropReason.TRUNCATED, DropReason.BAD_SEQUENCE):
                assert sa.replay.top == before
        # the framing classifier takes anything too
        assert classify(data).kind in Kind


@settings(max_examples=200, deadline=None)
@given(
    suite=st.sampled_from(sorted(SUITES)),
    esn=st.booleans(),
    sizes=st.lists(st.integers(20, 2000), min_size=1, max_size=10),
)
def test_any_ipv4_packet_round_trips(suite, esn, sizes):
    s = SUITES[suite]
    out = OutboundSA(SPI, s, KEYS[suite], esn=esn)
    inb = InboundSA(SPI, s, KEYS[suite], esn=esn)
    for n in sizes:
        inner = ipv4_packet(n)
        assert inb.decapsulate(out.encapsulate(inner)) == inner


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
def test_run_finds_a_replay_within_the_run(esn):
    """decapsulate_run commits a run's sequence numbers together: a packet repeated inside
    one run is still a replay, and the window ends where one-by-one leaves it."""
    out, inb, km = pair(AES_GCM_128, esn=esn)
    pkts = [out.encapsulate(ipv4_packet(100)) for _ in range(4)]
    seq = [pkts[0], pkts[1], pkts[0], pkts[2], pkts[1], pkts[3]]
    buf = memoryview(bytearray(b"".join(seq)))
    results: list[int] = []
    assert inb.decapsulate_run(buf, 0, len(buf), len(pkts[0]), results) == len(buf)
    replayed = -DropReason.REPLAYED
    assert results == [100, 100, replayed, 100, replayed, 100]
    assert inb.replay.top == 4 and inb.drops[DropReason.REPLAYED] == 2
    one = InboundSA(SPI, AES_GCM_128, km, esn=esn)
    assert [one.decapsulate_into(memoryview(bytearray(p)), 0, len(p)) for p in seq] == results
    assert one.replay.top == inb.replay.top
