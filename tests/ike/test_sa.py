"""Two IKE SA cores on the fake wire (tests/support/ike.py ``SaPair``): exchanges, auth
methods, loss, retransmission, rekeys."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from nattunnel.constants import DhGroup, PrfId
from nattunnel.ike.base import State
from nattunnel.ike.events import ChildDown, IkeDown, IkeRekeyed, IkeUp
from nattunnel.ike.message import decode_message
from nattunnel.ike.proposals import IkeProposal
from tests.support.ike import (
    NET_A,
    NET_B,
    SaPair,
    assert_child_pair_works,
    child_ups,
    configs,
    drain,
)


@pytest.mark.parametrize("auth", ["psk", "pubkey"])
def test_full_exchange_nat_detected_child_keys_agree(auth):
    a_cfg, b_cfg = configs(auth)
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    up_a = next(e for e in w.events_a if isinstance(e, IkeUp))
    up_b = next(e for e in w.events_b if isinstance(e, IkeUp))
    # A is behind the NAT: A finds itself behind it; B finds its peer behind it
    assert up_a.local_behind_nat and not up_a.remote_behind_nat
    assert up_b.remote_behind_nat and not up_b.local_behind_nat
    assert w.a.natt and w.b.natt
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert ca.local_ts == (NET_A,) and ca.remote_ts == (NET_B,)
    assert cb.local_ts == (NET_B,) and cb.remote_ts == (NET_A,)
    assert_child_pair_works(ca, cb)


def test_wrong_psk_fails_authentication():
    a_cfg, b_cfg = configs("psk")
    b_cfg.psk = b"wrong"
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.b.state is State.DEAD and w.a.state is State.DEAD
    assert any(isinstance(e, IkeDown) for e in w.events_a)
    assert not child_ups(w.events_a) and not child_ups(w.events_b)


def test_wrong_ed25519_key_fails():
    a_cfg, b_cfg = configs("pubkey")
    b_cfg.peer_public_key = ed25519.Ed25519PrivateKey.generate().public_key()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.b.state is State.DEAD and w.a.state is State.DEAD


def test_invalid_ke_payload_retry_with_the_group_asked_for():
    b_only_ecp = (IkeProposal(20, 128, PrfId.HMAC_SHA2_256, DhGroup.ECP_256),)
    a_both = (IkeProposal(20, 256, PrfId.HMAC_SHA2_256, DhGroup.CURVE25519),
              IkeProposal(20, 128, PrfId.HMAC_SHA2_256, DhGroup.ECP_256))
    a_cfg, b_cfg = configs(b_props=b_only_ecp, a_props=a_both)
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.state is State.ESTABLISHED
    assert w.a.proposal.dh == DhGroup.ECP_256


def test_no_proposal_chosen():
    a_cfg, b_cfg = configs(a_props=(IkeProposal(28, None, PrfId.HMAC_SHA2_512,
                                                DhGroup.CURVE25519),),
                           b_props=(IkeProposal(20, 256, PrfId.HMAC_SHA2_256,
                                                DhGroup.CURVE25519),))
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.state is State.DEAD and "NO_PROPOSAL_CHOSEN" in w.a.dead_reason


def test_disjoint_traffic_selectors_give_ts_unacceptable_but_ike_sa_is_up():
    a_cfg, b_cfg = configs()
    b_cfg.remote_ts = (ipaddress.ip_network("198.18.200.0/24"),)
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.state is State.ESTABLISHED
    assert not child_ups(w.events_a) and not child_ups(w.events_b)


def test_lost_messages_are_retransmitted_and_answered_from_the_cache():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    dropped = {"n": 0}

    def drop_first_two_responses(who, data):
        if who == "b" and dropped["n"] < 2:
            dropped["n"] += 1
            return True
        return False

    w.pump(0.0, drop_first_two_responses)  # INIT response lost
    assert w.a.state is State.INIT_SENT
    t = w.a.get_timer()
    assert t == pytest.approx(0.5)
    w.a.handle_timer(t)
    w.pump(t, drop_first_two_responses)  # retransmitted INIT, whose answer is lost again
    t = w.a.get_timer()
    assert t == pytest.approx(1.5)  # backoff doubles
    w.a.handle_timer(t)
    w.pump(t, drop_first_two_responses)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    assert len(child_ups(w.events_b)) == 1  # the responder did not redo the work


def test_retransmissions_give_up_after_the_cap():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    sends = len(w.a.datagrams_to_send())
    now = 0.0
    while w.a.state is not State.DEAD:
        now = w.a.get_timer()
        w.a.handle_timer(now)
        sends += len(w.a.datagrams_to_send())
    # 6 sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5 s; given up 16 s after the last
    assert sends == 6 and now == pytest.approx(31.5)
    assert "no response to IKE_SA_INIT after 6 tries" in w.a.dead_reason


def test_dpd_liveness_and_death():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.get_timer() == 10.0
    w.a.handle_timer(10.0)  # liveness check, answered
    w.pump(10.0)
    assert w.a.state is State.ESTABLISHED and w.a.get_timer() == 20.0
    # the peer disappears: checks go unanswered until the cap
    now = 20.0
    w.a.handle_timer(now)
    while w.a.state is not State.DEAD:
        w.a.datagrams_to_send()
        now = w.a.get_timer()
        w.a.handle_timer(now)
    assert any(isinstance(e, ChildDown) for e in drain(w.a))


def test_child_rekey_by_initiator_is_make_before_break():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    old_a = child_ups(w.events_a)[0]
    assert w.a.rekey_child(old_a.spi_in, 1.0)
    w.pump(1.0)
    new_a, new_b = child_ups(w.events_a)[1], child_ups(w.events_b)[1]
    assert new_a.replaces == old_a.spi_in
    assert_child_pair_works(new_a, new_b)
    downs_b = [e for e in w.events_b if isinstance(e, ChildDown)]
    assert [d.spi_out for d in downs_b] == [old_a.spi_in]
    assert [c.spi_in for c in w.a.children] == [new_a.spi_in]
    assert [c.spi_in for c in w.b.children] == [new_b.spi_in]


def test_delete_ike_sa_brings_both_down():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    w.a.delete(1.0)
    w.pump(1.0)
    assert w.a.state is State.DEAD and w.b.state is State.DEAD
    assert any(isinstance(e, ChildDown) for e in w.events_b)


def test_garbage_and_truncated_messages_never_crash():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    spi_i, spi_r = w.a.spi_i, w.a.spi_r
    hdr = spi_i + spi_r + bytes([46, 0x20, 37, 0x08]) + (5).to_bytes(4, "big")
    for junk in [b"", b"\x00" * 10, hdr + (100).to_bytes(4, "big"),
                 hdr + (60).to_bytes(4, "big") + bytes(32)]:
        w.b.receive(junk, 2.0)
        w.a.receive(junk, 2.0)
    w.pump(2.0)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED


def test_ike_rekey_by_peer_hands_children_over():
    """The responder side of an IKE SA rekey (charon starts these): B answers as responder."""
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    # drive B's responder path with a CREATE_CHILD_SA(IKE) request built by hand
    from nattunnel.constants import ExchangeType
    from nattunnel.ike import crypto as kc
    from nattunnel.ike.message import KE, SA, Header, Nonce, encode_message, ike_proposal

    kex = kc.KeyExchange(DhGroup.CURVE25519)
    new_spi = b"N" * 8
    ni = b"n" * 32
    req = encode_message(
        Header.make(ExchangeType.CREATE_CHILD_SA, w.a.spi_i, w.a.spi_r,
                    message_id=w.a.message_ids[0], initiator=True),
        [SA([ike_proposal(1, encr=20, prf=5, dh=31, key_length=256, spi=new_spi)]),
         Nonce(ni), KE(31, kex.public)], sk=w.a._sk_out)
    w.b.receive(req, 3.0)
    (ev,) = [e for e in drain(w.b) if isinstance(e, IkeRekeyed)]
    assert ev.new.spi_i == new_spi and ev.new.established
    assert len(ev.new.children) == 1 and not ev.old.children
    resp = w.b.datagrams_to_send()[0].data
    msg = decode_message(resp, sk=w.a._sk_in)
    assert msg.header.is_response and msg.get(SA).proposals[0].spi == ev.new.spi_r


def test_child_rekey_by_time_with_jitter():
    a_cfg, b_cfg = configs()
    a_cfg.child_rekey_time = 100.0
    a_cfg.rekey_jitter = 0.1
    a_cfg.dpd_interval = 0
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    (child,) = w.a.children
    assert 90.0 <= child.rekey_at <= 100.0
    t = w.a.get_timer()
    assert t == child.rekey_at
    w.a.handle_timer(t)
    w.pump(t)
    ups = child_ups(w.events_a)
    assert len(ups) == 2 and ups[1].replaces == ups[0].spi_in
    assert [c.spi_in for c in w.a.children] == [ups[1].spi_in]
    assert_child_pair_works(ups[1], child_ups(w.events_b)[1])


def test_ike_sa_rekey_started_by_us_keeps_children_and_keys_agree():
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    old_a, old_b = w.a, w.b
    assert w.a.rekey_ike(1.0)
    w.pump(1.0)
    (ra,) = [e for e in w.events_a if isinstance(e, IkeRekeyed)]
    (rb,) = [e for e in w.events_b if isinstance(e, IkeRekeyed)]
    new_a, new_b = ra.new, rb.new
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r) != (old_a.spi_i, old_a.spi_r)
    assert new_a.initiator and not new_b.initiator
    assert len(new_a.children) == 1 and len(new_b.children) == 1
    assert old_a.state is State.DEAD and old_b.state is State.DEAD  # Delete(IKE) exchanged
    assert not [e for e in w.events_a + w.events_b if isinstance(e, ChildDown)]
    # the new SA works: a liveness check across it
    w.a, w.b = new_a, new_b
    w.a.handle_timer(w.a.get_timer())
    w.pump(20.0)
    assert w.a.state is State.ESTABLISHED and w.a.request is None


def test_simultaneous_child_rekeys_resolve_to_one_child_each_side():
    """Section 2.8.1: both peers rekey the same child at once; one new SA survives."""
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    (ca,), (cb,) = w.a.children, w.b.children
    assert w.a.rekey_child(ca.spi_in, 1.0)
    assert w.b.rekey_child(cb.spi_in, 1.0)
    w.pump(1.0)
    assert len(w.a.children) == 1 and len(w.b.children) == 1
    (na,), (nb,) = w.a.children, w.b.children
    assert na.spi_in == nb.spi_out and na.spi_out == nb.spi_in
    assert na.spi_in not in (ca.spi_in, cb.spi_in)


def test_child_rekey_with_pfs():
    from nattunnel.esp.suite import AES_GCM_256
    from nattunnel.ike.proposals import EspProposal

    a_cfg, b_cfg = configs()
    for c in (a_cfg, b_cfg):
        c.esp_proposals = (EspProposal(AES_GCM_256, dh=DhGroup.CURVE25519),)
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    old = child_ups(w.events_a)[0]
    seen = []
    w.a.rekey_child(old.spi_in, 1.0)
    outs = w.a.datagrams_to_send()
    req = outs[-1].data
    w.release("a", outs)
    w.pump(1.0, drop=lambda who, data: seen.append((who, data)) and False)
    msg = decode_message(req, sk=w.b._sk_in)
    from nattunnel.ike.message import KE

    assert msg.get(KE) is not None and msg.get(KE).group == DhGroup.CURVE25519
    new_a, new_b = child_ups(w.events_a)[1], child_ups(w.events_b)[1]
    assert_child_pair_works(new_a, new_b)
    assert new_a.keymat_out != old.keymat_out


def test_child_past_its_hard_lifetime_is_deleted_when_rekeys_fail():
    a_cfg, b_cfg = configs()
    a_cfg.child_rekey_time = 100.0
    a_cfg.rekey_jitter = 0.1
    a_cfg.dpd_interval = 0
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    (child,) = w.a.children
    assert child.expire_at == pytest.approx(110.0)
    # the peer stops answering: the rekey at ~95 s goes unanswered
    now = w.a.get_timer()
    while now is not None and now < 110.0 and w.a.state is State.ESTABLISHED:
        w.a.handle_timer(now)
        w.a.datagrams_to_send()
        now = w.a.get_timer()
    assert w.a.state is State.ESTABLISHED  # the rekey is still being retransmitted
    assert now == pytest.approx(110.0)
    w.a.handle_timer(now)
    downs = [e for e in drain(w.a) if isinstance(e, ChildDown)]
    assert [d.spi_in for d in downs] == [child.spi_in]
    assert not w.a.children
