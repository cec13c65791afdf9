"""Root: ``nattunnel netcheck`` behind every lab NAT type (nattunnel/lab/nattypes.py) agrees
with coturn's own ``turnutils_natdiscovery`` run from the same host against the same coturn
(in host B, on 198.18.0.2 and 198.18.0.12, RFC 5780): mapping, filtering, hairpinning, and
the mapping lifetime; and both say what the NAT was built to do.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nattunnel.lab.coturn import Coturn, NatDiscovery, coturn_problems, natdiscovery
from nattunnel.lab.nattypes import (
    AD,
    APD,
    FULL_CONE,
    PORT_RESTRICTED_CONE,
    RESTRICTED_CONE,
    SYMMETRIC,
    NatLab,
    NatType,
)
from tests.support.lab import require_lab_tools

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
SERVER = "198.18.0.2"

#: name -> (topology, the routers' NAT types, what netcheck must find: mapping, filtering,
#: hairpinning, port kept)
TYPES: dict[str, tuple[str, dict[str, NatType], tuple[str, str, bool, bool]]] = {
    "full cone": ("one", {"r": FULL_CONE}, ("endpoint-independent",
                                            "endpoint-independent", False, False)),
    "restricted cone": ("one", {"r": RESTRICTED_CONE}, ("endpoint-independent",
                                                        "address-dependent", False, False)),
    "port restricted cone": ("one", {"r": PORT_RESTRICTED_CONE},
                             ("endpoint-independent", "address-and-port-dependent", False,
                              False)),
    "address-dependent mapping": ("one", {"r": NatType(AD, APD)},
                                  ("address-dependent", "address-and-port-dependent", False,
                                   False)),
    "symmetric": ("one", {"r": SYMMETRIC}, ("address-and-port-dependent",
                                            "address-and-port-dependent", False, False)),
    "full cone, hairpinning, port kept": (
        "one", {"r": FULL_CONE.but(hairpin=True, preserve_port=True)},
        ("endpoint-independent", "endpoint-independent", True, True)),
    "port restricted cone, hairpinning": (
        "one", {"r": PORT_RESTRICTED_CONE.but(hairpin=True)},
        ("endpoint-independent", "address-and-port-dependent", True, False)),
    "symmetric, hairpinning": ("one", {"r": SYMMETRIC.but(hairpin=True)},
                               ("address-and-port-dependent", "address-and-port-dependent",
                                True, False)),
    "stacked: full cone behind a port restricted CGN": (
        "stacked", {"home": FULL_CONE, "cgn": PORT_RESTRICTED_CONE},
        ("endpoint-independent", "address-and-port-dependent", False, False)),
    "stacked: restricted cone behind a symmetric CGN": (
        "stacked", {"home": RESTRICTED_CONE, "cgn": SYMMETRIC},
        ("address-and-port-dependent", "address-and-port-dependent", False, False)),
}


def _require_coturn() -> None:
    problems = coturn_problems()
    if problems:
        reason = "coturn unavailable: " + problems[0]
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail(reason + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
        pytest.skip(reason)


class Site:
    """A NatLab of one topology with coturn running in B on two addresses."""

    def __init__(self, topology: str, directory: Path, udp_timeout: float = 120.0) -> None:
        roles = {"one": ["r"], "stacked": ["home", "cgn"]}[topology]
        self.lab = NatLab(topology, {r: PORT_RESTRICTED_CONE for r in roles},
                          with_c=False, with_e=False, udp_timeout=udp_timeout)
        try:
            other = self.lab.add_address("b")
            self.coturn = Coturn(SERVER, other, directory, lab=self.lab, ns="b").start()
        except BaseException:
            self.lab.close()
            raise

    def set_nat(self, nats: dict[str, NatType]) -> None:
        for role, nat in nats.items():
            self.lab.set_nat(role, nat)

    def netcheck(self, *args: str, timeout: float = 30.0) -> dict[str, Any]:
        cp = self.lab.exec("a", "env", f"PYTHONPATH={REPO}", sys.executable, "-m",
                           "nattunnel", "netcheck", SERVER, "--json", *args, timeout=timeout,
                           check=False)
        assert cp.returncode == 0, cp.stderr
        result: dict[str, Any] = json.loads(cp.stdout)
        return result

    def natdiscovery(self, *options: str, timeout: float = 60.0) -> NatDiscovery:
        return natdiscovery(SERVER, *options, lab=self.lab, ns="a", timeout=timeout)

    def close(self) -> None:
        try:
            self.coturn.stop()
        finally:
            self.lab.close()


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    require_lab_tools()
    _require_coturn()
    built: dict[str, Site] = {}
    try:
        yield built
    finally:
        for site in built.values():
            site.close()


def _site(sites: dict[str, Site], topology: str, tmp: Path) -> Site:
    if topology not in sites:
        # one topology's lab at a time: a finished one goes before the next is built
        for name in list(sites):
            sites.pop(name).close()
        sites[topology] = Site(topology, tmp)
    return sites[topology]


@pytest.mark.parametrize("name", list(TYPES))
def test_netcheck_agrees_with_natdiscovery(name: str, sites: dict[str, Site],
                                           tmp_path: Path) -> None:
    topology, nats, (mapping, filtering, hairpin, kept) = TYPES[name]
    site = _site(sites, topology, tmp_path)
    site.set_nat(nats)
    r = site.netcheck()
    nd = site.natdiscovery("-m", "-f", "-H")
    seen = (r["mapping"], r["filtering"], r["hairpinning"])
    assert seen == (nd.mapping, nd.filtering, nd.hairpinning), nd.output
    assert seen == (mapping, filtering, hairpin)
    assert r["udp"] is True and r["nat"] is True and r["port_kept"] is kept
    assert r["servers"][0]["other_address"] == f"{site.coturn.other}:3479"
    assert r["servers"][0]["reflexive"].startswith("198.18.0.1:")
    assert r["elapsed"] < 5.0
    assert r["notes"] == []


def test_mapping_lifetime_agrees_with_natdiscovery(tmp_path: Path) -> None:
    require_lab_tools()
    _require_coturn()
    site = Site("one", tmp_path, udp_timeout=5)
    try:
        site.set_nat({"r": PORT_RESTRICTED_CONE})
        r = site.netcheck("--lifetime", "--lifetime-max", "10")
        # the mapping lives 5 s after its last packet: the 4 s wait found it, the 8 s one not
        assert (r["lifetime_min"], r["lifetime_max"]) == (4.0, 8.0)
        assert r["mapping"] == "endpoint-independent"
        alive = site.natdiscovery("-t", "-T", "4")
        dead = site.natdiscovery("-t", "-T", "8")
        assert (alive.lifetime_alive, dead.lifetime_alive) == (True, False), (
            alive.output + dead.output)
    finally:
        site.close()
