"""IKE cores on the shared fake wire (tests/support/wire.py): the IKE node adapters, and the
hosts, configurations and checks the IKE tests share.

Host A (198.19.1.2) is behind a NAT that keeps ports: the wire sees it as 198.18.0.1; host B
(198.18.0.2) is public. Each host has port 500 and port 4500 (NAT-T, where messages carry the
non-ESP marker on the real wire; here the port says it).

- ``SaPair``: two IKE SA cores, the initiator on A and the responder on B that A's first
  IKE_SA_INIT request makes (tests/ike/test_sa.py, test_hardening.py).
- ``Net``: two IKE managers, each with its Tunnel, A's and B's (test_manager.py and most).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from typing import Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from nattunnel.addr import Addr
from nattunnel.constants import IKE_PORT, NAT_T_PORT, ExchangeType
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.ike.base import State
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import ChildUp, Event, Outgoing
from nattunnel.ike.manager import IkeManager, IkePeer, PeerDown, PeerUp
from nattunnel.ike.message import decode_message, peek_header
from nattunnel.ike.proposals import IkeProposal
from nattunnel.ike.sa import IkeSa
from nattunnel.tunnel.core import Tunnel
from tests.support.packets import A_INNER, B_INNER, ip4
from tests.support.wire import FakeWire

A_ADDR = ("198.19.1.2", IKE_PORT)  # A behind the NAT
A_SEEN = ("198.18.0.1", IKE_PORT)  # A as B sees it
B_ADDR = ("198.18.0.2", IKE_PORT)
NET_A = ipaddress.ip_network(A_INNER + "/32")
NET_B = ipaddress.ip_network(B_INNER + "/32")

E = TypeVar("E", covariant=True)


class HasEvents(Protocol[E]):
    def next_event(self) -> E | None: ...


def drain(core: HasEvents[E]) -> list[E]:
    """Every event the core has, in order."""
    out = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out


def port(natt: bool) -> int:
    return NAT_T_PORT if natt else IKE_PORT


def configs(auth: str = "psk", b_props: tuple[IkeProposal, ...] | None = None,
            a_props: tuple[IkeProposal, ...] | None = None) -> tuple[IkeConfig, IkeConfig]:
    """(A's configuration of its peer "b", B's of its peer "a"), DPD every 10 s."""
    ka, kb = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    psk = b"correct horse battery staple"
    a = IkeConfig("b", Identity.parse("hosta"), Identity.parse("hostb"), auth=auth, psk=psk,
                  local_ts=(NET_A,), remote_ts=(NET_B,), private_key=ka,
                  peer_public_key=kb.public_key(), dpd_interval=10.0)
    b = IkeConfig("a", Identity.parse("hostb"), Identity.parse("hosta"), auth=auth, psk=psk,
                  local_ts=(NET_B,), remote_ts=(NET_A,), private_key=kb,
                  peer_public_key=ka.public_key(), dpd_interval=10.0)
    if a_props:
        a.ike_proposals = a_props
    if b_props:
        b.ike_proposals = b_props
    return a, b


def child_ups(events: list[Event]) -> list[ChildUp]:
    return [e for e in events if isinstance(e, ChildUp)]


def assert_child_pair_works(up_a: ChildUp, up_b: ChildUp) -> None:
    """The two ends of a child SA agree: SPIs, suite, and keys both ways."""
    assert up_a.spi_out == up_b.spi_in and up_b.spi_out == up_a.spi_in
    assert up_a.suite is up_b.suite
    out = OutboundSA(up_a.spi_out, up_a.suite, up_a.keymat_out)
    inb = InboundSA(up_b.spi_in, up_b.suite, up_b.keymat_in)
    pkt = ip4(A_INNER, B_INNER, 100)
    assert inb.decapsulate(out.encapsulate(pkt)) == pkt
    out2 = OutboundSA(up_b.spi_out, up_b.suite, up_b.keymat_out)
    inb2 = InboundSA(up_a.spi_in, up_a.suite, up_a.keymat_in)
    assert inb2.decapsulate(out2.encapsulate(pkt)) == pkt


# --- IKE SA cores ------------------------------------------------------------------------------
class SaNode:
    """One host's IKE SA on the wire (``tests.support.wire.Node``). The SA answers where a
    message came from (the source and port are handed to ``IkeSa.receive``); what it sends
    leaves from the host's port 500 or 4500 as the wire sees it (``seen``)."""

    def __init__(self, seen: str, sa: IkeSa | None = None) -> None:
        self.seen = seen
        self.sa = sa
        #: messages taken from the SA by a test, sent before the SA's own (``release``)
        self.held: list[Outgoing] = []
        self.events: list[Event] = []

    def collect(self) -> None:
        if self.sa is not None:
            self.events += drain(self.sa)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        outs, self.held = self.held, []
        if self.sa is not None:
            outs += self.sa.datagrams_to_send()
        return [(o.data, (self.seen, port(o.natt)), o.remote) for o in outs]

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        if self.sa is not None:
            self.sa.receive(data, now, src, dst[1] == NAT_T_PORT)
        self.collect()

    def get_timer(self) -> float | None:
        return self.sa.get_timer() if self.sa is not None else None

    def handle_timer(self, now: float) -> None:
        if self.sa is not None:
            self.sa.handle_timer(now)
            self.collect()


class ResponderNode(SaNode):
    """B's side: the first IKE_SA_INIT request makes its IKE SA (as the manager would), and
    a new one (another SPIi, or after B refused the last) makes a new one."""

    def __init__(self, seen: str, config: IkeConfig) -> None:
        super().__init__(seen)
        self.config = config

    def lookup(self, idi: Identity, idr: Identity | None) -> IkeConfig | None:
        return self.config if idi == self.config.remote_id else None

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        hdr = peek_header(data)
        natt = dst[1] == NAT_T_PORT
        b = self.sa
        if hdr.exchange_type == ExchangeType.IKE_SA_INIT and not hdr.is_response and (
                b is None or b.spi_i != hdr.spi_i or b.state is State.DEAD):
            self.sa = IkeSa(None, initiator=False, local=B_ADDR, remote=src, now=now,
                            lookup=self.lookup)
            self.sa.respond_init(decode_message(data), data, now, self.config.ike_proposals,
                                 natt=natt)
            self.collect()
            return
        super().datagram_received(data, src, dst, now)


def _both_ports(ip: str) -> list[Addr]:
    return [(ip, IKE_PORT), (ip, NAT_T_PORT)]


class SaPair:
    """A's initiator SA (``a``) and the responder SA it makes on B (``b``), on a FakeWire."""

    def __init__(self, a_cfg: IkeConfig, b_cfg: IkeConfig, now: float = 0.0) -> None:
        self.wire = FakeWire(now=now)
        self.node_a = SaNode(A_SEEN[0], IkeSa(a_cfg, initiator=True, local=A_ADDR,
                                              remote=B_ADDR, now=now))
        self.node_b = ResponderNode(B_ADDR[0], b_cfg)
        self.wire.attach(self.node_a, _both_ports(A_SEEN[0]))
        self.wire.attach(self.node_b, _both_ports(B_ADDR[0]))

    @property
    def a(self) -> IkeSa:
        assert self.node_a.sa is not None
        return self.node_a.sa

    @a.setter
    def a(self, sa: IkeSa) -> None:
        self.node_a.sa = sa

    @property
    def b(self) -> IkeSa | None:
        return self.node_b.sa

    @b.setter
    def b(self, sa: IkeSa) -> None:
        self.node_b.sa = sa

    @property
    def events_a(self) -> list[Event]:
        self.node_a.collect()
        return self.node_a.events

    @property
    def events_b(self) -> list[Event]:
        self.node_b.collect()
        return self.node_b.events

    @property
    def lost(self) -> int:
        return self.wire.lost

    def release(self, who: str, outs: list[Outgoing]) -> None:
        """Messages taken from an SA go out (before its own) at the next ``pump``."""
        node = self.node_a if who == "a" else self.node_b
        node.held[:0] = outs

    def to_b(self, data: bytes, now: float, natt: bool = False) -> None:
        """A message from A straight to B, as the wire would carry it."""
        self.node_b.datagram_received(data, (A_SEEN[0], port(natt)), (B_ADDR[0], port(natt)),
                                      now)

    def pump(self, now: float = 0.0, drop: Callable[[str, bytes], bool] | None = None,
             rounds: int = 20) -> None:
        """Carry messages at ``now`` until there are none; ``drop(who, data)`` loses some
        (``who``: "a" or "b", the sender)."""
        self.wire.now = now
        if drop is None:
            self.wire.drop = None
        else:
            def lose(src: Addr, dst: Addr, data: bytes, drop: Callable[..., bool] = drop
                     ) -> bool:
                return drop("a" if src[0] == A_SEEN[0] else "b", data)

            self.wire.drop = lose
        self.node_a.collect()
        self.node_b.collect()
        self.wire.run(rounds)


# --- IKE managers --------------------------------------------------------------------------------
class ManagerNode:
    """One host's IKE manager on the wire: messages come to its sockets at ``host`` (ports
    500 and 4500); what it sends leaves from them as the wire sees them (``seen``). It is
    asked for its address towards a peer (``LocalAddressNeeded``) only for wildcard sockets,
    and answers with ``host``."""

    def __init__(self, manager: IkeManager, host: str, seen: str) -> None:
        self.manager = manager
        self.host = host
        self.seen = seen
        #: every message the manager sent, in order
        self.sent: list[Outgoing] = []
        #: what it sent that is not on the wire yet
        self.queue: list[Outgoing] = []
        #: what it told (peers up and down), oldest first
        self.told: list[PeerUp | PeerDown] = []

    def pending(self) -> list[Outgoing]:
        """What the manager sent that is not on the wire yet (its questions answered)."""
        m = self.manager
        while (ev := m.next_event()) is not None:
            if isinstance(ev, PeerUp | PeerDown):
                self.told.append(ev)
                continue
            m.local_address_found(ev.remote, ev.natt, (self.host, port(ev.natt)), 0.0)
        outs = m.datagrams_to_send()
        self.sent += outs
        self.queue += outs
        return list(self.queue)

    def take(self) -> list[Outgoing]:
        """``pending()``, taken off: it will not go on the wire."""
        self.pending()
        outs, self.queue = self.queue, []
        return outs

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        return [(o.data, (self.seen, port(o.natt)), o.remote) for o in self.take()]

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        self.manager.receive_datagram(data, src, now, natt=dst[1] == NAT_T_PORT,
                                      local=(self.host, dst[1]))

    def get_timer(self) -> float | None:
        return self.manager.get_timer()

    def handle_timer(self, now: float) -> None:
        self.manager.handle_timer(now)


#: a message on its way, as the receiving manager will see it: (data, source, over 4500)
Message = tuple[bytes, Addr, bool]


class Net:
    """A's and B's IKE managers and tunnels on a FakeWire; A knows B's address (port 500)
    and initiates when asked (``a.initiate("b", now)``), B only responds."""

    def __init__(self, *, cookie_threshold: int = 32) -> None:
        self.wire = FakeWire()
        self.ta, self.tb = Tunnel(), Tunnel()
        self.ta.add_peer("b", [NET_B])
        self.tb.add_peer("a", [NET_A])
        self.a = IkeManager(self.ta)
        self.b = IkeManager(self.tb, cookie_threshold=cookie_threshold)
        self.node_a = ManagerNode(self.a, A_ADDR[0], A_SEEN[0])
        self.node_b = ManagerNode(self.b, B_ADDR[0], B_ADDR[0])
        self.wire.attach(self.node_a, _both_ports(A_SEEN[0]))
        self.wire.attach(self.node_b, _both_ports(B_ADDR[0]))
        common = dict(auth="psk", psk=b"secret", dpd_interval=0)
        self.ca = IkeConfig("b", Identity.parse("hosta"), Identity.parse("hostb"),
                            local_ts=(NET_A,), remote_ts=(NET_B,), **common)
        self.cb = IkeConfig("a", Identity.parse("hostb"), Identity.parse("hosta"),
                            local_ts=(NET_B,), remote_ts=(NET_A,), **common)
        self.a.add_peer(IkePeer(self.ca, initiate=False, remote=B_ADDR, local=A_ADDR), 0)
        self.b.add_peer(IkePeer(self.cb, initiate=False, remote=None), 0)

    def replace_a(self, manager: IkeManager) -> None:
        """A gets another manager (with other limits, say), on the same tunnel and wire."""
        self.a = self.node_a.manager = manager

    def node(self, side: str) -> ManagerNode:
        return self.node_a if side == "a" else self.node_b

    def take(self, side: str) -> list[Message]:
        """What ``side``'s manager has to send, taken off the wire, as the other side would
        receive it."""
        node = self.node(side)
        return [(o.data, (node.seen, port(o.natt)), o.natt) for o in node.take()]

    def give(self, side: str, data: bytes, src: Addr, natt: bool, now: float) -> None:
        """A message from ``src`` to ``side``'s manager (port 4500 if ``natt``)."""
        node = self.node(side)
        node.datagram_received(data, src, (node.host, port(natt)), now)

    def deliver(self, now: float = 0.0, rng: random.Random | None = None,
                dup: float = 0.0, rounds: int = 50) -> None:
        """Carry messages at ``now`` until there are none (or ``rounds`` passes); with
        ``rng``, each pass is shuffled and duplicates messages with probability ``dup``."""
        self.wire.now = now
        if rng is not None:
            self.wire.rng = rng
        self.wire.reorder = 1.0 if rng is not None else 0.0
        self.wire.duplicate = dup if rng is not None else 0.0
        self.wire.run(rounds)

    def timers(self, now: float) -> None:
        """Both managers' timers at ``now``."""
        self.a.handle_timer(now)
        self.b.handle_timer(now)


def up(net: Net) -> bool:
    """Both tunnels have an outbound SA."""
    return net.ta.peers["b"].outbound is not None and net.tb.peers["a"].outbound is not None
