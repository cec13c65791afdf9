"""The control socket's protocol, and its client.

A Unix stream socket. The client sends one request, a JSON object on one line
(``{"command": "show", "peer": "b"}``), and reads one answer, a JSON object on one line:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "what went wrong"}``; then the
connection closes. Requests are at most MAX_REQUEST octets.

Commands: ``show`` [peer], ``initiate`` peer, ``terminate`` peer, ``rekey`` peer [ike],
``update-address`` peer (MOBIKE), ``reload``, ``down`` (docs/operations.md).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Final

#: a request line's bound; longer ones are refused
MAX_REQUEST: Final = 64 * 1024
#: an answer's bound for the client (a show of thousands of peers fits)
MAX_ANSWER: Final = 64 * 1024 * 1024
COMMANDS: Final = ("show", "initiate", "terminate", "rekey", "update-address", "reload",
                   "down")


class ControlError(Exception):
    """A request that could not be carried out, in words for the operator."""


def encode(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def parse_request(line: bytes) -> dict[str, Any]:
    """A request line as a dict with a known ``command``; ControlError saying why not."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ControlError(f"the request is not JSON: {e}") from None
    if not isinstance(req, dict):
        raise ControlError("the request must be a JSON object")
    command = req.get("command")
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
    return req


def request(path: str | Path, command: str, args: dict[str, Any] | None = None, *,
            timeout: float = 30.0) -> Any:
    """Send one request to the control socket at ``path`` and return its result; a
    ControlError for an answer saying it failed, OSError if the socket cannot be reached."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(encode({"command": command, **(args or {})}))
        chunks: list[bytes] = []
        size = 0
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise ControlError("the answer is too long")
    data = b"".join(chunks)
    if not data:
        raise ControlError("the endpoint closed the connection without an answer")
    try:
        answer = json.loads(data)
    except ValueError as e:
        raise ControlError(f"the answer is not JSON: {e}") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise ControlError("the answer is not a control answer")
    if not answer["ok"]:
        raise ControlError(str(answer.get("error", "failed")))
    return answer.get("result")
