"""One side of the STUN lab test (tests/traversal/test_stun_lab.py), run in a namespace:

    python3 -m tests.traversal.stun_lab_node ROLE B_HOST NATT_PORT STUN_PORT KAB KBA SAB SBA [N]

(KAB, KBA: the keys a to b and b to a, in hex; SAB, SBA: their SPIs, in hex.)

``b`` (public): the tiny STUN server on B_HOST:STUN_PORT and a nattunnel Endpoint on
B_HOST:NATT_PORT with manual SAs to peer a (address learned), which answers every inner packet
with one back; prints ``{"ready": true}``, then a status line (where it sees a, what it got)
for every line on stdin. ``a`` (behind the NAT): an Endpoint on 0.0.0.0:NATT_PORT with SAs to
b, which sends N inner packets to b while it makes STUN Bindings with b's server from the same
socket, waits for the answers to its packets, and prints one JSON line: the reflexive
addresses, its local address, what it sent and got, the drops and the STUN counters.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys

from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.traversal.stun import Binding
from nattunnel.tunnel.core import Tunnel
from tests.support.packets import A_INNER, B_INNER, ip4
from tests.traversal.server import UdpStunServer


def _sa_drops(ep: Endpoint) -> int:
    return sum(sa.drops.total() for p in ep.tunnel.peers.values() for sa in p.inbound)


async def run_b(host: str, natt_port: int, stun_port: int, k_ab: bytes, k_ba: bytes,
                spi_ab: int, spi_ba: int) -> None:
    server = UdpStunServer(host, stun_port)
    t = Tunnel()
    peer = t.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")])
    t.install_inbound(peer, InboundSA(spi_ab, AES_GCM_128, k_ab))
    t.set_outbound(peer, OutboundSA(spi_ba, AES_GCM_128, k_ba))
    iface = InProcessInterface(maxsize=100_000)
    ep = Endpoint(t, iface, [(host, natt_port)])
    await ep.start()
    got = 0

    async def echo() -> None:
        nonlocal got
        while True:
            p = await iface.recv()
            got += 1
            iface.send(ip4(B_INNER, A_INNER, len(p)))

    task = asyncio.create_task(echo())
    print(json.dumps({"ready": True}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(json.dumps({"peer_a": list(peer.addr) if peer.addr else None, "got": got,
                          "drops": t.drops.total(), "sa_drops": _sa_drops(ep),
                          "stun_requests": len(server.requests),
                          "stun_sources": sorted({f"{a[0]}:{a[1]}"
                                                  for _, a in list(server.requests)})}),
              flush=True)
    task.cancel()
    ep.close()
    server.close()


async def run_a(b_host: str, natt_port: int, stun_port: int, k_ab: bytes, k_ba: bytes,
                spi_ab: int, spi_ba: int, n: int) -> None:
    t = Tunnel()
    peer = t.add_peer("b", [ipaddress.ip_network(B_INNER + "/32")], addr=(b_host, natt_port))
    t.install_inbound(peer, InboundSA(spi_ba, AES_GCM_128, k_ba))
    t.set_outbound(peer, OutboundSA(spi_ab, AES_GCM_128, k_ab))
    iface = InProcessInterface(maxsize=100_000)
    ep = Endpoint(t, iface, [("0.0.0.0", natt_port)])
    await ep.start()
    sent = got = 0
    mapped: list[str] = []
    errors: list[str] = []

    async def traffic() -> None:
        nonlocal sent
        while sent < n:
            for _ in range(10):
                iface.send(ip4(A_INNER, B_INNER, 100 + sent % 1000))
                sent += 1
            await asyncio.sleep(0.005)

    async def bindings() -> None:
        for _ in range(20):
            r = await asyncio.wait_for(ep.stun_bind((b_host, stun_port)), 10.0)
            if isinstance(r, Binding):
                mapped.append(f"{r.mapped[0]}:{r.mapped[1]}")
            else:
                errors.append(repr(r))
            await asyncio.sleep(0.05)

    await asyncio.gather(traffic(), bindings())
    loop = asyncio.get_running_loop()
    end = loop.time() + 5.0
    while got < sent and loop.time() < end:
        try:
            await asyncio.wait_for(iface.recv(), end - loop.time())
        except TimeoutError:
            break
        got += 1
    print(json.dumps({"mapped": mapped, "errors": errors, "sent": sent, "got": got,
                      "drops": t.drops.total(), "sa_drops": _sa_drops(ep),
                      "stun_received": t.stun_received, "stun": ep.stun.counters,
                      "endpoint_errors": ep.errors}), flush=True)
    ep.close()


def main(argv: list[str]) -> None:
    role, host, p1, p2, k_ab, k_ba, spi_ab, spi_ba = argv[:8]
    keys = bytes.fromhex(k_ab), bytes.fromhex(k_ba)
    spis = int(spi_ab, 16), int(spi_ba, 16)
    if role == "b":
        asyncio.run(run_b(host, int(p1), int(p2), *keys, *spis))
    else:
        asyncio.run(run_a(host, int(p1), int(p2), *keys, *spis, int(argv[8])))


if __name__ == "__main__":
    main(sys.argv[1:])
