"""Proposals and traffic selectors (RFC 7296 sections 2.7, 2.9, 3.3): what we offer, what we
pick from an offer, and how the responder narrows the offered traffic selectors.

Pure functions of payloads and our configuration: nothing here keeps state. The IKE SA state
machine (``nattunnel.ike.sa``) calls them while it builds and answers exchanges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from ..addr import Network
from ..constants import (
    CHILD_SPI_LEN,
    ENCR_AES_GCM_16,
    ENCR_CHACHA20_POLY1305,
    SPI_RESERVED_MAX,
    DhGroup,
    EsnId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from ..esp.suite import SUITES, Suite
from .message import KE, SA, AnySelector, Proposal, TrafficSelector, TSi, TSr, esp_proposal

#: the key exchange methods ``nattunnel.ike.crypto.KeyExchange`` implements
SUPPORTED_GROUPS = frozenset({DhGroup.CURVE25519, DhGroup.ECP_256})


#: strongSwan's names for the algorithms nattunnel implements (``nattunnel.ike.grammar``
#: parses them; ``IkeProposal.name`` and ``EspProposal.name`` write them)
PRF_NAMES: dict[int, str] = {PrfId.HMAC_SHA2_256: "prfsha256", PrfId.HMAC_SHA2_384: "prfsha384",
                             PrfId.HMAC_SHA2_512: "prfsha512"}
GROUP_NAMES: dict[int, str] = {DhGroup.CURVE25519: "x25519", DhGroup.ECP_256: "ecp256"}


@dataclass(frozen=True)
class IkeProposal:
    encr: int
    key_bits: int | None
    prf: int
    dh: int

    @property
    def name(self) -> str:
        """strongSwan's form: ``aes256gcm16-prfsha256-x25519``."""
        e = {ENCR_AES_GCM_16: f"aes{self.key_bits}gcm16",
             ENCR_CHACHA20_POLY1305: "chacha20poly1305"}.get(self.encr, "?")
        return f"{e}-{PRF_NAMES.get(self.prf, '?')}-{GROUP_NAMES.get(self.dh, '?')}"


@dataclass(frozen=True)
class EspProposal:
    suite: Suite
    esn: bool = False
    #: PFS group for CREATE_CHILD_SA, or None
    dh: int | None = None

    @property
    def name(self) -> str:
        """strongSwan's form: ``aes128gcm16-esn-x25519``."""
        parts = [self.suite.name]
        if self.esn:
            parts.append("esn")
        if self.dh is not None:
            parts.append(GROUP_NAMES.get(self.dh, str(self.dh)))
        return "-".join(parts)


DEFAULT_IKE_PROPOSALS = (
    IkeProposal(ENCR_AES_GCM_16, 256, PrfId.HMAC_SHA2_256, DhGroup.CURVE25519),
    IkeProposal(ENCR_CHACHA20_POLY1305, None, PrfId.HMAC_SHA2_256, DhGroup.CURVE25519),
    IkeProposal(ENCR_AES_GCM_16, 128, PrfId.HMAC_SHA2_256, DhGroup.ECP_256),
)
DEFAULT_ESP_PROPOSALS = (EspProposal(SUITES["aes256gcm16"]), EspProposal(SUITES["aes128gcm16"]),
                         EspProposal(SUITES["chacha20poly1305"]))


@dataclass(frozen=True)
class Refusal:
    """Why an offer is not acceptable: the error notify to answer with, and its data."""

    notify: int
    reason: str
    data: bytes = b""


@dataclass(frozen=True)
class EspChoice:
    """The responder's pick from an ESP offer."""

    proposal: Proposal  # the offered proposal picked
    mine: EspProposal  # the proposal of ours it matched
    esn: bool
    #: the key exchange group for PFS, or None (no key exchange)
    dh: int | None


# --- IKE proposals ---------------------------------------------------------------------------
def pick_ike(offered: SA, ours: Sequence[IkeProposal]) -> tuple[int, IkeProposal] | None:
    """The responder picks by its own order (what strongSwan does): the first of ours that
    any offered proposal allows. Returns (offered proposal number, choice)."""
    for mine in ours:
        for prop in offered.proposals:
            if prop.protocol != ProtocolId.IKE:
                continue
            encr = [(t.id, t.key_length) for t in prop.get(TransformType.ENCR)]
            if (mine.encr, mine.key_bits) not in encr and not (
                mine.key_bits is None and (mine.encr, None) in encr
            ):
                continue
            if mine.prf not in [t.id for t in prop.get(TransformType.PRF)]:
                continue
            if mine.dh not in [t.id for t in prop.get(TransformType.DH)]:
                continue
            if prop.get(TransformType.INTEG):
                continue  # AEAD only
            return prop.number, mine
    return None


# --- ESP proposals ---------------------------------------------------------------------------
def esp_spi_ok(spi: bytes) -> bool:
    """RFC 4303 section 2.1: 4 octets; 0 must not be sent, 1 to 255 are reserved by IANA."""
    return len(spi) == CHILD_SPI_LEN and int.from_bytes(spi, "big") > SPI_RESERVED_MAX


def _esp_matches(prop: Proposal, mine: EspProposal) -> bool | None:
    """Whether ``prop`` allows our ``mine`` apart from the key exchange: None if not, else
    whether ESN is used."""
    if prop.protocol != ProtocolId.ESP or not esp_spi_ok(prop.spi):
        return None
    encr = [(t.id, t.key_length) for t in prop.get(TransformType.ENCR)]
    if (mine.suite.transform_id, mine.suite.key_attr_bits) not in encr:
        return None
    if prop.get(TransformType.INTEG):
        return None
    esns = [t.id for t in prop.get(TransformType.ESN)] or [EsnId.NO_ESN]
    esn = mine.esn and EsnId.ESN in esns
    if not esn and EsnId.NO_ESN not in esns:
        return None
    return esn


def _acceptable_groups(prop: Proposal, mine: EspProposal) -> list[int]:
    """The key exchange groups (NONE: no key exchange) of ``prop`` we accept with ``mine``:
    a proposal of ours with a group requires that group; one without takes no key exchange
    if the offer allows it (no DH transform, or NONE), else a group we implement."""
    dhs = [t.id for t in prop.get(TransformType.DH)] or [DhGroup.NONE]
    if mine.dh:
        return [mine.dh] if mine.dh in dhs else []
    groups = [DhGroup.NONE] if DhGroup.NONE in dhs else []
    return groups + [g for g in dhs if g in SUPPORTED_GROUPS]


def pick_esp(offered: SA, ours: Sequence[EspProposal], ke: KE | None, *, pfs: bool = True
             ) -> EspChoice | Refusal:
    """The responder's choice of an ESP proposal (by our order), with its PFS group (None:
    no key exchange), or the refusal to answer with.

    ``pfs`` False (IKE_AUTH, section 1.2): key exchange transforms are ignored. Otherwise
    (CREATE_CHILD_SA, sections 1.3.1 and 3.4) the groups are those of
    ``_acceptable_groups``. The KE payload must be in the chosen group: if it is not, but
    some group is acceptable, INVALID_KE_PAYLOAD names the one we want; if nothing is
    acceptable, NO_PROPOSAL_CHOSEN."""
    want: int | None = None  # the group for INVALID_KE_PAYLOAD
    for mine in ours:
        for prop in offered.proposals:
            esn = _esp_matches(prop, mine)
            if esn is None:
                continue
            if not pfs:
                return EspChoice(prop, mine, esn, None)
            groups = _acceptable_groups(prop, mine)
            if not groups:
                continue
            if ke is not None and ke.group in groups and ke.group != DhGroup.NONE:
                return EspChoice(prop, mine, esn, ke.group)
            if ke is None and DhGroup.NONE in groups:
                return EspChoice(prop, mine, esn, None)
            if want is None:
                want = next((g for g in groups if g != DhGroup.NONE), None)
    if want is not None:
        return Refusal(NotifyType.INVALID_KE_PAYLOAD, "another key exchange group wanted",
                       want.to_bytes(2, "big"))
    return Refusal(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal")


def esp_offer(proposals: Sequence[EspProposal], spi: int, pfs: int | None = None) -> SA:
    """The SA payload of our ESP proposals, numbered from 1, all with inbound SPI ``spi``."""
    props = []
    for i, p in enumerate(proposals, 1):
        esn = (EsnId.ESN, EsnId.NO_ESN) if p.esn else (EsnId.NO_ESN,)
        props.append(esp_proposal(i, spi.to_bytes(CHILD_SPI_LEN, "big"),
                                  encr=p.suite.transform_id, key_length=p.suite.key_attr_bits,
                                  dh=pfs, esn=esn))
    return SA(props)


def esp_answer(choice: EspChoice, spi: int) -> SA:
    """The responder's SA payload: the chosen proposal, with our inbound SPI ``spi``."""
    mine = choice.mine
    chosen = esp_proposal(choice.proposal.number, spi.to_bytes(CHILD_SPI_LEN, "big"),
                          encr=mine.suite.transform_id, key_length=mine.suite.key_attr_bits,
                          dh=choice.dh, esn=(EsnId.ESN if choice.esn else EsnId.NO_ESN,))
    return SA([chosen])


def suite_of(prop: Proposal) -> tuple[Suite, bool] | None:
    """The suite (and whether ESN) of the proposal a responder chose."""
    for t in prop.get(TransformType.ENCR):
        for s in SUITES.values():
            if s.transform_id == t.id and s.key_attr_bits == t.key_length:
                esn = any(e.id == EsnId.ESN for e in prop.get(TransformType.ESN))
                return s, esn
    return None


# --- traffic selectors -----------------------------------------------------------------------
def _within(a: Network, b: Network) -> bool:
    """Whether prefix ``a`` lies inside ``b`` (never across address families)."""
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.subnet_of(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.subnet_of(b)
    return False


def narrow(offered: Sequence[AnySelector], allowed: Sequence[Network]) -> list[Network]:
    """Narrowing (section 2.9): the parts of the offered ranges inside our allowed prefixes."""
    out: list[Network] = []
    for ts in offered:
        if not isinstance(ts, TrafficSelector):
            continue
        for net in ts.networks():
            for mine in allowed:
                if _within(net, mine):
                    out.append(net)
                elif _within(mine, net):
                    out.append(mine)
    # collapse duplicates, keep order
    seen: list[Network] = []
    for n in out:
        if n not in seen:
            seen.append(n)
    return seen


def ts_networks(payload: TSi | TSr | None) -> list[Network]:
    """The prefixes of a TSi or TSr payload (none if it is missing)."""
    if payload is None:
        return []
    nets: list[Network] = []
    for ts in payload.selectors:
        if isinstance(ts, TrafficSelector):
            nets.extend(ts.networks())
    return nets
