"""Addresses: the one definition of each shape the package passes around, and the one way to
write an address down (IPv6 in brackets, so that the port is never ambiguous).

A base module like ``nattunnel.constants``: every layer may import it; it imports nothing of
the package.
"""

from __future__ import annotations

import ipaddress

#: a socket address as the socket module gives it: (host, port) for IPv4,
#: (host, port, flowinfo, scope_id) for IPv6
Addr = tuple[str, int] | tuple[str, int, int, int]
#: a host and a port as configured or shown (either family; not yet a socket address)
HostPort = tuple[str, int]
#: an IP prefix of either family
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def sockaddr(host: str, port: int) -> Addr:
    """The socket address for (host, port), in the shape the socket module uses for its
    family, so that it compares equal to what ``recvfrom`` returns."""
    if ":" in host:
        return (host, port, 0, 0)
    return (host, port)


#: how a dual-stack IPv6 socket writes an IPv4 address (RFC 4291 section 2.5.5.2)
_MAPPED = "::ffff:"


def format_addr(addr: Addr | HostPort) -> str:
    """``host:port``, with an IPv6 host in brackets: ``198.18.0.1:4500``,
    ``[fd00::1]:4500``. An IPv4 address as a dual-stack socket reports it
    (``::ffff:198.18.0.1``) is written as the IPv4 address it is."""
    host, port = addr[0], addr[1]
    if host.startswith(_MAPPED) and "." in host:
        host = host[len(_MAPPED):]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


__all__ = ["Addr", "HostPort", "Network", "format_addr", "sockaddr"]
