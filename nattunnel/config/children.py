"""A peer's ``[[peer.children]]`` tables: several child SAs under one IKE SA, each with its
own traffic selectors (swanctl.conf's ``children { NAME { local_ts remote_ts } }``; docs/
config.md, "Several subnets"). The peer's ``local_ts`` and ``allowed_ips`` are each child's
defaults, and a child's ``remote_ts`` lies inside ``allowed_ips``: the routing table sends a
destination to the peer by its ``allowed_ips``, and the peer to the child SA by its selectors.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Final

from ..addr import Network
from ..ike.base import MAX_CHILDREN
from ..ike.config import ChildConfig
from .fields import Fields, got, show

CHILD_KEYS: Final = ("name", "local_ts", "remote_ts")
CHILD_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _inside(net: Network, nets: tuple[Network, ...]) -> bool:
    """Whether ``net`` lies inside one of ``nets`` (of its own address family)."""
    for n in nets:
        if isinstance(net, IPv4Network) and isinstance(n, IPv4Network) and net.subnet_of(n):
            return True
        if isinstance(net, IPv6Network) and isinstance(n, IPv6Network) and net.subnet_of(n):
            return True
    return False


class ChildrenFields(Fields):
    """``children``: an array of tables with ``name``, ``local_ts`` and ``remote_ts``."""

    def children(self, t: dict[str, Any], pre: str, local_ts: tuple[Network, ...],
                 remote_ts: tuple[Network, ...], *, vips: bool) -> tuple[ChildConfig, ...]:
        """The child SAs a peer asks for, or () for the one child of ``local_ts`` and
        ``remote_ts`` (the peer's ``allowed_ips``)."""
        if "children" not in t:
            return ()
        field = pre + "children"
        tables = t["children"]
        if not isinstance(tables, list) or not all(isinstance(c, dict) for c in tables):
            raise self.err(field, f"expected an array of tables ([[peer.children]] with "
                                  f"name, local_ts and remote_ts), {got(tables)}")
        if not tables:
            raise self.err(field, "is empty; list the child SAs, or leave children out for "
                                  "one child SA with local_ts and allowed_ips")
        if len(tables) > MAX_CHILDREN:
            raise self.err(field, f"has {len(tables)} child SAs; at most {MAX_CHILDREN}")
        if t.get("mediation") is True:
            raise self.err(field, "a mediation connection has no child SAs")
        out: list[ChildConfig] = []
        for i, c in enumerate(tables):
            out.append(self._child(c, f"{field}[{i}].", local_ts, remote_ts, vips, out))
        return tuple(out)

    def _child(self, c: dict[str, Any], pre: str, local_ts: tuple[Network, ...],
               remote_ts: tuple[Network, ...], vips: bool, before: list[ChildConfig]
               ) -> ChildConfig:
        self.check_keys(c, CHILD_KEYS, pre)
        name = self.get(c, "name", pre, str, "a string of letters, digits, '_', '.', '-'")
        if not CHILD_NAME.fullmatch(name):
            raise self.err(pre + "name", f"{show(name)} is not a valid child name; use 1..64 "
                                         f"of A-Z a-z 0-9 _ . -")
        if any(b.name == name for b in before):
            raise self.err(pre + "name", f"{show(name)} names another child SA of this peer "
                                         f"too; each child's name is its own")
        mine = local_ts
        if "local_ts" in c:
            if vips:
                raise self.err(pre + "local_ts", "with vips the local side of every child SA "
                                                 "is the virtual IP the gateway assigns; "
                                                 "remove local_ts")
            mine = self._prefixes(c, "local_ts", pre)
        theirs = remote_ts
        if "remote_ts" in c:
            if not remote_ts:
                raise self.err(pre + "remote_ts", "this peer's remote side is the address "
                                                  "its pool assigns (it has no allowed_ips); "
                                                  "remove remote_ts")
            theirs = self._prefixes(c, "remote_ts", pre)
            for i, net in enumerate(theirs):
                if not _inside(net, remote_ts):
                    raise self.err(f"{pre}remote_ts[{i}]", f"{net} lies outside the peer's "
                                                           f"allowed_ips, so no packet to it "
                                                           f"would be routed to this peer; "
                                                           f"add it to allowed_ips")
        same = next((b for b in before if (b.local_ts, b.remote_ts) == (mine, theirs)), None)
        if same is not None:
            raise self.err(pre + "remote_ts", f"child {name!r} has the same traffic "
                                              f"selectors as child {same.name!r}")
        return ChildConfig(name, mine, theirs)

    def _prefixes(self, c: dict[str, Any], key: str, pre: str) -> tuple[Network, ...]:
        nets = [self.network(f, s) for f, s in self.get_str_list(
            c, key, pre, "an array of inner prefixes, e.g. [\"198.18.50.0/24\"]")]
        if not nets:
            raise self.err(pre + key, "is empty; list its prefixes, or leave it out for the "
                                      "peer's")
        return tuple(nets)
