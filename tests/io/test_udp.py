"""Opening NAT-T sockets (io/udp.py): buffers, drop counts, the offloads, the errors."""

from __future__ import annotations

import re
import socket

import pytest

from nattunnel.io.udp import (
    SO_RXQ_OVFL,
    SOL_UDP,
    UDP_GRO,
    family,
    host_family,
    open_natt_socket,
)


def test_natt_socket_is_non_blocking_with_large_buffers_and_drop_counts():
    ns = open_natt_socket("127.0.0.1", 0, offload=False)
    try:
        sock = ns.sock
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
        assert sock.getblocking() is False
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0
        # the kernel doubles what it was asked for, and caps it at rmem_max / wmem_max
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) > 0
        assert sock.getsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL) == 1
        # without offload: no GRO, and GSO not even asked about
        assert ns.gro is False and ns.gso is False
        assert sock.getsockopt(SOL_UDP, UDP_GRO) == 0
    finally:
        ns.sock.close()


def test_offload_turns_gro_on_where_the_kernel_has_it():
    ns = open_natt_socket("127.0.0.1", 0, offload=True)
    try:
        assert ns.gro == bool(ns.sock.getsockopt(SOL_UDP, UDP_GRO))
        assert ns.gro and ns.gso, "this kernel has UDP GRO and GSO"
    finally:
        ns.sock.close()


def test_ipv6_socket_is_v6_only():
    ns = open_natt_socket("::1", 0, offload=False)
    try:
        assert ns.sock.family == socket.AF_INET6
        assert ns.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        ns.sock.close()


@pytest.mark.parametrize(("host", "shown"), [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")])
def test_a_taken_port_raises_naming_the_address(host, shown):
    with socket.socket(host_family(host), socket.SOCK_DGRAM) as taken:
        taken.bind((host, 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on {re.escape(shown)}:{port}"):
            open_natt_socket(host, port, offload=True)


def test_families():
    assert family(("198.18.0.1", 4500)) == socket.AF_INET
    assert family(("fd00::1", 4500, 0, 0)) == socket.AF_INET6
    assert host_family("fd00::1") == socket.AF_INET6
    assert host_family("198.18.0.1") == socket.AF_INET
