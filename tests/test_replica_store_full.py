"""A local write on a full disk raises ``StoreFull`` naming the store's file (it raised a raw
``sqlite3.OperationalError: database or disk is full``), and keeps nothing of the write: the replica reads
as before, and its next write, once there is space, reaches every peer."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crdtsync import Collection, Counter, CrdtSyncError, Int, Replica, Schema, StoreError, StoreFull, Str, Text
from crdtsync.store import Batch

SCHEMA = Schema(Collection("accounts", {"name": Str(), "n": Int(), "notes": Text(), "visits": Counter()}))

WRITES: dict[str, Callable[[Replica, str], Any]] = {
    "create": lambda r, rid: r.create("accounts", {"name": "Bolt", "notes": "new"}),
    "update": lambda r, rid: r.update("accounts", rid, {"name": "Half", "notes": "never stored"}),
    "increment": lambda r, rid: r.increment("accounts", rid, "visits", 3),
    "delete": lambda r, rid: r.delete("accounts", rid),
}


def _seen(r: Replica) -> tuple[Any, ...]:
    """Everything a user and a sync see of the replica."""
    return (r.store.load_range(()), [(p.id, p.status) for p in r.pending()],
            [(x.id, x.fields, x.deleted) for x in r.query("accounts", include_deleted=True)])


@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_write_on_a_full_disk_raises_store_full_and_keeps_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str) -> None:
    path = tmp_path / "phone.db"
    r = Replica.open(path, SCHEMA, device="a", user="u")
    rid = r.create("accounts", {"name": "Acme", "notes": "hello"})
    r.increment("accounts", rid, "visits", 1)
    before = _seen(r)

    def full(batch: Batch) -> None:  # what SQLite raises when the disk is full (cannot be made without root)
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as m:
        m.setattr(r.store, "commit", full)
        with pytest.raises(StoreFull) as err:
            WRITES[write](r, rid)
    assert isinstance(err.value, StoreError) and isinstance(err.value, CrdtSyncError)
    assert err.value.path == str(path) and str(path) in str(err.value) and "disk is full" in str(err.value)
    assert isinstance(err.value.__cause__, sqlite3.OperationalError)
    assert _seen(r) == before

    WRITES[write](r, rid)  # space again: the same write goes through, and every peer can integrate it
    peer = Replica.open(":memory:", SCHEMA, device="b", user="u")
    peer.import_updates(r.export_updates())
    assert [(x.id, x.fields, x.deleted) for x in peer.query("accounts", include_deleted=True)] == \
        [(x.id, x.fields, x.deleted) for x in r.query("accounts", include_deleted=True)]
    r.close()
    again = Replica.open(path, SCHEMA, device="a", user="u")
    assert [(x.id, x.fields, x.deleted) for x in again.query("accounts", include_deleted=True)] == \
        [(x.id, x.fields, x.deleted) for x in peer.query("accounts", include_deleted=True)]
    again.close()


def test_a_real_sqlite_full_error_becomes_store_full(tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL, from a database capped at its current size (``max_page_count``): the same
    error a full disk gives, through the real store."""
    path = tmp_path / "phone.db"
    r = Replica.open(path, SCHEMA, device="a", user="u")
    rid = r.create("accounts", {"name": "Acme"})
    db = r.store._db  # type: ignore[attr-defined]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreFull, match="disk is full") as err:
        for i in range(1000):
            before = _seen(r)
            r.update("accounts", rid, {"notes": f"note {i} " + "x" * 2000})
    assert isinstance(err.value.__cause__, sqlite3.OperationalError) and err.value.path == str(path)
    assert _seen(r) == before
    db.execute("PRAGMA max_page_count = 1073741823")  # space again
    r.update("accounts", rid, {"name": "after"})
    rec = r.get("accounts", rid)
    assert rec is not None and rec.fields["name"] == "after" and rec.fields["notes"] == before[2][0][1]["notes"]
    r.close()
