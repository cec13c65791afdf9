"""Typed reasons for dropping a received datagram, and their counters.

Every datagram the endpoint does not deliver is dropped for exactly one of these reasons and
counted; nothing is logged per packet. The values are small integers so that the data path can
return ``-reason`` and index a counter array without allocating.
"""

from __future__ import annotations

from enum import IntEnum


class DropReason(IntEnum):
    #: shorter than the smallest valid packet of its kind
    TRUNCATED = 1
    #: SPI 1-255 (reserved, RFC 4303 section 2.1)
    RESERVED_SPI = 2
    #: no inbound SA with that SPI
    UNKNOWN_SPI = 3
    #: sequence number 0 (never sent, RFC 4303 section 3.3.3) or beyond the ESN space
    BAD_SEQUENCE = 4
    #: sequence number already received (RFC 4303 section 3.4.3)
    REPLAYED = 5
    #: sequence number left of the replay window
    OUTSIDE_WINDOW = 6
    #: the ICV did not verify
    AUTH_FAILED = 7
    #: pad length longer than the payload, or padding octets not 1, 2, 3, ... (section 2.4)
    BAD_PADDING = 8
    #: next header is neither IPv4 (4), IPv6 (41) nor no-next-header (59)
    BAD_NEXT_HEADER = 9
    #: next header 59: a dummy packet (section 2.6), authenticated and discarded
    DUMMY = 10
    #: the inner packet's IP version or length disagrees with the ESP trailer
    BAD_INNER_PACKET = 11
    #: an RFC 3948 datagram that is neither keepalive, IKE nor ESP
    MALFORMED = 12
    #: inner source address outside the peer's allowed prefixes
    SOURCE_NOT_ALLOWED = 13
    #: an IKE message arrived and no IKE handler is installed
    NO_IKE_HANDLER = 14
    # --- outbound: packets from the inner interface that cannot be sent ----------------------
    #: no peer's allowed prefixes contain the destination
    NO_ROUTE = 15
    #: the peer has no outbound SA, or no known address yet (behind NAT, not heard from)
    NO_ENDPOINT = 16
    #: the outbound SA used its last sequence number (RFC 4303 section 3.3.3); rekey needed
    SEQUENCE_EXHAUSTED = 17
    #: the socket or the inner interface refused the packet (buffer full)
    SEND_FAILED = 18
    #: the socket reported an error on receive (an ICMP error for an earlier send, say)
    RECEIVE_ERROR = 19
    #: handling the datagram raised an exception in a core (a bug): counted, not fatal
    INTERNAL_ERROR = 20
    #: dropped by the kernel before we read it: the socket's receive buffer was full (the
    #: socket's drop count, SO_RXQ_OVFL / the drops column of /proc/net/udp)
    KERNEL_RCVBUF = 21
    #: dropped by the kernel's socket filter, which the endpoint attaches during a flood of
    #: datagrams with unknown SPIs (unknown, reserved SPIs, truncated ESP; see
    #: ``Endpoint``'s ``kernel_filter``): the socket's kernel drops while the filter is on,
    #: less the namespace's receive-buffer drops meanwhile (those count as KERNEL_RCVBUF)
    KERNEL_FILTER = 22


class DropCounters:
    """A counter per drop reason. ``counts[reason]`` is cheap enough for the data path."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: list[int] = [0] * (max(DropReason) + 1)

    def __getitem__(self, reason: DropReason) -> int:
        return self.counts[reason]

    def add(self, reason: int, n: int = 1) -> None:
        self.counts[reason] += n

    def total(self) -> int:
        return sum(self.counts)

    def as_dict(self) -> dict[str, int]:
        """Non-zero counters by lower-case reason name."""
        return {r.name.lower(): self.counts[r] for r in DropReason if self.counts[r]}
