"""YjsRooms over real websockets on 127.0.0.1 with Python y-websocket clients (pycrdt docs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from pycrdt import Doc, Text

from crdtsync.protocol.ywebsocket import (
    MESSAGE_AWARENESS,
    SYNC_UPDATE,
    Reader,
    decode_awareness,
    query_awareness_message,
    sync_message,
)
from crdtsync.store.base import Batch
from crdtsync.store.memory import MemoryStore
from crdtsync.store.sqlite import SQLiteStore
from tests.yjs.harness import PyYClient, yjs_server


def stored_keys(store: MemoryStore | SQLiteStore, room: str) -> list[tuple[str | int, ...]]:
    return [k for k, _ in store.load_range(("yjs", room))]


async def test_two_clients_converge(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    async with yjs_server(store) as srv, PyYClient(srv.room_url("r1")) as a, PyYClient(srv.room_url("r1")) as b:
        await a.wait_synced()
        await b.wait_synced()
        a.map["x"] = "from a"
        b.map["y"] = "from b"
        await a.wait_until(lambda: "y" in a.map)
        await b.wait_until(lambda: "x" in b.map)
        assert a.content() == b.content() == {"m": {"x": "from a", "y": "from b"}, "a": [], "t": ""}
    store.close()


async def test_many_clients_opening_a_new_room_at_once_all_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    store.save(("yjs", "busy", "u", 0), _text_update("stored before"))
    async with yjs_server(store) as srv:
        clients = [PyYClient(srv.room_url("busy")) for _ in range(12)]
        await asyncio.gather(*(c.__aenter__() for c in clients))
        try:
            await asyncio.gather(*(c.wait_synced() for c in clients))
            assert all(str(c.text) == "stored before" for c in clients)
            assert srv.rooms.loaded_rooms() == ["busy"]
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    store.close()


def _text_update(s: str) -> bytes:
    d: Doc[Text] = Doc()
    d.get("t", type=Text).insert(0, s)
    return d.get_update()


async def test_burst_is_neither_dropped_nor_lost_when_the_writer_leaves_at_once(tmp_path: Path) -> None:
    """Tiny queues and in-flight limits: a burst of 2,000 updates must slow down, not drop."""
    store = SQLiteStore(tmp_path / "relay.db", synchronous="NORMAL")
    n = 2000
    async with yjs_server(store, queue_size=2, max_pending=8, compact_after=300) as srv:
        async with PyYClient(srv.room_url("burst")) as reader:
            await reader.wait_synced()
            async with PyYClient(srv.room_url("burst")) as writer:
                await writer.wait_synced()
                for i in range(n):
                    writer.array.append(i)  # one transaction, so one update message, each
            await reader.wait_until(lambda: len(reader.array) == n, timeout=30)
            assert list(reader.array) == list(range(n))
        await srv.rooms.wait_idle()
        assert srv.rooms.loaded_rooms() == []
        assert stored_keys(store, "burst") == [("yjs", "burst", "s")]  # compacted into one snapshot
        async with PyYClient(srv.room_url("burst")) as late:
            await late.wait_synced()
            assert list(late.array) == list(range(n))
    store.close()


async def test_room_state_survives_a_restart_on_the_same_file(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = SQLiteStore(db)
    async with yjs_server(store, compact_after=5) as srv, PyYClient(srv.room_url("doc")) as a:
        await a.wait_synced()
        async with PyYClient(srv.room_url("doc")) as b:
            await b.wait_synced()
            for i in range(12):  # one at a time: each is stored (and fanned out) before the next arrives
                a.map[f"k{i}"] = f"v{i}"
                await b.wait_until(lambda i=i: len(b.map) == i + 1)  # type: ignore[misc]
        keys = stored_keys(store, "doc")
        assert ("yjs", "doc", "s") in keys and len(keys) <= 1 + 5 + 2  # compaction ran while serving
    store.close()
    store2 = SQLiteStore(db)
    async with yjs_server(store2) as srv2, PyYClient(srv2.room_url("doc")) as c:
        await c.wait_synced()
        assert dict(c.map) == {f"k{i}": f"v{i}" for i in range(12)}
    store2.close()


async def test_read_only_reconnect_with_known_deletions_is_accepted_new_ones_refused() -> None:
    store = MemoryStore()
    async with yjs_server(store) as srv, PyYClient(srv.room_url("ro")) as w:
        await w.wait_synced()
        w.text.insert(0, "hello world")
        del w.text[0:6]
        async with PyYClient(srv.room_url("ro", "ro")) as r1:
            await r1.wait_until(lambda: str(r1.text) == "world")
            copy = r1.doc.get_update()
        # a reader coming back with its copy: its step 2 carries the delete set the room already has
        r2 = PyYClient(srv.room_url("ro", "ro"))
        r2.doc.apply_update(copy)
        async with r2:
            await r2.wait_synced()
            w.text.insert(5, "!")
            await r2.wait_until(lambda: str(r2.text) == "world!")
            assert not r2.closed
            del r2.text[0:1]  # a new deletion: refused
            code, reason = await r2.wait_closed()
            assert code == 4403 and reason is not None and "read-only" in reason
            assert r2.denied and "read-only" in r2.denied[0]
        w.map["after"] = "x"
        async with PyYClient(srv.room_url("ro")) as check:
            # "after" may arrive as a live update before the sync step 2 that carries the text
            await check.wait_synced()
            await check.wait_until(lambda: "after" in check.map)
            assert str(check.text) == "world!"


async def test_awareness_relayed_echoed_queried_and_removed() -> None:
    async with yjs_server(MemoryStore()) as srv, PyYClient(srv.room_url("aw")) as a:
        await a.wait_synced()
        async with PyYClient(srv.room_url("aw")) as b:
            await b.wait_synced()
            b.set_awareness('{"name":"bö"}', clock=1)
            await a.wait_until(lambda: b.doc.client_id in a.awareness)
            await b.wait_until(lambda: b.doc.client_id in b.awareness)  # echoed: keeps a lone client alive
            assert a.awareness[b.doc.client_id].state == '{"name":"bö"}'
            b.set_awareness('{"name":"old"}', clock=1)  # same clock: ignored, not relayed
            async with websockets.connect(srv.room_url("aw")) as raw:
                await raw.send(query_awareness_message())
                while True:
                    data = await asyncio.wait_for(raw.recv(), 10)
                    assert isinstance(data, bytes)
                    r = Reader(data)
                    if r.var_uint() == MESSAGE_AWARENESS:
                        entries = decode_awareness(r.var_bytes())
                        break
                assert [(e.client, e.state) for e in entries] == [(b.doc.client_id, '{"name":"bö"}')]
        await a.wait_until(lambda: a.awareness[b.doc.client_id].removed)


class _FailingStore(MemoryStore):
    """A disk that fails on demand: the one fault here that cannot be caused for real."""

    fail = False

    def commit(self, batch: Batch) -> None:
        if self.fail:
            raise OSError("disk full")
        super().commit(batch)


async def test_failed_commit_closes_the_writer_and_nothing_is_applied() -> None:
    store = _FailingStore()
    async with yjs_server(store) as srv, PyYClient(srv.room_url("f")) as a, PyYClient(srv.room_url("f")) as b:
        await asyncio.gather(a.wait_synced(), b.wait_synced())
        a.map["ok"] = "1"
        await b.wait_until(lambda: "ok" in b.map)
        store.fail = True
        a.map["lost?"] = "2"
        code, reason = await a.wait_closed()
        assert code == 1011 and reason is not None and "store" in reason
        store.fail = False
        b.map["later"] = "3"
        async with PyYClient(srv.room_url("f")) as c:
            await c.wait_until(lambda: "later" in c.map)
            assert "lost?" not in c.map  # never visible: it was not durable
        # the writer still has its change; reconnecting sends it again (as WebsocketProvider does)
        again = PyYClient(srv.room_url("f"))
        again.doc.apply_update(a.doc.get_update())
        async with again:
            await again.wait_synced()
            await b.wait_until(lambda: "lost?" in b.map)


@pytest.mark.parametrize("path", ["/yjs/caf%C3%A9%20room", "/yjs/café room"])
async def test_room_name_is_the_unquoted_path(path: str) -> None:
    async with yjs_server(MemoryStore()) as srv:
        base = srv.url.removesuffix("/yjs")
        async with websockets.connect(base + path.replace(" ", "%20").replace("é", "%C3%A9") + "?token=rw") as ws:
            await asyncio.wait_for(ws.recv(), 10)
            assert srv.rooms.loaded_rooms() == ["café room"]


async def test_large_updates_pass_and_oversized_ones_close_the_sender() -> None:
    """serve() lifts websockets' 1 MiB default to ``max_message``; beyond it the sender alone is closed."""
    async with yjs_server(MemoryStore(), max_message=3 * 2**20) as srv, \
            PyYClient(srv.room_url("big")) as a, PyYClient(srv.room_url("big")) as b:
        await asyncio.gather(a.wait_synced(), b.wait_synced())
        a.text.insert(0, "x" * (2 * 2**20))
        await b.wait_until(lambda: len(str(b.text)) == 2 * 2**20)
        with _watch_log("over the 3145728-byte limit") as logged:  # an operator sees it (clients retry)
            b.text.insert(0, "y" * (4 * 2**20))
            code, _ = await b.wait_closed()
            assert code == 1009
            await asyncio.wait_for(logged.seen.wait(), 10)
        a.map["still"] = "here"
        async with PyYClient(srv.room_url("big")) as c:
            await c.wait_until(lambda: "still" in c.map)
            assert not str(c.text).startswith("y")


async def _raw_ws_that_never_reads(url: str) -> socket.socket:
    """A websocket opened by hand on a socket with a small receive buffer, which then reads nothing."""
    host_port, path = url.removeprefix("ws://").split("/", 1)
    host, port = host_port.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # no autotuning up to 32 MiB
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, (f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


class _Watch(logging.Handler):
    """Set when the relay's room server logs a message holding ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING and self.text in record.getMessage():
            self.seen.set()


@contextlib.contextmanager
def _watch_log(text: str) -> Iterator[_Watch]:
    handler = _Watch(text)
    logger = logging.getLogger("crdtsync.relay.yjs")
    level = logger.level
    logger.setLevel(logging.WARNING)  # (the demo quiets "crdtsync", and tests run it in this process)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def _paced(writer: PyYClient, reader: PyYClient, n: int, size: int) -> None:
    """``n`` updates of ``size`` bytes, each once ``reader`` got the one before: a reader that keeps up
    never has more than one queued, whatever the machine's load."""
    for i in range(n):
        writer.array.append("x" * size + str(i))
        await reader.wait_until(lambda i=i: len(reader.array) == i + 1, timeout=30)  # type: ignore[misc]


async def _read_until_closed(sock: socket.socket, code: int, reason: bytes) -> int:
    """Read what the server sent to ``sock`` until its close frame (``code``, ``reason``); the bytes read."""
    close_frame = bytes([0x88, 2 + len(reason)]) + code.to_bytes(2, "big") + reason
    data = bytearray()
    loop = asyncio.get_running_loop()
    while not data.endswith(close_frame):
        more = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        assert more, f"EOF without the close frame; got {len(data)} bytes"
        data += more
    return len(data)


_TOO_SLOW = b"client too slow to read; reconnect to resync"


async def test_a_client_that_stops_reading_holds_nobody_up() -> None:
    """The others get every update at once, not after ``send_timeout``: fan-out never waits for a reader (it
    used to, up to 30 s by default, holding up the whole room)."""
    chunk = 1 << 20
    async with yjs_server(MemoryStore(), queue_size=2, send_timeout=600, max_queue_bytes=1 << 30) as srv, \
            PyYClient(srv.room_url("slow")) as writer, PyYClient(srv.room_url("slow")) as reader:
        await asyncio.gather(writer.wait_synced(), reader.wait_synced())
        stalled = await _raw_ws_that_never_reads(srv.room_url("slow"))
        try:
            for i in range(24):  # 24 MiB: far more than the socket buffers hold
                writer.array.append("x" * chunk + str(i))
            await reader.wait_until(lambda: len(reader.array) == 24, timeout=30)
        finally:
            stalled.close()


async def test_a_client_behind_for_send_timeout_is_closed() -> None:
    """``queue_size`` frames queued for ``send_timeout`` seconds: closed with 1013."""
    chunk = 1 << 20
    async with yjs_server(MemoryStore(), queue_size=2, send_timeout=0.5, max_queue_bytes=1 << 30) as srv, \
            PyYClient(srv.room_url("slow")) as writer, PyYClient(srv.room_url("slow")) as reader:
        await asyncio.gather(writer.wait_synced(), reader.wait_synced())
        stalled = await _raw_ws_that_never_reads(srv.room_url("slow"))
        try:
            with _watch_log("too slow to read") as closing:
                await _paced(writer, reader, 24, chunk)
                await asyncio.wait_for(closing.seen.wait(), 10)  # (reading before would catch it up)
            # it did not get everything: it was cut off, not waited for
            assert await _read_until_closed(stalled, 1013, _TOO_SLOW) < 20 * chunk
        finally:
            stalled.close()


async def test_a_client_with_too_much_queued_is_closed_at_once() -> None:
    """Past ``max_queue_bytes`` queued the client is closed without waiting for ``send_timeout``: the
    bytes a stalled client can hold in memory are bounded."""
    chunk = 1 << 20
    async with yjs_server(MemoryStore(), max_message=2 * chunk, queue_size=2, send_timeout=600,
                          max_queue_bytes=4 * chunk) as srv, \
            PyYClient(srv.room_url("slow")) as writer, PyYClient(srv.room_url("slow")) as reader:
        await asyncio.gather(writer.wait_synced(), reader.wait_synced())
        stalled = await _raw_ws_that_never_reads(srv.room_url("slow"))
        try:
            with _watch_log("too slow to read") as closing:
                await _paced(writer, reader, 24, chunk)
                assert closing.seen.is_set()  # at 4 MiB queued, not after send_timeout
            assert await _read_until_closed(stalled, 1013, _TOO_SLOW) < 20 * chunk
        finally:
            stalled.close()


#: decodes as a Yjs v1 update (so it passes ``YRoom.check_update``), but Yrs cannot apply it (a scenario
#: run's mutation fuzzer found it)
_REFUSED_BY_YRS = bytes.fromhex(
    "0103c5a3e89602d484c5a3e89602000368c3a9a8c5a3e896023e017c4020000088c5a3e8960245017c4160000001c5a3e896020e"
    "0101030106010c01130118011a011c0123012a012c05340139013e01")


async def test_an_update_yrs_refuses_closes_its_sender_and_is_not_kept() -> None:
    """It used to be stored, then refused by the room with only a line in the log: its sender was never
    told, and the store kept it until the next compaction."""
    from websockets.exceptions import ConnectionClosed

    from crdtsync.protocol.ywebsocket import SYNC_UPDATE, sync_message

    store = MemoryStore()
    async with yjs_server(store) as srv, PyYClient(srv.room_url("g")) as a:
        await a.wait_synced()
        async with websockets.connect(srv.room_url("g")) as ws:
            await ws.send(sync_message(SYNC_UPDATE, _REFUSED_BY_YRS))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 4400 and ws.close_reason and "update refused" in ws.close_reason
        a.map["after"] = "1"  # the room goes on
        async with PyYClient(srv.room_url("g")) as c:
            await c.wait_until(lambda: "after" in c.map)
    assert all(v != _REFUSED_BY_YRS for _, v in store.load_range(("yjs", "g")))


async def test_compaction_waits_until_the_updates_weigh_half_the_snapshot() -> None:
    """Every 200 updates, a compaction re-encoded the whole room on the event loop: in a 12 MB room typing
    latency went from 6 ms to 76 ms (p99). Now small updates pile up until they weigh half the snapshot."""
    store = MemoryStore()
    async with yjs_server(store, compact_after=20, compact_max=1000) as srv:
        async with PyYClient(srv.room_url("big")) as w:
            await w.wait_synced()
            w.text.insert(0, "x" * 20_000)
        await srv.rooms.wait_idle()
        assert stored_keys(store, "big") == [("yjs", "big", "s")]  # unloaded: one snapshot
        async with PyYClient(srv.room_url("big")) as w, PyYClient(srv.room_url("big")) as r:
            await asyncio.gather(w.wait_synced(), r.wait_synced())
            for i in range(60):  # one at a time: each is one commit, and compaction is decided per commit
                w.array.append(i)
                await r.wait_until(lambda i=i: len(r.array) == i + 1)  # type: ignore[misc]
            assert len(stored_keys(store, "big")) == 1 + 60  # 60 > compact_after, but far from 10 KB
            w.map["bulk"] = "y" * 12_000
            await r.wait_until(lambda: "bulk" in r.map)
            w.array.append(60)
            await r.wait_until(lambda: len(r.array) == 61)
            assert stored_keys(store, "big") == [("yjs", "big", "s"), ("yjs", "big", "u", 61)]


async def test_a_client_offering_subprotocols_gets_its_first_one() -> None:
    """WebsocketProvider's ``protocols`` option: the relay picked none, and browsers (and ``ws``) abort then."""
    offered = ["y-websocket", "auth.x"]
    async with yjs_server(MemoryStore()) as srv, \
            websockets.connect(srv.room_url("sp"), subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "y-websocket"
        await asyncio.wait_for(ws.recv(), 10)  # the room's sync step 1: it is served


@pytest.mark.parametrize("path", ["/", "/health"])
async def test_a_plain_http_get_is_a_health_check(path: str) -> None:
    """The reference server answers 200 "okay"; websockets answered 426 Upgrade Required."""
    async with yjs_server(MemoryStore()) as srv:
        port = int(srv.url.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nokay")


async def test_the_sender_gets_the_waiting_updates_its_update_let_in() -> None:
    """X is online when another connection sends " world", which waits for "hello" (not sent to anyone).
    X then sends "hello": the room integrates both in one transaction, which went to everyone but X, so X
    lacked " world" until it reconnected. The reference server sends it to all, X included."""
    src: Doc = Doc(client_id=7)
    text = src.get("t", type=Text)
    text.insert(0, "hello")
    first = src.get_update()
    before = src.get_state()
    text.insert(5, " world")
    more = src.get_update(before)
    async with yjs_server(MemoryStore()) as srv, PyYClient(srv.room_url("sx")) as x, \
            PyYClient(srv.room_url("sx")) as y:
        await x.wait_synced()
        await y.wait_synced()
        await y.send_raw(sync_message(SYNC_UPDATE, more))
        y.map["marker"] = 1  # stored after ``more``: once x has it, the room holds ``more`` waiting
        await x.wait_until(lambda: "marker" in x.map)
        assert str(x.text) == ""
        x.doc.apply_update(first)  # x's own edit, sent as an update
        await x.wait_until(lambda: str(x.text) == "hello world")
        await y.wait_until(lambda: str(y.text) == "hello world")
