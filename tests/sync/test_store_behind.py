"""A store that is not its device's latest (restored from a backup after it synced more, or a second install
using the same device id) would reuse Yjs client ids the relay has seen with other content: what it wrote
was dropped as "already there", acknowledged, and lost for everyone else. The relay's WELCOME says the
highest change id it stored from the device; a store that never had it acknowledged, and does not hold it,
stops with ``StoreBehind``. Real relay, real sockets, real files."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crdtsync import Replica, StoreBehind

from .conftest import SCHEMA, RelayFactory, RelayHandle, client, sync

#: a fixed wall clock for the devices, near the relay's own (it refuses times far ahead of it)
NOW = time.time_ns() // 1_000_000


def open_store(path: Path, device: str = "phone") -> Replica:
    return Replica.open(path, SCHEMA, device=device, user="u", synchronous="NORMAL")


async def backed_up_then_synced_more(relay: RelayHandle, path: Path, backup: Path) -> str:
    """A phone's store at ``path`` that synced a record, was backed up to ``backup`` (the app closed), then
    synced one more change (E1). Returns the record's id."""
    a = open_store(path)
    rid = a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as c:
        await sync(c)
    a.close()
    shutil.copy(path, backup)
    a = open_store(path)
    a.update("accounts", rid, {"phone": "E1"})
    async with client(a, relay.url) as c:
        await sync(c)
    a.close()
    return rid


async def test_a_store_restored_from_a_backup_stops_instead_of_losing_its_writes(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    relay = await make_relay()
    assert relay.relay is not None
    path, backup = tmp_path / "phone.db", tmp_path / "backup.db"
    rid = await backed_up_then_synced_more(relay, path, backup)
    for f in tmp_path.glob("phone.db*"):
        f.unlink()
    shutil.copy(backup, path)  # restored
    a = open_store(path)
    try:
        a.update("accounts", rid, {"employees": 2})  # E2: the same Yjs clock as E1
        head = relay.relay.log.head
        async with client(a, relay.url) as c:
            with pytest.raises(StoreBehind, match="restored from a backup"):
                await sync(c)
        assert relay.relay.log.head == head  # nothing taken for "already there"
        assert [p.fields for p in a.pending()] == [{"employees": 2}]  # kept, for the user to re-enter
    finally:
        a.close()


async def test_two_stores_with_one_device_id_are_told(make_relay: RelayFactory, tmp_path: Path) -> None:
    relay = await make_relay()
    first, second = open_store(tmp_path / "one.db"), open_store(tmp_path / "two.db")
    try:
        first.create("accounts", {"name": "from the first"})
        async with client(first, relay.url) as c:
            await sync(c)
        second.create("accounts", {"name": "from the second"})
        async with client(second, relay.url) as c:
            await sync(c)  # a store that never synced: fresh Yjs client ids, nothing of it can collide
        first.create("accounts", {"name": "again"})
        async with client(first, relay.url) as c:
            with pytest.raises(StoreBehind, match="another installation uses this device id"):
                await sync(c)
    finally:
        first.close()
        second.close()


async def test_a_change_stored_whose_ack_was_lost_is_not_taken_for_a_restore(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """The relay's last change is then one the store still holds as pending: it sends it again."""
    from .test_discard_returns import _push_as

    relay = await make_relay()
    a = make_replica("a")
    a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as c:
        await sync(c)
    a.create("accounts", {"name": "Bolt"})
    await _push_as(relay.url, "a", a)  # stored; a never got the ack
    async with client(a, relay.url) as c:
        res = await sync(c)
    assert res.uploaded == 1 and a.pending() == []


async def test_a_change_under_an_id_another_store_of_the_device_used_is_refused(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    """Two stores of one device id on clocks that agree to the millisecond number their changes alike; the
    second's change was taken for a resend of the first's, acknowledged, and lost."""
    relay = await make_relay()

    def frozen() -> int:
        return NOW

    first = Replica.open(tmp_path / "one.db", SCHEMA, device="phone", user="u", wall=frozen)
    second = Replica.open(tmp_path / "two.db", SCHEMA, device="phone", user="u", wall=frozen)
    try:
        first.create("accounts", {"name": "from the first"})
        rid = second.create("accounts", {"name": "from the second"})
        assert first.pending()[0].id == second.pending()[0].id
        async with client(first, relay.url) as c:
            await sync(c)
        async with client(second, relay.url) as c:
            res = await sync(c)
        assert (res.uploaded, res.rejected) == (0, 1)
        rec = second.get("accounts", rid)
        assert rec is not None and rec.status == "error" and rec.error is not None
        assert "another installation uses this device id" in rec.error
    finally:
        first.close()
        second.close()


async def test_a_reinstall_behind_the_old_install_s_clock_is_not_taken_for_a_restore(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    """The old install's change ids ran an hour ahead (its clock had met a device's fast clock); the new
    install numbers below them. The relay's ``last`` is the change stored last, not the highest id."""
    relay = await make_relay()
    hour = 3_600_000
    old = Replica.open(tmp_path / "old.db", SCHEMA, device="phone", user="u", wall=lambda: NOW + hour)
    old.create("accounts", {"name": "from the old install"})
    async with client(old, relay.url) as c:
        await sync(c)
    old.close()
    new = Replica.open(tmp_path / "new.db", SCHEMA, device="phone", user="u", wall=lambda: NOW)
    try:
        new.create("accounts", {"name": "first"})
        async with client(new, relay.url) as c:
            await sync(c)
        new.create("accounts", {"name": "second"})
        async with client(new, relay.url) as c:
            assert (await sync(c)).uploaded == 1  # no StoreBehind
    finally:
        new.close()


async def test_a_restored_store_is_stopped_after_compaction_and_a_relay_restart(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], tmp_path: Path) -> None:
    """Compaction drops dedup keys; the relay's ``last`` of a device survives it (and the restart)."""
    relay = await make_relay(keep_log=10)
    path, backup = tmp_path / "phone.db", tmp_path / "backup.db"
    rid = await backed_up_then_synced_more(relay, path, backup)
    b = make_replica("b")
    for i in range(40):  # the log compacts past a's changes
        b.create("contacts", {"name": f"c{i}"})
    async with client(b, relay.url, batch_size=5) as c:
        await sync(c)
    assert relay.relay is not None and relay.relay.log.floor > 2
    await relay.stop()
    await relay.start()
    for f in tmp_path.glob("phone.db*"):
        f.unlink()
    shutil.copy(backup, path)
    a = open_store(path)
    try:
        a.update("accounts", rid, {"employees": 2})
        async with client(a, relay.url) as c:
            with pytest.raises(StoreBehind):
                await sync(c)
    finally:
        a.close()


def _copy_store(src: Path, dst: Path) -> None:
    for f in dst.parent.glob(dst.name + "*"):
        f.unlink()
    shutil.copy(src, dst)


async def _fresh_view(relay: RelayHandle, path: Path, rid: str) -> dict[str, object]:
    v = Replica.open(path, SCHEMA, device=f"viewer-{path.stem}", user="u", synchronous="NORMAL")
    try:
        async with client(v, relay.url) as c:
            await sync(c)
        rec = v.get("accounts", rid)
        assert rec is not None
        return {k: rec.fields.get(k) for k in ("name", "employees", "visits")}
    finally:
        v.close()


async def test_a_store_restored_from_a_backup_taken_before_its_first_sync_cannot_wipe_what_synced(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    """The backup holds a record created offline, not synced: the store never had an ack, so WELCOME's check
    does not apply. Its next writes to the record reused the Yjs clocks of the writes the device synced after
    the backup: the relay acknowledged them, skipped their items as known and applied their deletions to the
    items it held (the synced name became None for every device, the new writes were lost). They are refused
    now, and kept on the device as an error."""
    relay = await make_relay()
    path, backup = tmp_path / "phone.db", tmp_path / "backup.db"
    a = open_store(path)
    rid = a.create("accounts", {"name": "Acme"})
    a.close()
    shutil.copy(path, backup)
    a = open_store(path)
    a.update("accounts", rid, {"employees": 10})
    a.increment("accounts", rid, "visits", 1)
    async with client(a, relay.url) as c:
        await sync(c)
    a.close()
    assert await _fresh_view(relay, tmp_path / "v1.db", rid) == {"name": "Acme", "employees": 10, "visits": 1}
    _copy_store(backup, path)  # restored
    a = open_store(path)
    try:
        a.update("accounts", rid, {"name": "Acme Corp", "employees": 40})
        async with client(a, relay.url) as c:
            res = await sync(c)
        assert res.rejected == 1
        rec = a.get("accounts", rid)
        assert rec is not None and rec.status == "error" and rec.error is not None
        assert "reuse clocks" in rec.error and "open a new store" in rec.error
        assert rec.fields["name"] == "Acme Corp"  # the user's write is kept on the device
    finally:
        a.close()
    assert await _fresh_view(relay, tmp_path / "v2.db", rid) == {"name": "Acme", "employees": 10, "visits": 1}


async def test_two_copies_of_a_store_online_at_once_cannot_both_write_the_same_clocks(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    """Both copies passed WELCOME's check before either pushed; the second's writes reused the clocks of the
    first's, were acknowledged and silently dropped. The second's change is refused now."""
    relay = await make_relay()
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    a = open_store(one)
    rid = a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as c:
        await sync(c)
    a.close()
    shutil.copy(one, two)
    first, second = open_store(one), open_store(two)
    try:
        async with client(first, relay.url) as c1, client(second, relay.url) as c2:
            await sync(c1)
            await sync(c2)  # both connected and checked
            first.update("accounts", rid, {"name": "copy one"})
            assert (await sync(c1)).uploaded == 1
            second.update("accounts", rid, {"employees": 22})
            res = await sync(c2)
        assert (res.uploaded, res.rejected) == (0, 1)
        rec = second.get("accounts", rid)
        assert rec is not None and rec.status == "error" and rec.error is not None and "reuse clocks" in rec.error
    finally:
        first.close()
        second.close()
    assert await _fresh_view(relay, tmp_path / "v.db", rid) == {"name": "copy one", "employees": None, "visits": 0}


async def test_a_change_resent_after_its_ack_was_lost_and_its_log_entry_compacted_is_acknowledged(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """Its items are the ones the relay holds (a resend, not another copy's writes at the same clocks): the
    relay still knows it had changes of the device up to it, across a restart, with the log compacted."""
    from .test_discard_returns import _push_as

    relay = await make_relay(keep_log=1)
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as c:
        await sync(c)
    a.update("accounts", rid, {"employees": 5})
    await _push_as(relay.url, "a", a)  # stored; a never got the ack
    for i in range(4):  # other devices' groups: the log compacts the change away, with its dedup key
        b.create("accounts", {"name": f"B{i}"})
        async with client(b, relay.url) as c:
            await sync(c)
    assert relay.relay is not None and relay.relay.log.floor >= 2
    await relay.stop()
    await relay.start()
    async with client(a, relay.url) as c:
        res = await sync(c)
    assert (res.uploaded, res.rejected) == (1, 0) and a.pending() == []
    rec = a.get("accounts", rid)
    assert rec is not None and rec.status == "synced" and rec.fields["employees"] == 5


async def test_a_copy_s_write_numbered_below_the_other_copy_s_latest_is_refused_too(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    """The original wrote first but synced last: its change id is below the copy's, which the relay stored,
    so it looked like a resend (it has no dedup key, and none was compacted away: it is not one)."""
    relay = await make_relay()
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    a = open_store(one)
    rid = a.create("accounts", {"name": "Acme"})  # pending, never synced
    a.close()
    shutil.copy(one, two)
    now = time.time_ns() // 1_000_000 + 1_000  # past the create's time
    original = Replica.open(one, SCHEMA, device="phone", user="u", synchronous="NORMAL", wall=lambda: now)
    copy = Replica.open(two, SCHEMA, device="phone", user="u", synchronous="NORMAL", wall=lambda: now + 10)
    try:
        original.update("accounts", rid, {"phone": "ORIGINAL"})
        copy.update("accounts", rid, {"employees": 42})  # 10 ms later
        assert original.pending()[-1].id < copy.pending()[-1].id
        async with client(copy, relay.url) as c:
            assert (await sync(c)).uploaded == 2
        async with client(original, relay.url) as c:
            res = await sync(c)
        assert (res.uploaded, res.rejected) == (1, 1)  # its create is the copy's (the same bytes): acknowledged
        rec = original.get("accounts", rid)
        assert rec is not None and rec.status == "error" and rec.error is not None and "reuse clocks" in rec.error
    finally:
        original.close()
        copy.close()


def test_a_log_an_older_relay_compacted_still_takes_a_resend_whose_dedup_key_is_gone() -> None:
    """An older relay compacted without noting the highest compacted id per device (nor the device's latest
    change): a change it stored, resent after a lost ack, must not be taken for a copy's."""
    from crdtsync.protocol.events import Change
    from crdtsync.relay.log import RelayLog
    from crdtsync.store import MemoryStore

    from .test_relay_dedup import stage

    r = Replica(MemoryStore(), SCHEMA, device="d", user="u")
    rid = r.create("accounts", {"name": "A"})
    r.update("accounts", rid, {"employees": 1})
    changes = [Change(p.id, p.collection, p.record, u) for p, u in r.outgoing()]
    store = MemoryStore()
    lg = RelayLog(store, SCHEMA)
    assert stage(lg, changes)[1] == [c.change_id for c in changes]
    for c in changes:  # as an older relay's compaction left it
        store.remove(("dedup", "d", c.change_id))
    for key in (("relay", "last", "d"), ("relay", "compaction-noted")):
        store.remove(key)
    store.save(("relay", "floor"), b"2")
    assert stage(RelayLog(store, SCHEMA), changes[1:]) == ([changes[1].change_id], [])
