"""The application: a configuration built into cores and an endpoint, and run as
``nattunnel up CONFIG`` in the foreground (IKEv2 and manual peers).

Builds the tunnel core and the IKE manager from the configuration, and ``Controller``, the glue
between them: what the tunnel's events mean for IKE (an outbound SA past its sequence-number
soft limit is rekeyed; a peer that moved is only logged, since IKE follows authenticated IKE
messages alone, RFC 7296 section 2.23). The endpoint drives the controller as it drives the
tunnel. ``run`` opens the inner interface (a TUN device, or the in-process interface), listens,
and runs until SIGINT or SIGTERM; then the sockets are closed and the TUN device removed (one that
was there before is left as it was found).
SIGUSR1 writes the counters as JSON to ``--stats FILE`` (and so does a clean exit), for tests
and operators.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .addr import Addr, format_addr, sockaddr
from .config import Config, ConfigError, PeerConfig, config_from_dict, load_config
from .config.compare import comparable
from .constants import IKE_PORT
from .control.protocol import ControlError
from .control.server import ControlServer
from .control.status import snapshot
from .esp.sa import InboundSA, OutboundSA
from .ike.events import Outgoing
from .ike.keylog import KeyLog
from .ike.manager import IkeManager, IkePeer, LocalAddressNeeded, PeerDown, PeerUp
from .ike.meserver import PathReady
from .ike.roadwarrior import RoadWarriorManager
from .io.endpoint import Control, Endpoint, InnerInterface, InProcessInterface
from .io.mediated import MediatedControl, mediated_control
from .io.netwatch import NetWatch, addresses, mobike_local
from .io.relay import PathMover
from .io.vip import VirtualIps
from .traversal.turn import CHANNEL_LIFETIME as TURN_CHANNEL_LIFETIME
from .traversal.turn import PERMISSION_LIFETIME as TURN_PERMISSION_LIFETIME
from .tunnel.core import Event as TunnelEvent
from .tunnel.core import PeerMoved, RekeyNeeded, Tunnel
from .tunnel.peer import Peer

if TYPE_CHECKING:  # prometheus_client is loaded only with a metrics endpoint
    from .control.metrics import MetricsServer

log = logging.getLogger("nattunnel")


class Controller:
    """The tunnel core and the IKE manager (None: manual peers only) as one endpoint's
    control side (``nattunnel.io.endpoint.Control``): IKE messages and timers go to the
    manager, and the tunnel's events are handled here."""

    def __init__(self, tunnel: Tunnel, ike: IkeManager | None = None, *,
                 ike_port: int = IKE_PORT) -> None:
        self.tunnel = tunnel
        self.ike = ike
        #: the port of plain IKE; None without IKE (no port-500 sockets then)
        self.ike_port: int | None = ike_port if ike is not None else None
        #: IKE peers with a child SA to send on
        self.up: set[str] = set()
        #: called with each PeerUp and PeerDown (``Node.wait_up``)
        self.on_peer: Callable[[PeerUp | PeerDown], None] | None = None

    # --- the tunnel's events ------------------------------------------------------------------
    def handle_tunnel_event(self, event: TunnelEvent, now: float) -> None:
        if isinstance(event, PeerMoved):
            # ESP moved the peer (an authenticated packet from a new address); its IKE SA
            # moves only with an authenticated IKE message (section 2.23): nothing for IKE
            if event.old is None:
                log.info("peer %s: first authenticated packet from %s", event.peer,
                         format_addr(event.new))
            else:
                log.info("peer %s moved from %s to %s (NAT rebinding)", event.peer,
                         format_addr(event.old), format_addr(event.new))
        elif isinstance(event, RekeyNeeded):
            if self.ike is not None and self.ike.rekey_outbound(event.spi, now):
                log.info("peer %s: SA %#010x passed its sequence-number soft limit; "
                         "rekeying", event.peer, event.spi)
            else:
                log.warning("peer %s: SA %#010x passed its sequence-number soft limit; "
                            "manual SAs cannot be rekeyed: install new keys", event.peer,
                            event.spi)

    # --- IKE: the manager's core contract -----------------------------------------------------
    def receive_datagram(self, data: bytes, remote: Addr, now: float, *, natt: bool,
                         local: Addr) -> None:
        if self.ike is not None:
            self.ike.receive_datagram(data, remote, now, natt=natt, local=local)

    def datagrams_to_send(self) -> list[Outgoing]:
        return self.ike.datagrams_to_send() if self.ike is not None else []

    def next_event(self) -> LocalAddressNeeded | None:
        """What the endpoint must answer (our address towards a peer). What the manager
        tells about peers (up, down) is taken here: ``up``, and ``on_peer`` if set."""
        if self.ike is None:
            return None
        while (ev := self.ike.next_event()) is not None:
            if isinstance(ev, PeerUp):
                self.up.add(ev.name)
                log.info("peer %s: up", ev.name)
            elif isinstance(ev, PeerDown):
                self.up.discard(ev.name)
                log.info("peer %s: down (%s)", ev.name, ev.reason)
            else:
                return ev
            if self.on_peer is not None:
                self.on_peer(ev)
        return None

    def local_address_found(self, remote: Addr, natt: bool, local: Addr, now: float) -> None:
        if self.ike is not None:
            self.ike.local_address_found(remote, natt, local, now)

    def get_timer(self) -> float | None:
        return self.ike.get_timer() if self.ike is not None else None

    def handle_timer(self, now: float) -> None:
        if self.ike is not None:
            self.ike.handle_timer(now)

    def stats(self) -> dict[str, object]:
        return {"ike": self.ike.stats()} if self.ike is not None else {}


def build_tunnel(config: Config, now: float) -> Tunnel:
    """The tunnel core for a configuration: one peer per [[peer]], manual SAs installed (IKE
    peers get theirs from the IKE manager, ``build_ike``).
    IKE-managed peers start without SAs (``build_ike`` negotiates them)."""
    tunnel = Tunnel()
    for pc in config.peers:
        if pc.mediation:  # a mediation connection: no tunnel peer (io/mediated.py)
            continue
        keepalive = pc.ike is None and pc.keepalive.wanted(pc.behind_nat)
        addr = sockaddr(*pc.endpoint) if pc.endpoint and pc.ike is None else None
        peer = tunnel.add_peer(pc.name, pc.allowed_ips, addr=addr, keepalive=keepalive,
                               keepalive_interval=pc.keepalive_interval, now=now)
        if pc.ike is None:
            _install_manual(tunnel, peer, pc)
    return tunnel


def _install_manual(tunnel: Tunnel, peer: Peer, pc: PeerConfig) -> None:
    """A manual peer's SAs, from its configuration."""
    assert pc.spi_out is not None and pc.spi_in is not None
    assert pc.key_out is not None and pc.key_in is not None
    tunnel.set_outbound(peer, OutboundSA(pc.spi_out, pc.suite, pc.key_out, esn=pc.esn,
                                         tfc_pad=pc.tfc_pad))
    tunnel.install_inbound(peer, InboundSA(pc.spi_in, pc.suite, pc.key_in, esn=pc.esn,
                                           replay_window=pc.replay_window))


def build_ike(config: Config, tunnel: Tunnel, now: float) -> IkeManager | None:
    """The IKE manager for the configuration's IKE peers (bounded by ``config.limits``, the
    ``[limits]`` table), or None if there are none."""
    ike_peers = [pc for pc in config.peers if pc.ike is not None and not pc.mediation]
    if not ike_peers:
        return None
    keylog = KeyLog(config.keylog) if config.keylog is not None else None
    # virtual IPs (docs/road-warrior.md): a client's vips, a gateway's pools
    rw = any(pc.ike.vips or pc.ike.pools for pc in ike_peers if pc.ike is not None)
    manager = (RoadWarriorManager if rw else IkeManager)(tunnel, keylog=keylog,
                                                         limits=config.limits)
    for pc in ike_peers:
        assert pc.ike is not None
        remote = sockaddr(*pc.endpoint) if pc.endpoint else None
        manager.add_peer(IkePeer(pc.ike, initiate=pc.initiate and remote is not None,
                                 remote=remote), now)
    return manager


def build_mediation(config: Config, controller: Controller) -> Control:
    """IKEv2 mediation (docs/traversal.md): the controller, with a mediation client for the
    peers with ``mediated_by`` and a server with ``mediation_server = true``."""
    mediated = [pc for pc in config.peers if pc.mediated_by and pc.ike]
    if not mediated and not config.mediation_server:
        return controller
    conns = {pc.name: pc for pc in config.peers if pc.mediation and pc.ike}
    conn = conns.get(mediated[0].mediated_by or "") if mediated else None
    return mediated_control(
        controller, peers={pc.name: pc.mediation_peer or pc.ike.remote_id
                           for pc in mediated if pc.ike},
        connection=(conn.ike, sockaddr(*conn.endpoint))
        if conn and conn.ike and conn.endpoint else None,
        initiate=tuple(pc.name for pc in mediated if pc.initiate),
        server_peers={pc.ike.remote_id: pc.ike for pc in conns.values()
                      if pc.ike and pc.endpoint is None} if config.mediation_server else None,
        nat_port=config.listen[0][1], ike_port=config.ike_port, listen_host=config.listen[0][0])


def open_interface(config: Config) -> InnerInterface:
    ic = config.interface
    if ic.kind == "inprocess":
        return InProcessInterface()
    from .io.tun import TunDevice, TunInterface

    # a road-warrior client's routes come with its virtual IP (io/vip.py); a gateway's
    # pools are routed to the device
    routes = [net for pc in config.peers if not (pc.ike and pc.ike.vips)
              for net in pc.allowed_ips]
    routes += [net for pool in config.pools for net in pool.networks()]
    # IFF_VNET_HDR: TCP segments coalesced on write (nattunnel.io.coalesce)
    device = TunDevice.create(ic.name, ic.mtu, ic.addresses, routes, vnet_hdr=True)
    return TunInterface(device)


class ListenError(OSError):
    """A socket of the configuration could not be opened: ``str()`` names the field, as
    ``listen[0] = 127.0.0.1:4500: address already in use`` (after the configuration file's
    path), or ``ike_port = 500 (on 0.0.0.0): ...``."""

    def __init__(self, err: int | None, message: str) -> None:
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def of(cls, config: Config, e: OSError) -> OSError:
        """``e`` from ``Endpoint.start`` with the field it came from, found by the address
        its message names (``e`` itself when none matches)."""
        text = str(e)
        reason = os.strerror(e.errno) if e.errno else text
        reason = reason[:1].lower() + reason[1:]
        if e.errno == errno.EADDRINUSE:
            reason += " (by another process: another nattunnel, or an IKE daemon such as " \
                      "strongSwan's charon?)"
        elif e.errno in (errno.EACCES, errno.EPERM):
            reason += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
        fields = [(f"listen[{i}] = {format_addr(hp)}", format_addr(hp))
                  for i, hp in enumerate(config.listen)]
        ike = [(f"ike_port = {config.ike_port} (on {format_addr((host, 0))[:-2]})",
                format_addr((host, config.ike_port))) for host, _ in config.listen]
        # the endpoint says "for IKE" for the ike_port sockets
        order = ike + fields if "for IKE" in text else fields + ike
        for field, where in order:
            if f" {where}:" in text:
                prefix = f"{config.path}: " if config.path is not None else ""
                return cls(e.errno, f"{prefix}{field}: {reason}")
        return e


def write_stats(endpoint: Endpoint, path: Path) -> None:
    """Write the counters to ``path`` (atomically); a failure is logged, never raised (the
    directory may have gone since ``nattunnel up`` checked it at start)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(endpoint.stats(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        log.error("--stats %s: cannot write the counters: %s", path, e.strerror or e)


#: how long a graceful stop waits for the answers to its Deletes
STOP_WAIT = 2.0


#: what ``reload`` cannot change on a running endpoint
RESTART_FIELDS = ("listen", "interface", "ike_port", "limits", "keylog", "control_socket",
                  "metrics")


class Node:
    """One running endpoint of a configuration: the cores, the endpoint and its inner
    interface, the control socket and the metrics endpoint; what ``nattunnel up`` runs and
    what a program embeds (docs/python-api.md)::

        async with Node(config) as node:
            await node.wait_up("b")
            node.send(packet)             # the in-process interface
            reply = await node.recv()
            print(node.show()["peers"]["b"]["rx_bytes"])

    ``start`` opens everything (OSError, as ``ListenError`` naming the field, if a socket
    cannot be opened); ``stop`` is the graceful stop: a Delete for every IKE SA, at most
    STOP_WAIT for their answers, then everything closed. The operator's requests
    (``handle``: show, initiate, terminate, rekey, reload, down) come through the control
    socket or are called directly."""

    def __init__(self, config: Config | None = None, /, *, serve_control: bool = True,
                 serve_metrics: bool = True, base_dir: str | os.PathLike[str] = ".",
                 turn_lifetimes: dict[str, float] | None = None,
                 path_timings: dict[str, float] | None = None, **settings: Any) -> None:
        """From a ``Config`` (``load_config``), or from keyword arguments: the keys of the
        TOML file as Python values (``listen=["127.0.0.1:0"], interface={"kind":
        "inprocess"}, peer=[{...}]``), checked as a file is (ConfigError naming the
        field), with key paths relative to ``base_dir``. ``serve_control``,
        ``serve_metrics``: open the configuration's control socket and metrics endpoint
        (a configuration not from a file has a control socket only if it names one).
        ``turn_lifetimes``: the TURN allocation's ``permission_lifetime`` and
        ``channel_lifetime`` when the server gives shorter ones than RFC 8656's (tests);
        ``path_timings``: ``PathMover``'s keyword timings (io/relay.py; tests)."""
        if config is None:
            config = config_from_dict(settings, base_dir)
        elif settings:
            raise TypeError("give a Config or keyword settings, not both")
        self.config = config
        self._want_control = serve_control and config.control_socket is not None
        self._want_metrics = serve_metrics and config.metrics is not None
        self._turn_lifetimes = dict(turn_lifetimes or {})
        self._path_timings = dict(path_timings or {})
        #: relay first, then direct (io/relay.py): with a turn server and an IKE manager
        self.paths: PathMover | None = None
        self.endpoint: Endpoint | None = None
        self.controller: Controller | None = None
        self.control_server: ControlServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.stopped = asyncio.Event()
        #: set by ``request_stop`` (``nattunnel down``, SIGINT, SIGTERM): ``run`` stops
        self.stop_requested = asyncio.Event()
        self._stopping = False
        self._started_at = 0.0
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: address and route changes, for MOBIKE (RFC 4555): while a peer has MOBIKE on
        self.netwatch: NetWatch | None = None
        #: a road-warrior client's virtual IPs, routes and DNS on the host (io/vip.py)
        self.vips: VirtualIps | None = None

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> Node:
        loop = asyncio.get_running_loop()
        config = self.config
        self._started_at = loop.time()
        tunnel = build_tunnel(config, loop.time())
        controller = Controller(tunnel, build_ike(config, tunnel, loop.time()),
                                ike_port=config.ike_port)
        controller.on_peer = self._peer_event
        interface = open_interface(config)
        endpoint = Endpoint(tunnel, interface, config.listen,
                            control=build_mediation(config, controller))
        try:
            await endpoint.start()
        except OSError as e:
            endpoint.close()
            raise ListenError.of(config, e) from e
        except BaseException:
            endpoint.close()
            raise
        self.endpoint, self.controller = endpoint, controller
        if controller.ike is not None and config.interface.kind == "tun":
            self.vips = VirtualIps(config.interface.name, controller.ike,
                                   {pc.name: pc.ike for pc in config.peers if pc.ike})
        self._start_relay(endpoint)
        self._start_netwatch(loop)
        try:
            await self._start_operator_side()
        except BaseException:
            self._close()
            raise
        return self

    def _start_relay(self, endpoint: Endpoint) -> None:
        """The configuration's TURN server (``turn``): peers with ``relay = "always"`` are
        sent through it to their endpoint (IKE included), and the allocation is made
        (docs/traversal.md). Before the first timer fires: no message to such a peer goes
        direct."""
        config = self.config
        if config.turn is None:
            return
        for pc in config.peers:
            if pc.relay == "always" and pc.endpoint is not None:
                endpoint.relay_peer(pc.name, addr=sockaddr(*pc.endpoint))
        lifetimes, turn = self._turn_lifetimes, config.turn

        def start() -> object:
            return endpoint.start_relay(
                sockaddr(*turn.server), turn.username, turn.password,
                permission_lifetime=lifetimes.get("permission_lifetime",
                                                  TURN_PERMISSION_LIFETIME),
                channel_lifetime=lifetimes.get("channel_lifetime", TURN_CHANNEL_LIFETIME))

        ike = self.controller.ike if self.controller is not None else None
        if ike is not None:  # relay = "auto": allocated when a peer needs it (io/relay.py)
            self.paths = PathMover(endpoint, ike, start, **self._path_timings)
            for pc in config.peers:
                if pc.relay == "auto" and pc.endpoint is not None and pc.initiate:
                    self.paths.watch(pc.name, relayed=False, auto=True,
                                     direct=sockaddr(*pc.endpoint))
            self.paths.start()
        if endpoint.relayed:
            start()
        self._join_mediation(endpoint, start)

    def _join_mediation(self, endpoint: Endpoint, start: Callable[[], object]) -> None:
        """Mediated peers with ``relay = "auto"`` and the TURN server: the allocation at
        once, its relayed address offered in ME_CONNECT, the peer on the relay first and
        moved to a direct pair when one passes its checks (io/mediated.py, io/relay.py)."""
        control, paths = endpoint.control, self.paths
        if not isinstance(control, MediatedControl) or paths is None or not any(
                pc.mediated_by and pc.relay == "auto" for pc in self.config.peers):
            return
        auto = {pc.name for pc in self.config.peers if pc.mediated_by and pc.relay == "auto"}
        if endpoint.turn is None:
            start()
        turn = endpoint.turn
        if turn is None:
            return
        control.relay_address = lambda: (turn.relayed if turn.allocated and turn.relayed
                                         and turn.relayed[1] else None)

        def on_relay(name: str, relayed: Addr, permissions: list[Addr]) -> bool:
            if name not in auto or name not in endpoint.tunnel.peers:
                return False
            now = self._now()
            for addr in permissions:  # the peer's checks to our relayed candidate
                if turn.peer(addr) is None:
                    turn.add_peer(addr, now)
            endpoint.relay_peer(name, addr=relayed)
            paths.watch(name, relayed=True)
            return True

        def on_direct(name: str, ev: PathReady) -> bool:
            return paths.to_direct(name, ev.remote, reason="a direct pair passed its checks",
                                   pair=f"{format_addr(ev.local)} -> {format_addr(ev.remote)}")

        control.on_relay, control.on_direct = on_relay, on_direct

    async def _start_operator_side(self) -> None:
        config = self.config
        if self._want_control and config.control_socket is not None:
            server = ControlServer(config.control_socket, self.handle)
            await self._opened("control_socket", str(config.control_socket), server.start())
            self.control_server = server
        if self._want_metrics and config.metrics is not None:
            from .control.metrics import MetricsServer

            metrics = MetricsServer(config.metrics, self.show)
            await self._opened("metrics", format_addr(config.metrics), metrics.start())
            self.metrics_server = metrics

    async def _opened(self, field: str, value: str, start: Awaitable[None]) -> None:
        """Await ``start``; an OSError names the configuration's field, as ``listen`` does."""
        try:
            await start
        except OSError as e:
            where = self.config.path or "config"
            raise OSError(e.errno, f"{where}: {field} = {value}: {e.strerror or e}") from e

    async def stop(self, wait: float = STOP_WAIT) -> None:
        """The graceful stop: a Delete for every IKE SA (the peers drop theirs at once
        rather than after their liveness checks), at most ``wait`` seconds for the
        answers, then every socket and the inner interface closed. Idempotent."""
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        try:
            ike = self.controller.ike if self.controller is not None else None
            if ike is not None and self.endpoint is not None:
                loop = asyncio.get_running_loop()
                sent = ike.delete_all(loop.time())
                med = self.endpoint.control
                med = med if isinstance(med, MediatedControl) else None
                if med is not None:  # the server drops our registration at once
                    sent += med.stop(loop.time())
                self.endpoint.rearm_timer()  # sends them
                deadline = loop.time() + wait
                while (ike.closing() or (med is not None and med.closing())) \
                        and loop.time() < deadline:
                    await asyncio.sleep(0.02)
                if sent:
                    log.info("stopping: %d IKE SA(s) deleted%s", sent,
                             "" if not ike.closing() else
                             f" (not all answered within {wait:.0f} s)")
        finally:
            self._close()

    def _close(self) -> None:
        if self.paths is not None:
            self.paths.stop()
        if self.netwatch is not None:
            self.netwatch.close()
        for server in (self.control_server, self.metrics_server):
            if server is not None:
                server.close()
        if self.vips is not None:
            self.vips.close()
        if self.endpoint is not None:
            self.endpoint.close()
        for futures in self._waiters.values():
            for f in futures:
                if not f.done():
                    f.set_exception(ConnectionError("the endpoint stopped"))
        self._waiters.clear()
        self.stopped.set()

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what a program uses ------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _parts(self) -> tuple[Endpoint, Controller]:
        if self.endpoint is None or self.controller is None:
            raise RuntimeError("the node is not started")
        return self.endpoint, self.controller

    def show(self, peer: str | None = None) -> dict[str, Any]:
        """The status as data (``nattunnel show --json``; ``nattunnel.control.status``);
        KeyError for an unknown ``peer``."""
        endpoint, controller = self._parts()
        status = snapshot(endpoint, controller.ike, self._now(), started=self._started_at,
                          version=_version(), peer=peer)
        for name, p in status["peers"].items():  # the mover's view of each peer's path
            if self.paths is not None and name in self.paths.paths:
                p["path"] = {**p["path"], **self.paths.path(name)}
        return status

    def is_up(self, peer: str) -> bool:
        """Whether the peer has an SA to send on (an IKE peer: a child SA is up)."""
        endpoint, _ = self._parts()
        p = endpoint.tunnel.peers.get(peer)
        if p is None:
            raise KeyError(peer)
        return p.outbound is not None and p.addr is not None

    async def wait_up(self, peer: str, timeout: float | None = None) -> None:
        """Until the peer is up (``is_up``); TimeoutError after ``timeout`` seconds,
        KeyError for an unknown peer, ConnectionError if the node stops first."""
        if self.is_up(peer):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(peer, []).append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        finally:
            waiting = self._waiters.get(peer, [])
            if future in waiting:
                waiting.remove(future)

    def _peer_event(self, ev: PeerUp | PeerDown) -> None:
        if self.vips is not None:
            self.vips.peer_event(ev)
        if isinstance(ev, PeerUp):
            for f in self._waiters.pop(ev.name, []):
                if not f.done():
                    f.set_result(None)

    def _in_process(self) -> InProcessInterface:
        endpoint, _ = self._parts()
        if not isinstance(endpoint.interface, InProcessInterface):
            raise RuntimeError("send and recv need interface.kind = \"inprocess\"")
        return endpoint.interface

    def send(self, packet: bytes | bytearray | memoryview) -> int:
        """Send one inner IP packet (in-process interface): the ESP packet's length, or
        ``-DropReason`` (``-NO_ENDPOINT`` before the peer is up, say)."""
        return self._in_process().send(packet)

    async def recv(self) -> bytes:
        """The next inner IP packet that came through the tunnel (in-process interface)."""
        return await self._in_process().recv()

    # --- MOBIKE (RFC 4555): our address or path changed --------------------------------------
    def _start_netwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """With a MOBIKE peer: watch addresses and routes (io/netwatch.py), and tell the
        IKE manager our addresses (ADDITIONAL_*_ADDRESS)."""
        ike = self.controller.ike if self.controller is not None else None
        if ike is None or not any(p.config.mobike for p in ike.peers.values()):
            return
        watch = NetWatch(self._net_changed)
        try:
            watch.start(loop)
        except OSError as e:
            log.warning("MOBIKE: cannot watch address and route changes (%s): moves only "
                        "when asked (update-address)", e.strerror or e)
            return
        self.netwatch = watch
        ike.set_local_addresses(self._outer_addresses(), loop.time())

    def _outer_addresses(self) -> tuple[str, ...]:
        """The host's addresses but the tunnel's own inner ones."""
        inner = {str(a.ip) for a in self.config.interface.addresses}
        return tuple(a for a in addresses() if a not in inner)

    def _net_changed(self) -> None:
        """An address or route changed: our addresses announced, and each MOBIKE SA whose
        source address towards its peer changed is moved (UPDATE_SA_ADDRESSES)."""
        endpoint, controller = self._parts()
        endpoint.forget_sources()  # new initiations look the source up afresh
        self.update_address(None, force=False, reason="an address or route changed")
        if controller.ike is not None:  # after the updates: they go first
            controller.ike.set_local_addresses(self._outer_addresses(), self._now())
            endpoint.rearm_timer()

    def update_address(self, peer: str | None = None, *, force: bool = True,
                       reason: str = "asked") -> int:
        """Move the IKE SAs we initiated with MOBIKE (of ``peer``, or all) and their child
        SAs to our current address towards each peer (UPDATE_SA_ADDRESSES, RFC 4555
        section 3.5; the SPIs stay); ``force``: also when the address is the same (the
        path changed: another NAT). How many updates started; KeyError for an unknown
        peer."""
        endpoint, controller = self._parts()
        ike = controller.ike
        if peer is not None and peer not in endpoint.tunnel.peers:
            raise KeyError(peer)
        if ike is None:
            return 0
        now, started = self._now(), 0
        for sa in ike.mobike_sas(peer):
            try:
                local = mobike_local(endpoint, sa.remote)
            except OSError as e:
                log.info("peer %s: MOBIKE: no address towards %s (%s); staying", sa.name,
                         format_addr(sa.remote), e.strerror or e)
                continue
            started += ike.update_address(sa, local, now, reason=reason, force=force)
        endpoint.rearm_timer()
        return started

    # --- what the operator asks ---------------------------------------------------------------
    async def handle(self, req: dict[str, Any]) -> object:
        """One control request (``nattunnel.control.protocol``): its result, or a
        ControlError saying why not."""
        command = req["command"]
        if command == "show":
            try:
                return self.show(_peer_arg(req, required=False))
            except KeyError:
                raise ControlError(f"no peer {req.get('peer')!r}") from None
        if command == "down":
            asyncio.get_running_loop().call_soon(self.request_stop)
            return "stopping"
        if command == "reload":
            return self.reload()
        return self._steer(command, _peer_arg(req, required=True) or "", req)

    def request_stop(self) -> None:
        """Ask the one who runs the node (``run``) to stop it (``down``, a signal)."""
        self.stop_requested.set()

    def _steer(self, command: str, name: str, req: dict[str, Any]) -> object:
        endpoint, controller = self._parts()
        ike = controller.ike
        if name not in endpoint.tunnel.peers:
            raise ControlError(f"no peer {name!r}")
        if ike is None or name not in ike.peers:
            raise ControlError(f"peer {name!r} has manual SAs: nothing to {command}")
        now = self._now()
        if command == "initiate":
            if ike.peers[name].remote is None:
                raise ControlError(f"peer {name!r} has no endpoint to initiate to; it "
                                   f"initiates, and we answer")
            if any(sa.established for sa in ike.sas_of(name)):
                ike.held.discard(name)
                result: object = "already up"
            else:
                ike.initiate(name, now)
                result = "initiating"
        elif command == "terminate":
            result = f"{ike.terminate(name, now)} IKE SA(s) deleted"
        elif command == "update-address":
            n = self.update_address(name)
            if not n:
                raise ControlError(f"peer {name!r}: no established IKE SA with MOBIKE that "
                                   f"we initiated (RFC 4555: only the initiator moves)")
            result = f"updating the addresses of {n} IKE SA(s) (MOBIKE)"
        else:
            which = "IKE SA" if req.get("ike") else "child SA(s)"
            n = ike.rekey(name, now, ike=bool(req.get("ike")))
            if not n:
                raise ControlError(f"peer {name!r}: no established {which} to rekey now "
                                   f"(or an exchange is under way: try again)")
            result = f"rekeying {n} {which}"
        log.info("control: %s %s: %s", command, name, result)
        endpoint.rearm_timer()
        return result

    def reload(self) -> dict[str, Any]:
        """Read the configuration file again and apply what changed in its peers: added
        ones start, removed ones are deleted (a Delete for their IKE SAs), changed ones are
        both; the others keep their SAs untouched. A configuration with an error changes
        nothing (ControlError naming the field). Fields that need a restart are reported,
        and not applied."""
        if self.config.path is None:
            raise ControlError("the configuration was not loaded from a file")
        try:
            new = load_config(self.config.path)
        except ConfigError as e:
            raise ControlError(f"nothing changed: {e}") from None
        endpoint, controller = self._parts()
        old = {pc.name: pc for pc in self.config.peers}
        fresh = {pc.name: pc for pc in new.peers}
        removed = [n for n in old if n not in fresh]
        added = [n for n in fresh if n not in old]
        changed = [n for n in fresh if n in old
                   and comparable(old[n]) != comparable(fresh[n])]
        restart = [f for f in RESTART_FIELDS
                   if comparable(getattr(self.config, f)) != comparable(getattr(new, f))]
        coming = [ike for n in added + changed if (ike := fresh[n].ike) is not None]
        if controller.ike is None and coming:
            raise ControlError("nothing changed: adding the first IKE peer needs a restart "
                               "(the port-500 sockets open at start)")
        if any(c.vips or c.pools for c in coming) and not isinstance(controller.ike,
                                                                     RoadWarriorManager):
            raise ControlError("nothing changed: adding the first road-warrior peer (vips, "
                               "pools or a remote_id pattern) needs a restart")
        now = self._now()
        for name in removed + changed:
            self._remove_peer(endpoint, controller, name, now)
        try:
            self._reroute(endpoint.interface, [old[n] for n in removed + changed],
                          [fresh[n] for n in changed + added])
        except OSError as e:
            log.error("reload: %s", e)
            raise ControlError(f"the inner routes could not be changed: {e}; peers "
                               f"{', '.join(removed + changed) or 'none'} were removed, "
                               f"none added") from None
        for name in changed + added:
            _add_peer(endpoint, controller.ike, fresh[name], now)
        self.config = dataclasses.replace(self.config, peers=new.peers)
        if self.netwatch is None:  # the first MOBIKE peer: watch from now on
            self._start_netwatch(asyncio.get_running_loop())
        endpoint.rearm_timer()
        result = {"added": added, "removed": removed, "changed": changed,
                  "unchanged": [n for n in fresh if n in old and n not in changed],
                  "restart_needed": restart}
        log.info("reload: %s", ", ".join(f"{k} {v}" for k, v in result.items() if v)
                 or "nothing changed")
        return result

    @staticmethod
    def _reroute(interface: InnerInterface, gone: list[PeerConfig],
                 coming: list[PeerConfig]) -> None:
        """The inner routes follow the peers: the prefixes of peers that went are unrouted
        (unless a peer that comes has them), those of peers that come are routed."""
        # a road-warrior client's routes come and go with its virtual IP (io/vip.py)
        keep = {net for pc in coming if not (pc.ike and pc.ike.vips) for net in pc.allowed_ips}
        for pc in gone:
            for net in pc.allowed_ips if not (pc.ike and pc.ike.vips) else ():
                if net not in keep:
                    interface.unroute(net)
        for net in keep:
            interface.route(net)

    def _remove_peer(self, endpoint: Endpoint, controller: Controller, name: str,
                     now: float) -> None:
        if controller.ike is not None and name in controller.ike.peers:
            controller.ike.remove_peer(name, now)
        controller.up.discard(name)
        endpoint.tunnel.remove_peer(name)


def _version() -> str:
    """The package's version (the package is loaded: this module is in it)."""
    return str(getattr(sys.modules.get("nattunnel"), "__version__", "unknown"))


def _peer_arg(req: dict[str, Any], *, required: bool) -> str | None:
    peer = req.get("peer")
    if peer is None and not required:
        return None
    if not isinstance(peer, str) or not peer:
        raise ControlError("give a peer's name")
    return peer


def _add_peer(endpoint: Endpoint, ike: IkeManager | None, pc: PeerConfig,
              now: float) -> None:
    """A peer of the configuration, on a running endpoint (``reload``)."""
    keepalive = pc.ike is None and pc.keepalive.wanted(pc.behind_nat)
    addr = sockaddr(*pc.endpoint) if pc.endpoint and pc.ike is None else None
    peer = endpoint.add_peer(pc.name, pc.allowed_ips, addr=addr, keepalive=keepalive,
                             keepalive_interval=pc.keepalive_interval, now=now)
    if pc.ike is None:
        _install_manual(endpoint.tunnel, peer, pc)
    elif ike is not None:
        remote = sockaddr(*pc.endpoint) if pc.endpoint else None
        ike.add_peer(IkePeer(pc.ike, initiate=pc.initiate and remote is not None,
                             remote=remote), now)


async def run(config: Config, stats_path: Path | None = None, *,
              ignore_signals_after: bool = False) -> int:
    """Run the configuration's endpoint (a ``Node``) until SIGINT, SIGTERM or ``nattunnel
    down``, then stop it gracefully. With ``ignore_signals_after`` (``nattunnel up``: the
    process ends next) SIGINT and SIGTERM are ignored from the moment the endpoint's own
    handlers go, with no gap in between."""
    loop = asyncio.get_running_loop()
    node = Node(config)
    await node.start()
    assert node.endpoint is not None
    endpoint = node.endpoint
    # The handlers go in before "listening on" is logged: whoever waits for that line (a test,
    # a supervisor) may signal at once, and SIGUSR1 would end a process without its handler.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.request_stop)
    if stats_path is not None:
        loop.add_signal_handler(signal.SIGUSR1, write_stats, endpoint, stats_path)
    try:
        _log_started(config, node)
        await node.stop_requested.wait()
    finally:
        # The handlers stay until everything is closed: a second SIGINT or SIGTERM during the
        # teardown only sets the event again (it raised KeyboardInterrupt in the middle of the
        # TUN device's close once the handlers were gone).
        try:
            await node.stop()
        finally:
            if stats_path is not None:
                write_stats(endpoint, stats_path)
            log.info("stopped: sockets closed, %s", _closed(endpoint.interface))
            _remove_signal_handlers(loop, ignore_signals_after)
    return 0


def _remove_signal_handlers(loop: asyncio.AbstractEventLoop, ignore: bool) -> None:
    """The endpoint's signal handlers go (SIGINT back to KeyboardInterrupt, SIGTERM to its
    default), or with ``ignore`` SIGINT and SIGTERM are ignored from then on: blocked while
    the handlers change, so that one arriving in between is discarded rather than raising
    KeyboardInterrupt or ending the process."""
    stopping = {signal.SIGINT, signal.SIGTERM}
    if ignore:
        signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        if ignore:
            for sig in stopping:
                signal.signal(sig, signal.SIG_IGN)  # a pending one is discarded
    finally:
        if ignore:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stopping)


def _closed(interface: InnerInterface) -> str:
    """What closing the inner interface did, for the log."""
    from .io.tun import TunInterface

    if isinstance(interface, TunInterface):
        return interface.device.closing_summary()
    return "in-process interface closed"


def _taken_over(endpoint: Endpoint) -> str:
    """For the startup line: a TUN device that was there before we started."""
    from .io.tun import TunInterface

    interface = endpoint.interface
    if isinstance(interface, TunInterface) and interface.device.existed:
        return "; the device existed before: taken over, and left as found at stop"
    return ""


def _log_started(config: Config, node: Node) -> None:
    ic = config.interface
    assert node.endpoint is not None
    endpoint = node.endpoint
    where = ", ".join(format_addr(a[:2]) for a in endpoint.local_addresses())
    log.info("listening on %s; inner interface %s (%s, mtu %d)%s", where, ic.kind,
             ic.name, ic.mtu, _taken_over(endpoint))
    if node.control_server is not None:
        log.info("control socket %s (nattunnel show, initiate, terminate, rekey, "
                 "update-address, reload, down)", node.control_server.path)
    if node.metrics_server is not None:
        log.info("metrics on http://%s/metrics", format_addr(node.metrics_server.address))

    for pc in config.peers:
        if pc.endpoint:
            where = format_addr(pc.endpoint)
        elif pc.ike is not None:
            where = "address not known yet: learned when it authenticates (IKE_AUTH)"
        else:
            where = "address not known yet: learned from its first authenticated packet"
        allowed = ", ".join(map(str, pc.allowed_ips))
        if pc.ike is not None:
            log.info("peer %s: %s, allowed %s, IKEv2 %s auth as %s, %s", pc.name, where,
                     allowed, pc.ike.auth, pc.ike.local_id,
                     "initiating" if pc.initiate else "responding")
            continue
        log.info("peer %s: %s, allowed %s, %s, SPI in %#010x out %#010x, keepalive %s%s "
                 "(manual SAs: no forward secrecy)", pc.name, where, allowed, pc.suite.name,
                 pc.spi_in, pc.spi_out, pc.keepalive.value,
                 " (behind NAT)" if pc.behind_nat else "")
