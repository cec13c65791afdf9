"""The Prometheus text endpoint (``metrics = "127.0.0.1:9586"``): ``GET /metrics``.

Each scrape calls ``status()`` (``nattunnel.control.status.snapshot``) once and turns that one
snapshot into metrics with ``prometheus_client`` (a custom collector: ``StatusCollector``;
``generate_latest`` writes the text format). The HTTP side is a small asyncio server, not
``prometheus_client``'s own threaded one: the cores are not thread-safe, so the snapshot must
be taken in the event loop's thread, between two callbacks.

The server answers one request per connection and closes it: ``GET`` (or ``HEAD``) of
``/metrics`` or ``/``; 404 for another path, 405 for another method, 400 for what is not an
HTTP/1 request line, 431 for a request head over MAX_HEAD octets, 408 when it does not come
within READ_TIMEOUT. At most MAX_CONNECTIONS at once; another is closed at once. A failure to
build the metrics (an exception from ``status()``) is a 500: counted
(``nattunnel_metrics_errors_total``), logged with its traceback at most once per
LOG_INTERVAL, and the next scrape is served as usual.

Labels are bounded, so that a scrape's size depends on the configuration only: ``peer`` (the
configured peer names, and a template's client instances, ``TEMPLATE[IDENTITY]``: at most
``max_clients`` or the pools' size per template), ``reason`` (``DropReason`` names; for IKE
fragments, the reasons of ``ike.fragment.DROP_REASONS``), ``direction`` (``rx``, ``tx``),
``errno`` (the kernel's errno names, and ``NO_SOCKET``), ``exchange`` (the IKE exchange
types' names, ``ike.exchanges.EXCHANGE_NAMES``), ``proto`` (``tcp``, ``udp``: the TUN
coalescer's) and ``cause`` (a certificate refusal's, ``ike.certauth.CERT_REFUSAL_CAUSES``);
anything else becomes ``other``. The info metric's ``version`` has one value.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..esp.drop import DropReason
from ..ike.certauth import CERT_REFUSAL_CAUSES
from ..ike.exchanges import EXCHANGE_NAMES
from ..ike.fragment import DROP_REASONS as FRAGMENT_DROP_REASONS

log = logging.getLogger("nattunnel")

#: connections served at once; one more is closed without an answer
MAX_CONNECTIONS: Final = 16
#: the request line and headers, at most
MAX_HEAD: Final = 8192
#: seconds for the request head to arrive, and for the answer to be taken
READ_TIMEOUT: Final = 5.0
#: after an error answer, how long and how much of the rest of a request is read and
#: discarded before closing (closing with unread data would reset the connection, and the
#: client might lose the answer)
LINGER_TIME: Final = 1.0
LINGER_BYTES: Final = 65536
#: seconds between two logged scrape failures
LOG_INTERVAL: Final = 10.0
PATHS: Final = frozenset({"/metrics", "/"})
METHODS: Final = ("GET", "HEAD")

PREFIX: Final = "nattunnel_"
OTHER: Final = "other"
#: the label values ``reason`` and ``errno`` may take
REASONS: Final = frozenset(r.name.lower() for r in DropReason)
ERRNOS: Final = frozenset(errno.errorcode.values()) | {"NO_SOCKET"}
#: the label values ``reason`` takes for IKE fragments, and ``exchange``
FRAGMENT_REASONS: Final = frozenset(FRAGMENT_DROP_REASONS)
EXCHANGES: Final = frozenset(EXCHANGE_NAMES.values())
#: the label values ``cause`` takes (certificate refusals)
CERT_CAUSES: Final = frozenset(CERT_REFUSAL_CAUSES)
#: the IKE manager's counters (``snapshot()["ike"]``); one it adds later is exported too,
#: as nattunnel_ike_<name>_total, with a generic help text
IKE_COUNTERS: Final = {
    "cookies_sent": "IKE_SA_INIT requests answered with a cookie (RFC 7296 section 2.6)",
    "init_requests": "IKE_SA_INIT requests received, retransmissions included",
    "dropped": "IKE messages dropped before an IKE SA took them (unknown SPI, "
               "undecodable, no local address found)",
    "init_rate_limited": "IKE_SA_INIT requests dropped by the rate limit",
    "init_half_open_full": "IKE_SA_INIT requests dropped: the half-open table was full",
    "half_open_dropped": "responder IKE SAs that went without authenticating "
                         "(timed out or refused)",
    "identity_cap_deleted": "IKE SAs deleted: more than the limit for one identity",
    "errors": "exceptions inside the IKE manager (bugs), counted and survived",
    "requests_sent": "IKE requests sent by our IKE SAs, retransmissions included",
    "ike_rekeys": "IKE SA rekeys",
    "child_rekeys": "child SA rekeys",
    "retransmits": "IKE requests retransmitted",
}
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

_REASON_PHRASES: Final = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


# --- the collector: one snapshot -> metric families ------------------------------------------
def _bounded(counts: Mapping[str, int] | None, allowed: frozenset[str]) -> dict[str, int]:
    """``counts`` with every key outside ``allowed`` summed under ``other``."""
    out: dict[str, int] = {}
    for key, n in (counts or {}).items():
        k = key if key in allowed else OTHER
        out[k] = out.get(k, 0) + int(n)
    return out


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))


def _scalar(family: CounterMetricFamily | GaugeMetricFamily,
            value: float) -> CounterMetricFamily | GaugeMetricFamily:
    """``family`` with its one sample, without labels."""
    family.add_metric([], value)
    return family


def _min(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _live_sas(peer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The peer's IKE SAs that are established and not replaced by a rekey."""
    return [sa for sa in peer.get("ike_sas", ())
            if sa.get("state") == "established" and not sa.get("rekeyed")]


def peer_metrics(peers: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
    """Per peer: up, traffic, keepalives, rebinds, drops by reason, SAs and their times."""
    up = _gauge("peer_up", "1 if the peer has an SA to send on and an address, else 0",
                ["peer"])
    packets = _counter("peer_packets", "inner packets, cumulative across rekeys",
                       ["peer", "direction"])
    octets = _counter("peer_bytes", "inner octets, cumulative across rekeys",
                      ["peer", "direction"])
    keepalives = _counter("peer_keepalives", "NAT keepalives sent (tx) and received (rx)",
                          ["peer", "direction"])
    rebinds = _counter("peer_rebinds", "moves of the peer to a new address (NAT rebinding)",
                       ["peer"])
    drops = _counter("peer_drops", "the peer's received packets dropped, by reason",
                     ["peer", "reason"])
    ike_sas = _gauge("peer_ike_sas", "the peer's IKE SAs, in any state", ["peer"])
    child_sas = _gauge("peer_child_sas", "child SAs of the peer's IKE SAs", ["peer"])
    handshake = _gauge("peer_last_handshake_age_seconds",
                       "seconds since the last IKE SA or child SA came up", ["peer"])
    received = _gauge("peer_last_received_age_seconds",
                      "seconds since the last authentic packet from the peer", ["peer"])
    ike_rekey = _gauge("peer_ike_rekey_in_seconds",
                       "seconds until the next IKE SA rekey", ["peer"])
    child_rekey = _gauge("peer_child_rekey_in_seconds",
                         "seconds until the next child SA rekey", ["peer"])
    for name, p in peers.items():
        up.add_metric([name], 1.0 if p.get("state") == "up" else 0.0)
        for d in ("rx", "tx"):
            packets.add_metric([name, d], p.get(f"{d}_packets", 0))
            octets.add_metric([name, d], p.get(f"{d}_bytes", 0))
        ka = p.get("keepalive") or {}
        keepalives.add_metric([name, "tx"], ka.get("sent", 0))
        keepalives.add_metric([name, "rx"], ka.get("received", 0))
        rebinds.add_metric([name], p.get("rebinds", 0))
        for reason, n in sorted(_bounded(p.get("drops"), REASONS).items()):
            drops.add_metric([name, reason], n)
        sas = p.get("ike_sas", [])
        ike_sas.add_metric([name], len(sas))
        child_sas.add_metric([name], sum(len(sa.get("children", ())) for sa in sas))
        for family, value in (
            (handshake, p.get("last_handshake")),
            (received, p.get("last_received")),
            (ike_rekey, _min(sa.get("rekey_in") for sa in _live_sas(p))),
            (child_rekey, _min(c.get("rekey_in") for sa in _live_sas(p)
                               for c in sa.get("children", ()))),
        ):
            if value is not None:
                family.add_metric([name], value)
    return [up, packets, octets, keepalives, rebinds, drops, ike_sas, child_sas, handshake,
            received, ike_rekey, child_rekey, *_optional_peer_counters(peers),
            *_fragment_metrics(peers)]


def _fragment_metrics(peers: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
    """IKE fragmentation (RFC 7383) of the peer's IKE SAs now: fragments dropped by reason,
    messages reassembled. Each IKE SA counts its own, so a count restarts when an IKE SA
    goes (a rekey, a new one); half-open SAs (no peer yet) are not in it."""
    drops = _counter("peer_ike_fragment_drops", "IKE fragments from the peer not kept, by "
                     "reason (of its IKE SAs now)", ["peer", "reason"])
    reassembled = _counter("peer_ike_fragments_reassembled", "IKE messages from the peer "
                           "put back together from fragments (of its IKE SAs now)", ["peer"])
    for name, p in peers.items():
        total: dict[str, int] = {}
        done = 0
        for sa in p.get("ike_sas", ()):
            frag = sa.get("fragmentation") or {}
            done += int(frag.get("reassembled", 0))
            for reason, n in _bounded(frag.get("drops"), FRAGMENT_REASONS).items():
                total[reason] = total.get(reason, 0) + n
        if p.get("kind") == "ike":
            reassembled.add_metric([name], done)
        for reason, n in sorted(total.items()):
            drops.add_metric([name, reason], n)
    return [drops, reassembled]


#: per-peer counters exported when the snapshot has them (``peers[name][key]``, an int)
PEER_COUNTERS: Final = {
    "ike_rekeys": "IKE SA rekeys with the peer",
    "child_rekeys": "child SA rekeys with the peer",
    "retransmits": "IKE requests retransmitted to the peer",
}


def _optional_peer_counters(peers: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
    out: list[Metric] = []
    for key, doc in PEER_COUNTERS.items():
        have = [(name, p[key]) for name, p in peers.items()
                if isinstance(p.get(key), int) and not isinstance(p.get(key), bool)]
        if not have:
            continue
        family = _counter(f"peer_{key}", doc, ["peer"])
        for name, n in have:
            family.add_metric([name], n)
        out.append(family)
    return out


def endpoint_metrics(s: Mapping[str, Any]) -> list[Metric]:
    """The endpoint's own: drops by reason (tunnel, endpoint), kernel drops, send errors by
    errno, internal errors, GSO and GRO."""
    out: list[Metric] = []
    for key, name, doc in (
        ("drops", "drops", "datagrams and packets the tunnel dropped, by reason "
                           "(no SA, malformed, no route, ...)"),
        ("endpoint_drops", "endpoint_drops", "drops at the sockets, by reason (failed "
                                             "sends, receive errors, kernel drops)"),
    ):
        family = _counter(name, doc, ["reason"])
        for reason, n in sorted(_bounded(s.get(key), REASONS).items()):
            family.add_metric([reason], n)
        out.append(family)
    errs = _counter("send_errors", "failed sends by errno name (retried on schedule)",
                    ["errno"])
    for name, n in sorted(_bounded(s.get("send_errors"), ERRNOS).items()):
        errs.add_metric([name], n)
    out.append(errs)
    offload = s.get("offload") or {}
    out += [
        _scalar(_counter("kernel_drops", "datagrams the kernel dropped on our sockets "
                                         "(full receive buffer or the flood filter)"),
                sum((s.get("kernel_drops") or {}).values())),
        _scalar(_counter("internal_errors", "exceptions in the endpoint's callbacks (bugs), "
                                            "counted and survived"),
                sum((s.get("errors") or {}).values())),
        _scalar(_counter("gso_sends", "sends of several datagrams at once (UDP GSO)"),
                offload.get("gso_sends", 0)),
        _scalar(_counter("gro_batches", "receives of several datagrams at once (UDP GRO)"),
                offload.get("gro_batches", 0)),
        _scalar(_gauge("gso_enabled", "1 if UDP GSO is in use"),
                1.0 if offload.get("gso") else 0.0),
    ]
    return out + coalescer_metrics(s.get("coalescer"))


def coalescer_metrics(co: Mapping[str, Any] | None) -> list[Metric]:
    """The TUN device's coalescer (io/coalesce.py: TCP segments and UDP datagrams joined into
    GSO super-packets on writes); nothing without one (no TUN device with a vnet header)."""
    if not co:
        return []
    supers = _counter("tun_super_packets", "GSO super-packets written to the TUN device, "
                      "by protocol", ["proto"])
    merged = _counter("tun_coalesced", "TCP segments and UDP datagrams that went to the "
                      "TUN device in a super-packet, by protocol", ["proto"])
    for proto in ("tcp", "udp"):
        supers.add_metric([proto], (co.get("super_packets") or {}).get(proto, 0))
        merged.add_metric([proto], (co.get("coalesced") or {}).get(proto, 0))
    return [
        _scalar(_counter("tun_writes", "writes to the TUN device (a packet or a "
                                       "super-packet each)"), co.get("writes", 0)),
        _scalar(_counter("tun_single_writes", "packets written to the TUN device as they "
                                              "came, one per write"), co.get("single", 0)),
        supers, merged,
        _scalar(_counter("tun_write_drops", "packets lost to a failed write to the TUN "
                                            "device"), co.get("write_drops", 0)),
        _scalar(_counter("tun_uso_refused", "UDP super-packets the kernel refused (EINVAL), "
                                            "after which UDP datagrams go one per write"),
                co.get("uso_refused", 0)),
        _scalar(_gauge("tun_uso_enabled", "1 if UDP datagrams are coalesced on TUN writes "
                                          "(GSO_UDP_L4)"), 1.0 if co.get("uso") else 0.0),
    ]


def ike_metrics(ike: Mapping[str, Any] | None) -> list[Metric]:
    """The IKE manager's counters, and its IKE SAs; nothing without IKE peers."""
    if ike is None:
        return []
    out: list[Metric] = [_scalar(_gauge("ike_sas", "IKE SAs, in any state"),
                                 ike.get("sas", 0))]
    for key, value in ike.items():
        if key == "sas" or isinstance(value, bool) or not isinstance(value, int):
            continue
        if not _NAME.match(key):
            continue
        doc = IKE_COUNTERS.get(key, f"the IKE manager's {key} counter")
        out.append(_scalar(_counter(f"ike_{key}", doc), value))
    exchanges = ike.get("exchanges")
    if isinstance(exchanges, Mapping):
        out.append(_exchange_metric(exchanges))
    refusals = ike.get("cert_refusals")
    if isinstance(refusals, Mapping):
        family = _counter("ike_cert_refusals", "peers' certificates refused in IKE_AUTH, by "
                          "cause (not a certificate, does not chain, expired, revoked, key "
                          "usage, identity mismatch, ...)", ["cause"])
        for cause, n in sorted(_bounded(refusals, CERT_CAUSES).items()):
            family.add_metric([cause], n)
        out.append(family)
    return out


def _exchange_metric(exchanges: Mapping[str, Any]) -> Metric:
    """IKE messages received (rx) and sent (tx) by exchange type: each datagram once (one
    per fragment of a fragmented message, a retransmission again)."""
    family = _counter("ike_messages", "IKE messages received and sent, by exchange type "
                      "(each fragment and retransmission counted)", ["direction", "exchange"])
    for direction in ("rx", "tx"):
        counts = _bounded(exchanges.get(direction), EXCHANGES)
        for exchange, n in sorted(counts.items()):
            family.add_metric([direction, exchange], n)
    return family


class StatusCollector(Collector):
    """The metrics of one ``status()`` snapshot, taken at each scrape; ``own()`` adds the
    metrics server's own counters."""

    def __init__(self, status: Callable[[], dict[str, Any]],
                 own: Callable[[], Mapping[str, int]]) -> None:
        self.status = status
        self.own = own

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        info = InfoMetricFamily(PREFIX.rstrip("_"), "the running nattunnel")
        info.add_metric([], {"version": str(s.get("version", ""))})
        yield info
        yield _scalar(_gauge("uptime_seconds", "seconds since the endpoint started"),
                      s.get("uptime") or 0.0)
        yield from peer_metrics(s.get("peers") or {})
        yield from endpoint_metrics(s)
        yield from ike_metrics(s.get("ike"))
        yield _scalar(_counter("metrics_errors", "scrapes that failed with an internal error"),
                      self.own().get("errors", 0))


# --- the HTTP side ----------------------------------------------------------------------------
class _BadRequest(Exception):
    def __init__(self, status: int, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers


def parse_head(head: bytes) -> tuple[str, str]:
    """The method and the path of an HTTP/1 request head; _BadRequest for anything else."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        raise _BadRequest(400)
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    if path not in PATHS:
        raise _BadRequest(404)
    if method not in METHODS:
        raise _BadRequest(405, (("Allow", ", ".join(METHODS)),))
    return method, path


def response(status: int, body: bytes = b"", *, content_type: str = "text/plain",
             headers: Iterable[tuple[str, str]] = (), head_only: bool = False) -> bytes:
    """One HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status} {_REASON_PHRASES[status]}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


def _is_v6_any(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.version == 6 and ip.is_unspecified


class MetricsServer:
    """The metrics endpoint at ``addr`` (port 0: any free port), made of ``status()``."""

    def __init__(self, addr: tuple[str, int], status: Callable[[], dict[str, Any]]) -> None:
        self.addr = addr
        self.status = status
        #: answered requests (any status), connections refused over MAX_CONNECTIONS, and
        #: internal errors (a 500, or a failure inside a handler)
        self.counters = {"requests": 0, "refused": 0, "errors": 0}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status, lambda: self.counters))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._logged_at: float | None = None
        self._unlogged = 0

    async def start(self) -> None:
        """Listen; OSError if the address cannot be bound. ``::`` is dual-stack (IPv4 too),
        as a ``[::]`` listen address is; asyncio alone would make it IPv6 only."""
        host, port = self.addr
        if not _is_v6_any(host):
            self._server = await asyncio.start_server(self._client, host, port,
                                                      limit=MAX_HEAD, reuse_address=True)
            return
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            self._server = await asyncio.start_server(self._client, sock=sock,
                                                      limit=MAX_HEAD)
        except BaseException:
            sock.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (after ``start``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the metrics server is not listening")
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._writers)

    def close(self) -> None:
        """Stop listening and drop the connections being served. Idempotent."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    # --- one connection -----------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS or self._server is None:
            self.counters["refused"] += 1
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or does not read: nothing to answer
        except Exception:
            self._failed("a metrics request failed")
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, _ = parse_head(head)
        except asyncio.IncompleteReadError:
            return  # closed before a whole request head
        except asyncio.LimitOverrunError:
            await self._refuse(reader, writer, _BadRequest(431))
            return
        except TimeoutError:
            await self._refuse(reader, writer, _BadRequest(408))
            return
        except _BadRequest as e:
            await self._refuse(reader, writer, e)
            return
        try:
            body = generate_latest(self.registry)
        except Exception:
            self._failed("cannot make the metrics (answered 500)")
            await self._answer(writer, response(500, b"internal error\n"))
            return
        await self._answer(writer, response(200, body, content_type=CONTENT_TYPE_LATEST,
                                            head_only=method == "HEAD"))

    async def _answer(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        self.counters["requests"] += 1
        writer.write(data)
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      e: _BadRequest) -> None:
        """An error answer, then the rest of the request read and discarded (bounded)."""
        body = f"{e.status} {_REASON_PHRASES[e.status]}\n".encode()
        await self._answer(writer, response(e.status, body, headers=e.headers))
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        end = loop.time() + LINGER_TIME
        left = LINGER_BYTES
        with contextlib.suppress(TimeoutError, ConnectionError):
            while left > 0 and (wait := end - loop.time()) > 0:
                chunk = await asyncio.wait_for(reader.read(min(left, 4096)), wait)
                if not chunk:
                    break
                left -= len(chunk)

    def _failed(self, what: str) -> None:
        """Count an internal error; log it with its traceback at most once per LOG_INTERVAL
        (called from an ``except`` block)."""
        self.counters["errors"] += 1
        now = asyncio.get_running_loop().time()
        if self._logged_at is not None and now - self._logged_at < LOG_INTERVAL:
            self._unlogged += 1
            return
        since = f" ({self._unlogged} more since the last one logged)" if self._unlogged else ""
        log.exception("metrics: %s%s", what, since)
        self._logged_at = now
        self._unlogged = 0


__all__ = ["MAX_CONNECTIONS", "MAX_HEAD", "READ_TIMEOUT", "MetricsServer", "StatusCollector",
           "coalescer_metrics", "endpoint_metrics", "ike_metrics", "peer_metrics"]
