"""Pieces of the IKE manager (``manager.py``, kept within the module size limit here).

- ``ExchangeCounts``: IKE messages received and sent, by the exchange type in their header
  (RFC 7296 section 3.1; ME_CONNECT of IKEv2 mediation is named too, though the mediation
  cores' own messages are taken by ``io/mediated.py`` before they reach the manager: these are
  the IKE SAs of the manager's peers). Counting reads one octet of the
  header and increments a slot of a preallocated list: nothing is allocated per message. Each
  datagram counts once, so a message sent in IKE fragments (RFC 7383) counts once per
  fragment; a retransmission counts again. Types without a name count as ``other``.
- ``certreq_union``: the CAs of every peer that authenticates with certificates, as one
  ``TrustStore``: a responder does not know who the initiator is when it answers
  IKE_SA_INIT, so its CERTREQ (section 3.7) names all of them;
- ``unspecified``: whether the socket a message came to is bound to a wildcard address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..addr import Addr
from ..constants import IKE_HEADER_LEN, ME_CONNECT, ExchangeType
from .certs import TrustStore
from .config import IkeConfig
from .events import Outgoing

#: the exchange type octet of the IKE header (RFC 7296 section 3.1)
EXCHANGE_AT: Final = 18
#: the label of an exchange type without a name
OTHER: Final = "other"
#: the named exchange types, by number
EXCHANGE_NAMES: Final[Mapping[int, str]] = {
    **{int(e): e.name for e in ExchangeType}, ME_CONNECT: "ME_CONNECT"}


class ExchangeCounts:
    """IKE messages in and out by exchange type (``as_dict`` names them)."""

    __slots__ = ("rx", "tx")

    def __init__(self) -> None:
        #: one slot per value of the octet
        self.rx = [0] * 256
        self.tx = [0] * 256

    def received(self, data: bytes) -> None:
        """A message with a header (whether an IKE SA takes it or not) came."""
        self.rx[data[EXCHANGE_AT]] += 1

    def sent(self, messages: list[Outgoing]) -> list[Outgoing]:
        """``messages`` counted as sent (and returned)."""
        tx = self.tx
        for m in messages:
            if len(m.data) >= IKE_HEADER_LEN:
                tx[m.data[EXCHANGE_AT]] += 1
        return messages

    def as_dict(self) -> dict[str, dict[str, int]]:
        """{"rx": {name: count}, "tx": {...}}: the types seen, the unnamed ones as ``other``."""
        return {"rx": _named(self.rx), "tx": _named(self.tx)}


def _named(slots: list[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for value, n in enumerate(slots):
        if n:
            name = EXCHANGE_NAMES.get(value, OTHER)
            out[name] = out.get(name, 0) + n
    return out


def certreq_union(configs: Iterable[IkeConfig]) -> TrustStore | None:
    """Every CA of the peers with a ``trust`` store, each once (None: no such peer)."""
    cas: dict[bytes, x509.Certificate] = {}
    found = False
    for config in configs:
        if config.trust is None:
            continue
        found = True
        for ca in config.trust.cas:
            cas.setdefault(ca.public_bytes(serialization.Encoding.DER), ca)
    if not found:
        return None
    return TrustStore(tuple(cas.values()))


def unspecified(addr: Addr) -> bool:
    """Whether ``addr`` is a wildcard (``0.0.0.0``, ``::``, with or without a scope)."""
    return ipaddress.ip_address(addr[0].split("%", 1)[0]).is_unspecified
