"""Root: the traversal matrix (issue 13.6). Two hosts, each with no NAT or behind one of
the RFC 4787 types (full cone, restricted cone, port restricted cone, symmetric: all 25
combinations), plus double NAT on one side (a home NAT behind a CGN) and both behind the
same NAT (hairpinning on and off). Each case: the tunnel comes up, ping goes both ways, and
the path is what it must be.

One lab per topology, shared by its cases: the routers' types are switched between cases
(``NatLab.set_nat``: one atomic nft -f, conntrack flushed). The hosts: the left side is A
behind NAT1 (or E, public, for "no NAT"), the right side C behind NAT2 (or B, public). B
runs the TURN relays (coturn, long-term credentials, one relay port each, two sets used in
turn so that an allocation just released is never asked for again at once).

The path each case must take (``target``): direct wherever a direct path can exist, relayed
where none can (symmetric against port restricted or symmetric; a double NAT counts as its
stricter NAT). How each case gets there (``mode``):
- one side public (``direct``): the NATed side initiates to the public one; it has a TURN
  server and ``relay = "auto"``, so the test also checks that no allocation is made when
  the direct path works;
- both behind NATs, or behind the same NAT, with a direct path possible (``mediated``):
  both register with a nattunnel mediation server on B (io/mediated.py), the connectivity
  checks choose the pair (host candidates behind the same NAT, server-reflexive ones
  across), and the tunnel must come up on it: each side's peer address is not B's. The 13
  with two NATs also give each side a TURN server (``relay = "auto"``): the tunnel comes
  up on the relay first (relayed candidates), then must move to the direct pair;
- no direct path possible (``relay``): mediated as well, each side with a TURN server and
  ``relay = "auto"``: its allocation's relayed address is a candidate in ME_CONNECT, the
  peer goes on the relay at once (relayed address to relayed address) while the direct
  pairs are checked, and stays there when they fail (io/mediated.py, "relay first").
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nattunnel.lab.coturn import Coturn, Relay
from nattunnel.lab.nattypes import (
    FULL_CONE,
    PORT_RESTRICTED_CONE,
    RESTRICTED_CONE,
    SYMMETRIC,
    NatLab,
    NatType,
)
from tests.lab.traversal_support import (
    LEFT_IN,
    RIGHT_IN,
    NodeProc,
    config,
    mediated_config,
    ping_ok,
    require,
    secrets,
    server_config,
    wait_for,
)

TYPES: dict[str, NatType | None] = {"none": None, "full": FULL_CONE,
                                    "restricted": RESTRICTED_CONE,
                                    "port-restricted": PORT_RESTRICTED_CONE,
                                    "symmetric": SYMMETRIC}
#: (server port, relay port) per side, two sets used in turn
TURN_SETS = (((3478, 50000), (3480, 50001)), ((3482, 50002), (3484, 50003)))


def target(left: str, right: str) -> str:
    """Direct unless a symmetric NAT faces a port restricted or symmetric one."""
    hard = {"port-restricted", "symmetric"}
    if (left == "symmetric" and right in hard) or (right == "symmetric" and left in hard):
        return "relay"
    return "direct"


@dataclass
class Case:
    name: str
    left: str  # host of the left side
    right: str
    target: str
    #: direct (one side public), mediated or relay
    mode: str
    #: the address the initiator reaches the other at (direct cases)
    endpoint: str | None = None
    initiator: str = "left"
    #: mediated: each side has a TURN server too (relay first, then direct)
    turn: bool = False

    @property
    def path(self) -> str:
        return "relay" if self.mode == "relay" else "direct"


@dataclass
class Result:
    case: Case
    seconds: float
    path: str


def _run(lab: NatLab, d: Path, case: Case, turn_set: int) -> Result:
    start = time.monotonic()
    b = lab.addr["b"]
    (lsrv, _), (rsrv, _) = TURN_SETS[turn_set]
    tag = "-" + re.sub(r"[^a-z0-9-]+", "_", case.name)
    if case.mode in ("mediated", "relay"):
        lturn, rturn = (f"{b}:{lsrv}", f"{b}:{rsrv}") if case.turn else (None, None)
        lcfg = mediated_config(d, "l", "r", LEFT_IN, RIGHT_IN, b, initiate=True, tag=tag,
                               turn=lturn)
        rcfg = mediated_config(d, "r", "l", RIGHT_IN, LEFT_IN, b, initiate=False, tag=tag,
                               turn=rturn)
    else:
        left_starts = case.initiator == "left"
        lcfg = config(d, "l", "r", LEFT_IN, RIGHT_IN,
                      endpoint=case.endpoint if left_starts else None,
                      initiate=left_starts, turn=f"{b}:{lsrv}", tag=tag)
        rcfg = config(d, "r", "l", RIGHT_IN, LEFT_IN,
                      endpoint=None if left_starts else case.endpoint,
                      initiate=not left_starts, turn=f"{b}:{rsrv}", tag=tag)
    right = NodeProc(lab, case.right, rcfg, {})
    if case.mode in ("mediated", "relay"):
        # the responder registered (and allocated: its relayed candidate) before the
        # initiator asks for it, so that no case waits for the server's callback
        wait_for("the responder's registration",
                 lambda: _ready(right.status(), case.turn), 10)
    left = NodeProc(lab, case.left, lcfg, {})
    try:
        return _check(lab, case, left, right, start)
    except AssertionError as e:  # the summary shows every case; the test fails at the end
        med = [n.status().get("mediation") for n in (left, right)]
        print(f"{case.name}: {e}\n  mediation: {med}\n  left: "
              f"{left.stderr.read_text()[-1500:]}\n  right: {right.stderr.read_text()[-1500:]}")
        return Result(case, time.monotonic() - start, f"FAILED ({str(e)[:60]})")
    finally:
        for n in (left, right):
            n.proc.terminate()
        for n in (left, right):
            n.stop()


def _ready(status: dict[str, object], relayed: bool) -> bool:
    med, turn = status.get("mediation"), status.get("turn")
    return (isinstance(med, dict) and bool(med.get("up"))
            and (not relayed or (isinstance(turn, dict) and bool(turn.get("relayed")))))


def _check(lab: NatLab, case: Case, left: NodeProc, right: NodeProc, start: float) -> Result:
    b = lab.addr["b"]
    if True:
        wait_for(f"{case.name}: ping left to right",
                 lambda: ping_ok(lab, case.left, RIGHT_IN, 1), 25)
        assert ping_ok(lab, case.right, LEFT_IN, 1), f"{case.name}: ping right to left"
        if case.turn and case.mode == "mediated":  # relay first: then the direct pair
            wait_for(f"{case.name}: the move to the direct path", lambda: all(
                n.peer(o)["path"]["kind"] == "direct" for n, o in ((left, "r"), (right, "l"))),
                10)
            assert ping_ok(lab, case.left, RIGHT_IN, 1), f"{case.name}: ping after the move"
        peers = [left.peer("r"), right.peer("l")]
        paths = [p["path"]["kind"] for p in peers]
        assert paths == [case.path] * 2, (case, paths)
        if case.mode == "direct":  # relay = "auto" made no allocation
            assert left.status()["turn"] is None and right.status()["turn"] is None, case
        elif case.mode == "mediated":  # straight between the two, not through B
            assert all(not str(p["endpoint"]).startswith(b + ":") for p in peers), peers
        else:
            assert all(p["path"]["channel_bound"] for p in peers), case
        return Result(case, time.monotonic() - start,
                      paths[0] if case.mode != "mediated" else "direct (mediated)")


def _two_nat_cases() -> list[tuple[str, str, Case]]:
    out = []
    for ln, lt in TYPES.items():
        for rn, rt in TYPES.items():
            left, right = ("a" if lt else "e"), ("c" if rt else "b")
            name = f"{ln}/{rn}"
            if lt and rt:
                goal = target(ln, rn)
                case = Case(name, left, right, goal, "mediated" if goal == "direct" else "relay",
                            turn=True)
            elif lt or not rt:  # the left side is NATed, or both are public: left starts
                case = Case(name, left, right, "direct", "direct", "198.18.0.2:4500"
                            if not rt else "", "left")
            else:
                case = Case(name, left, right, "direct", "direct", "198.18.0.3:4500",
                            "right")
            out.append((ln, rn, case))
    return out


def _coturns(lab: NatLab, d: Path) -> list[Coturn]:
    b = lab.addr["b"]
    return [Coturn(b, None, d, port=port, alt_port=port + 1, lab=lab, ns="b",
                   relay=Relay(min_port=relay, max_port=relay)).start()
            for pair in TURN_SETS for port, relay in pair]


def _mediator(lab: NatLab, d: Path) -> NodeProc:
    node = NodeProc(lab, "b", server_config(d, ["l", "r"]), {})
    node.status()  # running
    return node


def _matrix_two(d: Path, results: list[Result]) -> None:
    """The 25: the cases with a public side first, then the mediated ones (the mediation
    server on B, which the public-side cases use as a peer), then the relayed ones."""
    lab = NatLab("two", FULL_CONE)
    servers: list[Coturn] = []
    mediator: NodeProc | None = None
    try:
        servers = _coturns(lab, d)
        cases = _two_nat_cases()
        for mode in ("direct", "mediated", "relay"):
            if mode == "mediated":  # kept for the relayed cases
                mediator = _mediator(lab, d)
            for ln, rn, case in (c for c in cases if c[2].mode == mode):
                for router, kind in (("r1", TYPES[ln]), ("r2", TYPES[rn])):
                    if kind is not None:
                        lab.set_nat(router, kind)
                results.append(_run(lab, d, case, len(results) % 2))  # sets in turn
    finally:
        if mediator is not None:
            mediator.stop()
        for s in servers:
            s.stop()
        lab.close()


def _matrix_double(d: Path, results: list[Result]) -> None:
    """Double NAT on one side: A behind a full cone home NAT behind a port restricted CGN
    (as strict as a port restricted cone), against E (public) and against C behind NAT2."""
    lab = NatLab("stacked-two", {"home": FULL_CONE, "cgn": PORT_RESTRICTED_CONE,
                                 "r2": FULL_CONE})
    servers: list[Coturn] = []
    mediator: NodeProc | None = None
    try:
        servers = _coturns(lab, d)
        results.append(_run(lab, d, Case("double/none", "a", "b", "direct", "direct",
                                         "198.18.0.2:4500"), 0))
        mediator = _mediator(lab, d)
        lab.set_nat("r2", SYMMETRIC)
        results.append(_run(lab, d, Case("double/symmetric", "a", "c", "relay", "relay",
                                         turn=True), 1))
        lab.set_nat("r2", FULL_CONE)
        results.append(_run(lab, d, Case("double/full", "a", "c", "direct", "mediated"), 0))
    finally:
        if mediator is not None:
            mediator.stop()
        for s in servers:
            s.stop()
        lab.close()


def _matrix_same(d: Path, results: list[Result]) -> None:
    """Both behind the same NAT (port restricted), hairpinning on and off: mediated, direct
    (over the LAN, the host candidates, or through the NAT's hairpin)."""
    lab = NatLab("one", PORT_RESTRICTED_CONE)
    mediator: NodeProc | None = None
    try:
        mediator = _mediator(lab, d)
        for hairpin in (True, False):
            lab.set_nat("r", PORT_RESTRICTED_CONE.but(hairpin=hairpin))
            case = Case(f"same NAT, hairpin {'on' if hairpin else 'off'}", "a", "c", "direct",
                        "mediated")
            results.append(_run(lab, d, case, 0))
    finally:
        if mediator is not None:
            mediator.stop()
        lab.close()


@pytest.mark.root
def test_traversal_matrix(tmp_path: Path) -> None:
    require()
    secrets(tmp_path)
    results: list[Result] = []
    start = time.monotonic()
    _matrix_two(tmp_path, results)
    _matrix_double(tmp_path, results)
    _matrix_same(tmp_path, results)
    total = time.monotonic() - start
    print(f"\ntraversal matrix: {len(results)} cases in {total:.0f} s")
    for r in results:
        print(f"  {r.case.name:<32} {r.path:<18} {r.seconds:4.1f} s")
    assert len(results) == 25 + 3 + 2
    assert all(r.path.startswith(r.case.target) for r in results)
