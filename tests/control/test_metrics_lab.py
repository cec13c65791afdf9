"""The metrics endpoint of ``nattunnel up`` (root): two endpoints with TUN devices and IKEv2
through the lab's real nftables NAT, ``metrics = "127.0.0.1:9586"`` in each configuration,
scraped from inside the endpoint's namespace and parsed with prometheus_client's own parser;
the counters move by exactly what ping sent."""

from __future__ import annotations

import sys

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import INNER, Tunnels, start_ike_node, start_ike_tunnels, wait_ike_up

PORT = 9586
SCRAPE = """import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.headers["Content-Type"] + "\\n" + r.read().decode())
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(lab: Lab, role: str) -> Samples:
    r = lab.exec(role, sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{PORT}/metrics")
    ctype, body = r.stdout.split("\n", 1)
    assert ctype == CONTENT_TYPE_LATEST
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def logs(t: Tunnels) -> str:
    return "\n".join(f"--- {r} log:\n{n.log()}" for r, n in t.nodes.items())


@pytest.mark.root
def test_metrics_of_nattunnel_up_through_the_nat(lab, tmp_path):
    t = start_ike_tunnels(lab, tmp_path, ("a",), log_level="info")
    try:
        # the same configurations with the metrics endpoint: restarted
        for role in ("a", "b"):
            t.stop(role)
        for role in ("b", "a"):
            cfg = tmp_path / f"{role}.toml"
            cfg.write_text(f'metrics = "127.0.0.1:{PORT}"\n' + cfg.read_text())
            start_ike_node(t, role, log_level="info")
        assert wait_ike_up(t, timeout=20), logs(t)
        assert "metrics on http://127.0.0.1:9586/metrics" in t.nodes["b"].log(), logs(t)
        assert t.ping("a", "b", count=3), logs(t)  # the path is warm

        before = scrape(lab, "b")
        r = lab.exec("a", "ping", "-c", 5, "-i", "0.2", "-W", 2, "-s", 100, INNER["b"],
                     check=False, timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr + logs(t)
        after = scrape(lab, "b")

        def delta(name: str, **labels: str) -> float:
            key = (name, frozenset(labels.items()))
            return after[key] - before[key]

        # 5 echo requests in, 5 replies out, 128 octets each (IPv4 20, ICMP 8, data 100)
        assert delta("nattunnel_peer_packets_total", peer="a", direction="rx") == 5
        assert delta("nattunnel_peer_packets_total", peer="a", direction="tx") == 5
        assert delta("nattunnel_peer_bytes_total", peer="a", direction="rx") == 5 * 128
        assert delta("nattunnel_peer_bytes_total", peer="a", direction="tx") == 5 * 128
        assert after[("nattunnel_peer_up", frozenset({("peer", "a")}))] == 1
        assert after[("nattunnel_peer_child_sas", frozenset({("peer", "a")}))] >= 1
        assert after[("nattunnel_ike_sas", frozenset())] >= 1
        peers = {v for _, labels in after for k, v in labels if k == "peer"}
        assert peers == {"a"}  # the configured peer only: no address, port or SPI

        # A, behind the NAT, sees its peer "b" up too, and counted the 8 pings it sent
        got = scrape(lab, "a")
        assert got[("nattunnel_peer_up", frozenset({("peer", "b")}))] == 1
        assert got[("nattunnel_peer_packets_total",
                    frozenset({("peer", "b"), ("direction", "tx")}))] >= 8
        for role, node in t.nodes.items():
            assert "Traceback" not in node.log(), f"{role}:\n{node.log()}"
    finally:
        for role in list(t.nodes):
            t.stop(role)
