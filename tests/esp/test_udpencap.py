"""RFC 3948 framing: classify and build keepalives, IKE (non-ESP marker) and ESP."""

from __future__ import annotations

import pytest

from nattunnel.esp.drop import DropReason
from nattunnel.esp.udpencap import (
    Kind,
    classify,
    frame_esp,
    frame_ike,
    frame_keepalive,
    ike_payload,
)

IKE_HEADER = bytes(8) + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4) + (28).to_bytes(4, "big")


def test_keepalive():
    assert frame_keepalive() == b"\xff"
    assert classify(b"\xff").kind is Kind.KEEPALIVE
    assert classify(b"\x00").reason is DropReason.MALFORMED
    assert classify(b"\xff\xff").reason is DropReason.TRUNCATED


def test_ike_behind_non_esp_marker():
    dgram = frame_ike(IKE_HEADER)
    assert dgram[:4] == bytes(4)
    c = classify(dgram)
    assert c.kind is Kind.IKE
    assert bytes(ike_payload(dgram)) == IKE_HEADER
    assert classify(bytes(4) + IKE_HEADER[:27]).reason is DropReason.TRUNCATED
    wrong_version = bytearray(dgram)
    wrong_version[4 + 17] = 0x10
    assert classify(wrong_version).reason is DropReason.MALFORMED
    with pytest.raises(ValueError):
        frame_ike(b"short")


def test_esp_and_reserved_spis():
    pkt = (0x12345678).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes(30)
    assert frame_esp(pkt) == pkt
    c = classify(pkt)
    assert c.kind is Kind.ESP and c.spi == 0x12345678
    for spi in (1, 100, 255):
        assert classify(spi.to_bytes(4, "big") + bytes(40)).reason is DropReason.RESERVED_SPI
        with pytest.raises(ValueError):
            frame_esp(spi.to_bytes(4, "big") + bytes(40))
    assert classify((256).to_bytes(4, "big") + bytes(40)).kind is Kind.ESP
    assert classify((256).to_bytes(4, "big") + b"\x00").reason is DropReason.TRUNCATED
    for n in (0, 2, 3):
        assert classify(bytes(n)).reason is DropReason.TRUNCATED


def test_inner_mtu_and_overhead():
    from nattunnel.esp.sa import OutboundSA
    from nattunnel.esp.suite import AES_GCM_128
    from nattunnel.esp.udpencap import inner_mtu, overhead
    from nattunnel.lab.packets import ipv4_packet

    assert inner_mtu(1500) == 1438
    assert inner_mtu(1500, outer_ipv6=True) == 1418
    for v6 in (False, True):
        m = inner_mtu(1500, v6)
        assert m + overhead(m, v6) == 1500
        assert m + 1 + overhead(m + 1, v6) > 1500
    # overhead() agrees with what the SA really produces
    sa = OutboundSA(0x1000, AES_GCM_128, bytes(20))
    for n in (20, 21, 22, 23, 1400, 1438):
        assert len(sa.encapsulate(ipv4_packet(n))) + 28 == n + overhead(n)
    with pytest.raises(ValueError):
        inner_mtu(60)
