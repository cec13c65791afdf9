"""What the status, ``nattunnel show`` and the metrics tell about IKE fragmentation, the
peer's authentication and IKE messages by exchange type: two real endpoints on loopback
whose IKE_AUTH messages go in fragments (``fragment_size = 200``), and a forged fragment
that B drops (its ICV does not verify)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from nattunnel.constants import NON_ESP_MARKER, ExchangeType, PayloadType
from nattunnel.control import metrics
from nattunnel.control.metrics import MetricsServer
from nattunnel.control.text import render
from nattunnel.keys import write_psk_file
from tests.control.test_metrics import Node, load, samples, scrape, value, wait_for

COMMON = """listen = ["127.0.0.1:0"]
ike_port = 0
[interface]
kind = "inprocess"
"""

B_CONFIG = COMMON + """[[peer]]
name = "alpha"
auth = "psk"
psk_file = "alpha.psk"
local_id = "hostb"
remote_id = "hosta"
allowed_ips = ["198.18.100.1/32"]
local_ts = ["198.18.100.2/32"]
fragment_size = 200
"""

A_CONFIG = COMMON + """[[peer]]
name = "bravo"
auth = "psk"
psk_file = "alpha.psk"
local_id = "hosta"
remote_id = "hostb"
endpoint = "127.0.0.1:{port}"
allowed_ips = ["198.18.100.2/32"]
local_ts = ["198.18.100.1/32"]
fragment_size = 200
"""


@pytest.fixture
async def pair(tmp_path):
    write_psk_file(tmp_path / "alpha.psk", b"correct horse battery staple")
    loop = asyncio.get_running_loop()
    b = Node(load(tmp_path, "b.toml", B_CONFIG), loop.time())
    await b.endpoint.start()
    port = b.endpoint.local_addresses()[0][1]
    a = Node(load(tmp_path, "a.toml", A_CONFIG.format(port=port)), loop.time())
    await a.endpoint.start()
    try:
        await wait_for(lambda: a.status()["peers"]["bravo"]["state"] == "up"
                       and b.status()["peers"]["alpha"]["state"] == "up")
        yield a, b
    finally:
        a.endpoint.close()
        b.endpoint.close()


def _forged_fragment(spi_i: str, spi_r: str) -> bytes:
    """An SKF message (RFC 7383 section 2.5) of A's next request with a made-up body: its
    ICV cannot verify."""
    body = bytes(range(64))
    skf = struct.pack("!BBHHH", 0, 0, 8 + len(body), 1, 1) + body
    header = (bytes.fromhex(spi_i) + bytes.fromhex(spi_r)
              + struct.pack("!BBBBII", PayloadType.SKF, 0x20, ExchangeType.INFORMATIONAL,
                            0x08, 2, 28 + len(skf)))
    return NON_ESP_MARKER + header + skf


async def test_fragmentation_auth_and_exchanges_in_status_text_and_metrics(pair):
    a, b = pair
    (sa_a,) = a.status()["peers"]["bravo"]["ike_sas"]
    frag_a = sa_a["fragmentation"]
    assert frag_a["negotiated"] and frag_a["messages_sent"] == 1  # A's IKE_AUTH request
    assert frag_a["fragments_sent"] >= 2 and frag_a["reassembled"] == 1  # and B's answer
    assert sa_a["peer_auth"] == "psk" and sa_a["peer_id"] == "hostb"

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(_forged_fragment(sa_a["spi_i"], sa_a["spi_r"]),
                 b.endpoint.local_addresses()[0][:2])
    await wait_for(lambda: b.status()["peers"]["alpha"]["ike_sas"][0]["fragmentation"]
                   ["drops"].get("integrity") == 1)
    status = b.status()
    (sa_b,) = status["peers"]["alpha"]["ike_sas"]
    assert sa_b["fragmentation"]["reassembled"] == 1 and sa_b["peer_auth"] == "psk"
    assert sa_b["peer_id"] == "hosta"
    ex = status["ike"]["exchanges"]
    assert ex["rx"]["IKE_SA_INIT"] == ex["tx"]["IKE_SA_INIT"] == 1
    # the fragments of each IKE_AUTH message, and the forged INFORMATIONAL one
    assert ex["rx"]["IKE_AUTH"] >= 2 and ex["tx"]["IKE_AUTH"] >= 2
    assert ex["rx"]["INFORMATIONAL"] == 1

    text = render(status)
    assert "    fragmentation: 1 message(s) sent in " in text
    assert "1 reassembled; drops: integrity 1" in text

    server = MetricsServer(("127.0.0.1", 0), b.status)
    await server.start()
    try:
        got = samples((await scrape(server))[2])
    finally:
        server.close()
    assert value(got, "nattunnel_peer_ike_fragment_drops_total", peer="alpha",
                 reason="integrity") == 1
    assert value(got, "nattunnel_peer_ike_fragments_reassembled_total", peer="alpha") == 1
    assert value(got, "nattunnel_ike_messages_total", direction="rx",
                 exchange="IKE_SA_INIT") == 1
    assert value(got, "nattunnel_ike_messages_total", direction="tx",
                 exchange="IKE_AUTH") == ex["tx"]["IKE_AUTH"]
    assert value(got, "nattunnel_ike_messages_total", direction="rx",
                 exchange="INFORMATIONAL") == 1


def test_fragment_and_exchange_labels_are_bounded():
    peers = {"p": {"kind": "ike", "ike_sas": [
        {"fragmentation": {"reassembled": 2, "drops": {"integrity": 1, "made_up": 3}}},
        {"fragmentation": {"reassembled": 1, "drops": {"integrity": 2}}}]}}
    got = {(f.name, s.labels.get("reason")): s.value
           for f in metrics.peer_metrics(peers) for s in f.samples
           if "fragment" in f.name}
    assert got == {("nattunnel_peer_ike_fragment_drops", "integrity"): 3,
                   ("nattunnel_peer_ike_fragment_drops", "other"): 3,
                   ("nattunnel_peer_ike_fragments_reassembled", None): 3}
    (family,) = [f for f in metrics.ike_metrics(
        {"sas": 0, "exchanges": {"rx": {"IKE_AUTH": 2, "bogus": 1}, "tx": {}}})
        if f.name == "nattunnel_ike_messages"]
    assert {(s.labels["direction"], s.labels["exchange"]): s.value
            for s in family.samples} == {("rx", "IKE_AUTH"): 2, ("rx", "other"): 1}
