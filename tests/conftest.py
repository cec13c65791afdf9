"""Shared pytest setup.

Tests marked ``root`` need root and real Linux networking (network namespaces, TUN, nftables,
strongSwan). Without root they are skipped, so that a developer's plain ``pytest`` runs, unless
``NATTUNNEL_REQUIRE_ROOT=1`` is set (CI sets it): then a skip would hide a broken lab, so it
fails instead.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ROOT = os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if "root" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, TUN)"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Under NATTUNNEL_REQUIRE_ROOT=1 a skipped root test is a failure, whatever skipped it.
    if (REQUIRE_ROOT and report.skipped and "root" in report.keywords
            and not hasattr(report, "wasxfail")):
        report.outcome = "failed"
        report.longrepr = f"root test skipped under NATTUNNEL_REQUIRE_ROOT=1: {report.longrepr}"
