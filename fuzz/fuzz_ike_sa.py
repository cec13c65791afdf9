"""Fuzz the IKE SA state machine (nattunnel/ike_sa.py ``IkeSa``) in every role and state.

Byte mutation of encrypted messages cannot get past the ICV, so this harness is structure-
aware. At start, two IkeSa cores run a real handshake in memory (PSK, Ed25519, and PSK with
PFS child SAs and forced UDP encapsulation) and the SA of each side is kept as a snapshot
in each state: initiator INIT_SENT, AUTH_SENT, ESTABLISHED; responder before IKE_SA_INIT,
INIT_DONE, ESTABLISHED. Every input starts from a copy of one of them and is a program
(``_common.Reader``) of up to 8 operations:

- a message built from payloads the input chooses (SA with IKE or ESP proposals, KE with a
  valid, degenerate, off-curve or wrong-length public value, Nonce, Notify of every type that
  matters with valid or invalid data, IDi/IDr, AUTH that is *valid* (computed from the SA's
  real SK_p and the signed octets, PSK or Ed25519) or not, TSi/TSr, Delete naming real or
  made-up SPIs, Vendor ID, unknown payloads), often from a template of the exchange the state
  expects, each element kept, dropped, or replaced; with a header (exchange type, flags,
  message ID: the expected one, our outstanding request's, the cached one, or any) and
  sealed with the SA's real peer key (authenticated garbage), a wrong key, or in the clear;
- sealed raw octets: the input's bytes as the decrypted payload chain;
- a recorded handshake message, byte-mutated;
- a timer tick (retransmission, DPD, rekeys, half-open and hard-lifetime expiry);
- an API call (rekey_child, rekey_ike, delete).

Nothing may raise out of ``receive``/``handle_timer``/the API calls, and after each step:
message IDs never go backwards (ours, and the peer's we expect; the IKE_SA_INIT restart
after COOKIE or INVALID_KE_PAYLOAD excepted); every child and every ChildUp has both SPIs,
valid (256..2**32-1), and keying material of its suite's length; children only in
ESTABLISHED, none in DEAD, no outstanding request in DEAD; ESTABLISHED has keys and a
config; state changes only along INIT_SENT -> AUTH_SENT -> ESTABLISHED -> DEAD (responder:
INIT_DONE -> ESTABLISHED); and a message that was not sealed with the SA's real peer key
changes nothing (sends at most the cached response), and ``receive`` returns False for it.

    python3 fuzz/fuzz_ike_sa.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import inspect
import ipaddress
import sys
import traceback

import atheris

with atheris.instrument_imports(include=["nattunnel"]):
    import _common
    import _ike_world as world

    from nattunnel.constants import (
        AuthMethod,
        DhGroup,
        EncrId,
        EsnId,
        ExchangeType,
        IdType,
        NotifyType,
        PayloadType,
        PrfId,
        ProtocolId,
        TransformType,
    )
    from nattunnel.esp.suite import AES_GCM_256, CHACHA20_POLY1305
    from nattunnel.ike import crypto as kc
    from nattunnel.ike.base import State
    from nattunnel.ike.events import ChildUp, IkeDown, IkeRekeyed, IkeUp
    from nattunnel.ike.message import (
        KE,
        SA,
        Auth,
        Delete,
        Header,
        IDi,
        IDr,
        IkeDecodeError,
        Nonce,
        Notify,
        Payload,
        Proposal,
        RawTrafficSelector,
        TrafficSelector,
        Transform,
        TSi,
        TSr,
        UnknownPayload,
        VendorID,
        decode_message,
        encode_message,
        nat_detection_hash,
        peek_header,
    )
    from nattunnel.ike.proposals import EspProposal
    from nattunnel.ike.sa import IkeSa

from _common import STRUCTURED_FLAGS, FuzzFailure, Reader, Skip, known, mutate, snapshot

MAX_OPS = 8
#: IkeSa.receive(raw, now, source, natt) since the hardening of issue 9; receive(raw, now)
#: before (the harness runs against both)
_RX_SOURCE = len(inspect.signature(IkeSa.receive).parameters) >= 4
_KIND_EXCHANGE = {"IKE_SA_INIT": ExchangeType.IKE_SA_INIT, "IKE_AUTH": ExchangeType.IKE_AUTH,
                  "rekey child": ExchangeType.CREATE_CHILD_SA,
                  "rekey IKE": ExchangeType.CREATE_CHILD_SA}


def drain(sa: IkeSa) -> list[object]:
    """Every event the SA has."""
    out = []
    while (ev := sa.next_event()) is not None:
        out.append(ev)
    return out


def rx(sa: IkeSa, raw: bytes, now: float, source: tuple, natt: bool) -> bool:
    if _RX_SOURCE:
        return bool(sa.receive(raw, now, source, natt))
    sa.receive(raw, now)
    return False  # the old API says nothing; no check relies on it


def request_exchange(req: object) -> int:
    ex = getattr(req, "exchange", -1)
    if ex is None or ex < 0:
        return _KIND_EXCHANGE.get(getattr(req, "kind", ""), ExchangeType.INFORMATIONAL)
    return int(ex)
_FIXED_X = kc.KeyExchange(DhGroup.CURVE25519)
_FIXED_P = kc.KeyExchange(DhGroup.ECP_256)
# RFC 7748 section 5 / RFC 8031 section 2.3: a low-order point (the shared value is all zero)
LOW_ORDER_X25519 = bytes(32)
NETS = [world.NET_A, world.NET_B, ipaddress.ip_network("198.18.100.0/24"),
        ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/64"), ipaddress.ip_network("::/0")]


def sig_fail(sig: str, detail: str) -> None:
    """A broken invariant: raise unless that kind is being skipped (then drop the input)."""
    if known("ike_sa." + sig):
        raise Skip(sig)
    raise FuzzFailure("ike_sa." + sig, detail)


# --- the snapshots ------------------------------------------------------------------------------
class World:
    """The SAs of one real handshake, captured in each state, and its messages."""

    def __init__(self, auth: str, pfs: bool = False) -> None:
        self.auth = auth
        self.ca, self.cb = world.configs(auth)
        if pfs:
            # child SAs with a key exchange of their own (PFS, RFC 7296 section 1.3.1), and
            # UDP encapsulation forced from the start (a claimed NAT)
            for cfg in (self.ca, self.cb):
                cfg.esp_proposals = (EspProposal(AES_GCM_256, dh=DhGroup.CURVE25519),
                                     EspProposal(CHACHA20_POLY1305, esn=True,
                                                 dh=DhGroup.ECP_256))
            self.ca.force_encap = True
        self.states: dict[str, IkeSa] = {}
        self.messages: list[bytes] = []
        a = IkeSa(self.ca, initiator=True, local=world.A_ADDR, remote=world.B_ADDR, now=0.0)
        a.start(0.0)
        init_req = self._out(a)[0]
        self.states["i_init_sent"] = snapshot(a, self.share)
        b = IkeSa(None, initiator=False, local=world.B_ADDR, remote=world.A_SEEN, now=0.0,
                  lookup=self.lookup)
        self.states["r_fresh"] = snapshot(b, self.share)
        b.respond_init(decode_message(init_req), init_req, 0.0, self.cb.ike_proposals)
        init_resp = self._out(b)[0]
        self.states["r_init_done"] = snapshot(b, self.share)
        rx(a, init_resp, 0.0, world.B_ADDR, False)
        auth_req = self._out(a)[0]
        self.states["i_auth_sent"] = snapshot(a, self.share)
        rx(b, auth_req, 0.0, (world.A_SEEN[0], 4500), True)
        auth_resp = self._out(b)[0]
        self.states["r_established"] = snapshot(b, self.share)
        rx(a, auth_resp, 0.0, (world.B_ADDR[0], 4500), True)
        self._out(a)
        self.states["i_established"] = snapshot(a, self.share)
        assert a.state is State.ESTABLISHED and b.state is State.ESTABLISHED, (a.state, b.state)
        # one exchange of each kind more, for the recorded messages
        a.rekey_child(a.children[0].spi_in, 1.0)
        for _ in range(3):
            for out in self._out(a):
                rx(b, out, 1.0, (world.A_SEEN[0], 4500), True)
            for out in self._out(b):
                rx(a, out, 1.0, (world.B_ADDR[0], 4500), True)
        a.rekey_ike(2.0)
        for out in self._out(a):
            rx(b, out, 2.0, (world.A_SEEN[0], 4500), True)
        self._out(b)

    @property
    def share(self) -> list[object]:
        return [self.ca, self.cb, self.lookup]

    def lookup(self, idi, idr):  # type: ignore[no-untyped-def]
        return self.cb if idi == self.cb.remote_id else None

    def _out(self, sa: IkeSa) -> list[bytes]:
        data = [o.data for o in sa.datagrams_to_send()]
        drain(sa)
        self.messages += data
        return data


WORLDS: list[World] = []


def worlds() -> list[World]:
    if not WORLDS:
        WORLDS.extend([World("psk"), World("pubkey"), World("psk", pfs=True)])
    return WORLDS


STATE_NAMES = ["i_init_sent", "i_auth_sent", "i_established", "r_fresh", "r_init_done",
               "r_established"]


# --- building messages ---------------------------------------------------------------------------
class Ctx:
    """What the message builders need to know about the SA under test."""

    def __init__(self, w: World, sa: IkeSa) -> None:
        self.w = w
        self.sa = sa

    @property
    def peer_cfg(self):  # type: ignore[no-untyped-def]
        # the config of the side that sends to this SA
        return self.w.cb if self.sa.initiator else self.w.ca

    def peer_key(self) -> kc.AeadSk | None:
        sa = self.sa
        if sa._keys is None or sa._alg is None:
            return None
        return kc.AeadSk(sa._alg, sa._keys.sk_er if sa.initiator else sa._keys.sk_ei)

    def wrong_key(self) -> kc.AeadSk | None:
        sa = self.sa
        if sa._alg is None:
            return None
        return kc.AeadSk(sa._alg, bytes(sa._alg.keymat_len))

    def valid_auth(self, id_body: bytes) -> Auth | None:
        """The AUTH payload the real peer would send with this ID payload body."""
        sa = self.sa
        if sa._prf is None or sa._keys is None:
            return None
        if sa.initiator:
            octets = kc.signed_octets(sa._init_response, sa._ni, sa._prf, sa._keys.sk_pr,
                                      id_body)
            priv = world.private_key("b")
        else:
            octets = kc.signed_octets(sa._init_request, sa._nr, sa._prf, sa._keys.sk_pi,
                                      id_body)
            priv = world.private_key("a")
        if self.w.auth == "psk":
            return Auth(AuthMethod.SHARED_KEY_MIC, kc.psk_auth(sa._prf, world.PSK, octets))
        return Auth(AuthMethod.DIGITAL_SIGNATURE, kc.ed25519_auth(priv, octets))

    def child_spis(self) -> list[int]:
        out = []
        for c in self.sa.children:
            out += [c.spi_in, c.spi_out]
        return out


def spi4(r: Reader, ctx: Ctx) -> bytes:
    k = r.u8() % 8
    spis = ctx.child_spis()
    if k < 3 and spis:
        return spis[r.below(len(spis))].to_bytes(4, "big")
    return r.pick([b"\x00\x00\x00\x00", b"\x00\x00\x00\x01", b"\x00\x00\x00\xff",
                   b"\x00\x00\x01\x00", b"\xff\xff\xff\xff", r.take(4).ljust(4, b"\1"),
                   b"\x12\x34\x56\x78"])


def transforms_ike(r: Reader) -> list[Transform]:
    kind = r.u8() % 4
    if kind == 0:
        return [Transform.make(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                Transform.make(TransformType.PRF, PrfId.HMAC_SHA2_256),
                Transform.make(TransformType.DH, DhGroup.CURVE25519)]
    if kind == 1:
        return [Transform.make(TransformType.ENCR, EncrId.AES_GCM_16, 128),
                Transform.make(TransformType.PRF, PrfId.HMAC_SHA2_256),
                Transform.make(TransformType.DH, DhGroup.ECP_256)]
    out = []
    for _ in range(r.u8() % 6):
        ttype = r.pick([TransformType.ENCR, TransformType.PRF, TransformType.INTEG,
                        TransformType.DH, TransformType.ESN, r.u8()])
        tid = r.pick([EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305, PrfId.HMAC_SHA2_256,
                      PrfId.HMAC_SHA2_512, DhGroup.CURVE25519, DhGroup.ECP_256, 0, 1, 14,
                      r.u16()])
        out.append(Transform.make(ttype, tid, r.pick([None, 128, 256, 192, 0, r.u16()])))
    return out


def transforms_esp(r: Reader) -> list[Transform]:
    encr = r.pick([(EncrId.AES_GCM_16, 256), (EncrId.AES_GCM_16, 128),
                   (EncrId.CHACHA20_POLY1305, None), (EncrId.AES_GCM_16, 192),
                   (EncrId.AES_GCM_16, None), (r.u16(), r.u16())])
    out = [Transform.make(TransformType.ENCR, *encr)]
    for _ in range(r.u8() % 4):
        kind = r.u8() % 4
        if kind == 0:
            out.append(Transform.make(TransformType.ESN, r.pick([EsnId.NO_ESN, EsnId.ESN, 7])))
        elif kind == 1:
            out.append(Transform.make(TransformType.DH, r.pick(
                [DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.NONE, 14, r.u16()])))
        elif kind == 2:
            out.append(Transform.make(TransformType.INTEG, r.u8()))
        else:
            out.append(Transform.make(r.u8(), r.u16()))
    return out


def sa_payload(r: Reader, ctx: Ctx, ike: bool | None = None) -> SA:
    props = []
    for i in range(1 + r.u8() % 3):
        kind = ike if ike is not None and i == 0 else r.bool()
        number = r.pick([i + 1, 1, 0, r.u8()])
        if kind:
            spi = r.pick([b"", r.take(8).ljust(8, b"\x07"), bytes(8), b"", b"\x01" * 8])
            props.append(Proposal(number, ProtocolId.IKE, transforms_ike(r), spi))
        else:
            proto = r.pick([ProtocolId.ESP, ProtocolId.ESP, ProtocolId.AH, r.u8()])
            spi = spi4(r, ctx) if proto in (ProtocolId.ESP, ProtocolId.AH) else r.blob(8)
            props.append(Proposal(number, proto, transforms_esp(r), spi))
    return SA(props)


def ke_payload(r: Reader) -> KE:
    group = r.pick([DhGroup.CURVE25519, DhGroup.CURVE25519, DhGroup.ECP_256, 14, 0, r.u16()])
    data = r.pick([_FIXED_X.public, _FIXED_P.public, LOW_ORDER_X25519, bytes(64),
                   r.take(32).ljust(32, b"\x09"), r.take(64).ljust(64, b"\x05"), b"",
                   r.blob(80)])
    return KE(group, data)


def nonce_payload(r: Reader) -> Nonce:
    return Nonce(r.pick([bytes(range(32)), bytes(16), bytes(256), bytes(15), bytes(257),
                         r.take(16).ljust(16, b"n")]))


def notify_payload(r: Reader, ctx: Ctx) -> Notify:
    sa = ctx.sa
    t = r.pick([NotifyType.REKEY_SA, NotifyType.INITIAL_CONTACT, NotifyType.COOKIE,
                NotifyType.INVALID_KE_PAYLOAD, NotifyType.NAT_DETECTION_SOURCE_IP,
                NotifyType.NAT_DETECTION_DESTINATION_IP, NotifyType.SIGNATURE_HASH_ALGORITHMS,
                NotifyType.AUTHENTICATION_FAILED, NotifyType.NO_PROPOSAL_CHOSEN,
                NotifyType.TS_UNACCEPTABLE, NotifyType.INVALID_SYNTAX,
                NotifyType.CHILD_SA_NOT_FOUND, NotifyType.TEMPORARY_FAILURE,
                NotifyType.NO_ADDITIONAL_SAS, NotifyType.USE_TRANSPORT_MODE, r.u16()])
    if t == NotifyType.REKEY_SA:
        return Notify(t, b"", r.pick([ProtocolId.ESP, ProtocolId.IKE, 0]), spi4(r, ctx))
    if t == NotifyType.INVALID_KE_PAYLOAD:
        return Notify(t, r.pick([b"\x00\x13", b"\x00\x1f", b"\x00\x0e", b"\x00", r.blob(4)]))
    if t in (NotifyType.NAT_DETECTION_SOURCE_IP, NotifyType.NAT_DETECTION_DESTINATION_IP):
        addr = r.pick([sa.remote, sa.local, world.A_SEEN, world.B_ADDR])
        good = nat_detection_hash(sa.spi_i, sa.spi_r, ipaddress.ip_address(addr[0]), addr[1])
        return Notify(t, r.pick([good, bytes(20), r.blob(24)]))
    if t == NotifyType.SIGNATURE_HASH_ALGORITHMS:
        return Notify(t, r.pick([b"\x00\x05", b"\x00\x02\x00\x05", b"\x00", r.blob(8)]))
    if t == NotifyType.COOKIE:
        return Notify(t, r.pick([b"\x00" + bytes(16), r.blob(64), b""]))
    return Notify(t, r.blob(16), r.pick([0, 0, ProtocolId.ESP]), r.pick([b"", b"", spi4(r,
                                                                                       ctx)]))


def id_payload(r: Reader, ctx: Ctx, cls: type[IDi] | type[IDr]) -> IDi | IDr:
    kind = r.u8() % 4
    if kind < 2:
        cfg = ctx.peer_cfg
        ident = cfg.local_id if cls is (IDr if ctx.sa.initiator else IDi) else cfg.remote_id
        return cls(ident.id_type, ident.data)
    if kind == 2:
        return cls(r.pick([IdType.FQDN, IdType.KEY_ID, IdType.IPV4_ADDR, IdType.IPV6_ADDR]),
                   r.pick([b"hosta", b"hostb", bytes(4), bytes(16), b""]))
    return cls(r.u8(), r.blob(40))


def ts_payload(r: Reader, cls: type[TSi] | type[TSr]) -> TSi | TSr:
    sels: list[TrafficSelector | RawTrafficSelector] = []
    for _ in range(r.u8() % 4):
        kind = r.u8() % 6
        if kind < 3:
            sels.append(TrafficSelector.from_network(r.pick(NETS)))
        elif kind == 3:
            net = r.pick(NETS)
            sels.append(TrafficSelector(net.broadcast_address, net.network_address))
        elif kind == 4:
            sels.append(TrafficSelector.from_network(r.pick(NETS), r.u8(),
                                                     (r.u16(), r.u16())))
        else:
            sels.append(RawTrafficSelector(r.u8(), r.u8(), r.blob(20)))
    return cls(sels)


def delete_payload(r: Reader, ctx: Ctx) -> Delete:
    k = r.u8() % 4
    if k == 0:
        return Delete(ProtocolId.IKE)
    return Delete(r.pick([ProtocolId.ESP, ProtocolId.ESP, ProtocolId.AH]),
                  [spi4(r, ctx) for _ in range(r.u8() % 4)])


def any_payload(r: Reader, ctx: Ctx) -> Payload:
    k = r.u8() % 16
    if k == 0:
        return sa_payload(r, ctx)
    if k == 1:
        return ke_payload(r)
    if k == 2:
        return nonce_payload(r)
    if k in (3, 4, 5):
        return notify_payload(r, ctx)
    if k == 6:
        return id_payload(r, ctx, IDi)
    if k == 7:
        return id_payload(r, ctx, IDr)
    if k == 8:
        return Auth(r.pick([AuthMethod.SHARED_KEY_MIC, AuthMethod.DIGITAL_SIGNATURE, 1, r.u8()]),
                    r.blob(80))
    if k == 9:
        return _VALID_AUTH
    if k == 10:
        return ts_payload(r, TSi)
    if k == 11:
        return ts_payload(r, TSr)
    if k == 12:
        return delete_payload(r, ctx)
    if k == 13:
        return VendorID(r.blob(20))
    if k == 14:
        return UnknownPayload(r.pick([49, 100, 200, 255]), r.blob(20), critical=r.bool())
    return Notify(NotifyType.INITIAL_CONTACT)


#: placeholder: replaced by the valid AUTH for the message's ID payload once it is built
_VALID_AUTH = Auth(AuthMethod.SHARED_KEY_MIC, b"<valid>")


def template(r: Reader, ctx: Ctx, exchange: int, response: bool) -> list[Payload]:
    """The payloads the real peer would send for this exchange (fields from the input)."""
    if exchange == ExchangeType.IKE_SA_INIT:
        if response:
            return [sa_payload(r, ctx, ike=True), ke_payload(r), nonce_payload(r),
                    notify_payload(r, ctx), notify_payload(r, ctx),
                    Notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, b"\x00\x05")]
        return [sa_payload(r, ctx, ike=True), ke_payload(r), nonce_payload(r),
                notify_payload(r, ctx), notify_payload(r, ctx)]
    if exchange == ExchangeType.IKE_AUTH:
        if response:
            return [id_payload(r, ctx, IDr), _VALID_AUTH, sa_payload(r, ctx, ike=False),
                    ts_payload(r, TSi), ts_payload(r, TSr)]
        return [id_payload(r, ctx, IDi), Notify(NotifyType.INITIAL_CONTACT),
                id_payload(r, ctx, IDr), _VALID_AUTH, sa_payload(r, ctx, ike=False),
                ts_payload(r, TSi), ts_payload(r, TSr)]
    if exchange == ExchangeType.CREATE_CHILD_SA:
        if r.u8() % 3 == 0:  # an IKE SA rekey
            return [sa_payload(r, ctx, ike=True), nonce_payload(r), ke_payload(r)]
        out: list[Payload] = []
        if not response:
            out.append(Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, spi4(r, ctx)))
        out += [sa_payload(r, ctx, ike=False), nonce_payload(r)]
        if r.bool():
            out.append(ke_payload(r))
        return [*out, ts_payload(r, TSi), ts_payload(r, TSr)]
    if exchange == ExchangeType.INFORMATIONAL:
        return [delete_payload(r, ctx) for _ in range(r.u8() % 3)]
    return []


def payloads(r: Reader, ctx: Ctx, exchange: int, response: bool) -> list[Payload]:
    out = template(r, ctx, exchange, response) if r.u8() & 3 else []
    edited: list[Payload] = []
    for p in out:
        k = r.u8() % 8
        if k == 6:
            continue  # dropped
        edited.append(any_payload(r, ctx) if k == 7 else p)
    for _ in range(r.u8() % 3 if r.u8() & 1 else 0):
        edited.insert(r.below(len(edited) + 1), any_payload(r, ctx))
    # the valid AUTH: over the ID payload of this message that the SA will check
    id_cls = IDr if ctx.sa.initiator else IDi
    ident = next((p for p in edited if isinstance(p, id_cls)), None)
    body = ident.encode_body() if ident is not None else b""
    real = ctx.valid_auth(body)
    return [(real or Auth(AuthMethod.SHARED_KEY_MIC, bytes(32))) if p is _VALID_AUTH else p
            for p in edited]


EXCHANGES = [ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH, ExchangeType.CREATE_CHILD_SA,
             ExchangeType.INFORMATIONAL]


def message(r: Reader, ctx: Ctx) -> tuple[bytes, bool]:
    """(octets, whether they are sealed with the SA's real peer key)."""
    sa = ctx.sa
    intent = r.u8() % 4
    req = sa._request
    if intent == 0 and req is not None:
        exchange, response, mid = request_exchange(req), True, req.message_id
    elif intent in (0, 1):
        exchange = r.pick(EXCHANGES)
        response, mid = False, sa._peer_next_id
    else:
        exchange = r.pick([*EXCHANGES, r.u8()])
        response = r.bool()
        mid = r.pick([sa._peer_next_id, sa._next_request_id, 0, 1,
                       sa._peer_next_id - 1 if sa._peer_next_id else 0, r.u32()])
    flags_kind = r.u8() % 8
    initiator = not sa.initiator if flags_kind else sa.initiator
    spi_i, spi_r = sa.spi_i, sa.spi_r
    if sa.state is State.INIT_SENT and exchange == ExchangeType.IKE_SA_INIT:
        spi_r = r.pick([bytes(range(11, 19)), bytes(8), r.take(8).ljust(8, b"r")])
    if flags_kind == 7:
        spi_i, spi_r = r.take(8).ljust(8, b"i"), r.take(8).ljust(8, b"r")
    header = Header.make(exchange, spi_i, spi_r, message_id=mid & 0xFFFFFFFF,
                         initiator=initiator, response=response)
    body = payloads(r, ctx, exchange, response)
    seal = r.u8() % 8
    key = ctx.peer_key()
    try:
        if key is not None and seal < 6:
            return encode_message(header, body, sk=key), True
        if seal == 6 and ctx.wrong_key() is not None:
            return encode_message(header, body, sk=ctx.wrong_key()), False
        return encode_message(header, body), False
    except ValueError:
        return b"", False  # not encodable (e.g. an empty SA payload): nothing to send


def sealed_raw(r: Reader, ctx: Ctx) -> tuple[bytes, bool]:
    """The input's octets as the decrypted content of an SK payload (authentic garbage)."""
    sa = ctx.sa
    key = ctx.peer_key()
    if key is None:
        return b"", False
    first = r.pick([PayloadType.SA, PayloadType.NOTIFY, PayloadType.DELETE, PayloadType.IDI,
                    PayloadType.TSI, PayloadType.SK, 0, r.u8()])
    exchange = r.pick(EXCHANGES)
    response = r.bool() and sa._request is not None
    mid = sa._request.message_id if response and sa._request else sa._peer_next_id
    header = Header.make(exchange, sa.spi_i, sa.spi_r, message_id=mid,
                         initiator=not sa.initiator, response=response)
    inner = r.blob(200)
    hdr_len = 28 + 4
    pt = inner + bytes([0])  # pad length 0
    aad_len = hdr_len + 8 + len(pt) + 16
    aad = header.encode(PayloadType.SK, aad_len) + bytes([first, 0]) + (
        aad_len - 28).to_bytes(2, "big")
    return aad + key.seal(aad, pt), True


# --- invariants ----------------------------------------------------------------------------------
ALLOWED = {
    State.INIT_SENT: {State.INIT_SENT, State.AUTH_SENT, State.DEAD},
    State.AUTH_SENT: {State.AUTH_SENT, State.ESTABLISHED, State.DEAD},
    State.INIT_DONE: {State.INIT_DONE, State.ESTABLISHED, State.DEAD},
    State.ESTABLISHED: {State.ESTABLISHED, State.DEAD},
    State.DEAD: {State.DEAD},
}


def valid_spi(x: int) -> bool:
    return 256 <= x <= 0xFFFFFFFF


class Tracker:
    """The invariants across the steps of one input, for one SA."""

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa
        self.state = sa.state
        self.next_request_id = sa._next_request_id
        self.peer_next_id = sa._peer_next_id
        self.up = 0
        self.down = 0
        #: the last request we saw this SA send: (message ID, octets)
        req = sa._request
        self.last_request: tuple[int, bytes] | None = (
            None if req is None else (req.message_id, req.data))

    FIELDS = ("state", "our next request ID", "peer's next request ID", "remote", "natt",
              "children", "cached response", "outstanding request", "keys", "SPIr",
              "last_rx")

    def fingerprint(self) -> tuple:
        sa = self.sa
        req = sa._request
        return (sa.state, sa._next_request_id, sa._peer_next_id, sa.remote, sa.natt,
                [(c.spi_in, c.spi_out) for c in sa.children], sa._last_response,
                None if req is None else (req.message_id, req.kind, req.tries),
                id(sa._keys), sa.spi_r, sa.last_rx)

    @classmethod
    def diff(cls, before: tuple, after: tuple) -> str:
        """What changed, without the octets (no key material in a crash report)."""
        out = []
        for name, b, a in zip(cls.FIELDS, before, after, strict=True):
            if b != a:
                if name in ("cached response", "keys"):
                    out.append(f"{name} replaced")
                else:
                    out.append(f"{name} {b} -> {a}")
        return "; ".join(out) or "nothing"

    def sent(self, what: str, outs: list) -> None:
        """Requests go out with rising message IDs (a retransmission repeats the octets;
        IKE_SA_INIT may start again at 0 after COOKIE or INVALID_KE_PAYLOAD); responses
        answer message IDs the SA has received."""
        sa = self.sa
        for o in outs:
            try:
                hdr = peek_header(o.data)
            except IkeDecodeError:
                sig_fail("sent_garbage", f"{what}: sent {o.data.hex()}")
                continue
            mid = hdr.message_id
            if hdr.is_response:
                if mid >= max(sa._peer_next_id, 1):
                    sig_fail("response_to_unreceived_id",
                             f"{what}: response with ID {mid}, next expected {sa._peer_next_id}")
                continue
            last = self.last_request
            restart = hdr.exchange_type == ExchangeType.IKE_SA_INIT and mid == 0
            if last is not None and not restart and (
                    mid < last[0] or (mid == last[0] and o.data != last[1])):
                sig_fail("request_id_reused",
                         f"{what}: request ID {mid} after request ID {last[0]}")
            self.last_request = (mid, o.data)

    def after(self, what: str, events: list) -> None:
        sa = self.sa
        st = sa.state
        if st not in ALLOWED[self.state]:
            sig_fail("state_transition", f"{what}: {self.state} -> {st}")
        restarted = st is State.INIT_SENT and sa._request is not None and \
            getattr(sa._request.kind, "value", sa._request.kind) == "IKE_SA_INIT"
        if sa._next_request_id < self.next_request_id and not restarted:
            sig_fail("message_id_backwards",
                     f"{what}: our next request ID {self.next_request_id} -> "
                     f"{sa._next_request_id}")
        if sa._peer_next_id < self.peer_next_id:
            sig_fail("peer_message_id_backwards",
                     f"{what}: expected peer ID {self.peer_next_id} -> {sa._peer_next_id}")
        self.state, self.next_request_id, self.peer_next_id = (
            st, sa._next_request_id, sa._peer_next_id)
        if sa.children and st is not State.ESTABLISHED:
            sig_fail("children_outside_established", f"{what}: {len(sa.children)} in {st}")
        if st is State.DEAD and sa._request is not None:
            sig_fail("dead_with_request", what)
        if st is State.ESTABLISHED and (sa._keys is None or sa._sk_in is None
                                        or sa._sk_out is None or sa.config is None):
            sig_fail("established_without_keys", what)
        if sa.established != (st is State.ESTABLISHED):
            sig_fail("established_flag", what)
        ins = [c.spi_in for c in sa.children]
        if len(set(ins)) != len(ins):
            sig_fail("duplicate_child_spi", f"{what}: {ins}")
        for c in sa.children:
            if not (valid_spi(c.spi_in) and valid_spi(c.spi_out)):
                sig_fail("child_spi", f"{what}: child {c.spi_in:#x}/{c.spi_out:#x}")
        for ev in events:
            if isinstance(ev, ChildUp):
                if not (valid_spi(ev.spi_in) and valid_spi(ev.spi_out)):
                    sig_fail("child_up_spi", f"{what}: ChildUp {ev.spi_in:#x}/{ev.spi_out:#x}")
                n = ev.suite.keymat_len
                if len(ev.keymat_in) != n or len(ev.keymat_out) != n:
                    sig_fail("child_up_keymat", what)
            elif isinstance(ev, IkeUp) and ev.ike is sa:
                self.up += 1
            elif isinstance(ev, IkeDown) and ev.ike is sa:
                self.down += 1
        if self.up > 1 or self.down > 1:
            sig_fail("ike_up_down_twice", f"{what}: IkeUp x{self.up}, IkeDown x{self.down}")
        d = sa.get_timer()
        if st is State.DEAD and d is not None:
            sig_fail("dead_with_deadline", what)


def _classify_exception(e: BaseException) -> str:
    frames = {f.name for f in traceback.extract_tb(e.__traceback__)}
    if isinstance(e, ValueError) and frames & {"_on_create_child", "_negotiate_child",
                                               "_on_rekey_ike"}:
        return "ike_sa.create_child_bad_ke"
    return f"ike_sa.{type(e).__name__}"


# --- the harness ----------------------------------------------------------------------------------
def run(data: bytes) -> None:
    r = Reader(data)
    w = worlds()[r.u8() % 3]
    state = STATE_NAMES[r.u8() % len(STATE_NAMES)]
    sa = snapshot(w.states[state], w.share)
    sas = [sa]
    trackers = {id(sa): Tracker(sa)}
    now = 0.0
    if state == "r_fresh":
        ctx = Ctx(w, sa)
        raw, _ = message(r, ctx)
        try:
            msg = decode_message(raw)
        except IkeDecodeError:
            msg = None
        # the manager hands an SA only IKE_SA_INIT requests with a zero SPIr
        if (msg is not None and msg.header.exchange_type == ExchangeType.IKE_SA_INIT
                and not msg.header.is_response and msg.header.spi_r == bytes(8)):
            sa.respond_init(msg, raw, now, w.cb.ike_proposals)
            trackers[id(sa)].state = sa.state
            trackers[id(sa)].after("respond_init", drain(sa))
            sa.datagrams_to_send()
    for step in range(MAX_OPS):
        if r.left == 0:
            break
        sa = sas[r.below(len(sas))]
        tr = trackers[id(sa)]
        ctx = Ctx(w, sa)
        op = r.u8() % 10
        before = tr.fingerprint()
        what = f"step {step} op {op} state {sa.state.value}"
        authentic = True
        raw = b""
        if op <= 4 or op == 9:
            if op <= 4:
                raw, authentic = message(r, ctx)
            else:
                raw, authentic = sealed_raw(r, ctx)
            if not raw:
                continue
            src = r.pick([sa.remote, (sa.remote[0], 4500), ("203.0.113.5", 4500)])
            natt = r.bool()
            got = rx(sa, raw, now, src, natt)
        elif op == 5:
            raw = mutate(r, r.pick(w.messages), 4)
            authentic = raw in w.messages
            got = rx(sa, raw, now, sa.remote, r.bool())
        elif op == 6:
            d = sa.get_timer()
            now = r.pick([now + 0.1, now + 0.6, now + 10.5, now + 31, now + 5000,
                          d if d is not None else now, now + 100000])
            sa.handle_timer(now)
        elif op == 7 and sa.state is State.ESTABLISHED:
            k = r.u8() % 3
            if k == 0 and sa.children:
                sa.rekey_child(sa.children[r.below(len(sa.children))].spi_in, now)
            elif k == 1:
                sa.rekey_ike(now)
            else:
                sa.delete(now)
        else:
            continue
        outs = sa.datagrams_to_send()
        events = drain(sa)
        tr.sent(what, outs)
        if raw and not authentic:
            _check_unauthenticated(sa, before, tr.fingerprint(), outs, raw, got, what)
        tr.after(what, events)
        for ev in events:
            if isinstance(ev, IkeRekeyed) and ev.new not in sas:
                new = ev.new
                if new.state is not State.ESTABLISHED or new._keys is None:
                    sig_fail("rekeyed_sa_not_established", what)
                sas.append(new)
                trackers[id(new)] = Tracker(new)
                trackers[id(new)].after(what + " (new SA)", drain(new))


def _check_unauthenticated(sa: IkeSa, before: tuple, after: tuple, outs: list, raw: bytes,
                           got: bool, what: str) -> None:
    """A message not sealed with the peer's real key: only a clear IKE_SA_INIT response
    while waiting for one may change anything; otherwise at most a cached answer goes out."""
    try:
        hdr = decode_message(raw).header
    except Exception:
        hdr = None
    init_response = (hdr is not None and hdr.exchange_type == ExchangeType.IKE_SA_INIT
                     and hdr.is_response and before[0] is State.INIT_SENT)
    if init_response:
        return
    if got:
        sig_fail("unauthenticated_accepted", f"{what}: receive() returned True for {raw.hex()}")
    cached = {sa._last_response[1]} if sa._last_response else set()
    cached.add(sa._init_response)
    changed = before != after or any(o.data not in cached for o in outs)
    if changed:
        sig = ("unauthenticated_init_request"
               if hdr is not None and hdr.exchange_type == ExchangeType.IKE_SA_INIT
               and not hdr.is_response else "unauthenticated_change")
        sig_fail(sig, f"{what}: a message without the peer's key changed the SA "
                      f"({Tracker.diff(before, after)}; {len(outs)} sent): {raw.hex()}")


def test_one_input(data: bytes) -> None:
    try:
        run(data)
    except Skip:
        return
    except FuzzFailure:
        raise
    except Exception as e:
        if known(_classify_exception(e)):
            return
        raise


def seed_programs() -> list[bytes]:
    """For each auth method and state: the exchange the state expects, from the template,
    sealed with the real key; then a timer tick and a second message."""
    out = []
    for auth in (0, 1, 2):
        for st in range(len(STATE_NAMES)):
            # op 0 (message), intent 0 (answer our request / the peer's next request),
            # exchange by state, flags ok, template on; everything else from zeros
            for exchange in range(4):
                prog = bytes([auth, st]) + bytes([0, 0, exchange, 1, 1]) + bytes(40)
                out.append(prog + bytes([6, 2]) + bytes([1, 1, 3, 1, 1]) + bytes(20))
    return out


if __name__ == "__main__":
    worlds()
    _common.main("ike_sa", test_one_input, seed_programs, sys.argv, STRUCTURED_FLAGS)
