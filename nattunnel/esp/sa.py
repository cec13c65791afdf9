"""ESP security associations, RFC 4303 tunnel mode, sans-I/O.

An SA is one direction of one tunnel. ``OutboundSA`` turns an inner IP packet into an ESP
packet (the payload of an RFC 3948 UDP datagram); ``InboundSA`` turns an ESP packet back into
the inner packet or a typed drop reason. Neither touches a socket or a clock.

Packet layout (docs/wire-format.md)::

    0       4       8              16                      16+C      16+C+16
    | SPI   | Seq   | IV (8)       | ciphertext (C octets) | ICV (16) |
                                    payload | padding 1,2,3.. | pad len | next header

- The explicit IV is the 64-bit sequence number, so it never repeats under one key
  (RFC 4106 section 3.1 asks only that it be unique; RFC 7634 section 2 the same).
- AAD is SPI || Seq, or SPI || Seq-high || Seq-low with extended sequence numbers
  (RFC 4106 section 5, RFC 7634 section 2.1). The high half never goes on the wire.

The per-packet methods (``encapsulate_into``, ``decapsulate_into``) write into caller buffers
with ``encrypt_into``/``decrypt_into``, use precompiled ``struct.Struct`` objects and table
lookups, and allocate only the small objects Python cannot avoid.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag

from ..constants import (
    ESP_ALIGN,
    ESP_HEADER_LEN,
    ESP_ICV_LEN,
    ESP_IV_LEN,
    ESP_MIN_PACKET,
    ESP_PLAINTEXT_OFFSET,
    ESP_TRAILER_LEN,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    NH_IPV4,
    NH_IPV6,
    NH_NO_NEXT_HEADER,
    REPLAY_WINDOW_DEFAULT,
    SEQ_MAX_32,
    SEQ_MAX_64,
    SPI_RESERVED_MAX,
)
from .drop import DropCounters, DropReason
from .replay import ReplayWindow
from .suite import Suite

#: SPI, sequence number (low 32 bits), explicit IV: the first 16 octets of every ESP packet.
_HEADER: Final = struct.Struct("!IIQ")
#: Salt || IV: the 12-octet AEAD nonce.
_NONCE: Final = struct.Struct("!4sQ")
#: SPI || Seq-high || Seq-low: the AAD with extended sequence numbers.
_AAD_ESN: Final = struct.Struct("!III")
#: IPv4 version/IHL and total length; IPv6 version/class and payload length.
_U32: Final = struct.Struct("!I")
_V4_LEN: Final = struct.Struct("!BxH")
_V6_LEN: Final = struct.Struct("!B3xH")

#: header + IV before the ciphertext
_CT_OFF: Final = ESP_PLAINTEXT_OFFSET
#: smallest valid packet: header, IV, 4 octets of ciphertext (2 trailer + 2 pad), ICV
MIN_ESP_PACKET: Final = ESP_MIN_PACKET
_M32: Final = 0xFFFFFFFF

#: RFC 4303 section 2.4: padding octets are 1, 2, 3, ...
PADDING: Final = tuple(bytes(range(1, n + 1)) for n in range(256))


#: For the word holding the last 2 padding octets, pad length and next header: which bits
#: to compare, and what they must be, by pad length (RFC 4303 section 2.4).
_PAD_MASK: Final = tuple(0 if p == 0 else 0x00FF0000 if p == 1 else 0xFFFF0000 for p in range(256))
_PAD_WANT: Final = tuple(
    0 if p == 0 else 0x00010000 if p == 1 else ((p - 1) << 24) | (p << 16) for p in range(256)
)


def _trailers(nh: int) -> tuple[bytes, ...]:
    """Padding || pad length || next header, by pad length 0..3."""
    return tuple(PADDING[p] + bytes((p, nh)) for p in range(ESP_ALIGN))


_TRAILERS_BY_NH: Final = {nh: _trailers(nh) for nh in (NH_IPV4, NH_IPV6, NH_NO_NEXT_HEADER)}
#: Indexed by the inner packet's IP version nibble. Versions other than 4 and 6 get None.
_TRAILERS_BY_VERSION: Final = tuple(
    _TRAILERS_BY_NH[NH_IPV4] if v == 4 else _TRAILERS_BY_NH[NH_IPV6] if v == 6 else None
    for v in range(16)
)

_TRUNCATED: Final = -DropReason.TRUNCATED
_AUTH_FAILED: Final = -DropReason.AUTH_FAILED
_BAD_PADDING: Final = -DropReason.BAD_PADDING
_BAD_NEXT_HEADER: Final = -DropReason.BAD_NEXT_HEADER
_DUMMY: Final = -DropReason.DUMMY
_BAD_INNER: Final = -DropReason.BAD_INNER_PACKET


def check_spi(spi: int) -> int:
    """Validate an SPI for use in an SA: 256..2**32-1 (RFC 4303 section 2.1)."""
    if not SPI_RESERVED_MAX < spi <= _M32:
        raise ValueError(f"SPI must be in 256..4294967295 (0-255 are reserved), got {spi}")
    return spi


class SequenceNumberExhausted(Exception):
    """The outbound SA has used its last sequence number; it must be replaced (rekeyed)."""


#: Views cached per SA and buffer: at most this many (offset, length) shapes.
_VIEW_CACHE_MAX: Final = 512
#: Segment sizes whose slots ``decapsulate_run`` keeps per buffer.
_SLOT_SIZES_MAX: Final = 8
#: one GRO segment slot: offset, ciphertext+ICV, plaintext, AAD, IV views, and the offsets
#: where the ciphertext starts and the ICV starts
_Slot = tuple[int, memoryview, memoryview, memoryview, memoryview, int, int]
#: an outbound packet's shape: trailer, plaintext, ciphertext+ICV and AAD views, the ESP
#: packet's length, and its trailers (padding, pad length, next header) by IP version
_OutShape = tuple[memoryview, memoryview, memoryview, memoryview, int, tuple[bytes | None, ...]]
_SPI_SEQ: Final = struct.Struct("!II")
_U64: Final = struct.Struct("!Q")


def _fast_tail4() -> dict[int, tuple[int, int]]:
    """By octets between an IPv4 inner packet's end and the ICV (pad length + 2, pad 0-3): the
    mask and value of the last 8 plaintext octets (padding 1, 2, .., pad length, next header
    4), RFC 4303 section 2.4."""
    table = {}
    for pad in range(4):
        tail = bytes(range(1, pad + 1)) + bytes((pad, NH_IPV4))
        mask = int.from_bytes(bytes(8 - len(tail)) + b"\xff" * len(tail), "big")
        table[pad + 2] = (mask, int.from_bytes(tail.rjust(8, b"\0"), "big"))
    return table


_FAST_TAIL4: Final = _fast_tail4()


def _slot(buf: memoryview, off: int, n: int) -> _Slot:
    """The views and offsets of the n-octet ESP packet at ``buf[off:]`` that ``decapsulate_into``
    and ``decapsulate_run`` use."""
    ct = off + _CT_OFF
    return (off, buf[ct : off + n], buf[ct : off + n - ESP_ICV_LEN],
            buf[off : off + ESP_HEADER_LEN], buf[off + ESP_HEADER_LEN : ct], ct,
            off + n - ESP_ICV_LEN)


class OutboundSA:
    """The sending half of an ESP SA."""

    __slots__ = (
        "_aead",
        "_buf",
        "_encrypt_into",
        "_general",
        "_limit",
        "_salt",
        "_tfc_pad",
        "_views",
        "esn",
        "hard_limit",
        "initial_seq",
        "rekey_needed",
        "seq",
        "soft_limit",
        "spi",
        "suite",
    )

    def __init__(
        self,
        spi: int,
        suite: Suite,
        keymat: bytes,
        *,
        esn: bool = False,
        tfc_pad: int = 0,
        initial_seq: int = 0,
        soft_limit: int | None = None,
    ) -> None:
        """``keymat`` is key || salt. ``initial_seq`` is the last number already used (tests).

        ``tfc_pad``: pad every inner packet shorter than this many octets with zeros, inside
        the encryption, before the ESP padding (RFC 4303 section 2.4, traffic flow
        confidentiality); the receiver strips it using the inner IP header's length.
        ``soft_limit``: after this sequence number ``rekey_needed`` becomes True; the default
        leaves 1/16 of the sequence space for the rekey to complete.
        """
        key, salt = suite.split_keymat(keymat)
        self.spi = check_spi(spi)
        self.suite = suite
        self.esn = esn
        self.hard_limit = SEQ_MAX_64 if esn else SEQ_MAX_32
        if soft_limit is None:
            soft_limit = self.hard_limit - (self.hard_limit >> 4)
        if not 0 < soft_limit <= self.hard_limit:
            raise ValueError(f"soft_limit must be in 1..{self.hard_limit}")
        if not 0 <= initial_seq <= self.hard_limit:
            raise ValueError(f"initial_seq must be in 0..{self.hard_limit}")
        if not 0 <= tfc_pad <= 65535:
            raise ValueError("tfc_pad must be 0..65535")
        self.soft_limit = soft_limit
        self.initial_seq = initial_seq
        self.seq = initial_seq
        self.rekey_needed = initial_seq >= soft_limit
        # One compare per packet covers both limits: below soft, then below hard.
        self._limit = self.hard_limit if self.rekey_needed else soft_limit
        self._salt = salt
        self._aead = suite.aead(key)
        self._encrypt_into = self._aead.encrypt_into
        self._tfc_pad = tfc_pad
        #: ESN and TFC padding take the general path; the fast path is the common case
        self._general = bool(esn or tfc_pad)
        self._buf: object = None
        self._views: dict[int, _OutShape] = {}

    @property
    def packets(self) -> int:
        """Packets sent on this SA."""
        return self.seq - self.initial_seq

    def _next_seq(self) -> int:
        """Take the next sequence number (RFC 4303 section 3.3.3: never reused; past the soft
        limit ``rekey_needed``; past the hard limit SequenceNumberExhausted, nothing taken).
        The fast path has these lines inline."""
        seq = self.seq + 1
        if seq > self._limit:
            self._next_seq_slow(seq)
        self.seq = seq
        return seq

    def _next_seq_slow(self, seq: int) -> None:
        if seq > self.hard_limit:
            raise SequenceNumberExhausted(
                f"SA {self.spi:#010x}: sequence number space exhausted; rekey required"
            )
        self.rekey_needed = True
        self._limit = self.hard_limit

    def _shape(
        self, out: memoryview, off: int, n: int
    ) -> _OutShape:
        """Views into ``out`` for an n-octet inner packet at ``off`` (cached per buffer)."""
        if n == 0:
            raise ValueError("inner packet is neither IPv4 nor IPv6: it is empty")
        if n > 0xFFFF:
            raise ValueError(f"inner packet must be 1..65535 octets, got {n}")
        if off + _CT_OFF + n + ESP_ALIGN + ESP_TRAILER_LEN + ESP_ICV_LEN > len(out):
            raise ValueError("output buffer too small for the ESP packet")
        if out is not self._buf or len(self._views) >= _VIEW_CACHE_MAX:
            self._buf = out
            self._views = {}
        pad = (-(n + 2)) & 3
        ct = off + _CT_OFF
        end = ct + n
        ct_end = end + pad + ESP_TRAILER_LEN
        shape = (
            out[end:ct_end],
            out[ct:ct_end],
            out[ct : ct_end + ESP_ICV_LEN],
            out[off : off + ESP_HEADER_LEN],
            ct_end + ESP_ICV_LEN - off,
            tuple(t[pad] if t else None for t in _TRAILERS_BY_VERSION),
        )
        self._views[(off << 16) | n] = shape
        return shape

    # Two paths: the fast one (``encapsulate_in_place``: no ESN, no TFC padding, IPv4 or IPv6
    # by the version nibble, views cached per buffer) and the general one
    # (``_encapsulate_general``: anything, the same octets). The other entry points copy the
    # inner packet into place and take one of them.
    def encapsulate_into(
        self, inner: bytes | bytearray | memoryview, out: memoryview, off: int = 0
    ) -> int:
        """Write the ESP packet for ``inner`` at ``out[off:]``; return its length.

        ``out`` is a writable memoryview with room for ``len(inner) + 37`` octets (more with
        TFC padding); reuse the same one, as views into it are cached. The next header comes
        from the inner packet's IP version. Raises ValueError for an inner packet that is
        neither IPv4 nor IPv6, and SequenceNumberExhausted at the hard limit.
        """
        n = len(inner)
        start = off + _CT_OFF
        try:
            out[start : start + n] = inner
        except ValueError:  # before any sequence number is used
            raise ValueError("output buffer too small for the ESP packet") from None
        return self.encapsulate_in_place(out, off, n)

    def encapsulate_in_place(self, out: memoryview, off: int, n: int) -> int:
        """As ``encapsulate_into`` for an n-octet inner packet that already lies where its
        plaintext goes, at ``out[off + 16 : off + 16 + n]`` (read there from the TUN device):
        the ESP packet at ``out[off:]``, its length returned, nothing copied. The fast path."""
        shape = self._views.get((off << 16) | n) if out is self._buf else None
        if shape is None:  # a new shape, or a general SA (which caches none)
            if self._general:
                return self._encapsulate_general(None, out, off, 0, n)
            shape = self._shape(out, off, n)
        trailer = shape[5][out[off + _CT_OFF] >> 4]
        if trailer is None:
            raise ValueError("inner packet is neither IPv4 nor IPv6")
        shape[0][:] = trailer
        seq = self.seq + 1  # _next_seq, inline
        if seq > self._limit:
            self._next_seq_slow(seq)
        self.seq = seq
        # The SPI too, every time: another SA may have written into the same buffer.
        _HEADER.pack_into(out, off, self.spi, seq, seq)
        self._encrypt_into(_NONCE.pack(self._salt, seq), shape[1], shape[3], shape[2])
        return shape[4]

    def encapsulate_dummy_into(self, out: memoryview, off: int = 0, size: int = 0) -> int:
        """A dummy packet (next header 59, RFC 4303 section 2.6) with ``size`` zero octets."""
        return self._encapsulate_general(bytes(size), out, off, NH_NO_NEXT_HEADER)

    def _encapsulate_general(
        self, inner: bytes | bytearray | memoryview | None, out: memoryview, off: int, nh: int,
        n: int = 0,
    ) -> int:
        """Any packet: ESN, TFC padding, explicit next header. Same output as the fast path.
        ``inner`` None: the n-octet packet already lies at ``out[off + 16:]``."""
        if inner is not None:
            n = len(inner)
        first = (inner[0] if inner is not None else out[off + _CT_OFF]) if n else 0
        trailers = _TRAILERS_BY_NH[nh] if nh else _TRAILERS_BY_VERSION[first >> 4] if n else None
        if trailers is None:
            raise ValueError("inner packet is neither IPv4 nor IPv6")
        payload = max(n, self._tfc_pad)
        pad = (-(payload + ESP_TRAILER_LEN)) & 3
        ct = off + _CT_OFF
        end = ct + payload
        ct_end = end + pad + ESP_TRAILER_LEN
        if len(out) < ct_end + ESP_ICV_LEN:
            raise ValueError("output buffer too small for the ESP packet")
        if inner is not None:
            out[ct : ct + n] = inner
        if n < payload:
            out[ct + n : end] = bytes(payload - n)
        out[end:ct_end] = trailers[pad]
        seq = self._next_seq()
        _HEADER.pack_into(out, off, self.spi, seq & _M32, seq)
        if self.esn:
            aad: bytes | memoryview = _AAD_ESN.pack(self.spi, seq >> 32, seq & _M32)
        else:
            aad = out[off : off + ESP_HEADER_LEN]
        self._encrypt_into(
            _NONCE.pack(self._salt, seq), out[ct:ct_end], aad, out[ct : ct_end + ESP_ICV_LEN]
        )
        return ct_end + ESP_ICV_LEN - off

    def encapsulate(self, inner: bytes | bytearray | memoryview) -> bytes:
        """Convenience form of ``encapsulate_into`` returning a new bytes object."""
        buf = memoryview(bytearray(max(len(inner), self._tfc_pad) + 64))
        n = self._encapsulate_general(inner, buf, 0, 0)
        return bytes(buf[:n])


class InboundSA:
    """The receiving half of an ESP SA, with its anti-replay window and drop counters."""

    __slots__ = (
        "_aead",
        "_buf",
        "_decrypt_into",
        "_nonce",
        "_nonce_iv",
        "_run_buf",
        "_run_slots",
        "_salt",
        "_views",
        "bytes",
        "drops",
        "esn",
        "packets",
        "replay",
        "spi",
        "suite",
    )

    def __init__(
        self,
        spi: int,
        suite: Suite,
        keymat: bytes,
        *,
        esn: bool = False,
        replay_window: int = REPLAY_WINDOW_DEFAULT,
    ) -> None:
        key, salt = suite.split_keymat(keymat)
        self.spi = check_spi(spi)
        self.suite = suite
        self.esn = esn
        self.replay = ReplayWindow(replay_window, esn)
        self._salt = salt
        self._aead = suite.aead(key)
        self._decrypt_into = self._aead.decrypt_into
        # salt || IV, the IV half overwritten from each packet
        self._nonce = bytearray(salt + bytes(ESP_IV_LEN))
        self._nonce_iv = memoryview(self._nonce)[len(salt) :]
        self._buf: object = None
        self._views: dict[int, _Slot] = {}
        self._run_buf: object = None
        self._run_slots: dict[int, list[_Slot]] = {}
        self.drops = DropCounters()
        self.packets = 0
        self.bytes = 0

    def decapsulate_into(self, buf: memoryview, off: int, n: int) -> int:
        """Authenticate and decrypt, in place, the n-octet ESP packet at ``buf[off:]``.

        Returns the inner packet's length ``m``, the inner packet then being
        ``buf[off + 16 : off + 16 + m]``, or ``-DropReason`` (counted in ``self.drops``).
        A packet that fails authentication leaves no plaintext behind. The caller has already
        matched the SPI. Reuse the same ``buf``, as views into it are cached.

        The steps of ``decapsulate_run``'s loop, with the same helpers (the slot views,
        the replay window's ``check``/``commit``, ``_check_trailer``), for one packet: a run's
        set-up would cost more than the packet.
        """
        if n < MIN_ESP_PACKET:
            return self._drop(_TRUNCATED)
        if buf is self._buf:
            slot = self._views.get((off << 16) | n) or self._shape(buf, off, n)
        else:
            slot = self._shape(buf, off, n)
        _, ct_v, pt_v, aad, iv_v, ct, ct_end = slot
        seq = _U32.unpack_from(buf, off + 4)[0]
        replay = self.replay
        # RFC 4303 section 3.4.3: check before the ICV, commit after it.
        if self.esn:
            seql = seq
            seq = replay.check(seql)
            if seq < 0:
                return self._drop(seq)
            aad = memoryview(_AAD_ESN.pack(_U32.unpack_from(buf, off)[0], seq >> 32, seql))
        elif seq <= replay.top:  # not right of the window: 0, too old, or maybe a replay
            seq = replay.check(seq)
            if seq < 0:
                return self._drop(seq)
        self._nonce_iv[:] = iv_v
        try:
            self._decrypt_into(self._nonce, ct_v, aad, pt_v)
        except InvalidTag:
            pt_v[:] = bytes(len(pt_v))
            return self._drop(_AUTH_FAILED)
        # Authentic from here on: the window moves even if the contents are then refused.
        replay.commit(seq)
        inner_len = self._check_trailer(buf, ct, ct_end)
        if inner_len > 0:
            self.packets += 1
            self.bytes += inner_len
        return inner_len

    def decapsulate_run(self, buf: memoryview, off: int, end: int, seg: int,
                        out: list[int]) -> int:
        """``decapsulate_into`` for the packets of one UDP GRO read that carry this SA's SPI.

        The packets lie ``seg`` octets apart from offset 0 to ``end`` (the last may be
        shorter); ``off`` is a multiple of ``seg`` and its packet carries this SPI. From there
        each one is decapsulated in place and its result (the inner length, or
        ``-DropReason``) appended to ``out``, until ``end`` or a packet with another SPI.
        Returns the offset of the first packet not handled.

        The steps of ``decapsulate_into``, its helpers, in a loop: the same checks in the same
        order, the same results and counters. Cheaper: slot views made once per buffer and
        size; state in locals; authentic sequence numbers committed to the window together
        (before any check that needs them); a common IPv4 packet's trailer checked in two
        looks; anything else takes ``_check_trailer``.
        """
        if seg < MIN_ESP_PACKET or off % seg:  # truncated, or off the grid: one by one
            return self._one_by_one(buf, off, end, seg, out)
        nfull = end // seg
        slots = self._slots(buf, seg, nfull)
        spi = self.spi
        append = out.append
        head, unpack, tail8 = _SPI_SEQ.unpack_from, _U32.unpack_from, _U64.unpack_from
        fast4 = _FAST_TAIL4.get
        replay = self.replay
        check, commit_all, top = replay.check, replay.commit_all, replay.top
        authentic: list[int] = []  # sequence numbers not yet committed
        keep = authentic.append
        esn = self.esn
        decrypt_into, nonce, nonce_iv = self._decrypt_into, self._nonce, self._nonce_iv
        packets = nbytes = 0
        stop = nfull * seg
        for at, ct_v, pt_v, aad, iv_v, ct, ct_end in slots[off // seg : nfull]:
            spi_, seq = head(buf, at)
            if spi_ != spi:
                stop = at
                break
            if esn:
                commit_all(authentic)
                seql = seq
                seq = check(seql)
                if seq < 0:
                    append(self._drop(seq))
                    continue
                aad = memoryview(_AAD_ESN.pack(spi, seq >> 32, seql))
            elif seq <= top:  # not right of the window: 0, too old, or maybe a replay
                commit_all(authentic)
                r = check(seq)
                if r < 0:
                    append(self._drop(r))
                    continue
            nonce_iv[:] = iv_v
            try:
                decrypt_into(nonce, ct_v, aad, pt_v)
            except InvalidTag:
                pt_v[:] = bytes(len(pt_v))
                append(self._drop(_AUTH_FAILED))
                continue
            keep(seq)  # authentic: the window moves even if the contents are then refused
            if seq > top:
                top = seq
            word = unpack(buf, ct)[0]
            inner_len = word & 0xFFFF
            mw = fast4(ct_end - ct - inner_len)
            if (mw is None or inner_len < IPV4_HEADER_LEN or word >> 28 != 4
                    or tail8(buf, ct_end - 8)[0] & mw[0] != mw[1]):
                inner_len = self._check_trailer(buf, ct, ct_end)
                if inner_len < 0:
                    append(inner_len)
                    continue
            packets += 1
            nbytes += inner_len
            append(inner_len)
        commit_all(authentic)
        self.packets += packets
        self.bytes += nbytes
        if stop < nfull * seg or stop == end:
            return stop
        return min(self._one_by_one(buf, stop, end, seg, out), end)  # the shorter last one

    def _one_by_one(self, buf: memoryview, off: int, end: int, seg: int, out: list[int]) -> int:
        """``decapsulate_run`` with ``decapsulate_into`` on each packet (the shorter last one
        of a run; segments too short for ESP or off the grid)."""
        spi = self.spi
        while off < end:
            n = seg if off + seg <= end else end - off
            if n < ESP_HEADER_LEN or _U32.unpack_from(buf, off)[0] != spi:
                break
            out.append(self.decapsulate_into(buf, off, n))
            off += seg
        return off

    def _shape(self, buf: memoryview, off: int, n: int) -> _Slot:
        """The slot of the n-octet packet at ``buf[off:]`` (cached per buffer)."""
        if buf is not self._buf or len(self._views) >= _VIEW_CACHE_MAX:
            self._buf = buf
            self._views = {}
        slot = self._views[(off << 16) | n] = _slot(buf, off, n)
        return slot

    def _slots(self, buf: memoryview, seg: int, count: int) -> list[_Slot]:
        """At least ``count`` slots of ``seg`` octets from the start of ``buf`` (cached)."""
        slots = self._run_slots.get(seg) if buf is self._run_buf else None
        if slots is None or len(slots) < count:
            slots = self._make_slots(buf, seg, count)
        return slots

    def _make_slots(self, buf: memoryview, seg: int, count: int) -> list[_Slot]:
        if buf is not self._run_buf or len(self._run_slots) >= _SLOT_SIZES_MAX:
            self._run_buf = buf
            self._run_slots = {}
        slots = [_slot(buf, o, seg) for o in range(0, count * seg, seg)]
        self._run_slots[seg] = slots
        return slots

    def _check_trailer(self, buf: memoryview, ct: int, ct_end: int) -> int:
        """RFC 4303 padding and next header, then the inner packet's version and length, of
        an authenticated packet: the inner length or ``-DropReason`` (counted).

        The last 4 plaintext octets are [pad-1] [pad] pad-length next-header; padding must read
        1, 2, 3, ... (RFC 4303 section 2.4), up to 2 octets of it checked in that word. The
        inner packet's version must match the next header and its length fill what is left;
        anything else (TFC padding, bad packets) takes ``_inner_length``."""
        tail: int = _U32.unpack_from(buf, ct_end - 4)[0]
        pad = (tail >> 8) & 0xFF
        inner_end = ct_end - 2 - pad
        if tail & _PAD_MASK[pad] != _PAD_WANT[pad] or inner_end < ct or (
            pad > 2 and buf[inner_end : ct_end - 4] != PADDING[pad - 2]
        ):
            return self._drop(_BAD_PADDING)
        nh = tail & 0xFF
        inner_len = inner_end - ct
        if nh == NH_IPV4:
            word = _U32.unpack_from(buf, ct)[0]
            if inner_len < IPV4_HEADER_LEN or word & 0xF000FFFF != 0x40000000 | inner_len:
                return self._inner_length(buf, ct, inner_len, nh)
            return inner_len
        if nh == NH_IPV6:
            version, ip_len = _V6_LEN.unpack_from(buf, ct)
            if (inner_len < IPV6_HEADER_LEN or version >> 4 != 6
                    or ip_len + IPV6_HEADER_LEN != inner_len):
                return self._inner_length(buf, ct, inner_len, nh)
            return inner_len
        if nh == NH_NO_NEXT_HEADER:
            return self._drop(_DUMMY)
        return self._drop(_BAD_NEXT_HEADER)

    def _inner_length(self, buf: memoryview, ct: int, room: int, nh: int) -> int:
        """Length of the inner packet in ``room`` octets, or -BAD_INNER_PACKET (counted).

        Shorter than ``room`` means TFC padding follows it (RFC 4303 section 2.4).
        """
        if nh == NH_IPV4:
            if room >= IPV4_HEADER_LEN:
                version, ip_len = _V4_LEN.unpack_from(buf, ct)
                if version >> 4 == 4 and IPV4_HEADER_LEN <= ip_len <= room:
                    return int(ip_len)
        elif room >= IPV6_HEADER_LEN:
            version, ip_len = _V6_LEN.unpack_from(buf, ct)
            if version >> 4 == 6 and ip_len + IPV6_HEADER_LEN <= room:
                return int(ip_len) + IPV6_HEADER_LEN
        return self._drop(_BAD_INNER)

    def _drop(self, neg_reason: int) -> int:
        self.drops.counts[-neg_reason] += 1
        return neg_reason

    def decapsulate(self, pkt: bytes | bytearray | memoryview) -> bytes | DropReason:
        """Convenience form: the inner packet as bytes, or the DropReason."""
        buf = bytearray(pkt)
        r = self.decapsulate_into(memoryview(buf), 0, len(buf))
        if r < 0:
            return DropReason(-r)
        return bytes(buf[_CT_OFF : _CT_OFF + r])
