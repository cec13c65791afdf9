"""The command line: `nattunnel bench crypto` runs and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nattunnel.cli.main import main


def test_bench_crypto_json(capsys):
    assert main(["bench", "crypto", "--sizes", "64,1400", "--suite", "aes128gcm16",
                 "--count", "500", "--rounds", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["machine"]) == {"cpu", "cores", "kernel", "python", "cryptography"}
    rows = {(r["size"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {(s, v) for s in (64, 1400)
                         for v in ("aead-seal", "encap", "encap-in-place", "aead-open", "decap",
                                   "decap-run")}
    for r in rows.values():
        assert r["pps"] > 0 and r["suite"] == "aes128gcm16"
    assert rows[(1400, "aead-seal")]["ratio"] == 1.0


def test_bench_crypto_table_from_the_installed_script():
    out = subprocess.run(
        [sys.executable, "-m", "nattunnel", "bench", "crypto", "--sizes", "64",
         "--suite", "chacha20poly1305", "--count", "300", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "chacha20poly1305" in out and "decap" in out and "ratio" in out


@pytest.mark.parametrize("argv", [
    ["bench", "crypto", "--sizes", "10"],
    ["bench", "crypto", "--sizes", "a,b"],
    ["bench", "crypto", "--suite", "des"],
])
def test_bad_arguments_are_refused_clearly(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_demo_runs_without_root_and_reports_ok():
    """`nattunnel demo`: keepalives hold the emulated NAT's mapping, rebinding is followed."""
    out = subprocess.run(
        [sys.executable, "-m", "nattunnel", "demo", "--nat-timeout", "0.5", "--seconds", "0.5"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "B -> A still delivered" in out
    assert "without keepalives: mapping expired" in out
    assert "B now sends to" in out
    assert "report: tunnel OK" in out
    assert "packets/s" in out


def test_bench_loopback_json(capsys):
    assert main(["bench", "loopback", "--sizes", "200", "--seconds", "0.3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["results"]
    assert row["size"] == 200 and row["suite"] == "aes256gcm16"
    assert row["pps"] > 0 and row["packets"] > 0
