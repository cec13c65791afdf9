"""MOBIKE (RFC 4555) between two IKE managers on the fake wire: a host whose address changes
(A moves from behind one NAT to behind another, or to no NAT), the responder (B) following,
the SPIs kept, COOKIE2 checked, forged and replayed updates moving nothing, the return
routability check, the peers' additional addresses, the NAT and keepalive state after a
move, and the errors (UNACCEPTABLE_ADDRESSES, NAT_PREVENTION)."""

from __future__ import annotations

import ipaddress
import logging
import os

import pytest

from nattunnel.addr import Addr, Network
from nattunnel.constants import NAT_T_PORT, ExchangeType, NotifyType
from nattunnel.ike.base import State
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.message import Header, Notify, Payload, encode_message
from nattunnel.ike.sa import IkeSa
from nattunnel.tunnel.core import Tunnel
from tests.support.ike import NET_A, NET_B, ManagerNode
from tests.support.wire import FakeWire, Nat

A_HOME = "198.19.1.2"  # behind NAT 1 (198.18.0.1)
A_CAFE = "198.19.2.2"  # behind NAT 2 (198.18.0.3)
A_PUBLIC = "198.18.0.5"  # no NAT
NAT1, NAT2 = "198.18.0.1", "198.18.0.3"
B = "198.18.0.2"


def _config(name: str, me: str, them: str, local: Network, remote: Network, *,
            mobike: bool = True) -> IkeConfig:
    return IkeConfig(name, Identity.parse(me), Identity.parse(them), auth="psk",
                     psk=b"secret", local_ts=(local,), remote_ts=(remote,), dpd_interval=0,
                     mobike=mobike)


class Mobile:
    """A (the initiator, on a host whose address changes) and B (public) on a FakeWire."""

    def __init__(self, *, a_mobike: bool = True, b_mobike: bool = True,
                 a_host: str = A_HOME) -> None:
        self.wire = FakeWire()
        self.nat1 = self.wire.add_nat(NAT1, {A_HOME})
        self.nat2 = self.wire.add_nat(NAT2, {A_CAFE})
        self.ta, self.tb = Tunnel(), Tunnel()
        self.ta.add_peer("b", [NET_B])
        self.tb.add_peer("a", [NET_A])
        self.a, self.b = IkeManager(self.ta), IkeManager(self.tb)
        self.node_a = ManagerNode(self.a, a_host, a_host)
        self.node_b = ManagerNode(self.b, B, B)
        self._attach(self.node_a, a_host)
        self._attach(self.node_b, B)
        self.a.add_peer(IkePeer(_config("b", "hosta", "hostb", NET_A, NET_B, mobike=a_mobike),
                                initiate=False, remote=(B, 500), local=(a_host, 500)), 0)
        self.b.add_peer(IkePeer(_config("a", "hostb", "hosta", NET_B, NET_A, mobike=b_mobike),
                                initiate=False, remote=None), 0)
        self.now = 0.0

    def _attach(self, node: ManagerNode, host: str) -> None:
        self.wire.attach(node, [(host, 500), (host, NAT_T_PORT)])

    def up(self) -> None:
        self.a.initiate("b", self.now)
        self.wire.run()
        assert self.ta.peers["b"].outbound is not None
        assert self.tb.peers["a"].outbound is not None

    @property
    def sa_a(self) -> IkeSa:
        return self.a.sas_of("b")[0]

    @property
    def sa_b(self) -> IkeSa:
        return self.b.sas_of("a")[0]

    def move_a(self, host: str) -> None:
        """A's interface gets another address (its old one is gone)."""
        old = self.node_a.host
        for p in (500, NAT_T_PORT):
            self.wire.nodes.pop((old, p), None)
        self.node_a.host = self.node_a.seen = host
        self._attach(self.node_a, host)

    def update(self, reason: str = "test", *, force: bool = False) -> bool:
        started = self.a.update_address(self.sa_a, (self.node_a.host, NAT_T_PORT), self.now,
                                        reason=reason, force=force)
        self.wire.run()
        return started

    def spis(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        return ([(c.spi_in, c.spi_out) for c in self.sa_a.children],
                [(c.spi_in, c.spi_out) for c in self.sa_b.children])

    def seen_from_a(self, host: str, nat: Nat | None) -> Addr:
        """A's NAT-T socket as B sees it."""
        return nat.translate_out((host, NAT_T_PORT)) if nat else (host, NAT_T_PORT)


def test_mobike_is_negotiated_in_ike_auth_both_ways() -> None:
    m = Mobile()
    m.up()
    assert m.sa_a.mobike and m.sa_b.mobike
    assert m.a.mobike_sas("b") == [m.sa_a] and m.b.mobike_sas() == []  # B responded


@pytest.mark.parametrize(("a_on", "b_on"), [(True, False), (False, True)])
def test_mobike_needs_both_sides(a_on: bool, b_on: bool) -> None:
    m = Mobile(a_mobike=a_on, b_mobike=b_on)
    m.up()
    assert not m.sa_a.mobike and not m.sa_b.mobike
    m.move_a(A_CAFE)
    assert not m.update()  # nothing to update with
    assert m.sa_b.remote == m.seen_from_a(A_HOME, m.nat1)


def test_an_update_moves_the_ike_sa_and_its_child_sas_keeping_the_spis() -> None:
    m = Mobile()
    m.up()
    before = m.spis()
    out_a, out_b = m.ta.peers["b"].outbound, m.tb.peers["a"].outbound
    assert m.tb.peers["a"].addr == m.seen_from_a(A_HOME, m.nat1)
    m.move_a(A_CAFE)
    assert m.update("address changed")
    new = m.seen_from_a(A_CAFE, m.nat2)
    assert m.sa_b.remote == new and m.sa_b.natt
    assert m.tb.peers["a"].addr == new  # the child SAs follow: ESP goes there
    assert m.spis() == before  # no rekey
    assert m.ta.peers["b"].outbound is out_a and m.tb.peers["a"].outbound is out_b
    assert m.sa_a.path_updates == 1 and m.sa_b.path_updates == 1
    assert m.sa_a.local == (A_CAFE, NAT_T_PORT)
    # the update was authenticated, with NAT detection: both still see the NAT on A's side
    assert m.sa_a.local_behind_nat and m.sa_b.remote_behind_nat
    assert m.sa_a.established and m.sa_b.established


def test_the_update_carries_update_sa_addresses_nat_detection_and_cookie2(
        caplog: pytest.LogCaptureFixture) -> None:
    m = Mobile()
    m.up()
    m.move_a(A_CAFE)
    with caplog.at_level(logging.DEBUG, logger="nattunnel.ike"):
        m.update()
    lines = [r.getMessage() for r in caplog.records]
    assert any("generating INFORMATIONAL request" in s and "N(UPDATE_SA_ADDRESSES) "
               "N(NAT_DETECTION_SOURCE_IP) N(NAT_DETECTION_DESTINATION_IP) N(COOKIE2)" in s
               for s in lines), lines
    # B's answer: its NAT detection and the COOKIE2 echoed
    assert any("generating INFORMATIONAL response" in s and "N(NAT_DETECTION_SOURCE_IP) "
               "N(NAT_DETECTION_DESTINATION_IP) N(COOKIE2)" in s for s in lines), lines


def test_the_responder_checks_return_routability_before_moving_the_child_sas() -> None:
    m = Mobile()
    m.up()
    old = m.tb.peers["a"].addr
    m.move_a(A_CAFE)
    new = m.seen_from_a(A_CAFE, m.nat2)
    checks: list[bytes] = []

    def lose_the_check(src: Addr, dst: Addr, data: bytes) -> bool:
        # B's request (a return routability check) to A's new address
        if src[0] == B and dst == new and not data[19] & 0x20:
            checks.append(data)
            return True
        return False

    m.wire.drop = lose_the_check
    m.update()
    assert checks, "B sent no return routability check"
    assert m.sa_b.remote == new  # IKE is there...
    assert m.tb.peers["a"].addr == old  # ...the child SAs wait for the check
    assert m.sa_b.request is not None and m.sa_b.request.kind.value == \
        "return routability check"
    m.wire.drop = None
    m.wire.advance(1.0)  # B retransmits the check; A answers
    assert m.tb.peers["a"].addr == new
    assert ipaddress.ip_address(new[0]) and new[0] in m.sa_b.verified


def test_no_check_for_an_address_already_proven() -> None:
    m = Mobile()
    m.up()
    m.move_a(A_CAFE)
    m.update()
    m.move_a(A_HOME)  # back home: B saw NAT 1 answer in IKE_AUTH
    requests: list[bytes] = []
    m.wire.drop = lambda s, d, data: (s[0] == B and not data[19] & 0x20
                                      and requests.append(data) is not None)
    m.update()
    assert requests == []
    assert m.tb.peers["a"].addr == m.seen_from_a(A_HOME, m.nat1)


def test_from_behind_nat_to_no_nat_and_back_nat_and_keepalives_follow() -> None:
    m = Mobile()
    m.up()
    ka, kb = m.ta.peers["b"], m.tb.peers["a"]
    assert m.sa_a.local_behind_nat and ka.keepalive and not kb.keepalive
    m.move_a(A_PUBLIC)
    m.update()
    assert not m.sa_a.local_behind_nat and not m.sa_b.remote_behind_nat
    assert not m.sa_b.local_behind_nat
    assert not ka.keepalive and not kb.keepalive  # no NAT: no keepalives
    assert kb.addr == (A_PUBLIC, NAT_T_PORT)
    m.move_a(A_CAFE)
    m.update()
    assert m.sa_a.local_behind_nat and m.sa_b.remote_behind_nat
    assert ka.keepalive and not kb.keepalive
    assert kb.addr == m.seen_from_a(A_CAFE, m.nat2)


def test_a_nat_that_changes_its_mapping_is_followed_on_request() -> None:
    """A's address stays; its NAT gives it another port (the path changed): an update
    forced by the operator moves B to the new mapping."""
    m = Mobile()
    m.up()
    assert not m.update()  # nothing changed: no update
    new = m.nat1.rebind((A_HOME, NAT_T_PORT))
    assert m.update("asked", force=True)
    assert m.sa_b.remote == new and m.tb.peers["a"].addr == new


def test_cookie2_not_echoed_closes_the_ike_sa(caplog: pytest.LogCaptureFixture) -> None:
    m = Mobile()
    m.up()
    b = m.sa_b

    def wrong_cookie(msg: object) -> list[Payload]:
        return [Notify(NotifyType.COOKIE2, os.urandom(16))]

    b._mobike_answer = wrong_cookie  # type: ignore[method-assign]
    m.move_a(A_CAFE)
    with caplog.at_level(logging.WARNING):
        m.update()
    assert not m.a.sas_of("b") or m.a.sas_of("b")[0] is not b
    assert "does not echo our COOKIE2: closing the IKE SA" in caplog.text


def _forged_update(b_sa: IkeSa, mid: int) -> bytes:
    hdr = Header.make(ExchangeType.INFORMATIONAL, b_sa.spi_i, b_sa.spi_r, message_id=mid,
                      initiator=True, response=False)
    body = encode_message(hdr, [Notify(NotifyType.UPDATE_SA_ADDRESSES)])
    return body + os.urandom(48)  # an SK payload nobody could have made


def test_a_forged_or_tampered_update_moves_nothing() -> None:
    m = Mobile()
    m.up()
    b_sa, peer = m.sa_b, m.tb.peers["a"]
    before = (b_sa.remote, peer.addr, b_sa.message_ids)
    attacker: Addr = ("198.18.0.66", NAT_T_PORT)
    m.node_b.datagram_received(_forged_update(b_sa, 1), attacker, (B, NAT_T_PORT), 0.0)
    # a real update from A with one octet changed on the way
    taken: list[bytes] = []
    m.wire.drop = lambda s, d, data: d[0] == B and taken.append(data) is None
    m.move_a(A_CAFE)
    m.update()
    m.wire.drop = None
    real = taken[0]
    bad = real[:-1] + bytes([real[-1] ^ 1])
    m.node_b.datagram_received(bad, attacker, (B, NAT_T_PORT), 0.0)
    m.wire.run()
    assert (b_sa.remote, peer.addr, b_sa.message_ids) == before


def test_a_replayed_update_moves_nothing() -> None:
    m = Mobile()
    m.up()
    first: list[bytes] = []
    m.wire.drop = lambda s, d, data: d[0] == B and first.append(data) is not None
    m.move_a(A_CAFE)
    m.update()  # the update to NAT 2 went; we keep a copy
    m.wire.drop = None
    m.move_a(A_HOME)
    m.update()  # and A moved back home
    home = m.seen_from_a(A_HOME, m.nat1)
    assert m.sa_b.remote == home and m.tb.peers["a"].addr == home
    # the old update replayed, from NAT 2's address and from elsewhere
    for src in (m.seen_from_a(A_CAFE, m.nat2), ("198.18.0.66", 4500)):
        m.node_b.datagram_received(first[0], src, (B, NAT_T_PORT), m.now)
        m.wire.run()
    assert m.sa_b.remote == home and m.tb.peers["a"].addr == home
    assert m.sa_b.path_updates == 2


def test_additional_addresses_are_sent_and_parsed() -> None:
    m = Mobile()
    m.a.set_local_addresses((A_HOME, "198.19.9.9", "fd00:9::9"), 0.0)
    m.up()
    assert m.sa_b.peer_addresses == ("198.19.9.9", "fd00:9::9")
    m.a.set_local_addresses((A_HOME, "fd00:9::9"), 0.0)  # an announcement (section 3.4)
    m.wire.run()
    assert m.sa_b.peer_addresses == ("fd00:9::9",)
    m.a.set_local_addresses((A_HOME,), 0.0)  # NO_ADDITIONAL_ADDRESSES
    m.wire.run()
    assert m.sa_b.peer_addresses == ()
    assert m.sa_a.established and m.sa_b.established


def test_additional_address_notify_codec() -> None:
    for text in ("198.19.9.9", "fd00:9::9"):
        ip = ipaddress.ip_address(text)
        n = Notify.additional_address(ip)
        assert n.notify_type == (NotifyType.ADDITIONAL_IP4_ADDRESS if ip.version == 4
                                 else NotifyType.ADDITIONAL_IP6_ADDRESS)
        assert Notify.decode_body(n.encode_body()).address() == ip
    with pytest.raises(ValueError):
        Notify(NotifyType.ADDITIONAL_IP4_ADDRESS, b"\x01\x02\x03").address()
    v4 = ipaddress.IPv4Address
    n = Notify.no_nats_allowed(v4("198.19.1.2"), v4("198.18.0.2"), 4500, 4500)
    assert len(n.data) == 12
    assert n.nats_allowed_addresses() == (v4("198.19.1.2"), v4("198.18.0.2"), 4500, 4500)
    with pytest.raises(ValueError):
        Notify(NotifyType.NO_NATS_ALLOWED, b"\x00" * 13).nats_allowed_addresses()


def test_unacceptable_addresses_is_an_error_that_moves_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    m = Mobile()
    m.up()
    b = m.sa_b
    old_answer = b._mobike_answer

    def refuse(msg: object) -> list[Payload]:
        return [Notify(NotifyType.UNACCEPTABLE_ADDRESSES), *old_answer(msg)]  # type: ignore

    b._mobike_answer = refuse  # type: ignore[method-assign]
    before = m.ta.peers["b"].keepalive, m.sa_a.path_updates
    m.move_a(A_CAFE)
    with caplog.at_level(logging.WARNING):
        m.update()
    assert "refused our new address 198.19.2.2:4500: UNACCEPTABLE_ADDRESSES" in caplog.text
    assert (m.ta.peers["b"].keepalive, m.sa_a.path_updates) == before
    assert m.sa_a.established


def test_nat_prevention_is_refused_with_unexpected_nat_detected(
        caplog: pytest.LogCaptureFixture) -> None:
    m = Mobile()
    m.up()
    a = m.sa_a
    plain = a._nat_detection

    def with_prevention() -> list[Payload]:  # A says no NAT may touch its packets
        v4 = ipaddress.IPv4Address
        return [*plain(), Notify.no_nats_allowed(v4(A_CAFE), v4(B), NAT_T_PORT, NAT_T_PORT)]

    a._nat_detection = with_prevention  # type: ignore[method-assign]
    old = m.sa_b.remote
    m.move_a(A_CAFE)
    with caplog.at_level(logging.WARNING):
        m.update()
    assert "refused with UNEXPECTED_NAT_DETECTED" in caplog.text  # B's line
    assert "UNEXPECTED_NAT_DETECTED (RFC 4555 section 3.9)" in caplog.text  # A's line
    assert m.sa_b.remote == old


def test_an_update_waits_for_the_window_and_a_change_during_it_updates_again() -> None:
    m = Mobile()
    m.up()
    a = m.sa_a
    assert m.a.rekey("b", m.now) == 1  # a child rekey outstanding
    m.move_a(A_CAFE)
    m.a.update_address(a, (A_CAFE, NAT_T_PORT), m.now, reason="moved")
    assert a.request is not None and a.request.kind.value == "rekey child"
    m.wire.run()  # the rekey answered, then the update
    assert m.sa_b.remote == m.seen_from_a(A_CAFE, m.nat2)
    # a move while the update is outstanding: another update after it
    held: list[bytes] = []
    m.wire.drop = lambda s, d, data: d[0] == B and held.append(data) is None
    m.move_a(A_PUBLIC)
    m.a.update_address(a, (A_PUBLIC, NAT_T_PORT), m.now, reason="moved")
    m.wire.run()
    m.move_a(A_HOME)
    m.a.update_address(a, (A_HOME, NAT_T_PORT), m.now, reason="moved again")
    m.wire.drop = None
    m.wire.advance(2.0)  # the first update retransmitted from home, then the second
    assert m.sa_b.remote == m.seen_from_a(A_HOME, m.nat1)
    assert m.tb.peers["a"].addr == m.seen_from_a(A_HOME, m.nat1)
    assert a.path_updates == 3 and a.state is State.ESTABLISHED


def test_an_ike_sa_rekey_keeps_mobike() -> None:
    m = Mobile()
    m.up()
    assert m.a.rekey("b", m.now, ike=True) == 1
    m.wire.run()
    m.wire.advance(3.0)
    assert m.sa_a.mobike and m.sa_b.mobike
    m.move_a(A_CAFE)
    assert m.update()
    assert m.tb.peers["a"].addr == m.seen_from_a(A_CAFE, m.nat2)


@pytest.mark.parametrize("mobike", [False, True])
def test_nat_rebinding_without_mobike_as_before_and_with_it_only_by_update(
        mobike: bool) -> None:
    """Without MOBIKE any authenticated message from a new address moves B's SAs (RFC 7296
    section 2.23, as before); with MOBIKE a new address needs UPDATE_SA_ADDRESSES, and a new
    port of the same address (a NAT's new mapping) is still followed."""
    m = Mobile(a_mobike=mobike, b_mobike=mobike)
    m.up()
    new_port = m.nat1.rebind((A_HOME, NAT_T_PORT))
    assert m.a.rekey("b", m.now) == 1  # an authenticated request from the new mapping
    m.wire.run()
    assert m.sa_b.remote == new_port and m.tb.peers["a"].addr == new_port
    m.move_a(A_CAFE)
    assert m.a.rekey("b", m.now) == 1  # from another address
    m.wire.run()
    cafe = m.seen_from_a(A_CAFE, m.nat2)
    assert (m.sa_b.remote == cafe) is not mobike
    if mobike:
        assert m.update()
        assert m.sa_b.remote == cafe and m.tb.peers["a"].addr == cafe


def test_the_nat_t_port_right_after_ike_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 4555 section 3.3 with NATT_AFTER_AUTH: A (no NAT) moves to port 4500 after
    IKE_AUTH; B follows at A's next message (the same address, another port) and so do the
    child SAs; a move still works from there."""
    from nattunnel.ike import mobike

    monkeypatch.setattr(mobike, "NATT_AFTER_AUTH", True)
    m = Mobile(a_host=A_PUBLIC)
    m.up()
    assert m.sa_a.natt and m.sa_a.remote == (B, NAT_T_PORT)
    assert m.sa_b.remote == (A_PUBLIC, 500)
    assert m.a.rekey("b", m.now) == 1
    m.wire.run()
    assert m.sa_b.remote == (A_PUBLIC, NAT_T_PORT) and m.sa_b.natt
    assert m.tb.peers["a"].addr == (A_PUBLIC, NAT_T_PORT)
    m.move_a(A_CAFE)
    assert m.update()
    assert m.tb.peers["a"].addr == m.seen_from_a(A_CAFE, m.nat2)


def test_without_it_the_first_update_moves_to_the_nat_t_port() -> None:
    m = Mobile(a_host=A_PUBLIC)
    m.up()
    assert not m.sa_a.natt and m.sa_a.remote == (B, 500)  # stays, as without MOBIKE
    m.move_a(A_CAFE)
    assert m.update()
    assert m.sa_a.natt and m.sa_a.remote == (B, NAT_T_PORT)
    assert m.sa_b.remote == m.seen_from_a(A_CAFE, m.nat2) and m.sa_b.natt
