"""The asyncio endpoint: moves bytes between UDP sockets, the inner interface and a Tunnel.

- One non-blocking UDP socket per local address. The data plane reads with ``add_reader`` and
  drains until EAGAIN with a budget per callback: never one packet per callback.
- The per-packet paths have a file each, readable top to bottom: ``nattunnel.io.receive``
  (recvmsg with GRO -> Tunnel -> inner interface) and ``nattunnel.io.send`` (inner interface
  -> route -> encrypt in place -> GSO batch -> sendmsg); the socket filter under floods and
  the kernel's drop counts are ``nattunnel.io.sockfilter``; opening the sockets
  ``nattunnel.io.udp``.
- The inner interface is a TUN device (``nattunnel.io.tun``) or the in-process interface
  (``nattunnel.io.interface``).
- IKE: one port-500 socket per listen address, and IKE behind the non-ESP marker on the
  NAT-T sockets, fed to a ``Control`` (``nattunnel.app.Controller``) whose messages are sent
  from the right socket; our address towards a peer, for NAT detection. That part of the
  endpoint is ``nattunnel.io.ikeside`` (``EndpointIke``, its base class).
- STUN (RFC 8489): the endpoint's ``StunClient`` (``nattunnel.traversal.stun``) sends its
  Binding requests from the NAT-T socket of the server's family, so that the reflexive address
  is the one peers see, and gets the answers the tunnel demultiplexed on those sockets
  (``stun_bind``, ``start_binding``; docs/wire-format.md, "STUN on port 4500").
- TURN (RFC 8656): ``start_relay`` makes an allocation from the NAT-T socket of the server's
  family (``nattunnel.traversal.turn``); ``relay_peer`` sends a peer's traffic through it
  (the peer's socket becomes a ``RelaySocket``, io/relay.py), and the tunnel hands what the
  server sends to the client, which unwraps the peer data in it (docs/traversal.md).
- One timer per endpoint, armed for the earliest ``get_timer()`` of its cores.
- Nothing here decides anything about packets: that is ``nattunnel.tunnel.core.Tunnel``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence

from ..addr import Addr, HostPort, Network, format_addr, sockaddr
from ..constants import SPI_STUN_SAFE_MIN, STUN_RC, STUN_RM, STUN_RTO
from ..esp.drop import DropCounters, DropReason
from ..traversal.stun import Binding, StunClient, TransactionFailed, TransactionTimedOut
from ..traversal.stun import Event as StunEvent
from ..traversal.turn import CHANNEL_LIFETIME as TURN_CHANNEL_LIFETIME
from ..traversal.turn import DEFAULT_LIFETIME as TURN_LIFETIME
from ..traversal.turn import PERMISSION_LIFETIME as TURN_PERMISSION_LIFETIME
from ..traversal.turn import Event as TurnEvent
from ..traversal.turn import TurnClient
from ..tunnel.core import PeerMoved, Tunnel
from ..tunnel.peer import Peer
from .coalesce import Coalescer
from .ikeside import ERROR_LOG_INTERVAL, SOURCE_CACHE_SIZE, SOURCE_CACHE_TTL, Control, EndpointIke
from .ikeside import unspecified6 as _unspecified6
from .interface import InnerInterface, InProcessInterface
from .receive import Receiver
from .relay import RelaySocket
from .send import NO_SOCKET, ReadInto, Sender, error_name
from .sockfilter import SocketFilter
from .udp import family as _family
from .udp import mapped, open_natt_socket, unmapped

log = logging.getLogger("nattunnel")

#: datagrams or inner packets handled per reader callback before yielding to the loop
DRAIN_BUDGET = 256


def _dual_stack(listen: Sequence[tuple[str, int]]) -> bool:
    """``[::]`` is dual-stack when no IPv4 address is listed beside it (an IPv4 socket on
    the same port would clash with it; with one listed, IPv4 goes there)."""
    return (any(_unspecified6(h) for h, _ in listen)
            and not any(":" not in h for h, _ in listen))



class Endpoint(EndpointIke):
    """An asyncio tunnel endpoint around one ``Tunnel`` core."""

    #: the TURN relay (``start_relay``): its client, the socket relayed peers send from,
    #: the peers sent through it (name -> where), and who gets the client's events
    turn: TurnClient | None
    _relay_sock: RelaySocket | None
    relayed: dict[str, Addr]
    on_turn_event: Callable[[TurnEvent], None] | None

    def __init__(
        self,
        tunnel: Tunnel,
        interface: InnerInterface,
        listen: Sequence[tuple[str, int]],
        *,
        budget: int = DRAIN_BUDGET,
        offload: bool = True,
        kernel_filter: bool = True,
        control: Control | None = None,
    ) -> None:
        """``offload``: use UDP GRO on receive and GSO on send where the kernel has them.
        ``kernel_filter``: under a flood of datagrams with unknown SPIs, drop them in the
        kernel with a socket filter (``nattunnel.io.sockfilter``) until it stops.
        ``control``: IKE and the policy between the tunnel and IKE (``Control``)."""
        self.tunnel = tunnel
        self.interface = interface
        self.listen = list(listen)
        #: endpoint-level drops (socket errors, full buffers); the core counts the rest
        self.drops = DropCounters()
        self.socks: list[socket.socket] = []
        self._by_family: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.offload = offload
        self._closed = asyncio.Event()
        #: exceptions raised by the cores (tunnel, IKE manager) inside a callback, by where;
        #: the callback carries on (``_core_error``)
        self.errors: dict[str, int] = {}
        self.kernel_filter = kernel_filter
        #: the socket filter and the kernel's drop counts (io/sockfilter.py)
        self.sock_filter = SocketFilter(tunnel, self.drops, self._udp_sockets,
                                        self._core_error, enabled=kernel_filter)
        #: the receive path (io/receive.py) and the send path (io/send.py)
        self.receiver = Receiver(tunnel, interface, self.drops, budget=budget,
                                 rxq_ovfl=self.sock_filter.rxq_ovfl,
                                 after=self._after_receive, core_error=self._core_error)
        #: failed sends by errno name (``ENETUNREACH``, ``EPERM``, ...; ``NO_SOCKET``: no
        #: socket of the address's family), data path, keepalives and IKE together; each is
        #: also a SEND_FAILED drop. Whatever failed is retried on its normal schedule.
        self.send_errors: dict[str, int] = {}
        self.sender = Sender(tunnel, self.drops, budget=budget, on_events=self._after_send,
                             send_errors=self.send_errors)
        self._error_log_at = 0.0
        self._errors_unlogged = 0
        self._init_ike(control)  # the IKE side's state (io/ikeside.py)
        self._bound: dict[socket.socket, Addr] = {}
        #: ``[::]`` listed and no IPv4 listen address: the ``[::]`` sockets are dual-stack
        #: (IPV6_V6ONLY=0) and carry IPv4 peers too, which the kernel writes ::ffff:a.b.c.d:
        #: the tunnel keeps them that way (``Tunnel.map_address``), the IKE side unmapped
        self.dual_stack = _dual_stack(self.listen)
        #: STUN Binding transactions from the NAT-T sockets; the tunnel gives it what it
        #: demultiplexed as STUN on them. ``on_stun_event`` gets each of its events (a
        #: ``stun_bind`` waiting for one has it first).
        self.stun = StunClient()
        tunnel.stun_handler = self._on_stun
        self.on_stun_event: Callable[[StunEvent], None] | None = None
        self._stun_waiters: dict[bytes, asyncio.Future[StunEvent]] = {}
        self._stun_seen = False
        self.turn = self._relay_sock = self.on_turn_event = None
        self.relayed = {}
        self.unrelayed: dict[str, Addr] = {}  # moved off the relay by the peer (MOBIKE)
        #: timer wakeups, the CPU time (process time) spent in them, and the part of it
        #: spent in the control side's ``handle_timer``
        self.timer_wakeups = 0
        self.timer_cpu = 0.0
        self.control_timer_cpu = 0.0

    # --- the data path's state, as attributes of the endpoint ---------------------------------
    @property
    def budget(self) -> int:
        """Datagrams or inner packets handled per reader callback."""
        return self.sender.budget

    @budget.setter
    def budget(self, value: int) -> None:
        self.sender.budget = self.receiver.budget = value

    @property
    def gso(self) -> bool:
        """UDP GSO in use (switched off at run time if the kernel refuses it)."""
        return self.sender.gso

    @property
    def gso_sends(self) -> int:
        return self.sender.gso_sends

    @property
    def gro_batches(self) -> int:
        """GRO reads that held more than one datagram."""
        return self.receiver.gro_batches

    @property
    def filter_on(self) -> bool:
        """The socket filter is attached."""
        return self.sock_filter.on

    @property
    def filter_engaged(self) -> int:
        """How often the socket filter went on."""
        return self.sock_filter.engaged

    def drain_inner(self, read_into: ReadInto) -> None:
        """The send path for inner packets read with ``read_into`` (``Sender.drain_inner``).
        An exception (a bug in a core) is counted and logged, and the reader goes on."""
        try:
            self.sender.drain_inner(read_into)
        except Exception:
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self._core_error("send")

    def send_inner(self, packet: bytes | bytearray | memoryview, now: float | None = None) -> int:
        """Encapsulate one inner packet and send it; the ESP length, or ``-DropReason``
        (``Sender.send_inner``)."""
        return self.sender.send_inner(packet, now)

    def send_datagram(self, peer: Peer, data: bytes | memoryview) -> None:
        self.sender.send_datagram(peer, data)

    def kernel_drops(self) -> dict[str, int]:
        """Datagrams the kernel dropped on each UDP socket (``SocketFilter.kernel_drops``)."""
        return self.sock_filter.kernel_drops()

    def _udp_sockets(self) -> tuple[list[socket.socket], list[socket.socket]]:
        """The NAT-T sockets and the other (port-500) UDP sockets, for the socket filter."""
        return self.socks, self._ike_socks

    def _after_receive(self, sock: socket.socket) -> None:
        """After each batch a NAT-T reader handled: the core's events, and the timer."""
        if self.tunnel.events or self._ike_seen or self._stun_seen:
            self._ike_seen = self._stun_seen = False
            self._handle_events(sock)

    def _after_send(self) -> None:
        self._handle_events(None)

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.receiver.clock = self.sender.clock = loop.time
        for host, port in self.listen:
            try:
                ns = open_natt_socket(host, port, offload=self.offload,
                                      dual_stack=self.dual_stack and _unspecified6(host))
            except OSError:
                self._close_sockets()
                raise
            sock = ns.sock
            self.socks.append(sock)
            self._bound[sock] = sock.getsockname()
            self._by_family.setdefault(sock.family, sock)
            if self.dual_stack and _unspecified6(host):
                self._by_family.setdefault(socket.AF_INET, sock)
            if self.offload:
                self.sender.gso = ns.gso
            receiver = self.receiver
            loop.add_reader(sock.fileno(), receiver.on_udp_gro if ns.gro else receiver.on_udp,
                            sock)
        if self.dual_stack:
            self.tunnel.map_address = mapped
            self.tunnel.remap_addresses()
        for peer in self.tunnel.peers.values():
            if peer.addr is not None:
                peer.sock = self._by_family.get(_family(peer.addr))
        self.interface.attach(self)
        if self.ike_port is not None:
            self._start_ike(loop, self.ike_port)
        self.sock_filter.start(loop.time())
        self._handle_events(None)  # what the cores have already, and the timer

    def add_peer(self, name: str, allowed: Iterable[Network], *, addr: Addr | None = None,
                 keepalive: bool = False, keepalive_interval: float = 20.0,
                 now: float | None = None) -> Peer:
        """``Tunnel.add_peer`` on an endpoint that may already run: the peer gets the socket
        of its address family, and its keepalive timer is armed."""
        if now is None:
            now = self._loop.time() if self._loop is not None else 0.0
        peer = self.tunnel.add_peer(name, allowed, addr=addr, keepalive=keepalive,
                                    keepalive_interval=keepalive_interval, now=now)
        if peer.addr is not None and self._loop is not None:
            peer.sock = self._by_family.get(_family(peer.addr))
        self._arm_timer()
        return peer

    def rearm_timer(self) -> None:
        """After a core was changed from outside the endpoint's callbacks (an IKE peer
        added, say): send what it has to send, and arm the timer for its next deadline."""
        self._handle_events(None)

    # --- STUN -------------------------------------------------------------------------------
    def start_binding(self, server: Addr | HostPort, *, change_ip: bool = False,
                      change_port: bool = False, expect_from: Addr | HostPort | None = None,
                      rto: float = STUN_RTO, rc: int = STUN_RC, rm: float = STUN_RM) -> bytes:
        """Start a STUN Binding transaction with ``server`` (``StunClient.start_binding``),
        sent from the NAT-T socket of the server's family; its end comes as an event
        (``on_stun_event``). The transaction ID. Raises ValueError when
        STUN cannot be demultiplexed here (an inbound SPI below 0x40000000), when there is no
        NAT-T socket of that family, and ``StunLimit`` when too many are outstanding."""
        if self._loop is None or self._closed.is_set():
            raise RuntimeError("the endpoint is not running")
        unsafe = self.tunnel.stun_unsafe_spis()
        if unsafe:
            raise ValueError(
                f"STUN is off on this endpoint: inbound SPI {unsafe[0]:#010x} is below "
                f"{SPI_STUN_SAFE_MIN:#010x}, so a STUN answer could be taken for ESP (give "
                "manual peers an spi_in of 0x40000000 or more; docs/wire-format.md)")
        if self.tunnel.stun_handler != self._on_stun:
            raise ValueError("the tunnel's STUN handler is not this endpoint's")
        dest = sockaddr(server[0], server[1]) if len(server) == 2 else server
        if self._by_family.get(_family(dest)) is None:
            raise ValueError(f"no NAT-T socket of the address family of {format_addr(dest)}")
        tid = self.stun.start_binding(dest, self._loop.time(), change_ip=change_ip,
                                      change_port=change_port, expect_from=expect_from,
                                      rto=rto, rc=rc, rm=rm)
        self._handle_events(None)  # send it, and arm the timer
        return tid

    async def stun_bind(self, server: Addr | HostPort, *, change_ip: bool = False,
                        change_port: bool = False, expect_from: Addr | HostPort | None = None,
                        rto: float = STUN_RTO, rc: int = STUN_RC,
                        rm: float = STUN_RM) -> StunEvent:
        """A STUN Binding with ``server`` from the NAT-T socket (``start_binding``), awaited:
        its ``Binding`` (the reflexive address: ``.mapped``), ``TransactionFailed`` or
        ``TransactionTimedOut``. Cancelled, it ends the transaction."""
        tid = self.start_binding(server, change_ip=change_ip, change_port=change_port,
                                 expect_from=expect_from, rto=rto, rc=rc, rm=rm)
        assert self._loop is not None
        fut: asyncio.Future[StunEvent] = self._loop.create_future()
        self._stun_waiters[tid] = fut
        try:
            return await fut
        finally:
            self._stun_waiters.pop(tid, None)
            self.stun.cancel(tid)  # if it is still outstanding (we were cancelled)

    def _on_stun(self, data: memoryview, addr: Addr, now: float) -> bool:
        """A STUN message on a NAT-T socket (from the tunnel's demux): to the STUN client.
        True if it answered one of its transactions."""
        try:
            if not self.stun.receive(data, unmapped(addr) if self.dual_stack else addr, now):
                return False
        except Exception:
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self._core_error("stun_receive")
        # the reader that demultiplexed it sends what came of it after its whole batch
        self._stun_seen = True
        return True

    def _flush_stun(self) -> None:
        """Send what the STUN client has to send, and hand on its events."""
        try:
            outgoing = self.stun.datagrams_to_send()
        except Exception:
            self._core_error("stun_send")
            return
        for server, data in outgoing:
            self._stun_send(server, data)
        while (ev := self.stun.next_event()) is not None:
            if isinstance(ev, Binding | TransactionFailed | TransactionTimedOut):
                fut = self._stun_waiters.get(ev.transaction_id)
                if fut is not None and not fut.done():
                    fut.set_result(ev)
            if self.on_stun_event is not None:
                try:
                    self.on_stun_event(ev)
                except Exception:
                    self._core_error("stun_event")

    def _stun_send(self, server: Addr, data: bytes) -> None:
        """One STUN request from the NAT-T socket of the server's family (a failure is
        counted and logged like an IKE send's; the transaction retransmits on schedule)."""
        sock = self._by_family.get(_family(server))
        if sock is None:
            self._send_failed(NO_SOCKET, server, "no NAT-T socket of its address family")
            return
        to = mapped(server) if sock.family == socket.AF_INET6 else server
        try:
            sock.sendto(data, to)
        except OSError as e:
            self._send_failed(error_name(e), server, e.strerror or str(e))

    # --- TURN -------------------------------------------------------------------------------
    def start_relay(self, server: Addr | HostPort, username: str, password: str, *,
                    lifetime: float = TURN_LIFETIME,
                    permission_lifetime: float = TURN_PERMISSION_LIFETIME,
                    channel_lifetime: float = TURN_CHANNEL_LIFETIME, rto: float = STUN_RTO,
                    rc: int = STUN_RC, rm: float = STUN_RM) -> TurnClient:
        """Allocate a relay on the TURN server ``server`` (an IP address and port) from the
        NAT-T socket of its family, with long-term credentials; the lifetimes and the
        retransmission timings are ``TurnClient``'s. Its events go to
        ``on_turn_event``; peers given to ``relay_peer`` (before or after) are reached
        through it once their channels are bound."""
        if self._loop is None or self._closed.is_set():
            raise RuntimeError("the endpoint is not running")
        if self.turn is not None:
            raise ValueError("a TURN relay is already in use")
        dest = sockaddr(server[0], server[1]) if len(server) == 2 else server
        base = self._by_family.get(_family(dest))
        if base is None:
            raise ValueError(f"no NAT-T socket of the address family of {format_addr(dest)}")
        turn = TurnClient(dest, username, password, lifetime=lifetime,
                          permission_lifetime=permission_lifetime,
                          channel_lifetime=channel_lifetime, rto=rto, rc=rc, rm=rm)
        self.turn = turn
        self._relay_sock = RelaySocket(base, turn)
        self.tunnel.relay_servers.add(mapped(dest) if self.dual_stack else dest)
        self.tunnel.relay_handler = self._on_relay
        now = self._loop.time()
        turn.allocate(now)
        for name in self.relayed:
            self._relay_one(name, now)
        self._handle_events(None)
        return turn

    def relay_peer(self, name: str, on: bool = True, *, addr: Addr | None = None) -> None:
        """Send peer ``name``'s traffic (ESP, IKE, keepalives) through the TURN relay to
        ``addr`` (its configured endpoint; default: its address now), or directly again."""
        peer = self.tunnel.peers[name]
        if addr is not None and on:
            self.tunnel.set_peer_address(peer, addr)
        now = self._loop.time() if self._loop is not None else 0.0
        if not on:
            addr = self.relayed.pop(name, None)
            if addr is not None and self.turn is not None:
                self.turn.remove_peer(addr)
            peer.sock = self._by_family.get(_family(peer.addr)) if peer.addr else None
            return
        self.relayed[name] = peer.addr if peer.addr is not None else ("", 0)
        if self.turn is not None:
            self._relay_one(name, now)
            self._handle_events(None)

    def _relay_one(self, name: str, now: float) -> None:
        peer = self.tunnel.peers.get(name)
        if peer is None or peer.addr is None or self.turn is None:
            return
        self.relayed[name] = peer.addr
        self.turn.add_peer(unmapped(peer.addr) if self.dual_stack else peer.addr, now)
        peer.sock = self._relay_sock

    def _is_relayed(self, remote: Addr) -> bool:
        """``remote`` is where a relayed peer is (an IKE message to it goes via the relay)."""
        host = remote[0].removeprefix("::ffff:")
        return any(a[1] == remote[1] and a[0].removeprefix("::ffff:") == host
                   for a in self.relayed.values())

    def relay_path(self, name: str) -> dict[str, object]:
        """How peer ``name`` is reached: direct, or through the relay (its relayed address,
        the peer's channel, whether it is bound)."""
        turn = self.turn
        if name not in self.relayed or turn is None:
            return {"kind": "direct"}
        st = turn.peer(self.relayed[name])
        return {"kind": "relay", "server": format_addr(turn.server),
                "relayed": format_addr(turn.relayed) if turn.relayed else None,
                "state": turn.state,
                "channel": f"{st.channel:#06x}" if st is not None else None,
                "channel_bound": bool(st is not None and st.header),
                "permission": bool(st is not None and st.permission_until)}

    def _on_relay(self, data: memoryview, addr: Addr,
                  now: float) -> tuple[Addr, int, int] | None:
        """A datagram from the TURN server (the tunnel's demux): the client's."""
        turn = self.turn
        if turn is None:
            return None
        try:
            found = turn.receive(data, unmapped(addr) if self.dual_stack else addr, now)
        except Exception:
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self._core_error("turn_receive")
            return None
        if found is None:
            self._stun_seen = True  # answers: what came of them is sent after the batch
        return found

    def _flush_turn(self) -> None:
        turn = self.turn
        if turn is None:
            return
        try:
            outgoing = turn.datagrams_to_send()
        except Exception:
            self._core_error("turn_send")
            return
        for server, data in outgoing:
            self._stun_send(server, data)
        while (ev := turn.next_event()) is not None:
            if self.on_turn_event is not None:
                try:
                    self.on_turn_event(ev)
                except Exception:
                    self._core_error("turn_event")

    def _core_error(self, where: str) -> None:
        """Call from an ``except`` block: an exception from a core in a callback is counted
        by where, and logged with its traceback at most once per ERROR_LOG_INTERVAL (with
        how many were not logged since), so that a packet that trips a bug neither stops
        the endpoint nor floods the log."""
        self.errors[where] = self.errors.get(where, 0) + 1
        now = time.monotonic()
        if now < self._error_log_at:
            self._errors_unlogged += 1
            return
        self._error_log_at = now + ERROR_LOG_INTERVAL
        skipped, self._errors_unlogged = self._errors_unlogged, 0
        log.error("internal error in %s (counted; %d more since the last one logged)", where,
                  skipped, exc_info=True)

    def local_addresses(self) -> list[Addr]:
        return [s.getsockname() for s in self.socks]

    def _close_sockets(self) -> None:
        for sock in self.socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.socks.clear()
        self._by_family.clear()

    def close(self) -> None:
        """Stop reading, close sockets and the inner interface. Idempotent."""
        self._closed.set()
        self._close_ike()
        self._bound.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._stun_waiters.values():
            fut.cancel()
        if self.turn is not None and self._loop is not None and self.socks:
            # free the allocation (LIFETIME 0), or the server refuses this 5-tuple's next
            # Allocate (437) until the old one expires; sent once, not waited for
            self.turn.release(self._loop.time())
            self._flush_turn()
        if self._relay_sock is not None:
            self._relay_sock.close()
        self.sock_filter.stop()
        self._close_sockets()
        self.interface.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- events and the timer -----------------------------------------------------------------
    def _handle_events(self, sock: socket.socket | None) -> None:
        """The tunnel's events, for the endpoint (which socket a moved peer is reached on)
        and then for the control side; then what the control side has to send; then the
        timer, re-armed."""
        now = self._loop.time() if self._loop is not None else 0.0
        try:
            while (ev := self.tunnel.next_event()) is not None:
                try:
                    if isinstance(ev, PeerMoved):
                        self._peer_moved(ev, sock)
                    if self.control is not None:
                        self.control.handle_tunnel_event(ev, now)
                except Exception:
                    self._core_error("events")
        except Exception:
            self._core_error("events")
        finally:
            self._flush_control(now)
            self._flush_stun()
            self._flush_turn()
            self._arm_timer()

    def _peer_moved(self, ev: PeerMoved, sock: socket.socket | None) -> None:
        """A peer moved: it is reached on the socket its packet came on."""
        peer = self.tunnel.peers.get(ev.peer)
        if peer is None:
            return
        old = self.relayed.get(ev.peer) or self.unrelayed.get(ev.peer)
        if (old is not None and self.turn is not None and self._relay_sock is not None
                and ev.new[0] == old[0]):  # the relay still (or again); else: direct
            self.relayed[ev.peer] = ev.new
            self.turn.add_peer(ev.new, self._loop.time() if self._loop is not None else 0.0)
            peer.sock = self._relay_sock
            return
        if ev.peer in self.relayed and self.turn is not None:
            self.unrelayed[ev.peer] = self.relayed.pop(ev.peer)  # the peer moved it off
        peer.sock = sock if sock is not None else self._by_family.get(_family(ev.new))

    def _arm_timer(self) -> None:
        if self._loop is None or self._closed.is_set():
            return
        try:
            # the earliest deadline of the cores and of the socket filter's checks
            when = self.tunnel.get_timer()
            for other in (self.control.get_timer() if self.control is not None else None,
                          self.sock_filter.get_timer(), self.stun.get_timer(),
                          self.turn.get_timer() if self.turn is not None else None):
                if other is not None and (when is None or other < when):
                    when = other
        except Exception:
            self._core_error("timer")
            when = self._loop.time() + 1.0  # try again soon
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        cpu = time.process_time()
        self._timer = None
        self._timer_at = None
        now = self._loop.time()
        try:
            self.tunnel.handle_timer(now)
            for peer, data in self.tunnel.datagrams_to_send():
                self.send_datagram(peer, data)
        except Exception:
            self._core_error("timer")
        try:
            if self.control is not None:
                t = time.process_time()
                self.control.handle_timer(now)
                self.control_timer_cpu += time.process_time() - t
        except Exception:
            self._core_error("timer")
        try:
            self.stun.handle_timer(now)
            if self.turn is not None:
                self.turn.handle_timer(now)
        except Exception:
            self._core_error("timer")
        try:
            self.sock_filter.handle_timer(now)  # counts and logs its own errors
        finally:
            self._handle_events(None)  # and re-arms the timer, whatever happened above
            self.timer_wakeups += 1
            self.timer_cpu += time.process_time() - cpu

    def stats(self) -> dict[str, object]:
        s = self.tunnel.stats()
        s["kernel_drops"] = self.sock_filter.account()
        s["kernel_filter"] = self.sock_filter.stats()
        s["endpoint_drops"] = self.drops.as_dict()
        s["errors"] = dict(self.errors)
        s["send_errors"] = dict(self.send_errors)
        s["stun_client"] = self.stun.stats()
        s["turn"] = self.turn.stats() if self.turn is not None else None
        if self.control is not None:
            s.update(self.control.stats())
        s["offload"] = {"gso": self.gso, "gso_sends": self.gso_sends,
                        "gro_batches": self.gro_batches}
        # the TUN device's coalescer (io/coalesce.py), where the interface has one
        co = getattr(self.interface, "coalescer", None)
        s["coalescer"] = co.stats() if isinstance(co, Coalescer) else None
        s["listen"] = [format_addr(a) for a in self.local_addresses()]
        return s


__all__ = ["DRAIN_BUDGET", "ERROR_LOG_INTERVAL", "SOURCE_CACHE_SIZE", "SOURCE_CACHE_TTL",
           "Control", "Endpoint", "InProcessInterface", "InnerInterface", "sockaddr"]
