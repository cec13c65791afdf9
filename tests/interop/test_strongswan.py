"""Self-test of the strongSwan harness (nattunnel/lab/strongswan.py).

Two charons (kernel-libipsec, userspace ESP-in-UDP) through the lab's real Linux NAT: charon on
A (behind the NAT) initiates to charon on B (public), with a PSK and with Ed25519 raw public
keys; then CHILD_SA and IKE_SA rekeys by swanctl. The rendering, parsing and key helpers are
also checked without root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from nattunnel.lab.strongswan import (
    Charon,
    SwanChildSa,
    SwanConn,
    SwanIkeSa,
    ed25519_private_pem,
    ed25519_public_pem,
    generate_ed25519_keypair,
    parse_list_sas,
    parse_vici_pretty,
    render_swanctl_conf,
    strongswan_problems,
)
from tests.support.lab import (
    HOST_ADDR,
    ROUTER_WAN,
    Lab,
    lab_fixture,  # noqa: F401  (registers the ``lab`` fixture)
)

A, B = HOST_ADDR["a"], HOST_ADDR["b"]
INNER_A, INNER_B = "198.18.100.1", "198.18.100.2"
PSK = "nattunnel-interop-psk"
NATT = 4500


# ----------------------------------------------------------------- helpers


def _require_strongswan() -> None:
    problems = strongswan_problems()
    if not problems:
        return
    reason = "strongSwan unavailable: " + "; ".join(problems)
    if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
        pytest.fail(reason + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
    pytest.skip(reason)


def _conns(auth: str = "psk", keys: Path | None = None) -> tuple[SwanConn, SwanConn]:
    """(A's initiator connection, B's responder connection)."""
    kw_a: dict[str, object] = {}
    kw_b: dict[str, object] = {}
    if auth == "psk":
        kw_a = kw_b = {"auth": "psk", "psk": PSK}
    else:
        assert keys is not None
        for side in ("a", "b"):
            generate_ed25519_keypair(keys / f"{side}.pem", keys / f"{side}.pub")
        kw_a = {"auth": "pubkey", "private_key": keys / "a.pem",
                "local_pubkey": keys / "a.pub", "remote_pubkey": keys / "b.pub"}
        kw_b = {"auth": "pubkey", "private_key": keys / "b.pem",
                "local_pubkey": keys / "b.pub", "remote_pubkey": keys / "a.pub"}
    conn_a = SwanConn(
        name="c", local_addrs="%any", remote_addrs=B, local_id="hosta", remote_id="hostb",
        local_ts=f"{INNER_A}/32", remote_ts=f"{INNER_B}/32", **kw_a,  # type: ignore[arg-type]
    )
    conn_b = SwanConn(
        name="c", local_addrs=B, remote_addrs="%any", local_id="hostb", remote_id="hosta",
        local_ts=f"{INNER_B}/32", remote_ts=f"{INNER_A}/32", **kw_b,  # type: ignore[arg-type]
    )
    return conn_a, conn_b


def _start_pair(lab: Lab, tmp: Path, auth: str = "psk") -> tuple[Charon, Charon]:
    _require_strongswan()
    keys = tmp / "keys"
    keys.mkdir()
    conn_a, conn_b = _conns(auth, keys)
    cb = Charon.start(lab, "b", tmp / "b", conn=conn_b, inner_addrs=[f"{INNER_B}/32"])
    ca = Charon.start(lab, "a", tmp / "a", conn=conn_a, inner_addrs=[f"{INNER_A}/32"])
    return ca, cb


def _ping(lab: Lab, src: str, dst: str, count: int = 2) -> bool:
    r = lab.exec(src, "ping", "-c", count, "-i", "0.2", "-W", 2, dst, check=False, timeout=10)
    return r.returncode == 0


def _check_established(lab: Lab, ca: Charon, cb: Charon) -> tuple[SwanIkeSa, SwanIkeSa]:
    """Both sides ESTABLISHED/INSTALLED, SPIs matching, NAT seen, ping across the tunnel."""
    sa_a, child_a = ca.wait_established(timeout=10)
    sa_b, child_b = cb.wait_established(timeout=10)
    # the same IKE_SA on both sides
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert sa_a.initiator and not sa_b.initiator
    assert (sa_a.local_id, sa_a.remote_id) == ("hosta", "hostb")
    # A sees itself behind a NAT, talking from 4500 after the switch to NAT-T
    assert (sa_a.local_host, sa_a.local_port) == (A, NATT)
    assert (sa_a.remote_host, sa_a.remote_port) == (B, NATT)
    assert sa_a.nat_local and sa_a.nat_any
    # B sees A at the router's WAN address (masquerade keeps port 4500 when it is free)
    assert (sa_b.remote_host, sa_b.remote_port) == (ROUTER_WAN, NATT)
    assert (sa_b.local_host, sa_b.local_port) == (B, NATT)
    assert sa_b.nat_remote and not sa_b.nat_local
    # the negotiated algorithms are the configured ones
    for sa in (sa_a, sa_b):
        assert (sa.encr_alg, sa.encr_keysize) == ("AES_GCM_16", 256)
        assert (sa.prf_alg, sa.dh_group) == ("PRF_HMAC_SHA2_256", "CURVE_25519")
    # one CHILD_SA, UDP-encapsulated tunnel, SPIs crosswise
    for c in (child_a, child_b):
        assert (c.mode, c.protocol, c.encap) == ("TUNNEL", "ESP", True)
        assert (c.encr_alg, c.encr_keysize) == ("AES_GCM_16", 256)
    assert (child_a.spi_in, child_a.spi_out) == (child_b.spi_out, child_b.spi_in)
    assert child_a.local_ts == (f"{INNER_A}/32",) and child_a.remote_ts == (f"{INNER_B}/32",)
    assert child_b.local_ts == (f"{INNER_B}/32",) and child_b.remote_ts == (f"{INNER_A}/32",)
    # the router really mapped A's 4500 flow
    ct = lab.conntrack_list(src=A, dst=B, sport=NATT, dport=NATT)
    assert ct and ct[0].external == (ROUTER_WAN, NATT), ct
    _ping_through(lab, ca, cb)
    return sa_a, sa_b


def _ping_through(lab: Lab, ca: Charon, cb: Charon) -> tuple[SwanChildSa, SwanChildSa]:
    """Ping both ways over the inner addresses and check the ESP counters moved."""
    before_a = ca.child_sa()
    assert before_a is not None
    assert _ping(lab, "a", INNER_B), ca.log()[-3000:] + cb.log()[-3000:]
    assert _ping(lab, "b", INNER_A), ca.log()[-3000:] + cb.log()[-3000:]
    after_a, after_b = ca.child_sa(), cb.child_sa()
    assert after_a is not None and after_b is not None
    assert after_a.packets_out >= before_a.packets_out + 4
    assert after_a.packets_in >= before_a.packets_in + 4
    assert after_b.packets_in >= 4 and after_b.packets_out >= 4
    return after_a, after_b


def _stop(*charons: Charon) -> None:
    for c in charons:
        c.stop()
        assert c.proc is not None and c.proc.poll() is not None


# ----------------------------------------------------------------- root: two charons


@pytest.mark.root
def test_psk_through_nat(lab: Lab, tmp_path: Path) -> None:
    ca, cb = _start_pair(lab, tmp_path, "psk")
    # the tracked PID is charon's own (it wrote it to its private /run = workdir/run)
    for c in (ca, cb):
        assert (c.workdir / "run" / "charon.pid").read_text().strip() == str(c.pid)
    out = ca.initiate("c", timeout=15).stdout
    assert "initiate completed successfully" in out
    _check_established(lab, ca, cb)
    assert "authentication of 'hosta' with pre-shared key successful" in cb.log()
    # the TUN device and the route to the remote TS (table 220) that charon installed
    routes = lab.exec("a", "ip", "route", "show", "table", "220").stdout
    assert f"{INNER_B} dev ipsec0" in routes and f"src {INNER_A}" in routes
    ca.terminate_ike("c")
    assert lab.wait_for(lambda: cb.ike_sa("c") is None, timeout=5)
    _stop(ca, cb)


@pytest.mark.root
def test_ed25519_pubkey_through_nat(lab: Lab, tmp_path: Path) -> None:
    ca, cb = _start_pair(lab, tmp_path, "pubkey")
    ca.initiate("c", timeout=15)
    _check_established(lab, ca, cb)
    log_b = cb.log()
    assert "authentication of 'hosta' with ED25519 successful" in log_b, log_b[-3000:]
    _stop(ca, cb)


@pytest.mark.root
def test_rekey_and_restart(lab: Lab, tmp_path: Path) -> None:
    ca, cb = _start_pair(lab, tmp_path, "psk")
    ca.initiate("c", timeout=15)
    sa_a, _ = _check_established(lab, ca, cb)

    # CHILD_SA rekey started by the initiator (A), then by the responder (B)
    for rekeyer, other in ((ca, cb), (cb, ca)):
        old_r, old_o = rekeyer.child_sa(), other.child_sa()
        assert old_r is not None and old_o is not None
        rekeyer.rekey_child("c")
        new_r = rekeyer.wait_child_rekeyed(old_r, timeout=10)
        new_o = other.wait_child_rekeyed(old_o, timeout=10)
        assert {new_r.spi_in, new_r.spi_out}.isdisjoint({old_r.spi_in, old_r.spi_out})
        assert new_r.reqid == old_r.reqid and new_r.uniqueid > old_r.uniqueid
        # the old CHILD_SA lingers as DELETED (charon's delete_rekeyed_delay), not INSTALLED
        sa_r = rekeyer.ike_sa("c")
        assert sa_r is not None
        assert {c.state for c in sa_r.children if c.spi_in == old_r.spi_in} <= {"DELETED"}
        assert (new_r.spi_in, new_r.spi_out) == (new_o.spi_out, new_o.spi_in)
        _ping_through(lab, ca, cb)

    # IKE_SA rekey: new IKE SPIs, the CHILD_SA moves over to the new IKE_SA
    ca.rekey_ike("c")

    def ike_rekeyed() -> bool:
        sas = [ca.ike_sa("c"), cb.ike_sa("c")]
        return all(
            s is not None and s.spi_i != sa_a.spi_i and len(ca.list_sas("c")) == 1
            and s.child("c") is not None
            for s in sas
        )

    assert lab.wait_for(ike_rekeyed, timeout=10), ca.log()[-3000:]
    new_a, new_b = ca.ike_sa("c"), cb.ike_sa("c")
    assert new_a is not None and new_b is not None
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    _ping_through(lab, ca, cb)

    # restart B (same wrapper, new process): charon sends DELETE on SIGTERM, so A drops the
    # IKE_SA; A re-initiates and everything comes back
    old_pid = cb.pid
    cb.restart()
    assert cb.pid != old_pid and cb.running
    assert cb.ike_sa("c", state=None) is None
    if not lab.wait_for(lambda: ca.ike_sa("c", state=None) is None, timeout=5):
        ca.terminate_ike("c", force=True, check=False)
    ca.initiate("c", timeout=15)
    _check_established(lab, ca, cb)
    _stop(ca, cb)


# ----------------------------------------------------------------- no root


RESPONDER_PSK = """\
connections {
  c {
    version = 2
    proposals = aes256gcm16-prfsha256-x25519,aes128gcm16-prfsha256-ecp256
    local_addrs = 198.18.0.2
    remote_addrs = %any
    encap = yes
    mobike = yes
    dpd_delay = 30s
    local {
      auth = psk
      id = hostb
    }
    remote {
      auth = psk
      id = hosta
    }
    children {
      c {
        mode = tunnel
        esp_proposals = aes256gcm16,aes128gcm16
        local_ts = 198.18.100.2/32
        remote_ts = 198.18.100.1/32
        start_action = none
      }
    }
  }
}
secrets {
  ike-c {
    id-1 = hostb
    id-2 = hosta
    secret = "pw"
  }
}
"""


def test_render_swanctl_conf_psk() -> None:
    conn = SwanConn(
        name="c", local_addrs="198.18.0.2", remote_addrs="%any", local_id="hostb",
        remote_id="hosta", psk="pw",
        proposals=["aes256gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-ecp256"],
        esp_proposals=["aes256gcm16", "aes128gcm16"],
        local_ts="198.18.100.2/32", remote_ts="198.18.100.1/32",
    )
    assert render_swanctl_conf([conn]) == RESPONDER_PSK


def test_render_swanctl_conf_pubkey_and_options(tmp_path: Path) -> None:
    conn = SwanConn(
        name="x", auth="pubkey", private_key=tmp_path / "k", local_pubkey=tmp_path / "l",
        remote_pubkey=tmp_path / "r", rekey_time="10m", child_rekey_time="5m",
        dpd_delay=None, mobike=False, start_action="trap",
    )
    text = render_swanctl_conf([conn])
    assert "pubkeys = x-local.pub" in text and "pubkeys = x-remote.pub" in text
    assert "    rekey_time = 10m\n" in text and "        rekey_time = 5m\n" in text
    assert "dpd_delay" not in text and "mobike = no" in text and "start_action = trap" in text
    assert "secrets {\n}\n" in text
    with pytest.raises(ValueError, match="needs psk"):
        render_swanctl_conf([SwanConn()])
    with pytest.raises(ValueError, match="remote_pubkey"):
        SwanConn(auth="pubkey", private_key=tmp_path / "k", local_pubkey=tmp_path / "l").validate()


LIST_SAS = """\
list-sa event {
  c {
    uniqueid = 1
    version = 2
    state = ESTABLISHED
    local-host = 198.18.0.2
    local-port = 4500
    local-id = hostb
    remote-host = 198.18.0.1
    remote-port = 4500
    remote-id = hosta
    initiator-spi = 3f3bb4d2e0f22538
    responder-spi = 696524c0ca2d930c
    nat-remote = yes
    nat-any = yes
    encr-alg = AES_GCM_16
    encr-keysize = 256
    prf-alg = PRF_HMAC_SHA2_256
    dh-group = CURVE_25519
    child-sas {
      c-1 {
        name = c
        uniqueid = 1
        reqid = 1
        state = INSTALLED
        mode = TUNNEL
        protocol = ESP
        encap = yes
        spi-in = 53ff4cfb
        spi-out = e8529c78
        encr-alg = AES_GCM_16
        encr-keysize = 256
        bytes-in = 84
        packets-in = 1
        bytes-out = 0
        packets-out = 0
        local-ts = [
          198.18.100.2/32
        ]
        remote-ts = [
          198.18.100.1/32
        ]
      }
    }
  }
}
list-sas reply {
}
"""


def test_parse_list_sas() -> None:
    msgs = parse_vici_pretty(LIST_SAS)
    assert [m for m, _ in msgs] == ["list-sa event", "list-sas reply"]
    (sa,) = parse_list_sas(LIST_SAS)
    assert (sa.name, sa.state, sa.initiator) == ("c", "ESTABLISHED", False)
    assert (sa.remote_host, sa.remote_port, sa.local_port) == ("198.18.0.1", 4500, 4500)
    assert (sa.spi_i, sa.spi_r) == (0x3F3BB4D2E0F22538, 0x696524C0CA2D930C)
    assert sa.nat_remote and sa.nat_any and not sa.nat_local and not sa.nat_fake
    child = sa.child("c")
    assert child is not None
    assert (child.spi_in, child.spi_out, child.encap) == (0x53FF4CFB, 0xE8529C78, True)
    assert (child.bytes_in, child.packets_in) == (84, 1)
    assert child.local_ts == ("198.18.100.2/32",) and child.remote_ts == ("198.18.100.1/32",)
    assert sa.child("c", state="REKEYED") is None
    assert parse_list_sas("list-sas reply {\n}\n") == []


def test_ed25519_key_files(tmp_path: Path) -> None:
    raw = generate_ed25519_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert len(raw) == 32
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    pem = (tmp_path / "k.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = serialization.load_pem_public_key((tmp_path / "k.pub").read_bytes())
    der = pub.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    assert der == bytes.fromhex("302a300506032b6570032100") + raw
    # from raw bytes, the encodings strongswan.md gives
    seed = bytes(range(32))
    priv = serialization.load_pem_private_key(ed25519_private_pem(seed), None)
    assert priv.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) == bytes.fromhex("302e020100300506032b657004220420") + seed
    assert ed25519_public_pem(raw) == (tmp_path / "k.pub").read_bytes()
