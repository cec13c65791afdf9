"""Certificate authentication against strongSwan's charon through the lab's real NAT, both
roles, ECDSA, RSA, RSA-PSS and Ed25519, each side's certificate issued by an intermediate CA
that only the CERT payloads carry to the other side (each side trusts the other's root CA
alone); an expired and a revoked certificate refused by each side with a log line that says
so.

A (behind the NAT) is the client, B (public) the gateway. Two PKIs: the gateway's ("g") and
the client's ("c"), each a root and one intermediate (nattunnel.lab.pki).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nattunnel.lab.pki import Leaf, Pki, make_chain
from nattunnel.lab.strongswan import X509_PLUGINS, Charon, SwanConn
from nattunnel.lab.tunnels import control_path
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

PLUGINS = X509_PLUGINS
GW_DN = "C=CH, O=strongSwan, CN=gw.example"
CLIENT_DN = "C=CH, O=strongSwan, CN=client.example"


def pkis(work: Path, kind: str) -> tuple[Pki, Pki]:
    """(the gateway's PKI, the client's PKI): good, expired and revoked certificates each."""
    out = []
    for side, dn, name in (("g", GW_DN, "gw.example"), ("c", CLIENT_DN, "client.example")):
        leaves = {
            "good": Leaf(dn, dns=(name,)),
            "expired": Leaf(dn.replace("CN=", "CN=expired."), dns=("expired." + name,),
                            expired=True),
            "revoked": Leaf(dn.replace("CN=", "CN=revoked."), dns=("revoked." + name,),
                            revoked=True),
        }
        out.append(make_chain(work / f"pki-{side}", kind=kind,  # type: ignore[arg-type]
                              intermediates=1, leaves=leaves,
                              root_dn=f"C=CH, O=strongSwan, CN={side} Root CA"))
    return out[0], out[1]


def ident(pki: Pki, leaf: str, dn: bool) -> str:
    issued = pki.leaf[leaf]
    from nattunnel.ike.certs import format_dn
    if dn:
        return format_dn(issued.cert.subject)
    from cryptography import x509
    san = issued.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)[0]


def charon_files(mine: Pki, leaf: str, theirs: Pki) -> dict[str, bytes]:
    """charon's swanctl/ files: its certificate, key and intermediate, the peer's root CA and
    CRL; never the peer's intermediate (nattunnel.lab.pki.Pki.swanctl_files)."""
    files = mine.swanctl_files(leaf, theirs)
    files["x509/me.pem"] = files.pop(f"x509/{leaf}.pem")
    return files


def start_nattunnel(lab: Lab, role: str, work: Path, mine: Pki, leaf: str, theirs: Pki,
                    my_id: str, peer_id: str, *, initiate: bool, pss: bool = False) -> Node:
    other = "b" if role == "a" else "a"
    lines = [
        'listen = ["0.0.0.0:4500"]', "ike_port = 500",
        f'control_socket = "{control_path(work, role)}"',
        "[interface]", 'kind = "tun"', 'name = "nt0"', f'addresses = ["{INNER[role]}/32"]',
        "[[peer]]", f'name = "{other}"', 'auth = "pubkey"',
        f'local_id = "{my_id}"', f'remote_id = "{peer_id}"',
        f'private_key = "{mine.leaf[leaf].key_path}"',
        f'certs = ["{mine.leaf[leaf].cert_path}", "{mine.intermediates[0].cert_path}"]',
        f'cacerts = ["{theirs.root.cert_path}"]', f'crls = ["{theirs.crl_path}"]',
        f'allowed_ips = ["{INNER[other]}/32"]', "dpd_interval = 5",
        f"rsa_pss = {'true' if pss else 'false'}",
    ]
    if initiate:
        lines += [f'endpoint = "{PUBLIC_B}"', "initiate = true"]
    else:
        lines += ["initiate = false"]
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


def swan_conn(role: str, my_id: str, peer_id: str) -> SwanConn:
    """charon's connection in ``role``: certificate auth, trusting the peer's root alone."""
    other = "b" if role == "a" else "a"
    return SwanConn(
        name="c", local_addrs=PUBLIC_B if role == "b" else "%any",
        remote_addrs="%any" if role == "b" else PUBLIC_B, auth="pubkey",
        local_id=f'"{my_id}"', remote_id=f'"{peer_id}"',
        local_ts=f"{INNER[role]}/32", remote_ts=f"{INNER[other]}/32",
        # charon's default send_cert = ifasked: as the initiator it sends its certificate
        # because nattunnel's IKE_SA_INIT response carries a CERTREQ naming its CAs
        local_extra={"certs": "me.pem"},
        remote_extra={"cacerts": "peer-root.pem"},
    )


CASES = [("ecdsa", True), ("rsa", False)]
#: more key types: Ed25519 certificates, RSA-PSS signatures both ways
MORE = [("ed25519", True), ("rsa-pss", False)]
#: how charon's log names the signature scheme nattunnel used
SCHEME = {"ecdsa": "ECDSA_WITH_SHA256_DER", "rsa": "RSA_EMSA_PKCS1_SHA2_256",
          "ed25519": "ED25519", "rsa-pss": "RSA_EMSA_PSS"}


@pytest.mark.root
@pytest.mark.parametrize(("kind", "dn"), CASES + MORE)
def test_nattunnel_client_to_charon_gateway(lab: Lab, tmp_path: Path, kind: str,
                                            dn: bool) -> None:
    require_strongswan()
    g, c = pkis(tmp_path, kind)
    gw_id, client_id = ident(g, "good", dn), ident(c, "good", dn)
    pss = kind == "rsa-pss"
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=swan_conn("b", gw_id, client_id),
                          plugins=PLUGINS, inner_addrs=[f"{INNER['b']}/32"],
                          files=charon_files(g, "good", c),
                          settings={"rsa_pss": "yes"} if pss else None)
    nt = start_nattunnel(lab, "a", tmp_path, c, "good", g, client_id, gw_id, initiate=True,
                         pss=pss)
    assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-4000:]
    (sa,) = charon.list_sas()
    assert sa.remote_host == "198.18.0.1"  # A through the NAT
    assert ping(lab, "a", "b") and ping(lab, "b", "a")
    log = charon.log()
    # charon built the client's chain with the intermediate from our CERT payloads
    assert "received end entity cert" in log and "received issuer cert" in log, log[-4000:]
    assert f"authentication of '{client_id}' with" in log
    scheme = SCHEME[kind]
    assert f"authentication of '{client_id}' with {scheme}" in log, log[-3000:]
    assert "Traceback" not in nt.log()
    charon.stop()
    lab.stop(nt.proc)


@pytest.mark.root
@pytest.mark.parametrize(("kind", "dn"), CASES + MORE)
def test_charon_client_to_nattunnel_gateway(lab: Lab, tmp_path: Path, kind: str,
                                            dn: bool) -> None:
    require_strongswan()
    g, c = pkis(tmp_path, kind)
    gw_id, client_id = ident(g, "good", dn), ident(c, "good", dn)
    pss = kind == "rsa-pss"
    nt = start_nattunnel(lab, "b", tmp_path, g, "good", c, gw_id, client_id, initiate=False,
                         pss=pss)
    charon = Charon.start(lab, "a", tmp_path / "charon", conn=swan_conn("a", client_id, gw_id),
                          plugins=PLUGINS, inner_addrs=[f"{INNER['a']}/32"],
                          files=charon_files(c, "good", g),
                          settings={"rsa_pss": "yes"} if pss else None)
    charon.initiate("c")
    assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-4000:]
    assert ping(lab, "a", "b") and ping(lab, "b", "a")
    log = charon.log()
    assert "received issuer cert" in log and f"authentication of '{gw_id}' with" in log
    scheme = SCHEME[kind]
    assert f"authentication of '{gw_id}' with {scheme}" in log, log[-3000:]
    assert "Traceback" not in nt.log()
    charon.stop()
    lab.stop(nt.proc)


@pytest.mark.root
@pytest.mark.parametrize("bad", ["expired", "revoked"])
def test_bad_client_certificate_refused_by_each_gateway(lab: Lab, tmp_path: Path,
                                                        bad: str) -> None:
    """A client with an expired or revoked certificate: charon as the gateway refuses
    nattunnel's, nattunnel as the gateway refuses charon's; each says why in its log."""
    require_strongswan()
    g, c = pkis(tmp_path, "ecdsa")
    gw_id, bad_id = ident(g, "good", False), ident(c, bad, False)
    # 1. nattunnel's certificate is bad: charon (gateway on B) refuses it
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=swan_conn("b", gw_id, bad_id),
                          plugins=PLUGINS, inner_addrs=[f"{INNER['b']}/32"],
                          files=charon_files(g, "good", c))
    work = tmp_path / "nt1"
    work.mkdir()
    nt = start_nattunnel(lab, "a", work, c, bad, g, bad_id, gw_id, initiate=True)
    words = {"expired": "certificate invalid", "revoked": "certificate was revoked"}[bad]
    assert wait(lambda: words in charon.log(), 15), charon.log()[-4000:]
    assert wait(lambda: "AUTHENTICATION_FAILED" in nt.log(), 10), nt.log()
    assert not established(charon)
    lab.stop(nt.proc)
    charon.stop()
    # 2. charon's certificate is bad: nattunnel (gateway on B) refuses it
    work = tmp_path / "nt2"
    work.mkdir()
    nt = start_nattunnel(lab, "b", work, g, "good", c, gw_id, bad_id, initiate=False)
    charon = Charon.start(lab, "a", tmp_path / "charon2", conn=swan_conn("a", bad_id, gw_id),
                          plugins=PLUGINS, inner_addrs=[f"{INNER['a']}/32"],
                          files=charon_files(c, bad, g))
    charon.swanctl("--initiate", "--child", "c", "--timeout", "5", timeout=15, check=False)
    line = f"authentication of {bad_id} failed: {bad}: certificate"
    assert wait(lambda: line in nt.log(), 10), nt.log()
    assert wait(lambda: "AUTHENTICATION_FAILED" in charon.log(), 10), charon.log()[-3000:]
    assert not established(charon)
    assert "Traceback" not in nt.log()
    charon.stop()
    lab.stop(nt.proc)
