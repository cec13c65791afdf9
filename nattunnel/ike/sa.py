"""One IKEv2 SA (RFC 7296), sans-I/O: the initial exchanges, INFORMATIONAL, rekeys.

``IkeSa`` follows the core contract: it is fed received IKE messages (``receive``) and the
time (``handle_timer``) with an explicit ``now``; ``datagrams_to_send()`` returns the messages
to send (``Outgoing``), ``next_event()`` its events (``ChildUp``, ``ChildDown``,
``ChildRefused``, ``IkeUp``, ``IkeDown``, ``IkeRekeyed``) and ``get_timer()`` its next
deadline. It owns no socket: ``nattunnel.ike.manager`` moves the bytes and installs the child
SAs.

One class, split by exchange: ``base`` (state, sending, keys), ``child`` (child SAs and their
rekeys), ``initial`` (IKE_SA_INIT, IKE_AUTH), ``rekey`` (IKE SA rekeys); here the dispatch,
as data (``ON_REQUEST``, ``ON_RESPONSE``), INFORMATIONAL and the timers. Covered:
- IKE_SA_INIT with NAT detection (section 2.23), INVALID_KE_PAYLOAD retry (1.2), COOKIE
  (2.6), NO_PROPOSAL_CHOSEN; the switch to UDP 4500 when NAT is found or encapsulation is
  forced;
- IKE_AUTH with PSK (2.15) or Ed25519 (RFC 7427 / RFC 8420), INITIAL_CONTACT, the first child
  SA with traffic selectors narrowed by the responder (2.9); a child SA the responder refuses
  (1.2: NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE, ...) leaves the IKE SA up (``ChildRefused``),
  and the initiator asks again with CREATE_CHILD_SA (1.3.1), backing off;
- INFORMATIONAL: every request answered; Delete of child SAs and of the IKE SA (1.4.1);
  liveness checks (DPD) when nothing was received for ``dpd_interval``;
- CREATE_CHILD_SA both ways: child SA rekeys with optional PFS (1.3.3, 2.17) and IKE SA
  rekeys (1.3.2, 2.18);
- retransmission of our requests with exponential backoff and a cap (2.1), and answering a
  retransmitted request from the cache of our last response (2.1, window size 1);
- after IKE_SA_INIT nothing unprotected changes any state (message IDs, the response cache,
  the peer's address): only an IKE_SA_INIT retransmission identical to the request is
  answered; an authenticated new message alone may move the peer (2.23);
- KE payloads in CREATE_CHILD_SA: INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN or INVALID_SYNTAX
  (1.3, 3.4, 3.10.1); NO_ADDITIONAL_SAS beyond ``max_children``; child rekey collisions
  (2.8.1), simultaneous IKE SA rekeys (2.8.2) and rekey/delete collisions (2.25.1, 2.25.2,
  with TEMPORARY_FAILURE);
- MOBIKE (RFC 4555, in ``mobike``): MOBIKE_SUPPORTED, UPDATE_SA_ADDRESSES with NAT
  detection and COOKIE2, return routability checks, the peers' additional addresses.

At DEBUG (logger ``nattunnel.ike``) every IKE message in and out is logged with its exchange,
message ID and payload list, and so are NAT detection, moves, rekey decisions, DPD, Deletes
and the next deadline (docs/troubleshooting.md, "Debug logging"); nothing per data packet and
never a key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from ..addr import Addr, format_addr
from ..constants import CHILD_SPI_LEN, ME_CONNECT, ExchangeType, NotifyType, ProtocolId
from .base import (
    Deadline,
    IkeError,
    Request,
    RequestKind,
    State,
    exchange_name,
    log,
    notify_name,
)
from .config import RETRANSMIT_BASE, RETRANSMIT_TRIES
from .events import DownCause, Outgoing, PathUpdated
from .initial import InitialExchanges
from .message import (
    SA,
    Delete,
    IkeDecodeError,
    IkeIntegrityError,
    Message,
    Nonce,
    Notify,
    Payload,
    decode_message,
)
from .rekey import IkeRekeyExchanges


class IkeSa(IkeRekeyExchanges, InitialExchanges):
    """One IKE SA and its child SAs."""

    # --- what the manager asks of it ---------------------------------------------------------
    def forget(self) -> None:
        """Drop this SA without a word to the peer: the peer sent INITIAL_CONTACT in a newer
        IKE SA, so it has forgotten this one (section 2.4)."""
        self._die("replaced: the peer sent INITIAL_CONTACT", DownCause.REPLACED)

    def delete(self, now: float) -> None:
        """Delete the IKE SA (and with it its children)."""
        if self.state is State.ESTABLISHED and self._request is None:
            self._send_delete_ike(now)
        else:
            self._die("deleted", DownCause.DELETED)

    def check_liveness(self, now: float) -> bool:
        """Send a liveness check (an empty INFORMATIONAL request, section 1.4) now, unless
        the SA is not up or a request of ours is outstanding."""
        if self.state is not State.ESTABLISHED or self._request is not None:
            return False
        self._debug("liveness check (DPD): nothing received for %.1f s", now - self.last_rx)
        self._request_send(ExchangeType.INFORMATIONAL, [], RequestKind.LIVENESS_CHECK, now)
        return True

    # --- receiving ----------------------------------------------------------------------------
    def receive(self, raw: bytes, now: float, source: Addr | None = None,
                natt: bool | None = None, to: Addr | None = None) -> bool:
        """A message for this SA (its SPIs matched). Never raises for bad input.

        ``source`` and ``natt`` say where it came from (the address, and whether on port
        4500); responses go back there (section 2.11); ``to`` is the socket it came to (a
        wildcard, or one address), for MOBIKE's NAT detection. Returns True when the message
        was authenticated and new (not a retransmission): the response to our outstanding
        request or the peer's next request, both protected with this SA's keys. Only then
        may the peer's address change (section 2.23), and only such a message (or the
        IKE_SA_INIT response in INIT_SENT) changes any state of this SA: nothing in the
        clear after IKE_SA_INIT does, so that nobody on the path can use up a message ID,
        replace the response cache, or move the SA with a spoofed header.
        """
        if self.state is State.DEAD:
            return False
        self._clock = now
        self._reply_to = (source, bool(natt)) if source is not None and natt is not None \
            else None
        self._came_to = to
        try:
            return self._receive(raw, now, source, bool(natt))
        finally:
            self._reply_to = None

    def _receive(self, raw: bytes, now: float, source: Addr | None, natt: bool) -> bool:
        came = source or self.remote
        try:
            msg = decode_message(raw, sk=self._sk_in if self._keys else None)
            if msg.fragment is not None:  # RFC 7383: kept until the message is whole
                whole = self._defragment(msg, len(raw), came, now)
                if whole is None:
                    return False
                msg = whole
        except IkeIntegrityError:
            self._integrity_failed(raw)
            self._debug("dropped %d bytes from %s: integrity check failed", len(raw),
                        format_addr(came))
            return False  # silently dropped (section 2.21.2)
        except IkeDecodeError as e:
            self._debug("malformed message from %s: %s", format_addr(came), e)
            self._answer_malformed(e, now)
            return False
        self._log_message("parsed", msg, len(raw), came)
        hdr = msg.header
        if not msg.encrypted:
            return self._on_clear(msg, raw, now)
        if hdr.is_response:
            req = self._request
            if (req is None or hdr.message_id != req.message_id
                    or hdr.exchange_type != req.exchange):
                self._debug("response %d dropped: not the answer to our outstanding "
                            "request", hdr.message_id)
                return False
            self._adopt_source(source, natt)
            self.last_rx = now
            # by name: a subclass (MediationSa) may extend a handler
            getattr(self, ON_RESPONSE[req.kind].__name__)(msg, raw, now, req)
            self._start_mobike(now)  # a MOBIKE request that waited for the window
            return True
        if not self._new_request(hdr.message_id):
            return False
        self._adopt_source(source, natt)
        self._on_request(msg, now)
        return True

    def _answer_malformed(self, e: IkeDecodeError, now: float) -> None:
        """Malformed inside the protection: the peer's own message, answered with the notify
        within the window like any request (section 3.10.1)."""
        hdr = e.header
        if hdr is None or hdr.is_response or not e.authenticated or not e.notify:
            return
        if not self._new_request(hdr.message_id):
            return
        self._peer_next_id = hdr.message_id + 1
        self.last_rx = now
        self._respond(hdr.exchange_type, hdr.message_id, [Notify(e.notify, e.notify_data)])

    def _new_request(self, mid: int) -> bool:
        """Window size 1 (section 2.1): True for the peer's next request; a retransmission
        of the last one is answered from the cache; anything else is dropped."""
        if self._last_response is not None and mid == self._last_response[0]:
            self._debug("request %d is a retransmission: answered again from the cache", mid)
            self._reply_cached()
            return False
        if mid != self._peer_next_id:
            self._debug("request %d dropped: the next one expected is %d", mid,
                        self._peer_next_id)
            return False
        return True

    def _on_clear(self, msg: Message, raw: bytes, now: float) -> bool:
        """An unprotected message. After IKE_SA_INIT only two are of any use: the IKE_SA_INIT
        response while we wait for it, and a retransmission of the IKE_SA_INIT request we
        answered (the same octets: section 2.1), answered from the cache. The rest is
        dropped without a trace."""
        hdr = msg.header
        if hdr.exchange_type != ExchangeType.IKE_SA_INIT or hdr.message_id != 0:
            return False
        req = self._request
        if hdr.is_response:
            if (self.state is State.INIT_SENT and req is not None
                    and req.kind is RequestKind.IKE_SA_INIT):
                self.last_rx = now
                self._on_init_response(msg, raw, now, req)
            return False
        if (not self.initiator and self.state is State.INIT_DONE and self._init_response
                and raw == self._init_request):
            self._debug("IKE_SA_INIT request retransmitted: answered again from the cache")
            if self._reply_to is not None:
                self._reply(self._init_response)
            else:  # back over the port the request first came on
                self._outputs.append(Outgoing(self._init_response, self.remote,
                                              self._request_natt))
        return False

    def _adopt_source(self, source: Addr | None, natt: bool) -> None:
        """Section 2.23: an authenticated new message on port 4500 from another address or
        port (a NAT mapping changed) moves the SA there. A host behind a NAT does not do
        this once the SA is up (2.23: SHOULD NOT), unless the peer is behind a NAT too (both
        sides behind NAT, one reached through a port forward, is supported, and the other
        side's mapping can change like any). During IKE_AUTH the responder learns the port
        the initiator floated to."""
        if source is None or not natt or (source == self.remote and self.natt):
            return
        if self.mobike and self.state is State.ESTABLISHED:
            self._mobike_adopt(source)
            return
        if (self.state is State.ESTABLISHED and self.local_behind_nat
                and not self.remote_behind_nat):
            self._debug("authenticated message from %s, staying at %s: this side is behind "
                        "a NAT and the peer is not (section 2.23)", format_addr(source),
                        format_addr(self.remote))
            return
        self._debug("IKE SA moves from %s to %s: an authenticated message came from there "
                    "(section 2.23)", format_addr(self.remote), format_addr(source))
        self.remote = source
        self.natt = True

    def _on_request(self, msg: Message, now: float) -> None:
        """An authenticated request with the next message ID: it uses the ID up whatever
        the answer (section 2.1), and that answer is cached for its retransmissions."""
        hdr = msg.header
        mid = hdr.message_id
        self.last_rx = now
        self._peer_next_id = mid + 1
        handler = ON_REQUEST.get((hdr.exchange_type, self.state))
        try:
            if handler is not None:
                handler(self, msg, now)
            elif self.state is not State.ESTABLISHED:
                raise IkeError(NotifyType.INVALID_SYNTAX, "request before the IKE SA is up")
            else:
                raise IkeError(NotifyType.INVALID_SYNTAX, "unexpected exchange")
        except IkeError as e:
            self._debug("answering %s request %d with %s: %s", exchange_name(hdr.exchange_type),
                        mid, notify_name(e.notify), e)
            self._respond(hdr.exchange_type, mid, [Notify(e.notify, e.data)])

    def _on_create_child_sa(self, msg: Message, now: float) -> None:
        """CREATE_CHILD_SA: a rekey of this IKE SA, or a child SA (new, or a rekey)."""
        nonce = msg.get(Nonce)
        sa = msg.get(SA)
        if nonce is None or sa is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA without SA or Nonce")
        if sa.proposals and sa.proposals[0].protocol == ProtocolId.IKE:
            self._on_rekey_ike(msg, sa, nonce, now)
        else:
            self._on_create_child(msg, nonce)

    def _mobike_adopt(self, source: Addr) -> None:
        """With MOBIKE the addresses move with UPDATE_SA_ADDRESSES (RFC 4555 section 3.5);
        an authenticated message from another port of the same address (a NAT's new port,
        the initiator's float to 4500, section 3.3) moves the SA and its child SAs there."""
        if source[0] != self.remote[0]:
            self._debug("authenticated message from %s, staying at %s: with MOBIKE only "
                        "UPDATE_SA_ADDRESSES moves the SA", format_addr(source),
                        format_addr(self.remote))
            return
        self._debug("IKE SA moves from %s to %s: the same address, another port",
                    format_addr(self.remote), format_addr(source))
        self.remote = source
        self.natt = True
        self._events.append(PathUpdated(self, source, self.local_behind_nat,
                                        self.remote_behind_nat))

    # --- ME_CONNECT (IKEv2 mediation: nattunnel.ike.mediation's MediationSa) ----------------
    def _me_connect_request(self, msg: Message, now: float) -> None:
        self._on_me_connect(msg, now)

    def _on_me_connect(self, msg: Message, now: float) -> None:
        raise IkeError(NotifyType.INVALID_SYNTAX, "ME_CONNECT on an SA that is not a "
                       "mediation connection")

    def _on_me_connect_answered(self, msg: Message, raw: bytes, now: float,
                                req: Request) -> None:
        self._on_me_connect_response(msg, now)

    def _on_me_connect_response(self, msg: Message, now: float) -> None:
        self._request = None

    # --- INFORMATIONAL -----------------------------------------------------------------------
    def _on_informational(self, msg: Message, now: float) -> None:
        if msg.notify(NotifyType.UPDATE_SA_ADDRESSES) is not None:
            self._on_update_request(msg, now)
            return
        answer: list[Payload] = []
        dead = False
        for d in msg.get_all(Delete):
            if d.protocol == ProtocolId.IKE:
                self._debug("Delete of the IKE SA received")
                dead = True
            elif d.protocol == ProtocolId.ESP:
                ours = []
                for spi in d.spis:
                    out_spi = int.from_bytes(spi, "big")
                    self._debug("Delete of child SA %#010x (outbound) received", out_spi)
                    for c in [c for c in self.children if c.spi_out == out_spi]:
                        # section 2.25.1: also if we are rekeying it (our rekey's answer
                        # then finds no old SA to replace)
                        self._child_down(c)
                        ours.append(c.spi_in.to_bytes(CHILD_SPI_LEN, "big"))
                if ours:
                    answer.append(Delete(ProtocolId.ESP, ours))
        # everything else (DPD, MOBIKE's address lists, return routability checks) gets an
        # answer without payloads of its own, with COOKIE2 echoed (RFC 4555 section 3.7)
        answer += self._mobike_answer(msg)
        self._respond(ExchangeType.INFORMATIONAL, msg.header.message_id, answer)
        if dead:
            self._deleted_by_peer()

    def _deleted_by_peer(self) -> None:
        req = self._request
        if (req is not None and req.kind is RequestKind.REKEY_IKE
                and self._peer_ike_rekey is not None):
            # Sections 2.8.2 and 2.25.2: both sides rekeyed this SA, the peer's new SA won
            # and the peer deletes this one before the answer to our rekey came. Answered as
            # usual; this SA stays until that answer only to delete the redundant SA our
            # rekey made at the peer (nobody else would).
            self._closing_by_peer = True
            return
        old = self._rekeyed_from
        if old is not None and old.state is not State.DEAD:
            # section 2.8.2: the peer found this SA redundant before the answer to our
            # own rekey reached us: the children wait in the old SA for the survivor
            old.children += self.children
            self.children = []
            self.rekeyed = True
            self._rekeyed_from = None
        self._die_deleted_by_peer()

    # --- responses without a handler of their own --------------------------------------------
    def _on_answered(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        """A liveness check or a Delete of child SAs was answered."""
        self._request = None
        self._debug("%s answered", req.kind.value)

    def _on_ike_deleted(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        self._request = None
        self._debug("Delete of the IKE SA answered")
        self._die("deleted", DownCause.DELETED)

    # --- timers ------------------------------------------------------------------------------
    def _retransmit_at(self, req: Request) -> float:
        return req.sent_at + RETRANSMIT_BASE * 2.0 ** (req.tries - 1)

    def _tries(self) -> int:
        return self.config.retransmit_tries if self.config else RETRANSMIT_TRIES

    def _deadline(self) -> Deadline | None:
        """The next deadline, with what it is for: a format and its arguments for the log
        (built only when a line is written)."""
        if self.state is State.DEAD:
            return None
        times: list[Deadline] = [(c.expire_at, "hard lifetime of child SA %#010x", (c.spi_in,))
                                 for c in self.children if c.expire_at is not None]
        frag_at = self.fragments.deadline()
        if frag_at is not None:
            times.append((frag_at, "dropping an incomplete fragmented message", ()))
        req = self._request
        if req is not None and req.tries < self._tries():
            times.append((self._retransmit_at(req), "retransmission %d of the %s request",
                          (req.tries + 1, req.kind.value)))
        elif req is not None:
            times.append((self._retransmit_at(req), "giving up on the %s request",
                          (req.kind.value,)))
        elif self.state is State.ESTABLISHED and self._unsent_deletes:
            times.append((self.last_rx, "Delete of child SAs past their hard lifetime", ()))
        elif self.state is State.ESTABLISHED and (self._update_wanted is not None
                                                  or self._check_wanted is not None
                                                  or self._announce_wanted):
            times.append((self._clock, "MOBIKE request waiting for the window", ()))
        elif self.state is State.ESTABLISHED:
            if self.config and self.config.dpd_interval > 0:
                times.append((self.last_rx + self.config.dpd_interval,
                              "liveness check (DPD) unless something comes", ()))
            times += [(c.rekey_at, "rekey of child SA %#010x", (c.spi_in,))
                      for c in self.children if c.rekey_at is not None]
            if self.ike_rekey_at is not None and not self.rekeyed:
                times.append((self.ike_rekey_at, "IKE SA rekey", ()))
            times += [(at, "asking for child SA %s (refused, or not asked for yet)",
                       (name,)) for name, at in self._wanted.items()]
        elif self.state is State.INIT_DONE:
            times.append((self.created + self.half_open_timeout, "half-open timeout", ()))
        return min(times, key=lambda d: d[0]) if times else None

    def get_timer(self) -> float | None:
        """The next deadline: a retransmission, a lifetime, a liveness check, or None.
        When it changes, a DEBUG line says when and what for."""
        d = self._deadline()
        if d != self._logged_deadline:
            self._logged_deadline = d
            if d is not None and log.isEnabledFor(logging.DEBUG):
                self._debug("next deadline in %.1f s: " + d[1], max(d[0] - self._clock, 0.0),
                            *d[2])
        return d[0] if d is not None else None

    def handle_timer(self, now: float) -> None:
        """Whatever is due at ``now``: hard lifetimes, then one of: the Delete of expired
        child SAs, a retransmission, the half-open timeout, a rekey, asking again for a
        refused child SA, or a liveness check."""
        if self.state is State.DEAD:
            return
        self._clock = now
        self.fragments.expire(now)
        for c in [c for c in self.children if c.expire_at is not None and c.expire_at <= now]:
            # past its hard lifetime without a rekey: it may not carry traffic any longer
            self._debug("child SA %#010x is past its hard lifetime without a rekey: "
                        "deleting it", c.spi_in)
            self._child_down(c)
            self._unsent_deletes.append(c)
        if (self._unsent_deletes and self._request is None
                and self.state is State.ESTABLISHED):
            gone, self._unsent_deletes = self._unsent_deletes, []
            self._delete_children(gone, now)
            return
        if self._request is not None:
            self._retransmit(self._request, now)
            return
        if self.state is State.INIT_DONE and now >= self.created + self.half_open_timeout:
            self._die("half-open IKE SA timed out", DownCause.TIMED_OUT)
            return
        if self.state is State.ESTABLISHED:
            self._start_due(now)

    def _retransmit(self, req: Request, now: float) -> None:
        if now < self._retransmit_at(req):
            return
        tries = self._tries()
        if req.tries >= tries:
            self._die(f"no response to {req.kind.value} after {req.tries} tries",
                      DownCause.NO_RESPONSE)
            return
        req.tries += 1
        req.sent_at = now
        if log.isEnabledFor(logging.DEBUG):
            self._debug("retransmitting %s request %d (try %d of %d) to %s (%d bytes)",
                        exchange_name(req.exchange), req.message_id, req.tries, tries,
                        format_addr(self.remote), sum(map(len, req.datagrams)))
        self._send_request(req)

    def _start_due(self, now: float) -> None:
        """With the window free: an IKE SA rekey, a child SA rekey, asking again for a
        child SA or one of our configuration not asked for yet, or a liveness check, the first
        that is due."""
        cfg = self.config
        if self._start_mobike(now):  # a path to update goes first (RFC 4555 section 3.5)
            return
        if self.ike_rekey_at is not None and now >= self.ike_rekey_at and not self.rekeyed:
            self.ike_rekey_at = None
            if self._ike_rekey_retry:
                self._debug("IKE SA rekey due: a retry after TEMPORARY_FAILURE")
            else:
                self._debug("IKE SA rekey due: time (its soft lifetime, ike_rekey_time "
                            "%.0f s less jitter)", cfg.ike_rekey_time if cfg else 0.0)
            self._ike_rekey_retry = False
            self.rekey_ike(now)
            return
        due = [c for c in self.children if c.rekey_at is not None and c.rekey_at <= now]
        if due:
            child = due[0]
            child.rekey_at = None  # one attempt per soft lifetime
            why = ("a retry after TEMPORARY_FAILURE" if child.rekey_retry else
                   f"time (its soft lifetime, rekey_time {cfg.child_rekey_time if cfg else 0:.0f}"
                   " s less jitter)")
            child.rekey_retry = False
            self.rekey_child(child.spi_in, now, reason=why)
            return
        wanted = self._next_wanted(now)
        if wanted is not None:
            self.create_child(now, child=wanted)
            return
        if cfg and cfg.dpd_interval > 0 and now >= self.last_rx + cfg.dpd_interval:
            self.check_liveness(now)


ResponseHandler = Callable[[IkeSa, Message, bytes, float, Request], None]
RequestHandler = Callable[[IkeSa, Message, float], None]

#: what the response to each kind of request of ours does
ON_RESPONSE: Final[dict[RequestKind, ResponseHandler]] = {
    RequestKind.IKE_SA_INIT: IkeSa._on_init_response,
    RequestKind.IKE_AUTH: IkeSa._on_auth_response,
    RequestKind.CREATE_CHILD: IkeSa._on_create_child_response,
    RequestKind.LIVENESS_CHECK: IkeSa._on_answered,
    RequestKind.REKEY_CHILD: IkeSa._on_rekey_child_response,
    RequestKind.REKEY_IKE: IkeSa._on_rekey_ike_response,
    RequestKind.DELETE_CHILD: IkeSa._on_answered,
    RequestKind.DELETE_IKE: IkeSa._on_ike_deleted,
    RequestKind.UPDATE_ADDRESSES: IkeSa._on_update_response,
    RequestKind.ROUTABILITY: IkeSa._on_check_response,
    RequestKind.ADDRESSES: IkeSa._on_addresses_answered,
    RequestKind.ME_CONNECT: IkeSa._on_me_connect_answered,
}
assert set(ON_RESPONSE) == set(RequestKind)

#: the peer's requests we answer, by (exchange type, our state); any other request is
#: answered with INVALID_SYNTAX
ON_REQUEST: Final[dict[tuple[int, State], RequestHandler]] = {
    (ExchangeType.IKE_AUTH, State.INIT_DONE): IkeSa._on_auth_request,
    (ExchangeType.INFORMATIONAL, State.ESTABLISHED): IkeSa._on_informational,
    (ExchangeType.CREATE_CHILD_SA, State.ESTABLISHED): IkeSa._on_create_child_sa,
    (ME_CONNECT, State.ESTABLISHED): IkeSa._me_connect_request,
}
