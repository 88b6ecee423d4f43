"""The replica: a device's records, schema, outbox and sync status, on a local byte store.

Every local write is checked against the schema first (a bad write raises ``ValidationError`` and stores
nothing), then applied to the record's document, and its outbox entry (which holds its update) is
committed in one transaction before the call returns: a process killed at any point loses no change that
a call returned from.

The record's materialised row is written later: with the rows of up to ``_DIRTY_MAX`` other records
written locally since their rows were (one key per write instead of two halves the pages a write
commits), when a merge, status change or acknowledgement rewrites it, or on ``close``. Until then reads
take that record from its document, so they never see a row behind a returned write. A replica reopened
after a crash finds those records by the ``x`` in their rows (the newest local change a row reflects)
against their pending changes in the outbox, and writes their rows before anything else.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
from pycrdt import get_state, get_update, merge_updates

from ..clock import Hlc
from ..codec import Reader, write_bytes
from ..errors import (
    EncryptionError,
    LocalError,
    MalformedUpdate,
    NoSuchConflict,
    RecordBlocked,
    RecordDeleted,
    RecordExists,
    RecordNotFound,
    RemoteValidationError,
    ValidationError,
    WrongKeyError,
)
from ..model.record import RecordDoc
from ..model.state import Conflict, HistoryEntry
from ..schema import Collection, Invalid, Schema, Set
from ..store.base import Batch, ByteStore
from ..store.encrypted import EncryptedStore, is_encrypted
from ..store.memory import MemoryStore
from ..store.sqlite import SQLiteStore, Synchronous
from .docs import LoadedRecord, RecordDocs
from .layout import upgrade
from .outbox import Outbox, OutboxEntry
from .rows import Rows, Where, row_change
from .types import ChangeEvent, PendingChange, Record, RecordStatus

__all__ = ["Replica"]

log = logging.getLogger("crdtsync.replica")

_EXPORT_MAGIC = b"CSX1"
_VECTOR_MAGIC = b"CSV1"
_EMPTY_UPDATE = b"\x00\x00"
_LOAD_CHUNK = 256  # records loaded per store query when merging (bounds what one merge holds at once)
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_new = object.__new__
_DIRTY_MAX = 64  # records written locally whose rows are not written yet, at most (see the docstring)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 100 or any(ord(ch) < 32 for ch in value) \
            or "#" in value:
        raise LocalError(f"{kind} must be a str of 1 to 100 printable characters without '#', got {value!r}")
    return value


class Replica:
    """A device's copy of the records. Open it with ``Replica.open(path, schema, device=, user=)``."""

    def __init__(self, store: ByteStore, schema: Schema, *, device: str, user: str,
                 wall: Callable[[], int] = _wall_ms, random_bytes: Callable[[int], bytes] = os.urandom,
                 cache_size: int = 2000, compact_after: int = 64) -> None:
        self.schema = schema
        self.device = _check_name("device", device)
        self.user = _check_name("user", user)
        self.store = store
        self._random = random_bytes
        self._wall = wall
        ident = store.load(("meta", "identity"))
        if ident is None:
            client_id = self._new_client_id()
            store.save(("meta", "identity"), orjson.dumps({"device": device, "client_id": client_id}))
        else:
            meta = orjson.loads(ident)
            if meta["device"] != device:
                raise LocalError(f"this store belongs to device {meta['device']!r}, not {device!r}; "
                                 "each device needs its own store")
            client_id = int(meta["client_id"])
        upgrade(store)
        self.outbox = Outbox(store)
        raw_hlc = store.load(("meta", "hlc"))
        self.clock = Hlc(wall, max(int(raw_hlc) if raw_hlc else 0, self.outbox.last_id()))
        self.docs = RecordDocs(store, schema, device=device, user=user, client_id=client_id,
                               new_client_id=self._new_client_id, cache_size=cache_size,
                               compact_after=compact_after, wall=wall, local=self.outbox)
        self.rows = Rows(store)
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        self._closed = False
        #: records whose stored rows may be behind their documents (an ordered set): read from the document
        self._dirty: dict[tuple[str, str], None] = {}
        self._find_dirty_rows()

    def _find_dirty_rows(self) -> None:
        """After a crash: the records whose rows are behind their pending changes (see the docstring)."""
        queued = self.outbox.records()
        keys = [("row", c, rid) for c, rid in queued]
        try:
            raws = self.store.load_many(keys)
        except WrongKeyError:  # a tampered row: left as it is, for reads to report (the others are checked)
            raws = []
            for k in keys:
                try:
                    raws.append(self.store.load(k))
                except WrongKeyError:
                    raws.append(b'{"x": null}')
        for key, raw in zip(queued, raws, strict=True):
            if raw is None or row_change(raw) not in (None, self.outbox.last_for(*key)):
                self._dirty[key] = None  # a crash came before its row was written
        if self._dirty:  # write them now, so that reads come from rows again
            batch = Batch()
            self._stage_dirty_rows(batch)
            self._commit(batch)
            self.docs.forget()  # loaded for that only

    @classmethod
    def open(cls, path: str | Path, schema: Schema, *, device: str, user: str, key: bytes | str | None = None,
             synchronous: Synchronous = "FULL", **kwargs: Any) -> Replica:
        """Open (or create) a replica stored at ``path`` (a SQLite file, or ``":memory:"``).

        ``key`` encrypts the store at rest (AES-GCM); a wrong key raises ``WrongKeyError``.
        """
        # checkpoints in the background: a sync's commit costs what it writes, however large the store
        inner: ByteStore = MemoryStore() if str(path) == ":memory:" else SQLiteStore(
            path, synchronous=synchronous, checkpoint="background")
        try:
            if key is not None:
                store: ByteStore = EncryptedStore(inner, key)
            elif is_encrypted(inner):
                raise EncryptionError(f"{path} is encrypted: open it with its key")
            else:
                store = inner
            return cls(store, schema, device=device, user=user, **kwargs)
        except BaseException:
            inner.close()
            raise

    def _new_client_id(self) -> int:
        return int.from_bytes(self._random(4), "big") & 0x7FFFFFFF or 1

    def new_id(self) -> str:
        """A fresh record id made on the device: time-ordered, 26 characters, 80 random bits."""
        n = (self._wall() << 80) | int.from_bytes(self._random(10), "big")
        chars = []
        for _ in range(26):
            chars.append(_ID_ALPHABET[n & 31])
            n >>= 5
        return "".join(reversed(chars))

    def close(self) -> None:
        """Write the rows not written yet, and close the store."""
        if not self._closed:
            self._closed = True
            try:
                if self._dirty:
                    batch = Batch()
                    self._stage_dirty_rows(batch)
                    self._commit(batch)
            except Exception:  # they are rebuilt on the next open
                log.warning("could not write %d rows on close", len(self._dirty), exc_info=True)
            finally:
                self.store.close()

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events --------------------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        """Call ``callback`` after every change to a record; returns a function that unsubscribes.

        A callback that raises is logged and does not disturb the write, which is already stored.
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, events: Iterable[ChangeEvent]) -> None:
        if not self._listeners:  # (a generator passed in is then never run: a bulk merge makes no events)
            return
        for ev in events:
            for cb in list(self._listeners):
                try:
                    cb(ev)
                except Exception:
                    log.exception("change listener %r failed on %s/%s", cb, ev.collection, ev.id)

    # -- helpers -------------------------------------------------------------------------------------------

    def _coll(self, name: str) -> Collection:
        return self.schema.collection(name)

    def _status(self, coll: str, rid: str, has_conflicts: bool) -> tuple[RecordStatus, str | None]:
        err, syncing, queued = self.outbox.summary(coll, rid)
        if err is not None:
            code, reason = err.error or ("error", "")
            return "error", f"{code}: {reason}"
        if has_conflicts:
            return "conflict", None
        if syncing:
            return "syncing", None
        if queued:
            return "pending", None
        return "synced", None

    def _save_row(self, batch: Batch, coll: Collection, doc: RecordDoc) -> Record:
        state = doc.state()
        status, error = self._status(coll.name, doc.id, bool(state.conflicts))
        self.rows.save(batch, coll, state, status, error, self.outbox.last_for(coll.name, doc.id))
        # the Record is what decode_row would make of the row just written, built without the round trip,
        # and without the frozen ``__init__`` (one ``object.__setattr__`` per field: a merge makes one per record)
        rec = _new(Record)
        rec.__dict__.update(collection=coll.name, id=doc.id, fields=dict(state.fields), status=status,
                            conflicts=state.conflicts, deleted=state.deleted, error=error, updated=state.updated,
                            changed_by=dict(state.changed_by))
        return rec

    def _record(self, coll: Collection, doc: RecordDoc) -> Record | None:
        """The record as its row would show it, from its document (None if it does not exist)."""
        state = doc.state()
        if not state.exists:
            return None
        status, error = self._status(coll.name, doc.id, bool(state.conflicts))
        return Record(coll.name, doc.id, dict(state.fields), status, state.conflicts, state.deleted, error,
                      state.updated, dict(state.changed_by))

    def _stage_dirty_rows(self, batch: Batch) -> None:
        """Stage the rows not written yet into ``batch`` (``_commit`` forgets them once it is stored)."""
        for c, rid in list(self._dirty):
            lr = self.docs.get(c, rid)
            if lr.doc.state().exists:
                self._save_row(batch, self._coll(c), lr.doc)
            else:
                batch.remove(("row", c, rid))

    def _commit(self, batch: Batch) -> None:
        """Commit ``batch``; the rows it writes (or removes) are no longer behind their records."""
        self.store.commit(batch)
        if self._dirty:
            for key in [*batch.saves, *batch.removes]:
                if key[0] == "row":
                    self._dirty.pop((str(key[1]), str(key[2])), None)

    def _overlay(self, coll: Collection) -> dict[str, Record | None]:
        """The records of ``coll`` whose rows are not written yet, from their documents, by id."""
        return {rid: self._record(coll, self.docs.get(c, rid).doc) for c, rid in list(self._dirty) if c == coll.name}

    def _check_id(self, coll: Collection, rid: object) -> str:
        if not isinstance(rid, str) or not 0 < len(rid) <= 200 or any(ord(ch) < 32 for ch in rid):
            raise ValidationError(coll.name, repr(rid), None, "record ids are str of 1 to 200 printable characters")
        return rid

    def _row(self, coll: Collection, rid: str) -> Record | None:
        if (coll.name, rid) in self._dirty:
            return self._record(coll, self.docs.get(coll.name, rid).doc)
        return self.rows.load(coll, rid)

    def _writable(self, coll: Collection, rid: str) -> LoadedRecord:
        """The loaded record; raise unless it exists, is not deleted and holds no rejected change.

        Checked on the record's document (the one the write is about to load anyway), not its row: a
        row decode per write was a fifth of the cost of ``update()``.
        """
        if not isinstance(rid, str):
            raise RecordNotFound(f"{coll.name}/{rid!r} does not exist")
        lr = self.docs.cached(coll.name, rid)
        if lr is None and self.docs.exists(coll.name, rid):
            lr = self.docs.get(coll.name, rid)
        state = lr.doc.state() if lr is not None else None
        if lr is None or state is None or not state.exists:
            raise RecordNotFound(f"{coll.name}/{rid} does not exist")
        if state.deleted:
            raise RecordDeleted(f"{coll.name}/{rid} is deleted; restore() it first")
        self._not_blocked(coll, rid)
        return lr

    def _not_blocked(self, coll: Collection, rid: str) -> None:
        err, _, _ = self.outbox.summary(coll.name, rid)
        if err is not None:
            code, reason = err.error or ("error", "")
            raise RecordBlocked(f"{coll.name}/{rid} has a rejected change ({code}: {reason}); fix() it with "
                                "corrected values, discard_record() it, or retry() it once the relay accepts it")

    def _commit_local(self, coll: Collection, rid: str, op: str, shown: dict[str, Any],
                      write: Callable[[RecordDoc, int], bytes], lr: LoadedRecord | None = None) -> None:
        if lr is None:
            lr = self.docs.get(coll.name, rid)
        t = self.clock.now()
        update = write(lr.doc, t)
        if not update:
            return
        batch = Batch({}, set(), [])  # (the default factories cost three calls)
        key = (coll.name, rid)
        try:
            n = self.docs.append(batch, coll.name, rid, update, change_id=t, lr=lr)
            self.outbox.add(batch, OutboxEntry(t, coll.name, rid, op, shown, n=n), update)
            # the row waits (see the module docstring), unless too many rows wait already
            flush = len(self._dirty) >= _DIRTY_MAX
            if flush:
                self._stage_dirty_rows(batch)
                self._save_row(batch, coll, lr.doc)
            self._commit(batch)
        except BaseException:
            # the store is the truth: drop what memory holds of this failed write
            self.outbox.remove(Batch(), [t])
            self.docs.reload(coll.name, rid)
            raise
        if not flush:
            self._dirty[key] = None
        if self._listeners:
            self._emit([ChangeEvent(coll.name, rid, "local", self._record(coll, lr.doc))])

    @staticmethod
    def _shown(coll: Collection, values: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for n, v in values.items():
            f = coll.fields[n]
            out[n] = sorted((f.of.encode(x) for x in v), key=repr) if isinstance(f, Set) else f.encode(v)
        return out

    # -- local writes --------------------------------------------------------------------------------------

    def create(self, collection: str, values: Mapping[str, Any], *, id: str | None = None) -> str:
        """Create a record; returns its id (made on the device unless given)."""
        coll = self._coll(collection)
        rid = self.new_id() if id is None else self._check_id(coll, id)
        checked = coll.check(rid, values, create=True)
        if self._row(coll, rid) is not None:
            raise RecordExists(f"{collection}/{rid} already exists")
        self._commit_local(coll, rid, "create", self._shown(coll, checked),
                           lambda doc, t: doc.write(checked, t, op="create", alive=True))
        return rid

    def update(self, collection: str, id: str, values: Mapping[str, Any]) -> None:
        """Change some fields. Text fields get a character diff; sets their added/removed elements;
        counters the difference (use ``increment`` for concurrent-safe counting)."""
        coll = self._coll(collection)
        checked = coll.check(id, values, create=False)
        lr = self._writable(coll, id)
        if checked:
            self._commit_local(coll, id, "update", self._shown(coll, checked),
                               lambda doc, t: doc.write(checked, t), lr)

    def increment(self, collection: str, id: str, field: str, by: int = 1) -> None:
        """Add ``by`` to a counter field; increments made concurrently on several devices all count."""
        coll = self._coll(collection)
        f = coll.field(id, field)
        if f.merge != "counter":
            raise ValidationError(collection, id, field, f"is a {f.kind} field, not a counter")
        try:
            f.check(by)
        except Invalid as e:
            raise ValidationError(collection, id, field, str(e)) from None
        self._writable(coll, id)

        def write(doc: RecordDoc, t: int) -> bytes:
            current = doc.state().fields.get(field, 0)
            total = current + by
            try:
                f.check(total)
            except Invalid as e:
                raise ValidationError(collection, id, field, f"incrementing by {by}: {e}") from None
            return doc.write({field: total}, t, op="inc")

        self._commit_local(coll, id, "increment", {field: by}, write)

    def delete(self, collection: str, id: str) -> None:
        coll = self._coll(collection)
        rec = self._row(coll, id)
        if rec is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        if rec.deleted and not rec.conflicts:
            return
        self._not_blocked(coll, id)
        self._commit_local(coll, id, "delete", {}, lambda doc, t: doc.set_deleted(True, t))

    def restore(self, collection: str, id: str) -> None:
        """Bring back a deleted record, with every edit made to it concurrently with the delete."""
        coll = self._coll(collection)
        rec = self._row(coll, id)
        if rec is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        if not rec.deleted and not any(c.field == "deleted" for c in rec.conflicts):
            return
        self._not_blocked(coll, id)
        self._commit_local(coll, id, "restore", {}, lambda doc, t: doc.set_deleted(False, t))

    def resolve(self, collection: str, id: str, field: str, value: Any) -> None:
        """Settle a conflict: ``value`` (one of the candidates, or a new one) replaces every value seen.

        For the ``deleted`` pseudo-field, ``True`` confirms the delete and ``False`` restores the record.
        The resolution is a change like any other: it syncs and clears the conflict on every device.
        """
        coll = self._coll(collection)
        rec = self._row(coll, id)
        if rec is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        if field == "deleted":
            if not isinstance(value, bool):
                raise ValidationError(collection, id, field, "resolve 'deleted' with True or False")
            self._not_blocked(coll, id)
            self._commit_local(coll, id, "resolve", {"deleted": value},
                               lambda doc, t: doc.set_deleted(value, t))
            return
        if not any(c.field == field for c in rec.conflicts) and field not in coll.fields:
            raise NoSuchConflict(f"{collection}/{id} has no field {field!r}")
        checked = coll.check(id, {field: value}, create=False)
        self._not_blocked(coll, id)  # a deleted record's conflicts may be settled without restoring it
        self._commit_local(coll, id, "resolve", self._shown(coll, checked),
                           lambda doc, t: doc.write(checked, t, op="resolve", full_seen=True))

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, collection: str, id: str) -> Record | None:
        """The record, or None if it does not exist here. Deleted records are returned with ``deleted``."""
        return self._row(self._coll(collection), id)

    def query(self, collection: str, where: Where = None, *, include_deleted: bool = False,
              order_by: str | None = None, descending: bool = False, limit: int | None = None) -> list[Record]:
        """Records of a collection from the materialised rows. ``where`` maps fields to the values they
        must equal, or is a predicate on ``Record``."""
        coll = self._coll(collection)
        return self.rows.query(coll, where, include_deleted=include_deleted, order_by=order_by,
                               descending=descending, limit=limit, overlay=self._overlay(coll))

    def conflicts(self, collection: str | None = None) -> list[Conflict]:
        """Every open conflict (of one collection, or all)."""
        out: list[Conflict] = []
        for coll in [self._coll(collection)] if collection else list(self.schema):
            for rec in self.rows.scan(coll, self._overlay(coll)):
                out.extend(rec.conflicts)
        return out

    def history(self, collection: str, id: str) -> list[HistoryEntry]:
        """Every field change of the record known here, oldest first, with device, user and time."""
        coll = self._coll(collection)
        if self._row(coll, id) is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        return self.docs.get(collection, id).doc.history()

    def status(self, collection: str, id: str) -> RecordStatus:
        rec = self.get(collection, id)
        if rec is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        return rec.status

    # -- the outbox ----------------------------------------------------------------------------------------

    def pending(self) -> list[PendingChange]:
        """Every local change not yet acknowledged by the relay, oldest first."""
        return [e.public() for e in self.outbox.entries()]

    def discard(self, change_id: int) -> list[PendingChange]:
        """Throw away a pending change, and the later pending changes of the same record (they build on
        it). The record goes back to what it was without them. Returns what was discarded."""
        e = self.outbox.get(change_id)
        if e is None:
            raise LocalError(f"no pending change {change_id}")
        ids = [x.id for x in self.outbox.for_record(e.collection, e.record) if x.id >= change_id]
        return self._discard(e.collection, e.record, ids)

    def discard_record(self, collection: str, id: str) -> list[PendingChange]:
        """Throw away every pending change of a record (for instance one the relay rejected)."""
        ids = [x.id for x in self.outbox.for_record(collection, id)]
        return self._discard(collection, id, ids)

    def fix(self, collection: str, id: str, values: Mapping[str, Any]) -> list[PendingChange]:
        """Correct a record whose change the relay rejected, and send it again.

        The rejected change and the record's later changes (held behind it) are replaced, in one
        transaction, by one new pending change: it sets the fields they set, as they stand on this device,
        with ``values`` over them. A record created by the rejected change is created again. ``values`` are
        checked against the schema first; a bad fix raises ``ValidationError`` and changes nothing. Returns
        the replaced changes. A deleted record cannot be fixed: discard its changes instead.
        """
        coll = self._coll(collection)
        changes = self.outbox.for_record(collection, id)
        first = next((e for e in changes if e.status == "error"), None)
        if first is None:
            raise LocalError(f"{collection}/{id} has no rejected change to fix")
        replaced = [e for e in changes if e.id >= first.id]
        coll.check(id, values, create=False)  # a bad value raises before anything changes
        before = self.docs.get(collection, id).doc.state()
        if before.deleted or any(e.op in ("delete", "restore") or "deleted" in e.fields for e in replaced):
            raise RecordDeleted(f"{collection}/{id}: a rejected delete or restore cannot be fixed; "
                                "discard_record() it instead")
        names = dict.fromkeys(n for e in replaced for n in e.fields)
        intended = {n: before.fields[n] for n in names if n in before.fields}
        intended.update(values)

        def write_fix(batch: Batch, lr: LoadedRecord) -> None:
            create = not lr.doc.state().exists
            checked = coll.check(id, intended, create=create)
            t = self.clock.now()
            op = "create" if create else "update"
            update = lr.doc.write(checked, t, op=op, alive=create)
            if update:
                n = self.docs.append(batch, collection, id, update, change_id=t, lr=lr)
                self.outbox.add(batch, OutboxEntry(t, collection, id, op, self._shown(coll, checked), n=n), update)

        return self._discard(collection, id, [e.id for e in replaced], write_fix)

    def _discard(self, collection: str, rid: str, ids: list[int],
                 replace: Callable[[Batch, LoadedRecord], None] | None = None) -> list[PendingChange]:
        """Drop these pending changes of a record, in one transaction with what ``replace`` (``fix``) then
        writes to the record rebuilt without them."""
        if not ids:
            return []
        coll = self._coll(collection)
        batch = Batch()
        gone = [e.public() for e in self.outbox.entries() if e.id in set(ids)]
        try:
            self.outbox.remove(batch, ids)
            lr = self.docs.discard(batch, collection, rid, set(ids))
            if replace is not None:
                replace(batch, lr)
            # the clock is restored from the outbox's newest change too: keep it past the discarded ones
            batch.save(("meta", "hlc"), str(self.clock.last).encode())
            rec: Record | None = None
            if lr.doc.state().exists:
                rec = self._save_row(batch, coll, lr.doc)
            else:
                batch.remove(("row", collection, rid))
            self._commit(batch)
        except BaseException:
            self.docs.reload(collection, rid)
            self.outbox = self.docs.local = Outbox(self.store)
            raise
        self._emit([ChangeEvent(collection, rid, "local", rec)])
        return gone

    # -- sync hooks (used by SyncClient and the simulator) -------------------------------------------------

    def outgoing(self, collections: Iterable[str] | None = None, limit: int | None = None, *,
                 skip: Iterable[tuple[str, str]] = ()) -> list[tuple[PendingChange, bytes]]:
        """Pending changes ready to send, in order: a record with a rejected change holds its later ones.
        ``skip``: records (collection, id) whose changes are left out (the relay held them this run)."""
        wanted = set(collections) if collections is not None else None
        held: set[tuple[str, str]] = set(skip)
        out: list[tuple[PendingChange, bytes]] = []
        for e in self.outbox.entries():
            key = (e.collection, e.record)
            if e.status == "error":
                held.add(key)
                continue
            if key in held or (wanted is not None and e.collection not in wanted):
                continue
            out.append((e.public(), self.outbox.update_bytes(e.id)))
            if limit is not None and len(out) >= limit:
                break
        return out

    def _restatus(self, ids: Iterable[int], status: str, error: tuple[str, str] | None = None,
                  persist: bool = False) -> None:
        touched = {(e.collection, e.record) for i in ids if (e := self.outbox.get(i)) is not None}
        # a record whose row is not written yet is read from its document with the status of the moment:
        # take it before the change of status, to tell whether it changes
        before = {key: self._row(self._coll(key[0]), key[1]) for key in touched if key in self._dirty}
        batch = Batch()
        self.outbox.set_status(batch if persist else None, ids, status, error)  # type: ignore[arg-type]
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

    def reject(self, change_id: int, code: str, reason: str) -> None:
        """The relay refused a change: keep it, marked ``error``; its record holds later changes."""
        self._restatus([change_id], "error", (code, reason), persist=True)

    def retry(self, collection: str, id: str) -> None:
        """Put a record's rejected changes back in the queue (after access was granted again, say)."""
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
        """Merge updates from peers: all of them, or (if any is malformed or breaks the schema) none.

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
        """``apply_remote`` of updates grouped by record, every collection known."""
        touched: list[tuple[str, str]] = []
        # the merged records are held here, not re-fetched from the cache: importing more records than
        # the cache holds evicts the first ones, and a reload from the store would miss their update
        fresh: dict[tuple[str, str], tuple[LoadedRecord, bytes]] = {}
        batch = Batch()
        try:
            keys = list(grouped)
            for start in range(0, len(keys), _LOAD_CHUNK):
                chunk = keys[start:start + _LOAD_CHUNK]
                touched += chunk
                for (c, rid), lr in zip(chunk, self.docs.get_many(chunk), strict=True):
                    self._merge_one(batch, c, rid, lr, grouped[(c, rid)], fresh)
            changed: list[Record] = []
            for (c, rid), (lr, update) in fresh.items():
                doc = lr.doc
                self.docs.append(batch, c, rid, update, lr=lr)
                exists = doc.state().exists  # not yet, when only updates that build on a missing one came
                self.clock.observe(doc.max_time())
                if exists:
                    changed.append(self._save_row(batch, self._coll(c), doc))
            if fresh:
                batch.save(("meta", "hlc"), str(self.clock.last).encode())
            for name, value in (meta or {}).items():
                batch.save(("meta", "app", name), value)
            self._commit(batch)
        except BaseException:
            for c, rid in touched:
                self.docs.reload(c, rid)
            raise
        self._emit(ChangeEvent(r.collection, r.id, "remote", r) for r in changed)
        return changed

    def evict(self, records: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """Remove records from this device because they left its sync scope (the relay says so when a
        record stops matching the device's ``where`` limit, e.g. it was reassigned to another owner).

        A record with pending changes stays, with them: the user's work is never dropped this way (the
        relay accepts or rejects those changes; a rejected one is kept as ``error`` for the user to export
        or discard). Records not known here are ignored. Returns the records removed, each also announced
        by a ``ChangeEvent`` with ``origin="remote"`` and ``record=None``. If such a record comes back into
        scope, the relay sends its whole state again.
        """
        gone: list[tuple[str, str]] = []
        batch = Batch()
        for c, rid in dict.fromkeys(records):
            if c not in self.schema.collections or self.outbox.for_record(c, rid) \
                    or not self.docs.exists(c, rid):
                continue
            batch.remove_range(("upd", c, rid))
            batch.remove(("snap", c, rid))
            batch.remove(("held", c, rid))
            batch.remove(("row", c, rid))  # ("rmeta", c, rid) stays: its writer epoch must only grow
            gone.append((c, rid))
        if not gone:
            return []
        try:
            self._commit(batch)
        finally:
            for c, rid in gone:
                self.docs.reload(c, rid)
        self._emit(ChangeEvent(c, rid, "remote", None) for c, rid in gone)
        return gone

    def _merge_one(self, batch: Batch, c: str, rid: str, lr: LoadedRecord, updates: list[bytes],
                   fresh: dict[tuple[str, str], tuple[LoadedRecord, bytes]]) -> None:
        """Apply one record's remote updates to its loaded document and check the result."""
        doc = lr.doc
        held = list(doc.held)
        new = doc.apply_many(updates)  # one apply (one integration check) per record
        if new:
            doc.check()
            fresh[(c, rid)] = (lr, new)
        if doc.held != held:
            self.docs.save_held(batch, c, rid, doc.held)

    def get_meta(self, name: str) -> bytes | None:
        return self.store.load(("meta", "app", name))

    def set_meta(self, name: str, value: bytes) -> None:
        self.store.save(("meta", "app", name), value)

    # -- merging by hand -----------------------------------------------------------------------------------

    def _stored_update(self, collection: str, rid: str) -> bytes:
        parts = self.docs.stored_parts(collection, rid)
        if not parts:
            return _EMPTY_UPDATE
        return parts[0] if len(parts) == 1 else merge_updates(*parts)

    def export_updates(self, collections: Iterable[str] | None = None, since: bytes | None = None) -> bytes:
        """Everything this replica knows (of some collections), as one blob for ``import_updates``.

        With ``since`` (another replica's ``state_vectors()``), only what that replica lacks. A record's
        held updates (those waiting here for an update they build on) go along as entries of their own:
        the receiver may have what they wait for, and merged into the record's update they would hold it
        back whole where it does not.
        """
        vectors = self._parse(since, _VECTOR_MAGIC) if since is not None else {}
        out = bytearray(_EXPORT_MAGIC)
        for coll in [self._coll(c) for c in collections] if collections is not None else list(self.schema):
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
        for coll in [self._coll(c) for c in collections] if collections is not None else list(self.schema):
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
    def _parse(cls, blob: bytes, magic: bytes) -> dict[tuple[str, str], bytes]:
        """A state-vector blob: each record's state vector."""
        return dict(cls._entries(blob, magic))

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
        of times. A malformed blob, or one whose content breaks the schema, raises and changes nothing.
        Returns the records that changed."""
        entries = self._parse_export(blob)
        collections = self.schema.collections
        for c, rid in entries:  # as ``apply_remote`` checks them
            if c not in collections:
                raise RemoteValidationError(str(c), str(rid), None, "unknown collection")
        return self._merge(entries, None)

