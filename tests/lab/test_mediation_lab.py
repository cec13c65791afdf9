"""Root: IKEv2 mediation in the NAT lab (docs/traversal.md, "Mediation").

Topology "two": A behind NAT1 and C behind NAT2 (both port-restricted cones, the interesting
case: neither takes a datagram from the other before it sent one there), B on the WAN runs
the mediation server. A and C register with B, A asks B to connect it with C, the
connectivity checks punch both NATs, and A's IKE SA to C goes straight between the NATs:
ping both ways, and each side's peer address is the other's NAT (not B).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nattunnel.control.text import render
from nattunnel.keys import write_psk_file
from nattunnel.lab.nattypes import PORT_RESTRICTED_CONE, NatLab
from tests.lab.traversal_support import NodeProc, ping_ok, wait_for
from tests.support.lab import require_lab_tools

A_IN, C_IN = "198.18.120.1", "198.18.120.3"


def _server(d: Path) -> Path:
    path = d / "b.toml"
    lines = ['listen = ["0.0.0.0:4500"]', "mediation_server = true",
             "[interface]", 'name = "nt0"', 'addresses = ["198.18.120.2/24"]']
    for name in ("a", "c"):
        lines += ["[[peer]]", f'name = "{name}"', "mediation = true", 'auth = "psk"',
                  'psk_file = "k.psk"', 'local_id = "mediator"', f'remote_id = "host{name}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def _peer(d: Path, me: str, other: str, mine: str, theirs: str, server: str,
          initiate: bool, *, keepalive: int = 15, dpd: int = 10) -> Path:
    path = d / f"{me}.toml"
    lines = ['listen = ["0.0.0.0:4500"]', "[interface]", 'name = "nt0"',
             f'addresses = ["{mine}/24"]',
             "[[peer]]", 'name = "mediator"', "mediation = true", f'endpoint = "{server}"',
             'auth = "psk"', 'psk_file = "k.psk"', f'local_id = "host{me}"',
             'remote_id = "mediator"',
             "[[peer]]", f'name = "{other}"', 'mediated_by = "mediator"', 'auth = "psk"',
             'psk_file = "k.psk"', f'local_id = "host{me}"', f'remote_id = "host{other}"',
             f'allowed_ips = ["{theirs}/32"]', f'local_ts = ["{mine}/32"]',
             f"initiate = {str(initiate).lower()}", f"dpd_interval = {dpd}",
             f"keepalive_interval = {keepalive}"]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.root
def test_two_nattunnel_peers_behind_port_restricted_nats_meet_through_nattunnel(
        tmp_path: Path) -> None:
    require_lab_tools()
    write_psk_file(tmp_path / "k.psk", b"correct horse battery staple", force=True)
    lab = NatLab("two", PORT_RESTRICTED_CONE, with_e=False)
    nodes: list[NodeProc] = []
    try:
        b = lab.addr["b"]
        # a second address on A: a host candidate too (every address of A's wildcard
        # socket, as charon offers them), the one towards the server first
        a_ip = lab.addr["a"]
        extra = lab.add_address("a", a_ip.rsplit(".", 1)[0] + ".77")
        nodes.append(NodeProc(lab, "b", _server(tmp_path), {}))
        wait_for("the server", lambda: nodes[0].status() is not None, 10)
        c = NodeProc(lab, "c", _peer(tmp_path, "c", "a", C_IN, A_IN, b, False), {})
        nodes.append(c)
        a = NodeProc(lab, "a", _peer(tmp_path, "a", "c", A_IN, C_IN, b, True), {})
        nodes.append(a)
        t = wait_for("the mediated tunnel", lambda: ping_ok(lab, "a", C_IN, count=1), 30)
        print(f"\nthe first ping through the mediated tunnel {t:.1f} s after A started")
        assert ping_ok(lab, "a", C_IN) and ping_ok(lab, "c", A_IN)
        nat1, nat2 = lab.routers["r1"], lab.routers["r2"]
        a_peer, c_peer = a.peer(), c.peer()
        # direct: each reaches the other at its NAT's public address, not through B
        assert str(a_peer["endpoint"]).startswith(nat2.wan_addr + ":"), a_peer
        assert str(c_peer["endpoint"]).startswith(nat1.wan_addr + ":"), c_peer
        med = a.status()["mediation"]
        print("A's mediation:", med)
        assert med["up"] and med["srflx"].startswith(nat1.wan_addr + ":")
        assert med["paths"]["c"]["remote"] == a_peer["endpoint"], med["paths"]
        hosts = [c["addr"] for c in med["candidates"] if c["type"] == 1]  # ME_TYPE_HOST
        assert hosts == [f"{a_ip}:4500", f"{extra}:4500"], med["candidates"]
        reg = nodes[0].status()["mediation_server"]
        assert set(reg["registered"]) == {"hosta", "hostc"}, reg
        assert reg["stats"]["forwarded"] == 2
        # nattunnel show's text, from the real status
        shown = render(nodes[0].status())
        assert "  mediation server: 2 registered (hosta at " in shown, shown
        assert f"  candidates: host {a_ip}:4500, host {extra}:4500" in render(a.status())
    finally:
        for n in nodes:
            final = n.stop()
            if final is not None:
                print(n.status_file.name, {k: v.get("state") for k, v in
                                           final.get("peers", {}).items()})
            print(n.stderr.read_text()[-2500:])
        lab.close()


@pytest.mark.root
def test_the_punched_path_outlives_the_nat_mapping_timeout(tmp_path: Path) -> None:
    """NATs that forget a UDP mapping after 6 s of silence; the peers send NAT keepalives
    every 2 s (keepalive_interval) and no DPD for 60 s: after 15 s without traffic the
    tunnel still works over the same IKE SA, and no new mediation was needed."""
    require_lab_tools()
    write_psk_file(tmp_path / "k.psk", b"correct horse battery staple", force=True)
    lab = NatLab("two", PORT_RESTRICTED_CONE, with_e=False, udp_timeout=6)
    nodes: list[NodeProc] = []
    try:
        b = lab.addr["b"]
        nodes.append(NodeProc(lab, "b", _server(tmp_path), {}))
        c = NodeProc(lab, "c", _peer(tmp_path, "c", "a", C_IN, A_IN, b, False,
                                     keepalive=2, dpd=60), {})
        a = NodeProc(lab, "a", _peer(tmp_path, "a", "c", A_IN, C_IN, b, True,
                                     keepalive=2, dpd=60), {})
        nodes += [c, a]
        wait_for("the mediated tunnel", lambda: ping_ok(lab, "a", C_IN, count=1), 30)
        before = a.status()["peers"]["c"]["ike_sas"]
        time.sleep(15)  # idle: only keepalives cross the NATs
        assert ping_ok(lab, "c", A_IN) and ping_ok(lab, "a", C_IN)
        after = a.status()["peers"]["c"]["ike_sas"]
        # the same IKE SA on the same path, and no new mediation
        assert [(s["spi_i"], s["remote"]) for s in after] == \
            [(s["spi_i"], s["remote"]) for s in before], (before, after)
        assert a.status()["mediation"]["stats"]["paths"] == 1
    finally:
        for n in nodes:
            n.stop()
            print(n.stderr.read_text()[-1500:])
        lab.close()
