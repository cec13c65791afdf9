"""The TOML configuration of a tunnel endpoint with manual SAs (docs/config.md).

``load_config(path)`` reads a file, ``parse_config(text, base_dir)`` a string; both return a
frozen ``Config`` or raise ``ConfigError``. Everything is checked at load time, key files
included, so that an endpoint never starts with half a configuration:

- TOML syntax (with tomllib's line and column), unknown keys (with a close-match suggestion),
  missing keys, types (a TOML boolean is never an integer), ranges;
- addresses: IP literals only (no DNS at load time), IPv6 in brackets, ports 1..65535;
- across peers: unique names, unique ``spi_in``, no overlapping ``allowed_ips``, and no two
  key files holding the same keying material (two SAs on one key and salt would reuse AEAD
  nonces).

Every ConfigError message has the form ``FILE: FIELD: problem``, where FIELD is a path such as
``peer[1].spi_in`` or ``interface.addresses[0]`` (peers are numbered from 0, in file order).
No message ever contains key material: key files are read only by ``keys.load_keymat``, whose
errors never hold key bytes, and values are echoed only for fields that are not keys.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

from .constants import (
    DEFAULT_KEEPALIVE_INTERVAL,
    NAT_T_PORT,
    REPLAY_WINDOW_DEFAULT,
    REPLAY_WINDOW_MAX,
    REPLAY_WINDOW_MIN,
    SPI_RESERVED_MAX,
)
from .keys import KeyFileError, load_keymat
from .suite import SUITES, Suite, suite_by_name
from .udpencap import inner_mtu

#: (host, port); the host is an IP literal without brackets.
Addr = tuple[str, int]
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_LISTEN: Final[tuple[Addr, ...]] = (("0.0.0.0", NAT_T_PORT),)
DEFAULT_INTERFACE_NAME: Final = "nt0"
DEFAULT_UNDERLAY_MTU: Final = 1500
DEFAULT_SUITE: Final = "aes256gcm16"
#: Linux IFNAMSIZ is 16 including the terminating NUL.
IFNAME_MAX: Final = 15
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

_PEER_NAME: Final = re.compile(r"[A-Za-z0-9_.-]+")
_INTERFACE_KINDS: Final = ("tun", "inprocess")


class KeepaliveMode(StrEnum):
    """When to send RFC 3948 NAT-keepalives (one 0xFF octet) to a peer while idle."""

    #: only if this host is behind NAT towards the peer (``behind_nat = true``)
    NAT = "nat"
    ALWAYS = "always"
    NEVER = "never"


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
class PeerConfig:
    name: str
    #: where to send; None: learned from the first authenticated packet (a peer behind NAT)
    endpoint: Addr | None
    #: inner prefixes routed to this peer and accepted from it
    allowed_ips: tuple[IPNetwork, ...]
    suite: Suite
    spi_in: int
    spi_out: int
    key_in: bytes
    key_out: bytes
    key_in_path: Path
    key_out_path: Path
    esn: bool
    replay_window: int
    keepalive: KeepaliveMode
    #: whether THIS host is behind NAT towards this peer
    behind_nat: bool
    keepalive_interval: float
    tfc_pad: int

    def __repr__(self) -> str:
        # The dataclass repr would print key_in and key_out; never let a log line hold a key.
        return (f"PeerConfig(name={self.name!r}, endpoint={self.endpoint!r}, "
                f"allowed_ips={tuple(str(n) for n in self.allowed_ips)!r}, "
                f"suite={self.suite.name!r}, spi_in={self.spi_in:#010x}, "
                f"spi_out={self.spi_out:#010x}, key_in=<{len(self.key_in)} octets from "
                f"{str(self.key_in_path)!r}>, key_out=<{len(self.key_out)} octets from "
                f"{str(self.key_out_path)!r}>, esn={self.esn}, "
                f"replay_window={self.replay_window}, keepalive={self.keepalive.value!r}, "
                f"behind_nat={self.behind_nat}, keepalive_interval={self.keepalive_interval}, "
                f"tfc_pad={self.tfc_pad})")


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[Addr, ...]
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...]
    #: the file it was loaded from, if any
    path: Path | None


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


def format_addr(addr: Addr) -> str:
    """``host:port``, with an IPv6 host in brackets: ``[2001:db8::1]:4500``."""
    host, port = addr
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


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
    return _Parser(path, Path(base_dir)).config(doc)


# --- internals ---------------------------------------------------------------------------

_T = TypeVar("_T")
_MISSING: Final = object()

_TOP_KEYS: Final = ("listen", "interface", "peer")
_INTERFACE_KEYS: Final = ("kind", "name", "addresses", "underlay_mtu", "mtu")
_PEER_KEYS: Final = (
    "name", "endpoint", "allowed_ips", "suite", "spi_in", "spi_out", "key_in", "key_out",
    "esn", "replay_window", "keepalive", "behind_nat", "keepalive_interval", "tfc_pad",
)


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
        return str(value)
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


def _parse_addr(text: str, *, bare_port: bool) -> Addr:
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
        try:
            host = ipaddress.IPv6Address(host_text)
        except ValueError:
            raise ValueError(f"{host_text!r} is not an IPv6 address") from None
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
        raise ValueError(f"{host_text!r} is not an IPv4 address (host names are not "
                         f"resolved; write an IP address)") from None
    return str(host4), _parse_port(port_text, lo)


def _parse_port(text: str, lo: int = 1) -> int:
    if not text.isdecimal() or not text.isascii():
        raise ValueError(f"port {text!r} is not a number")
    port = int(text)
    if not lo <= port <= 65535:
        raise ValueError(f"port {port} is outside {lo}..65535")
    return port


def _is_ipv6(addr: Addr) -> bool:
    return ":" in addr[0]


class _Parser:
    def __init__(self, path: Path | None, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir
        self.mtu_explicit = False
        self.mtu_note = ""
        self.outer_ipv6 = False

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

        peer_tables = self.get(doc, "peer", "", list, "an array of tables [[peer]]", [])
        peers: list[PeerConfig] = []
        for i, table in enumerate(peer_tables):
            if not isinstance(table, dict):
                raise self.err(f"peer[{i}]", f"expected a table [[peer]], {_got(table)}")
            peers.append(self.peer(table, f"peer[{i}].", listen, interface))
        # Everything in the file is checked before any key file is opened.
        self.cross_check(peers, interface)
        peers = self.load_keys(peers)
        return Config(listen=listen, interface=interface, peers=tuple(peers), path=self.path)

    def listen(self, doc: dict[str, Any]) -> tuple[Addr, ...]:
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
        out: list[Addr] = []
        seen: dict[Addr, str] = {}
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
        # Linux dev_valid_name(): 1..IFNAMSIZ-1 octets, not "." or "..", no '/', ':' or space.
        problem = None
        if not name:
            problem = "is empty"
        elif len(name.encode()) > IFNAME_MAX:
            problem = f"is {len(name.encode())} octets long; Linux allows at most {IFNAME_MAX}"
        elif name in (".", ".."):
            problem = "is not a valid device name"
        elif any(c in "/:" or c.isspace() or not c.isprintable() for c in name):
            problem = "must not contain '/', ':', whitespace or control characters"
        if problem:
            raise self.err(field, f"{_show(name)} {problem}")

    def inner_address(self, field: str, text: str, seen: list[IPInterface]) -> IPInterface:
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

    def peer(self, t: dict[str, Any], pre: str, listen: tuple[Addr, ...],
             interface: InterfaceConfig) -> PeerConfig:
        self.check_keys(t, _PEER_KEYS, pre)
        name = self.get(t, "name", pre, str, "a string of letters, digits, '_', '.', '-'")
        if not _PEER_NAME.fullmatch(name) or len(name) > PEER_NAME_MAX:
            raise self.err(pre + "name", f"{_show(name)} is not a valid peer name; use 1.."
                                         f"{PEER_NAME_MAX} of A-Z a-z 0-9 _ . -")

        endpoint = None
        if "endpoint" in t:
            text = self.get(t, "endpoint", pre, str,
                            "a string \"ADDRESS:PORT\" or \"[IPV6]:PORT\"")
            endpoint = self.endpoint(pre + "endpoint", text, listen)

        expected = "an array of inner prefixes, e.g. [\"198.18.100.2/32\"]"
        allowed: list[IPNetwork] = []
        for f, s in self.get_str_list(t, "allowed_ips", pre, expected):
            allowed.append(self.network(f, s))
        if not allowed:
            raise self.err(pre + "allowed_ips", "is empty; list the inner prefixes this peer "
                                                "may send from, e.g. [\"198.18.100.2/32\"]")

        suite_name = self.get(t, "suite", pre, str,
                              f"a suite name, one of {', '.join(sorted(SUITES))}", DEFAULT_SUITE)
        try:
            suite = suite_by_name(suite_name)
        except ValueError as e:
            raise self.err(pre + "suite", str(e)) from None

        spi_in = self.get_int(t, "spi_in", pre, SPI_MIN, SPI_MAX, hex_=True)
        spi_out = self.get_int(t, "spi_out", pre, SPI_MIN, SPI_MAX, hex_=True)
        key_in_path = self.key_path(t, "key_in", pre, suite)
        key_out_path = self.key_path(t, "key_out", pre, suite)

        esn = self.get(t, "esn", pre, bool, "true or false", False)
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
        interval = self.get(t, "keepalive_interval", pre, object, "a number of seconds > 0",
                            DEFAULT_KEEPALIVE_INTERVAL)
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise self.err(pre + "keepalive_interval",
                           f"expected a number of seconds > 0, {_got(interval)}")
        if not (math.isfinite(interval) and interval > 0):
            raise self.err(pre + "keepalive_interval",
                           f"{_show(interval)} is out of range; expected a number of seconds > 0")
        tfc_pad = self.get_int(t, "tfc_pad", pre, 0, min(interface.mtu, TFC_PAD_MAX), 0)

        return PeerConfig(
            name=name, endpoint=endpoint, allowed_ips=tuple(allowed), suite=suite,
            spi_in=spi_in, spi_out=spi_out, key_in=b"", key_out=b"",  # load_keys() fills
            key_in_path=key_in_path, key_out_path=key_out_path, esn=esn,
            replay_window=replay_window, keepalive=keepalive, behind_nat=behind_nat,
            keepalive_interval=float(interval), tfc_pad=tfc_pad,
        )

    def endpoint(self, field: str, text: str, listen: tuple[Addr, ...]) -> Addr:
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

    def network(self, field: str, text: str) -> IPNetwork:
        s = text.strip()
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
        return self.base_dir / text

    def load_keys(self, peers: list[PeerConfig]) -> list[PeerConfig]:
        """Read every key file; refuse two SAs with the same keying material."""
        seen: dict[bytes, str] = {}
        out = []
        for i, p in enumerate(peers):
            loaded = {}
            for key, path in (("key_in", p.key_in_path), ("key_out", p.key_out_path)):
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
        nets: list[tuple[IPNetwork, str, str]] = []
        for i, p in enumerate(peers):
            pre = f"peer[{i}]."
            if p.name in names:
                raise self.err(pre + "name", f"{p.name!r} is already the name of "
                                             f"peer[{names[p.name]}]; peer names must be unique")
            names[p.name] = i
            if p.spi_in in spis:
                j = spis[p.spi_in]
                raise self.err(pre + "spi_in", f"{_spi(p.spi_in)} is already the spi_in of "
                                               f"peer[{j}] ({peers[j].name!r}); inbound SPIs "
                                               f"must be unique")
            spis[p.spi_in] = i
            for j, net in enumerate(p.allowed_ips):
                field = f"{pre}allowed_ips[{j}]"
                for other, ofield, oname in nets:
                    if net.version == other.version and net.overlaps(other):
                        whose = "the same peer" if oname == p.name else f"peer {oname!r}"
                        raise self.err(field, f"{net} overlaps {other} ({ofield}, {whose}); "
                                              f"every inner address must belong to one prefix "
                                              f"of one peer")
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
