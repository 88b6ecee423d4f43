"""The lww-field, lww-record and lww-patch strategies behind the same Replica API."""

from __future__ import annotations

import pytest

from crdtsync import Collection, Counter, Int, Replica, Schema, Set, Str, Text
from crdtsync.errors import RemoteValidationError
from crdtsync.model.drafts import SERVER_WRITER, DraftRecordDoc
from crdtsync.schema import Strategy
from crdtsync.store import MemoryStore

BASE = Schema(Collection("acc", {"name": Str(), "phone": Str(), "size": Int(), "notes": Text(),
                                 "tags": Set(Str()), "visits": Counter()}))
T0 = 1_767_225_600_000


class Clock:
    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self) -> int:
        return self.at


def replica(strategy: Strategy, device: str, clock: Clock) -> Replica:
    return Replica(MemoryStore(), BASE.with_strategy(strategy), device=device, user=device, wall=clock,
                   random_bytes=lambda n: device.encode().ljust(n, b"\x01")[:n])


def sync(*rs: Replica) -> None:
    for a in rs:
        for b in rs:
            if a is not b:
                b.import_updates(a.export_updates())


@pytest.mark.parametrize("strategy", ["crdt", "lww-field", "lww-record", "lww-patch"])
def test_every_strategy_serves_the_replica_api(strategy: Strategy) -> None:
    c = Clock(T0)
    a, b = replica(strategy, "a", c), replica(strategy, "b", c)
    rid = a.create("acc", {"name": "Acme", "tags": {"x"}})
    a.update("acc", rid, {"size": 3, "notes": "hello"})
    a.increment("acc", rid, "visits", 2)
    rec = a.get("acc", rid)
    assert rec is not None
    assert (rec["name"], rec["size"], rec["notes"], rec["tags"], rec["visits"]) == ("Acme", 3, "hello",
                                                                                      frozenset({"x"}), 2)
    assert [r.id for r in a.query("acc", where={"size": 3})] == [rid]
    assert len(a.pending()) == 3
    sync(a, b)
    assert b.get("acc", rid) is not None and b.get("acc", rid).fields == rec.fields  # type: ignore[union-attr]
    a.delete("acc", rid)
    sync(a, b)
    assert b.get("acc", rid).deleted  # type: ignore[union-attr]
    assert b.query("acc") == []


def test_lww_field_lets_a_fast_clock_beat_a_later_informed_edit() -> None:
    fast, slow = Clock(T0 + 60_000), Clock(T0)
    a, b = replica("lww-field", "a", fast), replica("lww-field", "b", slow)
    rid = a.create("acc", {"name": "Acme"})
    sync(a, b)
    b.update("acc", rid, {"name": "Acme Ltd"})  # made after seeing "Acme", but b's clock is 60 s behind
    sync(a, b)
    assert a.get("acc", rid)["name"] == "Acme" == b.get("acc", rid)["name"]  # type: ignore[index]
    assert a.conflicts() == [] and b.conflicts() == []
    crdt_a, crdt_b = replica("crdt", "a", fast), replica("crdt", "b", slow)
    rid = crdt_a.create("acc", {"name": "Acme"})
    sync(crdt_a, crdt_b)
    crdt_b.update("acc", rid, {"name": "Acme Ltd"})
    sync(crdt_a, crdt_b)
    assert crdt_a.get("acc", rid)["name"] == "Acme Ltd"  # type: ignore[index]


def test_lww_field_drops_the_losing_value_of_a_clash_without_a_trace() -> None:
    c = Clock(T0)
    a, b = replica("lww-field", "a", c), replica("lww-field", "b", c)
    rid = a.create("acc", {"name": "Acme"})
    sync(a, b)
    c.at += 10
    a.update("acc", rid, {"name": "from a"})
    c.at += 10
    b.update("acc", rid, {"name": "from b", "phone": "1"})
    sync(a, b)
    for r in (a, b):
        rec = r.get("acc", rid)
        assert rec is not None and (rec["name"], rec["phone"], rec.conflicts) == ("from b", "1", ())


def _server(strategy: Strategy) -> DraftRecordDoc:
    return DraftRecordDoc(BASE.with_strategy(strategy).collection("acc"), "r1", writer=SERVER_WRITER,
                          device=SERVER_WRITER, user="server", client_id=0x7FFFFFFE)


def _drafts(strategy: Strategy) -> tuple[Replica, Replica, DraftRecordDoc, list[bytes]]:
    """Two devices with the same copy of r1; each edits a different field offline; returns their uploads."""
    c = Clock(T0)
    a, b = replica(strategy, "a", c), replica(strategy, "b", c)
    server = _server(strategy)
    a.create("acc", {"name": "Acme", "phone": "0"}, id="r1")
    for _, u in a.outgoing():
        server.apply(u)
    image = server.replay(1).update
    a.acknowledge([p.id for p in a.pending()])
    b.apply_remote([("acc", "r1", image)])
    a.apply_remote([("acc", "r1", image)])
    a.update("acc", "r1", {"name": "Acme Corp"})
    b.update("acc", "r1", {"phone": "555"})
    return a, b, server, [u for _, u in a.outgoing()] + [u for _, u in b.outgoing()]


def test_lww_record_overwrites_the_whole_record_in_arrival_order() -> None:
    a, _, server, (from_a, from_b) = _drafts("lww-record")
    server.apply(from_a)
    server.replay(2)
    server.apply(from_b)
    r = server.replay(3)
    assert [d.writer for d in r.applied] == ["b"]
    img = server.image()
    assert img is not None and img.fields["name"] == "Acme" and img.fields["phone"] == "555"  # a's edit: gone
    a.apply_remote([("acc", "r1", server.full_update())])
    a.acknowledge([p.id for p in a.pending()])
    assert a.get("acc", "r1")["name"] == "Acme"  # type: ignore[index]


def test_lww_record_arrival_order_decides() -> None:
    _, _, server, (from_a, from_b) = _drafts("lww-record")
    server.apply(from_b)
    server.replay(2)
    server.apply(from_a)
    server.replay(3)
    img = server.image()
    assert img is not None and (img.fields["name"], img.fields["phone"]) == ("Acme Corp", "0")


def test_lww_patch_keeps_other_fields_but_last_applied_wins_a_field() -> None:
    _, _, server, (from_a, from_b) = _drafts("lww-patch")
    server.apply(from_a)
    server.replay(2)
    server.apply(from_b)
    server.replay(3)
    img = server.image()
    assert img is not None and (img.fields["name"], img.fields["phone"]) == ("Acme Corp", "555")


def test_a_retried_draft_is_applied_once() -> None:
    _, _, server, (from_a, from_b) = _drafts("lww-record")
    server.apply(from_a)
    server.replay(2)
    server.apply(from_b)
    server.replay(3)
    server.apply(from_a)  # the same upload again (a lost acknowledgement)
    again = server.replay(4)
    assert again.update == b"" and again.applied == ()
    img = server.image()
    assert img is not None and img.fields["phone"] == "555" and img.n == 3


def test_a_draft_for_a_deleted_record_is_rejected_and_a_second_delete_is_a_no_op() -> None:
    c = Clock(T0)
    a, b = replica("lww-record", "a", c), replica("lww-record", "b", c)
    server = _server("lww-record")
    a.create("acc", {"name": "Acme"}, id="r1")
    for _, u in a.outgoing():
        server.apply(u)
    image = server.replay(1).update
    a.acknowledge([p.id for p in a.pending()])
    a.apply_remote([("acc", "r1", image)])
    b.apply_remote([("acc", "r1", image)])
    a.delete("acc", "r1")
    b.update("acc", "r1", {"phone": "1"})
    b.delete("acc", "r1")
    for _, u in a.outgoing():
        server.apply(u)
    assert server.replay(2).applied
    for _, u in b.outgoing():
        server.apply(u)
    r = server.replay(3)
    assert [d.op for d in r.rejected] == ["set"] and r.applied == ()
    img = server.image()
    assert img is not None and img.deleted


def test_a_draft_naming_an_unknown_field_is_refused() -> None:
    c = Clock(T0)
    other = Schema(Collection("acc", {"name": Str(), "secret": Str()}, strategy="lww-record"))
    a = Replica(MemoryStore(), other, device="a", user="a", wall=c, random_bytes=lambda n: b"\x07" * n)
    a.create("acc", {"name": "x", "secret": "y"}, id="r1")
    server = _server("lww-record")
    with pytest.raises(RemoteValidationError):
        for _, u in a.outgoing():
            server.apply(u)
        server.check()
