"""The NAT lab fixture for root-only tests; the lab itself is ``nattunnel.lab.netns``.

Using it from a test module (``tests/`` is a package; ``pytest_plugins`` is only allowed in
the top-level conftest, so import the fixture instead)::

    import pytest
    from tests.support.lab import Lab, lab_fixture  # noqa: F401  (registers the ``lab`` fixture)

    @pytest.mark.root
    def test_something(lab: Lab) -> None:
        b = lab.udp_peer("b", port=4500)
        a = lab.udp_peer("a", port=4500)
        a.send("198.18.0.2", 4500, b"hi")
        assert b.recv(2.0) == (b"hi", "198.18.0.1", 4500)

Options go through indirect parametrisation::

    @pytest.mark.parametrize("lab", [{"with_c": True, "with_e": True}], indirect=True)

Skipping: without root, or when ``ip``/``nft``/``conntrack``/``sysctl`` is missing, the
fixture skips with the reason; with ``NATTUNNEL_REQUIRE_ROOT=1`` it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from nattunnel.lab.netns import (  # re-exported for the tests
    HOST_ADDR,
    REQUIRED_TOOLS,
    ROUTER_LAN,
    ROUTER_WAN,
    ConntrackEntry,
    Lab,
    LabError,
    UdpPeer,
    lab_problems,
    parse_conntrack,
    run,
)

__all__ = [
    "HOST_ADDR",
    "ROUTER_LAN",
    "ROUTER_WAN",
    "ConntrackEntry",
    "Lab",
    "LabError",
    "UdpPeer",
    "lab",
    "lab_fixture",
    "parse_conntrack",
    "require_lab_tools",
    "run",
]


def require_lab_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> None:
    """Skip (or fail, if NATTUNNEL_REQUIRE_ROOT=1) unless root and every tool is present."""
    problems = lab_problems(tools)
    if not problems:
        return
    reason = "NAT lab unavailable: " + "; ".join(problems)
    if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
        pytest.fail(reason + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(name="lab")
def lab_fixture(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A fresh NAT lab per test. Options via indirect parametrisation (Lab kwargs)."""
    require_lab_tools()
    opts: dict[str, Any] = getattr(request, "param", None) or {}
    the_lab = Lab(**opts)
    request.addfinalizer(the_lab.close)
    yield the_lab


# ``from tests.support.lab import lab`` works too (the same fixture object); ruff then reports
# F811 for every ``lab`` parameter, which importing ``lab_fixture`` avoids.
lab = lab_fixture
