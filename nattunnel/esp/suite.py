"""ESP cipher suites: combined-mode (AEAD) algorithms with an 8-octet explicit IV.

- AES-GCM with a 16-octet ICV, RFC 4106: keying material = key || 4-octet salt,
  nonce = salt || explicit IV.
- ChaCha20-Poly1305, RFC 7634: keying material = 32-octet key || 4-octet salt, same nonce.

The crypto itself runs in C inside the ``cryptography`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..constants import ENCR_AES_GCM_16, ENCR_CHACHA20_POLY1305, ESP_ICV_LEN, ESP_SALT_LEN

AEAD = AESGCM | ChaCha20Poly1305


@dataclass(frozen=True, slots=True)
class Suite:
    """One ESP combined-mode suite."""

    name: str
    #: IKEv2 transform ID (ENCR_*).
    transform_id: int
    #: cipher key length in octets, without the salt
    key_len: int
    #: IKEv2 key-length attribute in bits, or None where the transform has none (ChaCha20)
    key_attr_bits: int | None
    aead_class: type[AESGCM] | type[ChaCha20Poly1305]
    icv_len: int = ESP_ICV_LEN
    salt_len: int = ESP_SALT_LEN
    #: ciphertext alignment: AES and ChaCha20 here are both stream-like; ESP's 4 applies
    block_len: int = 4

    @property
    def keymat_len(self) -> int:
        """Octets of keying material the suite consumes (key || salt)."""
        return self.key_len + self.salt_len

    def split_keymat(self, keymat: bytes) -> tuple[bytes, bytes]:
        """Split keying material into (key, salt), checking its length."""
        if len(keymat) != self.keymat_len:
            raise ValueError(
                f"{self.name} needs {self.keymat_len} octets of keying material "
                f"({self.key_len} key + {self.salt_len} salt), got {len(keymat)}"
            )
        return bytes(keymat[: self.key_len]), bytes(keymat[self.key_len :])

    def aead(self, key: bytes) -> AEAD:
        return self.aead_class(key)


AES_GCM_128: Final = Suite("aes128gcm16", ENCR_AES_GCM_16, 16, 128, AESGCM)
AES_GCM_256: Final = Suite("aes256gcm16", ENCR_AES_GCM_16, 32, 256, AESGCM)
CHACHA20_POLY1305: Final = Suite(
    "chacha20poly1305", ENCR_CHACHA20_POLY1305, 32, None, ChaCha20Poly1305
)

SUITES: Final[dict[str, Suite]] = {s.name: s for s in (AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305)}
# strongSwan's proposal keywords are the canonical names; accept a few common spellings too.
_ALIASES: Final = {
    "aes-gcm-128": AES_GCM_128,
    "aes-gcm-256": AES_GCM_256,
    "aes128gcm": AES_GCM_128,
    "aes256gcm": AES_GCM_256,
    "chacha20-poly1305": CHACHA20_POLY1305,
}


def suite_by_name(name: str) -> Suite:
    """Look a suite up by strongSwan keyword (``aes256gcm16``) or alias; ValueError if unknown."""
    key = name.strip().lower()
    suite = SUITES.get(key) or _ALIASES.get(key)
    if suite is None:
        known = ", ".join(sorted(SUITES))
        raise ValueError(f"unknown ESP suite {name!r}; known suites: {known}")
    return suite
