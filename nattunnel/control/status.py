"""The status of a running endpoint as data: what ``nattunnel show --json`` prints, what
``Node.show()`` returns and what the metrics are made of.

One snapshot at one ``now`` (the endpoint's clock): for each peer where it is, whether NAT was
found and on which side, its IKE SAs (state, SPIs, proposal, age, time to rekey) with their
child SAs (SPIs, suite, age, time to rekey, packets and octets each), its counters
(cumulative across rekeys: ``Peer.totals``), the last packet and handshake, keepalives and
drops by reason; then the endpoint's own counters. Times are seconds, ages as "how long
ago", so that the data means the same on any host. Only plain types: it is JSON as it is.
"""

from __future__ import annotations

from typing import Any

from ..addr import format_addr
from ..esp.drop import DropCounters
from ..ike.base import Child, State
from ..ike.manager import IkeManager
from ..ike.roadwarrior import RoadWarriorManager
from ..ike.sa import IkeSa
from ..io.endpoint import Endpoint
from ..tunnel.peer import Peer

#: the snapshot's layout; a consumer checks it (``nattunnel show --json``)
FORMAT = 1


def _ago(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


def _until(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, then - now), 3)


def _spi(spi: int) -> str:
    return f"{spi:#010x}"


def _child(child: Child, peer: Peer | None, ike: IkeManager, endpoint: Endpoint,
           now: float) -> dict[str, Any]:
    inbound = endpoint.tunnel.inbound_sa(child.spi_in)
    out = peer.sending_sa(child.spi_out) if peer is not None else None
    in_use = out is not None
    return {
        "name": child.name, "spi_in": _spi(child.spi_in), "spi_out": _spi(child.spi_out),
        "suite": child.suite.name, "esn": child.esn,
        "local_ts": [str(n) for n in child.local_ts],
        "remote_ts": [str(n) for n in child.remote_ts],
        "age": _ago(now, ike.child_since.get(child.spi_in)),
        "rekey_in": _until(now, child.rekey_at),
        "expires_in": _until(now, child.expire_at),
        "in_use": in_use,
        "rx_packets": inbound.packets if inbound is not None else 0,
        "rx_bytes": inbound.bytes if inbound is not None else 0,
        # octets out are counted per peer; per SA only for the one in use
        "tx_packets": out.packets if in_use and out is not None else None,
        "tx_bytes": (peer.outbound_bytes() if peer is not None and out is peer.outbound
                     else None),
    }


def _ike_sa(sa: IkeSa, peer: Peer | None, ike: IkeManager, endpoint: Endpoint,
            now: float) -> dict[str, Any]:
    return {
        "state": sa.state.value,
        "initiator": sa.initiator,
        "spi_i": sa.spi_i.hex(), "spi_r": sa.spi_r.hex(),
        "proposal": sa.proposal.name if sa.proposal is not None else None,
        "local": format_addr(_sending_from(sa, endpoint)), "remote": format_addr(sa.remote),
        "natt": sa.natt,
        "nat": {"local_behind_nat": sa.local_behind_nat,
                "remote_behind_nat": sa.remote_behind_nat},
        "age": _ago(now, sa.created),
        "rekey_in": _until(now, sa.ike_rekey_at) if sa.established else None,
        "last_received": _ago(now, sa.last_rx),
        "rekeyed": sa.rekeyed,
        # MOBIKE (RFC 4555): negotiated, moves made, the peer's other addresses
        "mobike": sa.mobike, "path_updates": sa.path_updates,
        "peer_addresses": [str(a) for a in sa.peer_addresses],
        # virtual IPs (docs/road-warrior.md): ours from the gateway and its DNS servers, or
        # the one our pools gave the client
        "virtual_ips": [str(n.network_address) for n in sa.virtual_ips or sa.peer_virtual_ips],
        "dns": [str(d) for d in sa.virtual_dns],
        # IKE fragmentation (RFC 7383): negotiated, sent and reassembled, held, drops by reason
        "fragmentation": sa.fragments.status(sa.fragmentation),
        # how the peer authenticates (its identity, checked against its certificate's)
        "peer_id": str(sa.config.remote_id) if sa.config is not None else None,
        "peer_auth": _peer_auth(sa),
        "children": [_child(c, peer, ike, endpoint, now) for c in sa.children],
    }


def _peer_auth(sa: IkeSa) -> str | None:
    """"certificate", "pubkey" (a raw public key) or "psk"; None before IKE_AUTH."""
    if sa.config is None:
        return None
    if sa.config.trust is not None:
        return "certificate"
    return "pubkey" if sa.config.auth == "pubkey" else "psk"


def _sending_from(sa: IkeSa, endpoint: Endpoint) -> tuple[str, int]:
    """Where the IKE SA sends from now: its address, and after the move to NAT-T the port
    of our NAT-T socket of that family (``IkeSa.local`` stays the IKE_SA_INIT address, which
    the NAT detection hashes need)."""
    if not sa.natt:
        return sa.local[0], sa.local[1]
    v6 = ":" in sa.local[0]
    bound = endpoint.local_addresses()
    # the socket of its family; else a dual-stack [::] socket that carries IPv4 too
    same = [b for b in bound if (":" in b[0]) == v6] or bound
    return (sa.local[0], same[0][1]) if same else (sa.local[0], sa.local[1])


def _drops(peer: Peer) -> dict[str, int]:
    """The peer's drops by reason: its inbound SAs' (ICV, replay, ...) and its own."""
    total = DropCounters()
    for sa in peer.inbound:
        for i, n in enumerate(sa.drops.counts):
            total.counts[i] += n
    out = total.as_dict()
    if peer.source_drops:
        out["source_not_allowed"] = out.get("source_not_allowed", 0) + peer.source_drops
    return out


def _ike_counts(name: str, ike: IkeManager | None) -> dict[str, int]:
    """IKE SA rekeys, child SA rekeys and retransmitted requests with the peer."""
    counts = ike.peer_counters.get(name) if ike is not None else None
    return dict(counts) if counts else {"ike_rekeys": 0, "child_rekeys": 0, "retransmits": 0}


def peer_state(name: str, peer: Peer | None, ike: IkeManager | None) -> str:
    """"up" (an SA to send on), "connecting" (an IKE SA on its way), "held" (terminated by
    the operator), "waiting" (for the peer to initiate, or to initiate again), or "down"
    (a manual peer without an address or SA)."""
    if peer is not None and peer.outbound is not None and peer.addr is not None:
        return "up"
    if ike is None or name not in ike.peers:
        return "down"
    if name in ike.held:
        return "held"
    if any(sa.state is not State.ESTABLISHED for sa in ike.sas_of(name)):
        return "connecting"
    return "waiting"


def _instance(name: str, ike: IkeManager | None) -> dict[str, str] | None:
    inst = ike.instance(name) if isinstance(ike, RoadWarriorManager) else None
    return {"template": inst.template, "identity": str(inst.identity)} if inst else None


def peer_status(name: str, endpoint: Endpoint, ike: IkeManager | None,
                now: float) -> dict[str, Any]:
    peer = endpoint.tunnel.peers.get(name)
    managed = ike is not None and name in ike.peers
    tx_packets, tx_bytes, rx_packets, rx_bytes = peer.totals() if peer else (0, 0, 0, 0)
    sas = ike.sas_of(name) if ike is not None and managed else []
    up = [sa for sa in sas if sa.established and not sa.rekeyed]
    nat = ({"local_behind_nat": up[-1].local_behind_nat,
            "remote_behind_nat": up[-1].remote_behind_nat} if up else None)
    return {
        "name": name,
        "kind": "ike" if managed else "manual",
        # a template's client (remote_id = "%any", docs/road-warrior.md): template, identity
        "instance": _instance(name, ike),
        "state": peer_state(name, peer, ike),
        "endpoint": format_addr(peer.addr) if peer and peer.addr else None,
        "allowed_ips": [str(n) for n in peer.allowed] if peer else [],
        "nat": nat,
        "tx_packets": tx_packets, "tx_bytes": tx_bytes,
        "rx_packets": rx_packets, "rx_bytes": rx_bytes,
        "last_received": _ago(now, peer.last_rx) if peer and rx_packets else None,
        "last_handshake": (_ago(now, ike.last_handshake.get(name))
                           if ike is not None else None),
        "last_error": ike.last_error.get(name) if ike is not None else None,
        "keepalive": {"on": bool(peer and peer.keepalive),
                      "interval": peer.keepalive_interval if peer else None,
                      "sent": peer.keepalives_sent if peer else 0,
                      "received": peer.keepalives_received if peer else 0},
        "rebinds": peer.rebinds if peer else 0,
        # direct, or through the TURN relay (its relayed address and the peer's channel)
        "path": endpoint.relay_path(name),
        **_ike_counts(name, ike),
        "drops": _drops(peer) if peer else {},
        "ike_sas": [_ike_sa(sa, peer, ike, endpoint, now) for sa in sas] if ike else [],
    }


def snapshot(endpoint: Endpoint, ike: IkeManager | None, now: float, *,
             started: float, version: str, peer: str | None = None) -> dict[str, Any]:
    """The whole status at ``now`` (``peer``: that peer's only; KeyError if unknown)."""
    names = list(endpoint.tunnel.peers)
    if peer is not None:
        if peer not in names:
            raise KeyError(peer)
        names = [peer]
    s = endpoint.stats()
    return {
        "format": FORMAT,
        "version": version,
        "uptime": _ago(now, started),
        "listen": s["listen"],
        "peers": {n: peer_status(n, endpoint, ike, now) for n in names},
        "drops": s["drops"],
        "endpoint_drops": s["endpoint_drops"],
        "kernel_drops": s["kernel_drops"],
        "send_errors": s["send_errors"],
        "errors": s["errors"],
        "offload": s["offload"],
        # the TUN device's TCP and UDP coalescer (None: no TUN device with a vnet header)
        "coalescer": s.get("coalescer"),
        # STUN on the NAT-T socket: the tunnel's demultiplexing and the client's transactions
        "stun": {"demux": s.get("stun"), "client": s.get("stun_client")},
        # the TURN relay's allocation and counters (None: no relay)
        "turn": s.get("turn"),
        # IKEv2 mediation (docs/traversal.md): the client's connection, candidates, check
        # lists and chosen paths; a mediation server's registered peers
        "mediation": s.get("mediation"),
        "mediation_server": s.get("mediation_server"),
        "ike": ({k: v for k, v in ike.counters.items()} | {
            "sas": len(ike.sas), "requests_sent": ike.requests_sent,
            "exchanges": ike.exchanges.as_dict(),
            # peers' certificates refused, by cause (ike/certauth.py)
            "cert_refusals": dict(ike.cert_refusals)} | (
            {"pools": [p.stats() for p in ike.pools()]}
            if isinstance(ike, RoadWarriorManager) else {}))
        if ike is not None else None,
    }
