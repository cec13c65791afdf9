"""X.509 certificates for IKE (RFC 7296 sections 3.6 and 3.7, RFC 4945's profile): files,
chains, CRLs, and the peer's identity against its certificate.

- ``load_certificates``/``load_crls``: PEM or DER files, each refusal saying what the file is;
- ``TrustStore``: the CA certificates (trust anchors) and CRLs of one peer, its CERTREQ hashes
  (SHA-1 of each CA's SubjectPublicKeyInfo, section 3.7) and ``verify``, which builds the chain
  with ``cryptography.x509.verification`` and then checks what that API leaves to the caller
  (docs/dependencies.md): the end entity's key usage and IKE's extended key usage rules,
  revocation against the CRLs, and which of validity, chaining and revocation failed;
- ``identity_matches``: an IKE identity (FQDN, IPv4/6 address, RFC 822 address, DN) against
  a certificate's subjectAltNames and subject, as strongSwan matches them;
- ``parse_dn``/``format_dn``: distinguished names written as strongSwan writes them
  (``C=CH, O=strongSwan, CN=gw.example``: most significant first, ", " between them).

Nothing here parses ASN.1 by hand: every DER structure goes through ``cryptography``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ..constants import IdType
from .crypto import VerifyingKey

#: a certificate, CA or CRL file larger than this is refused before it is parsed
MAX_CERT_FILE_LEN: Final = 1 << 20
#: the most CA certificates between an end entity and its trust anchor
MAX_CHAIN_DEPTH: Final = 8
#: iKEIntermediate (1.3.6.1.5.5.8.2.2), which ``pki --flag ikeIntermediate`` and Windows use
IKE_INTERMEDIATE: Final = x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")
#: RFC 4945 section 5.1.3.12, and what strongSwan and Windows accept besides id-kp-ipsecIKE
IKE_EKUS: Final = frozenset({
    ExtendedKeyUsageOID.IPSEC_IKE, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, IKE_INTERMEDIATE,
})

_EKU_NAMES: Final = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
                     ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
                     ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
                     ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
                     ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
                     ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
                     ExtendedKeyUsageOID.IPSEC_IKE: "ipsecIKE",
                     IKE_INTERMEDIATE: "iKEIntermediate"}
#: strongSwan's attribute names (its identification.c) that RFC 4514 does not know
_DN_NAMES: Final = {"E": NameOID.EMAIL_ADDRESS, "EMAIL": NameOID.EMAIL_ADDRESS,
                    "EMAILADDRESS": NameOID.EMAIL_ADDRESS, "SN": NameOID.SURNAME,
                    "SERIALNUMBER": NameOID.SERIAL_NUMBER, "G": NameOID.GIVEN_NAME,
                    "GN": NameOID.GIVEN_NAME, "T": NameOID.TITLE,
                    "S": NameOID.STATE_OR_PROVINCE_NAME}
_DN_SHORT: Final = {NameOID.COMMON_NAME: "CN", NameOID.COUNTRY_NAME: "C",
                    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
                    NameOID.LOCALITY_NAME: "L", NameOID.STATE_OR_PROVINCE_NAME: "ST",
                    NameOID.EMAIL_ADDRESS: "E", NameOID.DOMAIN_COMPONENT: "DC",
                    NameOID.SERIAL_NUMBER: "serialNumber", NameOID.SURNAME: "SN",
                    NameOID.GIVEN_NAME: "G", NameOID.TITLE: "T", NameOID.USER_ID: "UID"}


class CertError(ValueError):
    """A certificate is refused. ``kind`` says which check failed (``CertProblem``); the
    message names the certificate by its subject and says why."""

    def __init__(self, kind: CertProblem, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class CertProblem(Enum):
    NOT_A_CERTIFICATE = "not a certificate"
    NO_CERTIFICATE = "no certificate"
    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    DOES_NOT_CHAIN = "does not chain"
    REVOKED = "revoked"
    KEY_USAGE = "key usage"
    IDENTITY_MISMATCH = "identity mismatch"


# --- distinguished names -------------------------------------------------------------------
def _split_rdns(text: str) -> list[str]:
    """``C=CH, O=a\\, b, CN=x`` -> ['C=CH', 'O=a\\, b', 'CN=x'] (commas escaped by \\ stay)."""
    parts, cur, escaped = [], "", False
    for c in text:
        if escaped:
            cur += c
            escaped = False
        elif c == "\\":
            cur += c
            escaped = True
        elif c == ",":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += c
    parts.append(cur.strip())
    return parts


def _dn_lookup() -> dict[str, x509.ObjectIdentifier]:
    """Attribute names in upper case (how parse_dn hands them on): strongSwan's and the
    standard ones, so that ``cn=`` and ``emailAddress=`` work as ``CN=`` and ``E=``."""
    names = {v.upper(): k for k, v in _DN_SHORT.items()}
    return {**names, **_DN_NAMES}


def parse_dn(text: str) -> x509.Name:
    """A DN as strongSwan writes it (``C=CH, O=strongSwan, CN=gw.example``; most significant
    first, also with '/' as in ``/C=CH/O=strongSwan/CN=gw``) as an ``x509.Name``. ValueError
    says what is wrong."""
    s = text.strip()
    if s.startswith("/"):  # OpenSSL's form: a ',' in a value is a plain character there
        parts = [p.strip().replace(",", "\\,") for p in s[1:].split("/")]
    else:
        parts = _split_rdns(s)
    if not parts or any(not p for p in parts):
        raise ValueError("is not a distinguished name: an empty RDN (two commas in a row?)")
    rdns = []
    for p in parts:
        key, eq, value = p.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"is not a distinguished name: {p!r} is not TYPE=VALUE")
        rdns.append(f"{key.strip().upper()}={value.strip()}")
    try:
        return x509.Name.from_rfc4514_string(",".join(reversed(rdns)), _dn_lookup())
    except ValueError as e:
        why = str(e) or (f"an attribute type it does not know among "
                         f"{', '.join(r.split('=', 1)[0] for r in rdns)} (known: "
                         f"{', '.join(sorted(_dn_lookup()))}), or a malformed value")
        raise ValueError(f"is not a distinguished name: {why}") from None


def format_dn(name: x509.Name) -> str:
    """An ``x509.Name`` as strongSwan writes it: ``C=CH, O=strongSwan, CN=gw.example``."""
    out = []
    for rdn in name.rdns:
        for a in rdn:
            key = _DN_SHORT.get(a.oid, a.oid.dotted_string)
            value = a.value if isinstance(a.value, str) else a.value.hex()
            out.append(f"{key}={value.replace(',', chr(92) + ',')}")
    return ", ".join(out)


def canonical_dn(name: x509.Name) -> bytes:
    """The DER of ``name`` with each value in the string type ``cryptography`` picks for its
    attribute: two names that differ only in string types (PrintableString or UTF8String,
    as different CAs and strongSwan's parser choose) give the same octets."""
    return x509.Name([x509.RelativeDistinguishedName(
        [x509.NameAttribute(a.oid, a.value) for a in rdn]) for rdn in name.rdns]
    ).public_bytes()


def _strongswan_dn(name: x509.Name) -> bytes:
    """The DER strongSwan makes of the same names from text: PrintableString where the
    value allows it, IA5String for e-mail, UTF8String otherwise."""
    printable = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")

    def attr(a: x509.NameAttribute[str | bytes]) -> x509.NameAttribute[str]:
        value = a.value if isinstance(a.value, str) else a.value.decode("latin-1")
        if a.oid == NameOID.EMAIL_ADDRESS or a.oid == NameOID.DOMAIN_COMPONENT:
            kind = x509.name._ASN1Type.IA5String
        elif set(value) <= printable:
            kind = x509.name._ASN1Type.PrintableString
        else:
            kind = x509.name._ASN1Type.UTF8String
        return x509.NameAttribute(a.oid, value, kind)

    rdns = [x509.RelativeDistinguishedName([attr(a) for a in rdn]) for rdn in name.rdns]
    return x509.Name(rdns).public_bytes()


def dn_forms(name: x509.Name) -> frozenset[bytes]:
    """The encodings of ``name`` a peer's ID_DER_ASN1_DN may hold and still name it: the
    certificate's own, ``canonical_dn``'s, and strongSwan's from its text form."""
    forms = {name.public_bytes(), canonical_dn(name)}
    with contextlib.suppress(ValueError):
        forms.add(_strongswan_dn(name))
    return frozenset(forms)


# --- files ---------------------------------------------------------------------------------
def _read(path: str | os.PathLike[str], what: str) -> bytes:
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_CERT_FILE_LEN + 1)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such {what} file") from None
    except OSError as e:
        raise ValueError(f"{name}: cannot read: {e.strerror}") from None
    if len(data) > MAX_CERT_FILE_LEN:
        raise ValueError(f"{name}: too large for a {what} file (at most {MAX_CERT_FILE_LEN} "
                         f"octets)")
    return data


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate of a PEM file (one or more ``-----BEGIN CERTIFICATE-----``) or the one
    of a DER file. ValueError names the file and what it holds instead."""
    name = os.fspath(path)
    data = _read(path, "certificate")
    if b"PRIVATE KEY-----" in data:
        raise ValueError(f"{name}: holds a private key, not a certificate; name the "
                         f"certificate file (the private key goes in private_key)")
    try:
        if b"-----BEGIN" in data:
            if b"-----BEGIN CERTIFICATE-----" not in data:
                raise ValueError("no -----BEGIN CERTIFICATE----- in it")
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise ValueError(f"{name}: is not a certificate (PEM or DER X.509): {e}") from None
    return certs


def load_crls(path: str | os.PathLike[str]) -> list[x509.CertificateRevocationList]:
    """The CRL of a PEM (``-----BEGIN X509 CRL-----``, one or more) or DER file."""
    name = os.fspath(path)
    data = _read(path, "CRL")
    try:
        if b"-----BEGIN" in data:
            blocks = [b"-----BEGIN X509 CRL-----" + part for part in
                      data.split(b"-----BEGIN X509 CRL-----")[1:]]
            if not blocks:
                raise ValueError("no -----BEGIN X509 CRL----- in it")
            return [x509.load_pem_x509_crl(b) for b in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError as e:
        raise ValueError(f"{name}: is not a CRL (PEM or DER X.509 CRL): {e}") from None


def cert_from_der(data: bytes) -> x509.Certificate:
    """A CERT payload's certificate, every part the checks read parsed now (``cryptography``
    parses some lazily): CertError NOT_A_CERTIFICATE if it is not one, or a malformed one
    (a bad key, extension or name, a serial number RFC 5280 forbids)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(data)
            cert.serial_number  # noqa: B018  (a negative serial warns here)
            cert.public_key()
            cert.extensions  # noqa: B018
            cert.subject.public_bytes()
            cert.issuer.public_bytes()
            cert.not_valid_before_utc, cert.not_valid_after_utc  # noqa: B018
    except Exception as e:  # whatever the parser raises on any octets:
        # ValueError, UnsupportedAlgorithm, the deprecation warning, and a KeyError from a
        # signature algorithm's parameters, found by tests/ike/test_certs.py's mutations)
        raise CertError(CertProblem.NOT_A_CERTIFICATE,
                        f"the CERT payload is not an X.509 certificate: "
                        f"{type(e).__name__}: {e}") from None
    return cert


def spki_sha1(cert: x509.Certificate) -> bytes:
    """SHA-1 of the certificate's SubjectPublicKeyInfo: how a CERTREQ names a CA (3.7)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki).digest()


def describe(cert: x509.Certificate) -> str:
    """A certificate for log lines: ``"C=CH, O=strongSwan, CN=gw" (serial 0a1b..)``."""
    return f'"{format_dn(cert.subject)}" (serial {cert.serial_number:x})'


def _utc(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


# --- verification --------------------------------------------------------------------------
@dataclass(frozen=True)
class TrustStore:
    """The CA certificates and CRLs one peer's certificate is checked against."""

    cas: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    #: wall-clock time (the cores' ``now`` is monotonic); tests set another
    clock: Callable[[], datetime.datetime] = field(
        default=lambda: datetime.datetime.now(datetime.UTC), compare=False)
    #: the refusal ``certauth.verify_peer`` last made with this store (its cause and the
    #: reason it gave), until the IKE manager counts it (``certauth.count_refusal``)
    refused: list[tuple[CertProblem, str]] = field(default_factory=list, compare=False,
                                                   repr=False)

    def certreq_hashes(self) -> bytes:
        """The CERTREQ payload's Certification Authority field: one SHA-1 per CA."""
        return b"".join(spki_sha1(c) for c in self.cas)

    def knows(self, hashes: Sequence[bytes]) -> bool:
        """Whether a CERTREQ's hashes name one of our CAs (or name none: any CA)."""
        ours = {spki_sha1(c) for c in self.cas}
        return not hashes or any(h in ours for h in hashes)

    def verify(self, leaf: x509.Certificate, others: Sequence[x509.Certificate]
               ) -> list[x509.Certificate]:
        """The chain from ``leaf`` to one of our CAs, through ``others`` (the peer's other
        CERT payloads); CertError says which check failed."""
        when = self.clock()
        for c in (leaf, *others):
            if c.not_valid_after_utc < when:
                raise CertError(CertProblem.EXPIRED, f"certificate {describe(c)} expired at "
                                                     f"{_utc(c.not_valid_after_utc)}")
            if c.not_valid_before_utc > when:
                raise CertError(CertProblem.NOT_YET_VALID,
                                f"certificate {describe(c)} is not valid before "
                                f"{_utc(c.not_valid_before_utc)}")
        check_end_entity(leaf)
        if not self.cas:
            raise CertError(CertProblem.DOES_NOT_CHAIN, "no CA certificates configured")
        if any(_is_ed25519(c) for c in (leaf, *others, *self.cas)):
            chain = self._ed25519_chain(leaf, others, when)
            self._check_revocation(chain)
            return chain
        verifier = (PolicyBuilder().store(Store(list(self.cas))).time(when)
                    .max_chain_depth(MAX_CHAIN_DEPTH)
                    .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                        ee_policy=ExtensionPolicy.permit_all())
                    .build_client_verifier())
        try:
            chain = list(verifier.verify(leaf, list(others)).chain)
        except VerificationError as e:
            raise CertError(CertProblem.DOES_NOT_CHAIN,
                            f"certificate {describe(leaf)} issued by "
                            f'"{format_dn(leaf.issuer)}" does not chain to a configured CA: '
                            f"{e}") from None
        self._check_revocation(chain)
        return chain

    def _ed25519_chain(self, leaf: x509.Certificate, others: Sequence[x509.Certificate],
                       when: datetime.datetime) -> list[x509.Certificate]:
        """The chain where the verifier's Web PKI profile refuses Ed25519 keys and signatures:
        each issuer found by name among the peer's other certificates and our CAs, its
        signature checked by ``verify_directly_issued_by``, each CA's basicConstraints,
        keyCertSign, pathLenConstraint and validity checked here."""
        chain = [leaf]
        anchors = {c.subject.public_bytes(): c for c in self.cas}
        pool = list(others)
        while len(chain) <= MAX_CHAIN_DEPTH + 1:
            cert = chain[-1]
            for issuer in [anchors.get(cert.issuer.public_bytes()),
                           *[o for o in pool if o.subject == cert.issuer]]:
                if issuer is None or not _signs(issuer, cert):
                    continue
                _check_ca(issuer, len(chain) - 1, when)
                chain.append(issuer)
                if issuer in self.cas:
                    return chain
                pool.remove(issuer)
                break
            else:
                raise CertError(CertProblem.DOES_NOT_CHAIN,
                                f"certificate {describe(leaf)} issued by "
                                f'"{format_dn(leaf.issuer)}" does not chain to a configured '
                                f"CA: no issuer found for {describe(cert)}")
        raise CertError(CertProblem.DOES_NOT_CHAIN, f"certificate {describe(leaf)}: chain "
                                                    f"longer than {MAX_CHAIN_DEPTH} CAs")

    def _check_revocation(self, chain: Sequence[x509.Certificate]) -> None:
        for cert, issuer in itertools.pairwise(chain):
            for crl in self.crls:
                if crl.issuer != issuer.subject or not _crl_signed_by(crl, issuer):
                    continue
                revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
                if revoked is not None:
                    raise CertError(CertProblem.REVOKED,
                                    f"certificate {describe(cert)} was revoked at "
                                    f"{_utc(revoked.revocation_date_utc)} (CRL of "
                                    f'"{format_dn(crl.issuer)}")')


def _is_ed25519(cert: x509.Certificate) -> bool:
    return (isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
            or cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.ED25519)


def _signs(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_ca(ca: x509.Certificate, below: int, when: datetime.datetime) -> None:
    """A CA certificate ``below`` CAs above the end entity may issue it (RFC 5280 6.1.4)."""
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    problem = None
    if bc is None or not bc.ca:
        problem = "is not a CA certificate (no basicConstraints CA:TRUE)"
    elif bc.path_length is not None and below > bc.path_length:
        problem = f"allows {bc.path_length} CAs below it (pathLenConstraint), not {below}"
    else:
        try:
            ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
            if not ku.key_cert_sign:
                problem = "has a key usage without keyCertSign"
        except x509.ExtensionNotFound:
            pass
    if problem is None and not ca.not_valid_before_utc <= when <= ca.not_valid_after_utc:
        raise CertError(CertProblem.EXPIRED, f"CA certificate {describe(ca)} is valid "
                                             f"{_utc(ca.not_valid_before_utc)} to "
                                             f"{_utc(ca.not_valid_after_utc)} only")
    if problem is not None:
        raise CertError(CertProblem.DOES_NOT_CHAIN, f"CA certificate {describe(ca)} {problem}")


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
                      | rsa.RSAPublicKey):
        return False
    return crl.is_signature_valid(key)


def check_end_entity(cert: x509.Certificate) -> None:
    """What the verifier's end-entity policy is told to leave alone and IKE needs: key usage
    (when present) allows signatures, extended key usage (when present) names IKE or a
    purpose IKE peers accept (``IKE_EKUS``), and the key is one we can verify."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not (ku.digital_signature or ku.content_commitment):
        raise CertError(CertProblem.KEY_USAGE, f"certificate {describe(cert)}: its key usage "
                                               f"does not allow digital signatures")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and not IKE_EKUS & set(eku):
        raise CertError(CertProblem.KEY_USAGE,
                        f"certificate {describe(cert)}: its extended key usage "
                        f"({', '.join(_EKU_NAMES.get(o, o.dotted_string) for o in eku)}) "
                        f"allows neither IKE "
                        f"(ipsecIKE, RFC 4945) nor serverAuth/clientAuth")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise CertError(CertProblem.KEY_USAGE, f"certificate {describe(cert)} is a CA "
                                               f"certificate, not an end entity's")
    if not isinstance(cert.public_key(), ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
                      | rsa.RSAPublicKey):
        raise CertError(CertProblem.KEY_USAGE, f"certificate {describe(cert)}: its key type "
                                               f"is not ECDSA, RSA or Ed25519")


# --- identities ----------------------------------------------------------------------------
def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def identity_matches(id_type: int, data: bytes, cert: x509.Certificate) -> bool:
    """Whether an IKE identity (ID type and data, section 3.5) is one the certificate holds:
    FQDN a subjectAltName dNSName (case-insensitive), IPv4/IPv6 an iPAddress, RFC 822 an
    rfc822Name (case-insensitive), a DN the subject (``dn_forms``), as strongSwan matches
    them (its subject's CN is not an FQDN)."""
    sans = _sans(cert)
    if id_type == IdType.DER_ASN1_DN:
        return data in dn_forms(cert.subject)
    if sans is None:
        return False
    if id_type == IdType.FQDN:
        name = data.decode("ascii", "replace").lower().rstrip(".")
        return any(d.lower().rstrip(".") == name for d in sans.get_values_for_type(x509.DNSName))
    if id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        try:
            ip = ipaddress.ip_address(data)
        except ValueError:
            return False
        return ip in sans.get_values_for_type(x509.IPAddress)
    if id_type == IdType.RFC822_ADDR:
        mail = data.decode("ascii", "replace").lower()
        return any(m.lower() == mail for m in sans.get_values_for_type(x509.RFC822Name))
    return False


def certificate_identities(cert: x509.Certificate) -> list[str]:
    """What a certificate can be named by, for messages: its subject and subjectAltNames."""
    out = [format_dn(cert.subject)]
    sans = _sans(cert)
    if sans is not None:
        out += sans.get_values_for_type(x509.DNSName)
        out += [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
        out += sans.get_values_for_type(x509.RFC822Name)
    return out


def public_key_of(cert: x509.Certificate) -> VerifyingKey:
    key = cert.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
                      | rsa.RSAPublicKey):
        raise CertError(CertProblem.KEY_USAGE, f"certificate {describe(cert)}: its key type "
                                               f"is not ECDSA, RSA or Ed25519")
    return key


def load_trust(cacerts: Sequence[Path], crls: Sequence[Path] = ()) -> TrustStore:
    """A TrustStore from CA certificate files and CRL files; ValueError names the file."""
    cas: list[x509.Certificate] = []
    for p in cacerts:
        for c in load_certificates(p):
            try:
                bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                bc = None
            if bc is None or not bc.ca:
                raise ValueError(f"{p}: {describe(c)} is not a CA certificate (no "
                                 f"basicConstraints CA:TRUE)")
            cas.append(c)
    lists: list[x509.CertificateRevocationList] = []
    for p in crls:
        lists += load_crls(p)
    return TrustStore(tuple(cas), tuple(lists))
