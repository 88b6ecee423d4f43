"""export_updates()/import_updates(): idempotent, in any order, any number of times; bad blobs change
nothing; lazy loading and the record cache."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import merge_updates

from crdtsync import MalformedUpdate, RemoteValidationError, Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.store import MemoryStore
from crdtsync.testing import Cluster
from crdtsync.testing.cluster import snapshot


def state(r: Replica) -> list[tuple[object, ...]]:
    return [snapshot(c, rec) for c in DEMO_SCHEMA for rec in r.query(c.name, include_deleted=True)]


def make_deltas(n_writes: int, seed_values: list[int]) -> tuple[Replica, list[bytes]]:
    """A replica writes; after each write it exports only that write (a delta on its previous state)."""
    a = Cluster(DEMO_SCHEMA, 1).replicas[0]
    deltas = []
    before = a.state_vectors()
    a.create("accounts", {"name": "Acme", "notes": "n"}, id="r0")
    deltas.append(a.export_updates(since=before))
    for i in range(n_writes):
        v = seed_values[i % len(seed_values)]
        before = a.state_vectors()
        if i % 3 == 0:
            a.update("accounts", "r0", {"employees": v, "notes": "n" * (v % 5 + 1)})
        elif i % 3 == 1:
            a.create("accounts", {"name": f"x{v}", "tags": {str(v)}}, id=f"r{i}")
        else:
            a.increment("accounts", "r0", "visits", v % 7)
        deltas.append(a.export_updates(since=before))
    return a, deltas


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_deltas_in_any_order_any_number_of_times(data: st.DataObject) -> None:
    a, deltas = make_deltas(data.draw(st.integers(1, 7)), data.draw(st.lists(st.integers(0, 99), min_size=1)))
    order = data.draw(st.permutations(range(len(deltas))))
    extra = data.draw(st.lists(st.integers(0, len(deltas) - 1), max_size=4))
    cache = data.draw(st.sampled_from([1, 100]))
    b = Cluster(DEMO_SCHEMA, 2, cache_size=cache).replicas[1]
    for i in [*order, *extra]:
        b.import_updates(deltas[i])
    assert state(b) == state(a)
    b.docs.forget()  # what was stored, not only what is in memory
    assert state(b) == state(a)
    assert b.store.load_range(("held",)) == []


def test_a_delta_waiting_for_its_base_survives_a_restart(tmp_path: object) -> None:
    a, deltas = make_deltas(4, [5, 6, 7])
    c = Cluster(DEMO_SCHEMA, 2)
    b = c.replicas[1]
    for d in reversed(deltas[1:]):
        b.import_updates(d)
    assert b.store.load_range(("held",)) != []
    reopened = Replica(b.store, DEMO_SCHEMA, device="d1", user="u1")
    reopened.import_updates(deltas[0])
    assert state(reopened) == state(a)


def test_import_is_idempotent_and_reports_only_changes() -> None:
    a, b, _ = Cluster(DEMO_SCHEMA, 3).replicas
    rid = a.create("accounts", {"name": "Acme"})
    blob = a.export_updates()
    assert [r.id for r in b.import_updates(blob)] == [rid]
    rows = b.store.load_range(())
    for _ in range(3):
        assert b.import_updates(blob) == []
    assert b.store.load_range(()) == rows, "a duplicate import wrote something"
    assert b.import_updates(a.export_updates(since=b.state_vectors())) == []


def test_since_exports_only_what_the_other_lacks() -> None:
    a, b, _ = Cluster(DEMO_SCHEMA, 3).replicas
    for i in range(20):
        a.create("accounts", {"name": f"n{i}"}, id=f"a{i}")
    b.import_updates(a.export_updates())
    a.update("accounts", "a3", {"employees": 1})
    small = a.export_updates(since=b.state_vectors())
    assert len(small) < len(a.export_updates()) / 5
    assert [r.id for r in b.import_updates(small)] == ["a3"]
    assert state(a) == state(b)


@pytest.mark.parametrize("blob", [b"", b"junk", b"CSX1\xff", b"CSX1\x05abc", b"CSV1", 12])
def test_malformed_blob_raises_and_changes_nothing(blob: object) -> None:
    b = Cluster(DEMO_SCHEMA, 1).replicas[0]
    b.create("accounts", {"name": "Mine"})
    before = b.store.load_range(())
    with pytest.raises(MalformedUpdate):
        b.import_updates(blob)  # type: ignore[arg-type]
    assert b.store.load_range(()) == before


def test_blob_of_a_looser_schema_goes_in_and_a_malformed_one_changes_nothing() -> None:
    """A peer whose schema allows more (a field we do not know, a longer name): its records go in, shown
    as stored, the unknown field kept hidden (the relay judges values by the rules, a merge only their
    structure). A blob with a malformed slot changes nothing."""
    from pycrdt import Doc, Map

    from crdtsync import Collection, Int, Schema, Str
    from crdtsync.model.slots import SEP

    loose = Schema(Collection("accounts", {"name": Str(), "secret": Int()}))
    peer = Cluster(loose, 1).replicas[0]
    peer.create("accounts", {"name": "x" * 500}, id="a1")
    peer.create("accounts", {"name": "ok", "secret": 1}, id="a2")
    b = Cluster(DEMO_SCHEMA, 1).replicas[0]
    b.create("accounts", {"name": "Mine"}, id="a0")
    bad = Doc()
    bad.get("f", type=Map)[f"name{SEP}zz"] = "{not json"
    before = b.store.load_range(())
    with pytest.raises(RemoteValidationError) as e:
        b.apply_remote([("accounts", "a1", u) for _, u in peer.outgoing()[:1]] + [("accounts", "a2", bad.get_update())])
    assert (e.value.collection, e.value.record) == ("accounts", "a2")
    assert b.store.load_range(()) == before
    assert b.get("accounts", "a1") is None and b.get("accounts", "a0") is not None
    b.import_updates(peer.export_updates())
    a1, a2 = b.get("accounts", "a1"), b.get("accounts", "a2")
    assert a1 is not None and a1["name"] == "x" * 500
    assert a2 is not None and a2["name"] == "ok" and "secret" not in a2.fields


def test_import_of_more_records_than_the_cache_holds() -> None:
    """Regression: rows of records evicted from the cache during an import were stale."""
    a = Cluster(DEMO_SCHEMA, 1).replicas[0]
    for i in range(30):
        a.create("accounts", {"name": f"n{i}", "employees": i}, id=f"a{i:02}")
    b = Cluster(DEMO_SCHEMA, 2, cache_size=4).replicas[1]
    assert len(b.import_updates(a.export_updates())) == 30
    assert state(b) == state(a)
    b.docs.forget()
    assert [b.history("accounts", f"a{i:02}")[0].value for i in range(30)] == [f"n{i}" for i in range(30)]


def test_records_load_lazily() -> None:
    c = Cluster(DEMO_SCHEMA, 1, cache_size=3)
    a = c.replicas[0]
    for i in range(10):
        a.create("accounts", {"name": f"n{i}"}, id=f"a{i}")
    reopened = Replica(a.store, DEMO_SCHEMA, device="d0", user="u0", cache_size=3)
    assert len(reopened.docs._cache) == 0
    assert len(reopened.query("accounts")) == 10 and reopened.get("accounts", "a5") is not None
    assert len(reopened.docs._cache) == 0, "reads come from rows, not documents"
    for i in range(10):
        reopened.update("accounts", f"a{i}", {"employees": i})
    assert len(reopened.docs._cache) == 3
    assert [r.fields["employees"] for r in reopened.query("accounts")] == list(range(10))


def test_compaction_keeps_everything() -> None:
    a, b = Cluster(DEMO_SCHEMA, 2, compact_after=3).replicas
    rid = a.create("accounts", {"name": "Acme"})
    for i in range(10):
        a.update("accounts", rid, {"employees": i})
        a.acknowledge(p.id for p in a.pending())
    assert a.store.load(("snap", "accounts", rid)) is not None
    assert len(a.store.load_range(("upd", "accounts", rid))) < 3
    b.import_updates(a.export_updates())
    assert state(a) == state(b)
    assert len(b.history("accounts", rid)) == 11


def test_held_updates_survive_a_discard_on_the_same_record() -> None:
    a, b = Cluster(DEMO_SCHEMA, 2, cache_size=1).replicas
    a.create("accounts", {"name": "Acme"}, id="r0")
    b.import_updates(a.export_updates())
    before = a.state_vectors()
    a.update("accounts", "r0", {"employees": 1, "notes": "one"})
    d1 = a.export_updates(since=before)
    before = a.state_vectors()
    a.update("accounts", "r0", {"employees": 2, "notes": "one two"})
    d2 = a.export_updates(since=before)
    b.import_updates(d2)  # waits for d1
    b.update("accounts", "r0", {"phone": "555"})
    b.discard(b.pending()[-1].id)
    b.import_updates(d1)
    assert state(b) == state(a)
    c = Cluster(DEMO_SCHEMA, 3).replicas[2]
    c.import_updates(b.export_updates())  # what b stored, not only what it holds in memory
    assert state(c) == state(a)


def test_a_peers_update_built_on_a_discarded_change_waits_for_it_and_is_not_claimed() -> None:
    """b's update builds on a's create (its history follows a's entries). Once a discards the create, that
    update cannot go in: it is held, so a's state vectors no longer claim it and a delta exchange from b
    sends it again, with a's create, which b still has. Before, a's stored updates kept it (its state
    vector claimed it) while the rebuilt record had dropped it: a never got it back."""
    a, b = Cluster(DEMO_SCHEMA, 2).replicas
    a.create("accounts", {"name": "Acme"}, id="r0")
    b.import_updates(a.export_updates())
    b.update("accounts", "r0", {"phone": "555"})
    a.import_updates(b.export_updates(since=a.state_vectors()))
    a.discard_record("accounts", "r0")
    lr = a.docs.get("accounts", "r0")
    assert a.get("accounts", "r0") is None and len(lr.doc.held) == 1
    claimed = a._parse_vectors(a.state_vectors()).get(("accounts", "r0"), b"\x00")
    assert claimed == lr.doc.state_vector()
    a.docs.forget()  # loaded again from the store: the same
    assert a.get("accounts", "r0") is None
    a.import_updates(b.export_updates(since=a.state_vectors()))
    assert state(a) == state(b)
    assert a.history("accounts", "r0") == b.history("accounts", "r0")


def test_a_write_never_claims_to_have_seen_what_waits_for_its_base() -> None:
    """An update whose base is missing is not integrated, but Yrs shows its map entries anyway. Had the
    record's "seen" context counted them, b's write to ``phone`` would silently beat a's concurrent one."""
    a, b = Cluster(DEMO_SCHEMA, 2).replicas
    a.create("accounts", {"name": "Acme"}, id="r0")
    b.import_updates(a.export_updates())
    before = a.state_vectors()
    a.update("accounts", "r0", {"phone": "a-phone"})
    d1 = a.export_updates(since=before)
    before = a.state_vectors()
    a.update("accounts", "r0", {"employees": 7})
    d2 = a.export_updates(since=before)
    b.import_updates(d2)  # waits for d1
    b.docs.forget()  # as after a restart or a cache eviction: the record is loaded again, with d2 held
    rec = b.get("accounts", "r0")
    assert rec is not None and rec.fields["employees"] is None, "content waiting for its base is not shown"
    b.update("accounts", "r0", {"phone": "b-phone"})  # concurrent with a's phone: b has not seen it
    b.import_updates(d1)
    a.import_updates(b.export_updates())
    for r in (a, b):
        rec = r.get("accounts", "r0")
        assert rec is not None and rec.fields["employees"] == 7
        (conflict,) = rec.conflicts
        assert conflict.field == "phone" and {c.value for c in conflict.candidates} == {"a-phone", "b-phone"}


def test_records_evicted_from_the_cache_are_freed() -> None:
    """Regression: a lasting Yjs subscription kept every record document ever loaded alive."""
    import gc

    from crdtsync.model import RecordDoc

    def alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, RecordDoc))

    a = Cluster(DEMO_SCHEMA, 1, cache_size=1).replicas[0]
    for i in range(60):
        a.create("accounts", {"name": f"n{i}"}, id=f"a{i:02}")
    before = alive()
    b = Cluster(DEMO_SCHEMA, 2, cache_size=5).replicas[1]
    b.import_updates(a.export_updates())
    for i in range(60):
        b.update("accounts", f"a{i:02}", {"employees": i})
    assert alive() - before <= 5


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_updates_raise_only_remote_errors_and_change_nothing(data: st.DataObject) -> None:
    """Peer garbage inside a well-formed blob: MalformedUpdate or RemoteValidationError, never a panic."""
    import orjson

    from crdtsync.codec import write_bytes

    a = Cluster(DEMO_SCHEMA, 1).replicas[0]
    a.create("accounts", {"name": "Acme", "notes": "hello", "tags": {"x"}}, id="r0")
    a.update("accounts", "r0", {"employees": 3})
    update = bytearray(a._parse_export(a.export_updates())[("accounts", "r0")][0])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(update) - 1))
        how = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if how == "set":
            update[i] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del update[i:i + data.draw(st.integers(1, 8))]
        else:
            update[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    blob = bytearray(b"CSX1")
    write_bytes(blob, orjson.dumps(["accounts", "r0"]))
    write_bytes(blob, bytes(update))
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    b.create("accounts", {"name": "Mine"}, id="mine")
    before = b.store.load_range(())
    try:
        b.import_updates(bytes(blob))
    except (MalformedUpdate, RemoteValidationError):
        assert b.store.load_range(()) == before


def test_a_bad_slot_merged_into_a_known_record_is_refused() -> None:
    """``check`` validates only what changed since the last check: a malformed slot merged into a record
    the replica already holds (checked, cached) must be refused all the same, and the record keep its
    value. A value beyond this schema's rules goes in (the relay judged it; a merge checks structure)."""
    from pycrdt import Doc, Map

    from crdtsync import Collection, Schema, Str
    from crdtsync.model.slots import SEP

    loose = Schema(Collection("accounts", {"name": Str(), "phone": Str()}))
    peer = Replica(MemoryStore(), loose, device="peer", user="p")
    peer.create("accounts", {"name": "Acme", "phone": "1"}, id="a1")
    b = Cluster(DEMO_SCHEMA, 1).replicas[0]
    b.import_updates(peer.export_updates())
    b.update("accounts", "a1", {"employees": 3})  # a local slot too
    sv = b.state_vectors()
    bad = Doc()
    bad.get("f", type=Map)[f"phone{SEP}zz"] = '{"v": "2", "t": 0}'
    before = b.store.load_range(())
    for _ in range(2):  # twice: a refused merge must not leave the bad slot as the next check's baseline
        with pytest.raises(RemoteValidationError) as e:
            b.apply_remote([("accounts", "a1", bad.get_update())])
        assert (e.value.record, e.value.field) == ("a1", None)
        assert b.store.load_range(()) == before
    rec = b.get("accounts", "a1")
    assert rec is not None and rec.fields["phone"] == "1" and rec.fields["employees"] == 3
    peer.update("accounts", "a1", {"phone": "9" * 100})  # DEMO_SCHEMA: at most 40 characters
    b.import_updates(peer.export_updates(since=sv))
    rec = b.get("accounts", "a1")
    assert rec is not None and rec.fields["phone"] == "9" * 100 and rec.fields["employees"] == 3


def test_check_keeps_refusing_a_bad_value_on_the_same_document() -> None:
    """On one RecordDoc (as the relay uses it): after a refused check, checking again still refuses."""
    from crdtsync import Collection, Schema, Str
    from crdtsync.model import new_record_doc

    strict = Schema(Collection("accounts", {"name": Str(max_length=5)})).collection("accounts")
    loose = Schema(Collection("accounts", {"name": Str()})).collection("accounts")
    src = new_record_doc(loose, "a1", writer="p", device="p", user="u", client_id=1)
    first = src.write({"name": "ok"}, 1 << 16)
    doc = new_record_doc(strict, "a1", writer="d", device="d", user="u", client_id=2)
    doc.apply(first)
    doc.check()
    assert doc.state().fields["name"] == "ok"
    doc.apply(src.write({"name": "far too long"}, 2 << 16))
    for _ in range(2):
        with pytest.raises(RemoteValidationError):
            doc.check()


@pytest.mark.parametrize("merged", [True, False])
def test_an_update_waiting_for_a_missing_one_shows_nothing_until_it_comes(merged: bool) -> None:
    """A record's updates u2 and u4 arrive without u3: merged into one update (``merge_updates``), or in one
    ``apply_remote`` call. Nothing that waits for u3 may show (all of the merged update, which Yrs would
    partly show; u4 alone when they come apart), or a local write made meanwhile would count "Acme 4" as
    seen and silently beat it. Once u3 comes, all is in and the concurrent writes conflict."""
    a, b = Cluster(DEMO_SCHEMA, 2).replicas
    rid = a.create("accounts", {"name": "Acme", "notes": "n"})
    a.update("accounts", rid, {"employees": 1, "notes": "note 1"})
    a.update("accounts", rid, {"name": "Acme 2"})
    a.update("accounts", rid, {"employees": 3, "notes": "note 3"})
    a.update("accounts", rid, {"name": "Acme 4"})
    u = [upd for _, upd in a.outgoing()]
    b.apply_remote([("accounts", rid, u[0]), ("accounts", rid, u[1])])
    if merged:
        b.apply_remote([("accounts", rid, merge_updates(u[2], u[4]))])
    else:
        b.apply_remote([("accounts", rid, u[2]), ("accounts", rid, u[4])])
    rec = b.get("accounts", rid)
    assert rec is not None and rec["name"] == ("Acme" if merged else "Acme 2") and rec["employees"] == 1
    assert b.store.load_range(("held",)) != []  # kept, not lost
    b.update("accounts", rid, {"name": "Bolt"})  # made without seeing "Acme 4"
    b.apply_remote([("accounts", rid, u[3])])
    rec = b.get("accounts", rid)
    assert rec is not None and rec["employees"] == 3 and rec["notes"] == "note 3"
    assert len(rec.conflicts) == 1
    assert sorted(c.value for c in rec.conflicts[0].candidates) == ["Acme 4", "Bolt"]
    assert b.store.load_range(("held",)) == []


@settings(derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_changes_merged_in_any_groups_with_gaps_converge(data: st.DataObject) -> None:
    """A record's changes, merged in arbitrary groups (a group may skip changes: an update with gaps
    inside), applied in any order, some twice: every replica ends with the writer's state, nothing held."""
    a = Cluster(DEMO_SCHEMA, 1).replicas[0]
    rid = a.create("accounts", {"name": "Acme", "notes": "n", "tags": {"x"}})
    for i, op in enumerate(data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=8))):
        if op == 0:
            a.update("accounts", rid, {"employees": i, "notes": f"note {i}"})
        elif op == 1:
            a.update("accounts", rid, {"name": f"Acme {i}", "tags": {f"t{i % 3}"}})
        elif op == 2:
            a.increment("accounts", rid, "visits", i + 1)
        else:
            a.update("accounts", rid, {"phone": f"+1 {i}"})
    updates = [u for _, u in a.outgoing()]
    groups = data.draw(st.lists(st.lists(st.sampled_from(range(len(updates))), min_size=1, max_size=4),
                                min_size=1, max_size=6))
    covered = {i for g in groups for i in g}
    groups += [[i] for i in range(len(updates)) if i not in covered]  # every change arrives at least once
    order = data.draw(st.permutations(range(len(groups))))
    b = Cluster(DEMO_SCHEMA, 2).replicas[1]
    for k in order:
        b.apply_remote([("accounts", rid, merge_updates(*[updates[i] for i in sorted(set(groups[k]))]))])
    assert state(b) == state(a)
    assert b.store.load_range(("held",)) == []


def test_held_updates_go_along_with_an_export() -> None:
    """``b`` holds a's second change (it lacks the first); ``c`` has the first. ``b``'s export carries the
    held change as an entry of its own, so ``c`` takes it; merged into the record's update, it would wait
    there too. ``since`` exports carry it as well, and ``b`` itself still waits."""
    a, b, c = Cluster(DEMO_SCHEMA, 3).replicas
    rid = a.create("accounts", {"name": "Acme"})
    first = [u for _, u in a.outgoing()]
    a.update("accounts", rid, {"name": "Acme 2"})
    second = [u for _, u in a.outgoing()][1:]
    c.apply_remote([("accounts", rid, first[0])])
    b.apply_remote([("accounts", rid, second[0])])
    assert b.get("accounts", rid) is None and b.store.load_range(("held",)) != []
    for blob in (b.export_updates(), b.export_updates(since=c.state_vectors())):
        d = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="d")
        d.import_updates(c.export_updates())
        d.import_updates(blob)
        rec = d.get("accounts", rid)
        assert rec is not None and rec["name"] == "Acme 2" and d.store.load_range(("held",)) == []
    c.import_updates(b.export_updates())
    rec = c.get("accounts", rid)
    assert rec is not None and rec["name"] == "Acme 2"
    assert b.get("accounts", rid) is None


def test_a_deletion_of_an_item_not_here_yet_is_held_and_shows_as_stored() -> None:
    """A delta holding only a deletion (``export_updates(since=...)`` after an overwrite) reaches a replica
    that lacks the deleted item. Yrs would keep the deletion pending inside the document, unstored, and
    apply it in memory once the item came: the record then showed what a fresh load of its stored updates
    did not. It is held (stored) instead, and goes in with the item."""
    a, b, c = Cluster(DEMO_SCHEMA, 3).replicas
    rid = a.create("accounts", {"name": "Acme"})
    c.import_updates(a.export_updates())  # c: the create only
    a.update("accounts", rid, {"name": "Acme 2"})
    deletion = a.export_updates(since=a.state_vectors())  # no structs: the overwritten name's deletion
    b.import_updates(deletion)
    assert b.get("accounts", rid) is None and b.store.load_range(("held",)) != []
    b.import_updates(c.export_updates())
    shown = b.get("accounts", rid)
    b.docs.forget()
    stored = b.docs.get("accounts", rid).doc.state()
    assert shown is not None and shown.fields == stored.fields
    assert b.store.load_range(("held",)) == []
    b.import_updates(a.export_updates())
    rec = b.get("accounts", rid)
    assert rec is not None and rec["name"] == "Acme 2"
