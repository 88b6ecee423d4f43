"""The relay's rooms give Yjs clients what the reference server would: updates the room holds pending,
deletions that came before their items, and what the room integrated rather than a sender's raw bytes."""

from __future__ import annotations

import asyncio

import websockets
from pycrdt import Doc, Text

from crdtsync.protocol.ywebsocket import MESSAGE_SYNC, SYNC_UPDATE, Reader, sync_message
from crdtsync.store.memory import MemoryStore
from tests.yjs.harness import PyYClient, yjs_server


def _edits() -> tuple[bytes, bytes, bytes]:
    """"abc", then "d" after it (builds on the first), then the deletion of "b"."""
    src: Doc[Text] = Doc(client_id=11)
    text = src.get("t", type=Text)
    out = []
    for edit in (lambda: text.insert(0, "abc"), lambda: text.insert(3, "d"), lambda: text.__delitem__(slice(1, 2))):
        before = src.get_state()
        edit()
        out.append(src.get_update(before))
    return out[0], out[1], out[2]


async def _send(url: str, *updates: bytes) -> None:
    """One raw client sends ``updates`` and leaves once the relay has them (a PyYClient would resend its doc)."""
    async with PyYClient(url) as sender:
        await sender.wait_synced()
        for u in updates:
            await sender.send_raw(sync_message(SYNC_UPDATE, u))
    # PyYClient.close sent them before closing; the relay stores what it read before the close


async def test_a_client_joining_while_an_update_is_pending_gets_it_when_the_missing_one_comes() -> None:
    """It ended at "abc": the step 2 it got left out "d", which the room held pending."""
    first, more, _ = _edits()
    async with yjs_server(MemoryStore()) as srv, PyYClient(srv.room_url("p")) as keeper:
        await keeper.wait_synced()  # keeps the room loaded
        await _send(srv.room_url("p"), more)
        async with PyYClient(srv.room_url("p")) as late:
            await late.wait_synced()
            await _send(srv.room_url("p"), first)
            await late.wait_until(lambda: str(late.text) == "abcd")
            await keeper.wait_until(lambda: str(keeper.text) == "abcd")


async def test_a_deletion_that_came_before_its_items_survives_the_room_unloading() -> None:
    """The snapshot written when the room unloads left the deletion out: "b" came back."""
    first, more, deletion = _edits()
    store = MemoryStore()
    async with yjs_server(store) as srv:
        await _send(srv.room_url("d"), deletion)
        await srv.rooms.wait_idle()
        assert srv.rooms.loaded_rooms() == []  # stored, compacted into the snapshot, unloaded
        async with PyYClient(srv.room_url("d")) as late:
            await late.wait_synced()
            await _send(srv.room_url("d"), first, more)
            await late.wait_until(lambda: str(late.text) == "acd")


async def test_what_the_room_integrated_is_forwarded_not_the_raw_bytes() -> None:
    """A repeat of an update the room has is not sent on (it changes nothing), and an update that
    completes a pending one is sent on with it, as Yrs encodes the room's transaction."""
    first, more, _ = _edits()
    async with yjs_server(MemoryStore()) as srv, websockets.connect(srv.room_url("f")) as watcher:
        await _send(srv.room_url("f"), more, first, first)
        got: list[bytes] = []
        while len(got) < 1 or b"after" not in got[-1]:
            r = Reader(await asyncio.wait_for(watcher.recv(), 10))  # type: ignore[arg-type]
            if r.var_uint() == MESSAGE_SYNC and r.var_uint() == SYNC_UPDATE:
                got.append(r.var_bytes())
                if len(got) == 1:
                    async with PyYClient(srv.room_url("f")) as marker:
                        await marker.wait_synced()
                        marker.map["after"] = "x"
        doc: Doc[Text] = Doc()
        doc.apply_update(got[0])
        assert str(doc.get("t", type=Text)) == "abcd"  # "abc" and the pending "d" in one update
        assert len(got) == 2  # no repeat of ``first``; then the marker
