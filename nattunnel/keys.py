"""The key store: private key files, written with mode 0600 and loaded only if private.

ESP keying material for a manual SA (static keys, as with ``ip xfrm state``) is stored as one
line of lowercase hex, ``key || 4-octet salt`` as RFC 4106 (AES-GCM) and RFC 7634
(ChaCha20-Poly1305) define keying material, followed by a newline. See keys/README.md.

Rules kept here:

- A key file is created with mode 0600 from the start (never created wider and narrowed
  afterwards), fsync'ed, and never overwritten unless asked; an overwrite goes through a 0600
  temporary file in the same directory and ``os.replace``, so a reader sees the old file or the
  new one, never a partial one.
- A key file is loaded only if it is a regular file (the last path component is not followed
  if it is a symbolic link) and neither group nor others have any permission bit on it.
- No message, exception or repr produced here contains key bytes, not even one octet of a
  malformed file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import stat
import tempfile
from typing import Final

from .suite import Suite

StrPath = str | os.PathLike[str]

#: A key file larger than this is refused before it is read (the largest ESP keying material
#: is 36 octets, 73 characters with the newline).
MAX_KEY_FILE_LEN: Final = 4096
#: The permission bits a key file is created with, and the most it may have when loaded.
KEY_FILE_MODE: Final = 0o600

_HEX: Final = re.compile(rb"[0-9a-fA-F]*")


class KeyFileError(ValueError):
    """A key file cannot be written or is refused on loading. The message names the file and
    the reason, never the key."""


def generate_keymat(suite: Suite) -> bytes:
    """Fresh random ESP keying material (key || salt) for ``suite``."""
    return os.urandom(suite.keymat_len)


def encode_keymat(data: bytes) -> bytes:
    """The key file format: one line of lowercase hex and a newline."""
    return data.hex().encode("ascii") + b"\n"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(directory: str) -> None:
    # Makes the new directory entry durable. Best effort: not every filesystem allows it.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fill(fd: int, content: bytes) -> None:
    # The umask may have cleared owner bits at creation (it can only remove bits, so the file
    # never had more than 0600); set exactly 0600 before any key byte is written.
    os.fchmod(fd, KEY_FILE_MODE)
    _write_all(fd, content)
    os.fsync(fd)


def write_key_file(path: StrPath, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to a new key file ``path`` (mode 0600, one line of hex and a newline).

    Refuses to replace an existing file (or symlink) unless ``force``; then the new content is
    written to a 0600 temporary file in the same directory and moved over ``path`` atomically.
    Raises KeyFileError, naming the file and the reason.
    """
    name = os.fspath(path)
    if not data:
        raise KeyFileError(f"{name}: refusing to write an empty key")
    content = encode_keymat(data)
    directory = os.path.dirname(name) or "."
    if not force:
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                KEY_FILE_MODE,
            )
        except FileExistsError:
            raise KeyFileError(f"{name}: already exists; use --force to replace it") from None
        except FileNotFoundError:
            raise KeyFileError(f"{name}: directory {directory} does not exist") from None
        except OSError as e:
            raise KeyFileError(f"{name}: cannot create: {e.strerror}") from None
        try:
            _fill(fd, content)
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise KeyFileError(f"{name}: cannot write: {e.strerror}") from None
        os.close(fd)
        _fsync_dir(directory)
        return

    # --force: mkstemp creates the temporary file with O_EXCL and mode 0600.
    base = os.path.basename(name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    except FileNotFoundError:
        raise KeyFileError(f"{name}: directory {directory} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"{name}: cannot create a temporary file in {directory}: "
                           f"{e.strerror}") from None
    try:
        try:
            _fill(fd, content)
        finally:
            os.close(fd)
        os.replace(tmp, name)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyFileError(f"{name}: cannot replace: {e.strerror}") from None
    _fsync_dir(directory)


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def load_key_file(path: StrPath, expected_len: int | None = None) -> bytes:
    """Read a key file written by write_key_file and return its bytes.

    Refused, with KeyFileError naming the file and the fix: a symbolic link (not followed), a
    file that is not regular, a file whose mode gives group or others any permission, content
    that is not one line of hex, and (if ``expected_len`` is given) a key of another length.
    """
    name = os.fspath(path)
    try:
        # O_NOFOLLOW: a symlink in the last component fails with ELOOP instead of being followed.
        # O_NONBLOCK: opening a FIFO must not hang; it is refused after fstat.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"{name}: no such key file") from None
    except OSError as e:
        if os.path.islink(name):
            raise KeyFileError(f"{name}: is a symbolic link; key files must be regular files "
                               f"(name the file itself, not a link to it)") from None
        raise KeyFileError(f"{name}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{name}: is {_describe(st.st_mode)}; "
                               f"key files must be regular files")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{name}: mode {mode:04o} gives group or others access to a private key "
                f"(allowed: 0600 or stricter); fix: chmod 600 {shlex.quote(name)}"
            )
        if st.st_size > MAX_KEY_FILE_LEN:
            raise KeyFileError(f"{name}: {st.st_size} octets is too large for a key file "
                               f"(at most {MAX_KEY_FILE_LEN})")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_KEY_FILE_LEN:
            chunk = os.read(fd, MAX_KEY_FILE_LEN + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise KeyFileError(f"{name}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_KEY_FILE_LEN:
        raise KeyFileError(f"{name}: too large for a key file (at most {MAX_KEY_FILE_LEN} octets)")
    return _decode(name, b"".join(chunks), expected_len)


def _decode(name: str, raw: bytes, expected_len: int | None) -> bytes:
    # Never echo the content or quote an offending character: it is (part of) a key.
    want = ""
    if expected_len is not None:
        want = f"; expected {expected_len} octets ({2 * expected_len} hex digits)"
    text = raw.strip()
    if not text:
        raise KeyFileError(f"{name}: is empty{want}")
    if not _HEX.fullmatch(text):
        lines = len(text.splitlines())
        found = f"{lines} lines" if lines > 1 else "a character that is not a hex digit"
        raise KeyFileError(f"{name}: not one line of hex digits: found {found}{want}")
    if len(text) % 2:
        raise KeyFileError(f"{name}: found an odd number of hex digits ({len(text)}){want}")
    key = bytes.fromhex(text.decode("ascii"))
    if expected_len is not None and len(key) != expected_len:
        raise KeyFileError(f"{name}: wrong key length: expected {expected_len} octets "
                           f"({2 * expected_len} hex digits), found {len(key)} octets "
                           f"({len(text)} hex digits)")
    return key


def load_keymat(path: StrPath, suite: Suite) -> bytes:
    """Load ESP keying material (key || salt) for ``suite`` from a key file."""
    return load_key_file(path, suite.keymat_len)
