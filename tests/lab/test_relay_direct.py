"""Root: relay first, then direct, and back (issue 13.4; io/relay.py's ``PathMover``).

A (behind NAT1, port restricted) has ``relay = "auto"`` towards E (public, no relay) and a
TURN server (coturn on B). The direct path is blocked in NAT1 at first: A's IKE does not come
up directly, so A allocates a relay (only then) and the tunnel comes up through it; ping
works. The block is lifted: A tries the direct path again, the IKE SA and its child SAs move
there with MOBIKE (UPDATE_SA_ADDRESSES), and the allocation is released after the short
``keep_relay``. The block comes back: A's liveness checks on the direct path go unanswered
and the SAs move back to a new allocation within 10 s. A ping at 10 pps runs throughout and
the losses at each move are counted (and printed).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from nattunnel.lab.coturn import Coturn, Relay
from nattunnel.lab.nattypes import PORT_RESTRICTED_CONE, NatLab
from tests.lab.traversal_support import (
    LEFT_IN,
    RIGHT_IN,
    NodeProc,
    block_direct,
    config,
    ping_ok,
    require,
    secrets,
    wait_for,
)

TIMINGS = {"auto_after": 2.0, "retry_direct": 3.0, "keep_relay": 3.0, "dead_after": 2.0,
           "probe_interval": 1.0}


class _Pinger:
    """ping -i 0.1 in A towards E's inner address; ``lost()`` stops it and counts the
    sequence numbers missing between the first and the last answer."""

    def __init__(self, lab: NatLab, out: Path) -> None:
        self.lab, self.out = lab, out
        self._f = out.open("w")
        self.proc = lab.popen("a", "ping", "-i", "0.1", "-W", "1", RIGHT_IN, stdout=self._f,
                              stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.lab.stop(self.proc)
        self._f.close()

    def lost(self) -> int:
        self.stop()
        seqs = sorted({int(w.split("=")[1]) for line in self.out.read_text().splitlines()
                       for w in line.split() if w.startswith("icmp_seq=")})
        return (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else -1


def _kind(node: NodeProc) -> str:
    return str(node.peer()["path"].get("kind"))


@pytest.mark.root
def test_relay_first_then_direct_and_back(tmp_path: Path) -> None:
    require()
    secrets(tmp_path)
    lab = NatLab("two", PORT_RESTRICTED_CONE, with_c=False)
    nodes: list[NodeProc] = []
    coturn = None
    pinger: _Pinger | None = None
    try:
        b, e = lab.addr["b"], lab.addr["e"]
        coturn = Coturn(b, None, tmp_path, lab=lab, ns="b",
                        relay=Relay(min_port=50000, max_port=50100)).start()
        block_direct(lab, lab.routers["r1"].ns, e, True)
        nodes.append(NodeProc(lab, "e", config(tmp_path, "e", "a", RIGHT_IN, LEFT_IN,
                                               endpoint=None, initiate=False), {}))
        a = NodeProc(lab, "a", config(tmp_path, "a", "e", LEFT_IN, RIGHT_IN,
                                      endpoint=f"{e}:4500", initiate=True,
                                      turn=f"{b}:3478"), {"paths": TIMINGS})
        nodes.append(a)
        assert a.status()["turn"] is None  # no allocation before it is needed
        wait_for("the tunnel through the relay", lambda: ping_ok(lab, "a", RIGHT_IN), 30)
        assert _kind(a) == "relay"
        assert a.status()["turn"]["state"] == "allocated"
        pinger = _Pinger(lab, tmp_path / "ping1.out")
        time.sleep(1)
        block_direct(lab, lab.routers["r1"].ns, e, False)
        t = wait_for("the move to the direct path", lambda: _kind(a) == "direct", 15)
        print(f"\nmoved to the direct path {t:.1f} s after it opened")
        wait_for("the relay released", lambda: a.status()["turn"]["state"] == "released", 10)
        time.sleep(0.5)
        lost = pinger.lost()
        print(f"pings lost at 10 pps at the move to the direct path: {lost}")
        assert 0 <= lost <= 2
        assert ping_ok(lab, "a", RIGHT_IN) and ping_ok(lab, "e", LEFT_IN)
        pinger = _Pinger(lab, tmp_path / "ping2.out")
        time.sleep(0.5)
        path = a.peer()["path"]
        assert path["moves_to_direct"] == 1 and path["direct"] == f"{e}:4500", path
        block_direct(lab, lab.routers["r1"].ns, e, True)
        t = wait_for("the fallback to the relay", lambda: _kind(a) == "relay", 10)
        print(f"back on the relay {t:.1f} s after the direct path died")
        wait_for("the tunnel through the relay again",
                 lambda: ping_ok(lab, "a", RIGHT_IN), 10)
        path = a.peer()["path"]
        assert path["fallbacks"] == 1 and a.status()["turn"]["state"] == "allocated", path
        assert ping_ok(lab, "e", LEFT_IN)
        lost = pinger.lost()
        print(f"pings lost at 10 pps from the direct path's death to the relay: {lost}")
        assert 0 <= lost <= 100  # 10 s at 10 pps
    finally:
        if pinger is not None:
            pinger.stop()
        for n in nodes:
            final = n.stop()
            if final is not None:
                peer = next(iter(final["peers"].values()))
                print(n.status_file.name, peer["state"], peer["path"], final["turn"],
                      final["send_errors"], peer["last_error"])
            print(n.stderr.read_text()[-1500:])
        if coturn is not None:
            coturn.stop()
        lab.close()
