"""``update(..., base=record)``: a form saved as the user's edits of what it showed (docs/records.md, "Saving a
form"). Real SQLite replicas, exchanging by ``export_updates``/``import_updates``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from crdtsync import Collection, Counter, Int, Record, Replica, Schema, Set, Str, Text
from crdtsync.errors import LocalError, RecordDeleted, ValidationError
from crdtsync.model.textdiff import merge3
from crdtsync.store.base import Batch
from crdtsync.store.sqlite import SQLiteStore

SCHEMA = Schema(
    Collection("accounts", {"name": Str(required=True, max_length=60), "stage": Str(), "employees": Int(min=0),
                            "notes": Text(max_length=200), "tags": Set(Str(), max_items=5), "visits": Counter()}),
    Collection("contacts", {"name": Str()}),
)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    d0 = Replica.open(tmp_path / "d0.db", SCHEMA, device="d0", user="alice")
    d1 = Replica.open(tmp_path / "d1.db", SCHEMA, device="d1", user="bob")
    yield d0, d1
    d0.close()
    d1.close()


def sync(a: Replica, b: Replica) -> None:
    b.import_updates(a.export_updates())
    a.import_updates(b.export_updates())


def renamed_while_open(d0: Replica, d1: Replica) -> Record:
    """The explorer's scenario up to the save: d0 opens a form on an account; d1 renames it and tags it; d0
    syncs. Returns the form (the record as d0 showed it)."""
    d0.create("accounts", {"name": "Acme", "tags": {"a"}}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.update("accounts", "r0", {"name": "Acme Ltd", "tags": {"a", "b"}})
    sync(d1, d0)
    return form


def test_stale_form_keeps_what_arrived_while_it_was_open(pair: tuple[Replica, Replica]) -> None:
    """The explorer's scenario: d0 opens a form; d1 renames the account and tags it; d0 syncs; the user saves
    the form (every field of it, one changed). Without ``base`` the rename and the tag were overwritten on
    every device, silently."""
    d0, d1 = pair
    form = renamed_while_open(d0, d1)
    d0.update("accounts", "r0", {**form.fields, "stage": "won"}, base=form)
    sync(d0, d1)
    for r in (d0, d1):
        rec = r.get("accounts", "r0")
        assert rec is not None
        assert rec["name"] == "Acme Ltd" and rec["tags"] == {"a", "b"} and rec["stage"] == "won"
        assert rec.conflicts == ()


def test_a_rename_made_since_the_form_opened_is_a_surfaced_conflict(pair: tuple[Replica, Replica]) -> None:
    """The user renamed too: both names stay, a conflict with the usual winner (the later write), on both."""
    d0, d1 = pair
    form = renamed_while_open(d0, d1)
    d0.update("accounts", "r0", {**form.fields, "name": "ACME"}, base=form)
    sync(d0, d1)
    for r in (d0, d1):
        rec = r.get("accounts", "r0")
        assert rec is not None and rec["name"] == "ACME" and rec["tags"] == {"a", "b"}
        (c,) = rec.conflicts
        assert c.field == "name" and [(x.value, x.device) for x in c.candidates] == [("ACME", "d0"),
                                                                                     ("Acme Ltd", "d1")]
    # resolving it is an ordinary write that saw both
    d1.resolve("accounts", "r0", "name", "Acme Ltd")
    sync(d1, d0)
    assert d0.get("accounts", "r0").conflicts == ()  # type: ignore[union-attr]


def test_a_field_nobody_changed_since_is_an_ordinary_write(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "stage": "lead"}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.update("accounts", "r0", {"employees": 3})  # another field: the form's name saw every write of name
    sync(d1, d0)
    d0.update("accounts", "r0", {**form.fields, "name": "ACME"}, base=form)
    sync(d0, d1)
    for r in (d0, d1):
        rec = r.get("accounts", "r0")
        assert rec is not None and rec["name"] == "ACME" and rec["employees"] == 3 and rec.conflicts == ()


def test_fields_the_user_left_alone_are_not_written(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "stage": "lead", "employees": 4, "notes": "hi", "tags": {"a"},
                           "visits": 2}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    before = len(d0.history("accounts", "r0"))
    d0.update("accounts", "r0", dict(form.fields), base=form)  # saved unchanged: nothing at all
    assert len(d0.history("accounts", "r0")) == before and d0.pending()[-1].op == "create"
    d0.update("accounts", "r0", {**form.fields, "employees": 5}, base=form)
    new = d0.history("accounts", "r0")[before:]
    assert [(h.field, h.op, h.value) for h in new] == [("employees", "set", 5)]
    assert d0.pending()[-1].fields == {"employees": 5}


def test_concurrent_counter_changes_add_up(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "visits": 10}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.increment("accounts", "r0", "visits", 2)
    d0.increment("accounts", "r0", "visits", 1)  # this device too, by another screen
    sync(d1, d0)
    d0.update("accounts", "r0", {**form.fields, "visits": 15}, base=form)  # the user typed 10 -> 15: +5
    sync(d0, d1)
    assert d0.get("accounts", "r0")["visits"] == d1.get("accounts", "r0")["visits"] == 18  # type: ignore[index]


def test_text_edits_are_merged_three_ways(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "notes": "Call them on Monday about the order."}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.update("accounts", "r0", {"notes": "Call Ann on Monday about the order."})
    sync(d1, d0)
    d0.update("accounts", "r0", {**form.fields, "notes": "Call them on Monday about the big order!"}, base=form)
    sync(d0, d1)
    for r in (d0, d1):
        assert r.get("accounts", "r0")["notes"] == "Call Ann on Monday about the big order!"  # type: ignore[index]


def test_overlapping_text_edits_keep_both_sides_characters(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "notes": "meet at noon"}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.update("accounts", "r0", {"notes": "meet at 3pm"})
    sync(d1, d0)
    d0.update("accounts", "r0", {**form.fields, "notes": "meet at 9:30"}, base=form)
    sync(d0, d1)
    got = d0.get("accounts", "r0")["notes"]  # type: ignore[index]
    assert got == d1.get("accounts", "r0")["notes"]  # type: ignore[index]
    assert got.startswith("meet at ") and "noon" not in got
    rest = got[len("meet at "):]
    for typed in ("3pm", "9:30"):  # every character each side typed is there, in its order
        it = iter(rest)
        assert all(ch in it for ch in typed), (typed, got)


@pytest.mark.parametrize(("base", "mine", "now", "want"), [
    ("abc", "abc", "xyz", "xyz"),
    ("abc", "abXc", "abc", "abXc"),
    ("hello world", "hello there world", "hello brave world", "hello brave there world"),
    ("abc", "ac", "aYbc", "aYc"),  # the b goes, the Y inserted before it stays
    ("one two, three", "one, three", "one 2, three", "one2, three"),  # " two" deleted here, "two" replaced there
    ("", "x", "y", "yx"),
    ("éa", "éaé", "aéa", "aéaé"),
])
def test_merge3(base: str, mine: str, now: str, want: str) -> None:
    assert merge3(base, mine, now) == want


def test_set_edits_are_the_elements_added_and_removed(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "tags": {"a", "b"}}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.update("accounts", "r0", {"tags": {"a", "c"}})  # b removed, c added
    sync(d1, d0)
    d0.update("accounts", "r0", {**form.fields, "tags": {"b", "d"}}, base=form)  # a removed, d added
    sync(d0, d1)
    for r in (d0, d1):
        assert r.get("accounts", "r0")["tags"] == {"c", "d"}  # type: ignore[index]


def test_a_set_element_added_again_since_the_form_opened_stays(pair: tuple[Replica, Replica]) -> None:
    """Add-wins: d1 removed and added ``a`` again after the form opened; the user's removal had not seen
    that add, so ``a`` stays (it would go if the removal covered every add present when saved)."""
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "tags": {"a", "b"}}, id="r0")
    sync(d0, d1)
    d1.update("accounts", "r0", {"tags": {"a", "b", "x"}})  # d1 writes the set before the form opens
    sync(d1, d0)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.update("accounts", "r0", {"tags": {"b", "x"}})
    d1.update("accounts", "r0", {"tags": {"a", "b", "x"}})
    sync(d1, d0)
    d0.update("accounts", "r0", {**form.fields, "tags": {"b", "x"}}, base=form)
    sync(d0, d1)
    for r in (d0, d1):
        assert r.get("accounts", "r0")["tags"] == {"a", "b", "x"}  # type: ignore[index]
    # a removal on what the record shows now takes it away
    form = d0.get("accounts", "r0")
    d0.update("accounts", "r0", {**form.fields, "tags": {"b", "x"}}, base=form)  # type: ignore[union-attr]
    sync(d0, d1)
    assert d1.get("accounts", "r0")["tags"] == {"b", "x"}  # type: ignore[index]


def test_a_base_of_another_record_is_refused_before_anything_is_stored(pair: tuple[Replica, Replica]) -> None:
    d0, _ = pair
    d0.create("accounts", {"name": "Acme"}, id="r0")
    d0.create("accounts", {"name": "Other"}, id="r1")
    d0.create("contacts", {"name": "Ann"}, id="r0")
    stored, pending = d0.store.load_range(()), d0.pending()
    other = d0.get("accounts", "r1")
    contact = d0.get("contacts", "r0")
    assert other is not None and contact is not None
    for wrong in (other, contact):
        with pytest.raises(LocalError, match="base is the record"):
            d0.update("accounts", "r0", {"name": "X"}, base=wrong)
    with pytest.raises(LocalError, match="base must be a Record"):
        d0.update("accounts", "r0", {"name": "X"}, base={"name": "Acme"})  # type: ignore[arg-type]
    form = d0.get("accounts", "r0")
    with pytest.raises(ValidationError):  # the form's values are checked as in any update
        d0.update("accounts", "r0", {"name": "X" * 61}, base=form)
    with pytest.raises(ValidationError):  # and what they make of the record now: a set's limit
        d0.update("accounts", "r0", {"tags": {"1", "2", "3", "4", "5", "6"}}, base=form)
    assert d0.store.load_range(()) == stored and d0.pending() == pending


def test_a_merged_value_that_breaks_the_schema_is_refused(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "tags": {"a", "b"}}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    assert form is not None
    d1.update("accounts", "r0", {"tags": {"a", "b", "c", "d"}})
    sync(d1, d0)
    stored = d0.store.load_range(())
    with pytest.raises(ValidationError, match="tags"):  # 3 tags in the form, 6 on the record once saved
        d0.update("accounts", "r0", {**form.fields, "tags": {"a", "b", "e", "f"}}, base=form)
    assert d0.store.load_range(()) == stored


def test_a_deleted_record_is_refused_as_by_update(pair: tuple[Replica, Replica]) -> None:
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme"}, id="r0")
    sync(d0, d1)
    form = d0.get("accounts", "r0")
    d1.delete("accounts", "r0")
    sync(d1, d0)
    with pytest.raises(RecordDeleted):
        d0.update("accounts", "r0", {"name": "X"}, base=form)


def test_records_carry_their_version(pair: tuple[Replica, Replica], tmp_path: Path) -> None:
    """``Record.version`` is the record's version vector, wherever the record comes from; equality ignores it."""
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme"}, id="r0")
    sync(d0, d1)
    d1.update("accounts", "r0", {"stage": "won"})
    sync(d1, d0)
    events = []
    d0.subscribe(events.append)
    d0.update("accounts", "r0", {"employees": 3})
    doc = d0.docs.get("accounts", "r0").doc
    want = doc.state().vector
    assert set(want) == {"d0", "d1"}
    got = d0.get("accounts", "r0")
    assert got is not None and dict(got.version or {}) == want
    assert dict(d0.query("accounts")[0].version or {}) == want
    assert dict(events[-1].record.version) == want
    d0.close()  # the row written at close: read from the store
    again = Replica.open(tmp_path / "d0.db", SCHEMA, device="d0", user="alice")
    try:
        rec = again.get("accounts", "r0")
        assert rec is not None and dict(rec.version or {}) == want and rec == got
        with pytest.raises(TypeError):
            rec.version["d0"] = 1  # type: ignore[index]
    finally:
        again.close()


def test_a_row_stored_before_versions_saves_as_a_plain_update(tmp_path: Path) -> None:
    """A record read from a row without a version still saves the user's edits (unchanged fields left
    alone), its changed registers written as after seeing what the record holds."""
    path = tmp_path / "old.db"
    d0 = Replica.open(path, SCHEMA, device="d0", user="alice")
    d0.create("accounts", {"name": "Acme", "stage": "lead"}, id="r0")
    d0.close()
    store = SQLiteStore(path)
    raw = store.load(("row", "accounts", "r0"))
    assert raw is not None
    row = orjson.loads(raw)
    del row["v"]
    b = Batch()
    b.save(("row", "accounts", "r0"), orjson.dumps(row))
    store.commit(b)
    store.close()
    d0 = Replica.open(path, SCHEMA, device="d0", user="alice")
    try:
        form = d0.get("accounts", "r0")
        assert form is not None and form.version is None
        d0.update("accounts", "r0", {**form.fields, "stage": "won"}, base=form)
        rec = d0.get("accounts", "r0")
        assert rec is not None and rec["stage"] == "won" and rec["name"] == "Acme" and rec.version
        assert [(h.field, h.op) for h in d0.history("accounts", "r0")][-1] == ("stage", "set")
    finally:
        d0.close()


@pytest.mark.parametrize("strategy", ["lww-field", "lww-record"])
def test_forms_of_the_lww_strategies_save_the_user_edits(strategy: str, tmp_path: Path) -> None:
    """The LWW strategies surface no conflict, but a form still writes only what the user changed: a
    counter by its difference (under ``lww-record`` an increment set the counter to the increment itself:
    a draft holds the value, not per-writer shares)."""
    schema = Schema(Collection("a", {"name": Str(), "tags": Set(Str()), "n": Counter(), "notes": Text()},
                               strategy=strategy))
    a = Replica.open(tmp_path / "a.db", schema, device="d0", user="alice")
    b = Replica.open(tmp_path / "b.db", schema, device="d1", user="bob")
    try:
        a.create("a", {"name": "x", "tags": {"p"}, "n": 1, "notes": "hi"}, id="r")
        a.increment("a", "r", "n", 2)
        assert a.get("a", "r")["n"] == 3  # type: ignore[index]
        sync(a, b)
        form = a.get("a", "r")
        assert form is not None
        b.update("a", "r", {"name": "y", "tags": {"p", "q"}})
        sync(b, a)
        a.update("a", "r", {**form.fields, "notes": "hi there", "n": 5}, base=form)
        sync(a, b)
        for r in (a, b):
            assert r.get("a", "r").fields == {"name": "y", "tags": {"p", "q"}, "n": 5,  # type: ignore[union-attr]
                                              "notes": "hi there"}
    finally:
        a.close()
        b.close()


def test_the_example_in_docs_records_runs() -> None:
    text = (Path(__file__).parent.parent / "docs" / "records.md").read_text()
    section = text[text.index("## Saving a form (edits based on what the user saw)"):]
    code = section[section.index("```python") + len("```python"):]
    exec(compile(code[:code.index("```")], "docs/records.md", "exec"), {})


def test_a_field_left_as_shown_is_not_checked(tmp_path: Path) -> None:
    """A value stored under older rules (shown as stored) that the user left alone does not stop the save of
    the fields they edited; a plain update with every field of the form is refused."""
    loose = Schema(Collection("accounts", {"name": Str(), "stage": Str()}))
    strict = Schema(Collection("accounts", {"name": Str(max_length=4), "stage": Str()}))
    r = Replica.open(tmp_path / "r.db", loose, device="d0", user="alice")
    r.create("accounts", {"name": "Acme Ltd"}, id="r0")
    r.close()
    r = Replica.open(tmp_path / "r.db", strict, device="d0", user="alice")
    try:
        form = r.get("accounts", "r0")
        assert form is not None and form["name"] == "Acme Ltd"
        with pytest.raises(ValidationError, match="name"):
            r.update("accounts", "r0", {**form.fields, "stage": "won"})
        r.update("accounts", "r0", {**form.fields, "stage": "won"}, base=form)
        assert r.get("accounts", "r0").fields == {"name": "Acme Ltd", "stage": "won"}  # type: ignore[union-attr]
        with pytest.raises(ValidationError, match="name"):  # an edit of it is checked
            r.update("accounts", "r0", {**form.fields, "name": "Acme Limited"}, base=form)
    finally:
        r.close()


def test_fix_with_base_corrects_without_overwriting_what_arrived_since(pair: tuple[Replica, Replica]) -> None:
    """A fix form filled before d1's rename and note arrived: the fix sets what the user corrected, the
    rejected change's other fields as they stand, and leaves d1's rename alone; a field both changed is a
    conflict. Without ``base`` the fix wrote the form's stale name over d1's."""
    d0, d1 = pair
    d0.create("accounts", {"name": "Acme", "stage": "lead"}, id="r0")
    d0.create("accounts", {"name": "Other"}, id="r1")
    d0.acknowledge(p.id for p in d0.pending())
    sync(d0, d1)
    d0.update("accounts", "r0", {"stage": "won!!", "employees": 5})
    d0.reject(d0.pending()[0].id, "invalid", "stage: no '!'")
    shown = d0.get("accounts", "r0")  # the fix form
    assert shown is not None
    d1.update("accounts", "r0", {"name": "Acme Ltd", "employees": 7})
    d0.import_updates(d1.export_updates())  # (the rejected change never left d0)
    stored = d0.store.load_range(())
    with pytest.raises(LocalError):
        d0.fix("accounts", "r0", {"stage": "won"}, base=d0.get("accounts", "r1"))
    assert d0.store.load_range(()) == stored
    d0.fix("accounts", "r0", {**shown.fields, "stage": "won", "employees": 6}, base=shown)
    [p] = d0.pending()
    assert p.fields == {"stage": "won", "employees": 6}
    sync(d0, d1)
    for r in (d0, d1):
        rec = r.get("accounts", "r0")
        assert rec is not None and (rec["name"], rec["stage"], rec["employees"]) == ("Acme Ltd", "won", 6)
        (c,) = rec.conflicts
        assert c.field == "employees" and [x.value for x in c.candidates] == [6, 7]
