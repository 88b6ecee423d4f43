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
from crdtsync.protocol import Ack, Change, Push

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
            lambda sql: in_commit.set() if sql.startswith("BEGIN") else None)
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
