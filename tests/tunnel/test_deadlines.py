"""The deadline heap every core keeps its timers in."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from nattunnel.tunnel.deadlines import DeadlineHeap


def test_one_deadline_per_key_and_rescheduling_replaces_it() -> None:
    h: DeadlineHeap[str] = DeadlineHeap()
    h.schedule("a", 5.0)
    h.schedule("b", 3.0)
    h.schedule("a", 1.0)  # replaces 5.0
    assert h.next_deadline() == 1.0 and len(h) == 2
    assert h.pop_due(1.0) == ["a"]
    assert h.next_deadline() == 3.0  # the stale 5.0 entry of "a" is gone with it
    assert h.pop_due(10.0) == ["b"]
    assert h.next_deadline() is None and h.pop_due(100.0) == []


def test_cancel_and_schedule_earlier() -> None:
    h: DeadlineHeap[int] = DeadlineHeap()
    h.schedule(1, 4.0)
    h.schedule_earlier(1, 6.0)  # later: kept at 4.0
    assert h.when(1) == 4.0
    h.schedule_earlier(1, 2.0)
    assert h.when(1) == 2.0
    h.cancel(1)
    assert 1 not in h and h.next_deadline() is None and h.pop_due(10.0) == []
    h.cancel(1)  # cancelling twice is harmless


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 100), st.booleans()), max_size=200))
def test_matches_a_dict_model(ops: list[tuple[int, float, bool]]) -> None:
    h: DeadlineHeap[int] = DeadlineHeap()
    model: dict[int, float] = {}
    rng = random.Random(len(ops))
    for key, when, cancel in ops:
        if cancel:
            h.cancel(key)
            model.pop(key, None)
        else:
            h.schedule(key, when)
            model[key] = when
        assert h.next_deadline() == (min(model.values()) if model else None)
        if rng.random() < 0.2:
            now = rng.uniform(0, 100)
            due = h.pop_due(now)
            expect = sorted((k for k, w in model.items() if w <= now), key=lambda k: model[k])
            assert sorted(due) == sorted(expect)
            assert [model[k] for k in due] == sorted(model[k] for k in due)
            for k in due:
                del model[k]
