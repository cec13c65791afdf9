"""IKE fragmentation (RFC 7383): an encrypted message too large for the path goes as several
Encrypted Fragment (SKF) messages, each sealed on its own, and the peer's fragments are put
back together here, within bounds that nobody can use to make an IKE SA hold memory.

- ``fragment_room``: the inner payload octets one fragment holds when the whole IP datagram
  may be ``size`` octets (section 2.5.1: IP and UDP headers, the non-ESP marker on port
  4500, the IKE header, the SKF header, IV, padding and ICV);
- ``encrypted_size`` and ``split``: how large the message would be as one SK message, and
  the SKF messages it is sent as instead (the message ID, exchange and flags of the message;
  the first fragment's Next Payload is the first inner payload's type, the others' zero);
- ``Reassembly``: the peer's fragments, at most one partial message per direction (the
  peer's requests, the responses to ours), each fragment opened (its ICV verified) before
  it is kept; at most ``MAX_FRAGMENTS`` fragments and ``MAX_REASSEMBLED`` octets
  (``MAX_UNAUTHENTICATED`` before the IKE SA is authenticated); a partial
  message goes ``REASSEMBLY_TIMEOUT`` after its first fragment came. Every fragment that is
  not kept is counted by reason (``DROP_REASONS``).

The IKE SA (``base``, ``sa``) decides what may be fragmented (only encrypted messages after
IKE_SA_INIT, only when both sides sent IKEV2_FRAGMENTATION_SUPPORTED) and which fragments
belong to the window (section 2.6.1); this module holds no keys and sends nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..constants import (
    IKE_GENERIC_HEADER_LEN,
    IKE_HEADER_LEN,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    NON_ESP_MARKER,
    SKF_HEADER_EXTRA_LEN,
    UDP_HEADER_LEN,
)
from .message import (
    Fragment,
    Header,
    IkeDecodeError,
    Payload,
    SkCipher,
    encode_fragment,
    encode_payloads,
    reassemble,
)

#: a peer's message in more fragments than this is not reassembled (a 64 KiB message in
#: fragments of 1280-octet datagrams takes 55; 32 fit 35 KiB, far beyond a certificate chain)
MAX_FRAGMENTS: Final = 32
#: the inner payload octets of one partial message, at most
MAX_REASSEMBLED: Final = 64 * 1024
#: the same before the IKE SA is authenticated (a half-open responder SA, an initiator
#: waiting for the IKE_AUTH answer): anyone who completed IKE_SA_INIT can send these, so
#: that the manager's half-open SAs (``IkeLimits.half_open_max``, 1024) hold 16 MiB at
#: most; an IKE_AUTH with a certificate chain is a few KiB (charon's own limit for any
#: message, charon.max_packet, is 10000 octets)
MAX_UNAUTHENTICATED: Final = 16 * 1024
#: a partial message goes this long after its first fragment came: about as long as a peer
#: retransmits (0.5 s doubling, 6 tries, section 2.1), after which no missing fragment comes
REASSEMBLY_TIMEOUT: Final = 30.0

#: why a received fragment was not kept (the counters of ``Reassembly.drops``)
DROP_REASONS: Final = (
    "not_negotiated",  # an SKF message on an IKE SA without fragmentation
    "integrity",  # its ICV did not verify (a forgery, or damage)
    "unexpected_message_id",  # outside the window: not our request's, not the peer's next
    "retransmitted_request",  # of a request already answered (number 1 resends the answer)
    "too_many_fragments",  # Total Fragments over MAX_FRAGMENTS
    "too_large",  # the partial message would pass MAX_REASSEMBLED (it goes too)
    "duplicate",  # that fragment number is already kept
    "fewer_fragments",  # a smaller Total Fragments than the partial message (section 2.6)
    "restarted",  # a partial message dropped for one with more fragments (section 2.6)
    "superseded",  # a partial message dropped for the next message ID
    "timed_out",  # a partial message dropped after REASSEMBLY_TIMEOUT
    "malformed",  # the reassembled payloads did not parse
)


def ip_overhead(ipv6: bool, natt: bool) -> int:
    """IP and UDP headers (no options or extension headers) and the non-ESP marker."""
    return ((IPV6_HEADER_LEN if ipv6 else IPV4_HEADER_LEN) + UDP_HEADER_LEN
            + (len(NON_ESP_MARKER) if natt else 0))


def encrypted_size(inner_len: int, sk: SkCipher) -> int:
    """The octets of an IKE message whose SK payload holds ``inner_len`` octets of payloads
    (section 3.14: IV, padding and pad length, ICV)."""
    block = max(sk.block_size, 1)
    padded = inner_len + 1 + (-(inner_len + 1) % block)
    return IKE_HEADER_LEN + IKE_GENERIC_HEADER_LEN + sk.iv_len + padded + sk.icv_len


def fragment_room(size: int, sk: SkCipher, *, ipv6: bool, natt: bool) -> int:
    """The inner payload octets one fragment carries when its IP datagram is at most
    ``size`` octets (RFC 7383 section 2.5.1). ValueError if not even one octet fits."""
    avail = (size - ip_overhead(ipv6, natt) - IKE_HEADER_LEN - IKE_GENERIC_HEADER_LEN
             - SKF_HEADER_EXTRA_LEN - sk.iv_len - sk.icv_len)
    block = max(sk.block_size, 1)
    room = avail // block * block - 1  # the last octet is the pad length
    if room < 1:
        raise ValueError(f"a fragment of {size} octets has no room for any payload")
    return room


def split(header: Header, payloads: Sequence[Payload], sk: SkCipher, room: int
          ) -> tuple[bytes, ...]:
    """The SKF messages of a message: its inner payloads' octets in pieces of at most
    ``room`` octets, each sealed with its own IV and ICV (section 2.5)."""
    first, inner = encode_payloads(payloads)
    pieces = [inner[i:i + room] for i in range(0, len(inner), room)] or [b""]
    total = len(pieces)
    return tuple(encode_fragment(header, Fragment(n, total, first, piece), sk=sk)
                 for n, piece in enumerate(pieces, 1))


@dataclass
class _Partial:
    """The fragments kept of one message."""

    message_id: int
    exchange: int
    total: int
    expires_at: float
    parts: dict[int, Fragment] = field(default_factory=dict)
    size: int = 0


class Reassembly:
    """The peer's fragments of one IKE SA: at most one partial message per direction (key:
    whether it is a response), bounded in count, size and time; counters of what was
    reassembled, sent and dropped."""

    def __init__(self, *, max_fragments: int = MAX_FRAGMENTS,
                 max_size: int = MAX_REASSEMBLED, timeout: float = REASSEMBLY_TIMEOUT) -> None:
        self.max_fragments = max_fragments
        self.max_size = max_size
        self.timeout = timeout
        self._partial: dict[bool, _Partial] = {}
        #: messages put back together, and messages (and their fragments) we sent in pieces
        self.reassembled = 0
        self.messages_sent = 0
        self.fragments_sent = 0
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)

    def status(self, negotiated: bool) -> dict[str, object]:
        """For ``nattunnel show`` and the stats: whether fragmentation was negotiated, the
        messages sent in fragments and reassembled, what is held, the drops that happened."""
        return {"negotiated": negotiated, "messages_sent": self.messages_sent,
                "fragments_sent": self.fragments_sent, "reassembled": self.reassembled,
                "held": self.held, "drops": {k: n for k, n in self.drops.items() if n}}

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    @property
    def held(self) -> int:
        """The inner payload octets kept in partial messages now."""
        return sum(p.size for p in self._partial.values())

    def pending(self, response: bool) -> tuple[int, int, int] | None:
        """(message ID, fragments kept, Total Fragments) of the partial message of that
        direction, or None."""
        p = self._partial.get(response)
        return (p.message_id, len(p.parts), p.total) if p is not None else None

    def add(self, header: Header, frag: Fragment, now: float, max_size: int | None = None
            ) -> list[Payload] | None:
        """Keep an opened fragment (its ICV verified, its message ID in the window); the
        message's payloads once every fragment is there, else None. ``max_size``: a bound
        below ``self.max_size`` for this message's octets. Raises IkeDecodeError
        (authenticated, with the header) if the reassembled payloads do not parse."""
        key = header.is_response
        p = self._partial.get(key)
        if frag.total > self.max_fragments:
            self.drop("too_many_fragments")
            return None
        if p is not None and (p.message_id != header.message_id
                              or p.exchange != header.exchange_type):
            self.drop("superseded")
            p = None
        elif p is not None and frag.total != p.total:
            if frag.total < p.total:
                self.drop("fewer_fragments")
                return None
            self.drop("restarted")
            p = None
        if p is None:
            p = _Partial(header.message_id, header.exchange_type, frag.total,
                         now + self.timeout)
            self._partial[key] = p
        if frag.number in p.parts:
            self.drop("duplicate")
            return None
        if p.size + len(frag.data) > min(self.max_size, max_size or self.max_size):
            del self._partial[key]
            self.drop("too_large")
            return None
        p.parts[frag.number] = frag
        p.size += len(frag.data)
        if len(p.parts) < p.total:
            return None
        del self._partial[key]
        try:
            payloads = reassemble(p.parts.values())
        except IkeDecodeError as e:
            self.drop("malformed")
            e.authenticated = True
            e.header = header
            raise
        self.reassembled += 1
        return payloads

    def deadline(self) -> float | None:
        """When the oldest partial message goes, or None."""
        return min((p.expires_at for p in self._partial.values()), default=None)

    def expire(self, now: float) -> None:
        """Drop the partial messages whose time is up."""
        for key in [k for k, p in self._partial.items() if p.expires_at <= now]:
            del self._partial[key]
            self.drop("timed_out")

    def clear(self) -> None:
        self._partial.clear()
