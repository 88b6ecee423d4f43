"""The client side of the baseline legs: a bare broadcast writer/readers, and pycrdt Docs over y-websocket.

Each leg connects its readers, checks they are all in the room, then times from the writer's first write
until every reader has every update, bounded by ``timeout``: a reader that never completes is reported with
what it got, the run never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .channel import WebsocketsChannel
from .result import LegResult
from .waiting import wait_readers

__all__ = ["bare_leg", "pycrdt_leg"]

_HELLO = b"H"
_UPDATE = b"U"
_FILLER = b"x" * 20  # about the size of a small Yjs map update


async def _connect(port: int, path: str) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{port}{path}", compression=None, proxy=None, max_size=None,
                         open_timeout=10, close_timeout=2)


async def _close_all(conns: list[ClientConnection]) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def bare_leg(port: int, updates: int, readers: int, timeout: float,
                   server_cpu: Callable[[], float], *, idle: float = 10.0) -> LegResult:
    """Writer sends ``updates`` numbered messages; each reader counts the distinct numbers it got."""
    path = f"/bare-{uuid.uuid4().hex[:8]}"
    writer = await _connect(port, path)
    conns = [writer]
    seen: list[set[int]] = [set() for _ in range(readers)]
    counts = [0] * readers
    loop = asyncio.get_running_loop()
    done: list[asyncio.Future[float]] = [loop.create_future() for _ in range(readers)]
    tasks: list[asyncio.Task[None]] = []

    async def read(i: int, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for msg in ws:
                if isinstance(msg, bytes) and msg[:1] == _UPDATE:
                    counts[i] += 1
                    seen[i].add(int.from_bytes(msg[1:5], "big"))
                    if len(seen[i]) == updates and not done[i].done():
                        done[i].set_result(time.perf_counter())
    try:
        for i in range(readers):
            ws = await _connect(port, path)
            conns.append(ws)
            tasks.append(asyncio.create_task(read(i, ws)))
            await ws.send(_HELLO)
        # every reader's hello came back through the server: every reader is registered in the room
        async with asyncio.timeout(10):
            hellos = 0
            while hellos < readers:
                if await writer.recv() == _HELLO:
                    hellos += 1
        cpu0, srv0 = time.process_time(), server_cpu()
        t0 = time.perf_counter()
        for n in range(updates):
            await writer.send(_UPDATE + n.to_bytes(4, "big") + _FILLER)
        end, why = await wait_readers(done, lambda: sum(counts), idle=idle, cap=timeout)
        return LegResult("bare-broadcast", updates, end - t0, counts, [len(s) for s in seen], why is not None,
                         server_cpu() - srv0, time.process_time() - cpu0, notes=[why] if why else [])
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close_all(conns)


class _YClient:
    """A pycrdt Doc connected to a y-websocket room through pycrdt's own Provider."""

    def __init__(self, ws: ClientConnection, path: str) -> None:
        from pycrdt import Doc, Map, Provider

        self.ws = ws
        self.doc: Any = Doc()
        self.map: Any = self.doc.get("m", type=Map)
        self.channel = WebsocketsChannel(ws, path)
        self.provider = Provider(self.doc, self.channel)
        self.task = asyncio.create_task(self.provider.start())
        self.visible = 0
        self.expected = 0
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.map.observe(self._changed)

    def _changed(self, event: Any) -> None:
        self.visible += len(event.keys)
        if self.expected and self.visible >= self.expected and not self.done.done():
            self.done.set_result(time.perf_counter())

    async def stop(self) -> None:
        if self.provider.started.is_set():
            with contextlib.suppress(Exception):
                await self.provider.stop()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self.task, 5)


def y_update_messages(updates: int) -> list[bytes]:
    """The writer's ``updates`` map sets, made on a Doc of their own, as y-websocket update messages."""
    from pycrdt import Doc, Map, create_update_message

    doc: Any = Doc()
    m = doc.get("m", type=Map)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(create_update_message(event.update)))
    for n in range(updates):
        m[f"k{n}"] = n
    return out


def _stored(db: str | None) -> int | None:
    if db is None:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT count(*) FROM yupdates").fetchone()[0])
    except sqlite3.Error:
        return None


async def pycrdt_leg(name: str, port: int, updates: int, readers: int, timeout: float,
                     server_cpu: Callable[[], float], *, store_db: str | None = None,
                     concurrent_open: bool = False, connect_timeout: float = 10.0, idle: float = 10.0,
                     writer_mode: str = "raw") -> LegResult:
    """Writer Doc sets ``updates`` keys of a Map, one transaction each; readers count the keys they see.

    ``writer_mode="raw"`` (the default) makes the updates before the clock starts and sends them back to
    back as y-websocket update messages, as the crdtsync writer does with its pushes; ``"provider"`` makes
    them during the timed part and lets pycrdt's Provider send them (one message per transaction).

    The writer joins the new room first and the readers after it, because pycrdt-websocket can hang when
    two clients open a new room at the same moment; ``concurrent_open`` opens them all at once instead, to
    show that (clients that do not sync within ``connect_timeout`` are reported, not waited for).
    """
    path = f"/room-{uuid.uuid4().hex[:8]}"
    clients: list[_YClient] = []
    notes: list[str] = []
    try:
        async def join() -> _YClient:
            client = _YClient(await _connect(port, path), path)
            clients.append(client)
            return client

        async def synced(client: _YClient) -> bool:
            try:
                await asyncio.wait_for(client.provider.synced.wait(), connect_timeout)
                return True
            except TimeoutError:
                return False

        if concurrent_open:
            joined = await asyncio.gather(*(join() for _ in range(readers + 1)))
            writer, reader_clients = joined[0], joined[1:]
            ok = await asyncio.gather(*(synced(c) for c in joined))
        else:
            writer = await join()
            ok = [await synced(writer)]
            reader_clients = list(await asyncio.gather(*(join() for _ in range(readers))))
            ok += await asyncio.gather(*(synced(c) for c in reader_clients))
        if not all(ok):
            notes.append(f"{ok.count(False)} of {len(ok)} clients never synced within {connect_timeout:.0f} s "
                         "(hung on opening the room)")
        for c in reader_clients:
            c.expected = updates
        messages = y_update_messages(updates) if writer_mode == "raw" else []
        cpu0, srv0 = time.process_time(), server_cpu()
        t0 = time.perf_counter()
        if writer_mode == "raw":
            for msg in messages:
                await writer.ws.send(msg)
        else:
            for n in range(updates):
                writer.map[f"k{n}"] = n
        end, why = await wait_readers([c.done for c in reader_clients],
                                      lambda: sum(c.channel.updates_received for c in reader_clients),
                                      idle=idle, cap=timeout)
        if why:
            notes.append(why)
        timed_out = why is not None
        stored_at_done = _stored(store_db)
        received = [c.channel.updates_received for c in reader_clients]
        visible = [c.visible for c in reader_clients]
        result = LegResult(name, updates, end - t0, received, visible, timed_out, server_cpu() - srv0,
                           time.process_time() - cpu0, stored_at_done=stored_at_done, notes=notes)
        if any(r < updates for r in received):
            notes.append(f"update messages received per reader: {received} (of {updates})")
        if store_db is not None:
            # how long the store lags behind the broadcast (bounded)
            deadline = time.perf_counter() + 10
            while (stored := _stored(store_db) or 0) < updates and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            result.stored_final = stored
            notes.append(f"SQLite YStore held {stored_at_done} of {updates} updates when every reader had them; "
                         f"{stored} after {time.perf_counter() - end:.1f} s more")
        return result
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        await _close_all([c.ws for c in clients])
