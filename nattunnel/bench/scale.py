"""``nattunnel bench scale``: one endpoint holding many peers, idle, with keepalives and DPD.

Endpoint B (the one under test, this process) holds ``peers`` peers on loopback:

- half are IKE-managed peers, each with its own identity and PSK, responded to by B. Endpoint A
  in a second process holds the counterpart IKE configurations and initiates (in batches of 25,
  below B's cookie threshold), so that real IKE SAs with child SAs get established; both sides
  then run DPD every ``dpd_interval`` seconds;
- then half are manual-SA peers (an AES-GCM-256 SA pair each) with keepalive "always" every
  ``keepalive_interval`` seconds, their phases spread evenly over one interval (peers added over
  time: the worst case for wakeups, since no two keepalives fall due together). Their
  addresses are a few "sink" UDP sockets (one per 100 peers) that only count what arrives.

A second process keeps A's CPU time and memory out of B's figures; it also hosts the sinks.

Measured for B, during ``seconds`` of idle after setup: wall and process CPU time, timer
wakeups and the CPU time spent in them (the endpoint's counters ``timer_wakeups``,
``timer_cpu``, ``control_timer_cpu``), the deadlines that fell due (keepalives sent and IKE
requests sent: DPD and their retransmissions, the IKE manager's ``requests_sent``), and the
IKE manager's ``handle_timer`` and ``receive_datagram`` calls. Memory: VmRSS before the peers
were added and after their SAs were up, and Python-heap bytes (tracemalloc, on only during
setup; its own bookkeeping is subtracted from the RSS figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import ipaddress
import json
import multiprocessing
import os
import resource
import socket
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..addr import Addr
from ..app import Controller
from ..esp.sa import InboundSA, OutboundSA
from ..esp.suite import SUITES
from ..ike import crypto as kc
from ..ike.config import Identity, IkeConfig
from ..ike.manager import IkeManager, IkePeer
from ..ike.ratelimit import IkeLimits
from ..io.endpoint import Endpoint, InProcessInterface
from ..lab.packets import ipv4_packet
from ..tunnel.core import Tunnel
from ..tunnel.peer import Peer
from .crypto import machine_info

SUITE = SUITES["aes256gcm16"]
#: manual peers per sink socket
PEERS_PER_SINK = 100
#: IKE SAs initiated at once by A (B's default cookie threshold is 32 half-open SAs)
IKE_BATCH = 25
GATEWAY_ID = "gw.scale.example"


@dataclass
class ScaleParams:
    peers: int = 1000
    seconds: float = 30.0
    keepalive_interval: float = 20.0
    dpd_interval: float = 30.0
    setup_timeout: float = 180.0

    @property
    def manual(self) -> int:
        return self.peers // 2

    @property
    def ike(self) -> int:
        return self.peers - self.peers // 2


@dataclass
class ScaleResult:
    params: dict[str, Any]
    machine: dict[str, Any]
    # setup
    add_manual_s: float = 0.0
    ike_setup_s: float = 0.0
    ike_established: int = 0
    #: IKE SAs still established at the end of the idle period, on B and on A
    ike_up_after_idle: int = 0
    peer_ike_up_after_idle: int = 0
    # idle period, endpoint B (this process)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    utime_s: float = 0.0
    stime_s: float = 0.0
    cpu_percent: float = 0.0
    wakeups: int = 0
    wakeups_per_s: float = 0.0
    #: keepalives B sent during the idle period (each one a deadline that fell due)
    keepalives_sent: int = 0
    #: IKE requests B sent during the idle period: DPD and retransmissions (deadlines)
    ike_requests_sent: int = 0
    #: IKE messages B received during the idle period (A's DPD requests, responses to B's)
    ike_received: int = 0
    due_deadlines: int = 0
    #: the socket filter's once-a-second checks (on the same timer)
    filter_checks: int = 0
    #: the fewest keepalives any manual peer sent during the idle period
    min_keepalives_per_peer: int = 0
    max_keepalives_per_peer: int = 0
    #: CPU time inside the endpoint's timer callback, per wakeup
    timer_cpu_s: float = 0.0
    cpu_per_wakeup_us: float = 0.0
    #: calls of IkeManager.handle_timer, and the CPU time inside the control side's timer
    ike_timer_calls: int = 0
    ike_timer_cpu_s: float = 0.0
    ike_sas: int = 0
    # memory, endpoint B
    rss_before: int = 0
    rss_after: int = 0
    rss_per_peer: float = 0.0
    heap_per_manual_peer: float = 0.0
    heap_per_ike_peer: float = 0.0
    heap_per_peer: float = 0.0
    tracemalloc_overhead: int = 0
    rss_after_idle: int = 0
    # the peer side (A process, sinks)
    sink_keepalives_received: int = 0
    keepalives_sent_total: int = 0


# --- addressing --------------------------------------------------------------------------------
def _manual_net(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32")


def _client_net(i: int) -> ipaddress.IPv4Network:
    """The inner address of IKE client i (A side)."""
    return ipaddress.IPv4Network(f"10.{128 + i // 65536}.{i // 256 % 256}.{i % 256}/32")


def _gw_net(i: int) -> ipaddress.IPv4Network:
    """The gateway-side prefix A's client i reaches through B (distinct per client, since A's
    tunnel holds all clients and prefixes may not overlap there)."""
    return ipaddress.IPv4Network(f"10.{192 + i // 65536}.{i // 256 % 256}.{i % 256}/32")


def _psk(seed: bytes, i: int) -> bytes:
    return hashlib.sha256(seed + i.to_bytes(4, "big")).digest()


def _config(i: int, psk: bytes, dpd: float, *, gateway: bool) -> IkeConfig:
    client_id = Identity.parse(f"client{i}.scale.example")
    gw_id = Identity.parse(GATEWAY_ID)
    if gateway:
        return IkeConfig(f"ike{i}", gw_id, client_id, auth="psk", psk=psk,
                         local_ts=(_gw_net(i),), remote_ts=(_client_net(i),),
                         force_encap=True, dpd_interval=dpd)
    return IkeConfig(f"ike{i}", client_id, gw_id, auth="psk", psk=psk,
                     local_ts=(_client_net(i),), remote_ts=(_gw_net(i),),
                     force_encap=True, dpd_interval=dpd)


def vm_rss() -> int:
    """This process's resident set size in octets (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _recv(conn: Connection, timeout: float) -> Any:
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, conn.poll, timeout):
        raise TimeoutError("the peer process did not answer")
    return conn.recv()


# --- the peer side (process A) -----------------------------------------------------------------
def _peer_side(conn: Connection, n_ike: int, n_sinks: int, dpd: float, seed: bytes,
               timeout: float) -> None:
    try:
        asyncio.run(_peer_side_async(conn, n_ike, n_sinks, dpd, seed, timeout))
    except Exception as e:
        with contextlib.suppress(OSError):
            conn.send({"error": f"{type(e).__name__}: {e}"})
        raise
    finally:
        conn.close()


async def _peer_side_async(conn: Connection, n_ike: int, n_sinks: int, dpd: float,
                           seed: bytes, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    received = [0] * n_sinks
    sinks: list[socket.socket] = []

    def drain(k: int, sock: socket.socket) -> None:
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                return
            except OSError:
                continue
            received[k] += 1

    for k in range(n_sinks):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        loop.add_reader(s.fileno(), drain, k, s)
        sinks.append(s)

    tunnel = Tunnel()
    for i in range(n_ike):
        tunnel.add_peer(f"ike{i}", [_gw_net(i)])
    mgr = IkeManager(tunnel)
    a = Endpoint(tunnel, InProcessInterface(), [("127.0.0.1", 0)],
                 control=Controller(tunnel, mgr, ike_port=0))
    await a.start()
    try:
        conn.send({"sinks": [s.getsockname() for s in sinks]})
        msg = await _recv(conn, timeout)
        b_addr: Addr = tuple(msg["b"])
        peers = [tunnel.peers[f"ike{i}"] for i in range(n_ike)]
        end = loop.time() + timeout
        for start in range(0, n_ike, IKE_BATCH):
            batch = range(start, min(start + IKE_BATCH, n_ike))
            for i in batch:
                mgr.add_peer(IkePeer(_config(i, _psk(seed, i), dpd, gateway=False),
                                     initiate=True, remote=b_addr), loop.time())
            a.rearm_timer()
            while any(peers[i].outbound is None for i in batch):
                if loop.time() > end:
                    raise TimeoutError("IKE SAs not established in time")
                await asyncio.sleep(0.01)
        conn.send({"established": sum(p.outbound is not None for p in peers)})
        msg = await _recv(conn, 3600)
        for k, s in enumerate(sinks):
            drain(k, s)
        conn.send({"sink_received": sum(received),
                   "ike_established": sum(sa.established for sa in mgr.sas.values())})
    finally:
        a.close()
        for s in sinks:
            loop.remove_reader(s.fileno())
            s.close()


# --- the endpoint under test (this process) ----------------------------------------------------
def _warm_up() -> None:
    """Allocate what the first peer would otherwise bring in (crypto backends, caches)."""
    keymat = os.urandom(SUITE.keymat_len)
    out, inb = OutboundSA(0x100, SUITE, keymat), InboundSA(0x100, SUITE, keymat)
    assert inb.decapsulate(out.encapsulate(ipv4_packet(100))) is not None
    k1, k2 = kc.KeyExchange(31), kc.KeyExchange(31)
    k1.shared(k2.public)
    ipaddress.ip_network("10.0.0.0/8").overlaps(ipaddress.ip_network("10.1.0.0/16"))


@dataclass
class _B:
    """Endpoint B (the one under test) and what the measurements need of it."""

    tunnel: Tunnel
    endpoint: Endpoint
    manager: IkeManager
    ike_peers: list[Peer]
    manual: list[Peer]


def _start_peer_side(params: ScaleParams, n_sinks: int, seed: bytes
                     ) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_peer_side, name="nattunnel-bench-scale-peers", daemon=True,
                       args=(child_conn, params.ike, n_sinks, params.dpd_interval, seed,
                             params.setup_timeout))
    proc.start()
    child_conn.close()
    return proc, conn


async def _answer(conn: Connection, timeout: float) -> Any:
    msg = await _recv(conn, timeout)
    if "error" in msg:
        raise RuntimeError(f"peer process: {msg['error']}")
    return msg


def _build_b() -> _B:
    """Everything but the peers exists before the baseline: core, endpoint (its buffers),
    IKE manager. Every simulated peer comes from 127.0.0.1 at once: the IKE_SA_INIT rate
    limits are lifted here (the half-open cap and cookies stay)."""
    tunnel = Tunnel()
    mgr = IkeManager(tunnel, limits=IkeLimits(init_rate=1e6, init_burst=1_000_000,
                                              init_rate_total=1e6))
    b = Endpoint(tunnel, InProcessInterface(), [("127.0.0.1", 0)],
                 control=Controller(tunnel, mgr, ike_port=0))
    return _B(tunnel, b, mgr, [], [])


async def _establish_ike(b: _B, params: ScaleParams, seed: bytes, conn: Connection,
                         res: ScaleResult) -> None:
    """B's IKE peers, responded to; A initiates to them all."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    for i in range(params.ike):
        b.ike_peers.append(b.tunnel.add_peer(f"ike{i}", [_client_net(i)], now=loop.time()))
        b.manager.add_peer(IkePeer(_config(i, _psk(seed, i), params.dpd_interval,
                                           gateway=True), initiate=False, remote=None),
                           loop.time())
    await b.endpoint.start()
    conn.send({"b": list(b.endpoint.local_addresses()[0])})
    await _answer(conn, params.setup_timeout + 10)
    end = loop.time() + 10
    while any(p.outbound is None for p in b.ike_peers):
        if loop.time() > end:
            raise TimeoutError("B has not installed every child SA")
        await asyncio.sleep(0.02)
    res.ike_setup_s = time.perf_counter() - t0
    res.ike_established = sum(p.outbound is not None for p in b.ike_peers)
    await asyncio.sleep(0.5)  # last responses out, nothing pending


async def _add_manual(b: _B, params: ScaleParams, sinks: list[Addr],
                      res: ScaleResult) -> None:
    """Manual peers last, so that a long IKE setup cannot bunch their keepalives up: their
    phases are spread over one interval (as if added over time, the worst case for wakeups:
    no two keepalives fall due together). Added in chunks, yielding in between, so that the
    loop keeps answering IKE."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    n_manual = params.manual
    for i in range(n_manual):
        if i % 25 == 0:
            await asyncio.sleep(0)
        phase = params.keepalive_interval * i / n_manual
        peer = b.endpoint.add_peer(f"m{i}", [_manual_net(i)], addr=sinks[i // PEERS_PER_SINK],
                                   keepalive=True,
                                   keepalive_interval=params.keepalive_interval,
                                   now=loop.time() - phase)
        b.tunnel.set_outbound(peer, OutboundSA(0x10000 + i, SUITE,
                                               os.urandom(SUITE.keymat_len)))
        b.tunnel.install_inbound(peer, InboundSA(0x20000 + i, SUITE,
                                                 os.urandom(SUITE.keymat_len)))
        b.manual.append(peer)
    res.add_manual_s = time.perf_counter() - t0


async def _setup(b: _B, params: ScaleParams, seed: bytes, conn: Connection,
                 sinks: list[Addr], say: Callable[[str], None], res: ScaleResult) -> None:
    """Both kinds of peers, with memory measured before and after each."""
    _warm_up()
    gc.collect()
    res.rss_before = vm_rss()
    tracemalloc.start()
    heap0 = tracemalloc.get_traced_memory()[0]
    say(f"establishing {params.ike} IKE SAs (PSK, one identity each, DPD every "
        f"{params.dpd_interval:g} s)")
    await _establish_ike(b, params, seed, conn, res)
    gc.collect()
    heap1 = tracemalloc.get_traced_memory()[0]
    say(f"adding {params.manual} manual-SA peers (keepalive every "
        f"{params.keepalive_interval:g} s)")
    await _add_manual(b, params, sinks, res)
    gc.collect()
    heap2 = tracemalloc.get_traced_memory()[0]
    res.tracemalloc_overhead = tracemalloc.get_tracemalloc_memory()
    res.rss_after = vm_rss() - res.tracemalloc_overhead
    tracemalloc.stop()
    res.rss_per_peer = (res.rss_after - res.rss_before) / params.peers
    res.heap_per_ike_peer = (heap1 - heap0) / params.ike
    res.heap_per_manual_peer = (heap2 - heap1) / params.manual if params.manual else 0.0
    res.heap_per_peer = (heap2 - heap0) / params.peers
    res.ike_sas = len(b.manager.sas)


async def _idle(b: _B, params: ScaleParams, res: ScaleResult) -> None:
    """``params.seconds`` of idle, measured from the endpoint's and the manager's counters."""
    ep, mgr = b.endpoint, b.manager
    ka0 = [p.keepalives_sent for p in b.manual]
    wakeups0, cpu0, ike_cpu0 = ep.timer_wakeups, ep.timer_cpu, ep.control_timer_cpu
    sent0, received0, timers0 = mgr.requests_sent, mgr.receive_calls, mgr.timer_calls
    checks0 = ep.sock_filter.checks
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(params.seconds)
    c1, w1 = time.process_time(), time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    res.wall_s, res.cpu_s = w1 - w0, c1 - c0
    res.utime_s = r1.ru_utime - r0.ru_utime
    res.stime_s = r1.ru_stime - r0.ru_stime
    res.cpu_percent = 100 * res.cpu_s / res.wall_s
    per_peer = [p.keepalives_sent - k for p, k in zip(b.manual, ka0, strict=True)]
    res.keepalives_sent = sum(per_peer)
    res.min_keepalives_per_peer = min(per_peer, default=0)
    res.max_keepalives_per_peer = max(per_peer, default=0)
    res.wakeups = ep.timer_wakeups - wakeups0
    res.wakeups_per_s = res.wakeups / res.wall_s
    res.timer_cpu_s = ep.timer_cpu - cpu0
    res.cpu_per_wakeup_us = 1e6 * res.timer_cpu_s / res.wakeups if res.wakeups else 0
    res.ike_requests_sent = mgr.requests_sent - sent0
    res.ike_received = mgr.receive_calls - received0
    res.filter_checks = ep.sock_filter.checks - checks0
    res.due_deadlines = res.keepalives_sent + res.ike_requests_sent + res.filter_checks
    res.ike_timer_calls = mgr.timer_calls - timers0
    res.ike_timer_cpu_s = ep.control_timer_cpu - ike_cpu0
    res.rss_after_idle = vm_rss()
    res.ike_up_after_idle = sum(sa.established for sa in mgr.sas.values())


async def run_scale(params: ScaleParams,
                    progress: Callable[[str], None] | None = None) -> ScaleResult:
    if params.peers < 2:
        raise ValueError("--peers must be at least 2")
    say = progress or (lambda _s: None)
    loop = asyncio.get_running_loop()
    res = ScaleResult(params=asdict(params), machine=machine_info())
    n_sinks = max(1, -(-params.manual // PEERS_PER_SINK))
    seed = os.urandom(16)
    proc, conn = _start_peer_side(params, n_sinks, seed)
    b: _B | None = None
    try:
        sinks: list[Addr] = [tuple(s) for s in (await _answer(conn, 60))["sinks"]]
        b = _build_b()
        await _setup(b, params, seed, conn, sinks, say, res)
        say(f"idle for {params.seconds:g} s")
        await _idle(b, params, res)
        b.endpoint.close()  # no more keepalives: what was sent is in the sinks' buffers
        res.keepalives_sent_total = sum(p.keepalives_sent for p in b.manual)
        conn.send({"stop": True})
        msg = await _answer(conn, 30)
        res.sink_keepalives_received = msg["sink_received"]
        res.peer_ike_up_after_idle = msg["ike_established"]
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        if b is not None:
            b.endpoint.close()
        await loop.run_in_executor(None, proc.join, 10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        conn.close()
    return res


# --- output ------------------------------------------------------------------------------------
def format_report(r: ScaleResult) -> str:
    p = r.params
    kib = 1024
    lines = [
        f"machine: {r.machine['cpu']}, {r.machine['cores']} cores, kernel "
        f"{r.machine['kernel']}, Python {r.machine['python']}",
        f"endpoint B: {p['peers']} peers = {p['peers'] // 2} manual-SA (keepalive every "
        f"{p['keepalive_interval']:g} s, phases spread) + {p['peers'] - p['peers'] // 2} IKE "
        f"(PSK, DPD every {p['dpd_interval']:g} s); {r.ike_established} IKE SAs up",
        f"setup (tracemalloc on): IKE SAs established in {r.ike_setup_s:.2f} s, then manual "
        f"peers added in {r.add_manual_s:.2f} s",
        "",
        f"idle {r.wall_s:.1f} s:",
        f"  CPU            {r.cpu_s:.3f} s = {r.cpu_percent:.2f} % of one core "
        f"(user {r.utime_s:.3f} s, system {r.stime_s:.3f} s)",
        f"  wakeups        {r.wakeups} = {r.wakeups_per_s:.1f}/s "
        f"(one per peer per second would be {p['peers']}/s)",
        f"  IKE SAs up at the end: {r.ike_up_after_idle} on B, {r.peer_ike_up_after_idle} "
        "on the peer side",
        f"  due deadlines  {r.due_deadlines}: {r.keepalives_sent} keepalives + "
        f"{r.ike_requests_sent} IKE requests (DPD, retransmissions) + "
        f"{r.filter_checks} socket-filter checks; "
        f"{r.ike_received} IKE messages received",
        f"  keepalives per manual peer: {r.min_keepalives_per_peer}..{r.max_keepalives_per_peer}"
        f"; sinks received {r.sink_keepalives_received} of {r.keepalives_sent_total} sent",
        f"  timer callback {r.timer_cpu_s:.3f} s CPU, {r.cpu_per_wakeup_us:.0f} us per wakeup",
        f"  IKE manager    handle_timer x{r.ike_timer_calls} over {r.ike_sas} IKE SAs: "
        f"{r.ike_timer_cpu_s:.3f} s CPU "
        f"({100 * r.ike_timer_cpu_s / r.cpu_s if r.cpu_s else 0:.0f} % of the idle CPU)",
        "",
        "memory:",
        f"  VmRSS          {r.rss_before / kib / kib:.1f} MiB before the peers, "
        f"{r.rss_after / kib / kib:.1f} MiB with them "
        f"(tracemalloc's {r.tracemalloc_overhead / kib / kib:.1f} MiB subtracted) "
        f"-> {r.rss_per_peer / kib:.1f} KiB per peer",
        f"  Python heap    {r.heap_per_peer / kib:.1f} KiB per peer: "
        f"{r.heap_per_manual_peer / kib:.1f} KiB per manual peer, "
        f"{r.heap_per_ike_peer / kib:.1f} KiB per IKE peer",
    ]
    return "\n".join(lines)


def scale_main(peers: int, seconds: float, as_json: bool) -> int:
    params = ScaleParams(peers=peers, seconds=seconds)
    progress = None if as_json else (lambda s: print(f"  {s} ...", flush=True))
    result = asyncio.run(run_scale(params, progress))
    if as_json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(format_report(result))
    return 0


__all__ = ["ScaleParams", "ScaleResult", "format_report", "run_scale", "scale_main", "vm_rss"]
