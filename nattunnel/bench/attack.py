"""``nattunnel bench attack`` (root): an established nattunnel tunnel under floods of junk.

Builds the NAT lab (``nattunnel.lab.netns``) with host A behind the NAT, B public, C behind the
NAT (a second, legitimate IKE peer of B) and E on B's segment (the attacker). A and B run
``nattunnel up`` with IKEv2 (PSK, ``nattunnel.lab.tunnels``); the legitimate flow is iperf3
A -> B through the tunnel (TCP by default). One after another, in the same run:

- the baseline: the flow alone, before the first attack and again after each one (the
  machine's load drifts: each attack is compared with the mean of the baselines just before
  and just after it);
- for each attack: the flow while a separate attacker process in E's namespace sends one kind
  of junk to B's port 4500 at ``rate`` datagrams per second (``0``: as fast as it can) -- see
  ``ATTACKS``; the attacker is bounded in count and time and stops by itself;
- the IKE_SA_INIT flood: ``ike_rate`` requests per second to B's port 500 built with the
  project's encoder, each with a fresh SPI, and every COOKIE notify answered (an attacker
  that does not spoof its address); after the flow's run, with the flood still going, C is
  started and the time until its IKE SA is established is measured (also measured without a
  flood in the first baseline phase).

For each: the flow's throughput and its ratio to its two neighbouring baselines, B's CPU time,
the peak RSS of B's process (sampled every 0.1 s), B's drop counters by reason (including the
kernel's receive-buffer drops, ``kernel_rcvbuf``) and IKE counters, as differences over the
phase, and what the attacker achieved (datagrams sent per second, its CPU time).

Why the namespace lab and not loopback: the attacker, the two endpoints and iperf3 are
separate processes on separate network stacks, B's kernel does the work a real host's would
(IP reassembly of oversized datagrams, socket queues, ICMP for the closed-port control), and
the attacker's traffic does not share a socket or a loopback shortcut with the flow. They still
share this machine's cores: the ``control`` row (the same junk to a closed port, which
nattunnel never reads) shows what the attacker's own sending costs the flow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..lab.netns import Lab, lab_problems
from ..lab.tunnels import (
    INNER,
    PKG_ROOT,
    Tunnels,
    start_ike_node,
    start_ike_tunnels,
    wait_ike_up,
)
from .crypto import machine_info

#: the attacks in the order they run, with what the attacker sends
ATTACKS: dict[str, str] = {
    "control": "random 1400-octet datagrams to a closed port of B (4501): what the "
               "attacker's sending costs by itself (nattunnel reads none of it)",
    "replay": "genuine ESP packets of A to B, captured and sent again",
    "truncated": "ESP headers with B's inbound SPI, cut to 9..31 octets",
    "forged": "B's inbound SPI, random sequence numbers and 1400 octets of random "
              "ciphertext (each one a failed AEAD verification)",
    "random": "1400 random octets (unknown SPIs)",
    "oversized": "65,000 random octets (IP fragments reassembled by B's kernel)",
    "ike-junk": "non-ESP marker + garbage, + IKE headers with random SPIs (IKE_AUTH), "
                "+ IKE_SA_INIT headers over garbage",
    "keepalive": "NAT keepalives (one 0xFF octet)",
    "ike-init": "IKE_SA_INIT requests to B's port 500, fresh SPI each, COOKIE notifies "
                "answered (ike_rate per second)",
}
BASELINE = "baseline"
#: the port each attack targets on B
PORT = {name: 4500 for name in ATTACKS} | {"control": 4501, "ike-init": 500}
DEFAULT_RATE = 50_000
DEFAULT_IKE_RATE = 2_000
#: the targets (docs/benchmarks.md, "Under attack")
TARGET_RATIO = 0.90
TARGET_NEW_PEER_SECONDS = 2.0
#: the documented memory bound: B's peak RSS under any attack at most this much above its
#: peak in the baseline phase
RSS_GROWTH_BOUND_MB = 64.0
#: how long C may take to establish before we give up
NEW_PEER_TIMEOUT = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
OK = "ok"


@dataclass
class AttackResult:
    attack: str
    description: str
    port: int | None
    #: datagrams per second asked of the attacker (0: as fast as it can), None: no attacker
    rate_target: int | None
    mbps: float | None = None
    #: the mean of the baseline runs just before and just after this one, and the ratio
    baseline_mbps: float | None = None
    ratio_to_baseline: float | None = None
    #: ratio_to_baseline over the control row's: nattunnel's own share of the loss
    ratio_to_control: float | None = None
    #: datagrams the attacker sent (cookie answers included) and per second
    sent: int | None = None
    rate_sent: float | None = None
    attacker_cpu_seconds: float | None = None
    #: B's CPU time (user + system) and its peak RSS during the phase
    endpoint_cpu_seconds: float | None = None
    rss_peak_mb: float | None = None
    #: B's drop counters by reason, differences over the phase (kernel_rcvbuf included)
    drops: dict[str, int] = field(default_factory=dict)
    #: B's IKE counters, differences over the phase; what the IKE attacker saw
    ike: dict[str, int] = field(default_factory=dict)
    attacker: dict[str, Any] = field(default_factory=dict)
    #: seconds from C's endpoint listening to its IKE SA established (baseline, ike-init)
    new_peer_seconds: float | None = None
    new_peer_within_target: bool | None = None
    status: str = OK


# --------------------------------------------------------------------------- the attacker


def _esp_pool(kind: str, esp: list[bytes], n: int = 512) -> list[bytes]:
    rnd = os.urandom
    if kind == "replay":
        return esp
    spi = esp[0][:4]
    if kind == "truncated":
        return [p[: 9 + i % 23] for i, p in zip(range(n), esp * (n // len(esp) + 1),
                                                strict=False)]
    if kind == "forged":
        return [spi + rnd(4) + rnd(1392) for _ in range(n)]
    return []


def _nonzero(data: bytes) -> bytes:
    """Random octets that are neither a non-ESP marker nor a keepalive."""
    return (b"\x80" + data[1:]) if data[:4] == bytes(4) or data == b"\xff" else data


def junk_pool(kind: str, esp: list[bytes], n: int = 512) -> list[bytes]:
    from ..constants import ExchangeType
    from ..ike.message import Header

    rnd = os.urandom
    if kind in ("replay", "truncated", "forged"):
        return _esp_pool(kind, esp, n)
    if kind in ("random", "control"):
        return [_nonzero(rnd(1400)) for _ in range(n)]
    if kind == "oversized":
        return [_nonzero(rnd(65000)) for _ in range(8)]
    if kind == "keepalive":
        return [b"\xff"]
    if kind == "ike-junk":
        out = []
        for i in range(n):
            body = rnd(60 + i % 240)
            if i % 3 == 0:
                out.append(bytes(4) + body)
            else:
                exch = ExchangeType.IKE_AUTH if i % 3 == 1 else ExchangeType.IKE_SA_INIT
                spi_r = rnd(8) if exch == ExchangeType.IKE_AUTH else bytes(8)
                hdr = Header.make(exch, rnd(8), spi_r, message_id=1 if i % 3 == 1 else 0)
                out.append(bytes(4) + hdr.encode(46, 28 + len(body)) + body)
        return out
    raise ValueError(f"unknown attack {kind!r}")


class InitFlood:
    """IKE_SA_INIT requests made with the project's own encoder: one template request (a
    real initiator's, ``IkeSa.start``) re-encoded with a fresh SPI each time, and again with
    the COOKIE notify in front when the responder asks for one (RFC 7296 section 2.6)."""

    def __init__(self, local: tuple[str, int], remote: tuple[str, int]) -> None:
        from ..ike.config import Identity, IkeConfig
        from ..ike.message import decode_message
        from ..ike.sa import IkeSa

        cfg = IkeConfig("attacker", Identity.parse("attacker"), Identity.parse("hostb"),
                        auth="psk", psk=os.urandom(32))
        sa = IkeSa(cfg, initiator=True, local=local, remote=remote, now=0.0)
        sa.start(0.0)
        template = sa.datagrams_to_send()[0].data
        self.payloads = decode_message(template).payloads
        self.stats = Counter[str]()

    def fresh(self) -> bytes:
        from ..constants import ExchangeType
        from ..ike.message import Header, encode_message

        return encode_message(Header.make(ExchangeType.IKE_SA_INIT, os.urandom(8)),
                              self.payloads)

    def answer(self, data: bytes) -> bytes | None:
        """The request again with the cookie, for a COOKIE response; None otherwise."""
        from ..constants import ExchangeType, NotifyType
        from ..ike.message import Header, IkeDecodeError, Notify, decode_message, encode_message

        try:
            msg = decode_message(data)
        except IkeDecodeError:
            self.stats["undecodable_responses"] += 1
            return None
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is None:
            if msg.notify(NotifyType.NO_PROPOSAL_CHOSEN) is not None:
                self.stats["refused"] += 1
            else:
                self.stats["answered"] += 1  # a full IKE_SA_INIT response: B did a DH
            return None
        self.stats["cookies_received"] += 1
        hdr = Header.make(ExchangeType.IKE_SA_INIT, msg.header.spi_i)
        return encode_message(hdr, [Notify(NotifyType.COOKIE, cookie.data), *self.payloads])


class _Batches:
    """sendmmsg(2) through ctypes: the pool's datagrams as ready-made ``mmsghdr`` arrays of
    up to BATCH, so that one system call sends a burst and the attacker's own CPU time stays
    small next to what its datagrams cost the receiver (each still a datagram of its own on
    the wire: no GSO, no aggregation at B)."""

    BATCH = 64

    def __init__(self, sock: socket.socket, dest: tuple[str, int], pool: list[bytes]) -> None:
        import ctypes
        import ctypes.util

        class Iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        class Msghdr(ctypes.Structure):
            _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                        ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
                        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                        ("flags", ctypes.c_int)]

        class Mmsghdr(ctypes.Structure):
            _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]

        self._ctypes = ctypes
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = sock.fileno()
        addr = (socket.AF_INET.to_bytes(2, sys.byteorder) + dest[1].to_bytes(2, "big")
                + socket.inet_aton(dest[0]) + bytes(8))
        self._name = ctypes.create_string_buffer(addr, len(addr))
        self._keep: list[Any] = []
        self.arrays: list[Any] = []
        for start in range(0, len(pool), self.BATCH):
            chunk = pool[start : start + self.BATCH]
            arr = (Mmsghdr * len(chunk))()
            iovs = (Iovec * len(chunk))()
            for k, data in enumerate(chunk):
                buf = ctypes.create_string_buffer(data, len(data))
                self._keep.append(buf)
                iovs[k].base = ctypes.addressof(buf)
                iovs[k].len = len(data)
                arr[k].hdr.name = ctypes.addressof(self._name)
                arr[k].hdr.namelen = len(addr)
                arr[k].hdr.iov = ctypes.pointer(iovs[k])
                arr[k].hdr.iovlen = 1
            self._keep.append(iovs)
            self.arrays.append((arr, len(chunk)))
        self._next = 0

    def send(self, n: int) -> int:
        """Send up to ``n`` (at most one array) datagrams; how many went, -1 if none could."""
        arr, size = self.arrays[self._next]
        self._next = (self._next + 1) % len(self.arrays)
        sent: int = self._libc.sendmmsg(self._fd, arr, min(n, size), 0x40)  # MSG_DONTWAIT
        return sent


def attacker_main(argv: Sequence[str] | None = None) -> int:
    """The attacker process: ``python -c 'from nattunnel.bench.attack import attacker_main;
    attacker_main()' JSON``; JSON has kind, host, port, rate (0: full speed), seconds,
    count, esp (hex packets), report (a file for the JSON result). Stops after ``seconds``
    or ``count`` datagrams, or on SIGTERM."""
    cfg = json.loads((argv or sys.argv[1:])[0])
    kind, dest = cfg["kind"], (cfg["host"], int(cfg["port"]))
    rate, seconds, count = int(cfg["rate"]), float(cfg["seconds"]), int(cfg["count"])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("0.0.0.0", 0))
    s.setblocking(False)
    flood: InitFlood | None = None
    pool: list[bytes] = []
    if kind == "ike-init":
        s.connect(dest)
        flood = InitFlood((s.getsockname()[0], s.getsockname()[1]), dest)
        s = _rebind_unconnected(s)
    else:
        pool = junk_pool(kind, [bytes.fromhex(h) for h in cfg.get("esp", [])])
    sendto, npool = s.sendto, len(pool)
    batches = _Batches(s, dest, pool) if pool and cfg.get("mmsg", True) else None
    sent = blocked = resends = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    end = t0 + seconds
    i = 0
    while sent < count and not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        burst = 64
        if rate:
            burst = min(int((now - t0) * rate) + 1 - (sent + blocked), 64)
            if burst <= 0:
                time.sleep(0.0005)
                continue
        burst = min(burst, count - sent)  # never past the count
        if batches is not None:
            n = batches.send(burst)
            if n > 0:
                sent += n
            else:
                blocked += 1
                select.select([], [s], [], 0.002)
            continue
        for _ in range(burst):
            data = flood.fresh() if flood is not None else pool[i % npool]
            i += 1
            try:
                sendto(data, dest)
                sent += 1
            except (BlockingIOError, OSError):
                blocked += 1
                select.select([], [s], [], 0.002)
                break
        if flood is not None:
            for _ in range(256):  # every COOKIE answered at once
                try:
                    reply = s.recv(65535)
                except (BlockingIOError, OSError):
                    break
                again = flood.answer(reply)
                if again is not None:
                    with contextlib.suppress(OSError):
                        sendto(again, dest)
                        resends += 1
    elapsed = time.monotonic() - t0
    report = {"kind": kind, "sent": sent + resends, "blocked": blocked, "elapsed": elapsed,
              "cpu_seconds": time.process_time() - cpu0, "cookie_resends": resends,
              **(dict(flood.stats) if flood is not None else {})}
    Path(cfg["report"]).write_text(json.dumps(report))
    return 0


def _rebind_unconnected(s: socket.socket) -> socket.socket:
    """A new unconnected socket on the same local port (``connect`` was only to learn the
    local address for the template's NAT detection hashes)."""
    port = s.getsockname()[1]
    s.close()
    n = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    n.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    n.bind(("0.0.0.0", port))
    n.setblocking(False)
    return n


# --------------------------------------------------------------------------- measuring

_CAPTURE = r"""
import socket, struct, sys, time
want, seconds, dst = int(sys.argv[1]), float(sys.argv[2]), socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind(("eth0", 0))
s.settimeout(0.2)
print("ready", flush=True)
end, got = time.monotonic() + seconds, 0
while got < want and time.monotonic() < end:
    try:
        pkt = s.recv(65535)
    except socket.timeout:
        continue
    if len(pkt) < 28 or pkt[9] != 17 or pkt[16:20] != dst:
        continue
    ihl = (pkt[0] & 15) * 4
    if struct.unpack_from("!H", pkt, ihl + 2)[0] != 4500:
        continue
    payload = pkt[ihl + 8 : struct.unpack_from("!H", pkt, 2)[0]]
    if len(payload) >= 40 and payload[:4] != bytes(4):
        print(payload.hex(), flush=True)
        got += 1
"""


def capture_esp(lab: Lab, want: int = 64) -> list[str]:
    """Genuine ESP-in-UDP payloads arriving at B on port 4500 (from A, while A pings B
    through the tunnel), as hex."""
    proc = lab.popen("b", sys.executable, "-u", "-c", _CAPTURE, want, 10, lab.addr["b"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("ESP capture did not start")
        lab.exec("a", "ping", "-q", "-c", want + 16, "-i", "0.01", "-W", 1, INNER["b"],
                 check=False, timeout=20)
        out, _ = proc.communicate(timeout=15)
    finally:
        lab.stop(proc)
    packets = [x for x in out.split() if x]
    if not packets:
        raise RuntimeError("no ESP captured from A to B")
    return packets


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class RssPeak:
    """The peak VmRSS of a process, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval, self.peak_kb = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                    break

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssPeak:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._sample()


def flat_drops(stats: dict[str, Any]) -> Counter[str]:
    """Every drop counter of one stats snapshot, by reason: the tunnel's, the endpoint's
    (kernel_rcvbuf among them) and each inbound SA's."""
    c: Counter[str] = Counter()
    c.update(stats.get("drops") or {})
    c.update(stats.get("endpoint_drops") or {})
    for peer in (stats.get("peers") or {}).values():
        for sa in (peer.get("sa_drops") or {}).values():
            c.update(sa)
    return c


def ike_counters(stats: dict[str, Any]) -> Counter[str]:
    """The IKE manager's numeric counters (whatever it counts), and its IKE SAs by state."""
    c: Counter[str] = Counter()
    ike = stats.get("ike") or {}
    for k, v in ike.items():
        if isinstance(v, int) and not isinstance(v, bool):
            c[k] = v
    for sa in ike.get("ike_sas") or ():
        c[f"ike_sas_{sa.get('state', '?')}"] += 1
    errors = stats.get("errors") or {}
    c.update({f"errors_{k}": v for k, v in errors.items()})
    return c


def _delta(after: Counter[str], before: Counter[str]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: after[k] - before[k] for k in sorted(keys) if after[k] != before[k]}


def _log_time(line: str) -> float | None:
    m = _TS.match(line)
    if m is None:
        return None
    return datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def new_peer_seconds(t: Tunnels, timeout: float = NEW_PEER_TIMEOUT) -> float | None:
    """(Re)start C, a legitimate IKE peer of B: seconds from its endpoint listening (its
    first IKE_SA_INIT goes out at once) to its IKE SA established, from the timestamps in
    its log; None if not within ``timeout``. C is stopped again."""
    log = t.dir / "c.log"
    start = log.stat().st_size if log.exists() else 0
    node = start_ike_node(t, "c", log_level="info", timeout=15.0)
    try:
        deadline = time.monotonic() + timeout
        listening = established = None
        while time.monotonic() < deadline:
            text = node.log()[start:]
            for line in text.splitlines():
                if listening is None and "listening on" in line:
                    listening = _log_time(line)
                if established is None and "IKE SA established" in line:
                    established = _log_time(line)
            if listening is not None and established is not None:
                return max(0.0, established - listening)
            time.sleep(0.05)
        return None
    finally:
        t.lab.stop(node.proc, timeout=5.0)


def _iperf_b(lab: Lab, seconds: float, udp: bool) -> float:
    from .netns import iperf

    return iperf(lab, "b", "a", INNER["b"], seconds, udp)


def _start_attacker(lab: Lab, kind: str, rate: int, seconds: float, esp: list[str],
                    report: Path) -> subprocess.Popen[Any]:
    count = int(rate * seconds) if rate else 50_000_000
    cfg = {"kind": kind, "host": lab.addr["b"], "port": PORT[kind], "rate": rate,
           "seconds": seconds, "count": count, "esp": esp, "report": str(report)}
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT))
    return lab.popen("e", sys.executable, "-c",
                     "from nattunnel.bench.attack import attacker_main; attacker_main()",
                     json.dumps(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     env=env)


def _stop_attacker(lab: Lab, proc: subprocess.Popen[Any], report: Path) -> dict[str, Any]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    err = ""
    try:
        _, err_b = proc.communicate(timeout=10)
        err = err_b.decode(errors="replace") if isinstance(err_b, bytes) else str(err_b or "")
    except subprocess.TimeoutExpired:
        pass
    lab.stop(proc)
    try:
        doc: dict[str, Any] = json.loads(report.read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"the attacker gave no report: {err.strip()[-300:]}") from None
    return doc


def _phase(t: Tunnels, name: str, seconds: float, udp: bool, rate: int | None,
           esp: list[str], workdir: Path, new_peer: bool = False) -> AttackResult:
    lab, b = t.lab, t.nodes["b"]
    res = AttackResult(name, ATTACKS.get(name, "the legitimate flow alone"),
                       PORT.get(name), rate)
    pid = b.proc.pid
    s0 = b.stats()
    cpu0 = _cpu_seconds(pid)
    attacker = None
    report = workdir / f"attacker-{name}.json"
    with RssPeak(pid) as rss:
        try:
            if rate is not None:
                # bounded: the flow's run, C's start during the IKE flood, and a margin
                bound = seconds + (NEW_PEER_TIMEOUT + 20.0 if new_peer else 8.0)
                attacker = _start_attacker(lab, name, rate, bound, esp, report)
                time.sleep(0.5)
            res.mbps = _iperf_b(lab, seconds, udp)
            if new_peer:
                res.new_peer_seconds = new_peer_seconds(t)
                res.new_peer_within_target = (res.new_peer_seconds is not None
                                              and res.new_peer_seconds
                                              <= TARGET_NEW_PEER_SECONDS)
        except (RuntimeError, OSError, ValueError) as exc:
            res.status = f"failed: {_short(str(exc))}"
        finally:
            if attacker is not None:
                try:
                    res.attacker = _stop_attacker(lab, attacker, report)
                except RuntimeError as exc:
                    res.status = f"failed: {_short(str(exc))}"
    res.endpoint_cpu_seconds = _cpu_seconds(pid) - cpu0
    res.rss_peak_mb = rss.peak_kb / 1024
    if b.proc.poll() is not None:
        res.status = f"failed: B exited with {b.proc.returncode}"
        return res
    s1 = b.stats()
    res.drops = _delta(flat_drops(s1), flat_drops(s0))
    res.ike = _delta(ike_counters(s1), ike_counters(s0))
    if res.attacker:
        res.sent = int(res.attacker.get("sent", 0))
        elapsed = float(res.attacker.get("elapsed", 0.0))
        res.rate_sent = res.sent / elapsed if elapsed > 0 else None
        res.attacker_cpu_seconds = float(res.attacker.get("cpu_seconds", 0.0))
    return res


def _short(reason: str, limit: int = 90) -> str:
    line = next((x.strip() for x in reason.splitlines() if x.strip()), "unknown error")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def add_ratios(results: list[AttackResult]) -> float | None:
    """Each attack against the mean of the nearest baseline run before it and after it (a
    baseline row against the mean of all); ``ratio_to_control`` against the control row.
    Returns the mean of all baseline runs."""
    base = [r.mbps for r in results if r.attack == BASELINE and r.mbps]
    if not base:
        return None
    mean = sum(base) / len(base)
    for i, r in enumerate(results):
        if r.attack == BASELINE:
            ref: float | None = mean
        else:
            before = next((x.mbps for x in reversed(results[:i])
                           if x.attack == BASELINE and x.mbps), None)
            after = next((x.mbps for x in results[i + 1 :]
                          if x.attack == BASELINE and x.mbps), None)
            near = [m for m in (before, after) if m]
            ref = sum(near) / len(near) if near else None
        r.baseline_mbps = ref
        if r.mbps is not None and ref:
            r.ratio_to_baseline = r.mbps / ref
    ctrl = next((r.ratio_to_baseline for r in results
                 if r.attack == "control" and r.ratio_to_baseline), None)
    if ctrl is not None:
        for r in results:
            if r.attack != BASELINE and r.ratio_to_baseline is not None:
                r.ratio_to_control = r.ratio_to_baseline / ctrl
    return mean


def run_attack(seconds: float, rate: int, ike_rate: int, attacks: Sequence[str] = tuple(ATTACKS),
               udp: bool = False, progress: Callable[[str], None] | None = None
               ) -> list[AttackResult]:
    """The baseline, then each of ``attacks`` (in ``ATTACKS`` order) followed by the
    baseline again."""
    say = progress or (lambda s: None)
    results: list[AttackResult] = []
    with Lab(with_c=True, with_e=True) as lab, \
            tempfile.TemporaryDirectory(prefix="nattunnel-attack-") as tmp:
        workdir = Path(tmp)
        say("starting nattunnel (IKEv2) on A, B and C ...")
        t = start_ike_tunnels(lab, workdir, hosts=("a", "c"), log_level="info")
        if not wait_ike_up(t, ("a", "c"), timeout=15):
            raise RuntimeError("IKE did not come up between A, C and B; B's log:\n"
                               + t.nodes["b"].log()[-2000:])
        lab.stop(t.nodes["c"].proc, timeout=5.0)  # C comes back for the new-peer tests
        esp = capture_esp(lab)
        say(f"captured {len(esp)} ESP packets of A to B (SPI {esp[0][:8]})")
        say(f"{BASELINE}: {seconds:g} s, then C starts ...")
        results.append(_phase(t, BASELINE, seconds, udp, None, esp, workdir, new_peer=True))
        for name in (a for a in ATTACKS if a in attacks):
            r = ike_rate if name == "ike-init" else rate
            say(f"{name}: {'full speed' if not r else f'{r}/s'} to B:{PORT[name]}, "
                f"{seconds:g} s{', then C starts' if name == 'ike-init' else ''} ...")
            results.append(_phase(t, name, seconds, udp, r, esp, workdir,
                                  new_peer=name == "ike-init"))
            if results[-1].status != OK:
                say(f"{name}: {results[-1].status}")
            say(f"{BASELINE}: {seconds:g} s ...")
            results.append(_phase(t, BASELINE, seconds, udp, None, esp, workdir))
    add_ratios(results)
    return results


# --------------------------------------------------------------------------- output


def _num(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _top_drops(drops: dict[str, int], n: int = 3) -> str:
    if not drops:
        return "-"
    top = sorted(drops.items(), key=lambda kv: -kv[1])[:n]
    return " ".join(f"{k}={v}" for k, v in top)


def format_table(results: list[AttackResult]) -> str:
    """One row per attack (the baseline runs between them are summed up in the first row
    and give each attack its ``base`` column)."""
    head = (f"{'attack':<11}{'port':>5}{'rate/s':>8}{'sent/s':>8}{'Mbit/s':>7}{'base':>6}"
            f"{'x base':>7}{'x ctrl':>7}{'B CPU':>6}{'RSS MB':>7}{'rcvbuf':>7}{'peer s':>7}"
            f"  drops")
    lines = [head]
    base = [r for r in results if r.attack == BASELINE]
    shown = base[:1] + [r for r in results if r.attack != BASELINE]
    for r in shown:
        rate = "-" if r.rate_target is None else ("max" if r.rate_target == 0
                                                  else f"{r.rate_target:,}")
        name = r.attack if r.attack != BASELINE or len(base) < 2 else f"baseline*{len(base)}"
        left = f"{name:<11}{_num(r.port, 'd'):>5}{rate:>8}"
        if r.status != OK:
            lines.append(f"{left}  {r.status}")
            continue
        peer = _num(r.new_peer_seconds, ".2f")
        if r.new_peer_seconds is None and r.new_peer_within_target is False:
            peer = "none"
        mbps = r.mbps
        if r.attack == BASELINE and len(base) > 1:  # the mean of every baseline run
            runs = [x.mbps for x in base if x.mbps]
            mbps = sum(runs) / len(runs) if runs else None
        other = {k: v for k, v in r.drops.items() if k != "kernel_rcvbuf"}
        lines.append(
            f"{left}{_num(r.rate_sent, ',.0f'):>8}{_num(mbps, '.0f'):>7}"
            f"{_num(r.baseline_mbps if r.attack != BASELINE else None, '.0f'):>6}"
            f"{_num(r.ratio_to_baseline if r.attack != BASELINE else None, '.3f'):>7}"
            f"{_num(r.ratio_to_control, '.3f'):>7}{_num(r.endpoint_cpu_seconds, '.1f'):>6}"
            f"{_num(r.rss_peak_mb, '.1f'):>7}{r.drops.get('kernel_rcvbuf', 0):>7}"
            f"{peer:>7}  {_top_drops(other)}"
        )
    return "\n".join(lines)


def report_json(results: list[AttackResult], machine: dict[str, Any], seconds: float,
                rate: int, ike_rate: int, proto: str,
                other_work: float | None) -> dict[str, Any]:
    base = [r.mbps for r in results if r.attack == BASELINE and r.mbps]
    base_rss = max((r.rss_peak_mb for r in results if r.attack == BASELINE
                    and r.rss_peak_mb is not None), default=None)
    return {
        "machine": machine,
        "seconds": seconds,
        "rate": rate,
        "ike_rate": ike_rate,
        "proto": proto,
        "baseline_mbps": sum(base) / len(base) if base else None,
        "baseline_runs_mbps": base,
        "other_work_cores": other_work,
        "targets": {"ratio_to_baseline": TARGET_RATIO,
                    "new_peer_seconds": TARGET_NEW_PEER_SECONDS,
                    "rss_bound_mb": (base_rss + RSS_GROWTH_BOUND_MB
                                     if base_rss is not None else None)},
        "results": [asdict(r) for r in results],
    }


def attack_main(seconds: float, rate: int, ike_rate: int, attacks: Sequence[str],
                as_json: bool, udp: bool = False) -> int:
    problems = lab_problems()
    if shutil.which("iperf3") is None:
        problems.append("iperf3 missing (apt-get install -y --no-install-recommends iperf3)")
    if problems:
        print("nattunnel bench attack: " + "; ".join(problems), file=sys.stderr)
        return 2
    from .netns import OtherWork

    progress = None if as_json else (lambda s: print(f"  {s}", flush=True))
    info = machine_info()
    other = OtherWork().start()
    t0 = time.monotonic()
    try:
        results = run_attack(seconds, rate, ike_rate, attacks, udp, progress)
    finally:
        other_work = other.stop()
    proto = "udp" if udp else "tcp"
    if as_json:
        doc = report_json(results, info, seconds, rate, ike_rate, proto, other_work)
        doc["wall_seconds"] = time.monotonic() - t0
        print(json.dumps(doc, indent=2))
        return 0
    base = add_ratios(results)
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, "
          f"Python {info['python']}")
    print(f"other work on the machine during the run: {_num(other_work, '.2f')} of "
          f"{info['cores']} cores on average (processes outside this run)")
    runs = [r.mbps for r in results if r.attack == BASELINE and r.mbps]
    print(f"iperf3 {proto.upper()} A (behind NAT) -> B through nattunnel (IKEv2), "
          f"{seconds:g} s per run; attacker on B's segment; {len(runs)} baseline runs, "
          f"mean {_num(base, '.0f')} Mbit/s (min {_num(min(runs, default=None), '.0f')}, "
          f"max {_num(max(runs, default=None), '.0f')}); {time.monotonic() - t0:.0f} s in all\n")
    print(format_table(results))
    print(f"\ntargets: >= {TARGET_RATIO:.0%} of the baseline under each flood; B's RSS at "
          f"most {RSS_GROWTH_BOUND_MB:.0f} MB above the baseline row's; the new peer C "
          f"established within {TARGET_NEW_PEER_SECONDS:g} s during the IKE_SA_INIT flood")
    print("base: mean of the baseline runs just before and after the row; x ctrl: x base over "
          "the control row's (nattunnel's own share); B CPU: seconds of B's endpoint process;\n"
          "rcvbuf: datagrams B's kernel dropped (socket receive buffer full); peer s: C's IKE "
          "SA set up time; drops: B's largest drop counters over the row")
    return 0


__all__ = ["ATTACKS", "AttackResult", "attack_main", "attacker_main", "run_attack"]
