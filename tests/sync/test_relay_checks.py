"""The relay checks each change against the schema: also the slots and set entries it writes into a record
that already holds valid data (the relay checks only what a change touched, so this must still catch it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pycrdt import Doc, Map
from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.model.record import RecordDoc
from crdtsync.model.slots import SEP
from crdtsync.protocol import Ack, Change, Push
from crdtsync.relay import Grant
from crdtsync.relay.log import Outcome, RelayLog
from crdtsync.schema import Collection, Counter, Schema, Set, Str, Text
from crdtsync.store.base import Batch
from crdtsync.store.memory import MemoryStore

from .conftest import RawClient, RelayFactory


def _slot(v: Any, device: str) -> str:
    return orjson.dumps({"v": v, "t": 2**40, "d": device, "u": "u", "c": {}}).decode()


def _forge(base: list[bytes], root: str, key: str, value: str) -> bytes:
    """An update over the record's state that sets one raw entry of a root map."""
    doc: Doc[Any] = Doc()
    for u in base:
        doc.apply_update(u)
    before = doc.get_state()
    doc.get(root, type=Map)[key] = value
    return doc.get_update(before)


BAD = [
    ("value out of range", "f", f"employees{SEP}good", _slot(-5, "good")),
    ("unknown field", "f", f"nope{SEP}good", _slot("x", "good")),
    ("marker with a value", "f", f"notes{SEP}good", _slot("text in a marker", "good")),
    ("not JSON", "f", f"name{SEP}good", "{not json"),
    ("set entry of a plain field", "s", f"name{SEP}\"x\"{SEP}good", orjson.dumps({"a": 1, "r": {}}).decode()),
    ("set element of the wrong type", "s", f"tags{SEP}5{SEP}good", orjson.dumps({"a": 1, "r": {}}).decode()),
]


@pytest.mark.parametrize("name, root, key, value", BAD, ids=[b[0] for b in BAD])
async def test_an_invalid_entry_in_a_stored_record_is_rejected(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], name: str, root: str, key: str,
        value: str) -> None:
    relay = await make_relay()
    good = make_replica("good")
    rid = good.create("accounts", {"name": "fine", "employees": 3, "tags": {"a"}})
    [(pc, create)] = good.outgoing()
    bad = _forge([create], root, key, value)
    good.update("accounts", rid, {"employees": 4})
    later = [u for p, u in good.outgoing() if p.id != pc.id]
    async with connect(relay.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("good")
        raw.conn.send(Push(1, (Change(pc.id, "accounts", rid, create),)))
        await raw.flush()
        [first] = await raw.next_events()
        assert isinstance(first, Ack) and first.ok == (pc.id,)
        raw.conn.send(Push(2, (Change(900, "accounts", rid, bad),)))
        await raw.flush()
        [ack] = await raw.next_events()
        assert isinstance(ack, Ack)
        assert [(r.change_id, r.code) for r in ack.rejected] == [(900, "invalid")], ack
        # the record is unharmed: a valid change to it is still stored
        raw.conn.send(Push(3, (Change(901, "accounts", rid, later[0]),)))
        await raw.flush()
        [ok] = await raw.next_events()
        assert isinstance(ok, Ack) and ok.ok == (901,), ok
    assert relay.relay is not None and relay.relay.log.head == 2


LIMITED = Schema(Collection("visits", {"summary": Str(required=True), "notes": Text(max_length=20),
                                       "tags": Set(Str(), max_items=2)}))


def _push(log: RelayLog, r: Replica, grant: Grant) -> Outcome:
    changes = [Change(p.id, p.collection, p.record, u) for p, u in r.outgoing()]
    batch = Batch()
    out = log.stage(batch, r.device, grant, changes)
    log.store.commit(batch)
    log.committed(out.accepted)
    return out


def _two_devices(schema: Schema) -> tuple[RelayLog, Grant, Replica, Replica, str]:
    """A relay log, an open grant, and devices a and b both holding a ``visits`` record a created and
    pushed."""
    log = RelayLog(MemoryStore(), schema)
    grant = Grant("u", frozenset({"*"}), frozenset({"*"}), anonymous=True)
    a = Replica(MemoryStore(), schema, device="a", user="u")
    b = Replica(MemoryStore(), schema, device="b", user="u")
    rid = a.create("visits", {"summary": "s"})
    assert _push(log, a, grant).ok
    a.acknowledge(p.id for p in a.pending())
    b.import_updates(a.export_updates())
    return log, grant, a, b, rid


@pytest.mark.parametrize("field, mine, theirs, says", [
    ("notes", "twelve chars", "eleven char", "23 characters long, more than max_length=20"),
    ("tags", {"a", "b"}, {"c"}, "holds 3 items, more than max_items=2"),
])
def test_a_change_whose_merge_breaks_a_text_or_set_limit_is_refused(
        field: str, mine: Any, theirs: Any, says: str) -> None:
    log, grant, a, b, rid = _two_devices(LIMITED)
    a.update("visits", rid, {field: mine})  # each valid on its own device
    b.update("visits", rid, {field: theirs})
    assert _push(log, a, grant).ok
    out = _push(log, b, grant)
    [rej] = out.rejected
    assert rej.code == "invalid" and says in rej.reason and not out.accepted
    # the relay's copy is what a accepted: b's refused change left no trace in it
    assert log.reader.get("visits", rid).doc.state().fields[field] == (mine if field == "notes" else frozenset(mine))


WIDE = Schema(Collection("visits", {"summary": Str(required=True), "notes": Text(max_length=100),
                                    "tags": Set(Str(), max_items=5)}))


@pytest.mark.parametrize("field, stored, shorter, longer", [
    ("notes", "x" * 40, "x" * 30, "x" * 41),
    ("tags", {"a", "b", "c", "d"}, {"a", "b", "c"}, {"a", "b", "c", "d", "e"}),
])
def test_a_record_over_a_lowered_text_or_set_limit_stays_writable(field: str, stored: Any, shorter: Any,
                                                                    longer: Any) -> None:
    """The limit was lowered after the record was written: changes that do not make the field larger (a
    rename, a delete, a shortening by a device still on the older app) go in; one that makes it larger,
    still over the limit, is refused."""
    store = MemoryStore()
    grant = Grant("u", frozenset({"*"}), frozenset({"*"}), anonymous=True)
    old = Replica(MemoryStore(), WIDE, device="old", user="u")  # an app version from before the limit
    rid = old.create("visits", {"summary": "s", field: stored})
    assert _push(RelayLog(store, WIDE), old, grant).ok
    old.acknowledge(p.id for p in old.pending())
    log = RelayLog(store, LIMITED)  # the relay restarted with the lowered limit
    a = Replica(MemoryStore(), WIDE, device="a", user="u")
    a.import_updates(old.export_updates())
    a.update("visits", rid, {"summary": "renamed"})
    a.delete("visits", rid)
    a.restore("visits", rid)
    out = _push(log, a, grant)
    assert len(out.ok) == 3 and not out.rejected, out
    a.acknowledge(out.ok)
    old.update("visits", rid, {field: shorter})
    assert _push(log, old, grant).ok
    old.acknowledge(p.id for p in old.pending())
    old.update("visits", rid, {field: longer})
    [rej] = _push(log, old, grant).rejected
    assert rej.code == "invalid" and "more than max_" in rej.reason
    st = log.reader.get("visits", rid).doc.state()
    assert st.fields[field] == (shorter if field == "notes" else frozenset(shorter))
    assert st.fields["summary"] == "renamed"


COUNTED = Schema(Collection("visits", {"summary": Str(), "count": Counter()}))




@pytest.mark.parametrize("first, second", [(-(2**63), -1), (2**63 - 1, 1)])
def test_a_change_whose_merge_takes_a_counter_beyond_64_bits_is_refused(first: int, second: int) -> None:
    """Two increments that each fit, whose sum does not: the relay stored both, and every device's
    download then failed on it (no device can store or show such a sum), in a loop, for good."""
    log, grant, a, b, rid = _two_devices(COUNTED)
    a.increment("visits", rid, "count", first)
    b.increment("visits", rid, "count", second)
    b.update("visits", rid, {"summary": "later"})  # held behind the refused change
    assert _push(log, a, grant).ok
    out = _push(log, b, grant)
    [rej] = out.rejected
    assert rej.code == "invalid" and "does not fit in 64 bits" in rej.reason and not out.accepted
    assert len(out.held) == 1
    assert log.reader.get("visits", rid).doc.state().fields["count"] == first
    b.discard_record("visits", rid)
    b.import_updates(a.export_updates())
    b.update("visits", rid, {"summary": "later"})  # a change not touching the counter goes in
    assert _push(log, b, grant).ok


def test_a_counter_summed_beyond_64_bits_before_the_check_may_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay from before the check stored two increments of M: the sum is 2M. A change that brings it
    towards the range goes in; one that takes it further is refused. Every change was refused, a decrement
    included, and each blocked the record on its device."""
    import crdtsync.relay.log as relay_log

    m = 2**63 - 1
    log, grant, a, b, rid = _two_devices(COUNTED)
    a.increment("visits", rid, "count", m)
    b.increment("visits", rid, "count", m)
    with monkeypatch.context() as older:  # the relay before the check
        older.setattr(relay_log, "refuse_over_limits", lambda *args: None)
        for r in (a, b):
            assert _push(log, r, grant).ok
            r.acknowledge(p.id for p in r.pending())
    a.import_updates(b.export_updates())
    a.increment("visits", rid, "count", -1)
    out = _push(log, a, grant)
    assert out.ok and not out.rejected, out
    a.acknowledge(out.ok)
    a.increment("visits", rid, "count", -1)
    a.update("visits", rid, {"summary": "later"})
    assert len(_push(log, a, grant).ok) == 2
    a.acknowledge(p.id for p in a.pending())
    c = Replica(MemoryStore(), COUNTED, device="c", user="u")
    c.import_updates(a.export_updates())
    with monkeypatch.context() as blind:  # a device that sees a sum within range (its own check passes)
        blind.setattr(RecordDoc, "counter_sum", lambda self, name: 0)
        c.increment("visits", rid, "count", 1)
    [rej] = _push(log, c, grant).rejected
    assert rej.code == "invalid" and "does not fit in 64 bits" in rej.reason
    assert log.reader.get("visits", rid).doc.counter_sum("count") == 2 * m - 2
