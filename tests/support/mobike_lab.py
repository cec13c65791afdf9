"""A lab where host A changes networks, for the MOBIKE tests (root): the minimum topology,
built on ``nattunnel.lab.netns.Lab`` (the same prefix, processes stopped by PID, namespaces
deleted, crash records)::

      A eth1 198.19.1.2/24 ── LAN1 ── router 1 (198.19.1.1 | 198.18.0.1) ──┐
      A eth2 198.19.2.2/24 ── LAN2 ── router 2 (198.19.2.1 | 198.18.0.3) ──┼── WAN ── B 198.18.0.2
      A eth3 198.18.0.5/24 ─────────────────────────────────────────────────┘   (no NAT)

Both routers masquerade what leaves their WAN side (Linux conntrack: the source port kept
when free). A is on one network at a time: ``move("nat1" | "nat2" | "public")`` takes the
old interface down (its routes go with it) and brings the new one up with its default route,
as a laptop that leaves one Wi-Fi for another. ``ping_during`` pings at 10 per second over
the tunnel while a move happens, and counts what is lost.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from nattunnel.lab.netns import HOST_ADDR, Lab

NAT1_WAN, NAT2_WAN = "198.18.0.1", "198.18.0.3"
A_ADDR = {"nat1": "198.19.1.2", "nat2": "198.19.2.2", "public": "198.18.0.5"}
A_IF = {"nat1": "eth1", "nat2": "eth2", "public": "eth3"}
GATEWAY = {"nat1": "198.19.1.1", "nat2": "198.19.2.1", "public": None}
#: where B sees A from on each network (the NAT-T port, kept by masquerade when free)
SEEN = {"nat1": NAT1_WAN, "nat2": NAT2_WAN, "public": A_ADDR["public"]}
B_ADDR = HOST_ADDR["b"]


class MobileLab(Lab):
    """A with three networks (two NATs and none), B public; A starts behind NAT 1."""

    where = "nat1"

    def _build(self, masquerade_random: bool | str) -> None:
        p = self.prefix
        self.ns["r2"] = f"{p}r2"
        for role in ("r", "r2", "s", "a", "b"):
            self._add_ns(self.ns[role])
        s = self.ns["s"]
        for br in ("L1", "L2", "W"):
            self.exec(s, "ip", "link", "add", f"{p}{br}", "type", "bridge")
            self.exec(s, "ip", "link", "set", f"{p}{br}", "up")

        def wire(ns: str, ifname: str, bridge: str, port: str, addr: str,
                 up: bool = True) -> None:
            self.exec(s, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname,
                      "netns", self.ns[ns])
            self.exec(s, "ip", "link", "set", port, "master", f"{p}{bridge}")
            self.exec(s, "ip", "link", "set", port, "up")
            self.exec(ns, "ip", "addr", "add", addr, "dev", ifname)
            if up:
                self.exec(ns, "ip", "link", "set", ifname, "up")

        for router, lan, bridge, wan in (("r", "198.19.1.1", "L1", NAT1_WAN),
                                         ("r2", "198.19.2.1", "L2", NAT2_WAN)):
            wire(router, "lan", bridge, f"{p}{router}l", f"{lan}/24")
            wire(router, "wan", "W", f"{p}{router}w", f"{wan}/24")
            self.exec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            self.exec(router, "nft", "-f", "-", input=(
                f"table ip {p}nat {{\n  chain post {{\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                '    oifname "wan" masquerade\n  }\n}\n'))
        wire("b", "eth0", "W", f"{p}pb", f"{B_ADDR}/24")
        for net, bridge in (("nat1", "L1"), ("nat2", "L2"), ("public", "W")):
            wire("a", A_IF[net], bridge, f"{p}pa{net[-1]}", f"{A_ADDR[net]}/24",
                 up=net == "nat1")
        self.exec("a", "ip", "route", "add", "default", "via", GATEWAY["nat1"])

    def move(self, to: str) -> None:
        """A leaves its network for ``to`` ("nat1", "nat2" or "public")."""
        if to == self.where:
            return
        self.exec("a", "ip", "link", "set", A_IF[self.where], "down")
        self.exec("a", "ip", "link", "set", A_IF[to], "up")
        gw = GATEWAY[to]
        if gw is not None:
            self.exec("a", "ip", "route", "replace", "default", "via", gw)
        self.where = to


@dataclass
class PingResult:
    sent: int
    received: int

    @property
    def lost(self) -> int:
        return self.sent - self.received


def ping_during(lab: Lab, src: str, dst: str, action: Callable[[], None], *,
                before: float = 2.0, after: float = 4.0) -> PingResult:
    """Ping ``dst`` from ``src`` at 10 per second: ``before`` seconds, then ``action`` (a
    move), then ``after`` seconds; what was sent and what came back."""
    count = int((before + after) * 10)
    proc = lab.popen(src, "ping", "-n", "-i", "0.1", "-c", count, "-W", "1", dst,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(before)
    action()
    out, _ = proc.communicate(timeout=before + after + 15)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return PingResult(int(m.group(1)), int(m.group(2)))
