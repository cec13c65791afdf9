"""Nothing transient stops the endpoint (issue 11): a send that fails (ENETUNREACH,
EHOSTUNREACH, EPERM from a firewall, ENOBUFS, ...) on the data path, for a keepalive or for
an IKE message is counted as SEND_FAILED and by errno (``send_errors``), and the work goes on
on its normal schedule: the timer is re-armed, IKE retransmits, and once the network is back
the tunnel comes up. Fake sockets raise each errno; no root."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket

import pytest

from nattunnel.app import Controller
from nattunnel.esp.drop import DropReason
from nattunnel.ike import manager as ike_manager
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.tunnel.core import Tunnel
from tests.support.aio import loop_errors, until
from tests.support.datapath import FakeTun, collect, endpoints, workload
from tests.support.ike import NET_A, NET_B
from tests.support.packets import A_INNER, B_INNER, ip4

ERRNOS = [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM, errno.ENOBUFS, errno.EAGAIN,
          errno.EMSGSIZE, errno.EACCES, errno.ECONNREFUSED]


class FailingSocket:
    """Stands in for a UDP socket: every send raises OSError(``err``) while ``failing``,
    and goes to the real socket otherwise."""

    def __init__(self, sock: socket.socket, err: int) -> None:
        self.sock = sock
        self.err = err
        self.failing = True
        self.attempts = 0
        self.family = sock.family

    def _maybe_fail(self) -> None:
        self.attempts += 1
        if self.failing:
            raise OSError(self.err, errno.errorcode[self.err])

    def sendto(self, data, addr):
        self._maybe_fail()
        return self.sock.sendto(data, addr)

    def sendmsg(self, buffers, anc=(), flags=0, addr=None):
        self._maybe_fail()
        return self.sock.sendmsg(buffers, anc, flags, addr)


@pytest.mark.parametrize("err", ERRNOS, ids=[errno.errorcode[e] for e in ERRNOS])
@pytest.mark.parametrize("gso", [True, False], ids=["gso", "one-by-one"])
async def test_failed_data_sends_are_counted_by_errno_and_traffic_resumes(err, gso):
    errors = loop_errors()
    a, b, ib = await endpoints()
    try:
        peer = a.tunnel.peers["b"]
        fake = FailingSocket(peer.sock, err)
        peer.sock = fake
        a.sender.gso = gso and a.gso
        pkts = workload()
        a.budget = 1000
        a.drain_inner(FakeTun(pkts).read_into)
        name = errno.errorcode[err]
        assert a.drops[DropReason.SEND_FAILED] == len(pkts)
        assert a.stats()["send_errors"] == {name: len(pkts)}
        assert a.stats()["endpoint_drops"] == {"send_failed": len(pkts)}
        assert a.gso is (gso and a.gso)  # an error other than a refused GSO keeps GSO on
        # one packet alone (send_inner) is refused the same way
        assert a.send_inner(ip4(A_INNER, B_INNER, 100)) == -DropReason.SEND_FAILED
        assert a.send_errors == {name: len(pkts) + 1}
        # the network is back: the same socket carries everything
        fake.failing = False
        a.drain_inner(FakeTun(pkts).read_into)
        assert await collect(ib, len(pkts)) == pkts
        assert a.send_errors == {name: len(pkts) + 1}
        assert errors == []
    finally:
        a.close()
        b.close()


async def test_no_socket_of_the_family_is_counted_not_raised():
    a, b, _ = await endpoints()
    try:
        a.tunnel.peers["b"].sock = None
        a.drain_inner(FakeTun([ip4(A_INNER, B_INNER, 100)] * 3).read_into)
        assert a.send_errors == {"NO_SOCKET": 3}
        assert a.drops[DropReason.SEND_FAILED] == 3
    finally:
        a.close()
        b.close()


async def test_a_bug_on_the_send_path_is_counted_and_the_reader_goes_on():
    errors = loop_errors()
    a, b, ib = await endpoints()
    try:
        calls = []

        def broken(room):
            calls.append(1)
            raise RuntimeError("a bug in the TUN reader")

        a.drain_inner(broken)
        assert a.errors == {"send": 1} and a.drops[DropReason.INTERNAL_ERROR] == 1
        pkts = [ip4(A_INNER, B_INNER, 200)] * 3
        a.drain_inner(FakeTun(pkts).read_into)
        assert await collect(ib, 3) == pkts
        assert errors == []
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("err", [errno.ENETUNREACH, errno.EPERM, errno.ENOBUFS],
                         ids=["ENETUNREACH", "EPERM", "ENOBUFS"])
async def test_keepalives_that_cannot_be_sent_keep_the_timer_running(err):
    """A keepalive whose send fails is counted; the timer is re-armed and the next one is
    tried on its schedule; once sends work again they arrive."""
    errors = loop_errors()
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    ep = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)])
    peer = ep.tunnel.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")],
                              addr=sink.getsockname(), keepalive=True,
                              keepalive_interval=0.05, now=loop.time())
    await ep.start()
    try:
        fake = FailingSocket(peer.sock, err)
        peer.sock = fake
        await until(lambda: fake.attempts >= 4)
        name = errno.errorcode[err]
        assert ep.send_errors[name] >= 4
        assert ep.drops[DropReason.SEND_FAILED] == ep.send_errors[name]
        assert ep._timer is not None  # still armed
        fake.failing = False
        got = []

        def received():
            with contextlib.suppress(BlockingIOError):
                got.append(sink.recv(16))
            return got

        await until(received)
        assert got[0] == b"\xff"
        assert errors == []
    finally:
        sink.close()
        ep.close()


# --- IKE: sends and the route lookup fail until the network is back ---------------------------
async def _ike_pair(host: str = "127.0.0.1"):
    """B responds on 127.0.0.1, A initiates to it from ``host``; both in-process."""
    sides = {}
    for me, other, lid, rid, lts, rts, where in (
            ("b", "a", "hostb", "hosta", NET_B, NET_A, "127.0.0.1"),
            ("a", "b", "hosta", "hostb", NET_A, NET_B, host)):
        t = Tunnel()
        t.add_peer(other, [rts], keepalive_interval=0.3)
        iface = InProcessInterface()
        mgr = IkeManager(t)
        ep = Endpoint(t, iface, [(where, 0)], control=Controller(t, mgr, ike_port=0))
        cfg = IkeConfig(other, Identity.parse(lid), Identity.parse(rid), auth="psk",
                        psk=b"shared secret", local_ts=(lts,), remote_ts=(rts,),
                        force_encap=True, dpd_interval=5.0)
        sides[me] = (ep, iface, mgr, cfg)
    b, _, mb, cb = sides["b"]
    await b.start()
    mb.add_peer(IkePeer(cb, initiate=False, remote=None), 0)
    return sides


def _up(a: Endpoint, b: Endpoint) -> bool:
    return a.tunnel.peers["b"].outbound is not None and b.tunnel.peers["a"].outbound is not None


async def test_ike_sends_that_fail_are_retransmitted_once_the_network_is_back():
    errors = loop_errors()
    sides = await _ike_pair()
    a, ia, ma, ca = sides["a"]
    b, ib = sides["b"][:2]
    await a.start()
    fake = FailingSocket(a.socks[0], errno.ENETUNREACH)
    a._bound[fake] = a._bound[a.socks[0]]
    a._by_family[socket.AF_INET] = fake
    loop = asyncio.get_running_loop()
    b_addr = b.local_addresses()[0]
    ma.add_peer(IkePeer(ca, initiate=True, remote=(b_addr[0], b_addr[1])), loop.time())
    a.rearm_timer()
    try:
        await until(lambda: fake.attempts >= 2, timeout=3.0)  # the first try, retransmitted
        assert not _up(a, b)
        assert a.send_errors["ENETUNREACH"] == fake.attempts
        fake.failing = False
        await until(lambda: _up(a, b), timeout=5.0)  # the next retransmission gets through
        pkt = ip4(A_INNER, B_INNER, 300)
        assert ia.send(pkt) > 0
        assert await asyncio.wait_for(ib.recv(), 2) == pkt
        assert errors == []
    finally:
        a.close()
        b.close()


async def test_no_route_at_start_the_initiator_retries_and_comes_up(monkeypatch, caplog):
    """A wildcard socket and no route to the peer: the kernel cannot say which source
    address it would use (NAT detection needs it), so the endpoint cannot answer the IKE
    manager; the manager gives the wait up and initiates again on its backoff, and the IKE SA
    comes up once the route is there. The failure is counted and logged once, without a
    traceback."""
    errors = loop_errors()
    monkeypatch.setattr(ike_manager, "REINITIATE_DELAY", 0.2)
    sides = await _ike_pair(host="0.0.0.0")
    a, ia, ma, ca = sides["a"]
    b, ib = sides["b"][:2]
    real = Endpoint._route_source
    lookups = []

    def no_route_yet(self, fam, remote, natt):
        lookups.append(remote)
        if len(lookups) <= 2:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return real(self, fam, remote, natt)

    monkeypatch.setattr(Endpoint, "_route_source", no_route_yet)
    await a.start()
    loop = asyncio.get_running_loop()
    b_addr = b.local_addresses()[0]
    ma.add_peer(IkePeer(ca, initiate=True, remote=("127.0.0.1", b_addr[1])), loop.time())
    a.rearm_timer()
    try:
        await until(lambda: _up(a, b), timeout=8.0)
        assert len(lookups) >= 3
        assert a.send_errors == {"ENETUNREACH": 2}
        assert a.errors == {}  # not an internal error
        warned = [r for r in caplog.records if "cannot send to 127.0.0.1:" in r.getMessage()]
        assert len(warned) == 1 and warned[0].exc_info is None
        pkt = ip4(A_INNER, B_INNER, 300)
        assert ia.send(pkt) > 0
        assert await asyncio.wait_for(ib.recv(), 2) == pkt
        assert errors == []
    finally:
        a.close()
        b.close()
