"""``nattunnel bench netns`` (root): iperf3 through a nattunnel tunnel across a real NAT.

Builds the NAT lab (``nattunnel.netlab``: host A behind a router doing nftables masquerade,
host B public), then, one after another in the same run:
- the no-tunnel baseline: iperf3 A -> B over the underlay, through the NAT;
- nattunnel: ``nattunnel up`` on A and B (manual SAs, TUN devices), iperf3 A -> B over the
  inner addresses.
Each is measured with TCP and with UDP (``-u -b 0 -l 1300``: received throughput). For the
tunnel it also reads the endpoints' CPU time (/proc/PID/stat) and packet counters (SIGUSR1
stats) to report packets per CPU-second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .bench import machine_info
from .netlab import INNER, Lab, Tunnels, lab_problems, start_tunnels

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class NetResult:
    tunnel: str
    proto: str
    mbps: float
    ratio_to_baseline: float | None = None
    cpu_seconds: float | None = None
    packets: int | None = None
    packets_per_cpu_second: float | None = None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _iperf(lab: Lab, server_ns: str, client_ns: str, addr: str, seconds: float,
           udp: bool) -> float:
    """Received Mbit/s of one iperf3 run (the server stops after one test)."""
    port = 5201
    srv = lab.popen(server_ns, "iperf3", "-s", "-1", "-B", addr, "-p", port,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        args: list[str | int] = ["iperf3", "-c", addr, "-p", port, "-t", f"{seconds:g}", "-J"]
        if udp:
            args += ["-u", "-b", "0", "-l", "1300"]
        while True:
            r = lab.exec(client_ns, *args, check=False, timeout=seconds + 30)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server was not listening yet
        if r.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}")
        end = json.loads(r.stdout)["end"]
        # the receiver's view (for UDP: what arrived, losses excluded)
        bps = (end.get("sum_received") or end["sum"])["bits_per_second"]
        return float(bps) / 1e6
    finally:
        lab.stop(srv)


def _tunnel_packets(t: Tunnels) -> int:
    total = 0
    for node in t.nodes.values():
        for peer in node.stats()["peers"].values():
            total += int(peer["tx_packets"]) + int(peer["rx_packets"])
    return total


def run_netns(seconds: float, progress: Any = None) -> list[NetResult]:
    say = progress or (lambda s: None)
    results: list[NetResult] = []
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="nattunnel-bench-") as tmp:
        base: dict[str, float] = {}
        for proto in ("tcp", "udp"):
            say(f"baseline (no tunnel) {proto.upper()} {seconds:g} s ...")
            base[proto] = _iperf(lab, "b", "a", lab.addr["b"], seconds, proto == "udp")
            results.append(NetResult("none (NAT path)", proto, base[proto], 1.0))
        say("starting nattunnel on A and B ...")
        t = start_tunnels(lab, Path(tmp))
        if not t.ping("a", "b", timeout=3.0):
            raise RuntimeError("the tunnel does not pass ping; logs:\n"
                               + "\n".join(n.log() for n in t.nodes.values()))
        pids = [n.proc.pid for n in t.nodes.values()]
        for proto in ("tcp", "udp"):
            say(f"nattunnel {proto.upper()} {seconds:g} s ...")
            cpu0 = sum(_cpu_seconds(p) for p in pids)
            pk0 = _tunnel_packets(t)
            mbps = _iperf(lab, "b", "a", INNER["b"], seconds, proto == "udp")
            cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
            pk = _tunnel_packets(t) - pk0
            results.append(NetResult("nattunnel", proto, mbps, mbps / base[proto], cpu, pk,
                                     pk / cpu if cpu > 0 else None))
        for role in list(t.nodes):
            t.stop(role)
    return results


def format_table(results: list[NetResult]) -> str:
    lines = [f"{'tunnel':<18}{'proto':<6}{'Mbit/s':>10}{'x baseline':>12}{'CPU s':>8}"
             f"{'packets/CPU-s':>15}"]
    for r in results:
        ratio = f"{r.ratio_to_baseline:.3f}" if r.ratio_to_baseline is not None else "-"
        cpu = f"{r.cpu_seconds:.1f}" if r.cpu_seconds is not None else "-"
        ppc = f"{r.packets_per_cpu_second:,.0f}" if r.packets_per_cpu_second else "-"
        lines.append(f"{r.tunnel:<18}{r.proto:<6}{r.mbps:>10.0f}{ratio:>12}{cpu:>8}{ppc:>15}")
    return "\n".join(lines)


def netns_main(seconds: float, as_json: bool) -> int:
    problems = lab_problems()
    if shutil.which("iperf3") is None:
        problems.append("iperf3 missing (apt-get install -y --no-install-recommends iperf3)")
    if problems:
        print("nattunnel bench netns: " + "; ".join(problems), file=sys.stderr)
        return 2
    progress = None if as_json else (lambda s: print(f"  {s}", flush=True))
    results = run_netns(seconds, progress)
    if as_json:
        print(json.dumps({"machine": machine_info(), "seconds": seconds,
                          "results": [asdict(r) for r in results]}, indent=2))
    else:
        info = machine_info()
        print(f"\nmachine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
              f"Python {info['python']}, cryptography {info['cryptography']}")
        print(f"iperf3 A (behind NAT) -> B, {seconds:g} s each, one after another\n")
        print(format_table(results))
    return 0
