"""STUN from the endpoint's own NAT-T socket, on loopback without root: a tiny STUN server
(tests/traversal/server.py: aioice's Message on a plain UDP socket) sees the request come
from the port the tunnel uses, the answer comes back through the tunnel's demultiplexing to
the endpoint's StunClient, and ESP keeps flowing both ways meanwhile, none of it lost and no
STUN reaching an SA."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket

import pytest

from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.ike.base import new_child_spi
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.lab.natemu import NatEmulator
from nattunnel.traversal.stun import Binding, TransactionTimedOut
from nattunnel.tunnel.core import Tunnel
from tests.support.aio import loop_errors, until
from tests.support.packets import A_INNER, B_INNER, ip4
from tests.traversal.server import UdpStunServer


async def tunnel_pair(spi_ab: int | None = None) -> tuple[Endpoint, Endpoint]:
    """A and B on 127.0.0.1 with an SA each way (SPIs from new_child_spi unless given)."""
    spi_ab = spi_ab or new_child_spi()
    spi_ba = new_child_spi()
    k_ab, k_ba = os.urandom(20), os.urandom(20)
    tb = Tunnel()
    pb = tb.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")])
    tb.install_inbound(pb, InboundSA(spi_ab, AES_GCM_128, k_ab))
    tb.set_outbound(pb, OutboundSA(spi_ba, AES_GCM_128, k_ba))
    b = Endpoint(tb, InProcessInterface(maxsize=100_000), [("127.0.0.1", 0)])
    await b.start()
    ta = Tunnel()
    pa = ta.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")],
                     addr=b.local_addresses()[0])
    ta.install_inbound(pa, InboundSA(spi_ba, AES_GCM_128, k_ba))
    ta.set_outbound(pa, OutboundSA(spi_ab, AES_GCM_128, k_ab))
    a = Endpoint(ta, InProcessInterface(maxsize=100_000), [("127.0.0.1", 0)])
    await a.start()
    # B learns A's address from A's first packet
    assert a.interface.send(ip4(A_INNER, B_INNER)) > 0
    await asyncio.wait_for(b.interface.recv(), 2.0)
    return a, b


def sa_drops(ep: Endpoint) -> int:
    return sum(sa.drops.total() for p in ep.tunnel.peers.values() for sa in p.inbound)


@pytest.fixture
def server():
    s = UdpStunServer()
    yield s
    s.close()


async def test_reflexive_address_through_the_tunnels_socket_while_esp_flows(server):
    errors = loop_errors()
    a, b = await tunnel_pair()
    try:
        natt = a.local_addresses()[0]
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        sent = 0

        async def traffic(stop: asyncio.Event) -> None:
            nonlocal sent
            while not stop.is_set():
                for _ in range(20):
                    assert a.interface.send(ip4(A_INNER, B_INNER, 100 + sent % 1000)) > 0
                    assert b.interface.send(ip4(B_INNER, A_INNER, 100 + sent % 1000)) > 0
                    sent += 1
                await asyncio.sleep(0.002)
                while (p := b.interface.recv_nowait()) is not None:
                    got_b.append(p)
                while (p := a.interface.recv_nowait()) is not None:
                    got_a.append(p)

        stop = asyncio.Event()
        task = asyncio.create_task(traffic(stop))
        events: list[object] = []
        a.on_stun_event = events.append
        results = []
        for _ in range(10):
            results.append(await asyncio.wait_for(a.stun_bind(server.address), 5.0))
            # several at once too
            results += await asyncio.gather(*(asyncio.wait_for(a.stun_bind(server.address), 5.0)
                                              for _ in range(3)))
        await until(lambda: sent >= 1000, 10.0)  # ESP before, during and after
        stop.set()
        await task
        await until(lambda: (len(got_b) + b.interface.pending() >= sent
                             and len(got_a) + a.interface.pending() >= sent), 5.0)
        while (p := b.interface.recv_nowait()) is not None:
            got_b.append(p)
        while (p := a.interface.recv_nowait()) is not None:
            got_a.append(p)

        assert sent >= 1000
        for r in results:
            assert isinstance(r, Binding)
            # the reflexive address is the tunnel's NAT-T socket, the one peers see
            assert r.mapped == natt and r.mapped[1] == a.local_addresses()[0][1]
            assert r.source == server.address and r.response_origin == server.address
        assert a.stun.mapped_address(server.address) == natt
        assert {addr for _, addr in server.requests} == {natt}
        assert len(events) == len(results) == 40  # on_stun_event saw each binding
        # every answer came through the tunnel's demultiplexing, none reached ESP
        assert a.tunnel.stun_received == 40 and a.stun.counters["succeeded"] == 40
        # no ESP lost, none dropped, no SA saw anything but its own packets
        assert len(got_b) == sent and len(got_a) == sent
        assert a.tunnel.drops.total() == b.tunnel.drops.total() == 0
        assert sa_drops(a) == sa_drops(b) == 0
        assert b.tunnel.peers["a"].addr == natt  # B sees A where STUN said
        assert a.stats()["stun_client"]["succeeded"] == 40
        assert a.tunnel.stats()["stun"] == {"received": 40, "unmatched": 0, "ignored": 0,
                                            "demux": True}
        assert errors == [] and a.errors == {} and b.errors == {}
    finally:
        a.close()
        b.close()


async def test_behind_a_nat_the_reflexive_address_is_the_mapping(server):
    """A behind the NAT emulator (towards the STUN server): the NAT's external address."""
    a, b = await tunnel_pair()
    nat = NatEmulator(server.address)
    await nat.start()
    try:
        r = await asyncio.wait_for(a.stun_bind(nat.inside_address), 5.0)
        assert isinstance(r, Binding)
        assert r.mapped == nat.external_address(a.local_addresses()[0])
        assert r.mapped != a.local_addresses()[0]
    finally:
        nat.close()
        a.close()
        b.close()


async def test_stun_nobody_waits_for_is_counted_as_junk(server):
    """A late or foreign answer (no transaction of ours) is junk like an unknown SPI: counted
    by the STUN client and as UNKNOWN_SPI, which the socket filter's flood check counts."""
    from aioice import stun

    a, b = await tunnel_pair()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        junk = bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                                  attributes={"XOR-MAPPED-ADDRESS": ("198.18.0.1", 1)}))
        before = a.sock_filter.junk_count()
        for _ in range(5):
            s.sendto(junk, a.local_addresses()[0])
        await until(lambda: a.tunnel.stun_unmatched == 5)
        assert a.stun.counters["unmatched"] == 5
        assert a.tunnel.drops[DropReason.UNKNOWN_SPI] == 5
        assert a.sock_filter.junk_count() - before == 5
        r = await asyncio.wait_for(a.stun_bind(server.address), 5.0)  # and it still works
        assert isinstance(r, Binding)
    finally:
        s.close()
        a.close()
        b.close()


async def test_timeout_runs_on_the_endpoints_timer():
    a, b = await tunnel_pair()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await asyncio.wait_for(
            a.stun_bind(silent.getsockname(), rto=0.05, rc=3, rm=2), 5.0)
        assert isinstance(r, TransactionTimedOut) and r.requests == 3
        # requests at 0, 0.05, 0.15, then 0.1 more: 0.25 s
        assert 0.24 <= loop.time() - t0 < 1.0
        silent.setblocking(False)
        n = 0
        while True:
            try:
                silent.recvfrom(2048)
            except BlockingIOError:
                break
            n += 1
        assert n == 3
        assert a.stun.get_timer() is None
    finally:
        silent.close()
        a.close()
        b.close()


async def test_cancelled_binding_ends_its_transaction(server):
    a, b = await tunnel_pair()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(a.stun_bind(silent.getsockname()), 0.2)
        assert a.stun.outstanding() == 0
    finally:
        silent.close()
        a.close()
        b.close()


async def test_stun_refused_with_a_manual_spi_below_0x40000000(server):
    a, b = await tunnel_pair(spi_ab=0x2001)  # B's inbound SA
    try:
        with pytest.raises(ValueError, match="0x00002001"):
            await b.stun_bind(server.address)
        assert b.tunnel.stun_unsafe_spis() == [0x2001]
        # an answer-shaped datagram is dropped as before, not given to the STUN client
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        from aioice import stun
        s.sendto(bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)),
                 b.local_addresses()[0])
        await until(lambda: b.tunnel.stun_ignored == 1)
        assert b.tunnel.drops[DropReason.UNKNOWN_SPI] == 1 and b.stun.counters["received"] == 0
        s.close()
        # A (all SPIs its own) may
        r = await asyncio.wait_for(a.stun_bind(server.address), 5.0)
        assert isinstance(r, Binding)
    finally:
        a.close()
        b.close()


async def test_no_socket_of_the_family(server):
    a, b = await tunnel_pair()
    try:
        with pytest.raises(ValueError, match="address family"):
            a.start_binding(("::1", 3478))
    finally:
        a.close()
        b.close()


async def test_dual_stack_wildcard_and_ipv6():
    """From a dual-stack [::] socket to an IPv4 server (sent to ::ffff:127.0.0.1, answered
    from it), and from an IPv6 socket to an IPv6 server: the reflexive address is the socket's
    own each time."""
    v4 = UdpStunServer("127.0.0.1")
    v6 = UdpStunServer("::1")
    dual = Endpoint(Tunnel(), InProcessInterface(), [("::", 0)])
    both = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0), ("::1", 0)])
    await dual.start()
    await both.start()
    try:
        assert dual.dual_stack
        port = dual.local_addresses()[0][1]
        r = await asyncio.wait_for(dual.stun_bind(v4.address), 5.0)
        assert isinstance(r, Binding) and r.mapped == ("127.0.0.1", port)
        assert r.source == v4.address
        r6 = await asyncio.wait_for(both.stun_bind(v6.address), 5.0)
        port6 = both.local_addresses()[1][1]
        assert isinstance(r6, Binding) and r6.mapped == ("::1", port6, 0, 0)
        r4 = await asyncio.wait_for(both.stun_bind(v4.address), 5.0)
        assert isinstance(r4, Binding) and r4.mapped == both.local_addresses()[0]
        assert {a for _, a in v6.requests} == {("::1", port6)}
    finally:
        for x in (dual, both, v4, v6):
            x.close()
