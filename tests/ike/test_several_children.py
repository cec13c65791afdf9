"""Several child SAs per IKE SA for several subnets (issue 14 item 4), two managers and
tunnels on the fake wire: each subnet's packets go out on the child SA whose traffic selectors
hold them (checked by SPI), a packet that comes in on a child SA from outside that child's
remote selectors is dropped (RFC 4301 section 5.2, per SA), a rekey of one child leaves the
other's SPI, and a child going down takes only its prefixes. One child whose selectors cover
the peer's prefixes is not routed apart (the per-packet path as before)."""

from __future__ import annotations

import ipaddress
import struct

from nattunnel.addr import Network
from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import OutboundSA
from nattunnel.esp.suite import AES_GCM_256
from nattunnel.ike.sa import IkeSa
from nattunnel.tunnel.core import Tunnel
from nattunnel.tunnel.peer import Peer
from tests.support.ike import A_SEEN, B_ADDR, NET_A, Net
from tests.support.packets import A_INNER, ip4

B1 = ipaddress.ip_network("198.18.50.0/24")
B2 = ipaddress.ip_network("198.18.60.0/24")
_SPI = struct.Struct("!I")


def _two_children(rekey_packets: int = 0) -> tuple[Net, IkeSa]:
    """B has two subnets behind it (one child config listing both, as allowed_ips does);
    A asks for a child SA per subnet, as charon does with ``children { b1 {...} b2 {...} }``:
    the first in IKE_AUTH, the second by CREATE_CHILD_SA."""
    net = Net()
    for t, name, nets in ((net.ta, "b", [B1, B2]), (net.tb, "a", [NET_A])):
        t.remove_peer(name)
        t.add_peer(name, nets)
    net.cb.local_ts = (B1, B2)
    net.ca.remote_ts = (B1,)
    net.ca.rekey_packets = rekey_packets
    net.a.initiate("b", 0.0)
    net.deliver(0.0)
    (sa,) = net.a.sas_of("b")
    net.ca.remote_ts = (B2,)
    assert sa.create_child(1.0)
    net.a._process(sa, 1.0)  # what the manager does after a request of its own
    net.deliver(1.0)
    net.ca.remote_ts = (B1, B2)  # what the config lists; each child keeps its own
    return net, sa


def _spi_to(t: Tunnel, dst: str) -> int:
    out = memoryview(bytearray(2048))
    peer, m = t.encapsulate_into(ip4(A_INNER, dst), out, 2.0)
    assert peer is not None and m > 0, m
    return int(_SPI.unpack_from(out, 0)[0])


def _children(sa: IkeSa) -> dict[tuple[Network, ...], int]:
    return {c.remote_ts: c.spi_out for c in sa.children}


def test_each_subnet_goes_out_on_its_child_sa() -> None:
    net, sa = _two_children()
    kids = _children(sa)
    assert set(kids) == {(B1,), (B2,)}
    assert kids[(B1,)] != kids[(B2,)]
    assert _spi_to(net.ta, "198.18.50.7") == kids[(B1,)]
    assert _spi_to(net.ta, "198.18.60.7") == kids[(B2,)]
    assert net.ta.peers["b"].child_routes() == {str(B1): kids[(B1,)], str(B2): kids[(B2,)]}
    # both arrive at B and count on their own inbound SAs
    for dst in ("198.18.50.7", "198.18.60.7", "198.18.60.8"):
        out = memoryview(bytearray(2048))
        _, m = net.ta.encapsulate_into(ip4(A_INNER, dst), out, 2.0)
        assert net.tb.receive(out, 0, m, A_SEEN, 2.0) > 0
    got = {sa_in.spi: sa_in.packets for sa_in in net.tb.peers["a"].inbound}
    assert got == {kids[(B1,)]: 1, kids[(B2,)]: 2}
    # the peer's totals still count every packet sent, whichever SA carried it
    assert net.ta.peers["b"].totals()[0] == 3 + 2  # three here, two in _spi_to


def test_a_packet_from_outside_its_childs_selectors_is_dropped() -> None:
    net, sa = _two_children()
    kids = _children(sa)
    peer_b = net.tb.peers["a"]
    on_b1 = next(o for spi_in, (o, _) in peer_b.children.items() if spi_in == kids[(B1,)])
    assert isinstance(on_b1, OutboundSA)
    out = memoryview(bytearray(2048))
    # from B1 on B1's child: fine; from B2 on B1's child: not that SA's traffic
    m = on_b1.encapsulate_into(ip4("198.18.50.9", A_INNER), out)
    assert net.ta.receive(out, 0, m, B_ADDR, 2.0) > 0
    before = net.ta.drops.counts[DropReason.SOURCE_NOT_ALLOWED]
    m = on_b1.encapsulate_into(ip4("198.18.60.9", A_INNER), out)
    assert net.ta.receive(out, 0, m, B_ADDR, 2.0) == -DropReason.SOURCE_NOT_ALLOWED
    assert net.ta.drops.counts[DropReason.SOURCE_NOT_ALLOWED] == before + 1
    assert net.ta.peers["b"].source_drops == 1


def test_a_rekey_of_one_child_keeps_the_others_spi() -> None:
    net, sa = _two_children()
    kids = _children(sa)
    assert net.a.rekey_outbound(kids[(B1,)], 3.0)
    net.deliver(3.0)
    after = _children(sa)
    assert after[(B2,)] == kids[(B2,)]
    assert after[(B1,)] != kids[(B1,)]
    assert _spi_to(net.ta, "198.18.50.7") == after[(B1,)]
    assert _spi_to(net.ta, "198.18.60.7") == kids[(B2,)]


def test_one_child_covering_the_peer_is_not_routed_apart() -> None:
    net = Net()
    net.a.initiate("b", 0.0)
    net.deliver(0.0)
    peer = net.ta.peers["b"]
    assert len(peer.children) == 1 and peer.child_routes() == {}
    (sa,) = net.a.sas_of("b")
    assert _spi_to(net.ta, "198.18.100.2") == sa.children[0].spi_out


def _sa(spi: int) -> OutboundSA:
    return OutboundSA(spi, AES_GCM_256, bytes(AES_GCM_256.keymat_len))


def test_a_child_going_down_takes_only_its_prefixes() -> None:
    t = Tunnel()
    peer: Peer = t.add_peer("b", [B1, B2], addr=B_ADDR)
    one, two = _sa(0x1001), _sa(0x1002)
    t.set_outbound(peer, one)
    peer.add_child(0x2001, one, (B1,))
    t.set_outbound(peer, two)
    peer.add_child(0x2002, two, (B2,))
    assert _spi_to(t, "198.18.50.1") == 0x1001
    assert _spi_to(t, "198.18.60.1") == 0x1002
    peer.drop_child(0x2002)
    t.set_outbound(peer, one)
    assert _spi_to(t, "198.18.50.1") == 0x1001
    out = memoryview(bytearray(2048))
    _, m = t.encapsulate_into(ip4(A_INNER, "198.18.60.1"), out, 2.0)
    assert m == -DropReason.NO_ROUTE  # B2's child is gone: not onto B1's
    peer.drop_child(0x2001)  # no children (manual SAs): ``outbound`` carries everything
    assert _spi_to(t, "198.18.60.1") == 0x1001


def test_ipv6_children_routed_apart_with_the_source_check_per_sa() -> None:
    from nattunnel.esp.sa import InboundSA
    from tests.tunnel.test_peer import ip6

    c1, c2 = ipaddress.ip_network("fd00:50::/64"), ipaddress.ip_network("fd00:51::/64")
    t = Tunnel()
    peer = t.add_peer("b", [c1, c2, B1], addr=B_ADDR)
    one, two = _sa(0x3001), _sa(0x3002)
    t.set_outbound(peer, one)
    peer.add_child(0x4001, one, (c1, B1))
    t.set_outbound(peer, two)
    peer.add_child(0x4002, two, (c2,))
    out = memoryview(bytearray(2048))
    for dst, spi in (("fd00:50::9", 0x3001), ("fd00:51::9", 0x3002)):
        _, m = t.encapsulate_into(ip6("fd00:a::1", dst), out, 1.0)
        assert m > 0 and _SPI.unpack_from(out, 0)[0] == spi
    _, m = t.encapsulate_into(ip6("fd00:a::1", "fd00:52::9"), out, 1.0)
    assert m == -DropReason.NO_ROUTE  # the tunnel's prefix table has no peer for it
    keys = bytes(AES_GCM_256.keymat_len)
    t.install_inbound(peer, InboundSA(0x4002, AES_GCM_256, keys))
    sender = OutboundSA(0x4002, AES_GCM_256, keys)
    m = sender.encapsulate_into(ip6("fd00:51::7", "fd00:a::1"), out)
    assert t.receive(out, 0, m, B_ADDR, 1.0) > 0
    m = sender.encapsulate_into(ip6("fd00:50::7", "fd00:a::1"), out)  # c1's source on c2's SA
    assert t.receive(out, 0, m, B_ADDR, 1.0) == -DropReason.SOURCE_NOT_ALLOWED
    assert peer.child_routes() == {str(c1): 0x3001, str(c2): 0x3002, str(B1): 0x3001}


def test_a_packet_lifetime_rekeys_the_child_that_is_not_the_newest() -> None:
    """rekey_packets on B1's child (not the peer's ``outbound``, which is B2's, the newest):
    RekeyNeeded names its SPI once, and the rekey replaces only that child."""
    from nattunnel.tunnel.core import RekeyNeeded

    net, sa = _two_children(rekey_packets=5)
    kids = _children(sa)
    peer = net.ta.peers["b"]
    assert peer.outbound is not None and peer.outbound.spi == kids[(B2,)]
    net.ta.events.clear()
    for _ in range(8):
        _spi_to(net.ta, "198.18.50.7")
    events = [e for e in net.ta.events if isinstance(e, RekeyNeeded)]
    assert events == [RekeyNeeded("b", kids[(B1,)])]
    assert net.a.rekey_outbound(kids[(B1,)], 3.0)
    net.deliver(3.0)
    after = _children(sa)
    assert after[(B2,)] == kids[(B2,)] and after[(B1,)] != kids[(B1,)]
    assert _spi_to(net.ta, "198.18.50.7") == after[(B1,)]
