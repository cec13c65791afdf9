"""Root: IKEv2 mediation interop with strongSwan charon 5.9.8 (docs/interop-strongswan.md,
"IKEv2 mediation").

- charon on B (the WAN) is the mediation server (a connection with ``mediation = yes``) for
  two nattunnel peers, A behind NAT1 and C behind NAT2 (port-restricted cones): both
  register with charon, A's ME_CONNECT goes through charon to C, the checks punch both NATs,
  the tunnel comes up directly between the NATs; ping both ways.
- nattunnel on A reaches charon on C (a mediated peer of the nattunnel mediation server on
  B): the ME_CONNECT exchanges through B, the checks between nattunnel and charon, and the
  IKE SA from A to charon directly between the NATs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nattunnel.keys import write_psk_file
from nattunnel.lab.nattypes import PORT_RESTRICTED_CONE, NatLab
from nattunnel.lab.strongswan import DEFAULT_ESP_PROPOSALS, DEFAULT_PROPOSALS, Charon
from tests.interop.test_interop_strongswan import require_strongswan
from tests.lab.test_mediation_lab import A_IN, C_IN, _peer, _server
from tests.lab.traversal_support import NodeProc, ping_ok, wait_for
from tests.support.lab import require_lab_tools

PSK = "correct horse battery staple"

#: charon as a mediation server: one connection for every mediated peer (remote id %any),
#: no child SA; its PSK for any peer identity
SERVER = f"""
connections {{
  medsrv {{
    version = 2
    local_addrs = %any
    remote_addrs = %any
    mediation = yes
    dpd_delay = 60s
    local {{
      auth = psk
      id = mediator
    }}
    remote {{
      auth = psk
      id = %any
    }}
  }}
}}
secrets {{
  ike-med {{
    id-1 = mediator
    secret = "{PSK}"
  }}
}}
"""


@pytest.mark.root
def test_charon_mediates_two_nattunnel_peers(tmp_path: Path) -> None:
    require_lab_tools()
    require_strongswan()
    write_psk_file(tmp_path / "k.psk", PSK.encode(), force=True)
    lab = NatLab("two", PORT_RESTRICTED_CONE, with_e=False)
    nodes: list[NodeProc] = []
    charon = None
    try:
        b = lab.addr["b"]
        charon = Charon.start(lab, "b", tmp_path / "charon", conn=[], sections=SERVER,
                              log_levels={"default": 1, "ike": 2, "net": 2, "enc": 1})
        c = NodeProc(lab, "c", _peer(tmp_path, "c", "a", C_IN, A_IN, b, False), {})
        nodes.append(c)
        wait_for("C registered at charon", lambda: bool(c.status()["mediation"]["up"]), 15)
        a = NodeProc(lab, "a", _peer(tmp_path, "a", "c", A_IN, C_IN, b, True), {})
        nodes.append(a)
        t = wait_for("the mediated tunnel", lambda: ping_ok(lab, "a", C_IN, count=1), 30)
        print(f"\nthe first ping through the tunnel charon mediated: {t:.1f} s")
        assert ping_ok(lab, "a", C_IN) and ping_ok(lab, "c", A_IN)
        nat1, nat2 = lab.routers["r1"], lab.routers["r2"]
        assert str(a.peer()["endpoint"]).startswith(nat2.wan_addr + ":")
        assert str(c.peer()["endpoint"]).startswith(nat1.wan_addr + ":")
        med = a.status()["mediation"]
        assert med["srflx"].startswith(nat1.wan_addr + ":"), med
        log = charon.log_path.read_text()
        assert "received ME_CONNECT" in log or "ME_CONNECT" in log
    finally:
        for n in nodes:
            n.stop()
            print(n.stderr.read_text()[-2500:])
        if charon is not None:
            print(charon.log_path.read_text()[-6000:])
            charon.stop()
        lab.close()


def _charon_peer(psk: str, server: str, me_in: str, other_in: str, me: str = "hostc",
                 other: str = "hosta") -> str:
    """charon as a mediated peer: ``med``, its mediation connection to the server
    (``mediation = yes``), and ``peer``, the connection to the other peer that the server
    mediates (``mediated_by = med``, ``mediation_peer``)."""
    return f"""
connections {{
  med {{
    version = 2
    remote_addrs = {server}
    mediation = yes
    dpd_delay = 20s
    proposals = {DEFAULT_PROPOSALS}
    local {{
      auth = psk
      id = {me}
    }}
    remote {{
      auth = psk
      id = mediator
    }}
  }}
  peer {{
    version = 2
    mediated_by = med
    mediation_peer = {other}
    proposals = {DEFAULT_PROPOSALS}
    encap = yes
    local {{
      auth = psk
      id = {me}
    }}
    remote {{
      auth = psk
      id = {other}
    }}
    children {{
      peer {{
        mode = tunnel
        esp_proposals = {DEFAULT_ESP_PROPOSALS}
        local_ts = {me_in}/32
        remote_ts = {other_in}/32
      }}
    }}
  }}
}}
secrets {{
  ike-c {{
    id-1 = {me}
    secret = "{psk}"
  }}
}}
"""


def _assert_checks_stopped_by_connect_id(log: str) -> None:
    """charon as the responder stopped its checks on the ME_CONNECTID of our IKE_SA_INIT
    (``removing checklist``, ike_init.c) and sent none after it. (A retransmission already
    scheduled then finds no check list: ``checklist ... not found, can't retransmit``.
    Without the notify charon keeps checking until its retransmissions end.)"""
    lines = log.splitlines()
    init = [i for i, line in enumerate(lines) if "parsed IKE_SA_INIT request" in line
            and "N(ME_CID)" in line]
    assert init, "no IKE_SA_INIT with ME_CONNECTID reached charon"
    removed = [i for i, line in enumerate(lines) if "removing checklist with id" in line]
    assert removed and removed[0] > init[0], "charon kept its check list"
    assert not any("send ME_CONNECTID" in line for line in lines[removed[0]:])


@pytest.mark.root
def test_nattunnel_peer_to_charon_peer_through_nattunnel_mediation(tmp_path: Path) -> None:
    """nattunnel on A (behind NAT1) asks the nattunnel mediation server on B for charon on C
    (behind NAT2), which registered with B as a mediated peer; the checks run between
    nattunnel and charon's connect manager, and A's IKE SA to charon comes up directly."""
    require_lab_tools()
    require_strongswan()
    write_psk_file(tmp_path / "k.psk", PSK.encode(), force=True)
    lab = NatLab("two", PORT_RESTRICTED_CONE, with_e=False)
    nodes: list[NodeProc] = []
    charon = None
    try:
        b = lab.addr["b"]
        server = NodeProc(lab, "b", _server(tmp_path), {})
        nodes.append(server)
        wait_for("the server", lambda: server.status() is not None, 10)
        charon = Charon.start(lab, "c", tmp_path / "charon", conn=[],
                              sections=_charon_peer(PSK, b, C_IN, A_IN),
                              inner_addrs=[f"{C_IN}/32"],
                              log_levels={"default": 1, "ike": 2, "net": 2, "enc": 1})
        charon.swanctl("--initiate", "--ike", "med", "--timeout", "10", timeout=15)
        wait_for("charon registered", lambda: "hostc" in (
            server.status()["mediation_server"] or {}).get("registered", {}), 15)
        a = NodeProc(lab, "a", _peer(tmp_path, "a", "c", A_IN, C_IN, b, True), {})
        nodes.append(a)
        t = wait_for("the tunnel to charon", lambda: ping_ok(lab, "a", C_IN, count=1), 30)
        print(f"\nthe first ping from nattunnel to charon through the mediation: {t:.1f} s")
        assert ping_ok(lab, "a", C_IN)
        nat2 = lab.routers["r2"]
        assert str(a.peer()["endpoint"]).startswith(nat2.wan_addr + ":")
        sas = [sa for sa in charon.list_sas() if sa.name == "peer"]
        assert sas, charon.list_sas()
        _assert_checks_stopped_by_connect_id(charon.log_path.read_text())
    finally:
        for n in nodes:
            n.stop()
            print(n.stderr.read_text()[-2500:])
        if charon is not None:
            print(charon.log_path.read_text()[-12000:])
            charon.stop()
        lab.close()


@pytest.mark.root
def test_charon_peer_to_nattunnel_peer_through_nattunnel_mediation(tmp_path: Path) -> None:
    """charon on A (behind NAT1) initiates its mediated connection to nattunnel on C (behind
    NAT2) through the nattunnel mediation server on B: charon's ME_CONNECT (with
    ME_CALLBACK), nattunnel's ME_RESPONSE, checks both ways, charon nominates a pair and its
    IKE_SA_INIT (with ME_CONNECTID) reaches nattunnel directly; ping both ways."""
    require_lab_tools()
    require_strongswan()
    write_psk_file(tmp_path / "k.psk", PSK.encode(), force=True)
    lab = NatLab("two", PORT_RESTRICTED_CONE, with_e=False)
    nodes: list[NodeProc] = []
    charon = None
    try:
        b = lab.addr["b"]
        server = NodeProc(lab, "b", _server(tmp_path), {})
        nodes.append(server)
        c = NodeProc(lab, "c", _peer(tmp_path, "c", "a", C_IN, A_IN, b, False), {})
        nodes.append(c)
        wait_for("C registered", lambda: bool(c.status()["mediation"]["up"]), 15)
        charon = Charon.start(lab, "a", tmp_path / "charon", conn=[],
                              sections=_charon_peer(PSK, b, A_IN, C_IN, "hosta", "hostc"),
                              inner_addrs=[f"{A_IN}/32"],
                              log_levels={"default": 1, "ike": 2, "net": 2, "enc": 1})
        charon.swanctl("--initiate", "--child", "peer", "--timeout", "20", timeout=25,
                       check=False)
        t = wait_for("the tunnel from charon", lambda: ping_ok(lab, "c", A_IN, count=1), 30)
        print(f"\nthe first ping from nattunnel to charon (charon initiated): {t:.1f} s")
        assert ping_ok(lab, "c", A_IN) and ping_ok(lab, "a", C_IN)
        nat1 = lab.routers["r1"]
        assert str(c.peer()["endpoint"]).startswith(nat1.wan_addr + ":")
        log = charon.log_path.read_text()
        assert "endpoint pair" in log and "is valid" in log
    finally:
        for n in nodes:
            n.stop()
            print(n.stderr.read_text()[-2500:])
        if charon is not None:
            print(charon.log_path.read_text()[-12000:])
            charon.stop()
        lab.close()
