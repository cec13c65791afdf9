"""Seed corpora for the harnesses, made at run time by the project's own encoders.

    python3 fuzz/seeds.py OUTDIR [TARGET ...]

writes OUTDIR/<target>/seed-<hash> for each target (all by default). The harnesses call the
same functions when started without a corpus directory, so no binary seed is kept in git.

Targets: ike_codec, ike_sa, ike_manager, esp, udpencap, config.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import _common

# --- IKE messages ------------------------------------------------------------------------------


def ike_messages() -> list[bytes]:
    """A real handshake's messages, and messages with every payload type, from the encoder."""
    from _ike_world import transcript

    from nattunnel.constants import (
        ExchangeType,
        IdType,
        NotifyType,
        PrfId,
        ProtocolId,
    )
    from nattunnel.ike.message import (
        KE,
        SA,
        Auth,
        Delete,
        Fragment,
        Header,
        IDi,
        IDr,
        Nonce,
        Notify,
        RawTrafficSelector,
        TSi,
        TSr,
        UnknownPayload,
        VendorID,
        encode_fragment,
        encode_message,
        esp_proposal,
        ike_proposal,
    )

    out = [s.data for s in transcript("psk")] + [s.data for s in transcript("pubkey")]
    spi = bytes(range(1, 9))
    h = Header.make(ExchangeType.INFORMATIONAL, spi, bytes(range(9, 17)), message_id=7)
    net = ipaddress.ip_network
    everything = [
        SA([ike_proposal(1, encr=20, prf=PrfId.HMAC_SHA2_256, dh=31, key_length=256),
            esp_proposal(2, b"\x00\x00\x10\x01", encr=28, dh=19, esn=(0, 1))]),
        KE(31, bytes(32)), IDi(IdType.FQDN, b"hosta"), IDr(IdType.IPV4_ADDR, bytes(4)),
        Auth(2, bytes(32)), Nonce(bytes(32)), Notify(NotifyType.REKEY_SA, b"", 3, bytes(4)),
        Delete(ProtocolId.ESP, [b"\x00\x00\x10\x01"]), Delete(ProtocolId.IKE), VendorID(b"v"),
        TSi.of(net("198.18.100.0/24"), net("fd00::/64")),
        TSr([RawTrafficSelector(9, 0, b"abcd")]), UnknownPayload(200, b"xyz"),
    ]
    out.append(encode_message(h, everything))
    from fuzz_ike_codec import NullBlockSk, NullSk

    for sk in (NullSk(), NullBlockSk()):
        out.append(encode_message(h, everything, sk=sk))
        out.append(encode_message(h, [Notify(NotifyType.COOKIE, b"c" * 8)], sk=sk,
                                  unprotected=[VendorID(b"before SK")]))
        out.append(encode_fragment(h, Fragment(1, 2, 41, b"\x00" * 20), sk=sk))
        out.append(encode_fragment(h, Fragment(2, 2, 0, b"\x01" * 20), sk=sk))
    return out


# --- ESP ---------------------------------------------------------------------------------------


def esp_packets() -> list[bytes]:
    """Programs for fuzz_esp: parameter octets, then packets made by OutboundSA."""
    import fuzz_esp

    return fuzz_esp.seed_programs()


def udpencap() -> list[bytes]:
    from nattunnel.esp.sa import OutboundSA
    from nattunnel.esp.suite import AES_GCM_128
    from nattunnel.esp.udpencap import frame_esp, frame_ike, frame_keepalive
    from nattunnel.lab.packets import ipv4_packet

    esp = OutboundSA(0x1001, AES_GCM_128, bytes(20)).encapsulate(ipv4_packet(40))
    ike = ike_messages()[0]
    return [frame_keepalive(), frame_ike(ike), frame_esp(esp), b"\x00\x00\x00\xff" + esp[4:],
            b"", b"\x00", b"\x00\x00\x00\x00", bytes(32)]


# --- config ------------------------------------------------------------------------------------


def configs() -> list[bytes]:
    import fuzz_config

    return fuzz_config.seed_texts()


def ike_sa() -> list[bytes]:
    import fuzz_ike_sa

    return fuzz_ike_sa.seed_programs()


def ike_manager() -> list[bytes]:
    import fuzz_ike_manager

    return fuzz_ike_manager.seed_programs()


TARGETS = {
    "ike_codec": ike_messages,
    "ike_sa": ike_sa,
    "ike_manager": ike_manager,
    "esp": esp_packets,
    "udpencap": udpencap,
    "config": configs,
}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[1])
    names = argv[2:] or list(TARGETS)
    for name in names:
        n = _common.write_seeds(out / name, TARGETS[name]())
        print(f"{out / name}: {n} seeds")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv))
