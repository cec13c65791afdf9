"""Nothing transient stops the endpoint (issue 11), on real namespaces (root): an IKE
initiator started with no route to its peer counts the failures, keeps trying on its
schedule, and the tunnel is up within one retry interval once the route is there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nattunnel.ike.manager import LOCAL_ADDRESS_WAIT, REINITIATE_DELAY
from tests.support.lab import ROUTER_LAN, Lab, lab_fixture  # noqa: F401
from tests.support.tunnel_lab import ike_sas, start_ike_tunnels, wait_ike_up

pytestmark = pytest.mark.root


def test_initiator_started_without_a_route_comes_up_once_the_route_is_added(
        lab: Lab, tmp_path: Path) -> None:
    lab.exec("a", "ip", "route", "del", "default")
    t = start_ike_tunnels(lab, tmp_path, ("a",))
    a, b = t.nodes["a"], t.nodes["b"]
    time.sleep(5.0)
    # no route: nothing went out, and the endpoint says why (counted, not a traceback)
    stats = a.stats()
    assert stats["send_errors"].get("ENETUNREACH", 0) >= 2, stats["send_errors"]
    assert stats["errors"] == {}, a.log()
    assert not any(sa["state"] == "established" for sa in stats["ike"]["ike_sas"])
    assert "cannot send to 198.18.0.2:500: Network is unreachable" in a.log()
    assert "Traceback" not in a.log()
    lab.exec("a", "ip", "route", "add", "default", "via", ROUTER_LAN)
    added = time.monotonic()
    # the tries so far were at 0 s, 3 s, 8 s, ... (a wait of LOCAL_ADDRESS_WAIT, then the
    # backoff from REINITIATE_DELAY): the next one after the route came is at most one
    # retry interval away, then IKE_SA_INIT and IKE_AUTH take a round trip each
    interval = LOCAL_ADDRESS_WAIT + 2 * REINITIATE_DELAY
    assert wait_ike_up(t, ("a", "b"), timeout=interval + 2.0), a.log()
    took = time.monotonic() - added
    assert took <= interval + 2.0
    assert t.ping("a", "b", count=3), a.log()
    assert t.ping("b", "a", count=1), b.log()
    (sa,) = [s for s in ike_sas(a) if s["state"] == "established"]
    assert sa["local_behind_nat"]  # NAT detection had our real address
    assert "Traceback" not in a.log() + b.log()
