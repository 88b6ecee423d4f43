"""A store written in layout 1 (each pending change stored twice: outbox entry and pending update) opens,
is upgraded once, and keeps every change; a write in layout 2 commits the outbox entry and no update."""

from __future__ import annotations

from pathlib import Path

import orjson

from crdtsync import Replica
from crdtsync.codec import Reader, write_bytes
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.replica.layout import LAYOUT, LAYOUT_KEY
from crdtsync.store.base import Batch
from crdtsync.store.sqlite import SQLiteStore


def _to_layout_1(path: Path) -> None:
    """Rewrite a layout-2 store as layout 1 wrote it: pending updates also under ``upd`` (``\\x01`` + change
    id), outbox headers without ``n``, no layout marker."""
    store = SQLiteStore(path)
    batch = Batch()
    for key, raw in store.load_range(("out",)):
        r = Reader(raw)
        header = orjson.loads(r.bytes())
        update = r.bytes()
        n = header.pop("n")
        out = bytearray()
        write_bytes(out, orjson.dumps(header))
        write_bytes(out, update)
        batch.save(key, bytes(out))
        cid = int(key[1])
        batch.save(("upd", header["c"], header["r"], n), b"\x01" + cid.to_bytes(8, "big", signed=True) + update)
    batch.remove(LAYOUT_KEY)
    store.commit(batch)
    store.close()


def _open(path: Path) -> Replica:
    return Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")


def test_a_layout_1_store_is_upgraded_and_keeps_its_pending_changes(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with _open(path) as r:
        a = r.create("accounts", {"name": "Acme"}, id="a")
        r.update("accounts", a, {"employees": 3})
        r.acknowledge(p.id for p in r.pending())  # a confirmed update before the pending ones
        r.update("accounts", a, {"employees": 4, "tags": {"vip"}})
        r.create("accounts", {"name": "Beta"}, id="b")
        before = [(p.id, p.collection, p.record, p.op) for p in r.pending()]
        expected = {rid: r.get("accounts", rid) for rid in ("a", "b")}
    _to_layout_1(path)
    raw = SQLiteStore(path)
    assert any(v[:1] == b"\x01" for _, v in raw.load_range(("upd",)))  # really layout 1
    raw.close()

    with _open(path) as r:
        assert r.store.load(LAYOUT_KEY) == LAYOUT
        assert not any(v[:1] == b"\x01" for _, v in r.store.load_range(("upd",)))
        assert [(p.id, p.collection, p.record, p.op) for p in r.pending()] == before
        for rid, rec in expected.items():
            got = r.get("accounts", rid)
            assert got is not None and rec is not None
            assert (got.fields, got.status) == (rec.fields, rec.status)
        other = Replica.open(":memory:", DEMO_SCHEMA, device="laptop", user="bob")
        other.import_updates(r.export_updates())
        b = other.get("accounts", "a")
        assert b is not None and b.fields["employees"] == 4 and b.fields["tags"] == frozenset({"vip"})
        r.acknowledge(p.id for p in r.pending())
        r.update("accounts", "b", {"employees": 7})

    with _open(path) as r:  # once more: upgraded once, nothing lost
        rec = r.get("accounts", "a")
        assert rec is not None and rec.fields["employees"] == 4 and rec.status == "synced"
        rec = r.get("accounts", "b")
        assert rec is not None and rec.fields["employees"] == 7 and rec.status == "pending"
        assert [p.record for p in r.pending()] == ["b"]


def test_a_local_write_stores_its_update_once(tmp_path: Path) -> None:
    with _open(tmp_path / "r.db") as r:
        rid = r.create("accounts", {"name": "Acme"})
        r.update("accounts", rid, {"employees": 5})
        assert r.store.load_range(("upd", "accounts", rid)) == []  # only in the outbox while pending
        assert len(r.store.load_range(("out",))) == 2
        r.acknowledge(p.id for p in r.pending())
        assert len(r.store.load_range(("upd", "accounts", rid))) == 2
        assert r.store.load_range(("out",)) == []
        r.docs.forget()  # loaded again from the acknowledged updates
        assert r.docs.get("accounts", rid).doc.state().fields["employees"] == 5


def _stored_row(r: Replica, rid: str) -> dict[str, object] | None:
    raw = r.store.load(("row", "accounts", rid))
    return None if raw is None else dict(orjson.loads(raw))


def test_reads_see_local_writes_whose_rows_wait(tmp_path: Path) -> None:
    with _open(tmp_path / "r.db") as r:
        r.create("accounts", {"name": "Mid"}, id="m")
        r.acknowledge(p.id for p in r.pending())
        r.create("accounts", {"name": "Zed"}, id="z")
        r.create("accounts", {"name": "Acme"}, id="a")
        r.update("accounts", "m", {"employees": 9})
        assert _stored_row(r, "a") is None  # the row waits ...
        stored_m = _stored_row(r, "m")
        assert stored_m is not None and stored_m["f"]["employees"] is None  # type: ignore[index]
        rec = r.get("accounts", "m")  # ... and reads do not
        assert rec is not None and rec.fields["employees"] == 9 and rec.status == "pending"
        assert [x.id for x in r.query("accounts")] == ["a", "m", "z"]  # in id order, as rows come
        assert [x.id for x in r.query("accounts", where={"employees": 9})] == ["m"]
        events = []
        r.subscribe(events.append)
        r.mark_syncing(p.id for p in r.pending())  # a status change of a waiting row is still told
        assert sorted(e.id for e in events) == ["a", "m", "z"] and all(e.origin == "status" for e in events)
        r.delete("accounts", "z")
        assert [x.id for x in r.query("accounts")] == ["a", "m"]
        assert [x.id for x in r.query("accounts", include_deleted=True)] == ["a", "m", "z"]


def test_rows_are_written_in_groups_and_on_close(tmp_path: Path) -> None:
    from crdtsync.replica.base import _DIRTY_MAX

    path = tmp_path / "r.db"
    with _open(path) as r:
        for i in range(_DIRTY_MAX):
            r.create("accounts", {"name": f"n{i}"}, id=f"a{i:03}")
        assert all(_stored_row(r, f"a{i:03}") is None for i in range(_DIRTY_MAX))
        r.create("accounts", {"name": "last"}, id="b")  # one too many: every waiting row is written
        assert all(_stored_row(r, f"a{i:03}") is not None for i in range(_DIRTY_MAX))
        r.update("accounts", "b", {"employees": 1})
    store = SQLiteStore(path)
    row = store.load(("row", "accounts", "b"))
    store.close()
    assert row is not None and orjson.loads(row)["f"]["employees"] == 1  # written on close


def test_rows_behind_after_a_crash_are_rewritten_on_open(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    r = _open(path)
    r.create("accounts", {"name": "Acme"}, id="a")
    r.acknowledge(p.id for p in r.pending())
    r.update("accounts", "a", {"employees": 5})
    r.create("accounts", {"name": "New"}, id="n")
    r.store.close()  # as a crash would: no Replica.close, the rows never written
    with _open(path) as again:
        for rid, employees in (("a", 5), ("n", None)):
            stored = _stored_row(again, rid)
            assert stored is not None and stored["f"].get("employees") == employees  # type: ignore[attr-defined]
            assert stored["x"] == again.outbox.last_for("accounts", rid) != 0
        assert not again._dirty

