"""A local write that raises part way, inside the record's document (Yjs has no rollback), leaves the
record exactly as stored: nothing of it is stored or shown, and the next write still reaches every peer."""

from __future__ import annotations

from pathlib import Path

import pytest

import crdtsync.model.record as record_module
from crdtsync import Collection, Int, Replica, Schema, Str, Text

SCHEMA = Schema(Collection("accounts", {"name": Str(), "n": Int(), "notes": Text()}))


@pytest.mark.parametrize("where", ["file", "memory"])
def test_a_write_that_raises_part_way_stores_and_shows_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               where: str) -> None:
    path = tmp_path / "a.db" if where == "file" else ":memory:"
    r = Replica.open(path, SCHEMA, device="a", user="u")
    rid = r.create("accounts", {"name": "Acme"})
    stored, pending = r.store.load_range(()), r.pending()

    def boom(old: str, new: str) -> list[tuple[int, int, str]]:
        raise RuntimeError("boom")

    with monkeypatch.context() as m:  # the name's slot is written, then the text's diff raises
        m.setattr(record_module, "text_edits", boom)
        with pytest.raises(RuntimeError, match="boom"):
            r.update("accounts", rid, {"name": "Half", "notes": "never"})
    assert r.store.load_range(()) == stored and r.pending() == pending
    rec = r.get("accounts", rid)
    assert rec is not None and rec.fields["name"] == "Acme" and rec.fields["notes"] == ""
    assert [e.value for e in r.history("accounts", rid)] == ["Acme"]

    r.update("accounts", rid, {"n": 42})  # builds on the record as stored: every peer can integrate it
    fresh = Replica.open(":memory:", SCHEMA, device="b", user="u")
    fresh.import_updates(r.export_updates())
    got = fresh.get("accounts", rid)
    assert got is not None and (got.fields["name"], got.fields["n"]) == ("Acme", 42)
    if where == "file":
        r.close()
        r = Replica.open(path, SCHEMA, device="a", user="u")
        again = r.get("accounts", rid)
        assert again is not None and (again.fields["name"], again.fields["n"]) == ("Acme", 42)
    r.close()
