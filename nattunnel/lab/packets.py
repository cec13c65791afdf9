"""Inner packets for tests, the demo and the benchmarks: well-formed enough for the data path.

``ipv4_packet(size)`` is an IPv4/UDP-shaped packet of random octets whose header fields the
ESP layer and the tunnel read (version, total length, protocol); ``inner_packet`` is one from
a given source to a given destination, for the tunnel's routing and source check.
"""

from __future__ import annotations

import ipaddress
import os


def ipv4_packet(size: int) -> bytes:
    """A well-formed IPv4/UDP-shaped inner packet of ``size`` octets (>= 20)."""
    body = bytearray(os.urandom(size))
    body[0] = 0x45
    body[2:4] = size.to_bytes(2, "big")
    body[9] = 17
    return bytes(body)


def inner_packet(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, size: int) -> bytes:
    """``ipv4_packet(size)`` from ``src`` to ``dst``."""
    p = bytearray(ipv4_packet(size))
    p[12:16] = src.packed
    p[16:20] = dst.packed
    return bytes(p)
