"""Reconnect delays: exponential backoff with full jitter. No I/O; the random source is passed in.

Full jitter (a uniform delay between 0 and the exponential cap) spreads out devices that lost the relay
at the same moment, so they do not all come back at once ("AWS Architecture Blog: Exponential Backoff And
Jitter").
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """``next()`` gives the delay before the next attempt; ``reset()`` after a successful connection."""

    def __init__(self, base: float = 0.25, factor: float = 2.0, cap: float = 30.0,
                 random: Callable[[], float] = _random.random) -> None:
        if base <= 0 or factor < 1 or cap < base:
            raise ValueError("backoff needs base > 0, factor >= 1 and cap >= base")
        self.base = base
        self.factor = factor
        self.cap = cap
        self.random = random
        self.attempt = 0

    def ceiling(self) -> float:
        """The largest delay the next attempt may get."""
        return min(self.cap, self.base * self.factor ** min(self.attempt, 64))

    def next(self) -> float:
        delay = self.random() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
