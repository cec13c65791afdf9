"""The TURN client core (nattunnel.traversal.turn), sans-I/O: no sockets, an explicit
clock, and a small server made of aioice's message format that answers as RFC 8656 and
coturn do (401 with REALM and NONCE first, MESSAGE-INTEGRITY on its answers)."""

from __future__ import annotations

import struct

import pytest
from aioice import stun
from aioice.turn import make_integrity_key

from nattunnel.traversal.turn import (
    CHANNEL_MIN,
    MAX_AUTH_RETRIES,
    Allocated,
    ChannelUp,
    Event,
    PermissionUp,
    Refreshed,
    Released,
    TurnClient,
    TurnFailed,
    is_channel_data,
    refresh_after,
)

SERVER = ("192.0.2.1", 3478)
RELAYED = ("192.0.2.1", 50000)
MAPPED = ("198.51.100.7", 40000)
PEER = ("203.0.113.9", 4500)
USER, PASSWORD, REALM = "alice", "secret", "example.org"
KEY = make_integrity_key(USER, REALM, PASSWORD)


class Server:
    """Answers the client's requests; ``errors`` maps a method to codes to answer with
    (taken one by one)."""

    def __init__(self) -> None:
        self.nonce = b"nonce-1"
        self.errors: dict[stun.Method, list[int]] = {}
        self.seen: list[stun.Message] = []
        self.lifetime = 600

    def answer(self, data: bytes) -> bytes | None:
        msg = stun.parse_message(data)
        self.seen.append(msg)
        if msg.message_class == stun.Class.INDICATION:
            return None
        attrs: dict[str, object] = {}
        code = None
        if "MESSAGE-INTEGRITY" not in msg.attributes or not msg.check_message_integrity(KEY):
            code = 401
        elif msg.attributes.get("NONCE") != self.nonce:
            code = 438
        elif self.errors.get(msg.message_method):
            code = self.errors[msg.message_method].pop(0)
        if code is not None:
            attrs = {"ERROR-CODE": (code, "Unauthorized" if code == 401 else "Error"),
                     "REALM": REALM, "NONCE": self.nonce}
            out = stun.Message(msg.message_method, stun.Class.ERROR,
                               transaction_id=msg.transaction_id, attributes=attrs)
            return bytes(out)
        if msg.message_method == stun.Method.ALLOCATE:
            attrs = {"XOR-RELAYED-ADDRESS": RELAYED, "XOR-MAPPED-ADDRESS": MAPPED,
                     "LIFETIME": self.lifetime}
        elif msg.message_method == stun.Method.REFRESH:
            attrs = {"LIFETIME": msg.attributes["LIFETIME"]}
        out = stun.Message(msg.message_method, stun.Class.RESPONSE,
                           transaction_id=msg.transaction_id, attributes=attrs)
        out.add_message_integrity(KEY)
        return bytes(out)


def _client(permission_lifetime: float = 300, channel_lifetime: float = 600) -> TurnClient:
    return TurnClient(SERVER, USER, PASSWORD, permission_lifetime=permission_lifetime,
                      channel_lifetime=channel_lifetime)


def run(c: TurnClient, s: Server, now: float) -> list[Event]:
    """Carry what the client sends to the server and its answers back until quiet."""
    for _ in range(20):
        out = c.datagrams_to_send()
        if not out:
            break
        for dest, data in out:
            assert dest == SERVER
            ans = s.answer(data)
            if ans is not None:
                assert c.receive(ans, SERVER, now) is None
    events = []
    while (ev := c.next_event()) is not None:
        events.append(ev)
    return events


def allocated(permission_lifetime: float = 300,
              channel_lifetime: float = 600) -> tuple[TurnClient, Server]:
    c, s = _client(permission_lifetime, channel_lifetime), Server()
    c.allocate(0.0)
    evs = run(c, s, 0.0)
    assert evs == [Allocated(RELAYED, MAPPED, 600.0)]
    return c, s


def test_allocate_with_401_then_credentials() -> None:
    c, s = allocated()
    assert c.allocated and c.relayed == RELAYED and c.mapped == MAPPED and c.realm == REALM
    first, second = s.seen
    assert "USERNAME" not in first.attributes and "MESSAGE-INTEGRITY" not in first.attributes
    assert first.attributes["REQUESTED-TRANSPORT"] == 17 << 24
    assert second.attributes["USERNAME"] == USER and second.check_message_integrity(KEY)
    assert second.attributes["NONCE"] == b"nonce-1" and "FINGERPRINT" in second.attributes


def test_stale_nonce_gives_a_new_request_and_too_many_fail() -> None:
    c, s = allocated()
    c.add_peer(PEER, 1.0)
    s.nonce = b"nonce-2"
    evs = run(c, s, 1.0)
    assert PermissionUp(PEER) in evs and ChannelUp(PEER, CHANNEL_MIN) in evs
    assert c.counters["stale_nonce"] == 2 and c.nonce == b"nonce-2"
    # a server that keeps saying stale: given up after MAX_AUTH_RETRIES
    c2, s2 = allocated()
    s2.errors[stun.Method.REFRESH] = [438] * 10
    c2.handle_timer(refresh_after(600))
    evs = run(c2, s2, refresh_after(600))
    assert [e for e in evs if isinstance(e, TurnFailed)] == [
        TurnFailed("refresh", 438, "Error")]
    assert c2.counters["stale_nonce"] == MAX_AUTH_RETRIES and c2.state == "failed"


def test_refresh_before_the_lifetime_ends_and_release() -> None:
    c, s = allocated()
    assert c.get_timer() == refresh_after(600) == 540.0
    c.handle_timer(539.9)
    assert not c.datagrams_to_send()
    c.handle_timer(540.0)
    assert run(c, s, 540.0) == [Refreshed(600.0)]
    assert c.expires == 1140.0 and c.get_timer() == 1080.0
    c.release(600.0)
    assert run(c, s, 600.0) == [Released()]
    assert s.seen[-1].attributes["LIFETIME"] == 0 and c.state == "released"
    assert c.get_timer() is None


def test_permission_and_channel_refreshed_with_short_lifetimes() -> None:
    c, s = allocated(permission_lifetime=8, channel_lifetime=20)
    st = c.add_peer(PEER, 0.0)
    run(c, s, 0.0)
    assert st.header == CHANNEL_MIN.to_bytes(2, "big") and st.permission_until == 8.0
    assert c.get_timer() == refresh_after(8) == 6.0
    c.handle_timer(6.0)
    run(c, s, 6.0)
    assert c.counters["permission_refreshes"] == 1 and st.permission_until == 14.0
    c.handle_timer(15.0)  # channel refresh at 20 - 5
    run(c, s, 15.0)
    assert c.counters["channel_refreshes"] == 1 and st.channel_until == 35.0
    assert s.seen[-1].attributes["CHANNEL-NUMBER"] == CHANNEL_MIN
    assert s.seen[-1].attributes["XOR-PEER-ADDRESS"] == PEER


def test_channel_data_and_send_indications() -> None:
    c, s = allocated()
    st = c.add_peer(PEER, 0.0)
    assert c.frame(PEER, b"x") is None  # nothing installed yet
    assert ChannelUp(PEER, CHANNEL_MIN) in run(c, s, 0.0)
    framed = c.frame(PEER, b"hello")
    assert framed is not None and framed[:6] == struct.pack("!HH", CHANNEL_MIN, 5) + b"he"
    assert c.channel_header(PEER, 5) == framed[:4]
    st.header = b""  # as if only the permission were up
    ind = c.frame(PEER, b"hello")
    assert ind is not None
    msg = stun.parse_message(ind)
    assert msg.message_method == stun.Method.SEND and msg.attributes["DATA"] == b"hello"
    assert msg.attributes["XOR-PEER-ADDRESS"] == PEER
    st.header = CHANNEL_MIN.to_bytes(2, "big")
    # in: ChannelData, and a Data indication
    data = struct.pack("!HH", CHANNEL_MIN, 3) + b"abc" + b"\0"
    assert is_channel_data(data)
    assert c.receive(data, SERVER, 1.0) == (PEER, 4, 7)
    ind_in = bytes(stun.Message(stun.Method.DATA, stun.Class.INDICATION,
                                attributes={"XOR-PEER-ADDRESS": PEER, "DATA": b"xyz"}))
    found = c.receive(ind_in, SERVER, 1.0)
    assert found is not None and found[0] == PEER and ind_in[found[1]:found[2]] == b"xyz"
    assert c.counters["channel_data_in"] == 1 and c.counters["data_in"] == 1


def test_malformed_and_foreign_input_is_counted() -> None:
    c, s = allocated()
    c.add_peer(PEER, 0.0)
    run(c, s, 0.0)
    assert c.receive(b"\x40\x01\x00\x01z", SERVER, 1.0) is None  # unknown channel
    assert c.receive(struct.pack("!HH", CHANNEL_MIN, 50) + b"ab", SERVER, 1.0) is None
    assert c.receive(b"\x00\x01\x00\x00junkjunkjunkjunk", SERVER, 1.0) is None
    assert c.receive(b"\x40\x00\x00\x00", ("192.0.2.99", 3478), 1.0) is None
    other = ("203.0.113.200", 1)
    ind = bytes(stun.Message(stun.Method.DATA, stun.Class.INDICATION,
                             attributes={"XOR-PEER-ADDRESS": other, "DATA": b"x"}))
    assert c.receive(ind, SERVER, 1.0) is None
    late = bytes(stun.Message(stun.Method.REFRESH, stun.Class.RESPONSE))
    assert c.receive(late, SERVER, 1.0) is None
    n = c.counters
    assert (n["unknown_channel"], n["malformed"], n["unexpected"], n["no_permission"],
            n["unmatched"]) == (1, 2, 1, 1, 1)


def test_forged_answer_fails_integrity() -> None:
    c, s = allocated()
    c.add_peer(PEER, 0.0)
    (dest, req), *_ = c.datagrams_to_send()
    msg = stun.parse_message(req)
    forged = stun.Message(msg.message_method, stun.Class.RESPONSE,
                          transaction_id=msg.transaction_id)
    forged.add_message_integrity(b"wrong key")
    assert c.receive(bytes(forged), SERVER, 0.0) is None
    assert c.counters["integrity_failed"] == 1
    # the real answer still counts
    ans = s.answer(req)
    assert ans is not None and c.receive(ans, dest, 0.0) is None
    assert c.counters["integrity_failed"] == 1 and c.peer(PEER) is not None


def test_errors_and_timeouts() -> None:
    c, s = allocated()
    s.errors[stun.Method.CREATE_PERMISSION] = [403]
    c.add_peer(PEER, 0.0)
    evs = run(c, s, 0.0)
    assert TurnFailed("permission", 403, "Error", PEER) in evs and c.allocated
    # an allocation that is never answered: Rc requests, then failed at 39.5 s
    c2 = _client()
    c2.allocate(0.0)
    times = []
    now = 0.0
    while (t := c2.get_timer()) is not None:
        if c2.datagrams_to_send():
            times.append(now)
        now = t
        c2.handle_timer(now)
    assert c2.counters["retransmissions"] == 6 and now == pytest.approx(39.5)
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert c2.next_event() == TurnFailed("allocate", None, "no answer after 7 requests")
    assert c2.state == "failed"
    # 437 to an allocate (the server still holds this 5-tuple's allocation): made again
    # after 2, 4 and 8 s, then failed with its code
    c3, s3 = _client(), Server()
    s3.errors[stun.Method.ALLOCATE] = [437] * 4
    c3.allocate(0.0)
    assert run(c3, s3, 0.0) == []
    for when in (2.0, 6.0):
        assert c3.get_timer() == when
        c3.handle_timer(when)
        assert run(c3, s3, when) == []
    c3.handle_timer(14.0)
    assert run(c3, s3, 14.0) == [TurnFailed("allocate", 437, "Error")]
    assert c3.counters["mismatch_retries"] == 3 and c3.state == "failed"
    c4, s4 = _client(), Server()
    s4.errors[stun.Method.ALLOCATE] = [437]
    c4.allocate(0.0)
    assert run(c4, s4, 0.0) == []
    c4.handle_timer(2.0)
    assert run(c4, s4, 2.0) == [Allocated(RELAYED, MAPPED, 600.0)]


def test_bounded_peers_and_channels() -> None:
    c = TurnClient(SERVER, USER, PASSWORD, max_peers=3)
    for i in range(3):
        assert c.add_peer((f"203.0.113.{i}", 1), 0.0).channel == CHANNEL_MIN + i
    with pytest.raises(ValueError):
        c.add_peer(("203.0.113.50", 1), 0.0)
    c.remove_peer(("203.0.113.1", 1))
    assert c.add_peer(("203.0.113.60", 1), 0.0).channel == CHANNEL_MIN + 1
    assert len(c.peers()) == 3 and c.counters["refused"] == 1
    with pytest.raises(ValueError):
        TurnClient(SERVER, USER, PASSWORD, max_peers=5000)
    with pytest.raises(ValueError):
        TurnClient(SERVER, USER, PASSWORD, permission_lifetime=0)
