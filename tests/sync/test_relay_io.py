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
from crdtsync.protocol import Changes, Pull
from crdtsync.relay import Limits
from crdtsync.store import Batch

from .conftest import BOUND, RawClient, RelayFactory, client, sync


def test_reads_do_not_wait_for_a_commit_in_progress(tmp_path: Path) -> None:
    """A commit stuck on the database's write lock (here: another connection holds it, as a slow fsync
    would) must not block loads: the relay reads on its event loop while its writer thread commits."""
    store = SQLiteStore(tmp_path / "s.db", synchronous="NORMAL")
    store.save(("a",), b"1")
    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    in_commit = threading.Event()
    store._db.set_trace_callback(  # type: ignore[union-attr]  # tells us the writer reached BEGIN
        lambda sql: in_commit.set() if sql.startswith("BEGIN") else None)
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
