"""The prefix table (peers' allowed prefixes) against a brute-force model."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattunnel.tunnel.core import Tunnel
from nattunnel.tunnel.prefixes import PrefixTable


@st.composite
def v4_net(draw):
    plen = draw(st.integers(20, 32))
    addr = draw(st.integers(0xC6120000, 0xC613FFFF))  # 198.18.0.0/15
    return ipaddress.ip_network((addr, plen), strict=False)


@st.composite
def v6_net(draw):
    plen = draw(st.integers(116, 128))
    addr = (0x20010DB8 << 96) | draw(st.integers(0, 0xFFFF))
    return ipaddress.ip_network((addr, plen), strict=False)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.one_of(v4_net(), v6_net()), st.integers(0, 5)), max_size=40),
       probes=st.lists(st.one_of(st.integers(0xC6120000, 0xC613FFFF),
                                 st.integers(0, 0xFFFF)), max_size=30),
       gone=st.integers(-1, 5))
def test_table_matches_brute_force(ops, probes, gone):
    table: PrefixTable[int] = PrefixTable()
    held: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]] = []
    for net, owner in ops:
        clash = next(((n, o) for n, o in held if n.version == net.version and n.overlaps(net)),
                     None)
        if clash is None:
            assert table.conflict(net) is None
            table.add(net, owner)
            held.append((net, owner))
        else:
            got = table.conflict(net)
            assert got is not None and got[0].overlaps(net)
            with pytest.raises(ValueError, match="overlaps"):
                table.add(net, owner)
    if gone >= 0:
        table.remove(gone)
        held = [(n, o) for n, o in held if o != gone]
    assert len(table) == len(held)
    for p in probes:
        v4 = p >= 0x10000
        addr = ipaddress.ip_address(p if v4 else (0x20010DB8 << 96) | p)
        want = next((o for n, o in held if addr in n), None)
        assert (table.lookup4(p) if v4 else table.lookup6(int(addr))) == want


def test_owner_may_list_nested_prefixes_but_not_overlap_another():
    table: PrefixTable[str] = PrefixTable()
    nets = [ipaddress.ip_network(n) for n in ("198.18.0.0/16", "198.18.5.0/24", "198.18.0.0/16")]
    table.add_all(nets, "a")
    assert len(table) == 1 and table.lookup4(int(ipaddress.ip_address("198.18.5.1"))) == "a"
    with pytest.raises(ValueError, match=re.escape("198.18.9.0/24 overlaps 198.18.0.0/16")):
        table.add_all([ipaddress.ip_network("198.19.0.0/16"),
                       ipaddress.ip_network("198.18.9.0/24")], "b")
    assert len(table) == 1  # nothing of b's was added


def test_thousands_of_peers_route_by_bisection():
    """5000 peers of one /32 each (adding them checked every other peer's prefixes before the
    table: about 35 s here; docs/benchmarks.md has the figures)."""
    t = Tunnel()
    for i in range(5000):
        t.add_peer(f"p{i}", [ipaddress.ip_network((0xC6120000 + i, 32))])
    for i in (0, 4321, 4999):
        pkt = bytes([0x45]) + bytes(15) + (0xC6120000 + i).to_bytes(4, "big")
        assert t.route(pkt).name == f"p{i}"
    assert t.route(bytes([0x45]) + bytes(15) + (0xC6120000 + 5000).to_bytes(4, "big")) is None
    with pytest.raises(ValueError, match=re.escape("overlaps 198.18.0.0/32 of peer 'p0'")):
        t.add_peer("wide", [ipaddress.ip_network("198.18.0.0/24")])
