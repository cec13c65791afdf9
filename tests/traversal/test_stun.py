"""The STUN Binding client's transactions on an explicit clock (RFC 8489 section 6.2.1)."""

from __future__ import annotations

import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from nattunnel.constants import STUN_RC, STUN_RM, STUN_RTO
from nattunnel.traversal.stun import (
    MAX_TRANSACTIONS,
    Binding,
    MappingChanged,
    StunClient,
    StunLimit,
    TransactionFailed,
    TransactionTimedOut,
)
from tests.traversal.server import response

SERVER = ("198.18.0.10", 3478)
OTHER = ("198.18.0.11", 3479)
MAPPED = ("198.18.50.1", 40000)


def run_clock(client: StunClient, until: float) -> list[float]:
    """Fire the client's timer at each deadline up to ``until``: when requests went out."""
    sent = [0.0] * len(client.datagrams_to_send())
    while (t := client.get_timer()) is not None and t <= until:
        client.handle_timer(t)
        sent += [t] * len(client.datagrams_to_send())
    return sent


def events(client: StunClient) -> list[object]:
    out = []
    while (ev := client.next_event()) is not None:
        out.append(ev)
    return out


def test_retransmissions_exactly_per_rfc8489():
    c = StunClient()
    tid = c.start_binding(SERVER, 0.0)
    assert run_clock(c, 1000.0) == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # section 6.2.1
    (ev,) = events(c)
    assert isinstance(ev, TransactionTimedOut)
    assert ev.transaction_id == tid and ev.requests == STUN_RC == 7 and ev.server == SERVER
    assert c.get_timer() is None and c.outstanding() == 0
    assert c.counters["timed_out"] == 1 and c.counters["retransmissions"] == 6


def test_timeout_at_39_5_seconds():
    c = StunClient()
    c.start_binding(SERVER, 10.0)
    run_clock(c, 10.0 + 31.5)
    assert c.get_timer() == pytest.approx(10.0 + 31.5 + STUN_RM * STUN_RTO)  # 39.5 s in all
    c.handle_timer(10.0 + 39.4)
    assert events(c) == []
    c.handle_timer(10.0 + 39.5)
    assert isinstance(events(c)[0], TransactionTimedOut)


def test_timings_per_transaction():
    c = StunClient()
    c.start_binding(SERVER, 0.0, rto=0.1, rc=3, rm=4)
    assert run_clock(c, 100.0) == pytest.approx([0.0, 0.1, 0.3])
    assert c.counters["timed_out"] == 1
    with pytest.raises(ValueError):
        c.start_binding(SERVER, 0.0, rto=0)


def test_a_late_timer_does_not_burst():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    c.datagrams_to_send()
    c.handle_timer(5.0)  # asleep for ten RTOs
    assert len(c.datagrams_to_send()) == 1
    assert c.get_timer() == pytest.approx(6.0)


def test_request_format():
    c = StunClient()
    tid = c.start_binding(SERVER, 0.0, change_ip=True, change_port=True)
    ((dest, data),) = c.datagrams_to_send()
    assert dest == SERVER
    msg = stun.parse_message(data)  # checks the FINGERPRINT
    assert msg.message_method == stun.Method.BINDING and msg.message_class == stun.Class.REQUEST
    assert msg.transaction_id == tid and len(tid) == 12
    assert list(msg.attributes) == ["CHANGE-REQUEST", "FINGERPRINT"]
    assert msg.attributes["CHANGE-REQUEST"] == 0x06
    plain = StunClient()
    plain.start_binding(SERVER, 0.0)
    (_, data2), = plain.datagrams_to_send()
    assert list(stun.parse_message(data2).attributes) == ["FINGERPRINT"]
    assert len({StunClient().start_binding(SERVER, 0.0) for _ in range(50)}) == 50


def test_binding_success_then_duplicates_and_late_ones_are_dropped():
    c = StunClient()
    tid = c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    resp = response(req, MAPPED, origin=SERVER, other=OTHER)
    assert c.receive(resp, SERVER, 0.25)
    (ev,) = events(c)
    assert isinstance(ev, Binding)
    assert ev.transaction_id == tid and ev.mapped == MAPPED and ev.xor
    assert ev.other_address == OTHER and ev.response_origin == SERVER and ev.source == SERVER
    assert ev.rtt == pytest.approx(0.25)
    assert c.mapped_address(SERVER) == MAPPED
    info = c.server_info(SERVER)
    assert info is not None and info.other_address == OTHER
    assert c.get_timer() is None
    # the same answer again (the server answered a retransmission): counted, nothing else
    assert not c.receive(resp, SERVER, 0.6)
    assert events(c) == [] and c.counters["unmatched"] == 1
    assert c.counters["succeeded"] == 1


def test_rtt_unknown_after_a_retransmission():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    c.handle_timer(0.5)
    assert c.receive(response(req, MAPPED), SERVER, 0.7)
    (ev,) = events(c)
    assert isinstance(ev, Binding) and ev.rtt is None


def test_late_response_after_timeout():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    run_clock(c, 100.0)
    assert isinstance(events(c)[0], TransactionTimedOut)
    assert not c.receive(response(req, MAPPED), SERVER, 100.0)
    assert c.counters["unmatched"] == 1 and events(c) == []
    assert c.mapped_address(SERVER) is None


def test_response_from_the_wrong_address_is_ignored():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    resp = response(req, ("203.0.113.66", 1))
    for wrong in [("198.18.0.99", 3478), ("198.18.0.10", 3479), ("fd00::10", 3478, 0, 0)]:
        assert not c.receive(resp, wrong, 0.1)
    assert c.counters["wrong_source"] == 3 and events(c) == []
    # the transaction goes on: retransmitted, and the real answer is taken
    assert c.get_timer() == 0.5
    assert c.receive(response(req, MAPPED), SERVER, 0.2)
    assert isinstance(events(c)[0], Binding)


def test_dual_stack_source_and_ipv6():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    # what a dual-stack [::] socket reports for an IPv4 sender
    assert c.receive(response(req, MAPPED), ("::ffff:198.18.0.10", 3478, 0, 0), 0.1)
    six = ("fd00::10", 3478, 0, 0)
    c.start_binding(six, 1.0)
    ((dest, req6),) = c.datagrams_to_send()
    assert dest == six
    assert c.receive(response(req6, ("fd00::99", 5000)), ("fd00:0::10", 3478, 0, 0), 1.1)
    evs = events(c)
    assert evs[1].mapped == ("fd00::99", 5000, 0, 0)
    assert c.mapped_address(("fd00::10", 3478)) == ("fd00::99", 5000, 0, 0)


def test_mapped_address_from_an_rfc3489_server():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    assert c.receive(response(req, MAPPED, xor=False, fingerprint=False), SERVER, 0.1)
    (ev,) = events(c)
    assert isinstance(ev, Binding) and ev.mapped == MAPPED and not ev.xor


def test_change_request_answered_from_the_other_address():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    c.receive(response(req, MAPPED, other=OTHER), SERVER, 0.1)
    events(c)
    # change IP and port: from OTHER only
    c.start_binding(SERVER, 1.0, change_ip=True, change_port=True)
    ((_, req2),) = c.datagrams_to_send()
    resp2 = response(req2, MAPPED)
    assert not c.receive(resp2, SERVER, 1.1)
    assert not c.receive(resp2, (OTHER[0], SERVER[1]), 1.1)
    assert c.receive(resp2, OTHER, 1.1)
    (ev,) = events(c)
    assert isinstance(ev, Binding) and ev.change_ip and ev.change_port and ev.source == OTHER
    # the OTHER-ADDRESS is kept when the answer did not repeat it
    assert c.server_info(SERVER).other_address == OTHER
    # change port only: the server's IP, the other port
    c.start_binding(SERVER, 2.0, change_port=True)
    ((_, req3),) = c.datagrams_to_send()
    assert not c.receive(response(req3, MAPPED), OTHER, 2.1)
    assert c.receive(response(req3, MAPPED), (SERVER[0], OTHER[1]), 2.1)


def test_change_request_without_a_known_other_address():
    c = StunClient()
    c.start_binding(SERVER, 0.0, change_ip=True)
    ((_, req),) = c.datagrams_to_send()
    resp = response(req, MAPPED)
    assert not c.receive(resp, SERVER, 0.1)  # the IP did not change
    assert not c.receive(resp, ("198.18.0.12", 9999), 0.1)  # the port did
    assert c.receive(resp, ("198.18.0.12", SERVER[1]), 0.1)
    # expect_from pins it
    c.start_binding(SERVER, 1.0, change_port=True, expect_from=("198.18.0.10", 4000))
    ((_, req2),) = c.datagrams_to_send()
    assert not c.receive(response(req2, MAPPED), ("198.18.0.10", 4001), 1.1)
    assert c.receive(response(req2, MAPPED), ("198.18.0.10", 4000), 1.1)


def test_error_response_fails_the_transaction():
    c = StunClient()
    tid = c.start_binding(SERVER, 0.0, change_ip=True, expect_from=SERVER)
    ((_, req),) = c.datagrams_to_send()
    assert c.receive(response(req, MAPPED, error=(420, "Unknown Attribute")), SERVER, 0.1)
    (ev,) = events(c)
    assert isinstance(ev, TransactionFailed)
    assert ev.transaction_id == tid and ev.code == 420 and ev.reason == "Unknown Attribute"
    assert ev.change_ip and not ev.change_port
    assert c.get_timer() is None and c.counters["failed"] == 1


def test_420_with_unknown_attributes_keeps_its_code():
    """coturn and others answer an unsupported CHANGE-REQUEST with 420 and UNKNOWN-ATTRIBUTES
    (0x000A, RFC 8489 section 14.13), which aioice does not decode."""
    c = StunClient()
    c.start_binding(SERVER, 0.0, change_ip=True, expect_from=SERVER)
    ((_, req),) = c.datagrams_to_send()
    resp = bytearray(response(req, MAPPED, error=(420, "Unknown Attribute"), fingerprint=False))
    resp += bytes.fromhex("000a0002" "0003" "0000")  # UNKNOWN-ATTRIBUTES: CHANGE-REQUEST
    resp[2:4] = (len(resp) - 20).to_bytes(2, "big")
    assert c.receive(bytes(resp), SERVER, 0.1)
    (ev,) = events(c)
    assert isinstance(ev, TransactionFailed) and ev.code == 420


def test_known_rfc5780_attributes_do_not_fail_a_success():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    resp = bytearray(response(req, MAPPED, fingerprint=False))
    resp += bytes.fromhex("00270004" "11220000")  # RESPONSE-PORT (RFC 5780 section 7.5)
    resp[2:4] = (len(resp) - 20).to_bytes(2, "big")
    assert c.receive(bytes(resp), SERVER, 0.1)
    assert isinstance(events(c)[0], Binding)


def test_unknown_comprehension_required_attribute_fails_it():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    resp = bytearray(response(req, MAPPED, fingerprint=False))
    # append attribute 0x0030 (unassigned, comprehension-required), 4 octets
    resp += bytes.fromhex("00300004deadbeef")
    resp[2:4] = (len(resp) - 20).to_bytes(2, "big")
    assert c.receive(bytes(resp), SERVER, 0.1)
    (ev,) = events(c)
    assert isinstance(ev, TransactionFailed) and ev.code is None and "0x0030" in ev.reason


def test_success_without_an_address_fails_it():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    msg = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE,
                       transaction_id=stun.parse_message(req).transaction_id)
    assert c.receive(bytes(msg), SERVER, 0.1)
    (ev,) = events(c)
    assert isinstance(ev, TransactionFailed) and "MAPPED-ADDRESS" in ev.reason


def test_mapping_changed():
    c = StunClient()
    moved = ("198.18.50.1", 40001)
    for i, (now, mapped) in enumerate([(0.0, MAPPED), (10.0, MAPPED), (20.0, moved)]):
        c.start_binding(SERVER, now)
        ((_, req),) = c.datagrams_to_send()
        assert c.receive(response(req, mapped), SERVER, now + 0.01)
        evs = events(c)
        assert isinstance(evs[0], Binding)
        if i < 2:
            assert len(evs) == 1
        else:
            assert evs[1] == MappingChanged(SERVER, MAPPED, moved)
    assert c.counters["mapping_changed"] == 1


def test_bad_fingerprint_and_wrong_class_are_dropped_and_it_goes_on():
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    resp = bytearray(response(req, MAPPED))
    resp[-1] ^= 1
    assert not c.receive(bytes(resp), SERVER, 0.1)
    assert c.counters["malformed"] == 1
    # a request (or an indication) with our transaction ID is not an answer
    tid = stun.parse_message(req).transaction_id
    for cls in (stun.Class.REQUEST, stun.Class.INDICATION):
        assert not c.receive(bytes(stun.Message(stun.Method.BINDING, cls, tid)), SERVER, 0.1)
    assert not c.receive(bytes(stun.Message(stun.Method.ALLOCATE, stun.Class.RESPONSE, tid)),
                         SERVER, 0.1)
    assert c.counters["unexpected"] == 3
    assert c.outstanding() == 1 and events(c) == []
    assert c.receive(response(req, MAPPED), SERVER, 0.2)


def test_limits():
    c = StunClient()
    for _ in range(10):
        c.start_binding(SERVER, 0.0)
    with pytest.raises(StunLimit, match=r"section 6\.2"):
        c.start_binding(SERVER, 0.0)
    for i in range(MAX_TRANSACTIONS - 10):
        c.start_binding((f"198.18.1.{i}", 3478), 0.0)
    with pytest.raises(StunLimit):
        c.start_binding(("198.18.2.1", 3478), 0.0)
    assert c.counters["refused"] == 2
    reqs = c.datagrams_to_send()
    c.receive(response(reqs[0][1], MAPPED), SERVER, 0.1)
    c.start_binding(SERVER, 0.2)  # room again
    with pytest.raises(ValueError):
        c.start_binding(("not an address", 1), 0.0)


def test_heap_stays_bounded_when_transactions_finish_early():
    c = StunClient()
    for i in range(5000):
        c.start_binding(SERVER, i * 0.001)
        ((_, req),) = c.datagrams_to_send()
        assert c.receive(response(req, MAPPED), SERVER, i * 0.001)
        events(c)
    assert len(c._heap) <= 4 * MAX_TRANSACTIONS + 16
    assert c.get_timer() is None


def test_events_are_bounded():
    c = StunClient(max_events=4)
    for i in range(6):
        c.start_binding(("198.18.3.1", 1000 + i), 0.0)
    run_clock(c, 100.0)
    assert len(events(c)) == 4 and c.counters["events_dropped"] == 2


def test_cancel():
    c = StunClient()
    tid = c.start_binding(SERVER, 0.0)
    assert c.cancel(tid) and not c.cancel(tid)
    assert c.get_timer() is None
    run_clock(c, 100.0)
    assert events(c) == []


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 119), st.binary(min_size=1, max_size=8))
def test_malformed_input_never_raises(junk, at, patch):
    c = StunClient()
    c.start_binding(SERVER, 0.0)
    ((_, req),) = c.datagrams_to_send()
    good = bytearray(response(req, MAPPED, other=OTHER, origin=SERVER))
    # random junk; junk with our header; a good answer with octets overwritten
    hdr = bytes(good[:20])
    for data in (junk, hdr + junk, hdr[:2] + len(junk).to_bytes(2, "big") + hdr[4:] + junk):
        c.receive(data, SERVER, 0.1)
    mutated = bytearray(good)
    at %= len(mutated)
    mutated[at : at + len(patch)] = patch
    c.receive(bytes(mutated), SERVER, 0.1)
    c.receive(memoryview(bytes(good)), SERVER, 0.1)
    assert c.counters["received"] == 5
    counted = sum(c.counters[k] for k in ("malformed", "unmatched", "wrong_source",
                                          "unexpected", "succeeded", "failed"))
    assert counted == 5
