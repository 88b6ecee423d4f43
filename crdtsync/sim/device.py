"""A simulated device: a real ``Replica`` on a ``MemoryStore``, a skewed simulated wall clock, and the
simulator's own bookkeeping of what its user wrote and had seen (for the oracle; never read by strategies).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..errors import LocalError
from ..replica import Record, Replica
from ..schema import Schema
from ..store.memory import MemoryStore
from .oracle import DELETED, FinalRecord, Write, shows
from .workload import COLLECTION, Op

__all__ = ["EPOCH_MS", "SimDevice", "merge_knowledge", "on_screen", "snapshot"]

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: simulated time 0 on a correct clock


def merge_knowledge(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        if v > into.get(k, 0):
            into[k] = v


def snapshot(replica: Replica) -> dict[str, FinalRecord]:
    """Every record as the device shows it, as plain data (what the oracle and convergence compare)."""
    out: dict[str, FinalRecord] = {}
    for rec in replica.query(COLLECTION, include_deleted=True):
        conflicts: dict[str, list[Any]] = {}
        for c in rec.conflicts:
            conflicts.setdefault(c.field, []).extend(x.value for x in c.candidates)
        out[rec.id] = FinalRecord(rec.deleted, dict(rec.fields), conflicts)
    return out


def on_screen(rec: Record | None) -> tuple[tuple[str, Any], ...]:
    """What a user sees of ``rec``: each field's value, each conflict candidate, ``(deleted, True)`` if deleted;
    each pair once, but ``("amount", 1)`` and an edit-vs-delete candidate ``("amount", True)`` both (a set
    would keep one of them, since ``1 == True``)."""
    if rec is None:
        return ()
    pairs = [*rec.fields.items(), *((c.field, x.value) for c in rec.conflicts for x in c.candidates)]
    if rec.deleted:
        pairs.append((DELETED, True))
    shown: list[tuple[str, Any]] = []
    for f, v in pairs:
        if not shows(shown, f, v):
            shown.append((f, v))
    return tuple(shown)


class SimDevice:
    """One device. ``write`` performs a planned op if the user could (record visible and writable)."""

    def __init__(self, index: int, schema: Schema, now: Callable[[], int], skew: int, seed: int) -> None:
        self.index = index
        self.name = f"d{index}"
        self.schema = schema
        self.store = MemoryStore()
        self._now = now
        self.skew = skew
        self._rng = random.Random(f"{seed}:device:{index}")
        self.replica: Replica | None = None
        self.online = True
        self.knowledge: dict[str, int] = {}
        self.seq = 0
        self.change_writes: dict[int, list[int]] = {}
        self.start()

    def wall(self) -> int:
        return EPOCH_MS + self._now() + self.skew

    @property
    def up(self) -> bool:
        return self.replica is not None

    def start(self) -> None:
        """Open (or reopen after a crash) the replica on the device's store."""
        self.replica = Replica(self.store, self.schema, device=self.name, user=f"user{self.index}",
                               wall=self.wall, random_bytes=self._rng.randbytes)

    def crash(self) -> None:
        """The process dies: nothing is closed or flushed; what was committed stays in the store."""
        self.replica = None

    @property
    def cursor(self) -> int:
        assert self.replica is not None
        raw = self.replica.get_meta("cursor")
        return int(raw) if raw else 0

    def set_cursor(self, n: int) -> None:
        assert self.replica is not None
        if n > self.cursor:
            self.replica.set_meta("cursor", str(n).encode())

    def write(self, op: Op, next_id: Callable[[], int]) -> list[Write]:
        """Do ``op`` if its user could; return the writes it made (empty if skipped)."""
        r = self.replica
        if r is None:
            return []
        rec = r.get(COLLECTION, op.record)
        try:
            if op.kind == "create":
                if rec is not None:
                    return []
                r.create(COLLECTION, op.values, id=op.record)
            elif rec is None or rec.deleted or rec.status == "error":
                return []
            elif op.kind == "delete":
                r.delete(COLLECTION, op.record)
            else:
                r.update(COLLECTION, op.record, op.values)
        except LocalError:
            return []
        seen = dict(self.knowledge)
        self.seq += 1
        seen[self.name] = self.seq
        self.knowledge[self.name] = self.seq
        values = {DELETED: True} if op.kind == "delete" else op.values
        shown = on_screen(rec)
        writes = [Write(next_id(), self.name, self.seq, op.record, f, v, seen, op.time, shown)
                  for f, v in sorted(values.items())]
        self.change_writes[r.outbox.last_id()] = [w.id for w in writes]
        return writes
