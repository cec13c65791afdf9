"""The key store: private key files, written with mode 0600 and loaded only if private.

Three kinds of private file, see keys/README.md:

- ESP keying material for a manual SA (static keys, as with ``ip xfrm state``): one line of
  lowercase hex, ``key || 4-octet salt`` as RFC 4106 (AES-GCM) and RFC 7634
  (ChaCha20-Poly1305) define keying material, followed by a newline (``write_key_file``,
  ``load_keymat``);
- an IKEv2 pre-shared key: one line of text (its UTF-8 octets are the secret, as strongSwan's
  ``secret = "..."``) or ``0x`` and hex (``write_psk_file``, ``load_psk``);
- an Ed25519 private key, PKCS#8 PEM, with its public key in a ``.pub`` file next to it
  (SubjectPublicKeyInfo PEM; public, any mode) (``write_ed25519_pair``,
  ``load_ed25519_private``, ``load_ed25519_public``);
- the private key of a certificate (docs/certificates.md): ECDSA, RSA or Ed25519, PEM
  (``load_private_key``); the certificates themselves are public (``ike/certs.py``).

Rules kept here:

- A key file is created with mode 0600 from the start (never created wider and narrowed
  afterwards), fsync'ed, and never overwritten unless asked; an overwrite goes through a 0600
  temporary file in the same directory and ``os.replace``, so a reader sees the old file or the
  new one, never a partial one.
- A key file is loaded only if it is a regular file (the last path component is not followed
  if it is a symbolic link) and neither group nor others have any permission bit on it.
  A public key file (``.pub``) must be a regular file too (a symbolic link to one is fine);
  its mode is not checked.
- No message, exception or repr produced here contains key bytes, not even one octet of a
  malformed file.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import stat
import tempfile
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from .esp.suite import Suite

StrPath = str | os.PathLike[str]

#: A key file larger than this is refused before it is read (the largest ESP keying material
#: is 36 octets, 73 characters with the newline).
MAX_KEY_FILE_LEN: Final = 4096
#: The permission bits a key file is created with, and the most it may have when loaded.
KEY_FILE_MODE: Final = 0o600
#: The permission bits of a public key file (``.pub``) written by ``write_ed25519_pair``.
PUBLIC_FILE_MODE: Final = 0o644
#: The length of a pre-shared key made by ``generate_psk`` (``nattunnel keygen --type psk``).
PSK_LEN: Final = 32
#: Where ``nattunnel keygen --type ed25519 NAME`` puts a pair when NAME is a bare name.
KEY_DIR: Final = "keys"

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


def _fill(fd: int, content: bytes, mode: int = KEY_FILE_MODE) -> None:
    # The umask may have cleared owner bits at creation (it can only remove bits, so the file
    # never had more than ``mode``); set exactly ``mode`` before any key byte is written.
    os.fchmod(fd, mode)
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
    _write_file(name, encode_keymat(data), force=force)


def _write_file(name: str, content: bytes, *, force: bool, mode: int = KEY_FILE_MODE) -> None:
    """Create ``name`` with ``content`` and exactly ``mode`` (see write_key_file)."""
    directory = os.path.dirname(name) or "."
    if not force:
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode & KEY_FILE_MODE,
            )
        except FileExistsError:
            raise KeyFileError(f"{name}: already exists; use --force to replace it") from None
        except FileNotFoundError:
            raise KeyFileError(f"{name}: directory {directory} does not exist") from None
        except OSError as e:
            raise KeyFileError(f"{name}: cannot create: {e.strerror}") from None
        try:
            _fill(fd, content, mode)
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
            _fill(fd, content, mode)
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
    return _decode(name, _read_file(name), expected_len)


def _read_file(name: str, *, private: bool = True) -> bytes:
    """The raw content of a key file, after the checks of load_key_file (for a public key
    file, ``private=False``: a symlink is followed and the mode is not checked)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if private:
        # O_NOFOLLOW: a symlink in the last component fails with ELOOP instead of being followed.
        flags |= os.O_NOFOLLOW
    # O_NONBLOCK: opening a FIFO must not hang; it is refused after fstat.
    what = "key file" if private else "public key file"
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise KeyFileError(f"{name}: no such {what}") from None
    except OSError as e:
        if private and os.path.islink(name):
            raise KeyFileError(f"{name}: is a symbolic link; key files must be regular files "
                               f"(name the file itself, not a link to it)") from None
        raise KeyFileError(f"{name}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{name}: is {_describe(st.st_mode)}; "
                               f"key files must be regular files")
        mode = stat.S_IMODE(st.st_mode)
        if st.st_size > MAX_KEY_FILE_LEN:
            raise KeyFileError(f"{name}: {st.st_size} octets is too large for a {what} "
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
        raise KeyFileError(f"{name}: too large for a {what} (at most {MAX_KEY_FILE_LEN} octets)")
    raw = b"".join(chunks)
    if private and mode & 0o077:
        # read first, so that a public key file (0644 is right for one) is named as such
        # instead of being told it gives access to a private key
        if _is_public_pem(raw):
            raise KeyFileError(f"{name}: {PUBLIC_NOT_PRIVATE}")
        raise KeyFileError(
            f"{name}: mode {mode:04o} gives group or others access to a private key "
            f"(allowed: 0600 or stricter); fix: chmod 600 {shlex.quote(name)}"
        )
    return raw


#: the message for a public key file where a private key is expected
PUBLIC_NOT_PRIVATE: Final = ("is a public key (-----BEGIN PUBLIC KEY-----), not a private "
                             "key: name the private key file (NAME.key of `nattunnel keygen "
                             "--type ed25519 NAME`; NAME.pub is its public key)")


def _is_public_pem(raw: bytes) -> bool:
    return b"-----BEGIN PUBLIC KEY-----" in raw and b"PRIVATE KEY-----" not in raw


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


# --- IKEv2 pre-shared keys -----------------------------------------------------------------

def generate_psk() -> bytes:
    """A fresh random pre-shared key of PSK_LEN octets."""
    return os.urandom(PSK_LEN)


def encode_psk(secret: bytes) -> bytes:
    """The PSK file format for arbitrary octets: ``0x``, lowercase hex and a newline."""
    return b"0x" + secret.hex().encode("ascii") + b"\n"


def write_psk_file(path: StrPath, secret: bytes, *, force: bool = False) -> None:
    """Write ``secret`` to a new PSK file ``path`` as ``0x<hex>`` (mode 0600; the overwrite
    rules of write_key_file)."""
    name = os.fspath(path)
    if not secret:
        raise KeyFileError(f"{name}: refusing to write an empty pre-shared key")
    _write_file(name, encode_psk(secret), force=force)


def load_psk(path: StrPath) -> bytes:
    """Load an IKEv2 pre-shared key: the octets strongSwan's ``secret = "..."`` holds.

    The file (mode 0600 or stricter, a regular file, as for every key file) holds one line,
    with or without a final newline: either ``0x`` followed by an even number of hex digits
    (any octets), or text whose UTF-8 octets are the secret. Text must not start or end with
    whitespace (write such a secret in hex) nor hold control characters. Refusals never echo
    any part of the secret.
    """
    name = os.fspath(path)
    body = _read_file(name)
    if body.endswith(b"\n"):
        body = body[:-1].removesuffix(b"\r")
    problem = None
    if not body:
        problem = "is empty; expected the pre-shared key on one line (text, or 0x and hex)"
    elif b"\n" in body or b"\r" in body:
        problem = (f"holds {len(body.splitlines())} lines; a pre-shared key file holds one "
                   f"line (text, or 0x and hex)")
    elif body.startswith(b"0x"):
        digits = body[2:]
        if not digits:
            problem = "holds 0x without hex digits"
        elif not _HEX.fullmatch(digits):
            problem = ("starts with 0x but holds a character that is not a hex digit (a text "
                       "secret must not start with 0x: write it in hex)")
        elif len(digits) % 2:
            problem = f"starts with 0x but has an odd number of hex digits ({len(digits)})"
        else:
            return bytes.fromhex(digits.decode("ascii"))
    else:
        text = _utf8(body)
        if text is None:
            problem = "is not UTF-8 text; write a binary secret as 0x and hex"
        elif text != text.strip():
            problem = ("the secret starts or ends with whitespace; remove it, or if it is "
                       "part of the secret, write the secret as 0x and hex")
        elif any(not c.isprintable() for c in text):
            problem = ("holds a control character; write such a secret as 0x and hex")
        else:
            return body
    raise KeyFileError(f"{name}: {problem}")


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- Ed25519 key pairs ---------------------------------------------------------------------

def ed25519_pair_paths(name: str) -> tuple[str, str]:
    """(private, public) file names for ``nattunnel keygen --type ed25519 NAME``: a bare NAME
    is ``keys/NAME.key`` and ``keys/NAME.pub``; a NAME with a '/' is a path prefix
    (``/tmp/x/a`` -> ``/tmp/x/a.key``, ``/tmp/x/a.pub``). A final ``.key`` is dropped, so
    ``keys/a.key`` names the same pair as ``keys/a``."""
    if not name or name.endswith("/") or os.path.basename(name) in (".", "..", ".key"):
        raise KeyFileError(f"{name!r}: not a key pair name; expected NAME or a path prefix "
                           f"such as /etc/nattunnel/keys/hosta")
    prefix = name.removesuffix(".key")
    if "/" not in prefix:
        prefix = os.path.join(KEY_DIR, prefix)
    return prefix + ".key", prefix + ".pub"


def private_key_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (``-----BEGIN PRIVATE KEY-----``)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: ed25519.Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``), as ``openssl pkey -pubout``
    and strongSwan's ``pki --pub`` write it."""
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_b64(key: ed25519.Ed25519PublicKey) -> str:
    """The 32 raw octets of the public key, base64."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def write_ed25519_pair(key_path: StrPath, pub_path: StrPath, *, force: bool = False,
                       key: ed25519.Ed25519PrivateKey | None = None
                       ) -> ed25519.Ed25519PrivateKey:
    """Write a fresh (or the given) Ed25519 private key to ``key_path`` (PKCS#8 PEM, 0600) and
    its public key to ``pub_path`` (SubjectPublicKeyInfo PEM, 0644). Without ``force``
    neither file may exist (nothing is written then); with it both are replaced atomically,
    one after the other. Returns the private key."""
    kname, pname = os.fspath(key_path), os.fspath(pub_path)
    if kname == pname:
        raise KeyFileError(f"{kname}: the private and the public key need two files")
    if not force:
        for n in (kname, pname):
            if os.path.lexists(n):
                raise KeyFileError(f"{n}: already exists; use --force to replace it")
    if key is None:
        key = ed25519.Ed25519PrivateKey.generate()
    _write_file(kname, private_key_pem(key), force=force)
    try:
        _write_file(pname, public_key_pem(key.public_key()), force=force,
                    mode=PUBLIC_FILE_MODE)
    except KeyFileError:
        if not force:  # created by us a moment ago: do not leave half a pair
            with contextlib.suppress(OSError):
                os.unlink(kname)
        raise
    return key


def _key_kind(key: object) -> str:
    """A key object's algorithm, for messages."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"an RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"an ECDSA ({key.curve.name})"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "an Ed448"
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "an X25519"
    if isinstance(key, x448.X448PrivateKey | x448.X448PublicKey):
        return "an X448"
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return "a DSA"
    return "a non-Ed25519"


_GENERATE_HINT: Final = ("make one with `nattunnel keygen --type ed25519 NAME` or "
                         "`openssl genpkey -algorithm ed25519 -out FILE`")


def _load_private(name: str, hint: str) -> object:
    """The private key object in a key file (the rules of load_key_file), or KeyFileError
    naming what the file holds instead."""
    raw = _read_file(name)
    problem = None
    key: object = None
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in raw:
        problem = (f"is an OpenSSH private key; nattunnel reads PKCS#8 PEM "
                   f"(-----BEGIN PRIVATE KEY-----): {hint}")
    elif _is_public_pem(raw):
        problem = PUBLIC_NOT_PRIVATE
    elif b"-----BEGIN" not in raw:
        problem = f"is not a PEM file (expected -----BEGIN PRIVATE KEY-----); {hint}"
    elif b"PRIVATE KEY-----" not in raw:
        problem = ("holds no private key (a public key or a certificate?); expected "
                   "-----BEGIN PRIVATE KEY-----")
    else:
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except TypeError:
            problem = ("is encrypted (password protected); nattunnel needs an unencrypted "
                       "key file (mode 0600 protects it): openssl pkey -in FILE -out NEWFILE")
        except (ValueError, UnsupportedAlgorithm):
            problem = f"is not a valid PEM private key; {hint}"
    if problem is not None:
        raise KeyFileError(f"{name}: {problem}")
    return key


def load_ed25519_private(path: StrPath) -> ed25519.Ed25519PrivateKey:
    """Load an Ed25519 private key: PKCS#8 PEM, unencrypted, in a key file (the rules of
    load_key_file: regular file, not a symlink, mode 0600 or stricter). KeyFileError names
    the file and the problem (encrypted, a public key, another algorithm, not PEM) and never
    holds key material."""
    name = os.fspath(path)
    key = _load_private(name, _GENERATE_HINT)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{name}: holds {_key_kind(key)} key, not an Ed25519 key; "
                           f"{_GENERATE_HINT}")
    return key


#: the smallest RSA key a certificate's private key may have
RSA_MIN_BITS: Final = 2048
_CERT_KEY_HINT: Final = ("make one with `pki --gen --type ecdsa --size 256` or `openssl "
                         "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` "
                         "(docs/certificates.md)")
SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def load_private_key(path: StrPath) -> SigningKey:
    """Load the private key of a certificate: ECDSA (P-256, P-384, P-521), RSA (2048 bits or
    more) or Ed25519, PEM (PKCS#8 ``-----BEGIN PRIVATE KEY-----``, or the PKCS#1 and SEC 1
    forms ``pki`` and ``openssl`` also write), unencrypted, under the rules of
    load_key_file (mode 0600 or stricter)."""
    name = os.fspath(path)
    key = _load_private(name, _CERT_KEY_HINT)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
            raise KeyFileError(f"{name}: holds an ECDSA key on {key.curve.name}; IKE "
                               f"signatures (RFC 7427) here use P-256, P-384 or P-521")
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < RSA_MIN_BITS:
            raise KeyFileError(f"{name}: holds an RSA-{key.key_size} key; at least "
                               f"{RSA_MIN_BITS} bits are needed")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise KeyFileError(f"{name}: holds {_key_kind(key)} key, not an ECDSA, RSA or Ed25519 "
                       f"key; {_CERT_KEY_HINT}")


def load_ed25519_public(path: StrPath) -> ed25519.Ed25519PublicKey:
    """Load an Ed25519 public key: SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``,
    a ``.pub`` file from ``nattunnel keygen --type ed25519``). The file must be regular (a
    symlink to one is fine) and its mode is not checked. A private key is refused: it must
    never leave its host."""
    name = os.fspath(path)
    raw = _read_file(name, private=False)
    problem = None
    key: object = None
    if b"PRIVATE KEY-----" in raw:
        problem = ("holds a private key; name the peer's public key (its .pub file): a "
                   "private key must never leave its host")
    elif b"-----BEGIN PUBLIC KEY-----" not in raw:
        problem = ("is not a PEM public key (expected -----BEGIN PUBLIC KEY-----, the .pub "
                   "file of `nattunnel keygen --type ed25519` or `openssl pkey -pubout`)")
    else:
        try:
            key = serialization.load_pem_public_key(raw)
        except (ValueError, UnsupportedAlgorithm):
            problem = "is not a valid PEM public key"
    if problem is None and not isinstance(key, ed25519.Ed25519PublicKey):
        problem = f"holds {_key_kind(key)} public key, not an Ed25519 key"
    if problem is not None:
        raise KeyFileError(f"{name}: {problem}")
    assert isinstance(key, ed25519.Ed25519PublicKey)
    return key
