"""The ``nattunnel`` command line."""

from __future__ import annotations

import argparse
import sys


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


def build_parser() -> argparse.ArgumentParser:
    from .suite import SUITES

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.bench_command == "crypto":
        from .bench import crypto_main

        if args.count < 1 or args.rounds < 1:
            print("nattunnel bench crypto: --count and --rounds must be positive", file=sys.stderr)
            return 2
        return crypto_main(args.sizes, args.suite, args.count, args.rounds, args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
