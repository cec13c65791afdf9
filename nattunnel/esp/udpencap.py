"""RFC 3948 UDP encapsulation: what a datagram on port 4500 is, and how to build each kind.

RFC 3948 section 2 puts three things in UDP payloads on the NAT-T port, and STUN (RFC 8489)
on the same socket a fourth:

- a NAT-keepalive: exactly one octet, 0xFF (section 2.3);
- an IKE message behind a 4-octet zero non-ESP marker (section 2.2), since SPI 0 is never
  used by ESP;
- an ESP packet, whose first four octets are its non-zero SPI (section 2.1); SPIs 1-255 are
  reserved (RFC 4303 section 2.1) and never valid;
- a STUN message (RFC 8489 section 5): first two bits zero (first octet below 0x40), the
  magic cookie 0x2112A442 at offset 4, and a length field (a multiple of 4) that is the rest
  of the datagram. Our inbound SPIs all have a first octet of 0x40 or more
  (``ike.base.new_child_spi``), so ESP to us is never STUN, and since the marker (four zero
  octets) would be a STUN length of 0, i.e. a 20-octet datagram, which is too short for IKE,
  IKE is never STUN either. A message of type 0 (method 0x000, reserved) is not STUN to us:
  its first four octets are an SPI of 0 to 255 or the marker, and it stays what it was.

``classify`` sorts any byte string into one of these or a typed drop reason. The endpoint's
per-packet path does the same check inline (SPI lookup first) and calls ``classify`` only for
what is not a known SPI.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final

from ..constants import (
    ESP_ALIGN,
    ESP_FIXED_OVERHEAD,
    ESP_HEADER_LEN,
    ESP_TRAILER_LEN,
    IKE_HEADER_LEN,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    SPI_RESERVED_MAX,
    STUN_ALIGN,
    STUN_COOKIE_OFFSET,
    STUN_FIRST_OCTET_LIMIT,
    STUN_HEADER_LEN,
    STUN_MAGIC_COOKIE,
    UDP_HEADER_LEN,
)
from .drop import DropReason

_U32: Final = struct.Struct("!I")
_U16: Final = struct.Struct("!H")
#: offset of the IKE version octet in the IKE header (RFC 7296 section 3.1)
_IKE_VERSION_OFF: Final = 17
_MARKER_LEN: Final = len(NON_ESP_MARKER)


class Kind(Enum):
    KEEPALIVE = "keepalive"
    IKE = "ike"
    ESP = "esp"
    STUN = "stun"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Classified:
    kind: Kind
    #: the SPI for ESP, else 0
    spi: int = 0
    #: why, for DROP
    reason: DropReason | None = None


KEEPALIVE: Final = Classified(Kind.KEEPALIVE)
IKE: Final = Classified(Kind.IKE)
STUN: Final = Classified(Kind.STUN)


def _drop(reason: DropReason) -> Classified:
    return Classified(Kind.DROP, reason=reason)


_TRUNCATED: Final = _drop(DropReason.TRUNCATED)
_MALFORMED: Final = _drop(DropReason.MALFORMED)
_RESERVED_SPI: Final = _drop(DropReason.RESERVED_SPI)


def classify(datagram: bytes | bytearray | memoryview) -> Classified:
    """What an RFC 3948 UDP payload is. Never raises for any bytes-like input."""
    n = len(datagram)
    if n == 1:
        return KEEPALIVE if datagram[0] == NAT_KEEPALIVE[0] else _MALFORMED
    if n < _MARKER_LEN:
        return _TRUNCATED
    spi = _U32.unpack_from(datagram)[0]
    if spi == 0:
        # Non-ESP marker: an IKE header must follow, with major version 2.
        if n < _MARKER_LEN + IKE_HEADER_LEN:
            return _TRUNCATED
        if datagram[_MARKER_LEN + _IKE_VERSION_OFF] >> 4 != 2:
            return _MALFORMED
        return IKE
    if spi <= SPI_RESERVED_MAX:
        return _RESERVED_SPI
    if is_stun(datagram, 0, n):
        return STUN
    if n < ESP_HEADER_LEN:
        return _TRUNCATED
    return Classified(Kind.ESP, spi=spi)


def is_stun(buf: bytes | bytearray | memoryview, off: int, n: int) -> bool:
    """The n octets at ``buf[off:]`` have a STUN message's shape (RFC 8489 section 5): first
    two bits zero, the magic cookie at offset 4, the length field the rest of the datagram
    and a multiple of 4. For ESP to us the first octet already says no."""
    return (n >= STUN_HEADER_LEN and buf[off] < STUN_FIRST_OCTET_LIMIT
            and _U32.unpack_from(buf, off + STUN_COOKIE_OFFSET)[0] == STUN_MAGIC_COOKIE
            and _U16.unpack_from(buf, off + 2)[0] == n - STUN_HEADER_LEN
            and n % STUN_ALIGN == 0)


def ike_payload(datagram: bytes | bytearray | memoryview) -> memoryview:
    """The IKE message inside a datagram that ``classify`` called IKE (marker removed)."""
    return memoryview(datagram)[_MARKER_LEN:]


def frame_keepalive() -> bytes:
    """A NAT-keepalive datagram (RFC 3948 section 2.3)."""
    return NAT_KEEPALIVE


def frame_ike(message: bytes | bytearray | memoryview) -> bytes:
    """An IKE message for port 4500: the non-ESP marker, then the message (section 2.2)."""
    if len(message) < IKE_HEADER_LEN:
        raise ValueError(f"an IKE message is at least {IKE_HEADER_LEN} octets")
    return NON_ESP_MARKER + bytes(message)


def frame_esp(esp_packet: bytes | bytearray | memoryview) -> bytes:
    """An ESP packet for port 4500 is the UDP payload as it is (section 2.1); checks the SPI."""
    if len(esp_packet) < ESP_HEADER_LEN:
        raise ValueError(f"an ESP packet is at least {ESP_HEADER_LEN} octets")
    if _U32.unpack_from(esp_packet)[0] <= SPI_RESERVED_MAX:
        raise ValueError("ESP SPI 0-255 cannot be sent (RFC 4303 section 2.1)")
    return bytes(esp_packet)


def overhead(inner_len: int, outer_ipv6: bool = False) -> int:
    """Octets added on the wire to an inner packet: outer IP, UDP, ESP, padding, ICV."""
    pad = (-(inner_len + ESP_TRAILER_LEN)) & (ESP_ALIGN - 1)
    outer = IPV6_HEADER_LEN if outer_ipv6 else IPV4_HEADER_LEN
    return outer + UDP_HEADER_LEN + ESP_FIXED_OVERHEAD + ESP_TRAILER_LEN + pad


def inner_mtu(path_mtu: int, outer_ipv6: bool = False) -> int:
    """The largest inner packet whose ESP-in-UDP datagram fits in ``path_mtu`` octets."""
    outer = IPV6_HEADER_LEN if outer_ipv6 else IPV4_HEADER_LEN
    room = path_mtu - outer - UDP_HEADER_LEN - ESP_FIXED_OVERHEAD  # for payload + pad + trailer
    if room < ESP_ALIGN:
        raise ValueError(f"path MTU {path_mtu} leaves no room for an inner packet")
    return (room & ~(ESP_ALIGN - 1)) - ESP_TRAILER_LEN
