"""Interop: real Node Yjs clients (y-websocket's WebsocketProvider) against the Yjs rooms.

Skipped, with the reason, when node or tests/interop/node_modules is missing (.ci/run runs ``npm ci``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import websockets
from pycrdt import Array, Doc, Text, merge_updates

from crdtsync.protocol.ywebsocket import SYNC_UPDATE, sync_message
from crdtsync.store.base import Batch
from crdtsync.store.memory import MemoryStore
from crdtsync.store.sqlite import SQLiteStore
from tests.interop.nodeclient import NodeClient, node_missing
from tests.yjs.harness import PyYClient, YjsServer, yjs_server
from tests.yjs.impossible import EDITS, IMPOSSIBLE

pytestmark = pytest.mark.skipif(node_missing() is not None, reason=str(node_missing()))


async def test_node_and_python_clients_edit_concurrently_and_converge(tmp_path: Path) -> None:
    async with yjs_server(SQLiteStore(tmp_path / "relay.db")) as srv, \
            NodeClient(srv.url, "shared") as n1, NodeClient(srv.url, "shared") as n2, \
            PyYClient(srv.room_url("shared")) as py:
        url = await n1.expect("url")
        assert url["url"] == f"{srv.url}/shared?token=rw"
        await asyncio.gather(n1.synced(), n2.synced(), py.wait_synced())
        # concurrent edits: nobody waits for anyone before writing
        await asyncio.gather(
            n1.command({"op": "set", "key": "n1", "value": "één"}),
            n1.command({"op": "insert", "index": 0, "text": "[n1 ✓]"}),
            n1.command({"op": "burst", "n": 50, "prefix": "n1-"}),
            n2.command({"op": "set", "key": "n2", "value": "deux"}),
            n2.command({"op": "insert", "index": 0, "text": "[n2 ü]"}),
            n2.command({"op": "burst", "n": 50, "prefix": "n2-"}),
        )
        py.map["py"] = "trois 🐍"
        py.text.insert(0, "[py ß]")
        for i in range(50):
            py.array.append(f"py-{i}")
        want = {"map_keys": ["n1", "n2", "py"], "array_len": 150, "text_includes": ["[n1 ✓]", "[n2 ü]", "[py ß]"]}
        await asyncio.gather(n1.wait(**want), n2.wait(**want))
        await py.wait_until(lambda: len(py.array) == 150 and {"n1", "n2"} <= set(py.map.keys())
                            and all(s in str(py.text) for s in want["text_includes"]))
        d1, d2 = await n1.dump(), await n2.dump()
        assert d1 == d2 == py.content()
        assert d1["m"] == {"n1": "één", "n2": "deux", "py": "trois 🐍"}
        assert sorted(d1["a"]) == sorted([f"{p}-{i}" for p in ("n1", "n2", "py") for i in range(50)])
        assert not n1.saw("connection-close") and not n2.saw("connection-close")


async def test_late_client_loads_stored_state_also_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = SQLiteStore(db)
    async with yjs_server(store) as srv:
        async with NodeClient(srv.url, "notes") as a, NodeClient(srv.url, "notes") as b:
            await asyncio.gather(a.synced(), b.synced())
            await a.command({"op": "set", "key": "a", "value": "1"})
            await b.command({"op": "insert", "index": 0, "text": "hello"})
            await asyncio.gather(a.wait(map_keys=["a"], text_includes=["hello"]),
                                 b.wait(map_keys=["a"], text_includes=["hello"]))
            before = await a.dump()
        # A writer that leaves at once after a burst (pycrdt-websocket stored 15 of 2,000 here).
        async with NodeClient(srv.url, "notes") as quick:
            await quick.synced()
            await quick.command({"op": "burst", "n": 500, "prefix": "q"})
        await srv.rooms.wait_idle()
        assert srv.rooms.loaded_rooms() == []
        async with NodeClient(srv.url, "notes") as late:
            await late.synced()
            later = await late.dump()
        assert later["m"] == before["m"] and later["t"] == before["t"] == "hello"
        assert later["a"] == [f"q{i}" for i in range(500)]
    store.close()
    store2 = SQLiteStore(db)
    assert store2.load(("yjs", "notes", "s")) is not None  # compacted when the room unloaded
    async with yjs_server(store2) as srv2, NodeClient(srv2.url, "notes") as again:
        await again.synced()
        assert await again.dump() == later
    store2.close()


async def test_read_only_token_reads_but_cannot_write(tmp_path: Path) -> None:
    async with yjs_server(SQLiteStore(tmp_path / "relay.db")) as srv:
        async with NodeClient(srv.url, "ro-room", "rw") as writer, NodeClient(srv.url, "ro-room", "ro") as reader:
            await asyncio.gather(writer.synced(), reader.synced())
            await writer.command({"op": "set", "key": "w", "value": "by writer"})
            await reader.wait(map_keys=["w"])  # reads the room and its live updates
            await reader.command({"op": "set", "key": "ro", "value": "sneaky"})
            denied = await reader.expect("denied")  # logged by WebsocketProvider as "Permission denied"
            assert "read-only" in denied["reason"]
            closed = await reader.expect("closed")  # WebsocketProvider gave up: no reconnect loop
            assert closed["code"] == 4403 and "read-only" in closed["reason"]
            await writer.command({"op": "set", "key": "w2", "value": "still fine"})
            doc = await writer.dump()
            assert "ro" not in doc["m"] and not writer.saw("connection-close")
        await srv.rooms.wait_idle()
        async with NodeClient(srv.url, "ro-room") as late:
            await late.synced()
            assert (await late.dump())["m"] == {"w": "by writer", "w2": "still fine"}  # not persisted


GARBAGE: list[bytes | str] = [
    b"\xff\xff\xff",                         # truncated varuint
    b"\x07",                                 # unknown message kind
    b"\x00\x09\x00",                         # unknown sync step
    b"\x00\x02\x05\x01\x02\x03\x04\x05",     # update that is not a Yjs update
    b"\x00\x00\x10\x01",                     # step 1 whose payload is cut short
    b"\x01\x0a\x01\x01\x01\x07{broken",      # awareness state that is not JSON
    b"\x00\x00\x01\x00\x00",                 # step 1 with a trailing byte
    "a text frame",
]


async def test_malformed_messages_close_only_that_connection(tmp_path: Path) -> None:
    async with yjs_server(SQLiteStore(tmp_path / "relay.db")) as srv, \
            NodeClient(srv.url, "room") as a, NodeClient(srv.url, "room") as b:
        await asyncio.gather(a.synced(), b.synced())
        for i, garbage in enumerate(GARBAGE):
            async with websockets.connect(srv.room_url("room")) as bad:
                await bad.send(garbage)
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await asyncio.wait_for(bad.recv(), 10)
                assert bad.close_code == 4400, garbage
                assert bad.close_reason and ("malformed" in bad.close_reason or "text frame" in bad.close_reason)
            await a.command({"op": "set", "key": f"after{i}", "value": "ok"})
            await b.wait(map_keys=[f"after{i}"])
        assert not a.saw("connection-close") and not b.saw("connection-close")


async def test_awareness_is_relayed_and_removed_when_a_client_leaves(tmp_path: Path) -> None:
    async with yjs_server(SQLiteStore(tmp_path / "relay.db")) as srv, NodeClient(srv.url, "aw") as a:
        await a.synced()
        async with NodeClient(srv.url, "aw") as b:
            await b.synced()
            await b.command({"op": "awareness", "state": {"user": "bob"}})
            await a.wait(awareness_count=2)
        await a.wait(awareness_count=1)  # b's state went when b left


async def test_room_name_as_the_provider_puts_it_in_the_url() -> None:
    """WebsocketProvider appends the room name unencoded; the URL parser percent-encodes what it must."""
    async with yjs_server(MemoryStore()) as srv, NodeClient(srv.url, "café/ü 1") as a:
        assert (await a.expect("url"))["url"] == f"{srv.url}/café/ü 1?token=rw"
        await a.synced()
        assert srv.rooms.loaded_rooms() == ["café/ü 1"]


async def test_burst_from_a_node_client_reaches_every_reader_and_the_store(tmp_path: Path) -> None:
    """2,000 updates in a tight loop, tiny server queues: live readers get all of them, none dropped."""
    n = 2000
    store = SQLiteStore(tmp_path / "relay.db", synchronous="NORMAL")
    async with yjs_server(store, queue_size=4, max_pending=16) as srv, \
            NodeClient(srv.url, "burst") as reader, PyYClient(srv.room_url("burst")) as py:
        await asyncio.gather(reader.synced(), py.wait_synced())
        async with NodeClient(srv.url, "burst") as writer:
            await writer.synced()
            await writer.command({"op": "burst", "n": n, "prefix": "b"})
        await reader.wait(array_len=n, timeout=30)
        await py.wait_until(lambda: len(py.array) == n, timeout=30)
        assert (await reader.dump())["a"] == list(py.array) == [f"b{i}" for i in range(n)]
    stored: Doc[Any] = Doc()
    for _, update in store.load_range(("yjs", "burst")):
        stored.apply_update(update)
    assert len(stored.get("a", type=Array)) == n
    store.close()


# An update Yrs accepts and Yjs cannot decode (found by the explorer's fuzzing: Yjs throws "contentRefs[...]
# is not a function"); Yrs integrates its text, array and map items.
_YRS_ONLY = bytes.fromhex(
    "010691a6ceefb6cb0800040101740b68656c6c6f20776f726c642801016d016b017701762801016d016e017c3fc000000801016101"
    "77017891a6ceefd2b6cb080d01280091a6ceefd2b6cb080e0171017c3f80000000")


async def test_clients_get_what_the_room_integrated_not_the_senders_bytes() -> None:
    """Forwarded raw, the update made the connected Yjs client throw and keep an empty document, while a
    client joining later got Yrs's re-encoding: the two never agreed again."""
    async with yjs_server(MemoryStore()) as srv, NodeClient(srv.url, "odd") as online:
        await online.synced()
        async with websockets.connect(srv.room_url("odd")) as raw:
            await raw.send(sync_message(SYNC_UPDATE, _YRS_ONLY))
            await online.wait(text_includes=["hello world"], map_keys=["k"])
        async with NodeClient(srv.url, "odd") as late:
            await late.synced()
            assert await online.dump() == await late.dump()


async def test_a_provider_with_the_protocols_option_connects() -> None:
    """``ws`` (like browsers) aborts when it offered subprotocols and the server picked none: the provider
    never synced and kept reconnecting."""
    async with yjs_server(MemoryStore()) as srv, \
            NodeClient(srv.url, "sp", protocols=["y-websocket", "app.v1"]) as a, NodeClient(srv.url, "sp") as b:
        await asyncio.gather(a.synced(), b.synced())
        await a.command({"op": "set", "key": "k", "value": "v"})
        await b.wait(map_keys=["k"])


async def _refused(url: str, updates: list[bytes]) -> tuple[int | None, str | None]:
    """Send ``updates`` on one raw connection; the close code and reason the room ends it with."""
    async with websockets.connect(url) as raw:
        for u in updates:
            await raw.send(sync_message(SYNC_UPDATE, u))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(raw.recv(), 10)
        return raw.close_code, raw.close_reason


async def test_an_update_no_yjs_client_writes_leaves_the_room_readable_for_joiners() -> None:
    """Each update of ``tests/yjs/impossible.py`` (an item whose origin or parent is a later clock of its own
    client, a deleted range of length 0) was held pending for good and merged into every step 2: each Yjs
    client that joined threw in ``integrateStructs`` and showed an empty document. Now refused (4400)."""
    async def one(srv: YjsServer, name: str, prefix: int, update: bytes, what: str) -> None:
        room = f"imp-{name}"
        expected: Doc[Any] = Doc()
        for u in EDITS[:prefix]:
            expected.apply_update(u)
        text = str(expected.get("t", type=Text))
        async with NodeClient(srv.url, room) as writer:
            await writer.synced()
            await writer.command({"op": "set", "key": "before", "value": "kept"})
            code, reason = await _refused(srv.room_url(room), [*EDITS[:prefix], update])
            assert code == 4400 and reason is not None and what in reason, (name, code, reason)
            async with NodeClient(srv.url, room) as joiner:
                await joiner.synced()
                await joiner.wait(map_keys=["before"], text_includes=[text])
                assert (await joiner.dump())["t"] == text
                assert not joiner.saw("connection-close")

    async with yjs_server(MemoryStore()) as srv:
        await asyncio.gather(*(one(srv, *case) for case in IMPOSSIBLE))


async def test_a_stored_room_holding_an_update_yjs_cannot_read_still_loads() -> None:
    """A room stored before such updates were refused keeps the one it holds pending (in its snapshot): its
    step 2 merged it in, and every joiner, after every restart, got an empty document."""
    content: Doc[Any] = Doc(client_id=5)
    content.get("t", type=Text).insert(0, "still here")
    store = MemoryStore()
    batch = Batch()
    batch.save(("yjs", "held", "s"), merge_updates(content.get_update(), IMPOSSIBLE[0][2]))
    store.commit(batch)
    async with yjs_server(store) as srv, NodeClient(srv.url, "held") as joiner:
        await joiner.synced()
        await joiner.wait(text_includes=["still here"])
