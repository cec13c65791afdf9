"""IKEv2 message codec (RFC 7296 section 3): sans-I/O, plain dataclasses.

An IKE message is a fixed 28-octet header (section 3.1) followed by a chain of payloads, each
behind a 4-octet generic payload header (section 3.2) whose Next Payload field names the type
of the payload after it. This module turns bytes into :class:`Message` objects and back:

- ``decode_message(data, sk=None)`` parses a message. Any input either decodes or raises
  :class:`IkeDecodeError` (or one of its subclasses); nothing else escapes, whatever the bytes.
  The exception says which notification, if any, the caller could answer with
  (``INVALID_SYNTAX``, ``INVALID_MAJOR_VERSION``, ``UNSUPPORTED_CRITICAL_PAYLOAD``) and whether
  the fault was found inside integrity-protected content (RFC 7296 section 3.10.1 allows
  ``INVALID_SYNTAX`` only then).
- ``encode_message(header, payloads, sk=None)`` builds one; the header's Next Payload and
  Length fields, every payload length and every count are computed here.

Encryption itself lives elsewhere. The caller passes an :class:`SkCipher`; this module lays
out the Encrypted payload (section 3.14): IV, ciphertext of (inner payloads, padding, pad
length), ICV; the associated data is the message from the first octet of the IKE header to the
last octet of the SK generic payload header (RFC 5282 section 5.1), which is also exactly
what a non-AEAD cipher's integrity check covers ahead of the IV and ciphertext. Outgoing
padding is the least that fills the cipher's block (for AEAD ciphers, block size 1, only the
pad-length octet, as strongSwan sends); incoming padding of any length and content is
accepted (section 3.14).

Payloads this module knows are dataclasses (SA, KE, IDi, IDr, AUTH, Nonce, Notify, Delete,
Vendor ID, TSi, TSr, SK, SKF). Any other type decodes to :class:`UnknownPayload` (raw body
kept) unless its critical bit is set, which raises :class:`UnsupportedCriticalPayload`.
Numbers come from ``nattunnel.constants``; decoded fields hold the matching ``IntEnum``
member where the value is known and a plain ``int`` otherwise.

Reserved fields and flag bits are sent as zero and ignored on receipt (section 3.1, 3.2), so
decoding then encoding reproduces the input octet for octet whenever the sender cleared them.
"""

from __future__ import annotations

import hashlib
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    summarize_address_range,
)
from typing import Any, ClassVar, Final, Protocol, Self, TypeVar, overload

from ..constants import (
    CHILD_SPI_LEN,
    COOKIE2_MAX_LEN,
    COOKIE2_MIN_LEN,
    CP_ATTR_HEADER_LEN,
    CP_HEADER_LEN,
    CP_IP6_ADDRESS_LEN,
    IKE_ATTR_FORMAT_TV,
    IKE_ATTR_HEADER_LEN,
    IKE_FLAG_INITIATOR,
    IKE_FLAG_RESPONSE,
    IKE_FLAG_VERSION,
    IKE_GENERIC_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_MAJOR_VERSION,
    IKE_NONCE_MAX,
    IKE_NONCE_MIN,
    IKE_PAYLOAD_CRITICAL,
    IKE_PROPOSAL_HEADER_LEN,
    IKE_SPI_LEN,
    IKE_TRANSFORM_HEADER_LEN,
    IKE_VERSION_2,
    LAST_SUBSTRUC_LAST,
    LAST_SUBSTRUC_PROPOSAL,
    LAST_SUBSTRUC_TRANSFORM,
    NO_NATS_ALLOWED_LEN_V4,
    NO_NATS_ALLOWED_LEN_V6,
    NOTIFY_STATUS_MIN,
    SKF_HEADER_EXTRA_LEN,
    TS_HEADER_LEN,
    TS_IPV4_LEN,
    TS_IPV6_LEN,
    AuthMethod,
    CertEncoding,
    CfgAttribute,
    CfgType,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    HashAlgorithm,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformAttr,
    TransformType,
    TsType,
)

__all__ = [
    "CP",
    "KE",
    "SA",
    "SK",
    "SKF",
    "Attribute",
    "Auth",
    "Cert",
    "CertReq",
    "Delete",
    "Fragment",
    "Header",
    "IDi",
    "IDr",
    "IkeDecodeError",
    "IkeIntegrityError",
    "InvalidMajorVersion",
    "Message",
    "Nonce",
    "Notify",
    "Payload",
    "Proposal",
    "RawTrafficSelector",
    "SkCipher",
    "TSi",
    "TSr",
    "TrafficSelector",
    "Transform",
    "UnknownPayload",
    "UnsupportedCriticalPayload",
    "VendorID",
    "decode_message",
    "decode_payloads",
    "encode_fragment",
    "encode_message",
    "encode_payloads",
    "esp_proposal",
    "format_payloads",
    "ike_proposal",
    "nat_detection_hash",
    "peek_header",
    "reassemble",
]

# --- wire layouts (RFC 7296 section 3; "x" = a RESERVED octet, ignored on receipt) ----------
#: 3.1: SPIi, SPIr, Next Payload, version, Exchange Type, Flags, Message ID, Length
_HEADER: Final = struct.Struct("!8s8sBBBBII")
#: 3.2: Next Payload, Critical + RESERVED, Payload Length
_GENERIC: Final = struct.Struct("!BBH")
#: 3.3.1: Last Substruc, RESERVED, Proposal Length, Proposal Num, Protocol ID, SPI Size,
#: Num Transforms
_PROPOSAL: Final = struct.Struct("!BxHBBBB")
#: 3.3.2: Last Substruc, RESERVED, Transform Length, Transform Type, RESERVED, Transform ID
_TRANSFORM: Final = struct.Struct("!BxHBxH")
#: 3.3.5: AF + Attribute Type, Attribute Length (TLV) or Value (TV)
_ATTRIBUTE: Final = struct.Struct("!HH")
#: 3.4: Diffie-Hellman Group Num, RESERVED
_KE: Final = struct.Struct("!Hxx")
#: 3.5 ID Type / 3.8 Auth Method / 3.13 Number of TSs, then 3 RESERVED octets
_TYPE_RESERVED3: Final = struct.Struct("!B3x")
#: 3.10: Protocol ID, SPI Size, Notify Message Type / 3.11: Protocol ID, SPI Size, Num of SPIs
_PROTO_SPI_U16: Final = struct.Struct("!BBH")
#: 3.13.1: TS Type, IP Protocol ID, Selector Length, Start Port, End Port
_TS: Final = struct.Struct("!BBHHH")
#: RFC 7383 section 2.5: Fragment Number, Total Fragments
_SKF: Final = struct.Struct("!HH")
_U16: Final = struct.Struct("!H")
_U16_MAX: Final = 0xFFFF
_U32_MAX: Final = 0xFFFFFFFF
_ATTR_TYPE_MASK: Final = 0x7FFF
#: 3.13.1: TS Type, IP Protocol ID, Selector Length (the part every selector type shares)
_TS_HEAD: Final = struct.Struct("!BBH")
#: 3.13.1: ports 0-65535 select any port
_ANY_PORTS: Final = (0, 0xFFFF)


# --- errors ----------------------------------------------------------------------------------
class IkeDecodeError(Exception):
    """The bytes are not a well-formed IKEv2 message (or payload).

    ``reason`` says what is wrong. ``notify`` is the notification that describes the fault
    (``INVALID_SYNTAX`` unless a subclass says otherwise; ``None`` for faults that must only
    be dropped). RFC 7296 section 3.10.1 allows answering ``INVALID_SYNTAX`` only for a
    message whose Message ID and integrity check were valid: ``authenticated`` is True when
    the fault was found in decrypted content. ``header`` is the message's header when it could
    be read (to address an answer), else None.
    """

    def __init__(
        self, reason: str, *, notify: NotifyType | None = NotifyType.INVALID_SYNTAX
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.notify = notify
        self.header: Header | None = None
        self.authenticated = False

    @property
    def notify_data(self) -> bytes:
        """The Notification Data to send with ``notify``."""
        return b""


class UnsupportedCriticalPayload(IkeDecodeError):
    """A payload of a type this codec does not know had its critical bit set (section 3.2):
    the message must be rejected; a request is answered with UNSUPPORTED_CRITICAL_PAYLOAD
    carrying the one-octet payload type (section 3.10.1)."""

    def __init__(self, payload_type: int) -> None:
        super().__init__(
            f"unsupported critical payload type {payload_type}",
            notify=NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
        )
        self.payload_type = payload_type

    @property
    def notify_data(self) -> bytes:
        return bytes([self.payload_type])


class InvalidMajorVersion(IkeDecodeError):
    """Major version is not 2 (section 2.5): drop, and the answer is INVALID_MAJOR_VERSION
    with version 2.0 in its header. ``header`` is set (the layout is the same as ISAKMP's)."""

    def __init__(self, major: int) -> None:
        super().__init__(
            f"IKE major version {major}, not {IKE_MAJOR_VERSION}",
            notify=NotifyType.INVALID_MAJOR_VERSION,
        )
        self.major = major


class IkeIntegrityError(IkeDecodeError):
    """The SK (or SKF) payload did not open: wrong length for the cipher, or the cipher's
    ``open`` refused it. Such a message is dropped silently (section 2.21.2)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, notify=None)


# --- small helpers ---------------------------------------------------------------------------
def _known(enum: type[IntEnum], value: int) -> int:
    """The enum member for ``value`` if the registry has one, else the plain int."""
    try:
        return enum(value)
    except ValueError:
        return value


def _pack(st: struct.Struct, *values: object) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as exc:
        raise ValueError(f"value out of range for the IKEv2 field layout: {exc}") from exc


def _need(cond: bool, reason: str) -> None:
    if not cond:
        raise IkeDecodeError(reason)


def _check_u16_len(n: int, what: str) -> None:
    if n > _U16_MAX:
        raise ValueError(f"{what} is {n} octets; a 16-bit length field holds at most 65535")


# --- header ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """The IKE header (RFC 7296 section 3.1) without its framing fields: Next Payload and
    Length are computed by ``encode_message`` and checked by ``decode_message``."""

    spi_i: bytes
    spi_r: bytes
    exchange_type: int
    flags: int
    message_id: int
    #: Major Version (high nibble) and Minor Version (low nibble); 2.0 is sent.
    version: int = IKE_VERSION_2

    def __post_init__(self) -> None:
        if len(self.spi_i) != IKE_SPI_LEN or len(self.spi_r) != IKE_SPI_LEN:
            raise ValueError("IKE SPIs are 8 octets each")
        if not (0 <= self.exchange_type <= 0xFF and 0 <= self.flags <= 0xFF):
            raise ValueError("exchange type and flags are one octet each")
        if not 0 <= self.version <= 0xFF:
            raise ValueError("version is one octet")
        if not 0 <= self.message_id <= _U32_MAX:
            raise ValueError("message ID is 32 bits")

    @classmethod
    def make(
        cls,
        exchange_type: int,
        spi_i: bytes,
        spi_r: bytes = bytes(IKE_SPI_LEN),
        *,
        message_id: int = 0,
        initiator: bool = True,
        response: bool = False,
    ) -> Header:
        """A header with the I and R flags from the two booleans (the V flag is never set)."""
        flags = (IKE_FLAG_INITIATOR if initiator else 0) | (IKE_FLAG_RESPONSE if response else 0)
        return cls(spi_i, spi_r, exchange_type, flags, message_id)

    @property
    def major_version(self) -> int:
        return self.version >> 4

    @property
    def minor_version(self) -> int:
        return self.version & 0x0F

    @property
    def is_initiator(self) -> bool:
        """I flag: sent by the original initiator of the IKE SA."""
        return bool(self.flags & IKE_FLAG_INITIATOR)

    @property
    def is_response(self) -> bool:
        """R flag: this message is a response."""
        return bool(self.flags & IKE_FLAG_RESPONSE)

    @property
    def version_flag(self) -> bool:
        """V flag: the sender can speak a higher major version."""
        return bool(self.flags & IKE_FLAG_VERSION)

    def encode(self, next_payload: int, length: int) -> bytes:
        return _pack(
            _HEADER,
            self.spi_i,
            self.spi_r,
            next_payload,
            self.version,
            self.exchange_type,
            self.flags,
            self.message_id,
            length,
        )


def _decode_header(data: bytes) -> tuple[Header, int, int]:
    if len(data) < IKE_HEADER_LEN:
        raise IkeDecodeError(f"{len(data)} octets, shorter than the 28-octet IKE header")
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = (
        _HEADER.unpack_from(data)
    )
    header = Header(spi_i, spi_r, _known(ExchangeType, exchange), flags, message_id, version)
    return header, next_payload, length


def peek_header(data: bytes | bytearray | memoryview) -> Header:
    """The header of a message, without parsing further (e.g. to find the IKE SA by SPI
    before decrypting). Raises IkeDecodeError if there are fewer than 28 octets."""
    return _decode_header(bytes(data[:IKE_HEADER_LEN]))[0]


#: offsets in the IKE header (RFC 7296 section 3.1)
_EXCHANGE_OFF: Final = 18
_FLAGS_OFF: Final = 19
_NO_SPI: Final = bytes(8)


def peek_receiver_spi(data: bytes) -> tuple[bytes, bool] | None:
    """(the receiver's IKE SPI, whether the message is an IKE_SA_INIT request that opens a
    new IKE SA) straight from the header's octets, or None if there is no header: how a
    message finds its IKE SA, at the cost of two slices, before anything is parsed."""
    if len(data) < IKE_HEADER_LEN:
        return None
    flags = data[_FLAGS_OFF]
    spi_r = data[8:16]
    if (data[_EXCHANGE_OFF] == ExchangeType.IKE_SA_INIT and not flags & IKE_FLAG_RESPONSE
            and spi_r == _NO_SPI):
        return spi_r, True
    return (spi_r if flags & IKE_FLAG_INITIATOR else data[:8]), False


def peek_nonce_and_cookie(data: bytes | bytearray | memoryview
                          ) -> tuple[bytes | None, bytes | None]:
    """(Ni, COOKIE data) of an unencrypted message, either None if absent, from the payload
    chain's generic headers alone: what a responder under load needs to check a cookie
    (RFC 7296 section 2.6) before it spends a full decode. Raises IkeDecodeError if the
    chain is broken."""
    mv = memoryview(data)
    _, next_payload, length = _decode_header(bytes(mv[:IKE_HEADER_LEN]))
    end = min(length, len(mv))
    off = IKE_HEADER_LEN
    nonce = cookie = None
    while next_payload != PayloadType.NONE:
        _need(off + IKE_GENERIC_HEADER_LEN <= end, "truncated payload header")
        following, _, plen = _GENERIC.unpack_from(mv, off)
        _need(plen >= IKE_GENERIC_HEADER_LEN and off + plen <= end, "bad payload length")
        body = mv[off + IKE_GENERIC_HEADER_LEN : off + plen]
        if next_payload == PayloadType.NONCE and nonce is None:
            nonce = bytes(body)
        elif (next_payload == PayloadType.NOTIFY and cookie is None
              and len(body) >= _PROTO_SPI_U16.size):
            _, spi_size, notify_type = _PROTO_SPI_U16.unpack_from(body)
            if notify_type == NotifyType.COOKIE:
                cookie = bytes(body[_PROTO_SPI_U16.size + spi_size :])
        next_payload = following
        off += plen
    return nonce, cookie


# --- payloads --------------------------------------------------------------------------------
class Payload(ABC):
    """A payload's body (everything after its generic payload header)."""

    #: the payload type this class encodes (RFC 7296 section 3.2)
    TYPE: ClassVar[int]

    @property
    def payload_type(self) -> int:
        return self.TYPE

    @abstractmethod
    def encode_body(self) -> bytes:
        """The body, without the generic payload header."""


@dataclass
class UnknownPayload(Payload):
    """A payload of a type this codec does not parse, kept as it came."""

    type_id: int
    data: bytes
    critical: bool = False

    TYPE: ClassVar[int] = PayloadType.NONE

    @property
    def payload_type(self) -> int:
        return self.type_id

    def encode_body(self) -> bytes:
        return self.data


# SA (3.3) -----------------------------------------------------------------------------------
@dataclass
class Attribute:
    """A transform attribute (section 3.3.5): an ``int`` value is sent in TV format (AF=1,
    16-bit value, as Key Length must be), a ``bytes`` value in TLV format."""

    type: int
    value: int | bytes

    def encode(self) -> bytes:
        if not 0 <= self.type <= _ATTR_TYPE_MASK:
            raise ValueError("attribute type is 15 bits")
        if isinstance(self.value, int):
            return _pack(_ATTRIBUTE, IKE_ATTR_FORMAT_TV | self.type, self.value)
        _check_u16_len(len(self.value), "TLV attribute value")
        return _ATTRIBUTE.pack(self.type, len(self.value)) + self.value


@dataclass
class Transform:
    """A transform substructure (section 3.3.2)."""

    type: int
    id: int
    attributes: list[Attribute] = field(default_factory=list)

    @classmethod
    def make(cls, type: int, id: int, key_length: int | None = None) -> Transform:
        attrs = [] if key_length is None else [Attribute(TransformAttr.KEY_LENGTH, key_length)]
        return cls(type, id, attrs)

    @property
    def key_length(self) -> int | None:
        """The Key Length attribute (bits), if present in TV form."""
        for a in self.attributes:
            if a.type == TransformAttr.KEY_LENGTH and isinstance(a.value, int):
                return a.value
        return None

    def encode(self, last: bool) -> bytes:
        attrs = b"".join(a.encode() for a in self.attributes)
        length = IKE_TRANSFORM_HEADER_LEN + len(attrs)
        _check_u16_len(length, "transform")
        more = LAST_SUBSTRUC_LAST if last else LAST_SUBSTRUC_TRANSFORM
        return _pack(_TRANSFORM, more, length, self.type, self.id) + attrs


@dataclass
class Proposal:
    """A proposal substructure (section 3.3.1)."""

    number: int
    protocol: int
    transforms: list[Transform]
    #: empty in IKE_SA_INIT; 8 octets for IKE in a rekey; 4 for ESP and AH
    spi: bytes = b""

    def get(self, transform_type: int) -> list[Transform]:
        """The transforms of one type, in order."""
        return [t for t in self.transforms if t.type == transform_type]

    def encode(self, last: bool) -> bytes:
        n = len(self.transforms)
        body = b"".join(t.encode(i == n - 1) for i, t in enumerate(self.transforms))
        length = IKE_PROPOSAL_HEADER_LEN + len(self.spi) + len(body)
        _check_u16_len(length, "proposal")
        more = LAST_SUBSTRUC_LAST if last else LAST_SUBSTRUC_PROPOSAL
        head = _pack(_PROPOSAL, more, length, self.number, self.protocol, len(self.spi), n)
        return head + self.spi + body


def _spi_size_ok(protocol: int, size: int) -> bool:
    """Section 3.3.1: IKE 0 (initial exchange) or 8 (rekey); AH and ESP 4; others unchecked."""
    if protocol == ProtocolId.IKE:
        return size in (0, IKE_SPI_LEN)
    if protocol in (ProtocolId.AH, ProtocolId.ESP):
        return size == CHILD_SPI_LEN
    return True


def _decode_attributes(data: bytes) -> list[Attribute]:
    attrs: list[Attribute] = []
    off, n = 0, len(data)
    while off < n:
        _need(n - off >= IKE_ATTR_HEADER_LEN, "truncated transform attribute")
        af_type, value = _ATTRIBUTE.unpack_from(data, off)
        atype = _known(TransformAttr, af_type & _ATTR_TYPE_MASK)
        off += IKE_ATTR_HEADER_LEN
        if af_type & IKE_ATTR_FORMAT_TV:
            attrs.append(Attribute(atype, value))
        else:
            _need(off + value <= n, "TLV attribute overruns its transform")
            attrs.append(Attribute(atype, data[off : off + value]))
            off += value
    return attrs


def _decode_transforms(data: bytes, count: int) -> list[Transform]:
    transforms: list[Transform] = []
    off, n = 0, len(data)
    more = LAST_SUBSTRUC_LAST
    while off < n:
        _need(n - off >= IKE_TRANSFORM_HEADER_LEN, "truncated transform substructure")
        more, length, ttype, tid = _TRANSFORM.unpack_from(data, off)
        _need(
            more in (LAST_SUBSTRUC_LAST, LAST_SUBSTRUC_TRANSFORM),
            f"transform Last Substruc is {more}, not 0 or 3",
        )
        _need(length >= IKE_TRANSFORM_HEADER_LEN, f"transform length {length} < 8")
        _need(off + length <= n, "transform overruns its proposal")
        ttype = _known(TransformType, ttype)
        transforms.append(
            Transform(
                ttype,
                _transform_id(ttype, tid),
                _decode_attributes(data[off + IKE_TRANSFORM_HEADER_LEN : off + length]),
            )
        )
        off += length
        if more == LAST_SUBSTRUC_LAST:
            _need(off == n, "data after the last transform of a proposal")
    _need(more == LAST_SUBSTRUC_LAST, "proposal ends while its last transform announces more")
    _need(
        len(transforms) == count,
        f"proposal announces {count} transforms but holds {len(transforms)}",
    )
    return transforms


_TRANSFORM_IDS: Final[dict[int, type[IntEnum]]] = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhGroup,
    TransformType.ESN: EsnId,
}


def _transform_id(ttype: int, tid: int) -> int:
    enum = _TRANSFORM_IDS.get(ttype)
    return tid if enum is None else _known(enum, tid)


@dataclass
class SA(Payload):
    """Security Association payload (section 3.3): one or more proposals."""

    proposals: list[Proposal]

    TYPE: ClassVar[int] = PayloadType.SA

    def encode_body(self) -> bytes:
        if not self.proposals:
            raise ValueError("an SA payload holds at least one proposal")
        n = len(self.proposals)
        return b"".join(p.encode(i == n - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def decode_body(cls, body: bytes) -> SA:
        proposals: list[Proposal] = []
        off, n = 0, len(body)
        _need(n > 0, "SA payload without proposals")
        while True:
            _need(n - off >= IKE_PROPOSAL_HEADER_LEN, "truncated proposal substructure")
            more, length, number, protocol, spi_size, count = _PROPOSAL.unpack_from(body, off)
            _need(
                more in (LAST_SUBSTRUC_LAST, LAST_SUBSTRUC_PROPOSAL),
                f"proposal Last Substruc is {more}, not 0 or 2",
            )
            _need(length >= IKE_PROPOSAL_HEADER_LEN + spi_size, "proposal shorter than its SPI")
            _need(off + length <= n, "proposal overruns its SA payload")
            protocol = _known(ProtocolId, protocol)
            _need(
                _spi_size_ok(protocol, spi_size),
                f"SPI size {spi_size} invalid for protocol {protocol}",
            )
            spi_end = off + IKE_PROPOSAL_HEADER_LEN + spi_size
            proposals.append(
                Proposal(
                    number,
                    protocol,
                    _decode_transforms(body[spi_end : off + length], count),
                    body[off + IKE_PROPOSAL_HEADER_LEN : spi_end],
                )
            )
            off += length
            if more == LAST_SUBSTRUC_LAST:
                _need(off == n, "data after the last proposal of an SA payload")
                return cls(proposals)
            _need(off < n, "SA payload ends while its last proposal announces more")


def ike_proposal(
    number: int,
    *,
    encr: int,
    prf: int,
    dh: int,
    key_length: int | None = None,
    integ: int | None = None,
    spi: bytes = b"",
) -> Proposal:
    """An IKE proposal with one transform of each type, in the order charon sends them
    (ENCR, INTEG if any, PRF, DH). ``spi`` is empty in IKE_SA_INIT, 8 octets in a rekey."""
    transforms = [Transform.make(TransformType.ENCR, encr, key_length)]
    if integ is not None:
        transforms.append(Transform.make(TransformType.INTEG, integ))
    transforms.append(Transform.make(TransformType.PRF, prf))
    transforms.append(Transform.make(TransformType.DH, dh))
    return Proposal(number, ProtocolId.IKE, transforms, spi)


def esp_proposal(
    number: int,
    spi: bytes,
    *,
    encr: int,
    key_length: int | None = None,
    integ: int | None = None,
    dh: int | None = None,
    esn: Sequence[int] = (EsnId.NO_ESN,),
) -> Proposal:
    """An ESP proposal (ENCR, INTEG if any, DH if any, then the ESN transforms)."""
    transforms = [Transform.make(TransformType.ENCR, encr, key_length)]
    if integ is not None:
        transforms.append(Transform.make(TransformType.INTEG, integ))
    if dh is not None:
        transforms.append(Transform.make(TransformType.DH, dh))
    transforms.extend(Transform.make(TransformType.ESN, e) for e in esn)
    return Proposal(number, ProtocolId.ESP, transforms, spi)


# KE (3.4) -----------------------------------------------------------------------------------
@dataclass
class KE(Payload):
    """Key Exchange payload (section 3.4)."""

    group: int
    data: bytes

    TYPE: ClassVar[int] = PayloadType.KE

    def encode_body(self) -> bytes:
        return _pack(_KE, self.group) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> KE:
        _need(len(body) >= _KE.size, "truncated KE payload")
        (group,) = _KE.unpack_from(body)
        return cls(_known(DhGroup, group), body[_KE.size :])


# IDi / IDr (3.5) ----------------------------------------------------------------------------
_ID_ADDR_LEN: Final[dict[int, int]] = {IdType.IPV4_ADDR: 4, IdType.IPV6_ADDR: 16}


@dataclass
class _Identification(Payload):
    id_type: int
    data: bytes

    def encode_body(self) -> bytes:
        return _pack(_TYPE_RESERVED3, self.id_type) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        _need(len(body) >= _TYPE_RESERVED3.size, "truncated identification payload")
        id_type = _known(IdType, body[0])
        data = body[_TYPE_RESERVED3.size :]
        want = _ID_ADDR_LEN.get(id_type)
        _need(want is None or len(data) == want, f"ID type {id_type} with {len(data)} octets")
        return cls(id_type, data)

    @classmethod
    def ip(cls, address: IPv4Address | IPv6Address) -> Self:
        """ID_IPV4_ADDR or ID_IPV6_ADDR."""
        kind = IdType.IPV4_ADDR if address.version == 4 else IdType.IPV6_ADDR
        return cls(kind, address.packed)

    @classmethod
    def fqdn(cls, name: str) -> Self:
        """ID_FQDN: the name in ASCII, no terminator (section 3.5)."""
        return cls(IdType.FQDN, name.encode("ascii"))

    @classmethod
    def rfc822(cls, address: str) -> Self:
        return cls(IdType.RFC822_ADDR, address.encode("ascii"))

    @classmethod
    def key_id(cls, key_id: bytes) -> Self:
        """ID_KEY_ID: opaque octets (what strongSwan calls a "keyid:" identity)."""
        return cls(IdType.KEY_ID, key_id)

    @property
    def value(self) -> IPv4Address | IPv6Address | str | bytes:
        """The identity: an address, a string (FQDN, RFC 822; ValueError if not ASCII) or
        the raw octets for any other type."""
        if self.id_type == IdType.IPV4_ADDR:
            return IPv4Address(self.data)
        if self.id_type == IdType.IPV6_ADDR:
            return IPv6Address(self.data)
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("ascii")
        return self.data


@dataclass
class IDi(_Identification):
    """Identification - Initiator (section 3.5)."""

    TYPE: ClassVar[int] = PayloadType.IDI


@dataclass
class IDr(_Identification):
    """Identification - Responder (section 3.5)."""

    TYPE: ClassVar[int] = PayloadType.IDR


# CERT / CERTREQ (3.6, 3.7) ------------------------------------------------------------------
#: a CERTREQ's Certification Authority field: SHA-1 hashes of CA public keys (section 3.7)
CERTREQ_HASH_LEN: Final = 20


@dataclass
class Cert(Payload):
    """Certificate payload (section 3.6): an encoding (4, X.509 Certificate - Signature: one
    DER certificate) and its data."""

    encoding: int
    data: bytes

    TYPE: ClassVar[int] = PayloadType.CERT

    def encode_body(self) -> bytes:
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Cert:
        _need(len(body) >= 1, "truncated CERT payload")
        return cls(_known(CertEncoding, body[0]), body[1:])


@dataclass
class CertReq(Payload):
    """Certificate Request payload (section 3.7): an encoding and, for X.509, the SHA-1
    hashes of the SubjectPublicKeyInfo of the CAs the sender trusts, concatenated."""

    encoding: int
    data: bytes = b""

    TYPE: ClassVar[int] = PayloadType.CERTREQ

    def encode_body(self) -> bytes:
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> CertReq:
        _need(len(body) >= 1, "truncated CERTREQ payload")
        return cls(_known(CertEncoding, body[0]), body[1:])

    def hashes(self) -> list[bytes]:
        """The CA hashes (ValueError if the field is not whole 20-octet hashes)."""
        if len(self.data) % CERTREQ_HASH_LEN:
            raise ValueError("CERTREQ data is not a list of 20-octet SHA-1 hashes")
        return [self.data[i:i + CERTREQ_HASH_LEN]
                for i in range(0, len(self.data), CERTREQ_HASH_LEN)]


# AUTH (3.8) ---------------------------------------------------------------------------------
@dataclass
class Auth(Payload):
    """Authentication payload (section 3.8)."""

    method: int
    data: bytes

    TYPE: ClassVar[int] = PayloadType.AUTH

    def encode_body(self) -> bytes:
        return _pack(_TYPE_RESERVED3, self.method) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Auth:
        _need(len(body) >= _TYPE_RESERVED3.size, "truncated AUTH payload")
        return cls(_known(AuthMethod, body[0]), body[_TYPE_RESERVED3.size :])

    @classmethod
    def digital_signature(cls, algorithm_id: bytes, signature: bytes) -> Auth:
        """RFC 7427 section 3: method 14, data = length octet, DER AlgorithmIdentifier,
        signature (for Ed25519: ``ED25519_ALGORITHM_ID``)."""
        if not 0 < len(algorithm_id) <= 0xFF:
            raise ValueError("AlgorithmIdentifier is 1 to 255 octets")
        data = bytes([len(algorithm_id)]) + algorithm_id + signature
        return cls(AuthMethod.DIGITAL_SIGNATURE, data)

    def signature_parts(self) -> tuple[bytes, bytes]:
        """(AlgorithmIdentifier, signature) of RFC 7427 data; ValueError if not that."""
        if self.method != AuthMethod.DIGITAL_SIGNATURE:
            raise ValueError(f"auth method {self.method} is not Digital Signature (14)")
        if not self.data or len(self.data) < 1 + self.data[0]:
            raise ValueError("truncated RFC 7427 signature data")
        n = self.data[0]
        return self.data[1 : 1 + n], self.data[1 + n :]


# Nonce (3.9) --------------------------------------------------------------------------------
@dataclass
class Nonce(Payload):
    """Nonce payload, Ni or Nr (section 3.9): 16 to 256 octets."""

    data: bytes

    TYPE: ClassVar[int] = PayloadType.NONCE

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Nonce:
        _need(
            IKE_NONCE_MIN <= len(body) <= IKE_NONCE_MAX,
            f"nonce of {len(body)} octets, not 16 to 256",
        )
        return cls(body)


# Notify (3.10) ------------------------------------------------------------------------------
@dataclass
class Notify(Payload):
    """Notify payload (section 3.10). ``protocol`` is 0 when there is no SPI."""

    notify_type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    TYPE: ClassVar[int] = PayloadType.NOTIFY

    @property
    def is_error(self) -> bool:
        return self.notify_type < NOTIFY_STATUS_MIN

    def encode_body(self) -> bytes:
        head = _pack(_PROTO_SPI_U16, self.protocol, len(self.spi), self.notify_type)
        return head + self.spi + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> Notify:
        _need(len(body) >= _PROTO_SPI_U16.size, "truncated Notify payload")
        protocol, spi_size, notify_type = _PROTO_SPI_U16.unpack_from(body)
        spi_end = _PROTO_SPI_U16.size + spi_size
        _need(spi_end <= len(body), "Notify SPI overruns its payload")
        return cls(
            _known(NotifyType, notify_type),
            body[spi_end:],
            _known(ProtocolId, protocol),
            body[_PROTO_SPI_U16.size : spi_end],
        )

    @classmethod
    def signature_hash_algorithms(cls, algorithms: Iterable[int]) -> Notify:
        """RFC 7427 section 4: SIGNATURE_HASH_ALGORITHMS, a list of 16-bit hash IDs."""
        data = b"".join(_pack(_U16, a) for a in algorithms)
        return cls(NotifyType.SIGNATURE_HASH_ALGORITHMS, data)

    def hash_algorithms(self) -> list[int]:
        """The 16-bit values of a SIGNATURE_HASH_ALGORITHMS notify (ValueError if odd)."""
        if len(self.data) % 2:
            raise ValueError("SIGNATURE_HASH_ALGORITHMS data has an odd length")
        return [_known(HashAlgorithm, v) for (v,) in _U16.iter_unpack(self.data)]

    @classmethod
    def invalid_ke_payload(cls, group: int) -> Notify:
        """Section 3.10.1: INVALID_KE_PAYLOAD carries the accepted group (2 octets)."""
        return cls(NotifyType.INVALID_KE_PAYLOAD, _pack(_U16, group))

    # --- RFC 4555 (MOBIKE) ------------------------------------------------------------------
    @classmethod
    def additional_address(cls, address: IPv4Address | IPv6Address) -> Notify:
        """RFC 4555 section 4.2.2: ADDITIONAL_IP4_ADDRESS (4 octets) or
        ADDITIONAL_IP6_ADDRESS (16 octets), one address each."""
        kind = (NotifyType.ADDITIONAL_IP4_ADDRESS if address.version == 4
                else NotifyType.ADDITIONAL_IP6_ADDRESS)
        return cls(kind, address.packed)

    def address(self) -> IPv4Address | IPv6Address:
        """The address of an ADDITIONAL_IP4_ADDRESS / ADDITIONAL_IP6_ADDRESS notify
        (ValueError for another notify or the wrong length)."""
        if self.notify_type == NotifyType.ADDITIONAL_IP4_ADDRESS and len(self.data) == 4:
            return IPv4Address(self.data)
        if self.notify_type == NotifyType.ADDITIONAL_IP6_ADDRESS and len(self.data) == 16:
            return IPv6Address(self.data)
        raise ValueError(f"notify {self.notify_type} with {len(self.data)} octets is not an "
                         "additional address")

    def cookie2_ok(self) -> bool:
        """RFC 4555 section 4.2.5 (3.7): a COOKIE2 is 8 to 64 octets."""
        return COOKIE2_MIN_LEN <= len(self.data) <= COOKIE2_MAX_LEN

    @classmethod
    def no_nats_allowed(cls, src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address,
                        src_port: int, dst_port: int) -> Notify:
        """RFC 4555 section 4.2.6 (NAT_PREVENTION, 3.9): the packet's source and destination
        address and ports."""
        return cls(NotifyType.NO_NATS_ALLOWED,
                   src.packed + dst.packed + _pack(_U16, src_port) + _pack(_U16, dst_port))

    def nats_allowed_addresses(self) -> tuple[IPv4Address | IPv6Address,
                                              IPv4Address | IPv6Address, int, int]:
        """(source, destination, source port, destination port) of NO_NATS_ALLOWED
        (ValueError unless 12 or 36 octets)."""
        n = len(self.data)
        if n not in (NO_NATS_ALLOWED_LEN_V4, NO_NATS_ALLOWED_LEN_V6):
            raise ValueError(f"NO_NATS_ALLOWED of {n} octets, not 12 or 36")
        size = 4 if n == NO_NATS_ALLOWED_LEN_V4 else 16
        make = IPv4Address if size == 4 else IPv6Address
        (sp,) = _U16.unpack_from(self.data, 2 * size)
        (dp,) = _U16.unpack_from(self.data, 2 * size + 2)
        return make(self.data[:size]), make(self.data[size:2 * size]), sp, dp


def nat_detection_hash(
    spi_i: bytes, spi_r: bytes, address: IPv4Address | IPv6Address, port: int
) -> bytes:
    """RFC 7296 section 2.23: SHA-1(SPIi | SPIr | IP address | port), the data of
    NAT_DETECTION_SOURCE_IP / NAT_DETECTION_DESTINATION_IP (SPIr zero in IKE_SA_INIT
    requests)."""
    return hashlib.sha1(spi_i + spi_r + address.packed + _pack(_U16, port)).digest()


# Delete (3.11) ------------------------------------------------------------------------------
@dataclass
class Delete(Payload):
    """Delete payload (section 3.11): IKE with no SPIs, or AH/ESP with 4-octet SPIs."""

    protocol: int
    spis: list[bytes] = field(default_factory=list)

    TYPE: ClassVar[int] = PayloadType.DELETE

    def encode_body(self) -> bytes:
        if self.protocol == ProtocolId.IKE:
            if self.spis:
                raise ValueError("Delete(IKE) carries no SPIs (the SA is the message's)")
            size = 0
        elif self.protocol in (ProtocolId.AH, ProtocolId.ESP):
            if any(len(s) != CHILD_SPI_LEN for s in self.spis):
                raise ValueError("AH/ESP SPIs are 4 octets")
            size = CHILD_SPI_LEN
        else:
            raise ValueError(f"Delete protocol must be IKE, AH or ESP, not {self.protocol}")
        return _pack(_PROTO_SPI_U16, self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, body: bytes) -> Delete:
        _need(len(body) >= _PROTO_SPI_U16.size, "truncated Delete payload")
        protocol, spi_size, count = _PROTO_SPI_U16.unpack_from(body)
        if protocol == ProtocolId.IKE:
            _need(spi_size == 0 and count == 0, "Delete(IKE) with SPIs")
        elif protocol in (ProtocolId.AH, ProtocolId.ESP):
            _need(spi_size == CHILD_SPI_LEN, f"Delete(AH/ESP) with SPI size {spi_size}")
        else:
            raise IkeDecodeError(f"Delete with protocol {protocol}")
        spis = body[_PROTO_SPI_U16.size :]
        _need(len(spis) == spi_size * count, "Delete SPI count disagrees with its length")
        return cls(
            _known(ProtocolId, protocol),
            [spis[i : i + spi_size] for i in range(0, len(spis), spi_size or 1)],
        )


# Vendor ID (3.12) ---------------------------------------------------------------------------
@dataclass
class VendorID(Payload):
    """Vendor ID payload (section 3.12)."""

    data: bytes

    TYPE: ClassVar[int] = PayloadType.VENDOR_ID

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> VendorID:
        return cls(body)


# CP (3.15) ----------------------------------------------------------------------------------
#: the value lengths section 3.15.1 allows for the attributes nattunnel reads (0: a request)
_CP_VALUE_LENS: Final[dict[int, tuple[int, ...]]] = {
    CfgAttribute.INTERNAL_IP4_ADDRESS: (0, 4), CfgAttribute.INTERNAL_IP4_NETMASK: (0, 4),
    CfgAttribute.INTERNAL_IP4_DNS: (0, 4),
    CfgAttribute.INTERNAL_IP6_ADDRESS: (0, CP_IP6_ADDRESS_LEN),
    CfgAttribute.INTERNAL_IP6_DNS: (0, 16),
}


@dataclass
class CP(Payload):
    """Configuration payload (section 3.15): a CFG type and (attribute type, value) pairs,
    in order; unknown attribute types are kept as they came (section 3.15.1: ignored).
    Messages keep a CP as an ``UnknownPayload`` (the codec decodes no CP on its own); the
    road-warrior code reads it with ``CP.of(message)``."""

    cfg_type: int
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    TYPE: ClassVar[int] = PayloadType.CP

    def encode_body(self) -> bytes:
        out = bytearray(_pack(_CP_HEADER, self.cfg_type, bytes(3)))
        for attr, value in self.attributes:
            _check_u16_len(len(value), "a CP attribute value")
            out += _pack(_CP_ATTR, attr & 0x7FFF, len(value)) + value
        return bytes(out)

    @classmethod
    def decode_body(cls, body: bytes) -> CP:
        _need(len(body) >= CP_HEADER_LEN, "truncated CP payload")
        cfg_type = body[0]
        attrs: list[tuple[int, bytes]] = []
        off = CP_HEADER_LEN
        while off < len(body):
            _need(len(body) - off >= CP_ATTR_HEADER_LEN, "truncated CP attribute")
            attr, length = _CP_ATTR.unpack_from(body, off)
            attr &= 0x7FFF  # the R bit is reserved
            off += CP_ATTR_HEADER_LEN
            _need(off + length <= len(body), "CP attribute overruns the payload")
            allowed = _CP_VALUE_LENS.get(attr)
            _need(allowed is None or length in allowed,
                  f"CP attribute {attr} of {length} octets")
            attrs.append((attr, body[off : off + length]))
            off += length
        return cls(cfg_type, attrs)

    @classmethod
    def of(cls, msg: Message) -> CP | None:
        """The message's first CP payload, decoded; None without one. IkeDecodeError if it
        is malformed."""
        for p in msg.payloads:
            if isinstance(p, CP):
                return p
            if isinstance(p, UnknownPayload) and p.type_id == PayloadType.CP:
                return cls.decode_body(p.data)
        return None

    def values(self, attr: int) -> list[bytes]:
        """The non-empty values of attribute type ``attr``, in order."""
        return [v for a, v in self.attributes if a == attr and v]

    def addresses(self) -> list[IPv4Network | IPv6Network]:
        """INTERNAL_IP4_ADDRESS as /32 and INTERNAL_IP6_ADDRESS with its prefix length."""
        out: list[IPv4Network | IPv6Network] = [
            IPv4Network(IPv4Address(v)) for v in self.values(CfgAttribute.INTERNAL_IP4_ADDRESS)]
        for v in self.values(CfgAttribute.INTERNAL_IP6_ADDRESS):
            _need(v[16] <= 128, f"INTERNAL_IP6_ADDRESS with prefix length {v[16]}")
            out.append(IPv6Network(IPv6Address(v[:16])))
        return out

    def dns(self) -> list[IPv4Address | IPv6Address]:
        """INTERNAL_IP4_DNS and INTERNAL_IP6_DNS, IPv4 first."""
        return [*(IPv4Address(v) for v in self.values(CfgAttribute.INTERNAL_IP4_DNS)),
                *(IPv6Address(v) for v in self.values(CfgAttribute.INTERNAL_IP6_DNS))]

    @classmethod
    def reply(cls, addresses: Sequence[IPv4Address | IPv6Address],
              dns: Sequence[IPv4Address | IPv6Address], *, cfg_type: int = CfgType.CFG_REPLY
              ) -> CP:
        """A CFG_REPLY with these addresses (an IPv6 one with prefix length 128, as
        strongSwan sends it) and DNS servers."""
        attrs: list[tuple[int, bytes]] = []
        for a in addresses:
            if a.version == 4:
                attrs.append((CfgAttribute.INTERNAL_IP4_ADDRESS, a.packed))
            else:
                attrs.append((CfgAttribute.INTERNAL_IP6_ADDRESS, a.packed + bytes([128])))
        for d in dns:
            attrs.append((CfgAttribute.INTERNAL_IP4_DNS if d.version == 4
                          else CfgAttribute.INTERNAL_IP6_DNS, d.packed))
        return cls(cfg_type, attrs)


_CP_HEADER: Final = struct.Struct("!B3s")
_CP_ATTR: Final = struct.Struct("!HH")


# TSi / TSr (3.13) ---------------------------------------------------------------------------
Address = IPv4Address | IPv6Address


@dataclass
class TrafficSelector:
    """TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE (section 3.13.1), by the addresses' family.
    IP protocol 0 means any; ports 0-65535 any (65535-0 is OPAQUE)."""

    start: Address
    end: Address
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 0xFFFF

    @classmethod
    def from_network(
        cls,
        network: IPv4Network | IPv6Network,
        ip_protocol: int = 0,
        ports: tuple[int, int] = _ANY_PORTS,
    ) -> TrafficSelector:
        return cls(
            network.network_address, network.broadcast_address, ip_protocol, ports[0], ports[1]
        )

    @property
    def ts_type(self) -> int:
        return TsType.IPV4_ADDR_RANGE if self.start.version == 4 else TsType.IPV6_ADDR_RANGE

    def networks(self) -> list[IPv4Network] | list[IPv6Network]:
        """The address range as the fewest networks (empty if start > end)."""
        s, e = self.start, self.end
        if isinstance(s, IPv4Address) and isinstance(e, IPv4Address):
            return list(summarize_address_range(s, e)) if s <= e else []
        if isinstance(s, IPv6Address) and isinstance(e, IPv6Address):
            return list(summarize_address_range(s, e)) if s <= e else []
        raise ValueError("traffic selector start and end are of different families")

    def encode(self) -> bytes:
        if self.start.version != self.end.version:
            raise ValueError("traffic selector start and end are of different families")
        length = TS_IPV4_LEN if self.start.version == 4 else TS_IPV6_LEN
        head = _pack(
            _TS, self.ts_type, self.ip_protocol, length, self.start_port, self.end_port
        )
        return head + self.start.packed + self.end.packed


@dataclass
class RawTrafficSelector:
    """A traffic selector of a type other than 7 and 8, kept as it came (after its
    4-octet type / protocol / length header)."""

    ts_type: int
    ip_protocol: int
    data: bytes

    def encode(self) -> bytes:
        length = TS_HEADER_LEN + len(self.data)
        _check_u16_len(length, "traffic selector")
        return _pack(_TS_HEAD, self.ts_type, self.ip_protocol, length) + self.data


AnySelector = TrafficSelector | RawTrafficSelector


def _decode_selectors(data: bytes, count: int) -> list[AnySelector]:
    selectors: list[AnySelector] = []
    off, n = 0, len(data)
    for _ in range(count):
        _need(n - off >= TS_HEADER_LEN, "truncated traffic selector")
        ts_type, proto, length = _TS_HEAD.unpack_from(data, off)
        _need(length >= TS_HEADER_LEN, f"traffic selector length {length} < 4")
        _need(off + length <= n, "traffic selector overruns its payload")
        ts_type = _known(TsType, ts_type)
        if ts_type in (TsType.IPV4_ADDR_RANGE, TsType.IPV6_ADDR_RANGE):
            v4 = ts_type == TsType.IPV4_ADDR_RANGE
            want = TS_IPV4_LEN if v4 else TS_IPV6_LEN
            _need(length == want, f"traffic selector type {ts_type} with length {length}")
            _, _, _, start_port, end_port = _TS.unpack_from(data, off)
            alen = (want - _TS.size) // 2
            a = data[off + _TS.size : off + _TS.size + alen]
            b = data[off + _TS.size + alen : off + want]
            start: Address = IPv4Address(a) if v4 else IPv6Address(a)
            end: Address = IPv4Address(b) if v4 else IPv6Address(b)
            selectors.append(TrafficSelector(start, end, proto, start_port, end_port))
        else:
            selectors.append(
                RawTrafficSelector(ts_type, proto, data[off + TS_HEADER_LEN : off + length])
            )
        off += length
    _need(off == n, "data after the announced traffic selectors")
    return selectors


@dataclass
class _TrafficSelectors(Payload):
    selectors: list[AnySelector]

    def encode_body(self) -> bytes:
        if len(self.selectors) > 0xFF:
            raise ValueError("at most 255 traffic selectors per payload")
        body = b"".join(s.encode() for s in self.selectors)
        return _pack(_TYPE_RESERVED3, len(self.selectors)) + body

    @classmethod
    def decode_body(cls, body: bytes) -> Self:
        _need(len(body) >= _TYPE_RESERVED3.size, "truncated traffic selector payload")
        return cls(_decode_selectors(body[_TYPE_RESERVED3.size :], body[0]))

    @classmethod
    def of(
        cls, *networks: IPv4Network | IPv6Network, ip_protocol: int = 0,
        ports: tuple[int, int] = _ANY_PORTS,
    ) -> Self:
        """A payload with one selector per network."""
        return cls([TrafficSelector.from_network(n, ip_protocol, ports) for n in networks])


@dataclass
class TSi(_TrafficSelectors):
    """Traffic Selector - Initiator (section 3.13)."""

    TYPE: ClassVar[int] = PayloadType.TSI


@dataclass
class TSr(_TrafficSelectors):
    """Traffic Selector - Responder (section 3.13)."""

    TYPE: ClassVar[int] = PayloadType.TSR


# SK (3.14) and SKF (RFC 7383) ---------------------------------------------------------------
@dataclass
class SK(Payload):
    """An Encrypted payload as it is on the wire (section 3.14): ``first_payload`` is its
    Next Payload field (the type of the first inner payload), ``body`` = IV || ciphertext ||
    ICV. ``decode_message`` returns this when it has no cipher; ``encode_message`` sends it
    as it is (it must be the last payload)."""

    first_payload: int
    body: bytes

    TYPE: ClassVar[int] = PayloadType.SK

    def encode_body(self) -> bytes:
        return self.body


@dataclass
class SKF(Payload):
    """An Encrypted Fragment payload as it is on the wire (RFC 7383 section 2.5)."""

    first_payload: int
    number: int
    total: int
    body: bytes

    TYPE: ClassVar[int] = PayloadType.SKF

    def encode_body(self) -> bytes:
        return _pack(_SKF, self.number, self.total) + self.body

    @classmethod
    def decode_body(cls, first_payload: int, body: bytes) -> SKF:
        _need(len(body) >= _SKF.size, "truncated SKF payload")
        number, total = _SKF.unpack_from(body)
        _need(
            1 <= number <= total,
            f"fragment number {number} of {total} (both >= 1, number <= total)",
        )
        return cls(first_payload, number, total, body[_SKF.size :])


@dataclass
class Fragment:
    """The opened content of one SKF payload: the inner payloads' octets of fragment
    ``number`` (padding removed). ``first_payload`` is meaningful in fragment 1 only."""

    number: int
    total: int
    first_payload: int
    data: bytes


class SkCipher(Protocol):
    """What the codec needs from an SK cipher (the keys and nonce rules stay behind it).

    ``seal(aad, plaintext)`` returns IV || ciphertext || ICV, exactly ``iv_len +
    len(plaintext) + icv_len`` octets; ``open(aad, iv_ct_icv)`` returns the plaintext (still
    padded) or raises (any exception) if the integrity check fails. The plaintext is always
    a multiple of ``block_size`` octets (1 for AEAD ciphers: AES-GCM, AES-CCM, ChaCha20-
    Poly1305). The AAD is the message from the IKE header's first octet through the SK (or
    SKF) payload's header, with final lengths (RFC 5282 section 5.1; RFC 7383 section 2.5).
    """

    @property
    def iv_len(self) -> int: ...

    @property
    def icv_len(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    def seal(self, aad: bytes, plaintext: bytes) -> bytes: ...

    def open(self, aad: bytes, iv_ct_icv: bytes) -> bytes: ...


# --- payload chains --------------------------------------------------------------------------
_DECODERS: Final[dict[int, Callable[[bytes], Payload]]] = {
    PayloadType.SA: SA.decode_body,
    PayloadType.KE: KE.decode_body,
    PayloadType.IDI: IDi.decode_body,
    PayloadType.IDR: IDr.decode_body,
    PayloadType.CERT: Cert.decode_body,
    PayloadType.CERTREQ: CertReq.decode_body,
    PayloadType.AUTH: Auth.decode_body,
    PayloadType.NONCE: Nonce.decode_body,
    PayloadType.NOTIFY: Notify.decode_body,
    PayloadType.DELETE: Delete.decode_body,
    PayloadType.VENDOR_ID: VendorID.decode_body,
    PayloadType.TSI: TSi.decode_body,
    PayloadType.TSR: TSr.decode_body,
}


def _encode_chain(payloads: Sequence[Payload], last_next: int = PayloadType.NONE) -> bytes:
    """Payloads with their generic headers; the last one's Next Payload is ``last_next``.
    An SK or SKF payload must be last; its Next Payload is its own ``first_payload``."""
    out = bytearray()
    n = len(payloads)
    for i, p in enumerate(payloads):
        if isinstance(p, SK | SKF):
            if i != n - 1 or last_next != PayloadType.NONE:
                raise ValueError("an SK/SKF payload must be the last payload")
            nxt = p.first_payload
        else:
            nxt = payloads[i + 1].payload_type if i + 1 < n else last_next
        body = p.encode_body()
        length = IKE_GENERIC_HEADER_LEN + len(body)
        _check_u16_len(length, f"payload {p.payload_type}")
        critical = IKE_PAYLOAD_CRITICAL if isinstance(p, UnknownPayload) and p.critical else 0
        out += _pack(_GENERIC, nxt, critical, length)
        out += body
    return bytes(out)


def encode_payloads(payloads: Sequence[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, the chained payloads): what goes inside an SK payload."""
    first = payloads[0].payload_type if payloads else PayloadType.NONE
    return first, _encode_chain(payloads)


@dataclass
class _Chain:
    payloads: list[Payload]
    #: offset in the parsed buffer of the SK/SKF payload's generic header, if one ended it
    encrypted_at: int = -1


def _parse_chain(data: bytes, off: int, first: int, *, outer: bool) -> _Chain:
    """Parse payloads from ``off`` to the end of ``data``, the first of type ``first``.
    SK/SKF are accepted only in the outer chain and must end it."""
    chain = _Chain([])
    nxt, n = first, len(data)
    while nxt != PayloadType.NONE:
        _need(n - off >= IKE_GENERIC_HEADER_LEN, f"truncated header of payload type {nxt}")
        next_after, flags, length = _GENERIC.unpack_from(data, off)
        _need(length >= IKE_GENERIC_HEADER_LEN, f"payload length {length} < 4")
        _need(off + length <= n, f"payload type {nxt} overruns the message")
        body = data[off + IKE_GENERIC_HEADER_LEN : off + length]
        if nxt in (PayloadType.SK, PayloadType.SKF):
            _need(outer, "an SK/SKF payload inside encrypted content")
            _need(off + length == n, "the SK/SKF payload is not the last payload")
            next_after = _known(PayloadType, next_after)
            if nxt == PayloadType.SK:
                chain.payloads.append(SK(next_after, body))
            else:
                chain.payloads.append(SKF.decode_body(next_after, body))
            chain.encrypted_at = off
            return chain
        decoder = _DECODERS.get(nxt)
        if decoder is not None:
            chain.payloads.append(decoder(body))
        elif flags & IKE_PAYLOAD_CRITICAL:
            raise UnsupportedCriticalPayload(nxt)
        else:
            chain.payloads.append(UnknownPayload(_known(PayloadType, nxt), body, False))
        off += length
        nxt = next_after
    _need(off == n, f"{n - off} octets after the last payload")
    return chain


def decode_payloads(first_payload: int, data: bytes) -> list[Payload]:
    """Parse a chain of payloads with no SK/SKF among them (e.g. reassembled fragments)."""
    return _parse_chain(bytes(data), 0, first_payload, outer=False).payloads


# --- messages --------------------------------------------------------------------------------
P = TypeVar("P", bound=Payload)


@dataclass
class Message:
    """A decoded (or to-be-encoded) IKE message.

    With SK opened, ``payloads`` are the inner payloads and ``encrypted`` is True;
    ``unprotected`` then holds any payloads that preceded SK outside it (section 3.14 allows
    them; none are defined, and they are not integrity-protected beyond the AAD). Without a
    cipher the SK payload is the last of ``payloads``, raw. An opened SKF payload gives
    ``fragment`` and no payloads until the fragments are reassembled (``reassemble``).
    """

    header: Header
    payloads: list[Payload] = field(default_factory=list)
    encrypted: bool = False
    unprotected: list[Payload] = field(default_factory=list)
    fragment: Fragment | None = None

    @overload
    def get(self, kind: type[P]) -> P | None: ...

    @overload
    def get(self, kind: int) -> Payload | None: ...

    def get(self, kind: type[Payload] | int) -> Payload | None:
        """The first payload of a class (``msg.get(SA)``) or payload type
        (``msg.get(PayloadType.SA)``), or None."""
        found = self.get_all(kind)
        return found[0] if found else None

    @overload
    def get_all(self, kind: type[P]) -> list[P]: ...

    @overload
    def get_all(self, kind: int) -> list[Payload]: ...

    def get_all(self, kind: type[Payload] | int) -> list[Any]:
        """All payloads of a class or payload type, in order."""
        if isinstance(kind, int):
            return [p for p in self.payloads if p.payload_type == kind]
        return [p for p in self.payloads if isinstance(p, kind)]

    def notifies(self, notify_type: int | None = None) -> list[Notify]:
        """Notify payloads, all or of one type, in order."""
        return [
            p
            for p in self.payloads
            if isinstance(p, Notify) and (notify_type is None or p.notify_type == notify_type)
        ]

    def notify(self, notify_type: int) -> Notify | None:
        found = self.notifies(notify_type)
        return found[0] if found else None

    @property
    def payload_types(self) -> list[int]:
        return [p.payload_type for p in self.payloads]


#: payload names in log lines, as strongSwan writes them (Nonce, Notify and Delete apart)
_LOG_NAMES: Final[dict[int, str]] = {
    PayloadType.SA: "SA", PayloadType.KE: "KE", PayloadType.IDI: "IDi",
    PayloadType.IDR: "IDr", PayloadType.CERT: "CERT", PayloadType.CERTREQ: "CERTREQ",
    PayloadType.AUTH: "AUTH", PayloadType.VENDOR_ID: "V", PayloadType.TSI: "TSi",
    PayloadType.TSR: "TSr", PayloadType.CP: "CP", PayloadType.EAP: "EAP",
    PayloadType.SK: "SK",
}


def format_payloads(msg: Message) -> str:
    """The payload list of ``msg`` for a log line, in strongSwan's manner: ``SA KE Ni
    N(NAT_DETECTION_SOURCE_IP) N(NAT_DETECTION_DESTINATION_IP)``, an opened Encrypted
    payload with what it held, ``SK{IDi AUTH SA TSi TSr N(INITIAL_CONTACT)}``, an
    opened fragment as ``SKF{3/4}``. A nonce is ``Ni`` in a request, ``Nr`` in a response.
    Payload types, notify types and Delete protocols only: never a payload's content."""
    nonce = "Nr" if msg.header.is_response else "Ni"

    def name(p: Payload) -> str:
        if isinstance(p, Nonce):
            return nonce
        if isinstance(p, Notify):
            try:
                return f"N({NotifyType(p.notify_type).name})"
            except ValueError:
                return f"N({p.notify_type})"
        if isinstance(p, Delete):
            try:
                return f"D({ProtocolId(p.protocol).name})"
            except ValueError:
                return f"D({p.protocol})"
        if isinstance(p, SKF):
            return f"SKF({p.number}/{p.total})"
        return _LOG_NAMES.get(p.payload_type, f"UNKNOWN({p.payload_type})")

    if not msg.encrypted:
        return " ".join(name(p) for p in msg.payloads)
    outer = [name(p) for p in msg.unprotected]
    if msg.fragment is not None:
        outer.append(f"SKF{{{msg.fragment.number}/{msg.fragment.total}}}")
    else:
        outer.append("SK{" + " ".join(name(p) for p in msg.payloads) + "}")
    return " ".join(outer)


def _pad(plaintext: bytes, block_size: int) -> bytes:
    """Section 3.14: padding then the pad-length octet, to a multiple of the block size.
    Padding octets are zero (their content is arbitrary; receivers ignore it)."""
    if block_size < 1:
        raise ValueError("block size must be at least 1")
    pad = -(len(plaintext) + 1) % block_size
    return plaintext + bytes(pad) + bytes([pad])


def _seal(sk: SkCipher, aad: bytes, plaintext: bytes) -> bytes:
    sealed = sk.seal(aad, plaintext)
    if len(sealed) != sk.iv_len + len(plaintext) + sk.icv_len:
        raise ValueError("SkCipher.seal returned the wrong length")
    return sealed


def encode_message(
    header: Header,
    payloads: Sequence[Payload],
    *,
    sk: SkCipher | None = None,
    unprotected: Sequence[Payload] = (),
) -> bytes:
    """The octets of a message.

    Without ``sk`` the payloads go in the clear (a raw SK/SKF payload may end them). With
    ``sk`` they are all put in one Encrypted payload (after ``unprotected``, normally none).
    Raises ValueError for what cannot be encoded (a field out of range, a length over 65535).
    """
    if sk is None:
        if unprotected:
            raise ValueError("unprotected payloads only make sense with an SK cipher")
        first, body = encode_payloads(payloads)
        return header.encode(first, IKE_HEADER_LEN + len(body)) + body
    if any(isinstance(p, SK | SKF) for p in (*payloads, *unprotected)):
        raise ValueError("an SK/SKF payload cannot be nested in an encrypted message")
    inner_first, inner = encode_payloads(payloads)
    plaintext = _pad(inner, sk.block_size)
    sk_len = IKE_GENERIC_HEADER_LEN + sk.iv_len + len(plaintext) + sk.icv_len
    _check_u16_len(sk_len, "SK payload")
    pre = _encode_chain(unprotected, last_next=PayloadType.SK)
    first = unprotected[0].payload_type if unprotected else PayloadType.SK
    aad = (
        header.encode(first, IKE_HEADER_LEN + len(pre) + sk_len)
        + pre
        + _pack(_GENERIC, inner_first, 0, sk_len)
    )
    return aad + _seal(sk, aad, plaintext)


def encode_fragment(header: Header, fragment: Fragment, *, sk: SkCipher) -> bytes:
    """One IKE fragment message (RFC 7383 section 2.5): header and a sealed SKF payload
    holding ``fragment.data`` (a slice of the encoded inner payloads). The Next Payload of
    fragments after the first is sent as zero."""
    if not 1 <= fragment.number <= fragment.total:
        raise ValueError("fragment number must be 1..total")
    first = fragment.first_payload if fragment.number == 1 else PayloadType.NONE
    plaintext = _pad(fragment.data, sk.block_size)
    skf_len = IKE_GENERIC_HEADER_LEN + _SKF.size + sk.iv_len + len(plaintext) + sk.icv_len
    _check_u16_len(skf_len, "SKF payload")
    aad = (
        header.encode(PayloadType.SKF, IKE_HEADER_LEN + skf_len)
        + _pack(_GENERIC, first, 0, skf_len)
        + _pack(_SKF, fragment.number, fragment.total)
    )
    return aad + _seal(sk, aad, plaintext)


def _open(sk: SkCipher, aad: bytes, body: bytes) -> bytes:
    """Open an SK/SKF body and strip the padding (section 3.14)."""
    ct_len = len(body) - sk.iv_len - sk.icv_len
    if ct_len < 1 or ct_len % max(sk.block_size, 1):
        raise IkeIntegrityError(f"encrypted payload of {len(body)} octets fits no ciphertext")
    try:
        plain = bytes(sk.open(aad, body))
    except Exception as exc:
        raise IkeIntegrityError(f"encrypted payload did not open: {exc!r}") from exc
    if not plain:
        err = IkeDecodeError("decrypted content is empty (no pad length)")
        err.authenticated = True
        raise err
    pad = plain[-1]
    if pad + 1 > len(plain):
        err = IkeDecodeError(f"pad length {pad} exceeds the decrypted content")
        err.authenticated = True
        raise err
    return plain[: len(plain) - pad - 1]


def _decode(data: bytes, sk: SkCipher | None) -> Message:
    header, first, length = _decode_header(data)
    try:
        if header.major_version != IKE_MAJOR_VERSION:
            raise InvalidMajorVersion(header.major_version)
        _need(length == len(data), f"header says {length} octets, message has {len(data)}")
        chain = _parse_chain(data, IKE_HEADER_LEN, first, outer=True)
        msg = Message(header, chain.payloads)
        if sk is None or chain.encrypted_at < 0:
            return msg
        enc = chain.payloads[-1]
        before = chain.payloads[:-1]
        if isinstance(enc, SK):
            aad = data[: chain.encrypted_at + IKE_GENERIC_HEADER_LEN]
            plain = _open(sk, aad, enc.body)
            try:
                inner = _parse_chain(plain, 0, enc.first_payload, outer=False).payloads
            except IkeDecodeError as exc:
                exc.authenticated = True
                raise
            return Message(header, inner, True, before)
        assert isinstance(enc, SKF)
        aad = data[: chain.encrypted_at + IKE_GENERIC_HEADER_LEN + SKF_HEADER_EXTRA_LEN]
        plain = _open(sk, aad, enc.body)
        frag = Fragment(enc.number, enc.total, enc.first_payload, plain)
        return Message(header, [], True, before, frag)
    except IkeDecodeError as exc:
        exc.header = header
        raise


def decode_message(
    data: bytes | bytearray | memoryview, *, sk: SkCipher | None = None
) -> Message:
    """Parse one IKE message (without the non-ESP marker). Raises IkeDecodeError (or a
    subclass) for anything malformed, and nothing else for any input.

    With ``sk``, an SK/SKF payload is opened; a message without one decodes in the clear all
    the same, so callers check ``Message.encrypted`` where the exchange requires protection
    (every message after IKE_SA_INIT, RFC 7296 section 1.2)."""
    return _decode(bytes(data), sk)


def reassemble(fragments: Iterable[Fragment]) -> list[Payload]:
    """The payloads of a fragmented message from all its opened fragments (any order;
    RFC 7383 section 2.6). Raises IkeDecodeError if some are missing or inconsistent."""
    by_number: dict[int, Fragment] = {}
    total = None
    for f in fragments:
        _need(total is None or f.total == total, "fragments disagree on Total Fragments")
        total = f.total
        by_number.setdefault(f.number, f)
    _need(
        total is not None and sorted(by_number) == list(range(1, total + 1)),
        "fragments missing",
    )
    data = b"".join(by_number[i].data for i in sorted(by_number))
    return decode_payloads(by_number[1].first_payload, data)
