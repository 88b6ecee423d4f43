"""The drafts strategies (lww-record, lww-patch) through a real relay: the relay replays drafts in arrival order.

Real relay on 127.0.0.1 (ephemeral port, SQLite file), real SyncClients; "offline" is a device whose client
is closed. Every expectation below is the behaviour docs/strategies.md promises, losses included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pycrdt import Doc, Map
from websockets.asyncio.client import connect

from crdtsync import RecordBlocked, Replica, SQLiteStore, SyncClient
from crdtsync.client import SyncResult
from crdtsync.clock import hlc_pack
from crdtsync.model.drafts import IMAGE, SERVER_WRITER, DraftRecordDoc
from crdtsync.protocol import Ack, Change, Push
from crdtsync.relay import Grant, Relay, Tokens
from crdtsync.schema import Collection, Int, Schema, Str

from .conftest import BOUND, RawClient, Watch, fast_backoff

#: a time the relay accepts (at most 30 days ahead of its clock), well after any the test's devices make
SOON = hlc_pack(time.time_ns() // 1_000_000 + 3_600_000, 0)

SCHEMA = Schema(
    Collection("deals", {"name": Str(), "stage": Str(), "amount": Int()}, strategy="lww-record"),
    Collection("tasks", {"name": Str(), "stage": Str(), "amount": Int()}, strategy="lww-patch"),
    Collection("accounts", {"name": Str(), "stage": Str()}),  # crdt, in the same schema
)
ALL = frozenset({"*"})
GRANTS = {"tok-alice": Grant("alice", ALL, ALL), "tok-bob": Grant("bob", ALL, ALL),
          "tok-mallory": Grant("mallory", ALL, ALL)}
TOKEN = {"alice": "tok-alice", "bob": "tok-bob", "mallory": "tok-mallory"}


class Env:
    """One relay and the devices that sync with it, each device synced by a short-lived client."""

    def __init__(self, tmp_path: Path, relay: Relay, tokens: bool) -> None:
        self.tmp_path = tmp_path
        self.relay = relay
        self.tokens = tokens
        self.url = f"ws://127.0.0.1:{relay.address[1]}"
        self.replicas: list[Replica] = []

    def replica(self, device: str, user: str) -> Replica:
        r = Replica.open(self.tmp_path / f"{device}.db", SCHEMA, device=device, user=user, synchronous="NORMAL")
        self.replicas.append(r)
        return r

    def client(self, r: Replica) -> SyncClient:
        return SyncClient(r, self.url, token=TOKEN[r.user] if self.tokens else None, backoff=fast_backoff())

    async def sync(self, r: Replica, watch: list[Watch] | None = None) -> SyncResult:
        """Connect, run one full sync, disconnect (the device is offline again afterwards)."""
        async with self.client(r) as c:
            if watch is not None:
                watch.append(Watch(c))
            result: SyncResult = await asyncio.wait_for(c.sync_now(), BOUND)
        return result

    def stored(self, collection: str, rid: str) -> bytes:
        return self.relay.log.record_update(collection, rid)


@pytest.fixture(params=["open", "tokens"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    store = SQLiteStore(tmp_path / "relay.db", synchronous="NORMAL")
    tokens = request.param == "tokens"
    relay = Relay(store, SCHEMA, Tokens(GRANTS if tokens else None))
    await relay.start("127.0.0.1", 0)
    e = Env(tmp_path, relay, tokens)
    yield e
    await relay.stop()
    for r in e.replicas:
        r.close()
    store.close()


def fields(r: Replica, collection: str, rid: str) -> dict[str, Any]:
    rec = r.get(collection, rid)
    assert rec is not None
    return dict(rec.fields)


async def shared_record(env: Env, collection: str) -> tuple[Replica, Replica, str]:
    """a creates a record and syncs, b syncs: both have the server's copy."""
    a, b = env.replica("a", "alice"), env.replica("b", "bob")
    rid = a.create(collection, {"name": "Acme", "stage": "lead", "amount": 10})
    assert (await env.sync(a)).uploaded == 1
    await env.sync(b)
    assert fields(b, collection, rid) == {"name": "Acme", "stage": "lead", "amount": 10}
    return a, b, rid


async def test_lww_record_last_arrived_whole_record_draft_silently_reverts_another_devices_field(env: Env) -> None:
    a, b, rid = await shared_record(env, "deals")
    a.update("deals", rid, {"name": "Acme Corp"})  # offline, on two devices, different fields
    b.update("deals", rid, {"stage": "won"})
    first = await env.sync(b)  # b's draft arrives first and becomes the server's copy
    assert (first.uploaded, first.rejected) == (1, 0)
    assert fields(b, "deals", rid) == {"name": "Acme", "stage": "won", "amount": 10}
    second = await env.sync(a)  # a's whole-record draft (its stale stage "lead") arrives later: it wins
    assert (second.uploaded, second.rejected) == (1, 0)
    await env.sync(b)
    expected = {"name": "Acme Corp", "stage": "lead", "amount": 10}
    for r in (a, b):
        rec = r.get("deals", rid)
        assert rec is not None and dict(rec.fields) == expected  # b's "won" is lost ...
        assert rec.conflicts == () and r.pending() == []  # ... silently: no conflict, no error
    doc = env.relay.log.reader.get("deals", rid).doc
    assert isinstance(doc, DraftRecordDoc)
    img = doc.image()
    assert img is not None and img.n == 3 and set(img.applied) == {"a", "b"}  # create, b's edit, a's edit
    assert img.by["name"][0] == "a" and img.by["stage"][0] == "b"  # by: who last *changed* a field


async def test_lww_patch_keeps_edits_of_different_fields_and_the_last_arrived_wins_a_same_field_clash(
        env: Env) -> None:
    a, b, rid = await shared_record(env, "tasks")
    a.update("tasks", rid, {"name": "Acme Corp", "amount": 20})
    b.update("tasks", rid, {"stage": "won", "amount": 30})
    await env.sync(b)  # b's changed fields arrive first ...
    await env.sync(a)  # ... a's later: a's amount wins, whatever either had seen
    await env.sync(b)
    for r in (a, b):
        rec = r.get("tasks", rid)
        assert rec is not None and dict(rec.fields) == {"name": "Acme Corp", "stage": "won", "amount": 20}
        assert rec.conflicts == () and r.pending() == []  # b's 30 vanished silently
        assert rec.changed_by["amount"].device == "a" and rec.changed_by["stage"].device == "b"


async def test_a_draft_for_a_record_deleted_on_the_server_is_rejected_gone(env: Env) -> None:
    a, b, rid = await shared_record(env, "deals")
    b.delete("deals", rid)
    await env.sync(b)
    a.update("deals", rid, {"stage": "won"})  # a has not heard of the delete
    watch: list[Watch] = []
    result = await env.sync(a, watch)
    assert (result.uploaded, result.rejected) == (0, 1)
    [err] = [e for e in watch[0].events if e.kind == "error"]
    assert (err.code, err.collection, err.record) == ("gone", "deals", rid)
    [p] = a.pending()
    assert p.status == "error" and p.error is not None and p.error[0] == "gone"
    rec = a.get("deals", rid)  # until the user acts, the device shows its draft, pending with its error
    assert rec is not None and not rec.deleted and rec["stage"] == "won"
    a.discard_record("deals", rid)  # the only way forward the legacy apps offer
    rec = a.get("deals", rid)
    assert rec is not None and rec.deleted and a.pending() == []
    doc = env.relay.log.reader.get("deals", rid).doc
    assert isinstance(doc, DraftRecordDoc) and [d.writer for d in doc.drafts()] == ["a", "b"]  # a's edit not stored
    await env.sync(b)
    rec = b.get("deals", rid)
    assert rec is not None and rec.deleted


async def test_a_crdt_collection_in_the_same_schema_keeps_merging_and_surfacing_conflicts(env: Env) -> None:
    a, b = env.replica("a", "alice"), env.replica("b", "bob")
    rid = a.create("accounts", {"name": "Acme", "stage": "lead"})
    await env.sync(a)
    await env.sync(b)
    a.update("accounts", rid, {"name": "Acme Corp", "stage": "lost"})
    b.update("accounts", rid, {"stage": "won"})
    await env.sync(b)
    await env.sync(a)
    await env.sync(b)
    for r in (a, b):
        rec = r.get("accounts", rid)
        assert rec is not None and rec["name"] == "Acme Corp"
        [c] = rec.conflicts  # the concurrent stage edits are surfaced, not silently decided by arrival
        assert c.field == "stage" and {v.value for v in c.candidates} == {"lost", "won"}
    doc = env.relay.log.reader.get("accounts", rid).doc
    assert not isinstance(doc, DraftRecordDoc) and SERVER_WRITER not in doc.state().vector
    assert env.relay.log.head == 3  # the create and the two edits: the relay added nothing of its own


# -- what a device may not write ----------------------------------------------------------------------------


async def push_raw(env: Env, device: str, user: str, collection: str, rid: str, update: bytes,
                   change_id: int = 1) -> Ack:
    headers = {"Authorization": f"Bearer {TOKEN[user]}"} if env.tokens else {}
    async with connect(env.url, additional_headers=headers) as ws:
        raw = RawClient(ws)
        await raw.handshake(device)
        raw.conn.send(Push(1, (Change(change_id, collection, rid, update),)))
        await raw.flush()
        [ack] = await raw.next_events()
    assert isinstance(ack, Ack)
    return ack


def draft_doc(env: Env, rid: str, writer: str, device: str, user: str) -> DraftRecordDoc:
    return DraftRecordDoc(SCHEMA.collection("deals"), rid, writer=writer, device=device, user=user,
                          client_id=4242, updates=[env.stored("deals", rid)])


@pytest.mark.parametrize(("writer", "device", "user", "why"), [
    ("a", "a", "alice", "writes the slot of writer 'a' (@draft), not its own"),  # another device's draft key
    ("m", "a", "mallory", "a draft claims device 'a'"),                           # own key, another device inside
])
async def test_forging_another_devices_draft_is_forbidden(env: Env, writer: str, device: str, user: str,
                                                          why: str) -> None:
    _, _, rid = await shared_record(env, "deals")
    before, head = env.stored("deals", rid), env.relay.log.head
    update = draft_doc(env, rid, writer, device, user).write({"name": "Evil"}, SOON)
    ack = await push_raw(env, "m", "mallory", "deals", rid, update)
    assert [(r.code, why in r.reason) for r in ack.rejected] == [("forbidden", True)], ack
    assert env.stored("deals", rid) == before and env.relay.log.head == head  # nothing stored


async def test_a_draft_naming_another_user_is_forbidden_when_the_relay_knows_users(env: Env) -> None:
    _, _, rid = await shared_record(env, "deals")
    update = draft_doc(env, rid, "m", "m", "alice").write({"name": "Evil"}, SOON)
    ack = await push_raw(env, "m", "mallory", "deals", rid, update)
    if env.tokens:
        assert [(r.code, "claims user 'alice'" in r.reason) for r in ack.rejected] == [("forbidden", True)]
    else:  # an open relay knows no users (docs/sync.md): the draft is the device's own and is applied
        assert ack.ok == (1,) and ack.rejected == ()


async def test_writing_the_servers_image_is_forbidden(env: Env) -> None:
    a, _, rid = await shared_record(env, "deals")
    before = env.stored("deals", rid)
    doc: Doc[Any] = Doc()
    doc.apply_update(before)
    sv = doc.get_state()
    image = {"f": {"name": "Evil"}, "d": False, "n": 99, "a": {}, "t": SOON, "by": {}}
    doc.get("f", type=Map)[IMAGE] = orjson.dumps(image).decode()
    ack = await push_raw(env, "m", "mallory", "deals", rid, doc.get_update(sv))
    assert [(r.code, "only the relay (#server) may" in r.reason) for r in ack.rejected] == [("forbidden", True)]
    assert env.stored("deals", rid) == before
    await env.sync(a)
    assert fields(a, "deals", rid)["name"] == "Acme"


async def test_a_retried_draft_is_acknowledged_again_and_applied_once(env: Env) -> None:
    _, _, rid = await shared_record(env, "tasks")
    doc = DraftRecordDoc(SCHEMA.collection("tasks"), rid, writer="m", device="m", user="mallory",
                         client_id=4242, updates=[env.relay.log.record_update("tasks", rid)])
    update = doc.write({"amount": 11}, SOON)
    head = env.relay.log.head
    for _ in range(2):
        ack = await push_raw(env, "m", "mallory", "tasks", rid, update, change_id=SOON)
        assert ack.ok == (SOON,) and ack.rejected == ()
        assert env.relay.log.head == head + 2  # the draft and the relay's image, once
    img = env.relay.log.reader.get("tasks", rid).doc
    assert isinstance(img, DraftRecordDoc)
    image = img.image()
    assert image is not None and image.n == 2 and image.fields["amount"] == 11 and image.applied["m"] == SOON
    assert SERVER_WRITER in img.state().vector


async def test_live_devices_receive_the_servers_image_in_arrival_order(env: Env) -> None:
    """Both devices online: each draft is answered by the relay's image, streamed live to every device
    (its author too), so both end on the copy of the draft that arrived last."""
    a, b, rid = await shared_record(env, "deals")

    def seen(r: Replica, pred: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on(ev: Any) -> None:
            rec = r.get("deals", rid)
            # the image may arrive live before the device has processed its own ack: wait for both
            if ev.origin != "local" and not fut.done() and rec is not None and pred(rec.fields) \
                    and not r.pending():
                fut.set_result(None)
        r.subscribe(on)
        return fut

    async with env.client(a) as ca, env.client(b) as cb:
        await asyncio.wait_for(ca.sync_now(), BOUND)
        await asyncio.wait_for(cb.sync_now(), BOUND)
        at_a = seen(a, lambda f: f["stage"] == "won")
        at_b = seen(b, lambda f: f["stage"] == "won")
        b.update("deals", rid, {"stage": "won"})
        await asyncio.wait_for(cb.sync_now(), BOUND)  # uploads; a gets draft and image live
        await asyncio.wait_for(asyncio.gather(at_a, at_b), BOUND)
        at_a = seen(a, lambda f: f["name"] == "Acme Corp")
        at_b = seen(b, lambda f: f["name"] == "Acme Corp")
        a.update("deals", rid, {"name": "Acme Corp"})  # a had seen "won": its whole copy keeps it
        await asyncio.wait_for(ca.sync_now(), BOUND)
        await asyncio.wait_for(asyncio.gather(at_a, at_b), BOUND)
    for r in (a, b):
        assert fields(r, "deals", rid) == {"name": "Acme Corp", "stage": "won", "amount": 10}


async def test_a_restarted_relay_continues_from_its_stored_image(env: Env) -> None:
    a, b, rid = await shared_record(env, "tasks")
    await env.relay.stop()
    relay = Relay(env.relay.store, SCHEMA, env.relay.tokens)  # same database, new process state
    await relay.start("127.0.0.1", env.relay.address[1])
    env.relay = relay
    b.update("tasks", rid, {"stage": "won"})
    a.update("tasks", rid, {"amount": 20})
    await env.sync(b)
    await env.sync(a)
    await env.sync(b)
    for r in (a, b):
        assert fields(r, "tasks", rid) == {"name": "Acme", "stage": "won", "amount": 20} and r.pending() == []
    doc = relay.log.reader.get("tasks", rid).doc
    assert isinstance(doc, DraftRecordDoc) and (img := doc.image()) is not None and img.n == 3


async def test_a_change_written_under_a_strategy_of_another_layout_is_refused_saying_so(env: Env) -> None:
    """A device whose schema gives a collection a strategy of the other document layout than the relay's
    (deals: crdt, not lww-record; accounts: lww-record, not crdt): the relay's reason says so and what to do,
    not "malformed slot: 't'", and the record's RecordBlocked does not send the user to fix() or retry()."""
    wrong = Schema(Collection("deals", {"name": Str(), "stage": Str(), "amount": Int()}),
                   Collection("tasks", {"name": Str(), "stage": Str(), "amount": Int()}, strategy="lww-patch"),
                   Collection("accounts", {"name": Str(), "stage": Str()}, strategy="lww-record"))
    r = Replica.open(env.tmp_path / "m.db", wrong, device="m", user="alice", synchronous="NORMAL")
    env.replicas.append(r)
    long_id = "d" * 200  # the longest id: the reason still fits in a frame
    r.create("deals", {"name": "D"}, id=long_id)
    r.create("accounts", {"name": "A"}, id="a1")
    result = await env.sync(r)
    assert (result.uploaded, result.rejected) == (0, 2)
    for p, relays in zip(r.pending(), ["'lww-record' or 'lww-patch'", "'crdt' or 'lww-field'"], strict=True):
        assert p.status == "error" and p.error is not None and p.error[0] == "invalid"
        reason = p.error[1]
        assert "written under another strategy (document layout)" in reason and len(reason) <= 500
        assert f"the device's schema must give it {relays}" in reason, reason
        with pytest.raises(RecordBlocked) as e:
            r.update(p.collection, p.record, {"name": "B"})
        assert "fix() it with" not in str(e.value) and "discard_record() it" in str(e.value)
