"""Root: STUN from the tunnel's own socket through the lab's real nftables NAT.

Host A (behind the router's masquerade) runs a nattunnel Endpoint with manual SAs to B
(public), sends ESP to B and gets every packet answered, and meanwhile makes STUN Bindings
from the same NAT-T socket with a STUN server on B (tests/traversal/stun_lab_node.py). With
Linux's default masquerade (endpoint-independent mapping in practice), the reflexive address
STUN reports is exactly where B sees A's ESP come from, and the router's conntrack entry says
the same; no ESP is lost or dropped either way, and no STUN reaches an SA. With
``fully-random`` masquerade (a symmetric NAT) the mapping towards the STUN server is not the
one towards B: STUN reports the mapping per destination, which is why netcheck classifies it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from nattunnel.ike.base import new_child_spi
from nattunnel.lab.tunnels import PKG_ROOT
from tests.support.lab import ROUTER_WAN, Lab, lab_fixture  # noqa: F401

NATT, STUN = 4500, 3478
N = 1500


def start(lab: Lab, role: str, *args: object, stdin: bool = False) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
    return lab.popen(role, sys.executable, "-m", "tests.traversal.stun_lab_node", role, *args,
                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                     cwd=str(PKG_ROOT))


def line(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    out = proc.stdout.readline()
    if not out:
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise AssertionError(f"the lab node ended: {err}")
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.root
@pytest.mark.parametrize("masquerade", ["default", "fully-random"])
def test_reflexive_address_is_where_the_peer_sees_us(lab: Lab, masquerade: str) -> None:
    if masquerade != "default":
        lab.set_masquerade(random="fully")
    b_host = lab.addr["b"]
    keys = os.urandom(20).hex(), os.urandom(20).hex()
    spis = f"{new_child_spi():x}", f"{new_child_spi():x}"
    b = start(lab, "b", b_host, NATT, STUN, *keys, *spis, stdin=True)
    try:
        assert line(b) == {"ready": True}
        a = start(lab, "a", b_host, NATT, STUN, *keys, *spis, N)
        ra = line(a)
        a.wait(10)
        assert b.stdin is not None
        b.stdin.write("status\n")
        b.stdin.flush()
        rb = line(b)
    finally:
        lab.stop(b)
    # ESP both ways, none lost, nothing dropped, no STUN reached an SA
    assert ra["errors"] == [] and ra["endpoint_errors"] == {}
    assert ra["sent"] == N and ra["got"] == N and rb["got"] == N
    assert ra["drops"] == ra["sa_drops"] == rb["drops"] == rb["sa_drops"] == 0
    assert ra["stun_received"] == 20 and rb["stun_requests"] == 20
    mapped = set(ra["mapped"])
    assert len(ra["mapped"]) == 20 and len(mapped) == 1
    (reflexive,) = mapped
    seen_by_b = "{}:{}".format(*rb["peer_a"])
    # what the STUN server saw is what it reported
    assert rb["stun_sources"] == [reflexive]
    assert reflexive.startswith(ROUTER_WAN + ":") and seen_by_b.startswith(ROUTER_WAN + ":")
    entries = [e for e in lab.conntrack_list(sport=NATT) if e.src == lab.addr["a"]]
    to_b = [e for e in entries if e.dst == b_host and e.dport == NATT]
    assert to_b, entries
    if masquerade == "default":
        # endpoint-independent in practice: one mapping for the peer and the server, the
        # port kept; the reflexive address is where B sees A
        assert reflexive == seen_by_b == f"{ROUTER_WAN}:{NATT}"
        assert to_b[0].external == (ROUTER_WAN, NATT)
    else:
        # per destination: the server saw another port than B did
        assert reflexive != seen_by_b
        assert f"{to_b[0].external[0]}:{to_b[0].external[1]}" == seen_by_b
