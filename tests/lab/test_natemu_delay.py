"""lab/natemu.py's TUN delay in the namespace lab (root): 50 ms on A's and B's outgoing
UDP gives a UDP round trip A -> B -> A through NAT1 of about 100 ms, and none without it;
order kept; the delay's device goes with its process."""

from __future__ import annotations

import time

import pytest

from nattunnel.lab.natemu import start_delay
from nattunnel.lab.nattypes import NatLab
from nattunnel.lab.netns import HOST_ADDR
from tests.support.lab import require_lab_tools

pytestmark = pytest.mark.root


def _rtts(lab: NatLab, n: int = 5) -> tuple[list[float], list[bytes]]:
    a, b = lab.udp_peer("a"), lab.udp_peer("b", 5000)
    rtts, order = [], []
    for i in range(n):
        start = time.monotonic()
        assert a.send(HOST_ADDR["b"], 5000, b"%d" % i) == 0
        got = b.recv(2.0)
        assert got is not None
        order.append(got[0])
        assert b.send(got[1], got[2], got[0]) == 0
        assert a.recv(2.0) is not None
        rtts.append(time.monotonic() - start)
    lab.stop(a.proc)
    lab.stop(b.proc)
    return rtts, order


def test_udp_round_trip_with_50_ms_each_way() -> None:
    require_lab_tools()
    with NatLab("two", with_e=False) as lab:
        before, _ = _rtts(lab)
        procs = [start_delay(lab, "a", "198.19.1.2", 0.05),
                 start_delay(lab, "b", HOST_ADDR["b"], 0.05)]
        rtts, order = _rtts(lab)
        print("RTT before", before, "with the delay", rtts)
        assert order == [b"%d" % i for i in range(5)]
        assert min(before) < 0.08
        assert all(0.1 <= r < 0.3 for r in rtts), rtts
        for p in procs:
            lab.stop(p)
        assert "dly0" not in lab.exec("a", "ip", "link").stdout
        after, _ = _rtts(lab)
        assert min(after) < 0.08
