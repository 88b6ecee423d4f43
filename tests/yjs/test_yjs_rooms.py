"""YjsRooms over real websockets on 127.0.0.1 with Python y-websocket clients (pycrdt docs)."""

from __future__ import annotations

from pathlib import Path

from crdtsync.store.sqlite import SQLiteStore
from tests.yjs.harness import PyYClient, yjs_server


async def test_two_clients_converge(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db")
    async with yjs_server(store) as srv, PyYClient(srv.room_url("r1")) as a, PyYClient(srv.room_url("r1")) as b:
        await a.wait_synced()
        await b.wait_synced()
        a.map["x"] = "from a"
        b.map["y"] = "from b"
        await a.wait_until(lambda: "y" in a.map)
        await b.wait_until(lambda: "x" in b.map)
        assert a.content() == b.content()
