"""NAT types for the lab: routers whose nftables give the RFC 4787 behaviours, selectably.

Linux conntrack masquerade is one NAT: it keeps the source port when it can and filters by
address and port (replies must come from the exact remote address and port). This module
builds the others with nftables inside the router namespaces of ``nattunnel.lab.netns``:

- mapping: endpoint-independent (one external port per internal address:port, whatever the
  destination), address-dependent (one per destination address) or address-and-port-dependent
  (one per destination address:port: "symmetric", conntrack's ``snat ... fully-random``);
- filtering of unsolicited inbound packets to a mapping: endpoint-independent (anyone may
  send), address-dependent (only addresses the mapping has sent to) or address-and-port-
  dependent (only the exact address:port, which is conntrack's own reply matching);
- hairpinning (a host reaching another host behind the same NAT via its public
  address:port) on or off, and the UDP mapping timeout.

The folk names are constants: ``FULL_CONE`` (EIM + EIF), ``RESTRICTED_CONE`` (EIM + ADF),
``PORT_RESTRICTED_CONE`` (EIM + APDF), ``SYMMETRIC`` (APDM + APDF).

Endpoint-independent mapping is not native in conntrack, so the ruleset learns it: a
filter-type postrouting chain after source NAT records, for every outbound packet, the
internal address:port and the external port conntrack gave it (``@eim``, and ``@rev`` the
other way), and the NAT chains apply the records: postrouting snats a new flow of a known
internal endpoint to its recorded port, prerouting dnats unsolicited inbound packets to a
recorded port (when the filtering allows it) and hairpinned ones. ``nat_ruleset`` is the one
function that writes the ruleset text; docs/nat-types.md shows its output.

Topologies (``NatLab(topology=...)``): ``"one"`` (the existing lab shape: A and C behind one
NAT, B and E public), ``"two"`` (A behind NAT1, C behind NAT2, both on one WAN) and
``"stacked"`` (A and C behind a home NAT whose WAN side is the inside of a carrier-grade NAT)
and ``"stacked-two"`` (A behind a home NAT behind a CGN, C behind NAT2: double NAT on one side).
The lab only uses 198.18.0.0/15, so the CGN's shared address space (RFC 6598's
100.64.0.0/10) is emulated by 198.19.64.0/24 (``SHARED_NET``). ``NatLab`` is a ``Lab``: the
same per-run prefix, processes stopped by PID, namespaces deleted, crash records.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from nattunnel.lab.netns import HOST_ADDR, ConntrackEntry, Lab, parse_conntrack

__all__ = [
    "CLASSIC",
    "DEFAULT_TIMEOUT",
    "FULL_CONE",
    "PORT_RESTRICTED_CONE",
    "PUBLIC_ALT",
    "RESTRICTED_CONE",
    "SHARED_NET",
    "SYMMETRIC",
    "TOPOLOGIES",
    "Behaviour",
    "HostSpec",
    "NatLab",
    "NatType",
    "RouterNat",
    "RouterSpec",
    "Topology",
    "nat_ruleset",
]

DEFAULT_TIMEOUT = 120  # seconds; RFC 4787 REQ-5: a UDP mapping lives at least 2 minutes
SHARED_NET = "198.19.64.0/24"  # stands for RFC 6598's 100.64.0.0/10 (lab addresses only)
PUBLIC_ALT = "198.18.0.12"  # a second public address for B (RFC 5780 tests): add_address


class Behaviour(enum.Enum):
    """RFC 4787 terms for what a mapping (or its filter) depends on."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


EI = Behaviour.ENDPOINT_INDEPENDENT
AD = Behaviour.ADDRESS_DEPENDENT
APD = Behaviour.ADDRESS_AND_PORT_DEPENDENT


@dataclass(frozen=True)
class NatType:
    """One NAT's behaviour. ``preserve_port``: a new mapping keeps the internal port when no
    other mapping holds it (else a random port); without it every new mapping is random."""

    mapping: Behaviour
    filtering: Behaviour
    hairpin: bool = False
    preserve_port: bool = False

    FULL_CONE: ClassVar[NatType]
    RESTRICTED_CONE: ClassVar[NatType]
    PORT_RESTRICTED_CONE: ClassVar[NatType]
    SYMMETRIC: ClassVar[NatType]

    def but(self, **changes: Any) -> NatType:
        """A copy with some fields changed: ``FULL_CONE.but(hairpin=True)``."""
        return replace(self, **changes)

    @property
    def name(self) -> str:
        folk = {
            (EI, EI): "full cone",
            (EI, AD): "restricted cone",
            (EI, APD): "port restricted cone",
            (APD, APD): "symmetric",
        }.get((self.mapping, self.filtering), "")
        base = f"{self.mapping.value} mapping, {self.filtering.value} filtering"
        extra = ", hairpinning" if self.hairpin else ""
        return f"{folk} ({base}{extra})" if folk else base + extra


FULL_CONE = NatType.FULL_CONE = NatType(EI, EI)
RESTRICTED_CONE = NatType.RESTRICTED_CONE = NatType(EI, AD)
PORT_RESTRICTED_CONE = NatType.PORT_RESTRICTED_CONE = NatType(EI, APD)
SYMMETRIC = NatType.SYMMETRIC = NatType(APD, APD)
CLASSIC = {
    "full-cone": FULL_CONE,
    "restricted-cone": RESTRICTED_CONE,
    "port-restricted-cone": PORT_RESTRICTED_CONE,
    "symmetric": SYMMETRIC,
}


# --------------------------------------------------------------------------- the ruleset


def _secs(timeout: float) -> str:
    ms = round(timeout * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def nat_ruleset(
    nat: NatType,
    *,
    table: str,
    wan_if: str,
    lan_if: str,
    wan_addr: str,
    lan_net: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """The router's whole NAT table for ``nat`` (``nft -f`` input; replaces the table).

    Maps learned in ``learn`` (timeout ``timeout``, refreshed by every outbound packet):
    ``eim`` internal address . port [. remote address for address-dependent mapping] ->
    external port; ``rev`` external port -> internal address . port; ``ext`` the external ports
    in use; ``owner`` external port . internal address . port; ``sent`` external port . remote
    address, the addresses each mapping has sent to."""
    t, w, ud = _secs(timeout), wan_addr, "meta l4proto udp"
    key_t, key_pkt, key_ct = "ipv4_addr . inet_service", "ip saddr . udp sport", ""
    if nat.mapping is AD:
        key_t, key_pkt, key_ct = key_t + " . ipv4_addr", key_pkt + " . ip daddr", " . ip daddr"
    dnat = f"ip daddr {w} dnat ip to udp dport map @rev"
    inbound = {
        EI: f'iifname "{wan_if}" udp dport @ext {dnat}',
        AD: f'iifname "{wan_if}" udp dport . ip saddr @sent {dnat}',
        APD: "# (no rule: only conntrack's replies, from the exact address:port, get in)",
    }[nat.filtering]
    hairpin_in = f'iifname "{lan_if}" udp dport @ext {dnat}'
    out = f'oifname "{wan_if}" ip saddr {lan_net} {ud}'
    hp_out = f'oifname "{lan_if}" ip saddr {lan_net} ct status dnat {ud}'
    learned = f"snat ip to {w} : {key_pkt} map @eim"
    first = [f"{out} udp sport != @ext snat ip to {w}"] if nat.preserve_port else []
    cone = nat.mapping is not APD
    post = [
        "# hairpinned packets leave with their sender's mapping (RFC 4787 REQ-9)" * nat.hairpin,
        *([f"{hp_out} {learned}"] if nat.hairpin and cone else []),
        *([f"{hp_out} snat ip to {w} fully-random"] if nat.hairpin else []),
        f"# {nat.mapping.value} mapping: a known internal endpoint keeps its port"
        if cone
        else "# address-and-port-dependent mapping: a random port for every new flow",
        *([f"{out} {learned}"] if cone else []),
        *first,
        f"{out} snat ip to {w} fully-random",
        f'oifname "{wan_if}" ip saddr {lan_net} snat ip to {w}',  # other protocols
    ]
    learn = _learn_rules(nat, w, t, key_ct)
    sets = {
        "map eim": f"{key_t} : inet_service",
        "map rev": "inet_service : ipv4_addr . inet_service",
        "set ext": "inet_service",
        "set owner": "inet_service . ipv4_addr . inet_service",
        "set sent": "inet_service . ipv4_addr",
    }
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    lines += [f"  {k} {{ type {v}; flags timeout; timeout {t}; }}" for k, v in sets.items()]
    lines += _chain(
        "pre",
        "type nat hook prerouting priority dstnat; policy accept;",
        [
            f"# unsolicited inbound to a mapping: {nat.filtering.value} filtering",
            inbound,
            hairpin_in if nat.hairpin else "# no hairpinning",
        ],
    )
    lines += _chain("post", "type nat hook postrouting priority srcnat; policy accept;", post)
    lines += _chain(
        "learn", "type filter hook postrouting priority srcnat + 10; policy accept;", learn
    )
    # Unsolicited packets to the router's own address that no rule let in: dropped before
    # conntrack confirms them, so no stale entry can block a later mapping of that port.
    lines += _chain(
        "guard",
        "type filter hook prerouting priority dstnat + 10; policy accept;",
        [f"ip daddr {w} {ud} ct state new drop"],
    )
    return "\n".join([*lines, "}", ""])


def _learn_rules(nat: NatType, w: str, t: str, key_ct: str) -> list[str]:
    """The ``learn`` chain of ``nat_ruleset``: after source NAT, ``udp sport`` is the mapping."""
    ud = "meta l4proto udp"
    learn = [
        # The dropped packet's conntrack entry dies unconfirmed; the retry gets a new port.
        "# a new mapping on a port that another internal endpoint holds: drop, retry remaps"
        if nat.mapping is not APD
        else "# address-and-port-dependent mapping: every flow has its own port",
        f"ct direction original ct status snat ip saddr {w} {ud} ct state new udp sport @ext"
        " udp sport . ct original ip saddr . ct original proto-src != @owner drop"
        if nat.mapping is not APD
        else "",
        "# record each mapping, refreshed by every outbound packet",
    ]
    # Flows we started (the internal endpoint is the original source) and replies of flows
    # let in through a mapping (it is the reply source); either way udp sport is the mapping.
    cone = nat.mapping is not APD
    for direction, status, tup in (("original", "snat", "original"), ("reply", "dnat", "reply")):
        internal = f"ct {tup} ip saddr . ct {tup} proto-src"
        match = f"ct direction {direction} ct status {status} ip saddr {w} {ud}"
        learn += [
            *([f"{match} update @eim {{ {internal}{key_ct} timeout {t} : udp sport }}"] * cone),
            f"{match} update @rev {{ udp sport timeout {t} : {internal} }}",
            f"{match} update @owner {{ udp sport . {internal} timeout {t} }}",
            f"{match} update @ext {{ udp sport timeout {t} }} update @sent"
            f" {{ udp sport . ip daddr timeout {t} }}",
        ]
    return learn


def _chain(name: str, hook: str, rules: list[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {hook}", *(f"    {r}" for r in rules if r), "  }"]


# --------------------------------------------------------------------------- topologies


@dataclass(frozen=True)
class RouterSpec:
    """A NAT router: namespace role, its LAN and WAN segments and addresses (with prefix
    length), and its default route (a stacked home NAT routes via the CGN)."""

    role: str
    lan: str
    lan_addr: str
    wan: str
    wan_addr: str
    gateway: str | None = None


@dataclass(frozen=True)
class HostSpec:
    role: str
    segment: str
    addr: str  # with prefix length
    gateway: str | None = None


@dataclass(frozen=True)
class Topology:
    """Segments (bridges in the switch namespace), routers and hosts. ``main`` is the router
    ``Lab.router`` names (the one on the public WAN that A's traffic crosses)."""

    name: str
    segments: tuple[str, ...]
    routers: tuple[RouterSpec, ...]
    hosts: tuple[HostSpec, ...]
    main: str


_PUBLIC = (
    HostSpec("b", "wan", f"{HOST_ADDR['b']}/24"),
    HostSpec("e", "wan", f"{HOST_ADDR['e']}/24"),
)
TOPOLOGIES = {
    "one": Topology(
        "one",
        ("lan", "wan"),
        (RouterSpec("r", "lan", "198.19.1.1/24", "wan", "198.18.0.1/24"),),
        (
            HostSpec("a", "lan", "198.19.1.2/24", "198.19.1.1"),
            HostSpec("c", "lan", "198.19.1.3/24", "198.19.1.1"),
            *_PUBLIC,
        ),
        "r",
    ),
    "two": Topology(
        "two",
        ("lan1", "lan2", "wan"),
        (
            RouterSpec("r1", "lan1", "198.19.1.1/24", "wan", "198.18.0.1/24"),
            RouterSpec("r2", "lan2", "198.19.2.1/24", "wan", "198.18.0.4/24"),
        ),
        (
            HostSpec("a", "lan1", "198.19.1.2/24", "198.19.1.1"),
            HostSpec("c", "lan2", "198.19.2.2/24", "198.19.2.1"),
            *_PUBLIC,
        ),
        "r1",
    ),
    "stacked": Topology(
        "stacked",
        ("lan", "cgn", "wan"),
        (
            RouterSpec("home", "lan", "198.19.1.1/24", "cgn", "198.19.64.2/24", "198.19.64.1"),
            RouterSpec("cgn", "cgn", "198.19.64.1/24", "wan", "198.18.0.1/24"),
        ),
        (
            HostSpec("a", "lan", "198.19.1.2/24", "198.19.1.1"),
            HostSpec("c", "lan", "198.19.1.3/24", "198.19.1.1"),
            HostSpec("d", "cgn", "198.19.64.3/24", "198.19.64.1"),  # another CGN subscriber
            *_PUBLIC,
        ),
        "cgn",
    ),
    # double NAT on one side against a NAT on the other (the traversal matrix)
    "stacked-two": Topology(
        "stacked-two",
        ("lan", "cgn", "lan2", "wan"),
        (
            RouterSpec("home", "lan", "198.19.1.1/24", "cgn", "198.19.64.2/24", "198.19.64.1"),
            RouterSpec("cgn", "cgn", "198.19.64.1/24", "wan", "198.18.0.1/24"),
            RouterSpec("r2", "lan2", "198.19.2.1/24", "wan", "198.18.0.4/24"),
        ),
        (
            HostSpec("a", "lan", "198.19.1.2/24", "198.19.1.1"),
            HostSpec("c", "lan2", "198.19.2.2/24", "198.19.2.1"),
            *_PUBLIC,
        ),
        "cgn",
    ),
}


@dataclass
class RouterNat:
    """A router of a NatLab as built: namespace, interfaces, addresses, current NAT type."""

    role: str
    ns: str
    lan_if: str
    wan_if: str
    lan_addr: str
    wan_addr: str
    lan_net: str
    nat: NatType
    timeout: float


def _addr(cidr: str) -> str:
    return cidr.split("/")[0]


def _net(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).network)


# --------------------------------------------------------------------------- the lab


class NatLab(Lab):
    """A ``Lab`` whose routers are NAT types. ``nat``: one NatType for every router, or one
    per router role (``{"home": FULL_CONE, "cgn": SYMMETRIC}``). ``udp_timeout``: the mapping
    timeout in seconds (nftables maps and the routers' conntrack UDP timeouts alike).

    Hosts are a, b, c, e (``with_c``/``with_e`` as in ``Lab``) and, in the stacked topology,
    ``with_d``: D, another subscriber of the CGN (no home NAT); ``lab.routers`` maps router
    roles to ``RouterNat``; ``lab.router`` is the topology's main router, so the ``Lab``
    conntrack helpers work on it."""

    def __init__(
        self,
        topology: str | Topology = "one",
        nat: NatType | dict[str, NatType] = PORT_RESTRICTED_CONE,
        *,
        with_c: bool = True,
        with_e: bool = True,
        with_d: bool = False,
        udp_timeout: float = DEFAULT_TIMEOUT,
        prefix: str | None = None,
    ) -> None:
        self.topology = TOPOLOGIES[topology] if isinstance(topology, str) else topology
        roles = {r.role for r in self.topology.routers}
        nats = nat if isinstance(nat, dict) else {r: nat for r in roles}
        if set(nats) != roles:
            raise ValueError(f"nat must name exactly the routers {sorted(roles)}")
        if with_d and "d" not in {h.role for h in self.topology.hosts}:
            raise ValueError(f"topology {self.topology.name!r} has no host d")
        self._nats, self._timeout = nats, udp_timeout
        self.routers: dict[str, RouterNat] = {}
        self._with_d = with_d
        self._bridges: dict[str, str] = {}
        self._ports = 0
        super().__init__(with_c=with_c, with_e=with_e, prefix=prefix)

    # ------------------------------------------------------------------ building

    def _build(self, masquerade_random: bool | str) -> None:
        topo, p = self.topology, self.prefix
        if self._with_d:
            self.hosts.append("d")
        hosts = [h for h in topo.hosts if h.role in self.hosts]
        self.addr = {h.role: _addr(h.addr) for h in hosts}
        self.ns = {"s": f"{p}s"}
        self.ns.update({r.role: f"{p}{r.role}" for r in topo.routers})
        self.ns.update({h.role: f"{p}{h.role}" for h in hosts})
        for ns in self.ns.values():
            self._add_ns(ns)
        s = self.ns["s"]
        self._bridges = {seg: f"{p}B{i}" for i, seg in enumerate(topo.segments)}
        for br in self._bridges.values():
            self.exec(s, "ip", "link", "add", br, "type", "bridge")
            self.exec(s, "ip", "link", "set", br, "up")
        wire = self._wire

        for spec in topo.routers:
            ns = self.ns[spec.role]
            lan_if, wan_if = f"{p}{spec.role}l", f"{p}{spec.role}w"
            wire(ns, lan_if, spec.lan, spec.lan_addr)
            wire(ns, wan_if, spec.wan, spec.wan_addr)
            self.exec(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            if spec.gateway:
                self.exec(ns, "ip", "route", "add", "default", "via", spec.gateway)
            self.routers[spec.role] = RouterNat(
                spec.role,
                ns,
                lan_if,
                wan_if,
                _addr(spec.lan_addr),
                _addr(spec.wan_addr),
                _net(spec.lan_addr),
                self._nats[spec.role],
                self._timeout,
            )
        for h in hosts:
            wire(self.ns[h.role], "eth0", h.segment, h.addr)
            if h.gateway:
                self.exec(self.ns[h.role], "ip", "route", "add", "default", "via", h.gateway)
        main = self.routers[topo.main]
        self.router, self.wan_if, self.lan_if, self.wan_addr = (
            main.ns,
            main.wan_if,
            main.lan_if,
            main.wan_addr,
        )
        for role in self.routers:
            self._apply(role)

    def _wire(self, ns: str, ifname: str, segment: str, cidr: str) -> None:
        """A veth from a bridge port in the switch namespace to ``ifname`` in ``ns``."""
        s, port = self.ns["s"], f"{self.prefix}s{self._ports}"
        self._ports += 1
        self.exec(s, "ip", "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
        self.exec(s, "ip", "link", "set", port, "master", self._bridges[segment])
        self.exec(s, "ip", "link", "set", port, "up")
        self.exec(ns, "ip", "link", "set", ifname, "up")
        self.exec(ns, "ip", "addr", "add", cidr, "dev", ifname)

    def _apply(self, role: str) -> None:
        r = self.routers[role]
        self.exec(r.ns, "nft", "-f", "-", input=self.ruleset(role))
        secs = max(1, round(r.timeout))
        self.exec(
            r.ns,
            "sysctl",
            "-qw",
            f"net.netfilter.nf_conntrack_udp_timeout={secs}",
            f"net.netfilter.nf_conntrack_udp_timeout_stream={secs}",
        )

    # ------------------------------------------------------------------ knobs

    def ruleset(self, router: str) -> str:
        """The nftables text the router ``router`` (a role: 'r', 'r1', 'home', 'cgn') runs."""
        r = self.routers[router]
        return nat_ruleset(
            r.nat,
            table=f"{self.prefix}nat",
            wan_if=r.wan_if,
            lan_if=r.lan_if,
            wan_addr=r.wan_addr,
            lan_net=r.lan_net,
            timeout=r.timeout,
        )

    def set_nat(self, router: str, nat: NatType, *, flush: bool = True) -> None:
        """Switch a router to another NAT type at run time (one atomic ``nft -f``). The
        learned mappings go with the old table; ``flush`` also drops the router's conntrack
        entries, so that every flow is mapped afresh by the new type."""
        self.routers[router].nat = nat
        self._apply(router)
        if flush:
            self.exec(self.routers[router].ns, "conntrack", "-F", check=False)

    def set_udp_timeout(
        self, seconds: int | float, stream: int | float | None = None, *, router: str | None = None
    ) -> None:
        """The mapping timeout of one router (default: every router), in seconds: the
        nftables maps and both conntrack UDP timeouts (the larger of ``seconds`` and
        ``stream``). Rewrites the table, so learned mappings are forgotten."""
        for role in [router] if router else list(self.routers):
            self.routers[role].timeout = max(seconds, stream or 0)
            self._apply(role)

    def add_address(self, host: str, addr: str = PUBLIC_ALT, prefixlen: int = 24) -> str:
        """A second address on a host's eth0 (a public server with two addresses, as RFC
        5780 wants for coturn). Returns the address."""
        self.exec(host, "ip", "addr", "add", f"{addr}/{prefixlen}", "dev", "eth0")
        return addr

    def attach(self, host: str, segment: str, cidr: str, ifname: str = "eth1") -> str:
        """Another interface for a host, on another segment of the topology ("lan1", "lan2",
        "wan", ...): a host that can move between networks (MOBIKE). Routes are the caller's
        (``lab.exec(host, "ip", "route", "replace", "default", "via", ...)``). Returns the
        address."""
        self._wire(self.ns[host], ifname, segment, cidr)
        return _addr(cidr)

    def external(self, router: str) -> str:
        """The router's public (WAN) address."""
        return self.routers[router].wan_addr

    def conntrack_at(self, router: str, **match: str | int) -> list[ConntrackEntry]:
        """``Lab.conntrack_list`` for any router of the topology (a role)."""
        cp = self.exec(self.routers[router].ns, "conntrack", "-L", "-p", "udp")
        return [
            e
            for e in parse_conntrack(cp.stdout)
            if all(getattr(e, k) == v for k, v in match.items())
        ]

    def learned(self, router: str, name: str = "eim") -> list[str]:
        """The elements of one learned map or set of a router (``eim``, ``rev``, ``ext``,
        ``owner``, ``sent``), as nft prints them (``198.19.1.2 . 4000 : 31337``), without
        their timeouts."""
        r = self.routers[router]
        kind = "map" if name in ("eim", "rev") else "set"
        cp = self.exec(r.ns, "nft", "list", kind, "ip", f"{self.prefix}nat", name)
        m = re.search(r"elements = \{(.*?)\}", cp.stdout, re.S)
        if m is None:
            return []
        items = [re.sub(r"\s+(timeout|expires)\s+\S+", "", e).strip() for e in m[1].split(",")]
        return [" ".join(i.split()) for i in items if i]
