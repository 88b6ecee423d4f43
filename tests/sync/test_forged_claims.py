"""What a change says of time and of what its author had seen is checked against the record the relay
holds: a device stamps its own writes, so a forged time or a forged "seen" claim could otherwise stop
every other device from writing (a clock pushed past 64 bits) or silently override their later writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pycrdt import Doc, Map, Text

from crdtsync import Record, Replica
from crdtsync.clock import MAX_TIME, hlc_pack
from crdtsync.errors import RemoteValidationError
from crdtsync.model.slots import SEP
from crdtsync.relay import Grant

from .conftest import RelayFactory, RelayHandle, client, sync
from .test_impersonation import history_edit, push_raw, stored

ALL = frozenset({"*"})
GRANTS = {"tok-alice": Grant("alice", ALL, ALL), "tok-mallory": Grant("mallory", ALL, ALL)}
DAY_MS = 24 * 3600 * 1000


def now() -> int:
    return hlc_pack(time.time_ns() // 1_000_000, 0)


def map_edit(base: bytes, root: str, key: str, value: dict[str, Any]) -> bytes:
    """An update that sets one entry of the slot map (``f``) or the set map (``s``), made with plain
    pycrdt, as an attacker would."""
    doc: Doc = Doc()
    doc.apply_update(base)
    before = doc.get_state()
    doc.get(root, type=Map)[key] = orjson.dumps(value).decode()
    return doc.get_update(before)


async def _synced_to_another(relay: RelayHandle, alice: Replica, other: Replica, rid: str) -> Record:
    """Alice syncs, then ``other`` (another device of hers) does: the record as ``other`` then has it."""
    for r in (alice, other):
        async with client(r, relay.url, token="tok-alice") as c:
            await sync(c)
    got = other.get("accounts", rid)
    assert got is not None
    return got


def mallory_slot(t: int, seen: dict[str, int] | None = None) -> dict[str, Any]:
    return {"v": "Mallory's", "t": t, "d": "mallory-phone", "u": "mallory", "c": seen or {}}


@pytest.fixture
async def shared(make_relay: RelayFactory, make_replica: Callable[..., Replica]
                 ) -> tuple[RelayHandle, Replica, str]:
    relay = await make_relay(GRANTS)
    alice = make_replica("alice-phone", "alice")
    rid = alice.create("accounts", {"name": "Acme", "tags": {"vip"}})
    async with client(alice, relay.url, token="tok-alice") as c:
        await sync(c)
    return relay, alice, rid


@pytest.mark.parametrize(("t", "why"), [
    (now() + hlc_pack(60 * DAY_MS, 0), "more than 30 days ahead of the relay's clock"),
    (2**63 - 1, "malformed slot"),  # taken in, every device's next change id would not fit in 64 bits
], ids=["60 days ahead", "past 63 bits"])
async def test_a_slot_stamped_far_ahead_is_refused(shared: tuple[RelayHandle, Replica, str], t: int,
                                                   why: str) -> None:
    relay, alice, rid = shared
    before = stored(relay, rid)
    update = map_edit(before, "f", f"name{SEP}mallory-phone", mallory_slot(t))
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, update)
    assert [(r.code, why in r.reason) for r in ack.rejected] == [("invalid", True)], ack
    assert stored(relay, rid) == before
    # and a device taking such a slot in directly refuses it, its clock untouched
    last = alice.clock.last
    if t >= MAX_TIME:
        with pytest.raises(RemoteValidationError, match="malformed slot"):
            alice.apply_remote([("accounts", rid, update)])
    assert alice.clock.last == last
    alice.update("accounts", rid, {"name": "still writable"})


async def test_a_slot_claiming_to_have_seen_writes_the_relay_lacks_is_held(
        shared: tuple[RelayHandle, Replica, str], make_replica: Callable[..., Replica]) -> None:
    """Mallory's slot claims to have seen alice's writes up to a time far ahead: stored, it would win over
    every write alice makes until then, silently, with no conflict."""
    relay, alice, rid = shared
    before = stored(relay, rid)
    forged = mallory_slot(now(), {"alice-phone": now() + hlc_pack(DAY_MS, 0)})
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, map_edit(before, "f", f"name{SEP}mallory-phone",
                                                                              forged))
    assert ack.held == (1,) and ack.ok == () and ack.rejected == ()
    assert ack.waits == ((1, "field 'name' was written after seeing a write of device 'alice-phone' that the relay "
                             "does not have yet (this device got it directly, as by import_updates, and "
                             "'alice-phone' has not synced it): sent again at each sync, it goes in once "
                             "'alice-phone' syncs; or discard_record() gives up this device's changes of the "
                             "record"),)
    assert stored(relay, rid) == before
    alice.update("accounts", rid, {"name": "Acme Ltd"})
    got = await _synced_to_another(relay, alice, make_replica("admin-phone", "alice"), rid)
    assert got.fields["name"] == "Acme Ltd"


async def test_a_set_entry_claiming_to_have_seen_adds_the_relay_lacks_is_held(
        shared: tuple[RelayHandle, Replica, str]) -> None:
    relay, _, rid = shared
    before = stored(relay, rid)
    element = orjson.dumps("vip").decode()
    update = map_edit(before, "s", f"tags{SEP}{element}{SEP}mallory-phone", {"a": 0, "r": {"alice-phone": 10**9}})
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, update)
    assert ack.held == (1,) and ack.ok == () and ack.rejected == ()
    assert [why.startswith("an element of 'tags' was removed after seeing adds of device 'alice-phone' that the "
                           "relay does not have yet") for _, why in ack.waits] == [True]
    assert stored(relay, rid) == before
    # a removal of what the record holds is the device's to make
    ok = map_edit(before, "s", f"tags{SEP}{element}{SEP}mallory-phone", {"a": 0, "r": {"alice-phone": 1}})
    assert (await push_raw(relay, "tok-mallory", "mallory-phone", rid, ok)).ok == (1,)


async def test_a_write_made_after_seeing_a_peers_unsynced_write_waits_for_it(
        shared: tuple[RelayHandle, Replica, str], make_replica: Callable[..., Replica]) -> None:
    """The honest case of a claim beyond what the relay holds: mallory got alice's new write directly
    (a file), edited over it and synced first. The change waits until alice's write reaches the relay,
    then goes in, and wins without a conflict (it was made after seeing alice's)."""
    relay, alice, rid = shared
    mallory = make_replica("mallory-phone", "mallory")
    async with client(mallory, relay.url, token="tok-mallory") as cm:
        await sync(cm)
        alice.update("accounts", rid, {"name": "Acme (alice)"})
        mallory.import_updates(alice.export_updates())
        mallory.update("accounts", rid, {"name": "Acme (mallory, after alice)"})
        res = await sync(cm)
        assert res.held >= 1
        async with client(alice, relay.url, token="tok-alice") as ca:
            await sync(ca)
            await sync(cm)
            await sync(ca)
    for r in (alice, mallory):
        got = r.get("accounts", rid)
        assert got is not None and got.fields["name"] == "Acme (mallory, after alice)" and not got.conflicts
    assert mallory.pending() == []


async def test_a_history_entry_stamped_far_ahead_is_refused(shared: tuple[RelayHandle, Replica, str]) -> None:
    relay, _, rid = shared
    before = stored(relay, rid)
    entry = {"f": "name", "o": "set", "v": "x", "d": "mallory-phone", "u": "mallory",
             "t": now() + hlc_pack(60 * DAY_MS, 0)}
    update = history_edit(before, lambda h: h.append(orjson.dumps(entry).decode()))
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, update)
    assert [(r.code, "a history entry is stamped" in r.reason) for r in ack.rejected] == [("invalid", True)]
    assert stored(relay, rid) == before


@pytest.mark.parametrize("root", ["junk", "t:name"])  # (name is a Str field: its value is in its slot)
async def test_root_types_outside_the_records_fields_are_refused(shared: tuple[RelayHandle, Replica, str],
                                                                 root: str) -> None:
    """Stored, they would reach every reader, unseen through any API: room for covert data."""
    relay, _, rid = shared
    before = stored(relay, rid)
    doc: Doc = Doc()
    doc.apply_update(before)
    sv = doc.get_state()
    if root.startswith("t:"):
        doc.get(root, type=Text).insert(0, "hidden")
    else:
        doc.get(root, type=Map)["x"] = "hidden"
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, doc.get_update(sv))
    assert [(r.code, "root types" in r.reason) for r in ack.rejected] == [("invalid", True)], ack
    assert stored(relay, rid) == before


async def test_a_device_that_imported_a_file_from_a_clock_far_ahead_still_syncs(
        shared: tuple[RelayHandle, Replica, str], tmp_path: Path) -> None:
    """Its clock took the file's times in whole, and the relay refused every change it made (on any record)
    for the next 10 days, until its wall clock caught up."""
    relay, alice, rid = shared
    ahead = Replica.open(tmp_path / "ahead.db", alice.schema, device="ahead-phone", user="alice",
                         wall=lambda: time.time_ns() // 1_000_000 + 40 * DAY_MS)
    ahead.create("accounts", {"name": "From the future"})
    alice.import_updates(ahead.export_updates())
    ahead.close()
    alice.update("accounts", rid, {"name": "Acme, edited after the import"})
    async with client(alice, relay.url, token="tok-alice") as c:
        res = await sync(c)
    assert res.rejected == 0 and alice.pending() == []


async def test_a_deletion_of_items_the_relay_lacks_is_held_not_kept_pending(
        shared: tuple[RelayHandle, Replica, str], make_replica: Callable[..., Replica]) -> None:
    """Mallory pushes an update holding only a delete set, over alice's next clocks (items she has not
    written yet). It was acknowledged, and Yrs kept the deletion pending in the relay's copy: alice's next
    change then lost its values and its history entries, under her name, on every device but hers."""
    from crdtsync.codec import varuint_bytes

    relay, alice, rid = shared
    sv = Doc()
    sv.apply_update(stored(relay, rid))
    client_id, clock = _only_client(sv.get_state())  # alice's Yjs client, and her next clock
    forged = b"\x00" + b"".join(varuint_bytes(n) for n in (1, client_id, 1, clock, 1 << 20))
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, forged)
    assert ack.ok == () and ack.held == (1,)
    alice.update("accounts", rid, {"name": "Acme Corp", "employees": 12})
    tablet = make_replica("alice-tablet", "alice")
    rec = await _synced_to_another(relay, alice, tablet, rid)
    assert (rec["name"], rec["employees"]) == ("Acme Corp", 12)
    assert [h.value for h in tablet.history("accounts", rid) if h.field == "employees"] == [12]


def _only_client(state: bytes) -> tuple[int, int]:
    """The (client, clock) of a one-client encoded state vector."""
    from crdtsync.codec import Reader

    r = Reader(state)
    assert r.varuint() == 1
    return r.varuint(), r.varuint()


def _one_item(parent: bytes, kind: int, content: bytes, key: str | None = None) -> bytes:
    """A Yjs v1 update of one item by a new client, its parent written out, encoded by hand (pycrdt cannot
    make these shapes)."""
    from crdtsync.codec import varuint_bytes

    def text(s: str) -> bytes:
        b = s.encode()
        return varuint_bytes(len(b)) + b

    info = kind | (0x20 if key is not None else 0)
    item = bytes([info]) + parent + (text(key) if key is not None else b"") + content
    return b"\x01\x01" + varuint_bytes(987654321) + b"\x00" + item + b"\x00"


def _root(name: str) -> bytes:
    return b"\x01" + bytes([len(name)]) + name.encode()


_STR = b"\x01\x77\x06hidden"  # an Any item of one string


@pytest.mark.parametrize(("update", "says"), [
    (_one_item(_root("h"), 8, _STR, key="k"), "an item under a key in 'h'"),
    (_one_item(_root("t:notes"), 8, _STR, key="k"), "an item under a key in 't:notes'"),
    (_one_item(_root("f"), 8, _STR), "an item without a key in the map 'f'"),
    (_one_item(_root("s"), 8, _STR), "an item without a key in the map 's'"),
    (_one_item(_root("f"), 8, b"\x01\x7d\x05", key="name\x1fmallory-phone"), "a value that is not a string"),
    (_one_item(_root("f"), 3, b"\x03abc", key="name\x1fmallory-phone"), "content of kind 3"),
    (_one_item(b"\x00\x01\x00", 8, _STR), "an item inside a nested shared type"),
], ids=["keyed in h", "keyed in a text", "unkeyed in f", "unkeyed in s", "an int", "binary", "nested"])
async def test_items_no_api_shows_are_refused(shared: tuple[RelayHandle, Replica, str], update: bytes,
                                              says: str) -> None:
    """They passed every check (which read what the maps', the array's and the texts' events report) and
    were stored and sent to every reader, while no API showed them: 4 x 200 KB went into another user's
    record this way."""
    relay, _, rid = shared
    before = stored(relay, rid)
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, update)
    assert [(r.code, says in r.reason) for r in ack.rejected] == [("invalid", True)], ack
    assert stored(relay, rid) == before
