"""The IKE manager of a gateway or road-warrior client (docs/road-warrior.md).

``RoadWarriorManager`` is an ``IkeManager`` that also knows virtual IPs (RFC 7296 section
3.15):

- a gateway's peer with ``pools`` has no configured inner prefix: the address its IKE SA
  assigned (``IkeSa.peer_virtual_ips``) becomes the tunnel peer's prefix (routes and the
  inner source check) when the IKE SA comes up. A tunnel peer that has no SA left and still
  holds an address that went to another client gives it up first, so that one address
  never routes to two peers;
- pools release the address of a client that has no IKE SA any more (``is_live``); a
  peer added by a reload shares the running pools of the same name and range;
- an IKE SA rekey (section 2.8) carries the addresses to the new IKE SA;
- ``stats`` has each pool's addresses in use, handed out, and refused for want of one.
"""

from __future__ import annotations

import logging

from ..addr import Network
from ..tunnel.peer import Peer
from .events import ChildRefused, IkeRekeyed
from .manager import IkeManager, IkePeer
from .pool import AddressPool
from .sa import IkeSa

log = logging.getLogger("nattunnel")


class RoadWarriorManager(IkeManager):
    """``IkeManager`` with virtual IPs: pools, and tunnel prefixes that follow them."""

    def add_peer(self, peer: IkePeer, now: float) -> None:
        """A peer added by ``nattunnel reload`` shares the pools (and their leases) of the
        peers already there: a pool is the same pool if its name and range are."""
        known = {p.key: p for p in self.pools()}
        peer.config.pools = tuple(known.get(p.key, p) for p in peer.config.pools)
        for pool in peer.config.pools:
            pool.is_live = self._has_sa
        super().add_peer(peer, now)

    def _has_sa(self, name: str) -> bool:
        return bool(self.sas_of(name))

    def pools(self) -> list[AddressPool]:
        """Every pool of the peers, once each."""
        seen: dict[int, AddressPool] = {}
        for p in self.peers.values():
            for pool in p.config.pools:
                seen.setdefault(id(pool), pool)
        return list(seen.values())

    def _tunnel_peer(self, ike: IkeSa) -> Peer | None:
        peer = super()._tunnel_peer(ike)
        vips = ike.peer_virtual_ips
        if peer is None or not vips or set(peer.allowed) == set(vips):
            return peer
        if peer.outbound is not None:
            return peer  # in use: its address is the pool's lease, which it still holds
        return self._readdress(peer, vips)

    def _readdress(self, peer: Peer, nets: tuple[Network, ...]) -> Peer:
        """The tunnel peer again with prefixes ``nets`` (it sends on no SA: at most inbound
        SAs in their grace period are lost)."""
        for other in list(self.tunnel.peers.values()):
            if other is peer or not any(n in other.allowed for n in nets):
                continue
            if other.outbound is not None:  # inbound SAs in their grace period may go
                log.error("peer %s: virtual IP %s is still routed to peer %s", peer.name,
                          ", ".join(map(str, nets)), other.name)
                return peer
            self._replace(other, ())
        return self._replace(peer, nets)

    def _replace(self, peer: Peer, nets: tuple[Network, ...]) -> Peer:
        self.tunnel.remove_peer(peer.name)
        fresh = self.tunnel.add_peer(peer.name, nets, keepalive_interval=peer.keepalive_interval)
        log.debug("peer %s: inner prefixes now %s", peer.name,
                  ", ".join(map(str, nets)) or "none")
        return fresh

    def _child_refused(self, ev: ChildRefused, now: float) -> None:
        """A client without its virtual IP (INTERNAL_ADDRESS_FAILURE, no CFG_REPLY) has no
        use for the IKE SA, and a CFG_REQUEST goes only in IKE_AUTH: it is deleted, and
        initiated again after the usual backoff."""
        super()._child_refused(ev, now)
        ike = ev.ike
        if ike.initiator and ike.config is not None and ike.config.vips \
                and not ike.virtual_ips:
            log.warning("peer %s: no virtual IP from the gateway: deleting the IKE SA; "
                        "initiating again later", ike.name)
            ike.delete(now)
            self._process(ike, now)

    def _ike_rekeyed(self, ev: IkeRekeyed) -> None:
        ev.new.virtual_ips, ev.new.virtual_dns = ev.old.virtual_ips, ev.old.virtual_dns
        ev.new.peer_virtual_ips = ev.old.peer_virtual_ips
        super()._ike_rekeyed(ev)

    def stats(self) -> dict[str, object]:
        out = super().stats()
        out["pools"] = [p.stats() for p in self.pools()]
        return out
