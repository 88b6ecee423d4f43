"""Devices editing offline merge through a real relay into identical state; delta sync and full resync."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from crdtsync import Replica
from crdtsync.errors import SyncError

from .conftest import BOUND, RelayFactory, Watch, client, snapshot, sync


async def test_offline_edits_from_three_devices_merge_identically(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b, c = make_replica("a", "alice"), make_replica("b", "bob"), make_replica("c", "carol")
    acct = a.create("accounts", {"name": "Acme", "employees": 10, "notes": "Met the buyer.", "tags": {"lead"}})
    other = a.create("accounts", {"name": "Other"})
    dana = a.create("contacts", {"name": "Dana"})
    async with client(a, relay.url) as ca:
        await sync(ca)
        async with client(b, relay.url) as cb, client(c, relay.url) as cc:
            await sync(cb)
            await sync(cc)
        # b and c are offline now; everybody edits the same records
        b.update("accounts", acct, {"employees": 12, "name": "ACME Inc.", "notes": "Important: Met the buyer."})
        b.increment("accounts", acct, "visits", 2)
        b.update("contacts", dana, {"email": "dana@b.example"})
        c.update("accounts", acct, {"phone": "555", "name": "Acme Corp", "tags": {"lead", "vip"},
                                    "notes": "Met the buyer. Wants a demo."})
        c.increment("accounts", acct, "visits", 3)
        c.delete("contacts", dana)
        c.delete("accounts", other)
        b.update("accounts", other, {"employees": 5})
        a.update("accounts", acct, {"owner": "alice"})
        new_b = b.create("contacts", {"name": "Eve"})
        await sync(ca)
        async with client(b, relay.url) as cb, client(c, relay.url) as cc:
            await sync(cb)
            await sync(cc)
            for cl in (ca, cb, cc):
                await sync(cl)
    assert snapshot(a) == snapshot(b) == snapshot(c)
    rec = a.get("accounts", acct)
    assert rec is not None
    assert rec["employees"] == 12 and rec["phone"] == "555" and rec["owner"] == "alice"
    assert rec["visits"] == 5 and rec["tags"] == frozenset({"lead", "vip"})
    assert rec["notes"] == "Important: Met the buyer. Wants a demo."
    assert [cf.field for cf in rec.conflicts] == ["name"]
    assert {cand.value for cand in rec.conflicts[0].candidates} == {"ACME Inc.", "Acme Corp"}
    d = a.get("contacts", dana)
    assert d is not None and d.deleted and d.conflicts  # delete vs edit: deleted, the edit surfaced
    o = a.get("accounts", other)
    assert o is not None and o.conflicts  # edit vs delete on accounts: surfaced, not silently lost
    assert a.get("contacts", new_b) is not None
    assert a.pending() == b.pending() == c.pending() == []


async def test_delta_sync_downloads_only_what_changed(make_relay: RelayFactory,
                                                      make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    ids = [a.create("accounts", {"name": f"n{i}"}) for i in range(300)]
    async with client(a, relay.url, batch_size=100) as ca:
        up = await sync(ca)
        assert up.uploaded == 300
    async with client(b, relay.url) as cb:
        first = await sync(cb)
        assert first.downloaded == 300 and first.reset
    for rid in ids[:3]:
        a.update("accounts", rid, {"employees": 1})
    async with client(a, relay.url) as ca:
        await sync(ca)
    async with client(b, relay.url) as cb:
        w = Watch(cb)
        delta = await sync(cb)
    assert delta.downloaded == 3 and not delta.reset
    downloads = [e for e in w.events if e.kind == "progress" and e.phase == "download"]
    assert downloads[-1].done == downloads[-1].total == 3
    assert snapshot(a) == snapshot(b)


async def test_old_cursor_gets_a_full_resync_after_compaction(make_relay: RelayFactory,
                                                              make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(keep_log=5)
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "x"})
    async with client(a, relay.url) as ca, client(b, relay.url) as cb:
        await sync(ca)
        await sync(cb)
    for i in range(30):
        a.update("accounts", rid, {"employees": i})
    a.create("contacts", {"name": "late"})
    async with client(a, relay.url, batch_size=4) as ca:
        await sync(ca)
    assert relay.relay is not None and relay.relay.log.floor > 0
    async with client(b, relay.url) as cb:
        res = await sync(cb)
    assert res.reset
    assert snapshot(a) == snapshot(b)


async def test_live_changes_arrive_without_asking(make_relay: RelayFactory,
                                                  make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    async with client(a, relay.url) as ca, client(b, relay.url) as cb:
        await sync(cb)
        got: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        b.subscribe(lambda ev: got.done() or ev.origin != "remote" or got.set_result(ev.id))
        rid = a.create("accounts", {"name": "live"})
        await sync(ca)
        assert await asyncio.wait_for(got, BOUND) == rid


async def test_sync_units_and_one_run_at_a_time(make_relay: RelayFactory,
                                                make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a = make_replica("a")
    a.create("accounts", {"name": "acc"})
    a.create("contacts", {"name": "con"})
    async with client(a, relay.url) as ca:
        w = Watch(ca)
        results = await asyncio.wait_for(asyncio.gather(ca.sync_now(["contacts"]), ca.sync_now(["contacts"]),
                                                        ca.sync_now()), BOUND)
        assert results[0] is results[1]  # identical queued requests are merged
    running = 0
    for k in w.kinds():
        if k == "started":
            running += 1
            assert running == 1, w.kinds()
        elif k in ("completed", "failed"):
            running -= 1
    assert a.pending() == []


async def test_queue_waits_offline_and_can_be_discarded(make_replica: Callable[..., Replica]) -> None:
    a = make_replica("a")
    async with client(a, "ws://127.0.0.1:9") as ca:  # nothing listens on the discard port
        w = Watch(ca)
        pending = asyncio.ensure_future(ca.sync_now())
        await w.wait(lambda s: s.kind == "offline" and s.reason is not None and "cannot reach" in s.reason,
                     past=True)
        assert not pending.done()
        assert ca.discard_queue() >= 1
        try:
            await asyncio.wait_for(pending, BOUND)
            raise AssertionError("a discarded request must not complete")
        except SyncError as e:
            assert "discarded" in str(e)


async def test_scheduled_syncs_run_by_themselves(make_relay: RelayFactory,
                                                 make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a = make_replica("a")
    async with client(a, relay.url, interval=0.05) as ca:
        w = Watch(ca)
        for _ in range(3):  # the one on connect, then at least two from the schedule
            await w.wait(lambda s: s.kind == "completed")
    assert w.kinds().count("completed") >= 3
