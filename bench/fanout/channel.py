"""A pycrdt ``Channel`` over a ``websockets`` connection, for pycrdt-websocket's server and pycrdt's Provider.

pycrdt-websocket 0.16.5 ships only an httpx-ws adapter, so both ends of the y-websocket leg use this one.
It also counts what crosses it: y-sync update messages and bytes received, for the drop report.
"""

from __future__ import annotations

import contextlib
from typing import Any

from websockets.exceptions import ConnectionClosed

__all__ = ["WebsocketsChannel"]

_SYNC = 0
_SYNC_UPDATE = 2


class WebsocketsChannel:
    """Adapts a websockets connection (client or server side) to pycrdt's ``Channel`` protocol."""

    def __init__(self, ws: Any, path: str) -> None:
        self._ws = ws
        self._path = path
        self.updates_received = 0
        self.bytes_received = 0

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketsChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        # a peer that left must not crash the room's task group: its messages are simply not delivered
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(message)

    async def recv(self) -> bytes:
        data = await self._ws.recv(decode=False)
        message = bytes(data)
        self.bytes_received += len(message)
        if len(message) > 1 and message[0] == _SYNC and message[1] == _SYNC_UPDATE:
            self.updates_received += 1
        return message
