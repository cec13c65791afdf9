"""Numbers taken from the specifications, in one place.

Every constant names the RFC section it comes from. Nothing else in the package spells
these numbers out.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

# --- RFC 3948: UDP encapsulation of IPsec ESP packets -------------------------------------
#: Section 1 / RFC 7296 section 2.23: the IKE and ESP-in-UDP port.
NAT_T_PORT: Final = 4500
#: RFC 7296 section 2: IKE without NAT traversal.
IKE_PORT: Final = 500
#: Section 2.2: a NAT-keepalive packet is exactly one octet with value 0xFF.
NAT_KEEPALIVE: Final = b"\xff"
#: Section 2.2: four zero octets in place of an SPI mark a non-ESP (IKE) packet.
NON_ESP_MARKER: Final = b"\x00\x00\x00\x00"
#: Section 4: keepalive interval (the RFC says 20 s as default).
DEFAULT_KEEPALIVE_INTERVAL: Final = 20.0
#: RFC 768: UDP header length.
UDP_HEADER_LEN: Final = 8

# --- RFC 7296 section 3.1: IKE header --------------------------------------------------------
IKE_HEADER_LEN: Final = 28
IKE_VERSION_2: Final = 0x20

# --- RFC 4303: IP Encapsulating Security Payload -------------------------------------------
#: Section 2.1: SPI values 1-255 are reserved by IANA; 0 is local-use only, never on the wire.
SPI_RESERVED_MAX: Final = 255
#: Section 2: SPI (4) + sequence number (4).
ESP_HEADER_LEN: Final = 8
#: Section 2.4 / 2.6: pad length (1) + next header (1).
ESP_TRAILER_LEN: Final = 2
#: Section 2.4: the ciphertext (payload, padding, pad length, next header) ends on 4 octets.
ESP_ALIGN: Final = 4
#: Section 2.4: at most 255 padding octets.
ESP_MAX_PAD: Final = 255
#: Section 2.2: a 32-bit counter must not cycle; the last usable value.
SEQ_MAX_32: Final = 0xFFFFFFFF
#: Section 2.2.1: extended (64-bit) sequence numbers.
SEQ_MAX_64: Final = 0xFFFFFFFFFFFFFFFF
#: Section 3.4.3: the receiver window is at least 32; 64 is the recommended default.
REPLAY_WINDOW_MIN: Final = 64
REPLAY_WINDOW_MAX: Final = 8192
#: Our default: 1024 (see docs/wire-format.md, "Anti-replay window"). The window here is a
#: ring of sequence numbers, so its cost per packet does not depend on its size; 1024 covers
#: reordering across GSO batches and worker queues at 8 KiB per SA.
REPLAY_WINDOW_DEFAULT: Final = 1024

# --- Next header values (IANA "Assigned Internet Protocol Numbers") ------------------------
NH_IPV4: Final = 4
NH_IPV6: Final = 41
#: RFC 4303 section 2.6: next header 59 marks a dummy (traffic-flow confidentiality) packet.
NH_NO_NEXT_HEADER: Final = 59

# --- RFC 4106 (AES-GCM in ESP) and RFC 7634 (ChaCha20-Poly1305 in ESP) ---------------------
#: RFC 4106 section 3.1 / RFC 7634 section 2: the explicit IV is 8 octets.
ESP_IV_LEN: Final = 8
#: RFC 4106 section 4 / RFC 7634 section 2: the salt is 4 octets of the keying material.
ESP_SALT_LEN: Final = 4
#: RFC 4106 section 6 (16-octet ICV variant) and RFC 7634 section 2.
ESP_ICV_LEN: Final = 16

# IKEv2 transform IDs (IANA "IKEv2 Parameters", Transform Type 1) for the ESP suites.
ENCR_AES_GCM_16: Final = 20
ENCR_CHACHA20_POLY1305: Final = 28

# --- Overhead per packet (docs/wire-format.md) ----------------------------------------------
IPV4_HEADER_LEN: Final = 20
IPV6_HEADER_LEN: Final = 40
#: ESP header + IV + ICV, before the 2 trailer octets and padding.
ESP_FIXED_OVERHEAD: Final = ESP_HEADER_LEN + ESP_IV_LEN + ESP_ICV_LEN

# --- RFC 8489: STUN, on the NAT-T socket (nattunnel/traversal/stun.py) ---------------------
#: Section 5: the magic cookie, the second 32-bit word of every STUN message (offset 4).
STUN_MAGIC_COOKIE: Final = 0x2112A442
#: Section 5: the header: type (2), length (2), magic cookie (4), transaction ID (12).
STUN_HEADER_LEN: Final = 20
STUN_TRANSACTION_ID_LEN: Final = 12
STUN_COOKIE_OFFSET: Final = 4
STUN_TRANSACTION_ID_OFFSET: Final = 8
#: Section 5: "the most significant 2 bits of every STUN message MUST be zeroes", so its
#: first octet is below 0x40 (RFC 7983 section 7 demultiplexes on the first octet likewise).
STUN_FIRST_OCTET_LIMIT: Final = 0x40
#: Section 5 / 14: the message length and every attribute are padded to 4 octets.
STUN_ALIGN: Final = 4
#: Section 6.2.1: the initial retransmission timeout (500 ms), doubled after each request;
#: Rc = 7 requests in all; after the last, wait Rm = 16 times the initial RTO (so the
#: requests go at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s, and it times out at 39.5 s).
STUN_RTO: Final = 0.5
STUN_RC: Final = 7
STUN_RM: Final = 16
#: Section 6.2: a client SHOULD have at most ten outstanding transactions to one server.
STUN_MAX_PER_SERVER: Final = 10
#: Section 18.2: the Binding method.
STUN_BINDING: Final = 0x001
#: Section 14: attribute types 0x0000-0x7FFF are comprehension-required.
STUN_COMPREHENSION_OPTIONAL: Final = 0x8000
#: Comprehension-required attribute types we know beside those aioice decodes: section 18.3's
#: UNKNOWN-ATTRIBUTES (0x000A, in a 420 answer), MESSAGE-INTEGRITY-SHA256 (0x001C),
#: PASSWORD-ALGORITHM (0x001D) and USERHASH (0x001E); RFC 5780 section 7's PADDING (0x0026)
#: and RESPONSE-PORT (0x0027); RFC 3489 section 11.2's REFLECTED-FROM (0x000B).
STUN_KNOWN_REQUIRED: Final = frozenset({0x000A, 0x000B, 0x001C, 0x001D, 0x001E, 0x0026, 0x0027})
#: RFC 5780 section 7.5: RESPONSE-PORT; RFC 8489 section 14.7: FINGERPRINT.
STUN_ATTR_RESPONSE_PORT: Final = 0x0027
STUN_ATTR_FINGERPRINT: Final = 0x8028
#: RFC 5780 section 7.2: CHANGE-REQUEST's flags, "change IP" and "change port".
STUN_CHANGE_IP: Final = 0x04
STUN_CHANGE_PORT: Final = 0x02
#: Our inbound child SPIs are at least this (first octet >= 0x40, docs/wire-format.md "STUN
#: on port 4500"): an ESP packet to us never has a STUN message's first two bits.
SPI_STUN_SAFE_MIN: Final = STUN_FIRST_OCTET_LIMIT << 24

# === IKEv2 (RFC 7296) message encoding ======================================================
# Numbers for nattunnel/ike_message.py. Each group cites the RFC section that defines its
# layout and the IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" registry
# (https://www.iana.org/assignments/ikev2-parameters) that assigns the values.

#: RFC 7296 section 3.1: SPIi and SPIr are 8 octets each.
IKE_SPI_LEN: Final = 8
#: RFC 7296 section 3.3.1: the SPI of an AH or ESP SA (child SA) is 4 octets.
CHILD_SPI_LEN: Final = 4
#: RFC 7296 section 3.1: Major Version (high 4 bits of the version octet).
IKE_MAJOR_VERSION: Final = 2
#: RFC 7296 section 3.2: the generic payload header is 4 octets.
IKE_GENERIC_HEADER_LEN: Final = 4
#: RFC 7296 section 3.2: the Critical bit, most significant bit of the second octet.
IKE_PAYLOAD_CRITICAL: Final = 0x80
#: RFC 7296 section 3.9: Nonce Data is 16 to 256 octets.
IKE_NONCE_MIN: Final = 16
IKE_NONCE_MAX: Final = 256

# RFC 7296 section 3.1: header flags (bit 3 = Initiator, bit 4 = Version, bit 5 = Response,
# counting from the least significant bit); the other bits MUST be sent as zero and ignored.
IKE_FLAG_INITIATOR: Final = 0x08
IKE_FLAG_VERSION: Final = 0x10
IKE_FLAG_RESPONSE: Final = 0x20

# RFC 7296 sections 3.3.1 and 3.3.2: the "Last Substruc" octet of proposals and transforms
# (0 on the last one, else the substructure's own number, kept from IKEv1).
LAST_SUBSTRUC_LAST: Final = 0
LAST_SUBSTRUC_PROPOSAL: Final = 2
LAST_SUBSTRUC_TRANSFORM: Final = 3
#: RFC 7296 section 3.3.1: proposal substructure header (before the SPI).
IKE_PROPOSAL_HEADER_LEN: Final = 8
#: RFC 7296 section 3.3.2: transform substructure header (before the attributes).
IKE_TRANSFORM_HEADER_LEN: Final = 8
#: RFC 7296 section 3.3.5: Attribute Format bit: 1 = TV (2-octet value in place of the
#: length), 0 = TLV.
IKE_ATTR_FORMAT_TV: Final = 0x8000
IKE_ATTR_HEADER_LEN: Final = 4
#: RFC 7296 section 3.13.1: selector lengths of TS_IPV4_ADDR_RANGE and TS_IPV6_ADDR_RANGE.
TS_IPV4_LEN: Final = 16
TS_IPV6_LEN: Final = 40
#: RFC 7296 section 3.13.1: the header of any traffic selector (type, protocol, length).
TS_HEADER_LEN: Final = 4
#: RFC 7383 section 2.5: Fragment Number and Total Fragments after the generic header.
SKF_HEADER_EXTRA_LEN: Final = 4
#: RFC 7296 section 2.23: NAT_DETECTION_*_IP data is a SHA-1 digest.
NAT_DETECTION_HASH_LEN: Final = 20
#: RFC 8420 section 2 / RFC 8410 section 3: DER AlgorithmIdentifier of Ed25519 (OID
#: 1.3.101.112, no parameters), as carried in RFC 7427 AUTH data.
ED25519_ALGORITHM_ID: Final = bytes.fromhex("300506032b6570")


class ExchangeType(IntEnum):
    """IANA "IKEv2 Exchange Types"; RFC 7296 section 3.1."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37
    #: RFC 5723
    IKE_SESSION_RESUME = 38
    #: RFC 9242
    IKE_INTERMEDIATE = 43
    #: RFC 9370
    IKE_FOLLOWUP_KE = 44


class PayloadType(IntEnum):
    """IANA "IKEv2 Payload Types"; RFC 7296 section 3.2."""

    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR_ID = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48
    #: RFC 6467
    GSPM = 49
    #: RFC 7383
    SKF = 53
    #: RFC 8019
    PS = 54


class ProtocolId(IntEnum):
    """IANA "IKEv2 Security Protocol Identifiers"; RFC 7296 section 3.3.1."""

    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    """IANA "Transform Type Values"; RFC 7296 section 3.3.2 (type 4 renamed by RFC 9370)."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(IntEnum):
    """IANA "Transform Type 1 - Encryption Algorithm Transform IDs"; RFC 7296 section 3.3.2."""

    DES = 2
    TRIPLE_DES = 3
    NULL = 11
    #: RFC 3602
    AES_CBC = 12
    #: RFC 5930
    AES_CTR = 13
    #: RFC 5282 (AES-CCM with 8, 12, 16 octet ICV)
    AES_CCM_8 = 14
    AES_CCM_12 = 15
    AES_CCM_16 = 16
    #: RFC 5282 (AES-GCM with 8, 12, 16 octet ICV)
    AES_GCM_8 = 18
    AES_GCM_12 = 19
    AES_GCM_16 = ENCR_AES_GCM_16
    #: RFC 5282
    NULL_AUTH_AES_GMAC = 21
    #: RFC 7634
    CHACHA20_POLY1305 = ENCR_CHACHA20_POLY1305


class PrfId(IntEnum):
    """IANA "Transform Type 2 - Pseudorandom Function Transform IDs"; RFC 7296 3.3.2."""

    HMAC_MD5 = 1
    HMAC_SHA1 = 2
    AES128_XCBC = 4
    #: RFC 4868
    HMAC_SHA2_256 = 5
    HMAC_SHA2_384 = 6
    HMAC_SHA2_512 = 7
    #: RFC 4615
    AES128_CMAC = 8


class IntegId(IntEnum):
    """IANA "Transform Type 3 - Integrity Algorithm Transform IDs"; RFC 7296 3.3.2."""

    NONE = 0
    HMAC_MD5_96 = 1
    HMAC_SHA1_96 = 2
    AES_XCBC_96 = 5
    #: RFC 4494
    AES_CMAC_96 = 8
    #: RFC 4868
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class DhGroup(IntEnum):
    """IANA "Transform Type 4 - Key Exchange Method Transform IDs"; RFC 7296 3.3.2, 3.4."""

    NONE = 0
    MODP_768 = 1
    MODP_1024 = 2
    MODP_1536 = 5
    #: RFC 3526
    MODP_2048 = 14
    MODP_3072 = 15
    MODP_4096 = 16
    MODP_6144 = 17
    MODP_8192 = 18
    #: RFC 5903
    ECP_256 = 19
    ECP_384 = 20
    ECP_521 = 21
    #: RFC 6954
    BRAINPOOL_P224R1 = 27
    BRAINPOOL_P256R1 = 28
    BRAINPOOL_P384R1 = 29
    BRAINPOOL_P512R1 = 30
    #: RFC 8031
    CURVE25519 = 31
    CURVE448 = 32


class EsnId(IntEnum):
    """IANA "Transform Type 5 - Extended Sequence Numbers Transform IDs"; RFC 7296 3.3.2."""

    NO_ESN = 0
    ESN = 1


class TransformAttr(IntEnum):
    """IANA "IKEv2 Transform Attribute Types"; RFC 7296 section 3.3.5."""

    #: TV format; the key length in bits
    KEY_LENGTH = 14


class AuthMethod(IntEnum):
    """IANA "IKEv2 Authentication Method"; RFC 7296 section 3.8."""

    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    #: RFC 4754
    ECDSA_SHA256_P256 = 9
    ECDSA_SHA384_P384 = 10
    ECDSA_SHA512_P521 = 11
    #: RFC 7619
    NULL = 13
    #: RFC 7427
    DIGITAL_SIGNATURE = 14


class CertEncoding(IntEnum):
    """IANA "IKEv2 Certificate Encodings"; RFC 7296 section 3.6."""

    PKCS7_X509 = 1
    X509_SIGNATURE = 4
    CRL = 7
    HASH_AND_URL_X509 = 12


class IdType(IntEnum):
    """IANA "IKEv2 Identification Payload ID Types"; RFC 7296 section 3.5."""

    IPV4_ADDR = 1
    FQDN = 2
    RFC822_ADDR = 3
    IPV6_ADDR = 5
    DER_ASN1_DN = 9
    DER_ASN1_GN = 10
    KEY_ID = 11
    #: RFC 7619
    NULL = 13


class TsType(IntEnum):
    """IANA "IKEv2 Traffic Selector Types"; RFC 7296 section 3.13.1."""

    IPV4_ADDR_RANGE = 7
    IPV6_ADDR_RANGE = 8
    #: RFC 4595
    FC_ADDR_RANGE = 9
    #: RFC 9478
    SECLABEL = 10


class HashAlgorithm(IntEnum):
    """IANA "IKEv2 Hash Algorithms"; RFC 7427 section 4 (SIGNATURE_HASH_ALGORITHMS data)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    #: RFC 8420: no hash, the signature algorithm takes the message (Ed25519, Ed448)
    IDENTITY = 5


class NotifyType(IntEnum):
    """IANA "IKEv2 Notify Message Types"; RFC 7296 section 3.10.1.

    Values below 16384 are errors, 16384 and up status types.
    """

    # -- error types
    UNSUPPORTED_CRITICAL_PAYLOAD = 1
    INVALID_IKE_SPI = 4
    INVALID_MAJOR_VERSION = 5
    INVALID_SYNTAX = 7
    INVALID_MESSAGE_ID = 9
    INVALID_SPI = 11
    NO_PROPOSAL_CHOSEN = 14
    INVALID_KE_PAYLOAD = 17
    AUTHENTICATION_FAILED = 24
    SINGLE_PAIR_REQUIRED = 34
    NO_ADDITIONAL_SAS = 35
    INTERNAL_ADDRESS_FAILURE = 36
    FAILED_CP_REQUIRED = 37
    TS_UNACCEPTABLE = 38
    INVALID_SELECTORS = 39
    #: RFC 4555 (MOBIKE)
    #: sections 3.5, 4.1.1: the responder refuses the initiator's new address
    UNACCEPTABLE_ADDRESSES = 40
    #: sections 3.9, 4.1.2: NO_NATS_ALLOWED, but a NAT changed the addresses
    UNEXPECTED_NAT_DETECTED = 41
    TEMPORARY_FAILURE = 43
    CHILD_SA_NOT_FOUND = 44
    # -- status types
    INITIAL_CONTACT = 16384
    SET_WINDOW_SIZE = 16385
    ADDITIONAL_TS_POSSIBLE = 16386
    IPCOMP_SUPPORTED = 16387
    NAT_DETECTION_SOURCE_IP = 16388
    NAT_DETECTION_DESTINATION_IP = 16389
    COOKIE = 16390
    USE_TRANSPORT_MODE = 16391
    HTTP_CERT_LOOKUP_SUPPORTED = 16392
    REKEY_SA = 16393
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394
    NON_FIRST_FRAGMENTS_ALSO = 16395
    #: RFC 4555 (MOBIKE)
    #: section 3.2 (4.2.1): in IKE_AUTH, both ways
    MOBIKE_SUPPORTED = 16396
    #: section 3.4 (4.2.2, 4.2.3): the sender's other addresses, or none
    ADDITIONAL_IP4_ADDRESS = 16397
    ADDITIONAL_IP6_ADDRESS = 16398
    NO_ADDITIONAL_ADDRESSES = 16399
    #: section 3.5 (4.2.4): the initiator moved; section 3.7 (4.2.5): COOKIE2, echoed;
    #: section 3.9 (4.2.6): NO_NATS_ALLOWED, the NAT_PREVENTION notify
    UPDATE_SA_ADDRESSES = 16400
    COOKIE2 = 16401
    NO_NATS_ALLOWED = 16402
    #: RFC 4739
    MULTIPLE_AUTH_SUPPORTED = 16404
    ANOTHER_AUTH_FOLLOWS = 16405
    #: RFC 5685
    REDIRECT_SUPPORTED = 16406
    REDIRECT = 16407
    REDIRECTED_FROM = 16408
    #: RFC 5998
    EAP_ONLY_AUTHENTICATION = 16417
    #: RFC 6023
    CHILDLESS_IKEV2_SUPPORTED = 16418
    #: RFC 6311
    IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420
    #: RFC 7383
    IKEV2_FRAGMENTATION_SUPPORTED = 16430
    #: RFC 7427
    SIGNATURE_HASH_ALGORITHMS = 16431
    #: RFC 9242
    INTERMEDIATE_EXCHANGE_SUPPORTED = 16438


#: RFC 7296 section 3.10.1: Notify Message Types below this value are errors.
NOTIFY_STATUS_MIN: Final = 16384

# --- IKEv2 mediation (draft-brunner-ikev2-mediation, as strongSwan 5.9.8 builds it) ----------
# Private-use numbers (not in the IANA registries above), strongSwan's.
#: the ME_CONNECT exchange type
ME_CONNECT: Final = 240
#: the ID_PEER payload type (an ID payload's body)
ID_PEER: Final = 128


class MeNotify(IntEnum):
    """The mediation notifies (ME_CONNECT_FAILED is an error type)."""

    ME_CONNECT_FAILED = 8192
    ME_MEDIATION = 40962
    ME_ENDPOINT = 40963
    ME_CALLBACK = 40964
    ME_CONNECTID = 40965
    ME_CONNECTKEY = 40966
    ME_CONNECTAUTH = 40967
    ME_RESPONSE = 40968


#: ME_CONNECTID and ME_CONNECTKEY lengths (strongSwan's ike_me.c)
ME_CONNECTID_LEN: Final = 4
ME_CONNECTKEY_LEN: Final = 16
#: ME_ENDPOINT families and types (endpoint_notify.h)
ME_FAMILY_NONE: Final = 0
ME_FAMILY_IPV4: Final = 1
ME_FAMILY_IPV6: Final = 2
ME_TYPE_HOST: Final = 1
ME_TYPE_PEER_REFLEXIVE: Final = 2
ME_TYPE_SERVER_REFLEXIVE: Final = 3
ME_TYPE_RELAYED: Final = 4
#: type preferences (ME_PRIO_*): priority = preference * 2**16 + 65535
ME_TYPE_PREFERENCE: Final = {ME_TYPE_HOST: 255, ME_TYPE_PEER_REFLEXIVE: 128,
                             ME_TYPE_SERVER_REFLEXIVE: 64, ME_TYPE_RELAYED: 0}
#: connectivity checks (connect_manager.c): a retransmission every 25 ms for the first two,
#: then 25 ms * 1.8**(n - 2), at most 13; the initiator waits 1 s after the first valid
#: pair before it picks the best one
ME_RETRANS_INTERVAL: Final = 0.025
ME_RETRANS_BOOST: Final = 2
ME_RETRANS_BASE: Final = 1.8
ME_MAX_RETRANS: Final = 13
ME_WAIT_TO_FINISH: Final = 1.0

# --- ESP packet layout, derived (RFC 4303 section 2, RFC 4106 section 3) ----------------------
#: Where the plaintext (the inner packet) starts in an ESP packet: after the SPI, the
#: sequence number and the explicit IV.
ESP_PLAINTEXT_OFFSET: Final = ESP_HEADER_LEN + ESP_IV_LEN
#: The smallest ESP packet: header, IV, one aligned block (RFC 4303 section 2.4: the pad
#: length and next header octets, padded to 4) and the ICV.
ESP_MIN_PACKET: Final = ESP_PLAINTEXT_OFFSET + ESP_ALIGN + ESP_ICV_LEN

# --- RFC 791 section 3.1, RFC 8200 section 3: where an inner packet's addresses lie -----------
#: the IPv4 source and destination addresses (4 octets each)
IPV4_SRC_OFFSET: Final = 12
IPV4_DST_OFFSET: Final = 16
#: the IPv6 source and destination addresses (16 octets each)
IPV6_SRC_OFFSET: Final = 8
IPV6_DST_OFFSET: Final = 24
IPV6_ADDR_LEN: Final = 16

# --- RFC 4555 (MOBIKE) ------------------------------------------------------------------------
#: section 4.2.5: the COOKIE2 notify's data (section 3.7), 8 to 64 octets; ours are
#: MOBIKE_COOKIE2_LEN random octets
COOKIE2_MIN_LEN: Final = 8
COOKIE2_MAX_LEN: Final = 64
MOBIKE_COOKIE2_LEN: Final = 16
#: section 4.2.6: NO_NATS_ALLOWED (the NAT_PREVENTION notify of section 3.9) carries the
#: source and destination address and the source and destination port of the packet:
#: 12 octets for IPv4, 36 for IPv6
NO_NATS_ALLOWED_LEN_V4: Final = 12
NO_NATS_ALLOWED_LEN_V6: Final = 36

# --- Linux rtnetlink(7): the route and address change groups (io/netwatch.py) ----------------
#: NETLINK_ROUTE's multicast groups (linux/rtnetlink.h RTMGRP_*)
RTMGRP_IPV4_IFADDR: Final = 0x10
RTMGRP_IPV4_ROUTE: Final = 0x40
RTMGRP_IPV6_IFADDR: Final = 0x100
RTMGRP_IPV6_ROUTE: Final = 0x400
#: the netlink message types of interest (RTM_NEWADDR .. RTM_DELROUTE) and NLMSG_DONE
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
NLMSG_DONE: Final = 3
NLMSG_ERROR: Final = 2
#: nlmsghdr flags: a request, a dump
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300
#: ifaddrmsg attributes: the address, the local address (point-to-point)
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
#: netdevice(7): the interface flags request; the flags of a link that is up and running
SIOCGIFFLAGS: Final = 0x8913
IFF_UP: Final = 0x1
IFF_RUNNING: Final = 0x40

# --- RFC 7296 section 3.15: the configuration payload (CP) ----------------------------------
class CfgType(IntEnum):
    """IANA "IKEv2 Configuration Payload CFG Types"; RFC 7296 section 3.15."""

    CFG_REQUEST = 1
    CFG_REPLY = 2
    CFG_SET = 3
    CFG_ACK = 4


class CfgAttribute(IntEnum):
    """IANA "IKEv2 Configuration Payload Attribute Types"; RFC 7296 section 3.15.1."""

    INTERNAL_IP4_ADDRESS = 1
    INTERNAL_IP4_NETMASK = 2
    INTERNAL_IP4_DNS = 3
    INTERNAL_IP4_NBNS = 4
    INTERNAL_IP4_DHCP = 6
    APPLICATION_VERSION = 7
    INTERNAL_IP6_ADDRESS = 8
    INTERNAL_IP6_DNS = 10
    INTERNAL_IP6_DHCP = 12
    INTERNAL_IP4_SUBNET = 13
    SUPPORTED_ATTRIBUTES = 14
    INTERNAL_IP6_SUBNET = 15


#: section 3.15.1: the attribute header (R bit and 15-bit type, 16-bit length) and CP header
CP_HEADER_LEN: Final = 4
CP_ATTR_HEADER_LEN: Final = 4
#: section 3.15.3: INTERNAL_IP6_ADDRESS is 16 octets of address and one of prefix length
CP_IP6_ADDRESS_LEN: Final = 17
