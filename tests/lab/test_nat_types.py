"""The lab's NAT types (nattunnel/lab/nattypes.py) proved with plain UDP probes (root only).

Python sockets in the namespaces (``Lab.udp_peer``), no nattunnel: for each type, the mapping
seen by different public destinations, which unsolicited packets get through, hairpinning on
and off, the mapping timeout, and the two-NAT and stacked-NAT topologies. Every lab command
times out, every wait has a deadline, and every test closes its lab (processes by PID,
namespaces deleted).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nattunnel.lab.nattypes import (
    CLASSIC,
    FULL_CONE,
    PORT_RESTRICTED_CONE,
    PUBLIC_ALT,
    RESTRICTED_CONE,
    SHARED_NET,
    SYMMETRIC,
    TOPOLOGIES,
    Behaviour,
    NatLab,
    NatType,
    nat_ruleset,
)
from tests.support.lab import HOST_ADDR, UdpPeer, require_lab_tools

A, B, C, E = HOST_ADDR["a"], HOST_ADDR["b"], HOST_ADDR["c"], HOST_ADDR["e"]
EI = Behaviour.ENDPOINT_INDEPENDENT
AD = Behaviour.ADDRESS_DEPENDENT
APD = Behaviour.ADDRESS_AND_PORT_DEPENDENT
ADDRESS_DEPENDENT_MAPPING = NatType(AD, AD)
TYPES = {**CLASSIC, "address-dependent-mapping": ADDRESS_DEPENDENT_MAPPING}
SILENCE = 0.6  # seconds to wait for a packet that must not arrive
LAB_NET = ipaddress.IPv4Network("198.18.0.0/15")


@contextmanager
def nat_lab(*args: Any, **kw: Any) -> Iterator[NatLab]:
    require_lab_tools()
    lab = NatLab(*args, **kw)
    try:
        yield lab
    finally:
        lab.close()


def seen_from(sender: UdpPeer, receiver: UdpPeer, host: str, port: int) -> tuple[str, int]:
    """Send a probe from ``sender`` to host:port, return the source ``receiver`` saw."""
    data = f"probe {sender.port}->{host}:{port}".encode()
    assert sender.send(host, port, data) == 0
    got = receiver.recv(2.0)
    assert got is not None, f"{data!r} did not arrive"
    assert got[0] == data
    return got[1], got[2]


def gets_through(sender: UdpPeer, host: str, port: int, receiver: UdpPeer) -> bool:
    data = f"unsolicited {sender.port}->{host}:{port}".encode()
    receiver.drain()
    assert sender.send(host, port, data) == 0
    got = receiver.recv(SILENCE)
    return got is not None and got[0] == data


# ----------------------------------------------------------------- no root


def test_types_and_names() -> None:
    assert (FULL_CONE.mapping, FULL_CONE.filtering) == (EI, EI)
    assert (RESTRICTED_CONE.mapping, RESTRICTED_CONE.filtering) == (EI, AD)
    assert (PORT_RESTRICTED_CONE.mapping, PORT_RESTRICTED_CONE.filtering) == (EI, APD)
    assert (SYMMETRIC.mapping, SYMMETRIC.filtering) == (APD, APD)
    assert NatType.FULL_CONE is FULL_CONE and FULL_CONE.but(hairpin=True).hairpin
    assert FULL_CONE.name.startswith("full cone (endpoint-independent mapping")
    assert "hairpinning" in SYMMETRIC.but(hairpin=True).name


def test_topologies_use_lab_addresses_only() -> None:
    """The project's rule: lab hosts use 198.18.0.0/15; the CGN's shared space is emulated."""
    assert ipaddress.IPv4Network(SHARED_NET).subnet_of(LAB_NET)
    assert ipaddress.ip_address(PUBLIC_ALT) in LAB_NET
    for topo in TOPOLOGIES.values():
        cidrs = [h.addr for h in topo.hosts]
        cidrs += [a for r in topo.routers for a in (r.lan_addr, r.wan_addr)]
        for cidr in cidrs:
            assert ipaddress.ip_interface(cidr).ip in LAB_NET, (topo.name, cidr)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_ruleset_shape(name: str) -> None:
    nat = TYPES[name]
    text = nat_ruleset(
        nat.but(hairpin=True),
        table="tnat",
        wan_if="w0",
        lan_if="l0",
        wan_addr="198.18.0.1",
        lan_net="198.19.1.0/24",
        timeout=3,
    )
    assert text.startswith("table ip tnat\ndelete table ip tnat\n")
    assert "timeout 3s" in text and "priority srcnat + 10" in text
    assert ("map @eim" in text) == (nat.mapping is not APD)
    assert ('iifname "w0" udp dport @ext' in text) == (nat.filtering is EI)
    assert ("udp dport . ip saddr @sent" in text) == (nat.filtering is AD)
    assert 'iifname "l0" udp dport @ext' in text  # hairpinning
    assert 'iifname "l0"' not in nat_ruleset(
        nat, table="t", wan_if="w0", lan_if="l0", wan_addr="198.18.0.1", lan_net="198.19.1.0/24"
    )


def test_docs_show_the_generated_ruleset() -> None:
    """docs/nat-types.md shows nat_ruleset's real output (full cone with hairpinning)."""
    doc = (Path(__file__).parents[2] / "docs" / "nat-types.md").read_text()
    text = nat_ruleset(
        FULL_CONE.but(hairpin=True),
        table="ntXXXXXXnat",
        wan_if="ntXXXXXXrw",
        lan_if="ntXXXXXXrl",
        wan_addr="198.18.0.1",
        lan_net="198.19.1.0/24",
        timeout=120,
    )
    assert f"```\n{text}```" in doc
    assert "## netcheck" in doc


# ----------------------------------------------------------------- root: one NAT


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(TYPES))
def test_mapping(name: str) -> None:
    """One socket of A probes B:5000, B:5001, B's second address and E: which destinations
    share a mapping is the type's mapping behaviour. A new mapping's port is random."""
    nat = TYPES[name]
    with nat_lab("one", nat) as lab:
        lab.add_address("b", PUBLIC_ALT)
        b1, b2, e = lab.udp_peer("b", 5000), lab.udp_peer("b", 5001), lab.udp_peer("e", 5000)
        a = lab.udp_peer("a", 4000)
        seen = {
            "b": seen_from(a, b1, B, 5000),
            "b:other-port": seen_from(a, b2, B, 5001),
            "b:other-address": seen_from(a, b1, PUBLIC_ALT, 5000),
            "e": seen_from(a, e, E, 5000),
        }
        assert {host for host, _ in seen.values()} == {lab.wan_addr}
        ports = {k: port for k, (_, port) in seen.items()}
        assert ports["b"] != 4000  # 1 in ~60000 that a random port is the internal one
        same_port = ports["b"] == ports["b:other-port"]
        same_addr = ports["b"] == ports["b:other-address"] == ports["e"]
        assert same_port == (nat.mapping is not APD), ports
        assert same_addr == (nat.mapping is EI), ports
        if nat.mapping is APD:
            assert len(set(ports.values())) == 4, ports
        if nat.mapping is EI:
            assert lab.learned("r", "eim") == [f"{A} . 4000 : {ports['b']}"]
        # replies come back on every mapping
        for peer, dst in ((b1, "b"), (b2, "b:other-port"), (e, "e")):
            assert seen_from(peer, a, lab.wan_addr, ports[dst])[0] in (B, E)


@pytest.mark.root
def test_port_preservation() -> None:
    """``preserve_port``: the first mapping of A:4000 keeps 4000; C:4000 gets another port
    (4000 is held), and each keeps its port for every destination."""
    with nat_lab("one", FULL_CONE.but(preserve_port=True)) as lab:
        b, e = lab.udp_peer("b", 5000), lab.udp_peer("e", 5000)
        a, c = lab.udp_peer("a", 4000), lab.udp_peer("c", 4000)
        assert seen_from(a, b, B, 5000)[1] == 4000
        assert seen_from(c, e, E, 5000)[1] != 4000  # 4000 is A's, even towards another host
        pc = seen_from(c, b, B, 5000)[1]
        assert pc != 4000 and seen_from(c, e, E, 5000)[1] == pc
        assert seen_from(a, e, E, 5000)[1] == 4000


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(TYPES))
def test_filtering(name: str) -> None:
    """A:4000 has sent to B:5000 only. Unsolicited packets to that mapping from E (another
    address) and from B:5001 (another port of the same address) get through or not by the
    type's filtering; B:5000's reply always does."""
    nat = TYPES[name]
    with nat_lab("one", nat) as lab:
        b1, b2, e = lab.udp_peer("b", 5000), lab.udp_peer("b", 5001), lab.udp_peer("e", 5000)
        a = lab.udp_peer("a", 4000)
        _, port = seen_from(a, b1, B, 5000)
        wan = lab.wan_addr
        assert gets_through(e, wan, port, a) == (nat.filtering is EI)
        assert gets_through(b2, wan, port, a) == (nat.filtering is not APD)
        assert gets_through(b1, wan, port, a)
        # a closed filter stays closed on retry, and opens once A has sent to E through this
        # mapping (an address-dependent or symmetric mapping uses another one towards E)
        if nat.filtering is not EI:
            assert not gets_through(e, wan, port, a)
            seen_from(a, e, E, 5000)
            assert gets_through(e, wan, port, a) == (nat.mapping is EI)


@pytest.mark.root
@pytest.mark.parametrize("hairpin", [True, False], ids=["hairpin", "no-hairpin"])
@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_hairpinning(name: str, hairpin: bool) -> None:
    """A reaches C via the NAT's public address and C's mapping; C sees A's public mapping
    as the source (RFC 4787 REQ-9). A also reaches its own mapping from a second socket."""
    nat = CLASSIC[name].but(hairpin=hairpin)
    with nat_lab("one", nat) as lab:
        b = lab.udp_peer("b", 5000)
        a, a2, c = lab.udp_peer("a", 4000), lab.udp_peer("a", 4001), lab.udp_peer("c", 4000)
        wan, pa = seen_from(a, b, B, 5000)
        _, pc = seen_from(c, b, B, 5000)
        data = b"hairpin a->c"
        assert a.send(wan, pc, data) == 0
        got = c.recv(2.0 if hairpin else SILENCE)
        if not hairpin:
            assert got is None
            assert not gets_through(a2, wan, pa, a)
            return
        assert got is not None and got[0] == data and got[1] == wan
        if nat.mapping is EI:
            assert got[2] == pa
        # C answers the source it saw: back to A through the hairpin
        assert seen_from(c, a, got[1], got[2]) == (wan, pc)
        assert gets_through(a2, wan, pa, a)


@pytest.mark.root
def test_mapping_timeout() -> None:
    """A 4 s mapping timeout (nftables maps and the router's conntrack sysctls, per
    namespace): a packet within it keeps the mapping past 4 s, 6 s of silence ends it."""
    timeout = 4
    with nat_lab("one", FULL_CONE, udp_timeout=timeout) as lab:
        out = lab.exec(
            "r",
            "sysctl",
            "-n",
            "net.netfilter.nf_conntrack_udp_timeout",
            "net.netfilter.nf_conntrack_udp_timeout_stream",
        ).stdout.split()
        assert out == [str(timeout)] * 2
        host = lab.exec("b", "sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout")
        assert host.stdout.strip() != str(timeout)  # per namespace: the hosts keep theirs
        b, e = lab.udp_peer("b", 5000), lab.udp_peer("e", 5000)
        a = lab.udp_peer("a", 4000)
        wan, port = seen_from(a, b, B, 5000)
        start = time.monotonic()
        sleep_until(start + 2.5)
        assert seen_from(a, b, B, 5000) == (wan, port)  # refreshes the mapping
        sleep_until(start + 5.0)  # 5 s after the first packet, 2.5 s after the last
        assert gets_through(e, wan, port, a)  # full cone: the mapping is alive
        assert lab.learned("r", "eim") == [f"{A} . 4000 : {port}"]
        # E's packet is inbound: it refreshes no record, and its own flow ends 4 s later
        sleep_until(time.monotonic() + timeout + 2.0)
        assert lab.learned("r", "eim") == []
        assert not lab.conntrack_list(src=A)
        assert not gets_through(e, wan, port, a)
        assert not gets_through(b, wan, port, a)
        assert seen_from(a, b, B, 5000)[1] != port  # a new mapping, a new random port


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


@pytest.mark.root
def test_set_nat_at_run_time() -> None:
    with nat_lab("one", PORT_RESTRICTED_CONE) as lab:
        b, e = lab.udp_peer("b", 5000), lab.udp_peer("e", 5000)
        a = lab.udp_peer("a", 4000)
        wan, port = seen_from(a, b, B, 5000)
        assert not gets_through(e, wan, port, a)
        lab.set_nat("r", FULL_CONE)
        assert "udp dport @ext ip daddr" in lab.ruleset("r")
        wan, port = seen_from(a, b, B, 5000)
        assert gets_through(e, wan, port, a)


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_other_protocols_are_masqueraded(name: str) -> None:
    """ICMP (and TCP) still cross every NAT type: conntrack's plain source NAT."""
    with nat_lab("one", CLASSIC[name]) as lab:
        cp = lab.exec("a", "ping", "-c", "1", "-W", "2", B, check=False, timeout=5)
        assert cp.returncode == 0, cp.stdout + cp.stderr


# ----------------------------------------------------------------- root: topologies


@pytest.mark.root
def test_two_nats_both_behind_nat() -> None:
    """A behind NAT1, C behind NAT2, one WAN. Both port restricted: A's first packet to C's
    mapping is filtered by NAT2, C's to A's mapping then crosses NAT1 (A has sent there),
    and from then on both ways work: hole punching between two cone NATs."""
    with nat_lab("two", PORT_RESTRICTED_CONE) as lab:
        assert set(lab.routers) == {"r1", "r2"}
        b = lab.udp_peer("b", 5000)
        a, c = lab.udp_peer("a", 4000), lab.udp_peer("c", 4000)
        wan1, pa = seen_from(a, b, B, 5000)
        wan2, pc = seen_from(c, b, B, 5000)
        assert (wan1, wan2) == (lab.external("r1"), lab.external("r2")) != (wan2, wan1)
        assert lab.addr["c"].startswith("198.19.2.")
        assert not gets_through(a, wan2, pc, c)  # NAT2 filters: C never sent to NAT1
        assert seen_from(c, a, wan1, pa) == (wan2, pc)  # NAT1 lets it in: A sent to it
        assert seen_from(a, c, wan2, pc) == (wan1, pa)  # and now NAT2 does too


@pytest.mark.root
def test_two_different_nats() -> None:
    with nat_lab("two", {"r1": FULL_CONE, "r2": SYMMETRIC}) as lab:
        b1, b2 = lab.udp_peer("b", 5000), lab.udp_peer("b", 5001)
        a, c = lab.udp_peer("a", 4000), lab.udp_peer("c", 4000)
        assert seen_from(a, b1, B, 5000) == seen_from(a, b2, B, 5001)
        assert seen_from(c, b1, B, 5000) != seen_from(c, b2, B, 5001)


@pytest.mark.root
def test_stacked_nats() -> None:
    """A home NAT behind a carrier-grade NAT: A's flow is translated twice, first to the home
    router's address in the (emulated) shared address space, then to the CGN's public one."""
    nats = {"home": PORT_RESTRICTED_CONE, "cgn": SYMMETRIC}
    with nat_lab("stacked", nats) as lab:
        home, cgn = lab.routers["home"], lab.routers["cgn"]
        shared = ipaddress.IPv4Network(SHARED_NET)
        assert ipaddress.IPv4Address(home.wan_addr) in shared and cgn.lan_net == SHARED_NET
        assert lab.router == cgn.ns and lab.wan_addr == cgn.wan_addr
        b = lab.udp_peer("b", 5000)
        a = lab.udp_peer("a", 4000)
        wan, port = seen_from(a, b, B, 5000)
        assert wan == cgn.wan_addr
        assert seen_from(b, a, wan, port) == (B, 5000)

        (at_home,) = lab.conntrack_at("home", dst=B)
        (at_cgn,) = lab.conntrack_at("cgn", dst=B)
        assert (at_home.src, at_home.sport) == (A, 4000)
        assert at_home.external[0] == home.wan_addr
        assert (at_cgn.src, at_cgn.sport) == at_home.external
        assert at_cgn.external == (wan, port)
        assert lab.learned("home", "eim") == [f"{A} . 4000 : {at_home.external[1]}"]


@pytest.mark.root
def test_a_host_moves_between_nats() -> None:
    """``attach``: A gets a second interface on NAT2's LAN and one on the WAN; moving its
    default route moves its flows from NAT1 to NAT2 to no NAT, on the same socket."""
    with nat_lab("two", FULL_CONE) as lab:
        b = lab.udp_peer("b", 5000)
        a = lab.udp_peer("a", 4000)
        assert seen_from(a, b, B, 5000)[0] == lab.external("r1")
        lab.attach("a", "lan2", "198.19.2.3/24", "eth1")
        lab.exec("a", "ip", "route", "replace", "default", "via", "198.19.2.1", "dev", "eth1")
        assert seen_from(a, b, B, 5000)[0] == lab.external("r2")
        public = lab.attach("a", "wan", "198.18.0.20/24", "eth2")
        lab.exec("a", "ip", "route", "replace", "default", "dev", "eth2", "src", public)
        assert seen_from(a, b, B, 5000) == (public, 4000)


@pytest.mark.root
def test_hairpinning_at_the_cgn() -> None:
    """Two subscribers of one CGN: A behind a home NAT, D directly on the shared segment. A
    reaches D through the CGN's public address and D's mapping, and D answers the same way."""
    nats = {"home": PORT_RESTRICTED_CONE, "cgn": FULL_CONE.but(hairpin=True)}
    with nat_lab("stacked", nats, with_d=True) as lab:
        assert ipaddress.IPv4Address(lab.addr["d"]) in ipaddress.IPv4Network(SHARED_NET)
        b = lab.udp_peer("b", 5000)
        a, d = lab.udp_peer("a", 4000), lab.udp_peer("d", 4000)
        wan, pa = seen_from(a, b, B, 5000)
        _, pd = seen_from(d, b, B, 5000)
        assert seen_from(a, d, wan, pd) == (wan, pa)
        assert seen_from(d, a, wan, pa) == (wan, pd)
    with pytest.raises(ValueError, match="no host d"):
        NatLab("one", with_d=True)


@pytest.mark.root
def test_every_combination_loads() -> None:
    """nft accepts the ruleset of every mapping x filtering x hairpin x port preservation."""
    with nat_lab("one", FULL_CONE, with_c=False, with_e=False) as lab:
        r = lab.routers["r"]
        for mapping in Behaviour:
            for filtering in Behaviour:
                for hairpin in (False, True):
                    for preserve in (False, True):
                        nat = NatType(mapping, filtering, hairpin, preserve)
                        r.nat = nat
                        lab.exec("r", "nft", "-c", "-f", "-", input=lab.ruleset("r"))
