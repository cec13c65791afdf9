"""IKE on the endpoint (``nattunnel.io.endpoint.Endpoint``): the port-500 sockets, IKE behind
the non-ESP marker on the NAT-T sockets, sending the control side's messages from the right
socket, and our address towards a peer for NAT detection.

- One non-blocking port-500 socket per listen address, read like the NAT-T sockets (drained
  with a budget per wakeup); IKE behind the non-ESP marker comes from the tunnel's demux
  (``Tunnel.ike_handler``).
- The endpoint feeds what comes to a ``Control`` (``nattunnel.app.Controller``: the IKE
  manager and the policy between it and the tunnel), drains what it has to send and sends it
  from the right socket (port 4500 with the marker, or port 500; a relayed peer's through the
  TURN relay, never direct), and answers its questions (our address towards a peer: the bound
  address of the socket, or for a wildcard socket the kernel's source address, cached).
- A control-plane datagram that cannot be sent is counted (``send_errors``, SEND_FAILED)
  and logged at most once per ERROR_LOG_INTERVAL; the cores retry on their own schedule.

``EndpointIke`` is a part of ``Endpoint`` (its base class), not a class of its own: it uses
the endpoint's sockets and state, declared below.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from typing import Protocol

from ..addr import Addr, format_addr, sockaddr
from ..constants import IKE_PORT, NAT_T_PORT, NON_ESP_MARKER
from ..esp.drop import DropCounters, DropReason
from ..ike.events import Outgoing
from ..ike.manager import LocalAddressNeeded
from ..tunnel.core import Event as TunnelEvent
from ..tunnel.core import Tunnel
from .relay import RelaySocket
from .send import NO_SOCKET, Sender, error_name
from .udp import MAX_DATAGRAM as _MAX_DATAGRAM
from .udp import SO_RXQ_OVFL, mapped, unmapped
from .udp import family as _family

log = logging.getLogger("nattunnel")

#: the port-500 IKE sockets' receive buffer
_IKE_SOCKBUF = 1 << 20
#: an exception from a core is logged (with its traceback) at most this often, and so is a
#: failed control-plane send (IKE, the route lookup for NAT detection)
ERROR_LOG_INTERVAL = 10.0
#: a socket bound to a wildcard address: the source address the kernel picks towards a
#: remote (for NAT detection) is looked up once per remote and kept this long, for at most
#: this many remotes
SOURCE_CACHE_TTL = 10.0
SOURCE_CACHE_SIZE = 1024


def unspecified6(host: str) -> bool:
    return ":" in host and ipaddress.ip_address(host).is_unspecified


class Control(Protocol):
    """The control side an endpoint drives besides the tunnel: IKE, and what tunnel events
    mean for it (``nattunnel.app.Controller``). A sans-I/O core like the tunnel: fed IKE
    messages, tunnel events and the time, and pulled from."""

    #: the port of plain IKE (500); None: no IKE, and no port-500 sockets
    ike_port: int | None

    def receive_datagram(self, data: bytes, remote: Addr, now: float, *, natt: bool,
                         local: Addr) -> None:
        """An IKE message (marker removed) that came to ``local`` from ``remote``."""

    def handle_tunnel_event(self, event: TunnelEvent, now: float) -> None: ...

    def datagrams_to_send(self) -> list[Outgoing]: ...

    def next_event(self) -> LocalAddressNeeded | None: ...

    def local_address_found(self, remote: Addr, natt: bool, local: Addr,
                            now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def stats(self) -> dict[str, object]: ...


class EndpointIke:
    """The endpoint's IKE side: its port-500 sockets, IKE on the NAT-T sockets, the control
    side's sends and our address towards a peer (a base class of ``Endpoint``)."""

    # --- the endpoint's state this part uses (set in ``Endpoint.__init__`` and ``start``) ---
    tunnel: Tunnel
    listen: list[tuple[str, int]]
    drops: DropCounters
    sender: Sender
    dual_stack: bool
    _loop: asyncio.AbstractEventLoop | None
    #: the NAT-T sockets, the first of each address family
    _by_family: dict[int, socket.socket]
    #: the bound address of each UDP socket (what IKE messages came to)
    _bound: dict[socket.socket, Addr]
    _relay_sock: RelaySocket | None
    relayed: dict[str, Addr]

    def _init_ike(self, control: Control | None) -> None:
        """The IKE side's own state (from ``Endpoint.__init__``)."""
        self._send_warn_at = 0.0
        self._send_warns_unlogged = 0
        self.control = control
        if control is not None and control.ike_port is not None:
            self.tunnel.ike_handler = self._on_ike_natt
        #: port-500 sockets, and the first of each address family (what IKE sends from)
        self._ike_socks: list[socket.socket] = []
        self._ike_by_family: dict[int, socket.socket] = {}
        #: wildcard sockets: (remote IP, natt) -> (the source the kernel picks, until when)
        self._sources: OrderedDict[tuple[str, bool], tuple[str, float]] = OrderedDict()
        #: an IKE message came through a NAT-T reader: it re-arms the timer after its batch
        self._ike_seen = False

    # --- the endpoint's methods this part calls (``Endpoint`` has them) ---
    def _core_error(self, where: str) -> None:
        raise NotImplementedError

    def _handle_events(self, sock: socket.socket | None) -> None:
        raise NotImplementedError

    def _is_relayed(self, remote: Addr) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def ike_port(self) -> int | None:
        """The port of plain IKE, or None without IKE."""
        return self.control.ike_port if self.control is not None else None

    def _start_ike(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        """Port 500: one non-blocking socket per listen address, read like the NAT-T
        sockets (drained with a budget per wakeup, so that a flood of IKE_SA_INIT requests
        costs a system call and a cookie each, not a future)."""
        for host, _ in self.listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            dual = self.dual_stack and unspecified6(host)
            try:
                if fam == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
                sock.setblocking(False)
                sock.bind((host, port))
            except OSError as e:
                sock.close()
                self.close()
                where = format_addr((host, port))
                raise OSError(e.errno, f"cannot listen for IKE on {where}: {e.strerror}") from e
            with contextlib.suppress(OSError):
                # room for a legitimate peer's request behind a flood
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _IKE_SOCKBUF)
                sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._ike_socks.append(sock)
            self._ike_by_family.setdefault(fam, sock)
            if dual:
                self._ike_by_family.setdefault(socket.AF_INET, sock)
            self._bound[sock] = sock.getsockname()
            loop.add_reader(sock.fileno(), self._on_ike_udp, sock)

    def _on_ike_udp(self, sock: socket.socket) -> None:
        """Port 500 readable: IKE messages until EAGAIN or the budget, then one pass over
        the events and one re-arm of the timer."""
        assert self._loop is not None and self.control is not None
        now = self._loop.time()
        receive = self.control.receive_datagram
        # what answers go out of (the first port-500 socket of the family) is what the NAT
        # detection hashes are made with
        local = self._bound[self._ike_by_family.get(sock.family, sock)]
        dual = self.dual_stack
        try:
            for _ in range(self.sender.budget):
                try:
                    data, addr = sock.recvfrom(_MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:  # an ICMP error for an earlier send, say
                    self.drops.counts[DropReason.RECEIVE_ERROR] += 1
                    continue
                try:
                    receive(data, unmapped(addr) if dual else addr, now, natt=False,
                            local=local)
                except Exception:
                    self.drops.counts[DropReason.INTERNAL_ERROR] += 1
                    self._core_error("ike_receive")
        finally:
            self._handle_events(None)

    def ike_addresses(self) -> list[Addr]:
        """The port-500 sockets' local addresses."""
        return [s.getsockname() for s in self._ike_socks]

    def _on_ike_natt(self, data: memoryview, addr: Addr, now: float) -> None:
        """IKE behind the non-ESP marker on a NAT-T socket (from the tunnel's demux)."""
        assert self.control is not None
        sock = self._by_family.get(_family(addr))
        try:
            local = self._bound[sock] if sock is not None else self._wildcard(addr, True)
            remote = unmapped(addr) if self.dual_stack else addr
            self.control.receive_datagram(bytes(data), remote, now, natt=True, local=local)
        except Exception:
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self._core_error("ike_receive")
        # the reader that demultiplexed it re-arms the timer once, after its whole batch
        self._ike_seen = True

    def _flush_control(self, now: float) -> None:
        """Answer what the control side asks (our address towards a peer), then send what
        it has to send."""
        control = self.control
        if control is None:
            return
        try:
            while (ev := control.next_event()) is not None:
                try:
                    local = self.local_address_towards(ev.remote, ev.natt)
                except OSError as e:
                    # no route to it (yet), say: unanswered, and the manager gives the wait
                    # up and initiates again later (IkeManager's LOCAL_ADDRESS_WAIT)
                    self._send_failed(error_name(e), ev.remote, e.strerror or str(e))
                    continue
                control.local_address_found(ev.remote, ev.natt, local, now)
        except Exception:
            self._core_error("ike_local_address")
        try:
            outgoing = control.datagrams_to_send()
        except Exception:
            self._core_error("ike_send")
            return
        for out in outgoing:
            try:
                self._ike_send(out)
            except Exception:  # one message that cannot be sent does not cost the others
                self._core_error("ike_send")

    def _ike_send(self, out: Outgoing) -> None:
        """Send one IKE message from the socket of its port and family. A failure is
        counted (``send_errors``) and logged at most once per ERROR_LOG_INTERVAL; the IKE SA
        retransmits on its own schedule."""
        fam = _family(out.remote)
        sock = (self._by_family if out.natt else self._ike_by_family).get(fam)
        if self.relayed and self._is_relayed(out.remote):
            sock = self._relay_sock  # never direct instead
            if sock is None:
                self._send_failed("ENOTCONN", out.remote, "the TURN relay is not started")
                return
        if sock is None:
            self._send_failed(NO_SOCKET, out.remote, "no socket of its address family")
            return
        to = mapped(out.remote) if sock.family == socket.AF_INET6 else out.remote
        try:
            sock.sendto(NON_ESP_MARKER + out.data if out.natt else out.data, to)
        except OSError as e:
            self._send_failed(error_name(e), out.remote, e.strerror or str(e))

    def _send_failed(self, why: str, remote: Addr, detail: str) -> None:
        """A control-plane datagram to ``remote`` could not be sent (or its route looked
        up): counted as SEND_FAILED and by reason, logged at most once per
        ERROR_LOG_INTERVAL (with how many were not logged since)."""
        self.sender.failed(why)
        now = time.monotonic()
        if now < self._send_warn_at:
            self._send_warns_unlogged += 1
            return
        self._send_warn_at = now + ERROR_LOG_INTERVAL
        skipped, self._send_warns_unlogged = self._send_warns_unlogged, 0
        more = f"; {skipped} more since the last such line" if skipped else ""
        log.warning("cannot send to %s: %s (%s; counted in send_errors, retried on "
                    "schedule%s)", format_addr(remote), detail, why, more)

    def _wildcard(self, remote: Addr, natt: bool) -> Addr:
        """The address of a socket of ``remote``'s family that is not open."""
        wild = "::" if _family(remote) == socket.AF_INET6 else "0.0.0.0"
        return sockaddr(wild, NAT_T_PORT if natt else (self.ike_port or IKE_PORT))

    def local_address_towards(self, remote: Addr, natt: bool) -> Addr:
        """Our address towards ``remote`` (for NAT detection hashes, RFC 7296 section 2.23):
        the address and port of the socket the messages go out of (the NAT-T socket of that
        family for ``natt``, the port-500 IKE socket otherwise). Only when that socket is
        bound to the wildcard address does the kernel's routing say which source it picks
        (looked up once per remote, and kept SOURCE_CACHE_TTL seconds); a socket bound to
        one address (a secondary one, say) always sends from it."""
        fam = _family(remote)
        sock = (self._by_family if natt else self._ike_by_family).get(fam)
        bound = self._bound[sock] if sock is not None else self._wildcard(remote, natt)
        ip, port = bound[0], bound[1]
        if not ipaddress.ip_address(ip.split("%", 1)[0]).is_unspecified:
            return sockaddr(ip, port)
        return sockaddr(self._route_source(fam, remote, natt), port)

    def _route_source(self, fam: int, remote: Addr, natt: bool) -> str:
        """The source address the kernel picks towards ``remote`` (cached)."""
        now = time.monotonic()
        key = (remote[0], natt)
        hit = self._sources.get(key)
        if hit is not None and hit[1] > now:
            self._sources.move_to_end(key)
            return hit[0]
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((remote[0], remote[1]))
            ip: str = s.getsockname()[0]
        self._sources[key] = (ip, now + SOURCE_CACHE_TTL)
        self._sources.move_to_end(key)
        while len(self._sources) > SOURCE_CACHE_SIZE:
            self._sources.popitem(last=False)
        return ip

    def forget_sources(self) -> None:
        """An address or route of this host changed: the kernel's source address towards a
        remote may be another now, so the cached ones (``local_address_towards``) go."""
        self._sources.clear()

    def _close_ike(self) -> None:
        """Stop reading the port-500 sockets and close them (from ``Endpoint.close``)."""
        for sock in self._ike_socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._ike_socks.clear()
        self._ike_by_family.clear()
