"""nattunnel.addr: the one address formatter and socket-address builder."""

from __future__ import annotations

import socket

from nattunnel.addr import format_addr, sockaddr


def test_format_addr() -> None:
    assert format_addr(("0.0.0.0", 4500)) == "0.0.0.0:4500"
    assert format_addr(("2001:db8::1", 4500)) == "[2001:db8::1]:4500"
    assert format_addr(("fd00::1", 500, 0, 0)) == "[fd00::1]:500"  # a socket's IPv6 address
    # an IPv4 peer behind a dual-stack [::] socket is shown as the IPv4 address it is
    assert format_addr(("::ffff:198.18.0.1", 4500, 0, 0)) == "198.18.0.1:4500"
    assert format_addr(("::ffff:1:2", 4500, 0, 0)) == "[::ffff:1:2]:4500"  # not a mapped one


def test_sockaddr_matches_what_the_socket_module_returns() -> None:
    assert sockaddr("198.18.0.1", 4500) == ("198.18.0.1", 4500)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
        assert sockaddr("::1", port) == s.getsockname()
