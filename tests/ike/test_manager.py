"""The IKE manager in memory: two managers on the fake wire (tests/support/ike.py ``Net``),
no sockets, no sleeps."""

from __future__ import annotations

import random

from nattunnel.ike.base import State
from nattunnel.ike.events import Outgoing
from tests.support.ike import B_ADDR, Net, drain, up
from tests.support.packets import ip4


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
            now = net.a.get_timer() or now + 1
            net.a.handle_timer(now)
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
        data, _, natt = other.take("a")[0]
        net.give("b", data, ("198.18.0.9", 500 + i), natt, 0.0)
    net.take("b")
    net.a.initiate("b", 0.0)
    net.deliver(0.0)
    assert net.b.counters["cookies_sent"] == 1
    assert up(net)  # the initiator retried with the cookie and got through
    # a request carrying a forged cookie gets a fresh COOKIE answer, not an SA
    other = Net()
    other.a.sas.clear()
    sa = other.a.initiate("b", 0.0)
    assert sa is not None
    sa._cookie = b"\x00" + bytes(16)
    other.take("a")
    sa._request = None
    sa.start(0.0)
    data = sa.datagrams_to_send()[-1].data
    half_open = len(net.b.sas)
    net.give("b", data, ("198.18.0.7", 500), False, 0.0)
    assert net.b.counters["cookies_sent"] == 2 and len(net.b.sas) == half_open


def test_garbage_at_the_manager_is_counted_and_ignored():
    net = Net()
    for junk in [b"", b"\x00" * 27, bytes(28), b"\xff" * 200]:
        net.give("b", junk, ("198.18.0.9", 500), False, 0.0)
    assert net.b.counters["dropped"] >= 3
    assert not net.take("b")
    net.a.initiate("b", 0.0)
    net.deliver()
    assert up(net)


def test_outgoing_switches_to_natt_after_nat_detection():
    net = Net()
    net.a.initiate("b", 0.0)
    first_natt = net.node_a.pending()[0].natt
    net.deliver()
    assert up(net)
    assert first_natt is False  # IKE_SA_INIT on port 500
    (sa_a,) = net.a.sas.values()
    assert sa_a.natt and sa_a.remote == ("198.18.0.2", 4500) and sa_a.local_behind_nat
    (sa_b,) = net.b.sas.values()
    assert sa_b.natt and sa_b.remote_behind_nat and sa_b.remote == ("198.18.0.1", 4500)
    assert net.tb.peers["a"].addr == ("198.18.0.1", 4500)
    assert net.ta.peers["b"].keepalive and not net.tb.peers["a"].keepalive
    assert isinstance(Outgoing(b"", B_ADDR, True), Outgoing)


def _traffic(net: Net, n: int, size: int = 1000) -> None:
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
    t = net2.a.get_timer()
    assert t is not None and t <= 5.0  # byte lifetimes are checked every 5 s
    net2.a.handle_timer(t)
    net2.deliver(t)
    assert net2.ta.peers["b"].outbound is first  # under the limit: nothing
    _traffic(net2, 12)  # about 12 kB
    t2 = net2.a.get_timer()
    net2.a.handle_timer(t2)
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
    t = net.a.get_timer()
    assert t is not None and t <= 6.0
    net.a.handle_timer(t)
    net.deliver(t)
    assert net.ta.peers["b"].outbound is not first


def test_a_wildcard_socket_makes_the_manager_ask_for_its_local_address():
    """NAT detection needs our address towards the peer (RFC 7296 section 2.23): a request
    that came to a wildcard socket waits for the answer to LocalAddressNeeded (the manager
    opens no socket), and so does initiating without a known local address."""
    net = Net()
    net.a.peers["b"].local = None
    assert net.a.initiate("b", 0.0) is None  # asks first
    (ev,) = drain(net.a)
    assert (ev.remote, ev.natt) == (B_ADDR, False) and not net.a.sas
    net.a.local_address_found(ev.remote, ev.natt, ("198.19.1.2", 500), 0.0)
    (init,) = net.take("a")
    assert len(net.a.sas) == 1
    # B's socket is a wildcard: the request (and its retransmission) waits
    for _ in range(2):
        net.b.receive_datagram(init[0], init[1], 0.0, natt=False, local=("0.0.0.0", 500))
    (ev,) = drain(net.b)  # one question for both
    assert (ev.remote, ev.natt) == (init[1], False)
    assert not net.b.sas and not net.b.datagrams_to_send()
    net.b.local_address_found(ev.remote, ev.natt, B_ADDR, 0.0)
    assert len(net.b.sas) == 1 and len(net.node_b.pending()) == 2  # one SA; two answers
    net.deliver()
    assert up(net)
    (sa_b,) = net.b.sas.values()
    assert sa_b.remote_behind_nat and not sa_b.local_behind_nat  # its own address was right


def test_an_unanswered_local_address_question_is_given_up_and_initiation_retried():
    """No route to the peer yet: the endpoint cannot answer LocalAddressNeeded (the kernel
    has no source address towards it). The wait ends after LOCAL_ADDRESS_WAIT and the
    initiation is tried again on the re-initiation backoff (2 s, then 4 s, ...), so the IKE
    SA comes up once the route is there; a request that waited is dropped (its sender
    retransmits)."""
    from nattunnel.ike.manager import LOCAL_ADDRESS_WAIT, REINITIATE_DELAY

    net = Net()
    net.a.peers["b"].local = None
    net.a.peers["b"].initiate = True
    net.a.initiate("b", 0.0)
    asked = [0.0]
    (ev,) = drain(net.a)  # nobody answers: no route
    now = 0.0
    for _ in range(2):
        t = net.a.get_timer()
        assert t is not None
        net.a.handle_timer(t)
        now = t
        new = drain(net.a)
        if new:
            asked.append(now)
    assert not net.a.sas and not net.a.datagrams_to_send()
    # given up after LOCAL_ADDRESS_WAIT, asked again REINITIATE_DELAY later
    assert asked == [0.0, LOCAL_ADDRESS_WAIT + REINITIATE_DELAY]
    # the next wait is given up too, and the next try comes after twice the delay
    net.a.handle_timer(now + LOCAL_ADDRESS_WAIT)
    assert drain(net.a) == []
    t = net.a.get_timer()
    assert t == now + LOCAL_ADDRESS_WAIT + 2 * REINITIATE_DELAY
    # the route is back: this time the question is answered, and the SA comes up
    net.a.handle_timer(t)
    (ev,) = drain(net.a)
    net.a.local_address_found(ev.remote, ev.natt, ("198.19.1.2", 500), t)
    net.deliver(t)
    assert up(net)
    # B's side: a request that came to a wildcard socket and was never answered goes
    before = net.b.counters["dropped"]
    other = Net()
    other.a.initiate("b", 0.0)
    data, src, natt = other.take("a")[0]
    net.b.receive_datagram(data, src, t, natt=natt, local=("0.0.0.0", 500))
    assert len(drain(net.b)) == 1
    net.b.handle_timer(t + LOCAL_ADDRESS_WAIT)
    assert net.b.counters["dropped"] == before + 1 and not net.b.datagrams_to_send()


def test_a_peer_port_other_than_plain_ike_is_its_nat_t_port():
    """An endpoint on a port other than 500 (or our ike_port) is the peer's NAT-T port:
    IKE_SA_INIT goes there behind the marker from the start (as strongSwan takes a
    remote_port other than 500); on 500 or our ike_port it goes plain."""
    for remote_port, ike_port, natt in ((4700, 500, True), (500, 500, False),
                                        (1500, 1500, False), (4500, 500, True)):
        net = Net()
        net.a.ike_port = ike_port
        net.a.peers["b"].remote = (B_ADDR[0], remote_port)
        net.a.initiate("b", 0.0)
        (out,) = net.a.datagrams_to_send()
        assert (out.remote, out.natt) == ((B_ADDR[0], remote_port), natt)


def test_a_peer_on_our_own_plain_ike_port_gets_plain_ike():
    """Our ike_port is learned from the answer for the plain IKE socket: a peer endpoint on
    that port (both sides configured with one ike_port other than 500) gets plain IKE; on
    any other port the manager asks again for the NAT-T socket's address and goes there
    behind the marker."""
    for our_ike_port, natt in ((1500, False), (500, True)):
        net = Net()
        net.a.peers["b"].local = None
        net.a.peers["b"].remote = (B_ADDR[0], 1500)
        net.a.initiate("b", 0.0)
        (ev,) = drain(net.a)
        assert not ev.natt  # the plain IKE socket's address first
        net.a.local_address_found(ev.remote, ev.natt, ("198.19.1.2", our_ike_port), 0.0)
        if natt:
            (ev,) = drain(net.a)
            assert ev.natt and not net.a.datagrams_to_send()
            net.a.local_address_found(ev.remote, ev.natt, ("198.19.1.2", 4600), 0.0)
        (out,) = net.a.datagrams_to_send()
        assert (out.remote, out.natt) == ((B_ADDR[0], 1500), natt)
        (sa,) = net.a.sas.values()
        assert sa.local == ("198.19.1.2", 4600 if natt else our_ike_port)
