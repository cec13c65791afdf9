"""NAT behaviour discovery, sans-I/O: RFC 5780 section 4's tests in RFC 4787's terms.

``NetCheck`` is a core like the others (docs/architecture.md, "The core contract"): it owns
no socket and no clock. It is fed datagrams with the local socket they came to and an
explicit ``now`` (``receive_datagram``), pulled for ``Outgoing`` datagrams (each names the
local socket to send from: 0, 1, 2... the driver opens a socket the first time an index
appears and reports where it is bound with ``socket_bound``), and asked for its next deadline
(``get_timer`` / ``handle_timer``). When ``done`` it has a ``NetcheckResult``, a plain
dataclass.

The tests, against the servers given (the first one that answers with OTHER-ADDRESS is the
RFC 5780 server, "P" its primary address, "O" its OTHER-ADDRESS):

- socket 0, test I: a Binding request to every server: UDP reachable or blocked, the
  reflexive address per server, whether the NAT kept our local port, whether there is a NAT;
- socket 0, mapping (RFC 5780 section 4.3): Binding requests to (O.ip, P.port) and to O;
  the same reflexive address as test I means endpoint-independent mapping, the same for both
  means address-dependent, else address-and-port-dependent;
- socket 1, filtering (section 4.4): a Binding request to P, then CHANGE-REQUEST "change IP
  and port" and "change port" (sent together: neither sends to a new destination); an answer
  to the first is endpoint-independent filtering, to the second only address-dependent,
  neither address-and-port-dependent. An answer from another source than the one asked for
  means the server did not honour CHANGE-REQUEST: filtering unknown;
- socket 2, hairpinning (RFC 4787 section 6): a Binding request to socket 0's reflexive address;
  it arriving on socket 0 is hairpinning;
- with ``lifetime``, sockets 3...: the mapping lifetime (section 4.6): socket 3+k learns its
  mapping X_k from P, then after waiting ``waits[k]`` a request from socket 3 (the sender)
  carries RESPONSE-PORT = X_k's port: its answer arriving on socket 3+k means the mapping
  lived that long. The first wait that fails ends the probe.

Retransmissions are RFC 8489 section 6.2.1's (RTO 500 ms, doubling), cut short so that
everything but the lifetime probe ends within ``timeout`` (5 s): a test that follows test I
gives up after 40 % of it (2 s), test I itself may take the rest (3 s).
The message format is aioice's ``stun`` module's.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aioice import stun

from ..addr import Addr, HostPort, format_addr
from ..constants import (
    STUN_ATTR_FINGERPRINT,
    STUN_ATTR_RESPONSE_PORT,
    STUN_CHANGE_IP,
    STUN_CHANGE_PORT,
    STUN_HEADER_LEN,
    STUN_RTO,
    STUN_TRANSACTION_ID_LEN,
)
from .stun import binding_request, looks_like_stun

__all__ = [
    "ADDRESS_AND_PORT_DEPENDENT",
    "ADDRESS_DEPENDENT",
    "DEFAULT_LIFETIME_WAITS",
    "ENDPOINT_INDEPENDENT",
    "NetCheck",
    "NetcheckResult",
    "Outgoing",
    "ServerResult",
]

#: RFC 4787 section 4.1 / 5: the three behaviours, as netcheck prints them
ENDPOINT_INDEPENDENT: Final = "endpoint-independent"
ADDRESS_DEPENDENT: Final = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT: Final = "address-and-port-dependent"

#: RFC 5780 section 7.5's RESPONSE-PORT is not in aioice's table; FINGERPRINT is packed here
ATTR_RESPONSE_PORT: Final = STUN_ATTR_RESPONSE_PORT
ATTR_FINGERPRINT: Final = STUN_ATTR_FINGERPRINT

#: the whole check (without the lifetime probe), and each transaction's share of it
DEFAULT_TIMEOUT: Final = 5.0
#: the lifetime probe's waits in seconds, cut at ``lifetime_max``
DEFAULT_LIFETIME_WAITS: Final = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0,
                                 180.0, 240.0, 300.0, 600.0)

#: socket indices (see the module docstring)
SOCK_MAIN: Final = 0
SOCK_FILTER: Final = 1
SOCK_HAIRPIN: Final = 2
SOCK_LIFETIME: Final = 3


@dataclass(frozen=True)
class Outgoing:
    """A datagram to send: from local socket ``socket`` to ``addr``."""

    socket: int
    data: bytes
    addr: Addr


@dataclass
class ServerResult:
    """What one server told us (test I from socket 0)."""

    server: str
    address: HostPort
    reflexive: HostPort | None = None
    other_address: HostPort | None = None
    rtt: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "address": format_addr(self.address),
            "reflexive": format_addr(self.reflexive) if self.reflexive else None,
            "other_address": format_addr(self.other_address) if self.other_address else None,
            "rtt_ms": round(self.rtt * 1000, 1) if self.rtt is not None else None,
            "error": self.error,
        }


@dataclass
class NetcheckResult:
    """The classification. ``None`` is "not known" (not tested, or the test could not tell;
    ``notes`` says why)."""

    udp: bool = False
    local: HostPort | None = None
    servers: list[ServerResult] = field(default_factory=list)
    rfc5780_server: str | None = None
    nat: bool | None = None
    port_kept: bool | None = None
    mapping: str | None = None
    mapping_varies_by_server: bool | None = None
    filtering: str | None = None
    hairpinning: bool | None = None
    lifetime_min: float | None = None
    lifetime_max: float | None = None
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``nattunnel netcheck --json``): the same fields as the table."""
        return {
            "udp": self.udp,
            "local": format_addr(self.local) if self.local else None,
            "servers": [s.as_dict() for s in self.servers],
            "rfc5780_server": self.rfc5780_server,
            "nat": self.nat,
            "port_kept": self.port_kept,
            "mapping": self.mapping,
            "mapping_varies_by_server": self.mapping_varies_by_server,
            "filtering": self.filtering,
            "hairpinning": self.hairpinning,
            "lifetime_min": self.lifetime_min,
            "lifetime_max": self.lifetime_max,
            "elapsed": round(self.elapsed, 3),
            "notes": list(self.notes),
        }


def _hp(addr: Addr | HostPort) -> HostPort:
    """(host, port) with the host normalised (an IPv4-mapped IPv6 address as IPv4)."""
    host = addr[0]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return (host, int(addr[1]))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (str(ip), int(addr[1]))


def _sockaddr(hp: HostPort, family6: bool) -> Addr:
    return (hp[0], hp[1], 0, 0) if family6 else (hp[0], hp[1])


class _Tx:
    """One Binding transaction: its retransmission schedule and what to do with its end."""

    __slots__ = ("check_source", "data", "dest", "give_up", "next_at", "on_answer",
                 "on_timeout", "rto", "sent_at", "socket", "tag", "tid", "want_request")

    def __init__(self, tid: bytes, socket: int, dest: HostPort, data: bytes, now: float,
                 give_up: float, on_answer: Callable[[stun.Message, HostPort, int, float],
                                                     None],
                 on_timeout: Callable[[float], None], want_request: bool = False) -> None:
        self.tid = tid
        self.socket = socket
        self.dest = dest
        self.data = data
        self.sent_at = now
        self.next_at = now
        self.rto = STUN_RTO
        self.give_up = give_up
        self.on_answer = on_answer
        self.on_timeout = on_timeout
        self.want_request = want_request
        #: the lifetime probe's wait index, or -1
        self.tag = -1
        #: the answer must come from ``dest`` (not so for a CHANGE-REQUEST: its answer is
        #: judged by where it came from; nor for a hairpinned request)
        self.check_source = not want_request


class NetCheck:
    """The NAT classification core. ``servers``: (host, port) of each STUN server, resolved
    (the driver resolves names), in the order given."""

    def __init__(self, servers: Sequence[HostPort], now: float, *,
                 names: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 lifetime: bool = False, lifetime_max: float = 120.0,
                 lifetime_waits: Sequence[float] = DEFAULT_LIFETIME_WAITS,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        if not servers:
            raise ValueError("netcheck needs at least one STUN server")
        self._start = now
        self._deadline = now + timeout
        self._tx_timeout = max(0.2, min(timeout * 0.4, 2.5))
        self._random = random
        self._family6 = ":" in servers[0][0]
        names = list(names) if names is not None else [format_addr(s) for s in servers]
        self.result = NetcheckResult(servers=[ServerResult(n, _hp(s))
                                              for n, s in zip(names, servers, strict=True)])
        self.counters: dict[str, int] = {"sent": 0, "received": 0, "not_stun": 0,
                                         "unknown_transaction": 0, "wrong_source": 0,
                                         "retransmitted": 0}
        self._txs: dict[bytes, _Tx] = {}
        self._out: list[Outgoing] = []
        self._locals: dict[int, HostPort] = {}
        self._done = False
        self._first: ServerResult | None = None
        self._rfc5780: ServerResult | None = None
        self._map: dict[str, HostPort | None] = {}
        self._filt: dict[str, bool | None] = {}
        self._lifetime = lifetime
        self._waits = [w for w in lifetime_waits if w <= lifetime_max] if lifetime else []
        self._life_mapped: dict[int, tuple[HostPort, float]] = {}
        self._life_due: dict[int, float] = {}
        self._life_primary: HostPort = self.result.servers[0].address
        # test I may take what the tests that follow it do not need
        first_give_up = now + max(self._tx_timeout, timeout - self._tx_timeout)
        for server in self.result.servers:
            self._start_tx(SOCK_MAIN, server.address, now, self._bound_answer(server),
                           self._bound_timeout(server), give_up=first_give_up)

    # ------------------------------------------------------------------ the contract

    @property
    def done(self) -> bool:
        return self._done

    def socket_bound(self, socket: int, addr: Addr | HostPort) -> None:
        """The driver says where local socket ``socket`` is bound: our address towards the
        servers (not a wildcard, if it can tell) and the port."""
        self._locals[socket] = _hp(addr)
        if socket == SOCK_MAIN:
            self.result.local = self._locals[socket]

    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        if self._done:
            return None
        times = [min(tx.next_at, tx.give_up) for tx in self._txs.values()]
        times.extend(self._life_due.values())
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for tx in list(self._txs.values()):
            if tx.tid not in self._txs:
                continue
            if now >= tx.give_up:
                del self._txs[tx.tid]
                tx.on_timeout(now)
            elif now >= tx.next_at:
                self._send(tx, now)
        for k, due in list(self._life_due.items()):
            if now >= due:
                del self._life_due[k]
                self._life_probe(k, now)
        self._check_done(now)

    def receive_datagram(self, socket: int, data: bytes, addr: Addr | HostPort,
                         now: float) -> None:
        """A datagram that came to local socket ``socket`` from ``addr``."""
        self.counters["received"] += 1
        msg = _parse(data)
        if msg is None:
            self.counters["not_stun"] += 1
            return
        tx = self._txs.get(msg.transaction_id)
        if tx is None or (msg.message_class == stun.Class.REQUEST) != tx.want_request:
            self.counters["unknown_transaction"] += 1
            return
        src = _hp(addr)
        if tx.check_source and src != tx.dest:
            self.counters["wrong_source"] += 1
            return
        del self._txs[tx.tid]
        tx.on_answer(msg, src, socket, now)
        self._check_done(now)

    # ------------------------------------------------------------------ transactions

    def _start_tx(self, socket: int, dest: HostPort, now: float,
                  on_answer: Callable[[stun.Message, HostPort, int, float], None],
                  on_timeout: Callable[[float], None], *, change: int = 0,
                  response_port: int | None = None, want_request: bool = False,
                  cap: bool = True, tag: int = -1, give_up: float | None = None) -> None:
        tid = self._random(STUN_TRANSACTION_ID_LEN)
        data = (binding_request(tid, change) if response_port is None
                else _with_response_port(tid, response_port))
        if give_up is None:
            give_up = now + self._tx_timeout
        if cap:
            give_up = min(give_up, self._deadline)
        tx = _Tx(tid, socket, dest, data, now, give_up, on_answer, on_timeout, want_request)
        tx.tag = tag
        tx.check_source = not (want_request or change)
        self._txs[tid] = tx
        self._send(tx, now)

    def _send(self, tx: _Tx, now: float) -> None:
        if now > tx.sent_at:
            self.counters["retransmitted"] += 1
        self._out.append(Outgoing(tx.socket, tx.data, _sockaddr(tx.dest, self._family6)))
        self.counters["sent"] += 1
        tx.next_at = now + tx.rto
        tx.rto *= 2

    def _check_done(self, now: float) -> None:
        if self._done or self._txs or self._life_due:
            return
        self._done = True
        self.result.elapsed = now - self._start
        self._finish()

    # ------------------------------------------------------------------ test I

    def _bound_answer(self, server: ServerResult) -> Callable[[stun.Message, HostPort, int,
                                                                float], None]:
        sent = self._start

        def answer(msg: stun.Message, src: HostPort, socket: int, now: float) -> None:
            server.rtt = now - sent
            self.result.udp = True
            if msg.message_class != stun.Class.RESPONSE:
                server.error = _error_text(msg)
                return
            mapped = _mapped(msg)
            if mapped is None:
                server.error = "no XOR-MAPPED-ADDRESS in the answer"
                return
            server.reflexive = mapped
            other = msg.attributes.get("OTHER-ADDRESS")
            if other is not None:
                server.other_address = _hp(other)
            if self._first is None:
                self._first = server
                self._start_hairpin(mapped, now)
                if self._lifetime:
                    self._start_lifetime(server.address, now)
            if self._rfc5780 is None and server.other_address is not None:
                self._rfc5780 = server
                self.result.rfc5780_server = server.server
                self._start_mapping(server, now)
                self._start_filtering(server.address, now)

        return answer

    @staticmethod
    def _bound_timeout(server: ServerResult) -> Callable[[float], None]:
        def timeout(now: float) -> None:
            server.error = "no answer"

        return timeout

    # ------------------------------------------------------------------ mapping

    def _start_mapping(self, server: ServerResult, now: float) -> None:
        assert server.other_address is not None
        other_ip = (server.other_address[0], server.address[1])
        self._map = {"I": server.reflexive}
        for test, dest in (("II", other_ip), ("III", server.other_address)):
            self._start_tx(SOCK_MAIN, dest, now, self._mapping_answer(test),
                           self._mapping_timeout(test))

    def _mapping_answer(self, test: str) -> Callable[[stun.Message, HostPort, int, float],
                                                      None]:
        def answer(msg: stun.Message, src: HostPort, socket: int, now: float) -> None:
            self._map[test] = _mapped(msg) if msg.message_class == stun.Class.RESPONSE \
                else None

        return answer

    def _mapping_timeout(self, test: str) -> Callable[[float], None]:
        def timeout(now: float) -> None:
            self._map[test] = None

        return timeout

    # ------------------------------------------------------------------ filtering

    def _start_filtering(self, primary: HostPort, now: float) -> None:
        def answer(msg: stun.Message, src: HostPort, socket: int, now: float) -> None:
            if msg.message_class != stun.Class.RESPONSE or self._rfc5780 is None:
                self._filt["I"] = False
                return
            self._filt["I"] = True
            other = self._rfc5780.other_address
            assert other is not None
            for test, change, expect in (("II", STUN_CHANGE_IP | STUN_CHANGE_PORT, other),
                                         ("III", STUN_CHANGE_PORT, (primary[0], other[1]))):
                self._start_tx(SOCK_FILTER, primary, now, self._filter_answer(test, expect),
                               self._filter_timeout(test), change=change)

        def timeout(now: float) -> None:
            self._filt["I"] = False

        self._start_tx(SOCK_FILTER, primary, now, answer, timeout)

    def _filter_answer(self, test: str, expect: HostPort) -> Callable[
            [stun.Message, HostPort, int, float], None]:
        def answer(msg: stun.Message, src: HostPort, socket: int, now: float) -> None:
            if msg.message_class != stun.Class.RESPONSE:
                self._filt[test] = None
                self._note(f"filtering test {test}: {_error_text(msg)}")
            elif src != expect:
                self._filt[test] = None
                self._note(f"filtering test {test}: the answer came from {format_addr(src)}, "
                           f"not {format_addr(expect)} (the server ignores CHANGE-REQUEST)")
            else:
                self._filt[test] = True

        return answer

    def _filter_timeout(self, test: str) -> Callable[[float], None]:
        def timeout(now: float) -> None:
            self._filt[test] = False

        return timeout

    # ------------------------------------------------------------------ hairpinning

    def _start_hairpin(self, mapped: HostPort, now: float) -> None:
        def arrived(msg: stun.Message, src: HostPort, socket: int, now: float) -> None:
            self.result.hairpinning = socket == SOCK_MAIN

        def timeout(now: float) -> None:
            self.result.hairpinning = False

        self._start_tx(SOCK_HAIRPIN, mapped, now, arrived, timeout, want_request=True)

    # ------------------------------------------------------------------ lifetime

    def _start_lifetime(self, primary: HostPort, now: float) -> None:
        self._life_primary = primary
        for k in range(len(self._waits)):
            self._start_tx(SOCK_LIFETIME + 1 + k, primary, now, self._life_mapped_answer(k),
                           self._life_lost(k), cap=False, tag=k)

    def _life_mapped_answer(self, k: int) -> Callable[[stun.Message, HostPort, int, float],
                                                      None]:
        def answer(msg: stun.Message, src: HostPort, socket: int, now: float) -> None:
            mapped = _mapped(msg) if msg.message_class == stun.Class.RESPONSE else None
            if mapped is None:
                self._life_stop(k, "a lifetime socket learnt no mapping")
                return
            self._life_mapped[k] = (mapped, now)
            self._life_due[k] = now + self._waits[k]

        return answer

    def _life_lost(self, k: int) -> Callable[[float], None]:
        def timeout(now: float) -> None:
            self._life_stop(k, "a lifetime socket had no answer")

        return timeout

    def _life_probe(self, k: int, now: float) -> None:
        mapped, _ = self._life_mapped[k]
        want = SOCK_LIFETIME + 1 + k

        def answer(msg: stun.Message, src: HostPort, socket: int, now: float) -> None:
            if msg.message_class != stun.Class.RESPONSE:
                self._life_stop(k, f"lifetime probe: {_error_text(msg)} (RESPONSE-PORT "
                                   f"unsupported?)")
            elif socket == want:
                alive = self.result.lifetime_min
                self.result.lifetime_min = max(alive or 0.0, self._waits[k])
            else:
                self._life_stop(k, "lifetime probe: the answer came to the sending socket "
                                   "(the server ignores RESPONSE-PORT)")

        def timeout(now: float) -> None:
            dead = self.result.lifetime_max
            self.result.lifetime_max = min(dead or self._waits[k], self._waits[k])
            self._life_stop(k, None)

        self._start_tx(SOCK_LIFETIME, self._life_primary, now, answer, timeout,
                       response_port=mapped[1], cap=False, tag=k)

    def _life_stop(self, k: int, note: str | None) -> None:
        """Stop every probe of a longer wait than ``waits[k]``."""
        if note:
            self._note(note)
        for j in range(k, len(self._waits)):
            self._life_due.pop(j, None)
        for tid, tx in list(self._txs.items()):
            if tx.tag > k:
                del self._txs[tid]

    # ------------------------------------------------------------------ the result

    def _note(self, text: str) -> None:
        if text not in self.result.notes:
            self.result.notes.append(text)

    def _finish(self) -> None:
        r = self.result
        first = self._first
        if first is None:
            self._note("no server gave a reflexive address" if r.udp else
                       "no server answered: UDP blocked or server down")
            return
        assert first.reflexive is not None
        local = self._locals.get(SOCK_MAIN)
        if local is not None:
            r.port_kept = first.reflexive[1] == local[1]
            if local[0] not in ("0.0.0.0", "::"):
                r.nat = first.reflexive != local
        mapped = {s.reflexive for s in r.servers if s.reflexive is not None}
        ips = {s.address[0] for s in r.servers if s.reflexive is not None}
        if len(ips) > 1:
            r.mapping_varies_by_server = len(mapped) > 1
        if self._rfc5780 is None:
            self._note("no server gave OTHER-ADDRESS (RFC 5780): mapping and filtering not "
                       "tested")
            if r.mapping_varies_by_server is False:
                r.mapping = ENDPOINT_INDEPENDENT
        else:
            r.mapping = _classify_mapping(self._map)
            r.filtering = _classify_filtering(self._filt)
            if r.mapping is None:
                self._note("mapping tests II/III had no answer from OTHER-ADDRESS")
        if self._lifetime and r.lifetime_max is None and r.lifetime_min is not None:
            self._note(f"the mapping outlived the longest wait ({r.lifetime_min:g} s)")


def _classify_mapping(m: dict[str, HostPort | None]) -> str | None:
    x1, x2, x3 = m.get("I"), m.get("II"), m.get("III")
    if x1 is None or x2 is None:
        return None
    if x2 == x1:
        return ENDPOINT_INDEPENDENT
    if x3 is None:
        return None
    return ADDRESS_DEPENDENT if x3 == x2 else ADDRESS_AND_PORT_DEPENDENT


def _classify_filtering(f: dict[str, bool | None]) -> str | None:
    if not f.get("I"):
        return None
    if f.get("II"):
        return ENDPOINT_INDEPENDENT
    if f.get("II") is None:
        return None
    if f.get("III"):
        return ADDRESS_DEPENDENT
    return None if f.get("III") is None else ADDRESS_AND_PORT_DEPENDENT


def _parse(data: bytes) -> stun.Message | None:
    if not looks_like_stun(data):
        return None
    try:
        msg = stun.parse_message(data)
    except (ValueError, struct.error, IndexError, UnicodeDecodeError):
        return None
    return msg if msg.message_method == stun.Method.BINDING else None


def _mapped(msg: stun.Message) -> HostPort | None:
    addr = msg.attributes.get("XOR-MAPPED-ADDRESS") or msg.attributes.get("MAPPED-ADDRESS")
    return _hp(addr) if addr is not None else None


def _error_text(msg: stun.Message) -> str:
    code = msg.attributes.get("ERROR-CODE")
    if code is None:
        return f"an unexpected {msg.message_class.name.lower()}"
    return f"error {code[0]} {code[1]}".rstrip()


def _with_response_port(tid: bytes, port: int) -> bytes:
    """A Binding request with RESPONSE-PORT (2 octets of port, 2 of padding: RFC 5780
    section 7.5) and FINGERPRINT last (RFC 8489 section 14.7)."""
    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=tid)
    attr = struct.pack("!HHH2x", ATTR_RESPONSE_PORT, 4, port)
    data = bytes(msg)
    data = data[:2] + struct.pack("!H", len(data) - STUN_HEADER_LEN + len(attr)) + data[4:] + attr
    fingerprint = stun.message_fingerprint(data)
    body = len(data) - STUN_HEADER_LEN + 8
    return (data[:2] + struct.pack("!H", body) + data[4:]
            + struct.pack("!HHI", ATTR_FINGERPRINT, 4, fingerprint))
