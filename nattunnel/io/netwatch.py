"""A small watcher of the host's addresses and routes, for MOBIKE (RFC 4555): an rtnetlink
socket (rtnetlink(7)) subscribed to address and route changes of both families, read
without blocking from the event loop (``loop.add_reader``), debounced: one ``on_change``
call for a burst (an interface going down takes its addresses and routes with it, a DHCP
lease brings several), DEBOUNCE after the last message of the burst and at most
DEBOUNCE_MAX after its first.

It decides nothing: the owner (``app.Node``) asks, on each change, where each MOBIKE peer is
reached from now (``source_towards``: the kernel's source address towards the peer, as the
endpoint finds it for a wildcard socket) and lets the IKE manager send UPDATE_SA_ADDRESSES
where it changed. ``addresses()`` lists the host's addresses (an RTM_GETADDR dump) for
MOBIKE's ADDITIONAL_*_ADDRESS.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..addr import Addr, sockaddr
from ..constants import (
    IFA_ADDRESS,
    IFA_LOCAL,
    IFF_RUNNING,
    IFF_UP,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_DELADDR,
    RTM_DELROUTE,
    RTM_GETADDR,
    RTM_NEWADDR,
    RTM_NEWROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    SIOCGIFFLAGS,
)

if TYPE_CHECKING:
    from .endpoint import Endpoint

log = logging.getLogger("nattunnel")

#: quiet time after the last change of a burst before ``on_change``; and the longest wait
#: after its first
DEBOUNCE = 0.1
DEBOUNCE_MAX = 0.5
#: netlink messages read per wakeup at most (the rest at the next one)
READ_BUDGET = 256
GROUPS = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
#: the message types that are a change (others, such as NLMSG_DONE, are not)
CHANGES = frozenset({RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE, RTM_DELROUTE})

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type


def _align(n: int) -> int:
    return (n + 3) & ~3


def message_types(data: bytes) -> list[int]:
    """The types of the netlink messages in one datagram (a truncated one ends the list)."""
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        out.append(kind)
        off += _align(length)
    return out


def _addresses_in(data: bytes) -> tuple[list[str], bool]:
    """The addresses of the RTM_NEWADDR messages in one dump datagram, and whether the
    dump is over (NLMSG_DONE or an error)."""
    found: list[str] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _f, _s, _p = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            return found, True
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return found, True
        if kind == RTM_NEWADDR:
            found += _ifaddr(data[off + _NLMSGHDR.size: off + length])
        off += _align(length)
    return found, False


def _ifaddr(body: bytes) -> list[str]:
    if len(body) < _IFADDRMSG.size:
        return []
    family, _plen, _flags, scope, index = _IFADDRMSG.unpack_from(body)
    size = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
    if not size or scope >= 253 or not _link_up(index):  # RT_SCOPE_HOST, _NOWHERE
        return []
    attrs: dict[int, bytes] = {}
    off = _align(_IFADDRMSG.size)
    while off + _RTATTR.size <= len(body):
        alen, atype = _RTATTR.unpack_from(body, off)
        if alen < _RTATTR.size or off + alen > len(body):
            break
        attrs[atype] = body[off + _RTATTR.size: off + alen]
        off += _align(alen)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or len(raw) != size:
        return []
    ip = ipaddress.ip_address(raw)
    return [] if ip.is_link_local or ip.is_loopback else [str(ip)]


def _link_up(index: int) -> bool:
    """Whether interface ``index`` is up and running (SIOCGIFFLAGS): an address on a link
    that is down (IPv4 keeps it) is not one to be reached at. True if it cannot be asked."""
    try:
        name = socket.if_indextoname(index)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH14x", name.encode()[:15], 0)
            flags = struct.unpack_from("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
    except OSError:
        return True
    return bool(flags & IFF_UP and flags & IFF_RUNNING)


def addresses() -> list[str]:
    """The host's addresses (this network namespace), global and site scope, IPv4 then
    IPv6, from an RTM_GETADDR dump; [] if netlink cannot be asked."""
    found: list[str] = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.settimeout(1.0)
            for family in (socket.AF_INET, socket.AF_INET6):
                req = _IFADDRMSG.pack(family, 0, 0, 0, 0)
                s.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(req), RTM_GETADDR,
                                      NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
                done = False
                while not done:
                    got, done = _addresses_in(s.recv(65536))
                    found += got
    except OSError as e:
        log.debug("the host's addresses could not be listed: %s", e)
    return list(dict.fromkeys(found))


def source_towards(remote_ip: str) -> str:
    """The source address the kernel picks towards ``remote_ip`` now (a routing lookup:
    a connected UDP socket sends nothing); OSError if there is no route."""
    fam = socket.AF_INET6 if ":" in remote_ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((remote_ip.split("%", 1)[0], 9))
        ip: str = s.getsockname()[0]
    return ip


class NetWatch:
    """Address and route changes, debounced, as ``on_change()`` calls."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._first: float | None = None
        #: netlink messages seen that were changes, and ``on_change`` calls made
        self.changes = 0
        self.calls = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the socket and read it from ``loop`` (OSError if netlink is not there)."""
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            s.bind((0, GROUPS))
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock, self._loop = s, loop
        loop.add_reader(s.fileno(), self._readable)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.sock is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _readable(self) -> None:
        assert self.sock is not None
        seen = 0
        for _ in range(READ_BUDGET):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ENOBUFS: changes were lost; a change all the same
                log.debug("netlink: %s", e)
                seen += 1
                continue
            seen += sum(kind in CHANGES for kind in message_types(data))
        if seen:
            self.changes += seen
            self._bump()

    def _bump(self) -> None:
        """A change: ``on_change`` DEBOUNCE from now, but no later than DEBOUNCE_MAX after
        the first change of the burst."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        if self._first is None:
            self._first = now
        at = min(now + DEBOUNCE, self._first + DEBOUNCE_MAX)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._first = None
        self.calls += 1
        try:
            self.on_change()
        except Exception:  # the watcher goes on
            log.exception("internal error handling an address or route change")


def mobike_local(endpoint: Endpoint, remote: Addr) -> Addr:
    """Our address towards ``remote`` on the NAT-T port now, for MOBIKE: the endpoint's
    answer (``Endpoint.local_address_towards``), except that with a wildcard NAT-T socket
    the kernel's source is looked up afresh (the endpoint keeps its answers a while, and
    after a move they are the old address's). OSError if there is no route."""
    local = endpoint.local_address_towards(remote, True)
    wildcard = any(ipaddress.ip_address(a[0].split("%", 1)[0]).is_unspecified
                   for a in endpoint.local_addresses())
    if not wildcard:
        return local
    return sockaddr(source_towards(remote[0]), local[1])
