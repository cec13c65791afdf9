"""Peer tunnels for ``nattunnel bench netns``: wireguard-go, OpenVPN and strongSwan in the NAT lab.

Each ``start_*`` function brings one tunnel up between host A (behind the NAT) and host B
(public), the way their own documentation runs them, and returns a ``Running`` tunnel:
the daemons' processes on both ends (their PIDs give the CPU time), the tunnel interface on
each end (its MTU and packet counters) and B's inner address (where iperf3 listens). A start
that fails stops what it started and raises ``PeerError`` with a short reason.

- wireguard-go: ``wireguard-go -f IFNAME`` per end, configured with ``wg set``; its control
  socket is /var/run/wireguard/IFNAME.sock in the shared file system, so the interface names
  carry the lab's unique prefix. Default MTU (1420), PersistentKeepalive 25 from A.
- OpenVPN 2.6: UDP, peer-to-peer TLS with self-signed EC certificates pinned by
  ``peer-fingerprint``, ``tls-crypt``, ``data-ciphers AES-256-GCM``, ``disable-dco`` (pure
  userspace), default tun-mtu (1500). B is ``tls-server`` with ``dh none`` and no ``remote``.
- strongSwan: ``nattunnel.lab.strongswan.Charon`` on A and B (kernel-libipsec: userspace ESP in UDP
  through the TUN device ``ipsec0``, MTU 1400), PSK, ``aes256gcm16``; A initiates.

Every tunnel uses its own inner /24 inside 198.18.0.0/15, so nothing left behind by one can
route the next one's traffic. Processes are started through ``Lab.popen`` and stopped by PID.
docs/benchmarks.md has the figures of each next to nattunnel's, and docs/interop-strongswan.md
the strongSwan settings.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from .netns import Lab, LabError

__all__ = [
    "INSTALL_PACKAGES",
    "NOT_INSTALLED",
    "PEERS",
    "STARTERS",
    "PeerError",
    "Running",
    "install_peers",
    "peer_problems",
    "start_openvpn",
    "start_strongswan",
    "start_wireguard",
    "started",
]

#: the peer tunnels in the order ``bench netns`` runs them (after nattunnel)
PEERS = ("wireguard-go", "openvpn", "strongswan")
NOT_INSTALLED = "not installed (use --install-peers)"
#: ``--install-peers``: wireguard-go, OpenVPN, and strongSwan as in tests/debian-packages.txt
INSTALL_PACKAGES = (
    "wireguard-go", "wireguard-tools", "openvpn", "openssl",
    "strongswan-charon", "strongswan-swanctl", "libcharon-extra-plugins",
    "libstrongswan-extra-plugins", "libstrongswan-standard-plugins",
)
#: inner addresses (A, B) of each peer tunnel
INNER = {
    "wireguard-go": ("198.18.101.1", "198.18.101.2"),
    "openvpn": ("198.18.102.1", "198.18.102.2"),
    "strongswan": ("198.18.103.1", "198.18.103.2"),
}
WG_PORT = 51820
OVPN_PORT = 1194
WG_SOCK_DIR = Path("/var/run/wireguard")
START_TIMEOUT = 20.0
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


class PeerError(RuntimeError):
    """A peer tunnel did not come up; ``str()`` is a short reason, ``detail`` the logs."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = detail


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=_SBIN_PATH)


def peer_problems(name: str) -> list[str]:
    """What is missing to run peer tunnel ``name`` here (an empty list if nothing)."""
    missing: list[str] = []
    if name == "wireguard-go":
        missing = [t for t in ("wireguard-go", "wg") if _which(t) is None]
    elif name == "openvpn":
        missing = [t for t in ("openvpn",) if _which(t) is None]
    elif name == "strongswan":
        from .strongswan import strongswan_problems

        missing = [p for p in strongswan_problems() if "needs root" not in p]
    else:
        raise ValueError(f"unknown peer tunnel {name!r}")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun")
    return missing


def install_peers(out: Any = None, timeout: float = 900.0) -> bool:
    """``apt-get install -y --no-install-recommends`` the peer tunnels' packages (after an
    ``apt-get update`` if the first attempt fails). Output goes to ``out`` (a file, default
    stderr). Returns whether apt-get succeeded; the caller goes on either way."""
    import sys

    out = out or sys.stderr
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = _which("apt-get")
    if apt is None:
        print("--install-peers: apt-get not found; install the peers by hand: "
              + " ".join(INSTALL_PACKAGES), file=out, flush=True)
        return False
    install = [apt, "install", "-y", "--no-install-recommends", *INSTALL_PACKAGES]
    for attempt in range(2):
        if attempt:
            print("--install-peers: apt-get install failed; running apt-get update",
                  file=out, flush=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([apt, "update"], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, timeout=timeout)
        try:
            cp = subprocess.run(install, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"--install-peers: apt-get timed out after {timeout:g} s", file=out,
                  flush=True)
            return False
        if cp.returncode == 0:
            return True
    print("--install-peers: apt-get install failed; going on with what is installed",
          file=out, flush=True)
    return False


# --------------------------------------------------------------------------- a running tunnel


@dataclass
class Running:
    """A tunnel that is up between A and B in a lab."""

    name: str
    lab: Lab
    dest: str  # B's inner address: the iperf3 server binds it, A's client connects to it
    ifaces: dict[str, str]  # role -> tunnel interface
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    #: the role ("a", "b") of each of ``procs``, where known
    roles: list[str] = field(default_factory=list)
    #: packets the tunnel carried so far (both ends); default: tunnel-interface counters
    packet_counter: Callable[[], int] | None = None
    cleanups: list[Callable[[], object]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def mtu(self, role: str = "a") -> int | None:
        r = self.lab.exec(role, "ip", "-j", "link", "show", "dev", self.ifaces[role],
                          check=False)
        if r.returncode != 0:
            return None
        try:
            return int(json.loads(r.stdout)[0]["mtu"])
        except (ValueError, LookupError, TypeError):
            return None

    def packets(self) -> int:
        if self.packet_counter is not None:
            return self.packet_counter()
        total = 0
        for role, iface in self.ifaces.items():
            r = self.lab.exec(role, "ip", "-s", "-j", "link", "show", "dev", iface)
            stats = json.loads(r.stdout)[0]["stats64"]
            total += int(stats["rx"]["packets"]) + int(stats["tx"]["packets"])
        return total

    def ping(self, timeout: float = 10.0) -> bool:
        """Whether A reaches B's inner address within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.lab.exec("a", "ping", "-c", 1, "-W", 1, self.dest, check=False,
                              timeout=5)
            if r.returncode == 0:
                return True
            if time.monotonic() >= deadline:
                return False

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for path in self.logs:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def close(self) -> None:
        """Stop the daemons by PID and undo what the start did. Idempotent."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.lab.stop(proc, timeout=5.0)
        while self.cleanups:
            with contextlib.suppress(Exception):
                self.cleanups.pop()()


def _wait(what: str, ready: Callable[[], bool], t: Running, timeout: float) -> None:
    """Wait until ``ready()``; raise PeerError if a daemon exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        for p in t.procs:
            if p.poll() is not None:
                raise PeerError(f"{what}: a daemon exited with {p.returncode}", t.log_tail())
        if time.monotonic() >= deadline:
            raise PeerError(f"{what}: not ready after {timeout:g} s", t.log_tail())
        time.sleep(0.1)


def started(t: Running, bring_up: Callable[[], None]) -> Running:
    """Run ``bring_up`` and check the tunnel passes ping; on any failure stop it and raise."""
    try:
        bring_up()
        if not t.ping():
            raise PeerError("no ping across the tunnel", t.log_tail())
    except PeerError:
        t.close()
        raise
    except (LabError, OSError, RuntimeError, ValueError) as exc:
        t.close()
        raise PeerError(str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__,
                        str(exc) + "\n" + t.log_tail()) from exc
    except BaseException:
        t.close()
        raise
    return t


def _write_private(path: Path, data: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------- wireguard-go


def start_wireguard(lab: Lab, workdir: Path) -> Running:
    """wireguard-go on A and B; A has B as endpoint with PersistentKeepalive 25."""
    workdir.mkdir(parents=True, exist_ok=True)
    ifaces = {"a": f"{lab.prefix}wga", "b": f"{lab.prefix}wgb"}
    inner = dict(zip("ab", INNER["wireguard-go"], strict=True))
    t = Running("wireguard-go", lab, inner["b"], ifaces)
    env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    exe, wg = _which("wireguard-go") or "wireguard-go", _which("wg") or "wg"

    def bring_up() -> None:
        keys = {role: X25519PrivateKey.generate() for role in ifaces}
        pub = {role: base64.b64encode(k.public_key().public_bytes_raw()).decode()
               for role, k in keys.items()}
        for role, name in ifaces.items():
            sock = WG_SOCK_DIR / f"{name}.sock"
            if sock.exists():
                raise PeerError(f"{sock} exists already (another run with this prefix?)")
            log = workdir / f"wireguard-go-{role}.log"
            t.logs.append(log)
            with log.open("w") as out:
                t.procs.append(lab.popen(role, exe, "-f", name, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=env))
            t.cleanups.append(functools.partial(sock.unlink, missing_ok=True))
        for role, name in ifaces.items():
            _wait(f"wireguard-go in {role}", (WG_SOCK_DIR / f"{name}.sock").exists, t,
                  START_TIMEOUT)
        for role in ("b", "a"):  # B listens before A's first handshake initiation
            name, other = ifaces[role], "b" if role == "a" else "a"
            key = workdir / f"wg-{role}.key"
            _write_private(key, base64.b64encode(keys[role].private_bytes_raw()) + b"\n")
            args: list[str | int] = [wg, "set", name, "listen-port", WG_PORT,
                                     "private-key", str(key), "peer", pub[other],
                                     "allowed-ips", f"{inner[other]}/32"]
            if role == "a":
                args += ["endpoint", f"{lab.addr['b']}:{WG_PORT}", "persistent-keepalive", 25]
            lab.exec(role, *args)
            lab.exec(role, "ip", "addr", "add", f"{inner[role]}/24", "dev", name)
            lab.exec(role, "ip", "link", "set", name, "up")

    return started(t, bring_up)


# --------------------------------------------------------------------------- OpenVPN


def _self_signed(cn: str) -> tuple[bytes, bytes, str]:
    """(key PEM, certificate PEM, SHA-256 fingerprint as AA:BB:...) of a fresh EC P-256
    self-signed certificate, like ``openssl req -x509 -newkey ec``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fp = cert.fingerprint(hashes.SHA256()).hex().upper()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), ":".join(
        fp[i:i + 2] for i in range(0, len(fp), 2))


def _static_key() -> bytes:
    """An OpenVPN static key file (2048 bits), as ``openvpn --genkey secret`` writes."""
    hexkey = secrets.token_hex(256)
    lines = [hexkey[i:i + 32] for i in range(0, len(hexkey), 32)]
    return ("#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n"
            + "\n".join(lines) + "\n-----END OpenVPN Static key V1-----\n").encode()


_OVPN_READY = "Initialization Sequence Completed"


def _logged(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def start_openvpn(lab: Lab, workdir: Path) -> Running:
    """OpenVPN peer-to-peer TLS over UDP, AES-256-GCM, DCO off; B is the TLS server."""
    workdir.mkdir(parents=True, exist_ok=True)
    ifaces = {"a": f"{lab.prefix}ova", "b": f"{lab.prefix}ovb"}
    inner = dict(zip("ab", INNER["openvpn"], strict=True))
    t = Running("openvpn", lab, inner["b"], ifaces)
    exe = _which("openvpn") or "openvpn"

    def bring_up() -> None:
        fps = {}
        for role in ifaces:
            key_pem, cert_pem, fps[role] = _self_signed(f"host{role}")
            _write_private(workdir / f"ovpn-{role}.key", key_pem)
            (workdir / f"ovpn-{role}.crt").write_bytes(cert_pem)
        _write_private(workdir / "ovpn-tls-crypt.key", _static_key())
        for role, name in ifaces.items():
            other = "b" if role == "a" else "a"
            common = [
                f"dev {name}", "dev-type tun", "proto udp4", "verb 3",
                f"cert {workdir / f'ovpn-{role}.crt'}", f"key {workdir / f'ovpn-{role}.key'}",
                f"peer-fingerprint {fps[other]}", f"tls-crypt {workdir / 'ovpn-tls-crypt.key'}",
                "data-ciphers AES-256-GCM", "data-ciphers-fallback AES-256-GCM",
                "disable-dco", f"ifconfig {inner[role]} {inner[other]}",
            ]
            if role == "a":
                common += ["tls-client", f"remote {lab.addr['b']} {OVPN_PORT}", "nobind"]
            else:
                common += ["tls-server", "dh none", f"local {lab.addr['b']}",
                           f"lport {OVPN_PORT}"]
            conf = workdir / f"ovpn-{role}.conf"
            conf.write_text("\n".join(common) + "\n")
            log = workdir / f"openvpn-{role}.log"
            t.logs.append(log)
            with log.open("w") as out:
                t.procs.append(lab.popen(role, exe, "--config", str(conf),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT))
        for log in t.logs:
            _wait(f"openvpn ({log.name})", functools.partial(_logged, log, _OVPN_READY), t,
                  START_TIMEOUT)

    return started(t, bring_up)


# --------------------------------------------------------------------------- strongSwan


def start_strongswan(lab: Lab, workdir: Path) -> Running:
    """charon (kernel-libipsec) on A and B, PSK, aes256gcm16; A initiates to B."""
    from .strongswan import Charon, CharonError, SwanConn

    workdir.mkdir(parents=True, exist_ok=True)
    inner = dict(zip("ab", INNER["strongswan"], strict=True))
    t = Running("strongswan", lab, inner["b"], {"a": "ipsec0", "b": "ipsec0"})
    psk = secrets.token_hex(24)
    charons: dict[str, Charon] = {}

    def bring_up() -> None:
        conns = {
            "a": SwanConn(name="c", local_addrs="%any", remote_addrs=lab.addr["b"],
                          local_id="hosta", remote_id="hostb", psk=psk,
                          esp_proposals="aes256gcm16",
                          local_ts=f"{inner['a']}/32", remote_ts=f"{inner['b']}/32"),
            "b": SwanConn(name="c", local_addrs=lab.addr["b"], remote_addrs="%any",
                          local_id="hostb", remote_id="hosta", psk=psk,
                          esp_proposals="aes256gcm16",
                          local_ts=f"{inner['b']}/32", remote_ts=f"{inner['a']}/32"),
        }
        try:
            for role in ("b", "a"):
                t.cleanups.append(functools.partial(
                    lab.exec, role, "ip", "addr", "del", f"{inner[role]}/32", "dev", "lo",
                    check=False))
                c = charons[role] = Charon.start(lab, role, workdir / role, conn=conns[role],
                                                 inner_addrs=[f"{inner[role]}/32"])
                assert c.proc is not None
                t.procs.append(c.proc)
                t.logs.append(c.log_path)
            charons["a"].initiate(timeout=15)
            for c in charons.values():
                c.wait_established(timeout=10)
        except CharonError as exc:
            lines = [x for x in str(exc).splitlines() if x.strip()]
            raise PeerError(lines[0][:160] if lines else "charon failed", str(exc)) from exc

    return started(t, bring_up)


#: name -> start function, for ``bench netns``
STARTERS: dict[str, Callable[[Lab, Path], Running]] = {
    "wireguard-go": start_wireguard,
    "openvpn": start_openvpn,
    "strongswan": start_strongswan,
}
