"""Minimal reproductions of what the fuzz harnesses (fuzz/) found, one test per crash.

Each test names the harness and the failure signature it reported. The inputs are rebuilt
here with the project's API (no harness code), so that they keep reproducing the fault however
the harness's input format changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nattunnel.config import ConfigError, parse_config
from nattunnel.constants import DhGroup, EncrId, ExchangeType, NotifyType, PrfId, ProtocolId
from nattunnel.esp.suite import AES_GCM_256
from nattunnel.ike import crypto as kc
from nattunnel.ike.base import State
from nattunnel.ike.events import ChildUp
from nattunnel.ike.message import (
    KE,
    SA,
    Header,
    Nonce,
    Notify,
    TSi,
    TSr,
    decode_message,
    encode_message,
    esp_proposal,
    ike_proposal,
)
from nattunnel.ike.sa import IkeSa
from nattunnel.keys import write_key_file, write_psk_file
from tests.support.ike import A_ADDR, A_SEEN, B_ADDR, NET_A, NET_B, SaPair, configs, drain


def _handshake_until_auth():
    """(initiator in AUTH_SENT, responder in INIT_DONE, the IKE_AUTH request)."""
    a_cfg, b_cfg = configs()
    a = IkeSa(a_cfg, initiator=True, local=A_ADDR, remote=B_ADDR, now=0.0)
    a.start(0.0)
    init = a.datagrams_to_send()[0].data
    b = IkeSa(None, initiator=False, local=B_ADDR, remote=A_SEEN, now=0.0,
              lookup=lambda idi, idr: b_cfg)
    b.respond_init(decode_message(init), init, 0.0, b_cfg.ike_proposals)
    a.receive(b.datagrams_to_send()[0].data, 0.0)
    assert a.state is State.AUTH_SENT and b.state is State.INIT_DONE
    return a, b, a.datagrams_to_send()[0].data


def _established() -> SaPair:
    w = SaPair(*configs())
    w.a.start(0.0)
    w.pump()
    assert w.a.established and w.b is not None and w.b.established
    return w


def _peer_key(sa: IkeSa) -> kc.AeadSk:
    """The SK cipher the SA's peer seals with (what the harness encrypts fuzz payloads with)."""
    assert sa._alg is not None and sa._keys is not None
    return kc.AeadSk(sa._alg, sa._keys.sk_er if sa.initiator else sa._keys.sk_ei)


# --- fuzz_ike_sa: [ike_sa.unauthenticated_init_request] (known bug) ---------------------------
@pytest.mark.parametrize("state", ["init_done", "established"])
def test_clear_ike_sa_init_request_with_the_next_message_id_changes_nothing(state):
    """A 28-octet IKE_SA_INIT request header in the clear, with the message ID the SA expects
    next, was answered (INVALID_SYNTAX) and used up that ID, on a responder waiting for
    IKE_AUTH and on an established SA. Anyone on the path can make it from the clear SPIs."""
    if state == "init_done":
        _, sa, _ = _handshake_until_auth()
    else:
        sa = _established().b
    sa.datagrams_to_send()
    next_id = sa.message_ids[1]
    spoof = encode_message(Header.make(ExchangeType.IKE_SA_INIT, sa.spi_i, sa.spi_r,
                                       message_id=next_id, initiator=True), [])
    sa.receive(spoof, 1.0)
    assert sa.message_ids[1] == next_id
    assert sa.datagrams_to_send() == []


# --- fuzz_ike_sa: ValueError out of IkeSa.receive (known bug) ----------------------------------
@pytest.mark.parametrize("group, data", [
    (DhGroup.CURVE25519, b"\x09" * 31),  # "key exchange data has the wrong length"
    (DhGroup.CURVE25519, bytes(32)),  # a low-order point: the shared secret is all zero
    (DhGroup.ECP_256, b"\x05" * 64),  # not a point on the curve
])
def test_bad_ke_in_create_child_sa_does_not_raise(group, data):
    """An authenticated CREATE_CHILD_SA child rekey whose KE payload does not hold a usable
    public value raised ValueError out of IkeSa.receive (from KeyExchange.shared)."""
    w = _established()
    b = w.b
    child = b.children[0]
    payloads = [
        Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, child.spi_out.to_bytes(4, "big")),
        SA([esp_proposal(1, b"\x12\x34\x56\x78", encr=AES_GCM_256.transform_id,
                         key_length=AES_GCM_256.key_attr_bits, dh=group)]),
        Nonce(bytes(range(32))), KE(group, data), TSi.of(NET_A), TSr.of(NET_B),
    ]
    msg = encode_message(Header.make(ExchangeType.CREATE_CHILD_SA, b.spi_i, b.spi_r,
                                     message_id=b.message_ids[1], initiator=True),
                         payloads, sk=_peer_key(b))
    b.receive(msg, 1.0)
    assert b.state is State.ESTABLISHED
    (answer,) = b.datagrams_to_send()
    got = decode_message(answer.data, sk=_peer_key_out(b))
    assert got.header.is_response
    assert all(n.is_error for n in got.notifies()) and got.notifies()


@pytest.mark.parametrize("data", [b"\x09" * 31, bytes(32)])
def test_bad_ke_in_an_ike_sa_rekey_request_does_not_raise(data):
    """The same in an IKE SA rekey (CREATE_CHILD_SA with an IKE proposal): the fuzzer's input
    reached KeyExchange.shared through _on_rekey_ike."""
    w = _established()
    b = w.b
    payloads = [
        SA([ike_proposal(1, encr=EncrId.AES_GCM_16, prf=PrfId.HMAC_SHA2_256,
                         dh=DhGroup.CURVE25519, key_length=256, spi=bytes(range(1, 9)))]),
        Nonce(bytes(range(32))), KE(DhGroup.CURVE25519, data),
    ]
    msg = encode_message(Header.make(ExchangeType.CREATE_CHILD_SA, b.spi_i, b.spi_r,
                                     message_id=b.message_ids[1], initiator=True),
                         payloads, sk=_peer_key(b))
    b.receive(msg, 1.0)
    assert b.state is State.ESTABLISHED and not b.rekeyed
    (answer,) = b.datagrams_to_send()
    got = decode_message(answer.data, sk=_peer_key_out(b))
    assert got.header.is_response and got.notifies() and all(n.is_error
                                                               for n in got.notifies())


def _peer_key_out(sa: IkeSa) -> kc.AeadSk:
    assert sa._alg is not None and sa._keys is not None
    return kc.AeadSk(sa._alg, sa._keys.sk_ei if sa.initiator else sa._keys.sk_er)


# --- fuzz_ike_sa: [ike_sa.child_spi] (found by the harness; fixed in ecd9272) -----------------
@pytest.mark.parametrize("spi", [0, 1, 255])
def test_ike_auth_response_choosing_a_reserved_esp_spi_makes_no_child(spi):
    """The responder's IKE_AUTH answer (authenticated, valid AUTH) chose an ESP proposal with
    SPI 0: the initiator made a child with outbound SPI 0, which the manager then could not
    install (OutboundSA refuses SPIs 0-255, RFC 4303 section 2.1)."""
    a, b, auth_req = _handshake_until_auth()
    b.receive(auth_req, 0.0)
    resp = b.datagrams_to_send()[0].data
    msg = decode_message(resp, sk=_peer_key(a))
    for p in msg.payloads:
        if isinstance(p, SA):
            p.proposals[0].spi = spi.to_bytes(4, "big")
    a.receive(encode_message(msg.header, msg.payloads, sk=_peer_key(a)), 0.0)
    assert all(c.spi_out > 255 for c in a.children)
    assert not [e for e in drain(a) if isinstance(e, ChildUp) and e.spi_out <= 255]


@pytest.mark.parametrize("spi", [0, 255])
def test_ike_auth_request_offering_a_reserved_esp_spi_makes_no_child(spi):
    """The same from the initiator's side: its ESP offer with SPI 0 became the responder's
    outbound SPI."""
    _, b, auth_req = _handshake_until_auth()
    msg = decode_message(auth_req, sk=_peer_key(b))
    for p in msg.payloads:
        if isinstance(p, SA):
            for prop in p.proposals:
                prop.spi = spi.to_bytes(4, "big")
    b.receive(encode_message(msg.header, msg.payloads, sk=_peer_key(b)), 0.0)
    assert all(c.spi_out > 255 for c in b.children)
    assert not [e for e in drain(b) if isinstance(e, ChildUp) and e.spi_out <= 255]


# --- fuzz_config: UnicodeEncodeError / fromhex ValueError / embedded null (known bugs) --------
PSK_PEER = """
[interface]
kind = "tun"
addresses = ["198.18.100.1/24"]

[[peer]]
name = "b"
auth = "psk"
psk_file = {psk_file}
local_id = {local_id}
remote_id = "hostb"
endpoint = "198.18.0.2"
allowed_ips = ["198.18.100.2/32"]
"""

MANUAL_PEER = """
[interface]
addresses = ["198.18.100.1/24"]

[[peer]]
name = "b"
allowed_ips = ["198.18.100.2/32"]
spi_in = 0x1001
spi_out = 0x2001
key_in = {key_in}
key_out = "keys/out.key"
"""


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    write_psk_file(tmp_path / "keys" / "b.psk", b"a fuzz regression secret")
    write_key_file(tmp_path / "keys" / "in.key", bytes(range(36)))
    write_key_file(tmp_path / "keys" / "out.key", bytes(range(100, 136)))
    return tmp_path


@pytest.mark.parametrize("field, value", [
    # the inputs fuzz_config reported, reduced to the field that raised:
    ("local_id", '"keyid:#0011223"'),  # ValueError: non-hexadecimal number found in fromhex()
    ("local_id", '"keyid:#0x \\u0000"'),  # the same, from a 0x prefix
    ("remote_id", '"\\ufffdqdn:hostb.example"'),  # UnicodeEncodeError: 'ascii' codec
    ("remote_id", '"h\\u00f6st:b"'),  # a non-ASCII name with a colon: no FQDN check ran
])
def test_bad_identity_is_a_config_error(keydir, field, value):
    text = PSK_PEER.format(psk_file='"keys/b.psk"', local_id='"hosta"')
    text = text.replace(f'{field} = "{"hosta" if field == "local_id" else "hostb"}"',
                        f"{field} = {value}")
    assert value in text
    with pytest.raises(ConfigError):
        parse_config(text, keydir)


@pytest.mark.parametrize("field, value", [
    ("key_in", '"keys/in.key\\u0000\\u000c"'),  # ValueError: embedded null byte (os.open)
    ("psk_file", '"keys/b.psk\\u0000"'),
    ("psk_file", '"\\u0000"'),
])
def test_path_with_a_null_character_is_a_config_error(keydir, field, value):
    if field == "psk_file":
        text = PSK_PEER.format(psk_file=value, local_id='"hosta"')
    else:
        text = MANUAL_PEER.format(key_in=value)
    with pytest.raises(ConfigError):
        parse_config(text, keydir)


# --- fuzz_ike_manager: [ike_manager.unauthenticated_move] (fixed in 3d57e05) -----------------
@pytest.mark.parametrize("established", [False, True])
def test_forged_message_on_port_4500_does_not_move_the_ike_sa(established):
    """A mutated IKE_AUTH request (its ICV fails) with a live SA's SPIs, from another address
    on port 4500, moved the responder's SA there: its replies (and, established, DPD and
    ESP) went to whoever sent it."""
    from tests.support.ike import Net

    net = Net()
    net.a.initiate("b", 0.0)
    if established:
        net.deliver(0.0)
    else:  # IKE_SA_INIT only: B waits for IKE_AUTH
        for data, src, natt in net.take("a"):
            net.give("b", data, src, natt, 0.0)
    (sa,) = net.b.sas.values()
    assert sa.state is (State.ESTABLISHED if established else State.INIT_DONE)
    before = sa.remote
    forged = encode_message(Header.make(ExchangeType.IKE_AUTH, sa.spi_i, sa.spi_r,
                                        message_id=sa.message_ids[1], initiator=True),
                            [Notify(NotifyType.INITIAL_CONTACT)])
    # an SK payload of garbage instead of the clear Notify: the ICV cannot verify
    forged = forged[:16] + bytes([46]) + forged[17:28] + bytes([41, 0, 0, 40]) + bytes(36)
    forged = forged[:24] + len(forged).to_bytes(4, "big") + forged[28:]
    net.give("b", forged, ("203.0.113.66", 4500), True, 1.0)
    assert sa.remote == before
