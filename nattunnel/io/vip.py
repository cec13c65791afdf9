"""A road-warrior client's host configuration (docs/road-warrior.md): the virtual IP address
the gateway assigned (RFC 7296 section 3.15) on the TUN device, routes for the traffic
selectors the gateway agreed to, and the DNS servers it gave in the resolver's file; all of
it undone when the peer goes down and when the endpoint stops.

Full tunnel (a traffic selector of 0.0.0.0/0 or ::/0) without losing the way to the gateway:
the default route is left alone and two halves (0.0.0.0/1 and 128.0.0.0/1, ::/1 and 8000::/1)
go to the TUN device instead, more specific than any default route; and the gateway's outer
address gets a host route through the path it had before (``ip route get``: its gateway and
device), more specific still, so that IKE and ESP keep going the old way. Nothing is
replaced, so a crash leaves the host's own routes as they were. OpenVPN's ``def1`` does the
same; wg-quick's policy rules (fwmark) would need the sockets marked.

DNS: the servers are written to ``dns_file`` (``/etc/resolv.conf`` unless the peer says
otherwise; in a network namespace made by ``ip netns``, ``/etc/netns/NAME/resolv.conf``),
rewritten in place (so that a bind mount keeps working), and the old content put back.

The commands are iproute2's (``ip``). Part of ``nattunnel.io``; imports the standard library
and, for types, ``nattunnel.ike``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..addr import Network
    from ..ike.config import IkeConfig
    from ..ike.manager import IkeManager, PeerDown, PeerUp
    from ..ike.sa import IkeSa

log = logging.getLogger("nattunnel")

IP_TIMEOUT = 10.0
_SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"
#: the halves that stand for a default route (more specific than it, never replacing it)
HALVES = {
    4: (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1")),
    6: (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1")),
}


class VipError(RuntimeError):
    """An ``ip`` command failed."""


def run_ip(args: Sequence[str], *, check: bool = True) -> str:
    """``ip ARGS``'s output; VipError (with its stderr) if it fails and ``check``."""
    exe = shutil.which("ip", path=_SBIN_PATH)
    if exe is None:
        raise VipError("iproute2 is not installed ('ip' not found): apt-get install iproute2")
    try:
        cp = subprocess.run([exe, *args], capture_output=True, text=True, timeout=IP_TIMEOUT,
                            check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        if check:
            raise VipError(f"'ip {' '.join(args)}': {e}") from e
        return ""
    if check and cp.returncode != 0:
        raise VipError(f"'ip {' '.join(args)}' failed: {cp.stderr.strip() or cp.returncode}")
    return cp.stdout


def route_to(addr: str) -> list[str]:
    """The ``via``/``dev`` part of the route the kernel takes to ``addr`` now."""
    out = run_ip(["-j", "route", "get", addr])
    info = json.loads(out)[0] if out.strip() else {}
    args = []
    if info.get("gateway"):
        args += ["via", str(info["gateway"])]
    if info.get("dev"):
        args += ["dev", str(info["dev"])]
    return args


def tunnel_routes(nets: Sequence[Network], versions: set[int]) -> list[Network]:
    """The routes to the TUN device for these traffic selectors: a default one as two halves,
    only for the families we have an address of."""
    out: list[Network] = []
    for n in nets:
        if n.version not in versions:
            continue
        for r in HALVES[n.version] if n.prefixlen == 0 else (n,):
            if r not in out:
                out.append(r)
    return out


@dataclass
class Applied:
    """What was done for one peer, to be undone."""

    addresses: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    host_routes: list[str] = field(default_factory=list)
    dns_file: str | None = None
    #: the file's content before (None: it did not exist)
    dns_before: bytes | None = None
    key: tuple[str, ...] = ()


class VirtualIps:
    """Puts each road-warrior peer's virtual IPs, routes and DNS on the host (``PeerUp``)
    and takes them off again (``PeerDown``, ``close``)."""

    def __init__(self, device: str, ike: IkeManager, peers: dict[str, IkeConfig]) -> None:
        """``peers``: the configuration's; a peer the manager has (one added by ``nattunnel
        reload``) is looked up there at each event."""
        self.device = device
        self.ike = ike
        self.peers = dict(peers)
        self.applied: dict[str, Applied] = {}

    def _config(self, name: str) -> IkeConfig | None:
        peer = self.ike.peers.get(name)
        cfg = peer.config if peer is not None else self.peers.get(name)
        return cfg if cfg is not None and cfg.vips else None

    def peer_event(self, ev: PeerUp | PeerDown) -> None:
        """Never raises: a failure is logged (the tunnel stays up without the host side)."""
        if self._config(ev.name) is None and ev.name not in self.applied:
            return
        from ..ike.manager import PeerUp

        try:
            if isinstance(ev, PeerUp):
                self._up(ev.name)
            else:
                self._undo(ev.name)
        except (VipError, OSError, ValueError) as e:
            log.error("peer %s: the virtual IP configuration failed: %s", ev.name, e)

    def _sa(self, name: str) -> IkeSa | None:
        return next((sa for sa in reversed(self.ike.sas_of(name)) if sa.virtual_ips), None)

    def _up(self, name: str) -> None:
        sa = self._sa(name)
        if sa is None:
            return
        remote_ts = [n for c in sa.children for n in c.remote_ts]
        key = (*map(str, sa.virtual_ips), *map(str, remote_ts), *map(str, sa.virtual_dns),
               sa.remote[0])
        old = self.applied.get(name)
        if old is not None and old.key == key:
            return
        self._undo(name)
        done = self.applied[name] = Applied(key=key)
        dev = self.device
        src: dict[int, str] = {}
        for vip in sa.virtual_ips:
            a = f"{vip.network_address}/{vip.max_prefixlen}"
            run_ip(["addr", "add", a, "dev", dev] + (["nodad"] if vip.version == 6 else []))
            done.addresses.append(a)
            src.setdefault(vip.version, str(vip.network_address))
        routes = tunnel_routes(remote_ts, set(src))
        outer = ipaddress.ip_address(sa.remote[0].split("%", 1)[0])
        if isinstance(outer, ipaddress.IPv6Address) and outer.ipv4_mapped is not None:
            outer = outer.ipv4_mapped
        if any(r.version == outer.version and outer in r for r in routes):
            host = f"{outer}/{outer.max_prefixlen}"
            run_ip(["route", "replace", host, *route_to(str(outer))])
            done.host_routes.append(host)
        for r in routes:
            run_ip(["route", "replace", str(r), "dev", dev, "src", src[r.version]])
            done.routes.append(str(r))
        cfg = self._config(name)
        if sa.virtual_dns and cfg is not None:
            self._write_dns(cfg.dns_file, sa, done)
        log.info("peer %s: virtual IP %s on %s, routes %s%s", name,
                 ", ".join(done.addresses), dev, ", ".join(done.routes) or "none",
                 f", DNS in {done.dns_file}" if done.dns_file else "")

    @staticmethod
    def _write_dns(path: str, sa: IkeSa, done: Applied) -> None:
        before = None
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            before = f.read()
        text = "# written by nattunnel for the IKE peer's DNS servers (RFC 7296 CFG_REPLY)\n"
        text += "".join(f"nameserver {d}\n" for d in sa.virtual_dns)
        done.dns_file, done.dns_before = path, before
        _rewrite(path, text.encode())

    def _undo(self, name: str) -> None:
        done = self.applied.pop(name, None)
        if done is None:
            return
        dev = self.device
        for r in reversed(done.routes):
            run_ip(["route", "del", r, "dev", dev], check=False)
        for h in reversed(done.host_routes):
            run_ip(["route", "del", h], check=False)
        for a in reversed(done.addresses):
            run_ip(["addr", "del", a, "dev", dev], check=False)
        if done.dns_file is not None:
            if done.dns_before is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(done.dns_file)
            else:
                _rewrite(done.dns_file, done.dns_before)
        log.info("peer %s: virtual IP configuration removed", name)

    def close(self) -> None:
        for name in list(self.applied):
            try:
                self._undo(name)
            except OSError as e:
                log.error("peer %s: removing the virtual IP configuration: %s", name, e)


def _rewrite(path: str, data: bytes) -> None:
    """Write ``data`` over the file in place (a bind-mounted resolv.conf cannot be renamed
    over)."""
    with open(path, "wb") as f:
        f.write(data)
