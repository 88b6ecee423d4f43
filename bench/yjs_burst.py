"""What durable Yjs rooms cost: a burst of small updates through YjsRooms, per store, in one run.

A writer sends N one-item updates as fast as websockets lets it and leaves at once; a live reader counts
the updates it receives. Reported per store: the time until the reader has all N, updates a second, the
ratio to the in-memory store measured in the same run (the baseline: no disk at all), and how many of the
N are in the store once the room unloaded (must be all). Loopback only, bounded, stops by itself.

    PYTHONPATH=. python bench/yjs_burst.py [--n 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets
from pycrdt import Array, Doc
from websockets.asyncio.server import ServerConnection, serve

from crdtsync.protocol.ywebsocket import MESSAGE_SYNC, SYNC_STEP1, SYNC_UPDATE, Reader, sync_message
from crdtsync.relay.yjs import YjsRooms
from crdtsync.store.base import Batch, ByteStore
from crdtsync.store.keys import Key
from crdtsync.store.memory import MemoryStore
from crdtsync.store.sqlite import SQLiteStore

__all__ = ["main", "run_once"]


class CountingStore(ByteStore):
    """Counts the commits (transactions) reaching the store it wraps: batching shows here."""

    def __init__(self, inner: ByteStore) -> None:
        self.inner = inner
        self.commits = 0

    def load(self, key: Key) -> bytes | None:
        return self.inner.load(key)

    def load_range(self, prefix: Key, *, start: Key | None = None, limit: int | None = None,
                   reverse: bool = False) -> list[tuple[Key, bytes]]:
        return self.inner.load_range(prefix, start=start, limit=limit, reverse=reverse)

    def commit(self, batch: Batch) -> None:
        self.commits += 1
        self.inner.commit(batch)

    def close(self) -> None:
        self.inner.close()


def make_updates(n: int) -> list[bytes]:
    doc: Doc[Any] = Doc()
    arr: Array[Any] = doc.get("a", type=Array)
    out: list[bytes] = []
    doc.observe(lambda e: out.append(e.update))
    for i in range(n):
        arr.append(f"item-{i}")
    return out


async def run_once(store: ByteStore, updates: list[bytes]) -> tuple[float, int]:
    rooms = YjsRooms(store)

    async def handler(ws: ServerConnection) -> None:
        await rooms.serve(ws, "bench", can_write=True)

    n = len(updates)
    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/yjs/bench"
        async with websockets.connect(url, max_size=None) as reader:
            await reader.send(sync_message(SYNC_STEP1, b"\x00"))
            got = 0
            t0 = time.perf_counter()
            async with websockets.connect(url, max_size=None) as writer:
                for u in updates:
                    await writer.send(sync_message(SYNC_UPDATE, u))
            while got < n:
                data = await asyncio.wait_for(reader.recv(), 30)
                r = Reader(bytes(data))
                if r.var_uint() == MESSAGE_SYNC and r.var_uint() == SYNC_UPDATE:
                    got += 1
            elapsed = time.perf_counter() - t0
    await rooms.close()
    doc: Doc[Any] = Doc()
    for _, raw in store.load_range(("yjs", "bench")):
        doc.apply_update(raw)
    return elapsed, len(doc.get("a", type=Array))


async def main_async(n: int) -> None:
    updates = make_updates(n)
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, ByteStore]] = [
            ("memory (baseline)", MemoryStore()),
            ("sqlite NORMAL", SQLiteStore(Path(tmp) / "normal.db", synchronous="NORMAL")),
            ("sqlite FULL", SQLiteStore(Path(tmp) / "full.db", synchronous="FULL")),
        ]
        base: float | None = None
        print(f"burst of {n} one-item updates, writer leaves at once, one live reader")
        print(f"{'store':<20}{'seconds':>9}{'updates/s':>12}{'x baseline':>12}{'stored':>13}{'commits':>9}")
        for name, inner in runs:
            store = CountingStore(inner)
            elapsed, stored = await run_once(store, updates)
            base = base or elapsed
            print(f"{name:<20}{elapsed:>9.2f}{n / elapsed:>12.0f}{elapsed / base:>12.2f}"
                  f"{f'{stored}/{n}':>13}{store.commits:>9}")
            store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000)
    asyncio.run(main_async(p.parse_args().n))


if __name__ == "__main__":
    main()
