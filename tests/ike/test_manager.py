"""The IKE manager in memory: two managers wired together, no sockets, no sleeps."""

from __future__ import annotations

import ipaddress
import random

from nattunnel.ike.base import State
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import Outgoing
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.tunnel.core import Tunnel

NET_A = ipaddress.ip_network("198.18.100.1/32")
NET_B = ipaddress.ip_network("198.18.100.2/32")
A = ("198.19.1.2", 500)  # A behind a NAT
A_SEEN = ("198.18.0.1", 500)  # A as B sees it
B = ("198.18.0.2", 500)


class Net:
    """Queues of (data, from, natt) per side; ``deliver`` shuffles, duplicates or drops."""

    def __init__(self, *, cookie_threshold: int = 32) -> None:
        self.to_a: list[tuple[bytes, tuple[str, int], bool]] = []
        self.to_b: list[tuple[bytes, tuple[str, int], bool]] = []
        self.ta, self.tb = Tunnel(), Tunnel()
        self.ta.add_peer("b", [NET_B])
        self.tb.add_peer("a", [NET_A])
        self.a = IkeManager(self.ta, lambda o: self.to_b.append(
            (o.data, (A_SEEN[0], 4500 if o.natt else 500), o.natt)),
                            lambda r, n: A)
        self.b = IkeManager(self.tb, lambda o: self.to_a.append(
            (o.data, (B[0], 4500 if o.natt else 500), o.natt)),
                            lambda r, n: B, cookie_threshold=cookie_threshold)
        common = dict(auth="psk", psk=b"secret", dpd_interval=0)
        self.ca = IkeConfig("b", Identity.parse("hosta"), Identity.parse("hostb"),
                            local_ts=(NET_A,), remote_ts=(NET_B,), **common)
        self.cb = IkeConfig("a", Identity.parse("hostb"), Identity.parse("hosta"),
                            local_ts=(NET_B,), remote_ts=(NET_A,), **common)
        self.a.add_peer(IkePeer(self.ca, initiate=False, remote=B), 0)
        self.b.add_peer(IkePeer(self.cb, initiate=False, remote=None), 0)

    def deliver(self, now: float = 0.0, rng: random.Random | None = None,
                dup: float = 0.0, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.to_a and not self.to_b:
                return
            qa, qb = self.to_a, self.to_b
            self.to_a, self.to_b = [], []
            if rng is not None:
                rng.shuffle(qa)
                rng.shuffle(qb)
                qa += [m for m in qa if rng.random() < dup]
                qb += [m for m in qb if rng.random() < dup]
            for data, src, natt in qb:
                self.b.receive(data, src, natt, now)
            for data, src, natt in qa:
                self.a.receive(data, src, natt, now)


def up(net: Net) -> bool:
    return net.ta.peers["b"].outbound is not None and net.tb.peers["a"].outbound is not None


def test_duplicated_and_reordered_messages_still_converge():
    for seed in range(20):
        net = Net()
        rng = random.Random(seed)
        net.a.initiate("b", 0.0)
        net.deliver(0.0, rng, dup=0.5)
        # retransmissions cover whatever the reordering lost
        now = 0.0
        for _ in range(10):
            if up(net):
                break
            now = net.a.next_deadline() or now + 1
            net.a.on_timer(now)
            net.deliver(now, rng, dup=0.5)
        assert up(net), seed
        (sa_b,) = [s for s in net.b.sas.values() if s.state is State.ESTABLISHED]
        assert len(sa_b.children) == 1  # duplicates did not make a second child


def test_cookies_above_the_half_open_threshold():
    net = Net(cookie_threshold=2)
    # two half-open SAs from elsewhere fill the threshold
    for i in range(2):
        other = Net()
        other.a.initiate("b", 0.0)
        data, _, natt = other.to_b[0]
        net.b.receive(data, ("198.18.0.9", 500 + i), natt, 0.0)
    net.to_a.clear()
    net.a.initiate("b", 0.0)
    net.deliver(0.0)
    assert net.b.counters["cookies_sent"] == 1
    assert up(net)  # the initiator retried with the cookie and got through
    # a request carrying a forged cookie gets a fresh COOKIE answer, not an SA
    other = Net()
    other.a.sas.clear()
    sa = other.a.initiate("b", 0.0)
    sa._cookie = b"\x00" + bytes(16)
    other.to_b.clear()
    sa._request = None
    sa.start(0.0)
    data = sa.datagrams_to_send()[-1].data
    half_open = len(net.b.sas)
    net.b.receive(data, ("198.18.0.7", 500), False, 0.0)
    assert net.b.counters["cookies_sent"] == 2 and len(net.b.sas) == half_open


def test_garbage_at_the_manager_is_counted_and_ignored():
    net = Net()
    for junk in [b"", b"\x00" * 27, bytes(28), b"\xff" * 200]:
        net.b.receive(junk, ("198.18.0.9", 500), False, 0.0)
    assert net.b.counters["dropped"] >= 3
    assert not net.to_a
    net.a.initiate("b", 0.0)
    net.deliver()
    assert up(net)


def test_outgoing_switches_to_natt_after_nat_detection():
    net = Net()
    net.a.initiate("b", 0.0)
    first_natt = net.to_b[0][2]
    net.deliver()
    assert up(net)
    assert first_natt is False  # IKE_SA_INIT on port 500
    (sa_a,) = net.a.sas.values()
    assert sa_a.natt and sa_a.remote == ("198.18.0.2", 4500) and sa_a.local_behind_nat
    (sa_b,) = net.b.sas.values()
    assert sa_b.natt and sa_b.remote_behind_nat and sa_b.remote == ("198.18.0.1", 4500)
    assert net.tb.peers["a"].addr == ("198.18.0.1", 4500)
    assert net.ta.peers["b"].keepalive and not net.tb.peers["a"].keepalive
    assert isinstance(Outgoing(b"", B, True), Outgoing)


def _traffic(net: Net, n: int, size: int = 1000) -> None:
    from tests.tunnel.test_tunnel import ip4

    out = memoryview(bytearray(4096))
    for _ in range(n):
        net.ta.encapsulate_into(ip4("198.18.100.1", "198.18.100.2", size), out, 0.0)


def test_rekey_by_packets_and_by_bytes():
    net = Net()
    net.ca.rekey_packets = 20
    net.a.initiate("b", 0.0)
    net.deliver()
    first = net.ta.peers["b"].outbound
    _traffic(net, 25)
    assert first.rekey_needed  # the packet lifetime is the SA's soft limit
    assert net.a.rekey_outbound(first.spi, 1.0)
    net.deliver(1.0)
    assert net.ta.peers["b"].outbound is not first

    net2 = Net()
    net2.ca.rekey_bytes = 10_000
    net2.a.initiate("b", 0.0)
    net2.deliver()
    first = net2.ta.peers["b"].outbound
    t = net2.a.next_deadline()
    assert t is not None and t <= 5.0  # byte lifetimes are checked every 5 s
    net2.a.on_timer(t)
    net2.deliver(t)
    assert net2.ta.peers["b"].outbound is first  # under the limit: nothing
    _traffic(net2, 12)  # about 12 kB
    t2 = net2.a.next_deadline()
    net2.a.on_timer(t2)
    net2.deliver(t2)
    assert net2.ta.peers["b"].outbound is not first


def test_keepalive_modes_for_ike_peers():
    net = Net()
    net.ca.keepalive = "never"  # A is behind the NAT but asked for none
    net.cb.keepalive = "always"  # B is public but asked for them (a stateful firewall)
    net.a.initiate("b", 0.0)
    net.deliver()
    assert up(net)
    assert not net.ta.peers["b"].keepalive
    assert net.tb.peers["a"].keepalive


def test_byte_lifetimes_survive_an_ike_sa_rekey():
    net = Net()
    net.ca.rekey_bytes = 10_000
    net.a.initiate("b", 0.0)
    net.deliver()
    old = next(iter(net.a.sas.values()))
    assert old.rekey_ike(1.0)
    net.a._process(old, 1.0)
    net.deliver(1.0)
    assert old.state is State.DEAD and len(net.a.sas) == 1  # the children moved over
    first = net.ta.peers["b"].outbound
    _traffic(net, 12)  # about 12 kB: past the byte lifetime
    t = net.a.next_deadline()
    assert t is not None and t <= 6.0
    net.a.on_timer(t)
    net.deliver(t)
    assert net.ta.peers["b"].outbound is not first
