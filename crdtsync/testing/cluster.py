"""A cluster of replicas on simulated clocks, a lossy network between them, and an oracle that checks it.

The oracle does not trust the model: it tracks, for every write, which writes the writing replica had
*seen*, from the exchanges the cluster itself performed (a replica has seen its own writes and everything
in each blob it imported, as of the moment that blob was exported). Once everything is exchanged
(``settle()``), ``check()`` asserts:

- convergence: every replica has the same records, fields, deletes, conflicts and history;
- no lost write: every write to a plain field (and every delete/restore) is the current value, or an open
  conflict candidate, or was overwritten by a write to the same field made by a replica that had seen it;
- counters equal the sum of every increment; add-wins sets hold exactly the elements some add of which no
  remove had seen.

Text fields are checked for convergence and read-your-writes only.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import RecordDeleted, ValidationError
from ..model.forms import same_value
from ..model.state import UNWRITTEN
from ..replica import Record, Replica
from ..schema import Collection, Field, Invalid, Schema
from ..store.base import ByteStore
from ..store.memory import MemoryStore
from .strategies import DEFAULT_IDS, Op

__all__ = ["Cluster", "Form", "Message", "SaveForm", "Write", "save_with_base"]

DELETED_FIELD = "deleted"
_EPOCH_MS = 1_750_000_000_000


@dataclass(frozen=True)
class Write:
    """One write the oracle knows of: to a field (or ``deleted``) of one record, by one replica."""

    id: int
    replica: int
    device: str
    key: tuple[str, str]
    field: str
    value: Any  # the encoded (JSON) value; a bool for "deleted"
    time: int  # the change id (HLC time) the replica gave it
    seen: frozenset[int]


@dataclass(frozen=True)
class _SetOp:
    id: int
    replica: int
    time: int
    key: tuple[str, str]
    field: str
    element: bytes
    add: bool
    seen: frozenset[int]


@dataclass(frozen=True)
class Message:
    """An exported blob in flight to ``dst``; ``known`` is what its sender had seen when exporting it."""

    src: int
    dst: int
    blob: bytes
    known: frozenset[int]


@dataclass(frozen=True)
class Form:
    """An edit form open on replica ``replica``: the record it shows (``shown``, as ``get`` returned it)
    and what the oracle knew that replica had seen when it opened (``seen``)."""

    replica: int
    shown: Record
    seen: frozenset[int]


#: app code that saves a form: ``save(replica, collection, id, shown, values)``
SaveForm = Callable[[Replica, str, str, Record, dict[str, Any]], None]


def save_with_base(replica: Replica, collection: str, rid: str, shown: Record, values: dict[str, Any]) -> None:
    """How a form should be saved: ``update(..., base=shown)``."""
    replica.update(collection, rid, values, base=shown)


def _elem(f: Field, v: Any) -> bytes:
    return orjson.dumps(f.of.encode(v))  # type: ignore[attr-defined]


def _enc(f: Field | None, v: Any) -> Any:
    if f is None:
        return v
    if f.merge == "set":
        return sorted(_elem(f, x) for x in v)
    return f.encode(v)


def snapshot(coll: Collection, rec: Record) -> tuple[Any, ...]:
    """What must be equal on every replica once they have exchanged everything."""
    fields = tuple((n, _enc(coll.fields.get(n), v)) for n, v in sorted(rec.fields.items()))
    conflicts = tuple((c.field, c.kind, tuple((_enc(coll.fields.get(c.field), x.value) if c.field in coll.fields
                                               and not isinstance(x.value, bool) else x.value,
                                               x.device, x.user, x.time) for x in c.candidates))
                      for c in rec.conflicts)
    return (rec.id, fields, rec.deleted, conflicts)


class Cluster:
    """``n`` replicas of ``schema`` (device ``d0``..., user ``u0``...) with skewed simulated clocks.

    ``store`` makes each replica's byte store (in memory by default). Every method that writes records
    what the oracle needs; ``apply(op)`` runs one step of an edit history.
    """

    def __init__(self, schema: Schema, n: int = 3, *, ids: Sequence[str] = DEFAULT_IDS,
                 skews: Sequence[int] | None = None, cache_size: int = 2, cache_bytes: int | None = 64 * 2**20,
                 compact_after: int = 4, store: Callable[[int], ByteStore] | None = None) -> None:
        self.schema = schema
        self.ids = list(ids)
        self.now = _EPOCH_MS
        self.skews = list(skews) if skews is not None else [0] * n
        make = store or (lambda i: MemoryStore())
        self.replicas = [Replica(make(i), schema, device=f"d{i}", user=f"u{i}", wall=self._wall(i),
                                 random_bytes=random.Random(i).randbytes, cache_size=cache_size,
                                 cache_bytes=cache_bytes, compact_after=compact_after) for i in range(n)]
        self.known: list[set[int]] = [set() for _ in range(n)]
        self.writes: list[Write] = []
        self.set_ops: list[_SetOp] = []
        # per counter: (replica, change id, delta) of every increment
        self.counters: dict[tuple[str, str, str], list[tuple[int, int, int]]] = defaultdict(list)
        # (replica, change id) of changes the user discarded: exempt from the no-lost-write check
        self.discarded: set[tuple[int, int]] = set()
        self.in_flight: list[Message] = []
        self._marks: dict[int, tuple[bytes, frozenset[int]]] = {}
        self._next = 0

    def _wall(self, i: int) -> Callable[[], int]:
        return lambda: self.now + self.skews[i]

    def tick(self, ms: int = 1) -> None:
        self.now += ms

    # -- the oracle's bookkeeping --------------------------------------------------------------------------

    def _id(self) -> int:
        self._next += 1
        return self._next

    def _last_change(self, i: int) -> int:
        pending = self.replicas[i].pending()
        assert pending, "a local write left no pending change"
        return pending[-1].id

    def _record(self, i: int, coll: Collection, rid: str, values: Mapping[str, Any], before: Record | None) -> None:
        """Log the writes of one local change and check the replica reads its own writes."""
        r = self.replicas[i]
        key = (coll.name, rid)
        t = self._last_change(i)
        seen = frozenset(self.known[i])
        new: list[int] = []
        checked = coll.check(rid, values, create=False)
        for name, value in checked.items():
            f = coll.fields[name]
            old = before.fields.get(name) if before is not None else None
            if f.merge == "register":
                w = Write(self._id(), i, r.device, key, name, f.encode(value), t, seen)
                self.writes.append(w)
                new.append(w.id)
            elif f.merge == "counter":
                self.counters[(coll.name, rid, name)].append((i, t, value - (old or 0)))
            elif f.merge == "set":
                new += self._set_edits(i, t, key, name, f, old or frozenset(), value, seen)
        self.known[i].update(new)
        rec = r.get(coll.name, rid)
        assert rec is not None, f"{coll.name}/{rid} missing right after a write on d{i}"
        for name, value in checked.items():
            f = coll.fields[name]
            assert _enc(f, rec.fields[name]) == _enc(f, value), (
                f"d{i} does not read its own write {coll.name}/{rid}.{name}={value!r}: {rec.fields[name]!r}")
            assert not any(c.field == name for c in rec.conflicts), f"a local write left a conflict: {rec}"

    def _record_deleted(self, i: int, coll: Collection, rid: str, value: bool) -> None:
        w = Write(self._id(), i, self.replicas[i].device, (coll.name, rid), DELETED_FIELD, value,
                  self._last_change(i), frozenset(self.known[i]))
        self.writes.append(w)
        self.known[i].add(w.id)
        rec = self.replicas[i].get(coll.name, rid)
        assert rec is not None and rec.deleted == value, f"d{i}: deleted should be {value} after the write: {rec}"
        assert not any(c.kind != "concurrent-write" for c in rec.conflicts), f"d{i}: delete conflict left: {rec}"

    # -- local writes (each returns False when the step does not apply) ------------------------------------

    def create(self, i: int, collection: str, rid: str, values: Mapping[str, Any]) -> bool:
        r, coll = self.replicas[i], self.schema[collection]
        if r.get(collection, rid) is not None:
            return False
        self.tick()
        r.create(collection, values, id=rid)
        self._record(i, coll, rid, values, None)
        return True

    def update(self, i: int, collection: str, rid: str, values: Mapping[str, Any]) -> bool:
        r, coll = self.replicas[i], self.schema[collection]
        before = r.get(collection, rid)
        if before is None:
            return False
        self.tick()
        if before.deleted:
            try:
                r.update(collection, rid, values)
            except RecordDeleted:
                return False
            raise AssertionError(f"update of deleted {collection}/{rid} did not raise RecordDeleted")
        r.update(collection, rid, values)
        self._record(i, coll, rid, values, before)
        return True

    def increment(self, i: int, collection: str, rid: str, name: str, by: int) -> bool:
        r, coll = self.replicas[i], self.schema[collection]
        before = r.get(collection, rid)
        if before is None or before.deleted:
            return False
        self.tick()
        r.increment(collection, rid, name, by)
        self._record(i, coll, rid, {name: before.fields[name] + by}, before)
        return True

    def delete(self, i: int, collection: str, rid: str) -> bool:
        r = self.replicas[i]
        rec = r.get(collection, rid)
        if rec is None or (rec.deleted and not rec.conflicts):
            return False
        self.tick()
        r.delete(collection, rid)
        self._record_deleted(i, self.schema[collection], rid, True)
        return True

    def restore(self, i: int, collection: str, rid: str) -> bool:
        r = self.replicas[i]
        rec = r.get(collection, rid)
        if rec is None or not (rec.deleted or any(c.field == DELETED_FIELD for c in rec.conflicts)):
            return False
        self.tick()
        r.restore(collection, rid)
        self._record_deleted(i, self.schema[collection], rid, False)
        return True

    def open_form(self, i: int, collection: str, rid: str) -> Form | None:
        """Open an edit form on replica ``i``: the record as it shows it now (None if it has no such record,
        or it is deleted)."""
        rec = self.replicas[i].get(collection, rid)
        if rec is None or rec.deleted:
            return None
        return Form(i, rec, frozenset(self.known[i]))

    def _set_edits(self, i: int, t: int, key: tuple[str, str], name: str, f: Field, prev: Any, value: Any,
                   seen: Any) -> list[int]:
        """Note the adds and removes of a write of set field ``name`` (``prev`` to ``value``) by replica
        ``i`` at time ``t``; return their ids. In encoded order, not set order: the oracle's ids do not depend
        on string hashing."""
        ids = []
        for el, add in [*((x, True) for x in sorted(_elem(f, v) for v in value - prev)),
                        *((x, False) for x in sorted(_elem(f, v) for v in prev - value))]:
            op = _SetOp(self._id(), i, t, key, name, el, add, seen)
            self.set_ops.append(op)
            ids.append(op.id)
        return ids

    def save_form(self, form: Form, values: Mapping[str, Any], save: SaveForm = save_with_base) -> bool:
        """Save ``form`` with ``values`` (every field the form holds, some edited) through the app's ``save``.

        The oracle counts the user's edits (the fields whose value differs from the one shown; only they
        are checked against the schema, as ``update(..., base=)`` does: a field left as shown may break it)
        as writes made having seen only what the form showed, and this replica's own writes (a device knows
        what it wrote): a write that reached the replica after the form opened, and that the save made
        disappear without a conflict, is a lost write at the next ``check()``. A save refused with
        ``ValidationError`` (a merged value over a limit) must change nothing; one of a record deleted
        since is not made.
        """
        i, shown = form.replica, form.shown
        r, coll = self.replicas[i], self.schema[shown.collection]
        rid = shown.id
        now = r.get(coll.name, rid)
        if now is None or now.deleted:
            return False
        self.tick()
        before, pending = r.store.load_range(()), {p.id for p in r.pending()}
        try:
            save(r, coll.name, rid, shown, dict(values))
        except ValidationError as e:
            assert (e.collection, e.record) == (coll.name, rid), e
            assert r.store.load_range(()) == before, "a refused form save changed the store"
            return False
        new = [p for p in r.pending() if p.id not in pending]
        if not new:
            return False
        t = new[-1].id
        own = {w.id for w in self.writes if w.replica == i} | {op.id for op in self.set_ops if op.replica == i}
        seen = form.seen | own
        key = (coll.name, rid)
        # only the user's edits are checked, as ``update(..., base=)`` does: a field left as shown may break
        # the schema (a set merged over its max_items), and the save of the other fields still stands
        checked = coll.check(rid, {n: v for n, v in values.items() if n not in shown.fields or n not in coll.fields
                                   or not same_value(coll.fields[n], v, shown.fields[n])}, create=False)
        ids: list[int] = []
        for name, value in checked.items():
            f = coll.fields[name]
            old = shown.fields.get(name)
            if old is None and f.merge != "register":
                old = frozenset() if f.merge == "set" else 0 if f.merge == "counter" else ""
            if same_value(f, value, old):
                continue
            if f.merge == "register":
                w = Write(self._id(), i, r.device, key, name, f.encode(value), t, seen)
                self.writes.append(w)
                ids.append(w.id)
            elif f.merge == "counter":
                self.counters[(coll.name, rid, name)].append((i, t, value - old))
            elif f.merge == "set":
                ids += self._set_edits(i, t, key, name, f, old, value, seen)
        self.known[i].update(ids)
        rec = r.get(coll.name, rid)
        assert rec is not None, f"{coll.name}/{rid} missing right after a form save on d{i}"
        for name, value in checked.items():  # the user's edits read back (a register's, now the latest write)
            f = coll.fields[name]
            if same_value(f, value, shown.fields.get(name)):
                continue
            if f.merge == "register":
                assert _enc(f, rec.fields[name]) == _enc(f, value), (
                    f"d{i} does not read its form's {coll.name}/{rid}.{name}={value!r}: {rec.fields[name]!r}")
            elif f.merge == "set":
                missing = {_elem(f, v) for v in value - shown.fields[name]} - {_elem(f, v) for v in rec.fields[name]}
                assert not missing, f"d{i}: elements its form added to {coll.name}/{rid}.{name} are missing: {missing}"
        self._check_save(i, coll, now, rec, shown, checked)
        return True

    def _check_save(self, i: int, coll: Collection, now: Record, after: Record, shown: Record,
                    edits: Mapping[str, Any]) -> None:
        """A form save on replica ``i`` kept what the replica held just before it (``now``) and the form did
        not show: each write in effect there (or an open conflict's candidate) is still in effect, a
        candidate, or overwritten by a write made having seen it; a counter moved by the user's edit only;
        a set kept every element but those the user removed and gained none but those the user added.
        The same properties ``check()`` asserts once everything is exchanged, checked here on the saving
        replica alone, so that a save made without ``base=`` fails at the step that made it, saying so."""
        key = (coll.name, now.id)
        where = f"d{i}'s form save of {coll.name}/{now.id}"
        same: dict[str, list[Write]] = defaultdict(list)
        for w in self.writes:
            if w.key == key:
                same[w.field].append(w)
        for name, f in coll.fields.items():
            old = shown.fields.get(name, UNWRITTEN[f.merge])
            edited = name in edits and not same_value(f, edits[name], old)
            if f.merge == "register":
                live = {(x.device, x.time) for c in now.conflicts if c.field == name for x in c.candidates}
                if (by := now.changed_by.get(name)) is not None:
                    live.add((by.device, by.time))
                for w in same[name]:
                    if (w.device, w.time) in live and not self._survives(w, after, same[name]):
                        raise AssertionError(
                            f"lost write {w}: {where} overwrote it without a conflict, and the form did not show "
                            f"it (saved without base=?)\n  record before the save: {now}\n  after: {after}")
            elif f.merge == "counter":
                want = now.fields[name] + (edits[name] - old if edited else 0)
                assert after.fields[name] == want, (
                    f"{where} made counter {name} {after.fields[name]}: it was {now.fields[name]} and the form "
                    f"changed it by {edits[name] - old if edited else 0}, so the increments add up to {want} "
                    "(saved without base=?)")
            elif f.merge == "set":
                held, got = {_elem(f, v) for v in now.fields[name]}, {_elem(f, v) for v in after.fields[name]}
                value = {_elem(f, v) for v in edits[name]} if edited else set()
                was = {_elem(f, v) for v in old} if edited else set()
                gone, extra = held - (was - value) - got, got - held - (value - was)
                assert not gone and not extra, (
                    f"{where} left set {name} {sorted(got)}: it held {sorted(held)}, the user "
                    f"added {sorted(value - was)} and removed {sorted(was - value)}, so add-wins says neither "
                    f"{sorted(gone)} gone nor {sorted(extra)} added (saved without base=?)")

    def open_conflicts(self, i: int) -> list[tuple[Record, int]]:
        """(record, index of the conflict in it) for every open conflict on replica ``i``."""
        r = self.replicas[i]
        out = []
        for coll in self.schema:
            for rec in r.query(coll.name, include_deleted=True):
                out += [(rec, k) for k in range(len(rec.conflicts))]
        return out

    def resolve(self, i: int, pick: int, choice: int, new_value: Any = None, *, use_new: bool = False) -> bool:
        """Resolve open conflict ``pick`` (modulo their number) with candidate ``choice`` or ``new_value``."""
        found = self.open_conflicts(i)
        if not found:
            return False
        rec, k = found[pick % len(found)]
        c = rec.conflicts[k]
        coll = self.schema[rec.collection]
        r = self.replicas[i]
        self.tick()
        if c.field == DELETED_FIELD:
            flag = bool(c.candidates[choice % len(c.candidates)].value)
            r.resolve(rec.collection, rec.id, DELETED_FIELD, flag)
            self._record_deleted(i, coll, rec.id, flag)
            return True
        f = coll.fields[c.field]
        value: Any
        if use_new:
            value = new_value
        elif c.kind == "concurrent-write":
            value = c.candidates[choice % len(c.candidates)].value
        else:  # edit-vs-delete: keep the edited value, the record stays deleted (restore() brings it back)
            value = rec.fields[c.field]
        if f.merge == "set":
            value = frozenset(value or ())
        try:
            f.check(value)
        except Invalid:  # a merged set or text over its limit (merges do not refuse that): kept, it breaks it
            before, pending = r.store.load_range(()), r.pending()
            try:
                r.resolve(rec.collection, rec.id, c.field, value)
            except ValidationError as e:
                assert (e.collection, e.record, e.field) == (rec.collection, rec.id, c.field), e
            else:
                raise AssertionError(f"d{i}: resolving {rec.collection}/{rec.id}.{c.field} with {value!r} was accepted")
            assert r.store.load_range(()) == before and r.pending() == pending, "a refused resolve changed the store"
            return False
        r.resolve(rec.collection, rec.id, c.field, value)
        self._record(i, coll, rec.id, {c.field: value}, rec)
        return True

    def expect_invalid(self, i: int, collection: str, rid: str, values: Mapping[str, Any]) -> None:
        """A write that breaks the schema raises ``ValidationError`` and changes nothing."""
        r = self.replicas[i]
        before = r.store.load_range(())
        pending = r.pending()
        try:
            if r.get(collection, rid) is None:
                r.create(collection, values, id=rid)
            else:
                r.update(collection, rid, values)
        except ValidationError as e:
            assert e.collection == collection, e
        except RecordDeleted:
            pass
        else:
            raise AssertionError(f"d{i}: {collection}/{rid} {values!r} was accepted")
        assert r.store.load_range(()) == before and r.pending() == pending, "a refused write changed the store"

    # -- the network ---------------------------------------------------------------------------------------

    def send(self, src: int, dst: int, *, since: bool = False, delta: bool = False) -> bool:
        """Export from ``src`` to ``dst``: everything; or (``since``) what ``dst`` lacks now; or (``delta``)
        only what ``src`` gained since its previous delta, which may reach ``dst`` before what it builds on.

        A delta makes its writes count as seen by ``dst`` on delivery even if they wait there for an
        earlier blob: the oracle then errs towards excusing a write, never towards a false alarm.
        """
        if src == dst:
            return False
        a, b = self.replicas[src], self.replicas[dst]
        known = frozenset(self.known[src])
        if delta:
            mark, mark_known = self._marks.get(src, (None, frozenset()))
            blob = a.export_updates(since=mark) if mark is not None else a.export_updates()
            self._marks[src] = (a.state_vectors(), known)
            known = known - mark_known
        else:
            blob = a.export_updates(since=b.state_vectors()) if since else a.export_updates()
        self.in_flight.append(Message(src, dst, blob, known))
        return True

    def deliver(self, pick: int, *, keep: bool = False) -> bool:
        if not self.in_flight:
            return False
        m = self.in_flight[pick % len(self.in_flight)] if keep else self.in_flight.pop(pick % len(self.in_flight))
        self.replicas[m.dst].import_updates(m.blob)
        self.known[m.dst] |= m.known
        return True

    def drop(self, pick: int) -> bool:
        if not self.in_flight:
            return False
        self.in_flight.pop(pick % len(self.in_flight))
        return True

    def discard(self, i: int, pick: int, *, whole_record: bool = False) -> bool:
        """Discard pending change ``pick`` of replica ``i`` (and its record's later ones), or all of that
        record's pending changes. The oracle stops requiring what was discarded."""
        r = self.replicas[i]
        pending = r.pending()
        if not pending:
            return False
        p = pending[pick % len(pending)]
        gone = r.discard_record(p.collection, p.record) if whole_record else r.discard(p.id)
        assert gone and gone[0].record == p.record
        assert not any(q.id in {g.id for g in gone} for q in r.pending()), "a discarded change is still pending"
        self.discarded |= {(i, g.id) for g in gone}
        return True

    def acknowledge(self, i: int) -> bool:
        """As if a relay had stored every pending change of replica ``i`` (lets it compact)."""
        r = self.replicas[i]
        ids = [p.id for p in r.pending()]
        r.acknowledge(ids)
        assert r.pending() == []
        return bool(ids)

    def settle(self, *, since: bool = False) -> None:
        """Exchange everything: each replica sends all it has to the first, which sends it to all.

        ``since=True`` sends, each time, only what the receiver lacks (``export_updates(since=...)``), as
        a delta sync does: a replica whose partial exports lose something is then left behind, where
        full exports would repair it.
        """
        self.in_flight.clear()
        for i in range(1, len(self.replicas)):
            self.send(i, 0, since=since)
            self.deliver(0)
        for i in range(1, len(self.replicas)):
            self.send(0, i, since=since)
            self.deliver(0)

    def close(self) -> None:
        """Close every replica and its store (SQLite files, ...); the cluster is unusable afterwards."""
        for r in self.replicas:
            r.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- edit histories ------------------------------------------------------------------------------------

    def apply(self, op: Op) -> bool:
        """Run one step of an edit history (``crdtsync.testing.edit_histories``)."""
        i = op.replica % len(self.replicas)
        if op.kind == "create":
            return self.create(i, op.collection, op.record, op.values)
        if op.kind == "update":
            return self.update(i, op.collection, op.record, op.values)
        if op.kind == "increment":
            return self.increment(i, op.collection, op.record, op.field, op.by)
        if op.kind == "delete":
            return self.delete(i, op.collection, op.record)
        if op.kind == "restore":
            return self.restore(i, op.collection, op.record)
        if op.kind == "resolve":
            return self.resolve(i, op.pick, int(op.values.get("new", 0)))
        if op.kind == "send":
            return self.send(i, op.dst % len(self.replicas), since=op.since, delta=op.keep)
        if op.kind == "deliver":
            return self.deliver(op.pick, keep=op.keep)
        if op.kind == "drop":
            return self.drop(op.pick)
        return self.acknowledge(i)

    def run(self, history: Iterable[Op]) -> None:
        """Apply a history, settle (sending only what each replica lacks), and check."""
        for op in history:
            self.apply(op)
        self.settle(since=True)
        self.check()

    # -- the checks ----------------------------------------------------------------------------------------

    def check(self) -> None:
        """Convergence and no lost write; call after ``settle()``."""
        self.check_converged()
        self.check_no_lost_writes()

    def check_converged(self) -> None:
        first = self.replicas[0]
        for coll in self.schema:
            want = [snapshot(coll, rec) for rec in first.query(coll.name, include_deleted=True)]
            hist = {rec[0]: first.history(coll.name, rec[0]) for rec in want}
            for i, r in enumerate(self.replicas[1:], 1):
                got = [snapshot(coll, rec) for rec in r.query(coll.name, include_deleted=True)]
                assert got == want, f"d{i} differs from d0 in {coll.name}:\n  d0: {want}\n  d{i}: {got}"
                for rid, h in hist.items():
                    assert r.history(coll.name, rid) == h, f"d{i} history of {coll.name}/{rid} differs"

    def check_no_lost_writes(self) -> None:
        r = self.replicas[0]
        recs: dict[tuple[str, str], Record] = {}
        for coll in self.schema:
            for rec in r.query(coll.name, include_deleted=True):
                recs[(coll.name, rec.id)] = rec
        by_field: dict[tuple[tuple[str, str], str], list[Write]] = defaultdict(list)
        for w in self.writes:
            by_field[(w.key, w.field)].append(w)
        for w in self.writes:
            found = recs.get(w.key)
            if found is None:
                assert (w.replica, w.time) in self.discarded, f"{w.key} is gone: lost {w}"
                continue
            if self._survives(w, found, by_field[(w.key, w.field)]):
                continue
            raise AssertionError(f"lost write {w}\n  record now: {found}")
        for (c, rid, name), incs in self.counters.items():
            if (c, rid) not in recs:  # its creation was discarded (checked above)
                continue
            got = recs[(c, rid)].fields[name]
            kept = sum(d for i, t, d in incs if (i, t) not in self.discarded)
            # a discarded increment that had left its device comes back: any subset of them may count
            maybe = {0}
            for i, t, d in incs:
                if (i, t) in self.discarded:
                    maybe |= {m + d for m in maybe}
            assert got - kept in maybe, f"counter {c}/{rid}.{name} is {got}, the increments add up to {kept}"
        self._check_sets(recs)

    def _survives(self, w: Write, rec: Record, same_field: list[Write]) -> bool:
        if (w.replica, w.time) in self.discarded:
            return True  # the user chose to drop it
        if any(w.id in o.seen for o in same_field):
            return True  # overwritten (or deleted/restored) by someone who had seen it
        for c in rec.conflicts:
            if c.field == w.field and any(x.device == w.device and x.time == w.time for x in c.candidates):
                return True
        if w.field == DELETED_FIELD:
            return bool(rec.deleted == w.value)
        f = self.schema[w.key[0]].fields[w.field]
        return bool(f.encode(rec.fields[w.field]) == w.value)

    def _check_sets(self, recs: Mapping[tuple[str, str], Record]) -> None:
        ops: dict[tuple[tuple[str, str], str], list[_SetOp]] = defaultdict(list)
        for op in self.set_ops:
            ops[(op.key, op.field)].append(op)
        for coll in self.schema:
            for name, f in coll.fields.items():
                if f.merge != "set":
                    continue
                for (c, rid), rec in recs.items():
                    if c != coll.name:
                        continue
                    these = ops.get(((c, rid), name), [])
                    want = {a.element for a in these if a.add
                            and not any(not x.add and x.element == a.element and a.id in x.seen for x in these)}
                    got = {_elem(f, v) for v in rec.fields[name]}
                    # elements a discarded change touched may go either way (it may have left the device)
                    unsure = {x.element for x in these if (x.replica, x.time) in self.discarded}
                    want, got = want - unsure, got - unsure
                    assert got == want, f"set {c}/{rid}.{name} is {sorted(got)}, add-wins says {sorted(want)}"
