"""The command line: `nattunnel bench crypto` runs and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nattunnel.cli.main import main

REPO = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize("argv, module", [
    (["up", "x.toml"], "up"),
    (["keygen", "k"], "keygen"),
    (["pubkey", "k"], "pubkey"),
    (["demo"], "demo"),
    (["bench", "crypto"], "bench"),
    (["bench", "loopback"], "bench"),
    (["bench", "netns"], "bench"),
    (["bench", "attack"], "bench"),
    (["bench", "scale"], "bench"),
])
def test_every_command_dispatches_through_set_defaults(argv, module):
    from nattunnel.cli.main import build_parser

    func = build_parser().parse_args(argv).func
    assert callable(func) and func.__module__ == f"nattunnel.cli.{module}"


def test_help_says_what_nattunnel_and_up_are():
    top = subprocess.run([sys.executable, "-m", "nattunnel", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "userspace IPsec tunnel" in top and "command line" not in top
    for command in ("up", "keygen", "pubkey", "demo", "bench"):
        assert command in top
    up = subprocess.run([sys.executable, "-m", "nattunnel", "up", "--help"],
                        capture_output=True, text=True, timeout=60, check=True).stdout
    assert "CONFIG" in up and "--stats" in up and "manual SAs" not in up


def test_parser_loads_neither_lab_nor_bench():
    """Building the parser (and so `nattunnel up`) imports no lab or benchmark module."""
    code = ("import sys; from nattunnel.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('nattunnel.lab', "
            "'nattunnel.bench'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_up_refuses_a_missing_configuration_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nattunnel", "up", str(tmp_path / "no.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("nattunnel up: ") and "cannot read" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_version_is_the_package_version():
    """`nattunnel --version` (issue 11): the package's version, as pyproject.toml has it."""
    import tomllib

    import nattunnel

    want = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert nattunnel.__version__ == want
    r = subprocess.run([sys.executable, "-m", "nattunnel", "--version"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and r.stdout == f"nattunnel {want}\n" and r.stderr == ""


def _help(*argv: str) -> str:
    return subprocess.run([sys.executable, "-m", "nattunnel", *argv, "--help"],
                          capture_output=True, text=True, timeout=60, check=True,
                          cwd=REPO).stdout


def test_help_texts_lead_to_ike_peers():
    """The help texts are current (issue 11): `up` and `keygen` lead to IKE peers and the
    IKE examples, which exist; manual SAs are named only as what they are."""
    up = " ".join(_help("up").split())
    assert "IKEv2 peers" in up and "docs/examples/ike-a.toml" in up and "static keys" not in up
    for example in ("ike-a.toml", "ike-b.toml"):
        assert (REPO / "docs" / "examples" / example).is_file()
    keygen = " ".join(_help("keygen").split())
    assert keygen.index("psk:") < keygen.index("esp (the default")
    assert "--type psk keys/a-b.psk" in keygen and "no forward secrecy" in keygen
    assert "not the .pub" in " ".join(_help("pubkey").split())
    assert "--version" in _help()


def test_readme_two_real_hosts_uses_ike_peers():
    """README's "Two real hosts" used manual SAs (issue 11): it uses the IKE examples, and
    every command it shows parses."""
    from nattunnel.cli.main import build_parser

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Two real hosts"):]
    section = section[:section.index("\n## ")]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["nattunnel", "keygen"], ["nattunnel", "up"],
                                         ["nattunnel", "up"]]
    for c in commands:
        build_parser().parse_args(c[1:])
    assert commands[0][2:4] == ["--type", "psk"]
    assert {c[2] for c in commands[1:]} == {"ike-a.toml", "ike-b.toml"}
    assert "docs/examples/ike-a.toml" in section and "--suite" not in block
    psk = [line for line in (REPO / "docs/examples/ike-a.toml").read_text().splitlines()
           if line.startswith("psk_file")]
    assert psk == [f'psk_file = "{commands[0][4]}"']
