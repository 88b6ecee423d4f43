"""Merging records new to the replica (the fast path of ``RecordDoc.apply``/``apply_many``): several
updates of one record in one ``apply_remote`` call, in any order, duplicated, some missing, or garbled,
end exactly as the merge of a known record would, and as a fresh load of what was stored."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtsync import MalformedUpdate, RemoteValidationError, Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.model import new_record_doc
from crdtsync.store import MemoryStore
from crdtsync.testing import Cluster
from crdtsync.testing.cluster import snapshot


def rows(r: Replica) -> list[tuple[object, ...]]:
    return [snapshot(c, rec) for c in DEMO_SCHEMA for rec in r.query(c.name, include_deleted=True)]


def changes(n: int) -> tuple[Replica, list[tuple[str, str, bytes]]]:
    """A replica's pending changes, one update each (what a relay forwards), on two records."""
    a = Cluster(DEMO_SCHEMA, 1).replicas[0]
    a.create("accounts", {"name": "Acme", "notes": "n", "tags": {"x"}}, id="r0")
    a.create("accounts", {"name": "Beta"}, id="r1")
    for i in range(n):
        rid = f"r{i % 2}"
        rec = a.get("accounts", rid)
        assert rec is not None
        if rec.deleted:
            a.restore("accounts", rid)
        elif i % 4 == 0:
            a.update("accounts", rid, {"employees": i, "notes": f"note {i}"})
        elif i % 4 == 1:
            a.update("accounts", rid, {"tags": {f"t{i % 3}"}})
        elif i % 4 == 2:
            a.increment("accounts", rid, "visits", i)
        else:
            a.delete("accounts", rid)
    return a, [(p.collection, p.record, u) for p, u in a.outgoing()]


def assert_fresh_states(r: Replica) -> None:
    for rec in r.query("accounts", include_deleted=True):
        doc = r.docs.get("accounts", rec.id).doc
        copy = new_record_doc(doc.collection, rec.id, writer=doc.writer, device=doc.device, user=doc.user,
                              client_id=99, updates=[doc.full_update()])
        assert doc.state() == copy.state()
        assert rec.fields == copy.state().fields and rec.conflicts == copy.state().conflicts


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_updates_of_a_new_record_in_one_call_in_any_order(data: st.DataObject) -> None:
    a, items = changes(data.draw(st.integers(1, 12)))
    order = data.draw(st.permutations(range(len(items))))
    extra = data.draw(st.lists(st.integers(0, len(items) - 1), max_size=4))
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    changed = b.apply_remote([items[i] for i in [*order, *extra]])
    assert rows(b) == rows(a)
    assert {r.id for r in changed} == {"r0", "r1"}
    assert b.store.load_range(("held",)) == []
    assert_fresh_states(b)
    b.docs.forget()  # what was stored, not only what is in memory
    assert rows(b) == rows(a)
    assert b.apply_remote(items) == []  # idempotent: nothing new the second time


@settings(derandomize=True, max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_updates_missing_their_base_wait_for_it(data: st.DataObject) -> None:
    a, items = changes(data.draw(st.integers(2, 10)))
    r0 = [x for x in items if x[1] == "r0"]
    cut = data.draw(st.integers(1, len(r0) - 1)) if len(r0) > 1 else 1
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    b.apply_remote(r0[cut:])  # the create and the first changes are missing
    assert b.get("accounts", "r0") is None
    assert b.store.load_range(("held",)) != []
    b.apply_remote(r0[:cut])
    assert b.store.load_range(("held",)) == []
    assert rows(b) == [x for x in rows(a) if x[0] == "r0"]
    assert_fresh_states(b)


@settings(derandomize=True, max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_garbled_update_among_several_changes_nothing(data: st.DataObject) -> None:
    _, items = changes(6)
    r0 = [bytearray(u) for _, rid, u in items if rid == "r0"]
    victim = r0[data.draw(st.integers(0, len(r0) - 1))]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(victim) - 1))
        how = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if how == "set":
            victim[i] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del victim[i:i + data.draw(st.integers(1, 8))]
        else:
            victim[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    b.create("accounts", {"name": "Mine"}, id="mine")
    before = b.store.load_range(())
    try:
        b.apply_remote([("accounts", "r0", bytes(u)) for u in r0])
    except (MalformedUpdate, RemoteValidationError):
        assert b.store.load_range(()) == before
        return
    assert_fresh_states(b)  # accepted (the garbling hit nothing that matters): consistent all the same


def test_a_discarded_record_keeps_its_new_identity_when_its_export_comes_back() -> None:
    """Loading is skipped for a collection the store holds nothing of: a record whose every change was
    discarded still has its ``rmeta`` (fresh Yjs client id and writer tag), which must not be skipped."""
    a = Cluster(DEMO_SCHEMA, 1).replicas[0]
    a.create("accounts", {"name": "Acme"}, id="x")
    escaped = a.export_updates()
    a.discard_record("accounts", "x")
    assert a.store.load_range(("upd",)) == [] and a.store.load_range(("rmeta",)) != []
    a.docs.forget()
    a.import_updates(escaped)
    doc = a.docs.get("accounts", "x").doc
    assert doc.writer == f"{a.device}#1"
    a.update("accounts", "x", {"name": "Acme 2"})  # written as the new writer: the old write stays visible
    rec = a.get("accounts", "x")
    assert rec is not None and rec.fields["name"] == "Acme 2"
    assert {s.writer for s in doc.slots().values()} == {a.device, f"{a.device}#1"}


def test_a_first_sync_into_an_empty_store_loads_nothing() -> None:
    a, items = changes(4)
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    calls: list[object] = []
    load_many, load_ranges = b.store.load_many, b.store.load_ranges
    b.store.load_many = lambda keys: calls.append(keys) or load_many(keys)  # type: ignore[method-assign]
    b.store.load_ranges = lambda p: calls.append(p) or load_ranges(p)  # type: ignore[method-assign]
    b.apply_remote(items)
    assert calls == []
    assert rows(b) == rows(a)
    b.docs.forget()
    b.apply_remote(items)  # known now: loaded from the store
    assert calls != []
    assert rows(b) == rows(a)


def test_a_record_only_pending_here_is_loaded_with_its_changes_when_a_peer_sends_it() -> None:
    """A collection the store holds no record of may still have records in the outbox (a local change is
    stored there alone until acknowledged): a merge into one must start from them."""
    a, b = Cluster(DEMO_SCHEMA, 2).replicas
    b.create("accounts", {"name": "Mine", "employees": 3}, id="x")
    a.create("accounts", {"name": "Theirs", "phone": "123"}, id="x")
    b.docs.forget()
    assert b.store.load_range(("upd",)) == [] and b.store.load_range(("snap",)) == []
    b.import_updates(a.export_updates())
    rec = b.get("accounts", "x")
    assert rec is not None
    assert (rec.fields["employees"], rec.fields["phone"]) == (3, "123")
    assert {c.field for c in rec.conflicts} == {"name"}
    assert [p.op for p in b.pending()] == ["create"]


def test_an_export_of_a_collection_unknown_here_changes_nothing() -> None:
    """``import_updates`` checks the collections as ``apply_remote`` does: before anything is merged."""
    from crdtsync import Collection, Schema, Str

    wider = Schema(*DEMO_SCHEMA, Collection("zones", {"name": Str()}))
    a = Replica(MemoryStore(), wider, device="a", user="ua")
    a.create("accounts", {"name": "Acme"}, id="x")
    a.create("zones", {"name": "North"}, id="z")
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    before = b.store.load_range(())
    items = [(c, rid, u) for (c, rid), us in a._parse_export(a.export_updates()).items() for u in us]
    for merge in (lambda: b.import_updates(a.export_updates()), lambda: b.apply_remote(items)):
        with pytest.raises(RemoteValidationError) as e:
            merge()
        assert (e.value.collection, e.value.record, str(e.value)) == ("zones", "z", "zones/z: unknown collection")
        assert b.store.load_range(()) == before and b.get("accounts", "x") is None
