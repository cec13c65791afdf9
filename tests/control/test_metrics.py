"""The metrics endpoint (nattunnel/control/metrics.py), scraped over real TCP and parsed with
prometheus_client's own parser: the numbers of two real IKE endpoints on loopback, and the
HTTP side's limits (paths, methods, sizes, connections, a failing status)."""

from __future__ import annotations

import asyncio
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from nattunnel.app import Controller, build_ike, build_tunnel, open_interface
from nattunnel.config import Config, parse_config
from nattunnel.control import metrics
from nattunnel.control.metrics import MAX_CONNECTIONS, MAX_HEAD, MetricsServer
from nattunnel.control.status import snapshot
from nattunnel.io.endpoint import Endpoint, InProcessInterface
from nattunnel.keys import write_psk_file
from nattunnel.tunnel.core import Tunnel
from tests.support.packets import A_INNER, B_INNER, ip4

COMMON = """listen = ["127.0.0.1:0"]
ike_port = 0
[interface]
kind = "inprocess"
"""

#: B answers two configured peers; only "alpha" (A) ever connects
B_CONFIG = COMMON + """[[peer]]
name = "alpha"
auth = "psk"
psk_file = "alpha.psk"
local_id = "hostb"
remote_id = "hosta"
allowed_ips = ["198.18.100.1/32"]
local_ts = ["198.18.100.2/32"]
[[peer]]
name = "charlie"
auth = "psk"
psk_file = "charlie.psk"
local_id = "hostb"
remote_id = "hostc"
allowed_ips = ["198.18.100.3/32"]
local_ts = ["198.18.100.2/32"]
"""

A_CONFIG = COMMON + """[[peer]]
name = "bravo"
auth = "psk"
psk_file = "alpha.psk"
local_id = "hosta"
remote_id = "hostb"
endpoint = "127.0.0.1:{port}"
allowed_ips = ["198.18.100.2/32"]
local_ts = ["198.18.100.1/32"]
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Node:
    """One endpoint as ``nattunnel up`` builds it (app.build_tunnel, build_ike, Controller),
    on the in-process interface."""

    def __init__(self, config: Config, now: float) -> None:
        self.tunnel = build_tunnel(config, now)
        self.ike = build_ike(config, self.tunnel, now)
        self.started = now
        interface = open_interface(config)
        assert isinstance(interface, InProcessInterface)
        self.interface = interface
        self.endpoint = Endpoint(self.tunnel, interface, config.listen,
                                 control=Controller(self.tunnel, self.ike,
                                                    ike_port=config.ike_port))

    def status(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        return snapshot(self.endpoint, self.ike, now, started=self.started, version="9.8.7")


def load(tmp: Path, name: str, text: str) -> Config:
    path = tmp / name
    path.write_text(text)
    return parse_config(text, tmp, path)


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


def fetch(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    """One HTTP request with urllib: status, content type, body."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


async def scrape(server: MetricsServer, path: str = "/metrics",
                 method: str = "GET") -> tuple[int, str, bytes]:
    host, port = server.address
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, fetch, f"http://{host}:{port}{path}", method)


def samples(body: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


async def raw(server: MetricsServer, data: bytes) -> bytes:
    """Send ``data`` on a new connection and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


@pytest.fixture
async def pair(tmp_path):
    """A (initiator, its peer "bravo") and B (responder: "alpha", and "charlie", who never
    comes), up, on loopback."""
    write_psk_file(tmp_path / "alpha.psk", b"correct horse battery staple")
    write_psk_file(tmp_path / "charlie.psk", b"another secret entirely")
    loop = asyncio.get_running_loop()
    b = Node(load(tmp_path, "b.toml", B_CONFIG), loop.time())
    await b.endpoint.start()
    port = b.endpoint.local_addresses()[0][1]
    a = Node(load(tmp_path, "a.toml", A_CONFIG.format(port=port)), loop.time())
    await a.endpoint.start()
    try:
        await wait_for(lambda: a.status()["peers"]["bravo"]["state"] == "up"
                       and b.status()["peers"]["alpha"]["state"] == "up")
        yield a, b
    finally:
        a.endpoint.close()
        b.endpoint.close()


async def test_scrape_of_a_running_ike_endpoint(pair):
    a, b = pair
    for size in (100, 200, 300, 400, 500):
        pkt = ip4(A_INNER, B_INNER, size)
        assert a.interface.send(pkt) > 0
        assert await asyncio.wait_for(b.interface.recv(), 5) == pkt
    for size in (60, 70, 80):
        assert b.interface.send(ip4(B_INNER, A_INNER, size)) > 0
        await asyncio.wait_for(a.interface.recv(), 5)
    # one datagram with an SPI B does not know, at B's NAT-T port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\xde\xad\xbe\xef" + bytes(20), b.endpoint.local_addresses()[0][:2])
    await wait_for(lambda: b.status()["drops"].get("unknown_spi") == 1)
    # and a packet from A whose inner source B does not allow from it
    assert a.interface.send(ip4("198.18.100.9", B_INNER, 90)) > 0
    await wait_for(lambda: b.status()["peers"]["alpha"]["drops"]
                   .get("source_not_allowed") == 1)

    server = MetricsServer(("127.0.0.1", 0), b.status)
    await server.start()
    try:
        status, ctype, body = await scrape(server)
    finally:
        server.close()
    assert status == 200 and ctype == CONTENT_TYPE_LATEST
    got = samples(body)
    assert value(got, "nattunnel_info", version="9.8.7") == 1
    assert value(got, "nattunnel_peer_up", peer="alpha") == 1
    assert value(got, "nattunnel_peer_up", peer="charlie") == 0
    assert value(got, "nattunnel_peer_packets_total", peer="alpha", direction="rx") == 5
    assert value(got, "nattunnel_peer_bytes_total", peer="alpha", direction="rx") == 1500
    assert value(got, "nattunnel_peer_packets_total", peer="alpha", direction="tx") == 3
    assert value(got, "nattunnel_peer_bytes_total", peer="alpha", direction="tx") == 210
    assert value(got, "nattunnel_peer_packets_total", peer="charlie", direction="rx") == 0
    assert value(got, "nattunnel_drops_total", reason="unknown_spi") == 1
    assert value(got, "nattunnel_peer_drops_total", peer="alpha",
                 reason="source_not_allowed") == 1
    assert value(got, "nattunnel_peer_ike_sas", peer="alpha") == 1
    assert value(got, "nattunnel_peer_child_sas", peer="alpha") == 1
    assert value(got, "nattunnel_peer_ike_sas", peer="charlie") == 0
    assert 0 <= value(got, "nattunnel_peer_last_handshake_age_seconds", peer="alpha") < 30
    assert 0 <= value(got, "nattunnel_peer_last_received_age_seconds", peer="alpha") < 30
    assert 3000 < value(got, "nattunnel_peer_child_rekey_in_seconds", peer="alpha") <= 3600
    assert 12000 < value(got, "nattunnel_peer_ike_rekey_in_seconds", peer="alpha") <= 14400
    assert value(got, "nattunnel_ike_sas") == 1
    # a retransmitted IKE_SA_INIT counts too
    assert value(got, "nattunnel_ike_init_requests_total") >= 1
    assert value(got, "nattunnel_ike_requests_sent_total") == 0  # B only answered
    assert value(got, "nattunnel_uptime_seconds") >= 0
    assert value(got, "nattunnel_metrics_errors_total") == 0
    for name in ("nattunnel_gso_sends_total", "nattunnel_gro_batches_total",
                 "nattunnel_kernel_drops_total", "nattunnel_internal_errors_total"):
        assert (name, frozenset()) in got
    # the labels are bounded: peer names from the configuration, the fixed enums
    label_values: dict[str, set[str]] = {}
    for _, labels in got:
        for k, v in labels:
            label_values.setdefault(k, set()).add(v)
    assert set(label_values) <= {"peer", "reason", "direction", "errno", "version",
                                 "exchange", "cause"}
    assert label_values["exchange"] <= metrics.EXCHANGES | {"other"}
    assert label_values["cause"] == metrics.CERT_CAUSES  # certificate refusals, 0 each
    assert label_values["peer"] == {"alpha", "charlie"}
    assert label_values["direction"] == {"rx", "tx"}
    assert label_values["reason"] <= metrics.REASONS

    # the initiator's view: its requests and a peer of its own name
    server = MetricsServer(("127.0.0.1", 0), a.status)
    await server.start()
    try:
        got = samples((await scrape(server, "/"))[2])
    finally:
        server.close()
    assert value(got, "nattunnel_peer_up", peer="bravo") == 1
    assert value(got, "nattunnel_peer_packets_total", peer="bravo", direction="tx") == 6
    assert value(got, "nattunnel_ike_requests_sent_total") >= 2  # IKE_SA_INIT, IKE_AUTH


@pytest.fixture
async def manual():
    """A started endpoint without IKE and without peers, and a metrics server on it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    endpoint = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)])
    await endpoint.start()
    server = MetricsServer(("127.0.0.1", 0), lambda: snapshot(
        endpoint, None, loop.time(), started=started, version="1"))
    await server.start()
    try:
        yield server
    finally:
        server.close()
        endpoint.close()


async def test_paths_and_methods(manual):
    status, _, body = await scrape(manual, "/nope")
    assert status == 404
    status, _, _ = await scrape(manual, "/metrics", "POST")
    assert status == 405
    answer = await raw(manual, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: GET, HEAD\r\n" in answer
    answer = await raw(manual, b"nonsense\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    status, _, body = await scrape(manual, "/metrics?x=1", "HEAD")
    assert status == 200 and body == b""
    status, _, body = await scrape(manual, "/metrics")
    got = samples(body)
    assert not any(name.startswith("nattunnel_ike_") for name, _ in got)  # no IKE peers
    assert not any(name.startswith("nattunnel_peer_") for name, _ in got)  # no peers


async def test_an_oversized_request_is_refused_and_the_server_goes_on(manual):
    answer = await raw(manual, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (2 * MAX_HEAD))
    assert answer.startswith(b"HTTP/1.1 431 ")
    # a head just under the bound is fine
    pad = b"a" * (MAX_HEAD - 100)
    answer = await raw(manual, b"GET /metrics HTTP/1.1\r\nX-Pad: " + pad + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"nattunnel_uptime_seconds" in answer


async def test_a_slow_request_times_out(manual, monkeypatch):
    monkeypatch.setattr(metrics, "READ_TIMEOUT", 0.2)
    answer = await raw(manual, b"GET /metrics HTTP/1.1\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_connections_are_bounded(manual):
    idle = [await asyncio.open_connection(*manual.address) for _ in range(MAX_CONNECTIONS)]
    try:
        await wait_for(lambda: manual.connections == MAX_CONNECTIONS)
        # one more is closed at once, without an answer
        reader, writer = await asyncio.open_connection(*manual.address)
        try:
            try:
                extra = await asyncio.wait_for(reader.read(), 2)
            except ConnectionResetError:
                extra = b""
            assert extra == b""
        finally:
            writer.close()
        assert manual.counters["refused"] == 1
    finally:
        for _, w in idle:
            w.close()
    await wait_for(lambda: manual.connections == 0)
    status, _, _ = await scrape(manual)
    assert status == 200


async def test_an_error_in_status_is_a_500_and_the_next_scrape_works(caplog):
    caplog.set_level(logging.ERROR, logger="nattunnel")
    loop = asyncio.get_running_loop()
    started = loop.time()
    endpoint = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)])
    await endpoint.start()
    calls = 0

    def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("status broke")
        return snapshot(endpoint, None, loop.time(), started=started, version="1")

    server = MetricsServer(("127.0.0.1", 0), status)
    await server.start()
    try:
        assert (await scrape(server))[0] == 500
        assert (await scrape(server))[0] == 500
        status_code, _, body = await scrape(server)
    finally:
        server.close()
        endpoint.close()
    assert status_code == 200
    assert value(samples(body), "nattunnel_metrics_errors_total") == 2
    logged = [r for r in caplog.records if "metrics" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback


def test_label_values_outside_the_enums_become_other():
    families = metrics.endpoint_metrics({
        "send_errors": {"ENETUNREACH": 2, "made-up": 1, "ALSO_MADE_UP": 4},
        "drops": {"unknown_spi": 3, "no_such_reason": 5},
    })
    got = {(f.name, s.labels.get("errno", s.labels.get("reason"))): s.value
           for f in families for s in f.samples if s.labels}
    assert got == {("nattunnel_send_errors", "ENETUNREACH"): 2,
                   ("nattunnel_send_errors", "other"): 5,
                   ("nattunnel_drops", "unknown_spi"): 3,
                   ("nattunnel_drops", "other"): 5}


async def test_close_is_idempotent_and_a_busy_port_is_an_oserror(manual):
    other = MetricsServer(manual.address, dict)
    with pytest.raises(OSError):
        await other.start()
    other.close()
    manual.close()
    manual.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_the_ipv6_wildcard_also_serves_ipv4():
    loop = asyncio.get_running_loop()
    started = loop.time()
    endpoint = Endpoint(Tunnel(), InProcessInterface(), [("127.0.0.1", 0)])
    await endpoint.start()
    server = MetricsServer(("::", 0), lambda: snapshot(
        endpoint, None, loop.time(), started=started, version="1"))
    await server.start()
    try:
        port = server.address[1]
        for url in (f"http://127.0.0.1:{port}/metrics", f"http://[::1]:{port}/metrics"):
            status, _, body = await loop.run_in_executor(None, fetch, url)
            assert status == 200 and b"nattunnel_info" in body
    finally:
        server.close()
        endpoint.close()


def test_rekey_and_retransmit_counters_are_exported_when_the_status_has_them():
    """The status does not count rekeys and retransmissions yet; once the IKE manager does
    (``ike_rekeys``, ``child_rekeys``, ``retransmits`` per peer and in total), they are
    exported without a change here."""
    peer = {"state": "up", "ike_rekeys": 2, "child_rekeys": 5, "retransmits": 7}
    got = {(f.name, s.labels.get("peer")): s.value
           for f in metrics.peer_metrics({"a": peer, "b": {"state": "down"}})
           for s in f.samples if f.name.endswith(("rekeys", "retransmits"))}
    assert got == {("nattunnel_peer_ike_rekeys", "a"): 2,
                   ("nattunnel_peer_child_rekeys", "a"): 5,
                   ("nattunnel_peer_retransmits", "a"): 7}
    got = {f.name: f.samples[0].value
           for f in metrics.ike_metrics({"sas": 1, "retransmits": 3, "child_rekeys": 4})}
    assert got == {"nattunnel_ike_sas": 1, "nattunnel_ike_retransmits": 3,
                   "nattunnel_ike_child_rekeys": 4}
