"""Property tests: the replay window against a model, and the receiver against hostile input."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nattunnel.bench.crypto import ipv4_packet
from nattunnel.esp.drop import DropReason
from nattunnel.esp.replay import ReplayWindow
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import SUITES
from nattunnel.esp.udpencap import Kind, classify

SPI = 0x00010001


class SeenModel:
    """RFC 4303 section 3.4.3 in its plainest form: a set of seen numbers and a right edge."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = 0

    def accepts(self, seq: int) -> bool:
        if seq == 0 or seq in self.seen:
            return False
        return seq > self.top or self.top - seq < self.size

    def commit(self, seq: int) -> None:
        self.seen.add(seq)
        self.top = max(self.top, seq)


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([64, 100, 128, 1024, 1500, 8192]),
    steps=st.lists(
        st.tuples(st.integers(-9000, 200), st.booleans()), min_size=1, max_size=300
    ),
)
def test_replay_window_matches_model(size, steps):
    win = ReplayWindow(size)
    model = SeenModel(size)
    for delta, authentic in steps:
        seq = max(0, min(model.top + delta, 0xFFFFFFFF))
        r = win.check(seq)
        assert (r > 0) == model.accepts(seq), (seq, model.top)
        if r > 0:
            assert r == seq
            if authentic:  # only authenticated packets are committed
                win.commit(r)
                model.commit(seq)
        elif seq:
            want = (
                DropReason.REPLAYED if seq in model.seen and model.top - seq < size
                else DropReason.OUTSIDE_WINDOW
            )
            assert -r == want
        assert win.top == model.top


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([64, 1024, 8192]),
    start=st.integers(0, (1 << 40)),
    deltas=st.lists(st.integers(-8000, 8000), min_size=1, max_size=100),
)
def test_esn_inference_recovers_full_sequence_numbers(size, start, deltas):
    """Any number within the window or ahead of it (by < 2**31) is reconstructed exactly."""
    win = ReplayWindow(size, esn=True)
    win.top = start
    for d in deltas:
        seq = win.top + d
        if seq <= 0 or (d <= 0 and -d >= size):
            continue
        assert win.infer(seq & 0xFFFFFFFF) == seq
        r = win.check(seq & 0xFFFFFFFF)
        if r > 0:
            win.commit(r)


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
