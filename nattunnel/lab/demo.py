"""``nattunnel demo``: two endpoints on loopback, one behind an emulated NAT, no root needed.

It shows, with real sockets and the real data path:
1. a tunnel set up across the NAT (B learns A's NAT-mapped address from A's first packet);
2. NAT keepalives holding the mapping open across an idle period longer than the NAT's
   timeout, next to a tunnel without keepalives whose mapping expires;
3. a NAT rebinding: the NAT moves A to a new external port, and B follows after A's next
   authenticated packet;
4. throughput of the in-process data path on loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from dataclasses import dataclass

from ..addr import Addr, format_addr
from ..esp.sa import InboundSA, OutboundSA
from ..esp.suite import AES_GCM_256, Suite
from ..io.endpoint import Endpoint
from ..io.interface import InProcessInterface
from ..tunnel.core import Tunnel
from .natemu import NatEmulator
from .packets import inner_packet

A_INNER = ipaddress.IPv4Address("198.18.100.1")
B_INNER = ipaddress.IPv4Address("198.18.100.2")


@dataclass
class Side:
    endpoint: Endpoint
    iface: InProcessInterface

    def close(self) -> None:
        self.endpoint.close()


async def tunnel_pair(
    *, nat_timeout: float | None, keepalive: bool, interval: float, suite: Suite = AES_GCM_256,
) -> tuple[Side, Side, NatEmulator | None]:
    """A and B on 127.0.0.1 with fresh manual SAs; A behind a NatEmulator unless nat_timeout
    is None. Returns (a, b, nat)."""
    loop = asyncio.get_running_loop()
    k_ab, k_ba = os.urandom(suite.keymat_len), os.urandom(suite.keymat_len)
    tb = Tunnel()
    pb = tb.add_peer("a", [ipaddress.ip_network(f"{A_INNER}/32")])
    tb.set_outbound(pb, OutboundSA(0x1001, suite, k_ba))
    tb.install_inbound(pb, InboundSA(0x2001, suite, k_ab))
    b_iface = InProcessInterface()
    b = Side(Endpoint(tb, b_iface, [("127.0.0.1", 0)]), b_iface)
    await b.endpoint.start()
    b_addr = b.endpoint.local_addresses()[0]
    nat = None
    target = b_addr
    if nat_timeout is not None:
        nat = NatEmulator((b_addr[0], b_addr[1]), mapping_timeout=nat_timeout)
        await nat.start()
        target = nat.inside_address
    ta = Tunnel()
    pa = ta.add_peer("b", [ipaddress.ip_network(f"{B_INNER}/32")], addr=target,
                     keepalive=keepalive, keepalive_interval=interval, now=loop.time())
    ta.set_outbound(pa, OutboundSA(0x2001, suite, k_ab))
    ta.install_inbound(pa, InboundSA(0x1001, suite, k_ba))
    a_iface = InProcessInterface()
    a = Side(Endpoint(ta, a_iface, [("127.0.0.1", 0)]), a_iface)
    await a.endpoint.start()
    return a, b, nat


async def _reaches(src: Side, dst: Side, packet: bytes, timeout: float) -> bool:
    src.iface.send(packet)
    try:
        return await asyncio.wait_for(dst.iface.recv(), timeout) == packet
    except TimeoutError:
        return False


def _fmt(addr: Addr | None) -> str:
    return format_addr(addr) if addr is not None else "(none)"


async def throughput(seconds: float, size: int = 1400, burst: int = 64,
                     suite: Suite = AES_GCM_256) -> tuple[float, int]:
    """Inner packets per second A -> B on loopback through both data paths (no NAT)."""
    a, b, _ = await tunnel_pair(nat_timeout=None, keepalive=False, interval=20.0, suite=suite)
    try:
        pkt = inner_packet(A_INNER, B_INNER, size)
        got = 0
        t0 = time.perf_counter()
        send = a.iface.send
        take = b.iface.recv_nowait
        while time.perf_counter() - t0 < seconds:
            for _ in range(burst):
                send(pkt)
            want = got + burst
            deadline = time.perf_counter() + 0.5
            while got < want and time.perf_counter() < deadline:
                if take() is None:
                    await asyncio.sleep(0)  # let the endpoints' readers run
                else:
                    got += 1
        elapsed = time.perf_counter() - t0
        return got / elapsed, got
    finally:
        a.close()
        b.close()


async def run_demo(nat_timeout: float = 1.0, keepalive_interval: float = 0.3,
                   idle: float = 3.5, seconds: float = 2.0) -> int:
    say = print
    say(f"nattunnel demo: host A behind an emulated NAT (mapping timeout {nat_timeout:g} s), "
        "host B public, both on 127.0.0.1\n")
    a, b, nat = await tunnel_pair(nat_timeout=nat_timeout, keepalive=True,
                                  interval=keepalive_interval)
    a2, b2, nat2 = await tunnel_pair(nat_timeout=nat_timeout, keepalive=False,
                                     interval=keepalive_interval)
    assert nat is not None and nat2 is not None
    ok = True
    try:
        a_local = a.endpoint.local_addresses()[0][:2]
        say(f"1. tunnel up: A {_fmt(a_local)} -> NAT -> B {_fmt(b.endpoint.local_addresses()[0])}")
        up = await _reaches(a, b, inner_packet(A_INNER, B_INNER, 84), 2.0)
        up2 = await _reaches(a2, b2, inner_packet(A_INNER, B_INNER, 84), 2.0)
        mapped = nat.external_address((a_local[0], a_local[1]))
        say(f"   A -> B delivered: {up}; B learned A at the NAT's external address "
            f"{_fmt(b.endpoint.tunnel.peers['a'].addr)} (NAT mapping {_fmt(mapped)})")
        back = await _reaches(b, a, inner_packet(B_INNER, A_INNER, 84), 2.0)
        say(f"   B -> A delivered: {back}")
        ok &= up and up2 and back

        say(f"\n2. idle for {idle:g} s ({idle / nat_timeout:.1f}x the NAT timeout)")
        await asyncio.sleep(idle)
        sent = a.endpoint.tunnel.peers["b"].keepalives_sent
        held = await _reaches(b, a, inner_packet(B_INNER, A_INNER, 84), 1.0)
        lost = not await _reaches(b2, a2, inner_packet(B_INNER, A_INNER, 84), 1.0)
        say(f"   with keepalives every {keepalive_interval:g} s ({sent} sent, "
            f"{b.endpoint.tunnel.keepalives_received} received by B): "
            f"B -> A {'still delivered' if held else 'LOST'}")
        say(f"   without keepalives: mapping {'expired, B -> A lost' if lost else 'still open'}")
        ok &= held and lost

        say("\n3. NAT rebinding")
        old = b.endpoint.tunnel.peers["a"].addr
        new = nat.rebind((a_local[0], a_local[1]))
        say(f"   the NAT moved A from {_fmt(old)} to {_fmt(new)}")
        moved = await _reaches(a, b, inner_packet(A_INNER, B_INNER, 84), 2.0)
        now_at = b.endpoint.tunnel.peers["a"].addr
        back = await _reaches(b, a, inner_packet(B_INNER, A_INNER, 84), 2.0)
        say(f"   A's next packet authenticated at B; B now sends to {_fmt(now_at)}; "
            f"B -> A delivered: {back}")
        ok &= moved and back and now_at == new
    finally:
        for x in (a, b, a2, b2, nat, nat2):
            x.close()

    pps, n = await throughput(seconds)
    say(f"\n4. throughput A -> B on loopback, AES-GCM-256, 1400-octet inner packets: "
        f"{pps:,.0f} packets/s = {pps * 1400 * 8 / 1e6:,.0f} Mbit/s ({n} packets)")
    say(f"\nreport: tunnel {'OK' if ok else 'FAILED'}; keepalives held the mapping; "
        "rebinding followed; see docs/benchmarks.md for the data path's limits")
    return 0 if ok else 1


def main(**kw: float) -> int:
    return asyncio.run(run_demo(**kw))
