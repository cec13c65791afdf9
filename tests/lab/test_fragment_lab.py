"""IKE fragmentation (RFC 7383) between two nattunnel endpoints through the lab's NAT, with a
router that drops every IP fragment: A (behind the NAT) initiates to B with IKE_AUTH messages
of about 1.9 KB both ways (101 traffic selectors on A's side, all of them accepted by B).
With fragmentation (the default) they go as IKE fragments and the tunnel carries pings; with
A's ``fragmentation = false`` they go whole, the router drops their IP fragments, and no IKE
SA comes up."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.interop.test_fragment_strongswan import drop_ip_fragments, fragments_dropped
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import INNER, ike_sas, start_ike_tunnels, wait_ike_up

EXTRA = [f"198.18.101.{i}/32" for i in range(100)]


@pytest.mark.root
@pytest.mark.parametrize("on", [True, False], ids=["fragmentation", "no-fragmentation"])
def test_nattunnel_to_nattunnel_through_a_fragment_dropping_router(
        lab: Lab, tmp_path: Path, on: bool) -> None:
    drop_ip_fragments(lab)
    a_ts = [f"{INNER['a']}/32", *EXTRA]
    t = start_ike_tunnels(lab, tmp_path, host_peer={"local_ts": a_ts, "fragmentation": on},
                          b_peer={"allowed_ips": [f"{INNER['a']}/32", "198.18.101.0/24"]})
    try:
        if on:
            assert wait_ike_up(t, timeout=15), t.nodes["a"].log()[-4000:]
            r = lab.exec("a", "ping", "-c", "3", "-i", "0.2", "-W", "2", INNER["b"],
                         check=False, timeout=15)
            assert r.returncode == 0, r.stdout
            a_log, b_log = t.nodes["a"].log(), t.nodes["b"].log()
            assert re.search(r"generating IKE_AUTH request 1 .* in 2 fragments", a_log)
            assert re.search(r"reassembled request 1 from 2 fragments", b_log)
            assert re.search(r"generating IKE_AUTH response 1 .* in 2 fragments", b_log)
            assert re.search(r"reassembled response 1 from 2 fragments", a_log)
            assert len(ike_sas(t.nodes["b"])[0]["children"]) == 1
            assert "Traceback" not in a_log + b_log
        else:
            assert not wait_ike_up(t, timeout=6)
            assert fragments_dropped(lab) > 0
            assert " fragments" not in t.nodes["a"].log()
    finally:
        for node in t.nodes.values():
            lab.stop(node.proc)
