"""The client's cursor never moves past what it has received and applied, against a scripted relay (the
protocol core in the relay role on a real websocket) or a real one behind a proxy, doing what a real relay
only does under unlucky timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import orjson
from websockets.asyncio.server import ServerConnection, serve

from crdtsync import Record, Replica
from crdtsync.protocol import Changes, Connection, Item, Live, Pull, Role, Welcome
from crdtsync.protocol.frames import Kind

from .conftest import ProxyFactory, RelayFactory, Watch, client, sync


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


async def test_a_crash_while_applying_the_last_page_loses_nothing_when_live_frames_came_right_behind_it(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], make_proxy: ProxyFactory) -> None:
    """A real relay's LIVE frames right behind the last page of a pull (stored while the page was on its
    way), read by the client before it applied the page: the device stops while applying the page. Its
    cursor must not have moved past the page: reopened, it gets every record."""
    relay = await make_relay()
    c = make_replica("c")
    early = {c.create("accounts", {"name": f"early {i}"}) for i in range(5)}
    async with client(c, relay.url) as cc:
        await sync(cc)
        b = make_replica("b")
        crashed: list[str] = []

        def apply_remote(items: Iterable[tuple[str, str, bytes]], meta: dict[str, bytes] | None = None
                         ) -> list[Record]:
            items = list(items)
            if crashed or any(rid in early for _, rid, _ in items):
                crashed.append("page")  # the process stops here: nothing of it, nor after it, is stored
                raise RuntimeError("device killed while applying a page")
            return orig(items, meta=meta)

        orig = b.apply_remote
        b.apply_remote = apply_remote  # type: ignore[method-assign]
        proxy = await make_proxy(relay.port)
        bc = client(b, proxy.url)
        w = Watch(bc)
        bc.subscribe(lambda st: proxy.hold() if st.kind == "online" else None)  # before its first pull
        async with bc:
            await proxy.seen(lambda kind, h: kind is Kind.CHANGES and not h["more"])
            late = c.create("accounts", {"name": "late"})
            await sync(cc)  # stored after the last page was sent: LIVE, right behind it
            await proxy.seen(lambda kind, h: kind is Kind.LIVE)
            proxy.release()
            await w.wait(lambda st: st.kind == "failed")
        assert crashed
        b.close()
    b = make_replica("b")
    async with client(b, relay.url) as bc:
        await sync(bc)
    assert {r.id for r in b.query("accounts")} == early | {late}
