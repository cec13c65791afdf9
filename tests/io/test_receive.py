"""The receive path (io/receive.py) over loopback, no root: with GRO and without, the inner
interface may hold the views it was given until ``flush``."""

from __future__ import annotations

import pytest

from nattunnel.io.endpoint import InProcessInterface
from tests.support.datapath import FakeTun, collect, endpoints, workload


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
