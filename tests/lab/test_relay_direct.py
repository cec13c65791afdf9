"""Root: relay first, then direct, and back (issue 13.4; io/relay.py's ``PathMover``).

A (behind NAT1, port restricted) has ``relay = "auto"`` towards E (public, no relay) and a
TURN server (coturn on B). The direct path is blocked in NAT1 at first: A's IKE does not come
up directly, so A allocates a relay (only then) and the tunnel comes up through it; ping
works. The block is lifted: A tries the direct path again, the IKE SA and its child SAs move
there with MOBIKE (UPDATE_SA_ADDRESSES), and the allocation is released after the short
``keep_relay``. The block comes back: A's liveness checks on the direct path go unanswered
and the SAs move back to a new allocation within 10 s. A ping at 10 pps runs throughout and
the losses at each move are counted (and printed).

The same for a mediated peer (no ``endpoint``): relay first through the relayed candidates,
then the direct pair, and back to the relay when it dies.
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
    mediated_config,
    ping_ok,
    require,
    secrets,
    server_config,
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


def _block_host(lab: NatLab, router_ns: str, host: str, on: bool) -> None:
    """Drop all UDP forwarded between the router's LAN side and ``host`` (every port: the
    mediated path's ports are the NATs' mappings)."""
    if on:
        lab.exec(router_ns, "nft", "-f", "-", input=(
            "table inet ntblock2 {\n chain blk {\n  type filter hook forward priority -5; "
            f"policy accept;\n  ip daddr {host} meta l4proto udp drop\n"
            f"  ip saddr {host} meta l4proto udp drop\n }}\n}}\n"))
    else:
        lab.exec(router_ns, "nft", "delete", "table", "inet", "ntblock2", check=False)


@pytest.mark.root
def test_mediated_relay_first_then_direct_and_back(tmp_path: Path) -> None:
    """Mediated (issue 13, relay first): A behind NAT1 and C behind NAT2 (port restricted
    both), a nattunnel mediation server and coturn on B, each with ``relay = "auto"``. The
    relayed candidates put the peer on the relay first, the IKE SA comes up there, then
    moves to the server-reflexive pair the checks chose; when that path dies, back to the
    relay within 10 s, and ping works again."""
    require()
    secrets(tmp_path)
    lab = NatLab("two", PORT_RESTRICTED_CONE)
    nodes: list[NodeProc] = []
    coturn = None
    try:
        b = lab.addr["b"]
        coturn = Coturn(b, None, tmp_path, lab=lab, ns="b",
                        relay=Relay(min_port=50000, max_port=50100)).start()
        nodes.append(NodeProc(lab, "b", server_config(tmp_path, ["a", "c"]), {}))
        c = NodeProc(lab, "c", mediated_config(tmp_path, "c", "a", RIGHT_IN, LEFT_IN, b,
                                               initiate=False, turn=f"{b}:3478"), {})
        nodes.append(c)
        wait_for("C registered and allocated", lambda: bool(
            (c.status().get("mediation") or {}).get("up")
            and (c.status().get("turn") or {}).get("relayed")), 10)
        a = NodeProc(lab, "a", mediated_config(tmp_path, "a", "c", LEFT_IN, RIGHT_IN, b,
                                               initiate=True, turn=f"{b}:3478"), {})
        nodes.append(a)
        wait_for("the tunnel", lambda: ping_ok(lab, "a", RIGHT_IN), 15)
        wait_for("the move to the direct pair",
                 lambda: _kind(a) == "direct" and _kind(c) == "direct", 10)
        path = a.peer()["path"]
        assert path["moves_to_direct"] == 1 and path["pair"] and path["via_relay"], path
        assert path["direct"].startswith("198.18.0.4:"), path  # NAT2's public address
        assert ping_ok(lab, "a", RIGHT_IN) and ping_ok(lab, "c", LEFT_IN)
        _block_host(lab, lab.routers["r1"].ns, "198.18.0.4", True)
        t = wait_for("the fallback to the relay", lambda: _kind(a) == "relay", 10)
        print(f"\nback on the relay {t:.1f} s after the direct path died")
        wait_for("the tunnel through the relay again",
                 lambda: ping_ok(lab, "a", RIGHT_IN), 10)
        assert ping_ok(lab, "c", LEFT_IN)
        assert a.peer()["path"]["fallbacks"] == 1
    finally:
        for n in nodes:
            n.stop()
            print(n.stderr.read_text()[-1500:])
        if coturn is not None:
            coturn.stop()
        lab.close()


@pytest.mark.root
def test_mediated_responder_releases_its_allocation_too(tmp_path: Path) -> None:
    """Mediated, relay first, then the direct pair (as above), with a short ``keep_relay``
    on both sides: once the initiator A moved the tunnel to the direct pair, the responder
    C (which only follows the UPDATE_SA_ADDRESSES) releases its allocation ``keep_relay``
    after its last peer left the relay, as A does, and the tunnel stays up direct."""
    require()
    secrets(tmp_path)
    lab = NatLab("two", PORT_RESTRICTED_CONE)
    nodes: list[NodeProc] = []
    coturn = None
    timings = {"keep_relay": 3.0}
    try:
        b = lab.addr["b"]
        coturn = Coturn(b, None, tmp_path, lab=lab, ns="b",
                        relay=Relay(min_port=50000, max_port=50100)).start()
        nodes.append(NodeProc(lab, "b", server_config(tmp_path, ["a", "c"]), {}))
        c = NodeProc(lab, "c", mediated_config(tmp_path, "c", "a", RIGHT_IN, LEFT_IN, b,
                                               initiate=False, turn=f"{b}:3478"),
                     {"paths": timings})
        nodes.append(c)
        wait_for("C registered and allocated", lambda: bool(
            (c.status().get("mediation") or {}).get("up")
            and (c.status().get("turn") or {}).get("relayed")), 10)
        a = NodeProc(lab, "a", mediated_config(tmp_path, "a", "c", LEFT_IN, RIGHT_IN, b,
                                               initiate=True, turn=f"{b}:3478"),
                     {"paths": timings})
        nodes.append(a)
        wait_for("the tunnel", lambda: ping_ok(lab, "a", RIGHT_IN), 15)
        wait_for("the move to the direct pair",
                 lambda: _kind(a) == "direct" and _kind(c) == "direct", 10)
        assert c.status()["turn"]["state"] == "allocated"  # kept keep_relay first
        t = wait_for("C's allocation released",
                     lambda: c.status()["turn"]["state"] == "released", 10)
        print(f"\nC released its allocation {t:.1f} s after both were direct")
        wait_for("A's allocation released",
                 lambda: a.status()["turn"]["state"] == "released", 10)
        assert ping_ok(lab, "a", RIGHT_IN) and ping_ok(lab, "c", LEFT_IN)
        assert _kind(a) == "direct" and _kind(c) == "direct"
    finally:
        for n in nodes:
            n.stop()
            print(n.stderr.read_text()[-1500:])
        if coturn is not None:
            coturn.stop()
        lab.close()
