"""The TOML field readers and ConfigError: every check that does not depend on what a field means.

``Fields`` reads one value of a parsed TOML document, checks its type (a TOML boolean is never
an integer), its range, and turns any problem into a ``ConfigError`` naming the field's path
(``peer[1].spi_in``); ``parser``, ``peers`` and ``ike_settings`` build on it. The helpers
below render values for messages (never a key: key files are read only by ``nattunnel.keys``)
and parse addresses (IP literals only, IPv6 in brackets, no zones).
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from ..addr import HostPort, Network
from .model import PATH_MAX, IPAddress

_T = TypeVar("_T")
#: "no default": the key is required
MISSING: Final = object()


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


def toml_type(value: object) -> str:
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


def show(value: object) -> str:
    """A short TOML-like rendering of a (non-key) value for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        s = value if len(value) <= 60 else value[:57] + "..."
        return repr(s)
    if isinstance(value, int | float):
        s = str(value)
        return s if len(s) <= 60 else s[:57] + "..."
    return toml_type(value)


def got(value: object) -> str:
    if isinstance(value, list | dict):
        return f"got {toml_type(value)}"
    return f"got {toml_type(value)} ({show(value)})"


def spi_text(value: int) -> str:
    return f"{value} ({value:#x})"


def suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; known keys: {', '.join(known)}"


def parse_ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


#: an IPv6 zone (scope ID): ``fe80::1%eth0``. ipaddress accepts any text after the '%'.
ZONE_PROBLEM: Final = ("has an IPv6 zone (%...), which nattunnel does not support; write the "
                        "address without it")


def has_zone(text: str) -> bool:
    return "%" in text


def parse_addr(text: str, *, bare_port: bool) -> HostPort:
    """``host:port`` or ``[v6host]:port`` (and a bare ``port`` if ``bare_port``). ValueError
    with the problem. Listen addresses (``bare_port``) may use port 0: any free port."""
    lo = 0 if bare_port else 1
    s = text.strip()
    if not s:
        raise ValueError("is empty")
    if bare_port and s.isdecimal():
        return "0.0.0.0", parse_port(s, lo)
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise ValueError("has '[' without a closing ']'")
        host_text, rest = s[1:close], s[close + 1:]
        if not rest.startswith(":") or not rest[1:]:
            raise ValueError("needs a port after the bracketed IPv6 address: [ADDRESS]:PORT")
        if has_zone(host_text):
            raise ValueError(ZONE_PROBLEM)
        try:
            host = ipaddress.IPv6Address(host_text)
        except ValueError:
            raise ValueError(f"{show(host_text)} is not an IPv6 address") from None
        return str(host), parse_port(rest[1:], lo)
    if s.count(":") > 1:
        raise ValueError("an IPv6 address must be in brackets with a port: [ADDRESS]:PORT, "
                         "e.g. \"[2001:db8::1]:4500\"")
    host_text, colon, port_text = s.rpartition(":")
    if not colon:
        raise ValueError("needs a port: ADDRESS:PORT")
    try:
        host4 = ipaddress.IPv4Address(host_text)
    except ValueError:
        raise ValueError(f"{show(host_text)} is not an IPv4 address (host names are not "
                         f"resolved; write an IP address)") from None
    return str(host4), parse_port(port_text, lo)


def parse_port(text: str, lo: int = 1) -> int:
    if not text.isdecimal() or not text.isascii():
        raise ValueError(f"port {show(text)} is not a number")
    if len(text.lstrip("0")) > 5:  # before int(): no digit-limit error for huge numbers
        raise ValueError(f"port {show(text)} is outside {lo}..65535")
    port = int(text)
    if not lo <= port <= 65535:
        raise ValueError(f"port {port} is outside {lo}..65535")
    return port


def is_ipv6(addr: HostPort) -> bool:
    return ":" in addr[0]


class Fields:
    """Field readers over one document: ``path`` names the file in messages, relative paths
    are joined to ``base_dir``."""

    def __init__(self, path: Path | None, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir

    def err(self, field: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.path, field=field)

    def check_keys(self, table: Mapping[str, object], known: tuple[str, ...],
                   prefix: str) -> None:
        for key in table:
            if key not in known:
                raise self.err(f"{prefix}{key}", suggest(key, known))

    def get(self, table: Mapping[str, Any], key: str, prefix: str, kind: type[_T],
            expected: str, default: object = MISSING) -> _T:
        """table[key] checked to be ``kind`` (bool is never an int); ``expected`` describes it.
        Without a default the key is required."""
        field = f"{prefix}{key}"
        if key not in table:
            if default is MISSING:
                raise self.err(field, f"missing required key; expected {expected}")
            return cast("_T", default)
        value = table[key]
        ok = isinstance(value, kind)
        if kind is int and isinstance(value, bool):
            ok = False
        if not ok:
            raise self.err(field, f"expected {expected}, {got(value)}")
        checked: _T = value
        return checked

    def get_int(self, table: Mapping[str, Any], key: str, prefix: str, lo: int, hi: int,
                default: object = MISSING, *, hex_: bool = False) -> int:
        expected = f"an integer {lo}..{hi}"
        if hex_:
            expected += f" ({lo:#x}..{hi:#x})"
        value = self.get(table, key, prefix, int, expected, default)
        if not lo <= value <= hi:
            shown = spi_text(value) if hex_ else str(value)
            raise self.err(f"{prefix}{key}", f"{shown} is out of range; expected {expected}")
        return value

    def get_str_list(self, table: Mapping[str, Any], key: str, prefix: str,
                     expected: str, default: object = MISSING) -> list[tuple[str, str]]:
        """A string or an array of strings, as [(field path, string)]."""
        field = f"{prefix}{key}"
        value = self.get(table, key, prefix, object, expected, default)
        if isinstance(value, str):
            return [(field, value)]
        if not isinstance(value, list):
            raise self.err(field, f"expected {expected}, {got(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.err(f"{field}[{i}]", f"expected a string, {got(item)}")
            out.append((f"{field}[{i}]", item))
        return out

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
            raise self.err(pre + key, f"expected {expected}, {got(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the floats (tomllib takes any size)
            number = math.inf
        if not (math.isfinite(number) and ok(number)):
            raise self.err(pre + key, f"{show(value)} is out of range; expected {expected}")
        return number

    def path_text(self, field: str, text: str) -> str:
        """``text`` if the OS can take it as a path: no NUL, at most PATH_MAX - 1 octets."""
        if "\x00" in text:
            raise self.err(field, f"{show(text)} contains a NUL character, which no file "
                                  f"path can hold")
        try:
            size = len(os.fsencode(text))
        except UnicodeEncodeError:
            raise self.err(field, f"{show(text)} is not valid Unicode (it holds a lone "
                                  f"surrogate)") from None
        if size > PATH_MAX:
            raise self.err(field, f"{show(text)} is {size} octets long; Linux paths are at "
                                  f"most {PATH_MAX}")
        return text

    def file_path(self, t: dict[str, Any], key: str, pre: str, expected: str) -> Path:
        text = self.get(t, key, pre, str, expected)
        if not text:
            raise self.err(pre + key, f"is empty; expected {expected}")
        # Joined, not resolved (see key_path).
        return self.base_dir / self.path_text(pre + key, text)

    def network(self, field: str, text: str) -> Network:
        s = text.strip()
        if has_zone(s):
            raise self.err(field, f"{show(text)} {ZONE_PROBLEM}")
        try:
            return ipaddress.ip_network(s)
        except ValueError as e:
            try:
                loose = ipaddress.ip_network(s, strict=False)
            except ValueError:
                raise self.err(field, f"{show(text)} is not an IP prefix "
                                      f"(e.g. \"198.18.100.0/24\" or \"fd00::/64\")") from e
            host = ipaddress.ip_interface(s).ip
            raise self.err(field, f"{show(text)} has host bits set; write the prefix "
                                  f"\"{loose}\", or \"{host}/{loose.max_prefixlen}\" for the "
                                  f"one address") from None

    def endpoint(self, field: str, text: str, listen: tuple[HostPort, ...],
                 default_port: int | None = None) -> HostPort:
        """``host:port``; with ``default_port`` (IKE peers) also an address alone."""
        addr = None
        if default_port is not None:
            bare = text.strip()
            bracketed = bare.startswith("[") and bare.endswith("]")
            if bracketed:
                bare = bare[1:-1]
            if has_zone(bare):
                raise self.err(field, f"{show(text)} {ZONE_PROBLEM}")
            with contextlib.suppress(ValueError):
                addr = (str(ipaddress.ip_address(bare)), default_port)
            if bracketed and addr is not None and ":" not in addr[0]:
                raise self.err(field, f"{show(text)}: brackets are for IPv6 addresses; write "
                                      f"an IPv4 address without them")
            if addr is None and ":" not in bare:
                raise self.err(field, f"{show(text)}: {show(bare.strip())} is not an IP address "
                                      f"(host names are not resolved; write an IP address, "
                                      f"with :PORT if not 500)")
        if addr is None:
            try:
                addr = parse_addr(text, bare_port=False)
            except ValueError as e:
                raise self.err(field, f"{show(text)}: {e}") from None
        ip = parse_ip(addr[0])
        if ip.is_unspecified or ip.is_multicast or (
                isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address(
                    "255.255.255.255")):
            raise self.err(field, f"{show(text)} is not a unicast address; leave endpoint out "
                                  f"to learn it from the peer's first packet")
        if ip.version == 6:
            usable = any(is_ipv6(a) for a in listen)
        else:
            # an IPv4 socket, or the IPv6 wildcard (dual-stack on Linux by default)
            usable = any(not is_ipv6(a) or a[0] == "::" for a in listen)
        if not usable:
            raise self.err(field, f"{show(text)} is an IPv{ip.version} address but no listen "
                                  f"address can reach it; add one to listen")
        return addr
