"""nattunnel endpoints in the NAT lab: ``nattunnel up`` on its hosts, with manual SAs or IKEv2.

Host B (public) is the hub; hosts A and C (behind the NAT) each have a tunnel to B, with
manual SAs and keys written under a work directory (``start_tunnels``), or with IKE-managed
peers (``start_ike_tunnels``). Inner addresses are /32s in 198.18.100.0/24 with routes to the
peers' inner addresses on each TUN device. Each endpoint is a ``Node``: its process (started
with ``Lab.popen``, stopped by PID), its log and its counters (SIGUSR1 -> ``--stats`` JSON).
Used by the root tests (tests/support/tunnel_lab.py) and by ``nattunnel bench netns`` and
``bench attack``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..esp.suite import suite_by_name
from ..keys import generate_keymat, write_key_file
from .netns import Lab

__all__ = [
    "IKE_ID",
    "INNER",
    "PKG_ROOT",
    "SPI",
    "Node",
    "Tunnels",
    "ike_sas",
    "key_file",
    "start_ike_node",
    "start_ike_tunnels",
    "start_tunnels",
    "tun_present",
    "wait_ike_up",
]

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
                    doc: dict[str, Any] = json.loads(self.stats_path.read_text())
                except json.JSONDecodeError:
                    pass
                else:
                    return doc
            time.sleep(0.05)
        raise TimeoutError(f"no stats from {self.role}; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    @property
    def control(self) -> Path:
        """The endpoint's control socket (``control_path``)."""
        return control_path(self.log_path.parent, self.role)

    def show(self, peer: str | None = None) -> dict[str, Any]:
        """The endpoint's status through its control socket (``nattunnel show --json``)."""
        from ..control.protocol import request

        status: dict[str, Any] = request(self.control, "show", {"peer": peer})
        return status

    def ask(self, command: str, **args: object) -> Any:
        """One control request (initiate, terminate, rekey, reload, down): its result."""
        from ..control.protocol import request

        return request(self.control, command, args)


def control_path(workdir: Path, role: str) -> Path:
    """The control socket of ``role``'s endpoint in the lab run in ``workdir``: short (a
    Unix socket's path has at most 107 octets, a test's directory may be longer) and
    unique per work directory."""
    digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:12]
    return Path("/tmp/nattunnel-lab") / f"{digest}-{role}.sock"


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
        counters: dict[str, Any] = self.nodes[role].stats()["peers"][peer]
        return counters

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
            f'listen = ["0.0.0.0:4500"]\ncontrol_socket = "{control_path(workdir, h)}"\n'
            '[interface]\nkind = "tun"\nname = "nt0"\n'
            f'addresses = ["{INNER[h]}/32"]\n\n'
            + _peer_block("b", f"{lab.addr['b']}:4500", INNER["b"], h_in, b_in, from_b, to_b,
                          suite, keepalive, True, interval)
        )
    configs["b"] = (
        f'listen = ["0.0.0.0:4500"]\ncontrol_socket = "{control_path(workdir, "b")}"\n'
        '[interface]\nkind = "tun"\nname = "nt0"\n'
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


def _ike_config(role: str, peers: list[dict[str, object]], workdir: Path) -> str:
    lines = ['listen = ["0.0.0.0:4500"]',
             f"control_socket = {_toml(control_path(workdir, role))}", "", "[interface]",
             'kind = "tun"', 'name = "nt0"',
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

    configs = {h: _ike_config(h, [peer_table(h, "b", host_peer)], workdir) for h in hosts}
    configs["b"] = _ike_config("b", [peer_table("b", h, b_peer) for h in hosts], workdir)
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
    sas: list[dict[str, Any]] = node.stats()["ike"]["ike_sas"]
    return sas


def wait_ike_up(t: Tunnels, roles: Sequence[str] = ("a", "b"), timeout: float = 10.0) -> bool:
    """Wait until each of ``roles`` has an established IKE SA with a child SA."""
    def up(role: str) -> bool:
        return any(sa["state"] == "established" and sa["children"]
                   for sa in ike_sas(t.nodes[role]))

    return t.lab.wait_for(lambda: all(up(r) for r in roles), timeout=timeout, interval=0.1)
