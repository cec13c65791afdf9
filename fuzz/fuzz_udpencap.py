"""Fuzz RFC 3948 classification (nattunnel/udpencap.py) against a reference classifier.

``reference(datagram)`` is RFC 3948 section 2 written out: one octet 0xFF is a NAT-keepalive
(section 2.3); four zero octets are the non-ESP marker, and an IKE header with major version
2 must follow (section 2.2, RFC 7296 section 3.1); anything else is ESP, whose SPI is its first
four octets and must not be one of the reserved values 0-255 (RFC 4303 section 2.1), with at
least SPI and sequence number present; but a STUN message (RFC 8489 section 5: first two bits
zero, the magic cookie 0x2112A442 at offset 4, the length field the rest of the datagram and a
multiple of 4) whose first four octets are not the marker or a reserved SPI is STUN.
``classify`` must agree on the kind, the SPI and the
drop reason for bytes, bytearray and memoryview input; ``ike_payload`` must be the message
after the marker; ``frame_ike``/``frame_esp`` must produce what classifies back, and refuse
exactly what they document; and a Tunnel without SAs must dispatch the datagram the same way.

    python3 fuzz/fuzz_udpencap.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nattunnel"]):
    import _common

    from nattunnel.esp.drop import DropReason
    from nattunnel.esp.udpencap import Kind, classify, frame_esp, frame_ike, ike_payload
    from nattunnel.tunnel.core import CONSUMED, Tunnel

from _common import FuzzFailure

KEEPALIVE = 0xFF
MARKER = b"\x00\x00\x00\x00"
IKE_HEADER = 28
IKE_VERSION_AT = 17  # RFC 7296 section 3.1: MjVer | MnVer octet
STUN_COOKIE = bytes.fromhex("2112a442")  # RFC 8489 section 5


def reference(d: bytes) -> tuple[Kind, int, DropReason | None]:
    if len(d) == 1:
        if d[0] == KEEPALIVE:
            return Kind.KEEPALIVE, 0, None
        return Kind.DROP, 0, DropReason.MALFORMED
    if len(d) < 4:
        return Kind.DROP, 0, DropReason.TRUNCATED
    if d[:4] == MARKER:
        if len(d) < 4 + IKE_HEADER:
            return Kind.DROP, 0, DropReason.TRUNCATED
        if d[4 + IKE_VERSION_AT] >> 4 != 2:
            return Kind.DROP, 0, DropReason.MALFORMED
        return Kind.IKE, 0, None
    spi = int.from_bytes(d[:4], "big")
    if spi <= 255:
        return Kind.DROP, 0, DropReason.RESERVED_SPI
    if (len(d) >= 20 and d[0] >> 6 == 0 and d[4:8] == STUN_COOKIE
            and int.from_bytes(d[2:4], "big") == len(d) - 20 and len(d) % 4 == 0):
        return Kind.STUN, 0, None
    if len(d) < 8:
        return Kind.DROP, 0, DropReason.TRUNCATED
    return Kind.ESP, spi, None


def fail(sig: str, detail: str) -> None:
    raise FuzzFailure("udpencap." + sig, detail)


def test_one_input(data: bytes) -> None:
    want = reference(data)
    for form in (data, bytearray(data), memoryview(data)):
        c = classify(form)
        if (c.kind, c.spi, c.reason) != want:
            fail("classify", f"{type(form).__name__} {data.hex()}: {c}, reference {want}")
    if want[0] is Kind.IKE and bytes(ike_payload(data)) != data[4:]:
        fail("ike_payload", data.hex())

    # builders
    try:
        dgram = frame_ike(data)
    except ValueError:
        if len(data) >= IKE_HEADER:
            fail("build_ike_refused", data.hex())
    else:
        if len(data) < IKE_HEADER or dgram != MARKER + data:
            fail("frame_ike", data.hex())
        if classify(dgram).kind is not (Kind.IKE if data[IKE_VERSION_AT] >> 4 == 2
                                        else Kind.DROP):
            fail("build_ike_classify", data.hex())
    try:
        esp = frame_esp(data)
    except ValueError:
        if want[0] is Kind.ESP:
            fail("build_esp_refused", data.hex())
    else:
        # a STUN-shaped packet is ESP to whoever owns that SPI (a peer's below 0x40000000)
        if want[0] not in (Kind.ESP, Kind.STUN) or esp != data:
            fail("frame_esp", f"{data.hex()} built, reference {want}")

    # the Tunnel's dispatch of what no SA claims
    seen: list[bytes] = []
    for handler in (True, False):
        t = Tunnel(ike_handler=(lambda d, a, now: seen.append(bytes(d))) if handler else None)
        buf = memoryview(bytearray(data))
        got = t.receive(buf, 0, len(data), ("192.0.2.1", 4500), 0.0)
        kind, _, reason = want
        if kind is Kind.KEEPALIVE:
            expect = CONSUMED
        elif kind is Kind.IKE:
            expect = CONSUMED if handler else -DropReason.NO_IKE_HANDLER
        elif kind in (Kind.ESP, Kind.STUN):  # no STUN handler: as unknown ESP
            expect = -DropReason.UNKNOWN_SPI
        else:
            assert reason is not None
            expect = -reason
        if got != expect:
            fail("tunnel_dispatch", f"{data.hex()} (handler {handler}): {got}, want {expect}")
        if (kind is Kind.KEEPALIVE) != (t.keepalives_received == 1):
            fail("tunnel_keepalive", data.hex())
    if seen != ([data[4:]] if want[0] is Kind.IKE else []):
        fail("tunnel_ike_handler", data.hex())


def seeds() -> list[bytes]:
    import seeds as s

    return s.udpencap()


if __name__ == "__main__":
    _common.main("udpencap", test_one_input, seeds, sys.argv)
