"""Root: two hosts behind symmetric NATs, reachable only through a TURN relay.

A behind NAT1 and C behind NAT2, both symmetric (address-and-port-dependent mapping and
filtering: ``nattypes`` "two" topology), so no direct path can exist. On the public host B
two coturn relays with long-term credentials (one relay port each, so that each side's
relayed address is known when the configurations are written; permission and channel
lifetimes shortened so that refreshes happen during the test). Each side runs a nattunnel node
with its TUN device (tests/traversal/turn_lab_node.py: ``nattunnel up`` plus the ``turn``
wiring) with ``relay = "always"`` towards the other's relayed address. IKE comes up through
the relays, ping goes both ways, iperf3 TCP runs for 3 s through them, and the throughput is
printed.
"""

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
from nattunnel.lab.coturn import Coturn, Relay, coturn_problems
from nattunnel.lab.nattypes import SYMMETRIC, NatLab
from nattunnel.lab.tunnels import PKG_ROOT
from tests.support.lab import require_lab_tools

A_IN, C_IN = "198.18.120.1", "198.18.120.3"
RELAY_A, RELAY_C = 50000, 50001
PERMISSION, CHANNEL = 8, 12


def _require() -> None:
    require_lab_tools()
    problems = coturn_problems()
    if problems:
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail(problems[0] + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
        pytest.skip(problems[0])


def _config(d: Path, me: str, other: str, mine: str, theirs: str, server: str,
            endpoint: str, initiate: bool) -> Path:
    path = d / f"{me}.toml"
    path.write_text(
        'listen = ["0.0.0.0:4500"]\nike_port = 0\n'
        f'turn = {{ server = "{server}", username = "nattunnel", password_file = "turn.pw" }}\n'
        f'[interface]\nname = "nt0"\naddresses = ["{mine}/24"]\n'
        f'[[peer]]\nname = "{other}"\nauth = "psk"\npsk_file = "k.psk"\n'
        f'local_id = "host{me}"\nremote_id = "host{other}"\n'
        f'allowed_ips = ["{theirs}/32"]\nlocal_ts = ["{mine}/32"]\n'
        f'endpoint = "{endpoint}"\nrelay = "always"\ninitiate = {str(initiate).lower()}\n')
    return path


def _line(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        out = proc.stdout.readline()
        if not out:
            err = proc.stderr.read() if proc.stderr is not None else ""
            raise AssertionError(f"the {what} node ended: {err[-3000:]}")
        if out.startswith("{"):
            result: dict[str, Any] = json.loads(out)
            return result


def _ping(lab: NatLab, ns: str, dest: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while True:
        cp = lab.exec(ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", dest, check=False)
        if cp.returncode == 0:
            return
        assert time.monotonic() < end, f"ping {dest} from {ns}: {cp.stdout}{cp.stderr}"
        time.sleep(0.5)


@pytest.mark.root
def test_symmetric_nats_both_sides_through_coturn(tmp_path: Path) -> None:
    _require()
    write_psk_file(tmp_path / "k.psk", b"correct horse battery staple", force=True)
    write_psk_file(tmp_path / "turn.pw", b"secret", force=True)
    lab = NatLab("two", SYMMETRIC, with_e=False)
    servers: list[Coturn] = []
    nodes: list[subprocess.Popen[str]] = []
    try:
        b = lab.addr["b"]
        for port, relay in ((3478, RELAY_A), (3480, RELAY_C)):
            servers.append(Coturn(b, None, tmp_path, port=port, alt_port=port + 1, lab=lab,
                                  ns="b", relay=Relay(min_port=relay, max_port=relay,
                                                      permission_lifetime=PERMISSION,
                                                      channel_lifetime=CHANNEL)).start())
        env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
        # C first (it answers), then A (it initiates)
        for me, other, mine, theirs, server, endpoint, initiate in (
                ("c", "a", C_IN, A_IN, f"{b}:3480", f"{b}:{RELAY_A}", False),
                ("a", "c", A_IN, C_IN, f"{b}:3478", f"{b}:{RELAY_C}", True)):
            cfg = _config(tmp_path, me, other, mine, theirs, server, endpoint, initiate)
            proc = lab.popen(me, sys.executable, "-m", "tests.traversal.turn_lab_node",
                             str(cfg), PERMISSION, CHANNEL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=str(PKG_ROOT))
            nodes.append(proc)
            ready = _line(proc, me)
            assert ready.get("ready"), ready
            assert ready["relayed"] == [b, RELAY_C if me == "c" else RELAY_A]
        _ping(lab, "a", C_IN)
        _ping(lab, "c", A_IN)
        srv = lab.popen("c", "iperf3", "-s", "-1", "-B", C_IN, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            cp = lab.exec("a", "iperf3", "-c", C_IN, "-t", "3", "-J", timeout=30)
        finally:
            lab.stop(srv)
        result = json.loads(cp.stdout)
        mbps = result["end"]["sum_received"]["bits_per_second"] / 1e6
        print(f"\niperf3 TCP through two coturn relays (A and C behind symmetric NATs): "
              f"{mbps:.1f} Mbit/s")
        assert mbps > 1
        # past the shortened permission lifetime: the refreshes kept it working
        time.sleep(CHANNEL - 4)
        _ping(lab, "a", C_IN, timeout=5)
        finals = []
        for proc in nodes:
            proc.terminate()
            finals.append(_line(proc, "stopping"))
        for final in finals:
            turn = final["turn"]
            assert turn["state"] == "allocated" and turn["errors"] == 0, turn
            assert turn["permission_refreshes"] >= 1 and turn["channel_data_in"] > 0, turn
            peer = next(iter(final["show"].values()))
            assert peer["path"]["kind"] == "relay" and peer["path"]["channel_bound"], peer
    finally:
        for proc in nodes:
            lab.stop(proc)
        for s in servers:
            s.stop()
        lab.close()
