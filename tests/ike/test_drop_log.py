"""The IKE manager's DEBUG lines for messages it drops before an IKE SA (ike/droplog.py): a
cookie sent, the half-open cap, the rate limits, no IKE SA for the SPI; one line per reason
per 10 s at most, saying how many were not logged since, and nothing at INFO or above (a
flood costs counters, not log lines). The responder is fed as in test_limits.py."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from nattunnel.constants import ExchangeType
from nattunnel.ike import droplog
from nattunnel.ike.message import Header, encode_message
from tests.ike.test_limits import Attacker, cookie_of, flood, responder


def lines(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if words in r.getMessage()]


def test_cookies_one_debug_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    mgr, sent = responder(cookie_threshold=0)
    for i in range(30):
        att = Attacker(("198.18.0.1", 1000 + i))
        mgr.receive(att.request(), att.src, 5.0 + i * 0.1)  # 3 s of requests
        assert cookie_of(sent[-1]) is not None
    assert mgr.counters["cookies_sent"] == 30
    (first,) = lines(caplog, "answered with a COOKIE")
    assert first.levelno == logging.DEBUG
    assert first.getMessage().startswith("IKE_SA_INIT from 198.18.0.1:1000 answered")
    assert "more since" not in first.getMessage()
    att = Attacker(("198.18.0.7", 500))
    mgr.receive(att.request(), att.src, 15.0)  # 10 s after the first line
    second = lines(caplog, "answered with a COOKIE")[1]
    assert "198.18.0.7:500" in second.getMessage()
    assert second.getMessage().endswith("(29 more since the last such line)")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


def test_rate_limited_and_half_open_full(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    mgr, sent = responder(cookie_threshold=1000, init_rate=10, init_burst=5,
                          init_rate_total=1e6)
    flood(mgr, sent, sources=1, per_source=50, now=0.0)
    assert mgr.counters["init_rate_limited"] == 45
    (line,) = lines(caplog, "dropped by the rate limit")
    assert line.levelno == logging.DEBUG and "198.19.0.1:" in line.getMessage()

    mgr, sent = responder(cookie_threshold=1000, half_open_max=3, init_rate=1000,
                          init_burst=1000, init_rate_total=1e6)
    flood(mgr, sent, sources=10, per_source=1, now=0.0)
    assert mgr.counters["init_half_open_full"] == 7
    (line,) = lines(caplog, "half_open_max half-open IKE SAs")
    assert line.levelno == logging.DEBUG


def test_no_ike_sa_for_the_spi(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    mgr, _ = responder()
    spi_i, spi_r = bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4a5a6a7a8")
    hdr = replace(Header.make(ExchangeType.INFORMATIONAL, spi_i, initiator=True),
                  spi_r=spi_r, message_id=1)
    msg = encode_message(hdr, [])
    for i in range(100):
        mgr.receive(msg, ("198.18.0.5", 4500), 1.0 + i * 0.01)
    assert mgr.counters["dropped"] == 100
    (line,) = lines(caplog, "no IKE SA of ours has it")
    assert line.levelno == logging.DEBUG
    assert line.getMessage() == ("IKE message from 198.18.0.5:4500 for SPI a1a2a3a4a5a6a7a8 "
                                 "dropped: no IKE SA of ours has it")
    mgr.receive(msg, ("198.18.0.5", 4500), 1.0 + droplog.INTERVAL)
    assert lines(caplog, "no IKE SA of ours has it")[1].getMessage().endswith(
        "(99 more since the last such line)")


def test_nothing_is_formatted_without_debug(caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="nattunnel")
    calls = []
    monkeypatch.setattr(droplog, "format_addr", lambda a: calls.append(a) or "x")
    mgr, _ = responder(cookie_threshold=0)
    for i in range(20):
        att = Attacker(("198.18.0.1", 1000 + i))
        mgr.receive(att.request(), att.src, float(i * 20))
    assert mgr.counters["cookies_sent"] == 20
    assert not calls and not lines(caplog, "COOKIE")
