"""A TURN (RFC 8656) client over UDP, sans-I/O: one allocation on one server, permissions
and channels for the peers reached through it, and the data framing.

``TurnClient`` follows the core contract (docs/architecture.md): ``allocate(now)`` starts,
``receive(data, source, now)`` is fed what came from the server, ``datagrams_to_send()``
gives (server, datagram) pairs to send from the socket the allocation belongs to (the
tunnel's NAT-T socket), ``next_event()`` what happened (``Allocated``, ``Refreshed``,
``PermissionUp``, ``ChannelUp``, ``TurnFailed``, ``Released``), ``get_timer()`` /
``handle_timer(now)`` the retransmissions and the refreshes.

- Allocate (section 7.2) with REQUESTED-TRANSPORT UDP; the first one has no credentials, a
  401 answer gives REALM and NONCE and the request is made again with USERNAME, REALM,
  NONCE and MESSAGE-INTEGRITY (the long-term credential mechanism, RFC 8489 section 9.2;
  key MD5(username:realm:password), ``aioice.turn.make_integrity_key``). A 438 (stale
  nonce) answer to any request gives a new NONCE and the request is made again, at most
  MAX_AUTH_RETRIES times in a row. XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS and LIFETIME
  are learned.
- Refresh (section 8) before the allocation's LIFETIME ends; ``release(now)`` sends a
  Refresh with LIFETIME 0.
- Per peer: CreatePermission (section 9, by IP address) and ChannelBind (section 11, a
  channel number in 0x4000-0x4FFF), each refreshed before it expires (permissions last
  300 s, channels 600 s; the lifetimes are parameters, so that a test can shorten them to
  what its server was told). A refresh is due at ``lifetime - min(REFRESH_MARGIN,
  lifetime / 4)``.
- Data: ``frame(peer, data)`` is the 4-octet ChannelData header (section 12.4) once the
  peer's channel is bound, or else a Send indication (section 10) once its permission is
  installed; ``receive`` unwraps ChannelData and Data indications and says where in the
  datagram the peer's payload lies (so that the caller can use it in place).
- Retransmissions as STUN's (RFC 8489 section 6.2.1): RTO 500 ms doubling, Rc = 7, Rm = 16.
- Bounds: transactions, peers (and so channels), queued events. Malformed input, answers
  that match no transaction, answers whose MESSAGE-INTEGRITY does not verify, ChannelData
  on an unknown channel and Data indications from peers without permission are counted and
  dropped; ``receive`` never raises.

The message format is aioice's ``stun`` module (docs/dependencies.md). aioice's TURN
protocol classes are not used: they own the socket and the timers (asyncio), where this
client must share the tunnel's NAT-T socket and its one timer.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from aioice import stun as _stun
from aioice.turn import make_integrity_key

from ..addr import Addr, HostPort, format_addr, sockaddr
from ..constants import (
    STUN_HEADER_LEN,
    STUN_RC,
    STUN_RM,
    STUN_RTO,
    STUN_TRANSACTION_ID_LEN,
    STUN_TRANSACTION_ID_OFFSET,
)
from .stun import looks_like_stun

#: RFC 8656 numbers
CHANNEL_MIN: Final = 0x4000
CHANNEL_MAX: Final = 0x4FFF
CHANNEL_HEADER_LEN: Final = 4
#: REQUESTED-TRANSPORT: UDP (section 14.7: the IANA protocol number in the first octet)
TRANSPORT_UDP: Final = 17 << 24
DEFAULT_LIFETIME: Final = 600.0
PERMISSION_LIFETIME: Final = 300.0
CHANNEL_LIFETIME: Final = 600.0
#: a refresh goes this long (or a quarter of the lifetime, if less) before the end
REFRESH_MARGIN: Final = 60.0
#: 438 (stale nonce) and 401 answers taken in a row for one request before it fails
MAX_AUTH_RETRIES: Final = 3
#: a 437 (allocation mismatch) to an Allocate: the server still holds an allocation of this
#: 5-tuple (ours, released or lost, that it has not freed yet; coturn takes about a second
#: after a release): the Allocate is made again after 2, 4, 8 s, then it fails; the same for
#: 508 (insufficient capacity: no relay port free yet, section 7.2, e.g. a one-port range
#: whose last allocation is still being freed)
MISMATCH_RETRIES: Final = 3
MISMATCH_WAIT: Final = 2.0
MAX_TRANSACTIONS: Final = 64
MAX_PEERS: Final = 256
MAX_EVENTS: Final = 1024
#: what the overhead of the relay is on each datagram (the ChannelData header)
RELAY_OVERHEAD: Final = CHANNEL_HEADER_LEN

_CHANNEL_HEADER: Final = struct.Struct("!HH")
_ATTR_HEADER: Final = struct.Struct("!HH")
_ATTR_DATA: Final = 0x0013
_TID_END: Final = STUN_TRANSACTION_ID_OFFSET + STUN_TRANSACTION_ID_LEN
_Key = tuple[str, int]


def _key(addr: Addr | HostPort) -> _Key:
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(addr[1])


def _addr(value: object) -> Addr | None:
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and isinstance(port, int):
            return sockaddr(host, port)
    return None


def is_channel_data(data: bytes | bytearray | memoryview) -> bool:
    """The first two bits 01 (RFC 8656 section 12.4: a channel number 0x4000-0x7FFF; RFC
    7983's 64-79 for the first octet)."""
    return len(data) >= CHANNEL_HEADER_LEN and data[0] & 0xC0 == 0x40


def refresh_after(lifetime: float) -> float:
    """How long after a grant its refresh is due."""
    return lifetime - min(REFRESH_MARGIN, lifetime / 4)


# --- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Allocated:
    relayed: Addr
    mapped: Addr | None
    lifetime: float


@dataclass(frozen=True, slots=True)
class Refreshed:
    lifetime: float


@dataclass(frozen=True, slots=True)
class Released:
    """The allocation was given up (LIFETIME 0 answered, or not answered in time)."""


@dataclass(frozen=True, slots=True)
class PermissionUp:
    peer: Addr


@dataclass(frozen=True, slots=True)
class ChannelUp:
    peer: Addr
    channel: int


@dataclass(frozen=True, slots=True)
class TurnFailed:
    """A request failed: ``what`` is allocate, refresh, permission or channel (``peer`` for
    the last two); ``code`` the ERROR-CODE (None: timed out or an unusable answer)."""

    what: str
    code: int | None
    reason: str
    peer: Addr | None = None


Event = Allocated | Refreshed | Released | PermissionUp | ChannelUp | TurnFailed


@dataclass(slots=True)
class _Transaction:
    tid: bytes
    what: str
    peer: _Key | None
    request: bytes
    started: float
    auth_retries: int = 0
    sent: int = 0
    interval: float = 0.0
    deadline: float = 0.0


@dataclass(slots=True)
class PeerState:
    addr: Addr
    channel: int
    permission_until: float = 0.0
    channel_until: float = 0.0
    #: a CreatePermission / ChannelBind is outstanding
    permission_pending: bool = False
    channel_pending: bool = False
    header: bytes = field(default=b"")


class TurnClient:
    """One allocation on one TURN server, and the peers reached through it."""

    def __init__(self, server: Addr | HostPort, username: str, password: str, *,
                 lifetime: float = DEFAULT_LIFETIME,
                 permission_lifetime: float = PERMISSION_LIFETIME,
                 channel_lifetime: float = CHANNEL_LIFETIME,
                 rto: float = STUN_RTO, rc: int = STUN_RC, rm: float = STUN_RM,
                 max_peers: int = MAX_PEERS, max_transactions: int = MAX_TRANSACTIONS,
                 max_events: int = MAX_EVENTS) -> None:
        if min(lifetime, permission_lifetime, channel_lifetime, rto, rm) <= 0 or rc < 1:
            raise ValueError("TURN lifetimes and timings must be positive, rc at least 1")
        if not 1 <= max_peers <= CHANNEL_MAX - CHANNEL_MIN + 1:
            raise ValueError(f"max_peers must be 1 to {CHANNEL_MAX - CHANNEL_MIN + 1}")
        self.server: Addr = server if len(server) == 4 else sockaddr(server[0], server[1])
        self.server_key = _key(server)
        self.username, self._password = username, password
        self.lifetime = lifetime
        self.permission_lifetime = permission_lifetime
        self.channel_lifetime = channel_lifetime
        self.rto, self.rc, self.rm = rto, rc, rm
        self.max_peers, self.max_transactions = max_peers, max_transactions
        #: idle, allocating, allocated, releasing, released, failed
        self.state = "idle"
        self.relayed: Addr | None = None
        self.mapped: Addr | None = None
        self.expires = 0.0
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self._integrity: bytes | None = None
        self._transactions: dict[bytes, _Transaction] = {}
        #: what is due when, by key; the heap holds (when, sequence, key), stale ones skipped
        self._due: dict[tuple[str, object], float] = {}
        self._heap: list[tuple[float, int, tuple[str, object]]] = []
        self._seq = 0
        self._peers: dict[_Key, PeerState] = {}
        self._by_channel: dict[int, PeerState] = {}
        self._permitted: dict[str, float] = {}  # peer IP -> until when
        self._mismatches = 0
        self._outgoing: list[tuple[Addr, bytes]] = []
        self._events: deque[Event] = deque(maxlen=max_events)
        self.counters: dict[str, int] = dict.fromkeys(
            ("requests", "retransmissions", "received", "malformed", "unmatched",
             "integrity_failed", "unexpected", "errors", "timed_out", "stale_nonce",
             "refreshes", "channel_data_in", "data_in", "unknown_channel",
             "no_permission", "events_dropped", "refused", "frames_out",
             "permission_refreshes", "channel_refreshes", "mismatch_retries"), 0)

    # --- the allocation --------------------------------------------------------------------
    def allocate(self, now: float) -> None:
        """Start the allocation (again, after a failure or a release)."""
        if self.state in ("allocating", "allocated"):
            return
        self.state = "allocating"
        self._begin("allocate", None, now)

    def release(self, now: float) -> None:
        """Refresh with LIFETIME 0: the server frees the allocation (section 8)."""
        if self.state != "allocated":
            return
        self.state = "releasing"
        for key in [k for k in self._due if k[0] != "tx"]:
            del self._due[key]
        self._begin("release", None, now)

    @property
    def allocated(self) -> bool:
        return self.state == "allocated"

    # --- peers -----------------------------------------------------------------------------
    def add_peer(self, peer: Addr | HostPort, now: float) -> PeerState:
        """Reach ``peer`` through the allocation: a permission for its IP address and a
        channel for its address and port (requested once allocated). ValueError past
        ``max_peers``."""
        key = _key(peer)
        st = self._peers.get(key)
        if st is not None:
            return st
        if len(self._peers) >= self.max_peers:
            self.counters["refused"] += 1
            raise ValueError(f"{self.max_peers} TURN peers already")
        channel = next(c for c in range(CHANNEL_MIN, CHANNEL_MIN + self.max_peers)
                       if c not in self._by_channel)
        st = PeerState(sockaddr(*key), channel)
        self._peers[key] = st
        self._by_channel[channel] = st
        if self.state == "allocated":
            self._permission(st, now)
            self._bind(st, now)
        return st

    def remove_peer(self, peer: Addr | HostPort) -> None:
        """Stop refreshing ``peer``'s permission and channel (the server lets them
        expire)."""
        st = self._peers.pop(_key(peer), None)
        if st is None:
            return
        del self._by_channel[st.channel]
        self._due.pop(("perm", _key(peer)), None)
        self._due.pop(("chan", _key(peer)), None)

    def peer(self, peer: Addr | HostPort) -> PeerState | None:
        return self._peers.get(_key(peer))

    def peers(self) -> list[PeerState]:
        return list(self._peers.values())

    def _permission(self, st: PeerState, now: float) -> None:
        st.permission_pending = True
        self._begin("permission", _key(st.addr), now)

    def _bind(self, st: PeerState, now: float) -> None:
        st.channel_pending = True
        self._begin("channel", _key(st.addr), now)

    # --- data ------------------------------------------------------------------------------
    def channel_header(self, peer: Addr | HostPort, length: int) -> bytes | None:
        """The ChannelData header for ``length`` octets to ``peer``, or None when its
        channel is not bound."""
        st = self._peers.get(_key(peer))
        if st is None or not st.header:
            return None
        return st.header + length.to_bytes(2, "big")

    def frame(self, peer: Addr | HostPort, data: bytes | bytearray | memoryview) -> bytes | None:
        """``data`` to ``peer`` as the server must get it: ChannelData once the channel is
        bound, a Send indication once the permission is installed, else None."""
        st = self._peers.get(_key(peer))
        if st is None or self.state != "allocated":
            return None
        self.counters["frames_out"] += 1
        if st.header:
            return st.header + len(data).to_bytes(2, "big") + bytes(data)
        if st.permission_until:
            msg = _stun.Message(_stun.Method.SEND, _stun.Class.INDICATION,
                                transaction_id=os.urandom(STUN_TRANSACTION_ID_LEN),
                                attributes={"XOR-PEER-ADDRESS": _key(st.addr),
                                            "DATA": bytes(data)})
            return bytes(msg)
        self.counters["frames_out"] -= 1
        return None

    def receive(self, data: bytes | bytearray | memoryview, source: Addr | HostPort,
                now: float) -> tuple[Addr, int, int] | None:
        """A datagram from the server: for peer data (ChannelData, a Data indication)
        (peer, start, end) of the payload within ``data``; None for anything else (an
        answer to one of our requests, or something counted and dropped). Never raises."""
        self.counters["received"] += 1
        try:
            if source != self.server and _key(source) != self.server_key:
                self.counters["unexpected"] += 1
                return None
        except (ValueError, IndexError, TypeError):
            self.counters["unexpected"] += 1
            return None
        if is_channel_data(data):
            return self._channel_data(data)
        if not looks_like_stun(data):
            self.counters["malformed"] += 1
            return None
        try:
            msg = _stun.parse_message(bytes(data))
        except (ValueError, struct.error):
            self.counters["malformed"] += 1
            return None
        if msg.message_class == _stun.Class.INDICATION:
            return self._data_indication(msg, data)
        t = self._transactions.get(bytes(data[STUN_TRANSACTION_ID_OFFSET:_TID_END]))
        if t is None or msg.message_class == _stun.Class.REQUEST:
            self.counters["unmatched"] += 1
            return None
        if (self._integrity is not None and "MESSAGE-INTEGRITY" in msg.attributes
                and not msg.check_message_integrity(self._integrity)):
            self.counters["integrity_failed"] += 1
            return None
        del self._transactions[t.tid]
        self._due.pop(("tx", t.tid), None)
        if msg.message_class == _stun.Class.ERROR:
            self._error(t, msg, now)
        else:
            self._success(t, msg, now)
        return None

    def _channel_data(self, data: bytes | bytearray | memoryview) -> tuple[Addr, int, int] | None:
        channel, length = _CHANNEL_HEADER.unpack_from(data, 0)
        st = self._by_channel.get(channel)
        if st is None or not st.header:
            self.counters["unknown_channel"] += 1
            return None
        if CHANNEL_HEADER_LEN + length > len(data):
            self.counters["malformed"] += 1
            return None
        self.counters["channel_data_in"] += 1
        return st.addr, CHANNEL_HEADER_LEN, CHANNEL_HEADER_LEN + length

    def _data_indication(self, msg: _stun.Message,
                         data: bytes | bytearray | memoryview) -> tuple[Addr, int, int] | None:
        peer = _addr(msg.attributes.get("XOR-PEER-ADDRESS"))
        if msg.message_method != _stun.Method.DATA or peer is None:
            self.counters["unexpected"] += 1
            return None
        if _key(peer)[0] not in self._permitted:
            self.counters["no_permission"] += 1
            return None
        pos = STUN_HEADER_LEN
        while pos + _ATTR_HEADER.size <= len(data):
            kind, length = _ATTR_HEADER.unpack_from(data, pos)
            start = pos + _ATTR_HEADER.size
            if kind == _ATTR_DATA and start + length <= len(data):
                self.counters["data_in"] += 1
                return peer, start, start + length
            pos = start + length + (-length % 4)
        self.counters["malformed"] += 1
        return None

    # --- requests --------------------------------------------------------------------------
    def _attributes(self, what: str, peer: _Key | None) -> dict[str, object]:
        attrs: dict[str, object] = {}
        if what == "allocate":
            attrs["REQUESTED-TRANSPORT"] = TRANSPORT_UDP
            attrs["LIFETIME"] = int(self.lifetime)
        elif what == "refresh":
            attrs["LIFETIME"] = int(self.lifetime)
        elif what == "release":
            attrs["LIFETIME"] = 0
        elif peer is not None:
            attrs["XOR-PEER-ADDRESS"] = peer
            if what == "channel":
                st = self._peers[peer]
                attrs["CHANNEL-NUMBER"] = st.channel
        if self._integrity is not None and self.realm is not None and self.nonce is not None:
            attrs["USERNAME"] = self.username
            attrs["REALM"] = self.realm
            attrs["NONCE"] = self.nonce
        return attrs

    _METHODS: Final = {"allocate": _stun.Method.ALLOCATE, "refresh": _stun.Method.REFRESH,
                       "release": _stun.Method.REFRESH,
                       "permission": _stun.Method.CREATE_PERMISSION,
                       "channel": _stun.Method.CHANNEL_BIND}

    def _request(self, tid: bytes, what: str, peer: _Key | None) -> bytes:
        msg = _stun.Message(self._METHODS[what], _stun.Class.REQUEST, transaction_id=tid,
                            attributes=self._attributes(what, peer))
        if self._integrity is not None and "USERNAME" in msg.attributes:
            msg.add_message_integrity(self._integrity)
        msg.add_fingerprint()
        return bytes(msg)

    def _begin(self, what: str, peer: _Key | None, now: float, retries: int = 0) -> None:
        if len(self._transactions) >= self.max_transactions:
            self.counters["refused"] += 1
            self._failed(what, None, "too many TURN transactions outstanding", peer)
            return
        tid = os.urandom(STUN_TRANSACTION_ID_LEN)
        t = _Transaction(tid, what, peer, self._request(tid, what, peer), now, retries)
        self._transactions[tid] = t
        self.counters["requests"] += 1
        self._send(t, now, now)

    def _send(self, t: _Transaction, due: float, now: float) -> None:
        self._outgoing.append((self.server, t.request))
        t.sent += 1
        t.interval = self.rto if t.sent == 1 else t.interval * 2
        wait = t.interval if t.sent < self.rc else self.rm * self.rto
        t.deadline = due + wait if due + wait > now else now + wait
        self._schedule(("tx", t.tid), t.deadline)

    def _schedule(self, key: tuple[str, object], when: float) -> None:
        self._due[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        if len(self._heap) > 4 * (len(self._due) + 16):
            self._heap = [(w, i, k) for i, (k, w) in enumerate(self._due.items())]
            heapq.heapify(self._heap)

    # --- answers ---------------------------------------------------------------------------
    def _error(self, t: _Transaction, msg: _stun.Message, now: float) -> None:
        err = msg.attributes.get("ERROR-CODE")
        code, reason = (err[0], str(err[1])) if isinstance(err, tuple) else (None, "")
        realm, nonce = msg.attributes.get("REALM"), msg.attributes.get("NONCE")
        if (code in (401, 438) and isinstance(nonce, bytes) and t.auth_retries < MAX_AUTH_RETRIES
                and (code == 438 or self._integrity is None or t.auth_retries == 0)):
            if code == 438:
                self.counters["stale_nonce"] += 1
            if isinstance(realm, str):
                self.realm = realm
            if self.realm is not None and (t.peer is None or t.peer in self._peers):
                self.nonce = nonce
                self._integrity = make_integrity_key(self.username, self.realm, self._password)
                self._begin(t.what, t.peer, now, t.auth_retries + 1)
                return
        if (code in (437, 508) and t.what == "allocate"
                and self._mismatches < MISMATCH_RETRIES):
            self.counters["mismatch_retries"] += 1
            self._schedule(("reallocate", None), now + MISMATCH_WAIT * 2 ** self._mismatches)
            self._mismatches += 1
            return
        self.counters["errors"] += 1
        self._failed(t.what, code, reason or "error response", t.peer)

    def _success(self, t: _Transaction, msg: _stun.Message, now: float) -> None:
        if msg.message_method != self._METHODS[t.what]:
            self.counters["unexpected"] += 1
            self._failed(t.what, None, "answer of another method", t.peer)
            return
        lifetime = msg.attributes.get("LIFETIME")
        if t.what == "allocate":
            relayed = _addr(msg.attributes.get("XOR-RELAYED-ADDRESS"))
            if relayed is None:
                self._failed("allocate", None, "no XOR-RELAYED-ADDRESS")
                return
            self.relayed = relayed
            self.mapped = _addr(msg.attributes.get("XOR-MAPPED-ADDRESS"))
            self._granted(lifetime, now)
            self.state = "allocated"
            self._mismatches = 0
            self._event(Allocated(relayed, self.mapped, self.expires - now))
            for st in self._peers.values():
                self._permission(st, now)
                self._bind(st, now)
        elif t.what == "refresh":
            self.counters["refreshes"] += 1
            self._granted(lifetime, now)
            self._event(Refreshed(self.expires - now))
        elif t.what == "release":
            self._gone()
        else:
            self._peer_granted(t, now)

    def _granted(self, lifetime: object, now: float) -> None:
        granted = float(lifetime) if isinstance(lifetime, int) and lifetime > 0 else self.lifetime
        self.expires = now + granted
        self._schedule(("refresh", None), now + refresh_after(granted))

    def _peer_granted(self, t: _Transaction, now: float) -> None:
        st = self._peers.get(t.peer) if t.peer is not None else None
        if st is None:
            return  # removed meanwhile
        if t.what == "permission":
            first = not st.permission_until
            st.permission_pending = False
            st.permission_until = now + self.permission_lifetime
            self._permitted[st.addr[0]] = st.permission_until
            self._schedule(("perm", t.peer), now + refresh_after(self.permission_lifetime))
            if first:
                self._event(PermissionUp(st.addr))
            else:
                self.counters["permission_refreshes"] += 1
            return
        first = not st.header
        st.channel_pending = False
        st.channel_until = now + self.channel_lifetime
        st.header = st.channel.to_bytes(2, "big")
        # a ChannelBind installs or refreshes the permission too (section 11)
        self._permitted[st.addr[0]] = max(self._permitted.get(st.addr[0], 0.0),
                                          now + self.permission_lifetime)
        self._schedule(("chan", t.peer), now + refresh_after(self.channel_lifetime))
        if first:
            self._event(ChannelUp(st.addr, st.channel))
        else:
            self.counters["channel_refreshes"] += 1

    def _failed(self, what: str, code: int | None, reason: str, peer: _Key | None = None) -> None:
        addr = sockaddr(*peer) if peer is not None else None
        self._event(TurnFailed(what, code, reason, addr))
        if what in ("allocate", "refresh"):
            self._gone(failed=True)
        elif what == "release":
            self._gone()
        elif peer is not None and (st := self._peers.get(peer)) is not None:
            if what == "permission":
                st.permission_pending = False
            else:
                st.channel_pending = False

    def _gone(self, failed: bool = False) -> None:
        """The allocation is over: every peer's permission and channel with it."""
        self.state = "failed" if failed else "released"
        if not failed:
            self._event(Released())
        self.relayed = None
        self._permitted.clear()
        for st in self._peers.values():
            st.header = b""
            st.permission_until = st.channel_until = 0.0
            st.permission_pending = st.channel_pending = False
        for key in [k for k in self._due if k[0] != "tx"]:
            del self._due[key]

    # --- the timer -------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and self._due.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if self._due.get(key) != when:
                continue
            del self._due[key]
            kind, what = key
            if kind == "tx":
                self._tx_due(what, now)
            elif kind == "refresh" and self.state == "allocated":
                self._begin("refresh", None, now)
            elif kind == "reallocate" and self.state == "allocating":
                self._begin("allocate", None, now)
            elif kind in ("perm", "chan") and isinstance(what, tuple):
                st = self._peers.get(what)
                if st is not None and self.state == "allocated":
                    (self._permission if kind == "perm" else self._bind)(st, now)
        for ip in [ip for ip, until in self._permitted.items() if until <= now]:
            del self._permitted[ip]

    def _tx_due(self, tid: object, now: float) -> None:
        t = self._transactions.get(tid) if isinstance(tid, bytes) else None
        if t is None:
            return
        if t.sent < self.rc:
            self.counters["retransmissions"] += 1
            self._send(t, t.deadline, now)
            return
        del self._transactions[t.tid]
        self.counters["timed_out"] += 1
        self._failed(t.what, None, f"no answer after {t.sent} requests", t.peer)

    # --- the contract ----------------------------------------------------------------------
    def _event(self, ev: Event) -> None:
        if len(self._events) == self._events.maxlen:
            self.counters["events_dropped"] += 1
        self._events.append(ev)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[tuple[Addr, bytes]]:
        out, self._outgoing = self._outgoing, []
        return out

    def stats(self) -> dict[str, object]:
        return {**self.counters, "state": self.state, "server": format_addr(self.server),
                "relayed": format_addr(self.relayed) if self.relayed else None,
                "mapped": format_addr(self.mapped) if self.mapped else None,
                "outstanding": len(self._transactions), "peers": len(self._peers)}


__all__ = ["CHANNEL_HEADER_LEN", "CHANNEL_MAX", "CHANNEL_MIN", "RELAY_OVERHEAD", "Allocated",
           "ChannelUp", "Event", "PeerState", "PermissionUp", "Refreshed", "Released",
           "TurnClient", "TurnFailed", "is_channel_data", "refresh_after"]
