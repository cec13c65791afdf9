"""The IKE manager: IKE SAs by SPI, their messages on ports 500 and 4500, and what their
events mean for the tunnel (child SAs installed and removed, peer addresses, keepalives).

A sans-I/O core with the contract every core follows (as aioquic's ``QuicConnection``): it is
fed messages (``receive_datagram``) and the time (``handle_timer``) with an explicit ``now``,
and pulled from: ``datagrams_to_send()`` for the messages to send, ``get_timer()`` for its next
deadline, ``next_event()`` for what it needs from the endpoint. Every timer it has (each IKE
SA's next deadline, the grace period of old inbound SAs, initiating again after a failure, the
byte lifetime checks) is in one ``DeadlineHeap``.

NAT detection (RFC 7296 section 2.23) needs our address towards the peer. A message comes
with the address of the socket it came on (``local``); when that is a wildcard (``0.0.0.0``,
``::``), and when we initiate, the manager asks for it with a ``LocalAddressNeeded`` event and
goes on once ``local_address_found`` answers. It opens no socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass

from ..addr import Addr, format_addr, sockaddr
from ..constants import IKE_FLAG_RESPONSE, IKE_PORT, NAT_T_PORT, ExchangeType, NotifyType
from ..esp.sa import InboundSA, OutboundSA
from ..tunnel.core import Tunnel
from ..tunnel.deadlines import DeadlineHeap
from ..tunnel.peer import KeepaliveMode, Peer
from .base import State
from .certauth import CERT_REFUSAL_CAUSES, count_refusal
from .config import Identity, IkeConfig
from .cookies import Cookies
from .droplog import DropLog
from .events import (
    ChildDown,
    ChildRefused,
    ChildUp,
    DownCause,
    IkeDown,
    IkeRekeyed,
    IkeUp,
    Outgoing,
    PathUpdated,
)
from .exchanges import ExchangeCounts, certreq_union, unspecified
from .keylog import KeyLog
from .message import (
    Header,
    IkeDecodeError,
    Message,
    Notify,
    decode_message,
    encode_message,
    peek_header,
    peek_nonce_and_cookie,
    peek_receiver_spi,
)
from .mobility import MobilityManagement
from .pending import Check as _Check
from .pending import ExtraInitSa
from .pending import GraceEnd as _GraceEnd
from .pending import Initiate as _Initiate
from .pending import InitiateWaiting as _InitiateWaiting
from .pending import InitWaiting as _InitWaiting
from .pending import LocalWaitEnd as _LocalWaitEnd
from .pending import TimerKey as _TimerKey
from .pending import timer_rank as _timer_rank
from .ratelimit import IkeLimits, SourceLimiter, TokenBucket
from .sa import IkeSa

log = logging.getLogger("nattunnel")

#: at most one summary line a minute about half-open IKE SAs that went
HALF_OPEN_LOG_INTERVAL = 60.0
#: how long an old inbound SA stays after a rekey or delete (in-flight packets)
CHILD_GRACE = 2.0
#: wait before initiating again after an IKE SA of ours went down; doubles with each failure
#: in a row, up to REINITIATE_MAX
REINITIATE_DELAY = 2.0
REINITIATE_MAX = 120.0
#: how often byte lifetimes (``rekey_bytes``) are checked
LIFETIME_CHECK = 5.0
#: the IKE header's flags octet (RFC 7296 section 3.1)
_FLAGS_AT = 19
#: (remote, port) pairs whose local address the manager may wait for at once; the oldest
#: wait is given up beyond it
MAX_AWAITING_LOCAL = 256
#: how long a ``LocalAddressNeeded`` waits for its answer. An endpoint that cannot answer
#: (no route to the peer yet: the kernel has no source address for it) leaves it
#: unanswered; the wait is then given up, and an initiation is tried again after the
#: re-initiation backoff (REINITIATE_DELAY, doubling), as after a failed IKE SA
LOCAL_ADDRESS_WAIT = 1.0


@dataclass
class IkePeer:
    """An IKE-managed tunnel peer: its IKE settings and whether we start the exchange."""

    config: IkeConfig
    initiate: bool
    remote: Addr | None  # where to send IKE_SA_INIT (port 500 or 4500)
    #: our address towards it (for NAT detection); None: asked for when we initiate
    local: Addr | None = None


@dataclass(frozen=True)
class LocalAddressNeeded:
    """Our address (IP, port) towards ``remote`` over port 4500 (``natt``) or 500 is needed
    for NAT detection: answer with ``IkeManager.local_address_found``."""

    remote: Addr
    natt: bool


@dataclass(frozen=True)
class PeerUp:
    """The peer has a child SA to send on (its first, or the first again after none)."""

    name: str


@dataclass(frozen=True)
class PeerDown:
    """The peer's last child SA went: nothing is sent to it until a new one comes up."""

    name: str
    reason: str


#: what the manager asks of the endpoint (``LocalAddressNeeded``), and what it tells the
#: control side (``PeerUp``, ``PeerDown``)
Event = LocalAddressNeeded | PeerUp | PeerDown


class IkeManager(MobilityManagement):
    def __init__(self, tunnel: Tunnel, *, keylog: KeyLog | None = None,
                 cookie_threshold: int | None = None, limits: IkeLimits | None = None,
                 ike_port: int = IKE_PORT) -> None:
        """``cookie_threshold`` overrides the one in ``limits``. ``ike_port``: the port of
        plain IKE (the configured ``ike_port``; peers are taken to use it or 500): a peer
        to initiate to on any other port is reached on its NAT-T port (``_natt_from_start``)."""
        self.tunnel = tunnel
        self.ike_port = ike_port
        self.keylog = keylog
        limits = limits or IkeLimits()
        if cookie_threshold is not None:
            limits = dataclasses.replace(limits, cookie_threshold=cookie_threshold)
        self.limits = limits
        self.cookie_threshold = limits.cookie_threshold
        self.peers: dict[str, IkePeer] = {}
        self.sas: dict[bytes, IkeSa] = {}
        #: the IKE SAs that have a peer's configuration, by the peer's name (``_index``)
        self._named: dict[str, dict[IkeSa, None]] = {}
        #: every timer of the manager
        self._timers: DeadlineHeap[_TimerKey] = DeadlineHeap()
        #: byte lifetimes: inbound SPI -> (IKE SA, the peer's tx_bytes when it was made)
        self._byte_limits: dict[int, tuple[IkeSa, int]] = {}
        self._failures: dict[str, int] = {}
        #: the outbound SA of every child SA that is up, by (peer, SPI), oldest first (the
        #: peer chose the SPI: two peers may choose the same)
        self._outbound_sas: dict[tuple[str, int], tuple[Peer, OutboundSA]] = {}
        #: half-open responder SAs by (SPIi, remote), for retransmitted IKE_SA_INIT requests
        self._half_open_sas: dict[tuple[bytes, Addr], IkeSa] = {}
        self._half_open_keys: dict[IkeSa, tuple[bytes, Addr]] = {}
        self._by_remote_id: dict[Identity, list[IkePeer]] = {}
        self._cookies = Cookies(limits.cookie_secret_lifetime)
        self._init_per_source = SourceLimiter(limits.init_rate, limits.init_burst)
        self._init_total = TokenBucket(limits.init_rate_total, limits.init_rate_total, 0.0)
        #: unauthenticated responder SAs that went (timed out or refused) since the last
        #: summary line, and when the next summary may be logged
        self._half_open_gone = 0
        self._half_open_log_at = 0.0
        self._outgoing: list[Outgoing] = []
        self._events: deque[Event] = deque()
        #: peers the operator terminated: not initiated again until ``initiate``
        self.held: set[str] = set()
        #: notifies for a peer's next IKE_SA_INIT request (``initiate``)
        self._init_extra: dict[str, tuple[Notify, ...]] = {}
        #: when each child SA that is up was installed, by inbound SPI; and each peer's
        #: last IKE SA or child SA that came up (the status's ages)
        self.child_since: dict[int, float] = {}
        self.last_handshake: dict[str, float] = {}
        #: each peer's last reason for an IKE SA or child SA that went or was refused
        self.last_error: dict[str, str] = {}
        #: what waits for our address towards (remote, natt), oldest first
        self._awaiting: OrderedDict[tuple[Addr, bool],
                                    list[_InitWaiting | _InitiateWaiting]] = OrderedDict()
        self.counters = {"cookies_sent": 0, "init_requests": 0, "dropped": 0,
                         "init_rate_limited": 0, "init_half_open_full": 0,
                         "half_open_dropped": 0, "identity_cap_deleted": 0, "errors": 0,
                         "ike_rekeys": 0, "child_rekeys": 0, "retransmits": 0}
        #: the same three by peer: IKE SA rekeys, child SA rekeys, retransmitted requests
        self.peer_counters: dict[str, dict[str, int]] = {}
        #: peers' certificates we refused, by cause (``certauth.count_refusal``)
        self.cert_refusals = dict.fromkeys(CERT_REFUSAL_CAUSES, 0)
        self._drop_log = DropLog()  # DEBUG lines for drops before an SA, rate-limited
        #: calls of receive_datagram and handle_timer, and the requests our IKE SAs sent
        #: (new ones and retransmissions), for benchmarks (not in ``stats``)
        self.receive_calls = 0
        self.timer_calls = 0
        self.requests_sent = 0
        self.exchanges, self._certreq = ExchangeCounts(), certreq_union(())  # CERTREQ's CAs

    # --- configuration ------------------------------------------------------------------------
    def add_peer(self, peer: IkePeer, now: float) -> None:
        self.peers[peer.config.name] = peer
        self._by_remote_id.setdefault(peer.config.remote_id, []).append(peer)
        self._certreq = certreq_union(p.config for p in self.peers.values())
        if peer.initiate:
            self._timers.schedule(_Initiate(peer.config.name), now)

    def _lookup(self, idi: Identity, idr: Identity | None) -> IkeConfig | None:
        for p in self._by_remote_id.get(idi, ()):
            if idr is None or idr == p.config.local_id:
                return p.config
        return None

    # --- the core contract --------------------------------------------------------------------
    def datagrams_to_send(self) -> list[Outgoing]:
        """The messages to send since the last call, in order."""
        out, self._outgoing = self._outgoing, []
        return self.exchanges.sent(out)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        return self._timers.next_deadline()

    # --- initiating ---------------------------------------------------------------------------
    def initiate(self, name: str, now: float, *, notifies: tuple[Notify, ...] = ()
                 ) -> IkeSa | None:
        """Start an IKE SA with the peer: the SA, or None until our local address towards it
        is known (``LocalAddressNeeded``). ``notifies`` go in this initiation's IKE_SA_INIT
        request (IKEv2 mediation's ME_CONNECTID), not in later ones."""
        peer = self.peers[name]
        if peer.remote is None:
            raise ValueError(f"peer {name}: no address to initiate to")
        if notifies:
            self._init_extra[name] = notifies
        self.held.discard(name)
        if peer.local is None:
            natt = self._natt_from_start(peer)
            # a port that may be our own plain IKE port (a configured ike_port other than
            # 500, which peers share): the answer for port 500's socket says which it is
            probe = natt and not peer.config.force_encap
            self._await_local(peer.remote, not probe and natt,
                              _InitiateWaiting(name, probe=probe), now)
            return None
        return self._start(peer, peer.local, now)

    def _natt_from_start(self, peer: IkePeer, ike_port: int | None = None) -> bool:
        """Whether IKE_SA_INIT goes behind the non-ESP marker (from our NAT-T socket):
        ``encap = "force"``, or a peer port that is not a plain IKE port (500 or our
        ``ike_port``): that is the peer's NAT-T port, as strongSwan takes a ``remote_port``
        other than 500. IKE and ESP then stay on the ports the peer uses, with or without
        NAT (RFC 3948 section 2.2: ESP goes where IKE goes on the NAT-T port)."""
        assert peer.remote is not None
        plain = (IKE_PORT, self.ike_port, self.ike_port if ike_port is None else ike_port)
        return peer.config.force_encap or peer.remote[1] not in plain

    def _start(self, peer: IkePeer, local: Addr, now: float, *, natt: bool | None = None
               ) -> IkeSa:
        assert peer.remote is not None
        extra = self._init_extra.pop(peer.config.name, ())
        sa = (ExtraInitSa if extra else IkeSa)(
            peer.config, initiator=True, local=local, remote=peer.remote, now=now,
            max_children=self.limits.children_per_ike_sa,
            natt=self._natt_from_start(peer) if natt is None else natt)
        if isinstance(sa, ExtraInitSa):
            sa.extra = extra
        sa.own_addresses = self.own_addresses
        log.debug("peer %s: initiating from %s to %s (%s)", peer.config.name,
                  format_addr(local), format_addr(sa.remote),
                  "NAT-T port, non-ESP marker" if sa.natt else "plain IKE")
        self.sas[sa.local_spi] = sa
        self._index(sa)
        sa.start(now)
        self._process(sa, now)
        return sa

    def rekey_outbound(self, spi_out: int, now: float) -> bool:
        """The ESP SA ``spi_out`` passed its sequence-number soft limit: rekey its child."""
        for sa in list(self.sas.values()):
            for c in sa.children:
                if c.spi_out == spi_out and sa.rekey_child(c.spi_in, now):
                    self._process(sa, now)
                    return True
        return False

    # --- what the operator asks (the control socket, docs/operations.md) --------------------
    def sas_of(self, name: str) -> list[IkeSa]:
        """The peer's IKE SAs that are not dead, oldest first."""
        return sorted((sa for sa in self._named.get(name, ()) if sa.state is not State.DEAD),
                      key=lambda sa: sa.created)

    def _index(self, sa: IkeSa) -> None:
        """``sa`` (with its peer's configuration) by the peer's name: what is done per peer
        (the identity cap, INITIAL_CONTACT) never scans every IKE SA."""
        if sa.config is not None:
            self._named.setdefault(sa.config.name, {})[sa] = None

    def terminate(self, name: str, now: float) -> int:
        """Delete the peer's IKE SAs (an INFORMATIONAL Delete each, section 1.4.1, with their
        child SAs), and initiate to it no more until ``initiate``: how many went."""
        if name not in self.peers:
            raise KeyError(name)
        self.held.add(name)
        self._timers.cancel(_Initiate(name))
        sas = self.sas_of(name)
        for sa in sas:
            sa.delete(now)
            self._process(sa, now)
        return len(sas)

    def rekey(self, name: str, now: float, *, ike: bool = False) -> int:
        """Rekey the peer's established IKE SA (``ike``) or its child SAs now: how many
        rekeys started (one request at a time: a child SA whose turn has not come is
        rekeyed at its lifetime as before)."""
        if name not in self.peers:
            raise KeyError(name)
        started = 0
        for sa in self.sas_of(name):
            if not sa.established or sa.rekeyed:
                continue
            if ike:
                started += sa.rekey_ike(now)
            else:
                started += sum(sa.rekey_child(c.spi_in, now) for c in list(sa.children))
            self._process(sa, now)
        return started

    def remove_peer(self, name: str, now: float) -> None:
        """The peer is gone from the configuration: its IKE SAs are deleted (``terminate``)
        and its settings forgotten; its tunnel peer is the caller's."""
        self.terminate(name, now)
        peer = self.peers.pop(name)
        self.held.discard(name)
        self._init_extra.pop(name, None)
        same = self._by_remote_id.get(peer.config.remote_id, [])
        if peer in same:
            same.remove(peer)
        if not same:
            self._by_remote_id.pop(peer.config.remote_id, None)
        self._failures.pop(name, None)
        self.last_handshake.pop(name, None)
        self.last_error.pop(name, None)
        self.peer_counters.pop(name, None)
        self._certreq = certreq_union(p.config for p in self.peers.values())

    def delete_all(self, now: float) -> int:
        """Stopping: a Delete for every established IKE SA, and no more initiations; how
        many Deletes went (``closing`` says when they are answered)."""
        self.held.update(self.peers)
        for name in self.peers:
            self._timers.cancel(_Initiate(name))
        sent = 0
        for sa in list(self.sas.values()):
            if sa.state is State.DEAD:
                continue
            sent += sa.established
            sa.delete(now)
            self._process(sa, now)
        return sent

    def closing(self) -> bool:  # a Delete of ours still waits for its answer
        return any(sa.state is not State.DEAD for sa in self.sas.values())

    # --- our local address --------------------------------------------------------------------
    def _await_local(self, remote: Addr, natt: bool,
                     what: _InitWaiting | _InitiateWaiting, now: float) -> None:
        key = (remote, natt)
        waiting = self._awaiting.get(key)
        if waiting is not None:
            waiting.append(what)
            return
        log.debug("waiting for our address towards %s (%s) for NAT detection",
                  format_addr(remote), "NAT-T port" if natt else "plain IKE")
        if len(self._awaiting) >= MAX_AWAITING_LOCAL:
            oldest = next(iter(self._awaiting))
            self._local_wait_over(*oldest, now)
        self._awaiting[key] = [what]
        self._timers.schedule(_LocalWaitEnd(remote, natt), now + LOCAL_ADDRESS_WAIT)
        self._events.append(LocalAddressNeeded(remote, natt))

    def _local_wait_over(self, remote: Addr, natt: bool, now: float) -> None:
        """Nobody answered what ``LocalAddressNeeded`` asked (no route to ``remote``, say):
        an IKE_SA_INIT request that waited is dropped (its sender retransmits), and an
        initiation is tried again after the backoff."""
        self._timers.cancel(_LocalWaitEnd(remote, natt))
        for what in self._awaiting.pop((remote, natt), []):
            if isinstance(what, _InitWaiting):
                self.counters["dropped"] += 1
            elif what.name in self.peers:
                log.info("peer %s: no local address towards %s (no route to it?)",
                         what.name, format_addr(remote))
                self._initiate_later(what.name, now)

    def _initiate_later(self, name: str, now: float) -> None:
        """Initiate to ``name`` again after REINITIATE_DELAY, doubled with each failure in
        a row (up to REINITIATE_MAX)."""
        n = self._failures.get(name, 0)
        self._failures[name] = n + 1
        delay = min(REINITIATE_DELAY * 2 ** n, REINITIATE_MAX)
        self._timers.schedule(_Initiate(name), now + delay)
        log.info("peer %s: initiating again in %.0f s", name, delay)

    def local_address_found(self, remote: Addr, natt: bool, local: Addr, now: float) -> None:
        """The answer to ``LocalAddressNeeded``: what waited for it goes on. Never raises."""
        try:
            self._timers.cancel(_LocalWaitEnd(remote, natt))
            for what in self._awaiting.pop((remote, natt), []):
                if isinstance(what, _InitWaiting):
                    self._respond_init(what.msg, what.data, remote, natt, local, now)
                else:
                    peer = self.peers.get(what.name)
                    if peer is None or peer.remote != remote:
                        continue
                    if not what.probe:
                        self._start(peer, local, now, natt=natt)
                    elif self._natt_from_start(peer, ike_port=local[1]):
                        self._await_local(remote, True, _InitiateWaiting(what.name), now)
                    else:  # the peer's port is our plain IKE port: plain IKE
                        self._start(peer, local, now, natt=False)
        except Exception as e:  # the last line of defence
            self._internal_error("a local address", e, now)

    # --- receiving ----------------------------------------------------------------------------
    def receive_datagram(self, data: bytes, remote: Addr, now: float, *, natt: bool,
                         local: Addr) -> None:
        """One IKE message (marker removed) from ``remote`` on port 4500 (``natt``) or 500,
        which came to ``local`` (the socket's address, maybe a wildcard). Never raises:
        whatever a message makes go wrong is counted and logged here."""
        self.receive_calls += 1
        try:
            self._receive(data, remote, natt, local, now)
        except Exception as e:  # the last line of defence
            self._internal_error("a received message", e, now)

    def _receive(self, data: bytes, remote: Addr, natt: bool, local: Addr, now: float) -> None:
        # junk with unknown SPIs costs a lookup: nothing is parsed before an SA is found
        found = peek_receiver_spi(data)
        if found is None:
            self.counters["dropped"] += 1
            return
        self.exchanges.received(data)
        local_spi, opens = found
        if opens:
            try:
                hdr = peek_header(data)
            except IkeDecodeError:
                self.counters["dropped"] += 1
                return
            self._init_request(data, hdr, remote, natt, local, now)
            return
        sa = self.sas.get(local_spi)
        if sa is None:
            self.counters["dropped"] += 1
            self._drop_log.note("no_sa", now, remote, local_spi)
            return
        # Replies go to where the request came from (section 2.11); the SA moves to a new
        # address only for an authenticated new message (section 2.23, in IkeSa.receive).
        before = sa.remote
        if sa.receive(data, now, remote, natt, local) and sa.remote != before:
            self._ike_moved(sa, before)
        self._process(sa, now)

    def _ike_moved(self, sa: IkeSa, before: Addr) -> None:
        """An authenticated message moved the IKE SA: ESP follows it (on port 4500)."""
        log.info("peer %s: IKE SA moved from %s to %s", sa.name, format_addr(before),
                 format_addr(sa.remote))
        peer = self._tunnel_peer(sa)
        if peer is not None and sa.established and sa.natt and not sa.mobike:
            self.tunnel.set_peer_address(peer, sa.remote)  # with MOBIKE: PathUpdated

    # --- the last line of defence -------------------------------------------------------------
    #: an internal error is logged at most this often (the rest are only counted)
    ERROR_LOG_INTERVAL = 10.0
    _error_logged_at = float("-inf")
    _errors_unlogged = 0

    def _internal_error(self, what: str, exc: Exception, now: float) -> None:
        """Count an exception that escaped the IKE code and log it, rate-limited. The log
        has the exception and where it was raised, never the message or any key."""
        self.counters["errors"] += 1
        if now - self._error_logged_at < self.ERROR_LOG_INTERVAL:
            self._errors_unlogged += 1
            return
        more = f" ({self._errors_unlogged} more since the last report)" \
            if self._errors_unlogged else ""
        self._error_logged_at, self._errors_unlogged = now, 0
        log.error("internal error handling %s: %s: %s%s", what, type(exc).__name__, exc,
                  more, exc_info=(type(exc), exc, exc.__traceback__))

    # --- IKE_SA_INIT requests: the responder's defences (docs/security.md) ------------------
    def _half_open(self) -> int:
        return len(self._half_open_sas)

    def _cookie_passed(self, data: bytes, hdr: Header, remote: Addr, natt: bool,
                       now: float) -> bool:
        """Above the cookie threshold: whether the request carries a valid cookie; if not,
        it is answered with a fresh one (section 2.6), statelessly."""
        try:
            ni, got = peek_nonce_and_cookie(data)
        except IkeDecodeError:
            self.counters["dropped"] += 1
            return False
        ni = ni or b""
        if got is not None and self._cookies.valid(got, ni, hdr.spi_i, remote, now):
            return True
        cookie = self._cookies.make(ni, hdr.spi_i, remote, now)
        self.counters["cookies_sent"] += 1
        self._drop_log.note("cookie", now, remote)
        out = encode_message(Header.make(ExchangeType.IKE_SA_INIT, hdr.spi_i,
                                         initiator=False, response=True),
                             [Notify(NotifyType.COOKIE, cookie)])
        self._outgoing.append(Outgoing(out, remote, natt))
        return False

    def _admit_init(self, data: bytes, hdr: Header, remote: Addr, natt: bool,
                    now: float) -> bool:
        """Whether a new IKE_SA_INIT request gets a half-open SA. Checked from the cheapest
        to the dearest: the cookie (stateless, from the payload headers alone), the
        half-open cap, the source's token bucket, the bucket of all sources; only then is
        the message decoded and a key exchange spent."""
        limits = self.limits
        if (self._half_open() >= limits.cookie_threshold
                and not self._cookie_passed(data, hdr, remote, natt, now)):
            return False
        if self._half_open() >= limits.half_open_max:
            self.counters["init_half_open_full"] += 1
            self._drop_log.note("half_open_full", now, remote)
            return False
        if not (self._init_per_source.allow(remote[0], now) and self._init_total.allow(now)):
            self.counters["init_rate_limited"] += 1
            self._drop_log.note("rate_limited", now, remote)
            return False
        return True

    def _init_request(self, data: bytes, hdr: Header, remote: Addr, natt: bool, local: Addr,
                      now: float) -> None:
        self.counters["init_requests"] += 1
        known = self._half_open_sas.get((hdr.spi_i, remote))
        if known is not None:  # a retransmitted IKE_SA_INIT: answer from the cache
            known.receive(data, now)
            self._process(known, now)
            return
        if not self._admit_init(data, hdr, remote, natt, now):
            return
        try:
            msg = decode_message(data)
        except IkeDecodeError:
            self.counters["dropped"] += 1
            return
        if unspecified(local):  # a wildcard socket: which source does the kernel pick?
            self._await_local(remote, natt, _InitWaiting(msg, data), now)
            return
        self._respond_init(msg, data, remote, natt, local, now)

    def _respond_init(self, msg: Message, data: bytes, remote: Addr, natt: bool, local: Addr,
                      now: float) -> None:
        known = self._half_open_sas.get((msg.header.spi_i, remote))
        if known is not None:  # it came again while we waited for the local address
            known.receive(data, now)
            self._process(known, now)
            return
        sa = IkeSa(None, initiator=False, local=local, remote=remote, now=now,
                   lookup=self._lookup, max_children=self.limits.children_per_ike_sa,
                   half_open_timeout=self.limits.half_open_timeout)
        sa.own_addresses = self.own_addresses
        proposals = next(iter(self.peers.values())).config.ike_proposals if self.peers else ()
        sa.respond_init(msg, data, now, proposals, natt=natt, certreq=self._certreq)
        if sa.state is not State.DEAD:
            self.sas[sa.local_spi] = sa
            self._half_open_sas[(sa.spi_i, remote)] = sa
            self._half_open_keys[sa] = (sa.spi_i, remote)
        self._process(sa, now)

    # --- effects ------------------------------------------------------------------------------
    def _process(self, sa: IkeSa, now: float) -> None:
        """What ``sa`` has to send goes out; its events take effect."""
        out = sa.datagrams_to_send()
        self.requests_sent += sum(not o.data[_FLAGS_AT] & IKE_FLAG_RESPONSE for o in out)
        self._outgoing += out
        while (ev := sa.next_event()) is not None:
            if isinstance(ev, ChildUp):
                self._child_up(ev, now)
            elif isinstance(ev, ChildDown):
                self._child_down(ev, now)
            elif isinstance(ev, IkeUp):
                self._ike_up(ev, now)
            elif isinstance(ev, IkeDown):
                self._ike_down(ev, now)
            elif isinstance(ev, ChildRefused):
                self._child_refused(ev, now)
            elif isinstance(ev, PathUpdated):
                self._path_updated(ev, now)
            else:
                self._ike_rekeyed(ev)
        if sa.state is not State.INIT_DONE:
            key = self._half_open_keys.pop(sa, None)
            if key is not None:
                self._half_open_sas.pop(key, None)
        if sa.state is State.DEAD:
            self.sas.pop(sa.local_spi, None)
            named = self._named.get(sa.name, {})
            named.pop(sa, None)
            if not named:
                self._named.pop(sa.name, None)
            self._timers.cancel(sa)
        else:
            self._schedule(sa)

    def _schedule(self, sa: IkeSa) -> None:
        d = sa.get_timer()
        if d is None:
            self._timers.cancel(sa)
        else:
            self._timers.schedule(sa, d)

    def _tunnel_peer(self, ike: IkeSa) -> Peer | None:
        return self.tunnel.peers.get(ike.name)

    def _count(self, name: str, what: str) -> None:
        self.counters[what] += 1
        per = self.peer_counters.setdefault(
            name, {"ike_rekeys": 0, "child_rekeys": 0, "retransmits": 0})
        per[what] += 1

    def _ike_rekeyed(self, ev: IkeRekeyed) -> None:
        self.sas[ev.new.local_spi] = ev.new
        self._index(ev.new)
        # the children moved to the new IKE SA, and so do their byte lifetimes
        for spi_in, (owner, tx_start) in list(self._byte_limits.items()):
            if owner is ev.old:
                self._byte_limits[spi_in] = (ev.new, tx_start)
        self._schedule(ev.new)
        self._count(ev.new.name, "ike_rekeys")
        log.info("peer %s: IKE SA rekeyed", ev.new.name)
        self._log_ike_keys(ev.new)

    def _ike_up(self, ev: IkeUp, now: float) -> None:
        ike = ev.ike
        self._index(ike)
        self._cap_identity(ike, now)
        if ike.initial_contact:
            # section 2.4: the peer rebooted; every older SA with it is gone on its side
            for other in list(self._named.get(ike.name, ())):
                if other is not ike:
                    other.forget()
                    self._process(other, now)
        peer = self._tunnel_peer(ike)
        self._failures.pop(ike.name, None)
        log.info("peer %s: IKE SA established with %s (%s); NAT: %s", ike.name,
                 format_addr(ev.remote), ike.proposal.name if ike.proposal else "?",
                 "this side" if ev.local_behind_nat else
                 "peer side" if ev.remote_behind_nat else "none")
        self._log_ike_keys(ike)
        self.last_handshake[ike.name] = now
        if peer is not None:
            # ESP goes where IKE goes on 4500 (RFC 3948); keepalives only if we are behind NAT
            # (ike.remote: where the authenticated IKE_AUTH exchange came from or went)
            # (without NAT on plain IKE the peer's NAT-T port is not known: the RFC 3948
            # port, which ESP rebinding corrects once an authentic packet shows another);
            # an address keeps its family's shape (sockaddr), so that IPv6 finds its socket
            addr = ike.remote if ike.natt else sockaddr(ike.remote[0], NAT_T_PORT)
            self.tunnel.set_peer_address(peer, addr)
            mode = KeepaliveMode(ike.config.keepalive) if ike.config else KeepaliveMode.NAT
            on = mode.wanted(ev.local_behind_nat)
            if ike.config is not None:
                peer.keepalive_interval = ike.config.keepalive_interval
            self.tunnel.set_keepalive(peer, on, ike.last_rx)

    def _log_ike_keys(self, ike: IkeSa) -> None:
        if self.keylog is None:
            return
        k = ike.keys_for_log()
        if k is not None:
            self.keylog.ike_sa(*k)

    def _child_up(self, ev: ChildUp, now: float) -> None:
        peer = self._tunnel_peer(ev.ike)
        if peer is None:
            log.warning("IKE peer %s has no tunnel peer; child SA ignored", ev.ike.name)
            return
        cfg = ev.ike.config
        inbound = InboundSA(ev.spi_in, ev.suite, ev.keymat_in, esn=ev.esn,
                            replay_window=cfg.replay_window if cfg else 1024)
        self.tunnel.install_inbound(peer, inbound)
        # a packet lifetime is the outbound SA's soft limit: RekeyNeeded, then rekey_outbound
        soft = cfg.rekey_packets if cfg and cfg.rekey_packets else None
        outbound = OutboundSA(ev.spi_out, ev.suite, ev.keymat_out, esn=ev.esn,
                              tfc_pad=cfg.tfc_pad if cfg else 0, soft_limit=soft)
        self._outbound_sas[(ev.ike.name, ev.spi_out)] = (peer, outbound)
        if peer.outbound is None:
            self._events.append(PeerUp(peer.name))
        self.tunnel.set_outbound(peer, outbound)
        peer.add_child(ev.spi_in, outbound, ev.remote_ts)  # each child's prefixes to its SA
        self.child_since[ev.spi_in] = self.last_handshake[peer.name] = now
        if cfg and cfg.rekey_bytes:
            self._byte_limits[ev.spi_in] = (ev.ike, peer.tx_bytes)
            if _Check.BYTE_LIFETIMES not in self._timers:
                self._timers.schedule(_Check.BYTE_LIFETIMES, now + LIFETIME_CHECK)
        if ev.replaces is not None:
            self._grace(ev.replaces, now)
            self._count(peer.name, "child_rekeys")
        if self.keylog is not None:
            v6 = ":" in ev.ike.remote[0]
            self.keylog.esp_sa(ev.spi_in, ev.suite, ev.keymat_in, ipv6=v6)
            self.keylog.esp_sa(ev.spi_out, ev.suite, ev.keymat_out, ipv6=v6)
        log.info("peer %s: child SA up, SPIs in %#010x out %#010x, %s%s%s", ev.ike.name,
                 ev.spi_in, ev.spi_out, ev.suite.name, " ESN" if ev.esn else "",
                 " (rekey)" if ev.replaces is not None else "")

    def _child_refused(self, ev: ChildRefused, now: float) -> None:
        again = (f"asking again in {ev.retry_at - now:.0f} s" if ev.retry_at is not None
                 else "not asking again")
        log.warning("peer %s: child SA refused by the peer: %s; the IKE SA stays up; %s",
                    ev.ike.name, ev.reason, again)
        self.last_error[ev.ike.name] = f"child SA refused: {ev.reason}"

    def _grace(self, spi_in: int, now: float) -> None:
        """The inbound SA ``spi_in`` goes CHILD_GRACE from now (or earlier, if it already
        had a grace period)."""
        key = _GraceEnd(spi_in)
        if key not in self._timers:
            self._timers.schedule(key, now + CHILD_GRACE)

    def _child_down(self, ev: ChildDown, now: float) -> None:
        # keep the inbound SA a moment for packets in flight; stop sending on the outbound
        # SA unless a rekey already replaced it (ChildUp of the new one comes first). If
        # it was in use, the newest child SA still up with that peer takes over: after a
        # rekey collision (section 2.8.1) the redundant SA, installed last, is deleted
        # while the surviving one, installed before it, stays.
        self._grace(ev.spi_in, now)
        self._outbound_sas.pop((ev.ike.name, ev.spi_out), None)
        peer = self._tunnel_peer(ev.ike)
        if peer is not None:
            peer.drop_child(ev.spi_in)  # only its prefixes; the other children's stay
        if peer is not None and peer.outbound is not None and peer.outbound.spi == ev.spi_out:
            survivor = next((sa for p, sa in reversed(self._outbound_sas.values())
                             if p is peer), None)
            if survivor is not None:
                self.tunnel.set_outbound(peer, survivor)
            else:
                self.tunnel.set_outbound(peer, None)
                self._events.append(PeerDown(peer.name, "its last child SA was deleted"))
        self.child_since.pop(ev.spi_in, None)
        log.info("peer %s: child SA %#010x/%#010x deleted", ev.ike.name, ev.spi_in, ev.spi_out)

    def _ike_down(self, ev: IkeDown, now: float) -> None:
        if ev.ike.config is None:
            self._half_open_down(now)  # never authenticated: a summary, not a line each
            return
        if ev.ike.rekeyed:
            log.info("peer %s: old IKE SA deleted after the rekey", ev.ike.name)
            return
        if ev.cause is DownCause.REPLACED:
            log.info("peer %s: older IKE SA dropped: %s", ev.ike.name, ev.reason)
            return
        if ev.cause is DownCause.AUTHENTICATION_FAILED:
            count_refusal(self.cert_refusals, ev.ike.config, ev.reason)
        # a Delete either way is the normal end of an IKE SA; the rest are failures
        level = (logging.INFO if ev.cause in (DownCause.DELETED, DownCause.DELETED_BY_PEER)
                 else logging.WARNING)
        log.log(level, "peer %s: IKE SA down: %s", ev.ike.name, ev.reason)
        self.last_error[ev.ike.name] = f"IKE SA down: {ev.reason}"
        peer = self.peers.get(ev.ike.name)
        if (peer is not None and peer.initiate and ev.ike.initiator
                and ev.ike.name not in self.held):
            self._initiate_later(peer.config.name, now)

    def _cap_identity(self, ike: IkeSa, now: float) -> None:
        """At most ``ike_sas_per_identity`` established IKE SAs per peer: beyond it the
        oldest are deleted, so that a peer (or a stolen key) cannot pile them up."""
        same = [sa for sa in self._named.get(ike.name, ())
                if sa is not ike and sa.state is State.ESTABLISHED and not sa.rekeyed]
        excess = len(same) + 1 - self.limits.ike_sas_per_identity
        if excess <= 0:
            return
        same.sort(key=lambda sa: sa.created)
        for old in same[:excess]:
            log.info("peer %s: more than %d IKE SAs; deleting the oldest", ike.name,
                     self.limits.ike_sas_per_identity)
            self.counters["identity_cap_deleted"] += 1
            old.delete(now)
            self._process(old, now)

    def _half_open_down(self, now: float) -> None:
        """A responder SA that never authenticated went (timed out or refused). Floods make
        thousands: one summary line per HALF_OPEN_LOG_INTERVAL instead of a line each."""
        self.counters["half_open_dropped"] += 1
        self._half_open_gone += 1
        if now >= self._half_open_log_at:
            log.info("%d half-open IKE SA(s) went without authenticating (timed out or "
                     "refused) since the last such line; %d half-open now",
                     self._half_open_gone, self._half_open())
            self._half_open_gone = 0
            self._half_open_log_at = now + HALF_OPEN_LOG_INTERVAL

    # --- timers -------------------------------------------------------------------------------
    def handle_timer(self, now: float) -> None:
        """Everything due by ``now``. Never raises (see ``receive_datagram``): an exception
        is counted and logged, and an IKE SA whose timer raised is tried again a second
        later (not at once: that would spin on an SA that fails each time)."""
        self.timer_calls += 1
        for key in sorted(self._timers.pop_due(now), key=_timer_rank):
            try:
                self._fire(key, now)
            except Exception as e:  # the last line of defence
                self._internal_error("a timer", e, now)
                if isinstance(key, IkeSa) and key.local_spi in self.sas:
                    self._timers.schedule(key, now + 1.0)

    def _fire(self, key: _TimerKey, now: float) -> None:
        if isinstance(key, IkeSa):
            real = key.get_timer()
            if real is not None and real <= now:
                req = key.request
                tries = req.tries if req is not None else 0
                key.handle_timer(now)
                if req is not None and key.request is req and req.tries > tries:
                    self._count(key.name, "retransmits")
                self._process(key, now)
            else:
                self._schedule(key)
        elif isinstance(key, _GraceEnd):
            with contextlib.suppress(KeyError):  # already gone with its peer
                self.tunnel.remove_inbound(key.spi)
                log.debug("inbound SA %#010x removed: its grace period is over", key.spi)
        elif isinstance(key, _Initiate):
            if key.name in self.peers and key.name not in self.held \
                    and not self.sas_of(key.name):
                self.initiate(key.name, now)
        elif isinstance(key, _LocalWaitEnd):
            self._local_wait_over(key.remote, key.natt, now)
        else:
            self._check_byte_lifetimes(now)

    def _check_byte_lifetimes(self, now: float) -> None:
        """Child SAs past ``rekey_bytes`` in either direction are rekeyed (checked every
        LIFETIME_CHECK seconds while any byte lifetime is set)."""
        for spi_in, (ike, tx_start) in list(self._byte_limits.items()):
            if ike.state is State.DEAD or all(c.spi_in != spi_in for c in ike.children):
                del self._byte_limits[spi_in]
                continue
            peer = self._tunnel_peer(ike)
            inbound = self.tunnel.inbound_sa(spi_in)
            limit = ike.config.rekey_bytes if ike.config else 0
            rx = inbound.bytes if inbound else 0
            tx = peer.tx_bytes - tx_start if peer is not None else 0
            if limit and (rx >= limit or tx >= limit) and ike.rekey_child(spi_in, now):
                log.debug("peer %s: child SA %#010x past rekey_bytes (%d in, %d out, limit "
                          "%d): rekeying", ike.name, spi_in, rx, tx, limit)
                del self._byte_limits[spi_in]
                self._process(ike, now)
        if self._byte_limits:
            self._timers.schedule(_Check.BYTE_LIFETIMES, now + LIFETIME_CHECK)

    def stats(self) -> dict[str, object]:
        return {
            "ike_sas": [
                {"peer": sa.name, "state": sa.state.value, "initiator": sa.initiator,
                 "remote": format_addr(sa.remote), "natt": sa.natt,
                 "local_behind_nat": sa.local_behind_nat,
                 "remote_behind_nat": sa.remote_behind_nat, "mobike": sa.mobike,
                 "path_updates": sa.path_updates, "peer_addresses": list(sa.peer_addresses),
                 "children": [f"{c.spi_in:#010x}/{c.spi_out:#010x}" for c in sa.children]}
                for sa in self.sas.values()
            ],
            **self.counters,
            "cert_refusals": dict(self.cert_refusals),
        }
