"""IKE fragmentation (RFC 7383) with strongSwan's charon, both directions, through a router that
drops every IP fragment (as many firewalls and carrier NATs do).

The IKE_AUTH messages are made larger than the 1500-octet path: nattunnel's side of the child
SA is 101 prefixes (the real inner /32 and 100 more), so its TSi (or TSr) and the peer's
narrowed answer carry 101 traffic selectors, about 1.9 KB. Whole, such a message goes as IP
fragments, which the router drops, and the IKE SA never comes up; with fragmentation on both
sides it goes as IKE fragments that each fit the path: nattunnel's of 1280 octets (its
default), charon's of 576 (``charon.fragment_size``, so that it sends four). Each test runs
with fragmentation on (the tunnel comes up and carries pings; both logs show fragments sent
and reassembled) and off (it does not come up, and the router counted the IP fragments it
dropped).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nattunnel.lab.strongswan import Charon, CharonError, SwanConn
from tests.interop.test_interop_strongswan import (
    ID,
    INNER,
    PUBLIC_B,
    established,
    ping,
    require_strongswan,
    setup_keys,
    start_nattunnel,
    wait,
)
from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)

#: the 100 extra prefixes of nattunnel's side (198.18.101.0/24, inside the lab's range)
EXTRA = [f"198.18.101.{i}/32" for i in range(100)]
CHARON_FRAGMENT_SIZE = 576


def drop_ip_fragments(lab: Lab) -> None:
    """In the router: drop every IPv4 fragment (first or later) before conntrack's defrag
    (priority -400) would put them together, counted."""
    table = f"{lab.prefix}frag"
    lab.exec(lab.router, "nft", "-f", "-", input=(
        f"table ip {table} {{\n"
        "  chain pre {\n"
        "    type filter hook prerouting priority -500; policy accept;\n"
        "    ip frag-off & 0x3fff != 0 counter drop\n"
        "  }\n"
        "}\n"))


def fragments_dropped(lab: Lab) -> int:
    out = lab.exec(lab.router, "nft", "list", "table", "ip", f"{lab.prefix}frag").stdout
    m = re.search(r"counter packets (\d+)", out)
    assert m, out
    return int(m.group(1))


def nattunnel_extra(inner: str, on: bool) -> str:
    """nattunnel's [[peer]] lines: 101 local prefixes, fragmentation on or off."""
    ts = ", ".join(f'"{n}"' for n in [f"{inner}/32", *EXTRA])
    return f"local_ts = [{ts}]\nfragmentation = {'true' if on else 'false'}\n"


def charon_settings() -> dict[str, str]:
    return {"fragment_size": str(CHARON_FRAGMENT_SIZE)}


def check_fragments_used(nt_log: str, charon_log: str) -> None:
    # nattunnel sent IKE_AUTH in fragments and reassembled charon's
    assert re.search(r"generating IKE_AUTH (request|response) 1 \[.*\] to .* in [2-9] "
                     r"fragments", nt_log), nt_log[-4000:]
    assert re.search(r"reassembled (request|response) 1 from [2-9] fragments", nt_log)
    # charon did the same (its own words)
    assert re.search(r"splitting IKE message \(\d+ bytes\) into [3-9] fragments", charon_log)
    assert "reassembled fragmented IKE message" in charon_log


@pytest.mark.root
@pytest.mark.parametrize("on", [True, False], ids=["fragmentation", "no-fragmentation"])
def test_nattunnel_initiates_to_charon_through_a_fragment_dropping_router(
        lab: Lab, tmp_path: Path, on: bool) -> None:
    require_strongswan()
    drop_ip_fragments(lab)
    kw = setup_keys(tmp_path, "psk")
    conn = SwanConn(name="c", local_addrs=PUBLIC_B, remote_addrs="%any", local_id=ID["b"],
                    remote_id=ID["a"], local_ts=f"{INNER['b']}/32",
                    remote_ts=f"{INNER['a']}/32,198.18.101.0/24", auth="psk",
                    psk=str(kw["psk"]), extra={"fragmentation": "yes"})
    charon = Charon.start(lab, "b", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{INNER['b']}/32"], settings=charon_settings())
    nt = start_nattunnel(lab, "a", tmp_path, "psk", initiate=True,
                         extra=nattunnel_extra(INNER["a"], on))
    try:
        if on:
            assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-4000:]
            assert ping(lab, "a", "b") and ping(lab, "b", "a")
            check_fragments_used(nt.log(), charon.log())
            assert "Traceback" not in nt.log()
        else:
            assert not wait(lambda: established(charon), 8)
            assert fragments_dropped(lab) > 0
            assert "in 2 fragments" not in nt.log()
            assert not ping(lab, "a", "b")
    finally:
        charon.stop()
        lab.stop(nt.proc)


@pytest.mark.root
@pytest.mark.parametrize("on", [True, False], ids=["fragmentation", "no-fragmentation"])
def test_charon_initiates_to_nattunnel_through_a_fragment_dropping_router(
        lab: Lab, tmp_path: Path, on: bool) -> None:
    require_strongswan()
    drop_ip_fragments(lab)
    kw = setup_keys(tmp_path, "psk")
    # nattunnel answers IKEV2_FRAGMENTATION_SUPPORTED before it knows the peer: "off" here
    # is charon's fragmentation = no (and nattunnel's for its own messages)
    nt = start_nattunnel(lab, "b", tmp_path, "psk", initiate=False,
                         extra=nattunnel_extra(INNER["b"], on))
    conn = SwanConn(name="c", local_addrs="%any", remote_addrs=PUBLIC_B, local_id=ID["a"],
                    remote_id=ID["b"], local_ts=f"{INNER['a']}/32",
                    remote_ts=",".join([f"{INNER['b']}/32", *EXTRA]), auth="psk",
                    psk=str(kw["psk"]), extra={"fragmentation": "yes" if on else "no"})
    charon = Charon.start(lab, "a", tmp_path / "charon", conn=conn,
                          inner_addrs=[f"{INNER['a']}/32"], settings=charon_settings())
    try:
        if on:
            charon.initiate("c")
            assert wait(lambda: established(charon), 15), nt.log() + charon.log()[-4000:]
            assert ping(lab, "a", "b") and ping(lab, "b", "a")
            check_fragments_used(nt.log(), charon.log())
            assert "Traceback" not in nt.log()
        else:
            with pytest.raises(CharonError):  # swanctl --initiate gives up
                charon.initiate("c", timeout=8)
            assert not established(charon)
            assert fragments_dropped(lab) > 0
            assert not ping(lab, "a", "b")
    finally:
        charon.stop()
        lab.stop(nt.proc)
