"""The IKE responder under floods, in memory: cookies as RFC 7296 section 2.6 makes them, the
half-open cap, the token buckets, one log line per interval, the per-identity cap."""

from __future__ import annotations

import ipaddress
import logging

from nattunnel.constants import ExchangeType, NotifyType
from nattunnel.ike.base import State
from nattunnel.ike.config import Identity, IkeConfig
from nattunnel.ike.events import Outgoing
from nattunnel.ike.manager import IkeManager, IkePeer
from nattunnel.ike.message import Header, Nonce, Notify, decode_message, encode_message
from nattunnel.ike.ratelimit import IkeLimits, SourceLimiter, TokenBucket, source_key
from nattunnel.ike.sa import ON_REQUEST, IkeSa
from nattunnel.tunnel.core import Tunnel

NET_A = ipaddress.ip_network("198.18.100.1/32")
NET_B = ipaddress.ip_network("198.18.100.2/32")
B = ("198.18.0.2", 500)


def _config(name: str = "b") -> IkeConfig:
    return IkeConfig(name, Identity.parse("hosta"), Identity.parse("hostb"), auth="psk",
                     psk=b"secret", dpd_interval=0, local_ts=(NET_A,), remote_ts=(NET_B,))


class Responder(IkeManager):
    """B's IKE manager, fed requests straight from test code; what it sends is in ``sent``."""

    def __init__(self, tunnel: Tunnel, limits: IkeLimits) -> None:
        super().__init__(tunnel, limits=limits)
        self.sent: list[Outgoing] = []

    def receive(self, data: bytes, src: tuple[str, int], now: float) -> None:
        """A message from ``src`` on port 500 (B's socket: B's own address)."""
        self.receive_datagram(data, src, now, natt=False, local=B)
        self.sent += self.datagrams_to_send()


def responder(**limits: float) -> tuple[Responder, list[Outgoing]]:
    t = Tunnel()
    t.add_peer("a", [NET_A])
    mgr = Responder(t, IkeLimits(**limits))  # type: ignore[arg-type]
    cfg = IkeConfig("a", Identity.parse("hostb"), Identity.parse("hosta"), auth="psk",
                    psk=b"secret", dpd_interval=0, local_ts=(NET_B,), remote_ts=(NET_A,))
    mgr.add_peer(IkePeer(cfg, initiate=False, remote=None), 0.0)
    return mgr, mgr.sent


class Attacker:
    """An initiator that answers cookies (no spoofing needed): the project's own IkeSa."""

    def __init__(self, src: tuple[str, int]) -> None:
        self.src = src
        self.sa = IkeSa(_config(), initiator=True, local=src, remote=B, now=0.0)
        self.sa.start(0.0)

    def request(self) -> bytes:
        return self.sa.datagrams_to_send()[-1].data

    def answer(self, out: Outgoing, now: float) -> None:
        self.sa.receive(out.data, now)


def cookie_of(out: Outgoing) -> bytes | None:
    n = decode_message(out.data).notify(NotifyType.COOKIE)
    return None if n is None else n.data


def flood(mgr: Responder, sent: list[Outgoing], sources: int, per_source: int,
          now: float) -> int:
    """Cookie-answering IKE_SA_INIT requests; returns how many got a real answer (SA)."""
    answered = 0
    for s in range(sources):
        for i in range(per_source):
            att = Attacker((f"198.19.{s // 250}.{s % 250 + 1}", 1024 + i))
            sent.clear()
            mgr.receive(att.request(), att.src, now)
            if sent and cookie_of(sent[-1]) is not None:
                att.answer(sent[-1], now)
                sent.clear()
                mgr.receive(att.request(), att.src, now)
            if sent and decode_message(sent[-1].data).header.spi_r != bytes(8):
                answered += 1
    return answered


def test_cookie_is_a_hash_of_ni_ipi_spii_with_a_versioned_secret():
    mgr, sent = responder(cookie_threshold=0)
    att = Attacker(("198.18.0.1", 500))
    req = att.request()
    mgr.receive(req, att.src, 10.0)
    c1 = cookie_of(sent[-1])
    assert c1 is not None and len(c1) == 17  # one octet of version, then the hash
    # the same SPIi and address with another Ni: another cookie (section 2.6 covers Ni)
    other = IkeSa(_config(), initiator=True, local=att.src, remote=B, now=0.0)
    other.spi_i = att.sa.spi_i
    other.start(0.0)
    mgr.receive(other.datagrams_to_send()[-1].data, att.src, 10.0)
    c2 = cookie_of(sent[-1])
    assert c2 is not None and c2 != c1 and c2[0] == c1[0]
    # another address, same request: another cookie (IPi)
    mgr.receive(req, ("198.18.0.9", 500), 10.0)
    assert cookie_of(sent[-1]) not in (c1, c2)
    # the initiator retries with Ni and KE unchanged and gets through
    att.answer(sent[0], 10.0)
    retry = decode_message(att.request())
    assert retry.payloads[0] == Notify(NotifyType.COOKIE, c1)  # first payload (2.6)
    assert retry.get(Nonce) == decode_message(req).get(Nonce)
    sent.clear()
    mgr.receive(encode_message(retry.header, retry.payloads), att.src, 10.0)
    assert decode_message(sent[-1].data).header.spi_r != bytes(8)


def test_cookie_secret_rotates_and_the_previous_one_expires():
    mgr, sent = responder(cookie_threshold=0, cookie_secret_lifetime=60.0)
    att = Attacker(("198.18.0.1", 500))
    req = att.request()
    mgr.receive(req, att.src, 0.0)
    att.answer(sent[-1], 0.0)
    with_cookie = att.request()

    def accepted(now: float) -> bool:
        sent.clear()
        mgr.receive(with_cookie, att.src, now)
        ok = bool(sent) and decode_message(sent[-1].data).header.spi_r != bytes(8)
        mgr.sas.clear()
        mgr._half_open_sas.clear()
        mgr._half_open_keys.clear()
        return ok

    assert accepted(30.0)  # same secret
    assert accepted(90.0)  # rotated at 90 s (due at 60): the previous secret still counts
    assert accepted(149.0)  # the next rotation is due at 150 s
    assert not accepted(160.0)  # rotated again: the cookie's secret is gone
    # a cookie is never accepted long after it was issued (997 s in the report)
    mgr2, sent2 = responder(cookie_threshold=0)
    att2 = Attacker(("198.18.0.1", 500))
    mgr2.receive(att2.request(), att2.src, 0.0)
    att2.answer(sent2[-1], 0.0)
    sent2.clear()
    mgr2.receive(att2.request(), att2.src, 997.0)
    assert cookie_of(sent2[-1]) is not None  # a fresh cookie, not an SA


def test_half_open_sas_never_exceed_the_cap_under_a_cookie_answering_flood():
    mgr, sent = responder(cookie_threshold=8, half_open_max=50, init_rate=1000,
                          init_burst=1000, init_rate_total=1e6)
    answered = flood(mgr, sent, sources=40, per_source=5, now=1.0)
    assert answered == 50
    assert len(mgr._half_open_sas) == 50 and len(mgr.sas) == 50
    assert mgr.counters["init_half_open_full"] == 150
    # after the half-open timeout they go, with one summary line rather than 50
    mgr.handle_timer(1.0 + mgr.limits.half_open_timeout + 0.1)
    assert not mgr.sas and not mgr._half_open_sas


def test_one_source_gets_its_burst_then_its_rate():
    mgr, sent = responder(cookie_threshold=0, init_rate=10, init_burst=20,
                          init_rate_total=1e6)
    assert flood(mgr, sent, sources=1, per_source=100, now=0.0) == 20
    assert mgr.counters["init_rate_limited"] == 80
    # one second later: ten more tokens
    assert flood(mgr, sent, sources=1, per_source=100, now=1.0) == 10
    # another source is not affected
    assert flood(mgr, sent, sources=2, per_source=1, now=1.0) == 1


def test_the_total_rate_bounds_key_exchanges_from_many_sources():
    mgr, sent = responder(cookie_threshold=10_000, half_open_max=10_000, init_rate=10,
                          init_burst=20, init_rate_total=100)
    assert flood(mgr, sent, sources=500, per_source=1, now=0.0) == 100


def test_expired_half_open_sas_log_one_summary_per_interval(caplog):
    mgr, sent = responder(cookie_threshold=10_000, half_open_max=10_000, init_rate=1e6,
                          init_burst=1e6, init_rate_total=1e6)
    caplog.set_level(logging.INFO, logger="nattunnel")
    for k in range(3):
        flood(mgr, sent, sources=100, per_source=2, now=k * 31.0)
        mgr.handle_timer(k * 31.0 + 30.5)
    assert not mgr._half_open_sas
    lines = [r for r in caplog.records if "half-open" in r.getMessage()]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and not warnings  # at 30.5 s and at 92.5 s (60 s apart)
    assert mgr.counters["half_open_dropped"] == 600


def test_ike_sas_per_identity_are_capped_oldest_first(monkeypatch):
    from tests.support.ike import Net

    # a peer (or a stolen key) that opens IKE SA after IKE SA without INITIAL_CONTACT
    key = (ExchangeType.IKE_AUTH, State.INIT_DONE)
    real = ON_REQUEST[key]

    def no_initial_contact(self: IkeSa, msg, now):  # type: ignore[no-untyped-def]
        real(self, msg, now)
        self.initial_contact = False

    monkeypatch.setitem(ON_REQUEST, key, no_initial_contact)
    net = Net()
    net.b.limits = IkeLimits(ike_sas_per_identity=2)
    made = []
    for k in range(5):
        net.a.initiate("b", float(k))
        net.deliver(float(k))
        made.append([sa for sa in net.b.sas.values() if sa.state is State.ESTABLISHED])
    assert [len(m) for m in made] == [1, 2, 2, 2, 2]
    assert net.b.counters["identity_cap_deleted"] == 3
    # the newest two stay, and the deletes reached A (its SAs went too)
    newest = sorted(made[-1], key=lambda sa: sa.created)
    assert [sa.created for sa in newest] == [3.0, 4.0]
    assert sum(sa.state is State.ESTABLISHED for sa in net.a.sas.values()) == 2


def test_source_limiter_table_is_bounded():
    lim = SourceLimiter(rate=1, burst=2, max_sources=100)
    for i in range(10_000):
        lim.allow(f"198.19.{i // 250 % 250}.{i % 250}", 0.0)
    assert len(lim) <= 100
    # once buckets are full again (2 s later) they make room for new sources
    assert lim.allow("198.18.5.5", 2.5) and len(lim) <= 100
    assert source_key("fd00::1") == source_key("fd00::2")  # one IPv6 /64
    assert source_key("::ffff:198.18.0.1") == source_key("198.18.0.1")
    assert not lim.allow("not an address", 0.0)


def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(rate=2, burst=3, now=0.0)
    assert [b.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.allow(0.5) and not b.allow(0.5)


def test_spoofed_cookie_response_is_not_answered_with_state():
    mgr, sent = responder(cookie_threshold=0)
    hdr = Header.make(ExchangeType.IKE_SA_INIT, b"\x01" * 8, initiator=True, response=False)
    junk = encode_message(hdr, [Notify(NotifyType.COOKIE, b"\x00" * 17), Nonce(b"n" * 32)])
    mgr.receive(junk, ("198.18.0.1", 500), 0.0)
    assert cookie_of(sent[-1]) is not None and not mgr.sas


def test_peek_nonce_and_cookie_agrees_with_the_decoder():
    import pytest

    from nattunnel.ike.message import IkeDecodeError, peek_nonce_and_cookie

    att = Attacker(("198.18.0.1", 500))
    plain = att.request()
    msg = decode_message(plain)
    assert peek_nonce_and_cookie(plain) == (msg.get(Nonce).data, None)
    with_cookie = encode_message(msg.header, [Notify(NotifyType.COOKIE, b"c" * 17),
                                              *msg.payloads])
    assert peek_nonce_and_cookie(with_cookie) == (msg.get(Nonce).data, b"c" * 17)
    for cut in (30, 40, len(plain) - 1):
        broken = bytearray(plain[:cut])
        broken[24:28] = len(broken).to_bytes(4, "big")
        with pytest.raises(IkeDecodeError):
            peek_nonce_and_cookie(bytes(broken))
