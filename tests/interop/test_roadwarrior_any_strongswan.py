"""Two charon road warriors (``vips = 0.0.0.0``, certificates from one CA, different
identities), both behind the lab's NAT, to ONE nattunnel gateway ``[[peer]]`` with
``remote_id = "%any"`` (docs/road-warrior.md, "One [[peer]] for every client"): each
becomes its own instance (``rw[client-a]``, ``rw[client-c]``) with its own address from the
pool and its own IKE SA; both ping an address behind the gateway at the same time, each
through its own SA; a client that goes takes its instance and lease with it and gets the
same address back when it comes again; a client that restarts (its new IKE SA with
INITIAL_CONTACT) replaces its old IKE SA in the same instance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.test_interop_strongswan import established, require_strongswan, wait
from tests.interop.test_roadwarrior_strongswan import (
    BEHIND,
    DNS,
    SPLIT,
    charon_client,
    make_pkis,
    nt_auth,
    ping,
    start_nt,
)
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import PKG_ROOT

POOL = ("198.18.200.10", "198.18.200.11")


def vip_of(ch: object) -> str:
    (sa,) = ch.list_sas()  # type: ignore[attr-defined]
    vips = sa.raw.get("local-vips", [])
    assert len(vips) == 1, sa.raw
    return str(vips[0])


@pytest.mark.root
@pytest.mark.parametrize("lab", [{"with_c": True}], indirect=True)
def test_two_charon_clients_to_one_any_peer(lab: Lab, tmp_path: Path) -> None:
    require_strongswan()
    pkis = make_pkis(tmp_path)
    for addr in ("198.18.50.1", "198.18.51.1"):
        lab.exec("b", "ip", "addr", "replace", f"{addr}/32", "dev", "lo")
    nt = start_nt(lab, "b", tmp_path, f"""
[interface]
kind = "tun"
name = "nt0"
addresses = ["198.18.50.254/32"]
[pools.rw]
addrs = "{POOL[0]}-{POOL[1]}"
dns = ["{DNS}"]
[[peer]]
name = "rw"
{nt_auth(tmp_path, "cert", pkis, "gw")}local_id = "gw"
remote_id = "%any"
pools = ["rw"]
local_ts = {SPLIT!r}
dpd_interval = 5
""".replace("'", '"'))
    clients = {role: charon_client(lab, role, tmp_path, f"client-{role}", "cert", pkis)
               for role in "ac"}
    for ch in clients.values():
        ch.initiate("rw")
    for ch in clients.values():
        assert wait(lambda ch=ch: established(ch), 15), nt.log() + ch.log()[-3000:]
    vips = {role: vip_of(ch) for role, ch in clients.items()}
    assert sorted(vips.values()) == list(POOL), vips
    # both at once, each from its own address
    pings = {role: lab.popen(role, "ping", "-c", "10", "-i", "0.1", "-W", "2", BEHIND,
                             stdout=subprocess.PIPE, text=True) for role in "ac"}
    for p in pings.values():
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out + nt.log()[-3000:]
    status = nt.show()
    peers = status["peers"]
    assert {"rw", "rw[client-a]", "rw[client-c]"} <= set(peers), list(peers)
    for role in "ac":
        p = peers[f"rw[client-{role}]"]
        assert p["instance"] == {"template": "rw", "identity": f"client-{role}"}
        assert p["allowed_ips"] == [f"{vips[role]}/32"] and p["state"] == "up"
        assert p["rx_packets"] >= 10 and p["tx_packets"] >= 10, p
        (sa,) = p["ike_sas"]
        assert sa["virtual_ips"] == [vips[role]] and sa["peer_id"] == f"client-{role}"
        assert sa["peer_auth"] == "certificate"
        # its replies went out on its own SA: charon counted them on its child
        (child,) = [c for s in clients[role].list_sas() for c in s.children]
        assert child.packets_in >= 10 and child.local_ts == (f"{vips[role]}/32",)
    assert peers["rw"]["ike_sas"] == [] and peers["rw"]["allowed_ips"] == []
    (pool,) = status["ike"]["pools"]
    assert pool["leases"] == {"rw[client-a]": vips["a"], "rw[client-c]": vips["c"]}
    text = subprocess.run([sys.executable, "-m", "nattunnel", "show", "--socket",
                           str(nt.control)], capture_output=True, text=True, timeout=10,
                          env=dict(os.environ, PYTHONPATH=str(PKG_ROOT)), check=True).stdout
    assert "rw[client-a]" in text and "rw[client-c]" in text, text
    # client A goes: its instance and lease go; C is untouched
    clients["a"].terminate_ike("rw")
    assert wait(lambda: "rw[client-a]" not in nt.show()["peers"], 10), nt.log()[-3000:]
    assert nt.show()["ike"]["pools"][0]["leases"] == {"rw[client-c]": vips["c"]}
    assert ping(lab, "c", BEHIND)
    # and comes back to its address
    clients["a"].initiate("rw")
    assert wait(lambda: established(clients["a"]), 15), nt.log()[-3000:]
    assert vip_of(clients["a"]) == vips["a"]
    assert ping(lab, "a", BEHIND)
    # A restarts without a word (SIGKILL to its charon): its new IKE SA, with
    # INITIAL_CONTACT, replaces the old one in the same instance, with the same address
    old_spi = nt.show("rw[client-a]")["peers"]["rw[client-a]"]["ike_sas"][0]["spi_i"]
    proc = clients["a"].proc
    assert proc is not None
    proc.kill()
    proc.wait(timeout=10)
    clients["a"].restart()
    clients["a"].initiate("rw")
    assert wait(lambda: established(clients["a"]), 15), nt.log()[-3000:]
    assert vip_of(clients["a"]) == vips["a"]
    (sa,) = nt.show("rw[client-a]")["peers"]["rw[client-a]"]["ike_sas"]
    assert sa["spi_i"] != old_spi and sa["virtual_ips"] == [vips["a"]]
    assert "older IKE SA dropped: replaced: the peer sent INITIAL_CONTACT" in nt.log()
    assert ping(lab, "a", BEHIND) and ping(lab, "c", BEHIND)
    assert "Traceback" not in nt.log()
    assert "rw: client client-a is peer rw[client-a]" in nt.log()
    for ch in clients.values():
        ch.stop()
    lab.stop(nt.proc)
