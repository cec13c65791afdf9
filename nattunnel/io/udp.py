"""UDP sockets for the data path: the Linux offload and socket-option numbers the ``socket``
module does not name, and opening a NAT-T socket (buffers, drop counts, GRO, GSO).

Part of ``nattunnel.io``; imports only the standard library and ``nattunnel.addr``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Final

from ..addr import Addr, format_addr

# Linux UDP offloads (include/uapi/linux/udp.h).
SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
#: most segments in one GSO send (UDP_MAX_SEGMENTS in the kernel)
GSO_MAX_SEGMENTS: Final = 64
#: the largest UDP payload over IPv4 (65535 - 20 - 8): a GSO batch may not exceed it
GSO_MAX_BYTES: Final = 65507
#: SOL_SOCKET option (include/uapi/asm-generic/socket.h): a control message on receive with
#: the socket's running count of datagrams the kernel dropped (receive buffer full)
SO_RXQ_OVFL: Final = 40
#: the largest UDP payload (and the largest GRO aggregate)
MAX_DATAGRAM: Final = 65535
#: the NAT-T sockets' send and receive buffers
SOCKBUF: Final = 4 << 20
#: the control messages' formats: UDP_GRO's segment size, UDP_SEGMENT's, SO_RXQ_OVFL's count
GRO_SEG: Final = struct.Struct("=i")
GSO_SEG: Final = struct.Struct("=H")
U32: Final = struct.Struct("=I")


def family(addr: Addr) -> int:
    """The address family of ``addr``, from its host (not from the tuple's length: an IPv6
    address written as (host, port) is still IPv6, and finds the IPv6 socket)."""
    return socket.AF_INET6 if ":" in addr[0] else socket.AF_INET


def host_family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@dataclass(frozen=True, slots=True)
class NattSocket:
    """An open NAT-T socket and the offloads it has."""

    sock: socket.socket
    #: UDP_GRO is on: a read may hold many datagrams
    gro: bool
    #: the kernel knows UDP_SEGMENT: sends may be batched
    gso: bool


def mapped(addr: Addr) -> Addr:
    """An IPv4 address as a dual-stack IPv6 socket sends to it and reports it
    (``::ffff:a.b.c.d``); an IPv6 address as it is."""
    if ":" in addr[0]:
        return addr
    return ("::ffff:" + addr[0], addr[1], 0, 0)


def unmapped(addr: Addr) -> Addr:
    """The IPv4 address behind ``::ffff:a.b.c.d`` (what a dual-stack socket reports for an
    IPv4 peer); any other address as it is."""
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        return (host[7:], addr[1])
    return addr


def open_natt_socket(host: str, port: int, *, offload: bool,
                     dual_stack: bool = False) -> NattSocket:
    """A non-blocking UDP socket bound to (host, port) with large buffers and SO_RXQ_OVFL;
    with ``offload``, UDP GRO on and GSO probed. An IPv6 socket is IPv6-only unless
    ``dual_stack`` (``[::]`` with no IPv4 listen address: IPv4 peers reach it as
    ``::ffff:a.b.c.d``). Raises OSError naming the address."""
    fam = host_family(host)
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKBUF)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKBUF)
        with contextlib.suppress(OSError):  # Linux 2.6.33+
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        where = format_addr((host, port))
        raise OSError(e.errno, f"cannot listen on {where}: {e.strerror}") from e
    gro = gso = False
    if offload:
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            gro = True
        except OSError:
            pass
        try:
            sock.getsockopt(SOL_UDP, UDP_SEGMENT)
            gso = True
        except OSError:
            pass
    return NattSocket(sock, gro, gso)
