"""A change the relay stored is never stored twice, whatever order its device's ids come in and across a
restart; the shortcut that skips looking up a device's new ids (above the highest it stored) changes
nothing of that."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtsync import Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.protocol.events import Change
from crdtsync.relay.auth import Tokens
from crdtsync.relay.log import RelayLog
from crdtsync.store import MemoryStore, SQLiteStore
from crdtsync.store.base import Batch


def stage(lg: RelayLog, changes: list[Change]) -> tuple[list[int], list[int]]:
    """Stage and commit ``changes`` of device ``d``; (ids acknowledged, ids newly stored)."""
    grant = Tokens(None).grant(None)
    assert grant is not None
    batch = Batch()
    lg.prefetch_seen([("d", c.change_id) for c in changes])
    out = lg.stage(batch, "d", grant, changes)
    lg.store.commit(batch)
    lg.committed(out.accepted)
    return out.ok, [a.change_id for a in out.accepted]


def test_stored_ids_are_recognised_below_and_above_the_highest(tmp_path: Path) -> None:
    r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u")
    rids = [r.create("accounts", {"name": f"A{i}"}) for i in range(5)]
    updates = {rid: u for (p, u), rid in zip(r.outgoing(), rids, strict=True)}
    ch = {i: Change(i, "accounts", rid, updates[rid]) for i, rid in zip((10, 30, 20, 40, 5), rids, strict=True)}
    path = tmp_path / "relay.db"

    store = SQLiteStore(path)
    lg = RelayLog(store, DEMO_SCHEMA)
    assert stage(lg, [ch[10], ch[30]]) == ([10, 30], [10, 30])
    assert stage(lg, [ch[30]]) == ([30], [])  # a resend: acknowledged, not stored again
    head = lg.head
    store.close()

    store = SQLiteStore(path)  # a restart: what is stored is all the relay knows
    lg = RelayLog(store, DEMO_SCHEMA)
    assert lg.head == head
    assert stage(lg, [ch[10], ch[30]]) == ([10, 30], [])
    assert stage(lg, [ch[20]]) == ([20], [20])  # below the highest stored id, yet new: stored
    assert stage(lg, [ch[40], ch[20], ch[5]]) == ([40, 20, 5], [40, 5])
    assert stage(lg, [ch[5], ch[40]]) == ([5, 40], [])
    assert lg.head == head + 3

    looked_up: list[object] = []
    real = store.load_many

    def load_many(keys: list[tuple[str | int, ...]]) -> list[bytes | None]:
        looked_up.extend(keys)
        return real(keys)

    store.load_many = load_many  # type: ignore[method-assign]
    r.update("accounts", rids[0], {"name": "A0 v2"})
    (_, u), = [x for x in r.outgoing() if x[0].record == rids[0] and x[1] != updates[rids[0]]]
    assert stage(lg, [Change(41, "accounts", rids[0], u), ch[20]]) == ([41, 20], [41])
    assert [k for k in looked_up if k[0] == "dedup"] == [("dedup", "d", 20)]  # 41: above every stored id
    assert len(store.load_range(("log",))) == 6
    store.close()


def test_a_page_after_entries_compacted_away_under_it_says_so(tmp_path: Path) -> None:
    """A pull pages through the log; compaction drops entries it has not sent yet. The next page used to
    start at the oldest entry left, skipping the rest for good (a device that read slowly missed records);
    it raises ``LogGap`` now, and the relay sends a full resync instead."""
    from crdtsync.relay.log import LogGap

    r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u")
    for i in range(40):
        r.create("accounts", {"name": f"A{i}"})
    changes = [Change(p.id, p.collection, p.record, u) for p, u in r.outgoing()]
    lg = RelayLog(SQLiteStore(tmp_path / "relay.db"), DEMO_SCHEMA, keep=10)
    assert stage(lg, changes)[1] == [c.change_id for c in changes]
    grant = Tokens(None).grant(None)
    assert grant is not None
    items, to = lg.delta(grant, "other", 0, None, max_items=5)
    assert (len(items), to) == (5, 5)
    batch = lg.compact()
    assert batch is not None
    lg.store.commit(batch)
    lg.compacted(batch)
    assert lg.floor > to
    with pytest.raises(LogGap):
        lg.delta(grant, "other", to, None, max_items=5)
    items, to = lg.delta(grant, "other", lg.floor, None, max_items=50)  # from the floor on: no gap
    assert to == lg.head and len(items) == lg.head - lg.floor


def test_a_change_sent_again_after_its_dedup_key_was_compacted_is_acknowledged() -> None:
    """Compaction drops dedup keys with the log entries. A change sent again after that (its ack was lost)
    changes nothing in the record: Yrs then reports no transaction, and the change was taken for one that
    builds on missing changes, held for good, with every later change of its record behind it."""
    r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u")
    r.create("accounts", {"name": "A"})
    [(p, u)] = r.outgoing()
    ch = Change(p.id, p.collection, p.record, u)
    store = MemoryStore()
    lg = RelayLog(store, DEMO_SCHEMA)
    assert stage(lg, [ch]) == ([ch.change_id], [ch.change_id])
    store.remove(("dedup", "d", ch.change_id))  # as compaction does, noting the highest id it dropped
    store.save(("relay", "compacted", "d"), str(ch.change_id).encode())
    assert stage(RelayLog(store, DEMO_SCHEMA), [ch]) == ([ch.change_id], [])  # acknowledged, not stored again
