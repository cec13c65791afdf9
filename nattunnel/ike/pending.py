"""What the IKE manager (``nattunnel.ike.manager``) holds between two calls: the keys of its
timers besides the IKE SAs themselves, what waits for a local address, and the IKE SA of an
initiation whose IKE_SA_INIT request carries notifies of an extension (IKEv2 mediation's
ME_CONNECTID, ``nattunnel.io.mediated``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..addr import Addr
from .message import Message, Notify, Payload
from .sa import IkeSa


# --- the keys of the manager's timers, besides the IKE SAs themselves --------------------------
@dataclass(frozen=True)
class GraceEnd:
    """An old inbound SA goes when its grace period ends."""

    spi: int


@dataclass(frozen=True)
class Initiate:
    """Initiate to the peer (again)."""

    name: str


class Check(Enum):
    BYTE_LIFETIMES = "byte lifetimes"


@dataclass(frozen=True)
class LocalWaitEnd:
    """The wait for our local address towards (remote, natt) is given up."""

    remote: Addr
    natt: bool


TimerKey = IkeSa | GraceEnd | Initiate | Check | LocalWaitEnd


#: within one wakeup: the IKE SAs first, then grace periods, lifetimes, waits given up,
#: initiations
_RANK: dict[type, int] = {GraceEnd: 1, Check: 2, LocalWaitEnd: 3, Initiate: 4}


def timer_rank(key: TimerKey) -> int:
    return 0 if isinstance(key, IkeSa) else _RANK[type(key)]


# --- what waits for a local address ------------------------------------------------------------
@dataclass(frozen=True)
class InitWaiting:
    """An admitted IKE_SA_INIT request."""

    msg: Message
    data: bytes


@dataclass(frozen=True)
class InitiateWaiting:
    name: str
    #: asked for our plain IKE address only to learn our IKE port: whether the peer's port
    #: is a plain IKE port (``_natt_from_start``) is decided with the answer
    probe: bool = False


# --- an initiation with notifies of its own ------------------------------------------------------
class ExtraInitSa(IkeSa):
    """An IKE SA we initiate whose IKE_SA_INIT request (and its retries after a cookie or
    INVALID_KE_PAYLOAD) also carries ``extra``; an IKE SA that rekeys it has none."""

    extra: tuple[Notify, ...] = ()

    def _init_notifies(self) -> list[Payload]:
        own = super()._init_notifies()
        return own + list(self.extra) if self.initiator else own
