"""``wait_for``: await something for at most a given time, without ever losing a cancellation.

Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives just as the awaited future
completes: it returns the result, and the task that was cancelled carries on as if nothing happened
(fixed in 3.12, whose ``wait_for`` is built on ``asyncio.timeout``). ``SyncClient.close()`` cancels its
connection task; one that was waiting for the relay's welcome with ``wait_for`` went on to start syncing,
and ``close()`` waited for it forever (3 of 182 quick start/close cycles, measured). crdtsync supports
3.11, so every timed wait in it goes through this function, built on ``asyncio.timeout`` as 3.12's is: a
cancellation always raises ``CancelledError`` in the caller, even when the awaited thing is done by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Await ``aw`` and return its result; raise ``TimeoutError`` after ``timeout`` seconds (None: no
    limit), cancelling ``aw`` (wrap a future in ``asyncio.shield`` to keep it). A cancellation of the
    caller is never lost (see the module docstring)."""
    async with asyncio.timeout(timeout):
        return await aw
