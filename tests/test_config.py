"""The TOML configuration (nattunnel.config): a full round trip, defaults, derived MTU, and one
ConfigError per kind of mistake, each naming its field path and never any key."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from nattunnel.config import (
    Config,
    ConfigError,
    KeepaliveMode,
    format_addr,
    load_config,
    parse_config,
)
from nattunnel.constants import DEFAULT_KEEPALIVE_INTERVAL, REPLAY_WINDOW_DEFAULT
from nattunnel.keys import write_key_file
from nattunnel.suite import AES_GCM_128, AES_GCM_256, CHACHA20_POLY1305

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


def test_format_addr() -> None:
    assert format_addr(("0.0.0.0", 4500)) == "0.0.0.0:4500"
    assert format_addr(("2001:db8::1", 4500)) == "[2001:db8::1]:4500"


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
