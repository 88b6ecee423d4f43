"""A full resync from the relay log a device's cursors come from leaves the device holding what a device
with its scope holds: the records of a ``where``-limited collection it does not bring (they left the scope
while the device was offline, and the log holding that news was compacted) leave the device, while a resync
from another relay log, or from one that lost changes, removes nothing. Real relay, real sockets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from crdtsync import ChangeEvent, Replica
from crdtsync.relay import Grant

from .conftest import RelayFactory, client, sync

ALL = frozenset({"*"})
BOTH = frozenset({"accounts", "contacts"})
GRANTS = {
    "tok-admin": Grant("admin", ALL, ALL),
    "tok-alice": Grant("alice", BOTH, BOTH, {"accounts": {"owner": "alice"}}),  # contacts: no limit
}


def removed(r: Replica) -> list[str]:
    """Ids of the records the replica announces as removed (``ChangeEvent`` with ``record=None``)."""
    ids: list[str] = []

    def on(ev: ChangeEvent) -> None:
        if ev.record is None and ev.origin == "remote":
            ids.append(ev.id)

    r.subscribe(on)
    return ids


async def test_a_record_that_left_the_scope_under_a_compacted_log_leaves_with_the_resync(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """Alice used to keep a reassigned account, stale and shown as ``synced``, once the relay had compacted
    its log past her cursor: the full resync she got instead of the delta carries no "left your scope"
    news, and nothing was removed (a second sync neither)."""
    relay = await make_relay(GRANTS, keep_log=5)
    admin, alice, other = (make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice"),
                           make_replica("alice-tablet", "alice"))
    moved = admin.create("accounts", {"name": "Moved", "owner": "alice"})
    deleted = admin.create("accounts", {"name": "Deleted", "owner": "alice"})
    stays = admin.create("accounts", {"name": "Stays", "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as cadm:
        await sync(cadm)
        async with client(alice, relay.url, token="tok-alice") as ca:
            await sync(ca)
        assert {r.id for r in alice.query("accounts")} == {moved, deleted, stays}
        mine = alice.create("accounts", {"name": "Mine", "owner": "alice"})  # offline work: sent first
        for_bob = alice.create("accounts", {"name": "For bob", "owner": "bob"})  # refused, kept as error
        by_file = other.create("contacts", {"name": "By file"})  # the relay never had it
        alice.import_updates(other.export_updates())
        admin.update("accounts", moved, {"owner": "bob"})  # leaves her scope
        admin.delete("accounts", deleted)
        for i in range(20):  # more than keep_log: her cursor falls below the floor
            admin.create("accounts", {"name": f"Bob's {i}", "owner": "bob"})
        await sync(cadm)
    ids = removed(alice)
    async with client(alice, relay.url, token="tok-alice") as ca:
        res = await sync(ca)
        assert res.reset and (res.uploaded, res.rejected) == (1, 1)
        again = await sync(ca)
    assert not again.reset
    assert ids == [moved] and alice.get("accounts", moved) is None  # gone, announced, once
    rec = alice.get("accounts", deleted)  # deleted on the relay: in scope still, it came, deleted (as by delta)
    assert rec is not None and rec.deleted and rec.status == "synced"
    assert {r.id: r.status for r in alice.query("accounts")} == {stays: "synced", mine: "synced",
                                                                  for_bob: "error"}  # her refused work stays
    assert alice.get("contacts", by_file) is not None  # no ``where`` limit: nothing leaves such a collection


async def test_a_record_that_left_the_scope_leaves_with_a_resync_for_a_collection_readable_again(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """A collection with no cursor (readable again) makes the device ask for a full resync, which replaces
    the delta that would have carried "left your scope": the reassigned account stayed, as after compaction."""
    grants = {**GRANTS, "tok-alice-accounts": Grant("alice", frozenset({"accounts"}), frozenset({"accounts"}),
                                                    {"accounts": {"owner": "alice"}})}
    relay = await make_relay(grants)
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    moved = admin.create("accounts", {"name": "Moved", "owner": "alice"})
    stays = admin.create("accounts", {"name": "Stays", "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as cadm:
        await sync(cadm)
        async with client(alice, relay.url, token="tok-alice-accounts") as ca:  # contacts: no cursor
            await sync(ca)
        admin.update("accounts", moved, {"owner": "bob"})
        await sync(cadm)
    ids = removed(alice)
    async with client(alice, relay.url, token="tok-alice") as ca:  # same limit on accounts, contacts back
        res = await sync(ca)
    assert res.reset and ids == [moved]
    assert [r.id for r in alice.query("accounts")] == [stays]


@pytest.mark.parametrize("how", ["restored from a backup", "moved to a new database"])
async def test_a_resync_from_a_relay_that_lost_changes_or_from_another_relay_removes_nothing(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], tmp_path: Path, how: str) -> None:
    """What such a resync does not bring may be on this device only: the relay's database restored from a
    backup (its head below the device's cursor) lost the records stored after it, and a new database
    (another relay id) has none of them."""
    relay = await make_relay(GRANTS, keep_log=5)
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    first = admin.create("accounts", {"name": "First", "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as cadm:
        await sync(cadm)
    await relay.stop()
    backup = {p.name: p.read_bytes() for p in tmp_path.glob("relay.db*")}
    await relay.start()
    later = admin.create("accounts", {"name": "Later", "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as cadm:
        await sync(cadm)
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)
    assert {r.id for r in alice.query("accounts")} == {first, later}
    if how == "restored from a backup":
        await relay.stop()
        for p in tmp_path.glob("relay.db*"):
            p.unlink()
        for name, data in backup.items():
            (tmp_path / name).write_bytes(data)
        await relay.start()
        assert relay.relay is not None and relay.relay.log.durable == 1  # below alice's cursor
    else:
        relay = await make_relay(GRANTS, keep_log=5, name="new.db")
    ids = removed(alice)
    async with client(alice, relay.url, token="tok-alice") as ca:
        res = await sync(ca)
    assert res.reset and ids == []
    assert {r.id for r in alice.query("accounts")} == {first, later}
