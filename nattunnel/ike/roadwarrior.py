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
- ``stats`` has each pool's addresses in use, handed out, and refused for want of one;
- a template peer (``remote_id = "%any"`` or a wildcard, ``nattunnel.ike.templates``) stands
  for every client it matches: a client that authenticated becomes an instance of it, a peer
  of its own (``TEMPLATE[IDENTITY]``: its IKE SAs, its lease, its tunnel peer routed to its
  virtual IP) that goes when its last IKE SA does. A newer IKE SA of the same identity
  replaces the older (strongSwan's ``uniqueids = yes``).
"""

from __future__ import annotations

import logging

from ..addr import Network
from ..tunnel.peer import Peer
from .base import State
from .config import Identity, IkeConfig
from .events import ChildRefused, DownCause, IkeDown, IkeRekeyed, IkeUp
from .manager import IkeManager, IkePeer
from .pool import AddressPool
from .sa import IkeSa
from .templates import Instance, Templates

log = logging.getLogger("nattunnel")


class RoadWarriorManager(IkeManager):
    """``IkeManager`` with virtual IPs: pools, and tunnel prefixes that follow them."""

    #: the template peers and their instances (created at first use)
    _templates: Templates | None = None

    @property
    def templates(self) -> Templates:
        if self._templates is None:
            self._templates = Templates()
        return self._templates

    def add_peer(self, peer: IkePeer, now: float) -> None:
        """A peer added by ``nattunnel reload`` shares the pools (and their leases) of the
        peers already there: a pool is the same pool if its name and range are."""
        known = {p.key: p for p in self.pools()}
        peer.config.pools = tuple(known.get(p.key, p) for p in peer.config.pools)
        for pool in peer.config.pools:
            pool.is_live = self._has_sa
        super().add_peer(peer, now)
        if Templates.is_template(peer.config):
            self.templates.add(peer.config)

    # --- templates: one peer for many clients (nattunnel.ike.templates) ---------------------
    def _lookup(self, idi: Identity, idr: Identity | None) -> IkeConfig | None:
        """A peer that names ``idi`` (a client's instance too) wins over a template."""
        found = super()._lookup(idi, idr)
        if found is None and self._templates is not None:
            found = self._templates.lookup(idi, idr)
        return found

    def instance(self, name: str) -> Instance | None:
        """The instance of a template named ``name``, if it is one."""
        return self._templates.instances.get(name) if self._templates else None

    def _ike_up(self, ev: IkeUp, now: float) -> None:
        ike = ev.ike
        tpl = self._templates.template_of(ike.name) if self._templates else None
        if tpl is not None and not self._instantiate(ike, tpl, now):
            return
        super()._ike_up(ev, now)

    def _instantiate(self, ike: IkeSa, template: str, now: float) -> bool:
        """The authenticated IKE SA ``ike`` of a template's client: its instance (made now if
        it is the client's first), its older IKE SAs deleted; False (and ``ike`` deleted) if
        the client has no virtual IP or the template no room for another client."""
        assert ike.config is not None and self._templates is not None
        name = ike.name
        if name not in self._templates.instances:
            why = ("it has no virtual IP from the pools (no CFG_REQUEST, or none free)"
                   if not ike.peer_virtual_ips else
                   None if self._templates.room(template) else
                   "the peer has as many clients as max_clients or its pools allow")
            if why is not None:
                log.warning("peer %s: client %s authenticated, but %s: deleting its IKE SA",
                            template, ike.config.remote_id, why)
                self.last_error[template] = f"client {ike.config.remote_id} refused: {why}"
                ike.delete(now)
                self._process(ike, now)  # the Delete goes now (its other events with it)
                return False
            self._templates.register(ike.config, template)
            self.add_peer(IkePeer(ike.config, initiate=False, remote=None), now)
            self.tunnel.add_peer(name, (), keepalive_interval=ike.config.keepalive_interval,
                                 now=now)
            log.info("peer %s: client %s is peer %s", template, ike.config.remote_id, name)
        elif not ike.initial_contact:  # with INITIAL_CONTACT the manager forgets them
            self._index(ike)  # first: an older one that dies at once leaves the instance
            for old in self.sas_of(name):
                if old is not ike and old.established and not old.rekeyed:
                    log.info("peer %s: a newer IKE SA of the same identity replaces the "
                             "older (uniqueids)", name)
                    old.delete(now)
                    self._process(old, now)
        return True

    def _ike_down(self, ev: IkeDown, now: float) -> None:
        name = ev.ike.name
        tpl = self._templates.template_of(name) if self._templates else None
        super()._ike_down(ev, now)
        if tpl is None or self._templates is None:
            return
        if name not in self._templates.instances:
            # never an instance (authentication failed, or refused): nothing by its name
            err = self.last_error.pop(name, None)
            if err is not None and ev.ike.config is not None \
                    and ev.cause is not DownCause.DELETED:  # ours: _instantiate said why
                self.last_error[tpl] = f"client {ev.ike.config.remote_id}: {err}"
            self.peer_counters.pop(name, None)
            self.last_handshake.pop(name, None)
        elif not any(sa is not ev.ike and sa.state is not State.DEAD
                     for sa in self.sas_of(name)):
            self._drop_instance(name, now)

    def _drop_instance(self, name: str, now: float) -> None:
        """The instance's last IKE SA went: the instance, its lease and tunnel peer go."""
        assert self._templates is not None
        inst = self._templates.instances.pop(name)
        peer = self.peers.get(name)
        if peer is not None:
            self.remove_peer(name, now)
            for pool in peer.config.pools:
                pool.release(name)
        if name in self.tunnel.peers:
            self.tunnel.remove_peer(name)
        log.info("peer %s: client %s gone (peer %s removed)", inst.template, inst.identity,
                 name)

    def remove_peer(self, name: str, now: float) -> None:
        """A template that goes takes its instances with it (a Delete for each IKE SA;
        each instance goes with its last)."""
        if self._templates is not None and name in self._templates.configs:
            for inst in self._templates.remove(name):
                if inst.name in self.peers:
                    self.terminate(inst.name, now)
        super().remove_peer(name, now)

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
        if self._templates is not None:
            out["instances"] = {i.name: {"template": i.template, "identity": str(i.identity)}
                                for i in self._templates.instances.values()}
        return out
