"""A certificate chain larger than the path MTU (issue 14, item 2): nattunnel and charon each
authenticate with an RSA end-entity certificate under two intermediate CAs, all three sent in
CERT payloads (about 3 KB of IKE_AUTH each way), through a router that drops every IP
fragment. With IKE fragmentation (both sides' default) the tunnel comes up; with nattunnel's
``fragmentation = false`` it does not, and the router counted the IP fragments it dropped.
Both roles: nattunnel as the client behind the NAT, and as the gateway."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nattunnel.lab.pki import Leaf, Pki, make_chain
from nattunnel.lab.strongswan import Charon, CharonError, SwanConn
from nattunnel.lab.tunnels import control_path
from tests.interop.test_fragment_strongswan import drop_ip_fragments, fragments_dropped
from tests.interop.test_interop_strongswan import (
    INNER,
    PUBLIC_B,
    established,
    ping,
    require_strongswan,
    wait,
)
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import PKG_ROOT, Node, tun_present

NAMES = {"a": "client.example", "b": "gw.example"}


def pki(work: Path, role: str) -> Pki:
    """``role``'s PKI: a root, two intermediates, the end entity (RSA 2048)."""
    name = NAMES[role]
    return make_chain(work / f"pki-{role}", kind="rsa", bits=2048, intermediates=2,
                      leaves={"me": Leaf(f"C=CH, O=strongSwan, CN={name}", dns=(name,))},
                      root_dn=f"C=CH, O=strongSwan, CN={role} Root CA")


def start_nattunnel(lab: Lab, role: str, work: Path, mine: Pki, theirs: Pki, *,
                    initiate: bool, fragmentation: bool) -> Node:
    other = "b" if role == "a" else "a"
    certs = [mine.leaf["me"].cert_path, *(i.cert_path for i in reversed(mine.intermediates))]
    lines = [
        'listen = ["0.0.0.0:4500"]', "ike_port = 500",
        f'control_socket = "{control_path(work, role)}"',
        "[interface]", 'kind = "tun"', 'name = "nt0"', f'addresses = ["{INNER[role]}/32"]',
        "[[peer]]", f'name = "{other}"', 'auth = "pubkey"',
        f'local_id = "{NAMES[role]}"', f'remote_id = "{NAMES[other]}"',
        f'private_key = "{mine.leaf["me"].key_path}"',
        "certs = [" + ", ".join(f'"{p}"' for p in certs) + "]",
        f'cacerts = ["{theirs.root.cert_path}"]',
        f'allowed_ips = ["{INNER[other]}/32"]', "dpd_interval = 5",
        f"fragmentation = {'true' if fragmentation else 'false'}",
        f'endpoint = "{PUBLIC_B}"' if initiate else "initiate = false",
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


def start_charon(lab: Lab, role: str, work: Path, mine: Pki, theirs: Pki) -> Charon:
    other = "b" if role == "a" else "a"
    conn = SwanConn(
        name="c", local_addrs=PUBLIC_B if role == "b" else "%any",
        remote_addrs="%any" if role == "b" else PUBLIC_B, auth="pubkey",
        local_id=NAMES[role], remote_id=NAMES[other],
        local_ts=f"{INNER[role]}/32", remote_ts=f"{INNER[other]}/32",
        extra={"send_cert": "always", "fragmentation": "yes"},
        local_extra={"certs": "me.pem"}, remote_extra={"cacerts": "peer-root.pem"})
    files = {"x509/me.pem": mine.leaf["me"].cert_pem,
             "private/me.key": mine.leaf["me"].key_pem,
             "x509ca/peer-root.pem": theirs.root.cert_pem}
    for i, ca in enumerate(mine.intermediates, 1):  # sent to the peer with the certificate
        files[f"x509ca/my-int{i}.pem"] = ca.cert_pem
    return Charon.start(lab, role, work / "charon", conn=conn,
                        inner_addrs=[f"{INNER[role]}/32"], files=files)


def ike_auth_sizes(nt_log: str) -> list[int]:
    """The octets of each IKE_AUTH message nattunnel generated."""
    return [int(m) for m in re.findall(r"generating IKE_AUTH \w+ 1 \[.*\] to \S+ \((\d+) "
                                       r"bytes\)", nt_log)]


@pytest.mark.root
@pytest.mark.parametrize("on", [True, False], ids=["fragmentation", "no-fragmentation"])
def test_nattunnel_client_chain_larger_than_the_mtu(lab: Lab, tmp_path: Path,
                                                    on: bool) -> None:
    require_strongswan()
    drop_ip_fragments(lab)
    a, b = pki(tmp_path, "a"), pki(tmp_path, "b")
    charon = start_charon(lab, "b", tmp_path, b, a)
    nt = start_nattunnel(lab, "a", tmp_path, a, b, initiate=True, fragmentation=on)
    try:
        if on:
            assert wait(lambda: established(charon), 20), nt.log() + charon.log()[-4000:]
            assert ping(lab, "a", "b") and ping(lab, "b", "a")
            log, swan = nt.log(), charon.log()
            assert all(n > 1500 for n in ike_auth_sizes(log)), ike_auth_sizes(log)
            assert re.search(r"generating IKE_AUTH request 1 .* in [3-9] fragments", log)
            assert re.search(r"reassembled response 1 from [2-9] fragments", log)
            assert "received issuer cert" in swan and "reassembled fragmented IKE" in swan
            assert "Traceback" not in log
        else:
            assert not wait(lambda: established(charon), 8)
            assert fragments_dropped(lab) > 0
            assert all(n > 1500 for n in ike_auth_sizes(nt.log()))
    finally:
        charon.stop()
        lab.stop(nt.proc)


@pytest.mark.root
@pytest.mark.parametrize("on", [True, False], ids=["fragmentation", "no-fragmentation"])
def test_nattunnel_gateway_chain_larger_than_the_mtu(lab: Lab, tmp_path: Path,
                                                     on: bool) -> None:
    require_strongswan()
    drop_ip_fragments(lab)
    a, b = pki(tmp_path, "a"), pki(tmp_path, "b")
    nt = start_nattunnel(lab, "b", tmp_path, b, a, initiate=False, fragmentation=on)
    charon = start_charon(lab, "a", tmp_path, a, b)
    try:
        if on:
            charon.initiate("c")
            assert wait(lambda: established(charon), 20), nt.log() + charon.log()[-4000:]
            assert ping(lab, "a", "b") and ping(lab, "b", "a")
            log, swan = nt.log(), charon.log()
            assert re.search(r"reassembled request 1 from [2-9] fragments", log)
            assert re.search(r"generating IKE_AUTH response 1 .* in [3-9] fragments", log)
            assert "received issuer cert" in swan and "reassembled fragmented IKE" in swan
            assert "Traceback" not in log
        else:
            # charon's request goes in fragments (nattunnel answered FRAGMENTATION_SUPPORTED
            # before it knew the peer) and is taken; nattunnel's answer goes whole
            with pytest.raises(CharonError):
                charon.initiate("c", timeout=8)
            assert not established(charon)
            assert fragments_dropped(lab) > 0
            assert re.search(r"reassembled request 1 from [2-9] fragments", nt.log())
    finally:
        charon.stop()
        lab.stop(nt.proc)
