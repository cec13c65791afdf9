"""A child SA the responder refuses (RFC 7296 section 1.2): the IKE SA stays up, the initiator
says why (``ChildRefused``) and asks again with a CREATE_CHILD_SA for a new child SA (section
1.3.1) on its own timer, backing off, until the responder accepts."""

from __future__ import annotations

import ipaddress
import logging
import re
from itertools import pairwise

import pytest

from nattunnel.constants import DhGroup, ExchangeType, NotifyType
from nattunnel.esp.suite import SUITES
from nattunnel.ike.base import State
from nattunnel.ike.config import CHILD_RETRY_BASE, CHILD_RETRY_MAX
from nattunnel.ike.events import ChildRefused, IkeDown, IkeRekeyed
from nattunnel.ike.message import KE, SA, decode_message
from nattunnel.ike.proposals import EspProposal
from tests.support.ike import (
    NET_A,
    Net,
    SaPair,
    assert_child_pair_works,
    child_ups,
    configs,
    up,
)
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)

AES128 = EspProposal(SUITES["aes128gcm16"])
CHACHA = EspProposal(SUITES["chacha20poly1305"])
ELSEWHERE = (ipaddress.ip_network("198.18.200.0/24"),)


def refusals(events: list) -> list[ChildRefused]:
    return [e for e in events if isinstance(e, ChildRefused)]


def test_esp_proposal_mismatch_refused_in_ike_auth_then_created_by_create_child_sa():
    a_cfg, b_cfg = configs()
    a_cfg.esp_proposals = (AES128,)
    b_cfg.esp_proposals = (CHACHA,)  # IKE agrees; ESP does not
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    assert not w.a.children and not child_ups(w.events_a) and not child_ups(w.events_b)
    (ev,) = refusals(w.events_a)
    assert ev.ike is w.a and "NO_PROPOSAL_CHOSEN" in ev.reason and "IKE_AUTH" in ev.reason
    assert ev.retry_at == CHILD_RETRY_BASE
    assert w.a.get_timer() == 10.0  # DPD first; the retry is the SA's own deadline too
    b_cfg.esp_proposals = (CHACHA, AES128)  # the responder's configuration is fixed
    seen: list[bytes] = []
    w.wire.drop = lambda src, dst, data: seen.append(data) or False
    w.wire.advance(CHILD_RETRY_BASE)
    assert w.a.state is State.ESTABLISHED and not any(
        isinstance(e, IkeDown) for e in w.events_a + w.events_b)
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert ca.replaces is None and cb.replaces is None and ca.suite is SUITES["aes128gcm16"]
    assert_child_pair_works(ca, cb)
    assert [c.spi_in for c in w.a.children] == [ca.spi_in]
    # it came through CREATE_CHILD_SA, not through a new IKE SA
    kinds = {decode_message(d).header.exchange_type for d in seen}
    assert ExchangeType.CREATE_CHILD_SA in kinds and ExchangeType.IKE_SA_INIT not in kinds
    assert w.a.child_retry_at is None and len(refusals(w.events_a)) == 1


def test_traffic_selectors_refused_retries_back_off_and_the_ike_sa_stays():
    a_cfg, b_cfg = configs()
    a_cfg.dpd_interval = b_cfg.dpd_interval = 0
    b_cfg.remote_ts = ELSEWHERE
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    (first,) = refusals(w.events_a)
    assert "TS_UNACCEPTABLE" in first.reason and first.retry_at == CHILD_RETRY_BASE
    assert w.a.get_timer() == CHILD_RETRY_BASE
    # each refusal (now of the CREATE_CHILD_SA) doubles the wait, up to the cap
    w.wire.advance(CHILD_RETRY_BASE + 2 * CHILD_RETRY_BASE + 4 * CHILD_RETRY_BASE)
    evs = refusals(w.events_a)
    assert [e.retry_at for e in evs] == [30.0, 90.0, 210.0, 450.0]
    assert all("TS_UNACCEPTABLE in the CREATE_CHILD_SA response" in e.reason for e in evs[1:])
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    assert not w.a.children and not w.b.children
    w.wire.advance(450.0 - w.wire.now + 10 * CHILD_RETRY_MAX)
    gaps = [b.retry_at - a.retry_at for a, b in pairwise(refusals(w.events_a))]
    assert max(gaps) == CHILD_RETRY_MAX
    # the responder now accepts: the next try brings the child up
    b_cfg.remote_ts = (NET_A,)
    n = len(refusals(w.events_a))
    w.wire.advance(CHILD_RETRY_MAX)
    assert len(refusals(w.events_a)) == n
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert_child_pair_works(ca, cb)
    assert w.a.get_timer() is not None and w.a.child_retry_at is None


def test_the_new_child_sa_with_pfs_and_invalid_ke_payload():
    """CREATE_CHILD_SA may carry a key exchange (section 1.3.1): our first proposal's group;
    INVALID_KE_PAYLOAD for another group we offer is answered at once with that group."""
    a_cfg, b_cfg = configs()
    a_cfg.esp_proposals = (EspProposal(SUITES["aes128gcm16"], dh=DhGroup.CURVE25519),
                           EspProposal(SUITES["aes256gcm16"], dh=DhGroup.ECP_256))
    b_cfg.esp_proposals = (CHACHA,)
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert refusals(w.events_a)
    b_cfg.esp_proposals = (EspProposal(SUITES["aes256gcm16"], dh=DhGroup.ECP_256),)
    sent: list[bytes] = []
    w.wire.drop = lambda src, dst, data: sent.append(data) or False
    w.wire.advance(CHILD_RETRY_BASE)
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert ca.suite is SUITES["aes256gcm16"]
    assert_child_pair_works(ca, cb)
    assert len(refusals(w.events_a)) == 1  # INVALID_KE_PAYLOAD is no refusal
    requests = [decode_message(d, sk=w.b._sk_in) for d in sent
                if (h := decode_message(d).header).is_initiator and not h.is_response]
    assert [m.get(KE).group for m in requests if m.get(KE)] == [DhGroup.CURVE25519,
                                                                DhGroup.ECP_256]
    assert all(len(m.get(SA).proposals) == 2 for m in requests if m.get(SA))


@pytest.mark.parametrize("notify", [NotifyType.SINGLE_PAIR_REQUIRED,
                                    NotifyType.INTERNAL_ADDRESS_FAILURE,
                                    NotifyType.FAILED_CP_REQUIRED,
                                    NotifyType.NO_ADDITIONAL_SAS])
def test_every_child_error_in_ike_auth_leaves_the_ike_sa_up(notify, monkeypatch):
    from nattunnel.ike.child import ChildSaExchanges
    from nattunnel.ike.message import Notify

    def refuse(self, msg, ni, nr, ke, replaces=None, *, pfs_allowed=True):
        return [Notify(notify)], None

    monkeypatch.setattr(ChildSaExchanges, "_negotiate_child", refuse)
    a_cfg, b_cfg = configs()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.a.state is State.ESTABLISHED
    (ev,) = refusals(w.events_a)
    assert notify.name in ev.reason


def test_manager_logs_the_refusal_and_the_tunnel_gets_the_child_on_retry(caplog):
    net = Net()
    net.cb.remote_ts = ELSEWHERE
    caplog.set_level(logging.INFO, logger="nattunnel")
    net.a.initiate("b", 0.0)
    net.deliver()
    assert not up(net)
    (sa_a,) = net.a.sas.values()
    assert sa_a.established
    assert any("child SA refused by the peer" in r.getMessage()
               and "TS_UNACCEPTABLE" in r.getMessage() and "asking again in 30 s"
               in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    net.cb.remote_ts = (NET_A,)
    net.wire.advance(CHILD_RETRY_BASE)
    assert up(net)
    assert list(net.a.sas.values()) == [sa_a] and len(sa_a.children) == 1


def test_the_retry_moves_to_the_new_ike_sa_after_an_ike_sa_rekey():
    a_cfg, b_cfg = configs()
    a_cfg.dpd_interval = b_cfg.dpd_interval = 0
    b_cfg.remote_ts = ELSEWHERE
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert refusals(w.events_a) and w.a.child_retry_at == CHILD_RETRY_BASE
    assert w.a.rekey_ike(5.0)
    w.pump(5.0)
    (ra,) = [e for e in w.events_a if isinstance(e, IkeRekeyed)]
    (rb,) = [e for e in w.events_b if isinstance(e, IkeRekeyed)]
    assert ra.old.state is State.DEAD
    w.a, w.b = ra.new, rb.new
    assert w.a.child_retry_at == CHILD_RETRY_BASE and w.a.get_timer() == CHILD_RETRY_BASE
    b_cfg.remote_ts = (NET_A,)
    w.wire.advance(CHILD_RETRY_BASE)
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert ca.ike is ra.new and cb.ike is rb.new
    assert_child_pair_works(ca, cb)


def test_the_peer_may_not_rekey_the_ike_sa_while_we_create_a_child():
    """Section 2.25.2: TEMPORARY_FAILURE while creating a child SA of this IKE SA."""
    a_cfg, b_cfg = configs()
    b_cfg.remote_ts = ELSEWHERE
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    b_cfg.remote_ts = (NET_A,)
    assert w.a.create_child(1.0)
    ours = w.a.datagrams_to_send()
    assert w.b.rekey_ike(1.0)
    w.pump(1.0)  # B's rekey reaches A while A's CREATE_CHILD_SA is out
    assert not [e for e in w.events_a if isinstance(e, IkeRekeyed)]
    w.release("a", ours)
    w.pump(1.0)
    assert len(child_ups(w.events_a)) == 1 and w.a.state is State.ESTABLISHED


@pytest.mark.root
def test_charon_refuses_the_child_then_accepts_the_create_child_sa(lab, tmp_path):
    """Against strongSwan in the NAT lab: charon (responder on B) refuses the child SA with
    TS_UNACCEPTABLE while its inner address is missing; once the address is there,
    nattunnel's CREATE_CHILD_SA 30 s later brings the child up in the same IKE SA, and
    ping goes through."""
    from nattunnel.lab.strongswan import Charon, SwanConn
    from tests.interop.test_interop_strongswan import (
        ID,
        INNER,
        PUBLIC_B,
        ping,
        require_strongswan,
        setup_keys,
        start_nattunnel,
        wait,
    )

    require_strongswan()
    kw = setup_keys(tmp_path, "psk")
    conn = SwanConn(name="c", local_addrs=PUBLIC_B, remote_addrs="%any", local_id=ID["b"],
                    remote_id=ID["a"], local_ts=f"{INNER['b']}/32",
                    remote_ts=f"{INNER['a']}/32", **kw)
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn)  # no inner address
    nt = start_nattunnel(lab, "a", tmp_path, "psk", initiate=True)
    try:
        assert wait(lambda: "child SA refused by the peer: TS_UNACCEPTABLE" in nt.log(),
                    timeout=10), nt.log() + charon.log()[-3000:]
        (sa,) = charon.list_sas()
        assert sa.state == "ESTABLISHED" and not sa.children
        ike_spi = sa.spi_i
        lab.exec("b", "ip", "addr", "add", f"{INNER['b']}/32", "dev", "lo")
        assert wait(lambda: any(c.state == "INSTALLED" for s in charon.list_sas()
                                for c in s.children), timeout=40), \
            nt.log() + charon.log()[-3000:]
        (sa,) = charon.list_sas()
        assert sa.spi_i == ike_spi  # the same IKE SA
        assert re.search(r"generating CREATE_CHILD_SA request \d+ \[ SK\{SA Ni TSi TSr\} \]",
                         nt.log()), nt.log()
        assert "child SA up" in nt.log()
        assert ping(lab, "a", "b") and ping(lab, "b", "a")
        assert "Traceback" not in nt.log()
    finally:
        charon.stop()
        lab.stop(nt.proc)
