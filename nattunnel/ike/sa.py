"""One IKEv2 SA (RFC 7296), sans-I/O: the initial exchanges, INFORMATIONAL, child rekeys.

``IkeSa`` is fed received IKE messages with an explicit ``now`` and returns messages to send
(``Outgoing``), events (``ChildUp``, ``ChildDown``, ``IkeUp``, ``IkeDown``) and its next
deadline. It owns no socket: ``nattunnel.ike.manager`` moves the bytes and installs the child SAs.

Covered here:
- IKE_SA_INIT with NAT detection (section 2.23), INVALID_KE_PAYLOAD retry (1.2), COOKIE
  (2.6), NO_PROPOSAL_CHOSEN; the switch to UDP 4500 when NAT is found or encapsulation is
  forced;
- IKE_AUTH with PSK (2.15) or Ed25519 (RFC 7427 / RFC 8420), INITIAL_CONTACT, the first child
  SA with traffic selectors narrowed by the responder (2.9);
- INFORMATIONAL: every request answered; Delete of child SAs and of the IKE SA (1.4.1);
  liveness checks (DPD) when nothing was received for ``dpd_interval``;
- CREATE_CHILD_SA as responder: child SA rekeys with optional PFS (1.3.3, 2.17) and IKE SA
  rekeys (1.3.2, 2.18); as initiator: child SA rekeys;
- retransmission of our requests with exponential backoff and a cap (2.1), and answering a
  retransmitted request from the cache of our last response (2.1, window size 1);
- after IKE_SA_INIT nothing unprotected changes any state (message IDs, the response cache,
  the peer's address): only an IKE_SA_INIT retransmission identical to the request is
  answered; an authenticated new message alone may move the peer (2.23);
- KE payloads in CREATE_CHILD_SA: INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN or INVALID_SYNTAX
  (1.3, 3.4, 3.10.1); NO_ADDITIONAL_SAS beyond ``max_children``; child rekey collisions
  (2.8.1), simultaneous IKE SA rekeys (2.8.2) and rekey/delete collisions (2.25.1, 2.25.2,
  with TEMPORARY_FAILURE).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from ..addr import Addr, Network
from ..constants import (
    ENCR_AES_GCM_16,
    ENCR_CHACHA20_POLY1305,
    IKE_PORT,
    NAT_T_PORT,
    AuthMethod,
    DhGroup,
    EsnId,
    ExchangeType,
    HashAlgorithm,
    IdType,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from ..esp.suite import SUITES, Suite
from ..tunnel.peer import KeepaliveMode
from . import crypto as kc
from .message import (
    KE,
    SA,
    Auth,
    Delete,
    Header,
    IDi,
    IDr,
    IkeDecodeError,
    IkeIntegrityError,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    TrafficSelector,
    Transform,
    TSi,
    TSr,
    decode_message,
    encode_message,
    esp_proposal,
    ike_proposal,
    nat_detection_hash,
)

#: section 2.1: retransmit after 0.5 s, doubling, at most this many tries
RETRANSMIT_BASE = 0.5
RETRANSMIT_TRIES = 6
NONCE_LEN = 32
#: child SAs per IKE SA unless the manager says otherwise (``IkeLimits``)
MAX_CHILDREN = 16
#: section 2.25: after TEMPORARY_FAILURE, try a rekey again this long later (plus up to as
#: much again at random, so that two peers do not collide again)
RETRY_AFTER_TEMPORARY_FAILURE = 5.0
#: the key exchange methods ``ike_crypto.KeyExchange`` implements
SUPPORTED_GROUPS = frozenset({DhGroup.CURVE25519, DhGroup.ECP_256})


# --- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class IkeProposal:
    encr: int
    key_bits: int | None
    prf: int
    dh: int

    @property
    def name(self) -> str:
        e = {ENCR_AES_GCM_16: f"aes{self.key_bits}gcm16",
             ENCR_CHACHA20_POLY1305: "chacha20poly1305"}.get(self.encr, "?")
        prfs: dict[int, str] = {PrfId.HMAC_SHA2_256: "prfsha256",
                                PrfId.HMAC_SHA2_384: "prfsha384",
                                PrfId.HMAC_SHA2_512: "prfsha512"}
        groups: dict[int, str] = {DhGroup.CURVE25519: "x25519", DhGroup.ECP_256: "ecp256"}
        p, d = prfs.get(self.prf, "?"), groups.get(self.dh, "?")
        return f"{e}-{p}-{d}"


@dataclass(frozen=True)
class EspProposal:
    suite: Suite
    esn: bool = False
    #: PFS group for CREATE_CHILD_SA, or None
    dh: int | None = None


DEFAULT_IKE_PROPOSALS = (
    IkeProposal(ENCR_AES_GCM_16, 256, PrfId.HMAC_SHA2_256, DhGroup.CURVE25519),
    IkeProposal(ENCR_CHACHA20_POLY1305, None, PrfId.HMAC_SHA2_256, DhGroup.CURVE25519),
    IkeProposal(ENCR_AES_GCM_16, 128, PrfId.HMAC_SHA2_256, DhGroup.ECP_256),
)
DEFAULT_ESP_PROPOSALS = (EspProposal(SUITES["aes256gcm16"]), EspProposal(SUITES["aes128gcm16"]),
                         EspProposal(SUITES["chacha20poly1305"]))


@dataclass(frozen=True)
class Identity:
    """An IKE identity: ID type and data (section 3.5)."""

    id_type: int
    data: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        """``fqdn:host``, ``keyid:#hex`` (binary) or ``keyid:text`` (its UTF-8 octets), an IP
        address, or a bare name (FQDN), as strongSwan writes them (``@NAME`` and ``@#HEX``
        too). Anything else is a ValueError (never a UnicodeError) saying what is wrong: an
        FQDN is printable ASCII without whitespace (section 3.5), a bare name has no ':',
        ``#hex`` is whole octets, an IPv6 address has no zone, and no identity is empty or
        longer than 255 octets."""
        limit = 255  # a DNS name's limit (RFC 1035); key ids are hashes or short names

        def checked(data: bytes) -> bytes:
            if len(data) > limit:
                raise ValueError(f"is {len(data)} octets long; an identity is at most {limit}")
            return data

        def fqdn(name: str) -> bytes:
            if not name.isascii():
                raise ValueError("an FQDN identity must be ASCII (RFC 7296 section 3.5); "
                                 "write an internationalized name in its IDNA form (xn--...)")
            if any(c.isspace() or not c.isprintable() for c in name):
                raise ValueError("an FQDN identity must be printable ASCII without whitespace "
                                 "or control characters")
            return checked(name.encode("ascii"))

        if text.startswith("@@"):
            raise ValueError("@@NAME is an e-mail identity (RFC822_ADDR), which is not "
                             "supported; use fqdn:NAME or keyid:HEX")
        if text.startswith("@#"):  # strongSwan's shorthands
            text = "keyid:#" + text[2:]
        elif text.startswith("@"):
            text = "fqdn:" + text[1:]
        if text.startswith("keyid:"):
            v = text[6:]
            if v.startswith("#"):  # strongSwan: keyid:#hex is binary, keyid:text is text
                digits = v[1:]
                if not digits:
                    raise ValueError("has no hex digits after keyid:# (or @#)")
                if not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise ValueError("keyid:# (or @#) must be followed by hex digits (0-9, a-f) "
                                     "only, two per octet")
                if len(digits) % 2:
                    raise ValueError(f"has an odd number of hex digits ({len(digits)}) after "
                                     f"keyid:# (or @#); write two per octet, e.g. 0a")
                return cls(IdType.KEY_ID, checked(bytes.fromhex(digits)))
            if not v:
                raise ValueError("has nothing after keyid:")
            try:
                data = v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the keyid: text is not valid Unicode (it holds a lone "
                                 "surrogate)") from None
            return cls(IdType.KEY_ID, checked(data))
        if text.startswith("fqdn:"):
            if not text[5:]:
                raise ValueError("has nothing after fqdn:")
            return cls(IdType.FQDN, fqdn(text[5:]))
        if not text:
            raise ValueError("is empty")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            name = fqdn(text)
            if ":" in text:
                raise ValueError("is not an IP address, and a bare name (an FQDN) has no ':'; "
                                 "write fqdn:NAME if the name really holds one") from None
            return cls(IdType.FQDN, name)
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
            raise ValueError("an IP address identity has no zone (%...): the ID payload holds "
                             "the 16 address octets only")
        return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if self.id_type == IdType.FQDN:
            return self.data.decode("ascii", "replace")
        # binary, the form parse() reads back (keyid:TEXT would give other octets)
        return "keyid:#" + self.data.hex()


@dataclass
class IkeConfig:
    """What one IKE peer needs (from the TOML config, docs/config.md)."""

    name: str
    local_id: Identity
    remote_id: Identity
    auth: str  # "psk" | "pubkey"
    psk: bytes = field(default=b"", repr=False)
    private_key: ed25519.Ed25519PrivateKey | None = None
    peer_public_key: ed25519.Ed25519PublicKey | None = None
    local_ts: tuple[Network, ...] = ()
    remote_ts: tuple[Network, ...] = ()
    ike_proposals: tuple[IkeProposal, ...] = DEFAULT_IKE_PROPOSALS
    esp_proposals: tuple[EspProposal, ...] = DEFAULT_ESP_PROPOSALS
    force_encap: bool = False
    dpd_interval: float = 30.0
    retransmit_tries: int = RETRANSMIT_TRIES
    #: rekey child SAs this long after they were made (0: never), minus up to
    #: ``rekey_jitter`` of it at random so that peers do not collide (section 2.8)
    child_rekey_time: float = 3600.0
    #: rekey a child SA after this many ESP octets or packets in either direction (0: never)
    rekey_bytes: int = 0
    rekey_packets: int = 0
    #: rekey the IKE SA this long after it was made (0: never), with the same jitter
    ike_rekey_time: float = 14400.0
    rekey_jitter: float = 0.1
    #: settings of the child SAs' ESP (docs/config.md)
    replay_window: int = 1024
    tfc_pad: int = 0
    keepalive_interval: float = 20.0
    #: NAT keepalives: when IKE finds this side behind NAT (NAT), always, or never
    keepalive: KeepaliveMode = KeepaliveMode.NAT


# --- outputs and events ------------------------------------------------------------------------
@dataclass(frozen=True)
class Outgoing:
    data: bytes
    remote: Addr
    #: send from the NAT-T port (4500) with the non-ESP marker, else from port 500
    natt: bool


@dataclass(frozen=True)
class ChildUp:
    """A child SA pair to install: ``spi_in``/``keymat_in`` for what we receive."""

    ike: IkeSa
    spi_in: int
    spi_out: int
    suite: Suite
    esn: bool
    keymat_in: bytes
    keymat_out: bytes
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    #: the inbound SPI of the child SA this one replaces (a rekey), else None
    replaces: int | None = None


@dataclass(frozen=True)
class ChildDown:
    ike: IkeSa
    spi_in: int
    spi_out: int


@dataclass(frozen=True)
class IkeUp:
    ike: IkeSa
    remote: Addr
    local_behind_nat: bool
    remote_behind_nat: bool


@dataclass(frozen=True)
class IkeDown:
    ike: IkeSa
    reason: str


@dataclass(frozen=True)
class IkeRekeyed:
    """This IKE SA was replaced by ``new`` (its children moved there)."""

    old: IkeSa
    new: IkeSa


Event = ChildUp | ChildDown | IkeUp | IkeDown | IkeRekeyed


class State(Enum):
    INIT_SENT = "init-sent"
    AUTH_SENT = "auth-sent"
    INIT_DONE = "init-done"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    ESTABLISHED = "established"
    DEAD = "dead"


@dataclass
class Child:
    spi_in: int
    spi_out: int
    suite: Suite
    esn: bool
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    #: when to start a rekey (soft lifetime with jitter), or None
    rekey_at: float | None = None
    #: when the SA must go if no rekey replaced it (hard lifetime), or None
    expire_at: float | None = None


@dataclass
class _Request:
    """Our outstanding request (window size 1)."""

    message_id: int
    data: bytes
    kind: str
    sent_at: float
    tries: int = 1
    context: dict[str, Any] = field(default_factory=dict)
    #: the exchange type; its response must have the same one
    exchange: int = -1


class IkeError(Exception):
    """Raised inside the core to answer with an error notify."""

    def __init__(self, notify: int, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.notify = notify
        self.data = data


# --- helpers -----------------------------------------------------------------------------------
def _spi_bytes() -> bytes:
    while True:
        s = os.urandom(8)
        if s != bytes(8):
            return s


def _notify_name(notify_type: int) -> str:
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"notify {notify_type}"


def _retry_delay() -> float:
    return RETRY_AFTER_TEMPORARY_FAILURE * (1 + int.from_bytes(os.urandom(2), "big") / 65535)


def new_child_spi() -> int:
    while True:
        spi = int.from_bytes(os.urandom(4), "big")
        if spi > 0xFF:
            return spi


def _ip(addr: Addr) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(addr[0])


def _nat_hash(spi_i: bytes, spi_r: bytes, addr: Addr) -> bytes:
    return nat_detection_hash(spi_i, spi_r, ipaddress.ip_address(addr[0]), addr[1])


def _intersect(offered: Sequence[TrafficSelector | Any], allowed: Sequence[Network]
               ) -> list[Network]:
    """Narrowing (section 2.9): the parts of the offered ranges inside our allowed prefixes."""
    out: list[Network] = []
    for ts in offered:
        if not isinstance(ts, TrafficSelector):
            continue
        for net in ts.networks():
            for mine in allowed:
                if mine.version != net.version:
                    continue
                if net.subnet_of(mine):  # type: ignore[arg-type]
                    out.append(net)
                elif mine.subnet_of(net):  # type: ignore[arg-type]
                    out.append(mine)
    # collapse duplicates, keep order
    seen: list[Network] = []
    for n in out:
        if n not in seen:
            seen.append(n)
    return seen


def _ts_networks(payload: TSi | TSr | None) -> list[Network]:
    if payload is None:
        return []
    nets: list[Network] = []
    for ts in payload.selectors:
        if isinstance(ts, TrafficSelector):
            nets.extend(ts.networks())
    return nets


def _pick_ike(offered: SA, ours: Sequence[IkeProposal]) -> tuple[int, IkeProposal] | None:
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


def _pick_esp(offered: SA, ours: Sequence[EspProposal], ke: KE | None, *, pfs: bool = True
              ) -> tuple[Proposal, EspProposal, bool, int | None] | IkeError:
    """The responder's choice of an ESP proposal (by our order), with its PFS group (None:
    no key exchange) or the error to answer with.

    ``pfs`` False (IKE_AUTH, section 1.2): key exchange transforms are ignored. Otherwise
    (CREATE_CHILD_SA, sections 1.3.1 and 3.4) a proposal of ours with a group requires that
    group; one without takes no key exchange if the offer allows it (no DH transform, or
    NONE), else a group we implement. The KE payload must be in the chosen group: if it is
    not, but some group is acceptable, INVALID_KE_PAYLOAD names the one we want; if nothing
    is acceptable, NO_PROPOSAL_CHOSEN."""
    want: int | None = None  # the group for INVALID_KE_PAYLOAD
    for mine in ours:
        for prop in offered.proposals:
            if prop.protocol != ProtocolId.ESP or not _esp_spi_ok(prop.spi):
                continue
            encr = [(t.id, t.key_length) for t in prop.get(TransformType.ENCR)]
            bits = mine.suite.key_attr_bits
            if (mine.suite.transform_id, bits) not in encr:
                continue
            if prop.get(TransformType.INTEG):
                continue
            esns = [t.id for t in prop.get(TransformType.ESN)] or [EsnId.NO_ESN]
            esn = mine.esn and EsnId.ESN in esns
            if not esn and EsnId.NO_ESN not in esns:
                continue
            if not pfs:
                return prop, mine, esn, None
            dhs = [t.id for t in prop.get(TransformType.DH)] or [DhGroup.NONE]
            if mine.dh:
                groups = [mine.dh] if mine.dh in dhs else []
            else:
                groups = [DhGroup.NONE] if DhGroup.NONE in dhs else []
                groups += [g for g in dhs if g in SUPPORTED_GROUPS]
            if not groups:
                continue
            if ke is not None and ke.group in groups and ke.group != DhGroup.NONE:
                return prop, mine, esn, ke.group
            if ke is None and DhGroup.NONE in groups:
                return prop, mine, esn, None
            if want is None:
                want = next((g for g in groups if g != DhGroup.NONE), None)
    if want is not None:
        return IkeError(NotifyType.INVALID_KE_PAYLOAD, "another key exchange group wanted",
                        want.to_bytes(2, "big"))
    return IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal")


def _esp_spi_ok(spi: bytes) -> bool:
    """RFC 4303 section 2.1: 4 octets; 0 must not be sent, 1 to 255 are reserved by IANA."""
    return len(spi) == 4 and int.from_bytes(spi, "big") > 0xFF


def _esp_offer(proposals: Sequence[EspProposal], spi: int, pfs: int | None = None
               ) -> SA:
    props = []
    for i, p in enumerate(proposals, 1):
        esn = (EsnId.ESN, EsnId.NO_ESN) if p.esn else (EsnId.NO_ESN,)
        props.append(esp_proposal(i, spi.to_bytes(4, "big"), encr=p.suite.transform_id,
                                  key_length=p.suite.key_attr_bits, dh=pfs, esn=esn))
    return SA(props)


def _esp_choice(prop: Proposal, mine: EspProposal, esn: bool, spi: int, dh: int | None) -> SA:
    chosen = esp_proposal(prop.number, spi.to_bytes(4, "big"), encr=mine.suite.transform_id,
                          key_length=mine.suite.key_attr_bits, dh=dh,
                          esn=(EsnId.ESN if esn else EsnId.NO_ESN,))
    return SA([chosen])


def _suite_of(prop: Proposal) -> tuple[Suite, bool] | None:
    for t in prop.get(TransformType.ENCR):
        for s in SUITES.values():
            if s.transform_id == t.id and s.key_attr_bits == t.key_length:
                esn = any(e.id == EsnId.ESN for e in prop.get(TransformType.ESN))
                return s, esn
    return None


# --- the IKE SA --------------------------------------------------------------------------------
class IkeSa:
    """One IKE SA and its child SAs."""

    #: a responder SA waiting for IKE_AUTH goes after this long (the manager sets it)
    half_open_timeout = 30.0

    def __init__(self, config: IkeConfig | None, *, initiator: bool, local: Addr,
                 remote: Addr, now: float,
                 lookup: Callable[[Identity, Identity | None], IkeConfig | None] | None = None,
                 max_children: int = MAX_CHILDREN) -> None:
        self.config = config
        #: CREATE_CHILD_SA requests for new child SAs beyond this many are refused with
        #: NO_ADDITIONAL_SAS (section 3.10.1); rekeys are not counted
        self.max_children = max_children
        self.initiator = initiator
        self.local = local
        self.remote = remote
        self.lookup = lookup
        self.state = State.INIT_SENT if initiator else State.INIT_DONE
        self.spi_i = _spi_bytes() if initiator else bytes(8)
        self.spi_r = bytes(8)
        self.natt = bool(config and config.force_encap)
        if self.natt and remote[1] == IKE_PORT:
            self.remote = (remote[0], NAT_T_PORT)
        self.local_behind_nat = False
        self.remote_behind_nat = False
        self.children: list[Child] = []
        self.outputs: list[Outgoing] = []
        self.events: list[Event] = []
        self.last_rx = now
        self.created = now
        self._request: _Request | None = None
        self._next_request_id = 0
        self._peer_next_id = 0  # the message ID we expect in the peer's next request
        self._last_response: tuple[int, bytes] | None = None
        #: while a request is handled: where its response goes (section 2.11: back to the
        #: address and port the request came from), and over which port
        self._reply_to: tuple[Addr, bool] | None = None
        self._prf: kc.Prf | None = None
        self._alg: kc.EncrAlg | None = None
        self._proposal: IkeProposal | None = None
        self._keys: kc.IkeKeys | None = None
        self._sk_out: kc.AeadSk | None = None
        self._sk_in: kc.AeadSk | None = None
        self._ke: kc.KeyExchange | None = None
        self._ni = b""
        self._nr = b""
        self._init_request = b""  # RealMessage1
        self._init_response = b""  # RealMessage2
        self._cookie = b""
        self._peer_hash_ok = False  # peer sent SIGNATURE_HASH_ALGORITHMS with Identity
        self._pending_child: dict[str, Any] = {}
        self.dead_reason = ""
        #: replaced by a rekey (its deletion is then expected, not a failure)
        self.rekeyed = False
        #: the peer sent INITIAL_CONTACT: it has no other SAs with us (section 2.4)
        self.initial_contact = False
        #: when we start an IKE SA rekey, or None
        self.ike_rekey_at: float | None = None
        #: child rekeys the peer started, by the old inbound SPI: (their Ni, our Nr, new SPI)
        self._peer_rekeys: dict[int, tuple[bytes, bytes, int]] = {}
        #: section 2.8.2: the peer's rekey of this SA that we answered while ours was
        #: outstanding: (their Ni, our Nr, the new SA)
        self._peer_ike_rekey: tuple[bytes, bytes, IkeSa] | None = None
        #: that new SA's old one, until the collision is resolved
        self._rekeyed_from: IkeSa | None = None
        #: the peer deleted this SA while our rekey of it was outstanding (section 2.8.2)
        self._closing_by_peer = False
        #: child SAs gone past their hard lifetime while a request of ours was outstanding:
        #: their Delete goes as soon as the window is free
        self._unsent_deletes: list[Child] = []

    # --- common ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name if self.config else "?"

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    def pop_outputs(self) -> list[Outgoing]:
        out, self.outputs = self.outputs, []
        return out

    def pop_events(self) -> list[Event]:
        ev, self.events = self.events, []
        return ev

    def keys_for_log(self) -> tuple[bytes, bytes, bytes, bytes, int, int] | None:
        """(SPIi, SPIr, SK_ei, SK_er, encr transform, key bits) for a key log."""
        if self._keys is None or self._alg is None:
            return None
        return (self.spi_i, self.spi_r, self._keys.sk_ei, self._keys.sk_er,
                self._alg.transform_id, self._alg.key_bits)

    def _header(self, exchange: int, message_id: int, response: bool) -> Header:
        return Header.make(exchange, self.spi_i, self.spi_r, message_id=message_id,
                           initiator=self.initiator, response=response)

    def _send(self, data: bytes) -> None:
        self.outputs.append(Outgoing(data, self.remote, self.natt))

    def _die(self, reason: str) -> None:
        if self.state is State.DEAD:
            return
        self.state = State.DEAD
        self.dead_reason = reason
        for c in self.children:
            self.events.append(ChildDown(self, c.spi_in, c.spi_out))
        self.children.clear()
        self._request = None
        self.events.append(IkeDown(self, reason))

    def _request_send(self, exchange: int, payloads: list[Payload], kind: str, now: float,
                      **context: Any) -> None:
        mid = self._next_request_id
        self._next_request_id += 1
        data = encode_message(self._header(exchange, mid, False), payloads, sk=self._sk_out)
        self._request = _Request(mid, data, kind, now, context=context, exchange=exchange)
        self._send(data)

    def _respond(self, exchange: int, message_id: int, payloads: list[Payload],
                 encrypted: bool = True) -> None:
        data = encode_message(self._header(exchange, message_id, True), payloads,
                              sk=self._sk_out if encrypted else None)
        self._last_response = (message_id, data)
        self._reply(data)

    def _reply(self, data: bytes) -> None:
        """Send a response: to where the request came from if the caller said so."""
        if self._reply_to is not None:
            self.outputs.append(Outgoing(data, *self._reply_to))
        else:
            self._send(data)

    # --- timers ----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        if self.state is State.DEAD:
            return None
        times = [c.expire_at for c in self.children if c.expire_at is not None]
        if self._request is not None:
            times.append(self._request.sent_at + RETRANSMIT_BASE * 2 ** (self._request.tries - 1))
        elif self.state is State.ESTABLISHED and self._unsent_deletes:
            times.append(self.last_rx)  # now
        elif self.state is State.ESTABLISHED:
            if self.config and self.config.dpd_interval > 0:
                times.append(self.last_rx + self.config.dpd_interval)
            times += [c.rekey_at for c in self.children if c.rekey_at is not None]
            if self.ike_rekey_at is not None and not self.rekeyed:
                times.append(self.ike_rekey_at)
        elif self.state is State.INIT_DONE:
            times.append(self.created + self.half_open_timeout)
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        if self.state is State.DEAD:
            return
        expired = [c for c in self.children if c.expire_at is not None and c.expire_at <= now]
        for c in expired:
            # past its hard lifetime without a rekey: it may not carry traffic any longer
            self.children.remove(c)
            self._forget_peer_rekey(c.spi_in)
            self.events.append(ChildDown(self, c.spi_in, c.spi_out))
            self._unsent_deletes.append(c)
        if (self._unsent_deletes and self._request is None
                and self.state is State.ESTABLISHED):
            gone, self._unsent_deletes = self._unsent_deletes, []
            self._request_send(ExchangeType.INFORMATIONAL,
                               [Delete(ProtocolId.ESP, [c.spi_in.to_bytes(4, "big")
                                                        for c in gone])],
                               "delete child", now, closing=[c.spi_out for c in gone])
            return
        req = self._request
        if req is not None:
            due = req.sent_at + RETRANSMIT_BASE * 2 ** (req.tries - 1)
            if now >= due:
                tries = self.config.retransmit_tries if self.config else RETRANSMIT_TRIES
                if req.tries >= tries:
                    self._die(f"no response to {req.kind} after {req.tries} tries")
                    return
                req.tries += 1
                req.sent_at = now
                self._send(req.data)
            return
        if self.state is State.INIT_DONE and now >= self.created + self.half_open_timeout:
            self._die("half-open IKE SA timed out")
            return
        if self.state is not State.ESTABLISHED:
            return
        if self.ike_rekey_at is not None and now >= self.ike_rekey_at and not self.rekeyed:
            self.ike_rekey_at = None
            self.rekey_ike(now)
            return
        due = [c for c in self.children if c.rekey_at is not None and c.rekey_at <= now]
        if due:
            due[0].rekey_at = None  # one attempt per soft lifetime
            self.rekey_child(due[0].spi_in, now)
            return
        if (self.config and self.config.dpd_interval > 0
                and now >= self.last_rx + self.config.dpd_interval):
            self._request_send(ExchangeType.INFORMATIONAL, [], "liveness check", now)

    # --- initiator: IKE_SA_INIT --------------------------------------------------------------
    def start(self, now: float, group: int | None = None) -> None:
        """Send IKE_SA_INIT (again, with ``group`` after INVALID_KE_PAYLOAD or a cookie)."""
        assert self.config is not None and self.initiator
        props = self.config.ike_proposals
        group = group or props[0].dh
        # Section 2.6: a retry with a COOKIE repeats the request with all other payloads
        # unchanged (the responder's cookie covers Ni); after INVALID_KE_PAYLOAD only the KE
        # changes (2.6.1)
        if self._ke is None or self._ke.group != group:
            self._ke = kc.KeyExchange(group)
        if not self._ni:
            self._ni = os.urandom(NONCE_LEN)
        sa = SA([ike_proposal(i, encr=p.encr, prf=p.prf, dh=p.dh, key_length=p.key_bits)
                 for i, p in enumerate(props, 1)])
        payloads: list[Payload] = []
        if self._cookie:
            payloads.append(Notify(NotifyType.COOKIE, self._cookie))
        payloads += [SA(sa.proposals), KE(group, self._ke.public), Nonce(self._ni)]
        src_hash = _nat_hash(self.spi_i, bytes(8), self.local)
        if self.config.force_encap:
            src_hash = os.urandom(20)  # claim NAT so that everything moves to UDP 4500
        payloads += [
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP, src_hash),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                   _nat_hash(self.spi_i, bytes(8), self.remote)),
            Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, HashAlgorithm.IDENTITY.to_bytes(2,
                                                                                         "big")),
        ]
        self._next_request_id = 0
        self._request_send(ExchangeType.IKE_SA_INIT, payloads, "IKE_SA_INIT", now)
        self._init_request = self._request.data if self._request else b""
        self.state = State.INIT_SENT

    def _on_init_response(self, msg: Message, raw: bytes, now: float) -> None:
        assert self.config is not None and self._ke is not None
        ke_err = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if ke_err is not None and len(ke_err.data) == 2:
            group = int.from_bytes(ke_err.data, "big")
            if group in [p.dh for p in self.config.ike_proposals] and group != self._ke.group:
                self._request = None
                self.start(now, group)
                return
            self._die(f"peer wants key exchange group {group}, which we do not offer")
            return
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None and not self._cookie:
            self._cookie = cookie.data
            self._request = None
            self.start(now, self._ke.group)
            return
        for n in msg.notifies():
            if n.is_error:
                self._die(f"IKE_SA_INIT refused: {_notify_name(n.notify_type)}")
                return
        sa, ke, nonce = msg.get(SA), msg.get(KE), msg.get(Nonce)
        if sa is None or ke is None or nonce is None or len(sa.proposals) != 1:
            self._die("malformed IKE_SA_INIT response")
            return
        chosen = _pick_ike(sa, self.config.ike_proposals)
        if chosen is None or chosen[1].dh != ke.group or ke.group != self._ke.group:
            self._die("IKE_SA_INIT response chose a proposal we did not offer")
            return
        self._request = None
        self.spi_r = msg.header.spi_r
        self._nr = nonce.data
        self._init_response = raw
        self._detect_nat(msg)
        try:
            self._derive(chosen[1], self._ke.shared(ke.data))
        except ValueError as e:
            self._die(f"key exchange failed: {e}")
            return
        self._peer_hash_ok = self._has_identity_hash(msg)
        if self.local_behind_nat or self.remote_behind_nat:
            self._switch_to_natt()
        self._send_auth(now)

    def _switch_to_natt(self) -> None:
        """Section 2.23: after NAT is detected the initiator moves to port 4500 (the marker
        goes with it); a peer already reached on a non-500 port stays there."""
        self.natt = True
        if self.remote[1] == IKE_PORT:
            self.remote = (self.remote[0], NAT_T_PORT)

    def _detect_nat(self, msg: Message) -> None:
        """Section 2.23: compare the peer's NAT_DETECTION hashes with the addresses we see."""
        spi_r = msg.header.spi_r if self.initiator else bytes(8)
        srcs = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
        dsts = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
        if not srcs or not dsts:
            return
        self.remote_behind_nat = _nat_hash(self.spi_i, spi_r, self.remote) not in srcs
        self.local_behind_nat = _nat_hash(self.spi_i, spi_r, self.local) not in dsts

    @staticmethod
    def _has_identity_hash(msg: Message) -> bool:
        n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if n is None:
            return False
        try:
            return HashAlgorithm.IDENTITY in n.hash_algorithms()
        except ValueError:
            return False

    def _derive(self, prop: IkeProposal, g_ir: bytes, skeyseed: bytes | None = None) -> None:
        self._proposal = prop
        self._prf = kc.Prf(prop.prf)
        self._alg = kc.encr_alg(prop.encr, prop.key_bits)
        if skeyseed is None:
            skeyseed = kc.skeyseed_initial(self._prf, self._ni, self._nr, g_ir)
        self._keys = kc.derive_ike_keys(self._prf, self._alg, skeyseed, self._ni, self._nr,
                                        self.spi_i, self.spi_r)
        ei = kc.AeadSk(self._alg, self._keys.sk_ei)
        er = kc.AeadSk(self._alg, self._keys.sk_er)
        self._sk_out, self._sk_in = (ei, er) if self.initiator else (er, ei)

    # --- AUTH -------------------------------------------------------------------------------
    def _auth_payload(self, id_body: bytes) -> Auth:
        assert self.config is not None and self._prf is not None and self._keys is not None
        if self.initiator:
            octets = kc.signed_octets(self._init_request, self._nr, self._prf,
                                      self._keys.sk_pi, id_body)
        else:
            octets = kc.signed_octets(self._init_response, self._ni, self._prf,
                                      self._keys.sk_pr, id_body)
        if self.config.auth == "psk":
            return Auth(AuthMethod.SHARED_KEY_MIC, kc.psk_auth(self._prf, self.config.psk,
                                                               octets))
        assert self.config.private_key is not None
        return Auth(AuthMethod.DIGITAL_SIGNATURE, kc.ed25519_auth(self.config.private_key,
                                                                  octets))

    def _verify_auth(self, config: IkeConfig, auth: Auth, peer_id_body: bytes) -> bool:
        assert self._prf is not None and self._keys is not None
        if self.initiator:  # the peer is the responder
            octets = kc.signed_octets(self._init_response, self._ni, self._prf,
                                      self._keys.sk_pr, peer_id_body)
        else:
            octets = kc.signed_octets(self._init_request, self._nr, self._prf,
                                      self._keys.sk_pi, peer_id_body)
        if config.auth == "psk":
            if auth.method != AuthMethod.SHARED_KEY_MIC:
                return False
            import hmac

            return hmac.compare_digest(auth.data, kc.psk_auth(self._prf, config.psk, octets))
        if auth.method != AuthMethod.DIGITAL_SIGNATURE or config.peer_public_key is None:
            return False
        return kc.ed25519_verify(config.peer_public_key, auth.data, octets)

    def _id_payload(self, cls: type[IDi] | type[IDr], ident: Identity) -> IDi | IDr:
        return cls(ident.id_type, ident.data)

    def _send_auth(self, now: float) -> None:
        assert self.config is not None
        idi = self._id_payload(IDi, self.config.local_id)
        spi = new_child_spi()
        payloads: list[Payload] = [idi, Notify(NotifyType.INITIAL_CONTACT),
                                   self._id_payload(IDr, self.config.remote_id),
                                   self._auth_payload(idi.encode_body()),
                                   _esp_offer(self.config.esp_proposals, spi),
                                   TSi.of(*self.config.local_ts), TSr.of(*self.config.remote_ts)]
        self.state = State.AUTH_SENT
        self._request_send(ExchangeType.IKE_AUTH, payloads, "IKE_AUTH", now, spi_in=spi)

    def _on_auth_response(self, msg: Message, now: float) -> None:
        assert self.config is not None and self._request is not None
        spi_in = int(self._request.context["spi_in"])
        self._request = None
        for n in msg.notifies():
            if n.is_error and n.notify_type != NotifyType.TS_UNACCEPTABLE and \
                    n.notify_type != NotifyType.NO_PROPOSAL_CHOSEN:
                self._die(f"IKE_AUTH refused: {_notify_name(n.notify_type)}")
                return
        idr, auth = msg.get(IDr), msg.get(Auth)
        if idr is None or auth is None:
            self._die("IKE_AUTH response without IDr or AUTH")
            return
        if Identity(idr.id_type, idr.data) != self.config.remote_id:
            self._die(f"peer identified as {Identity(idr.id_type, idr.data)}, "
                      f"not {self.config.remote_id}")
            return
        if not self._verify_auth(self.config, auth, idr.encode_body()):
            self._die("peer authentication failed")
            return
        self._established(now)
        self.events.append(IkeUp(self, self.remote, self.local_behind_nat,
                                 self.remote_behind_nat))
        sa = msg.get(SA)
        if sa is None or len(sa.proposals) != 1:
            return  # IKE SA without a child (the peer refused it)
        self._child_from_response(sa, msg, spi_in, self._ni, self._nr, b"", None)

    def _child_from_response(self, sa: SA, msg: Message, spi_in: int, ni: bytes, nr: bytes,
                             g_ir: bytes, replaces: int | None) -> None:
        """We initiated the exchange: keymat i->r is what we send."""
        assert self._prf is not None and self._keys is not None and self.config is not None
        prop = sa.proposals[0]
        found = _suite_of(prop)
        if found is None or not _esp_spi_ok(prop.spi):
            self._die("peer chose an ESP proposal we did not offer")
            return
        suite, esn = found
        spi_out = int.from_bytes(prop.spi, "big")
        i2r, r2i = kc.child_keymat(self._prf, self._keys.sk_d, ni, nr, suite.keymat_len, g_ir)
        local_ts = tuple(_ts_networks(msg.get(TSi))) or self.config.local_ts
        remote_ts = tuple(_ts_networks(msg.get(TSr))) or self.config.remote_ts
        self._add_child(Child(spi_in, spi_out, suite, esn, local_ts, remote_ts),
                        keymat_in=r2i, keymat_out=i2r, replaces=replaces)

    def _soft_deadline(self, lifetime: float) -> float | None:
        """When to start a rekey: ``lifetime`` after now, less a random jitter (section 2.8:
        so that two peers with the same lifetime rarely start at once)."""
        if lifetime <= 0 or self.config is None:
            return None
        jitter = self.config.rekey_jitter * lifetime
        return self.last_rx + lifetime - int.from_bytes(os.urandom(2), "big") / 65535 * jitter

    def _established(self, now: float) -> None:
        self.state = State.ESTABLISHED
        self.last_rx = now
        if self.config is not None:
            self.ike_rekey_at = self._soft_deadline(self.config.ike_rekey_time)

    def _add_child(self, child: Child, *, keymat_in: bytes, keymat_out: bytes,
                   replaces: int | None) -> None:
        if self.config is not None:
            child.rekey_at = self._soft_deadline(self.config.child_rekey_time)
            if self.config.child_rekey_time > 0:
                # hard lifetime: the soft one plus the jitter range again
                child.expire_at = self.last_rx + self.config.child_rekey_time * (
                    1 + self.config.rekey_jitter)
        self.children.append(child)
        self.events.append(ChildUp(self, child.spi_in, child.spi_out, child.suite, child.esn,
                                   keymat_in, keymat_out, child.local_ts, child.remote_ts,
                                   replaces))

    # --- responder ----------------------------------------------------------------------------
    def respond_init(self, msg: Message, raw: bytes, now: float,
                     proposals: Sequence[IkeProposal]) -> None:
        """Answer an IKE_SA_INIT request (the manager has checked cookies)."""
        sa, ke, nonce = msg.get(SA), msg.get(KE), msg.get(Nonce)
        self.spi_i = msg.header.spi_i
        self._init_request = raw
        if sa is None or ke is None or nonce is None:
            self._refuse_init(NotifyType.INVALID_SYNTAX)
            return
        chosen = _pick_ike(sa, proposals)
        if chosen is None:
            self._refuse_init(NotifyType.NO_PROPOSAL_CHOSEN)
            return
        number, prop = chosen
        if ke.group != prop.dh:
            self._refuse_init(NotifyType.INVALID_KE_PAYLOAD, prop.dh.to_bytes(2, "big"))
            return
        self._ke = kc.KeyExchange(prop.dh)
        try:
            g_ir = self._ke.shared(ke.data)
        except ValueError:
            self._refuse_init(NotifyType.INVALID_SYNTAX)
            return
        self.spi_r = _spi_bytes()
        self._ni = nonce.data
        self._nr = os.urandom(NONCE_LEN)
        self._detect_nat(msg)
        self.natt = self.local_behind_nat or self.remote_behind_nat
        self._peer_hash_ok = self._has_identity_hash(msg)
        payloads: list[Payload] = [
            SA([ike_proposal(number, encr=prop.encr, prf=prop.prf, dh=prop.dh,
                             key_length=prop.key_bits)]),
            KE(prop.dh, self._ke.public), Nonce(self._nr),
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
                   _nat_hash(self.spi_i, self.spi_r, self.local)),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                   _nat_hash(self.spi_i, self.spi_r, self.remote)),
        ]
        if self._peer_hash_ok:
            payloads.append(Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS,
                                   HashAlgorithm.IDENTITY.to_bytes(2, "big")))
        data = encode_message(self._header(ExchangeType.IKE_SA_INIT, 0, True), payloads)
        self._init_response = data
        self._last_response = (0, data)
        self._peer_next_id = 1
        self._derive(prop, g_ir)
        # the response goes back the way the request came (port 500 or 4500)
        self.outputs.append(Outgoing(data, self.remote, self._request_natt))
        self.state = State.INIT_DONE

    _request_natt = False

    def _refuse_init(self, notify: int, data: bytes = b"") -> None:
        out = encode_message(self._header(ExchangeType.IKE_SA_INIT, 0, True),
                             [Notify(notify, data)])
        self.outputs.append(Outgoing(out, self.remote, self._request_natt))
        self._die(f"IKE_SA_INIT refused with notify {notify}")

    def _on_auth_request(self, msg: Message, now: float) -> None:
        idi, auth = msg.get(IDi), msg.get(Auth)
        if idi is None or auth is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "IKE_AUTH request without IDi or AUTH")
        peer_id = Identity(idi.id_type, idi.data)
        idr = msg.get(IDr)
        config = self.lookup(peer_id, Identity(idr.id_type, idr.data) if idr else None) \
            if self.lookup else self.config
        if config is None or not self._verify_auth(config, auth, idi.encode_body()):
            self._respond(ExchangeType.IKE_AUTH, msg.header.message_id,
                          [Notify(NotifyType.AUTHENTICATION_FAILED)])
            self.config = config or self.config  # for the peer's name in the log
            self._die(f"authentication of {peer_id} failed"
                      + ("" if config else ": no peer with that identity"))
            return
        self.config = config
        self.last_rx = now
        self.initial_contact = msg.notify(NotifyType.INITIAL_CONTACT) is not None
        my_idr = self._id_payload(IDr, config.local_id)
        payloads: list[Payload] = [my_idr, self._auth_payload(my_idr.encode_body())]
        child_payloads, child = self._negotiate_child(msg, self._ni, self._nr, None,
                                                      pfs_allowed=False)
        payloads += child_payloads
        self._established(now)
        self._respond(ExchangeType.IKE_AUTH, msg.header.message_id, payloads)
        self.events.append(IkeUp(self, self.remote, self.local_behind_nat,
                                 self.remote_behind_nat))
        if child is not None:
            child()

    def _negotiate_child(self, msg: Message, ni: bytes, nr: bytes, ke_payload: KE | None,
                         replaces: int | None = None, *, pfs_allowed: bool = True
                         ) -> tuple[list[Payload], Callable[[], None] | None]:
        """Responder side of a child SA: the payloads to answer with, and a thunk that
        installs the child once the response is queued. Nothing changes before the thunk
        runs, so that an error answer leaves the SA as it was."""
        assert self.config is not None and self._prf is not None and self._keys is not None
        sa, tsi, tsr = msg.get(SA), msg.get(TSi), msg.get(TSr)
        if sa is None or tsi is None or tsr is None:
            return [Notify(NotifyType.NO_PROPOSAL_CHOSEN)], None
        picked = _pick_esp(sa, self.config.esp_proposals, ke_payload, pfs=pfs_allowed)
        if isinstance(picked, IkeError):
            return [Notify(picked.notify, picked.data)], None
        prop, mine, esn, pfs = picked
        kex = kc.KeyExchange(pfs) if pfs is not None else None
        g_ir = b""
        if kex is not None:
            assert ke_payload is not None
            try:
                g_ir = kex.shared(ke_payload.data)
            except ValueError:  # wrong length, not on the curve, degenerate
                return [Notify(NotifyType.INVALID_SYNTAX)], None
        # their TSi is their side (our remote), their TSr our side
        remote_ts = tuple(_intersect(tsi.selectors, self.config.remote_ts))
        local_ts = tuple(_intersect(tsr.selectors, self.config.local_ts))
        if not remote_ts or not local_ts:
            return [Notify(NotifyType.TS_UNACCEPTABLE)], None
        spi_in = new_child_spi()
        spi_out = int.from_bytes(prop.spi, "big")
        payloads: list[Payload] = [_esp_choice(prop, mine, esn, spi_in, pfs)]
        if kex is not None:
            payloads.append(KE(kex.group, kex.public))
        payloads += [TSi.of(*remote_ts), TSr.of(*local_ts)]
        i2r, r2i = kc.child_keymat(self._prf, self._keys.sk_d, ni, nr, mine.suite.keymat_len,
                                   g_ir)
        child = Child(spi_in, spi_out, mine.suite, esn, local_ts, remote_ts)

        def install() -> None:
            self._add_child(child, keymat_in=i2r, keymat_out=r2i, replaces=replaces)

        return payloads, install

    # --- receiving ----------------------------------------------------------------------------
    def receive(self, raw: bytes, now: float, source: Addr | None = None,
                natt: bool | None = None) -> bool:
        """A message for this SA (its SPIs matched). Never raises for bad input.

        ``source`` and ``natt`` say where it came from (the address, and whether on port
        4500); responses go back there (section 2.11). Returns True when the message was
        authenticated and new (not a retransmission): the response to our outstanding
        request or the peer's next request, both protected with this SA's keys. Only then
        may the peer's address change (section 2.23), and only such a message (or the
        IKE_SA_INIT response in INIT_SENT) changes any state of this SA: nothing in the
        clear after IKE_SA_INIT does, so that nobody on the path can use up a message ID,
        replace the response cache, or move the SA with a spoofed header.
        """
        if self.state is State.DEAD:
            return False
        self._reply_to = (source, bool(natt)) if source is not None and natt is not None \
            else None
        try:
            return self._receive(raw, now, source, bool(natt))
        finally:
            self._reply_to = None

    def _receive(self, raw: bytes, now: float, source: Addr | None, natt: bool) -> bool:
        try:
            msg = decode_message(raw, sk=self._sk_in if self._keys else None)
        except IkeIntegrityError:
            return False  # silently dropped (section 2.21.2)
        except IkeDecodeError as e:
            hdr = e.header
            if hdr is not None and not hdr.is_response and e.authenticated and e.notify:
                # malformed inside the protection: the peer's own message, answered with the
                # notify within the window like any request (section 3.10.1)
                if not self._new_request(hdr.message_id):
                    return False
                self._peer_next_id = hdr.message_id + 1
                self.last_rx = now
                self._respond(hdr.exchange_type, hdr.message_id,
                              [Notify(e.notify, e.notify_data)])
            return False
        hdr = msg.header
        if not msg.encrypted:
            return self._on_clear(msg, raw, now)
        if hdr.is_response:
            req = self._request
            if (req is None or hdr.message_id != req.message_id
                    or hdr.exchange_type != req.exchange):
                return False  # not the answer to our outstanding request: drop
            self._adopt_source(source, natt)
            self._on_response(msg, raw, now)
            return True
        if not self._new_request(hdr.message_id):
            return False
        self._adopt_source(source, natt)
        self._on_request(msg, raw, now)
        return True

    def _new_request(self, mid: int) -> bool:
        """Window size 1 (section 2.1): True for the peer's next request; a retransmission
        of the last one is answered from the cache; anything else is dropped."""
        if self._last_response is not None and mid == self._last_response[0]:
            self._reply(self._last_response[1])
            return False
        return mid == self._peer_next_id

    def _on_clear(self, msg: Message, raw: bytes, now: float) -> bool:
        """An unprotected message. After IKE_SA_INIT only two are of any use: the IKE_SA_INIT
        response while we wait for it, and a retransmission of the IKE_SA_INIT request we
        answered (the same octets: section 2.1), answered from the cache. The rest is
        dropped without a trace."""
        hdr = msg.header
        if hdr.exchange_type != ExchangeType.IKE_SA_INIT or hdr.message_id != 0:
            return False
        req = self._request
        if hdr.is_response:
            if (self.state is State.INIT_SENT and req is not None
                    and req.kind == "IKE_SA_INIT"):
                self._on_response(msg, raw, now)
            return False
        if (not self.initiator and self.state is State.INIT_DONE and self._init_response
                and raw == self._init_request):
            if self._reply_to is not None:
                self._reply(self._init_response)
            else:  # back over the port the request first came on
                self.outputs.append(Outgoing(self._init_response, self.remote,
                                             self._request_natt))
        return False

    def _adopt_source(self, source: Addr | None, natt: bool) -> None:
        """Section 2.23: an authenticated new message on port 4500 from another address or
        port (a NAT mapping changed) moves the SA there. A host behind a NAT does not do
        this once the SA is up (2.23: SHOULD NOT), unless the peer is behind a NAT too (both
        sides behind NAT, one reached through a port forward, is supported, and the other
        side's mapping can change like any). During IKE_AUTH the responder learns the port
        the initiator floated to."""
        if source is None or not natt:
            return
        if (self.state is State.ESTABLISHED and self.local_behind_nat
                and not self.remote_behind_nat):
            return
        self.remote = source
        self.natt = True

    def _on_response(self, msg: Message, raw: bytes, now: float) -> None:
        req = self._request
        assert req is not None
        self.last_rx = now
        if req.kind == "IKE_SA_INIT":
            self._on_init_response(msg, raw, now)
        elif req.kind == "IKE_AUTH":
            self._on_auth_response(msg, now)
        elif req.kind == "rekey child":
            self._on_rekey_child_response(msg, now)
        elif req.kind == "rekey IKE":
            self._on_rekey_ike_response(msg, now)
        else:
            self._request = None
            if req.kind == "delete IKE SA":
                self._die("deleted")

    def _on_request(self, msg: Message, raw: bytes, now: float) -> None:
        """An authenticated request with the next message ID: it uses the ID up whatever
        the answer (section 2.1), and that answer is cached for its retransmissions."""
        hdr = msg.header
        mid = hdr.message_id
        self.last_rx = now
        self._peer_next_id = mid + 1
        try:
            if hdr.exchange_type == ExchangeType.IKE_AUTH and self.state is State.INIT_DONE:
                self._on_auth_request(msg, now)
            elif self.state is not State.ESTABLISHED:
                raise IkeError(NotifyType.INVALID_SYNTAX, "request before the IKE SA is up")
            elif hdr.exchange_type == ExchangeType.INFORMATIONAL:
                self._on_informational(msg, now)
            elif hdr.exchange_type == ExchangeType.CREATE_CHILD_SA:
                self._on_create_child(msg, now)
            else:
                raise IkeError(NotifyType.INVALID_SYNTAX, "unexpected exchange")
        except IkeError as e:
            self._respond(hdr.exchange_type, mid, [Notify(e.notify, e.data)])

    # --- INFORMATIONAL -----------------------------------------------------------------------
    def _on_informational(self, msg: Message, now: float) -> None:
        answer: list[Payload] = []
        dead = False
        for d in msg.get_all(Delete):
            if d.protocol == ProtocolId.IKE:
                dead = True
            elif d.protocol == ProtocolId.ESP:
                ours = []
                for spi in d.spis:
                    out_spi = int.from_bytes(spi, "big")
                    for c in list(self.children):
                        if c.spi_out == out_spi:
                            # section 2.25.1: also if we are rekeying it (our rekey's answer
                            # then finds no old SA to replace)
                            self.children.remove(c)
                            self._forget_peer_rekey(c.spi_in)
                            ours.append(c.spi_in.to_bytes(4, "big"))
                            self.events.append(ChildDown(self, c.spi_in, c.spi_out))
                if ours:
                    answer.append(Delete(ProtocolId.ESP, ours))
        # everything else (DPD, MOBIKE's NO_ADDITIONAL_ADDRESSES, ...) gets an empty answer
        self._respond(ExchangeType.INFORMATIONAL, msg.header.message_id, answer)
        if dead and (self._request is not None and self._request.kind == "rekey IKE"
                     and self._peer_ike_rekey is not None):
            # Sections 2.8.2 and 2.25.2: both sides rekeyed this SA, the peer's new SA won
            # and the peer deletes this one before the answer to our rekey came. Answered as
            # usual; this SA stays until that answer only to delete the redundant SA our
            # rekey made at the peer (nobody else would).
            self._closing_by_peer = True
            return
        if dead:
            old = self._rekeyed_from
            if old is not None and old.state is not State.DEAD:
                # section 2.8.2: the peer found this SA redundant before the answer to our
                # own rekey reached us: the children wait in the old SA for the survivor
                old.children += self.children
                self.children = []
                self.rekeyed = True
                self._rekeyed_from = None
            self._die("deleted by the peer")

    def _forget_peer_rekey(self, spi_in: int) -> None:
        """The child SA ``spi_in`` is gone: its entry in ``_peer_rekeys`` too, unless our
        own rekey of it is outstanding (its response still needs it for section 2.8.1)."""
        req = self._request
        if req is None or req.kind != "rekey child" or req.context.get("old") != spi_in:
            self._peer_rekeys.pop(spi_in, None)

    def forget(self, reason: str) -> None:
        """Drop this SA without a word to the peer (it has forgotten it: INITIAL_CONTACT)."""
        self._die(reason)

    def delete(self, now: float) -> None:
        """Delete the IKE SA (and with it its children)."""
        if self.state is State.ESTABLISHED and self._request is None:
            self._request_send(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE)],
                               "delete IKE SA", now)
        else:
            self._die("deleted")

    # --- CREATE_CHILD_SA ----------------------------------------------------------------------
    def _on_create_child(self, msg: Message, now: float) -> None:
        nonce = msg.get(Nonce)
        sa = msg.get(SA)
        if nonce is None or sa is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA without SA or Nonce")
        if sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
            self._on_rekey_ike(msg, sa, nonce, now)
            return
        nr = os.urandom(NONCE_LEN)
        rekey = msg.notify(NotifyType.REKEY_SA)
        replaces = None
        if rekey is not None:
            old_out = int.from_bytes(rekey.spi, "big")
            old = next((c for c in self.children if c.spi_out == old_out), None)
            if old is None:
                req = self._request
                closing = [c.spi_out for c in self._unsent_deletes]
                if req is not None and req.kind == "delete child":
                    closing += req.context.get("closing", [])
                if old_out in closing:
                    # section 2.25.1: a rekey of a child SA we are closing
                    raise IkeError(NotifyType.TEMPORARY_FAILURE, "child SA being deleted")
                raise IkeError(NotifyType.CHILD_SA_NOT_FOUND, "rekey of an unknown child SA")
            replaces = old.spi_in
        elif len(self.children) >= self.max_children:
            raise IkeError(NotifyType.NO_ADDITIONAL_SAS,
                           f"already {len(self.children)} child SAs")
        payloads, install = self._negotiate_child(msg, nonce.data, nr, msg.get(KE), replaces)
        if install is not None:
            payloads.insert(1, Nonce(nr))
        self._respond(ExchangeType.CREATE_CHILD_SA, msg.header.message_id, payloads)
        if install is not None:
            install()
            if replaces is not None:
                self._peer_rekeys[replaces] = (nonce.data, nr, self.children[-1].spi_in)

    def _on_rekey_ike(self, msg: Message, sa: SA, nonce: Nonce, now: float) -> None:
        """Section 1.3.2: the peer replaces this IKE SA; we answer and hand over."""
        assert self._prf is not None and self._keys is not None and self.config is not None
        req = self._request
        if req is not None and req.kind in ("rekey child", "delete child", "delete IKE SA"):
            # section 2.25.2: not while we are rekeying or closing a child SA of this one,
            # or closing this one
            raise IkeError(NotifyType.TEMPORARY_FAILURE, "another exchange is under way")
        if self.rekeyed:
            raise IkeError(NotifyType.TEMPORARY_FAILURE, "this IKE SA was rekeyed already")
        offered = [p for p in sa.proposals if p.protocol == ProtocolId.IKE]
        if any(len(p.spi) != 8 or p.spi == bytes(8) for p in offered):
            # section 3.3.1: in a rekey the SPI of an IKE proposal is the new SA's, 8 octets
            raise IkeError(NotifyType.INVALID_SYNTAX, "IKE SA rekey proposal without an SPI")
        ke = msg.get(KE)
        if ke is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "IKE SA rekey without KE")  # 1.3.2
        ours = self.config.ike_proposals
        # a proposal in the KE's group if any is acceptable; else the group we want
        chosen = _pick_ike(sa, [p for p in ours if p.dh == ke.group])
        if chosen is None:
            other = _pick_ike(sa, ours)
            if other is None:
                raise IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal")
            raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "wrong group",
                           other[1].dh.to_bytes(2, "big"))
        number, prop = chosen
        peer_prop = next(p for p in offered if p.number == number)
        kex = kc.KeyExchange(prop.dh)
        try:
            g_ir = kex.shared(ke.data)
        except ValueError as e:
            raise IkeError(NotifyType.INVALID_SYNTAX, f"bad KE: {e}") from None
        new = IkeSa(self.config, initiator=False, local=self.local, remote=self.remote,
                    now=now, lookup=self.lookup, max_children=self.max_children)
        new.spi_i = peer_prop.spi
        new.spi_r = _spi_bytes()
        new._ni, new._nr = nonce.data, os.urandom(NONCE_LEN)
        # the peer that starts the rekey is the new SA's initiator (section 2.18)
        new.initiator = False
        seed = kc.skeyseed_rekey(self._prf, self._keys.sk_d, g_ir, new._ni, new._nr)
        new._derive(prop, g_ir, seed)
        new._established(now)
        new.natt = self.natt
        new.local_behind_nat, new.remote_behind_nat = (self.local_behind_nat,
                                                       self.remote_behind_nat)
        new.children = self.children
        new.last_rx = now
        self.children = []
        answer: list[Payload] = [
            SA([ike_proposal(number, encr=prop.encr, prf=prop.prf, dh=prop.dh,
                             key_length=prop.key_bits, spi=new.spi_r)]),
            Nonce(new._nr), KE(prop.dh, kex.public),
        ]
        self._respond(ExchangeType.CREATE_CHILD_SA, msg.header.message_id, answer)
        self.events.append(IkeRekeyed(self, new))
        self.rekeyed = True  # the old SA lives until the peer deletes it
        if req is not None and req.kind == "rekey IKE":
            # section 2.8.2: we are rekeying it too. Answered as usual; which of the two new
            # SAs stays is decided by the nonces when the answer to ours comes
            self._peer_ike_rekey = (nonce.data, new._nr, new)
            new._rekeyed_from = self

    def rekey_child(self, spi_in: int, now: float) -> bool:
        """Start a rekey of the child SA with inbound SPI ``spi_in`` (make-before-break)."""
        assert self.config is not None
        child = next((c for c in self.children if c.spi_in == spi_in), None)
        if child is None or self._request is not None or self.state is not State.ESTABLISHED:
            return False
        new_spi = new_child_spi()
        ni = os.urandom(NONCE_LEN)
        # PFS (section 1.3.1): a fresh key exchange if the proposal names a group
        pfs = next((p.dh for p in self.config.esp_proposals
                    if p.suite is child.suite and p.dh), None)
        kex = kc.KeyExchange(pfs) if pfs else None
        payloads: list[Payload] = [
            Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP,
                   spi=child.spi_in.to_bytes(4, "big")),
            _esp_offer([EspProposal(child.suite, child.esn, pfs)], new_spi, pfs), Nonce(ni),
        ]
        if kex is not None:
            payloads.append(KE(kex.group, kex.public))
        payloads += [TSi.of(*child.local_ts), TSr.of(*child.remote_ts)]
        self._request_send(ExchangeType.CREATE_CHILD_SA, payloads, "rekey child", now,
                           spi_in=new_spi, ni=ni, old=child.spi_in, kex=kex)
        return True

    def _on_rekey_child_response(self, msg: Message, now: float) -> None:
        assert self._request is not None
        ctx = self._request.context
        self._request = None
        sa, nonce = msg.get(SA), msg.get(Nonce)
        old_spi = int(ctx["old"])
        if sa is None or nonce is None or len(sa.proposals) != 1:
            # refused (e.g. the peer's own rekey already replaced it): keep what we have
            self._peer_rekeys.pop(old_spi, None)
            old = next((c for c in self.children if c.spi_in == old_spi), None)
            if old is not None and msg.notify(NotifyType.TEMPORARY_FAILURE) is not None:
                old.rekey_at = now + _retry_delay()  # section 2.25
            return
        ni = bytes(ctx["ni"])
        g_ir = b""
        kex: kc.KeyExchange | None = ctx.get("kex")
        if kex is not None:
            ke = msg.get(KE)
            if ke is None or ke.group != kex.group:
                return  # PFS refused: keep the old SA
            try:
                g_ir = kex.shared(ke.data)
            except ValueError:
                return
        self._child_from_response(sa, msg, int(ctx["spi_in"]), ni, nonce.data, g_ir, old_spi)
        doomed = []
        old = next((c for c in self.children if c.spi_in == old_spi), None)
        if old is not None:
            doomed.append(old)
        collision = self._peer_rekeys.pop(old_spi, None)
        if collision is not None:
            # Section 2.8.1: both sides rekeyed the same SA. The SA made by the exchange with
            # the lowest of the four nonces is redundant; its initiator deletes it.
            their_ni, our_nr, _ = collision
            if min(ni, nonce.data, their_ni, our_nr) in (ni, nonce.data):
                mine = next((c for c in self.children if c.spi_in == int(ctx["spi_in"])), None)
                if mine is not None:
                    doomed.append(mine)
        # make-before-break: the new SA is installed; now the old (and any redundant) goes
        for c in doomed:
            self.children.remove(c)
            self.events.append(ChildDown(self, c.spi_in, c.spi_out))
        if doomed:
            self._request_send(ExchangeType.INFORMATIONAL,
                               [Delete(ProtocolId.ESP, [c.spi_in.to_bytes(4, "big")
                                                        for c in doomed])],
                               "delete child", now, closing=[c.spi_out for c in doomed])

    # --- IKE SA rekey as initiator (section 1.3.2) --------------------------------------------
    def rekey_ike(self, now: float) -> bool:
        """Replace this IKE SA with a new one (new SPIs and keys); children move over."""
        if (self._request is not None or self.state is not State.ESTABLISHED
                or self._proposal is None):
            return False
        prop = self._proposal
        kex = kc.KeyExchange(prop.dh)
        new_spi = _spi_bytes()
        ni = os.urandom(NONCE_LEN)
        payloads: list[Payload] = [
            SA([ike_proposal(1, encr=prop.encr, prf=prop.prf, dh=prop.dh,
                             key_length=prop.key_bits, spi=new_spi)]),
            Nonce(ni), KE(prop.dh, kex.public),
        ]
        self._request_send(ExchangeType.CREATE_CHILD_SA, payloads, "rekey IKE", now,
                           spi=new_spi, ni=ni, kex=kex)
        return True

    def _on_rekey_ike_response(self, msg: Message, now: float) -> None:
        self._rekey_ike_answered(msg, now)
        if self._closing_by_peer:  # see _on_informational
            self._die("deleted by the peer")

    def _rekey_ike_answered(self, msg: Message, now: float) -> None:
        assert self._request is not None and self._prf is not None and self._keys is not None
        ctx = self._request.context
        self._request = None
        sa, nonce, ke = msg.get(SA), msg.get(Nonce), msg.get(KE)
        kex: kc.KeyExchange = ctx["kex"]
        collision, self._peer_ike_rekey = self._peer_ike_rekey, None
        if collision is not None:
            collision[2]._rekeyed_from = None
        if (sa is None or nonce is None or ke is None or len(sa.proposals) != 1
                or ke.group != kex.group or len(sa.proposals[0].spi) != 8
                or sa.proposals[0].spi == bytes(8)):
            # refused: keep this SA (or, if the peer's rekey of it went through, wait for
            # its Delete); after TEMPORARY_FAILURE try again a little later
            if msg.notify(NotifyType.TEMPORARY_FAILURE) is not None:
                self.ike_rekey_at = now + _retry_delay()
            return
        assert self._proposal is not None
        try:
            g_ir = kex.shared(ke.data)
        except ValueError:
            return
        new = IkeSa(self.config, initiator=True, local=self.local, remote=self.remote,
                    now=now, lookup=self.lookup, max_children=self.max_children)
        new.spi_i, new.spi_r = bytes(ctx["spi"]), sa.proposals[0].spi
        new._ni, new._nr = bytes(ctx["ni"]), nonce.data
        seed = kc.skeyseed_rekey(self._prf, self._keys.sk_d, g_ir, new._ni, new._nr)
        new._derive(self._proposal, g_ir, seed)
        new._established(now)
        new.natt = self.natt
        new.local_behind_nat, new.remote_behind_nat = (self.local_behind_nat,
                                                       self.remote_behind_nat)
        self.events.append(IkeRekeyed(self, new))
        if collision is not None:
            # Section 2.8.2: both sides rekeyed this SA at once. The new SA made by the
            # exchange with the lowest of the four nonces is redundant; its initiator
            # deletes it, and the initiator of the other deletes the old SA.
            their_ni, our_nr, theirs = collision
            # (the peer deleting the old SA already means that its new SA stays)
            if self._closing_by_peer or min(new._ni, new._nr, their_ni, our_nr) in (
                    new._ni, new._nr):
                new.rekeyed = True  # ours goes; the peer deletes this one
                new._request_send(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE)],
                                  "delete IKE SA", now)
                self.outputs += new.pop_outputs()
                return
            theirs.rekeyed = True  # theirs goes (the peer deletes it); ours takes over
            new.children, theirs.children = theirs.children, []
        new.children += self.children
        self.children = []
        self.rekeyed = True
        self._request_send(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE)],
                           "delete IKE SA", now)


__all__ = [
    "DEFAULT_ESP_PROPOSALS",
    "DEFAULT_IKE_PROPOSALS",
    "ChildDown",
    "ChildUp",
    "EspProposal",
    "Identity",
    "IkeConfig",
    "IkeDown",
    "IkeProposal",
    "IkeRekeyed",
    "IkeSa",
    "IkeUp",
    "Outgoing",
    "State",
    "Transform",
]
