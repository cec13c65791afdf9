"""Road warriors and gateways (docs/road-warrior.md): the top-level ``[pools.NAME]`` tables
(a gateway's virtual IP address pools, as swanctl.conf's ``pools``) and a peer's ``vips``
(a client asks for an address of each family), ``pools`` (a gateway assigns from them) and
``dns_file`` (where a client writes the DNS servers it is given).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

from ..addr import Network
from ..ike.pool import AddressPool
from .fields import Fields, show

POOL_KEYS: Final = ("addrs", "dns")
#: a client's TSi before the gateway narrows it to the address it assigns (swanctl's
#: default ``local_ts = dynamic`` with ``vips``)
ANY_NET: Final = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
DEFAULT_DNS_FILE: Final = "/etc/resolv.conf"


class RoadWarriorFields(Fields):
    """The pools of the file (``pools``, read before the peers) and a peer's road-warrior
    fields."""

    #: the file's pools by name (``read_pools``)
    pools: dict[str, AddressPool]

    def read_pools(self, doc: dict[str, Any]) -> tuple[AddressPool, ...]:
        """``[pools.NAME]`` tables: ``addrs`` (a prefix, ``FIRST-LAST`` or one address) and
        ``dns`` (addresses). Two pools never overlap."""
        self.pools = {}
        tables = self.get(doc, "pools", "", dict, "a table of pools, e.g. [pools.rw] with "
                                                  "addrs = \"198.18.200.0/24\"", {})
        for name, t in tables.items():
            pre = f"pools.{name}."
            if not isinstance(t, dict):
                raise self.err(f"pools.{name}", "expected a table with addrs (and dns)")
            self.check_keys(t, POOL_KEYS, pre)
            addrs = self.get(t, "addrs", pre, str, "a prefix (\"198.18.200.0/24\") or a "
                                                   "range (\"198.18.200.10-198.18.200.99\")")
            dns = []
            for f, s in self.get_str_list(t, "dns", pre, "an array of DNS server addresses",
                                          []):
                try:
                    dns.append(str(ipaddress.ip_address(s)))
                except ValueError:
                    raise self.err(f, f"{show(s)} is not an IP address") from None
            try:
                pool = AddressPool.of(name, addrs, dns)
            except ValueError as e:
                raise self.err(pre + "addrs", f"{e}; expected a prefix, FIRST-LAST or an "
                                              "address") from None
            for other in self.pools.values():
                if other.version == pool.version and int(pool.first) <= int(other.last) \
                        and int(other.first) <= int(pool.last):
                    raise self.err(pre + "addrs", f"{show(addrs)} overlaps pool "
                                                  f"{other.name!r}; pools never share an "
                                                  "address")
            self.pools[name] = pool
        return tuple(self.pools.values())

    def vips(self, t: dict[str, Any], pre: str) -> tuple[int, ...]:
        """``vips = ["0.0.0.0", "::"]``: the families to ask the gateway for (swanctl's
        ``vips``; only the unspecified addresses: nattunnel takes what it is given)."""
        out: list[int] = []
        for f, s in self.get_str_list(t, "vips", pre, "an array of \"0.0.0.0\" and/or \"::\"",
                                      []):
            try:
                a = ipaddress.ip_address(s)
            except ValueError:
                a = None
            if a is None or not a.is_unspecified:
                raise self.err(f, f"{show(s)}: expected \"0.0.0.0\" (ask for an IPv4 address) "
                                  "or \"::\" (IPv6)")
            if a.version in out:
                raise self.err(f, f"{show(s)} is listed twice")
            out.append(a.version)
        return tuple(out)

    def peer_pools(self, t: dict[str, Any], pre: str) -> tuple[AddressPool, ...]:
        out = []
        for f, s in self.get_str_list(t, "pools", pre, "an array of pool names", []):
            pool = self.pools.get(s)
            if pool is None:
                known = ", ".join(self.pools) or "none"
                raise self.err(f, f"{show(s)} is not a pool of this file (pools: {known}); "
                                  "add a [pools.NAME] table")
            out.append(pool)
        return tuple(out)

    def road_warrior(self, t: dict[str, Any], pre: str
                     ) -> tuple[tuple[int, ...], str, tuple[AddressPool, ...]]:
        """A peer's ``vips``, ``dns_file`` and ``pools``."""
        vips = self.vips(t, pre)
        pools = self.peer_pools(t, pre)
        if vips and pools:
            raise self.err(pre + "pools", "a peer either asks for a virtual IP (vips: a "
                                          "client) or assigns them (pools: a gateway)")
        dns_file = self.get(t, "dns_file", pre, str, "the path of the resolver's file",
                            DEFAULT_DNS_FILE)
        if "\0" in dns_file or not dns_file:
            raise self.err(pre + "dns_file", "expected a file path")
        return vips, dns_file, pools

    @staticmethod
    def vip_local_ts(vips: tuple[int, ...]) -> tuple[Network, ...]:
        return tuple(ANY_NET[v] for v in vips)
