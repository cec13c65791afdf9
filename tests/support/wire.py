"""The one in-memory harness: sans-I/O cores on a shared fake wire, no sockets, no sleeps.

Each core is wrapped in a small adapter (a ``Node``) that the test writes for the core's API:
the wire pulls datagrams from every node, carries them (with seeded loss, duplication and
reordering, and source NAT for hosts behind a ``Nat``), hands them to the node bound at their
destination, and fires timers in deadline order as its clock moves. Everything is a
function of the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from nattunnel.addr import Addr


class Node(Protocol):
    """A core as the wire sees it (aioquic's ``QuicConnection`` contract)."""

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        """(data, src, dst) to carry."""
        ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


@dataclass
class Nat:
    """Endpoint-independent source NAT for the hosts behind it (RFC 4787 sections 4.1, 5):
    a mapping per inside (host, port), kept for every destination; ``rebind`` gives one a new
    external port, as a NAT does when its mapping expired."""

    public: str
    inside: set[str]
    next_port: int = 40000
    out: dict[Addr, Addr] = field(default_factory=dict)
    back: dict[Addr, Addr] = field(default_factory=dict)

    def translate_out(self, src: Addr) -> Addr:
        if src[0] not in self.inside:
            return src
        if src not in self.out:
            ext = (self.public, self.next_port)
            self.next_port += 1
            self.out[src] = ext
            self.back[ext] = src
        return self.out[src]

    def translate_in(self, dst: Addr) -> Addr:
        return self.back.get((dst[0], dst[1]), dst)

    def rebind(self, inside: Addr) -> Addr:
        old = self.out.pop(inside, None)
        if old is not None:
            del self.back[old]
        return self.translate_out(inside)


class FakeWire:
    """Datagrams between nodes. ``loss``, ``duplicate`` and ``reorder`` are probabilities per
    datagram; ``drop(src, dst, data)`` drops chosen ones."""

    def __init__(self, *, seed: int = 0, loss: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0, now: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.loss, self.duplicate, self.reorder = loss, duplicate, reorder
        self.now = now
        self.nodes: dict[tuple[str, int], Node] = {}
        self.nats: list[Nat] = []
        self.drop: Callable[[Addr, Addr, bytes], bool] | None = None
        #: every datagram delivered, as (src as seen, dst, data)
        self.delivered: list[tuple[Addr, Addr, bytes]] = []
        self.lost = self.duplicated = self.undeliverable = 0

    def attach(self, node: Node, addrs: Iterable[Addr]) -> Node:
        for a in addrs:
            self.nodes[(a[0], a[1])] = node
        return node

    def add_nat(self, public: str, inside: Iterable[str]) -> Nat:
        nat = Nat(public, set(inside))
        self.nats.append(nat)
        return nat

    def _carry(self, data: bytes, src: Addr, dst: Addr) -> list[tuple[bytes, Addr, Addr]]:
        for nat in self.nats:
            src = nat.translate_out(src)
        if self.drop is not None and self.drop(src, dst, data):
            self.lost += 1
            return []
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return []
        copies = [(data, src, dst)]
        if self.duplicate and self.rng.random() < self.duplicate:
            self.duplicated += 1
            copies.append((data, src, dst))
        return copies

    def run(self, rounds: int = 200) -> int:
        """Carry datagrams until no node has any to send (or ``rounds`` passes); the number
        delivered."""
        n = 0
        for _ in range(rounds):
            batch: list[tuple[bytes, Addr, Addr]] = []
            for node in list(dict.fromkeys(self.nodes.values())):
                for data, src, dst in node.datagrams_to_send(self.now):
                    batch += self._carry(data, src, dst)
            if not batch:
                return n
            if self.reorder:
                for i in range(len(batch) - 1):
                    if self.rng.random() < self.reorder:
                        j = self.rng.randrange(i, len(batch))
                        batch[i], batch[j] = batch[j], batch[i]
            for data, src, dst in batch:
                for nat in self.nats:
                    dst = nat.translate_in(dst)
                node = self.nodes.get((dst[0], dst[1]))
                if node is None:
                    self.undeliverable += 1
                    continue
                self.delivered.append((src, dst, data))
                node.datagram_received(data, src, dst, self.now)
                n += 1
        return n

    def next_timer(self) -> float | None:
        times = [t for node in dict.fromkeys(self.nodes.values())
                 if (t := node.get_timer()) is not None]
        return min(times) if times else None

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on, firing each timer at its deadline and carrying what
        it sends before the next one."""
        end = self.now + seconds
        self.run()
        while (t := self.next_timer()) is not None and t <= end:
            self.now = max(self.now, t)
            for node in list(dict.fromkeys(self.nodes.values())):
                due = node.get_timer()
                if due is not None and due <= self.now:
                    node.handle_timer(self.now)
            self.run()
        self.now = end
