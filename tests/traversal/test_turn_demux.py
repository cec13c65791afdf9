"""The tunnel's rule for the TURN relay on the NAT-T socket (docs/wire-format.md, "TURN relay
on port 4500"): a datagram from a TURN server is never ESP, even when its first word (a
ChannelData header, 0x4000-0x4FFF and a length) is one of our inbound SPIs; the peer data in
it is handled in place as if it came from the peer; ESP from anywhere else is untouched."""

from __future__ import annotations

import ipaddress
import os
import struct

from nattunnel.esp.drop import DropReason
from nattunnel.esp.sa import InboundSA, OutboundSA
from nattunnel.esp.suite import AES_GCM_128
from nattunnel.tunnel.core import CONSUMED, Tunnel
from tests.support.packets import A_INNER, B_INNER, ip4

SERVER = ("192.0.2.1", 3478)
PEER = ("192.0.2.1", 50001)  # the peer's relayed address: on the server's host
OTHER = ("203.0.113.5", 4500)


def test_channel_data_from_the_server_is_never_esp() -> None:
    inner = ip4(A_INNER, B_INNER, 100)
    key = os.urandom(20)
    probe = bytearray(2048)
    n = OutboundSA(0x40000001, AES_GCM_128, key).encapsulate_into(inner, memoryview(probe))
    spi = 0x40000000 | n  # so that the ChannelData header (0x4000, n) equals the SPI
    out = OutboundSA(spi, AES_GCM_128, key)
    esp = bytearray(2048)
    m = out.encapsulate_into(inner, memoryview(esp))
    assert m == n
    t = Tunnel()
    peer = t.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")], addr=PEER)
    t.install_inbound(peer, InboundSA(spi, AES_GCM_128, key))
    seen: list[bytes] = []

    def handler(data: memoryview, addr: tuple[str, int], now: float
                ) -> tuple[tuple[str, int], int, int] | None:
        seen.append(bytes(data))
        if data[0] & 0xC0 == 0x40:
            length = struct.unpack_from("!H", data, 2)[0]
            return PEER, 4, 4 + length
        return None  # an answer to a request: consumed

    t.relay_servers.add(SERVER)
    t.relay_handler = handler
    framed = struct.pack("!HH", 0x4000, m) + bytes(esp[:m])
    assert struct.unpack_from("!I", framed)[0] == spi  # the collision
    buf = bytearray(framed) + bytearray(64)
    got = t.receive(memoryview(buf), 0, len(framed), SERVER, 1.0)
    assert got == len(inner) and bytes(buf[16 : 16 + got]) == inner
    assert seen and t.relay_received == 1 and peer.addr == PEER and peer.rebinds == 0
    # the same datagram from anyone else: ESP for that SPI, which fails (counted)
    buf = bytearray(framed) + bytearray(64)
    assert t.receive(memoryview(buf), 0, len(framed), OTHER, 1.0) < 0
    assert peer.addr == PEER
    # STUN from the server (an answer) goes to the handler, consumed
    stun = b"\x01\x01\x00\x00" + bytes(16)
    assert t.receive(memoryview(bytearray(stun)), 0, len(stun), SERVER, 1.0) == CONSUMED
    # a GRO read from the server: every segment unwrapped
    t2 = Tunnel()
    p2 = t2.add_peer("a", [ipaddress.ip_network(A_INNER + "/32")], addr=PEER)
    t2.install_inbound(p2, InboundSA(spi, AES_GCM_128, key))
    t2.relay_servers.add(SERVER)
    t2.relay_handler = handler
    segs = []
    for _ in range(3):
        e = bytearray(2048)
        k = out.encapsulate_into(inner, memoryview(e))
        segs.append(struct.pack("!HH", 0x4000, k) + bytes(e[:k]))
    seg = len(segs[0])
    batch = bytearray(b"".join(segs))
    delivered: list[bytes] = []
    t2.receive_batch(memoryview(batch), len(batch), seg, SERVER, 2.0,
                     lambda v: delivered.append(bytes(v)))
    assert delivered == [inner] * 3 and t2.relay_received == 3


def test_a_server_as_its_own_peer_and_no_handler_are_dropped() -> None:
    t = Tunnel()
    t.relay_servers.add(SERVER)
    data = bytearray(b"\x40\x00\x00\x04abcd")
    assert t.receive(memoryview(data), 0, len(data), SERVER, 0.0) == -DropReason.UNKNOWN_SPI
    t.relay_handler = lambda d, a, now: (SERVER, 4, 8)
    assert t.receive(memoryview(data), 0, len(data), SERVER, 0.0) == -DropReason.UNKNOWN_SPI
    assert t.relay_received == 0
