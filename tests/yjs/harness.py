"""Test harness for the Yjs rooms: a stand-in relay and a minimal Python y-websocket client.

``yjs_server`` is the one place that starts a server: a websockets server on 127.0.0.1, port 0, that
routes ``/yjs/<room>?token=...`` to ``YjsRooms.serve`` (token ``ro`` is read-only, anything else may
write). Once the real relay routes ``/yjs/`` itself, swap this function's body for the relay's: it must
yield an object with ``url`` (``ws://127.0.0.1:PORT/yjs``), ``room_url(room, token)`` and ``rooms`` (the
relay's ``YjsRooms``, built with ``**options``), with a tokens file holding a read-write token ``rw`` and
a read-only token ``ro`` for every room.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import websockets
from pycrdt import Array, Doc, Map, Text, TransactionEvent

from crdtsync.errors import RemoteProtocolError
from crdtsync.protocol.ywebsocket import (
    MESSAGE_AUTH,
    MESSAGE_AWARENESS,
    MESSAGE_SYNC,
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    AwarenessEntry,
    Reader,
    awareness_message,
    decode_awareness,
    sync_message,
)
from crdtsync.relay.auth import Grant, Tokens
from crdtsync.relay.server import Relay
from crdtsync.relay.yjs import YjsRooms
from crdtsync.schema import Schema
from crdtsync.store.base import ByteStore

__all__ = ["PyYClient", "YjsServer", "yjs_server"]

TIMEOUT = 10.0


@dataclass
class YjsServer:
    url: str           # ws://127.0.0.1:PORT/yjs : the provider's serverUrl
    rooms: YjsRooms

    def room_url(self, room: str, token: str = "rw") -> str:
        return f"{self.url}/{room}?token={token}"


@contextlib.asynccontextmanager
async def yjs_server(store: ByteStore, **options: Any) -> AsyncIterator[YjsServer]:
    """The real crdtsync ``Relay`` serving ``/yjs/<room>`` from ``store``, with two tokens: ``rw`` may
    write every room, ``ro`` may only read. ``options`` tune the relay's ``YjsRooms``."""
    tokens = Tokens({"rw": Grant("writer", rooms=frozenset({"*"})),
                     "ro": Grant("reader", rooms_read_only=frozenset({"*"}))})
    relay = Relay(store, Schema(), tokens)
    if options:
        relay.rooms = YjsRooms(store, **options)
    _, port = await relay.start("127.0.0.1", 0)
    try:
        yield YjsServer(f"ws://127.0.0.1:{port}/yjs", relay.rooms)
    finally:
        await relay.stop()


class PyYClient:
    """A y-websocket client on a pycrdt Doc with a map ``m``, an array ``a`` and a text ``t``.

    It does what ``WebsocketProvider`` does: sends sync step 1 on open, answers step 1 with step 2,
    applies step 2 and updates, sends its own changes as updates, and counts as synced on its first
    step 2. ``changed`` is notified on every message so tests can await a condition without sleeping.
    """

    def __init__(self, url: str, *, client_id: int | None = None) -> None:
        self.url = url
        self.doc: Doc[Any] = Doc() if client_id is None else Doc(client_id=client_id)
        self.map: Map[Any] = self.doc.get("m", type=Map)
        self.array: Array[Any] = self.doc.get("a", type=Array)
        self.text: Text = self.doc.get("t", type=Text)
        self.synced = asyncio.Event()
        self.changed = asyncio.Condition()
        self.awareness: dict[int, AwarenessEntry] = {}
        self.denied: list[str] = []
        self.ws: websockets.asyncio.client.ClientConnection | None = None
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._remote = False
        self._tasks: list[asyncio.Task[None]] = []
        self.doc.observe(self._on_change)

    def _on_change(self, event: TransactionEvent) -> None:
        if not self._remote:
            self._out.put_nowait(sync_message(SYNC_UPDATE, event.update))

    async def __aenter__(self) -> PyYClient:
        self.ws = await websockets.connect(self.url, max_size=None)
        await self.ws.send(sync_message(SYNC_STEP1, self.doc.get_state()))
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._write())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Send every local change still queued, then close (as WebsocketProvider's buffered socket does)."""
        if self.ws is not None:
            if not self.closed and self._tasks and not self._tasks[1].done():
                await asyncio.wait_for(self._out.join(), TIMEOUT)
            if not self.closed:  # closing a connection the server already closed can trip websockets
                await self.ws.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send_raw(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    def set_awareness(self, state: str, clock: int) -> None:
        self._out.put_nowait(awareness_message([AwarenessEntry(self.doc.client_id, clock, state)]))

    async def _write(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                frame = await self._out.get()
                try:
                    await self.ws.send(frame)
                finally:
                    self._out.task_done()

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                assert isinstance(data, bytes)
                self._handle(data)
                async with self.changed:
                    self.changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            async with self.changed:
                self.changed.notify_all()

    def _handle(self, data: bytes) -> None:
        r = Reader(data)
        kind = r.var_uint()
        if kind == MESSAGE_SYNC:
            step = r.var_uint()
            payload = r.var_bytes()
            if step == SYNC_STEP1:
                self._out.put_nowait(sync_message(SYNC_STEP2, self.doc.get_update(payload)))
                return
            self._remote = True
            try:
                self.doc.apply_update(payload)
            finally:
                self._remote = False
            if step == SYNC_STEP2:
                self.synced.set()
        elif kind == MESSAGE_AWARENESS:
            for e in decode_awareness(r.var_bytes()):
                self.awareness[e.client] = e
        elif kind == MESSAGE_AUTH:
            r.var_uint()
            self.denied.append(r.var_string())
        else:
            raise RemoteProtocolError(f"unexpected message kind {kind}")

    async def wait_until(self, condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: condition() or self.closed)
            ws = self.ws
            assert condition(), f"connection closed first: {ws and ws.close_code} {ws and ws.close_reason}"
        await asyncio.wait_for(wait(), timeout)

    async def wait_synced(self, timeout: float = TIMEOUT) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def wait_closed(self, timeout: float = TIMEOUT) -> tuple[int | None, str | None]:
        assert self.ws is not None
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code, self.ws.close_reason

    @property
    def closed(self) -> bool:
        return self.ws is not None and self.ws.close_code is not None

    def content(self) -> dict[str, Any]:
        """The document as plain JSON-able data, comparable with what the Node clients print."""
        return {"m": {k: self.map[k] for k in sorted(self.map.keys())}, "a": list(self.array), "t": str(self.text)}
