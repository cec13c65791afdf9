"""nattunnel.traversal.netcheck: the RFC 5780 classification against a scripted RFC 5780
STUN server behind scripted NATs of every RFC 4787 behaviour, on an explicit clock (no
sockets); and ``nattunnel netcheck --json`` on loopback against a real coturn (no root).
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aioice import stun

from nattunnel.lab.coturn import Coturn, coturn_problems, natdiscovery
from nattunnel.traversal.netcheck import (
    ADDRESS_AND_PORT_DEPENDENT as APD,
)
from nattunnel.traversal.netcheck import (
    ADDRESS_DEPENDENT as AD,
)
from nattunnel.traversal.netcheck import (
    ENDPOINT_INDEPENDENT as EI,
)
from nattunnel.traversal.netcheck import (
    NetCheck,
    NetcheckResult,
)

HostPort = tuple[str, int]
HOST = "198.19.1.2"
PUBLIC = "198.18.0.1"
PRIMARY = ("198.18.0.10", 3478)
ALT_IP = "198.18.0.11"
ALT_PORT = 3479
LATENCY = 0.01


@dataclass
class _Mapping:
    key: tuple[object, ...]
    lport: int
    last: float
    allowed: set[HostPort] = field(default_factory=set)


@dataclass
class ScriptedNat:
    """A NAT of a chosen RFC 4787 behaviour: mapping and filtering each "ei", "ad" or
    "apd"; ``preserve``: keep the inside port when free; ``hairpin``; ``timeout``: a mapping
    idle that long is gone."""

    mapping: str = "ei"
    filtering: str = "ei"
    preserve: bool = True
    hairpin: bool = True
    timeout: float = 30.0
    next_port: int = 61000
    out: dict[tuple[object, ...], int] = field(default_factory=dict)
    back: dict[int, _Mapping] = field(default_factory=dict)

    def _key(self, lport: int, dst: HostPort) -> tuple[object, ...]:
        return {"ei": (lport,), "ad": (lport, dst[0]), "apd": (lport, dst)}[self.mapping]

    def expire(self, now: float) -> None:
        for port, m in list(self.back.items()):
            if now - m.last > self.timeout:
                del self.back[port]
                del self.out[m.key]

    def outbound(self, lport: int, dst: HostPort, now: float) -> HostPort:
        self.expire(now)
        key = self._key(lport, dst)
        if key not in self.out:
            port = lport if self.preserve and lport not in self.back else self.next_port
            self.next_port += 1
            self.out[key] = port
            self.back[port] = _Mapping(key, lport, now)
        m = self.back[self.out[key]]
        m.allowed.add(dst)
        m.last = now
        return (PUBLIC, self.out[key])

    def inbound(self, src: HostPort, port: int, now: float) -> int | None:
        """The inside port a datagram from ``src`` to (PUBLIC, port) goes to, or None."""
        self.expire(now)
        m = self.back.get(port)
        if m is None:
            return None
        if self.filtering == "ad" and src[0] not in {a[0] for a in m.allowed}:
            return None
        if self.filtering == "apd" and src not in m.allowed:
            return None
        m.last = now
        return m.lport


def _response_port(data: bytes) -> int | None:
    pos = 20
    while pos + 4 <= len(data):
        kind, length = struct.unpack_from("!HH", data, pos)
        if kind == 0x0027:
            return int(struct.unpack_from("!H", data, pos + 4)[0])
        pos += 4 + length + (-length % 4)
    return None


@dataclass
class ScriptedServer:
    """An RFC 5780 STUN server on PRIMARY and its three other (address, port)s:
    XOR-MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST, RESPONSE-PORT.
    ``rfc5780=False``: a plain STUN server (no OTHER-ADDRESS, answers only on its primary);
    ``honour_change=False``: answers every request from where it came."""

    primary: HostPort = PRIMARY
    rfc5780: bool = True
    honour_change: bool = True
    down: bool = False
    requests: list[tuple[HostPort, HostPort]] = field(default_factory=list)

    def addresses(self) -> set[HostPort]:
        if not self.rfc5780:
            return {self.primary}
        return {(ip, port) for ip in (self.primary[0], ALT_IP)
                for port in (self.primary[1], ALT_PORT)}

    def answer(self, data: bytes, src: HostPort, dst: HostPort) -> tuple[bytes, HostPort,
                                                                          HostPort] | None:
        if self.down:
            return None
        msg = stun.parse_message(data)
        self.requests.append((src, dst))
        change = msg.attributes.get("CHANGE-REQUEST", 0) if self.honour_change else 0
        origin = (ALT_IP if change & 4 and dst[0] == self.primary[0] else
                  self.primary[0] if change & 4 else dst[0],
                  ALT_PORT if change & 2 and dst[1] == self.primary[1] else
                  self.primary[1] if change & 2 else dst[1])
        reply = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                             transaction_id=msg.transaction_id)
        reply.attributes["XOR-MAPPED-ADDRESS"] = src
        if self.rfc5780:
            reply.attributes["OTHER-ADDRESS"] = (ALT_IP if origin[0] == self.primary[0]
                                                 else self.primary[0],
                                                 ALT_PORT if origin[1] == self.primary[1]
                                                 else self.primary[1])
            reply.attributes["RESPONSE-ORIGIN"] = origin
        port = _response_port(data)
        return bytes(reply), origin, (src[0], port if port is not None else src[1])


#: a datagram in flight: (local socket, data, the remote address)
Item = tuple[int, bytes, HostPort]


@dataclass
class Net:
    """The host (sockets 0, 1, 2... on ports from ``base``), optionally behind ``nat``, and
    the servers, with LATENCY each way; ``drop(n)`` drops the n-th datagram the host sends."""

    servers: list[ScriptedServer]
    nat: ScriptedNat | None = None
    base: int = 40000
    drop: set[int] = field(default_factory=set)
    junk: bool = False
    sent: int = 0

    def run(self, core: NetCheck, now: float = 100.0) -> NetcheckResult:
        queue: list[tuple[float, int, str, Item]] = []
        seq = itertools.count()
        bound: set[int] = set()
        while not core.done:
            for out in core.datagrams_to_send():
                if out.socket not in bound:
                    bound.add(out.socket)
                    core.socket_bound(out.socket, (HOST, self.base + out.socket))
                self.sent += 1
                if self.sent in self.drop:
                    continue
                heapq.heappush(queue, (now + LATENCY, next(seq), "up",
                                       (out.socket, out.data, (out.addr[0], out.addr[1]))))
            timer = core.get_timer()
            due = min([t for t in (timer, queue[0][0] if queue else None) if t is not None])
            assert due >= now - 1e-9, "a deadline in the past"
            now = due
            if queue and queue[0][0] <= now:
                _, _, kind, item = heapq.heappop(queue)
                self._carry(core, kind, item, now, queue, seq)
            if timer is not None and timer <= now:
                core.handle_timer(now)
        return core.result

    def _carry(self, core: NetCheck, kind: str, item: Item, now: float,
               queue: list[tuple[float, int, str, Item]], seq: itertools.count[int]) -> None:
        socket, data, addr = item
        if kind == "down":
            core.receive_datagram(socket, data, addr, now)
            return
        dst = addr
        src = (HOST, self.base + socket)
        if self.nat is None and dst[0] == HOST:  # to ourselves
            heapq.heappush(queue, (now + LATENCY, next(seq), "down",
                                   (dst[1] - self.base, data, src)))
            return
        if self.nat is not None:
            src = self.nat.outbound(src[1], dst, now)
        if self.nat is not None and dst[0] == PUBLIC:  # hairpin
            m = self.nat.back.get(dst[1]) if self.nat.hairpin else None
            if m is not None:
                heapq.heappush(queue, (now + LATENCY, next(seq), "down",
                                       (m.lport - self.base, data, src)))
            return
        if self.junk:
            heapq.heappush(queue, (now + LATENCY / 2, next(seq), "down",
                                   (socket, b"\xff" * 30, dst)))
        for server in self.servers:
            if dst in server.addresses():
                answer = server.answer(data, src, dst)
                if answer is None:
                    return
                reply, origin, to = answer
                port = to[1]
                if self.nat is not None:
                    got = self.nat.inbound(origin, to[1], now + LATENCY)
                    if got is None:
                        return
                    port = got
                heapq.heappush(queue, (now + 2 * LATENCY, next(seq), "down",
                                       (port - self.base, reply, origin)))


def check(net: Net, *, lifetime: bool = False, lifetime_max: float = 120.0,
          timeout: float = 5.0) -> NetcheckResult:
    core = NetCheck([s.primary for s in net.servers], 100.0, lifetime=lifetime,
                    lifetime_max=lifetime_max, timeout=timeout)
    result = net.run(core)
    if not lifetime:
        assert result.elapsed <= timeout
    return result


#: (nat, mapping, filtering, port kept); ``None``: no NAT
TYPES = {
    "no NAT": (None, EI, EI, True),
    "full cone": (ScriptedNat("ei", "ei"), EI, EI, True),
    "restricted cone": (ScriptedNat("ei", "ad"), EI, AD, True),
    "port-restricted cone": (ScriptedNat("ei", "apd"), EI, APD, True),
    "address-dependent mapping": (ScriptedNat("ad", "apd", preserve=False), AD, APD, False),
    "symmetric": (ScriptedNat("apd", "apd", preserve=False), APD, APD, False),
    "symmetric, port kept first": (ScriptedNat("apd", "apd"), APD, APD, True),
}


@pytest.mark.parametrize("name", list(TYPES))
def test_each_nat_type(name: str) -> None:
    nat, mapping, filtering, kept = TYPES[name]
    net = Net([ScriptedServer()], nat=nat)
    r = check(net)
    assert r.udp is True
    assert (r.mapping, r.filtering, r.port_kept) == (mapping, filtering, kept)
    assert r.nat is (nat is not None)
    assert r.hairpinning is True
    assert r.rfc5780_server == "198.18.0.10:3478"
    assert r.local == (HOST, 40000)
    [server] = r.servers
    assert server.other_address == (ALT_IP, ALT_PORT)
    assert server.reflexive == ((PUBLIC if nat else HOST), 40000 if kept else 61000)
    assert r.notes == []
    # the filtering socket only ever talked to the primary address; mapping tests from
    # socket 0 went to (ALT_IP, 3478) and the OTHER-ADDRESS
    dests = {(src, dst) for src, dst in net.servers[0].requests}
    assert {d for _, d in dests} == {PRIMARY, (ALT_IP, 3478), (ALT_IP, ALT_PORT)}
    as_json = json.loads(json.dumps(r.as_dict()))
    assert as_json["mapping"] == mapping and as_json["filtering"] == filtering


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpinning(hairpin: bool) -> None:
    r = check(Net([ScriptedServer()], nat=ScriptedNat("ei", "apd", hairpin=hairpin)))
    assert r.hairpinning is hairpin
    assert r.mapping == EI and r.filtering == APD


def test_udp_blocked_ends_within_the_timeout() -> None:
    r = check(Net([ScriptedServer(down=True)]))
    assert r.udp is False
    assert r.elapsed <= 5.0
    assert r.servers[0].error == "no answer"
    assert r.mapping is None and r.filtering is None and r.hairpinning is None
    assert "UDP blocked or server down" in r.notes[0]


def test_shorter_timeout() -> None:
    r = check(Net([ScriptedServer()], nat=ScriptedNat("apd", "apd", hairpin=False)),
              timeout=2.0)
    assert r.elapsed <= 2.0
    assert r.mapping == APD and r.filtering == APD and r.hairpinning is False


def test_a_plain_stun_server_gives_no_rfc5780_classification() -> None:
    r = check(Net([ScriptedServer(rfc5780=False)], nat=ScriptedNat("ei", "apd")))
    assert r.udp is True and r.rfc5780_server is None
    assert r.mapping is None and r.filtering is None
    assert r.servers[0].reflexive == (PUBLIC, 40000)
    assert any("OTHER-ADDRESS" in n for n in r.notes)


@pytest.mark.parametrize(("mapping", "varies"), [("ei", False), ("ad", True)])
def test_two_plain_servers_compare_mappings(mapping: str, varies: bool) -> None:
    servers = [ScriptedServer(rfc5780=False),
               ScriptedServer(primary=("198.18.0.20", 3478), rfc5780=False)]
    r = check(Net(servers, nat=ScriptedNat(mapping, "apd", preserve=False)))
    assert r.mapping_varies_by_server is varies
    assert r.mapping == (None if varies else EI)
    assert [s.server for s in r.servers] == ["198.18.0.10:3478", "198.18.0.20:3478"]


def test_the_first_rfc5780_server_classifies() -> None:
    servers = [ScriptedServer(primary=("198.18.0.20", 3478), rfc5780=False),
               ScriptedServer()]
    r = check(Net(servers, nat=ScriptedNat("ei", "ad")))
    assert r.rfc5780_server == "198.18.0.10:3478"
    assert (r.mapping, r.filtering, r.mapping_varies_by_server) == (EI, AD, False)


def test_a_server_that_ignores_change_request() -> None:
    r = check(Net([ScriptedServer(honour_change=False)], nat=ScriptedNat("ei", "ei")))
    assert r.mapping == EI
    assert r.filtering is None
    assert any("ignores CHANGE-REQUEST" in n for n in r.notes)


def test_retransmission_and_junk() -> None:
    # the first datagram (test I) is lost: its retransmission 500 ms later is answered
    net = Net([ScriptedServer()], nat=ScriptedNat("ei", "ad"), drop={1}, junk=True)
    core = NetCheck([PRIMARY], 100.0)
    r = net.run(core)
    assert (r.mapping, r.filtering) == (EI, AD)
    assert core.counters["retransmitted"] >= 1
    assert core.counters["not_stun"] >= 1
    rtt = r.servers[0].rtt
    assert rtt is not None and rtt >= 0.5


@pytest.mark.parametrize(("timeout", "low", "high"), [(20.0, 15.0, 30.0), (5.0, 4.0, 8.0),
                                                      (1000.0, 120.0, None)])
def test_lifetime(timeout: float, low: float, high: float | None) -> None:
    net = Net([ScriptedServer()], nat=ScriptedNat("ei", "apd", timeout=timeout))
    r = check(net, lifetime=True)
    assert (r.lifetime_min, r.lifetime_max) == (low, high)
    assert r.mapping == EI and r.filtering == APD
    if high is None:
        assert any("outlived" in n for n in r.notes)
    else:
        # the probe stops at the first wait that failed
        assert r.elapsed < high + 5.0


# --------------------------------------------------------------------------- real coturn

REPO = Path(__file__).resolve().parents[2]


def _free_port_pair() -> int:
    """A port P with P and P + 1 free for UDP on 127.0.0.1 and 127.0.0.2 (just now)."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        try:
            probes = []
            for host in ("127.0.0.1", "127.0.0.2"):
                for p in (port, port + 1):
                    t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    probes.append(t)
                    t.bind((host, p))
        except OSError:
            continue
        finally:
            for t in probes:
                t.close()
        return port
    raise RuntimeError("no free UDP port pair on loopback")


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    problems = coturn_problems()
    if problems:
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail("coturn is required under NATTUNNEL_REQUIRE_ROOT=1: " + problems[0])
        pytest.skip(problems[0])
    port = _free_port_pair()
    with Coturn("127.0.0.1", "127.0.0.2", tmp_path, port=port, alt_port=port + 1) as server:
        yield server


def netcheck_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "nattunnel", "netcheck", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_json_on_loopback_against_coturn(coturn: Coturn) -> None:
    server = f"127.0.0.1:{coturn.port}"
    cp = netcheck_cli(server, "--json")
    assert cp.returncode == 0, cp.stderr
    r = json.loads(cp.stdout)
    assert r["udp"] is True and r["nat"] is False and r["port_kept"] is True
    assert r["rfc5780_server"] == server
    assert r["mapping"] == EI and r["filtering"] == EI and r["hairpinning"] is True
    [s] = r["servers"]
    assert s["other_address"] == f"127.0.0.2:{coturn.port + 1}"
    assert s["reflexive"] == r["local"] and r["local"].startswith("127.0.0.1:")
    assert r["elapsed"] < 5.0
    assert r["notes"] == []
    # coturn's own client agrees (it cannot tell "no NAT" bound to the wildcard address)
    nd = natdiscovery("127.0.0.1", "-m", "-f", "-H", port=coturn.port)
    assert (nd.mapping, nd.filtering, nd.hairpinning) == (EI, EI, True)
    # the table has the same fields
    cp = netcheck_cli(server, "--port", str(_free_port_pair()))
    assert cp.returncode == 0, cp.stderr
    table = {line[:25].strip(): line[25:] for line in cp.stdout.splitlines()}
    assert table["mapping"] == EI and table["filtering"] == EI
    assert table["hairpinning"] == "yes" and table["nat"] == "no"
    assert table["port kept"] == "yes" and table["rfc5780 server"] == server


def test_cli_lifetime_on_loopback(coturn: Coturn) -> None:
    cp = netcheck_cli(f"127.0.0.1:{coturn.port}", "--json", "--lifetime",
                      "--lifetime-max", "2")
    assert cp.returncode == 0, cp.stderr
    r = json.loads(cp.stdout)
    # no NAT: the mapping (our own socket) outlives every wait tried; the answer to the
    # RESPONSE-PORT request came to the lifetime socket, so coturn honours RESPONSE-PORT
    assert (r["lifetime_min"], r["lifetime_max"]) == (2.0, None)
    assert any("outlived" in n for n in r["notes"])


def test_cli_errors(coturn: Coturn) -> None:
    cp = netcheck_cli("no-such-host.invalid")
    assert cp.returncode == 2
    assert "cannot resolve 'no-such-host.invalid'" in cp.stderr
    cp = netcheck_cli("127.0.0.1:1:2")
    assert cp.returncode == 2 and "nattunnel netcheck:" in cp.stderr
    # nothing listens on coturn's port + 2: no answer within --timeout
    cp = netcheck_cli(f"127.0.0.1:{coturn.port + 2}", "--json", "--timeout", "1")
    assert cp.returncode == 1
    assert "UDP blocked or server down" in cp.stderr
    r = json.loads(cp.stdout)
    assert r["udp"] is False and r["elapsed"] <= 1.0


def _answer(request: bytes, mapped: HostPort, error: tuple[int, str] | None = None) -> bytes:
    msg = stun.parse_message(request)
    reply = stun.Message(stun.Method.BINDING, stun.Class.ERROR if error else stun.Class.RESPONSE,
                         transaction_id=msg.transaction_id)
    if error:
        reply.attributes["ERROR-CODE"] = error
    else:
        reply.attributes["XOR-MAPPED-ADDRESS"] = mapped
    return bytes(reply)


def test_an_answer_from_elsewhere_is_ignored() -> None:
    core = NetCheck([PRIMARY], 0.0)
    core.socket_bound(0, (HOST, 40000))
    [out] = core.datagrams_to_send()
    assert (out.socket, out.addr) == (0, PRIMARY)
    forged = _answer(out.data, ("198.18.0.66", 1))
    core.receive_datagram(0, forged, ("198.18.0.66", 3478), 0.1)
    assert core.counters["wrong_source"] == 1 and not core.done
    core.receive_datagram(0, b"\x00\x01" + bytes(30), PRIMARY, 0.1)
    assert core.counters["not_stun"] == 1
    core.receive_datagram(0, _answer(out.data, (PUBLIC, 40000)), PRIMARY, 0.2)
    assert core.result.servers[0].reflexive == (PUBLIC, 40000)
    # a plain server: no OTHER-ADDRESS, so only the hairpin test follows, from socket 2
    [hairpin] = core.datagrams_to_send()
    assert (hairpin.socket, hairpin.addr) == (2, (PUBLIC, 40000))
    assert stun.parse_message(hairpin.data).message_class == stun.Class.REQUEST
    core.receive_datagram(0, hairpin.data, (PUBLIC, 61000), 0.3)
    assert core.done and core.result.hairpinning is True
    assert (core.result.nat, core.result.port_kept) == (True, True)


def test_an_error_answer() -> None:
    core = NetCheck([PRIMARY], 0.0)
    [out] = core.datagrams_to_send()
    core.receive_datagram(0, _answer(out.data, PUBLIC_HP, (400, "Bad Request")), PRIMARY, 0.1)
    assert core.done
    r = core.result
    assert r.udp is True and r.servers[0].reflexive is None
    assert r.servers[0].error == "error 400 Bad Request"
    assert r.notes == ["no server gave a reflexive address"]


PUBLIC_HP = (PUBLIC, 40000)


def _ipv6_loopback_port() -> int | None:
    """A free UDP port on ::1, or None without IPv6 loopback."""
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError:
        return None


def test_cli_ipv6_and_a_plain_stun_server(coturn: Coturn, tmp_path: Path) -> None:
    """coturn on ::1 alone is a plain STUN server (one address: no OTHER-ADDRESS): the
    reflexive address and hairpinning, mapping and filtering unknown, with a note; and one
    family at a time."""
    port = _ipv6_loopback_port()
    if port is None:
        pytest.skip("no IPv6 loopback (::1) here")
    with Coturn("::1", None, tmp_path, port=port, alt_port=port + 1):
        server = f"[::1]:{port}"
        cp = netcheck_cli(server, "--json")
        assert cp.returncode == 0, cp.stderr
        r = json.loads(cp.stdout)
        assert r["udp"] is True and r["nat"] is False and r["hairpinning"] is True
        assert r["servers"][0]["reflexive"] == r["local"]
        assert r["local"].startswith("[::1]:")
        assert r["rfc5780_server"] is None
        assert r["mapping"] is None and r["filtering"] is None
        assert any("OTHER-ADDRESS" in n for n in r["notes"])
        cp = netcheck_cli(server, f"127.0.0.1:{coturn.port}")
        assert cp.returncode == 2 and "mix IPv4 and IPv6" in cp.stderr


def test_coturn_runs_unprivileged_from_the_tests_directory(tmp_path: Path) -> None:
    """lab/coturn.py: no root (nobody, when started by root), its log and PID file in the
    test's directory, stopped by that PID."""
    problems = coturn_problems()
    if problems:
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail("coturn is required under NATTUNNEL_REQUIRE_ROOT=1: " + problems[0])
        pytest.skip(problems[0])
    port = _free_port_pair()
    server = Coturn("127.0.0.1", "127.0.0.2", tmp_path, port=port, alt_port=port + 1).start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        assert int(server.pidfile.read_text().split()[0]) == pid
        assert server.pidfile.parent.parent == tmp_path and server.log.exists()
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        assert "0" not in uids[1:], status
        assert "-c" in server.argv() and "/dev/null" in server.argv()
    finally:
        server.stop()
    assert server.proc is None and not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize(("text", "parsed"), [
    ("stun.example.org", ("stun.example.org", 3478)),
    ("198.18.0.2:3479", ("198.18.0.2", 3479)),
    ("[fd00::1]", ("fd00::1", 3478)),
    ("[fd00::1]:19302", ("fd00::1", 19302)),
    ("fd00::1", ("fd00::1", 3478)),
])
def test_parse_server(text: str, parsed: HostPort) -> None:
    from nattunnel.cli.netcheck import parse_server

    assert parse_server(text) == parsed


@pytest.mark.parametrize("text", ["host:0", "host:70000", "host:x", "[fd00::1", "[fd00::1]x",
                                  ":3478"])
def test_parse_server_refuses(text: str) -> None:
    from nattunnel.cli.netcheck import parse_server

    with pytest.raises(ValueError, match="bad server"):
        parse_server(text)


def test_the_table() -> None:
    from nattunnel.cli.netcheck import format_table

    net = Net([ScriptedServer(), ScriptedServer(primary=("198.18.0.20", 3478), rfc5780=False,
                                                down=True)],
              nat=ScriptedNat("ei", "ad", timeout=5.0))
    r = check(net, lifetime=True, lifetime_max=10.0)
    rows = {line[:25].strip(): line[25:] for line in format_table(r).splitlines()
            if not line.startswith("server")}
    assert rows["udp"] == "reachable" and rows["nat"] == "yes"
    assert rows["mapping"] == EI and rows["filtering"] == AD
    assert rows["lifetime"] == "at least 4 s, less than 8 s"
    assert rows["rfc5780 server"] == "198.18.0.10:3478"
    servers = [line for line in format_table(r).splitlines() if line.startswith("server")]
    assert servers[0].split()[1:4] == ["198.18.0.10:3478", "reflexive", "198.18.0.1:40000"]
    assert servers[1].split()[1:] == ["198.18.0.20:3478", "no", "answer"]
