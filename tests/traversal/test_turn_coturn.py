"""The TURN relay against a real coturn on loopback (no root): two nattunnel nodes whose
peers are reached only through relays (``Endpoint.start_relay``, ``relay_peer``). Each node
has its own coturn (one relay port each, so that the relayed addresses are known before
the nodes start) with long-term credentials and shortened lifetimes, so that permission and
channel refreshes happen within the test. IKE comes up through the relays, and packets
go both ways through the in-process interfaces."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
from pathlib import Path

import pytest

from nattunnel.app import Node
from nattunnel.config import load_config
from nattunnel.keys import write_psk_file
from nattunnel.lab.coturn import Coturn, Relay
from nattunnel.traversal.turn import Allocated, ChannelUp, TurnClient
from tests.support.packets import ip4

A_IN, B_IN = "198.18.110.1", "198.18.110.2"
PERMISSION, CHANNEL = 6, 10

pytestmark = pytest.mark.skipif(
    shutil.which("turnserver") is None and os.environ.get("NATTUNNEL_REQUIRE_ROOT") != "1",
    reason="coturn (turnserver) is not installed")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp: Path, me: str, other: str, inner: str, local: str, endpoint: int) -> Path:
    path = tmp / f"{me}.toml"
    path.write_text(
        f'listen = ["127.0.0.1:{_free_port()}"]\nike_port = 0\n'
        f'[interface]\nkind = "inprocess"\n'
        f'[[peer]]\nname = "{other}"\nauth = "psk"\npsk_file = "k.psk"\n'
        f'local_id = "host{me}"\nremote_id = "host{other}"\n'
        f'allowed_ips = ["{inner}/32"]\nlocal_ts = ["{local}/32"]\n'
        f'endpoint = "127.0.0.1:{endpoint}"\ninitiate = false\n')
    return path


async def _until(cond: object, timeout: float) -> None:
    assert callable(cond)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_ike_and_packets_through_coturn_relays_with_refreshes(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # coturn drops to nobody when started by root
    write_psk_file(tmp_path / "k.psk", b"correct horse battery staple", force=True)
    ports = [_free_port() for _ in range(4)]
    relay_a, relay_b = ports[2], ports[3]
    servers = []
    for i in range(2):
        d = tmp_path / f"turn{i}"
        d.mkdir()
        os.chmod(d, 0o777)
        servers.append(Coturn("127.0.0.1", None, d, port=ports[i], alt_port=ports[i] + 1,
                              relay=Relay(min_port=ports[2 + i], max_port=ports[2 + i],
                                          permission_lifetime=PERMISSION,
                                          channel_lifetime=CHANNEL)))
    a = Node(load_config(_config(tmp_path, "a", "b", B_IN, A_IN, relay_b)))
    b = Node(load_config(_config(tmp_path, "b", "a", A_IN, B_IN, relay_a)))
    try:
        for s in servers:
            s.start()
        await a.start()
        await b.start()
        assert a.endpoint is not None and b.endpoint is not None
        channels: list[ChannelUp] = []
        turns: list[TurnClient] = []
        for node, server, peer in ((a, servers[0], "b"), (b, servers[1], "a")):
            ep = node.endpoint
            assert ep is not None
            ep.on_turn_event = lambda ev: channels.append(ev) if isinstance(
                ev, ChannelUp) else None
            ep.relay_peer(peer, addr=("127.0.0.1", relay_b if peer == "b" else relay_a))
            turns.append(ep.start_relay(server.address, "nattunnel", "secret",
                                        permission_lifetime=PERMISSION,
                                        channel_lifetime=CHANNEL))
        await _until(lambda: len(channels) == 2, 10)
        assert turns[0].relayed == ("127.0.0.1", relay_a)
        assert turns[1].relayed == ("127.0.0.1", relay_b)
        assert a.controller is not None
        loop = asyncio.get_running_loop()
        a.controller.ike.initiate("b", loop.time())
        a.endpoint.rearm_timer()
        await a.wait_up("b", timeout=10)
        await b.wait_up("a", timeout=10)
        for _ in range(3):
            pkt = ip4(A_IN, B_IN, 1000)
            assert a.send(pkt) > 0
            assert await asyncio.wait_for(b.recv(), 5) == pkt
            back = ip4(B_IN, A_IN, 200)
            assert b.send(back) > 0
            assert await asyncio.wait_for(a.recv(), 5) == back
        # the peers are where the servers see them: the other side's relayed address
        show = a.show()["peers"]["b"]
        assert show["endpoint"] == f"127.0.0.1:{relay_b}"
        assert show["path"]["kind"] == "relay"
        assert show["path"]["relayed"] == f"127.0.0.1:{relay_a}"
        assert show["path"]["channel"] == "0x4000" and show["path"]["channel_bound"]
        # past the permission's and the channel's lifetimes: refreshed, and still working
        await asyncio.sleep(CHANNEL + 1)
        for t in turns:
            assert t.counters["permission_refreshes"] >= 1, t.stats()
            assert t.counters["channel_refreshes"] >= 1, t.stats()
            assert t.counters["errors"] == 0 and t.allocated, t.stats()
        pkt = ip4(A_IN, B_IN, 500)
        assert a.send(pkt) > 0
        assert await asyncio.wait_for(b.recv(), 5) == pkt
        assert b.endpoint.tunnel.relay_received > 0
        assert a.endpoint.stats()["turn"]["channel_data_in"] > 0
        # stopped, a node frees its allocation: the same port allocates again at once
        # (without the release coturn would answer 437, allocation mismatch)
        port = a.endpoint.local_addresses()[0][1]
        old = a.endpoint.turn
        await a.stop()
        assert old is not None and old.state == "releasing"
        a = Node(dataclasses.replace(a.config, listen=(("127.0.0.1", port),)))
        await a.start()
        assert a.endpoint is not None
        again: list[object] = []
        a.endpoint.on_turn_event = again.append
        a.endpoint.start_relay(servers[0].address, "nattunnel", "secret")
        await _until(lambda: bool(again), 15)
        assert isinstance(again[0], Allocated), again
    finally:
        await a.stop()
        await b.stop()
        for s in servers:
            s.stop()
