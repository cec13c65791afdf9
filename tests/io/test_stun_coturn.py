"""The endpoint's STUN client against a real STUN server, coturn, on loopback (127.0.0.1 and
127.0.0.2, no root): the reflexive address is the tunnel's NAT-T socket, coturn's
OTHER-ADDRESS and RESPONSE-ORIGIN are read, and each CHANGE-REQUEST (RFC 5780 section 7.2) is
answered from the address it asked for and taken by the source check."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.lab.coturn import Coturn, coturn_problems
from nattunnel.traversal.stun import Binding
from nattunnel.tunnel.core import Tunnel


def free_port_pair() -> int:
    """A port p with p and p + 1 free for UDP on 127.0.0.1 and 127.0.0.2."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        probes: list[socket.socket] = []
        try:
            for host in ("127.0.0.1", "127.0.0.2"):
                for p in (port, port + 1):
                    t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    probes.append(t)
                    t.bind((host, p))
        except OSError:
            continue
        finally:
            for t in probes:
                t.close()
        return port
    raise RuntimeError("no free UDP port pair on loopback")


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    problems = coturn_problems()
    if problems:
        if os.environ.get("NATTUNNEL_REQUIRE_ROOT") == "1":
            pytest.fail("coturn is required under NATTUNNEL_REQUIRE_ROOT=1: " + problems[0])
        pytest.skip(problems[0])
    port = free_port_pair()
    with Coturn("127.0.0.1", "127.0.0.2", tmp_path, port=port, alt_port=port + 1) as server:
        yield server


async def test_binding_and_change_requests_against_coturn(coturn: Coturn) -> None:
    ep = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)])
    await ep.start()
    try:
        natt = ep.local_addresses()[0]
        primary, other = coturn.address, coturn.other_address
        r = await asyncio.wait_for(ep.stun_bind(primary), 5.0)
        assert isinstance(r, Binding), r
        assert r.mapped == natt and r.xor and r.source == primary
        assert r.other_address == other and r.response_origin == primary
        cases = [((True, True), other), ((False, True), (primary[0], other[1])),
                 ((True, False), (other[0], primary[1]))]
        for (change_ip, change_port), source in cases:
            r = await asyncio.wait_for(
                ep.stun_bind(primary, change_ip=change_ip, change_port=change_port), 5.0)
            assert isinstance(r, Binding), (change_ip, change_port, r)
            assert r.source == source and r.mapped == natt
            assert (r.change_ip, r.change_port) == (change_ip, change_port)
            if r.response_origin is not None:
                assert r.response_origin == source
        c = ep.stun.counters
        assert c["succeeded"] == 4 and c["wrong_source"] == c["malformed"] == 0
        assert ep.tunnel.stun_received == 4 and ep.tunnel.drops.total() == 0
    finally:
        ep.close()
