"""The IKE manager's side of MOBIKE (RFC 4555): which IKE SAs may move, moving them when our
address or path changed (``update_address``: the endpoint's owner asks, after a route or
interface change or an operator's request), our addresses for ADDITIONAL_*_ADDRESS
(``set_local_addresses``), and what a ``PathUpdated`` means for the tunnel: the child SAs'
peer address (``Tunnel.set_peer_address``, the SPIs stay) and NAT keepalives on or off.

A mixin of ``IkeManager`` (``nattunnel.ike.manager``), sans-I/O like it: the caller finds
our address towards each peer (the kernel's source for a wildcard socket) and passes it in.
"""

from __future__ import annotations

import logging

from ..addr import Addr, format_addr, sockaddr
from ..constants import NAT_T_PORT
from ..tunnel.core import Tunnel
from ..tunnel.peer import KeepaliveMode, Peer
from .base import State
from .events import PathUpdated
from .sa import IkeSa

log = logging.getLogger("nattunnel")


class MobilityManagement:
    """MOBIKE for the manager: the SAs that can move, and moving them."""

    tunnel: Tunnel
    sas: dict[bytes, IkeSa]
    #: our addresses, announced to MOBIKE peers (RFC 4555 section 3.4)
    own_addresses: tuple[str, ...] = ()
    #: UPDATE_SA_ADDRESSES requests we started, by the manager's count
    mobike_updates = 0

    def _process(self, sa: IkeSa, now: float) -> None:
        raise NotImplementedError

    def _tunnel_peer(self, ike: IkeSa) -> Peer | None:
        raise NotImplementedError

    def mobike_sas(self, name: str | None = None) -> list[IkeSa]:
        """The established IKE SAs that we initiated with MOBIKE (they can move, RFC 4555
        section 3.5), of ``name`` or of every peer."""
        return [sa for sa in self.sas.values()
                if sa.mobike and sa.initiator and sa.state is State.ESTABLISHED
                and not sa.rekeyed and (name is None or sa.name == name)]

    def update_address(self, sa: IkeSa, local: Addr, now: float, *, reason: str,
                       force: bool = False, remote: Addr | None = None) -> bool:
        """Our address towards ``sa``'s peer is ``local``: if its IP changed (or ``force``: the
        path changed, the operator asks), move the IKE SA and its child SAs there with
        UPDATE_SA_ADDRESSES (to the peer at ``remote``, if given: another path to it).
        Whether an update started (or waits for the window)."""
        if sa not in self.mobike_sas() or (local[0] == sa.local[0] and not force):
            return False
        log.info("peer %s: MOBIKE: updating the SA addresses from %s (%s)", sa.name,
                 format_addr(local), reason)
        started = sa.update_addresses(local, now, reason, remote)
        self.mobike_updates += started
        self._process(sa, now)
        return started

    def set_local_addresses(self, addresses: tuple[str, ...], now: float) -> None:
        """Our addresses: sent as ADDITIONAL_IP4/6_ADDRESS in IKE_AUTH, and to peers with
        MOBIKE up when they change (RFC 4555 section 3.4)."""
        self.own_addresses = tuple(addresses)
        for sa in list(self.sas.values()):
            if sa.state is not State.DEAD and sa.announce_addresses(self.own_addresses, now):
                self._process(sa, now)

    def _path_updated(self, ev: PathUpdated, now: float) -> None:
        """The IKE SA's addresses changed (RFC 4555 section 3.5): its child SAs follow (the
        peer's address in the tunnel; ESP on the NAT-T port), and keepalives go on or off
        as the new NAT detection says."""
        ike = ev.ike
        log.info("peer %s: MOBIKE: the IKE SA and its child SAs now use %s (from %s); NAT: "
                 "%s", ike.name, format_addr(ev.remote), format_addr(ike.local),
                 "this side" if ev.local_behind_nat else
                 "peer side" if ev.remote_behind_nat else "none")
        peer = self._tunnel_peer(ike)
        if peer is None:
            return
        addr = ev.remote if ike.natt else sockaddr(ev.remote[0], NAT_T_PORT)
        self.tunnel.set_peer_address(peer, addr)
        mode = KeepaliveMode(ike.config.keepalive) if ike.config else KeepaliveMode.NAT
        self.tunnel.set_keepalive(peer, mode.wanted(ev.local_behind_nat), now)
