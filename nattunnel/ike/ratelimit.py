"""The IKE responder's bounds: ``IkeLimits`` (what unauthenticated and authenticated senders
can make the IKE manager hold or compute: the ``[limits]`` table) and the token buckets, one
per source and one for everything, with a bounded table (docs/security.md).

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens a second; a request takes one
token or is refused. Sources are IPv4 addresses and IPv6 /64 prefixes (one host usually holds
a whole /64, as WireGuard's rate limiter assumes). The table never holds more than
``max_sources`` buckets: full buckets are dropped, at most one pass a second (a full bucket is
the same as no bucket), and if every bucket is still in use a new source is refused rather
than let the table grow. Sans-I/O: every call takes ``now``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

_V4_MAPPED = bytes(10) + b"\xff\xff"


class TokenBucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now

    def allow(self, now: float) -> bool:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.last) * self.rate >= self.burst


def source_key(host: str) -> bytes:
    """The rate-limited unit for an address: an IPv4 address, or an IPv6 /64 (an IPv4-mapped
    IPv6 address counts as the IPv4 address)."""
    host = host.split("%", 1)[0]
    try:
        if ":" not in host:
            return socket.inet_pton(socket.AF_INET, host)
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None
    if packed[:12] == _V4_MAPPED:
        return packed[12:]
    return packed[:8]


class SourceLimiter:
    """One token bucket per source, at most ``max_sources`` of them."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[bytes, TokenBucket] = {}
        self._pruned_at = float("-inf")

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, host: str, now: float) -> bool:
        try:
            key = source_key(host)
        except ValueError:
            return False
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                # at most one pass a second, so that a flood of new sources costs no more
                # than a lookup each
                if now - self._pruned_at < 1.0:
                    return False
                self._pruned_at = now
                self._prune(now)
                if len(self._buckets) >= self.max_sources:
                    return False
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.allow(now)

    def _prune(self, now: float) -> None:
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]


#: half-open IKE SAs above which IKE_SA_INIT requests must carry a COOKIE (section 2.6)
COOKIE_THRESHOLD = 32


@dataclass(frozen=True)
class IkeLimits:
    """Bounds on what unauthenticated (and authenticated) senders can make the IKE manager
    hold or compute (docs/security.md; the ``[limits]`` table in docs/config.md)."""

    #: half-open IKE SAs above which IKE_SA_INIT requests must carry a COOKIE (section 2.6)
    cookie_threshold: int = COOKIE_THRESHOLD
    #: half-open IKE SAs at most; IKE_SA_INIT requests beyond it are dropped
    half_open_max: int = 1024
    #: seconds a half-open responder SA waits for IKE_AUTH
    half_open_timeout: float = 30.0
    #: IKE_SA_INIT requests per second that one source (an IPv4 address, an IPv6 /64) may
    #: make us answer, with bursts up to ``init_burst``
    init_rate: float = 10.0
    init_burst: int = 20
    #: IKE_SA_INIT requests per second answered in all, from every source together (each
    #: costs a key exchange and key derivation: about 0.5 ms of a core)
    init_rate_total: float = 100.0
    #: established IKE SAs per peer identity; the oldest goes when a new one comes up beyond it
    ike_sas_per_identity: int = 4
    #: child SAs per IKE SA; CREATE_CHILD_SA beyond it is refused with NO_ADDITIONAL_SAS
    children_per_ike_sa: int = 16
    #: the cookie secret is replaced this often; cookies made with the previous one are
    #: still accepted until the next rotation
    cookie_secret_lifetime: float = 60.0
