"""The IKE manager: IKE SAs by SPI, their messages on ports 500 and 4500, and what their
events mean for the tunnel (child SAs installed and removed, peer addresses, keepalives).

Sans-I/O like the cores it drives: ``receive`` takes a message and where it came from,
``on_timer`` the time; what to send goes to the ``send`` callable the endpoint provides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import heapq
import hmac
import itertools
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..addr import Addr, format_addr
from ..constants import NAT_T_PORT, ExchangeType, NotifyType
from ..esp.sa import InboundSA, OutboundSA
from ..tunnel.core import Tunnel
from ..tunnel.peer import KeepaliveMode, Peer
from .base import State
from .config import Identity, IkeConfig
from .events import ChildDown, ChildUp, DownCause, IkeDown, IkeRekeyed, IkeUp, Outgoing
from .keylog import KeyLog
from .message import (
    Header,
    IkeDecodeError,
    Notify,
    decode_message,
    encode_message,
    peek_header,
    peek_nonce_and_cookie,
    peek_receiver_spi,
)
from .ratelimit import SourceLimiter, TokenBucket
from .sa import IkeSa

log = logging.getLogger("nattunnel")

#: half-open IKE SAs above which IKE_SA_INIT requests must carry a COOKIE (section 2.6)
COOKIE_THRESHOLD = 32
#: octets of the hash in our cookies (after one octet of secret version)
COOKIE_HASH_LEN = 16
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


@dataclass(frozen=True)
class IkeLimits:
    """Bounds on what unauthenticated (and authenticated) senders can make the IKE manager
    hold or compute (docs/security.md; the ``[limits]`` table in docs/config.md)."""

    #: half-open IKE SAs above which IKE_SA_INIT requests must carry a COOKIE (section 2.6)
    cookie_threshold: int = COOKIE_THRESHOLD
    #: half-open IKE SAs at most; IKE_SA_INIT requests beyond it are dropped
    half_open_max: int = 1024
    #: seconds a half-open responder SA waits for IKE_AUTH
    half_open_timeout: float = 30.0
    #: IKE_SA_INIT requests per second that one source (an IPv4 address, an IPv6 /64) may
    #: make us answer, with bursts up to ``init_burst``
    init_rate: float = 10.0
    init_burst: int = 20
    #: IKE_SA_INIT requests per second answered in all, from every source together (each
    #: costs a key exchange and key derivation: about 0.5 ms of a core)
    init_rate_total: float = 100.0
    #: established IKE SAs per peer identity; the oldest goes when a new one comes up beyond it
    ike_sas_per_identity: int = 4
    #: child SAs per IKE SA; CREATE_CHILD_SA beyond it is refused with NO_ADDITIONAL_SAS
    children_per_ike_sa: int = 16
    #: the cookie secret is replaced this often; cookies made with the previous one are
    #: still accepted until the next rotation
    cookie_secret_lifetime: float = 60.0


@dataclass
class IkePeer:
    """An IKE-managed tunnel peer: its IKE settings and whether we start the exchange."""

    config: IkeConfig
    initiate: bool
    remote: Addr | None  # where to send IKE_SA_INIT (port 500 or 4500)
    local: Addr | None = None  # our address towards it (for NAT detection)


class IkeManager:
    def __init__(self, tunnel: Tunnel, send: Callable[[Outgoing], None],
                 local_addr: Callable[[Addr, bool], Addr], *,
                 keylog: KeyLog | None = None, cookie_threshold: int | None = None,
                 limits: IkeLimits | None = None) -> None:
        """``send`` puts a message on the wire; ``local_addr(remote, natt)`` is our address
        (IP, port) towards ``remote`` on port 500 or 4500. ``cookie_threshold`` overrides
        the one in ``limits``."""
        self.tunnel = tunnel
        self.send = send
        self.local_addr = local_addr
        self.keylog = keylog
        limits = limits or IkeLimits()
        if cookie_threshold is not None:
            limits = dataclasses.replace(limits, cookie_threshold=cookie_threshold)
        self.limits = limits
        self.cookie_threshold = limits.cookie_threshold
        self.peers: dict[str, IkePeer] = {}
        self.sas: dict[bytes, IkeSa] = {}
        self._grace: list[tuple[float, int]] = []
        #: byte lifetimes: inbound SPI -> (IKE SA, the peer's tx_bytes when it was made)
        self._byte_limits: dict[int, tuple[IkeSa, int]] = {}
        self._next_lifetime_check: float | None = None
        self._reinitiate: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        # Timers: a heap of (deadline, tick, IKE SA), checked lazily against _when, so that
        # neither a wakeup nor a message costs a pass over every IKE SA.
        self._heap: list[tuple[float, int, IkeSa]] = []
        self._when: dict[IkeSa, float] = {}
        self._tick = itertools.count()
        #: half-open responder SAs by (SPIi, remote), for retransmitted IKE_SA_INIT requests
        self._half_open_sas: dict[tuple[bytes, Addr], IkeSa] = {}
        self._half_open_keys: dict[IkeSa, tuple[bytes, Addr]] = {}
        self._by_remote_id: dict[Identity, list[IkePeer]] = {}
        # cookie secrets by version (section 2.6): the current one and the one before
        self._cookie_version = 0
        self._cookie_secrets: dict[int, bytes] = {}
        self._cookie_rotate_at = float("-inf")
        self._init_per_source = SourceLimiter(limits.init_rate, limits.init_burst)
        self._init_total = TokenBucket(limits.init_rate_total, limits.init_rate_total, 0.0)
        #: unauthenticated responder SAs that went (timed out or refused) since the last
        #: summary line, and when the next summary may be logged
        self._half_open_gone = 0
        self._half_open_log_at = 0.0
        self.counters = {"cookies_sent": 0, "init_requests": 0, "dropped": 0,
                         "init_rate_limited": 0, "init_half_open_full": 0,
                         "half_open_dropped": 0, "identity_cap_deleted": 0, "errors": 0}

    # --- configuration ------------------------------------------------------------------------
    def add_peer(self, peer: IkePeer, now: float) -> None:
        self.peers[peer.config.name] = peer
        self._by_remote_id.setdefault(peer.config.remote_id, []).append(peer)
        if peer.initiate:
            self._reinitiate[peer.config.name] = now

    def _lookup(self, idi: Identity, idr: Identity | None) -> IkeConfig | None:
        for p in self._by_remote_id.get(idi, ()):
            if idr is None or idr == p.config.local_id:
                return p.config
        return None

    def initiate(self, name: str, now: float) -> IkeSa:
        peer = self.peers[name]
        if peer.remote is None:
            raise ValueError(f"peer {name}: no address to initiate to")
        natt = peer.config.force_encap
        local = peer.local or self.local_addr(peer.remote, natt)
        sa = IkeSa(peer.config, initiator=True, local=local, remote=peer.remote, now=now,
                   max_children=self.limits.children_per_ike_sa)
        self.sas[sa.local_spi] = sa
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

    # --- receiving ----------------------------------------------------------------------------
    def receive(self, data: bytes, remote: Addr, natt: bool, now: float) -> None:
        """One IKE message (marker removed) from ``remote`` on port 4500 (``natt``) or 500.
        Never raises: whatever a message makes go wrong is counted and logged here."""
        try:
            self._receive(data, remote, natt, now)
        except Exception as e:  # the last line of defence
            self._internal_error("a received message", e, now)

    def _receive(self, data: bytes, remote: Addr, natt: bool, now: float) -> None:
        # junk with unknown SPIs costs a lookup: nothing is parsed before an SA is found
        found = peek_receiver_spi(data)
        if found is None:
            self.counters["dropped"] += 1
            return
        local_spi, opens = found
        if opens:
            try:
                hdr = peek_header(data)
            except IkeDecodeError:
                self.counters["dropped"] += 1
                return
            self._init_request(data, hdr, remote, natt, now)
            return
        sa = self.sas.get(local_spi)
        if sa is None:
            self.counters["dropped"] += 1
            return
        # Replies go to where the request came from (section 2.11); the SA moves to a new
        # address only for an authenticated new message (section 2.23, in IkeSa.receive).
        before = sa.remote
        if sa.receive(data, now, remote, natt) and sa.remote != before:
            self._ike_moved(sa, before)
        self._process(sa, now)

    def _ike_moved(self, sa: IkeSa, before: Addr) -> None:
        """An authenticated message moved the IKE SA: ESP follows it (on port 4500)."""
        log.info("peer %s: IKE SA moved from %s to %s", sa.name, format_addr(before),
                 format_addr(sa.remote))
        peer = self._tunnel_peer(sa)
        if peer is not None and sa.established and sa.natt:
            self.tunnel.set_peer_address(peer, sa.remote)

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
    def _cookie(self, version: int, ni: bytes, spi_i: bytes, remote: Addr) -> bytes | None:
        """Section 2.6: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>), or
        None if the secret of ``version`` is no longer kept."""
        secret = self._cookie_secrets.get(version)
        if secret is None:
            return None
        host = remote[0]
        try:
            ipi = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                   host.split("%", 1)[0])
        except OSError:
            ipi = host.encode()
        mac = hmac.new(secret, ni + ipi + spi_i, hashlib.sha256).digest()
        return bytes([version]) + mac[:COOKIE_HASH_LEN]

    def _rotate_cookie_secret(self, now: float) -> None:
        """A new secret every ``cookie_secret_lifetime``; cookies made with the one before
        are still accepted until the next rotation (section 2.6.1)."""
        if now < self._cookie_rotate_at:
            return
        if now >= self._cookie_rotate_at + self.limits.cookie_secret_lifetime:
            self._cookie_secrets.clear()  # idle for two lifetimes: the previous one is stale
        self._cookie_version = (self._cookie_version + 1) % 256
        self._cookie_secrets = {v: k for v, k in self._cookie_secrets.items()
                                if v == (self._cookie_version - 1) % 256}
        self._cookie_secrets[self._cookie_version] = os.urandom(32)
        self._cookie_rotate_at = now + self.limits.cookie_secret_lifetime

    def _cookie_ok(self, got: bytes, ni: bytes, spi_i: bytes, remote: Addr) -> bool:
        if len(got) != 1 + COOKIE_HASH_LEN:
            return False
        want = self._cookie(got[0], ni, spi_i, remote)
        return want is not None and hmac.compare_digest(got, want)

    def _half_open(self) -> int:
        return len(self._half_open_sas)

    def _admit_init(self, data: bytes, hdr: Header, remote: Addr, natt: bool,
                    now: float) -> bool:
        """Whether a new IKE_SA_INIT request gets a half-open SA. Checked from the cheapest
        to the dearest: the cookie (stateless, from the payload headers alone), the
        half-open cap, the source's token bucket, the bucket of all sources; only then is
        the message decoded and a key exchange spent."""
        limits = self.limits
        if self._half_open() >= limits.cookie_threshold:
            self._rotate_cookie_secret(now)
            try:
                ni, got = peek_nonce_and_cookie(data)
            except IkeDecodeError:
                self.counters["dropped"] += 1
                return False
            ni = ni or b""
            if got is None or not self._cookie_ok(got, ni, hdr.spi_i, remote):
                cookie = self._cookie(self._cookie_version, ni, hdr.spi_i, remote)
                assert cookie is not None
                self.counters["cookies_sent"] += 1
                out = encode_message(Header.make(ExchangeType.IKE_SA_INIT, hdr.spi_i,
                                                 initiator=False, response=True),
                                     [Notify(NotifyType.COOKIE, cookie)])
                self.send(Outgoing(out, remote, natt))
                return False
        if self._half_open() >= limits.half_open_max:
            self.counters["init_half_open_full"] += 1
            return False
        if not self._init_per_source.allow(remote[0], now):
            self.counters["init_rate_limited"] += 1
            return False
        if not self._init_total.allow(now):
            self.counters["init_rate_limited"] += 1
            return False
        return True

    def _init_request(self, data: bytes, hdr: Header, remote: Addr, natt: bool,
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
        local = self.local_addr(remote, natt)
        sa = IkeSa(None, initiator=False, local=local, remote=remote, now=now,
                   lookup=self._lookup, max_children=self.limits.children_per_ike_sa,
                   half_open_timeout=self.limits.half_open_timeout)
        proposals = next(iter(self.peers.values())).config.ike_proposals if self.peers else ()
        sa.respond_init(msg, data, now, proposals, natt=natt)
        if sa.state is not State.DEAD:
            self.sas[sa.local_spi] = sa
            self._half_open_sas[(sa.spi_i, remote)] = sa
            self._half_open_keys[sa] = (sa.spi_i, remote)
        self._process(sa, now)

    # --- effects ------------------------------------------------------------------------------
    def _process(self, sa: IkeSa, now: float) -> None:
        for out in sa.datagrams_to_send():
            self.send(out)
        while (ev := sa.next_event()) is not None:
            if isinstance(ev, ChildUp):
                self._child_up(ev, now)
            elif isinstance(ev, ChildDown):
                self._child_down(ev, now)
            elif isinstance(ev, IkeUp):
                self._ike_up(ev, now)
            elif isinstance(ev, IkeDown):
                self._ike_down(ev, now)
            elif isinstance(ev, IkeRekeyed):
                self.sas[ev.new.local_spi] = ev.new
                # the children moved to the new IKE SA, and so do their byte lifetimes
                for spi_in, (owner, tx_start) in list(self._byte_limits.items()):
                    if owner is ev.old:
                        self._byte_limits[spi_in] = (ev.new, tx_start)
                self._schedule(ev.new)
                log.info("peer %s: IKE SA rekeyed", ev.new.name)
                self._log_ike_keys(ev.new)
        if sa.state is not State.INIT_DONE:
            key = self._half_open_keys.pop(sa, None)
            if key is not None:
                self._half_open_sas.pop(key, None)
        if sa.state is State.DEAD:
            self.sas.pop(sa.local_spi, None)
            self._when.pop(sa, None)
        else:
            self._schedule(sa)

    def _schedule(self, sa: IkeSa) -> None:
        """Make sure the heap holds an entry no later than the SA's next deadline."""
        d = sa.get_timer()
        if d is None:
            self._when.pop(sa, None)
            return
        cur = self._when.get(sa)
        if cur is None or d < cur:
            self._when[sa] = d
            heapq.heappush(self._heap, (d, next(self._tick), sa))

    def _tunnel_peer(self, ike: IkeSa):  # type: ignore[no-untyped-def]
        return self.tunnel.peers.get(ike.name)

    def _ike_up(self, ev: IkeUp, now: float) -> None:
        ike = ev.ike
        self._cap_identity(ike, now)
        if ike.initial_contact:
            # section 2.4: the peer rebooted; every older SA with it is gone on its side
            for other in list(self.sas.values()):
                if other is not ike and other.name == ike.name:
                    other.forget()
                    self._process(other, now)
        peer = self._tunnel_peer(ike)
        self._failures.pop(ike.name, None)
        log.info("peer %s: IKE SA established with %s (%s); NAT: %s", ike.name,
                 format_addr(ev.remote),
                 ike.proposal.name if ike.proposal else "?",
                 "this side" if ev.local_behind_nat else
                 "peer side" if ev.remote_behind_nat else "none")
        self._log_ike_keys(ike)
        if peer is not None:
            # ESP goes where IKE goes on 4500 (RFC 3948); keepalives only if we are behind NAT
            # (ike.remote: where the authenticated IKE_AUTH exchange came from or went)
            addr = ike.remote if ike.natt else (ike.remote[0], NAT_T_PORT)
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
        self.tunnel.set_outbound(peer, outbound)
        if cfg and cfg.rekey_bytes:
            self._byte_limits[ev.spi_in] = (ev.ike, peer.tx_bytes)
            if self._next_lifetime_check is None:
                self._next_lifetime_check = now + LIFETIME_CHECK
        if ev.replaces is not None:
            self._grace.append((now + CHILD_GRACE, ev.replaces))
        if self.keylog is not None:
            v6 = ":" in ev.ike.remote[0]
            self.keylog.esp_sa(ev.spi_in, ev.suite, ev.keymat_in, ipv6=v6)
            self.keylog.esp_sa(ev.spi_out, ev.suite, ev.keymat_out, ipv6=v6)
        log.info("peer %s: child SA up, SPIs in %#010x out %#010x, %s%s%s", ev.ike.name,
                 ev.spi_in, ev.spi_out, ev.suite.name, " ESN" if ev.esn else "",
                 " (rekey)" if ev.replaces is not None else "")

    @functools.cached_property
    def _outbound_sas(self) -> dict[tuple[str, int], tuple[Peer, OutboundSA]]:
        """The outbound SA of every child SA that is up, by (peer, SPI), oldest first (the
        peer chose the SPI: two peers may choose the same)."""
        return {}

    def _child_down(self, ev: ChildDown, now: float) -> None:
        # keep the inbound SA a moment for packets in flight; stop sending on the outbound
        # SA unless a rekey already replaced it (ChildUp of the new one comes first). If
        # it was in use, the newest child SA still up with that peer takes over: after a
        # rekey collision (section 2.8.1) the redundant SA, installed last, is deleted
        # while the surviving one, installed before it, stays.
        self._grace.append((now + CHILD_GRACE, ev.spi_in))
        self._outbound_sas.pop((ev.ike.name, ev.spi_out), None)
        peer = self._tunnel_peer(ev.ike)
        if peer is not None and peer.outbound is not None and peer.outbound.spi == ev.spi_out:
            survivor = next((sa for p, sa in reversed(self._outbound_sas.values())
                             if p is peer), None)
            if survivor is not None:
                self.tunnel.set_outbound(peer, survivor)
            else:
                peer.outbound = None
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
        log.warning("peer %s: IKE SA down: %s", ev.ike.name, ev.reason)
        peer = self.peers.get(ev.ike.name)
        if peer is not None and peer.initiate and ev.ike.initiator:
            n = self._failures.get(peer.config.name, 0)
            self._failures[peer.config.name] = n + 1
            delay = min(REINITIATE_DELAY * 2 ** n, REINITIATE_MAX)
            self._reinitiate[peer.config.name] = now + delay
            log.info("peer %s: initiating again in %.0f s", peer.config.name, delay)

    def _cap_identity(self, ike: IkeSa, now: float) -> None:
        """At most ``ike_sas_per_identity`` established IKE SAs per peer: beyond it the
        oldest are deleted, so that a peer (or a stolen key) cannot pile them up."""
        same = [sa for sa in self.sas.values()
                if sa is not ike and sa.name == ike.name and sa.state is State.ESTABLISHED
                and not sa.rekeyed]
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
    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and self._when.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale: superseded by an earlier entry, or the SA is gone
        times = [heap[0][0]] if heap else []
        times += [t for t, _ in self._grace]
        times += list(self._reinitiate.values())
        if self._next_lifetime_check is not None:
            times.append(self._next_lifetime_check)
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        """Everything due by ``now``. Never raises (see ``receive``)."""
        try:
            self._on_timer(now)
        except Exception as e:  # the last line of defence
            self._internal_error("a timer", e, now)
            # an SA taken off the timer heap when it failed is put back, a second later
            # (not at once: that would spin on an SA that fails each time)
            for sa in list(self.sas.values()):
                if sa not in self._when and sa.get_timer() is not None:
                    self._when[sa] = now + 1.0
                    heapq.heappush(self._heap, (now + 1.0, next(self._tick), sa))

    def _on_timer(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, _, sa = heapq.heappop(heap)
            if self._when.get(sa) != d:
                continue
            del self._when[sa]
            real = sa.get_timer()
            if real is not None and real <= now:
                sa.handle_timer(now)
                self._process(sa, now)
            else:
                self._schedule(sa)
        due = [spi for t, spi in self._grace if t <= now]
        self._grace = [(t, s) for t, s in self._grace if t > now]
        for spi in due:
            with contextlib.suppress(KeyError):  # already gone with its peer
                self.tunnel.remove_inbound(spi)
        if self._next_lifetime_check is not None and now >= self._next_lifetime_check:
            self._check_byte_lifetimes(now)
        for name, t in list(self._reinitiate.items()):
            if t <= now:
                del self._reinitiate[name]
                if not any(sa.name == name and sa.state is not State.DEAD
                           for sa in self.sas.values()):
                    self.initiate(name, now)

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
                del self._byte_limits[spi_in]
                self._process(ike, now)
        self._next_lifetime_check = now + LIFETIME_CHECK if self._byte_limits else None

    def stats(self) -> dict[str, object]:
        return {
            "ike_sas": [
                {"peer": sa.name, "state": sa.state.value, "initiator": sa.initiator,
                 "remote": format_addr(sa.remote), "natt": sa.natt,
                 "local_behind_nat": sa.local_behind_nat,
                 "remote_behind_nat": sa.remote_behind_nat,
                 "children": [f"{c.spi_in:#010x}/{c.spi_out:#010x}" for c in sa.children]}
                for sa in self.sas.values()
            ],
            **self.counters,
        }
