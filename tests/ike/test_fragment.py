"""IKE fragmentation (RFC 7383) with two IKE SA cores on the fake wire: negotiation, fragmented
IKE_AUTH both ways, loss, reordering and duplication of fragments, retransmission as a unit,
forged fragments, and the reassembly bounds (count, size, time, one partial per direction)."""

from __future__ import annotations

import dataclasses

import pytest

from nattunnel.constants import (
    IKE_HEADER_LEN,
    ExchangeType,
    NotifyType,
    PayloadType,
)
from nattunnel.ike.base import State
from nattunnel.ike.config import IkeConfig
from nattunnel.ike.crypto import AeadSk, encr_alg
from nattunnel.ike.events import IkeRekeyed
from nattunnel.ike.fragment import (
    MAX_FRAGMENTS,
    MAX_UNAUTHENTICATED,
    REASSEMBLY_TIMEOUT,
    Reassembly,
    encrypted_size,
    fragment_room,
    ip_overhead,
    split,
)
from nattunnel.ike.message import (
    Fragment,
    Header,
    IkeDecodeError,
    Notify,
    VendorID,
    decode_message,
    encode_message,
    encode_payloads,
    peek_header,
)
from tests.support.ike import SaPair, assert_child_pair_works, child_ups, configs

#: small enough that every IKE_AUTH message (PSK, about 200 octets) goes in several pieces
SMALL = 160


def frag_configs(size: int = SMALL, auth: str = "psk") -> tuple[IkeConfig, IkeConfig]:
    a, b = configs(auth)
    for c in (a, b):
        c.fragmentation, c.fragment_size = True, size
    return a, b


def skf(data: bytes) -> bool:
    return len(data) > IKE_HEADER_LEN and data[16] == PayloadType.SKF


def frag_number(data: bytes) -> tuple[int, int]:
    """(Fragment Number, Total Fragments) of an SKF message, from its octets."""
    off = IKE_HEADER_LEN + 4
    return int.from_bytes(data[off:off + 2], "big"), int.from_bytes(data[off + 2:off + 4], "big")


def is_auth(data: bytes, response: bool) -> bool:
    h = peek_header(data)
    return h.exchange_type == ExchangeType.IKE_AUTH and h.is_response == response


def ciphers() -> tuple[AeadSk, AeadSk]:
    alg = encr_alg(20, 256)
    key = bytes(range(alg.keymat_len))
    return AeadSk(alg, key), AeadSk(alg, key)


def header(mid: int = 1, response: bool = False,
           exchange: int = ExchangeType.IKE_AUTH) -> Header:
    return Header.make(exchange, b"\x01" * 8, b"\x02" * 8, message_id=mid, initiator=True,
                       response=response)


# --- the codec and the arithmetic ---------------------------------------------------------------
@pytest.mark.parametrize(("ipv6", "natt"), [(False, False), (False, True), (True, True)])
def test_split_fits_the_datagram_and_reassembles(ipv6: bool, natt: bool) -> None:
    seal, opener = ciphers()
    payloads = [VendorID(bytes([i]) * 200) for i in range(1, 8)] + [Notify(NotifyType.COOKIE,
                                                                          b"x" * 20)]
    hdr = header()
    size = 576
    room = fragment_room(size, seal, ipv6=ipv6, natt=natt)
    # RFC 7383 section 2.5.1: IP, UDP, marker, IKE header, SKF header, IV, pad length, ICV
    assert room == size - (40 if ipv6 else 20) - 8 - (4 if natt else 0) - 28 - 8 - 8 - 1 - 16
    frags = split(hdr, payloads, seal, room)
    first, inner = encode_payloads(payloads)
    assert len(frags) == -(-len(inner) // room)
    assert all(len(f) + ip_overhead(ipv6, natt) <= size for f in frags)
    assert len(frags[0]) + ip_overhead(ipv6, natt) == size  # full fragments use all of it
    opened = [decode_message(f, sk=opener) for f in frags]
    # fragment 1 carries the first inner payload's type, the others zero (section 2.5)
    assert [f[IKE_HEADER_LEN] for f in frags] == [first] + [0] * (len(frags) - 1)
    assert all(peek_header(f).message_id == 1 for f in frags)
    r = Reassembly()
    got = None
    for m in reversed(opened):  # any order
        assert m.fragment is not None
        got = r.add(m.header, m.fragment, 0.0)
    assert got == payloads and r.reassembled == 1 and r.held == 0
    # the whole message's size as one SK message
    assert encrypted_size(len(inner), seal) == len(encode_message(hdr, payloads, sk=seal))


def test_fragment_room_refuses_a_size_with_no_room() -> None:
    seal, _ = ciphers()
    with pytest.raises(ValueError, match="no room"):
        fragment_room(100, seal, ipv6=True, natt=True)


# --- the reassembly's bounds ----------------------------------------------------------------
def frag(number: int, total: int, data: bytes = b"\x00" * 10) -> Fragment:
    return Fragment(number, total, PayloadType.VENDOR_ID if number == 1 else 0, data)


def vid_pieces(total: int) -> list[Fragment]:
    """A VendorID payload's octets in ``total`` fragments."""
    _, inner = encode_payloads([VendorID(b"v" * (10 * total))])
    step = -(-len(inner) // total)
    return [Fragment(i + 1, total, PayloadType.VENDOR_ID, inner[i * step:(i + 1) * step])
            for i in range(total)]


def test_reassembly_count_bound() -> None:
    r = Reassembly()
    assert r.add(header(), frag(1, MAX_FRAGMENTS + 1), 0.0) is None
    assert r.drops["too_many_fragments"] == 1 and r.pending(False) is None
    pieces = vid_pieces(MAX_FRAGMENTS)
    for p in pieces[:-1]:
        assert r.add(header(), p, 0.0) is None
    assert r.add(header(), pieces[-1], 0.0) == [VendorID(b"v" * 10 * MAX_FRAGMENTS)]


def test_reassembly_size_bound_drops_the_partial_message() -> None:
    r = Reassembly(max_size=1000)
    assert r.add(header(), frag(1, 3, bytes(600)), 0.0) is None
    assert r.held == 600
    assert r.add(header(), frag(2, 3, bytes(600)), 0.0) is None
    assert r.drops["too_large"] == 1 and r.pending(False) is None and r.held == 0


def test_reassembly_time_bound() -> None:
    r = Reassembly()
    r.add(header(), frag(1, 2), 5.0)
    assert r.deadline() == 5.0 + REASSEMBLY_TIMEOUT
    r.expire(5.0 + REASSEMBLY_TIMEOUT - 0.1)
    assert r.pending(False) == (1, 1, 2)
    r.expire(5.0 + REASSEMBLY_TIMEOUT)
    assert r.pending(False) is None and r.drops["timed_out"] == 1 and r.deadline() is None


def test_one_partial_message_per_direction() -> None:
    r = Reassembly()
    r.add(header(1), frag(1, 2), 0.0)
    r.add(header(7, response=True), frag(1, 3), 0.0)  # the other direction: kept apart
    assert r.pending(False) == (1, 1, 2) and r.pending(True) == (7, 1, 3)
    r.add(header(2), frag(2, 4), 0.0)  # the next request replaces the partial one
    assert r.pending(False) == (2, 1, 4) and r.drops["superseded"] == 1
    r.add(header(2), frag(2, 4), 0.0)
    assert r.drops["duplicate"] == 1
    # section 2.6: fewer fragments than the partial message: dropped; more: start anew
    r.add(header(2), frag(1, 3), 0.0)
    assert r.drops["fewer_fragments"] == 1 and r.pending(False) == (2, 1, 4)
    r.add(header(2), frag(1, 5), 0.0)
    assert r.drops["restarted"] == 1 and r.pending(False) == (2, 1, 5)
    assert r.held == 20


def test_malformed_reassembled_content_is_an_authenticated_decode_error() -> None:
    r = Reassembly()
    r.add(header(), Fragment(1, 2, PayloadType.VENDOR_ID, b"\x00\x00\x00\x40"), 0.0)
    with pytest.raises(IkeDecodeError) as e:
        r.add(header(), Fragment(2, 2, 0, b"\x00"), 0.0)
    assert e.value.authenticated and e.value.header is not None
    assert r.drops["malformed"] == 1


# --- two cores ------------------------------------------------------------------------------------
def established(w: SaPair) -> bool:
    return w.a.state is State.ESTABLISHED and w.b is not None and \
        w.b.state is State.ESTABLISHED


@pytest.mark.parametrize("auth", ["psk", "pubkey"])
def test_fragmented_ike_auth_both_roles(auth: str) -> None:
    w = SaPair(*frag_configs(auth=auth))
    w.a.start(0.0)
    w.pump()
    assert established(w)
    assert w.b is not None
    assert w.a.fragmentation and w.b.fragmentation
    init = decode_message(w.wire.delivered[0][2])
    assert init.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    # both IKE_AUTH messages went in fragments, each datagram within the fragment size
    req = [d for _, _, d in w.wire.delivered if is_auth(d, False)]
    resp = [d for _, _, d in w.wire.delivered if is_auth(d, True)]
    assert len(req) > 1 and len(resp) > 1 and all(skf(d) for d in req + resp)
    assert all(len(d) + ip_overhead(False, True) <= SMALL for d in req + resp)
    assert w.a.fragments.messages_sent == w.b.fragments.messages_sent == 1
    assert w.a.fragments.reassembled == w.b.fragments.reassembled == 1
    assert not any(w.a.fragments.drops.values()) and not any(w.b.fragments.drops.values())
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert_child_pair_works(ca, cb)


def test_later_exchanges_fragment_too_and_rekeyed_ike_sa_keeps_it() -> None:
    w = SaPair(*frag_configs())
    w.a.start(0.0)
    w.pump()
    assert w.b is not None
    w.a.rekey_child(w.a.children[0].spi_in, 1.0)
    w.pump(1.0)
    assert len(w.a.children) == 1 and w.a.fragments.messages_sent == 2
    assert w.b.fragments.reassembled == 2
    w.a.rekey_ike(2.0)
    w.pump(2.0)
    new_a = next(e for e in w.events_a if isinstance(e, IkeRekeyed)).new
    assert new_a.fragmentation


def test_no_fragments_unless_both_offer() -> None:
    a, b = frag_configs()
    a.fragmentation = False
    w = SaPair(a, b)
    w.a.start(0.0)
    w.pump()
    assert established(w) and w.b is not None
    init = decode_message(w.wire.delivered[0][2])
    assert init.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is None
    assert not w.a.fragmentation and not w.b.fragmentation
    assert not any(skf(d) for _, _, d in w.wire.delivered)


def test_responder_with_fragmentation_off_answers_whole() -> None:
    """The responder's IKE_SA_INIT answer cannot know the peer: it reassembles anyone's
    fragments; its own messages follow the peer's configuration once IKE_AUTH names it."""
    a, b = frag_configs()
    b.fragmentation = False
    w = SaPair(a, b)
    w.a.start(0.0)
    w.pump()
    assert established(w) and w.b is not None
    assert w.b.fragments.reassembled == 1 and w.b.fragments.messages_sent == 0
    assert not any(skf(d) for _, _, d in w.wire.delivered if is_auth(d, True))


def test_small_messages_go_whole() -> None:
    w = SaPair(*frag_configs(size=1280))
    w.a.start(0.0)
    w.pump()
    assert established(w) and w.a.fragmentation
    assert not any(skf(d) for _, _, d in w.wire.delivered)


def test_lost_request_fragment_the_whole_request_is_retransmitted() -> None:
    w = SaPair(*frag_configs())
    w.a.start(0.0)
    lost: list[bytes] = []

    def drop(who: str, data: bytes) -> bool:
        if who == "a" and skf(data) and frag_number(data)[0] == 2 and not lost:
            lost.append(data)
            return True
        return False

    w.pump(0.0, drop)
    assert not established(w) and w.b is not None
    assert w.b.fragments.pending(False) is not None  # fragments 1 and 3.. kept
    total = frag_number(lost[0])[1]
    before = len(w.wire.delivered)
    w.wire.advance(0.6)  # the retransmission: every fragment again
    again = [d for _, _, d in w.wire.delivered[before:] if is_auth(d, False)]
    assert sorted(frag_number(d)[0] for d in again) == list(range(1, total + 1))
    assert established(w)
    assert w.b.fragments.drops["duplicate"] == 1  # fragment 1 came twice
    assert w.b.fragments.drops["retransmitted_request"] == total - 2


def test_lost_response_fragment_the_whole_response_is_sent_again() -> None:
    w = SaPair(*frag_configs())
    w.a.start(0.0)
    lost: list[bytes] = []

    def drop(who: str, data: bytes) -> bool:
        if who == "b" and skf(data) and frag_number(data)[0] == 1 and not lost:
            lost.append(data)
            return True
        return False

    w.pump(0.0, drop)
    assert w.b is not None and w.b.state is State.ESTABLISHED and w.a.state is State.AUTH_SENT
    total = frag_number(lost[0])[1]
    before = len(w.wire.delivered)
    w.wire.advance(0.6)
    resent = [d for _, _, d in w.wire.delivered[before:] if is_auth(d, True)]
    # fragment 1 of the retransmitted request resent the whole answer; the others did not
    assert sorted(frag_number(d)[0] for d in resent) == list(range(1, total + 1))
    assert established(w)
    assert w.b.fragments.drops["retransmitted_request"] == frag_number(
        next(d for _, _, d in w.wire.delivered if is_auth(d, False)))[1]


@pytest.mark.parametrize("seed", range(5))
def test_reordered_and_duplicated_fragments(seed: int) -> None:
    w = SaPair(*frag_configs())
    w.wire.rng.seed(seed)
    w.wire.reorder = 1.0
    w.wire.duplicate = 0.3
    w.a.start(0.0)
    w.pump()
    w.wire.advance(5.0)
    assert established(w)
    (ca,), (cb,) = child_ups(w.events_a), child_ups(w.events_b)
    assert_child_pair_works(ca, cb)


def held_request(w: SaPair) -> list[bytes]:
    """A's IKE_AUTH request fragments, kept from the wire."""
    w.a.start(0.0)
    w.pump(0.0, lambda who, d: who == "a" and is_auth(d, False))
    assert w.a.request is not None
    return list(w.a.request.datagrams)


def test_forged_fragments_change_nothing() -> None:
    w = SaPair(*frag_configs())
    frags = held_request(w)
    assert len(frags) >= 3 and w.b is not None
    w.to_b(frags[0], 0.0, natt=True)
    # a forgery of fragment 2 that claims more fragments: its ICV fails, the partial stays
    forged = bytearray(frags[1])
    off = IKE_HEADER_LEN + 6
    forged[off:off + 2] = (len(frags) + 5).to_bytes(2, "big")
    w.to_b(bytes(forged), 0.0, natt=True)
    bad_icv = bytearray(frags[1])
    bad_icv[-1] ^= 1
    w.to_b(bytes(bad_icv), 0.0, natt=True)
    assert w.b.fragments.drops["integrity"] == 2
    assert w.b.fragments.pending(False) == (1, 1, len(frags))
    for f in frags[1:]:
        w.to_b(f, 0.0, natt=True)
    w.pump()
    assert established(w)


def test_fragments_outside_the_window_and_without_negotiation_are_dropped() -> None:
    w = SaPair(*frag_configs())
    w.a.start(0.0)
    w.pump()
    assert w.b is not None and w.a._sk_out is not None
    sk = w.a._sk_out
    room = fragment_room(SMALL, sk, ipv6=False, natt=True)
    far = split(w.a._header(ExchangeType.INFORMATIONAL, 9, False),
                [VendorID(b"z" * 400)], sk, room)
    w.to_b(far[0], 1.0, natt=True)
    assert w.b.fragments.drops["unexpected_message_id"] == 1
    w.b.fragmentation = False
    nxt = split(w.a._header(ExchangeType.INFORMATIONAL, w.a.message_ids[0], False),
                [VendorID(b"z" * 400)], sk, room)
    w.to_b(nxt[0], 1.0, natt=True)
    assert w.b.fragments.drops["not_negotiated"] == 1
    assert w.b.fragments.pending(False) is None and established(w)


def test_a_partial_request_goes_after_the_timeout_on_the_sa_timer() -> None:
    a, b = frag_configs()
    a.dpd_interval = b.dpd_interval = 0.0
    w = SaPair(a, b)
    w.a.start(0.0)
    w.pump()
    assert w.b is not None and w.a._sk_out is not None
    sk = w.a._sk_out
    frags = split(w.a._header(ExchangeType.INFORMATIONAL, w.a.message_ids[0], False),
                  [VendorID(b"z" * 400)], sk, fragment_room(SMALL, sk, ipv6=False, natt=True))
    w.to_b(frags[0], 1.0, natt=True)
    assert w.b.fragments.pending(False) is not None
    timer = w.b.get_timer()
    assert timer is not None and timer <= 1.0 + REASSEMBLY_TIMEOUT
    w.wire.advance(REASSEMBLY_TIMEOUT + 1.0)
    assert w.b.fragments.pending(False) is None and w.b.fragments.drops["timed_out"] == 1
    assert established(w)


def test_config_dataclass_defaults() -> None:
    cfg = configs()[0]
    assert not cfg.fragmentation and cfg.fragment_size == 1280
    assert dataclasses.replace(cfg, fragmentation=True).fragmentation


def test_a_half_open_sa_holds_at_most_16_kib() -> None:
    """Whoever completed IKE_SA_INIT has the keys to make valid fragments: before IKE_AUTH
    the responder keeps at most MAX_UNAUTHENTICATED octets of them."""
    w = SaPair(*frag_configs(size=1280))
    held_request(w)
    assert w.b is not None and w.b.state is State.INIT_DONE and w.a._sk_out is not None
    sk = w.a._sk_out
    big = split(w.a._header(ExchangeType.IKE_AUTH, 1, False), [VendorID(b"z" * 30000)], sk,
                fragment_room(1280, sk, ipv6=False, natt=True))
    assert len(big) <= MAX_FRAGMENTS
    most = 0
    for f in big:
        w.to_b(f, 0.0, natt=True)
        most = max(most, w.b.fragments.held)
    assert most <= MAX_UNAUTHENTICATED and w.b.fragments.drops["too_large"] >= 1
    assert w.b.fragments.reassembled == 0 and w.b.state is State.INIT_DONE


@pytest.mark.parametrize(("to", "natt", "overhead"), [
    (("198.18.0.2", 500), False, 20 + 8),
    (("198.18.0.2", 4500), True, 20 + 8 + 4),
    (("fd00::2", 4500), True, 40 + 8 + 4),
])
def test_the_fragment_size_is_the_ip_datagram_of_the_path(to: tuple[str, int], natt: bool,
                                                          overhead: int) -> None:
    w = SaPair(*frag_configs(size=576))
    w.a.start(0.0)
    w.pump()
    assert established(w) and w.a._sk_out is not None
    hdr = w.a._header(ExchangeType.INFORMATIONAL, 5, False)
    data, frags = w.a._encode(hdr, [VendorID(b"q" * 2000)], w.a._sk_out, to, natt)
    assert data == b"" and len(frags) >= 4
    assert max(len(f) for f in frags) + overhead == 576
    small, none = w.a._encode(hdr, [VendorID(b"q" * 100)], w.a._sk_out, to, natt)
    assert none == () and len(small) + overhead < 576


def test_status_for_show() -> None:
    w = SaPair(*frag_configs())
    w.a.start(0.0)
    w.pump()
    assert w.b is not None
    st = w.b.fragments.status(w.b.fragmentation)
    assert st == {"negotiated": True, "messages_sent": 1, "fragments_sent": st["fragments_sent"],
                  "reassembled": 1, "held": 0, "drops": {}}
    assert isinstance(st["fragments_sent"], int) and st["fragments_sent"] > 1
