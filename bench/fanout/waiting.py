"""Waiting for readers without hanging: until all are done, or nobody progressed for a while, or a cap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

__all__ = ["wait_readers"]


async def wait_readers(done: Sequence[asyncio.Future[float]], progress: Callable[[], int], *,
                       idle: float, cap: float) -> tuple[float, str | None]:
    """Wait for every future in ``done`` (each resolves to the perf_counter time its reader completed).

    Returns (end time, why it stopped early or None). It gives up when ``progress()`` (a count of what the
    readers received so far) has not moved for ``idle`` seconds: whatever is missing by then was dropped
    or is stuck, not slow; and after ``cap`` seconds in any case.
    """
    start = time.perf_counter()
    last_seen, last_change = progress(), start
    pending = set(done)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=0.25)
        now = time.perf_counter()
        seen = progress()
        if seen != last_seen:
            last_seen, last_change = seen, now
        if not pending:
            break
        if now - last_change >= idle:
            return last_change, f"stalled: nothing arrived for {idle:.0f} s"
        if now - start >= cap:
            return now, f"still receiving after the {cap:.0f} s cap"
    return max(f.result() for f in done), None
