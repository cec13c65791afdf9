"""A ``[[peer]]``'s certificates (``auth = "pubkey"``, docs/certificates.md): ``certs`` (ours,
then intermediate CAs sent with it), ``cacerts`` (the CAs the peer's certificate must chain
to), ``crls``, read like swanctl.conf's ``certs``/``cacerts``; the private key of ``certs[0]``
is ``private_key`` (ECDSA, RSA or Ed25519, mode 0600).

``cert_files`` reads the field paths with the rest of the peer; ``cert_credentials`` loads
them once the whole file is checked, each refusal naming the field and the file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import serialization

from ..constants import IdType
from ..ike.certs import (
    TrustStore,
    certificate_identities,
    describe,
    identity_matches,
    load_certificates,
    load_crls,
    load_trust,
)
from ..ike.config import Identity, IkeConfig
from ..keys import KeyFileError, load_ed25519_public, load_private_key
from .fields import Fields

if TYPE_CHECKING:
    from .ike_settings import IkeFiles

#: ``local_id`` left out with ``certs``: replaced by the certificate's subject once it is read
SUBJECT_ID: Final = Identity(IdType.DER_ASN1_DN, b"")

_EXPECTED = {
    "certs": "a certificate file (PEM or DER) or an array of them: this host's certificate "
             "first, then the intermediate CAs to send with it",
    "cacerts": "a CA certificate file or an array of them: the CAs the peer's certificate "
               "must chain to",
    "crls": "a CRL file (PEM or DER) or an array of them",
}


def pubkey_files(fields: Fields, t: dict[str, Any], pre: str, files: IkeFiles) -> None:
    """An ``auth = "pubkey"`` peer's files: ``private_key``, and ``peer_public_key`` (a raw
    Ed25519 key) or the certificate fields; ``rsa_pss``."""
    files.private_key = fields.file_path(
        t, "private_key", pre, "the path of this host's private key: Ed25519 (PKCS#8 PEM, "
                               "made by `nattunnel keygen --type ed25519 NAME`), or the key of "
                               "its certificate (ECDSA, RSA or Ed25519)")
    cert_files(fields, t, pre, files)
    if not files.cacerts:
        files.peer_public_key = fields.file_path(
            t, "peer_public_key", pre, "the path of the peer's Ed25519 public key (its .pub "
                                       "file, SubjectPublicKeyInfo PEM), or cacerts to check "
                                       "the peer's certificate")
    files.rsa_pss = fields.get(t, "rsa_pss", pre, bool, "true or false", False)


def cert_files(fields: Fields, t: dict[str, Any], pre: str, files: IkeFiles) -> None:
    """The certificate fields' paths (joined to the configuration's directory)."""
    for key in ("certs", "cacerts", "crls"):
        if key not in t:
            continue
        paths = []
        for field, text in fields.get_str_list(t, key, pre, _EXPECTED[key]):
            if not text:
                raise fields.err(field, f"is empty; expected {_EXPECTED[key]}")
            paths.append((field, fields.base_dir / fields.path_text(field, text)))
        if not paths:
            raise fields.err(pre + key, f"is empty; expected {_EXPECTED[key]}")
        setattr(files, key, tuple(paths))
    if files.crls and not files.cacerts:
        raise fields.err(pre + "crls", "needs cacerts: CRLs are checked for the peer's "
                                       "certificate chain")
    if "peer_public_key" in t and files.cacerts:
        raise fields.err(pre + "peer_public_key", "is for a peer with a raw public key; this "
                                                  "peer has cacerts (its certificate is "
                                                  "checked): remove one of them")


def _load(fields: Fields, entries: tuple[tuple[str, Path], ...], load: Any) -> list[Any]:
    out: list[Any] = []
    for field, path in entries:
        try:
            out += load(path)
        except ValueError as e:
            raise fields.err(field, str(e)) from None
    return out


def cert_credentials(fields: Fields, pre: str, ike: IkeConfig, files: IkeFiles) -> IkeConfig:
    """The private key, our certificates and the peer's trust store, checked against each
    other: the private key is the pair of ``certs[0]``, and ``local_id`` is in it."""
    assert files.private_key is not None
    try:
        key = load_private_key(files.private_key)
    except KeyFileError as e:  # names the file and the reason, never the key
        raise fields.err(pre + "private_key", str(e)) from None
    certs = tuple(_load(fields, files.certs, load_certificates))
    trust: TrustStore | None = None
    public = None
    if files.cacerts:
        cas = _load(fields, files.cacerts, lambda p: load_trust([p]).cas)
        trust = TrustStore(tuple(cas), tuple(_load(fields, files.crls, load_crls)))
    elif files.peer_public_key is not None:
        try:
            public = load_ed25519_public(files.peer_public_key)
        except KeyFileError as e:
            raise fields.err(pre + "peer_public_key", str(e)) from None
    if certs:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if certs[0].public_key().public_bytes(der, spki) != key.public_key().public_bytes(
                der, spki):
            raise fields.err(pre + "certs", f"{files.certs[0][1]}: the first certificate "
                                            f"({describe(certs[0])}) is not the pair of "
                                            f"private_key {files.private_key}; put this "
                                            f"host's own certificate first")
        if ike.local_id is SUBJECT_ID:
            ike = replace(ike, local_id=Identity.from_name(certs[0].subject))
        local = ike.local_id
        holds = (local.name == certs[0].subject if local.name is not None
                 else identity_matches(local.id_type, local.data, certs[0]))
        if not holds:
            raise fields.err(pre + "local_id", f"{str(local)!r} is not in this host's "
                                               f"certificate {files.certs[0][1]} (which names "
                                               f"{', '.join(certificate_identities(certs[0]))})"
                                               f"; the peer would refuse it")
    return replace(ike, private_key=key, certs=certs, trust=trust, peer_public_key=public,
                   rsa_pss=files.rsa_pss)
