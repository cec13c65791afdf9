"""The TOML configuration of a tunnel endpoint: manual SAs or IKEv2 peers (docs/config.md).

``load_config(path)`` reads a file, ``parse_config(text, base_dir)`` a string; both return a
frozen ``Config`` or raise ``ConfigError``. Everything is checked at load time, key files
included, so that an endpoint never starts with half a configuration:

- TOML syntax (with tomllib's line and column), unknown keys (with a close-match suggestion),
  missing keys, types (a TOML boolean is never an integer), ranges;
- addresses: IP literals only (no DNS at load time), IPv6 in brackets, ports 1..65535;
- across peers: unique names, unique ``spi_in``, no overlapping ``allowed_ips``, and no two
  key files holding the same keying material (two SAs on one key and salt would reuse AEAD
  nonces); no two IKE peers with the same ``remote_id``;
- strings before anything uses them: identities (``Identity.parse``), paths (no NUL, at most
  PATH_MAX), no IPv6 zones, so that no bad value escapes as another exception;
- ``[limits]``: the IKE flood bounds, an ``ike.IkeLimits`` (``Config.limits``).

A ``[[peer]]`` is either manual (``spi_in``, ``spi_out``, ``key_in``, ``key_out``: static keys)
or IKE-managed (``auth = "psk"`` or ``"pubkey"``: IKEv2 negotiates the child SAs); a field of
the other kind in a peer is an error naming that field. An IKE peer's ``PeerConfig.ike`` is an
``ike_sa.IkeConfig`` whose repr never shows its pre-shared key.

Every ConfigError message has the form ``FILE: FIELD: problem``, where FIELD is a path such as
``peer[1].spi_in`` or ``interface.addresses[0]`` (peers are numbered from 0, in file order).
No message ever contains key material: key files are read only by ``keys.load_keymat``,
``keys.load_psk``, ``keys.load_ed25519_private`` and ``keys.load_ed25519_public``, whose errors
never hold key bytes, and values are echoed only for fields that are not keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

from .addr import HostPort, Network, format_addr
from .constants import (
    DEFAULT_KEEPALIVE_INTERVAL,
    IKE_PORT,
    NAT_T_PORT,
    REPLAY_WINDOW_DEFAULT,
    REPLAY_WINDOW_MAX,
    REPLAY_WINDOW_MIN,
    SPI_RESERVED_MAX,
)
from .esp.suite import SUITES, Suite, suite_by_name
from .esp.udpencap import inner_mtu
from .ike.manager import IkeLimits
from .ike.sa import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    EspProposal,
    Identity,
    IkeConfig,
    IkeProposal,
)
from .keys import (
    KeyFileError,
    load_ed25519_private,
    load_ed25519_public,
    load_keymat,
    load_psk,
    public_key_b64,
)
from .tunnel.peer import KeepaliveMode
from .tunnel.prefixes import PrefixTable

#: (host, port); the host is an IP literal without brackets.
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

_PEER_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
_INTERFACE_KINDS: Final = ("tun", "inprocess")


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


class _IkeConfig(IkeConfig):
    """An ``ike_sa.IkeConfig`` whose repr names the authentication but never holds the
    pre-shared key (the dataclass repr of IkeConfig would print it)."""

    def __repr__(self) -> str:
        if self.auth == IkeAuth.PSK:
            secret = f"psk=<{len(self.psk)} octets>"
        else:
            mine = "<Ed25519 private key>" if self.private_key is not None else "None"
            theirs = (repr(public_key_b64(self.peer_public_key))
                      if self.peer_public_key is not None else "None")
            secret = f"private_key={mine}, peer_public_key={theirs}"
        return (f"IkeConfig(name={self.name!r}, local_id={str(self.local_id)!r}, "
                f"remote_id={str(self.remote_id)!r}, auth={self.auth!r}, {secret}, "
                f"local_ts={tuple(str(n) for n in self.local_ts)!r}, "
                f"remote_ts={tuple(str(n) for n in self.remote_ts)!r}, "
                f"ike_proposals={tuple(p.name for p in self.ike_proposals)!r}, "
                f"esp_proposals={tuple(esp_proposal_name(p) for p in self.esp_proposals)!r}, "
                f"force_encap={self.force_encap}, dpd_interval={self.dpd_interval})")


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


class ConfigError(ValueError):
    """A configuration is refused. The message names the file (if any), the field path and the
    problem; it never holds key material."""

    def __init__(self, message: str, *, file: Path | None = None,
                 field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.problem = message
        parts = [str(p) for p in (file, field) if p is not None]
        super().__init__(": ".join([*parts, message]))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the configuration file ``path``; key paths are relative to its directory."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file: {e.strerror}", file=p) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (invalid octet at offset {e.start}); TOML files "
                          f"are UTF-8", file=p) from None
    return parse_config(text, p.absolute().parent, p)


def parse_config(text: str, base_dir: Path, path: Path | None = None) -> Config:
    """Check configuration ``text``. Relative key paths are resolved against ``base_dir``;
    ``path`` only names the file in messages and in ``Config.path``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"TOML syntax error: {e}", file=path) from None
    except ValueError as e:  # int(): an integer of more than 4300 digits
        raise ConfigError(f"TOML error: {e}", file=path) from None
    return _Parser(path, Path(base_dir)).config(doc)


# --- internals ---------------------------------------------------------------------------

_T = TypeVar("_T")
_MISSING: Final = object()

_TOP_KEYS: Final = ("listen", "interface", "peer", "keylog", "ike_port", "limits")
#: the fields of ike.IkeLimits (a test checks that they are all here)
_LIMITS_KEYS: Final = (
    "cookie_threshold", "half_open_max", "half_open_timeout", "init_rate", "init_burst",
    "init_rate_total", "ike_sas_per_identity", "children_per_ike_sa", "cookie_secret_lifetime",
)
#: the largest count in [limits]
LIMIT_COUNT_MAX: Final = 2**31 - 1
_INTERFACE_KEYS: Final = ("kind", "name", "addresses", "underlay_mtu", "mtu")
_PEER_KEYS: Final = (
    "name", "endpoint", "allowed_ips", "suite", "spi_in", "spi_out", "key_in", "key_out",
    "esn", "replay_window", "keepalive", "behind_nat", "keepalive_interval", "tfc_pad",
    "auth", "local_id", "remote_id", "psk_file", "private_key", "peer_public_key", "initiate",
    "encap", "dpd_interval", "ike_proposals", "esp_proposals", "local_ts", "rekey_time",
    "rekey_bytes", "rekey_packets",
)
#: fields of a manual peer only (static SAs)
_MANUAL_KEYS: Final = ("spi_in", "spi_out", "key_in", "key_out", "suite", "esn")
#: fields of an IKE peer only
_IKE_KEYS: Final = (
    "auth", "local_id", "remote_id", "psk_file", "private_key", "peer_public_key", "initiate",
    "encap", "dpd_interval", "ike_proposals", "esp_proposals", "local_ts", "rekey_time",
    "rekey_bytes", "rekey_packets",
)
#: for auth = "psk" only / for auth = "pubkey" only
_PSK_KEYS: Final = ("psk_file",)
_PUBKEY_KEYS: Final = ("private_key", "peer_public_key")
_IKE_INSTEAD: Final = {"suite": "esp_proposals", "esn": "esp_proposals (e.g. \"aes256gcm16-esn\")"}


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, with an article."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _show(value: object) -> str:
    """A short TOML-like rendering of a (non-key) value for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        s = value if len(value) <= 60 else value[:57] + "..."
        return repr(s)
    if isinstance(value, int | float):
        s = str(value)
        return s if len(s) <= 60 else s[:57] + "..."
    return _toml_type(value)


def _got(value: object) -> str:
    if isinstance(value, list | dict):
        return f"got {_toml_type(value)}"
    return f"got {_toml_type(value)} ({_show(value)})"


def _spi(value: int) -> str:
    return f"{value} ({value:#x})"


def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; known keys: {', '.join(known)}"


def _parse_ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


#: an IPv6 zone (scope ID): ``fe80::1%eth0``. ipaddress accepts any text after the '%'.
_ZONE_PROBLEM: Final = ("has an IPv6 zone (%...), which nattunnel does not support; write the "
                        "address without it")


def _has_zone(text: str) -> bool:
    return "%" in text


def _parse_addr(text: str, *, bare_port: bool) -> HostPort:
    """``host:port`` or ``[v6host]:port`` (and a bare ``port`` if ``bare_port``). ValueError
    with the problem. Listen addresses (``bare_port``) may use port 0: any free port."""
    lo = 0 if bare_port else 1
    s = text.strip()
    if not s:
        raise ValueError("is empty")
    if bare_port and s.isdecimal():
        return "0.0.0.0", _parse_port(s, lo)
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise ValueError("has '[' without a closing ']'")
        host_text, rest = s[1:close], s[close + 1:]
        if not rest.startswith(":") or not rest[1:]:
            raise ValueError("needs a port after the bracketed IPv6 address: [ADDRESS]:PORT")
        if _has_zone(host_text):
            raise ValueError(_ZONE_PROBLEM)
        try:
            host = ipaddress.IPv6Address(host_text)
        except ValueError:
            raise ValueError(f"{_show(host_text)} is not an IPv6 address") from None
        return str(host), _parse_port(rest[1:], lo)
    if s.count(":") > 1:
        raise ValueError("an IPv6 address must be in brackets with a port: [ADDRESS]:PORT, "
                         "e.g. \"[2001:db8::1]:4500\"")
    host_text, colon, port_text = s.rpartition(":")
    if not colon:
        raise ValueError("needs a port: ADDRESS:PORT")
    try:
        host4 = ipaddress.IPv4Address(host_text)
    except ValueError:
        raise ValueError(f"{_show(host_text)} is not an IPv4 address (host names are not "
                         f"resolved; write an IP address)") from None
    return str(host4), _parse_port(port_text, lo)


def _parse_port(text: str, lo: int = 1) -> int:
    if not text.isdecimal() or not text.isascii():
        raise ValueError(f"port {_show(text)} is not a number")
    if len(text.lstrip("0")) > 5:  # before int(): no digit-limit error for huge numbers
        raise ValueError(f"port {_show(text)} is outside {lo}..65535")
    port = int(text)
    if not lo <= port <= 65535:
        raise ValueError(f"port {port} is outside {lo}..65535")
    return port


def _is_ipv6(addr: HostPort) -> bool:
    return ":" in addr[0]


# --- IKE and ESP proposals, as strongSwan writes them ------------------------------------------

_IKE_ENCR: Final[dict[str, tuple[int, int | None]]] = {
    "aes128gcm16": (20, 128),
    "aes256gcm16": (20, 256),
    "chacha20poly1305": (28, None),
}
_PRF: Final = {"prfsha256": 5, "prfsha384": 6, "prfsha512": 7}
_DH: Final = {"x25519": 31, "curve25519": 31, "ecp256": 19}
_DH_NAMES: Final = {31: "x25519", 19: "ecp256"}
_ESN: Final = {"esn": True, "noesn": False}
#: strongSwan keywords nattunnel knows but does not implement, with the reason
_UNSUPPORTED: Final = (
    (re.compile(r"aes(128|192|256)?(ctr|cbc|ccm\d*|gcm(8|12|16|64|96|128)?)?|aes192gcm\d+|3des|"
                r"camellia\d*|blowfish\d*|cast128|null"),
     "is not supported: nattunnel implements only the AEAD ciphers aes128gcm16, "
     "aes256gcm16 and chacha20poly1305"),
    (re.compile(r"(sha|sha1|sha2_?\d+|sha\d+|md5|aesxcbc|aescmac)(_\d+)?"),
     "is an integrity algorithm; AEAD proposals take none (the PRF is named with prf..., "
     "e.g. prfsha256)"),
    (re.compile(r"prf\w+"), "is not a supported PRF; use prfsha256, prfsha384 or prfsha512"),
    (re.compile(r"modp\d+s?\d*|ecp\d+(bp)?|x448|curve448|ke\d_\w+|mlkem\d+"),
     "is not a supported key exchange method; use x25519 or ecp256"),
)


def _unknown(token: str, kinds: str) -> ValueError:
    for pattern, why in _UNSUPPORTED:
        if pattern.fullmatch(token):
            return ValueError(f"{_show(token)} {why}")
    return ValueError(f"unknown algorithm {_show(token)}; expected {kinds}")


def _tokens(text: str) -> list[str]:
    s = text.strip().lower()
    if not s:
        raise ValueError("is empty")
    tokens = s.split("-")
    if any(not t for t in tokens):
        raise ValueError("has an empty algorithm between '-' separators")
    return tokens


def parse_ike_proposal(text: str) -> IkeProposal:
    """An IKE proposal as strongSwan writes it, ``ENCR-PRF-DH``: ``aes256gcm16-prfsha256-x25519``,
    ``chacha20poly1305-prfsha256-x25519``, ``aes128gcm16-prfsha256-ecp256``. One algorithm of
    each kind; the order of the parts does not matter. ValueError with the problem."""
    kinds = ("encryption (aes128gcm16, aes256gcm16, chacha20poly1305), PRF (prfsha256, "
             "prfsha384, prfsha512) or key exchange (x25519, ecp256)")
    encr: tuple[int, int | None] | None = None
    prf: int | None = None
    dh: int | None = None
    for token in _tokens(text):
        if token in _IKE_ENCR:
            if encr is not None:
                raise ValueError(f"has two encryption algorithms ({token!r} is the second); "
                                 f"write one proposal for each")
            encr = _IKE_ENCR[token]
        elif token in _PRF:
            if prf is not None:
                raise ValueError(f"has two PRFs ({token!r} is the second); write one "
                                 f"proposal for each")
            prf = _PRF[token]
        elif token in _DH:
            if dh is not None:
                raise ValueError(f"has two key exchange methods ({token!r} is the second); "
                                 f"write one proposal for each")
            dh = _DH[token]
        else:
            raise _unknown(token, kinds)
    if encr is None:
        raise ValueError("names no encryption algorithm; add aes256gcm16, aes128gcm16 or "
                         "chacha20poly1305")
    if prf is None:
        raise ValueError("names no PRF; AEAD proposals need one: add prfsha256, prfsha384 or "
                         "prfsha512")
    if dh is None:
        raise ValueError("names no key exchange method; add x25519 or ecp256")
    return IkeProposal(encr[0], encr[1], prf, dh)


def parse_esp_proposal(text: str) -> EspProposal:
    """An ESP proposal as strongSwan writes it: a suite (``aes256gcm16``, ``aes128gcm16``,
    ``chacha20poly1305``), then optionally ``esn`` (offer extended sequence numbers; plain
    32-bit ones remain acceptable) or ``noesn``, and a PFS key exchange method for rekeys
    (``x25519``, ``ecp256``): ``aes128gcm16-esn``, ``chacha20poly1305-x25519``. ValueError
    with the problem."""
    kinds = (f"an ESP suite ({', '.join(sorted(SUITES))}), esn, noesn, or a key exchange "
             f"method for PFS (x25519, ecp256)")
    suite: Suite | None = None
    esn: bool | None = None
    dh: int | None = None
    for token in _tokens(text):
        if token in SUITES:
            if suite is not None:
                raise ValueError(f"has two encryption algorithms ({token!r} is the second); "
                                 f"write one proposal for each")
            suite = SUITES[token]
        elif token in _ESN:
            # strongSwan: "esn-noesn" offers both; EspProposal(esn=True) does just that
            esn = (esn or False) or _ESN[token]
        elif token in _DH:
            if dh is not None:
                raise ValueError(f"has two key exchange methods ({token!r} is the second); "
                                 f"write one proposal for each")
            dh = _DH[token]
        elif token in _PRF:
            raise ValueError(f"{token!r}: ESP proposals take no PRF (the IKE SA's PRF derives "
                             f"the child SA keys)")
        else:
            raise _unknown(token, kinds)
    if suite is None:
        raise ValueError(f"names no ESP suite; start with one of {', '.join(sorted(SUITES))}")
    return EspProposal(suite, bool(esn), dh)


def esp_proposal_name(p: EspProposal) -> str:
    """The strongSwan form of an ESP proposal: ``aes128gcm16-esn-x25519``."""
    parts = [p.suite.name]
    if p.esn:
        parts.append("esn")
    if p.dh is not None:
        parts.append(_DH_NAMES.get(p.dh, str(p.dh)))
    return "-".join(parts)


def _local_networks(addresses: tuple[IPInterface, ...]) -> tuple[Network, ...]:
    """The default local traffic selectors: each inner address as a /32 or /128."""
    return tuple(ipaddress.ip_network(a.ip) for a in addresses)


@dataclass
class _IkeFiles:
    """Credentials of one IKE peer, read after the whole file is checked."""

    auth: IkeAuth
    psk_file: Path | None = None
    private_key: Path | None = None
    peer_public_key: Path | None = None


class _Parser:
    def __init__(self, path: Path | None, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir
        self.mtu_explicit = False
        self.mtu_note = ""
        self.outer_ipv6 = False
        #: peer index -> credential files of an IKE peer (read by load_keys)
        self.ike_files: dict[int, _IkeFiles] = {}

    def err(self, field: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.path, field=field)

    # -- generic field readers --

    def check_keys(self, table: Mapping[str, object], known: tuple[str, ...],
                   prefix: str) -> None:
        for key in table:
            if key not in known:
                raise self.err(f"{prefix}{key}", _suggest(key, known))

    def get(self, table: Mapping[str, Any], key: str, prefix: str, kind: type[_T],
            expected: str, default: object = _MISSING) -> _T:
        """table[key] checked to be ``kind`` (bool is never an int); ``expected`` describes it.
        Without a default the key is required."""
        field = f"{prefix}{key}"
        if key not in table:
            if default is _MISSING:
                raise self.err(field, f"missing required key; expected {expected}")
            return default  # type: ignore[return-value]
        value = table[key]
        ok = isinstance(value, kind)
        if kind is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise self.err(field, f"expected {expected}, {_got(value)}")
        return value  # type: ignore[no-any-return]

    def get_int(self, table: Mapping[str, Any], key: str, prefix: str, lo: int, hi: int,
                default: object = _MISSING, *, hex_: bool = False) -> int:
        expected = f"an integer {lo}..{hi}"
        if hex_:
            expected += f" ({lo:#x}..{hi:#x})"
        value = self.get(table, key, prefix, int, expected, default)
        if not lo <= value <= hi:
            shown = _spi(value) if hex_ else str(value)
            raise self.err(f"{prefix}{key}", f"{shown} is out of range; expected {expected}")
        return value

    def get_str_list(self, table: Mapping[str, Any], key: str, prefix: str,
                     expected: str, default: object = _MISSING) -> list[tuple[str, str]]:
        """A string or an array of strings, as [(field path, string)]."""
        field = f"{prefix}{key}"
        value = self.get(table, key, prefix, object, expected, default)
        if isinstance(value, str):
            return [(field, value)]
        if not isinstance(value, list):
            raise self.err(field, f"expected {expected}, {_got(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.err(f"{field}[{i}]", f"expected a string, {_got(item)}")
            out.append((f"{field}[{i}]", item))
        return out

    # -- sections --

    def config(self, doc: dict[str, Any]) -> Config:
        self.check_keys(doc, _TOP_KEYS, "")
        listen = self.listen(doc)
        outer_ipv6 = any(_is_ipv6(a) for a in listen)
        iface_table = self.get(doc, "interface", "", dict,
                               "a table [interface] with at least addresses", {})
        interface = self.interface(iface_table, outer_ipv6)

        keylog = None
        if "keylog" in doc:
            text = self.get(doc, "keylog", "", str, "the path of a directory for Wireshark "
                                                    "key tables")
            if not text.strip():
                raise self.err("keylog", "is empty; expected the path of a directory (leave "
                                         "keylog out for no key log)")
            keylog = self.base_dir / self.path_text("keylog", text)
        ike_port = self.get_int(doc, "ike_port", "", 0, 65535, IKE_PORT)
        for j, addr in enumerate(listen):
            if ike_port and addr[1] == ike_port:
                where = "listen" if "listen" not in doc or len(listen) == 1 else f"listen[{j}]"
                raise self.err("ike_port", f"{ike_port} is also the port of {where} "
                                           f"({format_addr(addr)}); IKE without NAT-T needs its "
                                           f"own port (usually 500, with 4500 in listen)")

        limits = self.limits(doc)

        peer_tables = self.get(doc, "peer", "", list, "an array of tables [[peer]]", [])
        peers: list[PeerConfig] = []
        for i, table in enumerate(peer_tables):
            if not isinstance(table, dict):
                raise self.err(f"peer[{i}]", f"expected a table [[peer]], {_got(table)}")
            peers.append(self.peer(table, f"peer[{i}].", listen, interface, i))
        # Everything in the file is checked before any key file is opened.
        self.cross_check(peers, interface)
        peers = self.load_keys(peers)
        return Config(listen=listen, interface=interface, peers=tuple(peers), path=self.path,
                      keylog=keylog, ike_port=ike_port, limits=limits)

    def limits(self, doc: dict[str, Any]) -> IkeLimits:
        """The ``[limits]`` table: ike.IkeLimits, each field optional with its default."""
        table = self.get(doc, "limits", "", dict, "a table [limits] (docs/config.md)", {})
        pre = "limits."
        self.check_keys(table, _LIMITS_KEYS, pre)
        d = IkeLimits()
        top = LIMIT_COUNT_MAX
        half_open_max = self.get_int(table, "half_open_max", pre, 1, top, d.half_open_max)
        # 0: every IKE_SA_INIT request must carry a cookie
        cookie_threshold = self.get_int(table, "cookie_threshold", pre, 0, top,
                                        d.cookie_threshold)
        if cookie_threshold >= half_open_max:
            if "cookie_threshold" in table:
                raise self.err(pre + "cookie_threshold",
                               f"{cookie_threshold} is not below half_open_max "
                               f"({half_open_max}); cookies must be required before the "
                               f"half-open SAs reach the cap, or they never help")
            raise self.err(pre + "half_open_max",
                           f"{half_open_max} is not above cookie_threshold ({cookie_threshold}, "
                           f"the default); cookies must be required before the half-open SAs "
                           f"reach the cap: set cookie_threshold below {half_open_max} too")
        rate = "a number of requests per second"
        return IkeLimits(
            cookie_threshold=cookie_threshold,
            half_open_max=half_open_max,
            half_open_timeout=self.seconds(table, "half_open_timeout", pre,
                                           d.half_open_timeout, zero=False),
            init_rate=self.number(table, "init_rate", pre, d.init_rate, f"{rate} > 0",
                                  lambda v: v > 0),
            init_burst=self.get_int(table, "init_burst", pre, 1, top, d.init_burst),
            # the shared bucket holds init_rate_total tokens: below 1 it would never answer
            init_rate_total=self.number(table, "init_rate_total", pre, d.init_rate_total,
                                        f"{rate} >= 1", lambda v: v >= 1),
            ike_sas_per_identity=self.get_int(table, "ike_sas_per_identity", pre, 1, top,
                                              d.ike_sas_per_identity),
            children_per_ike_sa=self.get_int(table, "children_per_ike_sa", pre, 1, top,
                                             d.children_per_ike_sa),
            cookie_secret_lifetime=self.seconds(table, "cookie_secret_lifetime", pre,
                                                d.cookie_secret_lifetime, zero=False),
        )

    def listen(self, doc: dict[str, Any]) -> tuple[HostPort, ...]:
        field = "listen"
        if "listen" not in doc:
            return DEFAULT_LISTEN
        value = doc["listen"]
        items: list[tuple[str, object]]
        if isinstance(value, list):
            if not value:
                raise self.err(field, "is empty; give at least one address, e.g. "
                                      "[\"0.0.0.0:4500\"], or leave listen out for that default")
            items = [(f"{field}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(field, value)]
        out: list[HostPort] = []
        seen: dict[HostPort, str] = {}
        for f, v in items:
            if isinstance(v, int) and not isinstance(v, bool):
                # a bare port written as a TOML integer
                if not 0 <= v <= 65535:
                    raise self.err(f, f"port {v} is outside 0..65535")
                v = str(v)
            if not isinstance(v, str):
                raise self.err(f, "expected a string: \"ADDRESS:PORT\", \"[IPV6]:PORT\" or a "
                                  f"port, {_got(v)}")
            try:
                addr = _parse_addr(v, bare_port=True)
            except ValueError as e:
                raise self.err(f, f"{_show(v)}: {e}") from None
            if _parse_ip(addr[0]).is_multicast:
                raise self.err(f, f"{_show(v)} is a multicast address; listen on a local "
                                  f"unicast address or a wildcard (0.0.0.0, [::])")
            if addr in seen:
                raise self.err(f, f"{format_addr(addr)} is already listed as {seen[addr]}")
            seen[addr] = f
            out.append(addr)
        return tuple(out)

    def interface(self, t: dict[str, Any], outer_ipv6: bool) -> InterfaceConfig:
        pre = "interface."
        self.check_keys(t, _INTERFACE_KEYS, pre)
        kind = self.get(t, "kind", pre, str, "\"tun\" or \"inprocess\"", "tun")
        if kind not in _INTERFACE_KINDS:
            close = difflib.get_close_matches(kind, _INTERFACE_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.err(pre + "kind", f"{_show(kind)} is not an interface kind{hint}; "
                                         f"expected \"tun\" or \"inprocess\"")
        name = self.get(t, "name", pre, str, "a device name of 1..15 characters",
                        DEFAULT_INTERFACE_NAME)
        self.check_ifname(name, pre + "name")

        addresses: list[IPInterface] = []
        if "addresses" in t or kind == "tun":
            expected = ("an array of inner addresses with prefix lengths, "
                        "e.g. [\"198.18.100.1/24\"]")
            for f, s in self.get_str_list(t, "addresses", pre, expected):
                addresses.append(self.inner_address(f, s, addresses))
            if not addresses and kind == "tun":
                raise self.err(pre + "addresses", "is empty; a TUN interface needs at least "
                                                  "one inner address, e.g. "
                                                  "[\"198.18.100.1/24\"]")

        underlay = self.get_int(t, "underlay_mtu", pre, UNDERLAY_MTU_MIN, UNDERLAY_MTU_MAX,
                                DEFAULT_UNDERLAY_MTU)
        derived = inner_mtu(underlay, outer_ipv6=outer_ipv6)
        outer = "IPv6" if outer_ipv6 else "IPv4"
        self.outer_ipv6 = outer_ipv6
        self.mtu_note = (f"{derived}, the largest inner packet that fits in underlay_mtu "
                         f"{underlay} over {outer}")
        if "mtu" in t:
            self.mtu_explicit = True
            value = self.get(t, "mtu", pre, int, f"an integer {INNER_MTU_MIN_IPV4}..{derived}")
            if value > derived:
                raise self.err(pre + "mtu", f"{value} is too large: the maximum is "
                                            f"{self.mtu_note}; raise interface.underlay_mtu "
                                            f"if the path carries larger datagrams")
            mtu = self.get_int(t, "mtu", pre, INNER_MTU_MIN_IPV4, derived)
        else:
            mtu = derived
        return InterfaceConfig(kind=kind, name=name, addresses=tuple(addresses),
                               underlay_mtu=underlay, mtu=mtu)

    def check_ifname(self, name: str, field: str) -> None:
        # Linux dev_valid_name(): 1..IFNAMSIZ-1 octets, not "." or "..", no '/', ':' or space;
        # narrowed as tun.validate_name narrows it: printable ASCII, and no '%' (the kernel
        # would take "tun%d" as a template and pick a name itself).
        problem = None
        if not name:
            problem = "is empty"
        elif not name.isascii():
            problem = "must be printable ASCII (Linux device names are octets; nattunnel " \
                      "takes ASCII only)"
        elif len(name) > IFNAME_MAX:
            problem = f"is {len(name)} octets long; Linux allows at most {IFNAME_MAX}"
        elif name in (".", ".."):
            problem = "is not a valid device name"
        elif any(c in "/:" or c.isspace() or not c.isprintable() for c in name):
            problem = "must not contain '/', ':', whitespace or control characters"
        elif "%" in name:
            problem = "must not contain '%' (the kernel would read it as a name template)"
        if problem:
            raise self.err(field, f"{_show(name)} {problem}")

    def inner_address(self, field: str, text: str, seen: list[IPInterface]) -> IPInterface:
        if _has_zone(text):
            raise self.err(field, f"{_show(text)} {_ZONE_PROBLEM}")
        try:
            iface = ipaddress.ip_interface(text.strip())
        except ValueError:
            raise self.err(field, f"{_show(text)} is not an IP address with a prefix length "
                                  f"(e.g. \"198.18.100.1/24\" or \"fd00::1/64\")") from None
        ip = iface.ip
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise self.err(field, f"{_show(text)} is not a usable unicast host address")
        for other in seen:
            if other.ip == ip:
                raise self.err(field, f"{_show(text)}: address {ip} is listed twice")
        return iface

    def peer(self, t: dict[str, Any], pre: str, listen: tuple[HostPort, ...],
             interface: InterfaceConfig, index: int) -> PeerConfig:
        self.check_keys(t, _PEER_KEYS, pre)
        name = self.get(t, "name", pre, str, "a string of letters, digits, '_', '.', '-'")
        if not _PEER_NAME.fullmatch(name) or len(name) > PEER_NAME_MAX:
            raise self.err(pre + "name", f"{_show(name)} is not a valid peer name; use 1.."
                                         f"{PEER_NAME_MAX} of A-Z a-z 0-9 _ . -")
        auth = self.auth(t, pre)

        endpoint = None
        if "endpoint" in t:
            expected = "a string \"ADDRESS:PORT\" or \"[IPV6]:PORT\""
            if auth is not None:
                expected += " (or an address alone: port 500)"
            text = self.get(t, "endpoint", pre, str, expected)
            endpoint = self.endpoint(pre + "endpoint", text, listen,
                                     IKE_PORT if auth is not None else None)

        expected = "an array of inner prefixes, e.g. [\"198.18.100.2/32\"]"
        allowed: list[Network] = []
        for f, s in self.get_str_list(t, "allowed_ips", pre, expected):
            allowed.append(self.network(f, s))
        if not allowed:
            raise self.err(pre + "allowed_ips", "is empty; list the inner prefixes this peer "
                                                "may send from, e.g. [\"198.18.100.2/32\"]")

        replay_window = self.get_int(t, "replay_window", pre, REPLAY_WINDOW_MIN,
                                     REPLAY_WINDOW_MAX, REPLAY_WINDOW_DEFAULT)
        mode_text = self.get(t, "keepalive", pre, str, "\"nat\", \"always\" or \"never\"",
                             KeepaliveMode.NAT.value)
        try:
            keepalive = KeepaliveMode(mode_text)
        except ValueError:
            raise self.err(pre + "keepalive",
                           f"{_show(mode_text)} is not a keepalive mode; "
                           f"expected \"nat\", \"always\" or \"never\"") from None
        behind_nat = self.get(t, "behind_nat", pre, bool, "true or false", False)
        interval = self.seconds(t, "keepalive_interval", pre, DEFAULT_KEEPALIVE_INTERVAL,
                                zero=False)
        tfc_pad = self.get_int(t, "tfc_pad", pre, 0, min(interface.mtu, TFC_PAD_MAX), 0)

        if auth is not None:
            ike, initiate = self.ike(t, pre, name, auth, endpoint, tuple(allowed), interface,
                                     index)
            ike.replay_window = replay_window
            ike.tfc_pad = tfc_pad
            ike.keepalive_interval = interval
            ike.keepalive = keepalive
            first = ike.esp_proposals[0]
            return PeerConfig(
                name=name, endpoint=endpoint, allowed_ips=tuple(allowed), suite=first.suite,
                spi_in=None, spi_out=None, key_in=b"", key_out=b"", key_in_path=None,
                key_out_path=None, esn=first.esn, replay_window=replay_window,
                keepalive=keepalive, behind_nat=behind_nat, keepalive_interval=interval,
                tfc_pad=tfc_pad, ike=ike, initiate=initiate,
            )

        suite_name = self.get(t, "suite", pre, str,
                              f"a suite name, one of {', '.join(sorted(SUITES))}", DEFAULT_SUITE)
        try:
            suite = suite_by_name(suite_name)
        except ValueError as e:
            message = str(e)
            if len(suite_name) > 60:  # suite_by_name shows the whole name
                message = message.replace(repr(suite_name), _show(suite_name), 1)
            raise self.err(pre + "suite", message) from None

        spi_in = self.get_int(t, "spi_in", pre, SPI_MIN, SPI_MAX, hex_=True)
        spi_out = self.get_int(t, "spi_out", pre, SPI_MIN, SPI_MAX, hex_=True)
        key_in_path = self.key_path(t, "key_in", pre, suite)
        key_out_path = self.key_path(t, "key_out", pre, suite)
        esn = self.get(t, "esn", pre, bool, "true or false", False)

        return PeerConfig(
            name=name, endpoint=endpoint, allowed_ips=tuple(allowed), suite=suite,
            spi_in=spi_in, spi_out=spi_out, key_in=b"", key_out=b"",  # load_keys() fills
            key_in_path=key_in_path, key_out_path=key_out_path, esn=esn,
            replay_window=replay_window, keepalive=keepalive, behind_nat=behind_nat,
            keepalive_interval=interval, tfc_pad=tfc_pad,
        )

    def seconds(self, t: dict[str, Any], key: str, pre: str, default: float, *,
                zero: bool) -> float:
        """A finite number of seconds, > 0 (or >= 0 if ``zero``), as a float."""
        if zero:
            return self.number(t, key, pre, default, "a number of seconds >= 0",
                               lambda v: v >= 0)
        return self.number(t, key, pre, default, "a number of seconds > 0", lambda v: v > 0)

    def number(self, t: dict[str, Any], key: str, pre: str, default: float, expected: str,
               ok: Callable[[float], bool]) -> float:
        """A finite integer or float for which ``ok`` holds, as a float."""
        value = self.get(t, key, pre, object, expected, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.err(pre + key, f"expected {expected}, {_got(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the floats (tomllib takes any size)
            number = math.inf
        if not (math.isfinite(number) and ok(number)):
            raise self.err(pre + key, f"{_show(value)} is out of range; expected {expected}")
        return number

    def auth(self, t: dict[str, Any], pre: str) -> IkeAuth | None:
        """The peer's kind: None for manual SAs, else its IKE authentication. A field of the
        other kind is an error naming it."""
        # the first offending field in file order
        if "auth" not in t:
            for key in t:
                if key in _IKE_KEYS:
                    raise self.err(pre + key, "is an IKEv2 field, but this peer has no auth "
                                              "(manual SAs); add auth = \"psk\" or "
                                              "\"pubkey\" for an IKE-managed peer, or remove "
                                              f"{key}")
            return None
        text = self.get(t, "auth", pre, str, "\"psk\" or \"pubkey\"")
        try:
            auth = IkeAuth(text)
        except ValueError:
            raise self.err(pre + "auth", f"{_show(text)} is not an IKE authentication method; "
                                         f"expected \"psk\" or \"pubkey\" (Ed25519)") from None
        for key in t:
            if key in _MANUAL_KEYS:
                instead = _IKE_INSTEAD.get(key)
                hint = (f"; an IKE peer sets {instead}" if instead else
                        "; IKEv2 negotiates SPIs and keys")
                raise self.err(pre + key, f"is a manual-SA field, but this peer has auth = "
                                          f"\"{auth.value}\" (IKE-managed){hint}: remove "
                                          f"{key}, or remove auth for a manual peer")
        other = _PUBKEY_KEYS if auth is IkeAuth.PSK else _PSK_KEYS
        for key in other:
            if key in t:
                want = "pubkey" if auth is IkeAuth.PSK else "psk"
                raise self.err(pre + key, f"is for auth = \"{want}\", but this peer has "
                                          f"auth = \"{auth.value}\"")
        return auth

    def ike(self, t: dict[str, Any], pre: str, name: str, auth: IkeAuth,
            endpoint: HostPort | None, remote_ts: tuple[Network, ...],
            interface: InterfaceConfig, index: int) -> tuple[IkeConfig, bool]:
        """The IkeConfig of an IKE peer (credentials still empty: load_keys reads them) and
        whether to initiate."""
        local_id = self.identity(t, "local_id", pre)
        remote_id = self.identity(t, "remote_id", pre)

        files = _IkeFiles(auth)
        if auth is IkeAuth.PSK:
            files.psk_file = self.file_path(
                t, "psk_file", pre, "the path of a pre-shared key file made by `nattunnel "
                                    "keygen --type psk PATH`")
        else:
            files.private_key = self.file_path(
                t, "private_key", pre, "the path of this host's Ed25519 private key (PKCS#8 "
                                       "PEM), made by `nattunnel keygen --type ed25519 NAME`")
            files.peer_public_key = self.file_path(
                t, "peer_public_key", pre, "the path of the peer's Ed25519 public key (its "
                                           ".pub file, SubjectPublicKeyInfo PEM)")
        self.ike_files[index] = files

        initiate = self.get(t, "initiate", pre, bool, "true or false", endpoint is not None)
        if initiate and endpoint is None:
            raise self.err(pre + "initiate", "true needs an endpoint to send IKE_SA_INIT to; "
                                             "add endpoint, or set initiate = false to wait "
                                             "for the peer")
        encap = self.get(t, "encap", pre, str, "\"auto\" or \"force\"", "auto")
        if encap not in ("auto", "force"):
            raise self.err(pre + "encap", f"{_show(encap)} is not an encapsulation mode; "
                                          f"expected \"auto\" (UDP encapsulation when a NAT "
                                          f"is detected) or \"force\" (always)")
        dpd = self.seconds(t, "dpd_interval", pre, DEFAULT_DPD_INTERVAL, zero=True)
        rekey = self.seconds(t, "rekey_time", pre, DEFAULT_REKEY_TIME, zero=True)
        rekey_bytes = self.get_int(t, "rekey_bytes", pre, 0, 2**62, 0)
        rekey_packets = self.get_int(t, "rekey_packets", pre, 0, 2**32 - 1, 0)

        ike_proposals = self.proposals(t, "ike_proposals", pre, parse_ike_proposal,
                                       DEFAULT_IKE_PROPOSALS,
                                       "an array of IKE proposals, e.g. "
                                       "[\"aes256gcm16-prfsha256-x25519\"]")
        esp_proposals = self.proposals(t, "esp_proposals", pre, parse_esp_proposal,
                                       DEFAULT_ESP_PROPOSALS,
                                       "an array of ESP proposals, e.g. [\"aes256gcm16\"]")

        if "local_ts" in t:
            expected = "an array of local inner prefixes, e.g. [\"198.18.100.1/32\"]"
            local: list[Network] = []
            for f, s in self.get_str_list(t, "local_ts", pre, expected):
                local.append(self.network(f, s))
            if not local:
                raise self.err(pre + "local_ts", "is empty; list the local inner prefixes "
                                                 "this peer may reach, or leave local_ts out "
                                                 "for the interface addresses")
            local_ts = tuple(local)
        else:
            local_ts = _local_networks(interface.addresses)
            if not local_ts:
                raise self.err(pre + "local_ts", "missing: the interface has no addresses to "
                                                 "derive the local traffic selectors from; "
                                                 "give local_ts, e.g. "
                                                 "[\"198.18.100.1/32\"]")
        return _IkeConfig(
            name=name, local_id=local_id, remote_id=remote_id, auth=auth.value,
            local_ts=local_ts, remote_ts=remote_ts, ike_proposals=ike_proposals,
            esp_proposals=esp_proposals, force_encap=encap == "force", dpd_interval=dpd,
            child_rekey_time=rekey, rekey_bytes=rekey_bytes, rekey_packets=rekey_packets,
        ), initiate

    def identity(self, t: dict[str, Any], key: str, pre: str) -> Identity:
        """An IKE identity as strongSwan writes it: an IP address, ``fqdn:NAME``, a bare name
        (FQDN), ``@NAME`` (FQDN), ``keyid:HEX`` / ``@#HEX`` / ``keyid:TEXT``."""
        field = pre + key
        text = self.get(t, key, pre, str, "an identity such as \"hosta\", "
                                          "\"fqdn:hosta.example\", \"198.18.0.1\" or "
                                          "\"keyid:0011...\"")
        s = text.strip()
        if s.startswith("@#"):
            s = "keyid:#" + s[2:]
        elif s.startswith("@") and not s.startswith("@@"):  # @@NAME: e-mail (below)
            s = "fqdn:" + s[1:]
        prefix, colon, rest = s.partition(":")
        problem = None
        if not s:
            problem = "is empty"
        elif text.strip() != text:
            problem = "starts or ends with whitespace"
        elif colon and prefix.lower() in ("ipv4", "ipv6"):
            try:
                ip = ipaddress.ip_address(rest)
            except ValueError:
                problem = f"{_show(rest)} is not an IP address"
            else:
                if ip.version != int(prefix[-1]):
                    problem = (f"{_show(rest)} is not an {prefix[:2].upper()}{prefix[2:]} "
                               f"address")
                s = rest
        elif colon and prefix in ("fqdn", "keyid"):
            if not rest:
                problem = f"has nothing after {prefix}:"
        elif colon and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", prefix):
            try:
                ipaddress.ip_address(s)
            except ValueError:
                problem = (f"identity type {prefix + ':'!r} is not supported; use an IP "
                           f"address, fqdn:NAME or keyid:HEX")
        elif "@" in s:
            problem = ("looks like an e-mail address (RFC822_ADDR), which is not supported; "
                       "use fqdn:NAME or keyid:HEX")
        elif "=" in s or "," in s:
            problem = ("looks like a distinguished name (ASN.1 DN), which is not supported; "
                       "use fqdn:NAME or keyid:HEX")
        if problem is None:
            try:  # the core forms: non-ASCII FQDNs, bad keyid:# hex, lengths, zones
                return Identity.parse(s)
            except ValueError as e:
                problem = str(e)
        raise self.err(field, f"{_show(text)}: {problem}")

    def file_path(self, t: dict[str, Any], key: str, pre: str, expected: str) -> Path:
        text = self.get(t, key, pre, str, expected)
        if not text:
            raise self.err(pre + key, f"is empty; expected {expected}")
        # Joined, not resolved (see key_path).
        return self.base_dir / self.path_text(pre + key, text)

    def path_text(self, field: str, text: str) -> str:
        """``text`` if the OS can take it as a path: no NUL, at most PATH_MAX - 1 octets."""
        if "\x00" in text:
            raise self.err(field, f"{_show(text)} contains a NUL character, which no file "
                                  f"path can hold")
        try:
            size = len(os.fsencode(text))
        except UnicodeEncodeError:
            raise self.err(field, f"{_show(text)} is not valid Unicode (it holds a lone "
                                  f"surrogate)") from None
        if size > PATH_MAX:
            raise self.err(field, f"{_show(text)} is {size} octets long; Linux paths are at "
                                  f"most {PATH_MAX}")
        return text

    def proposals(self, t: dict[str, Any], key: str, pre: str,
                  parse: Callable[[str], _T], default: tuple[_T, ...], expected: str
                  ) -> tuple[_T, ...]:
        if key not in t:
            return default
        out: list[_T] = []
        where: dict[_T, str] = {}
        for f, text in self.get_str_list(t, key, pre, expected):
            try:
                proposal = parse(text)
            except ValueError as e:
                raise self.err(f, f"{_show(text)}: {e}") from None
            if proposal in where:
                raise self.err(f, f"{_show(text)} is the same proposal as {where[proposal]}")
            where[proposal] = f
            out.append(proposal)
        if not out:
            raise self.err(pre + key, f"is empty; expected {expected}, or leave {key} out "
                                      f"for the defaults")
        return tuple(out)

    def endpoint(self, field: str, text: str, listen: tuple[HostPort, ...],
                 default_port: int | None = None) -> HostPort:
        """``host:port``; with ``default_port`` (IKE peers) also an address alone."""
        addr = None
        if default_port is not None:
            bare = text.strip()
            bracketed = bare.startswith("[") and bare.endswith("]")
            if bracketed:
                bare = bare[1:-1]
            if _has_zone(bare):
                raise self.err(field, f"{_show(text)} {_ZONE_PROBLEM}")
            with contextlib.suppress(ValueError):
                addr = (str(ipaddress.ip_address(bare)), default_port)
            if bracketed and addr is not None and ":" not in addr[0]:
                raise self.err(field, f"{_show(text)}: brackets are for IPv6 addresses; write "
                                      f"an IPv4 address without them")
            if addr is None and ":" not in bare:
                raise self.err(field, f"{_show(text)}: {_show(bare.strip())} is not an IP address "
                                      f"(host names are not resolved; write an IP address, "
                                      f"with :PORT if not 500)")
        if addr is None:
            try:
                addr = _parse_addr(text, bare_port=False)
            except ValueError as e:
                raise self.err(field, f"{_show(text)}: {e}") from None
        ip = _parse_ip(addr[0])
        if ip.is_unspecified or ip.is_multicast or (
                isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address(
                    "255.255.255.255")):
            raise self.err(field, f"{_show(text)} is not a unicast address; leave endpoint out "
                                  f"to learn it from the peer's first packet")
        if ip.version == 6:
            usable = any(_is_ipv6(a) for a in listen)
        else:
            # an IPv4 socket, or the IPv6 wildcard (dual-stack on Linux by default)
            usable = any(not _is_ipv6(a) or a[0] == "::" for a in listen)
        if not usable:
            raise self.err(field, f"{_show(text)} is an IPv{ip.version} address but no listen "
                                  f"address can reach it; add one to listen")
        return addr

    def network(self, field: str, text: str) -> Network:
        s = text.strip()
        if _has_zone(s):
            raise self.err(field, f"{_show(text)} {_ZONE_PROBLEM}")
        try:
            return ipaddress.ip_network(s)
        except ValueError as e:
            try:
                loose = ipaddress.ip_network(s, strict=False)
            except ValueError:
                raise self.err(field, f"{_show(text)} is not an IP prefix "
                                      f"(e.g. \"198.18.100.0/24\" or \"fd00::/64\")") from e
            host = ipaddress.ip_interface(s).ip
            raise self.err(field, f"{_show(text)} has host bits set; write the prefix "
                                  f"\"{loose}\", or \"{host}/{loose.max_prefixlen}\" for the "
                                  f"one address") from None

    def key_path(self, t: dict[str, Any], key: str, pre: str, suite: Suite) -> Path:
        text = self.get(t, key, pre, str, f"the path of a key file made by `nattunnel keygen "
                                          f"--suite {suite.name} PATH`")
        if not text:
            raise self.err(pre + key, "is empty; expected the path of a key file")
        # Joined, not resolved: a symbolic link as the last component must stay visible to
        # load_keymat, which refuses it.
        return self.base_dir / self.path_text(pre + key, text)

    def load_keys(self, peers: list[PeerConfig]) -> list[PeerConfig]:
        """Read every key file; refuse two SAs with the same keying material."""
        seen: dict[bytes, str] = {}
        out = []
        for i, p in enumerate(peers):
            if p.ike is not None:
                out.append(replace(p, ike=self.ike_credentials(i, p.ike)))
                continue
            loaded = {}
            for key, path in (("key_in", p.key_in_path), ("key_out", p.key_out_path)):
                assert path is not None
                field = f"peer[{i}].{key}"
                data = self.key(field, path, p.suite)
                # Compared as bytes, reported by field name only.
                if data in seen:
                    raise self.err(field, f"holds the same keying material as {seen[data]}; "
                                          f"every SA (each direction of each peer) needs its "
                                          f"own key: generate one with `nattunnel keygen`")
                seen[data] = field
                loaded[key] = data
            out.append(replace(p, key_in=loaded["key_in"], key_out=loaded["key_out"]))
        return out

    def ike_credentials(self, index: int, ike: IkeConfig) -> IkeConfig:
        """Read an IKE peer's PSK or Ed25519 keys into its IkeConfig."""
        files = self.ike_files[index]
        pre = f"peer[{index}]."
        if files.auth is IkeAuth.PSK:
            assert files.psk_file is not None
            psk = self.credential(pre + "psk_file", load_psk, files.psk_file)
            return replace(ike, psk=psk)
        assert files.private_key is not None and files.peer_public_key is not None
        private = self.credential(pre + "private_key", load_ed25519_private,
                                  files.private_key)
        public = self.credential(pre + "peer_public_key", load_ed25519_public,
                                 files.peer_public_key)
        if public == private.public_key():
            raise self.err(pre + "peer_public_key", f"{files.peer_public_key}: is this host's "
                                                    f"own public key (the pair of "
                                                    f"private_key); name the peer's .pub file")
        return replace(ike, private_key=private, peer_public_key=public)

    def credential(self, field: str, load: Callable[[Path], _T], path: Path) -> _T:
        try:
            return load(path)
        except KeyFileError as e:  # names the file and the reason, never the key
            raise self.err(field, str(e)) from None

    def key(self, field: str, path: Path, suite: Suite) -> bytes:
        try:
            data = load_keymat(path, suite)
        except KeyFileError as e:
            # KeyFileError names the file and the reason, never the key.
            message = str(e)
            if f"expected {suite.keymat_len} octets" in message:
                message += (f" (peer suite {suite.name}: {suite.key_len}-octet key + "
                            f"{suite.salt_len}-octet salt)")
            raise self.err(field, message) from None
        return data

    def cross_check(self, peers: list[PeerConfig], interface: InterfaceConfig) -> None:
        names: dict[str, int] = {}
        spis: dict[int, int] = {}
        remote_ids: dict[Identity, int] = {}
        nets: list[tuple[Network, str, str]] = []
        held: PrefixTable[tuple[str, str]] = PrefixTable()  # the same, for overlap checks
        for i, p in enumerate(peers):
            pre = f"peer[{i}]."
            if p.name in names:
                raise self.err(pre + "name", f"{p.name!r} is already the name of "
                                             f"peer[{names[p.name]}]; peer names must be unique")
            names[p.name] = i
            if p.ike is not None:
                rid = p.ike.remote_id
                if rid in remote_ids:
                    j = remote_ids[rid]
                    raise self.err(pre + "remote_id", f"{str(rid)!r} is already the remote_id "
                                                      f"of peer[{j}] ({peers[j].name!r}); an "
                                                      f"IKE peer is found by its identity, so "
                                                      f"remote_id must be unique")
                remote_ids[rid] = i
            if p.spi_in is not None:
                if p.spi_in in spis:
                    j = spis[p.spi_in]
                    raise self.err(pre + "spi_in", f"{_spi(p.spi_in)} is already the spi_in "
                                                   f"of peer[{j}] ({peers[j].name!r}); "
                                                   f"inbound SPIs must be unique")
                spis[p.spi_in] = i
            for j, net in enumerate(p.allowed_ips):
                field = f"{pre}allowed_ips[{j}]"
                clash = held.conflict(net)
                if clash is not None:
                    other, (ofield, oname) = clash
                    whose = "the same peer" if oname == p.name else f"peer {oname!r}"
                    raise self.err(field, f"{net} overlaps {other} ({ofield}, {whose}); "
                                          f"every inner address must belong to one prefix "
                                          f"of one peer")
                held.add(net, (field, p.name))
                nets.append((net, field, p.name))

        inner_v6 = any(a.version == 6 for a in interface.addresses) or any(
            n.version == 6 for n, _, _ in nets)
        if inner_v6 and interface.mtu < INNER_MTU_MIN_IPV6:
            if self.mtu_explicit:
                raise self.err("interface.mtu", f"{interface.mtu} is below "
                                                f"{INNER_MTU_MIN_IPV6}, the IPv6 minimum link "
                                                f"MTU (RFC 8200), and the tunnel carries IPv6")
            need = interface.underlay_mtu
            while inner_mtu(need, outer_ipv6=self.outer_ipv6) < INNER_MTU_MIN_IPV6:
                need += 1
            raise self.err("interface.underlay_mtu",
                           f"{interface.underlay_mtu} leaves an inner MTU of {self.mtu_note}; "
                           f"the tunnel carries IPv6, whose minimum link MTU is "
                           f"{INNER_MTU_MIN_IPV6} (RFC 8200): underlay_mtu must be at least "
                           f"{need}")
