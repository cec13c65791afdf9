"""asyncio helpers for the endpoint tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_errors() -> list[dict[str, object]]:
    """Exceptions that reached the event loop's handler (a callback that raised)."""
    seen: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    return seen


async def until(pred: Callable[[], object], timeout: float = 2.0) -> None:
    """Wait until ``pred()`` is true (polling every 10 ms), or raise TimeoutError."""
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > end:
            raise TimeoutError
        await asyncio.sleep(0.01)
