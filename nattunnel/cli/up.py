"""``nattunnel up CONFIG``: run one tunnel endpoint in the foreground (``nattunnel.app``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Subparsers, fail


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "up", help="run a tunnel endpoint in the foreground",
        description="Run one tunnel endpoint in the foreground with the IKEv2 peers of a "
                    "TOML configuration (docs/config.md; two-host examples in "
                    "docs/examples/ike-a.toml and ike-b.toml) until SIGINT, SIGTERM or "
                    "`nattunnel down`, then stop gracefully (a Delete for every IKE SA). "
                    "While it runs, `nattunnel show`, `initiate`, `terminate`, `rekey` and "
                    "`reload` steer it through its control socket (control_socket, by default "
                    "/run/nattunnel/NAME.sock for NAME.toml). SIGUSR1 writes the counters to "
                    "--stats FILE.")
    p.add_argument("config", metavar="CONFIG", help="TOML configuration (docs/config.md)")
    p.add_argument("--stats", metavar="FILE",
                   help="write counters as JSON to FILE on SIGUSR1 and at exit (its "
                        "directory must exist: checked at start)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from ..app import run as run_endpoint
    from ..config import ConfigError, load_config

    # until the endpoint runs, SIGUSR1 (stats) must not end the process
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        return fail("up", str(e))
    if args.stats is not None and (problem := _stats_problem(Path(args.stats))):
        return fail("up", f"--stats {args.stats}: {problem}")
    try:
        # once stopping, a further SIGINT or SIGTERM changes nothing: the endpoint's handlers
        # stay through its teardown, and then both are ignored until the process ends
        return asyncio.run(run_endpoint(config, Path(args.stats) if args.stats else None,
                                        ignore_signals_after=True))
    except KeyboardInterrupt:
        # SIGINT before the endpoint's handlers were in: nothing is left open (the TUN
        # device and the sockets close on the way out)
        return fail("up", "interrupted", 130)
    except OSError as e:  # TUN device or socket setup; TunError says which and why
        return fail("up", str(e), 1)


def _stats_problem(path: Path) -> str | None:
    """Why ``--stats FILE`` could not be written (checked at start, not at the first
    SIGUSR1), or None."""
    import os

    directory = path.parent
    if path.is_dir():
        return "is a directory"
    if not directory.is_dir():
        return f"directory {str(directory)!r} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {str(directory)!r} is not writable"
    return None
