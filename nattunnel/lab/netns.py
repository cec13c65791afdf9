"""The NAT lab: network namespaces, veth pairs, a router doing nftables masquerade.

Used by the root-only integration tests (through the ``lab`` fixture in tests/lab.py) and by
``nattunnel bench netns``. Needs root, iproute2, nftables, conntrack.

Topology (every name starts with a per-run prefix such as ``nt1a2b3c``)::

        host A 198.19.1.2/24 ─┐                       ┌─ host B 198.18.0.2/24 (public peer)
     (host C 198.19.1.3/24) ──┤ LAN bridge    WAN bridge ├─ (host E 198.18.0.3/24, "attacker")
                              └──── router ───────────┘
                     LAN 198.19.1.1/24      WAN 198.18.0.1/24
                     ip_forward=1, nftables masquerade on the WAN interface

The two bridges live in a separate "switch" namespace, so the router's conntrack table
only holds routed (NATed) flows, never bridged LAN-LAN or WAN-WAN traffic. Hosts A and C
route via 198.19.1.1; hosts B and E have no route to 198.19.0.0/16 at all. Only addresses
in 198.18.0.0/15 are used. Every veth is created directly inside the namespaces
(``ip -n NS link add ... peer name X netns OTHER``); the root namespace's interfaces,
routes and firewall are never touched.

The pytest fixture and how to use it are in tests/lab.py.

Clean-up: ``Lab.close()`` stops every process started with ``Lab.popen`` by PID (SIGTERM,
wait, SIGKILL) and deletes every namespace it created; it is idempotent, runs from the
fixture finaliser, from ``atexit`` and from a weakref finaliser. Each lab also records its
namespaces in ``/run/nattunnel-lab/<prefix>`` with the owner PID; a later ``Lab()`` deletes
the namespaces of records whose owner is dead (a crashed run), and nothing else.
Processes are never killed by name.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..esp.suite import suite_by_name
from ..keys import generate_keymat, write_key_file

__all__ = [
    "INNER",
    "SPI",
    "ConntrackEntry",
    "Lab",
    "LabError",
    "Node",
    "Tunnels",
    "UdpPeer",
    "key_file",
    "lab_problems",
    "parse_conntrack",
    "start_tunnels",
    "tun_present",
]

CMD_TIMEOUT = 10.0
REQUIRED_TOOLS = ("ip", "nft", "conntrack", "sysctl")
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
RECORD_DIR = Path("/run/nattunnel-lab")

LAN_NET = "198.19.1.0/24"
ROUTER_LAN = "198.19.1.1"
ROUTER_WAN = "198.18.0.1"
HOST_ADDR = {"a": "198.19.1.2", "c": "198.19.1.3", "b": "198.18.0.2", "e": "198.18.0.3"}


class LabError(RuntimeError):
    """A lab command failed; the message shows the command and its stderr."""


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_SBIN_PATH)


def missing_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    return [t for t in tools if _which(t) is None]


def lab_problems(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    """Why the lab cannot run here (not root, tools missing), or an empty list."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (network namespaces)")
    missing = missing_tools(tools)
    if missing:
        problems.append(
            "missing tools: "
            + ", ".join(missing)
            + " (apt-get install -y --no-install-recommends iproute2 nftables conntrack)"
        )
    return problems


def run(
    argv: Sequence[str],
    *,
    timeout: float = CMD_TIMEOUT,
    check: bool = True,
    input: str | bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; raise LabError (command + stderr) on failure."""
    argv = [str(a) for a in argv]
    exe = _which(argv[0]) or argv[0]
    try:
        cp = subprocess.run(
            [exe, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input if input is None or isinstance(input, str) else input.decode(),
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {' '.join(argv)}") from exc
    if check and cp.returncode != 0:
        raise LabError(
            f"command failed (rc={cp.returncode}): {' '.join(argv)}\n"
            f"stderr: {cp.stderr.strip()}\nstdout: {cp.stdout.strip()}"
        )
    return cp


# --------------------------------------------------------------------------- conntrack


@dataclass(frozen=True)
class ConntrackEntry:
    """One UDP conntrack entry: original direction and reply direction tuples."""

    src: str
    dst: str
    sport: int
    dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    timeout: int
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def external(self) -> tuple[str, int]:
        """The NAT's external (address, port) for an outbound flow (the reply destination)."""
        return self.reply_dst, self.reply_dport


_CT_LINE = re.compile(r"^(?P<proto>\w+)\s+(?P<num>\d+)\s+(?P<timeout>\d+)\s+(?P<rest>.*)$")


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """Parse ``conntrack -L -p udp`` output (default format) into entries."""
    out: list[ConntrackEntry] = []
    for line in text.splitlines():
        m = _CT_LINE.match(line.strip())
        if not m or m["proto"] != "udp":
            continue
        tuples: list[dict[str, str]] = []
        flags: set[str] = set()
        for tok in m["rest"].split():
            if tok.startswith("[") and tok.endswith("]"):
                flags.add(tok[1:-1])
                continue
            if "=" not in tok:
                continue
            key, val = tok.split("=", 1)
            if key == "src":
                tuples.append({})
            if key in ("src", "dst", "sport", "dport") and tuples:
                tuples[-1][key] = val
        if len(tuples) < 2 or any(len(t) < 4 for t in tuples[:2]):
            continue
        o, r = tuples[0], tuples[1]
        out.append(
            ConntrackEntry(
                src=o["src"],
                dst=o["dst"],
                sport=int(o["sport"]),
                dport=int(o["dport"]),
                reply_src=r["src"],
                reply_dst=r["dst"],
                reply_sport=int(r["sport"]),
                reply_dport=int(r["dport"]),
                timeout=int(m["timeout"]),
                flags=frozenset(flags),
            )
        )
    return out


# --------------------------------------------------------------------------- UDP peer

_UDP_AGENT = r"""
import json, socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
lock = threading.Lock()
def emit(**kw):
    with lock:
        sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()
emit(ev="ready", host=s.getsockname()[0], port=s.getsockname()[1])
def rx():
    while True:
        try:
            data, (h, p) = s.recvfrom(65535)
        except OSError as e:
            emit(ev="rxerr", errno=e.errno); continue
        emit(ev="recv", data=data.hex(), host=h, port=p)
threading.Thread(target=rx, daemon=True).start()
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        s.sendto(bytes.fromhex(cmd["data"]), (cmd["host"], cmd["port"]))
        emit(ev="sent", errno=0)
    except OSError as e:
        emit(ev="sent", errno=e.errno)
"""


class UdpPeer:
    """A UDP socket living in a lab namespace, driven over a pipe (see ``Lab.udp_peer``)."""

    def __init__(self, proc: subprocess.Popen[str], ns: str) -> None:
        self.proc = proc
        self.ns = ns
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self._get(self._events, 10.0)
        if ready is None or ready.get("ev") != "ready":
            raise LabError(f"UDP peer in {ns} did not start (got {ready!r})")
        self.host: str = ready["host"]
        self.port: int = ready["port"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            (self._acks if ev.get("ev") == "sent" else self._events).put(ev)
        self._events.put({"ev": "eof"})

    @staticmethod
    def _get(q: queue.Queue[dict[str, Any]], timeout: float) -> dict[str, Any] | None:
        try:
            return q.get(timeout=timeout)
        except queue.Empty:
            return None

    def send(self, host: str, port: int, data: bytes) -> int:
        """Send one datagram; return 0 or the errno of the failed sendto()."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"host": host, "port": port, "data": data.hex()}) + "\n")
        self.proc.stdin.flush()
        ack = self._get(self._acks, 5.0)
        if ack is None:
            raise LabError(f"UDP peer in {self.ns} did not acknowledge a send")
        return int(ack["errno"])

    def recv(self, timeout: float = 2.0) -> tuple[bytes, str, int] | None:
        """Next received datagram as (data, source address, source port), or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ev = self._get(self._events, left)
            if ev is None or ev["ev"] == "eof":
                return None
            if ev["ev"] == "recv":
                return bytes.fromhex(ev["data"]), ev["host"], int(ev["port"])
        return None

    def drain(self) -> None:
        while not self._events.empty():
            self._events.get_nowait()


# --------------------------------------------------------------------------- the lab

_LIVE: weakref.WeakSet[Lab] = weakref.WeakSet()


def _close_all() -> None:
    for lab_ in list(_LIVE):
        with contextlib.suppress(Exception):
            lab_.close()


atexit.register(_close_all)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_labs() -> list[str]:
    """Delete namespaces recorded by labs whose owning process is dead. Returns them."""
    removed: list[str] = []
    if not RECORD_DIR.is_dir():
        return removed
    for rec in RECORD_DIR.iterdir():
        try:
            info = json.loads(rec.read_text())
            if _pid_alive(int(info["pid"])):
                continue
            existing = set(_list_netns())
            ns_inodes = set()
            for ns in info["namespaces"]:
                with contextlib.suppress(OSError):
                    ns_inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
            for pid in info.get("pids", []):
                # Only a PID we started that still lives in one of our namespaces (PIDs
                # get reused: never signal a process merely because its number matches).
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{int(pid)}/ns/net").st_ino in ns_inodes:
                        os.kill(int(pid), signal.SIGKILL)
            for ns in info["namespaces"]:
                if ns in existing:
                    run(["ip", "netns", "del", ns], check=False)
                    removed.append(ns)
            rec.unlink()
        except (OSError, ValueError, KeyError, LabError):
            continue
    return removed


def _list_netns() -> list[str]:
    cp = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


class Lab:
    """The NAT lab. Use as a context manager, or through the ``lab`` pytest fixture."""

    def __init__(
        self,
        *,
        with_c: bool = False,
        with_e: bool = False,
        masquerade_random: bool | str = False,
        udp_timeout: int | None = None,
        prefix: str | None = None,
    ) -> None:
        self.prefix = prefix or "nt" + secrets.token_hex(3)
        if len(self.prefix) + 4 > 15:
            raise ValueError("prefix too long for IFNAMSIZ")
        self.namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        self._record = RECORD_DIR / self.prefix
        self.hosts = ["a", "b"] + (["c"] if with_c else []) + (["e"] if with_e else [])
        self.ns = {role: f"{self.prefix}{role}" for role in ("r", "s", *self.hosts)}
        self.router = self.ns["r"]
        self.wan_if = f"{self.prefix}w"  # router's WAN interface
        self.lan_if = f"{self.prefix}l"  # router's LAN interface
        self.wan_addr = ROUTER_WAN
        self.addr = {h: HOST_ADDR[h] for h in self.hosts}
        with contextlib.suppress(Exception):
            sweep_stale_labs()
        _LIVE.add(self)
        self._finalizer = weakref.finalize(self, Lab._finalize, list(self.namespaces))
        try:
            self._build(masquerade_random)
            if udp_timeout is not None:
                self.set_udp_timeout(udp_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ building

    def _add_ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self._write_record()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, Lab._finalize, list(self.namespaces))
        self.exec(name, "ip", "link", "set", "lo", "up")
        with contextlib.suppress(LabError):  # keep IPv6 chatter out of the lab
            self.exec(name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")

    def _write_record(self) -> None:
        with contextlib.suppress(OSError):
            RECORD_DIR.mkdir(parents=True, exist_ok=True)
            self._record.write_text(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "namespaces": self.namespaces,
                        "pids": [p.pid for p in self._procs],
                    }
                )
            )

    def _build(self, masquerade_random: bool | str) -> None:
        p, r, s = self.prefix, self.router, self.ns["s"]
        for role in ("r", "s", *self.hosts):
            self._add_ns(self.ns[role])
        # switch namespace: one bridge per segment
        for br in (f"{p}L", f"{p}W"):
            self.exec(s, "ip", "link", "add", br, "type", "bridge")
            self.exec(s, "ip", "link", "set", br, "up")

        def wire(ns: str, ifname: str, bridge: str, port: str) -> None:
            self.exec(
                s, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns
            )
            self.exec(s, "ip", "link", "set", port, "master", bridge)
            self.exec(s, "ip", "link", "set", port, "up")
            self.exec(ns, "ip", "link", "set", ifname, "up")

        wire(r, self.lan_if, f"{p}L", f"{p}rl")
        wire(r, self.wan_if, f"{p}W", f"{p}rw")
        self.exec(r, "ip", "addr", "add", f"{ROUTER_LAN}/24", "dev", self.lan_if)
        self.exec(r, "ip", "addr", "add", f"{ROUTER_WAN}/24", "dev", self.wan_if)
        self.exec(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for h in self.hosts:
            lan = h in ("a", "c")
            wire(self.ns[h], "eth0", f"{p}L" if lan else f"{p}W", f"{p}p{h}")
            self.exec(self.ns[h], "ip", "addr", "add", f"{self.addr[h]}/24", "dev", "eth0")
            if lan:
                self.exec(self.ns[h], "ip", "route", "add", "default", "via", ROUTER_LAN)
        self.set_masquerade(masquerade_random)

    # ------------------------------------------------------------------ commands

    def exec(
        self,
        ns: str,
        *argv: str | int,
        timeout: float = CMD_TIMEOUT,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace ``ns`` (a full name or a role: 'a', 'b', 'r'...)."""
        ns = self.ns.get(ns, ns)
        return run(
            ["ip", "netns", "exec", ns, *map(str, argv)], timeout=timeout, check=check, input=input
        )

    def popen(self, ns: str, *argv: str | int, **kw: Any) -> subprocess.Popen[Any]:
        """Start a long-running program in ``ns``; ``ip netns exec`` execs it, so the
        returned PID is the program's own. ``close()`` stops it by that PID."""
        ns = self.ns.get(ns, ns)
        ip = _which("ip") or "ip"
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [ip, "netns", "exec", ns, *map(str, argv)], **kw
        )
        self._procs.append(proc)
        self._write_record()
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 3.0) -> int | None:
        """SIGTERM, wait, then SIGKILL one tracked process (by PID)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def udp_peer(self, ns: str, port: int = 0, host: str = "0.0.0.0") -> UdpPeer:
        """A UDP socket bound to (host, port) in ``ns``, driven by a tiny Python agent."""
        proc = self.popen(
            ns,
            sys.executable,
            "-u",
            "-c",
            _UDP_AGENT,
            host,
            port,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        return UdpPeer(proc, self.ns.get(ns, ns))

    # ------------------------------------------------------------------ router knobs

    def set_masquerade(self, random: bool | str = False) -> None:
        """(Re)write the router's NAT table. ``random``: False (Linux default, keeps the
        source port when free), True (``masquerade random``) or 'fully' (nft ``fully-random``,
        iptables' ``--random-fully``).
        Existing conntrack entries keep their mapping; delete them to re-map."""
        flag = {
            False: "",
            True: " random",
            "random": " random",
            "fully": " fully-random",
            "random-fully": " fully-random",
            "fully-random": " fully-random",
        }[random]
        table = f"{self.prefix}nat"
        self.exec(
            self.router,
            "nft",
            "-f",
            "-",
            input=(
                f"table ip {table}\ndelete table ip {table}\n"
                f"table ip {table} {{\n"
                f"  chain post {{\n"
                f"    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    oifname "{self.wan_if}" ip saddr {LAN_NET} masquerade{flag}\n'
                f"  }}\n"
                f"}}\n"
            ),
        )

    def set_udp_timeout(self, seconds: int, stream: int | None = None) -> None:
        """Router conntrack UDP timeouts (unreplied and stream), in whole seconds."""
        self.exec(
            self.router,
            "sysctl",
            "-qw",
            f"net.netfilter.nf_conntrack_udp_timeout={int(seconds)}",
            f"net.netfilter.nf_conntrack_udp_timeout_stream={int(stream or seconds)}",
        )

    def conntrack_list(self, **match: str | int) -> list[ConntrackEntry]:
        """The router's UDP conntrack entries, optionally filtered by entry attributes
        (e.g. ``src='198.19.1.2', dport=4500``)."""
        cp = self.exec(self.router, "conntrack", "-L", "-p", "udp")
        return [
            e
            for e in parse_conntrack(cp.stdout)
            if all(
                getattr(e, k) == (int(v) if isinstance(getattr(e, k), int) else v)
                for k, v in match.items()
            )
        ]

    _CT_OPTS = {
        "src": "--orig-src",
        "dst": "--orig-dst",
        "sport": "--orig-port-src",
        "dport": "--orig-port-dst",
        "reply_src": "--reply-src",
        "reply_dst": "--reply-dst",
        "reply_sport": "--reply-port-src",
        "reply_dport": "--reply-port-dst",
    }

    def conntrack_delete(self, **match: str | int) -> int:
        """Delete matching UDP entries of the router (keys as in ConntrackEntry). Returns
        how many were deleted (0 is not an error)."""
        argv: list[str | int] = ["conntrack", "-D", "-p", "udp"]
        for k, v in match.items():
            argv += [self._CT_OPTS[k], v]
        cp = self.exec(self.router, *argv, check=False)
        m = re.search(r"(\d+) flow entries have been deleted", cp.stderr)
        if m is None and cp.returncode != 0:
            raise LabError(f"conntrack -D failed: {cp.stderr.strip()}")
        return int(m[1]) if m else 0

    def wait_for(self, predicate: Any, timeout: float, interval: float = 0.25) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # ------------------------------------------------------------------ teardown

    @staticmethod
    def _finalize(namespaces: list[str]) -> None:
        for ns in namespaces:
            with contextlib.suppress(Exception):
                run(["ip", "netns", "del", ns], check=False)

    def close(self) -> None:
        """Stop tracked processes by PID, delete our namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for proc in reversed(self._procs):
            try:
                self.stop(proc)
            except Exception as exc:
                errors.append(f"pid {proc.pid}: {exc}")
        existing = set(_list_netns())
        for ns in reversed(self.namespaces):
            if ns in existing:
                cp = run(["ip", "netns", "del", ns], check=False)
                if cp.returncode != 0:
                    errors.append(f"ip netns del {ns}: {cp.stderr.strip()}")
        self._finalizer.detach()
        _LIVE.discard(self)
        with contextlib.suppress(OSError):
            self._record.unlink()
        if errors:
            raise LabError("lab clean-up problems: " + "; ".join(errors))

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- nattunnel endpoints in the lab ----------------------------------------------------------
# Host B (public) is the hub; hosts A and C (behind the NAT) each have a tunnel to B, with
# manual SAs and keys written under a work directory. Inner addresses are /32s in
# 198.18.100.0/24 with routes to the peers' inner addresses on each TUN device.

INNER = {"a": "198.18.100.1", "b": "198.18.100.2", "c": "198.18.100.3"}
SPI = {"a": (0x1A00, 0x2A00), "c": (0x1C00, 0x2C00)}  # (B's inbound, the host's inbound)
#: the directory holding the nattunnel package, for the endpoints' PYTHONPATH
PKG_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Node:
    role: str
    proc: subprocess.Popen[Any]
    stats_path: Path
    log_path: Path

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask the process for its counters (SIGUSR1) and read them."""
        before = self.stats_path.stat().st_mtime_ns if self.stats_path.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats_path.exists() and self.stats_path.stat().st_mtime_ns != before:
                try:
                    return json.loads(self.stats_path.read_text())  # type: ignore[no-any-return]
                except json.JSONDecodeError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"no stats from {self.role}; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@dataclass
class Tunnels:
    """nattunnel endpoints running in a lab."""

    lab: Lab
    dir: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def ping(self, src: str, dst: str, count: int = 1, timeout: float = 2.0) -> bool:
        r = self.lab.exec(src, "ping", "-c", count, "-W", int(timeout), "-i", "0.2",
                          INNER[dst], check=False, timeout=timeout * count + 5)
        return r.returncode == 0

    def stop(self, role: str) -> None:
        self.lab.stop(self.nodes[role].proc, timeout=5.0)

    def peer(self, role: str, peer: str) -> dict[str, Any]:
        """Counters of ``peer`` as seen by ``role`` (one fresh SIGUSR1 snapshot)."""
        return self.nodes[role].stats()["peers"][peer]  # type: ignore[no-any-return]

    def key_file(self, src: str, dst: str) -> Path:
        """The key file of the SA from ``src`` to ``dst`` (one of them is 'b')."""
        return key_file(self.dir, src, dst)


def key_file(workdir: Path, src: str, dst: str) -> Path:
    """Where ``start_tunnels`` writes the keying material of the SA ``src`` -> ``dst``."""
    return workdir / "keys" / f"{src}-to-{dst}.key"


def tun_present(lab: Lab, role: str, name: str = "nt0") -> bool:
    """Whether the TUN device ``name`` exists in ``role``'s namespace."""
    return lab.exec(role, "ip", "link", "show", "dev", name, check=False).returncode == 0


def _peer_block(name: str, endpoint: str | None, allowed: str, spi_in: int, spi_out: int,
                key_in: Path, key_out: Path, suite: str, keepalive: str, behind_nat: bool,
                interval: float) -> str:
    lines = [
        "[[peer]]",
        f'name = "{name}"',
        f'allowed_ips = ["{allowed}/32"]',
        f'suite = "{suite}"',
        f"spi_in = {spi_in:#x}",
        f"spi_out = {spi_out:#x}",
        f'key_in = "{key_in}"',
        f'key_out = "{key_out}"',
        f'keepalive = "{keepalive}"',
        f"behind_nat = {'true' if behind_nat else 'false'}",
        f"keepalive_interval = {interval}",
    ]
    if endpoint:
        lines.insert(2, f'endpoint = "{endpoint}"')
    return "\n".join(lines) + "\n"


def start_tunnels(lab: Lab, workdir: Path, hosts: tuple[str, ...] = ("a",), *,
          suite: str = "aes256gcm16", keepalive: str = "nat", interval: float = 20.0,
          b_keepalive: str = "nat") -> Tunnels:
    """Write keys and configs, start ``nattunnel up`` on B and on each inside host."""
    s = suite_by_name(suite)
    keys = workdir / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    t = Tunnels(lab, workdir)
    b_peers = []
    configs: dict[str, str] = {}
    for h in hosts:
        to_b, from_b = key_file(workdir, h, "b"), key_file(workdir, "b", h)
        write_key_file(to_b, generate_keymat(s), force=True)
        write_key_file(from_b, generate_keymat(s), force=True)
        b_in, h_in = SPI[h]
        b_peers.append(_peer_block(h, None, INNER[h], b_in, h_in, to_b, from_b, suite,
                                   b_keepalive, False, interval))
        configs[h] = (
            'listen = ["0.0.0.0:4500"]\n[interface]\nkind = "tun"\nname = "nt0"\n'
            f'addresses = ["{INNER[h]}/32"]\n\n'
            + _peer_block("b", f"{lab.addr['b']}:4500", INNER["b"], h_in, b_in, from_b, to_b,
                          suite, keepalive, True, interval)
        )
    configs["b"] = (
        'listen = ["0.0.0.0:4500"]\n[interface]\nkind = "tun"\nname = "nt0"\n'
        f'addresses = ["{INNER["b"]}/32"]\n\n' + "\n".join(b_peers)
    )
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
    for role in ("b", *hosts):
        cfg = workdir / f"{role}.toml"
        cfg.write_text(configs[role])
        log = workdir / f"{role}.log"
        stats = workdir / f"{role}.stats.json"
        proc = lab.popen(role, sys.executable, "-m", "nattunnel", "up", str(cfg),
                         "--stats", str(stats), stdout=log.open("w"),
                         stderr=subprocess.STDOUT, env=env)
        t.nodes[role] = Node(role, proc, stats, log)
    for role, node in t.nodes.items():
        if not lab.wait_for(lambda r=role: _tun_up(lab, r), timeout=10):
            raise RuntimeError(f"{role}: TUN did not come up; log:\n{node.log()}")
    return t


def _tun_up(lab: Lab, role: str) -> bool:
    r = lab.exec(role, "ip", "-j", "addr", "show", "dev", "nt0", check=False)
    return r.returncode == 0 and INNER[role] in r.stdout


# --- IKEv2 endpoints in the lab ----------------------------------------------------------------
# The same topology with IKE-managed peers: B (public) responds, each inside host initiates to
# B's public address on port 500 and moves to 4500 once IKE detects the router's NAT. Configs,
# credentials, logs and stats live under a work directory, as with start_tunnels.

#: IKE identities of the lab hosts (local_id of the host, remote_id at its peer)
IKE_ID = {"a": "hosta", "b": "hostb", "c": "hostc"}


def _toml(value: object) -> str:
    """A TOML literal for a str, bool, int, float or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def _ike_config(role: str, peers: list[dict[str, object]]) -> str:
    lines = ['listen = ["0.0.0.0:4500"]', "", "[interface]", 'kind = "tun"', 'name = "nt0"',
             f'addresses = ["{INNER[role]}/32"]', ""]
    for peer in peers:
        lines.append("[[peer]]")
        lines += [f"{k} = {_toml(v)}" for k, v in peer.items()]
        lines.append("")
    return "\n".join(lines)


def start_ike_tunnels(lab: Lab, workdir: Path, hosts: tuple[str, ...] = ("a",), *,
                      auth: str = "psk", host_peer: dict[str, object] | None = None,
                      b_peer: dict[str, object] | None = None, b_psk: bytes | None = None,
                      log_level: str = "debug", timeout: float = 10.0) -> Tunnels:
    """Write IKEv2 credentials and configs, start ``nattunnel up`` on B (responder), then on
    each inside host (initiator, ``endpoint`` = B's public address, port 500).

    ``auth``: "psk" (one random secret for all; ``b_psk`` gives B another one, e.g. a wrong
    one) or "pubkey" (an Ed25519 pair per host under ``workdir/keys``). ``host_peer`` and
    ``b_peer`` add or override keys of the inside hosts' peer table and of B's peer tables
    (e.g. ``{"dpd_interval": 2, "rekey_time": 4}``). Returns once every endpoint has its TUN
    device and listens; the IKE SAs come up on their own (see ``wait_ike_up``)."""
    from ..keys import generate_psk, write_ed25519_pair, write_psk_file

    keys = workdir / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    cred: dict[str, dict[str, object]] = {}  # role -> credential keys of its peer tables
    if auth == "psk":
        secret = generate_psk()
        write_psk_file(keys / "psk", secret, force=True)
        cred = {h: {"psk_file": keys / "psk"} for h in hosts}
        cred["b"] = {"psk_file": keys / "psk"}
        if b_psk is not None:
            write_psk_file(keys / "b.psk", b_psk, force=True)
            cred["b"] = {"psk_file": keys / "b.psk"}
    elif auth == "pubkey":
        for role in ("b", *hosts):
            write_ed25519_pair(keys / f"{role}.key", keys / f"{role}.pub", force=True)
    else:
        raise ValueError(f"auth must be 'psk' or 'pubkey', not {auth!r}")

    def peer_table(me: str, other: str, extra: dict[str, object] | None) -> dict[str, object]:
        table: dict[str, object] = {
            "name": other, "auth": auth, "local_id": IKE_ID[me], "remote_id": IKE_ID[other],
            "allowed_ips": [f"{INNER[other]}/32"],
        }
        if auth == "psk":
            table.update(cred[me])
        else:
            table["private_key"] = keys / f"{me}.key"
            table["peer_public_key"] = keys / f"{other}.pub"
        if me == "b":
            table["initiate"] = False
        else:
            table["endpoint"] = lab.addr["b"]
            table["initiate"] = True
        table.update(extra or {})
        return table

    configs = {h: _ike_config(h, [peer_table(h, "b", host_peer)]) for h in hosts}
    configs["b"] = _ike_config("b", [peer_table("b", h, b_peer) for h in hosts])
    t = Tunnels(lab, workdir)
    for role in ("b", *hosts):
        (workdir / f"{role}.toml").write_text(configs[role])
        start_ike_node(t, role, log_level=log_level, timeout=timeout)
    return t


def start_ike_node(t: Tunnels, role: str, *, log_level: str = "debug",
                   timeout: float = 10.0) -> Node:
    """(Re)start ``nattunnel up`` for ``role`` with ``t.dir/ROLE.toml`` (written by
    ``start_ike_tunnels``); the log is appended to ``ROLE.log``. Waits until the TUN device
    has its address and the endpoint logged that it listens; replaces ``t.nodes[role]``."""
    lab, workdir = t.lab, t.dir
    cfg, log, stats = (workdir / f"{role}.toml", workdir / f"{role}.log",
                       workdir / f"{role}.stats.json")
    start = log.stat().st_size if log.exists() else 0
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
    with log.open("a") as out:
        proc = lab.popen(role, sys.executable, "-m", "nattunnel", "up", str(cfg), "--stats",
                         str(stats), "--log-level", log_level, stdout=out,
                         stderr=subprocess.STDOUT, env=env)
    node = t.nodes[role] = Node(role, proc, stats, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{role}: nattunnel up exited with {proc.returncode}; "
                               f"log:\n{node.log()[start:]}")
        return _tun_up(lab, role) and "listening on" in node.log()[start:]

    if not lab.wait_for(ready, timeout=timeout, interval=0.05):
        raise RuntimeError(f"{role}: endpoint did not come up; log:\n{node.log()[start:]}")
    return node


def ike_sas(node: Node) -> list[dict[str, Any]]:
    """The IKE SAs in one fresh stats snapshot of ``node``."""
    return node.stats()["ike"]["ike_sas"]  # type: ignore[no-any-return]


def wait_ike_up(t: Tunnels, roles: Sequence[str] = ("a", "b"), timeout: float = 10.0) -> bool:
    """Wait until each of ``roles`` has an established IKE SA with a child SA."""
    def up(role: str) -> bool:
        return any(sa["state"] == "established" and sa["children"]
                   for sa in ike_sas(t.nodes[role]))

    return t.lab.wait_for(lambda: all(up(r) for r in roles), timeout=timeout, interval=0.1)
