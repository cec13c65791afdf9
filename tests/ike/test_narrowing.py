"""Traffic selectors wider than one address (RFC 7296 section 2.9), both roles: the responder
narrows what is offered to its own prefixes (several per child SA), and the initiator keeps
only what lies in what it offered, refusing a child SA whose selectors lie outside."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from nattunnel.addr import Network
from nattunnel.ike.message import AnySelector
from nattunnel.ike.proposals import narrow as real
from tests.support.ike import Net


def nets(*texts: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def _up(net: Net) -> None:
    net.a.initiate("b", 0.0)
    net.deliver(0.0)


def test_several_prefixes_narrowed_by_the_responder() -> None:
    net = Net()
    net.ca.local_ts = nets("198.18.100.1/32", "198.18.101.0/24")
    net.ca.remote_ts = nets("198.18.50.0/24", "198.18.60.0/24", "198.18.70.0/24")
    net.cb.local_ts = nets("198.18.50.0/25", "198.18.60.0/24")
    net.cb.remote_ts = nets("198.18.100.0/24", "198.18.101.0/24")
    _up(net)
    (sa_a,) = net.a.sas_of("b")
    (sa_b,) = net.b.sas_of("a")
    (ca,), (cb,) = sa_a.children, sa_b.children
    assert ca.remote_ts == cb.local_ts == nets("198.18.50.0/25", "198.18.60.0/24")
    assert ca.local_ts == cb.remote_ts == nets("198.18.100.1/32", "198.18.101.0/24")


def test_nothing_in_common_is_ts_unacceptable() -> None:
    net = Net()
    net.ca.remote_ts = nets("198.18.70.0/24")
    net.cb.local_ts = nets("198.18.50.0/24")
    _up(net)
    (sa_a,) = net.a.sas_of("b")
    assert not sa_a.children and "TS_UNACCEPTABLE" in net.a.last_error["b"]


@pytest.mark.parametrize("wider", [True, False])
def test_the_initiator_never_takes_wider_selectors(monkeypatch: pytest.MonkeyPatch,
                                                   wider: bool) -> None:
    """A responder that answers with more than was offered (here: its whole local_ts):
    the initiator keeps the part inside its own, or refuses the child SA if none is."""
    net = Net()
    net.ca.remote_ts = nets("198.18.50.0/24")
    net.cb.local_ts = nets("0.0.0.0/0") if wider else nets("198.18.90.0/24")
    def widening(offered: Sequence[AnySelector], allowed: Sequence[Network]
                 ) -> list[Network]:
        if allowed is net.cb.local_ts:
            return list(allowed)  # a broken responder: no narrowing
        return real(offered, allowed)

    monkeypatch.setattr("nattunnel.ike.child.narrow", widening)
    _up(net)
    (sa_a,) = net.a.sas_of("b")
    if wider:
        (c,) = sa_a.children
        assert c.remote_ts == nets("198.18.50.0/24")
    else:
        assert not sa_a.children
        assert "lie outside ours" in net.a.last_error["b"]
