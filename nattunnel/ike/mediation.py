"""IKEv2 mediation (draft-brunner-ikev2-mediation) as strongSwan 5.9.8 speaks it, sans-I/O:
the mediation connection's IKE SA, and the ME_CONNECT exchange that carries the two peers'
candidates through the mediation server.

- ``MediationSa``: an ``IkeSa`` for the mediation connection. ME_MEDIATION goes in
  IKE_SA_INIT both ways (charon puts it there, not in IKE_AUTH); IKE_AUTH carries no child SA;
  a peer behind NAT asks for its server-reflexive address with an empty SERVER_REFLEXIVE
  ME_ENDPOINT in IKE_AUTH, and the server answers with the address and port it sees (charon's
  ``build_r_ms``). After IKE_SA_INIT the peer moves to port 4500 even without NAT (charon's
  ``float_ports``), so that the candidates and the checks use the tunnel's NAT-T socket.
- ME_CONNECT (exchange 240, protected like INFORMATIONAL): a request carries ID_PEER
  (payload 128, an ID payload's body) and ME_CONNECTID, ME_CONNECTKEY, ME_ENDPOINTs, and
  ME_CALLBACK (from the initiating peer: "tell me when the peer comes") or ME_RESPONSE (from
  the answering peer). The server answers a request at once: nothing, or ME_CONNECT_FAILED
  when the peer is not registered, and forwards it in a ME_CONNECT request of its own to the
  other peer (``MeConnect``); a peer answers a forwarded request with an empty response.

``nattunnel.ike.meserver`` holds the server's table and the peer's side (check lists in
``nattunnel.ike.mecheck``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..addr import Addr, format_addr
from ..constants import (
    ID_PEER,
    ME_CONNECT,
    ME_TYPE_SERVER_REFLEXIVE,
    ExchangeType,
    MeNotify,
    NotifyType,
)
from .base import (
    HALF_OPEN_TIMEOUT,
    MAX_CHILDREN,
    AuthContext,
    IkeError,
    Lookup,
    Request,
    RequestKind,
    State,
)
from .config import ChildConfig, Identity, IkeConfig
from .events import DownCause
from .mecheck import Candidate
from .message import (
    KE,
    SA,
    IDi,
    IDr,
    Message,
    Notify,
    Payload,
    UnknownPayload,
)
from .sa import IkeSa

#: ME_CONNECT requests that wait for the window (one outstanding request, section 2.3)
MAX_QUEUED = 16


def id_peer(identity: Identity) -> UnknownPayload:
    """ID_PEER: an ID payload's body (ID type, three reserved octets, the data)."""
    return UnknownPayload(ID_PEER, bytes([identity.id_type, 0, 0, 0]) + identity.data)


def parse_id_peer(msg: Message) -> Identity | None:
    for p in msg.payloads:
        if isinstance(p, UnknownPayload) and p.type_id == ID_PEER:
            if len(p.data) < 5:
                return None
            return Identity(p.data[0], p.data[4:])
    return None


@dataclass(frozen=True)
class MeConnect:
    """A ME_CONNECT request, either way. ``peer`` is ID_PEER: the peer to connect to (from a
    requester) or the peer that asks (from the server)."""

    peer: Identity
    connect_id: bytes = b""
    key: bytes = b""
    endpoints: tuple[Candidate, ...] = ()
    callback: bool = False
    response: bool = False

    def payloads(self) -> list[Payload]:
        out: list[Payload] = [id_peer(self.peer)]
        if self.callback and not self.connect_id:  # the server's callback: nothing else
            return [*out, Notify(MeNotify.ME_CALLBACK)]
        if self.response:
            out.append(Notify(MeNotify.ME_RESPONSE))
        out += [Notify(MeNotify.ME_CONNECTID, self.connect_id),
                Notify(MeNotify.ME_CONNECTKEY, self.key)]
        if self.callback:
            out.append(Notify(MeNotify.ME_CALLBACK))
        out += [Notify(MeNotify.ME_ENDPOINT, c.encode()) for c in self.endpoints]
        return out

    @classmethod
    def parse(cls, msg: Message) -> MeConnect | str:
        """The request, or why it is malformed (charon: INVALID_SYNTAX)."""
        peer = parse_id_peer(msg)
        if peer is None:
            return "ME_CONNECT without ID_PEER"
        callback = msg.notify(MeNotify.ME_CALLBACK) is not None
        cid, key = msg.notify(MeNotify.ME_CONNECTID), msg.notify(MeNotify.ME_CONNECTKEY)
        eps = []
        for n in msg.notifies(MeNotify.ME_ENDPOINT):
            try:
                eps.append(Candidate.decode(n.data))
            except ValueError:
                continue  # charon skips an invalid ME_ENDPOINT too
        if callback and cid is None:
            return cls(peer, callback=True)
        if cid is None or key is None:
            return "ME_CONNECT without ME_CONNECTID or ME_CONNECTKEY"
        if not eps:
            return "ME_CONNECT without ME_ENDPOINT"
        return cls(peer, cid.data, key.data, tuple(eps), callback,
                   msg.notify(MeNotify.ME_RESPONSE) is not None)


@dataclass(frozen=True)
class MeConnectIn:
    """A ME_CONNECT request came (the SA answered it: ``answer`` says with what)."""

    sa: MediationSa
    request: MeConnect


@dataclass(frozen=True)
class MeConnectAnswered:
    """The answer to our ME_CONNECT request: ``failed`` with ME_CONNECT_FAILED."""

    sa: MediationSa
    request: MeConnect
    failed: bool


MeEvent = MeConnectIn | MeConnectAnswered


@dataclass
class MeStats:
    requests_in: int = 0
    requests_out: int = 0
    malformed: int = 0
    failed: int = 0


MeDecider = Callable[["MediationSa", MeConnect], list[Payload]]


class MediationSa(IkeSa):
    """The IKE SA of a mediation connection, on the peer's side or the server's."""

    def __init__(self, config: IkeConfig | None, *, initiator: bool, local: Addr,
                 remote: Addr, now: float, lookup: Lookup | None = None,
                 max_children: int = MAX_CHILDREN,
                 half_open_timeout: float = HALF_OPEN_TIMEOUT, natt: bool = False) -> None:
        super().__init__(config, initiator=initiator, local=local, remote=remote, now=now,
                         lookup=lookup, max_children=max_children,
                         half_open_timeout=half_open_timeout, natt=natt)
        #: set by the owner: the answer's payloads to a ME_CONNECT request (the server's
        #: table decides; a peer answers with nothing)
        self.decide: MeDecider | None = None
        self.srflx: Addr | None = None  # our server-reflexive address (the peer's side)
        self._me_queue: deque[MeConnect] = deque()
        self._me_sent: MeConnect | None = None
        self.me_events: deque[MeEvent] = deque()
        self.me_stats = MeStats()

    # --- IKE_SA_INIT and IKE_AUTH ----------------------------------------------------------
    def _init_notifies(self) -> list[Payload]:
        return [Notify(MeNotify.ME_MEDIATION)]

    def _on_init_response(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        if msg.get(SA) is not None and msg.notify(MeNotify.ME_MEDIATION) is None:
            self._die("the server did not return ME_MEDIATION (not a mediation server)",
                      DownCause.REFUSED)
            return
        super()._on_init_response(msg, raw, now, req)

    def _send_auth(self, now: float) -> None:
        """IKE_AUTH of a mediation connection: the identities and AUTH, no child SA, and
        behind NAT the request for our server-reflexive address."""
        assert self.config is not None
        if not self.natt:
            self._switch_to_natt("a mediation connection moves to port 4500 (charon)")
        idi = IDi(self.config.local_id.id_type, self.config.local_id.data)
        rid = self.config.remote_id
        payloads: list[Payload] = [idi, Notify(NotifyType.INITIAL_CONTACT),
                                   IDr(rid.id_type, rid.data),
                                   self._auth_payload(idi.encode_body())]
        if self.local_behind_nat:
            payloads.append(Notify(MeNotify.ME_ENDPOINT,
                                   Candidate.of(ME_TYPE_SERVER_REFLEXIVE, None).encode()))
        self.state = State.AUTH_SENT
        self._request_send(ExchangeType.IKE_AUTH, payloads, RequestKind.IKE_AUTH, now,
                           AuthContext(0))

    def _on_auth_response(self, msg: Message, raw: bytes, now: float, req: Request) -> None:
        n = msg.notify(MeNotify.ME_ENDPOINT)
        if n is not None:
            try:
                c = Candidate.decode(n.data)
            except ValueError:
                c = None
            if c is not None and c.kind == ME_TYPE_SERVER_REFLEXIVE and c.addr is not None:
                self.srflx = c.addr
                self._debug("server-reflexive address from the mediation server: %s",
                            format_addr(c.addr))
        super()._on_auth_response(msg, raw, now, req)

    def _child_refused(self, reason: str, now: float, delay: float | None = None, *,
                       child: ChildConfig | None = None) -> None:
        """A mediation connection has no child SA, and asks for none."""

    def _negotiate_child(self, msg: Message, ni: bytes, nr: bytes, ke_payload: KE | None,
                         replaces: int | None = None, *, pfs_allowed: bool = True
                         ) -> tuple[list[Payload], Callable[[], None] | None]:
        """The server's IKE_AUTH response: no child SA; the server-reflexive address if the
        peer asked for it (the first ME_ENDPOINT is an empty SERVER_REFLEXIVE one)."""
        first = msg.notify(MeNotify.ME_ENDPOINT)
        if first is None:
            return [], None
        try:
            c = Candidate.decode(first.data)
        except ValueError:
            return [], None
        if c.kind != ME_TYPE_SERVER_REFLEXIVE:
            return [], None
        seen = self._reply_to[0] if self._reply_to is not None else self.remote
        self._debug("the peer asked for its server-reflexive address: %s", format_addr(seen))
        return [Notify(MeNotify.ME_ENDPOINT,
                       Candidate.of(ME_TYPE_SERVER_REFLEXIVE, seen).encode())], None

    # --- ME_CONNECT ------------------------------------------------------------------------
    def me_connect(self, request: MeConnect, now: float) -> bool:
        """Send a ME_CONNECT request (when the window is free); False if too many wait."""
        if len(self._me_queue) >= MAX_QUEUED:
            return False
        self._me_queue.append(request)
        self._me_flush(now)
        return True

    def _me_flush(self, now: float) -> None:
        if self.state is State.ESTABLISHED and self._request is None and self._me_queue:
            req = self._me_queue.popleft()
            self._me_sent = req
            self.me_stats.requests_out += 1
            self._request_send(ME_CONNECT, req.payloads(), RequestKind.ME_CONNECT, now)

    def _on_me_connect_response(self, msg: Message, now: float) -> None:
        self._request = None
        sent, self._me_sent = self._me_sent, None
        failed = msg.notify(MeNotify.ME_CONNECT_FAILED) is not None
        if failed:
            self.me_stats.failed += 1
        if sent is not None:
            self.me_events.append(MeConnectAnswered(self, sent, failed))
        self._me_flush(now)

    def _on_me_connect(self, msg: Message, now: float) -> None:
        parsed = MeConnect.parse(msg)
        if isinstance(parsed, str):
            self.me_stats.malformed += 1
            raise IkeError(NotifyType.INVALID_SYNTAX, parsed)
        self.me_stats.requests_in += 1
        answer = self.decide(self, parsed) if self.decide is not None else []
        self._respond(ME_CONNECT, msg.header.message_id, answer)
        self.me_events.append(MeConnectIn(self, parsed))

    # --- timers ----------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        t = super().get_timer()
        if self._me_queue and self._request is None and self.state is State.ESTABLISHED:
            return self._clock if t is None else min(t, self._clock)
        return t

    def handle_timer(self, now: float) -> None:
        super().handle_timer(now)
        self._me_flush(now)
