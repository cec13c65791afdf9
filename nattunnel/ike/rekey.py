"""IKE SA rekeys both ways (RFC 7296 sections 1.3.2, 2.18): the new IKE SA takes over the
children; simultaneous rekeys (2.8.2) and rekeys colliding with deletes (2.25.2).
"""

from __future__ import annotations

import os

from ..constants import IKE_SPI_LEN, ExchangeType, NotifyType, ProtocolId
from . import crypto as kc
from .base import (
    NONCE_LEN,
    IkeError,
    RekeyIkeContext,
    Request,
    RequestKind,
    SaCore,
    State,
    retry_delay,
    spi_bytes,
)
from .events import IkeRekeyed
from .message import KE, SA, Delete, Message, Nonce, Payload, ike_proposal
from .proposals import pick_ike

#: the requests of ours during which the peer may not rekey this IKE SA (section 2.25.2)
#: (creating, rekeying or closing a child SA, or closing this one)
_BUSY = frozenset({RequestKind.CREATE_CHILD, RequestKind.REKEY_CHILD, RequestKind.DELETE_CHILD,
                   RequestKind.DELETE_IKE})


class IkeRekeyExchanges(SaCore):
    """CREATE_CHILD_SA for the IKE SA itself."""

    # --- responder ---------------------------------------------------------------------------
    def _on_rekey_ike(self, msg: Message, sa: SA, nonce: Nonce, now: float) -> None:
        """Section 1.3.2: the peer replaces this IKE SA; we answer and hand over."""
        assert self.config is not None
        req = self._request
        if req is not None and req.kind in _BUSY:
            # section 2.25.2: not while we are rekeying or closing a child SA of this one,
            # or closing this one
            raise IkeError(NotifyType.TEMPORARY_FAILURE, "another exchange is under way")
        if self.rekeyed:
            raise IkeError(NotifyType.TEMPORARY_FAILURE, "this IKE SA was rekeyed already")
        offered = [p for p in sa.proposals if p.protocol == ProtocolId.IKE]
        if any(len(p.spi) != IKE_SPI_LEN or p.spi == bytes(IKE_SPI_LEN) for p in offered):
            # section 3.3.1: in a rekey the SPI of an IKE proposal is the new SA's, 8 octets
            raise IkeError(NotifyType.INVALID_SYNTAX, "IKE SA rekey proposal without an SPI")
        ke = msg.get(KE)
        if ke is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "IKE SA rekey without KE")  # 1.3.2
        ours = self.config.ike_proposals
        # a proposal in the KE's group if any is acceptable; else the group we want
        chosen = pick_ike(sa, [p for p in ours if p.dh == ke.group])
        if chosen is None:
            other = pick_ike(sa, ours)
            if other is None:
                raise IkeError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal")
            raise IkeError(NotifyType.INVALID_KE_PAYLOAD, "wrong group",
                           other[1].dh.to_bytes(2, "big"))
        number, prop = chosen
        peer_prop = next(p for p in offered if p.number == number)
        kex = kc.KeyExchange(prop.dh)
        try:
            g_ir = kex.shared(ke.data)
        except ValueError as e:
            raise IkeError(NotifyType.INVALID_SYNTAX, f"bad KE: {e}") from None
        # the peer that starts the rekey is the new SA's initiator (section 2.18)
        new = self._successor(initiator=False, spi_i=peer_prop.spi, spi_r=spi_bytes(),
                              ni=nonce.data, nr=os.urandom(NONCE_LEN), prop=prop, g_ir=g_ir,
                              now=now)
        new.children = self.children
        self.children = []
        answer: list[Payload] = [
            SA([ike_proposal(number, encr=prop.encr, prf=prop.prf, dh=prop.dh,
                             key_length=prop.key_bits, spi=new.spi_r)]),
            Nonce(new._nr), KE(prop.dh, kex.public),
        ]
        self._respond(ExchangeType.CREATE_CHILD_SA, msg.header.message_id, answer)
        self._debug("IKE SA rekeyed by the peer: the new IKE SA is [%s]", new.spi_i.hex())
        self._events.append(IkeRekeyed(self._me(), new._me()))
        self.rekeyed = True  # the old SA lives until the peer deletes it
        if req is not None and req.kind is RequestKind.REKEY_IKE:
            self._debug("both sides rekey this IKE SA (section 2.8.2): the nonces decide "
                        "when the answer to ours comes")
            # section 2.8.2: we are rekeying it too. Answered as usual; which of the two new
            # SAs stays is decided by the nonces when the answer to ours comes
            self._peer_ike_rekey = (nonce.data, new._nr, new)
            new._rekeyed_from = self

    # --- initiator ---------------------------------------------------------------------------
    def rekey_ike(self, now: float) -> bool:
        """Replace this IKE SA with a new one (new SPIs and keys); children move over."""
        if (self._request is not None or self.state is not State.ESTABLISHED
                or self._proposal is None):
            return False
        prop = self._proposal
        kex = kc.KeyExchange(prop.dh)
        new_spi = spi_bytes()
        ni = os.urandom(NONCE_LEN)
        payloads: list[Payload] = [
            SA([ike_proposal(1, encr=prop.encr, prf=prop.prf, dh=prop.dh,
                             key_length=prop.key_bits, spi=new_spi)]),
            Nonce(ni), KE(prop.dh, kex.public),
        ]
        self._debug("IKE SA rekey started: the new IKE SA is to be [%s]", new_spi.hex())
        self._request_send(ExchangeType.CREATE_CHILD_SA, payloads, RequestKind.REKEY_IKE, now,
                           RekeyIkeContext(new_spi, ni, kex))
        return True

    def _on_rekey_ike_response(self, msg: Message, raw: bytes, now: float,
                               req: Request) -> None:
        self._rekey_ike_answered(msg, now, req)
        if self._closing_by_peer:  # see IkeSa._on_informational
            self._die_deleted_by_peer()

    def _rekey_ike_answered(self, msg: Message, now: float, req: Request) -> None:
        ctx = req.context
        assert isinstance(ctx, RekeyIkeContext) and self._proposal is not None
        self._request = None
        sa, nonce, ke = msg.get(SA), msg.get(Nonce), msg.get(KE)
        collision, self._peer_ike_rekey = self._peer_ike_rekey, None
        if collision is not None:
            collision[2]._rekeyed_from = None
        if (sa is None or nonce is None or ke is None or len(sa.proposals) != 1
                or ke.group != ctx.kex.group or len(sa.proposals[0].spi) != IKE_SPI_LEN
                or sa.proposals[0].spi == bytes(IKE_SPI_LEN)):
            # refused: keep this SA (or, if the peer's rekey of it went through, wait for
            # its Delete); after TEMPORARY_FAILURE try again a little later
            if msg.notify(NotifyType.TEMPORARY_FAILURE) is not None:
                self.ike_rekey_at = now + retry_delay()
                self._ike_rekey_retry = True
                self._debug("IKE SA rekey refused with TEMPORARY_FAILURE: trying again in "
                            "%.1f s", self.ike_rekey_at - now)
            else:
                self._debug("IKE SA rekey refused: keeping this IKE SA")
            return
        try:
            g_ir = ctx.kex.shared(ke.data)
        except ValueError:
            self._debug("IKE SA rekey: a bad KE in the answer, keeping this IKE SA")
            return
        new = self._successor(initiator=True, spi_i=ctx.spi, spi_r=sa.proposals[0].spi,
                              ni=ctx.ni, nr=nonce.data, prop=self._proposal, g_ir=g_ir,
                              now=now)
        self._events.append(IkeRekeyed(self._me(), new._me()))
        if collision is not None:
            # Section 2.8.2: both sides rekeyed this SA at once. The new SA made by the
            # exchange with the lowest of the four nonces is redundant; its initiator
            # deletes it, and the initiator of the other deletes the old SA.
            their_ni, our_nr, theirs = collision
            # (the peer deleting the old SA already means that its new SA stays)
            if self._closing_by_peer or min(ctx.ni, nonce.data, their_ni, our_nr) in (
                    ctx.ni, nonce.data):
                self._debug("IKE SA rekey collision (section 2.8.2): the peer's new IKE SA "
                            "[%s] wins; deleting ours [%s]", theirs.spi_i.hex(),
                            new.spi_i.hex())
                new.rekeyed = True  # ours goes; the peer deletes this one
                new._send_delete_ike(now)
                self._outputs += new.datagrams_to_send()
                return
            self._debug("IKE SA rekey collision (section 2.8.2): our new IKE SA [%s] wins; "
                        "the peer deletes its [%s]", new.spi_i.hex(), theirs.spi_i.hex())
            theirs.rekeyed = True  # theirs goes (the peer deletes it); ours takes over
            new.children, theirs.children = theirs.children, []
        new.children += self.children
        self.children = []
        self.rekeyed = True
        self._send_delete_ike(now)

    def _send_delete_ike(self, now: float) -> None:
        self._debug("sending a Delete of the IKE SA")
        self._request_send(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE)],
                           RequestKind.DELETE_IKE, now)
