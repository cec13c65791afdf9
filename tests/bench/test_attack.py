"""`nattunnel bench attack` runs end to end in the NAT lab (root); its JSON report has the
documented shape. Numbers are not asserted (benchmarks are for people to read). The attacker,
the table and the JSON code are also checked without root."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from nattunnel.bench.attack import (
    ATTACKS,
    BASELINE,
    AttackResult,
    InitFlood,
    add_ratios,
    flat_drops,
    format_table,
    junk_pool,
    report_json,
)
from nattunnel.cli.main import build_parser
from nattunnel.constants import ExchangeType, NotifyType
from nattunnel.ike.message import Header, Notify, decode_message, encode_message
from tests.support.lab import require_lab_tools

RESULT_KEYS = {"attack", "description", "port", "rate_target", "mbps", "baseline_mbps",
               "ratio_to_baseline", "ratio_to_control",
               "sent", "rate_sent", "attacker_cpu_seconds", "endpoint_cpu_seconds",
               "rss_peak_mb", "drops", "ike", "attacker", "new_peer_seconds",
               "new_peer_within_target", "status"}


@pytest.mark.root
def test_bench_attack_runs_and_reports_json():
    require_lab_tools(("ip", "nft", "conntrack", "sysctl", "iperf3"))
    r = subprocess.run(
        [sys.executable, "-m", "nattunnel", "bench", "attack", "--seconds", "1", "--rate",
         "5000", "--ike-rate", "500", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["rate"] == 5000 and report["ike_rate"] == 500 and report["proto"] == "tcp"
    assert set(report["targets"]) == {"ratio_to_baseline", "new_peer_seconds", "rss_bound_mb"}
    rows = report["results"]
    # a baseline run before each attack and after the last
    assert [x["attack"] for x in rows] == [BASELINE] + [x for a in ATTACKS for x in (a, BASELINE)]
    assert report["baseline_mbps"] > 0 and len(report["baseline_runs_mbps"]) == len(ATTACKS) + 1
    for row in rows:
        assert set(row) == RESULT_KEYS
        assert row["status"] == "ok", row
        assert row["mbps"] > 0 and row["ratio_to_baseline"] > 0 and row["baseline_mbps"] > 0
        assert row["rss_peak_mb"] > 0 and row["endpoint_cpu_seconds"] >= 0
        assert all(isinstance(v, int) for v in row["drops"].values())
        if row["attack"] in ATTACKS:
            assert row["ratio_to_control"] > 0
            assert row["sent"] > 0 and row["rate_sent"] > 0 and row["port"] in (500, 4500, 4501)
            assert row["attacker"]["kind"] == row["attack"]
    by = {x["attack"]: x for x in rows[1:] if x["attack"] != BASELINE}
    for row in (rows[0], by["ike-init"]):  # C set up without and during the IKE flood
        assert row["new_peer_within_target"] in (True, False)
    assert by["forged"]["drops"].get("auth_failed", 0) > 0
    # in user space, or in the kernel once the socket filter is on
    assert (by["random"]["drops"].get("unknown_spi", 0)
            + by["random"]["drops"].get("kernel_filter", 0)) > 0
    assert by["ike-init"]["ike"].get("init_requests", 0) > 0


def test_attacker_sends_at_its_rate_and_stops_by_itself(tmp_path):
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(0.5)
    cfg = {"kind": "random", "host": "127.0.0.1", "port": sink.getsockname()[1],
           "rate": 2000, "seconds": 5.0, "count": 400, "esp": [],
           "report": str(tmp_path / "r.json")}
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "from nattunnel.bench.attack import attacker_main; "
                    "attacker_main()", json.dumps(cfg)], check=True, timeout=30,
                   env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert time.monotonic() - t0 < 5  # stopped at its count, not its time bound
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["sent"] == 400 and report["elapsed"] >= 0.15  # paced: 400 at 2000/s
    got = 0
    try:
        while True:
            data = sink.recv(2048)
            assert len(data) == 1400 and data[:4] != bytes(4)
            got += 1
    except TimeoutError:
        pass
    assert got == 400
    sink.close()


def test_junk_pools():
    esp = [bytes.fromhex("00001a00") + i.to_bytes(4, "big") + os.urandom(100) for i in range(4)]
    assert junk_pool("replay", esp) == esp
    assert all(9 <= len(p) <= 31 and p[:4] == esp[0][:4] for p in junk_pool("truncated", esp))
    forged = junk_pool("forged", esp)
    assert all(len(p) == 1400 and p[:4] == esp[0][:4] for p in forged)
    assert all(len(p) == 65000 for p in junk_pool("oversized", esp))
    assert junk_pool("keepalive", esp) == [b"\xff"]
    ike = junk_pool("ike-junk", esp)
    assert all(p[:4] == bytes(4) for p in ike)


def test_init_flood_builds_requests_and_answers_cookies():
    flood = InitFlood(("198.18.0.3", 40000), ("198.18.0.2", 500))
    a, b = decode_message(flood.fresh()), decode_message(flood.fresh())
    assert a.header.exchange_type == ExchangeType.IKE_SA_INIT and not a.header.is_response
    assert a.header.spi_i != b.header.spi_i and a.header.spi_r == bytes(8)
    cookie = os.urandom(17)
    reply = encode_message(Header.make(ExchangeType.IKE_SA_INIT, a.header.spi_i,
                                       initiator=False, response=True),
                           [Notify(NotifyType.COOKIE, cookie)])
    again = decode_message(flood.answer(reply))
    assert again.header.spi_i == a.header.spi_i
    assert again.payloads[0] == Notify(NotifyType.COOKIE, cookie)
    assert again.payloads[1:] == a.payloads
    assert flood.stats["cookies_received"] == 1


def _fake() -> list[AttackResult]:
    rows = [
        AttackResult(BASELINE, "alone", None, None, mbps=1000.0, rss_peak_mb=40.0,
                     new_peer_seconds=0.02, new_peer_within_target=True),
        AttackResult("control", ATTACKS["control"], 4501, 50000, mbps=950.0, sent=400000,
                     rate_sent=50000.0, rss_peak_mb=40.0),
        AttackResult(BASELINE, "alone", None, None, mbps=900.0, rss_peak_mb=42.0),
        AttackResult("forged", ATTACKS["forged"], 4500, 50000, mbps=760.0, sent=400000,
                     rate_sent=49000.0, rss_peak_mb=41.0,
                     drops={"auth_failed": 390000, "kernel_rcvbuf": 12}),
        AttackResult(BASELINE, "alone", None, None, mbps=1000.0),
        AttackResult("ike-init", ATTACKS["ike-init"], 500, 0, mbps=None,
                     status="failed: iperf3 failed: x"),
        AttackResult(BASELINE, "alone", None, None, mbps=1100.0),
    ]
    add_ratios(rows)
    return rows


def test_table_and_json_from_fake_results():
    rows = _fake()
    # against the baselines just before and after
    assert rows[1].baseline_mbps == pytest.approx(950)
    assert rows[1].ratio_to_baseline == pytest.approx(1.0)
    assert rows[3].ratio_to_baseline == pytest.approx(0.8)
    assert rows[3].ratio_to_control == pytest.approx(0.8)
    assert rows[5].ratio_to_baseline is None and rows[5].baseline_mbps == pytest.approx(1050)
    lines = format_table(rows).splitlines()
    assert lines[0].split()[:3] == ["attack", "port", "rate/s"]
    assert len(lines) == 1 + 4  # the baselines in one row
    assert lines[1].split()[:3] == ["baseline*4", "-", "-"]
    assert lines[1].split()[4] == "1000"  # their mean
    assert lines[3].split()[:8] == ["forged", "4500", "50,000", "49,000", "760", "950",
                                    "0.800", "0.800"]
    assert lines[3].split()[-1] == "auth_failed=390000" and " 12 " in lines[3]
    assert "max" in lines[4] and lines[4].endswith("failed: iperf3 failed: x")
    doc = json.loads(json.dumps(report_json(rows, {"cpu": "x"}, 8.0, 50000, 2000, "tcp", 0.1)))
    assert doc["baseline_mbps"] == pytest.approx(1000)
    assert doc["baseline_runs_mbps"] == [1000.0, 900.0, 1000.0, 1100.0]
    assert doc["targets"]["rss_bound_mb"] == pytest.approx(42 + 64)
    assert set(doc["results"][1]) == RESULT_KEYS


def test_flat_drops_adds_every_counter():
    stats = {"drops": {"unknown_spi": 3}, "endpoint_drops": {"kernel_rcvbuf": 2},
             "peers": {"a": {"sa_drops": {"0x1": {"auth_failed": 5, "unknown_spi": 1}}}}}
    assert flat_drops(stats) == {"unknown_spi": 4, "kernel_rcvbuf": 2, "auth_failed": 5}


def test_cli_options():
    p = build_parser()
    args = p.parse_args(["bench", "attack", "--rate", "max", "--only", "forged,ike-init"])
    assert args.rate == 0 and args.ike_rate == 2000 and args.only == ["forged", "ike-init"]
    assert p.parse_args(["bench", "attack", "--ike-rate", "max"]).ike_rate == 0
    assert p.parse_args(["bench", "attack"]).rate == 50000
    for bad in (["--rate", "fast"], ["--rate", "0"], ["--only", "smurf"]):
        with pytest.raises(SystemExit):
            p.parse_args(["bench", "attack", *bad])
