"""Fuzz the ESP receive paths against a plain model of RFC 4303.

Paths: ``InboundSA.decapsulate_into``, ``InboundSA.decapsulate_run`` (one UDP GRO read),
``Tunnel.receive`` and ``Tunnel.receive_batch``. Each input is a program (read with
``_common.Reader``): the suite, ESN or not, the window size, the window's starting right edge,
which path, and up to 8 packets. A packet is

- real: made by the project's OutboundSA with a chosen sequence number (any 32- or 64-bit
  value, or near the window's edges), an IPv4 or IPv6 inner packet from an allowed source or
  not, TFC padding;
- crafted: sealed here with the right (or a wrong) key and AAD around a plaintext whose
  padding, pad length, next header and inner header are chosen by the input, so the checks
  after the ICV see authentic garbage;
- raw octets, or a replay of an earlier packet;

then byte-mutated (flips, sets, cuts, insertions). Packets go to one of two inbound SAs (an old
and a new SPI of one peer), or carry another SPI.

The model (``Model``) is RFC 4303 written out plainly: a set of seen numbers and a right edge
(section 3.4.3), ESN inference by Appendix A2.2, the sequence check before the ICV, the ICV
by the cryptography package's AEAD, the window moved only after the ICV verified, then pad
length, padding 1, 2, 3... (section 2.4), next header 4 / 41 / 59 (dummy, section 2.6), and the
inner IP header's version and length (shorter than the room: TFC padding). The code under test
must agree on every result, on the inner packet's octets, on its drop counters and on its
packet and octet counts; a packet that fails its ICV must leave no plaintext in the buffer;
the Tunnel paths add the inner source check (RFC 4301 section 5.2), the peer's address moved
only by authenticated packets, and RFC 3948 classification of everything else.

    python3 fuzz/fuzz_esp.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import ipaddress
import struct
import sys

import atheris

with atheris.instrument_imports(include=["nattunnel"]):
    import _common
    from cryptography.exceptions import InvalidTag

    from nattunnel.esp.drop import DropReason
    from nattunnel.esp.sa import InboundSA, OutboundSA
    from nattunnel.esp.suite import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305
    from nattunnel.tunnel.core import CONSUMED, PeerMoved, Tunnel

from _common import STRUCTURED_FLAGS, FuzzFailure, Reader, mutate

SUITES = (AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305)
WINDOWS = (64, 65, 100, 128, 1024, 4096, 8192, 64)
SPI_OLD, SPI_NEW, SPI_OTHER = 0x1001, 0x00C0FFEE, 0x2002
KEYS = {s.name: (bytes(range(7, 7 + s.keymat_len)), bytes(range(99, 99 + s.keymat_len)))
        for s in SUITES}
ALLOWED4 = ipaddress.ip_network("10.0.0.0/8")
ALLOWED6 = ipaddress.ip_network("fd00::/8")
ADDRS = (("192.0.2.1", 4500), ("192.0.2.1", 4501), ("198.51.100.7", 61000),
         ("2001:db8::1", 4500, 0, 0))
SOURCES4 = (b"\x0a\x00\x00\x01", b"\x0a\xff\xff\xff", b"\x0b\x00\x00\x01", b"\xc0\x00\x02\x01")
SOURCES6 = (bytes.fromhex("fd000000000000000000000000000001"),
            bytes.fromhex("fe800000000000000000000000000001"))
M32 = 0xFFFFFFFF

# RFC 4303 section 2: SPI (4), Sequence Number (4), IV (8 here), at least 4 octets of
# ciphertext (pad length and next header, padded to 4-octet alignment), ICV (16)
HEADER = 8
IV = 8
ICV = 16
MIN_PACKET = HEADER + IV + 4 + ICV


def fail(sig: str, detail: str) -> None:
    raise FuzzFailure("esp." + sig, detail)


# --- the model ------------------------------------------------------------------------------
class Model:
    """One inbound SA per RFC 4303, as plainly as it can be written."""

    def __init__(self, spi: int, suite, keymat: bytes, esn: bool, window: int, top: int):
        self.spi = spi
        self.suite = suite
        self.key, self.salt = keymat[: suite.key_len], keymat[suite.key_len :]
        self.esn = esn
        self.w = window
        self.top = top
        self.seen: set[int] = set()
        self.drops: dict[int, int] = {}
        self.packets = 0
        self.bytes = 0
        self.made = top

    def infer(self, seql: int) -> int | None:
        """RFC 4303 Appendix A2.2 (the receiver's guess at the high-order 32 bits)."""
        th, tl, w = self.top >> 32, self.top & M32, self.w
        if tl >= w - 1:  # Case A
            seqh = th if seql >= tl - w + 1 else th + 1
        else:  # Case B
            seqh = th - 1 if seql >= (tl - w + 1) % (1 << 32) else th
        if not 0 <= seqh <= M32:
            return None
        return (seqh << 32) | seql

    def drop(self, reason: DropReason) -> int:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return -reason

    def receive(self, pkt: bytes) -> tuple[int, bytes | None]:
        """(inner length or -DropReason, the inner packet) and the SA's new state."""
        n = len(pkt)
        if n < MIN_PACKET:
            return self.drop(DropReason.TRUNCATED), None
        seql = int.from_bytes(pkt[4:8], "big")
        if self.esn:
            seq = self.infer(seql)
            if seq is None or seq == 0:
                return self.drop(DropReason.BAD_SEQUENCE), None
        else:
            seq = seql
            if seq == 0:
                return self.drop(DropReason.BAD_SEQUENCE), None
        if seq <= self.top:
            if self.top - seq >= self.w:
                return self.drop(DropReason.OUTSIDE_WINDOW), None
            if seq in self.seen:
                return self.drop(DropReason.REPLAYED), None
        aad = pkt[:4] + (struct.pack("!II", seq >> 32, seql) if self.esn else pkt[4:8])
        try:
            pt = self.suite.aead_class(self.key).decrypt(self.salt + pkt[8:16], pkt[16:], aad)
        except InvalidTag:
            return self.drop(DropReason.AUTH_FAILED), None
        # section 3.4.3: the window moves once the ICV verified, whatever the contents
        self.seen.add(seq)
        self.top = max(self.top, seq)
        pad, nh = pt[-2], pt[-1]
        if pad + 2 > len(pt) or pt[len(pt) - 2 - pad : -2] != bytes(range(1, pad + 1)):
            return self.drop(DropReason.BAD_PADDING), None
        payload = pt[: len(pt) - 2 - pad]
        if nh == 59:
            return self.drop(DropReason.DUMMY), None
        if nh == 4:
            ok = len(payload) >= 20 and payload[0] >> 4 == 4
            length = int.from_bytes(payload[2:4], "big") if ok else 0
            ok = ok and 20 <= length <= len(payload)
        elif nh == 41:
            ok = len(payload) >= 40 and payload[0] >> 4 == 6
            length = 40 + int.from_bytes(payload[4:6], "big") if ok else 0
            ok = ok and length <= len(payload)
        else:
            return self.drop(DropReason.BAD_NEXT_HEADER), None
        if not ok:
            return self.drop(DropReason.BAD_INNER_PACKET), None
        self.packets += 1
        self.bytes += length
        return length, payload[:length]


def classify_reference(d: bytes) -> tuple[str, int]:
    """RFC 3948 section 2 (see fuzz_udpencap for the full reference): kind, drop reason."""
    if len(d) == 1:
        return ("keepalive", 0) if d[0] == 0xFF else ("drop", DropReason.MALFORMED)
    if len(d) < 4:
        return "drop", DropReason.TRUNCATED
    spi = int.from_bytes(d[:4], "big")
    if spi == 0:
        if len(d) < 4 + 28:
            return "drop", DropReason.TRUNCATED
        return ("ike", 0) if d[4 + 17] >> 4 == 2 else ("drop", DropReason.MALFORMED)
    if spi <= 255:
        return "drop", DropReason.RESERVED_SPI
    if len(d) < 8:
        return "drop", DropReason.TRUNCATED
    return "esp", DropReason.UNKNOWN_SPI


# --- packets ----------------------------------------------------------------------------------
def inner_packet(r: Reader, size: int | None = None) -> bytes:
    v6 = r.u8() & 1
    if size is None:
        size = r.u16() % 1500
    if v6:
        size = max(size, 40)
        body = bytearray(size)
        body[0] = 0x60
        body[4:6] = (size - 40).to_bytes(2, "big")
        body[6] = 17
        body[8:24] = r.pick(SOURCES6)
        body[24:40] = SOURCES6[0]
        return bytes(body)
    size = max(size, 20)
    body = bytearray(size)
    body[0] = 0x45
    body[2:4] = size.to_bytes(2, "big")
    body[8] = 64
    body[9] = 17
    body[12:16] = r.pick(SOURCES4)
    body[16:20] = SOURCES4[0]
    return bytes(body)


def pick_seq(r: Reader, m: Model) -> int:
    kind = r.u8() % 8
    # packets are made before any is received (a batch needs them all): count from the
    # highest number made so far as well as the window's edge
    top = max(m.top, m.made)
    if kind == 0:
        s = top + 1
    elif kind == 1:
        s = top + (r.u8() - 128)
    elif kind == 2:
        s = top - m.w + (r.u8() % 4)
    elif kind == 3:
        s = r.u64() if m.esn else r.u32()
    elif kind == 4:
        s = ((top >> 32) << 32) + (M32 - r.u8()) if m.esn else M32 - r.u8()
    elif kind == 5:
        s = (((top >> 32) + 1) << 32) + r.u8() if m.esn else r.u8()
    elif kind == 6:
        s = top + 1 + r.u16()
    else:
        s = r.u32() if not m.esn else (top & ~M32) | r.u32()
    limit = (1 << 64) - 1 if m.esn else M32
    s = max(0, min(s, limit))
    m.made = max(m.made, s)
    return s


def seal(m: Model, seq: int, pt: bytes, r: Reader) -> bytes:
    """An ESP packet around ``pt`` sealed here; the input may spoil key, SPI or AAD."""
    how = r.u8()
    spi = m.spi if how & 0x30 else SPI_OTHER
    key = m.key if how & 0x03 else bytes(len(m.key))
    high = seq >> 32
    if how & 0x0C == 0:
        high ^= 1  # the wrong high half in the AAD
    head = struct.pack("!II", spi, seq & M32)
    aad = head[:4] + struct.pack("!II", high & M32, seq & M32) if m.esn else head
    iv = struct.pack("!Q", seq) if how & 0x40 else r.take(8).ljust(8, b"\0")
    return head + iv + m.suite.aead_class(key).encrypt(m.salt + iv, pt, aad)


def crafted_plaintext(r: Reader, room: int | None) -> bytes:
    """payload || padding || pad length || next header, each part chosen by the input."""
    kind = r.u8() % 4
    if kind == 0:
        payload = inner_packet(r)
    elif kind == 1:
        payload = inner_packet(r)[: r.u16() % 1500]  # cut
    elif kind == 2:
        payload = inner_packet(r) + r.blob(64)  # TFC-style trailing octets
    else:
        payload = r.blob(255)
    pad_kind = r.u8() % 6
    padlen = r.u8()
    if pad_kind == 0:  # the least padding, as a sender makes it
        padding = bytes(range(1, -(len(payload) + 2) % 4 + 1))
    elif pad_kind == 1:  # correct, up to 255 octets
        padding = bytes(range(1, padlen + 1))
    elif pad_kind == 2:
        padding = bytes(range(1, padlen % 8 + 1))
    elif pad_kind == 3:  # the right length, one octet wrong
        padding = bytearray(range(1, padlen + 1))
        if padding:
            padding[r.u8() % len(padding)] ^= 1 << (r.u8() & 7)
        padding = bytes(padding)
    else:  # octets of the input, the pad length saying their number (4) or not (5)
        padding = r.take(padlen % 16)
    if pad_kind != 5:
        padlen = len(padding)
    nh = r.pick((4, 41, 59, 4, 41, 0, 50, 255, r.u8()))
    if nh in (4, 41) and payload[:1]:
        want = 4 if nh == 4 else 6
        if r.u8() & 1 and payload[0] >> 4 != want:
            nh = 41 if nh == 4 else 4
    tail = bytes([padlen & 0xFF, nh])
    pt = payload + padding + tail
    if room is not None:  # fit a batch segment: keep the trailer at the end
        body = (payload + padding)[: max(0, room - 2)]
        pt = body.ljust(max(0, room - 2), b"\0") + tail
    return pt


def make_packet(r: Reader, models: list[Model], prev: list[bytes], seg: int | None,
                inner_size: int | None) -> bytes:
    m = models[r.u8() % len(models)]
    kind = r.u8() % 5
    if kind in (0, 1):
        seq = pick_seq(r, m)
        inner = inner_packet(r, inner_size)
        tfc = r.pick((0, 0, 0, 64, 300))
        if seq == 0:
            seq = 1
        out = OutboundSA(m.spi, m.suite, KEYS[m.suite.name][0 if m.spi == SPI_OLD else 1],
                         esn=m.esn, tfc_pad=tfc if seg is None else 0, initial_seq=seq - 1)
        pkt = out.encapsulate(inner)
    elif kind == 2:
        seq = pick_seq(r, m)
        room = None if seg is None else max(4, seg - HEADER - IV - ICV)
        pkt = seal(m, seq, crafted_plaintext(r, room), r)
    elif kind == 3 and prev:
        pkt = prev[r.u8() % len(prev)]
    else:
        pkt = r.blob(255)
        if r.u8() & 1:
            pkt = struct.pack("!I", m.spi) + pkt[4:]
    return mutate(r, pkt)


# --- the harness ------------------------------------------------------------------------------
class Case:
    def __init__(self, r: Reader) -> None:
        self.suite = SUITES[r.u8() % 3]
        flags = r.u8()
        self.esn = bool(flags & 1)
        self.mode = (flags >> 1) & 3
        window = WINDOWS[(flags >> 3) & 7]
        top = 0
        if flags & 0x40:
            top = r.u64() if self.esn else r.u32()
        two = bool(flags & 0x80)
        k_old, k_new = KEYS[self.suite.name]
        self.models = [Model(SPI_OLD, self.suite, k_old, self.esn, window, top)]
        self.sas = [InboundSA(SPI_OLD, self.suite, k_old, esn=self.esn, replay_window=window)]
        if two:
            self.models.append(Model(SPI_NEW, self.suite, k_new, self.esn, window, top))
            self.sas.append(InboundSA(SPI_NEW, self.suite, k_new, esn=self.esn,
                                      replay_window=window))
        for sa in self.sas:
            sa.replay.top = top  # as if the numbers up to top had been missed, none seen
        self.by_spi = {m.spi: (m, sa) for m, sa in zip(self.models, self.sas, strict=True)}

    def check_counters(self) -> None:
        for m, sa in zip(self.models, self.sas, strict=True):
            for reason in DropReason:
                if sa.drops[reason] != m.drops.get(reason, 0):
                    fail("drop_counters", f"{reason.name}: {sa.drops[reason]} counted, "
                                          f"model {m.drops.get(reason, 0)}")
            if (sa.packets, sa.bytes) != (m.packets, m.bytes):
                fail("packet_counters", f"{sa.packets}/{sa.bytes}, model {m.packets}/{m.bytes}")
            if sa.replay.top != m.top:
                fail("window_edge", f"top {sa.replay.top}, model {m.top}")


def _no_plaintext(region: bytes, original: bytes) -> bool:
    return region == original or not any(region)


def check_one(got: int, buf: memoryview, off: int, pkt: bytes, want: int,
              inner: bytes | None, what: str) -> None:
    if got != want:
        fail("result", f"{what}: got {got}, model {want}, packet {pkt.hex()}")
    n = len(pkt)
    if want > 0:
        if bytes(buf[off + 16 : off + 16 + got]) != inner:
            fail("inner_octets", f"{what}: inner packet differs, packet {pkt.hex()}")
    elif want == -DropReason.AUTH_FAILED and n > 32 and not _no_plaintext(
            bytes(buf[off + 16 : off + n - 16]), pkt[16 : n - 16]):
        fail("plaintext_after_auth_failure", f"{what}: packet {pkt.hex()}")


def run_into(case: Case, r: Reader, packets: list[bytes]) -> None:
    big = memoryview(bytearray(70000))
    for i, pkt in enumerate(packets):
        m, sa = case.by_spi.get(int.from_bytes(pkt[:4], "big"), case.by_spi[SPI_OLD])
        off = r.pick((0, 0, 1, 3, 8, 100))
        if off + len(pkt) > len(big):
            continue
        big[off : off + len(pkt)] = pkt
        want, inner = m.receive(pkt)
        got = sa.decapsulate_into(big, off, len(pkt))
        check_one(got, big, off, pkt, want, inner, f"decapsulate_into #{i}")
    case.check_counters()


def fit(packets: list[bytes], seg: int) -> bytes:
    """Segments of ``seg`` octets side by side (the last one may be shorter)."""
    out = bytearray()
    for i, p in enumerate(packets):
        if i == len(packets) - 1 and len(p) < seg:
            out += p
        else:
            out += p[:seg].ljust(seg, b"\0")
    return bytes(out)


def run_batch(case: Case, r: Reader, packets: list[bytes], seg: int) -> None:
    data = fit(packets, seg)
    segs = [data[o : o + seg] for o in range(0, len(data), seg)]
    start = r.u8() % len(segs)
    m, sa = case.models[0], case.sas[0]
    buf = memoryview(bytearray(data))
    out: list[int] = []
    got_end = sa.decapsulate_run(buf, start * seg, len(data), seg, out)
    off = start * seg
    want: list[int] = []
    inners: list[bytes | None] = []
    for s in segs[start:]:
        if len(s) < 8 or int.from_bytes(s[:4], "big") != sa.spi:
            break
        w, inner = m.receive(s)
        want.append(w)
        inners.append(inner)
        off += len(s)
    # the ESN/general path may return an offset past the end after a short last packet
    # (the fast path returns the end itself); both mean "nothing left"
    if min(got_end, len(data)) != min(off, len(data)):
        fail("run_end", f"decapsulate_run returned {got_end}, model {off}; seg {seg}, "
                        f"data {data.hex()}")
    if len(out) != len(want):
        fail("run_results", f"{out} vs model {want}; seg {seg}, data {data.hex()}")
    for i, (g, w, inner) in enumerate(zip(out, want, inners, strict=True)):
        o = (start + i) * seg
        check_one(g, buf, o, segs[start + i], w, inner, f"decapsulate_run segment {start + i}")
    case.check_counters()


class TunnelRef:
    """The Tunnel's receive path around the models: SPI lookup, the source check, the peer's
    address (moved by authenticated packets only), RFC 3948 for everything else."""

    def __init__(self, case: Case, addr) -> None:
        self.case = case
        self.addr = addr
        self.ike: list[bytes] = []
        self.source_drops = 0
        self.keepalives = 0

    def receive(self, d: bytes, addr) -> tuple[int, bytes | None]:
        entry = self.case.by_spi.get(int.from_bytes(d[:4], "big")) if len(d) >= 8 else None
        if entry is not None:
            m = entry[0]
            got, inner = m.receive(d)
            if got < 0:
                return got, None
            assert inner is not None
            if inner[0] >> 4 == 4:
                ok = ipaddress.ip_address(inner[12:16]) in ALLOWED4
            else:
                ok = ipaddress.ip_address(inner[8:24]) in ALLOWED6
            if not ok:
                m.packets -= 1
                m.bytes -= got
                self.source_drops += 1
                return -DropReason.SOURCE_NOT_ALLOWED, None
            self.addr = addr
            return got, inner
        kind, reason = classify_reference(d)
        if kind == "keepalive":
            self.keepalives += 1
            return CONSUMED, None
        if kind == "ike":
            self.ike.append(d[4:])
            return CONSUMED, None
        return -reason, None


def make_tunnel(case: Case, addr) -> tuple[Tunnel, list[bytes]]:
    seen: list[bytes] = []
    t = Tunnel(ike_handler=lambda data, a, now: seen.append(bytes(data)))
    peer = t.add_peer("p", [ALLOWED4, ALLOWED6], addr=addr)
    for sa in case.sas:
        t.install_inbound(peer, sa)
    return t, seen


def check_tunnel(t: Tunnel, ref: TunnelRef, seen: list[bytes], what: str) -> None:
    peer = t.peers["p"]
    if peer.addr != ref.addr:
        fail("peer_address", f"{what}: peer at {peer.addr}, model {ref.addr}")
    if seen != ref.ike:
        fail("ike_handler", f"{what}: IKE handler saw {len(seen)} messages, model "
                            f"{len(ref.ike)}")
    if peer.source_drops != ref.source_drops:
        fail("source_drops", f"{what}: {peer.source_drops}, model {ref.source_drops}")
    if t.keepalives_received != ref.keepalives:
        fail("keepalives", f"{what}: {t.keepalives_received}, model {ref.keepalives}")
    while (ev := t.next_event()) is not None:
        if not isinstance(ev, PeerMoved):
            fail("event", f"{what}: unexpected {ev}")


def run_tunnel(case: Case, r: Reader, packets: list[bytes]) -> None:
    addr0 = ADDRS[0]
    t, seen = make_tunnel(case, addr0)
    ref = TunnelRef(case, addr0)
    buf = memoryview(bytearray(70000))
    for i, pkt in enumerate(packets):
        addr = r.pick(ADDRS)
        buf[: len(pkt)] = pkt
        want, inner = ref.receive(pkt, addr)
        got = t.receive(buf, 0, len(pkt), addr, float(i))
        check_one(got, buf, 0, pkt, want, inner, f"Tunnel.receive #{i}")
        check_tunnel(t, ref, seen, f"Tunnel.receive #{i}")
    case.check_counters()


def run_tunnel_batch(case: Case, r: Reader, packets: list[bytes], seg: int) -> None:
    addr0 = ADDRS[0]
    t, seen = make_tunnel(case, addr0)
    ref = TunnelRef(case, addr0)
    addr = r.pick(ADDRS)
    data = fit(packets, seg)
    want_inner = []
    for o in range(0, len(data), seg):
        _, inner = ref.receive(data[o : o + seg], addr)
        if inner is not None:
            want_inner.append(inner)
    got: list[bytes] = []
    t.receive_batch(memoryview(bytearray(data)), len(data), seg, addr, 0.0,
                    lambda v: got.append(bytes(v)))
    if got != want_inner:
        fail("batch_delivered", f"delivered {len(got)} packets, model {len(want_inner)}; "
                                f"seg {seg}, data {data.hex()}")
    check_tunnel(t, ref, seen, "Tunnel.receive_batch")
    case.check_counters()


def test_one_input(data: bytes) -> None:
    r = Reader(data)
    case = Case(r)
    count = 1 + r.u8() % 8
    batch = case.mode in (1, 3)
    inner_size = (20 + r.u16() % 1400) if batch else None
    seg = None
    packets: list[bytes] = []
    for _ in range(count):
        p = make_packet(r, case.models, packets, seg, inner_size)
        if batch and seg is None:
            if len(p) == 0:
                continue
            seg = len(p)
        packets.append(p[:65000])
    if not packets:
        return
    if case.mode == 0:
        run_into(case, r, packets)
    elif case.mode == 2:
        run_tunnel(case, r, packets)
    elif case.mode == 1:
        assert seg is not None
        run_batch(case, r, packets, seg)
    else:
        assert seg is not None
        run_tunnel_batch(case, r, packets, seg)


def seed_programs() -> list[bytes]:
    """Programs of real packets in order and a replay, for each mode, suite and ESN."""
    out = []
    for suite in range(3):
        for mode in range(4):
            for esn in (0, 1):
                batch = mode in (1, 3)
                flags = esn | (mode << 1) | (4 << 3) | 0x80
                head = bytes([suite, flags, 4]) + (b"\x00\x64" if batch else b"")
                # a real packet: model 0, kind 0, seq = top + 1, v4/v6, [size 200], source 0,
                # no TFC, no mutation
                size = b"" if batch else b"\x00\xc8"
                pkts = b"".join(bytes([0, 0, 0, v6]) + size + b"\x00\x00\x00"
                                for v6 in (0, 1, 0, 1))
                replay = bytes([0, 3, 0, 0])
                out.append(head + pkts + replay)
    return out


if __name__ == "__main__":
    _common.main("esp", test_one_input, seed_programs, sys.argv, STRUCTURED_FLAGS)
