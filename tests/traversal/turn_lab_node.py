"""One side of the TURN lab test (tests/lab/test_turn_lab.py), run in a namespace:

    python3 -m tests.traversal.turn_lab_node CONFIG PERMISSION_LIFETIME CHANNEL_LIFETIME

What ``nattunnel up CONFIG`` does (a ``Node`` with its TUN device, its ``turn`` allocation and
every peer with ``relay = "always"`` sent through it, until SIGTERM), with the relay's
permission and channel lifetimes shortened so that the test sees refreshes. Prints one JSON
line when the relay's channels are bound, then one with the endpoint's TURN counters when it
is stopped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from nattunnel.app import Node
from nattunnel.config import load_config
from nattunnel.traversal.turn import ChannelUp, Event, TurnFailed


async def main(path: str, permission: float, channel: float) -> None:
    config = load_config(path)
    node = Node(config, turn_lifetimes={"permission_lifetime": permission,
                                        "channel_lifetime": channel})
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

    def all_bound() -> bool:
        assert node.endpoint is not None
        return all(node.endpoint.relay_path(p.name).get("channel_bound")
                   for p in config.peers if p.relay == "always")

    for _ in range(150):  # the events after start, or what was bound before they were heard
        if bound.is_set() or all_bound():
            break
        await asyncio.sleep(0.1)
    else:
        raise TimeoutError("the relay's channels were not bound")
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
