"""Numbers taken from the specifications, in one place.

Every constant names the RFC section it comes from. Nothing else in the package spells
these numbers out.
"""

from __future__ import annotations

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
