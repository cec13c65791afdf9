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

from nattunnel.cli import main
from nattunnel.keys import (
    KeyFileError,
    generate_keymat,
    load_key_file,
    load_keymat,
    write_key_file,
)
from nattunnel.suite import SUITES, suite_by_name

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
