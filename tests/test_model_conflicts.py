"""Concurrent writes, surfaced conflicts, resolution, concurrent creation, and both delete policies."""

from __future__ import annotations

import pytest

from crdtsync import Collection, Counter, Int, Replica, Schema, Set, Str, Text
from crdtsync.model import Slot, frontier, winner
from crdtsync.testing import Cluster

FIELDS = {"name": Str(), "phone": Str(), "qty": Int(), "notes": Text(), "visits": Counter(), "tags": Set(Str())}
SCHEMA = Schema(Collection("dw", FIELDS, delete_policy="delete-wins"),
                Collection("ew", FIELDS, delete_policy="edit-wins"))


def sync(*rs: Replica) -> None:
    for _ in range(2):
        for a in rs:
            for b in rs:
                if a is not b:
                    b.import_updates(a.export_updates())


def same_everywhere(rs: list[Replica], coll: str, rid: str) -> None:
    recs = [r.get(coll, rid) for r in rs]
    first = recs[0]
    assert first is not None
    for rec in recs[1:]:
        assert rec is not None
        assert (rec.fields, rec.deleted, rec.conflicts) == (first.fields, first.deleted, first.conflicts)


def cluster(n: int = 3, skews: list[int] | None = None) -> Cluster:
    return Cluster(SCHEMA, n, skews=skews)


# -- the pure merge rules ----------------------------------------------------------------------------------

def test_winner_is_latest_time_then_device_id() -> None:
    a = Slot("f", "a", "A", 10, "dev-a", "u", {})
    b = Slot("f", "b", "B", 10, "dev-b", "u", {})
    c = Slot("f", "c", "C", 9, "dev-z", "u", {})
    assert winner([a, b, c]) is b and winner([c, b, a]) is b
    assert winner([]) is None
    d = Slot("f", "d", "D", 11, "dev-0", "u", {"a": 10})  # d had seen a
    assert frontier([a, b, c, d]) == [b, c, d]


# -- concurrent writes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("coll", ["dw", "ew"])
def test_different_fields_both_kept(coll: str) -> None:
    a, b, _ = rs = cluster().replicas
    rid = a.create(coll, {"name": "Acme"})
    sync(*rs)
    a.update(coll, rid, {"qty": 12})
    b.update(coll, rid, {"phone": "555"})
    sync(*rs)
    same_everywhere(rs, coll, rid)
    rec = a.get(coll, rid)
    assert rec is not None and rec.fields["qty"] == 12 and rec.fields["phone"] == "555" and rec.conflicts == ()


def test_one_deterministic_winner_and_every_loser_surfaced() -> None:
    c = cluster(3, skews=[0, 5, 0])  # d1's clock runs 5 ms ahead: its write is the latest
    a, b, x = c.replicas
    rid = a.create("dw", {"name": "Acme"})
    sync(a, b, x)
    a.update("dw", rid, {"name": "A"})
    b.update("dw", rid, {"name": "B"})
    x.update("dw", rid, {"name": "X"})
    sync(a, b, x)
    same_everywhere([a, b, x], "dw", rid)
    rec = a.get("dw", rid)
    assert rec is not None and rec.fields["name"] == "B" and rec.status == "conflict"
    (conflict,) = rec.conflicts
    assert conflict.field == "name" and conflict.kind == "concurrent-write"
    assert [(k.value, k.device, k.user) for k in conflict.candidates] == [
        ("B", "d1", "u1"), ("X", "d2", "u2"), ("A", "d0", "u0")]  # d0 and d2 tie on time: d2 > d0
    assert conflict.candidates[1].time == conflict.candidates[2].time
    assert a.conflicts() == [conflict]


def test_a_write_made_after_seeing_the_other_values_is_not_a_conflict() -> None:
    a, b, x = rs = cluster().replicas
    rid = a.create("dw", {"name": "Acme"})
    sync(*rs)
    a.update("dw", rid, {"name": "A"})
    b.import_updates(a.export_updates())
    b.update("dw", rid, {"name": "B"})  # b saw A
    x.import_updates(b.export_updates())  # x gets both through b
    sync(*rs)
    same_everywhere(rs, "dw", rid)
    rec = x.get("dw", rid)
    assert rec is not None and rec.fields["name"] == "B" and rec.conflicts == ()


def test_third_replica_sees_one_side_only() -> None:
    a, b, x = rs = cluster().replicas
    rid = a.create("dw", {"name": "Acme"})
    sync(*rs)
    a.update("dw", rid, {"name": "A"})
    b.update("dw", rid, {"name": "B"})
    x.import_updates(a.export_updates())
    x.update("dw", rid, {"name": "X"})  # overwrites A knowingly, concurrent with B
    sync(*rs)
    same_everywhere(rs, "dw", rid)
    rec = a.get("dw", rid)
    assert rec is not None
    (conflict,) = rec.conflicts
    assert sorted(k.value for k in conflict.candidates) == ["B", "X"], "A was overwritten by X, who saw it"


def test_resolve_syncs_and_clears_everywhere() -> None:
    a, b, x = rs = cluster().replicas
    rid = a.create("dw", {"name": "Acme"})
    sync(*rs)
    a.update("dw", rid, {"name": "A"})
    b.update("dw", rid, {"name": "B"})
    sync(*rs)
    x.resolve("dw", rid, "name", "Acme Ltd")
    assert x.get("dw", rid).conflicts == ()  # type: ignore[union-attr]
    sync(*rs)
    same_everywhere(rs, "dw", rid)
    rec = a.get("dw", rid)
    assert rec is not None and rec.fields["name"] == "Acme Ltd" and rec.conflicts == () and a.conflicts() == []
    assert [h.op for h in a.history("dw", rid) if h.field == "name"][-1] == "resolve"


def test_resolve_racing_with_a_new_write_is_a_new_conflict() -> None:
    a, b, x = rs = cluster().replicas
    rid = a.create("dw", {"name": "Acme"})
    sync(*rs)
    a.update("dw", rid, {"name": "A"})
    b.update("dw", rid, {"name": "B"})
    sync(*rs)
    a.resolve("dw", rid, "name", "B")   # picks a candidate
    x.update("dw", rid, {"name": "X"})  # saw A and B, not the resolution
    sync(*rs)
    same_everywhere(rs, "dw", rid)
    rec = b.get("dw", rid)
    assert rec is not None
    (conflict,) = rec.conflicts
    assert sorted((k.value, k.device) for k in conflict.candidates) == [("B", "d0"), ("X", "d2")]


def test_concurrent_creation_of_one_id_merges_field_by_field() -> None:
    a, b, _ = rs = cluster().replicas
    a.create("dw", {"name": "From A", "qty": 1, "tags": {"x"}}, id="acct-1")
    b.create("dw", {"name": "From B", "phone": "555", "tags": {"y"}, "visits": 2}, id="acct-1")
    sync(*rs)
    same_everywhere(rs, "dw", "acct-1")
    rec = a.get("dw", "acct-1")
    assert rec is not None
    assert (rec.fields["qty"], rec.fields["phone"], rec.fields["tags"], rec.fields["visits"]) == (
        1, "555", frozenset({"x", "y"}), 2)
    assert [c.field for c in rec.conflicts] == ["name"]


# -- deletes -------------------------------------------------------------------------------------------------

def deleted_while_edited() -> tuple[list[Replica], str]:
    """``a`` deletes a record of ``dw`` (delete-wins) while ``b`` edits three of its fields; all synced."""
    a, b, _ = rs = cluster().replicas
    rid = a.create("dw", {"name": "Acme", "notes": "hello"})
    sync(*rs)
    a.delete("dw", rid)
    b.update("dw", rid, {"phone": "555", "notes": "hello world"})
    b.increment("dw", rid, "visits", 3)
    sync(*rs)
    return rs, rid


def test_delete_wins_keeps_the_edit_as_a_conflict_and_restore_brings_it_back() -> None:
    rs, rid = deleted_while_edited()
    a, _, x = rs
    same_everywhere(rs, "dw", rid)
    rec = x.get("dw", rid)
    assert rec is not None and rec.deleted and rec.status == "conflict"
    kinds = {(c.field, c.kind) for c in rec.conflicts}
    assert kinds == {("phone", "edit-vs-delete"), ("notes", "edit-vs-delete"), ("visits", "edit-vs-delete")}
    by_field = {c.field: c for c in rec.conflicts}
    assert by_field["phone"].candidates[0].value is True and by_field["phone"].candidates[0].device == "d0"
    assert by_field["phone"].candidates[1].value == "555" and by_field["phone"].candidates[1].device == "d1"
    assert by_field["notes"].candidates[1].value == "hello world"  # the text, not a marker
    assert by_field["visits"].candidates[1].value == 3
    assert x.query("dw") == [] and len(x.query("dw", include_deleted=True)) == 1
    x.restore("dw", rid)
    sync(*rs)
    same_everywhere(rs, "dw", rid)
    rec = a.get("dw", rid)
    assert rec is not None and not rec.deleted and rec.conflicts == ()
    assert (rec.fields["phone"], rec.fields["notes"], rec.fields["visits"]) == ("555", "hello world", 3)


def test_delete_wins_confirming_the_delete_clears_the_conflict() -> None:
    a, b, _ = rs = cluster().replicas
    rid = a.create("dw", {"name": "Acme"})
    sync(*rs)
    a.delete("dw", rid)
    b.update("dw", rid, {"phone": "555"})
    sync(*rs)
    b.resolve("dw", rid, "deleted", True)
    sync(*rs)
    same_everywhere(rs, "dw", rid)
    rec = a.get("dw", rid)
    assert rec is not None and rec.deleted and rec.conflicts == ()


@pytest.mark.parametrize("field", ["phone", "notes", "visits"])
def test_delete_wins_resolving_an_edit_vs_delete_conflict_with_the_delete_confirms_it(field: str) -> None:
    """``candidates[0]`` of an edit-vs-delete conflict is the delete (``True``): resolving with it used to
    raise ValidationError for any field but a bool."""
    rs, rid = deleted_while_edited()
    a, _, x = rs
    [conflict] = [c for c in x.conflicts() if c.field == field]
    x.resolve("dw", rid, field, conflict.value)
    sync(*rs)
    same_everywhere(rs, "dw", rid)
    rec = a.get("dw", rid)
    assert rec is not None and rec.deleted and rec.conflicts == () and x.conflicts() == []


def test_edit_wins_brings_the_record_back_and_surfaces_the_delete() -> None:
    a, b, x = rs = cluster().replicas
    rid = a.create("ew", {"name": "Acme"})
    sync(*rs)
    a.delete("ew", rid)
    b.update("ew", rid, {"phone": "555"})
    sync(*rs)
    same_everywhere(rs, "ew", rid)
    rec = x.get("ew", rid)
    assert rec is not None and not rec.deleted and rec.fields["phone"] == "555"
    (conflict,) = rec.conflicts
    assert conflict.field == "deleted" and conflict.kind == "delete-vs-edit"
    assert [(k.value, k.device) for k in conflict.candidates] == [(False, "d1"), (True, "d0")]
    x.delete("ew", rid)  # the user confirms the delete, having seen the edit
    sync(*rs)
    same_everywhere(rs, "ew", rid)
    rec = a.get("ew", rid)
    assert rec is not None and rec.deleted and rec.conflicts == ()


def test_edit_wins_resolving_to_keep_the_record() -> None:
    a, b, _ = rs = cluster().replicas
    rid = a.create("ew", {"name": "Acme"})
    sync(*rs)
    a.delete("ew", rid)
    b.update("ew", rid, {"phone": "555"})
    sync(*rs)
    a.resolve("ew", rid, "deleted", False)
    sync(*rs)
    same_everywhere(rs, "ew", rid)
    rec = b.get("ew", rid)
    assert rec is not None and not rec.deleted and rec.conflicts == ()


@pytest.mark.parametrize("coll", ["dw", "ew"])
def test_delete_without_concurrent_edit_is_plain(coll: str) -> None:
    a, b, _ = rs = cluster().replicas
    rid = a.create(coll, {"name": "Acme"})
    sync(*rs)
    b.update(coll, rid, {"phone": "1"})
    sync(*rs)
    a.delete(coll, rid)
    sync(*rs)
    same_everywhere(rs, coll, rid)
    rec = b.get(coll, rid)
    assert rec is not None and rec.deleted and rec.conflicts == ()


@pytest.mark.parametrize("coll", ["dw", "ew"])
def test_delete_racing_with_a_restore(coll: str) -> None:
    a, b, _ = rs = cluster().replicas
    rid = a.create(coll, {"name": "Acme"})
    sync(*rs)
    a.delete(coll, rid)
    sync(*rs)
    a.restore(coll, rid)
    b.resolve(coll, rid, "deleted", True)
    sync(*rs)
    same_everywhere(rs, coll, rid)
    rec = a.get(coll, rid)
    assert rec is not None
    (conflict,) = rec.conflicts
    assert conflict.field == "deleted"
    assert {k.value for k in conflict.candidates} == {True, False}
    assert rec.deleted is (coll == "dw")


def test_concurrent_writes_of_one_value_are_no_conflict() -> None:
    """Two devices that set the same value offline, or resolve a conflict alike, agree: showing a conflict
    between "A" and "A" asked the user to choose between two equal values. A third value still conflicts."""
    a, b, c = cluster().replicas
    rid = a.create("dw", {"name": "x"})
    sync(a, b, c)
    a.update("dw", rid, {"qty": 7, "name": "A"})
    b.update("dw", rid, {"qty": 7, "name": "B"})
    sync(a, b, c)
    for r in (a, b, c):
        rec = r.get("dw", rid)
        assert rec is not None and rec.fields["qty"] == 7
        assert [cf.field for cf in rec.conflicts] == ["name"] and rec.status == "conflict"
    a.resolve("dw", rid, "name", "A")
    b.resolve("dw", rid, "name", "A")
    sync(a, b, c)
    same_everywhere([a, b, c], "dw", rid)
    for r in (a, b, c):
        rec = r.get("dw", rid)
        assert rec is not None and rec.fields["name"] == "A" and rec.conflicts == () and r.conflicts() == []
    b.update("dw", rid, {"qty": 8})
    c.update("dw", rid, {"qty": 9})
    sync(a, b, c)
    same_everywhere([a, b, c], "dw", rid)
    rec = a.get("dw", rid)
    assert rec is not None and [(cf.field, sorted(x.value for x in cf.candidates)) for cf in rec.conflicts] \
        == [("qty", [8, 9])]
