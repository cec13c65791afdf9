"""``nattunnel bench handshakes``: IKE_SA_INIT + IKE_AUTH exchanges a responder completes per
second, what each costs it in CPU, and what an established IKE SA holds in memory.

Two parts (docs/benchmarks.md, "IKE handshakes per second"):

- **in process** (no root): a nattunnel responder core (``IkeManager`` with its ``Tunnel``, one
  IKE peer per initiator identity, the flood limits lifted) fed by initiator cores (``IkeSa``)
  in memory, no sockets. Only the responder's calls are timed (``receive_datagram``,
  ``datagrams_to_send``, its events): wall time (``perf_counter``) and CPU (``process_time``);
  the initiators' work lies outside the timed region. One row per case: PSK or Ed25519,
  x25519 or ecp256, and with cookies on (``cookie_threshold`` 0: every IKE_SA_INIT is answered
  with a COOKIE first, so each handshake takes three round trips). Memory per established IKE
  SA (with its child SA in the tunnel): the Python-heap growth (tracemalloc) and the VmRSS
  growth (tracemalloc's own bookkeeping subtracted) over ``memory_sas`` SAs, in a pass of its
  own.
- **against charon** (root): charon (kernel-libipsec, ``nattunnel.lab.strongswan``) and then
  ``nattunnel up``, each as the responder in lab host B, and one load generator in host E (on
  B's segment, no NAT): nattunnel initiator cores over one real UDP socket, ``window``
  handshakes in flight, every SA with its own identity and inner /32 (charon: one connection
  with ``remote id = %any``; nattunnel: one peer per identity), so that both hold every SA
  they made (the initiators send INITIAL_CONTACT: with one identity for all, nattunnel would
  drop each older SA). Both responders answer the same
  generator in the same run; per responder: completed handshakes per second (first request to
  last completion) and CPU per handshake from ``/proc/PID/stat`` of the responder process. The
  generator's own CPU is shown: when it is near one core, the rate is the generator's limit,
  and CPU per handshake is the figure to compare.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import json
import os
import select
import socket
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from ..constants import ENCR_AES_GCM_16, IKE_PORT, NAT_T_PORT, DhGroup, PrfId
from ..ike.base import State
from ..ike.config import Identity, IkeConfig
from ..ike.manager import IkeManager, IkePeer
from ..ike.proposals import IkeProposal
from ..ike.ratelimit import IkeLimits
from ..ike.sa import IkeSa
from ..tunnel.core import Tunnel
from .crypto import machine_info
from .scale import vm_rss

#: the responder's address in the in-process part, and the initiators' host
GW: tuple[str, int] = ("198.18.0.2", IKE_PORT)
CLIENT_HOST = "198.19.0.1"
PSK = b"nattunnel bench handshakes psk 32"
#: the cases of the in-process part: (name, auth, group, cookies)
CASES: tuple[tuple[str, str, str, bool], ...] = (
    ("psk-x25519", "psk", "x25519", False),
    ("ed25519-x25519", "pubkey", "x25519", False),
    ("psk-ecp256", "psk", "ecp256", False),
    ("ed25519-ecp256", "pubkey", "ecp256", False),
    ("psk-x25519-cookies", "psk", "x25519", True),
    ("ed25519-x25519-cookies", "pubkey", "x25519", True),
)
GROUPS = {"x25519": DhGroup.CURVE25519, "ecp256": DhGroup.ECP_256}
#: the target of issue 15: at least this share of charon's rate
TARGET_RATIO = 0.5


def _open_limits(cookie_threshold: int) -> IkeLimits:
    """No flood limit in the way of a benchmark but the cookie threshold."""
    return IkeLimits(cookie_threshold=cookie_threshold, half_open_max=1_000_000,
                     init_rate=1e9, init_burst=1_000_000_000, init_rate_total=1e9,
                     ike_sas_per_identity=1_000_000)


def _proposal(group: str) -> tuple[IkeProposal, ...]:
    return (IkeProposal(ENCR_AES_GCM_16, 256, PrfId.HMAC_SHA2_256, GROUPS[group]),)


def _net(base: int, i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.{base + i // 65536}.{i // 256 % 256}.{i % 256}/32")


@dataclass
class _Keys:
    gw: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    client: ed25519.Ed25519PrivateKey = field(
        default_factory=ed25519.Ed25519PrivateKey.generate)


def _configs(i: int, auth: str, group: str, keys: _Keys) -> tuple[IkeConfig, IkeConfig]:
    """(the initiator's, the responder's) configuration of client ``i``: its own identity
    and inner prefix, no DPD, no rekeys."""
    cid, gid = Identity.parse(f"c{i}.bench.example"), Identity.parse("gw.bench.example")
    common: dict[str, Any] = dict(auth=auth, psk=PSK, ike_proposals=_proposal(group),
                                  dpd_interval=0, child_rekey_time=0, ike_rekey_time=0)
    ini = IkeConfig(f"gw{i}", cid, gid, local_ts=(_net(128, i),), remote_ts=(_net(64, i),),
                    private_key=keys.client, peer_public_key=keys.gw.public_key(), **common)
    resp = IkeConfig(f"c{i}", gid, cid, local_ts=(_net(64, i),), remote_ts=(_net(128, i),),
                     private_key=keys.gw, peer_public_key=keys.client.public_key(), **common)
    return ini, resp


@dataclass
class CaseResult:
    case: str
    auth: str
    group: str
    cookies: bool
    handshakes: int = 0
    failed: int = 0
    #: the responder's calls only
    responder_wall_s: float = 0.0
    responder_cpu_s: float = 0.0
    per_second: float = 0.0
    cpu_per_handshake_us: float = 0.0
    #: messages the responder received per handshake (2 without cookies, 3 with)
    requests_per_handshake: float = 0.0
    cookies_sent: int = 0
    #: the initiators' time (outside the timed region), for comparison
    initiator_wall_s: float = 0.0


class _Responder:
    """The responder core with ``n`` peers, and the timed feeding of it."""

    def __init__(self, n: int, auth: str, group: str, cookies: bool, keys: _Keys) -> None:
        self.tunnel = Tunnel()
        self.mgr = IkeManager(self.tunnel,
                              limits=_open_limits(0 if cookies else 1_000_000 - 1))
        self.initiator_configs: list[IkeConfig] = []
        for i in range(n):
            ini, resp = _configs(i, auth, group, keys)
            self.tunnel.add_peer(resp.name, [_net(128, i)])
            self.mgr.add_peer(IkePeer(resp, initiate=False, remote=None), 0.0)
            self.initiator_configs.append(ini)
        self.wall = self.cpu = 0.0
        self.requests = 0

    def feed(self, data: bytes, remote: tuple[str, int], natt: bool, now: float) -> list[Any]:
        """One message to the responder, timed; what it answers."""
        mgr = self.mgr
        c0, w0 = time.process_time(), time.perf_counter()
        mgr.receive_datagram(data, remote, now, natt=natt,
                             local=(GW[0], NAT_T_PORT if natt else IKE_PORT))
        outs = mgr.datagrams_to_send()
        while mgr.next_event() is not None:
            pass
        self.wall += time.perf_counter() - w0
        self.cpu += time.process_time() - c0
        self.requests += 1
        return outs


def _handshake(resp: _Responder, i: int, now: float) -> tuple[bool, float]:
    """Client ``i`` initiates; the messages go back and forth until its IKE SA (and child
    SA) is up or nothing moves. Returns (established, the initiator's own wall time)."""
    t0 = time.perf_counter()
    own = 0.0
    me = (CLIENT_HOST, 1024 + i % 60000)
    ini = IkeSa(resp.initiator_configs[i], initiator=True, local=me, remote=GW, now=now)
    ini.start(now)
    for _ in range(8):
        outs = ini.datagrams_to_send()
        if not outs:
            break
        replies = []
        for o in outs:
            own += time.perf_counter() - t0
            replies += resp.feed(o.data, me, o.natt, now)
            t0 = time.perf_counter()
        for r in replies:
            ini.receive(r.data, now, (GW[0], NAT_T_PORT if r.natt else IKE_PORT), r.natt)
        while ini.next_event() is not None:
            pass
    own += time.perf_counter() - t0
    return ini.state is State.ESTABLISHED, own


def run_case(name: str, auth: str, group: str, cookies: bool, n: int,
             keys: _Keys | None = None) -> CaseResult:
    keys = keys or _Keys()
    resp = _Responder(n + 1, auth, group, cookies, keys)
    _handshake(resp, n, 0.0)  # warm-up: the first of its kind brings in the backends
    resp.wall = resp.cpu = 0.0
    resp.requests = 0
    cookies0 = resp.mgr.counters["cookies_sent"]
    res = CaseResult(name, auth, group, cookies)
    for i in range(n):
        ok, own = _handshake(resp, i, 1.0 + i * 1e-3)
        res.handshakes += ok
        res.failed += not ok
        res.initiator_wall_s += own
    res.responder_wall_s, res.responder_cpu_s = resp.wall, resp.cpu
    res.per_second = res.handshakes / resp.wall if resp.wall else 0.0
    res.cpu_per_handshake_us = 1e6 * resp.cpu / res.handshakes if res.handshakes else 0.0
    res.requests_per_handshake = resp.requests / n if n else 0.0
    res.cookies_sent = resp.mgr.counters["cookies_sent"] - cookies0
    return res


@dataclass
class MemoryResult:
    sas: int = 0
    established: int = 0
    heap_per_sa: float = 0.0
    rss_per_sa: float = 0.0
    tracemalloc_overhead: int = 0


def run_memory(n: int, keys: _Keys | None = None) -> MemoryResult:
    """``n`` IKE SAs (PSK, x25519) established in one responder, with the heap and VmRSS
    measured before and after (the peers' configurations exist before the baseline)."""
    keys = keys or _Keys()
    resp = _Responder(n + 1, "psk", "x25519", False, keys)
    _handshake(resp, n, 0.0)
    gc.collect()
    rss0 = vm_rss()
    tracemalloc.start()
    try:
        heap0 = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            _handshake(resp, i, 1.0)
        gc.collect()
        heap1 = tracemalloc.get_traced_memory()[0]
        overhead = tracemalloc.get_tracemalloc_memory()
        rss1 = vm_rss() - overhead
    finally:
        tracemalloc.stop()
    established = sum(sa.established for sa in resp.mgr.sas.values()) - 1
    return MemoryResult(n, established, (heap1 - heap0) / n, (rss1 - rss0) / n, overhead)


@dataclass
class InProcessResult:
    machine: dict[str, Any]
    n: int
    cases: list[CaseResult]
    memory: MemoryResult | None


def run_in_process(n: int, memory_sas: int, cases: Sequence[str] = (),
                   progress: Callable[[str], None] | None = None) -> InProcessResult:
    say = progress or (lambda _s: None)
    keys = _Keys()
    out = []
    for name, auth, group, cookies in CASES:
        if cases and name not in cases:
            continue
        say(f"in process: {name}, {n} handshakes")
        out.append(run_case(name, auth, group, cookies, n, keys))
    mem = None
    if memory_sas:
        say(f"in process: memory over {memory_sas} established IKE SAs")
        mem = run_memory(memory_sas, keys)
    return InProcessResult(machine_info(), n, out, mem)


def format_in_process(r: InProcessResult) -> str:
    lines = [f"in process (no sockets), {r.n} handshakes per case; the responder's calls "
             "only:",
             f"{'case':<24}{'done':>6}{'fail':>5}{'per s':>9}{'CPU us/hs':>11}"
             f"{'msgs/hs':>8}{'cookies':>8}{'initiator s':>12}"]
    for c in r.cases:
        lines.append(f"{c.case:<24}{c.handshakes:>6}{c.failed:>5}{c.per_second:>9.0f}"
                     f"{c.cpu_per_handshake_us:>11.0f}{c.requests_per_handshake:>8.1f}"
                     f"{c.cookies_sent:>8}{c.initiator_wall_s:>12.2f}")
    if r.memory is not None:
        m = r.memory
        lines.append(f"memory per established IKE SA (PSK, x25519, with its child SA), over "
                     f"{m.sas} SAs ({m.established} established): Python heap "
                     f"{m.heap_per_sa / 1024:.1f} KiB (tracemalloc), VmRSS "
                     f"{m.rss_per_sa / 1024:.1f} KiB (tracemalloc's "
                     f"{m.tracemalloc_overhead / 2**20:.1f} MiB subtracted)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- against charon
#: the lab part's identities and inner prefixes (one identity for every generated SA)
LAB_CLIENT_ID, LAB_GW_ID = "client.bench.example", "gw.bench.example"
LAB_GW_TS = "198.18.201.2/32"
#: the generated clients' inner prefixes lie in this (one /32 each)
LAB_CLIENT_NETS = "10.128.0.0/9"
LAB_PSK = "nattunnel-bench-handshakes-psk"


def _distinct(auth: str) -> bool:
    """Whether each generated client has its own identity: with PSK (charon: one connection
    for any remote identity); not with Ed25519, where charon binds the raw public key to one
    configured identity (neither ``%any`` nor ``*.domain`` authenticates): one identity for
    all, charon keeps every SA (``unique = never``), nattunnel drops the older ones (each
    IKE_AUTH carries INITIAL_CONTACT)."""
    return auth != "ed25519"


def _lab_client(i: int, distinct: bool = True) -> tuple[str, str]:
    """Generated client ``i``'s identity and inner prefix."""
    if not distinct:
        return LAB_CLIENT_ID, "10.128.0.1/32"
    return f"c{i}.{LAB_CLIENT_ID}", f"10.{128 + i // 65536}.{i // 256 % 256}.{i % 256}/32"


def _lab_initiator_configs(n: int, auth: str, key: Path | None, peer_pub: Path | None
                           ) -> list[IkeConfig]:
    from ..keys import load_ed25519_private, load_ed25519_public

    private = load_ed25519_private(key) if key else None
    public = load_ed25519_public(peer_pub) if peer_pub else None
    out = []
    for i in range(n):
        ident, ts = _lab_client(i, _distinct("ed25519" if auth == "pubkey" else auth))
        out.append(IkeConfig("gw", Identity.parse(ident), Identity.parse(LAB_GW_ID),
                             auth=auth, psk=LAB_PSK.encode(), private_key=private,
                             peer_public_key=public, local_ts=(ipaddress.ip_network(ts),),
                             remote_ts=(ipaddress.ip_network(LAB_GW_TS),),
                             dpd_interval=0, child_rekey_time=0, ike_rekey_time=0))
    return out


def _generate(cfgs: list[IkeConfig], dest: str, window: int, seconds: float
              ) -> dict[str, Any]:
    """One handshake to ``dest`` per configuration (each its own identity), at most
    ``window`` in flight, over one UDP socket (the responder answers where a request came
    from); answers are matched by the initiator's SPI. Stops after ``seconds``."""
    n = len(cfgs)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect((dest, IKE_PORT))
    me = s.getsockname()
    s.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(me)
    s.setblocking(False)
    live: dict[bytes, IkeSa] = {}
    started = done = failed = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    first = last = t0
    end = t0 + seconds

    def flush(sa: IkeSa) -> None:
        for o in sa.datagrams_to_send():
            data = bytes(4) + o.data if o.natt else o.data
            with contextlib.suppress(OSError):
                s.sendto(data, o.remote)

    while (done + failed < n) and time.monotonic() < end:
        now = time.monotonic()
        while len(live) < window and started < n:
            sa = IkeSa(cfgs[started], initiator=True, local=me, remote=(dest, IKE_PORT),
                       now=now)
            sa.start(now)
            live[sa.spi_i] = sa
            started += 1
            flush(sa)
        if not select.select([s], [], [], 0.05)[0]:
            for sa in list(live.values()):  # retransmissions
                timer = sa.get_timer()
                if timer is not None and timer <= now:
                    sa.handle_timer(now)
                    flush(sa)
        for _ in range(64):
            try:
                data, src = s.recvfrom(65535)
            except BlockingIOError:
                break
            natt = src[1] != IKE_PORT
            if natt:
                if data[:4] != bytes(4):
                    continue
                data = data[4:]
            got = live.get(data[:8])
            if got is None:
                continue
            now = time.monotonic()
            got.receive(data, now, src, natt)
            while got.next_event() is not None:
                pass
            flush(got)
            if got.state is State.ESTABLISHED:
                done += 1
                last = now
                del live[got.spi_i]
            elif got.state is State.DEAD:
                failed += 1
                del live[got.spi_i]
    s.close()
    return {"done": done, "failed": failed + len(live), "started": started,
            "elapsed": last - first, "cpu_seconds": time.process_time() - cpu0}


def generator_main(argv: Sequence[str] | None = None) -> int:
    """The load generator process (in lab host E): ``python -c 'from
    nattunnel.bench.handshakes import generator_main; generator_main()' JSON``; JSON has
    dest, n, window, seconds, auth, key, peer_pub. Prints its result as JSON."""
    cfg = json.loads((argv or sys.argv[1:])[0])
    key = Path(cfg["key"]) if cfg.get("key") else None
    pub = Path(cfg["peer_pub"]) if cfg.get("peer_pub") else None
    cfgs = _lab_initiator_configs(int(cfg["n"]), cfg["auth"], key, pub)
    out = _generate(cfgs, cfg["dest"], int(cfg["window"]), float(cfg["seconds"]))
    print(json.dumps(out), flush=True)
    return 0


@dataclass
class LabRow:
    responder: str
    auth: str
    handshakes: int = 0
    failed: int = 0
    seconds: float = 0.0
    per_second: float = 0.0
    responder_cpu_s: float = 0.0
    cpu_per_handshake_us: float = 0.0
    generator_cpu_s: float = 0.0
    #: the generator's CPU over the run's wall time: near 1.0, it is the limit
    generator_load: float = 0.0
    #: established IKE SAs the responder holds at the end (-1: could not be asked)
    held: int = -1
    status: str = "ok"


def _run_generator(lab: Any, auth: str, n: int, window: int, seconds: float,
                   keys: dict[str, Path]) -> dict[str, Any]:
    import subprocess

    from ..lab.tunnels import PKG_ROOT

    cfg = {"dest": lab.addr["b"], "n": n, "window": window, "seconds": seconds,
           "auth": "pubkey" if auth == "ed25519" else "psk",
           "key": str(keys["client.key"]) if auth == "ed25519" else "",
           "peer_pub": str(keys["gw.pub"]) if auth == "ed25519" else ""}
    env = dict(os.environ, PYTHONPATH=str(PKG_ROOT))
    proc = lab.popen("e", sys.executable, "-c",
                     "from nattunnel.bench.handshakes import generator_main; generator_main()",
                     json.dumps(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     env=env, text=True)
    try:
        out, err = proc.communicate(timeout=seconds + 30)
    finally:
        lab.stop(proc)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"the load generator failed: {err.strip()[-400:]}")
    doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return doc


def _measure(lab: Any, responder: str, auth: str, pid: int, n: int, window: int,
             seconds: float, keys: dict[str, Path]) -> LabRow:
    from .attack import _cpu_seconds

    row = LabRow(responder, auth)
    cpu0 = _cpu_seconds(pid)
    try:
        g = _run_generator(lab, auth, n, window, seconds, keys)
    except (RuntimeError, OSError, ValueError) as exc:
        row.status = f"failed: {exc}"[:200]
        return row
    row.responder_cpu_s = _cpu_seconds(pid) - cpu0
    row.handshakes, row.failed, row.seconds = g["done"], g["failed"], g["elapsed"]
    row.per_second = row.handshakes / row.seconds if row.seconds > 0 else 0.0
    row.cpu_per_handshake_us = (1e6 * row.responder_cpu_s / row.handshakes
                                if row.handshakes else 0.0)
    row.generator_cpu_s = g["cpu_seconds"]
    row.generator_load = row.generator_cpu_s / row.seconds if row.seconds > 0 else 0.0
    return row


def _lab_keys(workdir: Path) -> dict[str, Path]:
    from ..keys import write_ed25519_pair, write_psk_file

    keys = workdir / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    out = {k: keys / k for k in ("gw.key", "gw.pub", "client.key", "client.pub", "psk")}
    write_ed25519_pair(out["gw.key"], out["gw.pub"], force=True)
    write_ed25519_pair(out["client.key"], out["client.pub"], force=True)
    write_psk_file(out["psk"], LAB_PSK.encode(), force=True)
    return out


def _charon_rows(lab: Any, workdir: Path, auths: Sequence[str], n: int, window: int,
                 seconds: float, keys: dict[str, Path]) -> list[LabRow]:
    from ..lab.strongswan import Charon, SwanConn

    rows = []
    for auth in auths:
        pub = auth == "ed25519"
        conn = SwanConn(name="bench", local_id=LAB_GW_ID,
                        remote_id="%any" if _distinct(auth) else LAB_CLIENT_ID,
                        auth="pubkey" if pub else "psk", psk=None if pub else LAB_PSK,
                        private_key=keys["gw.key"] if pub else None,
                        local_pubkey=keys["gw.pub"] if pub else None,
                        remote_pubkey=keys["client.pub"] if pub else None,
                        local_ts=LAB_GW_TS, remote_ts=LAB_CLIENT_NETS, encap=False,
                        mobike=False, dpd_delay=None, extra={"unique": "never"})
        charon = Charon.start(lab, "b", workdir / f"charon-{auth}", conn=conn,
                              log_levels={"default": 0},
                              settings={"cookie_threshold": "1000000",
                                        "block_threshold": "1000000"},
                              inner_addrs=[LAB_GW_TS])
        try:
            assert charon.pid is not None
            rows.append(_measure(lab, "charon", auth, charon.pid, n, window, seconds, keys))
            with contextlib.suppress(RuntimeError, OSError):
                rows[-1].held = sum(sa.state == "ESTABLISHED" for sa in charon.list_sas())
        finally:
            charon.stop()
    return rows


def _nattunnel_config(workdir: Path, auth: str, keys: dict[str, Path], n: int) -> str:
    """B's configuration: one IKE peer per generated client."""
    from ..lab.tunnels import INNER, control_path

    cred = (f'private_key = "{keys["gw.key"]}"\npeer_public_key = "{keys["client.pub"]}"\n'
            if auth == "ed25519" else f'psk_file = "{keys["psk"]}"\n')
    kind = "pubkey" if auth == "ed25519" else "psk"
    text = [f'listen = ["0.0.0.0:4500"]\ncontrol_socket = "{control_path(workdir, "b")}"\n'
            f'[interface]\nkind = "tun"\nname = "nt0"\naddresses = ["{INNER["b"]}/32"]\n'
            "[limits]\ncookie_threshold = 100000\nhalf_open_max = 200000\n"
            "init_rate = 1000000\ninit_burst = 1000000\ninit_rate_total = 1000000\n"]
    if not _distinct(auth):
        text.append("ike_sas_per_identity = 1000000\n")
    for i in range(n if _distinct(auth) else 1):
        ident, ts = _lab_client(i, _distinct(auth))
        text.append(f'[[peer]]\nname = "c{i}"\nauth = "{kind}"\nlocal_id = "{LAB_GW_ID}"\n'
                    f'remote_id = "{ident}"\nallowed_ips = ["{ts}"]\ninitiate = false\n'
                    f"dpd_interval = 0\n{cred}")
    return "".join(text)


def _nattunnel_rows(lab: Any, workdir: Path, auths: Sequence[str], n: int, window: int,
                    seconds: float, keys: dict[str, Path]) -> list[LabRow]:
    from ..lab.tunnels import Tunnels, start_ike_node

    rows = []
    for auth in auths:
        d = workdir / f"nattunnel-{auth}"
        d.mkdir()
        (d / "b.toml").write_text(_nattunnel_config(d, auth, keys, n))
        t = Tunnels(lab, d)
        node = start_ike_node(t, "b", log_level="info", timeout=60.0)
        try:
            rows.append(_measure(lab, "nattunnel", auth, node.proc.pid, n, window, seconds,
                                 keys))
            with contextlib.suppress(RuntimeError, OSError, KeyError, TimeoutError):
                rows[-1].held = sum(sa["state"] == "established"
                                    for sa in node.stats(timeout=20.0)["ike"]["ike_sas"])
        finally:
            lab.stop(node.proc, timeout=5.0)
    return rows


@dataclass
class LabResult:
    n: int
    window: int
    rows: list[LabRow]
    #: nattunnel's rate over charon's, per auth
    ratio: dict[str, float] = field(default_factory=dict)
    cpu_ratio: dict[str, float] = field(default_factory=dict)


def run_lab(n: int, window: int = 16, seconds: float = 60.0,
            auths: Sequence[str] = ("psk", "ed25519"),
            progress: Callable[[str], None] | None = None) -> LabResult:
    """charon, then nattunnel, as the responder in B; the generator in E (root)."""
    from ..lab.netns import Lab

    say = progress or (lambda _s: None)
    with Lab(with_e=True) as lab, \
            tempfile.TemporaryDirectory(prefix="nattunnel-hs-") as tmp:
        workdir = Path(tmp)
        keys = _lab_keys(workdir)
        say(f"charon responder in B, {n} handshakes per auth, {window} in flight")
        rows = _charon_rows(lab, workdir, auths, n, window, seconds, keys)
        say(f"nattunnel responder in B, {n} handshakes per auth, {window} in flight")
        rows += _nattunnel_rows(lab, workdir, auths, n, window, seconds, keys)
    res = LabResult(n, window, rows)
    for auth in auths:
        c = next((r for r in rows if r.responder == "charon" and r.auth == auth), None)
        m = next((r for r in rows if r.responder == "nattunnel" and r.auth == auth), None)
        if c and m and c.per_second and m.cpu_per_handshake_us:
            res.ratio[auth] = m.per_second / c.per_second
            res.cpu_ratio[auth] = m.cpu_per_handshake_us / c.cpu_per_handshake_us \
                if c.cpu_per_handshake_us else 0.0
    return res


def format_lab(r: LabResult) -> str:
    lines = [f"against charon: responder in lab host B, generator (nattunnel initiator cores "
             f"over UDP) in E, {r.n} handshakes per row, {r.window} in flight:",
             f"{'responder':<11}{'auth':<9}{'done':>6}{'fail':>5}{'s':>7}{'per s':>8}"
             f"{'CPU s':>7}{'CPU us/hs':>11}{'gen CPU':>9}{'held':>7}"]
    for x in r.rows:
        left = f"{x.responder:<11}{x.auth:<9}"
        if x.status != "ok":
            lines.append(f"{left}  {x.status}")
            continue
        lines.append(f"{left}{x.handshakes:>6}{x.failed:>5}{x.seconds:>7.2f}"
                     f"{x.per_second:>8.0f}{x.responder_cpu_s:>7.2f}"
                     f"{x.cpu_per_handshake_us:>11.0f}{x.generator_load:>9.2f}{x.held:>7}")
    for auth, ratio in r.ratio.items():
        lines.append(f"{auth}: nattunnel/charon handshakes per second {ratio:.2f} "
                     f"(target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'missed'})"
                     f"; CPU per handshake {r.cpu_ratio.get(auth, 0):.2f}x charon's")
    lines.append("gen CPU: the generator's CPU seconds per second of the run (near 1.0: the "
                 "generator is the limit, compare CPU us/hs); held: established IKE SAs the "
                 "responder holds at the end")
    return "\n".join(lines)


def handshakes_main(n: int, memory_sas: int, lab_n: int, window: int, in_process: bool,
                    lab: bool, as_json: bool) -> int:
    progress = None if as_json else (lambda s: print(f"  {s} ...", flush=True))
    doc: dict[str, Any] = {"machine": machine_info()}
    text = []
    if in_process:
        ip = run_in_process(n, memory_sas, progress=progress)
        doc["in_process"] = {"n": ip.n, "cases": [asdict(c) for c in ip.cases],
                             "memory": asdict(ip.memory) if ip.memory else None}
        text.append(format_in_process(ip))
    if lab:
        from ..lab.netns import lab_problems
        from ..lab.strongswan import strongswan_problems

        problems = lab_problems() + strongswan_problems()
        if problems:
            print("nattunnel bench handshakes: " + "; ".join(sorted(set(problems))),
                  file=sys.stderr)
            return 2
        lr = run_lab(lab_n, window, progress=progress)
        doc["lab"] = asdict(lr)
        text.append(format_lab(lr))
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        m = doc["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, "
              f"Python {m['python']}")
        print("\n\n".join(text))
    return 0


__all__ = ["CASES", "InProcessResult", "LabResult", "generator_main", "handshakes_main",
           "run_case", "run_in_process", "run_lab", "run_memory"]
