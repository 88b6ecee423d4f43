"""An app update adds fields to a collection: records stored before it show them too, never written.

Rows are written with the fields of the schema of the moment; a record stored before the update used to
come back without the new keys (``rec["sla"]`` raised ``KeyError``) while a record created after it had
``sla=None``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtsync import Collection, Counter, Int, Replica, Schema, Set, Str, Text
from crdtsync.schema import Strategy

V1 = Schema(Collection("work_orders", {"title": Str(required=True)}))
V2 = Schema(Collection("work_orders", {"title": Str(required=True), "sla": Int(), "hours": Counter(),
                                       "notes": Text(), "tags": Set(Str())}))
NEVER_WRITTEN: dict[str, object] = {"sla": None, "hours": 0, "notes": "", "tags": frozenset()}


@pytest.mark.parametrize("strategy", ["crdt", "lww-field", "lww-record", "lww-patch"])
def test_fields_added_to_the_schema_show_on_records_stored_before(tmp_path: Path, strategy: Strategy) -> None:
    path = tmp_path / "phone.db"
    with Replica.open(path, V1.with_strategy(strategy), device="phone", user="alice") as r:
        old = r.create("work_orders", {"title": "old"})
        r.acknowledge(p.id for p in r.pending())  # synced: its row is all a read looks at
    v2 = V2.with_strategy(strategy)
    with Replica.open(path, v2, device="phone", user="alice") as r:
        new = r.create("work_orders", {"title": "new"})
        rec = r.get("work_orders", old)
        assert rec is not None and rec.fields == {"title": "old", **NEVER_WRITTEN}
        assert rec["sla"] is None and list(rec.fields) == list(v2["work_orders"].fields)  # schema order
        fresh = r.get("work_orders", new)
        assert fresh is not None and fresh.fields == {"title": "new", **NEVER_WRITTEN}
        assert [x.fields for x in r.query("work_orders", order_by="title")] == [fresh.fields, rec.fields]
        assert [x.id for x in r.query("work_orders", where={"hours": 0, "tags": frozenset()})] == sorted([old, new])
        assert [x.id for x in r.query("work_orders", order_by="sla", limit=1)] in ([old], [new])
        r.increment("work_orders", old, "hours", 2)  # and the new fields are writable as any other
        after = r.get("work_orders", old)
        assert after is not None and after.fields == {"title": "old", **NEVER_WRITTEN, "hours": 2}


@pytest.mark.parametrize("strategy", ["crdt", "lww-field", "lww-record"])
def test_a_rollback_and_re_upgrade_shows_what_the_newer_schema_wrote(tmp_path: Path, strategy: Strategy) -> None:
    """Written under V2, updated under V1 (the app rolled back: its rows could not show ``sla``), read under
    V2 again: the value is back, in ``get`` and ``query``, as in a fresh replica merged from an export."""
    path = tmp_path / "phone.db"
    v1, v2 = V1.with_strategy(strategy), V2.with_strategy(strategy)
    with Replica.open(path, v2, device="phone", user="alice") as r:
        rid = r.create("work_orders", {"title": "t", "sla": 4, "tags": {"gas"}})
        r.acknowledge(p.id for p in r.pending())  # synced: its row is all a read looks at
    with Replica.open(path, v1, device="phone", user="alice") as r:
        rec = r.get("work_orders", rid)
        assert rec is not None and rec.fields == {"title": "t"} and set(rec.changed_by) == {"title"}
        assert [x.fields for x in r.query("work_orders")] == [{"title": "t"}]
        r.update("work_orders", rid, {"title": "t2"})  # its row is written under V1
        r.acknowledge(p.id for p in r.pending())
    with Replica.open(path, v2, device="phone", user="alice") as r:
        rec = r.get("work_orders", rid)
        assert rec is not None and rec.fields == {**NEVER_WRITTEN, "title": "t2", "sla": 4, "tags": frozenset({"gas"})}
        assert [x.id for x in r.query("work_orders", where={"sla": 4})] == [rid]
        fresh = Replica.open(":memory:", v2, device="tablet", user="alice")
        fresh.import_updates(r.export_updates())
        assert fresh.get("work_orders", rid) == rec
        fresh.close()


def test_a_field_whose_kind_changed_shows_as_its_new_kind_reads_it(tmp_path: Path) -> None:
    """Only field names were compared at open: a field made a Text under the same name kept showing the
    Str value in get and query until some write rewrote the row, then showed ''."""
    as_str = Schema(Collection("accounts", {"name": Str(), "n": Int(), "code": Str()}))
    as_text = Schema(Collection("accounts", {"name": Text(), "n": Int(), "code": Int()}))
    path = tmp_path / "r.db"
    with Replica.open(path, as_str, device="d", user="u") as r:
        rid = r.create("accounts", {"name": "Acme", "n": 1, "code": "ten"})
        r.create("accounts", {"name": "Beta", "n": 2})
    with Replica.open(path, as_text, device="d", user="u") as r:
        shown = r.get("accounts", rid)
        assert shown is not None and shown.fields["name"] == r.docs.get("accounts", rid).doc.state().fields["name"]
        assert shown.fields["name"] != "Acme" and r.query("accounts", where={"name": "Acme"}) == []
        r.update("accounts", rid, {"n": 6})
        assert r.get("accounts", rid).fields["name"] == shown.fields["name"]  # type: ignore[union-attr]
        r.create("accounts", {"name": "Gamma", "code": 7})
        # the value the old kind wrote stays as it was stored (the new kind cannot read it): order_by sorts
        # such mixed values by type instead of raising TypeError
        assert len(r.query("accounts", order_by="code")) == 3
