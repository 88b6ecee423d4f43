"""Garbage from a raw websocket: the relay closes that connection with a reason and serves everyone else."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from crdtsync import Replica
from crdtsync.protocol import Ack, Bye, Change, Hello, Kind, Pull, Push, encode_frame
from crdtsync.relay import Limits

from .conftest import BOUND, RawClient, RelayFactory, client, sync

HELLO = encode_frame(Kind.HELLO, {"device": "raw", "client": "test"})

CASES: list[tuple[str, list[bytes | str], int, str]] = [
    ("random bytes", [os.urandom(64)], 4400, ""),
    ("random bytes after hello", [HELLO, b"\x02" + os.urandom(40)], 4400, ""),
    ("truncated", [HELLO[:-3]], 4400, "truncated"),
    ("wrong version", [b"\x09" + HELLO[1:]], 4400, "unsupported protocol version 9"),
    ("unknown kind", [b"\x02\x77\x00"], 4400, "unknown frame kind"),
    ("push before hello", [encode_frame(Kind.PUSH, {"id": 1, "changes": []})], 4400, "unexpected PUSH"),
    ("text frame", ["hello there"], 4400, "text"),
    ("huge", [HELLO, b"\x02\x03" + b"\xff" * 70_000], 1009, ""),
]


@pytest.mark.parametrize("name, frames, code, reason", CASES, ids=[c[0] for c in CASES])
async def test_garbage_closes_only_that_connection(
        make_relay: RelayFactory, make_replica: Callable[..., Replica],
        name: str, frames: list[bytes | str], code: int, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crdtsync.relay")
    relay = await make_relay(limits=Limits(max_frame=64 * 1024))
    good, other = make_replica("good"), make_replica("other")
    async with client(good, relay.url) as cg, client(other, relay.url) as co:
        await sync(cg)
        async with connect(relay.url, max_size=None) as ws:
            with pytest.raises(ConnectionClosed):
                for f in frames:
                    await ws.send(f)
                while True:  # the relay may answer the HELLO first, then closes
                    await asyncio.wait_for(ws.recv(), BOUND)
            assert ws.close_code == code, (ws.close_code, ws.close_reason)
            assert ws.close_reason and reason in ws.close_reason
        # everyone else is still served, live
        rid = good.create("accounts", {"name": "after " + name})
        got: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        other.subscribe(lambda ev: got.done() or ev.id != rid or got.set_result(None))
        await sync(cg)
        await asyncio.wait_for(got, BOUND)
        assert co.online
    # (logged as the relay saw the frame, before this sync's round trips)
    too_big = [r for r in caplog.records if "over the 65536-byte limit" in r.getMessage()]
    assert len(too_big) == (1 if code == 1009 else 0)  # an operator sees why a device keeps reconnecting


async def test_out_of_order_pull_closes_with_a_reason(make_relay: RelayFactory) -> None:
    relay = await make_relay()
    async with connect(relay.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("raw")
        # two pulls at once: the client core would refuse, so write the second frame by hand
        raw.conn.send(Pull(1, 0))
        await raw.flush()
        await ws.send(encode_frame(Kind.PULL, {"id": 2, "since": 0, "relay": None, "collections": None,
                                               "live": False, "returns": []}))
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), BOUND)
        assert ws.close_code == 4400 and ws.close_reason and "in flight" in ws.close_reason


async def test_a_push_of_garbage_updates_is_rejected_per_change(make_relay: RelayFactory,
                                                                make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay()
    good = make_replica("good")
    rid = good.create("accounts", {"name": "fine"})
    [(pc, update)] = good.outgoing()
    async with connect(relay.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("good")
        raw.conn.send(Push(1, (Change(1, "accounts", "x", os.urandom(50)), Change(2, "nope", "y", update),
                               Change(3, "accounts", "x", update), Change(pc.id, "accounts", rid, update))))
        await raw.flush()
        [ack] = await raw.next_events()
    assert isinstance(ack, Ack)
    assert [(r.change_id, r.code) for r in ack.rejected] == [(1, "invalid"), (2, "gone")]
    assert ack.held == (3,)  # behind the rejected change 1 of the same record
    assert ack.ok == (pc.id,)
    assert relay.relay is not None and relay.relay.log.head == 1


async def test_a_change_too_large_for_any_frame_is_kept_as_error(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    relay = await make_relay(limits=Limits(max_frame=64 * 1024))
    r = make_replica("big")
    rid = r.create("accounts", {"name": "big", "notes": "x" * 100_000})
    small = r.create("accounts", {"name": "small"})
    async with client(r, relay.url, max_frame=64 * 1024) as c:
        res = await sync(c)
    assert (res.uploaded, res.rejected) == (1, 1)
    rec = r.get("accounts", rid)
    assert rec is not None and rec.status == "error" and rec.error is not None and "frame" in rec.error
    got = r.get("accounts", small)
    assert got is not None and got.status == "synced"


async def test_a_change_too_large_for_the_relay_is_kept_as_error_with_the_relay_limit(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """The client's own limit is the default (16 MiB): the relay's is smaller. Its WELCOME says how large;
    the client used to send the change anyway, be closed with 1009, reconnect, and so on for ever, with
    every later change stuck behind it."""
    relay = await make_relay(limits=Limits(max_frame=64 * 1024))
    r = make_replica("big")
    rid = r.create("accounts", {"name": "big", "notes": "x" * 100_000})
    small = r.create("accounts", {"name": "small"})
    async with client(r, relay.url) as c:
        res = await sync(c)
    assert (res.uploaded, res.rejected) == (1, 1)
    rec = r.get("accounts", rid)
    assert rec is not None and rec.status == "error" and rec.error is not None
    assert "the relay's limit is 65536 bytes" in rec.error
    got = r.get("accounts", small)
    assert got is not None and got.status == "synced"


async def test_a_record_that_would_outgrow_a_frame_is_refused_and_full_resyncs_go_on(
        make_relay: RelayFactory, make_replica: Callable[..., Replica]) -> None:
    """Changes small enough each grew a record past the frame limit; a full resync, which sends each record
    whole, then failed (1011) on every attempt for every new device."""
    relay = await make_relay(limits=Limits(max_frame=64 * 1024))
    a = make_replica("a")
    rid = a.create("accounts", {"name": "big"})
    async with client(a, relay.url) as c:
        for i in range(40):
            a.update("accounts", rid, {"notes": f"{a.get('accounts', rid)['notes']}{i:04} " + "x" * 2000})  # type: ignore[index]
            res = await sync(c)
            if res.rejected:
                break
    assert res.rejected == 1
    rec = a.get("accounts", rid)
    assert rec is not None and rec.status == "error" and rec.error is not None
    assert "more than the relay sends in one frame" in rec.error
    b = make_replica("b")
    async with client(b, relay.url) as c:
        res = await sync(c)
    assert res.reset and b.get("accounts", rid) is not None


async def test_a_connection_over_the_rate_limit_is_slowed_and_logged(
        make_relay: RelayFactory, caplog: pytest.LogCaptureFixture) -> None:
    relay = await make_relay(limits=Limits(rate=100.0, burst=2))
    async with connect(relay.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("fast")
        for i in range(8):
            raw.conn.send(Push(i, ()))
        await raw.flush()
        acks: list[object] = []
        while len(acks) < 8:
            acks += await raw.next_events()
    assert all(isinstance(a, Ack) for a in acks)  # slowed down, nothing dropped
    assert any("over the rate limit" in r.getMessage() for r in caplog.records)


async def test_a_device_id_that_mimics_a_writer_tag_is_refused(make_relay: RelayFactory) -> None:
    relay = await make_relay()
    async with connect(relay.url) as ws:
        raw = RawClient(ws)
        raw.conn.send(Hello("victim#1"))
        await raw.flush()
        [bye] = await raw.next_events()
        assert isinstance(bye, Bye) and bye.code == 4400 and "'#'" in bye.reason


async def test_an_internal_error_serving_a_device_closes_it_with_1011(
        make_relay: RelayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while serving a device (here, made by hand: nothing a peer sends causes one) used to end the
    session with a normal close (1000, no reason), which the device took for a clean end and retried."""
    from crdtsync.relay import session

    relay = await make_relay()
    async with connect(relay.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("raw")

        def broken(self: object) -> float:
            raise RuntimeError("a bug")

        monkeypatch.setattr(session.Bucket, "delay", broken)
        raw.conn.send(Pull(1, 0))
        await raw.flush()
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), BOUND)
        assert ws.close_code == 1011 and ws.close_reason == "relay failure: internal error"


async def test_yjs_rooms_take_the_relays_frame_limit(make_relay: RelayFactory) -> None:
    relay = await make_relay(limits=Limits(max_frame=100_000))
    assert relay.relay.rooms.max_message == 100_000
