"""What an IKE SA hands out: messages to send (``Outgoing``) and events (child SAs up and down,
the IKE SA up, down or replaced by a rekey). The IKE manager pulls both from each SA
(``IkeSa.datagrams_to_send``, ``IkeSa.next_event``) and hands the messages on to the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from ..addr import Addr, Network
from ..esp.suite import Suite

if TYPE_CHECKING:
    from .sa import IkeSa


@dataclass(frozen=True)
class Outgoing:
    data: bytes
    remote: Addr
    #: send from the NAT-T port (4500) with the non-ESP marker, else from port 500
    natt: bool


@dataclass(frozen=True)
class ChildUp:
    """A child SA pair to install: ``spi_in``/``keymat_in`` for what we receive."""

    ike: IkeSa
    spi_in: int
    spi_out: int
    suite: Suite
    esn: bool
    keymat_in: bytes
    keymat_out: bytes
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    #: the inbound SPI of the child SA this one replaces (a rekey), else None
    replaces: int | None = None


@dataclass(frozen=True)
class ChildDown:
    ike: IkeSa
    spi_in: int
    spi_out: int


@dataclass(frozen=True)
class ChildRefused:
    """The peer refused a child SA we asked for (an error notify in the IKE_AUTH or
    CREATE_CHILD_SA response, such as NO_PROPOSAL_CHOSEN or TS_UNACCEPTABLE): the IKE SA
    stays; ``reason`` says why in words, and ``retry_at`` when we ask again (None: never)."""

    ike: IkeSa
    reason: str
    retry_at: float | None = None


@dataclass(frozen=True)
class IkeUp:
    ike: IkeSa
    remote: Addr
    local_behind_nat: bool
    remote_behind_nat: bool


class DownCause(Enum):
    """Why an IKE SA went (``IkeDown.cause``); ``IkeDown.reason`` says it in words."""

    #: we deleted it (an INFORMATIONAL Delete, or dropped before it was up)
    DELETED = "deleted"
    DELETED_BY_PEER = "deleted by the peer"
    #: the peer sent INITIAL_CONTACT in a newer IKE SA: it has forgotten this one (2.4)
    REPLACED = "replaced"
    #: our request went unanswered after every retransmission (section 2.1)
    NO_RESPONSE = "no response"
    #: a responder SA that never saw IKE_AUTH
    TIMED_OUT = "timed out"
    #: refused with an error notify, by the peer or by us
    REFUSED = "refused"
    AUTHENTICATION_FAILED = "authentication failed"
    #: an answer we cannot use (malformed, or choosing what we did not offer)
    FAILED = "failed"


@dataclass(frozen=True)
class IkeDown:
    ike: IkeSa
    reason: str
    cause: DownCause


@dataclass(frozen=True)
class IkeRekeyed:
    """This IKE SA was replaced by ``new`` (its children moved there)."""

    old: IkeSa
    new: IkeSa


@dataclass(frozen=True)
class PathUpdated:
    """MOBIKE (RFC 4555 section 3.5): the IKE SA's addresses changed with an authenticated
    UPDATE_SA_ADDRESSES exchange (and, where it is due, a return routability check, 3.7):
    its child SAs go to ``remote`` now (port 4500), NAT keepalives as ``local_behind_nat``
    says."""

    ike: IkeSa
    remote: Addr
    local_behind_nat: bool
    remote_behind_nat: bool


Event = ChildUp | ChildDown | ChildRefused | IkeUp | IkeDown | IkeRekeyed | PathUpdated
