"""MOBIKE through the running endpoint (no root): two in-process IKE endpoints on loopback
negotiate MOBIKE (the configuration's default), and ``update-address`` (a control request,
``Node.update_address``) sends UPDATE_SA_ADDRESSES over the real sockets: the peer follows,
the SPIs stay, packets still flow; the responder, a peer with ``mobike = false`` and an
unknown peer are refused. The address watcher's netlink parsing (io/netwatch.py)."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from nattunnel.app import Node
from nattunnel.config import load_config
from nattunnel.constants import NLMSG_DONE, RTM_NEWADDR, RTM_NEWROUTE
from nattunnel.control.protocol import ControlError
from nattunnel.io import netwatch
from nattunnel.keys import write_psk_file
from tests.control.test_node import A_IN, B_IN, _config, _free_port, _peer, _ping


async def _pair(tmp: Path, *, mobike: bool = True) -> tuple[Node, Node]:
    write_psk_file(tmp / "k.psk", b"correct horse battery staple", force=True)
    pa, pb = _free_port(), _free_port()
    config = load_config(_config(tmp, "a", pa, _peer("b", "hosta", "hostb", B_IN, A_IN,
                                                    endpoint=pb)))
    ike = config.peers[0].ike
    assert ike is not None and ike.mobike  # the file's default
    ike.mobike = mobike
    a = Node(config)
    b = Node(load_config(_config(tmp, "b", pb, _peer("a", "hostb", "hosta", A_IN, B_IN))))
    await b.start()
    await a.start()
    await a.wait_up("b", timeout=10)
    await b.wait_up("a", timeout=10)
    return a, b


def _sas(node: Node, peer: str) -> list:  # type: ignore[type-arg]
    assert node.controller is not None and node.controller.ike is not None
    return node.controller.ike.sas_of(peer)


def _spis(node: Node, peer: str) -> list[tuple[int, int]]:
    return [(c.spi_in, c.spi_out) for sa in _sas(node, peer) for c in sa.children]


async def test_update_address_moves_with_mobike_and_keeps_the_spis(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path)
    try:
        assert _sas(a, "b")[0].mobike and _sas(b, "a")[0].mobike
        before = _spis(a, "b"), _spis(b, "a")
        result = await a.handle({"command": "update-address", "peer": "b"})
        assert result == "updating the addresses of 1 IKE SA(s) (MOBIKE)"
        for _ in range(100):
            if _sas(b, "a")[0].path_updates:
                break
            await asyncio.sleep(0.02)
        assert _sas(a, "b")[0].path_updates == 1 and _sas(b, "a")[0].path_updates == 1
        assert (_spis(a, "b"), _spis(b, "a")) == before
        assert a.update_address("b") == 1  # the Python API
        await _ping(a, b, 3)
        with pytest.raises(ControlError, match="only the initiator moves"):
            await b.handle({"command": "update-address", "peer": "a"})
        with pytest.raises(ControlError, match="no peer 'x'"):
            await a.handle({"command": "update-address", "peer": "x"})
        with pytest.raises(KeyError):
            a.update_address("x")
    finally:
        await a.stop()
        await b.stop()


async def test_mobike_false_negotiates_none(tmp_path: Path) -> None:
    a, b = await _pair(tmp_path, mobike=False)
    try:
        assert not _sas(a, "b")[0].mobike and not _sas(b, "a")[0].mobike
        assert a.netwatch is None  # no MOBIKE peer: no watcher
        with pytest.raises(ControlError, match="no established IKE SA with MOBIKE"):
            await a.handle({"command": "update-address", "peer": "b"})
        # the file says nothing of mobike (on): a reload changes the peer, and the first
        # MOBIKE peer starts the address watcher
        result = await a.handle({"command": "reload"})
        assert result["changed"] == ["b"], result
        assert a.netwatch is not None
        await a.wait_up("b", timeout=10)
        for _ in range(100):
            if _sas(a, "b") and _sas(a, "b")[0].mobike:
                break
            await asyncio.sleep(0.02)
        assert _sas(a, "b")[0].mobike
    finally:
        await a.stop()
        await b.stop()


def _nlmsg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def _newaddr(family: int, raw: bytes, scope: int = 0) -> bytes:
    attr = struct.pack("=HH", 4 + len(raw), 2) + raw  # IFA_LOCAL
    attr += b"\0" * (-len(attr) % 4)
    return _nlmsg(RTM_NEWADDR, struct.pack("=BBBBI", family, 24, 0, scope, 1) + attr)


def test_netlink_messages_are_parsed() -> None:
    dump = (_newaddr(socket.AF_INET, socket.inet_aton("198.18.0.7"))
            + _newaddr(socket.AF_INET, socket.inet_aton("127.0.0.1"), scope=254)
            + _newaddr(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fd00::7"))
            + _nlmsg(NLMSG_DONE, b"\0" * 4))
    assert netwatch.message_types(dump) == [RTM_NEWADDR] * 3 + [NLMSG_DONE]
    assert netwatch._addresses_in(dump) == (["198.18.0.7", "fd00::7"], True)
    assert netwatch.message_types(dump[:-3]) == [RTM_NEWADDR] * 3  # truncated: ends
    assert netwatch.message_types(_nlmsg(RTM_NEWROUTE, b"")) == [RTM_NEWROUTE]
    assert all(":" in a or "." in a for a in netwatch.addresses())
    assert "127.0.0.1" not in netwatch.addresses()
    assert netwatch.source_towards("127.0.0.1") == "127.0.0.1"
