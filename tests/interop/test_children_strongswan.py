"""Several child SAs per IKE SA for several subnets, with strongSwan charon 5.9.8 through the
lab's real NAT (issue 14 item 4): charon on A (behind the NAT) has two subnets behind it and a
child SA for each (``children { n50 {...} n51 {...} }``, both to B's inner address);
nattunnel on B lists both subnets in ``allowed_ips`` (one child config, narrowed per child SA).
B's pings to an address in each subnet go out on that subnet's child SA, each counted by its
own child SA in charon's ``--list-sas``; a rekey of one child keeps the other's SPIs and the
routes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nattunnel.lab.strongswan import Charon, SwanConn
from nattunnel.lab.tunnels import control_path
from nattunnel.lab.vici import SwanChildSa
from tests.interop.test_interop_strongswan import (
    ID,
    INNER,
    PUBLIC_B,
    require_strongswan,
    setup_keys,
    wait,
)
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import PKG_ROOT, Node, tun_present

SUBNETS = {"n50": ("198.18.50.0/24", "198.18.50.1"), "n51": ("198.18.51.0/24", "198.18.51.1")}


def _children(ch: Charon) -> dict[str, SwanChildSa]:
    return {c.name: c for sa in ch.list_sas() for c in sa.children if c.state == "INSTALLED"}


def _run(lab: Lab, work: Path, role: str, peer: list[str]) -> Node:
    """nattunnel in ``role``'s namespace with one PSK [[peer]] (``peer``: its lines)."""
    lines = [
        'listen = ["0.0.0.0:4500"]',
        f'control_socket = "{control_path(work, role)}"',
        "[interface]", 'kind = "tun"', 'name = "nt0"', f'addresses = ["{INNER[role]}/32"]',
        "[[peer]]", 'auth = "psk"', "dpd_interval = 5",
        f'psk_file = "{work / "keys" / "psk"}"', *peer,
    ]
    cfg = work / "nt.toml"
    cfg.write_text("\n".join(lines) + "\n")
    log, stats = work / "nt.log", work / "nt.stats.json"
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
    proc = lab.popen(role, sys.executable, "-m", "nattunnel", "up", str(cfg), "--stats",
                     str(stats), "--log-level", "debug", stdout=log.open("w"),
                     stderr=subprocess.STDOUT, env=env)
    node = Node(role, proc, stats, log)
    assert lab.wait_for(lambda: tun_present(lab, role), 10), node.log()
    return node


def _start_nattunnel(lab: Lab, work: Path) -> Node:
    """nattunnel on B, the responder, with both of charon's subnets as the peer's prefixes."""
    nets = ", ".join(f'"{n}"' for n, _ in SUBNETS.values())
    return _run(lab, work, "b", ['name = "a"', f'local_id = "{ID["b"]}"',
                                 f'remote_id = "{ID["a"]}"', f"allowed_ips = [{nets}]"])


def _ping(lab: Lab, src: str, dst: str, source: str | None = None) -> bool:
    args = ["ping", "-c", "3", "-i", "0.2", "-W", "2", dst]
    if source:
        args[1:1] = ["-I", source]
    return lab.exec(src, *args, check=False, timeout=15).returncode == 0


@pytest.mark.root
def test_two_children_for_two_subnets_each_routed_to_its_sa(lab: Lab, tmp_path: Path) -> None:
    require_strongswan()
    kw = setup_keys(tmp_path, "psk")
    nt = _start_nattunnel(lab, tmp_path)
    conn = SwanConn(name="n50", local_addrs="%any", remote_addrs=PUBLIC_B, local_id=ID["a"],
                    remote_id=ID["b"], local_ts=SUBNETS["n50"][0],
                    remote_ts=f"{INNER['b']}/32",
                    more_children={"n51": {"local_ts": SUBNETS["n51"][0],
                                           "remote_ts": f"{INNER['b']}/32"}},
                    **kw)  # type: ignore[arg-type]
    charon = Charon.start(lab, "a", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{a}/32" for _, a in SUBNETS.values()])
    charon.initiate("n50")
    charon.initiate("n51", ike="n50")
    assert wait(lambda: set(_children(charon)) == set(SUBNETS)), nt.log() + charon.log()[-3000:]
    assert len(charon.list_sas()) == 1  # both children on one IKE SA
    for name, (_, addr) in SUBNETS.items():
        other = next(n for n in SUBNETS if n != name)
        before = _children(charon)
        assert _ping(lab, "b", addr), nt.log()[-3000:]
        after = _children(charon)
        assert after[name].packets_in >= before[name].packets_in + 3
        assert after[other].packets_in == before[other].packets_in  # not on the other SA
        # and back from that subnet on its own child SA
        assert _ping(lab, "a", INNER["b"], source=addr)
    # a rekey of one child keeps the other's SPIs, and both subnets still reach their SAs
    first = _children(charon)
    charon.rekey_child("n50")
    assert wait(lambda: "n50" in _children(charon)
                and _children(charon)["n50"].spi_in != first["n50"].spi_in)
    now = _children(charon)
    assert (now["n51"].spi_in, now["n51"].spi_out) == (first["n51"].spi_in,
                                                       first["n51"].spi_out)
    for _, addr in SUBNETS.values():
        assert _ping(lab, "b", addr)
    assert nt.stats()["peers"]["a"]["tx_packets"] >= 12  # every SA's packets counted
    assert "Traceback" not in nt.log()
    charon.stop()
    lab.stop(nt.proc)


def _start_initiator(lab: Lab, work: Path) -> Node:
    """nattunnel on A, the initiator: a child SA per subnet of B, and a third (n52) that
    charon has no child config for."""
    lines = ['name = "b"', f'local_id = "{ID["a"]}"', f'remote_id = "{ID["b"]}"',
             f'endpoint = "{PUBLIC_B}"', "initiate = true",
             'allowed_ips = ["198.18.50.0/24", "198.18.51.0/24", "198.18.52.0/24"]']
    for name, net in (("n50", "198.18.50.0/24"), ("n51", "198.18.51.0/24"),
                      ("n52", "198.18.52.0/24")):
        lines += ["[[peer.children]]", f'name = "{name}"', f'remote_ts = ["{net}"]']
    return _run(lab, work, "a", lines)


@pytest.mark.root
def test_nattunnel_asks_charon_for_a_child_sa_per_subnet(lab: Lab, tmp_path: Path) -> None:
    """nattunnel on A (behind the NAT) initiates with ``[[peer.children]]`` n50, n51 and n52
    to charon on B, whose connection has children n50 and n51 (two subnets behind it): n50
    comes up in IKE_AUTH and n51 by CREATE_CHILD_SA, both on one IKE SA, each with its own
    selectors on both sides; n52 is refused (TS_UNACCEPTABLE) and the others are not
    touched; A's pings to each subnet go out on that subnet's child SA."""
    require_strongswan()
    kw = setup_keys(tmp_path, "psk")
    conn = SwanConn(name="n50", local_addrs=PUBLIC_B, remote_addrs="%any", local_id=ID["b"],
                    remote_id=ID["a"], local_ts=SUBNETS["n50"][0],
                    remote_ts=f"{INNER['a']}/32",
                    more_children={"n51": {"local_ts": SUBNETS["n51"][0],
                                           "remote_ts": f"{INNER['a']}/32"}},
                    **kw)  # type: ignore[arg-type]
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{a}/32" for _, a in SUBNETS.values()])
    nt = _start_initiator(lab, tmp_path)
    try:
        assert wait(lambda: set(_children(charon)) == set(SUBNETS)), (
            nt.log()[-4000:] + charon.log()[-3000:])
        assert len(charon.list_sas()) == 1  # both children on one IKE SA
        kids = _children(charon)
        for name, (net, _) in SUBNETS.items():
            assert kids[name].local_ts == (net,)
            assert kids[name].remote_ts == (f"{INNER['a']}/32",)
        assert wait(lambda: "child SA n52 refused: TS_UNACCEPTABLE in the CREATE_CHILD_SA "
                            "response" in nt.log()), nt.log()[-4000:]
        (ike,) = nt.show()["peers"]["b"]["ike_sas"]
        ours = {c["name"]: c for c in ike["children"]}
        assert set(ours) == set(SUBNETS)
        for name, (net, _) in SUBNETS.items():
            assert ours[name]["remote_ts"] == [net] and ours[name]["in_use"]
        for name, (_, addr) in SUBNETS.items():
            other = next(n for n in SUBNETS if n != name)
            before = _children(charon)
            assert _ping(lab, "a", addr), nt.log()[-3000:]
            after = _children(charon)
            assert after[name].packets_in >= before[name].packets_in + 3
            assert after[other].packets_in == before[other].packets_in
        assert set(_children(charon)) == set(SUBNETS)  # n52's refusal took nothing down
        assert "Traceback" not in nt.log()
    finally:
        charon.stop()
        lab.stop(nt.proc)
