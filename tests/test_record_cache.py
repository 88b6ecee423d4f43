"""The record cache is bounded by weight as well as by count: a few records with long notes must not keep
hundreds of MB in memory. The relay's writer pins records with staged, uncommitted changes."""

from __future__ import annotations

import gc
import tracemalloc

from crdtsync import Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.model.record import RecordDoc
from crdtsync.protocol.events import Change
from crdtsync.relay.auth import Tokens
from crdtsync.relay.log import RelayLog
from crdtsync.replica.exchange import _LOAD_CHUNK
from crdtsync.replica.rows import encode_row
from crdtsync.store import MemoryStore
from crdtsync.store.base import Batch

NOTE = "Site survey: " + "the north wall needs a new bracket; " * 600  # about 21 KB


def test_the_cache_holds_no_more_encoded_bytes_than_its_bound() -> None:
    r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u", cache_bytes=100_000)
    ids = [r.create("accounts", {"name": f"A{i}", "notes": NOTE}) for i in range(30)]
    docs = r.docs
    assert 0 < docs.cached_bytes <= 100_000
    assert len(docs._cache) < 10  # about four of these records weigh the bound
    assert docs.cached_bytes == sum(lr.doc.stored_size() for lr in docs._cache.values())
    for rid in ids:  # evicted ones load again, whole
        assert r.get("accounts", rid).fields["notes"] == NOTE
    unbounded = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u", cache_bytes=None)
    for i in range(30):
        unbounded.create("accounts", {"name": f"A{i}", "notes": NOTE})
    assert len(unbounded.docs._cache) == 30


def test_the_record_in_use_stays_cached_however_much_it_weighs() -> None:
    r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u", cache_bytes=10)
    rid = r.create("accounts", {"name": "A", "notes": NOTE})
    r.create("accounts", {"name": "B", "notes": NOTE})
    lr = r.docs.get("accounts", rid)
    assert r.docs.cached("accounts", rid) is lr
    r.update("accounts", rid, {"notes": NOTE + " Done."})
    assert r.get("accounts", rid).fields["notes"] == NOTE + " Done."


def test_the_relay_keeps_records_with_staged_changes_until_their_commit() -> None:
    """Two write groups in flight (one staged while the other commits) over a cache that holds almost
    nothing: a record evicted with a staged change would be reloaded from the store without it, and its
    next change, which builds on it, held back."""
    w = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u")
    big = w.create("accounts", {"name": "Big", "notes": NOTE})
    others = [w.create("accounts", {"name": f"O{i}"}) for i in range(20)]
    w.update("accounts", big, {"employees": 5})
    changes = [Change(p.id, p.collection, p.record, u) for p, u in w.outgoing()]
    first, second = (c for c in changes if c.record == big)
    rest = [c for c in changes if c.record != big]
    assert [c.record for c in rest] == others

    store = MemoryStore()
    lg = RelayLog(store, DEMO_SCHEMA, cache_size=2, cache_bytes=1000)
    grant = Tokens(None).grant(None)
    assert grant is not None
    group1, group2 = Batch(), Batch()
    out1 = lg.stage(group1, "d", grant, [first, *rest[:10]])  # group 1: not committed yet
    out2 = lg.stage(group2, "d", grant, [*rest[10:], second])  # group 2, staged meanwhile
    assert out1.held == [] and out2.held == [] and out1.rejected == [] and out2.rejected == []
    assert len(out1.accepted) == 11 and len(out2.accepted) == 11
    store.commit(group1)
    lg.committed(out1.accepted)
    store.commit(group2)
    lg.committed(out2.accepted)
    assert lg.docs._pins == {}
    assert len(lg.docs._cache) <= 2
    fresh = RelayLog(store, DEMO_SCHEMA)
    state = fresh.docs.get("accounts", big).doc.state()
    assert state.fields["employees"] == 5 and state.fields["notes"] == NOTE


def test_a_look_at_many_records_leaves_the_cache_as_it_was() -> None:
    """``peek_many`` (a relay's full resync under a ``where`` limit looks at every record of a collection)
    loads what is not cached without caching it, and gives the cached records as they are."""
    r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u", cache_size=3)
    ids = [r.create("accounts", {"name": f"A{i}", "employees": i}) for i in range(8)]
    r.update("accounts", ids[7], {"employees": 70})  # the last ones written are the cached ones
    before = list(r.docs._cache.items())
    assert len(before) == 3 and ("accounts", ids[0]) not in r.docs._cache
    keys = [("accounts", rid) for rid in reversed(ids)]
    seen = list(r.docs.peek_many(keys))
    assert [lr.doc.state().fields["employees"] for lr in seen] == [70, 6, 5, 4, 3, 2, 1, 0]
    assert list(r.docs._cache.items()) == before  # nothing added, nothing evicted, the order unchanged
    assert seen[0] is before[-1][1]  # a cached record is the cached object
    assert list(r.docs.peek_many([])) == []


class _LiveDocsAtCommit(MemoryStore):
    """A memory store that counts the record documents alive when a batch is committed."""

    def __init__(self) -> None:
        super().__init__()
        self.live: list[int] = []

    def commit(self, batch: Batch) -> None:
        gc.collect()
        self.live.append(sum(1 for o in gc.get_objects() if isinstance(o, RecordDoc)))
        super().commit(batch)


def test_a_large_import_keeps_no_more_documents_than_the_cache_and_one_chunk() -> None:
    """An import stages its records a chunk at a time: holding every merged document until the commit made
    an import of 20,000 records peak 314 MB above the replica's usual size."""
    src = Replica(MemoryStore(), DEMO_SCHEMA, device="a", user="u")
    for i in range(1200):
        src.create("accounts", {"name": f"A{i}", "employees": i})
    blob = src.export_updates()
    del src
    store = _LiveDocsAtCommit()
    r = Replica(store, DEMO_SCHEMA, device="b", user="u", cache_size=20)
    changed = r.import_updates(blob)
    assert len(changed) == 1200
    assert store.live and max(store.live) <= 20 + _LOAD_CHUNK + 2, store.live
    assert r.get("accounts", changed[0].id).fields["employees"] == changed[0].fields["employees"]
    assert len(r.query("accounts")) == 1200


def test_stored_rows_are_kept_at_their_size() -> None:
    """orjson (3.12 on) hands back its output buffer unshrunk: 4 KiB for any short JSON. A row staged until
    its commit must weigh what it holds."""
    coll = DEMO_SCHEMA.collections["accounts"]
    r = Replica(MemoryStore(), DEMO_SCHEMA, device="a", user="u")
    rid = r.create("accounts", {"name": "Acme"})
    state = r.docs.get("accounts", rid).doc.state()
    tracemalloc.start()
    try:
        rows = [encode_row(coll, state, "synced", None) for _ in range(200)]
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used < 200 * (len(rows[0]) + 200), used
