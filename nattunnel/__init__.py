"""nattunnel: a userspace IPsec NAT-traversal tunnel (RFC 4303 ESP in RFC 3948 UDP)."""

from .esp.drop import DropCounters, DropReason
from .esp.sa import InboundSA, OutboundSA, SequenceNumberExhausted
from .esp.suite import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305, SUITES, Suite, suite_by_name

__version__ = "0.1.0"

__all__ = [
    "AES_GCM_128",
    "AES_GCM_256",
    "CHACHA20_POLY1305",
    "SUITES",
    "DropCounters",
    "DropReason",
    "InboundSA",
    "OutboundSA",
    "SequenceNumberExhausted",
    "Suite",
    "__version__",
    "suite_by_name",
]
