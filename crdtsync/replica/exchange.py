"""What crosses devices: the hooks a sync client and the simulator use (outgoing changes, status,
acknowledgements, merging remote updates, eviction), and merging by hand (``export_updates`` and
``import_updates``). No network here."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson
from pycrdt import get_state, get_update

from ..codec import Reader, write_bytes
from ..errors import MalformedUpdate, RemoteValidationError
from ..model.merging import merged
from ..store.base import Batch
from .base import ReplicaBase
from .docs import LoadedRecord
from .outbox import Outbox
from .types import ChangeEvent, PendingChange, Record

__all__ = ["ExchangingReplica"]

_EXPORT_MAGIC = b"CSX1"
_VECTOR_MAGIC = b"CSV1"
_EMPTY_UPDATE = b"\x00\x00"
_LOAD_CHUNK = 256  # records loaded per store query when merging (bounds what one merge holds at once)


class ExchangingReplica(ReplicaBase):
    """The sync hooks and the export and import of a replica (see the module docstring); use ``Replica``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_set_aside()  # the schema may accept them now (the app was upgraded)

    # -- sync hooks (used by SyncClient and the simulator) -------------------------------------------------

    def outgoing(self, collections: Iterable[str] | None = None, limit: int | None = None, *,
                 skip: Iterable[tuple[str, str]] = ()) -> list[tuple[PendingChange, bytes]]:
        """Pending changes ready to send, in order: a record with a rejected change holds its later ones.
        ``skip``: records (collection, id) whose changes are left out (the relay held them this run).

        Changes of a collection the open schema lacks (an older app version opened the store) stay in the
        outbox, unsent, until a schema with it opens the replica again (or they are discarded): taking them
        stopped every sync of the device in a loop."""
        names = self._names(collections)
        wanted = set(names) if names is not None else None
        known = self.schema.collections
        held: set[tuple[str, str]] = set(skip)
        out: list[tuple[PendingChange, bytes]] = []
        for e in self.outbox.entries():
            key = (e.collection, e.record)
            if e.status == "error":
                held.add(key)
                continue
            if key in held or (wanted is not None and e.collection not in wanted) or e.collection not in known:
                continue
            out.append((e.public(), self.outbox.update_bytes(e.id)))
            if limit is not None and len(out) >= limit:
                break
        return out

    def _restatus(self, ids: Iterable[int], status: str, error: tuple[str, str] | None = None,
                  persist: bool = False, waiting: Mapping[int, str | None] | None = None) -> None:
        touched = {(e.collection, e.record) for i in ids if (e := self.outbox.get(i)) is not None}
        # a record whose row is not written yet is read from its document with the status of the moment:
        # take it before the change of status, to tell whether it changes
        before = {key: self._row(self._coll(key[0]), key[1]) for key in touched if key in self._dirty}
        batch = Batch()
        self.outbox.set_status(batch if persist else None, ids, status, error)  # type: ignore[arg-type]
        if waiting is not None:  # (in the same commit as the rows whose status changed)
            self.outbox.set_waiting(batch, waiting)
        events = []
        for c, rid in sorted(touched):
            coll = self._coll(c)
            rec = before[(c, rid)] if (c, rid) in before else self._row(coll, rid)
            if rec is None:
                continue
            st, err = self._status(c, rid, bool(rec.conflicts))
            if (st, err) != (rec.status, rec.error):
                lr = self.docs.get(c, rid)
                rec = self._save_row(batch, coll, lr.doc)
                events.append(ChangeEvent(c, rid, "status", rec))
        self._commit(batch)
        self._emit(events)

    def mark_syncing(self, ids: Iterable[int]) -> None:
        self._restatus(list(ids), "syncing")

    def mark_pending(self, ids: Iterable[int]) -> None:
        self._restatus(list(ids), "pending")

    def hold(self, ids: Iterable[int], reasons: Mapping[int, str] | None = None) -> None:
        """The relay held these changes back, neither storing nor rejecting them: they are ``pending``
        again, to be sent at the next sync, each with the relay's reason (``reasons``), kept with it (in
        ``PendingChange.waiting``) until the next answer replaces it. A change held without a reason
        (behind an earlier change of its record, or by a relay that gives none) has its reason cleared."""
        ids = list(ids)
        reasons = reasons or {}
        self._restatus(ids, "pending", waiting={i: reasons.get(i) for i in ids})

    def reject(self, change_id: int, code: str, reason: str) -> None:
        """The relay refused a change: keep it, marked ``error``; its record holds later changes."""
        self._restatus([change_id], "error", (code, reason), persist=True)

    def retry(self, collection: str, id: str) -> None:
        """Put a record's rejected changes back in the queue (after access was granted again, say). A record
        without any does not change; one that does not exist here raises ``RecordNotFound``."""
        self._missing(self._coll(collection), self._id_arg(collection, id))
        ids = [e.id for e in self.outbox.for_record(collection, id) if e.status == "error"]
        self._restatus(ids, "pending", None, persist=True)

    def acknowledge(self, ids: Iterable[int]) -> None:
        """The relay stored these changes: they leave the outbox; their records become ``synced``."""
        ids = list(ids)
        batch = Batch()
        known = [e for i in ids if (e := self.outbox.get(i)) is not None]
        updates = self.outbox.updates_of([e.id for e in known])
        # load the records while the outbox still lists these changes: a record loaded after would miss them
        loaded = {key: self.docs.get(*key) for key in sorted({(e.collection, e.record) for e in known})}
        try:
            removed = self.outbox.remove(batch, ids)
            by_record: dict[tuple[str, str], set[int]] = defaultdict(set)
            for e in removed:
                by_record[(e.collection, e.record)].add(e.id)
            events = []
            for (c, rid), cids in sorted(by_record.items()):
                self.docs.confirm(batch, c, rid, {i: updates[i] for i in cids if i in updates}, lr=loaded[(c, rid)])
                coll = self._coll(c)
                rec = self._save_row(batch, coll, loaded[(c, rid)].doc)
                events.append(ChangeEvent(c, rid, "status", rec))
            batch.save(("meta", "hlc"), str(self.clock.last).encode())
            top = max((e.id for e in removed), default=0)
            if top > (self.last_acknowledged() or 0):
                batch.save(("meta", "acked"), str(top).encode())
            self._commit(batch)
        except BaseException:
            # the store is the truth: forget what memory changed of this failed acknowledgement
            for key in loaded:
                self.docs.reload(*key)
            self.outbox = self.docs.local = Outbox(self.store)
            raise
        self._emit(events)

    def apply_remote(self, items: Iterable[tuple[str, str, bytes]], *,
                     meta: Mapping[str, bytes] | None = None) -> list[Record]:
        """Merge updates from peers: all of them, or (if any is malformed, or of a collection the schema
        lacks) none. Their content's structure is checked, not the schema's rules: the relay enforced those
        on each change as it arrived, and a value a later schema refuses (a limit tightened), a field it
        lacks (kept, ``RecordState.hidden``) or a value another kind wrote shows as stored (see
        ``model/checks.py`` and docs/records.md).

        ``meta``: app metadata (``set_meta`` names and values) written in the same commit as the merge, so
        that both or neither are stored: a sync client's cursor for the page it applies (one durable
        commit per page instead of two).

        Returns the records that changed.
        """
        grouped: dict[tuple[str, str], list[bytes]] = defaultdict(list)
        for c, rid, update in items:
            if c not in self.schema.collections:
                raise RemoteValidationError(str(c), str(rid), None, "unknown collection")
            grouped[(c, rid)].append(update)
        return self._merge(grouped, meta)

    def _merge(self, grouped: Mapping[tuple[str, str], list[bytes]], meta: Mapping[str, bytes] | None
               ) -> list[Record]:
        """``apply_remote`` of updates grouped by record, every collection known.

        Records are loaded, merged and staged a chunk at a time: what the merge keeps until its commit is
        the batch (their new updates and rows) and the records returned, not their documents (an import of
        20,000 records held all of them, and peaked 314 MB above the replica's usual size). A record staged
        and then evicted from the cache before the commit is loaded from the store afterwards, which has it
        by then (each record is merged once: nothing here loads it again before the commit)."""
        touched: list[tuple[str, str]] = []
        merged_keys: set[tuple[str, str]] = set()
        changed: list[Record] = []
        batch = Batch()
        try:
            keys = list(grouped)
            for start in range(0, len(keys), _LOAD_CHUNK):
                chunk = keys[start:start + _LOAD_CHUNK]
                touched += chunk
                fresh: dict[tuple[str, str], tuple[LoadedRecord, bytes]] = {}
                for (c, rid), lr in zip(chunk, self.docs.get_many(chunk), strict=True):
                    self._merge_one(batch, c, rid, lr, grouped[(c, rid)], fresh)
                for (c, rid), (lr, update) in fresh.items():
                    doc = lr.doc
                    self.docs.append(batch, c, rid, update, lr=lr)
                    exists = doc.state().exists  # not yet, when only updates that build on a missing one came
                    self.clock.observe(doc.max_time())
                    if exists:
                        changed.append(self._save_row(batch, self._coll(c), doc))
                merged_keys.update(fresh)
            back = self._left.intersection(merged_keys) if self._left else ()
            for c, rid in back:  # news of a record that left the scope: it is back in it
                batch.remove(("meta", "left", c, rid))
            if merged_keys:
                batch.save(("meta", "hlc"), str(self.clock.last).encode())
            for name, value in (meta or {}).items():
                batch.save(("meta", "app", name), value)
            self._commit(batch)
            self._left.difference_update(back)
        except BaseException:
            for c, rid in touched:
                self.docs.reload(c, rid)
            raise
        self._emit(ChangeEvent(r.collection, r.id, "remote", r) for r in changed)
        return changed

    def record_ids(self, collection: str) -> list[str]:
        """Every record id of ``collection`` this replica stores (deleted ones and pending creates
        included), from the store: for evicting a whole collection (``evict``)."""
        self._coll(collection)
        return self.docs.record_ids(collection)

    def evict(self, records: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Remove records from this device because they left its sync scope (the relay says so when a
        record stops matching the device's ``where`` limit, e.g. it was reassigned to another owner).

        A record with pending changes stays, with them: the user's work is never dropped this way (the
        relay accepts or rejects those changes; a rejected one is kept as ``error`` for the user to export
        or discard). It leaves once the user discarded them, unless news of it came meanwhile (it is back
        in scope). Records not known here are ignored; an id that is not a str raises ``LocalError`` (before
        anything is removed). Returns the records removed, each also announced by a ``ChangeEvent`` with
        ``origin="remote"`` and ``record=None``. If such a record comes back into scope, the relay sends its
        whole state again.
        """
        gone: list[tuple[str, str]] = []
        batch = Batch()
        wanted = [(c, self._id_arg(c, rid)) for c, rid in records]
        for c, rid in dict.fromkeys(wanted):
            if c not in self.schema.collections or not self.docs.exists(c, rid):
                continue
            if self.outbox.for_record(c, rid):
                if (c, rid) not in self._left:
                    batch.save(("meta", "left", c, rid), b"")
                continue
            self._stage_removal(batch, c, rid)
            gone.append((c, rid))
        if not batch:
            return []
        try:
            self._commit(batch)
        finally:
            for c, rid in gone:
                self.docs.reload(c, rid)
        self._left.update(k for k in ((str(k[2]), str(k[3])) for k in batch.saves) if k not in gone)
        self._left.difference_update(gone)
        self._emit(ChangeEvent(c, rid, "remote", None) for c, rid in gone)
        return gone

    def _stage_removal(self, batch: Batch, c: str, rid: str) -> None:
        """Stage the removal of a record that left the scope (``evict``), its ``left`` mark included."""
        batch.remove_range(("upd", c, rid))
        batch.remove(("snap", c, rid))
        batch.remove(("held", c, rid))
        batch.remove(("row", c, rid))  # ("rmeta", c, rid) stays: its writer epoch must only grow
        if (c, rid) in self._left:
            batch.remove(("meta", "left", c, rid))

    def _merge_one(self, batch: Batch, c: str, rid: str, lr: LoadedRecord, updates: list[bytes],
                   fresh: dict[tuple[str, str], tuple[LoadedRecord, bytes]]) -> None:
        """Apply one record's remote updates to its loaded document and check the result."""
        doc = lr.doc
        held = list(doc.held)
        try:
            new = doc.apply_many(updates)  # one apply (one integration check) per record
        except BaseException as e:
            # Yrs can panic on hostile bytes (pyo3's PanicException derives from BaseException): refused as
            # any malformed update; ``_merge`` drops the documents it touched (the store is the truth)
            if type(e).__name__ != "PanicException":
                raise
            raise MalformedUpdate(f"{c}/{rid}: the update could not be applied (Yrs: {e})") from None
        if new:
            # the structure only: the relay enforced the rules on each change as it arrived, under the schema
            # of the time; a later one (a limit tightened, a field removed) must not refuse what was stored
            # before it (``model/checks.py``)
            doc.check(rules=False)
            fresh[(c, rid)] = (lr, new)
        if doc.held != held:
            self.docs.save_held(batch, c, rid, doc.held)

    def last_acknowledged(self) -> int | None:
        """The highest id of a change of this store a relay acknowledged (None before the first): a relay
        holding a later change of this device that this store never sent means the store is not the
        device's latest (restored from a backup, or copied) or another installation uses its device id."""
        raw = self.store.load(("meta", "acked"))
        return int(raw) if raw is not None else None

    def returns(self, limit: int | None = None) -> list[int]:
        """Ids of changes discarded here that a relay may have stored before (their ack lost, or in flight
        when discarded): a sync asks the relay for them back (``Pull.returns``), as a peer's changes would
        come back. The oldest first, at most ``limit``."""
        rows = self.store.load_range(("meta", "returns"), limit=limit)
        return [int(key[2]) for key, _ in rows]

    def returned(self, ids: Iterable[int]) -> None:
        """The relay answered for these discarded changes (``returns``): stop asking for them. They count as
        acknowledged from then on (``last_acknowledged``): the relay may hold them, and they are this
        store's own."""
        ids = list(ids)
        if not ids:
            return
        batch = Batch()
        for i in ids:
            batch.remove(("meta", "returns", i))
        if max(ids) > (self.last_acknowledged() or 0):
            batch.save(("meta", "acked"), str(max(ids)).encode())
        self._commit(batch)

    def set_aside(self, collection: str, record: str, update: bytes) -> None:
        """Keep a remote update this replica refused (``apply_remote`` raised): one a newer schema accepts
        (a collection added on the relay and the other devices first, in a rolling upgrade) must not be
        lost with the cursor moving past it. ``retry_set_aside`` tries them again, and opening the replica
        does."""
        digest = hashlib.blake2b(update, digest_size=8).hexdigest()  # (the same update twice: kept once)
        self.store.save(("aside", collection, record, digest), update)

    def retry_set_aside(self) -> list[Record]:
        """Apply the updates ``set_aside`` kept, one by one: those accepted now leave the pile, the others
        stay. Returns the records that changed."""
        out: list[Record] = []
        for key, update in self.store.load_range(("aside",)):
            c, rid = str(key[1]), str(key[2])
            try:
                out += self.apply_remote([(c, rid, update)])
            except (MalformedUpdate, RemoteValidationError):
                continue
            self.store.remove(key)
        return out

    def set_aside_count(self) -> int:
        """How many refused remote updates are kept for a later schema (``set_aside``)."""
        return len(self.store.load_range(("aside",)))

    def get_meta(self, name: str) -> bytes | None:
        """The bytes an app stored under ``name`` with ``set_meta`` (None if none): app state kept in the
        replica's store, beside its records (it never syncs). The sync client keeps its cursor so."""
        return self.store.load(("meta", "app", name))

    def set_meta(self, name: str, value: bytes) -> None:
        """Store ``value`` under ``name`` in the replica's store (committed at once; local, never synced)."""
        self.store.save(("meta", "app", name), value)

    # -- merging by hand -----------------------------------------------------------------------------------

    def _stored_update(self, collection: str, rid: str) -> bytes:
        parts = self.docs.stored_parts(collection, rid)
        if not parts:
            return _EMPTY_UPDATE
        return merged(parts)

    def export_updates(self, collections: Iterable[str] | None = None, since: bytes | None = None) -> bytes:
        """Everything this replica knows (of some collections: a list of names, not one name), as one blob
        for ``import_updates``.

        With ``since`` (another replica's ``state_vectors()``), only what that replica lacks. A record's
        held updates (those waiting here for an update they build on) go along as entries of their own:
        the receiver may have what they wait for, and merged into the record's update they would hold it
        back whole where it does not.
        """
        vectors = self._parse_vectors(since) if since is not None else {}
        out = bytearray(_EXPORT_MAGIC)
        for coll in self._colls(collections):
            held = self.docs.stored_held(coll.name)
            for rid in sorted(set(self.docs.record_ids(coll.name)) | set(held)):
                sv = vectors.get((coll.name, rid))
                for update in [self._stored_update(coll.name, rid), *held.get(rid, ())]:
                    if sv is not None:
                        update = get_update(update, sv)
                    if update == _EMPTY_UPDATE:
                        continue
                    write_bytes(out, orjson.dumps([coll.name, rid]))
                    write_bytes(out, update)
        return bytes(out)

    def state_vectors(self, collections: Iterable[str] | None = None) -> bytes:
        """What this replica has, per record, for a peer's ``export_updates(since=...)``."""
        out = bytearray(_VECTOR_MAGIC)
        for coll in self._colls(collections):
            for rid in self.docs.record_ids(coll.name):
                write_bytes(out, orjson.dumps([coll.name, rid]))
                write_bytes(out, get_state(self._stored_update(coll.name, rid)))
        return bytes(out)

    @staticmethod
    def _entries(blob: bytes, magic: bytes) -> Iterator[tuple[tuple[str, str], bytes]]:
        """The (collection, id) and bytes of each entry of an export or a state-vector blob."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise MalformedUpdate(f"expected bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        if blob[:4] != magic:
            raise MalformedUpdate(f"not a crdtsync {'export' if magic == _EXPORT_MAGIC else 'state vector'} "
                                  f"(starts with {blob[:4]!r})")
        r = Reader(blob, 4)
        try:
            while not r.done():
                head = orjson.loads(r.bytes())
                body = r.bytes()
                if not (isinstance(head, list) and len(head) == 2 and isinstance(head[0], str)
                        and isinstance(head[1], str)):
                    raise ValueError(f"bad entry header {head!r}")
                yield (head[0], head[1]), body
        except (ValueError, orjson.JSONDecodeError) as e:
            raise MalformedUpdate(f"malformed blob at byte {r.pos}: {e}") from None

    @classmethod
    def _parse_vectors(cls, blob: bytes) -> dict[tuple[str, str], bytes]:
        """A state-vector blob (``state_vectors``): each record's state vector."""
        return dict(cls._entries(blob, _VECTOR_MAGIC))

    @classmethod
    def _parse_export(cls, blob: bytes) -> dict[tuple[str, str], list[bytes]]:
        """An export: each record's updates, as they came (a record's held updates follow its update)."""
        out: dict[tuple[str, str], list[bytes]] = {}
        for key, body in cls._entries(blob, _EXPORT_MAGIC):
            got = out.get(key)
            if got is None:
                out[key] = [body]
            else:
                got.append(body)
        return out

    def import_updates(self, blob: bytes) -> list[Record]:
        """Merge a blob from another replica's ``export_updates``. Idempotent, in any order, any number
        of times. A malformed blob, or one with a collection the schema lacks, raises and changes nothing
        (its content is checked as ``apply_remote`` checks it). Returns the records that changed."""
        entries = self._parse_export(blob)
        collections = self.schema.collections
        for c, rid in entries:  # as ``apply_remote`` checks them
            if c not in collections:
                raise RemoteValidationError(str(c), str(rid), None, "unknown collection")
        return self._merge(entries, None)
