"""A stopping mediated peer deletes its mediation SA: the server drops the registration
at once (not after its liveness checks), and the peer does not reconnect (sans-I/O, on the
fake wire of tests/ike/test_mediation.py)."""

from __future__ import annotations

from nattunnel.ike.base import State
from tests.ike.test_mediation import A_ID, B_ID, build


def test_a_stopping_peer_deletes_its_registration_at_once() -> None:
    wire, server, a, _b = build()
    assert set(server.core.registered) == {A_ID, B_ID}
    sa = a.client.sa
    assert sa is not None and sa.state is State.ESTABLISHED
    assert a.client.stop(wire.now)
    assert a.client.closing()
    wire.advance(1.0)
    assert not a.client.closing() and sa.state is State.DEAD
    assert set(server.core.registered) == {B_ID}
    wire.advance(300.0)  # no reconnection after the Delete
    assert set(server.core.registered) == {B_ID}
    assert a.client.sa is sa and not a.client.stop(wire.now)
