"""IKEv2 mediation's candidates and connectivity checks (draft-brunner-ikev2-mediation
sections 4.3 and 5, as strongSwan 5.9.8's ``connect_manager.c`` does them), sans-I/O.

- ``Candidate``: one ME_ENDPOINT (priority, family, type, address and port), its codec, and
  the base (the local address a server-reflexive candidate is reached through).
- ``CheckList``: the pairs of one mediated connection (one ME_CONNECTID), formed, ordered and
  pruned as ICE does (RFC 8445 sections 6.1.2.3-6.1.2.5; at most ``max_pairs``), checked one
  every ``pace`` seconds (triggered checks first), each request retransmitted as charon does
  (25 ms twice, then 25 ms * 1.8**n, at most 13 times). A check is an unprotected
  INFORMATIONAL message with zero SPIs whose message ID is the pair's number: ME_CONNECTID,
  ME_ENDPOINT (the request: an empty peer-reflexive one; the response: where the request came
  from) and ME_CONNECTAUTH = SHA1(message ID | connect ID | ME_ENDPOINT data | the sender's
  ME_CONNECTKEY). The initiator (the side that sent the first ME_CONNECT: ICE's controlling
  agent) nominates: ``ME_WAIT_TO_FINISH`` after the first valid pair, or when every pair is
  done, the valid pair of the highest priority is chosen (``PathChosen``) and the mediated IKE
  SA goes over it. The responder answers and checks until its pairs are done or the IKE SA
  comes.

It follows the core contract: ``receive`` (a check, the marker removed, with where it came
from and to), ``datagrams_to_send()`` (``Outgoing``, always on the NAT-T port), ``next_event()``
and ``get_timer()``/``handle_timer(now)``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from ..addr import Addr, sockaddr
from ..constants import (
    IKE_SPI_LEN,
    ME_FAMILY_IPV4,
    ME_FAMILY_IPV6,
    ME_FAMILY_NONE,
    ME_MAX_RETRANS,
    ME_RETRANS_BASE,
    ME_RETRANS_BOOST,
    ME_RETRANS_INTERVAL,
    ME_TYPE_HOST,
    ME_TYPE_PEER_REFLEXIVE,
    ME_TYPE_PREFERENCE,
    ME_WAIT_TO_FINISH,
    ExchangeType,
    MeNotify,
)
from .events import Outgoing
from .message import (
    Header,
    Notify,
    Payload,
    decode_message,
    encode_message,
)

_ENDPOINT_HEAD = struct.Struct("!IBBH")
_U32 = struct.Struct("!I")
#: ICE's pacing (RFC 8445 section 14.2: Ta, 50 ms by default); charon uses 25 ms
DEFAULT_PACE = 0.05
#: RFC 8445 section 6.1.2.5: a limit on the pairs (100 there too)
DEFAULT_MAX_PAIRS = 100
#: a check list that has not finished by then is over (charon's retransmissions end after
#: about 36 s)
CHECKS_TIMEOUT = 40.0
#: at most this many candidates are taken from one side
MAX_CANDIDATES = 32


def _plain(addr: Addr) -> tuple[str, int]:
    return (str(ipaddress.ip_address(addr[0].split("%")[0])), addr[1])


def type_priority(kind: int) -> int:
    """charon's priority for a candidate of this type: its preference * 2**16 + 65535."""
    return (ME_TYPE_PREFERENCE.get(kind, 0) << 16) + 65535


@dataclass(frozen=True)
class Candidate:
    """One ME_ENDPOINT: a transport address (None: none, family 0) of a type, a priority,
    and for our own candidates the base, the local address it is sent from."""

    kind: int
    addr: Addr | None
    priority: int
    base: Addr | None = None

    @classmethod
    def of(cls, kind: int, addr: Addr | None, base: Addr | None = None) -> Candidate:
        return cls(kind, addr, type_priority(kind), base)

    @property
    def local(self) -> Addr | None:
        """Where checks from this (our own) candidate leave: its base, or itself."""
        return self.base or self.addr

    def encode(self) -> bytes:
        if self.addr is None:
            return _ENDPOINT_HEAD.pack(self.priority, ME_FAMILY_NONE, self.kind, 0)
        ip = ipaddress.ip_address(self.addr[0].split("%")[0])
        fam = ME_FAMILY_IPV4 if ip.version == 4 else ME_FAMILY_IPV6
        return _ENDPOINT_HEAD.pack(self.priority, fam, self.kind, self.addr[1]) + ip.packed

    @classmethod
    def decode(cls, data: bytes) -> Candidate:
        """ValueError for what charon refuses too: short data, a family or type out of range,
        a short address."""
        if len(data) < _ENDPOINT_HEAD.size - 2:
            raise ValueError("ME_ENDPOINT shorter than priority, family and type")
        if len(data) < _ENDPOINT_HEAD.size:
            data += bytes(_ENDPOINT_HEAD.size - len(data))
        prio, fam, kind, port = _ENDPOINT_HEAD.unpack_from(data)
        if fam > ME_FAMILY_IPV6:
            raise ValueError(f"ME_ENDPOINT family {fam} is not 0, 1 or 2")
        if kind not in ME_TYPE_PREFERENCE:
            raise ValueError(f"ME_ENDPOINT type {kind} is not 1-4")
        if fam == ME_FAMILY_NONE:
            return cls(kind, None, prio)
        n = 4 if fam == ME_FAMILY_IPV4 else 16
        raw = data[_ENDPOINT_HEAD.size:_ENDPOINT_HEAD.size + n]
        if len(raw) != n:
            raise ValueError("ME_ENDPOINT address truncated")
        return cls(kind, sockaddr(str(ipaddress.ip_address(raw)), port), prio)

    @property
    def family(self) -> int:
        if self.addr is None:
            return ME_FAMILY_NONE
        return 4 if ipaddress.ip_address(self.addr[0].split("%")[0]).version == 4 else 6


def pair_priority(initiator: int, responder: int) -> int:
    """RFC 8445 section 6.1.2.3 (charon's formula): G the initiator's (controlling) and D the
    responder's candidate priority."""
    return (1 << 32) * min(initiator, responder) + 2 * max(initiator, responder) + (
        1 if initiator > responder else 0)


class PairState(Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Pair:
    """A candidate pair: our local address, the peer's candidate, and its check's state."""

    id: int
    priority: int
    local: Addr
    remote: Addr
    state: PairState = PairState.WAITING
    retransmitted: int = 0
    next_retransmit: float | None = None
    packet: bytes = b""


@dataclass(frozen=True)
class PathChosen:
    """The initiator's nomination: the mediated IKE SA goes from ``local`` to ``remote``."""

    connect_id: bytes
    local: Addr
    remote: Addr


@dataclass(frozen=True)
class ChecksFailed:
    """No pair got through (or the checks timed out)."""

    connect_id: bytes
    reason: str


CheckEvent = PathChosen | ChecksFailed


@dataclass(frozen=True)
class Check:
    """A decoded connectivity check."""

    message_id: int
    is_response: bool
    connect_id: bytes
    endpoint: Candidate
    endpoint_raw: bytes
    auth: bytes


def auth_of(message_id: int, connect_id: bytes, endpoint_raw: bytes, key: bytes) -> bytes:
    """ME_CONNECTAUTH as charon computes it: SHA1(MID | ME_CONNECTID | ME_ENDPOINT | KEY)."""
    return hashlib.sha1(_U32.pack(message_id) + connect_id + endpoint_raw + key).digest()


def is_check(data: bytes) -> bool:
    """A connectivity check (cheaply): zero SPIs, INFORMATIONAL, a Notify first."""
    return (len(data) >= 28 and data[:2 * IKE_SPI_LEN] == bytes(2 * IKE_SPI_LEN)
            and data[18] == ExchangeType.INFORMATIONAL and data[16] == 41)


def decode_check(data: bytes) -> Check:
    """IkeDecodeError or ValueError for anything that is not a whole check."""
    msg = decode_message(data)
    hdr = msg.header
    cid = msg.notify(MeNotify.ME_CONNECTID)
    ep = msg.notify(MeNotify.ME_ENDPOINT)
    auth = msg.notify(MeNotify.ME_CONNECTAUTH)
    if cid is None or ep is None or auth is None:
        raise ValueError("a connectivity check needs ME_CONNECTID, ME_ENDPOINT and "
                         "ME_CONNECTAUTH")
    return Check(hdr.message_id, hdr.is_response, cid.data, Candidate.decode(ep.data), ep.data,
                 auth.data)


def encode_check(message_id: int, response: bool, connect_id: bytes, endpoint: Candidate,
                 key: bytes) -> bytes:
    raw = endpoint.encode()
    hdr = Header.make(ExchangeType.INFORMATIONAL, bytes(IKE_SPI_LEN), bytes(IKE_SPI_LEN),
                      message_id=message_id, initiator=not response, response=response)
    payloads: list[Payload] = [
        Notify(MeNotify.ME_CONNECTID, connect_id), Notify(MeNotify.ME_ENDPOINT, raw),
        Notify(MeNotify.ME_CONNECTAUTH, auth_of(message_id, connect_id, raw, key))]
    return encode_message(hdr, payloads)


def retransmit_delay(n: int) -> float:
    """The wait before retransmission ``n`` (1-based) of a check (connect_manager.c)."""
    if n <= ME_RETRANS_BOOST:
        return ME_RETRANS_INTERVAL
    return ME_RETRANS_INTERVAL * ME_RETRANS_BASE ** (n - ME_RETRANS_BOOST)


@dataclass
class CheckStats:
    sent: int = 0
    retransmitted: int = 0
    received: int = 0
    answered: int = 0
    bad_auth: int = 0
    unknown_pair: int = 0
    triggered: int = 0


@dataclass
class CheckList:
    """The checks of one mediated connection, one side of it."""

    connect_id: bytes
    initiator: bool
    my_key: bytes
    peer_key: bytes
    local: list[Candidate]
    remote: list[Candidate]
    now: float
    pace: float = DEFAULT_PACE
    max_pairs: int = DEFAULT_MAX_PAIRS
    finish_wait: float = ME_WAIT_TO_FINISH
    timeout: float = CHECKS_TIMEOUT
    pairs: list[Pair] = field(default_factory=list)
    stats: CheckStats = field(default_factory=CheckStats)
    done: bool = False
    chosen: Pair | None = None

    def __post_init__(self) -> None:
        self.local = self.local[:MAX_CANDIDATES]
        self.remote = [c for c in self.remote if c.addr is not None][:MAX_CANDIDATES]
        self._triggered: deque[Pair] = deque()
        self._outputs: list[Outgoing] = []
        self._events: deque[CheckEvent] = deque()
        self._next_send: float | None = self.now  # the first check goes at once
        self._finish_at: float | None = None
        self._deadline = self.now + self.timeout
        self._build_pairs()

    # --- pairs ---------------------------------------------------------------------------
    def _priority(self, mine: int, theirs: int) -> int:
        return pair_priority(mine, theirs) if self.initiator else pair_priority(theirs, mine)

    def _build_pairs(self) -> None:
        pairs: dict[tuple[tuple[str, int], tuple[str, int]], Pair] = {}
        for lc in self.local:
            for rc in self.remote:
                if lc.local is None or rc.addr is None or lc.family != rc.family:
                    continue
                key = (_plain(lc.local), _plain(rc.addr))
                prio = self._priority(lc.priority, rc.priority)
                old = pairs.get(key)
                if old is None or old.priority < prio:  # pruning keeps the higher one
                    pairs[key] = Pair(0, prio, lc.local, rc.addr)
        ordered = sorted(pairs.values(), key=lambda p: -p.priority)[:self.max_pairs]
        for i, p in enumerate(ordered, 1):
            p.id = i
        self.pairs = ordered

    def _pair_by_hosts(self, local: Addr | None, remote: Addr) -> Pair | None:
        r = _plain(remote)
        for p in self.pairs:
            if _plain(p.remote) == r and (local is None or _plain(p.local) == _plain(local)):
                return p
        return None

    def _pair_by_id(self, pid: int) -> Pair | None:
        return next((p for p in self.pairs if p.id == pid), None)

    # --- the contract --------------------------------------------------------------------
    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._outputs = self._outputs, []
        return out

    def next_event(self) -> CheckEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self.done:
            return None
        times = [self._deadline]
        if self._next_send is not None and self._has_waiting():
            times.append(self._next_send)
        if self._finish_at is not None:
            times.append(self._finish_at)
        times += [p.next_retransmit for p in self.pairs if p.next_retransmit is not None]
        return min(times)

    def handle_timer(self, now: float) -> None:
        if self.done:
            return
        self.now = now
        if now >= self._deadline:
            self._finish(f"no valid pair after {self.timeout:.0f} s")
            return
        for p in self.pairs:
            if p.next_retransmit is not None and p.next_retransmit <= now:
                self._retransmit(p, now)
        if self._next_send is not None and self._next_send <= now and self._has_waiting():
            self._send_next(now)
        self._update(now)
        if self._finish_at is not None and now >= self._finish_at:
            self._finish("")

    def stop(self) -> None:
        """The IKE SA came (or the mediation went): no more checks."""
        self.done = True
        for p in self.pairs:
            p.next_retransmit = None

    # --- sending -------------------------------------------------------------------------
    def _has_waiting(self) -> bool:
        return bool(self._triggered) or any(p.state is PairState.WAITING for p in self.pairs)

    def _send_next(self, now: float) -> None:
        pair = None
        while self._triggered:
            t = self._triggered.popleft()
            if t.state is PairState.WAITING:
                pair = t
                break
        if pair is None:
            pair = next((p for p in self.pairs if p.state is PairState.WAITING), None)
        if pair is None:
            return
        pair.state = PairState.IN_PROGRESS
        ep = Candidate.of(ME_TYPE_PEER_REFLEXIVE, None)
        pair.packet = encode_check(pair.id, False, self.connect_id, ep, self.my_key)
        pair.retransmitted = 0
        pair.next_retransmit = now + retransmit_delay(1)
        self._outputs.append(Outgoing(pair.packet, pair.remote, True))
        self.stats.sent += 1
        self._next_send = now + self.pace

    def _retransmit(self, p: Pair, now: float) -> None:
        if p.state is not PairState.IN_PROGRESS:
            p.next_retransmit = None
            return
        p.retransmitted += 1
        if p.retransmitted > ME_MAX_RETRANS:
            p.state = PairState.FAILED
            p.next_retransmit = None
            return
        self._outputs.append(Outgoing(p.packet, p.remote, True))
        self.stats.retransmitted += 1
        p.next_retransmit = now + retransmit_delay(p.retransmitted + 1)

    def _trigger(self, p: Pair, now: float) -> None:
        p.state = PairState.WAITING
        p.next_retransmit = None
        self._triggered.append(p)
        self.stats.triggered += 1
        if self._next_send is None or self._next_send > now + self.pace:
            self._next_send = now

    # --- receiving -----------------------------------------------------------------------
    def receive(self, check: Check, source: Addr, to: Addr | None, now: float) -> bool:
        """A check for this list (its connect ID matched); ``to`` is where it came (None:
        a wildcard socket). False when its ME_CONNECTAUTH is wrong (dropped, counted)."""
        self.now = now
        if not hmac.compare_digest(check.auth, auth_of(check.message_id, self.connect_id,
                                                       check.endpoint_raw, self.peer_key)):
            self.stats.bad_auth += 1
            return False
        self.stats.received += 1
        if self.done and not check.is_response:
            self._answer(check, source, now)  # the peer may still be checking
            return True
        if self.done:
            return True
        if check.is_response:
            self._on_response(check, source, to, now)
        else:
            self._on_request(check, source, to, now)
        return True

    def _on_request(self, check: Check, source: Addr, to: Addr | None, now: float) -> None:
        if all(c.addr is None or _plain(c.addr) != _plain(source) for c in self.remote):
            # a peer-reflexive candidate (RFC 8445 section 7.3.1.3)
            self.remote.append(Candidate(ME_TYPE_PEER_REFLEXIVE, source,
                                         check.endpoint.priority))
        pair = self._pair_by_hosts(to, source)
        if pair is None and len(self.pairs) < self.max_pairs:
            local = to or (self.pairs[0].local if self.pairs else None) or source
            mine = type_priority(ME_TYPE_HOST)
            pair = Pair(len(self.pairs) + 1, self._priority(mine, check.endpoint.priority),
                        local, source)
            self.pairs.append(pair)
            self._trigger(pair, now)
        elif pair is not None and pair.state is not PairState.SUCCEEDED:
            self._trigger(pair, now)  # a triggered check (RFC 8445 section 7.3.1.4)
        self._answer(check, source, now)

    def _answer(self, check: Check, source: Addr, now: float) -> None:
        ep = Candidate(ME_TYPE_PEER_REFLEXIVE, source, check.endpoint.priority)
        data = encode_check(check.message_id, True, self.connect_id, ep, self.my_key)
        self._outputs.append(Outgoing(data, source, True))
        self.stats.answered += 1

    def _on_response(self, check: Check, source: Addr, to: Addr | None, now: float) -> None:
        pair = self._pair_by_id(check.message_id)
        if pair is None:
            self.stats.unknown_pair += 1
            return
        if _plain(pair.remote) == _plain(source) and (
                to is None or _plain(pair.local) == _plain(to)):
            pair.state = PairState.SUCCEEDED
            pair.next_retransmit = None
        mapped = check.endpoint.addr
        if mapped is not None and all(c.addr is None or _plain(c.addr) != _plain(mapped)
                                      for c in self.local):
            self.local.append(Candidate(ME_TYPE_PEER_REFLEXIVE, mapped,
                                        check.endpoint.priority, pair.local))
        self._update(now)

    # --- finishing -----------------------------------------------------------------------
    def best(self) -> Pair | None:
        """The valid pair of the highest priority."""
        ok = [p for p in self.pairs if p.state is PairState.SUCCEEDED]
        return max(ok, key=lambda p: p.priority) if ok else None

    def _update(self, now: float) -> None:
        states = {p.state for p in self.pairs}
        succeeded = PairState.SUCCEEDED in states
        if self.initiator and succeeded and self._finish_at is None:
            self._finish_at = now + self.finish_wait  # charon's fast finish
        if PairState.WAITING in states or PairState.IN_PROGRESS in states or self._triggered:
            return
        if succeeded and self.initiator:
            self._finish("")
        elif not succeeded:
            self._finish("every pair failed" if self.pairs else "no pair to check")
        else:  # the responder is done checking; it answers until the IKE SA comes
            self._finish_at = None

    def _finish(self, reason: str) -> None:
        best = self.best()
        self.stop()
        if best is not None and self.initiator:
            self.chosen = best
            self._events.append(PathChosen(self.connect_id, best.local, best.remote))
        elif best is None:
            self._events.append(ChecksFailed(self.connect_id, reason or "no valid pair"))
        else:
            self.chosen = best  # the responder: the path the initiator is likely to take

    def describe(self) -> list[dict[str, object]]:
        """The pairs as data, for the status."""
        return [{"id": p.id, "local": p.local, "remote": p.remote, "state": p.state.value,
                 "priority": p.priority, "retransmitted": p.retransmitted}
                for p in self.pairs]
