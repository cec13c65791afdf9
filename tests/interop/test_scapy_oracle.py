"""nattunnel's ESP against an independent implementation: scapy's IPsec layer.

scapy (``scapy.layers.ipsec.SecurityAssociation``) builds RFC 4106 / RFC 7634 ESP on its own:
nonce = salt || explicit IV, AAD = SPI || Seq (or SPI || Seq-high || Seq-low with ESN),
padding 1, 2, 3, ... to a 4-octet boundary, RFC 3948 UDP encapsulation with ``nat_t_header``.
Three directions are checked for every suite, with and without ESN, and for inner packets whose
lengths need 0, 1, 2 and 3 octets of padding:

- nattunnel -> scapy: nattunnel encapsulates, scapy decrypts (and reports the trailer);
- scapy -> nattunnel: scapy encrypts with an explicit sequence number and an arbitrary IV,
  nattunnel decapsulates the UDP payload;
- identical bytes: with IV = the 64-bit sequence number (nattunnel's choice), scapy's UDP
  payload equals nattunnel's ESP packet octet for octet.

A few extra cases cover TFC padding, dummy packets, next headers nattunnel refuses, a scapy
API bug (strict xfail, scapy is wrong) and regressions for two nattunnel bugs found here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.packet import Raw, raw

from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305, Suite

SPI = 0x0BADCAFE
OUTER_SRC, OUTER_DST = "192.0.2.10", "198.51.100.20"
NAT_T_PORT = 4500
UDP_HEADER = 8
#: ESP header (SPI, Seq) + explicit IV: where the ciphertext, and so the inner packet, starts
ESP_CT_OFF = 16
M32 = 0xFFFFFFFF

SUITES = [AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305]
SCAPY_ALGO = {
    AES_GCM_128.name: "AES-GCM",
    AES_GCM_256.name: "AES-GCM",
    CHACHA20_POLY1305.name: "CHACHA20-POLY1305",
}

#: The sequence number used by the round-trip tests: with ESN, one whose high half is non-zero.
SEQ_32 = 7
SEQ_ESN = (5 << 32) | 7
#: An IV that is *not* the sequence number: receivers must take the IV from the packet.
ARBITRARY_IV = bytes.fromhex("f00dfacecafebabe")


def keymat_for(suite: Suite, tweak: int = 0) -> bytes:
    """Deterministic key || salt for a suite."""
    return bytes((i * 29 + 7 + tweak) & 0xFF for i in range(suite.keymat_len))


def _pattern(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


@dataclass(frozen=True)
class Inner:
    name: str
    data: bytes

    @property
    def version(self) -> int:
        return self.data[0] >> 4

    @property
    def next_header(self) -> int:
        return 4 if self.version == 4 else 41

    def scapy(self) -> IP | IPv6:
        return IP(self.data) if self.version == 4 else IPv6(self.data)


def _v4(payload: bytes, *, udp: bool) -> bytes:
    l4 = UDP(sport=40000, dport=53) if udp else ICMP(type=8, id=0x1234, seq=1)
    return raw(IP(src="10.1.0.1", dst="10.2.0.1", id=0x4242) / l4 / Raw(payload))


def _build_inners() -> list[Inner]:
    inners = [
        Inner("v4-icmp-28", raw(IP(src="10.1.0.1", dst="10.2.0.1") / ICMP(id=1, seq=1))),
        Inner("v4-udp-63", _v4(_pattern(35), udp=True)),
        Inner("v4-icmp-100", _v4(_pattern(72), udp=False)),
        Inner("v4-udp-101", _v4(_pattern(73), udp=True)),
        Inner("v4-icmp-1400", _v4(_pattern(1372), udp=False)),
        Inner(
            "v6-udp-78",
            raw(IPv6(src="2001:db8::1", dst="2001:db8:1::2") / UDP(sport=5353, dport=5353)
                / Raw(_pattern(30))),
        ),
    ]
    for inner in inners:
        # the ids promise these lengths; scapy must round-trip the bytes it parses
        assert len(inner.data) == int(inner.name.rsplit("-", 1)[1]), inner.name
        assert raw(inner.scapy()) == inner.data, inner.name
    # between them, every pad length 0..3 is exercised
    assert {(-(len(i.data) + 2)) % 4 for i in inners} == {0, 1, 2, 3}
    return inners


INNERS = _build_inners()

suite_param = pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
esn_param = pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
inner_param = pytest.mark.parametrize("inner", INNERS, ids=lambda i: i.name)


def scapy_sa(suite: Suite, keymat: bytes, *, esn: bool, high: int = 0,
             spi: int = SPI, seq_num: int = 0) -> SecurityAssociation:
    """A scapy tunnel-mode SA with the RFC 3948 NAT-T header.

    ``seq_num=0``: scapy's ``encrypt`` uses ``seq_num or self.seq_num``, so an explicit low
    half of 0 only reaches the wire when the SA's own counter is 0 too (see the xfail below).
    """
    return SecurityAssociation(
        ESP,
        spi=spi,
        seq_num=seq_num,
        crypt_algo=SCAPY_ALGO[suite.name],
        crypt_key=keymat,
        tunnel_header=IP(src=OUTER_SRC, dst=OUTER_DST),
        nat_t_header=UDP(sport=NAT_T_PORT, dport=NAT_T_PORT),
        esn_en=esn,
        esn=high,
    )


def scapy_transport_sa(suite: Suite, keymat: bytes) -> SecurityAssociation:
    """A scapy transport-mode SA: its next header is whatever ``proto`` the outer IP says.

    Used to make packets nattunnel's encoder cannot make (TFC padding from the other side,
    next header 1/59, mismatched inner packets).
    """
    return SecurityAssociation(
        ESP, spi=SPI, seq_num=0, crypt_algo=SCAPY_ALGO[suite.name], crypt_key=keymat,
        nat_t_header=UDP(sport=NAT_T_PORT, dport=NAT_T_PORT),
    )


def as_udp_datagram(esp: bytes) -> IP:
    """The ESP packet as the payload of an RFC 3948 datagram, parsed back by scapy."""
    pkt = IP(raw(IP(src=OUTER_SRC, dst=OUTER_DST) / UDP(sport=NAT_T_PORT, dport=NAT_T_PORT)
                 / Raw(esp)))
    assert pkt.haslayer(ESP), "scapy did not parse UDP/4500 as ESP"
    assert bytes(pkt[UDP].payload) == esp
    return pkt


def udp_payload(encrypted: IP) -> bytes:
    """The UDP payload (SPI .. ICV) of a datagram scapy encrypted with ``nat_t_header``."""
    udp = encrypted[UDP]
    assert (udp.sport, udp.dport) == (NAT_T_PORT, NAT_T_PORT)
    assert udp.chksum == 0  # RFC 3948 section 2.1: scapy sends a zero UDP checksum
    return bytes(udp.payload)


def scapy_plain(sa: SecurityAssociation, datagram: IP, *, esn: bool, high: int):
    """scapy's decrypted ESP (``_ESPPlain``): iv, data, padding, padlen, nh."""
    return sa.crypt_algo.decrypt(sa, datagram[ESP], sa.crypt_key, esn_en=esn, esn=high)


def nattunnel_packet(suite: Suite, keymat: bytes, seq: int, inner: bytes, *, esn: bool) -> bytes:
    """nattunnel's ESP packet with sequence number ``seq``, through both encoder entry points."""
    pkt = OutboundSA(SPI, suite, keymat, esn=esn, initial_seq=seq - 1).encapsulate(inner)
    # encapsulate_into is the per-packet path (the fast path without ESN); same bytes, written
    # after an 8-octet UDP header as a sender would.
    buf = memoryview(bytearray(len(inner) + 128))
    n = OutboundSA(SPI, suite, keymat, esn=esn, initial_seq=seq - 1).encapsulate_into(
        inner, buf, UDP_HEADER)
    assert bytes(buf[UDP_HEADER : UDP_HEADER + n]) == pkt
    return pkt


def inbound(suite: Suite, keymat: bytes, *, esn: bool, expect_seq: int) -> InboundSA:
    """An InboundSA whose window makes ``expect_seq`` the next new number.

    With ESN the high half is inferred from the window (RFC 4303 Appendix A), so the right edge
    is put just below the expected number (``expect_seq - 1`` also works when its low half is 0).
    """
    sa = InboundSA(SPI, suite, keymat, esn=esn)
    if esn:
        sa.replay.top = expect_seq - 1
    return sa


# --- nattunnel -> scapy ------------------------------------------------------------------------


@suite_param
@esn_param
@inner_param
def test_nattunnel_to_scapy(suite: Suite, esn: bool, inner: Inner) -> None:
    keymat = keymat_for(suite)
    seq = SEQ_ESN if esn else SEQ_32
    high = seq >> 32
    esp = nattunnel_packet(suite, keymat, seq, inner.data, esn=esn)
    datagram = as_udp_datagram(esp)
    assert datagram[ESP].spi == SPI
    assert datagram[ESP].seq == seq & M32  # only the low half is on the wire

    sa = scapy_sa(suite, keymat, esn=esn, high=high)
    plain = scapy_plain(sa, datagram, esn=esn, high=high)
    assert plain.iv == seq.to_bytes(8, "big")  # explicit IV = 64-bit sequence number
    assert raw(plain.data) == inner.data
    assert plain.nh == inner.next_header  # tunnel mode: 4 or 41
    assert plain.padlen == (-(len(inner.data) + 2)) % 4  # minimal padding to 4 octets
    assert plain.padding == bytes(range(1, plain.padlen + 1))  # RFC 4303 2.4: 1, 2, 3, ...

    assert raw(sa.decrypt(datagram)) == inner.data  # (decrypt() consumes the datagram)

    if esn:
        # the high half is authenticated: scapy with a different high half must refuse it
        wrong = scapy_sa(suite, keymat, esn=True, high=high + 1)
    else:
        # and an ESN receiver (12-octet AAD) must refuse a 32-bit packet (8-octet AAD)
        wrong = scapy_sa(suite, keymat, esn=True, high=0)
    with pytest.raises(IPSecIntegrityError):
        wrong.decrypt(as_udp_datagram(esp))


@suite_param
@esn_param
def test_nattunnel_stream_to_scapy(suite: Suite, esn: bool) -> None:
    """Consecutive packets from one SA, one reused send buffer, mixed sizes and versions."""
    keymat = keymat_for(suite, tweak=1)
    first = (3 << 32) - 2 if esn else 0xFFFFFFF0  # with ESN, cross a high-half boundary
    out = OutboundSA(SPI, suite, keymat, esn=esn, initial_seq=first - 1)
    buf = memoryview(bytearray(2048))
    order = INNERS + INNERS[::-1]
    sent = []
    for i, inner in enumerate(order):
        seq = first + i
        n = out.encapsulate_into(inner.data, buf, UDP_HEADER)
        esp = bytes(buf[UDP_HEADER : UDP_HEADER + n])
        sent.append((seq, esp, inner))
        datagram = as_udp_datagram(esp)
        assert datagram[ESP].seq == seq & M32
        sa = scapy_sa(suite, keymat, esn=esn, high=seq >> 32)
        assert raw(sa.decrypt(datagram)) == inner.data, (i, inner.name)
    assert out.seq == first + len(order) - 1

    # nattunnel receives the same stream with neighbours swapped: with ESN the receiver must
    # infer high halves on both sides of the boundary (RFC 4303 Appendix A cases A and B)
    rx = inbound(suite, keymat, esn=esn, expect_seq=first)
    swapped = [p for pair in zip(sent[1::2], sent[0::2], strict=True) for p in pair]
    for seq, esp, inner in swapped:
        assert rx.decapsulate(esp) == inner.data, hex(seq)
    assert rx.replay.top == first + len(order) - 1
    for _seq, esp, _inner in sent:
        assert rx.decapsulate(esp) == DropReason.REPLAYED


# --- scapy -> nattunnel ------------------------------------------------------------------------


@suite_param
@esn_param
@inner_param
def test_scapy_to_nattunnel(suite: Suite, esn: bool, inner: Inner) -> None:
    keymat = keymat_for(suite)
    seq = SEQ_ESN if esn else SEQ_32
    sa = scapy_sa(suite, keymat, esn=esn, high=seq >> 32)
    encrypted = sa.encrypt(inner.scapy(), seq_num=seq & M32, iv=ARBITRARY_IV,
                           esn_en=esn, esn=seq >> 32)
    esp = udp_payload(encrypted)
    assert esp[:16] == struct.pack("!II", SPI, seq & M32) + ARBITRARY_IV

    rx = inbound(suite, keymat, esn=esn, expect_seq=seq)
    assert rx.decapsulate(esp) == inner.data
    assert rx.replay.top == seq
    assert rx.packets == 1 and rx.drops.total() == 0
    # a second copy is a replay
    assert rx.decapsulate(esp) == DropReason.REPLAYED

    # decapsulate_into, in place, on the whole UDP datagram as received (ESP after 8 octets)
    datagram = bytearray(bytes(encrypted[UDP]))
    rx = inbound(suite, keymat, esn=esn, expect_seq=seq)
    m = rx.decapsulate_into(memoryview(datagram), UDP_HEADER, len(datagram) - UDP_HEADER)
    assert m == len(inner.data)
    start = UDP_HEADER + ESP_CT_OFF
    assert bytes(datagram[start : start + m]) == inner.data


# --- identical bytes ---------------------------------------------------------------------------

SEQ_CASES = [
    pytest.param(False, 1, id="seq32-1"),
    pytest.param(False, 7, id="seq32-7"),
    pytest.param(False, 0xFFFFFFFF, id="seq32-max"),
    pytest.param(True, 7, id="esn-0:7"),
    pytest.param(True, (5 << 32) | 7, id="esn-5:7"),
    pytest.param(True, 1 << 32, id="esn-1:0"),
    pytest.param(True, (1 << 64) - 1, id="esn-max"),
]


@suite_param
@pytest.mark.parametrize(("esn", "seq"), SEQ_CASES)
@inner_param
def test_identical_bytes(suite: Suite, esn: bool, seq: int, inner: Inner) -> None:
    keymat = keymat_for(suite)
    ours = nattunnel_packet(suite, keymat, seq, inner.data, esn=esn)
    # SA counter 0 so that an explicit low half of 0 (esn-1:0) is honoured, see scapy_sa()
    sa = scapy_sa(suite, keymat, esn=esn, seq_num=0)
    theirs = udp_payload(sa.encrypt(inner.scapy(), seq_num=seq & M32,
                                    iv=seq.to_bytes(8, "big"), esn_en=esn, esn=seq >> 32))
    assert theirs == ours
    assert len(ours) == ESP_CT_OFF + len(inner.data) + (-(len(inner.data) + 2)) % 4 + 2 + 16
    rx = inbound(suite, keymat, esn=esn, expect_seq=seq)
    assert rx.decapsulate(theirs) == inner.data
    assert rx.replay.top == seq


# scapy bug, not a nattunnel one. SecurityAssociation._encrypt_esp builds the ESP header with
# `seq=seq_num or self.seq_num`, so an explicit seq_num=0 is silently replaced by the SA's counter
# (1 by default): the packet goes out with low half 1 while the caller asked for 0. scapy's own
# docstring says seq_num, "if specified", is used "instead of the generated one". With ESN a low
# half of 0 is an ordinary value: RFC 4303 section 2.2.1, "Only the low-order 32 bits of the
# sequence number are transmitted in the plaintext ESP header of each packet", and with ESN the
# counter runs past 2^32, so 2^32, 2*2^32, ... are sent with low half 0. (`esn=esn or self.esn`
# has the same flaw for an explicit esn=0.) Workaround used above: create the scapy SA with
# seq_num=0 (scapy_sa() does). Strict: this starts failing once scapy honours seq_num=0.
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="scapy bug: encrypt(seq_num=0) sends the SA counter instead (`seq_num or self.seq_num`)",
)
@suite_param
def test_scapy_explicit_seq_num_zero(suite: Suite) -> None:
    keymat = keymat_for(suite)
    seq = 1 << 32
    ours = nattunnel_packet(suite, keymat, seq, INNERS[0].data, esn=True)
    sa = scapy_sa(suite, keymat, esn=True, seq_num=1)  # scapy's default initial counter
    theirs = udp_payload(sa.encrypt(INNERS[0].scapy(), seq_num=0, iv=seq.to_bytes(8, "big"),
                                    esn_en=True, esn=1))
    assert theirs[4:8] == b"\x00\x00\x00\x00", f"scapy sent low half {theirs[4:8].hex()}"
    assert theirs == ours


# --- TFC padding and dummy packets -------------------------------------------------------------


@suite_param
@esn_param
def test_tfc_padding_both_ways(suite: Suite, esn: bool) -> None:
    """RFC 4303 section 2.4: TFC padding sits after the inner packet, inside the encryption."""
    keymat = keymat_for(suite)
    seq = SEQ_ESN if esn else SEQ_32
    inner = INNERS[0].data  # 28 octets
    out = OutboundSA(SPI, suite, keymat, esn=esn, tfc_pad=200, initial_seq=seq - 1)
    datagram = as_udp_datagram(out.encapsulate(inner))
    sa = scapy_sa(suite, keymat, esn=esn, high=seq >> 32)
    plain = scapy_plain(sa, datagram, esn=esn, high=seq >> 32)
    assert raw(plain.data) == inner + bytes(200 - len(inner))
    assert (plain.nh, plain.padlen, plain.padding) == (4, 2, b"\x01\x02")

    # scapy (transport mode, next header 4) sends an inner packet followed by 50 zero octets;
    # nattunnel strips them using the inner IPv4 total length
    sa_t = scapy_transport_sa(suite, keymat)
    enc = sa_t.encrypt(IP(src=OUTER_SRC, dst=OUTER_DST, proto=4) / Raw(inner + bytes(50)),
                       seq_num=seq & M32, iv=ARBITRARY_IV, esn_en=esn, esn=seq >> 32)
    rx = inbound(suite, keymat, esn=esn, expect_seq=seq)
    assert rx.decapsulate(udp_payload(enc)) == inner


@suite_param
def test_dummy_packet_both_ways(suite: Suite) -> None:
    """RFC 4303 section 2.6: next header 59 is a dummy packet, authenticated and dropped."""
    keymat = keymat_for(suite)
    out = OutboundSA(SPI, suite, keymat, initial_seq=SEQ_32 - 1)
    buf = memoryview(bytearray(256))
    n = out.encapsulate_dummy_into(buf, 0, size=16)
    sa = scapy_sa(suite, keymat, esn=False)
    plain = scapy_plain(sa, as_udp_datagram(bytes(buf[:n])), esn=False, high=0)
    assert (raw(plain.data), plain.nh, plain.padlen, plain.padding) == (bytes(16), 59, 2, b"\1\2")

    enc = scapy_transport_sa(suite, keymat).encrypt(
        IP(src=OUTER_SRC, dst=OUTER_DST, proto=59) / Raw(bytes(16)), seq_num=SEQ_32,
        iv=ARBITRARY_IV)
    rx = InboundSA(SPI, suite, keymat)
    assert rx.decapsulate(udp_payload(enc)) == DropReason.DUMMY
    assert rx.replay.top == SEQ_32  # authenticated, so the window moved


# --- next header / inner packet checks against scapy-made packets ------------------------------


def _v4_id(ident: int, total: int) -> bytes:
    """A valid IPv4/UDP packet of ``total`` octets whose identification field is ``ident``.

    Octets 4..5 of an IPv4 header (identification) are where an IPv6 header keeps its payload
    length.
    """
    return raw(IP(src="10.1.0.1", dst="10.2.0.1", id=ident) / UDP(sport=1, dport=2)
               / Raw(_pattern(total - 28)))


REFUSED = [
    pytest.param(1, raw(ICMP(id=1, seq=1) / Raw(_pattern(20))), DropReason.BAD_NEXT_HEADER,
                 id="nh1-transport-icmp"),
    pytest.param(17, raw(UDP(sport=1, dport=2) / Raw(_pattern(20))), DropReason.BAD_NEXT_HEADER,
                 id="nh17-transport-udp"),
    pytest.param(4, INNERS[-1].data, DropReason.BAD_INNER_PACKET, id="nh4-ipv6-inner"),
    # the IPv4 total length claims 4 octets more than the ESP payload holds
    pytest.param(4, INNERS[1].data[:-4], DropReason.BAD_INNER_PACKET, id="nh4-ipv4-truncated"),
    pytest.param(41, _v4_id(0x1234, 60), DropReason.BAD_INNER_PACKET,
                 id="nh41-ipv4-inner-slowpath"),
    # Regression (found against commit 31f4db2): InboundSA.decapsulate_into's IPv6 fast path
    # checked only "payload length + 40 == inner length", never the version nibble, so next
    # header 41 carrying an IPv4 packet whose identification field (octets 4..5) equals
    # len - 40 was delivered as if it were IPv6, although BAD_INNER_PACKET is documented as
    # "the inner packet's IP version or length disagrees with the ESP trailer". A TUN device
    # routes such bytes by their version nibble (as IPv4), while a caller trusting next header
    # 41 would parse (e.g. source-filter) them as IPv6.
    pytest.param(41, _v4_id(60 - 40, 60), DropReason.BAD_INNER_PACKET,
                 id="nh41-ipv4-inner-fastpath"),
]


@suite_param
@pytest.mark.parametrize(("proto", "payload", "reason"), REFUSED)
def test_refused_next_header_or_inner(suite: Suite, proto: int, payload: bytes,
                                      reason: DropReason) -> None:
    keymat = keymat_for(suite)
    sa = scapy_transport_sa(suite, keymat)
    enc = sa.encrypt(IP(src=OUTER_SRC, dst=OUTER_DST, proto=proto) / Raw(payload),
                     seq_num=SEQ_32, iv=ARBITRARY_IV)
    esp = udp_payload(enc)
    # scapy really sent (payload, proto): check with scapy's own decryption
    plain = scapy_plain(sa, as_udp_datagram(esp), esn=False, high=0)
    assert (raw(plain.data), plain.nh) == (payload, proto)

    rx = InboundSA(SPI, suite, keymat)
    assert rx.decapsulate(esp) == reason
    assert rx.drops[reason] == 1
    assert rx.replay.top == SEQ_32  # the ICV verified before the contents were refused


# --- regression: the fast path's cached SPI ----------------------------------------------------


# Regression (found against commit 31f4db2): OutboundSA.encapsulate_into's fast path (no ESN,
# no TFC padding) wrote the SPI only in _shape(), i.e. when it first cached views for a
# (buffer, offset, length); later packets of that shape rewrote the sequence number, IV,
# payload, trailer and ICV but not out[off:off+4]. If anything else wrote there in between
# (another SA sharing the send buffer, or the buffer reused for a received datagram), the packet
# went out with that foreign SPI, which the AAD then also authenticated; the peer drops it
# (unknown SPI or AUTH_FAILED), and an SPI of 0 would even read as an RFC 3948 non-ESP marker.
@suite_param
@pytest.mark.parametrize("clobber", ["other-sa", "buffer-reused"])
def test_shared_send_buffer_keeps_each_sas_spi(suite: Suite, clobber: str) -> None:
    keymat_a, keymat_b = keymat_for(suite, 1), keymat_for(suite, 2)
    spi_b = SPI + 1
    a = OutboundSA(SPI, suite, keymat_a)
    b = OutboundSA(spi_b, suite, keymat_b)
    inner = INNERS[0].data
    buf = memoryview(bytearray(2048))
    a.encapsulate_into(inner, buf, UDP_HEADER)  # caches the views for this shape
    if clobber == "other-sa":
        b.encapsulate_into(inner, buf, UDP_HEADER)
    else:
        buf[:64] = bytes(range(64))  # e.g. recv_into() of some other datagram
    n = a.encapsulate_into(inner, buf, UDP_HEADER)
    pkt = bytes(buf[UDP_HEADER : UDP_HEADER + n])
    assert pkt[:4] == struct.pack("!I", SPI), f"SA {SPI:#x} sent SPI {pkt[:4].hex()}"
    assert raw(scapy_sa(suite, keymat_a, esn=False).decrypt(as_udp_datagram(pkt))) == inner
