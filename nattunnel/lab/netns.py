"""The NAT lab: network namespaces, veth pairs, a router doing nftables masquerade.

Used by the root-only integration tests (through the ``lab`` fixture in tests/support/lab.py)
and by ``nattunnel bench netns`` and ``bench attack``; nattunnel endpoints on its hosts are
``nattunnel.lab.tunnels``. Needs root, iproute2, nftables, conntrack.

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

The pytest fixture and how to use it are in tests/support/lab.py.

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

__all__ = [
    "HOST_ADDR",
    "REQUIRED_TOOLS",
    "ROUTER_LAN",
    "ROUTER_WAN",
    "ConntrackEntry",
    "Lab",
    "LabError",
    "UdpPeer",
    "lab_problems",
    "parse_conntrack",
    "run",
    "stop_process",
    "sweep_stale_labs",
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


def _delete_namespaces(namespaces: list[str]) -> None:
    """The weakref finaliser of a Lab that was never closed: delete its namespaces."""
    for ns in namespaces:
        with contextlib.suppress(Exception):
            run(["ip", "netns", "del", ns], check=False)


def _list_netns() -> list[str]:
    cp = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]


def stop_process(proc: subprocess.Popen[Any], timeout: float = 3.0) -> None:
    """SIGTERM one process by PID, wait up to ``timeout``, then SIGKILL it (never by
    name)."""
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
        self._finalizer = weakref.finalize(self, _delete_namespaces, list(self.namespaces))
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
        self._finalizer = weakref.finalize(self, _delete_namespaces, list(self.namespaces))
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
        stop_process(proc, timeout)
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
