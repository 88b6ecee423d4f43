"""One record as a pycrdt document, and the writes a device can make to it. No I/O.

``RecordDoc`` is the record model the replica and the relay use: a device's writes (here) over the layers
that build and read the document (``document.py``, which also describes its layout), check it against
the schema (``checks.py``) and merge remote updates into it (``merging.py``).

Every write returns the Yjs update it produced; the caller stores and sends those bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..errors import ValidationError
from ..schema import INT64_MAX, INT64_MIN, Collection, Field, Invalid
from .document import EMPTY_UPDATE
from .merging import MergingRecordDoc, merged
from .slots import DELETED, SEP, Slot, is_own_writer, writer_device
from .state import HistoryEntry, RecordState, SetEntry, _by, _record_state, clamp64, encoded_or_stored, share
from .textdiff import text_edits

__all__ = ["RecordDoc"]

_REGISTERS: dict[int, tuple[Collection, frozenset[str]]] = {}


#: history entries inserted one after another at a time (see ``_insert_front``)
_RUN = 64


def _insert_front(hist: Any, txn: Any, entries: list[str]) -> None:
    """Insert ``entries`` at the front of the history array ``hist`` (a Yrs array), in their order.

    At the front: ``history()`` sorts the entries by time anyway, and appending to a long array cost Yrs a
    walk over every entry (40 us at 3000 writes). Yrs finds an index by walking the array's items, and
    those inserted in the open transaction are not yet squashed into one: inserting n entries at 0, 1, 2,
    ... walked n²/2 items (16,000 set elements added in one write took 7 s). So they go in runs of
    ``_RUN``, the last run first, each at index 0 onwards: the same order, a walk of at most ``_RUN`` items
    per entry, and runs that each encode as one block (12 bytes more per run than one block for all;
    inserted one by one at 0, each entry would cost 12 more). A write of up to ``_RUN`` entries is one run.
    """
    for start in range(((len(entries) - 1) // _RUN) * _RUN, -1, -_RUN):
        for i, entry in enumerate(entries[start:start + _RUN]):
            hist.insert(txn, i, entry)


def _registers(coll: Collection) -> frozenset[str]:
    """The names of the plain (register) fields of a collection, computed once per collection."""
    hit = _REGISTERS.get(id(coll))
    if hit is None or hit[0] is not coll:  # (the collection is kept in the entry: its id stays its own)
        if len(_REGISTERS) >= 1024:
            _REGISTERS.clear()
        hit = _REGISTERS[id(coll)] = (coll, frozenset(n for n, f in coll.fields.items() if f.merge == "register"))
    return hit[1]


class RecordDoc(MergingRecordDoc):
    """A record's Yjs document plus the device's identity, with typed writes and a cached merged state."""

    #: whether a local write may derive the new state from the old one (see ``_advanced``); a strategy
    #: whose state follows other rules turns it off
    _advances = True

    # -- writing -------------------------------------------------------------------------------------------

    def _write(self, body: Callable[[], None]) -> bytes:
        self._captured.clear()
        self._log_buf = []
        with self._capturing(), self.doc.transaction(origin="local") as txn:
            body()
            _insert_front(self._hist.integrated, txn._txn, self._log_buf)
        self._state = None
        self._fold_parts()
        out = self._captured[:]
        self._captured.clear()
        if not out:
            return b""
        return merged(out)

    def _put_slot(self, name: str, value: Any, t: int, seen: Mapping[str, int]) -> None:
        key = f"{name}{SEP}{self.writer}"
        raw = orjson.dumps({"v": value, "t": t, "d": self.device, "u": self.user, "c": seen}).decode()
        self._slots[key] = raw
        self._wrote_slot(key, raw, Slot(name, self.writer, value, t, self.device, self.user, seen))

    def _wrote_slot(self, key: str, raw: str, slot: Slot) -> None:
        """Keep the slot caches in step with a slot just written (cheaper than reading it all again)."""
        if self._slot_raw is not None and self._parsed is not None:
            self._slot_raw[key] = raw
            self._parsed[key] = slot
        else:
            self._slot_raw = self._parsed = None

    def _log(self, name: str, op: str, value: Any, t: int) -> None:
        """Add a history entry (within a ``_write``)."""
        self._log_buf.append(orjson.dumps({"f": name, "o": op, "v": value, "d": self.device, "u": self.user,
                                           "t": t}).decode())

    def write(self, values: Mapping[str, Any], t: int, *, op: str = "set", full_seen: bool = False,
              alive: bool = False, base: Mapping[str, int] | None = None,
              set_edits: Mapping[str, tuple[frozenset[Any], frozenset[Any]]] | None = None) -> bytes:
        """Write checked values (decoded Python values) at HLC time ``t``; return the Yjs update.

        ``full_seen`` is for resolve: the write covers every value of the record, so nothing it replaces
        stays a conflict. ``alive`` (for create) also marks the record as not deleted, so a record with no
        field set still exists.

        ``base`` (a form saved with ``update(..., base=record)``): the version vector of what the user saw.
        The write then claims to have seen only that (``based_seen``), so a write another device made after
        it stays live, a surfaced conflict. ``set_edits`` maps a set field to the elements the user added
        and removed: added ones are added (even if present now), removed ones lose only the adds ``base``
        had seen (``_write_set_edits``); such a field's value in ``values`` is not used.
        """
        state = self.state()
        if base is not None:
            seen = self.based_seen(base, state.vector)
            covers = all(seen.get(w, 0) >= n for w, n in state.vector.items())
        else:
            seen, covers = dict(state.vector), True
        if full_seen:
            for s in self.slots().values():
                seen[s.writer] = max(seen.get(s.writer, 0), s.t)
        if not alive and values.keys() <= _registers(self.collection) \
                and type(self)._put_slot is RecordDoc._put_slot:
            out = self._write_registers(values, t, op, seen)
            if out and covers and self._advances and state.exists and not state.deleted and not state.conflicts \
                    and t > state.updated:
                self._state = self._advanced(state, values, t)
            return out
        slots = self.slots()
        # a counter slot holds its writer's running total: checked before anything is written (a write that
        # fails half-way would leave its first fields in the document, which has no rollback)
        totals: dict[str, int] = {}
        deltas: dict[str, int] = {}
        for name, value in values.items():
            if self.collection.fields[name].merge == "counter":
                # against the sum of the slots: the state shows a sum beyond 64 bits clamped
                delta = deltas[name] = value - self.counter_sum(name)
                own = slots.get(f"{name}{SEP}{self.writer}")
                total = totals[name] = (share(own.value) if own else 0) + delta
                if not INT64_MIN <= total <= INT64_MAX:
                    raise ValidationError(self.collection.name, self.id, name,
                                          f"changing it by {delta} makes this device's share of the counter "
                                          f"{total}, which does not fit in 64 bits (other devices' changes "
                                          "of opposite sign offset it in the sum)")

        def body() -> None:
            if alive:
                self._put_slot(DELETED, False, t, seen)
            for name, value in values.items():
                f = self.collection.fields[name]
                if f.merge == "register":
                    enc = f.encode(value)
                    self._put_slot(name, enc, t, seen)
                    self._log(name, op, enc, t)
                elif f.merge == "text":
                    text = self.text(name)
                    old = str(text)
                    # pycrdt's Text counts UTF-8 bytes, not characters: "é" is 2, an emoji 4
                    for start, end, insert in text_edits(old, value):
                        at = len(old[:start].encode("utf-8"))
                        if end > start:
                            del text[at:at + len(old[start:end].encode("utf-8"))]
                        if insert:
                            text.insert(at, insert)
                    self._text_now = None
                    self._put_slot(name, None, t, seen)
                    self._log(name, "text", value, t)
                elif f.merge == "counter":
                    self._put_slot(name, totals[name], t, seen)
                    delta = deltas[name]
                    if INT64_MIN <= delta <= INT64_MAX:
                        self._log(name, "inc", delta, t)
                    else:  # (bringing a sum beyond 64 bits back: the difference has no JSON form)
                        self._log(name, "set", value, t)
                elif set_edits is not None and name in set_edits:
                    added, removed = set_edits[name]
                    self._write_set_edits(name, added, removed, t, seen)
                else:
                    self._write_set(name, frozenset(value), state.fields.get(name, frozenset()), t, seen)

        out = self._write(body)
        if out and covers and self._advances and not alive and state.exists and not state.deleted \
                and not state.conflicts and t > state.updated \
                and all(self.collection.fields[n].merge in ("register", "counter") for n in values):
            self._state = self._advanced(state, values, t)
        return out

    def own_writer(self, writer: str) -> bool:
        """Whether ``writer`` is this device (its tag now, or one it wrote under before a discard rebuilt the
        record: ``device#N``)."""
        return writer == self.writer or is_own_writer(writer, self.device)

    def based_seen(self, base: Mapping[str, int], vector: Mapping[str, int]) -> dict[str, int]:
        """The seen vector of a write made on what ``base`` (a record's version vector) showed: ``base``,
        within what the record holds now (a write held back since, or discarded, is not claimed), and all of
        this device's own writes (a device knows what it wrote; its own slot of a field is replaced anyway)."""
        seen: dict[str, int] = {}
        for w, n in vector.items():
            if self.own_writer(w):
                seen[w] = n
            else:
                b = base.get(w, 0)
                if b.__class__ is int and b > 0:
                    seen[w] = min(b, n)
        return seen

    def counter_sum(self, name: str) -> int:
        """The sum of a counter's slots, beyond 64 bits if they add up to that (``state()`` shows it clamped):
        what a write of the counter's new value is a difference from."""
        return sum(share(s.value) for s in self.slots().values() if s.field == name)

    def _write_registers(self, values: Mapping[str, Any], t: int, op: str, seen: Mapping[str, int]) -> bytes:
        """``write`` of plain (register) fields: what ``_write`` with ``_put_slot`` and ``_log`` does, in one
        Yrs transaction on the bare document (pycrdt's ``Transaction`` wrapper and the nested ones of
        ``Map.__setitem__`` were a fifth of an ``update()``). Nothing in here may open a pycrdt transaction."""
        fields = self.collection.fields
        writer, device, user = self.writer, self.device, self.user
        slots: list[tuple[str, str, Slot]] = []
        logged: list[str] = []
        for name, value in values.items():
            enc = fields[name].encode(value)
            raw = orjson.dumps({"v": enc, "t": t, "d": device, "u": user, "c": seen}).decode()
            slots.append((f"{name}{SEP}{writer}", raw, Slot(name, writer, enc, t, device, user, seen)))
            logged.append(orjson.dumps({"f": name, "o": op, "v": enc, "d": device, "u": user, "t": t}).decode())
        updates: list[bytes] = []
        box = self._tap()
        box[0] = updates
        try:
            ydoc = self._ydoc
            txn = ydoc.create_transaction()
            try:
                slot_map = self._handles(txn)[0]
                roots = self._roots
                hist = roots[2].integrated if roots is not None else ydoc.get_or_insert_array(txn, "h")
                for key, raw, _ in slots:
                    slot_map.insert(txn, key, raw)
                if len(logged) <= _RUN:  # (``_insert_front`` inlined: this is every update()'s path)
                    for i, entry in enumerate(logged):
                        hist.insert(txn, i, entry)
                else:
                    _insert_front(hist, txn, logged)
                txn.commit()
            finally:
                txn.drop()
        finally:
            box[0] = None
        for key, raw, slot in slots:
            self._wrote_slot(key, raw, slot)
        self._state = None
        out = [u for u in updates if u != EMPTY_UPDATE]
        for u in out:
            self._parts.append(u)
            self._tail_bytes += len(u)
        self._fold_parts()
        if not out:
            return b""
        return merged(out)

    def _tap(self) -> list[list[bytes] | None]:
        """A lasting subscription to the document's updates for ``_write_registers``: a box whose list, when
        one is put in it, receives the update of each transaction (subscribing anew cost every write two
        calls into Rust). The callback holds the box only, never this object: no cycle through Rust."""
        if self._tap_box is None:
            box: list[list[bytes] | None] = [None]

            def tap(event: Any) -> None:
                sink = box[0]
                if sink is not None:
                    sink.append(event.update)

            self._tap_sub = self._ydoc.observe(tap)
            self._tap_box = box
        return self._tap_box

    def _advanced(self, state: RecordState, values: Mapping[str, Any], t: int) -> RecordState:
        """The state after this device wrote ``values`` (register or counter fields) at ``t``, from the state
        before, without recomputing it from every slot.

        Only for a record that exists with no conflict and no delete in effect (so no delete is live), and
        a ``t`` later than every slot: the new slots saw every slot (their context is the record's vector),
        so each is its field's only live value and its latest write; a counter's value becomes the total
        written. Exactly what ``compute_state`` would give, at a fraction of the cost.
        """
        fields = dict(state.fields)
        changed_by = dict(state.changed_by)
        by = _by(self.device, self.user, t)
        for name, value in values.items():
            f = self.collection.fields[name]
            if f.merge == "register":
                if type(f).encode is Field.encode:  # the JSON form is the checked value: it decodes to itself
                    fields[name] = value
                    changed_by[name] = by
                    continue
                enc = f.encode(value)
                try:
                    fields[name] = f.decode(enc)
                except Invalid:
                    fields[name] = enc
            elif f.merge == "counter":  # the sum written, shown within 64 bits (as ``compute_state``)
                fields[name] = clamp64(value)
            else:
                fields[name] = value
            changed_by[name] = by
        vector = dict(state.vector)
        vector[self.writer] = t
        return _record_state(state.collection, state.id, fields, False, (), vector, True, t, changed_by, state.hidden)

    def _write_set(self, name: str, new: frozenset[Any], old: frozenset[Any], t: int,
                   seen: Mapping[str, int]) -> None:
        of = self.collection.fields[name].of  # type: ignore[attr-defined]
        entries: dict[str, list[SetEntry]] = {}
        for e in self.set_entries():
            if e.field == name:
                entries.setdefault(e.element, []).append(e)
        for value in sorted(new - old, key=repr):
            element = orjson.dumps(of.encode(value)).decode()
            mine = next((e for e in entries.get(element, []) if e.writer == self.writer), None)
            adds = (mine.adds if mine else 0) + 1
            removed = dict(mine.removed) if mine else {}
            self._sets[f"{name}{SEP}{element}{SEP}{self.writer}"] = orjson.dumps({"a": adds, "r": removed}).decode()
            self._log(name, "add", of.encode(value), t)
        gone = old - new
        stored = _stored_as(of, entries, gone) if gone else {}
        for value in sorted(gone, key=repr):
            enc = encoded_or_stored(of, value)
            # every element stored that reads as this value: the same instant under two offsets, a value
            # written under an older element kind (a Date now read as a DateTime) are one value, and
            # removing it must remove them all, or it stays
            for element in stored.get(value) or [orjson.dumps(enc).decode()]:
                es = entries.get(element, [])
                mine = next((e for e in es if e.writer == self.writer), None)
                removed = dict(mine.removed) if mine else {}
                for e in es:
                    removed[e.writer] = max(removed.get(e.writer, 0), e.adds)
                self._sets[f"{name}{SEP}{element}{SEP}{self.writer}"] = orjson.dumps(
                    {"a": mine.adds if mine else 0, "r": removed}).decode()
            self._log(name, "remove", enc, t)
        self._set_raw = self._set_parsed = None
        self._put_slot(name, None, t, seen)

    def _write_set_edits(self, name: str, added: frozenset[Any], removed: frozenset[Any], t: int,
                         seen: Mapping[str, int]) -> None:
        """A set field of a saved form (``write(..., base=)``): add ``added``, even elements present now (the
        user's add counts: a remove that has not seen it does not remove it); remove of each of ``removed``
        still present only the adds the form had seen (``seen``): an add made elsewhere after it stays, as
        an add-wins set keeps an add the remover had not seen."""
        of = self.collection.fields[name].of  # type: ignore[attr-defined]
        entries: dict[str, list[SetEntry]] = {}
        for e in self.set_entries():
            if e.field == name:
                entries.setdefault(e.element, []).append(e)
        slots = self.slots()
        history: list[HistoryEntry] | None = None
        for value in sorted(added, key=repr):
            element = orjson.dumps(of.encode(value)).decode()
            mine = next((e for e in entries.get(element, []) if e.writer == self.writer), None)
            self._sets[f"{name}{SEP}{element}{SEP}{self.writer}"] = orjson.dumps(
                {"a": (mine.adds if mine else 0) + 1, "r": dict(mine.removed) if mine else {}}).decode()
            self._log(name, "add", of.encode(value), t)
        stored = _stored_as(of, entries, removed) if removed else {}
        for value in sorted(removed, key=repr):
            for element in stored.get(value, []):
                es = entries.get(element, [])
                mine = next((e for e in es if e.writer == self.writer), None)
                gone = dict(mine.removed) if mine else {}
                for e in es:
                    n = e.adds
                    if not self.own_writer(e.writer):
                        b = seen.get(e.writer, 0)
                        marker = slots.get(f"{name}{SEP}{e.writer}")
                        if marker is None or marker.t > b:  # it wrote this set since: count its adds seen
                            if history is None:
                                history = self.history()
                            device = writer_device(e.writer)
                            n = min(n, sum(1 for h in history if h.field == name and h.op == "add"
                                           and h.device == device and h.time <= b
                                           and orjson.dumps(h.value).decode() == element))
                    gone[e.writer] = max(gone.get(e.writer, 0), n)
                self._sets[f"{name}{SEP}{element}{SEP}{self.writer}"] = orjson.dumps(
                    {"a": mine.adds if mine else 0, "r": gone}).decode()
            if value in stored:
                self._log(name, "remove", encoded_or_stored(of, value), t)
        self._set_raw = self._set_parsed = None
        self._put_slot(name, None, t, seen)

    def set_deleted(self, deleted: bool, t: int, *, full_seen: bool = True) -> bytes:
        """Delete (or restore) the record at time ``t``. A delete covers every write it has seen."""
        seen = dict(self.state().vector)

        def body() -> None:
            self._put_slot(DELETED, deleted, t, seen)
            self._log("deleted", "delete" if deleted else "restore", deleted, t)

        return self._write(body)


def _stored_as(of: Field, entries: Mapping[str, list[SetEntry]], values: frozenset[Any]) -> dict[Any, list[str]]:
    """The present elements (JSON) of a set among ``entries`` that read as one of ``values``, by value.

    Read as the record's state reads them (``state._set_values``): decoded by the element field, or as
    stored when it cannot decode them. Equal values group together (a dict compares them by ``==``)."""
    out: dict[Any, list[str]] = {}
    for element, es in sorted(entries.items()):
        removed: dict[str, int] = {}
        for e in es:
            for w, n in e.removed.items():
                removed[w] = max(removed.get(w, 0), n)
        if not any(e.adds > removed.get(e.writer, 0) for e in es):
            continue
        raw = orjson.loads(element)
        try:
            value = of.decode(raw)
        except (Invalid, TypeError, ValueError):
            value = raw
        try:
            if value in values:
                out.setdefault(value, []).append(element)
        except TypeError:  # an unhashable value stored (a list): no value removed can read as it
            continue
    return out
