"""Two IKE peers in memory, for the seeds and the IKE harnesses (fuzz-only).

``configs()`` gives the IkeConfig pair of hosts A (initiator, behind a NAT) and B; ``Net``
wires two IkeManagers (each with its Tunnel) together through one message queue, like
tests/support/ike.py: what a manager has to send is pulled into the queue (``collect``) after
every call, so that a snapshot (deep copy) of a Net is a working Net; ``transcript()`` records
a real handshake, a child rekey, a liveness check and a delete.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

import _common  # noqa: F401  (puts the repository on sys.path)
from cryptography.hazmat.primitives.asymmetric import ed25519

from nattunnel.ike.base import State
from nattunnel.ike.config import Identity, IkeConfig
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
        self.a = IkeManager(self.ta)
        self.b = IkeManager(self.tb, cookie_threshold=self.cookie_threshold)
        self.ca, self.cb = configs(self.auth)
        self.a.add_peer(IkePeer(self.ca, initiate=False, remote=B_ADDR, local=A_ADDR), 0)
        self.b.add_peer(IkePeer(self.cb, initiate=False, remote=None), 0)

    def collect(self) -> None:
        """What the managers have to send, into the queue (A's, then B's)."""
        for side, seen, to in (("a", A_SEEN, "b"), ("b", B_ADDR, "a")):
            for o in self.manager(side).datagrams_to_send():
                s = Sent(to, o.data, (seen[0], 4500 if o.natt else 500), o.natt)
                self.queue.append(s)
                self.log.append(s)

    def manager(self, side: str) -> IkeManager:
        return self.a if side == "a" else self.b

    def receive(self, side: str, data: bytes, src: tuple[str, int], natt: bool,
                now: float) -> None:
        """A message to ``side`` (on its own address, port 4500 if ``natt``)."""
        local = (A_ADDR if side == "a" else B_ADDR)[0], 4500 if natt else 500
        self.manager(side).receive_datagram(data, src, now, natt=natt, local=local)
        self.collect()

    def deliver_one(self, s: Sent, now: float) -> None:
        self.receive(s.to, s.data, s.src, s.natt, now)

    def pump(self, now: float = 0.0, rounds: int = 30) -> None:
        self.collect()
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
        net.a.handle_timer(100.0)  # DPD: a liveness check
        net.pump(100.0)
        sa.delete(101.0)
        net.a._process(sa, 101.0)
        net.pump(101.0)
    return net.log
