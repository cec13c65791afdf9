"""The shared in-memory harness itself (tests/support/wire.py): what it carries, loses,
duplicates, reorders and translates, and when it fires timers."""

from __future__ import annotations

from nattunnel.addr import Addr
from tests.support.wire import FakeWire


class Echo:
    """Sends ``count`` numbered datagrams to ``peer`` at start and on each timer; records
    what arrives."""

    def __init__(self, me: Addr, peer: Addr | None, count: int = 0, every: float = 0.0):
        self.me, self.peer, self.count, self.every = me, peer, count, every
        self.outbox: list[bytes] = [bytes([i]) for i in range(count)]
        self.got: list[tuple[bytes, Addr]] = []
        self.timer = every or None
        self.fired: list[float] = []

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        self.got.append((data, src))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        out, self.outbox = self.outbox, []
        assert self.peer is not None or not out
        return [(d, self.me, self.peer) for d in out] if self.peer else []

    def get_timer(self) -> float | None:
        return self.timer

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.outbox.append(b"tick")
        self.timer = now + self.every


A, B = ("198.19.1.2", 4500), ("198.18.0.2", 4500)


def test_carries_in_order_and_translates_behind_a_nat() -> None:
    w = FakeWire()
    a, b = Echo(A, B, count=5), Echo(B, None)
    w.attach(a, [A])
    w.attach(b, [B])
    nat = w.add_nat("198.18.0.1", ["198.19.1.2"])
    assert w.run() == 5
    assert [d for d, _ in b.got] == [bytes([i]) for i in range(5)]
    assert {src for _, src in b.got} == {("198.18.0.1", 40000)}
    assert nat.rebind(A) == ("198.18.0.1", 40001)


def test_loss_duplication_and_reordering_follow_the_seed() -> None:
    def trial(seed: int) -> list[bytes]:
        w = FakeWire(seed=seed, loss=0.2, duplicate=0.2, reorder=0.5)
        a, b = Echo(A, B, count=100), Echo(B, None)
        w.attach(a, [A])
        w.attach(b, [B])
        w.run()
        assert w.lost > 0 and w.duplicated > 0
        return [d for d, _ in b.got]

    got = trial(1)
    assert got == trial(1) and got != trial(2)
    assert got != sorted(got)  # reordered
    assert len(set(got)) < 100 < len(got) + 30  # some lost, some twice


def test_timers_fire_at_their_deadlines() -> None:
    w = FakeWire()
    a, b = Echo(A, B, every=2.0), Echo(B, None)
    w.attach(a, [A])
    w.attach(b, [B])
    w.advance(7.0)
    assert a.fired == [2.0, 4.0, 6.0] and w.now == 7.0
    assert [d for d, _ in b.got] == [b"tick"] * 3
