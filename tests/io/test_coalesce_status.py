"""The TUN coalescer's counters (io/coalesce.py) in the status (``nattunnel show``: JSON and
text) and in the metrics, through real components without root: A's send path (GSO) to B on
loopback, B's receive path (GRO) writing through a ``TunInterface`` whose device is a
SEQPACKET socket (it takes what a TUN device with IFF_VNET_HDR takes: one write each), and
the status, text and metrics made of B's endpoint as ``nattunnel show`` and ``/metrics``
make them."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from nattunnel.control.metrics import StatusCollector
from nattunnel.control.status import snapshot
from nattunnel.control.text import render
from nattunnel.io import coalesce
from nattunnel.io.coalesce import VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4
from nattunnel.io.tun import TunDevice, TunInterface
from tests.io.test_coalesce import tcp
from tests.io.test_coalesce_udp import udp4
from tests.support.datapath import FakeTun, endpoints


def fake_tun(uso: bool = True) -> tuple[TunInterface, socket.socket]:
    """A ``TunInterface`` on one end of a SEQPACKET pair (vnet header, USO as asked); the
    other end reads what it writes."""
    dev_end, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dev_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dev_end.setblocking(False)
    rx.setblocking(False)
    dev = TunDevice(dev_end.detach(), "ntfake0", 1500)
    dev.vnet_hdr = True
    dev.uso = uso
    return TunInterface(dev), rx


def written(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def status_of(endpoint: Any) -> dict[str, Any]:
    now = asyncio.get_running_loop().time()
    return snapshot(endpoint, None, now, started=now, version="t")


def scraped(status: dict[str, Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What ``/metrics`` would answer for ``status``, parsed."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(lambda: status, lambda: {}))
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _through_the_tunnel(pkts: list[bytes], rx: socket.socket,
                              a: Any) -> list[bytes]:
    a.budget = 1000
    a.drain_inner(FakeTun(pkts).read_into)
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + 5.0
    while loop.time() < end:
        got += written(rx)
        if sum(_count(p) for p in got) >= len(pkts):
            break
        await asyncio.sleep(0.01)
    return got


def _count(pkt: bytes) -> int:
    """Packets in one write: a super-packet's segments, or 1."""
    gso_type, hdr_len, gso_size = struct.unpack_from("=xBHH", pkt)
    if gso_type in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4):
        return -(-(len(pkt) - 10 - hdr_len) // gso_size)
    return 1


async def test_the_counters_move_and_show_in_status_text_and_metrics() -> None:
    iface, rx = fake_tun()
    a, b, _ = await endpoints(iface)
    try:
        assert a.gso, "this kernel has UDP_SEGMENT"
        before = status_of(b)["coalescer"]
        assert before == {"uso": True, "writes": 0, "single": 0,
                          "super_packets": {"tcp": 0, "udp": 0},
                          "coalesced": {"tcp": 0, "udp": 0}, "write_drops": 0,
                          "uso_refused": 0}
        segs = [tcp(1000 + i * 1000, bytes([i]) * 1000) for i in range(8)]
        dgrams = [udp4(bytes([i]) * 900, ident=i) for i in range(6)]
        lone = [udp4(b"x" * 100, ident=99, sport=4444)]  # a run of one: written as it came
        got = await _through_the_tunnel(segs + dgrams + lone, rx, a)
        assert sum(_count(p) for p in got) == 15
        co = status_of(b)["coalescer"]
        kinds = [struct.unpack_from("=xB", p)[0] for p in got]
        assert co["super_packets"] == {"tcp": kinds.count(VIRTIO_NET_HDR_GSO_TCPV4),
                                       "udp": kinds.count(VIRTIO_NET_HDR_GSO_UDP_L4)}
        assert co["super_packets"]["tcp"] >= 1 and co["super_packets"]["udp"] >= 1
        assert co["writes"] == len(got) and co["single"] == kinds.count(0) >= 1
        assert co["coalesced"]["tcp"] + co["coalesced"]["udp"] + co["single"] == 15
        assert co["write_drops"] == co["uso_refused"] == 0

        status = status_of(b)
        text = render(status)
        sp, merged = co["super_packets"], co["coalesced"]
        assert (f"  TUN writes: {co['writes']} ({co['single']} single; super-packets: "
                f"TCP {sp['tcp']} of {merged['tcp']} segments, UDP {sp['udp']} of "
                f"{merged['udp']} datagrams); UDP coalescing on\n") in text
        m = scraped(status)
        assert m[("nattunnel_tun_writes_total", ())] == co["writes"]
        assert m[("nattunnel_tun_single_writes_total", ())] == co["single"]
        for proto in ("tcp", "udp"):
            key = (("proto", proto),)
            assert m[("nattunnel_tun_super_packets_total", key)] == sp[proto]
            assert m[("nattunnel_tun_coalesced_total", key)] == merged[proto]
        assert m[("nattunnel_tun_write_drops_total", ())] == 0
        assert m[("nattunnel_tun_uso_refused_total", ())] == 0
        assert m[("nattunnel_tun_uso_enabled", ())] == 1.0
    finally:
        a.close()
        b.close()
        rx.close()


async def test_a_refused_udp_super_packet_and_failed_writes_are_counted(monkeypatch) -> None:
    iface, rx = fake_tun()
    a, b, _ = await endpoints(iface)
    real = os.writev

    def writev(fd: int, parts: list) -> int:
        if bytes(parts[0][:2]) == bytes([1, VIRTIO_NET_HDR_GSO_UDP_L4]):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, parts)

    try:
        monkeypatch.setattr(coalesce.os, "writev", writev)
        dgrams = [udp4(bytes([i]) * 900, ident=i) for i in range(6)]
        got = await _through_the_tunnel(dgrams, rx, a)
        assert len(got) == 6  # one datagram per write after the refusal
        status = status_of(b)
        co = status["coalescer"]
        assert co["uso"] is False and co["uso_refused"] == 1
        assert co["super_packets"]["udp"] == 0 and co["single"] == 6
        assert ("UDP coalescing off (the kernel refused a UDP super-packet: one datagram "
                "per write)") in render(status)
        m = scraped(status)
        assert m[("nattunnel_tun_uso_refused_total", ())] == 1
        assert m[("nattunnel_tun_uso_enabled", ())] == 0.0

        rx.close()  # the device is gone: every write fails
        a.drain_inner(FakeTun(dgrams).read_into)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        while status_of(b)["coalescer"]["write_drops"] < 6 and loop.time() < end:
            await asyncio.sleep(0.01)
        status = status_of(b)
        assert status["coalescer"]["write_drops"] == 6
        assert "; write drops 6" in render(status)
        assert scraped(status)[("nattunnel_tun_write_drops_total", ())] == 6
    finally:
        a.close()
        b.close()


async def test_no_coalescer_no_line_and_no_metrics() -> None:
    a, b, _ = await endpoints()  # the in-process interface has none
    try:
        status = status_of(b)
        assert status["coalescer"] is None
        assert "TUN writes" not in render(status)
        assert not [k for k in scraped(status) if k[0].startswith("nattunnel_tun_")]
    finally:
        a.close()
        b.close()
