"""Stateless cookies for the IKE responder (RFC 7296 section 2.6): above a threshold of
half-open SAs an IKE_SA_INIT request must carry a cookie we made, which costs us a hash and
no state.

Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>), the hash an HMAC-SHA-256
truncated to COOKIE_HASH_LEN octets. The secret is replaced every ``lifetime`` seconds;
cookies made with the one before are still accepted until the next rotation (section
2.6.1). Sans-I/O: every call takes ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket

from ..addr import Addr

#: octets of the hash in our cookies (after one octet of secret version)
COOKIE_HASH_LEN = 16


class Cookies:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._version = 0
        self._secrets: dict[int, bytes] = {}
        self._rotate_at = float("-inf")

    def make(self, ni: bytes, spi_i: bytes, remote: Addr, now: float) -> bytes:
        """A cookie for this request, with the current secret."""
        self._rotate(now)
        cookie = self._cookie(self._version, ni, spi_i, remote)
        assert cookie is not None
        return cookie

    def valid(self, got: bytes, ni: bytes, spi_i: bytes, remote: Addr, now: float) -> bool:
        """Whether ``got`` is a cookie we made for this request, with the current secret
        or the one before."""
        self._rotate(now)
        if len(got) != 1 + COOKIE_HASH_LEN:
            return False
        want = self._cookie(got[0], ni, spi_i, remote)
        return want is not None and hmac.compare_digest(got, want)

    def _cookie(self, version: int, ni: bytes, spi_i: bytes, remote: Addr) -> bytes | None:
        """The cookie made with the secret of ``version``, or None if it is no longer
        kept."""
        secret = self._secrets.get(version)
        if secret is None:
            return None
        host = remote[0]
        try:
            ipi = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                   host.split("%", 1)[0])
        except OSError:
            ipi = host.encode()
        mac = hmac.new(secret, ni + ipi + spi_i, hashlib.sha256).digest()
        return bytes([version]) + mac[:COOKIE_HASH_LEN]

    def _rotate(self, now: float) -> None:
        if now < self._rotate_at:
            return
        if now >= self._rotate_at + self.lifetime:
            self._secrets.clear()  # idle for two lifetimes: the previous one is stale
        self._version = (self._version + 1) % 256
        self._secrets = {v: k for v, k in self._secrets.items()
                         if v == (self._version - 1) % 256}
        self._secrets[self._version] = os.urandom(32)
        self._rotate_at = now + self.lifetime
