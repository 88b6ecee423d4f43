"""The auth matrix: every refusal has a clear reason, stores nothing and leaks nothing."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crdtsync import Replica
from crdtsync.errors import AuthError, RecordBlocked, SyncError
from crdtsync.model.record import RecordDoc
from crdtsync.protocol import Ack, Bye, Change, Pull, Push
from crdtsync.relay import Grant, Tokens, load_tokens

from .conftest import BOUND, RawClient, RelayFactory, RelayHandle, Watch, client, sync

TOKENS = """
[tokens."tok-alice"]
user = "alice"
read = ["accounts", "contacts"]
write = ["accounts"]
where = { accounts = { owner = "alice" } }
rooms = ["*"]

[tokens."tok-bob"]
user = "bob"
read = "*"
write = "*"
where = { accounts = { owner = "bob" } }

[tokens."tok-rita"]
user = "rita"
read = ["accounts"]
rooms_read_only = ["lobby"]
"""


@pytest.fixture
def grants(tmp_path: Path) -> dict[str, Grant]:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS)
    return load_tokens(path)


def head(relay: RelayHandle) -> int:
    assert relay.relay is not None
    return relay.relay.log.head


async def closed_with(url: str, headers: dict[str, str] | None = None) -> tuple[int | None, str | None]:
    async with connect(url, additional_headers=headers or {}) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), BOUND)
        return ws.close_code, ws.close_reason


async def test_missing_and_wrong_tokens_are_refused_before_anything_is_read(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(grants)
    assert await closed_with(relay.url) == (4401, "missing token")
    assert await closed_with(relay.url, {"Authorization": "Bearer nope"}) == (4401, "unknown token")
    assert await closed_with(relay.url + "/?token=nope") == (4401, "unknown token")
    r = make_replica("x")
    r.create("accounts", {"name": "sneaky", "owner": "alice"})
    reports: list[str] = []  # asyncio's "Future exception was never retrieved" and the like
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reports.append(ctx["message"]))
    async with client(r, relay.url, token="wrong") as c:
        with pytest.raises(AuthError, match="4401"):
            await sync(c)
    gc.collect()  # (an unretrieved exception is reported when its future is collected)
    assert reports == []
    assert head(relay) == 0 and len(r.pending()) == 1


async def test_read_only_token_writing_is_rejected_and_kept_as_error(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(grants)
    r = make_replica("rita-phone", "rita")
    rid = r.create("accounts", {"name": "mine"})
    r.update("accounts", rid, {"employees": 3})
    other = r.create("contacts", {"name": "c"})
    async with client(r, relay.url, token="tok-rita") as c:
        w = Watch(c)
        res = await sync(c)
    assert (res.uploaded, res.rejected, res.held) == (0, 2, 1)
    assert head(relay) == 0
    # the order docs/sync.md gives: a first sync with pending changes downloads first; each push's errors
    # come before the progress event that counts their changes as answered
    assert [str(e).split(":")[0] for e in w.events if e.kind != "online"] == [
        "started", "progress download 0 of 0", "error", "error", "progress upload 3 of 3",
        "progress download 0 of 0", "completed", "offline"]  # (the client closed)
    rec = r.get("accounts", rid)
    assert rec is not None and rec.status == "error" and rec.error is not None and "forbidden" in rec.error
    assert "may not write 'accounts'" in rec.error
    pend = {(p.record, p.status) for p in r.pending()}
    assert pend == {(rid, "error"), (rid, "pending"), (other, "error")}  # the later change waits, kept
    with pytest.raises(RecordBlocked):
        r.update("accounts", rid, {"employees": 4})


async def test_writes_outside_the_granted_collections_or_records_are_forbidden(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(grants)
    a = make_replica("alice-phone", "alice")
    ok = a.create("accounts", {"name": "hers", "owner": "alice"})
    bobs = a.create("accounts", {"name": "not hers", "owner": "bob"})
    con = a.create("contacts", {"name": "not writable"})
    async with client(a, relay.url, token="tok-alice") as c:
        res = await sync(c)
        assert (res.uploaded, res.rejected) == (1, 2)
        a.update("accounts", ok, {"owner": "bob"})  # giving a record away puts it out of her scope
        res2 = await sync(c)
        assert res2.rejected == 1
    errs = {p.record: p.error for p in a.pending() if p.error}
    assert errs[bobs] is not None and errs[bobs][0] == "forbidden" and "outside" in errs[bobs][1]
    assert errs[con] is not None and errs[con][0] == "forbidden" and "'contacts'" in errs[con][1]
    assert errs[ok] is not None and errs[ok][0] == "forbidden"
    assert head(relay) == 1


async def test_reads_outside_the_grant_are_not_leaked(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(grants)
    b, a = make_replica("bob-phone", "bob"), make_replica("alice-phone", "alice")
    b.create("accounts", {"name": "bob's", "owner": "bob"})
    b.create("secrets", {"name": "bob's secret"})
    mine = a.create("accounts", {"name": "alice's", "owner": "alice"})
    async with client(b, relay.url, token="tok-bob") as cb, client(a, relay.url, token="tok-alice") as ca:
        assert (await sync(cb)).uploaded == 2
        await sync(ca)
        assert [x.id for x in a.query("accounts")] == [mine]
        assert a.query("secrets") == []
        # the live stream respects the scope too: bob's next write does not reach alice
        b.create("accounts", {"name": "bob's 2", "owner": "bob"})
        await sync(cb)
        await sync(ca)
    assert [x.id for x in a.query("accounts")] == [mine] and a.query("secrets") == []
    assert {x["owner"] for x in b.query("accounts")} == {"bob"}  # nor bob alice's (his where: owner = bob)


async def test_a_device_cannot_write_another_writers_slot(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    victim = make_replica("victim")
    rid = victim.create("accounts", {"name": "real"})
    async with client(victim, relay.url) as c:
        await sync(c)
    # mallory's device writes a slot tagged with the victim's writer tag (crafted by hand: a Replica
    # would never do it), on top of the record's real state
    doc = RecordDoc(victim.schema["accounts"], rid, writer="victim", device="victim", user="mallory",
                    client_id=4242, updates=[relay_state(relay, rid)])
    update = doc.write({"name": "forged"}, 2**50)
    async with connect(relay.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("mallory-phone")
        raw.conn.send(Push(1, (Change(1, "accounts", rid, update),)))
        await raw.flush()
        acks = await raw.next_events()
    [ack] = acks
    assert isinstance(ack, Ack) and ack.rejected and ack.rejected[0].code == "forbidden"
    assert "writer 'victim'" in ack.rejected[0].reason
    assert head(relay) == 1


def relay_state(relay: RelayHandle, rid: str) -> bytes:
    assert relay.relay is not None
    return relay.relay.log.record_update("accounts", rid)


async def test_a_device_id_belongs_to_one_user(make_relay: RelayFactory, grants: dict[str, Grant],
                                               make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(grants)
    async with client(make_replica("shared", "alice"), relay.url, token="tok-alice") as c:
        await sync(c)
    async with client(make_replica("shared2", "bob"), relay.url, token="tok-bob") as c2:
        c2.replica.device = "shared"  # pretend to be alice's device
        with pytest.raises(AuthError, match="4403"):
            await sync(c2)


async def test_access_revoked_while_offline_turns_changes_into_errors(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(grants)
    a = make_replica("alice-phone", "alice")
    rid = a.create("accounts", {"name": "hers", "owner": "alice"})
    async with client(a, relay.url, token="tok-alice") as c:
        await sync(c)
    a.update("accounts", rid, {"employees": 7})  # offline
    a.update("accounts", rid, {"phone": "1"})
    assert relay.relay is not None
    relay.relay.tokens = Tokens({"tok-alice": Grant("alice", frozenset({"accounts"}))})  # read only now
    async with client(a, relay.url, token="tok-alice") as c:
        res = await sync(c)
    assert (res.rejected, res.held) == (1, 1)
    rec = a.get("accounts", rid)
    assert rec is not None and rec.status == "error" and rec.fields["employees"] == 7  # kept for the user
    assert [p.status for p in a.pending()] == ["error", "pending"]
    assert a.discard_record("accounts", rid)  # the user chooses to discard
    rec = a.get("accounts", rid)
    assert rec is not None and rec.status == "synced" and rec.fields["employees"] is None
    assert head(relay) == 1


async def test_tokens_reloaded_while_devices_are_connected_apply_to_them(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    """A reload (SIGHUP) used to reach only new connections: a connected device kept writing, and kept
    receiving, under the grant it connected with, even with its token removed."""
    relay = await make_relay(grants)
    assert relay.relay is not None
    a = make_replica("alice-phone", "alice")
    rid = a.create("accounts", {"name": "hers", "owner": "alice"})
    async with client(a, relay.url, token="tok-alice") as c:
        await sync(c)
        relay.relay.tokens = Tokens({**grants, "tok-alice": Grant("alice", frozenset({"accounts"}))})  # read only
        a.update("accounts", rid, {"employees": 7})
        res = await sync(c)  # on a new connection: the old one was closed (1012) and the client reconnected
        assert res.rejected == 1 and a.get("accounts", rid).status == "error"  # type: ignore[union-attr]
        assert head(relay) == 1
        relay.relay.tokens = Tokens({k: v for k, v in grants.items() if k != "tok-alice"})  # token removed
        with pytest.raises(AuthError, match="4401"):
            await sync(c)
    assert head(relay) == 1


async def test_records_of_a_collection_no_longer_readable_leave_the_device_and_come_back_with_access(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    """They stayed, frozen and shown as synced; a record leaving a ``where`` scope left already. Back with
    access, they come whole, her own records too (a delta from 0 would skip those: a full resync)."""
    grants = {**grants, "tok-admin": Grant("admin", frozenset({"*"}), frozenset({"*"}))}
    relay = await make_relay(grants)
    assert relay.relay is not None
    admin = make_replica("admin-pc", "admin")
    theirs = admin.create("accounts", {"name": "Kim", "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as cb:
        await sync(cb)
    alice = make_replica("alice-phone", "alice")
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)
        hers = alice.create("accounts", {"name": "Ann", "owner": "alice"})
        await sync(ca)
        assert {r.id for r in alice.query("accounts")} == {theirs, hers}
        relay.relay.tokens = Tokens({**grants, "tok-alice": Grant("alice", frozenset({"contacts"}))})
        await sync(ca)  # on the new connection (1012): accounts are not readable any more
        assert alice.query("accounts") == [] and alice.get("accounts", hers) is None
        relay.relay.tokens = Tokens(grants)  # access back
        res = await sync(ca)
        assert res.reset and {r.id for r in alice.query("accounts")} == {theirs, hers}


async def test_tokens_reloaded_close_room_connections_whose_access_changed(
        make_relay: RelayFactory, grants: dict[str, Grant]) -> None:
    grants = {**grants, "tok-dan": Grant("dan", rooms=frozenset({"*"}))}
    relay = await make_relay(grants)
    assert relay.relay is not None
    async with connect(relay.url + "/yjs/lobby?token=tok-alice") as alice, \
            connect(relay.url + "/yjs/lobby?token=tok-rita") as rita, \
            connect(relay.url + "/yjs/lobby?token=tok-dan") as dan:
        for ws in (alice, rita, dan):
            await asyncio.wait_for(ws.recv(), BOUND)  # the room's sync step 1: in the room
        changed = dict(grants)
        changed["tok-alice"] = Grant("alice", rooms_read_only=frozenset({"lobby"}))  # read only now
        del changed["tok-rita"]
        relay.relay.tokens = Tokens(changed)  # dan's grant is unchanged
        for ws, code in ((alice, 1012), (rita, 4401)):
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), BOUND)
            assert ws.close_code == code
        await asyncio.wait_for(await dan.ping(), BOUND)  # still connected
    assert (await closed_with(relay.url + "/yjs/lobby?token=tok-rita"))[0] == 4401


async def test_room_grants(make_relay: RelayFactory, grants: dict[str, Grant]) -> None:
    relay = await make_relay(grants)
    assert (await closed_with(relay.url + "/yjs/lobby?token=nope"))[0] == 4401
    code, reason = await closed_with(relay.url + "/yjs/private?token=tok-rita")
    assert code == 4403 and reason is not None and "may not join room 'private'" in reason
    assert grants["tok-rita"].can_join_room("lobby") and not grants["tok-rita"].can_write_room("lobby")
    assert grants["tok-alice"].can_write_room("anything")


async def test_a_sync_unit_outside_the_grant_is_refused_with_a_reason(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(grants)
    a = make_replica("alice-phone", "alice")
    async with client(a, relay.url, token="tok-alice") as c:
        with pytest.raises(SyncError, match="may not read 'secrets'"):
            await sync(c, ["secrets"])
        await sync(c, ["contacts"])  # the client goes on
    async with connect(relay.url, additional_headers={"Authorization": "Bearer tok-alice"}) as ws:
        raw = RawClient(ws)
        await raw.handshake("alice-phone")
        raw.conn.send(Pull(1, 0, None, ("accounts", "secrets")))
        await raw.flush()
        reason = "user 'alice' may not read 'secrets'"
        assert await raw.next_events() == [Bye(4403, reason)]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), BOUND)
        assert ws.close_code == 4403 and ws.close_reason == reason


async def test_a_record_entering_a_scope_arrives_whole(
        make_relay: RelayFactory, grants: dict[str, Grant], make_replica: Callable[..., Replica]) -> None:
    grants = {**grants, "tok-admin": Grant("admin", frozenset({"*"}), frozenset({"*"}))}
    relay = await make_relay(grants)
    admin, a = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    b = make_replica("alice-tablet", "alice")
    rid = admin.create("accounts", {"name": "handed over", "employees": 9, "owner": "bob"})
    admin.update("accounts", rid, {"phone": "123"})
    async with client(admin, relay.url, token="tok-admin") as cadm, \
            client(a, relay.url, token="tok-alice") as ca:
        await sync(cadm)
        await sync(ca)
        async with client(b, relay.url, token="tok-alice") as cb:
            await sync(cb)  # the tablet has a cursor now: its next sync is a delta
        assert a.get("accounts", rid) is None  # bob's: not in alice's scope
        got: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        a.subscribe(lambda ev: got.done() or ev.id != rid or got.set_result(None))
        admin.update("accounts", rid, {"owner": "alice"})  # only this change is in the log entry
        await sync(cadm)
        await asyncio.wait_for(got, BOUND)  # live: the whole record, not just the owner change
    rec = a.get("accounts", rid)
    assert rec is not None and (rec["name"], rec["employees"], rec["phone"], rec["owner"]) == (
        "handed over", 9, "123", "alice")
    async with client(b, relay.url, token="tok-alice") as cb:
        res = await sync(cb)  # and the same by delta sync
    assert not res.reset and res.downloaded == 1
    got_b = b.get("accounts", rid)
    assert got_b is not None and got_b.fields == rec.fields


async def test_devices_of_an_open_pilot_connect_under_tokens_later(make_relay: RelayFactory,
                                                                   make_replica: Callable[..., Replica]) -> None:
    """An open relay (no tokens) bound every device to its placeholder user, so once tokens came every
    device of the pilot was refused for good (4403, "belongs to another user"). It binds none now."""
    pilot = await make_relay(None)
    phone = make_replica("al-1", "alice")
    rid = phone.create("accounts", {"name": "Pilot"})
    async with client(phone, pilot.url) as c:
        await sync(c)
    await pilot.stop()
    relay = await make_relay({"tok-alice": Grant("alice", frozenset({"*"}), frozenset({"*"}))})
    phone.update("accounts", rid, {"name": "Live"})
    async with client(phone, relay.url, token="tok-alice") as c:
        res = await sync(c)
    assert res.uploaded == 1 and phone.pending() == []
