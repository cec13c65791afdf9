"""The receive path with GRO on and a sender without GSO (a TURN server relays datagram by
datagram): single datagrams are read one behind another and flushed together, so the
interface gets them in one flush (TCP segments coalesced) and its views stay valid until
then, also when a GRO batch follows them. Over loopback, no root."""

from __future__ import annotations

from tests.io.test_receive import HoldingInterface
from tests.support.datapath import FakeTun, collect, endpoints, workload


async def test_single_datagrams_flushed_together() -> None:
    ib = HoldingInterface()
    a, b, _ = await endpoints(ib, offload=True)
    try:
        a.sender.gso = False  # one datagram per sendto, as coturn sends
        a.budget = b.budget = 1000
        pkts = workload() * 3  # more than the receive buffer holds: it is reused once full
        a.drain_inner(FakeTun(pkts).read_into)
        got = await collect(ib, len(pkts))
        assert got == pkts
        assert b.gro_batches == 0
        # one flush per buffer's worth of datagrams, not one per datagram
        assert ib.flushes <= len(pkts) // 20
    finally:
        a.close()
        b.close()


async def test_single_datagrams_then_a_gro_batch_in_order() -> None:
    ib = HoldingInterface()
    a, b, _ = await endpoints(ib, offload=True)
    try:
        a.budget = b.budget = 1000
        singles, batch, tail = workload()[:20], workload()[:70], workload()[-10:]
        a.sender.gso = False
        a.drain_inner(FakeTun(singles).read_into)
        a.sender.gso = True
        a.drain_inner(FakeTun(batch).read_into)
        a.sender.gso = False
        a.drain_inner(FakeTun(tail).read_into)
        pkts = singles + batch + tail
        assert await collect(ib, len(pkts)) == pkts
    finally:
        a.close()
        b.close()
