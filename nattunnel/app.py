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
import errno
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from .addr import Addr, format_addr, sockaddr
from .config import Config
from .constants import IKE_PORT
from .esp.sa import InboundSA, OutboundSA
from .ike.events import Outgoing
from .ike.keylog import KeyLog
from .ike.manager import IkeManager, IkePeer, LocalAddressNeeded, PeerDown, PeerUp
from .io.endpoint import Endpoint, InnerInterface, InProcessInterface
from .tunnel.core import Event as TunnelEvent
from .tunnel.core import PeerMoved, RekeyNeeded, Tunnel

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
        keepalive = pc.ike is None and pc.keepalive.wanted(pc.behind_nat)
        addr = sockaddr(*pc.endpoint) if pc.endpoint and pc.ike is None else None
        peer = tunnel.add_peer(pc.name, pc.allowed_ips, addr=addr, keepalive=keepalive,
                               keepalive_interval=pc.keepalive_interval, now=now)
        if pc.ike is not None:
            continue
        assert pc.spi_out is not None and pc.spi_in is not None
        assert pc.key_out is not None and pc.key_in is not None
        tunnel.set_outbound(peer, OutboundSA(pc.spi_out, pc.suite, pc.key_out, esn=pc.esn,
                                             tfc_pad=pc.tfc_pad))
        tunnel.install_inbound(peer, InboundSA(pc.spi_in, pc.suite, pc.key_in, esn=pc.esn,
                                               replay_window=pc.replay_window))
    return tunnel


def build_ike(config: Config, tunnel: Tunnel, now: float) -> IkeManager | None:
    """The IKE manager for the configuration's IKE peers (bounded by ``config.limits``, the
    ``[limits]`` table), or None if there are none."""
    ike_peers = [pc for pc in config.peers if pc.ike is not None]
    if not ike_peers:
        return None
    keylog = KeyLog(config.keylog) if config.keylog is not None else None
    manager = IkeManager(tunnel, keylog=keylog, limits=config.limits)
    for pc in ike_peers:
        assert pc.ike is not None
        remote = sockaddr(*pc.endpoint) if pc.endpoint else None
        manager.add_peer(IkePeer(pc.ike, initiate=pc.initiate and remote is not None,
                                 remote=remote), now)
    return manager


def open_interface(config: Config) -> InnerInterface:
    ic = config.interface
    if ic.kind == "inprocess":
        return InProcessInterface()
    from .io.tun import TunDevice, TunInterface

    routes = [net for pc in config.peers for net in pc.allowed_ips]
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


async def run(config: Config, stats_path: Path | None = None, *,
              ignore_signals_after: bool = False) -> int:
    """Run the configuration's endpoint until SIGINT or SIGTERM. With
    ``ignore_signals_after`` (``nattunnel up``: the process ends next) SIGINT and SIGTERM are
    ignored from the moment the endpoint's own handlers go, with no gap in between."""
    loop = asyncio.get_running_loop()
    tunnel = build_tunnel(config, loop.time())
    controller = Controller(tunnel, build_ike(config, tunnel, loop.time()),
                            ike_port=config.ike_port)
    interface = open_interface(config)
    endpoint = Endpoint(tunnel, interface, config.listen, control=controller)
    try:
        await endpoint.start()
    except OSError as e:
        interface.close()
        raise ListenError.of(config, e) from e
    except BaseException:
        interface.close()
        raise
    stop = asyncio.Event()
    # The handlers go in before "listening on" is logged: whoever waits for that line (a test,
    # a supervisor) may signal at once, and SIGUSR1 would end a process without its handler.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if stats_path is not None:
        loop.add_signal_handler(signal.SIGUSR1, write_stats, endpoint, stats_path)
    try:
        _log_started(config, endpoint)
        await stop.wait()
    finally:
        # The handlers stay until everything is closed: a second SIGINT or SIGTERM during the
        # teardown only sets ``stop`` again (it raised KeyboardInterrupt in the middle of the
        # TUN device's close once the handlers were gone).
        if stats_path is not None:
            write_stats(endpoint, stats_path)
        endpoint.close()
        log.info("stopped: sockets closed, %s", _closed(interface))
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


def _log_started(config: Config, endpoint: Endpoint) -> None:
    ic = config.interface
    where = ", ".join(format_addr(a[:2]) for a in endpoint.local_addresses())
    log.info("listening on %s; inner interface %s (%s, mtu %d)%s", where, ic.kind,
             ic.name, ic.mtu, _taken_over(endpoint))
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
