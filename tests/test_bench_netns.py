"""`nattunnel bench netns` runs end to end in the NAT lab (root). Numbers are not asserted:
benchmarks are for people to read, this only proves the command works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lab import require_lab_tools


@pytest.mark.root
def test_bench_netns_runs_and_reports_json():
    require_lab_tools(("ip", "nft", "conntrack", "sysctl", "iperf3"))
    r = subprocess.run(
        [sys.executable, "-m", "nattunnel", "bench", "netns", "--seconds", "1", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    rows = {(x["tunnel"], x["proto"]): x for x in report["results"]}
    assert set(rows) == {("none (NAT path)", "tcp"), ("none (NAT path)", "udp"),
                         ("nattunnel", "tcp"), ("nattunnel", "udp")}
    for key in (("nattunnel", "tcp"), ("nattunnel", "udp")):
        row = rows[key]
        assert row["mbps"] > 0 and row["cpu_seconds"] > 0 and row["packets"] > 0
    assert "cpu" in report["machine"]
