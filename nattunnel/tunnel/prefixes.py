"""Disjoint IP prefixes with owners: which peer an inner address belongs to.

Every inner address belongs to at most one peer's allowed prefix (RFC 4301 section 4.4.1: the
SPD must not leave two SAs claiming one packet; WireGuard's allowed IPs work the same way), so
the table holds disjoint prefixes. Two CIDR prefixes are either disjoint or one contains the
other, so a table of disjoint ones sorted by first address answers both questions by bisection:
``conflict`` (does a new prefix overlap one held?) and ``lookup`` (whose prefix holds this
address?), each O(log n). Adding or removing is O(n) in list moves done in C.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from typing import Generic, TypeVar

from ..addr import Network

T = TypeVar("T")


def _nested(n: Network, o: Network) -> bool:
    """Whether ``n`` lies inside ``o``, another prefix of the same family."""
    if isinstance(n, ipaddress.IPv4Network) and isinstance(o, ipaddress.IPv4Network):
        return n != o and n.subnet_of(o)
    if isinstance(n, ipaddress.IPv6Network) and isinstance(o, ipaddress.IPv6Network):
        return n != o and n.subnet_of(o)
    return False


class _Family(Generic[T]):
    __slots__ = ("ends", "nets", "owners", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.nets: list[Network] = []
        self.owners: list[T] = []


class PrefixTable(Generic[T]):
    """Disjoint prefixes, IPv4 and IPv6, each with an owner."""

    def __init__(self) -> None:
        self._v4: _Family[T] = _Family()
        self._v6: _Family[T] = _Family()

    def _family(self, version: int) -> _Family[T]:
        return self._v4 if version == 4 else self._v6

    def conflict(self, net: Network) -> tuple[Network, T] | None:
        """A held prefix that overlaps ``net``, with its owner, or None."""
        f = self._family(net.version)
        start, end = int(net.network_address), int(net.broadcast_address)
        i = bisect_right(f.starts, start) - 1
        if i >= 0 and f.ends[i] >= start:
            return f.nets[i], f.owners[i]
        if i + 1 < len(f.starts) and f.starts[i + 1] <= end:
            return f.nets[i + 1], f.owners[i + 1]
        return None

    def add(self, net: Network, owner: T) -> None:
        """Hold ``net`` for ``owner``; ValueError if it overlaps a held prefix."""
        if (c := self.conflict(net)) is not None:
            raise ValueError(f"{net} overlaps {c[0]}")
        f = self._family(net.version)
        start = int(net.network_address)
        i = bisect_right(f.starts, start)
        f.starts.insert(i, start)
        f.ends.insert(i, int(net.broadcast_address))
        f.nets.insert(i, net)
        f.owners.insert(i, owner)

    def add_all(self, nets: Iterable[Network], owner: T) -> None:
        """Hold ``nets`` for ``owner``, who may list nested prefixes: only the outermost ones
        are held (they cover the rest). ValueError, and nothing added, if one overlaps
        another owner's prefix."""
        unique = list(dict.fromkeys(nets))
        outer = [n for n in unique if not any(_nested(n, o) for o in unique)]
        for net in outer:
            if (c := self.conflict(net)) is not None:
                raise ValueError(f"{net} overlaps {c[0]}")
        for net in outer:
            self.add(net, owner)

    def remove(self, owner: T) -> None:
        """Forget every prefix of ``owner``."""
        for f in (self._v4, self._v6):
            keep = [i for i, o in enumerate(f.owners) if o is not owner]
            if len(keep) != len(f.owners):
                f.starts = [f.starts[i] for i in keep]
                f.ends = [f.ends[i] for i in keep]
                f.nets = [f.nets[i] for i in keep]
                f.owners = [f.owners[i] for i in keep]

    def lookup4(self, addr: int) -> T | None:
        """The owner of the IPv4 prefix holding ``addr`` (as an integer), or None."""
        f = self._v4
        i = bisect_right(f.starts, addr) - 1
        return f.owners[i] if i >= 0 and f.ends[i] >= addr else None

    def lookup6(self, addr: int) -> T | None:
        f = self._v6
        i = bisect_right(f.starts, addr) - 1
        return f.owners[i] if i >= 0 and f.ends[i] >= addr else None

    def __len__(self) -> int:
        return len(self._v4.starts) + len(self._v6.starts)
