"""What the harnesses share: the command line, the input reader, known-bug filters, snapshots.

Fuzz-only code: nothing in ``nattunnel/`` imports it.

- ``main(target, test_one_input, seeds)``: ``python3 fuzz/fuzz_X.py [libFuzzer flags]
  [corpus dirs]``. Without a corpus directory, the seeds are written to a fresh temporary
  directory, which becomes the (writable) corpus of the run.
- ``Reader``: the structure-aware harnesses read their choices from the input with it. It
  never fails: past the end every read returns zeros, so any input is a valid program.
- ``known(signature)``: whether a crash with this signature is one of the bugs listed in
  ``KNOWN`` (or named in ``NATTUNNEL_FUZZ_SKIP``) and the run was asked to step over them
  (``NATTUNNEL_FUZZ_SKIP_KNOWN=1``), so that a long run can go on finding other things while
  those are being fixed. By default nothing is skipped: every crash stops the run.
- ``snapshot(obj)``: a deep copy of a sans-I/O core (an IkeSa, an IkeManager with its Tunnel)
  that shares the immutable crypto objects (keys, AEAD contexts) instead of copying them, so a
  harness can start every input from a state reached once by a real handshake.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

T = TypeVar("T")

#: the bugs known when the harnesses were written (being fixed by their owners), by signature
KNOWN = {
    # ike_sa: an unencrypted IKE_SA_INIT-typed request on an SA with keys is processed
    "ike_sa.unauthenticated_init_request",
    # ike_sa: a bad KE payload in CREATE_CHILD_SA raises ValueError out of IkeSa.receive
    "ike_sa.create_child_bad_ke",
    # config: UnicodeEncodeError, bytes.fromhex ValueError, embedded-null ValueError
    "config.unicode_encode",
    "config.fromhex",
    "config.embedded_null",
}


def _skip_set() -> set[str]:
    out = set()
    if os.environ.get("NATTUNNEL_FUZZ_SKIP_KNOWN") == "1":
        out |= KNOWN
    out |= {s.strip() for s in os.environ.get("NATTUNNEL_FUZZ_SKIP", "").split(",") if s.strip()}
    return out


SKIP = _skip_set()


def known(signature: str) -> bool:
    """True if crashes with ``signature`` are to be stepped over in this run."""
    return signature in SKIP


class FuzzFailure(AssertionError):
    """An invariant the harness checks was broken. ``signature`` names the kind."""

    def __init__(self, signature: str, detail: str) -> None:
        super().__init__(f"[{signature}] {detail}")
        self.signature = signature


def fail(signature: str, detail: str) -> None:
    """Report a broken invariant unless its signature is being skipped."""
    if not known(signature):
        raise FuzzFailure(signature, detail)


class Skip(Exception):
    """Raised inside a harness to abandon the current input (a skipped known bug)."""


def check(cond: bool, signature: str, detail: str | Callable[[], str] = "") -> None:
    if not cond:
        msg = detail() if callable(detail) else detail
        fail(signature, msg)
        raise Skip(signature)


class Reader:
    """Choices read from the front of the input; zeros once it is used up."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            return 0
        v = self.data[self.pos]
        self.pos += 1
        return v

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "big")

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def below(self, n: int) -> int:
        """0..n-1 (one octet if n <= 256, else two)."""
        if n <= 1:
            return 0
        return (self.u8() if n <= 256 else self.u16()) % n

    def bool(self) -> bool:
        return bool(self.u8() & 1)

    def pick(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]

    def take(self, n: int) -> bytes:
        n = max(0, n)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def blob(self, maxlen: int = 255) -> bytes:
        """A length octet (mod maxlen+1), then that many octets."""
        return self.take(self.u8() % (maxlen + 1))

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def mutate(r: Reader, data: bytes, max_ops: int = 3) -> bytes:
    """A few byte-level edits of ``data`` chosen by the input: flip, set, cut, insert."""
    buf = bytearray(data)
    for _ in range(r.u8() % (max_ops + 1)):
        kind = r.u8() % 6
        at = r.u16() % (len(buf) + 1)
        if kind == 0 and at < len(buf):
            buf[at] ^= 1 << (r.u8() & 7)
        elif kind == 1 and at < len(buf):
            buf[at] = r.u8()
        elif kind == 2:
            del buf[at:]
        elif kind == 3:
            buf[at:at] = r.blob(32)
        elif kind == 4 and at < len(buf):
            del buf[at : at + 1 + r.u8() % 16]
        elif kind == 5 and at + 4 <= len(buf):
            buf[at : at + 4] = r.take(4).ljust(4, b"\0")
    return bytes(buf)


# --- snapshots ---------------------------------------------------------------------------------
_snapshot_ready = False


def _atomic(x: Any, memo: dict[int, Any]) -> Any:
    return x


def _slots_copier(reset: dict[str, Callable[[Any, Any], Any]]) -> Callable[[Any, dict], Any]:
    """A deepcopy for a __slots__ class: slots named in ``reset`` get ``reset[name](new,
    old)`` (views into buffers, caches); the rest are deep-copied."""

    def copier(x: Any, memo: dict[int, Any]) -> Any:
        cls = type(x)
        new = cls.__new__(cls)
        memo[id(x)] = new
        names: list[str] = []
        for klass in cls.__mro__:
            names += [s for s in getattr(klass, "__slots__", ()) if s not in names]
        deferred = []
        for name in names:
            if not hasattr(x, name):
                continue
            if name in reset:
                deferred.append(name)
            else:
                setattr(new, name, copy.deepcopy(getattr(x, name), memo))
        for name in deferred:
            setattr(new, name, reset[name](new, x))
        return new

    return copier


def _setup_snapshot() -> None:
    """Teach copy.deepcopy (fuzz-only, this process) which objects to share: the crypto
    library's keys and AEAD contexts are immutable once made; memoryviews into an SA's
    scratch buffers are caches and are rebuilt."""
    global _snapshot_ready
    if _snapshot_ready:
        return
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    from nattunnel.esp.sa import InboundSA, OutboundSA

    atomic: list[type] = [AESGCM, ChaCha20Poly1305]
    # the key classes are abstract; the concrete (Rust) classes are what instances have
    for make in (
        lambda: x25519.X25519PrivateKey.generate(),
        lambda: x25519.X25519PrivateKey.generate().public_key(),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
        lambda: ed25519.Ed25519PrivateKey.generate(),
        lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
    ):
        atomic.append(type(make()))
    # immutable values of the project (frozen dataclasses, networks): shared, not copied
    import ipaddress

    from nattunnel.esp.suite import Suite
    from nattunnel.ike.config import Identity
    from nattunnel.ike.proposals import EspProposal, IkeProposal

    atomic += [Suite, IkeProposal, EspProposal, Identity, ipaddress.IPv4Network,
               ipaddress.IPv6Network, ipaddress.IPv4Address, ipaddress.IPv6Address]
    try:
        from nattunnel.ike.ratelimit import IkeLimits

        atomic.append(IkeLimits)
    except ImportError:
        pass
    for t in atomic:
        copy._deepcopy_dispatch[t] = _atomic  # type: ignore[attr-defined]

    def salt_view(new: Any, old: Any) -> memoryview:
        return memoryview(new._nonce)[len(new._salt) :]

    copy._deepcopy_dispatch[InboundSA] = _slots_copier({  # type: ignore[attr-defined]
        "_buf": lambda n, o: None, "_views": lambda n, o: {},
        "_run_buf": lambda n, o: None, "_run_slots": lambda n, o: {},
        "_nonce_iv": salt_view,
        "_decrypt_into": lambda n, o: n._aead.decrypt_into,
    })
    copy._deepcopy_dispatch[OutboundSA] = _slots_copier({  # type: ignore[attr-defined]
        "_buf": lambda n, o: None, "_views": lambda n, o: {},
        "_encrypt_into": lambda n, o: n._aead.encrypt_into,
    })
    _snapshot_ready = True


def snapshot(obj: T, share: Iterable[Any] = ()) -> T:
    """A deep copy of ``obj``; the objects in ``share`` (e.g. configs) are not copied."""
    _setup_snapshot()
    memo: dict[int, Any] = {id(s): s for s in share}
    return copy.deepcopy(obj, memo)


#: libFuzzer flags for the structure-aware harnesses: their inputs are programs, which want
#: room from the start (libFuzzer otherwise grows the length limit slowly from the seeds')
STRUCTURED_FLAGS = ("-max_len=2048", "-len_control=0")


# --- the command line ---------------------------------------------------------------------------
def main(target: str, test_one_input: Callable[[bytes], None],
         seeds: Callable[[], Iterable[bytes]], argv: list[str] | None = None,
         defaults: Sequence[str] = ()) -> None:
    """Run libFuzzer on ``test_one_input``. Corpus directories are the arguments that do not
    start with '-'; with none, the seeds go to a temporary directory used as the corpus.
    ``defaults`` are libFuzzer flags used unless the command line sets the same flag."""
    import atheris

    args = list(sys.argv if argv is None else argv)
    given = {a.split("=", 1)[0] for a in args[1:] if a.startswith("-")}
    args[1:1] = [d for d in defaults if d.split("=", 1)[0] not in given]
    if not [a for a in args[1:] if not a.startswith("-")]:
        # one scratch corpus per target, emptied at each start (no clutter in /tmp)
        corpus = Path(tempfile.gettempdir()) / f"nattunnel-fuzz-{target}"
        shutil.rmtree(corpus, ignore_errors=True)
        write_seeds(corpus, seeds())
        args.append(str(corpus))
    else:
        for d in (a for a in args[1:] if not a.startswith("-")):
            p = Path(d)
            if p.is_dir() and not any(p.iterdir()):
                write_seeds(p, seeds())  # an empty corpus dir starts from the seeds
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


def write_seeds(directory: Path, seeds: Iterable[bytes]) -> int:
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in seeds:
        (directory / f"seed-{hashlib.sha1(s).hexdigest()[:16]}").write_bytes(s)
        n += 1
    return n


def run_inputs(test_one_input: Callable[[bytes], None], inputs: Iterable[bytes]) -> None:
    """Run inputs without libFuzzer (tests, reproducing a crash file)."""
    for data in inputs:
        test_one_input(data)
