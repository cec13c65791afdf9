"""One template peer (``remote_id = "%any"`` or a wildcard) for many road-warrior clients
(``nattunnel.ike.templates``, ``RoadWarriorManager``), on the fake wire: clients with
certificates from one CA each become an instance of their own (address, IKE SA, tunnel peer
routed to its virtual IP) only once they authenticated; instances go with their IKE SA;
``max_clients`` and the pool bound them; a newer IKE SA of one identity replaces the older."""

from __future__ import annotations

import ipaddress

import pytest

from nattunnel.constants import IKE_PORT
from nattunnel.ike.base import State
from nattunnel.ike.certs import TrustStore
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import IkeUp
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.pool import AddressPool
from nattunnel.ike.roadwarrior import RoadWarriorManager
from nattunnel.ike.templates import ANY_ID, Templates, parse_pattern
from nattunnel.lab.pki import Leaf, Pki, make_chain
from nattunnel.tunnel.core import Tunnel
from tests.support.ike import ManagerNode, port
from tests.support.packets import ip4
from tests.support.wire import FakeWire

GW = "198.18.0.2"
ANY4 = ipaddress.ip_network("0.0.0.0/0")
BEHIND = ipaddress.ip_network("198.18.50.0/24")
NAMES = ("c1", "c2", "c3")


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Pki]:
    """The lab's CA (the gateway's and the clients' leaves) and another CA (a stranger)."""
    tmp = tmp_path_factory.mktemp("pki")
    leaves = {"gw": Leaf("C=CH, O=Lab, CN=gw", dns=("gw",))}
    leaves |= {n: Leaf(f"C=CH, O=Lab, CN={n}", dns=(f"{n}.example",),
                       emails=(f"{n}@example.org",)) for n in NAMES}
    other = make_chain(tmp / "other", leaves={"c1": Leaf("C=CH, O=Lab, CN=c1",
                                                           dns=("c1.example",))})
    return make_chain(tmp / "lab", leaves=leaves), other


def _ports(ip: str) -> list[tuple[str, int]]:
    return [(ip, IKE_PORT), (ip, port(True))]


class TemplateNet:
    """A gateway with one template peer "rw" (``remote_id``, certificates, pool ``addrs``)
    and a client manager per ``add_client``, at 198.18.1.N."""

    def __init__(self, pkis: tuple[Pki, Pki], remote_id: str = "%any",
                 addrs: str = "198.18.200.0/29", max_clients: int = 0) -> None:
        self.pki, self.other = pkis
        self.wire = FakeWire()
        self.pool = AddressPool.of("rw", addrs)
        self.gw_tunnel = Tunnel()
        self.gw = RoadWarriorManager(self.gw_tunnel)
        self.wire.attach(ManagerNode(self.gw, GW, GW), _ports(GW))
        self.gw_tunnel.add_peer("rw", ())
        leaf = self.pki.leaf["gw"]
        pattern = parse_pattern(remote_id)
        assert pattern is not None
        self.template = IkeConfig(
            "rw", Identity.parse("gw"), pattern, auth="pubkey", private_key=leaf.key,
            certs=(leaf.cert,), trust=TrustStore((self.pki.root.cert,)), local_ts=(BEHIND,),
            dpd_interval=0, pools=(self.pool,), max_clients=max_clients)
        self.gw.add_peer(IkePeer(self.template, initiate=False, remote=None), 0)
        self.clients: dict[str, tuple[IkeManager, Tunnel]] = {}

    def add_client(self, key: str, leaf: str, ident: str, *, stranger: bool = False) -> None:
        pki = self.other if stranger else self.pki
        issued = pki.leaf[leaf]
        host = f"198.18.1.{len(self.clients) + 1}"
        t = Tunnel()
        t.add_peer("gw", [ANY4])
        m = RoadWarriorManager(t)
        m.add_peer(IkePeer(IkeConfig(
            "gw", Identity.parse(ident), Identity.parse("gw"), auth="pubkey",
            private_key=issued.key, certs=(issued.cert,),
            trust=TrustStore((self.pki.root.cert,)), local_ts=(ANY4,), remote_ts=(ANY4,),
            dpd_interval=0, vips=(4,)), initiate=True, remote=(GW, IKE_PORT),
            local=(host, IKE_PORT)), 0)
        self.wire.attach(ManagerNode(m, host, host), _ports(host))
        self.clients[key] = (m, t)

    def connect(self, key: str, now: float | None = None) -> None:
        if now is not None:
            self.wire.now = now
        m = self.clients[key][0]
        m.held.discard("gw")
        m.initiate("gw", self.wire.now)
        self.wire.run(50)

    def vip(self, key: str) -> str | None:
        sas = self.clients[key][0].sas_of("gw")
        return str(sas[-1].virtual_ips[0].network_address) if sas and sas[-1].virtual_ips \
            else None

    def instances(self) -> dict[str, object]:
        got = self.gw.stats().get("instances", {})
        assert isinstance(got, dict)
        return got


def test_two_clients_get_their_own_instance_address_and_sa(pkis: tuple[Pki, Pki]) -> None:
    net = TemplateNet(pkis)
    net.add_client("a", "c1", "c1.example")
    net.add_client("b", "c2", "c2.example")
    net.connect("a")
    net.connect("b")
    va, vb = net.vip("a"), net.vip("b")
    assert va and vb and va != vb
    assert net.instances() == {
        "rw[c1.example]": {"template": "rw", "identity": "c1.example"},
        "rw[c2.example]": {"template": "rw", "identity": "c2.example"}}
    for key, vip, name in (("a", va, "rw[c1.example]"), ("b", vb, "rw[c2.example]")):
        peer = net.gw_tunnel.peers[name]
        assert peer.allowed == (ipaddress.ip_network(f"{vip}/32"),)
        # a packet to the client's virtual IP goes out on that client's own child SA
        assert net.gw_tunnel.route(ip4("198.18.50.1", vip)) is peer
        (sa,) = net.gw.sas_of(name)
        assert sa.state is State.ESTABLISHED and str(sa.config.remote_id) == name[3:-1]
        (child,) = sa.children
        client_tunnel = net.clients[key][1]
        assert peer.outbound is not None and peer.outbound.spi == child.spi_out
        assert client_tunnel.inbound_sa(child.spi_out) is not None
    assert net.gw.sas_of("rw") == [] and net.gw_tunnel.peers["rw"].allowed == ()
    assert net.pool.stats()["leases"] == {"rw[c1.example]": va, "rw[c2.example]": vb}


def test_unauthenticated_clients_create_nothing(pkis: tuple[Pki, Pki]) -> None:
    net = TemplateNet(pkis)
    net.add_client("stranger", "c1", "c1.example", stranger=True)  # another CA's certificate
    net.add_client("liar", "c2", "c3.example")  # an identity its certificate does not hold
    for key in ("stranger", "liar"):
        net.connect(key)
        assert net.vip(key) is None
    assert net.instances() == {} and set(net.gw_tunnel.peers) == {"rw"}
    assert net.gw.sas == {} and set(net.gw.peers) == {"rw"}
    assert net.pool.stats()["in_use"] == 0 and net.pool.assigned == 0
    # what failed is told by the template's name, not by one per claimed identity
    assert set(net.gw.last_error) <= {"rw"} and "c3.example" in net.gw.last_error["rw"]
    assert not net.gw.peer_counters and not net.gw.last_handshake


def test_instance_and_lease_go_with_the_ike_sa_and_the_address_comes_back(
        pkis: tuple[Pki, Pki]) -> None:
    net = TemplateNet(pkis)
    net.add_client("a", "c1", "c1.example")
    net.add_client("b", "c2", "c2.example")
    net.connect("a")
    first = net.vip("a")
    m, _ = net.clients["a"]
    m.terminate("gw", 1.0)
    net.wire.now = 1.0
    net.wire.run(50)
    assert net.instances() == {} and "rw[c1.example]" not in net.gw_tunnel.peers
    assert "rw[c1.example]" not in net.gw.peers and net.pool.stats()["in_use"] == 0
    net.connect("b", 2.0)
    assert net.vip("b") != first
    net.connect("a", 3.0)
    assert net.vip("a") == first  # its last address, nobody took it meanwhile
    # the gateway ends it (the operator's terminate of the instance): gone too
    assert net.gw.terminate("rw[c1.example]", 4.0) == 1
    net.wire.now = 4.0
    net.wire.run(50)
    assert list(net.instances()) == ["rw[c2.example]"]


def test_the_bound_holds(pkis: tuple[Pki, Pki]) -> None:
    net = TemplateNet(pkis, max_clients=2)
    for i, n in enumerate(NAMES):
        net.add_client(n, n, f"{n}.example")
        net.connect(n, float(i))
    assert len(net.instances()) == 2 and net.vip("c3") is None
    assert "as many clients as max_clients" in net.gw.last_error["rw"]
    assert "rw[c3.example]" not in net.gw_tunnel.peers
    net.wire.advance(5.0)
    assert not net.gw.sas_of("rw[c3.example]") and "rw[c3.example]" not in net.gw.peer_counters
    # the pool is a bound too: two addresses, two clients
    small = TemplateNet(pkis, addrs="198.18.200.1-198.18.200.2")
    for i, n in enumerate(NAMES):
        small.add_client(n, n, f"{n}.example")
        small.connect(n, float(i))
    assert len(small.instances()) == 2 and small.vip("c3") is None
    assert small.pool.exhausted == 1


def test_a_newer_ike_sa_of_the_same_identity_replaces_the_older(
        pkis: tuple[Pki, Pki], monkeypatch: pytest.MonkeyPatch) -> None:
    """strongSwan's uniqueids = yes: the older IKE SA is deleted, the instance and its
    address stay, the tunnel peer follows the newer. With INITIAL_CONTACT (the client
    restarted) the older is forgotten; without it (charon's second IKE SA), deleted."""
    real = RoadWarriorManager._ike_up

    def no_contact(self: RoadWarriorManager, ev: IkeUp, now: float) -> None:
        ev.ike.initial_contact = False
        real(self, ev, now)

    for contact in (True, False):
        net = TemplateNet(pkis)
        net.add_client("a", "c1", "c1.example")
        net.add_client("a2", "c1", "c1.example")  # the same client from another address
        net.connect("a")
        vip = net.vip("a")
        net.clients["a"][0].held.add("gw")  # it does not come back after the Delete
        if not contact:
            monkeypatch.setattr(RoadWarriorManager, "_ike_up", no_contact)
        net.connect("a2", 1.0)
        monkeypatch.undo()
        net.wire.advance(3.0)
        assert net.vip("a2") == vip and list(net.instances()) == ["rw[c1.example]"]
        (sa,) = net.gw.sas_of("rw[c1.example]")
        assert sa.remote[0] == "198.18.1.2"
        peer = net.gw_tunnel.peers["rw[c1.example]"]
        assert peer.addr is not None and peer.addr[0] == "198.18.1.2"
        assert peer.outbound is not None and peer.outbound.spi == sa.children[0].spi_out
        if not contact:  # the older client got a Delete
            assert not net.clients["a"][0].sas_of("gw")


def test_exact_remote_id_wins_and_local_id_must_match(pkis: tuple[Pki, Pki]) -> None:
    net = TemplateNet(pkis, remote_id="*@example.org")
    pki = net.pki
    leaf = pki.leaf["gw"]
    exact = IkeConfig("c2-fixed", Identity.parse("gw"), Identity.parse("c2@example.org"),
                      auth="pubkey", private_key=leaf.key, certs=(leaf.cert,),
                      trust=TrustStore((pki.root.cert,)), local_ts=(BEHIND,), dpd_interval=0,
                      pools=(net.pool,))
    net.gw_tunnel.add_peer("c2-fixed", ())
    net.gw.add_peer(IkePeer(exact, initiate=False, remote=None), 0)
    net.add_client("a", "c1", "c1@example.org")
    net.add_client("b", "c2", "c2@example.org")
    net.add_client("c", "c3", "c3.example")  # an FQDN: not matched by *@example.org
    for key in "abc":
        net.connect(key)
    assert list(net.instances()) == ["rw[c1@example.org]"]
    assert net.gw.sas_of("c2-fixed") and net.vip("b") and net.vip("c") is None
    # IDr naming another identity of ours: not this template
    assert net.gw.templates.lookup(Identity.parse("c9@example.org"),
                                   Identity.parse("other-gw")) is None
    assert net.gw.templates.lookup(Identity.parse("c9@example.org"), None) is not None
    assert net.gw.templates.instances.keys() == {"rw[c1@example.org]"}  # lookups keep none


def test_a_removed_template_takes_its_instances(pkis: tuple[Pki, Pki]) -> None:
    net = TemplateNet(pkis)
    net.add_client("a", "c1", "c1.example")
    net.connect("a")
    assert net.instances()
    net.gw.remove_peer("rw", 1.0)
    net.wire.now = 1.0
    net.wire.run(50)
    assert net.instances() == {} and set(net.gw_tunnel.peers) == {"rw"}
    assert net.gw.peers == {} and net.pool.stats()["in_use"] == 0
    assert ANY_ID not in net.gw.templates.configs


def test_a_dn_wildcard_template(pkis: tuple[Pki, Pki]) -> None:
    net = TemplateNet(pkis, remote_id="C=CH, O=Lab, CN=*")
    net.add_client("a", "c1", "C=CH, O=Lab, CN=c1")  # its certificate's subject
    net.add_client("b", "c2", "c2.example")  # an FQDN: the DN pattern does not match it
    net.connect("a")
    net.connect("b")
    assert net.vip("a") and net.vip("b") is None
    assert net.instances() == {"rw[C=CH, O=Lab, CN=c1]": {
        "template": "rw", "identity": "C=CH, O=Lab, CN=c1"}}
    assert not net.gw.last_error  # matched by no peer: a half-open SA that went, counted
    assert net.gw.counters["half_open_dropped"] == 1


def test_the_most_specific_template_wins() -> None:
    t = Templates()
    for name, text in (("any", "%any"), ("dn", "C=CH, O=Lab, CN=*"),
                       ("mail", "*@example.org")):
        pattern = parse_pattern(text)
        assert pattern is not None
        t.add(IkeConfig(name, Identity.parse("gw"), pattern, auth="pubkey"))
    for ident, want in (("a@example.org", "mail"), ("C=CH, O=Lab, CN=x", "dn"),
                        ("a@example.com", "any"), ("host.example", "any")):
        got = t.lookup(Identity.parse(ident), None)
        assert got is not None and got.name == f"{want}[{ident}]", (ident, got)
        assert str(got.remote_id) == ident
    assert t.instances == {} and t.template_of("mail[a@example.org]") == "mail"
    assert t.template_of("other[x]") is None and t.template_of("mail") is None


def test_an_older_ike_sa_that_dies_at_once_leaves_the_instance(
        pkis: tuple[Pki, Pki], monkeypatch: pytest.MonkeyPatch) -> None:
    """The older IKE SA has a request outstanding (a liveness check), so deleting it ends
    it at once: the instance stays for the newer one."""
    real = RoadWarriorManager._ike_up

    def no_contact(self: RoadWarriorManager, ev: IkeUp, now: float) -> None:
        ev.ike.initial_contact = False
        real(self, ev, now)

    net = TemplateNet(pkis)
    net.add_client("a", "c1", "c1.example")
    net.add_client("a2", "c1", "c1.example")
    net.connect("a")
    vip = net.vip("a")
    net.clients["a"][0].held.add("gw")
    (old,) = net.gw.sas_of("rw[c1.example]")
    assert old.check_liveness(1.0)
    monkeypatch.setattr(RoadWarriorManager, "_ike_up", no_contact)
    net.connect("a2", 1.0)
    monkeypatch.undo()
    assert old.state is State.DEAD
    assert list(net.instances()) == ["rw[c1.example]"] and net.vip("a2") == vip
    (sa,) = net.gw.sas_of("rw[c1.example]")
    peer = net.gw_tunnel.peers["rw[c1.example]"]
    assert peer.outbound is not None and peer.outbound.spi == sa.children[0].spi_out
    assert peer.allowed == (ipaddress.ip_network(f"{vip}/32"),)
