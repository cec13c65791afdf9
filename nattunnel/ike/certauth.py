"""Public-key authentication in IKE_AUTH (RFC 7296 sections 2.15, 3.6-3.8; RFC 7427): the CERT
and CERTREQ payloads we send, and the check of the peer's AUTH, with its certificate chain
(``certs.TrustStore``) or a configured raw public key.

``initial.py`` calls these for both roles; the refusal reasons returned here end in the IKE SA's
down reason, which the manager logs with the peer's name (docs/certificates.md lists them).
A certificate refusal is also noted in the peer's ``TrustStore`` with its cause
(``CertProblem``), which the manager counts when the IKE SA goes down (``count_refusal``:
``IkeManager.cert_refusals``, by cause).
"""

from __future__ import annotations

import contextlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..constants import AuthMethod, CertEncoding, IdType
from . import crypto as kc
from .certs import (
    MAX_CHAIN_DEPTH,
    CertError,
    CertProblem,
    TrustStore,
    cert_from_der,
    certificate_identities,
    dn_forms,
    identity_matches,
    public_key_of,
)
from .config import Identity, IkeConfig
from .message import Auth, Cert, CertReq, Message, Payload

#: the causes certificate refusals are counted by (``count_refusal``): ``CertProblem``'s names
CERT_REFUSAL_CAUSES: tuple[str, ...] = tuple(p.name.lower() for p in CertProblem)


def cert_payloads(config: IkeConfig) -> list[Payload]:
    """Our certificate, then the intermediate CAs, one CERT payload each (section 3.6)."""
    return [Cert(CertEncoding.X509_SIGNATURE, c.public_bytes(serialization.Encoding.DER))
            for c in config.certs]


def certreq_payloads(trust: TrustStore | None) -> list[Payload]:
    """A CERTREQ naming the CAs we trust for the peer (section 3.7), if it has any."""
    if trust is None or not trust.cas:
        return []
    return [CertReq(CertEncoding.X509_SIGNATURE, trust.certreq_hashes())]


def peer_certificates(msg: Message) -> list[x509.Certificate]:
    """The X.509 certificates of the message's CERT payloads, the end entity's first (section
    3.6: the first holds the key that signed AUTH); CertError NOT_A_CERTIFICATE for a CERT
    payload that is not one."""
    # section 3.6: other encodings may be ignored
    x509s = [p for p in msg.get_all(Cert) if p.encoding == CertEncoding.X509_SIGNATURE]
    if len(x509s) > MAX_CHAIN_DEPTH + 1:
        raise CertError(CertProblem.DOES_NOT_CHAIN,
                        f"the peer sent {len(x509s)} certificates, more than "
                        f"{MAX_CHAIN_DEPTH + 1} certificates (a chain of {MAX_CHAIN_DEPTH} CAs)")
    return [cert_from_der(p.data) for p in x509s]


def peer_identity(id_type: int, data: bytes, msg: Message) -> Identity:
    """The peer's identity as its ID payload gives it; a DN that is its certificate's
    subject (in any of its encodings) becomes ``Identity.from_name`` of that subject, so that
    it compares equal to the DN written in our configuration."""
    if id_type == IdType.DER_ASN1_DN:
        try:
            certs = peer_certificates(msg)
        except CertError:
            certs = []
        with contextlib.suppress(ValueError):  # a malformed subject is refused later
            if certs and data in dn_forms(certs[0].subject):
                return Identity.from_name(certs[0].subject)
    return Identity(id_type, data)


def idr_matches(id_type: int, data: bytes, ours: Identity) -> bool:
    """Whether the peer's IDr names our identity (a DN in any encoding of our name)."""
    if id_type == IdType.DER_ASN1_DN and ours.name is not None:
        return data in dn_forms(ours.name)
    return Identity(id_type, data) == ours


def verify_peer(config: IkeConfig, auth: Auth, octets: bytes, peer_id: Identity,
                msg: Message) -> str | None:
    """None if the peer's AUTH is good, else why not (a certificate that is missing, not a
    certificate, expired, revoked, does not chain or does not hold the identity; a signature
    that does not verify)."""
    if config.trust is not None:
        config.trust.refused.clear()
        why = _check_certificate(config.trust, peer_id, msg)
        if isinstance(why, str):
            return why
        key: kc.VerifyingKey | None = why
    else:
        key = config.peer_public_key
    if key is None:
        return "no public key configured for the peer"
    if auth.method != AuthMethod.DIGITAL_SIGNATURE:
        try:
            method = AuthMethod(auth.method).name
        except ValueError:
            method = str(auth.method)
        return f"auth method {method}, not a digital signature (RFC 7427, method 14)"
    return kc.signature_verify(key, auth.data, octets)


def _check_certificate(trust: TrustStore, peer_id: Identity,
                       msg: Message) -> kc.VerifyingKey | str:
    """The public key of the peer's certificate, if it chains to ``trust`` and holds
    ``peer_id``; else why not, noted in ``trust.refused`` with its cause."""
    try:
        certs = peer_certificates(msg)
        if not certs:
            raise CertError(CertProblem.NO_CERTIFICATE,
                            "the peer sent no certificate (no X.509 CERT payload)")
        leaf = certs[0]
        trust.verify(leaf, certs[1:])
        if not _holds(peer_id, leaf):
            raise CertError(CertProblem.IDENTITY_MISMATCH,
                            f"identity mismatch: the peer's identity {peer_id} is not "
                            f"in its certificate (which names "
                            f"{', '.join(certificate_identities(leaf))})")
        return public_key_of(leaf)
    except CertError as e:
        kind = e.kind
        why = f"{kind.value}: {e}" if kind is not CertProblem.IDENTITY_MISMATCH else str(e)
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm) as e:  # parsed lazily
        kind = CertProblem.NOT_A_CERTIFICATE
        why = f"{kind.value}: a malformed certificate: {e}"
    trust.refused.append((kind, why))
    return why


def count_refusal(counts: dict[str, int], config: IkeConfig | None, reason: str) -> bool:
    """An IKE SA with ``config`` went down for ``reason`` (authentication failed): if that
    was a certificate refusal (``verify_peer``'s, noted in the trust store), count it in
    ``counts`` by its cause (``CERT_REFUSAL_CAUSES``). Whether it was one."""
    trust = config.trust if config is not None else None
    if trust is None or not trust.refused:
        return False
    kind, why = trust.refused.pop()
    trust.refused.clear()
    if not reason.endswith(why):  # a refusal of another verification (not this SA's)
        return False
    cause = kind.name.lower()
    counts[cause] = counts.get(cause, 0) + 1
    return True


def _holds(peer_id: Identity, cert: x509.Certificate) -> bool:
    if peer_id.id_type == IdType.DER_ASN1_DN and peer_id.name is not None:
        return peer_id.name == cert.subject
    return identity_matches(peer_id.id_type, peer_id.data, cert)
