"""contrib/systemd/nattunnel@.service: systemd's own checker accepts it, and its ExecStart is a
command line ``nattunnel up`` takes. systemd-analyze comes with the ``systemd`` package (in
tests/debian-packages.txt); under NATTUNNEL_REQUIRE_ROOT=1 (CI) its absence is a failure."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from nattunnel.cli.main import build_parser

UNIT = Path(__file__).resolve().parents[1] / "contrib" / "systemd" / "nattunnel@.service"
INSTALLED = "/usr/local/bin/nattunnel"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keys as written (CapabilityBoundingSet)
    cp.read_string(UNIT.read_text())
    return cp


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail("systemd-analyze is missing (the systemd package)")
        pytest.skip("systemd-analyze is not installed")
    exe = shutil.which("nattunnel")
    assert exe is not None, "nattunnel is not installed (pip install -e .)"
    # the unit as installed: ExecStart pointing at where this machine has nattunnel
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, exe))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_exec_start_is_a_command_line_up_takes() -> None:
    service = _unit()["Service"]
    argv = shlex.split(service["ExecStart"].replace("%i", "example"))
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert args.config == "/etc/nattunnel/example.toml"
    assert str(args.stats) == "/run/nattunnel/example.json"
    assert service["Type"] == "simple"
    # ExecReload speaks to the control socket a config of that name gets by default
    argv = shlex.split(service["ExecReload"].replace("%i", "example"))
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert args.command == "reload" and args.socket == "/run/nattunnel/example.sock"
    from nattunnel.config.parser import SYSTEM_CONTROL_DIR

    assert Path(args.socket) == SYSTEM_CONTROL_DIR / "example.sock"
    # only the capabilities the TUN device and port 500 need
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN",
                                                              "CAP_NET_BIND_SERVICE"}
    assert service["DeviceAllow"] == "/dev/net/tun rw"
