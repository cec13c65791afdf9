"""Loopback endpoints and an inner interface in memory, for the data-path tests (tests/io)."""

from __future__ import annotations

import asyncio
import ipaddress
import os

from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.tunnel.core import Tunnel
from tests.support.packets import ip4

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


async def endpoints(ib: InProcessInterface | None = None, offload: bool = True
                    ) -> tuple[Endpoint, Endpoint, InProcessInterface]:
    """A (sends) and B (receives into ``ib``) on 127.0.0.1: one SA from A to B."""
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
