"""The asyncio endpoint on loopback, without root: in-process interfaces, the NAT emulator."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct

import pytest

from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_256, CHACHA20_POLY1305
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.lab.natemu import NatEmulator
from nattunnel.tunnel.core import Tunnel
from tests.support.aio import loop_errors, until
from tests.tunnel.test_tunnel import A_INNER, B_INNER, ip4


class Pair:
    """Endpoint A behind the NAT emulator, endpoint B public, both on 127.0.0.1."""

    def __init__(self) -> None:
        self.nat: NatEmulator | None = None
        self.a: Endpoint | None = None
        self.b: Endpoint | None = None

    async def start(self, *, keepalive: bool, interval: float = 20.0,
                    nat_timeout: float = 30.0, suite=AES_GCM_256, **nat_kw) -> Pair:
        k_ab, k_ba = os.urandom(suite.keymat_len), os.urandom(suite.keymat_len)
        tb = Tunnel()
        pb = tb.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")])
        tb.set_outbound(pb, OutboundSA(0x1001, suite, k_ba))
        tb.install_inbound(pb, InboundSA(0x2001, suite, k_ab))
        self.ib = InProcessInterface()
        self.b = Endpoint(tb, self.ib, [("127.0.0.1", 0)])
        await self.b.start()
        b_addr = self.b.local_addresses()[0]
        self.nat = NatEmulator(b_addr, mapping_timeout=nat_timeout, **nat_kw)
        await self.nat.start()
        loop = asyncio.get_running_loop()
        ta = Tunnel()
        pa = ta.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")],
                         addr=self.nat.inside_address, keepalive=keepalive,
                         keepalive_interval=interval, now=loop.time())
        ta.set_outbound(pa, OutboundSA(0x2001, suite, k_ab))
        ta.install_inbound(pa, InboundSA(0x1001, suite, k_ba))
        self.ia = InProcessInterface()
        self.a = Endpoint(ta, self.ia, [("127.0.0.1", 0)])
        await self.a.start()
        return self

    @property
    def a_inside(self):
        return self.a.local_addresses()[0]

    def close(self) -> None:
        for x in (self.a, self.b, self.nat):
            if x is not None:
                x.close()


@pytest.fixture
async def pair():
    p = Pair()
    yield p
    p.close()


async def recv(iface: InProcessInterface, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(iface.recv(), timeout)


async def test_traffic_both_ways_through_the_nat(pair):
    await pair.start(keepalive=False)
    pkt = ip4(A_INNER, B_INNER, 1400)
    assert pair.ia.send(pkt) > 0
    assert await recv(pair.ib) == pkt
    mapped = pair.nat.external_address(pair.a_inside)
    assert pair.b.tunnel.peers["a"].addr == mapped
    back = ip4(B_INNER, A_INNER, 200)
    assert pair.ib.send(back) > 0
    assert await recv(pair.ia) == back


async def test_many_packets_drain_in_batches(pair):
    await pair.start(keepalive=False, suite=CHACHA20_POLY1305)
    # bursts that fit the NAT emulator's socket buffers (it relays one datagram per callback)
    pkts = [ip4(A_INNER, B_INNER, 100 + i) for i in range(400)]
    got = []
    for i in range(0, len(pkts), 50):
        for p in pkts[i : i + 50]:
            pair.ia.send(p)
        got += [await recv(pair.ib) for _ in range(50)]
    assert sorted(got) == sorted(pkts)


async def test_keepalives_hold_the_mapping_open(pair):
    await pair.start(keepalive=True, interval=0.15, nat_timeout=0.6)
    pair.ia.send(ip4(A_INNER, B_INNER))
    await recv(pair.ib)
    await asyncio.sleep(1.8)  # three NAT timeouts of silence, apart from keepalives
    assert pair.a.tunnel.peers["b"].keepalives_sent >= 6
    assert pair.b.tunnel.keepalives_received >= 6
    back = ip4(B_INNER, A_INNER)
    pair.ib.send(back)
    assert await recv(pair.ia) == back
    assert pair.nat.counters.rebinds == 0


async def test_without_keepalives_the_mapping_expires(pair):
    await pair.start(keepalive=False, nat_timeout=0.4)
    pair.ia.send(ip4(A_INNER, B_INNER))
    await recv(pair.ib)
    await asyncio.sleep(1.2)
    assert pair.nat.mappings == []  # expired
    pair.ib.send(ip4(B_INNER, A_INNER))
    with pytest.raises(asyncio.TimeoutError):
        await recv(pair.ia, timeout=0.5)


async def test_nat_rebinding_moves_the_peer(pair):
    await pair.start(keepalive=False)
    pair.ia.send(ip4(A_INNER, B_INNER))
    await recv(pair.ib)
    old = pair.b.tunnel.peers["a"].addr
    new = pair.nat.rebind(pair.a_inside)
    assert new != old
    # B's packets to the old port are lost now; A's next packet moves B's view of A
    pair.ib.send(ip4(B_INNER, A_INNER))
    with pytest.raises(asyncio.TimeoutError):
        await recv(pair.ia, timeout=0.3)
    pair.ia.send(ip4(A_INNER, B_INNER))
    await recv(pair.ib)
    assert pair.b.tunnel.peers["a"].addr == new
    assert pair.b.tunnel.peers["a"].rebinds == 1
    back = ip4(B_INNER, A_INNER)
    pair.ib.send(back)
    assert await recv(pair.ia) == back


async def test_hostile_datagrams_are_dropped_and_counted(pair):
    await pair.start(keepalive=False)
    pair.ia.send(ip4(A_INNER, B_INNER))
    await recv(pair.ib)
    b_addr = pair.b.local_addresses()[0]
    # capture a genuine ESP packet to replay it
    captured: list[bytes] = []
    sniff = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sniff.bind(("127.0.0.1", 0))
    evil = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    real = pair.a.tunnel.peers["b"].outbound
    buf = memoryview(bytearray(2048))
    n = real.encapsulate_into(ip4(A_INNER, B_INNER), buf)
    captured.append(bytes(buf[:n]))
    evil.sendto(captured[0], b_addr)  # genuine: accepted, moves the peer to `evil`
    n = real.encapsulate_into(ip4(A_INNER, B_INNER), buf)
    forged = bytearray(buf[:n])  # a fresh sequence number, then a broken ICV
    forged[-1] ^= 0xFF
    for junk in [b"", b"\x01", b"\xff", bytes(3), b"\x00\x00\x00\x07" + bytes(50),
                 b"\x12\x34\x56\x78" + bytes(50), bytes(forged), captured[0],
                 captured[0][:30]]:
        evil.sendto(junk, b_addr)
    await asyncio.sleep(0.2)
    t = pair.b.tunnel
    sa = t.peers["a"].inbound[0]
    assert sa.drops[DropReason.AUTH_FAILED] == 1
    assert sa.drops[DropReason.REPLAYED] == 1
    assert sa.drops[DropReason.TRUNCATED] == 1
    assert t.drops[DropReason.UNKNOWN_SPI] == 1
    assert t.drops[DropReason.RESERVED_SPI] == 1
    assert t.drops[DropReason.MALFORMED] == 1
    assert t.drops[DropReason.TRUNCATED] >= 1
    assert t.keepalives_received == 1
    # the tunnel still works after A's next packet moves B back
    pair.ia.send(ip4(A_INNER, B_INNER))
    await recv(pair.ib)
    back = ip4(B_INNER, A_INNER)
    pair.ib.send(back)
    assert await recv(pair.ia) == back
    sniff.close()
    evil.close()


async def test_close_releases_sockets(pair):
    await pair.start(keepalive=True, interval=0.1)
    port = pair.b.local_addresses()[0][1]
    pair.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))  # free again
    s.close()


async def test_ipv6_underlay_and_two_sockets():
    """B listens on 127.0.0.1 and [::1]; A reaches it over IPv6; B answers on that socket."""
    k_ab, k_ba = os.urandom(36), os.urandom(36)
    tb = Tunnel()
    pb = tb.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")])
    tb.set_outbound(pb, OutboundSA(0x1001, AES_GCM_256, k_ba))
    tb.install_inbound(pb, InboundSA(0x2001, AES_GCM_256, k_ab))
    ib = InProcessInterface()
    b = Endpoint(tb, ib, [("127.0.0.1", 0), ("::1", 0)])
    await b.start()
    b6 = next(a for a in b.local_addresses() if len(a) == 4)
    ta = Tunnel()
    pa = ta.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")], addr=("::1", b6[1], 0, 0))
    ta.set_outbound(pa, OutboundSA(0x2001, AES_GCM_256, k_ab))
    ta.install_inbound(pa, InboundSA(0x1001, AES_GCM_256, k_ba))
    ia = InProcessInterface()
    a = Endpoint(ta, ia, [("::1", 0)])
    await a.start()
    try:
        pkt = ip4(A_INNER, B_INNER, 300)
        assert ia.send(pkt) > 0
        assert await recv(ib) == pkt
        assert len(tb.peers["a"].addr) == 4  # learned over IPv6
        back = ip4(B_INNER, A_INNER, 300)
        assert ib.send(back) > 0
        assert await recv(ia) == back
    finally:
        a.close()
        b.close()


async def test_listen_error_names_the_address():
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    e = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", port)])
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        await e.start()
    taken.close()


async def test_peer_added_to_a_running_endpoint_gets_traffic_and_keepalives():
    """Endpoint.add_peer after start: the peer gets a socket and its keepalive timer."""
    k_ab, k_ba = os.urandom(36), os.urandom(36)
    tb = Tunnel()
    ib = InProcessInterface()
    b = Endpoint(tb, ib, [("127.0.0.1", 0)])
    await b.start()
    ta = Tunnel()
    ia = InProcessInterface()
    a = Endpoint(ta, ia, [("127.0.0.1", 0)])
    await a.start()
    try:
        pa = a.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")],
                        addr=b.local_addresses()[0])
        ta.set_outbound(pa, OutboundSA(0x2001, AES_GCM_256, k_ab))
        ta.install_inbound(pa, InboundSA(0x1001, AES_GCM_256, k_ba))
        pb = b.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")],
                        addr=a.local_addresses()[0], keepalive=True, keepalive_interval=0.1)
        tb.set_outbound(pb, OutboundSA(0x1001, AES_GCM_256, k_ba))
        tb.install_inbound(pb, InboundSA(0x2001, AES_GCM_256, k_ab))
        pkt = ip4(A_INNER, B_INNER, 300)
        assert ia.send(pkt) > 0
        assert await recv(ib) == pkt
        back = ip4(B_INNER, A_INNER, 300)
        assert ib.send(back) > 0
        assert await recv(ia) == back
        await asyncio.sleep(0.5)  # B idle towards A: keepalives every 0.1 s
        assert pb.keepalives_sent >= 2 and ta.keepalives_received >= 2
        with pytest.raises(ValueError, match="overlaps"):
            b.add_peer("c", [ipaddress.ip_network(A_INNER + "/32")])
    finally:
        a.close()
        b.close()


async def test_data_path_exception_is_counted_and_the_reader_goes_on(pair, monkeypatch):
    await pair.start(keepalive=False)
    errors = loop_errors()
    real = pair.b.tunnel.receive
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the tunnel core")
        return real(*args)

    monkeypatch.setattr(pair.b.tunnel, "receive", flaky)
    pkt = ip4(A_INNER, B_INNER, 300)
    pair.ia.send(pkt)  # lost to the bug
    await until(lambda: calls)
    pair.ia.send(pkt)
    assert await recv(pair.ib) == pkt
    assert pair.b.errors == {"receive": 1}
    assert pair.b.drops[DropReason.INTERNAL_ERROR] == 1
    assert errors == []


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
