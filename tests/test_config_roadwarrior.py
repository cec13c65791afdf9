"""The road-warrior fields (docs/road-warrior.md): ``[pools.NAME]``, a peer's ``vips``,
``pools`` and ``dns_file``, and their errors."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from nattunnel.config import ConfigError, parse_config


def _psk(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "k.psk", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"a secret of some length\n")
    os.close(fd)


CLIENT = """
[interface]
kind = "tun"
[[peer]]
name = "gw"
auth = "psk"
psk_file = "k.psk"
local_id = "client"
remote_id = "gw"
endpoint = "198.18.0.2"
allowed_ips = ["0.0.0.0/0"]
vips = ["0.0.0.0"]
dns_file = "/etc/netns/x/resolv.conf"
"""

GATEWAY = """
[interface]
kind = "tun"
addresses = ["198.18.50.254/32"]
[pools.rw]
addrs = "198.18.200.0/30"
dns = ["198.18.50.53"]
[pools.v6]
addrs = "fd00:200::10-fd00:200::1f"
[[peer]]
name = "c1"
auth = "psk"
psk_file = "k.psk"
local_id = "gw"
remote_id = "c1"
pools = ["rw", "v6"]
local_ts = ["198.18.50.0/24"]
[[peer]]
name = "c2"
auth = "psk"
psk_file = "k.psk"
local_id = "gw"
remote_id = "c2"
pools = "rw"
local_ts = ["198.18.50.0/24"]
"""


def test_client_needs_no_interface_address(tmp_path: Path) -> None:
    _psk(tmp_path)
    cfg = parse_config(CLIENT, tmp_path)
    assert cfg.interface.addresses == ()
    (pc,) = cfg.peers
    assert pc.ike is not None and pc.ike.vips == (4,)
    assert pc.ike.local_ts == (ipaddress.ip_network("0.0.0.0/0"),)
    assert pc.ike.dns_file == "/etc/netns/x/resolv.conf"


def test_gateway_pools_are_shared_between_its_peers(tmp_path: Path) -> None:
    _psk(tmp_path)
    cfg = parse_config(GATEWAY, tmp_path)
    rw, v6 = cfg.pools
    assert (str(rw.first), str(rw.last), [str(d) for d in rw.dns]) == (
        "198.18.200.1", "198.18.200.2", ["198.18.50.53"])
    assert v6.version == 6 and v6.size == 16
    c1, c2 = cfg.peers
    assert c1.allowed_ips == () and c2.allowed_ips == ()
    assert c1.ike is not None and c2.ike is not None
    assert c1.ike.pools == (rw, v6) and c2.ike.pools[0] is c1.ike.pools[0]


@pytest.mark.parametrize(("text", "field", "problem"), [
    (GATEWAY.replace('pools = "rw"', 'pools = "rw2"'), "peer[1].pools", "not a pool"),
    (CLIENT.replace('vips = ["0.0.0.0"]', 'vips = ["198.18.200.1"]'), "peer[0].vips[0]",
     "expected \"0.0.0.0\""),
    (CLIENT.replace('vips = ["0.0.0.0"]', 'vips = ["::", "::"]'), "peer[0].vips[1]",
     "listed twice"),
    (GATEWAY.replace('addrs = "fd00:200::10-fd00:200::1f"', 'addrs = "198.18.200.2"'),
     "pools.v6.addrs", "overlaps pool 'rw'"),
    (GATEWAY.replace('addrs = "198.18.200.0/30"', 'addrs = "198.18.200.9-198.18.200.1"'),
     "pools.rw.addrs", "ends before it starts"),
    (GATEWAY.replace('addrs = "198.18.200.0/30"', 'addrs = "198.18.200.0/33"'),
     "pools.rw.addrs", "expected a prefix"),
    (GATEWAY.replace('dns = ["198.18.50.53"]', 'dns = ["dns.example"]'),
     "pools.rw.dns[0]", "not an IP address"),
    (GATEWAY.replace('pools = "rw"', 'pools = "rw"\nvips = ["0.0.0.0"]'), "peer[1].pools",
     "either asks"),
    (GATEWAY.replace("[pools.rw]", "[pools.rw]\nsize = 3"), "pools.rw.size", "unknown key"),
])
def test_errors_name_the_field(tmp_path: Path, text: str, field: str, problem: str) -> None:
    _psk(tmp_path)
    with pytest.raises(ConfigError) as e:
        parse_config(text, tmp_path)
    assert e.value.field == field and problem in e.value.problem, str(e.value)


def test_reload_leaves_a_road_warriors_routes_to_its_virtual_ip(tmp_path: Path) -> None:
    """``nattunnel reload`` routes the prefixes of peers that come, but a client's routes
    (0.0.0.0/0 here) come only with its virtual IP (io/vip.py): never straight to the TUN
    device, which would take the route to the gateway too."""
    from nattunnel.app import Node
    from nattunnel.io.interface import InProcessInterface

    _psk(tmp_path)
    (pc,) = parse_config(CLIENT, tmp_path).peers
    (gw1, _gw2) = parse_config(GATEWAY, tmp_path).peers
    routed: list[str] = []

    class Recorder(InProcessInterface):
        def route(self, net: object) -> None:
            routed.append(f"+{net}")

        def unroute(self, net: object) -> None:
            routed.append(f"-{net}")

    Node._reroute(Recorder(), [], [pc, gw1])
    Node._reroute(Recorder(), [pc], [])
    assert routed == []
