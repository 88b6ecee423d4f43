"""A store reopened with its collection under another strategy (docs/strategies.md, "Switching strategies").

``crdt`` and ``lww-field`` write per-field slots, ``lww-record`` and ``lww-patch`` drafts; neither reads the
other. A store opened under the other layout's strategy used to show its records but fail their writes
(``RecordNotFound``, a raw ``KeyError: 't'``), while a delete wrote a draft into a crdt record, which then
read deleted with every field None under either strategy and was refused by every other replica.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from crdtsync import (
    Collection,
    Int,
    RemoteValidationError,
    Replica,
    Schema,
    SQLiteStore,
    Str,
    StrategyMismatch,
)
from crdtsync.model.layouts import first_layout
from crdtsync.schema import Strategy
from crdtsync.store.base import Batch
from crdtsync.store.keys import Key

BASE = Schema(Collection("accounts", {"name": Str(), "amount": Int()}))


def schema(strategy: Strategy) -> Schema:
    return BASE.with_strategy(strategy)


def dump(path: Path) -> dict[Key, bytes]:
    store = SQLiteStore(path)
    try:
        return dict(store.iter_range(()))
    finally:
        store.close()


def set_strategy(path: Path, strategy: str | None) -> None:
    """Overwrite the strategy the store keeps for accounts (None: none, as a store written before it was kept)."""
    store = SQLiteStore(path)
    try:
        batch = Batch()
        if strategy is None:
            batch.remove(("meta", "strategy", "accounts"))
        else:
            batch.save(("meta", "strategy", "accounts"), strategy.encode())
        store.commit(batch)
    finally:
        store.close()


def made_under(path: Path, strategy: Strategy, *, synced: bool = True) -> None:
    with Replica.open(path, schema(strategy), device="P", user="u") as r:
        r.create("accounts", {"name": "A", "amount": 3}, id="x")
        if synced:
            r.acknowledge(p.id for p in r.pending())


@pytest.mark.parametrize(("held", "asked"), [("crdt", "lww-record"), ("crdt", "lww-patch"),
                                             ("lww-field", "lww-record"), ("lww-record", "crdt"),
                                             ("lww-patch", "lww-field")])
def test_a_strategy_of_another_layout_is_refused_at_open_and_nothing_changes(
        tmp_path: Path, held: Strategy, asked: Strategy) -> None:
    path = tmp_path / "phone.db"
    made_under(path, held)
    before = dump(path)
    with pytest.raises(StrategyMismatch) as e:
        Replica.open(path, schema(asked), device="P", user="u")
    assert (e.value.collection, e.value.record, e.value.held, e.value.asked) == ("accounts", None, held, asked)
    assert "Nothing was changed" in str(e.value) and "start a new store" in str(e.value)
    assert dump(path) == before
    with Replica.open(path, schema(held), device="P", user="u") as r:  # still whole under its own strategy
        r.update("accounts", "x", {"name": "B"})
        rec = r.get("accounts", "x")
        assert rec is not None and dict(rec.fields) == {"name": "B", "amount": 3} and not rec.deleted


@pytest.mark.parametrize(("first", "then", "other"), [("crdt", "lww-field", "lww-patch"),
                                                       ("lww-record", "lww-patch", "crdt")])
def test_a_switch_within_a_layout_works_and_is_what_the_store_then_holds(
        tmp_path: Path, first: Strategy, then: Strategy, other: Strategy) -> None:
    path = tmp_path / "phone.db"
    made_under(path, first)
    with Replica.open(path, schema(then), device="P", user="u") as r:
        r.update("accounts", "x", {"amount": 4})
    with pytest.raises(StrategyMismatch) as e:  # the store now holds ``then``, and says so
        Replica.open(path, schema(other), device="P", user="u")
    assert (e.value.held, e.value.asked) == (then, other)
    with Replica.open(path, schema(first), device="P", user="u") as r:  # and back
        r.update("accounts", "x", {"name": "C"})
        rec = r.get("accounts", "x")
        assert rec is not None and dict(rec.fields) == {"name": "C", "amount": 4}


@pytest.mark.parametrize("synced", [True, False], ids=["stored", "pending-only"])
@pytest.mark.parametrize(("held", "asked", "same"), [("crdt", "lww-record", "lww-field"),
                                                     ("lww-patch", "crdt", "lww-record")])
def test_a_store_that_kept_no_strategy_is_judged_by_its_records(
        tmp_path: Path, held: Strategy, asked: Strategy, same: Strategy, synced: bool) -> None:
    path = tmp_path / "phone.db"
    made_under(path, held, synced=synced)
    set_strategy(path, None)
    with pytest.raises(StrategyMismatch) as e:
        Replica.open(path, schema(asked), device="P", user="u")
    assert e.value.held == " or ".join(sorted([held, same], key=["crdt", "lww-field", "lww-record",
                                                                  "lww-patch"].index))
    with Replica.open(path, schema(same), device="P", user="u") as r:  # one of its layout: recorded
        r.update("accounts", "x", {"amount": 5})
    with pytest.raises(StrategyMismatch) as e:
        Replica.open(path, schema(asked), device="P", user="u")
    assert e.value.held == same


def test_a_collection_with_no_record_in_an_old_store_takes_the_schemas_strategy(tmp_path: Path) -> None:
    path = tmp_path / "phone.db"
    Replica.open(path, BASE, device="P", user="u").close()
    set_strategy(path, None)
    with Replica.open(path, schema("lww-record"), device="P", user="u") as r:
        r.create("accounts", {"name": "A"}, id="x")
    with pytest.raises(StrategyMismatch) as e:
        Replica.open(path, BASE, device="P", user="u")
    assert e.value.held == "lww-record"


def mixed(path: Path, written: Strategy, opened: Strategy) -> Replica:
    """A store whose record x was written under ``written`` and that is opened under ``opened``, as an
    earlier crdtsync allowed (here: the strategy it keeps overwritten)."""
    made_under(path, written)
    set_strategy(path, opened)
    return Replica.open(path, schema(opened), device="P", user="u")


@pytest.mark.parametrize(("written", "opened"), [("crdt", "lww-record"), ("lww-record", "crdt"),
                                                 ("lww-patch", "lww-field")])
def test_a_write_on_a_record_of_the_other_layout_raises_a_clear_error_and_writes_nothing(
        tmp_path: Path, written: Strategy, opened: Strategy) -> None:
    with mixed(tmp_path / "phone.db", written, opened) as r:
        for write in (lambda: r.update("accounts", "x", {"name": "B"}), lambda: r.delete("accounts", "x")):
            with pytest.raises(StrategyMismatch) as e:
                write()
            assert (e.value.collection, e.value.record, e.value.asked) == ("accounts", "x", opened)
            assert "written under another strategy (document layout)" in str(e.value)
            assert r.pending() == []


@pytest.mark.parametrize(("src", "dst"), [("crdt", "lww-record"), ("lww-record", "crdt"),
                                          ("lww-field", "lww-patch"), ("lww-patch", "lww-field")])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_remote_update_of_the_other_layout_is_refused_saying_so_and_nothing_is_stored(
        src: Strategy, dst: Strategy, existing: bool) -> None:
    a = Replica.open(":memory:", schema(src), device="A", user="u")
    b = Replica.open(":memory:", schema(dst), device="B", user="u")
    a.create("accounts", {"name": "A", "amount": 3}, id="x")
    if existing:
        b.create("accounts", {"name": "B"}, id="x")
    before = b.export_updates()
    with pytest.raises(RemoteValidationError) as e:
        b.import_updates(a.export_updates())
    assert "written under another strategy (document layout)" in str(e.value)
    assert repr(src) in str(e.value) and repr(dst) in str(e.value)
    assert b.export_updates() == before
    rec = b.get("accounts", "x")
    assert (rec is None) if not existing else (rec is not None and rec["name"] == "B")


def test_a_record_both_layouts_wrote_is_judged_by_its_earliest_write() -> None:
    """An earlier crdtsync let a store switch layouts, so a record may hold both: the store's layout is the
    one that created it (its earliest entry), the same whatever order Yrs lists the keys in."""
    slot = orjson.dumps({"v": "A", "t": 100, "d": "P", "u": "u", "c": {}}).decode()
    draft = orjson.dumps({"f": {}, "d": True, "k": ["@deleted"], "o": "delete", "b": 0, "dv": "P",
                          "u": "u"}).decode()
    later, earlier = f"@draft\x1fP\x1f{200:x}", f"@draft\x1fP\x1f{50:x}"
    assert first_layout({later: draft, "name\x1fP": slot}) == "slots"
    assert first_layout({"name\x1fP": slot, later: draft}) == "slots"
    assert first_layout({"name\x1fP": slot, earlier: draft}) == "drafts"
    assert first_layout({"@image": "{}", earlier: draft}) == "drafts"
    assert first_layout({}) is None


def test_a_kept_strategy_this_crdtsync_does_not_know_is_judged_by_the_records(tmp_path: Path) -> None:
    path = tmp_path / "phone.db"
    made_under(path, "crdt")
    set_strategy(path, "lww-bogus")  # (a newer crdtsync's strategy, or a damaged key)
    with pytest.raises(StrategyMismatch) as e:
        Replica.open(path, schema("lww-record"), device="P", user="u")
    assert e.value.held == "crdt or lww-field"
