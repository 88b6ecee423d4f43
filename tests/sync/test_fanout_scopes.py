"""Live fan-out shares one frame between devices of the same scope: each device still gets exactly what its
grant, its live collections and its own changes allow, in one write group mixing all of them."""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.protocol import Ack, Change, Changes, Live, Pull, Push
from crdtsync.relay import Grant

from .conftest import RawClient, RelayFactory

EVERYTHING = frozenset({"*"})

GRANTS = {
    "tok-writer": Grant("writer", EVERYTHING, EVERYTHING),
    "tok-carol": Grant("carol", EVERYTHING),
    "tok-dave": Grant("dave", EVERYTHING),  # another grant with carol's scope: the same frame
    "tok-alice": Grant("alice", frozenset({"accounts", "contacts"}), where={"accounts": {"owner": "alice"}}),
    "tok-bob": Grant("bob", EVERYTHING, where={"accounts": {"owner": "bob"}}),
    "tok-rita": Grant("rita", frozenset({"accounts"})),
}


async def _live_reader(url: str, token: str, device: str, collections: tuple[str, ...] | None) -> RawClient:
    ws = await connect(f"{url}/?token={token}")
    raw = RawClient(ws)
    await raw.handshake(device)
    raw.conn.send(Pull(1, 0, None, collections, live=True))
    await raw.flush()
    while True:
        evs = await raw.next_events()
        if any(isinstance(e, Changes) and not e.more for e in evs):
            return raw


async def _next_live(raw: RawClient) -> set[str]:
    evs = await raw.next_events()
    assert all(isinstance(e, Live) for e in evs), evs
    return {f"{i.collection}/{i.record}" for e in evs if isinstance(e, Live) for i in e.items}


async def test_one_write_group_reaches_each_device_within_its_scope(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(GRANTS)
    w = make_replica("writer", "writer")
    a = w.create("accounts", {"name": "A", "owner": "alice"})
    b = w.create("accounts", {"name": "B", "owner": "bob"})
    c = w.create("contacts", {"name": "C"})
    changes = tuple(Change(pc.id, pc.collection, pc.record, u) for pc, u in w.outgoing())
    other = make_replica("other", "writer")
    d = other.create("contacts", {"name": "D"})
    [(pd, ud)] = other.outgoing()

    readers = {
        "writer": await _live_reader(relay.url, "tok-writer", "writer", None),
        "carol": await _live_reader(relay.url, "tok-carol", "carol-1", None),
        "dave": await _live_reader(relay.url, "tok-dave", "dave-1", None),
        "alice": await _live_reader(relay.url, "tok-alice", "alice-1", None),
        "bob": await _live_reader(relay.url, "tok-bob", "bob-1", None),
        "rita": await _live_reader(relay.url, "tok-rita", "rita-1", None),
        "units": await _live_reader(relay.url, "tok-carol", "carol-2", ("contacts",)),
    }
    try:
        writer = readers["writer"]
        writer.conn.send(Push(1, changes))  # one push: one write group
        await writer.flush()
        [ack] = await writer.next_events()
        assert isinstance(ack, Ack) and len(ack.ok) == 3, ack
        everything = {f"accounts/{a}", f"accounts/{b}", f"contacts/{c}"}
        expected = {
            "carol": everything,
            "dave": everything,
            "alice": {f"accounts/{a}", f"contacts/{c}"},
            "bob": {f"accounts/{b}", f"contacts/{c}"},
            "rita": {f"accounts/{a}", f"accounts/{b}"},
            "units": {f"contacts/{c}"},
        }
        for name, want in expected.items():
            assert await _next_live(readers[name]) == want, name
        # another device's change reaches everyone who may read contacts, the first writer included (which
        # was not sent its own changes: this is the first live frame it gets)
        async with connect(f"{relay.url}/?token=tok-writer") as ws:
            raw = RawClient(ws)
            await raw.handshake("other")
            raw.conn.send(Push(1, (Change(pd.id, pd.collection, pd.record, ud),)))
            await raw.flush()
            [ack2] = await raw.next_events()
            assert isinstance(ack2, Ack) and ack2.ok == (pd.id,)
        for name in ("writer", "carol", "dave", "alice", "bob", "units"):
            assert await _next_live(readers[name]) == {f"contacts/{d}"}, name
    finally:
        for r in readers.values():
            await r.ws.close()
