"""The initial exchanges of an IKE SA, both sides (RFC 7296 sections 1.2, 2.6, 2.15, 2.23):

- IKE_SA_INIT with NAT detection, the INVALID_KE_PAYLOAD retry and COOKIE, and the switch to
  UDP 4500 when NAT is found or encapsulation is forced;
- IKE_AUTH with PSK (2.15), a raw Ed25519 key (RFC 8420) or certificates (CERT, CERTREQ; RFC
  7427 signatures: ``certauth.py``), INITIAL_CONTACT, and the first child SA with traffic
  selectors narrowed by the responder (2.9).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Sequence

from ..addr import format_addr, sockaddr
from ..constants import (
    IKE_PORT,
    IKE_SPI_LEN,
    NAT_DETECTION_HASH_LEN,
    NAT_T_PORT,
    AuthMethod,
    ExchangeType,
    HashAlgorithm,
    IdType,
    NotifyType,
)
from ..tunnel.peer import KeepaliveMode
from . import crypto as kc
from .base import (
    NONCE_LEN,
    AuthContext,
    IkeError,
    Request,
    RequestKind,
    State,
    log,
    nat_hash,
    new_child_spi,
    notify_name,
    spi_bytes,
)
from .certauth import cert_payloads, certreq_payloads, idr_matches, peer_identity, verify_peer
from .certs import TrustStore
from .child import ChildSaExchanges
from .config import Identity, IkeConfig
from .events import DownCause, IkeUp, Outgoing
from .message import (
    KE,
    SA,
    Auth,
    IDi,
    IDr,
    Message,
    Nonce,
    Notify,
    Payload,
    TSi,
    TSr,
    encode_message,
    ike_proposal,
)
from .mobike import MobikeExchanges
from .proposals import IkeProposal, esp_offer, pick_ike

#: error notifies in an IKE_AUTH response that refuse the child SA only: the IKE SA is up
#: all the same (section 1.2; NO_ADDITIONAL_SAS as strongSwan may send it)
CHILD_ERRORS = frozenset({
    NotifyType.NO_PROPOSAL_CHOSEN, NotifyType.TS_UNACCEPTABLE, NotifyType.SINGLE_PAIR_REQUIRED,
    NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED,
    NotifyType.NO_ADDITIONAL_SAS,
})


def _has_identity_hash(msg: Message) -> bool:
    n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if n is None:
        return False
    try:
        return HashAlgorithm.IDENTITY in n.hash_algorithms()
    except ValueError:
        return False


def _peer_hashes(msg: Message) -> frozenset[int]:
    """The hash algorithms of the peer's SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4)."""
    n = msg.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if n is None:
        return frozenset()
    try:
        return frozenset(n.hash_algorithms())
    except ValueError:
        return frozenset()


class InitialExchanges(ChildSaExchanges, MobikeExchanges):
    """IKE_SA_INIT and IKE_AUTH."""

    #: what the peer's SIGNATURE_HASH_ALGORITHMS announced; our CERTREQ's CAs as responder
    _peer_hashes: frozenset[int] = frozenset()
    _certreq_trust: TrustStore | None = None

    # --- initiator: IKE_SA_INIT --------------------------------------------------------------
    def start(self, now: float, group: int | None = None) -> None:
        """Send IKE_SA_INIT (again, with ``group`` after INVALID_KE_PAYLOAD or a cookie)."""
        assert self.config is not None and self.initiator
        props = self.config.ike_proposals
        group = group or props[0].dh
        # Section 2.6: a retry with a COOKIE repeats the request with all other payloads
        # unchanged (the responder's cookie covers Ni); after INVALID_KE_PAYLOAD only the KE
        # changes (2.6.1)
        if self._ke is None or self._ke.group != group:
            self._ke = kc.KeyExchange(group)
        if not self._ni:
            self._ni = os.urandom(NONCE_LEN)
        sa = SA([ike_proposal(i, encr=p.encr, prf=p.prf, dh=p.dh, key_length=p.key_bits)
                 for i, p in enumerate(props, 1)])
        payloads: list[Payload] = []
        if self._cookie:
            payloads.append(Notify(NotifyType.COOKIE, self._cookie))
        payloads += [SA(sa.proposals), KE(group, self._ke.public), Nonce(self._ni)]
        no_spi = bytes(IKE_SPI_LEN)
        src_hash = nat_hash(self.spi_i, no_spi, self.local)
        if self.config.force_encap:
            # claim NAT so that everything moves to UDP 4500
            src_hash = os.urandom(NAT_DETECTION_HASH_LEN)
            self._debug("encapsulation forced: claiming to be behind a NAT")
        payloads += [
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP, src_hash),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                   nat_hash(self.spi_i, no_spi, self.remote)),
            Notify.signature_hash_algorithms(kc.SIGNATURE_HASHES),
            *self._fragmentation_offer(),
            *self._init_notifies(),
        ]
        self._next_request_id = 0
        self._request_send(ExchangeType.IKE_SA_INIT, payloads, RequestKind.IKE_SA_INIT, now)
        self._init_request = self._request.data if self._request else b""
        self.state = State.INIT_SENT

    def _init_notifies(self) -> list[Payload]:
        """Notifies of an extension in IKE_SA_INIT, both ways (IKEv2 mediation's
        ME_MEDIATION, ``nattunnel.ike.mediation``); none here."""
        return []

    def _retry_init(self, msg: Message, now: float) -> bool:
        """INVALID_KE_PAYLOAD (1.2) or COOKIE (2.6) in the IKE_SA_INIT response: send the
        request again as asked (True), or give up (False, and the SA is dead)."""
        assert self.config is not None and self._ke is not None
        ke_err = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if ke_err is not None and len(ke_err.data) == 2:
            group = int.from_bytes(ke_err.data, "big")
            if group in [p.dh for p in self.config.ike_proposals] and group != self._ke.group:
                self._request = None
                self.start(now, group)
                return True
            self._die(f"peer wants key exchange group {group}, which we do not offer",
                      DownCause.REFUSED)
            return True
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None and not self._cookie:
            self._cookie = cookie.data
            self._request = None
            self.start(now, self._ke.group)
            return True
        return False

    def _on_init_response(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        assert self.config is not None and self._ke is not None
        if self._retry_init(msg, now):
            return
        for n in msg.notifies():
            if n.is_error:
                self._die(f"IKE_SA_INIT refused: {notify_name(n.notify_type)}",
                          DownCause.REFUSED)
                return
        sa, ke, nonce = msg.get(SA), msg.get(KE), msg.get(Nonce)
        if sa is None or ke is None or nonce is None or len(sa.proposals) != 1:
            self._die("malformed IKE_SA_INIT response", DownCause.FAILED)
            return
        chosen = pick_ike(sa, self.config.ike_proposals)
        if chosen is None or chosen[1].dh != ke.group or ke.group != self._ke.group:
            self._die("IKE_SA_INIT response chose a proposal we did not offer",
                      DownCause.FAILED)
            return
        self._request = None
        self.spi_r = msg.header.spi_r
        self._nr = nonce.data
        self._init_response = raw
        self._detect_nat(msg)
        try:
            self._derive(chosen[1], self._ke.shared(ke.data))
        except ValueError as e:
            self._die(f"key exchange failed: {e}", DownCause.FAILED)
            return
        self._peer_hash_ok = _has_identity_hash(msg)
        self._peer_hashes = _peer_hashes(msg)
        self._fragmentation_seen(msg)
        # keepalives "always" hold the NAT-T flow through a stateful firewall without NAT:
        # IKE moves there too, or the firewall's entry for port 500 expires and a rekey
        # from outside never reaches us (section 2.23 allows the move without NAT)
        if self.local_behind_nat or self.remote_behind_nat:
            self._switch_to_natt("NAT detected")
        elif self.config.keepalive is KeepaliveMode.ALWAYS:
            self._switch_to_natt('keepalive = "always" holds that flow')
        self._send_auth(now)

    def _switch_to_natt(self, why: str) -> None:
        """Section 2.23: after NAT is detected the initiator moves to port 4500 (the marker
        goes with it); a peer already reached on a non-500 port stays there."""
        before = self.remote
        self.natt = True
        if self.remote[1] == IKE_PORT:
            self.remote = sockaddr(self.remote[0], NAT_T_PORT)
        if log.isEnabledFor(logging.DEBUG):
            self._debug("moving to the NAT-T port (%s): %s -> %s", why, format_addr(before),
                        format_addr(self.remote))

    def _detect_nat(self, msg: Message) -> None:
        """Section 2.23: compare the peer's NAT_DETECTION hashes with the addresses we see."""
        spi_r = msg.header.spi_r if self.initiator else bytes(IKE_SPI_LEN)
        srcs = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
        dsts = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
        if not srcs or not dsts:
            self._debug("NAT detection: the peer sent no NAT_DETECTION notifies")
            return
        self.remote_behind_nat = nat_hash(self.spi_i, spi_r, self.remote) not in srcs
        self.local_behind_nat = nat_hash(self.spi_i, spi_r, self.local) not in dsts
        if log.isEnabledFor(logging.DEBUG):
            self._debug("NAT detection: %s (we are %s, the peer is seen at %s)",
                        "both sides behind a NAT" if self.local_behind_nat
                        and self.remote_behind_nat else
                        "this side behind a NAT" if self.local_behind_nat else
                        "the peer behind a NAT (or claiming so)" if self.remote_behind_nat
                        else "no NAT", format_addr(self.local), format_addr(self.remote))

    # --- AUTH -------------------------------------------------------------------------------
    def _auth_payload(self, id_body: bytes) -> Auth:
        assert self.config is not None and self._prf is not None and self._keys is not None
        if self.initiator:
            octets = kc.signed_octets(self._init_request, self._nr, self._prf,
                                      self._keys.sk_pi, id_body)
        else:
            octets = kc.signed_octets(self._init_response, self._ni, self._prf,
                                      self._keys.sk_pr, id_body)
        if self.config.auth == "psk":
            return Auth(AuthMethod.SHARED_KEY_MIC, kc.psk_auth(self._prf, self.config.psk,
                                                               octets))
        assert self.config.private_key is not None
        return Auth(AuthMethod.DIGITAL_SIGNATURE, kc.signature_auth(
            self.config.private_key, octets, self._peer_hashes, rsa_pss=self.config.rsa_pss))

    def _verify_auth(self, config: IkeConfig, auth: Auth, peer_id_body: bytes,
                     peer_id: Identity, msg: Message) -> str | None:
        """None if the peer's AUTH is good, else why it is not."""
        assert self._prf is not None and self._keys is not None
        if self.initiator:  # the peer is the responder
            octets = kc.signed_octets(self._init_response, self._ni, self._prf,
                                      self._keys.sk_pr, peer_id_body)
        else:
            octets = kc.signed_octets(self._init_request, self._nr, self._prf,
                                      self._keys.sk_pi, peer_id_body)
        if config.auth == "psk":
            if auth.method != AuthMethod.SHARED_KEY_MIC or not hmac.compare_digest(
                    auth.data, kc.psk_auth(self._prf, config.psk, octets)):
                return "the pre-shared key does not match"
            return None
        return verify_peer(config, auth, octets, peer_id, msg)

    def _send_auth(self, now: float) -> None:
        assert self.config is not None
        idi = IDi(self.config.local_id.id_type, self.config.local_id.data)
        remote_id = self.config.remote_id
        spi = new_child_spi()
        first = self.config.child_configs()[0]  # the others follow by CREATE_CHILD_SA
        payloads: list[Payload] = [idi, *cert_payloads(self.config),
                                   Notify(NotifyType.INITIAL_CONTACT),
                                   *certreq_payloads(self.config.trust),
                                   IDr(remote_id.id_type, remote_id.data),
                                   self._auth_payload(idi.encode_body()),
                                   *self._cp_request(),
                                   esp_offer(self.config.esp_proposals, spi),
                                   TSi.of(*first.local_ts), TSr.of(*first.remote_ts),
                                   *self._mobike_supported()]
        self.state = State.AUTH_SENT
        self._request_send(ExchangeType.IKE_AUTH, payloads, RequestKind.IKE_AUTH, now,
                           AuthContext(spi, first))

    def _on_auth_response(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        assert self.config is not None and isinstance(req.context, AuthContext)
        spi_in = req.context.spi_in
        self._request = None
        child_err = None
        for n in msg.notifies():
            if n.is_error and n.notify_type in CHILD_ERRORS:
                child_err = child_err or n.notify_type
            elif n.is_error:
                self._die(f"IKE_AUTH refused: {notify_name(n.notify_type)}",
                          DownCause.REFUSED)
                return
        idr, auth = msg.get(IDr), msg.get(Auth)
        if idr is None or auth is None:
            self._die("IKE_AUTH response without IDr or AUTH", DownCause.FAILED)
            return
        peer_id = peer_identity(idr.id_type, idr.data, msg)
        if peer_id != self.config.remote_id:
            self._die(f"peer identified as {peer_id}, not {self.config.remote_id}",
                      DownCause.AUTHENTICATION_FAILED)
            return
        why = self._verify_auth(self.config, auth, idr.encode_body(), peer_id, msg)
        if why is not None:
            self._die(f"authentication of {peer_id} failed: {why}",
                      DownCause.AUTHENTICATION_FAILED)
            return
        self._established(now)
        self._mobike_negotiated(msg)
        self._events.append(IkeUp(self._me(), self.remote, self.local_behind_nat,
                                  self.remote_behind_nat))
        sa = msg.get(SA)
        first = req.context.child or self.config.child_configs()[0]
        # the other children of our configuration, one CREATE_CHILD_SA each, in order
        for later in self.config.child_configs()[1:]:
            self._wanted[later.name] = now
        vip_err = self._cp_reply_taken(msg) if self.config.vips and child_err is None else None
        if vip_err is not None:
            self._child_refused(vip_err, now, child=first)
        elif child_err is not None:
            self._child_refused(f"{notify_name(child_err)} in the IKE_AUTH response", now,
                                child=first)
        elif sa is None or len(sa.proposals) != 1:
            self._child_refused("no child SA in the IKE_AUTH response", now, child=first)
        else:
            self._child_from_response(sa, msg, spi_in, self._ni, self._nr, b"", None,
                                      offered=self._offered(first), made_for=first)

    # --- responder ----------------------------------------------------------------------------
    def respond_init(self, msg: Message, raw: bytes, now: float,
                     proposals: Sequence[IkeProposal], *, natt: bool = False,
                     certreq: TrustStore | None = None) -> None:
        """Answer an IKE_SA_INIT request (the manager has checked cookies) that came on port
        4500 (``natt``) or 500: the answer goes back the same way. ``certreq``: the CAs to
        name in a CERTREQ (section 3.7), those of every peer that takes certificates."""
        self._certreq_trust = certreq
        self._request_natt = natt
        self._clock = now
        self.spi_i = msg.header.spi_i
        self._log_message("parsed", msg, len(raw), self.remote)
        sa, ke, nonce = msg.get(SA), msg.get(KE), msg.get(Nonce)
        self._init_request = raw
        if sa is None or ke is None or nonce is None:
            self._refuse_init(NotifyType.INVALID_SYNTAX)
            return
        chosen = pick_ike(sa, proposals)
        if chosen is None:
            self._refuse_init(NotifyType.NO_PROPOSAL_CHOSEN)
            return
        number, prop = chosen
        if ke.group != prop.dh:
            self._refuse_init(NotifyType.INVALID_KE_PAYLOAD, prop.dh.to_bytes(2, "big"))
            return
        self._ke = kc.KeyExchange(prop.dh)
        try:
            g_ir = self._ke.shared(ke.data)
        except ValueError:
            self._refuse_init(NotifyType.INVALID_SYNTAX)
            return
        self.spi_r = spi_bytes()
        self._ni = nonce.data
        self._nr = os.urandom(NONCE_LEN)
        self._detect_nat(msg)
        # a request that came behind the marker (port 4500, or whichever port the peer
        # uses for NAT-T) stays there, NAT or not: the peer's ESP and IKE live on that port
        self.natt = natt or self.local_behind_nat or self.remote_behind_nat
        if self.natt and not natt:
            self._debug("NAT found: the peer is to move to the NAT-T port after IKE_SA_INIT")
        self._peer_hash_ok = _has_identity_hash(msg)
        self._peer_hashes = _peer_hashes(msg)
        self._fragmentation_seen(msg)
        self._answer_init(number, prop)
        self._derive(prop, g_ir)
        self.state = State.INIT_DONE

    def _answer_init(self, number: int, prop: IkeProposal) -> None:
        """The IKE_SA_INIT response: our choice, KE, Nr and NAT detection hashes."""
        assert self._ke is not None
        payloads: list[Payload] = [
            SA([ike_proposal(number, encr=prop.encr, prf=prop.prf, dh=prop.dh,
                             key_length=prop.key_bits)]),
            KE(prop.dh, self._ke.public), Nonce(self._nr),
            Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
                   nat_hash(self.spi_i, self.spi_r, self.local)),
            Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                   nat_hash(self.spi_i, self.spi_r, self.remote)),
        ]
        if self._peer_hashes:
            payloads.append(Notify.signature_hash_algorithms(kc.SIGNATURE_HASHES))
        payloads += certreq_payloads(self._certreq_trust)
        payloads += self._fragmentation_offer()
        payloads += self._init_notifies()
        hdr = self._header(ExchangeType.IKE_SA_INIT, 0, True)
        data = encode_message(hdr, payloads)
        self._log_out(hdr, payloads, False, data, self.remote)
        self._init_response = data
        self._last_response = (0, data)
        self._peer_next_id = 1
        # the response goes back the way the request came (port 500 or 4500)
        self._outputs.append(Outgoing(data, self.remote, self._request_natt))

    def _refuse_init(self, notify: int, data: bytes = b"") -> None:
        hdr = self._header(ExchangeType.IKE_SA_INIT, 0, True)
        payloads: list[Payload] = [Notify(notify, data)]
        out = encode_message(hdr, payloads)
        self._log_out(hdr, payloads, False, out, self.remote)
        self._outputs.append(Outgoing(out, self.remote, self._request_natt))
        self._die(f"IKE_SA_INIT refused with notify {notify}", DownCause.REFUSED)

    def _on_auth_request(self, msg: Message, now: float) -> None:
        idi, auth = msg.get(IDi), msg.get(Auth)
        if idi is None or auth is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "IKE_AUTH request without IDi or AUTH")
        peer_id = peer_identity(idi.id_type, idi.data, msg)
        idr = msg.get(IDr)
        # a DN in IDr is in the peer's encoding: matched against ours after the lookup
        want = Identity(idr.id_type, idr.data) if idr and idr.id_type != IdType.DER_ASN1_DN \
            else None
        config = self.lookup(peer_id, want) if self.lookup else self.config
        why = (self._verify_auth(config, auth, idi.encode_body(), peer_id, msg)
               if config is not None else "no peer with that identity")
        if why is None and idr is not None and config is not None and not idr_matches(
                idr.id_type, idr.data, config.local_id):
            why = f"the peer asked for another identity of ours (IDr), not {config.local_id}"
        if why is not None:
            self._respond(ExchangeType.IKE_AUTH, msg.header.message_id,
                          [Notify(NotifyType.AUTHENTICATION_FAILED)])
            self.config = config or self.config  # for the peer's name in the log
            self._die(f"authentication of {peer_id} failed: {why}",
                      DownCause.AUTHENTICATION_FAILED)
            return
        assert config is not None
        self.config = config
        self.last_rx = now
        self.initial_contact = msg.notify(NotifyType.INITIAL_CONTACT) is not None
        my_idr = IDr(config.local_id.id_type, config.local_id.data)
        payloads: list[Payload] = [my_idr, *cert_payloads(config),
                                   self._auth_payload(my_idr.encode_body())]
        cp_payloads, vip_ok = self._cp_answer(msg, config)
        child_payloads, child = self._negotiate_child(msg, self._ni, self._nr, None,
                                                      pfs_allowed=False) if vip_ok else ([], None)
        payloads += cp_payloads + child_payloads
        self._mobike_negotiated(msg)
        if self.mobike:
            payloads += self._mobike_supported()
        self._established(now)
        self._respond(ExchangeType.IKE_AUTH, msg.header.message_id, payloads)
        self._events.append(IkeUp(self._me(), self.remote, self.local_behind_nat,
                                  self.remote_behind_nat))
        if child is not None:
            child()
