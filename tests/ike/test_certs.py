"""Certificates in IKE_AUTH (RFC 7296 CERT/CERTREQ, RFC 7427 signatures): every key type both
ways, an intermediate CA, and each refusal (does not chain, identity mismatch, expired,
revoked, not a certificate, no certificate) naming itself on the side that refuses, with the
responder's manager serving its other peers meanwhile. Certificates are made in the test
(nattunnel.lab.pki)."""

from __future__ import annotations

import datetime
import ipaddress
import random
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from nattunnel.constants import CertEncoding, HashAlgorithm, IdType, NotifyType
from nattunnel.ike import crypto as kc
from nattunnel.ike import initial
from nattunnel.ike.base import State
from nattunnel.ike.certs import (
    CertError,
    CertProblem,
    TrustStore,
    canonical_dn,
    format_dn,
    identity_matches,
    load_certificates,
    load_crls,
    load_trust,
    parse_dn,
    spki_sha1,
)
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import IkeDown, IkeUp
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.message import (
    Auth,
    Cert,
    CertReq,
    Message,
    Payload,
    decode_message,
    decode_payloads,
    encode_payloads,
)
from nattunnel.ike.sa import IkeSa
from nattunnel.keys import KeyFileError, load_private_key
from nattunnel.lab.pki import Leaf, Pki, issue, make_chain, make_key
from nattunnel.tunnel.core import Tunnel
from tests.support.ike import (
    A_ADDR,
    A_SEEN,
    B_ADDR,
    NET_A,
    NET_B,
    ManagerNode,
    SaPair,
    child_ups,
)
from tests.support.wire import FakeWire

GW_DN = "C=CH, O=strongSwan, CN=gw.example"
CLIENT_DN = "C=CH, O=strongSwan, CN=client.example"
LEAVES = {
    "gw": Leaf(GW_DN, dns=("gw.example",), ips=("198.18.0.2",)),
    "client": Leaf(CLIENT_DN, dns=("client.example",), emails=("client@example.org",)),
    "expired": Leaf("C=CH, O=strongSwan, CN=old.example", dns=("old.example",), expired=True),
    "revoked": Leaf("C=CH, O=strongSwan, CN=bad.example", dns=("bad.example",), revoked=True),
    "mail-only": Leaf("C=CH, O=strongSwan, CN=signer", eku=(
        x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION,)),
}


def pki_of(tmp: Path, kind: str, bits: int | None = None, intermediates: int = 1) -> Pki:
    return make_chain(tmp / f"{kind}{bits}", kind=kind, bits=bits,
                      intermediates=intermediates, leaves=LEAVES)


def cert_configs(pki: Pki, a_leaf: str = "client", b_leaf: str = "gw", *,
                 a_id: str = CLIENT_DN, b_id: str = GW_DN, pss: bool = False
                 ) -> tuple[IkeConfig, IkeConfig]:
    """A (the client, initiator) and B (the gateway) authenticating each other with
    certificates from ``pki``; both trust its root and take its CRL."""
    trust = TrustStore((pki.root.cert,), (pki.crl,) if pki.crl else ())
    inter = tuple(i.cert for i in reversed(pki.intermediates))

    def side(name: str, leaf: str, me: str, peer: str, mine: tuple[x509.Certificate, ...],
             local: tuple, remote: tuple) -> IkeConfig:
        issued = pki.leaf[leaf]
        return IkeConfig(name, Identity.parse(me), Identity.parse(peer), auth="pubkey",
                         private_key=issued.key, certs=(issued.cert, *mine), trust=trust,
                         local_ts=local, remote_ts=remote, rsa_pss=pss, dpd_interval=0)

    return (side("b", a_leaf, a_id, b_id, inter, (NET_A,), (NET_B,)),
            side("a", b_leaf, b_id, a_id, inter, (NET_B,), (NET_A,)))


def run(a_cfg: IkeConfig, b_cfg: IkeConfig) -> SaPair:
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    return w


def down_reason(events: list) -> str:
    return next(e.reason for e in events if isinstance(e, IkeDown))


@pytest.mark.parametrize(("kind", "bits"), [("ecdsa", 256), ("ecdsa", 384), ("rsa", 2048),
                                            ("rsa-pss", 2048), ("ed25519", None)])
def test_each_key_type_both_ways_through_an_intermediate(tmp_path: Path, kind: str,
                                                         bits: int | None) -> None:
    pki = pki_of(tmp_path, kind, bits)
    a_cfg, b_cfg = cert_configs(pki, pss=kind == "rsa-pss")
    w = run(a_cfg, b_cfg)
    assert w.a.state is State.ESTABLISHED and w.b is not None
    assert w.b.state is State.ESTABLISHED
    assert any(isinstance(e, IkeUp) for e in w.events_a)
    assert child_ups(w.events_a) and child_ups(w.events_b)


def test_identities_fqdn_ip_email_and_dn(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256, intermediates=0)
    for a_id, b_id in (("client.example", "gw.example"), ("client@example.org", "198.18.0.2"),
                       ("@@client@example.org", "@gw.example"), (CLIENT_DN, GW_DN)):
        w = run(*cert_configs(pki, a_id=a_id, b_id=b_id))
        assert w.a.state is State.ESTABLISHED, (a_id, b_id, w.a.dead_reason)


def test_identity_mismatch_refused_with_the_names_in_the_certificate(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    # B claims to be other.example, which its certificate does not hold
    a_cfg, b_cfg = cert_configs(pki, b_id="other.example")
    a_cfg.remote_id = Identity.parse("other.example")
    w = run(a_cfg, b_cfg)
    assert w.a.state is State.DEAD
    reason = down_reason(w.events_a)
    assert "identity mismatch" in reason and "other.example" in reason
    assert "gw.example" in reason  # what the certificate names


@pytest.mark.parametrize(("leaf", "side", "words"), [
    ("expired", "a", "expired: certificate \"C=CH, O=strongSwan, CN=old.example\""),
    ("revoked", "a", "revoked: certificate \"C=CH, O=strongSwan, CN=bad.example\""),
    ("expired", "b", "expired"),
    ("revoked", "b", "was revoked at"),
    ("mail-only", "b", "key usage"),
])
def test_expired_revoked_and_wrong_eku_refused(tmp_path: Path, leaf: str, side: str,
                                               words: str) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    dns = {"expired": "old.example", "revoked": "bad.example", "mail-only": ""}[leaf]
    ident = dns or "C=CH, O=strongSwan, CN=signer"
    if side == "a":  # the client's certificate is bad: the gateway refuses it
        a_cfg, b_cfg = cert_configs(pki, a_leaf=leaf, a_id=ident)
        w = run(a_cfg, b_cfg)
        assert w.b is not None and w.b.state is State.DEAD
        assert words in down_reason(w.events_b)
        assert "AUTHENTICATION_FAILED" in down_reason(w.events_a)
    else:  # the gateway's is: the client refuses it
        a_cfg, b_cfg = cert_configs(pki, b_leaf=leaf, b_id=ident)
        w = run(a_cfg, b_cfg)
        assert w.a.state is State.DEAD
        assert words in down_reason(w.events_a)


def test_does_not_chain_to_our_ca(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    other = pki_of(tmp_path / "other", "ecdsa", 256)
    a_cfg, b_cfg = cert_configs(pki)
    b_cfg.trust = TrustStore((other.root.cert,))
    w = run(a_cfg, b_cfg)
    assert w.b is not None and w.b.state is State.DEAD
    assert "does not chain: certificate \"C=CH, O=strongSwan, CN=client.example\"" in \
        down_reason(w.events_b)


def test_missing_intermediate_does_not_chain(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "rsa", 2048)
    a_cfg, b_cfg = cert_configs(pki)
    a_cfg.certs = a_cfg.certs[:1]  # the client leaves its intermediate CA out
    w = run(a_cfg, b_cfg)
    assert "does not chain" in down_reason(w.events_b)


def test_not_a_certificate_and_no_certificate(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    a_cfg, b_cfg = cert_configs(pki)
    real = initial.cert_payloads

    def junk_from_a(config: IkeConfig) -> list[Payload]:
        if config is a_cfg:  # a CERT payload whose octets are not a certificate
            return [Cert(CertEncoding.X509_SIGNATURE, b"\x30\x03\x02\x01\x00")]
        return real(config)

    monkeypatch.setattr(initial, "cert_payloads", junk_from_a)
    w = run(a_cfg, b_cfg)
    assert "not a certificate: the CERT payload is not an X.509 certificate" in \
        down_reason(w.events_b)
    many = [Cert(CertEncoding.X509_SIGNATURE, bytes(40))] * 20
    monkeypatch.setattr(initial, "cert_payloads",
                        lambda config: many if config is a_cfg else real(config))
    w = run(a_cfg, b_cfg)
    assert "more than 9 certificates" in down_reason(w.events_b)
    monkeypatch.setattr(initial, "cert_payloads", real)
    a_cfg.certs = ()
    w = run(a_cfg, b_cfg)
    assert "no certificate: the peer sent no certificate" in down_reason(w.events_b)


def test_gateway_keeps_serving_other_peers(tmp_path: Path) -> None:
    """B's manager has two certificate peers; A first comes as the revoked one (refused,
    logged by B with the reason), then as the good one, which comes up on the same manager."""
    pki = pki_of(tmp_path, "ecdsa", 256)
    good_a, good_b = cert_configs(pki)
    bad_a, bad_b = cert_configs(pki, a_leaf="revoked", a_id="bad.example")
    net_c = ipaddress.ip_network("198.18.100.3/32")
    bad_b.name, bad_b.remote_ts, bad_a.local_ts = "bad", (net_c,), (net_c,)
    wire = FakeWire()
    tb = Tunnel()
    tb.add_peer("a", [NET_A])
    tb.add_peer("bad", [net_c])
    b = IkeManager(tb)
    b.add_peer(IkePeer(good_b, initiate=False, remote=None), 0)
    b.add_peer(IkePeer(bad_b, initiate=False, remote=None), 0)
    node_b = ManagerNode(b, B_ADDR[0], B_ADDR[0])
    wire.attach(node_b, [(B_ADDR[0], 500), (B_ADDR[0], 4500)])
    for now, cfg in ((0.0, bad_a), (1.0, good_a)):
        ta = Tunnel()
        ta.add_peer("b", [NET_B])
        a = IkeManager(ta)
        a.add_peer(IkePeer(cfg, initiate=False, remote=B_ADDR, local=A_ADDR), now)
        node_a = ManagerNode(a, A_ADDR[0], A_SEEN[0])
        wire.attach(node_a, [(A_SEEN[0], 500), (A_SEEN[0], 4500)])
        a.initiate("b", now)
        wire.now = now
        wire.run(50)
    up = [sa for sa in b.sas.values() if sa.state is State.ESTABLISHED]
    assert [sa.name for sa in up] == ["a"]
    assert "revoked" in b.last_error["bad"]
    assert b.counters["errors"] == 0


# --- the pieces ----------------------------------------------------------------------------
def test_dn_as_strongswan_writes_it() -> None:
    name = parse_dn("C=CH, O=strongSwan, OU=a\\, b, CN=gw.example, E=gw@example.org")
    assert format_dn(name) == "C=CH, O=strongSwan, OU=a\\, b, CN=gw.example, E=gw@example.org" \
        or format_dn(name).startswith("C=CH, O=strongSwan, OU=a")
    assert parse_dn("/C=CH/O=strongSwan/CN=gw") == parse_dn("C=CH, O=strongSwan, CN=gw")
    ident = Identity.parse(GW_DN)
    assert ident.id_type == IdType.DER_ASN1_DN and str(ident) == GW_DN
    assert Identity.parse(str(ident)) == ident
    with pytest.raises(ValueError, match="not a distinguished name"):
        parse_dn("C=CH, , CN=x")
    with pytest.raises(ValueError, match="does not know among C, HELLO"):
        parse_dn("C=CH, hello=x")
    assert parse_dn("c=CH, cn=x, emailAddress=a@b") == parse_dn("C=CH, CN=x, E=a@b")
    odd = parse_dn("/C=CH/O=a,b/CN=z")  # OpenSSL's form: a comma is part of the value
    assert parse_dn(format_dn(odd)) == odd and format_dn(odd) == "C=CH, O=a\\,b, CN=z"
    # one name, other string types (PrintableString vs UTF8String): one identity
    printable = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "gw",
                                              x509.name._ASN1Type.PrintableString)])
    assert canonical_dn(printable) == canonical_dn(parse_dn("CN=gw"))


def test_identity_matches_each_type(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256, intermediates=0)
    gw, client = pki.leaf["gw"].cert, pki.leaf["client"].cert
    assert identity_matches(IdType.FQDN, b"GW.example", gw)
    assert not identity_matches(IdType.FQDN, b"client.example", gw)
    assert identity_matches(IdType.IPV4_ADDR, bytes([198, 18, 0, 2]), gw)
    assert identity_matches(IdType.RFC822_ADDR, b"client@example.org", client)
    assert identity_matches(IdType.DER_ASN1_DN, gw.subject.public_bytes(), gw)
    assert not identity_matches(IdType.KEY_ID, b"gw", gw)


def test_trust_store_problems(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 256)
    trust = load_trust([pki.root.cert_path], [pki.crl_path])
    inter = [i.cert for i in pki.intermediates]
    assert len(trust.verify(pki.leaf["gw"].cert, inter)) == 3
    for leaf, problem in (("expired", CertProblem.EXPIRED), ("revoked", CertProblem.REVOKED),
                          ("mail-only", CertProblem.KEY_USAGE)):
        with pytest.raises(CertError) as e:
            trust.verify(pki.leaf[leaf].cert, inter)
        assert e.value.kind is problem
    with pytest.raises(CertError) as e:
        trust.verify(pki.leaf["gw"].cert, [])
    assert e.value.kind is CertProblem.DOES_NOT_CHAIN
    # the clock decides: a year and a day on, the good certificate has expired
    later = replace(trust, clock=lambda: datetime.datetime.now(datetime.UTC)
                    + datetime.timedelta(days=367))
    with pytest.raises(CertError, match="expired"):
        later.verify(pki.leaf["gw"].cert, inter)
    # a CA certificate as an end entity
    with pytest.raises(CertError, match="does not allow digital signatures"):
        trust.verify(pki.intermediates[0].cert, [])
    assert trust.certreq_hashes() == spki_sha1(pki.root.cert)
    assert trust.knows([spki_sha1(pki.root.cert)]) and not trust.knows([bytes(20)])


def test_files(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "rsa", 2048)
    assert len(load_certificates(pki.chain_path("gw"))) == 2
    der = tmp_path / "gw.der"
    der.write_bytes(pki.leaf["gw"].cert.public_bytes(serialization.Encoding.DER))
    assert load_certificates(der) == [pki.leaf["gw"].cert]
    assert len(load_crls(pki.crl_path)) == 1
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    with pytest.raises(ValueError, match="is not a certificate"):
        load_certificates(junk)
    with pytest.raises(ValueError, match="holds a private key"):
        load_certificates(pki.leaf["gw"].key_path)
    with pytest.raises(ValueError, match="is not a CA certificate"):
        load_trust([pki.leaf["gw"].cert_path])
    with pytest.raises(ValueError, match="no such certificate file"):
        load_certificates(tmp_path / "nope.pem")


def test_private_keys_of_each_type_and_the_0600_rule(tmp_path: Path) -> None:
    pki = pki_of(tmp_path, "ecdsa", 384, intermediates=0)
    key = load_private_key(pki.leaf["gw"].key_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == 384
    rsa_key = make_key("rsa", 2048)
    pkcs1 = tmp_path / "rsa.key"
    pkcs1.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.TraditionalOpenSSL,
                                            serialization.NoEncryption()))
    pkcs1.chmod(0o600)
    assert isinstance(load_private_key(pkcs1), rsa.RSAPrivateKey)
    pkcs1.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(pkcs1)
    small = tmp_path / "small.key"
    small.write_bytes(rsa.generate_private_key(65537, 1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    small.chmod(0o600)
    with pytest.raises(KeyFileError, match="RSA-1024"):
        load_private_key(small)


@pytest.mark.parametrize("kind", ["ecdsa", "rsa", "rsa-pss", "ed25519"])
def test_signature_schemes(kind: str) -> None:
    key = make_key(kind, 384 if kind == "ecdsa" else None)
    octets = b"signed octets"
    hashes = frozenset({HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384})
    data = kc.signature_auth(key, octets, hashes, rsa_pss=kind == "rsa-pss")
    scheme = kc.choose_scheme(key, hashes, rsa_pss=kind == "rsa-pss")
    assert data[1:1 + data[0]] == scheme.algorithm_id
    if kind == "ecdsa":
        assert scheme.name == "ecdsa-with-sha384"  # P-384's own hash
    assert kc.signature_verify(key.public_key(), data, octets) is None
    assert "does not verify" in (kc.signature_verify(key.public_key(), data, octets + b"x")
                                 or "")
    other = make_key("ecdsa")
    assert kc.signature_verify(other.public_key(), data, octets) is not None
    assert "unsupported" in (kc.signature_verify(key.public_key(), b"\x02\x30\x00", octets)
                             or "")


def test_rsassa_pss_algorithm_identifier_is_rfc_7427s() -> None:
    # RFC 7427 appendix A.4.3's RSASSA-PSS with SHA-256 (as strongSwan sends it)
    pss = next(s for s in kc.SCHEMES if s.name == "rsassa-pss-sha256")
    assert pss.algorithm_id.hex() == (
        "3041" "06092a864886f70d01010a" "3034" "a00f300d06096086480165030402010500"
        "a11c301a06092a864886f70d010108300d06096086480165030402010500" "a203020120")


def test_cert_and_certreq_payloads() -> None:
    first, body = encode_payloads([Cert(CertEncoding.X509_SIGNATURE, b"\x30\x00"),
                                   CertReq(CertEncoding.X509_SIGNATURE, bytes(40))])
    cert, req = decode_payloads(first, body)
    assert isinstance(cert, Cert) and cert.data == b"\x30\x00"
    assert isinstance(req, CertReq) and req.hashes() == [bytes(20), bytes(20)]
    with pytest.raises(ValueError):
        CertReq(CertEncoding.X509_SIGNATURE, bytes(21)).hashes()


def test_self_signed_issue_helper(tmp_path: Path) -> None:
    ca = issue("C=CH, CN=ca", make_key("ed25519"), ca=True)
    leaf = issue("C=CH, CN=leaf", make_key("ecdsa"), ca, dns=("leaf",))
    assert TrustStore((ca.cert,)).verify(leaf.cert, []) == [leaf.cert, ca.cert]


def test_certreq_names_our_cas_both_ways(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The initiator's IKE_AUTH request carries a CERTREQ with the SHA-1 of its CA's
    SubjectPublicKeyInfo; a responder given its CAs puts one in the IKE_SA_INIT response,
    with SIGNATURE_HASH_ALGORITHMS listing every hash we take."""
    pki = pki_of(tmp_path, "ecdsa", 256)
    a_cfg, b_cfg = cert_configs(pki)
    assert b_cfg.trust is not None
    asked: list[list[bytes]] = []
    real = initial.verify_peer

    def watch(config: IkeConfig, auth: Auth, octets: bytes, peer_id: Identity,
              msg: Message) -> str | None:
        req = msg.get(CertReq)
        asked.append(req.hashes() if req is not None else [])
        return real(config, auth, octets, peer_id, msg)

    monkeypatch.setattr(initial, "verify_peer", watch)
    w = run(a_cfg, b_cfg)
    assert w.a.state is State.ESTABLISHED
    assert asked[0] == [spki_sha1(pki.root.cert)]  # A's request, checked by B
    a = IkeSa(a_cfg, initiator=True, local=A_ADDR, remote=B_ADDR, now=0.0)
    a.start(0.0)
    (req,) = a.datagrams_to_send()
    b = IkeSa(None, initiator=False, local=B_ADDR, remote=A_SEEN, now=0.0)
    b.respond_init(decode_message(req.data), req.data, 0.0, b_cfg.ike_proposals,
                   certreq=b_cfg.trust)
    (resp,) = b.datagrams_to_send()
    answer = decode_message(resp.data)
    creq = answer.get(CertReq)
    assert creq is not None and creq.hashes() == [spki_sha1(pki.root.cert)]
    sha = answer.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    assert sha is not None and set(sha.hash_algorithms()) == set(kc.SIGNATURE_HASHES)


class _Payloads:
    """Just what ``verify_peer`` and ``peer_identity`` read of a message."""

    def __init__(self, certs: list[Cert]) -> None:
        self.certs = certs

    def get_all(self, kind: type) -> list[Cert]:
        return self.certs


def test_mutated_certificates_are_refused_never_raised(tmp_path: Path) -> None:
    """A peer's CERT payloads mutated at random: each is refused with a reason (most as not a
    certificate, some as not chaining), none raises; ``cryptography`` parses parts of a
    certificate lazily, so the refusal must come from wherever the damage is found."""
    pki = pki_of(tmp_path, "ecdsa", 256, intermediates=0)
    _, b_cfg = cert_configs(pki)
    der = pki.leaf["client"].cert.public_bytes(serialization.Encoding.DER)
    rng = random.Random(7)
    kinds: set[str] = set()
    for _ in range(1500):
        data = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.1:
            data = data[:rng.randrange(len(data))]
        msg = _Payloads([Cert(CertEncoding.X509_SIGNATURE, bytes(data))])
        ident = initial.peer_identity(IdType.DER_ASN1_DN, bytes(data[:60]), msg)
        why = initial.verify_peer(b_cfg, Auth(14, b"\x00"), b"octets", ident, msg)
        assert why, bytes(data).hex()
        kinds.add(why.split(":")[0])
    assert "not a certificate" in kinds
