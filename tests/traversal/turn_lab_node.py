"""One side of the TURN lab test (tests/lab/test_turn_lab.py), run in a namespace:

    python3 -m tests.traversal.turn_lab_node CONFIG PERMISSION_LIFETIME CHANNEL_LIFETIME

What ``nattunnel up CONFIG`` does (a ``Node`` with its TUN device, until SIGTERM), plus what
app.py does not do yet with the configuration's ``turn`` table: the allocation on that server
and every peer with ``relay = "always"`` sent through it to its endpoint (``relay_from_config``;
the same lines belong in ``Node.start``). Prints one JSON line when the relay's channels are
bound, then one with the endpoint's TURN counters when it is stopped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from nattunnel.addr import sockaddr
from nattunnel.app import Node
from nattunnel.config import load_config
from nattunnel.config.model import Config
from nattunnel.traversal.turn import ChannelUp, Event, TurnFailed


def relay_from_config(node: Node, config: Config, **lifetimes: float) -> None:
    """The ``turn`` table and each peer's ``relay = "always"``, on a started node."""
    endpoint = node.endpoint
    if config.turn is None or endpoint is None:
        return
    for pc in config.peers:
        if pc.relay == "always" and pc.endpoint is not None:
            endpoint.relay_peer(pc.name, addr=sockaddr(*pc.endpoint))
    endpoint.start_relay(sockaddr(*config.turn.server), config.turn.username,
                         config.turn.password,
                         permission_lifetime=lifetimes.get("permission_lifetime", 300.0),
                         channel_lifetime=lifetimes.get("channel_lifetime", 600.0))


async def main(path: str, permission: float, channel: float) -> None:
    config = load_config(path)
    node = Node(config)
    await node.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    bound = asyncio.Event()
    wanted = sum(1 for p in config.peers if p.relay == "always")
    channels: list[ChannelUp] = []

    def on_event(ev: Event) -> None:
        if isinstance(ev, ChannelUp):
            channels.append(ev)
            if len(channels) >= wanted:
                bound.set()
        elif isinstance(ev, TurnFailed):
            print(json.dumps({"failed": [ev.what, ev.code, ev.reason]}), flush=True)

    assert node.endpoint is not None
    node.endpoint.on_turn_event = on_event
    relay_from_config(node, config, permission_lifetime=permission, channel_lifetime=channel)
    await asyncio.wait_for(bound.wait(), 15)
    turn = node.endpoint.turn
    assert turn is not None
    print(json.dumps({"ready": True, "relayed": list(turn.relayed or ())}), flush=True)
    await stop.wait()
    print(json.dumps({"turn": node.endpoint.stats()["turn"],
                      "relay_received": node.endpoint.tunnel.relay_received,
                      "show": node.show()["peers"]}), flush=True)
    await node.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
