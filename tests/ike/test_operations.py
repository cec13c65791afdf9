"""What the operator asks of the IKE manager (the control socket's initiate, terminate,
rekey, reload and graceful stop): two managers on the fake wire (tests/support/ike.py)."""

from __future__ import annotations

from nattunnel.ike.base import State
from nattunnel.ike.manager import PeerDown, PeerUp
from tests.support.ike import Net, up


def _up(net: Net, now: float = 0.0) -> None:
    net.a.initiate("b", now)
    net.deliver(now)
    assert up(net)


def test_peer_up_and_down_events_and_ages():
    net = Net()
    _up(net, 5.0)
    assert net.node_a.told == [PeerUp("b")] and net.node_b.told == [PeerUp("a")]
    assert net.a.last_handshake["b"] == 5.0
    (sa,) = net.a.sas_of("b")
    assert net.a.child_since[sa.children[0].spi_in] == 5.0
    assert net.a.terminate("b", 6.0) == 1
    net.deliver(6.0)
    assert isinstance(net.node_a.told[-1], PeerDown)
    assert isinstance(net.node_b.told[-1], PeerDown)
    assert not net.a.child_since


def test_terminate_sends_delete_and_holds_the_peer_until_initiate():
    net = Net()
    net.a.peers["b"].initiate = True  # A would initiate again after a failure
    _up(net)
    assert net.a.terminate("b", 1.0) == 1
    net.deliver(1.0)
    # B got the Delete: no IKE SA and no child SA left on either side
    assert not net.b.sas_of("a") and not net.a.sas_of("b")
    assert net.ta.peers["b"].outbound is None and net.tb.peers["a"].outbound is None
    # held: no initiation however long we wait
    for t in (3.0, 10.0, 200.0):
        net.timers(t)
        net.deliver(t)
    assert not net.a.sas_of("b") and "b" in net.a.held
    # until the operator asks
    net.a.initiate("b", 201.0)
    net.deliver(201.0)
    assert up(net) and "b" not in net.a.held


def test_rekey_child_and_ike_on_request():
    net = Net()
    _up(net)
    (sa,) = net.a.sas_of("b")
    old_child = sa.children[0].spi_in
    assert net.a.rekey("b", 1.0) == 1
    net.deliver(1.0)
    (sa,) = net.a.sas_of("b")
    assert [c.spi_in for c in sa.children] != [old_child] and len(sa.children) == 1
    spi_before = sa.local_spi
    assert net.a.rekey("b", 2.0, ike=True) == 1
    net.deliver(2.0)
    (new,) = [s for s in net.a.sas_of("b") if not s.rekeyed]
    assert new.local_spi != spi_before and new.established
    assert up(net)


def test_remove_peer_deletes_its_sas_and_forgets_it():
    net = Net()
    _up(net)
    net.a.remove_peer("b", 1.0)
    net.deliver(1.0)
    assert "b" not in net.a.peers and not net.b.sas_of("a")
    # a message that names the old identity finds no configuration on A any more
    assert all(sa.state is State.DEAD or sa.name != "b" for sa in net.a.sas.values())


def test_delete_all_then_closing_until_answered():
    net = Net()
    _up(net)
    assert net.a.delete_all(1.0) == 1
    assert net.a.closing()  # the Delete waits for its answer
    net.deliver(1.0)
    assert not net.a.closing() and not net.b.sas_of("a")


def test_rekeys_and_retransmits_are_counted_per_peer():
    net = Net()
    _up(net)
    assert net.a.rekey("b", 1.0) == 1
    net.deliver(1.0)
    assert net.a.rekey("b", 2.0, ike=True) == 1
    net.deliver(2.0)
    assert net.a.peer_counters["b"] == {"ike_rekeys": 1, "child_rekeys": 1, "retransmits": 0}
    assert net.b.peer_counters["a"]["child_rekeys"] == 1
    assert net.b.peer_counters["a"]["ike_rekeys"] == 1
    # a request that goes unanswered is retransmitted on the SA's timer: counted each time
    assert net.a.rekey("b", 3.0) == 1
    net.node_a.take()  # lost
    (sa,) = [s for s in net.a.sas_of("b") if not s.rekeyed]
    req = sa.request
    assert req is not None and req.tries == 1
    now = 3.0
    for _ in range(10):  # other deadlines (the old SAs' grace periods) come between
        now = net.a.get_timer() or now + 1
        net.a.handle_timer(now)
        net.node_a.take()
        if req.tries == 3:
            break
    assert sa.request is req and req.tries == 3
    assert net.a.peer_counters["b"]["retransmits"] == req.tries - 1
    assert net.a.counters["retransmits"] == req.tries - 1
