"""The relay's I/O under pressure: reads beside a slow commit, and a live reader that stops reading."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crdtsync import Replica, SQLiteStore
from crdtsync.protocol import Changes, Live, Pull
from crdtsync.relay import Limits
from crdtsync.store import Batch

from .conftest import BOUND, RawClient, RelayFactory, Watch, client, sync


def test_reads_do_not_wait_for_a_commit_in_progress(tmp_path: Path) -> None:
    """A commit stuck on the database's write lock (here: another connection holds it, as a slow fsync
    would) must not block loads: the relay reads on its event loop while its writer thread commits."""
    store = SQLiteStore(tmp_path / "s.db", synchronous="NORMAL")
    store.save(("a",), b"1")
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    in_commit = threading.Event()
    store._db.set_trace_callback(  # type: ignore[union-attr]  # tells us the writer reached BEGIN (or, for a
        lambda sql: in_commit.set() if sql.startswith(("BEGIN", "INSERT")) else None)  # one-key batch, INSERT)
    batch = Batch()
    batch.save(("b",), b"2")
    with ThreadPoolExecutor(2) as pool:
        committing = pool.submit(store.commit, batch)
        assert in_commit.wait(BOUND)
        loading = pool.submit(lambda: (store.load(("a",)), store.load_range(("b",))))
        assert loading.result(timeout=2.0) == (b"1", [])  # committed data only, at once
        blocker.execute("ROLLBACK")
        committing.result(timeout=BOUND)
    assert store.load(("b",)) == b"2"
    blocker.close()
    store.close()


async def test_a_live_reader_that_stops_reading_is_closed_with_4408(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], caplog: pytest.LogCaptureFixture) -> None:
    """A device that stops reading its live stream must not make the relay buffer without bound, nor
    lose changes silently: its queue fills, it is told 4408 (reconnect and catch up), others carry on."""
    caplog.set_level(logging.WARNING, logger="crdtsync.relay")
    relay = await make_relay(limits=Limits(send_queue=4))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", relay.port))
    sock.setblocking(False)
    async with connect(relay.url, sock=sock, max_queue=1) as ws:
        raw = RawClient(ws)
        await raw.handshake("slow")
        raw.conn.send(Pull(1, 0, live=True))
        await raw.flush()
        [page] = await raw.next_events()
        assert isinstance(page, Changes) and not page.more
        # from here on the raw client reads nothing: its socket buffer and the relay's fill up
        writer = make_replica("writer")
        async with client(writer, relay.url) as cw:
            await sync(cw)
            for _ in range(60):  # bounded: each round stores one ~256 KB change, fanned out live
                writer.create("accounts", {"name": "Big", "notes": "x" * 256_000})
                await sync(cw)
                if any("4408" in r.getMessage() for r in caplog.records):
                    break
            else:
                raise AssertionError("the slow reader was never closed")
            # the writer was never held up by the slow reader, and nothing it wrote is lost
            assert writer.pending() == []
        with pytest.raises(ConnectionClosed):
            while True:  # read again: whatever was queued before the close, then the close itself
                await asyncio.wait_for(ws.recv(), BOUND)
        assert ws.close_code == 4408 and ws.close_reason and "reconnect" in ws.close_reason


async def test_a_full_resync_during_a_commit_never_skips_the_change_being_committed(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """A device's first sync (a full resync) that runs while another device's push is staged but not yet
    durable must not get a cursor past that push: it would never receive it, neither live nor by delta."""
    relay = await make_relay()
    assert relay.store is not None and relay.relay is not None
    for device in ("a", "b"):  # both devices are known to the relay (binding one is a write)
        async with connect(relay.url) as ws:
            await RawClient(ws).handshake(device)
    a, b = make_replica("a"), make_replica("b")
    a.create("accounts", {"name": "already stored"})
    async with client(a, relay.url) as ca:
        await sync(ca)  # so b's first sync is a full resync
    blocker = sqlite3.connect(relay.path, isolation_level=None, timeout=0)
    in_commit = threading.Event()
    relay.store._db.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: in_commit.set() if sql.startswith(("BEGIN", "INSERT")) else None)
    blocker.execute("BEGIN IMMEDIATE")  # the relay's next commit waits (as on a slow disk)
    clients = [client(b, relay.url)]
    try:
        rid = a.create("accounts", {"name": "being committed"})
        cb = clients[0]
        w = Watch(cb)
        got: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        b.subscribe(lambda ev: got.done() or ev.id != rid or got.set_result(None))
        async with client(a, relay.url) as ca:
            pushing = asyncio.ensure_future(ca.sync_now())
            assert await asyncio.get_running_loop().run_in_executor(None, in_commit.wait, BOUND)
            await cb.start()
            await sync(cb)  # served from committed data while the push waits
            first = next(s.result for s in w.events if s.kind == "completed")
            assert first is not None and first.reset and first.received == 1 and first.cursor == 1
            blocker.execute("ROLLBACK")
            await asyncio.wait_for(pushing, BOUND)
            await asyncio.wait_for(got, BOUND)  # arrives live ...
            await cb.close()
        async with client(b, relay.url) as cb:
            again = await sync(cb)
        assert b.get("accounts", rid) is not None and again.cursor == 2  # ... and the cursor is right
    finally:
        await clients[0].close()
        blocker.close()


async def test_a_reader_that_falls_behind_for_a_while_still_gets_every_change_once_and_in_order(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """Frames go straight to the socket while a connection keeps up, and through its queue once it does not:
    a reader that stops reading for a while (within the queue's limit) and then resumes gets every live
    change exactly once, in seq order, across both ways."""
    relay = await make_relay(limits=Limits(send_queue=256))
    assert relay.relay is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", relay.port))
    sock.setblocking(False)
    async with connect(relay.url, sock=sock, max_queue=1, max_size=None) as ws:
        raw = RawClient(ws)
        await raw.handshake("paused")
        raw.conn.send(Pull(1, 0, live=True))
        await raw.flush()
        [page] = await raw.next_events()
        assert isinstance(page, Changes) and not page.more
        [session] = [s for s in relay.relay.sessions if s.device == "paused"]
        writer = make_replica("writer")
        made: list[str] = []
        queued = False
        async with client(writer, relay.url) as cw:
            await sync(cw)
            for i in range(40):  # bounded: each round stores one ~64 KB change (one write group, one frame)
                made.append(writer.create("accounts", {"name": f"Big {i}", "notes": "x" * 64_000}))
                await sync(cw)
                queued = queued or session.out.qsize() > 0
                if queued and len(made) >= 8:
                    break
            assert queued, "the reader's socket never fell behind: the queue was not exercised"
            seqs: list[int] = []
            records: list[str] = []

            async def read(until: int) -> None:
                while len(records) < until:
                    for ev in await raw.next_events():
                        assert isinstance(ev, Live), ev
                        seqs.extend(it.seq for it in ev.items)
                        records.extend(it.record for it in ev.items)

            reading = asyncio.ensure_future(read(len(made) + 10))  # the reader reads again, meanwhile ...
            for i in range(10):  # ... small changes follow, while the queue drains: both ways at once
                made.append(writer.create("accounts", {"name": f"Small {i}"}))
                await sync(cw)
            await asyncio.wait_for(reading, BOUND)
        assert records == made and seqs == sorted(set(seqs))  # all, once each, in order
        assert ws.close_code is None  # never closed for being slow: it stayed within the queue's limit
