"""A change the relay holds back (it builds on another device's writes the relay does not have yet) says why,
on the device: the relay's reason reaches ``pending()`` (``PendingChange.waiting``) and a ``held`` status
event, names the device it waits for when the relay can tell, survives a restart, and is gone once that
device has synced and the change went in. A client that predates the reasons is sent none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.protocol import Ack, Change, Hello, Push
from crdtsync.protocol.frames import Kind, decode_frame
from crdtsync.relay.checks import writer_device
from crdtsync.relay.clients import missing_clients

from .conftest import SCHEMA, RawClient, RelayFactory, Watch, client, sync

UNNAMED = ("it builds on writes that the relay does not have yet (this device got them directly, as by "
           "import_updates, and the device that made them has not synced them): sent again at each sync, it goes "
           "in once the device that made them syncs; or discard_record() gives up this device's changes of the "
           "record")
NAMED = ("it builds on writes of device 'a' that the relay does not have yet (this device got them directly, as by "
         "import_updates, and 'a' has not synced them): sent again at each sync, it goes in once 'a' syncs; or "
         "discard_record() gives up this device's changes of the record")


async def test_a_held_change_says_why_until_the_device_it_waits_for_syncs(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], tmp_path: Path) -> None:
    """b got a's new record by file and edited it; a never synced it: the relay cannot name a (no write
    of a's reached it), but says what the user can do. The record itself stays ``pending``."""
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme", "notes": "hello"})
    b.import_updates(a.export_updates())
    b.update("accounts", rid, {"notes": "hello world", "employees": 3})
    async with client(b, relay.url) as cb:
        wb = Watch(cb)
        res = await sync(cb)
    assert (res.uploaded, res.rejected, res.held) == (0, 0, 1)
    assert "0 rejected, 1 held, 0 with conflicts" in str(res)  # as the app's log shows the run
    [pc] = b.pending()
    assert (pc.status, pc.error, pc.waiting) == ("pending", None, UNNAMED)
    [ev] = [e for e in wb.events if e.kind == "held"]
    kinds = wb.kinds()
    assert kinds[kinds.index("held") + 1] == "progress"  # before the progress that counts it, as errors are
    assert (ev.change_id, ev.collection, ev.record, ev.reason) == (pc.id, "accounts", rid, UNNAMED)
    assert str(ev) == f"held: change {pc.id} of accounts/{rid}: {UNNAMED}"
    rec = b.get("accounts", rid)
    assert rec is not None and (rec.status, rec.error) == ("pending", None)
    b.close()
    b = Replica.open(tmp_path / "b.db", SCHEMA, device="b", user="u", synchronous="NORMAL")
    try:
        assert [(p.id, p.waiting) for p in b.pending()] == [(pc.id, UNNAMED)]
        async with client(a, relay.url) as ca:
            assert (await sync(ca)).uploaded == 1
        async with client(b, relay.url) as cb:
            wb = Watch(cb)
            res = await sync(cb)
        assert (res.uploaded, res.held) == (1, 0) and b.pending() == []
        assert "held" not in wb.kinds()
    finally:
        b.close()


async def test_the_reason_names_the_device_whose_writes_are_missing_and_follows_each_run(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """a synced the record before, then edited it offline; b got the edit by file and edited over it. The
    relay knows the Yjs client a writes the record with: the reason names a. The change behind it in the
    same push has no reason of its own. A later run replaces the reason with the latest one."""
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as ca, client(b, relay.url) as cb:
        await sync(ca)
        await sync(cb)
    a.update("accounts", rid, {"name": "Acme Ltd"})
    b.import_updates(a.export_updates())
    b.update("accounts", rid, {"phone": "555"})
    b.update("accounts", rid, {"employees": 4})
    async with client(b, relay.url) as cb:
        wb = Watch(cb)
        res = await sync(cb)
        assert (res.uploaded, res.held) == (0, 2)
        assert [p.waiting for p in b.pending()] == [NAMED, None]
        assert [(e.change_id, e.reason) for e in wb.events if e.kind == "held"] == [(b.pending()[0].id, NAMED)]
        res = await sync(cb)  # sent and held again: the reason is the relay's latest answer
        assert res.held == 2 and [p.waiting for p in b.pending()] == [NAMED, None]
    async with client(a, relay.url) as ca, client(b, relay.url) as cb:
        await sync(ca)
        await sync(cb)
    assert b.pending() == []
    rec = b.get("accounts", rid)
    assert rec is not None and (rec["name"], rec["phone"], rec["employees"]) == ("Acme Ltd", "555", 4)


async def test_the_relay_sends_reasons_only_to_clients_that_ask_for_them(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """A client from before ``waits`` refuses an ACK with a field it does not know: its ACK holds the same
    outcome, without the field."""
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme"})
    b.import_updates(a.export_updates())
    b.update("accounts", rid, {"employees": 3})
    [(pc, update)] = b.outgoing()
    headers = []
    for device, hello in (("b-new", Hello("b-new")), ("b-old", Hello("b-old", "crdtsync/0.1 scopes"))):
        async with connect(relay.url) as ws:
            raw = RawClient(ws)
            raw.conn.send(hello)
            await raw.flush()
            await raw.next_events()  # WELCOME
            raw.conn.send(Push(1, (Change(pc.id, "accounts", rid, update),)))
            await raw.flush()
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            raw.conn.receive_data(frame)
            [ack] = raw.conn.events_received()
            assert isinstance(ack, Ack) and (ack.ok, ack.rejected, ack.held) == ((), (), (pc.id,)), device
            got = decode_frame(frame)
            assert got.kind is Kind.ACK
            headers.append(got.header)
    new, old = headers
    assert new["waits"] == [[pc.id, UNNAMED]]
    assert "waits" not in old and old == {k: v for k, v in new.items() if k != "waits"}


def test_missing_clients_reads_whose_writes_an_update_builds_on() -> None:
    """The Yjs clients an update needs and a document lacks: those it inserts next to, those it deletes
    from, and its own earlier writes; none it cannot read."""
    from pycrdt import Array, Doc, Map, Text

    a: Doc = Doc(client_id=111)
    a.get("h", type=Array).append("x")
    a.get("f", type=Map)["k"] = "v"
    a.get("t", type=Text).insert(0, "hello")
    empty = Doc().get_state()
    b: Doc = Doc(client_id=222)
    b.apply_update(a.get_update())
    seen = b.get_state()
    b.get("h", type=Array).append({"y": [1, 2.5, None, True, "s", b"\x00"]})
    b.get("t", type=Text).insert(5, " world")
    b.get("f", type=Map)["k2"] = "w"
    built = b.get_update(seen)
    assert missing_clients(built, empty) == [111]
    assert missing_clients(built, seen) == []
    c: Doc = Doc(client_id=333)
    c.apply_update(a.get_update())
    before = c.get_state()
    del c.get("f", type=Map)["k"]  # a deletion only
    assert missing_clients(c.get_update(before), empty) == [111]
    again = b.get_state()
    b.get("f", type=Map)["k3"] = "z"
    assert missing_clients(b.get_update(again), seen) == [222]  # b's own writes before it
    assert missing_clients(b"\x05garbage", empty) == []


def test_a_writer_tag_names_its_device() -> None:
    """A device writes as itself, or as ``device#N`` after a discard: either way the reason names the device."""
    assert [writer_device(w) for w in ("a", "a#2", "a#x", "#server", "a#b#3")] == ["a", "a", "a#x", "#server", "a#b"]
