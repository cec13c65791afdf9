"""Anti-replay window, RFC 4303 section 3.4.3, with ESN inference (Appendix A).

The window is kept as a ring of the sequence numbers themselves rather than as a bitmap: slot
``seq % R`` (R a power of two >= W) holds the last sequence number stored there. A number in the
window was seen exactly when its slot holds it: any other number in that slot differs by a
multiple of R and so is either older (then ``seq`` was not seen) or newer than the right edge
(impossible). Checking and committing are O(1) whatever the window size, and moving the window
needs no shifting or clearing. Memory is 8 octets per slot.

The public API is ``check`` (may this sequence number be new? never changes state) and
``commit`` or ``commit_all`` (record it, or a run of them; called only after the ICV has
verified), with ``top`` the right edge: a number above it is new without a look at the ring,
which is how the SA's per-packet path skips ``check`` for in-order packets
(``nattunnel.esp.sa``). Nothing outside this class touches the ring.
"""

from __future__ import annotations

from array import array

from ..constants import REPLAY_WINDOW_MAX, REPLAY_WINDOW_MIN, SEQ_MAX_64
from .drop import DropReason

_M32 = 0xFFFFFFFF
_TWO32 = 1 << 32
_BAD_SEQUENCE = -DropReason.BAD_SEQUENCE
_REPLAYED = -DropReason.REPLAYED
_OUTSIDE_WINDOW = -DropReason.OUTSIDE_WINDOW


class ReplayWindow:
    __slots__ = ("_mask", "_ring", "esn", "size", "top")

    def __init__(self, size: int, esn: bool = False) -> None:
        if not REPLAY_WINDOW_MIN <= size <= REPLAY_WINDOW_MAX:
            raise ValueError(
                f"replay window must be {REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}, got {size}"
            )
        ring = 1 << (size - 1).bit_length()
        self.size = size
        self.esn = esn
        #: highest authenticated sequence number (the window's right edge); 0 before any
        self.top = 0
        self._mask = ring - 1
        self._ring = array("Q", bytes(8 * ring))

    def infer(self, seql: int) -> int:
        """The full 64-bit sequence number for a received low half (RFC 4303 Appendix A2.2).

        Returns -1 when the implied high half would be negative or past 2**32 - 1.
        """
        top = self.top
        tl = top & _M32
        th = top >> 32
        w = self.size
        if tl >= w - 1:
            # Case A: the window lies within one sequence number subspace.
            seqh = th if seql >= tl - w + 1 else th + 1
        else:
            # Case B: the window spans two subspaces.
            seqh = th - 1 if seql >= tl - w + 1 + _TWO32 else th
        if seqh < 0 or seqh > _M32:
            return -1
        return (seqh << 32) | seql

    def check(self, seql: int) -> int:
        """Full sequence number if the packet may be new, else ``-DropReason``. No state change."""
        if self.esn:
            seq = self.infer(seql)
            if seq <= 0:
                return _BAD_SEQUENCE
        else:
            seq = seql
            if seq == 0:
                return _BAD_SEQUENCE
        top = self.top
        if seq > top:
            return seq
        if top - seq >= self.size:
            return _OUTSIDE_WINDOW
        if self._ring[seq & self._mask] == seq:
            return _REPLAYED
        return seq

    def commit(self, seq: int) -> None:
        """Record an authenticated sequence number (from ``check``)."""
        self._ring[seq & self._mask] = seq
        if seq > self.top:
            self.top = seq

    def commit_all(self, seqs: list[int]) -> None:
        """``commit`` each of ``seqs`` (authenticated, from ``check``), then empty the list:
        a run of packets commits together, before the next ``check`` that needs them."""
        if not seqs:
            return
        ring, mask, top = self._ring, self._mask, self.top
        for seq in seqs:
            ring[seq & mask] = seq
            if seq > top:
                top = seq
        self.top = top
        seqs.clear()

    def reset(self) -> None:
        """Forget every sequence number (a new SA; the benchmark reuses one)."""
        self.top = 0
        self._ring[:] = array("Q", bytes(8 * len(self._ring)))

    def seen(self, seq: int) -> bool:
        """Whether ``seq`` is inside the window and recorded (for tests and diagnostics)."""
        if seq <= 0 or seq > SEQ_MAX_64 or seq > self.top or self.top - seq >= self.size:
            return False
        return self._ring[seq & self._mask] == seq
