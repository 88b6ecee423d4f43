"""Records on a byte store: lazy loading, an LRU cache, and the snapshot/compaction policy.

Used by the device replica and by the relay alike. Layout under the store:

- ``("snap", collection, id)``: the record's compacted Yjs state (only changes nobody may still discard);
- ``("upd", collection, id, n)``: updates since the snapshot, one per merge or acknowledged local write,
  after a first byte ``0``. A local change still pending is not stored here but in its outbox entry,
  which says its ``n`` (see ``Outbox``): a record is loaded from both, in ``n`` order.
- ``("rmeta", collection, id)``: only for records whose local changes were discarded: the fresh Yjs
  client id and writer tag used since, so discarded changes can never collide with new ones.
- ``("held", collection, id)``: only while some remote update of the record arrived before an update it
  builds on (or was merged on top of a local change since discarded): those updates, applied again once
  the missing one arrives.

A record is loaded from its snapshot and updates on first use and evicted, least recently used first,
when the cache holds more than ``cache_size`` records or more than ``cache_bytes`` bytes of encoded
updates (a few records with long notes weigh as much as thousands of small ones). A pinned record is
never evicted: the relay pins those with staged changes not committed yet. Compaction folds the updates
into the snapshot once there are ``compact_after`` of them and none is pending, and either they weigh at
least ``compact_ratio`` of the snapshot or there are ``compact_max`` of them. The weight rule keeps the cost
of compaction per byte written about constant: a record's whole state is encoded and stored again only
after updates worth a share of it (by count alone, a record with a long history was re-encoded and stored
whole every 64 changes: at 8 MB, 20 ms and 8 MB written each time, a cost per change that grew with the
record). The count cap bounds the parts a record is loaded (or, on the relay, sent whole) from: merging a
snapshot with 5,000 small updates took 0.5 s, against 0.08 s with a few.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ..codec import Reader, write_bytes
from ..model.merging import integrated
from ..model.record import RecordDoc
from ..model.strategies import new_record_doc
from ..schema import Schema
from ..store.base import Batch, ByteStore
from ..store.keys import Key

__all__ = ["LoadedRecord", "LocalChanges", "RecordDocs"]

_CONFIRMED = b"\x00"


class LocalChanges(Protocol):
    """Where a device keeps its pending local updates (the outbox): read when a record is loaded."""

    def local_updates(self, collection: str, record: str) -> list[tuple[int, int, bytes]]:
        """``(n, change id, update)`` of each pending change of the record."""
        ...

    def local_records(self, collection: str) -> set[str]:
        """The ids of the records of a collection with pending changes."""
        ...


@dataclass
class LoadedRecord:
    doc: RecordDoc
    next_n: int
    confirmed: list[int] = field(default_factory=list)
    pending: dict[int, int] = field(default_factory=dict)  # upd index -> change id (stored in the outbox)
    #: the relay's: each writer's latest slot time in the record, kept from one change to the next
    #: (``relay.checks.check_claims``); None until read
    vector: dict[str, int] | None = None
    #: bytes of the stored snapshot, and of the confirmed updates stored since (``maybe_compact``)
    snap_bytes: int = 0
    upd_bytes: int = 0


class RecordDocs:
    """Loads, caches, appends to and compacts record documents kept in a byte store."""

    def __init__(self, store: ByteStore, schema: Schema, *, device: str, user: str, client_id: int,
                 new_client_id: Callable[[], int], cache_size: int = 2000, cache_bytes: int | None = None,
                 compact_after: int = 64, compact_ratio: float = 0.25, compact_max: int = 1024,
                 wall: Callable[[], int] | None = None, local: LocalChanges | None = None) -> None:
        self.store = store
        self.local = local  # the device's pending updates; None for the relay, which has none
        self.schema = schema
        self.device = device
        self.user = user
        self.client_id = client_id
        self.new_client_id = new_client_id
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes  # None: no bound but the count
        self.compact_after = compact_after
        self.compact_ratio = compact_ratio
        self.compact_max = compact_max
        self.wall = wall  # the device's wall clock, for strategies that stamp it (lww-field)
        self._cache: OrderedDict[tuple[str, str], LoadedRecord] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}  # each cached record's weight when last touched
        self.cached_bytes = 0  # their sum
        self._pins: dict[tuple[str, str], int] = {}  # record -> how many times pinned (see ``pin``)

    def _put(self, key: tuple[str, str], lr: LoadedRecord) -> None:
        """Cache ``lr`` as the most recently used record, weighed now; evict beyond the bounds."""
        self._cache[key] = lr
        self._cache.move_to_end(key)
        self._weigh(key, lr)
        self._evict()

    def _weigh(self, key: tuple[str, str], lr: LoadedRecord) -> None:
        size = lr.doc.stored_size()
        self.cached_bytes += size - self._sizes.get(key, 0)
        self._sizes[key] = size

    def _evict(self) -> None:
        """Drop least recently used records while the cache holds too many or weighs too much. Pinned ones
        stay (moved to the recent end: they are in use), and so does the most recently used one."""
        cache, limit = self._cache, self.cache_bytes
        if len(cache) < 2 or (len(cache) <= self.cache_size and (limit is None or self.cached_bytes <= limit)):
            return
        newest = next(reversed(cache))  # the record just used stays, however much it weighs: it is in use
        budget = len(cache)  # each record is looked at once at most
        while budget > 0 and (len(cache) > self.cache_size or (limit is not None and self.cached_bytes > limit)):
            budget -= 1
            key = next(iter(cache))
            if key == newest:
                break
            if key in self._pins:
                cache.move_to_end(key)
                continue
            del cache[key]
            self.cached_bytes -= self._sizes.pop(key, 0)

    def _drop(self, key: tuple[str, str]) -> None:
        if self._cache.pop(key, None) is not None:
            self.cached_bytes -= self._sizes.pop(key, 0)

    def pin(self, collection: str, record_id: str) -> None:
        """Keep the record in the cache until as many ``unpin`` calls (it must be cached): the relay's
        writer pins each record it stages a change of until the commit, since a record evicted with staged,
        uncommitted updates would be reloaded without them."""
        key = (collection, record_id)
        assert key in self._cache, "only a cached record can be pinned"
        self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, collection: str, record_id: str) -> None:
        key = (collection, record_id)
        n = self._pins.get(key, 0)
        if n <= 1:
            self._pins.pop(key, None)
        else:
            self._pins[key] = n - 1
        lr = self._cache.get(key)
        if lr is not None:
            self._weigh(key, lr)
        self._evict()

    def cached(self, collection: str, record_id: str) -> LoadedRecord | None:
        """The record if it is in the cache (made most recently used), else None: loads nothing."""
        key = (collection, record_id)
        lr = self._cache.get(key)
        if lr is not None:
            self._cache.move_to_end(key)
        return lr

    def exists(self, collection: str, record_id: str) -> bool:
        key = (collection, record_id)
        if key in self._cache:
            return self._cache[key].doc.state().exists
        return (self.store.load(("snap", collection, record_id)) is not None
                or bool(self.store.load_range(("upd", collection, record_id), limit=1))
                or (self.local is not None and bool(self.local.local_updates(collection, record_id))))

    def get(self, collection: str, record_id: str) -> LoadedRecord:
        key = (collection, record_id)
        lr = self._cache.get(key)
        if lr is not None:
            self._cache.move_to_end(key)  # (weighed again by ``append``, when it grows)
            return lr
        lr = self._load(collection, record_id)
        self._put(key, lr)
        return lr

    def _identity(self, raw: bytes | None) -> tuple[str, int]:
        """The writer tag and Yjs client id of a record, from its ``rmeta`` (None: the device's own)."""
        if raw is None:
            return self.device, self.client_id
        meta = orjson.loads(raw)
        return f"{self.device}#{meta['epoch']}", int(meta["client"])

    def get_many(self, keys: list[tuple[str, str]]) -> list[LoadedRecord]:
        """``get`` for many records, loading the ones not cached with two store queries in all (a bulk
        merge loads hundreds of records, and two queries per record were a third of its cost), none for
        a collection the store holds nothing of."""
        out: dict[tuple[str, str], LoadedRecord] = {}
        missing: list[tuple[str, str]] = []
        for key in keys:
            lr = self._cache.get(key)
            if lr is None:
                missing.append(key)
            else:
                out[key] = lr
        if missing:
            # a collection this store holds nothing of (the first sync of a new device): nothing to load
            empty = {c for c in {c for c, _ in missing} if self._holds_none(c)}
            if empty:
                for c, rid in missing:
                    if c in empty:
                        out[(c, rid)] = self._make_new(c, rid)
                missing = [key for key in missing if key[0] not in empty]
        if missing:
            out.update(zip(missing, self._load_many(missing), strict=True))
        cache = self._cache
        for key in keys:  # in their order: the last ones are the most recently used
            lr = out[key]
            if cache.get(key) is lr:
                cache.move_to_end(key)
            else:
                self._put(key, lr)
        return [out[key] for key in keys]

    def peek_many(self, keys: list[tuple[str, str]]) -> Iterator[LoadedRecord]:
        """The records, in order: from the cache, or else loaded (two store queries in all, as ``get_many``)
        without being cached, each made only when the iterator gets to it. For a look at many records once
        (the relay checks every record of a collection against a ``where`` limit for a full resync): it does
        not push the records in use out of the cache, and each record it makes can be dropped before the
        next one is made (records kept alive in thousands made the garbage collector run full passes)."""
        cached = [self._cache.get(key) for key in keys]
        loaded = self._load_many([key for key, lr in zip(keys, cached, strict=True) if lr is None])
        for lr in cached:
            yield next(loaded) if lr is None else lr

    def _load_many(self, keys: list[tuple[str, str]]) -> Iterator[LoadedRecord]:
        """The records from the store (none of them cached), with two store queries in all, each made only
        when the iterator gets to it."""
        if not keys:
            return
        small = self.store.load_many([(kind, c, rid) for c, rid in keys for kind in ("snap", "rmeta", "held")])
        ranges = self.store.load_ranges([("upd", c, rid) for c, rid in keys])
        for i, (c, rid) in enumerate(keys):
            yield self._make(c, rid, small[3 * i], small[3 * i + 1], small[3 * i + 2], ranges[i])

    def _holds_none(self, collection: str) -> bool:
        """Whether the store holds no record of ``collection`` at all (four one-row queries)."""
        return not any(self.store.load_range((kind, collection), limit=1)
                       for kind in ("snap", "upd", "held", "rmeta"))

    def _load(self, collection: str, record_id: str, skip: frozenset[int] = frozenset()) -> LoadedRecord:
        # one query for the record's small keys (a bulk merge loads many records it has never seen)
        snap, rmeta, held = self.store.load_many([("snap", collection, record_id),
                                                  ("rmeta", collection, record_id),
                                                  ("held", collection, record_id)])
        return self._make(collection, record_id, snap, rmeta, held,
                          self.store.load_range(("upd", collection, record_id)), skip)

    def _make_new(self, collection: str, record_id: str) -> LoadedRecord:
        """``_make`` of a record the store holds nothing of (no snapshot, updates, identity or held updates):
        what it makes then, without looking for them."""
        if self.local is not None and self.local.local_updates(collection, record_id):
            return self._make(collection, record_id, None, None, None, [])
        doc = new_record_doc(self.schema.collection(collection), record_id, writer=self.device, device=self.device,
                             user=self.user, client_id=self.client_id, wall=self.wall)
        return LoadedRecord(doc, 0, [], {})

    def _make(self, collection: str, record_id: str, snap: bytes | None, rmeta: bytes | None,
              held: bytes | None, rows: list[tuple[Key, bytes]], skip: frozenset[int] = frozenset()
              ) -> LoadedRecord:
        """A loaded record from what the store holds of it."""
        coll = self.schema.collection(collection)
        writer, client = self._identity(rmeta)
        updates: list[bytes] = []
        if snap is not None:
            updates.append(snap)
        confirmed: list[int] = []
        pending: dict[int, int] = {}
        parts: list[tuple[int, bytes]] = []
        next_n = 0
        upd_bytes = 0
        for key, raw in rows:
            n = int(key[3])
            next_n = n + 1
            if n not in skip:
                confirmed.append(n)
                parts.append((n, raw[1:]))
                upd_bytes += len(raw) - 1
        local = self.local.local_updates(collection, record_id) if self.local is not None else []
        if local:
            for n, cid, update in local:
                next_n = max(next_n, n + 1)
                if n not in skip:
                    pending[n] = cid
                    parts.append((n, update))
            parts.sort(key=lambda p: p[0])  # the order they were applied in, as when all were stored here
        updates += [u for _, u in parts]
        doc = new_record_doc(coll, record_id, writer=writer, device=self.device, user=self.user, client_id=client,
                             updates=updates, held=self._held(held), wall=self.wall)
        return LoadedRecord(doc, next_n, confirmed, pending, snap_bytes=len(snap) if snap is not None else 0,
                            upd_bytes=upd_bytes)

    @staticmethod
    def _held(raw: bytes | None) -> list[bytes]:
        """Remote updates of the record still waiting for an update they build on (see RecordDoc.apply)."""
        if raw is None:
            return []
        r = Reader(raw)
        out = []
        while not r.done():
            out.append(r.bytes())
        return out

    def stored_held(self, collection: str) -> dict[str, list[bytes]]:
        """The held updates of a collection's records, by record id, from the store."""
        return {str(key[2]): self._held(raw) for key, raw in self.store.iter_range(("held", collection))}

    def save_held(self, batch: Batch, collection: str, record_id: str, held: list[bytes]) -> None:
        if not held:
            batch.remove(("held", collection, record_id))
            return
        out = bytearray()
        for u in held:
            write_bytes(out, u)
        batch.save(("held", collection, record_id), bytes(out))

    def append(self, batch: Batch, collection: str, record_id: str, update: bytes,
               change_id: int | None = None, lr: LoadedRecord | None = None) -> int:
        """Stage an update of the record (already applied to its doc) into ``batch``; return its index ``n``.

        A local change (``change_id`` given) is not staged: its outbox entry, which the caller stages with
        this ``n``, is its only stored copy. Pass ``lr``, the record the update was applied to, when other
        records were loaded since: the cache may have evicted it, and a reload from the store would not
        hold the update yet.
        """
        if lr is None:
            lr = self.get(collection, record_id)
        n = lr.next_n
        lr.next_n += 1
        if change_id is None:
            batch.save(("upd", collection, record_id, n), _CONFIRMED + update)
            lr.confirmed.append(n)
            lr.upd_bytes += len(update)
            self.maybe_compact(batch, collection, record_id, lr)
        else:
            lr.pending[n] = change_id  # nothing to compact while a change is pending
        self._put((collection, record_id), lr)  # cached again if evicted meanwhile, weighed with the update
        return n

    def confirm(self, batch: Batch, collection: str, record_id: str, updates: Mapping[int, bytes],
                lr: LoadedRecord | None = None) -> None:
        """Mark local changes as accepted by the relay: they can no longer be discarded. ``updates``: their
        Yjs updates by change id (from their outbox entries, which the caller removes in ``batch``).

        Pass ``lr``, the record as loaded before those entries left the outbox's index: loaded after, it
        would lack them (the cache may have evicted it since: it is put back)."""
        if lr is None:
            lr = self.get(collection, record_id)
        else:
            self._put((collection, record_id), lr)  # the cached copy again (it may have been evicted since)
        for n, cid in list(lr.pending.items()):
            update = updates.get(cid)
            if update is not None:
                batch.save(("upd", collection, record_id, n), _CONFIRMED + update)
                del lr.pending[n]
                lr.confirmed.append(n)
                lr.upd_bytes += len(update)
        self.maybe_compact(batch, collection, record_id, lr)

    def maybe_compact(self, batch: Batch, collection: str, record_id: str, lr: LoadedRecord | None = None) -> None:
        lr = lr or self.get(collection, record_id)
        n = len(lr.confirmed)
        if lr.pending or n < self.compact_after or (n < self.compact_max
                                                    and lr.upd_bytes < self.compact_ratio * lr.snap_bytes):
            return
        self.compact(batch, collection, record_id, lr)

    def compact(self, batch: Batch, collection: str, record_id: str, lr: LoadedRecord | None = None) -> None:
        """Fold every update into the snapshot (only when no local change is pending)."""
        lr = lr or self.get(collection, record_id)
        if lr.pending:
            return
        batch.remove_range(("upd", collection, record_id))
        snap = lr.doc.full_update()
        batch.save(("snap", collection, record_id), snap)
        lr.confirmed.clear()
        lr.snap_bytes, lr.upd_bytes = len(snap), 0

    def discard(self, batch: Batch, collection: str, record_id: str, change_ids: set[int]) -> LoadedRecord:
        """Drop local pending changes from the record and rebuild it without them.

        Yjs needs a client's updates without gaps, so the caller passes the record's later pending changes
        too. The record gets a fresh Yjs client id and writer tag: discarded changes that already left the
        device (an export) then show up as concurrent values and never silently overwrite new ones.

        A peer's update merged since may build on the discarded changes (its history entries follow theirs,
        its slot write replaces theirs): without them it is no longer integrated. Left among the stored
        updates, Yrs would keep it pending in memory (and drop it from the rebuilt document) while the
        record's stored state vector still claimed it, so a peer's ``export_updates(since=...)`` would
        never send it again. Such updates move to ``held``, as if they had arrived before the changes they
        build on: they go in when those come back (from a peer that got them before the discard).
        """
        lr = self.get(collection, record_id)
        drop = {n for n, cid in lr.pending.items() if cid in change_ids}  # only in the outbox
        raw = self.store.load(("rmeta", collection, record_id))
        epoch = (orjson.loads(raw)["epoch"] if raw else 0) + 1
        client = self.new_client_id()
        batch.save(("rmeta", collection, record_id), orjson.dumps({"epoch": epoch, "client": client}))
        snap, held_raw = self.store.load_many([("snap", collection, record_id), ("held", collection, record_id)])
        rows = self.store.load_range(("upd", collection, record_id))
        moved: list[bytes] = []
        while True:  # each update moved out may leave a later one that builds on it out too
            fresh = self._make(collection, record_id, snap, None, held_raw, rows, frozenset(drop))
            state = fresh.doc.state_vector()
            out = [(int(key[3]), body[1:]) for key, body in rows
                   if int(key[3]) not in drop and not integrated(body[1:], state)]
            if not out:
                break
            for n, update in out:
                drop.add(n)
                moved.append(update)
                batch.remove(("upd", collection, record_id, n))
        held = list(fresh.doc.held)
        if moved:
            held += [u for u in moved if u not in held]
            self.save_held(batch, collection, record_id, held)
        doc = new_record_doc(fresh.doc.collection, record_id, writer=f"{self.device}#{epoch}",
                             device=self.device, user=self.user, client_id=client,
                             updates=[fresh.doc.full_update()], held=held, wall=self.wall)
        fresh.doc = doc
        self._put((collection, record_id), fresh)
        return fresh

    def reload(self, collection: str, record_id: str) -> None:
        self._drop((collection, record_id))

    def forget(self) -> None:
        """Drop every cached record, pins included (the relay's writer after a failed commit)."""
        self._cache.clear()
        self._sizes.clear()
        self._pins.clear()
        self.cached_bytes = 0

    def stored_parts(self, collection: str, record_id: str) -> list[bytes]:
        """The record's stored Yjs updates (snapshot, updates, pending local changes), without loading it."""
        parts: list[bytes] = []
        snap = self.store.load(("snap", collection, record_id))
        if snap is not None:
            parts.append(snap)
        numbered = [(int(key[3]), raw[1:]) for key, raw in self.store.load_range(("upd", collection, record_id))]
        if self.local is not None:
            local = self.local.local_updates(collection, record_id)
            if local:
                numbered += [(n, u) for n, _, u in local]
                numbered.sort(key=lambda p: p[0])
        return parts + [u for _, u in numbered]

    def record_ids(self, collection: str) -> list[str]:
        """Every record id of a collection, from the store (snapshots, updates and pending changes)."""
        ids: set[str] = set(self.local.local_records(collection)) if self.local is not None else set()
        for key, _ in self.store.iter_range(("snap", collection)):
            ids.add(str(key[2]))
        for key, _ in self.store.iter_range(("upd", collection)):
            ids.add(str(key[2]))
        return sorted(ids)
