"""Fuzz the configuration loader (nattunnel/config/, ``parse_config``).

Two kinds of input:

- text: any octets, decoded as UTF-8 (undecodable octets become U+FFFD, since load_config
  refuses non-UTF-8 files before parse_config sees them); the seeds are valid configurations
  (docs/examples and the kinds tests/test_config.py loads: manual SAs, IKE with PSK, IKE with
  Ed25519 keys), so byte mutation edits real configurations;
- structured (first octet 0x00): a valid template, then edits chosen by the input, each
  setting one key of the top level, ``[interface]`` or a ``[[peer]]`` to a value made for that
  key's kind (identities in every strongSwan spelling, paths with odd characters, addresses,
  proposals, numbers at their limits, wrong types), written as correct TOML, so the checks
  past the TOML parser see hostile values.

Only ConfigError may escape; a ConfigError message must not contain key material (unless the
input itself holds it). The key files live in a temporary directory made at start.

    python3 fuzz/fuzz_config.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import re
import sys
import tempfile
import traceback
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["nattunnel"]):
    import _common

    from nattunnel.config import ConfigError, parse_config
    from nattunnel.keys import write_ed25519_pair, write_key_file, write_psk_file

from _common import STRUCTURED_FLAGS, FuzzFailure, Reader, known

EXAMPLES = _common.REPO / "docs" / "examples"
PSK = b"fuzz psk: correct horse battery staple"
KEYMAT = {  # 36 octets each (aes256gcm16), recognisable
    "keys/b-in.key": bytes(range(0xA0, 0xA0 + 36)),
    "keys/b-out.key": bytes(range(0x10, 0x10 + 36)),
    "keys/c-in.key": bytes(range(0x40, 0x40 + 36)),
    "keys/c-out.key": bytes(range(0xC0, 0xC0 + 36)),
    "keys/a-to-b.key": bytes(range(0x50, 0x50 + 36)),
    "keys/b-to-a.key": bytes(range(0x70, 0x70 + 36)),
}
_BASE: Path | None = None


def base_dir() -> Path:
    global _BASE
    if _BASE is None:
        d = Path(tempfile.mkdtemp(prefix="nattunnel-fuzz-config-keys-"))
        (d / "keys").mkdir()
        for name, key in KEYMAT.items():
            write_key_file(d / name, key)
        for name in ("keys/b.psk", "keys/a-b.psk"):
            write_psk_file(d / name, PSK)
        write_ed25519_pair(d / "keys" / "a.key", d / "keys" / "a.pub")
        write_ed25519_pair(d / "keys" / "d.key", d / "keys" / "d.pub")
        _BASE = d
    return _BASE


MANUAL = """listen = ["0.0.0.0:4500"]

[interface]
kind = "tun"
name = "nt0"
addresses = ["198.18.100.1/24"]

[[peer]]
name = "b"
endpoint = "198.18.0.2:4500"
allowed_ips = ["198.18.100.2/32"]
suite = "aes256gcm16"
spi_in = 0x1001
spi_out = 0x2001
key_in = "keys/b-in.key"
key_out = "keys/b-out.key"
keepalive = "nat"
behind_nat = true

[[peer]]
name = "c"
allowed_ips = ["198.18.101.0/24", "fd00:101::/64"]
spi_in = 0x1002
spi_out = 0x2002
key_in = "keys/c-in.key"
key_out = "keys/c-out.key"
replay_window = 4096
tfc_pad = 100
"""

IKE_PSK = """listen = ["0.0.0.0:4500", "[::]:4500"]
ike_port = 500

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
initiate = true
allowed_ips = ["198.18.100.2/32"]
ike_proposals = ["aes256gcm16-prfsha256-x25519", "chacha20poly1305-prfsha256-x25519"]
esp_proposals = ["aes256gcm16", "chacha20poly1305-esn"]
encap = "auto"
dpd_interval = 30
rekey_time = 3600
"""

IKE_PUBKEY = """[interface]
addresses = ["198.18.100.1/24"]

[[peer]]
name = "d"
auth = "pubkey"
private_key = "keys/a.key"
peer_public_key = "keys/d.pub"
local_id = "198.18.0.1"
remote_id = "keyid:00112233"
allowed_ips = ["198.18.102.0/24"]
local_ts = ["198.18.100.1/32"]
"""

TEMPLATES = [MANUAL, IKE_PSK, IKE_PUBKEY]


def templates() -> list[str]:
    out = list(TEMPLATES)
    if EXAMPLES.is_dir():
        out += [p.read_text() for p in sorted(EXAMPLES.glob("*.toml"))]
    return out


# --- structured edits ---------------------------------------------------------------------------
def toml_str(s: str) -> str:
    """A TOML basic string holding exactly ``s`` (control characters escaped)."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif c < 0x20 or c == 0x7F:
            out.append(f"\\u{c:04x}")
        elif 0xD800 <= c <= 0xDFFF:
            out.append("\ufffd")  # TOML cannot hold a lone surrogate
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


ODD = ["", " ", "\x00", "\u00e9", "\u0131", "\u2028", "\ufeff", "\U0001f600", "\t", "/", ":",
       "#", "@", "=", ",", "..", "\\", "\n", "\u0660", "\uff10", "ß", "K"]


def text(r: Reader) -> str:
    kind = r.u8() % 4
    if kind == 0:
        return r.blob(40).decode("utf-8", "replace")
    if kind == 1:
        return "".join(r.pick(ODD) for _ in range(r.u8() % 6))
    if kind == 2:
        return r.blob(24).decode("latin-1")
    return r.blob(16).hex()


def identity(r: Reader) -> str:
    prefix = r.pick(["", "fqdn:", "keyid:", "keyid:#", "@", "@#", "ipv4:", "ipv6:", "IPV4:",
                     "email:", "dn:", "fqdn:@", "keyid:#0x"])
    body = r.pick(["hostb", "198.18.0.2", "fd00::1", "00112233", "0011223", "zz", "hösta",
                   "a b", "a@b", "cn=x,o=y", "", "::", "1.2.3.4.5", "\u0661\u0662", "\x00"])
    return prefix + (body if r.u8() & 3 else text(r))


def path(r: Reader) -> str:
    return r.pick(["keys/b.psk", "keys/a.key", "keys/d.pub", "keys/b-in.key", "keys/a.pub",
                   "keys", "/dev/null", "/nonexistent", "keys/b.psk\x00", "keys/\x00x",
                   "ключ", "keys/b\udcff", "", ".", "../keys/b.psk"]) + (
        text(r) if r.u8() & 1 else "")


def address(r: Reader) -> str:
    return r.pick(["198.18.0.2", "198.18.0.2:4500", "[fd00::2]:4500", "fd00::2", "[fd00::2]",
                   "0.0.0.0:4500", "224.0.0.1:1", "255.255.255.255:9", "1.2.3.4:0",
                   "1.2.3.4:65536", "[::1", "host:500", "1.2.3.4:+5", "1.2.3.4:\u0665", ""]) + (
        text(r) if r.u8() & 7 == 0 else "")


def number(r: Reader) -> str:
    return r.pick(["0", "1", "-1", "255", "256", "65535", "65536", "4294967295",
                   "4294967296", "0x1001", "1e3", "3.5", "inf", "nan", "-inf", "1_000",
                   "9" * 40, "0.0", "1e400", "true"])


def proposal(r: Reader) -> str:
    parts = [r.pick(["aes256gcm16", "aes128gcm16", "chacha20poly1305", "prfsha256",
                     "prfsha384", "prfsha512", "x25519", "ecp256", "esn", "noesn", "aes",
                     "", "AES256GCM16", "modp2048", text(r)]) for _ in range(r.u8() % 5)]
    return "-".join(parts)


def value(r: Reader, key: str) -> str:
    """A TOML value for ``key``: mostly of the right kind, sometimes of a wrong one."""
    if r.u8() % 8 == 0:
        return r.pick(["true", "1", '""', "[]", "{}", "[1, 2]", '["a", 1]', "1979-05-27",
                       "3.0", toml_str(text(r))])
    if key in ("local_id", "remote_id"):
        return toml_str(identity(r))
    if key in ("psk_file", "private_key", "peer_public_key", "key_in", "key_out", "keylog"):
        return toml_str(path(r))
    if key == "endpoint":
        return toml_str(address(r))
    if key in ("listen", "allowed_ips", "addresses", "local_ts"):
        items = [r.pick([address(r), "198.18.100.2/32", "198.18.100.0/24", "198.18.100.1/24",
                         "fd00::/64", "0.0.0.0/0", "::/0", "198.18.100.2/33", "10.0.0.1/8",
                         text(r)]) for _ in range(r.u8() % 4)]
        return "[" + ", ".join(toml_str(i) for i in items) + "]"
    if key in ("ike_proposals", "esp_proposals"):
        return "[" + ", ".join(toml_str(proposal(r)) for _ in range(r.u8() % 3)) + "]"
    if key in ("name", "kind", "suite", "auth", "encap", "keepalive"):
        return toml_str(r.pick(["b", "tun", "inprocess", "aes256gcm16", "psk", "pubkey",
                                "auto", "force", "nat", "always", "never", "", "nt0" * 8,
                                text(r)]))
    if key in ("esn", "behind_nat", "initiate"):
        return r.pick(["true", "false"])
    return number(r)


KEYS = {
    "": ["listen", "keylog", "ike_port"],
    "interface": ["kind", "name", "addresses", "underlay_mtu", "mtu"],
    "peer": ["name", "endpoint", "allowed_ips", "suite", "spi_in", "spi_out", "key_in",
             "key_out", "esn", "replay_window", "keepalive", "behind_nat",
             "keepalive_interval", "tfc_pad", "auth", "local_id", "remote_id", "psk_file",
             "private_key", "peer_public_key", "initiate", "encap", "dpd_interval",
             "ike_proposals", "esp_proposals", "local_ts", "rekey_time", "rekey_bytes",
             "rekey_packets"],
}
_KEY_LINE = re.compile(r"^([A-Za-z_]+)\s*=")


def structured(r: Reader) -> str:
    lines = templates()[r.u8() % len(templates())].splitlines()
    for _ in range(1 + r.u8() % 4):
        # the sections of the template: "" (top), interface, and each [[peer]] by its line
        starts = [("", 0)] + [("interface" if ln.strip() == "[interface]" else "peer", i + 1)
                              for i, ln in enumerate(lines)
                              if ln.strip() in ("[interface]", "[[peer]]")]
        section, start = starts[r.u8() % len(starts)]
        key = r.pick(KEYS[section])
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")),
                   len(lines))
        new = f"{key} = {value(r, key)}"
        for i in range(start, end):
            m = _KEY_LINE.match(lines[i])
            if m and m.group(1) == key:
                if r.u8() & 3:
                    lines[i] = new
                else:
                    del lines[i]  # a missing key
                break
        else:
            lines.insert(start if section else 0, new)
    return "\n".join(lines) + "\n"


# --- the harness ------------------------------------------------------------------------------
def _signature(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(exc))
    if isinstance(exc, UnicodeEncodeError):
        return "config.unicode_encode"
    if isinstance(exc, ValueError) and "fromhex" in tb:
        return "config.fromhex"
    if isinstance(exc, ValueError) and "null" in str(exc):
        return "config.embedded_null"
    return "config." + type(exc).__name__


SECRETS = [PSK.decode()] + [k.hex() for k in KEYMAT.values()]


def test_one_input(data: bytes) -> None:
    if data[:1] == b"\x00":
        source = structured(Reader(data[1:]))
    else:
        source = data.decode("utf-8", "replace")
    try:
        parse_config(source, base_dir())
    except ConfigError as e:
        msg = str(e).lower()
        for secret in SECRETS:
            # a key echoed from a key file (not from the input's own text) is a leak
            if secret.lower()[:16] in msg and secret.lower()[:16] not in source.lower():
                raise FuzzFailure("config.key_in_message", f"{source!r}: {e}") from e
    except Exception as e:
        if known(_signature(e)):
            return
        raise


def seed_texts() -> list[bytes]:
    out = [t.encode() for t in templates()]
    # structured programs: each template with one to four default edits
    out += [bytes([0, i, 0]) for i in range(len(templates()))]
    out += [bytes([0, i, 3]) + bytes(range(40)) for i in range(len(templates()))]
    return out


if __name__ == "__main__":
    _common.main("config", test_one_input, seed_texts, sys.argv, STRUCTURED_FLAGS)
