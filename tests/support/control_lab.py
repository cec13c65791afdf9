"""Helpers for the control-socket lab tests (tests/lab/test_control_lab.py, root only).

Everything goes through the real command line, as an operator would type it:
``python3 -m nattunnel show --json --socket PATH`` and the other control commands, run with
the lab endpoints' PYTHONPATH (``PKG_ROOT``). A control socket is a file-system path, so the
commands run in the test's own network namespace and reach an endpoint in any lab namespace.

Also: IKE configurations written for the lab's hosts (``write_ike_config``), an endpoint
started from one (``start_node``), the TUN device's own counters (``tun_counters``: what the
kernel says went through ``nt0``) and iperf3 runs through the tunnel (``Iperf``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from nattunnel.lab.netns import Lab
from nattunnel.lab.strongswan import strongswan_problems
from nattunnel.lab.tunnels import (
    IKE_ID,
    INNER,
    PKG_ROOT,
    Node,
    Tunnels,
    control_path,
    start_ike_node,
)

__all__ = [
    "IPERF_PORT",
    "Iperf",
    "child_spis",
    "cli",
    "ike_peer",
    "ike_sa",
    "require_strongswan",
    "show",
    "start_node",
    "tun_counters",
    "write_ike_config",
    "write_text_psk",
]

#: the iperf3 server's port on the inner address
IPERF_PORT = 5211
#: a control command is one short request: it answers well within this
CLI_TIMEOUT = 20.0


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")


def cli(node: Node | Path, *args: str, timeout: float = CLI_TIMEOUT
        ) -> subprocess.CompletedProcess[str]:
    """``python3 -m nattunnel ARGS --socket PATH`` against ``node``'s control socket (or
    the socket at a path); its exit status and output, not checked."""
    path = node.control if isinstance(node, Node) else node
    return subprocess.run([sys.executable, "-m", "nattunnel", *args, "--socket", str(path)],
                          capture_output=True, text=True, timeout=timeout, env=_env(),
                          stdin=subprocess.DEVNULL, check=False)


def show(node: Node | Path, peer: str | None = None) -> dict[str, Any]:
    """``nattunnel show [PEER] --json``: the status, parsed (AssertionError if it failed)."""
    cp = cli(node, "show", *([peer] if peer else []), "--json")
    assert cp.returncode == 0, f"show failed ({cp.returncode}): {cp.stderr}"
    doc: dict[str, Any] = json.loads(cp.stdout)
    assert doc["format"] == 1, doc
    return doc


def ike_sa(status: Mapping[str, Any], peer: str) -> dict[str, Any] | None:
    """The peer's one established, not rekeyed IKE SA in a status, or None."""
    live = [sa for sa in status["peers"][peer]["ike_sas"]
            if sa["state"] == "established" and not sa["rekeyed"]]
    assert len(live) <= 1, live
    return live[0] if live else None


def child_spis(status: Mapping[str, Any], peer: str, *, in_use: bool = False
               ) -> set[tuple[str, str]]:
    """(spi_in, spi_out) of the peer's child SAs in a status (``in_use``: only the one
    traffic goes out on)."""
    return {(c["spi_in"], c["spi_out"])
            for sa in status["peers"][peer]["ike_sas"] for c in sa["children"]
            if c["in_use"] or not in_use}


def require_strongswan() -> None:
    """Skip (or fail, under NATTUNNEL_REQUIRE_ROOT=1) unless charon can run here."""
    problems = strongswan_problems()
    if problems:
        reason = "strongSwan unavailable: " + "; ".join(problems)
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail(reason + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
        pytest.skip(reason)


def write_text_psk(path: Path, secret: str) -> Path:
    """A PSK file holding ``secret`` as text (the same octets as charon's ``secret = "..."``),
    mode 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return path


def tun_counters(lab: Lab, role: str, dev: str = "nt0") -> dict[str, int]:
    """The TUN device's own counters in ``role``'s namespace (``ip -j -s link``): tx is
    what the kernel handed to nattunnel (read from the device), rx what nattunnel wrote."""
    cp = lab.exec(role, "ip", "-j", "-s", "link", "show", "dev", dev)
    (link,) = json.loads(cp.stdout)
    st = link["stats64"]
    return {"rx_bytes": st["rx"]["bytes"], "rx_packets": st["rx"]["packets"],
            "tx_bytes": st["tx"]["bytes"], "tx_packets": st["tx"]["packets"],
            "tx_dropped": st["tx"]["dropped"], "rx_dropped": st["rx"]["dropped"]}


# --- configurations ----------------------------------------------------------------------------
def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def ike_peer(me: str, other: str, psk_file: Path, **extra: object) -> dict[str, object]:
    """A PSK IKE peer table of ``me`` for ``other`` (lab identities, ``hostX``, and inner
    addresses; ``extra`` adds or overrides keys: ``endpoint``, ``initiate``,
    ``allowed_ips`` for a host the lab does not have, ...)."""
    table: dict[str, object] = {
        "name": other, "auth": "psk", "psk_file": psk_file,
        "local_id": IKE_ID.get(me, f"host{me}"), "remote_id": IKE_ID.get(other, f"host{other}"),
        "allowed_ips": [f"{INNER[other]}/32"] if other in INNER else [], "initiate": False,
    }
    table.update(extra)
    return table


def write_ike_config(workdir: Path, role: str, peers: Iterable[Mapping[str, object]],
                     *, inner: str | None = None, path: Path | None = None) -> Path:
    """``workdir/ROLE.toml`` (or ``path``): a TUN endpoint on 0.0.0.0:4500 with its lab
    control socket and these peer tables."""
    lines = ['listen = ["0.0.0.0:4500"]',
             f"control_socket = {_toml(control_path(workdir, role))}", "", "[interface]",
             'kind = "tun"', 'name = "nt0"', f'addresses = ["{inner or INNER[role]}/32"]', ""]
    for peer in peers:
        lines.append("[[peer]]")
        lines += [f"{k} = {_toml(v)}" for k, v in peer.items()]
        lines.append("")
    out = path or workdir / f"{role}.toml"
    out.write_text("\n".join(lines))
    return out


def start_node(t: Tunnels, role: str) -> Node:
    """``nattunnel up`` for ``role`` with ``t.dir/ROLE.toml``; once it listens and its
    control socket answers."""
    node = start_ike_node(t, role)
    assert t.lab.wait_for(lambda: cli(node, "show").returncode == 0, timeout=10,
                          interval=0.2), node.log()
    return node


# --- iperf3 through the tunnel -----------------------------------------------------------------
class Iperf:
    """One iperf3 run from ``client`` to ``server``'s inner address: the server (``-s -1``)
    and the client started at once, both with JSON output; ``result()`` waits for both."""

    def __init__(self, lab: Lab, client: str, server: str, *, seconds: int,
                 udp: bool = False, bitrate: str | None = None, length: int | None = None
                 ) -> None:
        self.lab = lab
        self.seconds = seconds
        host = INNER[server]
        self.server = lab.popen(server, "iperf3", "-s", "-1", "-J", "-B", host, "-p",
                                IPERF_PORT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        # the server listens within a moment; until then the client would be refused
        assert lab.wait_for(lambda: self._listening(server), timeout=5, interval=0.05)
        argv: list[str | int] = ["iperf3", "-c", host, "-p", IPERF_PORT, "-J",
                                 "-t", seconds, "--connect-timeout", 3000]
        if udp:
            argv.append("-u")
        if bitrate is not None:
            argv += ["-b", bitrate]
        if length is not None:
            argv += ["-l", length]
        self.started = time.monotonic()
        self.client = lab.popen(client, *argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def _listening(self, role: str) -> bool:
        cp = self.lab.exec(role, "ss", "-Htln", f"sport = :{IPERF_PORT}", check=False)
        return bool(cp.stdout.strip())

    def running(self) -> bool:
        return self.client.poll() is None

    def result(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The client's and the server's JSON reports (AssertionError if one failed)."""
        out, err = self.client.communicate(timeout=self.seconds + 30)
        assert self.client.returncode == 0, f"iperf3 client: {out[-2000:]} {err}"
        sout, serr = self.server.communicate(timeout=15)
        assert self.server.returncode == 0, f"iperf3 server: {sout[-2000:]} {serr}"
        client: dict[str, Any] = json.loads(out)
        server: dict[str, Any] = json.loads(sout)
        return client, server
