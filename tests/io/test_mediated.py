"""io/mediated.py's MediatedControl on the fake wire: the application's control side (a
stand-in here: what it is given, and which peers are up) with a mediation client on A and
B and a mediation server, A and B behind port-restricted NATs (tests/ike/test_mediation.py's
wire). What the control side adds to the cores: our address towards the server asked for
first, every check and mediation message kept from the IKE manager, the path recorded, the
checks stopped once the peer is up, and ME_CONNECT again after the peer went down or the
checks failed."""

from __future__ import annotations

from nattunnel.addr import Addr
from nattunnel.constants import IKE_PORT, NAT_T_PORT
from nattunnel.ike.config import Identity
from nattunnel.ike.events import Outgoing
from nattunnel.ike.manager import LocalAddressNeeded
from nattunnel.ike.meserver import MediationClient
from nattunnel.io.mediated import RETRY_BASE, MediatedControl
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
    client_config,
)
from tests.support.wire import FakeWire


class FakeInner:
    """The application's Controller as MediatedControl sees it."""

    ike_port: int | None = IKE_PORT
    ike = None

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.received: list[bytes] = []

    def receive_datagram(self, data: bytes, remote: Addr, now: float, *, natt: bool,
                         local: Addr) -> None:
        self.received.append(data)

    def handle_tunnel_event(self, event: object, now: float) -> None:
        pass

    def datagrams_to_send(self) -> list[Outgoing]:
        return []

    def next_event(self) -> LocalAddressNeeded | None:
        return None

    def local_address_found(self, remote: Addr, natt: bool, local: Addr,
                            now: float) -> None:
        raise AssertionError("only the mediation client asks here")

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def stats(self) -> dict[str, object]:
        return {}


class ControlNode:
    """A host's MediatedControl on the wire, as the endpoint drives it."""

    def __init__(self, inside: str, me: Identity, other: Identity, initiate: bool) -> None:
        self.inside = inside
        self.inner = FakeInner()
        client = MediationClient(client_config(me), (S_IP, IKE_PORT), ("0.0.0.0", IKE_PORT),
                                 {"peer": other})
        self.control = MediatedControl(self.inner, client=client,
                                       initiate=("peer",) if initiate else ())
        self.asked: list[LocalAddressNeeded] = []

    def _answer(self, now: float) -> None:
        while (ev := self.control.next_event()) is not None:
            self.asked.append(ev)
            self.control.local_address_found(ev.remote, ev.natt, (self.inside, 0), now)

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        self.control.receive_datagram(data, src, now, natt=dst[1] == NAT_T_PORT, local=dst)
        self._answer(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        self._answer(now)
        return [(o.data, (self.inside, NAT_T_PORT if o.natt else IKE_PORT), o.remote)
                for o in self.control.datagrams_to_send()]

    def get_timer(self) -> float | None:
        return self.control.get_timer()

    def handle_timer(self, now: float) -> None:
        self.control.handle_timer(now)
        self._answer(now)


def build(rule: PortRestricted) -> tuple[FakeWire, ControlNode, ControlNode]:
    wire = FakeWire(seed=5)
    wire.add_nat(A_PUB, [A_IN])
    wire.add_nat(B_PUB, [B_IN])
    wire.drop = rule
    wire.attach(ServerNode(), [(S_IP, IKE_PORT), (S_IP, NAT_T_PORT)])
    b = ControlNode(B_IN, B_ID, A_ID, False)
    a = ControlNode(A_IN, A_ID, B_ID, True)
    wire.attach(a, [(A_IN, IKE_PORT), (A_IN, NAT_T_PORT)])
    wire.attach(b, [(B_IN, IKE_PORT), (B_IN, NAT_T_PORT)])
    wire.advance(0.0)
    return wire, a, b


def test_the_path_is_found_and_nothing_reaches_the_ike_manager() -> None:
    wire, a, b = build(PortRestricted())
    # the first question is our address towards the server: the host candidate
    assert a.asked[0] == LocalAddressNeeded((S_IP, IKE_PORT), False)
    assert a.control.client is not None and a.control.client.hosts == [(A_IN, NAT_T_PORT)]
    wire.advance(3.0)
    path = a.control.paths["peer"]
    assert path.initiator and path.remote[0] == B_PUB and path.local == (A_IN, NAT_T_PORT)
    # every mediation message and every check was the mediation client's
    assert a.inner.received == [] and b.inner.received == []
    stats = a.control.stats()["mediation"]
    assert isinstance(stats, dict) and stats["up"] and stats["paths"]["peer"]["remote"]


def test_checks_stop_when_up_and_mediation_again_when_down() -> None:
    wire, a, _b = build(PortRestricted())
    wire.advance(3.0)
    client = a.control.client
    assert client is not None and client.stats.connects == 1
    a.inner.up.add("peer")  # the mediated IKE SA is up: seen after the manager's call
    a.control.handle_timer(wire.now)
    wire.advance(1.0)
    assert all(s.checks is None or s.checks.done for s in client.sessions.values())
    a.inner.up.discard("peer")  # the mediated IKE SA went: the manager's timer saw it
    a.control.handle_timer(wire.now)
    assert "peer" in a.control.retry_at
    wire.advance(RETRY_BASE + 3.0)
    assert client.stats.connects == 2 and client.stats.paths == 2


def test_failed_checks_are_tried_again() -> None:
    rule = PortRestricted(lose_checks=1.0)
    wire, a, _b = build(rule)
    wire.advance(45.0)
    client = a.control.client
    assert client is not None and client.stats.failures == 1
    assert "peer" in a.control.retry_at
    rule.lose_checks = 0.0
    wire.advance(RETRY_BASE + 5.0)
    assert client.stats.connects == 2 and "peer" in a.control.paths
