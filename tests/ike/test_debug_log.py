"""DEBUG logging of the IKE SA core (docs/troubleshooting.md, "Debug logging"): every IKE
message in and out with its exchange, message ID and payload list, as strongSwan writes them;
NAT detection, rekey decisions, DPD, Deletes and deadlines; nothing per data packet, and never
a key."""

from __future__ import annotations

import logging
import re

import pytest
from cryptography.hazmat.primitives import serialization

from nattunnel.ike.base import State
from nattunnel.ike.events import ChildUp, IkeRekeyed
from nattunnel.ike.message import Header, Message, Nonce, Notify, format_payloads
from nattunnel.ike.sa import IkeSa
from tests.support.ike import A_INNER, B_INNER, Net, SaPair, configs, up
from tests.support.lab import lab_fixture  # noqa: F401  (registers the ``lab`` fixture)
from tests.support.packets import ip4

PSK = b"correct horse battery staple"  # tests.support.ike.configs()

A, B = "198.18.0.1", "198.18.0.2"  # A as B sees it (behind the NAT), B


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def has(log: list[str], pattern: str) -> str:
    """The first line that matches ``pattern`` (a regex searched in each line)."""
    found = [m for m in log if re.search(pattern, m)]
    assert found, f"no line matches {pattern!r}:\n" + "\n".join(log)
    return found[0]


def both_ways(log: list[str], exchange: str, kind: str, mid: int, payloads: str,
              sender: str, receiver: str) -> None:
    """The sender's ``generating`` line and the receiver's ``parsed`` line of one message,
    with the same payload list and size."""
    listed = re.escape(f"[ {payloads} ]") if payloads else re.escape("[ ]")
    head = rf"{exchange} {kind} {mid} {listed}"
    out = has(log, rf"generating {head} to {re.escape(receiver)}:\d+ \((\d+) bytes\)$")
    inn = has(log, rf"parsed {head} from {re.escape(sender)}:\d+ \((\d+) bytes\)$")
    assert out.rsplit("(", 1)[1] == inn.rsplit("(", 1)[1]  # the same size


def test_format_payloads_names_types_never_content():
    hdr = Header.make(37, b"i" * 8, b"r" * 8, message_id=3, initiator=True)
    msg = Message(hdr, [Nonce(b"\x01" * 32), Notify(16388, b"\xaa" * 20), Notify(60000)])
    assert format_payloads(msg) == "Ni N(NAT_DETECTION_SOURCE_IP) N(60000)"
    msg.encrypted = True
    assert format_payloads(msg) == "SK{Ni N(NAT_DETECTION_SOURCE_IP) N(60000)}"
    resp = Header.make(37, b"i" * 8, b"r" * 8, message_id=3, initiator=True, response=True)
    assert format_payloads(Message(resp, [Nonce(b"x" * 16)], True)) == "SK{Nr}"
    assert format_payloads(Message(resp, [], True)) == "SK{}"


def _run_everything(caplog: pytest.LogCaptureFixture, auth: str = "psk"
                    ) -> tuple[SaPair, list[ChildUp], list[IkeSa]]:
    """IKE_SA_INIT, IKE_AUTH (its first response lost: a retransmission), a child rekey, an
    IKE SA rekey, a liveness check each way and a Delete, all at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    a_cfg, b_cfg = configs(auth)
    w = SaPair(a_cfg, b_cfg)
    lost = []

    def lose_first_auth_response(who: str, data: bytes) -> bool:
        if who == "b" and data[18] == 35 and not lost:  # exchange type IKE_AUTH
            lost.append(data)
            return True
        return False

    w.a.start(0.0)
    w.pump(0.0, drop=lose_first_auth_response)
    w.a.handle_timer(w.a.get_timer())  # retransmits IKE_AUTH
    w.pump(0.5)
    assert w.a.established and w.b is not None and w.b.established and lost
    sas = [w.a, w.b]
    assert w.a.rekey_child(w.a.children[0].spi_in, 1.0)
    w.pump(1.0)
    assert w.a.rekey_ike(2.0)
    w.pump(2.0)
    (ra,) = [e for e in w.events_a if isinstance(e, IkeRekeyed)]
    (rb,) = [e for e in w.events_b if isinstance(e, IkeRekeyed)]
    w.a, w.b = ra.new, rb.new
    sas += [w.a, w.b]
    w.wire.advance(10.5)  # DPD: 10 s with nothing received, both ways
    w.a.delete(13.0)
    w.pump(13.0)
    assert w.a.state is State.DEAD and w.b.state is State.DEAD
    ups = [e for e in w.events_a + w.events_b if isinstance(e, ChildUp)]
    return w, ups, sas


def test_every_exchange_is_logged_both_ways_with_its_payloads(caplog):
    _run_everything(caplog)
    log = lines(caplog)
    natd = "N(NAT_DETECTION_SOURCE_IP) N(NAT_DETECTION_DESTINATION_IP)"
    both_ways(log, "IKE_SA_INIT", "request", 0, f"SA KE Ni {natd} N(SIGNATURE_HASH_ALGORITHMS)",
              A, B)
    both_ways(log, "IKE_SA_INIT", "response", 0,
              f"SA KE Nr {natd} N(SIGNATURE_HASH_ALGORITHMS)", B, A)
    both_ways(log, "IKE_AUTH", "request", 1, "SK{IDi N(INITIAL_CONTACT) IDr AUTH SA TSi TSr}",
              A, B)
    both_ways(log, "IKE_AUTH", "response", 1, "SK{IDr AUTH SA TSi TSr}", B, A)
    has(log, r"retransmitting IKE_AUTH request 1 \(try 2 of 6\) to 198\.18\.0\.2:4500 "
             r"\(\d+ bytes\)")
    has(log, r"request 1 is a retransmission: answered again from the cache")
    # the child rekey, and the Delete of the old child SA
    has(log, r"rekey of child SA 0x[0-9a-f]{8} started")
    both_ways(log, "CREATE_CHILD_SA", "request", 2, "SK{N(REKEY_SA) SA Ni TSi TSr}", A, B)
    both_ways(log, "CREATE_CHILD_SA", "response", 2, "SK{SA Nr TSi TSr}", B, A)
    both_ways(log, "INFORMATIONAL", "request", 3, "SK{D(ESP)}", A, B)
    both_ways(log, "INFORMATIONAL", "response", 3, "SK{D(ESP)}", B, A)
    has(log, r"Delete of child SA 0x[0-9a-f]{8} \(outbound\) received")
    # the IKE SA rekey, and the Delete of the old IKE SA
    has(log, r"IKE SA rekey started: the new IKE SA is to be \[[0-9a-f]{16}\]")
    has(log, r"IKE SA rekeyed by the peer: the new IKE SA is \[[0-9a-f]{16}\]")
    both_ways(log, "CREATE_CHILD_SA", "request", 4, "SK{SA Ni KE}", A, B)
    both_ways(log, "CREATE_CHILD_SA", "response", 4, "SK{SA Nr KE}", B, A)
    both_ways(log, "INFORMATIONAL", "request", 5, "SK{D(IKE)}", A, B)
    both_ways(log, "INFORMATIONAL", "response", 5, "SK{}", B, A)
    # DPD on the new IKE SA, each way (its message IDs start at 0), then its Delete
    has(log, r"liveness check \(DPD\): nothing received for 10\.\d s")
    has(log, r"liveness check answered")
    both_ways(log, "INFORMATIONAL", "request", 0, "SK{}", A, B)
    both_ways(log, "INFORMATIONAL", "request", 0, "SK{}", B, A)
    both_ways(log, "INFORMATIONAL", "request", 1, "SK{D(IKE)}", A, B)
    has(log, r"sending a Delete of the IKE SA")
    has(log, r"Delete of the IKE SA received")
    has(log, r"Delete of the IKE SA answered")
    # NAT detection, the move to 4500, the responder learning the port, deadlines
    has(log, r"NAT detection: this side behind a NAT \(we are 198\.19\.1\.2:500, the peer "
             r"is seen at 198\.18\.0\.2:500\)")
    has(log, r"NAT detection: the peer behind a NAT")
    has(log, r"moving to the NAT-T port \(NAT detected\): 198\.18\.0\.2:500 -> "
             r"198\.18\.0\.2:4500")
    has(log, r"IKE SA moves from 198\.18\.0\.1:500 to 198\.18\.0\.1:4500: an authenticated")
    has(log, r"next deadline in 0\.5 s: retransmission 2 of the IKE_AUTH request")
    has(log, r"next deadline in 10\.0 s: liveness check \(DPD\)")
    # every line is the core's, at DEBUG, and names its peer and IKE SA
    ike = [r for r in caplog.records if r.name == "nattunnel.ike"]
    assert ike and all(r.levelno == logging.DEBUG for r in ike)
    assert all(re.match(r"peer (a|b|\?) \[[0-9a-f]{16}\]: ", r.getMessage()) for r in ike)


def test_rekey_collisions_and_child_deadlines_are_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    a_cfg, b_cfg = configs()
    a_cfg.child_rekey_time = 100.0
    a_cfg.rekey_jitter = 0.0
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    (ca,), (cb,) = w.a.children, w.b.children
    assert w.a.rekey_child(ca.spi_in, 1.0) and w.b.rekey_child(cb.spi_in, 1.0)
    w.pump(1.0)
    log = lines(caplog)
    wins = has(log, r"rekey collision on child SA .*: our new SA 0x[0-9a-f]{8} wins")
    loses = has(log, r"rekey collision on child SA .*: the peer's new SA 0x[0-9a-f]{8} wins")
    assert wins.split(":")[0] != loses.split(":")[0]  # one each side
    # simultaneous IKE SA rekeys: the nonces decide, logged on both sides
    assert w.a.rekey_ike(2.0) and w.b.rekey_ike(2.0)
    w.pump(2.0)
    log = lines(caplog)
    has(log, r"both sides rekey this IKE SA \(section 2\.8\.2\)")
    has(log, r"IKE SA rekey collision \(section 2\.8\.2\): our new IKE SA \[[0-9a-f]{16}\] "
             r"wins")
    has(log, r"IKE SA rekey collision \(section 2\.8\.2\): the peer's new IKE SA")


def test_child_rekey_by_time_and_temporary_failure_are_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    a_cfg, b_cfg = configs()
    a_cfg.child_rekey_time = 100.0
    a_cfg.rekey_jitter = 0.01
    a_cfg.dpd_interval = b_cfg.dpd_interval = 0
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    due = w.a.get_timer()
    assert due is not None and 99.0 <= due <= 100.0
    has(lines(caplog), r"next deadline in (99\.\d|100\.0) s: rekey of child SA 0x[0-9a-f]{8}$")
    # B is deleting the child when A's rekey comes: TEMPORARY_FAILURE (section 2.25.1)
    (cb,) = w.b.children
    w.b._delete_children([cb], 50.0)
    w.b.children.clear()
    held = w.b.datagrams_to_send()
    w.a.handle_timer(due)
    w.pump(due)
    log = lines(caplog)
    has(log, r"rekey of child SA 0x[0-9a-f]{8} started: time \(its soft lifetime, "
             r"rekey_time 100 s less jitter\)")
    has(log, r"answering CREATE_CHILD_SA request 2 with TEMPORARY_FAILURE: child SA being "
             r"deleted")
    both_ways(log, "CREATE_CHILD_SA", "response", 2, "SK{N(TEMPORARY_FAILURE)}", B, A)
    has(log, r"rekey of child SA 0x[0-9a-f]{8} refused with TEMPORARY_FAILURE: trying again "
             r"in \d+\.\d s")
    w.release("b", held)
    w.pump(due)


def test_ike_sa_rekey_refused_with_temporary_failure_and_retried(caplog):
    """Section 2.25.2: B is rekeying a child SA when A's IKE SA rekey comes."""
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    a_cfg, b_cfg = configs()
    a_cfg.dpd_interval = b_cfg.dpd_interval = 0
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    assert w.b is not None and w.b.rekey_child(w.b.children[0].spi_in, 1.0)
    held = w.b.datagrams_to_send()
    assert w.a.rekey_ike(1.0)
    w.pump(1.0)
    log = lines(caplog)
    has(log, r"answering CREATE_CHILD_SA request 2 with TEMPORARY_FAILURE: another exchange "
             r"is under way")
    has(log, r"IKE SA rekey refused with TEMPORARY_FAILURE: trying again in \d+\.\d s")
    w.release("b", held)
    w.pump(1.0)
    w.wire.advance(11.0)
    log = lines(caplog)
    has(log, r"next deadline in \d+\.\d s: IKE SA rekey$")
    has(log, r"IKE SA rekey due: a retry after TEMPORARY_FAILURE")
    assert any(isinstance(e, IkeRekeyed) for e in w.events_a)


def test_a_proposal_refusal_names_our_proposals(caplog):
    from nattunnel.esp.suite import SUITES
    from nattunnel.ike.proposals import EspProposal

    caplog.set_level(logging.DEBUG, logger="nattunnel")
    a_cfg, b_cfg = configs()
    a_cfg.esp_proposals = (EspProposal(SUITES["aes128gcm16"]),)
    b_cfg.esp_proposals = (EspProposal(SUITES["chacha20poly1305"]),
                           EspProposal(SUITES["aes256gcm16"], esn=True))
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    has(lines(caplog), r"^peer a \[[0-9a-f]{16}\]: refusing the child SA with "
                       r"NO_PROPOSAL_CHOSEN: no acceptable ESP proposal \(ours: "
                       r"chacha20poly1305 aes256gcm16-esn\)$")


def test_the_refused_child_sa_and_its_retry_are_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    a_cfg, b_cfg = configs()
    a_cfg.dpd_interval = b_cfg.dpd_interval = 0
    b_remote = b_cfg.remote_ts
    b_cfg.remote_ts = ()
    w = SaPair(a_cfg, b_cfg)
    w.a.start(0.0)
    w.pump()
    b_cfg.remote_ts = b_remote
    w.wire.advance(30.0)
    log = lines(caplog)
    both_ways(log, "IKE_AUTH", "response", 1, "SK{IDr AUTH N(TS_UNACCEPTABLE)}", B, A)
    # the responder says why: what was offered, what it allows
    has(log, r"^peer a \[[0-9a-f]{16}\]: refusing the child SA with TS_UNACCEPTABLE: the peer "
             r"offers TSi 198\.18\.100\.1/32, TSr 198\.18\.100\.2/32; we allow remote none, "
             r"local 198\.18\.100\.2/32$")
    has(log, r"child SA b refused: TS_UNACCEPTABLE in the IKE_AUTH response; asking again "
             r"in 30 s")
    has(log, r"next deadline in 30\.0 s: asking for child SA b \(refused, or not asked for "
             r"yet\)")
    has(log, r"asking for child SA b \(CREATE_CHILD_SA\): local 198\.18\.100\.1/32, remote "
             r"198\.18\.100\.2/32")
    both_ways(log, "CREATE_CHILD_SA", "request", 2, "SK{SA Ni TSi TSr}", A, B)
    both_ways(log, "CREATE_CHILD_SA", "response", 2, "SK{SA Nr TSi TSr}", B, A)
    assert len(w.a.children) == 1


@pytest.mark.parametrize("auth", ["psk", "pubkey"])
def test_no_key_in_any_record(caplog, auth):
    """The PSK, the private keys, every IKE SA's SK_* keys, every child SA's keys and every
    nonce: in no record, as bytes or as hex, neither in the message nor in its arguments."""
    w, ups, sas = _run_everything(caplog, auth)
    secrets = [PSK]
    for cfg in (w.node_b.config, sas[0].config):
        assert cfg is not None and cfg.private_key is not None
        secrets.append(cfg.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption()))
    for sa in sas:
        keys = sa._keys
        assert keys is not None
        secrets += [keys.sk_d, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr, sa._ni, sa._nr]
    for ev in ups:
        secrets += [ev.keymat_in, ev.keymat_out]
    assert len(ups) == 4 and all(len(s) >= 16 for s in secrets)
    records = caplog.records
    assert len(records) > 50
    text = "\n".join(r.getMessage() + repr(r.args) for r in records)
    low = text.lower()
    for s in secrets:
        assert s.hex() not in low
        assert s[:12].hex() not in low  # nor a prefix
        assert repr(s) not in text and repr(s[:12])[2:-1] not in text
        assert s.decode("latin-1") not in text
    assert PSK.decode() not in text


def test_no_record_per_data_packet(caplog):
    """A few hundred ESP packets each way through tunnels with IKE-made SAs, at DEBUG on
    every logger: not one record."""
    net = Net()
    net.a.initiate("b", 0.0)
    net.deliver()
    assert up(net)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    buf = memoryview(bytearray(4096))
    got = 0
    for i in range(300):
        for src, dst, tx, rx, seen in ((A_INNER, B_INNER, net.ta, net.tb, ("198.18.0.1", 4500)),
                                       (B_INNER, A_INNER, net.tb, net.ta, ("198.18.0.2", 4500))):
            peer, n = tx.encapsulate_into(ip4(src, dst, 100 + i), buf, 1.0 + i / 1000)
            assert peer is not None and n > 0
            m = rx.receive(buf, 0, n, seen, 1.0 + i / 1000)
            assert m == 100 + i  # the inner packet, decrypted
            got += 1
    assert got == 600
    assert net.tb.peers["a"].totals()[2] == 300 and net.ta.peers["b"].totals()[2] == 300
    # and the GRO path: 64 datagrams of one size in one read
    batch = bytearray()
    for _ in range(64):
        peer, n = net.ta.encapsulate_into(ip4(A_INNER, B_INNER, 200), buf, 2.0)
        batch += buf[:n]
    delivered: list[int] = []
    net.tb.receive_batch(memoryview(batch), len(batch), n, ("198.18.0.1", 4500), 2.0,
                         lambda inner: delivered.append(len(inner)))
    assert delivered == [200] * 64
    assert caplog.records == []


def test_deadlines_through_the_managers(caplog):
    """The managers ask each SA for its deadline after every event: the responder's half-open
    timeout, then each side's next rekey."""
    caplog.set_level(logging.DEBUG, logger="nattunnel")
    net = Net()
    net.ca.ike_rekey_time = 50.0
    net.a.initiate("b", 0.0)
    net.deliver()
    assert up(net)
    log = lines(caplog)
    has(log, r"^peer \? \[[0-9a-f]{16}\]: next deadline in 30\.0 s: half-open timeout$")
    has(log, r"^peer b \[[0-9a-f]{16}\]: next deadline in (4[5-9]|50)\.\d s: IKE SA rekey$")
    has(log, r"^peer a \[[0-9a-f]{16}\]: next deadline in \d+\.\d s: rekey of child SA "
             r"0x[0-9a-f]{8}$")
    net.wire.advance(51.0)
    has(lines(caplog), r"^peer b \[[0-9a-f]{16}\]: IKE SA rekey due: time \(its soft "
                       r"lifetime, ike_rekey_time 50 s less jitter\)$")
    assert up(net)


@pytest.mark.root
def test_nattunnel_up_at_debug_logs_the_exchanges_and_nothing_per_packet(lab, tmp_path):
    """Two ``nattunnel up --log-level debug`` through the lab's real NAT: the IKE exchanges are
    in both logs; a ping flood of 500 packets each way adds no line (DPD is off)."""
    from nattunnel.lab.tunnels import INNER, start_ike_tunnels, wait_ike_up

    t = start_ike_tunnels(lab, tmp_path, host_peer={"dpd_interval": 0},
                          b_peer={"dpd_interval": 0})
    try:
        assert wait_ike_up(t, timeout=10), t.nodes["a"].log() + t.nodes["b"].log()
        for role in ("a", "b"):  # each side's own messages and the other's
            log = t.nodes[role].log().splitlines()
            for verb in ("generating", "parsed"):
                has(log, rf"DEBUG peer . \[[0-9a-f]{{16}}\]: {verb} IKE_AUTH "
                         r"(request|response) 1 \[ SK\{ID")
                has(log, rf"DEBUG peer . \[[0-9a-f]{{16}}\]: {verb} IKE_SA_INIT "
                         r"(request|response) 0 \[ SA KE N")
        before = {r: len(n.log().splitlines()) for r, n in t.nodes.items()}
        for src, dst in (("a", "b"), ("b", "a")):
            r = lab.exec(src, "ping", "-n", "-q", "-c", "500", "-i", "0.002", "-W", "1",
                         INNER[dst], check=False, timeout=30)
            assert " 0% packet loss" in r.stdout, r.stdout
        after = {r: n.log().splitlines() for r, n in t.nodes.items()}
        for role, lines_now in after.items():
            new = lines_now[before[role]:]
            assert not new, f"{role} logged during the ping flood:\n" + "\n".join(new)
        assert PSK.decode() not in t.nodes["a"].log()
    finally:
        for role in list(t.nodes):
            t.stop(role)
