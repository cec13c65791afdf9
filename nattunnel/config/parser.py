"""Reading a configuration: ``load_config(path)``, ``parse_config(text, base_dir)``.

``Parser`` checks the top level, ``[interface]`` (the TUN device and its MTU, derived from
``underlay_mtu`` unless given), ``[limits]`` (``ike.IkeLimits``) and ``listen``; the peers are
``PeerFields``'s. Everything in the file is checked before the first key file is opened.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Final

from ..addr import HostPort, format_addr
from ..constants import IKE_PORT
from ..esp.udpencap import inner_mtu
from ..ike.ratelimit import IkeLimits
from ..keys import load_psk
from .fields import ZONE_PROBLEM, ConfigError, got, has_zone, is_ipv6, parse_addr, parse_ip, show
from .model import (
    DEFAULT_INTERFACE_NAME,
    DEFAULT_LISTEN,
    DEFAULT_UNDERLAY_MTU,
    IFNAME_MAX,
    INNER_MTU_MIN_IPV4,
    INNER_MTU_MIN_IPV6,
    LIMIT_COUNT_MAX,
    TURN_OVERHEAD,
    TURN_PORT,
    UNDERLAY_MTU_MAX,
    UNDERLAY_MTU_MIN,
    Config,
    InterfaceConfig,
    IPInterface,
    PeerConfig,
    TurnConfig,
)
from .peers import PeerFields

#: the keys of the top level, of [interface] and of [limits]
#: where root's control sockets go unless ``control_socket`` says otherwise
SYSTEM_CONTROL_DIR: Final = Path("/run/nattunnel")


def default_control_dir() -> Path:
    """Where control sockets go unless ``control_socket`` says otherwise: /run/nattunnel
    for root, else $XDG_RUNTIME_DIR/nattunnel (or /tmp/nattunnel-UID): the commands
    (``nattunnel show`` ...) look there too."""
    if os.geteuid() == 0:
        return SYSTEM_CONTROL_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "nattunnel"
    return Path(f"/tmp/nattunnel-{os.geteuid()}")


#: sun_path's size less its NUL (unix(7))
UNIX_PATH_MAX: Final = 107
TOP_KEYS: Final = ("listen", "interface", "peer", "keylog", "ike_port", "limits",
                    "control_socket", "metrics", "turn", "pools", "mediation_server")
TURN_KEYS: Final = ("server", "username", "password_file")
INTERFACE_KEYS: Final = ("kind", "name", "addresses", "underlay_mtu", "mtu")
#: the fields of ike.IkeLimits (a test checks that they are all here)
LIMITS_KEYS: Final = (
    "cookie_threshold", "half_open_max", "half_open_timeout", "init_rate", "init_burst",
    "init_rate_total", "ike_sas_per_identity", "children_per_ike_sa", "cookie_secret_lifetime",
)
INTERFACE_KINDS: Final = ("tun", "inprocess")


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
    return Parser(path, Path(base_dir)).config(doc)


def config_from_dict(doc: dict[str, Any], base_dir: str | os.PathLike[str] = ".") -> Config:
    """A configuration from the same keys and values as the TOML file, as Python values
    (``{"listen": ["127.0.0.1:0"], "interface": {"kind": "inprocess"}, "peer": [{...}]}``),
    checked exactly as a file is; key paths are relative to ``base_dir``."""
    if not isinstance(doc, dict):
        raise ConfigError(f"expected a dict of configuration keys, {got(doc)}")
    return Parser(None, Path(base_dir)).config(doc)


class Parser(PeerFields):
    """One document; ``config`` returns its ``Config`` or raises ``ConfigError``."""

    def __init__(self, path: Path | None, base_dir: Path) -> None:
        super().__init__(path, base_dir)
        #: [interface]: whether mtu was given, the derived MTU for messages, the outer family
        self.mtu_explicit = False
        self.mtu_note = ""
        self.outer_ipv6 = False

    def config(self, doc: dict[str, Any]) -> Config:
        """The whole document: every field checked, then every key file read."""
        self.check_keys(doc, TOP_KEYS, "")
        peer_list = doc.get("peer")
        self.peer_tables: list[Any] = peer_list if isinstance(peer_list, list) else []
        listen = self.listen(doc)
        outer_ipv6 = any(is_ipv6(a) for a in listen)
        iface_table = self.get(doc, "interface", "", dict,
                               "a table [interface] with at least addresses", {})
        interface = self.interface(iface_table, outer_ipv6,
                                   TURN_OVERHEAD if "turn" in doc else 0)
        turn = self.turn(doc, listen)

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
        control_socket = self.control_socket(doc)
        metrics = None
        if "metrics" in doc:
            text = self.get(doc, "metrics", "", str, "\"ADDRESS:PORT\" for the Prometheus "
                                                      "endpoint, e.g. \"127.0.0.1:9586\"")
            try:
                if ":" not in text:  # a bare port: which address is too important to guess
                    raise ValueError("no address")
                metrics = parse_addr(text, bare_port=True)  # port 0: any free port
            except ValueError as e:
                raise self.err("metrics", f"{show(text)}: {e}; expected ADDRESS:PORT, e.g. "
                                          f"\"127.0.0.1:9586\"") from None

        peer_tables = self.get(doc, "peer", "", list, "an array of tables [[peer]]", [])
        pools = self.read_pools(doc)
        peers: list[PeerConfig] = []
        for i, table in enumerate(peer_tables):
            if not isinstance(table, dict):
                raise self.err(f"peer[{i}]", f"expected a table [[peer]], {got(table)}")
            peers.append(self.peer(table, f"peer[{i}].", listen, interface, i))
        # Everything in the file is checked before any key file is opened.
        self.cross_check(peers)
        self.check_ipv6_mtu(peers, interface)
        for i, p in enumerate(peers):
            if p.relay == "always" and (turn is None or p.endpoint is None):
                raise self.err(f"peer[{i}].relay", "\"always\" needs a turn server (turn = "
                                                   "{ server = ... }) and the peer's endpoint "
                                                   "(its relayed address)")
        mediation_server = self.mediation_server(doc, peers)
        peers = self.load_keys(peers)
        if turn is not None:
            password = self.credential("turn.password_file", load_psk, turn.password_file)
            try:
                turn = dataclasses.replace(turn, password=password.decode("utf-8"))
            except UnicodeDecodeError:
                raise self.err("turn.password_file", "the password is not UTF-8 text "
                                                     "(RFC 8489 section 9.2.2)") from None
        return Config(listen=listen, interface=interface, peers=tuple(peers), path=self.path,
                      keylog=keylog, ike_port=ike_port, limits=limits,
                      control_socket=control_socket, metrics=metrics, turn=turn, pools=pools,
                      mediation_server=mediation_server)

    def mediation_server(self, doc: dict[str, Any], peers: list[PeerConfig]) -> bool:
        """IKEv2 mediation: ``mediation_server``, and each ``mediated_by`` names a [[peer]]
        with ``mediation = true`` and an endpoint (the server)."""
        server = self.get(doc, "mediation_server", "", bool, "true or false", False)
        by_name = {p.name: p for p in peers}
        for i, p in enumerate(peers):
            if p.mediated_by is None:
                continue
            conn = by_name.get(p.mediated_by)
            if conn is None or not conn.mediation or conn.endpoint is None:
                raise self.err(f"peer[{i}].mediated_by", f"{show(p.mediated_by)} is not the "
                                                         "name of a [[peer]] with mediation = "
                                                         "true and the server's endpoint")
        return server

    def turn(self, doc: dict[str, Any], listen: tuple[HostPort, ...]) -> TurnConfig | None:
        """``turn = { server = "HOST:PORT", username = "...", password_file = "PATH" }``
        (the password file is read with the key files)."""
        if "turn" not in doc:
            return None
        t = self.get(doc, "turn", "", dict, "a table { server = \"ADDRESS:PORT\", username "
                                            "= \"...\", password_file = \"PATH\" }")
        self.check_keys(t, TURN_KEYS, "turn.")
        for key in TURN_KEYS:
            if key not in t:
                raise self.err("turn." + key, "is missing")
        text = self.get(t, "server", "turn.", str, "a string \"ADDRESS:PORT\"")
        server = self.endpoint("turn.server", text, listen, TURN_PORT)
        username = self.get(t, "username", "turn.", str, "the TURN username")
        if not username or len(username.encode()) >= 509:  # RFC 8489 section 14.3
            raise self.err("turn.username", "must be 1..508 octets")
        path = self.file_path(t, "password_file", "turn.", "the path of a file (0600) that "
                                                           "holds the TURN password")
        return TurnConfig(server=server, username=username, password_file=path)

    def control_socket(self, doc: dict[str, Any]) -> Path | None:
        """``control_socket``: the Unix socket ``nattunnel show`` and the other commands
        speak to; "" for none; default /run/nattunnel/<the file's name>.sock (root), and
        none for a configuration that is not from a file."""
        if "control_socket" not in doc:
            # named after the file; a configuration that is not from a file has none
            if self.path is None:
                return None
            return default_control_dir() / f"{self.path.stem}.sock"
        text = self.get(doc, "control_socket", "", str,
                        "the path of a Unix socket, or \"\" for none")
        if not text:
            return None
        path = self.base_dir / self.path_text("control_socket", text)
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            raise self.err("control_socket", f"{show(text)} is longer than a Unix socket's "
                                             f"path may be ({UNIX_PATH_MAX} octets)")
        return path

    def limits(self, doc: dict[str, Any]) -> IkeLimits:
        """The ``[limits]`` table: ike.IkeLimits, each field optional with its default."""
        table = self.get(doc, "limits", "", dict, "a table [limits] (docs/config.md)", {})
        pre = "limits."
        self.check_keys(table, LIMITS_KEYS, pre)
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
                                  f"port, {got(v)}")
            try:
                addr = parse_addr(v, bare_port=True)
            except ValueError as e:
                raise self.err(f, f"{show(v)}: {e}") from None
            if parse_ip(addr[0]).is_multicast:
                raise self.err(f, f"{show(v)} is a multicast address; listen on a local "
                                  f"unicast address or a wildcard (0.0.0.0, [::])")
            if addr in seen:
                raise self.err(f, f"{format_addr(addr)} is already listed as {seen[addr]}")
            seen[addr] = f
            out.append(addr)
        return tuple(out)

    def interface(self, t: dict[str, Any], outer_ipv6: bool,
                  relay_overhead: int = 0) -> InterfaceConfig:
        pre = "interface."
        self.check_keys(t, INTERFACE_KEYS, pre)
        kind = self.get(t, "kind", pre, str, "\"tun\" or \"inprocess\"", "tun")
        if kind not in INTERFACE_KINDS:
            close = difflib.get_close_matches(kind, INTERFACE_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.err(pre + "kind", f"{show(kind)} is not an interface kind{hint}; "
                                         f"expected \"tun\" or \"inprocess\"")
        name = self.get(t, "name", pre, str, "a device name of 1..15 characters",
                        DEFAULT_INTERFACE_NAME)
        self.check_ifname(name, pre + "name")

        addresses: list[IPInterface] = []
        # a road-warrior client's TUN gets its address from the gateway (vips)
        vip_client = any(isinstance(p, dict) and "vips" in p for p in self.peer_tables)
        if "addresses" in t or (kind == "tun" and not vip_client):
            expected = ("an array of inner addresses with prefix lengths, "
                        "e.g. [\"198.18.100.1/24\"]")
            for f, s in self.get_str_list(t, "addresses", pre, expected):
                addresses.append(self.inner_address(f, s, addresses))
            if not addresses and kind == "tun" and not vip_client:
                raise self.err(pre + "addresses", "is empty; a TUN interface needs at least "
                                                  "one inner address, e.g. "
                                                  "[\"198.18.100.1/24\"]")

        underlay = self.get_int(t, "underlay_mtu", pre, UNDERLAY_MTU_MIN, UNDERLAY_MTU_MAX,
                                DEFAULT_UNDERLAY_MTU)
        derived = inner_mtu(underlay, outer_ipv6=outer_ipv6) - relay_overhead
        outer = "IPv6" if outer_ipv6 else "IPv4"
        self.outer_ipv6 = outer_ipv6
        relay = (f" and the TURN relay's {relay_overhead}-octet ChannelData header"
                 if relay_overhead else "")
        self.mtu_note = (f"{derived}, the largest inner packet that fits in underlay_mtu "
                         f"{underlay} over {outer}{relay}")
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
            raise self.err(field, f"{show(name)} {problem}")

    def inner_address(self, field: str, text: str, seen: list[IPInterface]) -> IPInterface:
        if has_zone(text):
            raise self.err(field, f"{show(text)} {ZONE_PROBLEM}")
        try:
            iface = ipaddress.ip_interface(text.strip())
        except ValueError:
            raise self.err(field, f"{show(text)} is not an IP address with a prefix length "
                                  f"(e.g. \"198.18.100.1/24\" or \"fd00::1/64\")") from None
        ip = iface.ip
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            raise self.err(field, f"{show(text)} is not a usable unicast host address")
        for other in seen:
            if other.ip == ip:
                raise self.err(field, f"{show(text)}: address {ip} is listed twice")
        return iface

    def check_ipv6_mtu(self, peers: list[PeerConfig], interface: InterfaceConfig) -> None:
        """A tunnel that carries IPv6 (an inner address or an allowed prefix) needs an inner
        MTU of at least 1280 (RFC 8200)."""
        inner_v6 = any(a.version == 6 for a in interface.addresses) or any(
            n.version == 6 for p in peers for n in p.allowed_ips)
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
