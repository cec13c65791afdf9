"""The IKE manager's DEBUG lines for messages it drops before an IKE SA takes them (a cookie
sent instead of an answer, a rate limit, a full half-open table, no IKE SA for the SPI):
each reason at most once per INTERVAL seconds, with how many more there were since its last
line, so that a flood costs a counter and a comparison per message, never a log line each
(the counts themselves are the manager's ``counters``).

Part of ``nattunnel.ike``; imports only ``nattunnel.addr``.
"""

from __future__ import annotations

import logging
from typing import Final

from ..addr import Addr, format_addr

log = logging.getLogger("nattunnel")

#: seconds between two lines of one reason
INTERVAL: Final = 10.0
#: what each reason's line says (the remote, then the SPI where there is one)
LINES: Final = {
    "cookie": "IKE_SA_INIT from %s answered with a COOKIE, no IKE SA yet (more half-open "
              "IKE SAs than cookie_threshold; a real initiator retries with the cookie)",
    "half_open_full": "IKE_SA_INIT from %s dropped: half_open_max half-open IKE SAs",
    "rate_limited": "IKE_SA_INIT from %s dropped by the rate limit (init_rate per source, "
                    "init_rate_total in all)",
    "no_sa": "IKE message from %s for SPI %s dropped: no IKE SA of ours has it",
}


class DropLog:
    """Rate-limited DEBUG lines, by reason (``LINES``), on the manager's clock (``now``)."""

    __slots__ = ("_next", "_skipped")

    def __init__(self) -> None:
        #: reason -> when its next line may be written, and the drops not logged since
        self._next: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def note(self, reason: str, now: float, remote: Addr, spi: bytes = b"") -> None:
        """One drop for ``reason`` (a key of LINES) of a message from ``remote``: its line
        at DEBUG if the last one is INTERVAL ago (and DEBUG is on), else only counted for
        the next line. Nothing is formatted for a drop that is not logged."""
        if now < self._next.get(reason, float("-inf")) or not log.isEnabledFor(logging.DEBUG):
            self._skipped[reason] = self._skipped.get(reason, 0) + 1
            return
        self._next[reason] = now + INTERVAL
        skipped = self._skipped.pop(reason, 0)
        more = f" ({skipped} more since the last such line)" if skipped else ""
        if spi:
            log.debug(LINES[reason] + "%s", format_addr(remote), spi.hex(), more)
        else:
            log.debug(LINES[reason] + "%s", format_addr(remote), more)
