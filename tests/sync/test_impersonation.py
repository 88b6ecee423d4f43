"""A device may write only in its own name: slots, set entries, and history entries ("who did what")."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest
from pycrdt import Array, Doc, Text
from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.errors import AuthError
from crdtsync.model.record import RecordDoc
from crdtsync.protocol import Ack, Change, Push
from crdtsync.relay import Grant
from crdtsync.relay.clients import sv_clients

from .conftest import SCHEMA, RawClient, RelayFactory, RelayHandle, client, sync

ALL = frozenset({"*"})
GRANTS = {"tok-alice": Grant("alice", ALL, ALL), "tok-mallory": Grant("mallory", ALL, ALL)}


def stored(relay: RelayHandle, rid: str) -> bytes:
    assert relay.relay is not None
    return relay.relay.log.record_update("accounts", rid)


async def push_raw(relay: RelayHandle, token: str, device: str, rid: str, update: bytes) -> Ack:
    async with connect(relay.url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        raw = RawClient(ws)
        await raw.handshake(device)
        raw.conn.send(Push(1, (Change(1, "accounts", rid, update),)))
        await raw.flush()
        [ack] = await raw.next_events()
    assert isinstance(ack, Ack)
    return ack


def history_edit(base: bytes, edit: Callable[[Array[str]], None]) -> bytes:
    """An update that only touches the history array, made with plain pycrdt, as an attacker would."""
    doc: Doc = Doc()
    doc.apply_update(base)
    before = doc.get_state()
    edit(doc.get("h", type=Array))
    return doc.get_update(before)


@pytest.fixture
async def shared(make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> tuple[RelayHandle, str]:
    relay = await make_relay(GRANTS)
    alice = make_replica("alice-phone", "alice")
    rid = alice.create("accounts", {"name": "Acme"})
    async with client(alice, relay.url, token="tok-alice") as c:
        await sync(c)
    return relay, rid


def entry(device: str, user: str) -> str:
    return orjson.dumps({"f": "name", "o": "set", "v": "Evil", "d": device, "u": user, "t": 2**50}).decode()


@pytest.mark.parametrize(("device", "user", "why"), [
    ("alice-phone", "alice", "claims device 'alice-phone'"),     # another device's name
    ("mallory-phone", "alice", "claims user 'alice'"),           # its own device, another user
])
async def test_a_forged_history_entry_is_forbidden(shared: tuple[RelayHandle, str], device: str, user: str,
                                                    why: str) -> None:
    relay, rid = shared
    before = stored(relay, rid)
    update = history_edit(before, lambda h: h.append(entry(device, user)))
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, update)
    assert [(r.code, why in r.reason) for r in ack.rejected] == [("forbidden", True)]
    assert stored(relay, rid) == before  # nothing stored, and the relay's copy was restored


async def test_history_is_append_only(shared: tuple[RelayHandle, str]) -> None:
    relay, rid = shared
    update = history_edit(stored(relay, rid), lambda h: h.__delitem__(0))
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, update)
    assert [(r.code, "append-only" in r.reason) for r in ack.rejected] == [("forbidden", True)]


async def test_a_slot_naming_another_user_is_forbidden(shared: tuple[RelayHandle, str]) -> None:
    relay, rid = shared
    doc = RecordDoc(SCHEMA["accounts"], rid, writer="mallory-phone", device="mallory-phone", user="alice",
                    client_id=4242, updates=[stored(relay, rid)])
    update = doc.write({"name": "Mine now"}, 2**50)
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, update)
    assert [(r.code, "claims user 'alice'" in r.reason) for r in ack.rejected] == [("forbidden", True)]
    # the same write in its own name is fine
    doc = RecordDoc(SCHEMA["accounts"], rid, writer="mallory-phone", device="mallory-phone", user="mallory",
                    client_id=4243, updates=[stored(relay, rid)])
    ack = await push_raw(relay, "tok-mallory", "mallory-phone", rid, doc.write({"name": "Mine now"}, 2**50))
    assert not ack.rejected and len(ack.ok) == 1


async def test_a_replica_of_another_user_gets_a_clear_error(shared: tuple[RelayHandle, str],
                                                            make_replica: Callable[..., Replica]) -> None:
    relay, _ = shared
    r = make_replica("bob-laptop", "bob")
    r.create("accounts", {"name": "x"})
    async with client(r, relay.url, token="tok-alice") as c:
        with pytest.raises(AuthError, match=r"belongs to user 'alice'.*writes as 'bob'"):
            await sync(c)
    assert [p.status for p in r.pending()] == ["pending"]  # nothing lost, nothing sent


async def test_a_device_cannot_write_items_under_another_devices_yjs_client_id(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """The hijack this stops: mallory writes items as alice's Yjs client at the clocks alice uses next;
    the relay would then take alice's real next change for one it has (acknowledged, never stored)."""
    relay = await make_relay(GRANTS)
    alice = make_replica("alice-phone", "alice")
    rid = alice.create("accounts", {"name": "Acme", "notes": "hello"})
    async with client(alice, relay.url, token="tok-alice") as c:
        await sync(c)
    seen: Doc = Doc()
    seen.apply_update(stored(relay, rid))  # what every device reading the record receives
    [alice_client] = sv_clients(b"\x00", seen.get_state())
    forged_doc: Doc = Doc(client_id=alice_client)
    forged_doc.apply_update(stored(relay, rid))
    before = forged_doc.get_state()
    name = "t:notes"  # the text field's root (docs/records.md)
    forged_doc.get(name, type=Text).insert(5, " from mallory")
    forged = forged_doc.get_update(before)
    ack = await push_raw(relay, "tok-mallory", "mallory-pc", rid, forged)
    [rej] = ack.rejected
    assert rej.code == "forbidden" and str(alice_client) in rej.reason
    alice.update("accounts", rid, {"notes": "hello world"})  # alice's next items: the clocks mallory aimed at
    async with client(alice, relay.url, token="tok-alice") as c:
        res = await sync(c)
    assert res.uploaded == 1 and res.rejected == 0
    check: Doc = Doc()
    check.apply_update(stored(relay, rid))
    assert str(check.get(name, type=Text)) == "hello world"
