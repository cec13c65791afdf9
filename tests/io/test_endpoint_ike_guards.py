"""The endpoint's guards around its control side (IKE), with a fake ``Control`` that raises:
the port-500 reader, IKE behind the NAT-T marker, the timer and event handling all go on after
an exception, and a flood from a peer's address does not stop its IKE messages."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from nattunnel.esp.drop import DropReason
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.tunnel.core import Tunnel
from tests.support.aio import loop_errors, until
from tests.support.packets import B_INNER


# --- exceptions from the cores never stop a callback (issue 9) --------------------------------
class RaisingIke:
    """A stand-in control side (``nattunnel.io.endpoint.Control``) whose methods raise."""

    ike_port = 0

    def __init__(self, fail_receives: int = 1, timer_every: float | None = None) -> None:
        self.received: list[tuple[bytes, bool]] = []
        self.fail_receives = fail_receives
        self.timer_every = timer_every
        self.timer_calls = 0
        self.deadline: float | None = None

    def receive_datagram(self, data, remote, now, *, natt, local):
        self.received.append((data, natt))
        if len(self.received) <= self.fail_receives:
            raise RuntimeError("a bug in the IKE core")

    def get_timer(self):
        if self.timer_every is not None and self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + self.timer_every
        return self.deadline

    def handle_timer(self, now):
        self.timer_calls += 1
        self.deadline = None
        raise RuntimeError("a bug in the IKE timer")

    def handle_tunnel_event(self, event, now):
        raise RuntimeError("a bug in the rekey")

    def datagrams_to_send(self):
        return []

    def next_event(self):
        return None

    def local_address_found(self, remote, natt, local, now):
        raise AssertionError("never asked")

    def stats(self):
        return {}


def _endpoint(fake: RaisingIke) -> Endpoint:
    return Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)], control=fake)


async def _ike_endpoint(fake: RaisingIke) -> Endpoint:
    ep = _endpoint(fake)
    await ep.start()
    return ep


async def test_port_500_reader_survives_an_exception_from_the_ike_core(caplog):
    fake = RaisingIke(fail_receives=3)
    ep = await _ike_endpoint(fake)
    port500 = ep.ike_addresses()[0]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(5):
            s.sendto(b"ike %d" % i, port500)
        await until(lambda: len(fake.received) == 5)  # the reader outlived 3 exceptions
        assert [d for d, _ in fake.received] == [b"ike %d" % i for i in range(5)]
        assert ep.errors == {"ike_receive": 3}
        assert ep.drops[DropReason.INTERNAL_ERROR] == 3
        assert ep.stats()["errors"] == {"ike_receive": 3}
        # logged once with its traceback, not once per exception
        logged = [r for r in caplog.records if "internal error" in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
    finally:
        s.close()
        ep.close()


async def test_natt_ike_exception_is_counted_and_the_udp_reader_goes_on():
    errors = loop_errors()
    fake = RaisingIke(fail_receives=1)
    ep = await _ike_endpoint(fake)
    natt = ep.local_addresses()[0]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        first, second = b"first".ljust(40, b"."), b"second".ljust(40, b".")
        s.sendto(bytes(4) + first, natt)  # non-ESP marker: IKE (long enough for a header)
        await until(lambda: len(fake.received) == 1)
        s.sendto(bytes(4) + second, natt)
        s.sendto(b"\xff", natt)  # a keepalive behind it
        await until(lambda: len(fake.received) == 2 and ep.tunnel.keepalives_received == 1)
        assert fake.received == [(first, True), (second, True)]
        assert ep.errors == {"ike_receive": 1}
        assert errors == []  # nothing escaped to the event loop
    finally:
        s.close()
        ep.close()


async def test_timer_is_rearmed_after_exceptions_from_both_cores(monkeypatch):
    errors = loop_errors()
    loop = asyncio.get_running_loop()
    fake = RaisingIke(timer_every=0.03)
    ep = _endpoint(fake)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    peer = ep.tunnel.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")],
                              addr=sink.getsockname(), keepalive=True,
                              keepalive_interval=0.05, now=loop.time())
    real = ep.tunnel.handle_timer
    tunnel_calls = []

    def flaky(now):
        tunnel_calls.append(now)
        if len(tunnel_calls) == 1:
            raise RuntimeError("a bug in the tunnel's timer")
        return real(now)

    monkeypatch.setattr(ep.tunnel, "handle_timer", flaky)
    await ep.start()
    try:
        # the IKE timer raises every time, the tunnel's once: keepalives still go out
        await until(lambda: peer.keepalives_sent >= 2 and fake.timer_calls >= 3)
        assert sink.recv(16) == b"\xff"
        assert ep.errors["timer"] >= 4
        assert errors == []
    finally:
        sink.close()
        ep.close()


async def test_exception_handling_an_event_is_counted_and_the_timer_armed():
    from nattunnel.tunnel.core import RekeyNeeded

    fake = RaisingIke(timer_every=5.0)
    ep = await _ike_endpoint(fake)
    try:
        ep._timer.cancel()
        ep._timer = None
        ep.tunnel.events.append(RekeyNeeded("b", 0x1234))
        ep._handle_events(None)  # the control side raises
        assert ep.errors == {"events": 1}
        assert ep._timer is not None
    finally:
        ep.close()


async def test_a_flood_from_a_peers_address_does_not_stop_its_ike_messages():
    """Spoofed IKE junk with a peer's source address (an off-path attacker needs nothing
    else) must not keep that peer's own IKE messages from the IKE manager: no per-source
    limit stands in front of it (the manager rejects junk for unknown SPIs with one lookup,
    and limits only IKE_SA_INIT requests, after cookies)."""
    fake = RaisingIke(fail_receives=0)
    ep = await _ike_endpoint(fake)
    natt, port500 = ep.local_addresses()[0], ep.ike_addresses()[0]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    junk, real = b"junk".ljust(40, b"."), b"real".ljust(40, b".")
    try:
        for _ in range(500):
            peer.sendto(bytes(4) + junk, natt)
        for _ in range(3):
            peer.sendto(junk, port500)
        peer.sendto(bytes(4) + real, natt)
        peer.sendto(real, port500)
        await until(lambda: len(fake.received) == 505)
        assert (real, True) in fake.received and (real, False) in fake.received
    finally:
        peer.close()
        ep.close()
