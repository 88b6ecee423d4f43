"""The baseline servers of the fan-out benchmark, each run as its own process.

``python -m bench.fanout.servers bare`` is a plain ``websockets`` broadcast server: every message a client
sends goes to every other client of the same path, as is; no CRDT, no storage. It is the ceiling.

``python -m bench.fanout.servers pycrdt [--store DB]`` is pycrdt-websocket's ``WebsocketServer`` (rooms per
path, the y-websocket protocol), with its SQLite YStore when ``--store`` is given. pycrdt-websocket writes
the store behind the broadcast, one transaction per update; it is the closest thing it has to "durable".

Both listen on 127.0.0.1, port 0, print ``PORT <n>`` and serve until SIGTERM. Clients connect without
permessage-deflate (they ask for none), so no server pays for compression.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections import defaultdict
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from .channel import WebsocketsChannel

__all__ = ["main", "run_bare", "run_pycrdt"]


async def _until_terminated() -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_bare() -> None:
    rooms: dict[str, set[ServerConnection]] = defaultdict(set)

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        peers = rooms[path]
        peers.add(ws)
        try:
            async for message in ws:
                broadcast([p for p in peers if p is not ws], message)
        except ConnectionClosed:
            pass
        finally:
            peers.discard(ws)

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await _until_terminated()


async def run_pycrdt(store: str | None) -> None:
    from pycrdt.store import SQLiteYStore
    from pycrdt.websocket import WebsocketServer, YRoom, exception_logger

    log = logging.getLogger("pycrdt-websocket")

    class Store(SQLiteYStore):
        db_path = store or ":memory:"

    class Server(WebsocketServer):
        async def get_room(self, name: str) -> YRoom:
            if store is not None and name not in self.rooms:
                self.rooms[name] = YRoom(ready=self.rooms_ready, ystore=Store(path=name),
                                         exception_handler=self.exception_handler, log=self.log)
            return await super().get_room(name)

    ws_server = Server(exception_handler=exception_logger, log=log, auto_clean_rooms=False)

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        await ws_server.serve(WebsocketsChannel(ws, path))

    async with ws_server, serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await _until_terminated()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["bare", "pycrdt"])
    parser.add_argument("--store", help="pycrdt: SQLite YStore file (none: in memory only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_bare() if args.kind == "bare" else run_pycrdt(args.store))


if __name__ == "__main__":
    main()
