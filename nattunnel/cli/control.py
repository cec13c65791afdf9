"""The commands that steer a running endpoint through its control socket
(``nattunnel.control``): ``show``, ``initiate``, ``terminate``, ``rekey``,
``update-address`` (MOBIKE), ``reload``, ``down``.

Which endpoint: ``--socket PATH``, or ``-c CONFIG`` (its ``control_socket``), or else the one
socket in the default directory (/run/nattunnel for root); ``show`` with several there shows
them all, the others ask which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .common import Subparsers, fail

_STEER = {
    "initiate": "start the IKE SA with a peer (again, after terminate)",
    "terminate": "delete a peer's IKE SA (a Delete to the peer); not initiated again "
                 "until `initiate`",
    "rekey": "rekey a peer's child SAs (or its IKE SA: --ike) now",
    "update-address": "move a peer's IKE SA and child SAs to our current address or path "
                      "(MOBIKE UPDATE_SA_ADDRESSES; we initiated it; the SPIs stay)",
}


def _where(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--socket", metavar="PATH", help="the endpoint's control socket")
    g.add_argument("-c", "--config", metavar="CONFIG",
                   help="the endpoint's configuration (its control_socket)")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("show", help="show a running endpoint's peers, SAs and counters",
                       description="Show a running endpoint's status: per peer its endpoint, "
                                   "NAT, IKE SAs and child SAs with SPIs, ages and rekey "
                                   "times, bytes and packets, last packet and handshake, "
                                   "keepalives, drops by reason.")
    p.add_argument("peer", nargs="?", metavar="PEER", help="only this peer")
    p.add_argument("--json", action="store_true",
                   help="the status as JSON (docs/operations.md describes its fields)")
    _where(p)
    p.set_defaults(func=run_show)
    for name, text in _STEER.items():
        q = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        q.add_argument("peer", metavar="PEER")
        if name == "rekey":
            q.add_argument("--ike", action="store_true", help="rekey the IKE SA instead")
        _where(q)
        q.set_defaults(func=run_steer, command_name=name)
    for name, text in (("reload", "re-read the configuration: add, remove and change peers "
                                  "without touching the others"),
                       ("down", "stop the endpoint gracefully (a Delete for every IKE SA)")):
        q = sub.add_parser(name, help=text, description=text[:1].upper() + text[1:] + ".")
        _where(q)
        q.set_defaults(func=run_steer, command_name=name, peer=None)


def _sockets(args: argparse.Namespace, command: str) -> list[Path] | str:
    """The sockets to ask, or why there are none."""
    from ..config import ConfigError, load_config
    from ..config.parser import default_control_dir

    if args.socket:
        return [Path(args.socket)]
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            return str(e)
        if config.control_socket is None:
            return f"{args.config}: control_socket is \"\": the endpoint has none"
        return [config.control_socket]
    directory = default_control_dir()
    found = sorted(directory.glob("*.sock")) if directory.is_dir() else []
    if not found:
        return (f"no control socket in {directory}: is an endpoint running? (give "
                f"--socket PATH or -c CONFIG)")
    if len(found) > 1 and command != "show":
        names = ", ".join(p.name for p in found)
        return f"several endpoints run ({names} in {directory}): give --socket or -c"
    return found


def _ask(path: Path, command: str, req: dict[str, Any]) -> Any:
    from ..control.protocol import request

    return request(path, command, req)


def run_show(args: argparse.Namespace) -> int:
    from ..control.protocol import ControlError
    from ..control.text import render

    sockets = _sockets(args, "show")
    if isinstance(sockets, str):
        return fail("show", sockets)
    shown: list[Any] = []
    for path in sockets:
        try:
            shown.append(_ask(path, "show", {"peer": args.peer}))
        except ControlError as e:
            return fail("show", f"{path}: {e}", 1)
        except OSError as e:
            return fail("show", f"{path}: cannot reach the endpoint: {e.strerror or e}", 1)
    if args.json:
        doc = shown[0] if len(shown) == 1 else {str(p): s for p, s in zip(sockets, shown,
                                                                          strict=True)}
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(render(s) for s in shown))
    return 0


def run_steer(args: argparse.Namespace) -> int:
    from ..control.protocol import ControlError

    command = args.command_name
    sockets = _sockets(args, command)
    if isinstance(sockets, str):
        return fail(command, sockets)
    req: dict[str, Any] = {}
    if args.peer is not None:
        req["peer"] = args.peer
    if getattr(args, "ike", False):
        req["ike"] = True
    try:
        result = _ask(sockets[0], command, req)
    except ControlError as e:
        return fail(command, str(e), 1)
    except OSError as e:
        return fail(command, f"{sockets[0]}: cannot reach the endpoint: {e.strerror or e}", 1)
    if isinstance(result, dict):
        for key, value in result.items():
            if value:
                print(f"{key.replace('_', ' ')}: {', '.join(map(str, value))}"
                      if isinstance(value, list) else f"{key}: {value}")
        if not any(result.values()):
            print("nothing changed")
    else:
        print(result)
    return 0
