"""Hypothesis strategies for crdtsync: schemas, field values (valid and invalid), records, edit histories.

Point them at your own ``Schema``::

    from hypothesis import given
    from crdtsync.testing import records

    @given(records(MY_SCHEMA["accounts"]))
    def test_create_roundtrips(values): ...

Values are drawn the way crdtsync checks them (``Field.check``), so a valid draw never raises
``ValidationError`` and an ``invalid_values`` draw always does.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import strategies as st

from ..schema import (
    INT64_MAX,
    INT64_MIN,
    Bool,
    Collection,
    Counter,
    Date,
    DateTime,
    DeletePolicy,
    Field,
    Float,
    Int,
    Invalid,
    Ref,
    Schema,
    Set,
    Str,
    Text,
)

__all__ = ["Op", "OpKind", "collections", "edit_histories", "field_types", "field_values", "invalid_values",
           "record_ids", "records", "schemas", "update_values"]

#: Record ids the strategies use: few, so that devices often create and edit the same record.
DEFAULT_IDS: tuple[str, ...] = ("r0", "r1", "r2")

_CHARS = st.characters(codec="utf-8", exclude_categories=["Cs"])
_FIELD_NAMES = ("name", "qty", "price", "done", "due", "at", "notes", "visits", "tags", "parent", "code", "size")
_COLL_NAMES = ("accounts", "contacts", "orders", "visits")


def record_ids(ids: Sequence[str] = DEFAULT_IDS) -> st.SearchStrategy[str]:
    """A record id from a small pool, so that writes collide."""
    return st.sampled_from(list(ids))


def _accepts(f: Field) -> Callable[[Any], bool]:
    def ok(value: Any) -> bool:
        try:
            f.check(value)
        except Invalid:
            return False
        return True
    return ok


def _str_values(f: Str | Text, *, required: bool) -> st.SearchStrategy[str]:
    if isinstance(f, Str) and f.choices is not None:
        return st.sampled_from(list(f.choices))
    if isinstance(f, Str) and f.pattern is not None:
        # filtered by the field's own limits only: a pattern longer than any default cap still draws
        return st.from_regex(f.pattern, fullmatch=True, alphabet=_CHARS).filter(_accepts(f))
    lo = max(getattr(f, "min_length", None) or 0, 1 if required and isinstance(f, Text) else 0)
    hi = f.max_length
    short = max(lo, 12) if hi is None else min(hi, max(lo, 12))
    # mostly short strings, but also any length up to max_length, and max_length itself
    parts = [st.text(_CHARS, min_size=lo, max_size=short)] * 2
    if hi is not None and hi > short:
        parts += [st.text(_CHARS, min_size=short + 1, max_size=hi), st.text(_CHARS, min_size=hi, max_size=hi)]
    elif hi is None:
        parts.append(st.text(_CHARS, min_size=short + 1, max_size=200))
    return st.one_of(parts)


def field_values(f: Field, *, ids: Sequence[str] = DEFAULT_IDS, allow_none: bool = True
                 ) -> st.SearchStrategy[Any]:
    """Values ``f`` accepts (its ``check`` passes). ``None`` is drawn for optional plain fields."""
    try:
        return _field_values(f, tuple(ids), allow_none)
    except TypeError:  # an unhashable custom field type: build it afresh
        return _field_values.__wrapped__(f, tuple(ids), allow_none)


@functools.lru_cache(maxsize=1024)
def _field_values(f: Field, ids: tuple[str, ...], allow_none: bool) -> st.SearchStrategy[Any]:
    base: st.SearchStrategy[Any]
    if isinstance(f, Str | Text):
        base = _str_values(f, required=f.required)
    elif isinstance(f, Counter):
        base = st.integers(-1000, 1000)
    elif isinstance(f, Int):
        if f.choices is not None:
            base = st.sampled_from(list(f.choices))
        else:
            lo = INT64_MIN if f.min is None else f.min
            hi = INT64_MAX if f.max is None else f.max
            base = st.one_of(st.integers(max(lo, -100), min(hi, 100)) if lo <= 100 and hi >= -100
                             else st.nothing(), st.integers(lo, hi))
    elif isinstance(f, Float):
        base = st.floats(f.min, f.max, allow_nan=f.allow_nan and f.min is None and f.max is None,
                         allow_infinity=f.allow_nan and f.min is None and f.max is None)
    elif isinstance(f, Bool):
        base = st.booleans()
    elif isinstance(f, DateTime):
        base = st.datetimes(timezones=st.sampled_from([None, dt.UTC]))
    elif isinstance(f, Date):
        base = st.dates()
    elif isinstance(f, Ref):
        base = st.sampled_from(list(ids))
    elif isinstance(f, Set):
        cap = 4 if f.max_items is None else min(4, f.max_items)
        base = st.frozensets(field_values(f.of, ids=ids, allow_none=False), max_size=cap)
    else:
        raise TypeError(f"no strategy for field type {type(f).__name__}")
    if allow_none and not f.required and f.merge == "register":
        return st.one_of(st.none(), base)
    return base


def invalid_values(f: Field) -> st.SearchStrategy[Any]:
    """Values ``f`` refuses with ``ValidationError``: wrong types, ints beyond 64 bits, NaN where not
    allowed, strings too long, None for required fields, sets holding bad elements."""
    wrong = [b"bytes", {"k": 1}, object()] + ([] if isinstance(f, Set) else [[1, 2]])
    out: list[st.SearchStrategy[Any]] = [st.sampled_from(wrong)]
    if f.required and f.merge == "register":
        out.append(st.none())
    if isinstance(f, Int | Counter):
        out += [st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**30, 1.5, "1", True])]
        if isinstance(f, Int) and f.max is not None and f.max < INT64_MAX:
            out.append(st.integers(f.max + 1, INT64_MAX))
    elif isinstance(f, Float):
        out.append(st.sampled_from([2**64, "1.0", True]))
        if not f.allow_nan:
            out.append(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    elif isinstance(f, Str | Text):
        out.append(st.sampled_from([5, 1.5, True, "\ud800"]))
        if f.max_length is not None:
            out.append(st.text(_CHARS, min_size=f.max_length + 1, max_size=f.max_length + 3))
    elif isinstance(f, Bool):
        out.append(st.sampled_from([0, 1, "true"]))
    elif isinstance(f, DateTime):
        out.append(st.sampled_from([dt.date(2024, 1, 1), "2024-01-01T00:00:00", 0]))
    elif isinstance(f, Date):
        out.append(st.sampled_from([dt.datetime(2024, 1, 1), "2024-01-01", 0]))
    elif isinstance(f, Ref):
        out.append(st.sampled_from(["", "x" * 201, 5]))
    elif isinstance(f, Set):
        out.append(st.sampled_from(["abc", 5, {None}, frozenset({2**64})]))
    return st.one_of(out)


def field_types(*, ref_targets: Sequence[str] = (), depth: int = 1) -> st.SearchStrategy[Field]:
    """Field types of every kind, with random limits (Ref only when ``ref_targets`` is not empty)."""
    return _field_types(tuple(ref_targets), depth)


@functools.lru_cache(maxsize=256)
def _field_types(ref_targets: tuple[str, ...], depth: int) -> st.SearchStrategy[Field]:
    # cached: building and validating this one_of costs far more than drawing from it
    req = st.booleans()
    plain: list[st.SearchStrategy[Field]] = [
        st.builds(Str, max_length=st.none() | st.integers(3, 40), required=req),
        st.builds(Str, choices=st.lists(st.text(_CHARS, max_size=5), min_size=1, max_size=4, unique=True)),
        st.builds(Int, min=st.none() | st.integers(-10, 0), max=st.none() | st.integers(1, 10**6), required=req),
        st.builds(Float, allow_nan=st.booleans()),
        st.builds(Bool),
        st.builds(Date),
        st.builds(DateTime),
    ]
    if ref_targets:
        plain.append(st.builds(Ref, st.sampled_from(list(ref_targets))))
    kinds = list(plain)
    if depth > 0:
        kinds += [st.builds(Text, required=req), st.builds(Counter)]
        elem = st.one_of(st.builds(Str, max_length=st.none() | st.integers(3, 10)), st.builds(Int), st.builds(Bool))
        kinds.append(st.builds(Set, of=elem, max_items=st.none() | st.integers(2, 8)))
    return st.one_of(kinds)


@st.composite
def collections(draw: st.DrawFn, name: str = "items", *, ref_targets: Sequence[str] = (),
                max_fields: int = 6) -> Collection:
    """A collection with 1 to ``max_fields`` fields of random kinds and a random delete policy."""
    names = draw(st.lists(st.sampled_from(_FIELD_NAMES), min_size=1, max_size=max_fields, unique=True))
    fields = {n: draw(field_types(ref_targets=ref_targets)) for n in names}
    policy: DeletePolicy = draw(st.sampled_from(["delete-wins", "edit-wins"]))
    return Collection(name, fields, delete_policy=policy)


@st.composite
def schemas(draw: st.DrawFn, *, max_collections: int = 2, max_fields: int = 6) -> Schema:
    """A valid schema: 1 to ``max_collections`` collections, Refs only to collections it defines."""
    names = draw(st.lists(st.sampled_from(_COLL_NAMES), min_size=1, max_size=max_collections, unique=True))
    return Schema(*(draw(collections(n, ref_targets=names, max_fields=max_fields)) for n in names))


@st.composite
def records(draw: st.DrawFn, coll: Collection, *, ids: Sequence[str] = DEFAULT_IDS) -> dict[str, Any]:
    """Values for ``create()``: every required field, and some optional ones."""
    out: dict[str, Any] = {}
    for name, f in coll.fields.items():
        if f.required or draw(st.booleans()):
            out[name] = draw(field_values(f, ids=ids))
    return out


@st.composite
def update_values(draw: st.DrawFn, coll: Collection, *, ids: Sequence[str] = DEFAULT_IDS) -> dict[str, Any]:
    """Values for ``update()``: one to three fields of the collection."""
    names = draw(st.lists(st.sampled_from(sorted(coll.fields)), min_size=1, max_size=3, unique=True))
    return {n: draw(field_values(coll.fields[n], ids=ids)) for n in names}


OpKind = Literal["create", "update", "increment", "delete", "restore", "resolve", "send", "deliver", "drop",
                 "acknowledge"]


@dataclass(frozen=True)
class Op:
    """One step of an edit history, applied by ``Cluster.apply``; steps that do not apply (editing a
    record the replica does not have) are skipped, so any drawn history can run.

    ``replica`` acts; ``collection``/``record``/``values`` say what it writes; ``field``/``by`` are for
    increments; ``pick`` chooses among open conflicts or messages in flight (modulo their number);
    ``dst``/``since`` address a send; ``keep`` leaves a delivered message in flight (a duplicate).
    """

    kind: OpKind
    replica: int = 0
    collection: str = ""
    record: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    field: str = ""
    by: int = 0
    pick: int = 0
    dst: int = 0
    since: bool = False
    keep: bool = False


@st.composite
def _op(draw: st.DrawFn, schema: Schema, replicas: int, ids: Sequence[str]) -> Op:
    kind: OpKind = draw(st.sampled_from(["create", "update", "update", "increment", "delete", "restore",
                                         "resolve", "send", "send", "deliver", "deliver", "drop",
                                         "acknowledge"]))
    r = draw(st.integers(0, replicas - 1))
    coll = draw(st.sampled_from(list(schema)))
    rid = draw(st.sampled_from(list(ids)))
    if kind == "create":
        return Op(kind, r, coll.name, rid, draw(records(coll, ids=ids)))
    if kind == "update":
        return Op(kind, r, coll.name, rid, draw(update_values(coll, ids=ids)))
    if kind == "increment":
        counters = [n for n, f in coll.fields.items() if f.merge == "counter"]
        if not counters:
            return Op("update", r, coll.name, rid, draw(update_values(coll, ids=ids)))
        return Op(kind, r, coll.name, rid, field=draw(st.sampled_from(counters)), by=draw(st.integers(-5, 5)))
    if kind == "resolve":
        return Op(kind, r, pick=draw(st.integers(0, 1000)), keep=draw(st.booleans()),
                  values={"new": draw(st.integers(0, 1000))})
    if kind == "send":  # keep=True: a delta export (see Cluster.send)
        return Op(kind, r, dst=draw(st.integers(0, replicas - 1)), since=draw(st.booleans()),
                  keep=draw(st.booleans()))
    if kind in ("deliver", "drop"):
        return Op(kind, r, pick=draw(st.integers(0, 1000)), keep=draw(st.booleans()))
    return Op(kind, r, coll.name, rid)


def edit_histories(schema: Schema, *, replicas: int = 3, ids: Sequence[str] = DEFAULT_IDS, min_size: int = 1,
                   max_size: int = 30) -> st.SearchStrategy[list[Op]]:
    """Sequences of edits and exchanges over ``replicas`` devices (see ``Op`` and ``Cluster.run``)."""
    return st.lists(_op(schema, replicas, ids), min_size=min_size, max_size=max_size)
