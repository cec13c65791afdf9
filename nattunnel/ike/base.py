"""The IKE SA's state and what every exchange shares: the states, the kinds of request we make
(an enum, each with a typed context), sending requests and responses, key derivation and the
child SA bookkeeping. ``nattunnel.ike.sa.IkeSa`` is built on ``SaCore`` with the exchanges of
``child``, ``initial`` and ``rekey`` (one class, split by exchange).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Self, cast

from ..addr import Addr, Network, format_addr, sockaddr
from ..constants import (
    CHILD_SPI_LEN,
    IKE_PORT,
    IKE_SPI_LEN,
    NAT_T_PORT,
    ExchangeType,
    NotifyType,
    PayloadType,
)
from ..esp.suite import Suite
from . import crypto as kc
from .config import CHILD_RETRY_BASE, CHILD_RETRY_MAX, ChildConfig, Identity, IkeConfig
from .events import ChildDown, ChildRefused, ChildUp, DownCause, Event, IkeDown, Outgoing
from .fragment import (
    MAX_UNAUTHENTICATED,
    Reassembly,
    encrypted_size,
    fragment_room,
    ip_overhead,
    split,
)
from .message import (
    Header,
    Message,
    Notify,
    Payload,
    SkCipher,
    encode_message,
    encode_payloads,
    format_payloads,
    nat_detection_hash,
)
from .proposals import IkeProposal

if TYPE_CHECKING:
    from .sa import IkeSa

NONCE_LEN = 32
#: child SAs per IKE SA unless the manager says otherwise (``IkeLimits``)
MAX_CHILDREN = 16
#: section 2.25: after TEMPORARY_FAILURE, try a rekey again this long later (plus up to as
#: much again at random, so that two peers do not collide again)
RETRY_AFTER_TEMPORARY_FAILURE = 5.0
#: a responder SA waiting for IKE_AUTH goes after this long unless the manager says otherwise
HALF_OPEN_TIMEOUT = 30.0

Lookup = Callable[[Identity, Identity | None], IkeConfig | None]
#: a deadline of an IKE SA: when, and what for (a log format and its arguments)
Deadline = tuple[float, str, tuple[object, ...]]

#: the IKE SA core's control-plane events at DEBUG (docs/troubleshooting.md, "Debug
#: logging"): every IKE message in and out, NAT detection, moves, rekeys, DPD, Deletes and
#: the next deadline; never anything per data packet, never a key
log = logging.getLogger("nattunnel.ike")


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
    #: the rekey at ``rekey_at`` is a retry after TEMPORARY_FAILURE (for the log)
    rekey_retry: bool = False
    #: the child of our configuration it is (``ChildConfig.name``; a rekey keeps it)
    name: str = ""


class RequestKind(Enum):
    """The requests we make; the value names it in log lines and reasons."""

    IKE_SA_INIT = "IKE_SA_INIT"
    IKE_AUTH = "IKE_AUTH"
    CREATE_CHILD = "create child"
    LIVENESS_CHECK = "liveness check"
    REKEY_CHILD = "rekey child"
    REKEY_IKE = "rekey IKE"
    DELETE_CHILD = "delete child"
    DELETE_IKE = "delete IKE SA"
    #: MOBIKE (RFC 4555): our new address (3.5), a return routability check (3.7), our
    #: additional addresses (3.4)
    UPDATE_ADDRESSES = "UPDATE_SA_ADDRESSES"
    ROUTABILITY = "return routability check"
    ADDRESSES = "additional addresses"
    #: IKEv2 mediation (draft-brunner-ikev2-mediation): a ME_CONNECT request of a mediation
    #: connection (nattunnel.ike.mediation)
    ME_CONNECT = "ME_CONNECT"


# --- what each kind of request remembers until its response ----------------------------------
@dataclass(frozen=True)
class AuthContext:
    """IKE_AUTH: the inbound SPI we offered for the first child SA, and the child it is
    (the first of ``IkeConfig.child_configs``; None for a mediation connection)."""

    spi_in: int
    child: ChildConfig | None = None


@dataclass(frozen=True)
class RekeyChildContext:
    #: the new child SA's inbound SPI, our nonce, the old SA's inbound SPI
    spi_in: int
    ni: bytes
    old: int
    #: our key exchange, with PFS
    kex: kc.KeyExchange | None
    #: the traffic selectors we offered (the old SA's): the answer may narrow them only
    local_ts: tuple[Network, ...] = ()
    remote_ts: tuple[Network, ...] = ()


@dataclass(frozen=True)
class CreateChildContext:
    """A new child SA (CREATE_CHILD_SA without REKEY_SA, section 1.3.1): our inbound SPI,
    our nonce and key exchange (with PFS), and the child of our configuration it is."""

    spi_in: int
    ni: bytes
    kex: kc.KeyExchange | None
    child: ChildConfig | None = None


@dataclass(frozen=True)
class RekeyIkeContext:
    #: the new IKE SA's SPI (ours), our nonce and key exchange
    spi: bytes
    ni: bytes
    kex: kc.KeyExchange


@dataclass(frozen=True)
class DeleteChildContext:
    #: the outbound SPIs of the child SAs being deleted
    closing: tuple[int, ...]


@dataclass(frozen=True)
class MobikeContext:
    """A MOBIKE request (RFC 4555): the COOKIE2 we sent (3.7: the answer must echo it), and
    for a return routability check the address it checks."""

    cookie2: bytes
    checks: Addr | None = None


RequestContext = (AuthContext | CreateChildContext | RekeyChildContext | RekeyIkeContext
                  | DeleteChildContext | MobikeContext | None)


@dataclass
class Request:
    """Our outstanding request (window size 1)."""

    kind: RequestKind
    message_id: int
    #: the exchange type; its response must have the same one
    exchange: int
    data: bytes
    sent_at: float
    context: RequestContext = None
    tries: int = 1
    #: sent as these IKE fragments (RFC 7383; ``data`` is then empty): a retransmission
    #: sends them all again, as a unit
    fragments: tuple[bytes, ...] = ()

    @property
    def datagrams(self) -> tuple[bytes, ...]:
        """What one transmission of the request sends."""
        return self.fragments or (self.data,)


class IkeError(Exception):
    """Raised inside the core to answer with an error notify."""

    def __init__(self, notify: int, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.notify = notify
        self.data = data


# --- helpers -----------------------------------------------------------------------------------
def spi_bytes() -> bytes:
    """A random IKE SPI (never zero)."""
    while True:
        s = os.urandom(IKE_SPI_LEN)
        if s != bytes(IKE_SPI_LEN):
            return s


def new_child_spi() -> int:
    """A random inbound ESP SPI, uniform over SPI_STUN_SAFE_MIN (0x40000000) to 0xFFFFFFFF:
    its first octet is 0x40 or more, so that no STUN message (first two bits zero, RFC 8489
    section 5) on the NAT-T socket can be read as ESP to us (docs/wire-format.md, "STUN on
    port 4500"), and it is never one of the reserved 0 to 255 (RFC 4303 section 2.1)."""
    from ..constants import SPI_STUN_SAFE_MIN  # here: this function's own rule

    while True:
        spi = int.from_bytes(os.urandom(CHILD_SPI_LEN), "big")
        if spi >= SPI_STUN_SAFE_MIN:
            return spi


def notify_name(notify_type: int) -> str:
    try:
        return NotifyType(notify_type).name
    except ValueError:
        return f"notify {notify_type}"


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"exchange {exchange}"


def retry_delay() -> float:
    return RETRY_AFTER_TEMPORARY_FAILURE * (1 + int.from_bytes(os.urandom(2), "big") / 65535)


def nat_hash(spi_i: bytes, spi_r: bytes, addr: Addr) -> bytes:
    return nat_detection_hash(spi_i, spi_r, ipaddress.ip_address(addr[0]), addr[1])


# --- the SA's state ------------------------------------------------------------------------------
class SaCore:
    """One IKE SA's state, and what every exchange does with it."""

    def __init__(self, config: IkeConfig | None, *, initiator: bool, local: Addr,
                 remote: Addr, now: float, lookup: Lookup | None = None,
                 max_children: int = MAX_CHILDREN,
                 half_open_timeout: float = HALF_OPEN_TIMEOUT, natt: bool = False) -> None:
        """``natt``: an initiator talks to ``remote`` behind the non-ESP marker from the
        start (its port is the peer's NAT-T port), as with ``force_encap``."""
        self.config = config
        #: CREATE_CHILD_SA requests for new child SAs beyond this many are refused with
        #: NO_ADDITIONAL_SAS (section 3.10.1); rekeys are not counted
        self.max_children = max_children
        #: a responder SA waiting for IKE_AUTH goes after this long
        self.half_open_timeout = half_open_timeout
        self.initiator = initiator
        self.local = local
        self.remote = remote
        self.lookup = lookup
        self.state = State.INIT_SENT if initiator else State.INIT_DONE
        self.spi_i = spi_bytes() if initiator else bytes(IKE_SPI_LEN)
        self.spi_r = bytes(IKE_SPI_LEN)
        self.natt = natt or bool(config and config.force_encap)
        if self.natt and remote[1] == IKE_PORT:
            self.remote = sockaddr(remote[0], NAT_T_PORT)
        self.local_behind_nat = False
        self.remote_behind_nat = False
        self.children: list[Child] = []
        self._outputs: list[Outgoing] = []
        self._events: deque[Event] = deque()
        self.last_rx = self.created = now
        self._request: Request | None = None
        self._next_request_id = 0
        self._peer_next_id = 0  # the message ID we expect in the peer's next request
        self._last_response: tuple[int, bytes] | None = None
        #: while a request is handled: where its response goes (section 2.11: back to the
        #: address and port the request came from), and over which port
        self._reply_to: tuple[Addr, bool] | None = None
        #: responder: whether the IKE_SA_INIT request came on port 4500 (its answer and the
        #: answers to its retransmissions go back that way)
        self._request_natt = False
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
        self.dead_reason = ""
        #: replaced by a rekey (its deletion is then expected, not a failure)
        self.rekeyed = False
        #: the peer sent INITIAL_CONTACT: it has no other SAs with us (section 2.4)
        self.initial_contact = False
        #: when we start an IKE SA rekey, or None; and whether that is a retry after
        #: TEMPORARY_FAILURE (for the log)
        self.ike_rekey_at: float | None = None
        self._ike_rekey_retry = False
        #: child rekeys the peer started, by the old inbound SPI: (their Ni, our Nr, new SPI)
        self._peer_rekeys: dict[int, tuple[bytes, bytes, int]] = {}
        #: section 2.8.2: the peer's rekey of this SA that we answered while ours was
        #: outstanding: (their Ni, our Nr, the new SA)
        self._peer_ike_rekey: tuple[bytes, bytes, SaCore] | None = None
        #: that new SA's old one, until the collision is resolved
        self._rekeyed_from: SaCore | None = None
        #: the peer deleted this SA while our rekey of it was outstanding (section 2.8.2)
        self._closing_by_peer = False
        #: child SAs gone past their hard lifetime while a request of ours was outstanding:
        #: their Delete goes as soon as the window is free
        self._unsent_deletes: list[Child] = []
        self._init_extensions()
        #: the time of the last call with a ``now``, and the deadline last logged
        self._clock = now
        self._logged_deadline: Deadline | None = None

    def _init_extensions(self) -> None:
        """The state of MOBIKE (RFC 4555) and IKE fragmentation (RFC 7383); the children
        of our configuration still to ask for."""
        self._init_mobike()
        self._init_fragmentation()
        #: the child SAs of our configuration still to ask for (those after the first, once
        #: IKE_AUTH is answered; one the peer refused), by name, each with when to ask; and
        #: the wait after each one's next refusal
        self._wanted: dict[str, float] = {}
        self._retry_delays: dict[str, float] = {}

    def _init_fragmentation(self) -> None:
        #: IKE fragmentation (RFC 7383): both sides sent IKEV2_FRAGMENTATION_SUPPORTED in
        #: IKE_SA_INIT; the peer's fragments and the counters; the fragments our last
        #: response went as, or none
        self.fragmentation = False
        self.fragments = Reassembly()
        self._last_response_fragments: tuple[bytes, ...] = ()

    def _init_mobike(self) -> None:
        #: MOBIKE (RFC 4555): negotiated in IKE_AUTH (both sent MOBIKE_SUPPORTED, 3.2);
        #: the peer's additional addresses (ADDITIONAL_IP4/6_ADDRESS, 3.4; empty after
        #: NO_ADDITIONAL_ADDRESSES) kept for path selection; ours to announce
        self.mobike = False
        self.peer_addresses: tuple[str, ...] = ()
        self.own_addresses: tuple[str, ...] = ()
        #: initiator: why an UPDATE_SA_ADDRESSES is to go when the window is free (None:
        #: none); whether our address list is to be announced
        self._update_wanted: str | None = None
        self._announce_wanted = False
        #: responder: the peer addresses a return routability check (or IKE_AUTH) proved,
        #: and the address still to be checked before the child SAs move there (3.7)
        self.verified: set[str] = set()
        self._check_wanted: Addr | None = None
        #: the COOKIE2 of our last MOBIKE request (section 3.7)
        self._cookie2 = b""
        #: while a message is handled: the address of the socket it came to, if known
        self._came_to: Addr | None = None
        #: UPDATE_SA_ADDRESSES exchanges done (either role), for the status and tests
        self.path_updates = 0

    # --- what anyone may ask -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name if self.config else "?"

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def proposal(self) -> IkeProposal | None:
        """The IKE proposal in use, once IKE_SA_INIT chose one."""
        return self._proposal

    @property
    def request(self) -> Request | None:
        """Our outstanding request, if any."""
        return self._request

    @property
    def message_ids(self) -> tuple[int, int]:
        """(the message ID of our next request, the one we expect in the peer's next)."""
        return self._next_request_id, self._peer_next_id

    def datagrams_to_send(self) -> list[Outgoing]:
        """The messages to send since the last call, in order."""
        out, self._outputs = self._outputs, []
        return out

    def next_event(self) -> Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def keys_for_log(self) -> tuple[bytes, bytes, bytes, bytes, int, int] | None:
        """(SPIi, SPIr, SK_ei, SK_er, encr transform, key bits) for a key log."""
        if self._keys is None or self._alg is None:
            return None
        return (self.spi_i, self.spi_r, self._keys.sk_ei, self._keys.sk_er,
                self._alg.transform_id, self._alg.key_bits)

    # --- sending -------------------------------------------------------------------------------
    def _header(self, exchange: int, message_id: int, response: bool) -> Header:
        return Header.make(exchange, self.spi_i, self.spi_r, message_id=message_id,
                           initiator=self.initiator, response=response)

    def _send(self, data: bytes) -> None:
        self._outputs.append(Outgoing(data, self.remote, self.natt))

    def _request_send(self, exchange: int, payloads: list[Payload], kind: RequestKind,
                      now: float, context: RequestContext = None) -> None:
        mid = self._next_request_id
        self._next_request_id += 1
        self._clock = now
        hdr = self._header(exchange, mid, False)
        data, frags = self._encode(hdr, payloads, self._sk_out, self.remote, self.natt)
        self._request = Request(kind, mid, exchange, data, now, context, fragments=frags)
        self._log_out(hdr, payloads, self._sk_out is not None, data, self.remote, frags)
        for d in self._request.datagrams:
            self._send(d)

    def _respond(self, exchange: int, message_id: int, payloads: list[Payload],
                 encrypted: bool = True) -> None:
        hdr = self._header(exchange, message_id, True)
        sk = self._sk_out if encrypted else None
        to, natt = self._reply_to if self._reply_to is not None else (self.remote, self.natt)
        data, frags = self._encode(hdr, payloads, sk, to, natt)
        self._last_response = (message_id, data)
        self._last_response_fragments = frags
        self._log_out(hdr, payloads, sk is not None, data, to, frags)
        self._reply_cached()

    def _reply_cached(self) -> None:
        """Send the last response again: all its fragments if it went in fragments."""
        if self._last_response is not None:
            for d in self._last_response_fragments or (self._last_response[1],):
                self._reply(d)

    def _send_request(self, req: Request) -> None:
        """Send our request again: every fragment of it (RFC 7383 section 2.6.1)."""
        for d in req.datagrams:
            self._send(d)

    # --- IKE fragmentation (RFC 7383) ----------------------------------------------------------
    def _fragmentation_offer(self) -> list[Payload]:
        """IKEV2_FRAGMENTATION_SUPPORTED for our IKE_SA_INIT message (section 2.3): the
        initiator's if its configuration says so, the responder's if the request had it."""
        offer = (self.config is not None and self.config.fragmentation if self.initiator
                 else self.fragmentation)
        return [Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)] if offer else []

    def _fragmentation_seen(self, msg: Message) -> None:
        """The peer's IKE_SA_INIT message: did it send IKEV2_FRAGMENTATION_SUPPORTED? The
        responder answers it before it knows the peer (any peer's fragments are reassembled
        within the bounds of ``Reassembly``); the initiator's configuration decides."""
        seen = msg.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        self.fragmentation = seen and (not self.initiator or bool(
            self.config is not None and self.config.fragmentation))
        if seen:
            self._debug("IKE fragmentation %s", "negotiated" if self.fragmentation
                        else "offered by the peer, not used")

    def _encode(self, hdr: Header, payloads: list[Payload], sk: SkCipher | None, to: Addr,
                natt: bool) -> tuple[bytes, tuple[bytes, ...]]:
        """(the message, ()) or, when it is to go in fragments, (b"", the fragments): an
        encrypted message after IKE_SA_INIT whose IP datagram would be larger than the
        fragment size, with fragmentation negotiated and this peer's ``fragmentation`` on
        (RFC 7383 sections 2.5, 2.5.1)."""
        cfg = self.config
        if (sk is None or not self.fragmentation or cfg is None or not cfg.fragmentation
                or hdr.exchange_type == ExchangeType.IKE_SA_INIT):
            return encode_message(hdr, payloads, sk=sk), ()
        ipv6 = ":" in to[0]
        _, inner = encode_payloads(payloads)
        if ip_overhead(ipv6, natt) + encrypted_size(len(inner), sk) <= cfg.fragment_size:
            return encode_message(hdr, payloads, sk=sk), ()
        frags = split(hdr, payloads, sk, fragment_room(cfg.fragment_size, sk, ipv6=ipv6,
                                                       natt=natt))
        self.fragments.messages_sent += 1
        self.fragments.fragments_sent += len(frags)
        return b"", frags

    def _fragment_expected(self, hdr: Header, number: int) -> bool:
        """Whether a fragment (opened) belongs to the window (RFC 7383 section 2.6.1): of the
        response to our outstanding request, or of the peer's next request. A fragment of
        the request we answered last resends our whole answer if it is fragment 1, and is
        ignored otherwise."""
        if hdr.is_response:
            req = self._request
            if req is not None and (hdr.message_id, hdr.exchange_type) == (req.message_id,
                                                                          req.exchange):
                return True
        elif self._last_response is not None and hdr.message_id == self._last_response[0]:
            self.fragments.drop("retransmitted_request")
            if number == 1:
                self._debug("request %d retransmitted (fragment 1): answered again from "
                            "the cache", hdr.message_id)
                self._reply_cached()
            return False
        elif hdr.message_id == self._peer_next_id:
            return True
        self.fragments.drop("unexpected_message_id")
        self._debug("fragment of %s %d dropped: not in the window",
                    "response" if hdr.is_response else "request", hdr.message_id)
        return False

    def _defragment(self, msg: Message, size: int, came: Addr, now: float
                    ) -> Message | None:
        """An opened SKF message: the whole message once its last fragment came, else
        None. Raises IkeDecodeError (authenticated) if the reassembled payloads are
        malformed."""
        frag = msg.fragment
        assert frag is not None
        self._log_message("parsed", msg, size, came)
        if not self.fragmentation:
            self.fragments.drop("not_negotiated")
            return None
        if not self._fragment_expected(msg.header, frag.number):
            return None
        payloads = self.fragments.add(msg.header, frag, now, None if self.established
                                      else MAX_UNAUTHENTICATED)
        if payloads is None:
            return None
        whole = Message(msg.header, payloads, True)
        self._debug("reassembled %s %d from %d fragments", "response" if
                    msg.header.is_response else "request", msg.header.message_id, frag.total)
        return whole

    def _integrity_failed(self, raw: bytes) -> None:
        """Count a fragment whose ICV did not verify (it changed nothing)."""
        if len(raw) > 16 and raw[16] == PayloadType.SKF:
            self.fragments.drop("integrity")

    def _reply(self, data: bytes) -> None:
        """Send a response: to where the request came from if the caller said so."""
        if self._reply_to is not None:
            self._outputs.append(Outgoing(data, *self._reply_to))
        else:
            self._send(data)

    # --- debug logging -----------------------------------------------------------------------
    def _tag(self) -> str:
        """How log lines name this SA: its peer and the initiator's SPI (the same on both
        sides; a rekeyed IKE SA has a new one)."""
        return f"peer {self.name} [{self.spi_i.hex()}]"

    def _debug(self, fmt: str, *args: object) -> None:
        """A DEBUG line about this SA. The callers pass names, numbers and addresses only:
        never a key, a nonce or a payload's content."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: " + fmt, self._tag(), *args)

    def _log_message(self, verb: str, msg: Message, size: int, addr: Addr,
                     note: str = "") -> None:
        """An IKE message in or out, as strongSwan writes it: ``parsed IKE_AUTH response 1
        [ SK{IDr AUTH SA TSi TSr} ] from 198.18.0.2:4500 (236 bytes)``."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        hdr = msg.header
        listed = format_payloads(msg)
        log.debug("%s: %s %s %s %d [ %s] %s %s (%d bytes)%s", self._tag(), verb,
                  exchange_name(hdr.exchange_type),
                  "response" if hdr.is_response else "request", hdr.message_id,
                  listed + " " if listed else "", "from" if verb == "parsed" else "to",
                  format_addr(addr), size, note)

    def _log_out(self, hdr: Header, payloads: list[Payload], encrypted: bool, data: bytes,
                 to: Addr, fragments: tuple[bytes, ...] = ()) -> None:
        if log.isEnabledFor(logging.DEBUG):
            note = f" in {len(fragments)} fragments" if fragments else ""
            self._log_message("generating", Message(hdr, list(payloads), encrypted),
                              sum(map(len, fragments)) or len(data), to, note)

    def _die(self, reason: str, cause: DownCause) -> None:
        if self.state is State.DEAD:
            return
        self.state = State.DEAD
        self.dead_reason = reason
        for c in self.children:
            self._events.append(ChildDown(self._me(), c.spi_in, c.spi_out))
        self.children.clear()
        self._request = None
        self._events.append(IkeDown(self._me(), reason, cause))

    def _die_deleted_by_peer(self) -> None:
        self._die("deleted by the peer", DownCause.DELETED_BY_PEER)

    def _me(self) -> IkeSa:
        """This SA as the events name it (every ``SaCore`` is an ``IkeSa``)."""
        return cast("IkeSa", self)

    # --- keys ----------------------------------------------------------------------------------
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

    def _successor(self, *, initiator: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes,
                   prop: IkeProposal, g_ir: bytes, now: float) -> Self:
        """The established IKE SA that replaces this one (section 1.3.2): its keys come from
        this SA's SK_d and the rekey exchange's nonces and shared secret (2.18); the peer's
        address and what NAT detection found carry over. The peer that started the rekey is
        its initiator."""
        assert self._prf is not None and self._keys is not None
        new = type(self)(self.config, initiator=initiator, local=self.local,
                         remote=self.remote, now=now, lookup=self.lookup,
                         max_children=self.max_children)
        new.spi_i, new.spi_r = spi_i, spi_r
        new._ni, new._nr = ni, nr
        seed = kc.skeyseed_rekey(self._prf, self._keys.sk_d, g_ir, ni, nr)
        new._derive(prop, g_ir, seed)
        new._established(now)
        new.natt = self.natt
        new._wanted, new._retry_delays = dict(self._wanted), dict(self._retry_delays)
        new.local_behind_nat, new.remote_behind_nat = (self.local_behind_nat,
                                                       self.remote_behind_nat)
        new.mobike, new.peer_addresses = self.mobike, self.peer_addresses
        new.own_addresses, new.verified = self.own_addresses, set(self.verified)
        new._update_wanted, new._announce_wanted = self._update_wanted, self._announce_wanted
        new._check_wanted = self._check_wanted
        new.fragmentation = self.fragmentation  # as strongSwan: the new SA keeps it
        return new

    # --- life cycle and child SAs --------------------------------------------------------------
    @property
    def child_retry_at(self) -> float | None:
        """When we next ask for a child SA of our configuration (one the peer refused, or
        one not asked for yet), or None."""
        return min(self._wanted.values()) if self._wanted else None

    def _next_wanted(self, now: float) -> ChildConfig | None:
        """The child SA of our configuration due to be asked for at ``now`` (taken off the
        list), or None."""
        due = [c for c, at in self._wanted.items() if at <= now]
        if not due:
            return None
        first = min(due, key=self._wanted.__getitem__)
        del self._wanted[first]
        return self._child_config(first)

    def _child_config(self, name: str | None) -> ChildConfig:
        """The child of our configuration called ``name``, or the first (None, or a name
        a reload took away)."""
        assert self.config is not None
        children = self.config.child_configs()
        return next((c for c in children if c.name == name), children[0])

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
                   replaces: int | None, made_for: ChildConfig | None = None) -> None:
        """Install ``child``; ``made_for``: the child of our configuration it is (asked for
        by us, or the one the peer's request was narrowed to), no longer to be asked for."""
        if self.config is not None:
            child.rekey_at = self._soft_deadline(self.config.child_rekey_time)
            if self.config.child_rekey_time > 0:
                # hard lifetime: the soft one plus the jitter range again
                child.expire_at = self.last_rx + self.config.child_rekey_time * (
                    1 + self.config.rekey_jitter)
        if made_for is not None:
            child.name = made_for.name
        elif replaces is not None:
            child.name = next((c.name for c in self.children if c.spi_in == replaces), "")
        self.children.append(child)
        if made_for is not None:  # a child SA we asked for, or one the peer made: no more asking
            self._wanted.pop(made_for.name, None)
            self._retry_delays.pop(made_for.name, None)
        self._events.append(ChildUp(self._me(), child.spi_in, child.spi_out, child.suite,
                                    child.esn, keymat_in, keymat_out, child.local_ts,
                                    child.remote_ts, replaces))

    def _child_refused(self, reason: str, now: float, delay: float | None = None, *,
                       child: ChildConfig | None = None) -> None:
        """The peer refused the child SA we asked for (``child``, by default our first): the
        IKE SA stays, and we ask again (``create_child``) on this SA's timer after ``delay``,
        by default the backoff: CHILD_RETRY_BASE, doubling at each refusal up to
        CHILD_RETRY_MAX."""
        name = self._child_config(None).name if child is None else child.name
        if delay is None:
            delay = self._retry_delays.get(name, CHILD_RETRY_BASE)
            self._retry_delays[name] = min(delay * 2, CHILD_RETRY_MAX)
        self._wanted[name] = now + delay
        self._debug("child SA %s refused: %s; asking again in %.0f s", name, reason, delay)
        self._events.append(ChildRefused(self._me(), reason, now + delay))

    def _child_down(self, child: Child) -> None:
        """``child`` is gone (deleted, or past its hard lifetime): out of the list, and its
        entry in ``_peer_rekeys`` too unless our own rekey of it is outstanding (its response
        still needs it for section 2.8.1)."""
        self.children.remove(child)
        req = self._request
        ctx = req.context if req is not None else None
        if not (isinstance(ctx, RekeyChildContext) and ctx.old == child.spi_in):
            self._peer_rekeys.pop(child.spi_in, None)
        self._events.append(ChildDown(self._me(), child.spi_in, child.spi_out))
