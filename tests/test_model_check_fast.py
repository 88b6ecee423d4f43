"""``RecordDoc.check`` of a record new here takes a shortcut for the usual slot and set entry (``checks.py``):
it must accept exactly what ``_check_slot``/``_check_set`` accept, as the same objects, and refuse the rest
with the same error. Checked on entries a peer could write, good and bad, and through whole imports."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, merge_updates

from crdtsync import Collection, Counter, Date, Int, Replica, Schema, Set, Str, Text
from crdtsync.errors import RemoteValidationError
from crdtsync.model import new_record_doc
from crdtsync.model.checks import check_set_entries, check_slots
from crdtsync.model.record import RecordDoc
from crdtsync.model.slots import DELETED, SEP
from crdtsync.store import MemoryStore

COLL = Schema(Collection("accounts", {"name": Str(max_length=5), "n": Int(min=0), "day": Date(),
                                      "notes": Text(), "visits": Counter(), "tags": Set(Str())})).collection("accounts")

ANY = st.none() | st.booleans() | st.integers(-2, 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=8) \
    | st.lists(st.integers(-5, 5), max_size=2) | st.dictionaries(st.text(max_size=2), st.integers(-5, 5), max_size=2)


GOOD: dict[str, list[Any]] = {"name": ["abc", None], "n": [3, 0], "day": ["2024-01-02"], "notes": [None],
                              "visits": [3, -1, None], "tags": [None], DELETED: [True, False]}
BAD = [None, True, 0, -1, 2**63, "abc", "far too long", "2024-01-02", 1.5, [1], {}]
KEYS = [f"{n}{SEP}w1" for n in GOOD] + [f"name{SEP}w2", f"unknown{SEP}w1", f"{SEP}w1", "name", f"name{SEP}"]


@st.composite
def raw_slots(draw: st.DrawFn) -> dict[str, Any]:
    """Slots as a peer could have written them: mostly well formed, each part possibly wrong."""
    def part(good: list[Any], bad: list[Any]) -> Any:  # each part good three times in four
        return draw(st.sampled_from(good)) if draw(st.integers(0, 3)) < 3 else draw(st.sampled_from(bad))

    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True)):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            out[key] = draw(st.sampled_from(["", "{", "[1]", "nul", '{"t":1}x', 5, None, b'{"t":1}', 1.5]))
            continue
        if kind == 1:
            out[key] = orjson.dumps(draw(ANY)).decode()
            continue
        p: dict[str, Any] = {
            "v": part(GOOD.get(key.partition(SEP)[0], [None]), BAD),
            "t": part([5, 2**63], [0, -1, True, 2.0, "5"]),
            "d": part(["dev"], [1, None]),
            "u": part(["user"], [1, None]),
            "c": part([{}, {"w": 3}], [{"w": True}, {"w": "3"}, {"w": 1.0}, [], None]),
        }
        if not draw(st.integers(0, 5)):
            del p[draw(st.sampled_from(list(p)))]
        out[key] = orjson.dumps(p).decode()
    return out


def outcome(f: Any) -> Any:
    try:
        return ("ok", f())
    except RemoteValidationError as e:
        return ("refused", e.collection, e.record, e.field, str(e))


@pytest.mark.parametrize("rules", [True, False], ids=["rules", "structure only"])
@settings(derandomize=True, max_examples=400, deadline=None)
@given(slots=raw_slots())
def test_the_shortcut_accepts_and_refuses_exactly_as_check_slot(rules: bool, slots: dict[str, Any]) -> None:
    doc = new_record_doc(COLL, "r1", writer="me", device="me", user="u", client_id=1)
    assert isinstance(doc, RecordDoc)
    check_slot = doc._check_slot if rules else doc._check_slot_structure
    fast = outcome(lambda: check_slots(COLL, slots, check_slot, rules=rules))
    slow = outcome(lambda: {k: check_slot(k, raw) for k, raw in slots.items()})
    assert fast == slow


def test_a_bad_slot_in_a_record_new_here_refuses_the_whole_import() -> None:
    """A malformed slot (not JSON) in one record: nothing of the import is stored. A value beyond this
    schema's rules is no reason to refuse (the relay judged it under the schema of its time)."""
    loose = Schema(Collection("accounts", {"name": Str(), "phone": Str()}))
    peer = Replica(MemoryStore(), loose, device="peer", user="p")
    for i in range(5):
        peer.create("accounts", {"name": f"n{i}", "phone": "1" * (10 if i != 2 else 100)}, id=f"a{i}")
    bad = Doc()
    bad.get("f", type=Map)[f"phone{SEP}zz"] = "{not json"
    strict = Schema(Collection("accounts", {"name": Str(), "phone": Str(max_length=40)}))
    b = Replica(MemoryStore(), strict, device="b", user="ub")
    before = b.store.load_range(())
    with pytest.raises(RemoteValidationError) as e:
        b.apply_remote([*(("accounts", p.record, u) for p, u in peer.outgoing()),
                        ("accounts", "a3", bad.get_update())])
    assert (e.value.collection, e.value.record, e.value.field) == ("accounts", "a3", None)
    assert b.store.load_range(()) == before
    assert b.query("accounts") == []
    b.import_updates(peer.export_updates())
    assert b.get("accounts", "a2")["phone"] == "1" * 100  # type: ignore[index]


def test_the_records_an_import_returns_are_the_records_read_back() -> None:
    """``_save_row`` builds its Record by hand: it must be the one ``get`` decodes from the row."""
    from crdtsync.demo import DEMO_SCHEMA
    from crdtsync.testing import Cluster

    a, c = Cluster(DEMO_SCHEMA, 2).replicas
    a.create("accounts", {"name": "Acme", "employees": 3, "tags": {"x", "y"}, "notes": "hi"}, id="r1")
    c.import_updates(a.export_updates())
    a.update("accounts", "r1", {"name": "Acme A"})
    c.update("accounts", "r1", {"name": "Acme C"})  # a conflict
    c.delete("accounts", "r1")
    a.create("accounts", {"name": "Beta"}, id="r2")
    b = Cluster(DEMO_SCHEMA, 3).replicas[2]
    changed = b.import_updates(a.export_updates() + c.export_updates()[4:])
    assert sorted(r.id for r in changed) == ["r1", "r2"]
    for rec in changed:
        back = b.get("accounts", rec.id)
        assert back is not None and type(rec) is type(back)
        assert rec == back
    assert any(r.conflicts for r in changed)


SET_KEYS = [SEP.join(p) for p in [("tags", '"x"', "w1"), ("tags", '"y"', "w2"), ("tags", "5", "w1"),
                                  ("tags", "nul", "w1"), ("tags", '"x"', ""), ("tags", "[1]", "w1"),
                                  ("name", '"x"', "w1"),
                                  ("nope", '"x"', "w1"), ("tags", '"x"'), ("tags", '"x"', "w1", "z")]]


@st.composite
def raw_sets(draw: st.DrawFn) -> dict[str, Any]:
    """Set entries as a peer could have written them: mostly well formed, each part possibly wrong."""
    def part(good: list[Any], bad: list[Any]) -> Any:
        return draw(st.sampled_from(good)) if draw(st.integers(0, 3)) < 3 else draw(st.sampled_from(bad))

    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(SET_KEYS[:2]) | st.sampled_from(SET_KEYS), min_size=1, max_size=4,
                             unique=True)):
        if not draw(st.integers(0, 9)):
            out[key] = draw(st.sampled_from(["", "{", "[1]", 5, None, b'{"a":1,"r":{}}']))
            continue
        p: dict[str, Any] = {"a": part([1, 0, 3], [-1, True, 1.0, "1", None]),
                             "r": part([{}, {"w1": 2}], [{"w1": True}, {"w1": "2"}, {"w1": 1.5}, [], None])}
        if not draw(st.integers(0, 5)):
            del p[draw(st.sampled_from(list(p)))]
        out[key] = orjson.dumps(p).decode()
    return out


@pytest.mark.parametrize("rules", [True, False], ids=["rules", "structure only"])
@settings(derandomize=True, max_examples=300, deadline=None)
@given(sets=raw_sets())
def test_the_set_shortcut_accepts_and_refuses_exactly_as_check_set(rules: bool, sets: dict[str, Any]) -> None:
    doc = new_record_doc(COLL, "r1", writer="me", device="me", user="u", client_id=1)
    assert isinstance(doc, RecordDoc)
    check_set = doc._check_set if rules else doc._check_set_structure
    fast = outcome(lambda: check_set_entries(COLL, sets, check_set, rules=rules))
    slow = outcome(lambda: {k: check_set(k, raw) for k, raw in sets.items()})
    assert fast == slow


def test_an_update_with_a_gap_is_held_on_a_record_new_here() -> None:
    """The integration check of a record new here must see a gap in the middle of an update, not only a
    missing beginning: Yrs's state vector *of an update* stops at the first gap, so comparing it with the
    document's (a cheaper check) would take this update as integrated and lose its last change."""
    from pycrdt import get_state

    from crdtsync.demo import DEMO_SCHEMA
    from crdtsync.testing import Cluster

    a = Cluster(DEMO_SCHEMA, 1).replicas[0]
    a.create("accounts", {"name": "Acme"}, id="r1")
    a.update("accounts", "r1", {"employees": 1})
    a.update("accounts", "r1", {"phone": "123"})
    first, middle, last = [u for _, u in a.outgoing()]
    gapped = merge_updates(first, last)
    probe: Doc[Any] = Doc()
    probe.apply_update(gapped)
    assert get_state(gapped) == probe.get_state()  # the cheaper check would be fooled
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    b.apply_remote([("accounts", "r1", gapped)])
    assert b.docs.get("accounts", "r1").doc.held == [gapped]
    assert b.store.load_range(("held",)) != []
    assert b.get("accounts", "r1") is None  # kept out whole until it can be integrated
    b.apply_remote([("accounts", "r1", merge_updates(first, middle))])  # what it lacked, and what that needs
    rec = b.get("accounts", "r1")
    assert rec is not None and (rec.fields["employees"], rec.fields["phone"]) == (1, "123")
    assert b.store.load_range(("held",)) == []
