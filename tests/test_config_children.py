"""A peer's ``[[peer.children]]`` (several child SAs, swanctl's ``children { ... }``; docs/
config.md, "Several subnets"): what it reads, its defaults, and its errors, each naming the
field."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from nattunnel.config import ConfigError, parse_config
from nattunnel.ike.config import ChildConfig


def _psk(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "k.psk", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"a secret of some length\n")
    os.close(fd)


BASE = """
[interface]
kind = "tun"
addresses = ["198.18.100.1/32"]
[[peer]]
name = "gw"
auth = "psk"
psk_file = "k.psk"
local_id = "a"
remote_id = "gw"
endpoint = "198.18.0.2"
allowed_ips = ["198.18.50.0/24", "198.18.60.0/24"]
"""

TWO = BASE + """
[[peer.children]]
name = "n50"
remote_ts = ["198.18.50.0/24"]
[[peer.children]]
name = "n60"
local_ts = ["198.18.100.0/24"]
remote_ts = "198.18.60.0/24"
"""


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_children_are_read_with_the_peers_defaults(tmp_path: Path) -> None:
    _psk(tmp_path)
    (pc,) = parse_config(TWO, tmp_path).peers
    assert pc.ike is not None
    assert pc.ike.children == (
        ChildConfig("n50", (net("198.18.100.1/32"),), (net("198.18.50.0/24"),)),
        ChildConfig("n60", (net("198.18.100.0/24"),), (net("198.18.60.0/24"),)),
    )
    assert pc.ike.child_configs() == pc.ike.children


def test_without_children_one_child_has_the_peers_selectors(tmp_path: Path) -> None:
    _psk(tmp_path)
    (pc,) = parse_config(BASE, tmp_path).peers
    assert pc.ike is not None and pc.ike.children == ()
    (only,) = pc.ike.child_configs()
    assert only == ChildConfig("gw", pc.ike.local_ts, pc.ike.remote_ts)
    assert only.remote_ts == (net("198.18.50.0/24"), net("198.18.60.0/24"))


@pytest.mark.parametrize(("extra", "field", "words"), [
    ("children = []\n", "peer[0].children", "is empty"),
    ("children = [\"n50\"]\n", "peer[0].children", "expected an array of tables"),
    ("[[peer.children]]\nremote_ts = [\"198.18.50.0/24\"]\n", "peer[0].children[0].name",
     "missing required key"),
    ("[[peer.children]]\nname = \"a b\"\n", "peer[0].children[0].name",
     "not a valid child name"),
    ("[[peer.children]]\nname = \"x\"\nremote_ts = [\"198.18.50.0/24\"]\n"
     "[[peer.children]]\nname = \"x\"\nremote_ts = [\"198.18.60.0/24\"]\n",
     "peer[0].children[1].name", "names another child SA"),
    ("[[peer.children]]\nname = \"x\"\nremote_ts = [\"198.18.70.0/24\"]\n",
     "peer[0].children[0].remote_ts[0]", "lies outside the peer's allowed_ips"),
    ("[[peer.children]]\nname = \"x\"\nremote_ts = [\"198.18.50.0/23\"]\n",
     "peer[0].children[0].remote_ts[0]", "lies outside the peer's allowed_ips"),
    ("[[peer.children]]\nname = \"x\"\nremote_ts = []\n", "peer[0].children[0].remote_ts",
     "is empty"),
    ("[[peer.children]]\nname = \"x\"\nremote_ts = [\"198.18.50.1/24\"]\n",
     "peer[0].children[0].remote_ts[0]", ""),
    ("[[peer.children]]\nname = \"x\"\nesp_proposals = \"aes256gcm16\"\n",
     "peer[0].children[0].esp_proposals", ""),
    ("[[peer.children]]\nname = \"x\"\n[[peer.children]]\nname = \"y\"\n",
     "peer[0].children[1].remote_ts", "the same traffic selectors as child 'x'"),
])
def test_bad_children_name_the_field(tmp_path: Path, extra: str, field: str,
                                     words: str) -> None:
    _psk(tmp_path)
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + extra, tmp_path)
    assert e.value.field == field, str(e.value)
    assert words in str(e.value)


def test_too_many_children(tmp_path: Path) -> None:
    _psk(tmp_path)
    extra = "".join(f"[[peer.children]]\nname = \"c{i}\"\nlocal_ts = [\"198.18.100.{i}/32\"]\n"
                    for i in range(17))
    with pytest.raises(ConfigError) as e:
        parse_config(BASE + extra, tmp_path)
    assert e.value.field == "peer[0].children" and "at most 16" in str(e.value)


def test_a_virtual_ip_client_has_no_child_local_ts(tmp_path: Path) -> None:
    _psk(tmp_path)
    text = BASE.replace('addresses = ["198.18.100.1/32"]\n', "") + (
        "vips = [\"0.0.0.0\"]\n[[peer.children]]\nname = \"x\"\n"
        "local_ts = [\"198.18.100.0/24\"]\n")
    with pytest.raises(ConfigError) as e:
        parse_config(text, tmp_path)
    assert e.value.field == "peer[0].children[0].local_ts" and "virtual IP" in str(e.value)


def test_a_mediation_connection_has_no_children(tmp_path: Path) -> None:
    _psk(tmp_path)
    text = BASE.replace('allowed_ips = ["198.18.50.0/24", "198.18.60.0/24"]\n',
                        "mediation = true\n") + "[[peer.children]]\nname = \"x\"\n"
    with pytest.raises(ConfigError) as e:
        parse_config(text, tmp_path)
    assert e.value.field == "peer[0].children", str(e.value)
