"""Relay first, then direct, in io/mediated.py's MediatedControl (sans-I/O, on the fake
wire of tests/io/test_mediated.py): our TURN relayed address is offered as a relayed
candidate in ME_CONNECT, the peer's candidates come back for the relay's permissions, each
side puts the peer on the relay as soon as it has its allocation and the peer's relayed
candidate, a direct pair that passes its checks moves the IKE SA (once it is up), and a
failed check list leaves the peer on the relay without asking the server again."""

from __future__ import annotations

from nattunnel.addr import Addr
from nattunnel.constants import IKE_PORT, ME_TYPE_RELAYED, NAT_T_PORT
from nattunnel.ike.meserver import PathReady
from nattunnel.io.mediated import RELAY_WAIT
from tests.ike.test_mediation import (
    A_ID,
    A_IN,
    A_PUB,
    B_ID,
    B_IN,
    B_PUB,
    S_IP,
    PortRestricted,
    ServerNode,
)
from tests.io.test_mediated import ControlNode
from tests.support.wire import FakeWire

A_RELAYED: Addr = ("198.18.0.2", 50000)
B_RELAYED: Addr = ("198.18.0.2", 50001)


class Hooks:
    """What the application does (app.py's Node._join_mediation), recorded."""

    def __init__(self, node: ControlNode, relayed: Addr | None) -> None:
        self.relayed = relayed
        self.on_relay: list[tuple[str, Addr, list[Addr]]] = []
        self.on_direct: list[PathReady] = []
        c = node.control
        c.relay_address = lambda: self.relayed
        c.on_relay = lambda name, addr, perms: bool(self.on_relay.append((name, addr, perms))
                                                    or True)
        c.on_direct = lambda name, ev: bool(self.on_direct.append(ev) or True)


def build(rule: PortRestricted, a_relayed: Addr | None = A_RELAYED,
          b_relayed: Addr | None = B_RELAYED
          ) -> tuple[FakeWire, ControlNode, ControlNode, Hooks, Hooks]:
    """tests/io/test_mediated.py's wire, each side with its hooks before it starts."""
    wire = FakeWire(seed=5)
    wire.add_nat(A_PUB, [A_IN])
    wire.add_nat(B_PUB, [B_IN])
    wire.drop = rule
    wire.attach(ServerNode(), [(S_IP, IKE_PORT), (S_IP, NAT_T_PORT)])
    b = ControlNode(B_IN, B_ID, A_ID, False)
    a = ControlNode(A_IN, A_ID, B_ID, True)
    ha, hb = Hooks(a, a_relayed), Hooks(b, b_relayed)
    wire.attach(a, [(A_IN, IKE_PORT), (A_IN, NAT_T_PORT)])
    wire.attach(b, [(B_IN, IKE_PORT), (B_IN, NAT_T_PORT)])
    wire.advance(0.0)
    return wire, a, b, ha, hb


def test_relayed_candidates_put_both_on_the_relay_and_a_direct_pair_moves_it() -> None:
    wire, a, _b, ha, hb = build(PortRestricted())
    wire.advance(3.0)
    client = a.control.client
    assert client is not None
    assert [c.addr for c in client.candidates() if c.kind == ME_TYPE_RELAYED] == [A_RELAYED]
    # each side: on the relay to the other's relayed address, permissions for its
    # server-reflexive candidate (not for the host ones, nor the relayed: relay_peer's)
    assert [(n, addr) for n, addr, _ in ha.on_relay] == [("peer", B_RELAYED)]
    assert [(n, addr) for n, addr, _ in hb.on_relay] == [("peer", A_RELAYED)]
    assert [p[0] for p in ha.on_relay[0][2]] == [B_PUB]
    assert a.control.relayed == {"peer": B_RELAYED}
    # the direct pair passed while the IKE SA is not up yet: moved once it is
    assert ha.on_direct == [] and a.control.paths["peer"].remote[0] == B_PUB
    a.inner.up.add("peer")
    a.control.handle_timer(wire.now)
    assert [ev.remote[0] for ev in ha.on_direct] == [B_PUB]
    assert hb.on_direct == []  # only the initiator moves (RFC 4555 section 3.5)


def test_failed_checks_leave_the_peer_on_the_relay() -> None:
    rule = PortRestricted(lose_checks=1.0)
    wire, a, _b, _ha, _hb = build(rule)
    wire.advance(45.0)
    client = a.control.client
    assert client is not None and client.stats.failures == 1
    assert a.control.relayed == {"peer": B_RELAYED} and "peer" not in a.control.retry_at


def test_the_me_connect_waits_for_the_allocation() -> None:
    wire, a, _b, ha, _hb = build(PortRestricted(), a_relayed=None)
    client = a.control.client
    assert client is not None
    wire.advance(1.0)
    assert client.stats.connects == 0  # up, but no allocation yet
    ha.relayed = A_RELAYED
    wire.advance(0.5)
    assert client.stats.connects == 1
    assert any(c.addr == A_RELAYED for s in client.sessions.values() for c in s.local)


def test_without_an_allocation_the_me_connect_goes_after_relay_wait() -> None:
    wire, a, _b, _ha, _hb = build(PortRestricted(), a_relayed=None)
    client = a.control.client
    assert client is not None
    wire.advance(RELAY_WAIT + 1.0)
    assert client.stats.connects == 1 and a.control.relayed == {}
