"""``nattunnel pubkey FILE``: print the public key (PEM) of an Ed25519 private key file."""

from __future__ import annotations

import argparse
import sys

from .common import Subparsers, fail


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "pubkey", help="print the public key (PEM) of an Ed25519 key file",
        description="Print the public key of an Ed25519 private key file (NAME.key of "
                    "`nattunnel keygen --type ed25519 NAME`), as the peer's "
                    "peer_public_key file wants it: the same text as NAME.pub.")
    p.add_argument("key", metavar="FILE",
                   help="the private key file (PKCS#8 PEM, mode 0600), not the .pub")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..keys import load_ed25519_private, public_key_pem

    try:
        key = load_ed25519_private(args.key)
    except ValueError as e:  # KeyFileError: names the file and the problem, never the key
        return fail("pubkey", str(e))
    sys.stdout.write(public_key_pem(key.public_key()).decode("ascii"))
    return 0
