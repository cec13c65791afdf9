"""coturn (``turnserver``) as the lab's RFC 5780 STUN server, and its NAT discovery client.

``Coturn(primary, other, directory, relay=Relay(...))`` is a TURN relay (RFC 8656) with
long-term credentials (``--lt-cred-mech``, ``--user``, ``--realm``), its relay address and
port range, and the allocation, permission and channel lifetimes shortened for tests.

``Coturn(primary, other, directory)`` starts ``turnserver`` in STUN-only mode listening on
two addresses (``--listening-ip`` twice) and two ports (``--listening-port``,
``--alt-listening-port``), so that it answers with OTHER-ADDRESS and honours CHANGE-REQUEST
(RFC 5780). No configuration file is read (``-c /dev/null -n``); its log, PID file and
user database live in ``directory``; no TLS, DTLS, TCP or CLI listener. Started by root, it
is root only to open those files (in a test's private directory, which nobody could not
reach) and runs as nobody from then on (``--proc-user``). In a lab namespace it is started with
``Lab.popen`` (so the lab stops it too); on loopback (127.0.0.1 and 127.0.0.2, no root
needed) with plain ``subprocess``. ``start()`` returns once it answers a Binding request;
``stop()`` ends it by its PID (SIGTERM, then SIGKILL), never by name.

``natdiscovery(...)`` runs coturn's ``turnutils_natdiscovery`` and ``parse_natdiscovery``
reads its verdicts (mapping, filtering, hairpinning, the lifetime probe).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import Lab, LabError, stop_process

__all__ = [
    "Coturn",
    "NatDiscovery",
    "Relay",
    "coturn_problems",
    "natdiscovery",
    "parse_natdiscovery",
]

TURNSERVER = "turnserver"
NATDISCOVERY = "turnutils_natdiscovery"
#: the unprivileged user a root caller runs coturn as
USER, GROUP = "nobody", "nogroup"

# A Binding request from a fresh socket; exit 0 when answered (run where the server is
# reachable: in the namespace, or on the host for loopback).
_PROBE = r"""
import os, socket, struct, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
tid = os.urandom(12)
s.sendto(struct.pack("!HHI12s", 1, 0, 0x2112A442, tid), (sys.argv[1], int(sys.argv[2])))
try:
    data = s.recv(2048)
except OSError:
    sys.exit(1)
sys.exit(0 if data[8:20] == tid and data[:2] == b"\x01\x01" else 1)
"""


def coturn_problems() -> list[str]:
    """Why coturn cannot run here, or an empty list."""
    missing = [t for t in (TURNSERVER, NATDISCOVERY) if shutil.which(t) is None]
    if missing:
        return [f"missing {', '.join(missing)} (apt-get install -y --no-install-recommends "
                "coturn)"]
    return []


@dataclass(frozen=True)
class Relay:
    """coturn as a TURN relay (RFC 8656) with long-term credentials: ``users`` as
    (name, password), the ``realm``, the relay address (``relay_ip``: the listening address
    if None) and UDP port range, and the lifetimes (coturn 4.6's ``--max-allocate-lifetime``,
    ``--permission-lifetime``, ``--channel-lifetime``; shortened for tests)."""

    users: tuple[tuple[str, str], ...] = (("nattunnel", "secret"),)
    realm: str = "nattunnel.lab"
    relay_ip: str | None = None
    min_port: int = 49152
    max_port: int = 65535
    max_allocate_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600

    def argv(self, listening: str) -> list[str]:
        out = ["--lt-cred-mech", "--realm", self.realm, "--relay-ip",
               self.relay_ip or listening, "--min-port", str(self.min_port),
               "--max-port", str(self.max_port),
               "--max-allocate-lifetime", str(self.max_allocate_lifetime),
               "--permission-lifetime", str(self.permission_lifetime),
               "--channel-lifetime", str(self.channel_lifetime), "--no-tcp-relay",
               "--no-multicast-peers"]
        for name, password in self.users:
            out += ["--user", f"{name}:{password}"]
        if listening.startswith("127.") or listening == "::1":
            out.append("--allow-loopback-peers")
        return out


class Coturn:
    """One turnserver. ``primary``/``other``: its two addresses (``other`` None: one address,
    a plain STUN server without RFC 5780); ``port``/``alt_port`` its two ports; ``lab``/``ns``:
    the namespace to run in (None: here, e.g. loopback)."""

    def __init__(self, primary: str, other: str | None, directory: str | os.PathLike[str], *,
                 port: int = 3478, alt_port: int = 3479, lab: Lab | None = None,
                 ns: str | None = None, relay: Relay | None = None) -> None:
        """``relay``: a TURN relay with long-term credentials instead of STUN only."""
        if (lab is None) != (ns is None):
            raise ValueError("give both lab and ns, or neither")
        self.primary, self.other = primary, other
        self.port, self.alt_port = port, alt_port
        self.lab, self.ns = lab, ns
        self.relay = relay
        self.dir = Path(directory) / f"coturn-{primary.replace(':', '_')}-{port}"
        self.log = self.dir / "turnserver.log"
        self.pidfile = self.dir / "turnserver.pid"
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.primary, self.port)

    @property
    def other_address(self) -> tuple[str, int] | None:
        return (self.other, self.alt_port) if self.other is not None else None

    def argv(self) -> list[str]:
        exe = shutil.which(TURNSERVER) or TURNSERVER
        listen = ["--listening-ip", self.primary]
        if self.other is not None:
            listen += ["--listening-ip", self.other]
        mode = self.relay.argv(self.primary) if self.relay is not None else ["--stun-only"]
        argv = [exe, "-c", "/dev/null", "-n", *mode, *listen,
                "--listening-port", str(self.port), "--alt-listening-port", str(self.alt_port),
                "--no-tls", "--no-dtls", "--no-tcp", "--no-cli", "--no-stdout-log",
                "--log-file", str(self.log), "--simple-log", "--pidfile", str(self.pidfile),
                "--userdb", str(self.dir / "turndb")]
        if os.geteuid() == 0:
            argv += ["--proc-user", USER, "--proc-group", GROUP]
        return argv

    def start(self, timeout: float = 10.0) -> Coturn:
        """Start it and wait until it answers a Binding on both addresses."""
        if self.proc is not None:
            raise LabError("coturn already started")
        self.dir.mkdir(parents=True, exist_ok=True)
        kw: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                              "stderr": subprocess.DEVNULL}
        if self.lab is not None and self.ns is not None:
            self.proc = self.lab.popen(self.ns, *self.argv(), **kw)
        else:
            self.proc = subprocess.Popen(self.argv(), **kw)
        deadline = time.monotonic() + timeout
        addresses = [self.address] + ([self.other_address] if self.other_address else [])
        while not all(self._answers(a) for a in addresses):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise LabError(f"coturn on {self.primary}:{self.port} did not answer a "
                               f"Binding within {timeout} s; its log:\n{tail}")
            time.sleep(0.1)
        return self

    def _answers(self, addr: tuple[str, int]) -> bool:
        argv = [sys.executable, "-c", _PROBE, addr[0], str(addr[1])]
        if self.lab is not None and self.ns is not None:
            cp = self.lab.exec(self.ns, *argv, check=False)
        else:
            return subprocess.run(argv, capture_output=True, timeout=5).returncode == 0
        return cp.returncode == 0

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM by PID, wait, SIGKILL. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.lab is not None:
            self.lab.stop(proc, timeout)
            return
        stop_process(proc, timeout)

    def __enter__(self) -> Coturn:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class NatDiscovery:
    """``turnutils_natdiscovery``'s verdicts, in netcheck's terms (None: it said nothing)."""

    mapping: str | None = None
    filtering: str | None = None
    hairpinning: bool | None = None
    #: the lifetime probe (``-t -T N``): the mapping still answered after N seconds
    lifetime_alive: bool | None = None
    #: False when it said "No NAT!" (it compares with its bound address: only with -L)
    nat: bool | None = None
    output: str = ""


_VERDICTS = {
    "NAT with Endpoint Independent Mapping!": ("mapping", "endpoint-independent"),
    "NAT with Address Dependent Mapping!": ("mapping", "address-dependent"),
    "NAT with Address and Port Dependent Mapping!": ("mapping", "address-and-port-dependent"),
    "NAT with Endpoint Independent Filtering!": ("filtering", "endpoint-independent"),
    "NAT with Address Dependent Filtering!": ("filtering", "address-dependent"),
    "NAT with Address and Port Dependent Filtering!": ("filtering",
                                                       "address-and-port-dependent"),
}


def parse_natdiscovery(text: str) -> NatDiscovery:
    """Read ``turnutils_natdiscovery``'s output: its sections (``-= Mapping Behavior
    Discovery =-`` ...) and the verdict lines in them."""
    out = NatDiscovery(output=text)
    sections = re.split(r"^-= (.*?) Behavior Discovery =-$", text, flags=re.M)
    for title, body in zip(sections[1::2], sections[2::2], strict=True):
        for line in body.splitlines():
            line = line.strip()
            if line in _VERDICTS:
                key, value = _VERDICTS[line]
                setattr(out, key, value)
            elif line.startswith("No NAT!"):
                out.nat = False
        if title == "Hairpinning":
            out.hairpinning = "successful hairpinning" in body
        elif title == "Mapping Lifetime":
            out.lifetime_alive = ("RFC 5780 response 2" in body
                                  and "STUN receive timeout" not in body)
    return out


def natdiscovery(server: str, *options: str, port: int = 3478, lab: Lab | None = None,
                 ns: str | None = None, timeout: float = 60.0) -> NatDiscovery:
    """Run ``turnutils_natdiscovery OPTIONS -p PORT SERVER`` (in ``ns`` of ``lab``, or
    here) and parse what it printed."""
    exe = shutil.which(NATDISCOVERY) or NATDISCOVERY
    argv = [exe, *options, "-p", str(port), server]
    if lab is not None and ns is not None:
        cp = lab.exec(ns, *argv, timeout=timeout, check=False)
    else:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            check=False)
    if cp.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (rc={cp.returncode}): {cp.stderr.strip()}")
    return parse_natdiscovery(cp.stdout + cp.stderr)
