"""Comparing two loads of one configuration (``nattunnel reload``): ``comparable`` gives a
value that compares by value, so that a peer whose file did not change is left alone.

Key objects of ``cryptography`` compare by identity (an ECDSA or RSA key loaded twice is not
equal to itself), so every key becomes its public key's DER SubjectPublicKeyInfo, and
dataclasses become tuples of their fields.
"""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_PRIVATE = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey, x25519.X25519PrivateKey, x448.X448PrivateKey)
_PUBLIC = (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey,
           ed448.Ed448PublicKey, x25519.X25519PublicKey, x448.X448PublicKey)


def comparable(value: object) -> object:
    """``value`` with keys as their public octets and dataclasses (and sequences) as
    tuples."""
    if isinstance(value, _PRIVATE):
        value = value.public_key()
    if isinstance(value, _PUBLIC):
        return value.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple((f.name, comparable(getattr(value, f.name)))
                     for f in dataclasses.fields(value))
    if isinstance(value, tuple | list):
        return tuple(comparable(v) for v in value)
    return value
