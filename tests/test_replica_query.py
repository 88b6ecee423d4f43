"""``query()``'s ``limit`` and ``order_by``: limit 0 gives nothing and a bad limit raises; NaN and None go
last in both directions, naive datetimes order as UTC beside aware ones, sets by their elements, all
deterministically (ties in id order), whether the rows are written yet or read from their documents."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
import pytest

from crdtsync import Collection, DateTime, Float, LocalError, Replica, Schema, Set, Str

SCHEMA = Schema(Collection("acc", {"name": Str(), "x": Float(allow_nan=True), "at": DateTime(),
                                   "tags": Set(Str())}))
UTC = dt.UTC


def replica(rows: list[dict[str, Any]], written: bool) -> Replica:
    r = Replica.open(":memory:", SCHEMA, device="a", user="u")
    for i, values in enumerate(rows):
        r.create("acc", {"name": f"r{i}", **values}, id=f"id{i}")
    if written:  # rows written, not read from the documents
        r.acknowledge([p.id for p in r.pending()])
        assert not r._dirty
    return r


@pytest.mark.parametrize("written", [False, True])
@pytest.mark.parametrize("order_by", [None, "name"])
def test_limit_zero_gives_nothing_and_a_bad_limit_raises(written: bool, order_by: str | None) -> None:
    r = replica([{}, {}, {}], written)
    assert r.query("acc", limit=0, order_by=order_by) == []
    assert [x.id for x in r.query("acc", limit=2, order_by=order_by)] == ["id0", "id1"]
    for bad in (-1, -3, 1.5, True, "2"):
        with pytest.raises(LocalError, match="limit is an int >= 0"):
            r.query("acc", limit=bad, order_by=order_by)  # type: ignore[arg-type]


@pytest.mark.parametrize("written", [False, True])
def test_nan_and_none_go_last_in_both_directions(written: bool) -> None:
    values = [3.0, math.nan, 1.0, None, -5.0, math.nan, math.inf, 2.0]
    r = replica([{"x": v} for v in values], written)

    def order(descending: bool) -> list[str]:
        return [x.id for x in r.query("acc", order_by="x", descending=descending)]

    assert order(False) == ["id4", "id2", "id7", "id0", "id6", "id1", "id5", "id3"]
    assert order(True) == ["id6", "id0", "id7", "id2", "id4", "id1", "id5", "id3"]
    assert [x.id for x in r.query("acc", order_by="x", limit=6)] == ["id4", "id2", "id7", "id0", "id6", "id1"]


@pytest.mark.parametrize("written", [False, True])
def test_naive_and_aware_datetimes_order_as_utc(written: bool) -> None:
    berlin = dt.timezone(dt.timedelta(hours=1))
    at = [dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 11, tzinfo=UTC), None,
          dt.datetime(2024, 1, 1, 12, 30, tzinfo=berlin), dt.datetime(2024, 1, 1, 11, 45)]
    r = replica([{"at": v} for v in at], written)
    assert [x.id for x in r.query("acc", order_by="at")] == ["id1", "id3", "id4", "id0", "id2"]
    assert [x.id for x in r.query("acc", order_by="at", descending=True)] == ["id0", "id4", "id3", "id1", "id2"]


@pytest.mark.parametrize("written", [False, True])
def test_sets_order_by_their_elements(written: bool) -> None:
    r = replica([{"tags": {"b"}}, {"tags": {"a"}}, {"tags": {"c"}}, {"tags": {"a", "b"}}, {}], written)
    assert [x.id for x in r.query("acc", order_by="tags")] == ["id4", "id1", "id3", "id0", "id2"]


def test_values_of_several_kinds_order_by_kind_then_value(tmp_path: Any) -> None:
    """Kept as stored: a set's elements written under an older element kind beside new ones, a peer's list
    or object in a plain field. order_by raised TypeError on them (set elements compared str with int,
    dicts with dicts); they order by kind, then value, never raising."""
    from pycrdt import Doc, Map

    from crdtsync import Int
    from crdtsync.codec import write_bytes

    path = tmp_path / "r.db"
    r = Replica.open(path, SCHEMA, device="a", user="u")
    for i, tags in enumerate([{"south"}, {"north"}]):
        r.create("acc", {"name": f"r{i}", "tags": tags}, id=f"id{i}")
    r.close()
    ints = Schema(Collection("acc", {"name": Str(), "x": Float(allow_nan=True), "at": DateTime(),
                                     "tags": Set(Int())}))
    r = Replica.open(path, ints, device="a", user="u")
    r.create("acc", {"name": "r2", "tags": {7}}, id="id2")
    assert [x.id for x in r.query("acc", order_by="tags")] == ["id2", "id1", "id0"]  # int, then str
    blob = bytearray(b"CSX1")
    for rid, value in (("id3", {"b": 2}), ("id4", {"a": 1}), ("id5", [1]), ("id6", ["a"])):
        doc: Doc[Any] = Doc()
        doc.get("f", type=Map)["name\x1fpeer"] = orjson.dumps(
            {"v": value, "t": 1 << 40, "d": "peer", "u": "p", "c": {}}).decode()
        write_bytes(blob, orjson.dumps(["acc", rid]))
        write_bytes(blob, doc.get_update())
    r.import_updates(bytes(blob))
    got = [x.id for x in r.query("acc", order_by="name")]
    assert got == ["id4", "id3", "id6", "id5", "id0", "id1", "id2"]  # dict, list, str (by JSON text)
    assert [x.id for x in r.query("acc", order_by="name", descending=True)] == got[::-1]
    r.close()
