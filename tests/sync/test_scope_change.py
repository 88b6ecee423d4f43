"""A token whose read scope changes (a tokens reload: SIGHUP) leaves its devices holding what a device with
the new scope holds, at their next sync: a narrowed ``where`` limit evicts the records outside it (those with
pending changes stay until discarded), a widened one brings the records now inside it, and a collection that
becomes readable is downloaded whole. Real relay, real sockets, SQLite replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest
from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.protocol import Hello
from crdtsync.relay import Grant, Limits, Tokens

from .conftest import BOUND, RawClient, RelayFactory, RelayHandle, client, sync

ALL = frozenset({"*"})
ACCOUNTS = frozenset({"accounts"})
WIDE = {"tok-admin": Grant("admin", ALL, ALL), "tok-alice": Grant("alice", ACCOUNTS, ACCOUNTS)}
NARROW = {**WIDE, "tok-alice": Grant("alice", ACCOUNTS, ACCOUNTS, {"accounts": {"owner": "alice"}})}


def names(r: Replica) -> list[str]:
    return sorted(rec["name"] for rec in r.query("accounts"))


async def seeded(relay: RelayHandle, admin: Replica) -> dict[str, str]:
    """Three accounts on the relay: alice's, and two of bob's (one holding a secret)."""
    ids = {"A": admin.create("accounts", {"name": "A", "owner": "alice"}),
           "B": admin.create("accounts", {"name": "B", "owner": "bob", "phone": "bob's secret"}),
           "C": admin.create("accounts", {"name": "C", "owner": "bob"})}
    async with client(admin, relay.url, token="tok-admin") as c:
        await sync(c)
    return ids


async def test_a_narrowed_where_limit_evicts_the_records_outside_it(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """The device used to keep bob's accounts after its limit narrowed to alice's own: frozen (later edits
    never came, its writes were refused), the secret still on it, and a sync received nothing."""
    relay = await make_relay(WIDE)
    assert relay.relay is not None
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    ids = await seeded(relay, admin)
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)
        assert names(alice) == ["A", "B", "C"]
        alice.update("accounts", ids["C"], {"phone": "555"})  # unsent work on a record about to leave
        relay.relay.tokens = Tokens(NARROW)  # the connection is closed (1012); the client reconnects
        res = await sync(ca)
        assert res.rejected == 1  # her change to C: outside her limit now
        assert alice.get("accounts", ids["B"]) is None  # gone, the secret with it
        assert names(alice) == ["A", "C"]  # C stays with her refused change, for her to export or discard
        assert alice.get("accounts", ids["C"]).status == "error"  # type: ignore[union-attr]
        assert alice.discard_record("accounts", ids["C"])
        assert names(alice) == ["A"]  # and then leaves
        async with client(admin, relay.url, token="tok-admin") as cadm:
            admin.update("accounts", ids["A"], {"phone": "1"})
            admin.update("accounts", ids["B"], {"phone": "bob's new secret"})
            await sync(cadm)
        res = await sync(ca)
        assert not res.reset  # the next sync is a delta again: the new limit is remembered
    assert names(alice) == ["A"] and alice.get("accounts", ids["A"])["phone"] == "1"  # type: ignore[index]


async def test_a_widened_where_limit_brings_the_records_inside_it(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """A device that first synced under the narrow limit used to get the records now in scope only once
    they changed: a sync after the widening brought nothing."""
    relay = await make_relay(NARROW)
    assert relay.relay is not None
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-tablet", "alice")
    ids = await seeded(relay, admin)
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)
        assert names(alice) == ["A"]
        relay.relay.tokens = Tokens(WIDE)
        await sync(ca)
        assert names(alice) == ["A", "B", "C"]
        assert alice.get("accounts", ids["B"])["phone"] == "bob's secret"  # type: ignore[index]
        res = await sync(ca)
        assert not res.reset and res.received == 0
    relay.relay.tokens = Tokens(NARROW)  # narrowed while the device is offline: the same at its next sync
    async with client(alice, relay.url, token="tok-alice") as ca:
        res = await sync(ca)
    assert res.reset and names(alice) == ["A"]


async def test_a_collection_that_becomes_readable_comes_whole_after_live_updates(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """A live update moved the cursor of every collection of the schema, unreadable ones too: once one
    became readable, its first download was a delta from there, without the records made before."""
    grants = {**WIDE, "tok-alice": Grant("alice", ACCOUNTS, ACCOUNTS)}
    relay = await make_relay(grants)
    assert relay.relay is not None
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    contact = admin.create("contacts", {"name": "Kim"})
    async with client(admin, relay.url, token="tok-admin") as cadm, \
            client(alice, relay.url, token="tok-alice") as ca:
        await sync(cadm)
        await sync(ca)
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rid = admin.create("accounts", {"name": "live one", "owner": "alice"})
        alice.subscribe(lambda ev: ev.id != rid or arrived.done() or arrived.set_result(None))
        await sync(cadm)
        await asyncio.wait_for(arrived, BOUND)  # live, while no pull runs: it moves her cursors
        relay.relay.tokens = Tokens({**grants, "tok-alice": Grant("alice", frozenset({"accounts", "contacts"}),
                                                                  ACCOUNTS)})
        await sync(ca)
    assert alice.get("contacts", contact) is not None


async def test_the_relay_sends_scopes_only_to_clients_that_ask_for_them(make_relay: RelayFactory) -> None:
    """A client from before ``scopes`` refuses a WELCOME with a field it does not know: it is not sent one."""
    relay = await make_relay(NARROW)
    async with connect(relay.url, additional_headers={"Authorization": "Bearer tok-alice"}) as ws:
        new = await RawClient(ws).handshake("alice-new")
    assert new.scopes is not None and set(new.scopes) == {"accounts"}
    async with connect(relay.url, additional_headers={"Authorization": "Bearer tok-alice"}) as ws:
        raw = RawClient(ws)
        raw.conn.send(Hello("alice-old", "crdtsync/0.1"))
        await raw.flush()
        [old] = await raw.next_events()
    assert getattr(old, "scopes", "no welcome") is None
    async with connect(relay.url, additional_headers={"Authorization": "Bearer tok-admin"}) as ws:
        assert (await RawClient(ws).handshake("admin-pc")).scopes == {}  # no limit: no fingerprint


async def test_a_resync_under_a_changed_limit_cut_short_is_done_again(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], monkeypatch: pytest.MonkeyPatch) -> None:
    """The records outside the new limit leave only once the whole resync has arrived, and the new limit is
    stored with its last page: a connection lost half-way leaves the next sync to resync and evict. And a
    connection the relay closes is sent no further page of a resync."""
    relay = await make_relay(WIDE, limits=Limits(page_items=1))  # one record a page
    assert relay.relay is not None
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    ids = await seeded(relay, admin)
    for name in ("A2", "A3"):
        admin.create("accounts", {"name": name, "owner": "alice"})
    async with client(admin, relay.url, token="tok-admin") as c:
        await sync(c)
    armed = False
    made = 0
    real = relay.relay.log.record_update

    def record_update(c: str, rid: str) -> bytes:
        nonlocal made
        made += armed
        if made == 3:  # the resync under the new limit has sent its first page and made its second
            assert relay.relay is not None
            for s in list(relay.relay.sessions):
                s.abort(1011, "cut short by the test")
        return real(c, rid)

    monkeypatch.setattr(relay.relay.log, "record_update", record_update)
    pages: list[int] = []
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)
        assert names(alice) == ["A", "A2", "A3", "B", "C"]
        ca.subscribe(lambda st: pages.append(st.done) if armed and st.phase == "download" else None)
        armed = True
        relay.relay.tokens = Tokens(NARROW)
        await sync(ca)
        assert pages == [1, 1, 2, 3]  # one page, cut; then the whole resync again
        assert names(alice) == ["A", "A2", "A3"] and alice.get("accounts", ids["B"]) is None
        res = await sync(ca)
    assert not res.reset


async def test_a_cursor_stored_without_fingerprints_counts_as_unlimited(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """A store synced by a client from before fingerprints (its cursor has none) under a limit: its limited
    collections are resynced once, as for a limit that changed from none, and then synced by delta."""
    relay = await make_relay(NARROW)
    admin, alice = make_replica("admin-pc", "admin"), make_replica("alice-phone", "alice")
    await seeded(relay, admin)
    async with client(alice, relay.url, token="tok-alice") as ca:
        await sync(ca)
    stored = orjson.loads(alice.get_meta("sync.cursor") or b"{}")
    assert stored["s"] == {"accounts": NARROW["tok-alice"].scopes()["accounts"]}
    del stored["s"]
    alice.set_meta("sync.cursor", orjson.dumps(stored))  # as an older client left it
    async with client(alice, relay.url, token="tok-alice") as ca:
        first, second = await sync(ca), await sync(ca)
    assert first.reset and not second.reset and names(alice) == ["A"]
