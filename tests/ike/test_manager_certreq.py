"""The IKE manager as a responder: its IKE_SA_INIT response's CERTREQ names the CAs of every
certificate peer (it cannot know yet which peer the initiator is), kept up to date as peers
come and go; and its IKE messages counted by exchange type (``IkeManager.exchanges``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nattunnel.constants import ME_CONNECT, ExchangeType
from nattunnel.ike.base import State
from nattunnel.ike.certs import TrustStore, spki_sha1
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import Outgoing
from nattunnel.ike.exchanges import ExchangeCounts, certreq_union
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.message import CertReq, Header, decode_message, encode_message
from nattunnel.ike.sa import IkeSa
from nattunnel.tunnel.core import Tunnel
from tests.ike.test_certs import cert_configs, pki_of
from tests.support.ike import A_ADDR, A_SEEN, B_ADDR, NET_A, NET_B, ManagerNode
from tests.support.wire import FakeWire


def _psk(name: str) -> IkeConfig:
    return IkeConfig(name, Identity.parse("psk.example"), Identity.parse("gw.example"),
                     auth="psk", psk=b"k" * 32, local_ts=(NET_B,), remote_ts=(NET_A,))


def _init_response_certreq(b: IkeManager, a_cfg: IkeConfig) -> CertReq | None:
    a = IkeSa(a_cfg, initiator=True, local=A_ADDR, remote=B_ADDR, now=0.0)
    a.start(0.0)
    (req,) = a.datagrams_to_send()
    b.receive_datagram(req.data, A_SEEN, 0.0, natt=False, local=B_ADDR)
    (resp,) = b.datagrams_to_send()
    return decode_message(resp.data).get(CertReq)


def test_certreq_names_every_certificate_peers_ca(tmp_path: Path) -> None:
    one, two = pki_of(tmp_path / "one", "ecdsa", 256), pki_of(tmp_path / "two", "ecdsa", 256)
    a_cfg, b_one = cert_configs(one)
    _, b_two = cert_configs(two)
    b_two = replace(b_two, name="two")
    b = IkeManager(Tunnel())
    b.add_peer(IkePeer(_psk("psk"), initiate=False, remote=None), 0.0)
    assert _init_response_certreq(b, a_cfg) is None  # no certificate peer: no CERTREQ
    b.add_peer(IkePeer(b_one, initiate=False, remote=None), 0.0)
    b.add_peer(IkePeer(b_two, initiate=False, remote=None), 0.0)
    creq = _init_response_certreq(b, a_cfg)
    assert creq is not None
    assert sorted(creq.hashes()) == sorted([spki_sha1(one.root.cert), spki_sha1(two.root.cert)])
    b.remove_peer("a", 0.0)  # b_one is the peer "a"
    creq = _init_response_certreq(b, a_cfg)
    assert creq is not None and creq.hashes() == [spki_sha1(two.root.cert)]
    b.remove_peer("two", 0.0)
    assert _init_response_certreq(b, a_cfg) is None


def test_certreq_union_names_a_shared_ca_once(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    a_cfg, b_cfg = cert_configs(pki)
    union = certreq_union([a_cfg, b_cfg, _psk("x")])
    assert isinstance(union, TrustStore)
    assert union.certreq_hashes() == spki_sha1(pki.root.cert)
    assert certreq_union([_psk("x")]) is None


def test_exchange_counts_of_a_handshake_and_a_delete(tmp_path: Path) -> None:
    """Both managers count the IKE_SA_INIT, IKE_AUTH and INFORMATIONAL (Delete) messages
    they received and sent, one each way per exchange here."""
    pki = pki_of(tmp_path, "ecdsa", 256)
    a_cfg, b_cfg = cert_configs(pki)
    wire = FakeWire()
    ta, tb = Tunnel(), Tunnel()
    ta.add_peer("b", [NET_B])
    tb.add_peer("a", [NET_A])
    a, b = IkeManager(ta), IkeManager(tb)
    a.add_peer(IkePeer(a_cfg, initiate=False, remote=B_ADDR, local=A_ADDR), 0.0)
    b.add_peer(IkePeer(b_cfg, initiate=False, remote=None), 0.0)
    wire.attach(ManagerNode(a, A_ADDR[0], A_SEEN[0]), [(A_SEEN[0], 500), (A_SEEN[0], 4500)])
    wire.attach(ManagerNode(b, B_ADDR[0], B_ADDR[0]), [(B_ADDR[0], 500), (B_ADDR[0], 4500)])
    a.initiate("b", 0.0)
    wire.run(50)
    assert [sa.state for sa in b.sas.values()] == [State.ESTABLISHED]
    one = {"IKE_SA_INIT": 1, "IKE_AUTH": 1}
    assert a.exchanges.as_dict() == b.exchanges.as_dict() == {"rx": one, "tx": one}
    a.terminate("b", 1.0)
    wire.now = 1.0
    wire.run(50)
    both = {**one, "INFORMATIONAL": 1}
    assert a.exchanges.as_dict() == b.exchanges.as_dict() == {"rx": both, "tx": both}


def test_exchange_counts_name_me_connect_and_bound_the_rest() -> None:
    """Unknown exchange types count as ``other``; sent messages shorter than a header are
    not counted (received ones never get here: the manager drops them before)."""
    counts = ExchangeCounts()
    for exchange in (ME_CONNECT, 200, 201, ExchangeType.CREATE_CHILD_SA):
        msg = encode_message(Header.make(exchange, b"\x01" * 8, initiator=True), [])
        counts.received(msg)
    counts.sent([Outgoing(msg, A_ADDR, True), Outgoing(b"\x00" * 10, A_ADDR, True)])
    assert counts.as_dict() == {"rx": {"CREATE_CHILD_SA": 1, "ME_CONNECT": 1, "other": 2},
                                "tx": {"CREATE_CHILD_SA": 1}}
