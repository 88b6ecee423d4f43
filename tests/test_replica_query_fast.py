"""``query()`` and ``conflicts()`` skip and half-decode rows (``replica/rows.py``): their results equal a
plain filter over every record decoded whole (``bench.bench_query.full_decode_query``), over random
records: written under older schemas (a field then a ``Float``, now an ``Int``, so that rows hold
floats such as ``5.0`` and ``-0.0`` there; fields added since, absent from those rows), with conflicts,
deleted ones, rows not written yet (read from their documents), and ``where`` values that only look
equal (``True`` beside ``1``, ``5.0`` beside ``5``, a str with quotes), ``include_deleted``, ``order_by``
either way with ties, and ``limit``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.bench_query import full_decode_conflicts, full_decode_query
from crdtsync import Bool, Collection, Counter, Date, Float, Int, Ref, Replica, Schema, Set, Str, Text
from crdtsync.store.memory import MemoryStore

_FIELDS: dict[str, Any] = {"s": Str(), "r": Ref("t"), "b": Bool(), "d": Date(), "tags": Set(Str()), "n": Text(),
                           "c": Counter()}
OLD = Schema(Collection("t", {**_FIELDS, "i": Float()}))
MID = Schema(Collection("t", {**_FIELDS, "i": Int()}))  # its rows rebuilt (a kind changed); those of NEW not
NEW = Schema(Collection("t", {**_FIELDS, "i": Int(), "extra": Str(), "visits": Counter()}))

STRS = ["", "a", "b", 'q"u\\o', "é", "5"]
DATES = [dt.date(2026, 1, 1), dt.date(2026, 1, 2)]
VALUES: dict[str, list[Any]] = {
    "s": [*STRS, None], "r": ["o0", "n1", None], "b": [True, False, None], "d": [*DATES, None],
    "tags": [set(), {"x"}, {"x", "y"}], "n": ["", "a", "note"], "i": [0, 1, 5, -1, 2**60, None],
    "extra": ["a", "", None], "c": [0, 1, 2], "visits": [0, 1]}
OLD_I = [0.0, -0.0, 1.0, 5.0, 2.5, 1e16, None]
#: values that only look equal to some of those (a bool beside an int, an int beside a float, a str beside an int)
LOOKALIKES = [True, False, 0, 1, 5, 5.0, -0.0, 10**16, 1e16, "5", "", None, frozenset(), DATES[0]]


def wanted(name: str) -> st.SearchStrategy[Any]:
    """What a ``where`` may ask of a field: one of its values (sets as frozensets), or a look-alike."""
    own = [frozenset(v) if isinstance(v, set) else v for v in VALUES[name] + (OLD_I if name == "i" else [])]
    return st.sampled_from(own) | st.sampled_from(LOOKALIKES)


def values(draw: st.DrawFn, names: list[str], schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=4)):
        pool = OLD_I if name == "i" and schema is OLD else VALUES[name]
        out[name] = draw(st.sampled_from(pool))
    return out


@st.composite
def replicas(draw: st.DrawFn) -> Replica:
    store = MemoryStore()
    old = Replica(store, OLD, device="a", user="ua")
    old_names = [n for n in OLD.collection("t").fields if n != "c"]
    for k in range(draw(st.integers(0, 4))):
        old.create("t", values(draw, old_names, OLD), id=f"o{k}")
    old.acknowledge([p.id for p in old.pending()])  # rows written under OLD, rebuilt under MID
    Replica(store, MID, device="a", user="ua")
    r = Replica(store, NEW, device="a", user="ua")
    peer = Replica(MemoryStore(), NEW, device="b", user="ub")
    names = [n for n in NEW.collection("t").fields if n not in ("c", "visits")]
    for k in range(draw(st.integers(0, 4))):
        r.create("t", values(draw, names, NEW), id=f"n{k}")
    ids = [f"o{k}" for k in range(len(old.pending()) + 5) if r.get("t", f"o{k}")] + \
          [x.id for x in r.query("t") if x.id.startswith("n")]
    peer.import_updates(r.export_updates())
    for replica in (r, peer):  # edits on both sides, unseen by the other: conflicts
        for rid in draw(st.lists(st.sampled_from(ids), max_size=4)) if ids else []:
            step = draw(st.sampled_from(["update", "delete", "increment"]))
            if replica.get("t", rid).deleted:  # type: ignore[union-attr]
                continue
            if step == "update":
                replica.update("t", rid, values(draw, names, NEW))
            elif step == "delete":
                replica.delete("t", rid)
            else:
                replica.increment("t", rid, "c", 1)
    r.import_updates(peer.export_updates())
    if draw(st.booleans()):
        r.acknowledge([p.id for p in r.pending()])  # every row written (else: some read from documents)
    for rid in draw(st.lists(st.sampled_from(ids), max_size=2)) if ids else []:  # rows not written yet
        if not r.get("t", rid).deleted:  # type: ignore[union-attr]
            r.update("t", rid, values(draw, names, NEW))
    return r


FIELD_NAMES = list(NEW.collection("t").fields)
#: the fields a ``where`` names, those whose rows are checked by their bytes (``Str``, ``Int``, ``Ref``) more often
WHERE_NAMES = [*FIELD_NAMES, "i", "i", "s", "r"]


@settings(derandomize=True, max_examples=150, deadline=None, database=None)
@given(replicas(), st.data())
def test_query_and_conflicts_equal_the_full_decode_filter(r: Replica, data: st.DataObject) -> None:
    assert r.conflicts() == full_decode_conflicts(r)
    for _ in range(6):
        names = data.draw(st.lists(st.sampled_from(WHERE_NAMES), unique=True, max_size=2))
        where = {n: data.draw(wanted(n)) for n in names}
        kwargs: dict[str, Any] = {
            "where": where or None, "include_deleted": data.draw(st.booleans()),
            "order_by": data.draw(st.sampled_from([None, *FIELD_NAMES])), "descending": data.draw(st.booleans()),
            "limit": data.draw(st.sampled_from([None, 0, 1, 2, 5]))}
        assert r.query("t", **kwargs) == full_decode_query(r, "t", **kwargs), kwargs


@pytest.mark.parametrize("written", [True, False])
def test_values_stored_under_another_kind_match_as_they_show(written: bool) -> None:
    """An ``Int`` field holding floats written when it was a ``Float`` (shown as stored): ``where`` of an int
    matches those equal to it (``5.0``, ``-0.0`` for 0, ``1e16`` written so in the row), never a bool; rows
    written before a field was added match it as never written (None)."""
    store = MemoryStore()
    old = Replica(store, OLD, device="a", user="ua")
    for k, v in enumerate([-0.0, 5.0, 1e16, 2.5, 0.0, None]):
        old.create("t", {"i": v, "b": k == 1}, id=f"o{k}")
    old.acknowledge([p.id for p in old.pending()])
    Replica(store, MID, device="a", user="ua")
    r = Replica(store, NEW, device="a", user="ua")
    r.create("t", {"i": 5, "extra": "a", "b": True}, id="n0")
    r.create("t", {"i": 1, "b": False}, id="n1")
    if written:
        r.acknowledge([p.id for p in r.pending()])
    expected = [(0, ["o0", "o4"]), (5, ["n0", "o1"]), (10**16, ["o2"]), (1, ["n1"]), (True, []), (None, ["o5"])]
    for value, ids in expected:  # (a list: True and 1 are one dict key)
        assert [x.id for x in r.query("t", where={"i": value})] == ids, value
        assert r.query("t", where={"i": value}) == full_decode_query(r, "t", where={"i": value})
    assert [x.id for x in r.query("t", where={"extra": None})] == ["n1", "o0", "o1", "o2", "o3", "o4", "o5"]
    assert [x.id for x in r.query("t", where={"visits": 0})] == ["n0", "n1", "o0", "o1", "o2", "o3", "o4", "o5"]
    assert [x.id for x in r.query("t", where={"b": 1})] == []
    assert r.query("t", where={"s": "\ud800"}) == []  # (no JSON form: it raised in the byte check)
    assert [x.id for x in r.query("t", where={"b": True}, order_by="i", limit=1)] == ["n0"]
