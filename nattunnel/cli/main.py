"""nattunnel: a userspace IPsec tunnel (ESP in UDP, RFC 3948) with IKEv2 (RFC 7296) that
crosses NATs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


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


def _attacks(text: str) -> list[str]:
    from ..bench.attack import ATTACKS

    return _names(text, list(ATTACKS))


def build_parser() -> argparse.ArgumentParser:
    from ..esp.suite import SUITES

    p = argparse.ArgumentParser(prog="nattunnel", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="measure throughput")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    crypto = bsub.add_parser(
        "crypto", help="ESP encapsulation/decapsulation against the bare AEAD call"
    )
    crypto.add_argument("--sizes", type=_sizes, default=[64, 512, 1400],
                        help="inner packet sizes in octets (default 64,512,1400)")
    crypto.add_argument("--suite", action="append", choices=sorted(SUITES),
                        help="suite to measure (repeatable; default all)")
    crypto.add_argument("--count", type=int, default=50_000,
                        help="packets per variant per round (default 50000)")
    crypto.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    crypto.add_argument("--json", action="store_true", help="print JSON instead of a table")
    netns = bsub.add_parser(
        "netns", help="iperf3 through nattunnel and peer tunnels across a real NAT (root)"
    )
    netns.add_argument("--seconds", type=float, default=10.0,
                       help="length of each iperf3 run (default 10)")
    netns.add_argument("--json", action="store_true", help="print JSON instead of a table")
    netns.add_argument("--only", type=_tunnels, default=None, metavar="LIST",
                       help="comma-separated tunnels to measure besides the no-tunnel "
                            "baseline (default all: nattunnel,wireguard-go,openvpn,strongswan)")
    netns.add_argument("--png", metavar="FILE", default=None,
                       help="also write a bar chart to FILE (needs matplotlib)")
    netns.add_argument("--profile", action="store_true",
                       help="sample nattunnel's endpoints with py-spy during the TCP run and "
                            "print where the time goes")
    netns.add_argument("--install-peers", action="store_true",
                       help="apt-get install wireguard-go, OpenVPN and strongSwan first")
    loopback = bsub.add_parser(
        "loopback", help="two endpoints on loopback, in-process interface (no root)"
    )
    loopback.add_argument("--sizes", type=_sizes, default=[64, 512, 1400],
                          help="inner packet sizes in octets (default 64,512,1400)")
    loopback.add_argument("--suite", action="append", choices=sorted(SUITES),
                          help="suite to measure (repeatable; default aes256gcm16)")
    loopback.add_argument("--seconds", type=float, default=2.0, help="per row (default 2)")
    loopback.add_argument("--json", action="store_true", help="print JSON instead of a table")
    attack = bsub.add_parser(
        "attack", help="an IKEv2 nattunnel tunnel's throughput, memory and drops under "
                       "floods of junk and IKE_SA_INIT (root)"
    )
    attack.add_argument("--seconds", type=float, default=5.0,
                        help="length of each iperf3 run (default 5): one per attack, one "
                             "baseline before each attack and one after the last")
    attack.add_argument("--rate", type=_rate, default=50_000, metavar="N|max",
                        help="junk datagrams per second (default 50000; max: as fast as "
                             "the attacker can)")
    attack.add_argument("--ike-rate", type=_rate, default=2_000, metavar="N|max",
                        help="IKE_SA_INIT requests per second in the IKE flood (default 2000)")
    attack.add_argument("--only", type=_attacks, default=None, metavar="LIST",
                        help="comma-separated attacks (default all, in this order: "
                             "control,replay,truncated,forged,random,oversized,ike-junk,"
                             "keepalive,ike-init)")
    attack.add_argument("--udp", action="store_true",
                        help="the legitimate flow is iperf3 UDP (1300-octet datagrams) "
                             "instead of TCP")
    attack.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scale = bsub.add_parser(
        "scale", help="one endpoint with many idle peers (keepalives, IKE DPD): CPU, memory"
    )
    scale.add_argument("--peers", type=int, default=1000,
                       help="peers of the endpoint under test, half manual-SA, half IKE "
                            "(default 1000)")
    scale.add_argument("--seconds", type=float, default=30.0,
                       help="idle time measured after setup (default 30)")
    scale.add_argument("--json", action="store_true", help="print JSON instead of a report")

    # keygen writes fresh private key material to new files with mode 0600 and never prints
    # a private key. `--type` selects what: esp (the default, so existing invocations keep
    # their meaning: `keygen [--suite S] [--force] PATH`, keying material for a manual SA),
    # ed25519 (`keygen --type ed25519 NAME` -> keys/NAME.key, 0600, + keys/NAME.pub; NAME may
    # be a path prefix) or psk (`keygen --type psk PATH`: an IKEv2 pre-shared key). --suite
    # and --type are validated in main(), not by argparse `choices`, so that errors are the
    # one-line "nattunnel keygen: ..." form and suite aliases (suite_by_name) are accepted.
    keygen = sub.add_parser("keygen", help="write fresh key material to new 0600 files")
    keygen.add_argument("--type", dest="key_type", default="esp", metavar="TYPE",
                        help="esp (default): ESP keying material for a manual SA; "
                             "ed25519: an IKEv2 key pair NAME.key + NAME.pub; "
                             "psk: an IKEv2 pre-shared key")
    keygen.add_argument("--suite", default=None,
                        help="--type esp only: ESP suite the keying material is for (default "
                             f"aes256gcm16; one of {', '.join(sorted(SUITES))})")
    keygen.add_argument("--force", action="store_true",
                        help="replace existing files (atomically)")
    keygen.add_argument("path", metavar="PATH",
                        help="key file to create; for --type ed25519 the pair's NAME "
                             "(keys/NAME.key and keys/NAME.pub) or a path prefix")
    pubkey = sub.add_parser("pubkey", help="print the public key (PEM) of an Ed25519 key file")
    pubkey.add_argument("key", metavar="FILE", help="private key file (PKCS#8 PEM, mode 0600)")
    up = sub.add_parser("up",
                        help="run a tunnel endpoint in the foreground (IKEv2 or manual SAs)")
    up.add_argument("config", metavar="CONFIG", help="TOML configuration (docs/config.md)")
    up.add_argument("--stats", metavar="FILE",
                    help="write counters as JSON to FILE on SIGUSR1 and at exit")
    up.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"], help="default info")

    demo = sub.add_parser("demo", help="two endpoints on loopback across an emulated NAT (no root)")
    demo.add_argument("--nat-timeout", type=float, default=1.0,
                      help="the emulated NAT's mapping timeout in seconds (default 1)")
    demo.add_argument("--seconds", type=float, default=2.0,
                      help="length of the throughput run (default 2)")
    return p


def _up(config_path: str, stats: str | None, level: str) -> int:
    import asyncio
    import logging
    import signal
    from pathlib import Path

    from ..app import run
    from ..config import ConfigError, load_config

    # until the endpoint runs, SIGUSR1 (stats) must not end the process
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"nattunnel up: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(config, Path(stats) if stats else None))
    except OSError as e:  # TUN device or socket setup; TunError says which and why
        print(f"nattunnel up: {e}", file=sys.stderr)
        return 1


_KEY_TYPES = ("esp", "ed25519", "psk")


def _keygen(path: str, key_type: str, suite_name: str | None, force: bool) -> int:
    from .. import keys
    from ..esp.suite import suite_by_name

    try:
        if key_type not in _KEY_TYPES:
            raise ValueError(f"unknown --type {key_type!r}; expected one of "
                             f"{', '.join(_KEY_TYPES)}")
        if key_type != "esp" and suite_name is not None:
            raise ValueError(f"--suite is for --type esp only, not --type {key_type}")
        if key_type == "esp":
            suite = suite_by_name(suite_name or "aes256gcm16")
            keys.write_key_file(path, keys.generate_keymat(suite), force=force)
            print(f"wrote {suite.name} keying material to {path} (mode 0600)")
        elif key_type == "psk":
            keys.write_psk_file(path, keys.generate_psk(), force=force)
            print(f"wrote a {keys.PSK_LEN}-octet IKEv2 pre-shared key to {path} (mode 0600); "
                  f"copy it to the peer over a secure channel")
        else:
            key_path, pub_path = keys.ed25519_pair_paths(path)
            if "/" not in path and not os.path.isdir(keys.KEY_DIR):
                os.mkdir(keys.KEY_DIR, 0o700)
                print(f"created directory {keys.KEY_DIR} (mode 0700)")
            key = keys.write_ed25519_pair(key_path, pub_path, force=force)
            print(f"wrote Ed25519 private key to {key_path} (mode 0600)")
            print(f"wrote Ed25519 public key to {pub_path}")
            print(f"public key (raw, base64): {keys.public_key_b64(key.public_key())}")
    except (ValueError, OSError) as e:
        # KeyFileError is a ValueError; its message never holds the key
        print(f"nattunnel keygen: {e}", file=sys.stderr)
        return 2
    return 0


def _pubkey(path: str) -> int:
    from ..keys import load_ed25519_private, public_key_pem

    try:
        key = load_ed25519_private(path)
    except ValueError as e:  # KeyFileError: names the file and the problem, never the key
        print(f"nattunnel pubkey: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(public_key_pem(key.public_key()).decode("ascii"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.bench_command == "crypto":
        from ..bench.crypto import crypto_main

        if args.count < 1 or args.rounds < 1:
            print("nattunnel bench crypto: --count and --rounds must be positive", file=sys.stderr)
            return 2
        return crypto_main(args.sizes, args.suite, args.count, args.rounds, args.json)
    if args.command == "bench" and args.bench_command == "loopback":
        from ..bench.crypto import loopback_main

        if not 0 < args.seconds <= 600:
            print("nattunnel bench loopback: --seconds must be 0..600", file=sys.stderr)
            return 2
        return loopback_main(args.sizes, args.suite, args.seconds, args.json)
    if args.command == "bench" and args.bench_command == "netns":
        from ..bench.netns import TUNNELS, netns_main

        if not 1 <= args.seconds <= 600:
            print("nattunnel bench netns: --seconds must be 1..600", file=sys.stderr)
            return 2
        return netns_main(args.seconds, args.json, args.only or TUNNELS, png=args.png,
                          install=args.install_peers, profile=args.profile)
    if args.command == "bench" and args.bench_command == "attack":
        from ..bench.attack import ATTACKS, attack_main

        if not 1 <= args.seconds <= 600:
            print("nattunnel bench attack: --seconds must be 1..600", file=sys.stderr)
            return 2
        return attack_main(args.seconds, args.rate, args.ike_rate, args.only or list(ATTACKS),
                           args.json, udp=args.udp)
    if args.command == "bench" and args.bench_command == "scale":
        from ..bench.scale import scale_main

        if not 2 <= args.peers <= 20000 or not 0 < args.seconds <= 3600:
            print("nattunnel bench scale: --peers must be 2..20000 and --seconds 0..3600",
                  file=sys.stderr)
            return 2
        return scale_main(args.peers, args.seconds, args.json)
    if args.command == "up":
        return _up(args.config, args.stats, args.log_level)
    if args.command == "demo":
        from ..lab.demo import main as demo_main

        if not 0.2 <= args.nat_timeout <= 30 or not 0 < args.seconds <= 60:
            print("nattunnel demo: --nat-timeout must be 0.2..30 and --seconds 0..60",
                  file=sys.stderr)
            return 2
        t = args.nat_timeout
        return demo_main(nat_timeout=t, keepalive_interval=t * 0.3, idle=t * 3.5,
                         seconds=args.seconds)
    if args.command == "keygen":
        return _keygen(args.path, args.key_type, args.suite, args.force)
    if args.command == "pubkey":
        return _pubkey(args.key)
    return 2


if __name__ == "__main__":
    sys.exit(main())
