"""The control commands as a user runs them, without root: two `nattunnel up` processes
(IKE over loopback, in-process interfaces), then `nattunnel show` (text and --json),
`rekey`, `terminate`, `initiate`, `reload` and `down` from the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nattunnel.keys import write_psk_file

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp: Path, role: str, port: int, peer: str, endpoint: int | None) -> Path:
    me, other = ("hosta", "hostb") if role == "a" else ("hostb", "hosta")
    mine, theirs = ("198.18.100.1", "198.18.100.2") if role == "a" else (
        "198.18.100.2", "198.18.100.1")
    text = (f'listen = ["127.0.0.1:{port}"]\nike_port = 0\n'
            f'control_socket = "{tmp / (role + ".sock")}"\n[interface]\nkind = "inprocess"\n'
            f'[[peer]]\nname = "{peer}"\nauth = "psk"\npsk_file = "k.psk"\n'
            f'local_id = "{me}"\nremote_id = "{other}"\nallowed_ips = ["{theirs}/32"]\n'
            f'local_ts = ["{mine}/32"]\n')
    if endpoint is not None:
        text += f'endpoint = "127.0.0.1:{endpoint}"\n'
    path = tmp / f"{role}.toml"
    path.write_text(text)
    return path


def nt(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "nattunnel", *args], capture_output=True,
                       text=True, timeout=30, env=ENV)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _wait(what: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.1)
    pytest.fail("timed out")


#: A's and B's control sockets, B's configuration, A's process
Pair = tuple[Path, Path, Path, subprocess.Popen[str]]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    write_psk_file(tmp_path / "k.psk", b"correct horse battery staple")
    pa, pb = _port(), _port()
    cfg_a, cfg_b = _config(tmp_path, "a", pa, "b", pb), _config(tmp_path, "b", pb, "a", None)
    procs = []
    for cfg in (cfg_b, cfg_a):
        log = (tmp_path / (cfg.stem + ".log")).open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", "nattunnel", "up", str(cfg)],
                                      stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV))
    sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"

    def up() -> bool:
        if not (sock_a.exists() and sock_b.exists()):
            return False
        r = nt("show", "--json", "--socket", str(sock_a), check=False)
        return r.returncode == 0 and json.loads(r.stdout)["peers"]["b"]["state"] == "up"

    try:
        _wait(up)
        yield sock_a, sock_b, cfg_b, procs[1]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_show_rekey_terminate_initiate_down(pair: Pair, tmp_path: Path) -> None:
    sock_a, sock_b, _, proc_a = pair
    text = nt("show", "--socket", str(sock_a)).stdout
    assert "peer b: up (ike)" in text and "IKE SA: established, initiator" in text
    assert "child SA: SPIs in 0x" in text and "198.18.100.1/32 === 198.18.100.2/32" in text
    doc = json.loads(nt("show", "b", "--json", "-c", str(tmp_path / "a.toml")).stdout)
    assert list(doc["peers"]) == ["b"] and doc["format"] == 1
    old = doc["peers"]["b"]["ike_sas"][0]["children"][0]["spi_in"]
    assert nt("rekey", "b", "--socket", str(sock_a)).stdout.strip() == "rekeying 1 child SA(s)"

    def rekeyed() -> bool:
        d = json.loads(nt("show", "--json", "--socket", str(sock_a)).stdout)
        kids = d["peers"]["b"]["ike_sas"][0]["children"]
        return any(c["spi_in"] != old and c["in_use"] for c in kids) and d["peers"]["b"][
            "child_rekeys"] == 1

    _wait(rekeyed)
    # MOBIKE (on by default): an UPDATE_SA_ADDRESSES on request, the same SA afterwards
    spi = json.loads(nt("show", "--json", "--socket", str(sock_a)).stdout)["peers"]["b"][
        "ike_sas"][0]["spi_i"]
    out = nt("update-address", "b", "--socket", str(sock_a)).stdout.strip()
    assert out == "updating the addresses of 1 IKE SA(s) (MOBIKE)"

    def updated() -> bool:
        sa = json.loads(nt("show", "--json", "--socket", str(sock_a)).stdout)["peers"][
            "b"]["ike_sas"][0]
        return bool(sa["mobike"] and sa["path_updates"] == 1 and sa["spi_i"] == spi)

    _wait(updated)
    assert "MOBIKE: 1 address update(s)" in nt("show", "--socket", str(sock_a)).stdout
    r = nt("show", "zz", "--socket", str(sock_a), check=False)
    assert r.returncode == 1 and r.stderr.strip() == "nattunnel show: " + str(sock_a) + \
        ": no peer 'zz'"
    assert "1 IKE SA(s) deleted" in nt("terminate", "b", "--socket", str(sock_a)).stdout

    def b_lost_it() -> bool:
        d = json.loads(nt("show", "--json", "--socket", str(sock_b)).stdout)
        return d["peers"]["a"]["ike_sas"] == []

    _wait(b_lost_it, 5)
    assert nt("initiate", "b", "--socket", str(sock_a)).stdout.strip() == "initiating"
    _wait(lambda: json.loads(nt("show", "--json", "--socket", str(sock_a)).stdout)[
        "peers"]["b"]["state"] == "up")
    assert nt("down", "--socket", str(sock_a)).stdout.strip() == "stopping"
    assert proc_a.wait(10) == 0
    assert not sock_a.exists()
    _wait(b_lost_it, 5)  # the graceful stop's Delete
    r = nt("show", "--socket", str(sock_a), check=False)
    assert r.returncode == 1 and "cannot reach the endpoint" in r.stderr


def test_reload_from_the_command_line(pair: Pair, tmp_path: Path) -> None:
    _, sock_b, cfg_b, _ = pair
    before = json.loads(nt("show", "--json", "--socket", str(sock_b)).stdout)["peers"]["a"]
    good = cfg_b.read_text()
    cfg_b.write_text(good.replace('remote_id = "hosta"', 'remote_id = "1a:é"'))
    r = nt("reload", "--socket", str(sock_b), check=False)
    assert r.returncode == 1 and "nothing changed" in r.stderr and "peer[0].remote_id" in \
        r.stderr
    extra = ('[[peer]]\nname = "c"\nauth = "psk"\npsk_file = "k.psk"\nlocal_id = "hostb"\n'
             'remote_id = "hostc"\nallowed_ips = ["198.18.100.3/32"]\n'
             'local_ts = ["198.18.100.2/32"]\n')
    cfg_b.write_text(good.replace("ike_port = 0", "ike_port = 0\nmetrics = \"127.0.0.1:0\"")
                     + extra)
    out = nt("reload", "--socket", str(sock_b)).stdout
    assert "added: c" in out and "unchanged: a" in out and "restart needed: metrics" in out
    after = json.loads(nt("show", "--json", "--socket", str(sock_b)).stdout)["peers"]
    assert set(after) == {"a", "c"} and after["c"]["state"] == "waiting"
    assert after["a"]["ike_sas"][0]["spi_i"] == before["ike_sas"][0]["spi_i"]
