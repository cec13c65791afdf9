"""Child SAs of an IKE SA: negotiating one as responder (in IKE_AUTH and CREATE_CHILD_SA) or
taking one from a response as initiator, and child SA rekeys both ways (RFC 7296 sections 1.3.1,
1.3.3, 2.8, 2.8.1 for simultaneous rekeys, 2.25.1 for a rekey of a child SA being deleted).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Sequence

from ..addr import Network
from ..constants import (
    CHILD_SPI_LEN,
    CfgAttribute,
    CfgType,
    ExchangeType,
    NotifyType,
    ProtocolId,
)
from . import crypto as kc
from .base import (
    NONCE_LEN,
    Child,
    CreateChildContext,
    DeleteChildContext,
    IkeError,
    RekeyChildContext,
    Request,
    RequestKind,
    SaCore,
    State,
    log,
    new_child_spi,
    notify_name,
    retry_delay,
)
from .config import ChildConfig, IkeConfig
from .events import ChildDown, DownCause
from .message import (
    CP,
    KE,
    SA,
    Delete,
    IkeDecodeError,
    Message,
    Nonce,
    Notify,
    Payload,
    TSi,
    TSr,
)
from .pool import Address
from .proposals import (
    EspProposal,
    Refusal,
    esp_answer,
    esp_offer,
    esp_spi_ok,
    narrow,
    pick_esp,
    suite_of,
    ts_networks,
)


def _nets(nets: Sequence[Network]) -> str:
    return ",".join(str(n) for n in nets) or "none"


#: what a CFG_REQUEST asks for, by address family (section 3.15.1)
_CP_ASK = {4: (CfgAttribute.INTERNAL_IP4_ADDRESS, CfgAttribute.INTERNAL_IP4_DNS),
           6: (CfgAttribute.INTERNAL_IP6_ADDRESS, CfgAttribute.INTERNAL_IP6_DNS)}


class ChildSaExchanges(SaCore):
    """Child SA negotiation and child SA rekeys; the configuration payload (section 3.15)
    that gives a road-warrior client its virtual IP addresses and DNS servers."""

    #: a client: the addresses the gateway assigned us (host prefixes) and its DNS servers;
    #: a gateway: the addresses we assigned the peer (from the peer's ``pools``)
    virtual_ips: tuple[Network, ...] = ()
    virtual_dns: tuple[Address, ...] = ()
    peer_virtual_ips: tuple[Network, ...] = ()

    # --- the configuration payload (section 3.15) --------------------------------------------
    def _cp_request(self) -> list[Payload]:
        """The CFG_REQUEST of a client with ``vips``: an address and DNS per family."""
        assert self.config is not None
        attrs: list[tuple[int, bytes]] = [(a, b"") for v in self.config.vips
                                          for a in _CP_ASK[v]]
        return [CP(CfgType.CFG_REQUEST, attrs)] if attrs else []

    def _cp_reply_taken(self, msg: Message) -> str | None:
        """A client takes the gateway's CFG_REPLY; the reason it cannot, or None."""
        try:
            cp = CP.of(msg)
            if cp is None or cp.cfg_type != CfgType.CFG_REPLY:
                return "no CFG_REPLY (configuration payload) in the IKE_AUTH response"
            addrs, dns = cp.addresses(), cp.dns()
        except IkeDecodeError as e:
            return f"a bad CFG_REPLY: {e}"
        if not addrs:
            return "the CFG_REPLY assigns no address"
        self.virtual_ips, self.virtual_dns = tuple(addrs), tuple(dns)
        log.info("peer %s: virtual IP %s assigned by the gateway%s", self.name,
                 ", ".join(str(a.network_address) for a in addrs),
                 f", DNS {', '.join(map(str, dns))}" if dns else "")
        return None

    def _cp_answer(self, msg: Message, config: IkeConfig) -> tuple[list[Payload], bool]:
        """A gateway's answer to a CFG_REQUEST: a CFG_REPLY with an address from the peer's
        pools for each family asked for, and whether the child SA may go on (no address:
        INTERNAL_ADDRESS_FAILURE, section 3.15.4, and no child SA)."""
        try:
            cp = CP.of(msg)
        except IkeDecodeError as e:
            self._debug("ignoring a malformed CP payload: %s", e)
            cp = None
        if cp is None or cp.cfg_type != CfgType.CFG_REQUEST or not config.pools:
            return [], True
        asked = {v for v, (addr, _) in _CP_ASK.items()
                 if any(a == addr for a, _ in cp.attributes)}
        leases: list[Address] = []
        dns: list[Address] = []
        for version in sorted(asked):
            for pool in (p for p in config.pools if p.version == version):
                got = pool.acquire(config.name)
                if got is not None:
                    leases.append(got)
                    dns += [d for d in pool.dns if d not in dns]
                    break
        if not leases:
            log.warning("peer %s: no free address in its pools (%s) for IPv%s: answering "
                        "INTERNAL_ADDRESS_FAILURE", config.name,
                        ", ".join(p.name for p in config.pools),
                        "/".join(str(v) for v in sorted(asked)) or "?")
            return [Notify(NotifyType.INTERNAL_ADDRESS_FAILURE)], False
        self.peer_virtual_ips = tuple(ipaddress.ip_network(a) for a in leases)
        log.info("peer %s: assigned virtual IP %s", config.name,
                 ", ".join(map(str, leases)))
        return [CP.reply(leases, dns)], True

    # --- responder ---------------------------------------------------------------------------
    def _negotiate_child(self, msg: Message, ni: bytes, nr: bytes, ke_payload: KE | None,
                         replaces: int | None = None, *, pfs_allowed: bool = True
                         ) -> tuple[list[Payload], Callable[[], None] | None]:
        """Responder side of a child SA: the payloads to answer with, and a thunk that
        installs the child once the response is queued. Nothing changes before the thunk
        runs, so that an error answer leaves the SA as it was."""
        assert self.config is not None and self._prf is not None and self._keys is not None
        sa, tsi, tsr = msg.get(SA), msg.get(TSi), msg.get(TSr)
        if sa is None or tsi is None or tsr is None:
            self._debug("refusing the child SA: no SA, TSi or TSr in the request")
            return [Notify(NotifyType.NO_PROPOSAL_CHOSEN)], None
        choice = pick_esp(sa, self.config.esp_proposals, ke_payload, pfs=pfs_allowed)
        if isinstance(choice, Refusal):
            if log.isEnabledFor(logging.DEBUG):
                self._debug("refusing the child SA with %s: %s (ours: %s)",
                            notify_name(choice.notify), choice.reason,
                            " ".join(p.name for p in self.config.esp_proposals))
            return [Notify(choice.notify, choice.data)], None
        kex = kc.KeyExchange(choice.dh) if choice.dh is not None else None
        g_ir = b""
        if kex is not None:
            assert ke_payload is not None
            try:
                g_ir = kex.shared(ke_payload.data)
            except ValueError:  # wrong length, not on the curve, degenerate
                self._debug("refusing the child SA: a bad KE payload")
                return [Notify(NotifyType.INVALID_SYNTAX)], None
        # their TSi is their side (our remote), their TSr our side; narrowed to the first
        # child of our configuration that leaves something on both sides
        remote_ts: tuple[Network, ...] = ()
        local_ts: tuple[Network, ...] = ()
        for made_for in self.config.child_configs():
            remote_ts = tuple(narrow(tsi.selectors, self.peer_virtual_ips or made_for.remote_ts))
            local_ts = tuple(narrow(tsr.selectors, self.virtual_ips or made_for.local_ts))
            if remote_ts and local_ts:
                break
        if not remote_ts or not local_ts:
            if log.isEnabledFor(logging.DEBUG):
                self._debug("refusing the child SA with TS_UNACCEPTABLE: the peer offers TSi "
                            "%s, TSr %s; we allow remote %s, local %s",
                            _nets(ts_networks(tsi)), _nets(ts_networks(tsr)),
                            _nets(self.config.remote_ts), _nets(self.config.local_ts))
            return [Notify(NotifyType.TS_UNACCEPTABLE)], None
        spi_in = new_child_spi()
        spi_out = int.from_bytes(choice.proposal.spi, "big")
        payloads: list[Payload] = [esp_answer(choice, spi_in)]
        if kex is not None:
            payloads.append(KE(kex.group, kex.public))
        payloads += [TSi.of(*remote_ts), TSr.of(*local_ts)]
        suite = choice.mine.suite
        i2r, r2i = kc.child_keymat(self._prf, self._keys.sk_d, ni, nr, suite.keymat_len, g_ir)
        child = Child(spi_in, spi_out, suite, choice.esn, local_ts, remote_ts)

        def install() -> None:
            self._add_child(child, keymat_in=i2r, keymat_out=r2i, replaces=replaces,
                            made_for=made_for)

        return payloads, install

    def _rekeyed_child(self, rekey: Notify) -> int:
        """The inbound SPI of the child SA a REKEY_SA notify names (by its outbound SPI), or
        the error to answer with."""
        old_out = int.from_bytes(rekey.spi, "big")
        old = next((c for c in self.children if c.spi_out == old_out), None)
        if old is not None:
            return old.spi_in
        closing = [c.spi_out for c in self._unsent_deletes]
        req = self._request
        if req is not None and isinstance(req.context, DeleteChildContext):
            closing += req.context.closing
        if old_out in closing:
            # section 2.25.1: a rekey of a child SA we are closing
            raise IkeError(NotifyType.TEMPORARY_FAILURE, "child SA being deleted")
        raise IkeError(NotifyType.CHILD_SA_NOT_FOUND, "rekey of an unknown child SA")

    def _on_create_child(self, msg: Message, nonce: Nonce) -> None:
        """CREATE_CHILD_SA for a child SA: a new one, or a rekey (REKEY_SA)."""
        nr = os.urandom(NONCE_LEN)
        rekey = msg.notify(NotifyType.REKEY_SA)
        replaces = None
        if rekey is not None:
            replaces = self._rekeyed_child(rekey)
        elif len(self.children) >= self.max_children:
            raise IkeError(NotifyType.NO_ADDITIONAL_SAS,
                           f"already {len(self.children)} child SAs")
        payloads, install = self._negotiate_child(msg, nonce.data, nr, msg.get(KE), replaces)
        if install is not None:
            payloads.insert(1, Nonce(nr))
        self._respond(ExchangeType.CREATE_CHILD_SA, msg.header.message_id, payloads)
        if install is not None:
            install()
            if replaces is not None:
                self._peer_rekeys[replaces] = (nonce.data, nr, self.children[-1].spi_in)

    # --- initiator ---------------------------------------------------------------------------
    def _offered(self, child: ChildConfig) -> tuple[tuple[Network, ...], tuple[Network, ...]]:
        """The traffic selectors we offer for ``child``: ours (our virtual IP if we have
        one) and the peer's (the peer's virtual IP if we assigned it one)."""
        return (self.virtual_ips or child.local_ts, self.peer_virtual_ips or child.remote_ts)

    def _child_from_response(self, sa: SA, msg: Message, spi_in: int, ni: bytes, nr: bytes,
                             g_ir: bytes, replaces: int | None, *,
                             offered: tuple[tuple[Network, ...], tuple[Network, ...]],
                             made_for: ChildConfig | None) -> None:
        """We initiated the exchange, offering the selectors ``offered`` (ours, the peer's)
        for ``made_for`` (None: a rekey): keymat i->r is what we send."""
        assert self._prf is not None and self._keys is not None and self.config is not None
        prop = sa.proposals[0]
        found = suite_of(prop)
        if found is None or not esp_spi_ok(prop.spi):
            self._die("peer chose an ESP proposal we did not offer", DownCause.FAILED)
            return
        suite, esn = found
        spi_out = int.from_bytes(prop.spi, "big")
        i2r, r2i = kc.child_keymat(self._prf, self._keys.sk_d, ni, nr, suite.keymat_len, g_ir)
        ours, theirs = offered
        tsi, tsr = msg.get(TSi), msg.get(TSr)
        # section 2.9: the responder may narrow, never widen: keep what lies in ours
        local_ts = tuple(narrow(tsi.selectors, ours)) if tsi else ours
        remote_ts = tuple(narrow(tsr.selectors, theirs)) if tsr else theirs
        if not local_ts or not remote_ts:
            self._child_refused(f"the peer's traffic selectors (TSi {_nets(ts_networks(tsi))}, "
                                f"TSr {_nets(ts_networks(tsr))}) lie outside ours (local "
                                f"{_nets(ours)}, remote {_nets(theirs)})", self._clock,
                                child=made_for)
            return
        if (tsi and list(local_ts) != ts_networks(tsi)) or (
                tsr and list(remote_ts) != ts_networks(tsr)):
            log.warning("peer %s: the peer's traffic selectors go beyond ours; using local %s, "
                        "remote %s", self.name, _nets(local_ts), _nets(remote_ts))
        self._add_child(Child(spi_in, spi_out, suite, esn, local_ts, remote_ts),
                        keymat_in=r2i, keymat_out=i2r, replaces=replaces, made_for=made_for)

    def create_child(self, now: float, group: int | None = None, *,
                     child: ChildConfig | None = None) -> bool:
        """Ask for a new child SA with our proposals and the traffic selectors of ``child``
        (by default our first child; CREATE_CHILD_SA without REKEY_SA, section 1.3.1): the
        children of our configuration after the first, and one the peer refused. With PFS
        (a proposal that names a group) in ``group``, by default the first proposal's."""
        cfg = self.config
        if cfg is None or self._request is not None or self.state is not State.ESTABLISHED:
            return False
        if child is None:
            child = self._child_config(None)
        spi = new_child_spi()
        ni = os.urandom(NONCE_LEN)
        offer = []
        for number, p in enumerate(cfg.esp_proposals, 1):
            (prop,) = esp_offer([p], spi, p.dh).proposals  # each with its own PFS group
            prop.number = number
            offer.append(prop)
        if group is None and cfg.esp_proposals:
            group = cfg.esp_proposals[0].dh
        kex = kc.KeyExchange(group) if group else None
        payloads: list[Payload] = [SA(offer), Nonce(ni)]
        if kex is not None:
            payloads.append(KE(kex.group, kex.public))
        local_ts, remote_ts = self._offered(child)
        payloads += [TSi.of(*local_ts), TSr.of(*remote_ts)]
        self._debug("asking for child SA %s (CREATE_CHILD_SA): local %s, remote %s",
                    child.name, _nets(local_ts), _nets(remote_ts))
        self._request_send(ExchangeType.CREATE_CHILD_SA, payloads, RequestKind.CREATE_CHILD,
                           now, CreateChildContext(spi, ni, kex, child))
        return True

    def _on_create_child_response(self, msg: Message, raw: bytes, now: float,
                                  req: Request) -> None:
        """The answer to ``create_child``: the child SA, or a refusal (we ask again later,
        at once with the group an INVALID_KE_PAYLOAD names if we offered it)."""
        ctx = req.context
        assert isinstance(ctx, CreateChildContext) and self.config is not None
        self._request = None
        err = next((n for n in msg.notifies() if n.is_error), None)
        sa, nonce, ke = msg.get(SA), msg.get(Nonce), msg.get(KE)
        if err is not None and err.notify_type == NotifyType.INVALID_KE_PAYLOAD \
                and len(err.data) == 2:
            group = int.from_bytes(err.data, "big")
            if group in {p.dh for p in self.config.esp_proposals} and (
                    ctx.kex is None or group != ctx.kex.group):
                self._debug("the peer wants key exchange group %d for the new child SA", group)
                self.create_child(now, group, child=ctx.child)
                return
        if err is not None:
            delay = retry_delay() if err.notify_type == NotifyType.TEMPORARY_FAILURE else None
            self._child_refused(f"{notify_name(err.notify_type)} in the CREATE_CHILD_SA "
                                "response", now, delay, child=ctx.child)
            return
        if sa is None or nonce is None or len(sa.proposals) != 1:
            self._child_refused("no SA or Nonce in the CREATE_CHILD_SA response", now,
                                child=ctx.child)
            return
        g_ir = b""
        if ctx.kex is not None:
            if ke is None or ke.group != ctx.kex.group:
                self._child_refused("no KE of our group (PFS) in the CREATE_CHILD_SA response",
                                    now, child=ctx.child)
                return
            try:
                g_ir = ctx.kex.shared(ke.data)
            except ValueError as e:
                self._child_refused(f"a bad KE in the CREATE_CHILD_SA response: {e}", now,
                                    child=ctx.child)
                return
        child = ctx.child or self._child_config(None)
        self._child_from_response(sa, msg, ctx.spi_in, ctx.ni, nonce.data, g_ir, None,
                                  offered=self._offered(child), made_for=child)

    def rekey_child(self, spi_in: int, now: float, *,
                    reason: str = "asked for (a byte or packet lifetime, or by hand)") -> bool:
        """Start a rekey of the child SA with inbound SPI ``spi_in`` (make-before-break);
        ``reason`` is for the log."""
        assert self.config is not None
        child = next((c for c in self.children if c.spi_in == spi_in), None)
        if child is None or self._request is not None or self.state is not State.ESTABLISHED:
            return False
        self._debug("rekey of child SA %#010x started: %s", spi_in, reason)
        new_spi = new_child_spi()
        ni = os.urandom(NONCE_LEN)
        # PFS (section 1.3.1): a fresh key exchange if the proposal names a group
        pfs = next((p.dh for p in self.config.esp_proposals
                    if p.suite is child.suite and p.dh), None)
        kex = kc.KeyExchange(pfs) if pfs else None
        payloads: list[Payload] = [
            Notify(NotifyType.REKEY_SA, protocol=ProtocolId.ESP,
                   spi=child.spi_in.to_bytes(CHILD_SPI_LEN, "big")),
            esp_offer([EspProposal(child.suite, child.esn, pfs)], new_spi, pfs), Nonce(ni),
        ]
        if kex is not None:
            payloads.append(KE(kex.group, kex.public))
        payloads += [TSi.of(*child.local_ts), TSr.of(*child.remote_ts)]
        self._request_send(ExchangeType.CREATE_CHILD_SA, payloads, RequestKind.REKEY_CHILD,
                           now, RekeyChildContext(new_spi, ni, child.spi_in, kex,
                                                  child.local_ts, child.remote_ts))
        return True

    def _on_rekey_child_response(self, msg: Message, raw: bytes, now: float,
                                 req: Request) -> None:
        ctx = req.context
        assert isinstance(ctx, RekeyChildContext)
        self._request = None
        sa, nonce = msg.get(SA), msg.get(Nonce)
        if sa is None or nonce is None or len(sa.proposals) != 1:
            # refused (e.g. the peer's own rekey already replaced it): keep what we have
            self._peer_rekeys.pop(ctx.old, None)
            old = next((c for c in self.children if c.spi_in == ctx.old), None)
            err = next((notify_name(n.notify_type) for n in msg.notifies() if n.is_error),
                       "no SA or Nonce")
            if old is not None and msg.notify(NotifyType.TEMPORARY_FAILURE) is not None:
                old.rekey_at = now + retry_delay()  # section 2.25
                old.rekey_retry = True
                self._debug("rekey of child SA %#010x refused with TEMPORARY_FAILURE: "
                            "trying again in %.1f s", ctx.old, old.rekey_at - now)
            else:
                self._debug("rekey of child SA %#010x refused (%s): keeping it", ctx.old, err)
            return
        g_ir = b""
        if ctx.kex is not None:
            ke = msg.get(KE)
            if ke is None or ke.group != ctx.kex.group:
                self._debug("rekey of child SA %#010x: PFS refused, keeping it", ctx.old)
                return  # PFS refused: keep the old SA
            try:
                g_ir = ctx.kex.shared(ke.data)
            except ValueError:
                self._debug("rekey of child SA %#010x: a bad KE, keeping it", ctx.old)
                return
        self._child_from_response(sa, msg, ctx.spi_in, ctx.ni, nonce.data, g_ir, ctx.old,
                                  offered=(ctx.local_ts, ctx.remote_ts), made_for=None)
        self._drop_replaced(ctx, nonce.data, now)

    def _drop_replaced(self, ctx: RekeyChildContext, nr: bytes, now: float) -> None:
        """Make-before-break: the new SA is installed; now the old one goes, and after a
        collision (section 2.8.1) the redundant one too: the SA made by the exchange with
        the lowest of the four nonces is redundant, and its initiator deletes it."""
        doomed = []
        old = next((c for c in self.children if c.spi_in == ctx.old), None)
        if old is not None:
            doomed.append(old)
        collision = self._peer_rekeys.pop(ctx.old, None)
        if collision is not None:
            their_ni, our_nr, theirs = collision
            if min(ctx.ni, nr, their_ni, our_nr) in (ctx.ni, nr):
                mine = next((c for c in self.children if c.spi_in == ctx.spi_in), None)
                if mine is not None:
                    doomed.append(mine)
                self._debug("rekey collision on child SA %#010x (section 2.8.1): the peer's "
                            "new SA %#010x wins (ours has the lowest nonce); deleting ours "
                            "%#010x", ctx.old, theirs, ctx.spi_in)
            else:
                self._debug("rekey collision on child SA %#010x (section 2.8.1): our new SA "
                            "%#010x wins; the peer deletes its %#010x", ctx.old, ctx.spi_in,
                            theirs)
        for c in doomed:
            self.children.remove(c)
            self._events.append(ChildDown(self._me(), c.spi_in, c.spi_out))
        if doomed:
            self._delete_children(doomed, now)

    def _delete_children(self, children: list[Child], now: float) -> None:
        """An INFORMATIONAL Delete of these child SAs (already removed here)."""
        spis = [c.spi_in.to_bytes(CHILD_SPI_LEN, "big") for c in children]
        if log.isEnabledFor(logging.DEBUG):
            self._debug("sending a Delete of child SA(s) %s",
                        " ".join(f"{c.spi_in:#010x}" for c in children))
        self._request_send(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.ESP, spis)],
                           RequestKind.DELETE_CHILD, now,
                           DeleteChildContext(tuple(c.spi_out for c in children)))
