"""The send side of the TURN relay (RFC 8656): a peer reached through the relay gets a
``RelaySocket`` as its socket, so that the send path (io/send.py) and the control sends
(keepalives, IKE) stay as they are for direct peers and need no flag per packet.

A ``RelaySocket`` is a duplicate of the NAT-T socket's descriptor (the same socket in the
kernel: the same local port, which is what the allocation belongs to) whose ``sendto`` and
``sendmsg`` send to the TURN server instead: the datagram behind the peer's 4-octet
ChannelData header once its channel is bound, or in a Send indication once its permission
is installed. Before that (or after the allocation failed) a send fails with ENOTCONN,
counted in ``send_errors`` like any other failed send. A GSO batch (``sendmsg`` with
UDP_SEGMENT) is sent one datagram per segment. It is never read from.

Part of ``nattunnel.io``.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from typing import Any

from ..addr import Addr
from ..traversal.turn import TurnClient
from .udp import GSO_SEG, SOL_UDP, UDP_SEGMENT, mapped


class RelaySocket(socket.socket):
    """Sends for one or more peers through ``turn``'s allocation on ``base``'s port."""

    def __init__(self, base: socket.socket, turn: TurnClient) -> None:
        super().__init__(base.family, base.type, fileno=os.dup(base.fileno()))
        self.setblocking(False)
        self.turn = turn
        server = turn.server
        self.server: Addr = mapped(server) if base.family == socket.AF_INET6 else server
        self.relayed_datagrams = 0

    def sendto(self, data: Any, *args: Any) -> int:
        """``sendto(data, address)`` (or with flags between): to the TURN server, framed
        for ``address``."""
        addr = args[-1]
        view = memoryview(data)
        turn = self.turn
        header = turn.channel_header(addr, len(view)) if turn.allocated else None
        if header is not None:
            self.relayed_datagrams += 1
            return super().sendmsg([header, view], (), 0, self.server)
        framed = turn.frame(addr, view)
        if framed is None:
            raise OSError(errno.ENOTCONN, "the TURN relay has no channel or permission for "
                          "this peer yet")
        self.relayed_datagrams += 1
        return super().sendto(framed, self.server)

    def sendmsg(self, buffers: Iterable[Any], ancdata: Iterable[Any] = (), flags: int = 0,
                address: Any = None, /) -> int:
        """A GSO batch: one relayed datagram per segment."""
        data = b"".join(bytes(b) for b in buffers)
        seg = len(data)
        for level, kind, value in ancdata:
            if level == SOL_UDP and kind == UDP_SEGMENT:
                seg = GSO_SEG.unpack(value)[0]
        view = memoryview(data)
        sent = 0
        for off in range(0, len(view), max(seg, 1)):
            sent += self.sendto(view[off : off + seg], address)
        return sent


__all__ = ["RelaySocket"]
