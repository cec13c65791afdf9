"""Several child SAs of our own configuration (``IkeConfig.children``, swanctl's
``children { n50 {...} n51 {...} }``; issue 14 item 4), two managers and tunnels on the fake
wire: the initiator asks for the first child in IKE_AUTH and for each of the others in a
CREATE_CHILD_SA of its own, each with its own selectors; each subnet's packets go out on its
child SA; a child the peer refuses is asked for again on its own, the others stay; a rekey
keeps a child's name and selectors; the responder narrows to the child of its configuration
that fits, never to a mix of two; and an answer wider than the offer is narrowed to it
(RFC 7296 section 2.9)."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

import pytest

from nattunnel.addr import Network
from nattunnel.ike.config import ChildConfig
from nattunnel.ike.message import AnySelector
from nattunnel.ike.proposals import narrow as real
from nattunnel.ike.sa import IkeSa
from nattunnel.tunnel.core import Tunnel
from tests.support.ike import A_SEEN, NET_A, Net
from tests.support.packets import A_INNER, ip4

B1 = ipaddress.ip_network("198.18.50.0/24")
B2 = ipaddress.ip_network("198.18.60.0/24")
B3 = ipaddress.ip_network("198.18.70.0/24")
_SPI = struct.Struct("!I")


def _net(b_children: tuple[ChildConfig, ...] = (), b_remote: tuple = (B1, B2)) -> Net:
    """A asks for children n50 (B1) and n60 (B2); B has both subnets (one child config
    listing both, unless ``b_children``)."""
    net = Net()
    for t, name, nets in ((net.ta, "b", [B1, B2, B3]), (net.tb, "a", [NET_A])):
        t.remove_peer(name)
        t.add_peer(name, nets)
    net.ca.remote_ts = b_remote
    net.ca.children = (ChildConfig("n50", (NET_A,), (B1,)), ChildConfig("n60", (NET_A,), (B2,)))
    net.cb.local_ts = (B1, B2)
    net.cb.children = b_children
    return net


def _up(net: Net, until: float = 1.0) -> IkeSa:
    net.a.initiate("b", 0.0)
    net.wire.advance(until)
    (sa,) = net.a.sas_of("b")
    return sa


def _spi_to(t: Tunnel, dst: str) -> int:
    out = memoryview(bytearray(2048))
    peer, m = t.encapsulate_into(ip4(A_INNER, dst), out, 2.0)
    assert peer is not None and m > 0, m
    return int(_SPI.unpack_from(out, 0)[0])


def _kids(sa: IkeSa) -> dict[str, tuple]:
    return {c.name: (c.local_ts, c.remote_ts, c.spi_out) for c in sa.children}


def test_each_child_of_the_config_comes_up_with_its_own_selectors() -> None:
    net = _net()
    sa = _up(net)
    kids = _kids(sa)
    assert set(kids) == {"n50", "n60"}
    assert kids["n50"][:2] == ((NET_A,), (B1,)) and kids["n60"][:2] == ((NET_A,), (B2,))
    # the responder's view: two children, narrowed to what A asked for each
    (sb,) = net.b.sas_of("a")
    assert sorted(c.local_ts for c in sb.children) == [(B1,), (B2,)]
    # each subnet's packets go out on its own child SA; B3 (in allowed_ips, in no child's
    # selectors) is not sent on either
    assert _spi_to(net.ta, "198.18.50.9") == kids["n50"][2]
    assert _spi_to(net.ta, "198.18.60.9") == kids["n60"][2]
    out = memoryview(bytearray(2048))
    _, m = net.ta.encapsulate_into(ip4(A_INNER, "198.18.70.9"), out, 2.0)
    assert m <= 0
    # and they arrive at B on the SAs B made for them
    for dst in ("198.18.50.9", "198.18.60.9"):
        _, m = net.ta.encapsulate_into(ip4(A_INNER, dst), out, 2.0)
        assert net.tb.receive(out, 0, m, A_SEEN, 2.0) > 0
    assert sa.child_retry_at is None  # nothing more to ask for


def test_a_refused_child_is_asked_for_again_alone() -> None:
    # B allows B1 only at first: n60 is refused (TS_UNACCEPTABLE), n50 comes up
    net = _net()
    net.cb.local_ts = (B1,)
    sa = _up(net)
    assert set(_kids(sa)) == {"n50"}
    assert sa.child_retry_at is not None and sa.child_retry_at >= 30.0
    assert list(sa._wanted) == ["n60"]
    assert "TS_UNACCEPTABLE" in net.a.last_error.get("b", "")
    # B now allows B2 too: at the retry only n60 is asked for, and comes up; n50 stays
    net.cb.local_ts = (B1, B2)
    spi50 = _kids(sa)["n50"][2]
    net.wire.advance(sa.child_retry_at - net.wire.now + 0.1)
    kids = _kids(sa)
    assert set(kids) == {"n50", "n60"} and kids["n50"][2] == spi50
    assert kids["n60"][:2] == ((NET_A,), (B2,))
    assert sa.child_retry_at is None


def test_a_rekey_keeps_the_childs_name_and_selectors() -> None:
    net = _net()
    sa = _up(net)
    old = {c.name: c.spi_in for c in sa.children}
    assert sa.rekey_child(old["n60"], 5.0)
    net.a._process(sa, 5.0)
    net.wire.advance(1.0)
    kids = {c.name: c for c in sa.children}
    assert set(kids) == {"n50", "n60"}
    assert kids["n60"].spi_in != old["n60"] and kids["n50"].spi_in == old["n50"]
    assert kids["n60"].remote_ts == (B2,)


def test_the_responder_takes_each_request_to_the_child_of_its_config_that_fits() -> None:
    net = _net(b_children=(ChildConfig("x", (B1,), (NET_A,)), ChildConfig("y", (B2,), (NET_A,))))
    sa = _up(net)
    assert set(_kids(sa)) == {"n50", "n60"}
    (sb,) = net.b.sas_of("a")
    assert {c.name: c.local_ts for c in sb.children} == {"x": (B1,), "y": (B2,)}


def test_the_responder_narrows_to_one_child_of_its_config_never_a_mix() -> None:
    # B: child x is B1 <-> A, child y is B2 <-> 198.18.99.0/24; A asks for (A, B2) in
    # n60: only y's local side fits, but y's remote side does not hold A, so B refuses
    # it rather than mixing x's remote side with y's local side
    other = ipaddress.ip_network("198.18.99.0/24")
    net = _net(b_children=(ChildConfig("x", (B1,), (NET_A,)), ChildConfig("y", (B2,), (other,))))
    sa = _up(net)
    assert set(_kids(sa)) == {"n50"}
    (sb,) = net.b.sas_of("a")
    assert [c.name for c in sb.children] == ["x"]
    assert sa.child_retry_at is not None


def test_an_answer_wider_than_the_offer_is_narrowed_to_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a broken responder that answers with its whole local_ts (0.0.0.0/0) for every child:
    # A keeps, for each child, only what it offered for that child
    net = _net()
    net.cb.local_ts = (ipaddress.ip_network("0.0.0.0/0"),)

    def widening(offered: Sequence[AnySelector], allowed: Sequence[Network]) -> list[Network]:
        if allowed is net.cb.local_ts:
            return list(allowed)
        return real(offered, allowed)

    monkeypatch.setattr("nattunnel.ike.child.narrow", widening)
    sa = _up(net)
    kids = _kids(sa)
    assert kids["n50"][1] == (B1,) and kids["n60"][1] == (B2,)
    (sb,) = net.b.sas_of("a")
    assert all(c.local_ts == net.cb.local_ts for c in sb.children)  # what B answered


def test_an_ike_sa_rekey_carries_the_children_still_to_ask_for() -> None:
    # n60 refused; the IKE SA is rekeyed before its retry: the new IKE SA asks for it
    net = _net()
    net.cb.local_ts = (B1,)
    sa = _up(net)
    assert list(sa._wanted) == ["n60"]
    assert sa.rekey_ike(2.0)
    net.a._process(sa, 2.0)
    net.wire.advance(1.0)
    (new,) = [s for s in net.a.sas_of("b") if not s.rekeyed]
    assert new is not sa and list(new._wanted) == ["n60"]
    assert {c.name for c in new.children} == {"n50"}
    net.cb.local_ts = (B1, B2)
    retry = new.child_retry_at
    assert retry is not None
    net.wire.advance(retry - net.wire.now + 0.1)
    assert {c.name for c in new.children} == {"n50", "n60"}
