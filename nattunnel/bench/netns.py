"""``nattunnel bench netns`` (root): iperf3 through nattunnel and its peers across a real NAT.

Builds the NAT lab (``nattunnel.lab.netns``: host A behind a router doing nftables masquerade,
host B public), then, one after another in the same run:
- the no-tunnel baseline: iperf3 A -> B over the underlay, through the NAT;
- nattunnel: ``nattunnel up`` on A and B (manual SAs, TUN devices);
- where installed, the peer tunnels of ``nattunnel.lab.peers``: wireguard-go, OpenVPN (UDP,
  AES-256-GCM, DCO off) and strongSwan (charon + kernel-libipsec, PSK, aes256gcm16);
each at its default MTU, iperf3 A -> B over the inner addresses. Each is measured with TCP and
with UDP (``-u -b 0 -l 1300``: received throughput). For every tunnel it also reads the CPU
time of its daemons on both ends (utime + stime from /proc/PID/stat) and the packets it
carried (nattunnel: ESP packets sent + received by both ends, from its SIGUSR1 stats; peers:
packets through the tunnel interface on both ends), and reports throughput as a ratio to
nattunnel and to the baseline. A tunnel that is not installed or does not come up is
reported as such, and the run goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..lab.netns import Lab, lab_problems
from ..lab.peers import NOT_INSTALLED, PEERS, STARTERS, PeerError, Running, peer_problems, started
from ..lab.tunnels import INNER, Tunnels, start_tunnels
from . import profile as _profile
from .crypto import machine_info

_CLK_TCK = os.sysconf("SC_CLK_TCK")
BASELINE = "none (NAT path)"
#: the tunnels ``--only`` can select, in the order they run
TUNNELS = ("nattunnel", *PEERS)
PROTOS = ("tcp", "udp")
OK = "ok"


@dataclass
class NetResult:
    tunnel: str
    proto: str
    mbps: float | None
    ratio_to_baseline: float | None = None
    ratio_to_nattunnel: float | None = None
    cpu_seconds: float | None = None
    packets: int | None = None
    packets_per_cpu_second: float | None = None
    mtu: int | None = None
    #: "ok", "not installed (use --install-peers)" or "failed: <short reason>"
    status: str = OK
    #: TCP rows: ping RTT (ms, p50 and p99 of the replies, ``ping -i 0.1``) with the tunnel
    #: idle and during the TCP run, and the pings without a reply (idle + loaded)
    rtt_idle_p50_ms: float | None = None
    rtt_idle_p99_ms: float | None = None
    rtt_load_p50_ms: float | None = None
    rtt_load_p99_ms: float | None = None
    pings_lost: int | None = None
    #: UDP rows: datagrams per second received by the iperf3 server at 64- and 512-octet
    #: payloads (``-u -b 0 -l 64`` / ``-l 512``)
    pps_64: float | None = None
    pps_512: float | None = None


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def proc_snapshot() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime + stime in seconds) of every process."""
    out: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK_TCK)
        except (OSError, ValueError, IndexError):
            continue
    return out


class OtherWork:
    """CPU used by processes outside this run (other work competing with the benchmark).

    A thread reads /proc/PID/stat of every process once a second; CPU time of processes that
    are not descendants of this one (and not kernel threads, which also carry this run's
    softirq work) is summed from the first sample (or from 0 for processes started
    later). Short-lived processes between two samples are missed, so it is a lower bound."""

    def __init__(self, interval: float = 1.0,
                 snapshot: Callable[[], dict[int, tuple[int, float]]] | None = None) -> None:
        self.interval = interval
        #: pid -> (ppid, CPU seconds) of every process; /proc unless given (tests)
        self.snapshot = snapshot or proc_snapshot
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = 0.0
        self._started = False

    def sample(self, first: bool = False) -> None:
        """Read every process's CPU time once (the thread does it each ``interval``)."""
        snap = self.snapshot()
        me = os.getpid()
        ours: dict[int, bool] = {me: True, 0: False, 1: False, 2: False}

        def mine(pid: int) -> bool:
            chain = []
            while pid not in ours and pid in snap:
                chain.append(pid)
                pid = snap[pid][0]
            verdict = ours.get(pid, False)
            for p in chain:
                ours[p] = verdict
            return verdict

        for pid, (ppid, cpu) in snap.items():
            if ppid == 2 or pid == 2 or mine(pid):  # kernel threads, this run
                continue
            self._first.setdefault(pid, cpu if first else 0.0)
            self._last[pid] = cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> OtherWork:
        try:
            self.sample(first=True)
        except OSError:
            return self
        self._t0 = time.monotonic()
        self._started = True
        self._thread.start()
        return self

    def stop(self) -> float | None:
        """Average cores' worth of CPU used by other processes since ``start``."""
        if not self._started:
            return None
        self._stop.set()
        self._thread.join(5.0)
        with contextlib.suppress(OSError):
            self.sample()
        wall = time.monotonic() - self._t0
        return self.cpu_seconds() / wall if wall > 0 else None

    def cpu_seconds(self) -> float:
        """CPU seconds used by other processes between the first and the last sample."""
        return sum(max(0.0, self._last[p] - self._first[p]) for p in self._last)


def iperf(lab: Lab, server_ns: str, client_ns: str, addr: str, seconds: float,
          udp: bool, length: int = 1300) -> float:
    """Received Mbit/s of one iperf3 run (UDP: ``-b 0 -l length``); a run that ends without
    a result (iperf3 exits 0 with an incomplete report now and then) is repeated once."""
    try:
        return _iperf_once(lab, server_ns, client_ns, addr, seconds, udp, length)
    except RuntimeError:
        return _iperf_once(lab, server_ns, client_ns, addr, seconds, udp, length)


def udp_pps(lab: Lab, dest: str, seconds: float, length: int) -> float:
    """Datagrams per second of ``length`` octets that reached the iperf3 server on B (its
    received bytes over the payload length: losses excluded), A sending as fast as it can."""
    return iperf(lab, "b", "a", dest, seconds, True, length) * 1e6 / (8 * length)


def _iperf_once(lab: Lab, server_ns: str, client_ns: str, addr: str, seconds: float,
                udp: bool, length: int = 1300) -> float:
    """Received Mbit/s of one iperf3 run (the server stops after one test)."""
    port = 5201
    srv = lab.popen(server_ns, "iperf3", "-s", "-1", "-B", addr, "-p", port,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        args: list[str | int] = ["iperf3", "-c", addr, "-p", port, "-t", f"{seconds:g}", "-J"]
        if udp:
            args += ["-u", "-b", "0", "-l", length]
        while True:
            r = lab.exec(client_ns, *args, check=False, timeout=seconds + 30)
            # iperf3 -J may exit 0 with "unable to connect" in its report
            refused = "unable to connect" in r.stdout or "unable to connect" in r.stderr
            if (r.returncode == 0 and not refused) or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the server was not listening yet
        if r.returncode != 0:
            try:
                error = str(json.loads(r.stdout).get("error", ""))
            except ValueError:
                error = (r.stderr or r.stdout).strip()[-200:]
            raise RuntimeError(f"iperf3 failed: {error}")
        report = json.loads(r.stdout)
        end = report.get("end") or {}
        # the receiver's view (for UDP: what arrived, losses excluded)
        summary = end.get("sum_received") or end.get("sum")
        if not summary or "bits_per_second" not in summary:
            raise RuntimeError(f"iperf3 gave no result: {report.get('error', 'no summary')}")
        return float(summary["bits_per_second"]) / 1e6
    finally:
        lab.stop(srv)


# --------------------------------------------------------------------------- latency

#: ``ping -i`` (seconds): about 10 pings per second
PING_INTERVAL = 0.1
#: length of each of the new measurements (idle ping, pps at 64 and 512 octets), at most
EXTRA_SECONDS = 3.0
_RTT = re.compile(r"icmp_seq=(\d+) .*time=([0-9.]+) ms")


def parse_ping(output: str) -> list[float]:
    """RTTs in ms of the replies in ``ping -n`` output, one per sequence number (a
    duplicate reply is not a second sample)."""
    seen: dict[int, float] = {}
    for m in _RTT.finditer(output):
        seen.setdefault(int(m.group(1)), float(m.group(2)))
    return list(seen.values())


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ping_rtts(lab: Lab, dest: str, count: int) -> tuple[list[float], int]:
    """``count`` pings A -> ``dest`` at ``PING_INTERVAL``: the RTTs of the replies (ms) and
    how many got none."""
    r = lab.exec("a", "ping", "-n", "-i", f"{PING_INTERVAL:g}", "-c", count, "-W", "1", dest,
                 check=False, timeout=count * PING_INTERVAL + 10)
    rtts = parse_ping(r.stdout)
    return rtts, max(0, count - len(rtts))


class LoadedPing:
    """Pings A -> ``dest`` in a thread while something else (the TCP run) loads the
    tunnel: ``start`` waits ``delay`` (iperf3's connection setup and slow start), then
    sends ``count`` pings; ``result`` joins."""

    def __init__(self, lab: Lab, dest: str, count: int, delay: float) -> None:
        self.rtts: list[float] = []
        self.lost = 0
        self.error: str | None = None
        self._args = (lab, dest, count, delay)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        lab, dest, count, delay = self._args
        time.sleep(delay)
        try:
            self.rtts, self.lost = ping_rtts(lab, dest, count)
        except (OSError, subprocess.SubprocessError) as exc:
            self.error = str(exc)

    def start(self) -> LoadedPing:
        self._thread.start()
        return self

    def result(self, timeout: float) -> tuple[list[float], int]:
        self._thread.join(timeout)
        return self.rtts, self.lost


def loaded_ping_plan(seconds: float) -> tuple[int, float]:
    """(pings, delay) for the ping during a TCP run of ``seconds``: from 1 s in (0.3 s for
    runs under 2 s) to 0.5 s before its end, at least 5 pings."""
    delay = 1.0 if seconds >= 2 else 0.3
    count = max(5, int((seconds - delay - 0.5) / PING_INTERVAL))
    return count, delay


def _tunnel_packets(t: Tunnels) -> int:
    total = 0
    for node in t.nodes.values():
        for peer in node.stats()["peers"].values():
            total += int(peer["tx_packets"]) + int(peer["rx_packets"])
    return total


def start_nattunnel(lab: Lab, workdir: Path) -> Running:
    """``nattunnel up`` on A and B (``lab.tunnels.start_tunnels``) as a ``Running`` tunnel."""
    run = Running("nattunnel", lab, INNER["b"], {"a": "nt0", "b": "nt0"})

    def bring_up() -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        t = start_tunnels(lab, workdir)
        run.procs = [n.proc for n in t.nodes.values()]
        run.roles = list(t.nodes)
        run.logs = [n.log_path for n in t.nodes.values()]
        run.packet_counter = lambda: _tunnel_packets(t)

    return started(run, bring_up)


_SYS_PIDFD_GETFD = 438  # x86-64, arm64 and the generic table alike
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
NATT_PORT = 4500


def _udp_inodes(pid: int, port: int) -> set[str]:
    """Socket inodes of the UDP sockets bound to ``port`` in ``pid``'s network namespace."""
    found = set()
    for name in ("udp", "udp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    found.add(cols[9])
    return found


def set_socket_buffers(pid: int, size: int, port: int = NATT_PORT) -> int:
    """Set SO_RCVBUF and SO_SNDBUF of process ``pid``'s UDP sockets on ``port`` to ``size``
    (the kernel doubles it) from outside, as root: each socket is duplicated into this
    process with pidfd_getfd(2) and set with SO_RCVBUFFORCE/SO_SNDBUFFORCE, which pass
    net.core.rmem_max (not writable in a network namespace). This is the benchmark's
    stand-in for a product setting. Returns how many sockets were set."""
    inodes = _udp_inodes(pid, port)
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    done = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if not (link.startswith("socket:[") and link[8:-1] in inodes):
                continue
            local = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if local < 0:
                raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {fd} of {pid}")
            with socket.socket(fileno=local) as sock:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)
            done += 1
    finally:
        os.close(pidfd)
    return done


def tune(lab: Lab, run: Running, sockbuf: int | None, txqueuelen: int | None) -> None:
    """``sockbuf``: nattunnel's NAT-T sockets' buffers (``set_socket_buffers``) on both
    ends; ``txqueuelen``: the tunnel devices' transmit queue length on both ends."""
    if sockbuf is not None and run.name == "nattunnel":
        for pid in run.pids:
            if set_socket_buffers(pid, sockbuf) == 0:
                raise RuntimeError(f"no UDP socket on port {NATT_PORT} in process {pid}")
    if txqueuelen is not None:
        for role, iface in run.ifaces.items():
            lab.exec(role, "ip", "link", "set", "dev", iface, "txqueuelen", txqueuelen)


def _short(reason: str, limit: int = 90) -> str:
    line = next((x.strip() for x in reason.splitlines() if x.strip()), "unknown error")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _measure(lab: Lab, run: Running, proto: str, seconds: float, mtu: int | None,
             profile: dict[str, list[tuple[float, str]]] | None = None,
             workdir: Path | None = None) -> NetResult:
    """One iperf3 run through ``run``. With ``profile`` (a dict to fill), the tunnel's
    processes are sampled with py-spy meanwhile (``nattunnel.bench.profile``), by role."""
    pids = run.pids
    samplers = []
    if profile is not None and workdir is not None:
        # start after iperf3's connection setup, stop before its end
        samplers = [_profile.start(role, pid, seconds - 2, workdir)
                    for role, pid in zip(run.roles, pids, strict=False)]
    try:
        cpu0 = sum(_cpu_seconds(p) for p in pids)
        pk0 = run.packets()
        mbps = iperf(lab, "b", "a", run.dest, seconds, proto == "udp")
        cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
        pk = run.packets() - pk0
        for sm in samplers:
            assert profile is not None  # samplers run only with a profile to fill
            profile[sm.role] = sm.result(timeout=10)
    except (RuntimeError, OSError, ValueError, KeyError, IndexError) as exc:
        return NetResult(run.name, proto, None, mtu=mtu, status=f"failed: {_short(str(exc))}")
    if not run.alive():
        return NetResult(run.name, proto, None, mtu=mtu,
                         status="failed: a daemon exited during the run")
    return NetResult(run.name, proto, mbps, cpu_seconds=cpu, packets=pk,
                     packets_per_cpu_second=pk / cpu if cpu > 0 else None, mtu=mtu)


def with_extras(lab: Lab, dest: str, proto: str, seconds: float, extra: float,
                measure: Callable[[], NetResult]) -> NetResult:
    """``measure()`` (one ``proto`` throughput run to ``dest``) with the latency and
    packet-rate figures around it, each ``extra`` seconds: for TCP, ping RTT idle (before)
    and during the run; for UDP, datagrams per second at 64 and 512 octets (after). A
    failed extra leaves its fields None and does not fail the row."""
    if proto == "tcp":
        idle, lost = ping_rtts(lab, dest, max(5, int(extra / PING_INTERVAL)))
        count, delay = loaded_ping_plan(seconds)
        pinger = LoadedPing(lab, dest, count, delay).start()
        r = measure()
        load, lost_load = pinger.result(timeout=count * PING_INTERVAL + delay + 15)
        r.rtt_idle_p50_ms, r.rtt_idle_p99_ms = percentile(idle, 50), percentile(idle, 99)
        r.rtt_load_p50_ms, r.rtt_load_p99_ms = percentile(load, 50), percentile(load, 99)
        r.pings_lost = lost + lost_load
        return r
    r = measure()
    for length in (64, 512):
        try:
            pps = udp_pps(lab, dest, extra, length)
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError):
            continue
        setattr(r, f"pps_{length}", pps)
    return r


def _baseline(lab: Lab, eth: Running, proto: str, seconds: float) -> NetResult:
    try:
        mbps = iperf(lab, "b", "a", lab.addr["b"], seconds, proto == "udp")
    except (RuntimeError, OSError, ValueError) as exc:
        return NetResult(BASELINE, proto, None, mtu=eth.mtu(),
                         status=f"failed: {_short(str(exc))}")
    return NetResult(BASELINE, proto, mbps, mtu=eth.mtu())


def add_ratios(results: list[NetResult]) -> None:
    ref: dict[tuple[str, str], float] = {}
    for r in results:
        if r.tunnel in (BASELINE, "nattunnel") and r.mbps:
            ref[(r.tunnel, r.proto)] = r.mbps
    for r in results:
        if r.mbps is None:
            continue
        if (BASELINE, r.proto) in ref:
            r.ratio_to_baseline = r.mbps / ref[(BASELINE, r.proto)]
        if ("nattunnel", r.proto) in ref:
            r.ratio_to_nattunnel = r.mbps / ref[("nattunnel", r.proto)]


def run_netns(seconds: float, tunnels: Sequence[str] = TUNNELS,
              progress: Callable[[str], None] | None = None,
              profile: dict[str, list[tuple[float, str]]] | None = None,
              extras: bool = True, sockbuf: int | None = None,
              txqueuelen: int | None = None) -> list[NetResult]:
    """Baseline, then each of ``tunnels`` (in ``TUNNELS`` order), TCP and UDP each. With
    ``profile``, nattunnel's endpoints are sampled during its TCP run (filled in by role).
    With ``extras`` (``with_extras``), ping RTT idle and under TCP load and UDP packets per
    second at 64 and 512 octets too, each ``min(EXTRA_SECONDS, seconds)``. ``sockbuf`` and
    ``txqueuelen``: set on each tunnel after it is up (``tune``)."""
    say = progress or (lambda s: None)
    extra = min(EXTRA_SECONDS, seconds)

    def measure(run: Running, proto: str, one: Callable[[], NetResult]) -> NetResult:
        if not extras:
            return one()
        return with_extras(run.lab, run.dest, proto, seconds, extra, one)

    starters: dict[str, Callable[[Lab, Path], Running]] = {"nattunnel": start_nattunnel,
                                                            **STARTERS}
    results: list[NetResult] = []
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="nattunnel-bench-") as tmp:
        eth = Running(BASELINE, lab, lab.addr["b"], {"a": "eth0"})
        for proto in PROTOS:
            say(f"baseline (no tunnel) {proto.upper()} {seconds:g} s ...")
            results.append(measure(eth, proto, partial(_baseline, lab, eth, proto, seconds)))
        for name in (t for t in TUNNELS if t in tunnels):
            missing = [] if name == "nattunnel" else peer_problems(name)
            if missing:
                say(f"{name}: {NOT_INSTALLED} (missing: {', '.join(missing)})")
                results += [NetResult(name, p, None, status=NOT_INSTALLED) for p in PROTOS]
                continue
            say(f"starting {name} on A and B ...")
            try:
                run = starters[name](lab, Path(tmp) / name)
            except Exception as exc:  # PeerError, or a bug in a setup: report, go on
                say(f"{name} did not come up: {_short(str(exc) or type(exc).__name__)}")
                detail = exc.detail if isinstance(exc, PeerError) else repr(exc)
                for line in detail.strip().splitlines()[-12:]:
                    say(f"    {line}")
                reason = _short(str(exc) or type(exc).__name__)
                results += [NetResult(name, p, None, status=f"failed: {reason}")
                            for p in PROTOS]
                continue
            try:
                tune(lab, run, sockbuf, txqueuelen)
                mtu = run.mtu()
                for proto in PROTOS:
                    say(f"{name} {proto.upper()} {seconds:g} s (MTU {mtu}) ...")
                    sample = profile if name == "nattunnel" and proto == "tcp" else None
                    results.append(measure(run, proto, partial(
                        _measure, lab, run, proto, seconds, mtu, sample, Path(tmp))))
                    if results[-1].status != OK:
                        say(f"{name} {proto.upper()}: {results[-1].status}")
            finally:
                run.close()
    add_ratios(results)
    return results


# --------------------------------------------------------------------------- output


def _num(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _pair(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a:.2f}/{b:.2f}"


def format_table(results: list[NetResult]) -> str:
    """One row per tunnel and protocol. TCP rows carry the ping RTT columns (ms, p50/p99,
    idle and during the TCP run), UDP rows the packets per second at 64 and 512 octets."""
    head = (f"{'tunnel':<17}{'proto':<6}{'MTU':>5}{'Mbit/s':>9}{'x nattunnel':>13}"
            f"{'x baseline':>12}{'CPU s':>8}{'packets/CPU-s':>15}"
            f"{'idle RTT ms':>13}{'load RTT ms':>14}{'pps 64':>10}{'pps 512':>10}")
    lines = [head]
    for r in results:
        left = f"{r.tunnel:<17}{r.proto:<6}{_num(r.mtu, 'd'):>5}"
        if r.status != OK or r.mbps is None:
            lines.append(f"{left}  {r.status}")
            continue
        lines.append(
            f"{left}{r.mbps:>9.0f}{_num(r.ratio_to_nattunnel, '.3f'):>13}"
            f"{_num(r.ratio_to_baseline, '.3f'):>12}{_num(r.cpu_seconds, '.1f'):>8}"
            f"{_num(r.packets_per_cpu_second, ',.0f'):>15}"
            f"{_pair(r.rtt_idle_p50_ms, r.rtt_idle_p99_ms):>13}"
            f"{_pair(r.rtt_load_p50_ms, r.rtt_load_p99_ms):>14}"
            f"{_num(r.pps_64, ',.0f'):>10}{_num(r.pps_512, ',.0f'):>10}"
        )
    return "\n".join(lines)


def report_json(results: list[NetResult], machine: dict[str, Any], seconds: float,
                tunnels: Sequence[str], other_work: float | None) -> dict[str, Any]:
    """The ``--json`` document. ``other_work_cores``: cores' worth of CPU used on average by
    processes outside the run while it ran (``OtherWork``)."""
    return {
        "machine": machine,
        "seconds": seconds,
        "tunnels": [t for t in TUNNELS if t in tunnels],
        "other_work_cores": None if other_work is None else round(other_work, 2),
        "results": [asdict(r) for r in results],
    }


def write_png(results: list[NetResult], path: str, title: str) -> str | None:
    """A grouped bar chart (TCP and UDP Mbit/s per tunnel) with matplotlib, if it is
    importable. Returns None when written, else why not (a message for the user)."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return (f"--png: matplotlib is not installed, no chart written to {path} "
                "(pip install matplotlib)")
    names = [t for t in TUNNELS if any(r.tunnel == t for r in results)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4.5))
    width = 0.38
    for i, proto in enumerate(PROTOS):
        rows = {r.tunnel: r for r in results if r.proto == proto}
        xs = [k + (i - 0.5) * width for k in range(len(names))]
        ys = [(rows[n].mbps or 0.0) if n in rows else 0.0 for n in names]
        bars = ax.bar(xs, ys, width, label=f"{proto.upper()}"
                      + (" (-u -b 0 -l 1300, received)" if proto == "udp" else ""))
        for bar, n in zip(bars, names, strict=True):
            r = rows.get(n)
            if r is None or r.mbps is None:
                text = "not installed" if r is not None and r.status == NOT_INSTALLED else "failed"
                ax.text(bar.get_x() + width / 2, 0, text, ha="center", va="bottom",
                        rotation=90, fontsize=8)
                continue
            text = f"{r.mbps:.0f}"
            if r.ratio_to_nattunnel is not None:
                text += f"\n{r.ratio_to_nattunnel:.2f}x"
            ax.text(bar.get_x() + width / 2, bar.get_height(), text, ha="center",
                    va="bottom", fontsize=8)
    base = {r.proto: r.mbps for r in results if r.tunnel == BASELINE and r.mbps}
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("Mbit/s (A behind NAT -> B)")
    ax.set_title(title + ("\nno-tunnel baseline: " + ", ".join(
        f"{p.upper()} {v:.0f}" for p, v in base.items()) + " Mbit/s" if base else ""),
        fontsize=9)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def format_profile(profile: dict[str, list[tuple[float, str]]]) -> str:
    what = {"a": "A, sending: TUN -> ESP -> UDP", "b": "B, receiving: UDP -> ESP -> TUN"}
    lines = []
    for role in sorted(profile):
        lines.append(f"{what.get(role, role)} (py-spy, share of busy samples, by function)")
        lines += [f"  {share * 100:5.1f}%  {func}" for share, func in profile[role]]
    return "\n".join(lines)


def netns_main(seconds: float, as_json: bool, tunnels: Sequence[str] = TUNNELS,
               png: str | None = None, install: bool = False, profile: bool = False,
               extras: bool = True, sockbuf: int | None = None,
               txqueuelen: int | None = None) -> int:
    """``extras=False`` (quick runs): throughput only, no ping RTT or packets per second.
    ``sockbuf``, ``txqueuelen``: see ``tune`` (None: as the tunnels set them)."""
    if install:
        from ..lab.peers import install_peers

        print("installing the peer tunnels (apt-get) ...", file=sys.stderr, flush=True)
        install_peers()
    problems = lab_problems()
    if shutil.which("iperf3") is None:
        problems.append("iperf3 missing (apt-get install -y --no-install-recommends iperf3)")
    if profile and not _profile.available():
        problems.append("--profile needs py-spy (pip install py-spy)")
    if problems:
        print("nattunnel bench netns: " + "; ".join(problems), file=sys.stderr)
        return 2
    samples: dict[str, list[tuple[float, str]]] | None = {} if profile else None
    progress = None if as_json else (lambda s: print(f"  {s}", flush=True))
    info = machine_info()
    other = OtherWork().start()
    try:
        results = run_netns(seconds, tunnels, progress, samples, extras=extras,
                            sockbuf=sockbuf, txqueuelen=txqueuelen)
    finally:
        other_work = other.stop()
    title = (f"nattunnel bench netns, iperf3 {seconds:g} s each; {info['cpu']}, "
             f"{info['cores']} cores")
    if as_json:
        doc = report_json(results, info, seconds, tunnels, other_work)
        doc["settings"] = {"sockbuf": sockbuf, "txqueuelen": txqueuelen}
        if samples is not None:
            doc["profile"] = {role: [[round(share, 4), func] for share, func in rows]
                              for role, rows in samples.items()}
        print(json.dumps(doc, indent=2))
    else:
        print(f"\nmachine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
              f"Python {info['python']}, cryptography {info['cryptography']}")
        print(f"other work on the machine during the run: {_num(other_work, '.2f')} of "
              f"{info['cores']} cores on average (processes outside this run)")
        print(f"iperf3 A (behind NAT) -> B, {seconds:g} s each, one after another")
        if sockbuf is not None or txqueuelen is not None:
            print(f"set after start: nattunnel's socket buffers {_num(sockbuf, 'd')}, "
                  f"tunnel devices' txqueuelen {_num(txqueuelen, 'd')}")
        if extras:
            print(f"RTT: ping -i {PING_INTERVAL:g} A -> B, p50/p99 in ms, idle "
                  f"({min(EXTRA_SECONDS, seconds):g} s) and during the TCP run; pps: "
                  f"iperf3 -u -b 0 -l 64 / -l 512, {min(EXTRA_SECONDS, seconds):g} s, "
                  "datagrams per second received by B")
        print()
        print(format_table(results))
        if samples:
            print("\nwhere nattunnel's time goes during the TCP run:\n" + format_profile(samples))
    if png:
        why = write_png(results, png, title)
        print(why if why else f"chart written to {png}", file=sys.stderr if as_json or why
              else sys.stdout)
    return 0
