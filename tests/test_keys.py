"""The key store (nattunnel.keys) and `nattunnel keygen`.

Permission checks are checks of mode bits, not of access, so they hold when the tests run as
root too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nattunnel.cli.main import main
from nattunnel.esp.suite import SUITES, suite_by_name
from nattunnel.keys import (
    KeyFileError,
    generate_keymat,
    load_key_file,
    load_keymat,
    write_key_file,
)

# A recognisable key: any leak of it (raw or hex, or a long fragment) is easy to spot.
KEY = bytes(range(0xA0, 0xA0 + 36))
KEY_HEX = KEY.hex()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_no_key(text: str, key: bytes = KEY) -> None:
    hexkey = key.hex()
    assert hexkey not in text and hexkey.upper() not in text
    # no 8-hex-digit fragment of the key either (a quoted prefix or an offending slice)
    for i in range(0, len(hexkey) - 8, 2):
        assert hexkey[i:i + 8] not in text.lower()
    assert repr(key)[2:-1] not in text


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- writing -------------------------------------------------------------------------------

def test_created_mode_is_0600_with_permissive_umask(tmp_path, umask0):
    p = tmp_path / "k"
    write_key_file(p, KEY)
    assert mode_of(p) == 0o600
    assert stat.S_ISREG(os.lstat(p).st_mode)


def test_created_mode_is_0600_with_restrictive_umask(tmp_path):
    old = os.umask(0o277)  # would leave 0400
    try:
        write_key_file(tmp_path / "k", KEY)
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "k") == 0o600


def test_file_format_is_one_line_of_lowercase_hex(tmp_path):
    p = tmp_path / "k"
    write_key_file(p, KEY)
    assert p.read_bytes() == KEY_HEX.encode() + b"\n"


def test_round_trip(tmp_path):
    p = tmp_path / "k"
    write_key_file(str(p), KEY)
    assert load_key_file(p) == KEY
    assert load_key_file(str(p), len(KEY)) == KEY
    assert load_keymat(p, suite_by_name("aes256gcm16")) == KEY


def test_refuses_to_overwrite_without_force(tmp_path):
    p = tmp_path / "k"
    p.write_bytes(b"old\n")
    with pytest.raises(KeyFileError) as e:
        write_key_file(p, KEY)
    assert str(p) in str(e.value) and "exists" in str(e.value)
    assert p.read_bytes() == b"old\n"


def test_refuses_to_write_through_a_symlink(tmp_path):
    target = tmp_path / "target"
    (tmp_path / "link").symlink_to(target)  # dangling
    with pytest.raises(KeyFileError):
        write_key_file(tmp_path / "link", KEY)
    assert not target.exists()


def test_force_replaces_atomically_with_0600(tmp_path, umask0):
    p = tmp_path / "k"
    p.write_bytes(b"old\n")
    os.chmod(p, 0o644)
    write_key_file(p, KEY, force=True)
    assert mode_of(p) == 0o600
    assert load_key_file(p) == KEY
    assert sorted(os.listdir(tmp_path)) == ["k"]  # no temporary file left behind


def test_force_creates_a_missing_file(tmp_path, umask0):
    write_key_file(tmp_path / "k", KEY, force=True)
    assert mode_of(tmp_path / "k") == 0o600


def test_force_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"keep\n")
    (tmp_path / "link").symlink_to(target)
    write_key_file(tmp_path / "link", KEY, force=True)
    assert target.read_bytes() == b"keep\n"
    assert not (tmp_path / "link").is_symlink()
    assert load_key_file(tmp_path / "link") == KEY


@pytest.mark.parametrize("force", [False, True])
def test_missing_directory(tmp_path, force):
    p = tmp_path / "nodir" / "k"
    with pytest.raises(KeyFileError) as e:
        write_key_file(p, KEY, force=force)
    assert str(p) in str(e.value) and "does not exist" in str(e.value)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(KeyFileError) as e:
        write_key_file(tmp_path / "k", KEY)
    assert_no_key(str(e.value))
    with pytest.raises(KeyFileError):
        write_key_file(tmp_path / "k2", KEY, force=True)
    assert os.listdir(tmp_path) == []


def test_empty_key_is_refused(tmp_path):
    with pytest.raises(KeyFileError):
        write_key_file(tmp_path / "k", b"")
    assert not (tmp_path / "k").exists()


# --- loading -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o620, 0o602, 0o610, 0o601, 0o777])
def test_group_or_other_access_is_refused(tmp_path, mode):
    p = tmp_path / "k"
    write_key_file(p, KEY)
    os.chmod(p, mode)
    with pytest.raises(KeyFileError) as e:
        load_key_file(p, len(KEY))
    msg = str(e.value)
    assert str(p) in msg
    assert f"{mode:04o}" in msg
    assert f"chmod 600 {p}" in msg
    assert_no_key(msg)
    assert_no_key(repr(e.value))


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o200 | 0o400, 0o700])
def test_owner_only_modes_are_accepted(tmp_path, mode):
    p = tmp_path / "k"
    write_key_file(p, KEY)
    os.chmod(p, mode)
    assert load_key_file(p, len(KEY)) == KEY


def test_symlink_is_refused(tmp_path):
    target = tmp_path / "real"
    write_key_file(target, KEY)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(KeyFileError) as e:
        load_key_file(link)
    assert str(link) in str(e.value) and "symbolic link" in str(e.value)


def test_directory_is_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError) as e:
        load_key_file(d)
    assert str(d) in str(e.value) and "directory" in str(e.value)


def test_fifo_is_refused_without_blocking(tmp_path):
    f = tmp_path / "fifo"
    os.mkfifo(f, 0o600)
    with pytest.raises(KeyFileError) as e:
        load_key_file(f)
    assert "regular file" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(KeyFileError) as e:
        load_key_file(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def write_raw(path: Path, content: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


@pytest.mark.parametrize("content", [
    KEY_HEX[:40].encode() + b"zz" + KEY_HEX[42:].encode() + b"\n",   # not hex
    KEY_HEX.encode() + b"x\n",                                      # trailing junk
    KEY_HEX[:36].encode() + b" " + KEY_HEX[36:].encode() + b"\n",   # space inside
    KEY_HEX[:36].encode() + b"\n" + KEY_HEX[36:].encode() + b"\n",  # two lines
    KEY_HEX[:-1].encode() + b"\n",                                  # odd number of digits
    KEY_HEX.encode() + b"\xff\n",                                   # not ASCII
    b"\n",                                                          # empty
], ids=["not-hex", "trailing-junk", "space", "two-lines", "odd", "not-ascii", "empty"])
def test_bad_hex_is_refused_without_echoing_it(tmp_path, content):
    p = write_raw(tmp_path / "k", content)
    with pytest.raises(KeyFileError) as e:
        load_key_file(p, 36)
    msg = str(e.value)
    assert str(p) in msg and "36 octets" in msg
    assert_no_key(msg)
    # no chained exception (e.g. a UnicodeDecodeError quoting an octet) rides along
    assert e.value.__cause__ is None and e.value.__context__ is None


@pytest.mark.parametrize("n", [20, 32, 35, 37, 64])
def test_wrong_length_is_refused(tmp_path, n):
    key = os.urandom(n)
    p = write_raw(tmp_path / "k", key.hex().encode() + b"\n")
    with pytest.raises(KeyFileError) as e:
        load_key_file(p, 36)
    msg = str(e.value)
    assert str(p) in msg and "expected 36 octets" in msg and f"found {n} octets" in msg
    assert_no_key(msg, key)


def test_loading_is_lenient_about_case_and_missing_newline(tmp_path):
    p = write_raw(tmp_path / "k", KEY_HEX.upper().encode())
    assert load_key_file(p, 36) == KEY


def test_oversized_file_is_refused(tmp_path):
    p = write_raw(tmp_path / "k", b"00" * 5000)
    with pytest.raises(KeyFileError) as e:
        load_key_file(p)
    assert "too large" in str(e.value)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_generate_keymat_length(name):
    suite = SUITES[name]
    a, b = generate_keymat(suite), generate_keymat(suite)
    assert len(a) == suite.keymat_len and a != b
    suite.split_keymat(a)


# --- nattunnel keygen ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SUITES))
def test_cli_keygen_each_suite(tmp_path, capsys, umask0, name):
    p = tmp_path / f"{name}.key"
    assert main(["keygen", "--suite", name, str(p)]) == 0
    assert mode_of(p) == 0o600
    keymat = load_key_file(p, SUITES[name].keymat_len)
    out, err = capsys.readouterr()
    assert str(p) in out and name in out and err == ""
    assert_no_key(out + err, keymat)


def test_cli_keygen_default_suite_and_alias(tmp_path, capsys):
    assert main(["keygen", str(tmp_path / "a")]) == 0
    assert len(load_key_file(tmp_path / "a")) == SUITES["aes256gcm16"].keymat_len
    assert main(["keygen", "--suite", "aes-gcm-128", str(tmp_path / "b")]) == 0
    assert len(load_key_file(tmp_path / "b")) == SUITES["aes128gcm16"].keymat_len
    assert "aes128gcm16" in capsys.readouterr().out


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("nattunnel keygen:") and err.endswith("\n") and err.count("\n") == 1
    return err


def test_cli_keygen_refuses_to_overwrite_without_force(tmp_path, capsys):
    p = tmp_path / "k"
    assert main(["keygen", str(p)]) == 0
    first = load_key_file(p)
    capsys.readouterr()
    assert main(["keygen", str(p)]) == 2
    err = one_line_error(capsys)
    assert str(p) in err and "--force" in err
    assert load_key_file(p) == first
    assert_no_key(err, first)

    assert main(["keygen", "--force", str(p)]) == 0
    second = load_key_file(p)
    assert second != first and mode_of(p) == 0o600
    out = capsys.readouterr().out
    assert_no_key(out, first)
    assert_no_key(out, second)


def test_cli_keygen_missing_directory(tmp_path, capsys):
    p = tmp_path / "nodir" / "k"
    assert main(["keygen", str(p)]) == 2
    assert "does not exist" in one_line_error(capsys)


def test_cli_keygen_bad_suite(tmp_path, capsys):
    p = tmp_path / "k"
    assert main(["keygen", "--suite", "des", str(p)]) == 2
    err = one_line_error(capsys)
    assert "des" in err and "aes256gcm16" in err
    assert not p.exists()


# --- IKEv2 credentials: pre-shared keys ----------------------------------------------------

def test_psk_file_round_trip(tmp_path, umask0):
    from nattunnel.keys import load_psk, write_psk_file

    p = tmp_path / "a.psk"
    write_psk_file(p, KEY)
    assert mode_of(p) == 0o600
    assert p.read_bytes() == b"0x" + KEY_HEX.encode() + b"\n"
    assert load_psk(p) == KEY
    with pytest.raises(KeyFileError, match="already exists"):
        write_psk_file(p, KEY)


@pytest.mark.parametrize(("content", "secret"), [
    (b"my secret\n", b"my secret"),
    (b"my secret", b"my secret"),
    (b"my secret\r\n", b"my secret"),
    ("grüezi\n".encode(), "grüezi".encode()),
    (b"0xA0a1\n", b"\xa0\xa1"),
])
def test_load_psk_forms(tmp_path, content, secret):
    from nattunnel.keys import load_psk

    assert load_psk(write_raw(tmp_path / "k", content)) == secret


@pytest.mark.parametrize(("content", "fragment"), [
    (b"\n", "is empty"),
    (b"", "is empty"),
    (b"one\ntwo\n", "holds 2 lines"),
    (b" padded\n", "whitespace"),
    (b"tab\t\n", "whitespace"),
    (b"bell\x07x\n", "control character"),
    (b"\xa0\xa1\xa2\n", "not UTF-8"),
    (b"0x\n", "without hex digits"),
    (b"0x" + KEY_HEX[:-1].encode() + b"\n", "odd number of hex digits"),
    (b"0x" + KEY_HEX[:10].encode() + b"zz" + KEY_HEX[12:].encode(), "not a hex digit"),
])
def test_load_psk_refusals(tmp_path, content, fragment):
    from nattunnel.keys import load_psk

    p = write_raw(tmp_path / "k", content)
    with pytest.raises(KeyFileError) as e:
        load_psk(p)
    assert str(p) in str(e.value) and fragment in str(e.value)
    assert_no_key(str(e.value))
    problem = str(e.value).removeprefix(f"{p}: ")
    assert "padded" not in problem and "bell" not in problem and "two" not in problem


def test_load_psk_mode_and_symlink(tmp_path):
    from nattunnel.keys import load_psk, write_psk_file

    p = tmp_path / "a.psk"
    write_psk_file(p, KEY)
    os.chmod(p, 0o640)
    with pytest.raises(KeyFileError, match="mode 0640"):
        load_psk(p)
    os.chmod(p, 0o600)
    (tmp_path / "link").symlink_to(p)
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_psk(tmp_path / "link")


# --- IKEv2 credentials: Ed25519 --------------------------------------------------------------

def test_ed25519_pair_written_and_loadable(tmp_path, umask0):
    from nattunnel.keys import load_ed25519_private, load_ed25519_public, write_ed25519_pair

    k, pub = tmp_path / "a.key", tmp_path / "a.pub"
    key = write_ed25519_pair(k, pub)
    assert mode_of(k) == 0o600 and mode_of(pub) == 0o644
    assert k.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    assert load_ed25519_private(k).public_key() == key.public_key()
    assert load_ed25519_public(pub) == key.public_key()
    # never overwritten without force; both files checked before either is written
    with pytest.raises(KeyFileError, match="already exists"):
        write_ed25519_pair(k, tmp_path / "other.pub")
    assert not (tmp_path / "other.pub").exists()
    with pytest.raises(KeyFileError, match="already exists"):
        write_ed25519_pair(tmp_path / "other.key", pub)
    assert not (tmp_path / "other.key").exists()
    second = write_ed25519_pair(k, pub, force=True)
    assert second.public_key() != key.public_key()
    assert load_ed25519_public(pub) == second.public_key()
    assert mode_of(k) == 0o600 and mode_of(pub) == 0o644


def test_ed25519_private_refusals(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from nattunnel.keys import load_ed25519_private, write_ed25519_pair

    k = tmp_path / "a.key"
    key = write_ed25519_pair(k, tmp_path / "a.pub")
    pem = k.read_text()
    os.chmod(k, 0o644)
    with pytest.raises(KeyFileError, match=r"mode 0644.*chmod 600"):
        load_ed25519_private(k)
    (tmp_path / "link.key").symlink_to(k)
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_ed25519_private(tmp_path / "link.key")

    cases = {
        "hex.key": (KEY_HEX + "\n").encode(),
        "pub.key": (tmp_path / "a.pub").read_bytes(),
        "enc.key": key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.BestAvailableEncryption(b"pw")),
        "rsa.key": rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()),
        "bad.key": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "ssh.key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"
                   b"-----END OPENSSH PRIVATE KEY-----\n",
    }
    expected = {"hex.key": "not a PEM file",
                "pub.key": "is a public key (-----BEGIN PUBLIC KEY-----), not a private",
                "enc.key": "is encrypted", "rsa.key": "holds an RSA-2048 key, not an Ed25519",
                "bad.key": "not a valid PEM private key", "ssh.key": "OpenSSH"}
    body = pem.splitlines()[1]
    for name, content in cases.items():
        p = write_raw(tmp_path / name, content)
        with pytest.raises(KeyFileError) as e:
            load_ed25519_private(p)
        msg = str(e.value)
        assert str(p) in msg and expected[name] in msg, msg
        assert body not in msg and "AAAA" not in msg
        assert e.value.__cause__ is None and e.value.__context__ is None
    assert isinstance(key, ed25519.Ed25519PrivateKey)


def test_ed25519_public_refusals(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from nattunnel.keys import load_ed25519_public, write_ed25519_pair

    write_ed25519_pair(tmp_path / "a.key", tmp_path / "a.pub")
    # public keys may be world-readable and reached through a symlink
    os.chmod(tmp_path / "a.pub", 0o644)
    (tmp_path / "link.pub").symlink_to(tmp_path / "a.pub")
    load_ed25519_public(tmp_path / "link.pub")
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, content, fragment in [
        ("priv.pub", (tmp_path / "a.key").read_bytes(), "holds a private key"),
        ("ec.pub", ec_pub, "ECDSA (secp256r1) public key, not an Ed25519"),
        ("hex.pub", KEY_HEX.encode(), "is not a PEM public key"),
        ("bad.pub", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
         "not a valid PEM public key"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(KeyFileError) as e:
            load_ed25519_public(tmp_path / name)
        assert fragment in str(e.value) and str(tmp_path / name) in str(e.value)
    with pytest.raises(KeyFileError, match="no such public key file"):
        load_ed25519_public(tmp_path / "none.pub")
    with pytest.raises(KeyFileError, match="directory"):
        load_ed25519_public(tmp_path)


@pytest.mark.parametrize(("name", "paths"), [
    ("hosta", ("keys/hosta.key", "keys/hosta.pub")),
    ("hosta.key", ("keys/hosta.key", "keys/hosta.pub")),
    ("/tmp/x/a", ("/tmp/x/a.key", "/tmp/x/a.pub")),
    ("./a", ("./a.key", "./a.pub")),
    ("keys/a.key", ("keys/a.key", "keys/a.pub")),
])
def test_ed25519_pair_paths(name, paths):
    from nattunnel.keys import ed25519_pair_paths

    assert ed25519_pair_paths(name) == paths


@pytest.mark.parametrize("name", ["", "dir/", ".", "..", ".key", "x/.."])
def test_ed25519_pair_paths_refused(name):
    from nattunnel.keys import ed25519_pair_paths

    with pytest.raises(KeyFileError, match="not a key pair name"):
        ed25519_pair_paths(name)


# --- nattunnel keygen --type ed25519 / psk, nattunnel pubkey ---------------------------------

def test_cli_keygen_ed25519_prefix(tmp_path, capsys, umask0):
    import base64

    from cryptography.hazmat.primitives import serialization

    from nattunnel.keys import load_ed25519_private, load_ed25519_public

    prefix = tmp_path / "x" / "a"
    prefix.parent.mkdir()
    assert main(["keygen", "--type", "ed25519", str(prefix)]) == 0
    k, pub = tmp_path / "x" / "a.key", tmp_path / "x" / "a.pub"
    assert mode_of(k) == 0o600 and mode_of(pub) == 0o644
    key = load_ed25519_private(k)
    assert load_ed25519_public(pub) == key.public_key()
    out, err = capsys.readouterr()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    assert err == "" and str(k) in out and str(pub) in out
    assert base64.b64encode(raw).decode() in out
    priv_raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    assert_no_key(out, priv_raw)
    assert base64.b64encode(priv_raw).decode() not in out
    assert "PRIVATE" not in out

    # refuses to overwrite without --force, replaces with it
    assert main(["keygen", "--type", "ed25519", str(prefix)]) == 2
    assert "already exists; use --force" in one_line_error(capsys)
    assert load_ed25519_private(k).public_key() == key.public_key()
    assert main(["keygen", "--type", "ed25519", "--force", str(prefix)]) == 0
    assert load_ed25519_private(k).public_key() != key.public_key()
    assert load_ed25519_public(pub) == load_ed25519_private(k).public_key()


def test_cli_keygen_ed25519_bare_name_goes_to_keys_dir(tmp_path, capsys, monkeypatch):
    from nattunnel.keys import load_ed25519_private

    monkeypatch.chdir(tmp_path)
    assert main(["keygen", "--type", "ed25519", "hosta"]) == 0
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    load_ed25519_private(tmp_path / "keys" / "hosta.key")
    assert (tmp_path / "keys" / "hosta.pub").exists()
    assert "keys/hosta.key" in capsys.readouterr().out


def test_cli_keygen_ed25519_missing_directory_and_suite(tmp_path, capsys):
    assert main(["keygen", "--type", "ed25519", str(tmp_path / "nodir" / "a")]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert main(["keygen", "--type", "ed25519", "--suite", "aes128gcm16",
                 str(tmp_path / "a")]) == 2
    assert "--suite is for --type esp only" in one_line_error(capsys)
    assert main(["keygen", "--type", "rsa", str(tmp_path / "a")]) == 2
    assert "unknown --type 'rsa'" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_cli_keygen_psk(tmp_path, capsys, umask0):
    from nattunnel.keys import load_psk

    p = tmp_path / "a-b.psk"
    assert main(["keygen", "--type", "psk", str(p)]) == 0
    assert mode_of(p) == 0o600
    text = p.read_text()
    assert text.startswith("0x") and len(text) == 2 + 64 + 1
    secret = load_psk(p)
    assert len(secret) == 32
    out, err = capsys.readouterr()
    assert str(p) in out and err == ""
    assert_no_key(out, secret)
    assert main(["keygen", "--type", "psk", str(p)]) == 2
    assert "--force" in one_line_error(capsys)
    assert load_psk(p) == secret
    assert main(["keygen", "--type", "psk", "--force", str(p)]) == 0
    assert load_psk(p) != secret


def test_cli_keygen_type_esp_is_the_default(tmp_path, capsys):
    assert main(["keygen", "--type", "esp", "--suite", "aes128gcm16", str(tmp_path / "a")]) == 0
    assert len(load_key_file(tmp_path / "a")) == SUITES["aes128gcm16"].keymat_len


def test_cli_pubkey(tmp_path, capsys):
    assert main(["keygen", "--type", "ed25519", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["pubkey", str(tmp_path / "a.key")]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out == (tmp_path / "a.pub").read_text()
    assert out.startswith("-----BEGIN PUBLIC KEY-----\n")


def test_cli_pubkey_refusals(tmp_path, capsys):
    assert main(["keygen", "--type", "ed25519", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    os.chmod(tmp_path / "a.key", 0o644)
    assert main(["pubkey", str(tmp_path / "a.key")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("nattunnel pubkey: ") and err.count("\n") == 1
    assert "mode 0644" in err and "chmod 600" in err
    assert main(["pubkey", str(tmp_path / "none.key")]) == 2
    assert "no such key file" in capsys.readouterr().err


def test_cli_pubkey_names_a_public_key_file_as_one(tmp_path, capsys):
    """`nattunnel pubkey` on a 0644 public key file said it "gives access to a private key"
    (issue 11): a public key file is named as one, whatever its mode; a private key file
    that others can read still gets the chmod advice."""
    assert main(["keygen", "--type", "ed25519", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    pub = tmp_path / "a.pub"
    for mode in (0o644, 0o600):
        os.chmod(pub, mode)
        assert main(["pubkey", str(pub)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1
        assert err.startswith(f"nattunnel pubkey: {pub}: is a public key"), err
        assert "not a private key" in err and "NAME.key" in err
        assert "gives group or others access" not in err and "chmod" not in err
    os.chmod(tmp_path / "a.key", 0o644)
    assert main(["pubkey", str(tmp_path / "a.key")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert "mode 0644 gives group or others access to a private key" in err
    assert "chmod 600" in err and "is a public key" not in err


@pytest.mark.parametrize("argv", [
    ["--type", "psk", "keys/a-b.psk"],
    ["--type", "ed25519", "hosta"],
    ["--type", "ed25519", "keys/hosta"],
    ["keys/a-to-b.key"],
])
def test_cli_keygen_creates_keys_dir_for_every_type(tmp_path, capsys, monkeypatch, argv):
    """`keygen --type psk keys/a-b.psk` failed when keys/ did not exist while `--type
    ed25519` created it (issue 11): every type creates keys/ (0700) the same way."""
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        assert main(["keygen", *argv]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    out = capsys.readouterr().out
    assert "created directory keys (mode 0700)" in out
    assert len(list((tmp_path / "keys").iterdir())) == (2 if "ed25519" in argv else 1)
    # it exists now: made once, not again
    assert main(["keygen", "--force", *argv]) == 0
    assert "created directory" not in capsys.readouterr().out


def test_cli_keygen_creates_no_other_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", "--type", "psk", "other/a-b.psk"]) == 2
    assert "does not exist" in one_line_error(capsys)
    assert main(["keygen", "--suite", "nosuch", "keys/a.key"]) == 2
    one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []
