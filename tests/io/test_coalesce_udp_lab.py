"""UDP coalescing onto TUN end to end (root): ``nattunnel up`` on A and B in the NAT lab, A
sends bursts of equal UDP datagrams over the inner addresses, and B's endpoint writes them to
its TUN device as super-packets. The device counts a super-packet as one received packet, so
B's nt0 counting far fewer packets than the datagrams its socket got shows the coalescing;
every datagram must still arrive, intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import tunnel_lab
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import INNER

COUNT, SIZE, BURST = 2000, 1200, 50

_RECEIVER = r"""
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
s.bind((sys.argv[1], 5300))
print("ready", flush=True)
s.settimeout(3.0)
got, bad = 0, 0
try:
    while True:
        d = s.recv(70000)
        i = int.from_bytes(d[:4], "big")
        if d != i.to_bytes(4, "big") + hashlib.sha256(d[:4]).digest() * (len(d) // 32):
            bad += 1
        got += 1
except socket.timeout:
    pass
print(json.dumps({"got": got, "bad": bad}))
"""

_SENDER = r"""
import hashlib, socket, sys, time
count, size, burst = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 5300))
for i in range(count):
    head = i.to_bytes(4, "big")
    s.send((head + hashlib.sha256(head).digest() * (size // 32))[:4 + 32 * (size // 32)])
    if i % burst == burst - 1:
        time.sleep(0.005)  # bursts the endpoints drain as batches, no queue overflows
"""


def _rx_packets(lab: Lab, role: str) -> int:
    cp = lab.exec(role, "ip", "-j", "-s", "link", "show", "nt0")
    return int(json.loads(cp.stdout)[0]["stats64"]["rx"]["packets"])


@pytest.mark.root
def test_udp_through_the_tunnel_reaches_b_coalesced(lab: Lab, tmp_path: Path) -> None:
    t = tunnel_lab.start(lab, tmp_path)
    assert lab.wait_for(lambda: lab.exec("a", "ping", "-c", "1", "-W", "1", INNER["b"],
                                         check=False).returncode == 0, timeout=10,
                        interval=0.2), t.nodes["a"].log()
    before = _rx_packets(lab, "b")
    server = lab.popen("b", sys.executable, "-u", "-c", _RECEIVER, INNER["b"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stderr is not None
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    lab.exec("a", sys.executable, "-c", _SENDER, INNER["b"], COUNT, SIZE, BURST, timeout=30)
    out, err = server.communicate(timeout=15)
    assert server.returncode == 0, err
    res = json.loads(out)
    rx = _rx_packets(lab, "b") - before
    print(f"{res['got']} datagrams received, B's nt0 counted {rx} packets")
    assert res["bad"] == 0
    assert res["got"] >= COUNT * 0.98, res  # the lab loses nothing; allow a stray drop
    # one super-packet per batch: without coalescing rx would be >= got
    assert rx < res["got"] / 4, (rx, res)
    for role in ("a", "b"):
        assert "Traceback" not in t.nodes[role].log()
