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
from collections.abc import Callable
from pathlib import Path

import pytest

from nattunnel.keys import generate_psk, write_psk_file
from nattunnel.lab.tunnels import IKE_ID, Node, Tunnels, control_path
from tests.support.lab import ROUTER_WAN, Lab, lab_fixture  # noqa: F401
from tests.support.tunnel_lab import (
    INNER,
    TCP_CLIENT,
    TCP_SERVER,
    expected_stream_digest,
    ike_sas,
    start_ike_node,
    start_ike_tunnels,
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


def _start_pair(lab: Lab, tmp_path: Path, config: Callable[..., str], b_listen: str,
                a_listen: str, a_endpoint: str) -> tuple[Tunnels, Node, Node]:
    """B (responder, listening on ``b_listen``) and A (initiator on ``a_listen`` to
    ``a_endpoint``) with one PSK, both up: ``config(role, other, listen, psk, endpoint)``
    writes each one's configuration."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    write_psk_file(keys / "psk", generate_psk(), force=True)
    for role, other, listen, endpoint in (("b", "a", b_listen, None),
                                          ("a", "b", a_listen, a_endpoint)):
        # a control socket of this run's own (the default, /run/nattunnel/ROLE.sock for
        # root, is shared by every run on the machine)
        (tmp_path / f"{role}.toml").write_text(
            f'control_socket = "{control_path(tmp_path, role)}"\n'
            + config(role, other, listen, keys / "psk", endpoint))
    t = Tunnels(lab, tmp_path)
    for role in ("b", "a"):
        start_ike_node(t, role)
    a, b = t.nodes["a"], t.nodes["b"]
    assert wait_ike_up(t, ("a", "b")), a.log() + b.log()
    return t, a, b


def test_natt_ports_other_than_4500_without_nat_carry_ping_and_tcp(
        lab: Lab, tmp_path: Path) -> None:
    _no_nat(lab)
    t, a, b = _start_pair(lab, tmp_path, _config, "0.0.0.0:4700", "0.0.0.0:4600",
                          f"{lab.addr['b']}:4700")
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


# --- an IPv6 underlay -----------------------------------------------------------------------
V6 = {"a": "fd00:18::1", "b": "fd00:18::2"}
INNER6 = {"a": "fd00:100::1", "b": "fd00:100::2"}


def _v6_underlay(lab: Lab) -> None:
    """A veth straight from A to B with fd00:18::/64 on it and IPv6 on (the lab switches
    it off), and no IPv4 route from A to B: the tunnel's outer packets can only be IPv6."""
    p = lab.prefix
    for role in ("a", "b"):
        for key in ("all", "default"):
            lab.exec(role, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
    lab.exec("a", "ip", "link", "add", f"{p}6a", "type", "veth", "peer", "name", f"{p}6b",
             "netns", lab.ns["b"])
    for role, dev in (("a", f"{p}6a"), ("b", f"{p}6b")):
        lab.exec(role, "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0")
        lab.exec(role, "ip", "addr", "add", f"{V6[role]}/64", "dev", dev, "nodad")
        lab.exec(role, "ip", "link", "set", dev, "up")
    lab.exec("a", "ip", "route", "del", "default")


def _v6_config(role: str, other: str, listen: str, psk: Path, endpoint: str | None) -> str:
    text = _config(role, other, listen, psk, endpoint)
    text = text.replace(f'addresses = ["{INNER[role]}/32"]',
                        f'addresses = ["{INNER[role]}/32", "{INNER6[role]}/128"]')
    return text.replace(f'allowed_ips = ["{INNER[other]}/32"]',
                        f'allowed_ips = ["{INNER[other]}/32", "{INNER6[other]}/128"]')


def _ping6(lab: Lab, src: str, dst: str, count: int = 3) -> bool:
    r = lab.exec(src, "ping", "-6", "-c", count, "-W", 2, "-i", "0.2", INNER6[dst],
                 check=False, timeout=2 * count + 5)
    return r.returncode == 0


@pytest.mark.parametrize("a_listen", ["[::]:4500", "[fd00:18::1]:4500"],
                         ids=["wildcard", "address"])
def test_ipv6_underlay_carries_inner_ipv4_and_ipv6_both_ways(
        lab: Lab, tmp_path: Path, a_listen: str) -> None:
    """IPv6 only on the underlay, no NAT: IKE on port 500 finds none, and ESP goes to B's
    NAT-T port over IPv6 (an address keeps its family: before, the no-NAT path built an
    IPv4-shaped (host, 4500) and every packet failed)."""
    _v6_underlay(lab)
    t, a, b = _start_pair(lab, tmp_path, _v6_config, f"[{V6['b']}]:4500", a_listen,
                          f"[{V6['b']}]:500")
    assert lab.wait_for(lambda: _ping6(lab, "a", "b", 1), timeout=5), a.log()
    assert _ping6(lab, "b", "a"), b.log()
    assert t.ping("a", "b", count=3), a.log()
    assert t.ping("b", "a", count=3), b.log()
    _tcp(lab, t, "a", "b")
    (sa_a,) = ike_sas(a)
    assert sa_a["remote"] == f"[{V6['b']}]:500" and not sa_a["natt"]
    assert a.stats()["peers"]["b"]["addr"] == [V6["b"], 4500]
    assert f"IKE SA established with [{V6['b']}]:500" in a.log()
    for node in (a, b):
        s = node.stats()
        assert not s["send_errors"] and not s["errors"], s
        assert "Traceback" not in node.log()


# --- a stateful firewall without NAT ---------------------------------------------------------
def _stateful_firewall(lab: Lab, udp_timeout: int = 5) -> None:
    """No NAT, but the router forwards only what A started (and its answers); its UDP
    entries expire after ``udp_timeout`` seconds without traffic."""
    _no_nat(lab)
    table = f"{lab.prefix}fw"
    lab.exec("r", "nft", "-f", "-", input=(
        f"table ip {table} {{\n"
        f"  chain filter_forward {{\n"
        f"    type filter hook forward priority filter; policy drop;\n"
        f"    ct state established,related accept\n"
        f'    iifname "{lab.lan_if}" oifname "{lab.wan_if}" accept\n'
        f"  }}\n"
        f"}}\n"))
    lab.set_udp_timeout(udp_timeout)


def _child_spis(node: Node) -> set[str]:
    return {c for sa in ike_sas(node) if sa["state"] == "established" for c in sa["children"]}


def test_rekey_from_outside_a_stateful_firewall_after_idle(lab: Lab, tmp_path: Path) -> None:
    """A behind a stateful firewall (no NAT) with keepalives "always": IKE moves to the
    NAT-T port with them, so B's rekey, started from outside after the port-500 entry would
    have expired, reaches A through the flow the keepalives hold."""
    _stateful_firewall(lab, udp_timeout=5)
    t = start_ike_tunnels(lab, tmp_path, ("a",),
                          host_peer={"keepalive": "always", "keepalive_interval": 2,
                                     "dpd_interval": 300},
                          b_peer={"rekey_time": 14, "dpd_interval": 300})
    a, b = t.nodes["a"], t.nodes["b"]
    assert wait_ike_up(t, ("a", "b")), a.log() + b.log()
    (sa_a,) = ike_sas(a)
    assert sa_a["natt"] and not sa_a["local_behind_nat"] and not sa_a["remote_behind_nat"]
    assert sa_a["remote"] == f"{lab.addr['b']}:4500"
    first = _child_spis(b)
    assert t.ping("a", "b"), a.log()
    # idle well past the firewall's UDP timeout, then B rekeys (rekey_time 14 s, jittered)
    assert lab.wait_for(lambda: _child_spis(b) - first and _child_spis(a) - first,
                        timeout=30, interval=1.0), b.log()
    assert t.ping("b", "a", count=3), b.log()
    assert t.ping("a", "b", count=3), a.log()
    assert "IKE SA down" not in a.log() + b.log()
    # the rekey came through the NAT-T flow: the firewall has no port-500 entry left
    assert not lab.conntrack_list(src=lab.addr["a"], dport=500)


# --- an IPv6 underlay through NAT66 ----------------------------------------------------------
LAN6, WAN6 = "fd00:19:1::", "fd00:18::"


def _nat66(lab: Lab) -> None:
    """IPv6 on the lab's own wires: A fd00:19:1::2 behind the router (fd00:19:1::1 LAN,
    fd00:18::1 WAN) doing NAT66 masquerade, B fd00:18::2 with no route to the LAN; and no
    IPv4 route from A to B."""
    for role in ("a", "b", "r"):
        for key in ("all", "default", "eth0" if role != "r" else "lo"):
            lab.exec(role, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
    for dev in (lab.lan_if, lab.wan_if):
        lab.exec("r", "sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0")
    lab.exec("r", "ip", "addr", "add", f"{LAN6}1/64", "dev", lab.lan_if, "nodad")
    lab.exec("r", "ip", "addr", "add", f"{WAN6}1/64", "dev", lab.wan_if, "nodad")
    lab.exec("r", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    lab.exec("a", "ip", "addr", "add", f"{LAN6}2/64", "dev", "eth0", "nodad")
    lab.exec("b", "ip", "addr", "add", f"{WAN6}2/64", "dev", "eth0", "nodad")
    lab.exec("a", "ip", "route", "del", "default")
    lab.exec("a", "ip", "-6", "route", "add", "default", "via", f"{LAN6}1")
    table = f"{lab.prefix}nat6"
    lab.exec("r", "nft", "-f", "-", input=(
        f"table ip6 {table} {{\n"
        f"  chain post {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{lab.wan_if}" ip6 saddr {LAN6}/64 masquerade\n'
        f"  }}\n"
        f"}}\n"))


def test_ipv6_underlay_through_nat66_carries_inner_ipv4_and_ipv6_both_ways(
        lab: Lab, tmp_path: Path) -> None:
    """A behind NAT66 initiates to B over IPv6: IKE finds the NAT, moves to port 4500,
    A sends keepalives, and inner IPv4 and IPv6 go both ways."""
    _nat66(lab)
    t, a, b = _start_pair(lab, tmp_path, _v6_config, "[::]:4500", "[::]:4500",
                          f"[{WAN6}2]")
    assert lab.wait_for(lambda: _ping6(lab, "a", "b", 1), timeout=5), a.log()
    assert _ping6(lab, "b", "a"), b.log()
    assert t.ping("a", "b", count=3), a.log()
    assert t.ping("b", "a", count=3), b.log()
    (sa_a,) = ike_sas(a)
    (sa_b,) = ike_sas(b)
    assert sa_a["natt"] and sa_a["local_behind_nat"]
    assert sa_a["remote"] == f"[{WAN6}2]:4500"
    assert sa_b["remote"].startswith(f"[{WAN6}1]:")  # A as the NAT shows it
    assert "NAT: this side" in a.log()
    for node in (a, b):
        s = node.stats()
        assert not s["send_errors"] and not s["errors"], s
