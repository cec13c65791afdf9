"""``nattunnel keygen``: fresh key material in new 0600 files (``nattunnel.keys``).

``--type`` selects what: esp (the default, so that existing invocations keep their meaning:
``keygen [--suite S] [--force] PATH``, keying material for a manual SA), ed25519
(``keygen --type ed25519 NAME`` -> keys/NAME.key, 0600, + keys/NAME.pub; NAME may be a path
prefix) or psk (``keygen --type psk PATH``: an IKEv2 pre-shared key). Whatever the type, a
key that goes into ``keys/`` creates that directory (0700) if it does not exist. A private
key is never printed. --suite and --type are checked here, not by argparse ``choices``, so
that errors are the one-line "nattunnel keygen: ..." form and suite aliases
(``suite_by_name``) are accepted.
"""

from __future__ import annotations

import argparse
import os

from .common import Subparsers, fail

KEY_TYPES = ("esp", "ed25519", "psk")


def add_parser(sub: Subparsers) -> None:
    from ..esp.suite import SUITES

    p = sub.add_parser(
        "keygen", help="write fresh key material to new 0600 files",
        description="Fresh keys for IKEv2 peers: `keygen --type psk keys/a-b.psk` (a "
                    "pre-shared key, copied to the peer) or `keygen --type ed25519 hosta` "
                    "(keys/hosta.key and keys/hosta.pub, whose .pub goes to the peer). "
                    "keys/ is created (0700) if it does not exist. A private key is never "
                    "printed.")
    p.add_argument("--type", dest="key_type", default="esp", metavar="TYPE",
                   help="psk: an IKEv2 pre-shared key; ed25519: an IKEv2 key pair "
                        "NAME.key + NAME.pub; esp (the default, for compatibility): ESP "
                        "keying material for a manual SA (tests and benchmarks: no forward "
                        "secrecy, no rekeying)")
    p.add_argument("--suite", default=None,
                   help="--type esp only: ESP suite the keying material is for (default "
                        f"aes256gcm16; one of {', '.join(sorted(SUITES))})")
    p.add_argument("--force", action="store_true", help="replace existing files (atomically)")
    p.add_argument("path", metavar="PATH",
                   help="key file to create; for --type ed25519 the pair's NAME "
                        "(keys/NAME.key and keys/NAME.pub) or a path prefix")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        _keygen(args.path, args.key_type, args.suite, args.force)
    except (ValueError, OSError) as e:
        # KeyFileError is a ValueError; its message never holds the key
        return fail("keygen", str(e))
    return 0


def _keygen(path: str, key_type: str, suite_name: str | None, force: bool) -> None:
    from .. import keys
    from ..esp.suite import suite_by_name

    if key_type not in KEY_TYPES:
        raise ValueError(f"unknown --type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
    if key_type != "esp" and suite_name is not None:
        raise ValueError(f"--suite is for --type esp only, not --type {key_type}")
    suite = suite_by_name(suite_name or "aes256gcm16")  # checked before anything is made
    target = keys.ed25519_pair_paths(path)[0] if key_type == "ed25519" else path
    _make_key_dir(os.path.dirname(target))
    if key_type == "esp":
        keys.write_key_file(path, keys.generate_keymat(suite), force=force)
        print(f"wrote {suite.name} keying material to {path} (mode 0600)")
    elif key_type == "psk":
        keys.write_psk_file(path, keys.generate_psk(), force=force)
        print(f"wrote a {keys.PSK_LEN}-octet IKEv2 pre-shared key to {path} (mode 0600); "
              f"copy it to the peer over a secure channel")
    else:
        key_path, pub_path = keys.ed25519_pair_paths(path)
        key = keys.write_ed25519_pair(key_path, pub_path, force=force)
        print(f"wrote Ed25519 private key to {key_path} (mode 0600)")
        print(f"wrote Ed25519 public key to {pub_path}")
        print(f"public key (raw, base64): {keys.public_key_b64(key.public_key())}")


def _make_key_dir(directory: str) -> None:
    """Create ``keys/`` (mode 0700) when a key goes there and it does not exist yet, for
    every ``--type`` alike (``keys/NAME`` for ed25519, ``keys/a-b.psk``, ``keys/a-to-b.key``).
    Any other missing directory is an error: a typo should not make a tree of directories."""
    from .. import keys

    if os.path.normpath(directory) == keys.KEY_DIR and not os.path.isdir(keys.KEY_DIR):
        os.mkdir(keys.KEY_DIR, 0o700)
        os.chmod(keys.KEY_DIR, 0o700)  # whatever the umask
        print(f"created directory {keys.KEY_DIR} (mode 0700)")
