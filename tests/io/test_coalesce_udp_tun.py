"""UDP super-packets through a real TUN device (root), in a network namespace of our own.

A child Python in the namespace opens the TUN device as nattunnel does (``TunDevice.create``
with IFF_VNET_HDR, which probes UDP segmentation offload) and writes datagrams through the
``TunInterface``'s coalescer, in batches as the receive path does:
- to a UDP socket on the device's own addresses (IPv4 and IPv6): every datagram must arrive,
  intact and in order;
- routed on to a second, plain TUN device (no offloads, so the kernel cuts the super-packets
  and completes every checksum in software, as for any link that is not offloaded): read
  back, each must be the datagram that went in (TTL/hop limit one less) and scapy must find
  its checksums right.
Once with USO (the kernel has it since 6.2: the super-packets must be used) and once with it
off (``uso=False``: one write per datagram, the same datagrams out).
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.io.test_coalesce_udp import verified
from tests.support.lab import require_lab_tools, run

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, os, select, socket, struct, sys
from nattunnel.io.tun import TunDevice, TunInterface
from tests.io.test_coalesce_udp import csum

uso = sys.argv[1] == "1"
for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
    with open("/proc/sys/" + key, "w") as f:
        f.write("1")
dev = TunDevice.create("ntuso0", 1500, ["198.18.210.1/24", "fd00:210::1/64"], vnet_hdr=True,
                       uso=uso)
out = TunDevice.create("ntuso1", 1500, ["198.18.211.1/24", "fd00:211::1/64"])
iface = TunInterface(dev)

def udp(src, dst, ident, payload, check=True):
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    s, d = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
    ulen = 8 + len(payload)
    pseudo = s + d + (struct.pack("!IxxxB", ulen, 17) if fam == socket.AF_INET6
                      else struct.pack("!BBH", 0, 17, ulen))
    uh = struct.pack("!HHHH", 4000, 5000, ulen, 0)
    c = (csum(pseudo + uh + payload) or 0xFFFF) if check else 0
    uh = uh[:6] + struct.pack("!H", c)
    if fam == socket.AF_INET6:
        return struct.pack("!IHBB", 0x60000000, ulen, 17, 64) + s + d + uh + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ident, 0x4000, 64, 17, 0, s, d)
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + uh + payload

def payloads(n, tag):
    got = [struct.pack("!HH", tag, i) + os.urandom(1196) for i in range(n - 1)]
    return got + [struct.pack("!HH", tag, n) + os.urandom(300)]  # a shorter last one

def send(pkts):
    for i in range(0, len(pkts), 40):  # one flush per batch, as after each GRO read
        for p in pkts[i : i + 40]:
            iface.write(memoryview(p))
        iface.flush()

socks = {}
for fam, addr in ((socket.AF_INET, "198.18.210.1"), (socket.AF_INET6, "fd00:210::1")):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
    s.bind((addr, 5000))
    socks[fam] = s
local4 = [udp("198.18.210.2", "198.18.210.1", i, p, check=i % 3 != 0)
          for i, p in enumerate(payloads(150, 4))]
local6 = [udp("fd00:210::2", "fd00:210::1", 0, p) for p in payloads(150, 6)]
fwd4 = [udp("198.18.210.2", "198.18.211.2", i, p, check=i % 3 != 0)
        for i, p in enumerate(payloads(100, 44))]
fwd6 = [udp("fd00:210::2", "fd00:211::2", 0, p) for p in payloads(100, 66)]
for pkts in (local4, local6, fwd4, fwd6):
    send(pkts)

received = {4: [], 6: []}
for fam, key, want in ((socket.AF_INET, 4, local4), (socket.AF_INET6, 6, local6)):
    s = socks[fam]
    while len(received[key]) < len(want) and select.select([s], [], [], 2.0)[0]:
        received[key].append(s.recv(70000).hex())
forwarded = []
buf = memoryview(bytearray(1501))
while len(forwarded) < 200 and select.select([out.fd], [], [], 2.0)[0]:
    n = out.read_into(buf)
    if n > 0 and buf[0] >> 4 in (4, 6) and buf[9 if buf[0] >> 4 == 4 else 6] == 17:
        forwarded.append(bytes(buf[:n]).hex())
co = iface.coalescer
print(json.dumps({
    "uso": dev.uso, "writes": co.writes, "udp_coalesced": co.udp_coalesced,
    "write_drops": co.write_drops,
    "sent": {k: [p.hex() for p in v] for k, v in
             (("local4", local4), ("local6", local6), ("fwd4", fwd4), ("fwd6", fwd6))},
    "received": received, "forwarded": forwarded,
}))
"""


def _kernel_has_uso() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (6, 2)


@pytest.fixture
def netns() -> Iterator[str]:
    require_lab_tools(("ip",))
    ns = "ntuso" + secrets.token_hex(4)
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        yield ns
    finally:
        run(["ip", "netns", "del", ns], check=False)


def _run_child(ns: str, uso: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cp = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _SCRIPT,
                         "1" if uso else "0"], capture_output=True, text=True, env=env,
                        timeout=60, cwd=REPO, check=False)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def _forwarded_as_sent(sent: bytes, got: bytes, uso: bool) -> None:
    """``got`` is ``sent`` routed one hop: TTL or hop limit one less, checksums right (one
    that came as 0 over IPv4 stays 0 written alone; a super-packet's gets filled in)."""
    p = verified(got, zero_ok=not uso)
    if sent[0] >> 4 == 4:
        assert got[8] == sent[8] - 1 and got[:8] == sent[:8] and got[12:26] == sent[12:26]
        if struct.unpack_from("!H", sent, 26)[0]:
            assert got[26:28] == sent[26:28]  # the checksum it came with
        else:
            assert (struct.unpack_from("!H", got, 26)[0] != 0) is uso
    else:
        assert got[7] == sent[7] - 1 and got[:7] == sent[:7] and got[8:] == sent[8:]
    assert bytes(p.payload.payload) == sent[28 if sent[0] >> 4 == 4 else 48 :]


@pytest.mark.root
@pytest.mark.parametrize("uso", [True, False], ids=["uso", "no-uso"])
def test_udp_datagrams_cross_a_real_tun_device(netns: str, uso: bool) -> None:
    res = _run_child(netns, uso)
    sent = {k: [bytes.fromhex(p) for p in v] for k, v in res["sent"].items()}
    total = sum(len(v) for v in sent.values())
    assert res["uso"] is (uso and _kernel_has_uso())
    assert res["write_drops"] == 0
    for key, hlen in (("4", 28), ("6", 48)):
        got = [bytes.fromhex(p) for p in res["received"][key]]
        assert got == [p[hlen:] for p in sent["local" + key]]  # all of them, intact, in order
    fwd = [bytes.fromhex(p) for p in res["forwarded"]]
    want = sent["fwd4"] + sent["fwd6"]
    assert len(fwd) == len(want)
    by_payload = {g[28 if g[0] >> 4 == 4 else 48 :][:4]: g for g in fwd}
    for s in want:
        _forwarded_as_sent(s, by_payload[s[28 if s[0] >> 4 == 4 else 48 :][:4]], res["uso"])
    if res["uso"]:
        # 40 per flush (a shorter last one ends a run): the batches went in as super-packets
        assert res["udp_coalesced"] == total
        assert res["writes"] == sum((len(v) + 39) // 40 for v in sent.values())
    else:
        assert res["udp_coalesced"] == 0 and res["writes"] == total
