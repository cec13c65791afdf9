"""The asyncio endpoint: moves bytes between UDP sockets, the inner interface and a Tunnel.

- One non-blocking UDP socket per local address. The data plane reads with ``add_reader`` and
  drains until EAGAIN with a budget per callback: never one packet per callback.
- The inner interface is a TUN device (``nattunnel.io.tun``) or the in-process interface below.
- One timer per endpoint, armed for the core's next deadline.
- Nothing here decides anything about packets: that is ``nattunnel.tunnel.core.Tunnel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from ..addr import Addr, Network, format_addr, sockaddr
from ..constants import ESP_HEADER_LEN, ESP_IV_LEN, IKE_PORT, NAT_T_PORT, NON_ESP_MARKER
from ..esp.drop import DropCounters, DropReason
from ..tunnel.core import PeerMoved, RekeyNeeded, Tunnel
from ..tunnel.peer import Peer

if TYPE_CHECKING:
    from ..ike.manager import IkeManager
    from ..ike.sa import Outgoing

log = logging.getLogger("nattunnel")

#: datagrams or inner packets handled per reader callback before yielding to the loop
DRAIN_BUDGET = 256
#: the largest UDP payload (and the largest GRO aggregate)
_MAX_DATAGRAM = 65535
#: receive buffer: without GRO, datagrams are read one after another into it (the inner
#: interface may hold views of them until it flushes), so room for several
_RX_SIZE = 4 * _MAX_DATAGRAM
_SOCKBUF = 4 << 20
#: the port-500 IKE sockets' receive buffer
_IKE_SOCKBUF = 1 << 20
# Linux UDP offloads (include/uapi/linux/udp.h); the socket module does not name them.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: most segments in one GSO send (UDP_MAX_SEGMENTS in the kernel)
GSO_MAX_SEGMENTS = 64
#: the largest UDP payload over IPv4 (65535 - 20 - 8): a GSO batch may not exceed it
GSO_MAX_BYTES = 65507
#: the largest inner packet read from the inner interface (the IPv4 total length limit)
_MAX_INNER = 65535
#: ESP header and IV in front of the plaintext (RFC 4303, RFC 4106 section 3)
_ESP_PLAIN_OFF = ESP_HEADER_LEN + ESP_IV_LEN
#: the send buffer: one GSO batch plus the packet that did not fit into it (with its ESP
#: header, padding, trailer and ICV)
_TX_SIZE = GSO_MAX_BYTES + _ESP_PLAIN_OFF + _MAX_INNER + 64
#: an exception from a core is logged (with its traceback) at most this often
ERROR_LOG_INTERVAL = 10.0
_GRO_SEG = struct.Struct("=i")
_U32 = struct.Struct("=I")
#: SOL_SOCKET option (include/uapi/asm-generic/socket.h): a control message on receive with
#: the socket's running count of datagrams the kernel dropped (receive buffer full)
SO_RXQ_OVFL = 40
#: room for the UDP_GRO and SO_RXQ_OVFL control messages (CMSG_SPACE(4) = 24 each)
_ANC_SIZE = 64
# --- the socket filter under floods (classic BPF, SO_ATTACH_FILTER) ---------------------------
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
#: datagrams per second with SPIs we have no SA for (or reserved ones, or truncated ESP)
#: above which the NAT-T sockets get a kernel filter that drops them before they are queued
#: (and before they wake us); it comes off once the kernel drops fewer than FILTER_OFF_RATE
#: per second for FILTER_QUIET seconds. Checked every FILTER_CHECK seconds.
FILTER_ON_RATE = 2000
FILTER_OFF_RATE = 200
FILTER_QUIET = 10.0
FILTER_CHECK = 1.0
#: the filter compares the SPIs one after another (a classic BPF program has at most 4096
#: instructions): above this many inbound SPIs it is not built (and a flood goes to user
#: space as before)
FILTER_MAX_SPIS = 4000
_MIN_ESP = 36  # the smallest ESP packet (nattunnel.esp.sa.MIN_ESP_PACKET)


def spi_filter(spis: Iterable[int]) -> list[tuple[int, int, int, int]] | None:
    """A classic BPF program for a NAT-T socket, as (code, jt, jf, k) instructions; offset 0
    is the UDP header, the payload starts at 8. It accepts datagrams too short to hold an
    SPI (keepalives; user space counts the rest), the non-ESP marker (IKE), and ESP with one
    of ``spis`` that is at least as long as the smallest ESP packet; it drops the rest
    (unknown and reserved SPIs, truncated ESP). None above FILTER_MAX_SPIS SPIs.

    The SPIs are compared one after another, in groups of at most 250 (a conditional jump
    reaches 255 instructions ahead) each followed by its own unconditional jump to the
    length check. With UDP GRO the filter sees one aggregate: its first datagram's octets and
    the aggregate's length, so a length bound above would also drop legitimate aggregates;
    only the lower bound is checked."""
    spis = sorted(set(spis))
    if len(spis) > FILTER_MAX_SPIS:
        return None
    ld_len, ld_word, jge, jeq, ja, ret = 0x80, 0x20, 0x35, 0x15, 0x05, 0x06
    accept_all = 0xFFFFFFFF
    # instructions with symbolic targets ("check", "accept"), resolved below
    prog: list[tuple[int, int | str, int | str, int | str]] = [
        (ld_len, 0, 0, 0),  # A = UDP header + payload
        (jge, 1, 0, 8 + 4),  # room for an SPI? skip the accept
        (ret, 0, 0, accept_all),  # no: accept (keepalives; user space counts the rest)
        (ld_word, 0, 0, 8),  # A = the first four payload octets (network order)
        (jeq, 0, 1, 0),  # the non-ESP marker:
        (ja, 0, 0, "accept"),  # IKE: accept
    ]
    for g in range(0, len(spis), 250):
        group = spis[g : g + 250]
        for i, spi in enumerate(group):
            prog.append((jeq, len(group) - i, 0, spi))  # to this group's trampoline
        prog.append((ja, 0, 0, 1))  # none of this group: over the trampoline
        prog.append((ja, 0, 0, "check"))
    prog.append((ret, 0, 0, 0))  # an SPI we have no SA for: drop
    labels = {"check": len(prog), "accept": len(prog) + 2}
    prog += [
        (ld_len, 0, 0, 0),  # check: long enough for ESP?
        (jge, 0, 1, 8 + _MIN_ESP),
        (ret, 0, 0, accept_all),  # accept
        (ret, 0, 0, 0),  # truncated: drop
    ]
    out: list[tuple[int, int, int, int]] = []
    for pc, (code, jt, jf, k) in enumerate(prog):
        if isinstance(k, str):
            k = labels[k] - pc - 1
        assert isinstance(jt, int) and isinstance(jf, int)
        out.append((code, jt, jf, k))
    return out


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER (replaces any filter the socket had)."""
    import ctypes

    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *ins) for ins in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
_GSO_SEG = struct.Struct("=H")


class InnerInterface(Protocol):
    """Where decapsulated packets go, and where packets to encapsulate come from."""

    def attach(self, endpoint: Endpoint) -> None: ...

    def write(self, packet: memoryview) -> None:
        """Deliver one inner packet. The view stays valid until the next ``flush``."""

    def flush(self) -> None:
        """Write out what ``write`` held back (TCP coalescing); called before the endpoint
        reuses the buffer the packets lie in, and after each drain."""

    def close(self) -> None: ...


def _family(addr: Addr) -> int:
    return socket.AF_INET6 if len(addr) == 4 else socket.AF_INET


class Endpoint:
    """An asyncio tunnel endpoint around one ``Tunnel`` core."""

    def __init__(
        self,
        tunnel: Tunnel,
        interface: InnerInterface,
        listen: Sequence[tuple[str, int]],
        *,
        budget: int = DRAIN_BUDGET,
        offload: bool = True,
        kernel_filter: bool = True,
    ) -> None:
        """``offload``: use UDP GRO on receive and GSO on send where the kernel has them.
        ``kernel_filter``: under a flood of datagrams with unknown SPIs, drop them in the
        kernel with a socket filter (``spi_filter``) until it stops."""
        self.tunnel = tunnel
        self.interface = interface
        self.listen = list(listen)
        self.budget = budget
        #: endpoint-level drops (socket errors, full buffers); the core counts the rest
        self.drops = DropCounters()
        self.socks: list[socket.socket] = []
        self._by_family: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._rx = bytearray(_RX_SIZE)
        self._rxv = memoryview(self._rx)
        self._tx = bytearray(_TX_SIZE)
        self._txv = memoryview(self._tx)
        #: per offset in the send buffer, the view an inner packet is read into
        self._rooms: dict[int, memoryview] = {}
        self.offload = offload
        #: UDP GSO in use; switched off at run time if the kernel refuses it (EIO, EINVAL)
        self.gso = False
        self.gso_sends = 0
        #: GRO reads that held more than one datagram
        self.gro_batches = 0
        self._closed = asyncio.Event()
        #: exceptions raised by the cores (tunnel, IKE manager) inside a callback, by where;
        #: the callback carries on (``_core_error``)
        self.errors: dict[str, int] = {}
        #: per socket (fd), the last kernel drop count seen in a control message
        self._kernel_drops: dict[int, int] = {}
        self.kernel_filter = kernel_filter
        #: the socket filter is attached; how often it went on; its SPIs
        self.filter_on = False
        self.filter_engaged = 0
        self._filter_spis = 0
        self._filter_timer: asyncio.TimerHandle | None = None
        self._filter_junk = 0  # unknown/reserved-SPI drops at the last check
        self._filter_quiet = 0.0  # since when the kernel drops few (filter on)
        self._filter_warned = False
        #: kernel drops per socket (fd) already put in a bucket, and the buckets: datagrams
        #: dropped while the filter was on (by it, mostly) and while it was off (receive
        #: buffer full)
        self._kernel_seen: dict[int, int] = {}
        self._kernel_totals: dict[int, int] = {}  # the last read, per socket (fd)
        self._rcvbuf_seen = -1  # the namespace's UDP RcvbufErrors at the last read
        self._kernel_rcvbuf = 0
        self._kernel_filtered = 0
        self._error_log_at = 0.0
        self._errors_unlogged = 0
        #: the IKE manager, when IKE is enabled (``enable_ike``)
        self.ike: IkeManager | None = None
        self.ike_port = IKE_PORT
        #: port-500 sockets, and the first of each address family (what IKE sends from)
        self._ike_socks: list[socket.socket] = []
        self._ike_by_family: dict[int, socket.socket] = {}
        #: an IKE message came through a NAT-T reader: it re-arms the timer after its batch
        self._ike_seen = False

    # --- life cycle ---------------------------------------------------------------------------
    def enable_ike(self, manager: IkeManager, port: int = IKE_PORT) -> None:
        """Handle IKE on ``port`` (plain) and behind the non-ESP marker on the NAT-T sockets."""
        self.ike = manager
        self.ike_port = port
        manager.send = self._ike_send
        manager.local_addr = self._local_addr
        self.tunnel.ike_handler = self._on_ike_natt

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        for host, port in self.listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                if fam == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKBUF)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKBUF)
                with contextlib.suppress(OSError):  # Linux 2.6.33+
                    sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
                sock.setblocking(False)
                sock.bind((host, port))
            except OSError as e:
                sock.close()
                self._close_sockets()
                where = format_addr((host, port))
                raise OSError(e.errno, f"cannot listen on {where}: {e.strerror}") from e
            self.socks.append(sock)
            self._by_family.setdefault(fam, sock)
            gro = False
            if self.offload:
                try:
                    sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                    gro = True
                except OSError:
                    pass
                try:
                    sock.getsockopt(SOL_UDP, UDP_SEGMENT)
                    self.gso = True
                except OSError:
                    self.gso = False
            loop.add_reader(sock.fileno(), self._on_udp_gro if gro else self._on_udp, sock)
        for peer in self.tunnel.peers.values():
            if peer.addr is not None:
                peer.sock = self._by_family.get(_family(peer.addr))
        self.interface.attach(self)
        if self.ike is not None:
            await self._start_ike(loop)
        if self.kernel_filter:
            self.tunnel.on_spis_changed = self._spis_changed
            self._filter_junk = self._junk_count()
            self._rcvbuf_seen = _udp_rcvbuf_errors()
            self._filter_timer = loop.call_later(FILTER_CHECK, self._check_filter)
        self._arm_timer()

    def add_peer(self, name: str, allowed: Iterable[Network], *, addr: Addr | None = None,
                 keepalive: bool = False, keepalive_interval: float = 20.0,
                 now: float | None = None) -> Peer:
        """``Tunnel.add_peer`` on an endpoint that may already run: the peer gets the socket
        of its address family, and its keepalive timer is armed."""
        if now is None:
            now = self._loop.time() if self._loop is not None else 0.0
        peer = self.tunnel.add_peer(name, allowed, addr=addr, keepalive=keepalive,
                                    keepalive_interval=keepalive_interval, now=now)
        if addr is not None and self._loop is not None:
            peer.sock = self._by_family.get(_family(addr))
        self._arm_timer()
        return peer

    async def _start_ike(self, loop: asyncio.AbstractEventLoop) -> None:
        """Port 500: one non-blocking socket per listen address, read like the NAT-T
        sockets (drained with a budget per wakeup, so that a flood of IKE_SA_INIT requests
        costs a system call and a cookie each, not a future)."""
        for host, _ in self.listen:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                if fam == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setblocking(False)
                sock.bind((host, self.ike_port))
            except OSError as e:
                sock.close()
                self.close()
                where = format_addr((host, self.ike_port))
                raise OSError(e.errno, f"cannot listen for IKE on {where}: {e.strerror}") from e
            with contextlib.suppress(OSError):
                # room for a legitimate peer's request behind a flood
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _IKE_SOCKBUF)
                sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._ike_socks.append(sock)
            self._ike_by_family.setdefault(fam, sock)
            loop.add_reader(sock.fileno(), self._on_ike_udp, sock)

    def _on_ike_udp(self, sock: socket.socket) -> None:
        """Port 500 readable: IKE messages until EAGAIN or the budget, then one pass over
        the events and one re-arm of the timer."""
        assert self._loop is not None and self.ike is not None
        now = self._loop.time()
        receive = self.ike.receive
        try:
            for _ in range(self.budget):
                try:
                    data, addr = sock.recvfrom(_MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError:  # an ICMP error for an earlier send, say
                    self.drops.counts[DropReason.RECEIVE_ERROR] += 1
                    continue
                try:
                    receive(data, addr, False, now)
                except Exception:
                    self.drops.counts[DropReason.INTERNAL_ERROR] += 1
                    self._core_error("ike_receive")
        finally:
            self._handle_events(None)

    def ike_addresses(self) -> list[Addr]:
        """The port-500 sockets' local addresses."""
        return [s.getsockname() for s in self._ike_socks]

    def _on_ike_natt(self, data: memoryview, addr: Addr, now: float) -> None:
        """IKE behind the non-ESP marker on a NAT-T socket (from the tunnel's demux)."""
        assert self.ike is not None
        try:
            self.ike.receive(bytes(data), addr, True, now)
        except Exception:
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self._core_error("ike_receive")
        # the reader that demultiplexed it re-arms the timer once, after its whole batch
        self._ike_seen = True

    def _core_error(self, where: str) -> None:
        """Call from an ``except`` block: an exception from a core in a callback is counted
        by where, and logged with its traceback at most once per ERROR_LOG_INTERVAL (with
        how many were not logged since), so that a packet that trips a bug neither stops
        the endpoint nor floods the log."""
        self.errors[where] = self.errors.get(where, 0) + 1
        now = time.monotonic()
        if now < self._error_log_at:
            self._errors_unlogged += 1
            return
        self._error_log_at = now + ERROR_LOG_INTERVAL
        skipped, self._errors_unlogged = self._errors_unlogged, 0
        log.error("internal error in %s (counted; %d more since the last one logged)", where,
                  skipped, exc_info=True)

    def _ike_send(self, out: Outgoing) -> None:
        fam = _family(out.remote)
        try:
            if out.natt:
                sock = self._by_family.get(fam)
                if sock is not None:
                    sock.sendto(NON_ESP_MARKER + out.data, out.remote)
            else:
                sock = self._ike_by_family.get(fam)
                if sock is not None:
                    sock.sendto(out.data, out.remote)
        except OSError:
            self.drops.counts[DropReason.SEND_FAILED] += 1

    def _local_addr(self, remote: Addr, natt: bool) -> Addr:
        """Our address towards ``remote`` (for NAT detection hashes, RFC 7296 section 2.23):
        the address and port of the socket the messages go out of (the NAT-T socket of that
        family for ``natt``, the port-500 IKE socket otherwise). Only when that socket is
        bound to the wildcard address does the kernel's routing say which source it picks;
        a socket bound to one address (a secondary one, say) always sends from it."""
        fam = _family(remote)
        bound: Addr | None = None
        if natt:
            sock = self._by_family.get(fam)
            if sock is not None:
                bound = sock.getsockname()
        else:
            sock = self._ike_by_family.get(fam)
            if sock is not None:
                bound = sock.getsockname()
        if bound is None:
            port = NAT_T_PORT if natt else self.ike_port
            ip = "::" if fam == socket.AF_INET6 else "0.0.0.0"
        else:
            ip, port = bound[0], bound[1]
        if ipaddress.ip_address(ip.split("%", 1)[0]).is_unspecified:
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.connect((remote[0], remote[1]))
                ip = s.getsockname()[0]
        return (ip, port)

    def local_addresses(self) -> list[Addr]:
        return [s.getsockname() for s in self.socks]

    def _close_sockets(self) -> None:
        for sock in self.socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self.socks.clear()
        self._by_family.clear()

    def close(self) -> None:
        """Stop reading, close sockets and the inner interface. Idempotent."""
        self._closed.set()
        for sock in self._ike_socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._ike_socks.clear()
        self._ike_by_family.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._filter_timer is not None:
            self._filter_timer.cancel()
            self._filter_timer = None
        if self.tunnel.on_spis_changed == self._spis_changed:
            self.tunnel.on_spis_changed = None
        self._close_sockets()
        self.interface.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- UDP side -----------------------------------------------------------------------------
    def _on_udp(self, sock: socket.socket) -> None:
        assert self._loop is not None
        now = self._loop.time()
        recv = sock.recvfrom_into
        rxv = self._rxv
        receive = self.tunnel.receive
        write = self.interface.write
        flush = self.interface.flush
        # Datagrams are read one after another into the buffer, so that the interface may
        # hold views of the packets it was given until it flushes, before the space is reused.
        limit = len(rxv) - _MAX_DATAGRAM
        off = 0
        try:
            for _ in range(self.budget):
                if off > limit:
                    flush()
                    off = 0
                try:
                    n, addr = recv(rxv[off:])
                except BlockingIOError:
                    break
                except OSError:
                    # e.g. ECONNREFUSED from an earlier ICMP error; the socket stays usable
                    self.drops.counts[DropReason.RECEIVE_ERROR] += 1
                    continue
                m = receive(rxv, off, n, addr, now)
                if m > 0:
                    write(rxv[off + 16 : off + 16 + m])
                    off += n
        except Exception:  # a bug in a core: count it, keep the reader alive
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self._core_error("receive")
        flush()
        if self.tunnel.events or self._ike_seen:
            self._ike_seen = False
            self._handle_events(sock)

    def _on_udp_gro(self, sock: socket.socket) -> None:
        """As ``_on_udp``, for a socket with UDP_GRO: one read may hold many datagrams of one
        size from one sender (the last may be shorter), each handled at its offset. The
        control messages also carry the socket's kernel drop count (SO_RXQ_OVFL) once it is
        not zero."""
        assert self._loop is not None
        now = self._loop.time()
        recvmsg = sock.recvmsg_into
        bufs = [self._rx]
        rxv = self._rxv
        receive = self.tunnel.receive
        receive_batch = self.tunnel.receive_batch
        write = self.interface.write
        flush = self.interface.flush  # before the next read reuses the buffer
        budget = self.budget
        try:
            while budget > 0:
                try:
                    n, anc, _, addr = recvmsg(bufs, _ANC_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    self.drops.counts[DropReason.RECEIVE_ERROR] += 1
                    budget -= 1
                    continue
                seg = n
                for level, kind, data in anc:
                    if kind == UDP_GRO and level == SOL_UDP:
                        seg = _GRO_SEG.unpack(data)[0]
                    elif kind == SO_RXQ_OVFL and level == socket.SOL_SOCKET:
                        self._kernel_drops[sock.fileno()] = _U32.unpack(data)[0]
                if seg >= n:
                    budget -= 1
                    m = receive(rxv, 0, n, addr, now)
                    if m > 0:
                        write(rxv[16 : 16 + m])
                        flush()
                    continue
                self.gro_batches += 1
                receive_batch(rxv, n, seg, addr, now, write)
                flush()
                budget -= (n + seg - 1) // seg
        except Exception:  # a bug in a core: count it, keep the reader alive
            self.drops.counts[DropReason.INTERNAL_ERROR] += 1
            self._core_error("receive")
            flush()
        if self.tunnel.events or self._ike_seen:
            self._ike_seen = False
            self._handle_events(sock)

    def send_datagram(self, peer: Peer, data: bytes | memoryview) -> None:
        sock = peer.sock
        if not isinstance(sock, socket.socket) or peer.addr is None:
            self.drops.counts[DropReason.NO_ENDPOINT] += 1
            return
        try:
            sock.sendto(data, peer.addr)
        except OSError:
            self.drops.counts[DropReason.SEND_FAILED] += 1

    # --- inner side ---------------------------------------------------------------------------
    def send_inner(self, packet: bytes | bytearray | memoryview, now: float | None = None) -> int:
        """Encapsulate one inner packet and send it; the ESP length, or ``-DropReason``."""
        if now is None:
            assert self._loop is not None
            now = self._loop.time()
        tunnel = self.tunnel
        peer = tunnel.route(packet)
        if peer is None:
            tunnel.drops.counts[DropReason.NO_ROUTE] += 1
            return -DropReason.NO_ROUTE
        m = peer.encapsulate_into(packet, self._txv, now)
        if m < 0:
            tunnel.drops.counts[-m] += 1
            return m
        sock = peer.sock
        try:
            sock.sendto(self._txv[:m], peer.addr)  # type: ignore[attr-defined]
        except OSError:
            self.drops.counts[DropReason.SEND_FAILED] += 1
            return -DropReason.SEND_FAILED
        if tunnel.events:
            self._handle_events(None)
        return m

    def drain_inner(self, read_into: object) -> None:
        """Read inner packets with ``read_into(buf) -> n | -1`` until EAGAIN or the budget.

        Each packet is read straight into the send buffer, where its ESP packet's plaintext
        goes, and encrypted there. With GSO, consecutive ESP packets of one size to one peer
        lie side by side and go out with one ``sendmsg`` (UDP_SEGMENT); a shorter packet may
        end a batch. Anything else sends the batch first.
        """
        assert self._loop is not None
        now = self._loop.time()
        tunnel = self.tunnel
        route_at = tunnel.route_at
        counts = tunnel.drops.counts
        tx = self._tx
        txv = self._txv
        rooms = self._rooms
        reader = read_into
        gso = self.gso
        batch: Peer | None = None  # the peer of the packets in tx[0:off]
        seg = 0  # their size
        off = 0
        count = 0
        for _ in range(self.budget):
            room = rooms.get(off) or self._room(off)
            n = reader(room)  # type: ignore[operator]
            if n < 0:
                break
            peer = route_at(txv, off + _ESP_PLAIN_OFF, n)
            if peer is None:
                counts[DropReason.NO_ROUTE] += 1
                continue
            m = peer.encapsulate_in_place(txv, off, n, now)
            if m < 0:
                counts[-m] += 1
                continue
            if not gso:
                try:
                    peer.sock.sendto(txv[:m], peer.addr)  # type: ignore[attr-defined]
                except OSError:
                    self.drops.counts[DropReason.SEND_FAILED] += 1
                continue
            if off == 0:
                batch, seg, off, count = peer, m, m, 1
            elif peer is batch and m <= seg and count < GSO_MAX_SEGMENTS:
                off += m
                count += 1
                if m < seg:  # a short packet ends the batch
                    self._send_batch(batch, txv, off, seg, count)
                    off = 0
                    continue
            else:
                self._send_batch(batch, txv, off, seg, count)  # type: ignore[arg-type]
                tx[0:m] = tx[off : off + m]
                batch, seg, off, count = peer, m, m, 1
            if off + seg > GSO_MAX_BYTES:  # the next one would not fit
                self._send_batch(batch, txv, off, seg, count)
                off = 0
        if off:
            self._send_batch(batch, txv, off, seg, count)  # type: ignore[arg-type]
        if tunnel.events:
            self._handle_events(None)

    def _room(self, off: int) -> memoryview:
        """Where a packet read for the ESP packet at ``off`` goes: the plaintext's place, as
        long as the largest inner packet (the trailer and ICV still fit behind it)."""
        if len(self._rooms) > 4096:
            self._rooms.clear()
        start = off + _ESP_PLAIN_OFF
        room = self._rooms[off] = self._txv[start : start + _MAX_INNER]
        return room

    def _send_batch(self, peer: Peer, txv: memoryview, size: int, seg: int, count: int) -> None:
        sock = peer.sock
        if not self.gso:  # switched off during this drain
            for o in range(0, size, seg):
                self._sendto(peer, txv[o : min(o + seg, size)])
            return
        try:
            if count == 1:
                sock.sendto(txv[:size], peer.addr)  # type: ignore[attr-defined]
            else:
                sock.sendmsg(  # type: ignore[attr-defined]
                    [txv[:size]], [(SOL_UDP, UDP_SEGMENT, _GSO_SEG.pack(seg))], 0, peer.addr
                )
                self.gso_sends += 1
        except OSError as e:
            if count > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                # the kernel or the device refuses segmentation: fall back for good
                log.warning("UDP GSO refused (%s); sending one datagram per packet", e)
                self.gso = False
                for o in range(0, size, seg):
                    self._sendto(peer, txv[o : min(o + seg, size)])
            else:
                self.drops.counts[DropReason.SEND_FAILED] += count

    def _sendto(self, peer: Peer, data: memoryview) -> None:
        try:
            peer.sock.sendto(data, peer.addr)  # type: ignore[attr-defined]
        except OSError:
            self.drops.counts[DropReason.SEND_FAILED] += 1

    # --- events and the timer -----------------------------------------------------------------
    def _handle_events(self, sock: socket.socket | None) -> None:
        try:
            while (ev := self.tunnel.next_event()) is not None:
                try:
                    self._handle_event(ev, sock)
                except Exception:
                    self._core_error("events")
        except Exception:
            self._core_error("events")
        finally:
            self._arm_timer()

    def _handle_event(self, ev: object, sock: socket.socket | None) -> None:
        if isinstance(ev, PeerMoved):
            peer = self.tunnel.peers.get(ev.peer)
            if peer is not None:
                peer.sock = sock if sock is not None else self._by_family.get(
                    _family(ev.new)
                )
            if ev.old is None:
                log.info("peer %s: first authenticated packet from %s", ev.peer,
                         format_addr(ev.new))
            else:
                log.info("peer %s moved from %s to %s (NAT rebinding)", ev.peer,
                         format_addr(ev.old), format_addr(ev.new))
        elif isinstance(ev, RekeyNeeded):
            assert self._loop is not None
            if self.ike is not None and self.ike.rekey_outbound(ev.spi, self._loop.time()):
                log.info("peer %s: SA %#010x passed its sequence-number soft limit; "
                         "rekeying", ev.peer, ev.spi)
            else:
                log.warning("peer %s: SA %#010x passed its sequence-number soft limit; "
                            "manual SAs cannot be rekeyed: install new keys", ev.peer,
                            ev.spi)

    def _arm_timer(self) -> None:
        if self._loop is None or self._closed.is_set():
            return
        try:
            when = self.tunnel.get_timer()
            if self.ike is not None:
                ike_when = self.ike.next_deadline()
                if ike_when is not None and (when is None or ike_when < when):
                    when = ike_when
        except Exception:
            self._core_error("timer")
            when = self._loop.time() + 1.0  # try again soon
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = None
        now = self._loop.time()
        try:
            self.tunnel.handle_timer(now)
            for peer, data in self.tunnel.datagrams_to_send():
                self.send_datagram(peer, data)
        except Exception:
            self._core_error("timer")
        try:
            if self.ike is not None:
                self.ike.on_timer(now)
        except Exception:
            self._core_error("timer")
        finally:
            self._handle_events(None)  # and re-arms the timer, whatever happened above

    def kernel_drops(self) -> dict[str, int]:
        """Datagrams the kernel dropped on each of our UDP sockets (NAT-T and port 500)
        because its receive buffer was full, by local address: the larger of the count last
        seen in a control message (SO_RXQ_OVFL) and the socket's drops column in
        /proc/net/udp{,6} (read now; also covers sockets read without control messages)."""
        socks = [(format_addr(s.getsockname()), s) for s in self.socks]
        for sock in self._ike_socks:
            with contextlib.suppress(OSError):
                socks.append((format_addr(sock.getsockname()), sock))
        proc = _proc_udp_drops()
        out: dict[str, int] = {}
        self._kernel_totals = {}
        for name, sock in socks:
            try:
                fd = sock.fileno()
                inode = os.fstat(fd).st_ino
            except OSError:
                continue
            out[name] = self._kernel_totals[fd] = max(self._kernel_drops.get(fd, 0),
                                                      proc.get(inode, 0))
        return out

    # --- the socket filter --------------------------------------------------------------------
    def _junk_count(self) -> int:
        """Datagrams so far that the socket filter would have dropped: unknown and reserved
        SPIs, and ESP with one of our SPIs too short to be ESP."""
        counts = self.tunnel.drops.counts
        n = counts[DropReason.UNKNOWN_SPI] + counts[DropReason.RESERVED_SPI]
        for peer in self.tunnel.peers.values():
            for sa in peer.inbound:
                n += sa.drops.counts[DropReason.TRUNCATED]
        return n

    def _account_kernel_drops(self) -> dict[str, int]:
        """Read the kernel's drop counts and put what is new since the last read in its
        bucket: KERNEL_RCVBUF, or KERNEL_FILTER for a NAT-T socket while the filter is on.
        A socket's count does not say which; while the filter is on, the network
        namespace's UDP RcvbufErrors (/proc/net/snmp, snmp6), which filter drops do not
        count, say how many of the new ones were receive-buffer drops (exact when this is
        the namespace's only busy UDP endpoint; an upper bound otherwise). The per-socket
        totals."""
        kernel = self.kernel_drops()
        natt = {s.fileno() for s in self.socks}
        rcvbuf = _udp_rcvbuf_errors()
        rcvbuf_new = max(0, rcvbuf - self._rcvbuf_seen) if self._rcvbuf_seen >= 0 else 0
        self._rcvbuf_seen = rcvbuf
        for fd, total in sorted(self._kernel_totals.items(), key=lambda x: x[0] in natt):
            new = total - self._kernel_seen.get(fd, 0)
            if new <= 0:
                continue
            self._kernel_seen[fd] = total
            if self.filter_on and fd in natt:
                full = min(new, rcvbuf_new)
                self._kernel_rcvbuf += full
                self._kernel_filtered += new - full
            else:
                self._kernel_rcvbuf += new
            rcvbuf_new = max(0, rcvbuf_new - new)
        self.drops.counts[DropReason.KERNEL_RCVBUF] = self._kernel_rcvbuf
        self.drops.counts[DropReason.KERNEL_FILTER] = self._kernel_filtered
        return kernel

    def _set_filter(self, on: bool) -> None:
        self._account_kernel_drops()  # what came before goes in the old state's bucket
        if on:
            prog = spi_filter(self.tunnel.inbound_spis())
            if prog is None:
                return
            for sock in self.socks:
                attach_filter(sock, prog)
            self._filter_spis = len(self.tunnel.inbound_spis())
            if not self.filter_on:
                self.filter_engaged += 1
        else:
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        self.filter_on = on

    def _spis_changed(self) -> None:
        if self.filter_on:
            try:
                self._set_filter(True)  # rebuilt with the new SPIs
            except OSError:
                self._core_error("filter")

    def _check_filter(self) -> None:
        """Every FILTER_CHECK seconds: the filter goes on when datagrams with unknown SPIs
        come faster than FILTER_ON_RATE, and off when the kernel has dropped fewer than
        FILTER_OFF_RATE per second for FILTER_QUIET seconds."""
        assert self._loop is not None
        self._filter_timer = None
        if self._closed.is_set():
            return
        now = self._loop.time()
        try:
            junk = self._junk_count()
            fresh, self._filter_junk = junk - self._filter_junk, junk
            if not self.filter_on:
                if fresh >= FILTER_ON_RATE * FILTER_CHECK:
                    self._set_filter(True)
                    if self.filter_on:
                        self._filter_quiet = now
                        log.warning("%d datagrams/s with unknown SPIs or truncated: dropping "
                                    "them in the kernel (socket filter, %d SPIs) while it "
                                    "lasts",
                                    fresh / FILTER_CHECK, self._filter_spis)
                    elif not self._filter_warned:
                        self._filter_warned = True  # once: it stays so until SAs go
                        log.warning("%d datagrams/s with unknown SPIs; no socket filter for "
                                    "more than %d SPIs", fresh / FILTER_CHECK,
                                    FILTER_MAX_SPIS)
            else:
                before = self._kernel_filtered
                self._account_kernel_drops()
                if self._kernel_filtered - before >= FILTER_OFF_RATE * FILTER_CHECK:
                    self._filter_quiet = now
                elif now - self._filter_quiet >= FILTER_QUIET:
                    self._set_filter(False)
                    self._filter_junk = self._junk_count()
                    log.info("the flood of unknown SPIs stopped: socket filter removed "
                             "(%d datagrams dropped by the kernel in all)", self._kernel_filtered)
        except Exception:
            self._core_error("filter")
        finally:
            self._filter_timer = self._loop.call_later(FILTER_CHECK, self._check_filter)

    def stats(self) -> dict[str, object]:
        s = self.tunnel.stats()
        kernel = self._account_kernel_drops()
        s["kernel_drops"] = kernel
        s["kernel_filter"] = {"on": self.filter_on, "engaged": self.filter_engaged,
                              "spis": self._filter_spis if self.filter_on else 0}
        s["endpoint_drops"] = self.drops.as_dict()
        s["errors"] = dict(self.errors)
        if self.ike is not None:
            s["ike"] = self.ike.stats()
        s["offload"] = {"gso": self.gso, "gso_sends": self.gso_sends,
                        "gro_batches": self.gro_batches}
        s["listen"] = [format_addr(a) for a in self.local_addresses()]
        return s


def _proc_udp_drops() -> dict[int, int]:
    """Socket inode -> drops, from /proc/net/udp and /proc/net/udp6 (this network namespace);
    the last column of each line is the socket's sk_drops."""
    out: dict[int, int] = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) >= 13:
                        out[int(fields[9])] = int(fields[-1])
        except (OSError, ValueError):
            continue
    return out


def _udp_rcvbuf_errors() -> int:
    """UDP (and UDP over IPv6) datagrams this network namespace dropped because a socket's
    receive buffer was full (RcvbufErrors in /proc/net/snmp and /proc/net/snmp6)."""
    total = 0
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        if len(rows) >= 2 and "RcvbufErrors" in rows[0]:
            total += int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/proc/net/snmp6") as f:
            for line in f:
                if line.startswith("Udp6RcvbufErrors"):
                    total += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return total


class InProcessInterface:
    """The inner side without root: inner packets in and out through an asyncio API.

    ``send(packet)`` encapsulates and sends at once; ``await recv()`` returns the next
    decapsulated inner packet. Packets arriving while the queue is full are dropped and counted.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self._endpoint: Endpoint | None = None
        self.drops = 0
        self.received = 0

    def attach(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    def flush(self) -> None:
        return None

    def write(self, packet: memoryview) -> None:
        try:
            self._queue.put_nowait(bytes(packet))
            self.received += 1
        except asyncio.QueueFull:
            self.drops += 1

    def send(self, packet: bytes | bytearray | memoryview) -> int:
        """Send one inner IP packet into the tunnel: the ESP length, or ``-DropReason``."""
        if self._endpoint is None:
            raise RuntimeError("the interface is not attached to a started endpoint")
        return self._endpoint.send_inner(packet)

    async def recv(self) -> bytes:
        return await self._queue.get()

    def recv_nowait(self) -> bytes | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._endpoint = None


__all__ = ["DRAIN_BUDGET", "Endpoint", "InProcessInterface", "InnerInterface", "sockaddr"]
