"""Issue 9: what unauthenticated or malformed IKE messages must not do, and child SA rekey
collisions (RFC 7296 sections 2.1, 2.8.1, 2.23, 2.25, 1.3, 3.10.1)."""

from __future__ import annotations

import logging
import random

import pytest

from nattunnel.constants import DhGroup, ExchangeType, NotifyType, ProtocolId, TransformType
from nattunnel.esp.suite import AES_GCM_256
from nattunnel.ike import crypto as kc
from nattunnel.ike import manager as ike_mod
from nattunnel.ike.base import RekeyChildContext, RequestKind, State
from nattunnel.ike.events import IkeRekeyed, Outgoing
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.message import (
    KE,
    SA,
    Header,
    Nonce,
    Notify,
    Transform,
    TSi,
    TSr,
    decode_message,
    encode_message,
    esp_proposal,
    ike_proposal,
)
from nattunnel.ike.proposals import EspProposal
from nattunnel.ike.ratelimit import IkeLimits
from nattunnel.ike.sa import IkeSa
from tests.support.ike import (
    A_ADDR,
    A_SEEN,
    NET_A,
    NET_B,
    Net,
    SaPair,
    assert_child_pair_works,
    child_ups,
    configs,
    drain,
    up,
)
from tests.support.packets import ip4


def spoof(sa: IkeSa, message_id: int, *, from_initiator: bool,
          exchange: int = ExchangeType.IKE_SA_INIT, response: bool = False) -> bytes:
    """The 28-octet header-only message anyone on the path can make from the clear SPIs."""
    data = encode_message(Header.make(exchange, sa.spi_i, sa.spi_r, message_id=message_id,
                                      initiator=from_initiator, response=response), [])
    assert len(data) == 28
    return data


def snapshot(sa: IkeSa) -> tuple[object, ...]:
    return (sa.message_ids[1], sa.last_rx, sa._last_response, sa.message_ids[0],
            sa.request.message_id if sa.request else None, sa.remote, sa.natt, sa.state)


def established() -> SaPair:
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.established and w.b is not None and w.b.established
    return w


def only_notify(data: bytes, sa: IkeSa) -> Notify:
    msg = decode_message(data, sk=sa._sk_in)
    assert msg.header.is_response
    (n,) = msg.notifies()
    return n


# --------------------------------------------------------------------------- 1. spoofing
def test_spoofed_clear_request_on_an_established_sa_changes_nothing():
    w = established()
    assert w.b is not None
    for target, peer_is_initiator in ((w.b, True), (w.a, False)):
        before = snapshot(target)
        for mid in (target.message_ids[1], target.message_ids[1] - 1, 0, 7):
            if mid < 0:
                continue
            for exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.INFORMATIONAL,
                             ExchangeType.CREATE_CHILD_SA):
                target.receive(spoof(target, mid, from_initiator=peer_is_initiator,
                                     exchange=exchange), 5.0)
        assert not target.datagrams_to_send(), "an unprotected request was answered"
        assert snapshot(target) == before
    # the next real requests in both directions work: a child rekey each way
    (ca,) = w.a.children
    assert w.a.rekey_child(ca.spi_in, 6.0)
    w.pump(6.0)
    ups_a, ups_b = child_ups(w.events_a), child_ups(w.events_b)
    assert len(ups_a) == 2 and ups_a[1].replaces == ca.spi_in
    assert_child_pair_works(ups_a[1], ups_b[1])
    (cb,) = w.b.children
    assert w.b.rekey_child(cb.spi_in, 7.0)
    w.pump(7.0)
    ups_a, ups_b = child_ups(w.events_a), child_ups(w.events_b)
    assert len(ups_b) == 3 and ups_b[2].replaces == cb.spi_in
    assert_child_pair_works(ups_a[2], ups_b[2])
    assert len(w.a.children) == 1 and len(w.b.children) == 1


def test_spoofed_header_while_the_responder_waits_for_ike_auth():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    (init,) = w.a.datagrams_to_send()
    w.to_b(init.data, 0.0)
    assert w.b is not None and w.b.state is State.INIT_DONE
    init_response = w.b.datagrams_to_send()
    w.b.receive(spoof(w.b, 1, from_initiator=True), 0.0)  # the ID IKE_AUTH will have
    assert not w.b.datagrams_to_send()
    w.release("b", init_response)
    w.pump()
    assert w.a.established and w.b.established, w.a.dead_reason
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert_child_pair_works(ca, cb)


def test_spoofed_header_while_the_initiator_waits_for_the_ike_auth_response():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    (init,) = w.a.datagrams_to_send()
    w.to_b(init.data, 0.0)
    assert w.b is not None
    (resp,) = w.b.datagrams_to_send()
    w.a.receive(resp.data, 0.0)
    assert w.a.state is State.AUTH_SENT
    before = snapshot(w.a)
    w.a.receive(spoof(w.a, 0, from_initiator=False), 0.0)  # the ID of B's first request
    outs = w.a.datagrams_to_send()
    assert [o.data for o in outs] == [w.a.request.data]  # only the IKE_AUTH request
    assert snapshot(w.a) == before
    w.release("a", outs)
    w.pump()
    assert w.a.established and w.b.established
    # B's first request (message ID 0): a child rekey, answered for real
    (cb,) = w.b.children
    assert w.b.rekey_child(cb.spi_in, 1.0)
    w.pump(1.0)
    ups_a, ups_b = child_ups(w.events_a), child_ups(w.events_b)
    assert len(ups_b) == 2 and ups_b[1].replaces == cb.spi_in
    assert_child_pair_works(ups_a[1], ups_b[1])


def test_spoofed_header_just_before_a_child_rekey_at_the_manager():
    net = Net()
    net.a.initiate("b", 0.0)
    net.deliver()
    assert up(net)
    (sa_a,), (sa_b,) = net.a.sas.values(), net.b.sas.values()
    first = net.ta.peers["b"].outbound
    net.give("b", spoof(sa_b, sa_b.message_ids[1], from_initiator=True), A_SEEN, False, 1.0)
    net.give("b", spoof(sa_b, sa_b.message_ids[1], from_initiator=True), (A_SEEN[0], 4500),
             True, 1.0)
    assert not net.take("b")
    assert net.a.rekey_outbound(first.spi, 2.0)
    net.deliver(2.0)
    assert net.ta.peers["b"].outbound is not first
    assert len(sa_a.children) == 1 and len(sa_b.children) == 1
    assert sa_a.children[0].spi_out == sa_b.children[0].spi_in
    assert_traffic_both_ways(net)


def test_clear_ike_sa_init_is_answered_only_if_it_repeats_the_request_exactly():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    (init,) = w.a.datagrams_to_send()
    w.to_b(init.data, 0.0)
    assert w.b is not None
    (resp,) = w.b.datagrams_to_send()
    w.b.receive(init.data, 0.5)  # the retransmission: the same response again
    assert [o.data for o in w.b.datagrams_to_send()] == [resp.data]
    before = snapshot(w.b)
    changed = bytearray(init.data)
    changed[-1] ^= 1
    for data in (bytes(changed), spoof(w.b, 0, from_initiator=True)):
        w.b.receive(data, 0.6)
        assert not w.b.datagrams_to_send()
    assert snapshot(w.b) == before


def test_unprotected_responses_are_ignored():
    w = established()
    assert w.b is not None
    w.a.handle_timer(w.a.get_timer())  # a liveness check
    w.a.datagrams_to_send()
    req = w.a.request
    assert req is not None
    for exchange in (ExchangeType.INFORMATIONAL, ExchangeType.IKE_SA_INIT):
        w.a.receive(spoof(w.a, req.message_id, from_initiator=False, exchange=exchange,
                          response=True), 10.0)
    assert w.a.request is req and w.a.last_rx == 0.0
    # an encrypted response of another exchange type is not the answer either
    other = encode_message(Header.make(ExchangeType.CREATE_CHILD_SA, w.a.spi_i, w.a.spi_r,
                                       message_id=req.message_id, initiator=False,
                                       response=True), [], sk=w.b._sk_out)
    w.a.receive(other, 10.0)
    assert w.a.request is req


# --------------------------------------------------------------------------- 2. addresses
class Recorder:
    """What B's manager sent since the last ``clear`` (taken off the wire when asked)."""

    def __init__(self, net: Net) -> None:
        self.node = net.node_b
        self.mark = len(self.node.sent)

    def clear(self) -> None:
        self.node.take()
        self.mark = len(self.node.sent)

    @property
    def sent(self) -> list[Outgoing]:
        self.node.pending()
        return self.node.sent[self.mark:]


def test_spoofed_message_from_elsewhere_does_not_redirect_dpd():
    net = Net()
    net.cb.dpd_interval = 10.0
    rec = Recorder(net)
    net.a.initiate("b", 0.0)
    net.deliver()
    (sa_b,) = net.b.sas.values()
    real = (A_SEEN[0], 4500)
    assert sa_b.remote == real and net.tb.peers["a"].addr == real
    evil = ("203.0.113.66", 4500)
    for exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.INFORMATIONAL):
        net.give("b", spoof(sa_b, sa_b.message_ids[1], from_initiator=True,
                            exchange=exchange), evil, True, 1.0)
    assert sa_b.remote == real and net.tb.peers["a"].addr == real
    rec.clear()
    t = net.b.get_timer()
    net.b.handle_timer(t)
    (dpd,) = rec.sent
    assert dpd.remote == real and dpd.natt


def test_authenticated_message_from_a_new_address_moves_the_sa():
    net = Net()
    net.cb.dpd_interval = 10.0
    rec = Recorder(net)
    net.a.initiate("b", 0.0)
    net.deliver()
    (sa_a,), (sa_b,) = net.a.sas.values(), net.b.sas.values()
    # A's NAT mapping changed: A's next request reaches B from a new port
    assert sa_a.check_liveness(5.0)
    (out,) = sa_a.datagrams_to_send()
    new = (A_SEEN[0], 40000)
    rec.clear()
    net.give("b", out.data, new, True, 5.0)
    (resp,) = rec.sent
    assert resp.remote == new  # the response goes where the request came from
    assert sa_b.remote == new and net.tb.peers["a"].addr == new
    rec.clear()
    net.b.handle_timer(sa_b.get_timer())
    assert [o.remote for o in rec.sent] == [new]  # and so does B's next DPD
    # a replay of that request from the old address answers there but moves nothing back
    rec.clear()
    net.give("b", out.data, (A_SEEN[0], 4500), True, 6.0)
    assert [o.remote for o in rec.sent] == [(A_SEEN[0], 4500)]
    assert sa_b.remote == new and net.tb.peers["a"].addr == new


def test_ike_up_uses_the_address_of_the_authenticated_ike_auth():
    net = Net()
    net.a.initiate("b", 0.0)
    net.deliver()
    (sa_b,) = net.b.sas.values()
    # IKE_SA_INIT came on port 500, IKE_AUTH on 4500: ESP goes to 4500
    assert sa_b.remote == (A_SEEN[0], 4500) and sa_b.natt
    assert net.tb.peers["a"].addr == (A_SEEN[0], 4500)


# --------------------------------------------------------------------------- 3. KE payloads
def pfs_configs(a_dh=DhGroup.CURVE25519, b_dh=DhGroup.CURVE25519):
    a_cfg, b_cfg = configs()
    a_cfg.esp_proposals = (EspProposal(AES_GCM_256, dh=a_dh),)
    b_cfg.esp_proposals = (EspProposal(AES_GCM_256, dh=b_dh),)
    return a_cfg, b_cfg


def request(w: SaPair, payloads, exchange=ExchangeType.CREATE_CHILD_SA) -> bytes:
    """A request from A to B made by hand (A's next message ID is used up)."""
    mid = w.a.message_ids[0]
    w.a._next_request_id += 1
    return encode_message(Header.make(exchange, w.a.spi_i, w.a.spi_r, message_id=mid,
                                      initiator=True), payloads, sk=w.a._sk_out)


def esp_offer(spi: bytes, dhs: tuple[int, ...]) -> SA:
    p = esp_proposal(1, spi, encr=AES_GCM_256.transform_id,
                     key_length=AES_GCM_256.key_attr_bits)
    p.transforms[1:1] = [Transform.make(TransformType.DH, g) for g in dhs]
    return SA([p])


def child_rekey_request(w: SaPair, dhs: tuple[int, ...], ke: KE | None) -> bytes:
    (ca,) = w.a.children
    payloads = [Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP,
                       spi=ca.spi_in.to_bytes(4, "big")),
                esp_offer(b"\x11\x22\x33\x44", dhs), Nonce(b"n" * 32)]
    if ke is not None:
        payloads.append(KE(ke.group, ke.data))
    payloads += [TSi.of(NET_A), TSr.of(NET_B)]
    return request(w, payloads)


X25519 = kc.KeyExchange(DhGroup.CURVE25519).public
P256 = kc.KeyExchange(DhGroup.ECP_256).public

CHILD_CASES = [
    # (B's PFS group, offered groups, KE, expected notify, expected data)
    pytest.param(None, (DhGroup.MODP_2048,), KE(DhGroup.MODP_2048, bytes(256)),
                 NotifyType.NO_PROPOSAL_CHOSEN, b"", id="modp2048-unsupported"),
    pytest.param(DhGroup.CURVE25519, (DhGroup.MODP_2048,), KE(DhGroup.MODP_2048, bytes(256)),
                 NotifyType.NO_PROPOSAL_CHOSEN, b"", id="modp2048-we-want-x25519"),
    pytest.param(None, (DhGroup.MODP_2048, DhGroup.CURVE25519),
                 KE(DhGroup.MODP_2048, bytes(256)), NotifyType.INVALID_KE_PAYLOAD,
                 b"\x00\x1f", id="modp2048-x25519-offered"),
    pytest.param(DhGroup.CURVE25519, (DhGroup.ECP_256, DhGroup.CURVE25519),
                 KE(DhGroup.ECP_256, P256), NotifyType.INVALID_KE_PAYLOAD, b"\x00\x1f",
                 id="we-want-x25519"),
    pytest.param(DhGroup.CURVE25519, (), None, NotifyType.NO_PROPOSAL_CHOSEN, b"",
                 id="no-pfs-offered-we-want-it"),
    pytest.param(None, (DhGroup.CURVE25519,), None, NotifyType.INVALID_KE_PAYLOAD,
                 b"\x00\x1f", id="pfs-offered-no-ke"),
    pytest.param(None, (DhGroup.CURVE25519,), KE(DhGroup.CURVE25519, X25519[:31]),
                 NotifyType.INVALID_SYNTAX, b"", id="x25519-short"),
    pytest.param(DhGroup.CURVE25519, (DhGroup.CURVE25519,),
                 KE(DhGroup.CURVE25519, X25519 + b"\x00"), NotifyType.INVALID_SYNTAX, b"",
                 id="x25519-long"),
    pytest.param(None, (DhGroup.CURVE25519,), KE(DhGroup.CURVE25519, bytes(32)),
                 NotifyType.INVALID_SYNTAX, b"", id="x25519-degenerate"),
    pytest.param(None, (DhGroup.ECP_256,), KE(DhGroup.ECP_256, b"\x01" * 64),
                 NotifyType.INVALID_SYNTAX, b"", id="p256-not-on-curve"),
    pytest.param(None, (DhGroup.ECP_256,), KE(DhGroup.ECP_256, P256[:63]),
                 NotifyType.INVALID_SYNTAX, b"", id="p256-short"),
]


@pytest.mark.parametrize(("b_dh", "dhs", "ke", "notify", "data"), CHILD_CASES)
def test_bad_ke_in_a_child_rekey_is_answered_with_the_right_notify(b_dh, dhs, ke, notify,
                                                                   data):
    a_cfg, b_cfg = configs()
    b_cfg.esp_proposals = (EspProposal(AES_GCM_256, dh=b_dh),)
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.b is not None
    children = list(w.b.children)
    req = child_rekey_request(w, dhs, ke)
    mid = w.b.message_ids[1]
    w.b.receive(req, 1.0)  # must not raise
    (out,) = w.b.datagrams_to_send()
    n = only_notify(out.data, w.a)
    assert (n.notify_type, n.data) == (notify, data)
    assert w.b.message_ids[1] == mid + 1  # the message ID is used up
    assert w.b.children == children and not drain(w.b)
    w.b.receive(req, 1.5)  # the retransmission: the same answer from the cache
    assert [o.data for o in w.b.datagrams_to_send()] == [out.data]
    # the SA still works: a real rekey (with PFS if B wants it)
    if b_dh is not None:
        a_cfg.esp_proposals = (EspProposal(AES_GCM_256, dh=b_dh),)
    (ca,) = w.a.children
    assert w.a.rekey_child(ca.spi_in, 2.0)
    w.pump(2.0)
    ups_a, ups_b = child_ups(w.events_a), child_ups(w.events_b)
    assert len(ups_a) == 2 and ups_a[1].replaces == ca.spi_in
    assert_child_pair_works(ups_a[1], ups_b[1])


def test_child_rekey_with_an_acceptable_ke_group_that_is_not_our_first():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.b is not None
    kex = kc.KeyExchange(DhGroup.ECP_256)
    w.b.receive(child_rekey_request(w, (DhGroup.CURVE25519, DhGroup.ECP_256),
                                    KE(DhGroup.ECP_256, kex.public)), 1.0)
    (out,) = w.b.datagrams_to_send()
    msg = decode_message(out.data, sk=w.a._sk_in)
    assert not [n for n in msg.notifies() if n.is_error]
    assert msg.get(KE).group == DhGroup.ECP_256
    (p,) = msg.get(SA).proposals
    assert [t.id for t in p.get(TransformType.DH)] == [DhGroup.ECP_256]


def ike_rekey_request(w: SaPair, *, spi: bytes = b"N" * 8, dhs=(DhGroup.CURVE25519,),
                      ke: KE | None = None, bits: int = 256) -> bytes:
    p = ike_proposal(1, encr=20, prf=5, dh=dhs[0], key_length=bits, spi=spi)
    p.transforms += [Transform.make(TransformType.DH, g) for g in dhs[1:]]
    payloads = [SA([p]), Nonce(b"n" * 32)]
    if ke is not None:
        payloads.append(ke)
    return request(w, payloads)


IKE_CASES = [
    pytest.param({"ke": KE(DhGroup.CURVE25519, X25519[:31])}, NotifyType.INVALID_SYNTAX, b"",
                 id="short"),
    pytest.param({"ke": KE(DhGroup.CURVE25519, bytes(32))}, NotifyType.INVALID_SYNTAX, b"",
                 id="degenerate"),
    pytest.param({"dhs": (DhGroup.ECP_256,), "ke": KE(DhGroup.ECP_256, b"\x01" * 64),
                  "bits": 128}, NotifyType.INVALID_SYNTAX, b"", id="p256-not-on-curve"),
    pytest.param({"ke": KE(DhGroup.ECP_256, P256)}, NotifyType.INVALID_KE_PAYLOAD, b"\x00\x1f",
                 id="other-group"),
    pytest.param({"dhs": (DhGroup.MODP_2048,), "ke": KE(DhGroup.MODP_2048, bytes(256))},
                 NotifyType.NO_PROPOSAL_CHOSEN, b"", id="modp2048"),
    pytest.param({"dhs": (DhGroup.MODP_2048, DhGroup.CURVE25519),
                  "ke": KE(DhGroup.MODP_2048, bytes(256))},
                 NotifyType.INVALID_KE_PAYLOAD, b"\x00\x1f", id="modp2048-and-x25519"),
    pytest.param({"ke": None}, NotifyType.INVALID_SYNTAX, b"", id="no-ke"),
    pytest.param({"spi": b"", "ke": KE(DhGroup.CURVE25519, X25519)},
                 NotifyType.INVALID_SYNTAX, b"", id="empty-spi"),
    pytest.param({"spi": b"NNNN", "ke": KE(DhGroup.CURVE25519, X25519)},
                 NotifyType.INVALID_SYNTAX, b"", id="4-octet-spi"),
    pytest.param({"spi": bytes(8), "ke": KE(DhGroup.CURVE25519, X25519)},
                 NotifyType.INVALID_SYNTAX, b"", id="zero-spi"),
]


@pytest.mark.parametrize(("kw", "notify", "data"), IKE_CASES)
def test_bad_ike_sa_rekey_request_is_refused_with_the_right_notify(kw, notify, data):
    w = established()
    assert w.b is not None
    mid = w.b.message_ids[1]
    req = ike_rekey_request(w, **kw)
    w.b.receive(req, 1.0)
    (out,) = w.b.datagrams_to_send()
    n = only_notify(out.data, w.a)
    assert (n.notify_type, n.data) == (notify, data)
    assert not [e for e in drain(w.b) if isinstance(e, IkeRekeyed)]
    assert w.b.message_ids[1] == mid + 1 and not w.b.rekeyed and len(w.b.children) == 1
    w.b.receive(req, 1.5)
    assert [o.data for o in w.b.datagrams_to_send()] == [out.data]
    # a real IKE SA rekey still works afterwards
    assert w.a.rekey_ike(2.0)
    w.pump(2.0)
    assert [e for e in w.events_a if isinstance(e, IkeRekeyed)]


def test_bad_ke_in_responses_to_our_rekeys_does_not_raise():
    a_cfg, b_cfg = pfs_configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.b is not None
    (ca,) = w.a.children
    for bad in (bytes(32), X25519[:31], b""):
        assert w.a.rekey_child(ca.spi_in, 1.0)
        w.a.datagrams_to_send()
        req = w.a.request
        resp = encode_message(
            Header.make(ExchangeType.CREATE_CHILD_SA, w.a.spi_i, w.a.spi_r,
                        message_id=req.message_id, initiator=False, response=True),
            [esp_offer(b"\x55\x66\x77\x88", (DhGroup.CURVE25519,)), Nonce(b"r" * 32),
             KE(DhGroup.CURVE25519, bad), TSi.of(NET_A), TSr.of(NET_B)], sk=w.b._sk_out)
        w.a.receive(resp, 1.0)
        assert w.a.request is None and w.a.children == [ca]
        assert not child_ups(drain(w.a))
    assert w.a.rekey_ike(2.0)
    w.a.datagrams_to_send()
    req = w.a.request
    resp = encode_message(
        Header.make(ExchangeType.CREATE_CHILD_SA, w.a.spi_i, w.a.spi_r,
                    message_id=req.message_id, initiator=False, response=True),
        [SA([ike_proposal(1, encr=20, prf=5, dh=31, key_length=256, spi=b"R" * 8)]),
         Nonce(b"r" * 32), KE(DhGroup.CURVE25519, X25519[:31])], sk=w.b._sk_out)
    w.a.receive(resp, 2.0)
    assert w.a.request is None and w.a.established and not w.a.rekeyed


def test_no_exception_leaves_the_manager(monkeypatch, caplog):
    net = Net()
    boom = {"n": 0}
    real = ike_mod.peek_receiver_spi

    def exploding(data):
        boom["n"] += 1
        raise RuntimeError("injected failure")

    monkeypatch.setattr(ike_mod, "peek_receiver_spi", exploding)
    with caplog.at_level(logging.ERROR, logger="nattunnel"):
        for i in range(5):
            net.give("b", b"\x00" * 40, ("198.18.0.9", 500), False, 1.0 + i * 0.1)
    assert boom["n"] == 5 and net.b.counters["errors"] == 5
    logged = [r for r in caplog.records if "injected failure" in r.getMessage()
              or (r.exc_info and "injected failure" in str(r.exc_info[1]))]
    assert len(logged) == 1  # rate-limited
    monkeypatch.setattr(ike_mod, "peek_receiver_spi", real)
    monkeypatch.setattr(IkeSa, "handle_timer", lambda self, now: 1 / 0)
    net.a.initiate("b", 0.0)
    net.deliver()
    assert up(net)
    (sa_a,) = net.a.sas.values()
    assert sa_a.check_liveness(2.0)
    net.a._schedule(sa_a)
    net.a.handle_timer(100.0)  # must not raise
    assert net.a.counters["errors"] == 1
    monkeypatch.undo()
    net.take("a")
    net.a.handle_timer(200.0)
    net.deliver(200.0)
    assert sa_a.request is None and sa_a.established


# --------------------------------------------------------------------------- child limit
def new_child_request(w: SaPair, spi: bytes) -> bytes:
    return request(w, [esp_offer(spi, ()), Nonce(b"c" * 32), TSi.of(NET_A), TSr.of(NET_B)])


def test_children_beyond_the_limit_get_no_additional_sas():
    w = established()
    assert w.b is not None and w.b.max_children == 16
    w.b.max_children = 2
    w.b.receive(new_child_request(w, b"\x00\x00\x10\x01"), 1.0)
    (out,) = w.b.datagrams_to_send()
    msg = decode_message(out.data, sk=w.a._sk_in)
    assert not [n for n in msg.notifies() if n.is_error] and len(w.b.children) == 2
    w.b.receive(new_child_request(w, b"\x00\x00\x10\x02"), 1.0)
    (out,) = w.b.datagrams_to_send()
    n = only_notify(out.data, w.a)
    assert n.notify_type == NotifyType.NO_ADDITIONAL_SAS and len(w.b.children) == 2
    # a rekey is not a new child: still allowed at the limit
    (ca,) = w.a.children
    assert w.a.rekey_child(ca.spi_in, 2.0)
    w.pump(2.0)
    assert len(child_ups(w.events_a)) == 2


def test_the_manager_passes_its_child_limit_to_every_ike_sa():
    net = Net()
    limits = IkeLimits(children_per_ike_sa=3)
    net.replace_a(IkeManager(net.ta, limits=limits))
    net.a.add_peer(IkePeer(net.ca, initiate=False, remote=("198.18.0.2", 500), local=A_ADDR), 0)
    net.b.limits = IkeLimits(children_per_ike_sa=5)
    sa = net.a.initiate("b", 0.0)
    assert sa is not None and sa.max_children == 3
    net.deliver()
    assert up(net)
    (sa_b,) = net.b.sas.values()
    assert sa_b.max_children == 5
    assert sa.rekey_ike(1.0)
    net.a._process(sa, 1.0)
    net.deliver(1.0)
    new_a = [s for s in net.a.sas.values() if s is not sa and s.established]
    new_b = [s for s in net.b.sas.values() if s is not sa_b and s.established]
    assert [s.max_children for s in new_a] == [3] and [s.max_children for s in new_b] == [5]


# --------------------------------------------------------------------------- 4. collisions
def traffic(sender, receiver, src: str, dst: str, addr) -> bool:
    out = memoryview(bytearray(2048))
    pkt = ip4(src, dst, 200)
    _, n = sender.encapsulate_into(pkt, out, 0.0)
    if n <= 0:
        return False
    rx = memoryview(bytearray(out[:n]))
    m = receiver.receive(rx, 0, n, addr, 0.0)
    return m > 0 and bytes(rx[16:16 + m]) == pkt


def assert_traffic_both_ways(net: Net) -> None:
    assert traffic(net.ta, net.tb, "198.18.100.1", "198.18.100.2", (A_SEEN[0], 4500))
    assert traffic(net.tb, net.ta, "198.18.100.2", "198.18.100.1", ("198.18.0.2", 4500))


def assert_one_working_child(net: Net) -> None:
    (sa_a,) = [s for s in net.a.sas.values() if s.established]
    (sa_b,) = [s for s in net.b.sas.values() if s.established]
    assert len(sa_a.children) == 1 and len(sa_b.children) == 1
    (ca,), (cb,) = sa_a.children, sa_b.children
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    oa, ob = net.ta.peers["b"].outbound, net.tb.peers["a"].outbound
    assert oa is not None and ob is not None
    assert (oa.spi, ob.spi) == (ca.spi_out, cb.spi_out)
    assert_traffic_both_ways(net)


def test_simultaneous_child_rekeys_keep_one_child_and_its_outbound_sa_on_both_sides():
    for seed in range(200):
        rng = random.Random(seed)
        net = Net()
        net.a.initiate("b", 0.0)
        net.deliver()
        assert up(net)
        assert net.a.rekey_outbound(net.ta.peers["b"].outbound.spi, 1.0)
        assert net.b.rekey_outbound(net.tb.peers["a"].outbound.spi, 1.0)
        net.deliver(1.0, rng)
        for t in (2.0, 3.0, 5.0, 9.0):  # retransmissions, if any
            net.timers(t)
            net.deliver(t, rng)
        try:
            assert_one_working_child(net)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e
        assert not any(s.request for s in (*net.a.sas.values(), *net.b.sas.values()))


def test_peer_deletes_the_child_we_are_rekeying():
    for seed in range(50):
        rng = random.Random(seed)
        net = Net()
        net.a.initiate("b", 0.0)
        net.deliver()
        (sa_a,), (sa_b,) = net.a.sas.values(), net.b.sas.values()
        assert net.a.rekey_outbound(net.ta.peers["b"].outbound.spi, 1.0)
        if seed % 2:  # B sees the rekey first, then deletes the old child
            net.deliver(1.0, rng, rounds=1)
        sa_b.children[0].expire_at = 1.0  # B's hard lifetime: B deletes it
        sa_b.handle_timer(1.0)
        net.b._process(sa_b, 1.0)
        for t in (1.0, 2.0, 3.0, 5.0, 9.0, 17.0):
            net.timers(t)
            net.deliver(t, rng)
        assert sa_a.established and sa_b.established
        assert sorted((c.spi_in, c.spi_out) for c in sa_a.children) == sorted(
            (c.spi_out, c.spi_in) for c in sa_b.children), seed
        oa, ob = net.ta.peers["b"].outbound, net.tb.peers["a"].outbound
        if sa_a.children:
            assert oa is not None and oa.spi == sa_a.children[-1].spi_out
            assert ob is not None and ob.spi == sa_b.children[-1].spi_out
            assert_traffic_both_ways(net)
        else:
            assert oa is None and ob is None
        assert sa_a.request is None and sa_b.request is None


def test_child_expiring_while_a_request_is_outstanding_is_still_deleted_at_the_peer():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.b is not None
    (ca,) = w.a.children
    w.a.handle_timer(10.0)  # a liveness check goes out
    assert w.a.request is not None and w.a.request.kind is RequestKind.LIVENESS_CHECK
    ca.expire_at = 10.1
    w.a.handle_timer(10.1)  # the child's hard lifetime passes while the check is outstanding
    assert not w.a.children
    # B rekeys that child meanwhile: TEMPORARY_FAILURE, we are deleting it (2.25.1)
    (cb,) = w.b.children
    cb.rekey_at = None  # as handle_timer does when it starts the rekey
    assert w.b.rekey_child(cb.spi_in, 10.1)
    w.pump(10.2)  # the check is answered, B's rekey refused
    assert w.a.request is None and w.b.request is None
    assert len(child_ups(w.events_b)) == 1 and w.b.children == [cb]
    assert cb.rekey_at is not None and 15.2 <= cb.rekey_at <= 20.2  # B tries again later
    t = w.a.get_timer()
    assert t is not None and t <= 10.2
    w.a.handle_timer(10.2)  # now the Delete goes
    w.pump(10.2)
    assert not w.b.children and not w.a.children
    assert w.a.established and w.b.established


def test_ike_sa_rekey_during_a_child_rekey_gets_temporary_failure_and_is_retried():
    w = established()
    assert w.b is not None
    (cb,) = w.b.children
    assert w.b.rekey_child(cb.spi_in, 1.0)
    held = w.b.datagrams_to_send()  # B's child rekey request, held back for now
    assert w.a.rekey_ike(1.0)
    w.a.ike_rekey_at = None  # as handle_timer does when it starts the rekey
    w.pump(1.0)
    n = [e for e in w.events_a if isinstance(e, IkeRekeyed)]
    assert not n and not w.a.rekeyed and not w.b.rekeyed  # refused: B is rekeying a child
    assert w.a.ike_rekey_at is not None and 6.0 <= w.a.ike_rekey_at <= 11.0
    assert len(w.a.children) == 1 and len(w.b.children) == 1
    w.release("b", held)
    w.pump(1.5)
    assert len(child_ups(w.events_a)) == 2
    w.a.handle_timer(w.a.ike_rekey_at)
    w.pump(w.a.ike_rekey_at or 11.0)
    (ev,) = [e for e in w.events_a if isinstance(e, IkeRekeyed)]
    assert len(ev.new.children) == 1


def test_collision_with_the_peers_delete_arriving_before_our_rekey_response():
    """Section 2.8.1 with reordering: B resolved the collision first and its Delete overtakes
    its response to our rekey; we must still delete our SA if it is the redundant one."""
    outcomes = set()
    for _ in range(40):
        w = established()
        assert w.b is not None
        (ca,), (cb,) = w.a.children, w.b.children
        assert w.a.rekey_child(ca.spi_in, 1.0) and w.b.rekey_child(cb.spi_in, 1.0)
        assert w.a.request is not None
        ctx = w.a.request.context if w.a.request else None
        assert isinstance(ctx, RekeyChildContext)
        ours = ctx.spi_in  # A's inbound SPI of the SA A's rekey makes
        (ra,), (rb,) = w.a.datagrams_to_send(), w.b.datagrams_to_send()
        w.b.receive(ra.data, 1.0)
        (resp_to_a,) = w.b.datagrams_to_send()
        w.a.receive(rb.data, 1.0)
        (resp_to_b,) = w.a.datagrams_to_send()
        w.b.receive(resp_to_b.data, 1.0)  # B's rekey completes: B deletes what it must
        (b_delete,) = w.b.datagrams_to_send()
        w.a.receive(b_delete.data, 1.0)  # ... and that Delete reaches A first
        w.a.receive(resp_to_a.data, 1.0)
        w.pump(1.0)
        assert len(w.a.children) == 1 and len(w.b.children) == 1
        (na,), (nb,) = w.a.children, w.b.children
        assert (na.spi_in, na.spi_out) == (nb.spi_out, nb.spi_in)
        outcomes.add(na.spi_in == ours)
        assert w.a.request is None and w.b.request is None
    assert outcomes == {True, False}  # each side's SA survived in some runs


def one_ike_sa_each(net: Net) -> tuple[IkeSa, IkeSa]:
    live_a = [s for s in net.a.sas.values() if s.state is not State.DEAD]
    live_b = [s for s in net.b.sas.values() if s.state is not State.DEAD]
    assert len(live_a) == 1 and len(live_b) == 1, (live_a, live_b)
    (sa_a,), (sa_b,) = live_a, live_b
    assert sa_a.established and sa_b.established
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert sa_a.initiator != sa_b.initiator
    return sa_a, sa_b


def test_simultaneous_ike_sa_rekeys_leave_one_ike_sa_with_the_child():
    """Section 2.8.2, random delivery order with duplicates."""
    for seed in range(100):
        rng = random.Random(seed)
        net = Net()
        net.a.initiate("b", 0.0)
        net.deliver()
        (sa_a,), (sa_b,) = net.a.sas.values(), net.b.sas.values()
        assert sa_a.rekey_ike(1.0) and sa_b.rekey_ike(1.0)
        net.a._process(sa_a, 1.0)
        net.b._process(sa_b, 1.0)
        net.deliver(1.0, rng, dup=0.3)
        for t in (2.0, 4.0, 8.0, 16.0, 32.0):
            net.timers(t)
            net.deliver(t, rng, dup=0.3)
        try:
            one_ike_sa_each(net)
            assert_one_working_child(net)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e


def test_simultaneous_ike_sa_rekeys_with_the_delete_overtaking_the_response():
    """Section 2.8.2: B resolves the collision first and its Delete reaches A before B's
    answer to A's rekey; the children must not go with the SA that Delete removes."""
    survivors = set()
    for _ in range(40):
        net = Net()
        net.a.initiate("b", 0.0)
        net.deliver()
        (sa_a,), (sa_b,) = net.a.sas.values(), net.b.sas.values()
        assert sa_a.rekey_ike(1.0) and sa_b.rekey_ike(1.0)
        net.a._process(sa_a, 1.0)
        net.b._process(sa_b, 1.0)
        (ra,), (rb,) = net.take("a"), net.take("b")
        net.give("b", *ra, 1.0)
        (resp_to_a,) = net.take("b")
        net.give("a", *rb, 1.0)
        (resp_to_b,) = net.take("a")
        net.give("b", *resp_to_b, 1.0)
        (b_delete,) = net.take("b")  # B deletes the redundant new SA, or the old one
        net.give("a", *b_delete, 1.0)
        net.give("a", *resp_to_a, 1.0)
        net.deliver(1.0)
        for t in (2.0, 4.0, 8.0):
            net.timers(t)
            net.deliver(t)
        new_a, _ = one_ike_sa_each(net)
        assert_one_working_child(net)
        survivors.add(new_a.initiator)
    assert survivors == {True, False}  # A's new SA survived in some runs, B's in others


def test_the_side_behind_the_nat_does_not_follow_a_public_peer_to_another_address():
    """Section 2.23: a host behind a NAT does not update the address (A is; B is public)."""
    w = established()
    assert w.b is not None and w.a.local_behind_nat and not w.a.remote_behind_nat
    assert w.b.check_liveness(5.0)
    (out,) = w.b.datagrams_to_send()
    where = w.a.remote
    elsewhere = ("198.18.0.99", 4500)
    assert w.a.receive(out.data, 5.0, elsewhere, True)  # authenticated and new
    (resp,) = w.a.datagrams_to_send()
    assert resp.remote == elsewhere  # answered where it came from (section 2.11)
    assert w.a.remote == where  # but not followed
    # B, public, follows A (A is behind the NAT): likewise with both behind NATs
    assert w.a.check_liveness(6.0)
    (out,) = w.a.datagrams_to_send()
    assert w.b.receive(out.data, 6.0, ("198.18.0.1", 40001), True)
    assert w.b.remote == ("198.18.0.1", 40001)
    w.b.local_behind_nat = True
    w.a._request = None
    assert w.a.check_liveness(7.0)
    (out,) = w.a.datagrams_to_send()
    assert w.b.receive(out.data, 7.0, ("198.18.0.1", 40002), True)
    assert w.b.remote == ("198.18.0.1", 40002)


def test_outbound_fallback_is_per_peer_even_with_equal_spis():
    """The peer chooses the outbound SPI, so two peers may choose the same one."""
    from types import SimpleNamespace

    from nattunnel.ike.events import ChildDown, ChildUp
    from nattunnel.tunnel.core import Tunnel

    tunnel = Tunnel()
    tunnel.add_peer("x", [NET_A])
    tunnel.add_peer("y", [NET_B])
    m = IkeManager(tunnel)
    x, y = (SimpleNamespace(name=n, config=None, remote=("198.18.0.9", 4500)) for n in "xy")
    spi_in = iter(range(0x100, 0x200))

    def child(ike, spi_out):
        return ChildUp(ike, next(spi_in), spi_out, AES_GCM_256, False, bytes(36), bytes(36),
                       (), ())

    m._child_up(child(x, 0x1000), 0.0)
    y1 = child(y, 0x1000)
    m._child_up(y1, 0.0)
    m._child_down(ChildDown(x, 0x100, 0x1000), 0.0)
    assert tunnel.peers["x"].outbound is None
    assert tunnel.peers["y"].outbound.spi == 0x1000
    y2 = child(y, 0x2000)
    m._child_up(y2, 0.0)
    m._child_down(ChildDown(y, y2.spi_in, 0x2000), 0.0)
    assert tunnel.peers["y"].outbound is not None and tunnel.peers["y"].outbound.spi == 0x1000


@pytest.mark.parametrize("spi", [bytes(4), b"\x00\x00\x00\xff"])
def test_reserved_esp_spis_are_refused(spi):
    """RFC 4303 section 2.1: SPI 0 is never sent, 1 to 255 are reserved."""
    w = established()
    assert w.b is not None
    w.b.receive(new_child_request(w, spi), 1.0)
    (out,) = w.b.datagrams_to_send()
    assert only_notify(out.data, w.a).notify_type == NotifyType.NO_PROPOSAL_CHOSEN
    assert len(w.b.children) == 1
    # as initiator: a response choosing such an SPI makes no child SA
    (ca,) = w.a.children
    assert w.a.rekey_child(ca.spi_in, 2.0)
    w.a.datagrams_to_send()
    req = w.a.request
    resp = encode_message(
        Header.make(ExchangeType.CREATE_CHILD_SA, w.a.spi_i, w.a.spi_r,
                    message_id=req.message_id, initiator=False, response=True),
        [esp_offer(spi, ()), Nonce(b"r" * 32), TSi.of(NET_A), TSr.of(NET_B)], sk=w.b._sk_out)
    w.a.receive(resp, 2.0)
    assert not child_ups(drain(w.a))
    assert all(c.spi_out > 0xFF for c in w.a.children)
