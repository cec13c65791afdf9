"""The send path (io/send.py) over loopback, no root: UDP GSO batching, what arrives, and the
fallback when the kernel refuses segmentation."""

from __future__ import annotations

import errno

from tests.support.datapath import FakeTun, collect, endpoints, workload


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
