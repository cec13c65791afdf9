"""A small test PKI: a root CA, intermediate CAs and end-entity certificates as PEM files.

For the certificate tests (tests/ike/test_certs.py, the strongSwan interop tests) and the IKE
fragmentation lab test, which needs a chain larger than the path MTU (RSA 4096 and a few
intermediates make one). Everything is made with ``cryptography``'s builders; names are
written as strongSwan writes them (``C=CH, O=strongSwan, CN=gw.example``, parsed by
``nattunnel.ike.certs.parse_dn``). docs/certificates.md shows the same with ``pki`` and
``openssl``.

Example::

    pki = make_chain(tmp_path, kind="ecdsa", intermediates=1,
                     leaves={"gw": Leaf("C=CH, O=strongSwan, CN=gw.example",
                                        dns=("gw.example",))})
    pki.root.cert_path, pki.leaf["gw"].cert_path, pki.leaf["gw"].key_path, pki.chain_path("gw")
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..ike.certs import parse_dn
from ..ike.crypto import SigningKey as PrivateKey

KeyKind = Literal["ecdsa", "rsa", "rsa-pss", "ed25519"]
#: id-kp-ipsecIKE (RFC 4945 section 5.1.3.12)
IPSEC_IKE = ExtendedKeyUsageOID.IPSEC_IKE
DAY = datetime.timedelta(days=1)


def make_key(kind: KeyKind = "ecdsa", bits: int | None = None) -> PrivateKey:
    """A fresh key: ECDSA on P-256 (``bits`` 256, default) or P-384 (384), RSA of ``bits``
    (default 2048; ``rsa-pss`` is an RSA key whose certificates are signed with PSS), or
    Ed25519."""
    if kind == "ecdsa":
        curves: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1(),
                                               521: ec.SECP521R1()}
        return ec.generate_private_key(curves[bits or 256])
    if kind in ("rsa", "rsa-pss"):
        return rsa.generate_private_key(65537, bits or 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    """A certificate, its key, and how it signs what it issues."""

    cert: x509.Certificate
    key: PrivateKey
    pss: bool = False
    cert_path: Path | None = None
    key_path: Path | None = None

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def write(self, directory: Path, name: str) -> Issued:
        """``NAME.pem`` (0644) and ``NAME.key`` (0600) in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_path = directory / f"{name}.pem"
        self.cert_path.write_bytes(self.cert_pem)
        self.key_path = directory / f"{name}.key"
        write_private(self.key_path, self.key_pem)
        return self


def write_private(path: Path, data: bytes) -> None:
    """Create (or replace) ``path`` with mode 0600 from the start."""
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _sign_args(issuer_key: PrivateKey, pss: bool
               ) -> tuple[hashes.SHA256 | hashes.SHA384 | None, padding.PSS | padding.PKCS1v15
                          | None]:
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey):
        return None, None
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        return (hashes.SHA384() if issuer_key.curve.key_size >= 384 else hashes.SHA256()), None
    if pss:
        return hashes.SHA256(), padding.PSS(padding.MGF1(hashes.SHA256()),
                                            padding.PSS.DIGEST_LENGTH)
    return hashes.SHA256(), padding.PKCS1v15()


def issue(subject: str, key: PrivateKey, issuer: Issued | None = None, *, ca: bool = False,
          path_length: int | None = None, dns: Sequence[str] = (), ips: Sequence[str] = (),
          emails: Sequence[str] = (), not_before: datetime.datetime | None = None,
          not_after: datetime.datetime | None = None, eku: Sequence[x509.ObjectIdentifier] | None
          = (IPSEC_IKE,), key_usage: bool = True, serial: int | None = None,
          pss: bool = False) -> Issued:
    """A certificate for ``subject`` (strongSwan's DN form) and ``key``, signed by ``issuer``
    (self-signed without one). A CA gets basicConstraints CA (critical), keyCertSign and
    cRLSign; an end entity digitalSignature, ``eku`` (None: no EKU extension) and the
    subjectAltNames. Valid from yesterday for a year unless told otherwise."""
    now = datetime.datetime.now(datetime.UTC)
    name = parse_dn(subject)
    signer_key = issuer.key if issuer else key
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.cert.subject if issuer else name)
         .public_key(key.public_key())
         .serial_number(serial or x509.random_serial_number())
         .not_valid_before(not_before or now - DAY)
         .not_valid_after(not_after or now + 365 * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                        critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if issuer is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            key.public_key()), critical=False)
    if key_usage:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    sans += [x509.RFC822Name(e) for e in emails]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku and not ca:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    algorithm, pad = _sign_args(signer_key, issuer.pss if issuer else pss)
    if pad is not None:
        assert isinstance(signer_key, rsa.RSAPrivateKey)
        cert = b.sign(signer_key, algorithm, rsa_padding=pad)
    else:
        cert = b.sign(signer_key, algorithm)
    return Issued(cert, key, pss=pss)


def make_crl(issuer: Issued, serials: Sequence[int], *, days: int = 7
             ) -> x509.CertificateRevocationList:
    """A CRL from ``issuer`` revoking ``serials``."""
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
         .last_update(now - DAY).next_update(now + days * DAY)
         .add_extension(x509.CRLNumber(1), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer.key.public_key()), critical=False))
    for s in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(s)
                                      .revocation_date(now - DAY).build())
    algorithm, pad = _sign_args(issuer.key, issuer.pss)
    if pad is not None:
        assert isinstance(issuer.key, rsa.RSAPrivateKey)
        return b.sign(issuer.key, algorithm, rsa_padding=pad)
    return b.sign(issuer.key, algorithm)


@dataclass(frozen=True)
class Leaf:
    """An end-entity certificate to make: its subject, subjectAltNames and key; ``expired``
    makes one that ended yesterday; ``revoked`` puts it on its issuer's CRL."""

    subject: str
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    kind: KeyKind | None = None  # default: the chain's
    bits: int | None = None
    expired: bool = False
    revoked: bool = False
    eku: tuple[x509.ObjectIdentifier, ...] | None = (IPSEC_IKE,)


@dataclass
class Pki:
    """What ``make_chain`` made, with its files."""

    directory: Path
    root: Issued
    intermediates: list[Issued]
    leaf: dict[str, Issued] = field(default_factory=dict)
    crl: x509.CertificateRevocationList | None = None
    crl_path: Path | None = None

    @property
    def issuer(self) -> Issued:
        """The CA that issued the end-entity certificates."""
        return self.intermediates[-1] if self.intermediates else self.root

    def chain_path(self, name: str) -> Path:
        """``NAME-chain.pem``: the end-entity certificate, then the intermediates from the
        issuer up (what ``certs`` takes, one file)."""
        path = self.directory / f"{name}-chain.pem"
        pem = self.leaf[name].cert_pem + b"".join(
            i.cert_pem for i in reversed(self.intermediates))
        path.write_bytes(pem)
        return path


    def swanctl_files(self, name: str, peer: Pki | None = None) -> dict[str, bytes]:
        """charon's files under ``swanctl/`` (``Charon.start(files=...)``) for the end entity
        ``name``: ``x509/NAME.pem``, ``private/NAME.key``, its intermediates in ``x509ca/``
        (charon sends them with its certificate), and the CA certificates and CRL it checks
        the peer's certificate with (``peer``'s root and CRL; this PKI's without one):
        ``x509ca/peer-root.pem`` (``remote.cacerts = peer-root.pem``) and
        ``x509crl/peer.crl``. The peer's intermediates are never there: they come in its
        CERT payloads."""
        theirs = peer or self
        files = {f"x509/{name}.pem": self.leaf[name].cert_pem,
                 f"private/{name}.key": self.leaf[name].key_pem,
                 "x509ca/peer-root.pem": theirs.root.cert_pem}
        for i, ca in enumerate(self.intermediates, 1):
            files[f"x509ca/{name}-int{i}.pem"] = ca.cert_pem
        if theirs.crl is not None:
            files["x509crl/peer.crl"] = theirs.crl.public_bytes(serialization.Encoding.PEM)
        return files


def make_chain(directory: Path, *, kind: KeyKind = "ecdsa", bits: int | None = None,
               intermediates: int = 0, leaves: Mapping[str, Leaf] | None = None,
               root_dn: str = "C=CH, O=strongSwan, CN=strongSwan Root CA") -> Pki:
    """A root CA (``root.pem``, ``root.key``), ``intermediates`` CAs below it
    (``int1.pem`` ...), and the ``leaves`` issued by the last CA (``NAME.pem``,
    ``NAME.key``), all of ``kind``/``bits`` unless a leaf says otherwise; ``crl.pem`` (PEM)
    from the issuing CA revokes the leaves marked ``revoked``."""
    pss = kind == "rsa-pss"
    root = issue(root_dn, make_key(kind, bits), ca=True, pss=pss).write(directory, "root")
    chain: list[Issued] = []
    parent = root
    for i in range(1, intermediates + 1):
        prefix, _, root_cn = root_dn.rpartition("CN=")
        dn = prefix + f"CN={root_cn.removesuffix(' Root CA')} Intermediate CA {i}"
        parent = issue(dn, make_key(kind, bits), parent, ca=True, pss=pss).write(
            directory, f"int{i}")
        chain.append(parent)
    pki = Pki(directory, root, chain)
    now = datetime.datetime.now(datetime.UTC)
    revoked = []
    for name, leaf in (leaves or {}).items():
        key = make_key(leaf.kind or kind, leaf.bits or bits)
        cert = issue(leaf.subject, key, parent, dns=leaf.dns, ips=leaf.ips, emails=leaf.emails,
                     eku=leaf.eku, not_before=now - 30 * DAY if leaf.expired else None,
                     not_after=now - DAY if leaf.expired else None)
        pki.leaf[name] = cert.write(directory, name)
        if leaf.revoked:
            revoked.append(cert.cert.serial_number)
    pki.crl = make_crl(parent, revoked)
    pki.crl_path = directory / "crl.pem"
    pki.crl_path.write_bytes(pki.crl.public_bytes(serialization.Encoding.PEM))
    return pki
