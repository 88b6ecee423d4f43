"""What a record looks like to an app: its fields, conflicts, deletion and history, computed from slots.

Pure: no pycrdt, no I/O. ``compute_state`` is the one place where merge rules become values.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection as Collection_
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..clock import hlc_wall_ms
from ..schema import INT64_MAX, INT64_MIN, Bool, Collection, Field, Int, Invalid, Ref, Str
from .slots import DELETED, Slot, frontier, mutually_concurrent, winner

__all__ = ["UNWRITTEN", "Candidate", "Conflict", "HistoryEntry", "RecordState", "SetEntry", "beyond64", "clamp64",
           "compute_state", "decoded_or_stored", "encoded_or_stored", "hidden_fields", "share"]

ConflictKind = Literal["concurrent-write", "edit-vs-delete", "delete-vs-edit"]

#: the value of a field that no write ever reached, by its merge kind: what ``compute_state`` shows (and
#: what a stored row made before the field was added to the schema is read with: ``replica/rows.py``)
UNWRITTEN: Mapping[str, Any] = {"register": None, "counter": 0, "text": "", "set": frozenset()}


def _wall(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(hlc_wall_ms(t) / 1000, tz=dt.UTC)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One value a field could have, with who wrote it and when (HLC ``time``; ``at`` is its wall part)."""

    value: Any
    device: str
    user: str
    time: int

    @property
    def at(self) -> dt.datetime:
        return _wall(self.time)


@dataclass(frozen=True, slots=True)
class Conflict:
    """An open conflict on one field: ``candidates[0]`` is the value in effect, the rest lost but kept.

    ``kind`` is ``concurrent-write`` (two devices wrote the field without seeing each other),
    ``edit-vs-delete`` (the record was deleted while this field was edited; ``candidates[0]`` is the delete,
    with value ``True``, which ``resolve`` takes to confirm the delete; restore to keep the edit) or
    ``delete-vs-edit`` (field ``deleted``: the record came back because of a concurrent edit; delete it
    again to confirm the delete).
    """

    collection: str
    record: str
    field: str
    kind: ConflictKind
    candidates: tuple[Candidate, ...]

    @property
    def value(self) -> Any:
        return self.candidates[0].value


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One field change: what was done (``set``, ``text``, ``inc``, ``add``, ``remove``, ``delete``,
    ``restore``, ``resolve``), the value, and who did it when."""

    field: str
    op: str
    value: Any
    device: str
    user: str
    time: int

    @property
    def at(self) -> dt.datetime:
        return _wall(self.time)


@dataclass(frozen=True, slots=True)
class SetEntry:
    """One writer's adds of one set element and the adds it had seen removed."""

    field: str
    element: str  # the element's JSON
    writer: str
    adds: int
    removed: Mapping[str, int]


@dataclass(frozen=True)
class RecordState:
    """A record's merged state. ``fields`` holds decoded Python values."""

    collection: str
    id: str
    fields: dict[str, Any]
    deleted: bool
    conflicts: tuple[Conflict, ...]
    vector: dict[str, int]
    exists: bool
    updated: int
    changed_by: dict[str, Candidate] = field(default_factory=dict)
    #: fields the document holds values of that the schema lacks (written under a newer schema, before the
    #: app was rolled back): a row written now cannot show them, and is rebuilt once the schema has them
    hidden: frozenset[str] = frozenset()


def _decode(coll: Collection, name: str, raw: Any) -> Any:
    f = coll.fields.get(name)
    if f is None:
        return raw
    try:
        return f.decode(raw)
    except Invalid:
        return raw


def decoded_or_stored(f: Field, raw: Any) -> Any:
    """``f.decode(raw)``, or ``raw`` as stored when the field does not read it (written under older rules
    or another kind)."""
    try:
        return f.decode(raw)
    except Invalid:
        return raw


def encoded_or_stored(f: Field, value: Any) -> Any:
    """``f.encode(value)``; a value shown as stored (``decoded_or_stored``: one the field does not read) is
    its JSON form already, and stays as it is (a Date's encode of a str raised)."""
    try:
        return f.encode(value)
    except (AttributeError, TypeError, ValueError):
        return value


def clamp64(total: int) -> int:
    """A counter's sum as shown: within 64 bits (a sum beyond, of shares that each fit, merged directly:
    the relay refuses the change that makes one, and a row cannot hold it)."""
    return max(INT64_MIN, min(INT64_MAX, total))


def beyond64(total: int) -> int:
    """How far a counter's sum is outside 64 bits (0: within)."""
    return max(0, total - INT64_MAX, INT64_MIN - total)


def share(raw: Any) -> int:
    """A counter slot's value as its writer's share of the total: the int it holds; 0 for none, or for a
    value of another kind (written before the field became a counter: a device's merge keeps it,
    ``model/checks.py``)."""
    return raw if raw.__class__ is int else 0


_new = object.__new__
_SET_VALUE, _SET_DEVICE, _SET_USER, _SET_TIME = (Candidate.__dict__[n].__set__
                                                  for n in ("value", "device", "user", "time"))


def _by(device: str, user: str, time: int) -> Candidate:
    """``Candidate(None, device, user, time)``, made through its slots: a frozen dataclass's ``__init__``
    sets each field with ``object.__setattr__``, and a merge makes one per field written (a sixth of
    ``compute_state``). The same object all the same (equality and hash come from the fields)."""
    c = _new(Candidate)
    _SET_VALUE(c, None)
    _SET_DEVICE(c, device)
    _SET_USER(c, user)
    _SET_TIME(c, time)
    return c


def _record_state(collection: str, record_id: str, fields: dict[str, Any], deleted: bool,
                  conflicts: tuple[Conflict, ...], vector: dict[str, int], exists: bool, updated: int,
                  changed_by: dict[str, Candidate], hidden: frozenset[str] = frozenset()) -> RecordState:
    """``RecordState(...)`` with its attributes set in one step rather than one ``object.__setattr__`` each
    (its frozen ``__init__`` cost a tenth of ``compute_state``)."""
    st = _new(RecordState)
    st.__dict__.update(collection=collection, id=record_id, fields=fields, deleted=deleted, conflicts=conflicts,
                       vector=vector, exists=exists, updated=updated, changed_by=changed_by, hidden=hidden)
    return st


#: field types whose ``decode`` gives back the JSON value itself, or raises: ``decoded_or_stored`` of them is the
#: JSON value whatever it holds (exact types only: a subclass may decode otherwise)
_AS_STORED: frozenset[type[Field]] = frozenset({Str, Int, Bool, Ref})

_Plan = tuple[tuple[str, Field, str, bool], ...]
_PLANS: dict[int, tuple[Collection, _Plan]] = {}


def _plan(coll: Collection) -> _Plan:
    """Each field of a collection as ``(name, field, merge, decodes to itself)``, computed once per
    collection."""
    hit = _PLANS.get(id(coll))
    if hit is None or hit[0] is not coll:  # (the collection is kept in the entry: its id stays its own)
        if len(_PLANS) >= 1024:
            _PLANS.clear()
        plan = tuple((n, f, f.merge, type(f) in _AS_STORED) for n, f in coll.fields.items())
        hit = _PLANS[id(coll)] = (coll, plan)
    return hit[1]


def _cand(coll: Collection, s: Slot) -> Candidate:
    value = s.value if s.field == DELETED else _decode(coll, s.field, s.value)
    return Candidate(value, s.device, s.user, s.t)


def _edit_cand(coll: Collection, s: Slot, values: Mapping[str, Any]) -> Candidate:
    """An edit that met a delete. Text, counter and set slots are markers (a counter's holds only its
    writer's share), so the candidate shows the field's merged value: what restoring brings back."""
    f = coll.fields.get(s.field)
    if f is not None and f.merge != "register":
        return Candidate(values.get(s.field), s.device, s.user, s.t)
    return _cand(coll, s)


def compute_state(coll: Collection, record_id: str, slots: Iterable[Slot], sets: Iterable[SetEntry],
                  texts: Mapping[str, str]) -> RecordState:
    by_field: dict[str, list[Slot]] = {}
    vector: dict[str, int] = {}
    for s in slots:
        fs = by_field.get(s.field)
        if fs is None:
            by_field[s.field] = [s]
        else:
            fs.append(s)
        if s.t > vector.get(s.writer, 0):
            vector[s.writer] = s.t
    values: dict[str, Any] = {}
    changed_by: dict[str, Candidate] = {}
    conflicts: list[Conflict] = []
    live: dict[str, list[Slot]] = {}
    for name, f, merge, as_stored in _plan(coll):
        fs = by_field.get(name)
        if not fs:  # never written: most fields of most records
            values[name] = texts.get(name, "") if merge == "text" else UNWRITTEN[merge]
            continue
        if len(fs) == 1:  # one writer (the common case): its slot is the frontier, the latest and the winner
            s = fs[0]
            live[name] = fs
            changed_by[name] = _by(s.device, s.user, s.t)
            if merge == "register":
                values[name] = s.value if as_stored else decoded_or_stored(f, s.value)
            elif merge == "counter":
                values[name] = share(s.value)
            elif merge == "text":
                values[name] = texts.get(name, "")
            else:
                values[name] = frozenset()
            continue
        front = frontier(fs)
        live[name] = front
        latest = winner(fs)
        if latest is not None:
            changed_by[name] = _by(latest.device, latest.user, latest.t)
        if merge == "register":
            w = front[0] if len(front) == 1 else winner(front)
            values[name] = None if w is None else decoded_or_stored(f, w.value)
            # concurrent writes of one value (two devices resolving a conflict alike) are no conflict
            if w is not None and len(front) > 1 and not _all_equal(w.value, front):
                losers = sorted((s for s in front if s is not w), key=lambda s: s.order, reverse=True)
                conflicts.append(Conflict(coll.name, record_id, name, "concurrent-write",
                                          tuple(_cand(coll, s) for s in [w, *losers])))
        elif merge == "counter":
            values[name] = clamp64(sum(share(s.value) for s in fs))
        elif merge == "text":
            values[name] = texts.get(name, "")
        else:
            values[name] = frozenset()
    values.update(_set_values(coll, sets))
    hidden = hidden_fields(coll, by_field)

    vs = by_field.get(DELETED)
    if vs is None or (len(vs) == 1 and vs[0].value is not True):  # no delete in effect: nothing to weigh
        return _record_state(coll.name, record_id, values, False, tuple(conflicts), vector, bool(vector),
                             max(vector.values(), default=0), changed_by, hidden)
    deleted = False
    dels = frontier(vs)
    active = [d for d in dels if d.value is True]
    restores = [d for d in dels if d.value is not True]
    clashing = [(d, s) for d in active for front in live.values() for s in front if mutually_concurrent(d, s)] \
        if active else []
    if coll.delete_policy == "delete-wins":
        deleted = bool(active)
        if deleted:
            d0 = winner(active)
            assert d0 is not None
            del_cand = Candidate(True, d0.device, d0.user, d0.t)
            edited: dict[str, list[Slot]] = defaultdict(list)
            for _, s in clashing:
                if s not in edited[s.field]:
                    edited[s.field].append(s)
            for r in restores:
                edited[DELETED].append(r)
            for name, ss in sorted(edited.items()):
                ss.sort(key=lambda s: s.order, reverse=True)
                conflicts.append(Conflict(coll.name, record_id, "deleted" if name == DELETED else name,
                                          "edit-vs-delete", (del_cand, *(_edit_cand(coll, s, values)
                                                                         for s in ss))))
    else:
        deleted = bool(active) and not clashing and not restores
        if active and not deleted:
            keep = [s for _, s in clashing] + restores
            k0 = winner(keep)
            assert k0 is not None
            cands = [Candidate(False, k0.device, k0.user, k0.t)]
            cands += [Candidate(True, d.device, d.user, d.t) for d in sorted(active, key=lambda d: d.order,
                                                                          reverse=True)]
            conflicts.append(Conflict(coll.name, record_id, "deleted", "delete-vs-edit", tuple(cands)))
    exists = bool(vector)
    updated = max(vector.values(), default=0)
    return _record_state(coll.name, record_id, values, deleted, tuple(conflicts), vector, exists, updated,
                         changed_by, hidden)


def _all_equal(value: Any, slots: list[Slot]) -> bool:
    """Whether every slot holds ``value`` as stored (of the same JSON type: ``1`` and ``true`` differ)."""
    kind = value.__class__
    return all(s.value.__class__ is kind and s.value == value for s in slots)


_NO_FIELDS: frozenset[str] = frozenset()


def hidden_fields(coll: Collection, written: Collection_[str]) -> frozenset[str]:
    """The names among ``written`` (fields with slots in a document) that ``coll`` does not have."""
    fields = coll.fields
    if all(n in fields or n == DELETED for n in written):  # the usual case: no set to make
        return _NO_FIELDS
    return frozenset(n for n in written if n not in fields and n != DELETED)



def _set_values(coll: Collection, entries: Iterable[SetEntry]) -> dict[str, frozenset[Any]]:
    """Add-wins sets: an element is present while some writer's adds exceed what every remover had seen."""
    grouped: dict[tuple[str, str], list[SetEntry]] = {}
    for e in entries:
        es = grouped.get((e.field, e.element))
        if es is None:
            grouped[(e.field, e.element)] = [e]
        else:
            es.append(e)
    if not grouped:
        return {}
    out: dict[str, set[Any]] = defaultdict(set)
    for (name, element), es in grouped.items():
        if len(es) == 1:  # one writer: present while its adds exceed its own removes
            e = es[0]
            present = e.adds > e.removed.get(e.writer, 0)
        else:
            removed: dict[str, int] = {}
            for e in es:
                for w, n in e.removed.items():
                    if n > removed.get(w, 0):
                        removed[w] = n
            present = any(e.adds > removed.get(e.writer, 0) for e in es)
        if present:
            f = coll.fields.get(name)
            if f is None or f.merge != "set":
                # a set the schema lacks (``RecordState.hidden``), or a field that is no set now (its kind
                # changed): the elements stay in the document, and show again if it becomes a set again
                continue
            of = getattr(f, "of", None)
            raw = orjson.loads(element)
            if of is None or type(of) in _AS_STORED:
                out[name].add(raw)
                continue
            try:
                out[name].add(of.decode(raw))
            except Invalid:
                out[name].add(raw)
    return {n: frozenset(v) for n, v in out.items()}
