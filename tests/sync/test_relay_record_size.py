"""A record written again and again: the relay's size limit on records and its compaction of their stored
updates cost about the same per change however large the record has grown."""

from __future__ import annotations

import pytest

from crdtsync import Replica
from crdtsync.model.document import BaseRecordDoc
from crdtsync.protocol import Change
from crdtsync.relay import Grant, RelayLog
from crdtsync.relay.log import Outcome
from crdtsync.schema import Collection, Int, Schema, Str
from crdtsync.store.base import Batch
from crdtsync.store.memory import MemoryStore

SCHEMA = Schema(Collection("accounts", {"name": Str(), "employees": Int()}))


def _sync(log: RelayLog, dev: Replica, snaps: list[int] | None = None) -> Outcome:
    """Push the device's pending changes to the relay and commit them; ``snaps``: the size of each snapshot
    the commit stores."""
    out = dev.outgoing()
    batch = Batch()
    o = log.stage(batch, dev.device, Grant.open(), [Change(p.id, p.collection, p.record, u) for p, u in out])
    if snaps is not None:
        snaps += [len(v) for k, v in batch.saves.items() if k[0] == "snap"]
    log.store.commit(batch)
    log.committed(o.accepted)
    dev.acknowledge(o.ok)
    return o


def _hot(max_record: int | None = None, name: int = 20_000) -> tuple[RelayLog, Replica, str]:
    log = RelayLog(MemoryStore(), SCHEMA, max_record=max_record)
    dev = Replica(MemoryStore(), SCHEMA, device="d1", user="u")
    rid = dev.create("accounts", {"name": "x" * name, "employees": 0})
    assert _sync(log, dev).ok
    return log, dev, rid


def test_a_record_near_the_size_limit_is_not_encoded_whole_at_every_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # 40 KB (the name is in its slot and its history entry), then writes of ~100 bytes each (updates of ~200)
    # until the record reaches the limit of 65 KB: the parts of the relay's copy added up to more than the
    # limit from about 50 KB on, and the relay encoded it whole at each change after that (103 times)
    log, dev, rid = _hot(max_record=65_000)
    calls = 0
    full_update = BaseRecordDoc.full_update

    def counted(self: BaseRecordDoc) -> bytes:
        nonlocal calls
        calls += 1
        return full_update(self)

    monkeypatch.setattr(BaseRecordDoc, "full_update", counted)
    for i in range(1, 400):
        dev.update("accounts", rid, {"employees": i})
        if _sync(log, dev).rejected:
            break
    assert i > 200, i
    assert calls <= 30, calls  # (compaction encodes it too, now and then)


def test_a_change_that_takes_a_record_over_the_size_limit_is_refused() -> None:
    log, dev, rid = _hot(max_record=45_000)
    size = 0
    for i in range(1, 100):
        dev.update("accounts", rid, {"employees": i})
        o = _sync(log, dev)
        if o.rejected:
            [r] = o.rejected
            assert r.code == "invalid" and "more than the relay sends in one frame (45000)" in r.reason, r
            break
        size = len(log.docs.get("accounts", rid).doc.full_update())
    else:
        pytest.fail("never refused")
    assert 44_000 < size <= 45_000  # refused only once over the limit
    assert log.docs.get("accounts", rid).doc.state().fields["employees"] == i - 1  # the refused change is undone


def test_stored_updates_are_compacted_after_a_share_of_the_snapshot_not_a_count() -> None:
    # a 100 KB record (50,000 characters of name, in its slot and its history entry), then 400 changes of
    # ~200 bytes: by count alone, the relay stored the whole record again every 64 changes (13 KB of them)
    log, dev, rid = _hot(name=50_000)
    snaps: list[int] = []
    since = 0  # bytes of the updates stored since the last snapshot
    last = 0  # its size (none yet: the record is its first update)
    for i in range(1, 401):
        dev.update("accounts", rid, {"employees": i})
        before = len(snaps)
        o = _sync(log, dev, snaps)
        since += sum(len(a.update) for a in o.accepted)
        if len(snaps) > before:
            assert since >= log.docs.compact_ratio * last, (i, since, last)
            since, last = 0, snaps[-1]
    assert len(snaps) >= 2, snaps
    assert log.store.load(("snap", "accounts", rid)) is not None
    assert log.docs.get("accounts", rid).doc.state().fields["employees"] == 400


def test_stored_updates_are_compacted_once_they_are_many_however_light() -> None:
    # a 100 KB record: 300 changes of ~200 bytes weigh less than a quarter of it, but a record loaded (or sent
    # whole) from thousands of small updates took six times as long as from a few
    log, dev, rid = _hot(name=50_000)
    log.docs.compact_max = 100
    most = 0
    for i in range(1, 301):
        dev.update("accounts", rid, {"employees": i})
        assert _sync(log, dev).ok
        most = max(most, len(log.store.load_range(("upd", "accounts", rid))))
    assert most < 100, most
