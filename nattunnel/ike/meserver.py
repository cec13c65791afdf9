"""The two roles of IKEv2 mediation (draft-brunner-ikev2-mediation, strongSwan's
``mediation_manager.c``, ``ike_me.c`` and ``connect_manager.c``), sans-I/O cores:

- ``MediationServer``: answers mediation connections (``MediationSa`` responders), keeps the
  registered peers by identity (a bounded table: the peer's last IKE SA, charon's
  ``update_sa_id``), forwards a ME_CONNECT to the peer it names, or answers
  ME_CONNECT_FAILED and remembers the requester (when it sent ME_CALLBACK) to tell it with a
  ME_CONNECT ME_CALLBACK once that peer registers.
- ``MediationClient``: a mediated peer's side: the mediation connection to its server, the
  ME_CONNECT exchanges for each mediated peer (host, server-reflexive and relayed candidates),
  and the check lists (``nattunnel.ike.mecheck``). Its events say when a path is chosen (the
  initiator then starts the mediated IKE SA over it: ``PathReady``), when the other peer is
  not registered (``PeerOffline``: the server calls back), and when checks fail.

Both follow the core contract: ``receive_datagram`` (marker removed), ``datagrams_to_send()``
(``Outgoing``: IKE and checks, all on the NAT-T port but the first IKE_SA_INIT),
``next_event()``, ``get_timer()``/``handle_timer(now)``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..addr import Addr, format_addr, sockaddr
from ..constants import (
    ME_CONNECTID_LEN,
    ME_CONNECTKEY_LEN,
    ME_TYPE_HOST,
    ME_TYPE_RELAYED,
    ME_TYPE_SERVER_REFLEXIVE,
    NAT_T_PORT,
    MeNotify,
)
from .base import Lookup, State
from .config import Identity, IkeConfig
from .events import IkeDown, IkeRekeyed, IkeUp, Outgoing
from .mecheck import (
    CHECKS_TIMEOUT,
    DEFAULT_MAX_PAIRS,
    DEFAULT_PACE,
    Candidate,
    CheckList,
    ChecksFailed,
    PathChosen,
    decode_check,
    is_check,
)
from .mediation import MeConnect, MeConnectAnswered, MeConnectIn, MediationSa
from .message import IkeDecodeError, Notify, Payload, decode_message, peek_receiver_spi
from .proposals import DEFAULT_IKE_PROPOSALS, IkeProposal

log = logging.getLogger("nattunnel.mediation")

#: the server's table of registered peers, and of requesters waiting for a peer
MAX_PEERS = 1024
MAX_WAITING = 16
MAX_HALF_OPEN = 256
#: a mediated peer's connections in progress (check lists) at once
MAX_SESSIONS = 64
#: the mediation connection again after it failed: 5 s, doubling up to 60 s
RETRY_BASE = 5.0
RETRY_MAX = 60.0
#: keep a finished check list this long to answer the peer's late checks
LINGER = 5.0


def _drain_sa_events(sa: MediationSa) -> list[object]:
    out: list[object] = []
    while (ev := sa.next_event()) is not None:
        out.append(ev)
    return out


# --- the server --------------------------------------------------------------------------------
@dataclass
class ServerStats:
    registered: int = 0
    forwarded: int = 0
    failed: int = 0
    callbacks: int = 0
    refused: int = 0
    dropped: int = 0


class MediationServer:
    """A mediation server: every IKE SA it answers is a mediation connection."""

    def __init__(self, lookup: Lookup, local: Addr, *,
                 proposals: Sequence[IkeProposal] = DEFAULT_IKE_PROPOSALS,
                 max_peers: int = MAX_PEERS) -> None:
        self.lookup = lookup
        self.local = local
        self.proposals = tuple(proposals)
        self.max_peers = max_peers
        self.sas: dict[bytes, MediationSa] = {}
        self.half_open: dict[bytes, MediationSa] = {}  # by the peer's SPI
        #: identity -> its registered mediation SA
        self.registered: dict[Identity, MediationSa] = {}
        #: identity of an offline peer -> who asked for it with ME_CALLBACK
        self.waiting: dict[Identity, list[Identity]] = {}
        self.stats = ServerStats()
        self._outputs: list[Outgoing] = []
        self._now = 0.0

    def receive_datagram(self, data: bytes, remote: Addr, now: float, *, natt: bool,
                         local: Addr | None = None) -> None:
        self._now = now
        found = peek_receiver_spi(data)
        if found is None:
            self.stats.dropped += 1
            return
        spi, opens = found
        if opens:
            here = self.local if local is None or local[0] in ("0.0.0.0", "::") else \
                sockaddr(local[0], local[1] if natt else self.local[1])
            self._init_request(data, remote, natt, here, now)
            return
        sa = self.sas.get(spi)
        if sa is None:
            self.stats.dropped += 1
            return
        sa.receive(data, now, remote, natt, local)
        self._process(sa, now)

    def _init_request(self, data: bytes, remote: Addr, natt: bool, local: Addr,
                      now: float) -> None:
        spi_i = data[:8]
        old = self.half_open.get(spi_i)
        if old is not None and old.state is not State.DEAD:
            old.receive(data, now, remote, natt)
            self._process(old, now)
            return
        if len(self.half_open) >= MAX_HALF_OPEN:
            self.stats.dropped += 1
            return
        try:
            msg = decode_message(data)
        except IkeDecodeError:
            self.stats.dropped += 1
            return
        if msg.notify(MeNotify.ME_MEDIATION) is None:
            self.stats.refused += 1  # charon: not a mediation connection, not for us
            return
        sa = MediationSa(None, initiator=False, local=local, remote=remote, now=now,
                         lookup=self.lookup)
        sa.decide = self._decide
        sa.respond_init(msg, data, now, self.proposals, natt=natt)
        if sa.state is not State.DEAD:
            self.sas[sa.local_spi] = sa
            self.half_open[spi_i] = sa
        self._process(sa, now)

    def _process(self, sa: MediationSa, now: float) -> None:
        self._outputs += sa.datagrams_to_send()
        for ev in _drain_sa_events(sa):
            if isinstance(ev, IkeUp):
                self.half_open.pop(sa.spi_i, None)
                self._register(sa, now)
            elif isinstance(ev, IkeDown):
                self._forget(sa)
            elif isinstance(ev, IkeRekeyed) and isinstance(ev.new, MediationSa):
                new = ev.new
                new.decide = self._decide
                self.sas[new.local_spi] = new
                if sa.config is not None and self.registered.get(sa.config.remote_id) is sa:
                    self.registered[sa.config.remote_id] = new
        sa.me_events.clear()  # the server acts in _decide
        self._outputs += sa.datagrams_to_send()

    def _register(self, sa: MediationSa, now: float) -> None:
        assert sa.config is not None
        who = sa.config.remote_id
        if who not in self.registered and len(self.registered) >= self.max_peers:
            log.warning("mediation: %s refused: %d peers registered already", who,
                        len(self.registered))
            self.stats.refused += 1
            sa.delete(now)
            self._outputs += sa.datagrams_to_send()
            return
        old = self.registered.get(who)
        if old is not None and old is not sa and sa.initial_contact:
            # RFC 7296 section 2.4: the peer has forgotten its other SAs with us (a restart)
            old.forget()
            self._forget(old)
            self._outputs += old.datagrams_to_send()
        self.registered[who] = sa
        self.stats.registered += 1
        log.info("mediation: %s registered from %s", who, format_addr(sa.remote))
        for requester in self.waiting.pop(who, []):
            target = self.registered.get(requester)
            if target is not None and target.me_connect(MeConnect(who, callback=True), now):
                self.stats.callbacks += 1
                self._outputs += target.datagrams_to_send()

    def _forget(self, sa: MediationSa) -> None:
        self.sas.pop(sa.local_spi, None)
        self.half_open.pop(sa.spi_i, None)
        if sa.config is not None and self.registered.get(sa.config.remote_id) is sa:
            del self.registered[sa.config.remote_id]
            log.info("mediation: %s gone (%s)", sa.config.remote_id, sa.dead_reason)

    def _decide(self, sa: MediationSa, req: MeConnect) -> list[Payload]:
        """charon's ``build_r_ms``: the answer to a peer's ME_CONNECT, and the forward."""
        assert sa.config is not None
        requester = sa.config.remote_id
        target = self.registered.get(req.peer)
        if target is not None and target.state is not State.ESTABLISHED:
            target = None
        if not req.connect_id:  # a bare ME_CALLBACK: nothing a server does with it
            return []
        if target is None:
            if req.callback:
                waiting = self.waiting.setdefault(req.peer, [])
                if requester not in waiting and len(waiting) < MAX_WAITING and \
                        len(self.waiting) <= self.max_peers:
                    waiting.append(requester)
            self.stats.failed += 1
            log.info("mediation: %s asked for %s, who is not registered", requester, req.peer)
            return [Notify(MeNotify.ME_CONNECT_FAILED)]
        fwd = MeConnect(requester, req.connect_id, req.key, req.endpoints,
                        response=req.response)
        if target.me_connect(fwd, self._now):
            self.stats.forwarded += 1
            log.info("mediation: ME_CONNECT%s from %s forwarded to %s",
                     " (response)" if req.response else "", requester, req.peer)
        self._outputs += target.datagrams_to_send()
        return []

    # --- the contract ---
    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._outputs = self._outputs, []
        return out

    def next_event(self) -> None:
        return None

    def get_timer(self) -> float | None:
        times = [t for sa in self.sas.values() if (t := sa.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        for sa in list(self.sas.values()):
            t = sa.get_timer()
            if t is not None and t <= now:
                sa.handle_timer(now)
                self._process(sa, now)
            if sa.state is State.DEAD:
                self._forget(sa)

    def describe(self) -> dict[str, object]:
        return {"registered": {str(k): format_addr(v.remote) for k, v in self.registered.items()},
                "waiting": {str(k): [str(r) for r in v] for k, v in self.waiting.items()},
                "stats": vars(self.stats).copy()}


# --- the mediated peer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MediationUp:
    server: Addr
    srflx: Addr | None


@dataclass(frozen=True)
class MediationDown:
    reason: str


@dataclass(frozen=True)
class PeerOffline:
    name: str


@dataclass(frozen=True)
class PathReady:
    """Checks found a path to peer ``name``: the initiator starts the mediated IKE SA from
    ``local`` to ``remote`` (``initiator``); the responder's best valid pair."""

    name: str
    local: Addr
    remote: Addr
    connect_id: bytes
    initiator: bool


@dataclass(frozen=True)
class PathFailed:
    name: str
    reason: str


@dataclass(frozen=True)
class PeerCandidates:
    """ME_CONNECT told us peer ``name``'s candidates (the checks start on them): where a
    TURN relay needs its permissions, and the peer's relayed candidate, if any."""

    name: str
    candidates: tuple[Candidate, ...]
    initiator: bool


ClientEvent = (MediationUp | MediationDown | PeerOffline | PathReady | PathFailed
               | PeerCandidates)


@dataclass
class Session:
    """One mediated connection in progress: one ME_CONNECTID."""

    name: str
    peer: Identity
    connect_id: bytes
    initiator: bool
    my_key: bytes
    local: list[Candidate]
    started: float
    checks: CheckList | None = None
    done_at: float | None = None


@dataclass
class ClientStats:
    connects: int = 0
    offline: int = 0
    callbacks: int = 0
    unknown_peer: int = 0
    checks_in: int = 0
    checks_dropped: int = 0
    paths: int = 0
    failures: int = 0
    mediation_ups: int = 0


@dataclass
class MediationClient:
    """A mediated peer: its mediation connection to ``server`` (``config`` names the server's
    identity and our auth) and its mediated peers (name -> the identity asked for in ID_PEER).
    ``hosts``: our host candidates (our addresses and the NAT-T port); ``relayed``: a TURN
    relayed address to offer too."""

    config: IkeConfig
    server: Addr
    local: Addr
    peers: dict[str, Identity]
    hosts: list[Addr] = field(default_factory=list)
    relayed: Addr | None = None
    nat_port: int = NAT_T_PORT
    pace: float = DEFAULT_PACE
    max_pairs: int = DEFAULT_MAX_PAIRS
    sa: MediationSa | None = None
    sessions: dict[bytes, Session] = field(default_factory=dict)
    stats: ClientStats = field(default_factory=ClientStats)

    def __post_init__(self) -> None:
        self._outputs: list[Outgoing] = []
        self._events: deque[ClientEvent] = deque()
        self._wanted: set[str] = set()  # connect as soon as the mediation connection is up
        self._retry_at: float | None = None
        self._retry_delay = RETRY_BASE
        self._up = False
        #: a responder's session: the initiator's key and candidates until the server
        #: answered our ME_CONNECT (ME_RESPONSE)
        self._responder_data: dict[bytes, tuple[bytes, list[Candidate]]] = {}
        #: mediation SAs replaced by a rekey, until they are deleted
        self._retired: list[MediationSa] = []
        self._stopped = False  # stop(): no reconnection

    # --- the mediation connection ---
    def start(self, now: float) -> None:
        self.sa = MediationSa(self.config, initiator=True, local=self.local,
                              remote=self.server, now=now,
                              natt=self.server[1] == self.nat_port)
        self._retry_at = None
        self.sa.start(now)
        self._process(now)

    @property
    def up(self) -> bool:
        return self.sa is not None and self.sa.state is State.ESTABLISHED

    def stop(self, now: float) -> bool:
        """Stopping: a Delete for the mediation SA, so that the server drops our
        registration at once (not after its liveness checks), and no reconnection. True
        if a Delete went (``closing`` says when it is answered)."""
        self._stopped = True
        self._retry_at = None
        self._wanted.clear()
        sa = self.sa
        if sa is None or sa.state is State.DEAD:
            return False
        sent = sa.state is State.ESTABLISHED
        sa.delete(now)
        self._process(now)
        return sent

    def closing(self) -> bool:  # our Delete of the mediation SA still waits for its answer
        return self.sa is not None and self.sa.state is not State.DEAD

    def candidates(self) -> list[Candidate]:
        """Ours, as ME_ENDPOINTs: each host address, the server-reflexive one (based on the
        mediation connection's local address), a relayed one."""
        out = [Candidate.of(ME_TYPE_HOST, sockaddr(h[0], h[1])) for h in self.hosts]
        if self.sa is not None and self.sa.srflx is not None:
            base = sockaddr(self.sa.local[0], self.nat_port)
            out.append(Candidate.of(ME_TYPE_SERVER_REFLEXIVE, self.sa.srflx, base))
        if self.relayed is not None:
            out.append(Candidate.of(ME_TYPE_RELAYED, self.relayed,
                                    sockaddr(self.sa.local[0] if self.sa else self.local[0],
                                             self.nat_port)))
        return out

    def connect(self, name: str, now: float) -> bool:
        """Ask the server to mediate with peer ``name`` (now, or once the mediation
        connection is up). False if that cannot be (unknown peer, too many sessions)."""
        if name not in self.peers:
            return False
        if not self.up:
            self._wanted.add(name)
            return True
        if len(self.sessions) >= MAX_SESSIONS:
            return False
        assert self.sa is not None
        cid = os.urandom(ME_CONNECTID_LEN)
        s = Session(name, self.peers[name], cid, True, os.urandom(ME_CONNECTKEY_LEN),
                    self.candidates(), now)
        self.sessions[cid] = s
        self.stats.connects += 1
        log.info("mediation: asking %s to connect us with %s (%d candidates)",
                 format_addr(self.server), s.peer, len(s.local))
        self.sa.me_connect(MeConnect(s.peer, cid, s.my_key, tuple(s.local), callback=True),
                           now)
        self._process(now)
        return True

    # --- receiving ---
    def receive_datagram(self, data: bytes, remote: Addr, now: float, *, natt: bool,
                         local: Addr | None = None) -> bool:
        """True if the datagram was ours: a connectivity check, or for the mediation SA."""
        if is_check(data):
            self._receive_check(data, remote, local, now)
            return True
        sa = self.sa
        if sa is None or len(data) < 16:
            return False
        if data[:8] != sa.spi_i:  # the initiator's SPI, whoever started the SA (a rekey)
            old = next((o for o in self._retired if o.spi_i == data[:8]), None)
            if old is None:
                return False
            old.receive(data, now, remote, natt, local)  # its Delete, after a rekey
            self._outputs += old.datagrams_to_send()
            self._retired = [o for o in self._retired if o.state is not State.DEAD]
            return True
        sa.receive(data, now, remote, natt, local)
        self._process(now)
        return True

    def _receive_check(self, data: bytes, remote: Addr, local: Addr | None,
                       now: float) -> None:
        try:
            check = decode_check(data)
        except (IkeDecodeError, ValueError):
            self.stats.checks_dropped += 1
            return
        s = self.sessions.get(check.connect_id)
        if s is None or s.checks is None:
            self.stats.checks_dropped += 1
            return
        self.stats.checks_in += 1
        to = local if local is not None and not _wildcard(local) else None
        s.checks.receive(check, remote, to, now)
        self._process_checks(s, now)

    # --- what the mediation SA said ---
    def _process(self, now: float) -> None:
        sa = self.sa
        if sa is None:
            return
        self._outputs += sa.datagrams_to_send()
        for ev in _drain_sa_events(sa):
            if isinstance(ev, IkeUp):
                self._mediation_up(now)
            elif isinstance(ev, IkeDown):
                self._mediation_down(ev.reason, now)
            elif isinstance(ev, IkeRekeyed) and isinstance(ev.new, MediationSa):
                ev.new.srflx = sa.srflx
                self.sa = ev.new
                self._retired.append(sa)  # until its Delete is done
        while sa.me_events:
            me = sa.me_events.popleft()
            if isinstance(me, MeConnectIn):
                self._me_connect_in(me.request, now)
            elif isinstance(me, MeConnectAnswered):
                self._me_answered(me, now)
        self._outputs += sa.datagrams_to_send()

    def _mediation_up(self, now: float) -> None:
        assert self.sa is not None
        self._up = True
        self._retry_delay = RETRY_BASE
        self.stats.mediation_ups += 1
        log.info("mediation: connected to %s, server-reflexive address %s",
                 format_addr(self.server),
                 format_addr(self.sa.srflx) if self.sa.srflx else "none")
        self._events.append(MediationUp(self.server, self.sa.srflx))
        wanted, self._wanted = self._wanted, set()
        for name in sorted(wanted):
            self.connect(name, now)

    def _mediation_down(self, reason: str, now: float) -> None:
        if self._up:
            self._events.append(MediationDown(reason))
        self._up = False
        if self._stopped:
            return
        log.warning("mediation: the connection to %s failed: %s; again in %.0f s",
                    format_addr(self.server), reason, self._retry_delay)
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    def _name_of(self, peer: Identity) -> str | None:
        return next((n for n, i in self.peers.items() if i == peer), None)

    def _me_connect_in(self, req: MeConnect, now: float) -> None:
        name = self._name_of(req.peer)
        if name is None:
            self.stats.unknown_peer += 1
            log.info("mediation: ME_CONNECT from %s, who is not one of our peers", req.peer)
            return
        if req.callback and not req.connect_id:
            self.stats.callbacks += 1
            log.info("mediation: %s is registered now (ME_CALLBACK): connecting", req.peer)
            self.connect(name, now)
            return
        s = self.sessions.get(req.connect_id)
        if req.response:
            if s is None or not s.initiator or s.checks is not None:
                return
            self._start_checks(s, req.key, list(req.endpoints), now)
            return
        if s is not None or len(self.sessions) >= MAX_SESSIONS:
            return
        s = Session(name, req.peer, req.connect_id, False, os.urandom(ME_CONNECTKEY_LEN),
                    self.candidates(), now)
        self.sessions[req.connect_id] = s
        self._responder_data[req.connect_id] = (req.key, list(req.endpoints))
        assert self.sa is not None
        self.sa.me_connect(MeConnect(req.peer, req.connect_id, s.my_key, tuple(s.local),
                                     response=True), now)

    def _me_answered(self, ans: MeConnectAnswered, now: float) -> None:
        req = ans.request
        s = self.sessions.get(req.connect_id)
        if s is None:
            return
        if ans.failed:
            del self.sessions[req.connect_id]
            if not req.response:
                self.stats.offline += 1
                log.info("mediation: %s is not registered at the server; waiting for its "
                         "callback", s.peer)
                self._events.append(PeerOffline(s.name))
            return
        if req.response and s.checks is None:  # charon starts the responder's checks here
            data = self._responder_data.pop(req.connect_id, None)
            if data is not None:
                self._start_checks(s, data[0], data[1], now)

    def _start_checks(self, s: Session, peer_key: bytes, remote: list[Candidate],
                      now: float) -> None:
        self._events.append(PeerCandidates(s.name, tuple(remote), s.initiator))
        s.checks = CheckList(s.connect_id, s.initiator, s.my_key, peer_key, list(s.local),
                             remote, now, pace=self.pace, max_pairs=self.max_pairs)
        log.info("mediation: checking %d pairs with %s (%s)", len(s.checks.pairs), s.peer,
                 "initiator" if s.initiator else "responder")
        self._process_checks(s, now)

    def _process_checks(self, s: Session, now: float) -> None:
        cl = s.checks
        if cl is None:
            return
        self._outputs += cl.datagrams_to_send()
        while (ev := cl.next_event()) is not None:
            s.done_at = now
            if isinstance(ev, PathChosen):
                self.stats.paths += 1
                log.info("mediation: path to %s: %s -> %s", s.peer, format_addr(ev.local),
                         format_addr(ev.remote))
                self._events.append(PathReady(s.name, ev.local, ev.remote, s.connect_id,
                                              True))
            elif isinstance(ev, ChecksFailed):
                self.stats.failures += 1
                log.warning("mediation: no path to %s: %s", s.peer, ev.reason)
                self._events.append(PathFailed(s.name, ev.reason))

    def ike_arrived(self, name: str, now: float) -> None:
        """The mediated IKE SA with ``name`` is up: its check lists stop (charon stops
        them when IKE_SA_INIT brings the ME_CONNECTID)."""
        for s in self.sessions.values():
            if s.name == name and s.checks is not None and not s.checks.done:
                s.checks.stop()
                s.done_at = now

    # --- the contract ---
    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._outputs = self._outputs, []
        return out

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times = [self._retry_at] if self._retry_at is not None else []
        for sa in [self.sa, *self._retired]:
            if sa is not None and (t := sa.get_timer()) is not None:
                times.append(t)
        for s in self.sessions.values():
            if s.checks is not None and (t := s.checks.get_timer()) is not None:
                times.append(t)
            if s.done_at is not None:
                times.append(s.done_at + LINGER)
            elif s.checks is None:
                times.append(s.started + CHECKS_TIMEOUT)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._retry_at is not None and now >= self._retry_at:
            self.start(now)
        sa = self.sa
        if sa is not None and (t := sa.get_timer()) is not None and t <= now:
            sa.handle_timer(now)
            self._process(now)
        for old in self._retired:
            if (t := old.get_timer()) is not None and t <= now:
                old.handle_timer(now)
                self._outputs += old.datagrams_to_send()
        self._retired = [o for o in self._retired if o.state is not State.DEAD]
        for cid, s in list(self.sessions.items()):
            if s.checks is not None:
                t = s.checks.get_timer()
                if t is not None and t <= now:
                    s.checks.handle_timer(now)
                    self._process_checks(s, now)
            if s.done_at is not None and now >= s.done_at + LINGER:
                del self.sessions[cid]
                self._responder_data.pop(cid, None)
            elif s.checks is None and now >= s.started + CHECKS_TIMEOUT:
                del self.sessions[cid]
                self._responder_data.pop(cid, None)
                self._events.append(PathFailed(s.name, "the peer never answered through "
                                               "the mediation server"))

    def describe(self) -> dict[str, object]:
        return {"server": format_addr(self.server), "up": self.up,
                "srflx": format_addr(self.sa.srflx) if self.sa and self.sa.srflx else None,
                "candidates": [_cand(c) for c in self.candidates()],
                "sessions": [{"peer": s.name, "initiator": s.initiator,
                              "pairs": s.checks.describe() if s.checks else []}
                             for s in self.sessions.values()],
                "stats": vars(self.stats).copy()}


def _cand(c: Candidate) -> dict[str, object]:
    return {"type": c.kind, "addr": format_addr(c.addr) if c.addr else None,
            "priority": c.priority}


def _wildcard(addr: Addr) -> bool:
    return addr[0] in ("0.0.0.0", "::", "")
