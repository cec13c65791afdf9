"""Two IKE peers in memory, for the seeds and the IKE harnesses (fuzz-only).

``configs()`` gives the IkeConfig pair of hosts A (initiator, behind a NAT) and B; ``Net``
wires two IkeManagers (each with its Tunnel) together through message queues, like
tests/test_ike_manager.py, with bound methods as the send callables so that a snapshot (deep
copy) of a Net is a working Net; ``transcript()`` records a real handshake, a child rekey, a
liveness check and a delete.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

import _common  # noqa: F401  (puts the repository on sys.path)
from cryptography.hazmat.primitives.asymmetric import ed25519

from nattunnel.ike.base import State
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import Outgoing
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.tunnel.core import Tunnel

logging.disable(logging.CRITICAL)  # the manager logs every event; not wanted at 1000s/s

NET_A = ipaddress.ip_network("198.18.100.1/32")
NET_B = ipaddress.ip_network("198.18.100.2/32")
A_ADDR = ("198.19.1.2", 500)  # A, behind a NAT
A_SEEN = ("198.18.0.1", 500)  # A as B sees it
B_ADDR = ("198.18.0.2", 500)
PSK = b"correct horse battery staple"

_KA = ed25519.Ed25519PrivateKey.generate()
_KB = ed25519.Ed25519PrivateKey.generate()


def configs(auth: str = "psk") -> tuple[IkeConfig, IkeConfig]:
    """(A's config for peer "b", B's config for peer "a")."""
    common = dict(auth=auth, psk=PSK, dpd_interval=10.0)
    a = IkeConfig("b", Identity.parse("hosta"), Identity.parse("hostb"), local_ts=(NET_A,),
                  remote_ts=(NET_B,), private_key=_KA, peer_public_key=_KB.public_key(),
                  **common)  # type: ignore[arg-type]
    b = IkeConfig("a", Identity.parse("hostb"), Identity.parse("hosta"), local_ts=(NET_B,),
                  remote_ts=(NET_A,), private_key=_KB, peer_public_key=_KA.public_key(),
                  **common)  # type: ignore[arg-type]
    return a, b


def private_key(host: str) -> ed25519.Ed25519PrivateKey:
    return _KA if host == "a" else _KB


@dataclass
class Sent:
    """One message on the wire: to which side, from where, on which port."""

    to: str  # "a" or "b"
    data: bytes
    src: tuple[str, int]
    natt: bool


@dataclass
class Net:
    auth: str = "psk"
    #: B's cookie threshold (0: every IKE_SA_INIT request must carry a COOKIE)
    cookie_threshold: int = 32
    queue: list[Sent] = field(default_factory=list)
    log: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ta, self.tb = Tunnel(), Tunnel()
        self.ta.add_peer("b", [NET_B])
        self.tb.add_peer("a", [NET_A])
        self.a = IkeManager(self.ta, self.send_from_a, self.addr_a)
        self.b = IkeManager(self.tb, self.send_from_b, self.addr_b,
                            cookie_threshold=self.cookie_threshold)
        self.ca, self.cb = configs(self.auth)
        self.a.add_peer(IkePeer(self.ca, initiate=False, remote=B_ADDR), 0)
        self.b.add_peer(IkePeer(self.cb, initiate=False, remote=None), 0)

    # bound methods, so that a deep copy of the Net sends into the copy's queue
    def send_from_a(self, o: Outgoing) -> None:
        s = Sent("b", o.data, (A_SEEN[0], 4500 if o.natt else 500), o.natt)
        self.queue.append(s)
        self.log.append(s)

    def send_from_b(self, o: Outgoing) -> None:
        s = Sent("a", o.data, (B_ADDR[0], 4500 if o.natt else 500), o.natt)
        self.queue.append(s)
        self.log.append(s)

    def addr_a(self, remote: tuple[str, int], natt: bool) -> tuple[str, int]:
        return A_ADDR

    def addr_b(self, remote: tuple[str, int], natt: bool) -> tuple[str, int]:
        return B_ADDR

    def manager(self, side: str) -> IkeManager:
        return self.a if side == "a" else self.b

    def deliver_one(self, s: Sent, now: float) -> None:
        self.manager(s.to).receive(s.data, s.src, s.natt, now)

    def pump(self, now: float = 0.0, rounds: int = 30) -> None:
        for _ in range(rounds):
            if not self.queue:
                return
            q, self.queue = self.queue, []
            for s in q:
                self.deliver_one(s, now)

    def established(self) -> bool:
        return (self.ta.peers["b"].outbound is not None
                and self.tb.peers["a"].outbound is not None)

    def ike_sa(self, side: str):  # type: ignore[no-untyped-def]
        for sa in self.manager(side).sas.values():
            if sa.state is State.ESTABLISHED:
                return sa
        return None


def transcript(auth: str = "psk") -> list[Sent]:
    """Every message of: IKE_SA_INIT, IKE_AUTH, a child rekey, a liveness check, a Delete."""
    net = Net(auth)
    net.a.initiate("b", 0.0)
    net.pump(0.0)
    sa = net.ike_sa("a")
    if sa is not None and sa.children:
        sa.rekey_child(sa.children[0].spi_in, 1.0)
        net.a._process(sa, 1.0)
        net.pump(1.0)
        net.a.on_timer(100.0)  # DPD: a liveness check
        net.pump(100.0)
        sa.delete(101.0)
        net.a._process(sa, 101.0)
        net.pump(101.0)
    return net.log
