"""The TOML configuration (nattunnel.config): a full round trip, defaults, derived MTU, and one
ConfigError per kind of mistake, each naming its field path and never any key."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from nattunnel.config import (
    Config,
    ConfigError,
    KeepaliveMode,
    load_config,
    parse_config,
)
from nattunnel.constants import DEFAULT_KEEPALIVE_INTERVAL, REPLAY_WINDOW_DEFAULT
from nattunnel.esp.suite import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305
from nattunnel.keys import write_key_file

# Recognisable keying material (36 octets, aes256gcm16): any leak is easy to spot.
KEYS = {
    "b-in.key": bytes(range(0xA0, 0xA0 + 36)),
    "b-out.key": bytes(range(0x10, 0x10 + 36)),
    "c-in.key": bytes(range(0x40, 0x40 + 36)),
    "c-out.key": bytes(range(0xC0, 0xC0 + 36)),
}

PEER_B = """
[[peer]]
name = "b"
endpoint = "198.18.0.2:4500"
allowed_ips = ["198.18.100.2/32"]
suite = "aes256gcm16"
spi_in = 0x1001
spi_out = 0x2001
key_in = "keys/b-in.key"
key_out = "keys/b-out.key"
"""

PEER_C = """
[[peer]]
name = "c"
allowed_ips = ["198.18.101.0/24"]
spi_in = 0x1002
spi_out = 0x2002
key_in = "keys/c-in.key"
key_out = "keys/c-out.key"
"""

VALID = """
listen = ["0.0.0.0:4500"]

[interface]
kind = "tun"
name = "nt0"
addresses = ["198.18.100.1/24"]
""" + PEER_B + PEER_C


def assert_no_key(text: str) -> None:
    low = text.lower()
    for key in KEYS.values():
        hexkey = key.hex()
        for i in range(0, len(hexkey) - 8, 2):
            assert hexkey[i:i + 8] not in low
        assert key not in text.encode("latin-1", "replace")


@pytest.fixture
def cfgdir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    for name, key in KEYS.items():
        write_key_file(tmp_path / "keys" / name, key)
    return tmp_path


def load(cfgdir: Path, text: str) -> Config:
    path = cfgdir / "tunnel.toml"
    path.write_text(text)
    return load_config(path)


def error(cfgdir: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(cfgdir, text)
    message = str(info.value)
    assert message.startswith(str(cfgdir / "tunnel.toml") + ": ")
    assert_no_key(message)
    return info.value


def mutate(old: str, new: str, text: str = VALID) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# --- valid configurations ------------------------------------------------------------------

FULL = """
listen = ["0.0.0.0:4500", "[2001:db8::1]:4501"]

[interface]
kind = "tun"
name = "tun-a.0"
addresses = ["198.18.100.1/24", "fd00:100::1/64"]
underlay_mtu = 9000
mtu = 8000

[[peer]]
name = "b"
endpoint = "[2001:db8::2]:4500"
allowed_ips = ["198.18.100.2/32", "fd00:100::2/128"]
suite = "chacha20-poly1305"
spi_in = 0x1001
spi_out = 4294967295
key_in = "keys/b-in.key"
key_out = "keys/b-out.key"
esn = true
replay_window = 4096
keepalive = "always"
behind_nat = true
keepalive_interval = 2.5
tfc_pad = 512

[[peer]]
name = "c.site_2"
allowed_ips = "198.18.101.0/24"
spi_in = 256
spi_out = 0x2002
key_in = "keys/c-in.key"
key_out = "keys/c-out.key"
keepalive = "never"
keepalive_interval = 30
"""


def test_full_config_round_trip(cfgdir: Path) -> None:
    cfg = load(cfgdir, FULL)
    assert cfg.path == cfgdir / "tunnel.toml"
    assert cfg.listen == (("0.0.0.0", 4500), ("2001:db8::1", 4501))
    iface = cfg.interface
    assert iface.kind == "tun" and iface.name == "tun-a.0"
    assert iface.addresses == (ipaddress.ip_interface("198.18.100.1/24"),
                               ipaddress.ip_interface("fd00:100::1/64"))
    assert (iface.underlay_mtu, iface.mtu) == (9000, 8000)

    b, c = cfg.peers
    assert b.name == "b"
    assert b.endpoint == ("2001:db8::2", 4500)
    assert b.allowed_ips == (ipaddress.ip_network("198.18.100.2/32"),
                             ipaddress.ip_network("fd00:100::2/128"))
    assert b.suite is CHACHA20_POLY1305
    assert (b.spi_in, b.spi_out) == (0x1001, 2**32 - 1)
    assert (b.key_in, b.key_out) == (KEYS["b-in.key"], KEYS["b-out.key"])
    assert b.key_in_path.resolve() == (cfgdir / "keys" / "b-in.key").resolve()
    assert b.key_out_path == cfgdir / "keys" / "b-out.key"
    assert b.esn is True and b.replay_window == 4096
    assert b.keepalive is KeepaliveMode.ALWAYS and b.behind_nat is True
    assert b.keepalive_interval == 2.5 and b.tfc_pad == 512

    assert c.name == "c.site_2" and c.endpoint is None
    assert c.allowed_ips == (ipaddress.ip_network("198.18.101.0/24"),)
    assert c.suite is AES_GCM_256  # the default suite
    assert c.spi_in == 256
    assert c.keepalive is KeepaliveMode.NEVER
    assert c.keepalive_interval == 30.0 and isinstance(c.keepalive_interval, float)

    # frozen, and the repr (log lines, tracebacks) holds no key
    with pytest.raises(AttributeError):
        b.spi_in = 1  # type: ignore[misc]
    assert_no_key(repr(cfg))
    assert "36 octets" in repr(b)


def test_defaults(cfgdir: Path) -> None:
    cfg = load(cfgdir, '[interface]\naddresses = ["198.18.100.1/24"]\n' + PEER_C)
    assert cfg.listen == (("0.0.0.0", 4500),)
    assert cfg.interface.kind == "tun" and cfg.interface.name == "nt0"
    assert cfg.interface.underlay_mtu == 1500
    (c,) = cfg.peers
    assert c.endpoint is None
    assert c.suite is AES_GCM_256
    assert c.esn is False
    assert c.replay_window == REPLAY_WINDOW_DEFAULT
    assert c.keepalive is KeepaliveMode.NAT and c.behind_nat is False
    assert c.keepalive_interval == DEFAULT_KEEPALIVE_INTERVAL
    assert c.tfc_pad == 0


def test_no_peers_is_allowed(cfgdir: Path) -> None:
    cfg = load(cfgdir, '[interface]\naddresses = ["198.18.100.1/24"]\n')
    assert cfg.peers == ()


def test_inprocess_interface_needs_no_addresses(cfgdir: Path) -> None:
    cfg = load(cfgdir, '[interface]\nkind = "inprocess"\n' + PEER_B)
    assert cfg.interface.kind == "inprocess" and cfg.interface.addresses == ()


@pytest.mark.parametrize(("listen", "mtu"), [
    ('"0.0.0.0:4500"', 1438),
    ('["0.0.0.0:4500", "[::]:4500"]', 1418),
    ('"[::]:4500"', 1418),
])
def test_derived_mtu(cfgdir: Path, listen: str, mtu: int) -> None:
    cfg = load(cfgdir, mutate('listen = ["0.0.0.0:4500"]', f"listen = {listen}"))
    assert cfg.interface.mtu == mtu


def test_derived_mtu_follows_underlay_mtu(cfgdir: Path) -> None:
    cfg = load(cfgdir, mutate('name = "nt0"', 'name = "nt0"\nunderlay_mtu = 1280'))
    assert cfg.interface.mtu == 1218


def test_explicit_mtu_overrides(cfgdir: Path) -> None:
    cfg = load(cfgdir, mutate('name = "nt0"', 'name = "nt0"\nmtu = 1400'))
    assert cfg.interface.mtu == 1400


@pytest.mark.parametrize(("value", "expected"), [
    ('"0.0.0.0:4500"', (("0.0.0.0", 4500),)),
    ('"4501"', (("0.0.0.0", 4501),)),
    ("4502", (("0.0.0.0", 4502),)),
    ('"[::]:4500"', (("::", 4500),)),
    ('["0.0.0.0:4500", "[2001:DB8:0::1]:4500"]', (("0.0.0.0", 4500), ("2001:db8::1", 4500))),
    ('[" 192.0.2.1:4500", "[::1]:1"]', (("192.0.2.1", 4500), ("::1", 1))),
])
def test_listen_forms(cfgdir: Path, value: str, expected: tuple[tuple[str, int], ...]) -> None:
    cfg = load(cfgdir, mutate('listen = ["0.0.0.0:4500"]', f"listen = {value}"))
    assert cfg.listen == expected


def test_suite_aliases_and_key_length(cfgdir: Path) -> None:
    write_key_file(cfgdir / "keys" / "short-in.key", bytes(range(20)))
    write_key_file(cfgdir / "keys" / "short-out.key", bytes(range(20, 40)))
    text = mutate('suite = "aes256gcm16"', 'suite = "AES128GCM16"')
    text = mutate('"keys/b-in.key"', '"keys/short-in.key"', text)
    text = mutate('"keys/b-out.key"', '"keys/short-out.key"', text)
    assert load(cfgdir, text).peers[0].suite is AES_GCM_128


# --- key files -----------------------------------------------------------------------------

def test_relative_key_paths_resolve_against_config_dir(
        cfgdir: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(elsewhere)
    (cfgdir / "tunnel.toml").write_text(VALID)
    # a relative config path from another working directory
    cfg = load_config(os.path.relpath(cfgdir / "tunnel.toml", elsewhere))
    b = cfg.peers[0]
    assert b.key_in == KEYS["b-in.key"]
    assert b.key_in_path.is_absolute()
    assert b.key_in_path.resolve() == (cfgdir / "keys" / "b-in.key").resolve()


def test_absolute_key_path(cfgdir: Path) -> None:
    text = mutate('"keys/b-in.key"', f'"{cfgdir / "keys" / "b-in.key"}"')
    assert load(cfgdir, text).peers[0].key_in == KEYS["b-in.key"]


def test_parse_config_uses_base_dir(cfgdir: Path) -> None:
    cfg = parse_config(VALID, cfgdir)
    assert cfg.path is None
    assert cfg.peers[1].key_out == KEYS["c-out.key"]


def test_group_readable_key_refused(cfgdir: Path) -> None:
    os.chmod(cfgdir / "keys" / "b-out.key", 0o644)
    e = error(cfgdir, VALID)
    assert e.field == "peer[0].key_out"
    assert "peer[0].key_out: " in str(e)
    assert "chmod 600" in str(e)
    assert "0644" in str(e)


def test_missing_key_file(cfgdir: Path) -> None:
    e = error(cfgdir, mutate('"keys/c-in.key"', '"keys/nope.key"'))
    assert "peer[1].key_in: " in str(e) and "no such key file" in str(e)
    assert str(cfgdir / "keys" / "nope.key") in str(e)


def test_wrong_key_length_for_suite(cfgdir: Path) -> None:
    # 36-octet material where aes128gcm16 needs 20: the message gives lengths, never octets
    e = error(cfgdir, mutate('suite = "aes256gcm16"', 'suite = "aes128gcm16"'))
    assert "peer[0].key_in: " in str(e)
    assert "expected 20 octets" in str(e) and "aes128gcm16" in str(e)


def test_malformed_key_file(cfgdir: Path) -> None:
    bad = cfgdir / "keys" / "bad.key"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, KEYS["b-in.key"].hex().encode()[:-1] + b"z\n")
    os.close(fd)
    e = error(cfgdir, mutate('"keys/b-in.key"', '"keys/bad.key"'))
    assert "peer[0].key_in: " in str(e)


def test_key_material_reuse_refused(cfgdir: Path) -> None:
    # the same file for both directions
    e = error(cfgdir, mutate('"keys/b-out.key"', '"keys/b-in.key"'))
    assert e.field == "peer[0].key_out" and "peer[0].key_in" in str(e)
    # the same material in two files of two peers
    write_key_file(cfgdir / "keys" / "copy.key", KEYS["b-in.key"])
    e = error(cfgdir, mutate('"keys/c-out.key"', '"keys/copy.key"'))
    assert e.field == "peer[1].key_out" and "peer[0].key_in" in str(e)


# --- errors --------------------------------------------------------------------------------

def test_toml_syntax_error(cfgdir: Path) -> None:
    text = mutate("spi_out = 0x2002", "spi_out = = 0x2002")
    line = text.splitlines().index("spi_out = = 0x2002") + 1
    e = error(cfgdir, text)
    assert "TOML syntax error" in str(e)
    assert f"line {line}, column 11" in str(e)


def test_duplicate_toml_key_is_a_syntax_error(cfgdir: Path) -> None:
    e = error(cfgdir, mutate("spi_out = 0x2002", "spi_out = 0x2002\nspi_out = 0x2003"))
    assert "TOML syntax error" in str(e) and "line" in str(e)


@pytest.mark.parametrize(("old", "new", "field", "suggestion"), [
    ('listen = ["0.0.0.0:4500"]', 'listn = ["0.0.0.0:4500"]', "listn", "listen"),
    ("[interface]", "[interfaces]", "interfaces", "interface"),
    ('name = "nt0"', 'nmae = "nt0"', "interface.nmae", "name"),
    ("spi_in = 0x1001", "spi_inn = 0x1001", "peer[0].spi_inn", "spi_in"),
    ("key_out = \"keys/c-out.key\"", "key_out = \"keys/c-out.key\"\nkeepalive_intreval = 5",
     "peer[1].keepalive_intreval", "keepalive_interval"),
])
def test_unknown_key(cfgdir: Path, old: str, new: str, field: str, suggestion: str) -> None:
    e = error(cfgdir, mutate(old, new))
    assert e.field == field
    assert f"{field}: unknown key (did you mean {suggestion!r}?)" in str(e)


def test_unknown_key_without_close_match(cfgdir: Path) -> None:
    e = error(cfgdir, "colour = 1\n" + VALID)
    assert "colour: unknown key; known keys: listen, interface, peer" in str(e)


@pytest.mark.parametrize(("line", "field"), [
    ('name = "b"\n', "peer[0].name"),
    ('allowed_ips = ["198.18.100.2/32"]\n', "peer[0].allowed_ips"),
    ("spi_in = 0x1001\n", "peer[0].spi_in"),
    ("spi_out = 0x2002\n", "peer[1].spi_out"),
    ('key_in = "keys/b-in.key"\n', "peer[0].key_in"),
    ('key_out = "keys/c-out.key"\n', "peer[1].key_out"),
    ('addresses = ["198.18.100.1/24"]\n', "interface.addresses"),
])
def test_missing_required_key(cfgdir: Path, line: str, field: str) -> None:
    e = error(cfgdir, mutate(line, ""))
    assert e.field == field
    assert f"{field}: missing required key" in str(e)


def test_missing_interface_table(cfgdir: Path) -> None:
    e = error(cfgdir, PEER_B)
    assert "interface.addresses: missing required key" in str(e)


# (replace this, with this) -> field path, and a fragment of the problem
BAD = [
    # wrong types
    ("spi_in = 0x1001", "spi_in = true", "peer[0].spi_in", "got a boolean (true)"),
    ("spi_out = 0x2001", 'spi_out = "0x2001"', "peer[0].spi_out", "got a string ('0x2001')"),
    ("spi_in = 0x1002", "spi_in = 4098.0", "peer[1].spi_in", "got a float (4098.0)"),
    ('name = "b"', "name = 1", "peer[0].name", "got an integer (1)"),
    ('endpoint = "198.18.0.2:4500"', "endpoint = 4500", "peer[0].endpoint", "got an integer"),
    ('allowed_ips = ["198.18.100.2/32"]', "allowed_ips = [1]", "peer[0].allowed_ips[0]",
     "expected a string, got an integer"),
    ('allowed_ips = ["198.18.100.2/32"]', "allowed_ips = {a = 1}", "peer[0].allowed_ips",
     "got a table"),
    ('addresses = ["198.18.100.1/24"]', 'addresses = ["198.18.100.1/24", false]',
     "interface.addresses[1]", "got a boolean"),
    ('kind = "tun"', "kind = 1", "interface.kind", "got an integer"),
    ('name = "nt0"', 'name = "nt0"\nunderlay_mtu = true', "interface.underlay_mtu",
     "got a boolean"),
    ('name = "nt0"', 'name = "nt0"\nmtu = 1400.5', "interface.mtu", "got a float"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nesn = 1", "peer[1].esn", "expected true or false"),
    ("spi_out = 0x2002", 'spi_out = 0x2002\nbehind_nat = "yes"', "peer[1].behind_nat",
     "expected true or false"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nreplay_window = false", "peer[1].replay_window",
     "got a boolean"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nkeepalive_interval = true",
     "peer[1].keepalive_interval", "got a boolean"),
    ("spi_out = 0x2002", 'spi_out = 0x2002\nkeepalive_interval = "20s"',
     "peer[1].keepalive_interval", "got a string"),
    ("spi_out = 0x2002", "spi_out = 0x2002\ntfc_pad = true", "peer[1].tfc_pad",
     "got a boolean"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nkeepalive = true", "peer[1].keepalive",
     "got a boolean"),
    ('key_in = "keys/b-in.key"', "key_in = 7", "peer[0].key_in", "got an integer"),
    ('key_in = "keys/b-in.key"', 'key_in = ""', "peer[0].key_in", "is empty"),
    ('suite = "aes256gcm16"', "suite = 256", "peer[0].suite", "got an integer"),
    ('listen = ["0.0.0.0:4500"]', "listen = [true]", "listen[0]", "got a boolean"),
    ('listen = ["0.0.0.0:4500"]', "listen = {port = 4500}", "listen", "got a table"),
    ('[interface]\nkind = "tun"\nname = "nt0"\naddresses = ["198.18.100.1/24"]',
     'interface = "tun"', "interface", "got a string"),
    # out of range
    ("spi_in = 0x1001", "spi_in = 255", "peer[0].spi_in", "255 (0xff) is out of range"),
    ("spi_in = 0x1001", "spi_in = 0", "peer[0].spi_in", "expected an integer 256..4294967295"),
    ("spi_out = 0x2001", "spi_out = 0x100000000", "peer[0].spi_out", "out of range"),
    ("spi_out = 0x2001", "spi_out = -1", "peer[0].spi_out", "out of range"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nreplay_window = 32", "peer[1].replay_window",
     "expected an integer 64..8192"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nreplay_window = 8193", "peer[1].replay_window",
     "out of range"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nkeepalive_interval = 0",
     "peer[1].keepalive_interval", "seconds > 0"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nkeepalive_interval = -1.5",
     "peer[1].keepalive_interval", "out of range"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nkeepalive_interval = nan",
     "peer[1].keepalive_interval", "out of range"),
    ("spi_out = 0x2002", "spi_out = 0x2002\nkeepalive_interval = inf",
     "peer[1].keepalive_interval", "out of range"),
    ("spi_out = 0x2002", "spi_out = 0x2002\ntfc_pad = -1", "peer[1].tfc_pad", "out of range"),
    ("spi_out = 0x2002", "spi_out = 0x2002\ntfc_pad = 1439", "peer[1].tfc_pad",
     "expected an integer 0..1438"),
    ('name = "nt0"', 'name = "nt0"\nunderlay_mtu = 1279', "interface.underlay_mtu",
     "expected an integer 1280..65535"),
    ('name = "nt0"', 'name = "nt0"\nunderlay_mtu = 65536', "interface.underlay_mtu",
     "out of range"),
    ('name = "nt0"', 'name = "nt0"\nmtu = 1439', "interface.mtu",
     "1439 is too large: the maximum is 1438"),
    ('name = "nt0"', 'name = "nt0"\nmtu = 67', "interface.mtu", "expected an integer 68..1438"),
    # enumerations and names
    ('suite = "aes256gcm16"', 'suite = "aes256cbc"', "peer[0].suite", "unknown ESP suite"),
    ("spi_out = 0x2002", 'spi_out = 0x2002\nkeepalive = "sometimes"', "peer[1].keepalive",
     "not a keepalive mode"),
    ('kind = "tun"', 'kind = "tunn"', "interface.kind", "did you mean 'tun'?"),
    ('kind = "tun"', 'kind = "tap"', "interface.kind", "expected \"tun\" or \"inprocess\""),
    ('name = "b"', 'name = "b c"', "peer[0].name", "not a valid peer name"),
    ('name = "b"', 'name = ""', "peer[0].name", "not a valid peer name"),
    ('name = "b"', f'name = "{"x" * 65}"', "peer[0].name", "not a valid peer name"),
    ('name = "nt0"', 'name = "a-very-long-name"', "interface.name", "at most 15"),
    ('name = "nt0"', 'name = ""', "interface.name", "is empty"),
    ('name = "nt0"', 'name = "nt/0"', "interface.name", "must not contain '/'"),
    ('name = "nt0"', 'name = "nt 0"', "interface.name", "whitespace"),
    ('name = "nt0"', 'name = ".."', "interface.name", "not a valid device name"),
    # addresses and ports
    ('listen = ["0.0.0.0:4500"]', 'listen = "0.0.0.0"', "listen", "needs a port"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "::1:4500"', "listen", "must be in brackets"),
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500", "[::1]"]', "listen[1]",
     "needs a port after the bracketed IPv6 address"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "[::1:4500"', "listen", "without a closing"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "[192.0.2.1]:4500"', "listen",
     "is not an IPv6 address"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "0.0.0.0:-1"', "listen", "not a number"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "0.0.0.0:65536"', "listen", "outside 0..65535"),
    ('listen = ["0.0.0.0:4500"]', "listen = 70000", "listen", "outside 0..65535"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "0.0.0.0:http"', "listen", "not a number"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "vpn.example:4500"', "listen",
     "host names are not resolved"),
    ('listen = ["0.0.0.0:4500"]', 'listen = "224.0.0.1:4500"', "listen", "multicast"),
    ('listen = ["0.0.0.0:4500"]', "listen = []", "listen", "is empty"),
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500", "4500"]', "listen[1]",
     "already listed as listen[0]"),
    ('endpoint = "198.18.0.2:4500"', 'endpoint = "198.18.0.2"', "peer[0].endpoint",
     "needs a port"),
    ('endpoint = "198.18.0.2:4500"', 'endpoint = "4500"', "peer[0].endpoint", "needs a port"),
    ('endpoint = "198.18.0.2:4500"', 'endpoint = "198.18.0.256:4500"', "peer[0].endpoint",
     "not an IPv4 address"),
    ('endpoint = "198.18.0.2:4500"', 'endpoint = "2001:db8::2:4500"', "peer[0].endpoint",
     "must be in brackets"),
    ('endpoint = "198.18.0.2:4500"', 'endpoint = "0.0.0.0:4500"', "peer[0].endpoint",
     "not a unicast address"),
    ('endpoint = "198.18.0.2:4500"', 'endpoint = "[2001:db8::2]:4500"', "peer[0].endpoint",
     "no listen address can reach it"),
    ('addresses = ["198.18.100.1/24"]', 'addresses = ["198.18.100.1/33"]',
     "interface.addresses[0]", "not an IP address with a prefix length"),
    ('addresses = ["198.18.100.1/24"]', 'addresses = ["0.0.0.0/0"]',
     "interface.addresses[0]", "not a usable unicast host address"),
    ('addresses = ["198.18.100.1/24"]', 'addresses = ["198.18.100.1/24", "198.18.100.1/32"]',
     "interface.addresses[1]", "listed twice"),
    ('addresses = ["198.18.100.1/24"]', "addresses = []", "interface.addresses", "is empty"),
    ('allowed_ips = ["198.18.100.2/32"]', 'allowed_ips = ["198.18.100.2/24"]',
     "peer[0].allowed_ips[0]", "has host bits set; write the prefix \"198.18.100.0/24\""),
    ('allowed_ips = ["198.18.100.2/32"]', 'allowed_ips = ["fd00::1/64"]',
     "peer[0].allowed_ips[0]", "has host bits set"),
    ('allowed_ips = ["198.18.100.2/32"]', 'allowed_ips = ["not-a-prefix"]',
     "peer[0].allowed_ips[0]", "is not an IP prefix"),
    ('allowed_ips = ["198.18.100.2/32"]', "allowed_ips = []", "peer[0].allowed_ips",
     "is empty"),
    # IPv6 inside the tunnel needs an inner MTU of at least 1280
    ('addresses = ["198.18.100.1/24"]', 'addresses = ["fd00::1/64"]\nunderlay_mtu = 1300',
     "interface.underlay_mtu", "must be at least 1344"),
    ('addresses = ["198.18.100.1/24"]', 'addresses = ["198.18.100.1/24", "fd00::1/64"]\n'
     'mtu = 1200', "interface.mtu", "IPv6 minimum link MTU"),
    # peers
    ("[[peer]]\nname = \"b\"", "[peer]\nname = \"b\"", "peer",
     "expected an array of tables [[peer]]"),
]


@pytest.mark.parametrize(("old", "new", "field", "fragment"), BAD,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_value(cfgdir: Path, old: str, new: str, field: str, fragment: str) -> None:
    text = VALID.replace(PEER_C, "") if "[peer]\n" in new else VALID
    e = error(cfgdir, mutate(old, new, text))
    assert e.field == field
    assert f"{field}: " in str(e)
    assert fragment in str(e)


def test_mtu_error_on_ipv6_peer_prefix(cfgdir: Path) -> None:
    text = mutate('name = "nt0"', 'name = "nt0"\nunderlay_mtu = 1280')
    text = mutate('allowed_ips = ["198.18.101.0/24"]', 'allowed_ips = ["fd00:101::/64"]', text)
    e = error(cfgdir, text)
    assert e.field == "interface.underlay_mtu" and "RFC 8200" in str(e)


def test_duplicate_peer_name(cfgdir: Path) -> None:
    e = error(cfgdir, mutate('name = "c"', 'name = "b"'))
    assert e.field == "peer[1].name"
    assert "'b' is already the name of peer[0]" in str(e)


def test_duplicate_spi_in(cfgdir: Path) -> None:
    e = error(cfgdir, mutate("spi_in = 0x1002", "spi_in = 4097"))
    assert e.field == "peer[1].spi_in"
    assert "4097 (0x1001) is already the spi_in of peer[0] ('b')" in str(e)


def test_spi_out_may_repeat(cfgdir: Path) -> None:
    # outbound SPIs are chosen by each receiving peer; two peers may choose the same one
    cfg = load(cfgdir, mutate("spi_out = 0x2002", "spi_out = 0x2001"))
    assert cfg.peers[0].spi_out == cfg.peers[1].spi_out


@pytest.mark.parametrize(("prefix", "other"), [
    ("198.18.100.0/24", "peer[0].allowed_ips[0]"),  # contains peer b's /32
    ("198.18.100.2/32", "peer[0].allowed_ips[0]"),  # equal
    ("0.0.0.0/0", "peer[0].allowed_ips[0]"),
])
def test_overlapping_allowed_ips_between_peers(cfgdir: Path, prefix: str, other: str) -> None:
    e = error(cfgdir, mutate('allowed_ips = ["198.18.101.0/24"]', f'allowed_ips = ["{prefix}"]'))
    assert e.field == "peer[1].allowed_ips[0]"
    assert f"({other}, peer 'b')" in str(e)


def test_overlapping_allowed_ips_within_a_peer(cfgdir: Path) -> None:
    e = error(cfgdir, mutate('allowed_ips = ["198.18.101.0/24"]',
                             'allowed_ips = ["198.18.101.0/24", "198.18.101.128/25"]'))
    assert e.field == "peer[1].allowed_ips[1]" and "the same peer" in str(e)


def test_ipv4_and_ipv6_prefixes_do_not_overlap(cfgdir: Path) -> None:
    cfg = load(cfgdir, mutate('allowed_ips = ["198.18.101.0/24"]',
                              'allowed_ips = ["0.0.0.0/0", "::/0"]',
                              VALID.replace(PEER_B, "")))
    assert len(cfg.peers[0].allowed_ips) == 2


def test_cannot_read_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert str(info.value).startswith(str(tmp_path / "missing.toml") + ": cannot read")


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tunnel.toml"
    path.write_bytes(b'listen = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_message_without_file(cfgdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(mutate("spi_in = 0x1001", "spi_in = 1"), cfgdir)
    assert str(info.value).startswith("peer[0].spi_in: ")
    assert info.value.file is None


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_docs_examples_load(tmp_path: Path) -> None:
    """docs/examples/ (host A behind NAT, host B public) load with keys generated for them, and
    mirror each other: A's out SA is B's in SA, with the same key material."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "examples"
    keydir = tmp_path / "keys"
    keydir.mkdir()
    a_to_b = bytes(range(0x20, 0x20 + 36))
    b_to_a = bytes(range(0x60, 0x60 + 36))
    for host in ("a", "b"):
        (tmp_path / host / "keys").mkdir(parents=True)
        (tmp_path / host / f"{host}.toml").write_text((docs / f"{host}.toml").read_text())
        write_key_file(tmp_path / host / "keys" / "a-to-b.key", a_to_b)
        write_key_file(tmp_path / host / "keys" / "b-to-a.key", b_to_a)
    a = load_config(tmp_path / "a" / "a.toml")
    b = load_config(tmp_path / "b" / "b.toml")
    (pa,), (pb,) = a.peers, b.peers
    assert (pa.spi_out, pa.spi_in) == (pb.spi_in, pb.spi_out)
    assert (pa.key_out, pa.key_in) == (pb.key_in, pb.key_out) == (a_to_b, b_to_a)
    assert pa.suite is pb.suite
    assert pa.behind_nat and not pb.behind_nat
    assert pb.endpoint is None and pa.endpoint is not None


def test_file_checked_before_key_files_are_opened(cfgdir: Path) -> None:
    # peer c's key files are missing, but the duplicate spi_in is reported: no key file is
    # opened before the whole file is checked
    text = mutate("spi_in = 0x1002", "spi_in = 0x1001")
    text = mutate('"keys/c-in.key"', '"keys/missing.key"', text)
    e = error(cfgdir, text)
    assert e.field == "peer[1].spi_in"


def test_symlinked_key_file_refused(cfgdir: Path) -> None:
    os.symlink(cfgdir / "keys" / "b-in.key", cfgdir / "keys" / "link.key")
    e = error(cfgdir, mutate('"keys/b-in.key"', '"keys/link.key"'))
    assert e.field == "peer[0].key_in" and "symbolic link" in str(e)


def test_peer_entries_must_be_tables(cfgdir: Path) -> None:
    e = error(cfgdir, 'peer = [1]\n[interface]\naddresses = ["198.18.100.1/24"]\n')
    assert e.field == "peer[0]" and "expected a table [[peer]], got an integer" in str(e)


# --- IKEv2 peers -----------------------------------------------------------------------------

PSK = b"correct horse battery staple"

IKE_PSK = """
listen = ["0.0.0.0:4500"]

[interface]
kind = "tun"
addresses = ["198.18.100.1/24", "fd00:100::1/64"]

[[peer]]
name = "b"
auth = "psk"
psk_file = "keys/b.psk"
local_id = "hosta"
remote_id = "fqdn:hostb.example"
endpoint = "198.18.0.2"
allowed_ips = ["198.18.100.2/32"]
"""

IKE_PUBKEY = """
[interface]
addresses = ["198.18.100.1/24"]

[[peer]]
name = "d"
auth = "pubkey"
private_key = "keys/a.key"
peer_public_key = "keys/d.pub"
local_id = "198.18.0.1"
remote_id = "keyid:00112233"
allowed_ips = ["198.18.102.0/24"]
"""


@pytest.fixture
def ikedir(cfgdir: Path) -> Path:
    from nattunnel.keys import write_ed25519_pair, write_psk_file

    write_psk_file(cfgdir / "keys" / "b.psk", PSK)
    write_ed25519_pair(cfgdir / "keys" / "a.key", cfgdir / "keys" / "a.pub")
    write_ed25519_pair(cfgdir / "keys" / "d.key", cfgdir / "keys" / "d.pub")
    return cfgdir


def ike_error(ikedir: Path, text: str) -> ConfigError:
    e = error(ikedir, text)
    assert PSK.decode() not in str(e)
    return e


def test_ike_psk_peer(ikedir: Path) -> None:
    from nattunnel.ike.config import Identity, IkeConfig
    from nattunnel.ike.proposals import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS

    cfg = load(ikedir, IKE_PSK)
    assert cfg.keylog is None and cfg.ike_port == 500
    (p,) = cfg.peers
    assert isinstance(p.ike, IkeConfig)
    ike = p.ike
    assert ike.name == "b" and ike.auth == "psk" and ike.psk == PSK
    assert ike.local_id == Identity(2, b"hosta")
    assert ike.remote_id == Identity(2, b"hostb.example")
    assert ike.private_key is None and ike.peer_public_key is None
    # the interface addresses as host prefixes; allowed_ips are the remote selectors
    assert ike.local_ts == (ipaddress.ip_network("198.18.100.1/32"),
                            ipaddress.ip_network("fd00:100::1/128"))
    assert ike.remote_ts == p.allowed_ips == (ipaddress.ip_network("198.18.100.2/32"),)
    assert ike.ike_proposals == DEFAULT_IKE_PROPOSALS
    assert ike.esp_proposals == DEFAULT_ESP_PROPOSALS
    assert ike.force_encap is False and ike.dpd_interval == 30.0
    # an address without a port: IKE's port 500; initiating by default with an endpoint
    assert p.endpoint == ("198.18.0.2", 500) and p.initiate is True
    # no manual SA fields
    assert (p.spi_in, p.spi_out, p.key_in, p.key_out) == (None, None, b"", b"")
    assert p.key_in_path is None and p.key_out_path is None
    assert p.suite is AES_GCM_256  # the first ESP proposal's
    # the PSK never appears in a repr
    for text in (repr(cfg), repr(p), repr(ike)):
        assert PSK.decode() not in text and PSK.hex() not in text
    assert f"psk=<{len(PSK)} octets>" in repr(p)


def test_ike_pubkey_peer(ikedir: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from nattunnel.ike.config import Identity
    from nattunnel.keys import load_ed25519_private, load_ed25519_public

    cfg = load(ikedir, IKE_PUBKEY)
    (p,) = cfg.peers
    assert p.ike is not None and p.ike.auth == "pubkey" and p.ike.psk == b""
    assert isinstance(p.ike.private_key, ed25519.Ed25519PrivateKey)
    assert p.ike.private_key.public_key() == load_ed25519_private(
        ikedir / "keys" / "a.key").public_key()
    assert p.ike.peer_public_key == load_ed25519_public(ikedir / "keys" / "d.pub")
    assert p.ike.local_id == Identity(1, bytes([198, 18, 0, 1]))
    assert p.ike.remote_id == Identity(11, b"00112233")  # keyid:TEXT is text (strongSwan)
    # no endpoint: a responder
    assert p.endpoint is None and p.initiate is False
    assert "Ed25519 private key" in repr(p)


def test_ike_all_fields(ikedir: Path) -> None:
    from nattunnel.ike.proposals import EspProposal, IkeProposal

    text = IKE_PSK.replace('listen = ["0.0.0.0:4500"]',
                           'listen = ["0.0.0.0:4500", "[::]:4500"]\nkeylog = "klog"\n'
                           "ike_port = 1500")
    text = text.replace('endpoint = "198.18.0.2"', """endpoint = "[2001:db8::2]:4501"
initiate = false
encap = "force"
dpd_interval = 0
ike_proposals = ["chacha20poly1305-prfsha384-x25519", "AES128GCM16-prfsha512-ecp256"]
esp_proposals = ["aes128gcm16-esn", "chacha20poly1305-x25519", "aes256gcm16-noesn-ecp256"]
local_ts = ["198.18.100.0/24", "fd00:100::/64"]
keepalive = "always"
keepalive_interval = 5
replay_window = 2048
""")
    cfg = load(ikedir, text)
    assert cfg.keylog == ikedir / "klog" and cfg.ike_port == 1500
    (p,) = cfg.peers
    assert p.ike is not None
    assert p.endpoint == ("2001:db8::2", 4501) and p.initiate is False
    assert p.ike.force_encap is True and p.ike.dpd_interval == 0.0
    assert p.ike.ike_proposals == (IkeProposal(28, None, 6, 31), IkeProposal(20, 128, 7, 19))
    assert p.ike.esp_proposals == (EspProposal(AES_GCM_128, True, None),
                                   EspProposal(CHACHA20_POLY1305, False, 31),
                                   EspProposal(AES_GCM_256, False, 19))
    assert p.suite is AES_GCM_128 and p.esn is True
    assert p.ike.local_ts == (ipaddress.ip_network("198.18.100.0/24"),
                              ipaddress.ip_network("fd00:100::/64"))
    assert p.keepalive is KeepaliveMode.ALWAYS and p.keepalive_interval == 5.0
    assert p.replay_window == 2048


def test_ike_and_manual_peers_together(ikedir: Path) -> None:
    cfg = load(ikedir, IKE_PSK + PEER_C + IKE_PUBKEY[IKE_PUBKEY.index("[[peer]]"):])
    b, c, d = cfg.peers
    assert b.ike is not None and d.ike is not None
    assert c.ike is None and c.initiate is False and c.spi_in == 0x1002
    assert c.key_in == KEYS["c-in.key"]


@pytest.mark.parametrize(("text", "expected"), [
    ("hosta", (2, b"hosta")),
    ("fqdn:hosta.example", (2, b"hosta.example")),
    ("@hosta", (2, b"hosta")),
    ("198.18.0.1", (1, bytes([198, 18, 0, 1]))),
    ("ipv4:198.18.0.1", (1, bytes([198, 18, 0, 1]))),
    ("2001:db8::1", (5, ipaddress.ip_address("2001:db8::1").packed)),
    ("ipv6:2001:db8::1", (5, ipaddress.ip_address("2001:db8::1").packed)),
    ("keyid:#0011aa", (11, bytes.fromhex("0011aa"))),
    ("@#0011aa", (11, bytes.fromhex("0011aa"))),
])
def test_ike_identities(ikedir: Path, text: str, expected: tuple[int, bytes]) -> None:
    cfg = load(ikedir, IKE_PSK.replace('local_id = "hosta"', f'local_id = "{text}"'))
    ike = cfg.peers[0].ike
    assert ike is not None
    assert (ike.local_id.id_type, ike.local_id.data) == expected


# (replace this, with this) in IKE_PSK -> field path, and a fragment of the problem
IKE_BAD = [
    # mixing manual and IKE fields
    ('auth = "psk"', 'auth = "psk"\nspi_in = 0x1001', "peer[0].spi_in",
     "is a manual-SA field, but this peer has auth = \"psk\""),
    ('auth = "psk"', 'auth = "psk"\nkey_out = "keys/b-out.key"', "peer[0].key_out",
     "manual-SA field"),
    ('auth = "psk"', 'auth = "psk"\nsuite = "aes256gcm16"', "peer[0].suite",
     "an IKE peer sets esp_proposals"),
    ('auth = "psk"', 'auth = "psk"\nesn = true', "peer[0].esn", "esp_proposals"),
    ('auth = "psk"\n', "", "peer[0].psk_file", "is an IKEv2 field, but this peer has no auth"),
    ('auth = "psk"', 'auth = "psk"\nprivate_key = "keys/a.key"', "peer[0].private_key",
     "is for auth = \"pubkey\""),
    # auth
    ('auth = "psk"', 'auth = "cert"', "peer[0].auth", "expected \"psk\" or \"pubkey\""),
    ('auth = "psk"', "auth = true", "peer[0].auth", "got a boolean"),
    # identities
    ('local_id = "hosta"\n', "", "peer[0].local_id", "missing required key"),
    ('remote_id = "fqdn:hostb.example"\n', "", "peer[0].remote_id", "missing required key"),
    ('local_id = "hosta"', 'local_id = ""', "peer[0].local_id", "is empty"),
    ('local_id = "hosta"', "local_id = 1", "peer[0].local_id", "got an integer"),
    ('local_id = "hosta"', 'local_id = "fqdn:"', "peer[0].local_id", "nothing after fqdn:"),
    ('local_id = "hosta"', 'local_id = "C=CH, , CN=x"', "peer[0].local_id",
     "not a distinguished name"),
    ('local_id = "hosta"', 'local_id = "email:nobody"', "peer[0].local_id", "NAME@DOMAIN"),
    ('local_id = "hosta"', 'local_id = "x500:a"', "peer[0].local_id",
     "identity type 'x500:' is not supported"),
    ('local_id = "hosta"', 'local_id = "ipv4:2001:db8::1"', "peer[0].local_id",
     "is not an IPv4 address"),
    ('local_id = "hosta"', 'local_id = "host a"', "peer[0].local_id", "without whitespace"),
    ('local_id = "hosta"', 'local_id = " hosta"', "peer[0].local_id", "whitespace"),
    # credentials: paths
    ('psk_file = "keys/b.psk"\n', "", "peer[0].psk_file", "missing required key"),
    ('psk_file = "keys/b.psk"', 'psk_file = ""', "peer[0].psk_file", "is empty"),
    ('psk_file = "keys/b.psk"', 'psk_file = "keys/none.psk"', "peer[0].psk_file",
     "no such key file"),
    # endpoint and initiate
    ('endpoint = "198.18.0.2"', 'endpoint = "host-b.example"', "peer[0].endpoint",
     "host names are not resolved"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2:0"', "peer[0].endpoint",
     "outside 1..65535"),
    ('endpoint = "198.18.0.2"', 'endpoint = "2001:db8::2"', "peer[0].endpoint",
     "no listen address can reach it"),
    ('endpoint = "198.18.0.2"\n', "initiate = true\n", "peer[0].initiate",
     "needs an endpoint"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\ninitiate = 1', "peer[0].initiate",
     "expected true or false"),
    # encap, dpd
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nencap = "yes"', "peer[0].encap",
     "not an encapsulation mode"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\ndpd_interval = -1',
     "peer[0].dpd_interval", "out of range; expected a number of seconds >= 0"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\ndpd_interval = true',
     "peer[0].dpd_interval", "got a boolean"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\ndpd_interval = inf',
     "peer[0].dpd_interval", "out of range"),
    # proposals
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nike_proposals = []',
     "peer[0].ike_proposals", "is empty"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nike_proposals = [1]',
     "peer[0].ike_proposals[0]", "expected a string"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16-prfsha256-x25519", '
     '"aes256-sha256-modp2048"]', "peer[0].ike_proposals[1]", "'aes256' is not supported"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16-sha256-x25519"]',
     "peer[0].ike_proposals[0]", "'sha256' is an integrity algorithm"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16-x25519"]',
     "peer[0].ike_proposals[0]", "names no PRF"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16-prfsha256"]',
     "peer[0].ike_proposals[0]", "names no key exchange method"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["prfsha256-x25519"]',
     "peer[0].ike_proposals[0]", "names no encryption algorithm"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16-aes128gcm16-prfsha256-x25519"]',
     "peer[0].ike_proposals[0]", "has two encryption algorithms"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16-prfsha256-modp2048"]',
     "peer[0].ike_proposals[0]", "not a supported key exchange method"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes192gcm16-prfsha256-x25519"]',
     "peer[0].ike_proposals[0]", "not supported"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16-prfsha256-x25519", '
     '"aes256gcm16-x25519-prfsha256"]', "peer[0].ike_proposals[1]",
     "the same proposal as peer[0].ike_proposals[0]"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nike_proposals = ["aes256gcm16--x"]',
     "peer[0].ike_proposals[0]", "empty algorithm"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nesp_proposals = ["aes256"]',
     "peer[0].esp_proposals[0]", "not supported"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nesp_proposals = ["x25519"]',
     "peer[0].esp_proposals[0]", "names no ESP suite"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nesp_proposals = ["aes256gcm16-prfsha256"]',
     "peer[0].esp_proposals[0]", "ESP proposals take no PRF"),
    ('endpoint = "198.18.0.2"',
     'endpoint = "198.18.0.2"\nesp_proposals = ["aes256gcm16-chacha20poly1305"]',
     "peer[0].esp_proposals[0]", "two encryption algorithms"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nesp_proposals = ["aes256gcm16-foo"]',
     "peer[0].esp_proposals[0]", "unknown algorithm 'foo'"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nesp_proposals = []',
     "peer[0].esp_proposals", "is empty"),
    # traffic selectors
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nlocal_ts = ["198.18.100.1/24"]',
     "peer[0].local_ts[0]", "has host bits set"),
    ('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nlocal_ts = []',
     "peer[0].local_ts", "is empty"),
    ('allowed_ips = ["198.18.100.2/32"]\n', "", "peer[0].allowed_ips", "missing required key"),
    # top level
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500"]\nkeylog = ""', "keylog",
     "is empty"),
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500"]\nkeylog = 1', "keylog",
     "got an integer"),
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500"]\nike_port = 4500', "ike_port",
     "4500 is also the port of listen"),
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500"]\nike_port = 70000', "ike_port",
     "out of range"),
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500"]\nike_port = "500"', "ike_port",
     "got a string"),
    ('listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500"]\nike_prot = 500', "ike_prot",
     "did you mean 'ike_port'?"),
]


@pytest.mark.parametrize(("old", "new", "field", "fragment"), IKE_BAD,
                         ids=[f"{i}-{b[2]}" for i, b in enumerate(IKE_BAD)])
def test_ike_bad_value(ikedir: Path, old: str, new: str, field: str, fragment: str) -> None:
    e = ike_error(ikedir, mutate(old, new, IKE_PSK))
    assert e.field == field
    assert f"{field}: " in str(e)
    assert fragment in str(e)


def test_ike_manual_peer_with_ike_field(ikedir: Path) -> None:
    e = error(ikedir, mutate("spi_in = 0x1002", 'spi_in = 0x1002\nremote_id = "hostc"'))
    assert e.field == "peer[1].remote_id" and "add auth = " in str(e)


def test_ike_pubkey_with_psk_file(ikedir: Path) -> None:
    e = error(ikedir, mutate('auth = "pubkey"', 'auth = "pubkey"\npsk_file = "keys/b.psk"',
                             IKE_PUBKEY))
    assert e.field == "peer[0].psk_file" and 'is for auth = "psk"' in str(e)


@pytest.mark.parametrize(("old", "new", "field", "fragment"), [
    ('private_key = "keys/a.key"\n', "", "peer[0].private_key", "missing required key"),
    ('peer_public_key = "keys/d.pub"\n', "", "peer[0].peer_public_key", "missing required key"),
    ('private_key = "keys/a.key"', 'private_key = "keys/a-pub.key"', "peer[0].private_key",
     "is a public key (-----BEGIN PUBLIC KEY-----), not a private key"),
    ('private_key = "keys/a.key"', 'private_key = "keys/b-in.key"', "peer[0].private_key",
     "is not a PEM file"),
    ('private_key = "keys/a.key"', 'private_key = "keys/ec.key"', "peer[0].private_key",
     "holds an ECDSA (secp256r1) key, not an Ed25519 key"),
    ('peer_public_key = "keys/d.pub"', 'peer_public_key = "keys/d.key"',
     "peer[0].peer_public_key", "holds a private key"),
    ('peer_public_key = "keys/d.pub"', 'peer_public_key = "keys/ec.pub"',
     "peer[0].peer_public_key", "not an Ed25519 key"),
    ('peer_public_key = "keys/d.pub"', 'peer_public_key = "keys/a.pub"',
     "peer[0].peer_public_key", "is this host's own public key"),
    ('peer_public_key = "keys/d.pub"', 'peer_public_key = "keys/none.pub"',
     "peer[0].peer_public_key", "no such public key file"),
])
def test_ike_pubkey_errors(ikedir: Path, old: str, new: str, field: str, fragment: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    (ikedir / "keys" / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    fd = os.open(ikedir / "keys" / "ec.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ec_key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    os.close(fd)
    fd = os.open(ikedir / "keys" / "a-pub.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (ikedir / "keys" / "a.pub").read_bytes())
    os.close(fd)
    e = error(ikedir, mutate(old, new, IKE_PUBKEY))
    assert e.field == field and fragment in str(e)
    assert "PRIVATE KEY-----\n" not in str(e)


def test_ike_private_key_mode_enforced(ikedir: Path) -> None:
    os.chmod(ikedir / "keys" / "a.key", 0o640)
    e = error(ikedir, IKE_PUBKEY)
    assert e.field == "peer[0].private_key" and "mode 0640" in str(e) and "chmod 600" in str(e)


def test_ike_psk_mode_enforced(ikedir: Path) -> None:
    os.chmod(ikedir / "keys" / "b.psk", 0o644)
    e = ike_error(ikedir, IKE_PSK)
    assert e.field == "peer[0].psk_file" and "mode 0644" in str(e)


def test_ike_duplicate_remote_id(ikedir: Path) -> None:
    second = IKE_PSK[IKE_PSK.index("[[peer]]"):].replace('name = "b"', 'name = "b2"').replace(
        '"198.18.100.2/32"', '"198.18.100.3/32"').replace("198.18.0.2", "198.18.0.3")
    e = ike_error(ikedir, IKE_PSK + second)
    assert e.field == "peer[1].remote_id" and "must be unique" in str(e)


def test_ike_allowed_ips_overlap_manual_peer(ikedir: Path) -> None:
    e = ike_error(ikedir, IKE_PSK + PEER_B.replace('name = "b"', 'name = "m"'))
    assert e.field == "peer[1].allowed_ips[0]" and "overlaps" in str(e)


def test_ike_inprocess_without_addresses_needs_local_ts(ikedir: Path) -> None:
    text = IKE_PSK.replace('kind = "tun"\naddresses = ["198.18.100.1/24", "fd00:100::1/64"]',
                           'kind = "inprocess"')
    e = ike_error(ikedir, text)
    assert e.field == "peer[0].local_ts" and "give local_ts" in str(e)
    cfg = load(ikedir, text.replace('allowed_ips = ["198.18.100.2/32"]',
                                    'allowed_ips = ["198.18.100.2/32"]\n'
                                    'local_ts = ["198.18.100.1/32"]'))
    assert cfg.peers[0].ike is not None
    assert cfg.peers[0].ike.local_ts == (ipaddress.ip_network("198.18.100.1/32"),)


def test_ike_psk_hex_and_text(ikedir: Path) -> None:
    from nattunnel.keys import write_psk_file

    write_psk_file(ikedir / "keys" / "hex.psk", bytes(range(32)))
    cfg = load(ikedir, IKE_PSK.replace("keys/b.psk", "keys/hex.psk"))
    assert cfg.peers[0].ike is not None and cfg.peers[0].ike.psk == bytes(range(32))
    fd = os.open(ikedir / "keys" / "text.psk", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, "grüezi mitenand\n".encode())
    os.close(fd)
    cfg = load(ikedir, IKE_PSK.replace("keys/b.psk", "keys/text.psk"))
    assert cfg.peers[0].ike is not None
    assert cfg.peers[0].ike.psk == "grüezi mitenand".encode()


def test_ike_behind_nat_is_accepted_and_ignored(ikedir: Path) -> None:
    cfg = load(ikedir, IKE_PSK.replace('auth = "psk"', 'auth = "psk"\nbehind_nat = true'))
    assert cfg.peers[0].ike is not None


def test_manual_peer_repr_unchanged_shape(cfgdir: Path) -> None:
    b = load(cfgdir, VALID).peers[0]
    assert b.ike is None and b.initiate is False
    assert "spi_in=0x00001001" in repr(b) and "ike=" not in repr(b)
    assert load(cfgdir, VALID).keylog is None and load(cfgdir, VALID).ike_port == 500


def _ike_examples(tmp_path: Path, psk: bytes) -> tuple[Config, Config]:
    from nattunnel.keys import write_psk_file

    docs = Path(__file__).resolve().parent.parent / "docs" / "examples"
    for host in ("a", "b"):
        (tmp_path / host / "keys").mkdir(parents=True, exist_ok=True)
        (tmp_path / host / f"ike-{host}.toml").write_text(
            (docs / f"ike-{host}.toml").read_text())
        write_psk_file(tmp_path / host / "keys" / "a-b.psk", psk, force=True)
    return (load_config(tmp_path / "a" / "ike-a.toml"),
            load_config(tmp_path / "b" / "ike-b.toml"))


def test_docs_ike_examples_load(tmp_path: Path) -> None:
    """docs/examples/ike-a.toml (behind NAT, initiator) and ike-b.toml (public, responder)
    load with one PSK, and mirror each other: identities, traffic selectors, proposals."""
    psk = bytes(range(0x30, 0x50))
    a, b = _ike_examples(tmp_path, psk)
    (pa,), (pb,) = a.peers, b.peers
    assert pa.ike is not None and pb.ike is not None
    assert pa.ike.psk == pb.ike.psk == psk
    assert (pa.ike.local_id, pa.ike.remote_id) == (pb.ike.remote_id, pb.ike.local_id)
    assert (pa.ike.local_ts, pa.ike.remote_ts) == (pb.ike.remote_ts, pb.ike.local_ts)
    assert pa.ike.ike_proposals == pb.ike.ike_proposals
    assert pa.ike.esp_proposals == pb.ike.esp_proposals
    assert pa.initiate and pa.endpoint == ("203.0.113.2", 500)
    assert not pb.initiate and pb.endpoint is None
    assert a.ike_port == b.ike_port == 500


def test_docs_ike_ed25519_variant(tmp_path: Path) -> None:
    """The Ed25519 variant in docs/config.md: the [[peer]] credentials replaced by a key pair
    per host and the other host's public key."""
    from nattunnel.keys import load_ed25519_public, write_ed25519_pair

    _ike_examples(tmp_path, b"unused")
    for me in ("a", "b"):
        write_ed25519_pair(tmp_path / me / "keys" / f"host{me}.key",
                           tmp_path / me / "keys" / f"host{me}.pub")
    for me, other in (("a", "b"), ("b", "a")):
        (tmp_path / me / "keys" / f"host{other}.pub").write_bytes(
            (tmp_path / other / "keys" / f"host{other}.pub").read_bytes())
        path = tmp_path / me / f"ike-{me}.toml"
        path.write_text(mutate(
            'auth = "psk"\n', "", path.read_text()).replace(
            'psk_file = "keys/a-b.psk"',
            f'auth = "pubkey"\nprivate_key = "keys/host{me}.key"\n'
            f'peer_public_key = "keys/host{other}.pub"'))
    a = load_config(tmp_path / "a" / "ike-a.toml")
    b = load_config(tmp_path / "b" / "ike-b.toml")
    ia, ib = a.peers[0].ike, b.peers[0].ike
    assert ia is not None and ib is not None and ia.auth == ib.auth == "pubkey"
    assert ia.private_key is not None and ib.private_key is not None
    assert ia.peer_public_key == ib.private_key.public_key()
    assert ib.peer_public_key == ia.private_key.public_key()
    assert ia.peer_public_key == load_ed25519_public(tmp_path / "b" / "keys" / "hostb.pub")


# --- every bad string is a ConfigError naming its field (issue 9 item 5) ---------------------
# Before, some strings reached str.encode("ascii"), bytes.fromhex, os.* or ipaddress unchecked
# and the loader raised UnicodeEncodeError or a bare ValueError, which `nattunnel up` printed as
# a traceback; or the string loaded and failed later, at run time.

LONG = "a" * 5000
#: base config ("psk": IKE_PSK, "pubkey": IKE_PUBKEY, "manual": VALID), (replace this, with
#: this) -> field path, a fragment of the problem
STRING_BAD = [
    # identities: non-ASCII FQDNs (RFC 7296 section 3.5: ID_FQDN is ASCII)
    ("psk", 'local_id = "hosta"', 'local_id = "1a:é"', "peer[0].local_id", "must be ASCII"),
    ("psk", 'local_id = "hosta"', 'local_id = "hosté"', "peer[0].local_id", "xn--"),
    ("psk", 'local_id = "hosta"', 'local_id = "fqdn:bücher.example"', "peer[0].local_id",
     "must be ASCII (RFC 7296"),
    ("psk", 'local_id = "hosta"', 'local_id = "@bücher.example"', "peer[0].local_id",
     "must be ASCII"),
    # identities: binary key ids
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "keyid:#zz"', "peer[0].remote_id",
     "hex digits"),
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "@#0"', "peer[0].remote_id",
     "odd number of hex digits"),
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "keyid:#00 11"',
     "peer[0].remote_id", "hex digits"),
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "keyid:#"', "peer[0].remote_id",
     "no hex digits"),
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "@#"', "peer[0].remote_id",
     "no hex digits"),
    # identities: lengths, IPv6 zones, a colon that is neither an address nor a type
    ("psk", 'remote_id = "fqdn:hostb.example"', f'remote_id = "{LONG}"', "peer[0].remote_id",
     "5000 octets long; an identity is at most 255"),
    ("psk", 'remote_id = "fqdn:hostb.example"', f'remote_id = "keyid:{LONG}"',
     "peer[0].remote_id", "at most 255"),
    ("psk", 'remote_id = "fqdn:hostb.example"', f'remote_id = "keyid:#{"00" * 256}"',
     "peer[0].remote_id", "256 octets long"),
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "1:2"', "peer[0].remote_id",
     "not an IP address"),
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "fe80::1%eth0"',
     "peer[0].remote_id", "zone"),
    ("psk", 'remote_id = "fqdn:hostb.example"', 'remote_id = "ipv6:fe80::1%eth0"',
     "peer[0].remote_id", "zone"),
    # file paths: NUL (os.* raise "embedded null byte"), length
    ("psk", 'psk_file = "keys/b.psk"', r'psk_file = "keys/b\u0000.psk"', "peer[0].psk_file",
     "NUL"),
    ("psk", 'psk_file = "keys/b.psk"', f'psk_file = "{LONG}"', "peer[0].psk_file",
     "5000 octets long"),
    ("pubkey", 'private_key = "keys/a.key"', r'private_key = "keys/a\u0000"',
     "peer[0].private_key", "NUL"),
    ("pubkey", 'peer_public_key = "keys/d.pub"', r'peer_public_key = "\u0000"',
     "peer[0].peer_public_key", "NUL"),
    ("manual", 'key_in = "keys/b-in.key"', r'key_in = "keys/b-in.key\u0000"', "peer[0].key_in",
     "NUL"),
    ("manual", 'key_out = "keys/b-out.key"', f'key_out = "{LONG}"', "peer[0].key_out",
     "octets long"),
    ("psk", 'listen = ["0.0.0.0:4500"]', 'listen = ["0.0.0.0:4500"]\nkeylog = "k\\u0000"',
     "keylog", "NUL"),
    ("psk", 'listen = ["0.0.0.0:4500"]', f'listen = ["0.0.0.0:4500"]\nkeylog = "{LONG}"',
     "keylog", "5000 octets long"),
    # the interface name: what the TUN code accepts (printable ASCII, no '%')
    ("manual", 'name = "nt0"', 'name = "é"', "interface.name", "printable ASCII"),
    ("manual", 'name = "nt0"', 'name = "tun%d"', "interface.name", "'%'"),
    # addresses: IPv6 zones (ipaddress accepts "%anything", NUL included), huge ports
    ("psk", 'listen = ["0.0.0.0:4500"]', 'listen = ["[fe80::1%eth0]:4500"]', "listen[0]",
     "zone"),
    ("psk", 'listen = ["0.0.0.0:4500"]', r'listen = ["[fe80::1%\u0000]:4500"]', "listen[0]",
     "zone"),
    ("psk", 'listen = ["0.0.0.0:4500"]', f'listen = ["0.0.0.0:{"9" * 5000}"]', "listen[0]",
     "outside 0..65535"),
    ("psk", 'endpoint = "198.18.0.2"', f'endpoint = "198.18.0.2:{"9" * 5000}"',
     "peer[0].endpoint", "outside 1..65535"),
    ("psk", 'endpoint = "198.18.0.2"', 'endpoint = "fe80::2%eth0"', "peer[0].endpoint",
     "zone"),
    ("psk", 'endpoint = "198.18.0.2"', 'endpoint = "[fe80::2%eth0]:500"', "peer[0].endpoint",
     "zone"),
    ("psk", 'endpoint = "198.18.0.2"', 'endpoint = "[198.18.0.2]"', "peer[0].endpoint",
     "brackets are for IPv6 addresses"),
    ("manual", 'suite = "aes256gcm16"', f'suite = "{LONG}"', "peer[0].suite",
     "unknown ESP suite 'aaaa"),
    ("manual", 'addresses = ["198.18.100.1/24"]', 'addresses = ["fe80::1%eth0/64"]',
     "interface.addresses[0]", "zone"),
    ("manual", 'allowed_ips = ["198.18.101.0/24"]', 'allowed_ips = ["fe80::%e/64"]',
     "peer[1].allowed_ips[0]", "zone"),
    ("psk", 'allowed_ips = ["198.18.100.2/32"]',
     'allowed_ips = ["198.18.100.2/32"]\nlocal_ts = ["fe80::1%x/128"]', "peer[0].local_ts[0]",
     "zone"),
]


@pytest.mark.parametrize(("base", "old", "new", "field", "fragment"), STRING_BAD,
                         ids=[f"{i}-{b[3]}" for i, b in enumerate(STRING_BAD)])
def test_bad_string_is_a_config_error(ikedir: Path, base: str, old: str, new: str, field: str,
                                      fragment: str) -> None:
    text = {"psk": IKE_PSK, "pubkey": IKE_PUBKEY, "manual": VALID}[base]
    e = ike_error(ikedir, mutate(old, new, text))
    assert e.field == field
    assert fragment in str(e)
    assert len(str(e)) < 600  # long values are shown shortened


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "is empty"),
    ("1a:é", "must be ASCII"),
    ("é", "must be ASCII"),
    ("fqdn:é", "must be ASCII"),
    ("fqdn:", "nothing after fqdn:"),
    ("fqdn:a b", "without whitespace"),
    ("a\x00b", "without whitespace or control characters"),
    ("keyid:", "nothing after keyid:"),
    ("keyid:#", "no hex digits"),
    ("keyid:#zz", "hex digits (0-9, a-f)"),
    ("keyid:#0", "odd number of hex digits"),
    ("keyid:#0 1", "hex digits (0-9, a-f)"),
    ("keyid:\ud800", "not valid Unicode"),
    ("fe80::1%eth0", "zone"),
    ("a" * 256, "256 octets long"),
    ("1:2", "not an IP address"),
])
def test_identity_parse_raises_value_error(text: str, fragment: str) -> None:
    from nattunnel.ike.config import Identity

    with pytest.raises(ValueError) as info:
        Identity.parse(text)
    assert not isinstance(info.value, UnicodeError)
    assert fragment in str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("hosta", (2, b"hosta")),
    ("fqdn:hosta.example", (2, b"hosta.example")),
    ("a" * 255, (2, b"a" * 255)),
    ("198.18.0.1", (1, bytes([198, 18, 0, 1]))),
    ("2001:db8::1", (5, ipaddress.ip_address("2001:db8::1").packed)),
    ("keyid:#0011AA", (11, bytes.fromhex("0011aa"))),
    ("keyid:grüezi", (11, "grüezi".encode())),
])
def test_identity_parse_and_str_round_trip(text: str, expected: tuple[int, bytes]) -> None:
    from nattunnel.ike.config import Identity

    ident = Identity.parse(text)
    assert (ident.id_type, ident.data) == expected
    assert Identity.parse(str(ident)) == ident



def test_huge_integer_in_a_seconds_field(ikedir: Path) -> None:
    # tomllib takes integers of any size; float() of this one raised OverflowError
    e = ike_error(ikedir, mutate('endpoint = "198.18.0.2"',
                                 'endpoint = "198.18.0.2"\ndpd_interval = 1' + "0" * 400,
                                 IKE_PSK))
    assert e.field == "peer[0].dpd_interval" and "is out of range" in str(e)
    assert len(str(e)) < 300


def test_integer_with_too_many_digits(ikedir: Path) -> None:
    # tomllib's int() raised a bare ValueError (not TOMLDecodeError) past 4300 digits
    e = ike_error(ikedir, mutate("spi_in = 0x1001", "spi_in = " + "9" * 5000))
    assert "TOML error" in str(e) and "4300 digits" in str(e)


# --- property: the loader raises ConfigError or nothing ----------------------------------------

def _toml_string(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(v: object) -> str:
    """A TOML rendering of a value tomllib could have produced."""
    import datetime
    import math

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_string(k)} = {_toml_value(x)}"
                               for k, x in v.items()) + "}"
    assert isinstance(v, datetime.date | datetime.time)
    return v.isoformat()


def _set_field(text: str, section: str, key: str, value: object) -> str:
    """``text`` with ``key = value`` in ``section`` ("top", "interface", "peer", "limits")
    instead of any line for ``key`` there. The text has one [interface] and one [[peer]]."""
    import re

    top, rest = text.split("[interface]", 1)
    iface, peer = rest.split("[[peer]]", 1)
    line = f"{key} = {_toml_value(value)}\n"
    drop = re.compile(rf"^{re.escape(key)} = .*\n", re.MULTILINE)
    if section == "top":
        top = drop.sub("", top) + line
    elif section == "interface":
        iface = drop.sub("", iface) + line
    elif section == "peer":
        peer = drop.sub("", peer) + line
    text = top + "[interface]" + iface + "[[peer]]" + peer
    if section == "limits":
        text += "\n[limits]\n" + line
    return text


def _fuzz_values() -> Any:  # a hypothesis SearchStrategy
    from hypothesis import strategies as st

    seeds = st.sampled_from([
        "", " ", "#", "@", "@#", "keyid:", "keyid:#", "fqdn:", "ipv4:", "ipv6:", "keys/",
        "keys/b.psk", "/", "\x00", "é", "198.18.0.2", "198.18.0.2:", "0.0.0.0:", "[", "[::]:",
        "fe80::1%", "fd00::/", "198.18.100.0/", "aes256gcm16-", "psk", "pubkey", "auto", "nat",
    ])
    strings = st.one_of(
        st.text(max_size=30),
        st.builds(lambda a, b: a + b, seeds, st.text(max_size=20)),
        st.text(alphabet="0123456789abcdefxz:#.%[]/@-", max_size=30),
    )
    others = st.one_of(
        st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(), st.booleans(),
        st.integers(min_value=300, max_value=4000).map(lambda n: 10**n),  # tomllib: any size
        st.dates(), st.times(), st.datetimes(),
    )
    # mostly strings: most fields are strings, and strings reach the parsers. (one_of would
    # flatten the alternatives into equal shares, so the mix is chosen explicitly.)
    scalars = st.sampled_from((strings,) * 4 + (others,)).flatmap(lambda s: s)
    containers = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                              max_leaves=6)
    return st.sampled_from((scalars,) * 4 + (containers,)).flatmap(lambda s: s)


def _fuzz_fields() -> list[tuple[str, str, str]]:
    from nattunnel.config.parser import INTERFACE_KEYS, LIMITS_KEYS, TOP_KEYS
    from nattunnel.config.peers import PEER_KEYS

    fields = [(base, "peer", key) for base in ("psk", "pubkey", "manual")
              for key in PEER_KEYS]
    fields += [("psk", "top", key) for key in TOP_KEYS if key not in ("interface", "peer")]
    fields += [("manual", "interface", key) for key in INTERFACE_KEYS]
    fields += [("psk", "limits", key) for key in LIMITS_KEYS]
    return fields


@pytest.mark.parametrize("where", _fuzz_fields(), ids="-".join)
def test_fuzz_any_value_in_any_field_is_a_config_error_or_loads(
        ikedir: Path, where: tuple[str, str, str]) -> None:
    """Arbitrary TOML values in every field: parse_config succeeds or raises ConfigError,
    never anything else (a traceback from `nattunnel up`)."""
    from hypothesis import HealthCheck, given, settings

    base, section, key = where
    text = {"psk": IKE_PSK, "pubkey": IKE_PUBKEY, "manual": VALID.replace(PEER_B, "")}[base]

    @settings(max_examples=50, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(value=_fuzz_values())
    def check(value: object) -> None:
        mutated = _set_field(text, section, key, value)
        try:
            parse_config(mutated, ikedir)
        except ConfigError as e:
            # every error names a field; only a TOML syntax error (the test's writer) does not
            assert e.field is not None, mutated
            assert_no_key(str(e))

    check()



# --- [limits]: ike.IkeLimits ------------------------------------------------------------------

def test_limits_default_to_ike_limits(ikedir: Path) -> None:
    from nattunnel.ike.ratelimit import IkeLimits

    assert load(ikedir, IKE_PSK).limits == IkeLimits()
    assert load(ikedir, VALID).limits == IkeLimits()
    assert load(ikedir, IKE_PSK + "\n[limits]\n").limits == IkeLimits()


def test_limits_keys_are_the_ike_limits_fields() -> None:
    import dataclasses

    from nattunnel.config.parser import LIMITS_KEYS
    from nattunnel.ike.ratelimit import IkeLimits

    assert tuple(f.name for f in dataclasses.fields(IkeLimits)) == LIMITS_KEYS


def test_limits_all_fields(ikedir: Path) -> None:
    from nattunnel.ike.ratelimit import IkeLimits

    cfg = load(ikedir, IKE_PSK + """
[limits]
cookie_threshold = 0
half_open_max = 64
half_open_timeout = 10
init_rate = 2.5
init_burst = 5
init_rate_total = 50
ike_sas_per_identity = 1
children_per_ike_sa = 2
cookie_secret_lifetime = 120.5
""")
    assert cfg.limits == IkeLimits(
        cookie_threshold=0, half_open_max=64, half_open_timeout=10.0, init_rate=2.5,
        init_burst=5, init_rate_total=50.0, ike_sas_per_identity=1, children_per_ike_sa=2,
        cookie_secret_lifetime=120.5)
    assert isinstance(cfg.limits.half_open_timeout, float)
    assert isinstance(cfg.limits.init_rate_total, float)
    # a few fields only: the rest keep their defaults
    cfg = load(ikedir, IKE_PSK + "\n[limits]\ninit_rate = 1\n")
    assert cfg.limits == IkeLimits(init_rate=1.0)


#: lines of a [limits] table -> field path, a fragment of the problem
LIMITS_BAD = [
    ("cookie_threshold = -1", "limits.cookie_threshold", "out of range; expected an integer 0.."),
    ("cookie_threshold = 1.5", "limits.cookie_threshold", "expected an integer 0.."),
    ("cookie_threshold = true", "limits.cookie_threshold", "got a boolean"),
    ("cookie_threshold = 1024", "limits.cookie_threshold", "not below half_open_max (1024)"),
    ("half_open_max = 8\ncookie_threshold = 8", "limits.cookie_threshold",
     "not below half_open_max (8)"),
    ("half_open_max = 0", "limits.half_open_max", "out of range; expected an integer 1.."),
    ("half_open_max = 16", "limits.half_open_max",
     "16 is not above cookie_threshold (32, the default)"),
    ("half_open_max = 4294967296", "limits.half_open_max", "out of range"),
    ("half_open_timeout = 0", "limits.half_open_timeout", "expected a number of seconds > 0"),
    ("half_open_timeout = inf", "limits.half_open_timeout", "out of range"),
    ('half_open_timeout = "30"', "limits.half_open_timeout", "got a string"),
    ("init_rate = 0", "limits.init_rate", "expected a number of requests per second > 0"),
    ("init_rate = -1.5", "limits.init_rate", "out of range"),
    ("init_rate = nan", "limits.init_rate", "out of range"),
    ("init_rate = 1" + "0" * 400, "limits.init_rate", "out of range"),
    ("init_burst = 0", "limits.init_burst", "out of range; expected an integer 1.."),
    ("init_burst = 2.0", "limits.init_burst", "expected an integer"),
    ("init_rate_total = 0.5", "limits.init_rate_total",
     "expected a number of requests per second >= 1"),
    ("init_rate_total = -inf", "limits.init_rate_total", "out of range"),
    ("ike_sas_per_identity = 0", "limits.ike_sas_per_identity", "out of range"),
    ("children_per_ike_sa = 0", "limits.children_per_ike_sa", "out of range"),
    ("children_per_ike_sa = [1]", "limits.children_per_ike_sa", "got an array"),
    ("cookie_secret_lifetime = 0", "limits.cookie_secret_lifetime", "seconds > 0"),
    ("cookie_secret_lifetime = -1", "limits.cookie_secret_lifetime", "out of range"),
    ("half_open_maxx = 5", "limits.half_open_maxx", "did you mean 'half_open_max'?"),
    ("rate = 5", "limits.rate", "unknown key"),
]


@pytest.mark.parametrize(("lines", "field", "fragment"), LIMITS_BAD,
                         ids=[f"{i}-{b[1]}" for i, b in enumerate(LIMITS_BAD)])
def test_limits_bad_value(ikedir: Path, lines: str, field: str, fragment: str) -> None:
    e = ike_error(ikedir, IKE_PSK + "\n[limits]\n" + lines + "\n")
    assert e.field == field
    assert f"{field}: " in str(e)
    assert fragment in str(e)


def test_limits_must_be_a_table(ikedir: Path) -> None:
    e = ike_error(ikedir, "limits = 5\n" + IKE_PSK)
    assert e.field == "limits" and "expected a table [limits]" in str(e)
    e = ike_error(ikedir, IKE_PSK.replace("listen", "limit", 1))
    assert e.field == "limit" and "did you mean 'limits'?" in str(e)


def test_build_ike_passes_the_limits(ikedir: Path) -> None:
    from nattunnel.app import build_ike, build_tunnel
    from nattunnel.ike.ratelimit import IkeLimits

    cfg = load(ikedir, IKE_PSK + "\n[limits]\nhalf_open_max = 100\ninit_burst = 3\n")
    manager = build_ike(cfg, build_tunnel(cfg, now=0.0), now=0.0)
    assert manager is not None
    assert manager.limits == cfg.limits == IkeLimits(half_open_max=100, init_burst=3)
    assert manager.cookie_threshold == cfg.limits.cookie_threshold
    cfg = load(ikedir, IKE_PSK)
    manager = build_ike(cfg, build_tunnel(cfg, now=0.0), now=0.0)
    assert manager is not None and manager.limits == IkeLimits()


def test_docs_limits_table_matches_ike_limits() -> None:
    """docs/config.md lists every [limits] key with IkeLimits' default."""
    import dataclasses
    import re

    from nattunnel.ike.ratelimit import IkeLimits

    docs = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    section = docs[docs.index("## `[limits]`"):]
    section = section[:section.index("\n## ", 1)]
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]+ \| `([^`]+)` \|", section, re.MULTILINE))
    defaults = {f.name: getattr(IkeLimits(), f.name) for f in dataclasses.fields(IkeLimits)}
    assert set(rows) == set(defaults)
    for key, default in defaults.items():
        assert float(rows[key]) == default, key


def test_ike_rekey_time(ikedir: Path) -> None:
    """The IKE SA's lifetime in the config (issue 11: `ike_rekey_time` was refused):
    strongSwan's connection-level rekey_time, next to the child SAs' rekey_time."""
    from nattunnel.config import DEFAULT_IKE_REKEY_TIME

    (p,) = load(ikedir, IKE_PSK).peers
    assert p.ike is not None
    assert p.ike.ike_rekey_time == DEFAULT_IKE_REKEY_TIME == 14400.0
    assert p.ike.child_rekey_time == 3600.0
    text = mutate('endpoint = "198.18.0.2"',
                  'endpoint = "198.18.0.2"\nike_rekey_time = 7200\nrekey_time = 600.5',
                  IKE_PSK)
    (p,) = load(ikedir, text).peers
    assert p.ike is not None
    assert p.ike.ike_rekey_time == 7200.0 and p.ike.child_rekey_time == 600.5
    text = mutate('endpoint = "198.18.0.2"', 'endpoint = "198.18.0.2"\nike_rekey_time = 0',
                  IKE_PSK)
    (p,) = load(ikedir, text).peers
    assert p.ike is not None and p.ike.ike_rekey_time == 0.0  # never
    doc = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    assert "| `ike_rekey_time` | integer or float | `14400` (4 h) |" in doc
    assert "| `rekey_time` | integer or float | `3600` |" in doc


@pytest.mark.parametrize(("value", "fragment"), [
    ("-1", "out of range; expected a number of seconds >= 0"),
    ("true", "got a boolean"),
    ("inf", "out of range"),
    ('"4h"', "expected a number of seconds >= 0"),
    ("nan", "out of range"),
])
def test_ike_rekey_time_refusals(ikedir: Path, value: str, fragment: str) -> None:
    e = ike_error(ikedir, mutate('endpoint = "198.18.0.2"',
                                 f'endpoint = "198.18.0.2"\nike_rekey_time = {value}',
                                 IKE_PSK))
    assert e.field == "peer[0].ike_rekey_time" and fragment in str(e), str(e)


def test_ike_rekey_time_is_for_ike_peers_only(cfgdir: Path) -> None:
    e = error(cfgdir, mutate('name = "b"', 'name = "b"\nike_rekey_time = 60'))
    assert e.field == "peer[0].ike_rekey_time", str(e)


def test_ike_rekey_time_from_the_config_rekeys_the_ike_sa(ikedir: Path) -> None:
    """ike_rekey_time reaches the IKE SA: two IKE SAs built from configurations rekey the
    IKE SA after it (less the jitter), on the FakeWire, and not before; the child SAs'
    rekey_time is left to them."""
    from nattunnel.ike.events import IkeRekeyed
    from tests.support.ike import NET_A, NET_B, SaPair

    def peer_of(text: str) -> Any:
        (p,) = load(ikedir, text).peers
        assert p.ike is not None
        return p.ike

    common = 'auth = "psk"\npsk_file = "keys/b.psk"\nike_rekey_time = 100\nrekey_time = 0\n'
    a = peer_of(f'[interface]\nkind = "inprocess"\n[[peer]]\nname = "b"\n{common}'
                f'local_id = "hosta"\nremote_id = "hostb"\nendpoint = "198.18.0.2"\n'
                f'allowed_ips = ["{NET_B}"]\nlocal_ts = ["{NET_A}"]\n')
    b = peer_of(f'[interface]\nkind = "inprocess"\n[[peer]]\nname = "a"\n{common}'
                f'local_id = "hostb"\nremote_id = "hosta"\n'
                f'allowed_ips = ["{NET_A}"]\nlocal_ts = ["{NET_B}"]\n')
    assert a.ike_rekey_time == b.ike_rekey_time == 100.0
    w = SaPair(a, b)
    w.a.start(0.0)
    w.pump(0.0)
    assert w.a.established and w.b is not None and w.b.established
    w.wire.advance(89.0)  # the earliest a rekey may start: 100 less 10 % jitter
    assert not [e for e in w.events_a + w.events_b if isinstance(e, IkeRekeyed)]
    w.wire.advance(12.0)
    assert [e for e in w.events_a + w.events_b if isinstance(e, IkeRekeyed)]


def test_control_socket_and_metrics(cfgdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nattunnel.config.parser import SYSTEM_CONTROL_DIR, default_control_dir

    base = '[interface]\nkind = "inprocess"\n'
    # the default: the file's name in the default directory (root: /run/nattunnel)
    assert load(cfgdir, base).control_socket == default_control_dir() / "tunnel.sock"
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_control_dir() == SYSTEM_CONTROL_DIR
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_control_dir() == Path("/run/user/1000/nattunnel")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_control_dir() == Path("/tmp/nattunnel-1000")
    monkeypatch.undo()
    assert load(cfgdir, 'control_socket = ""\n' + base).control_socket is None
    assert load(cfgdir, 'control_socket = "c.sock"\n' + base).control_socket == cfgdir / "c.sock"
    e = error(cfgdir, f'control_socket = "{"x" * 120}.sock"\n' + base)
    assert "control_socket: " in str(e) and "107 octets" in str(e)
    assert load(cfgdir, base).metrics is None
    assert load(cfgdir, 'metrics = "127.0.0.1:9586"\n' + base).metrics == ("127.0.0.1", 9586)
    assert load(cfgdir, 'metrics = "[::1]:0"\n' + base).metrics == ("::1", 0)
    for bad in ('"9586"', '"localhost"', "9586"):
        e = error(cfgdir, f"metrics = {bad}\n" + base)
        assert ": metrics" in str(e), str(e)


def test_mobike_key(ikedir: Path) -> None:
    """``mobike`` in an IKE peer's table: on by default (as strongSwan's), false turns it
    off, anything else names the field."""
    (pc,) = load(ikedir, IKE_PSK).peers
    assert pc.ike is not None and pc.ike.mobike is True
    text = IKE_PSK.replace('auth = "psk"', 'auth = "psk"\nmobike = false')
    (pc,) = load(ikedir, text).peers
    assert pc.ike is not None and pc.ike.mobike is False
    e = ike_error(ikedir, IKE_PSK.replace('auth = "psk"', 'auth = "psk"\nmobike = "yes"'))
    assert "peer[0].mobike" in str(e)
