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
