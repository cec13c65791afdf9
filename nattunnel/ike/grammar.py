"""The strongSwan proposal grammar: IKE and ESP proposals as strongSwan writes them (the
configuration's ``ike_proposals`` and ``esp_proposals``).

``parse_ike_proposal("aes256gcm16-prfsha256-x25519")`` is an ``ike.proposals.IkeProposal``,
``parse_esp_proposal("aes128gcm16-esn")`` an ``EspProposal``; each raises ValueError with the
problem (the caller names the field). strongSwan keywords that nattunnel knows but does not
implement are refused with the reason. ``IkeProposal.name`` and ``EspProposal.name`` write
one back.
"""

from __future__ import annotations

import re
from typing import Final

from ..constants import DhGroup, EncrId
from ..esp.suite import SUITES, Suite
from .proposals import GROUP_NAMES, PRF_NAMES, EspProposal, IkeProposal

_IKE_ENCR: Final[dict[str, tuple[int, int | None]]] = {
    "aes128gcm16": (EncrId.AES_GCM_16, 128),
    "aes256gcm16": (EncrId.AES_GCM_16, 256),
    "chacha20poly1305": (EncrId.CHACHA20_POLY1305, None),
}
_PRF: Final = {name: prf for prf, name in PRF_NAMES.items()}
#: strongSwan also accepts curve25519 for x25519
_DH: Final = {name: dh for dh, name in GROUP_NAMES.items()} | {"curve25519": DhGroup.CURVE25519}
_ESN: Final = {"esn": True, "noesn": False}
#: strongSwan keywords nattunnel knows but does not implement, with the reason
_UNSUPPORTED: Final = (
    (re.compile(r"aes(128|192|256)?(ctr|cbc|ccm\d*|gcm(8|12|16|64|96|128)?)?|aes192gcm\d+|3des|"
                r"camellia\d*|blowfish\d*|cast128|null"),
     "is not supported: nattunnel implements only the AEAD ciphers aes128gcm16, "
     "aes256gcm16 and chacha20poly1305"),
    (re.compile(r"(sha|sha1|sha2_?\d+|sha\d+|md5|aesxcbc|aescmac)(_\d+)?"),
     "is an integrity algorithm; AEAD proposals take none (the PRF is named with prf..., "
     "e.g. prfsha256)"),
    (re.compile(r"prf\w+"), "is not a supported PRF; use prfsha256, prfsha384 or prfsha512"),
    (re.compile(r"modp\d+s?\d*|ecp\d+(bp)?|x448|curve448|ke\d_\w+|mlkem\d+"),
     "is not a supported key exchange method; use x25519 or ecp256"),
)


def _show(token: str) -> str:
    return repr(token if len(token) <= 60 else token[:57] + "...")


def _unknown(token: str, kinds: str) -> ValueError:
    for pattern, why in _UNSUPPORTED:
        if pattern.fullmatch(token):
            return ValueError(f"{_show(token)} {why}")
    return ValueError(f"unknown algorithm {_show(token)}; expected {kinds}")


def _tokens(text: str) -> list[str]:
    s = text.strip().lower()
    if not s:
        raise ValueError("is empty")
    tokens = s.split("-")
    if any(not t for t in tokens):
        raise ValueError("has an empty algorithm between '-' separators")
    return tokens


def parse_ike_proposal(text: str) -> IkeProposal:
    """An IKE proposal as strongSwan writes it, ``ENCR-PRF-DH``: ``aes256gcm16-prfsha256-x25519``,
    ``chacha20poly1305-prfsha256-x25519``, ``aes128gcm16-prfsha256-ecp256``. One algorithm of
    each kind; the order of the parts does not matter. ValueError with the problem."""
    kinds = ("encryption (aes128gcm16, aes256gcm16, chacha20poly1305), PRF (prfsha256, "
             "prfsha384, prfsha512) or key exchange (x25519, ecp256)")
    encr: tuple[int, int | None] | None = None
    prf: int | None = None
    dh: int | None = None
    for token in _tokens(text):
        if token in _IKE_ENCR:
            if encr is not None:
                raise ValueError(f"has two encryption algorithms ({token!r} is the second); "
                                 f"write one proposal for each")
            encr = _IKE_ENCR[token]
        elif token in _PRF:
            if prf is not None:
                raise ValueError(f"has two PRFs ({token!r} is the second); write one "
                                 f"proposal for each")
            prf = _PRF[token]
        elif token in _DH:
            if dh is not None:
                raise ValueError(f"has two key exchange methods ({token!r} is the second); "
                                 f"write one proposal for each")
            dh = _DH[token]
        else:
            raise _unknown(token, kinds)
    if encr is None:
        raise ValueError("names no encryption algorithm; add aes256gcm16, aes128gcm16 or "
                         "chacha20poly1305")
    if prf is None:
        raise ValueError("names no PRF; AEAD proposals need one: add prfsha256, prfsha384 or "
                         "prfsha512")
    if dh is None:
        raise ValueError("names no key exchange method; add x25519 or ecp256")
    return IkeProposal(encr[0], encr[1], prf, dh)


def parse_esp_proposal(text: str) -> EspProposal:
    """An ESP proposal as strongSwan writes it: a suite (``aes256gcm16``, ``aes128gcm16``,
    ``chacha20poly1305``), then optionally ``esn`` (offer extended sequence numbers; plain
    32-bit ones remain acceptable) or ``noesn``, and a PFS key exchange method for rekeys
    (``x25519``, ``ecp256``): ``aes128gcm16-esn``, ``chacha20poly1305-x25519``. ValueError
    with the problem."""
    kinds = (f"an ESP suite ({', '.join(sorted(SUITES))}), esn, noesn, or a key exchange "
             f"method for PFS (x25519, ecp256)")
    suite: Suite | None = None
    esn: bool | None = None
    dh: int | None = None
    for token in _tokens(text):
        if token in SUITES:
            if suite is not None:
                raise ValueError(f"has two encryption algorithms ({token!r} is the second); "
                                 f"write one proposal for each")
            suite = SUITES[token]
        elif token in _ESN:
            # strongSwan: "esn-noesn" offers both; EspProposal(esn=True) does just that
            esn = (esn or False) or _ESN[token]
        elif token in _DH:
            if dh is not None:
                raise ValueError(f"has two key exchange methods ({token!r} is the second); "
                                 f"write one proposal for each")
            dh = _DH[token]
        elif token in _PRF:
            raise ValueError(f"{token!r}: ESP proposals take no PRF (the IKE SA's PRF derives "
                             f"the child SA keys)")
        else:
            raise _unknown(token, kinds)
    if suite is None:
        raise ValueError(f"names no ESP suite; start with one of {', '.join(sorted(SUITES))}")
    return EspProposal(suite, bool(esn), dh)

