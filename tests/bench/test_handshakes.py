"""`nattunnel bench handshakes`: the in-process part (no root) completes every handshake of
each case and reports sane JSON; the lab part (root) runs charon and nattunnel up as the
responder against the same generator. Rates are not asserted (benchmarks are for people to
read), only that the work was done and measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from nattunnel.bench.handshakes import CASES, run_case
from nattunnel.lab.strongswan import strongswan_problems
from tests.support.lab import require_lab_tools


def test_in_process_json_is_sane():
    r = subprocess.run(
        [sys.executable, "-m", "nattunnel", "bench", "handshakes", "-n", "12",
         "--memory-sas", "50", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "lab" not in doc
    cases = doc["in_process"]["cases"]
    assert [c["case"] for c in cases] == [c[0] for c in CASES]
    for c in cases:
        assert c["handshakes"] == 12 and c["failed"] == 0, c
        assert c["per_second"] > 0 and c["cpu_per_handshake_us"] > 0
        assert c["responder_wall_s"] > 0 and c["initiator_wall_s"] > 0
        # with cookies every IKE_SA_INIT is answered with a COOKIE first: three requests
        assert c["requests_per_handshake"] == (3.0 if c["cookies"] else 2.0)
        assert c["cookies_sent"] == (12 if c["cookies"] else 0)
    mem = doc["in_process"]["memory"]
    assert mem["sas"] == 50 and mem["established"] == 50
    # an IKE SA with its child SA holds kilobytes of heap, not nothing and not megabytes
    assert 1024 < mem["heap_per_sa"] < 1 << 20


def test_case_without_cookies_sends_none():
    res = run_case("psk-x25519", "psk", "x25519", False, 3)
    assert (res.handshakes, res.failed, res.cookies_sent) == (3, 0, 0)


@pytest.mark.root
def test_lab_charon_and_nattunnel_side_by_side():
    require_lab_tools()
    problems = strongswan_problems()
    if problems:
        reason = "charon unavailable: " + "; ".join(problems)
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail(reason + " [NATTUNNEL_REQUIRE_ROOT=1]", pytrace=False)
        pytest.skip(reason)
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "nattunnel", "bench", "handshakes", "--lab-only",
         "--lab-n", "30", "--window", "8", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 40
    doc = json.loads(r.stdout)
    assert "in_process" not in doc
    rows = doc["lab"]["rows"]
    assert [(x["responder"], x["auth"]) for x in rows] == [
        ("charon", "psk"), ("charon", "ed25519"), ("nattunnel", "psk"),
        ("nattunnel", "ed25519")]
    for x in rows:
        assert x["status"] == "ok", x
        assert x["handshakes"] == 30 and x["failed"] == 0, x
        assert x["per_second"] > 0 and x["responder_cpu_s"] >= 0
    # PSK: one identity per SA, both keep every SA; Ed25519: one identity for all, charon
    # keeps them (unique = never), nattunnel keeps the last (INITIAL_CONTACT)
    assert [x["held"] for x in rows] == [30, 30, 30, 1]
    assert set(doc["lab"]["ratio"]) == {"psk", "ed25519"}
