"""UDP GSO batching on send and GRO on receive, over loopback (no root), and the fallback."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os

import pytest

from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.tunnel.core import Tunnel
from tests.tunnel.test_tunnel import ip4

A_IN, B_IN = "198.18.100.1", "198.18.100.2"


class FakeTun:
    """Inner packets queued in memory, read the way TunDevice.read_into reads them."""

    def __init__(self, packets: list[bytes]) -> None:
        self.packets = list(packets)

    def read_into(self, buf: memoryview) -> int:
        if not self.packets:
            return -1
        p = self.packets.pop(0)
        buf[: len(p)] = p
        return len(p)


class RefusingSocket:
    """A socket whose GSO sends fail as on a kernel or NIC without UDP segmentation."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.refused = 0

    def sendmsg(self, *args):
        self.refused += 1
        raise OSError(errno.EIO, "Input/output error")

    def sendto(self, data, addr):
        return self.sock.sendto(data, addr)


class HoldingInterface(InProcessInterface):
    """Holds the views it is given until ``flush``, as the TUN interface's TCP coalescer
    does: a view the endpoint overwrote before flushing would show up here as a wrong
    packet."""

    def __init__(self) -> None:
        super().__init__(maxsize=100_000)
        self.held: list[memoryview] = []
        self.flushes = 0

    def write(self, packet: memoryview) -> None:
        self.held.append(packet)

    def flush(self) -> None:
        self.flushes += 1
        for v in self.held:
            super().write(v)
        self.held = []


async def endpoints(ib: InProcessInterface | None = None, offload: bool = True):
    k = os.urandom(20)
    tb = Tunnel()
    pb = tb.add_peer("a", [ipaddress.ip_network(A_IN + "/32")])
    tb.install_inbound(pb, InboundSA(0x5000, AES_GCM_128, k))
    ib = ib or InProcessInterface(maxsize=100_000)
    b = Endpoint(tb, ib, [("127.0.0.1", 0)], offload=offload)
    await b.start()
    ta = Tunnel()
    pa = ta.add_peer("b", [ipaddress.ip_network(B_IN + "/32")], addr=b.local_addresses()[0])
    ta.set_outbound(pa, OutboundSA(0x5000, AES_GCM_128, k))
    a = Endpoint(ta, InProcessInterface(), [("127.0.0.1", 0)])
    await a.start()
    return a, b, ib


async def collect(ib: InProcessInterface, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        out.append(await asyncio.wait_for(ib.recv(), 2.0))
    return out


def workload() -> list[bytes]:
    # runs of equal sizes, a shorter packet ending a run, a longer one starting a new run,
    # more than 64 segments in one run, and a run longer than one 64 KiB batch
    sizes = [1400] * 70 + [600] + [1400] * 5 + [1200] * 3 + [1300] + [100] * 10 + [1438] * 50
    return [ip4(A_IN, B_IN, s) for s in sizes]


async def test_gso_batches_arrive_complete_and_in_order():
    a, b, ib = await endpoints()
    try:
        assert a.gso, "this kernel has UDP_SEGMENT"
        pkts = workload()
        a.budget = 1000
        a.drain_inner(FakeTun(pkts).read_into)
        got = await collect(ib, len(pkts))
        assert got == pkts
        assert a.gso_sends >= 4  # far fewer sends than packets
        assert b.gro_batches >= 1  # and the receiver got them coalesced
        assert not a.drops.as_dict()
    finally:
        a.close()
        b.close()


async def test_gso_refused_falls_back_to_one_datagram_per_packet():
    a, b, ib = await endpoints()
    try:
        peer = a.tunnel.peers["b"]
        proxy = RefusingSocket(peer.sock)
        peer.sock = proxy
        pkts = workload()
        a.budget = 1000
        a.drain_inner(FakeTun(pkts).read_into)
        assert proxy.refused == 1 and a.gso is False
        assert await collect(ib, len(pkts)) == pkts
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("offload", [True, False])
async def test_interface_may_hold_packets_until_flush(offload):
    """With GRO and without, the endpoint flushes the interface before it reads over the
    packets it handed out."""
    ib = HoldingInterface()
    a, b, _ = await endpoints(ib, offload=offload)
    try:
        pkts = workload() * 3
        a.budget = 1000
        a.drain_inner(FakeTun(pkts).read_into)
        got = await collect(ib, len(pkts))
        assert got == pkts
        assert (b.gro_batches >= 1) is offload
        assert ib.flushes >= 2
    finally:
        a.close()
        b.close()
