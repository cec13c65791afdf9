"""A tiny STUN server for the tests: answers Binding requests with aioice's ``Message``.

``answer(request, source)`` is the sans-I/O part (used on an explicit clock); ``UdpStunServer``
puts it on a plain UDP socket on loopback (used by tests/io).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from aioice import stun


def response(request: bytes, mapped: tuple[str, int], *, xor: bool = True,
             other: tuple[str, int] | None = None, origin: tuple[str, int] | None = None,
             error: tuple[int, str] | None = None, fingerprint: bool = True,
             extra: dict[str, Any] | None = None) -> bytes:
    """The answer to ``request`` (its transaction ID): a success with the mapped address
    (XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS when not ``xor``), or an error response."""
    req = stun.parse_message(request)
    attrs: dict[str, Any] = {}
    if error is not None:
        msg = stun.Message(stun.Method.BINDING, stun.Class.ERROR,
                           transaction_id=req.transaction_id, attributes={"ERROR-CODE": error})
    else:
        attrs["XOR-MAPPED-ADDRESS" if xor else "MAPPED-ADDRESS"] = mapped
        if origin is not None:
            attrs["RESPONSE-ORIGIN"] = origin
        if other is not None:
            attrs["OTHER-ADDRESS"] = other
        attrs.update(extra or {})
        msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                           transaction_id=req.transaction_id, attributes=attrs)
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


class UdpStunServer:
    """Binding answers on a UDP socket (127.0.0.1 by default), in a thread: every
    request is answered with the address it came from (what a STUN server sees)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.requests: list[tuple[bytes, tuple[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.requests.append((data, addr[:2]))
            try:
                self.sock.sendto(response(data, addr[:2], origin=self.address), addr)
            except (ValueError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()
