"""The socket filter under floods and the kernel's drop counts (io/sockfilter.py), on
loopback without root: the BPF program on real sockets, the filter going on and off with an
endpoint, and receive-buffer drops counted from SO_RXQ_OVFL and /proc."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct

import pytest

from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_256
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.tunnel.core import Tunnel
from tests.support.aio import until
from tests.support.packets import A_INNER, B_INNER, ip4


async def recv(iface: InProcessInterface, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(iface.recv(), timeout)


# --- kernel receive-buffer drops (SO_RXQ_OVFL, /proc/net/udp) ---------------------------------
@pytest.mark.parametrize("offload", [True, False], ids=["gro-recvmsg", "recvfrom"])
async def test_kernel_receive_buffer_drops_are_counted(offload):
    """A socket with a tiny receive buffer, flooded while nobody reads it, drops datagrams
    in the kernel: the stats show them with the other drops, and the tunnel still works."""
    suite = AES_GCM_256
    key = os.urandom(suite.keymat_len)
    tb = Tunnel()
    pb = tb.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")])
    tb.install_inbound(pb, InboundSA(0x2001, suite, key))
    ib = InProcessInterface()
    b = Endpoint(tb, ib, [("127.0.0.1", 0)], offload=offload)
    await b.start()
    sock = b.socks[0]
    loop = asyncio.get_running_loop()
    out = OutboundSA(0x2001, suite, key)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, 40)  # SO_RXQ_OVFL on
        reader = b.receiver.on_udp_gro if b.offload and _gro(sock) else b.receiver.on_udp
        loop.remove_reader(sock.fileno())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(300):
            s.sendto(os.urandom(1000), sock.getsockname())
        assert b.stats()["endpoint_drops"]["kernel_rcvbuf"] > 0
        loop.add_reader(sock.fileno(), reader, sock)
        await asyncio.sleep(0.1)  # the few queued datagrams are read (unknown SPIs)
        buf = memoryview(bytearray(2048))
        pkt = ip4(A_INNER, B_INNER, 1000)
        n = out.encapsulate_into(pkt, buf)
        s.sendto(buf[:n], sock.getsockname())  # carries the drop count as a control message
        assert await recv(ib) == pkt
        stats = b.stats()
        dropped = stats["endpoint_drops"]["kernel_rcvbuf"]
        assert 0 < dropped <= 300
        assert stats["kernel_drops"] == {f"127.0.0.1:{sock.getsockname()[1]}": dropped}
        if reader == b.receiver.on_udp_gro:
            assert b.sock_filter.rxq_ovfl[sock.fileno()] == dropped
    finally:
        s.close()
        b.close()


def _gro(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(17, 104))
    except OSError:
        return False


# --- the socket filter under a flood of unknown SPIs ------------------------------------------
def test_spi_filter_program_in_the_kernel():
    """The classic BPF program on a real socket: what it lets through and what it drops."""
    from nattunnel.io.sockfilter import attach_filter, spi_filter

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    attach_filter(rx, spi_filter([0x2001, 0x3003]))
    rx.settimeout(0.2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    passes = [b"\xff", b"ab", bytes(4) + b"ike" * 20,
              struct.pack("!II", 0x2001, 1) + bytes(28),  # 36: the smallest ESP packet
              struct.pack("!II", 0x3003, 9) + bytes(1392)]
    drops = [struct.pack("!II", 0x2002, 1) + bytes(1392),  # an SPI we have no SA for
             struct.pack("!II", 7, 1) + bytes(60),  # reserved
             struct.pack("!II", 0x2001, 1) + bytes(27),  # our SPI, truncated
             os.urandom(65000)[:4].replace(bytes(4), b"\x80\0\0\0") + bytes(64996)]
    for data in drops + passes:
        tx.sendto(data, rx.getsockname())
    got = []
    with pytest.raises(TimeoutError):
        while True:
            got.append(rx.recv(70000))
    assert got == passes
    assert spi_filter(range(1000, 6000)) is None  # too many SPIs to list
    tx.close()
    rx.close()


def test_spi_filter_lets_stun_through_only_when_the_tunnel_demultiplexes_it():
    """Under a flood the STUN client's answers still arrive: with ``stun`` a datagram with
    a first word below 0x40000000 and the magic cookie passes; an unknown SPI with the
    cookie's octets at offset 4, at or above 0x40000000, does not."""
    from nattunnel.constants import STUN_MAGIC_COOKIE
    from nattunnel.io.sockfilter import attach_filter, spi_filter

    stun = struct.pack("!HHI", 0x0101, 12, STUN_MAGIC_COOKIE) + os.urandom(12) + bytes(12)
    ours = struct.pack("!II", 0x40000001, 1) + bytes(60)
    lookalike = struct.pack("!II", 0x50000000, STUN_MAGIC_COOKIE) + bytes(60)
    for with_stun, passes in ((True, [stun, ours]), (False, [ours])):
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        prog = spi_filter([0x40000001], stun=with_stun)
        assert prog is not None
        attach_filter(rx, prog)
        rx.settimeout(0.2)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for data in (stun, lookalike, ours):
            tx.sendto(data, rx.getsockname())
        got = []
        with pytest.raises(TimeoutError):
            while True:
                got.append(rx.recv(70000))
        assert got == passes, with_stun
        tx.close()
        rx.close()


def test_spi_filter_with_thousands_of_spis():
    """More SPIs than one conditional jump reaches: the groups and their trampolines."""
    from nattunnel.io.sockfilter import attach_filter, spi_filter

    spis = list(range(0x10000, 0x10000 + 3000 * 7, 7))
    prog = spi_filter(spis)
    assert prog is not None and len(prog) <= 4096
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    attach_filter(rx, prog)
    rx.settimeout(0.2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ours = [spis[0], spis[249], spis[250], spis[1234], spis[-1]]
    theirs = [spis[0] + 1, spis[-1] + 7, 0x0FFFF, 0x7FFFFFFF]
    for spi in theirs + ours:
        tx.sendto(struct.pack("!II", spi, 1) + bytes(100), rx.getsockname())
    tx.sendto(bytes(4) + b"ike" * 20, rx.getsockname())
    got = []
    with pytest.raises(TimeoutError):
        while True:
            got.append(struct.unpack("!I", rx.recv(2048)[:4])[0])
    assert got == [*ours, 0]
    tx.close()
    rx.close()


async def test_filter_goes_on_under_a_flood_and_off_after_it(monkeypatch):
    import nattunnel.io.sockfilter as ep_mod

    monkeypatch.setattr(ep_mod, "FILTER_CHECK", 0.05)
    monkeypatch.setattr(ep_mod, "FILTER_ON_RATE", 1000)  # 50 per check
    monkeypatch.setattr(ep_mod, "FILTER_OFF_RATE", 200)  # 10 per check
    monkeypatch.setattr(ep_mod, "FILTER_QUIET", 0.3)
    suite = AES_GCM_256
    key, key2 = os.urandom(suite.keymat_len), os.urandom(suite.keymat_len)
    tb = Tunnel()
    pb = tb.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")])
    tb.install_inbound(pb, InboundSA(0x2001, suite, key))
    ib = InProcessInterface()
    b = Endpoint(tb, ib, [("127.0.0.1", 0)])
    await b.start()
    dst = b.socks[0].getsockname()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    buf = memoryview(bytearray(2048))

    def esp(out: OutboundSA, pkt: bytes) -> bytes:
        return bytes(buf[: out.encapsulate_into(pkt, buf)])

    try:
        # a trickle of junk: counted by reason in user space, no filter
        for _ in range(20):
            s.sendto(struct.pack("!I", 0x9999) + bytes(60), dst)
        await asyncio.sleep(0.2)
        assert not b.filter_on and tb.drops[DropReason.UNKNOWN_SPI] == 20
        # a flood: the filter goes on, the tunnel still works, the kernel counts the rest
        out = OutboundSA(0x2001, suite, key)
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.5
        while loop.time() < end:
            for _ in range(100):
                s.sendto(struct.pack("!I", 0x9999) + bytes(60), dst)
            await asyncio.sleep(0.01)
        assert b.filter_on and b.filter_engaged == 1
        seen = tb.drops[DropReason.UNKNOWN_SPI]
        for _ in range(200):
            s.sendto(struct.pack("!I", 0x9999) + bytes(60), dst)
        pkt = ip4(A_INNER, B_INNER, 500)
        s.sendto(esp(out, pkt), dst)
        assert await recv(ib) == pkt
        stats = b.stats()
        assert stats["kernel_filter"] == {"on": True, "engaged": 1, "spis": 1}
        # (a receive-buffer drop elsewhere in this namespace meanwhile would count as such)
        kernel = stats["endpoint_drops"]
        assert kernel.get("kernel_filter", 0) + kernel.get("kernel_rcvbuf", 0) >= 200
        assert tb.drops[DropReason.UNKNOWN_SPI] == seen  # none reached user space
        # an SA installed while the filter is on is let through at once
        tb.install_inbound(pb, InboundSA(0x2002, suite, key2))
        pkt = ip4(A_INNER, B_INNER, 600)
        s.sendto(esp(OutboundSA(0x2002, suite, key2), pkt), dst)
        assert await recv(ib) == pkt
        # quiet again: the filter comes off, junk is counted by reason again
        await until(lambda: not b.filter_on, timeout=3.0)
        s.sendto(struct.pack("!I", 0x9999) + bytes(60), dst)
        await until(lambda: tb.drops[DropReason.UNKNOWN_SPI] == seen + 1)
        assert b.stats()["kernel_filter"]["on"] is False
    finally:
        s.close()
        b.close()


async def test_without_kernel_filter_a_flood_stays_in_user_space(monkeypatch):
    import nattunnel.io.sockfilter as ep_mod

    monkeypatch.setattr(ep_mod, "FILTER_CHECK", 0.05)
    monkeypatch.setattr(ep_mod, "FILTER_ON_RATE", 100)
    b = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)], kernel_filter=False)
    await b.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(300):
            s.sendto(struct.pack("!I", 0x9999) + bytes(60), b.socks[0].getsockname())
        await asyncio.sleep(0.2)
        assert not b.filter_on and b.tunnel.drops[DropReason.UNKNOWN_SPI] > 0
    finally:
        s.close()
        b.close()


async def test_no_filter_above_its_spi_limit_and_one_warning(monkeypatch, caplog):
    import nattunnel.io.sockfilter as ep_mod

    monkeypatch.setattr(ep_mod, "FILTER_CHECK", 0.05)
    monkeypatch.setattr(ep_mod, "FILTER_ON_RATE", 1000)
    monkeypatch.setattr(ep_mod, "FILTER_MAX_SPIS", 3)
    t = Tunnel()
    peer = t.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")])
    for spi in range(0x2001, 0x2005):  # 4 SPIs
        t.install_inbound(peer, InboundSA(spi, AES_GCM_256, os.urandom(36)))
    b = Endpoint(t, InProcessInterface(), [("127.0.0.1", 0)])
    await b.start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.4
        while loop.time() < end:
            for _ in range(100):
                s.sendto(struct.pack("!I", 0x9999) + bytes(60), b.socks[0].getsockname())
            await asyncio.sleep(0.01)
        assert not b.filter_on and b.filter_engaged == 0
        assert t.drops[DropReason.UNKNOWN_SPI] > 1000  # still counted in user space
        warned = [r for r in caplog.records if "no socket filter" in r.getMessage()]
        assert len(warned) == 1
    finally:
        s.close()
        b.close()


async def test_filter_checks_run_on_the_endpoints_one_timer(monkeypatch):
    import nattunnel.io.sockfilter as ep_mod

    monkeypatch.setattr(ep_mod, "FILTER_CHECK", 0.05)
    loop = asyncio.get_running_loop()
    b = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)])
    await b.start()
    try:
        due = b.sock_filter.get_timer()
        assert due is not None and due <= loop.time() + 0.05
        # no peer and no IKE: the only deadline is the filter's, and the endpoint's one
        # timer wakes for it (one check per wakeup, none without one)
        await until(lambda: b.sock_filter.checks >= 3)
        assert b.timer_wakeups >= b.sock_filter.checks >= 3
        assert b.sock_filter.get_timer() > due
    finally:
        b.close()
    assert b.sock_filter.get_timer() is None  # stopped with the endpoint
    off = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)], kernel_filter=False)
    await off.start()
    try:
        assert off.sock_filter.get_timer() is None
    finally:
        off.close()
