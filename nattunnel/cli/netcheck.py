"""``nattunnel netcheck [SERVER ...] [--json] [--lifetime] [--timeout S] [--port P]``: what
kind of NAT this host sits behind, from STUN servers (RFC 5780-capable ones for mapping and
filtering).

A thin asyncio driver around ``nattunnel.traversal.netcheck.NetCheck`` (the sans-I/O core):
plain non-blocking UDP sockets, opened when the core first names them (socket 0 on
``--port``, the others on ephemeral ports), fed to the core with the loop's clock, one timer.
No root needed. Exit status 0 when a server answered, 1 when none did ("UDP blocked or server
down"), 2 for a bad argument or a name that does not resolve.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from typing import TYPE_CHECKING

from ..addr import format_addr
from .common import Subparsers, fail

if TYPE_CHECKING:
    from ..traversal.netcheck import NetCheck, NetcheckResult

#: STUN's port (RFC 8489 section 18.6)
DEFAULT_PORT = 3478
#: used when no SERVER is given
DEFAULT_SERVERS = ("stun.l.google.com:19302", "stun.cloudflare.com:3478")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "netcheck", help="classify the NAT in front of this host (STUN, RFC 5780)",
        description="Ask STUN servers what this host looks like from outside: UDP reachable "
                    "or blocked, the reflexive address per server, the NAT's mapping and "
                    "filtering behaviour (RFC 4787: endpoint-independent, address-dependent, "
                    "address-and-port-dependent; needs a server with RFC 5780's "
                    "OTHER-ADDRESS, such as coturn with two listening addresses), "
                    "hairpinning, whether the local port is kept, and with --lifetime how "
                    "long an idle mapping lives. Within 5 s (the lifetime probe excepted). "
                    "No root needed.")
    p.add_argument("servers", nargs="*", metavar="SERVER",
                   help=f"host[:port] or [v6]:port (default port {DEFAULT_PORT}; default "
                        f"servers: {', '.join(DEFAULT_SERVERS)})")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--lifetime", action="store_true",
                   help="also measure the mapping lifetime (RFC 5780 section 4.6): takes up "
                        "to --lifetime-max seconds more")
    p.add_argument("--lifetime-max", type=float, default=120.0, metavar="S",
                   help="the longest idle time the lifetime probe tries (default 120 s)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="the whole check, the lifetime probe excepted (default 5 s)")
    p.add_argument("--port", type=int, default=0, metavar="P",
                   help="the local UDP port of the main socket (default: any)")
    p.set_defaults(func=run)


def parse_server(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a bare IPv6 address is a host."""
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad server {text!r}: no closing ]")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad server {text!r}")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(text, p)
    if not host:
        raise ValueError(f"bad server {text!r}: no host")
    return host, port


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"bad server {text!r}: the port must be 1-65535")
    return int(value)


def resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    """(family, (address, port)) of a server; OSError (socket.gaierror) if it does not
    resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    # prefer IPv4 when a name has both: the lab and most STUN servers speak it
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    family, _, _, _, addr = infos[0]
    return family, (str(addr[0]), int(addr[1]))


def run(args: argparse.Namespace) -> int:
    from ..traversal.netcheck import NetCheck

    if args.timeout <= 0 or args.lifetime_max <= 0:
        return fail("netcheck", "--timeout and --lifetime-max must be positive")
    if not 0 <= args.port < 65536:
        return fail("netcheck", "--port must be 0-65535")
    names: list[str] = []
    servers: list[tuple[str, int]] = []
    families: set[int] = set()
    for name in args.servers or DEFAULT_SERVERS:
        try:
            host, port = parse_server(name)
            family, addr = resolve(host, port)
        except ValueError as e:
            return fail("netcheck", str(e))
        except OSError as e:
            return fail("netcheck", f"cannot resolve {name!r}: {e.strerror or e}")
        families.add(family)
        servers.append(addr)
        names.append(format_addr((host, port)))
    if len(families) > 1:
        return fail("netcheck", "the servers mix IPv4 and IPv6: give one family")
    family = families.pop()
    loop_time = asyncio.new_event_loop()
    try:
        core = NetCheck(servers, loop_time.time(), names=names, timeout=args.timeout,
                        lifetime=args.lifetime, lifetime_max=args.lifetime_max)
        try:
            loop_time.run_until_complete(drive(core, family, args.port))
        except OSError as e:
            return fail("netcheck", f"socket: {e.strerror or e}")
    finally:
        loop_time.close()
    result = core.result
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        sys.stdout.write(format_table(result))
    if not result.udp:
        return fail("netcheck", "no answer from " + ", ".join(names)
                    + ": UDP blocked or server down", 1)
    if not any(s.reflexive for s in result.servers):
        return fail("netcheck", "no server gave a reflexive address: " + "; ".join(
            f"{s.server}: {s.error}" for s in result.servers), 1)
    return 0


def _local_ip(family: int, server: tuple[str, int]) -> str:
    """Our source address towards ``server`` (the kernel's route choice; nothing is sent)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect(server)
        except OSError:
            return "::" if family == socket.AF_INET6 else "0.0.0.0"
        return str(s.getsockname()[0])


async def drive(core: NetCheck, family: int, port: int) -> None:
    """Run ``core`` to its end on real sockets."""
    loop = asyncio.get_running_loop()
    socks: dict[int, socket.socket] = {}
    wake = asyncio.Event()
    local_ip = _local_ip(family, core.result.servers[0].address)
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"

    def readable(index: int, s: socket.socket) -> None:
        for _ in range(64):
            try:
                data, addr = s.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error queued on the socket: nothing to read
                continue
            core.receive_datagram(index, data, addr, loop.time())
        wake.set()

    def open_socket(index: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.bind((wildcard, port if index == 0 else 0))
        except OSError:
            s.close()
            raise
        socks[index] = s
        loop.add_reader(s.fileno(), readable, index, s)
        core.socket_bound(index, (local_ip, s.getsockname()[1]))
        return s

    try:
        while not core.done:
            for out in core.datagrams_to_send():
                s = socks.get(out.socket) or open_socket(out.socket)
                with contextlib.suppress(OSError):  # the core retransmits on its own
                    s.sendto(out.data, out.addr)
            timer = core.get_timer()
            if timer is None:
                break
            delay = timer - loop.time()
            if delay > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
            if loop.time() >= timer:
                core.handle_timer(loop.time())
    finally:
        for s in socks.values():
            loop.remove_reader(s.fileno())
            s.close()


def _yes(value: bool | None, yes: str = "yes", no: str = "no") -> str:
    return "unknown" if value is None else yes if value else no


def format_table(r: NetcheckResult) -> str:
    """The result as the text table (the same fields as ``--json``)."""
    rows = [("udp", "reachable" if r.udp else "blocked (no answer)"),
            ("local", format_addr(r.local) if r.local else "unknown")]
    for s in r.servers:
        if s.reflexive is None:
            rows.append(("server", f"{s.server}  {s.error or 'no answer'}"))
            continue
        text = f"{s.server}  reflexive {format_addr(s.reflexive)}"
        if s.other_address:
            text += f"  other {format_addr(s.other_address)}"
        if s.rtt is not None:
            text += f"  rtt {s.rtt * 1000:.1f} ms"
        rows.append(("server", text))
    rows += [("rfc5780 server", r.rfc5780_server or "none"),
             ("nat", _yes(r.nat)),
             ("port kept", _yes(r.port_kept)),
             ("mapping", r.mapping or "unknown"),
             ("filtering", r.filtering or "unknown"),
             ("hairpinning", _yes(r.hairpinning))]
    if r.mapping_varies_by_server is not None:
        rows.append(("mapping varies by server", _yes(r.mapping_varies_by_server)))
    if r.lifetime_min is not None or r.lifetime_max is not None:
        low = f"{r.lifetime_min:g} s" if r.lifetime_min is not None else "0 s"
        high = f"{r.lifetime_max:g} s" if r.lifetime_max is not None else "longer"
        rows.append(("lifetime", f"at least {low}, less than {high}"
                     if r.lifetime_max is not None else f"at least {low} ({high})"))
    rows.append(("elapsed", f"{r.elapsed:.2f} s"))
    rows += [("note", n) for n in r.notes]
    return "".join(f"{k:<25}{v}\n" for k, v in rows)
