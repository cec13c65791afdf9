"""The IKE fragmentation settings of a [[peer]] (docs/config.md): ``fragmentation`` and
``fragment_size``, their defaults, and a bad value as a ConfigError naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from nattunnel.config import ConfigError, load_config
from nattunnel.ike.config import IkeConfig
from nattunnel.keys import write_ed25519_pair, write_psk_file

PEER = """
[interface]
kind = "tun"
addresses = ["198.18.100.1/24"]

[[peer]]
name = "b"
auth = "psk"
psk_file = "keys/b.psk"
local_id = "hosta"
remote_id = "hostb"
endpoint = "198.18.0.2"
allowed_ips = ["198.18.100.2/32"]
"""


@pytest.fixture
def cfgdir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir(mode=0o700)
    write_psk_file(tmp_path / "keys" / "b.psk", b"correct horse battery staple")
    write_ed25519_pair(tmp_path / "keys" / "a.key", tmp_path / "keys" / "a.pub")
    return tmp_path


def load(cfgdir: Path, extra: str) -> IkeConfig:
    path = cfgdir / "tunnel.toml"
    path.write_text(PEER + extra)
    (peer,) = load_config(path).peers
    assert peer.ike is not None
    return peer.ike


def test_defaults_are_on_and_1280(cfgdir: Path) -> None:
    ike = load(cfgdir, "")
    assert ike.fragmentation and ike.fragment_size == 1280


def test_set(cfgdir: Path) -> None:
    ike = load(cfgdir, "fragmentation = false\nfragment_size = 576\n")
    assert not ike.fragmentation and ike.fragment_size == 576


@pytest.mark.parametrize(("extra", "field", "says"), [
    ("fragmentation = \"yes\"\n", "peer[0].fragmentation", "true or false"),
    ("fragment_size = 100\n", "peer[0].fragment_size", "out of range"),
    ("fragment_size = 70000\n", "peer[0].fragment_size", "128..65535"),
    ("fragment_size = 1280.5\n", "peer[0].fragment_size", "an integer"),
])
def test_bad_values(cfgdir: Path, extra: str, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(cfgdir, extra)
    assert e.value.field == field and says in str(e.value)


def test_a_manual_peer_has_no_fragmentation(cfgdir: Path) -> None:
    path = cfgdir / "tunnel.toml"
    path.write_text(PEER.replace('auth = "psk"\npsk_file = "keys/b.psk"\nlocal_id = "hosta"\n'
                                 'remote_id = "hostb"\n', "") + "fragmentation = true\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.field == "peer[0].fragmentation" and "IKEv2 field" in str(e.value)
