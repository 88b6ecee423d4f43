"""What a new user tries first, end to end over a real relay: each test fails if the behaviour breaks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from crdtsync import Replica
from crdtsync.client import SyncStatus
from crdtsync.errors import RecordBlocked
from crdtsync.relay import Grant
from crdtsync.schema import Collection, Schema, Str

from .conftest import BOUND, SCHEMA, RelayFactory, Watch, client, sync

ALL = frozenset({"*"})


async def test_edits_made_while_the_relay_is_down_sync_by_themselves_when_it_is_back(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    async with client(a, relay.url) as ca, client(b, relay.url) as cb:
        wa, wb = Watch(ca), Watch(cb)
        await sync(ca)
        await sync(cb)
        await relay.stop()
        await wa.wait(lambda s: s.kind == "offline", past=True)
        assert not ca.online
        rid = a.create("accounts", {"name": "made offline"})  # the app keeps working
        assert [p.status for p in a.pending()] == ["pending"]
        got = asyncio.get_running_loop().create_future()
        b.subscribe(lambda ev: got.done() or ev.id != rid or got.set_result(None))
        await relay.start()
        # nobody calls sync_now: the reconnect runs a sync that uploads, and b gets it live or by delta
        done = await wa.wait(lambda s: s.kind == "completed" and s.result is not None and s.result.uploaded == 1)
        assert done.result is not None and not done.result.reset  # same relay db: the cursor still holds
        await asyncio.wait_for(got, BOUND)
        assert "online" in wb.kinds()[wb.kinds().index("offline"):]
    assert a.pending() == [] and (rec := b.get("accounts", rid)) is not None and rec["name"] == "made offline"


async def test_records_created_offline_can_reference_each_other(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    # offline, on two devices: ids are made on the device, so each can point at the other's new record
    head_office = a.create("accounts", {"name": "Head office"}, id="acct-hq")
    branch = b.create("accounts", {"name": "Branch", "parent": head_office}, id="acct-branch")
    dana = a.create("contacts", {"name": "Dana", "account": branch})
    async with client(a, relay.url) as ca, client(b, relay.url) as cb:
        for c in (ca, cb, ca):
            await sync(c)
    for r in (a, b):
        br, d = r.get("accounts", branch), r.get("contacts", dana)
        assert br is not None and d is not None
        assert r.get("accounts", br["parent"]) is not None and r.get("accounts", d["account"]) is not None
        assert br["parent"] == "acct-hq" and d["account"] == "acct-branch"


async def test_a_sync_unit_leaves_other_collections_pending(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a = make_replica("a")
    async with client(a, relay.url) as ca:
        await sync(ca)  # connected and idle (connecting syncs everything by itself)
        acct = a.create("accounts", {"name": "Acme"})
        con = a.create("contacts", {"name": "Dana"})
        res = await sync(ca, ["contacts"])
        assert res.uploaded == 1 and res.collections == ("contacts",)
        assert [(p.collection, p.record, p.status) for p in a.pending()] == [("accounts", acct, "pending")]
        assert (rec := a.get("contacts", con)) is not None and rec.status == "synced"
        res = await sync(ca)
        assert res.uploaded == 1 and a.pending() == []


LOOSE = Schema(*(Collection(c.name, {**c.fields, "name": Str(required=True, max_length=1000)},
                            delete_policy=c.delete_policy) if c.name == "accounts" else c for c in SCHEMA))


async def test_a_change_the_relays_schema_refuses_is_kept_as_error_until_discarded(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    relay = await make_relay()
    old = Replica.open(tmp_path / "old.db", LOOSE, device="old-app", user="u")  # an older, looser app version
    try:
        ok = old.create("accounts", {"name": "fine"})
        rid = old.create("accounts", {"name": "x" * 500})
        old.update("accounts", rid, {"employees": 3})
        async with client(old, relay.url) as c:
            w = Watch(c)
            res = await sync(c)
            assert (res.uploaded, res.rejected, res.held) == (1, 1, 1)
            err = await w.wait(lambda s: s.kind == "error", past=True)
            assert (err.code, err.record) == ("invalid", rid) and err.reason and "120" in err.reason
            rec = old.get("accounts", rid)
            assert rec is not None and rec.status == "error" and rec.error and "invalid" in rec.error
            assert rec["name"] == "x" * 500  # nothing the user wrote is lost
            with pytest.raises(RecordBlocked):
                old.update("accounts", rid, {"employees": 4})
            assert [p.status for p in old.pending()] == ["error", "pending"]
            res = await sync(c)  # still held: nothing resent, nothing lost
            assert (res.uploaded, res.rejected) == (0, 0) and len(old.pending()) == 2
            old.discard_record("accounts", rid)  # the user chooses
            assert old.pending() == [] and old.get("accounts", rid) is None
            res = await sync(c)
        assert relay.relay is not None and relay.relay.log.head == 1
        assert (rec := old.get("accounts", ok)) is not None and rec.status == "synced"
    finally:
        old.close()


async def test_the_user_fixes_a_change_the_relay_refused_and_it_syncs_everywhere(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], tmp_path: Path) -> None:
    relay = await make_relay()
    old = Replica.open(tmp_path / "old.db", LOOSE, device="old-app", user="u")  # an older, looser app version
    peer = make_replica("peer")
    try:
        rid = old.create("accounts", {"name": "x" * 500})
        old.update("accounts", rid, {"employees": 3})
        async with client(old, relay.url) as c, client(peer, relay.url) as cp:
            res = await sync(c)
            assert (res.uploaded, res.rejected, res.held) == (0, 1, 1)
            got = asyncio.get_running_loop().create_future()
            peer.subscribe(lambda ev: got.done() or ev.id != rid or got.set_result(None))
            old.fix("accounts", rid, {"name": "Acme"})  # the user corrects the name the relay refused
            assert [(p.op, p.status) for p in old.pending()] == [("create", "pending")]
            res = await sync(c)
            assert (res.uploaded, res.rejected) == (1, 0) and old.pending() == []
            await asyncio.wait_for(got, BOUND)
            await sync(cp)
        for r in (old, peer):
            rec = r.get("accounts", rid)
            assert rec is not None and (rec["name"], rec["employees"]) == ("Acme", 3) and rec.status == "synced"
        assert relay.relay is not None and relay.relay.log.head == 1  # only the fix was ever stored
    finally:
        old.close()


async def test_where_scoped_reads_never_leak_even_through_a_full_resync(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    grants = {"tok-alice": Grant("alice", frozenset({"accounts"}), frozenset(),
                                 {"accounts": {"owner": "alice"}}),
              "tok-admin": Grant("admin", ALL, ALL)}
    relay = await make_relay(grants, keep_log=5)
    admin, a = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    async with client(admin, relay.url, token="tok-admin") as cadm:
        for i in range(4):
            admin.create("accounts", {"name": f"bob's {i}", "owner": "bob"})
            admin.create("accounts", {"name": f"alice's {i}", "owner": "alice"})
        admin.create("contacts", {"name": "not readable"})
        await sync(cadm)
        async with client(a, relay.url, token="tok-alice") as ca:
            first = await sync(ca)
        assert first.reset and first.downloaded == 4
        moved = admin.query("accounts", where={"name": "alice's 0"})[0].id
        for i in range(10):  # more than keep_log: alice's cursor falls below the floor
            admin.create("accounts", {"name": f"bob's new {i}", "owner": "bob"})
        admin.update("accounts", moved, {"owner": "bob"})  # leaves alice's scope
        await sync(cadm)
        async with client(a, relay.url, token="tok-alice") as ca:
            again = await sync(ca)
    assert again.reset  # a full resync after compaction ...
    owners = {r.id: r["owner"] for r in a.query("accounts")}
    assert set(owners.values()) == {"alice"} and len(owners) == 3  # ... that never sent bob's records
    # the record that left alice's scope was not sent again, nor bob's change: it left her device (the
    # resync did not bring it), as it would have by delta (tests/sync/test_scope_resync.py)
    assert a.get("accounts", moved) is None
    assert a.query("contacts") == []


async def test_a_restarted_relay_keeps_cursors_valid(make_relay: RelayFactory,
                                                     make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    for i in range(20):
        a.create("accounts", {"name": f"n{i}"})
    async with client(a, relay.url) as ca:
        await sync(ca)
    async with client(b, relay.url) as cb:
        assert (await sync(cb)).reset
    await relay.stop()
    await relay.start()
    a.create("accounts", {"name": "after restart"})
    async with client(a, relay.url) as ca:
        await sync(ca)
    async with client(b, relay.url) as cb:
        res = await sync(cb)
    assert not res.reset and (res.received, res.downloaded) == (1, 1)


async def test_two_hundred_offline_changes_upload_in_order_with_progress(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b, c = make_replica("a"), make_replica("b"), make_replica("c")
    for i in range(3):
        c.create("contacts", {"name": f"c{i}"})
    async with client(c, relay.url) as cc:
        await sync(cc)
    ids = [a.create("accounts", {"name": f"n{i:03}"}) for i in range(150)]
    for i in range(50):
        a.update("accounts", ids[i], {"employees": i})
    order = [(p.collection, p.record) for p in a.pending()]
    assert len(order) == 200
    async with client(a, relay.url, batch_size=60) as ca:
        w = Watch(ca)
        res = await sync(ca)
    assert res.uploaded == 200 and a.pending() == []
    # a's first sync: a full resync of what others stored, but not its own 150 records sent back to it
    assert (res.received, res.downloaded, res.reset) == (3, 3, True)
    ups = [(s.done, s.total) for s in w.events if s.kind == "progress" and s.phase == "upload"]
    assert ups == [(60, 200), (120, 200), (180, 200), (200, 200)]
    assert w.kinds().index("started") < w.kinds().index("progress") < w.kinds().index("completed")
    assert relay.relay is not None
    items, _ = relay.relay.log.delta(Grant("x", ALL), "someone-else", 0, None, max_items=1000)
    assert [(i.collection, i.record) for i in items][3:] == order  # stored in the order they were made
    async with client(b, relay.url) as cb:
        await sync(cb)
    assert [b.get("accounts", rid)["employees"] for rid in ids[:50]] == list(range(50))  # type: ignore[index]


async def test_sync_events_are_truthful_and_in_order(make_relay: RelayFactory,
                                                     make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    acct = a.create("accounts", {"name": "Acme"})
    con = a.create("contacts", {"name": "Dana"})
    async with client(a, relay.url) as ca:
        await sync(ca)
    async with client(b, relay.url) as cb:
        await sync(cb)
    a.update("accounts", acct, {"name": "by a"})  # both offline: a same-field clash ...
    a.update("contacts", con, {"email": "a@x"})
    b.update("accounts", acct, {"name": "by b"})
    b.update("accounts", acct, {"employees": 3})
    async with client(a, relay.url) as ca:
        await sync(ca)
    async with client(b, relay.url) as cb:
        w = Watch(cb)
        res = await sync(cb)
    kinds = w.kinds()
    run = kinds[kinds.index("started"):]
    assert run[-2:] == ["completed", "offline"] and run.count("conflict") == res.conflicts == 1  # (closed)
    assert run.index("conflict") > max(i for i, k in enumerate(run) if k == "progress")
    last_down = [s for s in w.events if s.kind == "progress" and s.phase == "download"][-1]
    # b did not make a's two changes; its own two came back neither as received nor as changed
    assert (last_down.done, last_down.total) == (2, 2) == (res.received, res.downloaded)
    assert (res.uploaded, res.rejected, res.reset) == (2, 0, False)
    assert str(w.events[-2]).startswith("completed: 2 up, 2 received, 2 records changed, 0 rejected, 0 held, 1 with")
    status = SyncStatus("conflict", collection="accounts", record=acct, conflicts=())
    assert "accounts/" in str(status)


async def test_resolving_a_conflict_syncs_and_clears_it_everywhere_with_encrypted_replicas(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    relay = await make_relay()
    a = Replica.open(tmp_path / "a.db", SCHEMA, device="a", user="alice", key=b"k" * 32)
    b = Replica.open(tmp_path / "b.db", SCHEMA, device="b", user="bob", key=b"q" * 32)
    try:
        rid = a.create("accounts", {"name": "Acme"})
        async with client(a, relay.url) as ca, client(b, relay.url) as cb:
            await sync(ca)
            await sync(cb)
        a.update("accounts", rid, {"name": "by alice"})
        b.update("accounts", rid, {"name": "by bob"})
        async with client(a, relay.url) as ca:
            await sync(ca)
        async with client(b, relay.url) as cb:
            res = await sync(cb)  # the first run after connecting: sync_now joins the automatic one
        assert res.conflicts == 1 and res.downloaded == 1
        async with client(a, relay.url) as ca, client(b, relay.url) as cb:
            await sync(ca)
            assert [c.field for c in a.conflicts()] == ["name"] == [c.field for c in b.conflicts()]
            cands = {(x.value, x.user, x.device) for x in a.conflicts()[0].candidates}
            assert cands == {("by alice", "alice", "a"), ("by bob", "bob", "b")}  # who, for the user to pick
            a.resolve("accounts", rid, "name", "Acme Ltd")
            await sync(ca)
            await sync(cb)
        for r in (a, b):
            rec = r.get("accounts", rid)
            assert rec is not None and rec["name"] == "Acme Ltd" and not rec.conflicts and r.conflicts() == []
        assert [(h.user, h.value) for h in b.history("accounts", rid) if h.field == "name"][-1] == (
            "alice", "Acme Ltd")
    finally:
        a.close()
        b.close()


async def test_a_change_built_on_work_the_relay_has_not_seen_waits_on_the_device_not_in_the_relays_memory(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """b got a's new record directly (a file, USB) and edited it; b syncs before a does. The relay cannot
    integrate b's change yet: it holds it back (not acknowledged, not stored), b keeps it pending and sends
    it again once a has synced, even across a relay restart."""
    relay = await make_relay()
    a, b, c = make_replica("a"), make_replica("b"), make_replica("c")
    rid = a.create("accounts", {"name": "Acme", "notes": "hello"})
    b.import_updates(a.export_updates())
    b.update("accounts", rid, {"notes": "hello world", "employees": 3})
    async with client(b, relay.url) as cb:
        res = await sync(cb)
    assert (res.uploaded, res.rejected, res.held) == (0, 0, 1)
    assert [(p.record, p.status) for p in b.pending()] == [(rid, "pending")]
    await relay.stop()
    await relay.start()  # nothing of b's change may live only in the relay's memory
    async with client(a, relay.url) as ca:
        assert (await sync(ca)).uploaded == 1
    async with client(b, relay.url) as cb:
        res = await sync(cb)
    assert (res.uploaded, res.held) == (1, 0) and b.pending() == []
    async with client(c, relay.url) as cc, client(a, relay.url) as ca:
        await sync(cc)
        await sync(ca)
    for r in (a, b, c):
        rec = r.get("accounts", rid)
        assert rec is not None and (rec["name"], rec["notes"], rec["employees"]) == ("Acme", "hello world", 3)


async def test_a_held_change_goes_out_by_itself_once_the_changes_it_builds_on_reach_the_relay(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme"})
    b.import_updates(a.export_updates())
    b.update("accounts", rid, {"employees": 3})
    async with client(b, relay.url) as cb:
        wb = Watch(cb)
        res = await sync(cb)
        assert res.held == 1 and len(b.pending()) == 1
        async with client(a, relay.url) as ca:
            await sync(ca)  # a's record reaches the relay; b, live, hears of it
        # past: b may finish sending it again before a's own sync returns
        done = await wb.wait(lambda s: s.kind == "completed" and s.result is not None and s.result.uploaded == 1,
                             past=True)
        assert done.result is not None and done.result.held == 0
    assert b.pending() == []
    assert relay.relay is not None and relay.relay.log.head == 2


async def test_a_stale_form_saved_with_base_keeps_what_arrived_while_it_was_open(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """The explorer's stale form, over a relay: a form saved with ``base=`` is accepted, and the rename, the
    tag and the increment another device synced while it was open stay; a rename the user made too is a
    conflict on both devices."""
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    a.create("accounts", {"name": "Acme", "tags": {"a"}, "visits": 1}, id="acme")
    async with client(a, relay.url) as ca, client(b, relay.url) as cb:
        await sync(ca)
        await sync(cb)
        shown = a.get("accounts", "acme")  # the form opens on a
        assert shown is not None
        b.update("accounts", "acme", {"name": "Acme Ltd", "tags": {"a", "b"}, "owner": "bob"})
        b.increment("accounts", "acme", "visits", 2)
        await sync(cb)
        await sync(ca)  # a syncs while the form is open
        a.update("accounts", "acme", {**shown.fields, "owner": "alice", "visits": 3}, base=shown)
        await sync(ca)
        await sync(cb)
        assert a.pending() == []
    for r in (a, b):
        rec = r.get("accounts", "acme")
        assert rec is not None
        assert (rec["name"], rec["tags"], rec["owner"], rec["visits"]) == ("Acme Ltd", {"a", "b"}, "alice", 5)
        (c,) = rec.conflicts
        assert c.field == "owner" and [x.value for x in c.candidates] == ["alice", "bob"]
