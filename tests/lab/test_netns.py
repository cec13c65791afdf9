"""Proves the NAT lab harness (tests/support/lab.py) with plain UDP through a real Linux NAT."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from tests.support.lab import (
    HOST_ADDR,
    ROUTER_WAN,
    Lab,
    LabError,
    lab_fixture,  # noqa: F401  (registers the ``lab`` fixture)
    parse_conntrack,
    require_lab_tools,
    run,
)

A, B, C, E = HOST_ADDR["a"], HOST_ADDR["b"], HOST_ADDR["c"], HOST_ADDR["e"]
WITH_C = pytest.mark.parametrize("lab", [{"with_c": True}], indirect=True)
WITH_E = pytest.mark.parametrize("lab", [{"with_e": True}], indirect=True)

CT_SAMPLE = """\
udp      17 27 src=198.19.1.2 dst=198.18.0.2 sport=4500 dport=4500 src=198.18.0.2 \
dst=198.18.0.1 sport=4500 dport=4500 [ASSURED] mark=0 use=1
udp      17 3 src=198.19.1.3 dst=198.18.0.2 sport=4500 dport=4500 [UNREPLIED] \
src=198.18.0.2 dst=198.18.0.1 sport=4500 dport=31337 mark=0 use=1
tcp      6 431999 ESTABLISHED src=198.19.1.2 dst=198.18.0.2 sport=1 dport=2 src=198.18.0.2 \
dst=198.18.0.1 sport=2 dport=1 [ASSURED] mark=0 use=1
"""


# ----------------------------------------------------------------- no-root unit tests


def test_parse_conntrack() -> None:
    entries = parse_conntrack(CT_SAMPLE)
    assert len(entries) == 2  # the TCP line is ignored
    first, second = entries
    assert (first.src, first.sport, first.dst, first.dport) == (A, 4500, B, 4500)
    assert first.external == (ROUTER_WAN, 4500) and "ASSURED" in first.flags
    assert second.external == (ROUTER_WAN, 31337) and "UNREPLIED" in second.flags
    assert second.timeout == 3


def test_run_reports_command_and_stderr() -> None:
    with pytest.raises(LabError) as info:
        run(["sh", "-c", "echo boom >&2; exit 3"])
    assert "sh -c" in str(info.value) and "boom" in str(info.value) and "rc=3" in str(info.value)
    with pytest.raises(LabError, match="timed out"):
        run(["sleep", "5"], timeout=0.2)


def test_require_tools_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NATTUNNEL_REQUIRE_ROOT", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-xyz"):
        require_lab_tools(("no-such-tool-xyz",))
    monkeypatch.setattr("tests.support.lab.os.geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        require_lab_tools(("sh",))
    monkeypatch.setenv("NATTUNNEL_REQUIRE_ROOT", "1")
    with pytest.raises(pytest.fail.Exception, match=r"needs root.*no-such-tool-xyz"):
        require_lab_tools(("no-such-tool-xyz",))


# ----------------------------------------------------------------- root integration tests


def _mapped_port(lab: Lab, src: str = A, sport: int = 4500) -> int:
    entries = lab.conntrack_list(src=src, sport=sport, dst=B)
    assert len(entries) == 1, entries
    assert entries[0].reply_dst == ROUTER_WAN
    return entries[0].reply_dport


@pytest.mark.root
def test_outbound_through_nat_and_reply(lab: Lab) -> None:
    assert len(lab.prefix) == 8 and all(len(n) <= 15 for n in lab.namespaces)
    b = lab.udp_peer("b", 4500)
    a = lab.udp_peer("a", 4500)
    assert a.send(B, 4500, b"hello") == 0
    got = b.recv(3.0)
    assert got is not None
    data, src, sport = got
    assert data == b"hello" and src == ROUTER_WAN  # B sees the NAT's WAN address
    assert sport == _mapped_port(lab)  # ... and the external port in conntrack
    assert sport == 4500  # Linux masquerade keeps a free source port by default
    assert b.send(src, sport, b"reply") == 0  # the reply goes back through the mapping
    assert a.recv(3.0) == (b"reply", B, 4500)


@pytest.mark.root
def test_public_side_cannot_reach_lan_unsolicited(lab: Lab) -> None:
    b = lab.udp_peer("b", 4500)
    a = lab.udp_peer("a", 4500)
    # B has no route to the LAN at all.
    assert b.send(A, 4500, b"direct") == errno.ENETUNREACH
    # Nor does anything arrive through the router's WAN address without a mapping.
    assert b.send(ROUTER_WAN, 4500, b"unsolicited") == 0
    assert a.recv(1.0) is None
    assert lab.conntrack_list(src=A) == []


@pytest.mark.root
def test_mapping_expires_after_udp_timeout(lab: Lab) -> None:
    lab.set_udp_timeout(3)
    b = lab.udp_peer("b", 4500)
    a = lab.udp_peer("a", 4500)
    a.send(B, 4500, b"open")
    got = b.recv(3.0)
    assert got is not None
    _, src, port = got
    b.send(src, port, b"while-mapped")
    assert a.recv(3.0) == (b"while-mapped", B, 4500)
    assert lab.conntrack_list(src=A)
    # Let the mapping die; poll conntrack (expired entries vanish).
    assert lab.wait_for(lambda: not lab.conntrack_list(src=A), timeout=10.0, interval=0.5)
    assert b.send(src, port, b"after-expiry") == 0
    assert a.recv(1.0) is None  # the old external port leads nowhere now


@pytest.mark.root
def test_random_masquerade_remaps_to_new_port(lab: Lab) -> None:
    b = lab.udp_peer("b", 4500)
    a = lab.udp_peer("a", 4500)
    lab.set_masquerade(random="fully")  # random-fully: a fresh random port per mapping
    ports = []
    for i in range(3):
        assert lab.conntrack_delete(src=A) in (0, 1)
        assert lab.conntrack_list(src=A) == []
        a.send(B, 4500, b"probe%d" % i)
        got = b.recv(3.0)
        assert got is not None and got[1] == ROUTER_WAN
        assert got[2] == _mapped_port(lab)  # conntrack -D + new traffic: a new entry
        ports.append(got[2])
    assert len(set(ports)) > 1, ports  # random port per re-created mapping
    # `masquerade random` (hash-based) also stops preserving the source port; switching
    # back to the default keeps it again.
    lab.set_masquerade(random=True)
    lab.conntrack_delete(src=A)
    a.send(B, 4500, b"random")
    got = b.recv(3.0)
    assert got is not None and got[2] != 4500
    lab.set_masquerade(random=False)
    lab.conntrack_delete(src=A)
    a.send(B, 4500, b"default")
    got = b.recv(3.0)
    assert got is not None and got[2] == 4500


@pytest.mark.root
@WITH_C
def test_two_hosts_behind_nat_both_reach_4500(lab: Lab) -> None:
    b = lab.udp_peer("b", 4500)
    a = lab.udp_peer("a", 4500)
    c = lab.udp_peer("c", 4500)
    a.send(B, 4500, b"from-a")
    c.send(B, 4500, b"from-c")
    seen = {}
    for _ in range(2):
        got = b.recv(3.0)
        assert got is not None
        seen[got[0]] = (got[1], got[2])
    assert set(seen) == {b"from-a", b"from-c"}
    assert seen[b"from-a"][0] == seen[b"from-c"][0] == ROUTER_WAN
    assert seen[b"from-a"][1] != seen[b"from-c"][1]  # distinct external ports
    assert {e.external for e in lab.conntrack_list(dst=B)} == set(seen.values())
    # Replies reach the right host.
    b.send(*seen[b"from-c"], b"to-c")
    b.send(*seen[b"from-a"], b"to-a")
    assert c.recv(3.0) == (b"to-c", B, 4500)
    assert a.recv(3.0) == (b"to-a", B, 4500)


@pytest.mark.root
@WITH_E
def test_attacker_cannot_use_someone_elses_mapping(lab: Lab) -> None:
    b = lab.udp_peer("b", 4500)
    e = lab.udp_peer("e", 4500)
    a = lab.udp_peer("a", 4500)
    a.send(B, 4500, b"open")
    got = b.recv(3.0)
    assert got is not None
    # E shares the WAN segment with B and can talk to it ...
    e.send(B, 4500, b"hi-b")
    assert b.recv(3.0) == (b"hi-b", E, 4500)
    # ... but Linux conntrack filters by address and port: E's packet to A's mapping is dropped.
    e.send(got[1], got[2], b"spoof")
    assert a.recv(1.0) is None
    b.send(got[1], got[2], b"legit")
    assert a.recv(3.0) == (b"legit", B, 4500)


@pytest.mark.root
def test_close_stops_processes_and_deletes_namespaces() -> None:
    require_lab_tools()
    with Lab(with_c=True, with_e=True) as the_lab:
        names = list(the_lab.namespaces)
        assert len(names) == 6
        proc = the_lab.popen("b", "sleep", "60")

        # `ip netns exec` execs: the PID becomes sleep's own (once the exec has happened).
        def comm() -> str:
            with open(f"/proc/{proc.pid}/comm") as f:
                return f.read().strip()

        assert the_lab.wait_for(lambda: comm() == "sleep", timeout=5.0, interval=0.02)
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        # Routing sanity: A routes to B via the router, B has no route to the LAN.
        assert "via 198.19.1.1" in the_lab.exec("a", "ip", "route", "get", B).stdout
        assert the_lab.exec("b", "ip", "route", "get", A, check=False).returncode != 0
        if shutil.which("ping"):
            the_lab.exec("a", "ping", "-c1", "-W2", B)
    assert proc.poll() is not None
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
    ).stdout
    assert not any(n in listed for n in names)
    assert not os.path.exists(f"/proc/{proc.pid}/comm") or proc.returncode is not None
    the_lab.close()  # idempotent


_ORPHAN = """
import os, subprocess, sys
sys.path.insert(0, {root!r})
from tests.support.lab import Lab
lab = Lab()
proc = lab.popen("b", "sleep", "60", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(lab.prefix, proc.pid, " ".join(lab.namespaces), flush=True)
if sys.argv[1] == "crash":
    os._exit(1)  # no atexit, no finalisers: like a SIGKILLed test run
"""


@pytest.mark.root
@pytest.mark.parametrize("how", ["exit", "crash"])
def test_abandoned_lab_leaves_nothing_behind(how: str) -> None:
    require_lab_tools()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cp = subprocess.run(
        [sys.executable, "-c", _ORPHAN.format(root=root), how],
        capture_output=True,
        text=True,
        timeout=20,
    )
    _prefix, pid, *names = cp.stdout.split()

    def leftovers() -> list[str]:
        listed = run(["ip", "netns", "list"]).stdout.split()
        return [n for n in names if n in listed]

    if how == "crash":
        assert leftovers() == names  # the crash really left its namespaces behind
        Lab().close()  # the next lab sweeps labs whose owner process is dead
    assert leftovers() == []

    def sleeper_alive() -> bool:  # gone, or a zombie waiting for init to reap it
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return False
        return "(sleep)" in stat and stat.rsplit(")", 1)[1].split()[0] != "Z"

    assert not sleeper_alive()
