"""The replica's foundation: its store, identity, clock, documents, rows, events and commits.

On it, ``exchange.py`` adds what crosses devices (the sync hooks, export and import) and ``replica.py``
(``Replica``) the local writes, the reads and the outbox; the module docstring there says how a write is
stored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

import orjson

from ..clock import Hlc
from ..errors import (
    EncryptionError,
    LocalError,
    RecordBlocked,
    RecordDeleted,
    RecordNotFound,
    SchemaError,
    StoreFull,
    ValidationError,
    WrongKeyError,
)
from ..model.layouts import OTHER_LAYOUT
from ..model.record import RecordDoc
from ..schema import Collection, Schema, Set
from ..store.base import Batch, ByteStore, is_full, store_path
from ..store.encrypted import EncryptedStore, is_encrypted
from ..store.memory import MemoryStore
from ..store.sqlite import SQLiteStore, Synchronous
from .docs import LoadedRecord, RecordDocs
from .layout import upgrade
from .outbox import Outbox, OutboxEntry
from .rows import Rows, delete_clash_row, row_marks, stale_row
from .strategy import keep_strategies, refuse_other_layout, stored_strategies, strategy_key
from .types import ChangeEvent, Record, RecordStatus

__all__ = ["ReplicaBase"]

log = logging.getLogger("crdtsync.replica")

_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_new = object.__new__
_DIRTY_MAX = 64  # records written locally whose rows are not written yet, at most (see the docstring)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _field_names(coll: Collection) -> bytes:
    """What ``_rows_for_schema`` keeps of a collection's schema: its fields' names and kinds."""
    return orjson.dumps(sorted([n, type(f).__name__] for n, f in coll.fields.items()))


def _check_name(kind: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 100 or any(ord(ch) < 32 for ch in value) \
            or "#" in value:
        raise LocalError(f"{kind} must be a str of 1 to 100 printable characters without '#', got {value!r}")
    return value


def _check_schema(schema: object) -> Schema:
    if not isinstance(schema, Schema):
        hint = " (Schema.from_dict builds one from its dict form)" if isinstance(schema, Mapping) else ""
        raise SchemaError(f"the schema must be a crdtsync Schema, not a {type(schema).__name__}{hint}")
    return schema


class ReplicaBase:
    """What the replica's layers share (see the module docstring); use ``Replica``."""

    def __init__(self, store: ByteStore, schema: Schema, *, device: str, user: str,
                 wall: Callable[[], int] = _wall_ms, random_bytes: Callable[[int], bytes] = os.urandom,
                 cache_size: int = 2000, cache_bytes: int | None = 64 * 2**20, compact_after: int = 64) -> None:
        #: held by every public method (``locking.py``): a replica may be shared between threads
        self._lock = threading.RLock()
        self.schema = _check_schema(schema)
        self.device = _check_name("device", device)
        self.user = _check_name("user", user)
        self.store = store
        self._random = random_bytes
        self._wall = wall
        ident = store.load(("meta", "identity"))
        if ident is None and store.load(("relay", "id")) is not None:
            raise LocalError(f"{store_path(store)} is a relay's database, not a device's replica: open a store of "
                             "the device's own")
        if ident is None:
            client_id = self._new_client_id()
            new = Batch()  # a new store: its rows will be written under this schema (``_rows_for_schema``)
            new.save(("meta", "identity"), orjson.dumps({"device": device, "client_id": client_id}))
            for coll in schema:
                new.save(("meta", "fields", coll.name), _field_names(coll))
                new.save(("meta", "policy", coll.name), coll.delete_policy.encode())
                new.save(strategy_key(coll.name), coll.strategy.encode())
            store.commit(new)
            held: dict[str, str | None] = {coll.name: coll.strategy for coll in schema}
        else:
            meta = orjson.loads(ident)
            if meta["device"] != device:
                raise LocalError(f"this store belongs to device {meta['device']!r}, not {device!r}; "
                                 "each device needs its own store")
            client_id = int(meta["client_id"])
            # a strategy of another document layout than the store's is refused before anything is written
            held = stored_strategies(store, schema)
            for coll in schema:
                refuse_other_layout(store_path(store), coll, held[coll.name])
        upgrade(store)
        self.outbox = Outbox(store)
        raw_hlc = store.load(("meta", "hlc"))
        self.clock = Hlc(wall, max(int(raw_hlc) if raw_hlc else 0, self.outbox.last_id()))
        self.docs = RecordDocs(store, schema, device=device, user=user, client_id=client_id,
                               new_client_id=self._new_client_id, cache_size=cache_size, cache_bytes=cache_bytes,
                               compact_after=compact_after, wall=wall, local=self.outbox)
        # a store that kept no strategy (an earlier crdtsync's) has its layout told from its records
        kept = keep_strategies(store_path(store), store, schema, held, self.docs, self.outbox)
        if kept.saves:
            store.commit(kept)
        self.rows = Rows(store)
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        self._closed = False
        #: records whose stored rows may be behind their documents (an ordered set): read from the document
        self._dirty: dict[tuple[str, str], None] = {}
        #: records that left the sync scope while they held unsent changes (``evict``): they leave once those
        #: are gone (discarded), unless news of them comes first (back in scope). Kept in the store too
        self._left: set[tuple[str, str]] = {(str(k[2]), str(k[3])) for k, _ in store.iter_range(("meta", "left"))}
        self._rows_for_schema()
        self._find_dirty_rows()

    def _rows_for_schema(self) -> None:
        """Rows written under a schema whose fields differ from this one's (the app was upgraded or rolled
        back): rebuild from their documents those that show their records otherwise than the documents do
        under this schema (``rows.stale_row``; the others only show the added fields as never written, and
        not the removed ones, when read). Each collection's field names are kept in the store
        (``("meta", "fields", collection)``), so an open with the same schema as the last only reads them.
        So is its ``delete_policy`` (``("meta", "policy", collection)``): when it changed, the rows where a
        delete met a concurrent edit are rebuilt (``rows.delete_clash_row``). A store made before the
        policy was kept has none: its first open looks for such rows once."""
        batch = Batch()
        for coll in self.schema:
            key, pkey = ("meta", "fields", coll.name), ("meta", "policy", coll.name)
            names, policy = _field_names(coll), coll.delete_policy.encode()
            last, last_policy = self.store.load_many([key, pkey])
            if last == names and last_policy == policy:
                continue
            before: dict[str, str] | None = dict(orjson.loads(last)) if last is not None else None
            # a field whose kind changed (Str to Text, Int to Str): every row shows it as the old kind read it
            retyped = before is not None and any(n in coll.fields and type(coll.fields[n]).__name__ != k
                                                 for n, k in before.items())
            # fields only added (an app update): only rows naming fields their documents hold that their
            # schema lacked (``o``, rare) can be stale, and the others need no parsing
            added = before is not None and not retyped and before.keys() <= coll.fields.keys()
            fields_changed, policy_changed = last != names, last_policy != policy
            stale = [str(k[2]) for k, raw in self.store.iter_range(("row", coll.name))
                     if (fields_changed and (retyped or ((not added or b'"o":' in raw) and stale_row(coll, raw))))
                     or (policy_changed and delete_clash_row(raw))]
            for rid in stale:
                lr = self.docs.get(coll.name, rid)
                if lr.doc.state().exists:
                    self._save_row(batch, coll, lr.doc)
                else:
                    batch.remove(("row", coll.name, rid))
            if stale:
                log.info("%s: %d row(s) rebuilt for the fields and delete policy of this schema", coll.name,
                         len(stale))
            batch.save(key, names)
            batch.save(pkey, policy)
        if batch.saves or batch.removes:
            self._commit(batch)
            self.docs.forget()  # loaded for that only

    def _find_dirty_rows(self) -> None:
        """After a crash: the records whose rows are behind their pending changes (see the docstring), or
        show ``syncing``: a sync cut short by the crash left them so, and nothing is syncing at open (the
        outbox made their changes ``pending`` again). Only records with pending changes can be either."""
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
            if raw is None:
                self._dirty[key] = None  # a crash came before its row was written
                continue
            change, status = row_marks(raw)
            if change not in (None, self.outbox.last_for(*key)) or status == "syncing":
                self._dirty[key] = None
        if self._dirty:  # write them now, so that reads come from rows again
            batch = Batch()
            self._stage_dirty_rows(batch)
            self._commit(batch)
            self.docs.forget()  # loaded for that only

    @classmethod
    def open(cls, path: str | Path, schema: Schema, *, device: str, user: str, key: bytes | str | None = None,
             synchronous: Synchronous = "FULL", **kwargs: Any) -> Self:
        """Open (or create) a replica stored at ``path`` (a SQLite file, or ``":memory:"``).

        ``key`` encrypts the store at rest (AES-GCM); a wrong key raises ``WrongKeyError``.
        """
        _check_schema(schema)  # before the store is opened (or made)
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

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (every read and write then raises ``StoreClosed``)."""
        return self._closed

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events --------------------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[ChangeEvent], None]) -> Callable[[], None]:
        """Call ``callback`` after every change to a record; returns a function that unsubscribes.

        A callback that raises is logged and does not disturb the write, which is already stored. A
        ``callback`` that is not callable raises ``TypeError`` (it would only fail at the first change).
        """
        if not callable(callback):
            raise TypeError(f"subscribe takes a function of a ChangeEvent, not {callback!r}")
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
        if isinstance(name, Collection):  # (iterating a Schema yields them): its repr made a long message
            raise ValidationError(name.name, None, None, "a Collection was passed where its name is expected: "
                                  f"pass the collection's name ({name.name!r})")
        return self.schema.collection(name)

    def _missing(self, coll: Collection, rid: str) -> None:
        """Raise ``RecordNotFound`` unless the record exists here or has pending changes (a method of the
        outbox, ``fix``, ``retry`` or ``discard_record``, given an id with neither)."""
        if not self.outbox.for_record(coll.name, rid) and self._row(coll, rid) is None:
            raise RecordNotFound(f"{coll.name}/{rid} does not exist")

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
                            changed_by=dict(state.changed_by), version=MappingProxyType(dict(state.vector)))
        return rec

    def _record(self, coll: Collection, doc: RecordDoc) -> Record | None:
        """The record as its row would show it, from its document (None if it does not exist)."""
        state = doc.state()
        if not state.exists:
            return None
        status, error = self._status(coll.name, doc.id, bool(state.conflicts))
        return Record(coll.name, doc.id, dict(state.fields), status, state.conflicts, state.deleted, error,
                      state.updated, dict(state.changed_by), MappingProxyType(dict(state.vector)))

    def _stage_dirty_rows(self, batch: Batch) -> None:
        """Stage the rows not written yet into ``batch`` (``_commit`` forgets them once it is stored)."""
        for c, rid in list(self._dirty):
            lr = self.docs.get(c, rid)
            if lr.doc.state().exists:
                self._save_row(batch, self._coll(c), lr.doc)
            else:
                batch.remove(("row", c, rid))

    def _commit(self, batch: Batch) -> None:
        """Commit ``batch``; the rows it writes (or removes) are no longer behind their records. A store
        whose disk is full raises ``StoreFull`` naming it (the store's own error as its cause), not a raw
        ``sqlite3.OperationalError``; the callers forget what memory holds of the failed write, as for any
        error of the commit."""
        try:
            self.store.commit(batch)
        except Exception as e:
            if is_full(e):
                raise StoreFull(store_path(self.store)) from e
            raise
        if self._dirty:
            for key in [*batch.saves, *batch.removes]:
                if key[0] == "row":
                    self._dirty.pop((str(key[1]), str(key[2])), None)

    def _overlay(self, coll: Collection) -> dict[str, Record | None]:
        """The records of ``coll`` whose rows are not written yet, from their documents, by id."""
        return {rid: self._record(coll, self.docs.get(c, rid).doc) for c, rid in list(self._dirty) if c == coll.name}

    @staticmethod
    def _id_arg(collection: str, rid: object) -> str:
        """A record id given to a method that reads or changes a record: a str, or a clear error (a None or
        an int used to reach the store's key encoder, or to read as a record that does not exist)."""
        if not isinstance(rid, str):
            raise LocalError(f"{collection}/{rid!r}: record ids are str, not {type(rid).__name__}")
        return rid

    @staticmethod
    def _names(collections: Iterable[str] | None) -> list[str] | None:
        """The collection names a method is limited to (None: all); a str is refused, not read as the
        names of its characters."""
        if collections is None:
            return None
        if isinstance(collections, str | bytes):
            raise LocalError(f"collections is a list of collection names, not a {type(collections).__name__}: "
                             f"pass [{collections!r}]")
        return list(collections)

    def _colls(self, collections: Iterable[str] | None) -> list[Collection]:
        """The collections of these names (all of the schema's for None); an unknown name raises."""
        names = self._names(collections)
        return list(self.schema) if names is None else [self._coll(c) for c in names]

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
            if OTHER_LAYOUT in reason:  # written under a strategy the relay's collection does not use
                raise RecordBlocked(f"{coll.name}/{rid} has a rejected change ({code}: {reason}); fix() or retry() "
                                    "cannot help while this device's schema gives the collection a strategy of "
                                    "another document layout than the relay's: discard_record() it")
            raise RecordBlocked(f"{coll.name}/{rid} has a rejected change ({code}: {reason}); fix() it with "
                                "corrected values, discard_record() it, or retry() it once the relay accepts it")

    def _commit_local(self, coll: Collection, rid: str, op: str, shown: dict[str, Any],
                      write: Callable[[RecordDoc, int], bytes], lr: LoadedRecord | None = None) -> None:
        if lr is None:
            lr = self.docs.get(coll.name, rid)
        t = self.clock.now()
        key = (coll.name, rid)
        try:
            # inside the try: Yjs has no rollback, so a write that raises part way (a field's encode, a
            # check inside ``write``) leaves its first edits in the document, which is then reloaded
            update = write(lr.doc, t)
            if not update:
                return
            batch = Batch({}, set(), [])  # (the default factories cost three calls)
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
