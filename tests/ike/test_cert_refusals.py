"""Certificate refusals counted by cause (``IkeManager.cert_refusals``, ike/certauth.py's
``count_refusal``): two IKE managers on the fake wire, certificates made by
nattunnel.lab.pki, one handshake per refusal (on the side that refuses it), never a count
for a refusal that is no certificate's; and the counts in ``nattunnel show`` (JSON and text)
and the metrics (``nattunnel_ike_cert_refusals_total{cause=...}``)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from nattunnel.app import Controller
from nattunnel.constants import CertEncoding
from nattunnel.control.metrics import StatusCollector
from nattunnel.control.status import snapshot
from nattunnel.control.text import render
from nattunnel.ike import initial
from nattunnel.ike.base import State
from nattunnel.ike.certauth import CERT_REFUSAL_CAUSES, count_refusal
from nattunnel.ike.certs import CertProblem, TrustStore
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.message import Cert, Payload
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.tunnel.core import Tunnel
from tests.ike.test_certs import cert_configs, pki_of
from tests.support.ike import A_ADDR, A_SEEN, B_ADDR, NET_A, NET_B, ManagerNode
from tests.support.wire import FakeWire

ZERO = dict.fromkeys(CERT_REFUSAL_CAUSES, 0)


def gateway(b_cfg: IkeConfig) -> IkeManager:
    tb = Tunnel()
    tb.add_peer("a", [NET_A])
    b = IkeManager(tb)
    b.add_peer(IkePeer(b_cfg, initiate=False, remote=None), 0.0)
    return b


def handshake(a_cfg: IkeConfig, b: IkeManager, now: float = 0.0) -> IkeManager:
    """A new client manager with ``a_cfg`` initiates to ``b`` on the fake wire."""
    ta = Tunnel()
    ta.add_peer("b", [NET_B])
    a = IkeManager(ta)
    a.add_peer(IkePeer(a_cfg, initiate=False, remote=B_ADDR, local=A_ADDR), now)
    wire = FakeWire()
    wire.now = now
    wire.attach(ManagerNode(a, A_ADDR[0], A_SEEN[0]), [(A_SEEN[0], 500), (A_SEEN[0], 4500)])
    wire.attach(ManagerNode(b, B_ADDR[0], B_ADDR[0]), [(B_ADDR[0], 500), (B_ADDR[0], 4500)])
    a.initiate("b", now)
    wire.run(50)
    return a


def only(cause: str) -> dict[str, int]:
    return ZERO | {cause: 1}


@pytest.mark.parametrize(("leaf", "ident", "cause"), [
    ("expired", "old.example", "expired"),
    ("revoked", "bad.example", "revoked"),
    ("mail-only", "C=CH, O=strongSwan, CN=signer", "key_usage"),
])
def test_the_gateway_counts_the_clients_bad_certificate(tmp_path: Path, leaf: str,
                                                        ident: str, cause: str) -> None:
    a_cfg, b_cfg = cert_configs(pki_of(tmp_path, "ecdsa", 256), a_leaf=leaf, a_id=ident)
    b = gateway(b_cfg)
    a = handshake(a_cfg, b)
    assert b.cert_refusals == only(cause)
    assert a.cert_refusals == ZERO  # A was refused (a notify): not a refusal of its own
    assert b.stats()["cert_refusals"] == only(cause)


def test_does_not_chain_not_yet_valid_and_no_certificate(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    other = pki_of(tmp_path / "other", "ecdsa", 256)
    a_cfg, b_cfg = cert_configs(pki)
    b = gateway(replace(b_cfg, trust=TrustStore((other.root.cert,))))
    handshake(a_cfg, b)
    assert b.cert_refusals == only("does_not_chain")

    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=400)
    b = gateway(replace(b_cfg, trust=replace(b_cfg.trust, clock=lambda: past)))
    handshake(a_cfg, b)
    assert b.cert_refusals == only("not_yet_valid")

    b = gateway(b_cfg)
    handshake(replace(a_cfg, certs=()), b)
    assert b.cert_refusals == only("no_certificate")


def test_not_a_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_cfg, b_cfg = cert_configs(pki_of(tmp_path, "ecdsa", 256))
    real = initial.cert_payloads

    def junk_from_a(config: IkeConfig) -> list[Payload]:
        if config is a_cfg:
            return [Cert(CertEncoding.X509_SIGNATURE, b"\x30\x03\x02\x01\x00")]
        return real(config)

    monkeypatch.setattr(initial, "cert_payloads", junk_from_a)
    b = gateway(b_cfg)
    handshake(a_cfg, b)
    assert b.cert_refusals == only("not_a_certificate")


def test_the_client_counts_the_gateways_refusals(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    a_cfg, b_cfg = cert_configs(pki, b_id="other.example")  # not in B's certificate
    a_cfg.remote_id = Identity.parse("other.example")
    a = handshake(a_cfg, gateway(b_cfg))
    assert a.cert_refusals == only("identity_mismatch")
    a_cfg, b_cfg = cert_configs(pki, b_leaf="expired", b_id="old.example")
    a = handshake(a_cfg, gateway(b_cfg))
    assert a.cert_refusals == only("expired")


def test_refusals_that_are_no_certificates_are_not_counted(tmp_path: Path) -> None:
    psk_a = IkeConfig("b", Identity.parse("client.example"), Identity.parse("gw.example"),
                      auth="psk", psk=b"a" * 32, local_ts=(NET_A,), remote_ts=(NET_B,))
    psk_b = IkeConfig("a", Identity.parse("gw.example"), Identity.parse("client.example"),
                      auth="psk", psk=b"b" * 32, local_ts=(NET_B,), remote_ts=(NET_A,))
    b = gateway(psk_b)
    a = handshake(psk_a, b)
    assert not any(sa.state is State.ESTABLISHED for sa in b.sas.values())
    assert "pre-shared key" in b.last_error["a"]
    assert b.cert_refusals == a.cert_refusals == ZERO
    # a refusal noted by another verification is not taken for this SA's cause
    a_cfg, _ = cert_configs(pki_of(tmp_path, "ecdsa", 256))
    assert a_cfg.trust is not None
    a_cfg.trust.refused.append((CertProblem.REVOKED, "revoked: certificate X was revoked"))
    counts = dict(ZERO)
    assert not count_refusal(counts, a_cfg, "authentication of Y failed: the signature")
    assert counts == ZERO and not a_cfg.trust.refused


def test_refusals_in_show_and_the_metrics(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    good_a, b_cfg = cert_configs(pki)
    b = gateway(b_cfg)  # serving the good client "a", and "bad" and "old" beside it
    clients = {}
    for n, (name, leaf, ident) in enumerate([("bad", "revoked", "bad.example"),
                                             ("old", "expired", "old.example")], 3):
        net = ipaddress.ip_network(f"198.18.100.{n}/32")
        a_cfg, their_b = cert_configs(pki, a_leaf=leaf, a_id=ident)
        a_cfg.local_ts = (net,)
        b.tunnel.add_peer(name, [net])
        b.add_peer(IkePeer(replace(their_b, name=name, remote_ts=(net,)), initiate=False,
                           remote=None), 0.0)
        clients[name] = a_cfg
    for i, name in enumerate(["bad", "bad", "old"]):
        handshake(clients[name], b, now=float(i))
    handshake(good_a, b, now=5.0)  # and a good one still comes up
    assert [sa.state for sa in b.sas.values()] == [State.ESTABLISHED]
    endpoint = Endpoint(b.tunnel, InProcessInterface(), [],
                        control=Controller(b.tunnel, b, ike_port=500))
    status = snapshot(endpoint, b, 6.0, started=0.0, version="t")
    assert status["ike"]["cert_refusals"] == ZERO | {"revoked": 2, "expired": 1}
    assert "  certificates refused: expired 1, revoked 2\n" in render(status)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(lambda: status, lambda: {}))
    got = {s.labels["cause"]: s.value
           for fam in text_string_to_metric_families(generate_latest(reg).decode())
           for s in fam.samples if s.name == "nattunnel_ike_cert_refusals_total"}
    assert got == {c: float(n) for c, n in (ZERO | {"revoked": 2, "expired": 1}).items()}
