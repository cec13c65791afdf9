"""MOBIKE (RFC 4555) interop with strongSwan charon (kernel-libipsec, ``mobike = yes``) on
real namespaces (root), in the lab of tests/support/mobike_lab.py where host A changes
networks: from behind NAT 1 to behind NAT 2, and from behind a NAT to no NAT.

- nattunnel on A initiates to charon on B and moves: its address watcher (io/netwatch.py)
  sees the route change and sends UPDATE_SA_ADDRESSES; charon follows.
- charon on A initiates to nattunnel on B and moves: nattunnel follows charon's update
  (after a return routability check of the new address).
- two nattunnel peers, A moving.

Each move happens while A pings B over the tunnel at 10 per second: the pings lost per move
are printed (``MOBIKE move ...: N of M pings lost``; the issue's target is at most 1) and the
IKE SA's SPIs are the same after every move (no new IKE SA). Between two nattunnel peers the
child SA's SPIs are the same too. charon 5.9.8 with kernel-libipsec rekeys its child SA
after every address update (its userspace ESP cannot move an SA: it starts a
CREATE_CHILD_SA rekey right after "remote endpoint changed", docs/interop-strongswan.md,
"MOBIKE"): against charon the test checks that the one child SA after a move is that
rekey's (one rekey per move, the IKE SA unchanged), not a new IKE SA or a second child SA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nattunnel.lab.strongswan import Charon, SwanConn
from tests.interop.test_interop_strongswan import (
    ID,
    INNER,
    PUBLIC_B,
    established,
    require_strongswan,
    setup_keys,
    start_nattunnel,
    wait,
)
from tests.support.lab import require_lab_tools
from tests.support.mobike_lab import SEEN, MobileLab, ping_during
from tests.support.tunnel_lab import Node

pytestmark = pytest.mark.root

#: pings at 10 per second lost in one move, at most (the issue's target is 1; the rest is
#: slack for a loaded CI machine: each figure is printed)
MAX_LOST = 3
MOVES = ("nat2", "public", "nat1")



@pytest.fixture(name="mlab")
def mlab_fixture() -> Iterator[MobileLab]:
    require_lab_tools()
    require_strongswan()
    lab = MobileLab()
    try:
        yield lab
    finally:
        lab.close()


def _nt_ike(node: Node) -> dict[str, Any]:
    sas = [sa for sa in node.stats()["ike"]["ike_sas"] if sa["state"] == "established"]
    assert len(sas) == 1, sas
    return sas[0]


def _charon_ike(ch: Charon) -> tuple[int, int]:
    """The IKE SA's SPIs; charon has that one IKE SA with one installed child SA."""
    sas = ch.list_sas()
    assert len(sas) == 1, sas
    sa = sas[0]
    assert len([c for c in sa.children if c.state == "INSTALLED"]) == 1, sa
    return sa.spi_i, sa.spi_r


def _rekeys_by_peer(node: Node) -> int:
    return node.log().count("(rekey)")


def _report(who: str, to: str, sent: int, lost: int) -> None:
    print(f"MOBIKE move ({who}) to {to}: {lost} of {sent} pings lost at 10/s")


def test_nattunnel_moves_and_charon_follows(mlab: MobileLab, tmp_path: Path) -> None:
    kw = setup_keys(tmp_path, "psk")
    conn = SwanConn(name="c", local_addrs=PUBLIC_B, remote_addrs="%any", local_id=ID["b"],
                    remote_id=ID["a"], local_ts=f"{INNER['b']}/32",
                    remote_ts=f"{INNER['a']}/32", **kw)  # type: ignore[arg-type]
    charon = Charon.start(mlab, "b", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{INNER['b']}/32"])
    nt = start_nattunnel(mlab, "a", tmp_path, "psk", initiate=True)
    assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-3000:]
    sa = charon.ike_sa("c")
    assert sa is not None and sa.remote_host == SEEN["nat1"] and sa.nat_remote
    assert "MOBIKE negotiated" in nt.log()
    # A's other interfaces are down and its tunnel address is its own: none announced
    assert "got additional MOBIKE peer address" not in charon.log()
    spis = _charon_ike(charon)
    for n, to in enumerate(MOVES, 1):
        r = ping_during(mlab, "a", INNER["b"], lambda to=to: mlab.move(to))
        _report("nattunnel initiator, charon responder", to, r.sent, r.lost)
        assert wait(lambda to=to: (s := charon.ike_sa("c")) is not None
                    and s.remote_host == SEEN[to], 10), nt.log()[-5000:] + charon.log()[-3000:]
        sa = charon.ike_sa("c")
        assert sa is not None and sa.nat_remote == (to != "public")
        assert _charon_ike(charon) == spis
        assert wait(lambda n=n: _rekeys_by_peer(nt) == n, 5), nt.log()[-5000:]
        assert len(_nt_ike(nt)["children"]) == 1
        assert r.lost <= MAX_LOST, (r, nt.log()[-5000:])
    assert "(an address or route changed)" in nt.log()  # the watcher moved A
    assert _nt_ike(nt)["path_updates"] >= len(MOVES)
    assert "Traceback" not in nt.log()
    charon.stop()
    mlab.stop(nt.proc)


def test_charon_moves_and_nattunnel_follows(mlab: MobileLab, tmp_path: Path) -> None:
    kw = setup_keys(tmp_path, "psk")
    nt = start_nattunnel(mlab, "b", tmp_path, "psk", initiate=False)
    conn = SwanConn(name="c", local_addrs="%any", remote_addrs=PUBLIC_B, local_id=ID["a"],
                    remote_id=ID["b"], local_ts=f"{INNER['a']}/32",
                    remote_ts=f"{INNER['b']}/32", **kw)  # type: ignore[arg-type]
    charon = Charon.start(mlab, "a", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{INNER['a']}/32"])
    charon.initiate("c")
    assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-3000:]
    spis = _charon_ike(charon)
    assert _nt_ike(nt)["remote"].startswith(SEEN["nat1"] + ":")
    for n, to in enumerate(MOVES, 1):
        r = ping_during(mlab, "a", INNER["b"], lambda to=to: mlab.move(to))
        _report("charon initiator, nattunnel responder", to, r.sent, r.lost)
        assert wait(lambda to=to: _nt_ike(nt)["remote"].startswith(SEEN[to] + ":"), 10), \
            nt.log()[-5000:] + charon.log()[-3000:]
        ike = _nt_ike(nt)
        # charon with kernel-libipsec needs UDP encapsulation, so its NAT detection hashes
        # always claim a NAT (swanctl's nat-fake): nattunnel sees the peer behind one
        assert ike["remote_behind_nat"] and ike["natt"], ike
        assert (s := charon.ike_sa("c")) is not None and s.nat_local == (to != "public")
        assert s.nat_fake or to != "public"
        assert wait(lambda to=to: nt.stats()["peers"]["a"]["addr"][0] == SEEN[to], 5)
        assert _charon_ike(charon) == spis
        assert wait(lambda n=n: _rekeys_by_peer(nt) == n, 5), nt.log()[-5000:]
        assert len(_nt_ike(nt)["children"]) == 1
        assert r.lost <= MAX_LOST, (r, nt.log()[-5000:], charon.log()[-3000:])
    assert "MOBIKE: the IKE SA and its child SAs now use" in nt.log()
    assert "Traceback" not in nt.log()
    charon.stop()
    mlab.stop(nt.proc)


def test_two_nattunnel_peers_move_with_mobike(mlab: MobileLab, tmp_path: Path) -> None:
    wa, wb = tmp_path / "a", tmp_path / "b"
    for w in (wa, wb):
        w.mkdir()
        setup_keys(w, "psk")
    b = start_nattunnel(mlab, "b", wb, "psk", initiate=False)
    a = start_nattunnel(mlab, "a", wa, "psk", initiate=True)
    assert wait(lambda: bool(b.stats()["peers"]["a"].get("addr")) and any(
        sa["state"] == "established" and sa["children"]
        for sa in b.stats()["ike"]["ike_sas"]), 15), a.log() + b.log()
    children_a, children_b = _nt_ike(a)["children"], _nt_ike(b)["children"]
    for to in MOVES:
        r = ping_during(mlab, "a", INNER["b"], lambda to=to: mlab.move(to))
        _report("nattunnel to nattunnel", to, r.sent, r.lost)
        assert wait(lambda to=to: _nt_ike(b)["remote"].startswith(SEEN[to] + ":"), 10), \
            a.log()[-5000:] + b.log()[-5000:]
        assert _nt_ike(a)["children"] == children_a and _nt_ike(b)["children"] == children_b
        assert _nt_ike(a)["local_behind_nat"] == (to != "public")
        assert r.lost <= MAX_LOST, (r, a.log()[-5000:], b.log()[-5000:])
    # the address watcher moved A, nobody asked
    assert a.log().count("MOBIKE: updating the SA addresses from") >= len(MOVES)
    assert "(an address or route changed)" in a.log()
    assert _nt_ike(a)["mobike"] and _nt_ike(a)["path_updates"] >= len(MOVES)
    assert _nt_ike(b)["path_updates"] >= len(MOVES)
    assert _nt_ike(b)["peer_addresses"] == []  # one network at a time
    assert "Traceback" not in a.log() + b.log()
    mlab.stop(a.proc)
    mlab.stop(b.proc)
