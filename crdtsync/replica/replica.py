"""The replica: a device's records, schema, outbox and sync status, on a local byte store.

``Replica`` is the API apps use. Its layers: ``base.py`` (store, documents, rows, events, commits),
``exchange.py`` (what crosses devices), and here the local writes, the reads and the outbox.

Every local write is checked against the schema first (a bad write raises ``ValidationError`` and stores
nothing), then applied to the record's document, and its outbox entry (which holds its update) is
committed in one transaction before the call returns: a process killed at any point loses no change that
a call returned from.

The record's materialised row is written later: with the rows of up to 64 other records (``_DIRTY_MAX``)
written locally since their rows were (one key per write instead of two halves the pages a write
commits), when a merge, status change or acknowledgement rewrites it, or on ``close``. Until then reads
take that record from its document, so they never see a row behind a returned write. A replica reopened
after a crash finds those records by the ``x`` in their rows (the newest local change a row reflects)
against their pending changes in the outbox, and writes their rows before anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import LocalError, NoSuchConflict, RecordDeleted, RecordExists, RecordNotFound, ValidationError
from ..model.forms import form_edits, same_value
from ..model.record import RecordDoc
from ..model.state import Conflict, HistoryEntry, beyond64
from ..schema import Bool, Collection, Invalid
from ..store.base import Batch
from .docs import LoadedRecord
from .exchange import ExchangingReplica
from .locking import holds_lock, one_at_a_time
from .outbox import Outbox, OutboxEntry
from .rows import Where
from .types import ChangeEvent, PendingChange, Record, RecordStatus

__all__ = ["Replica"]


@one_at_a_time
class Replica(ExchangingReplica):
    """A device's copy of the records. Open it with ``Replica.open(path, schema, device=, user=)``.

    One replica may be shared by several threads: its public methods run one at a time (``locking.py``).
    """

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

    @holds_lock
    def update(self, collection: str, id: str, values: Mapping[str, Any], *, base: Record | None = None) -> None:
        """Change some fields. Text fields get a character diff; sets their added/removed elements;
        counters the difference (use ``increment`` for concurrent-safe counting).

        ``base``: the record (from ``get``, ``query`` or an event of this replica) an edit form was filled
        from. ``values`` are then the user's edits of what it showed, not of the record as it is now: a
        field equal to its value in ``base`` is not written; a register changed is written as made having
        seen only what ``base`` showed (a write made elsewhere since stays, a surfaced conflict); a counter
        gets the difference from ``base``, a text the user's edits replayed on its text now, a set the
        elements added and removed. See docs/records.md, "Saving a form".
        """
        lock = self._lock  # taken here, not by a wrapper (``holds_lock``): the hottest call of an app
        lock.acquire()
        try:
            coll = self._coll(collection)
            if base is not None:
                self._update_based(coll, id if id.__class__ is str else self._id_arg(collection, id), values, base)
                return
            checked = coll.check(id if id.__class__ is str else self._id_arg(collection, id), values, create=False)
            lr = self._writable(coll, id)
            if checked:
                self._commit_local(coll, id, "update", self._shown(coll, checked),
                                   lambda doc, t: doc.write(checked, t), lr)
        finally:
            lock.release()

    @staticmethod
    def _form_values(coll: Collection, rid: str, values: Mapping[str, Any], base: Record) -> dict[str, Any]:
        """A form's values, checked, for a save based on ``base``: refused unless ``base`` is a record of
        the same id. A field left as shown is not checked: a value stored under older rules, shown as
        stored, does not stop the user saving the fields they did edit."""
        if not isinstance(base, Record):
            raise LocalError(f"base must be a Record this replica returned, not {type(base).__name__}")
        if (base.collection, base.id) != (coll.name, rid):
            raise LocalError(f"base is the record {base.collection}/{base.id}, not {coll.name}/{rid}: pass the "
                             "record the form was filled from")
        shown = base.fields
        return coll.check(rid, {n: v for n, v in values.items() if n not in shown or n not in coll.fields
                                or not same_value(coll.fields[n], v, shown[n])}, create=False)

    def _update_based(self, coll: Collection, rid: str, values: Mapping[str, Any], base: Record) -> None:
        """``update(..., base=)``: the form's edits relative to ``base`` (``model/forms.py``)."""
        checked = self._form_values(coll, rid, values, base)
        lr = self._writable(coll, rid)
        edits, set_edits = form_edits(coll, base.fields, checked, lr.doc)
        if not edits:
            return
        final = coll.check(rid, edits, create=False)  # what they make of the record now: limits, counters
        version = base.version  # None: a row stored before rows kept it; written as a plain update

        def write(doc: RecordDoc, t: int) -> bytes:
            return doc.write(final, t, base=version, set_edits=set_edits)

        self._commit_local(coll, rid, "update", self._shown(coll, final), write, lr)

    def increment(self, collection: str, id: str, field: str, by: int = 1) -> None:
        """Add ``by`` to a counter field; increments made concurrently on several devices all count."""
        coll = self._coll(collection)
        f = coll.field(self._id_arg(collection, id), field)
        if f.merge != "counter":
            article = "an" if f.kind == "int" else "a"
            raise ValidationError(collection, id, field, f"is {article} {f.kind} field, not a counter")
        try:
            f.check(by)
        except Invalid as e:
            raise ValidationError(collection, id, field, str(e)) from None
        self._writable(coll, id)

        def write(doc: RecordDoc, t: int) -> bytes:
            current = doc.counter_sum(field)  # (the state shows a sum beyond 64 bits clamped)
            total = current + by
            try:
                f.check(total)
            except Invalid as e:
                # a sum beyond 64 bits (merged directly: the relay refuses that) may still come back towards it
                if beyond64(total) >= beyond64(current):
                    raise ValidationError(collection, id, field, f"incrementing by {by}: {e}") from None
            return doc.write({field: total}, t, op="inc")

        self._commit_local(coll, id, "increment", {field: by}, write)

    def delete(self, collection: str, id: str) -> None:
        """Delete a record (a change like any other: it syncs). A concurrent edit is kept as the
        collection's ``delete_policy`` says (docs/records.md); ``restore()`` brings the record back.
        Deleting a deleted record without conflicts does nothing. Raises ``RecordNotFound`` for a record
        that does not exist here, ``RecordBlocked`` while it holds a rejected change."""
        coll = self._coll(collection)
        rec = self._row(coll, self._id_arg(collection, id))
        if rec is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        if rec.deleted and not rec.conflicts:
            return
        self._not_blocked(coll, id)
        self._commit_local(coll, id, "delete", {}, lambda doc, t: doc.set_deleted(True, t))

    def restore(self, collection: str, id: str) -> None:
        """Bring back a deleted record, with every edit made to it concurrently with the delete."""
        coll = self._coll(collection)
        rec = self._row(coll, self._id_arg(collection, id))
        if rec is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        if not rec.deleted and not any(c.field == "deleted" for c in rec.conflicts):
            return
        self._not_blocked(coll, id)
        self._commit_local(coll, id, "restore", {}, lambda doc, t: doc.set_deleted(False, t))

    def resolve(self, collection: str, id: str, field: str, value: Any) -> None:
        """Settle a conflict: ``value`` (one of the candidates, or a new one) replaces every value seen.

        For the ``deleted`` pseudo-field, ``True`` confirms the delete and ``False`` restores the record.
        An ``edit-vs-delete`` conflict of a field is settled by picking either candidate: ``True`` (the
        delete, ``candidates[0]``; for a ``Bool`` field, a value like the others: confirm the delete with
        ``delete()``) confirms the delete, clearing the record's conflicts; any other value (an edit's, or a
        new one) settles the field, and the record stays deleted: ``restore()`` brings it back with it.
        The resolution is a change like any other: it syncs and clears the conflict on every device.
        """
        coll = self._coll(collection)
        rec = self._row(coll, self._id_arg(collection, id))
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
        if value is True and rec.deleted and not isinstance(coll.fields.get(field), Bool) \
                and any(c.field == field and c.kind == "edit-vs-delete" for c in rec.conflicts):
            self.resolve(collection, id, "deleted", True)  # the delete's candidate: the delete is confirmed
            return
        checked = coll.check(id, {field: value}, create=False)
        self._not_blocked(coll, id)  # a deleted record's conflicts may be settled without restoring it
        self._commit_local(coll, id, "resolve", self._shown(coll, checked),
                           lambda doc, t: doc.write(checked, t, op="resolve", full_seen=True))

    # -- reads ---------------------------------------------------------------------------------------------

    def get(self, collection: str, id: str) -> Record | None:
        """The record, or None if it does not exist here. Deleted records are returned with ``deleted``."""
        return self._row(self._coll(collection), self._id_arg(collection, id))

    def query(self, collection: str, where: Where = None, *, include_deleted: bool = False,
              order_by: str | None = None, descending: bool = False, limit: int | None = None) -> list[Record]:
        """Records of a collection from the materialised rows, in id order. ``where`` maps fields to the
        values they must equal, or is a predicate on ``Record``.

        ``order_by`` sorts by a field (``descending`` reverses it), ties in id order. Records holding NaN
        (``Float(allow_nan=True)``), and then those whose value is None, come last either way. A naive
        datetime compares as if in UTC; a set by its elements in order. ``limit`` (an int >= 0) keeps the first ones; a
        negative or non-int ``limit`` raises ``LocalError``."""
        coll = self._coll(collection)
        return self.rows.query(coll, where, include_deleted=include_deleted, order_by=order_by,
                               descending=descending, limit=limit, overlay=self._overlay(coll))

    def conflicts(self, collection: str | None = None) -> list[Conflict]:
        """Every open conflict (of one collection, or all)."""
        out: list[Conflict] = []
        for coll in [self._coll(collection)] if collection else list(self.schema):
            out += self.rows.conflicts(coll, self._overlay(coll))
        return out

    def history(self, collection: str, id: str) -> list[HistoryEntry]:
        """Every field change of the record known here, oldest first, with device, user and time."""
        coll = self._coll(collection)
        if self._row(coll, self._id_arg(collection, id)) is None:
            raise RecordNotFound(f"{collection}/{id} does not exist")
        return self.docs.get(collection, id).doc.history()

    def status(self, collection: str, id: str) -> RecordStatus:
        """The record's sync status (``pending``, ``syncing``, ``synced``, ``conflict`` or ``error``), as
        ``get(...).status``; raises ``RecordNotFound`` for a record that does not exist here."""
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
        """Throw away every pending change of a record (for instance one the relay rejected). Returns what
        was discarded: nothing for a record without pending changes; a record that does not exist here
        raises ``RecordNotFound``."""
        self._missing(self._coll(collection), self._id_arg(collection, id))
        ids = [x.id for x in self.outbox.for_record(collection, id)]
        return self._discard(collection, id, ids)

    def fix(self, collection: str, id: str, values: Mapping[str, Any], *,
            base: Record | None = None) -> list[PendingChange]:
        """Correct a record whose change the relay rejected, and send it again.

        The rejected change and the record's later changes (held behind it) are replaced, in one
        transaction, by one new pending change: it sets the fields they set, as they stand on this device,
        with ``values`` over them. A record created by the rejected change is created again. ``values`` are
        checked against the schema first; a bad fix raises ``ValidationError`` and changes nothing. Returns
        the replaced changes. A deleted record cannot be fixed: discard its changes instead. A record without
        a rejected change raises ``LocalError``; one that does not exist here, ``RecordNotFound``.

        ``base``: the record a fix form was filled from, as for ``update``: ``values`` are then the user's
        edits of it (a field equal to its value in ``base`` is not set; counters, texts and sets take the
        user's edits over the record as it stands), and the new change is written as made having seen only
        what ``base`` showed (and this device's own writes).
        """
        coll = self._coll(collection)
        self._missing(coll, self._id_arg(collection, id))
        changes = self.outbox.for_record(collection, id)
        first = next((e for e in changes if e.status == "error"), None)
        if first is None:
            raise LocalError(f"{collection}/{id} has no rejected change to fix")
        replaced = [e for e in changes if e.id >= first.id]
        # a bad value raises before anything changes
        corrected = coll.check(id, values, create=False) if base is None else self._form_values(coll, id, values, base)
        doc = self.docs.get(collection, id).doc
        before = doc.state()
        if before.deleted or any(e.op in ("delete", "restore") or "deleted" in e.fields for e in replaced):
            raise RecordDeleted(f"{collection}/{id}: a rejected delete or restore cannot be fixed; "
                                "discard_record() it instead")
        names = dict.fromkeys(n for e in replaced for n in e.fields)
        intended = {n: before.fields[n] for n in names if n in before.fields}
        intended.update(corrected if base is None else form_edits(coll, base.fields, corrected, doc)[0])
        version = None if base is None else base.version

        def write_fix(batch: Batch, lr: LoadedRecord) -> None:
            create = not lr.doc.state().exists
            checked = coll.check(id, intended, create=create)
            t = self.clock.now()
            op = "create" if create else "update"
            update = lr.doc.write(checked, t, op=op, alive=create, base=version)
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
            for i in ids:  # they may have reached a relay already: the next sync asks for them back
                batch.save(("meta", "returns", i), b"")
            rec: Record | None = None
            # a record that left the scope while these waited (``evict``) leaves now, unless more wait
            leaves = (collection, rid) in self._left and replace is None \
                and not self.outbox.for_record(collection, rid)
            if leaves:
                self._stage_removal(batch, collection, rid)
            elif lr.doc.state().exists:
                rec = self._save_row(batch, coll, lr.doc)
            else:
                batch.remove(("row", collection, rid))
            self._commit(batch)
        except BaseException:
            self.docs.reload(collection, rid)
            self.outbox = self.docs.local = Outbox(self.store)
            raise
        if leaves:
            self._left.discard((collection, rid))
            self.docs.reload(collection, rid)
            self._emit([ChangeEvent(collection, rid, "remote", None)])
        else:
            self._emit([ChangeEvent(collection, rid, "local", rec)])
        return gone

