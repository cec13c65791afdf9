"""The anti-replay window (RFC 4303 section 3.4.3, Appendix A): against a plain model, ESN
inference, and the public check/commit API the SA uses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattunnel.esp.drop import DropReason
from nattunnel.esp.replay import ReplayWindow


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


def test_check_never_moves_the_window_and_commit_does():
    """``check`` is a question (the SA asks it before the ICV); only ``commit`` (after the
    ICV verified) records a number and moves the right edge."""
    win = ReplayWindow(64)
    assert win.check(5) == 5 and win.check(5) == 5
    assert win.top == 0 and not win.seen(5)
    win.commit(5)
    assert win.top == 5 and win.seen(5)
    assert win.check(5) == -DropReason.REPLAYED
    assert win.check(3) == 3  # older but inside the window, not seen: may be new
    win.commit(3)
    assert win.top == 5 and win.seen(3)  # an older number does not move the edge
    win.commit(100)
    assert win.check(36) == -DropReason.OUTSIDE_WINDOW  # 100 - 36 = 64: just outside
    assert win.check(37) == 37
    assert win.check(0) == -DropReason.BAD_SEQUENCE
    win.reset()
    assert win.top == 0 and not win.seen(100) and win.check(100) == 100


@pytest.mark.parametrize("size", [63, 8193])
def test_window_size_limits(size):
    with pytest.raises(ValueError, match="replay window"):
        ReplayWindow(size)


def test_commit_all_commits_a_run_and_empties_it():
    win = ReplayWindow(64)
    run = [3, 9, 4]
    win.commit_all(run)
    assert run == [] and win.top == 9
    assert all(win.seen(s) for s in (3, 4, 9)) and not win.seen(5)
    assert win.check(4) == -DropReason.REPLAYED and win.check(5) == 5
    win.commit_all([])  # nothing to do
    assert win.top == 9
