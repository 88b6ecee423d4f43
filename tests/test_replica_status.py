"""Per-record sync status, the outbox (pending changes), rejection, discard, and change events."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crdtsync import (
    ChangeEvent,
    LocalError,
    RecordBlocked,
    RecordDeleted,
    RecordExists,
    RecordNotFound,
    Replica,
    ValidationError,
)
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.testing import Cluster


@pytest.fixture
def pair() -> list[Replica]:
    return Cluster(DEMO_SCHEMA, 2).replicas


def status(r: Replica, rid: str) -> tuple[str, str | None]:
    rec = r.get("accounts", rid)
    assert rec is not None
    return rec.status, rec.error


def test_status_goes_pending_syncing_synced(pair: list[Replica]) -> None:
    a, _ = pair
    rid = a.create("accounts", {"name": "Acme"})
    a.update("accounts", rid, {"employees": 3})
    assert status(a, rid) == ("pending", None)
    changes = a.pending()
    assert [(p.op, p.fields, p.status) for p in changes] == [
        ("create", {"name": "Acme"}, "pending"), ("update", {"employees": 3}, "pending")]
    assert changes[0].id < changes[1].id and changes[0].at.year >= 2025
    out = a.outgoing()
    assert [p.id for p, _ in out] == [p.id for p in changes] and all(u for _, u in out)
    a.mark_syncing([changes[0].id])
    assert status(a, rid) == ("syncing", None)
    a.mark_pending([changes[0].id])
    assert status(a, rid) == ("pending", None)
    a.acknowledge([changes[0].id])
    assert status(a, rid) == ("pending", None) and len(a.pending()) == 1
    a.acknowledge([changes[1].id])
    assert status(a, rid) == ("synced", None) and a.pending() == []


def test_a_record_syncing_when_the_app_stopped_is_pending_after_reopening(tmp_path: Path) -> None:
    """Nothing is syncing at open: the rows of a sync cut short (a crash, or a replica closed before its
    client) must agree with the outbox, which puts those changes back to ``pending``."""
    path = tmp_path / "phone.db"
    a = Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    sent = a.create("accounts", {"name": "Sent"})
    queued = a.create("accounts", {"name": "Queued"})
    a.close()  # the rows are written
    a = Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    a.mark_syncing([p.id for p in a.pending() if p.record == sent])  # written to its row
    assert status(a, sent) == ("syncing", None)
    a.close()
    with Replica.open(path, DEMO_SCHEMA, device="phone", user="alice") as b:
        assert [p.status for p in b.pending()] == ["pending", "pending"]
        assert status(b, sent) == ("pending", None) and status(b, queued) == ("pending", None)
        assert [(r.id, r.status) for r in b.query("accounts")] == sorted([(sent, "pending"), (queued, "pending")])


def test_conflict_status_until_resolved(pair: list[Replica]) -> None:
    a, b = pair
    rid = a.create("accounts", {"name": "Acme"})
    b.import_updates(a.export_updates())
    a.acknowledge(p.id for p in a.pending())
    a.update("accounts", rid, {"name": "A"})
    b.update("accounts", rid, {"name": "B"})
    a.acknowledge(p.id for p in a.pending())
    a.import_updates(b.export_updates())
    assert status(a, rid) == ("conflict", None)
    a.resolve("accounts", rid, "name", "AB")
    assert status(a, rid) == ("pending", None)
    a.acknowledge(p.id for p in a.pending())
    assert status(a, rid) == ("synced", None)


def test_rejected_change_is_kept_with_its_reason_and_blocks_the_record(pair: list[Replica]) -> None:
    a, _ = pair
    rid = a.create("accounts", {"name": "Acme"})
    other = a.create("accounts", {"name": "Other"})
    first = a.pending()[0].id
    a.update("accounts", rid, {"employees": 5})
    a.reject(first, "forbidden", "no write access to accounts")
    assert status(a, rid) == ("error", "forbidden: no write access to accounts")
    p = a.pending()[0]
    assert p.status == "error" and p.error == ("forbidden", "no write access to accounts")
    with pytest.raises(RecordBlocked):
        a.update("accounts", rid, {"employees": 6})
    for blocked in (lambda: a.delete("accounts", rid), lambda: a.resolve("accounts", rid, "name", "X"),
                    lambda: a.increment("accounts", rid, "visits")):
        with pytest.raises(RecordBlocked):  # every further change of the record waits for fix or discard
            blocked()
    assert len(a.pending()) == 3
    # the record's later changes wait; other records still go out
    assert [c.record for c, _ in a.outgoing()] == [other]
    # the error survives a restart of the replica (it is persisted)
    reopened = Replica(a.store, DEMO_SCHEMA, device="d0", user="u0")
    assert reopened.pending()[0].error == ("forbidden", "no write access to accounts")
    a.retry("accounts", rid)
    assert status(a, rid) == ("pending", None)
    assert [c.record for c, _ in a.outgoing()] == [rid, other, rid]


def test_fix_replaces_the_rejected_change_and_the_held_ones_by_one_corrected_change(pair: list[Replica]) -> None:
    a, b = pair
    rid = a.create("accounts", {"name": "Acme", "notes": "hello"})
    a.acknowledge(p.id for p in a.pending())
    b.import_updates(a.export_updates())
    a.update("accounts", rid, {"name": "Acme!!", "employees": 5})
    a.update("accounts", rid, {"notes": "hello world", "tags": {"vip"}})
    a.increment("accounts", rid, "visits", 3)
    rejected = a.pending()[0]
    a.reject(rejected.id, "invalid", "name: no '!' allowed")
    before = a.pending()
    seen: list[ChangeEvent] = []
    a.subscribe(seen.append)
    with pytest.raises(ValidationError):  # a bad fix changes nothing
        a.fix("accounts", rid, {"employees": -1})
    assert a.pending() == before and len(before) == 3
    assert status(a, rid)[0] == "error" and seen == []
    gone = a.fix("accounts", rid, {"name": "Acme"})
    assert [g.op for g in gone] == ["update", "update", "increment"]
    [fixed] = a.pending()
    assert fixed.status == "pending" and fixed.id > rejected.id
    assert fixed.fields == {"name": "Acme", "employees": 5, "notes": "hello world", "tags": ["vip"], "visits": 3}
    rec = a.get("accounts", rid)
    assert rec is not None and rec.status == "pending"
    assert (rec["name"], rec["employees"], rec["notes"], rec["tags"], rec["visits"]) == (
        "Acme", 5, "hello world", frozenset({"vip"}), 3)
    assert seen and seen[-1].id == rid
    # what goes out is the fix, not the rejected value: another replica never sees "Acme!!"
    b.import_updates(a.export_updates())
    other = b.get("accounts", rid)
    assert other is not None and other["name"] == "Acme" and other["visits"] == 3 and not other.conflicts
    assert all(h.value != "Acme!!" for h in b.history("accounts", rid))
    # the replica reopened on its store agrees (the fix was committed)
    again = Replica(a.store, DEMO_SCHEMA, device="d0", user="u0")
    assert [p.id for p in again.pending()] == [fixed.id] and again.get("accounts", rid) == a.get("accounts", rid)


def test_fix_of_a_rejected_create_creates_the_record_again(pair: list[Replica]) -> None:
    a, _ = pair
    rid = a.create("accounts", {"name": "Acme", "phone": "555"})
    a.reject(a.pending()[0].id, "forbidden", "not your account")
    a.fix("accounts", rid, {"name": "Acme (mine)"})
    [p] = a.pending()
    assert (p.op, p.fields, p.status) == ("create", {"name": "Acme (mine)", "phone": "555"}, "pending")
    rec = a.get("accounts", rid)
    assert rec is not None and rec["name"] == "Acme (mine)" and rec["phone"] == "555"


def test_fix_needs_a_rejected_change_and_refuses_a_rejected_delete(pair: list[Replica]) -> None:
    a, _ = pair
    rid = a.create("accounts", {"name": "Acme"})
    with pytest.raises(LocalError, match="no rejected change"):
        a.fix("accounts", rid, {"name": "B"})
    a.acknowledge(p.id for p in a.pending())
    a.delete("accounts", rid)
    a.reject(a.pending()[0].id, "forbidden", "may not delete")
    with pytest.raises(RecordDeleted):
        a.fix("accounts", rid, {"name": "B"})
    assert [p.status for p in a.pending()] == ["error"]


def test_discard_record_of_an_errored_create_removes_it(pair: list[Replica]) -> None:
    a, _ = pair
    rid = a.create("accounts", {"name": "Acme"})
    a.update("accounts", rid, {"employees": 5})
    a.reject(a.pending()[0].id, "invalid", "name taken")
    gone = a.discard_record("accounts", rid)
    assert [g.op for g in gone] == ["create", "update"]
    assert a.get("accounts", rid) is None and a.pending() == []
    a.create("accounts", {"name": "Again"}, id=rid)  # the id is free again
    assert status(a, rid) == ("pending", None)


def test_discard_a_pending_change_and_the_later_ones_of_its_record(pair: list[Replica]) -> None:
    a, b = pair
    rid = a.create("accounts", {"name": "Acme", "notes": "hi"})
    other = a.create("accounts", {"name": "Other"})
    a.acknowledge(p.id for p in a.pending())
    b.import_updates(a.export_updates())
    a.update("accounts", rid, {"name": "Typo"})
    a.update("accounts", rid, {"notes": "hi there"})
    a.update("accounts", other, {"employees": 1})
    b.update("accounts", rid, {"phone": "555"})
    a.import_updates(b.export_updates())  # a remote change lands after the ones to discard
    typo = a.pending()[0]
    gone = a.discard(typo.id)
    assert [g.fields for g in gone] == [{"name": "Typo"}, {"notes": "hi there"}]
    rec = a.get("accounts", rid)
    assert rec is not None
    assert (rec.fields["name"], rec.fields["notes"], rec.fields["phone"]) == ("Acme", "hi", "555")
    assert rec.status == "synced"
    assert [p.record for p in a.pending()] == [other]
    # the replica keeps working on the record and converges with b
    a.update("accounts", rid, {"name": "Acme Ltd"})
    b.import_updates(a.export_updates())
    a.import_updates(b.export_updates())
    ra, rb = a.get("accounts", rid), b.get("accounts", rid)
    assert ra is not None and rb is not None
    assert ra.fields == rb.fields and ra.fields["name"] == "Acme Ltd" and ra.conflicts == rb.conflicts == ()
    # discarded, and it stays so after a restart
    reopened = Replica(a.store, DEMO_SCHEMA, device="d0", user="u0")
    rec = reopened.get("accounts", rid)
    assert rec is not None and rec.fields["notes"] == "hi"
    with pytest.raises(LocalError):
        a.discard(typo.id)


def test_errors_for_missing_deleted_and_existing_records(pair: list[Replica]) -> None:
    a, _ = pair
    with pytest.raises(RecordNotFound):
        a.update("accounts", "nope", {"name": "x"})
    with pytest.raises(RecordNotFound):
        a.delete("accounts", "nope")
    with pytest.raises(RecordNotFound):
        a.history("accounts", "nope")
    rid = a.create("accounts", {"name": "Acme"})
    with pytest.raises(RecordExists):
        a.create("accounts", {"name": "Acme"}, id=rid)
    a.delete("accounts", rid)
    with pytest.raises(RecordDeleted):
        a.update("accounts", rid, {"name": "x"})
    with pytest.raises(RecordDeleted):
        a.increment("accounts", rid, "visits")
    a.restore("accounts", rid)
    a.update("accounts", rid, {"name": "back"})


def test_change_events(pair: list[Replica], caplog: pytest.LogCaptureFixture) -> None:
    a, b = pair
    seen: list[ChangeEvent] = []
    unsubscribe = a.subscribe(seen.append)

    def broken(ev: ChangeEvent) -> None:
        raise RuntimeError("listener bug")

    a.subscribe(broken)
    rid = a.create("accounts", {"name": "Acme"})
    b.import_updates(a.export_updates())
    b.update("accounts", rid, {"employees": 2})
    a.import_updates(b.export_updates())
    a.acknowledge(p.id for p in a.pending())
    assert [(e.origin, e.id) for e in seen] == [("local", rid), ("remote", rid), ("status", rid)]
    assert seen[1].record is not None and seen[1].record.fields["employees"] == 2
    assert seen[2].record is not None and seen[2].record.status == "synced"
    assert "listener bug" in caplog.text or any(r.levelno == logging.ERROR for r in caplog.records)
    unsubscribe()
    a.update("accounts", rid, {"employees": 3})
    assert len(seen) == 3
    rec = a.get("accounts", rid)
    assert rec is not None and rec.fields["employees"] == 3  # the broken listener did not stop the write


def test_query_and_conflicts_come_from_rows(pair: list[Replica]) -> None:
    a, _ = pair
    for i in range(5):
        a.create("accounts", {"name": f"n{i}", "employees": i}, id=f"a{i}")
    a.delete("accounts", "a0")
    assert [r.id for r in a.query("accounts", {"employees": 3})] == ["a3"]
    assert a.query("accounts", {"employees": True}) == []  # a bool is not 1 (Python's True == 1 matched a1)
    assert [r.id for r in a.query("accounts", order_by="employees", descending=True, limit=2)] == ["a4", "a3"]
    assert len(a.query("accounts")) == 4 and len(a.query("accounts", include_deleted=True)) == 5
    assert a.query("accounts", lambda r: r.fields["name"] == "n2")[0].id == "a2"


def test_clock_stays_monotonic_across_discard_and_restart() -> None:
    c = Cluster(DEMO_SCHEMA, 1)
    a = c.replicas[0]
    rid = a.create("accounts", {"name": "Acme"})
    for i in range(3):
        a.update("accounts", rid, {"employees": i})
    newest = a.pending()[-1].id
    a.discard_record("accounts", rid)
    assert a.pending() == []
    # the wall clock goes back an hour before the app restarts
    reopened = Replica(a.store, DEMO_SCHEMA, device="d0", user="u0", wall=lambda: c.now - 3_600_000)
    other = reopened.create("accounts", {"name": "Later"})
    assert reopened.pending()[0].id > newest
    assert reopened.get("accounts", other) is not None


def test_a_held_change_keeps_the_relays_reason_until_the_next_answer(tmp_path: Path) -> None:
    """``hold``: pending again, with why (``PendingChange.waiting``), kept across a reopen; the next answer
    replaces it (none: cleared), and a rejection clears it. The record stays ``pending``: nothing failed.
    A change without a reason has none in its stored header (an entry is written on every local write)."""
    path = tmp_path / "phone.db"
    a = Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    rid = a.create("accounts", {"name": "Acme"})
    a.update("accounts", rid, {"employees": 3})
    first, later = (p.id for p in a.pending())
    a.mark_syncing([first, later])
    a.hold([first, later], {first: "builds on writes of device 'tablet'"})
    assert [(p.status, p.waiting) for p in a.pending()] == [
        ("pending", "builds on writes of device 'tablet'"), ("pending", None)]
    assert status(a, rid) == ("pending", None)
    a.close()
    a = Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    try:
        assert [p.waiting for p in a.pending()] == ["builds on writes of device 'tablet'", None]
        raw = a.store.load(("out", later))
        assert raw is not None and b'"w"' not in raw and b'"w"' in (a.store.load(("out", first)) or b"")
        a.hold([first], {first: "a newer reason"})
        assert a.pending()[0].waiting == "a newer reason"
        a.hold([first])  # held with no reason (an older relay, or behind another change)
        assert a.pending()[0].waiting is None
        a.hold([first], {first: "why"})
        a.reject(first, "forbidden", "no")
        pc = a.pending()[0]
        assert (pc.status, pc.error, pc.waiting) == ("error", ("forbidden", "no"), None)
    finally:
        a.close()
    a = Replica.open(path, DEMO_SCHEMA, device="phone", user="alice")
    try:
        assert a.pending()[0].waiting is None
    finally:
        a.close()
