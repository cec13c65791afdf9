"""IKE cores in tests: helpers shared by tests/ike, tests/io and tests/lab."""

from __future__ import annotations

from typing import Protocol, TypeVar

E = TypeVar("E", covariant=True)


class HasEvents(Protocol[E]):
    def next_event(self) -> E | None: ...


def drain(core: HasEvents[E]) -> list[E]:
    """Every event the core has, in order."""
    out = []
    while (ev := core.next_event()) is not None:
        out.append(ev)
    return out
