"""The outbox: every local change ("draft") until the relay acknowledges it, persisted in order.

An entry lives at ``("out", change_id)``, where the change id is the change's HLC time (unique on this
device and increasing), so key order is the order changes were made. Its value is a JSON header
(collection, record, op, fields, status, error, ``w``: why the relay holds it back, and ``n``: the place
of the update among the record's updates) and the Yjs update, length-prefixed. The entry is the only
stored copy of a pending update: a local write stores one key, not two (``RecordDocs`` reads the
record's pending updates from here, and the update moves to ``("upd", collection, id, n)`` when the relay
acknowledges it). The outbox keeps an index of its headers in memory: it is small (only unsynced
changes), and status queries must be cheap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, cast

import orjson

from ..codec import Reader, write_bytes
from ..store.base import Batch, ByteStore
from .types import ChangeStatus, PendingChange

__all__ = ["Outbox", "OutboxEntry", "decode_entry", "encode_entry"]


class OutboxEntry:
    __slots__ = ("collection", "error", "fields", "id", "n", "op", "record", "status", "waiting")

    def __init__(self, id: int, collection: str, record: str, op: str, fields: dict[str, Any],
                 status: ChangeStatus = "pending", error: tuple[str, str] | None = None, n: int = -1,
                 waiting: str | None = None) -> None:
        self.id = id
        #: the update's index among the record's updates (``("upd", collection, record, n)`` once
        #: acknowledged); -1 for an entry stored before the index was kept (see ``layout.py``)
        self.n = n
        self.collection = collection
        self.record = record
        self.op = op
        self.fields = fields
        self.status: ChangeStatus = status
        self.error = error
        #: why the relay held the change back at its last answer (``Replica.hold``), None if it did not
        self.waiting = waiting

    def header(self) -> bytes:
        """The entry's JSON header. ``s``, ``e`` and ``w`` are left out when pending, without error and not
        held back with a reason: a smaller entry fills the store's pages more slowly (an entry is written on
        every local write)."""
        h: dict[str, Any] = {"c": self.collection, "r": self.record, "o": self.op, "f": self.fields, "n": self.n}
        if self.status != "pending":
            h["s"] = self.status
        if self.error:
            h["e"] = list(self.error)
        if self.waiting:
            h["w"] = self.waiting
        return orjson.dumps(h)

    def public(self) -> PendingChange:
        return PendingChange(self.id, self.collection, self.record, self.op, dict(self.fields), self.status,
                             self.error, self.waiting)


def encode_entry(entry: OutboxEntry, update: bytes) -> bytes:
    header = entry.header()
    h, u = len(header), len(update)
    if h < 128 and u < 16384:  # the common lengths written here (a local write is hot): 1 and 1-2 bytes
        return b"".join((bytes((h,)), header, bytes((u,) if u < 128 else (u & 0x7F | 0x80, u >> 7)), update))
    out = bytearray()
    write_bytes(out, header)
    write_bytes(out, update)
    return bytes(out)


def decode_entry(change_id: int, raw: bytes) -> tuple[OutboxEntry, bytes]:
    r = Reader(raw)
    h = orjson.loads(r.bytes())
    update = r.bytes()
    err = tuple(h["e"]) if h.get("e") else None
    return OutboxEntry(change_id, h["c"], h["r"], h["o"], h["f"], cast(ChangeStatus, h.get("s", "pending")),
                       cast("tuple[str, str] | None", err), int(h.get("n", -1)), h.get("w")), update


class Outbox:
    def __init__(self, store: ByteStore) -> None:
        self.store = store
        self._entries: dict[int, OutboxEntry] = {}
        self._by_record: dict[tuple[str, str], list[int]] = defaultdict(list)
        # per record: ids of entries in "error" and in "syncing", so a record's status costs O(1)
        self._flagged: dict[tuple[str, str], dict[str, set[int]]] = {}
        for key, raw in store.iter_range(("out",)):
            entry, _ = decode_entry(int(key[1]), raw)
            # a sync cut short by a crash left entries "syncing": they are pending again
            if entry.status == "syncing":
                entry.status = "pending"
            self._index(entry)

    def _index(self, entry: OutboxEntry) -> None:
        self._entries[entry.id] = entry
        self._by_record[(entry.collection, entry.record)].append(entry.id)
        if entry.status != "pending":
            self._flag(entry, None, entry.status)

    def _flag(self, e: OutboxEntry, old: str | None, new: str | None) -> None:
        key = (e.collection, e.record)
        if old in ("error", "syncing"):
            flags = self._flagged[key]
            flags[old].discard(e.id)
            if not flags["error"] and not flags["syncing"]:
                del self._flagged[key]
        if new in ("error", "syncing"):
            self._flagged.setdefault(key, {"error": set(), "syncing": set()})[new].add(e.id)

    def summary(self, collection: str, record: str) -> tuple[OutboxEntry | None, bool, bool]:
        """(the record's oldest rejected entry or None, whether one is syncing, whether any is queued)."""
        key = (collection, record)
        flags = self._flagged.get(key)
        if flags is None:
            return None, False, key in self._by_record
        err = self._entries[min(flags["error"])] if flags["error"] else None
        return err, bool(flags["syncing"]), True

    def __len__(self) -> int:
        return len(self._entries)

    def last_id(self) -> int:
        return max(self._entries, default=0)

    def add(self, batch: Batch, entry: OutboxEntry, update: bytes) -> None:
        batch.save(("out", entry.id), encode_entry(entry, update))
        self._index(entry)

    def entries(self) -> list[OutboxEntry]:
        return [self._entries[i] for i in sorted(self._entries)]

    def get(self, change_id: int) -> OutboxEntry | None:
        return self._entries.get(change_id)

    def for_record(self, collection: str, record: str) -> list[OutboxEntry]:
        return [self._entries[i] for i in sorted(self._by_record.get((collection, record), ()))]

    def last_for(self, collection: str, record: str) -> int:
        """The id of the record's newest pending change, 0 if it has none."""
        ids = self._by_record.get((collection, record))
        return ids[-1] if ids else 0

    def records(self) -> list[tuple[str, str]]:
        """Every (collection, record) with pending changes."""
        return list(self._by_record)

    def local_records(self, collection: str) -> set[str]:
        """The ids of the records of ``collection`` with pending changes."""
        return {rid for c, rid in self._by_record if c == collection}

    def update_bytes(self, change_id: int) -> bytes:
        raw = self.store.load(("out", change_id))
        if raw is None:
            raise KeyError(change_id)
        return decode_entry(change_id, raw)[1]

    def updates_of(self, ids: list[int]) -> dict[int, bytes]:
        """The update of each of these entries (one store query), by change id."""
        raws = self.store.load_many([("out", i) for i in ids])
        return {i: decode_entry(i, raw)[1] for i, raw in zip(ids, raws, strict=True) if raw is not None}

    def local_updates(self, collection: str, record: str) -> list[tuple[int, int, bytes]]:
        """``(n, change id, update)`` of each pending change of a record: what ``RecordDocs`` loads a record
        with, beside its stored updates (a pending update is stored in its outbox entry only)."""
        ids = self._by_record.get((collection, record))
        if not ids:
            return []
        found = self.updates_of(list(ids))
        return [(self._entries[i].n, i, found[i]) for i in ids if i in found]

    def set_status(self, batch: Batch | None, ids: Iterable[int], status: ChangeStatus,
                   error: tuple[str, str] | None = None) -> None:
        """Change the status of entries. ``syncing`` is kept in memory only (a crash makes it pending)."""
        for i in ids:
            e = self._entries.get(i)
            if e is None:
                continue
            self._flag(e, e.status, status)
            e.status = status
            e.error = error
            if status == "error":
                e.waiting = None  # rejected: it no longer waits for anything
            if batch is not None:
                self._rewrite(batch, e)

    def set_waiting(self, batch: Batch, reasons: Mapping[int, str | None]) -> None:
        """Keep why the relay holds each of these entries back (None: no reason, or no longer held). Only
        entries whose reason changed are written again."""
        for i, why in reasons.items():
            e = self._entries.get(i)
            if e is None or e.waiting == why:
                continue
            e.waiting = why
            self._rewrite(batch, e)

    def _rewrite(self, batch: Batch, e: OutboxEntry) -> None:
        """Stage ``e``'s stored entry again with its header as it now is (its update unchanged)."""
        raw = self.store.load(("out", e.id))
        if raw is not None:
            batch.save(("out", e.id), encode_entry(e, decode_entry(e.id, raw)[1]))

    def remove(self, batch: Batch, ids: Iterable[int]) -> list[OutboxEntry]:
        removed = []
        for i in ids:
            e = self._entries.pop(i, None)
            if e is None:
                continue
            self._flag(e, e.status, None)
            batch.remove(("out", i))
            lst = self._by_record[(e.collection, e.record)]
            lst.remove(i)
            if not lst:
                del self._by_record[(e.collection, e.record)]
            removed.append(e)
        return removed
