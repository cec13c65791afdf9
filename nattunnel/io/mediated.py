"""IKEv2 mediation on an endpoint (docs/traversal.md, "Mediation"): a ``Control`` around the
application's (``nattunnel.app.Controller``) that also drives the mediation cores of
``nattunnel.ike.meserver``, so that the endpoint feeds and pulls them as it does IKE:

- a mediated peer's ``MediationClient``: the mediation connection to the server, the
  ME_CONNECT exchanges and the connectivity checks. The datagrams it claims (the mediation
  SA's, and every check: unprotected INFORMATIONAL with zero SPIs) never reach the IKE
  manager; when the checks choose a path to a peer, the peer's IKE SA is initiated over it
  (from our NAT-T socket to the peer's candidate, behind the marker), and once it is up the
  checks stop (its IKE_SA_INIT carries the ME_CONNECTID, on which charon as the responder
  stops its own). Our address towards the server is asked for as the manager asks
  (``LocalAddressNeeded``); it is the first host candidate, with the NAT-T port, and the
  socket's other local addresses follow (``host_candidates``).
- a ``MediationServer`` (``mediation_server = true``): IKE_SA_INIT requests with
  ME_MEDIATION, and every message of its SAs, go to it; the rest to the IKE manager.

Sans-I/O like the cores it drives (but for one listing of the namespace's addresses when the
mediation connection starts): the endpoint is its only caller.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from ..addr import Addr, Network, format_addr, sockaddr
from ..constants import ME_TYPE_HOST, ME_TYPE_RELAYED, MeNotify
from ..ike.config import Identity, IkeConfig
from ..ike.events import Outgoing
from ..ike.manager import IkeManager, LocalAddressNeeded
from ..ike.meserver import (
    MediationClient,
    MediationDown,
    MediationServer,
    MediationUp,
    PathFailed,
    PathReady,
    PeerCandidates,
    PeerOffline,
)
from ..ike.message import IkeDecodeError, Notify, decode_message, peek_receiver_spi
from ..tunnel.core import Event as TunnelEvent
from .endpoint import Control
from .netwatch import addresses as namespace_addresses

log = logging.getLogger("nattunnel.mediation")

#: at most this many host candidates (ME_ENDPOINTs of type host): charon offers every
#: address of the host; the check list takes at most 100 pairs in all
MAX_HOSTS = 8

#: an initiator asks the server again after its checks failed or the mediated IKE SA went
#: down: 10 s, doubling up to 120 s, until the peer is up
RETRY_BASE = 10.0
RETRY_MAX = 120.0

#: an initiator with a TURN server waits at most this long for its allocation before its
#: ME_CONNECT (which offers the relayed address as a candidate)
RELAY_WAIT = 3.0


class Inner(Control, Protocol):
    """The application's control side (``nattunnel.app.Controller``): the endpoint's
    ``Control`` with its IKE manager and the peers that are up."""

    ike: IkeManager | None
    up: set[str]


def _has_me_mediation(data: bytes) -> bool:
    """An IKE_SA_INIT request that asks for a mediation connection (ME_MEDIATION)."""
    if MeNotify.ME_MEDIATION.to_bytes(2, "big") not in data[28:]:
        return False  # the quick look: most are not
    try:
        return decode_message(data).notify(MeNotify.ME_MEDIATION) is not None
    except IkeDecodeError:
        return False


def host_candidates(towards_server: str, listen_host: str | None, port: int,
                    addresses: Callable[[], list[str]],
                    inner: Iterable[Network] = ()) -> list[Addr]:
    """Our host candidates, as charon offers them: every local address of the socket
    (``listen_host``; None: only the one towards the server; a wildcard: the namespace's
    addresses of the family of our address towards the server, without loopback and
    link-local: ``netwatch.addresses``), the one towards the server first, at most
    MAX_HOSTS; each with the NAT-T ``port``.
    Addresses in ``inner`` (the mediated peers' local traffic selectors, but for /0) are
    the tunnel's own inner addresses, as charon leaves out its virtual IPs: not offered."""
    ips = [towards_server]
    if listen_host in ("", "0.0.0.0", "::"):
        v6 = ":" in towards_server
        nets = [n for n in inner if n.prefixlen > 0]
        ips += [ip for ip in addresses() if (":" in ip) == v6
                and not any(ipaddress.ip_address(ip) in n for n in nets)]
    return [sockaddr(ip, port) for ip in list(dict.fromkeys(ips))[:MAX_HOSTS]]


class MediatedControl:
    """The application's control side, plus a mediation client and/or server."""

    def __init__(self, inner: Inner, *, client: MediationClient | None = None,
                 server: MediationServer | None = None, initiate: tuple[str, ...] = (),
                 ike_port: int = 500, listen_host: str | None = None,
                 addresses: Callable[[], list[str]] = namespace_addresses) -> None:
        self.inner = inner
        #: the address the endpoint's socket is bound to (None: not known, the address
        #: towards the server is the one host candidate), and how the namespace's
        #: addresses are listed (host candidates: ``host_candidates``)
        self.listen_host = listen_host
        self._addresses = addresses
        self.client = client
        self.server = server
        #: mediated peers we connect to as soon as the mediation connection is up
        self.initiate = initiate
        self.ike_port: int | None = inner.ike_port if inner.ike_port is not None else ike_port
        self._asks: deque[LocalAddressNeeded] = deque()
        self._started = False
        self._outputs: list[Outgoing] = []
        self.paths: dict[str, PathReady] = {}
        self.last_error: dict[str, str] = {}
        #: initiator: when to send ME_CONNECT again for a peer, and the wait after that
        self.retry_at: dict[str, float] = {}
        self._retry_delay: dict[str, float] = {}
        self._was_up: set[str] = set()
        self._now = 0.0  # the last time we were called with (for what next_event sees)
        #: relay first (docs/traversal.md), set by the application when it has a TURN
        #: server: our relayed address (None: not allocated); ``on_relay(name, relayed,
        #: permissions)`` puts a peer on the relay (True: done); ``on_direct(name, path)``
        #: moves its IKE SA to a direct pair with MOBIKE
        self.relay_address: Callable[[], Addr | None] | None = None
        self.on_relay: Callable[[str, Addr, list[Addr]], bool] | None = None
        self.on_direct: Callable[[str, PathReady], bool] | None = None
        #: peers on the relay (their relayed address), and their direct path once found
        self.relayed: dict[str, Addr] = {}
        self._direct_due: dict[str, PathReady] = {}
        self._connect_at: float | None = None  # initiator: the ME_CONNECTs wait for TURN
        if client is not None:
            self._asks.append(LocalAddressNeeded(client.server, False))

    # --- receiving ---
    def receive_datagram(self, data: bytes, remote: Addr, now: float, *, natt: bool,
                         local: Addr) -> None:
        self._now = now
        self._sync_relay(now)
        client, server = self.client, self.server
        if client is not None and self._started and client.receive_datagram(
                data, remote, now, natt=natt, local=local):
            self._client_events(now)
            return
        if server is not None and self._for_server(data):
            server.receive_datagram(data, remote, now, natt=natt, local=local)
            self._outputs += server.datagrams_to_send()
            return
        self.inner.receive_datagram(data, remote, now, natt=natt, local=local)
        self._ike_up(now)

    def _for_server(self, data: bytes) -> bool:
        assert self.server is not None
        found = peek_receiver_spi(data)
        if found is None:
            return False
        spi, opens = found
        if opens:
            return _has_me_mediation(data)
        return spi in self.server.sas

    def handle_tunnel_event(self, event: TunnelEvent, now: float) -> None:
        self.inner.handle_tunnel_event(event, now)

    # --- the client's events ---
    def _client_events(self, now: float) -> None:
        client = self.client
        assert client is not None
        while (ev := client.next_event()) is not None:
            if isinstance(ev, MediationUp):
                if self.relay_address is not None and self.relay_address() is None:
                    self._connect_at = now + RELAY_WAIT
                    continue
                for name in self.initiate:
                    client.connect(name, now)
            elif isinstance(ev, PeerCandidates):
                self._relay_first(ev, now)
            elif isinstance(ev, PathReady) and ev.name in self.relayed:
                self._direct_found(ev, now)
            elif isinstance(ev, PathReady):
                self.paths[ev.name] = ev
                if ev.initiator:
                    self._initiate_over(ev, now)
            elif isinstance(ev, PathFailed | PeerOffline | MediationDown):
                name = getattr(ev, "name", "mediation")
                self.last_error[name] = repr(ev)
                if isinstance(ev, PathFailed) and ev.name not in self.relayed:
                    self._retry_later(ev.name, now)
        self._outputs += client.datagrams_to_send()

    # --- relay first, then direct ---
    def _sync_relay(self, now: float) -> None:
        """Our relayed address (the TURN allocation's) is our relayed candidate; the
        ME_CONNECTs that waited for it go now (or without it after RELAY_WAIT)."""
        client = self.client
        if client is None or self.relay_address is None:
            return
        client.relayed = self.relay_address()
        if self._connect_at is not None and (client.relayed is not None
                                             or now >= self._connect_at):
            self._connect_at = None
            for name in self.initiate:
                client.connect(name, now)

    def _relay_first(self, ev: PeerCandidates, now: float) -> None:
        """The peer's candidates: permissions for them on our relay, and with our
        allocation and the peer's relayed candidate, the peer goes on the relay at once
        (relayed to relayed, as ``relay = "always"``); the initiator brings the mediated
        IKE SA up there while the checks of the direct pairs go on."""
        self.relayed.pop(ev.name, None)
        self._direct_due.pop(ev.name, None)
        ours = self.relay_address() if self.relay_address is not None else None
        theirs = next((c.addr for c in ev.candidates
                       if c.kind == ME_TYPE_RELAYED and c.addr is not None and c.addr[1]), None)
        if self.on_relay is None or ours is None or theirs is None or ev.name in self.inner.up:
            return
        perms = [c.addr for c in ev.candidates if c.addr is not None
                 and c.kind not in (ME_TYPE_HOST, ME_TYPE_RELAYED)]
        if not self.on_relay(ev.name, theirs, perms):
            return
        self.relayed[ev.name] = theirs
        log.info("peer %s: on the relay first (its relayed address %s)", ev.name,
                 format_addr(theirs))
        client = self.client
        if ev.initiator and client is not None:
            cid = next((s.connect_id for s in client.sessions.values()
                        if s.name == ev.name and s.initiator), b"")
            local = sockaddr(client.local[0], client.nat_port)
            self._initiate_over(PathReady(ev.name, local, theirs, cid, True), now)

    def _direct_found(self, ev: PathReady, now: float) -> None:
        """A pair passed its checks with a peer on the relay: an initiator moves the IKE
        SA there (MOBIKE) once it is up; a pair to the peer's relayed address changes
        nothing."""
        self.paths[ev.name] = ev
        if not ev.initiator or ev.remote == self.relayed.get(ev.name):
            return
        if ev.name in self.inner.up and self.on_direct is not None:
            self.on_direct(ev.name, ev)
        else:
            self._direct_due[ev.name] = ev

    def _retry_later(self, name: str, now: float) -> None:
        if name not in self.initiate or name in self.retry_at:
            return
        delay = self._retry_delay.get(name, RETRY_BASE)
        self._retry_delay[name] = min(delay * 2, RETRY_MAX)
        self.retry_at[name] = now + delay
        log.info("peer %s: asking the mediation server again in %.0f s", name, delay)

    def _retry_due(self, now: float) -> None:
        client = self.client
        for name, at in list(self.retry_at.items()):
            if at > now:
                continue
            del self.retry_at[name]
            if name not in self.inner.up and client is not None:
                client.connect(name, now)

    def _initiate_over(self, ev: PathReady, now: float) -> None:
        ike = self.inner.ike
        if ike is None or ev.name not in ike.peers:
            return
        peer = ike.peers[ev.name]
        peer.remote, peer.local = ev.remote, ev.local
        log.info("peer %s: initiating over the mediated path %s -> %s", ev.name,
                 format_addr(ev.local), format_addr(ev.remote))
        # as charon does (ike_init.c): the responder stops its checks on the ME_CONNECTID
        ike.initiate(ev.name, now,
                     notifies=(Notify(MeNotify.ME_CONNECTID, ev.connect_id),))

    def _ike_up(self, now: float) -> None:
        """The checks with a peer whose IKE SA is up stop; an initiator whose peer went
        down asks the server again (later: the manager tries the old path first)."""
        if self.client is None:
            return
        for name in self.inner.up:
            due = self._direct_due.pop(name, None)
            if due is not None and self.on_direct is not None:
                self.on_direct(name, due)
            if name in self.client.peers and name not in self.relayed:
                self.client.ike_arrived(name, now)
                if name not in self._was_up:
                    self._was_up.add(name)
                    self.retry_at.pop(name, None)
                    self._retry_delay.pop(name, None)
        for name in self._was_up - self.inner.up:
            self._was_up.discard(name)
            self._retry_later(name, now)

    # --- the contract ---
    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._outputs = self._outputs, []
        if self.client is not None:
            out += self.client.datagrams_to_send()
        if self.server is not None:
            out += self.server.datagrams_to_send()
        return out + self.inner.datagrams_to_send()

    def next_event(self) -> LocalAddressNeeded | None:
        if self._asks:
            return self._asks.popleft()
        ev = self.inner.next_event()
        if ev is None:  # the manager's PeerUp/PeerDown are in inner.up by now
            self._ike_up(self._now)
        return ev

    def local_address_found(self, remote: Addr, natt: bool, local: Addr, now: float) -> None:
        client = self.client
        if client is not None and not self._started and remote == client.server:
            client.local = sockaddr(local[0], self.ike_port or 500)
            ike = self.inner.ike
            inner = [n for name in client.peers if ike is not None and name in ike.peers
                     for n in ike.peers[name].config.local_ts]
            client.hosts = host_candidates(local[0], self.listen_host, client.nat_port,
                                           self._addresses, inner)
            self._started = True
            log.info("mediation: connecting to %s from %s", format_addr(client.server),
                     format_addr(client.local))
            client.start(now)
            self._client_events(now)
            return
        self.inner.local_address_found(remote, natt, local, now)

    def get_timer(self) -> float | None:
        times = [t for t in (self.inner.get_timer(),
                             self.client.get_timer() if self.client and self._started
                             else None,
                             self.server.get_timer() if self.server else None,
                             min(self.retry_at.values()) if self.retry_at else None,
                             # waiting for the allocation: a look every 0.1 s
                             min(self._connect_at, self._now + 0.1)
                             if self._connect_at is not None else None)
                 if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.inner.handle_timer(now)
        self._ike_up(now)
        if self.client is not None and self._started:
            self._sync_relay(now)
            t = self.client.get_timer()
            if t is not None and t <= now:
                self.client.handle_timer(now)
            self._retry_due(now)
            self._client_events(now)
        if self.server is not None:
            t = self.server.get_timer()
            if t is not None and t <= now:
                self.server.handle_timer(now)
            self._outputs += self.server.datagrams_to_send()

    def stop(self, now: float) -> int:
        """Stopping: a Delete for the mediation SA (the server drops our registration at
        once); how many went (``closing``: until it is answered)."""
        client = self.client
        if client is None or not self._started:
            return 0
        sent = client.stop(now)
        self._client_events(now)
        return int(sent)

    def closing(self) -> bool:
        return self.client is not None and self._started and self.client.closing()

    def stats(self) -> dict[str, object]:
        s = self.inner.stats()
        if self.client is not None:
            s["mediation"] = self.client.describe() | {
                "paths": {n: {"local": format_addr(p.local), "remote": format_addr(p.remote)}
                          for n, p in self.paths.items()},
                "last_error": dict(self.last_error)}
        if self.server is not None:
            s["mediation_server"] = self.server.describe()
        return s


def mediated_control(inner: Inner, *, connection: tuple[IkeConfig, Addr] | None,
                     peers: dict[str, Identity], initiate: tuple[str, ...],
                     server_peers: dict[Identity, IkeConfig] | None, nat_port: int,
                     ike_port: int, listen_host: str) -> MediatedControl:
    """The control side of an endpoint with mediation: ``connection`` (the mediation
    connection's settings and the server's address) for mediated ``peers`` (name -> the
    identity asked for), ``server_peers`` (identity -> settings) for a mediation server."""
    client = None
    if connection is not None:
        cfg, server_addr = connection
        # no rekey of our own (a server's rekey is answered); DPD at most as far apart as
        # the NAT keepalives, to hold the mapping the server and the peers use
        hold = cfg.keepalive_interval
        cfg = dataclasses.replace(cfg, ike_rekey_time=0.0, dpd_interval=min(
            cfg.dpd_interval, hold) if cfg.dpd_interval > 0 else hold)
        client = MediationClient(cfg, server_addr, sockaddr(listen_host, ike_port), peers,
                                 nat_port=nat_port)
    server = None
    if server_peers is not None:
        table = dict(server_peers)
        server = MediationServer(lambda idi, idr: table.get(idi),
                                 sockaddr(listen_host, ike_port))
    return MediatedControl(inner, client=client, server=server, initiate=initiate,
                           ike_port=ike_port, listen_host=listen_host)
