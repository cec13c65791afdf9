"""The configuration's data model: what ``load_config`` returns (docs/config.md).

Frozen dataclasses only (``Config``, ``InterfaceConfig``, ``PeerConfig``), the limits every
field is checked against and the defaults of the optional fields; the checks themselves are in
``parser``, ``peers``, ``ike_settings`` and ``fields``. A ``PeerConfig``'s repr never shows a key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from ..addr import HostPort, Network
from ..constants import IKE_PORT, NAT_T_PORT, SPI_RESERVED_MAX
from ..esp.suite import Suite
from ..ike.config import Identity, IkeConfig
from ..ike.pool import AddressPool
from ..ike.ratelimit import IkeLimits
from ..tunnel.peer import KeepaliveMode

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_LISTEN: Final[tuple[HostPort, ...]] = (("0.0.0.0", NAT_T_PORT),)
DEFAULT_INTERFACE_NAME: Final = "nt0"
DEFAULT_UNDERLAY_MTU: Final = 1500
DEFAULT_SUITE: Final = "aes256gcm16"
#: Linux IFNAMSIZ is 16 including the terminating NUL.
IFNAME_MAX: Final = 15
#: Linux PATH_MAX is 4096 including the terminating NUL.
PATH_MAX: Final = 4095
UNDERLAY_MTU_MIN: Final = 1280
UNDERLAY_MTU_MAX: Final = 65535
#: RFC 791: every IPv4 host must handle 68-octet datagrams; Linux's minimum IPv4 MTU.
INNER_MTU_MIN_IPV4: Final = 68
#: RFC 8200 section 5: every IPv6 link has an MTU of at least 1280.
INNER_MTU_MIN_IPV6: Final = 1280
SPI_MIN: Final = SPI_RESERVED_MAX + 1
SPI_MAX: Final = 2**32 - 1
PEER_NAME_MAX: Final = 64
TFC_PAD_MAX: Final = 65535
#: IKE peers: dead peer detection after this many seconds without a message from the peer
DEFAULT_DPD_INTERVAL: Final = 30.0
#: child SA lifetime before nattunnel starts a rekey (minus up to 10 % jitter), seconds
DEFAULT_REKEY_TIME: Final = 3600.0
#: the IKE SA's soft lifetime (strongSwan's default connection rekey_time, 4 h)
DEFAULT_IKE_REKEY_TIME: Final = 14400.0
#: the largest count in [limits]
LIMIT_COUNT_MAX: Final = 2**31 - 1
#: a peer's ``relay``: through the TURN relay always, never, or "auto" (direct first, the
#: relay when the direct path does not come up or dies: io/relay.py's PathMover)
RELAY_MODES: Final = ("auto", "always", "never")
DEFAULT_RELAY: Final = "auto"
#: the TURN server's port when ``turn.server`` gives none (RFC 8656 section 3.1)
TURN_PORT: Final = 3478
#: what the relay adds to each datagram: the ChannelData header (RFC 8656 section 12.4;
#: ``traversal.turn.CHANNEL_HEADER_LEN``); the derived inner MTU is this much smaller when
#: a ``turn`` server is configured
TURN_OVERHEAD: Final = 4


class IkeAuth(StrEnum):
    """How an IKE peer authenticates (``auth``): strongSwan's ``auth = psk | pubkey``."""

    PSK = "psk"
    PUBKEY = "pubkey"


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    #: "tun" (a Linux TUN device) or "inprocess" (packets stay inside the process: tests, demo)
    kind: str
    #: TUN device name (1..15 characters, no '/', ':' or whitespace)
    name: str
    #: inner addresses of this host, with their prefix lengths
    addresses: tuple[IPInterface, ...]
    #: MTU of the path the UDP datagrams take
    underlay_mtu: int
    #: the TUN MTU: explicit, or the largest inner packet that fits in ``underlay_mtu``
    mtu: int


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """``turn = { server = "HOST:PORT", username = "...", password_file = "PATH" }``."""

    server: HostPort
    username: str
    password_file: Path
    #: read from ``password_file`` (0600 or refused, like the key files); never shown
    password: str = dataclasses.field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    name: str
    #: where to send; None: learned from the first authenticated packet (a peer behind NAT).
    #: For an IKE peer: where to send IKE_SA_INIT (port 500 unless given).
    endpoint: HostPort | None
    #: inner prefixes routed to this peer and accepted from it (an IKE peer: the remote
    #: traffic selectors, ``ike.remote_ts``)
    allowed_ips: tuple[Network, ...]
    #: a manual peer's ESP suite; an IKE peer: the suite of its first ESP proposal (the child
    #: SAs use the negotiated one)
    suite: Suite
    #: manual SAs only; None for an IKE peer
    spi_in: int | None
    spi_out: int | None
    #: manual SAs only; empty for an IKE peer
    key_in: bytes
    key_out: bytes
    #: manual SAs only; None for an IKE peer
    key_in_path: Path | None
    key_out_path: Path | None
    #: a manual peer's ESN setting; an IKE peer: that of its first ESP proposal
    esn: bool
    replay_window: int
    keepalive: KeepaliveMode
    #: whether THIS host is behind NAT towards this peer (manual peers; IKE detects it)
    behind_nat: bool
    keepalive_interval: float
    tfc_pad: int
    #: IKE-managed peer (``auth`` set): its IKEv2 settings and credentials; None: manual SAs
    ike: IkeConfig | None = None
    #: IKE peers: whether this host starts the IKE SA (to ``endpoint``); always False for a
    #: manual peer
    initiate: bool = False
    #: "always": through the TURN relay to ``endpoint``; "never": direct; "auto": direct,
    #: and through the relay when that does not work (io/relay.py)
    relay: str = DEFAULT_RELAY
    #: IKEv2 mediation (docs/traversal.md): this [[peer]] is a mediation connection (to the
    #: server, on a mediated peer; to a registering peer, on a server): no child SA
    mediation: bool = False
    #: a mediated peer: the [[peer]] name of its mediation connection (swanctl's
    #: mediated_by), and the identity asked for in ME_CONNECT (mediation_peer; its remote_id
    #: if left out)
    mediated_by: str | None = None
    mediation_peer: Identity | None = None

    def __repr__(self) -> str:
        # The dataclass repr would print key_in and key_out; never let a log line hold a key.
        common = (f"PeerConfig(name={self.name!r}, endpoint={self.endpoint!r}, "
                  f"allowed_ips={tuple(str(n) for n in self.allowed_ips)!r}, ")
        if self.ike is not None:
            return (common + f"ike={self.ike!r}, initiate={self.initiate}, "
                    f"replay_window={self.replay_window}, "
                    f"keepalive={self.keepalive.value!r}, "
                    f"keepalive_interval={self.keepalive_interval}, tfc_pad={self.tfc_pad})")
        return (common + f"suite={self.suite.name!r}, spi_in={_hex_or_none(self.spi_in)}, "
                f"spi_out={_hex_or_none(self.spi_out)}, key_in=<{len(self.key_in)} octets from "
                f"{str(self.key_in_path)!r}>, key_out=<{len(self.key_out)} octets from "
                f"{str(self.key_out_path)!r}>, esn={self.esn}, "
                f"replay_window={self.replay_window}, keepalive={self.keepalive.value!r}, "
                f"behind_nat={self.behind_nat}, keepalive_interval={self.keepalive_interval}, "
                f"tfc_pad={self.tfc_pad})")


def _hex_or_none(value: int | None) -> str:
    return "None" if value is None else f"{value:#010x}"


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[HostPort, ...]
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]
    #: the file it was loaded from, if any
    path: Path | None
    #: directory for Wireshark key tables (``esp_sa``, ``ikev2_decryption_table``; see
    #: nattunnel.ike.keylog), or None: no key log
    keylog: Path | None = None
    #: local UDP port for IKE without NAT-T (IKE_SA_INIT); IKE over NAT-T uses the listen ports
    ike_port: int = IKE_PORT
    #: the ``[limits]`` table: bounds on what IKE senders can make this host hold or compute
    limits: IkeLimits = dataclasses.field(default_factory=IkeLimits)
    #: the control socket (``nattunnel show``, ``reload``, ...), or None: none
    control_socket: Path | None = None
    #: where the Prometheus text endpoint listens (HTTP GET /metrics), or None: none
    metrics: HostPort | None = None
    #: the TURN relay (RFC 8656) for peers with ``relay = "always"``, or None
    turn: TurnConfig | None = None
    #: a gateway's virtual IP pools (``[pools.NAME]``, docs/road-warrior.md)
    pools: tuple[AddressPool, ...] = ()
    #: IKEv2 mediation: this endpoint is a mediation server for its [[peer]]s with
    #: ``mediation = true`` (docs/traversal.md)
    mediation_server: bool = False
