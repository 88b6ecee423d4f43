"""Checking a record's content against its collection's schema. No I/O.

``CheckedRecordDoc`` checks what changed since its last check (``check``) or only some keys
(``check_keys``, the relay's check of one change). Its ``_check_slot`` and ``_check_set`` check one entry
and say exactly what is wrong with a bad one.

``check_slots`` and ``check_set_entries`` check every entry of a record at once (a record new here, as a
merge brings it). There the usual entry is accepted inline, without those two calls per entry (half of
the cost of checking a slot); an entry the quick test does not pass, at the least doubt, goes through
them, so what is accepted and how a bad entry is refused (``RemoteValidationError``) stay theirs.

Two modes (``rules``):

- with the schema's rules (the default): the relay's, on the values each change brings as it arrives.
  Every value must pass its field's current rules, and every field and set field must be in the schema.
- structure only (``rules=False``): a device merging remote content. The relay enforced the rules on each
  change when it arrived, under the schema of the time; a later schema (a tightened limit, a removed
  choice, a field removed, a kind changed) must not make a device refuse content stored before it, or
  the device would never get those records, nor any later change of them. Refused: only what cannot be
  stored or shown safely: a malformed slot or set entry (its key, its JSON, its ``t``/``d``/``u``/``c`` or
  ``a``/``r``, a value that is not a str: a nested shared type), ``deleted`` not a bool, a counter share
  that is an int beyond 64 bits, a set element whose JSON is not a scalar. Kept: a register value
  outside the rules or of another kind (shown as stored), a value in a text or set field's marker or a
  counter share that is no int (written under another kind: ignored), fields and set fields the schema
  lacks (``RecordState.hidden``), set entries of a field that is no set now (ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from ..clock import MAX_TIME
from ..errors import RemoteValidationError
from ..schema import INT64_MAX, INT64_MIN, Collection, Invalid
from .document import MISSING, BaseRecordDoc, parse_set, parse_slot
from .layouts import foreign_entry
from .slots import DELETED, SEP, Slot
from .state import SetEntry

__all__ = ["CheckedRecordDoc", "check_set_entries", "check_slots"]

_new = object.__new__
_PUT_FIELD, _PUT_ELEMENT, _PUT_WRITER, _PUT_ADDS, _PUT_REMOVED = (
    SetEntry.__dict__[n].__set__ for n in ("field", "element", "writer", "adds", "removed"))


def _set_entry(name: str, element: str, writer: str, adds: int, removed: dict[str, int]) -> SetEntry:
    """``SetEntry(...)`` made through its slots (its frozen ``__init__`` was a fifth of checking one)."""
    e = _new(SetEntry)
    _PUT_FIELD(e, name)
    _PUT_ELEMENT(e, element)
    _PUT_WRITER(e, writer)
    _PUT_ADDS(e, adds)
    _PUT_REMOVED(e, removed)
    return e


#: the JSON values a set element may be (hashable, so that the set can hold them)
_SCALARS = frozenset({str, int, float, bool, type(None)})


def check_slots(coll: Collection, slots: Mapping[str, Any], check_slot: Callable[[str, Any], Slot], *,
                rules: bool = True) -> dict[str, Slot]:
    """``check_slot`` (``CheckedRecordDoc._check_slot`` in the same mode, ``rules``) of every slot, the usual
    one accepted inline."""
    fields = coll.fields
    loads = orjson.loads
    out: dict[str, Slot] = {}
    for key, raw in slots.items():
        name, _, writer = key.partition(SEP)
        if writer and raw.__class__ is str:
            try:
                p = loads(raw)
                t, d, u, c = p["t"], p["d"], p["u"], p["c"]
                v = p.get("v")
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                out[key] = check_slot(key, raw)
                continue
            if t.__class__ is int and 0 < t < MAX_TIME and d.__class__ is str and u.__class__ is str \
                    and c.__class__ is dict:
                for x in c.values():
                    if x.__class__ is not int or not 0 <= x < MAX_TIME:
                        break
                else:
                    f = fields.get(name)
                    if not rules:  # structure only (see the module docstring)
                        if f is None:
                            ok = v.__class__ is bool if name == DELETED else name != ""
                        else:
                            ok = f.merge != "counter" or v.__class__ is not int or INT64_MIN <= v <= INT64_MAX
                        if ok:
                            out[key] = Slot(name, writer, v, t, d, u, c)
                            continue
                        out[key] = check_slot(key, raw)
                        continue
                    try:
                        if f is None:
                            ok = name == DELETED and v.__class__ is bool
                        elif f.merge == "register":
                            f.decode(v)
                            ok = True
                        elif f.merge == "counter":
                            f.check(v)
                            ok = True
                        else:
                            ok = v is None
                    except Invalid:
                        ok = False
                    if ok:
                        out[key] = Slot(name, writer, v, t, d, u, c)
                        continue
        out[key] = check_slot(key, raw)
    return out


def check_set_entries(coll: Collection, sets: Mapping[str, Any], check_set: Callable[[str, Any], SetEntry], *,
                      rules: bool = True) -> dict[str, SetEntry]:
    """``check_set`` (``CheckedRecordDoc._check_set`` in the same mode, ``rules``) of every set entry, the
    usual one accepted inline."""
    fields = coll.fields
    loads = orjson.loads
    out: dict[str, SetEntry] = {}
    for key, raw in sets.items():
        parts = key.split(SEP)
        if len(parts) == 3 and raw.__class__ is str:
            name, element, writer = parts
            f = fields.get(name)
            try:
                p = loads(raw)
                a, r = p["a"], p["r"]
                if (not rules or (f is not None and f.merge == "set")) and a.__class__ is int and a >= 0 \
                        and r.__class__ is dict:
                    for x in r.values():
                        if x.__class__ is not int:
                            break
                    else:
                        if rules:
                            f.of.decode(loads(element))  # type: ignore[union-attr]
                        elif loads(element).__class__ not in _SCALARS:
                            raise ValueError("not a scalar")
                        out[key] = _set_entry(name, element, writer, a, r)
                        continue
            except (Invalid, ValueError, KeyError, TypeError):  # (orjson's errors are ValueErrors)
                pass
        out[key] = check_set(key, raw)
    return out


class CheckedRecordDoc(BaseRecordDoc):
    """A record's document that checks its content against the schema (``check``, ``check_keys``)."""

    def check_keys(self, slot_keys: Iterable[str], set_keys: Iterable[str]) -> dict[str, Slot] | None:
        """Check only the slots and set entries under these keys (those an update just set; the rest was
        checked before); raise ``RemoteValidationError``. The relay checks each change this way, at a cost
        that does not grow with the record. Keys no longer present (deleted) are skipped.

        Returns the slots it read, parsed, by key (for further checks without reading them again); None
        for a document kind with its own ``check`` (another layout), which is then checked whole."""
        if type(self).check is not CheckedRecordDoc.check:
            self.check()
            return None
        try:
            slots, sets = self._get_many(slot_keys, set_keys)
        except Exception as e:  # Yrs lists an entry it cannot return (a corrupted update)
            raise RemoteValidationError(self.collection.name, self.id, None, f"corrupted document: {e!r}") from None
        return self.check_values(slots, sets)

    def check_values(self, slots: Mapping[str, Any], sets: Mapping[str, Any]) -> dict[str, Slot] | None:
        """``check_keys`` of values already read (under the keys they were read from): the values an
        update left in the slot and set maps, as ``apply_traced`` reports them."""
        if type(self).check is not CheckedRecordDoc.check:
            self.check()
            return None
        cls = type(self)
        # the usual entry accepted inline (``check_slots``), as for a record new here, unless a subclass
        # checks entries its own way
        if cls._check_slot is CheckedRecordDoc._check_slot:
            parsed = check_slots(self.collection, slots, self._check_slot)
        else:
            check_slot = self._check_slot
            parsed = {key: check_slot(key, raw) for key, raw in slots.items()}
        if sets:
            if cls._check_set is CheckedRecordDoc._check_set:
                check_set_entries(self.collection, sets, self._check_set)
            else:
                for key, raw in sets.items():
                    self._check_set(key, raw)
        return parsed

    def get_sets(self, keys: Iterable[str]) -> dict[str, Any]:
        """The set entries present under these keys, as stored (JSON strings), read in one transaction."""
        return self._get_many((), keys)[1]

    def _get_many(self, slot_keys: Iterable[str], set_keys: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The values present under these keys of the slot map and the set map, read in one transaction
        (``Map.get`` opens two per key). Nested shared types come back as Yrs objects, which no check
        accepts."""
        with self._txn() as txn:
            t = txn._txn
            out = []
            for shared, keys in zip(self._handles(t), (slot_keys, set_keys), strict=True):
                got: dict[str, Any] = {}
                for key in keys:
                    if key not in got and shared.has(t, key):
                        got[key] = shared.get(t, key)
                out.append(got)
        return out[0], out[1]

    def check(self, *, rules: bool = True) -> None:
        """Check the slots and set entries against the schema; raise ``RemoteValidationError``.

        Only the entries that differ from the content before the updates applied since the last check
        (all of it valid) are checked: a merge into a large record checks what the merge brought.

        ``rules=False``: their structure only, not the schema's rules (a device's merge; see the module
        docstring). A document is checked in one mode throughout: what one mode accepted is not checked
        again in the other.
        """
        coll = self.collection
        base = self._base
        try:
            if self._slot_raw is None or self._set_raw is None:
                self._read_content()
            slots, sets = self._slot_raw, self._set_raw
            assert slots is not None and sets is not None
        except ValueError as e:
            raise RemoteValidationError(coll.name, self.id, None, f"corrupted document: {e}") from None
        check_slot: Callable[[str, Any], Slot]
        check_set: Callable[[str, Any], SetEntry]
        if rules:
            check_slot, check_set = self._check_slot, self._check_set
        else:
            check_slot, check_set = self._check_slot_structure, self._check_set_structure
        parsed: dict[str, Slot]
        set_parsed: dict[str, SetEntry]
        if base is None:  # nothing checked before (a record new here): every entry
            # every entry at once (see ``checks.py``), unless a subclass checks them its own way
            parsed = check_slots(coll, slots, check_slot, rules=rules) \
                if type(self)._check_slot is CheckedRecordDoc._check_slot \
                else {key: check_slot(key, raw) for key, raw in slots.items()}
            set_parsed = check_set_entries(coll, sets, check_set, rules=rules) \
                if sets and type(self)._check_set is CheckedRecordDoc._check_set \
                else {key: check_set(key, raw) for key, raw in sets.items()}
        else:
            old_raw, old_parsed = base[0], base[1]
            parsed = {}
            for key, raw in slots.items():
                parsed[key] = old_parsed[key] if old_raw.get(key, MISSING) == raw else check_slot(key, raw)
            old_set_raw = base[2] if base[2] is not None else {}
            old_set_parsed = base[3] if base[3] is not None else {}
            set_parsed = {}
            for key, raw in sets.items():
                set_parsed[key] = old_set_parsed[key] if old_set_raw.get(key, MISSING) == raw \
                    else check_set(key, raw)
        # checked: state() need not parse them again, and the next check starts from here
        self._parsed, self._set_parsed = parsed, set_parsed
        self._base = None

    def _check_slot(self, key: str, raw: Any, rules: bool = True) -> Slot:
        coll = self.collection
        try:
            s = parse_slot(key, raw)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e:
            # a draft of lww-record or lww-patch says so (the peer's schema gives the collection another
            # strategy), not "malformed slot: 't'"; only a refused entry pays for telling
            why = foreign_entry(coll.strategy, key, raw)
            raise RemoteValidationError(coll.name, self.id, None, why or f"malformed slot: {e}") from None
        name = s.field
        if name == DELETED:
            if not isinstance(s.value, bool):
                raise RemoteValidationError(coll.name, self.id, "deleted", "deleted must be a bool")
            return s
        f = coll.fields.get(name)
        if f is None:
            if not rules:
                return s  # a field this schema lacks: kept (``RecordState.hidden``)
            raise RemoteValidationError(coll.name, self.id, name, "unknown field")
        v = s.value
        try:
            merge = f.merge
            if not rules:  # a counter's share is summed: an int must fit in 64 bits (another value is ignored)
                if merge == "counter" and v.__class__ is int and not INT64_MIN <= v <= INT64_MAX:
                    raise Invalid(f"{v} does not fit in 64 bits")
            elif merge == "register":
                f.decode(v)
            elif merge == "counter":
                f.check(v)
            elif v is not None:
                raise Invalid("markers hold no value")
        except Invalid as e:
            raise RemoteValidationError(coll.name, self.id, s.field, str(e)) from None
        return s

    def _check_slot_structure(self, key: str, raw: Any) -> Slot:
        """``_check_slot`` of the structure only (``check(rules=False)``)."""
        return self._check_slot(key, raw, False)

    def _check_set(self, key: str, raw: Any, rules: bool = True) -> SetEntry:
        coll = self.collection
        try:
            entry = parse_set(key, raw)
            if not rules:
                element = orjson.loads(entry.element)
                if element.__class__ not in _SCALARS:
                    raise Invalid(f"an element must be a str, a number, a bool or null, not {element!r}")
                return entry  # (a field this schema lacks, or that is no set now, keeps it, unused)
            f = coll.fields.get(entry.field)
            if f is None or f.merge != "set":
                raise Invalid("unknown set field")
            f.of.decode(orjson.loads(entry.element))  # type: ignore[attr-defined]
        except (Invalid, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as e2:
            raise RemoteValidationError(coll.name, self.id, None, f"bad set entry: {e2}") from None
        return entry

    def _check_set_structure(self, key: str, raw: Any) -> SetEntry:
        """``_check_set`` of the structure only (``check(rules=False)``)."""
        return self._check_set(key, raw, False)

