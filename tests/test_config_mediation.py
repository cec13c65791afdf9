"""The IKEv2 mediation keys of the configuration (docs/config.md, "Mediation"): a [[peer]]
with ``mediation = true`` (the connection to the server, or a registering peer on a
server), ``mediated_by``/``mediation_peer``, and ``mediation_server``; and what the
application builds from them (``app.build_mediation``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nattunnel.app import Controller, build_ike, build_mediation, build_tunnel
from nattunnel.config import ConfigError, parse_config
from nattunnel.ike.config import Identity
from nattunnel.io.mediated import MediatedControl
from nattunnel.keys import write_psk_file

HEAD = '''listen = ["0.0.0.0:4500"]
[interface]
kind = "inprocess"
addresses = ["198.18.120.1/24"]
'''
MED = '''[[peer]]
name = "mediator"
mediation = true
endpoint = "198.18.0.2"
auth = "psk"
psk_file = "k.psk"
local_id = "hosta"
remote_id = "mediator"
'''
PEER = '''[[peer]]
name = "c"
mediated_by = "mediator"
mediation_peer = "hostc"
auth = "psk"
psk_file = "k.psk"
local_id = "hosta"
remote_id = "fqdn:hostc.example"
allowed_ips = ["198.18.120.3/32"]
initiate = true
'''


@pytest.fixture(name="d")
def _d(tmp_path: Path) -> Path:
    write_psk_file(tmp_path / "k.psk", b"correct horse battery staple", force=True)
    return tmp_path


def test_a_mediated_peer(d: Path) -> None:
    cfg = parse_config(HEAD + MED + PEER, d)
    med, c = cfg.peers
    assert med.mediation and med.allowed_ips == () and med.endpoint == ("198.18.0.2", 500)
    assert c.mediated_by == "mediator" and c.initiate and c.endpoint is None
    assert c.mediation_peer == Identity.parse("hostc")
    assert not cfg.mediation_server
    tunnel = build_tunnel(cfg, 0.0)
    assert set(tunnel.peers) == {"c"}  # the mediation connection is no tunnel peer
    ike = build_ike(cfg, tunnel, 0.0)
    assert ike is not None and set(ike.peers) == {"c"}
    control = build_mediation(cfg, Controller(tunnel, ike))
    assert isinstance(control, MediatedControl) and control.client is not None
    assert control.client.peers == {"c": Identity.parse("hostc")}
    assert control.client.server == ("198.18.0.2", 500)
    assert control.initiate == ("c",) and control.server is None
    # its first question: our address towards the server (the host candidate)
    ev = control.next_event()
    assert ev is not None and ev.remote == ("198.18.0.2", 500)


def test_a_mediation_server(d: Path) -> None:
    server = MED.replace('endpoint = "198.18.0.2"\n', "").replace(
        'local_id = "hosta"\nremote_id = "mediator"', 'local_id = "mediator"\nremote_id = "hosta"')
    cfg = parse_config("mediation_server = true\n" + HEAD + server, d)
    assert cfg.mediation_server and cfg.peers[0].mediation
    tunnel = build_tunnel(cfg, 0.0)
    control = build_mediation(cfg, Controller(tunnel, build_ike(cfg, tunnel, 0.0)))
    assert isinstance(control, MediatedControl) and control.server is not None
    assert control.ike_port == 500  # port-500 sockets even without IKE peers of its own
    assert control.server.lookup(Identity.parse("hosta"), None) is not None
    assert control.server.lookup(Identity.parse("eve"), None) is None


def test_no_mediation_leaves_the_controller(d: Path) -> None:
    cfg = parse_config(HEAD + PEER.replace('mediated_by = "mediator"\nmediation_peer = '
                                           '"hostc"\n', 'endpoint = "198.18.0.3"\n'), d)
    tunnel = build_tunnel(cfg, 0.0)
    controller = Controller(tunnel, build_ike(cfg, tunnel, 0.0))
    assert build_mediation(cfg, controller) is controller


@pytest.mark.parametrize(("text", "field", "fragment"), [
    (MED + PEER.replace('"mediator"', '"nobody"'), "peer[1].mediated_by", "not the name"),
    (PEER.replace('mediated_by = "mediator"\n', "").replace("initiate = true",
                                                            "initiate = false"),
     "peer[0].mediation_peer", "needs mediated_by"),
    (MED + PEER.replace("initiate = true", 'endpoint = "198.18.0.3"'), "peer[1].mediated_by",
     "no endpoint"),
    (MED.replace("mediation = true", "mediation = 1"), "peer[0].mediation", "true or false"),
    (MED + PEER.replace('mediation_peer = "hostc"', 'mediation_peer = ""'),
     "peer[1].mediation_peer", ""),
], ids=["unknown-connection", "peer-without-mediated-by", "with-endpoint", "not-bool",
        "empty-identity"])
def test_bad_mediation_keys(d: Path, text: str, field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + text, d)
    assert field in str(info.value) and fragment in str(info.value)


def test_bad_mediation_server(d: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('mediation_server = "yes"\n' + HEAD, d)
    assert "mediation_server" in str(info.value)
