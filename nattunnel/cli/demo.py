"""``nattunnel demo``: two endpoints on loopback across an emulated NAT, no root needed
(``nattunnel.lab.demo``)."""

from __future__ import annotations

import argparse

from .common import Subparsers, fail


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "demo", help="two endpoints on loopback across an emulated NAT (no root)",
        description="A tunnel across an emulated NAT on 127.0.0.1: NAT keepalives holding "
                    "the mapping, a NAT rebinding followed, and the in-process data path's "
                    "throughput.")
    p.add_argument("--nat-timeout", type=float, default=1.0,
                   help="the emulated NAT's mapping timeout in seconds (default 1)")
    p.add_argument("--seconds", type=float, default=2.0,
                   help="length of the throughput run (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..lab.demo import main as demo_main

    if not 0.2 <= args.nat_timeout <= 30 or not 0 < args.seconds <= 60:
        return fail("demo", "--nat-timeout must be 0.2..30 and --seconds 0..60")
    t = args.nat_timeout
    return demo_main(nat_timeout=t, keepalive_interval=t * 0.3, idle=t * 3.5,
                     seconds=args.seconds)
