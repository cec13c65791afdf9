"""Road warriors with strongSwan (charon 5.9.8, kernel-libipsec) through the lab's real NAT,
both directions (docs/road-warrior.md):

- nattunnel on A (behind the NAT, ``vips = ["0.0.0.0"]``) to a charon gateway on B with a
  virtual IP pool and DNS: full tunnel (0.0.0.0/0) and split tunnel (198.18.50.0/24); ping
  and TCP to 198.18.50.1 behind the gateway; after stop the client's routes, address and
  DNS are gone;
- charon on A and on C (both behind the NAT, ``vips = 0.0.0.0``) to a nattunnel gateway on
  B with a pool: distinct addresses, ping and TCP from each, the pool's DNS server.

With certificates (ECDSA, each side's chain with an intermediate CA, ``nattunnel.lab.pki``) or
a PSK.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nattunnel.lab.pki import Leaf, Pki, make_chain
from nattunnel.lab.strongswan import Charon, SwanConn
from nattunnel.lab.tunnels import control_path
from tests.interop.test_certs_strongswan import PLUGINS, charon_files
from tests.interop.test_interop_strongswan import (
    _CLIENT,
    _SERVER,
    PSK,
    PUBLIC_B,
    established,
    require_strongswan,
    wait,
)
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import PKG_ROOT, Node, tun_present

BEHIND = "198.18.50.1"  # an address behind the gateway (on B's lo)
BEHIND2 = "198.18.51.1"  # in a second subnet: one child SA with two traffic selectors
SPLIT = ["198.18.50.0/24", "198.18.51.0/24"]
POOL = "198.18.200.0/24"
DNS = "198.18.50.53"
ORIGINAL_RESOLV = "nameserver 198.18.0.99\n"


def write_psk(work: Path) -> Path:
    keys = work / "keys"
    keys.mkdir(parents=True, mode=0o700, exist_ok=True)
    if (keys / "psk").exists():
        return keys / "psk"
    fd = os.open(keys / "psk", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, PSK.encode() + b"\n")
    os.close(fd)
    return keys / "psk"


def make_pkis(work: Path) -> tuple[Pki, Pki]:
    """The gateway's PKI (leaf "gw") and the clients' (leaves "client-a", "client-c"), each a
    root and one intermediate; identities are the certificates' DNS names."""
    gw = make_chain(work / "pki-g", intermediates=1, root_dn="C=CH, O=rw, CN=g Root CA",
                    leaves={"gw": Leaf("C=CH, O=rw, CN=gw", dns=("gw",))})
    clients = make_chain(work / "pki-c", intermediates=1, root_dn="C=CH, O=rw, CN=c Root CA",
                         leaves={n: Leaf(f"C=CH, O=rw, CN={n}", dns=(n,))
                                 for n in ("client-a", "client-c")})
    return gw, clients


def nt_auth(work: Path, auth: str, pkis: tuple[Pki, Pki] | None, me: str) -> str:
    """A nattunnel peer's auth lines: a PSK, or ``me``'s certificate (the other PKI's root
    trusted)."""
    if auth == "psk":
        return f'auth = "psk"\npsk_file = "{write_psk(work)}"\n'
    assert pkis is not None
    mine, theirs = pkis if me == "gw" else pkis[::-1]
    leaf = mine.leaf[me]
    return (f'auth = "pubkey"\nprivate_key = "{leaf.key_path}"\n'
            f'certs = ["{leaf.cert_path}", "{mine.intermediates[0].cert_path}"]\n'
            f'cacerts = ["{theirs.root.cert_path}"]\ncrls = ["{theirs.crl_path}"]\n')


def swan_auth(auth: str, pkis: tuple[Pki, Pki] | None, me: str
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SwanConn arguments, Charon.start arguments) for charon as ``me``."""
    if auth == "psk":
        return {"auth": "psk", "psk": PSK}, {}
    assert pkis is not None
    mine, theirs = pkis if me == "gw" else pkis[::-1]
    conn = {"auth": "pubkey", "local_extra": {"certs": "me.pem"},
            "remote_extra": {"cacerts": "peer-root.pem"}}
    return conn, {"plugins": PLUGINS, "files": charon_files(mine, me, theirs)}


def start_nt(lab: Lab, role: str, work: Path, body: str) -> Node:
    cfg = work / f"nt-{role}.toml"
    cfg.write_text(f'listen = ["0.0.0.0:4500"]\ncontrol_socket = "{control_path(work, role)}"\n'
                   + body)
    log, stats = work / f"nt-{role}.log", work / f"nt-{role}.stats.json"
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
    proc = lab.popen(role, sys.executable, "-m", "nattunnel", "up", str(cfg), "--stats",
                     str(stats), "--log-level", "debug", stdout=log.open("w"),
                     stderr=subprocess.STDOUT, env=env)
    node = Node(role, proc, stats, log)
    assert lab.wait_for(lambda: tun_present(lab, role), 10), node.log()
    return node


def ping(lab: Lab, src: str, dst: str) -> bool:
    r = lab.exec(src, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False, timeout=15)
    return r.returncode == 0


def tcp(lab: Lab, src: str, dst_role: str, dst: str, size: int = 1 << 20) -> None:
    srv = lab.popen(dst_role, sys.executable, "-c", _SERVER, dst, stdout=subprocess.PIPE,
                    text=True)
    sent = lab.exec(src, sys.executable, "-c", _CLIENT, dst, size, timeout=60).stdout
    got, _ = srv.communicate(timeout=30)
    digest = hashlib.sha256(random.Random(7).randbytes(size)).hexdigest()
    assert got.split() == sent.split() == [str(size), digest]


def routes(lab: Lab, role: str) -> str:
    return lab.exec(role, "ip", "route", "show").stdout


def netns_resolv(lab: Lab, role: str) -> Path:
    """/etc/netns/NS/resolv.conf for ``role``'s namespace, with a known content."""
    d = Path("/etc/netns") / lab.ns[role]
    d.mkdir(parents=True, exist_ok=True)
    f = d / "resolv.conf"
    f.write_text(ORIGINAL_RESOLV)
    return f


@pytest.mark.root
@pytest.mark.parametrize(("full", "auth"), [(True, "cert"), (False, "cert"), (True, "psk")],
                         ids=["full-tunnel-cert", "split-tunnel-cert", "full-tunnel-psk"])
def test_nattunnel_road_warrior_to_charon_gateway(lab: Lab, tmp_path: Path, full: bool,
                                                  auth: str) -> None:
    require_strongswan()
    pkis = make_pkis(tmp_path) if auth == "cert" else None
    conn_kw, start_kw = swan_auth(auth, pkis, "gw")
    conn = SwanConn(name="rw", local_addrs=PUBLIC_B, remote_addrs="%any", local_id="gw",
                    remote_id="client-a", local_ts="0.0.0.0/0" if full else SPLIT,
                    remote_ts="dynamic", extra={"pools": "rwpool"}, **conn_kw)
    sections = f"pools {{\n  rwpool {{\n    addrs = {POOL}\n    dns = {DNS}\n  }}\n}}\n"
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{BEHIND}/32", f"{BEHIND2}/32"], sections=sections,
                          **start_kw)
    resolv = netns_resolv(lab, "a")
    try:
        nt = start_nt(lab, "a", tmp_path, f"""
[interface]
kind = "tun"
name = "nt0"
[[peer]]
name = "gw"
{nt_auth(tmp_path, auth, pkis, "client-a")}local_id = "client-a"
remote_id = "gw"
endpoint = "{PUBLIC_B}"
allowed_ips = ["0.0.0.0/0"]
vips = ["0.0.0.0"]
dns_file = "{resolv}"
dpd_interval = 5
""")
        assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-3000:]
        assert wait(lambda: "on nt0, routes" in nt.log(), 10), nt.log()
        assert len(charon.list_sas()) == 1
        if auth == "cert":  # the client's certificate, its intermediate from our CERT
            assert "authentication of 'client-a' with ECDSA" in charon.log()
        addrs = lab.exec("a", "ip", "-4", "-o", "addr", "show", "dev", "nt0").stdout
        assert "198.18.200.1/32" in addrs, addrs + nt.log()
        table = routes(lab, "a")
        if full:
            assert "0.0.0.0/1 dev nt0" in table and "128.0.0.0/1 dev nt0" in table, table
            assert f"{PUBLIC_B} via 198.19.1.1" in table, table  # the way to the gateway
        else:
            assert "198.18.50.0/24 dev nt0" in table and "198.18.51.0/24 dev nt0" in table
            assert "0.0.0.0/1" not in table, table
        assert resolv.read_text().splitlines()[-1] == f"nameserver {DNS}"
        (ike_sa,) = nt.show("gw")["peers"]["gw"]["ike_sas"]
        assert ike_sa["virtual_ips"] == ["198.18.200.1"] and ike_sa["dns"] == [DNS]
        assert ping(lab, "a", BEHIND), nt.log()[-3000:]
        tcp(lab, "a", "b", BEHIND)
        assert ping(lab, "a", BEHIND2)
        (child,) = [c for sa in charon.list_sas() for c in sa.children]
        assert child.packets_in > 100 and child.local_ts == (
            ("0.0.0.0/0",) if full else tuple(SPLIT)) and child.remote_ts == (
            "198.18.200.1/32",)  # it went through the tunnel
        if full and auth == "cert":
            # the gateway ends the IKE SA: the client takes its configuration off, initiates
            # again and gets the same address back
            charon.terminate_ike("rw")
            assert wait(lambda: "virtual IP configuration removed" in nt.log(), 10)
            assert "0.0.0.0/1" not in routes(lab, "a")
            assert resolv.read_text() == ORIGINAL_RESOLV
            assert wait(lambda: established(charon), 20), nt.log()[-3000:]
            assert wait(lambda: "0.0.0.0/1 dev nt0" in routes(lab, "a"), 10), nt.log()
            assert wait(lambda: ping(lab, "a", BEHIND), 10)
            addrs = lab.exec("a", "ip", "-4", "-o", "addr", "show", "dev", "nt0").stdout
            assert "198.18.200.1/32" in addrs, addrs
        assert "Traceback" not in nt.log()
        lab.stop(nt.proc)
        # everything the client put on the host is gone
        table = routes(lab, "a")
        assert "0.0.0.0/1" not in table and "198.18.50.0/24" not in table, table
        assert PUBLIC_B not in table, table
        assert resolv.read_text() == ORIGINAL_RESOLV
        assert "virtual IP configuration removed" in nt.log()
        charon.stop()
    finally:
        shutil.rmtree(resolv.parent, ignore_errors=True)


def charon_client(lab: Lab, role: str, work: Path, ident: str, auth: str,
                  pkis: tuple[Pki, Pki] | None) -> Charon:
    conn_kw, start_kw = swan_auth(auth, pkis, ident)
    # no send_cert: charon sends its certificate when nattunnel's CERTREQ asks for it
    conn = SwanConn(name="rw", local_addrs="%any", remote_addrs=PUBLIC_B, local_id=ident,
                    remote_id="gw", local_ts="dynamic", remote_ts=SPLIT,
                    extra={"vips": "0.0.0.0"}, **conn_kw)
    return Charon.start(lab, role, work / f"charon-{role}", conn=conn, **start_kw)


@pytest.mark.root
@pytest.mark.parametrize("auth", ["cert", "psk"])
@pytest.mark.parametrize("lab", [{"with_c": True}], indirect=True)
def test_charon_road_warriors_to_nattunnel_gateway(lab: Lab, tmp_path: Path,
                                                   auth: str) -> None:
    require_strongswan()
    pkis = make_pkis(tmp_path) if auth == "cert" else None
    peers = "".join(f"""
[[peer]]
name = "{name}"
{nt_auth(tmp_path, auth, pkis, "gw")}local_id = "gw"
remote_id = "{name}"
pools = ["rw"]
local_ts = ["198.18.50.0/24", "198.18.51.0/24"]
dpd_interval = 5
""" for name in ("client-a", "client-c"))
    for addr in (BEHIND, BEHIND2):
        lab.exec("b", "ip", "addr", "replace", f"{addr}/32", "dev", "lo")
    nt = start_nt(lab, "b", tmp_path, f"""
[interface]
kind = "tun"
name = "nt0"
addresses = ["198.18.50.254/32"]
[pools.rw]
addrs = "198.18.200.10-198.18.200.11"
dns = ["{DNS}"]
""" + peers)
    clients = {role: charon_client(lab, role, tmp_path, f"client-{role}", auth, pkis)
               for role in "ac"}
    for ch in clients.values():
        ch.initiate("rw")
    for ch in clients.values():
        assert wait(lambda ch=ch: established(ch), 15), nt.log() + ch.log()[-3000:]
    vips = {}
    for role, ch in clients.items():
        (sa,) = ch.list_sas()
        vip = sa.raw.get("local-vips", [])
        assert len(vip) == 1, sa.raw
        vips[role] = vip[0]
    assert set(vips.values()) == {"198.18.200.10", "198.18.200.11"}, vips
    if auth == "cert":
        for ch in clients.values():
            assert "authentication of 'gw' with ECDSA" in ch.log()
    for role in "ac":
        assert ping(lab, role, BEHIND), nt.log()[-3000:]
        tcp(lab, role, "b", BEHIND)
        assert ping(lab, role, BEHIND2)
        (child,) = [c for sa in clients[role].list_sas() for c in sa.children]
        assert child.packets_out > 100 and child.local_ts == (f"{vips[role]}/32",)
        assert child.remote_ts == tuple(SPLIT)
    peers = nt.stats()["peers"]
    for role in "ac":  # each address routed to its own client
        assert peers[f"client-{role}"]["allowed_ips"] == [f"{vips[role]}/32"]
    (pool,) = nt.show()["ike"]["pools"]
    assert pool["in_use"] == 2 and pool["leases"] == {
        "client-a": vips["a"], "client-c": vips["c"]}
    assert "Traceback" not in nt.log()
    for ch in clients.values():
        ch.stop()
    lab.stop(nt.proc)


@pytest.mark.root
def test_nattunnel_road_warrior_ipv4_and_ipv6_from_charon(lab: Lab, tmp_path: Path) -> None:
    """vips = ["0.0.0.0", "::"]: an address of each family and the DNS servers of both
    pools; a full tunnel for both families (::/1 and 8000::/1), undone at stop."""
    require_strongswan()
    for role in "ab":  # the lab turns IPv6 off; inside the tunnel it is wanted
        for key in ("all", "default", "lo"):
            lab.exec(role, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
    conn_kw, start_kw = swan_auth("psk", None, "gw")
    conn = SwanConn(name="rw", local_addrs=PUBLIC_B, remote_addrs="%any", local_id="gw",
                    remote_id="client-a", local_ts=["0.0.0.0/0", "::/0"],
                    remote_ts="dynamic", extra={"pools": "rw4,rw6"}, **conn_kw)
    sections = (f"pools {{\n  rw4 {{\n    addrs = {POOL}\n    dns = {DNS}\n  }}\n"
                "  rw6 {\n    addrs = fd00:200::/120\n    dns = fd00:50::53\n  }\n}\n")
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn, sections=sections,
                          inner_addrs=[f"{BEHIND}/32", "fd00:50::1/128"], **start_kw)
    resolv = netns_resolv(lab, "a")
    try:
        nt = start_nt(lab, "a", tmp_path, f"""
[interface]
kind = "tun"
name = "nt0"
[[peer]]
name = "gw"
{nt_auth(tmp_path, "psk", None, "client-a")}local_id = "client-a"
remote_id = "gw"
endpoint = "{PUBLIC_B}"
allowed_ips = ["0.0.0.0/0", "::/0"]
vips = ["0.0.0.0", "::"]
dns_file = "{resolv}"
dpd_interval = 5
""")
        assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-3000:]
        assert wait(lambda: "on nt0, routes" in nt.log(), 10), nt.log()
        addrs = lab.exec("a", "ip", "-o", "addr", "show", "dev", "nt0").stdout
        assert "198.18.200.1/32" in addrs and "fd00:200::1/128" in addrs, addrs
        table6 = lab.exec("a", "ip", "-6", "route", "show").stdout
        assert "::/1 dev nt0" in table6 and "8000::/1 dev nt0" in table6, table6
        assert resolv.read_text().splitlines()[-2:] == [f"nameserver {DNS}",
                                                        "nameserver fd00:50::53"]
        assert ping(lab, "a", BEHIND)
        r = lab.exec("a", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00:50::1",
                     check=False, timeout=15)
        assert r.returncode == 0, r.stdout + nt.log()[-2000:]
        lab.stop(nt.proc)
        table6 = lab.exec("a", "ip", "-6", "route", "show").stdout
        assert "::/1" not in table6 and "8000::/1" not in table6, table6
        assert resolv.read_text() == ORIGINAL_RESOLV
        charon.stop()
    finally:
        shutil.rmtree(resolv.parent, ignore_errors=True)


@pytest.mark.root
def test_charon_road_warrior_ipv4_and_ipv6_from_nattunnel(lab: Lab, tmp_path: Path) -> None:
    """charon with ``vips = 0.0.0.0,::`` gets an address from each of nattunnel's pools
    (INTERNAL_IP6_ADDRESS with its prefix length) and reaches both families behind it."""
    require_strongswan()
    for role in "ab":  # the lab turns IPv6 off; inside the tunnel it is wanted
        for key in ("all", "default", "lo"):
            lab.exec(role, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=0")
    for addr in (f"{BEHIND}/32", "fd00:50::1/128"):
        lab.exec("b", "ip", "addr", "replace", addr, "dev", "lo")
    nt = start_nt(lab, "b", tmp_path, f"""
[interface]
kind = "tun"
name = "nt0"
addresses = ["198.18.50.254/32", "fd00:50::fe/128"]
[pools.rw]
addrs = "198.18.200.0/29"
dns = ["{DNS}"]
[pools.rw6]
addrs = "fd00:200::/125"
dns = ["fd00:50::53"]
[[peer]]
name = "client-a"
{nt_auth(tmp_path, "psk", None, "gw")}local_id = "gw"
remote_id = "client-a"
pools = ["rw", "rw6"]
local_ts = ["198.18.50.0/24", "fd00:50::/64"]
""")
    conn_kw, start_kw = swan_auth("psk", None, "client-a")
    conn = SwanConn(name="rw", local_addrs="%any", remote_addrs=PUBLIC_B, local_id="client-a",
                    remote_id="gw", local_ts="dynamic",
                    remote_ts=["198.18.50.0/24", "fd00:50::/64"],
                    extra={"vips": "0.0.0.0,::"}, **conn_kw)
    ch = Charon.start(lab, "a", tmp_path / "charon-a", conn=conn, **start_kw)
    ch.initiate("rw")
    assert wait(lambda: established(ch), 15), nt.log() + ch.log()[-3000:]
    (sa,) = ch.list_sas()
    assert sorted(sa.raw.get("local-vips", [])) == ["198.18.200.1", "fd00:200::1"], sa.raw
    assert ping(lab, "a", BEHIND)
    r = lab.exec("a", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00:50::1",
                 check=False, timeout=15)
    assert r.returncode == 0, r.stdout + nt.log()[-2000:] + ch.log()[-2000:]
    (ike_sa,) = nt.show("client-a")["peers"]["client-a"]["ike_sas"]
    assert sorted(ike_sa["virtual_ips"]) == ["198.18.200.1", "fd00:200::1"]
    assert "Traceback" not in nt.log()
    ch.stop()
    lab.stop(nt.proc)
