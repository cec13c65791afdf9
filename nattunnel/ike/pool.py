"""Virtual IP address pools of a gateway (RFC 7296 section 3.15, strongSwan's ``pools``):
addresses handed to road-warrior clients in a CFG_REPLY, with the DNS servers of the pool.

One address per client (the peer's name, which stands for one identity): a client that
authenticates again while it still holds one gets the same one back, and a client that comes
back after its lease went gets its last address again if nobody took it meanwhile. A lease
lasts while the client has an IKE SA (``is_live``, the manager's ``sas_of``): a lease whose
client has none is released the next time the pool is asked for an address or for its state,
so that no two clients ever hold one address and a gone client's address is free again.
A pool that has no free address answers None (the IKE SA answers INTERNAL_ADDRESS_FAILURE)
and counts it in ``exhausted``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_range(text: str) -> tuple[Address, Address]:
    """``"198.18.200.0/24"`` (without the network and, for IPv4, the broadcast address, as
    strongSwan hands them out), ``"198.18.200.10-198.18.200.50"`` (both ends included) or a
    single address: the first and last address to hand out. ValueError saying what is wrong."""
    text = text.strip()
    if "-" in text:
        a, b = (ipaddress.ip_address(x.strip()) for x in text.split("-", 1))
        if a.version != b.version:
            raise ValueError(f"'{text}': the two ends are of different address families")
        if int(b) < int(a):
            raise ValueError(f"'{text}': the range ends before it starts")
        return a, b
    if "/" not in text:
        a = ipaddress.ip_address(text)
        return a, a
    net = ipaddress.ip_network(text, strict=True)
    if net.num_addresses <= 2:
        return net[0], net[-1]
    last = net[-2] if net.version == 4 else net[-1]
    return net[1], last


@dataclass(eq=False)
class AddressPool:
    """One pool: a range of one address family and its DNS servers (the dataclass fields,
    what a configuration says), and its leases (plain attributes: two loads of one file
    compare equal, ``nattunnel reload``)."""

    name: str
    first: Address
    last: Address
    dns: tuple[Address, ...] = ()

    def __post_init__(self) -> None:
        #: whether a client still has an IKE SA (set by the IKE manager: ``sas_of``)
        self.is_live: Callable[[str], object] = lambda owner: True
        #: the address each client holds, and who holds each address (by its integer)
        self.leases: dict[str, Address] = {}
        self._taken: dict[int, str] = {}
        #: each client's last address, for handing it back (bounded: the pool's size)
        self._last: dict[str, int] = {}
        self._cursor = 0
        #: requests answered with no address, and addresses handed out
        self.exhausted = 0
        self.assigned = 0

    @property
    def key(self) -> tuple[str, int, int]:
        """What identifies the pool across loads of the configuration."""
        return self.name, int(self.first), int(self.last)

    @classmethod
    def of(cls, name: str, addrs: str, dns: Sequence[str] = ()) -> AddressPool:
        first, last = parse_range(addrs)
        return cls(name, first, last, tuple(ipaddress.ip_address(d) for d in dns))

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The prefixes that cover the pool (the gateway's routes to the TUN device)."""
        first, last = self.first, self.last
        if isinstance(first, ipaddress.IPv4Address) and isinstance(last, ipaddress.IPv4Address):
            return list(ipaddress.summarize_address_range(first, last))
        assert isinstance(first, ipaddress.IPv6Address)
        assert isinstance(last, ipaddress.IPv6Address)
        return list(ipaddress.summarize_address_range(first, last))

    def _sweep(self) -> None:
        """Release the leases of clients that have no IKE SA any more."""
        for owner in [o for o in self.leases if not self.is_live(o)]:
            self.release(owner)

    def release(self, owner: str) -> None:
        addr = self.leases.pop(owner, None)
        if addr is not None:
            self._taken.pop(int(addr), None)
            self._last[owner] = int(addr)

    def acquire(self, owner: str) -> Address | None:
        """The address of ``owner``: the one it holds, else its last one if free, else the
        next free one; None (counted) if every address is held by a live client."""
        held = self.leases.get(owner)
        if held is not None:
            return held
        self._sweep()
        start, size = int(self.first), self.size
        want = self._last.get(owner)
        if want is None or want in self._taken:
            want = None
            for i in range(size):
                candidate = start + (self._cursor + i) % size
                if candidate not in self._taken:
                    want = candidate
                    self._cursor = (candidate - start + 1) % size
                    break
        if want is None:
            self.exhausted += 1
            return None
        addr = ipaddress.ip_address(want)
        self.leases[owner] = addr
        self._taken[want] = owner
        if len(self._last) > size:
            self._last.pop(next(iter(self._last)))
        self.assigned += 1
        return addr

    def stats(self) -> dict[str, object]:
        self._sweep()
        return {"name": self.name, "range": f"{self.first}-{self.last}", "size": self.size,
                "in_use": len(self.leases), "assigned": self.assigned,
                "exhausted": self.exhausted,
                "leases": {o: str(a) for o, a in sorted(self.leases.items())}}
