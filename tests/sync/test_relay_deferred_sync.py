"""The relay on a store with deferred syncs (what ``crdtsync relay`` opens): the writes of a group commit
happen at once, its fsync after, on the event loop while fsyncs are quick, in a thread otherwise; no change
is acknowledged, and no cursor handed out past it, before its fsync returned."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from crdtsync import Replica
from crdtsync.demo import DEMO_SCHEMA
from crdtsync.protocol import Ack, Change, Push
from crdtsync.relay import Limits, Relay, Tokens
from crdtsync.relay.log import RelayLog
from crdtsync.store import MemoryStore, SQLiteStore
from crdtsync.store.base import Batch

from .conftest import SCHEMA, RawClient


def _changes(n: int) -> list[Change]:
    r = Replica(MemoryStore(), DEMO_SCHEMA, device="d", user="u")
    for i in range(n):
        r.create("accounts", {"name": f"A{i}"})
    return [Change(pc.id, pc.collection, pc.record, u) for pc, u in r.outgoing()]


def test_delta_stops_before_a_change_written_but_not_yet_synced(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "relay.db", defer_sync=True)
    try:
        lg = RelayLog(store, DEMO_SCHEMA)
        grant = Tokens(None).grant(None)
        assert grant is not None
        first, second = _changes(2)
        batch = Batch()
        out = lg.stage(batch, "d", grant, [first])
        store.commit(batch)
        lg.committed(out.accepted)
        batch = Batch()
        out = lg.stage(batch, "d", grant, [second])
        finish = store.begin_commit(batch)
        assert store.load(("log", 2)) is not None  # written, visible to readers, not synced yet
        items, to = lg.delta(grant, "other", 0, None)
        assert [(i.record, i.seq) for i in items] == [(first.record, 1)] and to == 1
        assert lg.count_delta(grant, "other", 0, None) == 1
        finish()
        lg.committed(out.accepted)
        items, to = lg.delta(grant, "other", 0, None)
        assert [i.record for i in items] == [first.record, second.record] and to == 2
    finally:
        store.close()


async def _push_one(relay: Relay, port: int, change: Change) -> Ack:
    async with connect(f"ws://127.0.0.1:{port}") as ws:
        raw = RawClient(ws)
        await raw.handshake("w")
        raw.conn.send(Push(1, (change,)))
        await raw.flush()
        [ack] = await raw.next_events()
        assert isinstance(ack, Ack) and ack.ok == (change.change_id,), ack
        return ack


@pytest.mark.parametrize(("inline_sync", "slow_so_far", "on_loop"), [
    (0.002, 0.0, True),  # fsyncs quick so far: on the event loop
    (0.002, 1.0, False),  # fsyncs took a second on average: in a thread
    (0.0, 0.0, False),  # never on the event loop
])
async def test_the_fsync_runs_on_the_event_loop_only_while_fsyncs_are_quick(
        tmp_path: Path, make_replica: Callable[..., Replica], inline_sync: float, slow_so_far: float,
        on_loop: bool) -> None:
    store = SQLiteStore(tmp_path / "relay.db", defer_sync=True)
    relay = Relay(store, SCHEMA, Tokens(None), limits=Limits(inline_sync=inline_sync))
    synced_on: list[bool] = []
    real_sync = store._sync

    def sync() -> None:
        synced_on.append(threading.current_thread() is threading.main_thread())
        real_sync()

    store._sync = sync  # type: ignore[method-assign]
    try:
        _, port = await relay.start("127.0.0.1", 0)
        relay._sync_time = slow_so_far
        w = make_replica("w")
        rid = w.create("accounts", {"name": "A"})
        [(pc, update)] = w.outgoing()
        await asyncio.wait_for(_push_one(relay, port, Change(pc.id, "accounts", rid, update)), 20)
        # the group's fsync, before the ack (an open relay binds no device: no commit of its own before)
        assert synced_on == [on_loop]
        assert relay.log.durable == 1
    finally:
        await relay.stop()
        store.close()
