"""`nattunnel up` from a configuration: keepalive modes, the in-process kind, signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nattunnel.app import Controller, build_tunnel
from nattunnel.config import parse_config
from nattunnel.esp.suite import AES_GCM_256
from nattunnel.keys import generate_keymat, write_key_file, write_psk_file
from nattunnel.tunnel.core import PeerMoved, RekeyNeeded, Tunnel
from tests.support.ike import Net

REPO = Path(__file__).resolve().parent.parent


def peer(name, n, keepalive, behind_nat, endpoint=True):
    return f"""
[[peer]]
name = "{name}"
{f'endpoint = "198.18.0.{n}:4500"' if endpoint else ""}
allowed_ips = ["198.18.100.{n}/32"]
spi_in = {0x1000 + n}
spi_out = {0x2000 + n}
key_in = "keys/{name}-in.key"
key_out = "keys/{name}-out.key"
keepalive = "{keepalive}"
behind_nat = {"true" if behind_nat else "false"}
keepalive_interval = 5
"""


def write_config(tmp: Path, port: int = 0) -> Path:
    (tmp / "keys").mkdir()
    for name in ("natbehind", "natpublic", "always", "never"):
        for d in ("in", "out"):
            write_key_file(tmp / "keys" / f"{name}-{d}.key", generate_keymat(AES_GCM_256))
    # no control socket: these tests run `up` many times, maybe beside other runs
    text = (f'listen = ["127.0.0.1:{port}"]\ncontrol_socket = ""\n'
            f'[interface]\nkind = "inprocess"\n'
            + peer("natbehind", 1, "nat", True) + peer("natpublic", 2, "nat", False,
                                                         endpoint=False)
            + peer("always", 3, "always", False) + peer("never", 4, "never", True))
    path = tmp / "c.toml"
    path.write_text(text)
    return path


def test_keepalive_modes_map_to_the_core(tmp_path):
    path = write_config(tmp_path)
    cfg = parse_config(path.read_text(), tmp_path, path)
    t = build_tunnel(cfg, now=100.0)
    ka = {name: p.keepalive for name, p in t.peers.items()}
    assert ka == {"natbehind": True, "natpublic": False, "always": True, "never": False}
    assert t.peers["natpublic"].addr is None  # learned later
    assert t.get_timer() == 105.0


def test_up_runs_reports_stats_and_stops_cleanly(tmp_path):
    path = write_config(tmp_path)
    stats = tmp_path / "stats.json"
    logf = tmp_path / "up.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with logf.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "nattunnel", "up", str(path), "--stats",
                                 str(stats)], stderr=err, env=env)
    try:
        deadline = time.monotonic() + 10
        # SIGUSR1 before the handler is installed would end the process: wait for the log
        while "listening on" not in logf.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        report = json.loads(stats.read_text())
        assert set(report["peers"]) == {"natbehind", "natpublic", "always", "never"}
        assert report["listen"][0].startswith("127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = logf.read_text()
    assert "listening on 127.0.0.1:" in log and "stopped" in log
    for name in ("natbehind", "always", "never"):
        key = (tmp_path / "keys" / f"{name}-out.key").read_text().strip()
        assert key not in log and key[:16] not in log  # keys are never logged


def test_up_refuses_a_bad_config_naming_the_field(tmp_path):
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("spi_in = 4097", "spi_in = 12"))
    r = subprocess.run([sys.executable, "-m", "nattunnel", "up", str(path)],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 2
    assert "peer[0].spi_in" in r.stderr and "nattunnel up:" in r.stderr


IKE_CONFIG = """listen = ["127.0.0.1:0"]
control_socket = ""
ike_port = 0
[interface]
kind = "inprocess"
[[peer]]
name = "b"
auth = "psk"
psk_file = "b.psk"
local_id = "hosta"
remote_id = "hostb"
allowed_ips = ["198.18.100.2/32"]
local_ts = ["198.18.100.1/32"]
"""


@pytest.mark.parametrize(("old", "new", "field"), [
    ('local_id = "hosta"', 'local_id = "1a:é"', "peer[0].local_id"),
    ('remote_id = "hostb"', 'remote_id = "keyid:#zz"', "peer[0].remote_id"),
    ('remote_id = "hostb"', 'remote_id = "@#0"', "peer[0].remote_id"),
    ('psk_file = "b.psk"', r'psk_file = "b\u0000.psk"', "peer[0].psk_file"),
    ('ike_port = 0', 'ike_port = 0\nkeylog = "k\\u0000"', "keylog"),
    ('ike_port = 0', 'ike_port = 0\n[limits]\nhalf_open_max = 0', "limits.half_open_max"),
])
def test_up_prints_one_line_without_a_traceback(tmp_path, old, new, field):
    """Strings that reached encode/fromhex/os unchecked made `nattunnel up` print a
    traceback (issue 9 item 5): now one line naming the field, and exit status 2."""
    write_psk_file(tmp_path / "b.psk", b"correct horse battery staple")
    assert IKE_CONFIG.count(old) == 1
    path = tmp_path / "c.toml"
    path.write_text(IKE_CONFIG.replace(old, new), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "nattunnel", "up", str(path)],
                       capture_output=True, text=True, timeout=30, cwd=REPO)
    assert "Traceback" not in r.stderr
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"nattunnel up: {path}: {field}: ")


def test_controller_tells_tunnel_events_to_ike_and_the_log(caplog):
    """The Tunnel <-> IKE policy: an outbound SA past its soft limit is rekeyed by IKE (the
    request comes out of the controller), or, for a manual SA, a warning; a peer that moved
    is logged (IKE moves only with an authenticated IKE message)."""
    caplog.set_level("INFO", logger="nattunnel")
    net = Net()
    net.a.initiate("b", 0.0)
    net.deliver()
    first = net.ta.peers["b"].outbound
    assert first is not None
    control = Controller(net.ta, net.a, ike_port=0)
    assert control.ike_port == 0 and set(control.stats()) == {"ike"}
    control.handle_tunnel_event(RekeyNeeded("b", first.spi), 1.0)
    assert f"peer b: SA {first.spi:#010x} passed its sequence-number soft limit; rekeying" \
        in caplog.text
    (rekey,) = control.datagrams_to_send()  # the CREATE_CHILD_SA request
    assert rekey.natt and rekey.remote == ("198.18.0.2", 4500)
    control.handle_tunnel_event(RekeyNeeded("b", 0x1234), 1.0)  # no child SA has it
    assert "SA 0x00001234 passed its sequence-number soft limit; manual SAs cannot be " \
        "rekeyed" in caplog.text
    sa_a = next(iter(net.a.sas.values()))
    control.handle_tunnel_event(PeerMoved("b", ("198.18.0.2", 4500), ("198.18.0.2", 4501)),
                                2.0)
    assert "peer b moved from 198.18.0.2:4500 to 198.18.0.2:4501 (NAT rebinding)" in caplog.text
    assert sa_a.remote == ("198.18.0.2", 4500)  # IKE stays where IKE was authenticated


def test_controller_without_ike(caplog):
    caplog.set_level("INFO", logger="nattunnel")
    control = Controller(Tunnel())
    assert control.ike_port is None and control.stats() == {}
    assert control.get_timer() is None and control.next_event() is None
    assert control.datagrams_to_send() == []
    control.handle_tunnel_event(PeerMoved("m", None, ("198.18.0.9", 4500)), 0.0)
    control.handle_tunnel_event(RekeyNeeded("m", 0x2001), 0.0)
    assert "peer m: first authenticated packet from 198.18.0.9:4500" in caplog.text
    assert "peer m: SA 0x00002001 passed its sequence-number soft limit; manual SAs cannot " \
        "be rekeyed: install new keys" in caplog.text


def _start_up(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`nattunnel up` on write_config's configuration, once it has logged "listening on"."""
    path = write_config(tmp_path)
    logf = tmp_path / "up.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with logf.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "nattunnel", "up", str(path), *extra],
                                stderr=err, env=env)
    deadline = time.monotonic() + 10
    while "listening on" not in logf.read_text() and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    return proc, logf


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,),
                                     (signal.SIGINT, signal.SIGTERM)], ids=str)
def test_a_burst_of_sigint_is_one_clean_stop(tmp_path, signals):
    """A second SIGINT within a few ms printed a KeyboardInterrupt traceback from the
    teardown (issue 11): now SIGINT after SIGINT (or SIGTERM), however many, stops once and
    cleanly, with exit status 0."""
    proc, logf = _start_up(tmp_path)
    try:
        for i in range(300):
            try:
                proc.send_signal(signals[i % len(signals)])
            except ProcessLookupError:
                break
            time.sleep(0.0003)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = logf.read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert log.count("stopped: sockets closed") == 1


@pytest.mark.parametrize(("where", "problem"), [
    ("no/such/dir/stats.json", "does not exist"),
    (".", "is a directory"),
])
def test_up_checks_the_stats_file_at_start(tmp_path, where, problem):
    """`--stats` in a directory that does not exist was found only at SIGUSR1, with a
    traceback (issue 11): now at start, one line naming the option, exit status 2."""
    path = write_config(tmp_path)
    stats = tmp_path / where
    r = subprocess.run([sys.executable, "-m", "nattunnel", "up", str(path), "--stats",
                        str(stats)], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nattunnel up: --stats {stats}: ")
    assert problem in r.stderr and "Traceback" not in r.stderr


def test_stats_that_cannot_be_written_later_are_logged_not_raised(tmp_path):
    """The directory going away while the endpoint runs: SIGUSR1 logs an error and the
    endpoint goes on (and stops cleanly)."""
    (tmp_path / "s").mkdir()
    proc, logf = _start_up(tmp_path, "--stats", str(tmp_path / "s" / "stats.json"))
    try:
        (tmp_path / "s").rmdir()
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "cannot write the counters" not in logf.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, logf.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in logf.read_text()


def test_startup_line_says_an_address_is_not_known_yet(tmp_path):
    """The startup line said "address learned" for a peer whose address was not known yet
    (issue 11): it says what is true, for a manual and for an IKE peer."""
    proc, logf = _start_up(tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = logf.read_text()
    assert ("peer natpublic: address not known yet: learned from its first authenticated "
            "packet, allowed 198.18.100.2/32") in log
    assert "peer natbehind: 198.18.0.1:4500, allowed" in log
    assert "address learned" not in log

    write_psk_file(tmp_path / "b.psk", b"correct horse battery staple")
    path = tmp_path / "ike.toml"
    path.write_text(IKE_CONFIG)
    r = subprocess.run([sys.executable, "-c", (
        "import asyncio, logging, os, signal, sys; logging.basicConfig(level='INFO'); "
        "from nattunnel.app import run; from nattunnel.config import load_config; "
        "loop = asyncio.new_event_loop(); "
        "loop.call_later(0.5, os.kill, os.getpid(), signal.SIGTERM); "
        f"sys.exit(loop.run_until_complete(run(load_config({str(path)!r}))))")],
        capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert ("peer b: address not known yet: learned when it authenticates (IKE_AUTH), "
            "allowed 198.18.100.2/32") in r.stderr


def _busy_port() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def test_a_port_in_use_names_the_field(tmp_path):
    """The port-in-use error did not name the field (issue 11): `listen[i]` or `ike_port`,
    after the configuration's path, and no traceback."""
    path = write_config(tmp_path)
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        path.write_text(path.read_text().replace(
            'listen = ["127.0.0.1:0"]', f'listen = ["127.0.0.1:0", "127.0.0.1:{port}"]'))
        r = subprocess.run([sys.executable, "-m", "nattunnel", "up", str(path)],
                           capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"nattunnel up: {path}: listen[1] = 127.0.0.1:{port}: "
                               f"address already in use"), r.stderr
    assert len(r.stderr.splitlines()) == 1

    write_psk_file(tmp_path / "b.psk", b"correct horse battery staple")
    path = tmp_path / "ike.toml"
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        path.write_text(IKE_CONFIG.replace("ike_port = 0", f"ike_port = {port}"))
        r = subprocess.run([sys.executable, "-m", "nattunnel", "up", str(path)],
                           capture_output=True, text=True, timeout=30, cwd=REPO)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"nattunnel up: {path}: ike_port = {port} (on 127.0.0.1): "
                               f"address already in use"), r.stderr


@pytest.mark.root
def test_up_leaves_a_device_that_existed_and_says_so(tmp_path):
    """`nattunnel up` on a TUN device made before (`ip tuntap add nt0`) logged "interface
    removed" and left our address on it (issue 11): the log says what was done, and the
    device is as it was found."""
    import json as _json
    import secrets

    from tests.support.lab import require_lab_tools, run

    require_lab_tools(("ip",))
    ns = "ntapp" + secrets.token_hex(4)
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", ns, "tuntap", "add", "dev", "nttun0", "mode", "tun"])
        path = write_config(tmp_path)
        path.write_text(path.read_text().replace(
            '[interface]\nkind = "inprocess"\n',
            '[interface]\nkind = "tun"\nname = "nttun0"\naddresses = ["198.18.100.9/24"]\n'))
        logf = tmp_path / "up.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with logf.open("w") as err:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                     "nattunnel", "up", str(path)], stderr=err, env=env)
        try:
            deadline = time.monotonic() + 10
            while "listening on" not in logf.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, logf.read_text()
                time.sleep(0.05)
            for _ in range(100):  # a burst, while the device is being put back
                try:
                    proc.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    break
                time.sleep(0.001)
            assert proc.wait(10) == 0, logf.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        log = logf.read_text()
        assert "TUN device nttun0 existed before: left in place" in log, log
        assert "the device existed before: taken over, and left as found at stop" in log
        assert "KeyboardInterrupt" not in log
        assert "interface removed" not in log and "Traceback" not in log
        (addr,) = _json.loads(run(["ip", "-n", ns, "-j", "addr", "show", "dev",
                                   "nttun0"]).stdout)
        assert [a for a in addr["addr_info"] if a["family"] == "inet"] == []
        assert "UP" not in addr["flags"]
        routes = _json.loads(run(["ip", "-n", ns, "-j", "route", "show"]).stdout or "[]")
        assert not [r for r in routes if r.get("dev") == "nttun0"], routes
    finally:
        run(["ip", "netns", "del", ns], check=False)
