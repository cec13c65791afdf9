"""The send side of the TURN relay (RFC 8656): a peer reached through the relay gets a
``RelaySocket`` as its socket, so that the send path (io/send.py) and the control sends
(keepalives, IKE) stay as they are for direct peers and need no flag per packet.

A ``RelaySocket`` is a duplicate of the NAT-T socket's descriptor (the same socket in the
kernel: the same local port, which is what the allocation belongs to) whose ``sendto`` and
``sendmsg`` send to the TURN server instead: the datagram behind the peer's 4-octet
ChannelData header once its channel is bound, or in a Send indication once its permission
is installed. Before that (or after the allocation failed) a send fails with ENOTCONN,
counted in ``send_errors`` like any other failed send. A GSO batch (``sendmsg`` with
UDP_SEGMENT) through a bound channel stays one GSO send to the server, each segment behind
its ChannelData header (segments 4 octets longer; the server's listening socket takes the
bursts: no drops there in ``bench traversal``); otherwise it is sent one datagram per
segment. It is never read from. A datagram to an
address that is not one of the client's peers (the peer moved to a direct path: a MOBIKE
update from the other side, or a rebinding) goes from the NAT-T socket itself, directly.

``PathMover`` is relay first, then direct (docs/traversal.md): a peer's IKE SA and its child
SAs move between the relay and a direct path with MOBIKE (UPDATE_SA_ADDRESSES, RFC 4555
section 3.5, from the initiator), the direct path is watched (liveness checks when nothing
came for ``probe_interval``; no answer within ``dead_after``: back to the relay), the
allocation is kept ``keep_relay`` seconds as the fallback and then released, and a peer
with ``relay = "auto"`` that does not come up directly within ``auto_after`` goes through
the relay (allocated then, not before), while the direct path is tried again every
``retry_direct`` seconds.

Part of ``nattunnel.io``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..addr import Addr, format_addr
from ..traversal.turn import CHANNEL_HEADER_LEN, TurnClient
from .udp import GSO_SEG, SOL_UDP, UDP_SEGMENT, mapped

if TYPE_CHECKING:
    from ..ike.manager import IkeManager
    from .endpoint import Endpoint

log = logging.getLogger("nattunnel")

#: at most this much in one GSO send to the TURN server (a UDP datagram's 65507 octets,
#: with room to spare)
GSO_MAX_OCTETS: Final = 65000


class RelaySocket(socket.socket):
    """Sends for one or more peers through ``turn``'s allocation on ``base``'s port."""

    def __init__(self, base: socket.socket, turn: TurnClient) -> None:
        super().__init__(base.family, base.type, fileno=os.dup(base.fileno()))
        self.setblocking(False)
        self.turn = turn
        server = turn.server
        self.server: Addr = mapped(server) if base.family == socket.AF_INET6 else server
        self.base = base
        self.relayed_datagrams = 0
        self.direct_datagrams = 0

    def sendto(self, data: Any, *args: Any) -> int:
        """``sendto(data, address)`` (or with flags between): to the TURN server, framed
        for ``address``."""
        addr = args[-1]
        view = memoryview(data)
        turn = self.turn
        header = turn.channel_header(addr, len(view)) if turn.allocated else None
        if header is not None:
            self.relayed_datagrams += 1
            return super().sendmsg([header, view], (), 0, self.server)
        framed = turn.frame(addr, view)
        if framed is None and turn.peer(addr) is None:
            self.direct_datagrams += 1  # not through the relay: the peer moved off it
            return super().sendto(view, addr)
        if framed is None:
            raise OSError(errno.ENOTCONN, "the TURN relay has no channel or permission for "
                          "this peer yet")
        self.relayed_datagrams += 1
        return super().sendto(framed, self.server)

    def sendmsg(self, buffers: Iterable[Any], ancdata: Iterable[Any] = (), flags: int = 0,
                address: Any = None, /) -> int:
        """A GSO batch: through a bound channel, still one GSO send to the server (each
        segment behind its ChannelData header, segments of ``seg`` + 4 octets); otherwise
        one relayed datagram per segment."""
        data = b"".join(bytes(b) for b in buffers)
        seg = len(data)
        for level, kind, value in ancdata:
            if level == SOL_UDP and kind == UDP_SEGMENT:
                seg = GSO_SEG.unpack(value)[0]
        view = memoryview(data)
        turn = self.turn
        header = turn.channel_header(address, seg) if turn.allocated else None
        if header is not None and 0 < seg < len(view):
            gso = [(SOL_UDP, UDP_SEGMENT, GSO_SEG.pack(seg + CHANNEL_HEADER_LEN))]
            out = bytearray()
            for off in range(0, len(view), seg):
                chunk = view[off : off + seg]
                if len(out) + CHANNEL_HEADER_LEN + seg > GSO_MAX_OCTETS:
                    super().sendmsg([out], gso, 0, self.server)
                    out = bytearray()
                out += header if len(chunk) == seg else header[:2] + len(chunk).to_bytes(2, "big")
                out += chunk
            super().sendmsg([out], gso, 0, self.server)
            self.relayed_datagrams += -(-len(view) // seg)
            return len(view)
        sent = 0
        for off in range(0, len(view), max(seg, 1)):
            sent += self.sendto(view[off : off + seg], address)
        return sent




# --- relay first, then direct -------------------------------------------------------------------
#: a direct path with nothing from the peer for this long gets a liveness check
PROBE_INTERVAL: Final = 2.0
#: a liveness check or a move to a direct path not answered within this: back to the relay
DEAD_AFTER: Final = 3.0
#: how long the allocation is kept after the last peer left the relay, as the fallback
KEEP_RELAY: Final = 120.0
#: a ``relay = "auto"`` peer whose IKE SA is not up directly within this goes via the relay
AUTO_AFTER: Final = 3.0
#: a relayed peer with a direct address known is tried directly again this often
RETRY_DIRECT: Final = 10.0
TICK: Final = 0.5


@dataclass(slots=True)
class PeerPath:
    """How one peer is reached, and what the mover knows and did about it."""

    name: str
    #: "direct" or "relay"
    kind: str = "direct"
    #: where the peer is through the relay (None: never relayed yet)
    relay_addr: Addr | None = None
    #: the peer's direct address (the candidate pair's remote side)
    direct: Addr | None = None
    #: the candidate pair in use, as the checks named it ("local -> remote"), or None
    pair: str | None = None
    #: relay = "auto": through the relay only when the direct path does not come up
    auto: bool = False
    since: float = 0.0
    #: a liveness check on the direct path went out then (not yet answered)
    probe_at: float | None = None
    #: a move to the direct path started then (its UPDATE_SA_ADDRESSES not yet answered)
    trying: float | None = None
    updates_seen: int = 0
    next_direct: float = 0.0
    moves_to_direct: int = 0
    moves_to_relay: int = 0
    #: the direct path died (no answer within DEAD_AFTER) and the peer went back
    fallbacks: int = 0
    failed_tries: int = 0
    last_reason: str = ""


class PathMover:
    """Relay first, then direct, for the peers of one endpoint (the module's docstring).
    ``start_relay`` makes the allocation when a peer first needs it (``relay = "auto"``);
    ``to_direct``/``to_relay`` are what the connectivity checks (or a test) call; the
    watching runs on its own asyncio timer every TICK seconds."""

    def __init__(self, endpoint: Endpoint, manager: IkeManager,
                 start_relay: Callable[[], object] | None = None, *,
                 probe_interval: float = PROBE_INTERVAL, dead_after: float = DEAD_AFTER,
                 keep_relay: float = KEEP_RELAY, auto_after: float = AUTO_AFTER,
                 retry_direct: float = RETRY_DIRECT) -> None:
        self.endpoint, self.manager, self._start_relay = endpoint, manager, start_relay
        self.probe_interval, self.dead_after = probe_interval, dead_after
        self.keep_relay, self.auto_after, self.retry_direct = keep_relay, auto_after, retry_direct
        self.paths: dict[str, PeerPath] = {}
        self.release_at: float | None = None
        self.releases = 0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def watch(self, name: str, *, relayed: bool, auto: bool = False,
              direct: Addr | None = None) -> PeerPath:
        """Follow peer ``name``: on the relay now (``relayed``: the endpoint sends it there
        already) or direct; ``auto``: relayed when it does not come up directly; ``direct``:
        its direct address, if one is known (tried every ``retry_direct`` seconds)."""
        now = self._now()
        path = PeerPath(name, "relay" if relayed else "direct", auto=auto, since=now,
                        direct=direct, next_direct=now + self.retry_direct)
        if relayed:
            path.relay_addr = self.endpoint.relayed.get(name)
        self.paths[name] = path
        return path

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        for path in self.paths.values():
            path.since = now
            path.next_direct = now + self.retry_direct
        self._handle = self._loop.call_later(TICK, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    # --- the moves ---------------------------------------------------------------------------
    def _update(self, name: str, remote: Addr, reason: str) -> int:
        """UPDATE_SA_ADDRESSES to ``remote`` for each IKE SA we initiated with MOBIKE."""
        from .netwatch import mobike_local

        now, started = self._now(), 0
        for sa in self.manager.mobike_sas(name):
            try:
                local = mobike_local(self.endpoint, remote)
            except OSError:
                continue
            started += self.manager.update_address(sa, local, now, reason=reason, force=True,
                                                   remote=remote)
        self.endpoint.rearm_timer()
        return started

    def to_direct(self, name: str, addr: Addr | None = None, *, pair: str | None = None,
                  reason: str = "a direct path answered") -> bool:
        """Move ``name``'s IKE SA and child SAs to the direct path to ``addr`` (default:
        the one known): IKE goes direct at once (the update is the test of the path), ESP
        follows when the update is answered. False if there is no IKE SA to move here (only
        the initiator moves, RFC 4555 section 3.5) or no direct address."""
        path = self.paths.get(name)
        if path is None:
            path = self.watch(name, relayed=name in self.endpoint.relayed)
        target = addr or path.direct
        sas = self.manager.mobike_sas(name)
        if target is None or not sas or path.trying is not None:
            return False
        path.direct, path.pair = target, pair or path.pair
        if name in self.endpoint.relayed:
            path.relay_addr = self.endpoint.relayed.pop(name)
        path.updates_seen = sas[0].path_updates
        path.trying = self._now()
        path.last_reason = reason
        return self._update(name, target, reason) > 0

    def to_relay(self, name: str, reason: str = "asked") -> bool:
        """Move ``name`` to the relay (allocated again if it was released): ESP at once,
        IKE with an update through it."""
        path = self.paths.get(name)
        ep = self.endpoint
        if path is None or path.relay_addr is None:
            return False
        now = self._now()
        if ep.turn is None:
            if self._start_relay is None:
                return False
            ep.relay_peer(name, addr=path.relay_addr)
            self._start_relay()
        else:
            if ep.turn.state in ("released", "failed", "idle"):
                ep.turn.allocate(now)
            ep.relay_peer(name, addr=path.relay_addr)
        path.kind, path.since, path.trying, path.probe_at = "relay", now, None, None
        path.moves_to_relay += 1
        path.next_direct = now + self.retry_direct
        path.last_reason = reason
        self.release_at = None
        self._update(name, path.relay_addr, reason)
        return True

    def _confirmed(self, path: PeerPath) -> None:
        """The update to the direct path was answered: ESP from the NAT-T socket itself."""
        peer = self.endpoint.tunnel.peers.get(path.name)
        if peer is not None and isinstance(peer.sock, RelaySocket):
            peer.sock = peer.sock.base
        now = self._now()
        path.kind, path.since, path.trying, path.probe_at = "direct", now, None, None
        path.moves_to_direct += 1
        path.failed_tries = 0
        if self.keep_relay >= 0 and not self.endpoint.relayed:
            self.release_at = now + self.keep_relay

    # --- the watch ---------------------------------------------------------------------------
    def _tick(self) -> None:
        self._handle = None
        try:
            now = self._now()
            for path in list(self.paths.values()):
                self._check(path, now)
            self._release_if_due(now)
        except Exception:
            log.exception("path mover")
        if self._loop is not None:
            self._handle = self._loop.call_later(TICK, self._tick)

    def _check(self, path: PeerPath, now: float) -> None:
        ep, name = self.endpoint, path.name
        peer = ep.tunnel.peers.get(name)
        sas = self.manager.mobike_sas(name)
        if peer is None:
            return
        if not sas and path.trying is None and not path.auto:
            # the responder: the initiator moves the IKE SA (RFC 4555 section 3.5), the
            # endpoint follows (a peer that moved off the relay is not in ``relayed``)
            kind = "relay" if name in ep.relayed else "direct"
            if kind != path.kind:
                path.kind, path.since = kind, now
                path.direct = peer.addr if kind == "direct" else path.direct
                self._followed(kind, now)
            return
        if path.trying is not None:
            if sas and sas[0].path_updates > path.updates_seen and sas[0].remote == path.direct:
                self._confirmed(path)
            elif now - path.trying > self.dead_after:
                path.failed_tries += 1
                path.trying = None
                self.to_relay(name, "the direct path did not answer the update")
                path.moves_to_relay -= 1  # a failed try, not a move back
            return
        if path.kind == "direct" and path.relay_addr is not None and sas:
            sa = sas[0]
            heard = max(peer.last_rx, sa.last_rx)
            if path.probe_at is not None:
                if heard >= path.probe_at:
                    path.probe_at = None
                elif now - path.probe_at > self.dead_after:
                    path.fallbacks += 1
                    self.to_relay(name, "the direct path died (no answer to a liveness check)")
            elif now - heard > self.probe_interval:
                sa.check_liveness(now)  # or a request of ours is out: its answer counts too
                path.probe_at = now
                ep.rearm_timer()
        elif path.kind == "relay" and path.direct is not None and sas and now >= path.next_direct:
            path.next_direct = now + self.retry_direct
            self.to_direct(name, reason="trying the direct path again")
        elif (path.kind == "direct" and path.auto and path.relay_addr is None and not sas
              and now - path.since > self.auto_after and path.direct is not None
              and peer.outbound is None):
            path.relay_addr = path.direct  # the same address, reached through the relay
            self.to_relay(name, f"no IKE SA up directly within {self.auto_after:.0f} s")

    def _followed(self, kind: str, now: float) -> None:
        """The responder's peer followed the initiator's move to ``kind``: off the relay,
        the allocation is released ``keep_relay`` after the last peer left it, as the
        initiator's (``_confirmed``); back on it, it is kept (allocated again if it had
        been released)."""
        ep = self.endpoint
        if kind == "relay":
            self.release_at = None
            if ep.turn is not None and ep.turn.state in ("released", "failed", "idle"):
                ep.turn.allocate(now)
                ep.rearm_timer()
        elif self.keep_relay >= 0 and not ep.relayed:
            self.release_at = now + self.keep_relay

    def _release_if_due(self, now: float) -> None:
        turn = self.endpoint.turn
        if (self.release_at is None or now < self.release_at or turn is None
                or not turn.allocated or self.endpoint.relayed
                or any(p.trying is not None for p in self.paths.values())):
            return
        self.release_at = None
        self.releases += 1
        log.info("TURN: no peer on the relay for %.0f s: releasing the allocation",
                 self.keep_relay)
        turn.release(now)
        self.endpoint.rearm_timer()

    def path(self, name: str) -> dict[str, object]:
        """For show: the path's kind, candidate pair, the moves and what the last was for."""
        p = self.paths.get(name)
        if p is None:
            return {}
        return {"kind": p.kind, "pair": p.pair,
                "direct": format_addr(p.direct) if p.direct else None,
                "via_relay": format_addr(p.relay_addr) if p.relay_addr else None,
                "moving": p.trying is not None, "moves_to_direct": p.moves_to_direct,
                "moves_to_relay": p.moves_to_relay, "fallbacks": p.fallbacks,
                "failed_direct_tries": p.failed_tries, "reason": p.last_reason}


__all__ = ["PathMover", "PeerPath", "RelaySocket"]
