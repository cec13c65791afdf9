"""One deadline heap, the only timer structure in the sans-I/O cores.

Every core keeps its timers here, keyed by whatever the deadline belongs to (a peer, an IKE
SA, an SPI in its grace period, a peer name waiting to initiate again): at most one deadline
per key; scheduling a key again replaces its deadline. Replaced and cancelled entries stay in
the heap and are skipped when they surface, so scheduling, cancelling and asking for the next
deadline all cost O(log n) at most and never a pass over every key.

The cores answer ``get_timer()`` from ``next_deadline`` and, in ``handle_timer(now)``, take the
keys whose deadlines passed from ``pop_due``. The asyncio endpoint arms one timer for the
earliest deadline of all its cores.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DeadlineHeap(Generic[K]):
    """Deadlines by key; at most one per key."""

    __slots__ = ("_heap", "_live", "_tick")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        #: key -> the tick of its live heap entry
        self._live: dict[K, int] = {}
        self._tick = itertools.count()

    def schedule(self, key: K, when: float) -> None:
        """``key`` is due at ``when`` (replacing any deadline it had)."""
        tick = next(self._tick)
        self._live[key] = tick
        heapq.heappush(self._heap, (when, tick, key))

    def schedule_earlier(self, key: K, when: float) -> None:
        """``key`` is due at ``when`` unless it is already due sooner."""
        current = self.when(key)
        if current is None or when < current:
            self.schedule(key, when)

    def cancel(self, key: K) -> None:
        self._live.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def __len__(self) -> int:
        return len(self._live)

    def when(self, key: K) -> float | None:
        """The key's deadline, or None. O(n): for tests and statistics, not per packet."""
        tick = self._live.get(key)
        if tick is None:
            return None
        for when, t, k in self._heap:
            if t == tick and k == key:
                return when
        return None

    def _drop_stale(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """The keys due at ``now``, earliest first; they are no longer scheduled."""
        out: list[K] = []
        heap, live = self._heap, self._live
        while True:
            self._drop_stale()
            if not heap or heap[0][0] > now:
                return out
            _, _, key = heapq.heappop(heap)
            del live[key]
            out.append(key)
