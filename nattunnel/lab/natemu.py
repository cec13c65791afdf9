"""A userspace NAT emulator for tests and demos: an asyncio UDP relay on loopback.

No root needed. The emulator has an *inside* socket and a configured *public target*::

    inside endpoint ──► emulator inside socket ──► [mapping: own external socket] ──► target
    inside endpoint ◄── emulator inside socket ◄── [filtering]  ◄── anyone on the outside

Every distinct inside source (address, port) that sends to the inside socket gets its own
*mapping*: a UDP socket bound on the outside address whose port is the "external port". The
public peer therefore sees a different source port per inside endpoint, as behind a real
NAPT. Replies (and anything else) arriving on an external socket pass the mapping's
*filtering* (RFC 4787 terms) and are relayed to the inside endpoint from the inside socket.

- ``endpoint-independent``: anyone may send to an external port.
- ``address-dependent``: only addresses the mapping has sent to.
- ``address-and-port-dependent`` (Linux conntrack's behaviour): only (address, port) pairs
  the mapping has sent to.

A mapping is dropped after ``mapping_timeout`` seconds without traffic in either direction
(inbound refresh can be switched off), measured with an injectable ``clock``, so tests can
advance a fake clock and call :meth:`NatEmulator.expire_idle` instead of sleeping.
:meth:`NatEmulator.rebind` moves a mapping onto a new external port (a NAT rebinding).
Impairments (loss, duplication, reordering) use a seeded :class:`random.Random`; ``delay``
adds a fixed one-way delay through a :class:`DelayLine` (bounded, order kept, one loop timer).

Usage::

    async with NatEmulator(("127.0.0.1", public_port), mapping_timeout=0.2) as nat:
        inside_sock.sendto(b"x", nat.inside_address)
        ...
        nat.external_address(inside_sock.getsockname())

This is a test tool: one datagram per asyncio callback, control-plane speed.

The same delay on a path of the namespace lab (this kernel has no ``sch_netem``):
:func:`tun_delay` (``python3 -m nattunnel.lab.natemu delay DEVICE SECONDS`` in a namespace)
creates a TUN device and writes every packet the kernel routes into it back into it
``SECONDS`` later; :func:`delay_setup_commands` are the commands that send a host's own
outgoing UDP through it (a policy rule for locally generated UDP, ``accept_local`` and
forwarding for the packets coming back out of the device).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..addr import HostPort

if TYPE_CHECKING:
    from .netns import Lab

__all__ = [
    "Counters",
    "DelayLine",
    "Filtering",
    "Mapping",
    "NatEmulator",
]

Direction = Literal["outbound", "inbound"]


class Filtering(enum.StrEnum):
    """RFC 4787 filtering behaviour for inbound packets on an external port."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass
class Counters:
    """Packet and mapping counters. ``forwarded``/``dropped`` are totals."""

    forwarded_outbound: int = 0
    forwarded_inbound: int = 0
    dropped_filtered: int = 0  # inbound from a source the filtering rejects
    dropped_loss: int = 0  # dropped by the loss impairment
    dropped_expired: int = 0  # inbound on a mapping found expired on arrival
    dropped_closed: int = 0  # arrived while the emulator was closing
    duplicated: int = 0
    reordered: int = 0
    mappings_created: int = 0
    expired: int = 0  # mappings removed for idleness
    rebinds: int = 0
    delayed: int = 0  # packets that went through the delay line
    dropped_delay_full: int = 0  # the delay line held ``delay_limit`` packets already

    @property
    def forwarded(self) -> int:
        return self.forwarded_outbound + self.forwarded_inbound

    @property
    def dropped(self) -> int:
        return (
            self.dropped_filtered + self.dropped_loss + self.dropped_expired + self.dropped_closed
            + self.dropped_delay_full
        )


class DelayLine:
    """A fixed delay: ``push(data, send)`` calls ``send(data)`` ``delay`` seconds later (per
    ``clock``) without blocking. Every packet waits the same time, so the due times only grow:
    the line is a FIFO (the head is always the earliest, what a timer heap would give) and
    keeps the order. At most ``limit`` packets wait; ``push`` returns False beyond that (the
    caller counts the drop). One loop timer, armed for the head; :meth:`release_due` sends
    what is due (a test with a fake clock advances it and calls this)."""

    def __init__(self, delay: float, *, limit: int = 4096,
                 clock: Callable[[], float] = time.monotonic,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0 s, got {delay}")
        if limit < 1:
            raise ValueError(f"delay limit must be >= 1 packet, got {limit}")
        self.delay, self.limit, self.clock, self._loop = delay, limit, clock, loop
        self._queue: collections.deque[tuple[float, bytes, Callable[[bytes], None]]] = (
            collections.deque())
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, data: bytes, send: Callable[[bytes], None]) -> bool:
        if self._closed or len(self._queue) >= self.limit:
            return False
        self._queue.append((self.clock() + self.delay, data, send))
        if self._timer is None:
            self._arm()
        return True

    def _arm(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        wait = max(0.0, self._queue[0][0] - self.clock())
        self._timer = self._loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.release_due()

    def release_due(self) -> int:
        """Send every packet whose time has come; re-arm the timer for the next. Returns
        how many went."""
        now, queue, sent = self.clock(), self._queue, 0
        while queue and queue[0][0] <= now and not self._closed:
            _, data, send = queue.popleft()
            send(data)
            sent += 1
        if queue and self._timer is None and not self._closed:
            self._arm()
        return sent

    def close(self) -> None:
        """Drop what waits and cancel the timer. Idempotent."""
        self._closed = True
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _ExternalProtocol(asyncio.DatagramProtocol):
    """A mapping's external socket: hands what arrives to ``deliver(mapping, self, data,
    source)`` (the emulator's inbound path)."""

    def __init__(self, deliver: Callable[[Mapping, _ExternalProtocol, bytes, HostPort], None],
                 mapping: Mapping) -> None:
        self.deliver = deliver
        self.mapping = mapping

    def datagram_received(self, data: bytes, addr: HostPort) -> None:
        self.deliver(self.mapping, self, data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP errors: ignore, like a NAT
        pass


class _InsideProtocol(asyncio.DatagramProtocol):
    """The inside socket: hands what arrives to ``deliver(data, source)`` (the emulator's
    outbound path)."""

    def __init__(self, deliver: Callable[[bytes, HostPort], None]) -> None:
        self.deliver = deliver

    def datagram_received(self, data: bytes, addr: HostPort) -> None:
        self.deliver(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass


@dataclass(eq=False)
class Mapping:
    """One NAT binding: inside endpoint -> external port."""

    inside: HostPort
    external: HostPort
    created: float
    last_activity: float
    transport: asyncio.DatagramTransport | None = None
    protocol: _ExternalProtocol | None = None
    contacted: set[HostPort] = field(default_factory=set)
    pending: list[tuple[bytes, HostPort]] = field(default_factory=list)
    packets_out: int = 0
    packets_in: int = 0

    def permits(self, src: HostPort, filtering: Filtering) -> bool:
        if filtering is Filtering.ENDPOINT_INDEPENDENT:
            return True
        if filtering is Filtering.ADDRESS_DEPENDENT:
            return any(host == src[0] for host, _ in self.contacted)
        return src in self.contacted


class NatEmulator:
    """The emulator. ``await start()`` (or ``async with``) before use; ``close()`` after."""

    def __init__(
        self,
        public_target: HostPort,
        *,
        inside_host: str = "127.0.0.1",
        inside_port: int = 0,
        outside_host: str = "127.0.0.1",
        mapping_timeout: float = 30.0,
        filtering: Filtering | str = Filtering.ADDRESS_AND_PORT_DEPENDENT,
        inbound_refresh: bool = True,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_hold: float = 0.1,
        delay: float = 0.0,
        delay_limit: int = 4096,
        impair: Literal["both", "outbound", "inbound"] = "both",
        seed: int | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval: float | None = None,
    ) -> None:
        for name, p in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if mapping_timeout <= 0:
            raise ValueError("mapping_timeout must be positive")
        self.public_target: HostPort = public_target
        self.inside_host = inside_host
        self.inside_port = inside_port
        self.outside_host = outside_host
        self.mapping_timeout = mapping_timeout
        self.filtering = Filtering(filtering)
        self.inbound_refresh = inbound_refresh
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.reorder_hold = reorder_hold
        self.delay = delay
        # one line for both directions: the delay is the same, so the order per direction holds
        self.delay_line = DelayLine(delay, limit=delay_limit, clock=clock) if delay else None
        self.impair = impair
        self.rng = rng if rng is not None else random.Random(seed)
        self.clock = clock
        self.sweep_interval = (
            sweep_interval if sweep_interval is not None else min(mapping_timeout / 4, 1.0)
        )
        self.counters = Counters()
        self._mappings: dict[HostPort, Mapping] = {}
        self._inside: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # reordering: one held packet per (mapping, direction)
        self._held: dict[tuple[int, Direction], tuple[bytes, Callable[[bytes], None]]] = {}
        self._held_timers: dict[tuple[int, Direction], asyncio.TimerHandle] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> NatEmulator:
        self._loop = asyncio.get_running_loop()
        transport, _ = await self._loop.create_datagram_endpoint(
            lambda: _InsideProtocol(self._outbound), local_addr=(self.inside_host, self.inside_port)
        )
        self._inside = transport
        self._sweeper = self._loop.create_task(self._sweep_loop())
        return self

    async def __aenter__(self) -> NatEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close every socket and cancel timers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._tasks:
            task.cancel()
        for timer in self._held_timers.values():
            timer.cancel()
        self._held_timers.clear()
        self._held.clear()
        if self.delay_line is not None:
            self.delay_line.close()
        for m in list(self._mappings.values()):
            self._drop_mapping(m)
        self._mappings.clear()
        if self._inside is not None:
            self._inside.close()

    async def aclose(self) -> None:
        """``close()`` and let the loop finish closing the transports."""
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
        self.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)

    # ------------------------------------------------------------------ inspection

    @property
    def inside_address(self) -> HostPort:
        """Where inside endpoints send their packets."""
        if self._inside is None:
            raise RuntimeError("NatEmulator not started")
        host, port = self._inside.get_extra_info("sockname")[:2]
        return host, port

    @property
    def mappings(self) -> list[Mapping]:
        return list(self._mappings.values())

    def mapping_for(self, inside: HostPort) -> Mapping | None:
        return self._mappings.get((inside[0], inside[1]))

    def external_address(self, inside: HostPort) -> HostPort | None:
        m = self.mapping_for(inside)
        return m.external if m is not None else None

    def set_target(self, target: HostPort) -> None:
        """Change where outbound packets go (existing mappings keep their ports)."""
        self.public_target = target

    # ------------------------------------------------------------------ mappings

    def _bind_external(self, avoid: int | None = None) -> socket.socket:
        for _ in range(16):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((self.outside_host, 0))
            if sock.getsockname()[1] != avoid:
                return sock
            sock.close()
        raise RuntimeError("could not bind a new external port")

    def _attach(self, mapping: Mapping, sock: socket.socket) -> None:
        """Create the transport for ``sock`` asynchronously; queue packets until ready."""
        assert self._loop is not None
        mapping.transport = None
        mapping.protocol = proto = _ExternalProtocol(self._inbound, mapping)

        async def attach() -> None:
            assert self._loop is not None
            try:
                transport, _ = await self._loop.create_datagram_endpoint(lambda: proto, sock=sock)
            except BaseException:
                sock.close()
                raise
            if self._closed or mapping.protocol is not proto:
                transport.close()  # mapping dropped or rebound while we were attaching
                return
            mapping.transport = transport
            pending, mapping.pending = mapping.pending, []
            for data, dst in pending:
                transport.sendto(data, dst)

        task = self._loop.create_task(attach())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_mapping(self, inside: HostPort) -> Mapping:
        sock = self._bind_external()
        host, port = sock.getsockname()[:2]
        now = self.clock()
        m = Mapping(inside=inside, external=(host, port), created=now, last_activity=now)
        self._mappings[inside] = m
        self.counters.mappings_created += 1
        self._attach(m, sock)
        return m

    def _drop_mapping(self, m: Mapping) -> None:
        if m.transport is not None:
            m.transport.close()
        m.transport = None
        m.protocol = None  # a pending attach() sees this and closes its transport
        m.pending.clear()
        for d in ("outbound", "inbound"):
            key: tuple[int, Direction] = (id(m), d)
            self._held.pop(key, None)
            timer = self._held_timers.pop(key, None)
            if timer is not None:
                timer.cancel()

    def _is_expired(self, m: Mapping, now: float) -> bool:
        return now - m.last_activity >= self.mapping_timeout

    def expire_idle(self) -> int:
        """Drop every mapping idle for ``mapping_timeout`` (per ``clock``). Returns how many."""
        now = self.clock()
        stale = [m for m in self._mappings.values() if self._is_expired(m, now)]
        for m in stale:
            self._expire(m)
        return len(stale)

    def _expire(self, m: Mapping) -> None:
        if self._mappings.get(m.inside) is m:
            del self._mappings[m.inside]
        self._drop_mapping(m)
        self.counters.expired += 1

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.expire_idle()

    def rebind(self, inside: HostPort) -> HostPort:
        """Move the mapping of ``inside`` onto a new external port (a NAT rebinding).
        The old port is closed: the outside's packets to it are lost from now on."""
        m = self.mapping_for(inside)
        if m is None:
            raise KeyError(f"no mapping for {inside}")
        old_port = m.external[1]
        new_sock = self._bind_external(avoid=old_port)
        if m.transport is not None:
            m.transport.close()
        m.external = new_sock.getsockname()[:2]
        self._attach(m, new_sock)
        self.counters.rebinds += 1
        return m.external

    # ------------------------------------------------------------------ data path

    def _outbound(self, data: bytes, src: HostPort) -> None:
        if self._closed:
            self.counters.dropped_closed += 1
            return
        now = self.clock()
        m = self._mappings.get(src)
        if m is not None and self._is_expired(m, now):
            self._expire(m)
            m = None
        if m is None:
            m = self._new_mapping(src)
        m.last_activity = now
        dst = self.public_target
        m.contacted.add(dst)
        m.packets_out += 1

        def send(payload: bytes, m: Mapping = m, dst: HostPort = dst) -> None:
            if m.transport is not None:
                m.transport.sendto(payload, dst)
            elif m.protocol is not None:
                m.pending.append((payload, dst))
            else:
                return
            self.counters.forwarded_outbound += 1

        self._impaired(m, "outbound", data, send)

    def _inbound(self, m: Mapping, proto: _ExternalProtocol, data: bytes, src: HostPort) -> None:
        if self._closed or m.protocol is not proto or self._inside is None:
            self.counters.dropped_closed += 1  # a socket already rebound or closing
            return
        now = self.clock()
        if self._is_expired(m, now):
            self._expire(m)
            self.counters.dropped_expired += 1
            return
        if not m.permits(src, self.filtering):
            self.counters.dropped_filtered += 1
            return
        if self.inbound_refresh:
            m.last_activity = now
        m.packets_in += 1
        inside_transport = self._inside

        def send(payload: bytes, dst: HostPort = m.inside) -> None:
            inside_transport.sendto(payload, dst)
            self.counters.forwarded_inbound += 1

        self._impaired(m, "inbound", data, send)

    def _impaired(
        self, m: Mapping, direction: Direction, data: bytes, send: Callable[[bytes], None]
    ) -> None:
        if self.impair not in ("both", direction):
            send(data)
            return
        if self.delay_line is not None:
            send = self._delayed(send)
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.counters.dropped_loss += 1
            return
        copies = 1
        if self.duplicate and rng.random() < self.duplicate:
            copies = 2
            self.counters.duplicated += 1
        key: tuple[int, Direction] = (id(m), direction)
        held = self._held.pop(key, None)
        timer = self._held_timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if held is None and self.reorder and rng.random() < self.reorder:
            # Hold this packet; it goes out right after the next one (or after reorder_hold).
            self._held[key] = (data, send)
            self.counters.reordered += 1
            if copies == 2:
                send(data)  # the duplicate is not held
            assert self._loop is not None
            self._held_timers[key] = self._loop.call_later(
                self.reorder_hold, self._release_held, key
            )
            return
        for _ in range(copies):
            send(data)
        if held is not None:
            held[1](held[0])

    def _delayed(self, send: Callable[[bytes], None]) -> Callable[[bytes], None]:
        line = self.delay_line
        assert line is not None

        def push(payload: bytes) -> None:
            if line.push(payload, send):
                self.counters.delayed += 1
            else:
                self.counters.dropped_delay_full += 1

        return push

    def _release_held(self, key: tuple[int, Direction]) -> None:
        self._held_timers.pop(key, None)
        held = self._held.pop(key, None)
        if held is not None and not self._closed:
            held[1](held[0])


# --------------------------------------------------------------------------- a TUN delay


#: the routing table and rule preference of the delay (any free number)
DELAY_TABLE = 150


def delay_setup_commands(device: str, src: str) -> list[list[str]]:
    """The commands (run in the host's namespace once ``device`` exists) that send the
    host's own outgoing UDP (``iif lo``) into the delay device, source ``src``; what comes
    back out of it is forwarded by the main table (``accept_local``: its source is ours)."""
    t = str(DELAY_TABLE)
    cmds = [["sysctl", "-qw", f"net.ipv4.{k}"] for k in (
        "ip_forward=1", "conf.all.rp_filter=0", "conf.default.rp_filter=0",
        f"conf.{device}.rp_filter=0", f"conf.{device}.accept_local=1")]
    return [*cmds, ["ip", "route", "replace", "default", "dev", device, "src", src, "table", t],
            ["ip", "rule", "add", "pref", t, "iif", "lo", "ipproto", "udp", "lookup", t]]


def start_delay(lab: Lab, host: str, src: str, delay: float,
                device: str = "dly0") -> subprocess.Popen[str]:
    """Delay ``host``'s outgoing UDP (source ``src``) by ``delay`` seconds: :func:`tun_delay`
    in its namespace (a process the lab tracks: ``lab.stop(proc)`` ends the delay, the
    device and its route go with it), then :func:`delay_setup_commands`."""
    from .tunnels import PKG_ROOT

    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT), PYTHONUNBUFFERED="1")
    proc: subprocess.Popen[str] = lab.popen(
        host, sys.executable, "-m", "nattunnel.lab.natemu", "delay", device, str(delay),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(PKG_ROOT))
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        lab.stop(proc)
        raise RuntimeError(f"the delay in {host} did not start: {err[-2000:]}")
    for cmd in delay_setup_commands(device, src):
        lab.exec(host, *cmd)
    return proc


async def tun_delay(device: str, delay: float, limit: int = 4096) -> None:
    """Until SIGTERM: every packet routed into TUN ``device`` (created here, MTU 1500) goes
    back into it ``delay`` seconds later, in order (a :class:`DelayLine` of ``limit``)."""
    from ..io.tun import TunDevice

    loop = asyncio.get_running_loop()
    line = DelayLine(delay, limit=limit, loop=loop)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with TunDevice.create(device, 1500, []) as dev:
        buf = memoryview(bytearray(65536))

        def readable() -> None:
            while (n := dev.read_into(buf)) >= 0:
                line.push(bytes(buf[:n]), dev.write)

        loop.add_reader(dev.fileno(), readable)
        print("ready", flush=True)
        await stop.wait()
        loop.remove_reader(dev.fileno())
        line.close()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "delay":
        asyncio.run(tun_delay(sys.argv[2], float(sys.argv[3])))
    else:
        sys.exit("usage: python3 -m nattunnel.lab.natemu delay DEVICE SECONDS")
