"""A nattunnel road warrior to a nattunnel gateway through the lab's real NAT (root): the
client on A asks for an address (vips), the gateway on B assigns it from its pool with a
DNS server and a full tunnel (local_ts 0.0.0.0/0); ping through it; after stop the client's
routes and DNS are gone (docs/road-warrior.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.interop.test_roadwarrior_strongswan import (
    BEHIND,
    DNS,
    ORIGINAL_RESOLV,
    PUBLIC_B,
    netns_resolv,
    nt_auth,
    ping,
    routes,
    start_nt,
    wait,
)
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)


@pytest.mark.root
def test_nattunnel_road_warrior_to_nattunnel_gateway(lab: Lab, tmp_path: Path) -> None:
    lab.exec("b", "ip", "addr", "replace", f"{BEHIND}/32", "dev", "lo")
    gw = start_nt(lab, "b", tmp_path, f"""
[interface]
kind = "tun"
name = "nt0"
addresses = ["198.18.50.254/32"]
[pools.rw]
addrs = "198.18.200.0/29"
dns = ["{DNS}"]
[[peer]]
name = "client-a"
{nt_auth(tmp_path, "psk", None, "gw")}local_id = "gw"
remote_id = "client-a"
pools = ["rw"]
local_ts = ["0.0.0.0/0"]
""")
    resolv = netns_resolv(lab, "a")
    try:
        client = start_nt(lab, "a", tmp_path, f"""
[interface]
kind = "tun"
name = "nt0"
[[peer]]
name = "gw"
{nt_auth(tmp_path, "psk", None, "client-a")}local_id = "client-a"
remote_id = "gw"
endpoint = "{PUBLIC_B}"
allowed_ips = ["0.0.0.0/0"]
vips = ["0.0.0.0"]
dns_file = "{resolv}"
""")
        assert wait(lambda: "on nt0, routes" in client.log(), 15), client.log() + gw.log()
        table = routes(lab, "a")
        assert "0.0.0.0/1 dev nt0" in table and f"{PUBLIC_B} via" in table, table
        assert resolv.read_text().splitlines()[-1] == f"nameserver {DNS}"
        assert ping(lab, "a", BEHIND), client.log()[-2000:] + gw.log()[-2000:]
        (ike_sa,) = gw.show("client-a")["peers"]["client-a"]["ike_sas"]
        assert ike_sa["virtual_ips"] == ["198.18.200.1"]
        peer = gw.show()["peers"]["client-a"]
        assert peer["allowed_ips"] == ["198.18.200.1/32"] and peer["rx_packets"] >= 3
        lab.stop(client.proc)
        table = routes(lab, "a")
        assert "0.0.0.0/1" not in table and PUBLIC_B not in table, table
        assert resolv.read_text() == ORIGINAL_RESOLV
        assert "Traceback" not in client.log() + gw.log()
        lab.stop(gw.proc)
    finally:
        shutil.rmtree(resolv.parent, ignore_errors=True)
