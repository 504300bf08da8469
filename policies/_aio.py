"""A timeout that never swallows cancellation."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def within(timeout_s: float, aw: Awaitable[T]) -> T:
    """``await aw`` or raise TimeoutError after ``timeout_s``.

    Before 3.12, ``asyncio.wait_for`` drops a cancel that races the inner result (gh-86296): an
    agent's ``stop()`` then hangs on a loop that never saw it. ``asyncio.timeout`` (3.11+) does not.
    """
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout_s):
            return await aw
    return await asyncio.wait_for(aw, timeout_s)
