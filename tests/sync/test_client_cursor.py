"""The client's cursor never moves past what it has received, against a scripted relay (the protocol core
in the relay role on a real websocket) that does what a real relay only does under unlucky timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from websockets.asyncio.server import ServerConnection, serve

from crdtsync import Replica
from crdtsync.protocol import Changes, Connection, Item, Live, Pull, Role, Welcome

from .conftest import Watch, client


async def test_a_live_frame_during_a_paged_pull_does_not_move_the_cursor_past_the_missing_pages(
        make_replica: Callable[..., Replica]) -> None:
    other = make_replica("other")
    rid = other.create("accounts", {"name": "live"})
    [(_, update)] = other.outgoing()
    served: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def relay(ws: ServerConnection) -> None:
        conn = Connection(Role.RELAY)
        conn.receive_data(await ws.recv())  # HELLO
        conn.events_received()
        conn.send(Welcome("*", "relay-1", 100, 0, "*", "*"))
        for data in conn.data_to_send():
            await ws.send(data)
        while True:
            conn.receive_data(await ws.recv())
            pulls = [e for e in conn.events_received() if isinstance(e, Pull)]
            if pulls:
                break
        # the first of several pages (entries 1..5 of 100), then a change stored meanwhile, live, then
        # the connection drops before the other pages
        conn.send(Changes(pulls[0].id, (), 5, 100, 5, True))
        conn.send(Live((Item("accounts", rid, 100, update),)))
        for data in conn.data_to_send():
            await ws.send(data)
        if not served.done():
            served.set_result(None)
        await ws.close(1011, "gone")

    async with serve(relay, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        r = make_replica("r")
        c = client(r, f"ws://127.0.0.1:{port}")
        w = Watch(c)
        async with c:
            await asyncio.wait_for(served, 20)
            await w.wait(lambda s: s.kind == "failed")
            assert r.get("accounts", rid) is not None  # the live change was applied ...
    raw = r.get_meta("sync.cursor")
    assert raw is not None
    cursors = orjson.loads(raw)
    assert cursors["relay"] == "relay-1" and set(cursors["c"].values()) == {5}  # ... but the cursor stays at 5
