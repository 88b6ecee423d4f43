"""The relay stages the next write group while the previous one commits, and still acknowledges (and fans
out) each change only once the commit holding it has returned."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.protocol import Ack, Change, Kind, Push, decode_frame

from .conftest import BOUND, RawClient, RelayFactory


async def test_a_group_is_staged_during_the_previous_commit_and_acknowledged_after_its_own(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], monkeypatch: pytest.MonkeyPatch) -> None:
    handle = await make_relay()
    relay, store = handle.relay, handle.store
    assert relay is not None and store is not None
    w = make_replica("w")
    a = w.create("accounts", {"name": "A"})
    b = w.create("accounts", {"name": "B"})
    (pa, ua), (pb, ub) = w.outgoing()

    staged = asyncio.Event()
    real_stage = relay.log.stage

    def stage(*args: Any, **kw: Any) -> Any:
        out = real_stage(*args, **kw)
        if relay.log.head >= 2:
            staged.set()
        return out

    monkeypatch.setattr(relay.log, "stage", stage)
    in_commit = threading.Event()
    async with connect(handle.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("w")  # binds the device (a commit of its own) before the lock is taken
        # another connection holds the write lock, as a slow disk would: the relay's commit waits in its thread
        blocker = sqlite3.connect(store.path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        store._db.set_trace_callback(  # type: ignore[union-attr]  # tells us the writer reached BEGIN
            # (or INSERT: a batch of saves alone is one statement)
            lambda sql: in_commit.set() if sql.startswith(("BEGIN", "INSERT")) else None)
        try:
            raw.conn.send(Push(1, (Change(pa.id, "accounts", a, ua),)))
            await raw.flush()
            assert await asyncio.to_thread(in_commit.wait, BOUND)
            raw.conn.send(Push(2, (Change(pb.id, "accounts", b, ub),)))
            await raw.flush()
            await asyncio.wait_for(staged.wait(), BOUND)  # staged while the first commit is stuck
            assert relay.log.head == 2 and relay.log.durable == 0
            assert store.load(("recs", "accounts", a)) is None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        acks: list[Ack] = []
        while len(acks) < 2:
            for ev in await raw.next_events():
                assert isinstance(ev, Ack), ev
                acks.append(ev)
                rid = a if ev.id == 1 else b
                assert store.load(("recs", "accounts", rid)) is not None  # durable before acknowledged
        assert [(x.id, x.ok) for x in acks] == [(1, (pa.id,)), (2, (pb.id,))]
    assert relay.log.durable == 2


async def test_the_pushes_one_group_commits_are_acknowledged_in_one_frame(
        make_relay: RelayFactory, make_replica: Callable[..., Replica], monkeypatch: pytest.MonkeyPatch) -> None:
    """A device with several pushes in flight gets one ACK frame for all those one commit stored, except a
    push that repeats a change id of another (a resend): its outcome could not be told apart, so it gets
    a frame of its own. Each still comes back as its own ``Ack``, only after the commit."""
    handle = await make_relay()
    relay, store = handle.relay, handle.store
    assert relay is not None and store is not None
    w = make_replica("w")
    for i in range(6):
        w.create("accounts", {"name": f"A{i}"})
    ch = [Change(pc.id, pc.collection, pc.record, u) for pc, u in w.outgoing()]
    pushes = [Push(1, (ch[0],)), Push(2, (ch[1],)), Push(3, (ch[2],)), Push(4, (ch[3], ch[4])), Push(5, (ch[5],)),
              Push(6, (ch[5],))]

    staged = asyncio.Event()
    real_stage = relay.log.stage
    calls = 0

    def stage(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        out = real_stage(*args, **kw)
        calls += 1
        if calls == len(pushes):
            staged.set()
        return out

    monkeypatch.setattr(relay.log, "stage", stage)
    in_commit = threading.Event()
    async with connect(handle.url) as ws:
        raw = RawClient(ws)
        await raw.handshake("w")
        blocker = sqlite3.connect(store.path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        store._db.set_trace_callback(  # type: ignore[union-attr]  # tells us the writer reached BEGIN
            # (or INSERT: a batch of saves alone is one statement)
            lambda sql: in_commit.set() if sql.startswith(("BEGIN", "INSERT")) else None)
        try:
            raw.conn.send(pushes[0])
            await raw.flush()
            assert await asyncio.to_thread(in_commit.wait, BOUND)
            for p in pushes[1:]:
                raw.conn.send(p)
            await raw.flush()
            await asyncio.wait_for(staged.wait(), BOUND)  # all staged into the next group
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        frames: list[list[int]] = []
        acks: list[Ack] = []
        while len(acks) < len(pushes):
            data = await asyncio.wait_for(ws.recv(), BOUND)
            frame = decode_frame(data)
            assert frame.kind is Kind.ACK
            frames.append(frame.header["ids"])
            raw.conn.receive_data(data)
            for ev in raw.conn.events_received():
                assert isinstance(ev, Ack), ev
                acks.append(ev)
                for c in pushes[ev.id - 1].changes:
                    assert store.load(("recs", "accounts", c.record)) is not None  # durable before acknowledged
        assert frames == [[1], [2, 3, 4, 5], [6]]
        assert [(a.id, a.ok, a.rejected, a.held) for a in acks] == \
            [(p.id, tuple(c.change_id for c in p.changes), (), ()) for p in pushes]
        assert raw.conn.pushes_in_flight == 0
    assert relay.log.durable == 6
