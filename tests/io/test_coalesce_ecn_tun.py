"""ECN marks through a real TUN device (root), in a network namespace of our own: a child
Python opens the device as nattunnel does (``TunDevice.create`` with IFF_VNET_HDR) and
writes IPv4 TCP segments of one flow, some CE-marked, through the ``TunInterface``'s
coalescer; they are routed on to a second, plain TUN device (no offloads: the kernel cuts
every super-packet in software and completes the checksums) and read back. Every segment
must come out once, with its own ECN field and a TCP checksum scapy finds right, and the
coalescer's counters (``stats()``, what ``nattunnel show`` prints) must say what was
joined."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from tests.support.lab import require_lab_tools, run

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, select, subprocess
from nattunnel.io.tun import TunDevice, TunInterface
from tests.io.test_coalesce_ecn import CE, ECT0, seg

with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
    f.write("1")
for key in ("all", "default"):
    with open(f"/proc/sys/net/ipv4/conf/{key}/rp_filter", "w") as f:
        f.write("0")
dev = TunDevice.create("ntecn0", 1500, ["198.18.100.254/24"], vnet_hdr=True)
out = TunDevice.create("ntecn1", 1500, ["198.18.212.1/24"])
# the flow's destination (198.18.100.2) is routed out of the plain device
subprocess.run(["ip", "route", "replace", "198.18.100.2/32", "dev", "ntecn1"], check=True)
iface = TunInterface(dev)
marks = [CE if i in (3, 9, 10) else ECT0 for i in range(16)]
segs = [seg(i, tos) for i, tos in enumerate(marks)]
for p in segs:
    iface.write(memoryview(p))
iface.flush()
got = []
buf = memoryview(bytearray(1501))
while len(got) < len(segs) and select.select([out.fd], [], [], 2.0)[0]:
    n = out.read_into(buf)
    if n > 0 and buf[0] == 0x45 and buf[9] == 6:
        got.append(bytes(buf[:n]).hex())
print(json.dumps({"sent": [p.hex() for p in segs], "got": got,
                  "stats": iface.coalescer.stats()}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    require_lab_tools(("ip",))
    ns = "ntecn" + secrets.token_hex(4)
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield ns
    finally:
        run(["ip", "netns", "del", ns], check=False)


@pytest.mark.root
def test_ce_marks_cross_a_real_tun_device_and_the_counters_say_so(netns: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cp = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", _SCRIPT],
                        capture_output=True, text=True, env=env, timeout=60, cwd=REPO,
                        check=False)
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)
    sent = [IP(bytes.fromhex(p)) for p in res["sent"]]
    got = [IP(bytes.fromhex(p)) for p in res["got"]]
    assert len(got) == len(sent)
    by_seq = {p[TCP].seq: p for p in got}
    for s in sent:
        g = by_seq[s[TCP].seq]
        assert g.tos == s.tos  # the ECN field (CE or ECT(0)) of that very segment
        assert g.ttl == s.ttl - 1 and bytes(g[TCP].payload) == bytes(s[TCP].payload)
        fresh = g.copy()
        del fresh[TCP].chksum
        assert IP(bytes(fresh))[TCP].chksum == g[TCP].chksum  # completed by the kernel
    # runs: 0-2, 3 (CE), 4-8, 9-10 (both CE), 11-15
    assert res["stats"]["super_packets"] == {"tcp": 4, "udp": 0}
    assert res["stats"]["coalesced"] == {"tcp": 15, "udp": 0}
    assert res["stats"]["single"] == 1 and res["stats"]["writes"] == 5
    assert res["stats"]["write_drops"] == 0
