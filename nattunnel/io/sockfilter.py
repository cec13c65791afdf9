"""The socket filter under floods, and the kernel's drop counts.

Under a flood of datagrams with SPIs we have no SA for, the NAT-T sockets get a classic BPF
program (``spi_filter``, SO_ATTACH_FILTER) that drops them in the kernel, before they are
queued and before they wake us; it comes off once the flood stops. ``SocketFilter`` checks
every FILTER_CHECK seconds, on the endpoint's one timer (``get_timer``, ``handle_timer``).
The kernel's drops (full receive buffers, the filter) are read from SO_RXQ_OVFL control
messages and /proc and counted as KERNEL_RCVBUF or KERNEL_FILTER.

Part of ``nattunnel.io``; imports ``nattunnel.tunnel`` and ``nattunnel.esp`` (drop reasons).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from ..addr import format_addr
from ..constants import (
    ESP_MIN_PACKET,
    SPI_STUN_SAFE_MIN,
    STUN_COOKIE_OFFSET,
    STUN_MAGIC_COOKIE,
    UDP_HEADER_LEN,
)
from ..esp.drop import DropCounters, DropReason
from ..tunnel.core import Tunnel

log = logging.getLogger("nattunnel")

SO_ATTACH_FILTER: Final = 26
SO_DETACH_FILTER: Final = 27
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
#: SPIs compared per group: a conditional jump reaches 255 instructions ahead
_GROUP = 250

Instruction = tuple[int, int, int, int]


def spi_filter(spis: Iterable[int], *, stun: bool = False) -> list[Instruction] | None:
    """A classic BPF program for a NAT-T socket, as (code, jt, jf, k) instructions; offset 0
    is the UDP header, the payload starts at 8. It accepts datagrams too short to hold an
    SPI (keepalives; user space counts the rest), the non-ESP marker (IKE), and ESP with one
    of ``spis`` that is at least as long as the smallest ESP packet; it drops the rest
    (unknown and reserved SPIs, truncated ESP). None above FILTER_MAX_SPIS SPIs.

    The SPIs are compared one after another, in groups of at most 250 (a conditional jump
    reaches 255 instructions ahead) each followed by its own unconditional jump to the
    length check. With UDP GRO the filter sees one aggregate: its first datagram's octets and
    the aggregate's length, so a length bound above would also drop legitimate aggregates;
    only the lower bound is checked.

    With ``stun`` (the tunnel demultiplexes STUN: no inbound SPI of ours is below
    SPI_STUN_SAFE_MIN) a STUN message is accepted too: a first word below SPI_STUN_SAFE_MIN
    with the magic cookie after it (RFC 8489 section 5), for the STUN client's answers
    under a flood; user space checks the rest."""
    spis = sorted(set(spis))
    if len(spis) > FILTER_MAX_SPIS:
        return None
    ld_len, ld_word, jge, jeq, ja, ret = 0x80, 0x20, 0x35, 0x15, 0x05, 0x06
    accept_all = 0xFFFFFFFF
    # instructions with symbolic targets ("check", "accept"), resolved below
    prog: list[tuple[int, int | str, int | str, int | str]] = [
        (ld_len, 0, 0, 0),  # A = UDP header + payload
        (jge, 1, 0, UDP_HEADER_LEN + 4),  # room for an SPI? skip the accept
        (ret, 0, 0, accept_all),  # no: accept (keepalives; user space counts the rest)
        (ld_word, 0, 0, UDP_HEADER_LEN),  # A = the first four payload octets (network order)
        (jeq, 0, 1, 0),  # the non-ESP marker:
        (ja, 0, 0, "accept"),  # IKE: accept
    ]
    if stun:
        prog += [
            (jge, 4, 0, SPI_STUN_SAFE_MIN),  # an SPI of ours: to the comparisons
            (ld_word, 0, 0, UDP_HEADER_LEN + STUN_COOKIE_OFFSET),
            (jeq, 0, 1, STUN_MAGIC_COOKIE),
            (ja, 0, 0, "accept"),  # STUN: accept
            (ld_word, 0, 0, UDP_HEADER_LEN),  # A = the first word again
        ]
    for g in range(0, len(spis), _GROUP):
        group = spis[g : g + _GROUP]
        for i, spi in enumerate(group):
            prog.append((jeq, len(group) - i, 0, spi))  # to this group's trampoline
        prog.append((ja, 0, 0, 1))  # none of this group: over the trampoline
        prog.append((ja, 0, 0, "check"))
    prog.append((ret, 0, 0, 0))  # an SPI we have no SA for: drop
    labels = {"check": len(prog), "accept": len(prog) + 2}
    prog += [
        (ld_len, 0, 0, 0),  # check: long enough for ESP?
        (jge, 0, 1, UDP_HEADER_LEN + ESP_MIN_PACKET),
        (ret, 0, 0, accept_all),  # accept
        (ret, 0, 0, 0),  # truncated: drop
    ]
    out: list[Instruction] = []
    for pc, (code, jt, jf, k) in enumerate(prog):
        if isinstance(k, str):
            k = labels[k] - pc - 1
        assert isinstance(jt, int) and isinstance(jf, int)
        out.append((code, jt, jf, k))
    return out


def attach_filter(sock: socket.socket, prog: list[Instruction]) -> None:
    """SO_ATTACH_FILTER (replaces any filter the socket had)."""
    import ctypes

    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *ins) for ins in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class SocketFilter:
    """The socket filter's state and the kernel drop accounting of one endpoint.

    ``sockets()`` gives the endpoint's NAT-T sockets (the filter goes on them) and its other
    UDP sockets (port 500: their kernel drops are counted too). The receive path writes the
    SO_RXQ_OVFL counts it sees into ``rxq_ovfl`` (socket fd -> count).
    """

    def __init__(
        self,
        tunnel: Tunnel,
        drops: DropCounters,
        sockets: Callable[[], tuple[Sequence[socket.socket], Sequence[socket.socket]]],
        core_error: Callable[[str], None],
        *,
        enabled: bool = True,
    ) -> None:
        self.tunnel = tunnel
        self.drops = drops
        self.sockets = sockets
        self.core_error = core_error
        self.enabled = enabled
        #: per socket (fd), the last kernel drop count seen in a control message
        self.rxq_ovfl: dict[int, int] = {}
        #: the filter is attached; how often it went on; its SPIs
        self.on = False
        self.engaged = 0
        self.spis = 0
        #: when the next check is due (on the endpoint's one timer); None: not watching
        self._next_check: float | None = None
        #: checks made so far
        self.checks = 0
        self._junk = 0  # unknown/reserved-SPI drops at the last check
        self._quiet = 0.0  # since when the kernel drops few (filter on)
        self._warned = False
        #: kernel drops per socket (fd) already put in a bucket, and the buckets: datagrams
        #: dropped while the filter was on (by it, mostly) and while it was off (receive
        #: buffer full)
        self._seen: dict[int, int] = {}
        self._totals: dict[int, int] = {}  # the last read, per socket (fd)
        self._rcvbuf_seen = -1  # the namespace's UDP RcvbufErrors at the last read
        self._rcvbuf = 0
        self._filtered = 0

    # --- life cycle ---------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """Watch for floods (when enabled): a check every FILTER_CHECK seconds, on the
        endpoint's one timer (``get_timer``, ``handle_timer``)."""
        if not self.enabled:
            return
        self.tunnel.on_spis_changed = self.spis_changed
        self._junk = self.junk_count()
        self._rcvbuf_seen = udp_rcvbuf_errors()
        self._next_check = now + FILTER_CHECK

    def stop(self) -> None:
        self._next_check = None
        if self.tunnel.on_spis_changed == self.spis_changed:
            self.tunnel.on_spis_changed = None

    def stats(self) -> dict[str, object]:
        return {"on": self.on, "engaged": self.engaged, "spis": self.spis if self.on else 0}

    # --- the kernel's drop counts -------------------------------------------------------------
    def kernel_drops(self) -> dict[str, int]:
        """Datagrams the kernel dropped on each of our UDP sockets (NAT-T and port 500)
        because its receive buffer was full, by local address: the larger of the count last
        seen in a control message (SO_RXQ_OVFL) and the socket's drops column in
        /proc/net/udp{,6} (read now; also covers sockets read without control messages)."""
        natt, others = self.sockets()
        socks = [(format_addr(s.getsockname()), s) for s in natt]
        for sock in others:
            with contextlib.suppress(OSError):
                socks.append((format_addr(sock.getsockname()), sock))
        proc = proc_udp_drops()
        out: dict[str, int] = {}
        self._totals = {}
        for name, sock in socks:
            try:
                fd = sock.fileno()
                inode = os.fstat(fd).st_ino
            except OSError:
                continue
            out[name] = self._totals[fd] = max(self.rxq_ovfl.get(fd, 0), proc.get(inode, 0))
        return out

    def account(self) -> dict[str, int]:
        """Read the kernel's drop counts and put what is new since the last read in its
        bucket: KERNEL_RCVBUF, or KERNEL_FILTER for a NAT-T socket while the filter is on.
        A socket's count does not say which; while the filter is on, the network
        namespace's UDP RcvbufErrors (/proc/net/snmp, snmp6), which filter drops do not
        count, say how many of the new ones were receive-buffer drops (exact when this is
        the namespace's only busy UDP endpoint; an upper bound otherwise). The per-socket
        totals."""
        kernel = self.kernel_drops()
        natt = {s.fileno() for s in self.sockets()[0]}
        rcvbuf = udp_rcvbuf_errors()
        rcvbuf_new = max(0, rcvbuf - self._rcvbuf_seen) if self._rcvbuf_seen >= 0 else 0
        self._rcvbuf_seen = rcvbuf
        for fd, total in sorted(self._totals.items(), key=lambda x: x[0] in natt):
            new = total - self._seen.get(fd, 0)
            if new <= 0:
                continue
            self._seen[fd] = total
            if self.on and fd in natt:
                full = min(new, rcvbuf_new)
                self._rcvbuf += full
                self._filtered += new - full
            else:
                self._rcvbuf += new
            rcvbuf_new = max(0, rcvbuf_new - new)
        self.drops.counts[DropReason.KERNEL_RCVBUF] = self._rcvbuf
        self.drops.counts[DropReason.KERNEL_FILTER] = self._filtered
        return kernel

    # --- the filter ---------------------------------------------------------------------------
    def junk_count(self) -> int:
        """Datagrams so far that the socket filter would have dropped: unknown and reserved
        SPIs, and ESP with one of our SPIs too short to be ESP."""
        counts = self.tunnel.drops.counts
        n = counts[DropReason.UNKNOWN_SPI] + counts[DropReason.RESERVED_SPI]
        for peer in self.tunnel.peers.values():
            for sa in peer.inbound:
                n += sa.drops.counts[DropReason.TRUNCATED]
        return n

    def set(self, on: bool) -> None:
        """Attach the filter (built for the tunnel's SPIs now) or detach it."""
        self.account()  # what came before goes in the old state's bucket
        natt = self.sockets()[0]
        if on:
            prog = spi_filter(self.tunnel.inbound_spis(), stun=self.tunnel.stun_demux)
            if prog is None:
                return
            for sock in natt:
                attach_filter(sock, prog)
            self.spis = len(self.tunnel.inbound_spis())
            if not self.on:
                self.engaged += 1
        else:
            for sock in natt:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        self.on = on

    def spis_changed(self) -> None:
        if self.on:
            try:
                self.set(True)  # rebuilt with the new SPIs
            except OSError:
                self.core_error("filter")

    def get_timer(self) -> float | None:
        """When the next check is due, or None (not watching)."""
        return self._next_check

    def handle_timer(self, now: float) -> None:
        """The check, when it is due: every FILTER_CHECK seconds the filter goes on when
        datagrams with unknown SPIs come faster than FILTER_ON_RATE, and off when the kernel
        has dropped fewer than FILTER_OFF_RATE per second for FILTER_QUIET seconds."""
        if self._next_check is None or now < self._next_check:
            return
        self.checks += 1
        try:
            junk = self.junk_count()
            fresh, self._junk = junk - self._junk, junk
            if not self.on:
                if fresh >= FILTER_ON_RATE * FILTER_CHECK:
                    self._flood(fresh, now)
            else:
                before = self._filtered
                self.account()
                if self._filtered - before >= FILTER_OFF_RATE * FILTER_CHECK:
                    self._quiet = now
                elif now - self._quiet >= FILTER_QUIET:
                    self.set(False)
                    self._junk = self.junk_count()
                    log.info("the flood of unknown SPIs stopped: socket filter removed "
                             "(%d datagrams dropped by the kernel in all)", self._filtered)
        except Exception:
            self.core_error("filter")
        finally:
            self._next_check = now + FILTER_CHECK

    def _flood(self, fresh: int, now: float) -> None:
        self.set(True)
        if self.on:
            self._quiet = now
            log.warning("%d datagrams/s with unknown SPIs or truncated: dropping them in the "
                        "kernel (socket filter, %d SPIs) while it lasts",
                        fresh / FILTER_CHECK, self.spis)
        elif not self._warned:
            self._warned = True  # once: it stays so until SAs go
            log.warning("%d datagrams/s with unknown SPIs; no socket filter for more than %d "
                        "SPIs", fresh / FILTER_CHECK, FILTER_MAX_SPIS)


def proc_udp_drops() -> dict[int, int]:
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


def udp_rcvbuf_errors() -> int:
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
