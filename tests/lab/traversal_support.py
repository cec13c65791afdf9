"""Shared pieces of the traversal lab tests and ``bench traversal``'s test: configurations
for two nattunnel nodes, starting them (tests/lab/traversal_node.py) in lab namespaces,
reading their status files, ping, and blocking a direct path in a router."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nattunnel.keys import write_psk_file
from nattunnel.lab.coturn import coturn_problems
from nattunnel.lab.netns import Lab
from nattunnel.lab.tunnels import PKG_ROOT
from tests.support.lab import require_lab_tools

#: the tunnel's inner addresses of the two sides
LEFT_IN, RIGHT_IN = "198.18.120.1", "198.18.120.3"


def require() -> None:
    require_lab_tools()
    problems = coturn_problems()
    if problems:
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail(problems[0] + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
        pytest.skip(problems[0])


def secrets(d: Path) -> None:
    write_psk_file(d / "k.psk", b"correct horse battery staple", force=True)
    write_psk_file(d / "turn.pw", b"secret", force=True)


def config(d: Path, me: str, other: str, mine: str, theirs: str, *, endpoint: str | None,
           initiate: bool, relay: str = "auto", turn: str | None = None,
           tag: str = "") -> Path:
    """A node's TOML: one PSK peer; ``turn``: the TURN server (host:port)."""
    path = d / f"{me}{tag}.toml"
    lines = ['listen = ["0.0.0.0:4500"]', "ike_port = 0"]
    if turn is not None:
        lines.append(f'turn = {{ server = "{turn}", username = "nattunnel", '
                     'password_file = "turn.pw" }')
    lines += ["[interface]", 'name = "nt0"', f'addresses = ["{mine}/24"]',
              "[[peer]]", f'name = "{other}"', 'auth = "psk"', 'psk_file = "k.psk"',
              f'local_id = "host{me}"', f'remote_id = "host{other}"',
              f'allowed_ips = ["{theirs}/32"]', f'local_ts = ["{mine}/32"]',
              f'relay = "{relay}"', f"initiate = {str(initiate).lower()}",
              "dpd_interval = 10"]
    if endpoint is not None:
        lines.append(f'endpoint = "{endpoint}"')
    path.write_text("\n".join(lines) + "\n")
    return path


class NodeProc:
    """A traversal_node in a namespace, with its status file."""

    def __init__(self, lab: Lab, ns: str, cfg: Path, options: dict[str, Any]) -> None:
        self.lab, self.status_file = lab, cfg.with_suffix(".status.json")
        self.status_file.unlink(missing_ok=True)
        env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
        self.stderr = cfg.with_suffix(".stderr")
        self._err = self.stderr.open("w")
        self.proc = lab.popen(ns, sys.executable, "-m", "tests.lab.traversal_node", str(cfg),
                              json.dumps(options), str(self.status_file),
                              stdout=subprocess.DEVNULL, stderr=self._err, env=env,
                              cwd=str(PKG_ROOT))

    def status(self) -> dict[str, Any]:
        for _ in range(50):
            try:
                result: dict[str, Any] = json.loads(self.status_file.read_text())
                return result
            except (OSError, ValueError):
                if self.proc.poll() is not None:
                    raise AssertionError("the node ended: "
                                         + self.stderr.read_text()[-3000:]) from None
                time.sleep(0.1)
        raise AssertionError("no status from the node: " + self.stderr.read_text()[-3000:])

    def peer(self, name: str | None = None) -> dict[str, Any]:
        """The status of peer ``name`` (default: the first)."""
        peers = self.status()["peers"]
        peer: dict[str, Any] = peers[name] if name is not None else next(iter(peers.values()))
        return peer

    def stop(self) -> dict[str, Any] | None:
        self.lab.stop(self.proc)
        self._err.close()
        try:
            final: dict[str, Any] = json.loads(self.status_file.read_text())
            return final
        except (OSError, ValueError):
            return None


def wait_for(what: str, check: Any, timeout: float, step: float = 0.1) -> float:
    """Poll ``check()`` until true; the seconds it took (AssertionError after timeout)."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def ping_ok(lab: Lab, ns: str, dest: str, count: int = 2) -> bool:
    cp = lab.exec(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", dest, check=False)
    return cp.returncode == 0


def block_direct(lab: Lab, router_ns: str, host: str, on: bool) -> None:
    """Drop UDP between the router's LAN side and ``host`` (forwarded both ways), so that
    only the relay (another host) can carry the tunnel; on=False removes the block."""
    if on:
        lab.exec(router_ns, "nft", "-f", "-", input=(
            "table inet ntblock {\n chain blk {\n  type filter hook forward priority -5; "
            f"policy accept;\n  ip daddr {host} udp dport 4500 drop\n"
            f"  ip saddr {host} udp sport 4500 drop\n }}\n}}\n"))
    else:
        lab.exec(router_ns, "nft", "delete", "table", "inet", "ntblock", check=False)


def server_config(d: Path, names: list[str], tag: str = "") -> Path:
    """A nattunnel mediation server (``mediation_server = true``) for the peers ``names``
    (identities ``host<name>``)."""
    path = d / f"mediator{tag}.toml"
    lines = ['listen = ["0.0.0.0:4500"]', "mediation_server = true", "[interface]",
             'name = "nt0"', 'addresses = ["198.18.120.2/24"]']
    for name in names:
        lines += ["[[peer]]", f'name = "{name}"', "mediation = true", 'auth = "psk"',
                  'psk_file = "k.psk"', 'local_id = "mediator"', f'remote_id = "host{name}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def mediated_config(d: Path, me: str, other: str, mine: str, theirs: str, server: str, *,
                    initiate: bool, tag: str = "", turn: str | None = None) -> Path:
    """A peer that reaches ``other`` through the mediation server at ``server``; with
    ``turn`` (host:port), a TURN server too: relay first, then direct (``relay = "auto"``)."""
    path = d / f"{me}{tag}.toml"
    lines = ['listen = ["0.0.0.0:4500"]']
    if turn is not None:
        lines.append(f'turn = {{ server = "{turn}", username = "nattunnel", '
                     'password_file = "turn.pw" }')
    lines += ["[interface]", 'name = "nt0"',
             f'addresses = ["{mine}/24"]',
             "[[peer]]", 'name = "mediator"', "mediation = true", f'endpoint = "{server}"',
             'auth = "psk"', 'psk_file = "k.psk"', f'local_id = "host{me}"',
             'remote_id = "mediator"',
             "[[peer]]", f'name = "{other}"', 'mediated_by = "mediator"', 'auth = "psk"',
             'psk_file = "k.psk"', f'local_id = "host{me}"', f'remote_id = "host{other}"',
             f'allowed_ips = ["{theirs}/32"]', f'local_ts = ["{mine}/32"]',
             f"initiate = {str(initiate).lower()}", "dpd_interval = 10",
             "keepalive_interval = 15"]
    path.write_text("\n".join(lines) + "\n")
    return path
