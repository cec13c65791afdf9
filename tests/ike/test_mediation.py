"""IKEv2 mediation, sans-I/O: peer A, the mediation server and peer B on one fake wire
(tests/support/wire.py), A and B each behind a NAT (endpoint-independent mapping; port-
restricted filtering unless a test says otherwise), no sockets, no sleeps.

The wire here has no private networks: a datagram to an inside address is dropped (as the
Internet would), so only server-reflexive pairs can work, as between two homes.
"""

from __future__ import annotations

import random

import pytest

from nattunnel.addr import Addr
from nattunnel.constants import (
    IKE_PORT,
    ME_CONNECT,
    ME_TYPE_HOST,
    ME_TYPE_PEER_REFLEXIVE,
    ME_TYPE_RELAYED,
    ME_TYPE_SERVER_REFLEXIVE,
    NAT_T_PORT,
    ExchangeType,
    MeNotify,
)
from nattunnel.ike.base import State
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import IkeUp, Outgoing
from nattunnel.ike.mecheck import (
    Candidate,
    CheckList,
    ChecksFailed,
    PairState,
    PathChosen,
    auth_of,
    decode_check,
    encode_check,
    is_check,
    pair_priority,
    type_priority,
)
from nattunnel.ike.mediation import MeConnect, id_peer, parse_id_peer
from nattunnel.ike.meserver import (
    MediationClient,
    MediationServer,
    MediationUp,
    PathFailed,
    PathReady,
    PeerOffline,
)
from nattunnel.ike.message import Header, Message, decode_message
from nattunnel.ike.sa import IkeSa
from tests.support.ike import configs, drain
from tests.support.wire import FakeWire

S_IP = "198.18.0.10"
A_IN, A_PUB = "198.19.1.2", "198.18.0.1"
B_IN, B_PUB = "198.19.2.2", "198.18.0.3"
INSIDE = {A_IN, B_IN}
PSK = b"mediation test key"
SERVER_ID = Identity.parse("mediator")
A_ID, B_ID = Identity.parse("alice"), Identity.parse("bob")


def port(natt: bool) -> int:
    return NAT_T_PORT if natt else IKE_PORT


def client_config(me: Identity) -> IkeConfig:
    return IkeConfig("mediation", me, SERVER_ID, auth="psk", psk=PSK, dpd_interval=20.0,
                     ike_rekey_time=0.0)


def server_lookup(idi: Identity, idr: Identity | None) -> IkeConfig | None:
    if idi not in (A_ID, B_ID):
        return None
    return IkeConfig(str(idi), SERVER_ID, idi, auth="psk", psk=PSK, dpd_interval=0.0,
                     ike_rekey_time=0.0)


class ServerNode:
    def __init__(self) -> None:
        self.core = MediationServer(server_lookup, (S_IP, IKE_PORT))

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        self.core.receive_datagram(data, src, now, natt=dst[1] == NAT_T_PORT, local=dst)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        return [(o.data, (S_IP, port(o.natt)), o.remote)
                for o in self.core.datagrams_to_send()]

    def get_timer(self) -> float | None:
        return self.core.get_timer()

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)


class PeerNode:
    """A mediated peer: its MediationClient, and the mediated IKE SA (the initiator starts
    it over the chosen pair; the responder makes one for the first IKE_SA_INIT)."""

    def __init__(self, inside: str, me: Identity, other: Identity,
                 ike: IkeConfig, hosts: list[Addr] | None = None) -> None:
        self.inside = inside
        self.client = MediationClient(client_config(me), (S_IP, IKE_PORT), (inside, IKE_PORT),
                                      {"peer": other},
                                      hosts=hosts if hosts is not None
                                      else [(inside, NAT_T_PORT)])
        self.ike_config = ike
        self.ike: IkeSa | None = None
        self.events: list[object] = []
        self.ike_events: list[object] = []

    def collect(self, now: float) -> None:
        self.events += drain(self.client)
        for ev in self.events:
            if isinstance(ev, PathReady) and ev.initiator and self.ike is None:
                self.ike = IkeSa(self.ike_config, initiator=True, local=ev.local,
                                 remote=ev.remote, now=now, natt=True)
                self.ike.start(now)
        if self.ike is not None:
            self.ike_events += drain(self.ike)
            if any(isinstance(e, IkeUp) for e in self.ike_events):
                self.client.ike_arrived("peer", now)

    def datagram_received(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        natt = dst[1] == NAT_T_PORT
        if not self.client.receive_datagram(data, src, now, natt=natt, local=dst):
            hdr = decode_message(data).header
            if hdr.exchange_type == ExchangeType.IKE_SA_INIT and not hdr.is_response \
                    and self.ike is None:
                self.ike = IkeSa(None, initiator=False, local=dst, remote=src, now=now,
                                 lookup=lambda i, r: self.ike_config
                                 if i == self.ike_config.remote_id else None)
                self.ike.respond_init(decode_message(data), data, now,
                                      self.ike_config.ike_proposals, natt=natt)
            elif self.ike is not None:
                self.ike.receive(data, now, src, natt, dst)
        self.collect(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        outs: list[Outgoing] = self.client.datagrams_to_send()
        if self.ike is not None:
            outs += self.ike.datagrams_to_send()
        return [(o.data, (self.inside, port(o.natt)), o.remote) for o in outs]

    def get_timer(self) -> float | None:
        ts = [t for t in (self.client.get_timer(),
                          self.ike.get_timer() if self.ike else None) if t is not None]
        return min(ts) if ts else None

    def handle_timer(self, now: float) -> None:
        self.client.handle_timer(now)
        if self.ike is not None and (t := self.ike.get_timer()) is not None and t <= now:
            self.ike.handle_timer(now)
        self.collect(now)


class PortRestricted:
    """The wire's drop rule: nothing reaches an inside address directly, and a NAT's public
    address takes a datagram only from where its mapping sent one (RFC 4787's address and
    port-dependent filtering), unless ``full_cone``. ``lose_checks``: the share of
    connectivity checks lost on top."""

    def __init__(self, *, full_cone: bool = False, lose_checks: float = 0.0,
                 seed: int = 1) -> None:
        self.full_cone = full_cone
        self.lose_checks = lose_checks
        self.rng = random.Random(seed)
        self.sent: dict[tuple[str, int], set[tuple[str, int]]] = {}
        self.filtered = self.checks_lost = 0

    def __call__(self, src: Addr, dst: Addr, data: bytes) -> bool:
        if dst[0] in INSIDE:
            return True
        s, d = (src[0], src[1]), (dst[0], dst[1])
        if src[0] in (A_PUB, B_PUB):
            self.sent.setdefault(s, set()).add(d)
        if dst[0] in (A_PUB, B_PUB) and not self.full_cone and s not in self.sent.get(d, ()):
            self.filtered += 1
            return True
        if self.lose_checks and is_check(data) and self.rng.random() < self.lose_checks:
            self.checks_lost += 1
            return True
        return False


def build(*, rule: PortRestricted | None = None, b_online: bool = True
          ) -> tuple[FakeWire, ServerNode, PeerNode, PeerNode]:
    wire = FakeWire(seed=3)
    wire.add_nat(A_PUB, [A_IN])
    wire.add_nat(B_PUB, [B_IN])
    wire.drop = rule or PortRestricted()
    a_cfg, b_cfg = configs()
    server = ServerNode()
    wire.attach(server, [(S_IP, IKE_PORT), (S_IP, NAT_T_PORT)])
    a = PeerNode(A_IN, A_ID, B_ID, a_cfg)
    b = PeerNode(B_IN, B_ID, A_ID, b_cfg)
    wire.attach(a, [(A_IN, IKE_PORT), (A_IN, NAT_T_PORT)])
    wire.attach(b, [(B_IN, IKE_PORT), (B_IN, NAT_T_PORT)])
    a.client.start(wire.now)
    if b_online:
        b.client.start(wire.now)
    wire.run()
    return wire, server, a, b


def test_candidate_codec_as_charon_writes_it() -> None:
    c = Candidate.of(ME_TYPE_SERVER_REFLEXIVE, ("198.18.0.1", 40000))
    raw = c.encode()
    # priority (64 << 16) + 65535, family 1, type 3, port, address
    assert raw == bytes.fromhex("0040ffff" "01" "03" "9c40" "c6120001")
    assert Candidate.decode(raw) == Candidate(ME_TYPE_SERVER_REFLEXIVE, ("198.18.0.1", 40000),
                                              type_priority(ME_TYPE_SERVER_REFLEXIVE))
    empty = Candidate.of(ME_TYPE_PEER_REFLEXIVE, None).encode()
    assert empty == bytes.fromhex("0080ffff" "00" "02" "0000")
    assert Candidate.decode(empty).addr is None
    v6 = Candidate.of(ME_TYPE_HOST, ("fd00::1", 4500))
    v6_addr = Candidate.decode(v6.encode()).addr
    assert v6_addr is not None and v6_addr[:2] == ("fd00::1", 4500)
    for bad in (b"\x00\x00", bytes.fromhex("0040ffff0903"), bytes.fromhex("0040ffff0109"),
                bytes.fromhex("0040ffff01030000c612")):
        with pytest.raises(ValueError):
            Candidate.decode(bad)


def test_pair_priority_is_rfc8445s() -> None:
    g, d = type_priority(ME_TYPE_HOST), type_priority(ME_TYPE_SERVER_REFLEXIVE)
    assert pair_priority(g, d) == (1 << 32) * d + 2 * g + 1
    assert pair_priority(d, g) == (1 << 32) * d + 2 * g


def test_check_message_layout_and_auth() -> None:
    ep = Candidate.of(ME_TYPE_PEER_REFLEXIVE, None)
    data = encode_check(3, False, b"\x01\x02\x03\x04", ep, b"k" * 16)
    assert is_check(data)
    hdr = Header.make(ExchangeType.INFORMATIONAL, bytes(8), bytes(8), message_id=3)
    msg = decode_message(data)
    assert msg.header == hdr and not msg.encrypted
    assert [n.notify_type for n in msg.notifies()] == [
        MeNotify.ME_CONNECTID, MeNotify.ME_ENDPOINT, MeNotify.ME_CONNECTAUTH]
    check = decode_check(data)
    assert check.auth == auth_of(3, b"\x01\x02\x03\x04", ep.encode(), b"k" * 16)
    assert len(check.auth) == 20  # SHA-1


def test_id_peer_round_trip() -> None:
    req = MeConnect(B_ID, b"\x00\x01\x02\x03", b"x" * 16,
                    (Candidate.of(ME_TYPE_HOST, ("198.19.1.2", 4500)),), callback=True)
    msg = Message(Header.make(ME_CONNECT, bytes(8)), req.payloads())
    assert parse_id_peer(msg) == B_ID
    assert MeConnect.parse(msg) == req
    assert id_peer(B_ID).payload_type == 128
    assert MeConnect.parse(Message(msg.header, req.payloads()[1:])) == \
        "ME_CONNECT without ID_PEER"


def test_registration_and_server_reflexive_addresses() -> None:
    _wire, server, a, b = build()
    assert set(server.core.registered) == {A_ID, B_ID}
    assert any(isinstance(e, MediationUp) for e in a.events)
    # the server saw each on its NAT's public address, port 4500's mapping (floated)
    assert a.client.sa is not None and a.client.sa.natt
    assert a.client.sa.srflx is not None and a.client.sa.srflx[0] == A_PUB
    assert b.client.sa is not None and b.client.sa.srflx is not None
    assert b.client.sa.srflx[0] == B_PUB
    kinds = [c.kind for c in a.client.candidates()]
    assert kinds == [ME_TYPE_HOST, ME_TYPE_SERVER_REFLEXIVE]


def _connect(wire: FakeWire, a: PeerNode, b: PeerNode, seconds: float = 5.0) -> None:
    assert a.client.connect("peer", wire.now)
    wire.advance(seconds)


def test_port_restricted_both_sides_punch_and_ike_comes_up_direct() -> None:
    rule = PortRestricted()
    wire, server, a, b = build(rule=rule)
    t0 = wire.now
    _connect(wire, a, b)
    ready = [e for e in a.events if isinstance(e, PathReady)]
    assert len(ready) == 1 and ready[0].initiator
    assert ready[0].remote[0] == B_PUB and ready[0].local == (A_IN, NAT_T_PORT)
    assert rule.filtered > 0  # the NATs did drop the first checks
    assert a.ike is not None and a.ike.state is State.ESTABLISHED
    assert b.ike is not None and b.ike.state is State.ESTABLISHED
    assert a.ike.remote[0] == B_PUB and b.ike.remote[0] == A_PUB
    ups = [e for e in a.ike_events if isinstance(e, IkeUp)]
    assert ups and ups[0].local_behind_nat
    assert server.core.stats.forwarded == 2  # the request and the response
    # charon's pace: the path within ~1.5 s (the checks, then the 1 s wait to finish)
    assert wire.now - t0 <= 5.0
    # the checks stopped once the IKE SA was up: nothing more is sent for them
    sent = a.client.sessions and next(iter(a.client.sessions.values())).checks
    assert sent and sent.done


def test_check_loss_is_recovered_by_retransmissions() -> None:
    rule = PortRestricted(lose_checks=0.4, seed=7)
    wire, _server, a, b = build(rule=rule)
    _connect(wire, a, b, seconds=10.0)
    assert rule.checks_lost > 0
    assert [e for e in a.events if isinstance(e, PathReady)]
    assert a.ike is not None and a.ike.state is State.ESTABLISHED


def test_all_checks_lost_fails_cleanly() -> None:
    rule = PortRestricted(lose_checks=1.0)
    wire, _server, a, b = build(rule=rule)
    _connect(wire, a, b, seconds=60.0)
    assert [e for e in a.events if isinstance(e, PathFailed)]
    assert not [e for e in a.events if isinstance(e, PathReady)]
    assert a.ike is None
    assert wire.next_timer() is not None  # the mediation connection lives on (DPD)
    assert not a.client.sessions  # the failed session is gone after its linger


def test_offline_peer_gets_a_callback_when_it_registers() -> None:
    wire, server, a, b = build(b_online=False)
    assert set(server.core.registered) == {A_ID}
    _connect(wire, a, b, seconds=1.0)
    assert [e for e in a.events if isinstance(e, PeerOffline)]
    assert server.core.waiting == {B_ID: [A_ID]}
    b.client.start(wire.now)
    wire.advance(5.0)
    assert server.core.stats.callbacks == 1
    assert a.client.stats.callbacks == 1
    assert [e for e in a.events if isinstance(e, PathReady)]
    assert a.ike is not None and a.ike.state is State.ESTABLISHED


def test_unknown_identity_is_refused_by_the_server() -> None:
    wire = FakeWire()
    server = ServerNode()
    wire.attach(server, [(S_IP, IKE_PORT), (S_IP, NAT_T_PORT)])
    eve = PeerNode(A_IN, Identity.parse("eve"), B_ID, configs()[0])
    wire.attach(eve, [(A_IN, IKE_PORT), (A_IN, NAT_T_PORT)])
    eve.client.start(0.0)
    wire.run()
    assert not server.core.registered
    assert eve.client.sa is not None and eve.client.sa.state is State.DEAD


def test_check_list_pacing_and_retransmission_schedule() -> None:
    local = [Candidate.of(ME_TYPE_HOST, ("198.19.1.2", 4500))]
    remote = [Candidate.of(ME_TYPE_HOST, (f"198.18.1.{i}", 4500)) for i in range(1, 4)]
    cl = CheckList(b"abcd", True, b"m" * 16, b"p" * 16, local, remote, 0.0, pace=0.05)
    assert [p.id for p in cl.pairs] == [1, 2, 3]
    times = []
    now = 0.0
    for _ in range(6):
        t = cl.get_timer()
        assert t is not None
        now = t
        cl.handle_timer(now)
        for o in cl.datagrams_to_send():
            times.append((round(now, 3), decode_check(o.data).message_id))
    # one new check every 50 ms, and the first retransmission 25 ms after a check
    assert times[:4] == [(0.0, 1), (0.025, 1), (0.05, 1), (0.05, 2)]


def test_check_list_caps_pairs_and_relayed_is_last() -> None:
    local = [Candidate.of(ME_TYPE_HOST, (f"198.19.1.{i}", 4500)) for i in range(1, 12)]
    local.append(Candidate.of(ME_TYPE_RELAYED, ("198.18.9.9", 50000), ("198.19.1.1", 4500)))
    remote = [Candidate.of(ME_TYPE_HOST, (f"198.18.1.{i}", 4500)) for i in range(1, 12)]
    cl = CheckList(b"abcd", True, b"m" * 16, b"p" * 16, local, remote, 0.0, max_pairs=100)
    assert len(cl.pairs) == 100
    prios = [p.priority for p in cl.pairs]
    assert prios == sorted(prios, reverse=True)


def test_a_forged_check_is_dropped() -> None:
    local = [Candidate.of(ME_TYPE_HOST, ("198.19.1.2", 4500))]
    remote = [Candidate.of(ME_TYPE_HOST, ("198.18.1.1", 4500))]
    cl = CheckList(b"abcd", False, b"m" * 16, b"p" * 16, local, remote, 0.0)
    forged = decode_check(encode_check(1, False, b"abcd", Candidate.of(
        ME_TYPE_PEER_REFLEXIVE, None), b"wrong key wrong!"))
    assert not cl.receive(forged, ("198.18.1.1", 4500), None, 0.0)
    assert cl.stats.bad_auth == 1
    good = decode_check(encode_check(1, False, b"abcd", Candidate.of(
        ME_TYPE_PEER_REFLEXIVE, None), b"p" * 16))
    assert cl.receive(good, ("198.18.1.1", 4500), None, 0.0)
    answer = cl.datagrams_to_send()
    assert [decode_check(o.data).endpoint.addr for o in answer if
            decode_check(o.data).is_response] == [("198.18.1.1", 4500)]


def test_responder_check_list_ends_without_an_event_when_valid() -> None:
    """The responder waits for the initiator's IKE SA; a failed list says so."""
    local = [Candidate.of(ME_TYPE_HOST, ("198.19.1.2", 4500))]
    remote = [Candidate.of(ME_TYPE_HOST, ("198.18.1.1", 4500))]
    cl = CheckList(b"abcd", False, b"m" * 16, b"p" * 16, local, remote, 0.0, timeout=100.0)
    now = 0.0
    while (t := cl.get_timer()) is not None and t < 100:
        now = t
        cl.handle_timer(now)
        cl.datagrams_to_send()
    evs = drain(cl)
    assert len(evs) == 1 and isinstance(evs[0], ChecksFailed)
    assert cl.pairs[0].state is PairState.FAILED
    assert cl.pairs[0].retransmitted == 14  # 13 retransmissions, then failed
    assert cl.stats.retransmitted == 13
    assert 60 < now < 70  # charon's schedule: 25 ms twice, then 25 ms * 1.8**n
    assert cl.get_timer() is None
    # with the default timeout the list gives up at 40 s
    cl = CheckList(b"abcd", True, b"m" * 16, b"p" * 16, local, remote, 0.0)
    while (t := cl.get_timer()) is not None:
        now = t
        cl.handle_timer(now)
    assert now == 40.0 and isinstance(cl.next_event(), ChecksFailed)
    assert not isinstance(evs[0], PathChosen)


def test_mediation_still_works_after_the_mediation_sa_is_rekeyed() -> None:
    """An IKE SA rekey of the mediation connection (charon's server rekeys after 4 h):
    both sides follow the new SA, the server's table names it, and ME_CONNECT works."""
    wire, server, a, b = build()
    old = a.client.sa
    assert old is not None
    old.rekey_ike(wire.now)
    a.client.handle_timer(wire.now)
    wire.advance(2.0)
    new = a.client.sa
    assert new is not None and new is not old and new.state is State.ESTABLISHED
    assert new.srflx == old.srflx and old.state is State.DEAD  # deleted, answered
    assert server.core.registered[A_ID].local_spi in server.core.sas
    assert server.core.registered[A_ID].state is State.ESTABLISHED
    # and the server rekeys B's (on its own timer)
    b_old = server.core.registered[B_ID]
    b_old.ike_rekey_at = wire.now
    wire.advance(2.0)
    b_new = server.core.registered[B_ID]
    assert b_new is not b_old and b_new.state is State.ESTABLISHED
    assert b.client.sa is not None
    assert (b.client.sa.spi_i, b.client.sa.spi_r) == (b_new.spi_i, b_new.spi_r)
    assert b_old.state is State.DEAD  # its Delete was answered by B's old SA
    _connect(wire, a, b)
    assert [e for e in a.events if isinstance(e, PathReady)]
    assert a.ike is not None and a.ike.state is State.ESTABLISHED


def test_a_restarted_peer_replaces_its_old_registration() -> None:
    """B comes back (a restart: a new mediation SA with INITIAL_CONTACT) while its old SA
    still looks alive at the server: the old one is dropped, the new one registered."""
    wire, server, a, b = build()
    old = server.core.registered[B_ID]
    b.client.start(wire.now)  # B's new process
    wire.advance(1.0)
    new = server.core.registered[B_ID]
    assert new is not old and old.state is State.DEAD and old.local_spi not in server.core.sas
    _connect(wire, a, b)
    assert [e for e in a.events if isinstance(e, PathReady)]


def test_the_manager_sends_a_connect_id_in_one_initiation_only() -> None:
    """``IkeManager.initiate(notifies=...)``: the mediated initiation's IKE_SA_INIT carries
    ME_CONNECTID (charon as the responder stops its checks on it) and the IKE SA comes up
    with a responder that ignores it; the next initiation to the peer carries none."""
    from nattunnel.ike.manager import IkeManager, IkePeer
    from nattunnel.ike.message import Notify
    from nattunnel.tunnel.core import Tunnel
    from tests.support.ike import A_ADDR, A_SEEN, B_ADDR, NET_A, NET_B, ManagerNode

    a_cfg, b_cfg = configs()
    wire = FakeWire()
    ta, tb = Tunnel(), Tunnel()
    ta.add_peer("b", [NET_B])
    tb.add_peer("a", [NET_A])
    a, b = IkeManager(ta), IkeManager(tb)
    a.add_peer(IkePeer(a_cfg, initiate=False, remote=B_ADDR, local=A_ADDR), 0.0)
    b.add_peer(IkePeer(b_cfg, initiate=False, remote=None), 0.0)
    seen: list[bytes | None] = []

    def watch(src: Addr, dst: Addr, data: bytes) -> bool:
        msg = decode_message(data[4:] if data[:4] == bytes(4) else data)
        if msg.header.exchange_type == ExchangeType.IKE_SA_INIT and not msg.header.is_response:
            cid = msg.notify(MeNotify.ME_CONNECTID)
            seen.append(cid.data if cid is not None else None)
        return False

    wire.drop = watch
    wire.attach(ManagerNode(a, A_ADDR[0], A_SEEN[0]), [(A_SEEN[0], 500), (A_SEEN[0], 4500)])
    wire.attach(ManagerNode(b, B_ADDR[0], B_ADDR[0]), [(B_ADDR[0], 500), (B_ADDR[0], 4500)])
    sa = a.initiate("b", 0.0, notifies=(Notify(MeNotify.ME_CONNECTID, b"\x01\x02\x03\x04"),))
    wire.run(50)
    assert sa is not None and sa.state is State.ESTABLISHED
    assert [s.state for s in b.sas.values()] == [State.ESTABLISHED]
    assert seen == [b"\x01\x02\x03\x04"]
    a.terminate("b", 1.0)
    wire.now = 1.0
    wire.run(50)
    assert a.initiate("b", 2.0) is not None
    wire.now = 2.0
    wire.run(50)
    assert seen == [b"\x01\x02\x03\x04", None]


def test_host_candidates_are_every_address_of_a_wildcard_socket() -> None:
    """As charon offers them: the address towards the server first, then the namespace's
    other addresses of its family (``netwatch.addresses`` leaves out loopback and link-local),
    each once, at most MAX_HOSTS; a socket bound to one address has only that one."""
    from nattunnel.io.mediated import MAX_HOSTS, host_candidates

    found = ["198.19.1.2", "198.19.7.1", "fd00::5", "198.19.1.2", "198.19.8.1"]
    assert host_candidates("198.19.1.2", "0.0.0.0", 4500, lambda: found) == [
        ("198.19.1.2", 4500), ("198.19.7.1", 4500), ("198.19.8.1", 4500)]
    assert host_candidates("198.19.9.9", "", 4500, lambda: found)[0] == ("198.19.9.9", 4500)
    assert [a[0] for a in host_candidates("fd00::1", "::", 4500, lambda: found)] == [
        "fd00::1", "fd00::5"]
    for bound in ("198.19.1.2", None):
        assert host_candidates("198.19.1.2", bound, 4500, lambda: found) == [
            ("198.19.1.2", 4500)]
    # the tunnel's inner addresses (in a mediated peer's local_ts) are not offered
    import ipaddress
    inner = [ipaddress.ip_network("198.19.7.0/24"), ipaddress.ip_network("0.0.0.0/0")]
    assert host_candidates("198.19.1.2", "0.0.0.0", 4500, lambda: found, inner) == [
        ("198.19.1.2", 4500), ("198.19.8.1", 4500)]
    many = [f"198.19.3.{i}" for i in range(1, 40)]
    assert len(host_candidates("198.19.1.2", "0.0.0.0", 4500, lambda: many)) == MAX_HOSTS
