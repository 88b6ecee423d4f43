"""A bare crdtsync protocol client for the benchmarks: the real protocol core over websockets, no replica.

It speaks exactly what ``SyncClient`` speaks (same ``Connection`` core, same frames) but keeps nothing: it
hands received items to a callback and counts the messages and bytes it received, so a benchmark measures
the relay and the wire rather than a device's storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from crdtsync.protocol.connection import Connection, Role
from crdtsync.protocol.events import Ack, Change, Changes, Event, Hello, Item, Live, Pull, Push, Welcome

__all__ = ["ProtoClient"]


class ProtoClient:
    """One device's connection. ``await ProtoClient.open(url, device)``; ``close()`` when done."""

    def __init__(self, ws: ClientConnection, device: str) -> None:
        self.ws = ws
        self.device = device
        self.conn = Connection(Role.CLIENT)
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[Welcome] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.acks: dict[int, asyncio.Future[Ack]] = {}
        self.pages: asyncio.Queue[Changes] = asyncio.Queue()
        self.on_items: Callable[[Sequence[Item]], None] | None = None
        self.bytes_received = 0
        self.messages_received = 0
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, device: str, *, token: str | None = None, timeout: float = 10.0) -> ProtoClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await connect(url, additional_headers=headers, compression=None, proxy=None, max_size=None,
                           open_timeout=timeout, close_timeout=2)
        client = cls(ws, device)
        await client.send(Hello(device, "crdtsync-bench"))
        await asyncio.wait_for(asyncio.shield(client.welcome), timeout)
        return client

    async def _read(self) -> None:
        reason = "closed"
        try:
            async for message in self.ws:
                data = message if isinstance(message, bytes) else message.encode()
                self.bytes_received += len(data)
                self.messages_received += 1
                self.conn.receive_data(data)
                for ev in self.conn.events_received():
                    self._dispatch(ev)
                for out in self.conn.data_to_send():
                    await self.ws.send(out)
        except ConnectionClosed as e:
            reason = f"connection closed: {e}"
        finally:
            if self.ws.close_code is not None:
                reason = f"closed by the relay: {self.ws.close_code} {self.ws.close_reason}"
            if not self.closed.done():
                self.closed.set_result(reason)
            err = ConnectionError(reason)
            waiting: list[asyncio.Future[Welcome] | asyncio.Future[Ack]] = [self.welcome, *self.acks.values()]
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(err)

    def _dispatch(self, ev: Event) -> None:
        if isinstance(ev, Welcome):
            if not self.welcome.done():
                self.welcome.set_result(ev)
        elif isinstance(ev, Ack):
            fut = self.acks.pop(ev.id, None)
            if fut is not None and not fut.done():
                fut.set_result(ev)
        elif isinstance(ev, Changes):
            if self.on_items is not None and ev.items:
                self.on_items(ev.items)
            self.pages.put_nowait(ev)
        elif isinstance(ev, Live) and self.on_items is not None:
            self.on_items(ev.items)

    async def send(self, ev: Event) -> None:
        self.conn.send(ev)
        for data in self.conn.data_to_send():
            await self.ws.send(data)

    async def push(self, changes: Sequence[Change]) -> asyncio.Future[Ack]:
        """Send one push; returns the future of its ack (the relay stored it)."""
        push = Push(next(self._ids), tuple(changes))
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self.acks[push.id] = fut
        await self.send(push)
        return fut

    async def pull(self, since: int, relay: str | None, *, live: bool, timeout: float = 60.0) -> list[Changes]:
        """Pull every page after ``since``; with ``live`` the relay streams new changes afterwards."""
        await self.send(Pull(next(self._ids), since, relay, None, live))
        pages = []
        async with asyncio.timeout(timeout):
            while True:
                page = await self.pages.get()
                pages.append(page)
                if not page.more:
                    return pages

    async def close(self) -> None:
        self.conn.close(1000, "bye")
        with contextlib.suppress(Exception):
            for data in self.conn.data_to_send():
                await self.ws.send(data)
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
