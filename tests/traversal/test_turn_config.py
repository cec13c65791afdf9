"""The TURN relay's configuration (``turn = {...}``, a peer's ``relay``) and how ``show``
reports a relayed peer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nattunnel.config import ConfigError, load_config
from nattunnel.config.model import Config
from nattunnel.control.text import peer_block
from nattunnel.keys import write_psk_file

PEER = ('[[peer]]\nname = "b"\nauth = "psk"\npsk_file = "k.psk"\nlocal_id = "a"\n'
        'remote_id = "b"\nallowed_ips = ["198.18.100.2/32"]\n'
        'local_ts = ["198.18.100.1/32"]\nendpoint = "192.0.2.1:50000"\n')
TURN = 'turn = { server = "192.0.2.1", username = "alice", password_file = "turn.pw" }\n'


def _load(tmp: Path, top: str, peer_extra: str = "", mode: int = 0o600) -> Config:
    write_psk_file(tmp / "k.psk", b"correct horse battery staple", force=True)
    pw = tmp / "turn.pw"
    if not pw.exists():
        write_psk_file(pw, b"s3cret", force=True)
    os.chmod(pw, mode)
    path = tmp / "c.toml"
    path.write_text('listen = ["0.0.0.0:4500"]\nike_port = 0\n' + top
                    + '[interface]\nkind = "inprocess"\n' + PEER + peer_extra)
    return load_config(path)


def test_turn_table_relay_modes_and_the_mtu(tmp_path: Path) -> None:
    c = _load(tmp_path, TURN, 'relay = "always"\n')
    assert c.turn is not None and c.turn.server == ("192.0.2.1", 3478)
    assert c.turn.username == "alice" and c.turn.password == "s3cret"
    assert "s3cret" not in repr(c.turn) and c.peers[0].relay == "always"
    plain = _load(tmp_path, "")
    assert plain.turn is None and plain.peers[0].relay == "auto"
    # the ChannelData header: the derived inner MTU is 4 octets smaller with a relay
    assert c.interface.mtu == plain.interface.mtu - 4
    assert _load(tmp_path, TURN, 'relay = "never"\n').peers[0].relay == "never"


@pytest.mark.parametrize(("top", "extra", "field"), [
    ("", 'relay = "always"\n', "peer[0].relay"),
    (TURN, 'relay = "sometimes"\n', "peer[0].relay"),
    ('turn = { server = "192.0.2.1:3478", username = "alice" }\n', "", "turn.password_file"),
    ('turn = { server = "192.0.2.1:3478", username = "", password_file = "turn.pw" }\n', "",
     "turn.username"),
    ('turn = { server = "nowhere:x", username = "a", password_file = "turn.pw" }\n', "",
     "turn.server"),
    ('turn = { server = "192.0.2.1", username = "a", password_file = "turn.pw", x = 1 }\n',
     "", "turn.x"),
])
def test_bad_turn_settings_name_the_field(tmp_path: Path, top: str, extra: str,
                                          field: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, top, extra)
    assert field in str(e.value)


def test_password_file_must_be_private(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, TURN, mode=0o644)
    assert "turn.password_file" in str(e.value) and "0644" in str(e.value)
    assert "s3cret" not in str(e.value)


def test_show_text_names_the_relay() -> None:
    p = {"name": "b", "state": "up", "kind": "ike", "endpoint": "192.0.2.1:50001",
         "nat": None, "allowed_ips": [], "tx_packets": 0, "tx_bytes": 0, "rx_packets": 0,
         "rx_bytes": 0, "last_received": None, "last_handshake": None, "last_error": None,
         "keepalive": {"on": False, "interval": 20, "sent": 0, "received": 0},
         "rebinds": 0, "ike_rekeys": 0, "child_rekeys": 0, "retransmits": 0, "drops": {},
         "ike_sas": [],
         "path": {"kind": "relay", "server": "192.0.2.1:3478", "relayed": "192.0.2.1:50000",
                  "channel": "0x4000", "channel_bound": True}}
    text = "\n".join(peer_block(p))
    assert ("path: relay via 192.0.2.1:3478 (relayed address 192.0.2.1:50000, channel "
            "0x4000 bound)") in text
    p["path"] = {"kind": "direct"}
    assert "path: relay" not in "\n".join(peer_block(p))
