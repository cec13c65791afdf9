"""``[::]`` is dual-stack (issue 11): listed with no IPv4 address beside it, its sockets are
IPV6_V6ONLY=0 and carry IPv4 peers, which the kernel writes ::ffff:a.b.c.d. The tunnel keeps
that form (so rebinding compares equal and nothing moves), the IKE side the IPv4 address (so
NAT detection finds no NAT where there is none), and the counters show the IPv4 address. On
loopback (::ffff:127.0.0.1), no root."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket

import pytest

from nattunnel.app import Controller
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.tunnel.core import Tunnel
from tests.support.aio import loop_errors, until
from tests.support.ike import NET_A, NET_B
from tests.support.packets import A_INNER, B_INNER, ip4


def _v6only(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)


async def test_wildcard_alone_is_dual_stack_and_carries_an_ipv4_peer_both_ways():
    errors = loop_errors()
    k_ab, k_ba = os.urandom(20), os.urandom(20)
    ta, tb = Tunnel(), Tunnel()
    ia, ib = InProcessInterface(), InProcessInterface()
    a = Endpoint(ta, ia, [("127.0.0.1", 0)])
    await a.start()
    a_addr = a.local_addresses()[0]
    pb = tb.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")], addr=a_addr)
    tb.set_outbound(pb, OutboundSA(0x2001, AES_GCM_128, k_ba))
    tb.install_inbound(pb, InboundSA(0x1001, AES_GCM_128, k_ab))
    b = Endpoint(tb, ib, [("::", 0)])
    await b.start()
    try:
        assert b.dual_stack and _v6only(b.socks[0]) == 0
        b_port = b.local_addresses()[0][1]
        pa = a.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")],
                        addr=("127.0.0.1", b_port))
        ta.set_outbound(pa, OutboundSA(0x1001, AES_GCM_128, k_ab))
        ta.install_inbound(pa, InboundSA(0x2001, AES_GCM_128, k_ba))
        # B sends first, to the IPv4 address it was configured with
        back = ip4(B_INNER, A_INNER, 400)
        assert ib.send(back) > 0
        assert await asyncio.wait_for(ia.recv(), 2) == back
        pkt = ip4(A_INNER, B_INNER, 500)
        assert ia.send(pkt) > 0
        assert await asyncio.wait_for(ib.recv(), 2) == pkt
        # the kernel's ::ffff: form is the peer's address: its packets did not move it
        assert pb.rebinds == 0 and not tb.events
        assert b.stats()["peers"]["a"]["addr"] == ["127.0.0.1", a_addr[1]]
        assert not b.send_errors and not b.drops.as_dict()
        assert errors == []
    finally:
        a.close()
        b.close()


async def test_wildcard_beside_an_ipv4_address_stays_ipv6_only():
    ep = Endpoint(Tunnel(), InProcessInterface(), [("0.0.0.0", 0), ("::", 0)])
    await ep.start()
    try:
        assert not ep.dual_stack
        v6 = [s for s in ep.socks if s.family == socket.AF_INET6]
        assert v6 and _v6only(v6[0]) == 1
    finally:
        ep.close()


def _ike_side(me, other, lid, rid, lts, rts, listen):
    t = Tunnel()
    t.add_peer(other, [rts], keepalive_interval=0.3)
    iface = InProcessInterface()
    mgr = IkeManager(t)
    ep = Endpoint(t, iface, [listen], control=Controller(t, mgr, ike_port=0))
    cfg = IkeConfig(other, Identity.parse(lid), Identity.parse(rid), auth="psk",
                    psk=b"shared secret", local_ts=(lts,), remote_ts=(rts,), dpd_interval=5.0)
    return ep, iface, mgr, cfg


@pytest.mark.parametrize("initiator", ["v4", "dual"])
async def test_ike_between_an_ipv4_socket_and_a_dual_stack_one_finds_no_nat(initiator,
                                                                           caplog):
    """Either side initiates (to the other's NAT-T port, behind the marker); NAT detection
    hashes the IPv4 addresses on both sides, so neither finds NAT; ESP flows both ways."""
    caplog.set_level("INFO", logger="nattunnel")
    errors = loop_errors()
    a, ia, ma, ca = _ike_side("a", "b", "hosta", "hostb", NET_A, NET_B, ("127.0.0.1", 0))
    b, ib, mb, cb = _ike_side("b", "a", "hostb", "hosta", NET_B, NET_A, ("::", 0))
    await a.start()
    await b.start()
    loop = asyncio.get_running_loop()
    a_port, b_port = a.local_addresses()[0][1], b.local_addresses()[0][1]
    if initiator == "v4":
        mb.add_peer(IkePeer(cb, initiate=False, remote=None), 0)
        ma.add_peer(IkePeer(ca, initiate=True, remote=("127.0.0.1", b_port)), loop.time())
        a.rearm_timer()
    else:
        ma.add_peer(IkePeer(ca, initiate=False, remote=None), 0)
        mb.add_peer(IkePeer(cb, initiate=True, remote=("127.0.0.1", a_port)), loop.time())
        b.rearm_timer()
    try:
        await until(lambda: a.tunnel.peers["b"].outbound is not None
                    and b.tunnel.peers["a"].outbound is not None, timeout=5.0)
        pkt = ip4(A_INNER, B_INNER, 300)
        assert ia.send(pkt) > 0
        assert await asyncio.wait_for(ib.recv(), 2) == pkt
        back = ip4(B_INNER, A_INNER, 300)
        assert ib.send(back) > 0
        assert await asyncio.wait_for(ia.recv(), 2) == back
        (sa_b,) = mb.stats()["ike_sas"]
        (sa_a,) = ma.stats()["ike_sas"]
        assert sa_b["remote"] == f"127.0.0.1:{a_port}"
        for sa in (sa_a, sa_b):
            assert (sa["local_behind_nat"], sa["remote_behind_nat"]) == (False, False), sa
        assert caplog.text.count("NAT: none") == 2
        assert b.stats()["peers"]["a"]["addr"] == ["127.0.0.1", a_port]
        assert not a.send_errors and not b.send_errors and not a.errors and not b.errors
        assert errors == []
    finally:
        a.close()
        b.close()
