"""Fuzz the IKE manager (``nattunnel.ike.manager.IkeManager.receive_datagram``) with real
crypto.

Two managers (A initiates, B responds; each with its Tunnel) run a real handshake in memory;
the network between them is captured after every delivered message (and after a child
rekey, an IKE SA rekey, a liveness check and a delete were started), with B's cookie
threshold normal or zero (every IKE_SA_INIT must carry a COOKIE). Every input starts from a
copy of one of those snapshots and is a program of up to 12 operations on the messages in
flight and the managers:

- deliver the next message, or one of them byte-mutated (the original kept or lost), dropped,
  duplicated, from another source address or port (a NAT rebinding, IPv6), on port 500 or
  4500 (``natt`` True/False);
- arbitrary octets to A or B from any source, on either port;
- a message of any stage of the recorded handshake, byte-mutated, to either side;
- a flood of IKE_SA_INIT requests (the real one under fresh SPIs, from many sources);
- timers (retransmissions, DPD, rekeys, half-open expiry) on both;
- the API: rekey a child or the IKE SA, delete, initiate again;
- a spoofed clear message with the SPIs of a live SA (they travel in the clear: anyone on
  the path has them), any exchange type and flags, and the message ID the SA expects next
  (or the one of its outstanding request, or any), optionally with clear payloads.

Nothing may escape ``receive_datagram``/``handle_timer`` (and the manager's own catch-all
must not have caught anything: it is patched to re-raise); every SA the manager keeps is alive
and filed under its own SPI; every half-open entry is a live INIT_DONE SA; and what was not sent by
a real peer (mutated, arbitrary or spoofed octets) changes no existing SA (its state, message
IDs, children, outstanding request, address) except one waiting in INIT_SENT for the
(unprotected) IKE_SA_INIT response.

    python3 fuzz/fuzz_ike_manager.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["nattunnel"]):
    import _common
    import _ike_world as world

    from nattunnel.constants import ExchangeType, NotifyType
    from nattunnel.ike.base import State
    from nattunnel.ike.message import Header, Notify, VendorID, encode_message

from _common import STRUCTURED_FLAGS, FuzzFailure, Reader, Skip, known, mutate, snapshot

MAX_OPS = 12
SOURCES = [None, None, ("198.18.0.1", 4500), ("198.18.0.1", 61001), ("198.18.0.2", 4500),
           ("203.0.113.9", 500), ("2001:db8::9", 4500, 0, 0), ("198.18.0.1", 0)]


def fail(sig: str, detail: str) -> None:
    if known("ike_manager." + sig):
        raise Skip(sig)
    raise FuzzFailure("ike_manager." + sig, detail)


class Escaped(Exception):
    """What the manager's last line of defence caught, re-raised by the harness."""


def _reraise(what: str, exc: Exception, now: float) -> None:
    raise Escaped(f"caught by the manager's catch-all ({what}): {exc!r}") from exc


def _arm(net: world.Net) -> None:
    for m in (net.a, net.b):
        m._internal_error = _reraise  # type: ignore[method-assign]


SNAPSHOTS: list[world.Net] = []
RECORDED: list[world.Sent] = []
RECORDED_DATA: set[bytes] = set()


def snapshots() -> list[world.Net]:
    if SNAPSHOTS:
        return SNAPSHOTS
    for auth in ("psk", "pubkey"):
        for threshold in (32, 0):
            net = world.Net(auth, cookie_threshold=threshold)
            net.a.initiate("b", 0.0)
            net.collect()
            SNAPSHOTS.append(snapshot(net))
            for _ in range(12):  # one message at a time, to established
                if not net.queue:
                    break
                net.deliver_one(net.queue.pop(0), 0.0)
                SNAPSHOTS.append(snapshot(net))
            sa_a, sa_b = net.ike_sa("a"), net.ike_sa("b")
            assert sa_a is not None and sa_b is not None, "the handshake did not complete"
            for start in ("rekey child", "rekey IKE", "dpd", "delete", "b rekey child"):
                n = snapshot(net)
                a, b = n.ike_sa("a"), n.ike_sa("b")
                if start == "rekey child":
                    a.rekey_child(a.children[0].spi_in, 1.0)
                    n.a._process(a, 1.0)
                elif start == "b rekey child":
                    b.rekey_child(b.children[0].spi_in, 1.0)
                    n.b._process(b, 1.0)
                elif start == "rekey IKE":
                    a.rekey_ike(1.0)
                    n.a._process(a, 1.0)
                elif start == "dpd":
                    n.a.handle_timer(50.0)
                else:
                    a.delete(1.0)
                    n.a._process(a, 1.0)
                n.collect()
                SNAPSHOTS.append(snapshot(n))
                n.pump(1.0)
                RECORDED.extend(n.log)
            RECORDED.extend(net.log)
    RECORDED_DATA.update(x.data for x in RECORDED)
    for n in SNAPSHOTS:
        n.log = []  # what is recorded is in RECORDED; a snapshot need not copy it each time
    return SNAPSHOTS


FP_FIELDS = ("state", "our next request ID", "peer's next request ID", "children", "remote",
             "natt", "outstanding request")


def _diff(a: tuple, b: tuple) -> str:
    return "; ".join(f"{n} {x} -> {y}" for n, x, y in zip(FP_FIELDS, a, b, strict=True)
                     if x != y)


def check(net: world.Net, what: str) -> None:
    for side in ("a", "b"):
        m = net.manager(side)
        for spi, sa in m.sas.items():
            if sa.state is State.DEAD:
                fail("dead_sa_kept", f"{what}: side {side} keeps a DEAD SA")
            if sa.local_spi != spi:
                fail("sa_filed_wrong", f"{what}: side {side} SA under {spi.hex()} has "
                                       f"{sa.local_spi.hex()}")
        for key, sa in m._half_open_sas.items():
            if sa.state is not State.INIT_DONE or m.sas.get(sa.local_spi) is not sa:
                fail("half_open_stale", f"{what}: side {side} half-open {key} is {sa.state}")
        m.get_timer()
        if m.counters.get("errors", 0):
            fail("internal_error", f"{what}: side {side} counted an internal error")


def fingerprints(net: world.Net) -> dict[int, tuple]:
    out = {}
    for m in (net.a, net.b):
        for sa in m.sas.values():
            req = sa._request
            out[id(sa)] = (sa.state, sa._next_request_id, sa._peer_next_id,
                           [(c.spi_in, c.spi_out) for c in sa.children], sa.remote, sa.natt,
                           None if req is None else (req.message_id, req.kind))
    return out


def live_sas(net: world.Net) -> list:
    return [sa for m in (net.a, net.b) for sa in m.sas.values()]


def spoof(r: Reader, net: world.Net) -> tuple[str, bytes]:
    """A clear message with a live SA's SPIs, as anyone on the path can make it."""
    sas = live_sas(net)
    if not sas:
        return "b", b""
    sa = sas[r.below(len(sas))]
    to = "a" if sa in net.a.sas.values() else "b"
    req = sa._request
    mid = r.pick([sa._peer_next_id, req.message_id if req else 0, 0, r.u32()])
    exchange = r.pick([ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH,
                       ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL, r.u8()])
    payloads = r.pick([[], [], [Notify(NotifyType.COOKIE, b"c" * 8)],
                       [Notify(NotifyType.INVALID_KE_PAYLOAD, b"\x00\x13")],
                       [VendorID(r.blob(16))]])
    hdr = Header.make(exchange, sa.spi_i, sa.spi_r, message_id=mid,
                      initiator=r.bool(), response=r.bool())
    return to, encode_message(hdr, payloads)


def run(data: bytes) -> None:
    r = Reader(data)
    snaps = snapshots()
    base = snaps[r.below(len(snaps))]
    net = snapshot(base, (base.ca, base.cb))
    _arm(net)
    now = 1.0
    for step in range(MAX_OPS):
        if r.left == 0:
            break
        op = r.u8() % 13
        what = f"step {step} op {op}"
        q = net.queue
        before = fingerprints(net)
        genuine = {x.data for x in net.queue} | RECORDED_DATA
        forged: bytes | None = None  # octets no real peer sent, if this step delivers some
        if op <= 1 and q:
            net.deliver_one(q.pop(0), now)
        elif op in (2, 3) and q:
            i = r.below(len(q))
            s = q[i] if r.bool() else q.pop(i)
            src = r.pick(SOURCES) or s.src
            natt = s.natt if r.u8() & 3 else not s.natt
            forged = mutate(r, s.data, 4)
            net.receive(s.to, forged, src, natt, now)
        elif op == 4 and q:
            q.pop(r.below(len(q)))
        elif op == 5 and q:
            s = q[r.below(len(q))]
            net.deliver_one(s, now)  # a duplicate (the original stays queued)
        elif op == 6:
            side = r.pick(("a", "b"))
            forged = r.blob(255)
            net.receive(side, forged, r.pick(SOURCES) or ("192.0.2.7", 4500), r.bool(), now)
        elif op == 7:
            s = r.pick(RECORDED)
            to = s.to if r.u8() & 3 else ("a" if s.to == "b" else "b")
            forged = mutate(r, s.data, 3)
            net.receive(to, forged, r.pick(SOURCES) or s.src, r.bool(), now)
        elif op == 8:
            init = next(x for x in RECORDED if x.to == "b")
            for k in range(1 + r.u8() % 8):
                spi = bytes([k + 1]) + r.take(7).ljust(7, b"\x01")
                src = (f"198.51.100.{r.u8()}", r.pick((500, 4500, 1024 + k)))
                net.receive("b", spi + init.data[8:], src, src[1] == 4500, now)
        elif op == 9:
            now += r.pick((0.1, 0.6, 2.0, 10.0, 31.0, 61.0, 5000.0))
            net.a.handle_timer(now)
            net.b.handle_timer(now)
            net.collect()
        elif op == 10:
            m = net.manager(r.pick(("a", "b")))
            sas = [sa for sa in m.sas.values() if sa.state is State.ESTABLISHED]
            if sas:
                sa = sas[r.below(len(sas))]
                k = r.u8() % 4
                if k == 0 and sa.children:
                    sa.rekey_child(sa.children[r.below(len(sa.children))].spi_in, now)
                elif k == 1:
                    sa.rekey_ike(now)
                elif k == 2:
                    sa.delete(now)
                m._process(sa, now)
            elif m is net.a and r.bool():
                net.a.initiate("b", now)
            net.collect()
        elif op == 12:
            to, forged = spoof(r, net)
            if forged:
                net.receive(to, forged, r.pick(SOURCES) or ("198.18.0.1", 4500), r.bool(),
                            now)
        else:
            net.pump(now, rounds=1)
        check(net, what)
        if forged is not None and forged not in genuine:
            after = fingerprints(net)
            for key, fp in before.items():
                if key in after and after[key] != fp and fp[0] is not State.INIT_SENT:
                    # only the address (and port 4500) changed: the SA was moved
                    moved = [i for i, (x, y) in enumerate(zip(fp, after[key], strict=True))
                             if x != y] in ([4], [4, 5], [5])
                    fail("unauthenticated_move" if moved else "unauthenticated_change",
                         f"{what}: octets no peer sent changed an SA ({fp[0]}: "
                         f"{_diff(fp, after[key])}): {forged.hex()}")


def test_one_input(data: bytes) -> None:
    try:
        run(data)
    except Skip:
        return


def seed_programs() -> list[bytes]:
    out = []
    for i in range(len(snapshots())):
        out.append(bytes([i]) + bytes(12))  # deliver everything in order
        out.append(bytes([i, 2, 0, 1, 1, 0, 0, 0, 1]) + bytes(8))  # a mutated delivery
        out.append(bytes([i, 9, 4, 0, 9, 6, 1, 0]) + bytes(6))  # timers
        out.append(bytes([i, 8, 5, 0, 0, 0, 1]))  # a flood, then deliveries
    return out


if __name__ == "__main__":
    snapshots()
    _common.main("ike_manager", test_one_input, seed_programs, sys.argv, STRUCTURED_FLAGS)
