"""The TURN client (nattunnel.traversal.turn): a 508 (insufficient capacity) to an Allocate
is made again after 2 s, as a 437 is (a one-port relay range whose last allocation the
server is still freeing: the traversal matrix's coturns), and still fails after three."""

from __future__ import annotations

from aioice import stun

from nattunnel.traversal.turn import Allocated, TurnFailed
from tests.traversal.test_turn import MAPPED, RELAYED, Server, _client, run


def test_insufficient_capacity_is_retried_then_fails() -> None:
    c, s = _client(), Server()
    s.errors[stun.Method.ALLOCATE] = [508]
    c.allocate(0.0)
    assert run(c, s, 0.0) == []
    assert c.get_timer() == 2.0
    c.handle_timer(2.0)
    assert run(c, s, 2.0) == [Allocated(RELAYED, MAPPED, 600.0)]
    c2, s2 = _client(), Server()
    s2.errors[stun.Method.ALLOCATE] = [508] * 4
    c2.allocate(0.0)
    run(c2, s2, 0.0)
    for when in (2.0, 6.0):
        c2.handle_timer(when)
        assert run(c2, s2, when) == []
    c2.handle_timer(14.0)
    assert run(c2, s2, 14.0) == [TurnFailed("allocate", 508, "Error")]
