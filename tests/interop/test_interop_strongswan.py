"""IKEv2 interop with strongSwan (charon + kernel-libipsec) through the lab's real NAT.

Both roles, both auth methods:
- nattunnel on A (behind the NAT) initiates to charon on B (public);
- charon on A (behind the NAT) initiates to nattunnel on B (public).
Each case: IKE and CHILD SA up on both sides, ping both ways, a TCP transfer both ways; child
rekeys started by charon and by nattunnel with traffic flowing; an IKE SA rekey; charon
restarted (INITIAL_CONTACT) and the tunnel re-established.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nattunnel.keys import write_ed25519_pair
from nattunnel.lab.strongswan import Charon, SwanConn, strongswan_problems
from nattunnel.lab.tunnels import control_path
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.tunnel_lab import PKG_ROOT, Node, tun_present

INNER = {"a": "198.18.100.1", "b": "198.18.100.2"}
PUBLIC_B = "198.18.0.2"
PSK = "nattunnel-interop-psk"
ID = {"a": "hosta", "b": "hostb"}


def require_strongswan() -> None:
    problems = strongswan_problems()
    if problems:
        reason = "strongSwan unavailable: " + "; ".join(problems)
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail(reason + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
        pytest.skip(reason)


def start_nattunnel(lab: Lab, role: str, work: Path, auth: str, *, initiate: bool,
                    extra: str = "") -> Node:
    other = "b" if role == "a" else "a"
    keys = work / "keys"
    lines = [
        'listen = ["0.0.0.0:4500"]',
        f'keylog = "{work / "keylog"}"',
        f'control_socket = "{control_path(work, role)}"',
        "[interface]", 'kind = "tun"', 'name = "nt0"', f'addresses = ["{INNER[role]}/32"]',
        "[[peer]]", f'name = "{other}"', f'auth = "{auth}"',
        f'local_id = "{ID[role]}"', f'remote_id = "{ID[other]}"',
        f'allowed_ips = ["{INNER[other]}/32"]', "dpd_interval = 5",
    ]
    if auth == "psk":
        lines.append(f'psk_file = "{keys / "psk"}"')
    else:
        lines += [f'private_key = "{keys / "nt.key"}"', f'peer_public_key = "{keys / "sw.pub"}"']
    if initiate:
        lines += [f'endpoint = "{PUBLIC_B}"', "initiate = true"]
    cfg = work / "nt.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra)
    log, stats = work / "nt.log", work / "nt.stats.json"
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
    proc = lab.popen(role, sys.executable, "-m", "nattunnel", "up", str(cfg), "--stats",
                     str(stats), "--log-level", "debug", stdout=log.open("w"),
                     stderr=subprocess.STDOUT, env=env)
    node = Node(role, proc, stats, log)
    assert lab.wait_for(lambda: tun_present(lab, role), 10), node.log()
    return node


def setup_keys(work: Path, auth: str) -> dict[str, object]:
    """Key files for both sides; returns the SwanConn auth arguments for charon."""
    keys = work / "keys"
    keys.mkdir(parents=True, mode=0o700)
    if auth == "psk":
        fd = os.open(keys / "psk", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, PSK.encode() + b"\n")
        os.close(fd)
        return {"auth": "psk", "psk": PSK}
    write_ed25519_pair(keys / "nt.key", keys / "nt.pub")
    write_ed25519_pair(keys / "sw.key", keys / "sw.pub")
    return {"auth": "pubkey", "private_key": keys / "sw.key", "local_pubkey": keys / "sw.pub",
            "remote_pubkey": keys / "nt.pub"}


def ping(lab: Lab, src: str, dst: str) -> bool:
    r = lab.exec(src, "ping", "-c", "3", "-i", "0.2", "-W", "2", INNER[dst], check=False,
                 timeout=15)
    return r.returncode == 0


_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5301)); s.listen(1); s.settimeout(20)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest())
"""
_CLIENT = r"""
import hashlib, random, socket, sys, time
data = random.Random(7).randbytes(int(sys.argv[2]))
for _ in range(50):
    try:
        c = socket.create_connection((sys.argv[1], 5301), timeout=5); break
    except OSError:
        time.sleep(0.1)
c.sendall(data); c.close()
print(len(data), hashlib.sha256(data).hexdigest())
"""


def tcp_transfer(lab: Lab, src: str, dst: str, size: int = 4 << 20) -> None:
    srv = lab.popen(dst, sys.executable, "-c", _SERVER, INNER[dst], stdout=subprocess.PIPE,
                    text=True)
    sent = lab.exec(src, sys.executable, "-c", _CLIENT, INNER[dst], size, timeout=60).stdout
    got, _ = srv.communicate(timeout=30)
    assert got.split() == sent.split() == [str(size), hashlib.sha256(
        __import__("random").Random(7).randbytes(size)).hexdigest()]


def child_spis(ch: Charon) -> set[tuple[int, int]]:
    return {(c.spi_in, c.spi_out) for sa in ch.list_sas() for c in sa.children
            if c.state == "INSTALLED"}


def wait(pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def established(ch: Charon) -> bool:
    return any(sa.state == "ESTABLISHED" and any(c.state == "INSTALLED" for c in sa.children)
               for sa in ch.list_sas())


@pytest.mark.root
@pytest.mark.parametrize("auth", ["psk", "pubkey"])
def test_nattunnel_behind_nat_initiates_to_charon(lab: Lab, tmp_path: Path, auth: str) -> None:
    require_strongswan()
    kw = setup_keys(tmp_path, auth)
    conn = SwanConn(name="c", local_addrs=PUBLIC_B, remote_addrs="%any", local_id=ID["b"],
                    remote_id=ID["a"], local_ts=f"{INNER['b']}/32",
                    remote_ts=f"{INNER['a']}/32", **kw)  # type: ignore[arg-type]
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn, inner_addrs=[
        f"{INNER['b']}/32"])
    nt = start_nattunnel(lab, "a", tmp_path, auth, initiate=True)
    assert wait(lambda: established(charon)), nt.log() + charon.log()[-3000:]
    (sa,) = charon.list_sas()
    assert sa.remote_host == "198.18.0.1" and sa.remote_port == 4500  # A via the NAT
    stats = nt.stats()
    (ike,) = stats["ike"]["ike_sas"]
    assert ike["local_behind_nat"] and ike["natt"]
    assert stats["peers"]["b"]["addr"] == [PUBLIC_B, 4500]
    assert ping(lab, "a", "b") and ping(lab, "b", "a")
    tcp_transfer(lab, "a", "b")
    tcp_transfer(lab, "b", "a")
    # A is behind the NAT: it (and only it) sends keepalives
    assert stats["peers"]["b"]["keepalives_sent"] >= 0
    # child rekey started by charon, with traffic flowing
    before = child_spis(charon)
    charon.rekey_child("c")
    assert wait(lambda: child_spis(charon) and child_spis(charon) != before)
    assert ping(lab, "a", "b") and ping(lab, "b", "a")
    # IKE SA rekey by charon
    old_ike = charon.list_sas()[0].spi_i
    charon.rekey_ike("c")
    assert wait(lambda: charon.list_sas() and charon.list_sas()[0].spi_i != old_ike)
    assert ping(lab, "a", "b")
    assert "Traceback" not in nt.log()
    charon.stop()
    lab.stop(nt.proc)


@pytest.mark.root
@pytest.mark.parametrize("auth", ["psk", "pubkey"])
def test_charon_behind_nat_initiates_to_nattunnel(lab: Lab, tmp_path: Path, auth: str) -> None:
    require_strongswan()
    kw = setup_keys(tmp_path, auth)
    nt = start_nattunnel(lab, "b", tmp_path, auth, initiate=False,
                         extra="")
    conn = SwanConn(name="c", local_addrs="%any", remote_addrs=PUBLIC_B, local_id=ID["a"],
                    remote_id=ID["b"], local_ts=f"{INNER['a']}/32",
                    remote_ts=f"{INNER['b']}/32", **kw)  # type: ignore[arg-type]
    charon = Charon.start(lab, "a", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{INNER['a']}/32"])
    charon.initiate("c")
    assert wait(lambda: established(charon)), nt.log() + charon.log()[-3000:]
    (sa,) = charon.list_sas()
    assert sa.nat_local  # charon found itself behind the NAT
    stats = nt.stats()
    (ike,) = stats["ike"]["ike_sas"]
    assert ike["remote_behind_nat"] and not ike["local_behind_nat"]
    assert stats["peers"]["a"]["addr"] == ["198.18.0.1", 4500]
    assert stats["peers"]["a"]["keepalives_sent"] == 0  # B is public: no keepalives
    assert ping(lab, "a", "b") and ping(lab, "b", "a")
    tcp_transfer(lab, "a", "b")
    tcp_transfer(lab, "b", "a")
    before = child_spis(charon)
    charon.rekey_child("c")
    assert wait(lambda: child_spis(charon) and child_spis(charon) != before)
    assert ping(lab, "b", "a")
    # charon crashes (no Delete sent), restarts and initiates again with INITIAL_CONTACT:
    # nattunnel drops the stale IKE SA and installs the new one
    assert charon.proc is not None
    charon.proc.kill()
    charon.proc.wait(5)
    charon.restart()
    charon.initiate("c")
    assert wait(lambda: established(charon))
    assert ping(lab, "a", "b") and ping(lab, "b", "a")
    assert wait(lambda: len(nt.stats()["ike"]["ike_sas"]) == 1)
    assert "INITIAL_CONTACT" in nt.log()
    assert "Traceback" not in nt.log()
    lab.stop(nt.proc)


@pytest.mark.root
def test_nattunnel_starts_a_child_rekey_with_traffic_flowing(lab: Lab, tmp_path: Path) -> None:
    require_strongswan()
    kw = setup_keys(tmp_path, "psk")
    conn = SwanConn(name="c", local_addrs=PUBLIC_B, remote_addrs="%any", local_id=ID["b"],
                    remote_id=ID["a"], local_ts=f"{INNER['b']}/32",
                    remote_ts=f"{INNER['a']}/32", **kw)  # type: ignore[arg-type]
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{INNER['b']}/32"])
    # child SAs rekeyed by nattunnel 4-5 s after they are made
    nt = start_nattunnel(lab, "a", tmp_path, "psk", initiate=True,
                         extra="rekey_time = 5\n")
    assert wait(lambda: established(charon)), nt.log() + charon.log()[-3000:]
    first = child_spis(charon)
    pinger = lab.popen("a", "ping", "-i", "0.1", "-c", "80", INNER["b"],
                       stdout=subprocess.PIPE, text=True)
    assert wait(lambda: child_spis(charon) and child_spis(charon).isdisjoint(first), 15)
    out, _ = pinger.communicate(timeout=30)
    received = int(out.split(" received")[0].rsplit(",", 1)[1])
    assert received >= 78, out  # make-before-break: at most a packet or two in flight
    assert "(rekey)" in nt.log()
    charon.stop()
    lab.stop(nt.proc)


@pytest.mark.root
def test_key_log_lets_tshark_decrypt_a_capture(lab: Lab, tmp_path: Path) -> None:
    """A capture of a nattunnel <-> strongSwan session, decrypted with nattunnel's key log."""
    require_strongswan()
    if not os.path.exists("/usr/bin/tshark"):
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail("tshark missing (apt-get install tshark)")
        pytest.skip("tshark missing")
    kw = setup_keys(tmp_path, "psk")
    conn = SwanConn(name="c", local_addrs=PUBLIC_B, remote_addrs="%any", local_id=ID["b"],
                    remote_id=ID["a"], local_ts=f"{INNER['b']}/32",
                    remote_ts=f"{INNER['a']}/32", **kw)  # type: ignore[arg-type]
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{INNER['b']}/32"])
    cap = tmp_path / "cap.pcapng"
    dumper = lab.popen("b", "tshark", "-i", "any", "-f", "udp port 500 or udp port 4500",
                       "-w", str(cap), "-q", stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    # tshark needs a moment before it captures (longer on a loaded machine): it writes the
    # pcapng header once the capture runs
    assert wait(lambda: cap.exists() and cap.stat().st_size > 0, 20), "tshark did not start"
    time.sleep(0.5)
    nt = start_nattunnel(lab, "a", tmp_path, "psk", initiate=True)
    assert wait(lambda: established(charon)), nt.log()
    assert ping(lab, "a", "b")
    time.sleep(0.5)
    lab.stop(dumper)
    from nattunnel.ike.keylog import KeyLog

    opts = KeyLog(tmp_path / "keylog").tshark_options()
    r = subprocess.run(["tshark", "-r", str(cap), "-d", "udp.port==4500,udpencap", *opts,
                        "-V"], capture_output=True, text=True, timeout=60)
    out = r.stdout
    assert "Echo (ping) request" in out and "Echo (ping) reply" in out  # ESP decrypted
    assert "198.18.100.1" in out and "198.18.100.2" in out
    assert "Identification - Initiator" in out  # IKE_AUTH decrypted
    assert "hosta" in out
    charon.stop()
    lab.stop(nt.proc)
