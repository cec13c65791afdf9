"""The asyncio endpoint on loopback, without root: in-process interfaces, the NAT emulator."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket

import pytest

from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_256, CHACHA20_POLY1305
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.lab.natemu import NatEmulator
from nattunnel.tunnel.core import Tunnel
from tests.support.aio import loop_errors, until
from tests.support.packets import A_INNER, B_INNER, ip4


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
