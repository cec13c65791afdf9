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
stricter NAT). What is built today decides how each case gets there (``today``):
- one side public: direct (the NATed side initiates; it has a TURN server and
  ``relay = "auto"``, so the test also checks that no allocation is made when the direct
  path works);
- both behind the same NAT: direct, to the other's LAN address (its host candidate);
- both behind NATs: through the relay (``relay = "always"``, each side its allocation):
  the direct path needs the rendezvous (mediation, issue 13.1-2), so until it lands the
  cases whose target is direct run relayed, and the summary printed at the end says which.
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
    ping_ok,
    require,
    secrets,
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
    today: str
    #: the address the initiator reaches the other at (direct cases)
    endpoint: str | None = None
    initiator: str = "left"


@dataclass
class Result:
    case: Case
    seconds: float
    path: str


def _run(lab: NatLab, d: Path, case: Case, turn_set: int) -> Result:
    start = time.monotonic()
    b = lab.addr["b"]
    (lsrv, lrel), (rsrv, rrel) = TURN_SETS[turn_set]
    tag = "-" + re.sub(r"[^a-z0-9-]+", "_", case.name)
    if case.today == "relay":
        lcfg = config(d, "l", "r", LEFT_IN, RIGHT_IN, endpoint=f"{b}:{rrel}", initiate=True,
                      relay="always", turn=f"{b}:{lsrv}", tag=tag)
        rcfg = config(d, "r", "l", RIGHT_IN, LEFT_IN, endpoint=f"{b}:{lrel}",
                      initiate=False, relay="always", turn=f"{b}:{rsrv}", tag=tag)
    else:
        left_starts = case.initiator == "left"
        lcfg = config(d, "l", "r", LEFT_IN, RIGHT_IN,
                      endpoint=case.endpoint if left_starts else None,
                      initiate=left_starts, turn=f"{b}:{lsrv}", tag=tag)
        rcfg = config(d, "r", "l", RIGHT_IN, LEFT_IN,
                      endpoint=None if left_starts else case.endpoint,
                      initiate=not left_starts, turn=f"{b}:{rsrv}", tag=tag)
    right = NodeProc(lab, case.right, rcfg, {})
    left = NodeProc(lab, case.left, lcfg, {})
    try:
        wait_for(f"{case.name}: ping left to right",
                 lambda: ping_ok(lab, case.left, RIGHT_IN, 1), 25)
        assert ping_ok(lab, case.right, LEFT_IN, 1), f"{case.name}: ping right to left"
        paths = [n.peer()["path"]["kind"] for n in (left, right)]
        assert paths == [case.today] * 2, (case, paths)
        if case.today == "direct":  # relay = "auto" made no allocation
            assert left.status()["turn"] is None and right.status()["turn"] is None, case
        else:
            assert all(n.peer()["path"]["channel_bound"] for n in (left, right)), case
        return Result(case, time.monotonic() - start, paths[0])
    finally:
        for n in (left, right):
            n.proc.terminate()
        for n in (left, right):
            n.stop()


def _two_nat_cases() -> list[tuple[str, str, Case]]:
    out = []
    for ln, lt in TYPES.items():
        for rn, rt in TYPES.items():
            left, right = ("a" if lt else "e"), ("c" if rt else "b")
            name = f"{ln}/{rn}"
            if lt and rt:
                case = Case(name, left, right, target(ln, rn), "relay")
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


def _matrix_two(d: Path, results: list[Result]) -> None:
    lab = NatLab("two", FULL_CONE)
    servers: list[Coturn] = []
    try:
        servers = _coturns(lab, d)
        for i, (ln, rn, case) in enumerate(_two_nat_cases()):
            if TYPES[ln] is not None:
                lab.set_nat("r1", TYPES[ln] or FULL_CONE)
            if TYPES[rn] is not None:
                lab.set_nat("r2", TYPES[rn] or FULL_CONE)
            results.append(_run(lab, d, case, i % 2))
    finally:
        for s in servers:
            s.stop()
        lab.close()


def _matrix_double(d: Path, results: list[Result]) -> None:
    """Double NAT on one side: A behind a full cone home NAT behind a port restricted CGN
    (as strict as a port restricted cone), against E (public) and against C behind NAT2."""
    lab = NatLab("stacked-two", {"home": FULL_CONE, "cgn": PORT_RESTRICTED_CONE,
                                 "r2": FULL_CONE})
    servers: list[Coturn] = []
    try:
        servers = _coturns(lab, d)
        cases = [Case("double/none", "a", "b", "direct", "direct", "198.18.0.2:4500"),
                 Case("double/full", "a", "c", "direct", "relay"),
                 Case("double/symmetric", "a", "c", "relay", "relay")]
        for i, case in enumerate(cases):
            lab.set_nat("r2", SYMMETRIC if case.name.endswith("symmetric") else FULL_CONE)
            results.append(_run(lab, d, case, i % 2))
    finally:
        for s in servers:
            s.stop()
        lab.close()


def _matrix_same(d: Path, results: list[Result]) -> None:
    """Both behind the same NAT (port restricted), hairpinning on and off: direct over the
    LAN, to the other's host address."""
    lab = NatLab("one", PORT_RESTRICTED_CONE)
    try:
        for hairpin in (True, False):
            lab.set_nat("r", PORT_RESTRICTED_CONE.but(hairpin=hairpin))
            case = Case(f"same NAT, hairpin {'on' if hairpin else 'off'}", "a", "c", "direct",
                        "direct", f"{lab.addr['c']}:4500")
            results.append(_run(lab, d, case, 0))
    finally:
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
        note = "" if r.path == r.case.target else "  (target direct: needs mediation)"
        print(f"  {r.case.name:<32} {r.path:<7} {r.seconds:4.1f} s{note}")
    assert len(results) == 25 + 3 + 2
    assert all(r.case.target == "direct" or r.path == "relay" for r in results)
