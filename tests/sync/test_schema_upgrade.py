"""A rolling schema upgrade: the relay and one device run a schema with a field and a collection the other
device's app does not know yet. Real relay, real sockets.

A field it lacks goes in, kept hidden (a device's merge checks structure, not its schema's rules), so the
later changes of the record are seen; it shows once the app opens its replica with the new schema. It used
to be refused and set aside, and every later change of the record waited behind it, the record showing
``synced``. An update of a collection it lacks is set aside, not lost when its cursor moves past it, and
goes in when the app opens its replica with the new schema."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from crdtsync import Collection, Replica, Schema
from crdtsync.client.status import SyncStatus
from crdtsync.protocol import Changes, Connection, Item, Pull, Role, Welcome

from .conftest import SCHEMA, RelayFactory, client, snapshot, sync

# the old app: ``accounts`` without ``phone``, no ``contacts`` (SCHEMA, the relay's and the other device's,
# has both)
OLD = Schema(*(Collection(c.name, {n: f for n, f in c.fields.items() if n != "phone"}, delete_policy=c.delete_policy)
               if c.name == "accounts" else c for c in SCHEMA if c.name != "contacts"))


async def test_a_field_an_older_schema_lacks_goes_in_hidden_and_shows_once_the_app_is_upgraded(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], tmp_path: Path) -> None:
    relay = await make_relay()
    new = make_replica("new")
    path = tmp_path / "old-app.db"
    old = Replica.open(path, OLD, device="old", user="u", synchronous="NORMAL")
    rid = new.create("accounts", {"name": "Acme"})
    async with client(new, relay.url) as cn:
        await sync(cn)
    async with client(old, relay.url) as co:
        await sync(co)
    new.update("accounts", rid, {"phone": "555"})  # a field the old app does not know
    new.update("accounts", rid, {"name": "Acme 2"})  # and a later change that builds on it
    async with client(new, relay.url) as cn:
        await sync(cn)
    events: list[SyncStatus] = []
    async with client(old, relay.url) as co:
        co.subscribe(events.append)
        await sync(co)
    assert [e for e in events if e.kind == "error"] == [] and old.set_aside_count() == 0
    rec = old.get("accounts", rid)
    assert rec is not None and rec["name"] == "Acme 2" and "phone" not in rec.fields and rec.status == "synced"
    old.close()
    upgraded = Replica.open(path, SCHEMA, device="old", user="u", synchronous="NORMAL")
    try:
        rec = upgraded.get("accounts", rid)
        assert rec is not None and rec["phone"] == "555" and rec["name"] == "Acme 2"
        async with client(upgraded, relay.url) as cu:
            await sync(cu)
        assert snapshot(upgraded) == snapshot(new)
    finally:
        upgraded.close()


async def test_a_collection_an_older_schema_lacks_is_not_downloaded_and_comes_whole_once_upgraded(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], tmp_path: Path) -> None:
    """The relay and newer apps have ``contacts``, the old app does not: its device asks for the
    collections it knows, so none of them comes (each was set aside here, with an ``error`` event, for as
    long as the app stayed old), live or in a download; once upgraded, the collection comes whole."""
    relay = await make_relay()
    new = make_replica("new")
    path = tmp_path / "old-app.db"
    old = Replica.open(path, OLD, device="old", user="u", synchronous="NORMAL")
    cid = new.create("contacts", {"name": "Ann"})  # a collection the old app does not know
    aid = new.create("accounts", {"name": "Acme"})
    async with client(new, relay.url) as cn:
        await sync(cn)
    events: list[SyncStatus] = []
    renamed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    old.subscribe(lambda ev: renamed.done() or ev.origin != "remote" or ev.id != aid or renamed.set_result(None))
    async with client(old, relay.url) as co, client(new, relay.url) as cn:
        co.subscribe(events.append)
        await sync(co)
        new.create("contacts", {"name": "Bob"})  # live, while the old device is connected
        new.update("accounts", aid, {"name": "Acme 2"})  # (in the same push: the same LIVE frame)
        await sync(cn)
        await asyncio.wait_for(renamed, 20)
    assert [e for e in events if e.kind == "error"] == [] and old.set_aside_count() == 0
    assert (rec := old.get("accounts", aid)) is not None and rec["name"] == "Acme 2"
    old.close()
    upgraded = Replica.open(path, SCHEMA, device="old", user="u", synchronous="NORMAL")
    try:
        assert upgraded.get("contacts", cid) is None
        async with client(upgraded, relay.url) as cu:
            await sync(cu)
        assert snapshot(upgraded) == snapshot(new) and len(upgraded.query("contacts")) == 2
    finally:
        upgraded.close()


async def test_an_update_the_replica_refuses_is_set_aside_until_a_schema_accepts_it(
        make_replica: Callable[..., Replica], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A relay that sends an update of a collection the app lacks (a relay from before the device named
    the collections it wants, scripted here): the update is set aside with one ``error`` event and one
    WARNING line a page (they flooded crash reporting as ERRORs), the page's other updates go in, and the
    update goes in when the app opens its replica with a schema that has the collection."""
    caplog.set_level(logging.INFO, logger="crdtsync.client")
    new = make_replica("new")
    cid = new.create("contacts", {"name": "Ann"})
    aid = new.create("accounts", {"name": "Acme"})
    items = tuple(Item(p.collection, p.record, i + 1, u) for i, (p, u) in enumerate(new.outgoing()))

    async def relay(ws: ServerConnection) -> None:
        conn = Connection(Role.RELAY)
        conn.receive_data(await ws.recv())  # HELLO
        conn.events_received()
        conn.send(Welcome("*", "relay-1", len(items), 0, "*", "*"))
        for data in conn.data_to_send():
            await ws.send(data)
        async for data in ws:
            conn.receive_data(data)
            for pull in [e for e in conn.events_received() if isinstance(e, Pull)]:
                conn.send(Changes(pull.id, items, len(items), len(items), len(items), False, True))
            for out in conn.data_to_send():
                await ws.send(out)

    path = tmp_path / "old-app.db"
    old = Replica.open(path, OLD, device="old", user="u", synchronous="NORMAL")
    events: list[SyncStatus] = []
    async with serve(relay, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with client(old, f"ws://127.0.0.1:{port}") as co:
            co.subscribe(events.append)
            await sync(co)
    assert [e.code for e in events if e.kind == "error"] == ["invalid"]
    assert old.set_aside_count() == 1 and old.get("accounts", aid) is not None
    lines = [r for r in caplog.records if "set aside" in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.WARNING] and "set aside 1 update(s)" in lines[0].getMessage()
    old.close()
    upgraded = Replica.open(path, SCHEMA, device="old", user="u", synchronous="NORMAL")
    try:
        assert upgraded.set_aside_count() == 0
        assert (rec := upgraded.get("contacts", cid)) is not None and rec["name"] == "Ann"
    finally:
        upgraded.close()


async def test_changes_of_a_collection_the_open_schema_lacks_wait_and_the_rest_syncs(
        make_relay: RelayFactory, tmp_path: Path) -> None:
    """An older app version without ``contacts`` opened a store holding a pending change of it: every sync
    failed at once ("unknown collection") and reconnected in a loop, sending nothing, the other
    collections' changes included."""
    relay = await make_relay()
    path = tmp_path / "phone.db"
    r = Replica.open(path, SCHEMA, device="phone", user="u", synchronous="NORMAL")
    cid = r.create("contacts", {"name": "Ann"})
    r.close()
    no_contacts = Schema(*(c for c in SCHEMA if c.name != "contacts"))
    r = Replica.open(path, no_contacts, device="phone", user="u", synchronous="NORMAL")
    aid = r.create("accounts", {"name": "Acme"})
    async with client(r, relay.url) as c:
        res = await sync(c)
    assert res.uploaded == 1 and [p.collection for p in r.pending()] == ["contacts"]
    assert r.pending()[0].status == "pending"
    r.close()
    r = Replica.open(path, SCHEMA, device="phone", user="u", synchronous="NORMAL")
    try:
        async with client(r, relay.url) as c:
            res = await sync(c)
        assert res.uploaded == 1 and r.pending() == []
        assert relay.relay is not None
        assert relay.relay.log.record_update("contacts", cid) and relay.relay.log.record_update("accounts", aid)
    finally:
        r.close()


async def test_changes_a_relay_refused_are_sent_again_once_it_runs_a_new_schema(
        make_replica: Callable[..., Replica], tmp_path: Path) -> None:
    """A device upgraded before its relay: its change to a field the relay's schema lacks is refused
    (``invalid``) and kept as an error. Once the relay runs the new schema (WELCOME's ``schema``
    fingerprint changes), the next sync sends it again by itself; it stayed an error until the user called
    ``retry()``. A relay restarted with the same schema retries nothing."""
    from crdtsync.relay import Relay, Tokens
    from crdtsync.store import SQLiteStore

    async def start(schema: Schema, port: int = 0) -> tuple[Relay, SQLiteStore, int]:
        store = SQLiteStore(tmp_path / "relay.db", synchronous="NORMAL")
        relay = Relay(store, schema, Tokens(None))
        _, port = await relay.start("127.0.0.1", port)
        return relay, store, port

    async def stop(relay: Relay, store: SQLiteStore) -> None:
        await relay.stop()
        store.close()

    dev = make_replica("dev")
    relay, store, port = await start(OLD)
    try:
        rid = dev.create("accounts", {"name": "Acme", "phone": "555"})
        async with client(dev, f"ws://127.0.0.1:{port}") as c:
            result = await sync(c)
        assert result.rejected == 1 and [p.status for p in dev.pending()] == ["error"]
        await stop(relay, store)
        relay, store, port = await start(OLD, port)  # the same schema: nothing to retry
        async with client(dev, f"ws://127.0.0.1:{port}") as c:
            result = await sync(c)
        assert result.uploaded == 0 and [p.status for p in dev.pending()] == ["error"]
        # as a device whose library kept no fingerprint: the first one it gets counts as a change
        dev.store.remove(("meta", "app", "sync.schema"))
        async with client(dev, f"ws://127.0.0.1:{port}") as c:
            result = await sync(c)
        assert result.uploaded == 0 and result.rejected == 1 and [p.status for p in dev.pending()] == ["error"]
        await stop(relay, store)
        relay, store, port = await start(SCHEMA, port)
        async with client(dev, f"ws://127.0.0.1:{port}") as c:
            result = await sync(c)
        assert result.uploaded == 1 and result.rejected == 0 and dev.pending() == []
        rec = dev.get("accounts", rid)
        assert rec is not None and rec.status == "synced" and rec["phone"] == "555"
    finally:
        await stop(relay, store)
