"""``nattunnel up`` through a real Linux NAT (root only): the NAT lab of tests/support/lab.py
with endpoints started by tests/support/tunnel_lab.py.

Hosts A and C sit behind the router's nftables masquerade (198.19.1.0/24 -> 198.18.0.1); host B
(198.18.0.2) is public and learns where A and C are from their first authenticated packets.
Host E (198.18.0.3) is an attacker on B's segment. Inner addresses: A 198.18.100.1,
B 198.18.100.2, C 198.18.100.3.

Every test is bounded (a lab command times out after 10 s, every wait has a deadline) and
stops what it started by PID (``Lab.stop`` / ``Lab.close``).
"""

from __future__ import annotations

import ipaddress
import json
import random
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nattunnel.esp.sa import OutboundSA
from nattunnel.esp.suite import suite_by_name
from nattunnel.keys import load_keymat
from tests.support import tunnel_lab
from tests.support.lab import (
    HOST_ADDR,
    ROUTER_WAN,
    Lab,
    lab_fixture,  # noqa: F401  (registers the ``lab`` fixture)
)
from tests.support.tunnel_lab import (
    INNER,
    SPI,
    TCP_CLIENT,
    TCP_SERVER,
    Tunnels,
    expected_stream_digest,
)

A, B, C, E = HOST_ADDR["a"], HOST_ADDR["b"], HOST_ADDR["c"], HOST_ADDR["e"]
SUITE = "aes256gcm16"

WITH_C = pytest.mark.parametrize("lab", [{"with_c": True}], indirect=True)
WITH_E = pytest.mark.parametrize("lab", [{"with_e": True}], indirect=True)


# --------------------------------------------------------------------------- helpers


def assert_clean_log(t: Tunnels) -> None:
    """No endpoint logged a traceback or an error."""
    for role, node in t.nodes.items():
        text = node.log()
        assert "Traceback" not in text, f"{role} log:\n{text}"
        assert " ERROR " not in text, f"{role} log:\n{text}"


def ping_both(t: Tunnels, host: str = "a") -> None:
    """host -> B first (B learns the host's address from it), then B -> host."""
    assert t.ping(host, "b"), f"ping {host} -> b failed; logs:\n{t.nodes[host].log()}"
    assert t.ping("b", host), f"ping b -> {host} failed; B log:\n{t.nodes['b'].log()}"


def mapping(lab: Lab, host: str) -> list[tuple[str, int]]:
    """External (address, port) of the router's entries for host:4500 -> B:4500."""
    return [e.external for e in lab.conntrack_list(src=HOST_ADDR[host], dst=B, dport=4500)]


def stop_cleanly(lab: Lab, t: Tunnels, role: str) -> None:
    """SIGTERM: exit status 0, the TUN device gone, "stopped" logged."""
    node = t.nodes[role]
    assert node.proc.poll() is None, f"{role} died early; log:\n{node.log()}"
    rc = lab.stop(node.proc, timeout=5.0)
    assert rc == 0, f"{role} exited with {rc}; log:\n{node.log()}"
    assert not tunnel_lab.tun_present(lab, role), f"{role}: nt0 still exists after exit"
    assert "stopped" in node.log(), node.log()
    # A clean exit also writes the final counters.
    assert json.loads(node.stats_path.read_text())["peers"]


# --------------------------------------------------------------------------- 1. A <-> B


@pytest.mark.root
def test_tunnel_through_nat_ping_and_tcp_transfer(lab: Lab, tmp_path: Path) -> None:
    t = tunnel_lab.start(lab, tmp_path)
    ping_both(t)

    b_sees_a = t.peer("b", "a")
    # B learned A from its first authenticated packet: the router's WAN address.
    assert b_sees_a["addr"] == [ROUTER_WAN, 4500]
    assert mapping(lab, "a") == [(ROUTER_WAN, 4500)]
    assert b_sees_a["rebinds"] == 0

    size, seed, chunk, port = 32 << 20, 20251127, 1 << 16, 5201
    server = lab.popen("b", sys.executable, "-u", "-c", TCP_SERVER, INNER["b"], port,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stderr is not None
    assert server.stdout.readline().strip() == "ready", server.stderr.read()
    cp = lab.exec("a", sys.executable, "-c", TCP_CLIENT, INNER["b"], port, size, seed, chunk,
                  timeout=45, check=False)
    assert cp.returncode == 0, f"client failed: {cp.stderr}\nA log:\n{t.nodes['a'].log()}"
    sent = json.loads(cp.stdout)
    out, err = server.communicate(timeout=10)
    assert server.returncode == 0, err
    got = json.loads(out)

    want = expected_stream_digest(size, seed, chunk)
    assert (sent["bytes"], sent["sha256"]) == (size, want)  # the client's own digest
    assert got == {"bytes": size, "sha256": want, "peer": INNER["a"]}  # the server's
    assert sent["echo"] == want  # the server's digest, as the client received it

    # Every inner packet went through the tunnel; nothing was dropped on the way in.
    b_stats = t.nodes["b"].stats()
    a_stats = t.nodes["a"].stats()
    assert b_stats["peers"]["a"]["rx_bytes"] > size
    assert b_stats["peers"]["a"]["sa_drops"] == {}
    assert a_stats["peers"]["b"]["sa_drops"] == {}
    assert b_stats["drops"].get("source_not_allowed", 0) == 0

    assert_clean_log(t)
    stop_cleanly(lab, t, "a")
    stop_cleanly(lab, t, "b")


# --------------------------------------------------------------------------- 2. A and C


@pytest.mark.root
@WITH_C
def test_two_hosts_behind_one_nat(lab: Lab, tmp_path: Path) -> None:
    t = tunnel_lab.start(lab, tmp_path, hosts=("a", "c"))
    assert t.ping("a", "b")
    assert t.ping("c", "b")
    assert t.ping("b", "a")
    assert t.ping("b", "c")

    peers = t.nodes["b"].stats()["peers"]
    addr_a, addr_c = tuple(peers["a"]["addr"]), tuple(peers["c"]["addr"])
    assert addr_a[0] == addr_c[0] == ROUTER_WAN
    assert addr_a[1] != addr_c[1], (addr_a, addr_c)  # one mapping each
    assert 4500 in (addr_a[1], addr_c[1])  # the first keeps its port (default masquerade)
    # What B learned is exactly what the router's conntrack says.
    assert mapping(lab, "a") == [addr_a]
    assert mapping(lab, "c") == [addr_c]
    for h in ("a", "c"):
        assert peers[h]["rebinds"] == 0
        assert peers[h]["rx_packets"] >= 2 and peers[h]["tx_packets"] >= 2
    # Each host's traffic went to its own SA: nothing crossed over.
    assert t.nodes["b"].stats()["drops"] == {}
    assert_clean_log(t)


# --------------------------------------------------------------------------- 3. expiry

NAT_TIMEOUT = 5  # router's conntrack UDP timeout, seconds
KEEPALIVE_INTERVAL = 2.0
SILENCE = 3 * NAT_TIMEOUT


@pytest.mark.root
@pytest.mark.parametrize("lab", [{"udp_timeout": NAT_TIMEOUT}], indirect=True)
@pytest.mark.parametrize("keepalive", ["nat", "never"])
def test_keepalives_hold_the_nat_mapping(lab: Lab, tmp_path: Path, keepalive: str) -> None:
    """keepalive="nat" on A (behind NAT): 0xFF every 2 s keeps the 5-s mapping through 15 s
    of silence, so B can still reach A. keepalive="never": the mapping expires and B's
    packets to A's old external port are lost."""
    t = tunnel_lab.start(lab, tmp_path, keepalive=keepalive, interval=KEEPALIVE_INTERVAL)
    assert t.ping("a", "b", count=1)  # opens the mapping; B learns A
    a0 = t.peer("a", "b")
    b0 = t.peer("b", "a")
    assert b0["addr"] == [ROUTER_WAN, 4500]

    # Silence: no inner traffic at all. Watch the router's table meanwhile.
    present = []
    deadline = time.monotonic() + SILENCE
    while (left := deadline - time.monotonic()) > 0:
        present.append(mapping(lab, "a"))
        time.sleep(min(1.0, max(left, 0)))
    a1 = t.peer("a", "b")
    b1 = t.nodes["b"].stats()
    ka_sent = a1["keepalives_sent"] - a0["keepalives_sent"]
    ka_recv = b1["peers"]["a"]["keepalives_received"] - b0["keepalives_received"]
    after = mapping(lab, "a")

    if keepalive == "nat":
        assert ka_sent >= SILENCE / KEEPALIVE_INTERVAL - 1.5, a1  # ~7 in 15 s
        # every keepalive reached B, from A's mapping (at most one in flight)
        assert ka_sent <= ka_recv <= ka_sent + 1, (ka_sent, ka_recv)
        assert all(p == [(ROUTER_WAN, 4500)] for p in present), present
        assert after == [(ROUTER_WAN, 4500)]
        assert t.ping("b", "a", count=2), t.nodes["b"].log()
        assert t.peer("b", "a")["rebinds"] == 0
    else:
        assert ka_sent == 0 and ka_recv == 0
        assert b1["keepalives_received"] == 0
        assert present and present[0] == [(ROUTER_WAN, 4500)]
        assert after == [], after  # expired
        b_tx = b1["peers"]["a"]["tx_packets"]
        assert not t.ping("b", "a", count=2)  # B -> A needs the mapping
        # B did send (two echo requests into the tunnel); they died at the router.
        assert t.peer("b", "a")["tx_packets"] >= b_tx + 2
        assert mapping(lab, "a") == []
        # A speaking first opens a new mapping and B follows it. (B's packets to the dead
        # mapping left an UNREPLIED router-local entry B:4500 -> WAN:4500 whose reply tuple
        # holds WAN:4500, so Linux usually gives A another port: B must rebind to it.)
        assert t.ping("a", "b")
        assert t.ping("b", "a")
        new = mapping(lab, "a")
        assert len(new) == 1 and tuple(t.peer("b", "a")["addr"]) == new[0]
    assert t.nodes["b"].stats()["drops"] == {}
    assert_clean_log(t)


# --------------------------------------------------------------------------- 4. rebinding


@pytest.mark.root
def test_nat_rebinding_moves_the_peer(lab: Lab, tmp_path: Path) -> None:
    t = tunnel_lab.start(lab, tmp_path)
    ping_both(t)
    old = tuple(t.peer("b", "a")["addr"])
    assert old == (ROUTER_WAN, 4500)
    assert mapping(lab, "a") == [old]

    lab.set_masquerade(random=True)
    for _attempt in range(2):  # if the router happens to pick the same port, once more
        assert lab.conntrack_delete(src=A) >= 1
        assert mapping(lab, "a") == []
        assert t.ping("a", "b"), t.nodes["a"].log()  # A's next packet: a new mapping
        new = mapping(lab, "a")
        assert len(new) == 1
        if new[0] != old:
            break
    assert new[0] != old, "the router kept the same external port twice"
    assert new[0][0] == ROUTER_WAN

    assert t.ping("b", "a"), t.nodes["b"].log()  # B answers to the new port
    b_sees_a = t.peer("b", "a")
    assert tuple(b_sees_a["addr"]) == new[0]
    assert b_sees_a["rebinds"] >= 1
    assert f"moved from {ROUTER_WAN}:4500 to {ROUTER_WAN}:{new[0][1]}" in t.nodes["b"].log()
    assert t.nodes["b"].stats()["drops"] == {}
    assert_clean_log(t)


# --------------------------------------------------------------------------- 5. hostile input

_SENDER = r"""
import json, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 4500))
n = 0
for h in json.load(sys.stdin):
    s.sendto(bytes.fromhex(h), (host, port))
    n += 1
    time.sleep(0.002)
print(n)
"""


def ipv4_icmp_echo(src: str, dst: str, payload: bytes = b"nattunnel") -> bytes:
    """A valid IPv4 ICMP echo request."""
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x4E54, 1) + payload)
    struct.pack_into("!H", icmp, 2, _checksum(icmp))
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                                ipaddress.IPv4Address(src).packed,
                                ipaddress.IPv4Address(dst).packed))
    struct.pack_into("!H", hdr, 10, _checksum(hdr))
    return bytes(hdr + icmp)


def _checksum(data: bytes | bytearray) -> int:
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys
            if after.get(k, 0) != before.get(k, 0)}


@pytest.mark.root
@WITH_E
def test_hostile_datagrams_at_a_live_endpoint(lab: Lab, tmp_path: Path) -> None:
    # interval: no keepalive may land in the counters during the test
    t = tunnel_lab.start(lab, tmp_path, interval=600)
    ping_both(t)
    spi_b_in = SPI["a"][0]  # B's inbound SPI for A
    spi_key = f"{spi_b_in:#010x}"
    a_tx = t.peer("a", "b")["tx_packets"]
    before = t.nodes["b"].stats()
    # Every packet A sent arrived: A's sequence number 1 is in B's replay window.
    assert before["peers"]["a"]["rx_packets"] == a_tx >= 2
    assert before["peers"]["a"]["addr"] == [ROUTER_WAN, 4500]

    rng = random.Random(3948)
    grams: list[bytes] = []
    tunnel_want: Counter[str] = Counter()
    sa_want: Counter[str] = Counter()

    def add(datagram: bytes, where: Counter[str], reason: str) -> None:
        grams.append(datagram)
        where[reason] += 1

    def high_spi_junk(n: int) -> bytes:  # SPI >= 0x80000000: no SA has it
        return bytes([0x80 | rng.randrange(128)]) + rng.randbytes(n - 1)

    # Garbage of various lengths.
    for n in (0, 2, 3):
        add(rng.randbytes(n), tunnel_want, "truncated")  # shorter than an SPI
    for n in (4, 5, 7):
        add(high_spi_junk(n), tunnel_want, "truncated")  # shorter than an ESP header
    for n in (8, 9, 31, 64, 200, 1400, 9000, 65507):  # up to the largest UDP payload
        add(high_spi_junk(n), tunnel_want, "unknown_spi")
    for one in (b"\x00", b"\xfe", b"\x7f"):
        add(one, tunnel_want, "malformed")  # one octet that is not a keepalive
    for spi, n in ((1, 4), (7, 24), (255, 64)):
        add(struct.pack("!I", spi) + rng.randbytes(n - 4), tunnel_want, "reserved_spi")
    # ESP-looking packets with SPIs B has no inbound SA for (C's, and B's own outbound).
    for spi in (SPI["c"][0], SPI["a"][1]):
        add(struct.pack("!II", spi, 1) + rng.randbytes(60), tunnel_want, "unknown_spi")
    # IKE-like junk behind the non-ESP marker (B has no IKE handler).
    marker = b"\0\0\0\0"
    ike = bytearray(rng.randbytes(28 + 40))
    ike[17] = 0x20  # IKEv2
    add(marker + bytes(ike), tunnel_want, "no_ike_handler")
    ike[17] = 0x10  # IKEv1 header: not accepted on this port
    add(marker + bytes(ike), tunnel_want, "malformed")
    add(marker, tunnel_want, "truncated")
    add(marker + rng.randbytes(27), tunnel_want, "truncated")
    # A keepalive from E: counted, but it belongs to no peer.
    grams.append(b"\xff")
    # Truncated ESP with B's real SPI: 8..35 octets (the smallest ESP packet is 36).
    for n in range(8, 36):
        add(struct.pack("!II", spi_b_in, 5000 + n) + rng.randbytes(n - 8), sa_want, "truncated")
    # Forged ESP: real SPI, high sequence numbers, random IV/ciphertext/ICV.
    for i, n in enumerate((36, 37, 120, 1000, 1400, 65507)):
        add(struct.pack("!II", spi_b_in, 0x7FFFFF00 + i) + rng.randbytes(n - 8), sa_want,
            "auth_failed")
    add(struct.pack("!II", spi_b_in, 0) + rng.randbytes(92), sa_want, "bad_sequence")

    # Genuine packets, made with the real A -> B key (as if E had stolen it or recorded A).
    key = load_keymat(t.key_file("a", "b"), suite_by_name(SUITE))
    replay_sa = OutboundSA(spi_b_in, suite_by_name(SUITE), key, initial_seq=0)
    replayed = replay_sa.encapsulate(ipv4_icmp_echo(INNER["a"], INNER["b"]))  # seq 1: A's first
    add(replayed, sa_want, "replayed")
    # Fresh sequence numbers, ahead of A's but inside B's window (1024), so A is unaffected.
    fresh = OutboundSA(spi_b_in, suite_by_name(SUITE), key, initial_seq=a_tx + 300)
    spoofed = fresh.encapsulate(ipv4_icmp_echo("198.18.100.99", INNER["b"]))
    add(spoofed, tunnel_want, "source_not_allowed")
    add(spoofed, sa_want, "replayed")  # the same authentic packet again
    v6 = struct.pack("!IHBB16s16s", 6 << 28, 0, 59, 64,  # IPv6, no next header, no payload
                     ipaddress.IPv6Address("fd00::1").packed,
                     ipaddress.IPv6Address("fd00::2").packed)
    add(fresh.encapsulate(v6), tunnel_want, "source_not_allowed")  # A may send no IPv6
    buf = memoryview(bytearray(256))
    add(bytes(buf[: fresh.encapsulate_dummy_into(buf, 0, 20)]), sa_want, "dummy")
    add(fresh.encapsulate(b"\x45" + bytes(30)), sa_want, "bad_inner_packet")  # IPv4 length 0

    cp = lab.exec("e", sys.executable, "-c", _SENDER, B, 4500,
                  input=json.dumps([g.hex() for g in grams]), timeout=20)
    assert int(cp.stdout) == len(grams)

    def counters() -> tuple[dict[str, Any], dict[str, int], dict[str, int], int]:
        s = t.nodes["b"].stats()
        sa = s["peers"]["a"]["sa_drops"].get(spi_key, {})
        return (s, _delta(s["drops"], before["drops"]),
                _delta(sa, before["peers"]["a"]["sa_drops"].get(spi_key, {})),
                s["keepalives_received"] - before["keepalives_received"])

    lab.wait_for(lambda: counters()[2].get("bad_inner_packet") == 1, timeout=5.0)
    time.sleep(0.3)  # let anything else still queued land before the exact comparison
    after, tunnel_got, sa_got, keepalives = counters()

    assert t.nodes["b"].proc.poll() is None, t.nodes["b"].log()
    assert tunnel_got == dict(tunnel_want)
    assert sa_got == dict(sa_want)
    assert keepalives == 1
    b_sees_a = after["peers"]["a"]
    assert b_sees_a["keepalives_received"] == before["peers"]["a"]["keepalives_received"]
    assert b_sees_a["source_drops"] == before["peers"]["a"]["source_drops"] + 2
    assert after["endpoint_drops"] == before["endpoint_drops"]
    # Nothing E sent moved A: not the forged, not the replayed, not the authentic ones.
    assert b_sees_a["addr"] == [ROUTER_WAN, 4500]
    assert b_sees_a["rebinds"] == 0
    assert E not in t.nodes["b"].log()

    # The tunnel still carries traffic both ways, on A's own sequence numbers.
    ping_both(t)
    final = t.peer("b", "a")
    assert final["addr"] == [ROUTER_WAN, 4500]
    assert final["sa_drops"].get(spi_key, {}) == after["peers"]["a"]["sa_drops"].get(spi_key, {})
    assert_clean_log(t)
    stop_cleanly(lab, t, "b")
