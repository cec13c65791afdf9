"""IKEv2 cryptography (RFC 7296): PRFs, prf+, Diffie-Hellman, key derivation, the SK cipher
and AUTH payloads (PSK, and RFC 7427 signatures with Ed25519, ECDSA and RSA PKCS#1 v1.5
and PSS). NAT detection hashes are in ike_message.

Everything runs in the ``cryptography`` package; this module only arranges the octets the RFCs
name. Sections cited are RFC 7296 unless another RFC is named.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..constants import (
    ED25519_ALGORITHM_ID,
    ENCR_AES_GCM_16,
    ENCR_CHACHA20_POLY1305,
    AuthMethod,
    DhGroup,
    HashAlgorithm,
    PrfId,
)

# Transform IDs live in constants.py (IANA registries); short names for this module:
PRF_HMAC_SHA2_256: Final = PrfId.HMAC_SHA2_256
PRF_HMAC_SHA2_384: Final = PrfId.HMAC_SHA2_384
PRF_HMAC_SHA2_512: Final = PrfId.HMAC_SHA2_512
DH_ECP_256: Final = DhGroup.ECP_256  # RFC 5903
DH_CURVE25519: Final = DhGroup.CURVE25519  # RFC 8031
AUTH_SHARED_KEY_MIC: Final = AuthMethod.SHARED_KEY_MIC
AUTH_DIGITAL_SIGNATURE: Final = AuthMethod.DIGITAL_SIGNATURE

# --- PRFs (RFC 4868 for HMAC-SHA2 in IKEv2) ----------------------------------------------------
_PRF_HASH: Final[dict[int, str]] = {PRF_HMAC_SHA2_256: "sha256", PRF_HMAC_SHA2_384: "sha384",
                    PRF_HMAC_SHA2_512: "sha512"}


class Prf:
    """One negotiated PRF: ``prf(key, data)`` and ``prf+`` (section 2.13)."""

    def __init__(self, transform_id: int) -> None:
        try:
            self.hash_name = _PRF_HASH[transform_id]
        except KeyError:
            raise ValueError(f"unsupported PRF transform {transform_id}") from None
        self.transform_id = transform_id
        #: RFC 4868 section 2.1.2 (preferred key length = output length)
        self.key_len = hashlib.new(self.hash_name).digest_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hash_name)

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (section 2.13): T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), n up to 255."""
        out = bytearray()
        t = b""
        n = 1
        while len(out) < length:
            if n > 255:
                raise ValueError("prf+ cannot produce that much keying material")
            t = self(key, t + seed + bytes((n,)))
            out += t
            n += 1
        return bytes(out[:length])


# --- Diffie-Hellman (section 2.14 with RFC 8031 and RFC 5903) ----------------------------------
class KeyExchange:
    """One side of a key exchange: ``public`` goes in the KE payload."""

    def __init__(self, group: int) -> None:
        self.group = group
        self._x: x25519.X25519PrivateKey | None = None
        self._ec: ec.EllipticCurvePrivateKey | None = None
        if group == DH_CURVE25519:
            self._x = x25519.X25519PrivateKey.generate()
            self.public = self._x.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        elif group == DH_ECP_256:
            self._ec = ec.generate_private_key(ec.SECP256R1())
            point = self._ec.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            self.public = point[1:]  # RFC 5903 section 7: x | y, no 0x04 prefix
        else:
            raise ValueError(f"unsupported key exchange method {group}")

    @staticmethod
    def public_length(group: int) -> int:
        lengths: dict[int, int] = {DH_CURVE25519: 32, DH_ECP_256: 64}
        return lengths[group]

    def shared(self, peer_public: bytes) -> bytes:
        """g^ir; ValueError for a malformed or degenerate peer value."""
        if len(peer_public) != self.public_length(self.group):
            raise ValueError("key exchange data has the wrong length")
        if self._x is not None:
            secret = self._x.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
            if secret == bytes(32):  # RFC 8031 section 2.3: all-zero result must be refused
                raise ValueError("degenerate Curve25519 public value")
            return secret
        assert self._ec is not None
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                                b"\x04" + peer_public)
        except ValueError:
            raise ValueError("ECP-256 public value is not a point on the curve") from None
        return self._ec.exchange(ec.ECDH(), peer)  # RFC 5903 section 7: the x coordinate


# --- The SK payload cipher (RFC 5282 for AES-GCM, RFC 7634 for ChaCha20-Poly1305) --------------


@dataclass(frozen=True)
class EncrAlg:
    transform_id: int
    key_bits: int  # 0 for a transform without a key-length attribute

    @property
    def key_len(self) -> int:
        return 32 if self.transform_id == ENCR_CHACHA20_POLY1305 else self.key_bits // 8

    @property
    def keymat_len(self) -> int:
        """Octets of SK_e / child encryption keying material: key || 4-octet salt."""
        return self.key_len + 4


def encr_alg(transform_id: int, key_bits: int | None) -> EncrAlg:
    if transform_id == ENCR_AES_GCM_16 and key_bits in (128, 256):
        return EncrAlg(transform_id, key_bits)
    if transform_id == ENCR_CHACHA20_POLY1305 and key_bits in (None, 0, 256):
        return EncrAlg(transform_id, 0)
    raise ValueError(f"unsupported encryption transform {transform_id}/{key_bits}")


class SkCipher(Protocol):
    iv_len: int
    icv_len: int

    def seal(self, aad: bytes, plaintext: bytes) -> bytes: ...

    def open(self, aad: bytes, data: bytes) -> bytes: ...


class AeadSk:
    """The SK payload's combined-mode cipher for one direction.

    ``seal`` returns IV || ciphertext || ICV, the IV a per-key counter (RFC 5282 section 3.1
    needs it unique); ``open`` raises ValueError when the ICV does not verify.
    """

    iv_len = 8
    icv_len = 16
    #: a combined-mode cipher needs no block padding: only the pad-length octet (RFC 5282)
    block_size = 1

    def __init__(self, alg: EncrAlg, keymat: bytes) -> None:
        if len(keymat) != alg.keymat_len:
            raise ValueError("SK_e keying material has the wrong length")
        key, self._salt = keymat[:-4], keymat[-4:]
        self._aead = (ChaCha20Poly1305(key) if alg.transform_id == ENCR_CHACHA20_POLY1305
                      else AESGCM(key))
        self._counter = 0

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        self._counter += 1
        iv = struct.pack("!Q", self._counter)
        return iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, aad: bytes, data: bytes) -> bytes:
        if len(data) < self.iv_len + self.icv_len:
            raise ValueError("SK payload too short")
        try:
            return self._aead.decrypt(self._salt + data[:8], data[8:], aad)
        except InvalidTag:
            raise ValueError("SK payload ICV does not verify") from None


# --- Key derivation (sections 2.14, 2.17, 2.18) ------------------------------------------------
@dataclass(frozen=True)
class IkeKeys:
    sk_d: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes


def derive_ike_keys(prf: Prf, alg: EncrAlg, skeyseed: bytes, ni: bytes, nr: bytes,
                    spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni|Nr|SPIi|SPIr);
    with an AEAD there are no SK_a keys (RFC 5282 section 7.1)."""
    n = prf.key_len
    e = alg.keymat_len
    km = prf.plus(skeyseed, ni + nr + spi_i + spi_r, n + 2 * e + 2 * n)
    return IkeKeys(sk_d=km[:n], sk_ei=km[n:n + e], sk_er=km[n + e:n + 2 * e],
                   sk_pi=km[n + 2 * e:2 * n + 2 * e], sk_pr=km[2 * n + 2 * e:])


def skeyseed_initial(prf: Prf, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (section 2.14)."""
    return prf(ni + nr, g_ir)


def skeyseed_rekey(prf: Prf, old_sk_d: bytes, g_ir: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) (section 2.18)."""
    return prf(old_sk_d, g_ir + ni + nr)


def child_keymat(prf: Prf, sk_d: bytes, ni: bytes, nr: bytes, keymat_len: int,
                 g_ir: bytes = b"") -> tuple[bytes, bytes]:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr) (section 2.17), split into the keying
    material of the SA initiator -> responder and of responder -> initiator."""
    km = prf.plus(sk_d, g_ir + ni + nr, 2 * keymat_len)
    return km[:keymat_len], km[keymat_len:]


# --- AUTH (section 2.15; RFC 7427 and RFC 8420 for Ed25519) ------------------------------------
_KEY_PAD: Final = b"Key Pad for IKEv2"
#: RFC 8420 section 2 / RFC 7427 section 3: ASN.1 length octet, then the DER
#: AlgorithmIdentifier of Ed25519 (id-Ed25519, no parameters)
SIGNATURE_ALGORITHM_PREFIX: Final = bytes((len(ED25519_ALGORITHM_ID),)) + ED25519_ALGORITHM_ID


def signed_octets(message: bytes, peer_nonce: bytes, prf: Prf, sk_p: bytes,
                  id_body: bytes) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (section 2.15): the sender's first
    message | the peer's nonce data | prf(SK_p, ID payload body)."""
    return message + peer_nonce + prf(sk_p, id_body)


def psk_auth(prf: Prf, psk: bytes, octets: bytes) -> bytes:
    """AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)."""
    return prf(prf(psk, _KEY_PAD), octets)


# --- RFC 7427 digital signatures (auth method 14) ----------------------------------------------
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
VerifyingKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_HASHES: Final[dict[int, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]]] = {
    HashAlgorithm.SHA2_256: hashes.SHA256, HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
#: what we announce in SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4; RFC 8420 for Identity)
SIGNATURE_HASHES: Final = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                           HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY)


@dataclass(frozen=True)
class SignatureScheme:
    """One RFC 7427 signature scheme: the DER AlgorithmIdentifier in AUTH data (RFC 7427
    appendix A; strongSwan's encodings: NULL parameters for RSA and the PSS hashes, a PSS
    salt as long as the hash), the key it takes and its hash."""

    name: str
    algorithm_id: bytes
    key: str  # "ecdsa" | "rsa" | "rsa-pss" | "ed25519"
    hash: HashAlgorithm

    def _hash(self) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
        return _HASHES[self.hash]()

    def _pss(self) -> padding.PSS:
        h = self._hash()
        return padding.PSS(padding.MGF1(h), h.digest_size)

    def sign(self, key: SigningKey, octets: bytes) -> bytes:
        """AUTH data: the AlgorithmIdentifier's length and DER, then the signature."""
        prefix = bytes((len(self.algorithm_id),)) + self.algorithm_id
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return prefix + key.sign(octets)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return prefix + key.sign(octets, ec.ECDSA(self._hash()))  # DER Ecdsa-Sig-Value
        pad = self._pss() if self.key == "rsa-pss" else padding.PKCS1v15()
        return prefix + key.sign(octets, pad, self._hash())

    def verify(self, key: VerifyingKey, signature: bytes, octets: bytes) -> bool:
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                if self.key != "ed25519":
                    return False
                key.verify(signature, octets)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                if self.key != "ecdsa":
                    return False
                key.verify(signature, octets, ec.ECDSA(self._hash()))
            else:
                if self.key not in ("rsa", "rsa-pss"):
                    return False
                pad = self._pss() if self.key == "rsa-pss" else padding.PKCS1v15()
                key.verify(signature, octets, pad, self._hash())
        except (InvalidSignature, ValueError):  # a malformed signature is a wrong one
            return False
        return True


_PSS_OID: Final = "06092a864886f70d01010a"
_MGF1_OID: Final = "06092a864886f70d010108"
_SHA2_OID: Final = {256: "0609608648016503040201", 384: "0609608648016503040202",
                    512: "0609608648016503040203"}


def _pss_id(bits: int) -> bytes:
    """RSASSA-PSS AlgorithmIdentifier: hash, MGF1 with the same hash, salt = hash length
    (RFC 7427 appendix A.4.3's form, with strongSwan's NULL hash parameters)."""
    h = "30 0d " + _SHA2_OID[bits] + " 0500"
    mgf = "30 1a " + _MGF1_OID + h
    salt = f"a2 03 02 01 {bits // 8:02x}"
    params = "a0 0f " + h + " a1 1c " + mgf + " " + salt
    body = _PSS_OID + " 30 34 " + params
    return bytes.fromhex("30 41 " + body)


SCHEMES: Final = (
    SignatureScheme("ed25519", ED25519_ALGORITHM_ID, "ed25519", HashAlgorithm.IDENTITY),
    SignatureScheme("ecdsa-with-sha256", bytes.fromhex("300a06082a8648ce3d040302"), "ecdsa",
                    HashAlgorithm.SHA2_256),
    SignatureScheme("ecdsa-with-sha384", bytes.fromhex("300a06082a8648ce3d040303"), "ecdsa",
                    HashAlgorithm.SHA2_384),
    SignatureScheme("ecdsa-with-sha512", bytes.fromhex("300a06082a8648ce3d040304"), "ecdsa",
                    HashAlgorithm.SHA2_512),
    SignatureScheme("sha256WithRSAEncryption", bytes.fromhex("300d06092a864886f70d01010b0500"),
                    "rsa", HashAlgorithm.SHA2_256),
    SignatureScheme("sha384WithRSAEncryption", bytes.fromhex("300d06092a864886f70d01010c0500"),
                    "rsa", HashAlgorithm.SHA2_384),
    SignatureScheme("sha512WithRSAEncryption", bytes.fromhex("300d06092a864886f70d01010d0500"),
                    "rsa", HashAlgorithm.SHA2_512),
    SignatureScheme("rsassa-pss-sha256", _pss_id(256), "rsa-pss", HashAlgorithm.SHA2_256),
    SignatureScheme("rsassa-pss-sha384", _pss_id(384), "rsa-pss", HashAlgorithm.SHA2_384),
    SignatureScheme("rsassa-pss-sha512", _pss_id(512), "rsa-pss", HashAlgorithm.SHA2_512),
)
_BY_ID: Final = {s.algorithm_id: s for s in SCHEMES}


def choose_scheme(key: SigningKey, peer_hashes: frozenset[int], *, rsa_pss: bool = False
                  ) -> SignatureScheme:
    """The scheme to sign with (RFC 7427 section 4): Ed25519 for an Ed25519 key; for ECDSA
    the curve's own hash (P-256 SHA-256, P-384 SHA-384, P-521 SHA-512) if the peer announced
    it, else the first SHA-2 it did; for RSA SHA-256 first, with PSS if ``rsa_pss``. A peer
    that announced none gets SHA-256 (strongSwan's default)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SCHEMES[0]
    kind = "ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else (
        "rsa-pss" if rsa_pss else "rsa")
    order = [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        own = {256: HashAlgorithm.SHA2_256, 384: HashAlgorithm.SHA2_384}.get(
            key.curve.key_size, HashAlgorithm.SHA2_512)
        order.remove(own)
        order.insert(0, own)
    pick = next((h for h in order if h in peer_hashes), order[0])
    return next(s for s in SCHEMES if s.key == kind and s.hash == pick)


def signature_auth(key: SigningKey, octets: bytes, peer_hashes: frozenset[int], *,
                   rsa_pss: bool = False) -> bytes:
    """AUTH data for auth method 14 signed with ``key`` (``choose_scheme``)."""
    return choose_scheme(key, peer_hashes, rsa_pss=rsa_pss).sign(key, octets)


def signature_verify(key: VerifyingKey, auth_data: bytes, octets: bytes) -> str | None:
    """None if ``auth_data`` (auth method 14) holds a good signature of ``octets`` by ``key``,
    else why not: an unknown AlgorithmIdentifier, a scheme for another key type, or a
    signature that does not verify."""
    if not auth_data or len(auth_data) < 1 + auth_data[0]:
        return "truncated RFC 7427 signature data"
    n = auth_data[0]
    scheme = _BY_ID.get(auth_data[1:1 + n])
    if scheme is None:
        return "unsupported signature algorithm (AlgorithmIdentifier " \
               f"{auth_data[1:1 + n].hex()})"
    if not scheme.verify(key, auth_data[1 + n:], octets):
        return f"the {scheme.name} signature does not verify with the peer's key"
    return None


def ed25519_auth(key: ed25519.Ed25519PrivateKey, octets: bytes) -> bytes:
    """AUTH data for auth method 14 with Ed25519: algorithm identifier, then the signature."""
    return SCHEMES[0].sign(key, octets)


def ed25519_verify(key: ed25519.Ed25519PublicKey, auth_data: bytes, octets: bytes) -> bool:
    return signature_verify(key, auth_data, octets) is None
