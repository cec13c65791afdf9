"""nattunnel endpoints in the NAT lab: keys, configs, ``nattunnel up`` processes, stats.

Host B (public, 198.18.0.2) is the hub; hosts A and C (behind the router's NAT) each have a
tunnel to B. Inner addresses: A 198.18.100.1, B 198.18.100.2, C 198.18.100.3 (all /32, with
routes to the peers' inner addresses on the TUN device).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nattunnel.keys import generate_keymat, write_key_file
from nattunnel.suite import suite_by_name
from tests.lab import Lab

INNER = {"a": "198.18.100.1", "b": "198.18.100.2", "c": "198.18.100.3"}
SPI = {"a": (0x1A00, 0x2A00), "c": (0x1C00, 0x2C00)}  # (B's inbound, the host's inbound)
REPO = Path(__file__).resolve().parent.parent


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
    lab: Lab
    dir: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def ping(self, src: str, dst: str, count: int = 1, timeout: float = 2.0) -> bool:
        r = self.lab.exec(src, "ping", "-c", count, "-W", int(timeout), "-i", "0.2",
                          INNER[dst], check=False, timeout=timeout * count + 5)
        return r.returncode == 0

    def stop(self, role: str) -> None:
        self.lab.stop(self.nodes[role].proc, timeout=5.0)


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


def start(lab: Lab, workdir: Path, hosts: tuple[str, ...] = ("a",), *,
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
        to_b, from_b = keys / f"{h}-to-b.key", keys / f"b-to-{h}.key"
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
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
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
