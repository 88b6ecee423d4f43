"""A record that leaves a device's ``where`` scope (reassigned to another owner) leaves the device too: live,
by delta after being offline, and never while the device holds unsent work on it. Real relay, real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from crdtsync import ChangeEvent, Replica
from crdtsync.relay import Grant

from .conftest import BOUND, RelayFactory, RelayHandle, client, sync

ALL = frozenset({"*"})
GRANTS = {
    "tok-admin": Grant("admin", ALL, ALL),
    "tok-alice": Grant("alice", frozenset({"accounts"}), frozenset({"accounts"}),
                       {"accounts": {"owner": "alice"}}),
}


def removed(r: Replica) -> tuple[list[str], asyncio.Future[None], Callable[[str], None]]:
    """Ids of records the replica announces as removed, and a future set once ``expect`` ids are all in."""
    ids: list[str] = []
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    want: set[str] = set()

    def on(ev: ChangeEvent) -> None:
        if ev.record is None and ev.origin == "remote":
            ids.append(ev.id)
            if want and want <= set(ids) and not fut.done():
                fut.set_result(None)

    def expect(rid: str) -> None:
        want.add(rid)

    r.subscribe(on)
    return ids, fut, expect


async def test_a_reassigned_record_leaves_the_device_live_and_by_delta(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(GRANTS)
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    live_one = admin.create("accounts", {"name": "Live", "owner": "alice"})
    offline_one = admin.create("accounts", {"name": "Offline", "owner": "alice"})
    stays = admin.create("accounts", {"name": "Stays", "owner": "alice"})
    never = admin.create("accounts", {"name": "Bob's", "owner": "bob"})
    async with client(admin, relay.url, token="tok-admin") as cadm:
        await sync(cadm)
        ids, gone, expect = removed(alice)
        async with client(alice, relay.url, token="tok-alice") as ca:
            await sync(ca)
            assert {r.id for r in alice.query("accounts")} == {live_one, offline_one, stays}
            expect(live_one)
            admin.update("accounts", live_one, {"owner": "bob"})
            admin.update("accounts", stays, {"name": "Stays (renamed)"})  # in scope still: no eviction
            await sync(cadm)
            await asyncio.wait_for(gone, BOUND)  # live: the record leaves while alice is connected
            assert alice.get("accounts", live_one) is None
        admin.update("accounts", offline_one, {"owner": "carol"})  # while alice is offline
        admin.update("accounts", never, {"name": "Bob's, renamed"})  # never hers: she hears nothing of it
        await sync(cadm)
        async with client(alice, relay.url, token="tok-alice") as ca:
            res = await sync(ca)
        assert not res.reset  # a delta, not a full resync
    assert sorted(ids) == sorted([live_one, offline_one])
    assert [r.id for r in alice.query("accounts")] == [stays]
    assert (rec := alice.get("accounts", stays)) is not None and rec["name"] == "Stays (renamed)"
    # the relay still has everything; the admin still sees everything
    assert {r.id for r in admin.query("accounts")} == {live_one, offline_one, stays, never}


async def reassigned_under_offline_work(relay: RelayHandle, admin: Replica, alice: Replica) -> str:
    """An account of alice's that she edits offline while the admin reassigns it to bob: her change is then
    refused (``forbidden``) and kept. Returns its id."""
    rid = admin.create("accounts", {"name": "Acme", "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as cadm:
        await sync(cadm)
        async with client(alice, relay.url, token="tok-alice") as ca:
            await sync(ca)
        alice.update("accounts", rid, {"phone": "555"})  # offline work
        admin.update("accounts", rid, {"owner": "bob"})  # meanwhile reassigned
        await sync(cadm)
        async with client(alice, relay.url, token="tok-alice") as ca:
            assert (await sync(ca)).rejected == 1
    return rid


async def test_a_record_with_unsent_work_stays_and_its_change_becomes_an_error(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(GRANTS)
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    rid = await reassigned_under_offline_work(relay, admin, alice)
    rec = alice.get("accounts", rid)
    assert rec is not None and rec.status == "error" and rec["phone"] == "555"  # kept for the user
    assert [p.error[0] for p in alice.pending() if p.error] == ["forbidden"]
    # the user gives up the change: the record leaves with it (the relay will not tell again: it stayed on
    # the device for good, with its old values, shown as synced)
    ids, _, _ = removed(alice)
    alice.discard_record("accounts", rid)
    assert alice.get("accounts", rid) is None and ids == [rid]
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)
    assert alice.get("accounts", rid) is None and alice.query("accounts") == []


async def test_a_record_back_in_scope_before_its_refused_change_is_discarded_stays(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(GRANTS)
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    rid = await reassigned_under_offline_work(relay, admin, alice)
    admin.update("accounts", rid, {"owner": "alice", "name": "Acme 2"})  # hers again
    async with client(admin, relay.url, token="tok-admin") as cadm:
        await sync(cadm)
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)  # its whole state comes: news of it, so it stays
    alice.discard_record("accounts", rid)
    rec = alice.get("accounts", rid)
    assert rec is not None and rec["name"] == "Acme 2" and rec["phone"] is None and rec.status == "synced"
