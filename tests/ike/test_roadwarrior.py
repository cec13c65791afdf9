"""Virtual IPs by configuration payload (RFC 7296 section 3.15) between IKE managers on the
fake wire: road-warrior clients (``vips``) and a gateway with a pool (``RoadWarriorManager``);
the CP codec and the pool."""

from __future__ import annotations

import ipaddress

import pytest

from nattunnel.constants import IKE_PORT, CfgAttribute, CfgType, NotifyType
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.message import CP, IkeDecodeError, decode_payloads
from nattunnel.ike.pool import AddressPool, parse_range
from nattunnel.ike.roadwarrior import RoadWarriorManager
from nattunnel.tunnel.core import Tunnel
from tests.support.ike import ManagerNode, port
from tests.support.packets import ip4
from tests.support.wire import FakeWire

GW = "198.18.0.2"
ANY4 = ipaddress.ip_network("0.0.0.0/0")
BEHIND = ipaddress.ip_network("198.18.50.0/24")
DNS = "198.18.50.53"


def _ports(ip: str) -> list[tuple[str, int]]:
    return [(ip, IKE_PORT), (ip, port(True))]


class RwNet:
    """A gateway with pool ``addrs`` and one peer per client name; clients at 198.18.1.N."""

    def __init__(self, clients: list[str], addrs: str = "198.18.200.0/30") -> None:
        self.wire = FakeWire()
        self.pool = AddressPool.of("rw", addrs, [DNS])
        self.gw_tunnel = Tunnel()
        self.gw = RoadWarriorManager(self.gw_tunnel)
        self.wire.attach(ManagerNode(self.gw, GW, GW), _ports(GW))
        self.clients: dict[str, tuple[IkeManager, Tunnel]] = {}
        for i, name in enumerate(clients, 1):
            self.gw_tunnel.add_peer(name, ())
            self.gw.add_peer(IkePeer(IkeConfig(
                name, Identity.parse("gw"), Identity.parse(name), auth="psk", psk=b"s",
                local_ts=(BEHIND,), dpd_interval=0, pools=(self.pool,)),
                initiate=False, remote=None), 0)
            host = f"198.18.1.{i}"
            t = Tunnel()
            t.add_peer("gw", [ANY4])
            m = RoadWarriorManager(t)
            m.add_peer(IkePeer(IkeConfig(
                "gw", Identity.parse(name), Identity.parse("gw"), auth="psk", psk=b"s",
                local_ts=(ANY4,), remote_ts=(ANY4,), dpd_interval=0, vips=(4,)),
                initiate=True, remote=(GW, IKE_PORT), local=(host, IKE_PORT)), 0)
            self.wire.attach(ManagerNode(m, host, host), _ports(host))
            self.clients[name] = (m, t)

    def connect(self, name: str, now: float = 0.0) -> None:
        self.clients[name][0].initiate("gw", now)
        self.wire.now = now
        self.wire.run(50)

    def vip(self, name: str) -> str | None:
        sas = self.clients[name][0].sas_of("gw")
        return str(sas[-1].virtual_ips[0].network_address) if sas and sas[-1].virtual_ips \
            else None


def test_clients_get_distinct_addresses_dns_and_narrowed_selectors() -> None:
    net = RwNet(["c1", "c2"])
    net.connect("c1")
    net.connect("c2")
    v1, v2 = net.vip("c1"), net.vip("c2")
    assert v1 and v2 and v1 != v2
    assert {v1, v2} <= {"198.18.200.1", "198.18.200.2"}
    m1, t1 = net.clients["c1"]
    sa = m1.sas_of("gw")[-1]
    assert [str(d) for d in sa.virtual_dns] == [DNS]
    (child,) = sa.children
    assert child.local_ts == (ipaddress.ip_network(f"{v1}/32"),)  # TSi narrowed to the vip
    assert child.remote_ts == (BEHIND,)
    assert t1.peers["gw"].outbound is not None
    # the gateway routes each address to its client's tunnel peer
    for name, v in (("c1", v1), ("c2", v2)):
        peer = net.gw_tunnel.peers[name]
        assert peer.allowed == (ipaddress.ip_network(f"{v}/32"),)
        assert peer.outbound is not None
        assert net.gw_tunnel.route(_packet_to(v)) is peer
    pools = net.gw.stats()["pools"]
    assert isinstance(pools, list) and pools[0]["in_use"] == 2


def _packet_to(dst: str) -> bytes:
    return ip4("198.18.50.1", dst)


def test_exhausted_pool_answers_internal_address_failure_and_counts(
        caplog: pytest.LogCaptureFixture) -> None:
    net = RwNet(["c1", "c2", "c3"], addrs="198.18.200.1-198.18.200.2")
    net.connect("c1")
    net.connect("c2")
    net.connect("c3")
    assert net.vip("c3") is None
    m3, t3 = net.clients["c3"]
    assert t3.peers["gw"].outbound is None
    assert "INTERNAL_ADDRESS_FAILURE in the IKE_AUTH response" in caplog.text
    assert net.pool.exhausted == 1
    assert not m3.sas_of("gw")  # deleted: a CFG_REQUEST goes only in IKE_AUTH
    # c1 goes: its address is free again, and c3, initiating again, gets it
    m1, _ = net.clients["c1"]
    m1.terminate("gw", 1.0)
    net.wire.now = 1.0
    net.wire.run(50)
    assert not m1.sas_of("gw")
    v1_before = "198.18.200.1"
    net.wire.advance(10.0)
    assert net.vip("c3") == v1_before
    assert net.gw_tunnel.peers["c3"].allowed == (ipaddress.ip_network(v1_before + "/32"),)
    assert net.gw_tunnel.peers["c1"].allowed == ()  # gave it up


def test_same_identity_gets_the_same_address_back() -> None:
    net = RwNet(["c1", "c2"], addrs="198.18.200.0/29")
    net.connect("c1")
    first = net.vip("c1")
    m1, _ = net.clients["c1"]
    m1.terminate("gw", 1.0)
    net.wire.now = 1.0
    net.wire.run(50)
    net.connect("c2", 2.0)
    m1.held.discard("gw")
    net.connect("c1", 3.0)
    assert net.vip("c1") == first
    assert net.vip("c2") != first


def test_cp_codec_round_trip_and_bad_lengths() -> None:
    cp = CP.reply([ipaddress.ip_address("198.18.200.1"), ipaddress.ip_address("fd00:200::1")],
                  [ipaddress.ip_address(DNS), ipaddress.ip_address("fd00::53")])
    back = CP.decode_body(cp.encode_body())
    assert isinstance(back, CP) and back.cfg_type == CfgType.CFG_REPLY
    assert [str(a) for a in back.addresses()] == ["198.18.200.1/32", "fd00:200::1/128"]
    assert [str(d) for d in back.dns()] == [DNS, "fd00::53"]
    req = CP(CfgType.CFG_REQUEST, [(CfgAttribute.INTERNAL_IP4_ADDRESS, b""), (99, b"zz")])
    back = CP.decode_body(req.encode_body())
    assert isinstance(back, CP) and back.attributes == req.attributes and not back.addresses()
    bad = CP(CfgType.CFG_REPLY, [(CfgAttribute.INTERNAL_IP4_ADDRESS, b"abc")]).encode_body()
    with pytest.raises(IkeDecodeError):
        CP.decode_body(bad)
    with pytest.raises(IkeDecodeError):
        CP.decode_body(bytes([2, 0, 0, 0, 0, 1, 0, 9]))  # overrun
    # in a message it stays opaque until read with CP.of
    (raw,) = decode_payloads(CP.TYPE, _with_header(cp.encode_body()))
    assert not isinstance(raw, CP)


def _with_header(body: bytes) -> bytes:
    return bytes([0, 0]) + (len(body) + 4).to_bytes(2, "big") + body


def test_pool_ranges_and_release() -> None:
    assert [str(a) for a in parse_range("198.18.200.0/24")] == ["198.18.200.1",
                                                                "198.18.200.254"]
    assert [str(a) for a in parse_range("198.18.200.5-198.18.200.6")] == ["198.18.200.5",
                                                                          "198.18.200.6"]
    assert [str(a) for a in parse_range("fd00::/126")] == ["fd00::1", "fd00::3"]
    with pytest.raises(ValueError, match="ends before"):
        parse_range("198.18.200.6-198.18.200.5")
    live = {"a", "b"}
    pool = AddressPool.of("p", "198.18.200.1-198.18.200.2")
    pool.is_live = lambda o: o in live
    a, b = pool.acquire("a"), pool.acquire("b")
    assert a != b and pool.acquire("a") == a
    assert pool.acquire("c") is None and pool.exhausted == 1
    live.discard("a")
    live.add("c")
    assert pool.acquire("c") == a  # a's lease went with its IKE SA
    assert pool.stats()["in_use"] == 2


def test_notify_value() -> None:
    assert NotifyType.INTERNAL_ADDRESS_FAILURE == 36


def test_a_peer_added_later_shares_the_running_pool() -> None:
    """``nattunnel reload`` builds new pool objects: a peer added then uses the running
    pool of the same name and range, with its leases, so no address is handed out twice;
    two loads of one pool compare equal (the reload's comparison of peers)."""
    from nattunnel.config.compare import comparable as _comparable

    net = RwNet(["c1"], addrs="198.18.200.1-198.18.200.2")
    net.connect("c1")
    again = AddressPool.of("rw", "198.18.200.1-198.18.200.2", [DNS])
    assert _comparable(again) == _comparable(net.pool)
    cfg = IkeConfig("c9", Identity.parse("gw"), Identity.parse("c9"), auth="psk", psk=b"s",
                    local_ts=(BEHIND,), pools=(again,))
    net.gw_tunnel.add_peer("c9", ())
    net.gw.add_peer(IkePeer(cfg, initiate=False, remote=None), 1.0)
    assert cfg.pools[0] is net.pool
    assert net.pool.acquire("c9") not in (None, ipaddress.ip_address(net.vip("c1") or "0.0.0.0"))
