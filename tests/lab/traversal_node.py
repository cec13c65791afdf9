"""One nattunnel node of the traversal lab tests (tests/lab/test_relay_direct.py,
tests/lab/test_traversal_matrix.py), run in a lab namespace:

    python3 -m tests.lab.traversal_node CONFIG OPTIONS_JSON STATUS_FILE

What ``nattunnel up CONFIG`` does (a ``Node`` with its TUN device, the ``turn`` relay and
the path mover), with the TURN lifetimes (``{"turn": {...}}``) and the mover's timings
(``{"paths": {...}}``) of OPTIONS_JSON, logging at ``{"log": "info"}`` to stderr if given.
Every 0.2 s, and once more when SIGTERM stops it, the node's status (``Node.show()``, with
the endpoint's TURN counters) is written to STATUS_FILE (written aside and renamed, so
that a reader never sees half of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

from nattunnel.app import Node
from nattunnel.config import load_config


def _write(node: Node, path: str) -> None:
    status = node.show()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)


async def main(config: str, options: str, status: str) -> None:
    opts = json.loads(options)
    if opts.get("log"):  # e.g. "info", "debug": to stderr
        logging.basicConfig(level=str(opts["log"]).upper(), stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = Node(load_config(config), serve_control=False, serve_metrics=False,
                turn_lifetimes=opts.get("turn"), path_timings=opts.get("paths"))
    await node.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        _write(node, status)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    _write(node, status)
    await node.stop(wait=0.5)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
