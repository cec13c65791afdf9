"""The ``nattunnel`` program: the top-level parser and the dispatch to the command modules.

Each command module adds its subparser with ``add_parser(subparsers)`` and sets
``func=...``, the function that runs the parsed arguments and returns the exit status;
``main`` calls it. Nothing here imports more than argparse: a command loads what it needs
when it runs.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, control, demo, keygen, netcheck, pubkey, up

DESCRIPTION = ("nattunnel: a userspace IPsec tunnel (ESP in UDP, RFC 3948) with IKEv2 "
               "(RFC 7296) that crosses NATs.")
EPILOG = ("Run `nattunnel COMMAND --help` for a command's options. The configuration file "
          "is described in docs/config.md, the benchmarks in docs/benchmarks.md.")
#: the commands in the order ``--help`` lists them
COMMANDS = (up, control, keygen, pubkey, netcheck, demo, bench)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nattunnel", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"nattunnel {version()}",
                   help="print nattunnel's version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def version() -> str:
    """The installed package's version (pyproject.toml's, as ``nattunnel.__version__``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("nattunnel")
    except PackageNotFoundError:
        # run from a source tree that was never installed: the package's own __version__
        # (the package is loaded, since this module is in it)
        return str(getattr(sys.modules.get("nattunnel"), "__version__", "unknown"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
