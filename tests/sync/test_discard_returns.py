"""A change discarded on its device after the relay stored it (its ack lost with the connection, or in flight
when discarded) comes back to that device, as it reaches every other one: the device asks for it back
(``Pull.returns``), since the relay never sends a device its own changes. It used to stay on the other
devices only, for good, with every device showing ``synced``. Real relay, real sockets."""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.protocol import Ack, Change, Push

from .conftest import RawClient, RelayFactory, client, snapshot, sync


async def _push_as(url: str, device: str, r: Replica) -> list[int]:
    """Push ``r``'s pending changes as its device would, on a connection of our own, and drop the acks: for
    ``r`` they stay pending, as when the connection is lost before the relay's ack arrives."""
    changes = tuple(Change(p.id, p.collection, p.record, u) for p, u in r.outgoing())
    async with connect(url) as ws:
        raw = RawClient(ws)
        await raw.handshake(device)
        raw.conn.send(Push(1, changes))
        await raw.flush()
        [ack] = await raw.next_events()
        assert isinstance(ack, Ack)
        return list(ack.ok)


async def test_a_change_discarded_after_the_relay_stored_it_comes_back(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a, b = make_replica("a"), make_replica("b")
    rid = a.create("accounts", {"name": "Acme"})
    async with client(a, relay.url) as ca:
        await sync(ca)
    a.update("accounts", rid, {"employees": 12})
    assert await _push_as(relay.url, "a", a) == [p.id for p in a.pending()]  # stored; a never got the ack
    assert [p.fields for p in a.discard_record("accounts", rid)] == [{"employees": 12}]
    assert a.get("accounts", rid).fields["employees"] is None  # type: ignore[union-attr]
    async with client(b, relay.url) as cb:
        await sync(cb)
    assert b.get("accounts", rid).fields["employees"] == 12  # type: ignore[union-attr]
    async with client(a, relay.url) as ca:
        await sync(ca)
        assert a.get("accounts", rid).fields["employees"] == 12  # type: ignore[union-attr]
        assert a.returns() == []  # answered: not asked again
    async with client(a, relay.url) as ca:
        await sync(ca)  # the relay's last change of "a" is the discarded one: a's own, not another store's
        a.update("accounts", rid, {"phone": "555"})  # and the record goes on as usual
        await sync(ca)
    async with client(b, relay.url) as cb:
        await sync(cb)
    assert snapshot(a) == snapshot(b)


async def test_discarded_changes_the_relay_never_got_are_asked_once_and_forgotten(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    a = make_replica("a")
    rid = a.create("accounts", {"name": "Acme"})
    a.update("accounts", rid, {"employees": 3})
    update_id = a.pending()[1].id
    assert [p.id for p in a.discard(update_id)] == [update_id]
    assert a.returns() == [update_id]
    async with client(a, relay.url) as ca:
        res = await sync(ca)
    assert (res.uploaded, res.received) == (1, 0)  # the create went up; nothing came back
    assert a.returns() == []
    assert a.get("accounts", rid).fields["employees"] is None  # type: ignore[union-attr]
