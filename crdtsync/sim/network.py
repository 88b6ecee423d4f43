"""Simulated time and an unreliable network: an event queue, and messages that may be lost, duplicated,
delayed (and so reordered) or cut by a partition. No real time, no sockets.

Each message's fate is drawn from its own ``random.Random`` seeded by (run seed, sender, message number),
so one device's traffic does not shift the faults another device sees, and the faults line up as closely
as they can between strategies that send different numbers of messages.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

__all__ = ["EventQueue", "Message", "Network"]


class EventQueue:
    """A discrete-event queue: ``at(time, fn)`` runs ``fn()`` when simulated time reaches ``time``.

    Events at the same time run in the order they were scheduled.
    """

    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._n = 0

    def at(self, time: int, fn: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self._heap, (max(time, self.now), self._n, fn))

    def after(self, delay: int, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def run_until(self, end: int, stop: Callable[[], bool] | None = None) -> None:
        """Run events up to time ``end`` (or until ``stop()`` is true after an event)."""
        while self._heap and self._heap[0][0] <= end:
            t, _, fn = heapq.heappop(self._heap)
            self.now = t
            fn()
            if stop is not None and stop():
                return
        self.now = max(self.now, end)

    def __len__(self) -> int:
        return len(self._heap)


@dataclass
class Message:
    """A message between a device and the server; ``size`` is what it would cost on the wire.

    ``origin`` is the number of the message that started its exchange (set by ``Network.send``): an
    upload's own, a reply's that of the upload it answers.
    """

    sender: str
    receiver: str
    kind: str
    body: Any
    size: int
    origin: int = 0


@dataclass
class Network:
    """Delivers messages through an ``EventQueue`` with loss, duplication, jitter and partitions."""

    queue: EventQueue
    seed: int
    latency_ms: int
    jitter_ms: int
    loss: float
    duplicate: float
    deliver: Callable[[Message], None]
    cut: set[str] = field(default_factory=set)  # devices partitioned from the server
    bytes_sent: int = 0
    messages_sent: int = 0
    messages_lost: int = 0
    in_flight: int = 0
    sent: int = 0  # messages numbered so far (``Message.origin``)
    _counts: dict[str, int] = field(default_factory=dict)
    _flying: dict[int, int] = field(default_factory=dict)  # origin -> copies in flight

    def oldest_in_flight(self) -> int | None:
        """The smallest ``origin`` among the messages in flight (None if none is)."""
        return min(self._flying, default=None)

    def faults_off(self) -> None:
        self.loss = 0.0
        self.duplicate = 0.0
        self.cut.clear()

    def send(self, msg: Message) -> None:
        n = self._counts.get(msg.sender, 0) + 1
        self._counts[msg.sender] = n
        rng = random.Random(f"{self.seed}:{msg.sender}:{n}")
        self.bytes_sent += msg.size
        self.messages_sent += 1
        self.sent += 1
        if not msg.origin:
            msg.origin = self.sent
        copies = 2 if rng.random() < self.duplicate else 1
        lost = rng.random() < self.loss
        for _ in range(copies):
            delay = self.latency_ms + int(rng.expovariate(1 / self.jitter_ms)) if self.jitter_ms else self.latency_ms
            if lost:
                self.messages_lost += 1
                continue
            self.in_flight += 1
            self._flying[msg.origin] = self._flying.get(msg.origin, 0) + 1
            self.queue.after(delay, partial(self._arrive, msg))

    def _arrive(self, msg: Message) -> None:
        self.in_flight -= 1
        left = self._flying[msg.origin] - 1
        if left:
            self._flying[msg.origin] = left
        else:
            del self._flying[msg.origin]
        device = msg.receiver if msg.sender == "server" else msg.sender
        if device in self.cut:
            self.messages_lost += 1
            return
        self.deliver(msg)
