"""``nattunnel bench``: the benchmarks of ``nattunnel.bench`` (docs/benchmarks.md).

``crypto``, ``loopback``, ``scale`` and ``handshakes`` run without root (``handshakes
--lab`` adds charon and ``nattunnel up`` in the lab); ``netns``, ``attack`` and
``traversal`` build the namespace lab (root). Each subcommand's module is imported only
when it runs (and for ``--only``'s names, when the option is given).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .common import Subparsers, fail


def add_parser(sub: Subparsers) -> None:
    bench = sub.add_parser(
        "bench", help="measure throughput, CPU and memory (docs/benchmarks.md)",
        description="Benchmarks: the ESP data path, endpoints on loopback, tunnels across a "
                    "real NAT, traffic under attack, many idle peers (docs/benchmarks.md).")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for add in (_add_crypto, _add_netns, _add_loopback, _add_attack, _add_scale,
                _add_handshakes, _add_traversal):
        add(bsub)


# --------------------------------------------------------------------------- argument types


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes: not a comma-separated list of integers: {text!r}"
        ) from None
    if not sizes or any(not 20 <= s <= 65000 for s in sizes):
        raise argparse.ArgumentTypeError("--sizes: each size must be 20..65000 octets")
    return sizes


def _names(text: str, known: Sequence[str]) -> list[str]:
    """``--only``: a comma-separated list of names from ``known``."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--only: {', '.join(unknown) or 'empty list'}: choose from {','.join(known)}"
        )
    return names


def _tunnels(text: str) -> list[str]:
    from ..bench.netns import TUNNELS

    return _names(text, list(TUNNELS))


def _attacks(text: str) -> list[str]:
    from ..bench.attack import ATTACKS

    return _names(text, list(ATTACKS))


def _rate(text: str) -> int:
    """A datagram rate: a positive integer, or "max" (0: as fast as the attacker can)."""
    if text.strip().lower() == "max":
        return 0
    try:
        rate = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (a number or max)") from None
    if not 1 <= rate <= 10_000_000:
        raise argparse.ArgumentTypeError("a rate must be 1..10000000 per second, or max")
    return rate


# --------------------------------------------------------------------------- crypto, loopback


def _add_crypto(bsub: Subparsers) -> None:
    from ..esp.suite import SUITES

    p = bsub.add_parser(
        "crypto", help="ESP encapsulation/decapsulation against the bare AEAD call"
    )
    p.add_argument("--sizes", type=_sizes, default=[64, 512, 1400],
                   help="inner packet sizes in octets (default 64,512,1400)")
    p.add_argument("--suite", action="append", choices=sorted(SUITES),
                   help="suite to measure (repeatable; default all)")
    p.add_argument("--count", type=int, default=50_000,
                   help="packets per variant per round (default 50000)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_crypto)


def run_crypto(args: argparse.Namespace) -> int:
    from ..bench.crypto import crypto_main

    if args.count < 1 or args.rounds < 1:
        return fail("bench crypto", "--count and --rounds must be positive")
    return crypto_main(args.sizes, args.suite, args.count, args.rounds, args.json)


def _add_loopback(bsub: Subparsers) -> None:
    from ..esp.suite import SUITES

    p = bsub.add_parser(
        "loopback", help="two endpoints on loopback, in-process interface (no root)"
    )
    p.add_argument("--sizes", type=_sizes, default=[64, 512, 1400],
                   help="inner packet sizes in octets (default 64,512,1400)")
    p.add_argument("--suite", action="append", choices=sorted(SUITES),
                   help="suite to measure (repeatable; default aes256gcm16)")
    p.add_argument("--seconds", type=float, default=2.0, help="per row (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_loopback)


def run_loopback(args: argparse.Namespace) -> int:
    from ..bench.crypto import loopback_main

    if not 0 < args.seconds <= 600:
        return fail("bench loopback", "--seconds must be 0..600")
    return loopback_main(args.sizes, args.suite, args.seconds, args.json)


# --------------------------------------------------------------------------- netns, attack, scale


def _add_netns(bsub: Subparsers) -> None:
    p = bsub.add_parser(
        "netns", help="iperf3 through nattunnel and peer tunnels across a real NAT (root)"
    )
    p.add_argument("--seconds", type=float, default=10.0,
                   help="length of each iperf3 run (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--only", type=_tunnels, default=None, metavar="LIST",
                   help="comma-separated tunnels to measure besides the no-tunnel "
                        "baseline (default all: nattunnel,wireguard-go,openvpn,strongswan)")
    p.add_argument("--png", metavar="FILE", default=None,
                   help="also write a bar chart to FILE (needs matplotlib)")
    p.add_argument("--profile", action="store_true",
                   help="sample nattunnel's endpoints with py-spy during the TCP run and "
                        "print where the time goes")
    p.add_argument("--install-peers", action="store_true",
                   help="apt-get install wireguard-go, OpenVPN and strongSwan first")
    p.add_argument("--no-extras", action="store_true",
                   help="throughput only: no ping RTT (idle and under load) and no 64/512-"
                        "octet UDP packet rates (a quicker run)")
    p.add_argument("--sockbuf", type=int, default=None, metavar="OCTETS",
                   help="set nattunnel's port-4500 socket buffers to this size (a sweep)")
    p.add_argument("--txqueuelen", type=int, default=None, metavar="PACKETS",
                   help="set the tunnel devices' transmit queue length (a sweep)")
    p.set_defaults(func=run_netns)


def run_netns(args: argparse.Namespace) -> int:
    from ..bench.netns import TUNNELS, netns_main

    if not 1 <= args.seconds <= 600:
        return fail("bench netns", "--seconds must be 1..600")
    return netns_main(args.seconds, args.json, args.only or TUNNELS, png=args.png,
                      install=args.install_peers, profile=args.profile,
                      extras=not args.no_extras, sockbuf=args.sockbuf,
                      txqueuelen=args.txqueuelen)


def _add_attack(bsub: Subparsers) -> None:
    p = bsub.add_parser(
        "attack", help="an IKEv2 nattunnel tunnel's throughput, memory and drops under "
                       "floods of junk and IKE_SA_INIT (root)"
    )
    p.add_argument("--seconds", type=float, default=5.0,
                   help="length of each iperf3 run (default 5): one per attack, one "
                        "baseline before each attack and one after the last")
    p.add_argument("--rate", type=_rate, default=50_000, metavar="N|max",
                   help="junk datagrams per second (default 50000; max: as fast as "
                        "the attacker can)")
    p.add_argument("--ike-rate", type=_rate, default=2_000, metavar="N|max",
                   help="IKE_SA_INIT requests per second in the IKE flood (default 2000)")
    p.add_argument("--only", type=_attacks, default=None, metavar="LIST",
                   help="comma-separated attacks (default all, in this order: "
                        "control,replay,truncated,forged,random,oversized,ike-junk,"
                        "keepalive,ike-init)")
    p.add_argument("--udp", action="store_true",
                   help="the legitimate flow is iperf3 UDP (1300-octet datagrams) "
                        "instead of TCP")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_attack)


def run_attack(args: argparse.Namespace) -> int:
    from ..bench.attack import ATTACKS, attack_main

    if not 1 <= args.seconds <= 600:
        return fail("bench attack", "--seconds must be 1..600")
    return attack_main(args.seconds, args.rate, args.ike_rate, args.only or list(ATTACKS),
                       args.json, udp=args.udp)


def _add_scale(bsub: Subparsers) -> None:
    p = bsub.add_parser(
        "scale", help="one endpoint with many idle peers (keepalives, IKE DPD): CPU, memory"
    )
    p.add_argument("--peers", type=int, default=1000,
                   help="peers of the endpoint under test, half manual-SA, half IKE "
                        "(default 1000)")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="idle time measured after setup (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a report")
    p.set_defaults(func=run_scale)


def run_scale(args: argparse.Namespace) -> int:
    from ..bench.scale import scale_main

    if not 2 <= args.peers <= 20000 or not 0 < args.seconds <= 3600:
        return fail("bench scale", "--peers must be 2..20000 and --seconds 0..3600")
    return scale_main(args.peers, args.seconds, args.json)


# --------------------------------------------------------------------------- handshakes


def _add_handshakes(bsub: Subparsers) -> None:
    p = bsub.add_parser(
        "handshakes", help="IKE handshakes per second: in process, and against charon (root)",
        description="IKE_SA_INIT + IKE_AUTH completed per second by a nattunnel responder "
                    "(in process, no sockets), memory per IKE SA, and against charon in the "
                    "namespace lab with --lab (root; docs/benchmarks.md).")
    p.add_argument("-n", type=int, default=1000,
                   help="handshakes per in-process case (default 1000)")
    p.add_argument("--memory-sas", type=int, default=2000,
                   help="IKE SAs held for the memory figure (default 2000, 0: none)")
    p.add_argument("--lab", action="store_true",
                   help="also charon and nattunnel up in the lab (root)")
    p.add_argument("--lab-only", action="store_true", help="only the lab part (root)")
    p.add_argument("--lab-n", type=int, default=2000,
                   help="handshakes per responder and auth in the lab (default 2000)")
    p.add_argument("--window", type=int, default=16,
                   help="handshakes in flight in the lab (default 16)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a report")
    p.set_defaults(func=run_handshakes)


def run_handshakes(args: argparse.Namespace) -> int:
    from ..bench.handshakes import handshakes_main

    if not 1 <= args.n <= 100000 or not 0 <= args.memory_sas <= 100000:
        return fail("bench handshakes", "-n must be 1..100000 and --memory-sas 0..100000")
    if not 1 <= args.lab_n <= 100000 or not 1 <= args.window <= 1000:
        return fail("bench handshakes", "--lab-n must be 1..100000 and --window 1..1000")
    return handshakes_main(args.n, args.memory_sas, args.lab_n, args.window,
                           not args.lab_only, args.lab or args.lab_only, args.json)


def _add_traversal(bsub: Subparsers) -> None:
    p = bsub.add_parser(
        "traversal", help="NAT traversal: first packet, relay and direct, idle (root)",
        description="Time to the first packet through the tunnel (direct and through a TURN "
                    "relay), the move from the relay to a direct path and back (seconds, "
                    "pings lost at 10 pps), TCP throughput through the relay against direct, "
                    "and a long idle run behind a NAT with a short mapping timeout; in the "
                    "namespace lab with coturn (root; docs/benchmarks.md).")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="length of each iperf3 run (default 5)")
    p.add_argument("--rounds", type=int, default=5,
                   help="first-packet measurements of each kind (default 5)")
    p.add_argument("--idle", type=float, default=600.0,
                   help="seconds of silence on the tunnel (default 600; 0: skip)")
    p.add_argument("--mapping-timeout", type=float, default=30.0,
                   help="the NATs' UDP mapping timeout, seconds (default 30)")
    p.add_argument("--keepalive", type=float, default=20.0,
                   help="the NAT keepalive interval in the idle run, seconds (default 20)")
    p.add_argument("--only", type=_parts, default=None, metavar="LIST",
                   help="comma-separated parts to run (default all: "
                        "first,mediated,moves,throughput,idle)")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="one-way delay added to the UDP of A, B and C in the mediated part, "
                        "ms (default 0; lab/natemu.py's TUN delay)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a report")
    p.set_defaults(func=run_traversal)


def _parts(text: str) -> list[str]:
    from ..bench.traversal import PARTS

    return _names(text, list(PARTS))


def run_traversal(args: argparse.Namespace) -> int:
    from ..bench.traversal import PARTS, traversal_main

    if not 1 <= args.seconds <= 600 or not 1 <= args.rounds <= 100:
        return fail("bench traversal", "--seconds must be 1..600 and --rounds 1..100")
    if not 0 <= args.idle <= 86400 or not 2 <= args.mapping_timeout <= 3600:
        return fail("bench traversal", "--idle must be 0..86400, --mapping-timeout 2..3600")
    if not 1 <= args.keepalive < args.mapping_timeout:
        return fail("bench traversal", "--keepalive must be 1 s or more and less than "
                    "--mapping-timeout")
    if not 0 <= args.delay_ms <= 1000:
        return fail("bench traversal", "--delay-ms must be 0..1000")
    return traversal_main(args.seconds, args.idle, args.mapping_timeout, args.keepalive,
                          args.rounds, args.json, tuple(args.only or PARTS), args.delay_ms)
