"""Materialised rows: one plain JSON row per record at ``("row", collection, id)``.

Reads (``get``, ``query``, ``conflicts``) come from rows, not from the Yjs documents, so a replica
with 100k records answers queries without loading a single document. Rows are derived data: a merge, a
status change or an acknowledgement rewrites them in the same transaction as the change they reflect. A
local write does not (see ``Replica``): its record is read from its document (an *overlay* here) until
its row is written, a few writes later, so that a write commits one key, not two. Each row says in
``x`` the newest local change it reflects, so that a replica reopened after a crash knows which rows
are behind their records' pending changes. A row's status may be ``syncing`` (its record's changes are
on their way to the relay): a replica reopened after a crash mid-sync rewrites those rows too, since
nothing is syncing at open (the outbox puts their changes back to ``pending``).

A row lists every field of the schema it was written under, and in ``o`` the fields its document holds
that this schema lacks (``RecordState.hidden``: written under a newer schema, read after the app was
rolled back). Read under another schema, a row shows the fields of that schema: those it lacks (an app
update added them) with the values of fields never written (``UNWRITTEN``), as a record created since or
read from its document does, and not those the schema lacks. That is what the document shows, unless the
row's record had values in fields the row could not show (``o``) or the row shows fields the schema lacks
that were written: ``stale_row`` says so, and the replica rebuilds such rows from their documents when it
is opened with a schema whose fields differ from the last one's (``ReplicaBase._rows_for_schema``). It
rebuilds the rows of records where a delete met a concurrent edit too (``delete_clash_row``) when a
collection's ``delete_policy`` changed: the policy decides whether they show deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from ..codec import dumps_kept
from ..errors import LocalError
from ..model.state import UNWRITTEN, Candidate, Conflict, RecordState, decoded_or_stored, encoded_or_stored
from ..schema import Bool, Collection, Counter, Field, Int, Invalid, Ref, Str, Text
from ..store.base import Batch, ByteStore
from .types import Record, RecordStatus

__all__ = ["Rows", "Where", "decode_value", "delete_clash_row", "encode_value", "stale_row"]

Where = Mapping[str, Any] | Callable[[Record], bool] | None

_new = object.__new__


def encode_value(f: Field | None, value: Any) -> Any:
    """A field value as JSON (a row's, a relay log entry's): sets as sorted lists. A value the field does
    not read (shown as stored) stays as it is, and so does each such element of a set."""
    if f is None:
        return value
    if f.merge == "set":
        if not isinstance(value, frozenset | set):
            return value
        of = f.of  # type: ignore[attr-defined]
        return sorted((encoded_or_stored(of, v) for v in value), key=repr)
    return encoded_or_stored(f, value)


def decode_value(f: Field | None, raw: Any) -> Any:
    """``encode_value`` undone; a value the field no longer accepts is returned as it is (an element of a
    set too, as ``compute_state`` shows it)."""
    if f is None:
        return raw
    try:
        if f.merge == "set":
            of = f.of  # type: ignore[attr-defined]
            return frozenset(decoded_or_stored(of, v) for v in raw)
        if f.merge in ("counter", "text"):
            return raw
        return f.decode(raw)
    except (Invalid, TypeError):
        return raw


def _cand_field(coll: Collection, kind: str, name: str, index: int) -> Field | None:
    """The field type of a conflict candidate's value; None for a raw bool (a delete or restore).

    An ``edit-vs-delete`` conflict lists the delete first (``True``) and then the edited values: encoding
    that ``True`` as, say, a date would fail, and the whole merge with it.
    """
    if kind == "edit-vs-delete" and index == 0:
        return None
    return coll.fields.get(name)


_ENCODED: dict[int, tuple[Collection, tuple[tuple[str, Field], ...]]] = {}


def _encoded(coll: Collection) -> tuple[tuple[str, Field], ...]:
    """The fields of a collection whose JSON form is not the value itself (sets, dates, floats...), computed
    once per collection: ``encode_row`` copies the others as they are."""
    hit = _ENCODED.get(id(coll))
    if hit is None or hit[0] is not coll:  # (the collection is kept in the entry: its id stays its own)
        if len(_ENCODED) >= 1024:
            _ENCODED.clear()
        hit = _ENCODED[id(coll)] = (coll, tuple((n, f) for n, f in coll.fields.items()
                                                if f.merge == "set" or type(f).encode is not Field.encode))
    return hit[1]


_UNWRITTEN: dict[int, tuple[Collection, dict[str, Any]]] = {}


def _unwritten(coll: Collection) -> dict[str, Any]:
    """Each field of a collection with the value it has while never written (``UNWRITTEN``), in schema
    order, computed once per collection."""
    hit = _UNWRITTEN.get(id(coll))
    if hit is None or hit[0] is not coll:
        if len(_UNWRITTEN) >= 1024:
            _UNWRITTEN.clear()
        hit = _UNWRITTEN[id(coll)] = (coll, {n: UNWRITTEN[f.merge] for n, f in coll.fields.items()})
    return hit[1]


def encode_row(coll: Collection, state: RecordState, status: RecordStatus, error: str | None,
               last_change: int = 0) -> bytes:
    """The row of a record; ``last_change`` is the id of the newest local change it reflects (0: none
    pending)."""
    fields = dict(state.fields)  # ``encode_value`` of each: the value itself, but for these
    for n, f in _encoded(coll):
        if n in fields:
            fields[n] = encode_value(f, fields[n])
    row = {
        "f": fields,
        "d": state.deleted,
        "s": status,
        "e": error,
        "u": state.updated,
        "b": {n: [c.device, c.user, c.time] for n, c in state.changed_by.items()},
        "c": [{"f": c.field, "k": c.kind,
               "v": [[encode_value(_cand_field(coll, c.kind, c.field, i), x.value), x.device, x.user, x.time]
                     for i, x in enumerate(c.candidates)]}
              for c in state.conflicts],
        "x": last_change,
        "v": state.vector,
    }
    if state.hidden:
        row["o"] = sorted(state.hidden)
    return dumps_kept(row)


def row_marks(raw: bytes) -> tuple[int | None, str | None]:
    """The newest local change a stored row reflects (None for a row written before rows said so: they
    were all written with their change, so they are current), and the status the row shows."""
    r = orjson.loads(raw)
    x, s = r.get("x"), r.get("s")
    return (x if isinstance(x, int) else None), (s if isinstance(s, str) else None)


def stale_row(coll: Collection, raw: bytes) -> bool:
    """Whether a row shows its record otherwise than its document does under ``coll``'s fields (see the
    module docstring): its record holds values in fields of ``coll`` the row was written without, or the row
    shows written fields (values, conflicts) that ``coll`` lacks, which may have decided more than their
    own value (a concurrent edit of one keeps a deleted record, under the delete policy ``edit-wins``)."""
    r = orjson.loads(raw)
    fields = coll.fields
    if any(n in fields for n in r.get("o", ())):
        return True
    if r["f"].keys() <= fields.keys():
        return False
    return any(n not in fields for n in r["b"]) or any(c["f"] not in fields and c["f"] != "deleted"
                                                        for c in r["c"])


def delete_clash_row(raw: bytes) -> bool:
    """Whether a row shows a delete that met a concurrent edit or restore (an ``edit-vs-delete`` or
    ``delete-vs-edit`` conflict): the rows whose outcome the collection's ``delete_policy`` decides (the
    record deleted or not, and which conflict), rebuilt when it changes (``ReplicaBase._rows_for_schema``)."""
    if b"-vs-" not in raw:  # the usual row, not parsed
        return False
    return any(c["k"] in ("edit-vs-delete", "delete-vs-edit") for c in orjson.loads(raw)["c"])


_PLAIN: dict[int, tuple[Collection, frozenset[str]]] = {}
#: the field types whose ``decode_value`` returns the stored JSON value itself, whatever it is (the value
#: when the type reads it, and the value as stored when it does not): a row's value of such a field is
#: its value, with no decoding
_AS_STORED = (Str, Int, Ref, Bool, Text, Counter)


def _plain(coll: Collection) -> frozenset[str]:
    """The fields of a collection whose row values are their values (``_AS_STORED``), once per collection."""
    hit = _PLAIN.get(id(coll))
    if hit is None or hit[0] is not coll:
        if len(_PLAIN) >= 1024:
            _PLAIN.clear()
        hit = _PLAIN[id(coll)] = (coll, frozenset(n for n, f in coll.fields.items() if type(f) in _AS_STORED))
    return hit[1]


def decode_row(coll: Collection, record_id: str, raw: bytes) -> Record:
    return _decode_parsed(coll, record_id, orjson.loads(raw))


def _decode_parsed(coll: Collection, record_id: str, r: dict[str, Any]) -> Record:
    """``decode_row`` of a row parsed already."""
    plain = _plain(coll)
    fields = {n: v if n in plain else decode_value(coll.fields.get(n), v) for n, v in r["f"].items()}
    unwritten = _unwritten(coll)
    others = fields.keys() != unwritten.keys()
    if others:
        # a row stored under another schema: the fields added since show as never written, as in a record
        # created since (its row lists every field) or read from its document; those removed do not show
        fields = {n: fields.get(n, v) for n, v in unwritten.items()}
    conflicts = tuple(
        Conflict(coll.name, record_id, c["f"], c["k"],
                 tuple(Candidate(decode_value(_cand_field(coll, c["k"], c["f"], i), v), d, u, t)
                       for i, (v, d, u, t) in enumerate(c["v"])))
        for c in r["c"] if not others or c["f"] in unwritten or c["f"] == "deleted") if r["c"] else ()
    by = {n: Candidate(None, d, u, t) for n, (d, u, t) in r["b"].items() if not others or n in unwritten}
    v = r.get("v")  # (a row stored before rows kept the version vector has none)
    # built without the frozen ``__init__`` (one ``object.__setattr__`` per attribute), as ``_save_row`` does
    rec = _new(Record)
    rec.__dict__.update(collection=coll.name, id=record_id, fields=fields, status=r["s"], conflicts=conflicts,
                        deleted=r["d"], error=r["e"], updated=r["u"], changed_by=by,
                        version=MappingProxyType(v) if isinstance(v, dict) else None)
    return rec


def _row_value(coll: Collection, r: dict[str, Any], name: str) -> Any:
    """What ``decode_row(...).fields.get(name)`` is, for a field of ``coll``, read from a parsed row alone."""
    f = coll.fields[name]
    fields = r["f"]
    if name not in fields:
        return UNWRITTEN[f.merge]  # (a row stored under a schema without the field)
    v = fields[name]
    return v if name in _plain(coll) else decode_value(f, v)


#: a row holds an open conflict only if its bytes hold this (rows are orjson's compact JSON: the list of
#: conflicts, ``"c"``, is ``[]`` when empty); a field value (a peer's object) may hold it too: then the row
#: is decoded, as any row would be
_CONFLICT_MARK = b'"c":[{'
_EXACT_INT = 10**15  # an int below this in magnitude is, as a float, its digits and ".0" in orjson's JSON


def _probes(coll: Collection, where: Mapping[str, Any]) -> list[tuple[bytes, ...]]:
    """Necessary conditions on a row's bytes for a ``where`` of field values: for each field of a type whose
    row value is its value (``Str``, ``Int``, ``Ref``) asked to equal a str or an int (not a bool: a bool
    never matches a number), the bytes its value would be stored as, one of which the row must hold to
    match (an int: also as a float, ``5.0`` beginning as ``5`` does, and ``-0.0`` for 0). Other values and
    fields give none: their rows are parsed."""
    out: list[tuple[bytes, ...]] = []
    for name, wanted in where.items():
        if type(coll.fields[name]) not in (Str, Int, Ref):
            continue
        head = orjson.dumps(name) + b":"
        if type(wanted) is str:
            try:
                out.append((head + orjson.dumps(wanted),))
            except orjson.JSONEncodeError:  # a lone surrogate: no row holds it as JSON; parsed, it matches nothing
                continue
        elif type(wanted) is int and -_EXACT_INT < wanted < _EXACT_INT:
            out.append((head + str(wanted).encode(), head + b"-0") if wanted == 0 else (head + str(wanted).encode(),))
    return out


class Rows:
    def __init__(self, store: ByteStore) -> None:
        self.store = store

    def save(self, batch: Batch, coll: Collection, state: RecordState, status: RecordStatus,
             error: str | None, last_change: int = 0) -> bytes:
        raw = encode_row(coll, state, status, error, last_change)
        batch.save(("row", coll.name, state.id), raw)
        return raw

    def load(self, coll: Collection, record_id: str) -> Record | None:
        raw = self.store.load(("row", coll.name, record_id))
        return None if raw is None else decode_row(coll, record_id, raw)

    def _entries(self, coll: Collection, overlay: Mapping[str, Record | None] | None
                 ) -> Iterator[tuple[str, bytes | None, Record | None]]:
        """Every record of ``coll`` in id order, as (id, its stored row, None), or (id, None, the record)
        for the ids of ``overlay`` (id -> record, None for none): records whose rows are not written yet."""
        if not overlay:
            for key, raw in self.store.iter_range(("row", coll.name)):
                yield str(key[2]), raw, None
            return
        extra = sorted(overlay)  # str order is the order of the encoded keys
        j = 0
        for key, raw in self.store.iter_range(("row", coll.name)):
            rid = str(key[2])
            while j < len(extra) and extra[j] <= rid:
                rec = overlay[extra[j]]
                if rec is not None:
                    yield extra[j], None, rec
                j += 1
            if rid not in overlay:
                yield rid, raw, None
        for rid in extra[j:]:
            rec = overlay[rid]
            if rec is not None:
                yield rid, None, rec

    def scan(self, coll: Collection, overlay: Mapping[str, Record | None] | None = None) -> Iterator[Record]:
        """Every record of ``coll`` in id order. ``overlay`` (id -> record, None for none) takes the place
        of the stored rows of those ids: records whose rows are not written yet."""
        for rid, raw, rec in self._entries(coll, overlay):
            yield decode_row(coll, rid, raw) if rec is None else rec  # type: ignore[arg-type]

    def conflicts(self, coll: Collection, overlay: Mapping[str, Record | None] | None = None) -> list[Conflict]:
        """Every open conflict of ``coll``, in id order; only the rows that may hold one are decoded."""
        out: list[Conflict] = []
        for rid, raw, rec in self._entries(coll, overlay):
            if rec is None:
                if _CONFLICT_MARK not in raw:  # type: ignore[operator]
                    continue
                rec = decode_row(coll, rid, raw)  # type: ignore[arg-type]
            out.extend(rec.conflicts)
        return out

    def query(self, coll: Collection, where: Where = None, *, include_deleted: bool = False,
              order_by: str | None = None, descending: bool = False, limit: int | None = None,
              overlay: Mapping[str, Record | None] | None = None) -> list[Record]:
        """The records of ``coll`` that ``where`` keeps (see ``Replica.query``).

        What it spares, the results unchanged: a ``where`` of field values skips the rows whose bytes
        cannot match (``_probes``), and is checked on the values of its fields alone, read from the parsed
        row (``_row_value``); with ``order_by`` and a ``limit``, each row kept gives only its sort value,
        and only the rows returned are decoded whole. A predicate ``where`` sees every record, decoded."""
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise LocalError(f"{coll.name}: limit is an int >= 0 (or None for no limit), got {limit!r}")
        if where is not None and not callable(where):
            if not isinstance(where, Mapping):
                raise LocalError(f"{coll.name}: where is a mapping of field names to values, or a function of "
                                 f"a Record that returns whether to keep it, not a {type(where).__name__}")
            for name in where:
                coll.field(None, name)
        if limit == 0:
            return []
        if order_by is not None:
            coll.field(None, order_by)
        pred = where if callable(where) else None
        values = list(where.items()) if where is not None and not callable(where) else []
        probes = _probes(coll, dict(values)) if values else []
        lazy = order_by is not None and limit is not None and pred is None  # decode only the rows returned
        kept: list[tuple[Any, Record | tuple[str, bytes]]] = []  # (sort value, record or its id and row)
        for rid, raw, rec in self._entries(coll, overlay):
            if rec is None:
                assert raw is not None
                if probes and not all(any(p in raw for p in alts) for alts in probes):
                    continue
                if pred is None:
                    r = orjson.loads(raw)
                    if r["d"] and not include_deleted:
                        continue
                    if any(not _same(_row_value(coll, r, k), v) for k, v in values):
                        continue
                    if lazy:
                        assert order_by is not None
                        kept.append((_row_value(coll, r, order_by), (rid, raw)))
                        continue
                    rec = _decode_parsed(coll, rid, r)
                else:
                    rec = decode_row(coll, rid, raw)
                    if (rec.deleted and not include_deleted) or not pred(rec):
                        continue
            elif (rec.deleted and not include_deleted) \
                    or (not pred(rec) if pred is not None else any(not _same(rec.fields.get(k), v) for k, v in values)):
                continue
            kept.append((None if order_by is None else rec.fields.get(order_by), rec))
            if limit is not None and order_by is None and len(kept) >= limit:
                break
        if order_by is not None:
            kept = _ordered(kept, descending)
            if limit is not None:
                kept = kept[:limit]
        return [x if isinstance(x, Record) else decode_row(coll, x[0], x[1]) for _, x in kept]


_Kept = tuple[Any, Record | tuple[str, bytes]]


def _ordered(kept: list[_Kept], descending: bool) -> list[_Kept]:
    """``query``'s records (each with its ``order_by`` value) in order: ties (and the NaNs and missing
    values, which go last both ways) stay in id order, the sort being stable, reversed or not."""
    present: list[_Kept] = []
    nans: list[_Kept] = []
    missing: list[_Kept] = []
    for v, x in kept:
        if v is None:
            missing.append((v, x))
        elif v != v:  # NaN (``Float(allow_nan=True)``): equal to nothing, it left the order arbitrary
            nans.append((v, x))
        else:
            present.append((_sortable(v) if isinstance(v, dt.datetime | frozenset) else v, x))
    try:
        present.sort(key=_first, reverse=descending)
    except TypeError:  # values of several types (a field whose kind changed between app versions
        # keeps the values written before that its new kind cannot read): grouped by type
        present.sort(key=lambda p: (type(p[0]).__name__, _total(p[0])), reverse=descending)
    return present + nans + missing


def _first(pair: _Kept) -> Any:
    return pair[0]


def _sortable(value: Any) -> Any:
    """What ``query``'s ``order_by`` compares: a naive datetime as if in UTC (Python refuses to compare naive
    and aware ones); a set as its elements in order (frozensets compare by inclusion, which is no order)."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
    if isinstance(value, frozenset):
        elements = [_sortable(x) for x in value]
        try:
            return tuple(sorted(elements))
        except TypeError:
            return tuple(sorted(elements, key=lambda x: (type(x).__name__, repr(x))))
    return value


def _total(value: Any) -> Any:
    """A key that orders any values of one type (``query``'s fallback, after grouping by type): a set's
    elements (a tuple from ``_sortable``) by type, then value; values no order exists for (a peer's list
    or object in a plain field, kept as stored) by their JSON text."""
    if isinstance(value, tuple):
        return tuple((type(x).__name__, _total(x)) for x in value)
    if isinstance(value, dict | list):
        try:
            return dumps_kept(value, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return repr(value).encode()
    return value


def _same(value: Any, wanted: Any) -> bool:
    """``value == wanted``, except that a bool never matches a number (Python's ``True == 1``: a ``where``
    of ``{"priority": True}`` matched priority 1)."""
    return value == wanted and (type(value) is bool) == (type(wanted) is bool)
