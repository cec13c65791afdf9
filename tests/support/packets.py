"""Inner packets for the data-path tests: IPv4 packets between the tunnel's inner addresses."""

from __future__ import annotations

import ipaddress

from nattunnel.lab.packets import ipv4_packet

#: the inner addresses of tunnel ends A and B
A_INNER = "198.18.100.1"
B_INNER = "198.18.100.2"


def ip4(src: str, dst: str, size: int = 60) -> bytes:
    """An IPv4 packet of ``size`` octets from ``src`` to ``dst``."""
    p = bytearray(ipv4_packet(size))
    p[12:16] = ipaddress.IPv4Address(src).packed
    p[16:20] = ipaddress.IPv4Address(dst).packed
    return bytes(p)
