"""MOBIKE (RFC 4555), both sides, in the IKE SA core: moving an IKE SA and its child SAs to
new addresses without a rekey (the SPIs stay).

- Section 3.2: MOBIKE_SUPPORTED in IKE_AUTH both ways (``initial``); ``mobike`` says whether
  both sent it. Section 3.3: MOBIKE implies the NAT-T port: the initiator sends its updates
  from port 4500 (moving there with the first one if no NAT put it there before).
- Section 3.5, the initiator: ``update_addresses`` sends UPDATE_SA_ADDRESSES in an
  INFORMATIONAL request with fresh NAT_DETECTION_SOURCE_IP / DESTINATION_IP hashes (both
  SPIs) and a COOKIE2 (3.7), which the answer must echo or the IKE SA is closed. A change
  while a request of ours is outstanding waits for the window, and a change during an
  update makes another update after it.
- Section 3.5, the responder: an authenticated UPDATE_SA_ADDRESSES moves the IKE SA to the
  address and port it came from, NAT detection is done again, and the answer carries our
  hashes and the echoed COOKIE2. The child SAs (``PathUpdated``) follow at once to an
  address this SA has already seen answer, and to any other only after a return
  routability check (3.7, 5.2): an INFORMATIONAL request with a COOKIE2 to the new address,
  answered.
- Section 3.4: ADDITIONAL_IP4_ADDRESS / ADDITIONAL_IP6_ADDRESS (or NO_ADDITIONAL_ADDRESSES),
  in IKE_AUTH and in INFORMATIONAL requests, parsed into ``peer_addresses`` (kept for path
  selection); ours (``own_addresses``) announced with ``announce_addresses``.
- Section 3.9: NAT_PREVENTION (NO_NATS_ALLOWED) in an update whose addresses the IP header
  contradicts is answered with UNEXPECTED_NAT_DETECTED; UNACCEPTABLE_ADDRESSES and
  UNEXPECTED_NAT_DETECTED in the answer to our update are logged as errors and move nothing.
- Every INFORMATIONAL answer echoes a COOKIE2 (3.7), and a request with NAT detection
  notifies (strongSwan's MOBIKE liveness checks) is answered with ours (3.8).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

from ..addr import Addr, format_addr, sockaddr
from ..constants import IKE_PORT, MOBIKE_COOKIE2_LEN, NAT_T_PORT, ExchangeType, NotifyType
from .base import MobikeContext, Request, RequestKind, SaCore, State, log, nat_hash, notify_name
from .events import DownCause, PathUpdated
from .message import Message, Notify, Payload

#: Section 3.3: an implementation with MOBIKE and NAT-T changes to port 4500 when the peer
#: has both, NAT or not. Off: the initiator moves there with its first update instead, so
#: that an SA that never moves stays where it is (on port 500 without a NAT, as the lab's
#: IPv6 test, tests/lab/test_ports_families.py, expects); on: right after IKE_AUTH
NATT_AFTER_AUTH = False

#: the notifies that refuse our update (section 3.5, 3.9)
UPDATE_REFUSALS = frozenset({NotifyType.UNACCEPTABLE_ADDRESSES,
                             NotifyType.UNEXPECTED_NAT_DETECTED})


def _ip(addr: str) -> str:
    return str(ipaddress.ip_address(addr.split("%", 1)[0]))


class MobikeExchanges(SaCore):
    """MOBIKE's INFORMATIONAL exchanges (RFC 4555)."""

    # --- what the manager asks ---------------------------------------------------------------
    def update_addresses(self, local: Addr, now: float, reason: str,
                         remote: Addr | None = None) -> bool:
        """The initiator's address or path changed (or the operator asks): send
        UPDATE_SA_ADDRESSES from ``local`` now, or as soon as the window is free; to
        ``remote`` if given (a path the initiator chose: the TURN relay or a direct one,
        section 3.5; a request outstanding is retransmitted there too). False if MOBIKE is
        not in use on this SA (not negotiated, not the initiator, not up)."""
        if not (self.mobike and self.initiator and self.state is State.ESTABLISHED):
            return False
        if remote is not None:
            self.remote = remote
        if local != self.local:
            self._debug("MOBIKE: our address is now %s (was %s): %s", format_addr(local),
                        format_addr(self.local), reason)
        self.local = local
        self._update_wanted = reason
        if self._request is None:
            self._start_mobike(now)
        return True

    def announce_addresses(self, addresses: tuple[str, ...], now: float) -> bool:
        """Our addresses (section 3.4): kept for IKE_AUTH, and on an SA with MOBIKE up
        announced to the peer in an INFORMATIONAL request when they changed."""
        own = tuple(dict.fromkeys(_ip(a) for a in addresses))
        if own == self.own_addresses:
            return False
        self.own_addresses = own
        if not (self.mobike and self.state is State.ESTABLISHED):
            return False
        self._announce_wanted = True
        if self._request is None:
            self._start_mobike(now)
        return True

    def _mobike_negotiated(self, msg: Message) -> None:
        """IKE_AUTH is done (``msg``: the peer's IKE_AUTH message): the address it came
        from is proven; MOBIKE is in use if both sent MOBIKE_SUPPORTED (section 3.2), and
        the peer's addresses are kept (3.4). The initiator moves to the NAT-T port (3.3)
        with its first update (``_send_update``), not before: an SA that never moves stays
        where it is, as without MOBIKE."""
        self.verified.add(_ip(self.remote[0]))
        if (self.config is None or not self.config.mobike
                or msg.notify(NotifyType.MOBIKE_SUPPORTED) is None):
            return
        self.mobike = True
        self._take_addresses(msg)
        self._debug("MOBIKE negotiated (RFC 4555 section 3.2)")
        if NATT_AFTER_AUTH and self.initiator:
            self._to_natt_port("after IKE_AUTH")

    def _to_natt_port(self, when: str) -> None:
        """Section 3.3: MOBIKE implies the NAT-T port (4500, with the non-ESP marker)."""
        if self.natt:
            return
        before = self.remote
        self.natt = True
        if self.remote[1] == IKE_PORT:
            self.remote = sockaddr(self.remote[0], NAT_T_PORT)
        self._debug("MOBIKE: moving to the NAT-T port %s (RFC 4555 section 3.3): %s -> %s",
                    when, format_addr(before), format_addr(self.remote))

    # --- payloads ------------------------------------------------------------------------------
    def _mobike_supported(self) -> list[Payload]:
        """What IKE_AUTH carries with MOBIKE (sections 3.2, 3.4): MOBIKE_SUPPORTED and our
        additional addresses."""
        if self.config is None or not self.config.mobike:
            return []
        return [Notify(NotifyType.MOBIKE_SUPPORTED), *self._additional_addresses(False)]

    def _additional_addresses(self, explicit_none: bool) -> list[Payload]:
        """ADDITIONAL_IP4/6_ADDRESS for our addresses other than the IKE SA's own; if none,
        NO_ADDITIONAL_ADDRESSES when ``explicit_none`` (an announcement, section 3.4)."""
        mine = _ip(self.local[0])
        out: list[Payload] = [Notify.additional_address(ipaddress.ip_address(a))
                              for a in self.own_addresses if a != mine]
        if not out and explicit_none:
            out.append(Notify(NotifyType.NO_ADDITIONAL_ADDRESSES))
        return out

    def _nat_detection(self) -> list[Payload]:
        """NAT_DETECTION_SOURCE_IP and _DESTINATION_IP with both SPIs (section 3.5)."""
        return [Notify(NotifyType.NAT_DETECTION_SOURCE_IP,
                       nat_hash(self.spi_i, self.spi_r, self.local)),
                Notify(NotifyType.NAT_DETECTION_DESTINATION_IP,
                       nat_hash(self.spi_i, self.spi_r, self.remote))]

    def _take_addresses(self, msg: Message) -> None:
        """The peer's additional addresses (section 3.4), if the message lists them: a
        list replaces the last one; NO_ADDITIONAL_ADDRESSES empties it."""
        found: list[str] = []
        listed = False
        for n in msg.notifies():
            if n.notify_type in (NotifyType.ADDITIONAL_IP4_ADDRESS,
                                 NotifyType.ADDITIONAL_IP6_ADDRESS):
                listed = True
                try:
                    found.append(str(n.address()))
                except ValueError as e:
                    self._debug("MOBIKE: %s ignored", e)
            elif n.notify_type == NotifyType.NO_ADDITIONAL_ADDRESSES:
                listed = True
        if listed:
            self.peer_addresses = tuple(dict.fromkeys(found))
            self._debug("MOBIKE: the peer's additional addresses: %s",
                        ", ".join(self.peer_addresses) or "none")

    def _nat_from(self, msg: Message, remote: Addr) -> bool:
        """NAT detection again (section 3.5) from the hashes in ``msg``, the peer seen at
        ``remote``: False if the message has none."""
        srcs = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
        dsts = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
        if not srcs or not dsts:
            return False
        self.remote_behind_nat = nat_hash(self.spi_i, self.spi_r, remote) not in srcs
        self.local_behind_nat = nat_hash(self.spi_i, self.spi_r, self.local) not in dsts
        self._debug("MOBIKE: NAT detection: %s", "both sides behind a NAT"
                    if self.local_behind_nat and self.remote_behind_nat else
                    "this side behind a NAT" if self.local_behind_nat else
                    "the peer behind a NAT" if self.remote_behind_nat else "no NAT")
        return True

    # --- the initiator's requests ------------------------------------------------------------
    def _start_mobike(self, now: float) -> bool:
        """With the window free: a pending update, return routability check or address
        announcement, in that order; whether one went."""
        if self.state is not State.ESTABLISHED or self._request is not None:
            return False
        if self._update_wanted is not None:
            self._send_update(now)
        elif self._check_wanted is not None:
            self._send_check(now)
        elif self._announce_wanted:
            self._announce_wanted = False
            self._request_send(ExchangeType.INFORMATIONAL,
                               [*self._additional_addresses(True), *self._cookie2_payload()],
                               RequestKind.ADDRESSES, now, MobikeContext(self._cookie2))
        else:
            return False
        return True

    def _cookie2_payload(self) -> list[Payload]:
        self._cookie2 = os.urandom(MOBIKE_COOKIE2_LEN)
        return [Notify(NotifyType.COOKIE2, self._cookie2)]

    def _send_update(self, now: float) -> None:
        reason, self._update_wanted = self._update_wanted, None
        self._to_natt_port("with the first update")
        self._debug("MOBIKE: UPDATE_SA_ADDRESSES from %s to %s (%s)", format_addr(self.local),
                    format_addr(self.remote), reason)
        payloads: list[Payload] = [Notify(NotifyType.UPDATE_SA_ADDRESSES),
                                   *self._nat_detection(), *self._cookie2_payload()]
        self._request_send(ExchangeType.INFORMATIONAL, payloads, RequestKind.UPDATE_ADDRESSES,
                           now, MobikeContext(self._cookie2))

    def _send_check(self, now: float) -> None:
        self._check_wanted = None
        self._debug("MOBIKE: return routability check of %s (section 3.7)",
                    format_addr(self.remote))
        self._request_send(ExchangeType.INFORMATIONAL, self._cookie2_payload(),
                           RequestKind.ROUTABILITY, now,
                           MobikeContext(self._cookie2, checks=self.remote))

    def _cookie2_echoed(self, msg: Message, req: Request) -> bool:
        """Section 3.7: the answer echoes our COOKIE2, or the IKE SA is closed."""
        ctx = req.context
        assert isinstance(ctx, MobikeContext)
        got = msg.notify(NotifyType.COOKIE2)
        if got is not None and hmac.compare_digest(got.data, ctx.cookie2):
            return True
        log.warning("%s: MOBIKE: the answer to our %s %s COOKIE2: closing the IKE SA (RFC "
                    "4555 section 3.7)", self._tag(), req.kind.value,
                    "lacks the" if got is None else "does not echo our")
        self._die(f"COOKIE2 not echoed in the answer to our {req.kind.value}",
                  DownCause.FAILED)
        return False

    def _on_update_response(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        self._request = None
        if not self._cookie2_echoed(msg, req):
            return
        refused = next((n for n in msg.notifies() if n.notify_type in UPDATE_REFUSALS), None)
        if refused is not None:
            log.warning("%s: MOBIKE: the peer refused our new address %s: %s (RFC 4555 "
                        "section %s); the SAs stay as they were", self._tag(),
                        format_addr(self.local), notify_name(refused.notify_type),
                        "3.9" if refused.notify_type == NotifyType.UNEXPECTED_NAT_DETECTED
                        else "3.5")
        elif any(n.is_error for n in msg.notifies()):
            log.warning("%s: MOBIKE: UPDATE_SA_ADDRESSES answered with %s", self._tag(),
                        ", ".join(notify_name(n.notify_type) for n in msg.notifies()))
        else:
            self._nat_from(msg, self.remote)
            self.path_updates += 1
            self._events.append(PathUpdated(self._me(), self.remote, self.local_behind_nat,
                                            self.remote_behind_nat))
        self._start_mobike(now)

    def _on_check_response(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        self._request = None
        if not self._cookie2_echoed(msg, req):
            return
        ctx = req.context
        assert isinstance(ctx, MobikeContext) and ctx.checks is not None
        self._debug("MOBIKE: return routability of %s confirmed", format_addr(ctx.checks))
        self.verified.add(_ip(ctx.checks[0]))
        if ctx.checks == self.remote:
            self._events.append(PathUpdated(self._me(), self.remote, self.local_behind_nat,
                                            self.remote_behind_nat))
        self._start_mobike(now)

    def _on_addresses_answered(self, msg: Message, raw: bytes, now: float,
                               req: Request) -> None:
        self._request = None
        if self._cookie2_echoed(msg, req):
            self._start_mobike(now)

    # --- the peer's requests -----------------------------------------------------------------
    def _mobike_answer(self, msg: Message) -> list[Payload]:
        """What any INFORMATIONAL answer adds: the peer's address list taken; NAT detection
        answered with ours (3.8); COOKIE2 echoed (3.7)."""
        if self.mobike:
            self._take_addresses(msg)
        out: list[Payload] = []
        if self.mobike and msg.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None:
            out += self._nat_detection()
        cookie2 = msg.notify(NotifyType.COOKIE2)
        if cookie2 is not None and cookie2.cookie2_ok():
            out.append(Notify(NotifyType.COOKIE2, cookie2.data))
        return out

    def _nat_prevented(self, msg: Message, source: Addr) -> bool:
        """Section 3.9: NO_NATS_ALLOWED whose addresses are not those of the IP header."""
        n = msg.notify(NotifyType.NO_NATS_ALLOWED)
        if n is None:
            return False
        try:
            src, dst, sport, dport = n.nats_allowed_addresses()
        except ValueError:
            return True
        return ((str(src), sport, str(dst), dport)
                != (_ip(source[0]), source[1], _ip(self.local[0]), self.local[1]))

    def _on_update_request(self, msg: Message, now: float) -> None:
        """Section 3.5: the peer (the initiator) moved; follow it."""
        mid = msg.header.message_id
        source, natt = self._reply_to if self._reply_to is not None else (self.remote,
                                                                         self.natt)
        if not self.mobike or self.initiator:
            self._debug("UPDATE_SA_ADDRESSES ignored: %s", "MOBIKE was not negotiated"
                        if not self.mobike else "only the initiator updates (section 3.5)")
            self._respond(ExchangeType.INFORMATIONAL, mid, self._mobike_answer(msg))
            return
        if self._nat_prevented(msg, source):
            log.warning("%s: MOBIKE: UPDATE_SA_ADDRESSES from %s with NO_NATS_ALLOWED, but a "
                        "NAT changed its addresses: refused with UNEXPECTED_NAT_DETECTED (RFC "
                        "4555 section 3.9)", self._tag(), format_addr(source))
            self._respond(ExchangeType.INFORMATIONAL, mid,
                          [Notify(NotifyType.UNEXPECTED_NAT_DETECTED),
                           *self._mobike_answer(msg)])
            return
        before = self.remote
        self.remote, self.natt = source, self.natt or natt
        to = self._came_to
        if to is not None:  # our side of the new path: the socket's port, and its address
            ip = to[0] if not ipaddress.ip_address(_ip(to[0])).is_unspecified else self.local[0]
            self.local = sockaddr(ip, to[1])
        self._nat_from(msg, source)
        self._respond(ExchangeType.INFORMATIONAL, mid, self._mobike_answer(msg))
        self.path_updates += 1
        if log.isEnabledFor(logging.DEBUG):
            self._debug("MOBIKE: the peer moved from %s to %s", format_addr(before),
                        format_addr(source))
        if _ip(source[0]) in self.verified:
            self._events.append(PathUpdated(self._me(), self.remote, self.local_behind_nat,
                                            self.remote_behind_nat))
        else:  # sections 3.7, 5.2: a new address answers before traffic goes there
            self._check_wanted = source
            self._start_mobike(now)
