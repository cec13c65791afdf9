"""Fuzz the IKEv2 codec (nattunnel/ike_message.py).

Every input is tried as a whole message (``peek_header``, ``decode_message`` without a cipher
and with two fuzz-only null SK ciphers that open anything, so the inner payload chain is
parsed as if it had decrypted) and as a bare payload chain (``decode_payloads``). Only
IkeDecodeError (or a subclass) may escape, and an error after the header must carry it.

What decodes must round-trip: re-encoding keeps the length (only reserved bits may differ),
decodes to the same message, and re-encodes to the same octets. Encrypted messages and
fragments are re-sealed with the same null cipher and must decode to the same content.

Seeds (``seeds()``): messages built by the project's encoder, of every exchange of a real
in-memory handshake and of every payload type.

    python3 fuzz/fuzz_ike_codec.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nattunnel"]):
    import _common

    from nattunnel.constants import NotifyType
    from nattunnel.ike import message as ike_message
    from nattunnel.ike.message import (
        SK,
        SKF,
        Fragment,
        IkeDecodeError,
        InvalidMajorVersion,
        Nonce,
        Notify,
        decode_message,
        decode_payloads,
        encode_fragment,
        encode_message,
        encode_payloads,
        peek_header,
        reassemble,
    )

import contextlib

from _common import FuzzFailure

#: (Ni, COOKIE) from the payload headers alone (the cookie check under load); newer codec only
peek_nonce_and_cookie = getattr(ike_message, "peek_nonce_and_cookie", None)
#: (receiver's SPI, opens a new IKE SA) from the raw header (how a message finds its SA)
peek_receiver_spi = getattr(ike_message, "peek_receiver_spi", None)


def _receiver_spi_reference(data: bytes) -> tuple[bytes, bool] | None:
    """RFC 7296 section 3.1: the receiver's SPI is SPIr in a message from the original
    initiator (I flag), else SPIi; an IKE_SA_INIT request with a zero SPIr opens a new SA."""
    if len(data) < 28:
        return None
    hdr = peek_header(data)
    if (hdr.exchange_type == 34 and not hdr.is_response and hdr.spi_r == bytes(8)):
        return hdr.spi_r, True
    return (hdr.spi_r if hdr.is_initiator else hdr.spi_i), False


class NullSk:
    """Fuzz-only SK cipher: no IV, no ICV, block size 1; ``open`` returns the input."""

    iv_len = 0
    icv_len = 0
    block_size = 1

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, aad: bytes, data: bytes) -> bytes:
        return data


class NullBlockSk:
    """Fuzz-only SK cipher with the shape of a CBC one: 8-octet IV, 16-octet ICV, 16-octet
    blocks; ``open`` returns the middle (so the length checks are exercised)."""

    iv_len = 8
    icv_len = 16
    block_size = 16

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        return bytes(8) + plaintext + bytes(16)

    def open(self, aad: bytes, data: bytes) -> bytes:
        return data[8:-16]


CIPHERS = (NullSk(), NullBlockSk())


def _bad(what: str, data: bytes, exc: BaseException | None = None) -> FuzzFailure:
    err = FuzzFailure("ike_codec." + what, f"{what}: {data.hex()}")
    if exc is not None:
        err.__cause__ = exc
    return err


def _check_error(e: IkeDecodeError, data: bytes) -> None:
    if len(data) >= 28 and e.header is None:
        raise _bad("error_without_header", data, e)
    if isinstance(e, InvalidMajorVersion) and e.header is None:
        raise _bad("major_version_without_header", data, e)


def _round_trip_plain(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except IkeDecodeError as e:
        _check_error(e, data)
        return
    try:
        again = encode_message(msg.header, msg.payloads)
    except ValueError as e:
        raise _bad("decoded_message_does_not_encode", data, e) from e
    if len(again) != len(data):
        raise _bad("round_trip_changes_length", data)
    msg2 = decode_message(again)
    if msg2 != msg:
        raise _bad("round_trip_changes_message", data)
    if encode_message(msg2.header, msg2.payloads) != again:
        raise _bad("encoding_not_stable", data)
    if peek_nonce_and_cookie is not None and not any(isinstance(p, SK | SKF)
                                                     for p in msg.payloads):
        # the shortcut must agree with the full decode of an unencrypted message (its
        # domain: past an SK payload it walks on into the ciphertext's first payload type)
        nonce = next((p.data for p in msg.payloads if isinstance(p, Nonce)), None)
        cookie = next((p.data for p in msg.payloads
                       if isinstance(p, Notify) and p.notify_type == NotifyType.COOKIE), None)
        if peek_nonce_and_cookie(data) != (nonce, cookie):
            raise _bad("peek_nonce_and_cookie_disagrees", data)


def _round_trip_sealed(data: bytes, sk: NullSk | NullBlockSk) -> None:
    try:
        msg = decode_message(data, sk=sk)
    except IkeDecodeError as e:
        _check_error(e, data)
        return
    if not msg.encrypted:
        return  # no SK/SKF payload: the plain round trip covered it
    if msg.fragment is not None:
        f = msg.fragment
        try:
            again = encode_fragment(msg.header, f, sk=sk)
        except ValueError as e:
            if len(f.data) + 64 > 0xFFFF:
                return  # re-padding can push a huge fragment past 65535
            raise _bad("fragment_does_not_encode", data, e) from e
        m2 = decode_message(again, sk=sk)
        want = Fragment(f.number, f.total, f.first_payload if f.number == 1 else 0, f.data)
        if m2.fragment != want or m2.header != msg.header:
            raise _bad("fragment_round_trip", data)
        if f.total == 1:
            with contextlib.suppress(IkeDecodeError):
                reassemble([f])
        return
    try:
        again = encode_message(msg.header, msg.payloads, sk=sk, unprotected=msg.unprotected)
    except ValueError as e:
        if len(data) + 64 > 0xFFFF:
            return
        raise _bad("decrypted_message_does_not_encode", data, e) from e
    m2 = decode_message(again, sk=sk)
    if (m2.header, m2.payloads, m2.unprotected, m2.encrypted) != (
            msg.header, msg.payloads, msg.unprotected, True):
        raise _bad("sealed_round_trip", data)


def _payload_chain(data: bytes) -> None:
    if not data:
        return
    try:
        payloads = decode_payloads(data[0], data[1:])
    except IkeDecodeError:
        return
    first, body = encode_payloads(payloads)
    if decode_payloads(first, body) != payloads:
        raise _bad("payload_chain_round_trip", data)


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(IkeDecodeError):
        peek_header(data)
    if peek_nonce_and_cookie is not None:
        with contextlib.suppress(IkeDecodeError):
            peek_nonce_and_cookie(data)
    if peek_receiver_spi is not None and peek_receiver_spi(data) != _receiver_spi_reference(
            data):
        raise _bad("peek_receiver_spi", data)
    _round_trip_plain(data)
    for sk in CIPHERS:
        _round_trip_sealed(data, sk)
    _payload_chain(data)


def seeds() -> list[bytes]:
    import seeds as s

    return s.ike_messages()


if __name__ == "__main__":
    _common.main("ike_codec", test_one_input, seeds, sys.argv)
