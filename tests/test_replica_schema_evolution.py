"""An app team changes its schema while devices stay in the field: limits tightened, a choice removed, a
field added or removed, a kind changed, the delete policy changed.

The relay enforces the rules on each change as it arrives; a device merging remote content checks only its
structure (``model/checks.py``). A device used to check every slot of a record new to it against its own
schema's current rules, overwritten slots included: a fresh device never got the records written before a
rule was tightened, and an upgraded one refused every later change of them.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
from pycrdt import Doc, Map

from crdtsync import Collection, Counter, Date, Int, Replica, Schema, Set, Str, Text
from crdtsync.errors import RemoteValidationError
from crdtsync.model.slots import DELETED, SEP
from crdtsync.schema import Strategy
from crdtsync.store import MemoryStore

FIELDS: dict[str, Any] = {"name": Str(required=True), "code": Str(max_length=20), "employees": Int(max=1000),
                          "status": Str(choices=("a", "b", "c"))}
V1 = Schema(Collection("accounts", FIELDS))
#: V1 tightened: shorter codes of capitals only, fewer employees, status "c" removed
V2 = Schema(Collection("accounts", {**FIELDS, "code": Str(max_length=5, pattern=r"[A-Z]+"),
                                    "employees": Int(max=100), "status": Str(choices=("a", "b"))}))
BEYOND = {"code": "ABCDEFGHIJ", "employees": 500, "status": "c"}


def _replica(schema: Schema, device: str) -> Replica:
    return Replica(MemoryStore(), schema, device=device, user="u")


@pytest.mark.parametrize("strategy", ["crdt", "lww-field", "lww-record"])
def test_a_fresh_device_gets_records_written_before_a_rule_was_tightened(strategy: Strategy) -> None:
    v1, v2 = V1.with_strategy(strategy), V2.with_strategy(strategy)
    peer, other = _replica(v1, "peer"), _replica(v1, "other")
    ids = [peer.create("accounts", {"name": f"n{i}", **(BEYOND if i % 2 else {"code": "AB"})}) for i in range(10)]
    peer.update("accounts", ids[0], {"employees": 900})
    other.import_updates(peer.export_updates())
    other.update("accounts", ids[0], {"employees": 50})  # the 900 stays in the document, overwritten
    fresh = _replica(v2, "fresh")
    changed = fresh.import_updates(peer.export_updates() + other.export_updates()[4:])
    assert len(changed) == 10 and len(fresh.query("accounts")) == 10
    for rid in ids:
        rec, theirs = fresh.get("accounts", rid), other.get("accounts", rid)
        assert rec is not None and theirs is not None
        assert rec.fields == theirs.fields and rec.status == "synced"  # shown as stored
    if strategy == "crdt":  # (under lww-field the latest wall-clock stamp wins, which may be either)
        assert fresh.get("accounts", ids[0])["employees"] == 50  # type: ignore[index]
    assert fresh.get("accounts", ids[1])["status"] == "c"  # type: ignore[index]
    # later changes of those records go in too
    peer.update("accounts", ids[1], {"name": "renamed"})
    fresh.apply_remote([("accounts", ids[1], u) for _, u in peer.outgoing()[-1:]])
    assert fresh.get("accounts", ids[1])["name"] == "renamed"  # type: ignore[index]


def test_an_upgraded_device_takes_later_changes_of_records_beyond_a_tightened_rule(tmp_path: Path) -> None:
    """The device held the records before the rule was tightened: once opened with the new schema, its first
    merge into each record (loaded from the store, checked whole) refused every later change of them."""
    peer = _replica(V1, "peer")
    rid = peer.create("accounts", {"name": "Acme", **BEYOND})
    path = tmp_path / "d.db"
    with Replica.open(path, V1, device="d", user="u") as d:
        d.import_updates(peer.export_updates())
    peer.update("accounts", rid, {"name": "Acme 2"})
    with Replica.open(path, V2, device="d", user="u") as d:
        [rec] = d.import_updates(peer.export_updates())
        assert rec.fields == {"name": "Acme 2", **BEYOND} and d.get("accounts", rid) == rec


NEWER = Schema(Collection("accounts", {**FIELDS, "phone": Str(), "labels": Set(Str())}))


@pytest.mark.parametrize("strategy", ["crdt", "lww-field", "lww-record"])
def test_fields_of_a_newer_schema_are_kept_hidden_and_show_once_the_schema_has_them(
        tmp_path: Path, strategy: Strategy) -> None:
    older, newer_schema = V1.with_strategy(strategy), NEWER.with_strategy(strategy)
    newer = _replica(newer_schema, "new")
    rid = newer.create("accounts", {"name": "Acme", "phone": "555", "labels": {"x"}})
    path = tmp_path / "old.db"
    with Replica.open(path, older, device="old", user="u") as old:
        old.import_updates(newer.export_updates())
        rec = old.get("accounts", rid)
        assert rec is not None and rec["name"] == "Acme" and set(rec.fields) == set(FIELDS)
        newer.update("accounts", rid, {"name": "Acme 2", "phone": "556"})
        old.import_updates(newer.export_updates())
        rec = old.get("accounts", rid)
        assert rec is not None and rec["name"] == "Acme 2" and "phone" not in rec.fields and rec.status == "synced"
    with Replica.open(path, newer_schema, device="old", user="u") as upgraded:
        rec = upgraded.get("accounts", rid)
        theirs = newer.get("accounts", rid)
        assert rec is not None and theirs is not None and rec.fields == theirs.fields
        assert (rec["phone"], rec["labels"]) == ("556", frozenset({"x"}))


def _slot(v: Any, t: int = 2**40) -> str:
    return orjson.dumps({"v": v, "t": t, "d": "zz", "u": "u", "c": {}}).decode()


MALFORMED: list[tuple[str, str, str, Any]] = [
    ("not JSON", "f", f"name{SEP}zz", "{not json"),
    ("no time", "f", f"name{SEP}zz", orjson.dumps({"v": "x", "d": "zz", "u": "u", "c": {}}).decode()),
    ("time out of range", "f", f"name{SEP}zz", _slot("x", t=0)),
    ("no writer in the key", "f", "name", _slot("x")),
    ("no field name in the key", "f", f"{SEP}zz", _slot("x")),
    ("not a str", "f", f"name{SEP}zz", 5),
    ("nested shared type", "f", f"name{SEP}zz", "map"),
    ("deleted not a bool", "f", f"{DELETED}{SEP}zz", _slot("yes")),
    ("counter share beyond 64 bits", "f", f"visits{SEP}zz", _slot(2**63)),
    ("set element not a scalar", "s", f"tags{SEP}[1]{SEP}zz", orjson.dumps({"a": 1, "r": {}}).decode()),
    ("set entry without adds", "s", f"tags{SEP}\"x\"{SEP}zz", orjson.dumps({"r": {}}).decode()),
]
KINDS = Schema(Collection("accounts", {"name": Str(), "visits": Counter(), "tags": Set(Str()), "notes": Text()}))


def _forge(base: list[bytes], root: str, key: str, value: Any) -> bytes:
    """An update over a record's state that sets one raw entry of a root map ("map": a nested Map)."""
    doc: Doc[Any] = Doc()
    for u in base:
        doc.apply_update(u)
    before = doc.get_state()
    doc.get(root, type=Map)[key] = Map({"v": "x"}) if value == "map" else value
    return doc.get_update(before)


@pytest.mark.parametrize("known", [False, True], ids=["record new here", "record known here"])
@pytest.mark.parametrize("what, root, key, value", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_content_is_still_refused_and_changes_nothing(known: bool, what: str, root: str, key: str,
                                                                 value: Any) -> None:
    peer = _replica(KINDS, "peer")
    rid = peer.create("accounts", {"name": "Acme", "visits": 2, "tags": {"a"}, "notes": "hi"})
    [(_, create)] = peer.outgoing()
    device = _replica(KINDS, "device")
    if known:
        device.apply_remote([("accounts", rid, create)])
    before = device.store.load_range(())
    bad = _forge([create], root, key, value)
    for _ in range(2):  # twice: a refused merge must not leave the bad entry behind as checked
        with pytest.raises(RemoteValidationError):
            device.apply_remote([("accounts", rid, bad if known else create), *([] if known else
                                                                                 [("accounts", rid, bad)])])
        assert device.store.load_range(()) == before
    rec = device.get("accounts", rid)
    assert (rec.fields if rec is not None else None) == ({"name": "Acme", "visits": 2, "tags": frozenset({"a"}),
                                                          "notes": "hi"} if known else None)


@pytest.mark.parametrize("strategy", ["crdt", "lww-record"])
def test_values_written_under_another_kind_are_kept_and_ignored_where_the_new_kind_cannot_use_them(
        strategy: Strategy) -> None:
    """A text or set field's marker holding a value, a counter share that is no int: written before the
    field's kind changed. Kept (the record is not refused), and not used as the new kind's value. Under
    ``lww-record`` (whose drafts hold plain values) a str in a set field showed as the set of its
    characters, and a counter showed the str, which an increment then failed on (TypeError)."""
    before = Schema(Collection("accounts", {"name": Str(), "visits": Str(), "notes": Str(), "tags": Str()}))
    after = Schema(Collection("accounts", {"name": Str(), "visits": Counter(), "notes": Text(), "tags": Set(Str())}))
    before, after = before.with_strategy(strategy), after.with_strategy(strategy)
    peer = _replica(before, "peer")
    rid = peer.create("accounts", {"name": "Acme", "visits": "many", "notes": "old note", "tags": "x"})
    device = _replica(after, "device")
    device.import_updates(peer.export_updates())
    rec = device.get("accounts", rid)
    notes = "" if strategy == "crdt" else "old note"  # (a draft's text is a plain str, as a Str's value)
    assert rec is not None and rec.fields == {"name": "Acme", "visits": 0, "notes": notes, "tags": frozenset()}
    device.increment("accounts", rid, "visits", 2)
    device.update("accounts", rid, {"notes": "new", "tags": {"y"}})
    rec = device.get("accounts", rid)
    assert rec is not None and rec.fields == {"name": "Acme", "visits": 2, "notes": "new", "tags": frozenset({"y"})}


def test_a_set_field_made_a_plain_field_under_the_same_name_opens_and_comes_back_when_made_a_set_again(
        tmp_path: Path) -> None:
    """Set entries of a field that is no set now became its value: every open failed (a frozenset in a row)."""
    as_set = Schema(Collection("c", {"n": Str(), "f": Set(Str())}))
    as_str = Schema(Collection("c", {"n": Str(), "f": Str(max_length=3)}))
    path = tmp_path / "r.db"
    with Replica.open(path, as_set, device="d", user="u") as r:
        rid = r.create("c", {"n": "x", "f": {"a"}})
        blob = r.export_updates()
    for _ in range(2):
        with Replica.open(path, as_str, device="d", user="u") as r:
            rec = r.get("c", rid)
            assert rec is not None and rec.fields == {"n": "x", "f": None}
            assert r.query("c", where={"f": None})[0].id == rid
    fresh = _replica(as_str, "e")
    fresh.import_updates(blob)
    assert fresh.get("c", rid).fields == {"n": "x", "f": None}  # type: ignore[union-attr]
    with Replica.open(path, as_set, device="d", user="u") as r:
        assert r.get("c", rid).fields == {"n": "x", "f": frozenset({"a"})}  # type: ignore[union-attr]


def test_values_another_register_kind_wrote_show_as_stored_in_rows_and_records(tmp_path: Path) -> None:
    """A Str made a Date, a set of Str made a set of Date: the old values show as stored (the new kind
    cannot read them), in the rows (encoding them as the new kind failed) and the records returned."""
    before = Schema(Collection("c", {"day": Str(), "days": Set(Str())}))
    after = Schema(Collection("c", {"day": Date(), "days": Set(Date())}))
    peer = _replica(before, "peer")
    rid = peer.create("c", {"day": "soon", "days": {"later", "2024-01-02"}})
    device = _replica(after, "device")
    [shown] = device.import_updates(peer.export_updates())
    want = {"day": "soon", "days": frozenset({"later", dt.date(2024, 1, 2)})}
    assert shown.fields == want and device.get("c", rid) == shown
    path = tmp_path / "r.db"
    with Replica.open(path, before, device="d", user="u") as r:
        r.import_updates(peer.export_updates())
    with Replica.open(path, after, device="d", user="u") as r:
        assert r.get("c", rid).fields == want  # type: ignore[union-attr]


def test_rows_are_rebuilt_when_the_delete_policy_changed(tmp_path: Path) -> None:
    """A delete met a concurrent edit: under delete-wins the record is deleted, under edit-wins it is not.
    A store reopened after the policy changed kept showing the old outcome."""
    fields = {"name": Str(), "phone": Str()}
    wins = {p: Schema(Collection("a", fields, delete_policy=p)) for p in ("delete-wins", "edit-wins")}
    path = tmp_path / "a.db"
    b = _replica(wins["delete-wins"], "b")
    with Replica.open(path, wins["delete-wins"], device="a", user="u") as a:
        rid = a.create("a", {"name": "x"})
        b.import_updates(a.export_updates())
        a.delete("a", rid)
        b.update("a", rid, {"name": "edited"})
        a.import_updates(b.export_updates())
        assert a.get("a", rid).deleted  # type: ignore[union-attr]
    for policy, deleted, kind in [("edit-wins", False, "delete-vs-edit"), ("delete-wins", True, "edit-vs-delete")]:
        with Replica.open(path, wins[policy], device="a", user="u") as a:
            rec = a.get("a", rid)
            assert rec is not None and rec.deleted is deleted and [c.kind for c in rec.conflicts] == [kind]
            assert len(a.query("a")) == (0 if deleted else 1)
            fresh = _replica(wins[policy], "c")
            fresh.import_updates(a.export_updates())
            assert fresh.get("a", rid) == rec


def test_a_history_entry_no_device_writes_is_left_out_of_history() -> None:
    """A peer's history entry with a str time, merged directly (the relay checks history entries): history()
    raised TypeError sorting it beside the record's own entries. It is left out."""
    from pycrdt import Array

    from crdtsync.codec import write_bytes

    peer = _replica(V1, "peer")
    rid = peer.create("accounts", {"name": "Acme"})
    [(_, update)] = [(k, us[0]) for k, us in peer._parse_export(peer.export_updates()).items()]
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    doc.get("h", type=Array).append(orjson.dumps({"f": "name", "o": "set", "v": "x", "d": "evil", "u": "m",
                                                  "t": "x"}).decode())
    blob = bytearray(b"CSX1")
    write_bytes(blob, orjson.dumps(["accounts", rid]))
    write_bytes(blob, doc.get_update())
    device = _replica(V1, "device")
    device.import_updates(bytes(blob))
    assert [(h.field, h.device) for h in device.history("accounts", rid)] == [("name", "peer")]
