"""``nattunnel bench traversal`` (root): the NAT traversal figures of issue 13.7.

One NAT lab (``nattunnel.lab.nattypes``, topology "two": A behind NAT1, C behind NAT2, B and
E public) with coturn relays on B (long-term credentials), nattunnel nodes (``Node`` with
TUN devices, run by this module's ``node`` entry in the lab namespaces), in one run:

- **first packet**: the seconds from starting both nodes to the first ping answered through
  the tunnel, direct (A behind a port restricted NAT, E public) and through the relay (A and
  C behind symmetric NATs, each with its allocation, ``relay = "always"``); ``--rounds``
  times each, median and maximum.
- **relay -> direct**: A (``relay = "auto"``) towards E with the direct path blocked in NAT1
  at first, so that A allocates a relay and comes up through it; then the block is lifted:
  the seconds until the IKE SA and its child SAs are on the direct path (MOBIKE) and the
  pings lost meanwhile (ping at 10 pps); then the block comes back: the seconds until they
  are on the relay again and the pings lost (the direct path's death is noticed by liveness
  checks: io/relay.py's ``PathMover`` timings, printed).
- **throughput**: iperf3 TCP A -> E for ``--seconds``, direct and through the relay
  (``relay = "always"`` to E), and the ratio; with each, TCP's retransmissions (iperf3's
  sender) and the UDP receive-buffer drops in B's namespace (``UdpRcvbufErrors``: coturn's
  sockets, docs/benchmarks.md).
- **idle**: ``--idle`` seconds (default 600) of silence on the direct tunnel A -> E with the
  NATs' UDP mapping timeout at ``--mapping-timeout`` seconds (default 30; NAT keepalives
  every ``--keepalive`` s, default 20): afterwards ping must pass and the IKE SA must be
  the same one (same SPIs, no new handshake).

- **mediated**: the first packet over the direct path the connectivity checks chose (A and
  C behind port restricted NATs, a nattunnel mediation server on B, io/mediated.py): from
  A's start, C registered already; ``--rounds`` times. ``--delay-ms`` (the issue's 50 ms)
  delays the outgoing UDP of A, B and C by that much (lab/natemu.py's TUN delay; this
  kernel has no netem): every path among them has that one-way delay, both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..keys import write_psk_file
from ..lab.coturn import Coturn, Relay, coturn_problems
from ..lab.natemu import start_delay
from ..lab.nattypes import PORT_RESTRICTED_CONE, SYMMETRIC, NatLab
from ..lab.netns import lab_problems
from ..lab.tunnels import PKG_ROOT

A_IN, E_IN = "198.18.120.1", "198.18.120.3"
#: the mover's timings in the relay -> direct part (io/relay.py's PathMover)
MOVE_TIMINGS = {"auto_after": 2.0, "retry_direct": 1.0, "keep_relay": 5.0,
                "dead_after": 2.0, "probe_interval": 1.0}


# --------------------------------------------------------------------------- one node


async def _node(config: str, options: str, status: str) -> None:
    """A node (``nattunnel up CONFIG``, with the TURN lifetimes and path timings of
    OPTIONS) whose status goes to STATUS every 0.2 s, until SIGTERM."""
    from ..app import Node
    from ..config import load_config

    opts = json.loads(options)
    node = Node(load_config(config), serve_control=False, serve_metrics=False,
                turn_lifetimes=opts.get("turn"), path_timings=opts.get("paths"))
    await node.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while True:
        tmp = status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(node.show(), f)
        os.replace(tmp, status)
        if stop.is_set():
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    await node.stop(wait=0.5)


class LabNode:
    """A node in a lab namespace, and its status file."""

    def __init__(self, lab: NatLab, ns: str, cfg: Path, options: dict[str, Any]) -> None:
        self.lab, self.status_file = lab, cfg.with_suffix(".status.json")
        self.status_file.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
        self.proc = lab.popen(ns, sys.executable, "-m", "nattunnel.bench.traversal", "node",
                              str(cfg), json.dumps(options), str(self.status_file),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=str(PKG_ROOT))

    def status(self) -> dict[str, Any]:
        for _ in range(50):
            try:
                result: dict[str, Any] = json.loads(self.status_file.read_text())
                return result
            except (OSError, ValueError):
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise RuntimeError(f"a nattunnel node ended: {err[-2000:]}") from None
                time.sleep(0.1)
        raise RuntimeError("no status from a nattunnel node")

    def peer(self) -> dict[str, Any]:
        peer: dict[str, Any] = next(iter(self.status()["peers"].values()))
        return peer

    def stop(self) -> None:
        self.lab.stop(self.proc)

    def ready(self) -> bool:
        return self.status_file.exists()


def write_config(d: Path, me: str, other: str, mine: str, theirs: str, *,
                 endpoint: str | None, initiate: bool, relay: str = "auto",
                 turn: str | None = None, keepalive: float = 20.0) -> Path:
    """A node's TOML: one PSK peer (``k.psk`` and ``turn.pw`` in ``d``)."""
    path = d / f"{me}.toml"
    lines = ['listen = ["0.0.0.0:4500"]', "ike_port = 0"]
    if turn is not None:
        lines.append(f'turn = {{ server = "{turn}", username = "nattunnel", '
                     'password_file = "turn.pw" }')
    lines += ["[interface]", 'name = "nt0"', f'addresses = ["{mine}/24"]', "[[peer]]",
              f'name = "{other}"', 'auth = "psk"', 'psk_file = "k.psk"',
              f'local_id = "host{me}"', f'remote_id = "host{other}"',
              f'allowed_ips = ["{theirs}/32"]', f'local_ts = ["{mine}/32"]',
              f'relay = "{relay}"', f"initiate = {str(initiate).lower()}",
              f"keepalive_interval = {keepalive:g}"]
    if endpoint is not None:
        lines.append(f'endpoint = "{endpoint}"')
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- measurements


@dataclass
class TraversalFigures:
    rounds: int
    first_packet_direct: list[float] = field(default_factory=list)
    first_packet_relay: list[float] = field(default_factory=list)
    #: the same, from the moment both nodes were running (their first status written):
    #: without the interpreter's start and the imports
    ready_direct: list[float] = field(default_factory=list)
    ready_relay: list[float] = field(default_factory=list)
    #: to the first packet over the direct path the connectivity checks chose (A and C
    #: behind port restricted NATs, a nattunnel mediation server on B)
    first_packet_mediated: list[float] = field(default_factory=list)
    ready_mediated: list[float] = field(default_factory=list)
    #: the one-way delay added to A's, B's and C's UDP in the mediated part (ms)
    delay_ms: float = 0.0
    to_direct_s: float | None = None
    lost_to_direct: int | None = None
    to_relay_s: float | None = None
    lost_to_relay: int | None = None
    move_timings: dict[str, float] = field(default_factory=dict)
    tcp_direct_mbps: float | None = None
    tcp_relay_mbps: float | None = None
    #: TCP retransmissions of each run (iperf3's sender), and the UDP datagrams dropped for
    #: a full receive buffer in B's namespace meanwhile (coturn's sockets: nstat's
    #: UdpRcvbufErrors)
    tcp_direct_retransmits: int | None = None
    tcp_relay_retransmits: int | None = None
    relay_rcvbuf_drops: int | None = None
    #: CPU of each run in cores (CPU seconds per second of iperf3): A's and E's nattunnel,
    #: coturn (the relay run), and the whole machine busy (from /proc/stat)
    cpu_direct: dict[str, float] = field(default_factory=dict)
    cpu_relay: dict[str, float] = field(default_factory=dict)
    idle_s: float = 0.0
    mapping_timeout: float = 0.0
    keepalive: float = 0.0
    idle_kept: bool | None = None
    idle_note: str = ""
    notes: list[str] = field(default_factory=list)


def _wait(what: str, check: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)
    return time.monotonic() - start


def _ping(lab: NatLab, ns: str, dest: str, wait: str = "1") -> bool:
    cp = lab.exec(ns, "ping", "-c", "1", "-W", wait, dest, check=False)
    return cp.returncode == 0


def _block(lab: NatLab, host: str, on: bool) -> None:
    """Drop UDP port 4500 between NAT1's inside and ``host`` (the direct path only)."""
    ns = lab.routers["r1"].ns
    if on:
        lab.exec(ns, "nft", "-f", "-", input=(
            "table inet ntblock {\n chain blk {\n  type filter hook forward priority -5; "
            f"policy accept;\n  ip daddr {host} udp dport 4500 drop\n"
            f"  ip saddr {host} udp sport 4500 drop\n }}\n}}\n"))
    else:
        lab.exec(ns, "nft", "delete", "table", "inet", "ntblock", check=False)


class _Pinger:
    """ping at 10 pps from A; ``lost()`` stops it and counts the missing sequence numbers
    between the first and the last answer."""

    def __init__(self, lab: NatLab, out: Path) -> None:
        self.lab, self.out, self._f = lab, out, out.open("w")
        self.proc = lab.popen("a", "ping", "-i", "0.1", "-W", "1", E_IN, stdout=self._f,
                              stderr=subprocess.DEVNULL)

    def lost(self) -> int:
        self.lab.stop(self.proc)
        self._f.close()
        seqs = sorted({int(w.split("=")[1]) for line in self.out.read_text().splitlines()
                       for w in line.split() if w.startswith("icmp_seq=")})
        return (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else -1


class _Run:
    """The lab, its relays and the run's directory."""

    def __init__(self, d: Path, mapping_timeout: float) -> None:
        self.d = d
        write_psk_file(d / "k.psk", b"correct horse battery staple", force=True)
        write_psk_file(d / "turn.pw", b"secret", force=True)
        self.lab = NatLab("two", PORT_RESTRICTED_CONE, udp_timeout=mapping_timeout)
        self.b, self.e = self.lab.addr["b"], self.lab.addr["e"]
        self.servers: list[Coturn] = []
        # 3478: any relay port (A's own allocations); 3480/3482 and 3484/3486: one port
        # each, two sets used in turn (a relayed pair must know both relayed addresses)
        for port, lo, hi in ((3478, 50100, 50200), (3480, 50000, 50000),
                             (3482, 50001, 50001), (3484, 50002, 50002),
                             (3486, 50003, 50003)):
            self.servers.append(Coturn(self.b, None, d, port=port, alt_port=port + 1,
                                       lab=self.lab, ns="b",
                                       relay=Relay(min_port=lo, max_port=hi)).start())

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        self.lab.close()

    def pair(self, left: Path, right: Path, right_ns: str = "e",
             options: dict[str, Any] | None = None) -> tuple[LabNode, LabNode]:
        r = LabNode(self.lab, right_ns, right, {})
        a = LabNode(self.lab, "a", left, options or {})
        return a, r


def _first(lab: NatLab, start: float, a: LabNode, r: LabNode, ready: list[float]) -> float:
    """Ping A -> E's inner address until one is answered: the seconds since ``start``; the
    seconds since both nodes were running go to ``ready``."""
    up: float | None = None
    while True:
        if up is None and a.ready() and r.ready():
            up = time.monotonic()
        if _ping(lab, "a", E_IN, "0.2"):
            now = time.monotonic()
            ready.append(now - (up if up is not None else now))
            return now - start
        if time.monotonic() - start > 30:
            raise RuntimeError("no packet through the tunnel within 30 s")


def _first_packets(run: _Run, fig: TraversalFigures) -> None:
    lab, d, b, e = run.lab, run.d, run.b, run.e
    for i in range(fig.rounds):
        lab.set_nat("r1", PORT_RESTRICTED_CONE)
        left = write_config(d, "a", "e", A_IN, E_IN, endpoint=f"{e}:4500", initiate=True)
        right = write_config(d, "e", "a", E_IN, A_IN, endpoint=None, initiate=False)
        start = time.monotonic()
        a, r = run.pair(left, right)
        try:
            fig.first_packet_direct.append(_first(lab, start, a, r, fig.ready_direct))
        finally:
            a.stop()
            r.stop()
        lab.set_nat("r1", SYMMETRIC)
        lab.set_nat("r2", SYMMETRIC)
        (ls, lr), (rs, rr) = ((3480, 50000), (3482, 50001)) if i % 2 == 0 else (
            (3484, 50002), (3486, 50003))
        left = write_config(d, "a", "c", A_IN, E_IN, endpoint=f"{b}:{rr}", initiate=True,
                            relay="always", turn=f"{b}:{ls}")
        right = write_config(d, "c", "a", E_IN, A_IN, endpoint=f"{b}:{lr}", initiate=False,
                             relay="always", turn=f"{b}:{rs}")
        start = time.monotonic()
        a, r = run.pair(left, right, "c")
        try:
            fig.first_packet_relay.append(_first(lab, start, a, r, fig.ready_relay))
        finally:
            a.stop()
            r.stop()
    lab.set_nat("r1", PORT_RESTRICTED_CONE)


def _mediated_configs(d: Path, b: str) -> tuple[Path, Path, Path]:
    """The mediation server (on B) and the two mediated peers' configurations."""
    server = d / "mediator.toml"
    lines = ['listen = ["0.0.0.0:4500"]', "mediation_server = true", "[interface]",
             'name = "nt0"', 'addresses = ["198.18.120.2/24"]']
    for name in ("a", "c"):
        lines += ["[[peer]]", f'name = "{name}"', "mediation = true", 'auth = "psk"',
                  'psk_file = "k.psk"', 'local_id = "mediator"', f'remote_id = "host{name}"']
    server.write_text("\n".join(lines) + "\n")
    out = []
    for me, other, mine, theirs, initiate in (("a", "c", A_IN, E_IN, True),
                                              ("c", "a", E_IN, A_IN, False)):
        path = d / f"{me}-mediated.toml"
        path.write_text("\n".join([
            'listen = ["0.0.0.0:4500"]', "[interface]", 'name = "nt0"',
            f'addresses = ["{mine}/24"]', "[[peer]]", 'name = "mediator"', "mediation = true",
            f'endpoint = "{b}"', 'auth = "psk"', 'psk_file = "k.psk"', f'local_id = "host{me}"',
            'remote_id = "mediator"', "[[peer]]", f'name = "{other}"',
            'mediated_by = "mediator"', 'auth = "psk"', 'psk_file = "k.psk"',
            f'local_id = "host{me}"', f'remote_id = "host{other}"',
            f'allowed_ips = ["{theirs}/32"]', f'local_ts = ["{mine}/32"]',
            f"initiate = {str(initiate).lower()}"]) + "\n")
        out.append(path)
    return server, out[0], out[1]


def _registered(node: LabNode) -> bool:
    return bool((node.status().get("mediation") or {}).get("up"))


def _mediated(run: _Run, fig: TraversalFigures) -> None:
    """The first packet over the path the checks chose: C registered first (the server
    on B runs throughout), then A starts and asks for C."""
    lab, d = run.lab, run.d
    lab.set_nat("r1", PORT_RESTRICTED_CONE)
    lab.set_nat("r2", PORT_RESTRICTED_CONE)
    server_cfg, a_cfg, c_cfg = _mediated_configs(d, run.b)
    delays = [start_delay(lab, h.role, h.addr.split("/")[0], fig.delay_ms / 1000)
              for h in lab.topology.hosts if h.role in ("a", "b", "c") and fig.delay_ms]
    try:
        server = LabNode(lab, "b", server_cfg, {})
    except BaseException:
        for proc in delays:
            lab.stop(proc)
        raise
    try:
        server.status()
        for _ in range(fig.rounds):
            c = LabNode(lab, "c", c_cfg, {})
            try:
                _wait("C's registration", partial(_registered, c), 15)
                start = time.monotonic()
                a = LabNode(lab, "a", a_cfg, {})
                try:
                    fig.first_packet_mediated.append(
                        _first(lab, start, a, c, fig.ready_mediated))
                finally:
                    a.stop()
            finally:
                c.stop()
    finally:
        server.stop()
        for proc in delays:
            lab.stop(proc)


def _moves(run: _Run, fig: TraversalFigures) -> None:
    lab, d, b, e = run.lab, run.d, run.b, run.e
    fig.move_timings = dict(MOVE_TIMINGS)
    _block(lab, e, True)
    left = write_config(d, "a", "e", A_IN, E_IN, endpoint=f"{e}:4500", initiate=True,
                        turn=f"{b}:3478")
    right = write_config(d, "e", "a", E_IN, A_IN, endpoint=None, initiate=False)
    a, r = run.pair(left, right, options={"paths": MOVE_TIMINGS})

    def kind() -> str:
        return str(a.peer()["path"].get("kind"))

    try:
        _wait("the tunnel through the relay", lambda: _ping(lab, "a", E_IN), 30)
        pinger = _Pinger(lab, d / "ping-direct.out")
        time.sleep(1.0)
        _block(lab, e, False)
        fig.to_direct_s = _wait("the move to the direct path", lambda: kind() == "direct", 30)
        time.sleep(1.0)
        fig.lost_to_direct = pinger.lost()
        pinger = _Pinger(lab, d / "ping-relay.out")
        time.sleep(1.0)
        _block(lab, e, True)
        fig.to_relay_s = _wait("the move back to the relay", lambda: kind() == "relay", 30)
        _wait("the tunnel through the relay again", lambda: _ping(lab, "a", E_IN), 15)
        time.sleep(1.0)
        fig.lost_to_relay = pinger.lost()
    finally:
        a.stop()
        r.stop()
        _block(lab, e, False)


def _rcvbuf_errors(run: _Run, ns: str) -> int:
    """The namespace's UDP datagrams dropped for a full receive buffer (nstat -a)."""
    cp = run.lab.exec(ns, "nstat", "-a", "-z", "-j", check=False)
    try:
        kernel: dict[str, int] = json.loads(cp.stdout)["kernel"]
    except (ValueError, KeyError):
        return 0
    return int(kernel.get("UdpRcvbufErrors", 0)) + int(kernel.get("Udp6RcvbufErrors", 0))


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) of each process so far, and of the machine (busy:
    everything but idle and iowait, over all cores) under "machine"."""
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, ValueError, IndexError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(f[11]) + int(f[12])) / tck
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in f]
    out["machine"] = (sum(ticks) - ticks[3] - ticks[4]) / tck
    return out


def _coturn_pid(run: _Run) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(run.servers[0].pidfile.read_text())
    return None


def _iperf(run: _Run, seconds: float) -> tuple[float, int]:
    """iperf3 TCP A -> E: Mbit/s received, and the sender's retransmissions."""
    lab = run.lab
    srv = lab.popen("e", "iperf3", "-s", "-1", "-B", E_IN, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        cp = lab.exec("a", "iperf3", "-c", E_IN, "-t", f"{seconds:g}", "-J",
                      timeout=seconds + 30)
    finally:
        lab.stop(srv)
    end = json.loads(cp.stdout)["end"]
    bps: float = end["sum_received"]["bits_per_second"]
    return bps / 1e6, int(end["sum_sent"].get("retransmits", 0))


def _throughput(run: _Run, fig: TraversalFigures, seconds: float) -> None:
    lab, d, b, e = run.lab, run.d, run.b, run.e
    for relay in ("never", "always"):
        left = write_config(d, "a", "e", A_IN, E_IN, endpoint=f"{e}:4500", initiate=True,
                            relay=relay, turn=f"{b}:3478")
        right = write_config(d, "e", "a", E_IN, A_IN, endpoint=None, initiate=False)
        a, r = run.pair(left, right)
        try:
            _wait("the tunnel", lambda: _ping(lab, "a", E_IN), 30)
            drops = _rcvbuf_errors(run, "b")
            pids = {"A": a.proc.pid, "E": r.proc.pid}
            if relay == "always" and (pid := _coturn_pid(run)) is not None:
                pids["coturn"] = pid
            cpu0, t0 = _cpu_seconds(pids), time.monotonic()
            mbps, retransmits = _iperf(run, seconds)
            cpu1, t1 = _cpu_seconds(pids), time.monotonic()
            drops = _rcvbuf_errors(run, "b") - drops
            cpu = {k: round((cpu1[k] - cpu0[k]) / (t1 - t0), 2) for k in cpu1 if k in cpu0}
        finally:
            a.stop()
            r.stop()
        if relay == "never":
            fig.tcp_direct_mbps, fig.tcp_direct_retransmits = mbps, retransmits
            fig.cpu_direct = cpu
        else:
            fig.tcp_relay_mbps, fig.tcp_relay_retransmits = mbps, retransmits
            fig.relay_rcvbuf_drops, fig.cpu_relay = drops, cpu


def _idle(run: _Run, fig: TraversalFigures) -> None:
    lab, d, e = run.lab, run.d, run.e
    left = write_config(d, "a", "e", A_IN, E_IN, endpoint=f"{e}:4500", initiate=True,
                        keepalive=fig.keepalive)
    right = write_config(d, "e", "a", E_IN, A_IN, endpoint=None, initiate=False)
    a, r = run.pair(left, right)
    try:
        _wait("the tunnel", lambda: _ping(lab, "a", E_IN), 30)
        before = [(s["spi_i"], s["spi_r"]) for s in a.peer()["ike_sas"]]
        time.sleep(fig.idle_s)
        passed = _ping(lab, "e", A_IN, "2") and _ping(lab, "a", E_IN, "2")
        after = [(s["spi_i"], s["spi_r"]) for s in a.peer()["ike_sas"]]
        fig.idle_kept = passed and after == before
        fig.idle_note = (f"ping after the idle time {'passed' if passed else 'FAILED'}; "
                         f"IKE SA {'the same' if after == before else 'NOT the same'}")
    finally:
        a.stop()
        r.stop()


#: the parts of a run, in their order (``--only``)
PARTS = ("first", "mediated", "moves", "throughput", "idle")


def run_traversal(seconds: float = 5.0, idle: float = 600.0, mapping_timeout: float = 30.0,
                  keepalive: float = 20.0, rounds: int = 5,
                  parts: tuple[str, ...] = PARTS, delay_ms: float = 0.0) -> TraversalFigures:
    """The run (root), in one lab: ``parts`` of PARTS; ``delay_ms`` of one-way delay in
    the mediated part."""
    fig = TraversalFigures(rounds, idle_s=idle, mapping_timeout=mapping_timeout,
                           keepalive=keepalive, delay_ms=delay_ms)
    with tempfile.TemporaryDirectory(prefix="nattunnel-bench-traversal-") as tmp:
        run = _Run(Path(tmp), mapping_timeout)
        try:
            if "first" in parts:
                _first_packets(run, fig)
            if "mediated" in parts:
                _mediated(run, fig)
            if "moves" in parts:
                _moves(run, fig)
            if "throughput" in parts:
                _throughput(run, fig, seconds)
            if idle > 0 and "idle" in parts:
                _idle(run, fig)
            else:
                fig.idle_s = 0.0
        finally:
            run.close()
    return fig


# --------------------------------------------------------------------------- report


def _stat(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"median {statistics.median(values):.2f} s, max {max(values):.2f} s "
            f"({len(values)} runs)")


def _rtx(retransmits: int | None) -> str:
    return f", {retransmits} TCP retransmissions" if retransmits is not None else ""


def report(fig: TraversalFigures) -> str:
    """The figures as text: one line (or two) per part that ran."""
    lines: list[str] = []
    for title, values, ready in (("first packet, direct", fig.first_packet_direct,
                                  fig.ready_direct),
                                 ("first packet, through the relay", fig.first_packet_relay,
                                  fig.ready_relay),
                                 ("first packet, mediated (direct)",
                                  fig.first_packet_mediated, fig.ready_mediated)):
        if values:
            lines += [f"{title:<35}{_stat(values)}",
                      f"{'  from both nodes running':<35}{_stat(ready)}"]
    if fig.first_packet_mediated:
        v = sorted(fig.first_packet_mediated)
        p95 = v[math.ceil(0.95 * len(v)) - 1]
        lines.append(f"{'  p50 / p95':<35}{statistics.median(v):.2f} s / {p95:.2f} s, "
                     f"one-way delay {fig.delay_ms:g} ms (A, B, C's UDP)")
    if fig.to_direct_s is not None:
        t = fig.move_timings
        lines += [f"{'relay -> direct (path opened)':<35}{fig.to_direct_s:.2f} s, "
                  f"{fig.lost_to_direct} pings lost at 10 pps",
                  f"{'direct -> relay (path died)':<35}{fig.to_relay_s or 0:.2f} s, "
                  f"{fig.lost_to_relay} pings lost at 10 pps",
                  f"{'  mover timings':<35}retry_direct {t.get('retry_direct', 0):g} s, "
                  f"probe_interval {t.get('probe_interval', 0):g} s, "
                  f"dead_after {t.get('dead_after', 0):g} s"]
    if fig.tcp_direct_mbps is not None and fig.tcp_relay_mbps is not None:
        ratio = fig.tcp_relay_mbps / fig.tcp_direct_mbps if fig.tcp_direct_mbps else 0.0
        lines += [f"{'TCP direct':<35}{fig.tcp_direct_mbps:.0f} Mbit/s"
                  + _rtx(fig.tcp_direct_retransmits),
                  f"{'TCP through the relay':<35}{fig.tcp_relay_mbps:.0f} Mbit/s "
                  f"({ratio:.0%} of direct)" + _rtx(fig.tcp_relay_retransmits)]
        if fig.relay_rcvbuf_drops is not None:
            lines.append(f"{'  UDP receive-buffer drops on B':<35}{fig.relay_rcvbuf_drops} "
                         "(coturn's sockets, during the relay run)")
        for title, cpu, mbps in (("  CPU, direct", fig.cpu_direct, fig.tcp_direct_mbps),
                                 ("  CPU, through the relay", fig.cpu_relay,
                                  fig.tcp_relay_mbps)):
            if cpu:
                procs = {k: v for k, v in cpu.items() if k != "machine"}
                per = sum(procs.values()) / (mbps / 1000) if mbps else 0.0
                lines.append(f"{title:<35}" + ", ".join(f"{k} {v:.2f}" for k, v in procs.items())
                             + f" cores ({per:.2f} per Gbit/s); machine busy "
                             f"{cpu.get('machine', 0):.2f} of {os.cpu_count()}")
    if fig.idle_s > 0:
        lines.append(f"idle {fig.idle_s:g} s, mapping timeout {fig.mapping_timeout:g} s, "
                     f"keepalive {fig.keepalive:g} s: "
                     f"{'kept' if fig.idle_kept else 'NOT kept'} ({fig.idle_note})")
    return "\n".join(lines + fig.notes) + "\n"


def traversal_main(seconds: float, idle: float, mapping_timeout: float, keepalive: float,
                   rounds: int, as_json: bool, parts: tuple[str, ...] = PARTS,
                   delay_ms: float = 0.0) -> int:
    problems = lab_problems() + coturn_problems()
    if problems:
        print(f"nattunnel bench traversal: {problems[0]}", file=sys.stderr)
        return 1
    fig = run_traversal(seconds, idle, mapping_timeout, keepalive, rounds, parts, delay_ms)
    print(json.dumps(asdict(fig), indent=2) if as_json else report(fig), end=""
          if not as_json else "\n")
    return 0 if fig.idle_kept is not False else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "node":
        asyncio.run(_node(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit("usage: python3 -m nattunnel.bench.traversal node CONFIG OPTIONS STATUS")
