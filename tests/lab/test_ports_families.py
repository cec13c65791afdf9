"""Ports and families are honoured (issue 11), on real namespaces (root).

A routed pair without NAT: the lab's router with its NAT table removed and a route back to
the LAN on B, so that A (198.19.1.2) and B (198.18.0.2) see each other's real addresses. A
listens for NAT-T on 4600, B on 4700, and A's endpoint is B's NAT-T port: IKE goes there
behind the non-ESP marker from the start (a peer port other than 500 is its NAT-T port, as
strongSwan takes a remote_port), finds no NAT, and ESP goes to the ports the peers use, never
to 4500: ping and TCP both ways."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nattunnel.keys import generate_psk, write_psk_file
from nattunnel.lab.tunnels import IKE_ID, Tunnels
from tests.support.lab import ROUTER_WAN, Lab, lab_fixture  # noqa: F401
from tests.support.tunnel_lab import (
    INNER,
    TCP_CLIENT,
    TCP_SERVER,
    expected_stream_digest,
    ike_sas,
    start_ike_node,
    wait_ike_up,
)

pytestmark = pytest.mark.root


def _no_nat(lab: Lab) -> None:
    """The router forwards without translating; B routes the LAN back through it."""
    lab.exec("r", "nft", "delete", "table", "ip", f"{lab.prefix}nat")
    lab.exec("b", "ip", "route", "add", "198.19.1.0/24", "via", ROUTER_WAN)


def _config(role: str, other: str, listen: str, psk: Path, endpoint: str | None) -> str:
    lines = [f'listen = ["{listen}"]', "", "[interface]", 'kind = "tun"', 'name = "nt0"',
             f'addresses = ["{INNER[role]}/32"]', "", "[[peer]]", f'name = "{other}"',
             'auth = "psk"', f'psk_file = "{psk}"', f'local_id = "{IKE_ID[role]}"',
             f'remote_id = "{IKE_ID[other]}"', f'allowed_ips = ["{INNER[other]}/32"]']
    if endpoint is None:
        lines.append("initiate = false")
    else:
        lines += [f'endpoint = "{endpoint}"', "initiate = true"]
    return "\n".join(lines) + "\n"


def _tcp(lab: Lab, t: Tunnels, src: str, dst: str, size: int = 300_000) -> None:
    port, seed, chunk = 5201, 7, 1300
    server = lab.popen(dst, sys.executable, "-u", "-c", TCP_SERVER, INNER[dst], port,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stderr is not None
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    cp = lab.exec(src, sys.executable, "-c", TCP_CLIENT, INNER[dst], port, size, seed, chunk,
                  timeout=45, check=False)
    assert cp.returncode == 0, f"client failed: {cp.stderr}\n{t.nodes[src].log()}"
    out, err = server.communicate(timeout=10)
    assert server.returncode == 0, err
    want = expected_stream_digest(size, seed, chunk)
    assert json.loads(out) == {"bytes": size, "sha256": want, "peer": INNER[src]}
    assert json.loads(cp.stdout)["echo"] == want


def test_natt_ports_other_than_4500_without_nat_carry_ping_and_tcp(
        lab: Lab, tmp_path: Path) -> None:
    _no_nat(lab)
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    write_psk_file(keys / "psk", generate_psk(), force=True)
    (tmp_path / "b.toml").write_text(_config("b", "a", "0.0.0.0:4700", keys / "psk", None))
    (tmp_path / "a.toml").write_text(_config("a", "b", "0.0.0.0:4600", keys / "psk",
                                             f"{lab.addr['b']}:4700"))
    t = Tunnels(lab, tmp_path)
    for role in ("b", "a"):
        start_ike_node(t, role)
    a, b = t.nodes["a"], t.nodes["b"]
    assert wait_ike_up(t, ("a", "b")), a.log() + b.log()
    # B pings first: it must already know A's NAT-T port (from A's IKE messages)
    assert t.ping("b", "a", count=3), b.log()
    assert t.ping("a", "b", count=3), a.log()
    _tcp(lab, t, "a", "b")
    _tcp(lab, t, "b", "a")
    (sa_a,) = ike_sas(a)
    (sa_b,) = ike_sas(b)
    assert sa_a["remote"] == f"{lab.addr['b']}:4700"
    assert sa_b["remote"] == f"{lab.addr['a']}:4600"
    for sa in (sa_a, sa_b):
        assert not sa["local_behind_nat"] and not sa["remote_behind_nat"]
    sa_b_peer = b.stats()["peers"]["a"]
    sa_a_peer = a.stats()["peers"]["b"]
    assert sa_a_peer["addr"] == [lab.addr["b"], 4700], sa_a_peer
    assert sa_b_peer["addr"] == [lab.addr["a"], 4600], sa_b_peer
    assert "NAT: none" in a.log() and "NAT: none" in b.log()
    for node in (a, b):
        s = node.stats()
        assert not s["send_errors"] and not s["errors"], s
