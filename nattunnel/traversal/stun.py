"""A STUN (RFC 8489) Binding client, sans-I/O: transactions, retransmissions, the reflexive
address per server.

``StunClient`` follows the core contract (docs/architecture.md): ``start_binding(server,
now)`` begins a transaction, ``receive(data, source, now)`` is fed what came back,
``datagrams_to_send()`` gives (server, datagram) pairs to send from the socket whose
reflexive address is wanted (the endpoint's NAT-T socket), ``next_event()`` what happened
(``Binding``, ``TransactionFailed``, ``TransactionTimedOut``, ``MappingChanged``),
``get_timer()`` / ``handle_timer(now)`` the retransmissions.

- Retransmissions, section 6.2.1: the request goes at 0, then after RTO, 2 RTO, 4 RTO ...
  (RTO 500 ms), Rc = 7 requests in all; Rm = 16 initial RTOs after the last one the
  transaction has timed out (at 39.5 s). Every number is in ``nattunnel.constants``; a
  caller in a hurry (netcheck) may pass shorter ones per transaction.
- Transaction IDs are 96 random bits from ``os.urandom``. A response is taken only for an
  outstanding transaction (section 6.3: matched by transaction ID) and only from the address
  the answer must come from: the server, or for a CHANGE-REQUEST (RFC 5780 section 7.2) the
  address and port the request asked for (the server's OTHER-ADDRESS, when known). Late,
  duplicate and foreign responses are counted and dropped before they are parsed.
- The reflexive address is XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from an RFC 3489 server;
  OTHER-ADDRESS and RESPONSE-ORIGIN (RFC 5780 section 7) are kept with it per server.
- Requests carry FINGERPRINT (section 14.7); a FINGERPRINT in a response is checked.
- Bounds: outstanding transactions (in all, and STUN_MAX_PER_SERVER per server, section
  6.2), the servers remembered, queued events. Nothing a sender can send makes state grow:
  an unmatched datagram costs a dictionary lookup and a count. Malformed input is counted and
  dropped; ``receive`` never raises.

The message format (header, attributes, XOR and FINGERPRINT encoding, parsing) is aioice's
``stun`` module (docs/dependencies.md); its asyncio ``Transaction`` is not used, since a core
owns no clock.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Final

from aioice import stun as _stun

from ..addr import Addr, HostPort, format_addr, sockaddr
from ..constants import (
    STUN_ALIGN,
    STUN_CHANGE_IP,
    STUN_CHANGE_PORT,
    STUN_COMPREHENSION_OPTIONAL,
    STUN_COOKIE_OFFSET,
    STUN_FIRST_OCTET_LIMIT,
    STUN_HEADER_LEN,
    STUN_KNOWN_REQUIRED,
    STUN_MAGIC_COOKIE,
    STUN_MAX_PER_SERVER,
    STUN_RC,
    STUN_RM,
    STUN_RTO,
    STUN_TRANSACTION_ID_LEN,
    STUN_TRANSACTION_ID_OFFSET,
)

#: outstanding transactions in all, servers whose answers are remembered, events kept until
#: taken (the oldest go first, counted as ``events_dropped``)
MAX_TRANSACTIONS: Final = 64
MAX_SERVERS: Final = 256
MAX_EVENTS: Final = 1024

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_ATTR_HEADER: Final = struct.Struct("!HH")
_TID_END: Final = STUN_TRANSACTION_ID_OFFSET + STUN_TRANSACTION_ID_LEN

#: (normalized host, port): how addresses are compared (IPv6 without scope, an IPv4 address
#: as itself even when a dual-stack socket wrote it ::ffff:a.b.c.d)
_Key = tuple[str, int]


class StunLimit(ValueError):
    """A transaction was refused: too many outstanding (in all or to that server)."""


# --- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Binding:
    """A Binding success response: the reflexive address towards ``server``."""

    server: Addr
    transaction_id: bytes
    #: the reflexive address: where the server saw the request come from
    mapped: Addr
    #: True: from XOR-MAPPED-ADDRESS; False: MAPPED-ADDRESS (an RFC 3489 server)
    xor: bool
    #: where the response came from
    source: Addr
    #: RFC 5780 section 7.3 and 7.4, when the server sent them
    response_origin: Addr | None
    other_address: Addr | None
    change_ip: bool
    change_port: bool
    #: the round trip, when one request was sent (after a retransmission it is ambiguous)
    rtt: float | None


@dataclass(frozen=True, slots=True)
class TransactionFailed:
    """An error response (``code``: its ERROR-CODE, section 14.8), or a response that cannot
    succeed (``code`` None: no mapped address, unknown comprehension-required attributes)."""

    server: Addr
    transaction_id: bytes
    code: int | None
    reason: str
    change_ip: bool
    change_port: bool


@dataclass(frozen=True, slots=True)
class TransactionTimedOut:
    """No response after Rc requests and the wait Rm x RTO after the last."""

    server: Addr
    transaction_id: bytes
    requests: int
    change_ip: bool
    change_port: bool


@dataclass(frozen=True, slots=True)
class MappingChanged:
    """A Binding towards ``server`` gave another reflexive address than the one before: the
    NAT's mapping changed (it expired and was made again, or the path moved)."""

    server: Addr
    old: Addr
    new: Addr


Event = Binding | TransactionFailed | TransactionTimedOut | MappingChanged


@dataclass(slots=True)
class ServerInfo:
    """What the last successful Binding with a server said."""

    mapped: Addr
    other_address: Addr | None
    response_origin: Addr | None
    when: float


@dataclass(slots=True)
class _Transaction:
    tid: bytes
    server: Addr
    key: _Key
    #: where the response must come from; None: derived from OTHER-ADDRESS when it comes
    expect: _Key | None
    change: int
    request: bytes
    rto: float
    rc: int
    wait_last: float
    started: float
    #: requests sent so far, the wait before the next, when the next step is due
    sent: int = 0
    interval: float = 0.0
    deadline: float = 0.0
    heap_seq: int = 0


# --- helpers -----------------------------------------------------------------------------------
def _key(addr: Addr | HostPort) -> _Key:
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(addr[1])


def _dest(server: Addr | HostPort) -> Addr:
    """Where to send to: as given when it is a socket address of IPv6's shape (with its
    scope), else in the shape the socket module uses for the family."""
    if len(server) == 4:
        return server
    return sockaddr(server[0], server[1])


def _addr(value: object) -> Addr | None:
    """An address attribute as aioice decoded it, as a socket address."""
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and isinstance(port, int):
            return sockaddr(host, port)
    return None


def looks_like_stun(data: bytes | bytearray | memoryview) -> bool:
    """RFC 8489 section 5: the first two bits zero, the magic cookie at offset 4, a length
    (a multiple of 4) that is the rest of the datagram. (``esp.udpencap`` checks the same
    on the NAT-T socket; this layer may not import it.)"""
    n = len(data)
    return (n >= STUN_HEADER_LEN and data[0] < STUN_FIRST_OCTET_LIMIT
            and _U32.unpack_from(data, STUN_COOKIE_OFFSET)[0] == STUN_MAGIC_COOKIE
            and _U16.unpack_from(data, 2)[0] == n - STUN_HEADER_LEN and n % STUN_ALIGN == 0)


def unknown_required(data: bytes) -> list[int]:
    """Comprehension-required attribute types (section 14: below 0x8000) that neither aioice
    nor STUN_KNOWN_REQUIRED knows. Stops at a truncated attribute (aioice's parser has judged
    the rest)."""
    out: list[int] = []
    pos = STUN_HEADER_LEN
    while pos + _ATTR_HEADER.size <= len(data):
        kind, length = _ATTR_HEADER.unpack_from(data, pos)
        if (kind < STUN_COMPREHENSION_OPTIONAL and kind not in _stun.ATTRIBUTES_BY_TYPE
                and kind not in STUN_KNOWN_REQUIRED):
            out.append(kind)
        pos += _ATTR_HEADER.size + length + (-length % STUN_ALIGN)
    return out


def binding_request(tid: bytes, change: int = 0) -> bytes:
    """A Binding request with transaction ID ``tid``, CHANGE-REQUEST when ``change`` is not
    zero (RFC 5780 section 7.2), and FINGERPRINT last (section 14.7)."""
    attrs: dict[str, object] = {"CHANGE-REQUEST": change} if change else {}
    msg = _stun.Message(_stun.Method.BINDING, _stun.Class.REQUEST, transaction_id=tid,
                        attributes=attrs)
    msg.add_fingerprint()
    return bytes(msg)


class StunClient:
    """Binding transactions from one socket, and what the servers said."""

    def __init__(self, *, max_transactions: int = MAX_TRANSACTIONS,
                 max_per_server: int = STUN_MAX_PER_SERVER,
                 max_servers: int = MAX_SERVERS, max_events: int = MAX_EVENTS) -> None:
        self.max_transactions = max_transactions
        self.max_per_server = max_per_server
        self.max_servers = max_servers
        self._transactions: dict[bytes, _Transaction] = {}
        self._per_server: dict[_Key, int] = {}
        #: (deadline, sequence, transaction ID); stale entries are skipped when they surface
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._outgoing: list[tuple[Addr, bytes]] = []
        self._events: deque[Event] = deque(maxlen=max_events)
        #: per server (as compared), the last success, least recently used first
        self._servers: OrderedDict[_Key, ServerInfo] = OrderedDict()
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "retransmissions", "received", "succeeded", "failed", "timed_out",
             "mapping_changed", "malformed", "unmatched", "wrong_source", "unexpected",
             "events_dropped", "refused"), 0)

    # --- transactions ----------------------------------------------------------------------
    def start_binding(self, server: Addr | HostPort, now: float, *, change_ip: bool = False,
                      change_port: bool = False, expect_from: Addr | HostPort | None = None,
                      rto: float = STUN_RTO, rc: int = STUN_RC, rm: float = STUN_RM) -> bytes:
        """Begin a Binding transaction with ``server``; its first request is ready to send.
        Returns the transaction ID. ``change_ip``/``change_port``: a CHANGE-REQUEST (RFC 5780
        section 7.2), answered from the server's other address or port (``expect_from``,
        or else the OTHER-ADDRESS a Binding with the server gave, or else any address that
        differs as asked). Raises ``StunLimit`` when too many are outstanding, ValueError for
        a server that is not an IP address and port or for bad timings."""
        key = _key(server)
        if rto <= 0 or rc < 1 or rm <= 0:
            raise ValueError("STUN timing: rto and rm must be positive, rc at least 1")
        if len(self._transactions) >= self.max_transactions:
            self.counters["refused"] += 1
            raise StunLimit(f"{self.max_transactions} STUN transactions are outstanding")
        if self._per_server.get(key, 0) >= self.max_per_server:
            self.counters["refused"] += 1
            raise StunLimit(f"{self.max_per_server} STUN transactions to "
                            f"{format_addr(server)} are outstanding (RFC 8489 section 6.2)")
        change = (STUN_CHANGE_IP if change_ip else 0) | (STUN_CHANGE_PORT if change_port else 0)
        tid = os.urandom(STUN_TRANSACTION_ID_LEN)
        while tid in self._transactions:
            tid = os.urandom(STUN_TRANSACTION_ID_LEN)
        expect = _key(expect_from) if expect_from is not None else None
        t = _Transaction(tid, _dest(server), key, expect, change, binding_request(tid, change),
                         rto, rc, rm * rto, now)
        self._transactions[tid] = t
        self._per_server[key] = self._per_server.get(key, 0) + 1
        self.counters["requests"] += 1
        self._send(t, now, now)
        return tid

    def cancel(self, tid: bytes) -> bool:
        """Forget an outstanding transaction (no event). False if it was not outstanding."""
        t = self._transactions.get(tid)
        if t is None:
            return False
        self._end(t)
        return True

    def outstanding(self) -> int:
        return len(self._transactions)

    def _send(self, t: _Transaction, due: float, now: float) -> None:
        """Send the request (again) and schedule the next step: the next retransmission, or
        after the last request the end of the wait."""
        self._outgoing.append((t.server, t.request))
        t.sent += 1
        t.interval = t.rto if t.sent == 1 else t.interval * 2
        wait = t.interval if t.sent < t.rc else t.wait_last
        # from when it was due, so that the schedule is the RFC's; a late timer does not
        # make it burst
        t.deadline = due + wait if due + wait > now else now + wait
        self._push(t)

    def _push(self, t: _Transaction) -> None:
        self._seq += 1
        t.heap_seq = self._seq
        heapq.heappush(self._heap, (t.deadline, self._seq, t.tid))
        if len(self._heap) > 4 * self.max_transactions + 16:
            # entries of finished transactions pile up when many finish early: rebuild
            self._heap = [(x.deadline, x.heap_seq, x.tid) for x in self._transactions.values()]
            heapq.heapify(self._heap)

    def _end(self, t: _Transaction) -> None:
        del self._transactions[t.tid]
        left = self._per_server[t.key] - 1
        if left:
            self._per_server[t.key] = left
        else:
            del self._per_server[t.key]

    def _live(self, entry: tuple[float, int, bytes]) -> _Transaction | None:
        t = self._transactions.get(entry[2])
        return t if t is not None and t.heap_seq == entry[1] else None

    # --- the timer -------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When the next retransmission or timeout is due, or None."""
        heap = self._heap
        while heap and self._live(heap[0]) is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Retransmit what is due, and time out transactions whose last wait is over."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            t = self._live(entry)
            if t is None:
                continue
            if t.sent < t.rc:
                self.counters["retransmissions"] += 1
                self._send(t, t.deadline, now)
                continue
            self._end(t)
            self.counters["timed_out"] += 1
            self._event(TransactionTimedOut(t.server, t.tid, t.sent,
                                            bool(t.change & STUN_CHANGE_IP),
                                            bool(t.change & STUN_CHANGE_PORT)))

    # --- responses -------------------------------------------------------------------------
    def receive(self, data: bytes | bytearray | memoryview, source: Addr, now: float) -> bool:
        """A datagram that came to the socket from ``source``: True if it answered an
        outstanding transaction (which is over then). Anything else is counted and dropped;
        never raises."""
        self.counters["received"] += 1
        if not looks_like_stun(data):
            self.counters["malformed"] += 1
            return False
        t = self._transactions.get(bytes(data[STUN_TRANSACTION_ID_OFFSET:_TID_END]))
        if t is None:
            # late (after a timeout), duplicate (answered already), or not ours
            self.counters["unmatched"] += 1
            return False
        try:
            src = _key(source)
        except (ValueError, IndexError, TypeError):
            self.counters["wrong_source"] += 1
            return False
        if src != self._expected(t, src):
            self.counters["wrong_source"] += 1
            return False
        raw = bytes(data)
        try:
            msg = _stun.parse_message(raw)
        except (ValueError, struct.error):
            self.counters["malformed"] += 1
            return False
        if (msg.message_method != _stun.Method.BINDING
                or msg.message_class not in (_stun.Class.RESPONSE, _stun.Class.ERROR)):
            self.counters["unexpected"] += 1
            return False
        self._end(t)
        self._answered(t, msg, raw, sockaddr(*src), now)
        return True

    def _expected(self, t: _Transaction, src: _Key) -> _Key | None:
        """Where ``t``'s answer must come from (``src`` itself when any address that differs
        as the CHANGE-REQUEST asked will do), or None: from nowhere."""
        if t.expect is not None:
            return t.expect
        if not t.change:
            return t.key
        info = self._servers.get(t.key)
        other = _key(info.other_address) if info and info.other_address else None
        if other is not None:
            return (other[0] if t.change & STUN_CHANGE_IP else t.key[0],
                    other[1] if t.change & STUN_CHANGE_PORT else t.key[1])
        ip_ok = (src[0] != t.key[0]) == bool(t.change & STUN_CHANGE_IP)
        port_ok = (src[1] != t.key[1]) == bool(t.change & STUN_CHANGE_PORT)
        return src if ip_ok and port_ok else None

    def _answered(self, t: _Transaction, msg: _stun.Message, raw: bytes, source: Addr,
                  now: float) -> None:
        change_ip, change_port = bool(t.change & STUN_CHANGE_IP), bool(t.change & STUN_CHANGE_PORT)
        code: int | None = None
        if msg.message_class == _stun.Class.ERROR:
            # section 6.3.4: failed, whatever else it holds
            err = msg.attributes.get("ERROR-CODE")
            code, reason = (err[0], err[1]) if isinstance(err, tuple) else (None, "")
            reason = reason or "error response"
        elif unknown := unknown_required(raw):
            # section 6.3.3: a success with unknown comprehension-required attributes fails
            reason = "unknown comprehension-required attributes " + ", ".join(
                f"{k:#06x}" for k in unknown)
        else:
            mapped = _addr(msg.attributes.get("XOR-MAPPED-ADDRESS"))
            xor = mapped is not None
            if mapped is None:
                mapped = _addr(msg.attributes.get("MAPPED-ADDRESS"))
            if mapped is not None:
                self._succeeded(t, msg, mapped, xor, source, now)
                return
            reason = "no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS"
        self.counters["failed"] += 1
        self._event(TransactionFailed(t.server, t.tid, code, reason, change_ip, change_port))

    def _succeeded(self, t: _Transaction, msg: _stun.Message, mapped: Addr, xor: bool,
                   source: Addr, now: float) -> None:
        other = _addr(msg.attributes.get("OTHER-ADDRESS"))
        origin = _addr(msg.attributes.get("RESPONSE-ORIGIN"))
        self.counters["succeeded"] += 1
        rtt = now - t.started if t.sent == 1 else None
        self._event(Binding(t.server, t.tid, mapped, xor, source, origin, other,
                            bool(t.change & STUN_CHANGE_IP), bool(t.change & STUN_CHANGE_PORT),
                            rtt))
        old = self._servers.pop(t.key, None)
        if old is not None and _key(old.mapped) != _key(mapped):
            self.counters["mapping_changed"] += 1
            self._event(MappingChanged(t.server, old.mapped, mapped))
        if other is None and old is not None:
            other = old.other_address  # a change-request answer need not repeat it
        self._servers[t.key] = ServerInfo(mapped, other, origin, now)
        while len(self._servers) > self.max_servers:
            self._servers.popitem(last=False)

    # --- what it learned -------------------------------------------------------------------
    def server_info(self, server: Addr | HostPort) -> ServerInfo | None:
        """What the last successful Binding with ``server`` said, or None."""
        return self._servers.get(_key(server))

    def mapped_address(self, server: Addr | HostPort) -> Addr | None:
        """The reflexive address the last successful Binding with ``server`` gave."""
        info = self.server_info(server)
        return info.mapped if info is not None else None

    # --- the contract ----------------------------------------------------------------------
    def _event(self, ev: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self.counters["events_dropped"] += 1
        self._events.append(ev)

    def next_event(self) -> Event | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[Addr, bytes]]:
        """(server, request) pairs to send, taken once."""
        out, self._outgoing = self._outgoing, []
        return out

    def stats(self) -> dict[str, object]:
        return {**self.counters, "outstanding": len(self._transactions),
                "servers": {format_addr(sockaddr(*k)): format_addr(v.mapped)
                            for k, v in self._servers.items()}}


__all__ = ["MAX_EVENTS", "MAX_SERVERS", "MAX_TRANSACTIONS", "Binding", "Event",
           "MappingChanged", "ServerInfo", "StunClient", "StunLimit", "TransactionFailed",
           "TransactionTimedOut", "binding_request", "looks_like_stun", "unknown_required"]
