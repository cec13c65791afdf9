"""`nattunnel bench netns` runs end to end in the NAT lab (root). Numbers are not asserted:
benchmarks are for people to read, this only proves the command works. The table, JSON and
ratio code is also checked without root on made-up results."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from nattunnel.bench.netns import (
    BASELINE,
    TUNNELS,
    NetResult,
    OtherWork,
    add_ratios,
    format_table,
    loaded_ping_plan,
    parse_ping,
    percentile,
    report_json,
    write_png,
)
from nattunnel.cli.main import build_parser
from nattunnel.lab.peers import NOT_INSTALLED, PEERS
from tests.support.lab import require_lab_tools

STATUSES = ("ok", NOT_INSTALLED, "failed: ")


def _bench(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "nattunnel", "bench", "netns", "--seconds", "1", "--json", *args],
        capture_output=True, text=True, timeout=150,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _quick_bench(*tunnels: str) -> dict:
    """``netns_main(extras=False)``: the quick run, throughput only (the CLI has no flag for
    it yet), 1 s per protocol, JSON."""
    code = ("import sys; from nattunnel.bench.netns import netns_main; "
            f"sys.exit(netns_main(1.0, True, {list(tunnels)!r}, extras=False))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=150)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.root
def test_bench_netns_runs_and_reports_json():
    require_lab_tools(("ip", "nft", "conntrack", "sysctl", "iperf3"))
    report = _bench()  # every tunnel: the peers are measured, or reported as missing/failed
    rows = {(x["tunnel"], x["proto"]): x for x in report["results"]}
    assert set(rows) == {("none (NAT path)", "tcp"), ("none (NAT path)", "udp"),
                         ("nattunnel", "tcp"), ("nattunnel", "udp"),
                         *((peer, proto) for peer in PEERS for proto in ("tcp", "udp"))}
    for key in (("nattunnel", "tcp"), ("nattunnel", "udp")):
        row = rows[key]
        assert row["mbps"] > 0 and row["cpu_seconds"] > 0 and row["packets"] > 0
        assert row["status"] == "ok" and row["ratio_to_nattunnel"] == 1.0
        assert row["mtu"] > 1000
    for peer in PEERS:
        for proto in ("tcp", "udp"):
            row = rows[(peer, proto)]
            assert row["status"].startswith(STATUSES), row
            assert (row["mbps"] is not None) == (row["status"] == "ok")
    assert "cpu" in report["machine"]
    assert report["tunnels"] == list(TUNNELS)
    _check_extras(rows)


def _check_extras(rows: dict) -> None:
    """The latency and packet-rate fields of every row that was measured: TCP rows carry
    ping RTTs (idle and during the TCP run), UDP rows datagrams per second at 64 and 512
    octets, each sane."""
    measured = {tunnel for (tunnel, _), x in rows.items() if x["status"] == "ok"}
    assert {BASELINE, "nattunnel"} <= measured
    for tunnel in measured:
        tcp, udp = rows[(tunnel, "tcp")], rows[(tunnel, "udp")]
        for when in ("idle", "load"):
            p50, p99 = tcp[f"rtt_{when}_p50_ms"], tcp[f"rtt_{when}_p99_ms"]
            assert 0 < p50 <= p99 < 1000, (tunnel, tcp)
        assert 0 <= tcp["pings_lost"] <= 5, (tunnel, tcp)  # of 15 or more
        assert tcp["pps_64"] is None and udp["rtt_idle_p50_ms"] is None
        for length in (64, 512):
            pps = udp[f"pps_{length}"]
            # at least 1000/s; at most what the whole UDP run carried in bits, times 2
            assert pps > 1000 and pps * length * 8 / 1e6 < 2 * max(udp["mbps"], 100), udp


@pytest.mark.root
def test_bench_netns_nattunnel_and_strongswan_side_by_side():
    """strongSwan (charon + kernel-libipsec) measured in the same run as nattunnel; CI
    installs the strongSwan packages (tests/debian-packages.txt)."""
    require_lab_tools(("ip", "nft", "conntrack", "sysctl", "iperf3"))
    report = _quick_bench("nattunnel", "strongswan")  # without the latency/pps extras
    rows = {(x["tunnel"], x["proto"]): x for x in report["results"]}
    assert [x["tunnel"] for x in report["results"]] == [BASELINE] * 2 + ["nattunnel"] * 2 + [
        "strongswan"] * 2
    for tunnel in ("nattunnel", "strongswan"):
        for proto in ("tcp", "udp"):
            row = rows[(tunnel, proto)]
            assert row["status"] == "ok", row
            assert row["mbps"] > 0 and row["cpu_seconds"] > 0 and row["packets"] > 0
            assert row["ratio_to_nattunnel"] > 0 and row["ratio_to_baseline"] > 0
    assert rows[("strongswan", "tcp")]["mtu"] == 1400  # libipsec's ipsec0
    extras = ("rtt_idle_p50_ms", "rtt_idle_p99_ms", "rtt_load_p50_ms", "rtt_load_p99_ms",
              "pings_lost", "pps_64", "pps_512")
    assert all(x[k] is None for x in report["results"] for k in extras)  # a quick run


def _fake() -> list[NetResult]:
    results = [
        NetResult(BASELINE, "tcp", 20000.0, mtu=1500),
        NetResult(BASELINE, "udp", 1500.0, mtu=1500),
        NetResult("nattunnel", "tcp", 900.0, cpu_seconds=15.3, packets=2_000_000,
                  packets_per_cpu_second=130_718.0, mtu=1438, rtt_idle_p50_ms=0.82,
                  rtt_idle_p99_ms=2.11, rtt_load_p50_ms=6.11, rtt_load_p99_ms=7.8,
                  pings_lost=0),
        NetResult("nattunnel", "udp", 500.0, cpu_seconds=11.0, packets=1_000_000,
                  packets_per_cpu_second=90_909.1, mtu=1438, pps_64=57_885.0,
                  pps_512=46_263.0),
        NetResult("wireguard-go", "tcp", 450.0, cpu_seconds=9.0, mtu=1420,
                  rtt_idle_p50_ms=0.5, rtt_idle_p99_ms=0.9, rtt_load_p50_ms=3.2,
                  rtt_load_p99_ms=17.0),
        NetResult("wireguard-go", "udp", 250.0, cpu_seconds=8.0, mtu=1420),
        NetResult("openvpn", "tcp", None, status=NOT_INSTALLED),
        NetResult("openvpn", "udp", None, status=NOT_INSTALLED),
        NetResult("strongswan", "tcp", None, status="failed: no ping across the tunnel"),
        NetResult("strongswan", "udp", None, status="failed: no ping across the tunnel"),
    ]
    add_ratios(results)
    return results


def test_ratios_table_and_json_from_fake_results():
    results = _fake()
    by = {(r.tunnel, r.proto): r for r in results}
    assert by[("wireguard-go", "tcp")].ratio_to_nattunnel == pytest.approx(0.5)
    assert by[("wireguard-go", "udp")].ratio_to_baseline == pytest.approx(250 / 1500)
    assert by[("nattunnel", "tcp")].ratio_to_nattunnel == 1.0
    assert by[(BASELINE, "tcp")].ratio_to_baseline == 1.0
    assert by[("openvpn", "tcp")].ratio_to_nattunnel is None

    lines = format_table(results).splitlines()
    assert lines[0].split() == ["tunnel", "proto", "MTU", "Mbit/s", "x", "nattunnel", "x",
                                "baseline", "CPU", "s", "packets/CPU-s", "idle", "RTT", "ms",
                                "load", "RTT", "ms", "pps", "64", "pps", "512"]
    assert len(lines) == 1 + len(results)
    wg_tcp = lines[5].split()
    assert wg_tcp[:6] == ["wireguard-go", "tcp", "1420", "450", "0.500", "0.022"]
    # no packet counter, no pps on a TCP row: dashes
    assert wg_tcp[6:] == ["9.0", "-", "0.50/0.90", "3.20/17.00", "-", "-"]
    assert lines[3].split()[7:] == ["130,718", "0.82/2.11", "6.11/7.80", "-", "-"]
    assert lines[4].split()[7:] == ["90,909", "-", "-", "57,885", "46,263"]
    assert lines[7].split()[:3] == ["openvpn", "tcp", "-"]
    assert lines[7].endswith(NOT_INSTALLED)
    assert lines[9].endswith("failed: no ping across the tunnel")

    machine = {"cpu": "Fake CPU", "cores": 2, "kernel": "6.18", "python": "3.11.7",
               "cryptography": "48.0.0"}
    report = json.loads(json.dumps(report_json(results, machine, 5.0, ["strongswan",
                                                                       "nattunnel"], 0.25)))
    assert report["machine"] == machine and report["seconds"] == 5.0
    assert report["tunnels"] == ["nattunnel", "strongswan"]  # run order
    assert report["other_work_cores"] == 0.25
    rows = {(x["tunnel"], x["proto"]): x for x in report["results"]}
    assert rows[("openvpn", "udp")] == {
        "tunnel": "openvpn", "proto": "udp", "mbps": None, "ratio_to_baseline": None,
        "ratio_to_nattunnel": None, "cpu_seconds": None, "packets": None,
        "packets_per_cpu_second": None, "mtu": None, "status": NOT_INSTALLED,
        "rtt_idle_p50_ms": None, "rtt_idle_p99_ms": None, "rtt_load_p50_ms": None,
        "rtt_load_p99_ms": None, "pings_lost": None, "pps_64": None, "pps_512": None}
    assert rows[("nattunnel", "udp")]["pps_64"] == 57_885.0
    assert rows[("nattunnel", "tcp")]["rtt_load_p99_ms"] == 7.8
    assert rows[("nattunnel", "udp")]["packets"] == 1_000_000


def test_ping_replies_parsed_one_per_sequence_number_and_percentiles():
    out = (
        "PING 198.18.7.2 (198.18.7.2) 56(84) bytes of data.\n"
        "64 bytes from 198.18.7.2: icmp_seq=1 ttl=64 time=0.412 ms\n"
        "64 bytes from 198.18.7.2: icmp_seq=2 ttl=64 time=12.5 ms\n"
        "64 bytes from 198.18.7.2: icmp_seq=2 ttl=64 time=13.0 ms (DUP!)\n"
        "From 198.18.7.1 icmp_seq=3 Destination Host Unreachable\n"
        "64 bytes from 198.18.7.2: icmp_seq=4 ttl=64 time=1 ms\n"
        "rtt min/avg/max/mdev = 0.412/4.637/12.500/5.500 ms\n"
    )
    assert parse_ping(out) == [0.412, 12.5, 1.0]
    assert parse_ping("") == []
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([3.0, 1.0], 99) == 3.0
    assert percentile([], 50) is None
    # during a TCP run: from 1 s in to 0.5 s before its end; short runs at least 5 pings
    assert loaded_ping_plan(10.0) == (85, 1.0)
    assert loaded_ping_plan(1.0) == (5, 0.3)


def test_png_without_matplotlib_says_how_to_get_it(monkeypatch, tmp_path):
    real = importlib.import_module

    def no_matplotlib(name: str, *args: object):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_matplotlib)
    why = write_png(_fake(), str(tmp_path / "chart.png"), "title")
    assert why is not None and "pip install matplotlib" in why
    assert not (tmp_path / "chart.png").exists()


def test_only_option():
    p = build_parser()
    args = p.parse_args(["bench", "netns", "--only", "nattunnel,strongswan", "--png", "x.png",
                         "--install-peers"])
    assert args.only == ["nattunnel", "strongswan"] and args.png == "x.png"
    assert args.install_peers
    assert p.parse_args(["bench", "netns"]).only is None
    assert set(TUNNELS) == {"nattunnel", "wireguard-go", "openvpn", "strongswan"}
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "netns", "--only", "nattunnel,tinc"])


def test_other_work_counts_only_processes_outside_the_run():
    me = os.getpid()
    snaps = iter([
        {me: (1, 10.0), 500: (me, 1.0), 600: (1, 5.0), 700: (2, 3.0)},
        # 500 (our child) and its child 900 are this run, 700 is a kernel thread; 600 is
        # other work (+1.5 s), and so is 800, its child started since (+0.5 s)
        {me: (1, 12.0), 500: (me, 3.0), 600: (1, 6.5), 700: (2, 9.0), 800: (600, 0.5),
         900: (500, 4.0)},
    ])
    w = OtherWork(snapshot=lambda: next(snaps))
    w.sample(first=True)
    w.sample()
    assert w.cpu_seconds() == pytest.approx(2.0)


def test_profile_summary_counts_self_time_by_function():
    from nattunnel.bench.profile import summarize

    raw = (
        "main (x.py:1);loop (x.py:5);decap (sa.py:10) 30\n"
        "main (x.py:1);loop (x.py:5);decap (sa.py:12) 10\n"
        "main (x.py:1);loop (x.py:6);write (c.py:3) 40\n"
        "main (x.py:1);select (s.py:9) 20\n"
        "garbage line\n"
    )
    assert summarize(raw) == [(0.4, "decap (sa.py)"), (0.4, "write (c.py)"),
                              (0.2, "select (s.py)")]
    assert summarize("") == []


@pytest.mark.root
def test_bench_netns_profile_shows_where_nattunnel_spends_its_time():
    """--profile samples both endpoints with py-spy (a test dependency) during the TCP run."""
    require_lab_tools(("ip", "nft", "conntrack", "sysctl", "iperf3", "py-spy"))
    report = _bench("--only", "nattunnel", "--profile")
    assert set(report["profile"]) == {"a", "b"}
    a = " ".join(f for _, f in report["profile"]["a"])
    b = " ".join(f for _, f in report["profile"]["b"])
    assert "encapsulate_in_place" in a and "decapsulate_run" in b
    assert all(0 < share <= 1 for rows in report["profile"].values() for share, _ in rows)


@pytest.mark.root
def test_socket_buffers_of_another_process_are_set_from_outside():
    """``set_socket_buffers`` (the benchmark's socket buffer knob): a child's UDP socket on
    a port gets the size asked for, past net.core.rmem_max; its other sockets do not."""
    from nattunnel.bench.netns import set_socket_buffers

    child = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 0))\n"
         "o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); o.bind(('127.0.0.1', 0))\n"
         "print(s.getsockname()[1], flush=True); sys.stdin.readline()\n"
         "for x in (s, o):\n"
         "    print(x.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),\n"
         "          x.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), flush=True)\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        with open("/proc/sys/net/core/rmem_max") as f:
            size = 2 * int(f.read()) + 65536  # more than setsockopt(SO_RCVBUF) may ask
        assert set_socket_buffers(child.pid, size, port) == 1
        child.stdin.write("\n")
        child.stdin.flush()
        mine = [int(v) for v in child.stdout.readline().split()]
        other = [int(v) for v in child.stdout.readline().split()]
        assert mine == [2 * size, 2 * size]  # the kernel doubles it
        assert other[0] < 2 * size
    finally:
        child.kill()
        child.wait()
